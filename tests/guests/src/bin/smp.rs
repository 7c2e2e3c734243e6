//! A multiprocessor guest (issue #14): vCPU 0, the bootstrap processor (BSP) dom0 started,
//! finds the domain's CPUs in the ACPI MADT, starts every other vCPU as an OS starts its
//! application processors (INIT, STARTUP, STARTUP through its xAPIC, into a 16-bit trampoline:
//! `test_guests::smp`), and then every vCPU runs the same workload in parallel: `rounds=N`
//! rounds of a small hash, each ended with a fixed IPI ([`IPI_VECTOR`]) to the next vCPU in the
//! MADT's order (physical destination: that vCPU's APIC ID), which counts it per APIC ID in an
//! IDT handler and EOIs. The BSP prints one verdict line,
//! `smp: N vCPUs: work [..] ipis [..] ...: ok`, and shuts down with status 0; `FAIL` and status
//! 1 if a vCPU did not come up, did not finish, or did not take every IPI it was sent. Every
//! wait is bounded by the TSC.
//!
//! Why the MADT: `hvm_start_info` has no vCPU count, CPUID's topology leaves read zeros under
//! microhv, and the MADT is where an OS finds its CPUs and their APIC IDs (which the IPIs
//! need). `vcpus=N` on the command line makes a different count a failure.
//!
//! A fixed IPI sent while the target still has the previous one pending (its IRR bit set)
//! merges with it, as on hardware; so each vCPU sends its next IPI only once the previous one
//! was taken, which makes "received = sent" an exact check. Every wait yields the CPU to
//! microhv (the `Yield` hypercall, as a PV spinlock would): all vCPUs share microhv's one CPU,
//! and one that spins keeps the CPU from the vCPU it waits for until its time slice ends
//! (`spin` on the command line makes every wait spin instead, for comparison). The line
//! before the verdict gives each vCPU's slowest IPI: TSC ticks from its ICR write until it saw
//! the receiver's count go up. With `touch=N`, each vCPU then writes and reads back its share
//! of N MiB of memory (from 4 MiB up) three times, and a word read back wrong is a failure.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::hypercall::MAX_VCPUS_PER_DOMAIN;
use abi::platform::LAPIC_BASE;
use abi::pvh::{MEMMAP_RAM, MemmapEntry};
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use guest_rt::{println, rdtsc};
use test_guests::{lapic, madt, smp};

rt::pvh_note!();

/// vCPUs a domain can have.
const MAX_VCPUS: usize = MAX_VCPUS_PER_DOMAIN as usize;
/// The vector of the workload's IPIs.
const IPI_VECTOR: u8 = 0x40;
/// The local APIC's spurious-interrupt vector (its handler only returns: no EOI, per the SDM).
const SPURIOUS_VECTOR: u8 = 0xff;
/// Rounds per vCPU unless `rounds=N` says otherwise.
const DEFAULT_ROUNDS: u64 = 32;
/// Steps of the hash per round.
const HASH_STEPS: u64 = 20_000;
/// Bytes of each AP's stack.
const AP_STACK_BYTES: usize = 16 * 1024;
/// How long an AP has to report after its second STARTUP.
const AP_REPORT_MS: u64 = 1000;
/// How long the workload may take, start-up excluded (generous: under Bochs the TSC counts
/// instructions, and four vCPUs share one host CPU with dom0).
const WORKLOAD_MS: u64 = 60_000;
/// The 64-bit code selector of rt's GDT (and of the APs' GDT), which the IDT gates name.
const CODE_SELECTOR: u64 = 0x08;
/// IDT gate type: present, DPL 0, 64-bit interrupt gate (IF cleared on entry).
const INTERRUPT_GATE: u64 = 0x8e;
/// Not yet reported (`ARRIVED`).
const NOBODY: usize = usize::MAX;
/// xorshift64*'s multiplier (Vigna, "An experimental exploration of Marsaglia's xorshift
/// generators, scrambled").
const XORSHIFT_STAR: u64 = 0x2545_f491_4f6c_dd1d;
/// Bytes of a page (the trampoline's).
const PAGE_BYTES: u64 = 4096;

/// IPIs taken, per APIC ID (the handler reads its own ID from the APIC page).
static RECEIVED: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// Rounds of work done, per vCPU.
static WORK: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// IPIs sent, per sending vCPU (each sends to the next one only).
static SENT: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// The last hash, per vCPU (so the work is not optimised away).
static HASH: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// Set when a vCPU finished its rounds (or gave up, see [`STUCK`]).
static DONE: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
/// Set when a vCPU gave up waiting for its previous IPI to be taken.
static STUCK: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
/// The APIC IDs, by vCPU index (the BSP first, then the MADT's order).
static IDS: [AtomicU8; MAX_VCPUS] = [const { AtomicU8::new(0) }; MAX_VCPUS];
/// The APIC ID each AP read from its own APIC page.
static SEEN_IDS: [AtomicU8; MAX_VCPUS] = [const { AtomicU8::new(0) }; MAX_VCPUS];
/// vCPUs taking part.
static VCPUS: AtomicUsize = AtomicUsize::new(1);
/// Rounds per vCPU.
static ROUNDS: AtomicU64 = AtomicU64::new(DEFAULT_ROUNDS);
/// The index of the last AP that reported in.
static ARRIVED: AtomicUsize = AtomicUsize::new(NOBODY);
/// Set by the BSP once every AP is up: the workload starts.
static GO: AtomicBool = AtomicBool::new(false);
/// The TSC after which every wait gives up.
static DEADLINE: AtomicU64 = AtomicU64::new(0);
/// The most TSC ticks an IPI took to be taken, per sending vCPU.
static SLOWEST: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// Waits spin instead of yielding (`spin`).
static SPIN: AtomicBool = AtomicBool::new(false);
/// MiB each vCPU writes and reads back after its rounds (`touch=N` in all, split evenly; 0:
/// none).
static TOUCH_MIB: AtomicU64 = AtomicU64::new(0);
/// Words read back wrong, per vCPU.
static BAD: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];
/// Where the touched memory starts: above the image, its stacks and its page tables.
const TOUCH_BASE: u64 = 4 << 20;
/// Write-then-verify passes over the touched memory.
const TOUCH_PASSES: u64 = 3;

#[repr(C, align(16))]
struct Stack([u8; AP_STACK_BYTES]);
/// The APs' stacks, by vCPU index (the BSP's, index 0, is unused: it runs on rt's).
static mut STACKS: [Stack; MAX_VCPUS] = [const { Stack([0; AP_STACK_BYTES]) }; MAX_VCPUS];

global_asm!(
    r#"
    .section .text.smp_handlers, "ax"
    .global smp_ipi_handler
smp_ipi_handler:
    push rax
    push rcx
    movabs rax, {id_reg}
    mov eax, dword ptr [rax]
    shr eax, {id_shift}
    lea rcx, [rip + {received}]
    lock inc qword ptr [rcx + rax * 8]
    movabs rax, {eoi_reg}
    mov dword ptr [rax], 0
    pop rcx
    pop rax
    iretq

    .global smp_spurious_handler
smp_spurious_handler:
    iretq
"#,
    id_reg = const LAPIC_BASE + lapic::REG_ID,
    id_shift = const lapic::ID_SHIFT,
    eoi_reg = const LAPIC_BASE + lapic::REG_EOI,
    received = sym RECEIVED,
);

unsafe extern "C" {
    static smp_ipi_handler: u8;
    static smp_spurious_handler: u8;
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

/// One IDT for every vCPU: written by the BSP before any AP starts, read-only after.
static mut IDT: Idt = Idt([0; 512]);

/// Fills the IDT's two gates (the BSP, once, before starting any AP).
fn build_idt() {
    for (v, h) in [
        (IPI_VECTOR, (&raw const smp_ipi_handler) as u64),
        (SPURIOUS_VECTOR, (&raw const smp_spurious_handler) as u64),
    ] {
        let v = usize::from(v);
        let low = (h & 0xffff)
            | (CODE_SELECTOR << 16)
            | (INTERRUPT_GATE << 40)
            | (((h >> 16) & 0xffff) << 48);
        // SAFETY: only the BSP writes the IDT, before any AP runs or interrupts are on.
        unsafe {
            let idt = &raw mut IDT;
            (*idt).0[2 * v] = low;
            (*idt).0[2 * v + 1] = h >> 32;
        }
    }
}

/// Loads the shared IDT on this vCPU.
fn load_idt() {
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let r = Idtr { limit: (size_of::<Idt>() - 1) as u16, base: (&raw const IDT) as u64 };
    // SAFETY: the IDT is a static that lives for ever, its gates point at the handlers above
    // with the 64-bit code selector every vCPU runs with.
    unsafe { asm!("lidt [{}]", in(reg) &r, options(readonly, nostack)) };
}

/// Gives the CPU to microhv's other vCPUs while waiting (or, with `spin`, only says so to the
/// CPU).
fn idle() {
    if SPIN.load(Ordering::Relaxed) {
        core::hint::spin_loop();
    } else {
        let _ = guest_rt::hv().yield_now();
    }
}

/// Waits until `done` holds or the TSC passes `deadline`; false on the deadline.
fn wait_until(deadline: u64, done: impl Fn() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if rdtsc() > deadline {
            return false;
        }
        idle();
    }
}

/// A round's work: `steps` of xorshift64*.
fn hash(mut h: u64, steps: u64) -> u64 {
    for _ in 0..steps {
        h ^= h >> 12;
        h ^= h << 25;
        h ^= h >> 27;
        h = core::hint::black_box(h.wrapping_mul(XORSHIFT_STAR));
    }
    h
}

/// vCPU `i`'s workload, interrupts on: its rounds, each ended with an IPI to the next vCPU.
fn work(i: usize) {
    let n = VCPUS.load(Ordering::Acquire);
    let next = IDS[(i + 1) % n].load(Ordering::Relaxed);
    let deadline = DEADLINE.load(Ordering::Relaxed);
    // SAFETY: the IDT is loaded and the APIC enabled: the IPIs can be taken.
    unsafe { asm!("sti", options(nomem, nostack)) };
    let mut h = i as u64 + 1;
    for _ in 0..ROUNDS.load(Ordering::Relaxed) {
        h = hash(h, HASH_STEPS);
        WORK[i].fetch_add(1, Ordering::Relaxed);
        // Counted before it is sent: the receiver may take it before `send` returns.
        let sent = SENT[i].fetch_add(1, Ordering::Release) + 1;
        let t = rdtsc();
        if !lapic::send(next, lapic::ICR_FIXED | lapic::ICR_ASSERT | u32::from(IPI_VECTOR)) {
            SENT[i].fetch_sub(1, Ordering::Relaxed);
            STUCK[i].store(true, Ordering::Relaxed);
            break;
        }
        // Taken before the next is sent, which would otherwise merge with it.
        let taken = || RECEIVED[usize::from(next)].load(Ordering::Acquire) >= sent;
        if !wait_until(deadline, taken) {
            STUCK[i].store(true, Ordering::Relaxed);
            break;
        }
        SLOWEST[i].fetch_max(rdtsc() - t, Ordering::Relaxed);
    }
    HASH[i].store(h, Ordering::Relaxed);
    touch(i, n);
    DONE[i].store(true, Ordering::Release);
}

/// The word vCPUs write at `addr` in pass `pass`.
fn pattern(addr: u64, pass: u64) -> u64 {
    addr.rotate_left(17) ^ pass.wrapping_mul(XORSHIFT_STAR)
}

/// vCPU `i` of `n` writes its share of the `touch` memory and reads it back, [`TOUCH_PASSES`]
/// times, counting the words that differ: run while dom0 lowers and raises the domain's MMU
/// page cap (`scenario::smp`), it catches a translation one CPU kept after another zapped it.
fn touch(i: usize, n: usize) {
    let share = (TOUCH_MIB.load(Ordering::Relaxed) << 20) / n as u64 / 8;
    let base = TOUCH_BASE + i as u64 * share * 8;
    for pass in 0..TOUCH_PASSES {
        for w in 0..share {
            let a = base + w * 8;
            // SAFETY: [TOUCH_BASE, + touch MiB) is this domain's RAM (the scenario gives it
            // enough; `rt_main` checks), identity-mapped, and this vCPU's share is its alone.
            unsafe { core::ptr::write_volatile(a as *mut u64, pattern(a, pass)) };
        }
        for w in 0..share {
            let a = base + w * 8;
            // SAFETY: as above.
            if unsafe { core::ptr::read_volatile(a as *const u64) } != pattern(a, pass) {
                BAD[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        // Progress for dom0, whose wait restarts on every line (a pass takes seconds under
        // QEMU while dom0 zaps the tables again and again).
        println!("smp: vCPU {i} touched pass {pass}");
    }
}

/// An AP's first Rust code (from the trampoline), interrupts off, on its own stack: its IDT
/// and APIC, its report, the workload once the BSP says go; then it halts with interrupts on,
/// still taking the IPIs sent to it.
extern "C" fn ap_main(i: u64) -> ! {
    let i = i as usize;
    load_idt();
    lapic::enable(SPURIOUS_VECTOR);
    SEEN_IDS[i].store(lapic::id(), Ordering::Relaxed);
    ARRIVED.store(i, Ordering::Release);
    if wait_until(DEADLINE.load(Ordering::Relaxed), || GO.load(Ordering::Acquire)) {
        work(i);
    }
    loop {
        // SAFETY: halts until the next interrupt; the handlers above take it.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
    }
}

fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// True if the trampoline page is RAM in the domain's memory map.
fn trampoline_is_ram(boot: &guest_rt::Boot) -> bool {
    let page = smp::TRAMPOLINE_PA..smp::TRAMPOLINE_PA + PAGE_BYTES;
    (0..u64::from(boot.info.memmap_entries)).any(|k| {
        let at = boot.info.memmap_paddr + k * size_of::<MemmapEntry>() as u64;
        // SAFETY: the memory map lies in the start page microhv built for this domain.
        let e = unsafe { core::ptr::read_unaligned(at as *const MemmapEntry) };
        e.kind == MEMMAP_RAM && e.addr <= page.start && page.end <= e.addr + e.size
    })
}

fn fail(why: &str) -> ! {
    println!("smp: FAIL: {why}");
    guest_rt::exit(1)
}

/// Finds the vCPUs and starts the APs; returns how many vCPUs there are and each AP's start-up
/// time (TSC ticks from its INIT to its report).
fn bring_up(boot: &guest_rt::Boot, khz: u64) -> (usize, [u64; MAX_VCPUS]) {
    let mut ids = [0u8; MAX_VCPUS];
    let n = match madt::local_apic_ids(boot.info.rsdp_paddr, &mut ids) {
        Ok(0) => fail("the MADT lists no enabled local APIC"),
        Ok(n) => n,
        Err(why) => fail(why),
    };
    let want = test_guests::number(boot, "vcpus", 0) as usize;
    if want != 0 && want != n {
        println!("smp: the MADT lists {n} vCPUs, {want} expected");
        fail("wrong vCPU count");
    }
    // The BSP is index 0 whatever its place in the MADT (which lists it first on a PC).
    let me = lapic::id();
    let Some(at) = ids[..n].iter().position(|&id| id == me) else {
        fail("the BSP's APIC ID is not in the MADT")
    };
    ids[..=at].rotate_right(1);
    for (slot, &id) in IDS.iter().zip(&ids[..n]) {
        slot.store(id, Ordering::Relaxed);
    }
    SEEN_IDS[0].store(me, Ordering::Relaxed);
    VCPUS.store(n, Ordering::Release);
    let mut ticks = [0; MAX_VCPUS];
    if n == 1 {
        return (n, ticks);
    }
    if !trampoline_is_ram(boot) {
        fail("the trampoline page is not RAM in the memory map");
    }
    if let Err(why) = smp::prepare() {
        fail(why);
    }
    for (i, &id) in ids.iter().enumerate().take(n).skip(1) {
        // SAFETY: only the address is taken; AP `i` alone uses this stack.
        let top = unsafe { (&raw mut STACKS[i]).add(1) } as u64;
        let start = rdtsc();
        // SAFETY: the stack is AP `i`'s alone; the AP before it reported (or the guest failed
        // and stopped) before this one starts.
        if !unsafe { smp::start_ap(id, top, ap_main, i as u64, khz, &mut idle) } {
            fail("the ICR stayed busy");
        }
        let deadline = rdtsc() + khz * AP_REPORT_MS;
        if !wait_until(deadline, || ARRIVED.load(Ordering::Acquire) == i) {
            println!("smp: vCPU {i} (APIC ID {id}) did not report within {AP_REPORT_MS} ms");
            fail("an AP did not start");
        }
        ticks[i] = rdtsc() - start;
    }
    (n, ticks)
}

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let khz = u64::from(cpuid(abi::cpuid::LEAF_TIMING)[0]);
    if khz == 0 {
        fail("no TSC rate in CPUID 0x4000_0010");
    }
    let rounds = test_guests::number(&boot, "rounds", DEFAULT_ROUNDS).max(1);
    ROUNDS.store(rounds, Ordering::Relaxed);
    SPIN.store(boot.has_flag("spin"), Ordering::Relaxed);
    let touch_mib = test_guests::number(&boot, "touch", 0);
    if TOUCH_BASE + (touch_mib << 20) > boot.ram_end() {
        fail("touch= goes beyond this domain's RAM");
    }
    TOUCH_MIB.store(touch_mib, Ordering::Relaxed);
    build_idt();
    load_idt();
    lapic::enable(SPURIOUS_VECTOR);
    // Bounds the APs' wait for the go too.
    DEADLINE
        .store(rdtsc() + khz * (WORKLOAD_MS + AP_REPORT_MS * MAX_VCPUS as u64), Ordering::Relaxed);
    let (n, startup) = bring_up(&boot, khz);
    let ids: [u8; MAX_VCPUS] = core::array::from_fn(|i| IDS[i].load(Ordering::Relaxed));
    println!(
        "smp: {n} vCPUs up, APIC IDs {:?}; start-up ticks (INIT to report) {:?}",
        &ids[..n],
        &startup[1..n]
    );
    let t0 = rdtsc();
    DEADLINE.store(t0 + khz * WORKLOAD_MS, Ordering::Relaxed);
    GO.store(true, Ordering::Release);
    work(0);
    // Every vCPU done and every IPI taken (each sender waited for its own; checked again).
    let finished = wait_until(DEADLINE.load(Ordering::Relaxed), || {
        (0..n).all(|i| {
            DONE[i].load(Ordering::Acquire)
                && RECEIVED[usize::from(ids[(i + 1) % n])].load(Ordering::Acquire)
                    >= SENT[i].load(Ordering::Acquire)
        })
    });
    let ticks = rdtsc() - t0;
    let get = |a: &[AtomicU64; MAX_VCPUS]| -> [u64; MAX_VCPUS] {
        core::array::from_fn(|i| a[i].load(Ordering::Acquire))
    };
    let (work, sent, slowest) = (get(&WORK), get(&SENT), get(&SLOWEST));
    let ipis: [u64; MAX_VCPUS] =
        core::array::from_fn(|i| RECEIVED[usize::from(ids[i])].load(Ordering::Acquire));
    let seen: [u8; MAX_VCPUS] = core::array::from_fn(|i| SEEN_IDS[i].load(Ordering::Relaxed));
    let mut why = None;
    for i in 0..n {
        let from = (i + n - 1) % n;
        if seen[i] != ids[i] {
            why = why.or(Some("a vCPU's APIC ID differs from the MADT's"));
        }
        if STUCK[i].load(Ordering::Relaxed) {
            why = why.or(Some("an IPI was never taken"));
        }
        if !DONE[i].load(Ordering::Acquire) || work[i] != rounds {
            why = why.or(Some("a vCPU did not finish its rounds"));
        }
        if ipis[i] < sent[from] {
            why = why.or(Some("a vCPU took fewer IPIs than it was sent"));
        }
    }
    let (total_sent, total_taken) = (sent[..n].iter().sum::<u64>(), ipis[..n].iter().sum::<u64>());
    if total_sent != total_taken || total_sent != n as u64 * rounds {
        why = why.or(Some("the IPI totals do not add up"));
    }
    if !finished {
        why = why.or(Some("timed out"));
    }
    let bad: u64 = BAD.iter().map(|b| b.load(Ordering::Relaxed)).sum();
    if bad != 0 {
        why = why.or(Some("touched memory read back wrong"));
    }
    let hashes = HASH.iter().fold(0, |a, h| a ^ h.load(Ordering::Relaxed));
    // Two lines, each well within the console's line buffer, the verdict last.
    println!("smp: slowest IPI per sender {:?} TSC ticks, hash {hashes:#x}", &slowest[..n]);
    if touch_mib != 0 {
        println!("smp: touched {touch_mib} MiB x {TOUCH_PASSES} passes: {bad} words wrong");
    }
    println!(
        "smp: {n} vCPUs: work {:?} ipis {:?} (sent {:?}; {ticks} ticks): {}{}",
        &work[..n],
        &ipis[..n],
        &sent[..n],
        if why.is_some() { "FAIL: " } else { "ok" },
        why.unwrap_or("")
    );
    guest_rt::exit(if why.is_none() { 0 } else { 1 })
}
