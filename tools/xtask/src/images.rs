//! Building the freestanding images and the bootable ISO.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap_or_default()
}

/// Where runs keep their files: `target/microhv/`.
pub fn out_dir() -> PathBuf {
    root().join("target/microhv")
}

/// The well-known place of dom0's control socket while `cargo xtask run` runs: `hvctl`
/// looks here by default (`target/microhv/run/dom0.sock`).
pub fn control_socket() -> PathBuf {
    out_dir().join("run/dom0.sock")
}

/// The built images.
#[derive(Debug, Clone)]
pub struct Images {
    /// microhv itself.
    pub microhv: PathBuf,
    /// dom0.
    pub dom0: PathBuf,
    /// Where every image is.
    pub dir: PathBuf,
}

impl Images {
    /// The address of the first symbol of microhv's image whose name contains `part` (0 if
    /// none): the hostile scenario aims its attacks at microhv's real addresses.
    pub fn microhv_symbol(&self, part: &str) -> u64 {
        let Ok(data) = std::fs::read(&self.microhv) else { return 0 };
        let Ok(file) = elf::ElfBytes::<elf::endian::LittleEndian>::minimal_parse(&data) else {
            return 0;
        };
        let Ok(Some((syms, names))) = file.symbol_table() else { return 0 };
        syms.iter()
            .find(|s| names.get(s.st_name as usize).is_ok_and(|n| n.contains(part)))
            .map_or(0, |s| s.st_value)
    }

    /// A test guest's image.
    pub fn guest(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Freestanding packages: microhv, dom0, the PVH test guests, the multiboot test kernel, the
/// conformance kernels.
pub const PACKAGES: &[&str] = &["microhv", "dom0-agent", "test-guests", "mbkernel", "conformance"];

/// Target directory of the images, apart from the host builds (see `rt::build`).
pub fn image_target_dir() -> PathBuf {
    root().join("target/image")
}

/// Builds every freestanding image (release profile, `cfg(image)`), each package in its own
/// cargo invocation so no feature a host crate activates leaks into them.
pub fn build() -> Result<Images> {
    for p in PACKAGES {
        let status = Command::new(env!("CARGO"))
            .current_dir(root())
            .env("MICROHV_IMAGE", "1")
            .env("CARGO_TARGET_DIR", image_target_dir())
            .args(["build", "--release", "--quiet", "-p", p])
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("building {p} failed");
        }
    }
    let rel = image_target_dir().join("release");
    Ok(Images { microhv: rel.join("microhv"), dom0: rel.join("dom0-agent"), dir: rel })
}

/// A boot module: an image and its command line (whose first word names it).
#[derive(Debug, Clone)]
pub struct Module {
    /// The file.
    pub path: PathBuf,
    /// Its command line, without the name.
    pub args: String,
}

impl Module {
    /// The name the module gets: its file name.
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// Makes a GRUB (multiboot2) ISO in `dir/microhv.iso` booting microhv with `cmdline` and the
/// modules.
pub fn make_iso(dir: &Path, images: &Images, cmdline: &str, modules: &[Module]) -> Result<PathBuf> {
    let stage = dir.join("iso");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("boot/grub"))?;
    std::fs::copy(&images.microhv, stage.join("boot/microhv"))?;
    let mut cfg = String::from("set timeout=0\nset default=0\nmenuentry \"microhv\" {\n");
    cfg += &format!("  multiboot2 /boot/microhv {cmdline}\n");
    for m in modules {
        let name = m.name();
        std::fs::copy(&m.path, stage.join("boot").join(&name))
            .with_context(|| format!("copying {}", m.path.display()))?;
        cfg += &format!("  module2 /boot/{name} {name} {}\n", m.args);
    }
    cfg += "  boot\n}\n";
    std::fs::write(stage.join("boot/grub/grub.cfg"), cfg)?;
    let iso = dir.join("microhv.iso");
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&iso)
        .arg(&stage)
        .output()
        .context("running grub-mkrescue")?;
    if !out.status.success() {
        bail!("grub-mkrescue failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(iso)
}
