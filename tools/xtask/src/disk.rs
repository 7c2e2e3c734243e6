//! dom0's disk: a raw image the emulators attach as the primary ATA channel's master
//! (`ata0-master` under Bochs, `-drive if=ide,index=0` under QEMU), with an MBR and one FAT32
//! partition that mtools formats and fills and dom0 reads.
//!
//! `target/microhv/disk.img` is made once and kept: `cargo xtask disk add` puts files on it,
//! `cargo xtask run` attaches it, and what is on it survives every restart of the emulator. A
//! boot test gets a fresh image of its own in its run directory (two emulators must never
//! share one writable image; QEMU even locks it).
//!
//! Layout: 1040 cylinders of 16 heads and 63 sectors (1,048,320 sectors, 511.9 MiB; Bochs
//! derives a flat image's geometry from its size, so the size is a whole number of cylinders),
//! an MBR with two entries: a FAT32 (LBA) partition from sector 2048 (1 MiB, where partitioning
//! tools put it) to sector 524,160, formatted by `mformat` with 2 KiB clusters (130,000 of
//! them: FAT32 needs 65,525 at least), and from there to the end (256 MiB) a partition of type
//! 0xDA ("non-FS data"), all zeros, where dom0 keeps the domUs' virtual disks (`dom0-agent/src/
//! vbd/pool.rs`). The file is sparse: it takes a few MiB on the host until filled.

use anyhow::{Context, Result, bail, ensure};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Heads and sectors per track of the geometry (the usual LBA-translated ones).
const HEADS: u64 = 16;
/// Sectors per track.
const SPT: u64 = 63;
/// Cylinders: 511.9 MiB.
const CYLINDERS: u64 = 1040;
/// Sectors of the image.
pub const SECTORS: u64 = CYLINDERS * HEADS * SPT;
/// The first sector of the virtual disks' partition (the FAT32 partition's end): half-way.
pub const POOL_START: u64 = SECTORS / 2;
/// Bytes of a sector.
const SECTOR: u64 = 512;
/// The partition's first sector.
pub const PARTITION_START: u64 = 2048;
/// MBR partition type: FAT32 with LBA addressing.
const TYPE_FAT32_LBA: u8 = 0x0c;
/// MBR partition type of the virtual disks' region: "non-FS data".
const TYPE_POOL: u8 = 0xda;
/// The volume label mformat gives it.
const LABEL: &str = "MICROHV";

/// The kept image: `target/microhv/disk.img`.
pub fn path() -> PathBuf {
    crate::images::out_dir().join("disk.img")
}

/// How mtools names the partition of `img`: the file and the partition's byte offset.
fn mtools_image(img: &Path) -> String {
    format!("{}@@{}", img.display(), PARTITION_START * SECTOR)
}

/// Runs an mtools command on the partition of `img`; its standard output.
fn mtools(tool: &str, img: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(tool)
        .arg("-i")
        .arg(mtools_image(img))
        .args(args)
        // mtools checks the FAT's geometry against a floppy's without this.
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .with_context(|| format!("running {tool} (package mtools)"))?;
    if !out.status.success() {
        bail!("{tool} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The MBR: no boot code, a FAT32 (LBA) partition from [`PARTITION_START`] to
/// [`POOL_START`], the virtual disks' partition from there to the end. The CHS fields say
/// "beyond CHS" (0xFE / 0xFF / 0xFF), as for any partition read by LBA.
pub fn mbr() -> [u8; 512] {
    let mut m = [0u8; 512];
    let parts = [(TYPE_FAT32_LBA, PARTITION_START, POOL_START), (TYPE_POOL, POOL_START, SECTORS)];
    for (i, (kind, start, end)) in parts.into_iter().enumerate() {
        let e = &mut m[446 + 16 * i..462 + 16 * i];
        e[0] = 0x00; // not active: the disk is never booted from
        e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
        e[4] = kind;
        e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
        e[12..16].copy_from_slice(&((end - start) as u32).to_le_bytes());
    }
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

/// Makes a fresh, empty disk image at `img` (replacing any file there).
pub fn create(img: &Path) -> Result<()> {
    crate::deps::ensure(&[DEPS])?;
    if let Some(dir) = img.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f =
        std::fs::File::create(img).with_context(|| format!("creating {}", img.display()))?;
    f.set_len(SECTORS * SECTOR)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&mbr())?;
    drop(f);
    let sectors = (POOL_START - PARTITION_START).to_string();
    let hidden = PARTITION_START.to_string();
    let (heads, spt) = (HEADS.to_string(), SPT.to_string());
    mtools(
        "mformat",
        img,
        &["-F", "-T", &sectors, "-H", &hidden, "-h", &heads, "-s", &spt, "-v", LABEL, "::"],
    )?;
    Ok(())
}

/// The kept image, made if it is not there yet.
pub fn kept() -> Result<PathBuf> {
    let img = path();
    if !img.exists() {
        create(&img)?;
        eprintln!(
            "xtask: made dom0's disk {} (FAT32 {} MiB, virtual disks {} MiB)",
            img.display(),
            (POOL_START - PARTITION_START) / 2048,
            (SECTORS - POOL_START) / 2048
        );
    }
    check(&img)?;
    Ok(img)
}

/// Refuses an image that is not one of ours (another size, no MBR): an emulator would attach
/// it all the same, and dom0 would say only "no file system".
fn check(img: &Path) -> Result<()> {
    let len = std::fs::metadata(img)?.len();
    let mut mbr = [0u8; 512];
    std::io::Read::read_exact(&mut std::fs::File::open(img)?, &mut mbr)?;
    ensure!(
        len == SECTORS * SECTOR
            && mbr[510..] == [0x55, 0xaa]
            && mbr[446 + 4] == TYPE_FAT32_LBA
            && mbr[462 + 4] == TYPE_POOL,
        "{} is not a disk image made by `cargo xtask disk` ({len} bytes); remove it to get a new one",
        img.display()
    );
    Ok(())
}

/// Debian packages the disk commands need.
pub const DEPS: &[&str] = &["mtools"];

/// A path on the disk: absolute, `/`-separated, no empty names.
fn disk_path(p: &str) -> Result<String> {
    ensure!(p.starts_with('/'), "{p:?}: a path on dom0's disk starts with /");
    let names: Vec<&str> = p.split('/').filter(|n| !n.is_empty()).collect();
    ensure!(!names.is_empty(), "{p:?}: names no file");
    ensure!(names.iter().all(|n| *n != "." && *n != ".."), "{p:?}: no . or .. here");
    Ok(format!("/{}", names.join("/")))
}

/// True if `dir` (absolute) exists on the disk as a directory.
fn is_dir(img: &Path, dir: &str) -> bool {
    // `mdir -b` of a directory lists its entries with the directory's path as prefix; of a
    // file, the file itself.
    mtools("mdir", img, &["-b", &format!("::{dir}")])
        .is_ok_and(|out| out.lines().all(|l| l.starts_with(&format!("::{dir}/"))))
}

/// Copies the host file `file` onto the disk at `to` (default: `/` and its file name),
/// making the directories above it; replaces a file already there. Returns the disk path.
pub fn add(img: &Path, file: &Path, to: Option<&str>) -> Result<String> {
    ensure!(file.is_file(), "{}: not a file", file.display());
    let to = match to {
        Some(p) => disk_path(p)?,
        None => {
            let name = file.file_name().context("the file has no name")?.to_string_lossy();
            disk_path(&format!("/{name}"))?
        }
    };
    let parts: Vec<&str> = to.split('/').filter(|n| !n.is_empty()).collect();
    let mut dir = String::new();
    for name in &parts[..parts.len() - 1] {
        dir = format!("{dir}/{name}");
        if !is_dir(img, &dir) {
            mtools("mmd", img, &[&format!("::{dir}")])?;
        }
    }
    let file_arg = file.to_string_lossy();
    mtools("mcopy", img, &["-o", &file_arg, &format!("::{to}")])?;
    Ok(to)
}

/// Removes a file (or a directory and everything in it) from the disk.
pub fn remove(img: &Path, what: &str) -> Result<()> {
    let what = disk_path(what)?;
    if is_dir(img, &what) {
        mtools("mdeltree", img, &[&format!("::{what}")])?;
    } else {
        mtools("mdel", img, &[&format!("::{what}")])?;
    }
    Ok(())
}

/// The listing of a directory of the disk, as mtools prints it.
pub fn list(img: &Path, dir: &str) -> Result<String> {
    let dir = if dir == "/" { "/".to_string() } else { disk_path(dir)? };
    mtools("mdir", img, &["-a", &format!("::{dir}")])
}

/// Makes a fresh image at `img` with `files` (host file, disk path) on it: a boot test's
/// own disk.
pub fn with_files(img: &Path, files: &[(&Path, &str)]) -> Result<()> {
    create(img)?;
    for (file, to) in files {
        add(img, file, Some(to))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mbr_has_a_fat32_partition_then_the_virtual_disks_to_the_end() {
        let m = mbr();
        assert_eq!(m[510..], [0x55, 0xaa]);
        let field = |at: usize| u64::from(u32::from_le_bytes(m[at..at + 4].try_into().unwrap()));
        assert_eq!((m[446 + 4], field(454), field(458)), (0x0c, PARTITION_START, 522_112));
        assert_eq!((m[462 + 4], field(470), field(474)), (0xda, POOL_START, 524_160));
        assert_eq!(field(470) + field(474), SECTORS);
        // The other two entries are empty, and there is no boot code.
        assert!(m[478..510].iter().all(|&b| b == 0) && m[..446].iter().all(|&b| b == 0));
        // A whole number of cylinders, as Bochs derives the geometry from the size.
        assert_eq!(SECTORS % (HEADS * SPT), 0);
    }

    #[test]
    fn disk_paths_are_absolute_and_tidy() {
        assert_eq!(disk_path("/boot//vmlinux").unwrap(), "/boot/vmlinux");
        assert_eq!(disk_path("/a/").unwrap(), "/a");
        assert!(disk_path("boot/vmlinux").is_err());
        assert!(disk_path("/").is_err());
        assert!(disk_path("/a/../b").is_err());
    }
}
