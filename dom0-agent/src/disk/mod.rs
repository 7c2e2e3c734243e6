//! dom0's disk: the master drive of the primary ATA channel (ports 0x1F0-0x1F7 and 0x3F6,
//! which microhv passes through to dom0), and the FAT file system on it.
//!
//! Layers, each usable alone:
//!
//! - [`ata`]: the ATA PIO driver, polled, behind the [`ata::Bus`] trait (the real ports:
//!   [`PrimaryChannel`]; a simulated drive in the tests).
//! - [`Sectors`]: the disk as whole 512-byte sectors, bounds-checked. [`Disk`] implements it on
//!   the driver. The file system sits on it, and so does the block backend serving domUs
//!   regions of the disk (`crate::vbd`, through a `&dyn Sectors`).
//! - [`fs`]: the FAT16 / FAT32 file system of the disk's first MBR partition, read with the
//!   `embedded-sdmmc` crate, opened per request (a few sectors), so nothing is cached across
//!   requests that another writer of the disk could invalidate.

pub mod ata;
#[cfg(test)]
pub(crate) mod fake;
pub mod fs;

use abi::proto::DiskError;
use ata::{Absent, Ata, Bus, Identity, Reg, SECTOR};
use core::cell::RefCell;

/// A disk as whole sectors.
pub trait Sectors {
    /// 512-byte sectors on the disk.
    fn sectors(&self) -> u64;
    /// Reads sectors from `lba` into `buf` (whole sectors, within the disk).
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Writes sectors at `lba` from `buf` (whole sectors, within the disk); durable when it
    /// returns.
    fn write(&self, lba: u64, buf: &[u8]) -> Result<(), DiskError>;
}

/// The ATA drive as [`Sectors`] (the driver needs `&mut`; callers share the disk).
pub struct Disk<B: Bus> {
    ata: RefCell<Ata<B>>,
    identity: Identity,
}

impl<B: Bus> Disk<B> {
    /// Probes and identifies the master drive on `bus` (waits bounded by `timeout` ticks).
    pub fn probe(bus: B, timeout: u64) -> Result<Self, Absent> {
        let ata = Ata::probe(bus, timeout)?;
        let identity = ata.identity().clone();
        Ok(Self { ata: RefCell::new(ata), identity })
    }

    /// What IDENTIFY said.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

impl<B: Bus> Sectors for Disk<B> {
    fn sectors(&self) -> u64 {
        self.identity.sectors
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        // The borrow lasts one call and no caller re-enters the disk meanwhile; should that
        // ever change, the caller gets a timeout rather than a panic.
        let mut ata = self.ata.try_borrow_mut().map_err(|_| DiskError::Timeout)?;
        ata.read(lba, buf)
    }
    fn write(&self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        let mut ata = self.ata.try_borrow_mut().map_err(|_| DiskError::Timeout)?;
        ata.write(lba, buf)
    }
}

/// The primary ATA channel's real ports, with the TSC as the clock.
pub struct PrimaryChannel(());

/// The primary channel's command block.
const PRIMARY_BASE: u16 = 0x1f0;
/// Its device control / alternate status register.
const PRIMARY_CONTROL: u16 = 0x3f6;

impl PrimaryChannel {
    /// The channel.
    ///
    /// # Safety
    /// The caller owns the primary ATA channel's ports (dom0 does: microhv passes them
    /// through) and makes only one of these.
    pub unsafe fn new() -> Self {
        Self(())
    }
}

impl Bus for PrimaryChannel {
    fn read(&mut self, reg: Reg) -> u8 {
        // SAFETY: `new`'s caller owns the channel's ports.
        unsafe { rt::io::inb(PRIMARY_BASE + reg as u16) }
    }
    fn write(&mut self, reg: Reg, value: u8) {
        // SAFETY: as above.
        unsafe { rt::io::outb(PRIMARY_BASE + reg as u16, value) }
    }
    // The data port is read and written 32 bits at a time (REP INSD / OUTSD): the PIIX
    // controllers of both emulators take it, and it halves the port accesses (under Bochs,
    // 4 MiB in 64-sector commands took 48 ms of guest time with 16-bit accesses, 27 with
    // 32-bit; under QEMU it changed little: there a data request's cost is its own).
    fn read_sector(&mut self, buf: &mut [u8; SECTOR]) {
        // SAFETY: the channel's data port is ours; REP INSD stores 128 dwords into `buf`
        // (512 bytes, exactly its size), DF is clear (the Rust ABI's invariant).
        unsafe {
            core::arch::asm!(
                "rep insd",
                inout("rdi") buf.as_mut_ptr() => _,
                inout("rcx") SECTOR / 4 => _,
                in("dx") PRIMARY_BASE,
                options(nostack, preserves_flags),
            );
        }
    }
    fn write_sector(&mut self, buf: &[u8; SECTOR]) {
        // SAFETY: as above; REP OUTSD reads the 128 dwords of `buf`.
        unsafe {
            core::arch::asm!(
                "rep outsd",
                inout("rsi") buf.as_ptr() => _,
                inout("rcx") SECTOR / 4 => _,
                in("dx") PRIMARY_BASE,
                options(nostack, preserves_flags, readonly),
            );
        }
    }
    fn alt_status(&mut self) -> u8 {
        // SAFETY: as above.
        unsafe { rt::io::inb(PRIMARY_CONTROL) }
    }
    fn control(&mut self, value: u8) {
        // SAFETY: as above.
        unsafe { rt::io::outb(PRIMARY_CONTROL, value) }
    }
    fn now(&mut self) -> u64 {
        // SAFETY: RDTSC has no side effects; microhv does not intercept it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
}

/// In-memory sectors, for the tests of the layers above the driver.
#[cfg(test)]
pub(crate) struct MemDisk(pub RefCell<std::vec::Vec<u8>>);

#[cfg(test)]
impl Sectors for MemDisk {
    fn sectors(&self) -> u64 {
        (self.0.borrow().len() / SECTOR) as u64
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let at = lba as usize * SECTOR;
        let d = self.0.borrow();
        buf.copy_from_slice(d.get(at..at + buf.len()).ok_or(DiskError::OutOfRange)?);
        Ok(())
    }
    fn write(&self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        let at = lba as usize * SECTOR;
        let mut d = self.0.borrow_mut();
        d.get_mut(at..at + buf.len()).ok_or(DiskError::OutOfRange)?.copy_from_slice(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
