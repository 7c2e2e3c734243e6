//! The pool of virtual disks: dom0's disk's second MBR partition (type [`POOL_TYPE`]), cut into
//! one region per domain name.
//!
//! On-disk format (all little-endian). The partition's first [`TABLE_SECTORS`] sectors (4 KiB)
//! are the table: [`TABLE_ENTRIES`] entries of [`ENTRY_BYTES`] bytes.
//!
//! - Entry 0, the header: `magic` (8 bytes, [`POOL_MAGIC`], `"MHVVBD01"`) at 0, `version` (u32,
//!   [`POOL_VERSION`]) at 8, the rest 0.
//! - Entries 1..64, the regions: `name` (32 bytes: a domain name, printable ASCII, NUL-padded,
//!   nothing after the first NUL) at 0, `first` (u64: its first sector, counted from the
//!   partition's start; a multiple of 8, past the table) at 32, `sectors` (u64, at least 1) at
//!   40, the rest 0. An entry whose name starts with NUL is free.
//!
//! An all-zero table is an empty pool (the partition as `cargo xtask disk` makes it): the
//! header is written at the first attach. A header with another magic or version, a region
//! that overlaps another, the table or the partition's end, a bad name or a name used twice is
//! a table that does not parse ([`DiskError::NoPool`]): dom0 then changes nothing.
//!
//! A new region starts at the first 4 KiB boundary after the highest region's end. Its sectors
//! are zeroed before its entry is written, so a crash while zeroing leaves no entry (and the
//! next attach zeroes again), and no domain ever reads what another wrote. Entries are never
//! removed: a region belongs to its name for good (a domain created again under that name gets
//! its data back, and no other name ever gets it), so there is no free-space reuse to get wrong.

use crate::disk::Sectors;
use crate::disk::ata::SECTOR;
use abi::hypercall::DOMAIN_NAME_LEN;
use abi::proto::DiskError;

/// The MBR partition type of the pool ("non-FS data").
pub const POOL_TYPE: u8 = 0xda;
/// Which MBR entry holds the pool: the second (byte 462 of sector 0).
pub const POOL_MBR_ENTRY: usize = 1;
/// Sectors of the table at the partition's start.
pub const TABLE_SECTORS: u64 = 8;
/// Bytes of a table entry.
pub const ENTRY_BYTES: usize = 64;
/// Entries in the table, the header included.
pub const TABLE_ENTRIES: usize = TABLE_SECTORS as usize * SECTOR / ENTRY_BYTES;
/// The header's magic.
pub const POOL_MAGIC: [u8; 8] = *b"MHVVBD01";
/// The header's version.
pub const POOL_VERSION: u32 = 1;
/// Regions start on this many sectors (4 KiB: a page of the domain's I/O).
pub const REGION_ALIGN: u64 = 8;
/// Sectors zeroed per write when a region is made.
const ZERO_CHUNK: usize = 32;

/// Bytes of the table.
const TABLE_BYTES: usize = TABLE_SECTORS as usize * SECTOR;

/// A domain's virtual disk: a run of sectors of dom0's disk, as [`Sectors`] counted from its
/// start. Any access past its end is [`DiskError::OutOfRange`].
#[derive(Clone, Copy)]
pub struct Region<'d> {
    disk: &'d dyn Sectors,
    first: u64,
    sectors: u64,
}

impl<'d> Region<'d> {
    /// The sectors `first..first + sectors` of `disk` (absolute).
    pub(crate) fn new(disk: &'d dyn Sectors, first: u64, sectors: u64) -> Self {
        Self { disk, first, sectors }
    }

    /// Its first sector on dom0's disk.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The absolute sector of `lba`, if `buf` (whole sectors) fits from there.
    fn at(&self, lba: u64, len: usize) -> Result<u64, DiskError> {
        if !len.is_multiple_of(SECTOR) {
            return Err(DiskError::OutOfRange);
        }
        let end = lba.checked_add((len / SECTOR) as u64).ok_or(DiskError::OutOfRange)?;
        if end > self.sectors {
            return Err(DiskError::OutOfRange);
        }
        self.first.checked_add(lba).ok_or(DiskError::OutOfRange)
    }
}

impl core::fmt::Debug for Region<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Region")
            .field("first", &self.first)
            .field("sectors", &self.sectors)
            .finish()
    }
}

impl PartialEq for Region<'_> {
    fn eq(&self, other: &Self) -> bool {
        (self.first, self.sectors) == (other.first, other.sectors)
    }
}

impl Sectors for Region<'_> {
    fn sectors(&self) -> u64 {
        self.sectors
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let at = self.at(lba, buf.len())?;
        self.disk.read(at, buf)
    }
    fn write(&self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        let at = self.at(lba, buf.len())?;
        self.disk.write(at, buf)
    }
}

/// The pool partition of dom0's disk.
#[derive(Clone, Copy)]
pub struct Pool<'d> {
    disk: &'d dyn Sectors,
    start: u64,
    sectors: u64,
}

/// One region entry, parsed.
#[derive(Clone, Copy)]
struct Entry {
    name: [u8; DOMAIN_NAME_LEN],
    first: u64,
    sectors: u64,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// A name field as the ABI allows domain names: at least one printable character, NUL-padded,
/// nothing after the first NUL.
fn valid_name(name: &[u8]) -> bool {
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    end > 0
        && name[..end].iter().all(|b| (0x20..=0x7e).contains(b))
        && name[end..].iter().all(|&b| b == 0)
}

impl<'d> Pool<'d> {
    /// Finds the pool partition in `disk`'s MBR. [`DiskError::NoPool`] if the MBR has no
    /// signature, its second entry is not of type [`POOL_TYPE`], or that partition is past
    /// the disk's end, too small for its table, or overlaps another partition.
    pub fn open(disk: &'d dyn Sectors) -> Result<Self, DiskError> {
        let mut mbr = [0u8; SECTOR];
        disk.read(0, &mut mbr)?;
        let e = 446 + 16 * POOL_MBR_ENTRY;
        if mbr[510..512] != [0x55, 0xaa] || mbr[e + 4] != POOL_TYPE {
            return Err(DiskError::NoPool);
        }
        let word = |at: usize| {
            u64::from(u32::from_le_bytes([mbr[at], mbr[at + 1], mbr[at + 2], mbr[at + 3]]))
        };
        let (start, sectors) = (word(e + 8), word(e + 12));
        let fits = start.checked_add(sectors).is_some_and(|end| end <= disk.sectors());
        // A pool over another partition (dom0's file system, which kernels are built from)
        // would let a domU write it: such an MBR is refused whole.
        let overlaps = (0..4).filter(|&i| i != POOL_MBR_ENTRY).any(|i| {
            let o = 446 + 16 * i;
            let (s, n) = (word(o + 8), word(o + 12));
            mbr[o + 4] != 0 && n != 0 && s < start + sectors && start < s + n
        });
        if start == 0 || !fits || sectors <= TABLE_SECTORS || overlaps {
            return Err(DiskError::NoPool);
        }
        Ok(Self { disk, start, sectors })
    }

    /// The partition's first sector and size.
    pub fn extent(&self) -> (u64, u64) {
        (self.start, self.sectors)
    }

    /// The region named `name` (a `DomainInfo::name` field) of `sectors` sectors: the existing
    /// one ([`DiskError::SizeMismatch`] if it has another size), or a new one, zeroed.
    /// [`DiskError::PoolFull`] when there is no room or no free entry; [`DiskError::NoPool`]
    /// when the table does not parse; [`DiskError::BadPath`] for an empty or unprintable name
    /// (never a domain's).
    pub fn attach(
        &self,
        name: &[u8; DOMAIN_NAME_LEN],
        sectors: u64,
    ) -> Result<Region<'d>, DiskError> {
        if !valid_name(name) {
            return Err(DiskError::BadPath);
        }
        if sectors == 0 {
            return Err(DiskError::OutOfRange);
        }
        let mut table = [0u8; TABLE_BYTES];
        self.disk.read(self.start, &mut table)?;
        let entries = self.parse(&table)?;
        if let Some(e) = entries.iter().flatten().find(|e| e.name == *name) {
            if e.sectors != sectors {
                return Err(DiskError::SizeMismatch { sectors: e.sectors });
            }
            return Ok(self.region(e));
        }
        let slot = (1..TABLE_ENTRIES).find(|&i| entries[i].is_none()).ok_or(DiskError::PoolFull)?;
        let mut first = TABLE_SECTORS;
        for e in entries.iter().flatten() {
            // Parsed entries end inside the partition, so neither sum overflows.
            first = first.max((e.first + e.sectors).next_multiple_of(REGION_ALIGN));
        }
        match first.checked_add(sectors) {
            Some(end) if end <= self.sectors => {}
            _ => return Err(DiskError::PoolFull),
        }
        let entry = Entry { name: *name, first, sectors };
        self.zero(&entry)?;
        // The table last: until this write, the region is nobody's.
        table[..8].copy_from_slice(&POOL_MAGIC);
        table[8..12].copy_from_slice(&POOL_VERSION.to_le_bytes());
        let e = &mut table[slot * ENTRY_BYTES..(slot + 1) * ENTRY_BYTES];
        e.fill(0);
        e[..DOMAIN_NAME_LEN].copy_from_slice(name);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&sectors.to_le_bytes());
        self.disk.write(self.start, &table)?;
        Ok(self.region(&entry))
    }

    fn region(&self, e: &Entry) -> Region<'d> {
        // `parse` and `attach` keep regions inside the partition, itself inside the disk.
        Region::new(self.disk, self.start + e.first, e.sectors)
    }

    /// The table's entries (index 0, the header, is always `None`), or `NoPool` if it does not
    /// parse.
    fn parse(
        &self,
        table: &[u8; TABLE_BYTES],
    ) -> Result<[Option<Entry>; TABLE_ENTRIES], DiskError> {
        let mut out = [None; TABLE_ENTRIES];
        let header = &table[..ENTRY_BYTES];
        if header.iter().all(|&b| b == 0) {
            // An empty pool, unless something else was written there.
            return if table.iter().all(|&b| b == 0) { Ok(out) } else { Err(DiskError::NoPool) };
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if header[..8] != POOL_MAGIC || version != POOL_VERSION {
            return Err(DiskError::NoPool);
        }
        for (i, e) in table.chunks_exact(ENTRY_BYTES).enumerate().skip(1) {
            if e[0] == 0 {
                continue;
            }
            let mut name = [0u8; DOMAIN_NAME_LEN];
            name.copy_from_slice(&e[..DOMAIN_NAME_LEN]);
            let (first, sectors) = (u64_at(e, 32), u64_at(e, 40));
            let inside = first.checked_add(sectors).is_some_and(|end| end <= self.sectors);
            let ok = valid_name(&name)
                && first >= TABLE_SECTORS
                && first.is_multiple_of(REGION_ALIGN)
                && sectors > 0
                && inside;
            if !ok {
                return Err(DiskError::NoPool);
            }
            let new = Entry { name, first, sectors };
            for old in out.iter().flatten() {
                let overlap =
                    new.first < old.first + old.sectors && old.first < new.first + new.sectors;
                if overlap || old.name == new.name {
                    return Err(DiskError::NoPool);
                }
            }
            out[i] = Some(new);
        }
        Ok(out)
    }

    /// Writes zeros over a new region, a chunk at a time.
    #[inline(never)]
    fn zero(&self, e: &Entry) -> Result<(), DiskError> {
        let zeros = [0u8; ZERO_CHUNK * SECTOR];
        let mut done = 0;
        while done < e.sectors {
            let n = (e.sectors - done).min(ZERO_CHUNK as u64);
            // `n` is at most ZERO_CHUNK.
            self.disk.write(self.start + e.first + done, &zeros[..n as usize * SECTOR])?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
