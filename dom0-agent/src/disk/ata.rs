//! An ATA PIO driver for the master drive of a legacy IDE channel, polled.
//!
//! What it does, in the order of the ATA/ATAPI-8 command set (ATA8-ACS) and its PIO data-in /
//! data-out protocols: probes the channel (a floating bus reads 0xFF; a channel with nothing
//! attached does not keep what is written to its registers; a device that is not an ATA disk
//! answers IDENTIFY with another signature), identifies the drive (sector count, 48-bit LBA,
//! model), and reads and writes sectors with READ / WRITE SECTORS (28-bit LBA) or their EXT
//! forms (48-bit, used only where the range needs them), each write followed by FLUSH CACHE.
//! Where the drive offers it (IDENTIFY word 47), SET MULTIPLE MODE makes each data request a
//! block of several sectors, moved with READ / WRITE MULTIPLE (EXT): QEMU does one request to
//! its block layer per data request, which made a sector at a time its one cost.
//!
//! Interrupts stay off (nIEN set in the device control register): the driver polls the status
//! register. Every wait is bounded by a number of clock ticks ([`Bus::now`]); a drive that
//! stays busy, or never offers data, gives [`DiskError::Timeout`], never a hang. The port
//! accesses go through [`Bus`], so the logic is tested on the host against a simulated drive
//! (`disk::fake`).

use abi::proto::DiskError;
use core::fmt::Write;

/// Bytes of a sector.
pub const SECTOR: usize = 512;
/// Sectors one command transfers at most (the 28-bit forms' limit; the driver splits longer
/// transfers).
pub const MAX_SECTORS_PER_COMMAND: usize = 256;
/// Sectors 28-bit LBA addresses: commands ending beyond it need the 48-bit forms.
pub const LBA28_LIMIT: u64 = 1 << 28;

/// Command-block registers, by their offset from the channel's base (0x1F0 for the primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Reg {
    /// 0: data (the driver moves it with [`Bus::read_sector`] / [`Bus::write_sector`]).
    Data = 0,
    /// 1: error (read) / features (write).
    Error = 1,
    /// 2: sector count.
    SectorCount = 2,
    /// 3: LBA bits 0-7 (and 24-31 in 48-bit commands).
    LbaLow = 3,
    /// 4: LBA bits 8-15 (and 32-39).
    LbaMid = 4,
    /// 5: LBA bits 16-23 (and 40-47).
    LbaHigh = 5,
    /// 6: drive select, LBA mode, LBA bits 24-27 in 28-bit commands.
    Drive = 6,
    /// 7: status (read) / command (write).
    Status = 7,
}

/// Status: busy; the other bits are meaningless while it is set.
pub const BSY: u8 = 0x80;
/// Status: drive ready.
pub const DRDY: u8 = 0x40;
/// Status: drive fault.
pub const DF: u8 = 0x20;
/// Status: data request, the drive has a sector to give or take.
pub const DRQ: u8 = 0x08;
/// Status: the last command failed; the error register says why.
pub const ERR: u8 = 0x01;
/// Device control: interrupts off (the drive never asserts its IRQ line).
pub const NIEN: u8 = 0x02;

/// IDENTIFY DEVICE.
pub const CMD_IDENTIFY: u8 = 0xec;
/// READ SECTORS (28-bit LBA, PIO).
pub const CMD_READ: u8 = 0x20;
/// READ SECTORS EXT (48-bit LBA, PIO).
pub const CMD_READ_EXT: u8 = 0x24;
/// WRITE SECTORS (28-bit LBA, PIO).
pub const CMD_WRITE: u8 = 0x30;
/// WRITE SECTORS EXT (48-bit LBA, PIO).
pub const CMD_WRITE_EXT: u8 = 0x34;
/// READ MULTIPLE (28-bit LBA, a block of sectors per data request).
pub const CMD_READ_MULTIPLE: u8 = 0xc4;
/// READ MULTIPLE EXT.
pub const CMD_READ_MULTIPLE_EXT: u8 = 0x29;
/// WRITE MULTIPLE.
pub const CMD_WRITE_MULTIPLE: u8 = 0xc5;
/// WRITE MULTIPLE EXT.
pub const CMD_WRITE_MULTIPLE_EXT: u8 = 0x39;
/// SET MULTIPLE MODE (the sector count register holds the block size).
pub const CMD_SET_MULTIPLE: u8 = 0xc6;
/// FLUSH CACHE.
pub const CMD_FLUSH: u8 = 0xe7;
/// FLUSH CACHE EXT.
pub const CMD_FLUSH_EXT: u8 = 0xea;

/// Drive register: the master, LBA addressing (bits 5 and 7 are obsolete and set, as drives
/// from before ATA-6 expect).
const DRIVE_MASTER_LBA: u8 = 0xe0;

/// The ports of one channel (the real ones in dom0, a simulated drive in the tests) and a
/// clock for the bounded waits.
pub trait Bus {
    /// Reads a command-block register (not [`Reg::Data`]).
    fn read(&mut self, reg: Reg) -> u8;
    /// Writes a command-block register (not [`Reg::Data`]).
    fn write(&mut self, reg: Reg, value: u8);
    /// Reads one sector's 256 data words (little-endian, as the bytes lie on the disk).
    fn read_sector(&mut self, buf: &mut [u8; SECTOR]);
    /// Writes one sector's 256 data words.
    fn write_sector(&mut self, buf: &[u8; SECTOR]);
    /// Reads the alternate status register: the status, without side effects.
    fn alt_status(&mut self) -> u8;
    /// Writes the device control register.
    fn control(&mut self, value: u8);
    /// A clock that only moves forward (dom0: the TSC), for the bounded waits.
    fn now(&mut self) -> u64;
}

impl<B: Bus + ?Sized> Bus for &mut B {
    fn read(&mut self, reg: Reg) -> u8 {
        (**self).read(reg)
    }
    fn write(&mut self, reg: Reg, value: u8) {
        (**self).write(reg, value);
    }
    fn read_sector(&mut self, buf: &mut [u8; SECTOR]) {
        (**self).read_sector(buf);
    }
    fn write_sector(&mut self, buf: &[u8; SECTOR]) {
        (**self).write_sector(buf);
    }
    fn alt_status(&mut self) -> u8 {
        (**self).alt_status()
    }
    fn control(&mut self, value: u8) {
        (**self).control(value);
    }
    fn now(&mut self) -> u64 {
        (**self).now()
    }
}

/// What IDENTIFY said about the drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Model (words 27-46), trimmed.
    pub model: heapless::String<40>,
    /// Addressable sectors: words 100-103 with 48-bit LBA, else words 60-61.
    pub sectors: u64,
    /// The drive supports the 48-bit commands (word 83 bit 10).
    pub lba48: bool,
    /// Sectors per data request the READ / WRITE MULTIPLE commands move: 1 if the drive does
    /// not offer them (word 47), else the largest power of two it takes, at most 128.
    pub multiple: u16,
}

/// Why the channel has no disk for dom0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// The status register reads 0xFF: nothing drives the bus (nothing attached, or the ports
    /// are not passed through to dom0).
    FloatingBus,
    /// The registers do not keep what is written to them: no drive on the channel (QEMU's
    /// empty channel reads 0).
    NoRegisters,
    /// IDENTIFY left the status at 0: no drive answers as the master.
    NoDevice,
    /// The master answered IDENTIFY with another device's signature in the LBA mid / high
    /// registers (0x14 / 0xEB: ATAPI, a CD-ROM; 0x3C / 0xC3: SATA).
    NotAta {
        /// LBA mid.
        mid: u8,
        /// LBA high.
        high: u8,
    },
    /// The drive does not do LBA addressing (word 49 bit 9 clear), or reports no sectors.
    NoLba,
    /// IDENTIFY timed out or failed.
    Failed(DiskError),
}

impl core::fmt::Display for Absent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Absent::FloatingBus => f.write_str("floating bus (status 0xff)"),
            Absent::NoRegisters => f.write_str("nothing on the channel (registers do not hold)"),
            Absent::NoDevice => f.write_str("no master drive (IDENTIFY status 0)"),
            Absent::NotAta { mid, high } => {
                write!(f, "not an ATA disk (signature {mid:#04x} {high:#04x})")
            }
            Absent::NoLba => f.write_str("the drive has no LBA addressing"),
            Absent::Failed(e) => write!(f, "IDENTIFY failed: {e}"),
        }
    }
}

/// The master drive of one channel.
pub struct Ata<B: Bus> {
    bus: B,
    identity: Identity,
    /// Ticks a wait may last.
    timeout: u64,
    /// The drive register's last value: selecting anew costs the 400 ns settle.
    selected: Option<u8>,
}

impl<B: Bus> Ata<B> {
    /// Finds and identifies the master drive on `bus`; waits last at most `timeout` ticks.
    pub fn probe(mut bus: B, timeout: u64) -> Result<Self, Absent> {
        bus.control(NIEN);
        if bus.read(Reg::Status) == 0xff {
            return Err(Absent::FloatingBus);
        }
        let identity =
            Identity { model: heapless::String::new(), sectors: 0, lba48: false, multiple: 1 };
        let mut ata = Self { bus, identity, timeout, selected: None };
        ata.select(DRIVE_MASTER_LBA);
        // A channel with a drive keeps what is written to its task file.
        for (reg, v) in [(Reg::SectorCount, 0x55), (Reg::LbaLow, 0xaa)] {
            ata.bus.write(reg, v);
            if ata.bus.read(reg) != v {
                return Err(Absent::NoRegisters);
            }
        }
        // A status left with ERR by the firmware's last command is no reason to stop here.
        ata.wait_not_busy().map_err(Absent::Failed)?;
        for reg in [Reg::SectorCount, Reg::LbaLow, Reg::LbaMid, Reg::LbaHigh] {
            ata.bus.write(reg, 0);
        }
        ata.bus.write(Reg::Status, CMD_IDENTIFY);
        ata.settle();
        if ata.bus.read(Reg::Status) == 0 {
            return Err(Absent::NoDevice);
        }
        ata.wait_not_busy().map_err(Absent::Failed)?;
        // An ATAPI or SATA device aborts IDENTIFY and leaves its signature here.
        let (mid, high) = (ata.bus.read(Reg::LbaMid), ata.bus.read(Reg::LbaHigh));
        if (mid, high) != (0, 0) {
            return Err(Absent::NotAta { mid, high });
        }
        ata.wait(DRQ).map_err(Absent::Failed)?;
        let mut id = [0u8; SECTOR];
        ata.bus.read_sector(&mut id);
        ata.identity = parse_identify(&id).ok_or(Absent::NoLba)?;
        // Blocks of sectors per data request, if the drive takes SET MULTIPLE MODE; a drive
        // that refuses it moves one sector per request, as the plain commands do.
        if ata.identity.multiple > 1 {
            let ok = ata.wait_not_busy().is_ok() && {
                ata.bus.write(Reg::SectorCount, ata.identity.multiple as u8);
                ata.bus.write(Reg::Status, CMD_SET_MULTIPLE);
                ata.settle();
                ata.wait(0).is_ok()
            };
            if !ok {
                ata.identity.multiple = 1;
            }
        }
        Ok(ata)
    }

    /// What IDENTIFY said.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Reads whole sectors from `lba` into `buf` (a multiple of [`SECTOR`] bytes).
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check(lba, buf.len())?;
        let (cmd, cmd_ext) = match self.identity.multiple {
            1 => (CMD_READ, CMD_READ_EXT),
            _ => (CMD_READ_MULTIPLE, CMD_READ_MULTIPLE_EXT),
        };
        let block = usize::from(self.identity.multiple) * SECTOR;
        let mut at = lba;
        for chunk in buf.chunks_mut(MAX_SECTORS_PER_COMMAND * SECTOR) {
            let n = chunk.len() / SECTOR;
            self.command(at, n, cmd, cmd_ext)?;
            // One data request per block (the last one shorter).
            for sectors in chunk.chunks_mut(block) {
                self.wait(DRQ)?;
                for sector in sectors.chunks_exact_mut(SECTOR) {
                    let sector: &mut [u8; SECTOR] =
                        sector.try_into().map_err(|_| DiskError::OutOfRange)?;
                    self.bus.read_sector(sector);
                }
            }
            // The drive checks the transfer after its last word: an error shows now.
            self.settle();
            self.wait(0)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Writes whole sectors from `buf` (a multiple of [`SECTOR`] bytes) at `lba`, then flushes
    /// the drive's cache, so that the data is on the medium (the emulator's image file) when
    /// this returns.
    pub fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.check(lba, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let (cmd, cmd_ext) = match self.identity.multiple {
            1 => (CMD_WRITE, CMD_WRITE_EXT),
            _ => (CMD_WRITE_MULTIPLE, CMD_WRITE_MULTIPLE_EXT),
        };
        let block = usize::from(self.identity.multiple) * SECTOR;
        let mut at = lba;
        let mut ext_used = false;
        for chunk in buf.chunks(MAX_SECTORS_PER_COMMAND * SECTOR) {
            let n = chunk.len() / SECTOR;
            ext_used |= self.command(at, n, cmd, cmd_ext)?;
            for sectors in chunk.chunks(block) {
                self.wait(DRQ)?;
                for sector in sectors.chunks_exact(SECTOR) {
                    let sector: &[u8; SECTOR] =
                        sector.try_into().map_err(|_| DiskError::OutOfRange)?;
                    self.bus.write_sector(sector);
                }
            }
            self.settle();
            self.wait(0)?;
            at += n as u64;
        }
        self.bus.write(Reg::Status, if ext_used { CMD_FLUSH_EXT } else { CMD_FLUSH });
        self.settle();
        self.wait(0)
    }

    /// Checks a transfer of `len` bytes at `lba`: whole sectors, all on the drive.
    fn check(&self, lba: u64, len: usize) -> Result<(), DiskError> {
        if !len.is_multiple_of(SECTOR) {
            return Err(DiskError::OutOfRange);
        }
        match lba.checked_add((len / SECTOR) as u64) {
            Some(end) if end <= self.identity.sectors => Ok(()),
            _ => Err(DiskError::OutOfRange),
        }
    }

    /// Issues a read or write of `n` (1 to 256) sectors at `lba`: the 28-bit form if the range
    /// ends within 2^28 sectors, else the 48-bit one. True if the 48-bit form was used.
    fn command(&mut self, lba: u64, n: usize, cmd28: u8, cmd48: u8) -> Result<bool, DiskError> {
        // Not `wait(0)`: ERR stays set from a failed command until the next one is written,
        // and a drive that failed one command takes the next.
        self.wait_not_busy()?;
        let ext = lba + n as u64 > LBA28_LIMIT;
        let b = |shift: u32| (lba >> shift) as u8;
        if ext {
            if !self.identity.lba48 {
                return Err(DiskError::OutOfRange);
            }
            self.select(DRIVE_MASTER_LBA);
            // The 48-bit registers are two-deep: the high bytes first, then the low ones.
            self.bus.write(Reg::SectorCount, (n >> 8) as u8);
            self.bus.write(Reg::LbaLow, b(24));
            self.bus.write(Reg::LbaMid, b(32));
            self.bus.write(Reg::LbaHigh, b(40));
        } else {
            self.select(DRIVE_MASTER_LBA | (b(24) & 0x0f));
        }
        // 256 sectors is written as 0 in the 28-bit form (and as 0x0100 in the 48-bit one).
        self.bus.write(Reg::SectorCount, n as u8);
        self.bus.write(Reg::LbaLow, b(0));
        self.bus.write(Reg::LbaMid, b(8));
        self.bus.write(Reg::LbaHigh, b(16));
        self.bus.write(Reg::Status, if ext { cmd48 } else { cmd28 });
        self.settle();
        Ok(ext)
    }

    /// Writes the drive register, with the settle time a change of it needs.
    fn select(&mut self, value: u8) {
        if self.selected != Some(value) {
            self.bus.write(Reg::Drive, value);
            self.settle();
            self.selected = Some(value);
        }
    }

    /// The 400 ns a drive may take to show a new status: four reads of the alternate status.
    fn settle(&mut self) {
        for _ in 0..4 {
            let _ = self.bus.alt_status();
        }
    }

    /// Waits until BSY clears.
    fn wait_not_busy(&mut self) -> Result<(), DiskError> {
        let start = self.bus.now();
        loop {
            if self.bus.read(Reg::Status) & BSY == 0 {
                return Ok(());
            }
            if self.bus.now().wrapping_sub(start) > self.timeout {
                return Err(DiskError::Timeout);
            }
        }
    }

    /// Waits until the drive is not busy and shows every bit of `want` (0: just not busy, and
    /// no transfer pending); an error or fault ends the wait.
    fn wait(&mut self, want: u8) -> Result<(), DiskError> {
        let start = self.bus.now();
        loop {
            let s = self.bus.read(Reg::Status);
            if s & BSY == 0 {
                if s & (ERR | DF) != 0 {
                    return Err(DiskError::Device { status: s, error: self.bus.read(Reg::Error) });
                }
                let done = if want == 0 { s & DRQ == 0 } else { s & want == want };
                if done {
                    return Ok(());
                }
            }
            if self.bus.now().wrapping_sub(start) > self.timeout {
                return Err(DiskError::Timeout);
            }
        }
    }
}

/// The identity in IDENTIFY's 256 words; `None` for a drive without LBA or sectors.
pub fn parse_identify(id: &[u8; SECTOR]) -> Option<Identity> {
    let word = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
    if word(49) & (1 << 9) == 0 {
        return None;
    }
    let lba48 = word(83) & (1 << 10) != 0;
    let sectors = if lba48 {
        (0..4).map(|i| u64::from(word(100 + i)) << (16 * i)).sum()
    } else {
        u64::from(word(60)) | (u64::from(word(61)) << 16)
    };
    if sectors == 0 {
        return None;
    }
    // Each word holds two characters, the first in its high byte.
    let mut model = heapless::String::<40>::new();
    for i in 27..47 {
        for c in word(i).to_be_bytes() {
            // Unused characters are spaces, or NULs on some drives: both are trimmed.
            let c = match c {
                0 => ' ',
                c if c.is_ascii_graphic() || c == b' ' => c as char,
                _ => '?',
            };
            let _ = model.write_char(c);
        }
    }
    let trimmed = model.trim_end().len();
    model.truncate(trimmed);
    // Word 47 bits 0-7: the most sectors per data request (0 or 1: no multiple mode). The
    // block size set must be a power of two; 128 keeps it within one byte's count.
    let max = u16::from(word(47) as u8).min(128);
    let multiple = if max < 2 { 1 } else { 1 << (15 - max.leading_zeros()) };
    Some(Identity { model, sectors, lba48, multiple })
}
