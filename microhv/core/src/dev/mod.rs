//! Device models of the virtual PC that unmodified guests see (shared/design.md, "The virtual
//! platform"). One device per file; each is a pure state machine driven by the core: port or
//! MMIO accesses come in as calls, time comes in as a [`Clock`], interrupts go out through an
//! [`IrqSink`]. Nothing here executes a privileged instruction, so every model is tested on the
//! host.

pub mod fwcfg;
pub mod hpet;
pub mod ioapic;
pub mod lapic;
pub mod pic;
pub mod pit;
pub mod pmtimer;
pub mod rtc;
pub mod uart;

/// Time as the device models see it: the host TSC and its frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// The TSC now.
    pub now: u64,
    /// TSC ticks per millisecond.
    pub tsc_khz: u64,
}

impl Clock {
    /// Ticks of a `hz` clock in the TSC interval `[since, self.now)` (0 if `since` is later).
    pub fn device_ticks(&self, since: u64, hz: u64) -> u64 {
        let elapsed = self.now.saturating_sub(since);
        let t = u128::from(elapsed) * u128::from(hz) / (u128::from(self.tsc_khz.max(1)) * 1000);
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// The TSC value at which `ticks` ticks of a `hz` clock will have passed since `since`
    /// (rounded up, so a deadline is never early).
    pub fn tsc_after(&self, since: u64, ticks: u64, hz: u64) -> u64 {
        let num = u128::from(ticks) * u128::from(self.tsc_khz.max(1)) * 1000;
        let d = num.div_ceil(u128::from(hz.max(1)));
        since.saturating_add(u64::try_from(d).unwrap_or(u64::MAX))
    }
}

/// Where devices raise interrupts: global system interrupt (GSI) lines, numbered as the I/O
/// APIC's pins (ISA IRQ n is GSI n, except where an interrupt source override says otherwise).
pub trait IrqSink {
    /// Drives line `gsi` to `high`.
    fn set_level(&mut self, gsi: u32, high: bool);
    /// An edge: the line goes high, then low.
    fn pulse(&mut self, gsi: u32) {
        self.set_level(gsi, true);
        self.set_level(gsi, false);
    }
}

/// Test doubles shared by the device models' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::vec::Vec;

    /// An [`super::IrqSink`] that records every level it is driven to.
    #[derive(Default)]
    pub struct Sink(pub Vec<(u32, bool)>);

    impl super::IrqSink for Sink {
        fn set_level(&mut self, gsi: u32, high: bool) {
            self.0.push((gsi, high));
        }
    }

    impl Sink {
        /// Rising edges on `gsi`.
        pub fn pulses(&self, gsi: u32) -> usize {
            self.0.iter().filter(|e| **e == (gsi, true)).count()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;

    #[test]
    fn device_ticks_round_down_and_deadlines_round_up() {
        // A 3 GHz TSC and the PIT's 1.193182 MHz.
        let c = Clock { now: 3_000_000_000, tsc_khz: 3_000_000 };
        assert_eq!(c.device_ticks(0, 1_193_182), 1_193_182);
        assert_eq!(c.device_ticks(c.now + 1, 1_193_182), 0);
        let at = c.tsc_after(0, 1, 1_193_182);
        assert_eq!(at, 2515); // 3e9 / 1193182 = 2514.3
        assert_eq!(Clock { now: at, ..c }.device_ticks(0, 1_193_182), 1);
        assert_eq!(Clock { now: at - 1, ..c }.device_ticks(0, 1_193_182), 0);
    }
}
