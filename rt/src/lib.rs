//! Bare-metal runtime shared by every freestanding image in this repository: microhv itself,
//! dom0-agent and the test guests.
//!
//! The images are built for the host target (`x86_64-unknown-linux-gnu`) as freestanding ELF
//! programs (see `../shared/platform-notes.md`): no extra target or `rust-src` is needed. This
//! crate supplies what the host target's prebuilt `core` expects from the C runtime, the common
//! 32-bit entry that takes the CPU to 64-bit mode, the boot headers and notes, a polled 16550
//! UART, and (feature `build`) the link arguments for build scripts.
//!
//! Entry contract: the image's ELF entry and PVH/multiboot entry is `rt_entry32`, reached in
//! 32-bit protected mode with paging off. It identity-maps the first [`IDENTITY_MAP_BYTES`] with
//! 2 MiB pages, enables PAE, long mode and SSE, switches to a 64-bit GDT and a
//! [`BOOT_STACK_BYTES`] stack, and calls the image's
//! `#[unsafe(no_mangle)] extern "C" fn rt_main(eax: u32, ebx: u32) -> !` with the registers it
//! was entered with (the multiboot magic and information pointer, or the PVH start info in `ebx`).
#![no_std]

#[cfg(feature = "build")]
extern crate std;

// With `build` (a build script's host-side use) only the link helper is compiled: the runtime's
// C symbols would clash with the standard library's.
#[cfg(not(feature = "build"))]
pub mod arch;
#[cfg(feature = "build")]
pub mod build;
#[cfg(not(feature = "build"))]
pub mod uart;

/// Bytes of physical address space the entry code identity-maps (2 MiB pages).
pub const IDENTITY_MAP_BYTES: u64 = 4 << 30;
/// Size of the stack `rt_main` starts on.
pub const BOOT_STACK_BYTES: usize = 64 * 1024;

#[cfg(not(feature = "build"))]
pub use arch::x86_64::{entry_tsc, io};

/// The `main` of an image built without `cfg(image)` (a hosted stub that only exists so
/// workspace-wide cargo commands build; see `rt::build`): it says how to build the real one.
/// Use it next to `#![cfg_attr(image, no_main)]` and `#[cfg(not(image))] extern crate std;`.
#[macro_export]
macro_rules! hosted_main {
    () => {
        #[cfg(not(image))]
        fn main() {
            std::eprintln!("this is a freestanding image: build it with `cargo xtask build`");
            std::process::exit(2);
        }
    };
}
