//! Shared by the test guests: a boot helper and a #GP catcher for the hostile guest's probes.
#![no_std]

#[cfg(not(image))]
extern crate std;

pub mod arch;

use guest_rt::Boot;

/// Starts a test guest: finds microhv and the start info, or stops the vCPU.
pub fn start(ebx: u32) -> Boot {
    match guest_rt::init(ebx) {
        Ok(b) => b,
        Err(_) => loop {
            core::hint::spin_loop();
        },
    }
}

/// The number after `key=` on the command line, or `default`.
pub fn number(boot: &Boot, key: &str, default: u64) -> u64 {
    boot.option(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Declares the hosted stub `main` of a test guest built without `cfg(image)`.
#[macro_export]
macro_rules! hosted_stub {
    () => {
        #[cfg(not(image))]
        fn main() {
            std::eprintln!("this is a freestanding test guest: build it with `cargo xtask build`");
            std::process::exit(2);
        }
    };
}
