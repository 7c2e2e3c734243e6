//! A seeded hypercall storm from an unprivileged domU: `calls=N` (default 100,000) random
//! operations (known and unknown numbers) with random arguments — random values, addresses in
//! and around its own memory and stack, boundary values. Every result must be a success or a
//! documented error; a dom0-only operation must always be `EPERM`. It prints a summary line and
//! shuts down with status 0 if all held, 1 otherwise. Event-channel operations are among them:
//! ports it offers itself, binds, sends on and closes, its page registered and moved; so are the
//! grant operations, whose writes land in its sink.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::{Errno, Op};
use conformance::{Rng, call};
use guest_rt::println;

rt::pvh_note!();

/// Where this guest's writable-memory operations land (see the loop).
#[repr(C, align(4096))]
struct Sink([u8; 8192]);
static mut SINK: Sink = Sink([0; 8192]);

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let calls: u64 = boot.option("calls").and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let seed = boot
        .option("seed")
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or(1);
    let ram = boot.ram_end();
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
        let sink = |x: u64| if x < ram { (&raw const SINK) as u64 + x % 8192 } else { x };
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
        if issued % 10_000 == 0 && issued < calls {
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
    println!(
        "storm domU: {calls} calls (seed {seed:#x}): {ok} succeeded, {refused} refused, {undefined} undefined, {privileged_leaks} dom0-only calls not refused"
    );
    guest_rt::exit(if undefined == 0 && privileged_leaks == 0 { 0 } else { 1 })
}
