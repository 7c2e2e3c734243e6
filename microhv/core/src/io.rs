//! The legacy ports outside the interrupt and timer path (those are `platform`'s).
//!
//! Port I/O: dom0 owns COM2 outright (its accesses never exit) and sees nothing else. A domU
//! sees a 16550 UART at COM1 (output goes to its console; it never has input, and its line
//! status always says "transmitter empty", so polling drivers work), QEMU's debug-exit port
//! (the value written becomes its shutdown status) and Bochs's shutdown port (writing
//! "Shutdown"). Every port no device has reads as all-ones and drops writes, as on a PC with
//! nothing at that address.

/// COM1's I/O base.
pub const COM1: u16 = 0x3f8;
/// QEMU-style debug exit: a domU writing `v` here shuts down with status `v`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Bochs-style shutdown port.
pub const SHUTDOWN_PORT: u16 = 0x8900;

/// What a trapped port access does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOutcome {
    /// Done; for IN, the value to return.
    Done(u32),
    /// A byte for the domain's console.
    Console(u8),
    /// The domain asked to shut down with this status.
    Shutdown(u32),
    /// The domain reset its (virtual) machine: it shuts down with reason reboot.
    Reset,
}

/// COM1's registers (what a driver programs; only THR output has an effect).
#[derive(Debug, Default, Clone, Copy)]
struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo: bool,
}

const LCR_DLAB: u8 = 0x80;
/// Line status: transmitter holding register and shift register empty.
const LSR_IDLE: u8 = 0x60;
/// Modem status: CTS, DSR, DCD.
const MSR_READY: u8 = 0xb0;

impl Uart {
    fn io(&mut self, reg: u16, write: bool, v: u8) -> IoOutcome {
        let dlab = self.lcr & LCR_DLAB != 0;
        let done = |b: u8| IoOutcome::Done(b.into());
        match (reg, write) {
            (0, true) if !dlab => IoOutcome::Console(v),
            (0, true) => {
                self.dll = v;
                done(0)
            }
            (0, false) => done(if dlab { self.dll } else { 0 }),
            (1, true) if dlab => {
                self.dlm = v;
                done(0)
            }
            (1, true) => {
                self.ier = v & 0x0f;
                done(0)
            }
            (1, false) => done(if dlab { self.dlm } else { self.ier }),
            // IIR: no interrupt pending; FIFO bits when enabled.
            (2, false) => done(if self.fifo { 0xc1 } else { 0x01 }),
            (2, true) => {
                self.fifo = v & 1 != 0;
                done(0)
            }
            (3, true) => {
                self.lcr = v;
                done(0)
            }
            (3, false) => done(self.lcr),
            (4, true) => {
                self.mcr = v & 0x1f;
                done(0)
            }
            (4, false) => done(self.mcr),
            (5, false) => done(LSR_IDLE),
            (6, false) => done(MSR_READY),
            (7, true) => {
                self.scr = v;
                done(0)
            }
            (7, false) => done(self.scr),
            // Writes to the read-only LSR / MSR are ignored, as by the hardware.
            _ => done(0),
        }
    }
}

/// Per-domain emulated devices.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pc {
    uart: Uart,
    /// Bytes of "Shutdown" matched so far on the shutdown port.
    shutdown_matched: u8,
}

impl Pc {
    /// Devices in their reset state.
    pub const fn new() -> Self {
        Self {
            uart: Uart { ier: 0, lcr: 0, mcr: 0, scr: 0, dll: 0, dlm: 0, fifo: false },
            shutdown_matched: 0,
        }
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
        let mask = match size {
            1 => 0xff,
            2 => 0xffff,
            _ => u32::MAX,
        };
        let absent = if write { IoOutcome::Done(0) } else { IoOutcome::Done(mask) };
        if privileged {
            return absent;
        }
        let byte = value as u8;
        match port {
            COM1..=0x3ff if size == 1 => self.uart.io(port - COM1, write, byte),
            DEBUG_EXIT_PORT if write => IoOutcome::Shutdown(value & mask),
            SHUTDOWN_PORT if write && size == 1 => {
                let want = b"Shutdown";
                let i = usize::from(self.shutdown_matched);
                self.shutdown_matched = if want[i] == byte {
                    self.shutdown_matched + 1
                } else {
                    u8::from(byte == want[0])
                };
                if usize::from(self.shutdown_matched) == want.len() {
                    self.shutdown_matched = 0;
                    IoOutcome::Shutdown(0)
                } else {
                    IoOutcome::Done(0)
                }
            }
            _ => {
                log::debug!("absent port {port:#x} ({} {size})", if write { "OUT" } else { "IN" });
                absent
            }
        }
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
    fn absent_ports_read_all_ones_and_dom0_sees_no_device() {
        let mut pc = Pc::new();
        assert_eq!(pc.port_io(false, 0x60, 1, false, 0), IoOutcome::Done(0xff));
        assert_eq!(pc.port_io(false, 0x1f0, 2, false, 0), IoOutcome::Done(0xffff));
        assert_eq!(pc.port_io(false, 0xcf8, 4, false, 0), IoOutcome::Done(u32::MAX));
        assert_eq!(pc.port_io(true, COM1 + 5, 1, false, 0), IoOutcome::Done(0xff));
        assert_eq!(pc.port_io(true, DEBUG_EXIT_PORT, 1, true, 3), IoOutcome::Done(0));
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 1, 0xff), 0x1234_5678_9abc_deff);
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 2, 0xffff), 0x1234_5678_9abc_ffff);
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 4, 7), 7);
        assert_eq!(merge_reg(0x1234, 1, 0xab, true), 0xab34);
    }

    #[test]
    fn a_polling_uart_driver_works() {
        let mut pc = Pc::new();
        // Typical init: IER off, DLAB, divisor 1, 8N1, FIFO on, RTS/DTR.
        for (r, v) in [(1, 0), (3, 0x80), (0, 1), (1, 0), (3, 3), (2, 0xc7), (4, 0x0b)] {
            assert_eq!(pc.port_io(false, COM1 + r, 1, true, v), IoOutcome::Done(0));
        }
        assert_eq!(pc.port_io(false, COM1 + 3, 1, false, 0), IoOutcome::Done(3));
        assert_eq!(pc.port_io(false, COM1 + 5, 1, false, 0), IoOutcome::Done(0x60));
        assert_eq!(pc.port_io(false, COM1 + 2, 1, false, 0), IoOutcome::Done(0xc1));
        assert_eq!(pc.port_io(false, COM1, 1, true, u32::from(b'x')), IoOutcome::Console(b'x'));
        assert_eq!(pc.port_io(false, COM1 + 7, 1, true, 0x5a), IoOutcome::Done(0));
        assert_eq!(pc.port_io(false, COM1 + 7, 1, false, 0), IoOutcome::Done(0x5a));
        assert_eq!(pc.port_io(false, COM1, 1, false, 0), IoOutcome::Done(0), "no input");
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
