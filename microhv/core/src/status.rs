//! How a run of microhv ends, as the last line of its log and the machine's exit status.
//!
//! microhv prints `[hv] stop: status=N (name): reason` and then ends the emulator: QEMU through
//! its `isa-debug-exit` device (exit code `N << 1 | 1`), Bochs through its shutdown port (exit
//! code 1 whatever N is). The runner therefore reads the verdict from this line.

/// Why microhv stopped the machine.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStatus {
    /// dom0 powered off with status 0.
    Ok = 0,
    /// dom0 shut down with a non-zero status, or asked for a reboot or crash.
    Dom0Failed = 1,
    /// The CPU lacks what microhv needs (VMX/EPT/unrestricted guest, or SVM/NPT).
    NoVirtualization = 2,
    /// microhv stopped dom0 for misbehaving (triple fault, access outside its memory, …).
    Dom0Crashed = 3,
    /// A CPU exception in ring 0.
    Exception = 4,
    /// A Rust panic in ring 0.
    Panic = 5,
    /// The boot information or the dom0 image could not be used.
    BootError = 6,
}

/// The text before the number in the stop line.
pub const STOP_LINE_MARKER: &str = "stop: status=";

impl StopStatus {
    /// Every status, in numeric order.
    pub const ALL: [StopStatus; 7] = [
        Self::Ok,
        Self::Dom0Failed,
        Self::NoVirtualization,
        Self::Dom0Crashed,
        Self::Exception,
        Self::Panic,
        Self::BootError,
    ];

    /// Short name used in the stop line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Dom0Failed => "dom0-failed",
            Self::NoVirtualization => "no-virtualization",
            Self::Dom0Crashed => "dom0-crashed",
            Self::Exception => "exception",
            Self::Panic => "panic",
            Self::BootError => "boot-error",
        }
    }

    /// The status with this number.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == code)
    }

    /// Finds the stop line in a log and returns its status and reason.
    pub fn parse_log(log: &str) -> Option<(StopStatus, &str)> {
        let line = log.lines().rev().find(|l| l.contains(STOP_LINE_MARKER))?;
        let rest = &line[line.find(STOP_LINE_MARKER)? + STOP_LINE_MARKER.len()..];
        let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
        let status = Self::from_code(digits.parse().ok()?)?;
        let reason = rest.split_once("): ").map_or("", |(_, r)| r.trim_end());
        Some((status, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_lines_round_trip() {
        for s in StopStatus::ALL {
            let log = std::format!(
                "boot\n[hv] {STOP_LINE_MARKER}{} ({}): why not\r\n",
                s as u8,
                s.name()
            );
            assert_eq!(StopStatus::parse_log(&log), Some((s, "why not")));
        }
        assert_eq!(StopStatus::parse_log("nothing here"), None);
        assert_eq!(StopStatus::parse_log("stop: status=99 (x): y"), None);
    }
}
