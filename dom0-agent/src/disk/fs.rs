//! The FAT file system of dom0's disk, read with `embedded-sdmmc` (no allocation, FAT16 and
//! FAT32, long file names).
//!
//! Layout (what `cargo xtask disk` makes, and what the crate reads): an MBR whose first
//! partition has a FAT type (0x0B / 0x0C FAT32, 0x04 / 0x06 / 0x0E FAT16); a partitionless
//! "superfloppy" is not read (the crate looks for the partition table). Paths are absolute,
//! `/`-separated; each name matches an entry's long name or its 8.3 name, ignoring ASCII case
//! (FAT's rule). dom0 only reads: files are opened read-only, and the volume is never closed
//! (`embedded-sdmmc` writes the FAT32 information sector back when it closes a volume), so a
//! request leaves the disk as it found it.

use super::{SECTOR, Sectors};
use crate::image::Source;
use abi::proto::{DISK_PATH_MAX, DiskError};
use core::cell::RefCell;
use core::fmt::Write;
use core::ops::ControlFlow;
use embedded_sdmmc::{
    Block, BlockCount, BlockDevice, BlockIdx, DirEntry, LfnBuffer, Mode, RawDirectory, RawFile,
    RawVolume, TimeSource, Timestamp, VolumeIdx, VolumeManager,
};

/// Directories open at once: the one a path is being walked in, and the next.
const MAX_DIRS: usize = 2;
/// Files open at once: a kernel and its modules.
const MAX_FILES: usize = 1 + abi::proto::KERNEL_MODULES_MAX;
/// Longest name one FAT entry has: 255 UTF-16 units, at most 3 UTF-8 bytes each.
const LFN_BYTES: usize = 255 * 3;

/// Sectors one read-ahead line holds: 32 KiB, sixteen of `mformat`'s 2 KiB clusters.
const AHEAD: usize = 64;

/// A run of sectors read with one command.
struct Line {
    first: Option<u64>,
    len: usize,
    bytes: [u8; AHEAD * SECTOR],
}

/// Read-ahead for the file system: two lines of [`AHEAD`] sectors, the least recently filled
/// replaced. `embedded-sdmmc` asks for one sector at a time and alternates between a file's
/// data and the FAT sector that chains its clusters; one line follows each, so a file read
/// in order costs one drive command per 32 KiB instead of one per sector (under Bochs a 4 MiB
/// file went from 8.9 MB/s to 19.7 with 8 KiB lines, 22.3 with 32 KiB, by dom0's clock).
/// 64 KiB: dom0 keeps it with the server's buffers, not on its stack.
pub struct ReadAhead {
    lines: [Line; 2],
    /// The line to fill next.
    victim: usize,
}

impl Default for ReadAhead {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadAhead {
    /// Empty lines.
    pub const fn new() -> Self {
        const EMPTY: Line = Line { first: None, len: 0, bytes: [0; AHEAD * SECTOR] };
        Self { lines: [EMPTY, EMPTY], victim: 0 }
    }

    fn forget(&mut self) {
        for l in &mut self.lines {
            l.first = None;
        }
    }

    /// Copies sector `lba` of `disk` into `out`, from a line or by filling one.
    fn read(
        &mut self,
        disk: &dyn Sectors,
        lba: u64,
        out: &mut [u8; SECTOR],
    ) -> Result<(), DiskError> {
        let holds = |l: &Line| l.first.is_some_and(|f| (f..f + l.len as u64).contains(&lba));
        let i = match self.lines.iter().position(holds) {
            Some(i) => i,
            None => {
                let i = self.victim;
                self.victim ^= 1;
                let n =
                    usize::try_from(disk.sectors().saturating_sub(lba)).unwrap_or(AHEAD).min(AHEAD);
                if n == 0 {
                    return Err(DiskError::OutOfRange);
                }
                let l = &mut self.lines[i];
                // Invalid until the read succeeds: a failed read leaves no half-filled line.
                l.first = None;
                // A sector the drive cannot read fails only the reads that need it: after a
                // failed read ahead, the sector asked for is read alone.
                let n = match disk.read(lba, &mut l.bytes[..n * SECTOR]) {
                    Ok(()) => n,
                    Err(_) if n > 1 => {
                        disk.read(lba, &mut l.bytes[..SECTOR])?;
                        1
                    }
                    Err(e) => return Err(e),
                };
                (l.first, l.len) = (Some(lba), n);
                i
            }
        };
        let l = &self.lines[i];
        let at = (lba - l.first.unwrap_or(lba)) as usize * SECTOR;
        out.copy_from_slice(&l.bytes[at..at + SECTOR]);
        Ok(())
    }
}

/// The disk as `embedded-sdmmc` sees it.
struct Dev<'d> {
    disk: &'d dyn Sectors,
    ahead: RefCell<&'d mut ReadAhead>,
}

impl BlockDevice for Dev<'_> {
    type Error = DiskError;

    fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), DiskError> {
        // Borrowed for this call only; the crate never re-enters its device.
        let mut ahead = self.ahead.try_borrow_mut().map_err(|_| DiskError::Timeout)?;
        for (i, b) in blocks.iter_mut().enumerate() {
            ahead.read(self.disk, u64::from(start.0) + i as u64, &mut b.contents)?;
        }
        Ok(())
    }

    fn write(&self, blocks: &[Block], start: BlockIdx) -> Result<(), DiskError> {
        self.ahead.try_borrow_mut().map_err(|_| DiskError::Timeout)?.forget();
        for (i, b) in blocks.iter().enumerate() {
            self.disk.write(u64::from(start.0) + i as u64, &b.contents)?;
        }
        Ok(())
    }

    fn num_blocks(&self) -> Result<BlockCount, DiskError> {
        // FAT's block numbers are 32-bit: a larger disk is used up to 2 TiB.
        Ok(BlockCount(u32::try_from(self.disk.sectors()).unwrap_or(u32::MAX)))
    }
}

/// Timestamps for files the crate would create; dom0 creates none.
struct NoClock;

impl TimeSource for NoClock {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp {
            year_since_1970: 0,
            zero_indexed_month: 0,
            zero_indexed_day: 0,
            hours: 0,
            minutes: 0,
            seconds: 0,
        }
    }
}

type Manager<'d> = VolumeManager<Dev<'d>, NoClock, MAX_DIRS, MAX_FILES, 1>;

/// The crate's errors in the protocol's terms.
fn disk_error(e: embedded_sdmmc::Error<DiskError>) -> DiskError {
    use embedded_sdmmc::Error as E;
    match e {
        E::DeviceError(e) => e,
        E::NotFound => DiskError::NotFound,
        E::OpenedDirAsFile => DiskError::IsADirectory,
        E::OpenedFileAsDir => DiskError::NotADirectory,
        E::FilenameError(_) => DiskError::BadPath,
        E::EndOfFile => DiskError::OutOfRange,
        E::FormatError(_) | E::NoSuchVolume | E::Unsupported => DiskError::NoFileSystem,
        // Broken chains and the like; also the handle-table errors (a file opened twice, too
        // many handles), which this module's and its callers' bookkeeping rule out.
        _ => DiskError::Corrupt,
    }
}

/// The file system of a disk, open for one request.
pub struct Fs<'d> {
    disk: &'d dyn Sectors,
    vm: Manager<'d>,
    volume: RawVolume,
    /// The first partition's type byte.
    partition_type: u8,
}

/// A directory handle, closed when dropped.
struct Dir<'f, 'd> {
    fs: &'f Fs<'d>,
    raw: RawDirectory,
}

impl Drop for Dir<'_, '_> {
    fn drop(&mut self) {
        let _ = self.fs.vm.close_dir(self.raw);
    }
}

/// What a path names.
enum Found<'f, 'd> {
    /// The root directory.
    Root(Dir<'f, 'd>),
    /// An entry of the directory it is in (which stays open).
    Entry(Dir<'f, 'd>, DirEntry),
}

impl<'d> Fs<'d> {
    /// Opens the FAT volume of `disk`'s first MBR partition, reading through `ahead` (emptied
    /// first: the disk may have changed since it was last used).
    pub fn open(disk: &'d dyn Sectors, ahead: &'d mut ReadAhead) -> Result<Self, DiskError> {
        ahead.forget();
        let mut mbr = [0u8; SECTOR];
        disk.read(0, &mut mbr)?;
        if mbr[510..512] != [0x55, 0xaa] {
            return Err(DiskError::NoFileSystem);
        }
        let dev = Dev { disk, ahead: RefCell::new(ahead) };
        let vm = Manager::new_with_limits(dev, NoClock, 1);
        let volume = vm.open_raw_volume(VolumeIdx(0)).map_err(|e| match e {
            embedded_sdmmc::Error::DeviceError(e) => e,
            _ => DiskError::NoFileSystem,
        })?;
        Ok(Self { disk, vm, volume, partition_type: mbr[446 + 4] })
    }

    /// The file system in words: its FAT type (from the partition type) and label.
    pub fn describe(&self, out: &mut impl Write) {
        let fat = match self.partition_type {
            0x0b | 0x0c => "FAT32",
            _ => "FAT16",
        };
        let _ = write!(out, "{fat} (partition type {:#04x})", self.partition_type);
        if let Ok(Some(label)) = self.vm.get_root_volume_label(self.volume) {
            let _ = out.write_str(", label ");
            for &c in label.name() {
                let _ = out.write_char(if c.is_ascii_graphic() { c as char } else { '?' });
            }
        }
    }

    /// Opens the file at `path` for reading. A file is open once at a time: a second open of
    /// it fails until the first is dropped (compare [`Fs::entry_id`]s to find it).
    pub fn open_file(&self, path: &str) -> Result<File<'_, 'd>, DiskError> {
        let (dir, entry) = self.file_entry(path)?;
        let raw =
            self.vm.open_file_in_dir(dir.raw, entry.name, Mode::ReadOnly).map_err(disk_error)?;
        Ok(File { fs: self, raw, len: entry.size.into(), id: id_of(&entry) })
    }

    /// What identifies the file at `path` (its directory entry's place), whatever the
    /// spelling of the path.
    pub fn entry_id(&self, path: &str) -> Result<EntryId, DiskError> {
        Ok(id_of(&self.file_entry(path)?.1))
    }

    /// The entry of the file at `path`, and its directory (open).
    fn file_entry(&self, path: &str) -> Result<(Dir<'_, 'd>, DirEntry), DiskError> {
        match self.walk(path)? {
            Found::Entry(dir, e) if !e.attributes.is_directory() => Ok((dir, e)),
            _ => Err(DiskError::IsADirectory),
        }
    }

    /// Calls `f(name, size, is_directory)` for each entry of the directory at `path` from its
    /// `skip`th on (volume labels, `.` and `..` left out), until `f` breaks. The name is the
    /// long name if the entry has one. Returns whether `f` broke.
    pub fn list(
        &self,
        path: &str,
        skip: u32,
        mut f: impl FnMut(&str, u64, bool) -> ControlFlow<()>,
    ) -> Result<bool, DiskError> {
        let dir = match self.walk(path)? {
            Found::Root(d) => d,
            Found::Entry(parent, e) => {
                if !e.attributes.is_directory() {
                    return Err(DiskError::NotADirectory);
                }
                let raw = self.vm.open_dir(parent.raw, e.name).map_err(disk_error)?;
                drop(parent);
                Dir { fs: self, raw }
            }
        };
        let mut storage = [0u8; LFN_BYTES];
        let mut lfn = LfnBuffer::new(&mut storage);
        let (mut seen, mut broke) = (0u32, false);
        let mut sector = (None, [0u8; SECTOR]);
        self.vm
            .iterate_dir_lfn(dir.raw, &mut lfn, |e, long| {
                if e.attributes.is_volume() || is_dot(e) {
                    return ControlFlow::Continue(());
                }
                seen += 1;
                if seen <= skip {
                    return ControlFlow::Continue(());
                }
                let short = self.short_name(e, &mut sector);
                let dir = e.attributes.is_directory();
                let r = f(long.unwrap_or(&short), if dir { 0 } else { e.size.into() }, dir);
                broke = r.is_break();
                r
            })
            .map_err(disk_error)?;
        Ok(broke)
    }

    /// An entry's 8.3 name as people see it: lower case where the entry's case flags say so
    /// (byte 12: bit 3 the base name, bit 4 the extension; mtools, Windows NT and Linux write
    /// them for all-lower-case names instead of a long name). `sector` caches the directory
    /// sector last read for the flags (the crate does not keep them); without it, the stored
    /// upper case.
    fn short_name(
        &self,
        e: &DirEntry,
        sector: &mut (Option<u32>, [u8; 512]),
    ) -> heapless::String<12> {
        if sector.0 != Some(e.entry_block.0) {
            let read = self.disk.read(e.entry_block.0.into(), &mut sector.1);
            sector.0 = read.ok().map(|()| e.entry_block.0);
        }
        let flags = match sector.0 {
            Some(_) => sector.1.get(e.entry_offset as usize + 12).copied().unwrap_or(0),
            None => 0,
        };
        let mut name = heapless::String::<12>::new();
        let mut put = |bytes: &[u8], lower: bool| {
            for &c in bytes {
                let c = if lower { c.to_ascii_lowercase() } else { c };
                let _ = name.push(if c.is_ascii() { c as char } else { '?' });
            }
        };
        put(e.name.base_name(), flags & 0x08 != 0);
        if !e.name.extension().is_empty() {
            put(b".", false);
            put(e.name.extension(), flags & 0x10 != 0);
        }
        name
    }

    /// Finds what `path` names. The directory holding it is open in the result.
    fn walk(&self, path: &str) -> Result<Found<'_, 'd>, DiskError> {
        let rest = path.strip_prefix('/').ok_or(DiskError::BadPath)?;
        if path.len() > DISK_PATH_MAX {
            return Err(DiskError::BadPath);
        }
        let raw = self.vm.open_root_dir(self.volume).map_err(disk_error)?;
        let mut dir = Dir { fs: self, raw };
        let mut names = rest.split('/').filter(|n| !n.is_empty() && *n != ".").peekable();
        while let Some(name) = names.next() {
            if name.len() > 255 {
                return Err(DiskError::BadPath);
            }
            let entry = self.find(&dir, name)?.ok_or(DiskError::NotFound)?;
            if names.peek().is_none() {
                return Ok(Found::Entry(dir, entry));
            }
            if !entry.attributes.is_directory() {
                return Err(DiskError::NotADirectory);
            }
            let raw = self.vm.open_dir(dir.raw, entry.name).map_err(disk_error)?;
            // The parent closes as the child opens: two directories at most are ever open.
            dir = Dir { fs: self, raw };
        }
        Ok(Found::Root(dir))
    }

    /// The entry of `dir` whose long or 8.3 name is `name` (ASCII case ignored).
    fn find(&self, dir: &Dir<'_, 'd>, name: &str) -> Result<Option<DirEntry>, DiskError> {
        let mut storage = [0u8; LFN_BYTES];
        let mut lfn = LfnBuffer::new(&mut storage);
        let mut found = None;
        self.vm
            .iterate_dir_lfn(dir.raw, &mut lfn, |e, long| {
                let mut short = heapless::String::<12>::new();
                let _ = write!(short, "{}", e.name);
                let hit = !e.attributes.is_volume()
                    && (long.is_some_and(|l| l.eq_ignore_ascii_case(name))
                        || short.eq_ignore_ascii_case(name));
                if hit {
                    found = Some(e.clone());
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })
            .map_err(disk_error)?;
        Ok(found)
    }
}

/// Where a directory entry lies: the sector and the offset in it.
pub type EntryId = (u32, u32);

fn id_of(e: &DirEntry) -> EntryId {
    (e.entry_block.0, e.entry_offset)
}

/// `.` or `..`.
fn is_dot(e: &DirEntry) -> bool {
    e.name.base_name() == b"." || e.name.base_name() == b".."
}

/// A file open for reading: an image [`Source`] the builder reads in chunks.
pub struct File<'f, 'd> {
    fs: &'f Fs<'d>,
    raw: RawFile,
    len: u64,
    id: EntryId,
}

impl File<'_, '_> {
    /// What identifies it (see [`Fs::entry_id`]).
    pub fn id(&self) -> EntryId {
        self.id
    }
}

impl Source for File<'_, '_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let end = offset.checked_add(buf.len() as u64).ok_or(DiskError::OutOfRange)?;
        if end > self.len {
            return Err(DiskError::OutOfRange);
        }
        // FAT files are at most 4 GiB - 1, so `offset` fits.
        let at = u32::try_from(offset).map_err(|_| DiskError::OutOfRange)?;
        let vm = &self.fs.vm;
        // Seeking is free when the offset is where the last read ended (the builder reads in
        // order), and walks the cluster chain otherwise.
        if vm.file_offset(self.raw).map_err(disk_error)? != at {
            vm.file_seek_from_start(self.raw, at).map_err(disk_error)?;
        }
        let mut done = 0;
        while done < buf.len() {
            let n = vm.read(self.raw, &mut buf[done..]).map_err(disk_error)?;
            if n == 0 {
                // The file's chain ended before its recorded size.
                return Err(DiskError::Corrupt);
            }
            done += n;
        }
        Ok(())
    }
}

impl Drop for File<'_, '_> {
    fn drop(&mut self) {
        let _ = self.fs.vm.close_file(self.raw);
    }
}

#[cfg(test)]
mod tests;
