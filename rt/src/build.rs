//! Link arguments for the freestanding images, emitted from their build scripts.

use std::println;

/// Prints the cargo directives that link the package's binaries as freestanding, static,
/// non-PIE ELF images laid out by `rt/link.ld` (one loadable segment at 1 MiB).
pub fn link_freestanding_bins() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/link.ld");
    println!("cargo:rerun-if-changed={script}");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--gc-sections",
        "-Wl,-z,max-page-size=0x1000",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-T{script}");
}
