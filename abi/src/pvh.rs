//! The PVH boot ABI (Xen's `hvm_start_info`, version 1) that domains start with: the vCPU enters
//! the image's `XEN_ELFNOTE_PHYS32_ENTRY` in 32-bit protected mode, paging off, with `ebx`
//! holding the guest-physical address of a [`StartInfo`].

use core::mem::{offset_of, size_of};
use elf::abi::{EM_386, EM_X86_64, PT_LOAD, PT_NOTE};
use elf::note::{Note, NoteIterator};
use elf::{ElfBytes, endian::LittleEndian, file::FileHeader, segment::ProgramHeader};
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
    /// ACPI RSDP: the domain's tables, built by dom0 (0 for dom0 itself, which has none).
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

/// Program segments a PVH image may have.
pub const MAX_SEGMENTS: usize = 16;

/// A loadable segment of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address.
    pub paddr: u64,
    /// Where its bytes start in the file.
    pub offset: usize,
    /// Bytes copied from the file.
    pub filesz: usize,
    /// Bytes occupied in memory; the part beyond `filesz` is zeroed.
    pub memsz: u64,
}

impl Segment {
    /// One past the last guest-physical byte.
    pub fn end(&self) -> u64 {
        // `parse` checked this does not overflow.
        self.paddr + self.memsz
    }
}

/// Why an image cannot be booted as a PVH guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageError {
    /// Not an ELF file, or a malformed one.
    NotElf,
    /// Not a little-endian x86 or x86-64 executable.
    WrongMachine,
    /// No `XEN_ELFNOTE_PHYS32_ENTRY` note.
    NoPvhEntry,
    /// A segment's file range or memory range is impossible.
    BadSegment,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
}

/// A parsed ELF image: where its bytes go and where it starts, with (`B`) its bytes if it was
/// parsed in memory ([`Image::parse`]; dom0 parses files on its disk at offsets, `B = ()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image<B = ()> {
    bytes: B,
    /// The 32-bit entry point from the PVH note, if the image has one.
    pub pvh_entry: Option<u32>,
    /// The ELF header's entry point.
    pub elf_entry: u64,
    /// Loadable segments.
    pub segments: heapless::Vec<Segment, MAX_SEGMENTS>,
}

impl<B> Image<B> {
    /// The image whose ELF header is `ehdr` (checked as `elf::ElfBytes::minimal_parse` checks
    /// it), before its program headers are [added](Image::add): an x86 executable's, or
    /// [`ImageError::WrongMachine`]. `bytes` are its bytes if they are in memory, else `()`.
    pub fn new(bytes: B, ehdr: &FileHeader<LittleEndian>) -> Result<Self, ImageError> {
        if !matches!(ehdr.e_machine, EM_X86_64 | EM_386) {
            return Err(ImageError::WrongMachine);
        }
        Ok(Self { bytes, pvh_entry: None, elf_entry: ehdr.e_entry, segments: heapless::Vec::new() })
    }

    /// Takes in a program header `p` of an image of `size` bytes: a loadable segment, once its
    /// file range is checked to lie in the image and its memory range not to overflow (so it can
    /// be loaded without further validation), or the Xen `PHYS32_ENTRY` note among a note
    /// segment's `notes` (the last one found is the entry; `notes` is called only for a note
    /// segment, since dom0 reads them from its disk).
    pub fn add<'d>(
        &mut self,
        p: &ProgramHeader,
        size: u64,
        notes: impl FnOnce() -> Result<NoteIterator<'d, LittleEndian>, ImageError>,
    ) -> Result<(), ImageError> {
        match p.p_type {
            PT_LOAD if p.p_memsz > 0 => {
                let offset = usize::try_from(p.p_offset).map_err(|_| ImageError::BadSegment)?;
                let filesz = usize::try_from(p.p_filesz).map_err(|_| ImageError::BadSegment)?;
                let in_file = p.p_offset.checked_add(p.p_filesz).is_some_and(|e| e <= size);
                let fits = p.p_filesz <= p.p_memsz && p.p_paddr.checked_add(p.p_memsz).is_some();
                if !in_file || !fits {
                    return Err(ImageError::BadSegment);
                }
                let s = Segment { paddr: p.p_paddr, offset, filesz, memsz: p.p_memsz };
                self.segments.push(s).map_err(|_| ImageError::TooManySegments)?;
            }
            PT_NOTE => {
                for n in notes()? {
                    if let Note::Unknown(any) = n
                        && any.n_type == u64::from(XEN_ELFNOTE_PHYS32_ENTRY)
                        && any.name_str().is_ok_and(|n| n == "Xen")
                        && let [a, b, c, d, ..] = *any.desc
                    {
                        self.pvh_entry = Some(u32::from_le_bytes([a, b, c, d]));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The PVH entry point, or [`ImageError::NoPvhEntry`].
    pub fn pvh(&self) -> Result<u32, ImageError> {
        self.pvh_entry.ok_or(ImageError::NoPvhEntry)
    }

    /// The lowest and one-past-highest guest-physical address the segments occupy.
    pub fn span(&self) -> (u64, u64) {
        let lo = self.segments.iter().map(|s| s.paddr).min().unwrap_or(0);
        let hi = self.segments.iter().map(Segment::end).max().unwrap_or(0);
        (lo, hi)
    }
}

impl<'a> Image<&'a [u8]> {
    /// Parses an x86 ELF executable in memory and its PVH entry note, if any. Every size and
    /// offset is checked, so the result can be loaded without further validation of the file.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        let file =
            ElfBytes::<LittleEndian>::minimal_parse(bytes).map_err(|_| ImageError::NotElf)?;
        let mut image = Self::new(bytes, &file.ehdr)?;
        for p in file.segments().ok_or(ImageError::NotElf)?.iter() {
            let notes = || file.segment_data_as_notes(&p).map_err(|_| ImageError::NotElf);
            image.add(&p, bytes.len() as u64, notes)?;
        }
        Ok(image)
    }

    /// The file bytes of a segment.
    pub fn data(&self, s: &Segment) -> &'a [u8] {
        // `add` checked the range.
        &self.bytes[s.offset..s.offset + s.filesz]
    }
}

/// Guest-physical address of the page holding the start info, memory map, module list and
/// strings.
pub const START_INFO_GPA: u64 = 0x1000;
/// Start of the PC's legacy hole (VGA memory, option ROMs, the BIOS area): reserved.
pub const LEGACY_HOLE: u64 = 0xa_0000;
/// Where RAM resumes above the legacy hole.
pub const HIGH_RAM: u64 = 0x10_0000;
/// Modules the start page can list.
pub const MAX_MODULES: usize = 8;

/// Why a start page could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPageError {
    /// Too many entries or too much text for one page.
    TooBig,
}

/// A module to list in the start info.
#[derive(Debug, Clone, Copy)]
pub struct ModuleDesc<'a> {
    /// Guest-physical address.
    pub paddr: u64,
    /// Bytes.
    pub size: u64,
    /// Command line.
    pub cmdline: &'a str,
}

/// The memory map of a domain with `mem_bytes` of RAM, as the start info gives it (and as
/// the device model's fw_cfg offers it in `etc/e820`, so the two cannot disagree).
pub fn memmap(mem_bytes: u64) -> [MemmapEntry; 5] {
    let e = |addr: u64, end: u64, kind| MemmapEntry { addr, size: end - addr, kind, reserved: 0 };
    // The PC's layout: the start page reserved, and the legacy hole from 640 KiB to 1 MiB
    // (where the ACPI tables live) reserved.
    [
        e(0, START_INFO_GPA, MEMMAP_RAM),
        e(START_INFO_GPA, START_INFO_GPA + 0x1000, MEMMAP_RESERVED),
        e(START_INFO_GPA + 0x1000, LEGACY_HOLE, MEMMAP_RAM),
        e(LEGACY_HOLE, HIGH_RAM, MEMMAP_RESERVED),
        e(HIGH_RAM, mem_bytes.max(HIGH_RAM), MEMMAP_RAM),
    ]
}

/// Where dom0 tells a PVH domain about its configuration store (`pv::StoreInfo`): the start
/// page's last 64 bytes (`START_INFO_GPA` + this offset), which [`build_start_page`] leaves
/// zero.
pub const STORE_INFO_OFFSET: usize = 4096 - 64;

/// Builds the page placed at [`START_INFO_GPA`]: a [`StartInfo`], then the memory map, the
/// module list and the NUL-terminated strings, every address in it guest-physical. The last
/// 64 bytes stay zero: dom0 puts a domain's store descriptor there (`pv::StoreInfo`).
pub fn build_start_page(
    mem_bytes: u64,
    cmdline: &str,
    modules: &[ModuleDesc<'_>],
    rsdp_paddr: u64,
) -> Result<[u8; 4096], StartPageError> {
    let mut page = [0u8; 4096];
    let memmap = memmap(mem_bytes);
    if modules.len() > MAX_MODULES {
        return Err(StartPageError::TooBig);
    }
    let memmap_off = size_of::<StartInfo>();
    let modlist_off = memmap_off + memmap.len() * size_of::<MemmapEntry>();
    let mut text = modlist_off + modules.len() * size_of::<ModlistEntry>();
    let mut put_str = |page: &mut [u8; 4096], s: &str| -> Result<u64, StartPageError> {
        let end = text + s.len() + 1;
        // The page's tail is the store descriptor's.
        if end > STORE_INFO_OFFSET {
            return Err(StartPageError::TooBig);
        }
        page[text..text + s.len()].copy_from_slice(s.as_bytes());
        let gpa = START_INFO_GPA + text as u64;
        text = end;
        Ok(gpa)
    };
    let cmdline_paddr = put_str(&mut page, cmdline)?;
    for (i, m) in modules.iter().enumerate() {
        let e = ModlistEntry {
            paddr: m.paddr,
            size: m.size,
            cmdline_paddr: put_str(&mut page, m.cmdline)?,
            reserved: 0,
        };
        let at = modlist_off + i * size_of::<ModlistEntry>();
        page[at..at + size_of::<ModlistEntry>()].copy_from_slice(e.as_bytes());
    }
    page[memmap_off..modlist_off].copy_from_slice(memmap.as_bytes());
    let info = StartInfo {
        magic: START_INFO_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { START_INFO_GPA + modlist_off as u64 },
        cmdline_paddr,
        rsdp_paddr,
        memmap_paddr: START_INFO_GPA + memmap_off as u64,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    page[..size_of::<StartInfo>()].copy_from_slice(info.as_bytes());
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pvh_image_parses() {
        let img = crate::testutil::pvh_image(0x10_0000, &[0x90; 100], 0x2000, 0x10_0010);
        let p = Image::parse(&img).unwrap();
        assert_eq!(p.pvh(), Ok(0x10_0010));
        assert_eq!(p.elf_entry, 0x10_0010);
        assert_eq!(p.segments.len(), 1);
        assert_eq!(p.span(), (0x10_0000, 0x10_0000 + 100 + 0x2000));
        assert_eq!(p.data(&p.segments[0]), &[0x90; 100]);
    }

    #[test]
    fn broken_images_are_refused() {
        let good = crate::testutil::pvh_image(0x10_0000, &[1; 16], 0, 0x10_0000);
        assert_eq!(Image::parse(&good[..40]).unwrap_err(), ImageError::NotElf);
        let mut no_note = good.clone();
        no_note[64 + 56] = 0; // the PT_NOTE program header becomes PT_NULL
        assert_eq!(Image::parse(&no_note).unwrap().pvh(), Err(ImageError::NoPvhEntry));
        let mut past_end = good.clone();
        past_end[64 + 32] = 0xff; // p_filesz of the PT_LOAD far beyond the file
        assert_eq!(Image::parse(&past_end).unwrap_err(), ImageError::BadSegment);
        let mut wrong = good;
        wrong[18] = 40; // EM_ARM
        assert_eq!(Image::parse(&wrong).unwrap_err(), ImageError::WrongMachine);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Image::parse(&bytes);
        }

        #[test]
        fn corrupted_images_never_panic(at in 0usize..200, v in proptest::num::u8::ANY) {
            let mut img = crate::testutil::pvh_image(0x10_0000, &[7; 32], 16, 0x10_0000);
            let i = at % img.len();
            img[i] = v;
            if let Ok(p) = Image::parse(&img) {
                for s in &p.segments {
                    let _ = p.data(s);
                }
            }
        }
    }

    #[test]
    fn start_page_layout() {
        let mods = [ModuleDesc { paddr: 0xc000_0000, size: 1234, cmdline: "hello arg" }];
        let page = build_start_page(32 << 20, "smoke", &mods, 0xe_0000).unwrap();
        let info = <StartInfo as zerocopy::FromBytes>::read_from_prefix(&page).unwrap().0;
        assert_eq!(info.magic, START_INFO_MAGIC);
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        // RAM, the start page, RAM to 640 KiB, the legacy hole, RAM from 1 MiB.
        assert_eq!(info.memmap_entries, 5);
        let e = |i: u64| {
            let at = (info.memmap_paddr - START_INFO_GPA) as usize + 24 * i as usize;
            <MemmapEntry as zerocopy::FromBytes>::read_from_prefix(&page[at..]).unwrap().0
        };
        assert_eq!((e(3).addr, e(3).size, e(3).kind), (LEGACY_HOLE, 0x6_0000, MEMMAP_RESERVED));
        assert_eq!(
            (e(4).addr, e(4).size, e(4).kind),
            (HIGH_RAM, (32 << 20) - HIGH_RAM, MEMMAP_RAM)
        );
        assert_eq!(info.nr_modules, 1);
        let at = (info.cmdline_paddr - START_INFO_GPA) as usize;
        assert_eq!(&page[at..at + 6], b"smoke\0");
        let m_at = (info.modlist_paddr - START_INFO_GPA) as usize;
        let m = <ModlistEntry as zerocopy::FromBytes>::read_from_prefix(&page[m_at..]).unwrap().0;
        assert_eq!((m.paddr, m.size), (0xc000_0000, 1234));
        let too_long = "x".repeat(5000);
        assert_eq!(build_start_page(1 << 20, &too_long, &[], 0), Err(StartPageError::TooBig));
    }
}
