//! The Debian packages the runner needs, installed when running as root.

use anyhow::{Context, Result, bail};
use std::process::Command;

/// Packages for booting under Bochs from a GRUB ISO.
pub const BOCHS: &[&str] = &["bochs", "bochs-term", "bochsbios", "vgabios"];
/// Packages for booting under QEMU.
pub const QEMU: &[&str] = &["qemu-system-x86"];
/// Packages for making the GRUB ISO.
pub const ISO: &[&str] = &["grub-pc-bin", "grub-common", "xorriso", "mtools"];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Whether xtask runs as root (and so may install packages itself).
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `cmd`, failing unless it exits successfully.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Makes sure every package in `groups` is installed: installs the missing ones as root
/// (`apt-get update` first), or prints the exact command and fails.
pub fn ensure(groups: &[&[&str]]) -> Result<()> {
    let missing: Vec<&str> =
        groups.iter().flat_map(|g| g.iter().copied()).filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let line = format!("apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!(
            "missing Debian packages; install them with:\n    sudo apt-get update && sudo {line}"
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))?;
    Ok(())
}
