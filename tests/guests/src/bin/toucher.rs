//! Writes a pattern over `mib=N` MiB of its memory (from 4 MiB up, default 8), reads it back,
//! `passes=P` times (default 2), yielding between passes; reports each pass on its console and
//! shuts down with status 0 if every word read back right, 1 otherwise. Run with a small
//! `n_requested_mmu_pages` and 4 KiB pages, it keeps the MMU reclaiming.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use guest_rt::println;

rt::pvh_note!();

/// Where the touched region starts: above the image, its stack and page tables.
const BASE: u64 = 4 << 20;

fn pattern(addr: u64, pass: u64) -> u64 {
    addr.rotate_left(17) ^ pass.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let hv = guest_rt::hv();
    let mib = test_guests::number(&boot, "mib", 8);
    let passes = test_guests::number(&boot, "passes", 2);
    let words = (mib << 20) / 8;
    println!("toucher {}: {mib} MiB x {passes} passes from {BASE:#x}", hv.domid);
    for pass in 0..passes {
        for i in 0..words {
            let a = BASE + i * 8;
            // SAFETY: [BASE, BASE + mib MiB) is this domain's RAM (the scenario gives it enough),
            // identity-mapped by the entry code, and used by nothing else.
            unsafe { core::ptr::write_volatile(a as *mut u64, pattern(a, pass)) };
        }
        for i in 0..words {
            let a = BASE + i * 8;
            // SAFETY: as above.
            let got = unsafe { core::ptr::read_volatile(a as *const u64) };
            if got != pattern(a, pass) {
                println!("toucher {}: MISMATCH at {a:#x} pass {pass}: {got:#x}", hv.domid);
                guest_rt::exit(1);
            }
        }
        println!("toucher {}: pass {} ok", hv.domid, pass + 1);
        let _ = hv.yield_now();
    }
    println!("toucher {}: verified {mib} MiB x {passes} passes", hv.domid);
    guest_rt::exit(0)
}
