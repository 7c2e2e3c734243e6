//! Domains and vCPUs: the fixed-capacity domain table's entries.

use crate::console::{Console, LogLimiter};
use crate::exit::{Gprs, VcpuInit};
use crate::io::Pc;
use crate::platform::Platform;
use abi::hypercall::{DOMAIN_NAME_LEN, MAX_VCPUS_PER_DOMAIN};
use abi::types::{CrashReason, DomainState, EXIT_REASONS, ExitReason};
use mmu::Mmu;

/// vCPUs per domain, as an array length.
pub const VCPUS: usize = MAX_VCPUS_PER_DOMAIN as usize;
/// Memory slots a domain's RAM may be split into (host memory is found in contiguous runs).
pub const MAX_RAM_SLOTS: usize = 16;
/// First slot id used for dom0's read-only boot-module windows.
pub const MODULE_SLOT_BASE: usize = MAX_RAM_SLOTS;

/// One vCPU.
pub struct Vcpu<V> {
    /// Hardware state, once created.
    pub arch: Option<V>,
    /// General registers while the vCPU is not running.
    pub gprs: Gprs,
    /// The state `VcpuSetState` gave it (applied at the first unpause).
    pub init: Option<VcpuInit>,
    /// TSC before which the vCPU does not run.
    pub blocked_until: u64,
    /// It executed HLT and waits for an interrupt.
    pub halted: bool,
    /// RFLAGS.IF when it halted: with IF clear only an NMI (or INIT) would wake it.
    pub halted_if: bool,
    /// Interrupt-window exiting is on (mirrors the backend's control, to spare it writes).
    pub irq_window: bool,
    /// Its MTRRs.
    pub mtrrs: crate::mtrr::Mtrrs,
    /// NMI-window exiting is on (mirrors the backend's control).
    pub nmi_window: bool,
    /// Its TSC: the guest reads the host TSC plus `tsc_offset` (wrapping); `tsc_adjust` is
    /// IA32_TSC_ADJUST, which every TSC write moves by as much as the TSC (SDM 17.17.3).
    pub tsc_offset: u64,
    /// IA32_TSC_ADJUST.
    pub tsc_adjust: u64,
    /// IA32_MISC_ENABLE (only fast strings is writable).
    pub misc_enable: u64,
    /// A port access dom0 serves, from the exit that posted it until the instruction, executed
    /// again, takes the answer (`hv/ioreq.rs`).
    pub io: Option<IoWait>,
    /// The CPU whose run queue it is on (`hv/run.rs`).
    pub home: u8,
    /// The CPU running it, which holds its hardware state meanwhile (`arch` is `None`).
    pub on: Option<u8>,
    /// It destroyed a domain whose vCPUs other CPUs were running: it runs again once those
    /// CPUs have freed their hardware state (`Hv::orphans` back to 0), so the memory its
    /// `DomainDestroy` freed is all free when the call returns to it.
    pub reaps: bool,
}

/// A port access handed to dom0 (`IoreqNext` / `IoreqComplete`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoWait {
    /// The first port.
    pub port: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    /// OUT.
    pub write: bool,
    /// The value written (OUT).
    pub value: u32,
    /// Names the request to dom0.
    pub token: u32,
    /// Where it is.
    pub stage: IoStage,
    /// What the answer completes.
    pub then: IoThen,
}

/// What completes a port access once dom0 answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoThen {
    /// IN (the value goes to AL / AX / EAX) or OUT, `len` bytes long.
    Port {
        /// The instruction's length.
        len: u8,
    },
    /// One element of INS / OUTS.
    String {
        /// RCX, RSI, RDI after the element.
        regs: crate::insn::StrRegs,
        /// The instruction's length if this was its last element; 0 if it runs again for the
        /// next one.
        len: u8,
        /// INS: where each byte of the element goes (guest-physical: translated again when
        /// the answer comes, so memory the domain lost meanwhile is never written).
        dest: [u64; 4],
    },
}

/// The life of an [`IoWait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStage {
    /// Waiting for dom0 to take it.
    Posted,
    /// dom0 took it and has not answered.
    Taken,
    /// Answered and applied to registers and memory: the vCPU may run; its next entry moves
    /// RIP past the instruction if it is complete.
    Answered,
}

impl<V> Vcpu<V> {
    const fn new() -> Self {
        Self {
            arch: None,
            gprs: Gprs::ZERO,
            init: None,
            blocked_until: 0,
            halted: false,
            halted_if: false,
            irq_window: false,
            mtrrs: crate::mtrr::Mtrrs::new(),
            nmi_window: false,
            tsc_offset: 0,
            tsc_adjust: 0,
            misc_enable: crate::policy::MISC_ENABLE_VALUE,
            io: None,
            home: 0,
            on: None,
            reaps: false,
        }
    }
}

/// Per-domain counters microhv keeps (the MMU keeps its own).
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    /// Exits by `ExitReason` index.
    pub exits: [u64; EXIT_REASONS],
    /// Hypercalls made.
    pub hypercalls: u64,
    /// TSC ticks spent in the guest.
    pub cpu_time: u64,
    /// Second-level TLB flushes executed for the domain.
    pub tlb_flushes: u64,
    /// The host CPUs its vCPUs ran on, a bit each.
    pub cpus: u32,
}

impl Counters {
    const fn new() -> Self {
        Self { exits: [0; EXIT_REASONS], hypercalls: 0, cpu_time: 0, tlb_flushes: 0, cpus: 0 }
    }

    /// Counts an exit.
    pub fn count_exit(&mut self, r: ExitReason) {
        if let Some(c) = self.exits.get_mut(r as usize) {
            *c += 1;
        }
    }

    /// Exits of every kind.
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().sum()
    }
}

/// One entry of the domain table.
pub struct Domain<V> {
    /// `None`: the entry is free.
    pub state: Option<DomainState>,
    /// Its name.
    pub name: [u8; DOMAIN_NAME_LEN],
    /// dom0.
    pub privileged: bool,
    /// dom0 serves its configuration devices (`DOMCREATE_DEVICE_MODEL`).
    pub device_model: bool,
    /// Which domain this is, for dom0's device models (`IoReq::instance`): a new number for
    /// each domain created.
    pub instance: u32,
    /// RAM in bytes (guest-physical `[0, mem_bytes)`, in slots `0..MAX_RAM_SLOTS`).
    pub mem_bytes: u64,
    /// The second-level MMU.
    pub mmu: Mmu,
    /// vCPUs `0..vcpu_count`.
    pub vcpus: [Vcpu<V>; VCPUS],
    /// How many vCPUs it has.
    pub vcpu_count: u32,
    /// Console output.
    pub console: Console,
    /// How many of its console lines reach microhv's log.
    pub log_limiter: LogLimiter,
    /// Emulated legacy ports (COM1, the debug-exit and shutdown ports).
    pub pc: Pc,
    /// The virtual PC's interrupt controllers and timers (from vCPU creation on).
    pub platform: Option<Platform>,
    /// Counters.
    pub counters: Counters,
    /// `ShutdownReason` and status, once shut down.
    pub shutdown: (u32, u32),
    /// Why microhv stopped it, if it did.
    pub crash: CrashReason,
}

impl<V> Domain<V> {
    /// A free entry.
    pub const fn new(mmu_config: mmu::Config) -> Self {
        Self {
            state: None,
            name: [0; DOMAIN_NAME_LEN],
            privileged: false,
            device_model: false,
            instance: 0,
            mem_bytes: 0,
            mmu: Mmu::new(mmu_config),
            vcpus: [const { Vcpu::new() }; VCPUS],
            vcpu_count: 0,
            console: Console::new(),
            log_limiter: LogLimiter::new(),
            pc: Pc::new(),
            platform: None,
            counters: Counters::new(),
            shutdown: (0, 0),
            crash: CrashReason::None,
        }
    }

    /// True while the entry holds a domain.
    pub fn exists(&self) -> bool {
        self.state.is_some()
    }

    /// True if its vCPUs may be scheduled.
    pub fn runnable(&self) -> bool {
        self.state == Some(DomainState::Running)
    }

    /// True once it has stopped for good (shut down or crashed).
    pub fn stopped(&self) -> bool {
        matches!(self.state, Some(DomainState::Shutdown | DomainState::Crashed))
    }

    /// Resets everything but the MMU (which `Mmu::destroy` resets) for reuse.
    pub fn clear(&mut self) {
        self.state = None;
        self.name = [0; DOMAIN_NAME_LEN];
        self.privileged = false;
        self.device_model = false;
        self.instance = 0;
        self.mem_bytes = 0;
        for v in &mut self.vcpus {
            *v = Vcpu::new();
        }
        self.vcpu_count = 0;
        self.console = Console::new();
        self.log_limiter = LogLimiter::new();
        self.pc = Pc::new();
        self.platform = None;
        self.counters = Counters::new();
        self.shutdown = (0, 0);
        self.crash = CrashReason::None;
    }

    /// The name as text.
    pub fn name_str(&self) -> &str {
        abi::types::name_str(&self.name)
    }
}
