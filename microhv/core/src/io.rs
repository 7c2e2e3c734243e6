//! The emulators' exit ports, outside the virtual PC (`platform`): QEMU's debug-exit port (the
//! value written becomes the domain's shutdown status) and Bochs's shutdown port (writing
//! "Shutdown"). dom0 owns COM2, the host's RTC and the primary ATA channel outright (its
//! accesses never exit) and sees nothing else. Every port no device has reads as all-ones and drops writes, as on a PC with
//! nothing at that address.

/// COM1's I/O base.
pub const COM1: u16 = 0x3f8;
/// QEMU-style debug exit: a domU writing `v` here shuts down with status `v`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Bochs-style shutdown port.
pub const SHUTDOWN_PORT: u16 = 0x8900;

/// The ports passed through to dom0: COM2, its end of the control channel; the host's RTC,
/// which it reads for the time of day its device models give domUs' RTCs; and the primary ATA
/// channel (command block 0x1F0-0x1F7, device control / alternate status 0x3F6), the disk dom0
/// drives by polling (IRQ 14 is not routed to it: it sets nIEN).
pub fn dom0_ports() -> impl Iterator<Item = u16> {
    (0x2f8..=0x2ff).chain(0x70..=0x71).chain(0x1f0..=0x1f7).chain(0x3f6..=0x3f6)
}

/// Fills an I/O permission bitmap (a bit per port from port 0; set: the access exits): every
/// port exits, except dom0's own for dom0.
pub fn io_bitmap(bits: &mut [u8], dom0: bool) {
    bits.fill(0xff);
    for p in dom0_ports().filter(|_| dom0) {
        crate::policy::clear_bit(bits, p.into());
    }
}

/// What a trapped port access does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOutcome {
    /// Done; for IN, the value to return.
    Done(u32),
    /// A byte for the domain's console.
    Console(u8),
    /// The domain asked to shut down with this status.
    Shutdown(u32),
}

/// Per-domain emulated devices.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pc {
    /// Bytes of "Shutdown" matched so far on the shutdown port.
    shutdown_matched: u8,
}

impl Pc {
    /// Devices in their reset state.
    pub const fn new() -> Self {
        Self { shutdown_matched: 0 }
    }

    /// Handles one IN or OUT of `size` bytes; `privileged` (dom0) sees no device.
    pub fn port_io(
        &mut self,
        privileged: bool,
        port: u16,
        size: u8,
        write: bool,
        value: u32,
    ) -> IoOutcome {
        let mask = size_mask(size) as u32;
        let absent = if write { IoOutcome::Done(0) } else { IoOutcome::Done(mask) };
        if privileged {
            return absent;
        }
        let byte = value as u8;
        match port {
            DEBUG_EXIT_PORT if write => IoOutcome::Shutdown(value & mask),
            SHUTDOWN_PORT if write && size == 1 => {
                let want = b"Shutdown";
                let i = usize::from(self.shutdown_matched);
                let matched = if want[i] == byte { i + 1 } else { usize::from(byte == want[0]) };
                // The whole word shuts down, and matching starts over.
                let whole = matched == want.len();
                self.shutdown_matched = if whole { 0 } else { matched as u8 };
                if whole { IoOutcome::Shutdown(0) } else { IoOutcome::Done(0) }
            }
            _ => {
                log::debug!("absent port {port:#x} ({} {size})", if write { "OUT" } else { "IN" });
                absent
            }
        }
    }
}

/// All-ones in the low `size` bytes (8 for any size other than 1, 2 and 4).
pub fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Merges an IN result of `size` bytes into rax as the CPU does (a 32-bit IN zero-extends).
pub fn merge_in(rax: u64, size: u8, value: u32) -> u64 {
    merge_reg(rax, size, u64::from(value), false)
}

/// Writes `value` into a register of which an instruction wrote `size` bytes: 8- and 16-bit
/// writes keep the other bits, 32-bit writes zero-extend, `high_byte` is AH..BH.
pub fn merge_reg(old: u64, size: u8, value: u64, high_byte: bool) -> u64 {
    match (size, high_byte) {
        (1, true) => (old & !0xff00) | ((value & 0xff) << 8),
        (1, false) => (old & !0xff) | (value & 0xff),
        (2, _) => (old & !0xffff) | (value & 0xffff),
        (4, _) => value & 0xffff_ffff,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dom0s_ports_pass_through() {
        let exits = |bits: &[u8], port: usize| bits[port / 8] & (1 << (port % 8)) != 0;
        let (mut dom0, mut domu) = ([0u8; 4096], [0u8; 4096]);
        io_bitmap(&mut dom0, true);
        io_bitmap(&mut domu, false);
        for port in 0..0x8000 {
            let passed = (0x2f8..=0x2ff).contains(&port)
                || (0x70..=0x71).contains(&port)
                || (0x1f0..=0x1f7).contains(&port)
                || port == 0x3f6;
            assert_eq!(exits(&dom0, port), !passed, "{port:#x}");
            assert!(exits(&domu, port), "{port:#x}");
        }
    }

    #[test]
    fn absent_ports_read_all_ones_and_dom0_sees_no_device() {
        let mut pc = Pc::new();
        assert_eq!(pc.port_io(false, 0x60, 1, false, 0), IoOutcome::Done(0xff));
        assert_eq!(pc.port_io(false, 0x1f0, 2, false, 0), IoOutcome::Done(0xffff));
        // dom0's disk: a domU finds no ATA channel there (status and alternate status all ones).
        assert_eq!(pc.port_io(false, 0x1f7, 1, false, 0), IoOutcome::Done(0xff));
        assert_eq!(pc.port_io(false, 0x3f6, 1, false, 0), IoOutcome::Done(0xff));
        assert_eq!(pc.port_io(false, 0xcf8, 4, false, 0), IoOutcome::Done(u32::MAX));
        assert_eq!(pc.port_io(true, COM1 + 5, 1, false, 0), IoOutcome::Done(0xff));
        assert_eq!(pc.port_io(true, DEBUG_EXIT_PORT, 1, true, 3), IoOutcome::Done(0));
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 1, 0xff), 0x1234_5678_9abc_deff);
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 2, 0xffff), 0x1234_5678_9abc_ffff);
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 4, 7), 7);
        assert_eq!(merge_reg(0x1234, 1, 0xab, true), 0xab34);
    }

    #[test]
    fn exit_ports() {
        let mut pc = Pc::new();
        assert_eq!(
            pc.port_io(false, DEBUG_EXIT_PORT, 4, true, 0x1_0007),
            IoOutcome::Shutdown(0x1_0007)
        );
        assert_eq!(pc.port_io(false, DEBUG_EXIT_PORT, 1, true, 0x1ff), IoOutcome::Shutdown(0xff));
        for b in b"ShutShutdow".iter() {
            assert_eq!(
                pc.port_io(false, SHUTDOWN_PORT, 1, true, u32::from(*b)),
                IoOutcome::Done(0)
            );
        }
        assert_eq!(
            pc.port_io(false, SHUTDOWN_PORT, 1, true, u32::from(b'n')),
            IoOutcome::Shutdown(0)
        );
    }
}
