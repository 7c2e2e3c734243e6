//! dom0's disk: a raw image the emulators attach as the primary ATA channel's master
//! (`ata0-master` under Bochs, `-drive if=ide,index=0` under QEMU), with an MBR and one FAT32
//! partition that mtools formats and fills and dom0 reads.
//!
//! `target/microhv/disk.img` is made once and kept: `cargo xtask disk add` puts files on it,
//! `cargo xtask run` attaches it, and what is on it survives every restart of the emulator. A
//! boot test gets a fresh image of its own in its run directory (two emulators must never
//! share one writable image; QEMU even locks it).
//!
//! Layout: 520 cylinders of 16 heads and 63 sectors (524,160 sectors, 255.9 MiB; Bochs derives
//! a flat image's geometry from its size, so the size is a whole number of cylinders), an MBR
//! whose first entry is a FAT32 (LBA) partition from sector 2048 (1 MiB, where partitioning
//! tools put it) to the end, formatted by `mformat` with 2 KiB clusters (130,000 of them: FAT32
//! needs 65,525 at least). The file is sparse: it takes a few MiB on the host until filled.

use anyhow::{Context, Result, bail, ensure};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Heads and sectors per track of the geometry (the usual LBA-translated ones).
const HEADS: u64 = 16;
/// Sectors per track.
const SPT: u64 = 63;
/// Cylinders: 255.9 MiB.
const CYLINDERS: u64 = 520;
/// Sectors of the image.
pub const SECTORS: u64 = CYLINDERS * HEADS * SPT;
/// Bytes of a sector.
const SECTOR: u64 = 512;
/// The partition's first sector.
pub const PARTITION_START: u64 = 2048;
/// MBR partition type: FAT32 with LBA addressing.
const TYPE_FAT32_LBA: u8 = 0x0c;
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

/// The MBR: no boot code, one FAT32 (LBA) partition from [`PARTITION_START`] to the end.
/// The CHS fields say "beyond CHS" (0xFE / 0xFF / 0xFF), as for any partition read by LBA.
pub fn mbr() -> [u8; 512] {
    let mut m = [0u8; 512];
    let e = &mut m[446..462];
    e[0] = 0x00; // not active: the disk is never booted from
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[4] = TYPE_FAT32_LBA;
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&(PARTITION_START as u32).to_le_bytes());
    e[12..16].copy_from_slice(&((SECTORS - PARTITION_START) as u32).to_le_bytes());
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
    let sectors = (SECTORS - PARTITION_START).to_string();
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
        eprintln!("xtask: made dom0's disk {} (FAT32, {} MiB)", img.display(), SECTORS / 2048);
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
        len == SECTORS * SECTOR && mbr[510..] == [0x55, 0xaa] && mbr[446 + 4] == TYPE_FAT32_LBA,
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
    fn the_mbr_has_one_fat32_partition_to_the_end_of_the_disk() {
        let m = mbr();
        assert_eq!(m[510..], [0x55, 0xaa]);
        assert_eq!(m[446 + 4], 0x0c);
        let start = u32::from_le_bytes(m[454..458].try_into().unwrap());
        let len = u32::from_le_bytes(m[458..462].try_into().unwrap());
        assert_eq!(u64::from(start) + u64::from(len), SECTORS);
        assert_eq!(u64::from(start), PARTITION_START);
        // The other three entries are empty, and there is no boot code.
        assert!(m[462..510].iter().all(|&b| b == 0) && m[..446].iter().all(|&b| b == 0));
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
