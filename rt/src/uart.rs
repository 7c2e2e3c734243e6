//! A polled 16550 UART, the console of microhv (COM1) and the control channel of dom0 (COM2).

use crate::io::{inb, outb};

/// I/O base of the first serial port: microhv's log.
pub const COM1: u16 = 0x3F8;
/// I/O base of the second serial port: passed through to dom0 for the control protocol.
pub const COM2: u16 = 0x2F8;

const DATA: u16 = 0;
const IER: u16 = 1;
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_DATA_READY: u8 = 1 << 0;
const LSR_THR_EMPTY: u8 = 1 << 5;
const LSR_TX_IDLE: u8 = 1 << 6;

/// Bytes the transmit FIFO holds (16550A, enabled by [`Uart::init`]).
pub const FIFO_BYTES: usize = 16;

/// One 16550 at a fixed I/O base.
#[derive(Debug, Clone, Copy)]
pub struct Uart {
    base: u16,
}

impl Uart {
    /// A handle on the UART at `base`.
    ///
    /// # Safety
    /// The caller must own the eight ports from `base`, and be the only one driving them.
    pub const unsafe fn new(base: u16) -> Self {
        Self { base }
    }

    /// Programs 115200 baud, 8N1, FIFOs on, interrupts off (everything here polls).
    pub fn init(&self) {
        // SAFETY: `new`'s contract makes these ports ours.
        unsafe {
            outb(self.base + IER, 0x00);
            outb(self.base + LCR, 0x80);
            outb(self.base + DATA, 0x01);
            outb(self.base + IER, 0x00);
            outb(self.base + LCR, 0x03);
            outb(self.base + FCR, 0xC7);
            outb(self.base + MCR, 0x03);
        }
    }

    /// Sends one byte, waiting for room in the transmitter.
    pub fn write_byte(&self, b: u8) {
        // SAFETY: `new`'s contract makes these ports ours.
        unsafe {
            while inb(self.base + LSR) & LSR_THR_EMPTY == 0 {
                core::hint::spin_loop();
            }
            outb(self.base + DATA, b);
        }
    }

    /// Whether the transmitter can take [`FIFO_BYTES`] bytes now (its FIFO is empty).
    pub fn fifo_empty(&self) -> bool {
        // SAFETY: `new`'s contract makes these ports ours.
        unsafe { inb(self.base + LSR) & LSR_THR_EMPTY != 0 }
    }

    /// Puts a byte in the transmitter without waiting; only after [`Uart::fifo_empty`] said so,
    /// for at most [`FIFO_BYTES`] bytes.
    pub fn put_byte(&self, b: u8) {
        // SAFETY: `new`'s contract makes these ports ours.
        unsafe { outb(self.base + DATA, b) };
    }

    /// Sends every byte of `bytes`.
    pub fn write_bytes(&self, bytes: &[u8]) {
        for &b in bytes {
            self.write_byte(b);
        }
    }

    /// Waits until every byte written has left the transmitter, so an emulator that is about
    /// to be stopped has seen them all.
    pub fn flush(&self) {
        // SAFETY: `new`'s contract makes these ports ours.
        unsafe {
            while inb(self.base + LSR) & LSR_TX_IDLE == 0 {
                core::hint::spin_loop();
            }
        }
    }

    /// A received byte, if one is waiting.
    pub fn try_read_byte(&self) -> Option<u8> {
        // SAFETY: `new`'s contract makes these ports ours.
        unsafe {
            if inb(self.base + LSR) & LSR_DATA_READY != 0 {
                Some(inb(self.base + DATA))
            } else {
                None
            }
        }
    }
}

impl core::fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}
