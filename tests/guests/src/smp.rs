//! Starting a domain's other vCPUs as an OS starts its application processors (APs): a 16-bit
//! trampoline in a page below 1 MiB and INIT, STARTUP, STARTUP through the xAPIC's ICR with
//! the Intel SDM's delays (Vol. 3A, "Typical BSP Initialization Sequence": INIT, 10 ms,
//! STARTUP, 200 µs, STARTUP, 200 µs), one AP at a time — the technique microhv uses for its
//! own host CPUs (`microhv/src/arch/x86_64/smp.rs`).
//!
//! A STARTUP IPI starts the vCPU in real mode at CS = vector << 8, IP = 0 (microhv:
//! `microhv/core/src/hv/startup.rs`); from there to 64-bit mode is rt's way
//! (`rt::arch::x86_64::ap`, which microhv's host APs take too), with the BSP's CR4 (PAE), CR3
//! (rt's identity map of the first 4 GiB, in the image's .bss, below 4 GiB) and CR0, and rt's
//! selectors (code 0x08, data 0x10, so IDT gates written for the BSP serve the APs too); it
//! calls the entry [`start_ap`] was given on the AP's own stack.

use crate::lapic;

/// The page the APs start in: RAM in every domain's memory map (`[0x2000, 0xA0000)`,
/// `abi::pvh::memmap`), below the image (1 MiB, its stacks in its .bss) and apart from what
/// dom0 puts in low memory (the start page at 0x1000, the ACPI tables in the legacy hole).
pub const TRAMPOLINE_PA: u64 = 0x8000;
/// The STARTUP IPI's vector: the trampoline's page number.
const STARTUP_VECTOR: u32 = (TRAMPOLINE_PA >> 12) as u32;
const _: () = assert!(TRAMPOLINE_PA.is_multiple_of(4096) && STARTUP_VECTOR <= 0xff);
/// The SDM's wait after INIT.
const INIT_DELAY_US: u64 = 10_000;
/// The SDM's wait after each STARTUP.
const STARTUP_DELAY_US: u64 = 200;
/// Waits at least `us` microseconds on the TSC (`khz` ticks per millisecond), calling `idle`
/// between reads (a vCPU that only spins keeps the CPU from the one it waits for until its
/// time slice ends).
pub fn delay(khz: u64, us: u64, idle: &mut impl FnMut()) {
    let start = guest_rt::rdtsc();
    while guest_rt::rdtsc().saturating_sub(start) < khz * us / 1000 {
        idle();
    }
}

/// Copies the trampoline to [`TRAMPOLINE_PA`] and records this CPU's (the BSP's) control
/// registers for the APs; call once before [`start_ap`]. Fails if the BSP's CR3 is out of the
/// 32-bit code's reach (rt's tables are in the image, so it never is).
pub fn prepare() -> Result<(), &'static str> {
    let (cr0, cr3, cr4, efer) = rt::arch::x86_64::ap::this_cpu_registers();
    // SAFETY: the trampoline page is RAM of this domain that nothing else uses (see
    // `TRAMPOLINE_PA`), identity-mapped and writable.
    unsafe { rt::arch::x86_64::ap::prepare(TRAMPOLINE_PA, cr0, cr3, cr4, efer) }
}

/// Starts the AP with APIC ID `dest`: INIT, STARTUP, STARTUP with the SDM's delays (timed
/// with the TSC of `khz` ticks per millisecond, `idle` called while waiting). The AP calls
/// `entry(arg)` on the stack whose top is `stack_top` (16-byte aligned); whether it arrived is
/// for `entry` to report. Start APs one at a time: each reads the same slots, so the next may
/// start only once this one's `entry` runs. False if an IPI could not be sent.
///
/// # Safety
/// As `rt::arch::x86_64::ap::set_next`: the stack below `stack_top` is the AP's alone, and the
/// AP started before reached its entry.
pub unsafe fn start_ap(
    dest: u8,
    stack_top: u64,
    entry: extern "C" fn(u64) -> !,
    arg: u64,
    khz: u64,
    idle: &mut impl FnMut(),
) -> bool {
    // SAFETY: the caller's promise, passed on.
    unsafe { rt::arch::x86_64::ap::set_next(stack_top, entry, arg) };
    if !lapic::send(dest, lapic::ICR_INIT | lapic::ICR_ASSERT) {
        return false;
    }
    delay(khz, INIT_DELAY_US, idle);
    for _ in 0..2 {
        // A started AP ignores the second STARTUP (SDM Vol. 3A, "MP Initialization Protocol
        // Algorithm"); it is there for a CPU that missed the first.
        if !lapic::send(dest, lapic::ICR_STARTUP | STARTUP_VECTOR) {
            return false;
        }
        delay(khz, STARTUP_DELAY_US, idle);
    }
    true
}
