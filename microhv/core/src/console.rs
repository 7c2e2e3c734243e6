//! Per-domain console: a ring dom0 reads, and a line assembler for microhv's log.

use abi::hypercall::CONSOLE_READ_MAX;

/// Bytes a console ring holds; when full, the oldest bytes are dropped.
pub const CONSOLE_RING_BYTES: usize = CONSOLE_READ_MAX as usize;
/// Longest line passed to the log before it is cut.
pub const CONSOLE_LINE_BYTES: usize = 160;

/// Bytes of console text a domU may send to microhv's log in a burst.
pub const LOG_BURST_BYTES: u64 = 4096;
/// Bytes per second of real time a domU's log output is held to afterwards: a fifth of what
/// microhv's 115,200-baud log line carries, so even domUs printing without pause leave the line
/// (and the CPU that feeds it) to everyone else.
pub const LOG_BYTES_PER_SEC: u64 = 2048;
/// TSC ticks per millisecond assumed until the boot code has measured the host's.
pub const DEFAULT_TSC_KHZ: u64 = 1_000_000;

/// A token bucket over the bytes a domain sends to microhv's log, refilled in real time (the
/// TSC's measured frequency). A domU that prints without pause would otherwise spend the
/// machine's time in microhv's log UART, starving the other domains; its console ring keeps
/// every byte regardless. Lines are admitted whole: a line needs as many tokens as it has bytes
/// (plus its newline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimiter {
    /// Tokens, in bytes × TSC kHz (so that refills lose no fraction of a byte).
    scaled: u64,
    last: u64,
    /// Lines not logged since the last one that was.
    pub suppressed: u64,
}

impl LogLimiter {
    /// A full bucket (filled at the first call, when the TSC frequency is known).
    pub(crate) const fn new() -> Self {
        Self { scaled: u64::MAX, last: 0, suppressed: 0 }
    }

    /// Whether a line of `len` bytes may be logged at TSC `now` on a `tsc_khz` TSC; counts it
    /// as suppressed if not.
    pub fn allow(&mut self, now: u64, tsc_khz: u64, len: usize) -> bool {
        let khz = u128::from(tsc_khz.max(1));
        let cap = u128::from(LOG_BURST_BYTES) * khz;
        // Bytes earned = ticks * rate / (khz * 1000); kept scaled by khz.
        let earned =
            u128::from(now.saturating_sub(self.last)) * u128::from(LOG_BYTES_PER_SEC) / 1000;
        let tokens = (u128::from(self.scaled) + earned).min(cap);
        self.last = now;
        let need = (len as u128 + 1) * khz;
        if tokens < need {
            self.scaled = tokens as u64;
            self.suppressed += 1;
            return false;
        }
        self.scaled = (tokens - need) as u64;
        true
    }
}

/// A domain's console output.
pub struct Console {
    ring: [u8; CONSOLE_RING_BYTES],
    /// Index of the oldest byte.
    head: usize,
    /// Bytes held.
    len: usize,
    /// Bytes dropped because dom0 did not read them in time.
    dropped: u64,
    line: [u8; CONSOLE_LINE_BYTES],
    line_len: usize,
}

impl Console {
    /// An empty console.
    pub(crate) const fn new() -> Self {
        Self {
            ring: [0; CONSOLE_RING_BYTES],
            head: 0,
            len: 0,
            dropped: 0,
            line: [0; CONSOLE_LINE_BYTES],
            line_len: 0,
        }
    }

    /// Appends output; `emit` receives each complete line (without its newline) for the log.
    pub fn write(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        for &b in bytes {
            self.push_ring(b);
            match b {
                b'\n' => self.flush_line(&mut emit),
                b'\r' => {}
                _ => {
                    if self.line_len == CONSOLE_LINE_BYTES {
                        self.flush_line(&mut emit);
                    }
                    self.line[self.line_len] = b;
                    self.line_len += 1;
                }
            }
        }
    }

    /// Passes a pending partial line to `emit` (when the domain stops).
    pub fn flush_line(&mut self, mut emit: impl FnMut(&[u8])) {
        if self.line_len > 0 {
            emit(&self.line[..self.line_len]);
            self.line_len = 0;
        }
    }

    fn push_ring(&mut self, b: u8) {
        if self.len == CONSOLE_RING_BYTES {
            self.head = (self.head + 1) % CONSOLE_RING_BYTES;
            self.len -= 1;
            self.dropped += 1;
        }
        self.ring[(self.head + self.len) % CONSOLE_RING_BYTES] = b;
        self.len += 1;
    }

    /// Moves up to `out.len()` of the oldest bytes into `out`; returns how many.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len);
        for (i, o) in out.iter_mut().take(n).enumerate() {
            *o = self.ring[(self.head + i) % CONSOLE_RING_BYTES];
        }
        self.head = (self.head + n) % CONSOLE_RING_BYTES;
        self.len -= n;
        n
    }

    /// Bytes waiting to be read.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Bytes lost to overflow so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn lines_are_emitted_and_bytes_are_kept() {
        let mut c = Console::new();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        c.write(b"hello\r\nwor", |l| lines.push(l.to_vec()));
        c.write(b"ld\n", |l| lines.push(l.to_vec()));
        assert_eq!(lines, [b"hello".to_vec(), b"world".to_vec()]);
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf);
        assert_eq!(&buf[..n], b"hello\r\nworld\n");
        assert_eq!(c.read(&mut buf), 0);
    }

    #[test]
    fn overflow_drops_oldest_and_counts() {
        let mut c = Console::new();
        let data: Vec<u8> = (0..CONSOLE_RING_BYTES + 10).map(|i| b'a' + (i % 26) as u8).collect();
        c.write(&data, |_| {});
        assert_eq!(c.pending(), CONSOLE_RING_BYTES);
        assert_eq!(c.dropped(), 10);
        let mut buf = std::vec![0u8; CONSOLE_RING_BYTES];
        assert_eq!(c.read(&mut buf), CONSOLE_RING_BYTES);
        assert_eq!(&buf[..], &data[10..]);
    }

    #[test]
    fn the_log_limiter_admits_a_burst_then_bytes_per_real_second() {
        // A 2 GHz TSC: 2,000,000 ticks per millisecond.
        let khz = 2_000_000;
        let mut l = LogLimiter::new();
        let t0 = 1_000;
        // 4096 bytes of burst: 64 lines of 63 bytes (64 with the newline).
        for _ in 0..LOG_BURST_BYTES / 64 {
            assert!(l.allow(t0, khz, 63));
        }
        assert!(!l.allow(t0, khz, 0));
        assert_eq!(l.suppressed, 1);
        // Half a second of real time earns 1024 bytes, whatever the TSC rate.
        let half = t0 + 500 * khz;
        assert!(l.allow(half, khz, 1023));
        assert!(!l.allow(half, khz, 0));
        // A 1 KiB line needs half a second more, not less.
        assert!(!l.allow(half + 500 * khz - 2 * khz, khz, 1023));
        assert!(l.allow(half + 500 * khz, khz, 1023));
        assert!(l.allow(u64::MAX, khz, 4095), "a long pause refills the whole burst");
        assert!(!l.allow(u64::MAX, khz, 0));
    }

    #[test]
    fn long_lines_are_cut() {
        let mut c = Console::new();
        let mut lines = Vec::new();
        c.write(&[b'x'; CONSOLE_LINE_BYTES + 5], |l| lines.push(l.len()));
        c.flush_line(|l| lines.push(l.len()));
        assert_eq!(lines, [CONSOLE_LINE_BYTES, 5]);
    }
}
