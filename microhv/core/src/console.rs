//! Per-domain console: a ring dom0 reads, and a line assembler for microhv's log.

use abi::hypercall::CONSOLE_READ_MAX;

/// Bytes a console ring holds; when full, the oldest bytes are dropped.
pub const CONSOLE_RING_BYTES: usize = CONSOLE_READ_MAX as usize;
/// Longest line passed to the log before it is cut.
pub const CONSOLE_LINE_BYTES: usize = 160;

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

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Console {
    /// An empty console.
    pub const fn new() -> Self {
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
    fn long_lines_are_cut() {
        let mut c = Console::new();
        let mut lines = Vec::new();
        c.write(&[b'x'; CONSOLE_LINE_BYTES + 5], |l| lines.push(l.len()));
        c.flush_line(|l| lines.push(l.len()));
        assert_eq!(lines, [CONSOLE_LINE_BYTES, 5]);
    }
}
