//! The pool against in-memory disks: allocation, finding again, zeroing, and every table or
//! partition it must refuse.

use super::*;
use crate::disk::MemDisk;
use core::cell::{Cell, RefCell};
use std::vec;
use std::vec::Vec;

/// Where the tests' pool partition starts.
const START: u64 = 64;

/// A disk of `START + pool` sectors whose MBR's second entry is a partition of type `kind`
/// covering `pool` sectors from `START`; the pool's sectors after its table hold 0xEE (what an
/// earlier user might have left).
pub(crate) fn pool_disk(pool: u64, kind: u8) -> Vec<u8> {
    let mut d = vec![0u8; ((START + pool) as usize) * SECTOR];
    let e = 446 + 16;
    d[e + 4] = kind;
    d[e + 8..e + 12].copy_from_slice(&(START as u32).to_le_bytes());
    d[e + 12..e + 16].copy_from_slice(&(pool as u32).to_le_bytes());
    d[510] = 0x55;
    d[511] = 0xaa;
    let data = ((START + TABLE_SECTORS) as usize) * SECTOR;
    d[data..].fill(0xee);
    d
}

fn name(s: &str) -> [u8; DOMAIN_NAME_LEN] {
    abi::types::name_field(s).unwrap()
}

fn mem(pool: u64) -> MemDisk {
    MemDisk(RefCell::new(pool_disk(pool, POOL_TYPE)))
}

/// The table's bytes.
fn table(d: &MemDisk) -> Vec<u8> {
    let at = START as usize * SECTOR;
    d.0.borrow()[at..at + TABLE_BYTES].to_vec()
}

#[test]
fn a_name_gets_its_region_again_and_names_get_disjoint_zeroed_regions() {
    let d = mem(4096);
    let pool = Pool::open(&d).unwrap();
    assert_eq!(pool.extent(), (START, 4096));
    let a = pool.attach(&name("alpha"), 100).unwrap();
    assert_eq!((a.first(), a.sectors()), (START + TABLE_SECTORS, 100));
    assert_eq!(&table(&d)[..8], b"MHVVBD01", "the header, written at the first attach");
    // 100 sectors end at 108: the next region starts at the next 4 KiB boundary, 112.
    let b = pool.attach(&name("beta"), 16).unwrap();
    assert_eq!((b.first(), b.sectors()), (START + 112, 16));
    // Found again, by another `Pool` too (dom0 rebooted).
    assert_eq!(pool.attach(&name("alpha"), 100).unwrap(), a);
    assert_eq!(Pool::open(&d).unwrap().attach(&name("beta"), 16).unwrap(), b);
    // Zeroed, and only those sectors.
    let all = d.0.borrow().clone();
    let (a0, b0) = (a.first() as usize * SECTOR, b.first() as usize * SECTOR);
    assert!(all[a0..a0 + 100 * SECTOR].iter().all(|&x| x == 0));
    assert!(all[a0 + 100 * SECTOR..b0].iter().all(|&x| x == 0xee), "the gap is untouched");
    assert!(all[b0..b0 + 16 * SECTOR].iter().all(|&x| x == 0));
    assert!(all[b0 + 16 * SECTOR..].iter().all(|&x| x == 0xee));
    // Data written through one region is not seen through the other.
    a.write(99, &[7; SECTOR]).unwrap();
    let mut buf = [1u8; SECTOR];
    b.read(0, &mut buf).unwrap();
    assert_eq!(buf, [0; SECTOR]);
    a.read(99, &mut buf).unwrap();
    assert_eq!(buf, [7; SECTOR]);
    // The data survives a second attach (no zeroing of an existing region).
    pool.attach(&name("alpha"), 100).unwrap().read(99, &mut buf).unwrap();
    assert_eq!(buf, [7; SECTOR]);
}

#[test]
fn regions_are_bounds_checked() {
    let d = mem(256);
    let r = Pool::open(&d).unwrap().attach(&name("r"), 8).unwrap();
    let mut buf = [0u8; 2 * SECTOR];
    assert_eq!(r.read(7, &mut buf), Err(DiskError::OutOfRange));
    assert_eq!(r.write(8, &buf[..SECTOR]), Err(DiskError::OutOfRange));
    assert_eq!(r.read(u64::MAX, &mut buf), Err(DiskError::OutOfRange), "no overflow");
    assert_eq!(r.read(0, &mut buf[..100]), Err(DiskError::OutOfRange), "whole sectors");
    assert!(r.read(6, &mut buf).is_ok());
}

#[test]
fn another_size_for_a_name_is_a_mismatch() {
    let d = mem(256);
    let pool = Pool::open(&d).unwrap();
    pool.attach(&name("x"), 16).unwrap();
    assert_eq!(pool.attach(&name("x"), 8), Err(DiskError::SizeMismatch { sectors: 16 }));
    assert_eq!(pool.attach(&name("x"), 0), Err(DiskError::OutOfRange));
}

#[test]
fn a_full_pool_says_so() {
    // Room for 64 regions of 8 sectors, but 63 entries: entries run out first.
    let d = mem(TABLE_SECTORS + 64 * 8);
    let pool = Pool::open(&d).unwrap();
    for i in 0..63 {
        pool.attach(&name(&std::format!("d{i}")), 8).unwrap();
    }
    assert_eq!(pool.attach(&name("one-more"), 8), Err(DiskError::PoolFull), "no entry left");
    // Space runs out.
    let d = mem(TABLE_SECTORS + 100);
    let pool = Pool::open(&d).unwrap();
    assert_eq!(pool.attach(&name("big"), 101), Err(DiskError::PoolFull));
    pool.attach(&name("a"), 90).unwrap();
    // 90 ends at 98, the next boundary is 104: 4 sectors left, not 10.
    assert_eq!(pool.attach(&name("b"), 5), Err(DiskError::PoolFull));
    assert_eq!(pool.attach(&name("b"), u64::MAX), Err(DiskError::PoolFull), "no overflow");
    assert!(pool.attach(&name("b"), 4).is_ok());
}

#[test]
fn without_a_pool_partition_there_is_no_pool() {
    let no_pool = |bytes: Vec<u8>| Pool::open(&MemDisk(RefCell::new(bytes))).err();
    assert_eq!(no_pool(pool_disk(256, 0x83)), Some(DiskError::NoPool), "another type");
    let mut unsigned = pool_disk(256, POOL_TYPE);
    unsigned[511] = 0;
    assert_eq!(no_pool(unsigned), Some(DiskError::NoPool), "no MBR signature");
    let mut short = pool_disk(256, POOL_TYPE);
    short.truncate(short.len() - SECTOR);
    assert_eq!(no_pool(short), Some(DiskError::NoPool), "past the disk's end");
    assert_eq!(
        no_pool(pool_disk(TABLE_SECTORS, POOL_TYPE)),
        Some(DiskError::NoPool),
        "only a table"
    );
    assert_eq!(no_pool(vec![0; 4 * SECTOR]), Some(DiskError::NoPool), "a blank disk");
    // A file system partition reaching into the pool, or lying inside it: the pool would
    // hand its sectors to domUs.
    for (first, sectors) in [(1, START + 1), (START + 100, 8), (START + 255, 1)] {
        let mut over = pool_disk(256, POOL_TYPE);
        over[446 + 4] = 0x0c;
        over[446 + 8..446 + 12].copy_from_slice(&(first as u32).to_le_bytes());
        over[446 + 12..446 + 16].copy_from_slice(&(sectors as u32).to_le_bytes());
        assert_eq!(no_pool(over), Some(DiskError::NoPool), "overlap at {first}+{sectors}");
    }
    let mut beside = pool_disk(256, POOL_TYPE);
    beside[446 + 4] = 0x0c;
    beside[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
    beside[446 + 12..446 + 16].copy_from_slice(&((START - 1) as u32).to_le_bytes());
    assert!(Pool::open(&MemDisk(RefCell::new(beside))).is_ok(), "a partition just before it");
    assert_eq!(no_pool(vec![]), Some(DiskError::OutOfRange), "not even an MBR");
}

/// Writes entry `i` of the table of `d`.
fn put(d: &MemDisk, i: usize, name: &[u8], first: u64, sectors: u64) {
    let at = START as usize * SECTOR + i * ENTRY_BYTES;
    let mut b = d.0.borrow_mut();
    let e = &mut b[at..at + ENTRY_BYTES];
    e.fill(0);
    e[..name.len()].copy_from_slice(name);
    e[32..40].copy_from_slice(&first.to_le_bytes());
    e[40..48].copy_from_slice(&sectors.to_le_bytes());
}

/// A way to spoil a table.
type Corruption = fn(&MemDisk);

#[test]
fn a_table_that_does_not_parse_is_no_pool_and_is_left_alone() {
    let cases: Vec<(&str, Corruption)> = vec![
        ("bad magic", |d| put(d, 0, b"MHVVBD02", 0, 0)),
        ("bad version", |d| {
            put(d, 0, b"MHVVBD01", 0, 0);
            d.0.borrow_mut()[START as usize * SECTOR + 8] = 2;
        }),
        ("entries without a header", |d| put(d, 3, b"x", 8, 8)),
        ("garbage after an empty header", |d| d.0.borrow_mut()[START as usize * SECTOR + 4000] = 1),
        ("overlap", |d| {
            put(d, 1, b"a", 8, 16);
            put(d, 2, b"b", 16, 8);
        }),
        ("a name twice", |d| {
            put(d, 1, b"a", 8, 8);
            put(d, 2, b"a", 16, 8);
        }),
        ("unprintable name", |d| put(d, 1, b"a\nb", 8, 8)),
        ("bytes after the name's NUL", |d| put(d, 1, b"a\0b", 8, 8)),
        ("in the table", |d| put(d, 1, b"a", 0, 8)),
        ("misaligned", |d| put(d, 1, b"a", 12, 8)),
        ("empty", |d| put(d, 1, b"a", 8, 0)),
        ("past the end", |d| put(d, 1, b"a", 8, 256)),
        ("overflowing", |d| put(d, 1, b"a", 8, u64::MAX - 4)),
    ];
    for (what, corrupt) in cases {
        let d = mem(256);
        if what != "entries without a header" && what != "garbage after an empty header" {
            put(&d, 0, b"MHVVBD01", 0, 0);
            d.0.borrow_mut()[START as usize * SECTOR + 8] = 1;
        }
        corrupt(&d);
        let before = d.0.borrow().clone();
        let pool = Pool::open(&d).unwrap();
        assert_eq!(pool.attach(&name("new"), 8), Err(DiskError::NoPool), "{what}");
        assert!(*d.0.borrow() == before, "{what}: nothing written");
    }
    // A valid table with a header written by hand, for contrast.
    let d = mem(256);
    put(&d, 0, b"MHVVBD01", 0, 0);
    d.0.borrow_mut()[START as usize * SECTOR + 8] = 1;
    put(&d, 5, b"a", 8, 8);
    assert_eq!(Pool::open(&d).unwrap().attach(&name("b"), 8).unwrap().first(), START + 16);
}

#[test]
fn names_that_are_no_domain_names_are_refused() {
    let d = mem(256);
    let pool = Pool::open(&d).unwrap();
    assert_eq!(pool.attach(&[0; DOMAIN_NAME_LEN], 8), Err(DiskError::BadPath));
    let mut n = name("a");
    n[5] = b'b';
    assert_eq!(pool.attach(&n, 8), Err(DiskError::BadPath));
}

/// A disk whose writes fail from the `n`th on (a crash, as the pool sees it).
struct Failing<'a> {
    disk: &'a MemDisk,
    writes_left: Cell<usize>,
}

impl Sectors for Failing<'_> {
    fn sectors(&self) -> u64 {
        self.disk.sectors()
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.disk.read(lba, buf)
    }
    fn write(&self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        let left = self.writes_left.get();
        if left == 0 {
            return Err(DiskError::Timeout);
        }
        self.writes_left.set(left - 1);
        self.disk.write(lba, buf)
    }
}

#[test]
fn a_failure_while_zeroing_leaves_no_entry() {
    let d = mem(4096);
    let failing = Failing { disk: &d, writes_left: Cell::new(2) };
    let pool = Pool::open(&failing).unwrap();
    // 200 sectors are 7 chunks of 32: the third write fails.
    assert_eq!(pool.attach(&name("a"), 200), Err(DiskError::Timeout));
    assert!(table(&d).iter().all(|&b| b == 0), "no entry, no header");
    // The next attach makes the region afresh, zeroing all of it.
    let r = Pool::open(&d).unwrap().attach(&name("a"), 200).unwrap();
    assert_eq!(r.first(), START + TABLE_SECTORS);
    let at = r.first() as usize * SECTOR;
    assert!(d.0.borrow()[at..at + 200 * SECTOR].iter().all(|&b| b == 0));
}
