//! Bringing up the application processors (APs), one at a time, with INIT-SIPI-SIPI through the
//! boot CPU's local APIC (Intel SDM Vol. 3A, "Typical BSP Initialization Sequence", 9.4.4.1 in
//! the 2023 edition: INIT, 10 ms, STARTUP, 200 µs, STARTUP, 200 µs), the delays timed with the
//! TSC.
//!
//! A STARTUP IPI starts an AP in real mode at CS = vector << 8, IP = 0, so its first
//! instructions must lie in a page below 1 MiB: the one `cpus::trampoline_page` picks (0x8000
//! unless a boot module lies there), which the frame allocator never hands out (it keeps the
//! whole first MiB, `boot::LOW_MEMORY_RESERVED`) and nothing else of microhv uses once the
//! loader's information is copied. The way from there to 64-bit mode is rt's (`rt::arch::
//! x86_64::ap`, shared with the test guests' vCPUs): a 16-bit trampoline, then the image's
//! 32-bit code loading the boot CPU's CR4 (an allow-list of its bits), CR3, EFER (LME, and NXE:
//! the tables use NX) and CR0; it calls [`ap_main`] on the stack set aside for the AP, which
//! loads the AP's own GDT and TSS and the shared IDT, enables its local APIC (so that a kick
//! reaches it) and VMX or SVM with its own region, records its APIC id ([`apic_id`]) and waits.
//!
//! Each AP's stacks are the image's (`gdt::ap_stacks`: two 16 KiB IST stacks and a stack as
//! large as the boot CPU's, each above a guard page `paging` leaves unmapped); its VMXON region
//! or host save area is a frame from the allocator, which an AP that does not come up keeps
//! (it may still wake and use it), and on SVM a second frame for its runner's host VMCB
//! ([`runner_frame`]), which goes back to the allocator if it does not come up. Once dom0 is
//! built, [`release_aps`] lets them run vCPUs (`crate::ap_run`).

use super::cpu::{self, rdtsc};
use super::{gdt, idt, lapic};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use microhv_core::cpus::{CpuList, MAX_CPUS};
use microhv_core::frames::{FRAME_SIZE, FrameAllocator};
use microhv_core::regs::{EFER_LMA, EFER_SVME};

/// ICR: INIT, level assert (SDM Vol. 3A, "Interrupt Command Register (ICR)").
const ICR_INIT: u32 = 0x4500;
/// ICR: STARTUP, to be or-ed with the trampoline's page number as vector.
const ICR_STARTUP: u32 = 0x4600;
/// The SDM's delays: after INIT, and after each STARTUP, in microseconds.
const INIT_DELAY_US: u64 = 10_000;
const STARTUP_DELAY_US: u64 = 200;
/// An xAPIC destination of all ones is a broadcast, never one CPU.
const XAPIC_BROADCAST: u32 = 0xff;
const IA32_EFER: u32 = 0xc000_0080;
/// How long an AP has to report, from the second STARTUP, before it is left out.
const TIMEOUT_MS: u64 = 1000;
/// The CR4 bits an AP takes from the boot CPU's CR4 in the trampoline (an allow-list: a bit the
/// AP lacked would #GP there, before it has an IDT): PAE (long mode), PGE, and OSFXSR and
/// OSXMMEXCPT (SSE, which compiled Rust uses). VMXE is the AP's own business later.
const CR4_KEEP: u64 = (1 << 5) | (1 << 7) | (1 << 9) | (1 << 10);

/// Where the AP being started is (`STATE`: the CPU number in bits 8 and up, one of these in
/// bits 7:0): the boot CPU sets `WAITING`; the AP moves it to `ARRIVED` (in Rust, on its stack),
/// `REPORTING`, then `ONLINE` or `FAILED`; the boot CPU moves it from `WAITING` or `ARRIVED` to
/// `ABANDONED` when its time is up. The number makes an AP that was given up on, and wakes late,
/// fail every step instead of taking the next AP's (CPU numbers are never reused).
const WAITING: u32 = 0;
const ARRIVED: u32 = 1;
const REPORTING: u32 = 2;
const ONLINE: u32 = 3;
const FAILED: u32 = 4;
const ABANDONED: u32 = 5;
static STATE: AtomicU32 = AtomicU32::new(ABANDONED);

/// Each online CPU's xAPIC id, by CPU number (`NO_CPU`: not online).
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NO_CPU) }; MAX_CPUS];
const NO_CPU: u32 = u32::MAX;

/// The xAPIC id of CPU `cpu` (the boot CPU is 0), for [`lapic::kick`]: `Some` for every CPU
/// online once [`start_aps`] started APs (without them there is nobody to kick).
pub fn apic_id(cpu: usize) -> Option<u32> {
    let id = APIC_IDS.get(cpu)?.load(Ordering::Acquire);
    (id != NO_CPU).then_some(id)
}

/// `STATE`'s value for CPU `n` in `phase`.
const fn tagged(n: u64, phase: u32) -> u32 {
    (n as u32) << 8 | phase
}

/// What the AP being started reads beyond rt's slots, by the names below.
static AP_DATA: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
const APIC_ID: usize = 0;
const FRAMES: usize = 1;
const SVM: usize = 2;

fn set(slot: usize, v: u64) {
    AP_DATA[slot].store(v, Ordering::Relaxed);
}

fn get(slot: usize) -> u64 {
    AP_DATA[slot].load(Ordering::Relaxed)
}

/// Waits `us` microseconds on the TSC, of `khz` ticks per millisecond, publishing the TSC all
/// the while for an AP that has started to set its own by (`sync_tsc`).
fn delay(khz: u64, us: u64) {
    let start = rdtsc();
    loop {
        let now = rdtsc();
        BSP_TSC.store(now, Ordering::Release);
        if now - start >= khz * us / 1000 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Starts every CPU of `cpus` but the first (the boot CPU), one at a time, with frames from
/// `frames`; `svm` says which extension they enable, `khz` is the TSC's rate. Returns how many
/// CPUs are online, the boot CPU included. A CPU that does not come up is reported and left out.
pub fn start_aps<const W: usize>(
    cpus: &CpuList,
    trampoline: u64,
    frames: &mut FrameAllocator<W>,
    svm: bool,
    khz: u64,
) -> u32 {
    let cr3 = cpu::cr3();
    if cpus.apic_ids.len() < 2 {
        return 1;
    }
    if lapic::x2apic_mode() {
        log::warn!("the firmware left the local APIC in x2APIC mode: no AP started");
        return 1;
    }
    // SAFETY: EFER exists on every 64-bit CPU.
    let efer = unsafe { cpu::rdmsr(IA32_EFER) } & !(EFER_SVME | EFER_LMA);
    // SAFETY: the trampoline page is RAM below 1 MiB that nothing else uses (module docs),
    // identity-mapped and writable.
    let prepared = unsafe {
        rt::arch::x86_64::ap::prepare(trampoline, cpu::cr0(), cr3, cpu::cr4() & CR4_KEEP, efer)
    };
    if let Err(why) = prepared {
        log::warn!("{why} (page {trampoline:#x}): no AP started");
        return 1;
    }
    set(SVM, svm.into());
    let apic = lapic::enable();
    // The live id, not CPUID's initial one: firmware may have changed it, and an INIT to
    // ourselves would reset the boot CPU.
    let me = lapic::id(apic);
    APIC_IDS[0].store(me, Ordering::Release);
    let startup = ICR_STARTUP | (trampoline >> 12) as u32;
    let mut online = 1;
    for (n, &id) in cpus.apic_ids.iter().enumerate().skip(1) {
        let started = match id {
            id if id == me => Err("it is the boot CPU's own APIC id"),
            id if id >= XAPIC_BROADCAST => Err("an id beyond the xAPIC's reach"),
            _ => start_ap(apic, startup, n as u64, id as u8, frames, khz),
        };
        match started {
            Ok(()) => online += 1,
            Err(why) => {
                log::warn!("cpu {n} (apic id {id}) left out: {why}");
                // Only an AP that came up builds a runner (`crate::ap_run`).
                if let Some(f) = runner_frame(n) {
                    let _ = frames.free(f);
                }
            }
        }
    }
    online
}

/// Starts CPU `n` (xAPIC id `dest`) with the STARTUP command `startup` and waits for its
/// report.
fn start_ap<const W: usize>(
    apic: u64,
    startup: u32,
    n: u64,
    dest: u8,
    frames: &mut FrameAllocator<W>,
    khz: u64,
) -> Result<(), &'static str> {
    let (_, stack) = gdt::ap_stacks(n as usize).ok_or("no stacks for it")?;
    if get(SVM) != 0 {
        let host = frames.alloc().ok_or("no frame for its host VMCB")?;
        // SAFETY: the frame was just allocated: ours, identity-mapped, aliased by nothing.
        unsafe { cpu::zero_qwords(host, FRAME_SIZE) };
        RUNNER_FRAMES[n as usize].store(host, Ordering::Release);
    }
    let region = frames.alloc().ok_or("no frame for its VMXON region or host save area")?;
    // SAFETY: as for the host VMCB's.
    unsafe { cpu::zero_qwords(region, FRAME_SIZE) };
    set(APIC_ID, dest.into());
    set(FRAMES, region);
    STATE.store(tagged(n, WAITING), Ordering::SeqCst);
    // SAFETY: the stack is this AP's in the image (`gdt::ap_stacks`); the AP before it reached
    // its entry or was given up on (and sent INIT). Fenced: visible before the IPI.
    unsafe { rt::arch::x86_64::ap::set_next(stack, ap_main, n) };
    let sent =
        lapic::ipi(apic, dest, ICR_INIT).map(|()| delay(khz, INIT_DELAY_US)).and_then(|()| {
            // An AP that already started ignores the second STARTUP (SDM Vol. 3A, "MP
            // Initialization Protocol Algorithm").
            (0..2).try_for_each(|_| {
                lapic::ipi(apic, dest, startup).map(|()| delay(khz, STARTUP_DELAY_US))
            })
        });
    let deadline = rdtsc() + khz * TIMEOUT_MS;
    loop {
        // For the AP to set its TSC by (`sync_tsc`).
        BSP_TSC.store(rdtsc(), Ordering::Release);
        let s = STATE.load(Ordering::Acquire);
        match s & 0xff {
            ONLINE => return Ok(()),
            FAILED => return Err("it could not enable virtualization (above)"),
            phase @ (WAITING | ARRIVED) if sent.is_err() || rdtsc() > deadline => {
                if STATE
                    .compare_exchange(s, tagged(n, ABANDONED), Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    // Back to waiting for a STARTUP, so that it cannot run late on the next
                    // AP's stack (INIT is not blocked outside VMX operation).
                    let _ = lapic::ipi(apic, dest, ICR_INIT);
                    return Err(match (sent, phase) {
                        (Err(e), _) => e,
                        (_, WAITING) => "it did not answer the start-up IPIs",
                        _ => "it stopped during start-up",
                    });
                }
            }
            _ => core::hint::spin_loop(),
        }
    }
}

/// Moves `STATE` from CPU `n`'s `from` to its `to`; false if the boot CPU gave up on this AP
/// first (or moved on to another).
fn advance(n: u64, from: u32, to: u32) -> bool {
    STATE
        .compare_exchange(tagged(n, from), tagged(n, to), Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// The boot CPU's TSC, published again and again while it waits for an AP's report.
static BSP_TSC: AtomicU64 = AtomicU64::new(0);
/// IA32_TIME_STAMP_COUNTER.
const IA32_TSC: u32 = 0x10;

/// Sets this AP's TSC to the boot CPU's, as it publishes it from the INIT on while it waits
/// for this AP (`delay` and the report loop): a TSC that started counting when the AP was
/// reset (QEMU TCG's) would otherwise lag by the whole boot, and guests' TSCs (a vCPU moves
/// between CPUs, its TSC offset unchanged), the device models' deadlines and the slices are
/// compared across CPUs. The value read is at most one of the boot CPU's loop iterations old.
/// Returns how far behind (negative: ahead of) the boot CPU's the AP's TSC was, if it was set.
fn sync_tsc() -> Option<i64> {
    let bsp = BSP_TSC.load(Ordering::Acquire);
    let mine = rdtsc();
    if mine.abs_diff(bsp) <= TSC_SKEW_TOLERATED {
        return None;
    }
    // SAFETY: the TSC MSR exists on every 64-bit CPU; writing it moves only this CPU's
    // counter, which nothing on this CPU has read yet but the comparison above.
    unsafe { cpu::wrmsr(IA32_TSC, bsp) };
    Some(bsp.wrapping_sub(mine) as i64)
}

/// A TSC difference from the boot CPU's left alone: more than the published value's age (one
/// iteration of the boot CPU's loop), less than a vCPU's move from one CPU to another takes
/// (an exit, the lock, an entry), so that a synchronized TSC, as on hardware, is not written
/// and a guest never sees its TSC go back when it moves. About 1.4 µs at 3 GHz.
const TSC_SKEW_TOLERATED: u64 = 4096;

/// An AP's first Rust code, on its own stack, interrupts off: its tables, its TSC, its
/// virtualization extension, its report; then it waits for dom0 and runs vCPUs.
extern "C" fn ap_main(n: u64) -> ! {
    if advance(n, WAITING, ARRIVED) {
        let n = n as usize;
        let id = get(APIC_ID);
        let Some((ist, _)) = gdt::ap_stacks(n) else { cpu::halt_forever() };
        let sel = gdt::init_cpu(n, ist);
        idt::init(sel.code.0);
        // With an IDT: a TSC write refused (#GP) is reported, not a triple fault.
        let skew = sync_tsc();
        // Software-enabled, or the fixed IPIs of kicks would not be accepted; its timer is the
        // alarm of its idle halts.
        lapic::enable();
        lapic::program_timer();
        let region = get(FRAMES);
        let (ext, r) = match get(SVM) {
            0 => ("VMX", crate::arch::vmx::enter_ap(region)),
            _ => ("SVM", crate::arch::svm::enable_ap(region)),
        };
        if advance(n as u64, ARRIVED, REPORTING) {
            let phase = match r {
                Ok(()) => {
                    log::info!("cpu {n} (apic id {id}) online, {ext} on");
                    if let Some(behind) = skew {
                        log::info!("cpu {n}: TSC set to the boot CPU's ({behind} ticks behind)");
                    }
                    // The id the start-up IPIs reached it by.
                    APIC_IDS[n].store(id as u32, Ordering::Release);
                    ONLINE
                }
                Err(e) => {
                    log::warn!("cpu {n} (apic id {id}): {e}");
                    FAILED
                }
            };
            STATE.store(tagged(n as u64, phase), Ordering::Release);
            if phase == ONLINE {
                // Halted (interrupts on, for the kick) until dom0 exists and vCPUs may run.
                while !RELEASED.load(Ordering::Acquire) {
                    cpu::wait_for_kick();
                }
                crate::ap_run(n);
            }
        }
    }
    cpu::halt_forever()
}

/// Set by the boot CPU once dom0 is built: the APs run vCPUs.
static RELEASED: AtomicBool = AtomicBool::new(false);

/// Lets every AP that came up run vCPUs (`crate::ap_run`).
pub fn release_aps() {
    RELEASED.store(true, Ordering::Release);
    for cpu in 1..MAX_CPUS {
        if let Some(id) = apic_id(cpu)
            && let Err(e) = lapic::kick(id)
        {
            log::warn!("cpu {cpu} was not released ({e}): it stays halted");
        }
    }
}

/// For each AP (SVM only): a zeroed frame for its runner's host VMCB, taken from the allocator
/// with its other frames at its start-up. An AP builds its runner only once released, when
/// dom0 may already run and read the free memory, which must not shrink behind it.
static RUNNER_FRAMES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// The frame set aside for CPU `cpu`'s runner, once.
pub fn runner_frame(cpu: usize) -> Option<u64> {
    let f = RUNNER_FRAMES.get(cpu)?.swap(0, Ordering::AcqRel);
    (f != 0).then_some(f)
}
