//! The device-model split (shared/design.md, "Placement"): the ports of
//! [`abi::platform::DM_PORTS`] of a domain created with `DOMCREATE_DEVICE_MODEL` are served
//! by dom0, as Xen's device models serve a domain's ioreqs.
//!
//! An access to one of them posts an [`IoWait`] on the vCPU, which then waits with RIP on the
//! instruction; dom0 takes it (`IoreqNext`) and answers it (`IoreqComplete`); the vCPU runs
//! again and executes the instruction a second time, which takes the answer instead of asking
//! again. No event is injected in between, so the instruction completes before any handler
//! runs, as on hardware. An access that is not the one answered (the guest rewrote the
//! instruction) drops the answer and asks anew. REP INS / OUTS go element by element, each
//! its own request. dom0 drives the lines its devices raise with `IrqLevel`.

use super::*;
use crate::domain::{IoStage, IoWait};
use abi::platform::DM_GSIS;
use abi::types::IoReq;

/// Why a port access gave no value now.
pub(super) enum Held {
    /// The access stopped the domain: the caller returns what [`Hv::after_stop`] says.
    Stopped,
    /// dom0 serves the port: the vCPU waits, RIP stays on the instruction.
    Waits,
}

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    /// An access of vCPU `v` of domain `d` to a port dom0 serves: the answer if this is the
    /// access dom0 answered, else a new request (dom0 runs next).
    pub(super) fn forward(
        &mut self,
        (d, v): (usize, usize),
        port: u16,
        size: u8,
        write: bool,
        value: u32,
    ) -> Result<u32, Held> {
        let vc = &mut self.domains[d].vcpus[v];
        if let Some(w) = vc.io.take()
            && w.stage == IoStage::Answered
            && (w.port, w.size, w.write) == (port, size, write)
            && (!write || w.value == value)
        {
            return Ok(if write { 0 } else { w.value });
        }
        self.ioreq_seq = self.ioreq_seq.wrapping_add(1);
        let token = self.ioreq_seq;
        vc.io = Some(IoWait { port, size, write, value, token, stage: IoStage::Posted });
        self.yielded = true;
        self.boost = Some((DOMID_DOM0 as usize, 0));
        Err(Held::Waits)
    }

    /// `IoreqNext`: the first posted request (by domain, then vCPU) into `req`, now taken.
    pub(crate) fn ioreq_next(&mut self) -> Option<IoReq> {
        let (t, v) =
            (0..DOMAINS).flat_map(|t| (0..VCPUS).map(move |v| (t, v))).find(|&(t, v)| {
                self.domains[t].vcpus[v].io.is_some_and(|w| w.stage == IoStage::Posted)
            })?;
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
            value: if w.write { w.value } else { 0 },
        })
    }

    /// `IoreqComplete`: answers vCPU `v` of domain `t`'s taken request `token` (`value`: what
    /// an IN reads); the vCPU runs ahead of its turn.
    pub(crate) fn ioreq_complete(
        &mut self,
        t: usize,
        v: usize,
        token: u64,
        value: u64,
    ) -> Result<(), Errno> {
        let value = u32::try_from(value).map_err(|_| Errno::EINVAL)?;
        let dom = &mut self.domains[t];
        let w = dom.vcpus[..dom.vcpu_count as usize]
            .get_mut(v)
            .and_then(|vc| vc.io.as_mut())
            .filter(|w| w.stage == IoStage::Taken && u64::from(w.token) == token)
            .ok_or(Errno::EINVAL)?;
        if !w.write {
            w.value = value & size_mask(w.size) as u32;
        }
        w.stage = IoStage::Answered;
        self.boost = self.boost.or(Some((t, v)));
        Ok(())
    }

    /// `IrqLevel`: dom0 drives line `gsi` of domain `t`'s virtual PC.
    pub(crate) fn irq_level(&mut self, t: usize, gsi: u64, level: u64) -> Result<(), Errno> {
        let gsi = u32::try_from(gsi).ok().filter(|&g| g < 32 && DM_GSIS & (1 << g) != 0);
        let (Some(gsi), 0..=1) = (gsi, level) else {
            return Err(Errno::EINVAL);
        };
        let clock = self.clock();
        let p = self.domains[t].platform.as_mut().ok_or(Errno::EBUSY)?;
        p.drive(&clock, gsi, level == 1);
        self.timers_changed();
        Ok(())
    }
}
