//! The ACPI fixed-hardware block: the PM timer and the PM1a event and control registers, at
//! the I/O base ICH9 uses ([`PM_BASE`]), laid out as on PIIX4 and ICH9: PM1a_EVT_BLK
//! (PM1_STS, PM1_EN) at +0, PM1a_CNT_BLK at +4, PM_TMR_BLK at +8. The FADT that dom0's builder
//! writes takes these constants; it declares no PM1b, PM2 or GPE blocks and no SMI_CMD port,
//! so the platform is always in ACPI mode (SCI_EN reads 1 from reset).
//!
//! The timer is 24 bits wide (FADT flag TMR_VAL_EXT clear, [`TMR_VAL_EXT`]), as on QEMU and
//! most chipsets; Linux masks it to 24 bits anyway. TMR_STS is set whenever bit 23 changes
//! (every 2^23 ticks, about 2.34 s); the SCI (a level line, [`SCI_GSI`]) is asserted while a
//! status bit and its enable bit are both set and SCI_EN is on. Status bits are write-1-to-
//! clear. Writing SLP_EN with SLP_TYP = [`SLP_TYP_S5`] (what the DSDT's `\_S5` must declare)
//! powers off; other sleep types are ignored (no S1–S4). There is no reset register here: the
//! FADT's RESET_REG names port 0xCF9, which the platform serves elsewhere.

use super::{Clock, IrqSink};

/// I/O base of the block (ICH9's PMBASE).
pub const PM_BASE: u16 = abi::platform::PM_BASE;
/// Ports the block occupies from [`PM_BASE`].
pub const PM_LEN: u16 = 12;
/// FADT PM1a_EVT_BLK (PM1_STS then PM1_EN).
pub const PM1A_EVT_BLK: u16 = abi::platform::PM1A_EVT_BLK;
/// FADT PM1_EVT_LEN.
pub const PM1_EVT_LEN: u8 = 4;
/// FADT PM1a_CNT_BLK.
pub const PM1A_CNT_BLK: u16 = abi::platform::PM1A_CNT_BLK;
/// FADT PM1_CNT_LEN.
pub const PM1_CNT_LEN: u8 = 2;
/// FADT PM_TMR_BLK.
pub const PM_TMR_BLK: u16 = abi::platform::PM_TMR_BLK;
/// FADT PM_TMR_LEN.
pub const PM_TMR_LEN: u8 = 4;
/// The PM timer's rate (Hz), fixed by the ACPI specification.
pub const PM_TMR_HZ: u64 = 3_579_545;
/// FADT flag TMR_VAL_EXT: false, the timer is 24 bits wide.
pub const TMR_VAL_EXT: bool = false;
/// FADT SCI_INT: the SCI's line (ISA IRQ 9, level; the MADT's override marks it so).
pub const SCI_GSI: u32 = abi::platform::SCI_IRQ;
/// SLP_TYP value of S5 (soft off), ICH9's encoding; the DSDT's `\_S5` package carries it.
pub const SLP_TYP_S5: u8 = abi::platform::SLP_TYP_S5;

const TMR_BITS: u32 = if TMR_VAL_EXT { 32 } else { 24 };
// PM1_STS / PM1_EN bits.
const TMR: u16 = 1;
const BM: u16 = 1 << 4;
const GBL: u16 = 1 << 5;
const PWRBTN: u16 = 1 << 8;
const SLPBTN: u16 = 1 << 9;
const RTC: u16 = 1 << 10;
const WAK: u16 = 1 << 15;
const STS_W1C: u16 = TMR | BM | GBL | PWRBTN | SLPBTN | RTC | WAK;
const EN_RW: u16 = TMR | GBL | PWRBTN | SLPBTN | RTC;
// PM1_CNT bits: SCI_EN, BM_RLD and SLP_TYP are kept; GBL_RLS and SLP_EN are write-only.
const SCI_EN: u16 = 1;
const CNT_RW: u16 = SCI_EN | 1 << 1 | 7 << 10;
const SLP_EN: u16 = 1 << 13;

/// What a write to the block asks of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmOutcome {
    /// Nothing beyond the register update.
    None,
    /// The guest entered S5: power the domain off.
    PowerOff,
}

/// The PM timer and PM1a registers of one domain.
#[derive(Debug, Clone)]
pub struct PmTimer {
    /// TSC at which the timer read 0.
    origin: u64,
    sts: u16,
    en: u16,
    cnt: u16,
    /// Timer ticks >> (TMR_BITS - 1) when TMR_STS was last brought up to date.
    epoch: u64,
    sci: bool,
}

impl PmTimer {
    /// The block after reset: timer at 0 now, all status and enables clear, SCI_EN set.
    pub fn new(clock: &Clock) -> Self {
        PmTimer { origin: clock.now, sts: 0, en: 0, cnt: SCI_EN, epoch: 0, sci: false }
    }

    /// Whether `port` belongs to this block.
    pub const fn claims(port: u16) -> bool {
        port >= PM_BASE && port < PM_BASE + PM_LEN
    }

    /// The timer value (masked to its width) at `clock`.
    pub fn timer(&self, clock: &Clock) -> u32 {
        (self.ticks(clock) & ((1 << TMR_BITS) - 1)) as u32
    }

    /// An IN of `size` bytes at `port` (a wider access covers consecutive registers).
    pub fn read(&mut self, clock: &Clock, sink: &mut impl IrqSink, port: u16, size: u8) -> u32 {
        self.update(clock, sink);
        let [s0, s1] = self.sts.to_le_bytes();
        let [e0, e1] = self.en.to_le_bytes();
        let [c0, c1] = self.cnt.to_le_bytes();
        let [t0, t1, t2, t3] = self.timer(clock).to_le_bytes();
        let regs = [s0, s1, e0, e1, c0, c1, 0, 0, t0, t1, t2, t3];
        (0..size.min(4)).fold(0, |v, i| {
            let off = usize::from(port.wrapping_sub(PM_BASE).wrapping_add(i.into()));
            v | u32::from(regs.get(off).copied().unwrap_or(0xff)) << (8 * i)
        })
    }

    /// An OUT of `size` bytes at `port`; says whether the guest powered off.
    pub fn write(
        &mut self,
        clock: &Clock,
        sink: &mut impl IrqSink,
        port: u16,
        size: u8,
        value: u32,
    ) -> PmOutcome {
        self.update(clock, sink);
        let mut out = PmOutcome::None;
        for i in 0..size.min(4) {
            let off = port.wrapping_sub(PM_BASE).wrapping_add(i.into());
            let b = (value >> (8 * i)) as u8;
            let (shift, byte) = (8 * (off & 1), u16::from(b) << (8 * (off & 1)));
            let keep = !(0xff << shift);
            match off {
                0 | 1 => self.sts &= !(byte & STS_W1C),
                2 | 3 => self.en = (self.en & keep) | (byte & EN_RW),
                4 | 5 => {
                    self.cnt = (self.cnt & keep) | (byte & CNT_RW);
                    let typ = (self.cnt >> 10) & 7;
                    if byte & SLP_EN != 0 && typ == SLP_TYP_S5.into() {
                        out = PmOutcome::PowerOff;
                    }
                }
                _ => {}
            }
        }
        self.drive(sink);
        out
    }

    /// The power button was pressed (a toolstack's graceful shutdown request): sets
    /// PWRBTN_STS, which raises the SCI if the guest enabled it. Nothing delivers one yet; the
    /// tests check that the status and enable bits a guest sees behave.
    #[cfg(test)]
    pub fn press_power_button(&mut self, clock: &Clock, sink: &mut impl IrqSink) {
        self.update(clock, sink);
        self.sts |= PWRBTN;
        self.drive(sink);
    }

    /// Brings TMR_STS up to `clock` and drives the SCI line to match the status.
    pub fn update(&mut self, clock: &Clock, sink: &mut impl IrqSink) {
        let e = self.ticks(clock) >> (TMR_BITS - 1);
        if e > self.epoch {
            self.epoch = e;
            self.sts |= TMR;
        }
        self.drive(sink);
    }

    /// The TSC of the next timer carry that would raise the SCI, if one would (TMR_EN and
    /// SCI_EN set, TMR_STS clear).
    pub fn next_deadline(&self, clock: &Clock) -> Option<u64> {
        if self.cnt & SCI_EN == 0 || self.en & TMR == 0 || self.sts & TMR != 0 {
            return None;
        }
        let carry = self.epoch.saturating_add(1).saturating_mul(1 << (TMR_BITS - 1));
        Some(clock.tsc_after(self.origin, carry, PM_TMR_HZ))
    }

    fn ticks(&self, clock: &Clock) -> u64 {
        clock.device_ticks(self.origin, PM_TMR_HZ)
    }

    fn drive(&mut self, sink: &mut impl IrqSink) {
        let sci = self.cnt & SCI_EN != 0 && self.sts & self.en & EN_RW != 0;
        if sci != self.sci {
            self.sci = sci;
            sink.set_level(SCI_GSI, sci);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use abi::testutil::Sink;

    /// A TSC at exactly 1000 cycles per timer tick.
    fn at(ticks: u64) -> Clock {
        Clock { now: ticks * 1000, tsc_khz: PM_TMR_HZ }
    }

    #[test]
    fn rate_matches_the_tsc() {
        let (khz, t0) = (2_893_417, 123_456_789);
        let mut pm = PmTimer::new(&Clock { now: t0, tsc_khz: khz });
        let mut s = Sink::default();
        let read = |pm: &mut PmTimer, s: &mut Sink, now| {
            pm.read(&Clock { now, tsc_khz: khz }, s, PM_TMR_BLK, 4)
        };
        let a = read(&mut pm, &mut s, t0 + 1_000_000);
        let b = read(&mut pm, &mut s, t0 + 1_000_000 + khz * 1000); // one second later
        let d = u64::from(b.wrapping_sub(a) & 0xff_ffff);
        assert!(d.abs_diff(PM_TMR_HZ) <= 1, "{d}");
        // Linux's acpi_pm_read_verified wants three rising reads 1 µs apart.
        let c = read(&mut pm, &mut s, t0 + 1_000_000 + khz * 1000 + khz / 1000);
        assert_eq!(c.wrapping_sub(b), 3);
    }

    #[test]
    fn counter_is_24_bits_and_wraps() {
        let mut pm = PmTimer::new(&at(0));
        let mut s = Sink::default();
        assert_eq!(pm.read(&at(0xff_fffe), &mut s, PM_TMR_BLK, 4), 0xff_fffe);
        assert_eq!(pm.read(&at(0x100_0005), &mut s, PM_TMR_BLK, 4), 5);
        assert_eq!(pm.read(&at(0x100_0005), &mut s, PM_TMR_BLK + 2, 2), 0);
        assert_eq!(pm.read(&at(0x100_0005), &mut s, PM_TMR_BLK, 1), 5);
    }

    #[test]
    fn tmr_sts_on_bit_23_changes_and_the_sci_needs_tmr_en() {
        let mut pm = PmTimer::new(&at(0));
        let mut s = Sink::default();
        assert_eq!(pm.next_deadline(&at(0)), None, "TMR_EN clear");
        assert_eq!(pm.read(&at(0x7f_ffff), &mut s, PM1A_EVT_BLK, 2), 0);
        assert_eq!(pm.read(&at(0x80_0000), &mut s, PM1A_EVT_BLK, 2), 1);
        assert!(s.0.is_empty(), "no SCI without TMR_EN");
        pm.write(&at(0x80_0000), &mut s, PM1A_EVT_BLK, 2, 1); // clear TMR_STS
        assert_eq!(pm.read(&at(0x80_0001), &mut s, PM1A_EVT_BLK, 2), 0);
        pm.write(&at(0x80_0001), &mut s, PM1A_EVT_BLK + 2, 2, 1); // TMR_EN
        assert_eq!(pm.read(&at(0x80_0001), &mut s, PM1A_EVT_BLK, 4), 0x1_0000);
        assert_eq!(pm.next_deadline(&at(0x80_0001)), Some(0x100_0000 * 1000));
        pm.update(&at(0xff_ffff), &mut s);
        assert!(s.0.is_empty());
        pm.update(&at(0x100_0000), &mut s);
        assert_eq!(s.0, [(SCI_GSI, true)]);
        assert_eq!(pm.next_deadline(&at(0x100_0000)), None, "already asserted");
        // Writing 0 leaves the status; writing 1 clears it and drops the SCI.
        pm.write(&at(0x100_0000), &mut s, PM1A_EVT_BLK, 2, 0);
        assert_eq!(s.0.len(), 1);
        pm.write(&at(0x100_0000), &mut s, PM1A_EVT_BLK, 2, 1);
        assert_eq!(s.0, [(SCI_GSI, true), (SCI_GSI, false)]);
        // Without SCI_EN the events are not signalled.
        pm.write(&at(0x100_0000), &mut s, PM1A_CNT_BLK, 2, 0);
        assert_eq!(pm.next_deadline(&at(0x100_0000)), None);
    }

    #[test]
    fn s5_powers_off() {
        let mut pm = PmTimer::new(&at(0));
        let mut s = Sink::default();
        let c = &at(10);
        assert_eq!(pm.read(c, &mut s, PM1A_CNT_BLK, 2), 1, "SCI_EN from reset");
        let typ = u32::from(SLP_TYP_S5) << 10;
        assert_eq!(pm.write(c, &mut s, PM1A_CNT_BLK, 2, 1 | typ), PmOutcome::None);
        assert_eq!(pm.read(c, &mut s, PM1A_CNT_BLK, 2), 1 | typ);
        assert_eq!(pm.write(c, &mut s, PM1A_CNT_BLK, 2, 5 << 10 | 1 << 13), PmOutcome::None);
        assert_eq!(pm.read(c, &mut s, PM1A_CNT_BLK, 2) & (1 << 13), 0, "SLP_EN write-only");
        assert_eq!(pm.write(c, &mut s, PM1A_CNT_BLK, 2, typ | 1 << 13), PmOutcome::PowerOff);
        assert_eq!(pm.write(c, &mut s, PM1A_CNT_BLK + 1, 1, typ >> 8 | 0x20), PmOutcome::PowerOff);
    }

    #[test]
    fn power_button_raises_the_sci_when_enabled() {
        let mut pm = PmTimer::new(&at(0));
        let mut s = Sink::default();
        pm.press_power_button(&at(1), &mut s);
        assert!(s.0.is_empty());
        pm.write(&at(2), &mut s, PM1A_EVT_BLK + 2, 2, 1 << 8);
        assert_eq!(s.0, [(SCI_GSI, true)]);
        pm.write(&at(3), &mut s, PM1A_EVT_BLK + 1, 1, 1);
        assert_eq!(s.0, [(SCI_GSI, true), (SCI_GSI, false)]);
        assert_eq!(pm.read(&at(3), &mut s, PM1A_EVT_BLK, 4), 1 << 24);
        assert_eq!(pm.read(&at(3), &mut s, PM_BASE + PM_LEN, 1), 0xff);
    }

    proptest! {
        #[test]
        fn no_sequence_panics_and_the_timer_is_monotonic(
            ops in proptest::collection::vec((0u16..16, any::<u32>(), 1u8..=4, 0u64..5_000_000_000, any::<bool>()), 1..50),
        ) {
            let mut pm = PmTimer::new(&at(0));
            let mut s = Sink::default();
            let (mut now, mut ticks) = (0u64, 0u64);
            for (off, v, size, dt, w) in ops {
                now = now.saturating_add(dt);
                let c = Clock { now, tsc_khz: PM_TMR_HZ };
                if w { pm.write(&c, &mut s, PM_BASE + off, size, v); }
                else { pm.read(&c, &mut s, PM_BASE + off, size); }
                let t = pm.read(&c, &mut s, PM_TMR_BLK, 4);
                // Unwrap the 24-bit value against the elapsed ticks: it never goes back.
                let full = (ticks & !0xff_ffff) | u64::from(t);
                let full = if full < ticks { full + 0x100_0000 } else { full };
                prop_assert!(full >= ticks);
                prop_assert_eq!(full, now / 1000);
                ticks = full;
                if let Some(d) = pm.next_deadline(&c) { prop_assert!(d > now); }
            }
        }
    }
}
