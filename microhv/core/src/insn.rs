//! Just enough x86 decoding to emulate a guest's access to an emulated MMIO page: the MOV forms
//! compilers emit for device registers (`mov r/m, r`, `mov r, r/m`, `mov r/m, imm`, in 8, 16, 32
//! and 64 bits, with legacy and REX prefixes), in 32-bit and 64-bit code.
//!
//! The faulting guest-physical address comes from the exit, so the decoder never computes an
//! effective address: it only needs the direction, the width, the register or immediate, and
//! the instruction's length (which VMX does not report for EPT violations).

use crate::exit::CpuMode;

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// What the instruction does with the memory operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioOp {
    /// Load `size` bytes into register `reg`.
    Load {
        /// Destination register.
        reg: Reg,
    },
    /// Store register `reg`.
    StoreReg {
        /// Source register.
        reg: Reg,
    },
    /// Store an immediate.
    StoreImm {
        /// The value (already sign-extended to the operand size).
        value: u64,
    },
}

/// A general register operand: its number (0 = rax … 15 = r15) and, for 8-bit operands
/// without a REX prefix, whether it is one of AH, CH, DH, BH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg {
    /// Register number.
    pub num: u8,
    /// Bits 15:8 of register `num` (AH, CH, DH, BH).
    pub high_byte: bool,
}

/// A decoded MMIO access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mmio {
    /// What it does.
    pub op: MmioOp,
    /// Operand size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Instruction length.
    pub len: u8,
}

/// Why an instruction cannot be emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// Not one of the supported MOV forms (or a register-to-register form).
    Unsupported,
    /// 16-bit addressing (real mode or an address-size prefix in 32-bit code).
    Addressing16,
}

/// Decodes the instruction at the start of `bytes`, executed in `mode`.
pub fn decode(bytes: &[u8], mode: CpuMode) -> Result<Mmio, DecodeError> {
    let at = |i: usize| bytes.get(i).copied().ok_or(DecodeError::Truncated);
    let mut i = 0;
    let mut opsize16 = false;
    let mut addr16 = mode == CpuMode::Bits16;
    loop {
        match at(i)? {
            0x66 => opsize16 = true,
            0x67 => addr16 = mode == CpuMode::Bits32,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {}
            _ => break,
        }
        i += 1;
        if i >= MAX_INSN_LEN {
            return Err(DecodeError::Unsupported);
        }
    }
    if addr16 {
        return Err(DecodeError::Addressing16);
    }
    let mut rex = 0u8;
    if mode == CpuMode::Bits64 && (0x40..=0x4f).contains(&at(i)?) {
        rex = at(i)?;
        i += 1;
    }
    let rex_w = rex & 8 != 0;
    // The operand-size prefix toggles the code segment's default (16 bits in 16-bit code).
    let wide = if rex_w {
        8
    } else if opsize16 != (mode == CpuMode::Bits16) {
        2
    } else {
        4
    };
    let opcode = at(i)?;
    i += 1;
    let (size, kind) = match opcode {
        0x88 => (1, 0),
        0x89 => (wide, 0),
        0x8a => (1, 1),
        0x8b => (wide, 1),
        0xc6 => (1, 2),
        0xc7 => (wide, 2),
        _ => return Err(DecodeError::Unsupported),
    };
    let modrm = at(i)?;
    i += 1;
    let md = modrm >> 6;
    let reg_field = ((modrm >> 3) & 7) | ((rex & 4) << 1);
    let rm = modrm & 7;
    if md == 3 {
        // Register to register: no memory operand, so it cannot have caused an MMIO exit.
        return Err(DecodeError::Unsupported);
    }
    let mut base = rm;
    if rm == 4 {
        base = at(i)? & 7;
        i += 1;
    }
    i += match (md, base) {
        (0, 5) => 4,
        (0, _) => 0,
        (1, _) => 1,
        _ => 4,
    };
    if i > bytes.len() {
        return Err(DecodeError::Truncated);
    }
    let reg = Reg {
        num: if size == 1 && rex == 0 && (4..8).contains(&reg_field) {
            reg_field - 4
        } else {
            reg_field
        },
        high_byte: size == 1 && rex == 0 && (4..8).contains(&reg_field),
    };
    let op = match kind {
        0 => MmioOp::StoreReg { reg },
        1 => MmioOp::Load { reg },
        _ => {
            if reg_field & 7 != 0 {
                return Err(DecodeError::Unsupported);
            }
            let imm_len = if size == 2 {
                2
            } else if size == 1 {
                1
            } else {
                4
            };
            let mut raw = 0u64;
            for k in 0..imm_len {
                raw |= u64::from(at(i + k)?) << (8 * k);
            }
            i += imm_len;
            // A 32-bit immediate is sign-extended to a 64-bit operand.
            let value = if size == 8 { raw as u32 as i32 as i64 as u64 } else { raw };
            MmioOp::StoreImm { value }
        }
    };
    if i > MAX_INSN_LEN {
        return Err(DecodeError::Unsupported);
    }
    Ok(Mmio { op, size, len: i as u8 })
}

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
    /// `0F 08`.
    Invd,
}

/// A decoded intercepted instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intercepted {
    /// Length in bytes, prefixes included.
    pub len: u8,
    /// MOV to CR: the control register (REX.R and AMD's LOCK-for-CR8 applied).
    pub cr: u8,
    /// MOV to CR: the source register, by x86 number (REX.B applied).
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
            0xf0 => {
                lock = true;
                rex = 0;
            }
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
    if expected == Expected::MovToCr {
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
mod tests {
    use super::*;
    use CpuMode::*;

    fn r(num: u8) -> Reg {
        Reg { num, high_byte: false }
    }

    #[test]
    fn loads_and_stores_of_every_width() {
        // mov eax, [rdi+0x20]
        let m = decode(&[0x8b, 0x47, 0x20], Bits64).unwrap();
        assert_eq!(m, Mmio { op: MmioOp::Load { reg: r(0) }, size: 4, len: 3 });
        // mov [rax+0xf0], ecx
        let m = decode(&[0x89, 0x88, 0xf0, 0, 0, 0], Bits64).unwrap();
        assert_eq!(m, Mmio { op: MmioOp::StoreReg { reg: r(1) }, size: 4, len: 6 });
        // mov r9, [rip+disp32]
        let m = decode(&[0x4c, 0x8b, 0x0d, 1, 2, 3, 4], Bits64).unwrap();
        assert_eq!(m, Mmio { op: MmioOp::Load { reg: r(9) }, size: 8, len: 7 });
        // mov word [rbx], dx
        let m = decode(&[0x66, 0x89, 0x13], Bits64).unwrap();
        assert_eq!(m, Mmio { op: MmioOp::StoreReg { reg: r(2) }, size: 2, len: 3 });
        // mov ah, [rsi]
        let m = decode(&[0x8a, 0x26], Bits64).unwrap();
        assert_eq!(m.op, MmioOp::Load { reg: Reg { num: 0, high_byte: true } });
        // mov spl, [rsi] (REX makes 4 mean SPL)
        let m = decode(&[0x40, 0x8a, 0x26], Bits64).unwrap();
        assert_eq!(m.op, MmioOp::Load { reg: r(4) });
        // mov dword [rcx+rdx*4+0x10], 0x1ff (SIB, disp8, imm32)
        let m = decode(&[0xc7, 0x44, 0x91, 0x10, 0xff, 1, 0, 0], Bits64).unwrap();
        assert_eq!(m, Mmio { op: MmioOp::StoreImm { value: 0x1ff }, size: 4, len: 8 });
        // mov qword [rax], -1 (sign-extended)
        let m = decode(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], Bits64).unwrap();
        assert_eq!(m.op, MmioOp::StoreImm { value: u64::MAX });
        // mov byte [ebp+0], 7 in 32-bit code, with a segment prefix
        let m = decode(&[0x3e, 0xc6, 0x45, 0x00, 0x07], Bits32).unwrap();
        assert_eq!(m, Mmio { op: MmioOp::StoreImm { value: 7 }, size: 1, len: 5 });
        // mov eax, [0xfee00020] (disp32 without base) in 32-bit code
        let m = decode(&[0x8b, 0x05, 0x20, 0, 0xe0, 0xfe], Bits32).unwrap();
        assert_eq!(m, Mmio { op: MmioOp::Load { reg: r(0) }, size: 4, len: 6 });
        // mov r8d, [rsp+8]: SIB with base rsp
        let m = decode(&[0x44, 0x8b, 0x44, 0x24, 0x08], Bits64).unwrap();
        assert_eq!(m, Mmio { op: MmioOp::Load { reg: r(8) }, size: 4, len: 5 });
    }

    #[test]
    fn what_cannot_be_emulated_is_refused() {
        assert_eq!(decode(&[0x8b, 0xc1], Bits64), Err(DecodeError::Unsupported)); // reg, reg
        assert_eq!(decode(&[0x0f, 0xb6, 0x07], Bits64), Err(DecodeError::Unsupported)); // movzx
        assert_eq!(decode(&[0xa5], Bits64), Err(DecodeError::Unsupported)); // movs
        assert_eq!(decode(&[0xc7, 0x08, 0, 0, 0, 0], Bits64), Err(DecodeError::Unsupported));
        assert_eq!(decode(&[0x8b], Bits64), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x8b, 0x80, 1], Bits64), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x8b, 0x07], Bits16), Err(DecodeError::Addressing16));
        assert_eq!(decode(&[0x67, 0x8b, 0x07], Bits32), Err(DecodeError::Addressing16));
        // 16-bit code with 32-bit addressing: the operand is 16 bits unless 0x66 says 32.
        assert_eq!(decode(&[0x67, 0x89, 0x00], Bits16).map(|m| m.size), Ok(2));
        assert_eq!(decode(&[0x66, 0x67, 0x89, 0x00], Bits16).map(|m| m.size), Ok(4));
        assert_eq!(decode(&[0x66; 20], Bits64), Err(DecodeError::Unsupported));
        assert_eq!(decode(&[], Bits64), Err(DecodeError::Truncated));
    }

    #[test]
    fn intercepted_instructions_and_their_lengths() {
        use Expected::*;
        let ok = |b: &[u8], c64, e| decode_intercepted(b, c64, e);
        assert_eq!(ok(&[0x0f, 0xa2], true, Cpuid).unwrap().len, 2);
        assert_eq!(ok(&[0x66, 0x2e, 0x0f, 0x32], false, Rdmsr).unwrap().len, 4);
        assert_eq!(ok(&[0xf3, 0x0f, 0x01, 0xd9], true, Vmmcall).unwrap().len, 4);
        assert_eq!(ok(&[0xf4], false, Hlt).unwrap().len, 1);
        // mov cr4, r9: REX.B selects r9.
        let m = ok(&[0x41, 0x0f, 0x22, 0xe1], true, MovToCr).unwrap();
        assert_eq!((m.len, m.cr, m.gpr), (4, 4, 9));
        // lock mov cr0, eax is AMD's alternative encoding of CR8.
        let m = ok(&[0xf0, 0x0f, 0x22, 0xc0], false, MovToCr).unwrap();
        assert_eq!((m.cr, m.gpr), (8, 0));
        // A REX prefix followed by a legacy prefix no longer counts; outside 64-bit code 0x41
        // is not a prefix at all.
        assert_eq!(ok(&[0x41, 0x66, 0x0f, 0x22, 0xe1], true, MovToCr).unwrap().gpr, 1);
        assert_eq!(ok(&[0x41, 0x0f, 0xa2], false, Cpuid), Err(Mismatch::Mismatch));
        assert_eq!(ok(&[0x0f, 0xa2], true, Rdmsr), Err(Mismatch::Mismatch));
        assert_eq!(ok(&[0x0f], true, Cpuid), Err(Mismatch::Truncated));
        assert_eq!(ok(&[0x66; 15], true, Cpuid), Err(Mismatch::Mismatch));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic_and_lengths_are_bounded(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..20),
            m in 0u8..3,
        ) {
            let mode = [Bits16, Bits32, Bits64][m as usize];
            if let Ok(d) = decode(&bytes, mode) {
                proptest::prop_assert!(usize::from(d.len) <= bytes.len());
                proptest::prop_assert!(usize::from(d.len) <= MAX_INSN_LEN);
                proptest::prop_assert!([1, 2, 4, 8].contains(&d.size));
            }
            for e in [Expected::Vmmcall, Expected::Cpuid, Expected::Hlt, Expected::MovToCr] {
                if let Ok(d) = decode_intercepted(&bytes, m == 2, e) {
                    proptest::prop_assert!(usize::from(d.len) <= bytes.len().min(MAX_INSN_LEN));
                }
            }
        }
    }
}
