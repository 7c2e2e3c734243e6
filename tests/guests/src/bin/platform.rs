//! Checks the virtual platform as an ordinary kernel would use it, with interrupts on: the
//! local APIC timer (periodic and one-shot), self-IPIs and TPR masking, the I/O APIC routing
//! the PIT's IRQ 0 (pin 2), the PIT and local APIC timer rates against the ACPI PM timer, the
//! HPET counter's rate, the moffs and byte MMIO forms, the RTC and IA32_APIC_BASE (including a
//! global disable and re-enable), the ACPI tables its builder gave it (found through
//! `hvm_start_info.rsdp_paddr`, checked against `abi::platform` and against the devices it
//! really sees), and the ports and PCI addresses nobody answers (all ones, as on a PC); also
//! TPR masking through CR8, an NMI IPI (taken with interrupts off), the TSC-deadline timer, x2APIC mode, QEMU's fw_cfg,
//! the TSC / APIC-bus frequency leaves, and RFLAGS.RF in the frame of an injected #GP. Prints
//! one line per case and shuts down with the number of failures as its status.
//!
//! Rates: periodic interrupts must never come early (the Nth tick at least 95% of N periods
//! after the timer was started). With `strict=1` (Bochs, whose time counts instructions) they must also be on time
//! within 5%; under QEMU TCG time is the host's wall clock, so a loaded host legitimately
//! delays them (and coalesces ticks), and only the lower bound is a property of microhv.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::platform as hw;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::{println, rdtsc};
// Its own #GP handler skips the 2-byte RDMSR / WRMSR, as the hostile guest's catcher does.
use test_guests::arch::{rdmsr, wrmsr};

rt::pvh_note!();

const LAPIC: u64 = 0xfee0_0000;
const IOAPIC: u64 = 0xfec0_0000;
const HPET: u64 = 0xfed0_0000;
/// First vector with a counting handler; there are 16.
const VEC: usize = 0x30;
const PM_HZ: u64 = 3_579_545;
/// Timer periods each rate check counts (10 ms each).
const PERIODS: u64 = 10;

/// Interrupts taken, per vector from [`VEC`].
static COUNTS: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
/// NMIs taken.
static NMIS: AtomicU64 = AtomicU64::new(0);
/// Interrupts taken on [`X2_VEC`] (whose handler EOIs through the x2APIC MSR).
static X2_COUNT: AtomicU64 = AtomicU64::new(0);
/// RFLAGS in the frame of the last #GP (its handler skips the 2-byte RDMSR / WRMSR).
static GP_RFLAGS: AtomicU64 = AtomicU64::new(0);
/// The vector whose handler EOIs in x2APIC mode (the MMIO page is not decoded there).
const X2_VEC: usize = 0x50;

global_asm!(
    r#"
    .section .text.platform_stubs, "ax"
    .balign 16
    .global platform_stubs
platform_stubs:
    .set i, 0
    .rept 16
    .balign 16
    push rax
    mov eax, i
    jmp platform_common
    .set i, i + 1
    .endr
platform_common:
    lea rax, [rip + {counts} + rax * 8]
    lock inc qword ptr [rax]
    movabs rax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq

    .balign 16
    .global platform_nmi
platform_nmi:
    lock inc qword ptr [rip + {nmis}]
    iretq

    .balign 16
    .global platform_x2
platform_x2:
    push rax
    push rcx
    push rdx
    lock inc qword ptr [rip + {x2}]
    mov ecx, 0x80b
    xor eax, eax
    xor edx, edx
    wrmsr
    pop rdx
    pop rcx
    pop rax
    iretq

    .balign 16
    .global platform_gp
platform_gp:
    push rax
    mov rax, [rsp + 32]
    mov [rip + {gp}], rax
    add qword ptr [rsp + 16], 2
    pop rax
    add rsp, 8
    iretq
"#,
    counts = sym COUNTS,
    nmis = sym NMIS,
    x2 = sym X2_COUNT,
    gp = sym GP_RFLAGS,
);

#[cfg(image)]
unsafe extern "C" {
    /// The end of the image (rt's linker script); hosted builds have none.
    static __image_end: u8;
}

/// Where this image ends.
fn image_end() -> u64 {
    #[cfg(image)]
    return core::ptr::addr_of!(__image_end) as u64;
    #[cfg(not(image))]
    u64::MAX
}

unsafe extern "C" {
    static platform_stubs: u8;
    static platform_nmi: u8;
    static platform_x2: u8;
    static platform_gp: u8;
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

fn install_idt() {
    let base = core::ptr::addr_of!(platform_stubs) as u64;
    // SAFETY: one vCPU; the IDT is a static, its gates point at the stubs above with rt's
    // code selector.
    unsafe {
        let idt = &raw mut IDT;
        let gates = (0..16u64).map(|i| (VEC + i as usize, base + 16 * i)).chain([
            (2, core::ptr::addr_of!(platform_nmi) as u64),
            (13, core::ptr::addr_of!(platform_gp) as u64),
            (X2_VEC, core::ptr::addr_of!(platform_x2) as u64),
        ]);
        for (v, h) in gates {
            (*idt).0[2 * v] =
                (h & 0xffff) | (0x08 << 16) | (0x8e << 40) | (((h >> 16) & 0xffff) << 48);
            (*idt).0[2 * v + 1] = h >> 32;
        }
        #[repr(C, packed)]
        struct Idtr {
            limit: u16,
            base: u64,
        }
        let r = Idtr { limit: (size_of::<Idt>() - 1) as u16, base: idt as u64 };
        asm!("lidt [{}]", in(reg) &r, options(readonly, nostack));
    }
}

fn r32(a: u64) -> u32 {
    // SAFETY: a device register of the virtual platform (identity-mapped, emulated).
    unsafe { core::ptr::read_volatile(a as *const u32) }
}

fn w32(a: u64, v: u32) {
    // SAFETY: as for `r32`.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}

fn pm() -> u32 {
    // SAFETY: the PM timer port (read-only).
    unsafe { rt::io::inl(0x608) & 0xff_ffff }
}

fn outb(port: u16, v: u8) {
    // SAFETY: a platform port this guest programs.
    unsafe { rt::io::outb(port, v) }
}

fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`.
    unsafe { rt::io::inb(port) }
}

fn inw(port: u16) -> u16 {
    // SAFETY: as for `outb`.
    unsafe { rt::io::inw(port) }
}

fn outw(port: u16, v: u16) {
    // SAFETY: as for `outb`.
    unsafe { rt::io::outw(port, v) }
}

fn inl(port: u16) -> u32 {
    // SAFETY: as for `outb`.
    unsafe { rt::io::inl(port) }
}

fn outl(port: u16, v: u32) {
    // SAFETY: as for `outb`.
    unsafe { rt::io::outl(port, v) }
}

fn count(i: usize) -> u64 {
    COUNTS[i].load(Ordering::SeqCst)
}

/// Halts (interrupts on) until `done`, or gives up after `limit` PM-timer seconds.
fn wait(limit_s: u64, done: impl Fn() -> bool) -> bool {
    let mut left = limit_s * PM_HZ;
    let mut last = pm();
    while !done() {
        // SAFETY: STI; HLT atomically waits for the next interrupt.
        unsafe { asm!("sti", "hlt", "cli", options(nostack)) };
        let now = pm();
        let d = u64::from(now.wrapping_sub(last) & 0xff_ffff);
        last = now;
        if d >= left {
            return false;
        }
        left -= d;
    }
    true
}

/// PM-timer ticks between `a` and `b` (24 bits).
fn pm_delta(a: u32, b: u32) -> u64 {
    u64::from(b.wrapping_sub(a) & 0xff_ffff)
}

/// Whether `got` is within `pct` percent of `want`.
fn near(got: u64, want: u64, pct: u64) -> bool {
    got.abs_diff(want) * 100 <= want * pct
}

struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: core::fmt::Arguments<'_>) {
        println!("platform: {name}: {} ({detail})", if ok { "PASS" } else { "FAIL" });
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// Counts `n` interrupts on vector `VEC + i` and returns the PM ticks from the first to the
/// last (`None` if they did not all come).
/// PM-timer ticks from `t0` (read as the timer was started, when `count(i)` was `base`) until
/// the `n`th interrupt since: a periodic timer's `n`th tick is due `n` periods after it started,
/// whatever delayed the ticks in between — so a delivery that comes late (a loaded host)
/// cannot make the figure look early.
fn time_interrupts(i: usize, base: u64, t0: u32, n: u64) -> Option<u64> {
    if !wait(5, || count(i) >= base + n) {
        return None;
    }
    Some(pm_delta(t0, pm()))
}

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let strict = test_guests::number(&boot, "strict", 0) != 0;
    let on_time = |t: Option<u64>, want: u64| match t {
        Some(t) if strict => near(t, want, 5),
        Some(t) => t * 100 >= want * 95,
        None => false,
    };
    install_idt();
    let mut r = Report { passed: 0, failed: 0 };

    // IA32_APIC_BASE: enabled, BSP, at the default base.
    let base = rdmsr(0x1b);
    r.check("apic-base", base == 0xfee0_0900, format_args!("{base:#x}"));
    // Globally disabling the local APIC and enabling it again: IA32_APIC_BASE follows, and the
    // APIC comes back in its power-up state (spurious vector register 0xFF) at the same page.
    w32(LAPIC + 0xf0, 0x1ff);
    wrmsr(0x1b, base & !(1 << 11));
    let off = rdmsr(0x1b);
    wrmsr(0x1b, base);
    let on = rdmsr(0x1b);
    let svr = r32(LAPIC + 0xf0);
    r.check(
        "apic-disable-enable",
        off == base & !(1 << 11) && on == base && svr == 0xff,
        format_args!("disabled {off:#x}, enabled {on:#x}, SVR after {svr:#x}"),
    );

    // The version register read with the moffs form (A1 with a 64-bit address).
    let ver: u32;
    // SAFETY: a load from the APIC page.
    unsafe {
        asm!("movabs eax, dword ptr [0xfee00030]", out("eax") ver, options(nostack, readonly))
    };
    r.check("moffs-load", ver & 0xff == 0x14, format_args!("version {ver:#x}"));
    // A byte load from the HPET (its revision byte).
    let rev: u8;
    // SAFETY: a byte load from the HPET page.
    unsafe {
        asm!("mov {r}, byte ptr [{a}]", a = in(reg) HPET, r = out(reg_byte) rev, options(nostack, readonly))
    };
    r.check("byte-load", rev == 1, format_args!("HPET revision {rev}"));

    // Local APIC on: spurious vector 0xff, software enable.
    w32(LAPIC + 0xf0, 0x1ff);

    // The timer's bus clock and the TSC's frequency, from microhv's timing leaf; CPUID 0x15
    // must say the same (TSC = crystal × ebx / eax, the crystal being the APIC bus).
    let [tsc_khz, bus_khz, ..] = cpuid(abi::cpuid::LEAF_TIMING);
    let [den, num, crystal, _] = cpuid(0x15);
    let from15 = u64::from(crystal / 1000) * u64::from(num) / u64::from(den.max(1));
    r.check(
        "cpuid-frequencies",
        tsc_khz != 0 && from15 == u64::from(tsc_khz) && crystal / 1000 == bus_khz,
        format_args!(
            "TSC {tsc_khz} kHz, APIC bus {bus_khz} kHz; leaf 0x15 {den}:{num}, {crystal} Hz"
        ),
    );
    let bus_khz = bus_khz.max(1);

    // Periodic LAPIC timer: 10 ms of bus ticks, 10 periods.
    w32(LAPIC + 0x3e0, 0xb);
    w32(LAPIC + 0x320, (1 << 17) | (VEC as u32));
    let (base, t0) = (count(0), pm());
    w32(LAPIC + 0x380, bus_khz * 10);
    let t = time_interrupts(0, base, t0, PERIODS);
    w32(LAPIC + 0x320, 1 << 16);
    w32(LAPIC + 0x380, 0);
    let want = PERIODS * PM_HZ / 100;
    r.check(
        "lapic-timer-periodic",
        on_time(t, want),
        format_args!("{PERIODS} periods in {t:?} PM ticks, expected {want}"),
    );

    // One-shot: exactly one interrupt.
    w32(LAPIC + 0x320, (VEC + 1) as u32);
    w32(LAPIC + 0x380, bus_khz * 2);
    let came = wait(5, || count(1) == 1);
    let start = pm();
    while pm_delta(start, pm()) < PM_HZ / 100 {}
    r.check("lapic-timer-oneshot", came && count(1) == 1, format_args!("{} interrupts", count(1)));

    // Self-IPI through the ICR (shorthand self, fixed).
    w32(LAPIC + 0x300, 0x4_0000 | (VEC + 2) as u32);
    let ipi = wait(1, || count(2) == 1);
    r.check("self-ipi", ipi, format_args!("{} interrupts", count(2)));

    // TPR masking: with TPR class 4, a class-3 vector waits until TPR drops.
    w32(LAPIC + 0x80, 0x40);
    w32(LAPIC + 0x300, 0x4_0000 | (VEC + 3) as u32);
    // SAFETY: a short window with interrupts on.
    unsafe { asm!("sti", "nop", "nop", "cli", options(nostack)) };
    let held = count(3) == 0;
    w32(LAPIC + 0x80, 0);
    let then = wait(1, || count(3) == 1);
    r.check("tpr-masking", held && then, format_args!("held {held}, delivered after {then}"));

    // The same through CR8, the 64-bit view of TPR[7:4].
    // SAFETY: MOV to / from CR8 at CPL 0 in 64-bit mode; 4 and 0 are valid values.
    unsafe { asm!("mov cr8, {}", in(reg) 4u64, options(nostack)) };
    let apic_tpr = r32(LAPIC + 0x80);
    w32(LAPIC + 0x300, 0x4_0000 | (VEC + 6) as u32);
    // SAFETY: a short window with interrupts on.
    unsafe { asm!("sti", "nop", "nop", "cli", options(nostack)) };
    let held = count(6) == 0;
    let cr8: u64;
    // SAFETY: as above.
    unsafe { asm!("mov {}, cr8", out(reg) cr8, options(nostack)) };
    // SAFETY: as above.
    unsafe { asm!("mov cr8, {}", in(reg) 0u64, options(nostack)) };
    let then = wait(1, || count(6) == 1);
    r.check(
        "tpr-cr8",
        apic_tpr == 0x40 && cr8 == 4 && held && then,
        format_args!("APIC TPR {apic_tpr:#x}, CR8 read {cr8}, held {held}, delivered after {then}"),
    );

    // The PIT through I/O APIC pin 2 (the IRQ 0 override): mode 2 at 100 Hz, 10 ticks.
    w32(IOAPIC, 0x10 + 2 * 2);
    w32(IOAPIC + 0x10, (VEC + 4) as u32);
    w32(IOAPIC, 0x10 + 2 * 2 + 1);
    w32(IOAPIC + 0x10, 0);
    outb(0x43, 0x34);
    outb(0x40, (11932 & 0xff) as u8);
    outb(0x40, (11932 >> 8) as u8);
    // Counted from here: the count just written starts a new period (a tick of the PIT's
    // earlier 18.2 Hz programming may have come before).
    let (base, t0) = (count(4), pm());
    let t = time_interrupts(4, base, t0, PERIODS);
    w32(IOAPIC, 0x10 + 2 * 2);
    w32(IOAPIC + 0x10, 1 << 16);
    r.check(
        "ioapic-pit",
        on_time(t, want),
        format_args!("{PERIODS} PIT ticks in {t:?} PM ticks, expected {want}"),
    );

    // The HPET's main counter against the PM timer: 100 MHz. Each sample is an HPET read
    // bracketed by two PM-timer reads less than 500 µs apart, 50 ms apart, so a vCPU descheduled between
    // the two reads (under QEMU, whose time is the host's wall clock) does not skew it.
    let cap = r32(HPET + 4);
    w32(HPET + 0x10, 1);
    let sample = || {
        (0..1000).find_map(|_| {
            let a = pm();
            let h = r32(HPET + 0xf0);
            let b = pm();
            let d = pm_delta(a, b);
            (d < PM_HZ / 2_000).then(|| (h, a.wrapping_add((d / 2) as u32)))
        })
    };
    let hz = sample().and_then(|(h0, p0)| {
        while pm_delta(p0, pm()) < PM_HZ / 20 {}
        let (h1, p1) = sample()?;
        Some(u64::from(h1.wrapping_sub(h0)) * PM_HZ / pm_delta(p0, p1).max(1))
    });
    r.check(
        "hpet-counter",
        cap == 10_000_000 && hz.is_some_and(|hz| near(hz, 100_000_000, 2)),
        format_args!("period {cap} fs, {hz:?} Hz"),
    );

    // RTC: register D says the time is valid; seconds are BCD below 0x60.
    outb(0x70, 0x0d);
    let d = inb(0x71);
    outb(0x70, 0x00);
    let sec = inb(0x71);
    r.check(
        "rtc",
        d & 0x80 != 0 && sec < 0x60,
        format_args!("register D {d:#x}, seconds {sec:#x}"),
    );

    platform_extras(&mut r, &boot, u64::from(tsc_khz));

    // The ACPI tables, read as a kernel reads them, against the platform it really has.
    let mem = Mem { end: boot.ram_end().min(rt::IDENTITY_MAP_BYTES) };
    match acpi_tables(&mem, boot.info.rsdp_paddr) {
        Ok(n) => r.check(
            "acpi-tables",
            true,
            format_args!(
                "{n} tables checksummed; {VCPUS} vCPU assumed: hvm_start_info has no vCPU count"
            ),
        ),
        Err(e) => r.check("acpi-tables", false, format_args!("{e}")),
    }

    let (ok, failures) = absent_devices();
    r.check("absent-devices", ok, format_args!("{failures} unexpected values"));

    println!("platform: {} passed, {} failed", r.passed, r.failed);
    guest_rt::exit(r.failed)
}

/// CPUID `leaf` (subleaf 0).
fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// NMIs, the TSC-deadline timer, x2APIC mode, fw_cfg and RF in an injected fault's frame.
fn platform_extras(r: &mut Report, boot: &guest_rt::Boot, tsc_khz: u64) {
    // An NMI IPI to itself (ICR destination 0, delivery mode NMI) arrives with interrupts off.
    w32(LAPIC + 0x310, 0);
    w32(LAPIC + 0x300, 4 << 8);
    let start = pm();
    while NMIS.load(Ordering::SeqCst) == 0 && pm_delta(start, pm()) < PM_HZ {}
    let nmis = NMIS.load(Ordering::SeqCst);
    r.check("nmi-ipi", nmis == 1, format_args!("{nmis} NMIs taken with RFLAGS.IF clear"));

    // TSC-deadline mode: 5 ms ahead; the MSR reads back the deadline until the interrupt.
    let l1c = cpuid(1)[2];
    w32(LAPIC + 0x320, (2 << 17) | (VEC + 5) as u32);
    let deadline = rdtsc() + tsc_khz * 5;
    wrmsr(0x6e0, deadline);
    let armed = rdmsr(0x6e0);
    let fired = wait(5, || count(5) == 1);
    let late = rdtsc() >= deadline;
    let after = rdmsr(0x6e0);
    w32(LAPIC + 0x320, 1 << 16);
    r.check(
        "tsc-deadline",
        l1c & (1 << 24) != 0 && armed == deadline && fired && late && after == 0,
        format_args!(
            "CPUID {}, read back {}, fired {fired}, not early {late}, then {after}",
            l1c & (1 << 24) != 0,
            armed == deadline
        ),
    );

    // x2APIC: enter it, read the ID and version through MSRs, take a self-IPI EOIed through
    // the EOI MSR, then leave it (disable, re-enable) for the xAPIC page.
    let base = rdmsr(0x1b);
    let version = r32(LAPIC + 0x30);
    wrmsr(0x1b, base | (1 << 10));
    let x2 = rdmsr(0x1b);
    let (id, ver) = (rdmsr(0x802), rdmsr(0x803));
    wrmsr(0x80f, 0x1ff);
    wrmsr(0x83f, X2_VEC as u64);
    let took = wait(1, || X2_COUNT.load(Ordering::SeqCst) == 1);
    wrmsr(0x1b, base & !(3 << 10));
    wrmsr(0x1b, base);
    w32(LAPIC + 0xf0, 0x1ff);
    r.check(
        "x2apic",
        l1c & (1 << 21) != 0
            && x2 == base | (1 << 10)
            && id == 0
            && ver == u64::from(version)
            && took
            && rdmsr(0x1b) == base,
        format_args!("APIC_BASE {x2:#x}, ID {id}, version {ver:#x}, self-IPI taken {took}"),
    );

    // fw_cfg: the signature, the CPU count and the RAM size.
    outw(hw::FW_CFG_SELECTOR, 0);
    let sig = [0; 4].map(|_| inb(hw::FW_CFG_DATA));
    let item = |sel: u16, n: u32| {
        outw(hw::FW_CFG_SELECTOR, sel);
        (0..n).fold(0u64, |v, i| v | u64::from(inb(hw::FW_CFG_DATA)) << (8 * i))
    };
    let (cpus, ram) = (item(5, 2), item(3, 8));
    r.check(
        "fw-cfg",
        &sig == b"QEMU" && cpus == u64::from(VCPUS) && ram == boot.ram_end(),
        format_args!(
            "signature {sig:x?}, {cpus} CPU(s), {ram:#x} bytes of RAM (map ends at {:#x})",
            boot.ram_end()
        ),
    );

    // The PM timer against the TSC: 50 ms of PM ticks in TSC ticks, each end a PM read
    // bracketed by two TSC reads (a PM read is an exit), the tightest bracket of 32 (a vCPU
    // descheduled in between, under QEMU, or an exit that other CPUs' instructions lengthen,
    // under Bochs with several CPUs, is not the one taken); none within a millisecond: none.
    let sample = || {
        (0..32)
            .map(|_| {
                let a = rdtsc();
                let p = pm();
                let b = rdtsc();
                (b - a, p, a + (b - a) / 2)
            })
            .min_by_key(|s| s.0)
            .filter(|s| s.0 < tsc_khz)
            .map(|(_, p, t)| (p, t))
    };
    let hz = sample().and_then(|(p0, t0)| {
        while pm_delta(p0, pm()) < PM_HZ / 20 {}
        let (p1, t1) = sample()?;
        Some(pm_delta(p0, p1) * tsc_khz * 1000 / (t1 - t0).max(1))
    });
    r.check(
        "pm-timer-rate",
        hz.is_some_and(|hz| near(hz, PM_HZ, 1)),
        format_args!("{hz:?} Hz against the TSC ({tsc_khz} kHz), {PM_HZ} expected"),
    );

    // RAM past the image reads zero: microhv scrubs a domain's memory before showing it, also
    // after an earlier domain filled the same frames (dom0's scenarios run the toucher first).
    let from = image_end().saturating_add(4095) & !4095;
    let end = boot.ram_end().min(rt::IDENTITY_MAP_BYTES);
    let dirty = (from..end).step_by(8).find(|&a| {
        // SAFETY: RAM of this domain, identity-mapped by rt's entry, nothing else uses it.
        unsafe { core::ptr::read_volatile(a as *const u64) != 0 }
    });
    r.check(
        "ram-zeroed",
        dirty.is_none() && from < end,
        format_args!("[{from:#x}, {end:#x}): first non-zero word at {dirty:#x?}"),
    );

    // An MSR CPUID does not offer: microhv injects #GP, whose frame has RF set as the CPU
    // sets it for every fault.
    GP_RFLAGS.store(0, Ordering::SeqCst);
    rdmsr(0x1234_5678);
    let fl = GP_RFLAGS.load(Ordering::SeqCst);
    r.check("rf-on-injected-fault", fl & (1 << 16) != 0, format_args!("#GP frame RFLAGS {fl:#x}"));
}

/// vCPUs of this domain. `hvm_start_info` (version 1) carries no vCPU count, so the check
/// assumes what dom0's `platform` scenario builds: one.
const VCPUS: u32 = 1;

/// Where the ACPI tables may point: the domain's RAM (rt's entry identity-maps it), so that a
/// bad address in a table fails the check instead of crashing the domain.
struct Mem {
    end: u64,
}

/// An ACPI check that failed: the table, what was wrong, and the value found.
struct Bad(&'static str, &'static str, u64);

impl core::fmt::Display for Bad {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {} {:#x}", self.0, self.1, self.2)
    }
}

/// Table signatures, printed space-separated.
struct Sigs<'a>(&'a [[u8; 4]]);

impl core::fmt::Display for Sigs<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for s in self.0 {
            write!(f, " {}", core::str::from_utf8(s).unwrap_or("????"))?;
        }
        Ok(())
    }
}

/// `n` little-endian bytes at `at` of `b` (None past its end).
fn le(b: &[u8], at: usize, n: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(n)?)?;
    Some(s.iter().rev().fold(0, |v, &x| (v << 8) | u64::from(x)))
}

/// The byte sum ACPI checksums make zero.
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, &x| s.wrapping_add(x))
}

impl Mem {
    /// `len` bytes of guest-physical memory at `pa`, if they lie in RAM.
    fn bytes(&self, pa: u64, len: u64, what: &'static str) -> Result<&'static [u8], Bad> {
        if pa == 0 || pa.checked_add(len).is_none_or(|e| e > self.end) {
            return Err(Bad(what, "address outside RAM", pa));
        }
        // SAFETY: the range lies in this domain's RAM, which rt's entry identity-mapped; the
        // tables are only read, and nothing writes them while the guest runs.
        Ok(unsafe { core::slice::from_raw_parts(pa as *const u8, len as usize) })
    }

    /// The system description table at `pa`: its signature must be `sig` (any when `None`)
    /// and its bytes, over the length its header gives, must sum to zero.
    fn table(
        &self,
        pa: u64,
        sig: Option<&[u8; 4]>,
        what: &'static str,
    ) -> Result<&'static [u8], Bad> {
        let head = self.bytes(pa, 36, what)?;
        if sig.is_some_and(|s| head[..4] != s[..]) {
            return Err(Bad(what, "wrong signature at", pa));
        }
        let len = le(head, 4, 4).unwrap_or(0);
        // Every table has its 36-byte header; the bound only keeps a corrupt length in reason.
        if !(36..=0x10_0000).contains(&len) {
            return Err(Bad(what, "length", len));
        }
        let t = self.bytes(pa, len, what)?;
        if sum(t) != 0 {
            return Err(Bad(what, "checksum wrong at", pa));
        }
        Ok(t)
    }
}

/// A field of table `t`, or the reason it is missing.
fn field(t: &[u8], at: usize, n: usize, what: &'static str) -> Result<u64, Bad> {
    le(t, at, n).ok_or(Bad(what, "too short for the field at", at as u64))
}

/// Checks the tables from the RSDP at `rsdp` as a kernel would walk them, and their agreement
/// with `abi::platform` and this vCPU's local APIC; prints what it found and returns how many
/// system description tables it checksummed.
fn acpi_tables(mem: &Mem, rsdp: u64) -> Result<u32, Bad> {
    // The RSDP (revision 2): its 20-byte checksum and the extended one over its length.
    let p = mem.bytes(rsdp, 36, "RSDP")?;
    if &p[..8] != b"RSD PTR " {
        return Err(Bad("RSDP", "no signature at", rsdp));
    }
    if sum(&p[..20]) != 0 {
        return Err(Bad("RSDP", "checksum wrong at", rsdp));
    }
    let rev = p[15];
    let len = field(p, 20, 4, "RSDP")?;
    if rev < 2 || len < 36 {
        return Err(Bad("RSDP", "revision 2 with an XSDT expected, got", rev.into()));
    }
    if sum(mem.bytes(rsdp, len, "RSDP")?) != 0 {
        return Err(Bad("RSDP", "extended checksum wrong at", rsdp));
    }
    // A kernel that does not get `rsdp_paddr` scans the BIOS area for it, 16-byte aligned:
    // it must find the same one.
    let area = mem.bytes(0xe_0000, 0x2_0000, "BIOS area")?;
    let scanned = (0..area.len() - 20)
        .step_by(16)
        .find(|&o| &area[o..o + 8] == b"RSD PTR " && sum(&area[o..o + 20]) == 0)
        .map(|o| 0xe_0000 + o as u64);
    if scanned != Some(rsdp) {
        return Err(Bad("RSDP", "BIOS-area scan finds another at", scanned.unwrap_or(0)));
    }

    // The XSDT and every table it lists.
    let xsdt_pa = field(p, 24, 8, "RSDP")?;
    let xsdt = mem.table(xsdt_pa, Some(b"XSDT"), "XSDT")?;
    let mut checked = 1;
    let (mut madt, mut fadt, mut hpet) = (None, None, None);
    let mut sigs = [[b'-'; 4]; 8];
    let n = (xsdt.len() - 36) / 8;
    for i in 0..n {
        let t = mem.table(field(xsdt, 36 + 8 * i, 8, "XSDT")?, None, "XSDT entry")?;
        checked += 1;
        if let Some(s) = sigs.get_mut(i) {
            s.copy_from_slice(&t[..4]);
        }
        match &t[..4] {
            b"APIC" => madt = Some(t),
            b"FACP" => fadt = Some(t),
            b"HPET" => hpet = Some(t),
            _ => {}
        }
    }
    let listed = &sigs[..n.min(sigs.len())];
    let madt = madt.ok_or(Bad("XSDT", "no MADT among its entries:", n as u64))?;
    let fadt = fadt.ok_or(Bad("XSDT", "no FADT among its entries:", n as u64))?;
    let hpet = hpet.ok_or(Bad("XSDT", "no HPET table among its entries:", n as u64))?;

    // MADT: the local APIC address, one enabled local APIC per vCPU (with this vCPU's APIC
    // ID), the I/O APIC with GSI base 0, and IRQ 0 on GSI 2.
    let lapic = field(madt, 36, 4, "MADT")?;
    if lapic != hw::LAPIC_BASE {
        return Err(Bad("MADT", "local APIC address", lapic));
    }
    let my_id = r32(hw::LAPIC_BASE + 0x20) >> 24;
    let (mut cpus, mut cpu_id, mut ioapics, mut irq0) = (0u32, None, 0u32, None);
    let mut at = 44;
    while at < madt.len() {
        let kind = madt[at];
        let len = usize::from(madt.get(at + 1).copied().unwrap_or(0));
        let e = madt.get(at..at + len).filter(|_| len >= 2);
        let e = e.ok_or(Bad("MADT", "bad entry length at offset", at as u64))?;
        match kind {
            0 if field(e, 4, 4, "MADT processor")? & 1 != 0 => {
                cpus += 1;
                cpu_id = Some(u32::from(e[3]));
            }
            1 => {
                ioapics += 1;
                let (addr, gsi) =
                    (field(e, 4, 4, "MADT I/O APIC")?, field(e, 8, 4, "MADT I/O APIC")?);
                if addr != hw::IOAPIC_BASE {
                    return Err(Bad("MADT", "I/O APIC address", addr));
                }
                if gsi != 0 {
                    return Err(Bad("MADT", "I/O APIC GSI base", gsi));
                }
            }
            2 if field(e, 3, 1, "MADT override")? == 0 => {
                irq0 = Some(field(e, 4, 4, "MADT override")?)
            }
            _ => {}
        }
        at += len;
    }
    if cpus != VCPUS {
        return Err(Bad("MADT", "enabled local APICs:", cpus.into()));
    }
    if cpu_id != Some(my_id) {
        return Err(Bad("MADT", "processor's APIC ID is not this vCPU's, which is", my_id.into()));
    }
    if ioapics != 1 {
        return Err(Bad("MADT", "I/O APIC entries:", ioapics.into()));
    }
    if irq0 != Some(2) {
        return Err(Bad("MADT", "IRQ 0 override to GSI (or none):", irq0.unwrap_or(u64::MAX)));
    }

    // FADT: the PM timer and PM1a control blocks (32-bit and, in a revision-3+ FADT, the X_
    // addresses) and the DSDT, through DSDT and X_DSDT, which must agree.
    let pm_tmr = field(fadt, 76, 4, "FADT")?;
    let pm1a_cnt = field(fadt, 64, 4, "FADT")?;
    if pm_tmr != hw::PM_TMR_BLK.into() || field(fadt, 91, 1, "FADT")? != 4 {
        return Err(Bad("FADT", "PM timer block (or its length is not 4)", pm_tmr));
    }
    if pm1a_cnt != hw::PM1A_CNT_BLK.into() {
        return Err(Bad("FADT", "PM1a control block", pm1a_cnt));
    }
    let sci = field(fadt, 46, 2, "FADT")?;
    if sci != hw::SCI_IRQ.into() {
        return Err(Bad("FADT", "SCI interrupt", sci));
    }
    let dsdt32 = field(fadt, 40, 4, "FADT")?;
    let mut dsdt = dsdt32;
    if fadt.len() >= 244 {
        let x_dsdt = field(fadt, 140, 8, "FADT")?;
        if x_dsdt != 0 && dsdt32 != 0 && x_dsdt != dsdt32 {
            return Err(Bad("FADT", "X_DSDT differs from DSDT:", x_dsdt));
        }
        if x_dsdt != 0 {
            dsdt = x_dsdt;
        }
        // X_PM1a_CNT_BLK and X_PM_TMR_BLK are generic address structures at 172 and 208,
        // whose address is 4 bytes in.
        for (at, want, what) in
            [(176, hw::PM1A_CNT_BLK, "X_PM1a_CNT_BLK"), (212, hw::PM_TMR_BLK, "X_PM_TMR_BLK")]
        {
            let x = field(fadt, at, 8, "FADT")?;
            if x != 0 && x != u64::from(want) {
                return Err(Bad("FADT", what, x));
            }
        }
    }
    mem.table(dsdt, Some(b"DSDT"), "DSDT")?;
    checked += 1;

    // HPET: the event timer block's base address, in system memory.
    let (space, base) = (field(hpet, 40, 1, "HPET")?, field(hpet, 44, 8, "HPET")?);
    if space != 0 || base != hw::HPET_BASE {
        return Err(Bad("HPET", "base address (or not in memory space)", base));
    }

    println!(
        "platform: acpi: RSDP {rsdp:#x} rev {rev} (the BIOS-area scan finds it), XSDT {xsdt_pa:#x}:{}",
        Sigs(listed)
    );
    println!(
        "platform: acpi: MADT: LAPIC {lapic:#x}, {cpus} enabled CPU (APIC id {my_id}), I/O APIC {:#x} GSI 0, IRQ0->GSI2",
        hw::IOAPIC_BASE
    );
    println!(
        "platform: acpi: FADT: PM_TMR {pm_tmr:#x}, PM1a_CNT {pm1a_cnt:#x}, SCI {sci}, DSDT {dsdt:#x}; HPET {base:#x}"
    );
    Ok(checked)
}

/// Ports and PCI addresses nobody answers must look like absent hardware on a PC: reads all
/// ones at every width (IN AL / AX keeping the rest of EAX), writes dropped without a trace,
/// and PCI configuration reads of a missing device or with the enable bit clear all ones.
/// Returns whether all held, and how many did not.
fn absent_devices() -> (bool, u32) {
    let mut bad = 0;
    let mut expect = |what: &str, got: u64, want: u64| {
        if got != want {
            println!("platform: absent: {what}: {got:#x}, expected {want:#x}");
            bad += 1;
        }
    };
    // COM2 (dom0's UART; no domU has one), LPT1 and the primary ATA channel (dom0's disk),
    // before and after writes that a real UART, parallel port or ATA channel would keep
    // (scratch, line control, divisor, data, control; sector count, drive select, nIEN). No
    // command is written to the ATA channel: were it dom0's disk, the reads would show it.
    let absent_ports =
        || (0x2f8..=0x2ffu16).chain(0x378..=0x37a).chain(0x1f0..=0x1f7).chain([0x3f6]);
    for p in absent_ports() {
        expect("IN AL before writes", inb(p).into(), 0xff);
    }
    for (p, v) in [
        (0x2ff, 0x5a),
        (0x2fb, 0x80),
        (0x2f8, 0x01),
        (0x2fb, 0x03),
        (0x378, 0x55),
        (0x37a, 0x0c),
        (0x1f6, 0xa0),
        (0x1f2, 0x55),
        (0x3f6, 0x02),
    ] {
        outb(p, v);
    }
    outw(0x2f8, 0x1234);
    outl(0x378, 0x1234_5678);
    let mut all_ff = true;
    for p in absent_ports() {
        let v = inb(p);
        all_ff &= v == 0xff;
        expect("IN AL after writes", v.into(), 0xff);
    }
    expect("IN AX", inw(0x2f8).into(), 0xffff);
    expect("IN AX", inw(0x37a).into(), 0xffff);
    expect("IN EAX", inl(0x2fc).into(), 0xffff_ffff);
    // A byte or word IN replaces only AL or AX, as the CPU does.
    let (al, ax): (u32, u32);
    // SAFETY: reads of a port nobody has.
    unsafe {
        asm!("in al, dx", in("dx") 0x2f8u16, inout("eax") 0x1234_5600u32 => al, options(nostack));
        asm!("in ax, dx", in("dx") 0x378u16, inout("eax") 0x1234_0000u32 => ax, options(nostack));
    }
    expect("IN AL into EAX 0x12345600", al.into(), 0x1234_56ff);
    expect("IN AX into EAX 0x12340000", ax.into(), 0x1234_ffff);

    // PCI configuration mechanism #1: the host bridge at 00:00.0 (what microhv's platform
    // offers: an i440FX, 8086:1237, class 06/00), nothing at 00:01.0 or on bus 1, and all ones
    // on 0xCFC while the enable bit is clear.
    let config = |addr: u32| {
        outl(0xcf8, addr);
        inl(0xcfc)
    };
    let host = config(0x8000_0000);
    expect("PCI 00:00.0 vendor/device", host.into(), 0x1237_8086);
    expect("PCI 00:00.0 class", (config(0x8000_0008) >> 16).into(), 0x0600);
    let dev1 = config(0x8000_0800);
    expect("PCI 00:01.0", dev1.into(), 0xffff_ffff);
    let bus1 = config(0x8001_0000);
    expect("PCI 01:00.0", bus1.into(), 0xffff_ffff);
    let disabled = config(0x0000_0000);
    expect("PCI read with the enable bit clear", disabled.into(), 0xffff_ffff);
    // CONFIG_ADDRESS keeps only its defined bits; byte accesses are not CONFIG_ADDRESS.
    outl(0xcf8, u32::MAX);
    let addr = inl(0xcf8);
    expect("CONFIG_ADDRESS after writing all ones", addr.into(), 0x80ff_fffc);
    outl(0xcf8, 0x8000_0000);
    expect("IN AL from 0xCF8", inb(0xcf8).into(), 0xff);
    expect("CONFIG_ADDRESS after a byte access", inl(0xcf8).into(), 0x8000_0000);
    // A write to the host bridge's read-only ID register changes nothing.
    outl(0xcfc, 0);
    expect("PCI 00:00.0 after a write", config(0x8000_0000).into(), 0x1237_8086);
    let word = {
        outl(0xcf8, 0x8000_0000);
        inw(0xcfe)
    };
    expect("PCI 00:00.0 device ID (16-bit read)", word.into(), 0x1237);
    // Memory nothing claims (above RAM, below the devices): reads all ones and keeps no write,
    // in every width, as on a PC.
    let mut absent_ok = true;
    for at in [0x3000_0000u64, 0x3fff_fff8, 0xc000_0000] {
        // SAFETY: guest-physical space with no RAM and no device (identity-mapped by rt).
        let (b, d, q) = unsafe {
            core::ptr::write_volatile(at as *mut u16, 0x0741);
            let b = core::ptr::read_volatile(at as *const u8);
            (
                b,
                core::ptr::read_volatile(at as *const u32),
                core::ptr::read_volatile(at as *const u64),
            )
        };
        absent_ok &= (b, d, q) == (0xff, u32::MAX, u64::MAX);
        expect("absent memory, 8-bit", b.into(), 0xff);
        expect("absent memory, 32-bit", d.into(), 0xffff_ffff);
        expect("absent memory, 64-bit", q, u64::MAX);
    }
    println!(
        "platform: absent: COM2 0x2f8-0x2ff, LPT1 0x378-0x37a, ATA 0x1f0-0x1f7 and 0x3f6 read 0xff after writes: {all_ff}"
    );
    println!(
        "platform: absent: PCI 00:00.0 {host:#x}, 00:01.0 {dev1:#x}, 01:00.0 {bus1:#x}, enable clear {disabled:#x}, 0xCF8 {addr:#x}"
    );
    println!(
        "platform: absent: memory at 0x30000000, 0x3ffffff8, 0xc0000000 reads all ones: {absent_ok}"
    );
    (bad == 0, bad)
}
