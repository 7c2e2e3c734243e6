//! A seeded hypercall storm from an unprivileged domU: `calls=N` (default 100,000) random
//! operations (known and unknown numbers) with random arguments — random values, addresses in
//! and around its own memory and stack, boundary values. Every result must be a success or a
//! documented error; a dom0-only operation must always be `EPERM`. It prints a summary line and
//! shuts down with status 0 if all held, 1 otherwise. Event-channel operations are among them:
//! ports it offers itself, binds, sends on and closes, its page registered and moved; so are the
//! grant operations, whose writes land in its sink. With `vcpus=N` (the domain built with N
//! vCPUs), vCPU 0 first starts the others with `VcpuUp` (in flat 32-bit mode, into rt's way to
//! 64-bit mode) and all N storm at once, each with its own seed and its share of the calls:
//! with microhv on several CPUs, concurrently.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::types::{VCPU_MODE_FLAT32, VcpuState};
use abi::{Errno, Op};
use conformance::{Rng, call};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use guest_rt::{println, rdtsc};
use zerocopy::FromZeros;

rt::pvh_note!();

/// Where this guest's writable-memory operations land (see the loop).
#[repr(C, align(4096))]
struct Sink([u8; 8192]);
static mut SINK: Sink = Sink([0; 8192]);

/// Calls between progress lines of each vCPU (dom0's wait restarts on every line: with the
/// storm on several vCPUs next to dom0's, a few thousand calls can take seconds under QEMU).
const PROGRESS_EVERY: u64 = 2_000;
/// vCPUs a domain may have.
const MAX_VCPUS: usize = abi::hypercall::MAX_VCPUS_PER_DOMAIN as usize;
/// Bytes of each other vCPU's stack.
const AP_STACK_BYTES: usize = 16 * 1024;
/// TSC ticks a started vCPU has to report (a guard against a hang: generous).
const AP_REPORT_TICKS: u64 = 1 << 36;

#[repr(C, align(16))]
struct Stack([u8; AP_STACK_BYTES]);
/// The other vCPUs' stacks, by index (vCPU 0 runs on rt's).
static mut STACKS: [Stack; MAX_VCPUS] = [const { Stack([0; AP_STACK_BYTES]) }; MAX_VCPUS];
/// The last vCPU that reported in.
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
/// What each vCPU's storm gave: calls that succeeded, were refused, gave an undefined
/// result, and dom0-only calls not refused.
static COUNTS: [[AtomicU64; 4]; MAX_VCPUS] =
    [const { [const { AtomicU64::new(0) }; 4] }; MAX_VCPUS];
/// Set when a vCPU's storm is over.
static DONE: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
/// Calls per vCPU, the seed, and the end of RAM, for the other vCPUs.
static CALLS: AtomicU64 = AtomicU64::new(0);
static SEED: AtomicU64 = AtomicU64::new(1);
static RAM: AtomicU64 = AtomicU64::new(0);

/// vCPU `i`'s storm: `calls` random calls from `seed`; its counts go to [`COUNTS`].
fn storm(i: usize, calls: u64, seed: u64, ram: u64) {
    let stack = [0u8; 256];
    let here = stack.as_ptr() as u64;
    let mut rng = Rng::new(seed);
    let (mut ok, mut refused, mut undefined, mut privileged_leaks) = (0u64, 0u64, 0u64, 0u64);
    let mut issued = 0;
    while issued < calls {
        let op = match rng.below(8) {
            0 => rng.next_u64(),
            1 => rng.below(0x40),
            _ => Op::ALL[rng.below(Op::ALL.len() as u64) as usize] as u64,
        };
        // Shutting down would end the storm early; its argument checks are in the suite.
        if op == Op::Shutdown as u64 {
            continue;
        }
        let mut a = [0u64; 5];
        for x in a.iter_mut() {
            *x = match rng.below(7) {
                0 => rng.next_u64(),
                1 => rng.below(ram + 0x2000),
                2 => here + rng.below(256),
                3 => ram - rng.below(64),
                4 => u64::MAX - rng.below(16),
                5 => rng.below(16),
                _ => 0xfee0_0000 + rng.below(0x1000),
            };
        }
        if op == Op::ConsoleWrite as u64 {
            // Random bytes would flood the log; the address is still checked.
            a[1] = 0;
        }
        // The two operations that write a domU's memory (a status, pending bits into a
        // registered page) write into the sink when aimed at its RAM, not over its code or
        // stack; addresses outside its RAM stay as drawn.
        if (op == Op::EvtchnStatus as u64 || op == Op::EvtchnSetCallback as u64) && a[1] < ram {
            a[1] = (&raw const SINK) as u64 + a[1] % 4096;
        }
        // The same for the grant operations: a copy's destination, a query's result, and the
        // page a grant offers (which a copy to the grant, its own included, may write).
        // (Within the sink's first half: a copy writes up to a page.)
        let sink = |x: u64| if x < ram { (&raw const SINK) as u64 + x % 4096 } else { x };
        if op == Op::GrantQuery as u64 {
            a[1] = sink(a[1]);
        } else if op == Op::GrantCopyFrom as u64 {
            a[3] = sink(a[3]);
        } else if op == Op::GrantSet as u64 {
            a[2] = sink(a[2]);
        }
        let r = call(op, a);
        issued += 1;
        // Progress for the waiting dom0, whose timeout restarts on every line.
        if issued % PROGRESS_EVERY == 0 && issued < calls {
            println!("storm domU: {issued} calls so far");
        }
        if r >= 0 {
            ok += 1;
        } else if Errno::from_code(-r).is_some() {
            refused += 1;
        } else {
            undefined += 1;
        }
        if Op::from_number(op).is_some_and(Op::dom0_only) && r != Errno::EPERM.to_ret() {
            privileged_leaks += 1;
        }
    }
    for (c, v) in COUNTS[i].iter().zip([ok, refused, undefined, privileged_leaks]) {
        c.store(v, Ordering::Relaxed);
    }
    DONE[i].store(true, Ordering::Release);
}

/// Another vCPU's first Rust code, on its own stack: its storm, then it halts.
extern "C" fn ap_main(i: u64) -> ! {
    let i = i as usize;
    ARRIVED.store(i, Ordering::Release);
    let calls = CALLS.load(Ordering::Relaxed);
    storm(
        i,
        calls,
        SEED.load(Ordering::Relaxed).wrapping_add(i as u64),
        RAM.load(Ordering::Relaxed),
    );
    loop {
        // SAFETY: halts with interrupts off: this vCPU has nothing left to do.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Starts vCPUs 1..`n` with `VcpuUp`, one at a time, each into [`ap_main`].
fn start_vcpus(n: usize) -> Result<(), &'static str> {
    let (cr0, cr3, cr4, efer) = rt::arch::x86_64::ap::this_cpu_registers();
    rt::arch::x86_64::ap::set_registers(cr0, cr3, cr4, efer)?;
    let hv = guest_rt::hv();
    for i in 1..n {
        // SAFETY: only the address is taken; vCPU `i` alone uses this stack.
        let top = unsafe { (&raw mut STACKS).cast::<Stack>().add(i + 1) } as u64;
        // SAFETY: the stack is vCPU `i`'s alone; the one before it reported (below).
        unsafe { rt::arch::x86_64::ap::set_next(top, ap_main, i as u64) };
        let mut state = VcpuState::new_zeroed();
        (state.mode, state.rip) = (VCPU_MODE_FLAT32, rt::arch::x86_64::ap::flat32_entry());
        hv.vcpu_up(i as u32, &state).map_err(|_| "VcpuUp failed")?;
        let start = rdtsc();
        while ARRIVED.load(Ordering::Acquire) != i {
            if rdtsc().saturating_sub(start) > AP_REPORT_TICKS {
                return Err("a started vCPU did not report");
            }
            let _ = hv.yield_now();
        }
    }
    Ok(())
}

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let calls: u64 = boot.option("calls").and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let seed = boot
        .option("seed")
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or(1);
    let n = boot.option("vcpus").and_then(|v| v.parse().ok()).unwrap_or(1usize).clamp(1, MAX_VCPUS);
    let ram = boot.ram_end();
    let share = calls / n as u64;
    CALLS.store(share, Ordering::Relaxed);
    SEED.store(seed, Ordering::Relaxed);
    RAM.store(ram, Ordering::Relaxed);
    if let Err(why) = start_vcpus(n) {
        println!("storm domU: FAIL: {why}");
        guest_rt::exit(1);
    }
    storm(0, calls - share * (n as u64 - 1), seed, ram);
    let hv = guest_rt::hv();
    while !DONE[..n].iter().all(|d| d.load(Ordering::Acquire)) {
        let _ = hv.yield_now();
    }
    let sum = |k: usize| COUNTS[..n].iter().map(|c| c[k].load(Ordering::Relaxed)).sum::<u64>();
    let (ok, refused, undefined, privileged_leaks) = (sum(0), sum(1), sum(2), sum(3));
    println!(
        "storm domU: {calls} calls on {n} vCPUs (seed {seed:#x}): {ok} succeeded, {refused} refused, {undefined} undefined, {privileged_leaks} dom0-only calls not refused"
    );
    guest_rt::exit(if undefined == 0 && privileged_leaks == 0 { 0 } else { 1 })
}
