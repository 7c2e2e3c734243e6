//! The file-system layer on images made by another FAT implementation (`fatfs`): paths, long
//! and 8.3 names, reads at any offset, listings, and each error a request can meet.

use super::*;
use crate::disk::MemDisk;
use crate::disk::fake::{FakeDrive, PARTITION_START, fat_image};
use crate::disk::{Disk, SECTOR};
use core::cell::RefCell;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

/// Bytes that differ at every offset, so a read from a wrong place shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed).collect()
}

/// Enough sectors for FAT32 with 512-byte clusters (65,525 clusters at least).
const FAT32_SECTORS: u32 = 70_000;

fn kernel() -> Vec<u8> {
    pattern(200_000, 1)
}

/// A FAT32 volume with files in the root, in directories, with long and 8.3 names.
fn image() -> Vec<u8> {
    let many: Vec<(String, Vec<u8>)> =
        (0..100).map(|i| (std::format!("many/file-{i:03}.bin"), vec![i as u8; i])).collect();
    let mut files: Vec<(&str, &[u8])> = vec![];
    let (k, hello, initrd, txt) = (kernel(), b"hello\n".to_vec(), pattern(3000, 2), pattern(10, 3));
    let cpio = pattern(4000, 4);
    files.push(("hello", &hello));
    files.push(("boot/vmlinux-6.1-microhv", &k));
    files.push(("boot/INITRD.IMG", &initrd));
    files.push(("boot/initramfs.cpio", &cpio));
    files.push(("Mixed Case Dir/a file.txt", &txt));
    for (p, d) in &many {
        files.push((p, d));
    }
    fat_image(
        fatfs::FatType::Fat32,
        0x0c,
        FAT32_SECTORS,
        &["boot", "Mixed Case Dir", "empty", "many"],
        &files,
    )
}

/// Read-ahead lines for one file system (leaked: a test's file systems live as long as it).
fn ahead() -> &'static mut ReadAhead {
    std::boxed::Box::leak(std::boxed::Box::new(ReadAhead::new()))
}

fn mem(bytes: Vec<u8>) -> MemDisk {
    MemDisk(RefCell::new(bytes))
}

fn read_all(f: &File<'_, '_>) -> Vec<u8> {
    let mut v = vec![0u8; f.size() as usize];
    f.read_at(0, &mut v).expect("read");
    v
}

#[test]
fn files_are_found_by_long_and_short_names_and_read_whole() {
    let disk = mem(image());
    let fs = Fs::open(&disk, ahead()).expect("a FAT volume");
    let mut text = String::new();
    fs.describe(&mut text);
    assert_eq!(text, "FAT32 (partition type 0x0c), label MICROHVTEST");
    assert_eq!(read_all(&fs.open_file("/hello").expect("hello")), b"hello\n");
    let k = fs.open_file("/boot/vmlinux-6.1-microhv").expect("long name");
    assert_eq!(k.size(), 200_000);
    assert_eq!(read_all(&k), kernel());
    let id = k.id();
    // A file is open once at a time (`embedded-sdmmc`'s rule): callers that name it twice
    // find it by its id (the server does) rather than open it again.
    assert!(fs.open_file("/boot/vmlinux-6.1-microhv").is_err());
    assert_eq!(fs.entry_id("/Boot/Vmlinux-6.1-Microhv"), Ok(id));
    drop(k);
    // ASCII case is ignored, empty and `.` components are skipped; the 8.3 alias works too.
    for path in ["/BOOT/VMLINUX-6.1-MICROHV", "//boot/./vmlinux-6.1-microhv"] {
        assert_eq!(fs.open_file(path).expect(path).size(), 200_000, "{path}");
    }
    let alias = fs.open_file("/boot/INITRA~1.CPI").expect("the 8.3 alias of a long name");
    assert_eq!(read_all(&alias), pattern(4000, 4));
    drop(alias);
    assert_eq!(read_all(&fs.open_file("/boot/initrd.img").expect("8.3")), pattern(3000, 2));
    let f = fs.open_file("/mixed case dir/A FILE.TXT").expect("spaces");
    assert_eq!(read_all(&f), pattern(10, 3));
}

#[test]
fn reads_at_any_offset_in_any_order() {
    let disk = mem(image());
    let fs = Fs::open(&disk, ahead()).expect("a FAT volume");
    let k = fs.open_file("/boot/vmlinux-6.1-microhv").expect("kernel");
    let want = kernel();
    // Forwards across cluster boundaries, backwards, and to the very end.
    for (at, len) in [(0, 1), (511, 2), (100_000, 65_536), (4096, 10), (199_999, 1), (0, 200_000)] {
        let mut buf = vec![0u8; len];
        k.read_at(at as u64, &mut buf).expect("in range");
        assert_eq!(buf, want[at..at + len], "{at}+{len}");
    }
    let mut one = [0u8; 1];
    assert_eq!(k.read_at(200_000, &mut one), Err(DiskError::OutOfRange));
    assert_eq!(k.read_at(u64::MAX, &mut one), Err(DiskError::OutOfRange));
}

#[test]
fn each_bad_path_has_its_error() {
    let disk = mem(image());
    let fs = Fs::open(&disk, ahead()).expect("a FAT volume");
    let err = |p: &str| fs.open_file(p).err();
    assert_eq!(err("/nothing"), Some(DiskError::NotFound));
    assert_eq!(err("/boot/nothing"), Some(DiskError::NotFound));
    assert_eq!(err("/nothing/vmlinux"), Some(DiskError::NotFound));
    assert_eq!(err("/hello/x"), Some(DiskError::NotADirectory));
    assert_eq!(err("/boot"), Some(DiskError::IsADirectory));
    assert_eq!(err("/"), Some(DiskError::IsADirectory));
    assert_eq!(err("hello"), Some(DiskError::BadPath), "relative");
    assert_eq!(err(""), Some(DiskError::BadPath));
    assert_eq!(err(&std::format!("/{}", "x".repeat(256))), Some(DiskError::BadPath));
    assert_eq!(err(&"/a".repeat(200)), Some(DiskError::BadPath), "over DISK_PATH_MAX");
    let list = |p: &str| fs.list(p, 0, |_, _, _| ControlFlow::Continue(())).err();
    assert_eq!(list("/hello"), Some(DiskError::NotADirectory));
    assert_eq!(list("/nothing"), Some(DiskError::NotFound));
    // The handles a failed walk opened are closed again: the next requests still work.
    for _ in 0..10 {
        assert!(fs.open_file("/boot/x/y").is_err());
        assert!(fs.open_file("/boot/initrd.img").is_ok());
    }
}

#[test]
fn directories_list_in_pages() {
    let disk = mem(image());
    let fs = Fs::open(&disk, ahead()).expect("a FAT volume");
    let mut root = Vec::new();
    let more = fs
        .list("/", 0, |n, size, dir| {
            root.push((n.to_string(), size, dir));
            ControlFlow::Continue(())
        })
        .expect("root");
    assert!(!more);
    let names: Vec<&str> = root.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["boot", "Mixed Case Dir", "empty", "many", "hello"]);
    assert_eq!(root[4], ("hello".to_string(), 6, false));
    assert!(root[0].2 && root[0].1 == 0);
    let mut empty = 0;
    fs.list("/empty", 0, |_, _, _| {
        empty += 1;
        ControlFlow::Continue(())
    })
    .expect("empty dir");
    assert_eq!(empty, 0, "no . or ..");
    // A page of 30, then the rest from where it stopped.
    let mut page = Vec::new();
    let more = fs
        .list("/many", 0, |n, size, _| {
            if page.len() == 30 {
                return ControlFlow::Break(());
            }
            page.push((n.to_string(), size));
            ControlFlow::Continue(())
        })
        .expect("many");
    assert!(more);
    let mut rest = Vec::new();
    let more = fs
        .list("/many", 30, |n, size, _| {
            rest.push((n.to_string(), size));
            ControlFlow::Continue(())
        })
        .expect("many");
    assert!(!more);
    page.extend(rest);
    let want: Vec<(String, u64)> =
        (0..100).map(|i| (std::format!("file-{i:03}.bin"), i as u64)).collect();
    assert_eq!(page, want);
}

#[test]
fn short_names_are_listed_in_the_case_their_flags_say() {
    // `INITRD  IMG`'s entry as mtools makes it for a name given in lower case: its long name
    // (fatfs writes one, the entry before) deleted, and the case flags in byte 12.
    let flagged = |flags: u8| {
        let mut bytes = image();
        let at = bytes.windows(11).position(|w| w == b"INITRD  IMG").expect("the entry");
        assert_eq!(bytes[at - 32 + 11], 0x0f, "one long-name entry before it");
        bytes[at - 32] = 0xe5;
        bytes[at + 12] = flags;
        bytes
    };
    let bytes = flagged(0x08 | 0x10);
    let disk = mem(bytes);
    let fs = Fs::open(&disk, ahead()).expect("a FAT volume");
    let mut names = Vec::new();
    fs.list("/boot", 0, |n, _, _| {
        names.push(n.to_string());
        ControlFlow::Continue(())
    })
    .expect("list");
    assert_eq!(names, ["vmlinux-6.1-microhv", "initrd.img", "initramfs.cpio"]);
    // Only the base name lower case.
    let disk = mem(flagged(0x08));
    let fs = Fs::open(&disk, ahead()).expect("a FAT volume");
    let mut names = Vec::new();
    fs.list("/boot", 0, |n, _, _| {
        names.push(n.to_string());
        ControlFlow::Continue(())
    })
    .expect("list");
    assert_eq!(names[1], "initrd.IMG");
}

#[test]
fn a_disk_without_a_fat_partition_has_no_file_system() {
    let no_fs = |bytes: Vec<u8>| Fs::open(&mem(bytes), ahead()).err();
    assert_eq!(no_fs(vec![0; 64 * SECTOR]), Some(DiskError::NoFileSystem), "no MBR");
    let mut linux = image();
    linux[446 + 4] = 0x83;
    assert_eq!(no_fs(linux), Some(DiskError::NoFileSystem), "not a FAT partition type");
    let mut wiped = image();
    wiped[PARTITION_START * SECTOR..(PARTITION_START + 1) * SECTOR].fill(0);
    assert_eq!(no_fs(wiped), Some(DiskError::NoFileSystem), "no boot sector");
    assert_eq!(no_fs(Vec::new()), Some(DiskError::OutOfRange), "no sector 0");
}

#[test]
fn fat16_volumes_are_read_too() {
    let k = pattern(70_000, 9);
    let img = fat_image(fatfs::FatType::Fat16, 0x0e, 8192, &["boot"], &[("boot/kernel", &k)]);
    let disk = mem(img);
    let fs = Fs::open(&disk, ahead()).expect("a FAT16 volume");
    let mut text = String::new();
    fs.describe(&mut text);
    assert!(text.starts_with("FAT16 (partition type 0x0e)"), "{text}");
    assert_eq!(read_all(&fs.open_file("/boot/kernel").expect("kernel")), k);
}

#[test]
fn reading_leaves_the_disk_as_it_was() {
    let bytes = image();
    let disk = mem(bytes.clone());
    {
        let fs = Fs::open(&disk, ahead()).expect("a FAT volume");
        let _ = read_all(&fs.open_file("/boot/vmlinux-6.1-microhv").expect("kernel"));
        fs.list("/many", 3, |_, _, _| ControlFlow::Continue(())).expect("list");
        let _ = fs.open_file("/nothing");
    }
    assert!(disk.0.borrow()[..] == bytes[..], "no sector written");
}

#[test]
fn through_the_ata_driver() {
    let drive = FakeDrive::new(image());
    let disk = Disk::probe(drive, 100_000).expect("a disk");
    let fs = Fs::open(&disk, ahead()).expect("a FAT volume");
    assert_eq!(read_all(&fs.open_file("/boot/vmlinux-6.1-microhv").expect("kernel")), kernel());
    // A sector that cannot be read surfaces as the drive's error.
    let mut drive = FakeDrive::new(image());
    let k = fat_image_sector_of(&image(), &kernel()[..512]);
    drive.bad_sector = Some(k);
    let disk = Disk::probe(drive, 100_000).expect("a disk");
    let fs = Fs::open(&disk, ahead()).expect("a FAT volume");
    let f = fs.open_file("/boot/vmlinux-6.1-microhv").expect("kernel");
    let mut buf = vec![0u8; 1024];
    assert!(matches!(f.read_at(0, &mut buf), Err(DiskError::Device { .. })));
}

/// The sector of `disk` that holds `first` (a file's first sector).
fn fat_image_sector_of(disk: &[u8], first: &[u8]) -> u64 {
    disk.chunks(SECTOR).position(|s| s == first).expect("the file's first sector") as u64
}

#[test]
fn files_are_read_in_runs_of_sectors() {
    let mut drive = FakeDrive::new(image());
    {
        let disk = Disk::probe(&mut drive, 100_000).expect("a disk");
        let fs = Fs::open(&disk, ahead()).expect("a FAT volume");
        let k = fs.open_file("/boot/vmlinux-6.1-microhv").expect("kernel");
        assert_eq!(read_all(&k), kernel());
    }
    let reads: Vec<u64> = drive
        .commands
        .iter()
        .filter(|c| c.0 == crate::disk::ata::CMD_READ_MULTIPLE)
        .map(|c| c.2)
        .collect();
    // 391 sectors of data in runs of 64 (7 commands), the FAT sectors chaining them, and the
    // MBR, boot sector and directories: not one command per sector.
    assert!(reads.len() < 20, "{} read commands: {reads:?}", reads.len());
    assert!(reads.iter().filter(|&&n| n == 64).count() >= 6, "{reads:?}");
}
