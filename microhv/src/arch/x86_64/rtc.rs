//! The host's real-time clock, read once at boot so that domains' virtual RTCs start at the
//! time of day (decoding is `microhv_core::dev::rtc::time_of_registers`).

use rt::io::{inb, outb};

/// Bytes of CMOS read: the time registers, A–D, and the century byte at 0x32.
pub const REGS: usize = 0x33;

/// CMOS bytes `0..REGS`, read between two updates (the same twice in a row, with no update in
/// progress), as Linux's `mc146818_get_time` does. `None` if the clock kept changing.
pub fn read() -> Option<[u8; REGS]> {
    let mut last = None;
    for _ in 0..1000 {
        let mut regs = [0; REGS];
        for (i, r) in regs.iter_mut().enumerate() {
            // SAFETY: the RTC's index / data ports belong to microhv (guests get a virtual
            // RTC); reading CMOS changes nothing but register C, which nobody else uses.
            *r = unsafe {
                outb(0x70, i as u8);
                inb(0x71)
            };
        }
        // Register A bit 7: update in progress; the time bytes may be torn.
        if regs[0xa] & 0x80 == 0 && last == Some(regs) {
            return last;
        }
        last = Some(regs);
    }
    None
}
