//! Shared by the test guests: command-line numbers, a #GP catcher for the hostile guest's
//! probes, and what the PV frontends share (`pv`).
#![no_std]

#[cfg(not(image))]
extern crate std;

pub mod arch;
pub mod pv;

use guest_rt::Boot;

/// The number after `key=` on the command line, or `default`.
pub fn number(boot: &Boot, key: &str, default: u64) -> u64 {
    boot.option(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}
