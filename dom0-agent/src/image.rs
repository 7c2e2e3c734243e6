//! Where a kernel image's bytes come from, and the ELF headers the builder needs from it.
//!
//! An image is either in dom0's memory (an upload, a boot module) or a file on dom0's disk. A
//! 50 MB Linux `vmlinux` does not fit in dom0's memory, so the builder never asks for the whole
//! image: it reads the headers (the first [`HEAD_BYTES`], the program headers, the note
//! segments) and then copies each loadable segment into the domain a chunk at a time. A memory
//! image hands out its bytes directly ([`Source::as_slice`]), so the paths that had the image in
//! memory copy nothing more than before.
//!
//! What an ELF image is, and what it may be, is `abi::pvh::Image`'s to say ([`Image::new`],
//! [`Image::add`]: the rules microhv applies to dom0 itself). This module only finds the headers
//! those rules take in a source that may not be in memory, checking them as
//! `elf::ElfBytes::minimal_parse` (which [`Image::parse`] uses) checks an image in memory. It
//! reads the ELF header, the program headers and the notes, never the section headers: those
//! lie at the end of a `vmlinux`, 50 MB in (their table is checked to lie in the file, unread).

use abi::proto::DiskError;
use abi::pvh::{Image, ImageError};
use elf::abi::{EI_NIDENT, PN_XNUM};
use elf::endian::LittleEndian;
use elf::file::FileHeader;
use elf::note::NoteIterator;
use elf::parse::ParseAt;
use elf::section::SectionHeader;
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

/// Parses the ELF image `src` with `abi::pvh::Image`'s rules, reading its headers from `head`
/// (its first bytes, [`head`]) or through `buf`: up to [`TABLE_MAX`] bytes for the program
/// headers, the rest for a note segment. It finds what [`Image::parse`] finds in the same bytes
/// (the same entry points and segments, or the same error), except that a table or note
/// segment larger than its part of `buf`, or one that cannot be read, is an
/// [`ImageError::BadSegment`].
pub fn parse(src: &dyn Source, head: &[u8], buf: &mut [u8]) -> Result<Image, ImageError> {
    use ImageError::NotElf;
    let (size, not_elf) = (src.size(), |_: elf::ParseError| NotElf);
    let (table_buf, note_buf) = buf.split_at_mut(buf.len().min(TABLE_MAX));
    let mut ehdr_buf = [0; 64];
    let ehdr = bytes_at(src, head, 0, size.min(64), &mut ehdr_buf)?;
    // `parse_ident` indexes the identification bytes unchecked: hand it exactly them.
    let (ident, tail) = ehdr.split_at_checked(EI_NIDENT).ok_or(NotElf)?;
    let ident = elf::file::parse_ident::<LittleEndian>(ident).map_err(not_elf)?;
    let ehdr = FileHeader::parse_tail(ident, tail).map_err(not_elf)?;
    let (endian, class) = (ehdr.endianness, ehdr.class);

    // What `minimal_parse` checks beyond the ELF header, in its order. The first section header
    // holds the counts too large for the ELF header's fields.
    let shdr0 = |buf: &mut [u8; 64]| {
        let len = SectionHeader::size_for(class) as u64;
        let bytes = bytes_at(src, head, ehdr.e_shoff, len, buf)?;
        SectionHeader::parse_at(endian, class, &mut 0, bytes).map_err(not_elf)
    };
    // The length of a table of `n` entries of `entsize` bytes (validated for the class).
    let table_len = |entsize: Result<usize, elf::ParseError>, n: u64| {
        (entsize.map_err(not_elf)? as u64).checked_mul(n).ok_or(NotElf)
    };
    if ehdr.e_shoff != 0 {
        let n = if ehdr.e_shnum == 0 { shdr0(&mut ehdr_buf)?.sh_size } else { ehdr.e_shnum.into() };
        let len = table_len(SectionHeader::validate_entsize(class, ehdr.e_shentsize.into()), n)?;
        let end = ehdr.e_shoff.checked_add(len).ok_or(NotElf)?;
        if end > size {
            return Err(NotElf);
        }
    }
    let phnum = match ehdr.e_phnum {
        PN_XNUM if ehdr.e_phoff != 0 => shdr0(&mut ehdr_buf)?.sh_info.into(),
        n => n.into(),
    };
    let len = table_len(ProgramHeader::validate_entsize(class, ehdr.e_phentsize.into()), phnum);
    let phdrs = match ehdr.e_phoff {
        0 => None,
        at => Some(bytes_at(src, head, at, len?, table_buf)?),
    };

    let mut image = Image::new((), &ehdr)?;
    // No program headers is no executable (after the machine, as for an image in memory).
    for p in SegmentTable::new(endian, class, phdrs.ok_or(NotElf)?).iter() {
        // Read only for a note segment, into `note_buf` again for each. The closure takes the
        // borrow (`let buf = buf` moves it; a reborrow would end with the call), so the notes
        // it returns can outlive the call.
        let buf = &mut *note_buf;
        let notes = move || {
            let buf = buf;
            let data = bytes_at(src, head, p.p_offset, p.p_filesz, buf)?;
            Ok(NoteIterator::new(endian, class, p.p_align as usize, data))
        };
        image.add(&p, size, notes)?;
    }
    Ok(image)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use core::cell::RefCell;
    use std::vec::Vec;

    /// An image that is not in memory: read only through `read_at`, every read recorded, and
    /// the byte at `fail_at` unreadable.
    pub(crate) struct FileLike {
        pub(crate) bytes: Vec<u8>,
        pub(crate) reads: RefCell<Vec<(u64, usize)>>,
        pub(crate) fail_at: Option<u64>,
    }

    impl FileLike {
        pub(crate) fn new(bytes: Vec<u8>) -> Self {
            Self { bytes, reads: RefCell::default(), fail_at: None }
        }
        pub(crate) fn bytes_read(&self) -> usize {
            self.reads.borrow().iter().map(|r| r.1).sum()
        }
    }

    impl Source for FileLike {
        fn size(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
            self.reads.borrow_mut().push((offset, buf.len()));
            let end = offset + buf.len() as u64;
            if self.fail_at.is_some_and(|f| (offset..end).contains(&f)) {
                return Err(DiskError::Device { status: 0x41, error: 0x40 });
            }
            (&self.bytes[..]).read_at(offset, buf)
        }
    }

    /// What a parse gives, whatever the image's bytes are kept as.
    type Parsed = Result<(Option<u32>, u64, Vec<abi::pvh::Segment>), ImageError>;

    fn fields<B>(r: Result<Image<B>, ImageError>) -> Parsed {
        r.map(|i| (i.pvh_entry, i.elf_entry, i.segments.to_vec()))
    }

    /// Parses `img` as microhv does (in memory) and as dom0 does: from memory, and from a file
    /// read with no head, the ELF header's worth of it, and the builder's head. All agree.
    fn parse_every_way(img: &[u8]) -> Parsed {
        let want = fields(Image::parse(img));
        assert_eq!(fields(parse(&img, &[], &mut [])), want, "a memory source");
        let file = FileLike::new(img.to_vec());
        let mut scratch = std::vec![0u8; SCRATCH_MIN];
        for head_len in [0, 64, HEAD_BYTES] {
            let (head_buf, buf) = scratch.split_at_mut(HEAD_BYTES);
            let head = &img[..head_len.min(img.len())];
            head_buf[..head.len()].copy_from_slice(head);
            let got = fields(parse(&file, &head_buf[..head.len()], buf));
            assert_eq!(got, want, "a file read with a head of {head_len} bytes");
        }
        want
    }

    /// Writes the `n`-byte little-endian `v` at `at`, growing `f` as needed.
    fn put(f: &mut Vec<u8>, at: usize, n: usize, v: u64) {
        if f.len() < at + n {
            f.resize(at + n, 0);
        }
        f[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
    }

    /// Where an ELF header's fields are: 32- or 64-bit (their words differ; the rest follow).
    #[derive(Clone, Copy)]
    struct Class(bool);

    impl Class {
        fn word(self) -> usize {
            if self.0 { 8 } else { 4 }
        }
        fn shoff(self) -> usize {
            24 + 2 * self.word()
        }
        fn phnum(self) -> usize {
            24 + 3 * self.word() + 8
        }
        fn shentsize(self) -> usize {
            self.phnum() + 2
        }
        fn shnum(self) -> usize {
            self.phnum() + 4
        }
        fn ehsize(self) -> usize {
            if self.0 { 64 } else { 52 }
        }
        fn phentsize(self) -> usize {
            if self.0 { 56 } else { 32 }
        }
        fn shdr_size(self) -> usize {
            if self.0 { 64 } else { 40 }
        }
    }

    /// A program header: type, file offset, physical address, file size, memory size, alignment.
    type Ph = [u64; 6];

    /// An x86 executable of class `c` entering at 0x10_0010, with the program headers `phs`
    /// after its ELF header and `body` after them (at [`body_at`]).
    fn elf(c: Class, phs: &[Ph], body: &[u8]) -> Vec<u8> {
        let w = c.word();
        let mut f = std::vec![0u8; c.ehsize()];
        f[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 1 + u8::from(c.0), 1, 1]);
        put(&mut f, 16, 2, 2); // ET_EXEC
        put(&mut f, 18, 2, if c.0 { 62 } else { 3 }); // EM_X86_64, EM_386
        put(&mut f, 20, 4, 1);
        put(&mut f, 24, w, 0x10_0010);
        put(&mut f, 24 + w, w, c.ehsize() as u64); // e_phoff
        put(&mut f, c.phnum() - 4, 2, c.ehsize() as u64);
        put(&mut f, c.phnum() - 2, 2, c.phentsize() as u64);
        put(&mut f, c.phnum(), 2, phs.len() as u64);
        for (i, p) in phs.iter().enumerate() {
            let at = c.ehsize() + i * c.phentsize();
            put(&mut f, at, 4, p[0]);
            // p_offset, p_paddr, p_filesz, p_memsz, p_align.
            let fields = if c.0 { [8, 24, 32, 40, 48] } else { [4, 12, 16, 20, 28] };
            for (field, v) in fields.iter().zip(&p[1..]) {
                put(&mut f, at + field, w, *v);
            }
        }
        f.extend_from_slice(body);
        f
    }

    /// Where the body of an image of class `c` with `n` program headers starts.
    fn body_at(c: Class, n: usize) -> u64 {
        (c.ehsize() + n * c.phentsize()) as u64
    }

    /// A note, its name and description padded to `align` (as a note segment's notes are).
    fn note(name: &[u8], n_type: u32, desc: &[u8], align: usize) -> Vec<u8> {
        let mut n: Vec<u8> = [name.len() as u32, desc.len() as u32, n_type]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        for part in [name, desc] {
            n.extend_from_slice(part);
            n.resize(n.len().next_multiple_of(align.max(1)), 0);
        }
        n
    }

    /// Xen's PVH entry note.
    fn xen(entry: &[u8], align: usize) -> Vec<u8> {
        note(b"Xen\0", abi::pvh::XEN_ELFNOTE_PHYS32_ENTRY, entry, align)
    }

    const LOAD: u64 = 1;
    const NOTE: u64 = 4;

    /// An image of class `c`: `code` loaded at 1 MiB, then the note segment `notes` aligned to
    /// `align` and starting `gap` bytes after the code.
    fn pvh(c: Class, code: usize, gap: usize, notes: &[u8], align: u64) -> Vec<u8> {
        let at = body_at(c, 2);
        let note_at = at + (code + gap) as u64;
        let len = notes.len() as u64;
        let phs = [
            [LOAD, at, 0x10_0000, code as u64, code as u64 + 16, 4096],
            [NOTE, note_at, 0, len, len, align],
        ];
        let mut body = std::vec![0x90u8; code + gap];
        body.extend_from_slice(notes);
        elf(c, &phs, &body)
    }

    /// The images the tests start from: PVH and multiboot-only images, either class, notes of
    /// every alignment (far from the head or across its end), and section header tables.
    fn images() -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        for c in [Class(true), Class(false)] {
            for align in [1, 2, 4, 8] {
                let a = align as usize;
                let notes: Vec<u8> = [
                    note(b"GNU\0", 3, &[1, 2, 3], a),
                    xen(&0x10_0010u32.to_le_bytes(), a),
                    xen(&0x10_0020u64.to_le_bytes(), a),
                ]
                .concat();
                v.push(pvh(c, 100, 3, &notes, align));
                // Across the end of the builder's head, and far beyond it.
                v.push(pvh(c, HEAD_BYTES - 150, 0, &notes, align));
                v.push(pvh(c, 5000, 20_000, &notes, align));
            }
            // Multiboot-only: no note, someone else's note, a short or mistyped Xen note.
            v.push(pvh(c, 100, 0, &[], 4));
            v.push(pvh(c, 100, 0, &note(b"GNU\0", 1, &[0; 16], 4), 4));
            v.push(pvh(c, 100, 0, &xen(&[1, 2, 3], 4), 4));
            v.push(pvh(c, 100, 0, &note(b"Xen\0", 17, &[0; 4], 4), 4));
            // A note with an alignment of 0 is not parsed.
            v.push(pvh(c, 100, 0, &xen(&[1, 2, 3, 4], 4), 0));
            // Section header tables: in the file, with the count in the first entry, past the
            // end, with the wrong entry size.
            let img = pvh(c, 100, 0, &xen(&[0x10, 0, 0x10, 0], 4), 4);
            let sh = img.len();
            let with_shdrs = |count: u64, entsize: usize, entries: usize| {
                let mut f = img.clone();
                f.resize(sh + entries * c.shdr_size(), 0);
                put(&mut f, c.shoff(), c.word(), sh as u64);
                put(&mut f, c.shentsize(), 2, entsize as u64);
                put(&mut f, c.shnum(), 2, count);
                f
            };
            v.push(with_shdrs(3, c.shdr_size(), 3));
            v.push(with_shdrs(4, c.shdr_size(), 3));
            v.push(with_shdrs(3, c.shdr_size() + 1, 3));
            for (sh_size, entries) in [(3, 3), (3, 2), (0, 1)] {
                let mut f = with_shdrs(0, c.shdr_size(), entries);
                put(&mut f, sh + if c.0 { 32 } else { 20 }, c.word(), sh_size);
                v.push(f);
            }
            // No program headers, of an x86 executable or of an ARM one.
            for machine in [3, 40] {
                let mut f = img.clone();
                put(&mut f, 24 + c.word(), c.word(), 0);
                put(&mut f, 18, 2, machine);
                v.push(f);
            }
            // More than 0xfffe program headers: the count in the first section header.
            for ph_count in [2, 3] {
                let mut f = with_shdrs(1, c.shdr_size(), 1);
                put(&mut f, c.phnum(), 2, 0xffff);
                put(&mut f, sh + if c.0 { 44 } else { 28 }, 4, ph_count);
                v.push(f);
            }
        }
        v
    }

    #[test]
    fn every_way_of_reading_an_image_parses_it_as_microhv_does() {
        let c = Class(true);
        let mut seen = std::collections::BTreeSet::new();
        for img in images() {
            let got = parse_every_way(&img);
            seen.insert(std::format!("{:?}", got.as_ref().map(|g| g.0.is_some())));
            // Every prefix of a small image: truncated headers, tables, notes and segments.
            if img.len() < 1000 {
                for n in 0..img.len() {
                    let _ = parse_every_way(&img[..n]);
                }
            }
        }
        // The images cover what matters: PVH, multiboot-only and refused ones of each kind.
        let first = &images()[0];
        assert_eq!(parse_every_way(first).map(|g| g.0), Ok(Some(0x10_0020)), "the last note");
        for (what, at, v, want) in [
            ("p_filesz past the end", body_at(c, 0) as usize + 32, 0xff, ImageError::BadSegment),
            ("p_memsz below p_filesz", body_at(c, 0) as usize + 40, 1, ImageError::BadSegment),
            ("e_machine ARM", 18, 40, ImageError::WrongMachine),
            ("e_phentsize", c.phnum() - 2, 50, ImageError::NotElf),
        ] {
            let mut bad = first.clone();
            bad[at] = v;
            assert_eq!(parse_every_way(&bad).unwrap_err(), want, "{what}");
        }
        // Without program headers: not an executable, once the machine is right.
        let no_phdrs = |machine: u8| {
            let mut f = first.clone();
            f[32] = 0;
            f[18] = machine;
            parse_every_way(&f).unwrap_err()
        };
        assert_eq!((no_phdrs(62), no_phdrs(40)), (ImageError::NotElf, ImageError::WrongMachine));
        // A wrong machine whose program headers are broken as well: the headers speak first.
        let mut bad = first.clone();
        bad[18] = 40;
        bad[c.phnum() - 2] = 50;
        assert_eq!(parse_every_way(&bad).unwrap_err(), ImageError::NotElf);
        let overflow = pvh(c, 100, 0, &[], 4);
        let mut bad = overflow.clone();
        put(&mut bad, body_at(c, 0) as usize + 24, 8, u64::MAX - 8);
        assert_eq!(parse_every_way(&bad).unwrap_err(), ImageError::BadSegment, "paddr + memsz");
        let many: Vec<Ph> = (0..17).map(|i| [LOAD, 0, 0x10_0000 * i, 0, 1, 0]).collect();
        let many = elf(c, &many, &[]);
        assert_eq!(parse_every_way(&many).unwrap_err(), ImageError::TooManySegments);
        assert!(["Ok(true)", "Ok(false)", "Err(NotElf)"].iter().all(|s| seen.contains(*s)));
    }

    #[test]
    fn a_file_reads_only_headers_and_refuses_what_its_buffer_cannot_hold() {
        let notes = xen(&0x10_0010u32.to_le_bytes(), 4);
        let img = pvh(Class(true), 200_000, 100_000, &notes, 4);
        let file = FileLike::new(img.clone());
        let mut scratch = std::vec![0u8; SCRATCH_MIN];
        let (head_buf, buf) = scratch.split_at_mut(HEAD_BYTES);
        let head = head(&file, head_buf).unwrap();
        assert_eq!(parse(&file, head, buf).unwrap().pvh(), Ok(0x10_0010));
        // The head, then only the note: not the 300 KB between.
        assert_eq!(file.bytes_read(), HEAD_BYTES + notes.len());
        // A note segment larger than the buffer's part for it.
        let big = [notes.clone(), std::vec![0; TABLE_MAX]].concat();
        let img = pvh(Class(true), 20_000, 0, &big, 4);
        let (file, mut buf) = (FileLike::new(img.clone()), std::vec![0u8; 2 * TABLE_MAX]);
        assert_eq!(parse(&file, &img[..HEAD_BYTES], &mut buf).unwrap_err(), ImageError::BadSegment);
        assert_eq!(Image::parse(&img).unwrap().pvh(), Ok(0x10_0010));
        // A read that fails, in the note (at 176 + 20,000).
        let mut file = FileLike::new(pvh(Class(true), 20_000, 0, &notes, 4));
        file.fail_at = Some(20_180);
        assert_eq!(parse(&file, &[], &mut buf).unwrap_err(), ImageError::BadSegment);
    }

    /// A byte to write over another: often 0 or 0xff, the values that empty or swell a field.
    fn byte() -> impl proptest::strategy::Strategy<Value = u8> {
        use proptest::prelude::*;
        prop_oneof![Just(0u8), Just(0xff), any::<u8>()]
    }

    proptest::proptest! {
        #[test]
        fn mutated_images_parse_alike_every_way(
            which in 0usize..1000,
            changes in proptest::collection::vec((0usize..4096, byte()), 1..6),
        ) {
            // Images no larger than a table's part of the buffer, so that no change can make
            // a table or note too large for it (a file's limit, not a disagreement).
            let images: Vec<_> = images().into_iter().filter(|i| i.len() <= TABLE_MAX).collect();
            let mut img = images[which % images.len()].clone();
            for (at, v) in changes {
                // Mostly in the headers, where a change means most.
                let at = if at < 3072 { at % 160 } else { at };
                if let Some(b) = img.get_mut(at) {
                    *b = v;
                }
            }
            let _ = parse_every_way(&img);
        }

        #[test]
        fn random_bytes_parse_alike_every_way(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        ) {
            let _ = parse_every_way(&bytes);
        }
    }
}
