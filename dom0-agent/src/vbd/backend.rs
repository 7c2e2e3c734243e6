//! The backends: per PVH domain a store page and a console page, with their event channels;
//! per attached domain, once the frontend connects, its block ring (`ABI.md`, "Split
//! drivers").
//!
//! Life of a store (every PVH domain dom0 builds):
//!
//! 1. [`Backend::add_store`] (right after the build, before the domain first runs): the store
//!    page zeroed with dom0's console keys in it, the console page zeroed, both granted to the
//!    domain, a port of dom0's offered to it for each, and the `StoreInfo` in its start page.
//!    Any failure undoes what was done (the domain then has no PV devices).
//! 2. [`Backend::poll`], every round of dom0's serve loop: nothing unless a pending bit is set
//!    in dom0's event-channel page; then the console of each store whose port had an event is
//!    drained into dom0's buffer (if the domain said it uses it), every disk's store is read
//!    (the frontend's `Initialised` connects, its `Closed` disconnects) and every connected
//!    ring served (at most a ring's worth of requests per slot and round, so one busy frontend
//!    cannot hold up the control channel or the others).
//! 3. [`Backend::destroyed`] (after `DomainDestroy`): the ring unmapped, every port closed,
//!    the grants revoked, the slots free.
//!
//! A virtual disk ([`Backend::attach`], the `VbdAttach` request, before the domain first runs)
//! adds its keys to the domain's store. A disk backend in state `Closed` (a ring it could not
//! use, or an overrun) stays so until the domain is destroyed: the frontend broke the protocol.

use super::console::{self, ConsoleLog, Cursor};
use super::pool::{Pool, Region};
use super::ring::{self, Round};
use super::{
    CONSOLE_REF_BASE, MAX_STORES, MAX_VBDS, Memory, STORE_REF_BASE, VbdHypercalls, ring_gpa,
};
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

/// Why [`Backend::add_store`] gave the domain no store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoStore {
    /// Every store slot is in use.
    Full,
    /// A hypercall failed: which, and how.
    Hypercall(&'static str, Errno),
}

impl core::fmt::Display for NoStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NoStore::Full => write!(f, "dom0 serves {MAX_STORES} stores at most"),
            NoStore::Hypercall(what, e) => write!(f, "{what} failed: {e}"),
        }
    }
}

/// `BadRequest` reason: the slots are all in use.
pub const FULL: &str = "dom0 serves 8 virtual disks at most";
const _: () = assert!(MAX_VBDS == 8, "FULL names the number");
/// `BadRequest` reason: a disk for a domain without a store.
pub const NO_STORE: &str = "the domain has no store (not a PVH kernel)";

/// A connected ring.
#[derive(Debug, Clone, Copy)]
struct Ring {
    /// dom0's end of the ring's event channel.
    port: u32,
    /// Responses dom0 has put on the ring (its own count: the page's copy is the frontend's
    /// to overwrite).
    rsp_prod: u32,
}

/// One PVH domain's store and console.
#[derive(Debug, Clone, Copy)]
struct Store {
    domid: u32,
    /// `DomainInfo::instance`: tells a successor with the same domid from the domain.
    instance: u32,
    /// dom0's port offered to the domain for the store.
    port: u32,
    /// dom0's port offered to the domain for the console.
    console_port: u32,
    /// dom0's indices of the console page.
    cursor: Cursor,
}

/// One attached domain's virtual disk.
#[derive(Debug, Clone, Copy)]
struct Vbd<'d> {
    /// The domain's store (an index of `Backend::stores`).
    store: usize,
    domid: u32,
    /// The store's port (a copy: it does not change while the disk lives).
    store_port: u32,
    region: Region<'d>,
    /// The backend's xenbus state (`state::*`).
    state: u64,
    /// Why it closed, when it did.
    error: Option<&'static str>,
    ring: Option<Ring>,
}

/// The backends: up to [`MAX_STORES`] domains with a store and console, up to [`MAX_VBDS`] of
/// them with a virtual disk.
pub struct Backend<'d> {
    mem: Memory,
    disk: Option<&'d dyn Sectors>,
    stores: [Option<Store>; MAX_STORES],
    vbds: [Option<Vbd<'d>>; MAX_VBDS],
}

impl<'d> Backend<'d> {
    /// A backend serving virtual disks from `disk` (none: every attach is `NoDisk`).
    ///
    /// # Safety
    /// The pointers in `mem` must be valid (as [`Memory`] describes them), 4 KiB-aligned (the
    /// logs: aligned for their type), and used by nothing else for as long as the backend
    /// lives.
    pub unsafe fn new(mem: Memory, disk: Option<&'d dyn Sectors>) -> Self {
        Self { mem, disk, stores: [None; MAX_STORES], vbds: [None; MAX_VBDS] }
    }

    /// Domains with a virtual disk: `(domid, backend state)` for each slot in use.
    pub fn attached(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.vbds.iter().flatten().map(|v| (v.domid, v.state))
    }

    /// Domains with a store, in slot order.
    pub fn stores(&self) -> impl Iterator<Item = u32> + '_ {
        self.stores.iter().flatten().map(|s| s.domid)
    }

    fn store_page(&self, s: usize) -> *mut u8 {
        // In bounds of the array `store` points to (`s < MAX_STORES`).
        self.mem.store.cast::<super::Page>().wrapping_add(s).cast()
    }

    fn console_page(&self, s: usize) -> *mut u8 {
        self.mem.consoles.cast::<super::Page>().wrapping_add(s).cast()
    }

    fn log(&mut self, s: usize) -> &mut ConsoleLog {
        // SAFETY: `logs` is valid and the backend's alone (`new`'s contract); `s < MAX_STORES`
        // (every caller's index is a store slot), and `&mut self` makes this the only
        // reference.
        unsafe { &mut (*self.mem.logs)[s] }
    }

    fn ring(&self, slot: usize) -> *mut u8 {
        self.mem.rings.cast::<super::Page>().wrapping_add(slot).cast()
    }

    /// The store slot of domain `domid`.
    fn store_of(&self, domid: u32) -> Option<usize> {
        self.stores.iter().position(|s| s.is_some_and(|s| s.domid == domid))
    }

    /// Gives `info`'s domain, just built and not yet started, a store and a console: see the
    /// module's documentation. A store an earlier domain with this id left (destroyed other
    /// than through the protocol) is torn down first, so nothing of it reaches the newcomer.
    pub fn add_store<H: VbdHypercalls>(
        &mut self,
        hv: &H,
        info: &DomainInfo,
    ) -> Result<(), NoStore> {
        self.destroyed(hv, info.domid);
        let s = self.stores.iter().position(Option::is_none).ok_or(NoStore::Full)?;
        let (page, cons) = (self.store_page(s), self.console_page(s));
        // SAFETY: the slot is free, so its pages are granted to nobody: only dom0 sees them.
        unsafe {
            core::ptr::write_bytes(page, 0, PAGE);
            core::ptr::write_bytes(cons, 0, PAGE);
        }
        let (gref, cref) = (STORE_REF_BASE + s as u32, CONSOLE_REF_BASE + s as u32);
        let domid = info.domid;
        // What is undone when a later step fails.
        let mut granted = heapless::Vec::<u32, 2>::new();
        let mut ports = heapless::Vec::<u32, 2>::new();
        let undo = |hv: &H, g: &[u32], p: &[u32]| {
            for &p in p {
                let _ = hv.evtchn_close(p);
            }
            for &g in g {
                let _ = hv.grant_revoke(g);
            }
        };
        let mut steps = || -> Result<(u32, u32), NoStore> {
            // SAFETY: the store and console pages hold only what the domain may write.
            unsafe { hv.grant_set(gref, domid, page as u64, 0) }
                .map_err(|e| NoStore::Hypercall("store grant", e))?;
            let _ = granted.push(gref);
            // SAFETY: as above.
            unsafe { hv.grant_set(cref, domid, cons as u64, 0) }
                .map_err(|e| NoStore::Hypercall("console grant", e))?;
            let _ = granted.push(cref);
            let port =
                hv.evtchn_alloc_unbound(domid).map_err(|e| NoStore::Hypercall("store port", e))?;
            let _ = ports.push(port);
            let console_port = hv
                .evtchn_alloc_unbound(domid)
                .map_err(|e| NoStore::Hypercall("console port", e))?;
            let _ = ports.push(console_port);
            Ok((port, console_port))
        };
        let (port, console_port) = match steps() {
            Ok(p) => p,
            Err(e) => {
                undo(hv, &granted, &ports);
                return Err(e);
            }
        };
        let store =
            Store { domid, instance: info.instance, port, console_port, cursor: Cursor::default() };
        self.stores[s] = Some(store);
        self.publish(s, None);
        let desc = StoreInfo {
            magic: STORE_INFO_MAGIC,
            version: 1,
            backend: 0,
            gref,
            port,
            reserved: [0; 5],
        };
        let at = START_INFO_GPA + STORE_INFO_OFFSET as u64;
        if let Err(e) = hv.mem_write(domid, at, desc.as_bytes()) {
            self.stores[s] = None;
            undo(hv, &granted, &ports);
            return Err(NoStore::Hypercall("store descriptor", e));
        }
        self.log(s).clear();
        Ok(())
    }

    /// Gives `info`'s domain a virtual disk of `bytes`: see the module's documentation.
    pub fn attach<H: VbdHypercalls>(
        &mut self,
        _hv: &H,
        info: &DomainInfo,
        bytes: u64,
    ) -> Result<(), AttachError> {
        if bytes < PAGE as u64 || !bytes.is_multiple_of(PAGE as u64) {
            return Err(AttachError::BadRequest("a virtual disk is whole 4 KiB pages"));
        }
        if info.state != DomainState::Created as u32 {
            return Err(AttachError::BadRequest("attach before the domain starts"));
        }
        // A store of an earlier domain with this id (not torn down: it was destroyed other
        // than through the protocol) is not this domain's.
        let s = self
            .stores
            .iter()
            .position(|s| s.is_some_and(|s| s.domid == info.domid && s.instance == info.instance))
            .ok_or(AttachError::BadRequest(NO_STORE))?;
        if self.vbds.iter().flatten().any(|v| v.store == s) {
            return Err(AttachError::BadRequest("the domain has a virtual disk already"));
        }
        let slot =
            self.vbds.iter().position(Option::is_none).ok_or(AttachError::BadRequest(FULL))?;
        let disk = self.disk.ok_or(DiskError::NoDisk)?;
        let region = Pool::open(disk)?.attach(&info.name, bytes / abi::pv::BLK_SECTOR)?;
        let store_port = self.stores[s].map_or(0, |st| st.port);
        let vbd = Vbd {
            store: s,
            domid: info.domid,
            store_port,
            region,
            state: state::INIT_WAIT,
            error: None,
            ring: None,
        };
        self.publish(s, Some(&vbd));
        self.vbds[slot] = Some(vbd);
        Ok(())
    }

    /// Forgets domain `domid`, which was just destroyed: its ring unmapped, its ports closed,
    /// its grants revoked, its console output dropped. Nothing if it had no store.
    pub fn destroyed<H: VbdHypercalls>(&mut self, hv: &H, domid: u32) {
        for slot in 0..MAX_VBDS {
            if self.vbds[slot].is_some_and(|v| v.domid == domid) {
                self.teardown(hv, slot);
            }
        }
        for s in 0..MAX_STORES {
            let Some(st) = self.stores[s] else { continue };
            if st.domid != domid {
                continue;
            }
            self.stores[s] = None;
            let _ = hv.evtchn_close(st.port);
            let _ = hv.evtchn_close(st.console_port);
            // The domain is gone, and its mappings of the pages with it: the revokes cannot
            // be EBUSY.
            let _ = hv.grant_revoke(STORE_REF_BASE + s as u32);
            let _ = hv.grant_revoke(CONSOLE_REF_BASE + s as u32);
            self.log(s).clear();
        }
    }

    fn teardown<H: VbdHypercalls>(&mut self, hv: &H, slot: usize) {
        let Some(mut v) = self.vbds[slot].take() else { return };
        disconnect(hv, &mut v, slot);
    }

    /// Serves every store, console and disk if an event came in since the last call; returns
    /// whether it did. Cheap otherwise: a read of dom0's pending bits.
    pub fn poll<H: VbdHypercalls>(&mut self, hv: &H) -> bool {
        let Some(pending) = self.take_events() else {
            return false;
        };
        let is_pending = |port: u32| {
            pending.get((port / 64) as usize).is_some_and(|w| w & (1 << (port % 64)) != 0)
        };
        for s in 0..MAX_STORES {
            if let Some(st) = self.stores[s]
                && (is_pending(st.port) || is_pending(st.console_port))
            {
                self.serve_console(hv, s);
            }
        }
        for slot in 0..MAX_VBDS {
            self.serve(hv, slot);
        }
        true
    }

    /// Clears dom0's pending bits; the ones that were set, if any was. Bits are cleared before
    /// the slots are looked at, so an event that comes during a round is seen at the next.
    fn take_events(&self) -> Option<[u64; EVTCHN_WORDS]> {
        let mut bits = [0u64; EVTCHN_WORDS];
        for (i, b) in bits.iter_mut().enumerate() {
            // SAFETY: `events` is dom0's event-channel page (`new`'s contract), its pending
            // words 8-byte aligned; microhv writes them only while dom0 does not run, and
            // nothing else in dom0 touches them, so atomic access is all that is needed.
            let word = unsafe {
                AtomicU64::from_ptr(core::ptr::addr_of_mut!((*self.mem.events).pending[i]))
            };
            if word.load(Ordering::Relaxed) != 0 {
                *b = word.swap(0, Ordering::AcqRel);
            }
        }
        bits.iter().any(|&w| w != 0).then_some(bits)
    }

    /// Whether store `s`'s domain uses its PV console (its `console/state` is `Connected`).
    fn console_connected(&self, s: usize) -> bool {
        // SAFETY: the slot's store page (`new`'s contract), aligned.
        let snap = unsafe { pv::snapshot(self.store_page(s)) };
        pv::get_u64(&snap, Half::Frontend, keys::CONSOLE_STATE) == Some(state::CONNECTED)
    }

    /// Takes store `s`'s console output into dom0's buffer, if the domain uses the console;
    /// tells it when room was made.
    fn serve_console<H: VbdHypercalls>(&mut self, hv: &H, s: usize) {
        let Some(mut st) = self.stores[s] else { return };
        if !self.console_connected(s) {
            return;
        }
        let page = self.console_page(s);
        // SAFETY: the slot's console page (`new`'s contract): a page, aligned.
        let n = unsafe { console::drain(page, &mut st.cursor, self.log(s)) };
        self.stores[s] = Some(st);
        if n > 0 {
            let _ = hv.evtchn_send(st.console_port);
        }
    }

    /// Moves domain `domid`'s PV console output into `out` (first what waits in its console
    /// page); how many bytes. 0 for a domain without a store.
    pub fn console_read<H: VbdHypercalls>(&mut self, hv: &H, domid: u32, out: &mut [u8]) -> usize {
        let Some(s) = self.store_of(domid) else { return 0 };
        // Output whose event dom0 has not seen yet (or a domain that sends none).
        self.serve_console(hv, s);
        self.log(s).take(out)
    }

    /// Puts `data` into domain `domid`'s PV console input, if it uses the PV console: how many
    /// bytes fitted (`Some(0)` when its ring is full). `None`: the domain does not use it (its
    /// input goes to its COM1).
    pub fn console_input<H: VbdHypercalls>(
        &mut self,
        hv: &H,
        domid: u32,
        data: &[u8],
    ) -> Option<usize> {
        let s = self.store_of(domid)?;
        if !self.console_connected(s) {
            return None;
        }
        let mut st = self.stores[s]?;
        // SAFETY: the slot's console page (`new`'s contract): a page, aligned.
        let n = unsafe { console::put_input(self.console_page(s), &mut st.cursor, data) };
        self.stores[s] = Some(st);
        if n > 0 {
            let _ = hv.evtchn_send(st.console_port);
        }
        Some(n)
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
        let page = self.store_page(v.store);
        // SAFETY: the disk's store page (`new`'s contract), aligned.
        let snap = unsafe { pv::snapshot(page) };
        let front = pv::get_u64(&snap, Half::Frontend, keys::VBD_STATE);
        match (v.ring.is_some(), front) {
            (false, Some(state::INITIALISED)) => self.connect(hv, v, slot),
            (true, Some(state::CLOSED)) => {
                disconnect(hv, v, slot);
                v.state = state::INIT_WAIT;
                self.publish(v.store, Some(v));
                let _ = hv.evtchn_send(v.store_port);
            }
            _ => {}
        }
    }

    fn connect<H: VbdHypercalls>(&self, hv: &H, v: &mut Vbd<'d>, slot: usize) {
        // A second snapshot, taken after the state was seen: the frontend wrote its keys
        // before its state, so these are the keys it meant (`ABI.md`).
        // SAFETY: as in `store_changed`.
        let snap = unsafe { pv::snapshot(self.store_page(v.store)) };
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
        // SAFETY: mapped just now at `ring(slot)`, as in `serve_ring`.
        if !unsafe { ring::fresh(self.ring(slot)) } {
            let _ = hv.grant_unmap(ring_gpa(slot));
            return self.close(hv, v, slot, "ring not fresh");
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
        self.publish(v.store, Some(v));
        let _ = hv.evtchn_send(v.store_port);
    }

    /// Writes dom0's half of store `s`'s page: the console's keys, then `vbd`'s if the domain
    /// has a disk. The entries keep their places (console ring-ref and port, then the disk's
    /// backend-id, sectors, state, and the error once there is one), so a rewrite only changes
    /// the bytes of what changed.
    fn publish(&self, s: usize, vbd: Option<&Vbd<'_>>) {
        let Some(st) = self.stores[s] else { return };
        let mut half = [0u8; PAGE];
        // Every key and value here fits (`tests`): a failure could only drop a key.
        let gref = CONSOLE_REF_BASE + s as u32;
        let _ = pv::set_u64(&mut half, Half::Backend, keys::CONSOLE_RING_REF, gref.into());
        let _ = pv::set_u64(&mut half, Half::Backend, keys::CONSOLE_PORT, st.console_port.into());
        if let Some(v) = vbd {
            let _ = pv::set_u64(&mut half, Half::Backend, keys::VBD_BACKEND_ID, 0);
            let _ = pv::set_u64(&mut half, Half::Backend, keys::VBD_SECTORS, v.region.sectors());
            let _ = pv::set_u64(&mut half, Half::Backend, keys::VBD_BACKEND_STATE, v.state);
            if let Some(e) = v.error {
                let _ = pv::set(&mut half, Half::Backend, keys::VBD_ERROR, e);
            }
        }
        // SAFETY: the slot's store page (`new`'s contract): a page, aligned.
        unsafe { pv::publish(self.store_page(s), &half, Half::Backend) };
    }

    /// Closes the device for good, saying why.
    fn close<H: VbdHypercalls>(&self, hv: &H, v: &mut Vbd<'d>, slot: usize, why: &'static str) {
        disconnect(hv, v, slot);
        // The reason first, then the state: a frontend that sees `Closed` finds why.
        v.error = Some(why);
        self.publish(v.store, Some(v));
        v.state = state::CLOSED;
        self.publish(v.store, Some(v));
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
