//! A 16550A UART (a domU's COM1), as its datasheet describes it to a driver: the divisor latch,
//! IER / IIR / FCR / LCR / MCR / LSR / MSR / SCR, a 16-byte receive FIFO (one byte with the FIFO
//! off), interrupt identification by priority (received data, then transmitter empty), the
//! THRE interrupt's set / clear rules, loopback mode, and OUT2 gating the interrupt line as on
//! a PC. Transmission is instantaneous: a written byte goes to the domain's console at once, so
//! the transmitter is always empty again by the next access.

use heapless::Deque;

/// Bytes the receive FIFO holds.
pub const RX_FIFO: usize = 16;
/// COM1's ISA interrupt.
pub const COM1_IRQ: u32 = 4;

const LCR_DLAB: u8 = 0x80;
const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
/// Transmitter holding register and shift register empty.
const LSR_TX_EMPTY: u8 = 0x60;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
/// Modem status with the modem lines up (CTS, DSR, DCD), outside loopback.
const MSR_READY: u8 = 0xb0;

/// What an access did besides changing registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UartOut {
    /// Nothing.
    None,
    /// A byte was transmitted.
    Tx(u8),
}

/// The UART. `Default` (every register zero) only serves [`Uart::new`].
#[derive(Debug, Clone, Default)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo: bool,
    lsr_errors: u8,
    /// The THRE interrupt is pending (set when the holding register empties or THRI is
    /// enabled while it is empty; cleared by writing THR or by reading IIR when it is the
    /// source).
    thre: bool,
    rx: Deque<u8, RX_FIFO>,
}

impl Uart {
    /// The power-on state: 8 bits of nothing, interrupts off, FIFO off.
    pub(crate) fn new() -> Self {
        Self { dll: 0x0c, ..Self::default() }
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo { RX_FIFO } else { 1 }
    }

    /// Receives `bytes` from the line; returns how many fit (the rest are for a later call:
    /// the sender holds them, like a terminal honouring flow control).
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        let mut n = 0;
        for &b in bytes {
            if self.rx.len() >= self.rx_capacity() || self.rx.push_back(b).is_err() {
                break;
            }
            n += 1;
        }
        n
    }

    /// The interrupt identification: 0x04 received data, 0x02 transmitter empty, 0x01 none.
    fn iir_id(&self) -> u8 {
        if self.ier & IER_RDI != 0 && !self.rx.is_empty() {
            0x04
        } else if self.ier & IER_THRI != 0 && self.thre {
            0x02
        } else {
            0x01
        }
    }

    /// The level of the interrupt line (gated by OUT2, as PC serial ports wire it).
    pub fn irq(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && self.iir_id() != 0x01
    }

    /// A read of register `reg` (0–7).
    pub fn read(&mut self, reg: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match reg {
            0 if dlab => self.dll,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => {
                let id = self.iir_id();
                // Reading IIR with THRE as the source clears it.
                self.thre &= id != 0x02;
                id | if self.fifo { 0xc0 } else { 0 }
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let errors = core::mem::take(&mut self.lsr_errors);
                LSR_TX_EMPTY | errors | (u8::from(!self.rx.is_empty()) * LSR_DR)
            }
            6 if self.mcr & MCR_LOOP != 0 => {
                // Loopback: RTS → CTS, DTR → DSR, OUT1 → RI, OUT2 → DCD.
                let m = self.mcr;
                ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
            }
            6 => MSR_READY,
            _ => self.scr,
        }
    }

    /// A write of `v` to register `reg` (0–7).
    pub fn write(&mut self, reg: u16, v: u8) -> UartOut {
        let dlab = self.lcr & LCR_DLAB != 0;
        match reg {
            0 if dlab => self.dll = v,
            0 => {
                // Sent at once: the holding register is empty again.
                self.thre = true;
                if self.mcr & MCR_LOOP != 0 {
                    if self.receive(&[v]) == 0 {
                        self.lsr_errors |= LSR_OE;
                    }
                    return UartOut::None;
                }
                return UartOut::Tx(v);
            }
            1 if dlab => self.dlm = v,
            1 => {
                // Enabling THRI while the holding register is empty raises THRE.
                self.thre |= v & IER_THRI != 0 && self.ier & IER_THRI == 0;
                self.ier = v & 0x0f;
            }
            2 => {
                self.fifo = v & 1 != 0;
                // Clearing the receive FIFO (or switching FIFO mode) empties it.
                if v & 0x02 != 0 || !self.fifo {
                    self.rx.clear();
                }
            }
            3 => self.lcr = v,
            4 => self.mcr = v & 0x1f,
            7 => self.scr = v,
            // LSR and MSR are read-only.
            _ => {}
        }
        UartOut::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_style_probe_and_interrupt_driven_transmit() {
        let mut u = Uart::new();
        // Scratch and IER read back; FIFO enable shows 16550A's IIR bits.
        u.write(7, 0xa5);
        assert_eq!(u.read(7), 0xa5);
        u.write(1, 0x0f);
        assert_eq!(u.read(1), 0x0f);
        u.write(1, 0);
        u.write(2, 0x07);
        assert_eq!(u.read(2) & 0xc0, 0xc0);
        // Loopback: MSR mirrors MCR, a sent byte comes back.
        u.write(4, MCR_LOOP | 0x0a);
        assert_eq!(u.read(6) & 0xf0, 0x90);
        assert_eq!(u.write(0, b'x'), UartOut::None);
        assert_eq!((u.read(5) & LSR_DR, u.read(0)), (LSR_DR, b'x'));
        // Normal mode with OUT2: enabling THRI raises the THRE interrupt; reading IIR clears it;
        // writing THR sends the byte and raises it again.
        u.write(4, MCR_OUT2 | 0x03);
        assert!(!u.irq());
        u.write(1, IER_THRI);
        assert!(u.irq());
        assert_eq!(u.read(2) & 0x0f, 0x02);
        assert!(!u.irq());
        assert_eq!(u.read(2) & 0x0f, 0x01);
        assert_eq!(u.write(0, b'a'), UartOut::Tx(b'a'));
        assert!(u.irq());
        // Without OUT2 the line stays low.
        u.write(4, 0x03);
        assert!(!u.irq());
    }

    #[test]
    fn received_bytes_raise_the_interrupt_until_read_and_respect_the_fifo() {
        let mut u = Uart::new();
        u.write(4, MCR_OUT2);
        u.write(1, IER_RDI);
        // FIFO off: one byte at a time.
        assert_eq!(u.receive(b"ls\n"), 1);
        assert!(u.irq());
        assert_eq!(u.read(2) & 0x0f, 0x04);
        assert_eq!(u.read(0), b'l');
        assert!(!u.irq());
        u.write(2, 0x01);
        assert_eq!(u.receive(&[b'z'; 40]), RX_FIFO);
        assert_eq!(u.read(5) & LSR_DR, LSR_DR);
        for _ in 0..RX_FIFO {
            assert_eq!(u.read(0), b'z');
        }
        assert_eq!(u.read(5) & LSR_DR, 0);
        // Received data outranks THRE.
        u.write(1, IER_RDI | IER_THRI);
        u.receive(b"q");
        assert_eq!(u.read(2) & 0x0f, 0x04);
    }
}
