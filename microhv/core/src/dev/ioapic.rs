//! A virtual I/O APIC (Intel 82093AA datasheet), 24 pins, with the EOI register of version 0x20
//! (the ICH's I/O APIC, and QEMU's default).
//!
//! Version 0x20 because the local APIC model advertises EOI-broadcast suppression: a guest that
//! turns the broadcast off must have the EOI register to end level-triggered interrupts (an
//! older guest that instead flips the entry to edge and back, as Linux does on version 0x11
//! parts, also works: going to edge clears remote IRR).
//!
//! Pins are driven with [`IoApic::set_level`]; the interrupt messages of the redirection table
//! go to a caller-supplied [`ApicBus`], which routes them to the local APICs.

use super::lapic::DeliveryMode;

/// Guest-physical address of the register window.
pub const IOAPIC_BASE: u64 = abi::platform::IOAPIC_BASE;
/// Size of the register window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Number of pins: GSIs 0-23.
pub const IOAPIC_PINS: usize = 24;
/// The version register: version 0x20, highest redirection entry 23.
pub const IOAPIC_VERSION: u32 = 0x0017_0020;

const RTE_LOGICAL: u64 = 1 << 11;
const RTE_ACTIVE_LOW: u64 = 1 << 13;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
/// Redirection entry bit 16: masked.
pub const RTE_MASKED: u64 = 1 << 16;
/// Vector, delivery mode, destination mode, polarity, trigger mode, mask, destination; delivery
/// status and remote IRR are read-only, the rest reserved.
const RTE_WRITABLE: u64 = 0xff00_0000_0001_afff;

/// An interrupt message sent by a redirection entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApicMsg {
    /// The pin (GSI) that sent it.
    pub pin: u8,
    /// Vector (ignored by NMI, INIT, SMI and ExtINT delivery).
    pub vector: u8,
    /// Delivery mode; never `StartUp`, which the entry reserves.
    pub mode: DeliveryMode,
    /// Logical (rather than physical) destination mode.
    pub logical: bool,
    /// The 8-bit destination.
    pub dest: u8,
    /// Level-triggered: the accepting local APIC sets its TMR bit, and its EOI must reach
    /// [`IoApic::eoi`]. Only fixed and lowest-priority messages are ever level-triggered.
    pub level_triggered: bool,
}

impl IoApicMsg {
    /// The destination widened for [`super::lapic::Lapic::matches`]: 0xff, the broadcast, stays
    /// a broadcast for local APICs in x2APIC mode too.
    pub fn dest_id(&self) -> u32 {
        if self.dest == 0xff { u32::MAX } else { self.dest.into() }
    }
}

/// Where the I/O APIC's messages go: the caller's router to the local APICs.
pub trait ApicBus {
    /// Delivers `msg`; returns whether a local APIC accepted it. A level-triggered entry sets
    /// remote IRR only when one did, so a message to nobody is not left awaiting an EOI.
    fn deliver(&mut self, msg: IoApicMsg) -> bool;
}

/// The I/O APIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoApic {
    id: u32,
    sel: u8,
    rte: [u64; IOAPIC_PINS],
    /// Pin input levels, before polarity.
    lines: u32,
}

impl IoApic {
    /// The power-up state: ID 0, every entry masked, every line idle: GSIs 0-15 (ISA, active
    /// high) low, GSIs 16-23 (PCI INTx, active low, pulled up) high. A device model drives its
    /// line to the level the ACPI tables declare for it.
    pub(crate) const fn new() -> Self {
        Self { id: 0, sel: 0, rte: [RTE_MASKED; IOAPIC_PINS], lines: 0x00ff_0000 }
    }

    /// Redirection entry `pin` as the guest reads it.
    pub fn entry(&self, pin: u32) -> Option<u64> {
        self.rte.get(usize::try_from(pin).ok()?).copied()
    }

    /// Whether `pin` is level-triggered: NMI, INIT, SMI and ExtINT are edge whatever the
    /// entry says (82093AA).
    fn level(e: u64) -> bool {
        let fixed = matches!(
            DeliveryMode::from_entry(e as u32),
            Some(DeliveryMode::Fixed | DeliveryMode::LowestPriority)
        );
        fixed && e & RTE_LEVEL != 0
    }

    /// Whether the pin's input is active, polarity applied.
    fn asserted(&self, pin: usize, e: u64) -> bool {
        ((self.lines >> pin) & 1 != 0) != (e & RTE_ACTIVE_LOW != 0)
    }

    fn msg(pin: usize, e: u64) -> Option<IoApicMsg> {
        let mode = DeliveryMode::from_entry(e as u32).filter(|m| *m != DeliveryMode::StartUp)?;
        Some(IoApicMsg {
            pin: pin as u8,
            vector: e as u8,
            mode,
            logical: e & RTE_LOGICAL != 0,
            dest: (e >> 56) as u8,
            level_triggered: Self::level(e),
        })
    }

    /// Delivers a level-triggered pin if it is asserted, unmasked and not awaiting an EOI.
    fn service(&mut self, pin: usize, bus: &mut impl ApicBus) {
        let Some(e) = self.rte.get(pin).copied() else { return };
        if !Self::level(e) || e & (RTE_MASKED | RTE_REMOTE_IRR) != 0 || !self.asserted(pin, e) {
            return;
        }
        if Self::msg(pin, e).is_some_and(|m| bus.deliver(m)) {
            self.rte[pin] |= RTE_REMOTE_IRR;
        }
    }

    /// Drives pin `pin` (out-of-range pins are not wired). Edge-triggered entries send on the
    /// inactive-to-active transition, and lose it while masked; level-triggered ones send while
    /// active, once until the EOI.
    pub fn set_level(&mut self, pin: u32, high: bool, bus: &mut impl ApicBus) {
        let Some((p, e)) = usize::try_from(pin).ok().and_then(|p| Some((p, *self.rte.get(p)?)))
        else {
            return;
        };
        let was = self.asserted(p, e);
        self.lines = (self.lines & !(1 << p)) | (u32::from(high) << p);
        if Self::level(e) {
            self.service(p, bus);
        } else if !was
            && self.asserted(p, e)
            && e & RTE_MASKED == 0
            && let Some(m) = Self::msg(p, e)
        {
            bus.deliver(m);
        }
    }

    /// An EOI for `vector`, broadcast by a local APIC or written to the EOI register: clears
    /// remote IRR of the entries with that vector, which send again if still active.
    pub fn eoi(&mut self, vector: u8, bus: &mut impl ApicBus) {
        for pin in 0..IOAPIC_PINS {
            let e = self.rte[pin];
            if e as u8 == vector && e & RTE_REMOTE_IRR != 0 {
                self.rte[pin] = e & !RTE_REMOTE_IRR;
                self.service(pin, bus);
            }
        }
    }

    /// Reads the 32-bit register at `offset` in the window (the 82093AA defines only 32-bit
    /// accesses: the caller truncates narrower reads). Other offsets read 0.
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            0x00 => self.sel.into(),
            0x10 => self.read_indirect(),
            _ => 0,
        }
    }

    fn read_indirect(&self) -> u32 {
        let half = |r: u8| {
            let e = self.rte.get(usize::from((r - 0x10) / 2)).copied().unwrap_or(0);
            if r & 1 == 0 { e as u32 } else { (e >> 32) as u32 }
        };
        match self.sel {
            // ID and arbitration ID: the 82093AA loads the latter from the former.
            0x00 | 0x02 => self.id << 24,
            0x01 => IOAPIC_VERSION,
            r @ 0x10..=0x3f => half(r),
            _ => 0,
        }
    }

    /// Writes the register at `offset` in the window: IOREGSEL, IOWIN or the EOI register.
    /// Narrower writes arrive zero-extended (an 8-bit IOREGSEL write is common).
    pub fn write(&mut self, offset: u64, value: u32, bus: &mut impl ApicBus) {
        match (offset, self.sel) {
            (0x00, _) => self.sel = value as u8,
            (0x40, _) => self.eoi(value as u8, bus),
            (0x10, 0x00) => self.id = (value >> 24) & 0xf,
            (0x10, r @ 0x10..=0x3f) => {
                let pin = usize::from((r - 0x10) / 2);
                let Some(old) = self.rte.get(pin).copied() else { return };
                let v = if r & 1 == 0 {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                let mut e = (v & RTE_WRITABLE) | (old & RTE_REMOTE_IRR);
                if e & RTE_LEVEL == 0 {
                    e &= !RTE_REMOTE_IRR;
                }
                self.rte[pin] = e;
                // An unmask (or a switch to level) of an active pin sends now.
                self.service(pin, bus);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::IrqSink;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// A closure as the bus, for one-off behaviours.
    impl<F: FnMut(IoApicMsg) -> bool> ApicBus for F {
        fn deliver(&mut self, msg: IoApicMsg) -> bool {
            self(msg)
        }
    }

    /// An I/O APIC with its bus, as an [`IrqSink`] (the way devices raise their interrupts).
    struct IoApicLines<'a, B: ApicBus> {
        ioapic: &'a mut IoApic,
        bus: &'a mut B,
    }

    impl<B: ApicBus> IrqSink for IoApicLines<'_, B> {
        fn set_level(&mut self, gsi: u32, high: bool) {
            self.ioapic.set_level(gsi, high, self.bus);
        }
    }

    /// A bus that records what it is given and accepts everything.
    #[derive(Default)]
    struct Log(Vec<IoApicMsg>);

    impl ApicBus for Log {
        fn deliver(&mut self, msg: IoApicMsg) -> bool {
            self.0.push(msg);
            true
        }
    }

    fn program(io: &mut IoApic, pin: u8, low: u32, high: u32, bus: &mut Log) {
        io.write(0, u32::from(0x11 + 2 * pin), bus);
        io.write(0x10, high, bus);
        io.write(0, u32::from(0x10 + 2 * pin), bus);
        io.write(0x10, low, bus);
    }

    fn reg(io: &mut IoApic, r: u32) -> u32 {
        io.write(0, r, &mut Log::default());
        io.read(0x10)
    }

    #[test]
    fn registers() {
        let mut io = IoApic::new();
        let bus = &mut Log::default();
        assert_eq!(reg(&mut io, 1), 0x0017_0020, "version 0x20, 24 entries");
        io.write(0x10, 0xffff_ffff, bus);
        assert_eq!(reg(&mut io, 1), 0x0017_0020, "read-only");
        io.write(0, 0, bus);
        io.write(0x10, 0x0a00_0000, bus);
        assert_eq!(reg(&mut io, 0), 0x0a00_0000);
        assert_eq!(reg(&mut io, 2), 0x0a00_0000, "arbitration ID follows the ID");
        assert_eq!(io.read(0), 2, "IOREGSEL reads back");
        for r in 0x10..0x40 {
            assert_eq!(reg(&mut io, r), if r % 2 == 0 { 0x1_0000 } else { 0 }, "masked at reset");
        }
        program(&mut io, 5, 0xffff_ffff, 0xffff_ffff, bus);
        assert_eq!(io.entry(5), Some(0xff00_0000_0001_afff), "RO and reserved bits stay 0");
        assert_eq!(reg(&mut io, 0x1b), 0xff00_0000);
        assert_eq!(reg(&mut io, 0x40), 0, "beyond the table");
        assert_eq!(io.read(0x20), 0);
        assert_eq!(io.entry(24), None);
        assert!(bus.0.is_empty(), "no pin is active");
    }

    #[test]
    fn edge_pins_send_on_the_rising_edge_and_lose_masked_edges() {
        let mut io = IoApic::new();
        let bus = &mut Log::default();
        program(&mut io, 2, 0x0000_0830, 0x0300_0000, bus);
        io.set_level(2, true, bus);
        io.set_level(2, true, bus);
        let m = IoApicMsg {
            pin: 2,
            vector: 0x30,
            mode: DeliveryMode::Fixed,
            logical: true,
            dest: 3,
            level_triggered: false,
        };
        assert_eq!(bus.0, [m], "one edge, one message");
        io.set_level(2, false, bus);
        program(&mut io, 2, 0x0001_0830, 0x0300_0000, bus);
        io.set_level(2, true, bus);
        program(&mut io, 2, 0x0000_0830, 0x0300_0000, bus);
        assert_eq!(bus.0.len(), 1, "the masked edge is lost, unmasking does not send it");
        let mut lines = IoApicLines { ioapic: &mut io, bus };
        lines.set_level(2, false);
        lines.pulse(2);
        lines.pulse(99);
        assert_eq!(bus.0.len(), 2);
        assert_eq!(bus.0[1].dest_id(), 3);
    }

    #[test]
    fn level_pins_wait_for_the_eoi() {
        let mut io = IoApic::new();
        let bus = &mut Log::default();
        program(&mut io, 17, 0x0000_a041, 0xff00_0000, bus); // level, active low
        assert!(bus.0.is_empty(), "a PCI line idles high: inactive");
        io.set_level(17, false, bus);
        assert_eq!(bus.0.len(), 1);
        assert!(bus.0[0].level_triggered && bus.0[0].dest_id() == u32::MAX);
        assert_eq!(io.entry(17).unwrap() & RTE_REMOTE_IRR, RTE_REMOTE_IRR);
        io.set_level(17, true, bus);
        io.set_level(17, false, bus);
        assert_eq!(bus.0.len(), 1, "remote IRR holds it");
        io.eoi(0x42, bus);
        assert_eq!(bus.0.len(), 1, "another vector's EOI");
        io.eoi(0x41, bus);
        assert_eq!(bus.0.len(), 2, "still active after the EOI: sent again");
        io.set_level(17, true, bus);
        io.write(0x40, 0x41, bus); // the EOI register
        assert_eq!(bus.0.len(), 2, "inactive at the EOI: nothing to send");
        assert_eq!(io.entry(17).unwrap() & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn unmasking_an_active_level_pin_sends_it() {
        let mut io = IoApic::new();
        let bus = &mut Log::default();
        program(&mut io, 11, 0x0001_8051, 0, bus);
        io.set_level(11, true, bus);
        assert!(bus.0.is_empty());
        program(&mut io, 11, 0x0000_8051, 0, bus);
        assert_eq!(bus.0.len(), 1);
        // Linux's EOI for version 0x11 parts: mask, switch to edge and back, which clears
        // remote IRR.
        program(&mut io, 11, 0x0001_0051, 0, bus);
        assert_eq!(io.entry(11).unwrap() & RTE_REMOTE_IRR, 0);
        program(&mut io, 11, 0x0000_8051, 0, bus);
        assert_eq!(bus.0.len(), 2);
    }

    #[test]
    fn nobody_accepting_leaves_no_remote_irr_and_nmi_is_edge() {
        let mut io = IoApic::new();
        let mut refuse = |_| false;
        io.write(0, 0x10, &mut refuse);
        io.write(0x10, 0x8060, &mut refuse);
        io.set_level(0, true, &mut refuse);
        assert_eq!(io.entry(0).unwrap() & RTE_REMOTE_IRR, 0);
        let bus = &mut Log::default();
        program(&mut io, 1, 0x0000_8400, 0, bus); // NMI, "level"
        io.set_level(1, true, bus);
        io.set_level(1, true, bus);
        assert_eq!(bus.0.len(), 1);
        assert!(!bus.0[0].level_triggered && bus.0[0].mode == DeliveryMode::Nmi);
        assert_eq!(io.entry(1).unwrap() & RTE_REMOTE_IRR, 0, "edge: no EOI expected");
        program(&mut io, 3, 0x0000_0600, 0, bus); // start-up: reserved in an entry
        io.set_level(3, true, bus);
        assert_eq!(bus.0.len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Sel(u32),
        Win(u32),
        Write(u8, u32),
        Level(u32, bool),
        Eoi(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop_oneof![0u32..0x44, any::<u32>()].prop_map(Op::Sel),
            any::<u32>().prop_map(Op::Win),
            (any::<u8>(), any::<u32>()).prop_map(|(o, v)| Op::Write(o, v)),
            (0u32..26, any::<bool>()).prop_map(|(p, h)| Op::Level(p, h)),
            any::<u8>().prop_map(Op::Eoi),
        ]
    }

    proptest! {
        /// No input panics; a level-triggered pin never sends twice without its EOI in
        /// between; nothing is sent from a masked entry.
        #[test]
        fn level_pins_never_send_twice_without_eoi(ops in proptest::collection::vec(op(), 1..100)) {
            let mut io = IoApic::new();
            let mut awaiting = [false; IOAPIC_PINS];
            for op in ops {
                let before = io.clone();
                let mut bus = Log::default();
                let eoi = match op {
                    Op::Sel(v) => { io.write(0, v, &mut bus); None }
                    Op::Win(v) => { io.write(0x10, v, &mut bus); None }
                    Op::Write(o, v) => { io.write(o.into(), v, &mut bus); (o == 0x40).then_some(v as u8) }
                    Op::Level(p, h) => { io.set_level(p, h, &mut bus); None }
                    Op::Eoi(v) => { io.eoi(v, &mut bus); Some(v) }
                };
                let _ = io.read(0x10);
                for (p, a) in awaiting.iter_mut().enumerate() {
                    let (old, new) = (before.rte[p], io.rte[p]);
                    if eoi == Some(old as u8) || new & RTE_REMOTE_IRR == 0 {
                        *a = false;
                    }
                }
                for m in &bus.0 {
                    let e = io.rte[usize::from(m.pin)];
                    prop_assert_eq!(e & RTE_MASKED, 0);
                    if m.level_triggered {
                        prop_assert!(!awaiting[usize::from(m.pin)], "sent twice: {:?}", m);
                        awaiting[usize::from(m.pin)] = true;
                    }
                }
            }
        }
    }
}
