//! The microhv ABI: the one source of truth shared by microhv, dom0-agent, the test guests and
//! the host tools.
//!
//! - [`hypercall`]: operation numbers, register convention, limits and error codes.
//! - [`types`]: the `#[repr(C)]` argument and result structures passed by guest-physical
//!   address, laid out identically for every party (compile-time size and offset checks).
//! - [`cpuid`]: the leaves from `0x4000_0000` through which a guest discovers microhv.
//! - [`pv`]: (feature `pv`) the split drivers' agreements between dom0 and a domain: the configuration store
//!   and the PV block ring.
//! - [`pvh`]: the PVH boot ABI (start info, memory map, module list) domains are started with.
//! - [`guest`]: guest-side hypercall wrappers (VMCALL or VMMCALL, chosen at run time).
//! - [`proto`]: the control protocol between the host tools and dom0 (postcard in COBS frames).
//! - `testutil`: helpers for other crates' tests (feature `testing`).
//!
//! `ABI.md` next to this crate documents every operation in one place, with the changelog.
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]

#[cfg(test)]
extern crate std;

#[cfg(feature = "guest")]
mod arch;
pub mod cpuid;
#[cfg(feature = "guest")]
pub mod guest;
pub mod hypercall;
pub mod platform;
#[cfg(feature = "proto")]
pub mod proto;
#[cfg(feature = "pv")]
pub mod pv;
pub mod pvh;
#[cfg(any(test, feature = "testing"))]
pub mod testutil;
pub mod types;

pub use hypercall::{Errno, Op};

/// ABI major version: a guest refuses a major it does not know.
pub const ABI_VERSION_MAJOR: u16 = 3;
/// ABI minor version: additions that keep every existing call meaning the same.
pub const ABI_VERSION_MINOR: u16 = 7;

/// The version as the `version` hypercall and CPUID leaf `0x4000_0001` report it:
/// `major << 16 | minor`.
pub const fn abi_version_word() -> u32 {
    ((ABI_VERSION_MAJOR as u32) << 16) | ABI_VERSION_MINOR as u32
}

/// Splits a version word into `(major, minor)`.
pub const fn split_version_word(word: u32) -> (u16, u16) {
    ((word >> 16) as u16, word as u16)
}
