//! Guest-linear to guest-physical translation through the guest's own page tables: for
//! fetching the instruction that touched an emulated MMIO page ([`linear_to_phys`]), and for the
//! memory operand of an emulated string port instruction ([`translate`], which also checks the
//! permissions the CPU would). Handles the three paging modes a guest can be in (32-bit, PAE,
//! 4-level) with their large pages; accessed and dirty bits are not set (the walk is a
//! read-only look, not an access).

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

use crate::regs::{CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, CR4_SMAP, EFER_LMA};

const PRESENT: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// #PF error code: the page was present (the fault is a permission violation).
pub const PF_PRESENT: u32 = 1;
/// #PF error code: the access was a write.
pub const PF_WRITE: u32 = 1 << 1;
/// #PF error code: the access was made at CPL 3.
pub const PF_USER: u32 = 1 << 2;

/// A data access, for [`translate`]'s permission checks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DataAccess {
    /// A write (else a read).
    pub write: bool,
    /// Made at CPL 3.
    pub user: bool,
    /// RFLAGS.AC, which under CR4.SMAP lets supervisor code reach user pages.
    pub ac: bool,
}

/// Why [`translate`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// The guest's tables refuse the access: the CPU raises #PF with this error code.
    PageFault(u32),
    /// A table entry could not be read (it lies outside the guest's memory).
    Unreadable,
}

/// Walks the tables for `linear`: its guest-physical address and the R/W and U/S bits every
/// level granted (a page is writable or user only if every entry on the way says so; PAE
/// PDPTEs have neither bit and restrict nothing). A missing entry is `PageFault(0)`.
fn walk(
    p: &Paging,
    linear: u64,
    read: impl Fn(u64, u8) -> Option<u64>,
) -> Result<(u64, u64), WalkError> {
    let entry = |gpa, width| match read(gpa, width) {
        None => Err(WalkError::Unreadable),
        Some(e) if e & PRESENT == 0 => Err(WalkError::PageFault(0)),
        Some(e) => Ok(e),
    };
    if p.cr0 & CR0_PG == 0 {
        return Ok((linear & 0xffff_ffff, RW | US));
    }
    if p.efer & EFER_LMA != 0 {
        let (mut table, mut perm) = (p.cr3 & ADDR, RW | US);
        for level in (1..=4u32).rev() {
            let shift = 12 + 9 * (level - 1);
            let e = entry(table + ((linear >> shift) & 0x1ff) * 8, 8)?;
            perm &= e;
            if level == 1 || (level <= 3 && e & PS != 0) {
                let page = 1u64 << shift;
                return Ok(((e & ADDR & !(page - 1)) | (linear & (page - 1)), perm & (RW | US)));
            }
            table = e & ADDR;
        }
        return Err(WalkError::Unreadable);
    }
    let linear = linear & 0xffff_ffff;
    if p.cr4 & CR4_PAE != 0 {
        let pdpte = entry((p.cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8, 8)?;
        let pde = entry((pdpte & ADDR) + ((linear >> 21) & 0x1ff) * 8, 8)?;
        if pde & PS != 0 {
            return Ok(((pde & ADDR & !0x1f_ffff) | (linear & 0x1f_ffff), pde & (RW | US)));
        }
        let pte = entry((pde & ADDR) + ((linear >> 12) & 0x1ff) * 8, 8)?;
        return Ok(((pte & ADDR) | (linear & 0xfff), pde & pte & (RW | US)));
    }
    let pde = entry((p.cr3 & 0xffff_f000) + ((linear >> 22) & 0x3ff) * 4, 4)?;
    if pde & PS != 0 && p.cr4 & CR4_PSE != 0 {
        // 4 MiB page: bits 39:32 of the address sit in PDE bits 20:13.
        let high = ((pde >> 13) & 0xff) << 32;
        return Ok((high | (pde & 0xffc0_0000) | (linear & 0x3f_ffff), pde & (RW | US)));
    }
    let pte = entry((pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4, 4)?;
    Ok(((pte & 0xffff_f000) | (linear & 0xfff), pde & pte & (RW | US)))
}

/// Translates `linear`; `read(gpa, bytes)` reads a 4- or 8-byte table entry of guest memory.
/// `None` if an entry is missing or unreadable.
pub fn linear_to_phys(
    p: &Paging,
    linear: u64,
    read: impl Fn(u64, u8) -> Option<u64>,
) -> Option<u64> {
    walk(p, linear, read).ok().map(|(gpa, _)| gpa)
}

/// Translates a data access to `linear` as the CPU checks it (SDM vol. 3 §4.6): at CPL 3 the
/// page must be user and, for a write, writable; in supervisor mode a write needs a writable
/// page only under CR0.WP, and a user page is out of reach under CR4.SMAP unless RFLAGS.AC is
/// set. A refusal is the #PF error code the CPU would push.
pub fn translate(
    p: &Paging,
    linear: u64,
    a: DataAccess,
    read: impl Fn(u64, u8) -> Option<u64>,
) -> Result<u64, WalkError> {
    if p.cr0 & CR0_PG == 0 {
        return Ok(linear & 0xffff_ffff);
    }
    let code = if a.write { PF_WRITE } else { 0 } | if a.user { PF_USER } else { 0 };
    let (gpa, perm) = walk(p, linear, read).map_err(|e| match e {
        WalkError::PageFault(_) => WalkError::PageFault(code),
        e => e,
    })?;
    let user_page = perm & US != 0;
    let writable = perm & RW != 0 || (!a.user && p.cr0 & CR0_WP == 0);
    let reachable = if a.user { user_page } else { !user_page || p.cr4 & CR4_SMAP == 0 || a.ac };
    if reachable && (writable || !a.write) {
        Ok(gpa)
    } else {
        Err(WalkError::PageFault(code | PF_PRESENT))
    }
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

    #[test]
    fn data_accesses_are_checked_as_the_cpu_checks_them() {
        use crate::regs::{CR0_WP, CR4_SMAP};
        let mut m = HashMap::new();
        m.insert(0x1000, 0x2007); // PML4[0]: user, writable
        m.insert(0x2000, 0x3007); // PDPT[0]
        m.insert(0x3000, 0x4007); // PD[0] -> PT
        m.insert(0x4000, 0x5005); // PT[0]: user, read-only
        m.insert(0x4008, 0x6003); // PT[1]: supervisor, writable
        m.insert(0x4010, 0x7007); // PT[2]: user, writable
        let p = |cr0, cr4| Paging {
            cr0: CR0_PG | 1 | cr0,
            cr3: 0x1000,
            cr4: CR4_PAE | cr4,
            efer: EFER_LMA,
        };
        let acc = |write, user, ac| DataAccess { write, user, ac };
        let t = |p: Paging, l, a| translate(&p, l, a, reader(&m));
        let pf = WalkError::PageFault;
        let plain = p(0, 0);
        assert_eq!(t(plain, 0x10, acc(false, true, false)), Ok(0x5010));
        assert_eq!(
            t(plain, 0x10, acc(true, true, false)),
            Err(pf(PF_PRESENT | PF_WRITE | PF_USER))
        );
        assert_eq!(t(plain, 0x1010, acc(false, true, false)), Err(pf(PF_PRESENT | PF_USER)));
        assert_eq!(t(plain, 0x2010, acc(true, true, false)), Ok(0x7010));
        // Supervisor writes ignore R/W without CR0.WP.
        assert_eq!(t(plain, 0x10, acc(true, false, false)), Ok(0x5010));
        assert_eq!(t(p(CR0_WP, 0), 0x10, acc(true, false, false)), Err(pf(PF_PRESENT | PF_WRITE)));
        assert_eq!(t(p(CR0_WP, 0), 0x1010, acc(true, false, false)), Ok(0x6010));
        // SMAP: a user page is out of a supervisor's reach unless RFLAGS.AC is set.
        let smap = p(0, CR4_SMAP);
        assert_eq!(t(smap, 0x2010, acc(false, false, false)), Err(pf(PF_PRESENT)));
        assert_eq!(t(smap, 0x2010, acc(false, false, true)), Ok(0x7010));
        assert_eq!(t(smap, 0x1010, acc(true, false, false)), Ok(0x6010));
        // Not present: P clear in the error code; an unreadable table is not a #PF.
        assert_eq!(t(plain, 0x3010, acc(true, true, false)), Err(pf(PF_WRITE | PF_USER)));
        let none = translate(&plain, 0x10, acc(false, false, false), |_, _| None);
        assert_eq!(none, Err(WalkError::Unreadable));
        // Paging off: no checks, 32-bit addresses.
        let off = Paging { cr0: 1, ..plain };
        assert_eq!(t(off, 0x1_0000_2000, acc(true, true, false)), Ok(0x2000));
    }
}
