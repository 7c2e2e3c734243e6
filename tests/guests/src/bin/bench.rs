//! Cost figures seen from a domU, for `cargo xtask bench`: the TSC of its first instruction
//! (dom0 subtracts the TSC at which it began creating the domain), the CPUID exit, and demand
//! faults — a first write to a page whose 2 MiB region already has a leaf table (table
//! present), to the first page of a fresh region (table missing), and, with large pages
//! allowed, a first write that maps a whole 2 MiB page. With `only=first` it stops after the
//! first figure. Each figure is printed as
//! `bench: NAME = N` (TSC ticks: the CPUID figure is an average, each fault figure the least
//! of its samples — one that a time-slice exit happened to hit would count that exit too);
//! then the guest shuts down.
//! Run with `DOMCREATE_SMALL_PAGES` for the 4 KiB figures (`pages=4k`) and without for the
//! 2 MiB one (`pages=2m`).
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use guest_rt::{println, rdtsc};

rt::pvh_note!();

/// The touched regions start here: above the image, its stack and page tables.
const BASE: u64 = 4 << 20;
/// 2 MiB regions touched.
const REGIONS: u64 = 8;
/// CPUID exits timed.
const CPUIDS: u64 = 1000;

/// TSC ticks of the first write to `addr`.
fn touch(addr: u64) -> u64 {
    let t0 = rdtsc();
    // SAFETY: RAM of this domain above its image (the scenario gives it 4 MiB + REGIONS × 2
    // MiB), identity-mapped by rt's entry, used by nothing else.
    unsafe { core::ptr::write_volatile(addr as *mut u64, 1) };
    rdtsc() - t0
}

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let first = rt::entry_tsc();
    let boot = guest_rt::start(ebx);
    println!("bench: first instruction tsc = {first}");
    if boot.option("only") == Some("first") {
        guest_rt::exit(0);
    }
    let t0 = rdtsc();
    for _ in 0..CPUIDS {
        core::hint::black_box(core::arch::x86_64::__cpuid_count(0, 0));
    }
    println!("bench: cpuid exit = {}", (rdtsc() - t0) / CPUIDS);
    let large = boot.option("pages") == Some("2m");
    let (mut missing, mut present) = (u64::MAX, u64::MAX);
    for r in 0..REGIONS {
        let region = BASE + (r << 21);
        missing = missing.min(touch(region));
        if !large {
            // Pages 1..=7 of the region: its leaf table exists now.
            for p in 1..8 {
                present = present.min(touch(region + (p << 12)));
            }
        }
    }
    if large {
        println!("bench: demand fault 2m = {missing}");
    } else {
        println!("bench: demand fault 4k table missing = {missing}");
        println!("bench: demand fault 4k table present = {present}");
    }
    guest_rt::exit(0)
}
