//! The Linux guest kit: Debian's cloud kernel turned into a PVH ELF, and a busybox initramfs,
//! so an unmodified Linux can boot to a shell as a domU.
//!
//! Everything lives under `target/linux/`: the packages apt fetched (`debs/`), their extracted
//! trees (`root-kernel/`, `root-busybox/`), `vmlinux` and `initramfs.cpio`. Each step is skipped
//! when its output is already there for the same input, so a second run costs a look at apt's
//! lists directory and a rebuild of the small archive in memory.

use crate::{deps, images};
use anyhow::{Context, Result, bail, ensure};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kit's files.
#[derive(Debug, Clone)]
pub struct Kit {
    /// The decompressed kernel: an ELF64 with a Xen PVH entry note.
    pub vmlinux: PathBuf,
    /// An uncompressed `newc` cpio archive with busybox and `tests/linux/init` as `/init`.
    pub initramfs: PathBuf,
    /// The kernel's release, as `uname -r` will print it (e.g. `6.1.0-57-cloud-amd64`).
    pub kernel_version: String,
}

/// The metapackage that always names the current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// A busybox that needs no shared libraries in the initramfs.
const BUSYBOX: &str = "busybox-static";

/// The ELF note type of the 32-bit PVH entry point (Xen's `XEN_ELFNOTE_PHYS32_ENTRY`).
const XEN_ELFNOTE_PHYS32_ENTRY: u64 = 18;

/// Where the kit is built: `target/linux/`.
pub fn dir() -> PathBuf {
    images::root().join("target/linux")
}

/// Fetches (cached under target/linux/), extracts and builds everything; idempotent and fast
/// when cached.
pub fn kit() -> Result<Kit> {
    let dir = dir();
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;

    let [kernel, busybox] = resolve(&debs)?;
    let kernel_deb = fetch(&debs, &kernel)?;
    let busybox_deb = fetch(&debs, &busybox)?;

    let kernel_root = extract(&kernel_deb, &dir.join("root-kernel"))?;
    let busybox_root = extract(&busybox_deb, &dir.join("root-busybox"))?;

    let (vmlinuz, kernel_version) = find_vmlinuz(&kernel_root)?;
    let vmlinux = dir.join("vmlinux");
    make_vmlinux(&vmlinuz, &vmlinux)?;

    let busybox = busybox_root.join("bin/busybox");
    let busybox = fs::read(&busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let init_path = images::root().join("tests/linux/init");
    let init = fs::read(&init_path).with_context(|| format!("reading {}", init_path.display()))?;
    let initramfs = dir.join("initramfs.cpio");
    write_if_changed(&initramfs, &initramfs_archive(&busybox, &init)?)?;

    Ok(Kit { vmlinux, initramfs, kernel_version })
}

/// Prints the kit's files, their sizes, the kernel release, the PVH entry point and what the
/// ABI's ELF parser (`abi::pvh::Image`, whose rules dom0's builder applies too, reading only a
/// file's headers in `dom0-agent/src/image.rs`) makes of the kernel.
pub fn report(kit: &Kit) -> Result<()> {
    let vmlinux = fs::read(&kit.vmlinux)?;
    let entry = pvh_entry(&vmlinux)?;
    println!("kernel:    {}", kit.kernel_version);
    println!("vmlinux:   {} ({} bytes)", kit.vmlinux.display(), vmlinux.len());
    println!("PVH entry: {entry:#x} (Xen note {XEN_ELFNOTE_PHYS32_ENTRY})");
    // Only reported: a kernel the builder cannot load yet is a builder issue, not a kit one.
    match abi::pvh::Image::parse(&vmlinux) {
        Ok(image) => {
            let lo = image.segments.iter().map(|s| s.paddr).min().unwrap_or(0);
            let hi = image.segments.iter().map(|s| s.end()).max().unwrap_or(0);
            let entry = image.pvh().map_or_else(|e| format!("{e:?}"), |e| format!("{e:#x}"));
            println!(
                "loader:    abi::pvh::Image: {} segments at {lo:#x}..{hi:#x}, entry {entry}",
                image.segments.len()
            );
        }
        Err(e) => println!("loader:    abi::pvh::Image rejects it: {e:?}"),
    }
    println!(
        "initramfs: {} ({} bytes)",
        kit.initramfs.display(),
        fs::metadata(&kit.initramfs)?.len()
    );
    Ok(())
}

// ---- Fetching with apt ----

/// What apt would install for a package name.
#[derive(Debug, Default, PartialEq, Eq)]
struct Candidate {
    package: String,
    version: String,
    arch: String,
    depends: String,
    size: u64,
}

/// Parses the first stanza of `apt-cache show` output; fields may continue on indented lines.
fn parse_stanza(text: &str) -> Candidate {
    let mut c = Candidate::default();
    let mut last: Option<&mut String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_deref_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        let (key, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim().to_string();
        last = None;
        match key {
            "Package" => c.package = value,
            "Version" => c.version = value,
            "Architecture" => c.arch = value,
            "Size" => c.size = value.parse().unwrap_or(0),
            "Depends" => {
                c.depends = value;
                last = Some(&mut c.depends);
            }
            _ => {}
        }
    }
    c
}

/// The concrete kernel package a metapackage's `Depends:` names.
fn concrete_kernel(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|d| d.trim().split([' ', '(']).next().unwrap_or("").trim_matches(['<', '>']))
        .find(|name| name.starts_with("linux-image-") && *name != KERNEL_META)
        .map(str::to_string)
}

/// Asks apt's lists (no network) what `pkg` resolves to.
fn show(pkg: &str) -> Result<Option<Candidate>> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", pkg])
        .output()
        .context("running apt-cache (is this a Debian system?)")?;
    let c = parse_stanza(&String::from_utf8_lossy(&out.stdout));
    Ok((out.status.success() && !c.version.is_empty()).then_some(c))
}

/// What apt would fetch for `pkg`, refreshing apt's lists once if they do not know it: as root
/// by itself, otherwise by failing with the command to run.
fn candidate(pkg: &str) -> Result<Candidate> {
    if let Some(c) = show(pkg)? {
        return Ok(c);
    }
    if !deps::is_root() {
        bail!(
            "apt's lists know no package {pkg}; refresh them with:\n    sudo apt-get update\n\
             then run this again"
        );
    }
    eprintln!("xtask: apt-get update (apt's lists know no {pkg})");
    deps::run(Command::new("apt-get").args(["update", "-q"]))?;
    show(pkg)?.with_context(|| format!("apt knows no package {pkg}, even after apt-get update"))
}

/// The concrete kernel package and busybox, as apt resolves them now.
///
/// Each `apt-cache` call parses all of apt's lists, about half a second where the binary cache
/// is disabled (as in Debian's container images), so the answer is kept beside the debs for as
/// long as the lists are unchanged.
fn resolve(debs: &Path) -> Result<[Candidate; 2]> {
    let memo = debs.join("resolved");
    if let Some(key) = lists_fingerprint() {
        let text = fs::read_to_string(&memo).unwrap_or_default();
        if let Some(found) = parse_memo(&text, &key) {
            return Ok(found);
        }
    }
    let meta = candidate(KERNEL_META)?;
    let Some(kernel_pkg) = concrete_kernel(&meta.depends) else {
        bail!(
            "{KERNEL_META} {} depends on no linux-image package: {:?}",
            meta.version,
            meta.depends
        );
    };
    let found = [candidate(&kernel_pkg)?, candidate(BUSYBOX)?];
    // Taken after resolving: `candidate` may have run apt-get update.
    if let Some(key) = lists_fingerprint() {
        let mut text = key + "\n";
        for c in &found {
            text += &format!("{} {} {} {}\n", c.package, c.version, c.arch, c.size);
        }
        fs::write(&memo, text)?;
    }
    Ok(found)
}

/// Names, sizes and times of apt's package lists: changes whenever `apt-get update` changes
/// what apt would fetch. None when they cannot be read, so nothing is remembered.
fn lists_fingerprint() -> Option<String> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut files: Vec<_> = fs::read_dir("/var/lib/apt/lists")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let m = e.metadata().ok().filter(|m| m.is_file() && e.file_name() != "lock")?;
            Some((e.file_name(), m.len(), m.modified().ok()?))
        })
        .collect();
    if files.is_empty() {
        return None;
    }
    files.sort();
    let mut h = DefaultHasher::new();
    files.hash(&mut h);
    Some(format!("lists {:016x}", h.finish()))
}

/// The candidates remembered under `key`, if that is the key they were remembered under.
fn parse_memo(text: &str, key: &str) -> Option<[Candidate; 2]> {
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    let mut one = || {
        let mut f = lines.next()?.split(' ');
        let c = Candidate {
            package: f.next()?.to_string(),
            version: f.next()?.to_string(),
            arch: f.next()?.to_string(),
            size: f.next()?.parse().ok()?,
            depends: String::new(),
        };
        Some(c)
    };
    Some([one()?, one()?])
}

/// The file name `apt-get download` gives a package: the epoch's colon is percent-encoded.
fn deb_name(c: &Candidate) -> String {
    format!("{}_{}_{}.deb", c.package, c.version.replace(':', "%3a"), c.arch)
}

/// Downloads the candidate into `debs` unless a complete copy is there already.
fn fetch(debs: &Path, c: &Candidate) -> Result<PathBuf> {
    let path = debs.join(deb_name(c));
    // An interrupted download can leave a truncated file under the final name.
    let complete = |p: &Path| fs::metadata(p).is_ok_and(|m| c.size == 0 || m.len() == c.size);
    if complete(&path) {
        return Ok(path);
    }
    let _ = fs::remove_file(&path);
    eprintln!("xtask: downloading {} {}", c.package, c.version);
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(debs).args(["download", "-q"]);
    if deps::is_root() {
        // apt's `_apt` sandbox user cannot write into target/, so apt downloads as root anyway
        // and warns about it; saying so up front keeps the warning out of the output.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    deps::run(cmd.arg(format!("{}={}", c.package, c.version)))?;
    ensure!(
        complete(&path),
        "apt-get download left no complete {} ({} bytes expected)",
        path.display(),
        c.size
    );
    Ok(path)
}

/// Extracts a package into `root` with `dpkg-deb -x`, unless `root` already holds this one.
fn extract(deb: &Path, root: &Path) -> Result<PathBuf> {
    let stamp = root.join(".microhv-source");
    let source = deb.file_name().unwrap_or_default().to_string_lossy().into_owned();
    if fs::read_to_string(&stamp).is_ok_and(|s| s == source) {
        return Ok(root.to_path_buf());
    }
    eprintln!("xtask: extracting {source}");
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::create_dir_all(root)?;
    deps::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))?;
    // Written last, so an interrupted extraction is redone.
    fs::write(&stamp, source)?;
    Ok(root.to_path_buf())
}

/// The one `boot/vmlinuz-*` of an extracted kernel package, and its release.
fn find_vmlinuz(root: &Path) -> Result<(PathBuf, String)> {
    let boot = root.join("boot");
    let mut found = Vec::new();
    for e in fs::read_dir(&boot).with_context(|| format!("reading {}", boot.display()))? {
        let e = e?;
        if let Some(v) = e.file_name().to_str().and_then(|n| n.strip_prefix("vmlinuz-")) {
            found.push((e.path(), v.to_string()));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => bail!("expected one vmlinuz-* in {}, found {n}", boot.display()),
    }
}

/// Writes `data` to `path` unless the file already holds exactly that.
fn write_if_changed(path: &Path, data: &[u8]) -> Result<()> {
    if fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    write_atomic(path, data)
}

/// Writes through a temporary file, so a reader never sees half a file under the final name.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

// ---- bzImage to PVH ELF ----

/// Decompresses `vmlinuz` into `out` unless `out` was already made from this very file.
fn make_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let meta = fs::metadata(vmlinuz)?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let source =
        format!("{} {} {}", vmlinuz.display(), meta.len(), mtime.unwrap_or_default().as_nanos());
    let stamp = out.with_extension("source");
    if out.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == source) {
        return Ok(());
    }
    eprintln!("xtask: decompressing {}", vmlinuz.display());
    let bz = fs::read(vmlinuz)?;
    let elf = decompress(bzimage_payload(&bz)?)
        .with_context(|| format!("decompressing the payload of {}", vmlinuz.display()))?;
    pvh_entry(&elf).with_context(|| format!("the kernel of {}", vmlinuz.display()))?;
    write_atomic(out, &elf)?;
    fs::write(&stamp, source)?;
    Ok(())
}

fn le16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

fn le32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// The compressed kernel inside a bzImage, located by the x86 boot protocol's setup header.
fn bzimage_payload(bz: &[u8]) -> Result<&[u8]> {
    ensure!(le32(bz, 0x202) == Some(u32::from_le_bytes(*b"HdrS")), "not a bzImage (no HdrS)");
    let version = le16(bz, 0x206).unwrap_or(0);
    // payload_offset and payload_length arrived with boot protocol 2.08.
    ensure!(version >= 0x208, "boot protocol {version:#x} has no payload fields (2.08+)");
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let offset = le32(bz, 0x248).context("short setup header")? as usize;
    let length = le32(bz, 0x24c).context("short setup header")? as usize;
    let start = pm_start + offset;
    bz.get(start..start + length).with_context(|| {
        format!(
            "payload {offset:#x}+{length:#x} past the end of the {:#x}-byte protected-mode part",
            bz.len().saturating_sub(pm_start)
        )
    })
}

/// The compressions a bzImage payload may use, by their leading bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Lz4Legacy,
    Gzip,
    Xz,
    Uncompressed,
    /// Recognised, not supported: its name.
    Other(&'static str),
}

fn codec(payload: &[u8]) -> Option<Codec> {
    const MAGICS: &[(&[u8], Codec)] = &[
        (&[0x02, 0x21, 0x4c, 0x18], Codec::Lz4Legacy),
        (&[0x1f, 0x8b], Codec::Gzip),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], Codec::Xz),
        (b"\x7fELF", Codec::Uncompressed),
        (b"BZh", Codec::Other("bzip2")),
        (&[0x5d, 0, 0], Codec::Other("lzma")),
        (&[0x89, b'L', b'Z', b'O'], Codec::Other("lzo")),
        (&[0x28, 0xb5, 0x2f, 0xfd], Codec::Other("zstd")),
    ];
    MAGICS.iter().find(|(m, _)| payload.starts_with(m)).map(|&(_, c)| c)
}

/// Decompresses a bzImage payload; trailing bytes after the stream (the kernel build appends
/// the uncompressed size) are ignored.
fn decompress(payload: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match codec(payload) {
        Some(Codec::Lz4Legacy) => return lz4_legacy(payload),
        Some(Codec::Gzip) => {
            flate2::read::GzDecoder::new(payload).read_to_end(&mut out)?;
        }
        Some(Codec::Xz) => {
            lzma_rust2::XzReader::new(payload, false).read_to_end(&mut out)?;
        }
        Some(Codec::Uncompressed) => out.extend_from_slice(payload),
        Some(Codec::Other(name)) => bail!("{name}-compressed kernels are not supported"),
        None => {
            bail!("unknown compression (leading bytes {:02x?})", &payload[..payload.len().min(8)])
        }
    }
    Ok(out)
}

const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Every block of the legacy frame decompresses to at most this.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// LZ4_compressBound of a full block: a larger size word cannot be a block.
const LZ4_LEGACY_MAX_COMPRESSED: usize = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;

/// Reads an LZ4 legacy frame: the magic, then `[u32 LE size][block]...`. Like the kernel's own
/// decompressor, it skips a repeated magic (concatenated frames) and stops at a size word that
/// cannot start a block, or at the end.
fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>> {
    ensure!(le32(data, 0) == Some(LZ4_LEGACY_MAGIC), "no LZ4 legacy magic");
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut pos = 4;
    while let Some(size) = le32(data, pos) {
        if size == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let size = size as usize;
        if size == 0 || size > LZ4_LEGACY_MAX_COMPRESSED {
            break;
        }
        let Some(src) = data.get(pos + 4..pos + 4 + size) else { break };
        let n = lz4_flex::block::decompress_into(src, &mut block)
            .map_err(|e| anyhow::anyhow!("LZ4 block at offset {pos:#x}: {e}"))?;
        out.extend_from_slice(&block[..n]);
        pos += 4 + size;
    }
    ensure!(!out.is_empty(), "the LZ4 legacy frame holds no block");
    Ok(out)
}

/// The 32-bit PVH entry point of a kernel ELF: the desc of its Xen `PHYS32_ENTRY` note.
pub fn pvh_entry(elf_data: &[u8]) -> Result<u64> {
    use elf::{ElfBytes, abi, endian::LittleEndian, file::Class, note::Note};
    let file = ElfBytes::<LittleEndian>::minimal_parse(elf_data).context("not an ELF file")?;
    ensure!(file.ehdr.class == Class::ELF64, "not an ELF64 file");
    ensure!(file.ehdr.e_machine == abi::EM_X86_64, "not an x86-64 ELF");
    let segments = file.segments().context("no program headers")?;
    for ph in segments.iter().filter(|p| p.p_type == abi::PT_NOTE) {
        for note in file.segment_data_as_notes(&ph)? {
            let Note::Unknown(n) = note else { continue };
            if n.n_type != XEN_ELFNOTE_PHYS32_ENTRY || n.name_str().ok() != Some("Xen") {
                continue;
            }
            // Linux writes it with _ASM_PTR: 8 bytes on x86-64; Xen's own tools also accept 4.
            return match *n.desc {
                [a, b, c, d] => Ok(u32::from_le_bytes([a, b, c, d]).into()),
                [a, b, c, d, e, f, g, h] => Ok(u64::from_le_bytes([a, b, c, d, e, f, g, h])),
                _ => bail!("Xen PHYS32_ENTRY note of {} bytes", n.desc.len()),
            };
        }
    }
    bail!("no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) in any PT_NOTE segment")
}

// ---- The initramfs ----

/// Busybox applets the init script runs, linked in the archive itself: they must work before
/// `busybox --install` and even if it fails.
const APPLETS: &[&str] = &[
    "bin/sh",
    "bin/mount",
    "bin/uname",
    "bin/cat",
    "bin/sleep",
    "bin/date",
    "bin/echo",
    "bin/grep",
    "bin/head",
    "bin/ls",
    "bin/free",
    "sbin/poweroff",
];

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// One member of a cpio archive.
struct Member<'a> {
    name: &'a str,
    /// Type and permission bits.
    mode: u32,
    /// File contents, or a symlink's target.
    data: &'a [u8],
    /// A device node's major and minor.
    rdev: (u32, u32),
}

impl<'a> Member<'a> {
    fn dir(name: &'a str, perm: u32) -> Self {
        Member { name, mode: S_IFDIR | perm, data: &[], rdev: (0, 0) }
    }
    fn file(name: &'a str, perm: u32, data: &'a [u8]) -> Self {
        Member { name, mode: S_IFREG | perm, data, rdev: (0, 0) }
    }
    fn symlink(name: &'a str, target: &'a str) -> Self {
        Member { name, mode: S_IFLNK | 0o777, data: target.as_bytes(), rdev: (0, 0) }
    }
    fn char_dev(name: &'a str, perm: u32, major: u32, minor: u32) -> Self {
        Member { name, mode: S_IFCHR | perm, data: &[], rdev: (major, minor) }
    }
}

/// An uncompressed `newc` archive of `members` (in order, so parents come first), with every
/// mtime 0 so the same inputs give the same bytes.
fn cpio(members: &[Member]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (ino, m) in (1..).zip(members) {
        let size = u32::try_from(m.data.len()).context("member over 4 GiB")?;
        let mut w = cpio::newc::Builder::new(m.name)
            .ino(ino)
            .mode(m.mode)
            .nlink(if m.mode & S_IFMT == S_IFDIR { 2 } else { 1 })
            .rdev_major(m.rdev.0)
            .rdev_minor(m.rdev.1)
            .write(&mut out, size);
        w.write_all(m.data)?;
        w.finish()?;
    }
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

/// The initramfs: the directories a shell expects, busybox and its applets, the console
/// devices (the kernel opens /dev/console for init before any devtmpfs exists) and `init`.
fn initramfs_archive(busybox: &[u8], init: &[u8]) -> Result<Vec<u8>> {
    let mut members = vec![];
    for d in ["bin", "sbin", "dev", "proc", "sys", "etc", "usr", "usr/bin", "usr/sbin"] {
        members.push(Member::dir(d, 0o755));
    }
    members.push(Member::dir("tmp", 0o1777));
    members.push(Member::dir("root", 0o700));
    members.push(Member::file("bin/busybox", 0o755, busybox));
    for a in APPLETS {
        members.push(Member::symlink(a, "/bin/busybox"));
    }
    members.push(Member::char_dev("dev/console", 0o600, 5, 1));
    members.push(Member::char_dev("dev/ttyS0", 0o660, 4, 64));
    members.push(Member::char_dev("dev/null", 0o666, 1, 3));
    members.push(Member::file("init", 0o755, init));
    cpio(&members)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parsed `newc` member: name, mode, rdev, data.
    #[derive(Debug)]
    struct Parsed {
        name: String,
        mode: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// Parses a `newc` archive independently of the writer, checking the alignment rules.
    fn parse_newc(a: &[u8]) -> Vec<Parsed> {
        let mut out = vec![];
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "header at {pos:#x} not 4-aligned");
            assert_eq!(&a[pos..pos + 6], b"070701", "magic at {pos:#x}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&a[pos + 6 + 8 * i..pos + 14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let rdev = (field(9), field(10));
            let name_at = pos + 110;
            assert_eq!(a[name_at + namesize - 1], 0, "name not NUL-terminated");
            let name = String::from_utf8(a[name_at..name_at + namesize - 1].to_vec()).unwrap();
            let data_at = (name_at + namesize).next_multiple_of(4);
            assert!(a[name_at + namesize..data_at].iter().all(|&b| b == 0), "name padding");
            let data = a[data_at..data_at + size].to_vec();
            pos = (data_at + size).next_multiple_of(4);
            assert!(a[data_at + size..pos].iter().all(|&b| b == 0), "data padding");
            if name == "TRAILER!!!" {
                assert_eq!(pos, a.len(), "bytes after the trailer");
                return out;
            }
            out.push(Parsed { name, mode, rdev, data });
        }
    }

    #[test]
    fn cpio_members_round_trip() {
        // Names of every length modulo 4, and data lengths that need 0-3 bytes of padding.
        let members = [
            Member::dir("d", 0o755),
            Member::file("d/ab", 0o644, b"x"),
            Member::file("d/abc", 0o755, b"hello"),
            Member::file("d/abcd", 0o600, b""),
            Member::symlink("d/l", "/bin/busybox"),
            Member::char_dev("dev/ttyS0", 0o660, 4, 64),
        ];
        let a = cpio(&members).unwrap();
        let parsed = parse_newc(&a);
        assert_eq!(parsed.len(), members.len());
        for (p, m) in parsed.iter().zip(&members) {
            assert_eq!(p.name, m.name);
            assert_eq!(p.mode, m.mode);
            assert_eq!(p.data, m.data);
            assert_eq!(p.rdev, m.rdev);
        }
    }

    #[test]
    fn initramfs_has_what_init_needs() {
        let a = initramfs_archive(b"\x7fELF busybox", b"#!/bin/sh\necho hi\n").unwrap();
        let parsed = parse_newc(&a);
        let get = |n: &str| parsed.iter().find(|p| p.name == n).unwrap_or_else(|| panic!("{n}"));
        assert_eq!(get("init").mode, S_IFREG | 0o755);
        assert_eq!(get("init").data, b"#!/bin/sh\necho hi\n");
        assert_eq!(get("bin/busybox").mode, S_IFREG | 0o755);
        assert_eq!(get("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(get("sbin/poweroff").data, b"/bin/busybox");
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("dev/console").mode & S_IFMT, S_IFCHR);
        assert_eq!(get("dev/ttyS0").rdev, (4, 64));
        assert_eq!(get("dev/null").rdev, (1, 3));
        assert_eq!(get("tmp").mode, S_IFDIR | 0o1777);
        for d in ["bin", "sbin", "dev", "proc", "sys", "etc", "root"] {
            assert_eq!(get(d).mode & S_IFMT, S_IFDIR, "{d}");
        }
        // Parents before children, as the kernel's unpacker creates them in order.
        let at = |n: &str| parsed.iter().position(|p| p.name == n).unwrap();
        assert!(at("bin") < at("bin/busybox") && at("dev") < at("dev/console"));
        assert_eq!(a, initramfs_archive(b"\x7fELF busybox", b"#!/bin/sh\necho hi\n").unwrap());
    }

    /// An LZ4 legacy stream of `data` in blocks of `block` bytes, then `trailer`.
    fn lz4_stream(data: &[u8], block: usize, trailer: &[u8]) -> Vec<u8> {
        let mut s = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(block) {
            let c = lz4_flex::block::compress(chunk);
            s.extend_from_slice(&(c.len() as u32).to_le_bytes());
            s.extend_from_slice(&c);
        }
        s.extend_from_slice(trailer);
        s
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 7 / 13) ^ (i >> 9)) as u8).collect()
    }

    #[test]
    fn lz4_legacy_blocks_and_trailing_size() {
        let data = sample(300_000);
        let size = (data.len() as u32).to_le_bytes();
        // Several blocks, then the size word the kernel build appends.
        assert_eq!(lz4_legacy(&lz4_stream(&data, 100_000, &size)).unwrap(), data);
        // No trailer at all, and a block size word cut short.
        assert_eq!(lz4_legacy(&lz4_stream(&data, 65_536, &[])).unwrap(), data);
        assert_eq!(lz4_legacy(&lz4_stream(&data, 65_536, &[1, 0])).unwrap(), data);
        // A size word that fits in the stream's remaining bytes is not mistaken for a block:
        // 4 trailing bytes holding a small value run past the end.
        assert_eq!(lz4_legacy(&lz4_stream(&data, 65_536, &16u32.to_le_bytes())).unwrap(), data);
        // Concatenated frames: the magic again between blocks.
        let mut two = lz4_stream(&data[..1000], 1000, &[]);
        two.extend_from_slice(&lz4_stream(&data[1000..2000], 1000, &[]));
        assert_eq!(lz4_legacy(&two).unwrap(), &data[..2000]);
        // A corrupt block is an error, not a silently short kernel.
        let mut bad = lz4_stream(&data, 100_000, &size);
        bad[8..40].fill(0xff);
        assert!(lz4_legacy(&bad).is_err());
        assert!(lz4_legacy(b"\x02\x21\x4c\x18").is_err());
        assert!(lz4_legacy(b"\x1f\x8b\x08\x00").is_err());
    }

    /// A minimal x86-64 ELF with one PT_NOTE segment holding the Xen PVH entry note.
    fn pvh_elf(entry: u64) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // ELFCLASS64
        e[5] = 1; // little-endian
        e[6] = 1; // EV_CURRENT
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        e[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        e[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let mut note = vec![];
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&8u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&entry.to_le_bytes());
        let ph = &mut e[64..];
        ph[..4].copy_from_slice(&elf::abi::PT_NOTE.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        ph[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes()); // p_filesz
        ph[40..48].copy_from_slice(&(note.len() as u64).to_le_bytes()); // p_memsz
        ph[48..56].copy_from_slice(&4u64.to_le_bytes()); // p_align
        e.extend_from_slice(&note);
        e
    }

    /// A bzImage with `setup_sects` setup sectors around `payload`, laid out as the kernel build
    /// does: some decompressor code, the payload, more code after it.
    fn bzimage(setup_sects: u8, payload: &[u8]) -> Vec<u8> {
        let real = if setup_sects == 0 { 4 } else { setup_sects as usize };
        let mut bz = vec![0u8; (real + 1) * 512];
        bz[0x1f1] = setup_sects;
        bz[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&0x123u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(&[0xcc; 0x123]);
        bz.extend_from_slice(payload);
        bz.extend_from_slice(&[0xcc; 0x200]);
        bz
    }

    #[test]
    fn bzimage_lz4_to_pvh_elf() {
        let mut kernel = pvh_elf(0x100_0000 + 0x1234);
        kernel.extend_from_slice(&sample(200_000));
        let payload = lz4_stream(&kernel, 64 * 1024, &(kernel.len() as u32).to_le_bytes());
        for setup_sects in [0, 3, 0x27] {
            let bz = bzimage(setup_sects, &payload);
            let p = bzimage_payload(&bz).unwrap();
            assert_eq!(p, &payload[..], "setup_sects {setup_sects}");
            assert_eq!(codec(p), Some(Codec::Lz4Legacy));
            let elf = decompress(p).unwrap();
            assert_eq!(elf, kernel);
            assert_eq!(pvh_entry(&elf).unwrap(), 0x100_1234);
        }
    }

    #[test]
    fn bzimage_header_errors() {
        let payload = lz4_stream(&pvh_elf(1), 4096, &[]);
        let mut bz = bzimage(2, &payload);
        bz.truncate(bz.len() - 0x200 - 1);
        assert!(bzimage_payload(&bz).is_err(), "payload past the end");
        let mut bz = bzimage(2, &payload);
        bz[0x206] = 0x06;
        assert!(bzimage_payload(&bz).is_err(), "protocol 2.06");
        let mut bz = bzimage(2, &payload);
        bz[0x202] = b'X';
        assert!(bzimage_payload(&bz).is_err(), "no HdrS");
        assert!(bzimage_payload(&[0; 16]).is_err());
    }

    #[test]
    fn gzip_and_xz_payloads() {
        let kernel = [pvh_elf(0x1_0000_0000).as_slice(), &sample(50_000)].concat();
        let trailer = (kernel.len() as u32).to_le_bytes();

        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
        gz.write_all(&kernel).unwrap();
        let gz = [gz.finish().unwrap().as_slice(), &trailer].concat();
        assert_eq!(codec(&gz), Some(Codec::Gzip));
        assert_eq!(decompress(&gz).unwrap(), kernel);

        // As the kernel build makes it: CRC32 check and the x86 BCJ filter.
        let mut opts = lzma_rust2::XzOptions::with_preset(1);
        opts.set_check_sum_type(lzma_rust2::CheckType::Crc32);
        opts.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
        let mut xz = lzma_rust2::XzWriter::new(vec![], opts).unwrap();
        xz.write_all(&kernel).unwrap();
        let xz = [xz.finish().unwrap().as_slice(), &trailer].concat();
        assert_eq!(codec(&xz), Some(Codec::Xz));
        assert_eq!(decompress(&xz).unwrap(), kernel);
        assert_eq!(pvh_entry(&decompress(&xz).unwrap()).unwrap(), 0x1_0000_0000);

        assert!(decompress(b"\x28\xb5\x2f\xfd....").unwrap_err().to_string().contains("zstd"));
        assert!(decompress(b"????").is_err());
    }

    #[test]
    fn pvh_entry_needs_the_note() {
        let mut e = pvh_elf(0x1000);
        assert_eq!(pvh_entry(&e).unwrap(), 0x1000);
        // Another owner's note of the same type is not the entry.
        let at = e.len() - 12;
        e[at..at + 3].copy_from_slice(b"Xem");
        assert!(pvh_entry(&e).is_err());
        assert!(pvh_entry(b"\x7fELF").is_err());
    }

    #[test]
    fn apt_fields() {
        let text = "Package: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.192+3)\n\
                    Version: 6.1.192-3\nArchitecture: amd64\nSize: 1476\n\
                    Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)\n\
                    Description: Linux for x86-64 cloud (meta-package)\n\n\
                    Package: other\nVersion: 9\n";
        let c = parse_stanza(text);
        assert_eq!(c.package, "linux-image-cloud-amd64");
        assert_eq!((c.version.as_str(), c.arch.as_str(), c.size), ("6.1.192-3", "amd64", 1476));
        assert_eq!(
            concrete_kernel(&c.depends).as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        let wrapped = parse_stanza("Version: 1\nDepends: foo,\n linux-image-6.12.9-cloud-amd64\n");
        assert_eq!(
            concrete_kernel(&wrapped.depends).as_deref(),
            Some("linux-image-6.12.9-cloud-amd64")
        );
        assert_eq!(concrete_kernel("initramfs-tools | linux-initramfs-tool"), None);
        let bb = Candidate {
            package: "busybox-static".into(),
            version: "1:1.35.0-4+deb12u1+b1".into(),
            arch: "amd64".into(),
            ..Candidate::default()
        };
        assert_eq!(deb_name(&bb), "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb");

        let memo = "lists 1\nlinux-image-6.1.0-57-cloud-amd64 6.1.192-3 amd64 26705532\n\
                    busybox-static 1:1.35.0-4+deb12u1+b1 amd64 928188\n";
        let [k, b] = parse_memo(memo, "lists 1").unwrap();
        assert_eq!((k.package.as_str(), k.size), ("linux-image-6.1.0-57-cloud-amd64", 26705532));
        assert_eq!(deb_name(&b), deb_name(&bb));
        assert!(parse_memo(memo, "lists 2").is_none(), "lists changed");
        assert!(parse_memo("lists 1\nbusybox-static 1 amd64\n", "lists 1").is_none());
    }
}
