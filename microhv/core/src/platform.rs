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

use crate::dev::hpet::{HPET_BASE, HPET_LEN, Hpet};
use crate::dev::ioapic::{ApicBus, IOAPIC_BASE, IOAPIC_SIZE, IoApic, IoApicMsg};
use crate::dev::lapic::{
    ApicEffect, DeliveryMode, Gp, IpiRequest, Lapic, LapicConfig, MSR_TSC_DEADLINE as TSC_DEADLINE,
    Shorthand, Startup,
};
use crate::dev::pic::{PIC_ELCR, PIC_MASTER, PIC_SLAVE, Pic};
use crate::dev::pit::Pit;
use crate::dev::pmtimer::{PmOutcome, PmTimer};
use crate::dev::uart::{COM1_IRQ, Uart, UartOut};
use crate::dev::{Clock, IrqSink};
use crate::domain::VCPUS;
use crate::io::IoOutcome;

/// An MMIO page the platform emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioPage {
    /// The local APIC page of the accessing vCPU.
    Lapic,
    /// The I/O APIC.
    IoApic,
    /// The HPET.
    Hpet,
    /// Guest-physical space neither RAM nor a device claims (above the domain's RAM), in a
    /// domain with a PC (`DOMCREATE_DEVICE_MODEL`): as on a PC, reads return all ones and
    /// writes go nowhere.
    Absent,
}

/// An interrupt ready for a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// From the local APIC.
    Apic(u8),
    /// From the 8259 (its vector is known only once acknowledged).
    Pic,
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
    /// COM1, the domain's console.
    pub com1: Uart,
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
                DeliveryMode::Init => {
                    l.start(Startup::Init);
                    true
                }
                DeliveryMode::StartUp => {
                    l.start(Startup::Sipi(vector));
                    true
                }
                // SMI / ExtINT: no SMM, and the ICR cannot send ExtINT.
                _ => false,
            };
        }
        taken
    }

    fn ipi(&mut self, req: IpiRequest) {
        // The SDM lists INIT and start-up with the self and all-including-self shorthands as
        // invalid: nothing is delivered.
        let start = matches!(req.mode, DeliveryMode::Init | DeliveryMode::StartUp);
        if start && matches!(req.shorthand, Shorthand::SelfOnly | Shorthand::All) {
            return;
        }
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
    /// A PC at power-on for a domain with `vcpus` vCPUs.
    pub fn new(clock: &Clock, vcpus: usize) -> Self {
        let vcpus = vcpus.clamp(1, VCPUS);
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
            com1: Uart::new(),
            deadline: u64::MAX,
            search: u32::MAX,
        };
        p.refresh(clock);
        p
    }

    /// Splits the borrows: the wires, and the devices that drive them.
    fn wires(&mut self) -> (Wires<'_>, &mut Pit, &mut PmTimer, &mut Hpet) {
        let bus = Bus { lapics: &mut self.lapics[..self.vcpus] };
        let wires = Wires { pic: &mut self.pic, ioapic: &mut self.ioapic, bus };
        (wires, &mut self.pit, &mut self.pm, &mut self.hpet)
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
        let (mut w, pit, pm, hpet) = self.wires();
        // In legacy replacement the HPET drives IRQ 0 and 8; the PIT's output is cut off from
        // the line (and the RTC's, in `drive`).
        if hpet.legacy_replacement() {
            pit.update(clock, &mut Cut);
        } else {
            pit.update(clock, &mut w);
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
            0x3f8..=0x3ff if size == 1 => {
                let v = self.com1.read(port - 0x3f8);
                self.sync_com1();
                v.into()
            }
            _ => return None,
        };
        self.refresh(clock);
        Some(v)
    }

    /// An OUT of `size` bytes, if a platform device has `port`: `Done(0)`, or what it asks of
    /// the caller besides the change of device state: power-off (ACPI S5 through PM1a_CNT) as
    /// `Shutdown(0)`, or a byte COM1 transmitted, for the domain's console.
    pub fn port_write(
        &mut self,
        clock: &Clock,
        port: u16,
        size: u8,
        value: u32,
    ) -> Option<IoOutcome> {
        let mut outcome = IoOutcome::Done(0);
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
                    outcome = IoOutcome::Shutdown(0);
                }
            }
            0x3f8..=0x3ff if size == 1 => {
                if let UartOut::Tx(b) = self.com1.write(port - 0x3f8, value as u8) {
                    outcome = IoOutcome::Console(b);
                }
                self.sync_com1();
            }
            _ => return None,
        }
        self.refresh(clock);
        Some(outcome)
    }

    /// dom0's device models drive line `gsi` (`IrqLevel`). Under HPET legacy replacement the
    /// RTC's output is cut off from IRQ 8, as the PIT's from IRQ 0.
    pub fn drive(&mut self, clock: &Clock, gsi: u32, high: bool) {
        // Edges owed under the old levels first, as for any change of the wiring's inputs.
        self.update(clock);
        if !(gsi == abi::platform::RTC_GSI && self.hpet.legacy_replacement()) {
            let (mut w, ..) = self.wires();
            w.set_level(gsi, high);
        }
        self.refresh(clock);
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
        let lapic =
            self.lapics.get(v).and_then(Lapic::mmio_base).map(|b| (MmioPage::Lapic, b, 0x1000));
        let pages =
            [(MmioPage::IoApic, IOAPIC_BASE, IOAPIC_SIZE), (MmioPage::Hpet, HPET_BASE, HPET_LEN)];
        lapic.into_iter().chain(pages).find_map(|(page, base, len)| {
            gpa.checked_sub(base).filter(|&o| o < len).map(|o| (page, o))
        })
    }

    /// Reads (`write` `None`: the value read) or writes `size` bytes at `offset` of `page` for
    /// vCPU `v`.
    pub fn mmio(
        &mut self,
        clock: &Clock,
        v: usize,
        page: MmioPage,
        offset: u64,
        size: u8,
        write: Option<u64>,
    ) -> Result<u64, &'static str> {
        let r = match (page, write) {
            (MmioPage::Absent, None) => Ok(crate::io::size_mask(size)),
            (MmioPage::Absent, Some(_)) => Ok(0),
            (MmioPage::Lapic, _) => {
                let l = self.lapics.get_mut(v).ok_or("no such vCPU")?;
                match write {
                    None => l.mmio_read(offset, size, clock).map(u64::from),
                    Some(val) => {
                        l.mmio_write(offset, size, val as u32, clock).map(|e| self.apic_effect(e))
                    }
                }
                .map_err(|_| "not an aligned 32-bit access to the local APIC")
            }
            (MmioPage::IoApic, _) if size != 4 => Err("not a 32-bit access to the I/O APIC"),
            (MmioPage::IoApic, None) => Ok(self.ioapic.read(offset).into()),
            (MmioPage::IoApic, Some(val)) => {
                // Routing changes apply from now on: the edges devices owe from before (an
                // unseen PIT has no deadline, see `refresh`) go out under the old routing.
                self.update(clock);
                let (mut w, ..) = self.wires();
                w.ioapic.write(offset, val as u32, &mut w.bus);
                Ok(0)
            }
            (MmioPage::Hpet, None) => {
                let (mut w, _, _, hpet) = self.wires();
                Ok(hpet.read(clock, &mut w, offset, size))
            }
            (MmioPage::Hpet, Some(val)) => {
                // Legacy replacement may reconnect the PIT: its owed edges stay cut off.
                self.update(clock);
                let (mut w, _, _, hpet) = self.wires();
                hpet.write(clock, &mut w, offset, size, val);
                Ok(0)
            }
        };
        self.refresh(clock);
        r
    }

    /// Carries out what a local APIC register write asked for, if anything: an EOI broadcast
    /// to the I/O APIC, or an IPI. Returns the write's result, 0.
    fn apic_effect(&mut self, effect: Option<ApicEffect>) -> u64 {
        let (mut w, ..) = self.wires();
        match effect {
            Some(ApicEffect::Eoi(e)) if e.broadcast => w.ioapic.eoi(e.vector, &mut w.bus),
            Some(ApicEffect::Ipi(req)) => w.bus.ipi(req),
            Some(ApicEffect::Eoi(_)) | None => {}
        }
        0
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
            (m, Some(val)) => l.x2apic_write(m, val, clock).map(|e| self.apic_effect(e)),
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

/// The line of a device whose output is cut off (the PIT under HPET legacy replacement).
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
        let mut p = Platform::new(&c, 1);
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
        let mut p = Platform::new(&c, 1);
        p.mmio(&c, 0, MmioPage::Lapic, 0xf0, 4, Some(0x1ff)).expect("SVR");
        // The 8259 masked with IRQ 0 latched, the PIT at 1 kHz, I/O APIC pin 2 masked.
        pic_and_pit_at_1khz(&mut p, &c, 0xff);
        p.update(&at(2));
        assert_eq!(p.deadline, u64::MAX);
        // 10 ms later pin 2 is unmasked (vector 0x30): nothing may arrive before the next edge.
        let c = at(12);
        p.mmio(&c, 0, MmioPage::IoApic, 0, 4, Some(0x10 + 2 * 2)).expect("select");
        p.mmio(&c, 0, MmioPage::IoApic, 0x10, 4, Some(0x30)).expect("entry");
        p.update(&c);
        assert_eq!(p.pending(0), None, "an edge from the unseen period was delivered");
        p.update(&at(13));
        assert_eq!(p.pending(0), Some(Pending::Apic(0x30)));
    }

    #[test]
    fn the_pit_reaches_the_pic_and_the_io_apic_through_pin_2() {
        let c = at(0);
        let mut p = Platform::new(&c, 1);
        // Local APIC on (SVR), LINT0 in ExtINT mode is the power-on virtual wire.
        p.mmio(&c, 0, MmioPage::Lapic, 0xf0, 4, Some(0x1ff)).expect("SVR");
        p.mmio(&c, 0, MmioPage::Lapic, 0x350, 4, Some(0x700)).expect("LINT0 ExtINT");
        // The 8259 with everything unmasked but the slave; the PIT at 1 kHz.
        pic_and_pit_at_1khz(&mut p, &c, 0xfe);
        assert!(p.deadline <= at(2).now, "the PIT's next edge is a deadline");
        assert_eq!(p.pending(0), None);
        let c = at(2);
        p.update(&c);
        assert_eq!(p.pending(0), Some(Pending::Pic));
        assert_eq!(p.acknowledge(0, Pending::Pic), 0x20);
        // I/O APIC pin 2 to vector 0x30, physical destination 0: the next tick arrives there.
        p.mmio(&c, 0, MmioPage::IoApic, 0, 4, Some(0x10 + 2 * 2)).expect("select");
        p.mmio(&c, 0, MmioPage::IoApic, 0x10, 4, Some(0x30)).expect("entry");
        p.update(&at(4));
        assert_eq!(p.pending(0), Some(Pending::Apic(0x30)));
        assert_eq!(p.acknowledge(0, Pending::Apic(0x30)), 0x30);
    }

    #[test]
    fn power_off_and_lines_driven_by_dom0() {
        let c = at(0);
        let mut p = Platform::new(&c, 1);
        // S5: SLP_TYP 7 with SLP_EN.
        let s5 = (7 << 10) | (1 << 13);
        assert_eq!(p.port_write(&c, 0x604, 2, s5), Some(IoOutcome::Shutdown(0)));
        assert_eq!(p.port_write(&c, 0xcf9, 1, 6), None, "dom0 serves the reset control");
        assert_eq!(p.port_read(&c, 0x71, 1), None, "and the RTC");
        // The 8259 with vectors 0x20 / 0x28, everything unmasked: dom0's RTC raises IRQ 8.
        for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 4), (0x21, 1), (0x21, 0)] {
            p.port_write(&c, port, 1, v);
        }
        for (port, v) in [(0xa0, 0x11), (0xa1, 0x28), (0xa1, 2), (0xa1, 1), (0xa1, 0)] {
            p.port_write(&c, port, 1, v);
        }
        p.mmio(&c, 0, MmioPage::Lapic, 0xf0, 4, Some(0x1ff)).expect("SVR");
        p.mmio(&c, 0, MmioPage::Lapic, 0x350, 4, Some(0x700)).expect("LINT0 ExtINT");
        p.drive(&c, 8, true);
        assert_eq!(p.pending(0), Some(Pending::Pic));
        assert_eq!(p.acknowledge(0, Pending::Pic), 0x28);
        p.drive(&c, 8, false);
        // Under HPET legacy replacement the RTC's line is cut off.
        p.mmio(&c, 0, MmioPage::Hpet, 0x10, 4, Some(3)).expect("enable, legacy replacement");
        p.port_write(&c, 0xa0, 1, 0x20); // EOI
        p.drive(&c, 8, true);
        assert_eq!(p.pending(0), None);
    }

    #[test]
    fn a_self_ipi_and_the_lapic_timer_arrive() {
        let c = at(0);
        let mut p = Platform::new(&c, 1);
        p.mmio(&c, 0, MmioPage::Lapic, 0xf0, 4, Some(0x1ff)).expect("SVR");
        // Self IPI, fixed, vector 0x40 (shorthand self).
        p.mmio(&c, 0, MmioPage::Lapic, 0x300, 4, Some(0x4_0040)).expect("ICR");
        assert_eq!(p.pending(0), Some(Pending::Apic(0x40)));
        p.acknowledge(0, Pending::Apic(0x40));
        p.mmio(&c, 0, MmioPage::Lapic, 0xb0, 4, Some(0)).expect("EOI");
        // Timer: one-shot, vector 0x41, divide by 1, 1,000,000 bus ticks (1 ms at 1 GHz).
        p.mmio(&c, 0, MmioPage::Lapic, 0x3e0, 4, Some(0xb)).expect("divide");
        p.mmio(&c, 0, MmioPage::Lapic, 0x320, 4, Some(0x41)).expect("LVT timer");
        p.mmio(&c, 0, MmioPage::Lapic, 0x380, 4, Some(1_000_000)).expect("initial count");
        assert_eq!(p.deadline, at(1).now);
        p.update(&at(1));
        assert_eq!(p.pending(0), Some(Pending::Apic(0x41)));
        // A one-shot timer that fired has no deadline; the PIT's power-on 18.2 Hz does.
        assert_eq!(p.deadline, 54_925_402);
    }
}
