//! The MC146818 real-time clock and its CMOS RAM at ports 0x70 (index; bit 7, the chipset's NMI
//! mask, is kept out of the index and has no effect: a domain's NMIs come from its local APIC)
//! and 0x71 (data), with the bytes a PC BIOS leaves for the guest (memory sizes, equipment).
//!
//! Time is a second count (Unix epoch, no time zone: the guest sees whatever the toolstack
//! passes, normally UTC) advanced by a 32.768 kHz divider chain derived from the [`Clock`]; the
//! time registers are rendered from it on each read, in BCD or binary and 12- or 24-hour per
//! register B, so changing the format converts (a real chip would keep stale bytes). While SET
//! is on or the divider is held in reset the time bytes are plain RAM the guest writes; when the
//! clock runs again they are parsed back (out-of-range fields are clamped). Clearing SET keeps
//! the divider's phase; releasing the divider reset puts the first update 500 ms later, as on
//! the chip. The day of week is derived from the date, so a written one is not kept. Daylight
//! saving (DSE) and the square-wave output are not modelled.
//!
//! Register A shows UIP for the 244 µs before each update (so a guest that waits for UIP to
//! clear reads a stable time). Flags in register C (periodic at A's rate, alarm with "don't
//! care" bytes, update-ended) are set as time passes whether or not enabled; with their enable
//! bits in B they set IRQF and hold [`RTC_GSI`] high until C is read, which clears it.

pub use abi::platform::RTC_GSI;
use abi::platform::{Clock, IrqSink};

/// Index port.
pub const RTC_INDEX: u16 = 0x70;
/// Data port.
pub const RTC_DATA: u16 = 0x71;
/// CMOS index of the century byte (the FADT's CENTURY field, as QEMU).
pub const CENTURY_INDEX: u8 = abi::platform::CMOS_CENTURY;

/// The divider chain's input, a 32.768 kHz crystal.
const HZ: u64 = 32_768;
/// UIP rises this many crystal ticks (244 µs) before an update.
const UIP_TICKS: u64 = 8;
const DAY: i64 = 86_400;
const A: usize = 0x0a;
const B: usize = 0x0b;
const C: usize = 0x0c;
const D: usize = 0x0d;
const SET: u8 = 0x80;
const UIE: u8 = 0x10;
const BIN: u8 = 0x04;
const H24: u8 = 0x02;
const IRQF: u8 = 0x80;
const PF: u8 = 0x40;
const AF: u8 = 0x20;
const UF: u8 = 0x10;
/// Seconds, minutes, hours, day of week, day of month, month, year, century.
const TIME_REGS: [usize; 8] = [0, 2, 4, 6, 7, 8, 9, CENTURY_INDEX as usize];
/// What the registers can show: 0000-01-01 to 9999-12-31T23:59:59.
const T_RANGE: (i64, i64) = (-62_167_219_200, 253_402_300_799);

/// The RTC and CMOS RAM of one domain.
#[derive(Debug, Clone)]
pub struct Rtc {
    cmos: [u8; 128],
    index: u8,
    /// TSC of the divider's tick 0; an update ends every `HZ` ticks from it.
    div_at: u64,
    /// The time (seconds since 1970) at divider tick 0, while the clock runs.
    base: i64,
    /// Divider ticks up to which the flags in C are up to date.
    synced: u64,
    /// The next second at which the alarm matches.
    alarm: Option<i64>,
    irq: bool,
}

impl Rtc {
    /// An RTC showing `unix_time` now, in BCD and 24-hour mode (a PC BIOS's setting), and CMOS
    /// describing `ram_below_4g` and `ram_above_4g` bytes of RAM as QEMU's firmware expects:
    /// base memory (0x15), KiB above 1 MiB up to 64 MiB (0x17, again at 0x30), 64 KiB units
    /// above 16 MiB up to 4 GiB (0x34) and above 4 GiB (0x5b, three bytes). Equipment byte: an
    /// FPU, VGA, no floppy. Shutdown status (0x0f) is 0; the AT checksum covers 0x10–0x2d.
    pub fn new(clock: &Clock, unix_time: u64, ram_below_4g: u64, ram_above_4g: u64) -> Self {
        let mut cmos = [0; 128];
        (cmos[A], cmos[B], cmos[D], cmos[0x14]) = (0x26, H24, 0x80, 0x02);
        let ext = (ram_below_4g >> 10).saturating_sub(1024).min(0xffff);
        let sizes = [
            (0x15, (ram_below_4g >> 10).min(640), 2),
            (0x17, ext, 2),
            (0x30, ext, 2),
            (0x34, (ram_below_4g.saturating_sub(16 << 20) >> 16).min(0xffff), 2),
            (0x5b, (ram_above_4g >> 16).min(0xff_ffff), 3),
        ];
        for (at, v, n) in sizes {
            for (i, b) in cmos.iter_mut().skip(at).take(n).enumerate() {
                *b = (v >> (8 * i)) as u8;
            }
        }
        let sum = cmos.iter().take(0x2e).skip(0x10).map(|b| u16::from(*b)).sum::<u16>();
        [cmos[0x2e], cmos[0x2f]] = sum.to_be_bytes();
        let base = i64::try_from(unix_time).unwrap_or(i64::MAX).min(T_RANGE.1);
        let (div_at, synced, alarm, irq) = (clock.now, 0, None, false);
        Rtc { cmos, index: 0, div_at, base, synced, alarm, irq }
    }

    /// Whether `port` belongs to this device.
    pub const fn claims(port: u16) -> bool {
        port == RTC_INDEX || port == RTC_DATA
    }

    /// A raw CMOS byte, for the platform (e.g. the shutdown status byte 0x0f at a reset).
    pub fn cmos(&self, index: u8) -> u8 {
        self.cmos.get(usize::from(index)).copied().unwrap_or(0xff)
    }

    /// An IN of `size` bytes at `port` (wider accesses cover consecutive ports). The index port
    /// is write-only and reads as 0xff; reading register C clears it.
    pub fn read(&mut self, clock: &Clock, sink: &mut impl IrqSink, port: u16, size: u8) -> u32 {
        self.update(clock, sink);
        (0..size.min(4)).fold(0, |v, i| {
            let b = if port.wrapping_add(i.into()) == RTC_DATA {
                self.read_reg(clock, sink)
            } else {
                0xff
            };
            v | u32::from(b) << (8 * i)
        })
    }

    /// An OUT of `size` bytes of `value` at `port`.
    pub fn write(
        &mut self,
        clock: &Clock,
        sink: &mut impl IrqSink,
        port: u16,
        size: u8,
        value: u32,
    ) {
        self.update(clock, sink);
        for i in 0..size.min(4) {
            let b = (value >> (8 * i)) as u8;
            match port.wrapping_add(i.into()) {
                RTC_INDEX => self.index = b & 0x7f,
                RTC_DATA => self.write_reg(clock, b),
                _ => {}
            }
        }
        self.drive(sink);
    }

    /// Sets the flags in C for the periodic ticks, updates and alarm matches up to `clock`, and
    /// raises [`RTC_GSI`] if an enabled one is set.
    pub fn update(&mut self, clock: &Clock, sink: &mut impl IrqSink) {
        let (t, last) = (self.ticks(clock), self.synced);
        if self.div_running() && t > last {
            if self.period().is_some_and(|p| t / p > last / p) {
                self.cmos[C] |= PF;
            }
            if self.cmos[B] & SET == 0 && t / HZ > last / HZ {
                self.cmos[C] |= UF;
                let now = self.secs(t);
                if self.alarm.is_some_and(|a| a <= now) {
                    self.cmos[C] |= AF;
                    self.alarm = self.next_alarm(now);
                }
            }
            self.synced = t;
        }
        self.drive(sink);
    }

    /// The TSC at which [`Rtc::update`] will next raise the line, if an enabled source will
    /// fire while it is low.
    pub fn next_deadline(&self, clock: &Clock) -> Option<u64> {
        if self.irq || !self.div_running() {
            return None;
        }
        let (b, t) = (self.cmos[B], self.synced);
        let running = b & SET == 0;
        let next = |p: u64| (t / p).saturating_add(1).saturating_mul(p);
        let pf = self.period().filter(|_| b & PF != 0).map(next);
        let uf = (running && b & UF != 0).then(|| next(HZ));
        let af = self
            .alarm
            .filter(|_| running && b & AF != 0)
            .map(|a| u64::try_from(a.saturating_sub(self.base)).unwrap_or(0).saturating_mul(HZ));
        let at = [pf, uf, af].into_iter().flatten().min()?;
        Some(clock.tsc_after(self.div_at, at, HZ))
    }

    fn div_running(&self) -> bool {
        // DV = 010 (32.768 kHz); 000 and 001 are taken as the same, 11x holds it in reset.
        self.cmos[A] & 0x70 <= 0x20
    }

    fn time_running(&self) -> bool {
        self.div_running() && self.cmos[B] & SET == 0
    }

    fn ticks(&self, clock: &Clock) -> u64 {
        clock.device_ticks(self.div_at, HZ)
    }

    fn secs(&self, ticks: u64) -> i64 {
        self.base.saturating_add(i64::try_from(ticks / HZ).unwrap_or(i64::MAX))
    }

    /// The periodic interrupt's period in crystal ticks (rates 1 and 2 repeat 8 and 9).
    fn period(&self) -> Option<u64> {
        match self.cmos[A] & 0xf {
            0 => None,
            1 => Some(128),
            2 => Some(256),
            r => Some(1 << (r - 1)),
        }
    }

    fn read_reg(&mut self, c: &Clock, sink: &mut impl IrqSink) -> u8 {
        let i = usize::from(self.index);
        if self.time_running() && TIME_REGS.contains(&i) {
            self.render(self.secs(self.ticks(c)));
        }
        match i {
            A => {
                let uip = self.time_running() && self.ticks(c) % HZ >= HZ - UIP_TICKS;
                self.cmos[A] | u8::from(uip) << 7
            }
            C => {
                let v = self.cmos[C];
                self.cmos[C] = 0;
                self.drive(sink);
                v
            }
            _ => self.cmos(self.index),
        }
    }

    fn write_reg(&mut self, c: &Clock, v: u8) {
        let i = usize::from(self.index);
        let (was, div_was) = (self.time_running(), self.div_running());
        if was {
            self.render(self.secs(self.ticks(c)));
        }
        match i {
            A => self.cmos[A] = v & 0x7f,
            // Setting SET clears UIE (no update-ended interrupts while the time is set).
            B if v & SET != 0 && self.cmos[B] & SET == 0 => self.cmos[B] = v & !UIE,
            C | D => {}
            _ => {
                if let Some(b) = self.cmos.get_mut(i) {
                    *b = v;
                }
            }
        }
        if !div_was && self.div_running() {
            self.div_at = c.now.saturating_sub(c.tsc_khz.saturating_mul(500));
            self.synced = self.ticks(c);
        }
        let now = self.ticks(c) / HZ;
        if self.time_running() && (!was || TIME_REGS.contains(&i)) {
            self.base = self.parse().saturating_sub(i64::try_from(now).unwrap_or(i64::MAX));
        }
        if matches!(i, 1 | 3 | 5 | A | B) || TIME_REGS.contains(&i) {
            self.alarm = self.next_alarm(self.secs(now.saturating_mul(HZ)));
        }
    }

    fn drive(&mut self, sink: &mut impl IrqSink) {
        // PIE, AIE and UIE sit at the bit positions of PF, AF and UF.
        let on = self.cmos[C] & self.cmos[B] & (PF | AF | UF) != 0;
        self.cmos[C] = self.cmos[C] & !IRQF | if on { IRQF } else { 0 };
        if on != self.irq {
            self.irq = on;
            sink.set_level(RTC_GSI, on);
        }
    }

    fn enc(&self, v: u8) -> u8 {
        if self.cmos[B] & BIN != 0 { v } else { ((v / 10) << 4) | (v % 10) }
    }

    fn dec(&self, b: u8) -> i64 {
        i64::from(if self.cmos[B] & BIN != 0 { b } else { (b >> 4) * 10 + (b & 0xf) })
    }

    fn enc_hour(&self, h: u8) -> u8 {
        if self.cmos[B] & H24 != 0 {
            return self.enc(h);
        }
        self.enc(if h.is_multiple_of(12) { 12 } else { h % 12 }) | if h >= 12 { 0x80 } else { 0 }
    }

    fn dec_hour(&self, b: u8) -> i64 {
        if self.cmos[B] & H24 != 0 {
            return self.dec(b);
        }
        self.dec(b & 0x7f) % 12 + if b & 0x80 != 0 { 12 } else { 0 }
    }

    fn render(&mut self, t: i64) {
        let (days, sod) = (t.div_euclid(DAY), t.rem_euclid(DAY));
        let (y, m, d) = civil_from_days(days);
        let fields = [
            (0, sod % 60),
            (2, sod / 60 % 60),
            (6, (days + 4).rem_euclid(7) + 1),
            (7, d),
            (8, m),
            (9, y.rem_euclid(100)),
            (usize::from(CENTURY_INDEX), (y / 100).rem_euclid(100)),
        ];
        for (i, v) in fields {
            self.cmos[i] = self.enc(v as u8);
        }
        self.cmos[4] = self.enc_hour((sod / 3600) as u8);
    }

    fn parse(&self) -> i64 {
        let f = |i: usize, lo, hi| self.dec(self.cmos[i]).clamp(lo, hi);
        let y = f(9, 0, 99) + 100 * f(usize::from(CENTURY_INDEX), 0, 99);
        let days = days_from_civil(y, f(8, 1, 12), f(7, 1, 31));
        let hms = self.dec_hour(self.cmos[4]).min(23) * 3600 + f(2, 0, 59) * 60 + f(0, 0, 59);
        (days * DAY + hms).clamp(T_RANGE.0, T_RANGE.1)
    }

    /// A field of the alarm (`None`: "don't care", the two top bits set).
    fn alarm_field(&self, i: usize) -> Option<i64> {
        let b = self.cmos[i];
        (b & 0xc0 != 0xc0).then(|| if i == 5 { self.dec_hour(b) } else { self.dec(b) })
    }

    /// The first second after `after` whose time of day matches the alarm (a field out of
    /// range never matches).
    fn next_alarm(&self, after: i64) -> Option<i64> {
        let (s, m, h) = (self.alarm_field(1), self.alarm_field(3), self.alarm_field(5));
        let start = after.saturating_add(1);
        (0..=1440).find_map(|k| {
            let t0 = start.div_euclid(60).saturating_add(k).saturating_mul(60);
            let sod = t0.rem_euclid(DAY);
            let ok = h.is_none_or(|h| h == sod / 3600) && m.is_none_or(|m| m == sod / 60 % 60);
            let sec = s.unwrap_or((start - t0).max(0));
            (ok && sec < 60 && t0 + sec >= start).then_some(t0 + sec)
        })
    }
}

/// The time (seconds since 1970) that a PC's RTC shows in CMOS bytes `regs[0..=0x32]` (B says
/// BCD or binary, 12 or 24 hours; 0x32 is the century, taken as 20 when it is not 19–99).
pub fn time_of_registers(regs: &[u8]) -> u64 {
    let mut r = Rtc::new(&Clock { now: 0, tsc_khz: 1 }, 0, 0, 0);
    for (c, b) in r.cmos.iter_mut().zip(regs) {
        *c = *b;
    }
    let century = usize::from(CENTURY_INDEX);
    if !(19..=99).contains(&r.dec(r.cmos[century])) {
        r.cmos[century] = r.enc(20);
    }
    u64::try_from(r.parse()).unwrap_or(0)
}

/// The host's time of day (seconds since 1970), read from its RTC between two updates (the
/// same bytes twice in a row, no update in progress), as Linux's `mc146818_get_time` does.
/// `None` if the clock kept changing. microhv passes the RTC's ports through to dom0, the only
/// reader.
pub fn read_host() -> Option<u64> {
    let mut last = None;
    for _ in 0..1000 {
        let mut regs = [0u8; CENTURY_INDEX as usize + 1];
        for (i, r) in regs.iter_mut().enumerate() {
            // SAFETY: dom0 owns the host RTC's ports; reading CMOS changes nothing but register
            // C, which nobody else uses.
            *r = unsafe {
                rt::io::outb(RTC_INDEX, i as u8);
                rt::io::inb(RTC_DATA)
            };
        }
        // Register A bit 7: update in progress; the time bytes may be torn.
        if regs[A] & 0x80 == 0 && last == Some(regs) {
            return Some(time_of_registers(&regs));
        }
        last = Some(regs);
    }
    None
}

/// Days since 1970-01-01 of a proleptic Gregorian date (March-based years, 400-year eras).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// The date of a day count since 1970-01-01: (year, month 1–12, day 1–31).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let (d, m) = (doy - (153 * mp + 2) / 5 + 1, if mp < 10 { mp + 3 } else { mp - 9 });
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use abi::testutil::Sink;

    /// 2023-11-14 22:13:20 UTC, a Tuesday.
    const T0: u64 = 1_700_000_000;

    #[test]
    fn the_host_clock_is_read_from_its_registers() {
        // 2026-11-30 13:45:07 in BCD, 24-hour mode, century 20.
        let mut regs = [0u8; 0x33];
        (regs[0], regs[2], regs[4], regs[7], regs[8], regs[9]) =
            (0x07, 0x45, 0x13, 0x30, 0x11, 0x26);
        (regs[0xb], regs[0x32]) = (H24, 0x20);
        assert_eq!(time_of_registers(&regs), 1_796_046_307);
        // Binary, 12-hour (1 PM), no century byte.
        (regs[0], regs[2], regs[4], regs[7], regs[8], regs[9]) = (7, 45, 0x81, 30, 11, 26);
        (regs[0xb], regs[0x32]) = (BIN, 0);
        assert_eq!(time_of_registers(&regs), 1_796_046_307);
        assert!(time_of_registers(&[0xff; 0x33]) > 0, "garbage still gives a time");
    }

    /// A TSC at exactly 1000 cycles per crystal tick.
    fn at(ticks: u64) -> Clock {
        Clock { now: ticks * 1000, tsc_khz: HZ }
    }

    struct T {
        r: Rtc,
        s: Sink,
    }
    impl T {
        fn new() -> Self {
            T { r: Rtc::new(&at(0), T0, 512 << 20, 0), s: Sink::default() }
        }
        fn get(&mut self, t: u64, i: u8) -> u8 {
            self.r.write(&at(t), &mut self.s, RTC_INDEX, 1, i.into());
            self.r.read(&at(t), &mut self.s, RTC_DATA, 1) as u8
        }
        fn set(&mut self, t: u64, i: u8, v: u8) {
            self.r.write(&at(t), &mut self.s, RTC_INDEX, 2, u32::from(i) | u32::from(v) << 8);
        }
        fn time(&mut self, t: u64) -> [u8; 8] {
            TIME_REGS.map(|i| self.get(t, i as u8))
        }
    }

    #[test]
    fn reads_bcd_binary_and_12_hour() {
        let mut t = T::new();
        assert_eq!(t.time(0), [0x20, 0x13, 0x22, 3, 0x14, 0x11, 0x23, 0x20]);
        t.set(0, 0x0b, H24 | BIN);
        assert_eq!(t.time(0), [20, 13, 22, 3, 14, 11, 23, 20]);
        t.set(0, 0x0b, BIN);
        assert_eq!(t.get(0, 4), 0x80 | 10, "10 PM");
        t.set(0, 0x0b, 0);
        assert_eq!(t.get(0, 4), 0x80 | 0x10);
        // Midnight and noon in 12-hour mode.
        let mut r = Rtc::new(&at(0), 1_699_920_000, 0, 0);
        let mut s = Sink::default();
        r.write(&at(0), &mut s, RTC_INDEX, 2, 0x000b);
        r.write(&at(0), &mut s, RTC_INDEX, 1, 4);
        assert_eq!(r.read(&at(0), &mut s, RTC_DATA, 1), 0x12);
        r.write(&at(0), &mut s, RTC_INDEX, 2, 0x000b);
        r.write(&at(0), &mut s, RTC_INDEX, 1, 4);
        assert_eq!(r.read(&at(43_200 * HZ), &mut s, RTC_DATA, 1), 0x92);
        assert_eq!(t.get(0, 0x0d), 0x80, "VRT");
    }

    #[test]
    fn time_advances_and_uip_precedes_the_update() {
        let mut t = T::new();
        assert_eq!(t.get(HZ - 9, 0x0a), 0x26);
        assert_eq!(t.get(HZ - 9, 0), 0x20);
        assert_eq!(t.get(HZ - 8, 0x0a), 0xa6, "UIP 244 µs before the update");
        assert_eq!(t.get(HZ - 1, 0), 0x20);
        assert_eq!(t.get(HZ, 0x0a), 0x26);
        assert_eq!(t.get(HZ, 0), 0x21);
        // 47 s later the minute and then, at 22:59:59 + 1, the hour roll over.
        assert_eq!(t.time(41 * HZ)[..3], [0x01, 0x14, 0x22]);
        assert_eq!(t.time((46 * 60 + 40) * HZ)[..3], [0x00, 0x00, 0x23]);
        assert_eq!(t.time((106 * 60 + 40) * HZ)[..5], [0x00, 0x00, 0x00, 4, 0x15]);
    }

    #[test]
    fn set_freezes_and_the_guest_sets_the_time() {
        let mut t = T::new();
        t.set(100, 0x0b, SET | H24 | UIE);
        assert_eq!(t.get(100, 0x0b), SET | H24, "SET clears UIE");
        assert_eq!(t.get(100 * HZ, 0), 0x20, "frozen");
        assert_eq!(t.get(HZ - 8, 0x0a) & 0x80, 0, "no UIP while SET");
        for (i, v) in
            [(0, 0x59), (2, 0x59), (4, 0x23), (7, 0x31), (8, 0x12), (9, 0x99), (0x32, 0x19)]
        {
            t.set(100 * HZ, i, v);
        }
        assert_eq!(t.get(200 * HZ, 9), 0x99);
        t.set(200 * HZ + 100, 0x0b, H24);
        // Divider phase kept: the next update is at the next whole second.
        assert_eq!(t.time(201 * HZ - 1)[..8], [0x59, 0x59, 0x23, 6, 0x31, 0x12, 0x99, 0x19]);
        assert_eq!(t.time(201 * HZ), [0, 0, 0, 7, 0x01, 0x01, 0x00, 0x20]);
        // A running clock accepts a write too.
        t.set(201 * HZ, 9, 0x42);
        assert_eq!(t.time(202 * HZ)[..8], [1, 0, 0, 4, 1, 1, 0x42, 0x20]);
    }

    #[test]
    fn linux_set_time_with_divider_reset() {
        // mc146818_set_time: SET, divider reset, write, clear SET, restore A.
        let mut t = T::new();
        t.set(1000, 0x0b, SET | H24);
        t.set(1000, 0x0a, 0x76);
        t.set(1000, 0, 0x30);
        t.set(1000, 0x0b, H24);
        assert_eq!(t.get(50 * HZ, 0), 0x30, "held while the divider is in reset");
        t.set(50 * HZ, 0x0a, 0x26);
        assert_eq!(t.get(50 * HZ + HZ / 2 - 1, 0), 0x30);
        assert_eq!(t.get(50 * HZ + HZ / 2, 0), 0x31, "first update 500 ms later");
    }

    #[test]
    fn update_interrupt_and_register_c_clears_on_read() {
        let mut t = T::new();
        assert_eq!(t.get(10, 0x0c), 0);
        t.set(10, 0x0b, H24 | UIE);
        assert_eq!(t.r.next_deadline(&at(10)), Some(HZ * 1000));
        t.r.update(&at(HZ - 1), &mut t.s);
        assert!(t.s.0.is_empty());
        t.r.update(&at(HZ), &mut t.s);
        assert_eq!(t.s.0, [(RTC_GSI, true)]);
        assert_eq!(t.r.next_deadline(&at(HZ)), None, "held until C is read");
        assert_eq!(t.get(HZ, 0x0c), IRQF | PF | UF, "PF too: set whether enabled or not");
        assert_eq!(t.s.0, [(RTC_GSI, true), (RTC_GSI, false)]);
        assert_eq!(t.get(HZ, 0x0c), 0);
        // Flags accumulate without their enables and raise the line once enabled.
        t.set(HZ, 0x0b, H24);
        assert_eq!(t.get(3 * HZ, 0x0c), UF | PF, "A = 0x26: 1024 Hz periodic");
        t.r.update(&at(4 * HZ), &mut t.s);
        t.set(4 * HZ, 0x0b, H24 | 0x40);
        assert_eq!(t.s.0.last(), Some(&(RTC_GSI, true)));
    }

    #[test]
    fn periodic_rate_from_register_a() {
        let mut t = T::new();
        t.set(0, 0x0a, 0x23); // 8192 Hz: 4 ticks
        t.set(0, 0x0b, H24 | 0x40);
        assert_eq!(t.r.next_deadline(&at(0)), Some(4 * 1000));
        t.set(0, 0x0a, 0x2f); // 2 Hz
        assert_eq!(t.r.next_deadline(&at(0)), Some(HZ / 2 * 1000));
        t.set(0, 0x0a, 0x21); // 256 Hz
        assert_eq!(t.r.next_deadline(&at(0)), Some(128 * 1000));
        t.r.update(&at(128), &mut t.s);
        assert_eq!(t.get(128, 0x0c), IRQF | PF);
        t.set(0, 0x0a, 0x20);
        assert_eq!(t.r.next_deadline(&at(200)), None);
    }

    #[test]
    fn alarm_with_dont_care_fields() {
        let mut t = T::new();
        t.set(0, 0x0b, H24 | 0x20);
        t.set(0, 1, 0x25);
        t.set(0, 3, 0x13);
        t.set(0, 5, 0x22); // 22:13:25, five seconds on
        assert_eq!(t.r.next_deadline(&at(0)), Some(5 * HZ * 1000));
        t.r.update(&at(5 * HZ), &mut t.s);
        assert_eq!(t.get(5 * HZ, 0x0c), IRQF | PF | AF | UF);
        t.set(5 * HZ, 5, 0xc0); // any hour: 23:13:25 next
        assert_eq!(t.r.next_deadline(&at(5 * HZ)), Some((5 + 3600) * HZ * 1000));
        t.set(5 * HZ, 1, 0xff);
        t.set(5 * HZ, 3, 0xff); // every second
        assert_eq!(t.r.next_deadline(&at(5 * HZ)), Some(6 * HZ * 1000));
        t.set(5 * HZ, 1, 0x75); // never
        assert_eq!(t.r.next_deadline(&at(5 * HZ)), None);
    }

    #[test]
    fn cmos_memory_bytes() {
        let r = Rtc::new(&at(0), T0, 3 << 30, 2 << 30);
        let w = |i: u8, n: u8| (0..n).fold(0u32, |v, k| v | u32::from(r.cmos(i + k)) << (8 * k));
        assert_eq!(w(0x15, 2), 640);
        assert_eq!((w(0x17, 2), w(0x30, 2)), (0xffff, 0xffff));
        assert_eq!(w(0x34, 2), ((3 << 30) - (16 << 20)) >> 16);
        assert_eq!(w(0x5b, 3), (2 << 30) >> 16);
        assert_eq!((r.cmos(0x14), r.cmos(0x0f), r.cmos(0x10)), (0x02, 0, 0));
        let sum = (0x10..0x2e).map(|i| u16::from(r.cmos(i))).sum::<u16>();
        assert_eq!(u16::from_be_bytes([r.cmos(0x2e), r.cmos(0x2f)]), sum);
        let small = Rtc::new(&at(0), T0, 8 << 20, 0);
        assert_eq!(u16::from_le_bytes([small.cmos(0x17), small.cmos(0x18)]), 7 * 1024);
        assert_eq!((small.cmos(0x34), small.cmos(0x35), small.cmos(0x5b)), (0, 0, 0));
    }

    #[test]
    fn index_port_nmi_mask_bit_and_ram() {
        let mut t = T::new();
        // Bit 7 of the index (the NMI mask) does not become part of the index.
        t.set(0, 0x80 | 0x40, 0x5a);
        assert_eq!(t.get(0, 0x40), 0x5a);
        assert_eq!(t.r.read(&at(0), &mut t.s, RTC_INDEX, 1), 0xff);
        t.set(0, 0x0f, 0x0a);
        assert_eq!(t.r.cmos(0x0f), 0x0a, "shutdown status kept");
        t.set(0, 0x0d, 0);
        t.set(0, 0x0c, 0xff);
        assert_eq!((t.get(0, 0x0d), t.get(0, 0x0c)), (0x80, 0));
    }

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-25_508), (1900, 3, 1));
        assert_eq!(days_from_civil(0, 1, 1) * DAY, T_RANGE.0);
        assert_eq!(days_from_civil(9999, 12, 31) * DAY + DAY - 1, T_RANGE.1);
    }

    proptest! {
        #[test]
        fn dates_round_trip(z in -3_000_000i64..3_000_000) {
            let (y, m, d) = civil_from_days(z);
            prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            prop_assert_eq!(days_from_civil(y, m, d), z);
        }

        #[test]
        fn no_sequence_panics_and_deadlines_are_not_early(
            ops in proptest::collection::vec((0u16..3, any::<u8>(), any::<u8>(), 0u64..3_000_000_000, any::<bool>()), 1..60),
            khz in 1u64..5_000_000, unix in any::<u64>(),
        ) {
            let mut r = Rtc::new(&Clock { now: 0, tsc_khz: khz }, unix, unix, unix);
            let mut s = Sink::default();
            let mut now = 0u64;
            for (p, a, b, dt, w) in ops {
                now = now.saturating_add(dt);
                let c = Clock { now, tsc_khz: khz };
                if w { r.write(&c, &mut s, 0x70 + p, 2, u32::from(a & 0x7f) | u32::from(b) << 8) }
                else { r.write(&c, &mut s, 0x70, 1, a.into()); r.read(&c, &mut s, 0x71 + p, 1); }
                if let Some(d) = r.next_deadline(&c).filter(|d| *d > now) {
                    let (mut early, mut s2) = (r.clone(), Sink::default());
                    early.update(&Clock { now: d - 1, tsc_khz: khz }, &mut s2);
                    prop_assert!(s2.0.is_empty(), "{:?}", s2.0);
                }
            }
        }

        #[test]
        fn running_seconds_never_go_back(steps in proptest::collection::vec(0u64..100_000, 1..40)) {
            let mut t = T::new();
            t.set(0, 0x0b, H24 | BIN);
            let (mut now, mut last) = (0, 0);
            for dt in steps {
                now += dt;
                let v = t.time(now);
                let secs = u64::from(v[4]) * 86_400 + u64::from(v[2]) * 3600 + u64::from(v[1]) * 60 + u64::from(v[0]);
                prop_assert!(secs >= last);
                last = secs;
            }
        }
    }
}
