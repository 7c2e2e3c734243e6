//! Multiboot (v1) kernels: the header that says how to load them, and the information
//! structure they are started with.
//!
//! The `multiboot` crate's header parser asserts on a bad checksum or inconsistent address
//! fields; an image uploaded by a user must get an error instead, so the 48-byte header is
//! parsed here with every field checked.

use abi::pvh::ModuleDesc;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The header's magic.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// `eax` a multiboot kernel is entered with.
pub const BOOT_MAGIC: u32 = 0x2bad_b002;
/// The header must lie, 4-byte aligned, in the file's first 8 KiB.
pub const SEARCH_BYTES: usize = 8192;
/// Header flag: the kernel wants video mode information (microhv's domains have no display).
pub const FLAG_VIDEO: u32 = 1 << 2;
/// Header flag: the address fields are valid and say how to load the image.
pub const FLAG_ADDRESSES: u32 = 1 << 16;
/// Header flags microhv can honour: page-aligned modules, memory information, addresses.
pub const FLAGS_SUPPORTED: u32 = (1 << 0) | (1 << 1) | FLAG_ADDRESSES;

/// The address fields of a header with [`FLAG_ADDRESSES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// Physical address the header itself is loaded to.
    pub header: u32,
    /// Physical address of the start of the text segment.
    pub load: u32,
    /// End of the data to load; 0 means "to the end of the file".
    pub load_end: u32,
    /// End of the bss; 0 means none.
    pub bss_end: u32,
    /// Entry point.
    pub entry: u32,
}

/// A multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Offset of the header in the file.
    pub offset: usize,
    /// Its flags.
    pub flags: u32,
    /// The address fields, if the flags say they are valid.
    pub addresses: Option<Addresses>,
}

/// Why a multiboot image cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// No header in the first 8 KiB.
    NotFound,
    /// The checksum does not match.
    BadChecksum,
    /// The kernel requires a feature microhv does not provide (video mode).
    Unsupported(u32),
    /// The address fields are inconsistent with each other or with the file.
    BadAddresses,
}

fn word(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Header {
    /// Finds and checks the header of `image`.
    pub fn find(image: &[u8]) -> Result<Self, HeaderError> {
        let limit = image.len().min(SEARCH_BYTES);
        let offset = (0..limit)
            .step_by(4)
            .find(|&o| word(image, o) == Some(HEADER_MAGIC))
            .ok_or(HeaderError::NotFound)?;
        let field = |i: usize| word(image, offset + 4 * i).ok_or(HeaderError::BadAddresses);
        let flags = field(1)?;
        if HEADER_MAGIC.wrapping_add(flags).wrapping_add(field(2)?) != 0 {
            return Err(HeaderError::BadChecksum);
        }
        // Bits 0-15 are requirements: refuse any we cannot meet. Bits 16-31 are optional.
        let required = flags & 0xffff;
        if required & !FLAGS_SUPPORTED != 0 {
            return Err(HeaderError::Unsupported(required & !FLAGS_SUPPORTED));
        }
        let addresses = if flags & FLAG_ADDRESSES != 0 {
            let a = Addresses {
                header: field(3)?,
                load: field(4)?,
                load_end: field(5)?,
                bss_end: field(6)?,
                entry: field(7)?,
            };
            let header_in_text = a.load <= a.header && (a.header - a.load) as usize <= offset;
            let end_ok = a.load_end == 0 || a.load_end > a.load;
            let bss_ok = a.bss_end == 0 || a.bss_end >= a.load_end.max(a.load);
            if !(header_in_text && end_ok && bss_ok) {
                return Err(HeaderError::BadAddresses);
            }
            Some(a)
        } else {
            None
        };
        Ok(Self { offset, flags, addresses })
    }

    /// For a header with address fields: the file range to load and the guest-physical load
    /// address, memory size (file bytes plus bss) and entry point.
    pub fn load_plan(&self, file_len: usize) -> Option<(core::ops::Range<usize>, u64, u64, u32)> {
        let a = self.addresses?;
        let start = self.offset.checked_sub((a.header - a.load) as usize)?;
        let end = if a.load_end == 0 {
            file_len
        } else {
            start.checked_add((a.load_end - a.load) as usize)?
        };
        if end > file_len || start > end {
            return None;
        }
        let filesz = (end - start) as u64;
        let memsz = if a.bss_end == 0 { filesz } else { u64::from(a.bss_end - a.load) };
        Some((start..end, a.load.into(), memsz.max(filesz), a.entry))
    }
}

/// The multiboot information structure (the fields up to the boot loader name).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Info {
    /// Which fields are valid (`INFO_*`).
    pub flags: u32,
    /// KiB of memory from 0.
    pub mem_lower: u32,
    /// KiB of memory from 1 MiB.
    pub mem_upper: u32,
    /// BIOS boot device (not provided).
    pub boot_device: u32,
    /// Command line.
    pub cmdline: u32,
    /// Modules.
    pub mods_count: u32,
    /// Module list.
    pub mods_addr: u32,
    /// Symbol table information (not provided).
    pub syms: [u32; 4],
    /// Bytes of memory map.
    pub mmap_length: u32,
    /// Memory map.
    pub mmap_addr: u32,
    /// Drives (not provided).
    pub drives_length: u32,
    /// Drives (not provided).
    pub drives_addr: u32,
    /// BIOS configuration table (not provided).
    pub config_table: u32,
    /// The boot loader's name.
    pub boot_loader_name: u32,
}
const _: () = assert!(size_of::<Info>() == 68);

/// `Info::flags`: `mem_lower` / `mem_upper` are valid.
pub const INFO_MEMORY: u32 = 1 << 0;
/// `Info::flags`: `cmdline` is valid.
pub const INFO_CMDLINE: u32 = 1 << 2;
/// `Info::flags`: `mods_count` / `mods_addr` are valid.
pub const INFO_MODS: u32 = 1 << 3;
/// `Info::flags`: `mmap_length` / `mmap_addr` are valid.
pub const INFO_MMAP: u32 = 1 << 6;
/// `Info::flags`: `boot_loader_name` is valid.
pub const INFO_LOADER_NAME: u32 = 1 << 9;

/// One entry of the module list (`mods_addr`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ModEntry {
    /// Guest-physical address of the module's first byte.
    pub mod_start: u32,
    /// One past its last byte (as GRUB sets it: `mod_start` plus the size).
    pub mod_end: u32,
    /// Its NUL-terminated command line.
    pub string: u32,
    /// 0.
    pub reserved: u32,
}
const _: () = assert!(size_of::<ModEntry>() == 16);

/// One memory-map entry; `size` counts the bytes after itself (20).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct MmapEntry {
    /// 20.
    pub size: u32,
    /// Start.
    pub base: u64,
    /// Length.
    pub len: u64,
    /// 1 = available RAM.
    pub kind: u32,
}
const _: () = assert!(size_of::<MmapEntry>() == 24);

/// Builds the information page for a domain with `mem_bytes` of RAM, to be placed at
/// guest-physical `page_gpa`: `Info`, then the memory map, the module list, the loader name,
/// the command line and the modules' command lines. The modules were placed by the builder
/// (`builder::build`, the same placement PVH kernels get); each must lie below 4 GiB, where
/// the list's 32-bit fields reach. `None` if they do not, or if the text does not fit.
pub fn build_info(
    page_gpa: u32,
    mem_bytes: u64,
    cmdline: &str,
    modules: &[ModuleDesc<'_>],
) -> Option<[u8; 4096]> {
    let mut page = [0u8; 4096];
    let mmap = [
        MmapEntry { size: 20, base: 0, len: 0x9_fc00, kind: 1 },
        MmapEntry { size: 20, base: 0x10_0000, len: mem_bytes.saturating_sub(0x10_0000), kind: 1 },
    ];
    let mmap_at = size_of::<Info>();
    let mods_at = mmap_at + mmap.len() * size_of::<MmapEntry>();
    let mut text = mods_at.checked_add(modules.len().checked_mul(size_of::<ModEntry>())?)?;
    // Appends a NUL-terminated string after the structures; its guest-physical address.
    let mut put_str = |page: &mut [u8; 4096], s: &[u8]| -> Option<u32> {
        let end = text.checked_add(s.len() + 1)?;
        if end > page.len() {
            return None;
        }
        page[text..text + s.len()].copy_from_slice(s);
        let gpa = page_gpa.checked_add(u32::try_from(text).ok()?)?;
        text = end;
        Some(gpa)
    };
    let name = put_str(&mut page, b"microhv dom0")?;
    let cmd = put_str(&mut page, cmdline.as_bytes())?;
    for (i, m) in modules.iter().enumerate() {
        let mod_start = u32::try_from(m.paddr).ok()?;
        let mod_end = u32::try_from(m.paddr.checked_add(m.size)?).ok()?;
        let string = put_str(&mut page, m.cmdline.as_bytes())?;
        let e = ModEntry { mod_start, mod_end, string, reserved: 0 };
        let at = mods_at + i * size_of::<ModEntry>();
        page[at..at + size_of::<ModEntry>()].copy_from_slice(e.as_bytes());
    }
    for (i, e) in mmap.iter().enumerate() {
        let at = mmap_at + i * size_of::<MmapEntry>();
        page[at..at + size_of::<MmapEntry>()].copy_from_slice(e.as_bytes());
    }
    let upper_kib = mem_bytes.saturating_sub(0x10_0000) / 1024;
    let info = Info {
        flags: INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME,
        mem_lower: 639,
        mem_upper: upper_kib.min(u32::MAX.into()) as u32,
        cmdline: cmd,
        mods_count: modules.len() as u32,
        mods_addr: if modules.is_empty() { 0 } else { page_gpa + mods_at as u32 },
        mmap_length: (mmap.len() * size_of::<MmapEntry>()) as u32,
        mmap_addr: page_gpa + mmap_at as u32,
        boot_loader_name: name,
        ..Info::default()
    };
    page[..size_of::<Info>()].copy_from_slice(info.as_bytes());
    Some(page)
}
