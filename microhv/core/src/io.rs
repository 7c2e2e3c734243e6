//! Port I/O that traps to microhv.
//!
//! dom0 owns COM2 outright (its accesses never exit). For every other port, and for every port
//! of a domU, microhv answers here: the debug-exit port ends a domU with the written status
//! (QEMU's `isa-debug-exit` convention), reads of absent devices return all-ones, and writes to
//! them are dropped, as on a PC with nothing at that address.

/// QEMU-style debug exit: a domU writing `v` here shuts down with status `v`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// What a trapped port access does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOutcome {
    /// Done; for IN, the value to return.
    Done(u32),
    /// The domain asked to shut down with this status.
    Shutdown(u32),
}

/// Handles one IN or OUT of `size` bytes by a domain (`privileged` for dom0).
pub fn port_io(privileged: bool, port: u16, size: u8, write: bool, value: u32) -> IoOutcome {
    let mask = match size {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    };
    if write {
        if port == DEBUG_EXIT_PORT && !privileged {
            return IoOutcome::Shutdown(value & mask);
        }
        log::debug!("dropped OUT {port:#x} <- {:#x}", value & mask);
        IoOutcome::Done(0)
    } else {
        IoOutcome::Done(mask)
    }
}

/// Merges an IN result of `size` bytes into rax as the CPU does (a 32-bit IN zero-extends).
pub fn merge_in(rax: u64, size: u8, value: u32) -> u64 {
    match size {
        1 => (rax & !0xff) | u64::from(value & 0xff),
        2 => (rax & !0xffff) | u64::from(value & 0xffff),
        _ => u64::from(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_ports_read_all_ones() {
        assert_eq!(port_io(false, 0x60, 1, false, 0), IoOutcome::Done(0xff));
        assert_eq!(port_io(true, 0x3f8, 4, false, 0), IoOutcome::Done(u32::MAX));
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 1, 0xff), 0x1234_5678_9abc_deff);
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 2, 0xffff), 0x1234_5678_9abc_ffff);
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 4, 7), 7);
    }

    #[test]
    fn debug_exit_is_for_domus_only() {
        assert_eq!(port_io(false, DEBUG_EXIT_PORT, 1, true, 0x1ff), IoOutcome::Shutdown(0xff));
        assert_eq!(port_io(true, DEBUG_EXIT_PORT, 1, true, 3), IoOutcome::Done(0));
    }
}
