//! System control port A (0x92): bit 1 is the fast A20 gate, which reads as on (A20 is always
//! enabled in a domain), bit 0 the fast reset, which resets the machine when written as 1.

/// The port.
pub const PORT_A: u16 = 0x92;
/// What a read shows: A20 on, no reset in progress.
const A20: u8 = 0x02;

/// The port.
#[derive(Debug, Clone, Copy, Default)]
pub struct PortA;

impl PortA {
    /// Whether `port` belongs to this device.
    pub const fn claims(port: u16) -> bool {
        port == PORT_A
    }

    /// An IN of `size` bytes (the byte of a wider access; the rest floats high).
    pub fn read(&self, size: u8) -> u32 {
        super::mask(size) & !0xff | u32::from(A20)
    }

    /// An OUT; true if it resets the machine.
    pub fn write(&mut self, value: u32) -> bool {
        value & 1 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a20_on_and_fast_reset() {
        let mut p = PortA;
        assert_eq!(p.read(1), 0x02);
        assert!(!p.write(0x02), "setting A20 does not reset");
        assert!(p.write(0x03));
    }
}
