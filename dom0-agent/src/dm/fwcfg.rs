//! QEMU's fw_cfg interface as the `pc` machine offers it (QEMU's `docs/specs/fw_cfg.rst`), for
//! firmware and guests that look for it: a 16-bit write to the selector port
//! ([`FW_CFG_SELECTOR`]) picks an item and rewinds it, 8-bit reads of the data port
//! ([`FW_CFG_DATA`]) return its bytes in turn, and reads past an item's end return 0.
//!
//! Only the traditional interface: the ID item leaves bit 1 (DMA) clear, so nobody looks for
//! the DMA address register at 0x514, which stays unclaimed. The items are those the platform
//! knows from the domain's RAM and vCPU count: the signature, ID, UUID (zero), RAM size,
//! "nographic", the CPU counts, and a file directory with one file, `etc/e820`: the memory map
//! the PVH start info gives ([`abi::pvh::memmap`]), in QEMU's 20-byte E820 entries. Every other
//! selector (kernel, initrd and command-line items, the arch-local items from 0x8000) selects
//! an empty item. Items are rendered a byte at a time from (RAM, vCPUs), so nothing is stored.
//!
//! Access sizes follow QEMU's implementation of the port pair, where the size decides and not
//! the port: a 16-bit write at either port selects, an 8-bit read at either port reads data,
//! and an 8-bit write is a data write, which QEMU ignores since 2.4 and so do we (so an 8-bit
//! write to 0x510 does not select, as on QEMU). The write-channel bit (0x4000) of a selector is
//! ignored for reads, as QEMU does. QEMU rejects other sizes: such writes do nothing, such
//! reads return all-ones and do not advance.

pub use abi::platform::{FW_CFG_DATA, FW_CFG_SELECTOR};
use abi::pvh::memmap;

const SIGNATURE: u16 = 0x00;
const ID: u16 = 0x01;
const UUID: u16 = 0x02;
const RAM_SIZE: u16 = 0x03;
const NOGRAPHIC: u16 = 0x04;
const NB_CPUS: u16 = 0x05;
const MAX_CPUS: u16 = 0x0f;
const FILE_DIR: u16 = 0x19;
/// The first file selector, given to our only file.
const E820: u16 = 0x20;
const E820_NAME: &[u8] = b"etc/e820";
/// One E820 entry: address and length (u64), type (u32), little-endian.
const E820_ENTRY: u32 = 20;
/// The selector's write-channel bit.
const WRITE: u16 = 0x4000;
/// The ID: traditional interface (bit 0), no DMA (bit 1).
const FEATURES: u64 = 1;

/// The fw_cfg device of one domain.
#[derive(Debug, Clone)]
pub struct FwCfg {
    ram: u64,
    cpus: u16,
    /// The selected item, as written (write-channel bit included).
    key: u16,
    /// The next byte of it to read.
    offset: u32,
}

impl FwCfg {
    /// The device for a domain with `ram` bytes of RAM and `vcpus` vCPUs, with the signature
    /// selected (as QEMU's reset leaves it).
    pub fn new(ram: u64, vcpus: usize) -> Self {
        let cpus = u16::try_from(vcpus).unwrap_or(u16::MAX);
        FwCfg { ram, cpus, key: SIGNATURE, offset: 0 }
    }

    /// Whether `port` belongs to this device.
    pub const fn claims(port: u16) -> bool {
        port == FW_CFG_SELECTOR || port == FW_CFG_DATA
    }

    /// An IN of `size` bytes at either port: the next byte of the selected item.
    pub fn read(&mut self, size: u8) -> u32 {
        if size != 1 {
            return u32::MAX;
        }
        let b = self.byte(self.key & !WRITE, self.offset);
        // Saturating: a guest that reads 4 GiB of an item keeps reading zeros.
        self.offset = self.offset.saturating_add(1);
        b.into()
    }

    /// An OUT of `size` bytes of `value` at either port: a 16-bit write selects.
    pub fn write(&mut self, size: u8, value: u32) {
        if size == 2 {
            (self.key, self.offset) = (value as u16, 0);
        }
    }

    /// Byte `off` of item `key` (0 past its end).
    fn byte(&self, key: u16, off: u32) -> u8 {
        match key {
            SIGNATURE => at(b"QEMU", off),
            ID => le(FEATURES, 4, off),
            UUID => 0,
            RAM_SIZE => le(self.ram, 8, off),
            NOGRAPHIC => le(1, 2, off),
            NB_CPUS | MAX_CPUS => le(self.cpus.into(), 2, off),
            FILE_DIR => self.dir_byte(off),
            E820 => self.e820_byte(off),
            _ => 0,
        }
    }

    /// The file directory: a big-endian count, then per file its size (u32), selector (u16),
    /// a reserved u16 and a 56-byte NUL-padded name, all big-endian.
    fn dir_byte(&self, off: u32) -> u8 {
        let Some(o) = off.checked_sub(4) else { return be(1, 4, off) };
        match o {
            0..4 => be(u64::from(E820_ENTRY) * memmap(self.ram).len() as u64, 4, o),
            4..6 => be(E820.into(), 2, o - 4),
            6..8 => 0,
            // The name and its padding; past the one entry, the end of the item.
            _ => at(E820_NAME, o - 8),
        }
    }

    /// `etc/e820`: the start info's memory map as E820 entries.
    fn e820_byte(&self, off: u32) -> u8 {
        let map = memmap(self.ram);
        let (i, f) = (off / E820_ENTRY, off % E820_ENTRY);
        let Some(e) = usize::try_from(i).ok().and_then(|i| map.get(i)) else { return 0 };
        match f {
            0..8 => le(e.addr, 8, f),
            8..16 => le(e.size, 8, f - 8),
            _ => le(e.kind.into(), 4, f - 16),
        }
    }
}

/// Byte `off` of `bytes`, 0 past the end.
fn at(bytes: &[u8], off: u32) -> u8 {
    usize::try_from(off).ok().and_then(|i| bytes.get(i)).copied().unwrap_or(0)
}

/// Byte `off` of the `n`-byte little-endian `v`, 0 past the end.
fn le(v: u64, n: u32, off: u32) -> u8 {
    if off < n { (v >> (8 * off)) as u8 } else { 0 }
}

/// Byte `off` of the `n`-byte big-endian `v`, 0 past the end.
fn be(v: u64, n: u32, off: u32) -> u8 {
    if off < n { (v >> (8 * (n - 1 - off))) as u8 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::pvh::{HIGH_RAM, LEGACY_HOLE, MEMMAP_RAM};
    use proptest::prelude::*;
    use std::vec::Vec;

    /// Selects `key` and reads `n` bytes.
    fn item(f: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        f.write(2, key.into());
        (0..n).map(|_| f.read(1) as u8).collect()
    }

    fn u64_le(b: &[u8]) -> u64 {
        b.iter().rev().fold(0, |v, b| v << 8 | u64::from(*b))
    }

    fn u32_be(b: &[u8]) -> u32 {
        b.iter().fold(0, |v, b| v << 8 | u32::from(*b))
    }

    #[test]
    fn signature_id_and_uuid() {
        let mut f = FwCfg::new(64 << 20, 1);
        assert_eq!((0..4).map(|_| f.read(1) as u8).collect::<Vec<_>>(), b"QEMU", "at reset");
        assert_eq!(item(&mut f, SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(item(&mut f, ID, 4), [1, 0, 0, 0], "traditional interface, no DMA");
        assert_eq!(item(&mut f, UUID, 17), [0; 17]);
        assert_eq!(item(&mut f, NOGRAPHIC, 3), [1, 0, 0]);
    }

    #[test]
    fn ram_size_and_cpu_counts() {
        let mut f = FwCfg::new(0x1_2345_6000, 3);
        assert_eq!(u64_le(&item(&mut f, RAM_SIZE, 8)), 0x1_2345_6000);
        assert_eq!(item(&mut f, NB_CPUS, 3), [3, 0, 0]);
        assert_eq!(item(&mut f, MAX_CPUS, 2), [3, 0]);
    }

    #[test]
    fn file_directory_leads_to_an_e820_matching_the_start_info() {
        let ram = 256 << 20;
        let mut f = FwCfg::new(ram, 1);
        let dir = item(&mut f, FILE_DIR, 4 + 64 + 4);
        assert_eq!(u32_be(&dir[..4]), 1);
        let (size, select) = (u32_be(&dir[4..8]), u32_be(&dir[8..10]) as u16);
        assert_eq!((select, &dir[10..12]), (0x20, &[0, 0][..]));
        assert_eq!(&dir[12..20], b"etc/e820");
        assert!(dir[20..].iter().all(|b| *b == 0), "NUL padding, then the end");
        assert_eq!(size % 20, 0);
        let e820 = item(&mut f, select, size as usize + 20);
        let entries: Vec<_> = e820[..size as usize]
            .chunks(20)
            .map(|e| (u64_le(&e[..8]), u64_le(&e[8..16]), u64_le(&e[16..])))
            .collect();
        let pvh: Vec<_> = memmap(ram).iter().map(|e| (e.addr, e.size, u64::from(e.kind))).collect();
        assert_eq!(entries, pvh);
        let ram_ranges: Vec<_> = entries
            .iter()
            .filter(|e| e.2 == u64::from(MEMMAP_RAM))
            .map(|e| (e.0, e.0 + e.1))
            .collect();
        assert_eq!(ram_ranges.last(), Some(&(HIGH_RAM, ram)), "RAM up to the domain's size");
        assert!(ram_ranges.iter().all(|r| r.1 <= LEGACY_HOLE || r.0 >= HIGH_RAM), "the hole");
        assert!(e820[size as usize..].iter().all(|b| *b == 0), "reads past the end give 0");
    }

    #[test]
    fn reselecting_rewinds_and_unknown_selectors_are_empty() {
        let mut f = FwCfg::new(64 << 20, 1);
        assert_eq!(item(&mut f, SIGNATURE, 2), b"QE");
        assert_eq!(item(&mut f, SIGNATURE, 4), b"QEMU", "rewound");
        for key in [0x06, 0x07, 0x21, 0x3fff, 0x8000, 0x8003, 0xffff] {
            assert_eq!(item(&mut f, key, 8), [0; 8], "{key:#x}");
        }
    }

    #[test]
    fn write_channel_data_writes_and_odd_sizes() {
        let mut f = FwCfg::new(64 << 20, 1);
        // Reads ignore the write bit; data writes (8-bit, at either port) are ignored.
        f.write(2, u32::from(WRITE | SIGNATURE));
        f.write(1, 0x55);
        assert_eq!(f.read(1), u32::from(b'Q'));
        f.write(1, u32::from(ID));
        assert_eq!(f.read(1), u32::from(b'E'), "an 8-bit write does not select");
        assert_eq!((f.read(2), f.read(4)), (u32::MAX, u32::MAX));
        assert_eq!(f.read(1), u32::from(b'M'), "wide reads do not advance");
        f.write(4, u32::from(ID));
        assert_eq!(f.read(1), u32::from(b'U'), "a 32-bit write does not select");
    }

    proptest! {
        #[test]
        fn any_access_sequence_is_safe(
            ram in any::<u64>(), cpus in any::<usize>(),
            ops in proptest::collection::vec((any::<u8>(), any::<u32>(), any::<bool>()), 0..200),
        ) {
            let mut f = FwCfg::new(ram, cpus);
            for (size, value, w) in ops {
                if w { f.write(size, value) } else { f.read(size); }
            }
            f.offset = u32::MAX;
            for key in [FILE_DIR, E820, SIGNATURE, RAM_SIZE] {
                f.key = key;
                prop_assert_eq!(f.read(1), 0);
            }
        }
    }
}
