//! The minimal PC microhv emulates for guests that expect one.
//!
//! Port I/O: dom0 owns COM2 outright (its accesses never exit) and sees nothing else. A domU
//! sees a 16550 UART at COM1 (output goes to its console; it never has input, and its line
//! status always says "transmitter empty", so polling drivers work), QEMU's debug-exit port
//! (the value written becomes its shutdown status), Bochs's shutdown port (writing
//! "Shutdown"), and the two 8259 PICs' mask registers (initialization words accepted, no
//! interrupt is ever raised). Every other port reads as all-ones and drops writes, as on a PC
//! with nothing at that address.
//!
//! MMIO: the local APIC's register page at its default address, with the registers a
//! single-CPU guest configures (ID, version, TPR, EOI, LDR, DFR, SVR, the LVTs, the timer's
//! count and divide registers). No interrupt is ever delivered.

/// COM1's I/O base.
pub const COM1: u16 = 0x3f8;
/// QEMU-style debug exit: a domU writing `v` here shuts down with status `v`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Bochs-style shutdown port.
pub const SHUTDOWN_PORT: u16 = 0x8900;
/// Master and slave PIC command ports (their data ports follow).
pub const PIC_PORTS: [u16; 2] = [0x20, 0xa0];
/// Guest-physical base of the local APIC page.
pub const APIC_BASE: u64 = 0xfee0_0000;
/// Size of the APIC page.
pub const APIC_SIZE: u64 = 0x1000;

/// What a trapped port access does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOutcome {
    /// Done; for IN, the value to return.
    Done(u32),
    /// A byte for the domain's console.
    Console(u8),
    /// The domain asked to shut down with this status.
    Shutdown(u32),
}

/// COM1's registers (what a driver programs; only THR output has an effect).
#[derive(Debug, Default, Clone, Copy)]
struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo: bool,
}

const LCR_DLAB: u8 = 0x80;
/// Line status: transmitter holding register and shift register empty.
const LSR_IDLE: u8 = 0x60;
/// Modem status: CTS, DSR, DCD.
const MSR_READY: u8 = 0xb0;

impl Uart {
    fn io(&mut self, reg: u16, write: bool, v: u8) -> IoOutcome {
        let dlab = self.lcr & LCR_DLAB != 0;
        let done = |b: u8| IoOutcome::Done(b.into());
        match (reg, write) {
            (0, true) if !dlab => IoOutcome::Console(v),
            (0, true) => {
                self.dll = v;
                done(0)
            }
            (0, false) => done(if dlab { self.dll } else { 0 }),
            (1, true) if dlab => {
                self.dlm = v;
                done(0)
            }
            (1, true) => {
                self.ier = v & 0x0f;
                done(0)
            }
            (1, false) => done(if dlab { self.dlm } else { self.ier }),
            // IIR: no interrupt pending; FIFO bits when enabled.
            (2, false) => done(if self.fifo { 0xc1 } else { 0x01 }),
            (2, true) => {
                self.fifo = v & 1 != 0;
                done(0)
            }
            (3, true) => {
                self.lcr = v;
                done(0)
            }
            (3, false) => done(self.lcr),
            (4, true) => {
                self.mcr = v & 0x1f;
                done(0)
            }
            (4, false) => done(self.mcr),
            (5, false) => done(LSR_IDLE),
            (6, false) => done(MSR_READY),
            (7, true) => {
                self.scr = v;
                done(0)
            }
            (7, false) => done(self.scr),
            // Writes to the read-only LSR / MSR are ignored, as by the hardware.
            _ => done(0),
        }
    }
}

/// One 8259: its mask, and where it is in an initialization sequence.
#[derive(Debug, Default, Clone, Copy)]
struct Pic {
    mask: u8,
    /// Initialization word expected next on the data port (2..=4), 0 when initialized.
    icw_next: u8,
    icw4: bool,
    single: bool,
}

impl Pic {
    fn io(&mut self, data_port: bool, write: bool, v: u8) -> u32 {
        match (data_port, write) {
            (false, true) => {
                if v & 0x10 != 0 {
                    // ICW1: a new initialization sequence; the mask is cleared.
                    self.icw_next = 2;
                    self.icw4 = v & 1 != 0;
                    self.single = v & 2 != 0;
                    self.mask = 0;
                }
                // OCW2 / OCW3 (EOI, read-register selects) need no state: nothing is pending.
                0
            }
            (false, false) => 0,
            (true, true) => {
                self.icw_next = match self.icw_next {
                    2 if !self.single => 3,
                    2 | 3 if self.icw4 => 4,
                    2..=4 => 0,
                    _ => {
                        self.mask = v;
                        0
                    }
                };
                0
            }
            (true, false) => self.mask.into(),
        }
    }
}

/// Per-domain emulated devices.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pc {
    uart: Uart,
    pics: [Pic; 2],
    /// Bytes of "Shutdown" matched so far on the shutdown port.
    shutdown_matched: u8,
}

impl Pc {
    /// Devices in their reset state.
    pub const fn new() -> Self {
        const PIC: Pic = Pic { mask: 0, icw_next: 0, icw4: false, single: false };
        Self {
            uart: Uart { ier: 0, lcr: 0, mcr: 0, scr: 0, dll: 0, dlm: 0, fifo: false },
            pics: [PIC; 2],
            shutdown_matched: 0,
        }
    }

    /// Handles one IN or OUT of `size` bytes; `privileged` (dom0) sees no device.
    pub fn port_io(
        &mut self,
        privileged: bool,
        port: u16,
        size: u8,
        write: bool,
        value: u32,
    ) -> IoOutcome {
        let mask = match size {
            1 => 0xff,
            2 => 0xffff,
            _ => u32::MAX,
        };
        let absent = if write { IoOutcome::Done(0) } else { IoOutcome::Done(mask) };
        if privileged {
            return absent;
        }
        let byte = value as u8;
        match port {
            COM1..=0x3ff if size == 1 => self.uart.io(port - COM1, write, byte),
            DEBUG_EXIT_PORT if write => IoOutcome::Shutdown(value & mask),
            SHUTDOWN_PORT if write && size == 1 => {
                let want = b"Shutdown";
                let i = usize::from(self.shutdown_matched);
                self.shutdown_matched = if want[i] == byte {
                    self.shutdown_matched + 1
                } else {
                    u8::from(byte == want[0])
                };
                if usize::from(self.shutdown_matched) == want.len() {
                    self.shutdown_matched = 0;
                    IoOutcome::Shutdown(0)
                } else {
                    IoOutcome::Done(0)
                }
            }
            0x20 | 0x21 | 0xa0 | 0xa1 if size == 1 => {
                let pic = &mut self.pics[usize::from(port >= 0xa0)];
                IoOutcome::Done(pic.io(port & 1 == 1, write, byte))
            }
            _ => {
                log::debug!("absent port {port:#x} ({} {size})", if write { "OUT" } else { "IN" });
                absent
            }
        }
    }

    /// The PIC masks (master, slave).
    pub fn pic_masks(&self) -> (u8, u8) {
        (self.pics[0].mask, self.pics[1].mask)
    }
}

/// Merges an IN result of `size` bytes into rax as the CPU does (a 32-bit IN zero-extends).
pub fn merge_in(rax: u64, size: u8, value: u32) -> u64 {
    merge_reg(rax, size, u64::from(value), false)
}

/// Writes `value` into a register of which an instruction wrote `size` bytes: 8- and 16-bit
/// writes keep the other bits, 32-bit writes zero-extend, `high_byte` is AH..BH.
pub fn merge_reg(old: u64, size: u8, value: u64, high_byte: bool) -> u64 {
    match (size, high_byte) {
        (1, true) => (old & !0xff00) | ((value & 0xff) << 8),
        (1, false) => (old & !0xff) | (value & 0xff),
        (2, _) => (old & !0xffff) | (value & 0xffff),
        (4, _) => value & 0xffff_ffff,
        _ => value,
    }
}

/// A vCPU's local APIC registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lapic {
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    lvt: [u32; 7],
    timer_initial: u32,
    timer_divide: u32,
}

/// xAPIC version register: version 0x14, 7 LVT entries.
pub const APIC_VERSION: u32 = 0x0006_0014;
const LVT_MASKED: u32 = 1 << 16;

impl Default for Lapic {
    fn default() -> Self {
        Self::new()
    }
}

/// Why an APIC access cannot be emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicError {
    /// Not a 32-bit access aligned on its register.
    BadAccess,
}

impl Lapic {
    /// The power-on state.
    pub const fn new() -> Self {
        Self {
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: 0xff,
            lvt: [LVT_MASKED; 7],
            timer_initial: 0,
            timer_divide: 0,
        }
    }

    fn lvt_index(off: u64) -> Option<usize> {
        match off {
            0x2f0 => Some(6), // CMCI
            0x320..=0x370 => Some(((off - 0x320) / 0x10) as usize),
            _ => None,
        }
    }

    /// Reads the register at `off` (`size` bytes) for the vCPU with APIC id `id`.
    pub fn read(&self, id: u32, off: u64, size: u8) -> Result<u32, ApicError> {
        if size != 4 || off % 16 != 0 {
            return Err(ApicError::BadAccess);
        }
        Ok(match off {
            0x20 => id << 24,
            0x30 => APIC_VERSION,
            0x80 => self.tpr,
            0xd0 => self.ldr,
            0xe0 => self.dfr,
            0xf0 => self.svr,
            0x380 => self.timer_initial,
            0x3e0 => self.timer_divide,
            o => Self::lvt_index(o).map_or(0, |i| self.lvt[i]),
        })
    }

    /// Writes the register at `off`; read-only and reserved registers ignore writes, as
    /// the hardware does.
    pub fn write(&mut self, off: u64, size: u8, v: u32) -> Result<(), ApicError> {
        if size != 4 || off % 16 != 0 {
            return Err(ApicError::BadAccess);
        }
        match off {
            0x80 => self.tpr = v & 0xff,
            0xd0 => self.ldr = v & 0xff00_0000,
            0xe0 => self.dfr = v | 0x0fff_ffff,
            0xf0 => self.svr = v & 0x13ff,
            0x380 => self.timer_initial = v,
            0x3e0 => self.timer_divide = v & 0xb,
            // A single-CPU guest has no one to send IPIs to; a flood of them must not flood the
            // log either.
            0x300 => log::debug!("APIC ICR write {v:#x}: IPIs are not delivered"),
            o => {
                if let Some(i) = Self::lvt_index(o) {
                    self.lvt[i] = v & 0x0001_f7ff;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_ports_read_all_ones_and_dom0_sees_no_device() {
        let mut pc = Pc::new();
        assert_eq!(pc.port_io(false, 0x60, 1, false, 0), IoOutcome::Done(0xff));
        assert_eq!(pc.port_io(false, 0x1f0, 2, false, 0), IoOutcome::Done(0xffff));
        assert_eq!(pc.port_io(false, 0xcf8, 4, false, 0), IoOutcome::Done(u32::MAX));
        assert_eq!(pc.port_io(true, COM1 + 5, 1, false, 0), IoOutcome::Done(0xff));
        assert_eq!(pc.port_io(true, DEBUG_EXIT_PORT, 1, true, 3), IoOutcome::Done(0));
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 1, 0xff), 0x1234_5678_9abc_deff);
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 2, 0xffff), 0x1234_5678_9abc_ffff);
        assert_eq!(merge_in(0x1234_5678_9abc_def0, 4, 7), 7);
        assert_eq!(merge_reg(0x1234, 1, 0xab, true), 0xab34);
    }

    #[test]
    fn a_polling_uart_driver_works() {
        let mut pc = Pc::new();
        // Typical init: IER off, DLAB, divisor 1, 8N1, FIFO on, RTS/DTR.
        for (r, v) in [(1, 0), (3, 0x80), (0, 1), (1, 0), (3, 3), (2, 0xc7), (4, 0x0b)] {
            assert_eq!(pc.port_io(false, COM1 + r, 1, true, v), IoOutcome::Done(0));
        }
        assert_eq!(pc.port_io(false, COM1 + 3, 1, false, 0), IoOutcome::Done(3));
        assert_eq!(pc.port_io(false, COM1 + 5, 1, false, 0), IoOutcome::Done(0x60));
        assert_eq!(pc.port_io(false, COM1 + 2, 1, false, 0), IoOutcome::Done(0xc1));
        assert_eq!(pc.port_io(false, COM1, 1, true, u32::from(b'x')), IoOutcome::Console(b'x'));
        assert_eq!(pc.port_io(false, COM1 + 7, 1, true, 0x5a), IoOutcome::Done(0));
        assert_eq!(pc.port_io(false, COM1 + 7, 1, false, 0), IoOutcome::Done(0x5a));
        assert_eq!(pc.port_io(false, COM1, 1, false, 0), IoOutcome::Done(0), "no input");
    }

    #[test]
    fn exit_ports() {
        let mut pc = Pc::new();
        assert_eq!(
            pc.port_io(false, DEBUG_EXIT_PORT, 4, true, 0x1_0007),
            IoOutcome::Shutdown(0x1_0007)
        );
        assert_eq!(pc.port_io(false, DEBUG_EXIT_PORT, 1, true, 0x1ff), IoOutcome::Shutdown(0xff));
        for b in b"ShutShutdow".iter() {
            assert_eq!(
                pc.port_io(false, SHUTDOWN_PORT, 1, true, u32::from(*b)),
                IoOutcome::Done(0)
            );
        }
        assert_eq!(
            pc.port_io(false, SHUTDOWN_PORT, 1, true, u32::from(b'n')),
            IoOutcome::Shutdown(0)
        );
    }

    #[test]
    fn pic_initialization_and_masks() {
        let mut pc = Pc::new();
        // The classic remap: ICW1 with ICW4, vectors 0x20/0x28, cascade, 8086 mode, then masks.
        for (p, v) in [(0x20, 0x11), (0xa0, 0x11), (0x21, 0x20), (0xa1, 0x28), (0x21, 4), (0xa1, 2)]
        {
            pc.port_io(false, p, 1, true, v);
        }
        pc.port_io(false, 0x21, 1, true, 1);
        pc.port_io(false, 0xa1, 1, true, 1);
        assert_eq!(pc.pic_masks(), (0, 0), "ICW4 still expected");
        pc.port_io(false, 0x21, 1, true, 0xfb);
        pc.port_io(false, 0xa1, 1, true, 0xff);
        assert_eq!(pc.pic_masks(), (0xfb, 0xff));
        assert_eq!(pc.port_io(false, 0x21, 1, false, 0), IoOutcome::Done(0xfb));
    }

    #[test]
    fn apic_registers() {
        let mut a = Lapic::new();
        assert_eq!(a.read(2, 0x20, 4), Ok(2 << 24));
        assert_eq!(a.read(0, 0x30, 4), Ok(APIC_VERSION));
        assert_eq!(a.read(0, 0xf0, 4), Ok(0xff));
        a.write(0xf0, 4, 0x1ff).unwrap();
        a.write(0x80, 4, 0x120).unwrap();
        a.write(0xb0, 4, 0).unwrap();
        a.write(0x20, 4, 0xdead).unwrap();
        assert_eq!(a.read(0, 0xf0, 4), Ok(0x1ff));
        assert_eq!(a.read(0, 0x80, 4), Ok(0x20));
        assert_eq!(a.read(0, 0x20, 4), Ok(0), "ID is read-only");
        assert_eq!(a.read(0, 0x350, 4), Ok(LVT_MASKED));
        assert_eq!(a.read(0, 0x84, 4), Err(ApicError::BadAccess));
        assert_eq!(a.write(0x80, 1, 0), Err(ApicError::BadAccess));
    }
}
