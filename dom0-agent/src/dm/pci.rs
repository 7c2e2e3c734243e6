//! PCI configuration mechanism #1 (0xCF8 CONFIG_ADDRESS, 0xCFC–0xCFF CONFIG_DATA) of a PC with
//! one device, an Intel 440FX host bridge at 00:00.0 (a host bridge and nothing else is a valid
//! PCI bus), and PIIX3's reset control register at 0xCF9, which sits among those ports and
//! answers only byte accesses.
//!
//! CONFIG_ADDRESS is touched only by whole-dword accesses, and keeps only the bits a host bridge
//! keeps (enable, bus, device, function, dword register: the PCI specification makes bits
//! 30–24 and 1–0 read-only zero), so a kernel that writes all ones and reads back — a common
//! probe for mechanism #1 — sees `0x80FFFFFC`. Other accesses to 0xCF8–0xCFB are ordinary I/O
//! cycles that nobody claims. Configuration reads of any other function, or with the enable bit
//! clear, end in a master abort: all ones. Writes to CONFIG_DATA are dropped: the bridge has no
//! register a guest needs to program.

use abi::platform::{RESET_PORT, RESET_VALUE};

/// CONFIG_ADDRESS.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
/// CONFIG_DATA, the first of its four ports.
pub const CONFIG_DATA: u16 = 0xcfc;
/// The bits of CONFIG_ADDRESS a host bridge keeps.
const CONFIG_ADDRESS_BITS: u32 = 0x80ff_fffc;
/// The reset control register's CPU-reset bit (a write with it set resets the machine).
const RC_RESET_CPU: u8 = 1 << 2;
const _: () = assert!(RESET_VALUE & RC_RESET_CPU != 0, "the FADT's reset value must reset");

/// The configuration mechanism and the reset control register.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pci {
    address: u32,
}

impl Pci {
    /// Whether `port` belongs to this device.
    pub const fn claims(port: u16) -> bool {
        matches!(port, 0xcf8..=0xcff)
    }

    /// An IN of `size` bytes at `port`.
    pub fn read(&self, port: u16, size: u8) -> u32 {
        match (port, size) {
            (CONFIG_ADDRESS, 4) => self.address,
            // The reset control register keeps none of its bits: a write that matters ends
            // the domain.
            (RESET_PORT, 1) => 0,
            (CONFIG_DATA..=0xcff, _) => {
                let a = self.address;
                // Enabled, bus 0, device 0, function 0.
                let dword = if a & 0x8000_0000 != 0 && a & 0x00ff_ff00 == 0 {
                    match a & 0xfc {
                        0x00 => 0x1237_8086,
                        0x08 => 0x0600_0002, // host bridge, revision 2
                        _ => 0,
                    }
                } else {
                    u32::MAX
                };
                (dword >> (8 * u32::from(port & 3))) & super::mask(size)
            }
            _ => super::mask(size),
        }
    }

    /// An OUT of `size` bytes of `value` at `port`; true if it resets the machine.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> bool {
        match (port, size) {
            (CONFIG_ADDRESS, 4) => self.address = value & CONFIG_ADDRESS_BITS,
            (RESET_PORT, 1) => return value as u8 & RC_RESET_CPU != 0,
            _ => {}
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_reads_as_on_a_pc() {
        let mut p = Pci::default();
        let mut config = |addr: u32| {
            assert!(!p.write(CONFIG_ADDRESS, 4, addr));
            p.read(CONFIG_DATA, 4)
        };
        assert_eq!(config(0x8000_0000), 0x1237_8086, "00:00.0, the host bridge");
        assert_eq!(config(0x8000_0008), 0x0600_0002, "class: host bridge");
        assert_eq!(config(0x8000_0100), u32::MAX, "00:00.1");
        assert_eq!(config(0x8000_0800), u32::MAX, "00:01.0");
        assert_eq!(config(0x8001_0000), u32::MAX, "01:00.0");
        assert_eq!(config(0x0000_0000), u32::MAX, "enable bit clear");
        assert_eq!(p.read(CONFIG_DATA, 2), 0xffff);
        // Reserved bits read back as zero.
        p.write(CONFIG_ADDRESS, 4, u32::MAX);
        assert_eq!(p.read(CONFIG_ADDRESS, 4), 0x80ff_fffc);
        // Byte and word accesses are not CONFIG_ADDRESS (but a byte at 0xCF9 is the reset
        // control register).
        p.write(CONFIG_ADDRESS, 4, 0x8000_0000);
        assert_eq!(p.read(0xcf8, 1), 0xff);
        assert_eq!(p.read(0xcfa, 2), 0xffff);
        assert_eq!(p.read(0xcf9, 1), 0);
        assert!(!p.write(0xcf8, 1, 0x12));
        assert!(!p.write(0xcfa, 2, 0x1234));
        assert_eq!(p.read(CONFIG_ADDRESS, 4), 0x8000_0000);
        // Words within CONFIG_DATA; writes to it are dropped.
        assert_eq!(p.read(0xcfe, 2), 0x1237);
        assert!(!p.write(CONFIG_DATA, 4, 0));
        assert_eq!(p.read(CONFIG_DATA, 4), 0x1237_8086);
    }

    #[test]
    fn reset_control() {
        let mut p = Pci::default();
        assert!(p.write(RESET_PORT, 1, RESET_VALUE.into()));
        assert!(!p.write(RESET_PORT, 1, 0x02), "system reset bit alone: no CPU reset yet");
        assert!(!p.write(RESET_PORT, 2, 0x06), "byte access only");
    }
}
