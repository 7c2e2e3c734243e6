//! Thin, documented wrappers over the CPU instructions microhv uses outside the VMX code.

use core::arch::x86_64::{__cpuid_count, _rdtsc};

/// CPUID `(leaf, subleaf)` as `[eax, ebx, ecx, edx]`.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = __cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The time-stamp counter (under Bochs: instructions retired since power-on).
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear in ring 0 anyway.
    unsafe { _rdtsc() }
}

/// Reads an MSR.
///
/// # Safety
/// `msr` must exist on this CPU, or RDMSR raises #GP.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: forwarded to the caller.
    unsafe { x86::msr::rdmsr(msr) }
}

/// Writes an MSR.
///
/// # Safety
/// `msr` must exist and `value` must be valid for it; writing changes CPU behaviour.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { x86::msr::wrmsr(msr, value) }
}

/// CR0.
pub fn cr0() -> u64 {
    // SAFETY: reading CR0 in ring 0 has no side effects.
    unsafe { x86::controlregs::cr0().bits() as u64 }
}

/// CR3.
pub fn cr3() -> u64 {
    // SAFETY: reading CR3 in ring 0 has no side effects.
    unsafe { x86::controlregs::cr3() }
}

/// CR4.
pub fn cr4() -> u64 {
    // SAFETY: reading CR4 in ring 0 has no side effects.
    unsafe { x86::controlregs::cr4().bits() as u64 }
}

/// Writes CR0.
///
/// # Safety
/// The new value must keep paging, protection and the host's assumptions (SSE on) intact.
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { x86::controlregs::cr0_write(x86::controlregs::Cr0::from_bits_truncate(v as usize)) }
}

/// Writes CR4.
///
/// # Safety
/// The new value must keep PAE, the SSE bits and the host's assumptions intact.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { x86::controlregs::cr4_write(x86::controlregs::Cr4::from_bits_truncate(v as usize)) }
}

/// Zeroes `len` bytes at `addr` with `REP STOSQ` (`len` a multiple of 8), as Linux's
/// `clear_page` does: one instruction the CPU runs at its fast-string speed.
///
/// # Safety
/// `[addr, addr + len)` must be mapped, writable, and aliased by no Rust reference.
pub unsafe fn zero_qwords(addr: u64, len: u64) {
    // SAFETY: the caller owns the range; DF is clear in microhv (the ABI's default).
    unsafe {
        core::arch::asm!(
            "rep stosq",
            inout("rdi") addr => _,
            inout("rcx") len / 8 => _,
            in("rax") 0u64,
            options(nostack, preserves_flags)
        )
    };
}

/// Stops this CPU for good: interrupts off, then HLT forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI; HLT only stops this CPU, which is what the caller wants.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Waits, interrupts on, until an interrupt arrives (a kick, `lapic::kick`; or an NMI, so the
/// caller checks why it woke), and returns with interrupts off again. One already pending when
/// this is called ends the wait at once.
pub fn wait_for_kick() {
    // SAFETY: STI's one-instruction shadow covers HLT, so an interrupt pending at STI is taken
    // only once HLT has begun and wakes it: none is missed between the caller's check and the
    // halt. Every vector that can arrive in root mode (the kick, the slice timer, the spurious
    // vector, NMI) has an IDT stub that returns; CLI restores microhv's interrupts-off state.
    // Not `nomem`: the caller's looks at what other CPUs wrote must not move across the wait.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nostack)) };
}

/// CR2, the last page-fault address.
pub fn cr2() -> u64 {
    // SAFETY: reading CR2 in ring 0 has no side effects.
    unsafe { x86::controlregs::cr2() as u64 }
}

/// Writes CR2 (a vCPU's last page-fault address, which no VMCS field holds).
pub fn write_cr2(v: u64) {
    // SAFETY: CR2 only reports page-fault addresses; microhv never takes a page fault whose
    // address it would read, so loading a guest's value changes nothing for the host.
    unsafe { core::arch::asm!("mov cr2, {}", in(reg) v, options(nostack, nomem)) };
}

/// CR8, the task-priority register.
pub fn cr8() -> u64 {
    let v: u64;
    // SAFETY: reading CR8 in ring 0 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr8", out(reg) v, options(nostack, nomem)) };
    v
}

/// Writes CR8. Only the VMX backend uses it (SVM virtualizes CR8 as V_TPR): microhv takes no
/// interrupt in root mode on VMX, so a guest's priority in the physical TPR blocks nothing of
/// its own.
pub fn write_cr8(v: u64) {
    // SAFETY: see above; values above 15 have reserved bits and are masked.
    unsafe { core::arch::asm!("mov cr8, {}", in(reg) v & 0xf, options(nostack, nomem)) };
}

/// A guest's debug registers that no VMCS or VMCB field holds: DR0–DR3 on both backends, and DR6
/// on VMX. The backends swap them when another vCPU takes the CPU, so one domain's breakpoints
/// neither leak to nor fire in another.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DebugRegs {
    /// DR0–DR3.
    pub dr: [u64; 4],
    /// DR6.
    pub dr6: u64,
}

impl DebugRegs {
    /// Reads them from the hardware.
    pub fn save() -> Self {
        let (dr, dr6): ([u64; 4], u64);
        // SAFETY: reading debug registers in ring 0 has no side effects.
        unsafe {
            let (a, b, c, d): (u64, u64, u64, u64);
            core::arch::asm!("mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3",
                out(reg) a, out(reg) b, out(reg) c, out(reg) d, options(nostack, nomem));
            dr = [a, b, c, d];
            let x: u64;
            core::arch::asm!("mov {}, dr6", out(reg) x, options(nostack, nomem));
            dr6 = x;
        }
        Self { dr, dr6 }
    }

    /// Loads them into the hardware.
    pub fn load(&self) {
        // SAFETY: microhv runs with DR7 = 0x400 (every exit sets it), so no breakpoint these
        // addresses describe is armed in root mode; DR6 only reports.
        unsafe {
            core::arch::asm!("mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}",
                in(reg) self.dr[0], in(reg) self.dr[1], in(reg) self.dr[2], in(reg) self.dr[3],
                options(nostack, nomem));
            core::arch::asm!("mov dr6, {}", in(reg) self.dr6 | 0xffff_0ff0, options(nostack, nomem));
        }
    }
}
