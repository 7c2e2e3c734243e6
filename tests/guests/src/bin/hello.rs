//! Prints a greeting on its console and shuts down with `status=N` (default 0).
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use guest_rt::println;

rt::pvh_note!();

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let hv = guest_rt::hv();
    println!("hello from domU {} (cmdline {:?})", hv.domid, boot.cmdline);
    guest_rt::exit(test_guests::number(&boot, "status", 0) as u32)
}
