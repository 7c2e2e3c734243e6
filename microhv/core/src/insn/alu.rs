//! The arithmetic the MMIO caller performs for ALU forms: result and RFLAGS, as the CPU has them.

use crate::io::size_mask;

/// An operation on the memory operand (see [`super::MmioOp::Alu`] and
/// [`super::MmioOp::AluToReg`]); `dst` and `src` are [`alu`]'s arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AluOp {
    /// `dst + src`.
    Add,
    /// `dst | src`.
    Or,
    /// `dst + src + CF`.
    Adc,
    /// `dst - src - CF`.
    Sbb,
    /// `dst & src`.
    And,
    /// `dst - src`.
    Sub,
    /// `dst ^ src`.
    Xor,
    /// `dst - src`, flags only.
    Cmp,
    /// `dst & src`, flags only.
    Test,
    /// `dst + 1`, CF unchanged (`src` unused).
    Inc,
    /// `dst - 1`, CF unchanged (`src` unused).
    Dec,
    /// `!dst`, no flag changes (`src` unused).
    Not,
    /// `0 - dst` (`src` unused).
    Neg,
    /// CF = bit `src` (modulo the operand width) of `dst`, flags only.
    Bt,
    /// As BT, then set that bit.
    Bts,
    /// As BT, then clear that bit.
    Btr,
    /// As BT, then complement that bit.
    Btc,
}

impl AluOp {
    /// Group 1 (opcodes 00–3F bits 5:3, and the ModRM reg field of 80/81/83), by number.
    pub(super) fn group1(n: u8) -> Self {
        [Self::Add, Self::Or, Self::Adc, Self::Sbb, Self::And, Self::Sub, Self::Xor, Self::Cmp]
            [usize::from(n & 7)]
    }

    /// BT, BTS, BTR, BTC by number (0F A3/AB/B3/BB bits 4:3, 0F BA /4–/7 reg field).
    pub(super) fn bit(n: u8) -> Self {
        [Self::Bt, Self::Bts, Self::Btr, Self::Btc][usize::from(n & 3)]
    }

    /// Whether the result is written back (false for CMP, TEST and BT, which only set flags).
    /// Exactly these writing forms accept a LOCK prefix when the destination is memory.
    pub fn writes(self) -> bool {
        !matches!(self, Self::Cmp | Self::Test | Self::Bt)
    }
}

/// The RFLAGS status bits [`alu`] may change: CF, PF, AF, ZF, SF, OF.
pub const ARITH_FLAGS: u64 = 0x8d5;

/// Computes `dst op src` on `size`-byte operands (1, 2, 4 or 8; the inputs are truncated to it)
/// with incoming flags `rflags` (CF feeds ADC, SBB; INC and DEC keep it), and returns the
/// result (truncated to `size`) and the new RFLAGS: `rflags` with the status flags `op`
/// defines replaced. Where the architecture leaves a flag undefined, this is what is left: AF
/// cleared after OR/AND/XOR/TEST; OF, SF, AF, PF and ZF kept after the BT family.
pub fn alu(op: AluOp, size: u8, dst: u64, src: u64, rflags: u64) -> (u64, u64) {
    use AluOp::*;
    let m = size_mask(size);
    let sign = m ^ (m >> 1);
    let (a, b, cf_in) = (dst & m, src & m, rflags & 1);
    let wide = |x: u64| u128::from(x);
    let (r, cf, of, af) = match op {
        Add | Adc | Inc => {
            let (b, c) = match op {
                Inc => (1, 0),
                Adc => (b, cf_in),
                _ => (b, 0),
            };
            let r = a.wrapping_add(b).wrapping_add(c) & m;
            let carry = u64::from(wide(a) + wide(b) + wide(c) > wide(m));
            let cf = if op == Inc { cf_in } else { carry };
            (r, cf, !(a ^ b) & (a ^ r) & sign, (a ^ b ^ r) & 0x10)
        }
        Sub | Sbb | Cmp | Dec | Neg => {
            let (x, y, c) = match op {
                Neg => (0, a, 0),
                Dec => (a, 1, 0),
                Sbb => (a, b, cf_in),
                _ => (a, b, 0),
            };
            let r = x.wrapping_sub(y).wrapping_sub(c) & m;
            let borrow = u64::from(wide(y) + wide(c) > wide(x));
            let cf = if op == Dec { cf_in } else { borrow };
            (r, cf, (x ^ y) & (x ^ r) & sign, (x ^ y ^ r) & 0x10)
        }
        Or => (a | b, 0, 0, 0),
        And | Test => (a & b, 0, 0, 0),
        Xor => (a ^ b, 0, 0, 0),
        Not => return (!a & m, rflags),
        Bt | Bts | Btr | Btc => {
            let bit = 1u64 << (b & u64::from(m.count_ones() - 1));
            let r = match op {
                Bts => a | bit,
                Btr => a & !bit,
                Btc => a ^ bit,
                _ => a,
            };
            return (r, (rflags & !1) | u64::from(a & bit != 0));
        }
    };
    let flag = |set: bool, bit: u32| u64::from(set) << bit;
    let status = flag(cf != 0, 0)
        | flag((r as u8).count_ones().is_multiple_of(2), 2)
        | flag(af != 0, 4)
        | flag(r == 0, 6)
        | flag(r & sign != 0, 7)
        | flag(of != 0, 11);
    (r, (rflags & !ARITH_FLAGS) | status)
}
