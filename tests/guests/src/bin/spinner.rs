//! Spins for ever without a single exit: only the time slice (VMX preemption timer, or the
//! local APIC timer on SVM) takes the CPU from it. With `report=N` it prints how far it got
//! every N million iterations (each print is a hypercall, an exit); by default it never does.
//! With `cpuid=1` every iteration executes CPUID, an exit the backends complete without the
//! core (`microhv/core/src/fast.rs`): it must still lose the CPU when its slice ends.
//! It spins with RFLAGS.IF set — nothing can raise an interrupt in it (every interrupt
//! controller of its virtual PC starts masked) — because Bochs's AMD models derive the host's
//! interrupt mask at VMRUN from the guest's IF, so a guest spinning with IF clear would never be
//! preempted there.
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
    let every = test_guests::number(&boot, "report", 0) * 1_000_000;
    let cpuid = test_guests::number(&boot, "cpuid", 0) != 0;
    println!("spinner {}: spinning", guest_rt::hv().domid);
    // SAFETY: no interrupt source is unmasked (see above), so enabling interrupts changes
    // nothing for this guest.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    let mut n: u64 = 0;
    loop {
        n = core::hint::black_box(n + 1);
        if cpuid {
            core::hint::black_box(core::arch::x86_64::__cpuid(0));
        }
        if every != 0 && n.is_multiple_of(every) {
            println!("spinner {}: {} M iterations", guest_rt::hv().domid, n / 1_000_000);
        }
    }
}
