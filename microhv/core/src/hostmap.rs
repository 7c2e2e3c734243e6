//! What microhv's own page tables grant each page of its image (W^X): code is read-only and
//! executable, read-only data is neither writable nor executable, writable data is not
//! executable, and the guard page under every stack is not mapped at all. Everything else in
//! the identity map (guest RAM, page tables, device registers) is writable and never executable.
//! The arch layer (`arch/x86_64/paging.rs`) turns this into page-table entries.

/// The permission of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Not mapped (a stack's guard page).
    None,
    /// Read and execute (code).
    ReadExec,
    /// Read only.
    Read,
    /// Read and write, no execute.
    ReadWrite,
}

/// Guard pages an image may have: the boot stack's, and one under each of every CPU's IST
/// stacks and every application processor's stack.
pub const MAX_GUARDS: usize = 1 + 2 * crate::cpus::MAX_CPUS + (crate::cpus::MAX_CPUS - 1);

/// The image's layout, from the linker script's page-aligned symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// First byte of the image (its code starts here, boot headers included).
    pub start: u64,
    /// End of code: read-only data starts here.
    pub text_end: u64,
    /// End of read-only data: writable data and bss start here.
    pub rodata_end: u64,
    /// End of the image.
    pub end: u64,
    /// Pages left unmapped.
    pub guards: [u64; MAX_GUARDS],
    /// How many of `guards` are used.
    pub n_guards: usize,
}

impl Layout {
    /// The permission of the 4 KiB page at `pa`.
    pub fn perm(&self, pa: u64) -> Perm {
        let page = pa & !0xfff;
        if self.guards.iter().take(self.n_guards).any(|&g| g & !0xfff == page) {
            Perm::None
        } else if page >= self.start && page < self.text_end {
            Perm::ReadExec
        } else if page >= self.text_end && page < self.rodata_end {
            Perm::Read
        } else {
            Perm::ReadWrite
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Layout, Perm};

    #[test]
    fn code_is_never_writable_and_data_never_executable() {
        let l = Layout {
            start: 0x10_0000,
            text_end: 0x14_0000,
            rodata_end: 0x16_0000,
            end: 0x20_0000,
            guards: core::array::from_fn(|i| [0x18_0000, 0x1a_0000].get(i).copied().unwrap_or(0)),
            n_guards: 2,
        };
        assert_eq!(l.perm(0x10_0000), Perm::ReadExec);
        assert_eq!(l.perm(0x13_ffff), Perm::ReadExec);
        assert_eq!(l.perm(0x14_0000), Perm::Read);
        assert_eq!(l.perm(0x15_f000), Perm::Read);
        assert_eq!(l.perm(0x16_0000), Perm::ReadWrite);
        assert_eq!(l.perm(0x18_0abc), Perm::None);
        assert_eq!(l.perm(0x18_1000), Perm::ReadWrite);
        assert_eq!(l.perm(0x1a_0000), Perm::None);
        // Unused guard slots (0) do not unmap page 0.
        assert_eq!(l.perm(0), Perm::ReadWrite);
        assert_eq!(l.perm(0xfee0_0000), Perm::ReadWrite);
    }
}
