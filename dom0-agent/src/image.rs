//! Where a kernel image's bytes come from, and the ELF headers the builder needs from it.
//!
//! An image is either in dom0's memory (an upload, a boot module) or a file on dom0's disk. A
//! 50 MB Linux `vmlinux` does not fit in dom0's memory, so the builder never asks for the whole
//! image: it reads the headers (the first [`HEAD_BYTES`], the program headers, the note
//! segments) and then copies each loadable segment into the domain a chunk at a time. A memory
//! image hands out its bytes directly ([`Source::as_slice`]), so the paths that had the image in
//! memory copy nothing more than before.
//!
//! The ELF parsing mirrors `abi::pvh::Image::parse` (microhv's, for dom0 itself), but reads only
//! the ELF header, the program headers and the notes, never the section headers: those lie at
//! the end of a `vmlinux`, 50 MB in.

use abi::proto::DiskError;
use abi::pvh::{ImageError, MAX_SEGMENTS, Segment, XEN_ELFNOTE_PHYS32_ENTRY};
use elf::abi::{EM_386, EM_X86_64, PT_LOAD, PT_NOTE};
use elf::endian::LittleEndian;
use elf::file::{Class, FileHeader};
use elf::note::{Note, NoteIterator};
use elf::parse::ParseAt;
use elf::segment::{ProgramHeader, SegmentTable};

/// A kernel image or module, read at offsets.
pub trait Source {
    /// Its size in bytes. (Not `len`: arrays implement this trait, and their own `len` must
    /// not be shadowed where it is in scope.)
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`. The builder asks only for ranges within
    /// [`Source::size`]; a source gives an error for any other.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;

    /// All its bytes, if it is in memory (the builder then copies from them directly).
    fn as_slice(&self) -> Option<&[u8]> {
        None
    }
}

impl Source for &[u8] {
    fn size(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let start = usize::try_from(offset).map_err(|_| DiskError::OutOfRange)?;
        let end = start.checked_add(buf.len()).ok_or(DiskError::OutOfRange)?;
        buf.copy_from_slice(self.get(start..end).ok_or(DiskError::OutOfRange)?);
        Ok(())
    }
    fn as_slice(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl<const N: usize> Source for [u8; N] {
    fn size(&self) -> u64 {
        N as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        (&self[..]).read_at(offset, buf)
    }
    fn as_slice(&self) -> Option<&[u8]> {
        Some(self)
    }
}

/// Bytes at the start of an image the builder reads to recognise it: the multiboot header's
/// search window (8 KiB) and one header beyond it, which also covers an ELF header and the
/// program headers of every ordinary kernel.
pub const HEAD_BYTES: usize = crate::multiboot::SEARCH_BYTES + 48;
/// Largest program-header table or note segment read from a file source (a `vmlinux` has 5
/// program headers and 0x200 bytes of notes).
pub const TABLE_MAX: usize = 8192;
/// The smallest scratch buffer a file source can be built through: the head, the program
/// headers and a note segment.
pub const SCRATCH_MIN: usize = HEAD_BYTES + 2 * TABLE_MAX;

/// The first [`HEAD_BYTES`] of `src` (or all of it if shorter): straight from memory, or read
/// into `buf`.
pub fn head<'b>(src: &'b dyn Source, buf: &'b mut [u8]) -> Result<&'b [u8], DiskError> {
    let n = usize::try_from(src.size()).unwrap_or(usize::MAX).min(HEAD_BYTES);
    if let Some(all) = src.as_slice() {
        return Ok(&all[..n.min(all.len())]);
    }
    let buf = buf.get_mut(..n).ok_or(DiskError::OutOfRange)?;
    src.read_at(0, buf)?;
    Ok(buf)
}

/// `len` bytes at `offset`: from memory, from the head if it holds them, else read into
/// `buf` (at most its size).
fn bytes_at<'b>(
    src: &'b dyn Source,
    head: &'b [u8],
    offset: u64,
    len: u64,
    buf: &'b mut [u8],
) -> Result<&'b [u8], ImageError> {
    let end = offset.checked_add(len).filter(|e| *e <= src.size()).ok_or(ImageError::NotElf)?;
    let (start, end) = (offset as usize, end as usize);
    if let Some(all) = src.as_slice() {
        return all.get(start..end).ok_or(ImageError::NotElf);
    }
    if let Some(b) = head.get(start..end) {
        return Ok(b);
    }
    let buf = buf.get_mut(..end - start).ok_or(ImageError::BadSegment)?;
    src.read_at(offset, buf).map_err(|_| ImageError::BadSegment)?;
    Ok(buf)
}

/// What the builder needs of an ELF image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf {
    /// The 32-bit entry point from the PVH note, if the image has one.
    pub pvh_entry: Option<u32>,
    /// The ELF header's entry point.
    pub elf_entry: u64,
    /// Loadable segments, with their file ranges checked against the source's length.
    pub segments: heapless::Vec<Segment, MAX_SEGMENTS>,
}

impl Elf {
    /// Parses the ELF header in `head` (the start of `src`), then the program headers and note
    /// segments, reading them from `src` through `buf` (up to [`TABLE_MAX`] bytes for the
    /// program headers, as much again for a note segment) where `head` does not hold them. The
    /// same checks as `abi::pvh::Image::parse`: an x86 executable, every loadable segment's
    /// file range inside the file and its memory range without overflow.
    pub fn parse(src: &dyn Source, head: &[u8], buf: &mut [u8]) -> Result<Self, ImageError> {
        // `parse_ident` indexes the identification bytes unchecked: hand it exactly them.
        let ident_bytes = head.get(..elf::abi::EI_NIDENT).ok_or(ImageError::NotElf)?;
        let ident =
            elf::file::parse_ident::<LittleEndian>(ident_bytes).map_err(|_| ImageError::NotElf)?;
        let tail_len = match ident.1 {
            Class::ELF32 => elf::file::ELF32_EHDR_TAILSIZE,
            Class::ELF64 => elf::file::ELF64_EHDR_TAILSIZE,
        };
        let ident_len = elf::abi::EI_NIDENT;
        let tail = head.get(ident_len..ident_len + tail_len).ok_or(ImageError::NotElf)?;
        let ehdr = FileHeader::parse_tail(ident, tail).map_err(|_| ImageError::NotElf)?;
        if !matches!(ehdr.e_machine, EM_X86_64 | EM_386) {
            return Err(ImageError::WrongMachine);
        }
        // No program headers is no executable (`pvh::Image::parse` says the same).
        if ehdr.e_phoff == 0 {
            return Err(ImageError::NotElf);
        }
        let entsize = ProgramHeader::validate_entsize(ehdr.class, ehdr.e_phentsize.into())
            .map_err(|_| ImageError::NotElf)?;
        let size = (entsize as u64) * u64::from(ehdr.e_phnum);
        let (table_buf, note_buf) = buf.split_at_mut(buf.len().min(TABLE_MAX));
        let table = bytes_at(src, head, ehdr.e_phoff, size, table_buf)?;
        let phdrs = SegmentTable::new(ehdr.endianness, ehdr.class, table);
        let mut entry = None;
        let mut segments = heapless::Vec::new();
        for ph in phdrs.iter() {
            match ph.p_type {
                PT_LOAD if ph.p_memsz > 0 => {
                    let offset =
                        usize::try_from(ph.p_offset).map_err(|_| ImageError::BadSegment)?;
                    let filesz =
                        usize::try_from(ph.p_filesz).map_err(|_| ImageError::BadSegment)?;
                    let in_file =
                        ph.p_offset.checked_add(ph.p_filesz).is_some_and(|e| e <= src.size());
                    let fits =
                        ph.p_filesz <= ph.p_memsz && ph.p_paddr.checked_add(ph.p_memsz).is_some();
                    if !in_file || !fits {
                        return Err(ImageError::BadSegment);
                    }
                    segments
                        .push(Segment { paddr: ph.p_paddr, offset, filesz, memsz: ph.p_memsz })
                        .map_err(|_| ImageError::TooManySegments)?;
                }
                PT_NOTE => {
                    let data = bytes_at(src, head, ph.p_offset, ph.p_filesz, note_buf)?;
                    let align = usize::try_from(ph.p_align).map_err(|_| ImageError::NotElf)?;
                    let notes = NoteIterator::new(ehdr.endianness, ehdr.class, align, data);
                    for n in notes {
                        if let Note::Unknown(any) = n
                            && any.n_type == u64::from(XEN_ELFNOTE_PHYS32_ENTRY)
                            && any.name_str().is_ok_and(|n| n == "Xen")
                            && any.desc.len() >= 4
                        {
                            let d = [any.desc[0], any.desc[1], any.desc[2], any.desc[3]];
                            entry = Some(u32::from_le_bytes(d));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Self { pvh_entry: entry, elf_entry: ehdr.e_entry, segments })
    }
}
