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
    let wide = if rex_w {
        8
    } else if opsize16 {
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
        assert_eq!(decode(&[0x66; 20], Bits64), Err(DecodeError::Unsupported));
        assert_eq!(decode(&[], Bits64), Err(DecodeError::Truncated));
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
        }
    }
}
