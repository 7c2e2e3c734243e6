//! Where the virtual PC's devices are, as every domU sees them: the one description shared by
//! microhv's device models (`microhv/core/src/dev/`) and the ACPI tables dom0's builder makes
//! for a domain (`dom0-agent/src/acpi.rs`), so the two cannot drift apart.

/// The local APIC page (its default base).
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// The I/O APIC's register window.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The HPET's register block.
pub const HPET_BASE: u64 = 0xfed0_0000;
/// The ACPI PM I/O block: PM1a event block here, PM1a control block at +4, PM timer at +8.
pub const PM_BASE: u16 = 0x600;
/// PM1a event block (status, enable).
pub const PM1A_EVT_BLK: u16 = PM_BASE;
/// PM1a control block.
pub const PM1A_CNT_BLK: u16 = PM_BASE + 4;
/// The PM timer.
pub const PM_TMR_BLK: u16 = PM_BASE + 8;
/// The ISA interrupt of the ACPI SCI (level-triggered, active high).
pub const SCI_IRQ: u32 = 9;
/// SLP_TYP of S5 (soft off) in PM1a_CNT, as `\_S5` declares it.
pub const SLP_TYP_S5: u8 = 7;
/// The reset control register (0xCF9); writing [`RESET_VALUE`] resets the machine.
pub const RESET_PORT: u16 = 0xcf9;
/// What the ACPI reset register writes: a CPU reset (bit 2) with a system reset (bit 1).
pub const RESET_VALUE: u8 = 0x06;
/// The CMOS index of the century byte.
pub const CMOS_CENTURY: u8 = 0x32;
/// QEMU's fw_cfg selector port (a 16-bit write selects an item).
pub const FW_CFG_SELECTOR: u16 = 0x510;
/// QEMU's fw_cfg data port (8-bit reads return the selected item's bytes in turn). The DMA
/// address register QEMU may put at 0x514 is not offered: the ID item says so.
pub const FW_CFG_DATA: u16 = 0x511;
