//! Build-script helpers for the freestanding crates.
//!
//! The images are built by `cargo xtask` with `MICROHV_IMAGE=1` (in their own target
//! directory), which turns on `cfg(image)`: `no_main`, the panic handlers, the C runtime symbols
//! and the link arguments. Without it the same crates compile as ordinary hosted programs, so
//! workspace-wide `cargo clippy` / `check` / `build` work whatever features other members
//! activate in shared dependencies (some enable `std` in `serde`, which a freestanding image
//! could not link alongside its own panic handler).

use std::println;

/// Environment variable that selects the freestanding build.
pub const IMAGE_ENV: &str = "MICROHV_IMAGE";

/// Declares `cfg(image)` and sets it when building an image; returns whether it did.
pub fn image_cfg() -> bool {
    println!("cargo:rerun-if-env-changed={IMAGE_ENV}");
    println!("cargo::rustc-check-cfg=cfg(image)");
    let image = std::env::var_os(IMAGE_ENV).is_some();
    if image {
        println!("cargo:rustc-cfg=image");
    }
    image
}

/// For a package with freestanding binaries: [`image_cfg`], and when building an image, the
/// link arguments that make each binary a static, non-PIE ELF laid out by `rt/link.ld` (one
/// loadable segment at 1 MiB).
pub fn link_freestanding_bins() {
    // The entry code's 32-bit absolute addresses cannot go into a position-independent binary,
    // hosted stub or not; rustc passes `-pie`, and the later `-no-pie` wins.
    println!("cargo:rustc-link-arg-bins=-no-pie");
    if !image_cfg() {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/link.ld");
    println!("cargo:rerun-if-changed={script}");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-Wl,--gc-sections",
        "-Wl,-z,max-page-size=0x1000",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-T{script}");
}
