//! The 8042 keyboard controller as far as a guest without a keyboard needs it: the status port
//! (0x64) reads "output buffer empty, input buffer empty, system flag set, last write was a
//! command" — never stuck busy, which would hang a reboot through it — the data port (0x60)
//! reads 0, and command 0xFE (pulse the reset line) resets the machine. Other commands and data
//! are accepted and ignored, as a controller with no device behind it would leave them.

/// The data port.
pub const DATA: u16 = 0x60;
/// The status (read) and command (write) port.
pub const STATUS: u16 = 0x64;
/// The status a guest reads.
const STATUS_IDLE: u8 = 0x1c;
/// Command: pulse output line 0, the CPU's reset.
const CMD_RESET: u8 = 0xfe;

/// The controller.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kbc;

impl Kbc {
    /// Whether `port` belongs to this device.
    pub const fn claims(port: u16) -> bool {
        port == DATA || port == STATUS
    }

    /// An IN of `size` bytes at `port` (the byte of a wider access; the rest floats high).
    pub fn read(&self, port: u16, size: u8) -> u32 {
        let byte = if port == STATUS { STATUS_IDLE } else { 0 };
        super::mask(size) & !0xff | u32::from(byte)
    }

    /// An OUT; true if it resets the machine.
    pub fn write(&mut self, port: u16, value: u32) -> bool {
        port == STATUS && value as u8 == CMD_RESET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_status_and_the_reset_command() {
        let mut k = Kbc;
        assert_eq!(k.read(STATUS, 1), 0x1c);
        assert_eq!(k.read(DATA, 1), 0);
        assert_eq!(k.read(DATA, 2), 0xff00);
        assert!(!k.write(STATUS, 0xad), "disable keyboard: ignored");
        assert!(!k.write(DATA, 0xfe), "0xFE as data is not the command");
        assert!(k.write(STATUS, 0xfe));
    }
}
