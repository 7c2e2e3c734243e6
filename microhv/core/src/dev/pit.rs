//! The Intel 8254 programmable interval timer (ports 0x40–0x43) and the PC's port 0x61.
//!
//! Counts and OUT levels are functions of the [`Clock`]: a channel remembers when its counting
//! element started and how many ticks it counted before a pause, so nothing is polled. All six
//! modes count as the datasheet says, in binary or BCD. Simplifications shared with QEMU and
//! KVM: a count takes effect at the write rather than on the next CLK edge, and one read
//! flip-flop serves both latched and live reads.
//!
//! Interrupts: channel 0's OUT is ISA IRQ 0, which the [`IrqSink`] names GSI 0 ([`PIT_GSI`]);
//! the platform wires it to the master 8259's IR0 and, through the MADT's interrupt source
//! override, to I/O APIC pin 2. Each rising edge of OUT is one `pulse`. Missed periods are not
//! replayed (KVM's "reinject off"): however long the guest did not run, [`Pit::update`]
//! delivers at most one pending edge, so a tick-counting guest sees lost ticks, not a burst.

use super::{Clock, IrqSink};

/// The input clock of all three channels (Hz).
pub const PIT_HZ: u64 = 1_193_182;
/// Line of channel 0's OUT, as ISA IRQ 0 (see the module documentation for its routing).
pub const PIT_GSI: u32 = 0;
/// NMI status and control: channel 2's gate and OUT, the speaker, the refresh toggle.
pub const PORT_61: u16 = 0x61;
/// Periodic modes (2, 3) interrupt at most this often (µs), whatever the count: a guest
/// programming a period of a few ticks must not keep the host in exits (KVM clamps the PIT's
/// period likewise). Counts and OUT stay exact; only interrupts are spaced.
pub const MIN_PERIOD_US: u64 = 100;

#[derive(Debug, Clone, Copy, Default)]
struct Channel {
    mode: u8,
    /// Access mode: 1 LSB only, 2 MSB only, 3 LSB then MSB.
    rw: u8,
    bcd: bool,
    /// The count in use, 1..=65536 (1..=10000 in BCD); a written 0 is the maximum.
    reload: u32,
    /// A count written while counting in modes 1, 2, 3, 5, and (modes 2 and 3) the tick at
    /// which the period in progress ends and it is loaded; the other modes load at the trigger.
    next: Option<(u32, u64)>,
    /// A count has been written since the control word (mode 0: and not half-rewritten).
    loaded: bool,
    /// Modes 1 and 5: a gate rising edge started the count.
    triggered: bool,
    gate: bool,
    running: bool,
    /// Ticks counted before `start` (pauses while the gate is low in modes 0 and 4).
    acc: u64,
    start: u64,
    /// Ticks of earlier periods dropped when a new count was loaded at a period's end.
    skip: u64,
    wlsb: Option<u8>,
    rmsb: bool,
    latch: Option<u16>,
    status: Option<u8>,
    null_count: bool,
    /// OUT rising edges already delivered (channel 0), and one owed across a count reload.
    seen: u64,
    owed: bool,
}

impl Channel {
    /// What a PC BIOS leaves behind (and QEMU's reset): mode 3, count 65536 (18.2 Hz).
    fn reset(gate: bool, now: u64) -> Self {
        let (mode, rw, reload, loaded, running, start) = (3, 3, 0x10000, true, gate, now);
        Channel { mode, rw, reload, loaded, gate, running, start, ..Default::default() }
    }

    fn modulus(&self) -> u64 {
        if self.bcd { 10_000 } else { 0x10000 }
    }

    /// Ticks since the count was loaded (or the trigger), pauses excluded.
    fn ticks(&self, c: &Clock) -> u64 {
        let run = if self.running { c.device_ticks(self.start, PIT_HZ) } else { 0 };
        self.acc.saturating_add(run).saturating_sub(self.skip)
    }

    fn restart(&mut self, c: &Clock, run: bool) {
        if let Some((n, _)) = self.next.take() {
            self.reload = n;
            self.null_count = false;
        }
        (self.acc, self.skip, self.start, self.running) = (0, 0, c.now, run);
        (self.seen, self.owed) = (0, false);
    }

    fn pause(&mut self, c: &Clock) {
        if self.running {
            self.acc = self.acc.saturating_add(c.device_ticks(self.start, PIT_HZ));
            self.running = false;
        }
    }

    fn resume(&mut self, c: &Clock) {
        if !self.running {
            (self.start, self.running) = (c.now, true);
        }
    }

    fn load(&mut self, c: &Clock, raw: u16) {
        let m = self.modulus() as u32;
        let v = if self.bcd { from_bcd(raw) % m } else { u32::from(raw) };
        let n = if v == 0 { m } else { v };
        self.null_count = false;
        match self.mode {
            0 | 4 => {
                (self.next, self.reload, self.loaded) = (None, n, true);
                self.restart(c, self.gate);
            }
            _ if !self.loaded => {
                (self.reload, self.loaded, self.triggered) = (n, true, false);
                self.restart(c, self.gate && self.mode != 1 && self.mode != 5);
            }
            2 | 3 => {
                let r = u64::from(self.reload);
                let end = (self.ticks(c) / r).saturating_add(1).saturating_mul(r);
                (self.next, self.null_count) = (Some((n, end)), true);
            }
            _ => (self.next, self.null_count) = (Some((n, u64::MAX)), true),
        }
    }

    /// In modes 2 and 3 a count written mid-period is loaded when the period ends.
    fn apply_next(&mut self, c: &Clock) {
        let Some((n, end)) = self.next else { return };
        if !matches!(self.mode, 2 | 3) || self.ticks(c) < end {
            return;
        }
        self.owed |= self.edges(end) > self.seen;
        (self.skip, self.reload, self.next) = (self.skip.saturating_add(end), n, None);
        (self.seen, self.null_count) = (0, false);
    }

    fn set_gate(&mut self, c: &Clock, high: bool) {
        if high == self.gate {
            return;
        }
        self.gate = high;
        if !self.loaded {
            return;
        }
        match (self.mode, high) {
            (0 | 4, true) => self.resume(c),
            (0 | 2 | 3 | 4, false) => self.pause(c),
            (2 | 3, true) => self.restart(c, true),
            (_, true) => {
                self.triggered = true;
                self.restart(c, true);
            }
            _ => {}
        }
    }

    /// The counting element as read (BCD-encoded in BCD mode).
    fn count(&self, c: &Clock) -> u16 {
        let (n, m, d) = (u64::from(self.reload), self.modulus(), self.ticks(c));
        let v = match self.mode {
            2 => n - d % n,
            // Decrements by two; odd counts spend one extra tick in the high half.
            3 => {
                let (h, p) = (n.div_ceil(2), d % n);
                n.saturating_sub(2 * if p < h { p } else { p - h }) & !1
            }
            _ => (n + m - d % m) % m,
        };
        if self.bcd { to_bcd(v % 10_000) } else { (v & 0xffff) as u16 }
    }

    fn out(&self, c: &Clock) -> bool {
        let (n, d) = (u64::from(self.reload), self.ticks(c));
        match self.mode {
            _ if !self.loaded => self.mode != 0,
            0 => d >= n,
            1 => !self.triggered || d >= n,
            2 => !self.gate || d % n != n - 1,
            3 => !self.gate || d % n < n.div_ceil(2),
            _ => (self.mode == 5 && !self.triggered) || d != n,
        }
    }

    /// OUT's rising edges in the first `d` ticks.
    fn edges(&self, d: u64) -> u64 {
        let n = u64::from(self.reload);
        match self.mode {
            _ if !self.loaded => 0,
            0 => u64::from(d >= n),
            1 => u64::from(self.triggered && d >= n),
            2 | 3 => d / n,
            _ => u64::from((self.mode == 4 || self.triggered) && d > n),
        }
    }

    /// The tick of the `k`th rising edge (1-based), if there is one.
    fn edge_at(&self, k: u64) -> Option<u64> {
        let n = u64::from(self.reload);
        match self.mode {
            2 | 3 => Some(k.saturating_mul(n)),
            0 | 1 if k == 1 => Some(n),
            4 | 5 if k == 1 => Some(n + 1),
            _ => None,
        }
    }

    fn latch_count(&mut self, c: &Clock) {
        if self.latch.is_none() {
            self.latch = Some(self.count(c));
        }
    }

    fn status_byte(&self, c: &Clock) -> u8 {
        u8::from(self.out(c)) << 7
            | u8::from(self.null_count) << 6
            | self.rw << 4
            | self.mode << 1
            | u8::from(self.bcd)
    }

    fn read(&mut self, c: &Clock) -> u8 {
        if let Some(s) = self.status.take() {
            return s;
        }
        let v = self.latch.unwrap_or_else(|| self.count(c));
        let msb = match self.rw {
            1 => false,
            2 => true,
            _ => self.rmsb,
        };
        // LSB-then-MSB flips the flip-flop; a latch is released once fully read.
        self.rmsb ^= self.rw == 3;
        self.latch = self.latch.filter(|_| self.rw == 3 && !msb);
        let [lo, hi] = v.to_le_bytes();
        if msb { hi } else { lo }
    }

    fn write(&mut self, c: &Clock, v: u8) {
        match (self.rw, self.wlsb.take()) {
            (1, _) => self.load(c, v.into()),
            (2, _) => self.load(c, u16::from(v) << 8),
            (_, Some(lo)) => self.load(c, u16::from_le_bytes([lo, v])),
            (_, None) => {
                self.wlsb = Some(v);
                // Mode 0: the first byte stops the count and drives OUT low.
                if self.mode == 0 {
                    self.pause(c);
                    self.loaded = false;
                }
            }
        }
    }
}

/// The 8254 with its three channels (0: system timer, 1: refresh, 2: speaker and
/// calibration) and port 0x61.
#[derive(Debug, Clone)]
pub struct Pit {
    ch: [Channel; 3],
    port61: u8,
    refresh: bool,
    last_irq: Option<u64>,
}

impl Pit {
    /// A PIT as a PC BIOS leaves it: every channel in mode 3 with count 65536, channel 2's
    /// gate (port 0x61 bit 0) low.
    pub fn new(clock: &Clock) -> Self {
        let ch = Channel::reset(true, clock.now);
        let ch = [ch, ch, Channel::reset(false, clock.now)];
        Pit { ch, port61: 0, refresh: false, last_irq: None }
    }

    /// Whether `port` belongs to this device (0x40–0x43 and 0x61).
    pub const fn claims(port: u16) -> bool {
        matches!(port, 0x40..=0x43 | PORT_61)
    }

    /// An IN of `size` bytes at `port`; a wider access reads consecutive ports, as on the ISA
    /// bus. Reading a counter advances its read flip-flop; reading 0x61 flips the refresh bit.
    pub fn read(&mut self, clock: &Clock, sink: &mut impl IrqSink, port: u16, size: u8) -> u32 {
        self.update(clock, sink);
        (0..size.min(4)).fold(0, |v, i| {
            v | u32::from(self.read_byte(clock, port.wrapping_add(i.into()))) << (8 * i)
        })
    }

    /// An OUT of `size` bytes of `value` at `port` (consecutive ports for wider accesses).
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
            self.write_byte(clock, port.wrapping_add(i.into()), b);
        }
    }

    /// Brings channel 0's interrupt up to `clock`: at most one pulse on [`PIT_GSI`] for the
    /// OUT rising edges since the last pulse.
    pub fn update(&mut self, clock: &Clock, sink: &mut impl IrqSink) {
        for ch in &mut self.ch {
            ch.apply_next(clock);
        }
        let not_before = self.not_before(clock);
        let ch = &mut self.ch[0];
        let e = ch.edges(ch.ticks(clock));
        if (e > ch.seen || ch.owed) && clock.now >= not_before {
            (ch.seen, ch.owed) = (e.max(ch.seen), false);
            self.last_irq = Some(clock.now);
            sink.pulse(PIT_GSI);
        }
    }

    /// The TSC at which [`Pit::update`] will next pulse, if channel 0 will ever again.
    pub fn next_deadline(&self, clock: &Clock) -> Option<u64> {
        let ch = &self.ch[0];
        let at = if ch.owed {
            clock.now
        } else if ch.running {
            let d = ch.edge_at(ch.seen.saturating_add(1))?;
            clock.tsc_after(ch.start, d.saturating_add(ch.skip).saturating_sub(ch.acc), PIT_HZ)
        } else {
            return None;
        };
        Some(at.max(self.not_before(clock)))
    }

    /// The earliest TSC of channel 0's next interrupt under [`MIN_PERIOD_US`].
    fn not_before(&self, clock: &Clock) -> u64 {
        match (self.ch[0].mode, self.last_irq) {
            (2 | 3, Some(t)) => {
                t.saturating_add(clock.tsc_khz.saturating_mul(MIN_PERIOD_US) / 1000)
            }
            _ => 0,
        }
    }

    fn read_byte(&mut self, c: &Clock, port: u16) -> u8 {
        match port {
            0x40..=0x42 => self.ch.get_mut(usize::from(port - 0x40)).map_or(0xff, |ch| ch.read(c)),
            PORT_61 => {
                // Bit 4 toggles with DRAM refresh on a PC; delay loops wait for it to change.
                self.refresh = !self.refresh;
                self.port61 & 0x0f | u8::from(self.refresh) << 4 | u8::from(self.ch[2].out(c)) << 5
            }
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, c: &Clock, port: u16, v: u8) {
        match port {
            0x40..=0x42 => {
                if let Some(ch) = self.ch.get_mut(usize::from(port - 0x40)) {
                    ch.write(c, v);
                }
            }
            0x43 => self.control(c, v),
            PORT_61 => {
                self.port61 = v & 0x0f;
                self.ch[2].set_gate(c, v & 1 != 0);
            }
            _ => {}
        }
    }

    fn control(&mut self, c: &Clock, v: u8) {
        let sel = usize::from(v >> 6);
        if sel == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status, bits 1–3
            // select counters 0–2; a pending latch is not overwritten.
            for (i, ch) in self.ch.iter_mut().enumerate() {
                if v & (2 << i) != 0 {
                    if v & 0x20 == 0 {
                        ch.latch_count(c);
                    }
                    if v & 0x10 == 0 && ch.status.is_none() {
                        ch.status = Some(ch.status_byte(c));
                    }
                }
            }
            return;
        }
        let Some(ch) = self.ch.get_mut(sel) else { return };
        let rw = (v >> 4) & 3;
        if rw == 0 {
            ch.latch_count(c);
            return;
        }
        let m = (v >> 1) & 7;
        ch.mode = if m > 5 { m - 4 } else { m };
        (ch.rw, ch.bcd, ch.loaded, ch.triggered, ch.running) =
            (rw, v & 1 != 0, false, false, false);
        (ch.next, ch.wlsb, ch.rmsb, ch.null_count, ch.seen, ch.owed) =
            (None, None, false, true, 0, false);
    }
}

fn from_bcd(v: u16) -> u32 {
    (0..4).rev().fold(0, |a, i| a * 10 + u32::from((v >> (4 * i)) & 0xf))
}

fn to_bcd(v: u64) -> u16 {
    (0..4).fold(0, |a, i| a | (((v / 10u64.pow(i)) % 10) as u16) << (4 * i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A TSC at exactly 1000 cycles per PIT tick.
    const K: u64 = 1000;

    use abi::testutil::Sink;

    fn at(ticks: u64) -> Clock {
        Clock { now: ticks * K, tsc_khz: PIT_HZ }
    }

    struct T {
        pit: Pit,
        sink: Sink,
    }

    impl T {
        fn new() -> Self {
            T { pit: Pit::new(&at(0)), sink: Sink::default() }
        }
        fn out(&mut self, t: u64, port: u16, v: u8) {
            self.pit.write(&at(t), &mut self.sink, port, 1, v.into());
        }
        fn inb(&mut self, t: u64, port: u16) -> u8 {
            self.pit.read(&at(t), &mut self.sink, port, 1) as u8
        }
        fn count(&mut self, t: u64, port: u16) -> u16 {
            u16::from_le_bytes([self.inb(t, port), self.inb(t, port)])
        }
        fn status(&mut self, t: u64, ch: u8) -> u8 {
            self.out(t, 0x43, 0xe0 | 2 << ch);
            self.inb(t, 0x40 + u16::from(ch))
        }
    }

    #[test]
    fn mode2_period_out_and_one_edge_per_period() {
        let mut t = T::new();
        t.out(0, 0x43, 0x34); // channel 0, LSB/MSB, mode 2
        t.out(0, 0x40, 0xe8);
        t.out(0, 0x40, 0x03); // 1000
        assert_eq!(t.count(0, 0x40), 1000);
        assert_eq!(t.count(300, 0x40), 700);
        assert_eq!(t.status(998, 0) >> 7, 1);
        assert_eq!(t.status(999, 0) >> 7, 0, "OUT low for the tick at count 1");
        assert_eq!(t.status(1000, 0) >> 7, 1);
        assert_eq!(t.count(1000, 0x40), 1000, "reloaded");
        assert_eq!(t.sink.pulses(PIT_GSI), 1);
        assert_eq!(t.pit.next_deadline(&at(1000)), Some(2000 * K));
        t.pit.update(&at(1999), &mut t.sink);
        assert_eq!(t.sink.pulses(PIT_GSI), 1);
        t.pit.update(&at(2000), &mut t.sink);
        assert_eq!(t.sink.pulses(PIT_GSI), 2);
        // Ten periods unserviced: one edge, then the next period's deadline.
        t.pit.update(&at(12500), &mut t.sink);
        assert_eq!(t.sink.pulses(PIT_GSI), 3);
        assert_eq!(t.pit.next_deadline(&at(12500)), Some(13000 * K));
        // A 10-tick period interrupts no more often than every MIN_PERIOD_US.
        let mut t = T::new();
        t.out(0, 0x43, 0x34);
        t.out(0, 0x40, 10);
        t.out(0, 0x40, 0);
        t.pit.update(&at(10), &mut t.sink);
        let gap = PIT_HZ * MIN_PERIOD_US / 1000;
        assert_eq!(t.pit.next_deadline(&at(10)), Some(10 * K + gap));
        t.pit.update(&at(20), &mut t.sink);
        assert_eq!(t.sink.pulses(PIT_GSI), 1);
    }

    #[test]
    fn mode3_square_wave_on_channel2() {
        let mut t = T::new();
        t.out(0, 0x61, 1); // gate 2 high
        t.out(0, 0x43, 0xb6); // channel 2, LSB/MSB, mode 3
        t.out(0, 0x42, 101);
        t.out(0, 0x42, 0);
        let out = |t: &mut T, x| t.inb(x, 0x61) & 0x20 != 0;
        assert!(out(&mut t, 0) && out(&mut t, 50));
        assert!(!out(&mut t, 51) && !out(&mut t, 100), "odd count: 51 high, 50 low");
        assert!(out(&mut t, 101));
        assert_eq!(t.count(1, 0x42), 98);
        // Gate low forces OUT high and stops counting; gate high restarts the period.
        t.out(60, 0x61, 0);
        assert!(out(&mut t, 70));
        assert_eq!(t.count(200, 0x42), t.count(300, 0x42));
        t.out(400, 0x61, 1);
        assert_eq!(t.count(400, 0x42), 100);
        assert!(!out(&mut t, 400 + 51));
        assert_eq!(t.sink.pulses(PIT_GSI), 0, "only channel 0 interrupts");
    }

    #[test]
    fn linux_pit_calibrate_sees_out_rise_at_terminal_count() {
        // arch/x86/kernel/tsc.c: gate on, speaker off, channel 2 mode 0, 50 ms, poll bit 5.
        let mut t = T::new();
        let v = t.inb(0, 0x61);
        t.out(0, 0x61, (v & !2) | 1);
        t.out(0, 0x43, 0xb0);
        let latch: u16 = 59659;
        t.out(0, 0x42, latch as u8);
        t.out(0, 0x42, (latch >> 8) as u8);
        assert_eq!(t.inb(1, 0x61) & 0x20, 0);
        assert_eq!(t.inb(59658, 0x61) & 0x20, 0);
        assert_eq!(t.inb(59659, 0x61) & 0x20, 0x20);
        // After the terminal count the counter wraps and keeps counting; OUT stays high.
        assert_eq!(t.count(59660, 0x42), 0xffff);
        assert_eq!(t.inb(80000, 0x61) & 0x20, 0x20);
    }

    #[test]
    fn quick_pit_calibrate_reads_a_falling_msb() {
        let mut t = T::new();
        t.out(0, 0x61, 1);
        t.out(0, 0x43, 0xb0);
        t.out(0, 0x42, 0xff);
        t.out(0, 0x42, 0xff);
        let mut last = 0x100;
        for i in 0..40 {
            let [_, msb] = t.count(i * 256 + 3, 0x42).to_le_bytes();
            assert_eq!(u16::from(msb), last - 1);
            last = msb.into();
        }
    }

    #[test]
    fn refresh_bit_toggles_and_port61_keeps_its_control_bits() {
        let mut t = T::new();
        t.out(0, 0x61, 0xff);
        let (a, b) = (t.inb(0, 0x61), t.inb(0, 0x61));
        assert_eq!((a ^ b) & 0x10, 0x10);
        assert_eq!(a & 0x0f, 0x0f);
        assert_eq!(a & 0xc0, 0);
    }

    #[test]
    fn latch_and_read_back() {
        let mut t = T::new();
        t.out(0, 0x43, 0x30); // channel 0, LSB/MSB, mode 0
        t.out(0, 0x40, 0x34);
        t.out(0, 0x40, 0x12);
        t.out(5, 0x43, 0x00); // counter latch
        t.out(9, 0x43, 0x00); // ignored: already latched
        assert_eq!(t.count(500, 0x40), 0x1234 - 5);
        assert_eq!(t.count(500, 0x40), 0x1234 - 500, "latch released");
        // Read-back of count and status of channel 0: status first, then the count.
        t.out(600, 0x43, 0xc2);
        assert_eq!(t.inb(700, 0x40), 0x30, "OUT low, mode 0, LSB/MSB, binary");
        assert_eq!(t.count(800, 0x40), 0x1234 - 600);
        // Null count is set by the control word until a count is written.
        t.out(900, 0x43, 0x34);
        assert_eq!(t.status(900, 0), 0x80 | 0x40 | 0x34);
        t.out(900, 0x40, 1);
        t.out(900, 0x40, 1);
        assert_eq!(t.status(900, 0) & 0x40, 0);
    }

    #[test]
    fn access_modes_and_the_flip_flops() {
        let mut t = T::new();
        t.out(0, 0x43, 0x10); // channel 0, LSB only, mode 0
        t.out(0, 0x40, 200);
        assert_eq!(t.inb(10, 0x40), 190);
        assert_eq!(t.inb(20, 0x40), 180);
        t.out(0, 0x43, 0x20); // MSB only
        t.out(0, 0x40, 2);
        assert_eq!(t.inb(0, 0x40), 2);
        assert_eq!(t.inb(1, 0x40), 1, "0x200 - 1 = 0x1ff");
        // LSB/MSB: a half-written count stops mode 0 and pulls OUT low.
        t.out(0, 0x43, 0x30);
        t.out(0, 0x40, 10);
        t.out(0, 0x40, 0);
        assert_eq!(t.status(20, 0) >> 7, 1);
        t.out(30, 0x40, 5);
        assert_eq!(t.status(40, 0) >> 7, 0);
        t.out(50, 0x40, 0);
        assert_eq!(t.status(54, 0) >> 7, 0);
        assert_eq!(t.status(55, 0) >> 7, 1);
        // A 16-bit OUT writes two consecutive ports; a count of 0 is 65536.
        t.out(0, 0x43, 0x34);
        t.pit.write(&at(0), &mut t.sink, 0x40, 1, 0);
        t.pit.write(&at(0), &mut t.sink, 0x40, 1, 0);
        assert_eq!(t.count(1, 0x40), 0xffff);
    }

    #[test]
    fn mode0_and_mode4_interrupt_once() {
        let mut t = T::new();
        t.out(0, 0x43, 0x30);
        t.out(0, 0x40, 50);
        t.out(0, 0x40, 0);
        assert_eq!(t.pit.next_deadline(&at(0)), Some(50 * K));
        t.pit.update(&at(49), &mut t.sink);
        assert_eq!(t.sink.pulses(PIT_GSI), 0);
        t.pit.update(&at(50), &mut t.sink);
        t.pit.update(&at(5000), &mut t.sink);
        assert_eq!(t.sink.pulses(PIT_GSI), 1);
        assert_eq!(t.pit.next_deadline(&at(5000)), None);
        // Linux's one-shot clockevent: mode 4, OUT pulses low at the terminal count.
        t.out(6000, 0x43, 0x38);
        t.out(6000, 0x40, 10);
        t.out(6000, 0x40, 0);
        assert_eq!(t.pit.next_deadline(&at(6000)), Some(6011 * K));
        assert_eq!(t.status(6010, 0) >> 7, 0);
        assert_eq!(t.sink.pulses(PIT_GSI), 1);
        assert_eq!(t.status(6011, 0) >> 7, 1);
        assert_eq!(t.sink.pulses(PIT_GSI), 2);
    }

    #[test]
    fn mode2_new_count_waits_for_the_period_end() {
        let mut t = T::new();
        t.out(0, 0x43, 0x34);
        t.out(0, 0x40, 0xe8);
        t.out(0, 0x40, 0x03); // 1000
        t.out(300, 0x40, 0x90);
        t.out(300, 0x40, 0x01); // 400
        assert_eq!(t.count(600, 0x40), 400, "current period unaffected");
        assert_eq!(t.count(1000, 0x40), 400, "new count loaded");
        assert_eq!(t.count(1300, 0x40), 100);
        assert_eq!(t.count(1400, 0x40), 400);
        assert_eq!(t.sink.pulses(PIT_GSI), 2, "the edges at 1000 and 1400");
    }

    #[test]
    fn mode1_and_mode5_are_gate_triggered() {
        let mut t = T::new();
        t.out(0, 0x43, 0x92); // channel 2, LSB, mode 1
        t.out(0, 0x42, 20);
        assert_eq!(t.inb(50, 0x61) & 0x20, 0x20, "OUT high until triggered");
        t.out(100, 0x61, 1);
        assert_eq!(t.inb(110, 0x61) & 0x20, 0);
        assert_eq!(t.inb(120, 0x61) & 0x20, 0x20);
        t.out(130, 0x61, 0);
        t.out(140, 0x61, 1); // retrigger
        assert_eq!(t.inb(150, 0x61) & 0x20, 0);
        t.out(200, 0x43, 0x9a); // mode 5
        t.out(200, 0x42, 5);
        t.out(210, 0x61, 0);
        t.out(220, 0x61, 1);
        assert_eq!(t.status(225, 2) >> 7, 0);
        assert_eq!(t.status(226, 2) >> 7, 1);
    }

    #[test]
    fn bcd_counting() {
        let mut t = T::new();
        t.out(0, 0x43, 0x31); // mode 0, BCD
        t.out(0, 0x40, 0x00);
        t.out(0, 0x40, 0x10); // 1000 decimal
        assert_eq!(t.count(1, 0x40), 0x0999);
        assert_eq!(t.count(1000, 0x40), 0);
        assert_eq!(t.count(1001, 0x40), 0x9999);
        assert_eq!(t.status(0, 0) & 1, 1);
    }

    #[test]
    fn reset_state_is_mode3_at_18_hz() {
        let t = T::new();
        assert_eq!(t.pit.next_deadline(&at(0)), Some(65536 * K));
    }

    proptest! {
        #[test]
        fn no_sequence_panics_and_deadlines_are_not_early(
            ops in proptest::collection::vec((0u16..8, any::<u8>(), 0u64..200_000, any::<bool>()), 1..60),
            khz in 1u64..5_000_000,
        ) {
            let mut pit = Pit::new(&Clock { now: 0, tsc_khz: khz });
            let mut sink = Sink::default();
            let mut now = 0u64;
            for (p, v, dt, w) in ops {
                now = now.saturating_add(dt);
                let c = Clock { now, tsc_khz: khz };
                let port = [0x40, 0x41, 0x42, 0x43, 0x61, 0x44, 0x60, 0x62][usize::from(p)];
                if w { pit.write(&c, &mut sink, port, 1 + v % 4, u32::from(v) * 0x0101_0101) }
                else { pit.read(&c, &mut sink, port, 1 + v % 4); }
                if let Some(d) = pit.next_deadline(&c).filter(|d| *d > now) {
                    let (mut early, mut s) = (pit.clone(), Sink::default());
                    early.update(&Clock { now: d - 1, tsc_khz: khz }, &mut s);
                    prop_assert_eq!(s.pulses(PIT_GSI), 0);
                }
            }
        }

        #[test]
        fn mode2_counts_down_monotonically_within_a_period(n in 2u16..=u16::MAX, a in 0u64..1_000_000, b in 0u64..1_000_000) {
            let mut t = T::new();
            t.out(0, 0x43, 0x34);
            t.out(0, 0x40, n as u8);
            t.out(0, 0x40, (n >> 8) as u8);
            let (a, b) = (a.min(b), a.max(b));
            let (ca, cb) = (t.count(a, 0x40), t.count(b, 0x40));
            prop_assert!(ca >= 1 && ca <= n && cb >= 1 && cb <= n);
            if a / u64::from(n) == b / u64::from(n) { prop_assert!(cb <= ca); }
        }
    }
}
