//! The HPET (IA-PC HPET specification 1.0a) at [`HPET_BASE`]: a 64-bit main counter at
//! 100 MHz (period 10 ns, like QEMU's; the specification allows at most 100 ns) and three
//! comparators, each 64-bit capable, periodic capable, edge or level triggered. The main
//! counter is the [`Clock`] scaled, offset by what the guest wrote while the counter was halted.
//!
//! Routing: with LegacyReplacement (LEG_RT_CNF) on, timer 0 drives ISA IRQ 0 and timer 1 ISA
//! IRQ 8, which the [`IrqSink`] names GSIs 0 and 8 ([`LEGACY_GSI`]), the lines the PIT and the
//! RTC use; the platform applies the same interrupt source override (IRQ 0 to I/O APIC pin 2)
//! as for the PIT, and while [`Hpet::legacy_replacement`] holds it drops the PIT's and RTC's
//! own outputs, as the specification disconnects them. Otherwise a timer drives the I/O APIC pin
//! its Tn_INT_ROUTE_CNF names, among those in [`HPET_ROUTE_CAP`]; a value outside the
//! capability is not taken (the specification's "reads back differently"). No FSB delivery.
//!
//! Comparators match when the counter reaches them (the low 32 bits in 32-bit mode, so a
//! one-shot 32-bit timer matches again after each 2^32 ticks). A periodic timer adds its period
//! to the comparator at each match; if the guest did not run for several periods, one interrupt
//! is delivered and the comparator skips to the next period in the future (no replay).

use super::{Clock, IrqSink};

/// Guest-physical base of the register block.
pub const HPET_BASE: u64 = abi::platform::HPET_BASE;
/// Size of the register block (bytes).
pub const HPET_LEN: u64 = 0x400;
/// COUNTER_CLK_PERIOD in femtoseconds.
pub const HPET_PERIOD_FS: u64 = 10_000_000;
/// The main counter's rate (Hz).
pub const HPET_HZ: u64 = 1_000_000_000_000_000 / HPET_PERIOD_FS;
/// Number of comparators.
pub const HPET_TIMERS: usize = 3;
/// Tn_INT_ROUTE_CAP of every timer: I/O APIC pins 16–23, which no ISA device uses.
pub const HPET_ROUTE_CAP: u32 = 0x00ff_0000;
/// The lines of timers 0 and 1 under LegacyReplacement: ISA IRQs 0 and 8.
pub const LEGACY_GSI: [u32; 2] = [0, 8];
/// Periodic timers interrupt at most this often (µs): a guest programming a period of a few
/// nanoseconds must not keep the host in exits. Periods above it are exact.
pub const MIN_PERIOD_US: u64 = 100;

/// General capabilities: revision 1, NUM_TIM_CAP, COUNT_SIZE_CAP, LEG_RT_CAP, Intel's vendor
/// ID, the period.
const CAPS: u64 =
    HPET_PERIOD_FS << 32 | 0x8086 << 16 | 1 << 15 | 1 << 13 | (HPET_TIMERS as u64 - 1) << 8 | 1;
const ENABLE: u64 = 1;
const LEG_RT: u64 = 2;
// Tn_CONF bits.
const LEVEL: u64 = 1 << 1;
const ENB: u64 = 1 << 2;
const PERIODIC: u64 = 1 << 3;
const PER_CAP: u64 = 1 << 4;
const SIZE_CAP: u64 = 1 << 5;
const VAL_SET: u64 = 1 << 6;
const MODE32: u64 = 1 << 8;
const ROUTE: u64 = 0x1f << 9;
const CONF_RW: u64 = LEVEL | ENB | PERIODIC | VAL_SET | MODE32;

#[derive(Debug, Clone, Copy)]
struct Timer {
    /// The writable Tn_CONF bits.
    cfg: u64,
    cmp: u64,
    period: u64,
    /// Ticks after `Hpet::since` at which the counter next reaches the comparator.
    fire: Option<u64>,
    /// TSC of the last interrupt, for [`MIN_PERIOD_US`].
    last: Option<u64>,
}

/// One domain's HPET.
#[derive(Debug, Clone)]
pub struct Hpet {
    conf: u64,
    isr: u64,
    /// The main counter when it was last enabled or written.
    count: u64,
    /// TSC at which the counter was last enabled.
    since: u64,
    t: [Timer; HPET_TIMERS],
    /// The line each level-triggered timer holds asserted.
    held: [Option<u32>; HPET_TIMERS],
}

impl Hpet {
    /// The HPET after reset: counter halted at 0, comparators all ones, no interrupts.
    pub(crate) fn new() -> Self {
        let t = Timer { cfg: 0, cmp: u64::MAX, period: 0, fire: None, last: None };
        Hpet { conf: 0, isr: 0, count: 0, since: 0, t: [t; HPET_TIMERS], held: [None; HPET_TIMERS] }
    }

    /// Whether LegacyReplacement is on: the PIT's and RTC's interrupt outputs must then be
    /// disconnected, since timers 0 and 1 own their lines.
    pub fn legacy_replacement(&self) -> bool {
        self.conf & LEG_RT != 0
    }

    /// The main counter at `clock`.
    pub fn counter(&self, clock: &Clock) -> u64 {
        self.count.wrapping_add(self.mono(clock))
    }

    /// A load of `size` (1, 2, 4 or 8) bytes at `offset` in the block; 32-bit halves of the
    /// 64-bit registers read independently. Anything else reads as 0.
    pub fn read(&mut self, clock: &Clock, sink: &mut impl IrqSink, offset: u64, size: u8) -> u64 {
        self.update(clock, sink);
        let Some((reg, shift, mask)) = access(offset, size) else { return 0 };
        let v = match (reg, timer_reg(reg).and_then(|(i, r)| Some((self.t.get(i)?, r)))) {
            (0x00, _) => CAPS,
            (0x10, _) => self.conf,
            (0x20, _) => self.isr,
            (0xf0, _) => self.counter(clock),
            (_, Some((t, 0))) => t.cfg | PER_CAP | SIZE_CAP | u64::from(HPET_ROUTE_CAP) << 32,
            (_, Some((t, 8))) => t.cmp,
            _ => 0,
        };
        (v >> shift) & mask
    }

    /// A store of `size` bytes of `value` at `offset`, merged into the register it falls in.
    pub fn write(
        &mut self,
        clock: &Clock,
        sink: &mut impl IrqSink,
        offset: u64,
        size: u8,
        value: u64,
    ) {
        self.update(clock, sink);
        let Some((reg, shift, mask)) = access(offset, size) else { return };
        let merge = |old: u64| old & !(mask << shift) | (value & mask) << shift;
        match reg {
            0x10 => self.set_conf(clock, merge(self.conf) & (ENABLE | LEG_RT)),
            0x20 => self.isr &= !merge(0),
            // The specification lets software write the counter only while it is halted.
            0xf0 if self.conf & ENABLE == 0 => self.count = merge(self.count),
            _ => {
                if let Some((i, r)) = timer_reg(reg) {
                    self.write_timer(clock, i, r, merge);
                }
            }
        }
        self.drive(sink);
    }

    /// Delivers the comparator matches up to `clock`: a pulse per matching edge-triggered
    /// timer, a status bit and an asserted line per level-triggered one.
    pub fn update(&mut self, clock: &Clock, sink: &mut impl IrqSink) {
        let m = self.mono(clock);
        for i in (0..HPET_TIMERS).filter(|_| self.conf & ENABLE != 0) {
            let (route, not_before) = (self.route(i), self.not_before(i, clock));
            let Some(t) = self.t.get_mut(i) else { continue };
            let Some(f) = t.fire.filter(|f| *f <= m && clock.now >= not_before) else { continue };
            let (w, n): (u64, u64) = (if t.cfg & MODE32 != 0 { 1 << 32 } else { 0 }, m - f);
            let p = if t.cfg & PERIODIC != 0 { t.period } else { 0 };
            if let Some(k) = n.checked_div(p).map(|k| k.saturating_add(1)) {
                t.fire = f.checked_add(k.saturating_mul(p));
                t.cmp = t.cmp.wrapping_add(k.wrapping_mul(p)) & (w.wrapping_sub(1));
            } else if let Some(q) = n.checked_div(w) {
                t.fire = f.checked_add((q + 1).saturating_mul(w));
            } else {
                t.fire = None;
            }
            if t.cfg & ENB != 0 && route.is_some() {
                t.last = Some(clock.now);
            }
            if t.cfg & LEVEL != 0 {
                self.isr |= 1 << i;
            } else if let Some(g) = route.filter(|_| t.cfg & ENB != 0) {
                sink.pulse(g);
            }
        }
        self.drive(sink);
    }

    /// The TSC at which [`Hpet::update`] will next raise an interrupt, if a timer will.
    pub fn next_deadline(&self, clock: &Clock) -> Option<u64> {
        (0..HPET_TIMERS)
            .filter_map(|i| {
                let t = self.t.get(i)?;
                let pending_level = t.cfg & LEVEL != 0 && self.isr & (1 << i) != 0;
                if t.cfg & ENB == 0 || self.route(i).is_none() || pending_level {
                    return None;
                }
                let at = clock.tsc_after(self.since, t.fire?, HPET_HZ);
                Some(at.max(self.not_before(i, clock)))
            })
            .min()
            .filter(|_| self.conf & ENABLE != 0)
    }

    /// Counter ticks since it was enabled (0 while halted).
    fn mono(&self, clock: &Clock) -> u64 {
        if self.conf & ENABLE != 0 { clock.device_ticks(self.since, HPET_HZ) } else { 0 }
    }

    fn route(&self, i: usize) -> Option<u32> {
        if self.conf & LEG_RT != 0 && i < 2 {
            return LEGACY_GSI.get(i).copied();
        }
        let r = ((self.t.get(i)?.cfg & ROUTE) >> 9) as u32;
        (HPET_ROUTE_CAP & (1 << r) != 0).then_some(r)
    }

    fn not_before(&self, i: usize, clock: &Clock) -> u64 {
        match self.t.get(i) {
            Some(&Timer { cfg, last: Some(l), .. }) if cfg & PERIODIC != 0 => {
                l.saturating_add(clock.tsc_khz.saturating_mul(MIN_PERIOD_US) / 1000)
            }
            _ => 0,
        }
    }

    /// Recomputes when the counter next reaches timer `i`'s comparator.
    fn arm(&mut self, i: usize, clock: &Clock) {
        let (now, m) = (self.counter(clock), self.mono(clock));
        let Some(t) = self.t.get_mut(i) else { return };
        let dist = if t.cfg & MODE32 != 0 {
            match (t.cmp as u32).wrapping_sub(now as u32) {
                0 => 1 << 32,
                d => d.into(),
            }
        } else {
            t.cmp.wrapping_sub(now)
        };
        t.fire = if dist == 0 { None } else { m.checked_add(dist) };
    }

    fn set_conf(&mut self, clock: &Clock, new: u64) {
        let was = self.conf & ENABLE != 0;
        if was && new & ENABLE == 0 {
            self.count = self.counter(clock);
        }
        self.conf = new;
        if !was && new & ENABLE != 0 {
            self.since = clock.now;
            for i in 0..HPET_TIMERS {
                self.arm(i, clock);
            }
        }
    }

    fn write_timer(&mut self, clock: &Clock, i: usize, r: u64, merge: impl Fn(u64) -> u64) {
        let Some(t) = self.t.get_mut(i) else { return };
        match r {
            0 => {
                let new = merge(t.cfg);
                let ok = HPET_ROUTE_CAP & (1 << ((new & ROUTE) >> 9)) != 0;
                t.cfg = new & CONF_RW | if ok { new & ROUTE } else { t.cfg & ROUTE };
                if t.cfg & MODE32 != 0 {
                    (t.cmp, t.period) = (t.cmp & 0xffff_ffff, t.period & 0xffff_ffff);
                }
                // Edge-triggered timers have no status.
                if t.cfg & LEVEL == 0 {
                    self.isr &= !(1 << i);
                }
            }
            8 => {
                let w = if t.cfg & MODE32 != 0 { 0xffff_ffff } else { u64::MAX };
                // A periodic timer's comparator is set only with Tn_VAL_SET_CNF; every write
                // sets the period, and the bit clears itself.
                if t.cfg & PERIODIC == 0 || t.cfg & VAL_SET != 0 {
                    t.cmp = merge(t.cmp) & w;
                }
                t.period = merge(t.period) & w;
                t.cfg &= !VAL_SET;
            }
            _ => return,
        }
        self.arm(i, clock);
    }

    /// Asserts the lines of level-triggered timers with status and enable set, and drops the
    /// ones no longer wanted (several timers may share a line).
    fn drive(&mut self, sink: &mut impl IrqSink) {
        let want: [Option<u32>; HPET_TIMERS] = core::array::from_fn(|i| {
            let cfg = self.t.get(i).map_or(0, |t| t.cfg);
            let on = self.conf & ENABLE != 0 && cfg & (LEVEL | ENB) == LEVEL | ENB;
            if on && self.isr & (1 << i) != 0 { self.route(i) } else { None }
        });
        for g in self.held.iter().flatten().filter(|g| !want.contains(&Some(**g))) {
            sink.set_level(*g, false);
        }
        for g in want.iter().flatten().filter(|g| !self.held.contains(&Some(**g))) {
            sink.set_level(*g, true);
        }
        self.held = want;
    }
}

/// The 8-byte register an access falls in, the bit shift of the access within it and the mask
/// of its size; `None` for sizes other than 1, 2, 4, 8 or an access across registers.
fn access(offset: u64, size: u8) -> Option<(u64, u32, u64)> {
    let (lo, len) = (offset & 7, u64::from(size));
    if !matches!(size, 1 | 2 | 4 | 8) || offset >= HPET_LEN || lo + len > 8 {
        return None;
    }
    Some((offset - lo, (8 * lo) as u32, u64::MAX >> (64 - 8 * len)))
}

/// Timer index and register offset (0 config, 8 comparator, 0x10 FSB route) of a register.
fn timer_reg(reg: u64) -> Option<(usize, u64)> {
    let r = reg.checked_sub(0x100)?;
    let i = usize::try_from(r / 0x20).ok()?;
    (i < HPET_TIMERS).then_some((i, r % 0x20))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use abi::testutil::Sink;

    /// A 1 GHz TSC: 10 cycles per HPET tick.
    fn at(ticks: u64) -> Clock {
        Clock { now: ticks * 10, tsc_khz: 1_000_000 }
    }

    struct T {
        h: Hpet,
        s: Sink,
    }
    impl T {
        fn new() -> Self {
            T { h: Hpet::new(), s: Sink::default() }
        }
        fn rd(&mut self, t: u64, off: u64, size: u8) -> u64 {
            self.h.read(&at(t), &mut self.s, off, size)
        }
        fn wr(&mut self, t: u64, off: u64, size: u8, v: u64) {
            self.h.write(&at(t), &mut self.s, off, size, v);
        }
    }

    #[test]
    fn capabilities() {
        let mut t = T::new();
        assert_eq!(t.rd(0, 0, 4), 0x8086_a201);
        assert_eq!(t.rd(0, 4, 4), 10_000_000, "Linux's HPET_PERIOD read");
        assert_eq!(t.rd(0, 0, 8), 10_000_000 << 32 | 0x8086_a201);
        assert_eq!(t.rd(0, 0x100, 8), 0x00ff_0000_0000_0030, "periodic and 64-bit capable");
        assert_eq!(t.rd(0, 0x108, 8), u64::MAX);
        assert_eq!(t.rd(0, 0x110, 8), 0, "no FSB");
        assert_eq!(t.rd(0, 0x160, 8), 0, "no fourth timer");
        assert_eq!(t.rd(0, 6, 4), 0, "across registers");
        assert_eq!(t.rd(0, 2, 2), 0x8086);
        assert_eq!(t.rd(0, 0x400, 4), 0);
    }

    #[test]
    fn counter_rate_halting_and_halves() {
        let (khz, t0) = (2_893_417, 1 << 40);
        let c = |dt: u64| Clock { now: t0 + dt, tsc_khz: khz };
        let (mut h, mut s) = (Hpet::new(), Sink::default());
        h.write(&c(0), &mut s, 0x10, 4, 1);
        let ms = h.read(&c(khz), &mut s, 0xf0, 8);
        assert!(ms.abs_diff(HPET_HZ / 1000) <= 1, "{ms}");
        // Halted: frozen and writable, in 32-bit halves as Linux's hpet_restart_counter does.
        let mut t = T::new();
        t.wr(0, 0xf0, 4, 0xdead_beef);
        t.wr(0, 0xf4, 4, 0x1234);
        assert_eq!(t.rd(100, 0xf0, 8), 0x1234_dead_beef);
        t.wr(100, 0x10, 4, 1);
        assert_eq!(t.rd(150, 0xf0, 4), 0xdead_beef + 50);
        assert_eq!(t.rd(150, 0xf4, 4), 0x1234);
        t.wr(150, 0xf0, 8, 0); // ignored while running
        assert_eq!(t.rd(200, 0xf0, 8), 0x1234_dead_beef + 100);
        t.wr(200, 0x10, 4, 0);
        assert_eq!(t.rd(900, 0xf0, 8), 0x1234_dead_beef + 100);
        // The low half carries into the high half.
        t.wr(900, 0xf0, 8, 0xffff_fff0);
        t.wr(900, 0x10, 4, 1);
        assert_eq!(t.rd(920, 0xf4, 4), 1);
        assert_eq!(t.rd(920, 0xf0, 4), 4);
    }

    #[test]
    fn linux_legacy_periodic_clockevent() {
        // hpet_clkevt_set_state_periodic with HZ = 1000, after hpet_enable_legacy_int.
        let mut t = T::new();
        let delta = HPET_HZ / 1000;
        t.wr(0, 0x10, 4, LEG_RT | ENABLE);
        t.wr(500, 0x10, 4, LEG_RT); // hpet_stop_counter
        let now = t.rd(500, 0xf0, 4);
        let cfg = t.rd(500, 0x100, 4) | ENB | PERIODIC | VAL_SET | MODE32;
        t.wr(500, 0x100, 4, cfg);
        t.wr(500, 0x108, 4, now + delta);
        t.wr(501, 0x108, 4, delta);
        t.wr(502, 0x10, 4, LEG_RT | ENABLE);
        assert!(t.h.legacy_replacement());
        assert_eq!(t.rd(502, 0x108, 8), now + delta);
        assert_eq!(t.h.next_deadline(&at(502)), Some((502 + delta) * 10));
        t.h.update(&at(502 + delta - 1), &mut t.s);
        assert_eq!(t.s.pulses(0), 0);
        for k in 1..=3 {
            t.h.update(&at(502 + k * delta), &mut t.s);
            assert_eq!(t.s.pulses(0), k as usize, "IRQ0 on each period");
            assert_eq!(t.rd(502 + k * delta, 0x108, 8), now + (k + 1) * delta);
        }
        // Ten periods missed: one interrupt, the comparator skips ahead.
        t.h.update(&at(502 + 13 * delta + 7), &mut t.s);
        assert_eq!(t.s.pulses(0), 4);
        assert_eq!(t.rd(502 + 13 * delta + 7, 0x108, 4), now + 14 * delta);
        assert_eq!(t.h.next_deadline(&at(0)), Some((502 + 14 * delta) * 10));
        assert_eq!(t.rd(0, 0x20, 4), 0, "edge-triggered: no status");
    }

    #[test]
    fn one_shot_32_bit_matches_again_after_the_wrap() {
        let mut t = T::new();
        t.wr(0, 0x10, 4, 1);
        t.wr(0, 0x120, 4, ENB | MODE32 | 20 << 9); // timer 1 to pin 20, edge
        let cnt = t.rd(1000, 0xf0, 4);
        t.wr(1000, 0x128, 4, cnt + 300); // hpet_clkevt_set_next_event
        assert_eq!(t.h.next_deadline(&at(1000)), Some(1300 * 10));
        t.h.update(&at(1300), &mut t.s);
        t.h.update(&at(5000), &mut t.s);
        assert_eq!(t.s.pulses(20), 1);
        assert_eq!(t.h.next_deadline(&at(5000)), Some((1300 + (1 << 32)) * 10));
        // A 64-bit comparator already passed never matches (before the counter wraps).
        t.wr(5000, 0x120, 4, ENB | 20 << 9);
        t.wr(5000, 0x128, 8, 10);
        assert_eq!(t.h.next_deadline(&at(5000)), None);
        // Upper half writes are ignored in 32-bit mode.
        t.wr(5000, 0x120, 4, ENB | MODE32 | 20 << 9);
        t.wr(5000, 0x12c, 4, 7);
        assert_eq!(t.rd(5000, 0x128, 8), 10);
    }

    #[test]
    fn level_triggered_status_and_routing() {
        let mut t = T::new();
        t.wr(0, 0x140, 4, LEVEL | 21 << 9); // timer 2, level, not enabled
        t.wr(0, 0x148, 8, 100);
        t.wr(0, 0x10, 4, 1);
        assert_eq!(t.h.next_deadline(&at(0)), None, "no interrupt to deliver");
        assert_eq!(t.rd(100, 0x20, 4), 4, "status set without INT_ENB");
        assert!(t.s.0.is_empty());
        t.wr(100, 0x140, 4, LEVEL | ENB | 21 << 9);
        assert_eq!(t.s.0, [(21, true)]);
        t.wr(101, 0x20, 4, 0);
        assert_eq!(t.s.0.len(), 1, "writing 0 leaves it");
        t.wr(101, 0x20, 4, 4);
        assert_eq!(t.s.0, [(21, true), (21, false)]);
        // A route outside INT_ROUTE_CAP is not taken.
        t.wr(101, 0x140, 4, LEVEL | ENB | 5 << 9);
        assert_eq!(t.rd(101, 0x140, 4) >> 9 & 0x1f, 21);
        // Legacy replacement moves timer 1 to IRQ 8 but leaves timer 2 where it was.
        t.wr(101, 0x10, 4, 3);
        t.wr(101, 0x120, 4, ENB);
        t.wr(101, 0x128, 8, 200);
        t.wr(101, 0x148, 4, 250);
        t.h.update(&at(300), &mut t.s);
        assert_eq!(t.s.pulses(8), 1);
        assert_eq!(t.s.pulses(21), 2);
        // Halting the counter drops level lines.
        t.wr(300, 0x10, 4, 2);
        assert_eq!(t.s.0.last(), Some(&(21, false)));
        assert_eq!(t.rd(300, 0x20, 4), 4);
    }

    #[test]
    fn tiny_periods_are_spaced() {
        let mut t = T::new();
        t.wr(0, 0x100, 4, ENB | PERIODIC | VAL_SET);
        t.wr(0, 0x108, 8, 10);
        t.wr(0, 0x108, 8, 10);
        t.wr(0, 0x10, 4, 3);
        t.h.update(&at(10), &mut t.s);
        let gap = 1_000_000 * MIN_PERIOD_US / 1000;
        assert_eq!(t.h.next_deadline(&at(10)), Some(100 + gap));
        t.h.update(&at(50), &mut t.s);
        assert_eq!(t.s.pulses(0), 1);
    }

    proptest! {
        #[test]
        fn no_sequence_panics_and_deadlines_are_not_early(
            ops in proptest::collection::vec((0u64..0x101, 0usize..4, any::<u64>(), 0u64..100_000, any::<bool>()), 1..60),
            khz in 1u64..5_000_000,
        ) {
            let (mut h, mut s) = (Hpet::new(), Sink::default());
            let mut now = 0u64;
            for (off, size, v, dt, w) in ops {
                now = now.saturating_add(dt);
                let c = Clock { now, tsc_khz: khz };
                let size = [1, 2, 4, 8][size];
                if w { h.write(&c, &mut s, off * 4, size, v) } else { h.read(&c, &mut s, off * 4, size); }
                if let Some(d) = h.next_deadline(&c).filter(|d| *d > now) {
                    let (mut early, mut s2) = (h.clone(), Sink::default());
                    early.update(&Clock { now: d - 1, tsc_khz: khz }, &mut s2);
                    prop_assert!(s2.0.iter().all(|e| !e.1), "{:?}", s2.0);
                }
            }
        }

        #[test]
        fn the_running_counter_is_monotonic(
            ops in proptest::collection::vec((0u64..0x60, any::<u64>(), 0u64..1_000_000), 1..40),
        ) {
            let mut t = T::new();
            t.wr(0, 0x10, 4, 1);
            let (mut now, mut last) = (0, 0);
            for (off, v, dt) in ops {
                now += dt;
                t.wr(now, 0x100 + off * 4, 4, v);
                let c = t.rd(now, 0xf0, 8);
                prop_assert!(c >= last);
                last = c;
            }
        }
    }
}
