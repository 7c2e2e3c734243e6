//! Guest-linear to guest-physical translation through the guest's own page tables, for
//! fetching the instruction that touched an emulated MMIO page. Handles the three paging modes
//! a guest can be in (32-bit, PAE, 4-level) with their large pages; accessed and dirty bits are
//! not set (the walk is a read-only look, not an access).

/// The guest's paging state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

use crate::regs::{CR0_PG, CR4_PAE, CR4_PSE, EFER_LMA};

const PRESENT: u64 = 1;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Translates `linear`; `read(gpa, bytes)` reads a 4- or 8-byte table entry of guest memory.
/// `None` if an entry is missing or unreadable.
pub fn linear_to_phys(
    p: &Paging,
    linear: u64,
    read: impl Fn(u64, u8) -> Option<u64>,
) -> Option<u64> {
    if p.cr0 & CR0_PG == 0 {
        return Some(linear & 0xffff_ffff);
    }
    if p.efer & EFER_LMA != 0 {
        let mut table = p.cr3 & ADDR;
        for level in (1..=4u32).rev() {
            let shift = 12 + 9 * (level - 1);
            let e = read(table + ((linear >> shift) & 0x1ff) * 8, 8)?;
            if e & PRESENT == 0 {
                return None;
            }
            if level == 1 || (level <= 3 && e & PS != 0) {
                let page = 1u64 << shift;
                return Some((e & ADDR & !(page - 1)) | (linear & (page - 1)));
            }
            table = e & ADDR;
        }
        return None;
    }
    let linear = linear & 0xffff_ffff;
    if p.cr4 & CR4_PAE != 0 {
        let pdpte = read((p.cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8, 8)?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = read((pdpte & ADDR) + ((linear >> 21) & 0x1ff) * 8, 8)?;
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & PS != 0 {
            return Some((pde & ADDR & !0x1f_ffff) | (linear & 0x1f_ffff));
        }
        let pte = read((pde & ADDR) + ((linear >> 12) & 0x1ff) * 8, 8)?;
        return (pte & PRESENT != 0).then_some((pte & ADDR) | (linear & 0xfff));
    }
    let pde = read((p.cr3 & 0xffff_f000) + ((linear >> 22) & 0x3ff) * 4, 4)?;
    if pde & PRESENT == 0 {
        return None;
    }
    if pde & PS != 0 && p.cr4 & CR4_PSE != 0 {
        // 4 MiB page: bits 39:32 of the address sit in PDE bits 20:13.
        let high = ((pde >> 13) & 0xff) << 32;
        return Some(high | (pde & 0xffc0_0000) | (linear & 0x3f_ffff));
    }
    let pte = read((pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4, 4)?;
    (pte & PRESENT != 0).then_some((pte & 0xffff_f000) | (linear & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn reader(m: &HashMap<u64, u64>) -> impl Fn(u64, u8) -> Option<u64> + '_ {
        |a, _| Some(m.get(&a).copied().unwrap_or(0))
    }

    #[test]
    fn no_paging_is_identity() {
        let p = Paging { cr0: 1, cr3: 0, cr4: 0, efer: 0 };
        assert_eq!(linear_to_phys(&p, 0x1234_5678, |_, _| None), Some(0x1234_5678));
    }

    #[test]
    fn four_level_with_4k_2m_and_1g_pages() {
        let mut m = HashMap::new();
        m.insert(0x1000, 0x2003); // PML4[0] -> PDPT at 0x2000
        m.insert(0x2000, 0x3003); // PDPT[0] -> PD at 0x3000
        m.insert(0x2008, 0x4000_0083); // PDPT[1]: 1 GiB page at 1 GiB
        m.insert(0x3000, 0x20_0083); // PD[0]: 2 MiB page at 2 MiB
        m.insert(0x3008, 0x5003); // PD[1] -> PT at 0x5000
        m.insert(0x5000 + 3 * 8, 0xabc_d003); // PT[3]
        let p = Paging { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: EFER_LMA };
        let t = |l| linear_to_phys(&p, l, reader(&m));
        assert_eq!(t(0x1234), Some(0x20_1234));
        assert_eq!(t(0x20_3456), Some(0xabc_d456));
        assert_eq!(t(0x4123_4567), Some(0x4123_4567));
        assert_eq!(t(0x20_4000), None, "PT[4] not present");
        assert_eq!(t(0x80_0000_0000), None, "PML4[1] not present");
    }

    #[test]
    fn pae_and_32_bit() {
        let mut m = HashMap::new();
        m.insert(0x1000, 0x2001); // PDPTE[0]
        m.insert(0x2000, 0x60_0083); // PDE[0]: 2 MiB page
        let p = Paging { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: 0 };
        assert_eq!(linear_to_phys(&p, 0x1_2345, reader(&m)), Some(0x61_2345));
        let mut m = HashMap::new();
        m.insert(0x1000, 0x0040_0083); // PDE[0]: 4 MiB page at 4 MiB
        m.insert(0x1004, 0x3001); // PDE[1] -> PT at 0x3000
        m.insert(0x3000 + 2 * 4, 0x7_7001);
        let p = Paging { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PSE, efer: 0 };
        assert_eq!(linear_to_phys(&p, 0x12_3456, reader(&m)), Some(0x52_3456));
        assert_eq!(linear_to_phys(&p, 0x40_2abc, reader(&m)), Some(0x7_7abc));
    }
}
