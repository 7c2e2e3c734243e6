//! The ATA driver against the simulated drive: what it finds on each kind of channel, reads and
//! writes at both LBA widths, and each way a drive can fail it (bounded, with a defined error).

use super::ata::{
    Absent, Ata, CMD_FLUSH, CMD_FLUSH_EXT, CMD_IDENTIFY, CMD_READ, CMD_READ_EXT, CMD_READ_MULTIPLE,
    CMD_READ_MULTIPLE_EXT, CMD_SET_MULTIPLE, CMD_WRITE, CMD_WRITE_EXT, CMD_WRITE_MULTIPLE, DRDY,
    ERR, LBA28_LIMIT, SECTOR, parse_identify,
};
use super::fake::{FakeDrive, IDNF, Kind, UNC};
use super::{Disk, Sectors};
use abi::proto::DiskError;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

/// Ticks a wait may last in these tests (the fake's clock moves one per port access).
const TIMEOUT: u64 = 10_000;

/// A disk of `sectors` sectors, each filled with bytes derived from its number.
fn patterned(sectors: usize) -> Vec<u8> {
    (0..sectors * SECTOR).map(|i| ((i / SECTOR) as u8).wrapping_mul(31) ^ (i as u8)).collect()
}

#[test]
fn probe_identifies_the_master_and_turns_its_interrupt_off() {
    let mut d = FakeDrive::new(patterned(64));
    let ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    let id = ata.identity().clone();
    assert_eq!(id.model.as_str(), "FAKE ATA DISK");
    assert_eq!((id.sectors, id.lba48, id.multiple), (64, true, 16));
    drop(ata);
    assert!(d.interrupts_off(), "nIEN set: the driver polls");
    assert_eq!(d.commands, [(CMD_IDENTIFY, 0, 0), (CMD_SET_MULTIPLE, 0, 0)]);
    assert_eq!(d.multiple, 16);
    assert_eq!(d.protocol_errors, 0);
    // Without 48-bit LBA the sector count comes from words 60-61.
    let mut d = FakeDrive { lba48: false, ..FakeDrive::new(patterned(8)) };
    let id = Ata::probe(&mut d, TIMEOUT).expect("a disk").identity().clone();
    assert_eq!((id.sectors, id.lba48), (8, false));
    // Multiple mode: the largest power of two word 47 allows, none without it, and one
    // sector per data request where the drive refuses it.
    for (max, refuse, want) in [(12, false, 8), (1, false, 1), (0, false, 1), (16, true, 1)] {
        let mut d = FakeDrive {
            max_multiple: max,
            refuse_multiple: refuse,
            ..FakeDrive::new(patterned(8))
        };
        let id = Ata::probe(&mut d, TIMEOUT).expect("a disk").identity().clone();
        assert_eq!(id.multiple, want, "word 47 = {max}, refused: {refuse}");
    }
}

#[test]
fn channels_without_an_ata_disk_say_why() {
    let absent = |kind| Ata::probe(FakeDrive::of(kind), TIMEOUT).err();
    assert_eq!(absent(Kind::Floating), Some(Absent::FloatingBus));
    assert_eq!(absent(Kind::Empty), Some(Absent::NoRegisters));
    assert_eq!(absent(Kind::Atapi), Some(Absent::NotAta { mid: 0x14, high: 0xeb }));
    // A drive that stays busy after IDENTIFY is given up on, not waited for.
    let d = FakeDrive { stuck_after: Some(0), ..FakeDrive::new(patterned(8)) };
    assert_eq!(Ata::probe(d, TIMEOUT).err(), Some(Absent::Failed(DiskError::Timeout)));
}

#[test]
fn identify_without_lba_or_sectors_is_no_disk() {
    let mut id = [0u8; SECTOR];
    assert!(parse_identify(&id).is_none(), "word 49 bit 9 clear: CHS only");
    id[98..100].copy_from_slice(&(1u16 << 9).to_le_bytes());
    assert!(parse_identify(&id).is_none(), "no sectors");
    id[120..122].copy_from_slice(&100u16.to_le_bytes());
    let got = parse_identify(&id).expect("LBA28 drive");
    assert_eq!((got.sectors, got.lba48, got.model.as_str()), (100, false, ""));
}

#[test]
fn reads_and_writes_split_into_commands_of_256_sectors() {
    let disk = patterned(600);
    let mut d = FakeDrive { max_multiple: 0, ..FakeDrive::new(disk.clone()) };
    let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    let mut buf = vec![0u8; 300 * SECTOR];
    ata.read(10, &mut buf).expect("read");
    assert_eq!(buf, disk[10 * SECTOR..310 * SECTOR]);
    let data: Vec<u8> = (0..257 * SECTOR).map(|i| (i * 7) as u8).collect();
    ata.write(300, &data).expect("write");
    drop(ata);
    assert_eq!(d.disk[300 * SECTOR..557 * SECTOR], data[..]);
    assert_eq!(d.disk[..300 * SECTOR], disk[..300 * SECTOR], "nothing else written");
    assert_eq!(
        d.commands[1..],
        [
            (CMD_READ, 10, 256),
            (CMD_READ, 266, 44),
            (CMD_WRITE, 300, 256),
            (CMD_WRITE, 556, 1),
            (CMD_FLUSH, 0, 0),
        ]
    );
    assert_eq!(d.protocol_errors, 0);
}

#[test]
fn multiple_mode_moves_a_block_per_data_request() {
    let disk = patterned(600);
    let mut d = FakeDrive::new(disk.clone());
    let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    // 40 sectors: blocks of 16, 16 and 8; 300: 256 and 44 (the last block 12).
    let mut buf = vec![0u8; 40 * SECTOR];
    ata.read(3, &mut buf).expect("read");
    assert_eq!(buf, disk[3 * SECTOR..43 * SECTOR]);
    let mut buf = vec![0u8; 300 * SECTOR];
    ata.read(100, &mut buf).expect("read");
    assert_eq!(buf, disk[100 * SECTOR..400 * SECTOR]);
    ata.write(7, &[0xa5; 20 * SECTOR]).expect("write");
    drop(ata);
    assert_eq!(d.disk[7 * SECTOR..27 * SECTOR], [0xa5; 20 * SECTOR]);
    assert_eq!(
        d.commands[2..],
        [
            (CMD_READ_MULTIPLE, 3, 40),
            (CMD_READ_MULTIPLE, 100, 256),
            (CMD_READ_MULTIPLE, 356, 44),
            (CMD_WRITE_MULTIPLE, 7, 20),
            (CMD_FLUSH, 0, 0),
        ]
    );
    assert_eq!(d.protocol_errors, 0, "data moved only while DRQ was set");
    // A bad sector in the second block: the error shows at that block's data request.
    let mut d = FakeDrive { bad_sector: Some(20), ..FakeDrive::new(disk.clone()) };
    let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    let mut buf = vec![0u8; 40 * SECTOR];
    let got = ata.read(0, &mut buf);
    assert_eq!(got, Err(DiskError::Device { status: DRDY | ERR, error: UNC }));
    assert_eq!(buf[..16 * SECTOR], disk[..16 * SECTOR], "the first block arrived");
    drop(ata);
    assert_eq!(d.protocol_errors, 0);
    // Beyond 2^28 sectors: READ MULTIPLE EXT.
    let base = LBA28_LIMIT - 16;
    let mut d = FakeDrive { base, ..FakeDrive::new(patterned(32)) };
    let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    let mut buf = vec![0u8; 20 * SECTOR];
    ata.read(LBA28_LIMIT - 10, &mut buf).expect("read");
    assert_eq!(buf, patterned(32)[6 * SECTOR..26 * SECTOR]);
    drop(ata);
    assert_eq!(d.commands.last(), Some(&(CMD_READ_MULTIPLE_EXT, LBA28_LIMIT - 10, 20)));
}

#[test]
fn the_48_bit_commands_are_used_only_past_2_to_the_28_sectors() {
    // A drive of 2^28 + 16 sectors whose last 32 are held in memory.
    let base = LBA28_LIMIT - 16;
    let mut d = FakeDrive { base, max_multiple: 0, ..FakeDrive::new(patterned(32)) };
    let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    assert_eq!(ata.identity().sectors, LBA28_LIMIT + 16);
    let mut buf = vec![0u8; 8 * SECTOR];
    ata.read(LBA28_LIMIT - 8, &mut buf).expect("ends at the limit: 28-bit");
    ata.read(LBA28_LIMIT - 4, &mut buf).expect("crosses it: 48-bit");
    let want = patterned(32);
    assert_eq!(buf, want[12 * SECTOR..20 * SECTOR]);
    ata.write(LBA28_LIMIT + 8, &[0x5a; 2 * SECTOR]).expect("48-bit write");
    drop(ata);
    assert_eq!(
        d.commands[1..],
        [
            (CMD_READ, LBA28_LIMIT - 8, 8),
            (CMD_READ_EXT, LBA28_LIMIT - 4, 8),
            (CMD_WRITE_EXT, LBA28_LIMIT + 8, 2),
            (CMD_FLUSH_EXT, 0, 0),
        ]
    );
    assert_eq!(d.disk[24 * SECTOR..26 * SECTOR], [0x5a; 2 * SECTOR]);
    // The same range on a drive without 48-bit LBA is refused before any command.
    let mut d = FakeDrive { base, lba48: false, ..FakeDrive::new(patterned(32)) };
    let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    // Its words 60-61 cap it below 2^28.
    assert_eq!(ata.identity().sectors, LBA28_LIMIT - 1);
    assert_eq!(ata.read(LBA28_LIMIT - 4, &mut buf), Err(DiskError::OutOfRange));
}

#[test]
fn transfers_outside_the_disk_or_of_partial_sectors_are_refused_before_any_command() {
    let mut d = FakeDrive::new(patterned(16));
    let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    let mut buf = vec![0u8; 2 * SECTOR];
    assert_eq!(ata.read(15, &mut buf), Err(DiskError::OutOfRange));
    assert_eq!(ata.read(u64::MAX, &mut buf), Err(DiskError::OutOfRange));
    assert_eq!(ata.read(0, &mut buf[..100]), Err(DiskError::OutOfRange));
    assert_eq!(ata.write(16, &buf), Err(DiskError::OutOfRange));
    ata.read(14, &mut buf).expect("the last two sectors");
    drop(ata);
    assert_eq!(d.commands.len(), 3, "IDENTIFY, SET MULTIPLE MODE and the one good read");
}

#[test]
fn drive_errors_and_silences_are_reported() {
    let mut buf = vec![0u8; 4 * SECTOR];
    let unc = Err(DiskError::Device { status: DRDY | ERR, error: UNC });
    // A sector the drive cannot read, as the first or a later one of a command.
    for bad in [5, 7] {
        let mut d = FakeDrive { bad_sector: Some(bad), ..FakeDrive::new(patterned(16)) };
        let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
        assert_eq!(ata.read(5, &mut buf), unc);
        // The drive recovers: the next command works.
        assert_eq!(ata.read(0, &mut buf[..SECTOR]), Ok(()));
    }
    let mut d = FakeDrive { bad_sector: Some(2), ..FakeDrive::new(patterned(16)) };
    let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    assert_eq!(ata.write(1, &buf), unc);
    // A drive that claims more sectors than it has refuses the rest itself.
    let mut d = FakeDrive { claims: Some(16), ..FakeDrive::new(patterned(8)) };
    let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    assert_eq!(ata.read(6, &mut buf), Err(DiskError::Device { status: DRDY | ERR, error: IDNF }));
    assert_eq!(ata.read(4, &mut buf), Ok(()));
    // A drive that stops answering after IDENTIFY, or never offers the data: a timeout, after
    // a bounded wait.
    let mut d = FakeDrive { stuck_after: Some(2), ..FakeDrive::new(patterned(16)) };
    let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    assert_eq!(ata.read(0, &mut buf), Err(DiskError::Timeout));
    assert_eq!(ata.write(0, &buf), Err(DiskError::Timeout));
    drop(ata);
    assert!(d.ticks() < 3 * TIMEOUT, "each wait ended at its bound: {}", d.ticks());
    let mut d = FakeDrive { no_data: true, ..FakeDrive::new(patterned(16)) };
    let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
    assert_eq!(ata.read(0, &mut buf), Err(DiskError::Timeout));
    drop(ata);
    assert!(d.ticks() < 2 * TIMEOUT, "the wait ended at its bound: {}", d.ticks());
}

#[test]
fn the_disk_shares_the_driver_as_sectors() {
    let disk = Disk::probe(FakeDrive::new(patterned(32)), TIMEOUT).expect("a disk");
    assert_eq!(disk.sectors(), 32);
    assert_eq!(disk.identity().model.as_str(), "FAKE ATA DISK");
    let mut buf = [0u8; SECTOR];
    disk.read(3, &mut buf).expect("read");
    assert_eq!(buf[..], patterned(32)[3 * SECTOR..4 * SECTOR]);
    disk.write(3, &[9; SECTOR]).expect("write");
    disk.read(3, &mut buf).expect("read back");
    assert_eq!(buf, [9; SECTOR]);
}

proptest! {
    #[test]
    fn random_transfers_match_a_plain_copy(
        ops in proptest::collection::vec((any::<bool>(), 0u64..80, 1usize..300, any::<u8>()), 1..12),
        latency in 0u32..5,
        max_multiple in proptest::sample::select(vec![0u8, 2, 3, 16, 128]),
    ) {
        let mut model = patterned(340);
        let mut d = FakeDrive { latency, max_multiple, ..FakeDrive::new(model.clone()) };
        let mut ata = Ata::probe(&mut d, TIMEOUT).expect("a disk");
        for (write, lba, n, fill) in ops {
            let range = lba as usize * SECTOR..(lba as usize + n) * SECTOR;
            let fits = range.end <= model.len();
            if write {
                let data = vec![fill; n * SECTOR];
                let got = ata.write(lba, &data);
                prop_assert_eq!(got.is_ok(), fits);
                if fits {
                    model[range].copy_from_slice(&data);
                }
            } else {
                let mut buf = vec![0u8; n * SECTOR];
                let got = ata.read(lba, &mut buf);
                prop_assert_eq!(got.is_ok(), fits);
                if fits {
                    prop_assert_eq!(&buf[..], &model[range]);
                }
            }
        }
        drop(ata);
        prop_assert_eq!(&d.disk, &model);
        prop_assert_eq!(d.protocol_errors, 0);
    }
}
