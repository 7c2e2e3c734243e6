//! microhv's log on COM1, behind the `log` facade.
//!
//! Lines from microhv read `[hv] message` (with `WARN`/`ERROR`/`debug` markers below info);
//! console lines from domains arrive with target [`GUEST_TARGET`] already prefixed `[dN]`.

use core::fmt::Write;
use log::{Level, LevelFilter, Log, Metadata, Record};
use rt::uart::{COM1, Uart};
use spin::Mutex;

/// `log` target for domain console lines, printed verbatim.
pub const GUEST_TARGET: &str = microhv_core::GUEST_LOG_TARGET;

// SAFETY (for `Uart::new`): COM1 belongs to microhv alone; no guest is given access to it.
static UART: Mutex<Uart> = Mutex::new(unsafe { Uart::new(COM1) });

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
        let mut u = UART.lock();
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
    }

    fn flush(&self) {}
}

/// Programs COM1 and installs the logger.
pub fn init() {
    UART.lock().init();
    // A second call fails harmlessly; there is only one.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Info);
}

/// A writer for the fatal paths: it does not wait for the lock, because the fault being
/// reported may have happened while the lock was held.
pub fn emergency() -> Uart {
    // SAFETY: only used on the way to stopping the machine, when nothing else will run again;
    // interleaving with a half-written line is acceptable there.
    unsafe { Uart::new(COM1) }
}
