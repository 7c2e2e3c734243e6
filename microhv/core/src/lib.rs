//! The arch-neutral core of microhv.
//!
//! Everything here is logic that needs no privilege: the frame allocator, the boot-information
//! model, the domain table, the hypercall dispatcher, event channels and grant tables, the CPUID policy, consoles, scheduling and
//! the run loop that drives an arch backend through the [`exit::Backend`] trait. It executes no
//! privileged instruction, so `cargo test` runs it on the host against a fake backend and a
//! simulated physical memory. The ring-0 binary (`microhv/`) supplies the real backends (VMX,
//! SVM), the boot path and the identity-mapped physical memory.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod boot;
pub mod console;
pub mod cpuid;
pub mod cpus;
pub mod dev;
pub mod domain;
pub mod evtchn;
pub mod exit;
pub mod fast;
pub mod frames;
pub mod grant;
pub mod hostmap;
pub mod hv;
pub mod hwcaps;
pub mod hypercall;
pub mod insn;
pub mod io;
pub mod mem;
pub mod mtrr;
pub mod platform;
pub mod policy;
pub mod regs;
pub mod smp;
pub mod walk;

pub mod status;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

/// `log` target of domain console lines; the logger prints them verbatim (they carry their
/// `[dN]` prefix).
pub const GUEST_LOG_TARGET: &str = "guest";
