//! The hypercall instructions themselves (guest side).

use core::arch::asm;

/// Which instruction traps to microhv on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insn {
    /// Intel VMX.
    Vmcall,
    /// AMD SVM.
    Vmmcall,
}

/// Issues one hypercall.
///
/// # Safety
/// Every guest-physical address among `args` that the operation writes through must point at
/// memory the caller owns and expects to be written, for the length the operation uses.
#[inline]
pub unsafe fn hypercall(insn: Insn, op: u64, args: [u64; 5]) -> i64 {
    let ret: i64;
    // SAFETY: the instruction only exits to microhv, which writes rax and, per the caller's
    // contract, memory the caller handed over. No other register changes.
    unsafe {
        match insn {
            Insn::Vmcall => asm!("vmcall", inlateout("rax") op as i64 => ret,
                in("rdi") args[0], in("rsi") args[1], in("rdx") args[2], in("r10") args[3],
                in("r8") args[4], options(nostack)),
            Insn::Vmmcall => asm!("vmmcall", inlateout("rax") op as i64 => ret,
                in("rdi") args[0], in("rsi") args[1], in("rdx") args[2], in("r10") args[3],
                in("r8") args[4], options(nostack)),
        }
    }
    ret
}
