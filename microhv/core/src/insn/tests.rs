//! Host tests of the decoders, with the byte sequences compilers and assemblers emit (GNU as
//! for every form below, GCC 12 `-O2` for the `readl`/`writel`-style ones), and of the ALU
//! flags against the host CPU.

use super::*;
use crate::exit::CpuMode::{self, *};
use AluOp::*;
use StrKind::*;

fn r(num: u8) -> Reg {
    Reg { num, high_byte: false }
}
fn hb(num: u8) -> Reg {
    Reg { num, high_byte: true }
}
fn ok(op: MmioOp, size: u8, len: u8) -> Result<Mmio, DecodeError> {
    Ok(Mmio { op, size, len })
}
fn ld(n: u8) -> MmioOp {
    MmioOp::Load { reg: r(n) }
}
fn st(n: u8) -> MmioOp {
    MmioOp::StoreReg { reg: r(n) }
}
fn sti(value: u64) -> MmioOp {
    MmioOp::StoreImm { value }
}
fn ext(n: u8, width: u8, signed: bool) -> MmioOp {
    MmioOp::Extend { reg: r(n), width, signed }
}
fn rmw_r(op: AluOp, reg: Reg) -> MmioOp {
    MmioOp::Alu { op, src: Operand::Reg(reg) }
}
fn rmw_i(op: AluOp, v: u64) -> MmioOp {
    MmioOp::Alu { op, src: Operand::Imm(v) }
}
fn to_reg(op: AluOp, reg: Reg) -> MmioOp {
    MmioOp::AluToReg { op, reg }
}
fn xchg(reg: Reg) -> MmioOp {
    MmioOp::Xchg { reg }
}
fn string(kind: StrKind, size: u8, rep: bool, addr_size: u8, seg: Seg) -> MmioOp {
    MmioOp::String(StringOp { kind, size, rep, addr_size, seg })
}
const NOP: MmioOp = MmioOp::NoAccess;
const MOD_REG: Result<Mmio, DecodeError> = Err(DecodeError::RegisterOperand);
const UNSUP: Result<Mmio, DecodeError> = Err(DecodeError::Unsupported);
const TWO_MEM: Result<Mmio, DecodeError> = Err(DecodeError::TwoMemoryOperands);
const LOCK: Result<Mmio, DecodeError> = Err(DecodeError::Lock);

/// Decodes `bytes` (and, unless they are expected to be cut short, the same with trailing
/// bytes, which must not matter); for a decoded instruction, every shorter prefix of it is
/// `Truncated`.
fn check(mode: CpuMode, bytes: &[u8], want: Result<Mmio, DecodeError>) {
    assert_eq!(decode(bytes, mode), want, "{bytes:02x?} in {mode:?}");
    if want != Err(DecodeError::Truncated) {
        let mut padded = [0x90u8; 32];
        padded[..bytes.len()].copy_from_slice(bytes);
        assert_eq!(decode(&padded, mode), want, "{bytes:02x?} + trailing bytes in {mode:?}");
    }
    if let Ok(m) = want {
        assert_eq!(usize::from(m.len), bytes.len());
        for n in 0..bytes.len() {
            assert_eq!(decode(&bytes[..n], mode), Err(DecodeError::Truncated), "{n} bytes");
        }
    }
}

/// One `#[test]` per form and mode: `name: mode [bytes] => expected;`.
macro_rules! forms {
    ($($name:ident: $mode:ident $bytes:expr => $want:expr;)*) => {$(
        #[test]
        fn $name() {
            check($mode, &$bytes, $want);
        }
    )*};
}

forms! {
    // ---- 64-bit code ----------------------------------------------------------------------
    m64_mov_a1_moffs64: Bits64 [0xa1, 0x20, 0, 0xe0, 0xfe, 0, 0, 0, 0] => ok(ld(0), 4, 9);
    m64_mov_a1_moffs32_addr32: Bits64 [0x67, 0xa1, 0x20, 0, 0xe0, 0xfe] => ok(ld(0), 4, 6);
    m64_mov_a3_moffs64: Bits64 [0xa3, 0xb0, 0, 0xe0, 0xfe, 0, 0, 0, 0] => ok(st(0), 4, 9);
    m64_mov_a0_moffs_al: Bits64 [0xa0, 3, 0, 0xc0, 0xfe, 0, 0, 0, 0] => ok(ld(0), 1, 9);
    m64_mov_a2_moffs_al: Bits64 [0xa2, 3, 0, 0xc0, 0xfe, 0, 0, 0, 0] => ok(st(0), 1, 9);
    m64_mov_a3_rex_w: Bits64 [0x48, 0xa3, 0xf0, 0, 0xd0, 0xfe, 0, 0, 0, 0] => ok(st(0), 8, 10);
    m64_mov_8b_sib_abs32: Bits64 [0x8b, 0x04, 0x25, 0x20, 0, 0xe0, 0xfe] => ok(ld(0), 4, 7);
    m64_mov_8b_disp8: Bits64 [0x8b, 0x47, 0x20] => ok(ld(0), 4, 3);
    m64_mov_89_disp32: Bits64 [0x89, 0x88, 0xf0, 0, 0, 0] => ok(st(1), 4, 6);
    m64_mov_8b_rip_r9: Bits64 [0x4c, 0x8b, 0x0d, 0x10, 0, 0, 0] => ok(ld(9), 8, 7);
    m64_mov_8b_fs_abs: Bits64 [0x64, 0x8b, 0x04, 0x25, 0x10, 0, 0, 0] => ok(ld(0), 4, 8);
    m64_mov_8b_rsp_base_r8d: Bits64 [0x44, 0x8b, 0x44, 0x24, 0x08] => ok(ld(8), 4, 5);
    m64_mov_8b_sib_index_only: Bits64 [0x8b, 0x04, 0xc5, 0x78, 0x56, 0x34, 0x12] => ok(ld(0), 4, 7);
    m64_mov_8b_sib_disp32: Bits64 [0x8b, 0x8c, 0x88, 0x44, 0x33, 0x22, 0x11] => ok(ld(1), 4, 7);
    m64_mov_88_sil: Bits64 [0x40, 0x88, 0x37] => ok(st(6), 1, 3);
    m64_mov_8a_bpl: Bits64 [0x40, 0x8a, 0x2f] => ok(ld(5), 1, 3);
    m64_mov_88_spl: Bits64 [0x40, 0x88, 0x20] => ok(st(4), 1, 3);
    m64_mov_88_dil: Bits64 [0x40, 0x88, 0x38] => ok(st(7), 1, 3);
    m64_mov_88_r8b: Bits64 [0x44, 0x88, 0x00] => ok(st(8), 1, 3);
    m64_mov_88_ah: Bits64 [0x88, 0x23] => ok(MmioOp::StoreReg { reg: hb(0) }, 1, 2);
    m64_mov_8a_bh: Bits64 [0x8a, 0x3e] => ok(MmioOp::Load { reg: hb(3) }, 1, 2);
    m64_mov_89_r15_r12_base: Bits64 [0x4d, 0x89, 0x7c, 0x24, 0x08] => ok(st(15), 8, 5);
    m64_mov_66_89_word: Bits64 [0x66, 0x89, 0x13] => ok(st(2), 2, 3);
    m64_mov_c7_disp32: Bits64 [0xc7, 0x80, 0xb0, 0, 0, 0, 0, 0, 0, 0] => ok(sti(0), 4, 10);
    m64_mov_c6_r8: Bits64 [0x41, 0xc6, 0x00, 0x07] => ok(sti(7), 1, 4);
    m64_mov_66_c7_word: Bits64 [0x66, 0xc7, 0x03, 0x34, 0x12] => ok(sti(0x1234), 2, 5);
    m64_mov_c7_rex_w_sign_extends: Bits64 [0x48, 0xc7, 0, 0xff, 0xff, 0xff, 0xff]
        => ok(sti(u64::MAX), 8, 7);
    m64_mov_c7_sib_disp8_imm: Bits64 [0xc7, 0x44, 0x91, 0x10, 0xff, 1, 0, 0]
        => ok(sti(0x1ff), 4, 8);
    m64_movzx_b6_rip: Bits64 [0x0f, 0xb6, 0x05, 0x10, 0, 0, 0] => ok(ext(0, 4, false), 1, 7);
    m64_movzx_b7_r9d: Bits64 [0x44, 0x0f, 0xb7, 0x0f] => ok(ext(9, 4, false), 2, 4);
    m64_movsx_be_rax: Bits64 [0x48, 0x0f, 0xbe, 0x46, 0x03] => ok(ext(0, 8, true), 1, 5);
    m64_movsx_bf_edx: Bits64 [0x0f, 0xbf, 0x10] => ok(ext(2, 4, true), 2, 3);
    m64_movzx_b6_r12w: Bits64 [0x66, 0x44, 0x0f, 0xb6, 0x20] => ok(ext(12, 2, false), 1, 5);
    // MOVZX into a register numbered 4-7 without REX is ESP..EDI, not AH..BH.
    m64_movzx_b6_esi: Bits64 [0x0f, 0xb6, 0x30] => ok(ext(6, 4, false), 1, 3);
    m64_movsxd_63: Bits64 [0x48, 0x63, 0x4f, 0x20] => ok(ext(1, 8, true), 4, 4);
    m64_movsxd_63_without_w_is_a_load: Bits64 [0x63, 0x4f, 0x20] => ok(ld(1), 4, 3);
    m64_or_81_imm32: Bits64 [0x81, 0x8f, 0xf0, 0, 0, 0, 0, 1, 0, 0] => ok(rmw_i(Or, 0x100), 4, 10);
    m64_or_83_imm8: Bits64 [0x83, 0x08, 0x01] => ok(rmw_i(Or, 1), 4, 3);
    m64_and_81_imm32: Bits64 [0x81, 0xa7, 0xf0, 0, 0, 0, 0xff, 0xfe, 0xff, 0xff]
        => ok(rmw_i(And, 0xffff_feff), 4, 10);
    m64_and_83_imm8_sign_extends: Bits64 [0x83, 0x20, 0xfe] => ok(rmw_i(And, 0xffff_fffe), 4, 3);
    m64_or_83_rex_w: Bits64 [0x48, 0x83, 0x08, 0xf0] => ok(rmw_i(Or, !0xf), 8, 4);
    m64_or_80_r13: Bits64 [0x41, 0x80, 0x4d, 0x08, 0x80] => ok(rmw_i(Or, 0x80), 1, 5);
    m64_adc_83: Bits64 [0x83, 0x10, 0x01] => ok(rmw_i(Adc, 1), 4, 3);
    m64_sbb_80: Bits64 [0x80, 0x18, 0x01] => ok(rmw_i(Sbb, 1), 1, 3);
    m64_cmp_83: Bits64 [0x83, 0xbf, 0, 3, 0, 0, 0] => ok(rmw_i(Cmp, 0), 4, 7);
    m64_xor_31: Bits64 [0x31, 0x0a] => ok(rmw_r(Xor, r(1)), 4, 2);
    m64_add_01_r10: Bits64 [0x4c, 0x01, 0x50, 0x08] => ok(rmw_r(Add, r(10)), 8, 4);
    m64_add_03_r11d: Bits64 [0x44, 0x03, 0x58, 0x08] => ok(to_reg(Add, r(11)), 4, 4);
    m64_sub_2a_dh: Bits64 [0x2a, 0x31] => ok(to_reg(Sub, hb(2)), 1, 2);
    m64_cmp_3b: Bits64 [0x3b, 0xb7, 0, 3, 0, 0] => ok(to_reg(Cmp, r(6)), 4, 6);
    m64_cmp_39: Bits64 [0x39, 0xb7, 0, 3, 0, 0] => ok(rmw_r(Cmp, r(6)), 4, 6);
    m64_and_20_00: Bits64 [0x20, 0x00] => ok(rmw_r(And, r(0)), 1, 2);
    m64_or_09: Bits64 [0x09, 0x07] => ok(rmw_r(Or, r(0)), 4, 2);
    m64_or_0b: Bits64 [0x0b, 0x07] => ok(to_reg(Or, r(0)), 4, 2);
    m64_sub_29: Bits64 [0x29, 0x07] => ok(rmw_r(Sub, r(0)), 4, 2);
    m64_xor_32: Bits64 [0x32, 0x07] => ok(to_reg(Xor, r(0)), 1, 2);
    m64_adc_11: Bits64 [0x11, 0x07] => ok(rmw_r(Adc, r(0)), 4, 2);
    m64_sbb_1b: Bits64 [0x1b, 0x07] => ok(to_reg(Sbb, r(0)), 4, 2);
    m64_test_f7_imm32: Bits64 [0xf7, 0x87, 0, 3, 0, 0, 0, 0x10, 0, 0]
        => ok(rmw_i(Test, 0x1000), 4, 10);
    m64_test_f6_imm8: Bits64 [0xf6, 0x40, 0x20, 0x01] => ok(rmw_i(Test, 1), 1, 4);
    m64_test_66_f7_imm16: Bits64 [0x66, 0xf7, 0x00, 0x34, 0x12] => ok(rmw_i(Test, 0x1234), 2, 5);
    m64_test_85: Bits64 [0x85, 0x02] => ok(rmw_r(Test, r(0)), 4, 2);
    m64_test_84_ch: Bits64 [0x84, 0x2a] => ok(rmw_r(Test, hb(1)), 1, 2);
    m64_lock_or_83: Bits64 [0xf0, 0x83, 0x08, 0x01] => ok(rmw_i(Or, 1), 4, 4);
    m64_xchg_87: Bits64 [0x87, 0x37] => ok(xchg(r(6)), 4, 2);
    m64_xchg_86_r8b: Bits64 [0x44, 0x86, 0x00] => ok(xchg(r(8)), 1, 3);
    m64_lock_xchg_87: Bits64 [0xf0, 0x48, 0x87, 0x37] => ok(xchg(r(6)), 8, 4);
    m64_inc_ff: Bits64 [0xff, 0x00] => ok(rmw_i(Inc, 0), 4, 2);
    m64_dec_66_ff: Bits64 [0x66, 0xff, 0x4b, 0x02] => ok(rmw_i(Dec, 0), 2, 4);
    m64_inc_fe: Bits64 [0xfe, 0x00] => ok(rmw_i(Inc, 0), 1, 2);
    m64_not_f7: Bits64 [0xf7, 0x10] => ok(rmw_i(Not, 0), 4, 2);
    m64_neg_f7_rex_w: Bits64 [0x48, 0xf7, 0x18] => ok(rmw_i(Neg, 0), 8, 3);
    m64_bts_0fba_imm: Bits64 [0x0f, 0xba, 0x28, 0x05] => ok(rmw_i(Bts, 5), 4, 4);
    m64_bt_0fa3: Bits64 [0x0f, 0xa3, 0x08] => ok(rmw_r(Bt, r(1)), 4, 3);
    m64_btr_0fb3_rex_w: Bits64 [0x48, 0x0f, 0xb3, 0x10] => ok(rmw_r(Btr, r(2)), 8, 4);
    m64_btc_0fbb: Bits64 [0x0f, 0xbb, 0x10] => ok(rmw_r(Btc, r(2)), 4, 3);
    m64_bts_0fab: Bits64 [0x0f, 0xab, 0x10] => ok(rmw_r(Bts, r(2)), 4, 3);
    m64_lock_btc_0fba: Bits64 [0xf0, 0x0f, 0xba, 0x3f, 0x03] => ok(rmw_i(Btc, 3), 4, 5);
    m64_bt_0fba_imm: Bits64 [0x0f, 0xba, 0x20, 0x21] => ok(rmw_i(Bt, 0x21), 4, 4);
    m64_btc_0fba_imm_zero_extended: Bits64 [0x48, 0x0f, 0xba, 0x3b, 0xd9] => ok(rmw_i(Btc, 0xd9), 8, 5);
    m64_test_f7_slash1_alias: Bits64 [0xf7, 0x08, 1, 0, 0, 0] => ok(rmw_i(Test, 1), 4, 6);
    m64_err_82_is_invalid: Bits64 [0x82, 0x00, 0x01] => UNSUP;
    m64_err_mov_sreg: Bits64 [0x8e, 0x43, 0xff] => UNSUP;
    m64_rep_stosl: Bits64 [0xf3, 0xab] => ok(string(Stos, 4, true, 8, Seg::Ds), 4, 2);
    m64_rep_stosq: Bits64 [0xf3, 0x48, 0xab] => ok(string(Stos, 8, true, 8, Seg::Ds), 8, 3);
    m64_rep_stosb: Bits64 [0xf3, 0xaa] => ok(string(Stos, 1, true, 8, Seg::Ds), 1, 2);
    m64_rep_movsb: Bits64 [0xf3, 0xa4] => ok(string(Movs, 1, true, 8, Seg::Ds), 1, 2);
    m64_movsw: Bits64 [0x66, 0xa5] => ok(string(Movs, 2, false, 8, Seg::Ds), 2, 2);
    m64_lodsl: Bits64 [0xad] => ok(string(Lods, 4, false, 8, Seg::Ds), 4, 1);
    m64_lodsb: Bits64 [0xac] => ok(string(Lods, 1, false, 8, Seg::Ds), 1, 1);
    m64_rep_stosl_addr32: Bits64 [0x67, 0xf3, 0xab] => ok(string(Stos, 4, true, 4, Seg::Ds), 4, 3);
    m64_rep_movsl_fs: Bits64 [0x64, 0xf3, 0xa5] => ok(string(Movs, 4, true, 8, Seg::Fs), 4, 3);
    // In 64-bit mode ES/CS/SS/DS overrides are ignored, and do not cancel FS or GS.
    m64_movsb_es_override_ignored: Bits64 [0x26, 0xa4] => ok(string(Movs, 1, false, 8, Seg::Ds), 1, 2);
    m64_lodsb_gs_then_ds: Bits64 [0x65, 0x3e, 0xac] => ok(string(Lods, 1, false, 8, Seg::Gs), 1, 3);
    m64_repne_movsb_is_rep: Bits64 [0xf2, 0xa4] => ok(string(Movs, 1, true, 8, Seg::Ds), 1, 2);
    // INS / OUTS: REX.W does not widen them past 32 bits; only OUTS's source is overridable.
    m64_rep_insb: Bits64 [0xf3, 0x6c] => ok(string(Ins, 1, true, 8, Seg::Ds), 1, 2);
    m64_insl_rex_w: Bits64 [0x48, 0x6d] => ok(string(Ins, 4, false, 8, Seg::Ds), 4, 2);
    m64_rep_outsw: Bits64 [0x66, 0xf3, 0x6f] => ok(string(Outs, 2, true, 8, Seg::Ds), 2, 3);
    m64_outsb_gs_addr32: Bits64 [0x65, 0x67, 0x6e] => ok(string(Outs, 1, false, 4, Seg::Gs), 1, 3);
    m64_rep_outsl_66_rex_w: Bits64 [0xf3, 0x66, 0x48, 0x6f] => ok(string(Outs, 4, true, 8, Seg::Ds), 4, 4);
    m64_clflush: Bits64 [0x0f, 0xae, 0x38] => ok(NOP, 1, 3);
    m64_clflushopt: Bits64 [0x66, 0x0f, 0xae, 0x7f, 0x40] => ok(NOP, 1, 5);
    m64_clwb: Bits64 [0x66, 0x0f, 0xae, 0x30] => ok(NOP, 1, 4);
    m64_prefetcht0: Bits64 [0x0f, 0x18, 0x08] => ok(NOP, 1, 3);
    m64_prefetchw: Bits64 [0x0f, 0x0d, 0x08] => ok(NOP, 1, 3);
    m64_prefetchnta_sib: Bits64 [0x0f, 0x18, 0x44, 0xc8, 0x40] => ok(NOP, 1, 5);
    // A legacy prefix after REX cancels it: 66 applies, REX.W does not.
    m64_rex_then_legacy_prefix: Bits64 [0x48, 0x66, 0x89, 0x07] => ok(st(0), 2, 4);
    // The last REX counts.
    m64_two_rex: Bits64 [0x48, 0x41, 0x89, 0x07] => ok(st(0), 4, 4);
    m64_rex_w_beats_66: Bits64 [0x66, 0x48, 0x89, 0x07] => ok(st(0), 8, 4);
    m64_err_reg_reg: Bits64 [0x89, 0xc8] => MOD_REG;
    m64_err_reg_reg_alu: Bits64 [0x83, 0xc8, 0x01] => MOD_REG;
    m64_err_lfence: Bits64 [0x0f, 0xae, 0xe8] => MOD_REG;
    m64_err_lock_mov: Bits64 [0xf0, 0x89, 0x07] => LOCK;
    m64_err_lock_cmp: Bits64 [0xf0, 0x39, 0x07] => LOCK;
    m64_err_lock_to_reg: Bits64 [0xf0, 0x03, 0x00] => LOCK;
    m64_err_lock_test: Bits64 [0xf0, 0xf7, 0x00, 1, 0, 0, 0] => LOCK;
    m64_err_lock_bt: Bits64 [0xf0, 0x0f, 0xa3, 0x08] => LOCK;
    m64_err_lock_stos: Bits64 [0xf0, 0xab] => LOCK;
    m64_err_push_mem: Bits64 [0xff, 0x30] => TWO_MEM;
    m64_err_pop_mem: Bits64 [0x8f, 0x00] => TWO_MEM;
    m64_err_call_mem: Bits64 [0xff, 0x10] => TWO_MEM;
    m64_err_cmpsb: Bits64 [0xa6] => UNSUP;
    m64_err_xsaveopt: Bits64 [0x0f, 0xae, 0x30] => UNSUP;
    m64_err_clflush_with_rep: Bits64 [0xf3, 0x0f, 0xae, 0x38] => UNSUP;
    m64_err_mul: Bits64 [0xf7, 0x20] => UNSUP;
    m64_err_movdqu: Bits64 [0xf3, 0x0f, 0x6f, 0x00] => UNSUP;
    m64_err_xadd: Bits64 [0x0f, 0xc1, 0x02] => UNSUP;
    m64_err_cmpxchg: Bits64 [0x0f, 0xb1, 0x0a] => UNSUP;
    m64_err_mov_c7_reg_field: Bits64 [0xc7, 0x08, 0, 0, 0, 0] => UNSUP;
    m64_err_jmp_mem: Bits64 [0xff, 0x20] => UNSUP;
    m64_err_bt_group8_low: Bits64 [0x0f, 0xba, 0x00, 0x01] => UNSUP;
    m64_err_prefetch_reserved: Bits64 [0x0f, 0x18, 0x20] => UNSUP;
    m64_err_inc_fe_2: Bits64 [0xfe, 0x10] => UNSUP;
    m64_err_vex: Bits64 [0xc5, 0xfa, 0x6f, 0x00] => UNSUP;
    m64_err_empty: Bits64 [] => Err(DecodeError::Truncated);
    m64_err_truncated_modrm: Bits64 [0x8b] => Err(DecodeError::Truncated);
    m64_err_truncated_disp: Bits64 [0x8b, 0x80, 1] => Err(DecodeError::Truncated);
    m64_err_truncated_moffs: Bits64 [0xa1, 0x20, 0, 0xe0, 0xfe] => Err(DecodeError::Truncated);
    m64_err_too_long: Bits64 [0x66; 20] => Err(DecodeError::TooLong);
    // 14 prefixes + 8B 00 is 16 bytes.
    m64_err_too_long_at_modrm: Bits64 [0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x3e,
        0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0x8b, 0x00] => Err(DecodeError::TooLong);

    // ---- 32-bit code ----------------------------------------------------------------------
    m32_mov_a1_moffs32: Bits32 [0xa1, 0x20, 0, 0xe0, 0xfe] => ok(ld(0), 4, 5);
    m32_mov_a3_moffs32: Bits32 [0xa3, 0xb0, 0, 0xe0, 0xfe] => ok(st(0), 4, 5);
    m32_mov_a0_moffs32: Bits32 [0xa0, 3, 0, 0xc0, 0xfe] => ok(ld(0), 1, 5);
    m32_mov_a2_moffs32: Bits32 [0xa2, 0x10, 0, 0xc0, 0xfe] => ok(st(0), 1, 5);
    m32_mov_66_a1: Bits32 [0x66, 0xa1, 0x20, 0, 0xe0, 0xfe] => ok(ld(0), 2, 6);
    m32_mov_67_a1_moffs16: Bits32 [0x67, 0xa1, 0x34, 0x12] => ok(ld(0), 4, 4);
    m32_mov_c7_abs: Bits32 [0xc7, 0x05, 0xb0, 0, 0xe0, 0xfe, 0, 0, 0, 0] => ok(sti(0), 4, 10);
    m32_mov_c7_disp32: Bits32 [0xc7, 0x80, 0xb0, 0, 0, 0, 0, 0, 0, 0] => ok(sti(0), 4, 10);
    m32_mov_8b_sib_esp: Bits32 [0x8b, 0x44, 0x24, 0x04] => ok(ld(0), 4, 4);
    m32_mov_8b_sib_scaled: Bits32 [0x8b, 0x54, 0x88, 0x10] => ok(ld(2), 4, 4);
    m32_mov_8b_es: Bits32 [0x26, 0x8b, 0x0f] => ok(ld(1), 4, 3);
    m32_mov_8b_abs: Bits32 [0x8b, 0x05, 0x20, 0, 0xe0, 0xfe] => ok(ld(0), 4, 6);
    m32_mov_88_dh: Bits32 [0x88, 0x31] => ok(MmioOp::StoreReg { reg: hb(2) }, 1, 2);
    m32_mov_c6_ebp: Bits32 [0x3e, 0xc6, 0x45, 0x00, 0x07] => ok(sti(7), 1, 5);
    m32_mov_67_8b_addr16: Bits32 [0x67, 0x8b, 0x00] => ok(ld(0), 4, 3);
    m32_mov_67_8b_addr16_disp16: Bits32 [0x67, 0x8b, 0x06, 0x34, 0x12] => ok(ld(0), 4, 5);
    m32_mov_67_8b_addr16_bp_di: Bits32 [0x67, 0x8b, 0x4b, 0x10] => ok(ld(1), 4, 4);
    m32_mov_66_89: Bits32 [0x66, 0x89, 0x03] => ok(st(0), 2, 3);
    m32_movzx_b6_abs: Bits32 [0x0f, 0xb6, 0x05, 3, 0, 0xc0, 0xfe] => ok(ext(0, 4, false), 1, 7);
    m32_movsx_be_abs: Bits32 [0x0f, 0xbe, 0x05, 3, 0, 0xc0, 0xfe] => ok(ext(0, 4, true), 1, 7);
    m32_movzx_b7: Bits32 [0x0f, 0xb7, 0x4b, 0x10] => ok(ext(1, 4, false), 2, 4);
    m32_movsx_bf_66: Bits32 [0x66, 0x0f, 0xbf, 0x10] => ok(ext(2, 2, true), 2, 4);
    m32_or_83: Bits32 [0x83, 0x08, 0x01] => ok(rmw_i(Or, 1), 4, 3);
    m32_or_81_abs: Bits32 [0x81, 0x0d, 0xf0, 0, 0xe0, 0xfe, 0, 1, 0, 0] => ok(rmw_i(Or, 0x100), 4, 10);
    m32_and_80: Bits32 [0x80, 0x60, 0x01, 0xfe] => ok(rmw_i(And, 0xfe), 1, 4);
    m32_sub_29: Bits32 [0x29, 0x4d, 0x10] => ok(rmw_r(Sub, r(1)), 4, 3);
    m32_cmp_3b_abs: Bits32 [0x3b, 0x05, 0, 3, 0xe0, 0xfe] => ok(to_reg(Cmp, r(0)), 4, 6);
    m32_test_f7_abs: Bits32 [0xf7, 0x05, 0, 3, 0xe0, 0xfe, 0, 0x10, 0, 0]
        => ok(rmw_i(Test, 0x1000), 4, 10);
    m32_inc_ff_abs: Bits32 [0xff, 0x05, 0, 3, 0xe0, 0xfe] => ok(rmw_i(Inc, 0), 4, 6);
    m32_xchg_87: Bits32 [0x87, 0x02] => ok(xchg(r(0)), 4, 2);
    m32_lock_bts: Bits32 [0xf0, 0x0f, 0xba, 0x28, 0x05] => ok(rmw_i(Bts, 5), 4, 5);
    m32_rep_stosl: Bits32 [0xf3, 0xab] => ok(string(Stos, 4, true, 4, Seg::Ds), 4, 2);
    m32_rep_movsw: Bits32 [0x66, 0xf3, 0xa5] => ok(string(Movs, 2, true, 4, Seg::Ds), 2, 3);
    m32_lodsb: Bits32 [0xac] => ok(string(Lods, 1, false, 4, Seg::Ds), 1, 1);
    m32_rep_stosl_addr16: Bits32 [0x67, 0xf3, 0xab] => ok(string(Stos, 4, true, 2, Seg::Ds), 4, 3);
    m32_rep_movsb_es: Bits32 [0x26, 0xf3, 0xa4] => ok(string(Movs, 1, true, 4, Seg::Es), 1, 3);
    m32_rep_insl: Bits32 [0xf3, 0x6d] => ok(string(Ins, 4, true, 4, Seg::Ds), 4, 2);
    m32_outsw: Bits32 [0x66, 0x6f] => ok(string(Outs, 2, false, 4, Seg::Ds), 2, 2);
    m32_rep_outsb_cs_addr16: Bits32 [0x2e, 0x67, 0xf3, 0x6e] => ok(string(Outs, 1, true, 2, Seg::Cs), 1, 4);
    m32_add_82_alias_of_80: Bits32 [0x82, 0x00, 0xe7] => ok(rmw_i(Add, 0xe7), 1, 3);
    m32_mov_8a_abs: Bits32 [0x8a, 0x0d, 0x10, 0, 0xc0, 0xfe] => ok(ld(1), 1, 6);
    m32_test_85_abs: Bits32 [0x85, 0x0d, 0, 3, 0xe0, 0xfe] => ok(rmw_r(Test, r(1)), 4, 6);
    m32_test_84: Bits32 [0x84, 0x03] => ok(rmw_r(Test, r(0)), 1, 2);
    m32_test_f6_abs: Bits32 [0xf6, 0x05, 0, 3, 0xe0, 0xfe, 0x01] => ok(rmw_i(Test, 1), 1, 7);
    m32_bt_0fa3: Bits32 [0x0f, 0xa3, 0x03] => ok(rmw_r(Bt, r(0)), 4, 3);
    m32_bts_0fab: Bits32 [0x0f, 0xab, 0x43, 0x10] => ok(rmw_r(Bts, r(0)), 4, 4);
    m32_xchg_86: Bits32 [0x86, 0x0a] => ok(xchg(r(1)), 1, 2);
    m32_clflushopt: Bits32 [0x66, 0x0f, 0xae, 0x38] => ok(NOP, 1, 4);
    m32_adc_13: Bits32 [0x13, 0x43, 0x04] => ok(to_reg(Adc, r(0)), 4, 3);
    m32_xor_30_ah: Bits32 [0x30, 0x26] => ok(rmw_r(Xor, hb(0)), 1, 2);
    m32_dec_ff: Bits32 [0xff, 0x08] => ok(rmw_i(Dec, 0), 4, 2);
    m32_neg_f7: Bits32 [0xf7, 0x18] => ok(rmw_i(Neg, 0), 4, 2);
    m32_not_f6: Bits32 [0xf6, 0x57, 0x10] => ok(rmw_i(Not, 0), 1, 3);
    m32_clflush: Bits32 [0x0f, 0xae, 0x38] => ok(NOP, 1, 3);
    m32_prefetcht1: Bits32 [0x0f, 0x18, 0x10] => ok(NOP, 1, 3);
    // No REX outside 64-bit mode: 40-4F are INC/DEC, and 63 is ARPL.
    m32_err_40_is_inc: Bits32 [0x48, 0x8b, 0x00] => UNSUP;
    m32_err_arpl: Bits32 [0x63, 0x00] => UNSUP;
    m32_err_reg_reg: Bits32 [0x8b, 0xc1] => MOD_REG;
    m32_err_lock_mov: Bits32 [0xf0, 0xc7, 0x00, 0, 0, 0, 0] => LOCK;
    m32_err_push_mem: Bits32 [0xff, 0x35, 0, 3, 0xe0, 0xfe] => TWO_MEM;

    // ---- 16-bit code (real mode, 16-bit segments) ----------------------------------------
    m16_mov_8b_disp16: Bits16 [0x8b, 0x06, 0x34, 0x12] => ok(ld(0), 2, 4);
    m16_mov_a1_moffs16: Bits16 [0xa1, 0x20, 0x00] => ok(ld(0), 2, 3);
    m16_mov_66_a1: Bits16 [0x66, 0xa1, 0x20, 0x00] => ok(ld(0), 4, 4);
    m16_mov_67_66_a1_moffs32: Bits16 [0x67, 0x66, 0xa1, 0x20, 0, 0xe0, 0xfe] => ok(ld(0), 4, 7);
    m16_mov_a3_moffs16: Bits16 [0xa3, 0xb0, 0x00] => ok(st(0), 2, 3);
    m16_mov_a0_moffs16: Bits16 [0xa0, 0x03, 0x00] => ok(ld(0), 1, 3);
    m16_mov_8b_bx_disp8: Bits16 [0x8b, 0x47, 0x02] => ok(ld(0), 2, 3);
    m16_mov_8b_bx_disp16: Bits16 [0x8b, 0x87, 0x34, 0x12] => ok(ld(0), 2, 4);
    m16_mov_8b_bp_disp8: Bits16 [0x8b, 0x4e, 0x00] => ok(ld(1), 2, 3);
    m16_mov_8b_bx_si: Bits16 [0x8b, 0x00] => ok(ld(0), 2, 2);
    m16_mov_c7_word: Bits16 [0xc7, 0x06, 0xb0, 0, 0, 0] => ok(sti(0), 2, 6);
    m16_mov_66_c7_dword: Bits16 [0x66, 0xc7, 0x06, 0xb0, 0, 0, 0, 0, 0] => ok(sti(0), 4, 9);
    m16_mov_c6_bp_si: Bits16 [0xc6, 0x02, 0x12] => ok(sti(0x12), 1, 3);
    m16_mov_89_es_si: Bits16 [0x26, 0x89, 0x1c] => ok(st(3), 2, 3);
    m16_mov_88_ah_di: Bits16 [0x88, 0x25] => ok(MmioOp::StoreReg { reg: hb(0) }, 1, 2);
    m16_mov_67_89_addr32: Bits16 [0x67, 0x89, 0x00] => ok(st(0), 2, 3);
    m16_mov_66_67_89_addr32: Bits16 [0x66, 0x67, 0x89, 0x00] => ok(st(0), 4, 4);
    m16_mov_67_66_8b_abs32: Bits16 [0x67, 0x66, 0x8b, 0x05, 0x20, 0, 0xe0, 0xfe] => ok(ld(0), 4, 8);
    m16_mov_67_8b_sib_abs32: Bits16 [0x67, 0x8b, 0x04, 0x25, 0x20, 0, 0xe0, 0xfe]
        => ok(ld(0), 2, 8);
    m16_or_83_word: Bits16 [0x83, 0x0e, 0xf0, 0x00, 0x01] => ok(rmw_i(Or, 1), 2, 5);
    m16_or_66_81_dword: Bits16 [0x66, 0x81, 0x89, 0xf0, 0, 0, 1, 0, 0] => ok(rmw_i(Or, 0x100), 4, 9);
    m16_cmp_80_bp_disp16: Bits16 [0x80, 0xbe, 0x00, 0x10, 0x00] => ok(rmw_i(Cmp, 0), 1, 5);
    m16_and_83_sign_extends_to_16: Bits16 [0x83, 0x26, 0xf0, 0x00, 0xfe] => ok(rmw_i(And, 0xfffe), 2, 5);
    m16_test_f6: Bits16 [0xf6, 0x06, 0x20, 0x00, 0x01] => ok(rmw_i(Test, 1), 1, 5);
    m16_xchg_87: Bits16 [0x87, 0x1e, 0x00, 0x00] => ok(xchg(r(3)), 2, 4);
    m16_movzx_b6: Bits16 [0x0f, 0xb6, 0x06, 0x03, 0x00] => ok(ext(0, 2, false), 1, 5);
    m16_movsx_66_be: Bits16 [0x66, 0x0f, 0xbe, 0x07] => ok(ext(0, 4, true), 1, 4);
    m16_rep_stosw: Bits16 [0xf3, 0xab] => ok(string(Stos, 2, true, 2, Seg::Ds), 2, 2);
    m16_rep_stosl: Bits16 [0x66, 0xf3, 0xab] => ok(string(Stos, 4, true, 2, Seg::Ds), 4, 3);
    m16_rep_movsb_addr32: Bits16 [0x67, 0xf3, 0xa4] => ok(string(Movs, 1, true, 4, Seg::Ds), 1, 3);
    m16_lodsw: Bits16 [0xad] => ok(string(Lods, 2, false, 2, Seg::Ds), 2, 1);
    m16_rep_insw: Bits16 [0xf3, 0x6d] => ok(string(Ins, 2, true, 2, Seg::Ds), 2, 2);
    m16_outsl_ss: Bits16 [0x36, 0x66, 0x6f] => ok(string(Outs, 4, false, 2, Seg::Ss), 4, 3);
    m16_mov_8a_disp16: Bits16 [0x8a, 0x0e, 0x10, 0x00] => ok(ld(1), 1, 4);
    m16_mov_a2_moffs16: Bits16 [0xa2, 0x20, 0x00] => ok(st(0), 1, 3);
    m16_movzx_66_b7: Bits16 [0x66, 0x0f, 0xb7, 0x4f, 0x10] => ok(ext(1, 4, false), 2, 5);
    m16_movsx_66_bf: Bits16 [0x66, 0x0f, 0xbf, 0x04] => ok(ext(0, 4, true), 2, 4);
    m16_or_09: Bits16 [0x09, 0x06, 0xf0, 0x00] => ok(rmw_r(Or, r(0)), 2, 4);
    m16_and_23: Bits16 [0x23, 0x16, 0xf0, 0x00] => ok(to_reg(And, r(2)), 2, 4);
    m16_xor_30: Bits16 [0x30, 0x0d] => ok(rmw_r(Xor, r(1)), 1, 2);
    m16_cmp_39_bp: Bits16 [0x39, 0x5e, 0x04] => ok(rmw_r(Cmp, r(3)), 2, 3);
    m16_sub_66_29: Bits16 [0x66, 0x29, 0x00] => ok(rmw_r(Sub, r(0)), 4, 3);
    m16_test_85: Bits16 [0x85, 0x06, 0x00, 0x03] => ok(rmw_r(Test, r(0)), 2, 4);
    m16_test_84: Bits16 [0x84, 0x0f] => ok(rmw_r(Test, r(1)), 1, 2);
    m16_test_f7: Bits16 [0xf7, 0x06, 0x00, 0x03, 0x00, 0x10] => ok(rmw_i(Test, 0x1000), 2, 6);
    m16_bts_0fba: Bits16 [0x0f, 0xba, 0x2f, 0x03] => ok(rmw_i(Bts, 3), 2, 4);
    m16_bt_66_0fa3: Bits16 [0x66, 0x0f, 0xa3, 0x07] => ok(rmw_r(Bt, r(0)), 4, 4);
    m16_xchg_86: Bits16 [0x86, 0x04] => ok(xchg(r(0)), 1, 2);
    m16_inc_ff: Bits16 [0xff, 0x06, 0x00, 0x03] => ok(rmw_i(Inc, 0), 2, 4);
    m16_neg_f6: Bits16 [0xf6, 0x1f] => ok(rmw_i(Neg, 0), 1, 2);
    m16_prefetcht0: Bits16 [0x0f, 0x18, 0x0f] => ok(NOP, 1, 3);
    m16_clflushopt: Bits16 [0x66, 0x0f, 0xae, 0x3f] => ok(NOP, 1, 4);
    m16_clflush: Bits16 [0x0f, 0xae, 0x3f] => ok(NOP, 1, 3);
    m16_err_reg_reg: Bits16 [0x89, 0xd8] => MOD_REG;
    m16_err_truncated_disp16: Bits16 [0x8b, 0x06, 0x34] => Err(DecodeError::Truncated);
}

#[test]
fn access_directions() {
    let reads = |op: MmioOp| (op.reads(), op.writes());
    assert_eq!(reads(ld(0)), (true, false));
    assert_eq!(reads(st(0)), (false, true));
    assert_eq!(reads(sti(0)), (false, true));
    assert_eq!(reads(ext(0, 4, false)), (true, false));
    assert_eq!(reads(rmw_i(Or, 1)), (true, true));
    assert_eq!(reads(rmw_i(Cmp, 1)), (true, false));
    assert_eq!(reads(rmw_r(Bt, r(0))), (true, false));
    assert_eq!(reads(to_reg(Add, r(0))), (true, false));
    assert_eq!(reads(xchg(r(0))), (true, true));
    assert_eq!(reads(string(Movs, 1, true, 8, Seg::Ds)), (true, true));
    assert_eq!(reads(string(Stos, 1, true, 8, Seg::Ds)), (false, true));
    assert_eq!(reads(string(Lods, 1, true, 8, Seg::Ds)), (true, false));
    assert_eq!(reads(string(Ins, 1, true, 8, Seg::Ds)), (false, true));
    assert_eq!(reads(string(Outs, 1, true, 8, Seg::Ds)), (true, false));
    assert_eq!(reads(NOP), (false, false));
}

// ---- string instructions -----------------------------------------------------------------

fn str_op(kind: StrKind, size: u8, rep: bool, addr_size: u8) -> StringOp {
    StringOp { kind, size, rep, addr_size, seg: Seg::Fs }
}

#[test]
fn string_operand_roles() {
    let mem = |seg, index| StrOperand::Mem { seg, index };
    let movs = str_op(Movs, 4, true, 8);
    assert_eq!((movs.src(), movs.dst()), (mem(Seg::Fs, 6), mem(Seg::Es, 7)));
    let stos = str_op(Stos, 4, true, 8);
    assert_eq!((stos.src(), stos.dst()), (StrOperand::Rax, mem(Seg::Es, 7)));
    let lods = str_op(Lods, 4, true, 8);
    assert_eq!((lods.src(), lods.dst()), (mem(Seg::Fs, 6), StrOperand::Rax));
    let ins = str_op(Ins, 4, true, 8);
    assert_eq!((ins.src(), ins.dst()), (StrOperand::Port, mem(Seg::Es, 7)));
    let outs = str_op(Outs, 4, true, 8);
    assert_eq!((outs.src(), outs.dst()), (mem(Seg::Fs, 6), StrOperand::Port));
}

#[test]
fn string_counts_steps_and_final_registers() {
    let regs = |rcx, rsi, rdi| StrRegs { rcx, rsi, rdi };
    // rep stosl, 64-bit addressing, forward: RDI += 4 * 16, RCX = 0, RSI untouched.
    let s = str_op(Stos, 4, true, 8);
    assert_eq!(s.count(16), 16);
    assert_eq!(s.step(false), 4);
    assert_eq!(s.offset(0x1000, false, 3), 0x100c);
    assert_eq!(s.advance(regs(16, 7, 0x1000), false, 16), regs(0, 7, 0x1040));
    // rep movsb backwards (DF = 1), both indexes step down.
    let s = str_op(Movs, 1, true, 8);
    assert_eq!(s.step(true), -1);
    assert_eq!(s.offset(0x2000, true, 5), 0x1ffb);
    assert_eq!(s.advance(regs(10, 0x2000, 0x3000), true, 10), regs(0, 0x1ff6, 0x2ff6));
    // Partial progress: 3 of 10 done.
    assert_eq!(s.advance(regs(10, 0x2000, 0x3000), false, 3), regs(7, 0x2003, 0x3003));
    // lodsw without REP: count 1, RCX untouched, RDI untouched.
    let s = str_op(Lods, 2, false, 8);
    assert_eq!(s.count(0), 1);
    assert_eq!(s.advance(regs(5, 0x10, 0x20), false, 1), regs(5, 0x12, 0x20));
    // 16-bit addressing: CX/SI/DI wrap at 64 KiB, the upper bits stay.
    let s = str_op(Movs, 2, true, 2);
    assert_eq!(s.count(0xdead_0003), 3);
    assert_eq!(s.offset(0xfffe, false, 1), 0);
    assert_eq!(
        s.advance(regs(0xdead_0003, 0xaaaa_fffe, 0xbbbb_0000), false, 3),
        regs(0xdead_0000, 0xaaaa_0004, 0xbbbb_0006)
    );
    assert_eq!(s.advance(regs(3, 0x1_0000, 0x1_0002), true, 2), regs(1, 0x1_fffc, 0x1_fffe));
    // 32-bit addressing (67 in 64-bit code, or 32-bit code): ECX/ESI/EDI wrap at 4 GiB, and
    // writing them clears bits 63:32.
    let s = str_op(Stos, 8, true, 4);
    assert_eq!(s.count(0x1_0000_0002), 2);
    assert_eq!(s.offset(0xffff_fff8, false, 1), 0);
    assert_eq!(
        s.advance(regs(0x1_0000_0002, 0x5_0000_0000, 0x7_ffff_fff8), false, 2),
        regs(0, 0x5_0000_0000, 8)
    );
    // REP with a zero count does nothing.
    assert_eq!(str_op(Stos, 1, true, 8).count(0), 0);
}

proptest::proptest! {
    #[test]
    fn string_advance_is_the_sum_of_single_steps(
        kind in 0u8..5, sz in 0u8..4, asz in 0u8..3, rep: bool, df: bool,
        rcx: u64, rsi: u64, rdi: u64, n in 0u64..40,
    ) {
        let kind = [Movs, Stos, Lods, Ins, Outs][usize::from(kind)];
        let s = str_op(kind, 1 << sz, rep, [2, 4, 8][usize::from(asz)]);
        let start = StrRegs { rcx, rsi, rdi };
        let mut one = start;
        for i in 0..n {
            if matches!(kind, Movs | Lods | Outs) {
                proptest::prop_assert_eq!(s.offset(rsi, df, i), one.rsi & ones(s.addr_size));
            }
            if matches!(kind, Movs | Stos | Ins) {
                proptest::prop_assert_eq!(s.offset(rdi, df, i), one.rdi & ones(s.addr_size));
            }
            one = s.advance(one, df, 1);
        }
        proptest::prop_assert_eq!(s.advance(start, df, n), one);
    }
}

fn ones(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

// ---- ALU results and flags ---------------------------------------------------------------

const CF: u64 = 1;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
/// Bit 1 is always set, IF here stands for unrelated bits that must survive.
const BASE: u64 = 0x202;

#[test]
fn alu_known_values() {
    let f = |op, size, a, b, fl| alu(op, size, a, b, BASE | fl);
    // 0xff + 1 (8 bits): 0 with CF, AF, ZF, PF.
    assert_eq!(f(Add, 1, 0xff, 1, 0), (0, BASE | CF | AF | ZF | PF));
    // 0x7fffffff + 1: signed overflow.
    assert_eq!(f(Add, 4, 0x7fff_ffff, 1, 0), (0x8000_0000, BASE | OF | SF | AF | PF));
    // Inputs are truncated to the operand size: 0x1_0000 + 0 (16 bits) is 0.
    assert_eq!(f(Add, 2, 0x1_0000, 0, 0), (0, BASE | ZF | PF));
    // 0 - 1: borrow.
    assert_eq!(f(Sub, 4, 0, 1, 0), (0xffff_ffff, BASE | CF | SF | AF | PF));
    assert_eq!(f(Cmp, 8, 5, 5, CF | SF), (0, BASE | ZF | PF));
    assert_eq!(f(Cmp, 1, 0x80, 1, 0), (0x7f, BASE | OF | AF));
    // ADC / SBB use CF.
    assert_eq!(f(Adc, 8, u64::MAX, 0, CF), (0, BASE | CF | ZF | PF | AF));
    assert_eq!(f(Sbb, 2, 0, 0, CF), (0xffff, BASE | CF | SF | PF | AF));
    // Logic ops clear CF and OF.
    assert_eq!(f(Or, 4, 0xfee0_0000, 0x100, CF | OF), (0xfee0_0100, BASE | SF | PF));
    assert_eq!(f(And, 4, 0xff, 0x100, 0), (0, BASE | ZF | PF));
    assert_eq!(f(Xor, 1, 0x0f, 0x0e, 0), (1, BASE));
    assert_eq!(f(Test, 4, 0x1000, 0x1000, 0), (0x1000, BASE | PF));
    // INC/DEC keep CF; NEG sets it unless the operand is 0; NOT changes no flag.
    assert_eq!(f(Inc, 4, 0xffff_ffff, 0, CF), (0, BASE | CF | ZF | PF | AF));
    assert_eq!(f(Inc, 4, 0xffff_ffff, 0, 0), (0, BASE | ZF | PF | AF));
    assert_eq!(f(Dec, 2, 0x8000, 0, CF), (0x7fff, BASE | CF | OF | AF | PF));
    assert_eq!(f(Neg, 1, 0x80, 0, 0), (0x80, BASE | CF | OF | SF));
    assert_eq!(f(Neg, 8, 0, 0, CF), (0, BASE | ZF | PF));
    assert_eq!(f(Not, 4, 0x0f0f_0f0f, 0, ZF | CF), (0xf0f0_f0f0, BASE | ZF | CF));
    // BT family: CF is the old bit; the offset is modulo the width.
    assert_eq!(f(Bt, 4, 0x20, 5, 0), (0x20, BASE | CF));
    assert_eq!(f(Bts, 4, 0, 37, ZF), (0x20, BASE | ZF));
    assert_eq!(f(Btr, 2, 0xffff, 15, 0), (0x7fff, BASE | CF));
    assert_eq!(f(Btc, 8, 1 << 63, u64::MAX, 0), (0, BASE | CF));
}

#[test]
fn alu_writes() {
    for op in [Add, Or, Adc, Sbb, And, Sub, Xor, Inc, Dec, Not, Neg, Bts, Btr, Btc] {
        assert!(op.writes(), "{op:?}");
    }
    for op in [Cmp, Test, Bt] {
        assert!(!op.writes(), "{op:?}");
    }
}

/// Runs the real instruction on the host CPU: (result, RFLAGS).
#[cfg(target_arch = "x86_64")]
fn hardware(op: AluOp, size: u8, dst: u64, src: u64, rflags: u64) -> (u64, u64) {
    use core::arch::asm;
    macro_rules! run {
        ($insn:expr) => {{
            let (mut d, mut f) = (dst, rflags);
            // SAFETY: register-only arithmetic; pushfq/popfq on the stack asm! may use.
            unsafe {
                asm!("push {f}", "popfq", $insn, "pushfq", "pop {f}",
                    d = inout(reg) d, s = in(reg) src, f = inout(reg) f);
            }
            (d, f)
        }};
    }
    macro_rules! sized {
        ($m:literal) => {
            match size {
                1 => run!(concat!($m, " {d:l}, {s:l}")),
                2 => run!(concat!($m, " {d:x}, {s:x}")),
                4 => run!(concat!($m, " {d:e}, {s:e}")),
                _ => run!(concat!($m, " {d}, {s}")),
            }
        };
        (bit $m:literal) => {
            match size {
                1 | 2 => run!(concat!($m, " {d:x}, {s:x}")),
                4 => run!(concat!($m, " {d:e}, {s:e}")),
                _ => run!(concat!($m, " {d}, {s}")),
            }
        };
        (unary $m:literal) => {
            match size {
                1 => run!(concat!($m, " {d:l} /* {s} */")),
                2 => run!(concat!($m, " {d:x} /* {s} */")),
                4 => run!(concat!($m, " {d:e} /* {s} */")),
                _ => run!(concat!($m, " {d} /* {s} */")),
            }
        };
    }
    let (d, f) = match op {
        Add => sized!("add"),
        Or => sized!("or"),
        Adc => sized!("adc"),
        Sbb => sized!("sbb"),
        And => sized!("and"),
        Sub => sized!("sub"),
        Xor => sized!("xor"),
        Cmp => sized!("cmp"),
        Test => sized!("test"),
        Inc => sized!(unary "inc"),
        Dec => sized!(unary "dec"),
        Not => sized!(unary "not"),
        Neg => sized!(unary "neg"),
        Bt => sized!(bit "bt"),
        Bts => sized!(bit "bts"),
        Btr => sized!(bit "btr"),
        Btc => sized!(bit "btc"),
    };
    (d & ones(size), f)
}

#[cfg(target_arch = "x86_64")]
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
    #[test]
    fn alu_matches_the_host_cpu(
        op in 0usize..17, sz in 0u8..4, dst: u64, src: u64, small: bool, status in 0u64..0x1000,
    ) {
        let op = [Add, Or, Adc, Sbb, And, Sub, Xor, Cmp, Test, Inc, Dec, Not, Neg, Bt, Bts, Btr,
            Btc][op];
        // BT has no 8-bit form.
        let size = if matches!(op, Bt | Bts | Btr | Btc) { 2 << (sz % 3) } else { 1 << sz };
        // Small operands reach the carry, zero and sign edges more often.
        let (dst, src) = if small { (dst % 3, src % 3) } else { (dst, src) };
        let (dst, src) = if small && dst == 2 { (ones(size), src) } else { (dst, src) };
        let rflags = BASE | (status & ARITH_FLAGS);
        let (want_r, want_f) = hardware(op, size, dst, src, rflags);
        let (got_r, got_f) = alu(op, size, dst, src, rflags);
        // Compare the flags the architecture defines for `op`.
        let defined = match op {
            Or | And | Xor | Test => ARITH_FLAGS & !AF,
            Bt | Bts | Btr | Btc => CF,
            _ => ARITH_FLAGS,
        };
        if op.writes() {
            proptest::prop_assert_eq!(got_r, want_r);
        }
        proptest::prop_assert_eq!(got_f & defined, want_f & defined);
        proptest::prop_assert_eq!(got_f & !ARITH_FLAGS, rflags & !ARITH_FLAGS);
    }
}

// ---- robustness --------------------------------------------------------------------------

fn check_any(bytes: &[u8], mode: CpuMode) -> Result<(), proptest::test_runner::TestCaseError> {
    match decode(bytes, mode) {
        Ok(m) => {
            proptest::prop_assert!(usize::from(m.len) <= bytes.len().min(MAX_INSN_LEN));
            proptest::prop_assert!([1, 2, 4, 8].contains(&m.size));
            if let MmioOp::String(s) = m.op {
                proptest::prop_assert!([2, 4, 8].contains(&s.addr_size));
                proptest::prop_assert_eq!(s.size, m.size);
            }
            // The decode depends on the instruction's bytes only.
            proptest::prop_assert_eq!(decode(&bytes[..usize::from(m.len)], mode), Ok(m));
            let short = &bytes[..usize::from(m.len) - 1];
            proptest::prop_assert_eq!(decode(short, mode), Err(DecodeError::Truncated));
        }
        Err(DecodeError::Truncated) => {}
        Err(_) => {}
    }
    Ok(())
}

const MODES: [CpuMode; 3] = [Bits16, Bits32, Bits64];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
    #[test]
    fn random_bytes_never_panic_and_lengths_are_bounded(
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..20),
        m in 0usize..3,
    ) {
        check_any(&bytes, MODES[m])?;
        for e in [Expected::Vmmcall, Expected::Cpuid, Expected::Hlt, Expected::MovToCr] {
            if let Ok(d) = decode_intercepted(&bytes, m == 2, e) {
                proptest::prop_assert!(usize::from(d.len) <= bytes.len().min(MAX_INSN_LEN));
            }
        }
    }

    /// Prefixes and opcodes the decoder knows, followed by random bytes: reaches every form.
    #[test]
    fn prefixed_forms_never_panic_and_lengths_are_bounded(
        prefixes in proptest::collection::vec(proptest::sample::select(&[
            0x66u8, 0x67, 0xf0, 0xf2, 0xf3, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x40, 0x44, 0x48,
            0x4c, 0x4f,
        ][..]), 0..16),
        escape: bool,
        opcode: u8,
        tail in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
        m in 0usize..3,
    ) {
        let mut bytes = prefixes;
        if escape {
            bytes.push(0x0f);
        }
        bytes.push(opcode);
        bytes.extend_from_slice(&tail);
        check_any(&bytes, MODES[m])?;
    }
}

#[test]
fn every_opcode_with_every_modrm_is_bounded() {
    // Exhaustive over one- and two-byte opcodes and ModRM bytes, with a SIB byte and enough
    // displacement and immediate bytes after them.
    for mode in MODES {
        for escape in [false, true] {
            for op in 0..=255u8 {
                for modrm in 0..=255u8 {
                    let mut b = [0x55u8; 16];
                    let at = usize::from(escape);
                    b[0] = 0x0f;
                    b[at] = op;
                    b[at + 1] = modrm;
                    if let Ok(m) = decode(&b, mode) {
                        assert!(usize::from(m.len) <= MAX_INSN_LEN, "{b:02x?}");
                    }
                }
            }
        }
    }
}

// ---- intercepted instructions ------------------------------------------------------------

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
    // mov rsp, cr8: REX.R selects CR8.
    let m = ok(&[0x44, 0x0f, 0x20, 0xc4], true, MovFromCr).unwrap();
    assert_eq!((m.len, m.cr, m.gpr), (4, 8, 4));
    assert_eq!(ok(&[0x44, 0x0f, 0x22, 0xc4], true, MovFromCr), Err(Mismatch::Mismatch));
    // A REX prefix followed by a legacy prefix no longer counts; outside 64-bit code 0x41
    // is not a prefix at all.
    assert_eq!(ok(&[0x41, 0x66, 0x0f, 0x22, 0xe1], true, MovToCr).unwrap().gpr, 1);
    assert_eq!(ok(&[0x41, 0x0f, 0xa2], false, Cpuid), Err(Mismatch::Mismatch));
    assert_eq!(ok(&[0x0f, 0xa2], true, Rdmsr), Err(Mismatch::Mismatch));
    assert_eq!(ok(&[0x0f], true, Cpuid), Err(Mismatch::Truncated));
    assert_eq!(ok(&[0x66; 15], true, Cpuid), Err(Mismatch::Mismatch));
}
