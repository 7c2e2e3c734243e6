//! The MMIO decoder (see the parent module).

use super::MAX_INSN_LEN;
use super::alu::AluOp;
use crate::exit::CpuMode;
use crate::io::size_mask;

/// A general register operand: its number (0 = rax … 15 = r15) and, for 8-bit operands
/// without a REX prefix, whether it is one of AH, CH, DH, BH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg {
    /// Register number.
    pub num: u8,
    /// Bits 15:8 of register `num` (AH, CH, DH, BH).
    pub high_byte: bool,
}

impl Reg {
    /// Register field `num` (REX bit applied) as a `size`-byte operand: without a REX prefix,
    /// byte registers 4–7 are AH, CH, DH, BH; with one, SPL, BPL, SIL, DIL.
    fn new(num: u8, size: u8, rex: u8) -> Self {
        let high_byte = size == 1 && rex == 0 && (4..8).contains(&num);
        Self { num: if high_byte { num - 4 } else { num }, high_byte }
    }
}

/// A segment register, in encoding order (ES = 0 … GS = 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    /// ES.
    Es,
    /// CS.
    Cs,
    /// SS.
    Ss,
    /// DS.
    Ds,
    /// FS.
    Fs,
    /// GS.
    Gs,
}

/// The non-memory operand of an [`MmioOp::Alu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// A register, read at the operation's size (for BT*: its full value is the bit offset).
    Reg(Reg),
    /// An immediate, already sign-extended and truncated to the operation's size (for BT*:
    /// the imm8 bit offset, zero-extended).
    Imm(u64),
}

/// What the instruction does with the memory operand ([`Mmio::size`] bytes at the exit's gpa).
/// Register writes follow the usual rules: 8- and 16-bit writes keep the rest of the register,
/// 32-bit writes clear bits 63:32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioOp {
    /// Load into register `reg` (MOV).
    Load {
        /// Destination register.
        reg: Reg,
    },
    /// Store register `reg` (MOV).
    StoreReg {
        /// Source register.
        reg: Reg,
    },
    /// Store an immediate (MOV).
    StoreImm {
        /// The value (already sign-extended to the operand size).
        value: u64,
    },
    /// Load, zero- or sign-extend to `width` bytes, write to `reg` (MOVZX, MOVSX, MOVSXD).
    Extend {
        /// Destination register.
        reg: Reg,
        /// Destination size in bytes: 2, 4 or 8.
        width: u8,
        /// Sign-extend (MOVSX, MOVSXD) rather than zero-extend (MOVZX).
        signed: bool,
    },
    /// Read memory, `(value, rflags) = alu(op, size, memory, src, rflags)`, write `value` back
    /// if `op.writes()`. Covers the ALU forms with a memory destination, TEST, CMP mem-first,
    /// INC, DEC, NOT, NEG and the BT family.
    Alu {
        /// The operation.
        op: AluOp,
        /// The other operand (`Imm(0)` for INC, DEC, NOT, NEG, which have none).
        src: Operand,
    },
    /// Read memory, `(value, rflags) = alu(op, size, reg, memory, rflags)`, write `value` to
    /// `reg` if `op.writes()`: the ALU forms with a register destination (and CMP reg-first).
    AluToReg {
        /// The operation.
        op: AluOp,
        /// Destination (and first source) register.
        reg: Reg,
    },
    /// Exchange memory and `reg` (XCHG, atomic whether or not LOCK is given).
    Xchg {
        /// The register.
        reg: Reg,
    },
    /// MOVS, STOS, LODS, INS or OUTS, possibly repeated: the caller runs the loop (see
    /// [`StringOp`]).
    String(StringOp),
    /// CLFLUSH, CLFLUSHOPT, CLWB, PREFETCH*: no data access; complete it by skipping it.
    NoAccess,
}

impl MmioOp {
    /// Whether the instruction may read the MMIO operand.
    pub fn reads(&self) -> bool {
        match self {
            Self::StoreReg { .. } | Self::StoreImm { .. } | Self::NoAccess => false,
            Self::String(s) => matches!(s.src(), StrOperand::Mem { .. }),
            _ => true,
        }
    }

    /// Whether the instruction may write the MMIO operand.
    pub fn writes(&self) -> bool {
        match self {
            Self::StoreReg { .. } | Self::StoreImm { .. } | Self::Xchg { .. } => true,
            Self::Alu { op, .. } => op.writes(),
            Self::String(s) => matches!(s.dst(), StrOperand::Mem { .. }),
            _ => false,
        }
    }
}

/// Which string instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrKind {
    /// MOVS: `ES:[rDI] = seg:[rSI]`, both indexes step.
    Movs,
    /// STOS: `ES:[rDI] = rAX`, rDI steps.
    Stos,
    /// LODS: `rAX = seg:[rSI]`, rSI steps.
    Lods,
    /// INS: `ES:[rDI] = port DX`, rDI steps.
    Ins,
    /// OUTS: `port DX = seg:[rSI]`, rSI steps.
    Outs,
}

/// One side of a string instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrOperand {
    /// The accumulator (AL, AX, EAX, RAX by element size).
    Rax,
    /// The I/O port in DX.
    Port,
    /// Memory at `seg:index`, where `index` is register 6 (rSI) or 7 (rDI).
    Mem {
        /// Segment.
        seg: Seg,
        /// Index register number.
        index: u8,
    },
}

/// The count and index registers of a string instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrRegs {
    /// RCX.
    pub rcx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
}

/// A decoded MOVS/STOS/LODS/INS/OUTS. The caller finds which side is MMIO from [`Self::src`] and
/// [`Self::dst`] (segment base + [`Self::offset`], translated, against the exit's gpa), runs
/// [`Self::count`] iterations (or part of them, then re-enters without advancing RIP), and
/// updates the registers with [`Self::advance`]. RFLAGS.DF gives the direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StringOp {
    /// Which instruction.
    pub kind: StrKind,
    /// Element size in bytes (as [`Mmio::size`]).
    pub size: u8,
    /// An F3 or F2 prefix (the same for these instructions): repeat while rCX is not zero.
    pub rep: bool,
    /// Address size in bytes, 2, 4 or 8: the width of rCX, rSI, rDI and of the offsets.
    pub addr_size: u8,
    /// Segment of the rSI side (DS unless overridden; in 64-bit mode only FS and GS override);
    /// the rDI side is always ES.
    pub seg: Seg,
}

impl StringOp {
    /// Where the data comes from.
    pub fn src(&self) -> StrOperand {
        match self.kind {
            StrKind::Stos => StrOperand::Rax,
            StrKind::Ins => StrOperand::Port,
            _ => StrOperand::Mem { seg: self.seg, index: 6 },
        }
    }

    /// Where the data goes.
    pub fn dst(&self) -> StrOperand {
        match self.kind {
            StrKind::Lods => StrOperand::Rax,
            StrKind::Outs => StrOperand::Port,
            _ => StrOperand::Mem { seg: Seg::Es, index: 7 },
        }
    }

    /// Iterations for count register value `rcx`: its low `addr_size` bytes with REP, else 1.
    pub fn count(&self, rcx: u64) -> u64 {
        if self.rep { rcx & size_mask(self.addr_size) } else { 1 }
    }

    /// How far the index registers move per element: `size`, negative when `df` (RFLAGS.DF).
    pub fn step(&self, df: bool) -> i64 {
        let s = i64::from(self.size);
        if df { -s } else { s }
    }

    /// The offset in its segment of element `i` (0-based) of the side whose index register
    /// held `index` at the start: it wraps at the address size.
    pub fn offset(&self, index: u64, df: bool, i: u64) -> u64 {
        index.wrapping_add((self.step(df) as u64).wrapping_mul(i)) & size_mask(self.addr_size)
    }

    /// The registers after `n` elements: the index registers the instruction uses step by
    /// `n * step(df)`, RCX (with REP) drops by `n`, each in its low `addr_size` bytes (a 4-byte
    /// address size clears bits 63:32, a 2-byte one keeps bits 63:16); `n = 0` changes none.
    pub fn advance(&self, regs: StrRegs, df: bool, n: u64) -> StrRegs {
        if n == 0 {
            return regs;
        }
        // An index register is written like any register of `addr_size` bytes.
        let put = |old, new| crate::io::merge_reg(old, self.addr_size, new, false);
        let d = (self.step(df) as u64).wrapping_mul(n);
        let mv = |old: u64, side: StrOperand| match side {
            StrOperand::Mem { .. } => put(old, old.wrapping_add(d)),
            _ => old,
        };
        StrRegs {
            rcx: if self.rep { put(regs.rcx, regs.rcx.wrapping_sub(n)) } else { regs.rcx },
            rsi: mv(regs.rsi, self.src()),
            rdi: mv(regs.rdi, self.dst()),
        }
    }
}

/// A decoded MMIO access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mmio {
    /// What it does.
    pub op: MmioOp,
    /// Size of the memory access in bytes: 1, 2, 4 or 8 (per element for strings; 1 for
    /// [`MmioOp::NoAccess`]).
    pub size: u8,
    /// Instruction length, prefixes included (at most [`MAX_INSN_LEN`]).
    pub len: u8,
}

/// Why an instruction cannot be emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// The instruction would be longer than 15 bytes (the CPU raises #GP instead).
    TooLong,
    /// Not one of the decoded forms (e.g. SSE moves, MUL, CMPXCHG, XADD, CMPS, SCAS).
    Unsupported,
    /// ModRM names a register (mod = 3): no memory operand, so it cannot have made the access.
    RegisterOperand,
    /// A second, implicit memory operand (the stack of PUSH, POP and CALL through memory) that
    /// this decoder cannot tell apart from the MMIO one.
    TwoMemoryOperands,
    /// LOCK on a form that does not allow it (the CPU raises #UD instead).
    Lock,
}

/// Byte-by-byte reading of the instruction, bounded by the bytes and by [`MAX_INSN_LEN`].
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.at += n;
        if self.at > MAX_INSN_LEN {
            Err(DecodeError::TooLong)
        } else if self.at > self.bytes.len() {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }

    /// The next `n` bytes as a little-endian value sign-extended to 64 bits, truncated to `size`.
    fn imm(&mut self, n: usize, size: u8) -> Result<u64, DecodeError> {
        self.skip(n)?;
        let b = self.bytes.get(self.at - n..self.at).ok_or(DecodeError::Truncated)?;
        let raw = b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x));
        let sh = 64 - 8 * n as u32;
        Ok((((raw << (sh % 64)) as i64) >> (sh % 64)) as u64 & size_mask(size))
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.imm(1, 1)? as u8)
    }
}

/// What a ModRM opcode does, before its ModRM byte and immediate are read.
enum Form {
    Store,
    Load,
    MovImm,
    Extend(bool),
    AluMem(AluOp),
    AluReg(AluOp),
    Group1,
    Xchg,
    Group3,
    Group5,
    Pop,
    Group8,
    Hint,
}

/// Decodes the instruction at the start of `bytes`, executed in `mode`. Bytes past the
/// instruction are ignored; the result's `len` says where it ends.
pub fn decode(bytes: &[u8], mode: CpuMode) -> Result<Mmio, DecodeError> {
    use {DecodeError::*, MmioOp::*};
    let mut c = Cursor { bytes, at: 0 };
    let (mut o16, mut a_pfx, mut lock, mut rep, mut seg, mut rex) =
        (false, false, false, false, Seg::Ds, 0u8);
    let opcode = loop {
        let b = c.byte()?;
        match b {
            0x66 => o16 = true,
            0x67 => a_pfx = true,
            0xf0 => lock = true,
            0xf2 | 0xf3 => rep = true,
            // 64-bit mode ignores ES, CS, SS and DS overrides (they do not cancel FS or GS).
            0x26 | 0x2e | 0x36 | 0x3e if mode == CpuMode::Bits64 => {}
            0x26 => seg = Seg::Es,
            0x2e => seg = Seg::Cs,
            0x36 => seg = Seg::Ss,
            0x3e => seg = Seg::Ds,
            0x64 => seg = Seg::Fs,
            0x65 => seg = Seg::Gs,
            // REX counts only right before the opcode: a later legacy prefix cancels it.
            0x40..=0x4f if mode == CpuMode::Bits64 => {
                rex = b;
                continue;
            }
            _ => break b,
        }
        rex = 0;
    };
    let w = rex & 8 != 0;
    // The operand-size prefix toggles the code segment's default (16 bits in 16-bit code).
    let wide = if w {
        8
    } else if o16 != (mode == CpuMode::Bits16) {
        2
    } else {
        4
    };
    let addr_size = match mode {
        CpuMode::Bits64 => 8 >> u8::from(a_pfx),
        CpuMode::Bits32 => 4 >> u8::from(a_pfx),
        CpuMode::Bits16 => 2 << u8::from(a_pfx),
    };
    let sz = |op: u8| if op & 1 == 0 { 1 } else { wide };
    let two = opcode == 0x0f;
    let op = if two { c.byte()? } else { opcode };
    let (mop, size) = match (two, op) {
        // MOV with a moffs operand: no ModRM, the address is as wide as the address size.
        (false, 0xa0..=0xa3) => {
            c.skip(usize::from(addr_size))?;
            let reg = Reg { num: 0, high_byte: false };
            (if op < 0xa2 { Load { reg } } else { StoreReg { reg } }, sz(op))
        }
        (false, 0xa4 | 0xa5 | 0xaa..=0xad) => {
            let kind = match op {
                0xa4 | 0xa5 => StrKind::Movs,
                0xaa | 0xab => StrKind::Stos,
                _ => StrKind::Lods,
            };
            (String(StringOp { kind, size: sz(op), rep, addr_size, seg }), sz(op))
        }
        // INS / OUTS: ports are at most 32 bits wide, so REX.W does not widen them.
        (false, 0x6c..=0x6f) => {
            let kind = if op < 0x6e { StrKind::Ins } else { StrKind::Outs };
            let size = sz(op).min(4);
            (String(StringOp { kind, size, rep, addr_size, seg }), size)
        }
        _ => {
            let (size, form) = match (two, op) {
                (false, 0x88..=0x8b) => {
                    (sz(op), if op & 2 == 0 { Form::Store } else { Form::Load })
                }
                (false, 0xc6 | 0xc7) => (sz(op), Form::MovImm),
                // 00–3F with bits 2:0 < 4: op r/m,r (bit 1 clear) or op r,r/m; bits 5:3 the op.
                (false, 0x00..=0x3f) if op & 4 == 0 => {
                    let alu = AluOp::group1(op >> 3);
                    (sz(op), if op & 2 == 0 { Form::AluMem(alu) } else { Form::AluReg(alu) })
                }
                // 82 is 80's alias outside 64-bit mode.
                (false, 0x80..=0x83) if op != 0x82 || mode != CpuMode::Bits64 => {
                    (sz(op), Form::Group1)
                }
                (false, 0x84 | 0x85) => (sz(op), Form::AluMem(AluOp::Test)),
                (false, 0x86 | 0x87) => (sz(op), Form::Xchg),
                (false, 0xf6 | 0xf7) => (sz(op), Form::Group3),
                (false, 0xfe | 0xff) => (sz(op), Form::Group5),
                (false, 0x8f) => (wide, Form::Pop),
                // MOVSXD (ARPL outside 64-bit mode); without REX.W it is a plain load.
                (false, 0x63) if mode == CpuMode::Bits64 && w => (4, Form::Extend(true)),
                (false, 0x63) if mode == CpuMode::Bits64 => (wide, Form::Load),
                (true, 0xb6 | 0xb7 | 0xbe | 0xbf) => (1 + (op & 1), Form::Extend(op & 8 != 0)),
                (true, 0xa3 | 0xab | 0xb3 | 0xbb) => (wide, Form::AluMem(AluOp::bit(op >> 3))),
                (true, 0xba) => (wide, Form::Group8),
                (true, 0x0d | 0x18 | 0xae) => (1, Form::Hint),
                _ => return Err(Unsupported),
            };
            let modrm = c.byte()?;
            let (md, r3, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
            if md == 3 {
                return Err(RegisterOperand);
            }
            let disp = if addr_size == 2 {
                match (md, rm) {
                    (0, 6) | (2, _) => 2,
                    (0, _) => 0,
                    _ => 1,
                }
            } else {
                // A SIB byte follows rm = 4; base 5 with mod 0 means disp32 (as rm = 5 does,
                // RIP-relative in 64-bit mode).
                let base = if rm == 4 { c.byte()? & 7 } else { rm };
                match (md, base) {
                    (0, 5) | (2, _) => 4,
                    (0, _) => 0,
                    _ => 1,
                }
            };
            c.skip(disp)?;
            let rn = r3 | ((rex & 4) << 1);
            let reg = Reg::new(rn, size, rex);
            // Immediates: 1 byte for byte operations, 2 for 16-bit, else 4 (sign-extended).
            let iz = usize::from(size.min(4));
            let unary = |op| Alu { op, src: Operand::Imm(0) };
            let mop = match form {
                Form::Store => StoreReg { reg },
                Form::Load => Load { reg },
                Form::MovImm if r3 == 0 => StoreImm { value: c.imm(iz, size)? },
                Form::Extend(signed) => {
                    Extend { reg: Reg::new(rn, wide, rex), width: wide, signed }
                }
                Form::AluMem(op) => Alu { op, src: Operand::Reg(reg) },
                Form::AluReg(op) => AluToReg { op, reg },
                Form::Group1 => {
                    let n = if op == 0x81 { iz } else { 1 };
                    Alu { op: AluOp::group1(r3), src: Operand::Imm(c.imm(n, size)?) }
                }
                Form::Xchg => Xchg { reg },
                // TEST is /0 (and its undocumented alias /1).
                Form::Group3 if r3 <= 1 => {
                    Alu { op: AluOp::Test, src: Operand::Imm(c.imm(iz, size)?) }
                }
                Form::Group3 if r3 == 2 => unary(AluOp::Not),
                Form::Group3 if r3 == 3 => unary(AluOp::Neg),
                Form::Group5 if r3 == 0 => unary(AluOp::Inc),
                Form::Group5 if r3 == 1 => unary(AluOp::Dec),
                Form::Group5 if op == 0xff && matches!(r3, 2 | 3 | 6) => {
                    return Err(TwoMemoryOperands);
                }
                Form::Pop if r3 == 0 => return Err(TwoMemoryOperands),
                Form::Group8 if r3 >= 4 => {
                    Alu { op: AluOp::bit(r3), src: Operand::Imm(c.imm(1, 1)?) }
                }
                // PREFETCH/PREFETCHW/PREFETCHWT1 (0F 0D /0–/2), PREFETCHh (0F 18 /0–/3),
                // CLFLUSH (0F AE /7), CLFLUSHOPT (66 0F AE /7), CLWB (66 0F AE /6).
                Form::Hint
                    if match op {
                        0x0d => r3 <= 2,
                        0x18 => r3 <= 3,
                        _ => !rep && (r3 == 7 || (r3 == 6 && o16)),
                    } =>
                {
                    NoAccess
                }
                _ => return Err(Unsupported),
            };
            (mop, size)
        }
    };
    if lock && !matches!(mop, Alu { op, .. } if op.writes()) && !matches!(mop, Xchg { .. }) {
        return Err(Lock);
    }
    Ok(Mmio { op: mop, size, len: c.at as u8 })
}
