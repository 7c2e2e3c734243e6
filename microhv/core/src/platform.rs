//! A domain's virtual PC: its device models (`dev/`), the wires between them, and the dispatch
//! of port and MMIO accesses to them.
//!
//! Wiring, as on a PC with an I/O APIC (and as the ACPI tables dom0 builds will describe it):
//! ISA IRQ n drives 8259 input n and I/O APIC pin n, except IRQ 0 (the PIT, or HPET timer 0 in
//! legacy replacement), which reaches pin 2 (the usual interrupt source override); the slave
//! 8259 cascades on master input 2. GSIs 16–23 exist only on the I/O APIC. I/O APIC messages
//! and IPIs go to the local APICs of the domain's vCPUs whose destination matches; the 8259's
//! INTR reaches vCPU 0 through LINT0 (virtual-wire mode) or while its local APIC is disabled.
//!
//! Time is the host TSC ([`Clock`]); each device reports when it next needs to run, and
//! [`Platform::deadline`] keeps the earliest, so the run loop can bound a vCPU's time slice
//! and wake halted vCPUs without polling every device on every exit.

use crate::dev::fwcfg::FwCfg;
use crate::dev::hpet::{HPET_BASE, HPET_LEN, Hpet};
use crate::dev::ioapic::{ApicBus, IOAPIC_BASE, IOAPIC_SIZE, IoApic, IoApicMsg};
use crate::dev::lapic::{
    ApicEffect, DeliveryMode, Gp, IpiRequest, Lapic, LapicConfig, MSR_TSC_DEADLINE as TSC_DEADLINE,
};
use crate::dev::pic::{PIC_ELCR, PIC_MASTER, PIC_SLAVE, Pic};
use crate::dev::pit::Pit;
use crate::dev::pmtimer::{PmOutcome, PmTimer};
use crate::dev::rtc::Rtc;
use crate::dev::uart::{COM1_IRQ, Uart, UartOut};
use crate::dev::{Clock, IrqSink};
use crate::domain::VCPUS;

/// What a port write did besides changing device state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortEffect {
    /// ACPI S5 through PM1a_CNT.
    PowerOff,
    /// A reset through port 0x92, 0xCF9 or the keyboard controller.
    Reset,
    /// A byte COM1 transmitted (for the domain's console).
    Console(u8),
}

/// An MMIO page the platform emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioPage {
    /// The local APIC page of the accessing vCPU.
    Lapic,
    /// The I/O APIC.
    IoApic,
    /// The HPET.
    Hpet,
}

/// An interrupt ready for a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// From the local APIC.
    Apic(u8),
    /// From the 8259 (its vector is known only once acknowledged).
    Pic,
}

/// PCI configuration mechanism #1 with one device: an Intel 440FX host bridge at 00:00.0.
#[derive(Debug, Clone, Copy, Default)]
struct PciConfig {
    address: u32,
}

/// The bits of CONFIG_ADDRESS (0xCF8) a host bridge keeps: enable, bus, device, function and
/// dword register. The PCI specification makes bits 30–24 and 1–0 read-only zero, so a kernel
/// that writes all ones and reads back (a common probe for mechanism #1) sees `0x80FFFFFC`.
const CONFIG_ADDRESS_BITS: u32 = 0x80ff_fffc;

impl PciConfig {
    fn read(&self, port: u16, size: u8) -> u32 {
        let a = self.address;
        // Enabled, bus 0, device 0, function 0.
        let dword = if a & 0x8000_0000 != 0 && a & 0x00ff_ff00 == 0 {
            match a & 0xfc {
                0x00 => 0x1237_8086,
                0x08 => 0x0600_0002, // host bridge, revision 2
                _ => 0,
            }
        } else {
            u32::MAX
        };
        let shift = 8 * u32::from(port & 3);
        let mask = if size >= 4 { u32::MAX } else { (1u32 << (8 * u32::from(size))) - 1 };
        (dword >> shift) & mask
    }
}

/// The devices of one domain.
#[derive(Debug, Clone)]
pub struct Platform {
    /// One local APIC per vCPU.
    pub lapics: [Lapic; VCPUS],
    /// How many of `lapics` belong to vCPUs.
    pub vcpus: usize,
    /// The I/O APIC.
    pub ioapic: IoApic,
    /// The 8259 pair.
    pub pic: Pic,
    /// The 8254.
    pub pit: Pit,
    /// The ACPI PM timer and PM1 blocks.
    pub pm: PmTimer,
    /// The HPET.
    pub hpet: Hpet,
    /// The RTC and CMOS.
    pub rtc: Rtc,
    /// COM1, the domain's console.
    pub com1: Uart,
    /// QEMU's fw_cfg.
    pub fwcfg: FwCfg,
    pci: PciConfig,
    /// Earliest TSC at which a device must run (`u64::MAX`: none).
    pub deadline: u64,
    /// vCPUs (a bit each) whose deliverable interrupts may have changed since their last entry
    /// looked: the entry path searches IRR, PPR and the 8259 only for these (every method that
    /// changes device state sets them all, in [`Platform::refresh`]).
    pub search: u32,
}

/// The GSI lines: the 8259 pair and the I/O APIC, which sends to the local APICs.
struct Wires<'a> {
    pic: &'a mut Pic,
    ioapic: &'a mut IoApic,
    bus: Bus<'a>,
}

impl IrqSink for Wires<'_> {
    fn set_level(&mut self, gsi: u32, high: bool) {
        if gsi < 16 && gsi != 2 {
            self.pic.set_level(gsi, high);
        }
        let pin = if gsi == 0 { 2 } else { gsi };
        self.ioapic.set_level(pin, high, &mut self.bus);
    }
}

/// The local APICs, as the I/O APIC's and the IPIs' destination.
struct Bus<'a> {
    lapics: &'a mut [Lapic],
}

impl Bus<'_> {
    /// Delivers to every local APIC `to` selects; whether one accepted.
    fn send(
        &mut self,
        mode: DeliveryMode,
        vector: u8,
        level: bool,
        to: impl Fn(&Lapic) -> bool,
    ) -> bool {
        let mut taken = false;
        for l in self.lapics.iter_mut().filter(|l| to(l)) {
            taken |= match mode {
                // Lowest priority goes to every match: with one vCPU per destination in
                // practice, the same as arbitrating.
                DeliveryMode::Fixed | DeliveryMode::LowestPriority => l.accept(vector, level),
                DeliveryMode::Nmi => {
                    l.nmi();
                    true
                }
                // INIT / SIPI / SMI / ExtINT: vCPU start-up is not modelled yet (single vCPU).
                _ => false,
            };
        }
        taken
    }

    fn ipi(&mut self, req: IpiRequest) {
        self.send(req.mode, req.vector, req.level_triggered, |l| req.targets(l));
    }
}

impl ApicBus for Bus<'_> {
    fn deliver(&mut self, msg: IoApicMsg) -> bool {
        let (dest, logical) = (msg.dest_id(), msg.logical);
        self.send(msg.mode, msg.vector, msg.level_triggered, |l| l.matches(dest, logical))
    }
}

impl Platform {
    /// A PC at power-on for a domain with `vcpus` vCPUs and `ram` bytes of RAM, with the clock
    /// reading `unix_time` now.
    pub fn new(clock: &Clock, vcpus: usize, ram: u64, unix_time: u64) -> Self {
        let vcpus = vcpus.clamp(1, VCPUS);
        let below = ram.min(0xc000_0000);
        let mut p = Self {
            // x2APIC and the TSC-deadline timer are on, as CPUID says (`cpuid.rs`).
            lapics: core::array::from_fn(|i| {
                let bus_hz = crate::dev::lapic::bus_hz_for(clock.tsc_khz);
                Lapic::new(LapicConfig { bus_hz, ..LapicConfig::new(i as u32, i == 0) })
            }),
            vcpus,
            ioapic: IoApic::new(),
            pic: Pic::new(),
            pit: Pit::new(clock),
            pm: PmTimer::new(clock),
            hpet: Hpet::new(),
            rtc: Rtc::new(clock, unix_time, below, ram - below),
            com1: Uart::new(),
            fwcfg: FwCfg::new(ram, vcpus),
            pci: PciConfig::default(),
            deadline: u64::MAX,
            search: u32::MAX,
        };
        p.refresh(clock);
        p
    }

    /// Splits the borrows: the wires, and the devices that drive them.
    fn wires(&mut self) -> (Wires<'_>, &mut Pit, &mut PmTimer, &mut Hpet, &mut Rtc) {
        let n = self.vcpus;
        (
            Wires {
                pic: &mut self.pic,
                ioapic: &mut self.ioapic,
                bus: Bus { lapics: &mut self.lapics[..n] },
            },
            &mut self.pit,
            &mut self.pm,
            &mut self.hpet,
            &mut self.rtc,
        )
    }

    /// Recomputes [`Platform::deadline`] after a change (every method that changes device state
    /// ends here).
    pub fn refresh(&mut self, clock: &Clock) {
        self.search = u32::MAX;
        let lapics = self.lapics[..self.vcpus].iter().filter_map(|l| l.next_deadline(clock));
        // The PIT's channel 0 only needs its deadline for IRQ 0's edges; once one is latched in
        // the masked 8259 and the I/O APIC's pin is masked (an idle guest's usual state, the
        // PIT counting as firmware left it), the next edge is invisible: no exit for it. Its
        // counters are computed from the clock whenever they are read.
        // Under HPET legacy replacement its output is cut off altogether.
        let pin2_masked =
            self.ioapic.entry(2).is_some_and(|e| e & crate::dev::ioapic::RTE_MASKED != 0);
        let unseen = self.pic.holds_masked(0) && pin2_masked;
        let irq0_seen = !(self.hpet.legacy_replacement() || unseen);
        self.deadline = [
            self.pit.next_deadline(clock).filter(|_| irq0_seen),
            self.pm.next_deadline(clock),
            self.hpet.next_deadline(clock),
            self.rtc.next_deadline(clock),
        ]
        .into_iter()
        .flatten()
        .chain(lapics)
        .min()
        .unwrap_or(u64::MAX);
    }

    /// Lets every device catch up with `clock` (raising the interrupts that came due).
    pub fn update(&mut self, clock: &Clock) {
        for l in &mut self.lapics[..self.vcpus] {
            l.update_timer(clock);
        }
        let (mut w, pit, pm, hpet, rtc) = self.wires();
        // In legacy replacement the HPET drives IRQ 0 and 8; the PIT's and RTC's outputs are
        // cut off from the lines.
        let legacy = hpet.legacy_replacement();
        let mut cut = Cut;
        if legacy {
            pit.update(clock, &mut cut);
            rtc.update(clock, &mut cut);
        } else {
            pit.update(clock, &mut w);
            rtc.update(clock, &mut w);
        }
        pm.update(clock, &mut w);
        hpet.update(clock, &mut w);
        self.refresh(clock);
    }

    /// An IN of `size` bytes, if a platform device has `port`.
    pub fn port_read(&mut self, clock: &Clock, port: u16, size: u8) -> Option<u32> {
        let v = match port {
            PIC_MASTER | 0x21 | PIC_SLAVE | 0xa1 | PIC_ELCR | 0x4d1 => {
                u32::from(self.pic.read(port).unwrap_or(0xff))
            }
            p if Pit::claims(p) => {
                let (mut w, pit, ..) = self.wires();
                pit.read(clock, &mut w, port, size)
            }
            p if PmTimer::claims(p) => {
                let (mut w, _, pm, ..) = self.wires();
                pm.read(clock, &mut w, port, size)
            }
            p if Rtc::claims(p) => {
                let (mut w, .., rtc) = self.wires();
                rtc.read(clock, &mut w, port, size)
            }
            p if FwCfg::claims(p) => self.fwcfg.read(size),
            0x3f8..=0x3ff if size == 1 => {
                let v = self.com1.read(port - 0x3f8);
                self.sync_com1();
                v.into()
            }
            0xcf8 if size == 4 => self.pci.address,
            0xcfc..=0xcff => self.pci.read(port, size),
            // The reset control register (PIIX3's RC, byte access only): microhv keeps none of
            // its bits, since a write that matters ends the domain.
            abi::platform::RESET_PORT if size == 1 => 0,
            // Anything but a whole-dword access to CONFIG_ADDRESS is an ordinary I/O cycle on
            // the PCI bus, which nobody claims: all ones, as for an absent port.
            0xcf8..=0xcfb => all_ones(size),
            // System control port A: A20 on, no reset in progress.
            0x92 => 0x02,
            // The keyboard controller's status: nothing to read, ready for a command (a status
            // stuck busy would hang a reboot through it).
            0x64 => 0x1c,
            0x60 => 0,
            _ => return None,
        };
        self.refresh(clock);
        Some(v)
    }

    /// An OUT of `size` bytes, if a platform device has `port`; `Some(None)` when it did
    /// nothing more than change device state.
    pub fn port_write(
        &mut self,
        clock: &Clock,
        port: u16,
        size: u8,
        value: u32,
    ) -> Option<Option<PortEffect>> {
        let mut effect = None;
        match port {
            PIC_MASTER | 0x21 | PIC_SLAVE | 0xa1 | PIC_ELCR | 0x4d1 => {
                // As for the I/O APIC: owed edges first, under the old masks.
                self.update(clock);
                self.pic.write(port, value as u8);
            }
            p if Pit::claims(p) => {
                let (mut w, pit, ..) = self.wires();
                pit.write(clock, &mut w, port, size, value);
            }
            p if PmTimer::claims(p) => {
                let (mut w, _, pm, ..) = self.wires();
                if pm.write(clock, &mut w, port, size, value) == PmOutcome::PowerOff {
                    effect = Some(PortEffect::PowerOff);
                }
            }
            p if Rtc::claims(p) => {
                let (mut w, .., rtc) = self.wires();
                rtc.write(clock, &mut w, port, size, value);
            }
            p if FwCfg::claims(p) => self.fwcfg.write(size, value),
            0x3f8..=0x3ff if size == 1 => {
                if let UartOut::Tx(b) = self.com1.write(port - 0x3f8, value as u8) {
                    effect = Some(PortEffect::Console(b));
                }
                self.sync_com1();
            }
            // Fast reset (bit 0 of port A), the reset control register's CPU reset (bit 2), and
            // the keyboard controller's reset pulse (command 0xFE).
            0x92 if value & 1 != 0 => effect = Some(PortEffect::Reset),
            abi::platform::RESET_PORT if size == 1 && value & 4 != 0 => {
                effect = Some(PortEffect::Reset)
            }
            0x64 if value & 0xff == 0xfe => effect = Some(PortEffect::Reset),
            0xcf8 if size == 4 => self.pci.address = value & CONFIG_ADDRESS_BITS,
            0x92 | 0x64 | 0x60 | 0xcf8..=0xcff => {}
            _ => return None,
        }
        self.refresh(clock);
        Some(effect)
    }

    /// Drives COM1's interrupt line to what the UART asks for.
    fn sync_com1(&mut self) {
        let level = self.com1.irq();
        let (mut w, ..) = self.wires();
        w.set_level(COM1_IRQ, level);
    }

    /// Bytes typed on the domain's console: what COM1's receiver takes (the rest is for later).
    pub fn console_input(&mut self, bytes: &[u8]) -> usize {
        let n = self.com1.receive(bytes);
        self.sync_com1();
        self.search = u32::MAX;
        n
    }

    /// Which emulated page `gpa` falls in for vCPU `v`, and its offset.
    pub fn mmio_page(&self, v: usize, gpa: u64) -> Option<(MmioPage, u64)> {
        let within = |base: u64, len: u64| gpa.checked_sub(base).filter(|&o| o < len);
        if let Some(o) =
            self.lapics.get(v).and_then(|l| l.mmio_base()).and_then(|b| within(b, 0x1000))
        {
            Some((MmioPage::Lapic, o))
        } else if let Some(o) = within(IOAPIC_BASE, IOAPIC_SIZE) {
            Some((MmioPage::IoApic, o))
        } else {
            within(HPET_BASE, HPET_LEN).map(|o| (MmioPage::Hpet, o))
        }
    }

    /// Reads `size` bytes at `offset` of `page` for vCPU `v`.
    pub fn mmio_read(
        &mut self,
        clock: &Clock,
        v: usize,
        page: MmioPage,
        offset: u64,
        size: u8,
    ) -> Result<u64, &'static str> {
        let r = match page {
            MmioPage::Lapic => self
                .lapics
                .get_mut(v)
                .ok_or("no such vCPU")?
                .mmio_read(offset, size, clock)
                .map(u64::from)
                .map_err(|_| "not an aligned 32-bit access to the local APIC"),
            MmioPage::IoApic if size == 4 => Ok(self.ioapic.read(offset).into()),
            MmioPage::IoApic => Err("not a 32-bit access to the I/O APIC"),
            MmioPage::Hpet => {
                let (mut w, _, _, hpet, _) = self.wires();
                Ok(hpet.read(clock, &mut w, offset, size))
            }
        };
        self.refresh(clock);
        r
    }

    /// Writes `size` bytes of `value` at `offset` of `page` for vCPU `v`.
    pub fn mmio_write(
        &mut self,
        clock: &Clock,
        v: usize,
        page: MmioPage,
        offset: u64,
        size: u8,
        value: u64,
    ) -> Result<(), &'static str> {
        let r = match page {
            MmioPage::Lapic => {
                let l = self.lapics.get_mut(v).ok_or("no such vCPU")?;
                match l.mmio_write(offset, size, value as u32, clock) {
                    Ok(Some(effect)) => {
                        self.apic_effect(effect);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(_) => Err("not an aligned 32-bit access to the local APIC"),
                }
            }
            MmioPage::IoApic if size == 4 => {
                // Routing changes apply from now on: the edges devices owe from before (an
                // unseen PIT has no deadline, see `refresh`) go out under the old routing.
                self.update(clock);
                let (mut w, ..) = self.wires();
                w.ioapic.write(offset, value as u32, &mut w.bus);
                Ok(())
            }
            MmioPage::IoApic => Err("not a 32-bit access to the I/O APIC"),
            MmioPage::Hpet => {
                // Legacy replacement may reconnect the PIT: its owed edges stay cut off.
                self.update(clock);
                let (mut w, _, _, hpet, _) = self.wires();
                hpet.write(clock, &mut w, offset, size, value);
                Ok(())
            }
        };
        self.refresh(clock);
        r
    }

    /// Carries out what a local APIC register write asked for: an EOI broadcast to the I/O
    /// APIC, or an IPI.
    pub fn apic_effect(&mut self, effect: ApicEffect) {
        let (mut w, ..) = self.wires();
        match effect {
            ApicEffect::Eoi(e) if e.broadcast => w.ioapic.eoi(e.vector, &mut w.bus),
            ApicEffect::Eoi(_) => {}
            ApicEffect::Ipi(req) => w.bus.ipi(req),
        }
    }

    /// An x2APIC register (MSR `0x800..=0x8FF`) or IA32_TSC_DEADLINE of vCPU `v`, read
    /// (`write` = `None`) or written; the deadline is in the [`Clock`]'s timebase. `Err` is
    /// #GP.
    pub fn apic_msr(
        &mut self,
        clock: &Clock,
        v: usize,
        msr: u32,
        write: Option<u64>,
    ) -> Result<u64, Gp> {
        let l = self.lapics.get_mut(v).ok_or(Gp)?;
        let r = match (msr, write) {
            (TSC_DEADLINE, None) => l.tsc_deadline(),
            (TSC_DEADLINE, Some(val)) => l.set_tsc_deadline(val).map(|()| 0),
            (m, None) => l.x2apic_read(m, clock),
            (m, Some(val)) => l.x2apic_write(m, val, clock).map(|effect| {
                if let Some(e) = effect {
                    self.apic_effect(e);
                }
                0
            }),
        };
        self.refresh(clock);
        r
    }

    /// Whether an NMI waits for vCPU `v`.
    pub fn nmi_pending(&self, v: usize) -> bool {
        self.lapics.get(v).is_some_and(Lapic::nmi_pending)
    }

    /// Takes vCPU `v`'s pending NMI, when the backend injects it.
    pub fn take_nmi(&mut self, v: usize) -> bool {
        self.lapics.get_mut(v).is_some_and(Lapic::take_nmi)
    }

    /// The interrupt vCPU `v` would take next, if any.
    pub fn pending(&self, v: usize) -> Option<Pending> {
        let l = self.lapics.get(v)?;
        if let Some(vec) = l.highest_deliverable() {
            return Some(Pending::Apic(vec));
        }
        (v == 0 && l.accepts_pic_intr() && self.pic.output()).then_some(Pending::Pic)
    }

    /// Acknowledges `p` for vCPU `v` (the INTA cycle): the vector to deliver.
    pub fn acknowledge(&mut self, v: usize, p: Pending) -> u8 {
        match p {
            Pending::Apic(vec) => {
                if let Some(l) = self.lapics.get_mut(v) {
                    l.ack(vec);
                }
                vec
            }
            Pending::Pic => self.pic.acknowledge(),
        }
    }
}

/// What an IN of `size` bytes reads where no device answers (the bus floats high).
fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

/// The lines of a device whose output is cut off (the PIT and RTC under HPET legacy
/// replacement).
struct Cut;

impl IrqSink for Cut {
    fn set_level(&mut self, _gsi: u32, _high: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const KHZ: u64 = 1_000_000; // a 1 GHz TSC
    fn at(ms: u64) -> Clock {
        Clock { now: ms * KHZ, tsc_khz: KHZ }
    }

    /// At `c`: the 8259 set up (vectors 0x20 / 0x28) with mask `imr`, and PIT channel 0 at 1 kHz
    /// (mode 2); the I/O APIC's pins are as at power-on, masked.
    fn pic_and_pit_at_1khz(p: &mut Platform, c: &Clock, imr: u32) {
        for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 4), (0x21, 1), (0x21, imr)] {
            p.port_write(c, port, 1, v);
        }
        for (port, v) in [(0x43, 0x34), (0x40, 1193 & 0xff), (0x40, 1193 >> 8)] {
            p.port_write(c, port, 1, v);
        }
    }

    #[test]
    fn an_unseen_pit_edge_costs_no_deadline() {
        let c = at(0);
        let mut p = Platform::new(&c, 1, 64 << 20, 0);
        pic_and_pit_at_1khz(&mut p, &c, 0xff);
        assert!(p.deadline <= at(2).now, "the first edge is still latched by the 8259");
        p.update(&at(2));
        assert_eq!(p.deadline, u64::MAX, "latched and masked: further edges change nothing");
        // Unmasking IRQ 0 delivers the latched request and brings the deadline back.
        p.port_write(&at(2), 0x21, 1, 0xfe);
        assert!(p.deadline < u64::MAX);
    }

    #[test]
    fn edges_owed_while_unseen_do_not_arrive_after_an_unmask() {
        let c = at(0);
        let mut p = Platform::new(&c, 1, 64 << 20, 0);
        p.mmio_write(&c, 0, MmioPage::Lapic, 0xf0, 4, 0x1ff).expect("SVR");
        // The 8259 masked with IRQ 0 latched, the PIT at 1 kHz, I/O APIC pin 2 masked.
        pic_and_pit_at_1khz(&mut p, &c, 0xff);
        p.update(&at(2));
        assert_eq!(p.deadline, u64::MAX);
        // 10 ms later pin 2 is unmasked (vector 0x30): nothing may arrive before the next edge.
        let c = at(12);
        p.mmio_write(&c, 0, MmioPage::IoApic, 0, 4, 0x10 + 2 * 2).expect("select");
        p.mmio_write(&c, 0, MmioPage::IoApic, 0x10, 4, 0x30).expect("entry");
        p.update(&c);
        assert_eq!(p.pending(0), None, "an edge from the unseen period was delivered");
        p.update(&at(13));
        assert_eq!(p.pending(0), Some(Pending::Apic(0x30)));
    }

    #[test]
    fn the_pit_reaches_the_pic_and_the_io_apic_through_pin_2() {
        let c = at(0);
        let mut p = Platform::new(&c, 1, 64 << 20, 0);
        // Local APIC on (SVR), LINT0 in ExtINT mode is the power-on virtual wire.
        p.mmio_write(&c, 0, MmioPage::Lapic, 0xf0, 4, 0x1ff).expect("SVR");
        p.mmio_write(&c, 0, MmioPage::Lapic, 0x350, 4, 0x700).expect("LINT0 ExtINT");
        // The 8259 with everything unmasked but the slave; the PIT at 1 kHz.
        pic_and_pit_at_1khz(&mut p, &c, 0xfe);
        assert!(p.deadline <= at(2).now, "the PIT's next edge is a deadline");
        assert_eq!(p.pending(0), None);
        let c = at(2);
        p.update(&c);
        assert_eq!(p.pending(0), Some(Pending::Pic));
        assert_eq!(p.acknowledge(0, Pending::Pic), 0x20);
        // I/O APIC pin 2 to vector 0x30, physical destination 0: the next tick arrives there.
        p.mmio_write(&c, 0, MmioPage::IoApic, 0, 4, 0x10 + 2 * 2).expect("select");
        p.mmio_write(&c, 0, MmioPage::IoApic, 0x10, 4, 0x30).expect("entry");
        p.update(&at(4));
        assert_eq!(p.pending(0), Some(Pending::Apic(0x30)));
        assert_eq!(p.acknowledge(0, Pending::Apic(0x30)), 0x30);
    }

    #[test]
    fn resets_power_off_and_pci() {
        let c = at(0);
        let mut p = Platform::new(&c, 1, 64 << 20, 0);
        assert_eq!(p.port_write(&c, 0xcf9, 1, 0x06), Some(Some(PortEffect::Reset)));
        assert_eq!(p.port_write(&c, 0x92, 1, 0x01), Some(Some(PortEffect::Reset)));
        assert_eq!(p.port_write(&c, 0x64, 1, 0xfe), Some(Some(PortEffect::Reset)));
        assert_eq!(p.port_read(&c, 0x64, 1), Some(0x1c));
        // S5: SLP_TYP 7 with SLP_EN.
        assert_eq!(
            p.port_write(&c, 0x604, 2, (7 << 10) | (1 << 13)),
            Some(Some(PortEffect::PowerOff))
        );
        p.port_write(&c, 0xcf8, 4, 0x8000_0000);
        assert_eq!(p.port_read(&c, 0xcfc, 4), Some(0x1237_8086));
        assert_eq!(p.port_read(&c, 0xcfe, 2), Some(0x1237));
        p.port_write(&c, 0xcf8, 4, 0x8000_0800); // device 1
        assert_eq!(p.port_read(&c, 0xcfc, 4), Some(u32::MAX));
        assert_eq!(p.port_read(&c, 0x1234, 1), None);
    }

    /// PCI configuration mechanism #1 as a PC's host bridge answers it: only the one device,
    /// all ones (a master abort) for every other address and with the enable bit clear, and
    /// CONFIG_ADDRESS touched only by whole-dword accesses, with its reserved bits zero.
    #[test]
    fn pci_configuration_reads_as_on_a_pc() {
        let c = at(0);
        let mut p = Platform::new(&c, 1, 64 << 20, 0);
        let config = |p: &mut Platform, addr: u32| {
            p.port_write(&c, 0xcf8, 4, addr);
            p.port_read(&c, 0xcfc, 4)
        };
        assert_eq!(config(&mut p, 0x8000_0000), Some(0x1237_8086), "00:00.0, the host bridge");
        assert_eq!(config(&mut p, 0x8000_0008), Some(0x0600_0002), "class: host bridge");
        assert_eq!(config(&mut p, 0x8000_0100), Some(u32::MAX), "00:00.1");
        assert_eq!(config(&mut p, 0x8000_0800), Some(u32::MAX), "00:01.0");
        assert_eq!(config(&mut p, 0x8001_0000), Some(u32::MAX), "01:00.0");
        assert_eq!(config(&mut p, 0x0000_0000), Some(u32::MAX), "enable bit clear");
        assert_eq!(p.port_read(&c, 0xcfc, 2), Some(0xffff));
        // Reserved bits read back as zero.
        p.port_write(&c, 0xcf8, 4, u32::MAX);
        assert_eq!(p.port_read(&c, 0xcf8, 4), Some(0x80ff_fffc));
        // Byte and word accesses are not CONFIG_ADDRESS: they read as nothing and change
        // nothing (but a byte at 0xCF9 is the reset control register).
        p.port_write(&c, 0xcf8, 4, 0x8000_0000);
        assert_eq!(p.port_read(&c, 0xcf8, 1), Some(0xff));
        assert_eq!(p.port_read(&c, 0xcfa, 2), Some(0xffff));
        assert_eq!(p.port_read(&c, 0xcf9, 1), Some(0));
        assert_eq!(p.port_write(&c, 0xcf8, 1, 0x12), Some(None));
        assert_eq!(p.port_write(&c, 0xcfa, 2, 0x1234), Some(None));
        assert_eq!(p.port_read(&c, 0xcf8, 4), Some(0x8000_0000));
        // Writes to the data port are dropped: the host bridge's ID stays.
        assert_eq!(p.port_write(&c, 0xcfc, 4, 0), Some(None));
        assert_eq!(p.port_read(&c, 0xcfc, 4), Some(0x1237_8086));
    }

    #[test]
    fn a_self_ipi_and_the_lapic_timer_arrive() {
        let c = at(0);
        let mut p = Platform::new(&c, 1, 64 << 20, 0);
        p.mmio_write(&c, 0, MmioPage::Lapic, 0xf0, 4, 0x1ff).expect("SVR");
        // Self IPI, fixed, vector 0x40 (shorthand self).
        p.mmio_write(&c, 0, MmioPage::Lapic, 0x300, 4, 0x4_0040).expect("ICR");
        assert_eq!(p.pending(0), Some(Pending::Apic(0x40)));
        p.acknowledge(0, Pending::Apic(0x40));
        p.mmio_write(&c, 0, MmioPage::Lapic, 0xb0, 4, 0).expect("EOI");
        // Timer: one-shot, vector 0x41, divide by 1, 1,000,000 bus ticks (1 ms at 1 GHz).
        p.mmio_write(&c, 0, MmioPage::Lapic, 0x3e0, 4, 0xb).expect("divide");
        p.mmio_write(&c, 0, MmioPage::Lapic, 0x320, 4, 0x41).expect("LVT timer");
        p.mmio_write(&c, 0, MmioPage::Lapic, 0x380, 4, 1_000_000).expect("initial count");
        assert_eq!(p.deadline, at(1).now);
        p.update(&at(1));
        assert_eq!(p.pending(0), Some(Pending::Apic(0x41)));
        // A one-shot timer that fired has no deadline; the PIT's power-on 18.2 Hz does.
        assert_eq!(p.deadline, 54_925_402);
    }
}
