//! Event-channel hypercalls and delivery (#15). The port tables are `crate::evtchn`'s; here the
//! domains they name are checked, and an event becomes a pending bit in the receiver's
//! event-channel page and, when the bit is new and the port unmasked, its upcall vector on
//! vCPU 0's local APIC: the shape of Xen's HVM callback vector, a fixed interrupt the guest
//! EOIs, which wakes a halted vCPU as any interrupt does (`run.rs`, `can_run`).
//!
//! The guest's vCPUs may run on other CPUs while microhv updates the page, so microhv changes
//! a bitmap word only with a locked read-modify-write (`PhysMem::fetch_or_u64`), as the guest
//! does; that is also a full barrier between setting a pending bit and reading the mask (the
//! guest clears a mask bit, then reads pending: one side always sees the other's write).

use super::*;
use crate::evtchn::EVTCHN_PORTS;
use crate::hypercall::R;
use abi::hypercall::{EVTCHN_NO_PAGE, EVTCHN_VECTOR_MIN};
use abi::types::EvtchnShared;
use core::mem::offset_of;

/// Bytes of the page microhv reads and writes.
const SHARED: u64 = size_of::<EvtchnShared>() as u64;
/// Offset of the mask bitmap (the pending one is at 0).
const MASK: u64 = offset_of!(EvtchnShared, mask) as u64;

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    /// `EvtchnSend`: marks the peer's port pending (an unbound port's event is dropped).
    pub(crate) fn evtchn_send(&mut self, d: usize, port: u64) -> R {
        if let Some((t, p)) = self.evtchn.send(d, port)? {
            self.evtchn_raise(t, p);
        }
        Ok(0)
    }

    /// `EvtchnClose`: also clears the port's pending bit, so that the number, when reused,
    /// does not start out pending (Xen clears it too).
    pub(crate) fn evtchn_close(&mut self, d: usize, port: u64) -> R {
        let p = self.evtchn.close(d, port)?;
        if let Some((_, hpa)) = self.evtchn_page(d) {
            self.mem.fetch_and_u64(hpa, !(1 << p));
        }
        Ok(0)
    }

    /// `EvtchnSetCallback`: `vector` 0 or [`EVTCHN_VECTOR_MIN`]`..=255`, `gpa` a page of the
    /// caller's RAM. Events held while there was no page are marked pending in it now.
    /// [`EVTCHN_NO_PAGE`] unregisters the page (and the vector).
    pub(crate) fn evtchn_set_callback(&mut self, d: usize, vector: u64, gpa: u64) -> R {
        if gpa == EVTCHN_NO_PAGE {
            self.evtchn.tables[d].callback = None;
            return Ok(0);
        }
        let vector =
            u8::try_from(vector).ok().filter(|&v| v == 0 || u64::from(v) >= EVTCHN_VECTOR_MIN);
        let (Some(vector), true) = (vector, gpa.is_multiple_of(FRAME_SIZE)) else {
            return Err(Errno::EINVAL);
        };
        self.guest_hpa(d, gpa, FRAME_SIZE, true).ok_or(Errno::EFAULT)?;
        let t = &mut self.evtchn.tables[d];
        t.callback = Some((vector, gpa));
        let held = core::mem::take(&mut t.held);
        for p in (1..EVTCHN_PORTS).filter(|p| held & (1 << p) != 0) {
            self.evtchn_raise(d, p);
        }
        Ok(0)
    }

    /// Domain `d`'s upcall vector and the host-physical address of its event-channel page, if
    /// it registered one that is still RAM.
    fn evtchn_page(&mut self, d: usize) -> Option<(u8, u64)> {
        let (vector, gpa) = self.evtchn.tables[d].callback?;
        Some((vector, self.guest_range(d, gpa, SHARED, true)?))
    }

    /// An event on port `p` of domain `d`: its pending bit is set (held in microhv while the
    /// domain has no page, and written with the next event once it has one again) and, if a
    /// bit became set on an unmasked port, the upcall vector is raised on vCPU 0.
    pub(crate) fn evtchn_raise(&mut self, d: usize, p: usize) {
        let bit = 1u64 << p;
        let Some((vector, hpa)) = self.evtchn_page(d) else {
            self.evtchn.tables[d].held |= bit;
            return;
        };
        let raised = bit | core::mem::take(&mut self.evtchn.tables[d].held);
        let new = raised & !self.mem.fetch_or_u64(hpa, raised);
        if new == 0 {
            return;
        }
        if vector == 0 || new & !self.mem.read_u64(hpa + MASK) == 0 {
            return;
        }
        if let Some(pl) = self.domains[d].platform.as_mut() {
            pl.lapics[0].accept(vector, false);
            pl.search = u32::MAX;
            // The run loop looks for halted vCPUs to wake (and boost) at its next turn.
            self.timers_changed();
        }
    }

    /// Sends `virq` to dom0 if dom0 bound it.
    pub(crate) fn virq(&mut self, virq: u32) {
        if let Some(p) = self.evtchn.virq_port(DOMID_DOM0 as usize, virq) {
            self.evtchn_raise(DOMID_DOM0 as usize, p);
        }
    }
}
