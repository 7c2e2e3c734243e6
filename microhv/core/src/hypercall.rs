//! The hypercall dispatcher.
//!
//! Every operation of `ABI.md` is here. The order of checks is part of the ABI: an unknown
//! number is `ENOSYS`; a dom0-only operation from another domain is `EPERM`; then the target
//! domain (`ESRCH`, or `EPERM` when the operation may not target dom0), its state (`EBUSY`),
//! the scalar arguments (`EINVAL`, `E2BIG`), and last the guest addresses (`EFAULT`), all
//! before anything changes. Structures are read from and written to guest memory in place,
//! through the caller's memory slots; nothing here trusts a value it has not checked, and
//! nothing panics on guest input.

use crate::exit::{Backend, VcpuInit};
use crate::frames::FRAME_SIZE;
use crate::hv::{DOMAINS, Hv, mmu_errno};
use crate::mem::{Machine, PhysMem};
use abi::hypercall::*;
use abi::types::{
    CrashReason, DOMCREATE_DEVICE_MODEL, DOMCREATE_FLAGS_VALID, DOMCREATE_SMALL_PAGES,
    DOMINFO_PRIVILEGED, DomainCreate, DomainInfo, DomainState, DomainStats, IoReq, PhysInfo,
    VCPU_MODE_FLAT32, VcpuState,
};
use abi::{Errno, Op};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// What the dispatcher decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Return this value in rax and continue.
    Return(i64),
    /// The caller stopped (it shut itself down); nothing is returned.
    Stopped,
}

/// Alignment required of structure arguments.
pub const STRUCT_ALIGN: u64 = 8;

/// What an operation returns: the value for `rax`, or the error.
pub(crate) type R = Result<u64, Errno>;

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    /// Dispatches the hypercall in vCPU `v` of domain `d`'s registers.
    pub(crate) fn dispatch(&mut self, d: usize, v: usize) -> Outcome {
        let g = self.domains[d].vcpus[v].gprs;
        let args = [g.rdi, g.rsi, g.rdx, g.r10, g.r8];
        let Some(op) = Op::from_number(g.rax) else {
            return Outcome::Return(Errno::ENOSYS.to_ret());
        };
        if op.dom0_only() && !self.domains[d].privileged {
            return Outcome::Return(Errno::EPERM.to_ret());
        }
        let r = match op {
            Op::Version => Ok(abi::abi_version_word().into()),
            Op::ConsoleWrite => self.op_console_write(d, args[0], args[1]),
            Op::Yield => {
                self.yield_cpu();
                Ok(0)
            }
            Op::Shutdown => match self.op_shutdown_self(d, args[0], args[1]) {
                Ok(()) => return Outcome::Stopped,
                Err(e) => Err(e),
            },
            Op::VcpuUp => self.op_vcpu_up(d, args[0], args[1]),
            Op::DomainCreate => self.op_domain_create(d, args[0]),
            Op::DomainDestroy => self.op_domain_destroy(d, v, args[0]),
            Op::DomainPause => self.op_domain_pause(args[0]),
            Op::DomainUnpause => self.op_domain_unpause(args[0]),
            Op::DomainGetInfo => self.op_domain_getinfo(d, args[0], args[1]),
            Op::DomainList => self.op_domain_list(d, args[0], args[1]),
            Op::MmuPagesSet => self.op_mmu_pages_set(args[0], args[1]),
            Op::MmuPagesGet => self.target(args[0]).map(|t| self.domains[t].mmu.n_max()),
            Op::MemSet => self.op_mem_set(args[0], args[1]),
            Op::MemWrite => self.op_mem_write(d, args[0], args[1], args[2], args[3]),
            Op::VcpuSetState => self.op_vcpu_set_state(d, args[0], args[1], args[2]),
            Op::ConsoleRead => self.op_console_read(d, args[0], args[1], args[2]),
            Op::ConsoleInput => self.op_console_input(d, args[0], args[1], args[2]),
            Op::PhysInfo => self.op_phys_info(d, args[0]),
            Op::Stats => self.op_stats(d, args[0], args[1]),
            Op::DomainShutdown => self.op_domain_shutdown(args[0], args[1], args[2]),
            Op::IoreqNext => self.op_ioreq_next(d, args[0]),
            Op::IoreqComplete => self.target_domu(args[0]).and_then(|t| {
                let v = usize::try_from(args[1]).map_err(|_| Errno::EINVAL)?;
                self.ioreq_complete(t, v, args[2], args[3]).map(|()| 0)
            }),
            Op::IrqLevel => self
                .target_domu(args[0])
                .and_then(|t| self.irq_level(t, args[1], args[2], args[3]).map(|()| 0)),
            Op::EvtchnAllocUnbound => {
                self.target(args[0]).and_then(|r| self.evtchn.alloc_unbound(d, r))
            }
            Op::EvtchnBindInterdomain => {
                self.target(args[0]).and_then(|r| self.evtchn.bind_interdomain(d, r, args[1]))
            }
            Op::EvtchnBindVirq => self.evtchn.bind_virq(d, args[0]),
            Op::EvtchnSend => self.evtchn_send(d, args[0]),
            Op::EvtchnClose => self.evtchn_close(d, args[0]),
            Op::EvtchnStatus => (self.evtchn.status(d, args[0]))
                .and_then(|p| self.write_struct(d, args[1], &p.status()).map(|()| 0)),
            Op::EvtchnSetCallback => self.evtchn_set_callback(d, args[0], args[1]),
            Op::GrantSet => self.grant_set(d, args[0], args[1], args[2], args[3]),
            Op::GrantRevoke => self.grants.revoke(d, args[0]),
            Op::GrantMap => self.grant_map(d, args),
            Op::GrantUnmap => self.grant_unmap(d, args[0]),
            Op::GrantCopyFrom => self.grant_copy(d, args, false),
            Op::GrantCopyTo => self.grant_copy(d, args, true),
            Op::GrantQuery => (self.grants.status(d, args[0]))
                .and_then(|st| self.write_struct(d, args[1], &st).map(|()| 0)),
        };
        Outcome::Return(r.map_or_else(Errno::to_ret, |v| v as i64))
    }

    // ---- argument helpers ----------------------------------------------------------------------

    /// An existing domain named by a hypercall argument.
    pub(crate) fn target(&self, domid: u64) -> Result<usize, Errno> {
        let t = usize::try_from(domid).map_err(|_| Errno::ESRCH)?;
        match self.domains.get(t) {
            Some(dom) if dom.exists() => Ok(t),
            _ => Err(Errno::ESRCH),
        }
    }

    /// An existing domain other than dom0.
    fn target_domu(&self, domid: u64) -> Result<usize, Errno> {
        let t = self.target(domid)?;
        if self.domains[t].privileged { Err(Errno::EPERM) } else { Ok(t) }
    }

    /// A domain other than dom0 (as [`Self::target_domu`]) in one of `states`, else `EBUSY`.
    fn target_domu_in(&self, domid: u64, states: &[DomainState]) -> Result<usize, Errno> {
        let t = self.target_domu(domid)?;
        let ok = self.domains[t].state.is_some_and(|s| states.contains(&s));
        if ok { Ok(t) } else { Err(Errno::EBUSY) }
    }

    /// Reads a structure argument from domain `d`'s memory.
    fn read_struct<T>(&self, d: usize, gpa: u64) -> Result<T, Errno>
    where
        T: FromBytes + IntoBytes + KnownLayout + Immutable,
    {
        aligned(gpa)?;
        let mut t = T::new_zeroed();
        self.copy_from_guest(d, gpa, t.as_mut_bytes())?;
        Ok(t)
    }

    /// Writes a structure result to domain `d`'s RAM at `gpa` (aligned; it may cross from one
    /// memory slot into the next), after checking all of it.
    fn write_struct<T>(&mut self, d: usize, gpa: u64, value: &T) -> Result<(), Errno>
    where
        T: IntoBytes + Immutable,
    {
        aligned(gpa)?;
        let bytes = value.as_bytes();
        self.check_range(d, gpa, bytes.len() as u64, true)?;
        self.copy_to_guest(d, gpa, bytes)
    }

    /// Copies bytes out of domain `d`'s memory, a page at a time (ranges may cross slots).
    pub(crate) fn copy_from_guest(&self, d: usize, gpa: u64, out: &mut [u8]) -> Result<(), Errno> {
        let mut done = 0usize;
        while done < out.len() {
            let at = gpa.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let chunk = ((FRAME_SIZE - at % FRAME_SIZE) as usize).min(out.len() - done);
            let hpa = self.guest_hpa(d, at, chunk as u64, false).ok_or(Errno::EFAULT)?;
            self.read_clean(hpa, &mut out[done..done + chunk]);
            done += chunk;
        }
        Ok(())
    }

    /// Checks that `[gpa, gpa + len)` of domain `d` is RAM (`writable`) or any mapped memory.
    pub(crate) fn check_range(
        &self,
        d: usize,
        gpa: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), Errno> {
        let end = gpa.checked_add(len).ok_or(Errno::EFAULT)?;
        let mut at = gpa;
        while at < end {
            let chunk = (FRAME_SIZE - at % FRAME_SIZE).min(end - at);
            self.guest_hpa(d, at, chunk, writable).ok_or(Errno::EFAULT)?;
            at += chunk;
        }
        Ok(())
    }

    /// Copies bytes into domain `d`'s RAM, a page at a time. The range must have been checked.
    pub(crate) fn copy_to_guest(&mut self, d: usize, gpa: u64, data: &[u8]) -> Result<(), Errno> {
        let mut done = 0usize;
        while done < data.len() {
            let at = gpa.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let chunk = ((FRAME_SIZE - at % FRAME_SIZE) as usize).min(data.len() - done);
            let hpa = self.guest_range(d, at, chunk as u64, true).ok_or(Errno::EFAULT)?;
            self.mem.write(hpa, &data[done..done + chunk]);
            done += chunk;
        }
        Ok(())
    }

    // ---- operations ----------------------------------------------------------------------------

    fn op_console_write(&mut self, d: usize, gpa: u64, len: u64) -> R {
        if len > CONSOLE_WRITE_MAX {
            return Err(Errno::E2BIG);
        }
        let mut buf = [0u8; CONSOLE_WRITE_MAX as usize];
        let buf = &mut buf[..len as usize];
        self.copy_from_guest(d, gpa, buf)?;
        self.console_write(d, buf);
        Ok(len)
    }

    fn op_shutdown_self(&mut self, d: usize, reason: u64, status: u64) -> Result<(), Errno> {
        let reason = ShutdownReason::from_u64(reason).ok_or(Errno::EINVAL)?;
        let status = u32::try_from(status).map_err(|_| Errno::EINVAL)?;
        self.shutdown_domain(d, reason as u32, status);
        if reason == ShutdownReason::Crash {
            self.domains[d].crash = CrashReason::GuestRequested;
        }
        Ok(())
    }

    fn op_domain_shutdown(&mut self, domid: u64, reason: u64, status: u64) -> R {
        let t = self.target_domu(domid)?;
        if self.domains[t].stopped() {
            return Err(Errno::EBUSY);
        }
        let reason = ShutdownReason::from_u64(reason).ok_or(Errno::EINVAL)?;
        let status = u32::try_from(status).map_err(|_| Errno::EINVAL)?;
        self.shutdown_domain(t, reason as u32, status);
        Ok(0)
    }

    /// `IoreqNext`: the caller's buffer is checked before a request is taken.
    fn op_ioreq_next(&mut self, d: usize, gpa: u64) -> R {
        aligned(gpa)?;
        self.check_range(d, gpa, size_of::<IoReq>() as u64, true)?;
        match self.ioreq_next() {
            Some(req) => self.write_struct(d, gpa, &req).map(|()| 1),
            None => Ok(0),
        }
    }

    fn op_domain_create(&mut self, d: usize, gpa: u64) -> R {
        let c: DomainCreate = self.read_struct(d, gpa)?;
        let name = abi::types::name_str(&c.name);
        let name_ok = abi::types::name_field(name) == Some(c.name);
        if !name_ok || c.flags & !DOMCREATE_FLAGS_VALID != 0 || c.vcpus == 0 {
            return Err(Errno::EINVAL);
        }
        if c.vcpus > MAX_VCPUS_PER_DOMAIN {
            return Err(Errno::E2BIG);
        }
        mem_size_ok(c.mem_bytes)?;
        if c.mmu_pages != 0 && c.mmu_pages < mmu::MIN_MMU_PAGES {
            return Err(Errno::EINVAL);
        }
        if c.mmu_pages > mmu::MAX_MMU_PAGES {
            return Err(Errno::E2BIG);
        }
        if self.domains.iter().any(|x| x.exists() && x.name == c.name) {
            return Err(Errno::EEXIST);
        }
        let t = (0..DOMAINS).find(|&i| !self.domains[i].exists()).ok_or(Errno::ENOSPC)?;
        if c.mem_bytes / FRAME_SIZE > self.frames.free_frames() {
            return Err(Errno::ENOMEM);
        }
        let mut cfg = self.mmu_config;
        if c.flags & DOMCREATE_SMALL_PAGES != 0 {
            (cfg.large_2m, cfg.large_1g) = (false, false);
        }
        self.domains[t].mmu = mmu::Mmu::new(cfg);
        self.domains[t].name = c.name;
        self.domains[t].device_model = c.flags & DOMCREATE_DEVICE_MODEL != 0;
        self.instances = self.instances.wrapping_add(1);
        self.domains[t].instance = self.instances;
        self.domains[t].state = Some(DomainState::Created);
        let built = (|| {
            self.add_ram(t, 0, c.mem_bytes)?;
            let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
            self.domains[t].mmu.set_requested_pages(&mut m, c.mmu_pages).map_err(mmu_errno)?;
            self.create_vcpus(t, c.vcpus, VcpuInit::default())?;
            // vCPUs wait for their state (VcpuSetState) before they may run.
            for i in 0..c.vcpus as usize {
                self.domains[t].vcpus[i].init = Some(VcpuInit::default());
            }
            Ok(())
        })();
        if let Err(e) = built {
            self.destroy_domain(t);
            return Err(e);
        }
        log::info!("d{t} ({name}) created: {} MiB, {} vCPU(s)", c.mem_bytes >> 20, c.vcpus);
        Ok(t as u64)
    }

    fn op_domain_destroy(&mut self, d: usize, v: usize, domid: u64) -> R {
        let t = self.target_domu(domid)?;
        log::info!("d{t} ({}) destroyed", self.domains[t].name_str());
        if self.domains[t].runnable() && log::log_enabled!(log::Level::Debug) {
            self.report_vcpus(t);
        }
        self.destroy_domain(t);
        // A vCPU of it still running elsewhere: the caller goes on once that CPU freed it.
        self.domains[d].vcpus[v].reaps = self.orphans > 0;
        self.virq(VIRQ_DOM_EXC);
        Ok(0)
    }

    fn op_domain_pause(&mut self, domid: u64) -> R {
        let t = self.target_domu_in(domid, &[DomainState::Running])?;
        self.domains[t].state = Some(DomainState::Paused);
        // Its vCPUs running on other CPUs are out of the guest before this returns (as Xen's
        // `domain_pause` waits for them), and no CPU picks them again.
        crate::smp::quiesce_domain(t);
        Ok(0)
    }

    fn op_domain_unpause(&mut self, domid: u64) -> R {
        let t = self.target_domu(domid)?;
        match self.domains[t].state {
            Some(DomainState::Paused) => {}
            Some(DomainState::Created) => {
                // vCPU 0 must have been given a state; the others stay waiting until they are.
                if self.domains[t].vcpus[0].init.is_some() {
                    return Err(Errno::EINVAL);
                }
            }
            _ => return Err(Errno::EBUSY),
        }
        self.domains[t].state = Some(DomainState::Running);
        Ok(0)
    }

    fn fill_info(&self, t: usize) -> DomainInfo {
        let dom = &self.domains[t];
        let st = dom.mmu.stats();
        DomainInfo {
            domid: t as u32,
            state: dom.state.map_or(0, |s| s as u32),
            name: dom.name,
            vcpus: dom.vcpu_count,
            flags: if dom.privileged { DOMINFO_PRIVILEGED } else { 0 },
            mem_bytes: dom.mem_bytes,
            mmu_used: st.n_used,
            mmu_max: st.n_max,
            mmu_requested: st.n_requested,
            exits: dom.counters.total_exits(),
            ept_faults: dom.counters.exits[abi::types::ExitReason::NestedPageFault as usize],
            mmu_zaps: st.pages_zapped,
            cpu_time: dom.counters.cpu_time,
            shutdown_reason: dom.shutdown.0,
            shutdown_status: dom.shutdown.1,
            crash_reason: dom.crash as u32,
            instance: dom.instance,
        }
    }

    fn op_domain_getinfo(&mut self, d: usize, domid: u64, gpa: u64) -> R {
        let t = self.target(domid)?;
        let info = self.fill_info(t);
        self.write_struct(d, gpa, &info).map(|()| 0)
    }

    fn op_domain_list(&mut self, d: usize, gpa: u64, capacity: u64) -> R {
        let cap = capacity.min(DOMAINS as u64);
        let entry = size_of::<DomainInfo>() as u64;
        if cap > 0 {
            aligned(gpa)?;
            self.check_range(d, gpa, cap * entry, true)?;
        }
        let mut n = 0u64;
        for t in 0..DOMAINS {
            if !self.domains[t].exists() {
                continue;
            }
            if n < cap {
                let info = self.fill_info(t);
                self.copy_to_guest(d, gpa + n * entry, info.as_bytes())?;
            }
            n += 1;
        }
        Ok(n)
    }

    fn op_mmu_pages_set(&mut self, domid: u64, n: u64) -> R {
        let t = self.target(domid)?;
        if self.domains[t].stopped() {
            return Err(Errno::EBUSY);
        }
        let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        self.domains[t].mmu.set_requested_pages(&mut m, n).map_err(mmu_errno)?;
        Ok(0)
    }

    fn op_mem_set(&mut self, domid: u64, bytes: u64) -> R {
        let t = self.target_domu_in(domid, &[DomainState::Created, DomainState::Paused])?;
        mem_size_ok(bytes)?;
        let cur = self.domains[t].mem_bytes;
        if bytes > cur {
            if (bytes - cur) / FRAME_SIZE > self.frames.free_frames() {
                return Err(Errno::ENOMEM);
            }
            self.add_ram(t, cur, bytes - cur)?;
        } else if bytes < cur {
            self.shrink_ram(t, bytes)?;
        }
        Ok(0)
    }

    fn op_mem_write(&mut self, d: usize, domid: u64, dst: u64, src: u64, len: u64) -> R {
        let t = self.target_domu_in(domid, &[DomainState::Created, DomainState::Paused])?;
        if len > MEM_WRITE_MAX {
            return Err(Errno::E2BIG);
        }
        self.check_range(d, src, len, false)?;
        self.check_range(t, dst, len, true)?;
        let mut buf = [0u8; FRAME_SIZE as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(FRAME_SIZE);
            let chunk = &mut buf[..n as usize];
            self.copy_from_guest(d, src + done, chunk)?;
            self.copy_to_guest(t, dst + done, chunk)?;
            done += n;
        }
        Ok(len)
    }

    fn op_vcpu_set_state(&mut self, d: usize, domid: u64, vcpu: u64, gpa: u64) -> R {
        let t = self.target_domu_in(domid, &[DomainState::Created])?;
        if vcpu >= u64::from(self.domains[t].vcpu_count) {
            return Err(Errno::EINVAL);
        }
        self.start_vcpu(d, t, vcpu as usize, gpa)
    }

    /// `VcpuUp`: the caller starts one of its own vCPUs that waits for its state.
    fn op_vcpu_up(&mut self, d: usize, vcpu: u64, gpa: u64) -> R {
        let vc = usize::try_from(vcpu)
            .ok()
            .filter(|&v| v < self.domains[d].vcpu_count as usize)
            .ok_or(Errno::EINVAL)?;
        if self.domains[d].vcpus[vc].init.is_none() {
            return Err(Errno::EEXIST);
        }
        self.start_vcpu(d, d, vc, gpa)
    }

    /// Gives vCPU `vcpu` of domain `t` the `VcpuState` at `gpa` of the caller `d`'s memory.
    fn start_vcpu(&mut self, d: usize, t: usize, vcpu: usize, gpa: u64) -> R {
        let s: VcpuState = self.read_struct(d, gpa)?;
        let regs = [s.rip, s.rsp, s.rax, s.rbx, s.rcx, s.rdx, s.rsi, s.rdi];
        let below_4g = regs.into_iter().all(|x| x <= u64::from(u32::MAX));
        if s.mode != VCPU_MODE_FLAT32 || s.flags != 0 || !below_4g {
            return Err(Errno::EINVAL);
        }
        let mut init = VcpuInit { rip: s.rip, rsp: s.rsp, ..VcpuInit::default() };
        (init.gprs.rax, init.gprs.rbx, init.gprs.rcx) = (s.rax, s.rbx, s.rcx);
        (init.gprs.rdx, init.gprs.rsi, init.gprs.rdi) = (s.rdx, s.rsi, s.rdi);
        let vc = &mut self.domains[t].vcpus[vcpu];
        if let Some(arch) = vc.arch.as_mut() {
            self.backend.reset_vcpu(arch, &init);
            self.backend.unload(arch);
        }
        vc.gprs = init.gprs;
        vc.init = None;
        Ok(0)
    }

    fn op_console_read(&mut self, d: usize, domid: u64, gpa: u64, len: u64) -> R {
        let t = self.target(domid)?;
        if len > CONSOLE_READ_MAX {
            return Err(Errno::E2BIG);
        }
        self.check_range(d, gpa, len, true)?;
        let mut buf = [0u8; CONSOLE_READ_MAX as usize];
        let n = self.domains[t].console.read(&mut buf[..len as usize]);
        self.copy_to_guest(d, gpa, &buf[..n])?;
        Ok(n as u64)
    }

    fn op_console_input(&mut self, d: usize, domid: u64, gpa: u64, len: u64) -> R {
        let t = self.target_domu(domid)?;
        if len > CONSOLE_INPUT_MAX {
            return Err(Errno::E2BIG);
        }
        let mut buf = [0u8; CONSOLE_INPUT_MAX as usize];
        let buf = &mut buf[..len as usize];
        self.copy_from_guest(d, gpa, buf)?;
        let n = self.domains[t].platform.as_mut().map_or(0, |p| p.console_input(buf));
        self.timers_changed();
        Ok(n as u64)
    }

    fn op_phys_info(&mut self, d: usize, gpa: u64) -> R {
        let info = PhysInfo {
            total_bytes: self.frames.managed_frames() * FRAME_SIZE,
            free_bytes: self.frames.free_frames() * FRAME_SIZE,
            hv_bytes: self.hv_frames * FRAME_SIZE,
            mmu_pages_floor: mmu::MIN_MMU_PAGES,
            cpus: self.cpus,
            domains: self.domains.iter().filter(|x| x.exists()).count() as u32,
            max_domains: MAX_DOMAINS,
            abi_version: abi::abi_version_word(),
            virt: self.backend.kind(),
            time_slice: crate::policy::VCPU_SLICE as u32,
            dirty_free_bytes: self.frames.dirty_free_frames() * FRAME_SIZE,
        };
        self.write_struct(d, gpa, &info).map(|()| 0)
    }

    fn op_stats(&mut self, d: usize, domid: u64, gpa: u64) -> R {
        let t = self.target(domid)?;
        let dom = &self.domains[t];
        let st = dom.mmu.stats();
        let out = DomainStats {
            domid: t as u32,
            reserved: 0,
            exits_by_reason: dom.counters.exits,
            hypercalls: dom.counters.hypercalls,
            faults_fixed: st.faults_fixed + st.faults_fast,
            faults_spurious: st.faults_spurious,
            faults_mmio: st.faults_no_slot,
            mmu_pages_allocated: st.pages_allocated,
            mmu_pages_zapped: st.pages_zapped,
            mmu_reclaims: st.reclaims,
            tlb_flushes: dom.counters.tlb_flushes,
            mmu_used: st.n_used,
            mmu_max: st.n_max,
            mmu_requested: st.n_requested,
            cpu_time: dom.counters.cpu_time,
            mmu_frames: dom.mmu.frames_held(),
        };
        self.write_struct(d, gpa, &out).map(|()| 0)
    }
}

/// Checks a structure argument's alignment.
fn aligned(gpa: u64) -> Result<(), Errno> {
    if gpa.is_multiple_of(STRUCT_ALIGN) { Ok(()) } else { Err(Errno::EINVAL) }
}

/// Checks a memory size argument.
fn mem_size_ok(bytes: u64) -> Result<(), Errno> {
    if !bytes.is_multiple_of(FRAME_SIZE) || bytes < MIN_DOMAIN_MEM {
        return Err(Errno::EINVAL);
    }
    if bytes > MAX_DOMAIN_MEM {
        return Err(Errno::E2BIG);
    }
    Ok(())
}
