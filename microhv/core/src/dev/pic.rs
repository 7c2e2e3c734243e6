//! The PC's pair of 8259A interrupt controllers (Intel 8259A datasheet), the slave cascaded on
//! the master's IR2, with the PIIX/ICH edge/level control registers (ELCR) at 0x4d0/0x4d1.
//!
//! Departures from the chip, where emulation makes the datasheet's constraint moot:
//! - An edge stays latched in IRR until acknowledged even if the line drops first (the chip
//!   wants the request held until INTA; devices here raise edges with
//!   [`IrqSink::pulse`](super::IrqSink::pulse)).
//! - The slave's INT reaches the master's IR2 as a level, recomputed after every change, so the
//!   master never acknowledges IR2 for a request that has gone: spurious interrupts come from
//!   the master (IRQ7, no ISR bit set). The slave's spurious vector (IRQ15, with the master's
//!   ISR2 set) is kept for the path's sake.
//! - ICW1 also clears ISR (the datasheet lists what ICW1 resets without naming ISR; QEMU and
//!   KVM clear it, and a re-initializing guest expects a clean chip).
//! - Until a guest programs them, both chips mask every input.

/// The master's command port (its data port is the next one).
pub const PIC_MASTER: u16 = 0x20;
/// The slave's command port (its data port is the next one).
pub const PIC_SLAVE: u16 = 0xa0;
/// The ELCR of the master; the slave's is the next port.
pub const PIC_ELCR: u16 = 0x4d0;

/// Inputs that can be level-triggered: IRQ0-2, IRQ8 and IRQ13 are edge-only on a PC.
const ELCR_MASK: [u8; 2] = [0xf8, 0xde];

/// One 8259A.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Chip {
    irr: u8,
    imr: u8,
    isr: u8,
    /// Input levels, for edge detection and level mode.
    lines: u8,
    elcr: u8,
    /// ICW2: vector of IR0.
    base: u8,
    /// The input with the lowest priority (rotation); the one after it has the highest.
    lowest: u8,
    /// Initialization word expected on the data port next (2-4), 0 when initialized.
    icw: u8,
    icw4: bool,
    single: bool,
    ltim: bool,
    aeoi: bool,
    rotate_aeoi: bool,
    sfnm: bool,
    read_isr: bool,
    poll: bool,
    smm: bool,
}

impl Chip {
    fn new() -> Self {
        Self { imr: 0xff, lowest: 7, ..Self::default() }
    }

    /// The input in `mask` with the highest priority.
    fn first(&self, mask: u8) -> Option<u8> {
        (1..=8u8).map(|k| self.lowest.wrapping_add(k) & 7).find(|i| mask & (1 << i) != 0)
    }

    /// Priority rank of input `i`, 0 the highest.
    fn rank(&self, i: u8) -> u8 {
        i.wrapping_sub(self.lowest).wrapping_sub(1) & 7
    }

    fn level_mask(&self) -> u8 {
        if self.ltim { 0xff } else { self.elcr }
    }

    /// The request INT signals: the highest unmasked one, if it outranks everything in service
    /// (fully nested mode). Special mask mode ignores masked in-service levels; special fully
    /// nested mode lets the master take more from the slave while IR2 is in service.
    fn pending(&self, master: bool) -> Option<u8> {
        let req = self.first(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.smm {
            in_service &= !self.imr;
        }
        if master && self.sfnm {
            in_service &= !4;
        }
        match self.first(in_service) {
            Some(s) if self.rank(s) <= self.rank(req) => None,
            _ => Some(req),
        }
    }

    fn set_line(&mut self, i: u8, high: bool) {
        let b = 1 << (i & 7);
        let rising = high && self.lines & b == 0;
        self.lines = if high { self.lines | b } else { self.lines & !b };
        if self.level_mask() & b != 0 {
            self.irr = if high { self.irr | b } else { self.irr & !b };
        } else if rising {
            self.irr |= b;
        }
    }

    /// INTA (or a poll) for input `i`; the cascade input's request belongs to the slave.
    fn intack(&mut self, i: u8, cascade: bool) {
        let b = 1 << (i & 7);
        if !cascade && self.level_mask() & b == 0 {
            self.irr &= !b;
        }
        if !self.aeoi {
            self.isr |= b;
        } else if self.rotate_aeoi {
            self.lowest = i;
        }
    }

    /// INTA (or a poll) for the request INT signals, if there is one: its input.
    fn take(&mut self, master: bool) -> Option<u8> {
        let i = self.pending(master)?;
        self.intack(i, master && i == 2);
        Some(i)
    }

    fn command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1; the edge-sense reset means an edge input needs a new rising edge.
            (self.icw4, self.single, self.ltim) = (v & 1 != 0, v & 2 != 0, v & 8 != 0);
            (self.imr, self.isr, self.lowest, self.icw) = (0, 0, 7, 2);
            (self.read_isr, self.poll, self.smm, self.rotate_aeoi) = (false, false, false, false);
            if !self.icw4 {
                (self.aeoi, self.sfnm) = (false, false);
            }
            self.irr = self.lines & self.level_mask();
        } else if v & 0x08 != 0 {
            // OCW3: poll, read-register select, special mask mode.
            self.poll |= v & 4 != 0;
            if v & 2 != 0 {
                self.read_isr = v & 1 != 0;
            }
            if v & 0x40 != 0 {
                self.smm = v & 0x20 != 0;
            }
        } else {
            // OCW2. A non-specific EOI leaves masked levels alone in special mask mode.
            let l = v & 7;
            let eoi_target = self.first(self.isr & if self.smm { !self.imr } else { 0xff });
            match v >> 5 {
                0 => self.rotate_aeoi = false,
                1 | 5 => {
                    if let Some(i) = eoi_target {
                        self.isr &= !(1 << i);
                        if v >> 5 == 5 {
                            self.lowest = i;
                        }
                    }
                }
                3 => self.isr &= !(1 << l),
                4 => self.rotate_aeoi = true,
                6 => self.lowest = l,
                7 => {
                    self.isr &= !(1 << l);
                    self.lowest = l;
                }
                _ => {}
            }
        }
    }

    fn data(&mut self, v: u8) {
        // ICW2 is followed by ICW3 unless single, then by ICW4 if ICW1 asked for it.
        let after_icw3 = if self.icw4 { 4 } else { 0 };
        self.icw = match self.icw {
            2 => {
                self.base = v & 0xf8;
                if self.single { after_icw3 } else { 3 }
            }
            3 => after_icw3,
            4 => {
                (self.aeoi, self.sfnm) = (v & 2 != 0, v & 0x10 != 0);
                0
            }
            _ => {
                self.imr = v;
                0
            }
        };
    }
}

/// The master/slave pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pic {
    chips: [Chip; 2],
}

impl Pic {
    /// Power-up: uninitialized, every input masked.
    pub(crate) fn new() -> Self {
        Self { chips: [Chip::new(), Chip::new()] }
    }

    /// Feeds the slave's INT into the master's IR2.
    fn cascade(&mut self) {
        let s = self.chips[1].pending(false).is_some();
        let m = &mut self.chips[0];
        m.irr = (m.irr & !4) | (u8::from(s) << 2);
    }

    /// IN from `port`; `None` if it is not one of the PICs' ports. A read after a poll command
    /// is the poll (an acknowledge).
    pub fn read(&mut self, port: u16) -> Option<u8> {
        let v = match port {
            0x20 | 0x21 | 0xa0 | 0xa1 => {
                let master = port < 0xa0;
                let c = &mut self.chips[usize::from(!master)];
                if c.poll {
                    c.poll = false;
                    c.take(master).map_or(0, |i| 0x80 | i)
                } else if port & 1 == 1 {
                    c.imr
                } else if c.read_isr {
                    c.isr
                } else {
                    c.irr
                }
            }
            0x4d0 | 0x4d1 => self.chips[usize::from(port & 1)].elcr,
            _ => return None,
        };
        self.cascade();
        Some(v)
    }

    /// OUT to `port`; false if it is not one of the PICs' ports.
    pub fn write(&mut self, port: u16, v: u8) -> bool {
        match port {
            0x20 | 0x21 | 0xa0 | 0xa1 => {
                let c = &mut self.chips[usize::from(port >= 0xa0)];
                if port & 1 == 0 { c.command(v) } else { c.data(v) }
            }
            0x4d0 | 0x4d1 => {
                let i = usize::from(port & 1);
                let c = &mut self.chips[i];
                c.elcr = v & ELCR_MASK[i];
                let level = c.level_mask();
                c.irr = (c.irr & !level) | (c.lines & level);
            }
            _ => return false,
        }
        self.cascade();
        true
    }

    /// Drives ISA IRQ `irq` (0-15; IRQ2 is the cascade and has no input of its own).
    pub fn set_level(&mut self, irq: u32, high: bool) {
        match irq {
            0 | 1 | 3..=7 => self.chips[0].set_line(irq as u8, high),
            8..=15 => self.chips[1].set_line(irq as u8 - 8, high),
            _ => return,
        }
        self.cascade();
    }

    /// Whether master input `irq` (0-7) has a request latched in IRR and masked in IMR: a
    /// further edge on it would change nothing until the guest unmasks or acknowledges it.
    pub fn holds_masked(&self, irq: u8) -> bool {
        let c = &self.chips[0];
        irq < 8 && (c.irr & c.imr) & (1 << irq) != 0
    }

    /// Whether the master's INT, the CPU's INTR, is asserted.
    pub fn output(&self) -> bool {
        self.chips[0].pending(true).is_some()
    }

    /// The CPU's INTA cycle: the vector of the request INT signals, now in service (unless
    /// auto-EOI). Without one, the master's IR7 vector, nothing put in service (spurious).
    pub fn acknowledge(&mut self) -> u8 {
        let [m, s] = &mut self.chips;
        let v = match m.take(true) {
            Some(2) => s.base | s.take(false).unwrap_or(7),
            i => m.base | i.unwrap_or(7),
        };
        self.cascade();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::IrqSink;

    /// The tests raise edges as devices do, with [`IrqSink::pulse`].
    impl IrqSink for Pic {
        fn set_level(&mut self, gsi: u32, high: bool) {
            Pic::set_level(self, gsi, high);
        }
    }
    use proptest::prelude::*;

    fn out(p: &mut Pic, seq: &[(u16, u8)]) {
        for &(port, v) in seq {
            assert!(p.write(port, v));
        }
    }

    /// Linux's probe_8259A, then init_8259A(0): vectors 0x30/0x38, slave on IR2, 8086 mode,
    /// normal EOI; masks restored to "all but the cascade".
    fn linux() -> Pic {
        let mut p = Pic::new();
        out(&mut p, &[(0xa1, 0xff), (0x21, 0xfb)]);
        assert_eq!(p.read(0x21), Some(0xfb), "the probe reads its mask back");
        out(&mut p, &[(0x21, 0xff), (0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01)]);
        out(&mut p, &[(0xa0, 0x11), (0xa1, 0x38), (0xa1, 0x02), (0xa1, 0x01)]);
        assert_eq!(p.read(0x21), Some(0), "ICW1 cleared the mask");
        out(&mut p, &[(0x21, 0xfb), (0xa1, 0xff)]);
        assert_eq!((p.read(0x21), p.read(0xa1)), (Some(0xfb), Some(0xff)));
        p
    }

    #[test]
    fn linux_probe_init_and_the_timer() {
        let mut p = linux();
        p.pulse(0);
        assert!(!p.output(), "IRQ0 masked");
        assert_eq!(p.read(0x20), Some(1), "but requested: IRR reads by default");
        p.write(0x21, 0xfa);
        assert!(p.output());
        assert_eq!(p.acknowledge(), 0x30);
        assert!(!p.output());
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), Some(1), "ISR");
        p.write(0x20, 0x0a);
        p.pulse(0);
        assert!(!p.output(), "IRQ0 in service blocks itself");
        p.write(0x20, 0x60); // specific EOI, IRQ0
        assert!(p.output());
        assert_eq!(p.acknowledge(), 0x30);
        p.write(0x20, 0x20); // non-specific EOI
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), Some(0));
        assert_eq!(p.read(0x60), None);
        assert!(!p.write(0x61, 0));
    }

    #[test]
    fn cascade_through_ir2() {
        let mut p = linux();
        p.write(0xa1, 0xef); // unmask IRQ12
        p.pulse(12);
        assert!(p.output());
        assert_eq!(p.read(0x20), Some(4), "the master sees IR2");
        p.pulse(1);
        p.write(0x21, 0xf9);
        assert_eq!(p.acknowledge(), 0x31, "IRQ1 outranks the whole slave");
        p.write(0x20, 0x20);
        assert_eq!(p.acknowledge(), 0x3c);
        p.write(0x20, 0x0b);
        p.write(0xa0, 0x0b);
        assert_eq!((p.read(0x20), p.read(0xa0)), (Some(4), Some(0x10)));
        p.pulse(8);
        p.write(0xa1, 0xee);
        assert_eq!(p.read(0x20), Some(4), "IRQ8 outranks IRQ12 on the slave...");
        assert!(!p.output(), "...but IR2 is in service on the master (not special fully nested)");
        p.write(0x20, 0x62);
        assert_eq!(p.acknowledge(), 0x38);
        p.write(0xa0, 0x20);
        p.write(0xa0, 0x20);
        p.write(0x20, 0x62);
        p.write(0x20, 0x0b);
        p.write(0xa0, 0x0b);
        assert_eq!((p.read(0x20), p.read(0xa0)), (Some(0), Some(0)));
    }

    #[test]
    fn spurious_irq7() {
        let mut p = linux();
        p.write(0x4d0, 0xff);
        assert_eq!(p.read(0x4d0), Some(0xf8), "IRQ0-2 are edge-only");
        p.write(0x4d1, 0xff);
        assert_eq!(p.read(0x4d1), Some(0xde), "IRQ8 and IRQ13 are edge-only");
        p.write(0x21, 0xdb); // unmask IRQ5, level-triggered
        p.set_level(5, true);
        assert!(p.output());
        p.set_level(5, false);
        assert!(!p.output(), "a level request goes with its line");
        assert_eq!(p.acknowledge(), 0x37, "spurious: IR7's vector");
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), Some(0), "and nothing in service");
        // Linux checks ISR, sees no IRQ7 in service, and sends no EOI. A level line still high
        // after its EOI interrupts again.
        p.set_level(5, true);
        assert_eq!(p.acknowledge(), 0x35);
        p.write(0x20, 0x20);
        assert!(p.output());
    }

    #[test]
    fn auto_eoi_and_rotation() {
        let mut p = Pic::new();
        out(&mut p, &[(0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x03), (0x21, 0)]);
        out(&mut p, &[(0x20, 0x80)]); // rotate in auto-EOI mode
        for irq in [0, 1, 3] {
            p.pulse(irq);
        }
        assert_eq!(p.acknowledge(), 0x08);
        assert_eq!(p.acknowledge(), 0x09);
        p.pulse(0);
        assert_eq!(p.acknowledge(), 0x0b, "IRQ1 became the lowest: IRQ3 now outranks IRQ0");
        assert_eq!(p.acknowledge(), 0x08);
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), Some(0), "auto-EOI puts nothing in service");
        // Normal EOI mode: specific rotation and "set priority".
        out(&mut p, &[(0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01), (0x21, 0)]);
        p.write(0x20, 0xc4); // IRQ4 lowest: IRQ5 highest
        p.pulse(3);
        p.pulse(6);
        assert_eq!(p.acknowledge(), 0x0e);
        p.write(0x20, 0xa0); // rotate on non-specific EOI: IRQ6 lowest
        assert_eq!(p.acknowledge(), 0x0b);
        p.write(0x20, 0xe3); // rotate on specific EOI 3
        p.pulse(3);
        p.pulse(4);
        assert_eq!(p.acknowledge(), 0x0c, "IRQ3 lowest now");
    }

    #[test]
    fn poll_mode_and_special_mask_mode() {
        let mut p = linux();
        p.write(0x21, 0x00);
        p.write(0x20, 0x0c); // poll
        assert_eq!(p.read(0x20), Some(0), "nothing requested");
        p.pulse(3);
        p.pulse(5);
        p.write(0x20, 0x0c);
        assert_eq!(p.read(0x21), Some(0x83), "poll on either port");
        assert!(!p.output(), "IRQ3 in service");
        assert_eq!(p.read(0x21), Some(0), "the mask again");
        // The handler masks its own level and sets special mask mode: IRQ5 gets through.
        p.write(0x21, 0x08);
        assert!(!p.output());
        p.write(0x20, 0x68);
        assert!(p.output());
        assert_eq!(p.acknowledge(), 0x35);
        p.write(0x20, 0x20); // non-specific EOI skips the masked IRQ3
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), Some(0x08));
        p.write(0x20, 0x48); // leave special mask mode
        p.write(0x20, 0x63);
        assert_eq!(p.read(0x20), Some(0));
    }

    #[test]
    fn icw1_resets_edge_sense() {
        let mut p = linux();
        p.set_level(4, true);
        let mut q = linux();
        q.set_level(4, true);
        p.write(0x21, 0);
        assert!(p.output());
        out(&mut q, &[(0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01), (0x21, 0)]);
        assert!(!q.output(), "a line already high is no edge after ICW1");
        q.set_level(4, false);
        q.set_level(4, true);
        assert!(q.output());
        // Single mode with no ICW4: ICW3 and ICW4 are skipped.
        let mut s = Pic::new();
        out(&mut s, &[(0x20, 0x12), (0x21, 0x40), (0x21, 0x00)]);
        s.pulse(7);
        assert_eq!(s.acknowledge(), 0x47);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Out(u16, u8),
        In(u16),
        Line(u32, bool),
        Ack,
    }

    fn op() -> impl Strategy<Value = Op> {
        let port = prop_oneof![
            Just(0x20u16),
            Just(0x21),
            Just(0xa0),
            Just(0xa1),
            Just(0x4d0),
            Just(0x4d1),
            any::<u16>()
        ];
        prop_oneof![
            (port.clone(), any::<u8>()).prop_map(|(p, v)| Op::Out(p, v)),
            port.prop_map(Op::In),
            (0u32..18, any::<bool>()).prop_map(|(i, h)| Op::Line(i, h)),
            Just(Op::Ack),
        ]
    }

    proptest! {
        /// No input sequence panics; an acknowledge without INT is spurious and changes
        /// nothing; one with INT puts at most one level per chip in service.
        #[test]
        fn acknowledge_invariants(ops in proptest::collection::vec(op(), 1..120)) {
            let mut p = linux();
            for op in ops {
                match op {
                    Op::Out(port, v) => { p.write(port, v); }
                    Op::In(port) => { p.read(port); }
                    Op::Line(i, h) => p.set_level(i, h),
                    Op::Ack => {
                        let before = p.clone();
                        let v = p.acknowledge();
                        let [m, s] = &p.chips;
                        let [m0, s0] = &before.chips;
                        if !before.output() {
                            prop_assert_eq!(v, m0.base | 7);
                            prop_assert_eq!(&p, &before);
                        } else {
                            prop_assert!(v & 0xf8 == m0.base || v & 0xf8 == s0.base);
                            prop_assert!((m.isr & !m0.isr).count_ones() <= 1);
                            prop_assert!((s.isr & !s0.isr).count_ones() <= 1);
                            // Auto-EOI puts nothing in service, else the acknowledged level is.
                            let ok = if m.aeoi { m.isr == m0.isr } else { m.isr != 0 };
                            prop_assert!(ok, "in service after the acknowledge: {:#x}", m.isr);
                        }
                    }
                }
                let m = &p.chips[0];
                prop_assert_eq!(m.irr & 4 != 0, p.chips[1].pending(false).is_some());
            }
        }
    }
}
