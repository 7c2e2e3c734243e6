//! The hypervisor: the domain table, dom0's construction, the run loop and the exit handlers.
//!
//! [`Hv`] owns everything microhv keeps: the frame allocator, the domain table (each domain
//! with its MMU, vCPUs, console and counters) and the backend. [`Hv::run`] is the scheduler
//! and VM-exit dispatcher; it returns only when the machine must stop (dom0 shut down or
//! crashed), with the verdict for the stop line.
//!
//! The parts: domain memory (`memory.rs`), the run loop and scheduler (`run.rs`), the exit
//! handlers (`exits.rs`, string port I/O in `strio.rs`); here the table itself, domain
//! construction and teardown, and the helpers every part uses.

mod evtchn;
mod exits;
mod grant;
mod ioreq;
mod memory;
mod run;
mod smp;
mod startup;
mod strio;

#[cfg(test)]
pub(crate) use run::Next;
use run::Sched;
pub use strio::STRING_IO_CHUNK;

use crate::boot::Range;
use crate::console::{CONSOLE_LINE_BYTES, LogLimiter};
use crate::cpuid::Caller;
use crate::cpus::MAX_CPUS;
use crate::dev::Clock;
use crate::domain::{Domain, IoThen, MAX_RAM_SLOTS, MODULE_SLOT_BASE, VCPUS};
use crate::evtchn::EventChannels;
use crate::exit::{Backend, CpuMode, Event, Exit, ExitInfo, GuestReg, VcpuConfig, VcpuInit};
use crate::fast::FastExit;
use crate::frames::{FRAME_SIZE, FrameAllocator, HOST_BITMAP_WORDS};
use crate::grant::Grants;
use crate::insn::{self, MmioOp};
use crate::io::{IoOutcome, merge_in, merge_reg};
use crate::mem::{Machine, PhysMem};
use crate::platform::{MmioPage, Platform};
use crate::policy::{self, VCPU_SLICE};
use crate::regs;
use crate::status::StopStatus;
use crate::walk::{Paging, linear_to_phys};
use abi::Errno;
use abi::hypercall::{DOMID_DOM0, MAX_DOMAINS, ShutdownReason, VIRQ_CON_RING, VIRQ_DOM_EXC};
use abi::pvh::{self, ModuleDesc};
use abi::types::{CrashReason, DomainState};
use core::fmt::Write;
use mmu::{Access, FaultOutcome};

/// Domains, as an array length.
pub const DOMAINS: usize = MAX_DOMAINS as usize;
/// Guest-physical base of the window where dom0 sees the boot modules (read-only).
pub const MODULE_WINDOW_GPA: u64 = 0xc000_0000;
/// The largest memory dom0 may have: its RAM must stay below the module window.
pub const MAX_DOM0_MEM: u64 = MODULE_WINDOW_GPA;
/// 2 MiB in frames: runs this large are allocated 2 MiB-aligned so the MMU can use large
/// pages.
const LARGE_RUN_FRAMES: u64 = 512;
/// Frames the idle scrubber zeroes at a time ([`Hv::scrub_idle`]): 64 KiB, about 8,300
/// instructions under Bochs, a delay that a vCPU whose interrupt comes due meanwhile hardly
/// notices.
pub(crate) const SCRUB_BATCH: u64 = 16;

/// Why and how the machine stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The status.
    pub status: StopStatus,
    /// One line for people.
    pub reason: heapless::String<160>,
}

impl Stop {
    fn new(status: StopStatus, args: core::fmt::Arguments<'_>) -> Self {
        let mut reason = heapless::String::new();
        let _ = reason.write_fmt(args);
        Self { status, reason }
    }
}

/// A boot module as dom0 will see it.
#[derive(Debug, Clone, Copy)]
pub struct ModuleRef<'a> {
    /// Host-physical range.
    pub range: Range,
    /// Its command line.
    pub cmdline: &'a str,
}

/// Why dom0 could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dom0Error {
    /// The image is not a PVH ELF.
    Image(pvh::ImageError),
    /// The image does not fit in dom0's memory.
    ImageOutsideMemory,
    /// Memory, MMU or backend failure.
    Resources(Errno),
    /// Too many modules, or command lines too long for the start page.
    StartPage,
}

/// The hypervisor. `W` sizes the frame allocator (tests use a small machine).
pub struct Hv<B: Backend, P: PhysMem, const W: usize = HOST_BITMAP_WORDS> {
    /// The arch backend.
    pub backend: B,
    /// Host physical memory.
    pub mem: P,
    /// Host frames.
    pub frames: FrameAllocator<W>,
    /// The domain table; entry `i` is domain id `i`.
    pub domains: [Domain<B::Vcpu>; DOMAINS],
    /// Every domain's event channels.
    pub evtchn: EventChannels,
    /// Every domain's grant table and grant mappings.
    pub grants: Grants,
    /// MMU configuration for new domains (format and large-page support of this CPU).
    pub mmu_config: mmu::Config,
    /// Frames microhv keeps for itself (its image, boot data, modules), for `PhysInfo`.
    pub hv_frames: u64,
    /// Host TSC ticks per millisecond (measured or reported at boot): microhv's real time.
    pub tsc_khz: u64,
    /// Host CPUs online (the boot CPU and the application processors that came up).
    pub cpus: u32,
    /// The earliest device deadline of any domain (0: to be recomputed).
    wake_at: u64,
    /// Each CPU's scheduler (`run.rs`).
    sched: [Sched; MAX_CPUS],
    /// The CPU holding the hypervisor lock, whose scheduler and backend state the calls use.
    pub(crate) cpu: usize,
    /// The CPU the next vCPU created is placed on (round-robin over the CPUs online).
    next_home: usize,
    /// The CPUs that run vCPUs (they entered [`Hv::run_cpu`]), a bit each.
    pub(crate) online: u32,
    /// vCPUs of destroyed domains whose hardware state the CPUs running them still hold; each
    /// CPU frees its own when it comes back (`smp.rs`).
    pub(crate) orphans: u32,
    /// The latest TSC [`Hv::now`] gave.
    latest: core::cell::Cell<u64>,
    /// Set once a CPU has decided the machine stops: the others stop with it (`smp.rs`).
    stopped: Option<Stop>,
    /// The last `IoReq::token` given out.
    ioreq_seq: u32,
    /// The last `IoReq::instance` given out.
    pub(crate) instances: u32,
}

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    /// An empty hypervisor; the frame allocator is filled by the boot code.
    pub const fn new(backend: B, mem: P, mmu_config: mmu::Config) -> Self {
        Self {
            backend,
            mem,
            frames: FrameAllocator::new(),
            domains: [const {
                Domain::new(mmu::Config {
                    format: mmu::Format::Ept,
                    large_2m: false,
                    large_1g: false,
                })
            }; DOMAINS],
            evtchn: EventChannels::new(),
            grants: Grants::new(),
            mmu_config,
            hv_frames: 0,
            tsc_khz: crate::console::DEFAULT_TSC_KHZ,
            cpus: 1,
            wake_at: 0,
            sched: [const { Sched::new() }; MAX_CPUS],
            cpu: 0,
            next_home: 0,
            online: 0,
            orphans: 0,
            latest: core::cell::Cell::new(0),
            stopped: None,
            ioreq_seq: 0,
            instances: 0,
        }
    }

    /// The frame allocator and memory, as the MMU and the backends take them.
    pub fn machine(&mut self) -> Machine<'_, P, W> {
        Machine { frames: &mut self.frames, mem: &mut self.mem }
    }
    // ---- domains ------------------------------------------------------------------------------

    /// Creates the vCPUs of domain `d` in state `init` (vCPU 0) or not yet started (others).
    pub(crate) fn create_vcpus(
        &mut self,
        d: usize,
        count: u32,
        init: VcpuInit,
    ) -> Result<(), Errno> {
        for i in 0..count as usize {
            let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
            let root = self.domains[d].mmu.acquire_root(&mut m, i).map_err(mmu_errno)?;
            let cfg = VcpuConfig {
                domid: d as u32,
                index: i as u32,
                privileged: self.domains[d].privileged,
                root,
                tsc_khz: u32::try_from(self.tsc_khz).unwrap_or(u32::MAX),
            };
            let Ok(mut v) = self.backend.create_vcpu(&mut m, &cfg, &init) else {
                let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
                let _ = self.domains[d].mmu.release_root(&mut m, i);
                return Err(Errno::ENOMEM);
            };
            // Made on this CPU, to run on any.
            self.backend.unload(&mut v);
            let home = self.place();
            let slot = &mut self.domains[d].vcpus[i];
            slot.arch = Some(v);
            slot.home = home;
            slot.gprs = init.gprs;
            slot.init = None;
        }
        self.domains[d].vcpu_count = count;
        let clock = self.clock();
        self.domains[d].platform = Some(Platform::new(&clock, count as usize));
        self.timers_changed();
        Ok(())
    }

    /// The CPU a new vCPU is placed on: round-robin over the CPUs that run vCPUs (the boot
    /// CPU while none does yet); an idle CPU takes a vCPU whose own CPU is busy (`run.rs`).
    fn place(&mut self) -> u8 {
        let online = if self.online == 0 { 1 } else { self.online };
        for _ in 0..MAX_CPUS {
            let c = self.next_home % MAX_CPUS;
            self.next_home = self.next_home.wrapping_add(1);
            if online & (1 << c) != 0 {
                return c as u8;
            }
        }
        0
    }

    /// The host TSC now, never less than a reading before (on any CPU): the CPUs' TSCs agree
    /// only to within the skew `arch/x86_64/smp.rs` tolerates when it sets an AP's by the boot
    /// CPU's, and the device models and the slices must never see time go back. (A guest reads
    /// its CPU's TSC directly, plus its offset; that skew is less than a move between CPUs
    /// takes.)
    pub(crate) fn now(&self) -> u64 {
        let now = self.backend.now().max(self.latest.get());
        self.latest.set(now);
        now
    }

    /// The host TSC now, as the device models take it.
    pub(crate) fn clock(&self) -> Clock {
        Clock { now: self.now(), tsc_khz: self.tsc_khz }
    }

    /// A device deadline may have moved: the run loop recomputes the earliest.
    pub(crate) fn timers_changed(&mut self) {
        self.wake_at = 0;
    }

    /// Frees everything domain `d` holds and empties its entry.
    pub(crate) fn destroy_domain(&mut self, d: usize) {
        // Its vCPUs running on other CPUs stop using its tables and memory before any is freed.
        crate::smp::quiesce();
        self.flush_console(d);
        // Every slot: a domain whose creation failed part-way has vCPUs beyond its count.
        for i in 0..VCPUS {
            let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
            let _ = self.domains[d].mmu.release_root(&mut m, i);
            // One running on another CPU is that CPU's to free (`smp.rs`).
            let vc = &mut self.domains[d].vcpus[i];
            match vc.arch.take() {
                Some(v) => self.backend.destroy_vcpu(&mut m, v),
                None if vc.on.is_some() => self.orphans += 1,
                None => {}
            }
        }
        for s in &mut self.sched {
            if s.cursor.0 == d {
                s.holds = false;
            }
        }
        // Its grant mappings go first; releasing its RAM then leaves each frame another domain
        // maps to that mapping (`release_ram`).
        for i in 0..crate::grant::GRANT_MAPS {
            self.unmap(d, i);
        }
        for id in 0..MAX_RAM_SLOTS {
            if let Some(s) = self.domains[d].mmu.slot(id) {
                self.release_ram(d, s.hpa, s.size / FRAME_SIZE);
            }
        }
        let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        self.domains[d].mmu.destroy(&mut m);
        self.domains[d].clear();
        self.evtchn.destroy(d);
        self.grants.forget(d);
    }

    /// Builds dom0 from its PVH image, with `mem_bytes` of RAM, the command line, and the other
    /// boot modules mapped read-only at [`MODULE_WINDOW_GPA`] and listed in its start info.
    pub fn build_dom0(
        &mut self,
        image: &[u8],
        cmdline: &str,
        mem_bytes: u64,
        modules: &[ModuleRef<'_>],
    ) -> Result<(), Dom0Error> {
        let img = pvh::Image::parse(image).map_err(Dom0Error::Image)?;
        let entry = img.pvh().map_err(Dom0Error::Image)?;
        let mem_bytes = mem_bytes.min(MAX_DOM0_MEM) & !(FRAME_SIZE - 1);
        let (lo, hi) = img.span();
        if lo < pvh::START_INFO_GPA + FRAME_SIZE || hi > mem_bytes {
            return Err(Dom0Error::ImageOutsideMemory);
        }
        let d = DOMID_DOM0 as usize;
        self.domains[d].mmu = mmu::Mmu::new(self.mmu_config);
        self.domains[d].privileged = true;
        self.domains[d].name = abi::types::name_field("dom0").unwrap_or_default();
        self.domains[d].state = Some(DomainState::Created);
        self.add_ram(d, 0, mem_bytes).map_err(Dom0Error::Resources)?;

        for s in &img.segments {
            let data = img.data(s);
            // The zero-filled rest (bss) stays dirty: it reads as zeros when first shown.
            self.guest_hpa(d, s.paddr, s.memsz, true).ok_or(Dom0Error::ImageOutsideMemory)?;
            let dst = self.guest_range(d, s.paddr, data.len() as u64, true);
            let dst = dst.ok_or(Dom0Error::ImageOutsideMemory)?;
            self.mem.write(dst, data);
        }

        let mut descs: heapless::Vec<ModuleDesc<'_>, { pvh::MAX_MODULES }> = heapless::Vec::new();
        let mut window = MODULE_WINDOW_GPA;
        for (i, m) in modules.iter().enumerate() {
            let base = m.range.start & !(FRAME_SIZE - 1);
            let size = (m.range.end - base).next_multiple_of(FRAME_SIZE);
            let mut mach = Machine { frames: &mut self.frames, mem: &mut self.mem };
            self.domains[d]
                .mmu
                .add_slot(&mut mach, MODULE_SLOT_BASE + i, window, size, base, mmu::SLOT_READ_ONLY)
                .map_err(|e| Dom0Error::Resources(mmu_errno(e)))?;
            let desc = ModuleDesc {
                paddr: window + (m.range.start - base),
                size: m.range.len(),
                cmdline: m.cmdline,
            };
            descs.push(desc).map_err(|_| Dom0Error::StartPage)?;
            window += size.next_multiple_of(2 << 20);
        }
        let page = pvh::build_start_page(mem_bytes, cmdline, &descs, 0)
            .map_err(|_| Dom0Error::StartPage)?;
        let at = self.guest_range(d, pvh::START_INFO_GPA, FRAME_SIZE, true);
        self.mem.write(at.ok_or(Dom0Error::ImageOutsideMemory)?, &page);

        let mut init = VcpuInit { rip: entry.into(), ..VcpuInit::default() };
        init.gprs.rbx = pvh::START_INFO_GPA;
        self.create_vcpus(d, 1, init).map_err(Dom0Error::Resources)?;
        self.domains[d].state = Some(DomainState::Running);
        log::info!(
            "dom0: {} MiB RAM, entry {:#x}, image {lo:#x}-{hi:#x}, {} module(s), cmdline {cmdline:?}",
            mem_bytes >> 20,
            entry,
            descs.len(),
        );
        Ok(())
    }
    // ---- small helpers over the backend ---------------------------------------------------------

    fn read_reg(&mut self, d: usize, v: usize, r: GuestReg) -> u64 {
        self.domains[d].vcpus[v].arch.as_mut().map_or(0, |a| self.backend.read(a, r))
    }

    fn write_reg(&mut self, d: usize, v: usize, r: GuestReg, val: u64) {
        if let Some(a) = self.domains[d].vcpus[v].arch.as_mut() {
            self.backend.write(a, r, val);
        }
    }

    /// Completes the emulated instruction; one that would leave RIP non-canonical raises #GP
    /// at itself instead, as the CPU does.
    fn skip(&mut self, d: usize, v: usize, len: u8) {
        if let Some(a) = self.domains[d].vcpus[v].arch.as_mut()
            && !self.backend.advance_rip(a, len)
        {
            log::debug!("d{d}v{v}: #GP: the next RIP would not be canonical");
            self.inject(d, v, Event::GeneralProtection);
        }
    }

    /// Delivers a fault to the guest. The CPU sets RFLAGS.RF in the image a fault pushes (so
    /// that IRET back to the instruction does not retrigger an instruction breakpoint); an
    /// injected fault must look the same.
    fn inject(&mut self, d: usize, v: usize, e: Event) {
        if let Some(a) = self.domains[d].vcpus[v].arch.as_mut() {
            let rflags = self.backend.read(a, GuestReg::Rflags);
            self.backend.write(a, GuestReg::Rflags, rflags | regs::RFLAGS_RF);
            self.backend.inject(a, e);
        }
    }

    fn set_rax_and_skip(&mut self, d: usize, v: usize, rax: u64, len: u8) {
        self.domains[d].vcpus[v].gprs.rax = rax;
        self.skip(d, v, len);
    }

    /// Marks the calling vCPU as wanting to give up the CPU.
    pub(crate) fn yield_cpu(&mut self) {
        self.sched[self.cpu].yielded = true;
    }

    // ---- stopping domains -----------------------------------------------------------------------

    /// Logs what the MMU did for domain `d`.
    fn report_mmu(&self, d: usize) {
        let dom = &self.domains[d];
        let st = dom.mmu.stats();
        let faults = dom.counters.exits[abi::types::ExitReason::NestedPageFault as usize];
        log::info!(
            "d{d}: {faults} nested page faults served by the mmu: {} mapped ({} as 2M, {} as 1G), {} \
             spurious, {} outside memory; {} page-table pages in use (cap {}), {} zapped, {} \
             TLB flushes",
            st.faults_fixed + st.faults_fast,
            st.large_2m_mapped,
            st.large_1g_mapped,
            st.faults_spurious,
            st.faults_no_slot + st.faults_read_only,
            st.n_used,
            st.n_max,
            st.pages_zapped,
            dom.counters.tlb_flushes,
        );
        if self.cpus > 1 {
            let on = dom.counters.cpus;
            log::info!("d{d}: its vCPUs ran on {} CPUs (mask {on:#x})", on.count_ones());
            let (quiesces, kicks, waited) = crate::smp::presence().figures();
            log::info!(
                "smp so far: {quiesces} quiesces before a zap waited for {kicks} CPUs in all, \
                 {waited} TSC ticks in all"
            );
        }
    }

    /// Logs where each vCPU of domain `d` is, and each CPU (a domain destroyed while it runs,
    /// with `loglvl=debug`: what it was doing when a tool gave up waiting for it).
    pub(crate) fn report_vcpus(&self, d: usize) {
        let now = self.now();
        let dom = &self.domains[d];
        for (v, vc) in dom.vcpus.iter().enumerate().take(dom.vcpu_count as usize) {
            log::info!(
                "d{d}v{v}: on cpu {:?}, home cpu {}, runnable {}, halted {} (IF {}), waiting for its state {}, port access {:?}, rax {:#x}",
                vc.on,
                vc.home,
                self.can_run((d, v), now),
                vc.halted,
                vc.halted_if,
                vc.init.is_some(),
                vc.io.map(|w| w.stage),
                vc.gprs.rax,
            );
        }
        let p = crate::smp::presence();
        for c in (0..MAX_CPUS).filter(|&c| self.online & (1 << c) != 0) {
            let (kicked, phase) = (p.was_kicked(c), p.phase(c));
            match p.in_guest(c) {
                Some((g, at)) => log::info!(
                    "cpu {c}: phase {phase}, in a guest of d{g} for {} ticks, kicked {kicked}",
                    now.wrapping_sub(at)
                ),
                None => log::info!("cpu {c}: phase {phase}, kicked {kicked}"),
            }
        }
    }

    /// Records a shutdown.
    pub(crate) fn shutdown_domain(&mut self, d: usize, reason: u32, status: u32) {
        self.flush_console(d);
        self.report_mmu(d);
        let dom = &mut self.domains[d];
        dom.state = Some(DomainState::Shutdown);
        dom.shutdown = (reason, status);
        log::info!("d{d} ({}) shut down: reason {reason}, status {status}", dom.name_str());
        self.virq(VIRQ_DOM_EXC);
    }

    /// What happens after domain `d` stopped: dom0 stopping ends the machine.
    fn after_stop(&mut self, d: usize) -> Option<Stop> {
        if d != DOMID_DOM0 as usize {
            return None;
        }
        let dom = &self.domains[d];
        if dom.state == Some(DomainState::Crashed) {
            return Some(Stop::new(
                StopStatus::Dom0Crashed,
                format_args!("dom0 crashed: {}", dom.crash.name()),
            ));
        }
        let (reason, status) = dom.shutdown;
        Some(if reason == ShutdownReason::Poweroff as u32 && status == 0 {
            Stop::new(StopStatus::Ok, format_args!("dom0 powered off"))
        } else {
            Stop::new(
                StopStatus::Dom0Failed,
                format_args!("dom0 shut down with reason {reason}, status {status}"),
            )
        })
    }

    /// Stops domain `d` for misbehaving, with a crash report.
    fn crash(
        &mut self,
        d: usize,
        v: usize,
        reason: CrashReason,
        info: Option<&ExitInfo>,
    ) -> Option<Stop> {
        self.flush_console(d);
        log::error!("d{d}v{v} ({}) crashed: {}", self.domains[d].name_str(), reason.name());
        if let Some(i) = info {
            log::error!(
                "  exit {:#x} ({:?}) qualification {:#x}\n  rip {:#018x} rsp {:#018x} rflags {:#x} cpl {}\n  cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}{}",
                i.raw_reason,
                i.exit,
                i.qualification,
                i.rip,
                i.rsp,
                i.rflags,
                i.cpl,
                i.cr0,
                i.cr3,
                i.cr4,
                i.efer,
                self.domains[d].vcpus[v].gprs.dump("\n  "),
            );
        }
        self.report_mmu(d);
        let dom = &mut self.domains[d];
        dom.state = Some(DomainState::Crashed);
        dom.crash = reason;
        self.virq(VIRQ_DOM_EXC);
        self.after_stop(d)
    }

    /// Appends to domain `d`'s console; complete lines go to microhv's log, a domU's within
    /// its rate limit.
    pub(crate) fn console_write(&mut self, d: usize, bytes: &[u8]) {
        let now = self.now();
        let khz = self.tsc_khz;
        let dom = &mut self.domains[d];
        let (limiter, privileged) = (&mut dom.log_limiter, dom.privileged);
        dom.console.write(bytes, |line| log_limited(d, privileged, limiter, now, khz, line));
        if !privileged && !bytes.is_empty() {
            self.virq(VIRQ_CON_RING);
        }
    }

    fn flush_console(&mut self, d: usize) {
        let now = self.now();
        let khz = self.tsc_khz;
        let dom = &mut self.domains[d];
        let (limiter, privileged) = (&mut dom.log_limiter, dom.privileged);
        dom.console.flush_line(|line| log_limited(d, privileged, limiter, now, khz, line));
        // The domain is going away: no later line will carry the count of those held back.
        if limiter.suppressed > 0 {
            log::info!(target: crate::GUEST_LOG_TARGET, "[d{d}] ({} lines not logged: rate limit; all are in its console ring)", limiter.suppressed);
            limiter.suppressed = 0;
        }
    }
}

/// Logs a console line of domain `d`, unless it is a domU over its rate limit; the first line
/// logged after a gap says how many were not.
fn log_limited(
    d: usize,
    privileged: bool,
    limiter: &mut LogLimiter,
    now: u64,
    tsc_khz: u64,
    line: &[u8],
) {
    if privileged {
        return log_console_line(d, line);
    }
    let before = limiter.suppressed;
    if limiter.allow(now, tsc_khz, line.len()) {
        if before > 0 {
            log::info!(target: crate::GUEST_LOG_TARGET, "[d{d}] ({before} lines not logged: rate limit; all are in its console ring)");
            limiter.suppressed = 0;
        }
        log_console_line(d, line);
    }
}

fn log_console_line(d: usize, line: &[u8]) {
    let mut s: heapless::String<CONSOLE_LINE_BYTES> = heapless::String::new();
    for &b in line {
        let c = if (0x20..0x7f).contains(&b) { b as char } else { '.' };
        let _ = s.push(c);
    }
    log::info!(target: crate::GUEST_LOG_TARGET, "[d{d}] {s}");
}

fn free_run<const W: usize>(frames: &mut FrameAllocator<W>, pa: u64, n: u64) {
    for f in 0..n {
        let r = frames.free(pa + f * FRAME_SIZE);
        // Host tests fail on a double free; ring 0 logs it and carries on (nothing was freed).
        debug_assert!(r.is_ok(), "freeing frame {:#x}: {r:?}", pa + f * FRAME_SIZE);
        if let Err(e) = r {
            log::error!("freeing frame {:#x}: {e:?}", pa + f * FRAME_SIZE);
        }
    }
}

/// The ABI error for an MMU error (the mapping documented in the `mmu` crate).
pub fn mmu_errno(e: mmu::Error) -> Errno {
    match e {
        mmu::Error::InvalidArgument => Errno::EINVAL,
        mmu::Error::TooBig => Errno::E2BIG,
        mmu::Error::OutOfMemory => Errno::ENOMEM,
        mmu::Error::NoSpace => Errno::ENOSPC,
        mmu::Error::Exists => Errno::EEXIST,
        mmu::Error::NoSuchSlot => Errno::ESRCH,
        mmu::Error::Busy => Errno::EBUSY,
        mmu::Error::CachesEmpty | mmu::Error::Internal => Errno::EINVAL,
    }
}
