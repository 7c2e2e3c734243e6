//! The local APIC's xAPIC register page as a guest kernel drives it (Intel SDM Vol. 3A,
//! "Advanced Programmable Interrupt Controller (APIC)"): software enable, its ID, EOI, and
//! IPIs through the interrupt command register (ICR). Every access is an MMIO exit that
//! microhv's virtual local APIC serves (`microhv/core/src/dev/lapic.rs`).

use abi::platform::LAPIC_BASE;

/// The local APIC ID register; the xAPIC ID is its top byte.
pub const REG_ID: u64 = 0x20;
/// Bits the ID is shifted by in [`REG_ID`] and the destination in [`REG_ICR_HIGH`].
pub const ID_SHIFT: u32 = 24;
/// The end-of-interrupt register: any write ends the interrupt being serviced.
pub const REG_EOI: u64 = 0xb0;
/// The spurious-interrupt vector register (SVR): the APIC software enable and its vector.
pub const REG_SVR: u64 = 0xf0;
/// The error status register.
pub const REG_ESR: u64 = 0x280;
/// The ICR's low half: vector, delivery mode, level, delivery status; writing it sends.
pub const REG_ICR_LOW: u64 = 0x300;
/// The ICR's high half: the destination.
pub const REG_ICR_HIGH: u64 = 0x310;

/// SVR: APIC software enable (a disabled APIC takes no fixed interrupts).
pub const SVR_ENABLE: u32 = 1 << 8;
/// ICR delivery mode fixed (000): the vector in the low byte.
pub const ICR_FIXED: u32 = 0b000 << 8;
/// ICR delivery mode INIT (101).
pub const ICR_INIT: u32 = 0b101 << 8;
/// ICR delivery mode start-up (110): the vector is the page number of the start address.
pub const ICR_STARTUP: u32 = 0b110 << 8;
/// ICR delivery status: the previous IPI has not been accepted yet (read-only).
pub const ICR_SEND_PENDING: u32 = 1 << 12;
/// ICR level: assert (INIT de-assert, level 0, is the only other use; none here).
pub const ICR_ASSERT: u32 = 1 << 14;

/// How many reads of the ICR an IPI waits for the previous one's delivery status to clear:
/// microhv delivers at the write, so the first read normally sees it clear; a bound, not a
/// budget.
const SEND_PENDING_READS: u32 = 100_000;

/// Reads the register at `offset` in the APIC page.
pub fn read(offset: u64) -> u32 {
    // SAFETY: the APIC page is identity-mapped (rt maps the first 4 GiB) and its registers are
    // 32-bit, 16-byte aligned; a read has no side effect the callers rely on not happening.
    unsafe { core::ptr::read_volatile((LAPIC_BASE + offset) as *const u32) }
}

/// Writes `v` to the register at `offset` in the APIC page.
pub fn write(offset: u64, v: u32) {
    // SAFETY: as for `read`; the callers name the register they mean to program.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + offset) as *mut u32, v) }
}

/// Software-enables this CPU's local APIC with `spurious` as its spurious-interrupt vector.
pub fn enable(spurious: u8) {
    write(REG_SVR, SVR_ENABLE | u32::from(spurious));
}

/// This CPU's xAPIC ID.
pub fn id() -> u8 {
    (read(REG_ID) >> ID_SHIFT) as u8
}

/// Ends the interrupt being serviced.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Sends an IPI with ICR low half `low` to the APIC with ID `dest` (physical destination
/// mode). Waits, boundedly, for the previous IPI's delivery status first; false if it never
/// cleared (nothing is sent then). Not for interrupt handlers: one that sent between the two
/// ICR writes of an interrupted `send` would change its destination.
pub fn send(dest: u8, low: u32) -> bool {
    let mut reads = 0;
    while read(REG_ICR_LOW) & ICR_SEND_PENDING != 0 {
        reads += 1;
        if reads == SEND_PENDING_READS {
            return false;
        }
        core::hint::spin_loop();
    }
    // The high half first: writing the low half sends.
    write(REG_ICR_HIGH, u32::from(dest) << ID_SHIFT);
    write(REG_ICR_LOW, low);
    true
}
