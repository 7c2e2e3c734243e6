//! Port I/O.
//!
//! Only the UART driver and the exit paths use it; each caller owns the ports it names.

/// Writes a byte to an I/O port.
///
/// # Safety
/// The caller must own `port`: writing to an arbitrary device can break the machine.
#[inline]
pub unsafe fn outb(port: u16, val: u8) {
    // SAFETY: forwarded to the caller's contract above.
    unsafe { x86::io::outb(port, val) }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// The caller must own `port`: reads can have side effects on a device.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    // SAFETY: forwarded to the caller's contract above.
    unsafe { x86::io::inb(port) }
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// The caller must own `port`.
#[inline]
pub unsafe fn outl(port: u16, val: u32) {
    // SAFETY: forwarded to the caller's contract above.
    unsafe { x86::io::outl(port, val) }
}

/// Writes a 16-bit value to an I/O port.
///
/// # Safety
/// The caller must own `port`.
#[inline]
pub unsafe fn outw(port: u16, val: u16) {
    // SAFETY: forwarded to the caller's contract above.
    unsafe { x86::io::outw(port, val) }
}

/// Reads a 32-bit value from an I/O port.
///
/// # Safety
/// The caller must own `port`: reads can have side effects on a device.
#[inline]
pub unsafe fn inl(port: u16) -> u32 {
    // SAFETY: forwarded to the caller's contract above.
    unsafe { x86::io::inl(port) }
}

/// Reads a 16-bit value from an I/O port.
///
/// # Safety
/// The caller must own `port`: reads can have side effects on a device.
#[inline]
pub unsafe fn inw(port: u16) -> u16 {
    // SAFETY: forwarded to the caller's contract above.
    unsafe { x86::io::inw(port) }
}
