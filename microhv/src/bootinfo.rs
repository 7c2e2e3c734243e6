//! Copies the loader's multiboot v1 or v2 information into a [`BootInfo`].

use microhv_core::boot::{BootInfo, BootInfoError, Loader, Range};

/// `eax` at entry from a multiboot v1 loader.
pub const MULTIBOOT1_MAGIC: u32 = 0x2BAD_B002;
/// `eax` at entry from a multiboot2 loader.
pub const MULTIBOOT2_MAGIC: u32 = 0x36D7_6289;

/// Why the boot information could not be read.
#[derive(Debug)]
pub enum Error {
    /// Not started by a multiboot loader.
    UnknownLoader(u32),
    /// The loader's structure is malformed.
    Malformed(&'static str),
    /// It holds more than microhv keeps.
    TooBig(BootInfoError),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::UnknownLoader(m) => write!(f, "not started by a multiboot loader (eax {m:#x})"),
            Error::Malformed(why) => write!(f, "malformed: {why}"),
            Error::TooBig(e) => write!(f, "more than microhv keeps: {e:?}"),
        }
    }
}

struct IdentityMap;

impl multiboot::information::MemoryManagement for IdentityMap {
    unsafe fn paddr_to_slice(&self, addr: u64, length: usize) -> Option<&'static [u8]> {
        // SAFETY: physical memory below 4 GiB is identity-mapped by the entry code, and the
        // loader's structures stay intact until `parse` returns (nothing allocates before).
        (addr.checked_add(length as u64)? <= rt::IDENTITY_MAP_BYTES)
            .then(|| unsafe { core::slice::from_raw_parts(addr as *const u8, length) })
    }

    unsafe fn allocate(&mut self, _length: usize) -> Option<(u64, &mut [u8])> {
        None
    }

    unsafe fn deallocate(&mut self, _addr: u64) {}
}

/// Reads the information the loader passed in `ebx`, identified by `eax`.
///
/// # Safety
/// Must run before anything else uses memory outside microhv's image: the loader's structures
/// are read in place.
pub unsafe fn parse(magic: u32, info: u32) -> Result<BootInfo, Error> {
    match magic {
        // SAFETY: forwarded to the caller.
        MULTIBOOT1_MAGIC => unsafe { parse_v1(info) },
        // SAFETY: forwarded to the caller.
        MULTIBOOT2_MAGIC => unsafe { parse_v2(info) },
        other => Err(Error::UnknownLoader(other)),
    }
}

unsafe fn parse_v1(info: u32) -> Result<BootInfo, Error> {
    use multiboot::information::{MemoryType, Multiboot};
    let mut mm = IdentityMap;
    // SAFETY: the loader put a multiboot v1 information structure at `info` (eax said so), and
    // the identity map makes it addressable.
    let mb = unsafe { Multiboot::from_ptr(info.into(), &mut mm) }
        .ok_or(Error::Malformed("multiboot information outside the identity map"))?;
    let mut b = BootInfo::new(Loader::Multiboot1);
    b.info_range = Range { start: info.into(), end: u64::from(info) + 4096 };
    let regions = mb.memory_regions().ok_or(Error::Malformed("no memory map"))?;
    for r in regions.filter(|r| r.memory_type() == MemoryType::Available) {
        b.add_ram(r.base_address(), r.length()).map_err(Error::TooBig)?;
    }
    for m in mb.modules().into_iter().flatten() {
        b.add_module(m.start, m.end, m.string.unwrap_or("")).map_err(Error::TooBig)?;
    }
    // A multiboot v1 command line starts with the image's own path.
    let cmdline = mb.command_line().unwrap_or("").trim_start();
    b.set_cmdline(cmdline.split_once(char::is_whitespace).map_or("", |(_, args)| args));
    Ok(b)
}

unsafe fn parse_v2(info: u32) -> Result<BootInfo, Error> {
    use multiboot2::{BootInformation, BootInformationHeader, MemoryAreaType};
    // SAFETY: the loader put a multiboot2 information structure at `info` (eax said so).
    let mb = unsafe { BootInformation::load(info as usize as *const BootInformationHeader) }
        .map_err(|_| Error::Malformed("multiboot2 information does not load"))?;
    let mut b = BootInfo::new(Loader::Multiboot2);
    b.info_range = Range { start: mb.start_address() as u64, end: mb.end_address() as u64 };
    let mmap = mb.memory_map_tag().ok_or(Error::Malformed("no memory map tag"))?;
    for a in mmap.memory_areas().iter().filter(|a| a.typ() == MemoryAreaType::Available) {
        b.add_ram(a.start_address(), a.size()).map_err(Error::TooBig)?;
    }
    for m in mb.module_tags() {
        let cmdline = m.cmdline().unwrap_or("");
        b.add_module(m.start_address().into(), m.end_address().into(), cmdline)
            .map_err(Error::TooBig)?;
    }
    b.set_cmdline(mb.command_line_tag().and_then(|c| c.cmdline().ok()).unwrap_or(""));
    // The loader's copy of the RSDP follows its tag's 8-byte header, inside the information
    // structure (reserved from the allocator for good).
    let v2 = mb.rsdp_v2_tag().map(|t| core::ptr::from_ref(t).addr());
    let tag = v2.or_else(|| mb.rsdp_v1_tag().map(|t| core::ptr::from_ref(t).addr()));
    b.rsdp = tag.map(|a| a as u64 + 8);
    Ok(b)
}
