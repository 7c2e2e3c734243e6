//! The guest instruction at RIP, for CPUs that do not say enough about an intercepted one.
//!
//! Without NRIP save the VMCB does not give the next RIP of an intercepted CPUID, RDMSR, WRMSR,
//! HLT, VMMCALL or MOV to CR4, and without decode assists it does not name the source register
//! of the MOV. microhv then reads the instruction bytes the guest executed and decodes them
//! (`microhv_core::insn::decode_intercepted`), as Xen's `svm_get_insn_len` and KVM's emulator
//! do. The bytes are reached the way the CPU reached them: the guest's own page tables
//! (`microhv_core::walk`) give the guest-physical address, and the domain's nested page tables
//! the host-physical one; every read is the caller's [`Memory`].

use microhv_core::insn::MAX_INSN_LEN as MAX_LEN;
use microhv_core::walk::{Paging, linear_to_phys};
use mmu::entry::{ADDR_MASK, LARGE, npt};

/// Host-physical reads, bounds-checked by the implementation.
pub trait Memory {
    /// The u64 at host-physical `hpa` (8-aligned), or `None` if it lies outside RAM microhv
    /// can read.
    fn read_u64(&self, hpa: u64) -> Option<u64>;
}

/// Why the instruction could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchError {
    /// The nested page tables do not map this guest-physical address (yet).
    NotMapped(u64),
    /// Nor this one, a page of the guest's own page tables.
    TableNotMapped(u64),
    /// The guest's page tables do not map the linear address, or point outside RAM.
    Unreadable,
}

/// Host-physical address of guest-physical `gpa` through the nested page tables at `ncr3`.
pub fn nested(mem: &dyn Memory, ncr3: u64, gpa: u64) -> Result<u64, FetchError> {
    let mut table = ncr3 & ADDR_MASK;
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let idx = (gpa >> shift) & 0x1ff;
        let e = mem.read_u64(table + idx * 8).ok_or(FetchError::NotMapped(gpa))?;
        if e & npt::P == 0 {
            return Err(FetchError::NotMapped(gpa));
        }
        if level == 1 || (level <= 3 && e & LARGE != 0) {
            let size_mask = (1u64 << shift) - 1;
            return Ok((e & ADDR_MASK & !size_mask) | (gpa & size_mask));
        }
        table = e & ADDR_MASK;
    }
    Err(FetchError::Unreadable)
}

/// Up to [`MAX_LEN`] instruction bytes at `linear`. Bytes on a page that cannot be read are
/// left out; the error says why, for the caller to report if the decoder needed them.
pub fn fetch(
    mem: &dyn Memory,
    ncr3: u64,
    p: &Paging,
    linear: u64,
    wide: bool,
) -> ([u8; MAX_LEN], usize, Option<FetchError>) {
    // The guest's tables are read through the nested ones, as the CPU reads them. A table page
    // they no longer map (another CPU's reclaim zapped it since the CPU's own walk) is
    // reported as such, like the instruction's own page: the core maps it again.
    let unmapped = core::cell::Cell::new(None);
    let guest_entry = |gpa: u64, width: u8| -> Option<u64> {
        let hpa = match nested(mem, ncr3, gpa & !7) {
            Ok(hpa) => hpa,
            Err(e) => {
                unmapped.set(Some(match e {
                    FetchError::NotMapped(g) => FetchError::TableNotMapped(g),
                    other => other,
                }));
                return None;
            }
        };
        let q = mem.read_u64(hpa)?;
        Some(if width == 4 { (q >> ((gpa & 4) * 8)) & 0xffff_ffff } else { q })
    };
    let mut buf = [0u8; MAX_LEN];
    let mut n = 0;
    while n < MAX_LEN {
        let mut at = linear.wrapping_add(n as u64);
        if !wide {
            at &= 0xffff_ffff;
        }
        let gpa = linear_to_phys(p, at, guest_entry)
            .ok_or_else(|| unmapped.take().unwrap_or(FetchError::Unreadable));
        let hpa = match gpa.and_then(|gpa| nested(mem, ncr3, gpa)) {
            Ok(h) => h,
            Err(e) => return (buf, n, Some(e)),
        };
        // The rest of this page, one aligned u64 at a time.
        let page_left = (0x1000 - (hpa & 0xfff)) as usize;
        let take = page_left.min(MAX_LEN - n);
        for i in 0..take {
            let a = hpa + i as u64;
            let Some(q) = mem.read_u64(a & !7) else {
                return (buf, n, Some(FetchError::Unreadable));
            };
            buf[n] = (q >> ((a & 7) * 8)) as u8;
            n += 1;
        }
    }
    (buf, n, None)
}
