//! The 8042 keyboard controller as far as a guest without a keyboard needs it: the status port
//! (0x64) reads "output buffer empty, input buffer empty, system flag set, last write was a
//! command" — never stuck busy, which would hang a reboot through it — and the data port (0x60)
//! reads 0. Its output port's bit 0 is the CPU's reset line: commands 0xF0–0xFF pulse the output
//! bits whose command bit is 0 (so 0xFE, the usual one, and any even one reset the machine), and
//! command 0xD1 writes the output port from the next data byte (bit 0 clear resets). Other
//! commands and data are accepted and ignored, as a controller with no device behind it would
//! leave them.

/// The data port.
pub const DATA: u16 = 0x60;
/// The status (read) and command (write) port.
pub const STATUS: u16 = 0x64;
/// The status a guest reads.
const STATUS_IDLE: u8 = 0x1c;
/// Command: write the output port with the next data byte.
const CMD_WRITE_OUTPUT: u8 = 0xd1;

/// The controller.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kbc {
    /// The next data byte is for the output port (command 0xD1).
    output_next: bool,
}

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
        let (b, output) = (value as u8, core::mem::take(&mut self.output_next));
        match port {
            STATUS => {
                self.output_next = b == CMD_WRITE_OUTPUT;
                b >= 0xf0 && b & 1 == 0
            }
            _ => output && b & 1 == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_status_and_the_reset_commands() {
        let mut k = Kbc::default();
        assert_eq!(k.read(STATUS, 1), 0x1c);
        assert_eq!(k.read(DATA, 1), 0);
        assert_eq!(k.read(DATA, 2), 0xff00);
        assert!(!k.write(STATUS, 0xad), "disable keyboard: ignored");
        assert!(!k.write(DATA, 0xfe), "0xFE as data is not the command");
        assert!(k.write(STATUS, 0xfe));
        assert!(k.write(STATUS, 0xf0), "pulses every output bit, the reset line among them");
        assert!(!k.write(STATUS, 0xff), "pulses none");
        // Output port writes: bit 0 clear holds the CPU in reset.
        assert!(!k.write(STATUS, 0xd1));
        assert!(!k.write(DATA, 0x03));
        assert!(!k.write(DATA, 0x00), "a data byte not preceded by 0xD1");
        assert!(!k.write(STATUS, 0xd1));
        assert!(k.write(DATA, 0x02));
    }
}
