//! x86 instruction decoding for the two places microhv must read a guest's instruction bytes:
//!
//! - **MMIO** ([`decode`]): a guest access to an emulated MMIO page (local APIC, I/O APIC, HPET)
//!   exits with the faulting guest-physical address but without the instruction, so the core
//!   fetches the bytes at RIP and decodes every form a compiler emits for device registers: MOV
//!   (ModRM and moffs), MOVZX/MOVSX/MOVSXD, the ALU read-modify-write and compare forms, TEST,
//!   XCHG, BT/BTS/BTR/BTC, INC/DEC/NOT/NEG, the string instructions MOVS/STOS/LODS (with REP),
//!   and CLFLUSH/CLFLUSHOPT/CLWB/PREFETCH as no-data-access hints; in 16-bit (ModRM 16-bit
//!   addressing included), 32-bit and 64-bit code, with legacy and REX prefixes. The decoder
//!   never computes a ModRM effective address (the exit's gpa is the operand); it returns the
//!   direction, width, register or immediate, and the length (VMX reports none for EPT
//!   violations). String instructions name both sides (segment and index register) so the caller
//!   can tell which is the MMIO one. [`alu`] and [`StringOp`]'s methods are the pure semantics
//!   the caller needs: a result with its RFLAGS, and index-register stepping.
//! - **String port I/O** (the same [`decode`]): not every CPU reports an INS / OUTS exit's
//!   address size and segment (VMX only with IA32_VMX_BASIC bit 54, SVM the segment only with
//!   decode assists), so the core decodes the instruction at RIP into a [`StringOp`] of kind
//!   `Ins` / `Outs` on both backends.
//! - **Intercepted instructions** ([`decode_intercepted`]): without NRIP save or decode assists,
//!   SVM reports neither the length of an intercepted instruction nor the register of a MOV to CR.
//!
//! Why hand-written rather than `iced-x86`: iced-x86 1.22 with `default-features = false,
//! features = ["decoder", "no_std"]` compiles, but its decoder needs `alloc`: it builds its
//! opcode-handler tables on first use in a `lazy_static` (7,695 allocations, 364,604 bytes for
//! the first decode), so a freestanding image without a `#[global_allocator]` — microhv has no
//! heap — fails to link ("no global memory allocator found"). Even with a heap, a static
//! `opt-level = "s"`, LTO image whose only work is one decode carries 113 KB of iced text; this
//! module's MMIO decoder, ALU flags and string helpers take 3.8 KB of text in the same setup.
//! The forms covered are those a compiler or Linux's `readl`/`writel`/`memset_io`/`memcpy_toio`
//! emits for device registers; anything else is a typed [`DecodeError`], never a guess.
//! iced-x86 (with `std`, on the host, outside this tree) served as an oracle instead: on 12
//! million random and prefix-structured byte sequences in all three modes, every instruction
//! decoded here agreed with it on length, mnemonic, memory size, register, immediate, REP,
//! address size and segment (64-bit mode's ignored ES/CS/SS/DS overrides read as DS here).
//! INS / OUTS (6C–6F) came later and are checked by the hand-written forms only.

mod alu;
mod mmio;

pub use alu::{ARITH_FLAGS, AluOp, alu};
pub use mmio::{
    DecodeError, Mmio, MmioOp, Operand, Reg, Seg, StrKind, StrOperand, StrRegs, StringOp, decode,
};

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

// ---- intercepted instructions ---------------------------------------------------------------
//
// CPUs without NRIP save (QEMU's SVM) or decode assists do not report the length of an
// intercepted instruction or the register of a MOV to CR: the SVM backend fetches the bytes and
// decodes them here.

/// The instructions microhv intercepts and has to skip or decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// `0F 01 D9` (with F3: VMGEXIT, which outside SEV-ES behaves as VMMCALL).
    Vmmcall,
    /// `0F A2`.
    Cpuid,
    /// `0F 32`.
    Rdmsr,
    /// `0F 30`.
    Wrmsr,
    /// `F4`.
    Hlt,
    /// `0F 22 /r`: MOV to a control register.
    MovToCr,
    /// `0F 20 /r`: MOV from a control register.
    MovFromCr,
    /// `0F 08`.
    Invd,
}

/// A decoded intercepted instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intercepted {
    /// Length in bytes, prefixes included.
    pub len: u8,
    /// MOV to / from CR: the control register (REX.R and AMD's LOCK-for-CR8 applied).
    pub cr: u8,
    /// MOV to / from CR: the general register, by x86 number (REX.B applied).
    pub gpr: u8,
}

/// Why decoding an intercepted instruction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The bytes ended before the instruction did.
    Truncated,
    /// The bytes are not the expected instruction (the guest changed them, or a prefix run
    /// longer than an instruction may be).
    Mismatch,
}

/// Decodes an intercepted instruction at the start of `bytes`, which must be `expected`, for
/// its length (and for MOV to CR, its operands). `code64`: the guest runs 64-bit code (REX
/// prefixes exist).
pub fn decode_intercepted(
    bytes: &[u8],
    code64: bool,
    expected: Expected,
) -> Result<Intercepted, Mismatch> {
    let mut i = 0;
    let mut rex = 0u8;
    let mut lock = false;
    loop {
        let Some(&b) = bytes.get(i) else {
            return Err(if i >= MAX_INSN_LEN { Mismatch::Mismatch } else { Mismatch::Truncated });
        };
        match b {
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf2 | 0xf3 => rex = 0,
            0xf0 => (lock, rex) = (true, 0),
            // A REX prefix only counts right before the opcode: a later legacy prefix cancels it.
            0x40..=0x4f if code64 => rex = b,
            _ => break,
        }
        i += 1;
    }
    let opcode: &[u8] = match expected {
        Expected::Vmmcall => &[0x0f, 0x01, 0xd9],
        Expected::Cpuid => &[0x0f, 0xa2],
        Expected::Rdmsr => &[0x0f, 0x32],
        Expected::Wrmsr => &[0x0f, 0x30],
        Expected::Hlt => &[0xf4],
        Expected::MovToCr => &[0x0f, 0x22],
        Expected::MovFromCr => &[0x0f, 0x20],
        Expected::Invd => &[0x0f, 0x08],
    };
    for (k, &want) in opcode.iter().enumerate() {
        match bytes.get(i + k) {
            Some(&got) if got == want => {}
            Some(_) => return Err(Mismatch::Mismatch),
            None => return Err(Mismatch::Truncated),
        }
    }
    let mut len = i + opcode.len();
    let (mut cr, mut gpr) = (0, 0);
    if matches!(expected, Expected::MovToCr | Expected::MovFromCr) {
        // The ModRM byte's mod field is ignored: the operand is always a register.
        let modrm = *bytes.get(len).ok_or(Mismatch::Truncated)?;
        len += 1;
        cr = ((modrm >> 3) & 7) | ((rex & 4) << 1);
        gpr = (modrm & 7) | ((rex & 1) << 3);
        if lock && cr == 0 {
            cr = 8;
        }
    }
    if len > MAX_INSN_LEN {
        return Err(Mismatch::Mismatch);
    }
    Ok(Intercepted { len: len as u8, cr, gpr })
}

#[cfg(test)]
mod tests;
