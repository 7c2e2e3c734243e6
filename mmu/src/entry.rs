//! Second-level entry formats: EPT (Intel) and NPT (AMD) described by one set of masks, so the
//! fault, zap and dirty-log code is written once (spec deviation 6).
//!
//! Upper-level entries always grant everything the format can express; permissions live only in
//! leaves (as in KVM), which is what lets the fast path widen a leaf without touching its parents.

/// Physical-address bits of an entry (bits 12..51).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Page-size bit: a level-2 or level-3 entry with it set maps a 2 MiB or 1 GiB page.
pub const LARGE: u64 = 1 << 7;
/// Software bit: the slot allows writes, so a write-protected leaf (dirty logging) may be made
/// writable by the fast path. KVM's `SPTE_HOST_WRITEABLE`, moved to bit 52 because that bit is
/// ignored by EPT and available in NPT entries alike (EPT bit 10 is MBEC's user-execute).
pub const HOST_WRITABLE: u64 = 1 << 52;

/// EPT entry and EPTP bits (Intel SDM vol. 3, "EPT Paging-Structure Entries").
pub mod ept {
    /// Read access.
    pub const R: u64 = 1 << 0;
    /// Write access.
    pub const W: u64 = 1 << 1;
    /// Execute access (supervisor execute without MBEC).
    pub const X: u64 = 1 << 2;
    /// Leaf memory type write-back (bits 5:3 = 6).
    pub const MT_WB: u64 = 6 << 3;
    /// Ignore guest PAT: every slot is ordinary RAM, so WB is right whatever the guest says.
    pub const IPAT: u64 = 1 << 6;
    /// EPTP paging-structure memory type write-back.
    pub const EPTP_MT_WB: u64 = 6;
    /// EPTP page-walk length minus one, for a 4-level walk.
    pub const EPTP_WALK_4: u64 = 3 << 3;
    // Bit 6, accessed/dirty enable, is never set: dirty logging works by write protection,
    // and without A/D the CPU never writes to the tables behind the crate's back.
}

/// NPT (AMD nested page table) entry bits: the long-mode page-table format.
pub mod npt {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User. Nested walks are user accesses, so every level needs it or the guest faults.
    pub const US: u64 = 1 << 2;
    /// Accessed, set up front so the CPU has no reason to write the tables.
    pub const A: u64 = 1 << 5;
    /// Dirty, set together with `RW` for the same reason.
    pub const D: u64 = 1 << 6;
}

/// Which second-level format a domain's tables use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Intel EPT, loaded through the EPTP.
    Ept,
    /// AMD NPT, loaded through the VMCB's nCR3.
    Npt,
}

/// The format reduced to masks, computed once per domain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Masks {
    /// Any of these set means "present to hardware".
    pub present: u64,
    /// Added to a leaf to allow writes (NPT also pre-sets D).
    pub writable: u64,
    /// Non-address bits of every leaf (read + execute, memory type).
    pub leaf: u64,
    /// Non-address bits of every non-leaf entry.
    pub table: u64,
}

impl Masks {
    pub const fn new(format: Format) -> Self {
        match format {
            Format::Ept => Masks {
                present: ept::R | ept::W | ept::X,
                writable: ept::W,
                leaf: ept::R | ept::X | ept::MT_WB | ept::IPAT,
                table: ept::R | ept::W | ept::X,
            },
            Format::Npt => Masks {
                present: npt::P,
                writable: npt::RW | npt::D,
                leaf: npt::P | npt::US | npt::A,
                table: npt::P | npt::RW | npt::US | npt::A,
            },
        }
    }

    #[inline]
    pub const fn is_present(&self, e: u64) -> bool {
        e & self.present != 0
    }

    #[inline]
    pub const fn is_writable(&self, e: u64) -> bool {
        e & self.writable == self.writable
    }
}

/// `true` if entry `e`, found in a table of `level`, maps memory rather than pointing to a table.
#[inline]
pub(crate) const fn is_leaf(e: u64, level: u32) -> bool {
    level == 1 || (level <= 3 && e & LARGE != 0)
}

/// The EPTP for a root table at `root_hpa`: write-back walks, 4 levels, no A/D.
pub const fn eptp(root_hpa: u64) -> u64 {
    (root_hpa & ADDR_MASK) | ept::EPTP_MT_WB | ept::EPTP_WALK_4
}

/// The nCR3 for a root table at `root_hpa`: PWT = PCD = 0, so walks are write-back.
pub const fn ncr3(root_hpa: u64) -> u64 {
    root_hpa & ADDR_MASK
}
