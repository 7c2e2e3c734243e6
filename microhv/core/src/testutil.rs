//! Host-test doubles: a simulated physical memory and a scripted fake backend.

use crate::exit::{
    Backend, BackendError, Event, Exit, ExitInfo, FrameSource, Gprs, GuestReg, VcpuConfig, VcpuInit,
};
use crate::hv::Hv;
use crate::mem::PhysMem;
use std::boxed::Box;
use std::collections::{HashMap, VecDeque};
use std::vec::Vec;

/// Sparse simulated physical memory: frames come into being, zeroed, when first touched.
#[derive(Default)]
pub struct SimMem {
    frames: HashMap<u64, Box<[u8; 4096]>>,
}

impl PhysMem for SimMem {
    fn read(&self, pa: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let a = pa + i as u64;
            *b = self.frames.get(&(a >> 12)).map_or(0, |f| f[(a & 0xfff) as usize]);
        }
    }

    fn write(&mut self, pa: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let a = pa + i as u64;
            let f = self.frames.entry(a >> 12).or_insert_with(|| Box::new([0; 4096]));
            f[(a & 0xfff) as usize] = *b;
        }
    }

    fn zero(&mut self, pa: u64, len: u64) {
        let mut a = pa;
        while a < pa + len {
            if let Some(f) = self.frames.get_mut(&(a >> 12)) {
                let start = (a & 0xfff) as usize;
                let n = (4096 - start).min((pa + len - a) as usize);
                f[start..start + n].fill(0);
                a += n as u64;
            } else {
                a = (a | 0xfff) + 1;
            }
        }
    }
}

/// A vCPU of the fake backend: its registers live here instead of a VMCS.
#[derive(Debug)]
pub struct FakeVcpu {
    /// The frame a real backend would use for its VMCS / VMCB (to check it is returned).
    pub frame: u64,
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// CR0, CR4, EFER, FS base, GS base, RFLAGS as written; a test may also set the segment
    /// bases, and `cr3`, `mode` (16, 32, else 64-bit code) and `cs_base` for the exits it reports.
    pub regs: HashMap<&'static str, u64>,
    /// Current second-level root.
    pub root: u64,
    /// Flushes requested.
    pub flushes: u32,
    /// Events injected.
    pub injected: Vec<Event>,
    /// Its domain and index.
    pub cfg: VcpuConfig,
    /// An interrupt queued for the next entry (taken by the next run).
    pub pending_irq: Option<u8>,
    /// Every interrupt vector injected, in order.
    pub irqs: Vec<u8>,
    /// Interrupt-window exiting requested.
    pub window: bool,
}

/// One scripted exit: what the "guest" does before exiting.
#[derive(Debug, Clone)]
pub struct Step {
    /// The exit.
    pub exit: Exit,
    /// Registers the guest set before it.
    pub gprs: Option<Gprs>,
    /// Privilege level at the exit.
    pub cpl: u8,
}

/// A backend whose vCPUs replay a script of exits.
#[derive(Default)]
pub struct FakeBackend {
    /// Exits still to produce, per (domid, vCPU).
    pub script: HashMap<(u32, u32), VecDeque<Step>>,
    /// vCPUs alive.
    pub live: usize,
    /// Runs performed, per (domid, vCPU).
    pub runs: HashMap<(u32, u32), u64>,
    /// The domain of every run, in order.
    pub order: Vec<u32>,
    /// The (domid, vCPU) of every run, in order.
    pub order_vcpus: Vec<(u32, u32)>,
    /// A fake clock, advanced by every run.
    pub clock: std::cell::Cell<u64>,
    /// Port I/O exits produced, per (domid, vCPU).
    pub io_exits: HashMap<(u32, u32), u64>,
    /// A vCPU whose latest port access dom0's scripted `IoreqComplete` steps answer: their
    /// token (rdx) is that vCPU's I/O exit count, so a script need not know when it runs.
    pub answer: Option<(u32, u32)>,
    /// Fast exits the next exit reports as completed before it (`ExitInfo::completed`).
    pub completed: [u32; 3],
    /// Scripted nested page faults go to the core's `DemandFaults` first, as the arch
    /// backends' exit loops do; each it fixes is counted and the next step taken.
    pub fast_faults: bool,
    /// The vCPU whose state the hardware holds: the one that ran, was made or was reset last,
    /// until it is unloaded.
    pub loaded: Option<(u32, u32)>,
    /// Unloads of a vCPU other than [`FakeBackend::loaded`] (each a lost hardware state).
    pub wrong_unloads: u32,
}

impl FakeBackend {
    /// Appends exits for vCPU `v` of domain `d`.
    pub fn push(&mut self, d: u32, v: u32, step: Step) {
        self.script.entry((d, v)).or_default().push_back(step);
    }
}

/// The fake backend runs on one CPU only: it has no runner.
pub enum FakeRunner {}

impl crate::exit::Runner for FakeRunner {
    type Vcpu = FakeVcpu;

    fn run(
        &mut self,
        _: &mut FakeVcpu,
        _: &mut Gprs,
        _: u64,
        _: &mut dyn crate::exit::DemandFaults,
    ) -> ExitInfo {
        match *self {}
    }
}

impl Backend for FakeBackend {
    type Vcpu = FakeVcpu;
    type Runner = FakeRunner;

    fn set_cpu(&mut self, _: usize) {}

    fn runner(&mut self, _: usize, _: &mut dyn FrameSource) -> Result<FakeRunner, BackendError> {
        Err(BackendError::Hardware(0))
    }

    fn load(&mut self, _: &mut FakeVcpu) {}

    fn hypercall_insn(&self) -> u32 {
        abi::cpuid::HYPERCALL_VMCALL
    }

    fn kind(&self) -> u32 {
        abi::types::VIRT_VMX
    }

    fn create_vcpu(
        &mut self,
        frames: &mut dyn FrameSource,
        cfg: &VcpuConfig,
        init: &VcpuInit,
    ) -> Result<FakeVcpu, BackendError> {
        let frame = frames.alloc_zeroed().ok_or(BackendError::NoMemory)?;
        self.live += 1;
        self.loaded = Some((cfg.domid, cfg.index));
        Ok(FakeVcpu {
            frame,
            rip: init.rip,
            rsp: init.rsp,
            regs: HashMap::new(),
            root: cfg.root,
            flushes: 0,
            injected: Vec::new(),
            cfg: *cfg,
            pending_irq: None,
            irqs: Vec::new(),
            window: false,
        })
    }

    fn reset_vcpu(&mut self, v: &mut FakeVcpu, init: &VcpuInit) {
        self.loaded = Some((v.cfg.domid, v.cfg.index));
        v.rip = init.rip;
        v.rsp = init.rsp;
        // Real mode after a start-up IPI: CS at the start page.
        if let Some(page) = init.startup {
            v.regs.extend([("mode", 16), ("cs_base", u64::from(page) << 12)]);
        }
    }

    fn destroy_vcpu(&mut self, frames: &mut dyn FrameSource, v: FakeVcpu) {
        frames.free(v.frame);
        self.live -= 1;
    }

    fn run(
        &mut self,
        v: &mut FakeVcpu,
        gprs: &mut Gprs,
        _slice: u64,
        faults: &mut dyn crate::exit::DemandFaults,
    ) -> ExitInfo {
        let key = (v.cfg.domid, v.cfg.index);
        *self.runs.entry(key).or_default() += 1;
        self.order.push(key.0);
        self.order_vcpus.push(key);
        self.loaded = Some(key);
        v.pending_irq = None;
        self.clock.set(self.clock.get() + 1000);
        let step = loop {
            let step = self.script.get_mut(&key).and_then(VecDeque::pop_front).unwrap_or(Step {
                exit: Exit::TripleFault,
                gprs: None,
                cpl: 0,
            });
            match step.exit {
                Exit::NestedPageFault { gpa, access }
                    if self.fast_faults
                        && faults
                            .fix(
                                gpa,
                                mmu::Access {
                                    read: access.read,
                                    write: access.write,
                                    fetch: access.exec,
                                    present: access.present,
                                },
                            )
                            .is_some() =>
                {
                    self.completed[2] += 1;
                }
                _ => break step,
            }
        };
        if let Some(g) = step.gprs {
            *gprs = g;
        }
        if let Exit::Io { .. } = step.exit {
            *self.io_exits.entry(key).or_default() += 1;
        }
        if let Some(who) = self.answer.filter(|_| gprs.rax == abi::Op::IoreqComplete as u64) {
            gprs.rdx = self.io_exits.get(&who).copied().unwrap_or(0);
        }
        ExitInfo {
            exit: step.exit,
            raw_reason: 0,
            qualification: 0,
            rip: v.rip,
            rsp: v.rsp,
            rflags: v.regs.get("rflags").copied().unwrap_or(2),
            cr0: v.regs.get("cr0").copied().unwrap_or(0x11),
            cr3: v.regs.get("cr3").copied().unwrap_or(0),
            cr4: v.regs.get("cr4").copied().unwrap_or(0),
            efer: v.regs.get("efer").copied().unwrap_or(0),
            insn_len: 3,
            cpl: step.cpl,
            mode: match v.regs.get("mode") {
                Some(16) => crate::exit::CpuMode::Bits16,
                Some(32) => crate::exit::CpuMode::Bits32,
                _ => crate::exit::CpuMode::Bits64,
            },
            cs_base: v.regs.get("cs_base").copied().unwrap_or(0),
            ran_ticks: 1000,
            completed: core::mem::take(&mut self.completed),
            mmu: None,
        }
    }

    fn unload(&mut self, v: &mut FakeVcpu) {
        // The vCPU whose state the hardware holds is the one that ran, was made or was reset
        // last.
        if self.loaded.take() != Some((v.cfg.domid, v.cfg.index)) {
            self.wrong_unloads += 1;
        }
    }

    fn read(&mut self, v: &mut FakeVcpu, reg: GuestReg) -> u64 {
        match reg {
            GuestReg::Rip => v.rip,
            GuestReg::Rsp => v.rsp,
            other => v.regs.get(name(other)).copied().unwrap_or(0),
        }
    }

    fn write(&mut self, v: &mut FakeVcpu, reg: GuestReg, value: u64) {
        match reg {
            GuestReg::Rip => v.rip = value,
            GuestReg::Rsp => v.rsp = value,
            other => {
                v.regs.insert(name(other), value);
            }
        }
    }

    fn advance_rip(&mut self, v: &mut FakeVcpu, len: u8) -> bool {
        match crate::exit::CpuMode::Bits64.next_ip_checked(v.rip, len) {
            Some(next) => {
                v.rip = next;
                true
            }
            None => false,
        }
    }

    fn inject(&mut self, v: &mut FakeVcpu, event: Event) {
        v.injected.push(event);
    }

    fn interruptible(&mut self, v: &mut FakeVcpu, nmi: bool) -> bool {
        (nmi || v.regs.get("rflags").copied().unwrap_or(0) & (1 << 9) != 0)
            && v.pending_irq.is_none()
    }

    fn inject_interrupt(&mut self, v: &mut FakeVcpu, vector: u8) {
        v.pending_irq = Some(vector);
        v.irqs.push(vector);
    }

    fn set_interrupt_window(&mut self, v: &mut FakeVcpu, on: bool, nmi: bool) {
        if !nmi {
            v.window = on;
        }
    }

    fn set_root(&mut self, v: &mut FakeVcpu, root: u64) {
        v.root = root;
    }

    fn flush(&mut self, v: &mut FakeVcpu) {
        v.flushes += 1;
    }

    fn host_cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
        [leaf, u32::MAX, u32::MAX, u32::MAX]
    }

    fn now(&self) -> u64 {
        self.clock.get()
    }
}

fn name(r: GuestReg) -> &'static str {
    match r {
        GuestReg::Rip => "rip",
        GuestReg::Rsp => "rsp",
        GuestReg::Rflags => "rflags",
        GuestReg::Cr0 => "cr0",
        GuestReg::Cr4 => "cr4",
        GuestReg::Efer => "efer",
        GuestReg::FsBase => "fs_base",
        GuestReg::GsBase => "gs_base",
        GuestReg::CsLd => "cs_ld",
        GuestReg::TrType => "tr_type",
        GuestReg::TscOffset => "tsc_offset",
        // FS and GS: the same bases as `FsBase` / `GsBase`, as on the hardware.
        GuestReg::SegBase(s) => {
            ["es_base", "cs_base", "ss_base", "ds_base", "fs_base", "gs_base"][s as usize]
        }
        GuestReg::Pdpte(i) => ["pdpte0", "pdpte1", "pdpte2", "pdpte3"]
            .get(usize::from(i))
            .copied()
            .unwrap_or("pdpte?"),
    }
}

/// Frame-allocator words of the test machine: 256 * 64 frames = 64 MiB.
pub const TEST_WORDS: usize = 256;
/// The hypervisor under test.
pub type TestHv = Hv<FakeBackend, SimMem, TEST_WORDS>;
/// dom0's RAM in the tests.
pub const DOM0_MEM: u64 = 8 << 20;
/// Where the tests put hypercall arguments in dom0.
pub const SCRATCH: u64 = 0x40_0000;

/// A machine with 63 MiB free and dom0 built from a minimal PVH image.
pub fn world() -> Box<TestHv> {
    let cfg = mmu::Config { format: mmu::Format::Ept, large_2m: true, large_1g: false };
    let mut hv = Box::new(Hv::new(FakeBackend::default(), SimMem::default(), cfg));
    hv.frames.add_free_range(1 << 20, 64 << 20);
    let img = abi::testutil::pvh_image(0x10_0000, &[0xf4; 64], 0x1000, 0x10_0000);
    hv.build_dom0(&img, "test", DOM0_MEM, &[]).expect("dom0 builds");
    hv
}
