//! The host TSC's frequency: from CPUID leaf 0x15 (TSC / crystal ratio with the crystal's
//! frequency) where the CPU reports it, else measured against PIT channel 2 for
//! [`PIT_CALIBRATION_TICKS`], as Linux's `pit_calibrate_tsc` does. Leaf 0x16's nominal base
//! frequency is not used: emulators fill it with a figure unrelated to their clock (Bochs reports
//! 3.5 GHz for a TSC that counts 50 million instructions per emulated second). microhv's notion
//! of real time (the console rate limit, guest timers) rests on this figure.

use super::cpu::{cpuid, rdtsc};
use rt::io::{inb, outb};

/// The PIT's input clock.
const PIT_HZ: u64 = 1_193_182;
/// PIT ticks the measurement spans (2 ms: one PIT tick of error is 0.04%).
const PIT_CALIBRATION_TICKS: u64 = PIT_HZ / 500;
/// Port 0x61: bit 0 gates PIT channel 2, bit 1 drives the speaker, bit 5 reads its output.
const PORT_B: u16 = 0x61;

/// Where a frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// CPUID leaf 0x15 (TSC / crystal ratio and crystal frequency).
    Cpuid15,
    /// Measured against PIT channel 2.
    Pit,
}

/// TSC ticks per millisecond and where that figure came from.
pub fn khz() -> (u64, Source) {
    let max = cpuid(0, 0)[0];
    if max >= 0x15 {
        let [den, num, crystal, _] = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal != 0 {
            return (u64::from(crystal) * u64::from(num) / u64::from(den) / 1000, Source::Cpuid15);
        }
    }
    (measure(), Source::Pit)
}

/// TSC kHz from the ticks counted while PIT channel 2 counts down [`PIT_CALIBRATION_TICKS`] in
/// mode 0.
fn measure() -> u64 {
    // SAFETY: the PIT and port 0x61 belong to microhv (no guest is given them); channel 2 only
    // drives the speaker, which stays disconnected (bit 1 clear), and nothing else uses it.
    unsafe {
        let b = inb(PORT_B);
        outb(PORT_B, (b & !0x02) | 0x01);
        // Channel 2, LSB then MSB, mode 0 (interrupt on terminal count), binary.
        outb(0x43, 0b1011_0000);
        outb(0x42, (PIT_CALIBRATION_TICKS & 0xff) as u8);
        outb(0x42, (PIT_CALIBRATION_TICKS >> 8) as u8);
        let start = rdtsc();
        // The output goes high at terminal count; a PIT that never counts must not hang the
        // boot: give up after far longer than any real PIT takes (about 10^10 ticks).
        while inb(PORT_B) & 0x20 == 0 {
            if rdtsc() - start > 10_000_000_000 {
                break;
            }
        }
        let ticks = rdtsc() - start;
        outb(PORT_B, b);
        (ticks * PIT_HZ / PIT_CALIBRATION_TICKS / 1000).max(1)
    }
}
