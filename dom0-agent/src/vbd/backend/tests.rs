//! The backend against a fake hypervisor and a fake frontend: the frontend writes the store
//! page and its ring (dom0's view of the mapped ring: the test's heap pages) as a domU would,
//! and the fake keeps dom0's grants, ports and mappings so that nothing may be left behind.

use super::*;
use crate::builder::Hypercalls;
use crate::disk::MemDisk;
use crate::vbd::Page;
use crate::vbd::pool::tests::pool_disk;
use abi::hypercall::{DOMID_INVALID, EVTCHN_PORTS, GRANT_ENTRIES};
use abi::pv::{
    BLK_OP_FLUSH, BLK_OP_READ, BLK_OP_WRITE, BLK_RSP_EOPNOTSUPP, BLK_RSP_ERROR, BLK_RSP_OKAY,
    BlkRequest, BlkResponse, STORE_VALUE, blk_slot,
};
use abi::types::{DomainCreate, VcpuState};
use core::cell::RefCell;
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;
use zerocopy::{FromBytes, FromZeros};

/// microhv as the backend sees it.
#[derive(Default)]
struct Fake {
    domains: RefCell<Vec<DomainInfo>>,
    /// dom0's grants: reference → (peer, page).
    grants: RefCell<BTreeMap<u32, (u32, u64)>>,
    /// dom0's ports: port → (remote domain, bound to the remote's port).
    ports: RefCell<BTreeMap<u32, (u32, Option<u32>)>>,
    /// dom0's mappings: window address → (granter, reference).
    maps: RefCell<BTreeMap<u64, (u32, u32)>>,
    /// The frontends' grants to dom0: (domain, reference) → the page.
    fe_grants: RefCell<BTreeMap<(u32, u32), Vec<u8>>>,
    /// The frontends' ports offered to dom0.
    fe_ports: RefCell<Vec<(u32, u32)>>,
    /// `MemWrite`s: (domain, address, bytes).
    writes: RefCell<Vec<(u32, u64, Vec<u8>)>>,
    /// Events dom0 sent, by its port.
    sent: RefCell<Vec<u32>>,
    /// Operations that fail (`ENOSPC`).
    fail: RefCell<Vec<&'static str>>,
}

impl Fake {
    fn add_domain(&self, domid: u32, name: &str, state: DomainState, instance: u32) -> DomainInfo {
        let mut d = DomainInfo::new_zeroed();
        d.domid = domid;
        d.name = abi::types::name_field(name).unwrap();
        d.state = state as u32;
        d.instance = instance;
        self.domains.borrow_mut().retain(|x| x.domid != domid);
        self.domains.borrow_mut().push(d);
        d
    }
    fn exists(&self, domid: u32) -> Result<(), Errno> {
        if self.domains.borrow().iter().any(|d| d.domid == domid) {
            Ok(())
        } else {
            Err(Errno::ESRCH)
        }
    }
    fn failing(&self, op: &str) -> Result<(), Errno> {
        if self.fail.borrow().contains(&op) { Err(Errno::ENOSPC) } else { Ok(()) }
    }
    /// What dom0 holds: grants, ports, mappings.
    fn held(&self) -> (usize, usize, usize) {
        (self.grants.borrow().len(), self.ports.borrow().len(), self.maps.borrow().len())
    }
    fn grant_page(&self, domid: u32, gref: u32, page: Vec<u8>) {
        self.fe_grants.borrow_mut().insert((domid, gref), page);
    }
}

impl Hypercalls for Fake {
    fn domain_create(&self, _: &DomainCreate) -> Result<u32, Errno> {
        Err(Errno::ENOSYS)
    }
    fn mem_write(&self, domid: u32, dst: u64, src: &[u8]) -> Result<u64, Errno> {
        self.exists(domid)?;
        self.failing("mem_write")?;
        self.writes.borrow_mut().push((domid, dst, src.to_vec()));
        Ok(src.len() as u64)
    }
    fn vcpu_set_state(&self, _: u32, _: u32, _: &VcpuState) -> Result<(), Errno> {
        Err(Errno::ENOSYS)
    }
    fn domain_destroy(&self, domid: u32) -> Result<(), Errno> {
        self.exists(domid)?;
        self.domains.borrow_mut().retain(|d| d.domid != domid);
        // As microhv: what named the domain names nobody; its own grants and ports go.
        for g in self.grants.borrow_mut().values_mut().filter(|g| g.0 == domid) {
            g.0 = DOMID_INVALID;
        }
        for p in self.ports.borrow_mut().values_mut().filter(|p| p.0 == domid) {
            *p = (DOMID_INVALID, None);
        }
        self.fe_grants.borrow_mut().retain(|k, _| k.0 != domid);
        self.fe_ports.borrow_mut().retain(|k| k.0 != domid);
        Ok(())
    }
}

impl VbdHypercalls for Fake {
    fn evtchn_alloc_unbound(&self, remote: u32) -> Result<u32, Errno> {
        self.exists(remote)?;
        self.failing("alloc")?;
        let mut ports = self.ports.borrow_mut();
        let p = (1..EVTCHN_PORTS).find(|p| !ports.contains_key(p)).ok_or(Errno::ENOSPC)?;
        ports.insert(p, (remote, None));
        Ok(p)
    }
    fn evtchn_bind_interdomain(&self, remote: u32, remote_port: u32) -> Result<u32, Errno> {
        self.exists(remote)?;
        let mut fe = self.fe_ports.borrow_mut();
        let at = fe.iter().position(|&x| x == (remote, remote_port)).ok_or(Errno::EINVAL)?;
        fe.remove(at);
        let mut ports = self.ports.borrow_mut();
        let p = (1..EVTCHN_PORTS).find(|p| !ports.contains_key(p)).ok_or(Errno::ENOSPC)?;
        ports.insert(p, (remote, Some(remote_port)));
        Ok(p)
    }
    fn evtchn_send(&self, port: u32) -> Result<(), Errno> {
        self.ports.borrow().get(&port).ok_or(Errno::EINVAL)?;
        self.sent.borrow_mut().push(port);
        Ok(())
    }
    fn evtchn_close(&self, port: u32) -> Result<(), Errno> {
        let (remote, bound) = self.ports.borrow_mut().remove(&port).ok_or(Errno::EINVAL)?;
        if let Some(rp) = bound {
            // The peer's end is left unbound, offered to dom0 again.
            self.fe_ports.borrow_mut().push((remote, rp));
        }
        Ok(())
    }
    unsafe fn grant_set(&self, gref: u32, peer: u32, gpa: u64, flags: u64) -> Result<(), Errno> {
        self.exists(peer)?;
        if gref >= GRANT_ENTRIES || flags != 0 || !gpa.is_multiple_of(PAGE as u64) {
            return Err(Errno::EINVAL);
        }
        self.failing("grant_set")?;
        let mut g = self.grants.borrow_mut();
        if g.contains_key(&gref) {
            return Err(Errno::EEXIST);
        }
        g.insert(gref, (peer, gpa));
        Ok(())
    }
    fn grant_revoke(&self, gref: u32) -> Result<(), Errno> {
        self.grants.borrow_mut().remove(&gref).map(drop).ok_or(Errno::EINVAL)
    }
    fn grant_map(&self, granter: u32, gref: u32, gpa: u64, flags: u64) -> Result<(), Errno> {
        self.exists(granter)?;
        let in_window =
            (ring_gpa(0)..ring_gpa(MAX_VBDS)).contains(&gpa) && gpa.is_multiple_of(PAGE as u64);
        if !in_window || flags != 0 || !self.fe_grants.borrow().contains_key(&(granter, gref)) {
            return Err(Errno::EINVAL);
        }
        let mut m = self.maps.borrow_mut();
        if m.contains_key(&gpa) || m.values().any(|&x| x == (granter, gref)) {
            return Err(Errno::EEXIST);
        }
        m.insert(gpa, (granter, gref));
        Ok(())
    }
    fn grant_unmap(&self, gpa: u64) -> Result<(), Errno> {
        self.maps.borrow_mut().remove(&gpa).map(drop).ok_or(Errno::EINVAL)
    }
    fn grant_copy_from(
        &self,
        granter: u32,
        gref: u32,
        off: u64,
        dst: &mut [u8],
    ) -> Result<u64, Errno> {
        self.exists(granter)?;
        let g = self.fe_grants.borrow();
        let page = g.get(&(granter, gref)).ok_or(Errno::EINVAL)?;
        let src = page.get(off as usize..off as usize + dst.len()).ok_or(Errno::EINVAL)?;
        dst.copy_from_slice(src);
        Ok(dst.len() as u64)
    }
    fn grant_copy_to(&self, granter: u32, gref: u32, off: u64, src: &[u8]) -> Result<u64, Errno> {
        self.exists(granter)?;
        let mut g = self.fe_grants.borrow_mut();
        let page = g.get_mut(&(granter, gref)).ok_or(Errno::EINVAL)?;
        let dst = page.get_mut(off as usize..off as usize + src.len()).ok_or(Errno::EINVAL)?;
        dst.copy_from_slice(src);
        Ok(src.len() as u64)
    }
}

/// The pages the backend shares, and dom0's disk with a pool of 4096 sectors.
struct Rig {
    fake: Fake,
    disk: MemDisk,
    mem: Memory,
}

impl Rig {
    fn new() -> Self {
        let mem = crate::vbd::test_memory();
        Rig { fake: Fake::default(), disk: MemDisk(RefCell::new(pool_disk(4096, 0xda))), mem }
    }

    fn backend(&self) -> Backend<'_> {
        // SAFETY: the rig's leaked pages, which only the backend and the test's frontend use.
        unsafe { Backend::new(self.mem, Some(&self.disk)) }
    }

    fn store(&self, slot: usize) -> *mut u8 {
        self.mem.store.cast::<Page>().wrapping_add(slot).cast()
    }

    fn snap(&self, slot: usize) -> [u8; PAGE] {
        // SAFETY: a rig page.
        unsafe { pv::snapshot(self.store(slot)) }
    }

    /// dom0's key `key` in slot `slot`'s store.
    fn backend_key(&self, slot: usize, key: &str) -> Option<std::string::String> {
        pv::get(&self.snap(slot), Half::Backend, key).map(std::string::String::from)
    }

    fn backend_state(&self, slot: usize) -> Option<u64> {
        pv::get_u64(&self.snap(slot), Half::Backend, keys::VBD_BACKEND_STATE)
    }

    /// The frontend of slot `slot` sets `key`.
    fn front_set(&self, slot: usize, key: &str, value: &str) {
        let mut p = self.snap(slot);
        pv::set(&mut p, Half::Frontend, key, value).unwrap();
        // SAFETY: a rig page.
        unsafe { pv::publish(self.store(slot), &p, Half::Frontend) };
    }

    /// An event to dom0 on `port`.
    fn kick(&self, port: u32) {
        // SAFETY: the rig's event page.
        unsafe { (*self.mem.events).pending[(port / 64) as usize] |= 1 << (port % 64) };
    }

    fn pending(&self) -> u64 {
        // SAFETY: as above.
        unsafe { (*self.mem.events).pending.iter().fold(0, |a, w| a | w) }
    }

    /// The ring of slot `slot` as dom0 maps it.
    fn ring(&self, slot: usize) -> *mut u8 {
        self.mem.rings.cast::<Page>().wrapping_add(slot).cast()
    }

    fn ring_bytes(&self, slot: usize) -> [u8; PAGE] {
        // SAFETY: a rig page.
        unsafe { pv::snapshot(self.ring(slot)) }
    }

    /// The frontend writes `bytes` at `at` of its ring.
    fn ring_write(&self, slot: usize, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= PAGE);
        // SAFETY: inside a rig page.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ring(slot).add(at), bytes.len())
        };
    }

    /// The frontend of `domid` (slot `slot`) grants its ring as `ring_ref`, offers `port`, and
    /// says `Initialised`.
    fn connect(&self, domid: u32, slot: usize, ring_ref: u32, port: u32) {
        self.ring_write(slot, 0, &[0; PAGE]);
        self.fake.grant_page(domid, ring_ref, vec![0; PAGE]);
        self.fake.fe_ports.borrow_mut().push((domid, port));
        self.front_set(slot, keys::VBD_RING_REF, &std::format!("{ring_ref}"));
        self.front_set(slot, keys::VBD_EVENT_CHANNEL, &std::format!("{port}"));
        self.front_set(slot, keys::VBD_STATE, "3");
        self.kick(store_port(self, domid));
    }

    /// Puts requests on slot `slot`'s ring and raises `req_prod`.
    fn push(&self, slot: usize, reqs: &[BlkRequest]) {
        let mut prod = u32::from_le_bytes(self.ring_bytes(slot)[..4].try_into().unwrap());
        for r in reqs {
            self.ring_write(slot, blk_slot(prod), r.as_bytes());
            prod = prod.wrapping_add(1);
        }
        self.ring_write(slot, 0, &prod.to_le_bytes());
    }

    fn rsp_prod(&self, slot: usize) -> u32 {
        u32::from_le_bytes(self.ring_bytes(slot)[4..8].try_into().unwrap())
    }

    /// Response number `n` of slot `slot`'s ring.
    fn response(&self, slot: usize, n: u32) -> BlkResponse {
        let at = blk_slot(n);
        BlkResponse::read_from_bytes(&self.ring_bytes(slot)[at..at + 64]).unwrap()
    }
}

/// The port dom0 offered `domid` for its store (from the `StoreInfo` it wrote).
fn store_port(rig: &Rig, domid: u32) -> u32 {
    store_info(rig, domid).port
}

fn store_info(rig: &Rig, domid: u32) -> StoreInfo {
    let w = rig.fake.writes.borrow();
    let (_, at, bytes) = w.iter().rev().find(|w| w.0 == domid).expect("a StoreInfo written");
    assert_eq!(*at, 0x1fc0);
    StoreInfo::read_from_bytes(bytes).unwrap()
}

fn req(id: u64, op: u8, sector: u64, nr: u8, gref: u32) -> BlkRequest {
    BlkRequest { id, sector, gref, op, nr_sectors: nr, reserved: [0; 42] }
}

/// A domain "d{domid}" built (not started) with instance `domid`, and its store.
fn domain(rig: &Rig, b: &mut Backend<'_>, domid: u32) -> Result<DomainInfo, NoStore> {
    let info = rig.fake.add_domain(domid, &std::format!("d{domid}"), DomainState::Created, domid);
    b.add_store(&rig.fake, &info).map(|()| info)
}

/// `bytes` of disk for a domain "d{domid}" created (not started) with instance `domid`, given
/// its store first unless it has one.
fn attach(rig: &Rig, b: &mut Backend<'_>, domid: u32, bytes: u64) -> Result<(), AttachError> {
    let info = if b.stores().any(|d| d == domid) {
        rig.fake.add_domain(domid, &std::format!("d{domid}"), DomainState::Created, domid)
    } else {
        domain(rig, b, domid).expect("a store")
    };
    b.attach(&rig.fake, &info, bytes)
}

#[test]
fn a_frontend_connects_writes_and_reads_back() {
    let rig = Rig::new();
    let mut b = rig.backend();
    attach(&rig, &mut b, 1, 16 * 4096).unwrap();
    let info = store_info(&rig, 1);
    assert_eq!((info.magic, info.version, info.backend, info.gref), (STORE_INFO_MAGIC, 1, 0, 1));
    assert_eq!(rig.fake.grants.borrow()[&1], (1, rig.store(0) as u64), "the store page, to d1");
    assert_eq!(rig.fake.ports.borrow()[&info.port], (1, None), "offered to d1");
    assert_eq!(rig.backend_key(0, keys::VBD_BACKEND_ID).as_deref(), Some("0"));
    assert_eq!(rig.backend_key(0, keys::VBD_SECTORS).as_deref(), Some("128"));
    assert_eq!(rig.backend_state(0), Some(state::INIT_WAIT));
    assert!(!b.poll(&rig.fake), "nothing pending: nothing done");

    rig.connect(1, 0, 5, 7);
    assert!(b.poll(&rig.fake));
    assert_eq!(rig.pending(), 0, "pending bits cleared");
    assert_eq!(rig.backend_state(0), Some(state::CONNECTED));
    assert_eq!(rig.fake.maps.borrow()[&ring_gpa(0)], (1, 5));
    let ring_port = *rig.fake.ports.borrow().iter().find(|p| p.1.1 == Some(7)).unwrap().0;
    assert_eq!(rig.fake.sent.borrow().last(), Some(&info.port), "the store change announced");

    let pattern: Vec<u8> = (0..PAGE).map(|i| (i * 7 + 3) as u8).collect();
    rig.fake.grant_page(1, 9, pattern.clone());
    rig.fake.grant_page(1, 10, vec![0; PAGE]);
    rig.push(0, &[req(100, BLK_OP_WRITE, 3, 8, 9), req(101, BLK_OP_FLUSH, 0, 0, 0)]);
    rig.push(0, &[req(102, BLK_OP_READ, 3, 8, 10)]);
    rig.kick(ring_port);
    assert!(b.poll(&rig.fake));
    assert_eq!(rig.rsp_prod(0), 3);
    for (n, id) in [(0, 100), (1, 101), (2, 102)] {
        let r = rig.response(0, n);
        assert_eq!((r.id, r.status), (id, BLK_RSP_OKAY), "response {n}");
    }
    assert_eq!(rig.response(0, 2).op, BLK_OP_READ);
    assert_eq!(rig.fake.fe_grants.borrow()[&(1, 10)], pattern, "read back what was written");
    assert_eq!(rig.fake.sent.borrow().last(), Some(&ring_port));
    // On dom0's disk, in the domain's region (after the pool's table: sector 64 + 8).
    let at = (64 + 8 + 3) * 512;
    assert_eq!(rig.disk.0.borrow()[at..at + PAGE], pattern[..]);
}

#[test]
fn bad_requests_get_errors_and_the_ring_goes_on() {
    let rig = Rig::new();
    let mut b = rig.backend();
    attach(&rig, &mut b, 1, 4096).unwrap();
    rig.connect(1, 0, 5, 7);
    b.poll(&rig.fake);
    rig.fake.grant_page(1, 9, vec![1; PAGE]);
    let cases = [
        (req(1, 2, 0, 1, 9), BLK_RSP_EOPNOTSUPP),
        (req(2, 0xff, 0, 1, 9), BLK_RSP_EOPNOTSUPP),
        (req(3, BLK_OP_READ, 0, 0, 9), BLK_RSP_ERROR),
        (req(4, BLK_OP_WRITE, 0, 9, 9), BLK_RSP_ERROR),
        (req(5, BLK_OP_READ, 7, 2, 9), BLK_RSP_ERROR),
        (req(6, BLK_OP_READ, 8, 1, 9), BLK_RSP_ERROR),
        (req(7, BLK_OP_WRITE, u64::MAX, 1, 9), BLK_RSP_ERROR),
        (req(8, BLK_OP_READ, u64::MAX - 3, 8, 9), BLK_RSP_ERROR),
        (req(9, BLK_OP_READ, 0, 1, 33), BLK_RSP_ERROR),
        (req(10, BLK_OP_WRITE, 0, 1, u32::MAX), BLK_RSP_ERROR),
        (req(11, BLK_OP_FLUSH, 0, 1, 9), BLK_RSP_ERROR),
        (req(12, BLK_OP_READ, 7, 1, 9), BLK_RSP_OKAY),
    ];
    let reqs: Vec<BlkRequest> = cases.iter().map(|c| c.0).collect();
    rig.push(0, &reqs);
    rig.kick(1);
    b.poll(&rig.fake);
    for (n, (r, status)) in cases.iter().enumerate() {
        let rsp = rig.response(0, n as u32);
        assert_eq!((rsp.id, rsp.status, rsp.op), (r.id, *status, r.op), "request {}", r.id);
    }
    assert_eq!(rig.backend_state(0), Some(state::CONNECTED));
    assert!(
        rig.disk.0.borrow()[(64 + 8) * 512..(64 + 16) * 512].iter().all(|&x| x == 0),
        "no write got through"
    );
    // A data grant the frontend revoked (or a frontend that is gone): -1, harmlessly.
    rig.fake.fe_grants.borrow_mut().remove(&(1, 9));
    rig.push(0, &[req(13, BLK_OP_WRITE, 0, 1, 9)]);
    rig.kick(1);
    b.poll(&rig.fake);
    assert_eq!(rig.response(0, 12).status, BLK_RSP_ERROR);
}

#[test]
fn more_requests_than_slots_close_the_device_and_others_go_on() {
    let rig = Rig::new();
    let mut b = rig.backend();
    attach(&rig, &mut b, 1, 4096).unwrap();
    attach(&rig, &mut b, 2, 4096).unwrap();
    rig.connect(1, 0, 5, 7);
    rig.connect(2, 1, 5, 7);
    b.poll(&rig.fake);
    assert_eq!(rig.backend_state(1), Some(state::CONNECTED));
    rig.fake.grant_page(2, 9, vec![0; PAGE]);
    // Exactly a ring's worth is fine.
    let ring_full: Vec<BlkRequest> = (0..32).map(|i| req(i, BLK_OP_FLUSH, 0, 0, 0)).collect();
    rig.push(0, &ring_full);
    rig.kick(1);
    b.poll(&rig.fake);
    assert_eq!(rig.rsp_prod(0), 32);
    // One more than that is not.
    rig.ring_write(0, 0, &(32u32 + 33).to_le_bytes());
    rig.push(1, &[req(1, BLK_OP_READ, 0, 1, 9)]);
    rig.kick(1);
    assert_eq!(rig.fake.held(), (4, 6, 2));
    b.poll(&rig.fake);
    assert_eq!(rig.backend_state(0), Some(state::CLOSED));
    assert_eq!(rig.backend_key(0, keys::VBD_ERROR).as_deref(), Some("more requests than slots"));
    assert_eq!(rig.rsp_prod(0), 32, "nothing answered");
    assert!(!rig.fake.maps.borrow().contains_key(&ring_gpa(0)), "ring unmapped");
    assert_eq!(rig.fake.held(), (4, 5, 1), "its ring port closed");
    // The other is served.
    assert_eq!(rig.response(1, 0).status, BLK_RSP_OKAY);
    // Closed for good: a new `Initialised` is not looked at.
    rig.connect(1, 0, 6, 8);
    b.poll(&rig.fake);
    assert_eq!(rig.backend_state(0), Some(state::CLOSED));
    assert_eq!(rig.fake.held(), (4, 5, 1));
}

#[test]
fn a_closed_frontend_goes_back_to_init_wait_and_reconnects() {
    let rig = Rig::new();
    let mut b = rig.backend();
    attach(&rig, &mut b, 3, 4096).unwrap();
    rig.connect(3, 0, 5, 7);
    b.poll(&rig.fake);
    rig.push(0, &[req(1, BLK_OP_FLUSH, 0, 0, 0)]);
    rig.kick(2);
    b.poll(&rig.fake);
    assert_eq!(rig.rsp_prod(0), 1);
    rig.front_set(0, keys::VBD_STATE, "6");
    rig.kick(1);
    b.poll(&rig.fake);
    assert_eq!(rig.backend_state(0), Some(state::INIT_WAIT));
    assert_eq!(rig.fake.held(), (2, 2, 0), "ring unmapped, its port closed");
    // A new ring (the frontend could reuse the old grant: dom0 no longer maps it).
    rig.connect(3, 0, 5, 7);
    b.poll(&rig.fake);
    assert_eq!(rig.backend_state(0), Some(state::CONNECTED));
    assert_eq!(rig.fake.held(), (2, 3, 1));
    rig.push(0, &[req(2, BLK_OP_FLUSH, 0, 0, 0)]);
    rig.kick(2);
    b.poll(&rig.fake);
    assert_eq!((rig.rsp_prod(0), rig.response(0, 0).id), (1, 2), "counted from 0 again");
}

#[test]
fn a_ring_handed_over_with_requests_in_it_closes_the_device() {
    let rig = Rig::new();
    let mut b = rig.backend();
    attach(&rig, &mut b, 3, 4096).unwrap();
    rig.connect(3, 0, 5, 7);
    // Old requests a reconnecting frontend left on its ring: dom0 must not replay them.
    rig.ring_write(0, 0, &3u32.to_le_bytes());
    rig.ring_write(0, 4, &9u32.to_le_bytes());
    b.poll(&rig.fake);
    assert_eq!(rig.backend_state(0), Some(state::CLOSED));
    assert_eq!(rig.backend_key(0, keys::VBD_ERROR).as_deref(), Some("ring not fresh"));
    assert_eq!(rig.fake.held().2, 0, "the ring is not kept mapped");
}

#[test]
fn garbage_in_the_store_closes_or_is_ignored_never_panics() {
    let closes = |ring_ref: &str, port: &str, why: &str| {
        let rig = Rig::new();
        let mut b = rig.backend();
        attach(&rig, &mut b, 1, 4096).unwrap();
        rig.fake.grant_page(1, 5, vec![0; PAGE]);
        rig.fake.fe_ports.borrow_mut().push((1, 7));
        if !ring_ref.is_empty() {
            rig.front_set(0, keys::VBD_RING_REF, ring_ref);
        }
        if !port.is_empty() {
            rig.front_set(0, keys::VBD_EVENT_CHANNEL, port);
        }
        rig.front_set(0, keys::VBD_STATE, "3");
        rig.kick(1);
        b.poll(&rig.fake);
        assert_eq!(rig.backend_state(0), Some(state::CLOSED), "{ring_ref:?} {port:?}");
        assert_eq!(rig.backend_key(0, keys::VBD_ERROR).as_deref(), Some(why));
        assert_eq!(rig.fake.held(), (2, 2, 0), "nothing mapped or bound");
    };
    closes("abc", "7", "bad ring-ref");
    closes("", "7", "bad ring-ref");
    closes("4294967301", "7", "bad ring-ref"); // 2^32 + 5: not truncated to 5
    closes("-5", "7", "bad ring-ref");
    closes("5", "99999999999999999999", "bad event-channel");
    closes("5", "", "bad event-channel");
    closes("6", "7", "ring map failed"); // not granted
    closes("5", "8", "event bind failed"); // not offered
    // States that mean nothing, and bytes that are no entries at all.
    let rig = Rig::new();
    let mut b = rig.backend();
    attach(&rig, &mut b, 1, 4096).unwrap();
    for s in ["3x", "", "03 ", "4", "6", "18446744073709551619"] {
        rig.front_set(0, keys::VBD_STATE, s);
        rig.kick(1);
        b.poll(&rig.fake);
        assert_eq!(rig.backend_state(0), Some(state::INIT_WAIT), "{s:?}");
    }
    // SAFETY: the rig's store page; its frontend half.
    unsafe { core::ptr::write_bytes(rig.store(0).add(PAGE / 2), 0xff, PAGE / 2) };
    rig.kick(1);
    b.poll(&rig.fake);
    assert_eq!(rig.backend_state(0), Some(state::INIT_WAIT));
    assert_eq!(rig.fake.held(), (2, 2, 0));
}

#[test]
fn reasons_fit_a_store_value() {
    for r in [
        "more requests than slots",
        "bad ring-ref",
        "bad event-channel",
        "ring map failed",
        "event bind failed",
    ] {
        assert!(r.len() <= STORE_VALUE, "{r}");
    }
}

#[test]
fn teardown_leaves_nothing_behind() {
    let rig = Rig::new();
    let mut b = rig.backend();
    attach(&rig, &mut b, 1, 4096).unwrap(); // connected
    attach(&rig, &mut b, 2, 4096).unwrap(); // never connected
    attach(&rig, &mut b, 3, 4096).unwrap(); // closed
    rig.connect(1, 0, 5, 7);
    rig.connect(3, 2, 5, 7);
    rig.fake.fe_ports.borrow_mut().retain(|p| p.0 != 3);
    b.poll(&rig.fake);
    assert_eq!(rig.backend_state(2), Some(state::CLOSED));
    assert_eq!(rig.fake.held(), (6, 7, 1));
    rig.fake.grant_page(1, 9, vec![0x5a; PAGE]);
    rig.push(0, &[req(1, BLK_OP_WRITE, 0, 8, 9)]);
    rig.kick(1);
    b.poll(&rig.fake);
    for d in 1..=3 {
        rig.fake.domain_destroy(d).unwrap();
        b.destroyed(&rig.fake, d);
    }
    assert_eq!(rig.fake.held(), (0, 0, 0));
    assert_eq!(b.attached().count(), 0);
    b.destroyed(&rig.fake, 1); // twice: nothing
    // The name's region comes back, with its data, to a new domain of that name.
    attach(&rig, &mut b, 1, 4096).unwrap();
    rig.connect(1, 0, 5, 7);
    b.poll(&rig.fake);
    rig.fake.grant_page(1, 9, vec![0; PAGE]);
    rig.push(0, &[req(1, BLK_OP_READ, 0, 8, 9)]);
    rig.kick(1);
    b.poll(&rig.fake);
    assert_eq!(rig.fake.fe_grants.borrow()[&(1, 9)], vec![0x5a; PAGE]);
}

#[test]
fn attach_refuses_what_it_cannot_serve_and_leaves_nothing() {
    let rig = Rig::new();
    let mut b = rig.backend();
    let bad = |e: &'static str| Err(AttachError::BadRequest(e));
    for bytes in [0, 512, 4095, 4097, u64::MAX] {
        assert_eq!(attach(&rig, &mut b, 1, bytes), bad("a virtual disk is whole 4 KiB pages"));
    }
    for s in
        [DomainState::Running, DomainState::Paused, DomainState::Shutdown, DomainState::Crashed]
    {
        let info = rig.fake.add_domain(1, "d1", s, 1);
        assert_eq!(b.attach(&rig.fake, &info, 4096), bad("attach before the domain starts"));
    }
    attach(&rig, &mut b, 1, 4096).unwrap();
    assert_eq!(attach(&rig, &mut b, 1, 4096), bad("the domain has a virtual disk already"));
    for d in 2..=8 {
        attach(&rig, &mut b, d, 4096).unwrap();
    }
    assert_eq!(attach(&rig, &mut b, 9, 4096), bad(FULL));
    assert_eq!(rig.fake.held(), (18, 18, 0), "nine stores, eight disks");
    rig.fake.domain_destroy(8).unwrap();
    b.destroyed(&rig.fake, 8);
    // The same name with another size.
    assert_eq!(
        attach(&rig, &mut b, 8, 8192),
        Err(AttachError::Disk(DiskError::SizeMismatch { sectors: 8 }))
    );
    attach(&rig, &mut b, 8, 4096).unwrap();
    // A domain without a store (a multiboot kernel, or none was left for it).
    let info = rig.fake.add_domain(10, "d10", DomainState::Created, 10);
    assert_eq!(b.attach(&rig.fake, &info, 4096), bad(NO_STORE));
    // A store of an earlier domain with this id is not the newcomer's.
    let info = rig.fake.add_domain(9, "d9", DomainState::Created, 99);
    assert_eq!(b.attach(&rig.fake, &info, 4096), bad(NO_STORE));
    // Without a disk, or without a pool on it.
    let rig = Rig::new();
    // SAFETY: the rig's pages, for this backend alone.
    let mut no_disk = unsafe { Backend::new(rig.mem, None) };
    assert_eq!(attach(&rig, &mut no_disk, 10, 4096), Err(AttachError::Disk(DiskError::NoDisk)));
    let rig = Rig::new();
    let plain = MemDisk(RefCell::new(pool_disk(4096, 0x83)));
    // SAFETY: as above.
    let mut no_pool = unsafe { Backend::new(rig.mem, Some(&plain)) };
    assert_eq!(attach(&rig, &mut no_pool, 10, 4096), Err(AttachError::Disk(DiskError::NoPool)));
}

#[test]
fn a_successor_with_the_same_domid_replaces_a_forgotten_slot() {
    let rig = Rig::new();
    let mut b = rig.backend();
    attach(&rig, &mut b, 1, 4096).unwrap();
    rig.connect(1, 0, 5, 7);
    b.poll(&rig.fake);
    // d1 destroyed without the backend being told; a new d1 (instance 2) is created.
    rig.fake.domain_destroy(1).unwrap();
    let info = rig.fake.add_domain(1, "other", DomainState::Created, 2);
    b.add_store(&rig.fake, &info).unwrap();
    b.attach(&rig.fake, &info, 8192).unwrap();
    assert_eq!(b.attached().collect::<Vec<_>>(), [(1, state::INIT_WAIT)]);
    assert_eq!(rig.fake.held(), (2, 2, 0), "the old slot's grants, ports and mapping are gone");
}

impl Rig {
    /// Store slot `s`'s console page, as dom0 has it (and the domain maps it).
    fn console(&self, s: usize) -> *mut u8 {
        self.mem.consoles.cast::<Page>().wrapping_add(s).cast()
    }

    fn cons_u32(&self, s: usize, at: usize) -> u32 {
        // SAFETY: an index word of a rig page.
        unsafe { core::ptr::read_volatile(self.console(s).add(at).cast::<u32>()) }
    }

    fn set_cons_u32(&self, s: usize, at: usize, v: u32) {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(self.console(s).add(at).cast::<u32>(), v) }
    }

    /// The domain of store `s` writes `bytes` to its console as a frontend does (waiting for
    /// nothing: the caller keeps within the ring) and kicks `port`.
    fn cons_write(&self, s: usize, bytes: &[u8], port: u32) {
        let mut prod = self.cons_u32(s, pv::CONS_OUT_PROD);
        for &c in bytes {
            let at = pv::CONS_OUT + prod as usize % pv::CONS_OUT_SIZE;
            // SAFETY: inside the rig page's output array.
            unsafe { *self.console(s).add(at) = c };
            prod = prod.wrapping_add(1);
        }
        self.set_cons_u32(s, pv::CONS_OUT_PROD, prod);
        self.kick(port);
    }

    /// What the domain of store `s` reads from its console input (advancing `in_cons`).
    fn cons_read_input(&self, s: usize) -> Vec<u8> {
        let (mut cons, prod) =
            (self.cons_u32(s, pv::CONS_IN_CONS), self.cons_u32(s, pv::CONS_IN_PROD));
        let mut out = Vec::new();
        while cons != prod {
            let at = pv::CONS_IN + cons as usize % pv::CONS_IN_SIZE;
            // SAFETY: inside the rig page's input array.
            out.push(unsafe { *self.console(s).add(at) });
            cons = cons.wrapping_add(1);
        }
        self.set_cons_u32(s, pv::CONS_IN_CONS, cons);
        out
    }

    /// dom0's console port for domain `domid` (from its store's keys, store slot `s`).
    fn console_port(&self, s: usize) -> u32 {
        pv::get_u64(&self.snap(s), Half::Backend, keys::CONSOLE_PORT).unwrap() as u32
    }
}

/// What `ConsoleRead` would get of `domid`'s PV console.
fn read_all(rig: &Rig, b: &mut Backend<'_>, domid: u32) -> Vec<u8> {
    let mut out = vec![0u8; 8192];
    let n = b.console_read(&rig.fake, domid, &mut out);
    out.truncate(n);
    out
}

#[test]
fn every_domain_gets_a_store_and_a_console_and_leaves_nothing_behind() {
    let rig = Rig::new();
    let mut b = rig.backend();
    for d in 1..=MAX_STORES as u32 {
        domain(&rig, &mut b, d).unwrap();
    }
    assert_eq!(domain(&rig, &mut b, 16), Err(NoStore::Full));
    assert_eq!(rig.fake.held(), (30, 30, 0), "two grants and two ports a domain");
    for s in 0..MAX_STORES {
        let d = s as u32 + 1;
        let info = store_info(&rig, d);
        assert_eq!(info.gref, STORE_REF_BASE + s as u32);
        let cref = rig.backend_key(s, keys::CONSOLE_RING_REF).unwrap();
        assert_eq!(cref, std::format!("{}", CONSOLE_REF_BASE + s as u32));
        assert_eq!(
            rig.fake.grants.borrow()[&(CONSOLE_REF_BASE + s as u32)],
            (d, rig.console(s) as u64)
        );
        let port = rig.console_port(s);
        assert_eq!(rig.fake.ports.borrow()[&port], (d, None), "offered to the domain");
        assert_ne!(port, info.port);
        assert_eq!(rig.backend_key(s, keys::VBD_BACKEND_STATE), None, "no disk keys");
    }
    for d in 1..=MAX_STORES as u32 {
        rig.fake.domain_destroy(d).unwrap();
        b.destroyed(&rig.fake, d);
    }
    assert_eq!(rig.fake.held(), (0, 0, 0));
    assert_eq!(b.stores().count(), 0);
    // Many creates and destroys: still nothing left, the slots reused.
    for round in 0..40u32 {
        let d = round % 7 + 1;
        domain(&rig, &mut b, d).unwrap();
        attach(&rig, &mut b, d, 4096).unwrap();
        rig.fake.domain_destroy(d).unwrap();
        b.destroyed(&rig.fake, d);
        assert_eq!(rig.fake.held(), (0, 0, 0), "round {round}");
    }
    // Each hypercall failing in turn undoes the ones before; the domain has no store.
    for op in ["grant_set", "alloc", "mem_write"] {
        rig.fake.fail.replace(vec![op]);
        assert!(
            matches!(domain(&rig, &mut b, 1), Err(NoStore::Hypercall(_, Errno::ENOSPC))),
            "{op}"
        );
        assert_eq!(rig.fake.held(), (0, 0, 0), "{op}");
        assert_eq!(b.stores().count(), 0, "{op}");
    }
    rig.fake.fail.replace(vec![]);
    domain(&rig, &mut b, 1).unwrap();
    // A new domain with the id of one dom0 was not told about replaces its store.
    rig.fake.domain_destroy(1).unwrap();
    domain(&rig, &mut b, 1).unwrap();
    assert_eq!(rig.fake.held(), (2, 2, 0));
}

#[test]
fn console_output_flows_through_wraps_and_waits_for_the_domain_to_say_so() {
    let rig = Rig::new();
    let mut b = rig.backend();
    domain(&rig, &mut b, 1).unwrap();
    let port = rig.console_port(0);
    // Not connected yet: dom0 leaves the page alone.
    rig.cons_write(0, b"early", port);
    assert!(b.poll(&rig.fake));
    assert_eq!(rig.cons_u32(0, pv::CONS_OUT_CONS), 0);
    assert!(read_all(&rig, &mut b, 1).is_empty());
    rig.front_set(0, keys::CONSOLE_STATE, "4");
    rig.kick(store_port(&rig, 1));
    b.poll(&rig.fake);
    assert_eq!(read_all(&rig, &mut b, 1), b"early");
    assert_eq!(rig.cons_u32(0, pv::CONS_OUT_CONS), 5);
    assert_eq!(rig.fake.sent.borrow().last(), Some(&port), "room made: the domain is told");
    // 3000 bytes in pieces of 700: the ring wraps; each piece read at its event.
    let line: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut got = Vec::new();
    for piece in line.chunks(700) {
        rig.cons_write(0, piece, port);
        b.poll(&rig.fake);
        got.extend(read_all(&rig, &mut b, 1));
    }
    assert_eq!(got, line);
    // Output whose event dom0 has not seen yet is read by `console_read` itself.
    rig.cons_write(0, b"no event", port);
    assert_eq!(read_all(&rig, &mut b, 1), b"no event");
    // Another domain's events do not read this one's page.
    domain(&rig, &mut b, 2).unwrap();
    rig.cons_write(0, b"x", port);
    // The rig's event page: forget the kick above, raise d2's console port instead.
    let events = rig.mem.events;
    // SAFETY: as above.
    unsafe { (*events).pending = [0; abi::types::EVTCHN_WORDS] };
    rig.kick(rig.console_port(1));
    b.poll(&rig.fake);
    assert_eq!(rig.cons_u32(0, pv::CONS_OUT_CONS), 5 + 3000 + 8);
    assert!(read_all(&rig, &mut b, 2).is_empty());
    assert!(read_all(&rig, &mut b, 9).is_empty(), "no such store: nothing");
}

#[test]
fn a_bogus_out_prod_takes_a_ring_and_resynchronises_and_others_go_on() {
    let rig = Rig::new();
    let mut b = rig.backend();
    for d in 1..=2 {
        domain(&rig, &mut b, d).unwrap();
        rig.front_set(d as usize - 1, keys::CONSOLE_STATE, "4");
    }
    for bogus in [u32::MAX, 1_000_000, 2049, 0x8000_0000] {
        rig.set_cons_u32(0, pv::CONS_OUT_PROD, bogus);
        rig.kick(rig.console_port(0));
        rig.cons_write(1, b"bystander ", rig.console_port(1));
        b.poll(&rig.fake);
        assert_eq!(read_all(&rig, &mut b, 1).len(), pv::CONS_OUT_SIZE, "{bogus}");
        assert_eq!(rig.cons_u32(0, pv::CONS_OUT_CONS), bogus, "resynchronised");
        assert_eq!(read_all(&rig, &mut b, 2), b"bystander ");
        // And it goes on from there.
        rig.cons_write(0, b"sorry", rig.console_port(0));
        b.poll(&rig.fake);
        assert_eq!(read_all(&rig, &mut b, 1), b"sorry");
    }
    // A domain that writes dom0's own index changes nothing: dom0 keeps its count.
    rig.set_cons_u32(0, pv::CONS_OUT_CONS, 12345);
    rig.cons_write(0, b"ok", rig.console_port(0));
    b.poll(&rig.fake);
    assert_eq!(read_all(&rig, &mut b, 1), b"ok");
}

#[test]
fn the_log_keeps_the_newest_bytes() {
    let rig = Rig::new();
    let mut b = rig.backend();
    domain(&rig, &mut b, 1).unwrap();
    rig.front_set(0, keys::CONSOLE_STATE, "4");
    let port = rig.console_port(0);
    let all: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
    for piece in all.chunks(2000) {
        rig.cons_write(0, piece, port);
        b.poll(&rig.fake);
    }
    let got = read_all(&rig, &mut b, 1);
    assert_eq!(got, all[6000 - crate::vbd::console::LOG_BYTES..], "the oldest bytes dropped");
    // Read in small pieces, in order.
    rig.cons_write(0, b"0123456789", port);
    b.poll(&rig.fake);
    let mut small = [0u8; 4];
    assert_eq!(b.console_read(&rig.fake, 1, &mut small), 4);
    assert_eq!(&small, b"0123");
    assert_eq!(read_all(&rig, &mut b, 1), b"456789");
    // A destroyed domain's output goes with it.
    rig.cons_write(0, b"gone", port);
    b.poll(&rig.fake);
    rig.fake.domain_destroy(1).unwrap();
    b.destroyed(&rig.fake, 1);
    domain(&rig, &mut b, 1).unwrap();
    assert!(read_all(&rig, &mut b, 1).is_empty());
}

#[test]
fn console_input_goes_to_a_connected_console_as_far_as_it_has_room() {
    let rig = Rig::new();
    let mut b = rig.backend();
    domain(&rig, &mut b, 1).unwrap();
    assert_eq!(b.console_input(&rig.fake, 1, b"x"), None, "not connected: COM1's");
    assert_eq!(b.console_input(&rig.fake, 5, b"x"), None, "no store: COM1's");
    rig.front_set(0, keys::CONSOLE_STATE, "4");
    let port = rig.console_port(0);
    assert_eq!(b.console_input(&rig.fake, 1, b"ping\n"), Some(5));
    assert_eq!(rig.fake.sent.borrow().last(), Some(&port));
    assert_eq!(rig.cons_read_input(0), b"ping\n");
    // Up to a ring's worth; then what the domain has taken makes room.
    let big = vec![b'z'; 700];
    assert_eq!(b.console_input(&rig.fake, 1, &big), Some(700));
    assert_eq!(b.console_input(&rig.fake, 1, &big), Some(pv::CONS_IN_SIZE - 700));
    assert_eq!(b.console_input(&rig.fake, 1, b"more"), Some(0));
    assert_eq!(rig.cons_read_input(0).len(), pv::CONS_IN_SIZE);
    assert_eq!(b.console_input(&rig.fake, 1, b"wrap"), Some(4));
    assert_eq!(rig.cons_read_input(0), b"wrap");
    // An `in_cons` ahead of dom0, or far behind: no room, no panic.
    for bogus in [u32::MAX, 1_000_000, 5 + 1400 + 4 + 1] {
        rig.set_cons_u32(0, pv::CONS_IN_CONS, bogus);
        assert_eq!(b.console_input(&rig.fake, 1, b"x"), Some(0), "{bogus}");
    }
    // Garbage in the frontend half: as if not connected.
    // SAFETY: the rig's store page; its frontend half.
    unsafe { core::ptr::write_bytes(rig.store(0).add(PAGE / 2), 0xff, PAGE / 2) };
    assert_eq!(b.console_input(&rig.fake, 1, b"x"), None);
}
