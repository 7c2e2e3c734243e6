//! Shared by the test guests: command-line numbers, a #GP catcher for the hostile guest's
//! probes, what the PV frontends share (`pv`), and what the SMP guest's start-up of its other
//! vCPUs needs (`lapic`, `madt`, `smp`).
#![no_std]

#[cfg(not(image))]
extern crate std;

pub mod arch;
pub mod lapic;
pub mod madt;
pub mod pv;
pub mod smp;

use guest_rt::Boot;

/// The number after `key=` on the command line, or `default`.
pub fn number(boot: &Boot, key: &str, default: u64) -> u64 {
    boot.option(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}
