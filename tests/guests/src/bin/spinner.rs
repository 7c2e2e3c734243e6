//! Spins for ever without yielding: only the preemption timer takes the CPU from it. Every
//! `report=N` million iterations (default 2) it prints how far it got.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
test_guests::hosted_stub!();

use guest_rt::println;

rt::pvh_note!();

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = test_guests::start(ebx);
    let every = test_guests::number(&boot, "report", 2).max(1) * 1_000_000;
    println!("spinner {}: spinning", guest_rt::hv().domid);
    let mut n: u64 = 0;
    loop {
        n = core::hint::black_box(n + 1);
        if n % every == 0 {
            println!("spinner {}: {} M iterations", guest_rt::hv().domid, n / 1_000_000);
        }
    }
}
