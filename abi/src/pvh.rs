//! The PVH boot ABI (Xen's `hvm_start_info`, version 1) that domains start with: the vCPU enters
//! the image's `XEN_ELFNOTE_PHYS32_ENTRY` in 32-bit protected mode, paging off, with `ebx`
//! holding the guest-physical address of a [`StartInfo`].

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `StartInfo::magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// ELF note type of the 32-bit PVH entry point (owner "Xen").
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Memory map entry type: usable RAM.
pub const MEMMAP_RAM: u32 = 1;
/// Memory map entry type: reserved.
pub const MEMMAP_RESERVED: u32 = 2;

/// `hvm_start_info`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: u32,
    /// 1: the memory map fields are present.
    pub version: u32,
    /// Reserved flags, 0.
    pub flags: u32,
    /// Entries in the module list.
    pub nr_modules: u32,
    /// Guest-physical address of `nr_modules` [`ModlistEntry`]s.
    pub modlist_paddr: u64,
    /// Guest-physical address of a NUL-terminated command line, or 0.
    pub cmdline_paddr: u64,
    /// ACPI RSDP, 0 (microhv gives domains no ACPI).
    pub rsdp_paddr: u64,
    /// Guest-physical address of `memmap_entries` [`MemmapEntry`]s.
    pub memmap_paddr: u64,
    /// Entries in the memory map.
    pub memmap_entries: u32,
    /// Reserved, 0.
    pub reserved: u32,
}
const _: () = assert!(size_of::<StartInfo>() == 56);
const _: () = assert!(offset_of!(StartInfo, memmap_paddr) == 40);

/// `hvm_modlist_entry`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct ModlistEntry {
    /// Guest-physical address of the module.
    pub paddr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Guest-physical address of its NUL-terminated command line, or 0.
    pub cmdline_paddr: u64,
    /// Reserved, 0.
    pub reserved: u64,
}
const _: () = assert!(size_of::<ModlistEntry>() == 32);

/// `hvm_memmap_table_entry`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct MemmapEntry {
    /// Start of the range.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `MEMMAP_*`.
    pub kind: u32,
    /// Reserved, 0.
    pub reserved: u32,
}
const _: () = assert!(size_of::<MemmapEntry>() == 24);
