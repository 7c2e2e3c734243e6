//! The ways microhv stops the machine: with a verdict line on COM1 and an exit status.

use crate::arch::x86_64::{cpu, idt::ExceptionFrame, lapic, power};
use crate::logger;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use microhv_core::status::{STOP_LINE_MARKER, StopStatus};

/// The APIC id (plus one) of the first CPU on its way to stopping the machine, 0 before: any
/// other CPU that fails meanwhile halts quietly instead of interleaving a second report (and a
/// second verdict) with it; the reporting CPU itself goes on through a fault of its own.
static STOPPING: AtomicU32 = AtomicU32::new(0);

/// Whether this CPU is the one that reports; another one got there first otherwise, and this
/// one parks.
fn first_to_stop() -> bool {
    let me = lapic::current_id().wrapping_add(1);
    match STOPPING.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => true,
        // A fault of the reporting CPU on its way: report once more (the first report may not
        // have been written), but a fault in that report ends the machine without one.
        Err(holder) if holder == me => {
            if NESTED.swap(true, Ordering::AcqRel) {
                power::exit_machine(StopStatus::Exception as u8);
            }
            true
        }
        Err(_) => false,
    }
}

/// The reporting CPU faulted once on its way to stopping (see [`first_to_stop`]).
static NESTED: AtomicBool = AtomicBool::new(false);

/// Prints the verdict line and ends the machine.
pub fn stop(status: StopStatus, reason: core::fmt::Arguments<'_>) -> ! {
    if !first_to_stop() {
        cpu::halt_forever();
    }
    stop_reported(status, reason)
}

/// [`stop`] for a path that has claimed the report already (`first_to_stop`).
fn stop_reported(status: StopStatus, reason: core::fmt::Arguments<'_>) -> ! {
    let mut u = logger::emergency();
    let _ = writeln!(u, "[hv] {STOP_LINE_MARKER}{} ({}): {reason}", status as u8, status.name());
    u.flush();
    power::exit_machine(status as u8)
}

const EXCEPTION_NAMES: [&str; 22] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 FP error",
    "alignment check",
    "machine check",
    "SIMD FP error",
    "virtualization",
    "control protection",
];

/// Reports a CPU exception taken in ring 0 and stops.
pub fn exception(f: &ExceptionFrame) -> ! {
    if !first_to_stop() {
        cpu::halt_forever();
    }
    let mut u = logger::emergency();
    let name = EXCEPTION_NAMES.get(f.vector as usize).copied().unwrap_or("interrupt");
    let _ = writeln!(
        u,
        "[hv] ERROR: exception in ring 0: vector {} ({name}) error code {:#x}\n\
         [hv]   rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x} cr2 {:#018x}{}",
        f.vector,
        f.error_code,
        f.rip,
        f.cs,
        f.rflags,
        f.rsp,
        f.ss,
        cpu::cr2(),
        f.gprs.dump("\n[hv]   "),
    );
    stop_reported(
        StopStatus::Exception,
        format_args!("CPU exception {} ({name}) in ring 0", f.vector),
    )
}

#[cfg(image)]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if !first_to_stop() {
        cpu::halt_forever();
    }
    let mut u = logger::emergency();
    let _ = writeln!(u, "[hv] ERROR: panic: {info}");
    stop_reported(StopStatus::Panic, format_args!("panic in ring 0"))
}
