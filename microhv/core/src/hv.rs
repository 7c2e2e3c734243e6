//! The hypervisor: the domain table, dom0's construction, the run loop and the exit handlers.
//!
//! [`Hv`] owns everything microhv keeps: the frame allocator, the domain table (each domain
//! with its MMU, vCPUs, console and counters) and the backend. [`Hv::run`] is the scheduler
//! and VM-exit dispatcher; it returns only when the machine must stop (dom0 shut down or
//! crashed), with the verdict for the stop line.

use crate::boot::Range;
use crate::console::{CONSOLE_LINE_BYTES, LogLimiter};
use crate::cpuid::{Caller, guest_cpuid};
use crate::domain::{Domain, MAX_RAM_SLOTS, MODULE_SLOT_BASE, VCPUS};
use crate::exit::{Backend, CpuMode, Event, Exit, ExitInfo, GuestReg, VcpuConfig, VcpuInit};
use crate::frames::{FRAME_SIZE, FrameAllocator, HOST_BITMAP_WORDS};
use crate::insn::{self, MmioOp};
use crate::io::{APIC_BASE, APIC_SIZE, IoOutcome, merge_in, merge_reg};
use crate::mem::{Machine, PhysMem};
use crate::policy::{self, HLT_BLOCK_TICKS, VCPU_SLICE, VCPU_SLICE_NONE};
use crate::regs;
use crate::status::StopStatus;
use crate::walk::{Paging, linear_to_phys};
use abi::Errno;
use abi::hypercall::{DOMID_DOM0, MAX_DOMAINS, ShutdownReason};
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
    /// MMU configuration for new domains (format and large-page support of this CPU).
    pub mmu_config: mmu::Config,
    /// Frames microhv keeps for itself (its image, boot data, modules), for `PhysInfo`.
    pub hv_frames: u64,
    /// Host TSC ticks per millisecond (measured or reported at boot): microhv's real time.
    pub tsc_khz: u64,
    /// Last (domain, vCPU) run, where round-robin resumes.
    cursor: (usize, usize),
    /// TSC when the current vCPU's slice began.
    slice_start: u64,
    /// The running vCPU asked to give up the CPU.
    yielded: bool,
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
            mmu_config,
            hv_frames: 0,
            tsc_khz: crate::console::DEFAULT_TSC_KHZ,
            cursor: (0, 0),
            slice_start: 0,
            yielded: false,
        }
    }

    /// The frame allocator and memory, as the MMU and the backends take them.
    pub fn machine(&mut self) -> Machine<'_, P, W> {
        Machine { frames: &mut self.frames, mem: &mut self.mem }
    }

    // ---- domain memory ------------------------------------------------------------------------

    /// Gives domain `d` `bytes` more RAM starting at guest-physical `gpa`, zeroed, as MMU slots
    /// of host-contiguous runs. On failure nothing is left allocated.
    pub(crate) fn add_ram(&mut self, d: usize, gpa: u64, bytes: u64) -> Result<(), Errno> {
        let mut left = bytes / FRAME_SIZE;
        let mut at = gpa;
        let mut added = 0u32;
        while left > 0 {
            let Some(id) = (0..MAX_RAM_SLOTS).find(|&i| self.domains[d].mmu.slot(i).is_none())
            else {
                self.rollback_ram(d, added);
                return Err(Errno::ENOMEM);
            };
            let mut n = left;
            let run = loop {
                let align = if n >= LARGE_RUN_FRAMES && at % (LARGE_RUN_FRAMES * FRAME_SIZE) == 0 {
                    LARGE_RUN_FRAMES
                } else {
                    1
                };
                if let Some(pa) = self.frames.alloc_contiguous(n, align) {
                    break pa;
                }
                if n == 1 {
                    self.rollback_ram(d, added);
                    return Err(Errno::ENOMEM);
                }
                n /= 2;
            };
            self.mem.zero(run, n * FRAME_SIZE);
            let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
            if let Err(e) = self.domains[d].mmu.add_slot(&mut m, id, at, n * FRAME_SIZE, run, 0) {
                // A slot the MMU installed before failing is removed (and its run freed) by the
                // rollback; only a run no slot maps may be freed here.
                if self.domains[d].mmu.slot(id).is_some() {
                    added |= 1 << id;
                } else {
                    free_run(&mut self.frames, run, n);
                }
                self.rollback_ram(d, added);
                return Err(mmu_errno(e));
            }
            added |= 1 << id;
            at += n * FRAME_SIZE;
            left -= n;
        }
        self.domains[d].mem_bytes += bytes;
        Ok(())
    }

    fn rollback_ram(&mut self, d: usize, slots: u32) {
        for id in (0..MAX_RAM_SLOTS).filter(|i| slots & (1 << i) != 0) {
            self.remove_ram_slot(d, id);
        }
    }

    /// Removes RAM slot `id` of domain `d` and frees its frames.
    fn remove_ram_slot(&mut self, d: usize, id: usize) {
        let Some(s) = self.domains[d].mmu.slot(id) else {
            return;
        };
        let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        match self.domains[d].mmu.remove_slot(&mut m, id) {
            Ok(()) => free_run(&mut self.frames, s.hpa, s.size / FRAME_SIZE),
            // The slot may still map the run: leaking it is safe, handing it out is not.
            Err(e) => log::error!("d{d}: removing slot {id} failed ({e}): its frames are leaked"),
        }
    }

    /// Shrinks domain `d`'s RAM to `bytes`: slots above are removed, the slot across the new
    /// end is cut (its tail frames freed).
    pub(crate) fn shrink_ram(&mut self, d: usize, bytes: u64) -> Result<(), Errno> {
        for id in 0..MAX_RAM_SLOTS {
            let Some(s) = self.domains[d].mmu.slot(id) else {
                continue;
            };
            if s.gpa >= bytes {
                self.remove_ram_slot(d, id);
            } else if s.gpa + s.size > bytes {
                let keep = bytes - s.gpa;
                let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
                let mmu = &mut self.domains[d].mmu;
                mmu.remove_slot(&mut m, id).map_err(mmu_errno)?;
                free_run(&mut self.frames, s.hpa + keep, (s.size - keep) / FRAME_SIZE);
                let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
                if let Err(e) = self.domains[d].mmu.add_slot(&mut m, id, s.gpa, keep, s.hpa, 0) {
                    // The kept part is unmapped now: free it too, and end the RAM where the
                    // slot began, so that `mem_bytes` still describes memory that exists.
                    if self.domains[d].mmu.slot(id).is_none() {
                        free_run(&mut self.frames, s.hpa, keep / FRAME_SIZE);
                    }
                    self.shrink_ram(d, s.gpa)?;
                    return Err(mmu_errno(e));
                }
            }
        }
        self.domains[d].mem_bytes = bytes;
        Ok(())
    }

    /// Host-physical address of `[gpa, gpa + len)` in domain `d` if it lies in one slot;
    /// `writable` also requires it to be RAM (not a read-only module window).
    pub(crate) fn guest_range(&self, d: usize, gpa: u64, len: u64, writable: bool) -> Option<u64> {
        let dom = &self.domains[d];
        if writable && gpa.checked_add(len)? > dom.mem_bytes {
            return None;
        }
        dom.mmu.translate_range(gpa, len)
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
            };
            let v = self.backend.create_vcpu(&mut m, &cfg, &init).map_err(|_| Errno::ENOMEM);
            let v = match v {
                Ok(v) => v,
                Err(e) => {
                    let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
                    let _ = self.domains[d].mmu.release_root(&mut m, i);
                    return Err(e);
                }
            };
            let slot = &mut self.domains[d].vcpus[i];
            slot.arch = Some(v);
            slot.gprs = init.gprs;
            slot.init = None;
        }
        self.domains[d].vcpu_count = count;
        Ok(())
    }

    /// Frees everything domain `d` holds and empties its entry.
    pub(crate) fn destroy_domain(&mut self, d: usize) {
        self.flush_console(d);
        for i in 0..VCPUS {
            if let Some(v) = self.domains[d].vcpus[i].arch.take() {
                let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
                let _ = self.domains[d].mmu.release_root(&mut m, i);
                self.backend.destroy_vcpu(&mut m, v);
            }
        }
        for id in 0..MAX_RAM_SLOTS {
            if let Some(s) = self.domains[d].mmu.slot(id) {
                free_run(&mut self.frames, s.hpa, s.size / FRAME_SIZE);
            }
        }
        let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        self.domains[d].mmu.destroy(&mut m);
        self.domains[d].clear();
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
            let dst = self.guest_range(d, s.paddr, s.memsz, true);
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
        let page =
            pvh::build_start_page(mem_bytes, cmdline, &descs).map_err(|_| Dom0Error::StartPage)?;
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

    // ---- the run loop -------------------------------------------------------------------------

    /// The next runnable (domain, vCPU) after the cursor, round-robin.
    fn pick(&self, now: u64) -> Option<(usize, usize)> {
        let total = DOMAINS * VCPUS;
        let start = self.cursor.0 * VCPUS + self.cursor.1 + 1;
        (0..total)
            .map(|k| (start + k) % total)
            .map(|i| (i / VCPUS, i % VCPUS))
            .find(|&dv| self.can_run(dv, now))
    }

    /// How many vCPUs are waiting to run besides the current one.
    fn others_runnable(&self, cur: (usize, usize)) -> bool {
        (0..DOMAINS).any(|d| {
            self.domains[d].runnable()
                && (0..VCPUS).any(|v| {
                    (d, v) != cur
                        && self.domains[d].vcpus[v].arch.is_some()
                        && self.domains[d].vcpus[v].init.is_none()
                })
        })
    }

    /// True if vCPU `v` of domain `d` may run at `now`.
    fn can_run(&self, (d, v): (usize, usize), now: u64) -> bool {
        let dom = &self.domains[d];
        let vc = &dom.vcpus[v];
        dom.runnable() && vc.arch.is_some() && vc.init.is_none() && vc.blocked_until <= now
    }

    /// Runs guests until the machine must stop.
    ///
    /// Scheduling is round-robin over runnable vCPUs on this one CPU: a vCPU keeps the CPU
    /// until its slice ([`VCPU_SLICE`], enforced with the backend's preemption timer) is used,
    /// it yields or halts, or its domain stops. A vCPU alone gets no time limit.
    pub fn run(&mut self) -> Stop {
        loop {
            // Buffered log output moves on between exits (a no-op when there is none).
            log::logger().flush();
            let now = self.backend.now();
            let keep = !self.yielded
                && self.can_run(self.cursor, now)
                && now.wrapping_sub(self.slice_start) < VCPU_SLICE;
            let (d, v) = if keep {
                self.cursor
            } else {
                let Some(next) = self.pick(now) else {
                    if !self.domains[DOMID_DOM0 as usize].exists() {
                        return Stop::new(StopStatus::Dom0Failed, format_args!("dom0 is gone"));
                    }
                    // Every vCPU is halted: wait for the earliest to wake (no interrupts).
                    core::hint::spin_loop();
                    continue;
                };
                if next != self.cursor
                    && let Some(prev) =
                        self.domains[self.cursor.0].vcpus[self.cursor.1].arch.as_mut()
                {
                    self.backend.unload(prev);
                }
                self.cursor = next;
                self.slice_start = now;
                self.yielded = false;
                next
            };
            let used = now.wrapping_sub(self.slice_start);
            let slice = if self.others_runnable((d, v)) {
                VCPU_SLICE.saturating_sub(used).max(1)
            } else {
                VCPU_SLICE_NONE
            };
            if let Some(stop) = self.run_one(d, v, slice) {
                return stop;
            }
        }
    }

    /// Runs vCPU `v` of domain `d` once and handles its exit.
    fn run_one(&mut self, d: usize, v: usize, slice: u64) -> Option<Stop> {
        if let Err(reason) = self.prepare_entry(d, v) {
            return self.crash(d, v, reason, None);
        }
        let dom = &mut self.domains[d];
        let vc = &mut dom.vcpus[v];
        let arch = vc.arch.as_mut()?;
        let info = self.backend.run(arch, &mut vc.gprs, slice);
        dom.counters.cpu_time += info.ran_ticks;
        dom.counters.count_exit(info.exit.reason());
        self.handle_exit(d, v, &info)
    }

    /// Loads a new MMU root if the old one was zapped, and executes a flush the MMU owes.
    fn prepare_entry(&mut self, d: usize, v: usize) -> Result<(), CrashReason> {
        let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        let dom = &mut self.domains[d];
        let arch = dom.vcpus[v].arch.as_mut().ok_or(CrashReason::EntryFailure)?;
        if dom.mmu.needs_reload(v) {
            let root = dom.mmu.reload_root(&mut m, v).map_err(|e| {
                log::error!("d{d}v{v}: cannot load an MMU root: {e}");
                CrashReason::MmuFailure
            })?;
            self.backend.set_root(arch, root);
        }
        if dom.mmu.take_flush() {
            self.backend.flush(arch);
            dom.counters.tlb_flushes += 1;
        }
        Ok(())
    }

    fn handle_exit(&mut self, d: usize, v: usize, info: &ExitInfo) -> Option<Stop> {
        match info.exit {
            Exit::Hypercall => {
                let ret = if info.cpl != 0 {
                    Errno::EPERM.to_ret()
                } else {
                    self.domains[d].counters.hypercalls += 1;
                    match crate::hypercall::dispatch(self, d, v) {
                        crate::hypercall::Outcome::Return(r) => r,
                        crate::hypercall::Outcome::Stopped => return self.after_stop(d),
                    }
                };
                self.set_rax_and_skip(d, v, ret as u64, info.insn_len);
                None
            }
            Exit::NestedPageFault { gpa, access } => {
                self.nested_page_fault(d, v, gpa, access, info)
            }
            Exit::Io { port, size, write, string, rep } => {
                if string || rep {
                    return self.crash(d, v, CrashReason::UnsupportedIo, Some(info));
                }
                let dom = &mut self.domains[d];
                let rax = dom.vcpus[v].gprs.rax;
                match dom.pc.port_io(dom.privileged, port, size, write, rax as u32) {
                    IoOutcome::Done(val) => {
                        if !write {
                            dom.vcpus[v].gprs.rax = merge_in(rax, size, val);
                        }
                        self.skip(d, v, info.insn_len);
                        None
                    }
                    IoOutcome::Console(b) => {
                        self.console_write(d, &[b]);
                        self.skip(d, v, info.insn_len);
                        None
                    }
                    IoOutcome::Shutdown(status) => {
                        self.shutdown_domain(d, ShutdownReason::Poweroff as u32, status);
                        self.after_stop(d)
                    }
                }
            }
            Exit::Cpuid => {
                let caller = Caller {
                    domid: d as u32,
                    privileged: self.domains[d].privileged,
                    vcpu: v as u32,
                    hypercall_insn: self.backend.hypercall_insn(),
                };
                let g = &self.domains[d].vcpus[v].gprs;
                let (leaf, sub) = (g.rax as u32, g.rcx as u32);
                let backend = &self.backend;
                let r = guest_cpuid(leaf, sub, &caller, |l, s| backend.host_cpuid(l, s));
                let g = &mut self.domains[d].vcpus[v].gprs;
                (g.rax, g.rbx, g.rcx, g.rdx) = (r[0].into(), r[1].into(), r[2].into(), r[3].into());
                self.skip(d, v, info.insn_len);
                None
            }
            Exit::RdMsr | Exit::WrMsr => {
                if self.msr(d, v, info.exit == Exit::WrMsr) {
                    self.skip(d, v, info.insn_len);
                } else {
                    self.inject(d, v, Event::GeneralProtection);
                }
                None
            }
            Exit::Hlt => {
                self.skip(d, v, info.insn_len);
                self.domains[d].vcpus[v].blocked_until = self.backend.now() + HLT_BLOCK_TICKS;
                self.yielded = true;
                None
            }
            Exit::CrWrite { cr, value } => {
                // Outside 64-bit code the register's upper half is not part of the operand.
                let code64 = info.mode == CpuMode::Bits64;
                let value = if code64 { value } else { value & 0xffff_ffff };
                log::trace!(
                    "d{d}v{v}: CR{cr} <- {value:#x} (cr0 {:#x} cr4 {:#x})",
                    info.cr0,
                    info.cr4
                );
                let ok = match cr {
                    0 => {
                        policy::cr0_write_ok(value, info.efer, info.cr4, code64)
                            && self.ia32e_activation_ok(d, v, info.cr0, value, info.efer)
                    }
                    4 => {
                        let l1 = self.backend.host_cpuid(1, 0)[3];
                        let l7 = self.backend.host_cpuid(7, 0)[1];
                        policy::cr4_write_ok(value, info.efer, policy::guest_cr4_allowed(l1, l7))
                    }
                    _ => false,
                };
                let (cr0, cr4) = if cr == 0 { (value, info.cr4) } else { (info.cr0, value) };
                // Entering (or staying in) PAE paging loads the four PDPTEs, as MOV to CR would.
                let pae = cr0 & regs::CR0_PG != 0
                    && cr4 & regs::CR4_PAE != 0
                    && info.efer & regs::EFER_LME == 0;
                let pdptes = if ok && pae { self.pae_pdptes(d, info.cr3) } else { Some([0; 4]) };
                match (ok, pdptes) {
                    (true, Some(p)) => {
                        let reg = if cr == 0 { GuestReg::Cr0 } else { GuestReg::Cr4 };
                        self.write_reg(d, v, reg, value);
                        if pae {
                            for (i, e) in p.into_iter().enumerate() {
                                self.write_reg(d, v, GuestReg::Pdpte(i as u8), e);
                            }
                        }
                        self.skip(d, v, info.insn_len);
                    }
                    _ => self.inject(d, v, Event::GeneralProtection),
                }
                None
            }
            Exit::InvalidOpcode => {
                self.inject(d, v, Event::InvalidOpcode);
                None
            }
            Exit::Invd => {
                self.skip(d, v, info.insn_len);
                None
            }
            Exit::Rdpmc | Exit::TaskSwitch => {
                self.inject(d, v, Event::GeneralProtection);
                None
            }
            Exit::Timer => {
                self.yielded = true;
                None
            }
            Exit::Interrupt => None,
            Exit::TripleFault => self.crash(d, v, CrashReason::TripleFault, Some(info)),
            Exit::EntryFailure => self.crash(d, v, CrashReason::EntryFailure, Some(info)),
            Exit::Unhandled => self.crash(d, v, CrashReason::UnhandledExit, Some(info)),
        }
    }

    fn nested_page_fault(
        &mut self,
        d: usize,
        v: usize,
        gpa: u64,
        a: crate::exit::Access,
        info: &ExitInfo,
    ) -> Option<Stop> {
        let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        let mmu = &mut self.domains[d].mmu;
        let access = Access { read: a.read, write: a.write, fetch: a.exec, present: a.present };
        let r = mmu.topup(&mut m).and_then(|()| mmu.page_fault(&mut m, v, gpa, access));
        match r {
            Ok(FaultOutcome::Fixed { size }) => {
                log::trace!("d{d}v{v}: nested page fault at {gpa:#x} mapped ({size:?})");
                None
            }
            Ok(FaultOutcome::Spurious | FaultOutcome::Retry) => None,
            // On hardware a page walk that reaches the APIC page reads no page table; here it
            // would be emulated as the instruction's own access. Neither is worth imitating.
            Ok(FaultOutcome::NoSlot)
                if a.walk && (APIC_BASE..APIC_BASE + APIC_SIZE).contains(&gpa) =>
            {
                log::warn!(
                    "d{d}v{v}: the guest's page-table walk reached the APIC page at {gpa:#x}"
                );
                self.crash(d, v, CrashReason::UnsupportedMmio, Some(info))
            }
            Ok(FaultOutcome::NoSlot) if (APIC_BASE..APIC_BASE + APIC_SIZE).contains(&gpa) => {
                match self.emulate_apic(d, v, gpa - APIC_BASE, a, info) {
                    Ok(()) => None,
                    Err(why) => {
                        log::warn!("d{d}v{v}: APIC access at {gpa:#x} not emulated: {why}");
                        self.crash(d, v, CrashReason::UnsupportedMmio, Some(info))
                    }
                }
            }
            Ok(FaultOutcome::NoSlot | FaultOutcome::ReadOnly) => {
                log::warn!(
                    "d{d}v{v}: {} access to guest-physical {gpa:#x} outside its memory",
                    if a.write {
                        "write"
                    } else if a.exec {
                        "fetch"
                    } else {
                        "read"
                    }
                );
                self.crash(d, v, CrashReason::OutsideMemory, Some(info))
            }
            Err(e) => {
                log::error!("d{d}v{v}: mmu fault at {gpa:#x}: {e}");
                self.crash(d, v, CrashReason::MmuFailure, Some(info))
            }
        }
    }

    /// Reads `len` bytes (1..=8) of domain `d`'s memory at `gpa`, little-endian.
    fn read_guest(&self, d: usize, gpa: u64, len: u8) -> Option<u64> {
        let hpa = self.guest_range(d, gpa, len.into(), false)?;
        let mut b = [0u8; 8];
        self.mem.read(hpa, &mut b[..usize::from(len)]);
        Some(u64::from_le_bytes(b))
    }

    /// What a CR0 write that turns paging on with EFER.LME set — activating IA-32e mode —
    /// needs besides [`policy::cr0_write_ok`]: the CPU raises #GP if the code segment has L
    /// set (so L and D both set, which VM entry would refuse, never gets that far). A task
    /// register still holding a 16-bit TSS is accepted by the CPU, but not by VM entry into an
    /// IA-32e guest: like KVM, its cached type becomes the 64-bit busy TSS the CPU would use.
    fn ia32e_activation_ok(&mut self, d: usize, v: usize, old: u64, new: u64, efer: u64) -> bool {
        if !policy::activates_ia32e(old, new, efer) {
            return true;
        }
        if self.read_reg(d, v, GuestReg::CsLd) & 1 != 0 {
            return false;
        }
        if self.read_reg(d, v, GuestReg::TrType) != policy::TSS_BUSY_64 {
            self.write_reg(d, v, GuestReg::TrType, policy::TSS_BUSY_64);
        }
        true
    }

    /// The four PAE PDPTEs at `cr3`, or `None` (#GP, as the CPU would raise) if they cannot be
    /// read or a present one has reserved bits set.
    fn pae_pdptes(&self, d: usize, cr3: u64) -> Option<[u64; 4]> {
        // Reserved in a PAE PDPTE: bits 1, 2, 5–8, and 63:52.
        const RESERVED: u64 = 0xfff0_0000_0000_01e6;
        let base = cr3 & 0xffff_ffe0;
        let mut out = [0; 4];
        for (i, e) in out.iter_mut().enumerate() {
            *e = self.read_guest(d, base + 8 * i as u64, 8)?;
            if *e & 1 != 0 && *e & RESERVED != 0 {
                return None;
            }
        }
        Some(out)
    }

    /// Emulates the instruction that touched register `off` of the local APIC page.
    fn emulate_apic(
        &mut self,
        d: usize,
        v: usize,
        off: u64,
        access: crate::exit::Access,
        info: &ExitInfo,
    ) -> Result<(), &'static str> {
        if access.exec {
            return Err("instruction fetch from the APIC page");
        }
        let paging = Paging { cr0: info.cr0, cr3: info.cr3, cr4: info.cr4, efer: info.efer };
        // 64-bit code has no segment base; elsewhere the linear address wraps at 4 GiB.
        let linear = match info.mode {
            CpuMode::Bits64 => info.rip,
            _ => info.cs_base.wrapping_add(info.rip) & 0xffff_ffff,
        };
        let mut bytes = [0u8; insn::MAX_INSN_LEN];
        let mut n = 0;
        for (i, b) in bytes.iter_mut().enumerate() {
            let at = linear.wrapping_add(i as u64);
            let phys = linear_to_phys(&paging, at, |g, w| self.read_guest(d, g, w));
            match phys.and_then(|p| self.read_guest(d, p, 1)) {
                Some(x) => *b = x as u8,
                None => break,
            }
            n += 1;
        }
        let m = insn::decode(&bytes[..n], info.mode).map_err(|_| "instruction not decoded")?;
        // CLFLUSH / CLFLUSHOPT / CLWB / PREFETCH of a register page: nothing to flush or fetch
        // in an emulated device, so the instruction completes as a no-op.
        if m.op == MmioOp::NoAccess {
            self.skip(d, v, m.len);
            return Ok(());
        }
        // The instruction at RIP must be what faulted: one that reads for a read, one that
        // writes for a write (otherwise the access came from elsewhere, e.g. delivering an
        // event).
        if (access.write && !m.op.writes()) || (!access.write && !m.op.reads()) {
            return Err("the instruction at RIP does not make this access");
        }
        let id = v as u32;
        let reg_value = |hv: &mut Self, r: insn::Reg| -> u64 {
            let raw = if r.num == 4 {
                hv.read_reg(d, v, GuestReg::Rsp)
            } else {
                hv.domains[d].vcpus[v].gprs.get(r.num).unwrap_or(0)
            };
            if r.high_byte { raw >> 8 } else { raw }
        };
        match m.op {
            MmioOp::Load { reg } => {
                let val = self.domains[d].vcpus[v].lapic.read(id, off, m.size);
                let val = u64::from(val.map_err(|_| "not an aligned 32-bit access")?);
                if reg.num == 4 {
                    let old = self.read_reg(d, v, GuestReg::Rsp);
                    self.write_reg(d, v, GuestReg::Rsp, merge_reg(old, m.size, val, false));
                } else {
                    let g = &mut self.domains[d].vcpus[v].gprs;
                    let old = g.get(reg.num).unwrap_or(0);
                    g.set(reg.num, merge_reg(old, m.size, val, reg.high_byte));
                }
            }
            MmioOp::StoreReg { reg } => {
                let val = reg_value(self, reg) as u32;
                let lapic = &mut self.domains[d].vcpus[v].lapic;
                lapic.write(off, m.size, val).map_err(|_| "not an aligned 32-bit access")?;
            }
            MmioOp::StoreImm { value } => {
                let lapic = &mut self.domains[d].vcpus[v].lapic;
                lapic
                    .write(off, m.size, value as u32)
                    .map_err(|_| "not an aligned 32-bit access")?;
            }
            _ => return Err("instruction form not emulated"),
        }
        self.skip(d, v, m.len);
        Ok(())
    }

    /// Emulates RDMSR / WRMSR; false means #GP.
    fn msr(&mut self, d: usize, v: usize, write: bool) -> bool {
        use policy::msr::*;
        let g = self.domains[d].vcpus[v].gprs;
        let index = g.rcx as u32;
        let value = (g.rdx << 32) | (g.rax & 0xffff_ffff);
        let read = |hv: &mut Self, val: u64| {
            let g = &mut hv.domains[d].vcpus[v].gprs;
            g.rax = val & 0xffff_ffff;
            g.rdx = val >> 32;
            true
        };
        match (index, write) {
            (EFER, false) => {
                let val = self.read_reg(d, v, GuestReg::Efer);
                read(self, val)
            }
            (EFER, true) => {
                let cur = self.read_reg(d, v, GuestReg::Efer);
                let cr0 = self.read_reg(d, v, GuestReg::Cr0);
                let ok = policy::efer_write_ok(value, cur, cr0);
                if ok {
                    self.write_reg(d, v, GuestReg::Efer, value);
                }
                ok
            }
            (FS_BASE, false) => {
                let val = self.read_reg(d, v, GuestReg::FsBase);
                read(self, val)
            }
            (GS_BASE, false) => {
                let val = self.read_reg(d, v, GuestReg::GsBase);
                read(self, val)
            }
            (FS_BASE, true) => {
                self.write_reg(d, v, GuestReg::FsBase, value);
                true
            }
            (GS_BASE, true) => {
                self.write_reg(d, v, GuestReg::GsBase, value);
                true
            }
            (TSC, false) => {
                let now = self.backend.now();
                read(self, now)
            }
            (APIC_BASE, false) => read(self, policy::APIC_BASE_VALUE),
            (APIC_BASE, true) => value == policy::APIC_BASE_VALUE,
            (MISC_ENABLE, false) => read(self, policy::MISC_ENABLE_VALUE),
            (FEATURE_CONTROL, false) => read(self, policy::FEATURE_CONTROL_VALUE),
            _ => {
                log::debug!(
                    "d{d}v{v}: #GP for {} of MSR {index:#x}",
                    if write { "WRMSR" } else { "RDMSR" }
                );
                false
            }
        }
    }

    // ---- small helpers over the backend ---------------------------------------------------------

    fn read_reg(&mut self, d: usize, v: usize, r: GuestReg) -> u64 {
        match self.domains[d].vcpus[v].arch.as_mut() {
            Some(a) => self.backend.read(a, r),
            None => 0,
        }
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
        self.yielded = true;
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
    }

    /// Records a shutdown.
    pub(crate) fn shutdown_domain(&mut self, d: usize, reason: u32, status: u32) {
        self.flush_console(d);
        self.report_mmu(d);
        let dom = &mut self.domains[d];
        dom.state = Some(DomainState::Shutdown);
        dom.shutdown = (reason, status);
        log::info!("d{d} ({}) shut down: reason {reason}, status {status}", dom.name_str());
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
            let g = self.domains[d].vcpus[v].gprs;
            log::error!(
                "  exit {:#x} ({:?}) qualification {:#x}\n  rip {:#018x} rsp {:#018x} rflags {:#x} cpl {}\n  cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}\n  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n  rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}\n  r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}\n  r13 {:#018x} r14 {:#018x} r15 {:#018x}",
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
                g.rax,
                g.rbx,
                g.rcx,
                g.rdx,
                g.rsi,
                g.rdi,
                g.rbp,
                g.r8,
                g.r9,
                g.r10,
                g.r11,
                g.r12,
                g.r13,
                g.r14,
                g.r15,
            );
        }
        self.report_mmu(d);
        let dom = &mut self.domains[d];
        dom.state = Some(DomainState::Crashed);
        dom.crash = reason;
        self.after_stop(d)
    }

    /// Appends to domain `d`'s console; complete lines go to microhv's log, a domU's within
    /// its rate limit.
    pub(crate) fn console_write(&mut self, d: usize, bytes: &[u8]) {
        let now = self.backend.now();
        let khz = self.tsc_khz;
        let dom = &mut self.domains[d];
        let (limiter, privileged) = (&mut dom.log_limiter, dom.privileged);
        dom.console.write(bytes, |line| log_limited(d, privileged, limiter, now, khz, line));
    }

    fn flush_console(&mut self, d: usize) {
        let now = self.backend.now();
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
        if let Err(e) = frames.free(pa + f * FRAME_SIZE) {
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
