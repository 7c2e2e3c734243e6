//! A simulated ATA drive on one channel, for the host tests: the task-file registers (two
//! deep, as the 48-bit commands need), IDENTIFY, READ / WRITE SECTORS (EXT), FLUSH CACHE, the
//! PIO data-in and data-out protocols one sector at a time, and the ways a channel can fail
//! a driver: a floating bus, an empty channel, an ATAPI device, a drive that stays busy, a
//! sector that cannot be read or written, a drive that never offers data. Multiple mode
//! (SET MULTIPLE MODE, READ / WRITE MULTIPLE (EXT)) moves a block of sectors per data request.

use super::ata::{BSY, Bus, DRDY, DRQ, ERR, Reg, SECTOR};
use std::vec::Vec;

/// Error register: command aborted.
pub const ABRT: u8 = 0x04;
/// Error register: sector not found (beyond the drive's end).
pub const IDNF: u8 = 0x10;
/// Error register: uncorrectable data.
pub const UNC: u8 = 0x40;

/// What sits on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An ATA disk as master.
    Disk,
    /// Nothing drives the bus: every read is 0xFF.
    Floating,
    /// QEMU's channel with nothing attached: every register reads 0.
    Empty,
    /// An ATAPI device (a CD-ROM) as master.
    Atapi,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Xfer {
    write: bool,
    lba: u64,
    left: u64,
    /// Sectors per data request, and how many of the current one are moved.
    block: u64,
    in_block: u64,
}

/// The simulated drive.
pub struct FakeDrive {
    /// The disk's bytes, from sector `base` on.
    pub disk: Vec<u8>,
    /// The first sector `disk` holds: the ones below read as zeros and keep no write (a drive
    /// larger than the test's memory, for the 48-bit commands).
    pub base: u64,
    /// What is on the channel.
    pub kind: Kind,
    /// IDENTIFY reports 48-bit LBA.
    pub lba48: bool,
    /// The most sectors per data request it offers for multiple mode (word 47; 0: none).
    pub max_multiple: u8,
    /// The block size SET MULTIPLE MODE set (0: multiple mode off).
    pub multiple: u8,
    /// SET MULTIPLE MODE is refused whatever word 47 says.
    pub refuse_multiple: bool,
    /// Status reads that show BSY after each command and each sector (its latency).
    pub latency: u32,
    /// Once more than this many commands were issued, BSY never clears.
    pub stuck_after: Option<usize>,
    /// The sector count IDENTIFY reports, if not the disk's own (a drive that claims more
    /// than it has answers commands past its real end with IDNF).
    pub claims: Option<u64>,
    /// After a read command, BSY clears but DRQ never comes.
    pub no_data: bool,
    /// Reading or writing this sector fails with UNC.
    pub bad_sector: Option<u64>,
    /// Every command issued: (command, LBA, sectors) for reads and writes, (command, 0, 0)
    /// for the others.
    pub commands: Vec<(u8, u64, u64)>,
    /// Data-port accesses made without DRQ (a driver that breaks the protocol).
    pub protocol_errors: u32,
    // The drive's state (crate-visible so that the tests can build drives with `..`).
    pub(crate) regs: [[u8; 2]; 6],
    pub(crate) drive: u8,
    pub(crate) status: u8,
    pub(crate) error: u8,
    pub(crate) control: u8,
    pub(crate) busy: u32,
    pub(crate) xfer: Option<Xfer>,
    pub(crate) identify: Option<[u8; SECTOR]>,
    pub(crate) clock: u64,
}

impl FakeDrive {
    /// A disk holding `disk` (whole sectors).
    pub fn new(disk: Vec<u8>) -> Self {
        assert_eq!(disk.len() % SECTOR, 0);
        Self {
            disk,
            base: 0,
            kind: Kind::Disk,
            lba48: true,
            max_multiple: 16,
            multiple: 0,
            refuse_multiple: false,
            latency: 2,
            stuck_after: None,
            claims: None,
            no_data: false,
            bad_sector: None,
            commands: Vec::new(),
            protocol_errors: 0,
            regs: [[0; 2]; 6],
            drive: 0,
            status: DRDY,
            error: 0,
            control: 0,
            busy: 0,
            xfer: None,
            identify: None,
            clock: 0,
        }
    }

    /// A channel of another kind.
    pub fn of(kind: Kind) -> Self {
        Self { kind, ..Self::new(Vec::new()) }
    }

    /// Sectors on the disk.
    pub fn sectors(&self) -> u64 {
        self.base + (self.disk.len() / SECTOR) as u64
    }

    /// Where sector `lba` lies in `disk`, if it does.
    fn at(&self, lba: u64) -> Option<usize> {
        Some(usize::try_from(lba.checked_sub(self.base)?).ok()? * SECTOR)
    }

    /// The clock's reading: port accesses so far.
    pub fn ticks(&self) -> u64 {
        self.clock
    }

    fn stuck(&self) -> bool {
        self.stuck_after.is_some_and(|n| self.commands.len() > n)
    }

    /// The interrupt-enable bit the driver left (nIEN set: interrupts off).
    pub fn interrupts_off(&self) -> bool {
        self.control & super::ata::NIEN != 0
    }

    fn cur(&self, r: usize) -> u64 {
        u64::from(self.regs[r][0])
    }
    fn prev(&self, r: usize) -> u64 {
        u64::from(self.regs[r][1])
    }

    fn identify_data(&self) -> [u8; SECTOR] {
        let mut w = [0u16; 256];
        w[47] = 0x8000 | u16::from(self.max_multiple);
        w[49] = 1 << 9;
        let sectors = self.claims.unwrap_or(self.sectors());
        let lba28 = sectors.min((1 << 28) - 1);
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        if self.lba48 {
            w[83] = 1 << 10;
            for i in 0..4 {
                w[100 + i] = (sectors >> (16 * i)) as u16;
            }
        }
        let model = b"FAKE ATA DISK";
        for (i, pair) in model.chunks(2).enumerate() {
            let hi = pair[0];
            let lo = pair.get(1).copied().unwrap_or(b' ');
            w[27 + i] = u16::from_be_bytes([hi, lo]);
        }
        for slot in w.iter_mut().take(47).skip(27 + model.len().div_ceil(2)) {
            *slot = 0x2020;
        }
        let mut out = [0u8; SECTOR];
        for (i, v) in w.iter().enumerate() {
            out[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn fail(&mut self, error: u8) {
        self.status = DRDY | ERR;
        self.error = error;
        self.xfer = None;
    }

    fn command(&mut self, cmd: u8) {
        if self.drive & 0x10 != 0 {
            // The slave: there is none, and the master does not answer for it.
            self.status = 0;
            return;
        }
        self.error = 0;
        self.busy = self.latency;
        let ext = matches!(cmd, 0x24 | 0x34 | 0x29 | 0x39);
        let (lba, count) = if ext {
            let lba = self.cur(3)
                | self.cur(4) << 8
                | self.cur(5) << 16
                | self.prev(3) << 24
                | self.prev(4) << 32
                | self.prev(5) << 40;
            let n = self.cur(2) | self.prev(2) << 8;
            (lba, if n == 0 { 65536 } else { n })
        } else {
            let lba = self.cur(3)
                | self.cur(4) << 8
                | self.cur(5) << 16
                | u64::from(self.drive & 0x0f) << 24;
            let n = self.cur(2);
            (lba, if n == 0 { 256 } else { n })
        };
        let data = matches!(cmd, 0x20 | 0x24 | 0x30 | 0x34 | 0xc4 | 0x29 | 0xc5 | 0x39);
        self.commands.push(if data { (cmd, lba, count) } else { (cmd, 0, 0) });
        match (self.kind, cmd) {
            (Kind::Atapi, 0xec) => {
                self.regs[4][0] = 0x14;
                self.regs[5][0] = 0xeb;
                self.fail(ABRT);
            }
            (_, 0xec) => {
                self.identify = Some(self.identify_data());
                self.status = DRDY | DRQ;
            }
            (_, 0xc6) => {
                let n = self.cur(2) as u8;
                if n.is_power_of_two() && n <= self.max_multiple && !self.refuse_multiple {
                    self.multiple = n;
                    self.status = DRDY;
                } else {
                    self.fail(ABRT);
                }
            }
            (_, 0xc4 | 0x29 | 0xc5 | 0x39) if self.multiple == 0 => self.fail(ABRT),
            (_, 0x20 | 0x24 | 0x30 | 0x34 | 0xc4 | 0x29 | 0xc5 | 0x39) => {
                if lba + count > self.sectors() {
                    self.fail(IDNF);
                } else {
                    let write = matches!(cmd, 0x30 | 0x34 | 0xc5 | 0x39);
                    let multiple = matches!(cmd, 0xc4 | 0x29 | 0xc5 | 0x39);
                    let block = if multiple { u64::from(self.multiple) } else { 1 };
                    self.xfer = Some(Xfer { write, lba, left: count, block, in_block: 0 });
                    self.status = DRDY | DRQ;
                    if !write && self.block_is_bad() {
                        self.fail(UNC);
                    } else if !write && self.no_data {
                        self.status = DRDY;
                    }
                }
            }
            (_, 0xe7 | 0xea) => self.status = DRDY,
            _ => self.fail(ABRT),
        }
    }

    fn status(&mut self) -> u8 {
        match self.kind {
            Kind::Floating => return 0xff,
            Kind::Empty => return 0,
            _ => {}
        }
        if self.stuck() {
            return BSY;
        }
        if self.busy > 0 {
            self.busy -= 1;
            return BSY;
        }
        self.status
    }

    /// A read's next data request holds the bad sector: the drive reads a whole block before
    /// it offers it, so the error shows at the block's data request.
    fn block_is_bad(&self) -> bool {
        let Some(x) = self.xfer else { return false };
        let end = x.lba + x.block.min(x.left);
        self.bad_sector.is_some_and(|b| (x.lba..end).contains(&b))
    }

    /// Moves the transfer on after one sector (failing it if the next block is bad).
    fn next_sector(&mut self) {
        let Some(x) = self.xfer.as_mut() else { return };
        x.lba += 1;
        x.left -= 1;
        x.in_block += 1;
        // Busy between data requests; within a block the sectors follow each other.
        if x.in_block == x.block {
            x.in_block = 0;
            self.busy = self.latency;
        }
        if x.left == 0 {
            self.busy = self.latency;
            self.xfer = None;
            self.status = DRDY;
        } else if !x.write && x.in_block == 0 && self.block_is_bad() {
            self.fail(UNC);
        }
    }
}

impl Bus for FakeDrive {
    fn read(&mut self, reg: Reg) -> u8 {
        match (self.kind, reg) {
            (Kind::Floating, _) => 0xff,
            (Kind::Empty, _) => 0,
            (_, Reg::Status) => self.status(),
            (_, Reg::Error) => self.error,
            (_, Reg::Drive) => self.drive,
            (_, Reg::Data) => {
                self.protocol_errors += 1;
                0
            }
            (_, r) => {
                let i = r as usize;
                // HOB set in the device control register reads the previous bytes.
                self.regs[i][usize::from(self.control & 0x80 != 0)]
            }
        }
    }

    fn write(&mut self, reg: Reg, value: u8) {
        if matches!(self.kind, Kind::Floating | Kind::Empty) {
            return;
        }
        match reg {
            Reg::Status => self.command(value),
            Reg::Drive => self.drive = value,
            Reg::Data => self.protocol_errors += 1,
            r => {
                let i = r as usize;
                self.regs[i] = [value, self.regs[i][0]];
            }
        }
    }

    fn read_sector(&mut self, buf: &mut [u8; SECTOR]) {
        if self.status() & (BSY | DRQ) != DRQ {
            self.protocol_errors += 1;
            buf.fill(0xff);
            return;
        }
        if let Some(id) = self.identify.take() {
            *buf = id;
            self.status = DRDY;
            return;
        }
        match self.xfer {
            Some(x) if !x.write => {
                match self.at(x.lba) {
                    Some(at) => buf.copy_from_slice(&self.disk[at..at + SECTOR]),
                    None => buf.fill(0),
                }
                self.next_sector();
            }
            _ => {
                self.protocol_errors += 1;
                buf.fill(0xff);
            }
        }
    }

    fn write_sector(&mut self, buf: &[u8; SECTOR]) {
        if self.status() & (BSY | DRQ) != DRQ {
            self.protocol_errors += 1;
            return;
        }
        match self.xfer {
            Some(x) if x.write => {
                if self.bad_sector == Some(x.lba) {
                    self.fail(UNC);
                    return;
                }
                if let Some(at) = self.at(x.lba) {
                    self.disk[at..at + SECTOR].copy_from_slice(buf);
                }
                self.next_sector();
            }
            _ => self.protocol_errors += 1,
        }
    }

    fn alt_status(&mut self) -> u8 {
        match self.kind {
            Kind::Floating => 0xff,
            Kind::Empty => 0,
            _ if self.busy > 0 || self.stuck() => BSY,
            _ => self.status,
        }
    }

    fn control(&mut self, value: u8) {
        self.control = value;
    }

    fn now(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

/// The first sector of the partition [`fat_image`] makes (as `cargo xtask disk` does: 1 MiB).
pub const PARTITION_START: usize = 2048;

/// A disk with an MBR whose one partition (type `partition_type`) holds a FAT volume of `fat`
/// type and `sectors` sectors, made by the `fatfs` crate (another FAT implementation than the
/// one dom0 reads with), with `dirs` created and then `files` written.
pub fn fat_image(
    fat: fatfs::FatType,
    partition_type: u8,
    sectors: u32,
    dirs: &[&str],
    files: &[(&str, &[u8])],
) -> Vec<u8> {
    use std::io::Write;
    let mut disk = std::vec![0u8; (PARTITION_START + sectors as usize) * SECTOR];
    let entry = &mut disk[446..462];
    entry[4] = partition_type;
    entry[8..12].copy_from_slice(&(PARTITION_START as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xaa;
    let part = &mut disk[PARTITION_START * SECTOR..];
    let options = fatfs::FormatVolumeOptions::new()
        .fat_type(fat)
        .bytes_per_cluster(512)
        .total_sectors(sectors)
        .volume_label(*b"MICROHVTEST");
    fatfs::format_volume(std::io::Cursor::new(&mut *part), options).expect("format");
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(&mut *part), fatfs::FsOptions::new())
        .expect("mount");
    let root = fs.root_dir();
    for d in dirs {
        root.create_dir(d).expect("mkdir");
    }
    for (path, data) in files {
        root.create_file(path).expect("create").write_all(data).expect("write");
    }
    drop(root);
    fs.unmount().expect("unmount");
    disk
}
