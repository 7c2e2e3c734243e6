//! A vCPU's memory-type range registers, which CPUID advertises (leaf 1 EDX.MTRR) and so must
//! work: IA32_MTRRCAP (8 variable ranges, fixed ranges, write-combining), IA32_MTRR_DEF_TYPE,
//! the eleven fixed-range and sixteen variable-range registers, each validated as the SDM
//! says (only memory types 0, 1, 4, 5, 6; no reserved bit set) or #GP. With EPT / NPT the
//! guest's memory types are the hardware's business (the second-level tables map guest RAM
//! write-back and honour the guest's PAT and MTRR-derived types where the CPU combines them),
//! so the registers are storage that reads back what was written.

/// IA32_MTRRCAP.
pub const MTRRCAP: u32 = 0xfe;
/// IA32_MTRR_DEF_TYPE.
pub const DEF_TYPE: u32 = 0x2ff;
/// Variable ranges offered.
pub const VARIABLE: usize = 8;
/// IA32_MTRRCAP: VCNT = 8, FIX, WC.
const CAP: u64 = VARIABLE as u64 | (1 << 8) | (1 << 10);
/// The fixed-range MSRs, in storage order.
const FIXED: [u32; 11] =
    [0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f];
/// IA32_MTRR_DEF_TYPE with E set and type write-back.
const DEF_WB_ENABLED: u64 = 0x806;
/// The guest's physical-address width (bits above it are reserved in PHYSBASE / PHYSMASK).
const PHYS_BITS: u32 = 46;

/// Why a WRMSR faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gp;

fn valid_type(t: u64) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// One vCPU's MTRRs, as firmware leaves them (a PVH guest has no firmware of its own, so this
/// is what Xen's toolstack sets up too): enabled, default type write-back, no range in use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mtrrs {
    def_type: u64,
    fixed: [u64; 11],
    /// PHYSBASE / PHYSMASK pairs.
    var: [[u64; 2]; VARIABLE],
}

impl Mtrrs {
    /// The state firmware hands over.
    pub const fn new() -> Self {
        Self { def_type: DEF_WB_ENABLED, fixed: [0; 11], var: [[0; 2]; VARIABLE] }
    }

    /// Whether `msr` is one of these registers.
    pub fn owns(msr: u32) -> bool {
        msr == MTRRCAP || msr == DEF_TYPE || FIXED.contains(&msr) || Self::var_index(msr).is_some()
    }

    fn var_index(msr: u32) -> Option<(usize, usize)> {
        let i = msr.checked_sub(0x200)? as usize;
        (i < 2 * VARIABLE).then_some((i / 2, i % 2))
    }

    /// RDMSR; `None` if `msr` is not an MTRR.
    pub fn read(&self, msr: u32) -> Option<u64> {
        match msr {
            MTRRCAP => Some(CAP),
            DEF_TYPE => Some(self.def_type),
            _ if let Some(i) = FIXED.iter().position(|&m| m == msr) => Some(self.fixed[i]),
            _ => Self::var_index(msr).map(|(i, half)| self.var[i][half]),
        }
    }

    /// WRMSR; #GP for a read-only register, an invalid type or a set reserved bit.
    pub fn write(&mut self, msr: u32, v: u64) -> Result<(), Gp> {
        let addr_bits = ((1u64 << PHYS_BITS) - 1) & !0xfff;
        if msr == DEF_TYPE {
            // Type (7:0), FE (10), E (11).
            if v & !0xcff != 0 || !valid_type(v & 0xff) {
                return Err(Gp);
            }
            self.def_type = v;
        } else if let Some(i) = FIXED.iter().position(|&m| m == msr) {
            if !(0..8).all(|b| valid_type((v >> (8 * b)) & 0xff)) {
                return Err(Gp);
            }
            self.fixed[i] = v;
        } else if let Some((i, half)) = Self::var_index(msr) {
            // PHYSBASE: type (7:0) and the base; PHYSMASK: valid (11) and the mask.
            let ok = if half == 0 {
                v & !(addr_bits | 0xff) == 0 && valid_type(v & 0xff)
            } else {
                v & !(addr_bits | 0x800) == 0
            };
            if !ok {
                return Err(Gp);
            }
            self.var[i][half] = v;
        } else {
            return Err(Gp);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_read_back_and_invalid_values_fault() {
        let mut m = Mtrrs::new();
        assert_eq!(m.read(DEF_TYPE), Some(0x806));
        assert_eq!(m.read(MTRRCAP), Some(0x508));
        assert_eq!(m.write(MTRRCAP, 0), Err(Gp), "read-only");
        assert_eq!(m.write(DEF_TYPE, 0xc06), Ok(()));
        assert_eq!(m.read(DEF_TYPE), Some(0xc06));
        assert_eq!(m.write(DEF_TYPE, 0x2), Err(Gp), "type 2 is reserved");
        assert_eq!(m.write(DEF_TYPE, 0x1006), Err(Gp), "reserved bit 12");
        assert_eq!(m.write(0x250, 0x0606_0606_0606_0606), Ok(()));
        assert_eq!(m.write(0x258, 0x0606_0606_0606_0706), Err(Gp));
        assert_eq!(m.write(0x200, 0x8000_0006), Ok(()));
        assert_eq!(m.write(0x201, 0x3fff_8000_0800), Ok(()));
        assert_eq!(m.read(0x201), Some(0x3fff_8000_0800));
        assert_eq!(m.write(0x201, 0x3fff_8000_0801), Err(Gp), "reserved bit 0 of PHYSMASK");
        assert_eq!(m.write(0x20f, 1 << 50), Err(Gp), "above the physical-address width");
        assert!(Mtrrs::owns(0x20f) && !Mtrrs::owns(0x210) && Mtrrs::owns(0x26f));
        assert_eq!(m.read(0x210), None);
    }
}
