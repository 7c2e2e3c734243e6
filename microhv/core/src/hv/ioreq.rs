//! The device-model split (shared/design.md, "Placement"): accesses of a domain created with
//! `DOMCREATE_DEVICE_MODEL` to the ports of [`abi::platform::DM_PORTS`] are served by dom0, as
//! Xen's device models serve a domain's ioreqs.
//!
//! Such an access posts an [`IoWait`] on the vCPU, which then waits with RIP on the
//! instruction; microhv runs dom0 next (a detour: the vCPU keeps its place and what is left of
//! its slice, see `run.rs`). dom0 takes the request (`IoreqNext`) and answers it
//! (`IoreqComplete`), which completes the access as KVM completes a port access its user space
//! served: an IN's value goes to the register, an INS element to memory, the string registers
//! move on; the next entry moves RIP past the instruction once it is complete. A REP INS / OUTS
//! goes one element per request and runs again for the next, as the CPU may stop a REP between
//! iterations. dom0 drives the lines its devices raise with `IrqLevel`.

use super::*;
use crate::domain::{IoStage, IoThen, IoWait};
use crate::io::size_mask;
use abi::platform::DM_GSIS;
use abi::types::IoReq;

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    /// True if dom0 serves domain `d`'s access of `size` bytes at `port`.
    pub(super) fn dom0_serves(&self, d: usize, port: u16, size: u8) -> bool {
        self.domains[d].device_model && abi::platform::dm_access(port, size)
    }

    /// Posts vCPU `v` of domain `d`'s access to a port dom0 serves; `then` says how the
    /// answer completes it. dom0 runs next, on a detour from the vCPU's slice.
    pub(super) fn forward(
        &mut self,
        (d, v): (usize, usize),
        port: u16,
        (size, write, value): (u8, bool, u32),
        then: IoThen,
    ) {
        self.ioreq_seq = self.ioreq_seq.wrapping_add(1);
        let value = if write { value & size_mask(size) as u32 } else { 0 };
        let token = self.ioreq_seq;
        let stage = IoStage::Posted;
        self.domains[d].vcpus[v].io = Some(IoWait { port, size, write, value, token, stage, then });
        self.sched[self.cpu].detour = self.sched[self.cpu].detour.or(Some((
            self.sched[self.cpu].cursor,
            self.sched[self.cpu].slice_start,
            self.sched[self.cpu].slice_len,
        )));
        self.sched[self.cpu].boost = self.sched[self.cpu].boost.or(Some((DOMID_DOM0 as usize, 0)));
        self.sched[self.cpu].yielded = true;
    }

    /// `IoreqNext`: the first posted request (by domain, then vCPU), now taken.
    pub(crate) fn ioreq_next(&mut self) -> Option<IoReq> {
        let posted = |w: Option<IoWait>| w.is_some_and(|w| w.stage == IoStage::Posted);
        let (t, v) = (0..DOMAINS)
            .flat_map(|t| (0..VCPUS).map(move |v| (t, v)))
            .find(|&(t, v)| posted(self.domains[t].vcpus[v].io))?;
        let dom = &mut self.domains[t];
        let w = dom.vcpus[v].io.as_mut()?;
        w.stage = IoStage::Taken;
        Some(IoReq {
            domid: t as u32,
            vcpu: v as u32,
            token: w.token,
            instance: dom.instance,
            port: w.port,
            size: w.size,
            write: w.write.into(),
            value: w.value,
        })
    }

    /// `IoreqComplete`: answers vCPU `v` of domain `t`'s taken request `token` (`value`: what
    /// an IN reads) and completes the access.
    pub(crate) fn ioreq_complete(
        &mut self,
        t: usize,
        v: usize,
        token: u64,
        value: u64,
    ) -> Result<(), Errno> {
        let value = u32::try_from(value).map_err(|_| Errno::EINVAL)?;
        let dom = &mut self.domains[t];
        let vc = dom.vcpus[..dom.vcpu_count as usize].get_mut(v).ok_or(Errno::EINVAL)?;
        let w = vc
            .io
            .as_mut()
            .filter(|w| w.stage == IoStage::Taken && u64::from(w.token) == token)
            .ok_or(Errno::EINVAL)?;
        w.stage = IoStage::Answered;
        let (w, value) = (*w, value & size_mask(w.size) as u32);
        match w.then {
            IoThen::Port { .. } if !w.write => vc.gprs.rax = merge_in(vc.gprs.rax, w.size, value),
            IoThen::Port { .. } => {}
            IoThen::String { regs, dest, .. } => {
                (vc.gprs.rcx, vc.gprs.rsi, vc.gprs.rdi) = (regs.rcx, regs.rsi, regs.rdi);
                let bytes = value.to_le_bytes();
                for (&gpa, b) in
                    dest.iter().zip(bytes).take(usize::from(w.size)).filter(|_| !w.write)
                {
                    match self.guest_range(t, gpa, 1, true) {
                        Some(hpa) => self.mem.write(hpa, &[b]),
                        None => {
                            // The domain gave the memory back (MemSet) while it waited: its
                            // own access would have ended it the same way.
                            log::warn!("d{t}v{v}: INS element outside the domain's memory");
                            let _ = self.crash(t, v, CrashReason::OutsideMemory, None);
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// At vCPU `v` of domain `d`'s entry: an answered access moves RIP past its instruction if
    /// that is complete.
    pub(super) fn finish_io(&mut self, d: usize, v: usize) {
        let io = &mut self.domains[d].vcpus[v].io;
        if let Some(w) = io.take_if(|w| w.stage == IoStage::Answered) {
            let (IoThen::Port { len } | IoThen::String { len, .. }) = w.then;
            if len > 0 {
                self.skip(d, v, len);
            }
        }
    }

    /// `IrqLevel`: dom0 drives line `gsi` of domain `t`'s virtual PC, if `instance` is still
    /// the domain there.
    pub(crate) fn irq_level(
        &mut self,
        t: usize,
        instance: u64,
        gsi: u64,
        level: u64,
    ) -> Result<(), Errno> {
        if u64::from(self.domains[t].instance) != instance {
            return Err(Errno::ESRCH);
        }
        let gsi = u32::try_from(gsi).ok().filter(|&g| g < 32 && DM_GSIS & (1 << g) != 0);
        let (Some(gsi), 0..=1, true) = (gsi, level, self.domains[t].device_model) else {
            return Err(Errno::EINVAL);
        };
        let clock = self.clock();
        let p = self.domains[t].platform.as_mut().ok_or(Errno::EBUSY)?;
        p.drive(&clock, gsi, level == 1);
        self.timers_changed();
        Ok(())
    }
}
