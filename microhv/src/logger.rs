//! microhv's log on COM1, behind the `log` facade.
//!
//! Lines from microhv read `[hv] message` (with `WARN`/`ERROR`/`debug` markers below info);
//! console lines from domains arrive with target [`GUEST_TARGET`] already prefixed `[dN]`.
//!
//! Output is buffered: a record goes into a [`RING_BYTES`] ring, and the ring is drained into
//! the UART without waiting — as much as its empty FIFO takes — after each record and whenever
//! the run loop calls `log::logger().flush()` (at every scheduling decision, so at least once a
//! time slice). So logging never holds the CPU for the line's transmit time. Nothing is dropped: when the ring is full, a new record waits
//! for room (back-pressure; domU console text reaching the log is rate-limited upstream, so only
//! microhv's and dom0's own output can get there). The fatal paths drain the ring synchronously
//! before their report ([`emergency`]), so nothing of a crash report or of what preceded it is
//! lost.

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};
use log::{Level, LevelFilter, Log, Metadata, Record};
use rt::uart::{COM1, FIFO_BYTES, Uart};
use spin::Mutex;

/// Bytes of log output buffered ahead of the UART.
pub const RING_BYTES: usize = 16 * 1024;

/// Log text not yet handed to the UART.
struct Ring {
    buf: [u8; RING_BYTES],
    head: usize,
    len: usize,
    uart: Uart,
}

/// Whether the ring holds anything: lets the run loop's flush skip the lock.
static PENDING: AtomicBool = AtomicBool::new(false);

impl Ring {
    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let b = self.buf[self.head];
        self.head = (self.head + 1) % RING_BYTES;
        self.len -= 1;
        Some(b)
    }

    /// Hands the UART what its FIFO takes now, without waiting.
    fn pump(&mut self) {
        if self.len > 0 && self.uart.fifo_empty() {
            for _ in 0..FIFO_BYTES {
                match self.pop() {
                    Some(b) => self.uart.put_byte(b),
                    None => break,
                }
            }
        }
        PENDING.store(self.len > 0, Ordering::Relaxed);
    }

    /// Sends everything, waiting for the line.
    fn drain(&mut self) {
        while let Some(b) = self.pop() {
            self.uart.write_byte(b);
        }
        self.uart.flush();
        PENDING.store(false, Ordering::Relaxed);
    }
}

impl Write for Ring {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == RING_BYTES {
                // Back-pressure: wait for the line to take one byte.
                if let Some(old) = self.pop() {
                    self.uart.write_byte(old);
                }
            }
            self.buf[(self.head + self.len) % RING_BYTES] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// `log` target for domain console lines, printed verbatim.
pub const GUEST_TARGET: &str = microhv_core::GUEST_LOG_TARGET;

// SAFETY (for `Uart::new`): COM1 belongs to microhv alone; no guest is given access to it.
static RING: Mutex<Ring> =
    Mutex::new(Ring { buf: [0; RING_BYTES], head: 0, len: 0, uart: unsafe { Uart::new(COM1) } });

struct Com1Logger;

static LOGGER: Com1Logger = Com1Logger;

impl Log for Com1Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut u = RING.lock();
        let _ = if r.target() == GUEST_TARGET {
            writeln!(u, "{}", r.args())
        } else {
            let mark = match r.level() {
                Level::Error => "ERROR: ",
                Level::Warn => "WARN: ",
                Level::Info => "",
                Level::Debug => "debug: ",
                Level::Trace => "trace: ",
            };
            writeln!(u, "[hv] {mark}{}", r.args())
        };
        u.pump();
    }

    /// Drains what the UART takes now, without waiting (see the module docs).
    fn flush(&self) {
        if PENDING.load(Ordering::Relaxed) {
            RING.lock().pump();
        }
    }
}

/// Programs COM1 and installs the logger.
pub fn init() {
    RING.lock().uart.init();
    // A second call fails harmlessly; there is only one.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Info);
}

/// How long [`emergency`] waits for another CPU to let go of the log's lock, in spins (a
/// line takes far less; a CPU that faulted holding it never lets go).
const EMERGENCY_SPINS: u32 = 10_000_000;

/// A writer for the fatal paths, after everything buffered has been sent. It does not wait for
/// the lock, because the fault being reported may have happened while the lock was held.
pub fn emergency() -> Uart {
    // Another CPU may hold the lock for a moment (logging a line): wait a bounded while for it
    // before taking the lock by force.
    for _ in 0..EMERGENCY_SPINS {
        if !RING.is_locked() {
            break;
        }
        core::hint::spin_loop();
    }
    // SAFETY: only used on the way to stopping the machine, by the one CPU that reports
    // (`fatal`), when nothing else will run again. If the lock is still held (the fault came
    // from inside the logger, or another CPU stopped while logging), the ring's indices may be
    // mid-update: `pop` keeps them in bounds whatever they are, and a garbled byte is
    // acceptable there.
    unsafe {
        if RING.is_locked() {
            RING.force_unlock();
        }
    }
    RING.lock().drain();
    // SAFETY: as above; the ring is empty, so nothing can interleave with what is written now.
    unsafe { Uart::new(COM1) }
}
