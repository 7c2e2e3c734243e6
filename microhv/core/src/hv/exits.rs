//! The exit handlers: hypercalls, nested page faults (MMIO emulation), port I/O, CPUID, MSRs,
//! control registers, HLT and the rest.

use super::*;

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    pub(super) fn handle_exit(&mut self, d: usize, v: usize, info: &ExitInfo) -> Option<Stop> {
        match info.exit {
            Exit::Hypercall => {
                let ret = if info.cpl != 0 {
                    Errno::EPERM.to_ret()
                } else {
                    self.domains[d].counters.hypercalls += 1;
                    match self.dispatch(d, v) {
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
            Exit::Io { port, size, write, string: true, .. } => {
                self.string_io(d, v, port, size, write, info)
            }
            // A REP prefix on IN / OUT is ignored, as the CPU ignores it.
            Exit::Io { port, size, write, .. } => {
                let rax = self.domains[d].vcpus[v].gprs.rax;
                if self.dom0_serves(d, port, size) {
                    let then = IoThen::Port { len: info.insn_len };
                    self.forward((d, v), port, (size, write, rax as u32), then);
                    return None;
                }
                let Some(val) = self.port_io(d, port, size, write, rax as u32) else {
                    return self.after_stop(d);
                };
                if !write {
                    self.domains[d].vcpus[v].gprs.rax = merge_in(rax, size, val);
                }
                self.skip(d, v, info.insn_len);
                None
            }
            Exit::Cpuid => {
                let caller = Caller {
                    domid: d as u32,
                    privileged: self.domains[d].privileged,
                    vcpu: v as u32,
                    hypercall_insn: self.backend.hypercall_insn(),
                    tsc_khz: u32::try_from(self.tsc_khz).unwrap_or(u32::MAX),
                };
                let (g, backend) = (&mut self.domains[d].vcpus[v].gprs, &self.backend);
                crate::fast::apply(FastExit::Cpuid, g, &caller, |l, s| backend.host_cpuid(l, s));
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
            // Spinning on a lock or flag another vCPU of the domain holds: that one should run
            // (KVM's `kvm_vcpu_on_spin` yields to a vCPU of the same VM too). With no sibling
            // that could run, the spin is a timed wait (`udelay`) or on a device: it goes on.
            Exit::Pause => {
                let now = self.now();
                let count = self.domains[d].vcpu_count as usize;
                if (0..count).any(|s| s != v && self.can_run((d, s), now)) {
                    self.yield_cpu();
                }
                None
            }
            Exit::Hlt => {
                self.skip(d, v, info.insn_len);
                // It sleeps until an interrupt it can take arrives (the run loop wakes it).
                let vc = &mut self.domains[d].vcpus[v];
                vc.halted = true;
                vc.halted_if = info.rflags & regs::RFLAGS_IF != 0;
                self.sched[self.cpu].yielded = true;
                None
            }
            // CR8 is the local APIC's TPR (bits 7:4), as the SDM defines it in 64-bit mode; bits
            // 63:4 of what is written are reserved (#GP).
            Exit::CrWrite { cr: 8, value } => {
                let tpr = (value << 4) as u8;
                match self.lapic(d, v) {
                    Some(l) if value >> 4 == 0 => {
                        l.set_tpr(tpr);
                        self.skip(d, v, info.insn_len);
                    }
                    _ => self.inject(d, v, Event::GeneralProtection),
                }
                None
            }
            Exit::CrRead { cr: 8, gpr } => {
                let tpr = self.lapic(d, v).map_or(0, |l| l.tpr());
                let val = u64::from(tpr >> 4);
                if gpr == 4 {
                    self.write_reg(d, v, GuestReg::Rsp, val);
                } else {
                    self.domains[d].vcpus[v].gprs.set(gpr, val);
                }
                self.skip(d, v, info.insn_len);
                None
            }
            Exit::CrRead { .. } => self.crash(d, v, CrashReason::UnhandledExit, Some(info)),
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
            // The run loop decides: the slice is used up, or a device deadline came (whose
            // interrupt may be this vCPU's own, or wake a halted one). Treating it as a yield
            // handed the CPU on at every deadline, and a running guest's own timer interrupt
            // then waited a whole period (a lost periodic tick under Bochs).
            // Injection happens on the way back in (`prepare_entry`).
            Exit::Timer | Exit::InterruptWindow | Exit::Interrupt => None,
            Exit::TripleFault => self.crash(d, v, CrashReason::TripleFault, Some(info)),
            Exit::EntryFailure => self.crash(d, v, CrashReason::EntryFailure, Some(info)),
            Exit::Unhandled => self.crash(d, v, CrashReason::UnhandledExit, Some(info)),
        }
    }

    pub(super) fn nested_page_fault(
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
        let r = match info.mmu {
            Some(r) => r,
            None => mmu.topup(&mut m).and_then(|()| mmu.page_fault(&mut m, v, gpa, access)),
        };
        match r {
            Ok(FaultOutcome::Fixed { size }) => {
                log::trace!("d{d}v{v}: nested page fault at {gpa:#x} mapped ({size:?})");
                None
            }
            Ok(FaultOutcome::Spurious | FaultOutcome::Retry) => None,
            Ok(FaultOutcome::NoSlot) if let Some((page, off)) = self.mmio_page(d, v, gpa) => {
                // On hardware a page walk that reaches a device page reads no page table;
                // emulating it as the instruction's own access would be silently wrong.
                let r = if a.walk {
                    Err("the guest's page-table walk reached it")
                } else {
                    self.emulate_mmio(d, v, page, off, a, info)
                };
                match r {
                    Ok(()) => None,
                    Err(why) => {
                        log::warn!("d{d}v{v}: {page:?} access at {gpa:#x} not emulated: {why}");
                        self.crash(d, v, CrashReason::UnsupportedMmio, Some(info))
                    }
                }
            }
            Ok(o @ (FaultOutcome::NoSlot | FaultOutcome::ReadOnly)) => {
                let what = match (a.write, a.exec) {
                    (true, _) => "write",
                    (false, true) => "fetch",
                    (false, false) => "read",
                };
                // Read-only: dom0's boot-module windows and read-only grant mappings.
                let place =
                    if o == FaultOutcome::ReadOnly { "in read-only" } else { "outside its" };
                log::warn!("d{d}v{v}: {what} access to guest-physical {gpa:#x} {place} memory");
                self.crash(d, v, CrashReason::OutsideMemory, Some(info))
            }
            Err(e) => {
                log::error!("d{d}v{v}: mmu fault at {gpa:#x}: {e}");
                self.crash(d, v, CrashReason::MmuFailure, Some(info))
            }
        }
    }

    /// One IN (`write` false: the value read) or OUT of `size` bytes at `port` that microhv
    /// serves (dom0 serves some: [`Self::dom0_serves`]): a device of the virtual platform, else
    /// the exit ports or nothing (all-ones read, write dropped). A console byte goes to the
    /// domain's console. `None` when the access stopped the domain (power-off): the caller
    /// returns what [`Self::after_stop`] says.
    pub(super) fn port_io(
        &mut self,
        d: usize,
        port: u16,
        size: u8,
        write: bool,
        value: u32,
    ) -> Option<u32> {
        let clock = self.clock();
        let dom = &mut self.domains[d];
        let platform = dom.platform.as_mut().filter(|_| !dom.privileged);
        let outcome = match (platform, write) {
            (Some(p), true) => p.port_write(&clock, port, size, value),
            (Some(p), false) => p.port_read(&clock, port, size).map(IoOutcome::Done),
            (None, _) => None,
        };
        if outcome.is_some() {
            self.timers_changed();
        }
        let dom = &mut self.domains[d];
        match outcome.unwrap_or_else(|| dom.pc.port_io(dom.privileged, port, size, write, value)) {
            IoOutcome::Done(val) => Some(val),
            IoOutcome::Console(b) => {
                self.console_write(d, &[b]);
                Some(0)
            }
            IoOutcome::Shutdown(status) => {
                self.shutdown_domain(d, ShutdownReason::Poweroff as u32, status);
                None
            }
        }
    }

    /// Reads `len` bytes (1..=8) of domain `d`'s memory at `gpa`, little-endian.
    pub(super) fn read_guest(&self, d: usize, gpa: u64, len: u8) -> Option<u64> {
        let hpa = self.guest_hpa(d, gpa, len.into(), false)?;
        let mut b = [0u8; 8];
        self.read_clean(hpa, &mut b[..usize::from(len.min(8))]);
        Some(u64::from_le_bytes(b))
    }

    /// What a CR0 write that turns paging on with EFER.LME set — activating IA-32e mode —
    /// needs besides [`policy::cr0_write_ok`], as the CPU checks it (and as Bochs's model of
    /// it does): #GP if the code segment has L set (so L and D both set, which VM entry would
    /// refuse, never gets that far), and #GP unless the task register holds a busy 32-bit TSS,
    /// the type IA-32e mode reads as its 64-bit TSS (VM entry into an IA-32e guest refuses any
    /// other).
    pub(super) fn ia32e_activation_ok(
        &mut self,
        d: usize,
        v: usize,
        old: u64,
        new: u64,
        efer: u64,
    ) -> bool {
        !policy::activates_ia32e(old, new, efer)
            || (self.read_reg(d, v, GuestReg::CsLd) & 1 == 0
                && self.read_reg(d, v, GuestReg::TrType) == policy::TSS_BUSY_64)
    }

    /// The four PAE PDPTEs at `cr3`, or `None` (#GP, as the CPU would raise) if they cannot be
    /// read or a present one has reserved bits set.
    pub(super) fn pae_pdptes(&self, d: usize, cr3: u64) -> Option<[u64; 4]> {
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

    /// The CPU vendor string guests see (the host's).
    fn vendor(&self) -> [u8; 12] {
        crate::hwcaps::vendor(self.backend.host_cpuid(0, 0))
    }

    /// vCPU `v`'s local APIC.
    fn lapic(&mut self, d: usize, v: usize) -> Option<&mut crate::dev::lapic::Lapic> {
        let p = self.domains[d].platform.as_mut()?;
        // A change through it (IA32_APIC_BASE) may change what is deliverable.
        p.search = u32::MAX;
        p.lapics.get_mut(v)
    }

    /// The emulated device page of domain `d` that `gpa` (not RAM) falls in for vCPU `v`; in a
    /// domain with a PC, space no device claims is [`MmioPage::Absent`].
    fn mmio_page(&self, d: usize, v: usize, gpa: u64) -> Option<(MmioPage, u64)> {
        let dom = &self.domains[d];
        let absent = dom.device_model.then_some((MmioPage::Absent, gpa));
        dom.platform.as_ref()?.mmio_page(v, gpa).or(absent)
    }

    /// Emulates the instruction that touched offset `off` of device page `page`: every form
    /// the decoder knows but the string forms, which fail with a reason.
    pub(super) fn emulate_mmio(
        &mut self,
        d: usize,
        v: usize,
        page: MmioPage,
        off: u64,
        access: crate::exit::Access,
        info: &ExitInfo,
    ) -> Result<(), &'static str> {
        if access.exec {
            return Err("instruction fetch from a device page");
        }
        let (bytes, n) = self.fetch_insn(d, info);
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
        let size = m.size;
        let at = (page, off, size);
        match m.op {
            MmioOp::Load { reg } => {
                let val = self.device_access((d, v), at, None)?;
                self.set_operand(d, v, reg, size, val);
            }
            MmioOp::Extend { reg, width, signed } => {
                let val = self.device_access((d, v), at, None)?;
                let bits = 64 - 8 * u32::from(size);
                let val = if signed { (((val << bits) as i64) >> bits) as u64 } else { val };
                self.set_operand(d, v, reg, width, val);
            }
            MmioOp::StoreReg { reg } => {
                let val = self.operand(d, v, reg);
                self.device_access((d, v), at, Some(val))?;
            }
            MmioOp::StoreImm { value } => {
                self.device_access((d, v), at, Some(value))?;
            }
            MmioOp::Alu { op, src } => {
                let mem = self.device_access((d, v), at, None)?;
                let src = match src {
                    insn::Operand::Reg(r) => self.operand(d, v, r),
                    insn::Operand::Imm(x) => x,
                };
                let flags = self.read_reg(d, v, GuestReg::Rflags);
                let (res, flags) = insn::alu(op, size, mem, src, flags);
                if op.writes() {
                    self.device_access((d, v), at, Some(res))?;
                }
                self.write_reg(d, v, GuestReg::Rflags, flags);
            }
            MmioOp::AluToReg { op, reg } => {
                let mem = self.device_access((d, v), at, None)?;
                let flags = self.read_reg(d, v, GuestReg::Rflags);
                let (res, flags) = insn::alu(op, size, self.operand(d, v, reg), mem, flags);
                if op.writes() {
                    self.set_operand(d, v, reg, size, res);
                }
                self.write_reg(d, v, GuestReg::Rflags, flags);
            }
            MmioOp::Xchg { reg } => {
                let mem = self.device_access((d, v), at, None)?;
                let val = self.operand(d, v, reg);
                self.device_access((d, v), at, Some(val))?;
                self.set_operand(d, v, reg, size, mem);
            }
            MmioOp::String(_) | MmioOp::NoAccess => {
                return Err("string instruction on a device page");
            }
        }
        self.skip(d, v, m.len);
        Ok(())
    }

    /// The bytes of the exiting instruction at CS:RIP, read through the guest's page tables:
    /// fewer than [`insn::MAX_INSN_LEN`] when a page cannot be read.
    pub(super) fn fetch_insn(
        &self,
        d: usize,
        info: &ExitInfo,
    ) -> ([u8; insn::MAX_INSN_LEN], usize) {
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
        (bytes, n)
    }

    /// A register operand's value (AH..BH shifted down).
    fn operand(&mut self, d: usize, v: usize, r: insn::Reg) -> u64 {
        let raw = if r.num == 4 {
            self.read_reg(d, v, GuestReg::Rsp)
        } else {
            self.domains[d].vcpus[v].gprs.get(r.num).unwrap_or(0)
        };
        if r.high_byte { raw >> 8 } else { raw }
    }

    /// Writes `size` bytes of `val` into a register operand as the CPU does.
    fn set_operand(&mut self, d: usize, v: usize, r: insn::Reg, size: u8, val: u64) {
        if r.num == 4 {
            let old = self.read_reg(d, v, GuestReg::Rsp);
            self.write_reg(d, v, GuestReg::Rsp, merge_reg(old, size, val, false));
        } else {
            let g = &mut self.domains[d].vcpus[v].gprs;
            let old = g.get(r.num).unwrap_or(0);
            g.set(r.num, merge_reg(old, size, val, r.high_byte));
        }
    }

    /// Reads (`write` `None`: the value read) or writes `size` bytes at offset `off` of device
    /// page `page` for vCPU `v` of domain `d`.
    fn device_access(
        &mut self,
        (d, v): (usize, usize),
        (page, off, size): (MmioPage, u64, u8),
        write: Option<u64>,
    ) -> Result<u64, &'static str> {
        let clock = self.clock();
        let p = self.domains[d].platform.as_mut().ok_or("no platform")?;
        let r = p.mmio(&clock, v, page, off, size, write);
        self.timers_changed();
        self.startups(d);
        r
    }

    /// Moves vCPU `v`'s TSC, and IA32_TSC_ADJUST with it, by `delta` ticks.
    fn move_tsc(&mut self, d: usize, v: usize, delta: u64) {
        use crate::dev::lapic::MSR_TSC_DEADLINE as DEADLINE;
        let clock = self.clock();
        let vc = &mut self.domains[d].vcpus[v];
        let old = vc.tsc_offset;
        vc.tsc_offset = vc.tsc_offset.wrapping_add(delta);
        vc.tsc_adjust = vc.tsc_adjust.wrapping_add(delta);
        let off = vc.tsc_offset;
        self.write_reg(d, v, GuestReg::TscOffset, off);
        // An armed TSC deadline is a guest TSC value: it comes nearer or recedes with the TSC.
        if let Some(p) = self.domains[d].platform.as_mut()
            && let Ok(host @ 1..) = p.apic_msr(&clock, v, DEADLINE, None)
        {
            let at = host_deadline(host.wrapping_add(old), off, clock.now);
            let _ = p.apic_msr(&clock, v, DEADLINE, Some(at));
            self.timers_changed();
        }
    }

    /// Emulates RDMSR / WRMSR; false means #GP.
    pub(super) fn msr(&mut self, d: usize, v: usize, write: bool) -> bool {
        use crate::dev::lapic::{MSR_TSC_DEADLINE as DEADLINE, MSR_X2APIC};
        use policy::msr::*;
        const X2APIC_FIRST: u32 = *MSR_X2APIC.start();
        const X2APIC_LAST: u32 = *MSR_X2APIC.end();
        let g = self.domains[d].vcpus[v].gprs;
        let index = g.rcx as u32;
        let write = write.then_some((g.rdx << 32) | (g.rax & 0xffff_ffff));
        // The value read (0 for a write), or `None` for #GP.
        let r = match (index, write) {
            (EFER, None) => Some(self.read_reg(d, v, GuestReg::Efer)),
            (EFER, Some(value)) => {
                let cur = self.read_reg(d, v, GuestReg::Efer);
                let cr0 = self.read_reg(d, v, GuestReg::Cr0);
                let ok = policy::efer_write_ok(value, cur, cr0);
                if ok {
                    self.write_reg(d, v, GuestReg::Efer, value);
                }
                ok.then_some(0)
            }
            (FS_BASE | GS_BASE, w) => {
                let reg = if index == FS_BASE { GuestReg::FsBase } else { GuestReg::GsBase };
                match w {
                    None => Some(self.read_reg(d, v, reg)),
                    Some(value) => {
                        self.write_reg(d, v, reg, value);
                        Some(0)
                    }
                }
            }
            (TSC, None) => Some(self.now().wrapping_add(self.domains[d].vcpus[v].tsc_offset)),
            (TSC, Some(value)) => {
                let guest = self.now().wrapping_add(self.domains[d].vcpus[v].tsc_offset);
                self.move_tsc(d, v, value.wrapping_sub(guest));
                Some(0)
            }
            (TSC_ADJUST, None) => Some(self.domains[d].vcpus[v].tsc_adjust),
            (TSC_ADJUST, Some(value)) => {
                self.move_tsc(d, v, value.wrapping_sub(self.domains[d].vcpus[v].tsc_adjust));
                Some(0)
            }
            // The deadline is kept in host TSC terms: the guest's is offset.
            (DEADLINE | X2APIC_FIRST..=X2APIC_LAST, _) => {
                let off = self.domains[d].vcpus[v].tsc_offset;
                let clock = self.clock();
                let arg = match write {
                    Some(value) if index == DEADLINE && value != 0 => {
                        Some(host_deadline(value, off, clock.now))
                    }
                    w => w,
                };
                let Some(p) = self.domains[d].platform.as_mut() else { return false };
                let r = p.apic_msr(&clock, v, index, arg).ok();
                self.timers_changed();
                self.startups(d);
                r.map(|val| {
                    if index == DEADLINE && write.is_none() && val != 0 {
                        val.wrapping_add(off)
                    } else {
                        val
                    }
                })
            }
            (APIC_BASE, None) => {
                Some(self.lapic(d, v).map_or(policy::APIC_BASE_VALUE, |l| l.apic_base()))
            }
            (APIC_BASE, Some(value)) => {
                let ok = self.lapic(d, v).is_some_and(|l| l.set_apic_base(value).is_ok());
                self.timers_changed();
                ok.then_some(0)
            }
            (m, None) if crate::mtrr::Mtrrs::owns(m) => {
                Some(self.domains[d].vcpus[v].mtrrs.read(m).unwrap_or(0))
            }
            (m, Some(value)) if crate::mtrr::Mtrrs::owns(m) => {
                self.domains[d].vcpus[v].mtrrs.write(m, value).ok().map(|()| 0)
            }
            (AMD_SYSCFG | AMD_INT_PENDING, None)
                if crate::hwcaps::is_amd_vendor(&self.vendor()) =>
            {
                Some(0)
            }
            // Microcode revision 1 (what KVM reports too); the write that precedes the read
            // (to ask the CPU to fill it in) is accepted.
            (BIOS_SIGN_ID, None) => Some(1 << 32),
            (BIOS_SIGN_ID, Some(_)) => Some(0),
            (MISC_ENABLE, None) => Some(self.domains[d].vcpus[v].misc_enable),
            (MISC_ENABLE, Some(value)) => {
                let cur = &mut self.domains[d].vcpus[v].misc_enable;
                let ok = (value ^ *cur) & !policy::MISC_ENABLE_WRITABLE == 0;
                if ok {
                    *cur = value;
                }
                ok.then_some(0)
            }
            // AMD's legacy counters exist on every AMD CPU whatever CPUID says; they are inert,
            // as KVM's are without a virtual PMU: reads 0, writes dropped. A guest's probe
            // (write a counter, read it back) then finds no working PMU and never uses RDPMC.
            (m, _) if AMD_PERF.contains(&m) && crate::hwcaps::is_amd_vendor(&self.vendor()) => {
                Some(0)
            }
            (FEATURE_CONTROL, None) => Some(policy::FEATURE_CONTROL_VALUE),
            _ => {
                let what = if write.is_some() { "WRMSR" } else { "RDMSR" };
                log::debug!("d{d}v{v}: #GP for {what} of MSR {index:#x}");
                None
            }
        };
        if let Some(val) = r.filter(|_| write.is_none()) {
            let g = &mut self.domains[d].vcpus[v].gprs;
            (g.rax, g.rdx) = (val & 0xffff_ffff, val >> 32);
        }
        r.is_some()
    }
}

/// The host TSC at which a guest's TSC deadline `guest` comes, for a guest TSC of host TSC plus
/// `offset`: one already reached (compared in guest terms, so no offset wraps it into the far
/// future) comes now (SDM 10.5.4.1: it signals at once).
fn host_deadline(guest: u64, offset: u64, now: u64) -> u64 {
    let ahead = guest.wrapping_sub(now.wrapping_add(offset)) as i64;
    now.saturating_add(ahead.max(0) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::host_deadline;

    #[test]
    fn tsc_deadlines_convert_in_guest_terms() {
        // Guest TSC = host + 1000: a deadline 500 ahead of the guest's now.
        assert_eq!(host_deadline(1000 + 100 + 500, 1000, 100), 600);
        // Already passed, even by the whole offset: now, not 2^64 away.
        assert_eq!(host_deadline(5, 1000, 100), 100);
        // A negative offset (the guest set its TSC back).
        assert_eq!(host_deadline(50, 0u64.wrapping_sub(100), 100), 150);
        assert_eq!(host_deadline(0, 0, 0), 1, "0 would disarm");
    }
}
