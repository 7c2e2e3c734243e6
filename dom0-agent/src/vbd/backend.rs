//! The block backend: per attached domain, a store page, its event channel, and once the
//! frontend connects, its ring (`ABI.md`, "Split drivers").
//!
//! Life of a slot:
//!
//! 1. [`Backend::attach`] (the `VbdAttach` request, before the domain first runs): the region
//!    named after the domain, the store page zeroed with dom0's keys in it (`InitWait`), granted
//!    to the domain, a port of dom0's offered to it, and the `StoreInfo` in its start page. Any
//!    failure undoes what was done.
//! 2. [`Backend::poll`], every round of dom0's serve loop: nothing unless a pending bit is set
//!    in dom0's event-channel page (the store's or a ring's port); then every slot's store is
//!    read (the frontend's `Initialised` connects, its `Closed` disconnects) and every
//!    connected ring served (at most a ring's worth of requests per slot and round, so one busy
//!    frontend cannot hold up the control channel or the others).
//! 3. [`Backend::destroyed`] (after `DomainDestroy`): the ring unmapped, both ports closed, the
//!    store grant revoked, the slot free.
//!
//! A backend in state `Closed` (a ring it could not use, or an overrun) stays so until the
//! domain is destroyed: the frontend broke the protocol.

use super::pool::{Pool, Region};
use super::ring::{self, Round};
use super::{MAX_VBDS, Memory, STORE_REF_BASE, VbdHypercalls, ring_gpa};
use crate::disk::Sectors;
use abi::Errno;
use abi::proto::DiskError;
use abi::pv::{self, Half, PAGE, STORE_INFO_MAGIC, STORE_INFO_OFFSET, StoreInfo, keys, state};
use abi::pvh::START_INFO_GPA;
use abi::types::{DomainInfo, DomainState, EVTCHN_WORDS};
use core::sync::atomic::{AtomicU64, Ordering};
use zerocopy::IntoBytes;

/// Why [`Backend::attach`] refused: each maps onto a control-protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    /// `Error::BadRequest` with this reason.
    BadRequest(&'static str),
    /// `Error::Hypercall`.
    Hypercall(Errno),
    /// `Error::Disk`.
    Disk(DiskError),
}

impl From<DiskError> for AttachError {
    fn from(e: DiskError) -> Self {
        AttachError::Disk(e)
    }
}

/// `BadRequest` reason: the slots are all in use.
pub const FULL: &str = "dom0 serves 8 virtual disks at most";
const _: () = assert!(MAX_VBDS == 8, "FULL names the number");

/// A connected ring.
#[derive(Debug, Clone, Copy)]
struct Ring {
    /// dom0's end of the ring's event channel.
    port: u32,
    /// Responses dom0 has put on the ring (its own count: the page's copy is the frontend's
    /// to overwrite).
    rsp_prod: u32,
}

/// One attached domain.
#[derive(Debug, Clone, Copy)]
struct Vbd<'d> {
    domid: u32,
    /// `DomainInfo::instance`: tells a successor with the same domid from the domain.
    instance: u32,
    /// dom0's port offered to the domain for the store.
    store_port: u32,
    region: Region<'d>,
    /// The backend's xenbus state (`state::*`).
    state: u64,
    /// Why it closed, when it did.
    error: Option<&'static str>,
    ring: Option<Ring>,
}

/// The block backend: up to [`MAX_VBDS`] attached domains.
pub struct Backend<'d> {
    mem: Memory,
    disk: Option<&'d dyn Sectors>,
    vbds: [Option<Vbd<'d>>; MAX_VBDS],
}

impl<'d> Backend<'d> {
    /// A backend serving virtual disks from `disk` (none: every attach is `NoDisk`).
    ///
    /// # Safety
    /// The pointers in `mem` must be valid (as [`Memory`] describes them), 4 KiB-aligned, and
    /// used by nothing else for as long as the backend lives.
    pub unsafe fn new(mem: Memory, disk: Option<&'d dyn Sectors>) -> Self {
        Self { mem, disk, vbds: [None; MAX_VBDS] }
    }

    /// Domains with a virtual disk: `(domid, backend state)` for each slot in use.
    pub fn attached(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.vbds.iter().flatten().map(|v| (v.domid, v.state))
    }

    fn store(&self, slot: usize) -> *mut u8 {
        // In bounds of the array `store` points to (`slot < MAX_VBDS`).
        self.mem.store.cast::<super::Page>().wrapping_add(slot).cast()
    }

    fn ring(&self, slot: usize) -> *mut u8 {
        self.mem.rings.cast::<super::Page>().wrapping_add(slot).cast()
    }

    /// Gives `info`'s domain a virtual disk of `bytes`: see the module's documentation.
    pub fn attach<H: VbdHypercalls>(
        &mut self,
        hv: &H,
        info: &DomainInfo,
        bytes: u64,
    ) -> Result<(), AttachError> {
        if bytes < PAGE as u64 || !bytes.is_multiple_of(PAGE as u64) {
            return Err(AttachError::BadRequest("a virtual disk is whole 4 KiB pages"));
        }
        if info.state != DomainState::Created as u32 {
            return Err(AttachError::BadRequest("attach before the domain starts"));
        }
        // A slot of an earlier domain with this id was not torn down (it was destroyed other
        // than through the protocol): its grants and ports name a dead domain; free them now.
        for slot in 0..MAX_VBDS {
            if let Some(v) = self.vbds[slot]
                && v.domid == info.domid
            {
                if v.instance == info.instance {
                    return Err(AttachError::BadRequest("the domain has a virtual disk already"));
                }
                self.teardown(hv, slot);
            }
        }
        let slot =
            self.vbds.iter().position(Option::is_none).ok_or(AttachError::BadRequest(FULL))?;
        let disk = self.disk.ok_or(DiskError::NoDisk)?;
        let region = Pool::open(disk)?.attach(&info.name, bytes / abi::pv::BLK_SECTOR)?;
        let vbd = Vbd {
            domid: info.domid,
            instance: info.instance,
            store_port: 0,
            region,
            state: state::INIT_WAIT,
            error: None,
            ring: None,
        };
        let page = self.store(slot);
        // SAFETY: the slot is free, so its store page is granted to nobody: only dom0 sees it.
        unsafe { core::ptr::write_bytes(page, 0, PAGE) };
        self.publish(slot, &vbd);
        let gref = STORE_REF_BASE + slot as u32;
        // SAFETY: the store page holds only the store, which the domain may write.
        unsafe { hv.grant_set(gref, info.domid, page as u64, 0) }
            .map_err(AttachError::Hypercall)?;
        let port = match hv.evtchn_alloc_unbound(info.domid) {
            Ok(p) => p,
            Err(e) => {
                let _ = hv.grant_revoke(gref);
                return Err(AttachError::Hypercall(e));
            }
        };
        let desc = StoreInfo {
            magic: STORE_INFO_MAGIC,
            version: 1,
            backend: 0,
            gref,
            port,
            reserved: [0; 5],
        };
        let at = START_INFO_GPA + STORE_INFO_OFFSET as u64;
        if let Err(e) = hv.mem_write(info.domid, at, desc.as_bytes()) {
            let _ = hv.evtchn_close(port);
            let _ = hv.grant_revoke(gref);
            return Err(AttachError::Hypercall(e));
        }
        self.vbds[slot] = Some(Vbd { store_port: port, ..vbd });
        Ok(())
    }

    /// Forgets domain `domid`, which was just destroyed: its ring unmapped, its ports closed,
    /// its store grant revoked. Nothing if it had no virtual disk.
    pub fn destroyed<H: VbdHypercalls>(&mut self, hv: &H, domid: u32) {
        for slot in 0..MAX_VBDS {
            if self.vbds[slot].is_some_and(|v| v.domid == domid) {
                self.teardown(hv, slot);
            }
        }
    }

    fn teardown<H: VbdHypercalls>(&mut self, hv: &H, slot: usize) {
        let Some(mut v) = self.vbds[slot].take() else { return };
        disconnect(hv, &mut v, slot);
        let _ = hv.evtchn_close(v.store_port);
        // The domain is gone, and its mapping of the page with it: the revoke cannot be EBUSY.
        let _ = hv.grant_revoke(STORE_REF_BASE + slot as u32);
    }

    /// Serves every slot if an event came in since the last call; returns whether it did.
    /// Cheap otherwise: a read of dom0's pending bits.
    pub fn poll<H: VbdHypercalls>(&mut self, hv: &H) -> bool {
        if !self.take_events() {
            return false;
        }
        for slot in 0..MAX_VBDS {
            self.serve(hv, slot);
        }
        true
    }

    /// Clears dom0's pending bits; whether any was set. Bits are cleared before the slots are
    /// looked at, so an event that comes during a round is seen at the next.
    fn take_events(&self) -> bool {
        let mut any = false;
        for i in 0..EVTCHN_WORDS {
            // SAFETY: `events` is dom0's event-channel page (`new`'s contract), its pending
            // words 8-byte aligned; microhv writes them only while dom0 does not run, and
            // nothing else in dom0 touches them, so atomic access is all that is needed.
            let word = unsafe {
                AtomicU64::from_ptr(core::ptr::addr_of_mut!((*self.mem.events).pending[i]))
            };
            if word.load(Ordering::Relaxed) != 0 {
                any |= word.swap(0, Ordering::AcqRel) != 0;
            }
        }
        any
    }

    fn serve<H: VbdHypercalls>(&mut self, hv: &H, slot: usize) {
        let Some(mut v) = self.vbds[slot] else { return };
        if v.state != state::CLOSED {
            self.store_changed(hv, &mut v, slot);
        }
        if let Some(mut r) = v.ring {
            // SAFETY: slot `slot`'s window page is mapped while `v.ring` is `Some`.
            let round =
                unsafe { ring::serve(hv, v.domid, &v.region, self.ring(slot), &mut r.rsp_prod) };
            v.ring = Some(r);
            match round {
                Round::Answered(0) => {}
                Round::Answered(_) => {
                    let _ = hv.evtchn_send(r.port);
                }
                Round::Overrun => self.close(hv, &mut v, slot, "more requests than slots"),
            }
        }
        self.vbds[slot] = Some(v);
    }

    /// Follows the frontend's state in the store.
    fn store_changed<H: VbdHypercalls>(&self, hv: &H, v: &mut Vbd<'d>, slot: usize) {
        let page = self.store(slot);
        // SAFETY: the slot's store page (`new`'s contract), aligned.
        let snap = unsafe { pv::snapshot(page) };
        let front = pv::get_u64(&snap, Half::Frontend, keys::VBD_STATE);
        match (v.ring.is_some(), front) {
            (false, Some(state::INITIALISED)) => self.connect(hv, v, slot),
            (true, Some(state::CLOSED)) => {
                disconnect(hv, v, slot);
                v.state = state::INIT_WAIT;
                self.publish(slot, v);
                let _ = hv.evtchn_send(v.store_port);
            }
            _ => {}
        }
    }

    fn connect<H: VbdHypercalls>(&self, hv: &H, v: &mut Vbd<'d>, slot: usize) {
        // A second snapshot, taken after the state was seen: the frontend wrote its keys
        // before its state, so these are the keys it meant (`ABI.md`).
        // SAFETY: as in `store_changed`.
        let snap = unsafe { pv::snapshot(self.store(slot)) };
        let number =
            |key| pv::get_u64(&snap, Half::Frontend, key).and_then(|n| u32::try_from(n).ok());
        let Some(ring_ref) = number(keys::VBD_RING_REF) else {
            return self.close(hv, v, slot, "bad ring-ref");
        };
        let Some(remote_port) = number(keys::VBD_EVENT_CHANNEL) else {
            return self.close(hv, v, slot, "bad event-channel");
        };
        if hv.grant_map(v.domid, ring_ref, ring_gpa(slot), 0).is_err() {
            return self.close(hv, v, slot, "ring map failed");
        }
        let port = match hv.evtchn_bind_interdomain(v.domid, remote_port) {
            Ok(p) => p,
            Err(_) => {
                let _ = hv.grant_unmap(ring_gpa(slot));
                return self.close(hv, v, slot, "event bind failed");
            }
        };
        v.ring = Some(Ring { port, rsp_prod: 0 });
        v.state = state::CONNECTED;
        self.publish(slot, v);
        let _ = hv.evtchn_send(v.store_port);
    }

    /// Writes dom0's half of slot `slot`'s store page from `v`. The entries keep their places
    /// (backend-id, sectors, state, then the error once there is one), so a rewrite only
    /// changes the bytes of what changed.
    fn publish(&self, slot: usize, v: &Vbd<'_>) {
        let mut half = [0u8; PAGE];
        // Every key and value here fits (`tests`): a failure could only drop a key.
        let _ = pv::set_u64(&mut half, Half::Backend, keys::VBD_BACKEND_ID, 0);
        let _ = pv::set_u64(&mut half, Half::Backend, keys::VBD_SECTORS, v.region.sectors());
        let _ = pv::set_u64(&mut half, Half::Backend, keys::VBD_BACKEND_STATE, v.state);
        if let Some(e) = v.error {
            let _ = pv::set(&mut half, Half::Backend, keys::VBD_ERROR, e);
        }
        // SAFETY: the slot's store page (`new`'s contract): a page, aligned.
        unsafe { pv::publish(self.store(slot), &half, Half::Backend) };
    }

    /// Closes the device for good, saying why.
    fn close<H: VbdHypercalls>(&self, hv: &H, v: &mut Vbd<'d>, slot: usize, why: &'static str) {
        disconnect(hv, v, slot);
        // The reason first, then the state: a frontend that sees `Closed` finds why.
        v.error = Some(why);
        self.publish(slot, v);
        v.state = state::CLOSED;
        self.publish(slot, v);
        let _ = hv.evtchn_send(v.store_port);
    }
}

/// Unmaps the ring of `slot` and closes its port, if it is connected.
fn disconnect<H: VbdHypercalls>(hv: &H, v: &mut Vbd<'_>, slot: usize) {
    if let Some(r) = v.ring.take() {
        let _ = hv.grant_unmap(ring_gpa(slot));
        let _ = hv.evtchn_close(r.port);
    }
}

#[cfg(test)]
mod tests;
