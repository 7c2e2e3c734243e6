//! Checks the virtual platform as an ordinary kernel would use it, with interrupts on: the
//! local APIC timer (periodic and one-shot), self-IPIs and TPR masking, the I/O APIC routing
//! the PIT's IRQ 0 (pin 2), the PIT and local APIC timer rates against the ACPI PM timer, the
//! HPET counter's rate, the moffs and byte MMIO forms, the RTC and IA32_APIC_BASE (including a
//! global disable and re-enable). Prints one
//! line per case and shuts down with the number of failures as its status.
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

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};
use guest_rt::println;

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
"#,
    counts = sym COUNTS,
);

unsafe extern "C" {
    static platform_stubs: u8;
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
        for i in 0..16u64 {
            let h = base + 16 * i;
            let v = VEC + i as usize;
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
    let (lo, hi): (u32, u32);
    // SAFETY: reading an MSR CPUID advertises (APIC).
    unsafe { asm!("rdmsr", in("ecx") 0x1b, out("eax") lo, out("edx") hi, options(nostack)) };
    let base = (u64::from(hi) << 32) | u64::from(lo);
    r.check("apic-base", base == 0xfee0_0900, format_args!("{base:#x}"));
    // Globally disabling the local APIC and enabling it again: IA32_APIC_BASE follows, and the
    // APIC comes back in its power-up state (spurious vector register 0xFF) at the same page.
    let wrmsr = |v: u64| {
        // SAFETY: IA32_APIC_BASE with values the SDM allows (EN toggled, base unchanged).
        unsafe {
            asm!("wrmsr", in("ecx") 0x1b, in("eax") v as u32, in("edx") (v >> 32) as u32,
                 options(nostack))
        };
    };
    let rdmsr = || {
        let (lo, hi): (u32, u32);
        // SAFETY: reading IA32_APIC_BASE.
        unsafe { asm!("rdmsr", in("ecx") 0x1b, out("eax") lo, out("edx") hi, options(nostack)) };
        (u64::from(hi) << 32) | u64::from(lo)
    };
    w32(LAPIC + 0xf0, 0x1ff);
    wrmsr(base & !(1 << 11));
    let off = rdmsr();
    wrmsr(base);
    let on = rdmsr();
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

    // Periodic LAPIC timer: 10,000,000 bus ticks (10 ms at the 1 GHz bus), 10 periods.
    w32(LAPIC + 0x3e0, 0xb);
    w32(LAPIC + 0x320, (1 << 17) | (VEC as u32));
    let (base, t0) = (count(0), pm());
    w32(LAPIC + 0x380, 10_000_000);
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
    w32(LAPIC + 0x380, 2_000_000);
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

    println!("platform: {} passed, {} failed", r.passed, r.failed);
    guest_rt::exit(r.failed)
}
