//! Where the virtual PC's devices are, as every domU sees them: the one description shared by
//! microhv's device models (`microhv/core/src/dev/`), dom0's (`dom0-agent/src/dm/`, the ports of
//! [`DM_PORTS`]) and the ACPI tables dom0's builder makes for a domain
//! (`dom0-agent/src/acpi.rs`), so they cannot drift apart; and the two interfaces every device
//! model on either side is written against, [`Clock`] and [`IrqSink`].

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
/// The ports dom0 serves for a domain created with `DOMCREATE_DEVICE_MODEL` (inclusive ranges;
/// an access is dom0's when all its bytes fall in one range): the keyboard controller's data and
/// status / command ports, the RTC and CMOS, system control port A (0x92: fast A20, reset),
/// fw_cfg, and PCI configuration mechanism #1 with the reset control register (0xCF8–0xCFF).
pub const DM_PORTS: [(u16, u16); 6] =
    [(0x60, 0x60), (0x64, 0x64), (0x70, 0x71), (0x92, 0x92), (0x510, 0x511), (0xcf8, 0xcff)];
/// True if dom0 serves an access of `size` bytes at `port` (see [`DM_PORTS`]).
pub fn dm_access(port: u16, size: u8) -> bool {
    let last = u32::from(port) + u32::from(size.max(1)) - 1;
    DM_PORTS.iter().any(|&(lo, hi)| lo <= port && last <= u32::from(hi))
}
/// The interrupt lines dom0's device models drive with `IrqLevel` (a bit per GSI): the
/// keyboard's (1), the RTC's (8) and the mouse's (12). Lines microhv's own devices drive are
/// not among them.
pub const DM_GSIS: u32 = (1 << 1) | (1 << 8) | (1 << 12);
/// The RTC's line.
pub const RTC_GSI: u32 = 8;

/// Time as the device models see it: the host TSC and its frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// The TSC now.
    pub now: u64,
    /// TSC ticks per millisecond.
    pub tsc_khz: u64,
}

impl Clock {
    /// Ticks of a `hz` clock in the TSC interval `[since, self.now)` (0 if `since` is later).
    pub fn device_ticks(&self, since: u64, hz: u64) -> u64 {
        let elapsed = self.now.saturating_sub(since);
        let t = u128::from(elapsed) * u128::from(hz) / (u128::from(self.tsc_khz.max(1)) * 1000);
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// The TSC value at which `ticks` ticks of a `hz` clock will have passed since `since`
    /// (rounded up, so a deadline is never early).
    pub fn tsc_after(&self, since: u64, ticks: u64, hz: u64) -> u64 {
        let num = u128::from(ticks) * u128::from(self.tsc_khz.max(1)) * 1000;
        let d = num.div_ceil(u128::from(hz.max(1)));
        since.saturating_add(u64::try_from(d).unwrap_or(u64::MAX))
    }
}

/// Where devices raise interrupts: global system interrupt (GSI) lines, numbered as the I/O
/// APIC's pins (ISA IRQ n is GSI n, except where an interrupt source override says otherwise).
pub trait IrqSink {
    /// Drives line `gsi` to `high`.
    fn set_level(&mut self, gsi: u32, high: bool);
    /// An edge: the line goes high, then low.
    fn pulse(&mut self, gsi: u32) {
        self.set_level(gsi, true);
        self.set_level(gsi, false);
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;

    #[test]
    fn device_ticks_round_down_and_deadlines_round_up() {
        // A 3 GHz TSC and the PIT's 1.193182 MHz.
        let c = Clock { now: 3_000_000_000, tsc_khz: 3_000_000 };
        assert_eq!(c.device_ticks(0, 1_193_182), 1_193_182);
        assert_eq!(c.device_ticks(c.now + 1, 1_193_182), 0);
        let at = c.tsc_after(0, 1, 1_193_182);
        assert_eq!(at, 2515); // 3e9 / 1193182 = 2514.3
        assert_eq!(Clock { now: at, ..c }.device_ticks(0, 1_193_182), 1);
        assert_eq!(Clock { now: at - 1, ..c }.device_ticks(0, 1_193_182), 0);
    }
}
