//! How a run of microhv ends, as the last line of its log and the machine's exit status.
//!
//! microhv prints `[hv] stop: status=N (name): reason` and then ends the emulator: QEMU through
//! its `isa-debug-exit` device (exit code `N << 1 | 1`), Bochs through its shutdown port (exit
//! code 1 whatever N is). The runner therefore reads the verdict from this line (`xtask`'s
//! `emu::parse_stop_line`).

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
    /// Every status, in numeric order (the runner reads them back by number).
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
}
