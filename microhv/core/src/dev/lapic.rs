//! A virtual local APIC, one per vCPU (Intel SDM vol. 3, "Advanced Programmable Interrupt
//! Controller" and its x2APIC section): the xAPIC register page, the x2APIC MSRs,
//! IA32_APIC_BASE and IA32_TSC_DEADLINE.
//!
//! The model never routes anything itself. An ICR write comes back as an [`IpiRequest`] and the
//! EOI of a level-triggered interrupt as an [`EoiInfo`]; the caller hands them to the other
//! vCPUs' models and to the I/O APIC. Interrupts from outside come in through [`Lapic::accept`]
//! and leave through [`Lapic::highest_deliverable`] / [`Lapic::ack`] when the backend injects.
//!
//! Decisions, where the SDM leaves a choice to the implementation:
//! - Version 0x14 with 7 LVT entries (CMCI included) and EOI-broadcast suppression advertised
//!   and honoured: the I/O APIC model is version 0x20, so a guest that suppresses the broadcast
//!   has the I/O APIC's EOI register to use instead.
//! - The timer runs at [`APIC_BUS_HZ`] unless the constructor says otherwise.
//! - The xAPIC ID register is read-only (the SDM makes writability model-specific; the ID must
//!   stay what CPUID and the ACPI tables say).
//! - IA32_APIC_BASE may relocate the page; [`Lapic::mmio_base`] says where it is. Clearing the
//!   global enable resets the registers (the SDM says their state "may be lost").
//! - Lowest-priority IPIs are sent (as a request; the caller arbitrates with [`Lapic::ppr`]),
//!   so ESR's "redirectable IPI" error never occurs. INIT level de-assert is ignored, as on the
//!   Pentium 4 and later. Remote IRR of level-triggered LINT pins is not modelled (reads 0).
//! - Accesses to reserved offsets of the xAPIC page set ESR's "illegal register address".

use super::Clock;

/// The APIC timer's default input ("bus") clock in Hz (KVM's default, 1 GHz); the platform
/// uses [`bus_hz_for`] instead.
pub const APIC_BUS_HZ: u64 = 1_000_000_000;

/// The APIC timer's input clock for a host TSC of `tsc_khz`: the TSC's own rate (halved until
/// it fits 32 bits). CPUID leaf 0x15 reports it as the crystal clock, with the TSC at an integer
/// multiple of it: Linux computes `crystal kHz × ratio` in 32 bits and takes the crystal as its
/// APIC timer rate, so only a crystal that is the TSC (or a simple fraction of it) gives an
/// exact TSC frequency, an exact APIC timer and no overflow. Guests also find it in CPUID
/// 0x4000_0010 (EBX, in kHz).
pub fn bus_hz_for(tsc_khz: u64) -> u64 {
    let hz = tsc_khz.max(1).saturating_mul(1000);
    hz / hz.div_ceil(u64::from(u32::MAX))
}
/// A periodic timer signals at most this often (µs), whatever its count: a guest programming a
/// period of a few bus ticks must not keep the host in exits (KVM bounds it likewise, with
/// `min_timer_period_us`; the PIT here too).
pub const MIN_PERIOD_US: u64 = 100;
/// The power-on guest-physical address of the register page.
pub const APIC_DEFAULT_BASE: u64 = abi::platform::LAPIC_BASE;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// The x2APIC MSR range; [`Lapic::x2apic_read`] and [`Lapic::x2apic_write`] own all of it.
pub const MSR_X2APIC: core::ops::RangeInclusive<u32> = 0x800..=0x8ff;
/// The version register: version 0x14, highest LVT index 6, EOI-broadcast suppression (bit 24).
pub const APIC_VERSION: u32 = 0x0106_0014;

const BASE_BSP: u64 = 1 << 8;
const BASE_EXTD: u64 = 1 << 10;
const BASE_EN: u64 = 1 << 11;
const SVR_ENABLE: u32 = 1 << 8;
const SVR_SUPPRESS_EOI: u32 = 1 << 12;
/// Vector, APIC enable, focus-processor checking, EOI-broadcast suppression.
const SVR_MASK: u32 = 0x13ff;
const LVT_MASKED: u32 = 1 << 16;
const LVT_LEVEL: u32 = 1 << 15;
/// Delivery status and (LINT) remote IRR: read-only, so writing them is not a reserved-bit
/// violation in x2APIC mode.
const LVT_RO: u32 = 0x5000;
const TIMER_PERIODIC: u32 = 1;
const TIMER_DEADLINE: u32 = 2;
const ICR_LEVEL: u32 = 1 << 14;
const ICR_TRIGGER: u32 = 1 << 15;
const ICR_LOGICAL: u32 = 1 << 11;
/// ICR low bits software can set: vector, mode, destination mode, level, trigger, shorthand.
const ICR_LOW_MASK: u32 = 0x000c_cfff;
const ESR_SEND_ILLEGAL: u32 = 1 << 5;
const ESR_RECV_ILLEGAL: u32 = 1 << 6;
const ESR_ILLEGAL_REG: u32 = 1 << 7;

/// The local vector table entries, in the order of their registers (CMCI's sits apart at 0x2f0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lvt {
    /// The APIC timer.
    Timer,
    /// Thermal monitor.
    Thermal,
    /// Performance-counter overflow.
    Perf,
    /// Local interrupt pin 0 (the 8259's INTR in virtual-wire mode).
    Lint0,
    /// Local interrupt pin 1 (NMI on a PC).
    Lint1,
    /// APIC internal error.
    Error,
    /// Corrected machine-check error interrupt.
    Cmci,
}

impl Lvt {
    const ALL: [Lvt; 7] =
        [Lvt::Timer, Lvt::Thermal, Lvt::Perf, Lvt::Lint0, Lvt::Lint1, Lvt::Error, Lvt::Cmci];

    /// The register index (xAPIC offset / 16, x2APIC MSR - 0x800).
    fn reg(self) -> u32 {
        match self {
            Lvt::Cmci => 0x2f,
            l => 0x32 + l as u32,
        }
    }

    /// The bits software may set: every entry has vector and mask; the timer its mode, the
    /// error entry nothing else, LINT pins polarity and trigger, the rest a delivery mode.
    fn writable(self, tsc_deadline: bool) -> u32 {
        0x100ff
            | match self {
                Lvt::Timer if tsc_deadline => 0x6_0000,
                Lvt::Timer => 0x2_0000,
                Lvt::Error => 0,
                Lvt::Lint0 | Lvt::Lint1 => 0xa700,
                _ => 0x700,
            }
    }
}

/// How an interrupt message is delivered (ICR, LVT and I/O APIC redirection entries share the
/// encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// To the vector, through IRR/ISR.
    Fixed,
    /// To the vector, on the targeted CPU with the lowest priority.
    LowestPriority,
    /// System management interrupt.
    Smi,
    /// Non-maskable interrupt.
    Nmi,
    /// INIT.
    Init,
    /// Start-up IPI; the vector is the start page.
    StartUp,
    /// The vector comes from an external 8259 via an INTA cycle.
    ExtInt,
}

impl DeliveryMode {
    /// Decodes the 3-bit field at bits 10:8 of `entry`; `None` for the reserved encoding 011.
    pub fn from_entry(entry: u32) -> Option<Self> {
        Some(match (entry >> 8) & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::StartUp,
            7 => Self::ExtInt,
            _ => return None,
        })
    }
}

/// ICR destination shorthand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shorthand {
    /// The destination field says who.
    None,
    /// The sender only.
    SelfOnly,
    /// Every APIC, the sender included.
    All,
    /// Every APIC but the sender.
    Others,
}

/// An IPI the guest sent by writing the ICR, for the caller to deliver: to every vCPU whose
/// model [`IpiRequest::targets`] (one of them, picked by [`Lapic::ppr`], for lowest priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpiRequest {
    /// The sender's APIC ID, which the shorthands are relative to.
    pub source: u32,
    /// Vector (fixed, lowest priority) or start page (start-up).
    pub vector: u8,
    /// Delivery mode; never `ExtInt`, which the ICR does not allow.
    pub mode: DeliveryMode,
    /// Logical (rather than physical) destination mode.
    pub logical: bool,
    /// Destination: 8 bits in xAPIC mode, 32 in x2APIC mode.
    pub dest: u32,
    /// Destination shorthand.
    pub shorthand: Shorthand,
    /// Level: assert (INIT de-assert never comes out of the model).
    pub level: bool,
    /// Trigger mode: level rather than edge.
    pub level_triggered: bool,
}

impl IpiRequest {
    /// Whether the local APIC `apic` is a destination of this IPI.
    pub fn targets(&self, apic: &Lapic) -> bool {
        let me = apic.id() == self.source;
        apic.hw_enabled()
            && match self.shorthand {
                Shorthand::None => apic.matches(self.dest, self.logical),
                Shorthand::SelfOnly => me,
                Shorthand::All => true,
                Shorthand::Others => !me,
            }
    }
}

/// What an EOI retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EoiInfo {
    /// The vector that was in service.
    pub vector: u8,
    /// Whether it had been accepted as level-triggered (its TMR bit).
    pub level_triggered: bool,
    /// Whether the I/O APICs get the EOI message: level-triggered and not suppressed by SVR
    /// bit 12 (the guest then writes the I/O APIC's EOI register itself).
    pub broadcast: bool,
}

/// Something a register write asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicEffect {
    /// An EOI retired an interrupt.
    Eoi(EoiInfo),
    /// An IPI to route.
    Ipi(IpiRequest),
}

/// A local interrupt whose delivery mode the model cannot complete on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalEvent {
    /// SMI to the vCPU.
    Smi,
    /// INIT to the vCPU.
    Init,
    /// Take the vector from the 8259 (LINT0 in virtual-wire mode).
    ExtInt,
}

/// Why an access to the xAPIC page cannot be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioError {
    /// Not a 32-bit access aligned on a 16-byte register, or outside the page; the SDM leaves
    /// the result undefined, so the caller decides (e.g. reads 0, drops writes).
    BadAccess,
    /// The APIC is globally disabled or in x2APIC mode, so the page is not decoded: the access
    /// goes to whatever else is at that address.
    NotDecoded,
}

/// The caller injects #GP(0) into the vCPU: the MSR access is illegal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gp;

/// The CPU features and platform a local APIC sits in. [`LapicConfig::new`] builds one; the
/// all-zero `Default` only serves [`Lapic`]'s own.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LapicConfig {
    /// The APIC ID (the x2APIC ID; its low 8 bits are the xAPIC ID).
    pub id: u32,
    /// Whether this is the bootstrap processor (IA32_APIC_BASE bit 8).
    pub bsp: bool,
    /// Timer input frequency in Hz; see [`APIC_BUS_HZ`].
    pub bus_hz: u64,
    /// The guest's MAXPHYADDR: IA32_APIC_BASE bits at and above it are reserved.
    pub phys_bits: u8,
    /// CPUID.1:ECX.x2APIC: whether x2APIC mode may be entered.
    pub x2apic: bool,
    /// CPUID.1:ECX.TSC_Deadline: whether the timer has TSC-deadline mode and the MSR exists.
    pub tsc_deadline: bool,
}

impl LapicConfig {
    /// Both x2APIC and TSC-deadline advertised, the default bus clock, 52 physical address bits
    /// (the architectural maximum: nothing that could be valid is refused).
    pub const fn new(id: u32, bsp: bool) -> Self {
        Self { id, bsp, bus_hz: APIC_BUS_HZ, phys_bits: 52, x2apic: true, tsc_deadline: true }
    }
}

/// One vCPU's local APIC. `Default` is every field zero, which is no state the hardware has:
/// [`Lapic::new`] (RESET) and [`Lapic::init`] (INIT) start from it and set the rest.
#[derive(Debug, Default, Clone)]
pub struct Lapic {
    cfg: LapicConfig,
    base: u64,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    irr: [u32; 8],
    isr: [u32; 8],
    tmr: [u32; 8],
    /// What ESR reads: errors latched at the last ESR write.
    esr: u32,
    /// Errors since the last ESR write.
    esr_pending: u32,
    icr: u64,
    lvt: [u32; 7],
    initial: u32,
    tdcr: u32,
    /// TSC when the count was last (re)based, and the counts elapsed before it (a divide change
    /// rebases so the count carries on from where it was).
    start: u64,
    pre: u64,
    /// Expirations already signalled since the initial count was written.
    fired: u64,
    /// TSC of the timer's last signal in periodic mode (0: none since it was started).
    last_irq: u64,
    deadline: u64,
    nmi: bool,
    /// An INIT or start-up IPI for the vCPU, for the core to act on (`hv/startup.rs`).
    startup: Option<Startup>,
}

/// What an INIT or start-up IPI asks of the vCPU it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    /// INIT: wait for a start-up IPI.
    Init,
    /// Start-up: leave wait-for-SIPI in real mode at page `vector`.
    Sipi(u8),
}

fn bit(a: &[u32; 8], v: u8) -> bool {
    a[usize::from(v >> 5)] & (1 << (v & 31)) != 0
}

fn set_bit(a: &mut [u32; 8], v: u8, on: bool) {
    let (w, b) = (&mut a[usize::from(v >> 5)], 1 << (v & 31));
    *w = if on { *w | b } else { *w & !b };
}

fn highest(a: &[u32; 8]) -> Option<u8> {
    let (i, w) = a.iter().enumerate().rev().find(|(_, w)| **w != 0)?;
    Some(((i as u8) << 5) | (31 - w.leading_zeros()) as u8)
}

impl Lapic {
    /// The state after RESET: enabled in xAPIC mode at the default base, software-disabled.
    pub fn new(cfg: LapicConfig) -> Self {
        let bsp = if cfg.bsp { BASE_BSP } else { 0 };
        Self::power_up(cfg, APIC_DEFAULT_BASE | BASE_EN | bsp)
    }

    fn power_up(cfg: LapicConfig, base: u64) -> Self {
        Self { cfg, base, dfr: u32::MAX, svr: 0xff, lvt: [LVT_MASKED; 7], ..Self::default() }
    }

    /// INIT: every register back to its power-up value except the ID and IA32_APIC_BASE (so
    /// the mode, x2APIC included, survives).
    pub fn init(&mut self) {
        *self = Self::power_up(self.cfg, self.base);
    }

    /// The APIC ID.
    pub fn id(&self) -> u32 {
        self.cfg.id
    }

    /// IA32_APIC_BASE.EN: the APIC exists for the guest.
    pub fn hw_enabled(&self) -> bool {
        self.base & BASE_EN != 0
    }

    /// Enabled in x2APIC mode (the MSRs, not the page, are the interface).
    pub fn x2apic_mode(&self) -> bool {
        self.base & (BASE_EN | BASE_EXTD) == BASE_EN | BASE_EXTD
    }

    /// Globally and software-enabled (SVR bit 8): fixed interrupts are accepted.
    pub fn sw_enabled(&self) -> bool {
        self.hw_enabled() && self.svr & SVR_ENABLE != 0
    }

    /// Where the register page is decoded, if anywhere (xAPIC mode only).
    pub fn mmio_base(&self) -> Option<u64> {
        (self.hw_enabled() && !self.x2apic_mode()).then_some(self.base & !0xfff)
    }

    /// RDMSR IA32_APIC_BASE.
    pub fn apic_base(&self) -> u64 {
        self.base
    }

    /// WRMSR IA32_APIC_BASE, following the SDM's x2APIC state machine: reserved bits, EN=0 with
    /// EXTD=1, x2APIC to xAPIC and disabled to x2APIC all fault. The BSP bit keeps its value.
    pub fn set_apic_base(&mut self, v: u64) -> Result<(), Gp> {
        let above_maxphys = u64::MAX.checked_shl(self.cfg.phys_bits.into()).unwrap_or(0);
        let no_x2 = if self.cfg.x2apic { 0 } else { BASE_EXTD };
        if v & (0x2ff | above_maxphys | no_x2) != 0 {
            return Err(Gp);
        }
        let (old, new) = (self.base & (BASE_EN | BASE_EXTD), v & (BASE_EN | BASE_EXTD));
        let x2 = BASE_EN | BASE_EXTD;
        if new == BASE_EXTD || (old == x2 && new == BASE_EN) || (old == 0 && new == x2) {
            return Err(Gp);
        }
        self.base = (v & !BASE_BSP) | (self.base & BASE_BSP);
        if old != 0 && new == 0 {
            self.init();
        }
        Ok(())
    }

    /// The task priority (CR8 is its top four bits).
    pub fn tpr(&self) -> u8 {
        self.tpr as u8
    }

    /// Sets the task priority, as a CR8 write or the backend's TPR shadow does.
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr.into();
    }

    /// The processor priority: the task priority or the class of the highest in-service
    /// vector, whichever is higher.
    pub fn ppr(&self) -> u8 {
        let (tpr, isrv) = (self.tpr as u8, highest(&self.isr).unwrap_or(0));
        if tpr >> 4 >= isrv >> 4 { tpr } else { isrv & 0xf0 }
    }

    fn apr(&self) -> u32 {
        let (tpr, isrv, irrv) =
            (self.tpr as u8, highest(&self.isr).unwrap_or(0), highest(&self.irr).unwrap_or(0));
        let a = if tpr >> 4 >= irrv >> 4 && tpr >> 4 > isrv >> 4 {
            tpr
        } else {
            tpr.max(isrv).max(irrv) & 0xf0
        };
        a.into()
    }

    fn ldr(&self) -> u32 {
        if self.x2apic_mode() {
            ((self.cfg.id >> 4) << 16) | (1 << (self.cfg.id & 0xf))
        } else {
            self.ldr
        }
    }

    /// Whether this APIC is addressed by destination `dest` in physical or logical mode, read
    /// the way this APIC's mode reads it: 32 bits (clusters of 16) in x2APIC mode, 8 bits
    /// (flat or cluster per DFR) in xAPIC mode. All-ones is a broadcast in every format.
    pub fn matches(&self, dest: u32, logical: bool) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        if self.x2apic_mode() {
            let ldr = self.ldr();
            return dest == u32::MAX
                || if logical {
                    dest >> 16 == ldr >> 16 && dest & ldr & 0xffff != 0
                } else {
                    dest == self.cfg.id
                };
        }
        let (d, ldr) = (dest & 0xff, self.ldr >> 24);
        d == 0xff
            || match (logical, self.dfr >> 28) {
                (false, _) => d == self.cfg.id & 0xff,
                (true, 0xf) => d & ldr != 0,
                (true, _) => d >> 4 == ldr >> 4 && d & ldr & 0xf != 0,
            }
    }

    /// Takes an interrupt into IRR (from the I/O APIC, an IPI, or an MSI), recording its trigger
    /// mode in TMR as the SDM says acceptance does. Returns whether the vector is newly pending.
    /// Fixed interrupts are dropped while the APIC is software-disabled, and vectors 0-15 set
    /// ESR's "received illegal vector" instead.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if !self.sw_enabled() {
            return false;
        }
        if vector < 16 {
            self.error(ESR_RECV_ILLEGAL);
            return false;
        }
        set_bit(&mut self.tmr, vector, level_triggered);
        let new = !bit(&self.irr, vector);
        set_bit(&mut self.irr, vector, true);
        new
    }

    /// An NMI for this vCPU (NMI IPI, LINT1, or an NMI redirection entry).
    pub fn nmi(&mut self) {
        self.nmi = true;
    }

    /// An INIT or start-up IPI arrived; the latest one is kept.
    pub fn start(&mut self, s: Startup) {
        self.startup = Some(s);
    }

    /// Consumes the INIT or start-up IPI that arrived, if any.
    pub fn take_startup(&mut self) -> Option<Startup> {
        self.startup.take()
    }

    /// Whether an INIT or start-up IPI waits to be acted on.
    pub fn startup_pending(&self) -> bool {
        self.startup.is_some()
    }

    /// Whether an NMI waits to be injected.
    pub fn nmi_pending(&self) -> bool {
        self.nmi
    }

    /// Consumes the pending NMI, when the backend injects it.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi)
    }

    /// The vector to inject next: the highest pending one whose priority class is above the
    /// processor priority's.
    pub fn highest_deliverable(&self) -> Option<u8> {
        let v = highest(&self.irr).filter(|_| self.hw_enabled())?;
        (v & 0xf0 > self.ppr() & 0xf0).then_some(v)
    }

    /// The backend injected `vector`: it moves from IRR to ISR (its TMR bit was set at
    /// acceptance). Returns false, changing nothing, if it was not pending.
    pub fn ack(&mut self, vector: u8) -> bool {
        if !bit(&self.irr, vector) {
            return false;
        }
        set_bit(&mut self.irr, vector, false);
        set_bit(&mut self.isr, vector, true);
        true
    }

    /// An EOI: retires the highest in-service vector (none: nothing happens).
    pub fn eoi(&mut self) -> Option<EoiInfo> {
        let vector = highest(&self.isr)?;
        set_bit(&mut self.isr, vector, false);
        let level_triggered = bit(&self.tmr, vector);
        let broadcast = level_triggered && self.svr & SVR_SUPPRESS_EOI == 0;
        Some(EoiInfo { vector, level_triggered, broadcast })
    }

    /// Whether the 8259's INTR reaches this CPU directly: the APIC is globally disabled (a CPU
    /// without APIC), or LINT0 is unmasked in ExtINT mode (virtual wire).
    pub fn accepts_pic_intr(&self) -> bool {
        let l = self.lvt[Lvt::Lint0 as usize];
        !self.hw_enabled() || (l & LVT_MASKED == 0 && (l >> 8) & 7 == 7)
    }

    /// A local source signals through its LVT entry (LINT pins, thermal, performance counters,
    /// CMCI). Fixed and NMI delivery happen here; SMI, INIT and ExtINT are handed back.
    pub fn raise_lvt(&mut self, which: Lvt) -> Option<LocalEvent> {
        let e = self.lvt[which as usize];
        if !self.hw_enabled() || e & LVT_MASKED != 0 {
            return None;
        }
        let mode = if matches!(which, Lvt::Timer | Lvt::Error) {
            DeliveryMode::Fixed
        } else {
            DeliveryMode::from_entry(e)?
        };
        match mode {
            DeliveryMode::Fixed => {
                let lint = matches!(which, Lvt::Lint0 | Lvt::Lint1);
                self.accept(e as u8, lint && e & LVT_LEVEL != 0);
            }
            DeliveryMode::Nmi => self.nmi = true,
            DeliveryMode::Smi => return Some(LocalEvent::Smi),
            DeliveryMode::Init => return Some(LocalEvent::Init),
            DeliveryMode::ExtInt => return Some(LocalEvent::ExtInt),
            DeliveryMode::LowestPriority | DeliveryMode::StartUp => {}
        }
        None
    }

    /// Records an internal error and signals it through the error LVT. Not via `accept`: an
    /// illegal error vector would report itself forever.
    fn error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let e = self.lvt[Lvt::Error as usize];
        if self.sw_enabled() && e & LVT_MASKED == 0 && e as u8 >= 16 {
            set_bit(&mut self.tmr, e as u8, false);
            set_bit(&mut self.irr, e as u8, true);
        }
    }

    fn timer_mode(&self) -> u32 {
        (self.lvt[Lvt::Timer as usize] >> 17) & 3
    }

    fn divisor(&self) -> u64 {
        match (self.tdcr & 3) | ((self.tdcr >> 1) & 4) {
            7 => 1,
            n => 2 << n,
        }
    }

    /// Counts elapsed since the initial count was written.
    fn elapsed(&self, c: &Clock) -> u64 {
        self.pre.saturating_add(c.device_ticks(self.start, self.cfg.bus_hz) / self.divisor())
    }

    fn counting(&self) -> bool {
        self.initial != 0 && self.timer_mode() != TIMER_DEADLINE
    }

    fn current_count(&self, c: &Clock) -> u32 {
        if !self.counting() {
            return 0;
        }
        let (init, e) = (u64::from(self.initial), self.elapsed(c));
        let cur = if self.timer_mode() == TIMER_PERIODIC {
            init - e % init
        } else {
            init.saturating_sub(e)
        };
        u32::try_from(cur).unwrap_or(0)
    }

    /// The earliest TSC of the periodic timer's next signal under [`MIN_PERIOD_US`].
    fn not_before(&self, c: &Clock) -> u64 {
        match self.last_irq {
            0 => 0,
            t => t.saturating_add(c.tsc_khz.saturating_mul(MIN_PERIOD_US) / 1000),
        }
    }

    /// The TSC at which the timer next signals, or `None` if it will not (stopped, one-shot
    /// spent, masked, or TSC-deadline disarmed). A periodic timer signals at most every
    /// [`MIN_PERIOD_US`].
    pub fn next_deadline(&self, c: &Clock) -> Option<u64> {
        if !self.hw_enabled() || self.lvt[Lvt::Timer as usize] & LVT_MASKED != 0 {
            return None;
        }
        if self.timer_mode() == TIMER_DEADLINE {
            return (self.deadline != 0).then_some(self.deadline);
        }
        let init = u64::from(self.initial);
        let target = if !self.counting() {
            return None;
        } else if self.timer_mode() == TIMER_PERIODIC {
            self.fired.saturating_add(1).saturating_mul(init)
        } else if self.fired == 0 {
            init
        } else {
            return None;
        };
        let ticks = target.saturating_sub(self.pre).saturating_mul(self.divisor());
        Some(c.tsc_after(self.start, ticks, self.cfg.bus_hz).max(self.not_before(c)))
    }

    /// Signals the timer if it expired by `c.now` (into IRR, or nowhere while masked; missed
    /// periods coalesce as IRR does). Returns whether it expired.
    pub fn update_timer(&mut self, c: &Clock) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        let expired = if self.timer_mode() == TIMER_DEADLINE {
            let hit = self.deadline != 0 && c.now >= self.deadline;
            if hit {
                self.deadline = 0;
            }
            hit
        } else if self.counting() {
            let e = self.elapsed(c);
            let periodic = self.timer_mode() == TIMER_PERIODIC;
            let n = if periodic {
                e / u64::from(self.initial)
            } else {
                u64::from(e >= u64::from(self.initial))
            };
            // Periods shorter than MIN_PERIOD_US coalesce (the count itself stays exact).
            let hit = n > self.fired && c.now >= self.not_before(c);
            if hit {
                self.fired = n;
                if periodic {
                    self.last_irq = c.now.max(1);
                }
            }
            hit
        } else {
            false
        };
        if expired {
            self.raise_lvt(Lvt::Timer);
        }
        expired
    }

    /// RDMSR IA32_TSC_DEADLINE: the armed deadline in TSC-deadline mode, else 0. The value is
    /// in the [`Clock`]'s timebase; the caller applies the guest's TSC offset.
    pub fn tsc_deadline(&self) -> Result<u64, Gp> {
        if !self.cfg.tsc_deadline {
            return Err(Gp);
        }
        Ok(if self.timer_mode() == TIMER_DEADLINE { self.deadline } else { 0 })
    }

    /// WRMSR IA32_TSC_DEADLINE: arms (non-zero) or disarms (zero) the timer in TSC-deadline
    /// mode; ignored in the other modes, as the SDM says.
    pub fn set_tsc_deadline(&mut self, v: u64) -> Result<(), Gp> {
        if !self.cfg.tsc_deadline {
            return Err(Gp);
        }
        if self.timer_mode() == TIMER_DEADLINE {
            self.deadline = v;
        }
        Ok(())
    }

    /// Reads register `offset` of the xAPIC page. Reserved offsets read 0 and set ESR's
    /// "illegal register address".
    pub fn mmio_read(&mut self, offset: u64, size: u8, c: &Clock) -> Result<u32, MmioError> {
        let r = self.mmio_reg(offset, size)?;
        let v = self.read_reg(r, false, c);
        if v.is_none() {
            self.error(ESR_ILLEGAL_REG);
        }
        Ok(v.unwrap_or(0) as u32)
    }

    /// Writes register `offset` of the xAPIC page. Writes to read-only registers are dropped;
    /// to reserved offsets, they set ESR's "illegal register address".
    pub fn mmio_write(
        &mut self,
        offset: u64,
        size: u8,
        value: u32,
        c: &Clock,
    ) -> Result<Option<ApicEffect>, MmioError> {
        let r = self.mmio_reg(offset, size)?;
        let effect = self.write_reg(r, value.into(), false, c);
        if effect.is_err() {
            self.error(ESR_ILLEGAL_REG);
        }
        Ok(effect.unwrap_or(None))
    }

    fn mmio_reg(&self, offset: u64, size: u8) -> Result<u32, MmioError> {
        if self.mmio_base().is_none() {
            Err(MmioError::NotDecoded)
        } else if size != 4 || !offset.is_multiple_of(16) || offset > 0xff0 {
            Err(MmioError::BadAccess)
        } else {
            Ok((offset >> 4) as u32)
        }
    }

    /// RDMSR of an x2APIC register. #GP outside x2APIC mode, for write-only registers (EOI,
    /// SELF IPI), and for registers x2APIC does not have (APR, RRD, DFR, ICR high, reserved).
    pub fn x2apic_read(&self, msr: u32, c: &Clock) -> Result<u64, Gp> {
        let r = self.x2apic_reg(msr)?;
        self.read_reg(r, true, c).ok_or(Gp)
    }

    /// WRMSR of an x2APIC register. #GP outside x2APIC mode, for read-only registers, for
    /// registers x2APIC does not have, and for set reserved bits (bits 63:32 of everything but
    /// the ICR, non-zero EOI and ESR writes).
    pub fn x2apic_write(
        &mut self,
        msr: u32,
        value: u64,
        c: &Clock,
    ) -> Result<Option<ApicEffect>, Gp> {
        let r = self.x2apic_reg(msr)?;
        if r != 0x30 && value >> 32 != 0 {
            return Err(Gp);
        }
        self.write_reg(r, value, true, c).map_err(|()| Gp)
    }

    fn x2apic_reg(&self, msr: u32) -> Result<u32, Gp> {
        if self.x2apic_mode() && MSR_X2APIC.contains(&msr) { Ok(msr - 0x800) } else { Err(Gp) }
    }

    /// Register `r` (offset / 16); `None` if there is no such readable register in this mode.
    fn read_reg(&self, r: u32, x2: bool, c: &Clock) -> Option<u64> {
        let arr = |a: &[u32; 8], first: u32| a.get(r.wrapping_sub(first) as usize).copied();
        let v = match r {
            0x02 if x2 => self.cfg.id,
            0x02 => (self.cfg.id & 0xff) << 24,
            0x03 => APIC_VERSION,
            0x08 => self.tpr,
            0x09 if !x2 => self.apr(),
            0x0a => self.ppr().into(),
            0x0b | 0x0c if !x2 => 0,
            0x0d => self.ldr(),
            0x0e if !x2 => self.dfr,
            0x0f => self.svr,
            0x10..=0x17 => arr(&self.isr, 0x10)?,
            0x18..=0x1f => arr(&self.tmr, 0x18)?,
            0x20..=0x27 => arr(&self.irr, 0x20)?,
            0x28 => self.esr,
            0x30 if x2 => return Some(self.icr),
            0x30 => self.icr as u32,
            0x31 if !x2 => (self.icr >> 32) as u32,
            0x38 => self.initial,
            0x39 => self.current_count(c),
            0x3e => self.tdcr,
            _ => self.lvt_of(r).map(|l| self.lvt[l as usize])?,
        };
        Some(v.into())
    }

    fn lvt_of(&self, r: u32) -> Option<Lvt> {
        Lvt::ALL.iter().copied().find(|l| l.reg() == r)
    }

    /// Writes register `r`. `Err` means: no such writable register, or (x2APIC) a read-only
    /// one or reserved bits set. xAPIC read-only registers drop the write.
    fn write_reg(&mut self, r: u32, v: u64, x2: bool, c: &Clock) -> Result<Option<ApicEffect>, ()> {
        let rsvd = |mask: u64| if x2 && v & !mask != 0 { Err(()) } else { Ok(()) };
        let v32 = v as u32;
        match r {
            0x02 | 0x03 | 0x09 | 0x0a | 0x0c | 0x10..=0x27 | 0x39 if !x2 => {}
            0x08 => {
                rsvd(0xff)?;
                self.tpr = v32 & 0xff;
            }
            0x0b => {
                rsvd(0)?;
                return Ok(self.eoi().map(ApicEffect::Eoi));
            }
            0x0d if !x2 => self.ldr = v32 & 0xff00_0000,
            0x0e if !x2 => self.dfr = v32 | 0x0fff_ffff,
            0x0f => {
                rsvd(SVR_MASK.into())?;
                self.svr = v32 & SVR_MASK;
                if self.svr & SVR_ENABLE == 0 {
                    self.lvt.iter_mut().for_each(|l| *l |= LVT_MASKED);
                }
            }
            0x28 => {
                rsvd(0)?;
                self.esr = core::mem::take(&mut self.esr_pending);
            }
            0x30 if x2 => {
                rsvd(0xffff_ffff_0000_0000 | u64::from(ICR_LOW_MASK))?;
                self.icr = v;
                return Ok(self.send());
            }
            0x30 => {
                self.icr = (self.icr & !0xffff_ffff) | u64::from(v32 & ICR_LOW_MASK);
                return Ok(self.send());
            }
            0x31 if !x2 => {
                self.icr = (self.icr & 0xffff_ffff) | (u64::from(v32 & 0xff00_0000) << 32)
            }
            0x38 => {
                if self.timer_mode() != TIMER_DEADLINE {
                    (self.initial, self.start, self.pre, self.fired) = (v32, c.now, 0, 0);
                    self.last_irq = 0;
                }
            }
            0x3e => {
                rsvd(0xb)?;
                self.pre = if self.counting() { self.elapsed(c) } else { 0 };
                self.start = c.now;
                self.tdcr = v32 & 0xb;
            }
            0x3f if x2 => {
                rsvd(0xff)?;
                if v32 < 16 {
                    self.error(ESR_SEND_ILLEGAL);
                } else {
                    self.accept(v as u8, false);
                }
            }
            _ => {
                let l = self.lvt_of(r).ok_or(())?;
                let writable = l.writable(self.cfg.tsc_deadline);
                rsvd((writable | LVT_RO).into())?;
                self.write_lvt(l, v32 & writable, c);
            }
        }
        Ok(None)
    }

    fn write_lvt(&mut self, l: Lvt, v: u32, c: &Clock) {
        let v = if self.svr & SVR_ENABLE == 0 { v | LVT_MASKED } else { v };
        if l == Lvt::Timer {
            // Expirations while masked are lost, not delivered on unmask.
            self.update_timer(c);
            if (v >> 17) & 3 != self.timer_mode() {
                (self.initial, self.deadline, self.fired) = (0, 0, 0);
            }
        }
        self.lvt[l as usize] = v;
    }

    /// Acts on the ICR just written.
    fn send(&mut self) -> Option<ApicEffect> {
        let lo = self.icr as u32;
        let (vector, level, trig) = (lo as u8, lo & ICR_LEVEL != 0, lo & ICR_TRIGGER != 0);
        let mode = DeliveryMode::from_entry(lo)?;
        if mode == DeliveryMode::ExtInt || (mode == DeliveryMode::Init && trig && !level) {
            return None;
        }
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.error(ESR_SEND_ILLEGAL);
            return None;
        }
        let shorthand = [Shorthand::None, Shorthand::SelfOnly, Shorthand::All, Shorthand::Others]
            [((lo >> 18) & 3) as usize];
        if shorthand == Shorthand::SelfOnly && mode == DeliveryMode::Fixed {
            self.accept(vector, false);
            return None;
        }
        let dest =
            if self.x2apic_mode() { (self.icr >> 32) as u32 } else { (self.icr >> 56) as u32 };
        Some(ApicEffect::Ipi(IpiRequest {
            source: self.cfg.id,
            vector,
            mode,
            logical: lo & ICR_LOGICAL != 0,
            dest,
            shorthand,
            level,
            level_triggered: trig,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;

    /// A 1 GHz TSC, so TSC ticks and bus ticks coincide at the default bus clock.
    fn at(now: u64) -> Clock {
        Clock { now, tsc_khz: 1_000_000 }
    }

    fn enabled(id: u32) -> Lapic {
        let mut a = Lapic::new(LapicConfig::new(id, id == 0));
        a.mmio_write(0xf0, 4, 0x1ff, &at(0)).unwrap();
        a
    }

    fn rd(a: &mut Lapic, off: u64) -> u32 {
        a.mmio_read(off, 4, &at(0)).unwrap()
    }

    fn wr(a: &mut Lapic, off: u64, v: u32) -> Option<ApicEffect> {
        a.mmio_write(off, 4, v, &at(0)).unwrap()
    }

    fn x2(id: u32) -> Lapic {
        let mut a = enabled(id);
        a.set_apic_base(APIC_DEFAULT_BASE | BASE_EN | BASE_EXTD).unwrap();
        a
    }

    #[test]
    fn power_up_state() {
        let mut a = Lapic::new(LapicConfig::new(3, true));
        assert_eq!(a.apic_base(), 0xfee0_0900);
        assert_eq!(rd(&mut a, 0x20), 3 << 24);
        assert_eq!(rd(&mut a, 0x30), 0x0106_0014, "version 0x14, max LVT 6, EOI suppression");
        assert_eq!(rd(&mut a, 0xf0), 0xff);
        assert_eq!(rd(&mut a, 0xe0), u32::MAX);
        for off in [0x2f0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            assert_eq!(rd(&mut a, off), LVT_MASKED);
        }
        assert!(!a.sw_enabled());
        assert!(!a.accept(0x40, false), "software-disabled: fixed interrupts are dropped");
        wr(&mut a, 0x20, 0x0700_0000);
        assert_eq!(rd(&mut a, 0x20), 3 << 24, "ID is read-only");
    }

    #[test]
    fn tpr_and_isr_gate_delivery() {
        let mut a = enabled(0);
        wr(&mut a, 0x80, 0x50);
        assert!(a.accept(0x51, false));
        assert!(!a.accept(0x51, false), "already pending");
        assert_eq!(a.highest_deliverable(), None, "same class as TPR");
        wr(&mut a, 0x80, 0x4f);
        assert_eq!(a.highest_deliverable(), Some(0x51));
        assert_eq!(rd(&mut a, 0xa0), 0x4f);
        assert!(a.ack(0x51));
        assert_eq!(rd(&mut a, 0xa0), 0x50, "PPR takes the in-service class");
        assert_eq!(rd(&mut a, 0x100 + 0x20), 1 << (0x51 - 0x40), "ISR word 2");
        a.accept(0x5f, false);
        assert_eq!(a.highest_deliverable(), None, "same class as the in-service vector");
        a.accept(0x60, false);
        assert_eq!(a.highest_deliverable(), Some(0x60));
        assert_eq!(rd(&mut a, 0x90), 0x60, "APR: the pending class wins");
        a.set_tpr(0xf0);
        assert_eq!(a.highest_deliverable(), None);
        assert_eq!(rd(&mut a, 0x80), 0xf0);
        assert!(!a.ack(0x70), "not pending");
    }

    #[test]
    fn eoi_reports_level_and_honours_suppression() {
        let mut a = enabled(0);
        a.accept(0x30, true);
        a.accept(0x40, false);
        assert_eq!(rd(&mut a, 0x180 + 0x10), 1 << 16, "TMR set at acceptance");
        a.ack(0x40);
        a.ack(0x30);
        let e = wr(&mut a, 0xb0, 0);
        assert_eq!(
            e,
            Some(ApicEffect::Eoi(EoiInfo {
                vector: 0x40,
                level_triggered: false,
                broadcast: false
            }))
        );
        let e = wr(&mut a, 0xb0, 0);
        assert_eq!(
            e,
            Some(ApicEffect::Eoi(EoiInfo { vector: 0x30, level_triggered: true, broadcast: true }))
        );
        assert_eq!(wr(&mut a, 0xb0, 0), None, "nothing in service");
        wr(&mut a, 0xf0, 0x11ff);
        a.accept(0x30, true);
        a.ack(0x30);
        let info = a.eoi().unwrap();
        assert!(info.level_triggered && !info.broadcast, "SVR bit 12 suppresses the broadcast");
    }

    #[test]
    fn esr_is_write_then_read_and_illegal_vectors_are_refused() {
        let mut a = enabled(0);
        assert!(!a.accept(7, false));
        assert_eq!(rd(&mut a, 0x280), 0, "errors show only after an ESR write");
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), ESR_RECV_ILLEGAL);
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), 0);
        // An unmasked error LVT signals; sending a fixed IPI with vector 3 is an error too.
        wr(&mut a, 0x370, 0xfe);
        assert_eq!(wr(&mut a, 0x300, 0x4003), None);
        assert_eq!(a.highest_deliverable(), Some(0xfe));
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), ESR_SEND_ILLEGAL);
        assert_eq!(rd(&mut a, 0x3f0), 0, "SELF IPI does not exist in xAPIC mode");
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), ESR_ILLEGAL_REG);
    }

    #[test]
    fn software_disable_masks_the_lvts() {
        let mut a = enabled(0);
        wr(&mut a, 0x350, 0x700);
        assert!(a.accepts_pic_intr(), "LINT0 in ExtINT mode: virtual wire");
        wr(&mut a, 0x360, 0x400);
        assert_eq!(a.raise_lvt(Lvt::Lint1), None);
        assert!(a.take_nmi() && !a.nmi_pending());
        assert_eq!(a.raise_lvt(Lvt::Lint0), Some(LocalEvent::ExtInt));
        wr(&mut a, 0xf0, 0xff);
        assert_eq!(rd(&mut a, 0x350), 0x10700);
        wr(&mut a, 0x320, 0x20);
        assert_eq!(rd(&mut a, 0x320), 0x10020, "cannot unmask while software-disabled");
        assert!(!a.accepts_pic_intr());
        wr(&mut a, 0xf0, 0x1ff);
        wr(&mut a, 0x360, 0x1_ffff);
        assert_eq!(rd(&mut a, 0x360), 0x1_a7ff, "delivery status and remote IRR are read-only");
        wr(&mut a, 0x370, 0xffff_ffff);
        assert_eq!(rd(&mut a, 0x370), 0x1_00ff, "the error LVT has only vector and mask");
    }

    #[test]
    fn one_shot_timer_counts_from_the_clock() {
        // A 2 GHz TSC, the 1 GHz bus, divide by 2: one count is 4 TSC ticks.
        let c = |now| Clock { now, tsc_khz: 2_000_000 };
        let mut a = enabled(0);
        a.mmio_write(0x320, 4, 0x31, &c(1000)).unwrap();
        a.mmio_write(0x3e0, 4, 0, &c(1000)).unwrap();
        a.mmio_write(0x380, 4, 1000, &c(1000)).unwrap();
        assert_eq!(a.mmio_read(0x390, 4, &c(1000)), Ok(1000));
        assert_eq!(a.mmio_read(0x390, 4, &c(1000 + 2000)), Ok(500));
        assert_eq!(a.next_deadline(&c(1000)), Some(5000));
        assert!(!a.update_timer(&c(4999)));
        assert_eq!(a.highest_deliverable(), None);
        assert!(a.update_timer(&c(5000)));
        assert_eq!(a.highest_deliverable(), Some(0x31));
        assert!(!a.update_timer(&c(90_000)), "one shot");
        assert_eq!(a.next_deadline(&c(90_000)), None);
        assert_eq!(a.mmio_read(0x390, 4, &c(90_000)), Ok(0));
        assert_eq!(a.mmio_read(0x380, 4, &c(90_000)), Ok(1000));
        // Writing 0 stops the timer.
        a.mmio_write(0x380, 4, 1000, &c(100_000)).unwrap();
        a.mmio_write(0x380, 4, 0, &c(100_001)).unwrap();
        assert_eq!(a.next_deadline(&c(100_001)), None);
    }

    #[test]
    fn periodic_timer_reloads_and_coalesces() {
        // Times in TSC ticks of a 1 GHz clock; the period (100 µs) is the shortest allowed.
        const K: u64 = 1000;
        let mut a = enabled(0);
        wr(&mut a, 0x3e0, 0xb); // divide by 1
        let bus = |ticks: u64| (ticks * APIC_BUS_HZ / 1_000_000_000) as u32;
        a.mmio_write(0x320, 4, 0x2_0040, &at(0)).unwrap();
        a.mmio_write(0x380, 4, bus(100 * K), &at(1000 * K)).unwrap();
        assert_eq!(a.mmio_read(0x390, 4, &at(1050 * K)), Ok(bus(50 * K)));
        assert_eq!(a.next_deadline(&at(1050 * K)), Some(1100 * K));
        assert_eq!(a.mmio_read(0x390, 4, &at(1100 * K)), Ok(bus(100 * K)), "reloaded");
        assert!(a.update_timer(&at(1250 * K)), "two periods: one interrupt, IRR coalesces");
        assert_eq!(a.next_deadline(&at(1250 * K)), Some(1350 * K), "not before 100 µs later");
        a.ack(0x40);
        assert!(!a.update_timer(&at(1349 * K)));
        assert!(a.update_timer(&at(1350 * K)));
        assert!(a.eoi().is_some() && a.ack(0x40) && a.eoi().is_some());
        // Masked: the timer runs, but nothing is delivered, then or on unmask.
        a.mmio_write(0x320, 4, 0x3_0040, &at(1400 * K)).unwrap();
        assert_eq!(a.next_deadline(&at(1400 * K)), None);
        assert!(a.update_timer(&at(5000 * K)));
        a.mmio_write(0x320, 4, 0x2_0040, &at(9000 * K)).unwrap();
        assert_eq!(a.highest_deliverable(), None);
    }

    #[test]
    fn a_divide_change_carries_the_count_on() {
        let mut a = enabled(0);
        wr(&mut a, 0x3e0, 0xb); // divide by 1
        a.mmio_write(0x320, 4, 0x40, &at(0)).unwrap(); // one-shot
        a.mmio_write(0x380, 4, 100, &at(1000)).unwrap();
        // 30 counts left at 1070, then 8 ticks per count.
        a.mmio_write(0x3e0, 4, 2, &at(1070)).unwrap();
        assert_eq!(a.mmio_read(0x390, 4, &at(1070)), Ok(30));
        assert_eq!(a.mmio_read(0x390, 4, &at(1070 + 80)), Ok(20));
        assert_eq!(a.next_deadline(&at(1070)), Some(1070 + 240));
    }

    #[test]
    fn a_tiny_period_signals_at_most_every_min_period() {
        let mut a = enabled(0);
        wr(&mut a, 0x3e0, 0xb);
        a.mmio_write(0x320, 4, 0x2_0040, &at(0)).unwrap();
        a.mmio_write(0x380, 4, 1, &at(0)).unwrap(); // one bus tick
        assert!(a.update_timer(&at(10)));
        let min = MIN_PERIOD_US * 1000; // ticks of the 1 GHz test clock
        assert_eq!(a.next_deadline(&at(10)), Some(10 + min));
        a.ack(0x40);
        a.eoi();
        assert!(!a.update_timer(&at(9 + min)));
        assert!(a.update_timer(&at(10 + min)));
    }

    #[test]
    fn tsc_deadline_mode() {
        let mut a = enabled(0);
        assert_eq!(a.set_tsc_deadline(500), Ok(()));
        assert_eq!(a.tsc_deadline(), Ok(0), "ignored outside TSC-deadline mode");
        a.mmio_write(0x380, 4, 100, &at(0)).unwrap();
        wr(&mut a, 0x320, 0x4_00ec);
        assert_eq!(a.mmio_read(0x380, 4, &at(0)), Ok(0), "the mode change disarmed the count");
        a.mmio_write(0x380, 4, 100, &at(0)).unwrap();
        assert_eq!(a.mmio_read(0x390, 4, &at(10)), Ok(0), "counts are ignored in this mode");
        a.set_tsc_deadline(5000).unwrap();
        assert_eq!(a.tsc_deadline(), Ok(5000));
        assert_eq!(a.next_deadline(&at(0)), Some(5000));
        assert!(!a.update_timer(&at(4999)));
        assert!(a.update_timer(&at(5000)));
        assert_eq!(a.tsc_deadline(), Ok(0), "firing disarms");
        assert_eq!(a.highest_deliverable(), Some(0xec));
        a.set_tsc_deadline(6000).unwrap();
        wr(&mut a, 0x320, 0x2_00ec);
        assert_eq!(a.next_deadline(&at(0)), None, "leaving the mode disarms");
        let mut cfg = LapicConfig::new(0, true);
        cfg.tsc_deadline = false;
        let mut b = Lapic::new(cfg);
        assert_eq!(b.tsc_deadline(), Err(Gp));
        assert_eq!(b.set_tsc_deadline(1), Err(Gp));
        b.mmio_write(0xf0, 4, 0x100, &at(0)).unwrap();
        b.mmio_write(0x320, 4, 0x6_0000, &at(0)).unwrap();
        assert_eq!(b.mmio_read(0x320, 4, &at(0)), Ok(0x2_0000), "bit 18 is reserved");
    }

    #[test]
    fn apic_base_state_machine() {
        let mut a = enabled(1);
        let base = APIC_DEFAULT_BASE;
        assert_eq!(a.set_apic_base(base | BASE_EXTD), Err(Gp), "EN=0 EXTD=1 is invalid");
        assert_eq!(a.set_apic_base(base | BASE_EN | 1), Err(Gp), "reserved bit");
        assert_eq!(a.set_apic_base(base | BASE_EN | (1 << 52)), Err(Gp), "above MAXPHYADDR");
        assert_eq!(a.set_apic_base(0xfed0_0000 | BASE_EN), Ok(()), "relocation is accepted");
        assert_eq!(a.mmio_base(), Some(0xfed0_0000));
        assert_eq!(a.apic_base(), 0xfed0_0800, "BSP bit unchanged (clear on an AP)");
        assert_eq!(a.set_apic_base(base | BASE_EN | BASE_EXTD), Ok(()));
        assert!(a.x2apic_mode() && a.mmio_base().is_none());
        assert_eq!(a.mmio_read(0x20, 4, &at(0)), Err(MmioError::NotDecoded));
        assert_eq!(a.set_apic_base(base | BASE_EN), Err(Gp), "x2APIC to xAPIC");
        assert_eq!(a.set_apic_base(base), Ok(()));
        assert!(!a.hw_enabled());
        assert_eq!(a.x2apic_read(0x802, &at(0)), Err(Gp));
        assert_eq!(a.set_apic_base(base | BASE_EN | BASE_EXTD), Err(Gp), "disabled to x2APIC");
        assert_eq!(a.set_apic_base(base | BASE_EN), Ok(()));
        assert_eq!(rd(&mut a, 0xf0), 0xff, "disabling reset the registers");
        assert_eq!(a.x2apic_read(0x802, &at(0)), Err(Gp), "MSRs #GP in xAPIC mode");
        let mut cfg = LapicConfig::new(0, true);
        cfg.x2apic = false;
        let mut b = Lapic::new(cfg);
        assert_eq!(b.set_apic_base(base | BASE_EN | BASE_EXTD | BASE_BSP), Err(Gp));
        // INIT keeps the mode and the ID, resets the rest.
        let mut c = x2(5);
        c.x2apic_write(0x808, 0x20, &at(0)).unwrap();
        c.init();
        assert!(c.x2apic_mode());
        assert_eq!(c.x2apic_read(0x808, &at(0)), Ok(0));
        assert_eq!(c.x2apic_read(0x802, &at(0)), Ok(5));
    }

    #[test]
    fn x2apic_msr_rules() {
        let mut a = x2(0x23);
        let c = at(0);
        assert_eq!(a.x2apic_read(0x802, &c), Ok(0x23), "the full 32-bit ID");
        assert_eq!(a.x2apic_read(0x80d, &c), Ok(0x0002_0008), "LDR: cluster 2, bit 3");
        assert_eq!(a.x2apic_read(0x803, &c), Ok(u64::from(APIC_VERSION)));
        for absent in [0x800, 0x809, 0x80c, 0x80e, 0x831, 0x83a, 0x840, 0x8ff] {
            assert_eq!(a.x2apic_read(absent, &c), Err(Gp), "{absent:#x}");
        }
        assert_eq!(a.x2apic_read(0x80b, &c), Err(Gp), "EOI is write-only");
        assert_eq!(a.x2apic_read(0x83f, &c), Err(Gp), "SELF IPI is write-only");
        for ro in [0x802, 0x803, 0x80a, 0x80d, 0x810, 0x818, 0x820, 0x839] {
            assert_eq!(a.x2apic_write(ro, 0, &c), Err(Gp), "{ro:#x} is read-only");
        }
        assert_eq!(a.x2apic_write(0x80e, u64::MAX, &c), Err(Gp), "no DFR");
        assert_eq!(a.x2apic_write(0x80b, 1, &c), Err(Gp), "EOI must be 0");
        assert_eq!(a.x2apic_write(0x828, 1, &c), Err(Gp), "ESR must be 0");
        assert_eq!(a.x2apic_write(0x808, 0x100, &c), Err(Gp), "TPR reserved bits");
        assert_eq!(a.x2apic_write(0x808, 1 << 32, &c), Err(Gp), "bits 63:32");
        assert_eq!(a.x2apic_write(0x832, 0x8_0000, &c), Err(Gp), "LVT timer reserved bit");
        assert_eq!(a.x2apic_write(0x837, 0x700, &c), Err(Gp), "error LVT has no mode");
        assert_eq!(a.x2apic_write(0x83e, 4, &c), Err(Gp), "divide bit 2");
        assert_eq!(a.x2apic_write(0x83f, 0x100, &c), Err(Gp), "SELF IPI vector only");
        assert_eq!(a.x2apic_write(0x830, 1 << 12, &c), Err(Gp), "ICR bit 12 is reserved");
        assert_eq!(a.x2apic_write(0x808, 0x20, &c), Ok(None));
        assert_eq!(a.x2apic_write(0x832, 0x1_1000, &c), Ok(None), "read-only status bit");
        // The self IPI register, then its EOI.
        assert_eq!(a.x2apic_write(0x83f, 0x99, &c), Ok(None));
        assert_eq!(a.highest_deliverable(), Some(0x99));
        assert_eq!(a.x2apic_read(0x824, &c), Ok(1 << (0x99 - 0x80)));
        a.ack(0x99);
        let eoi = EoiInfo { vector: 0x99, level_triggered: false, broadcast: false };
        assert_eq!(a.x2apic_write(0x80b, 0, &c), Ok(Some(ApicEffect::Eoi(eoi))));
        // The ICR is one 64-bit register with a 32-bit destination.
        let ipi = a.x2apic_write(0x830, (0x1234_5678 << 32) | 0x40fd, &c).unwrap();
        let Some(ApicEffect::Ipi(r)) = ipi else { panic!("{ipi:?}") };
        assert_eq!(
            (r.dest, r.vector, r.mode, r.source),
            (0x1234_5678, 0xfd, DeliveryMode::Fixed, 0x23)
        );
        assert_eq!(a.x2apic_read(0x830, &c), Ok((0x1234_5678 << 32) | 0x40fd));
    }

    #[test]
    fn destination_matching() {
        let mut flat = enabled(1);
        wr(&mut flat, 0xd0, 0x0200_0000);
        assert!(flat.matches(0x03, true) && !flat.matches(0x05, true));
        assert!(flat.matches(1, false) && !flat.matches(2, false));
        assert!(flat.matches(0xff, true) && flat.matches(0xff, false), "broadcast");
        let mut cluster = enabled(2);
        wr(&mut cluster, 0xe0, 0x0fff_ffff);
        assert_eq!(rd(&mut cluster, 0xe0), 0x0fff_ffff);
        wr(&mut cluster, 0xd0, 0x3400_0000);
        assert!(cluster.matches(0x34, true) && cluster.matches(0x3c, true));
        assert!(!cluster.matches(0x24, true), "other cluster");
        assert!(!cluster.matches(0x33, true), "not in the mask");
        let x = x2(0x21);
        assert!(x.matches(0x0002_0002, true) && x.matches(0x0002_ffff, true));
        assert!(!x.matches(0x0001_0002, true) && !x.matches(0x0002_0001, true));
        assert!(x.matches(0x21, false) && !x.matches(0x121, false) && x.matches(u32::MAX, false));
        let off = Lapic::new(LapicConfig { id: 1, ..LapicConfig::new(1, false) });
        let mut disabled = off.clone();
        disabled.set_apic_base(APIC_DEFAULT_BASE).unwrap();
        assert!(off.matches(1, false) && !disabled.matches(0xff, false));
    }

    #[test]
    fn icr_requests() {
        let mut a = enabled(0);
        wr(&mut a, 0x310, 0x0300_0000);
        // INIT assert (level, assert), then de-assert, which is dropped; then SIPI.
        let Some(ApicEffect::Ipi(init)) = wr(&mut a, 0x300, 0xc500) else { panic!() };
        assert_eq!(
            (init.mode, init.dest, init.level, init.level_triggered),
            (DeliveryMode::Init, 3, true, true)
        );
        assert_eq!(wr(&mut a, 0x300, 0x8500), None, "INIT de-assert");
        let Some(ApicEffect::Ipi(sipi)) = wr(&mut a, 0x300, 0x0609) else { panic!() };
        assert_eq!(
            (sipi.mode, sipi.vector, sipi.shorthand),
            (DeliveryMode::StartUp, 9, Shorthand::None)
        );
        assert_eq!(rd(&mut a, 0x300), 0x0609);
        assert_eq!(rd(&mut a, 0x310), 0x0300_0000);
        // Self shorthand, fixed: delivered locally.
        assert_eq!(wr(&mut a, 0x300, 0x4_0077), None);
        assert_eq!(a.highest_deliverable(), Some(0x77));
        // NMI to all but self.
        let Some(ApicEffect::Ipi(nmi)) = wr(&mut a, 0x300, 0xc_0400) else { panic!() };
        assert_eq!(nmi.mode, DeliveryMode::Nmi);
        assert!(!nmi.targets(&a) && nmi.targets(&enabled(1)));
        assert_eq!(wr(&mut a, 0x300, 0x0300), None, "reserved delivery mode");
        let logical = IpiRequest { logical: true, dest: 0x01, ..sipi };
        let mut b = enabled(1);
        wr(&mut b, 0xd0, 0x0100_0000);
        assert!(logical.targets(&b) && !logical.targets(&a));
    }

    #[test]
    fn bad_mmio_accesses() {
        let mut a = enabled(0);
        assert_eq!(a.mmio_read(0x80, 2, &at(0)), Err(MmioError::BadAccess));
        assert_eq!(a.mmio_read(0x84, 4, &at(0)), Err(MmioError::BadAccess));
        assert_eq!(a.mmio_write(0x1000, 4, 0, &at(0)), Err(MmioError::BadAccess));
        assert_eq!(a.mmio_read(0x800, 4, &at(0)), Ok(0), "reserved offset");
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), ESR_ILLEGAL_REG);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Read(u16, u8),
        Write(u16, u8, u32),
        MsrRead(u32),
        MsrWrite(u32, u64),
        Base(u64),
        Deadline(u64),
        Accept(u8, bool),
        Inject,
        Eoi,
        Tick(u32),
        Lvt(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let off = prop_oneof![(0u16..0x40).prop_map(|r| r << 4), any::<u16>()];
        prop_oneof![
            (off.clone(), prop_oneof![Just(4u8), any::<u8>()]).prop_map(|(o, s)| Op::Read(o, s)),
            (off, prop_oneof![Just(4u8), any::<u8>()], any::<u32>())
                .prop_map(|(o, s, v)| Op::Write(o, s, v)),
            (0x7f0u32..0x910).prop_map(Op::MsrRead),
            (0x7f0u32..0x910, prop_oneof![0u64..0x10_0000, any::<u64>()])
                .prop_map(|(m, v)| Op::MsrWrite(m, v)),
            prop_oneof![Just(0xfee0_0800u64), Just(0xfee0_0c00), Just(0xfee0_0000), any::<u64>()]
                .prop_map(Op::Base),
            any::<u64>().prop_map(Op::Deadline),
            (any::<u8>(), any::<bool>()).prop_map(|(v, l)| Op::Accept(v, l)),
            Just(Op::Inject),
            Just(Op::Eoi),
            any::<u32>().prop_map(Op::Tick),
            (0u8..7).prop_map(Op::Lvt),
        ]
    }

    proptest! {
        /// No sequence of guest accesses panics, and the interrupt state stays coherent.
        #[test]
        fn any_access_sequence_keeps_the_invariants(ops in proptest::collection::vec(op(), 1..80)) {
            let mut a = enabled(1);
            let mut c = at(0);
            for op in ops {
                match op {
                    Op::Read(o, s) => { let _ = a.mmio_read(o.into(), s, &c); }
                    Op::Write(o, s, v) => { let _ = a.mmio_write(o.into(), s, v, &c); }
                    Op::MsrRead(m) => { let _ = a.x2apic_read(m, &c); }
                    Op::MsrWrite(m, v) => { let _ = a.x2apic_write(m, v, &c); }
                    Op::Base(v) => { let _ = a.set_apic_base(v); }
                    Op::Deadline(v) => { let _ = a.set_tsc_deadline(v); }
                    Op::Accept(v, l) => { a.accept(v, l); }
                    Op::Inject => {
                        if let Some(v) = a.highest_deliverable() {
                            prop_assert!(v & 0xf0 > a.ppr() & 0xf0);
                            prop_assert!(a.ack(v));
                            prop_assert!(bit(&a.isr, v) && !bit(&a.irr, v));
                        }
                    }
                    Op::Eoi => { a.eoi(); }
                    Op::Tick(d) => {
                        c.now = c.now.saturating_add(d.into());
                        if let Some(t) = a.next_deadline(&c).filter(|t| *t >= c.now) {
                            let mut b = a.clone();
                            let fired = b.update_timer(&Clock { now: t, ..c });
                            prop_assert!(fired, "the deadline is when the timer fires");
                        }
                        a.update_timer(&c);
                    }
                    Op::Lvt(i) => { a.raise_lvt(Lvt::ALL[usize::from(i)]); }
                }
                prop_assert_eq!(a.irr[0] & 0xffff, 0, "vectors 0-15 never pend");
                prop_assert_eq!(a.isr[0] & 0xffff, 0);
                prop_assert!(a.current_count(&c) <= a.initial);
            }
        }
    }
}
