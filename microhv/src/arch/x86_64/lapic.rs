//! The host's local APIC: the SVM backend's time slice (SVM has no preemption timer), the
//! start-up IPIs, and the kick that makes another CPU leave its guest or wake.
//!
//! The timer runs one-shot on [`TIMER_VECTOR`]; the interrupt makes the running guest exit
//! (INTR intercept) and is then taken by microhv's IDT, whose handler for this vector only
//! signals EOI. A kick ([`KICK_VECTOR`]) is handled the same way, and on VMX acknowledged by the
//! guest's exit instead. The APIC's page is made uncacheable in microhv's identity map before
//! it is touched.

use super::cpu::{rdmsr, rdtsc, wrmsr};
use core::sync::atomic::{AtomicU64, Ordering};

/// Vector of the slice timer.
pub const TIMER_VECTOR: u8 = 0xf0;
/// Vector of the kick ([`kick`]).
pub const KICK_VECTOR: u8 = 0xf2;
/// Spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;
/// IA32_APIC_BASE.EXTD: the APIC is in x2APIC mode (its MMIO page is then dead).
const APIC_X2APIC_MODE: u64 = 1 << 10;
/// IA32_APIC_BASE: the APIC page's physical address.
const APIC_BASE_MASK: u64 = 0x000f_ffff_ffff_f000;
const REG_ID: u64 = 0x20;
/// The x2APIC ID register (MSR), in x2APIC mode.
const X2APIC_ID: u32 = 0x802;
/// Where an xAPIC id sits in the ID register and in the ICR's high word: bits 31:24.
const ID_SHIFT: u32 = 24;
/// ICR: delivery status, set while the IPI is being sent.
const ICR_SEND_PENDING: u32 = 1 << 12;
const REG_EOI: u64 = 0xb0;
const REG_SVR: u64 = 0xf0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_LVT_TIMER: u64 = 0x320;
const REG_INITIAL: u64 = 0x380;
const REG_CURRENT: u64 = 0x390;
const REG_DIVIDE: u64 = 0x3e0;

/// TSC when [`start_counting`] started the timer (0: not started).
static COUNT_START: AtomicU64 = AtomicU64::new(0);

/// Address of the EOI register, read by the timer's interrupt stub.
pub static EOI_ADDR: AtomicU64 = AtomicU64::new(0);

/// The calibrated timer.
#[derive(Debug, Clone, Copy)]
pub struct SliceTimer {
    base: u64,
    /// APIC timer counts per 1024 TSC ticks.
    counts_per_kticks: u64,
}

fn reg(base: u64, off: u64) -> *mut u32 {
    (base + off) as *mut u32
}

/// Sets PCD and PWT on the 2 MiB identity mapping of `pa`, making it uncacheable.
fn make_uncacheable(pa: u64) {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let pml4 = super::cpu::cr3() & ADDR;
    // SAFETY: the identity map built by `rt_entry32` (PML4 → PDPT → 2 MiB PDEs) maps its own
    // tables; setting the cache-control bits of one PDE changes no translation, and reloading
    // CR3 flushes the old cacheable entry.
    unsafe {
        let pdpt = *((pml4 + ((pa >> 39) & 0x1ff) * 8) as *const u64) & ADDR;
        let pd = *((pdpt + ((pa >> 30) & 0x1ff) * 8) as *const u64) & ADDR;
        let pde = (pd + ((pa >> 21) & 0x1ff) * 8) as *mut u64;
        *pde |= (1 << 3) | (1 << 4);
        core::arch::asm!("mov cr3, {}", in(reg) pml4, options(nostack));
    }
}

/// Enables the local APIC (software-enabled, spurious vector [`SPURIOUS_VECTOR`]), maps its
/// page uncacheable and records its EOI register; returns its base.
pub fn enable() -> u64 {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; setting the global enable keeps the
    // default base.
    let msr = unsafe { rdmsr(IA32_APIC_BASE) };
    // SAFETY: as above.
    unsafe { wrmsr(IA32_APIC_BASE, msr | APIC_GLOBAL_ENABLE) };
    let base = msr & APIC_BASE_MASK;
    make_uncacheable(base);
    // SAFETY: `base` is the APIC's register page (uncached, identity-mapped).
    unsafe { reg(base, REG_SVR).write_volatile(0x100 | u32::from(SPURIOUS_VECTOR)) };
    EOI_ADDR.store(base + REG_EOI, Ordering::Relaxed);
    base
}

/// Whether the firmware left the local APIC in x2APIC mode, where microhv's xAPIC (MMIO)
/// accesses go nowhere.
pub fn x2apic_mode() -> bool {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; reading it has no side effect.
    let msr = unsafe { rdmsr(IA32_APIC_BASE) };
    msr & APIC_X2APIC_MODE != 0
}

/// This CPU's APIC id as its ID register holds it now (firmware may have changed it from the
/// initial id CPUID reports), through the APIC at `base` (from [`enable`]).
pub fn id(base: u64) -> u32 {
    // SAFETY: `base` is the APIC's register page (uncached, identity-mapped); reading the ID
    // register has no side effect.
    unsafe { reg(base, REG_ID).read_volatile() >> ID_SHIFT }
}

/// The APIC id of the CPU this runs on, from its ID register wherever IA32_APIC_BASE puts it
/// (for the fatal path, which must tell CPUs apart without per-CPU data).
pub fn current_id() -> u32 {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; reading it has no side effect.
    let msr = unsafe { rdmsr(IA32_APIC_BASE) };
    if msr & APIC_X2APIC_MODE != 0 {
        // SAFETY: the x2APIC ID register exists in x2APIC mode; reading it has no side effect.
        return unsafe { rdmsr(X2APIC_ID) } as u32;
    }
    id(msr & APIC_BASE_MASK)
}

/// Sends the inter-processor interrupt `command` (the ICR's low word: vector, delivery mode,
/// level) to the CPU with xAPIC id `dest`, through the APIC at `base` (from [`enable`]), and
/// waits until the APIC reports it sent (SDM Vol. 3A, "Interrupt Command Register (ICR)":
/// delivery status, bit 12).
pub fn ipi(base: u64, dest: u8, command: u32) -> Result<(), &'static str> {
    send(base, dest, command);
    // An APIC sends within microseconds; a hundred million reads is seconds of a stuck one.
    if sent(base, 100_000_000) { Ok(()) } else { Err("the local APIC did not send the IPI") }
}

/// Writes the ICR: its high word (the destination), then its low word, which sends.
fn send(base: u64, dest: u8, command: u32) {
    // SAFETY: `base` is the APIC's register page (uncached, identity-mapped); writing the ICR's
    // high word then its low word sends one IPI, which is what the caller asked for.
    unsafe {
        reg(base, REG_ICR_HIGH).write_volatile(u32::from(dest) << ID_SHIFT);
        reg(base, REG_ICR_LOW).write_volatile(command);
    }
}

/// Whether the APIC at `base` reports its last IPI sent within `reads` reads of the ICR.
fn sent(base: u64, reads: u32) -> bool {
    for _ in 0..reads {
        // SAFETY: `base` is the APIC's register page; reading the ICR has no side effect.
        if unsafe { reg(base, REG_ICR_LOW).read_volatile() } & ICR_SEND_PENDING == 0 {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// Kicks the CPU with xAPIC id `apic_id`: a fixed IPI on [`KICK_VECTOR`], which makes its guest
/// exit, or wakes it from [`super::cpu::wait_for_kick`]. Does not wait for the delivery (only,
/// briefly, for a previous IPI of this CPU's to be sent, as the ICR must not be rewritten
/// before): the caller may hold the hypervisor lock.
pub fn kick(apic_id: u32) -> Result<(), &'static str> {
    /// ICR: fixed delivery to a physical destination, level assert (SDM Vol. 3A, "Interrupt
    /// Command Register (ICR)"), to be or-ed with the vector.
    const ICR_FIXED: u32 = 0x4000;
    /// Reads of the ICR to wait, at most, for the APIC to finish sending the previous IPI.
    const WAIT_READS: u32 = 10_000;
    let at = EOI_ADDR.load(Ordering::Relaxed);
    if at == 0 {
        return Err("the local APIC is not enabled");
    }
    let base = at - REG_EOI;
    let dest = u8::try_from(apic_id).ok().filter(|&d| d != u8::MAX);
    let dest = dest.ok_or("an APIC id beyond the xAPIC's reach")?;
    if !sent(base, WAIT_READS) {
        return Err("the local APIC is still sending an IPI");
    }
    send(base, dest, ICR_FIXED | u32::from(KICK_VECTOR));
    Ok(())
}

/// Signals the end of the interrupt in service (after [`enable`]).
pub fn eoi() {
    let at = EOI_ADDR.load(Ordering::Relaxed);
    if at != 0 {
        // SAFETY: the EOI register of the APIC `enable` set up; writing 0 is the EOI.
        unsafe { (at as *mut u32).write_volatile(0) };
    }
}

/// Programs the APIC at `base`'s timer for the slices: divide by 1, stopped (initial count 0),
/// one-shot and unmasked on [`TIMER_VECTOR`].
fn program_slice_timer(base: u64) {
    // SAFETY: `base` is the APIC's register page (uncached, identity-mapped); these are its
    // architectural timer registers, written with valid values; a zero initial count stops it.
    unsafe {
        reg(base, REG_DIVIDE).write_volatile(0xb);
        reg(base, REG_INITIAL).write_volatile(0);
        reg(base, REG_LVT_TIMER).write_volatile(u32::from(TIMER_VECTOR));
    }
}

/// Starts the local APIC timer counting down from its maximum, masked (no interrupt), so that
/// [`SliceTimer::init`] can measure its rate over a window that has already passed: started
/// before the TSC is measured against the PIT, the 2 ms of that measurement serve both.
pub fn start_counting() {
    let base = enable();
    // SAFETY: `base` is the APIC's register page (uncached, identity-mapped); these are its
    // architectural registers, written with valid values (the LVT masked: bit 16).
    unsafe {
        reg(base, REG_DIVIDE).write_volatile(0xb);
        reg(base, REG_LVT_TIMER).write_volatile((1 << 16) | u32::from(TIMER_VECTOR));
        reg(base, REG_INITIAL).write_volatile(u32::MAX);
    }
    COUNT_START.store(rdtsc(), Ordering::Relaxed);
}

impl SliceTimer {
    /// Enables the local APIC, programs the timer (one-shot, [`TIMER_VECTOR`], divide by 1)
    /// and measures its rate against the TSC (of `tsc_khz`) over at least a millisecond since
    /// [`start_counting`] (which it calls if nobody did): with a microsecond of jitter that is
    /// 0.1%, under the scheduler's slice slack of 1/256 (`hv::run`). It used to wait 4 M TSC
    /// ticks of its own: 3.5 M instructions of every boot under Bochs.
    pub fn init(tsc_khz: u64) -> Self {
        if let Some(t) = IDLE_TIMER.get() {
            // Measured once: every CPU's APIC timer counts the same bus clock.
            return t.for_this_cpu();
        }
        if COUNT_START.load(Ordering::Relaxed) == 0 {
            start_counting();
        }
        let base = enable();
        let (left, elapsed) = loop {
            let start = COUNT_START.load(Ordering::Relaxed);
            while rdtsc() - start < tsc_khz.max(1) {
                core::hint::spin_loop();
            }
            // The count is read between two TSC reads and dated at their midpoint, so a slow
            // register read (an emulated APIC) does not skew the ratio.
            let before = rdtsc();
            // SAFETY: as in `start_counting`.
            let left = unsafe { reg(base, REG_CURRENT).read_volatile() };
            let after = rdtsc();
            // A count that ran out (2^32 ticks: seconds at the fastest bus clocks) measured
            // nothing: count again.
            if left != 0 {
                break (left, (before + (after - before) / 2) - start);
            }
            start_counting();
        };
        program_slice_timer(base);
        let counted = u64::from(u32::MAX - left);
        let t = Self { base, counts_per_kticks: (counted * 1024 / elapsed.max(1)).max(1) };
        *IDLE_TIMER.call_once(|| t)
    }

    /// The slice timer of the CPU this runs on, with this timer's calibration: every CPU's APIC
    /// timer counts the same bus clock, so it is measured once, on the boot CPU. Enables this
    /// CPU's local APIC and programs its timer as [`SliceTimer::init`] does.
    pub fn for_this_cpu(&self) -> Self {
        let base = enable();
        program_slice_timer(base);
        Self { base, ..*self }
    }

    /// Fires [`TIMER_VECTOR`] once after about `tsc_ticks`.
    pub fn arm(&self, tsc_ticks: u64) {
        let count =
            (tsc_ticks.saturating_mul(self.counts_per_kticks) / 1024).clamp(1, u32::MAX.into());
        // SAFETY: the timer's initial-count register; writing it (re)starts the one-shot count.
        unsafe { reg(self.base, REG_INITIAL).write_volatile(count as u32) };
    }

    /// Whether the armed count has not run out. Its interrupt may be taken in root mode (by the
    /// stub that only acknowledges it), so a loop that re-enters a guest without the core asks
    /// this instead of relying on the interrupt to exit.
    pub fn running(&self) -> bool {
        // SAFETY: the timer's current-count register; reading it has no side effect.
        unsafe { reg(self.base, REG_CURRENT).read_volatile() != 0 }
    }

    /// Stops the timer (a pending interrupt stays pending and is taken at the next window).
    pub fn disarm(&self) {
        // SAFETY: as in `arm`; zero stops the count.
        unsafe { reg(self.base, REG_INITIAL).write_volatile(0) };
    }
}

/// The boot CPU's timer as [`SliceTimer::init`] measured it (every CPU's APIC timer counts the
/// same bus clock, and every CPU's APIC is at the same address), for [`halt_until`] on any CPU.
static IDLE_TIMER: spin::Once<SliceTimer> = spin::Once::new();

/// Measures the local APIC timer for [`halt_until`] (the boot CPU, once the TSC is measured;
/// nothing to do if the SVM backend's slice timer did).
pub fn init_idle_timer(tsc_khz: u64) {
    SliceTimer::init(tsc_khz);
}

/// Programs this CPU's APIC timer as [`SliceTimer::init`] does (an AP, whose APIC
/// [`enable`] enabled): one-shot on [`TIMER_VECTOR`], stopped.
pub fn program_timer() {
    let at = EOI_ADDR.load(Ordering::Relaxed);
    if at != 0 {
        program_slice_timer(at - REG_EOI);
    }
}

/// Halts this CPU until an interrupt (a kick) or for `ticks` of the TSC at most (`u64::MAX`:
/// no limit), with its APIC timer (programmed at its start) as the alarm; returns with
/// interrupts off and the timer stopped.
pub fn halt_for(ticks: u64) {
    let timer = IDLE_TIMER.get();
    if let Some(t) = timer
        && ticks != u64::MAX
    {
        if ticks == 0 {
            return;
        }
        t.arm(ticks);
    }
    super::cpu::wait_for_kick();
    if let Some(t) = timer {
        t.disarm();
    }
}

/// Masks every line of both legacy 8259 PICs, so no ISA interrupt can reach microhv's IDT
/// (the firmware leaves the PIT's IRQ 0 on vector 8, #DF's).
pub fn mask_legacy_pics() {
    // SAFETY: the PICs' data ports; writing 0xff to OCW1 masks all lines and nothing else.
    unsafe {
        rt::io::outb(0x21, 0xff);
        rt::io::outb(0xa1, 0xff);
    }
}
