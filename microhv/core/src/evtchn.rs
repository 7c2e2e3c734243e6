//! Event channels (#15): every domain's port table and the state machine over them, in the
//! shape of Xen's 2-level event channels (`xen/common/event_channel.c`).
//!
//! A port is free, unbound (offered to one domain, which may bind it), interdomain (bound to a
//! peer port; the two always name each other) or bound to a VIRQ. Port 0 is never allocated.
//! Closing one end of an interdomain pair leaves the other end unbound and offered to the closer
//! again, so the closer may reconnect, as in Xen. Destroying a domain frees its ports and leaves
//! every port of another domain that named it (bound to it, or offered to it) unbound and
//! offered to [`DOMID_INVALID`]: Xen leaves them offered to the dead domid, which it does not
//! hand out again for a long time, but microhv reuses an id at the next create, and the
//! successor must not inherit what was offered to its predecessor.
//!
//! Only the tables are here. The callers (`hv/evtchn.rs`) check that the domains named exist
//! and deliver what [`EventChannels::send`] returns.

use crate::hv::DOMAINS;
use abi::Errno;
use abi::hypercall::{DOMID_DOM0, DOMID_INVALID, VIRQ_CON_RING, VIRQ_DOM_EXC};
use abi::types::{
    EVTCHNSTAT_CLOSED, EVTCHNSTAT_INTERDOMAIN, EVTCHNSTAT_UNBOUND, EVTCHNSTAT_VIRQ, EvtchnStatus,
};

/// Ports per domain, port 0 included, as an array length.
pub const EVTCHN_PORTS: usize = abi::hypercall::EVTCHN_PORTS as usize;
/// VIRQ numbers a domain's binding table has room for.
pub const NR_VIRQS: usize = 16;
const _: () = assert!(EVTCHN_PORTS <= 64, "a domain's pending bits are one word (`Table::held`)");

/// The state of one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Not in use.
    Free,
    /// Offered to this domain (or to nobody: [`DOMID_INVALID`]), which may bind it.
    Unbound(u16),
    /// Bound to (domain, port), which is bound back to this one.
    Interdomain(u16, u16),
    /// Bound to a VIRQ.
    Virq(u8),
}

impl Port {
    /// The state as `EvtchnStatus` reports it.
    pub fn status(self) -> EvtchnStatus {
        let (state, remote_domid, remote_port, virq) = match self {
            Port::Free => (EVTCHNSTAT_CLOSED, 0, 0, 0),
            Port::Unbound(remote) => (EVTCHNSTAT_UNBOUND, remote.into(), 0, 0),
            Port::Interdomain(remote, port) => {
                (EVTCHNSTAT_INTERDOMAIN, remote.into(), port.into(), 0)
            }
            Port::Virq(v) => (EVTCHNSTAT_VIRQ, 0, 0, v.into()),
        };
        EvtchnStatus { state, remote_domid, remote_port, virq }
    }
}

/// One domain's event channels.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    ports: [Port; EVTCHN_PORTS],
    /// The port bound to each VIRQ; 0 for none.
    virqs: [u8; NR_VIRQS],
    /// The upcall vector (0: none, the guest polls) and the guest-physical address of the
    /// event-channel page (`EvtchnSetCallback`).
    pub callback: Option<(u8, u64)>,
    /// Pending bits with no page to go to (none registered yet, or it stopped being RAM):
    /// written there when a page is registered, so that no event is lost.
    pub held: u64,
    /// Domains (a bit each) whose tables may hold a port naming this domain: a superset, so
    /// that destroying a domain looks only at those tables.
    named_by: u32,
}
const _: () = assert!(DOMAINS <= 32, "`Table::named_by` has a bit per domain");

impl Table {
    const EMPTY: Self = Self {
        ports: [Port::Free; EVTCHN_PORTS],
        virqs: [0; NR_VIRQS],
        callback: None,
        held: 0,
        named_by: 0,
    };

    /// The lowest free port.
    fn free_port(&self) -> Result<usize, Errno> {
        (1..EVTCHN_PORTS).find(|&p| self.ports[p] == Port::Free).ok_or(Errno::ENOSPC)
    }
}

/// A port number from a hypercall argument: `1..EVTCHN_PORTS`, else `EINVAL`.
fn port(p: u64) -> Result<usize, Errno> {
    usize::try_from(p).ok().filter(|p| (1..EVTCHN_PORTS).contains(p)).ok_or(Errno::EINVAL)
}

/// The port tables of every domain.
pub struct EventChannels {
    /// Entry `d` is domain id `d`'s.
    pub tables: [Table; DOMAINS],
}

impl EventChannels {
    /// Every domain with no port.
    pub(crate) const fn new() -> Self {
        Self { tables: [Table::EMPTY; DOMAINS] }
    }

    /// `EvtchnAllocUnbound`: a port of `d` that `remote` (an existing domain) may bind.
    pub fn alloc_unbound(&mut self, d: usize, remote: usize) -> Result<u64, Errno> {
        let t = &mut self.tables[d];
        let p = t.free_port()?;
        t.ports[p] = Port::Unbound(remote as u16);
        self.tables[remote].named_by |= 1 << d;
        Ok(p as u64)
    }

    /// `EvtchnBindInterdomain`: a port of `d` bound to `remote`'s port `rport`, which must be
    /// unbound and offered to `d` (`EINVAL` otherwise, whatever the port's state: as Xen, so
    /// that a domain learns nothing of what others offered). `d` may be `remote` (a loopback
    /// pair).
    pub fn bind_interdomain(&mut self, d: usize, remote: usize, rport: u64) -> Result<u64, Errno> {
        let rp = port(rport)?;
        match self.tables[remote].ports[rp] {
            Port::Unbound(r) if usize::from(r) == d => {}
            _ => return Err(Errno::EINVAL),
        }
        let p = self.tables[d].free_port()?;
        self.tables[d].ports[p] = Port::Interdomain(remote as u16, rp as u16);
        self.tables[remote].ports[rp] = Port::Interdomain(d as u16, p as u16);
        // `d` knew `remote`'s table names it (the offer); now `d`'s new port names `remote`.
        self.tables[remote].named_by |= 1 << d;
        Ok(p as u64)
    }

    /// `EvtchnBindVirq`: a port of `d` for `virq`. Both VIRQs are global (about every domain),
    /// so only dom0 may bind them (`EPERM`), once each (`EEXIST`); other numbers are `EINVAL`.
    pub fn bind_virq(&mut self, d: usize, virq: u64) -> Result<u64, Errno> {
        let v = match u32::try_from(virq) {
            Ok(v @ (VIRQ_DOM_EXC | VIRQ_CON_RING)) => v as usize,
            _ => return Err(Errno::EINVAL),
        };
        if d != DOMID_DOM0 as usize {
            return Err(Errno::EPERM);
        }
        let t = &mut self.tables[d];
        if t.virqs[v] != 0 {
            return Err(Errno::EEXIST);
        }
        let p = t.free_port()?;
        (t.ports[p], t.virqs[v]) = (Port::Virq(v as u8), p as u8);
        Ok(p as u64)
    }

    /// `EvtchnSend` on port `p` of `d`: the (domain, port) to mark pending, or `None` if the
    /// port is unbound (its peer closed it; the event is dropped, as in Xen). A free or VIRQ
    /// port is `EINVAL`.
    pub fn send(&self, d: usize, p: u64) -> Result<Option<(usize, usize)>, Errno> {
        match self.tables[d].ports[port(p)?] {
            Port::Interdomain(remote, port) => Ok(Some((remote.into(), port.into()))),
            Port::Unbound(_) => Ok(None),
            Port::Free | Port::Virq(_) => Err(Errno::EINVAL),
        }
    }

    /// The port `d` bound `virq` to, if any.
    pub fn virq_port(&self, d: usize, virq: u32) -> Option<usize> {
        let p = *self.tables[d].virqs.get(virq as usize)?;
        (p != 0).then_some(p.into())
    }

    /// `EvtchnStatus`.
    pub fn status(&self, d: usize, p: u64) -> Result<Port, Errno> {
        Ok(self.tables[d].ports[port(p)?])
    }

    /// `EvtchnClose`: frees port `p` of `d` (`EINVAL` if it is free); an interdomain peer is
    /// left unbound, offered to `d`. Returns the port.
    pub fn close(&mut self, d: usize, p: u64) -> Result<usize, Errno> {
        let p = port(p)?;
        self.release(d, p, d as u16)?;
        Ok(p)
    }

    /// Frees port `p` of `d`; an interdomain peer is left offered to `offer`.
    fn release(&mut self, d: usize, p: usize, offer: u16) -> Result<(), Errno> {
        match core::mem::replace(&mut self.tables[d].ports[p], Port::Free) {
            Port::Free => return Err(Errno::EINVAL),
            Port::Unbound(_) => {}
            Port::Interdomain(r, rp) => {
                self.tables[usize::from(r)].ports[usize::from(rp)] = Port::Unbound(offer)
            }
            Port::Virq(v) => self.tables[d].virqs[usize::from(v)] = 0,
        }
        self.tables[d].held &= !(1 << p);
        Ok(())
    }

    /// Domain `d` is destroyed: its ports are freed, its page forgotten, and every port that
    /// names it is left unbound and offered to nobody.
    pub fn destroy(&mut self, d: usize) {
        let gone = DOMID_INVALID as u16;
        for p in 1..EVTCHN_PORTS {
            if self.tables[d].ports[p] != Port::Free {
                let _ = self.release(d, p, gone);
            }
        }
        let named_by = self.tables[d].named_by;
        self.tables[d] = Table::EMPTY;
        for t in (0..DOMAINS).filter(|r| named_by & (1 << r) != 0) {
            for port in &mut self.tables[t].ports {
                if *port == Port::Unbound(d as u16) {
                    *port = Port::Unbound(gone);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The domains the tests use.
    const N: usize = 3;

    #[test]
    fn a_pair_is_made_used_and_closed_as_in_xen() {
        let mut e = EventChannels::new();
        let p = e.alloc_unbound(1, 2).expect("alloc");
        assert_eq!(p, 1, "port 0 is never allocated");
        assert_eq!(e.bind_interdomain(0, 1, p), Err(Errno::EINVAL), "offered to domain 2 only");
        assert_eq!(e.bind_interdomain(2, 1, 0), Err(Errno::EINVAL));
        assert_eq!(e.bind_interdomain(2, 1, 5), Err(Errno::EINVAL), "a free port");
        assert_eq!(e.send(1, p), Ok(None), "nobody bound yet: dropped");
        let q = e.bind_interdomain(2, 1, p).expect("bind");
        assert_eq!(e.bind_interdomain(2, 1, p), Err(Errno::EINVAL), "bound already");
        assert_eq!(e.send(1, p), Ok(Some((2, q as usize))));
        assert_eq!(e.send(2, q), Ok(Some((1, p as usize))));
        let st = e.status(2, q).expect("status").status();
        assert_eq!(
            (st.state, st.remote_domid, st.remote_port),
            (EVTCHNSTAT_INTERDOMAIN, 1, p as u32)
        );
        assert_eq!(e.close(1, p), Ok(p as usize));
        assert_eq!(e.status(2, q), Ok(Port::Unbound(1)), "offered back to the closer");
        assert_eq!(e.send(2, q), Ok(None));
        assert_eq!(e.close(1, p), Err(Errno::EINVAL), "closed twice");
        // The closer may reconnect.
        assert!(e.bind_interdomain(1, 2, q).is_ok());
        for bad in [0, EVTCHN_PORTS as u64, u64::MAX] {
            assert_eq!(e.send(1, bad), Err(Errno::EINVAL));
            assert_eq!(e.status(1, bad), Err(Errno::EINVAL));
            assert_eq!(e.close(1, bad), Err(Errno::EINVAL));
        }
    }

    #[test]
    fn virqs_are_dom0s_and_bound_once() {
        let mut e = EventChannels::new();
        assert_eq!(e.bind_virq(1, VIRQ_DOM_EXC.into()), Err(Errno::EPERM));
        assert_eq!(e.bind_virq(0, 0), Err(Errno::EINVAL), "VIRQ_TIMER is not provided");
        assert_eq!(e.bind_virq(0, u64::from(VIRQ_DOM_EXC) + (1 << 32)), Err(Errno::EINVAL));
        let p = e.bind_virq(0, VIRQ_DOM_EXC.into()).expect("bind");
        assert_eq!(e.bind_virq(0, VIRQ_DOM_EXC.into()), Err(Errno::EEXIST));
        assert_eq!(e.virq_port(0, VIRQ_DOM_EXC), Some(p as usize));
        assert_eq!(e.virq_port(0, VIRQ_CON_RING), None);
        assert_eq!(e.virq_port(0, u32::MAX), None);
        assert_eq!(e.send(0, p), Err(Errno::EINVAL), "nothing to send to");
        assert_eq!(e.status(0, p).map(|s| s.status().virq), Ok(VIRQ_DOM_EXC));
        e.close(0, p).expect("close");
        assert_eq!(e.virq_port(0, VIRQ_DOM_EXC), None);
        assert!(e.bind_virq(0, VIRQ_DOM_EXC.into()).is_ok(), "bindable again");
    }

    #[test]
    fn a_full_table_is_enospc_and_close_makes_room() {
        let mut e = EventChannels::new();
        for want in 1..EVTCHN_PORTS as u64 {
            assert_eq!(e.alloc_unbound(1, 0), Ok(want));
        }
        assert_eq!(e.alloc_unbound(1, 0), Err(Errno::ENOSPC));
        let offered = e.alloc_unbound(0, 1).expect("dom0's table has room");
        assert_eq!(e.bind_interdomain(1, 0, offered), Err(Errno::ENOSPC));
        assert_eq!(e.status(0, offered), Ok(Port::Unbound(1)), "unchanged");
        e.close(1, 17).expect("close");
        assert_eq!(e.bind_interdomain(1, 0, offered), Ok(17));
    }

    #[test]
    fn destroy_leaves_no_binding_a_successor_could_inherit() {
        let mut e = EventChannels::new();
        let a = e.alloc_unbound(0, 1).expect("alloc");
        let offered = e.alloc_unbound(0, 1).expect("alloc");
        let b = e.bind_interdomain(1, 0, a).expect("bind");
        let lo = e.alloc_unbound(1, 1).expect("loopback");
        e.bind_interdomain(1, 1, lo).expect("loopback bind");
        e.tables[1].callback = Some((0x40, 0x5000));
        e.tables[1].held = 1 << b;
        e.destroy(1);
        let gone = Port::Unbound(DOMID_INVALID as u16);
        assert_eq!(e.status(0, a), Ok(gone));
        assert_eq!(e.status(0, offered), Ok(gone));
        assert_eq!(e.bind_interdomain(1, 0, offered), Err(Errno::EINVAL), "the new domain 1");
        assert!((1..EVTCHN_PORTS as u64).all(|p| e.status(1, p) == Ok(Port::Free)));
        assert_eq!((e.tables[1].callback, e.tables[1].held), (None, 0));
    }

    // ---- the model ------------------------------------------------------------------------------

    /// What a port is, in the model: a map from (domain, port) to a plain description, and a
    /// per-domain set of VIRQs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum M {
        Offered(usize),
        Bound(usize, usize),
        Virq(u32),
    }

    #[derive(Debug, Default)]
    struct Model {
        ports: BTreeMap<(usize, usize), M>,
        pending: BTreeMap<(usize, usize), u32>,
    }

    const GONE: usize = DOMID_INVALID as usize;

    impl Model {
        fn lowest_free(&self, d: usize) -> Result<u64, Errno> {
            (1..EVTCHN_PORTS)
                .find(|&p| !self.ports.contains_key(&(d, p)))
                .map(|p| p as u64)
                .ok_or(Errno::ENOSPC)
        }

        fn valid(p: u64) -> Option<usize> {
            (1..EVTCHN_PORTS as u64).contains(&p).then_some(p as usize)
        }

        fn close(&mut self, d: usize, p: u64, offer: usize) -> Result<usize, Errno> {
            let p = Self::valid(p).ok_or(Errno::EINVAL)?;
            match self.ports.remove(&(d, p)) {
                None => Err(Errno::EINVAL),
                Some(M::Bound(r, rp)) => {
                    self.ports.insert((r, rp), M::Offered(offer));
                    Ok(p)
                }
                Some(_) => Ok(p),
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Alloc(usize, usize),
        Bind(usize, usize, u64),
        Virq(usize, u64),
        Send(usize, u64),
        Close(usize, u64),
        Destroy(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        let d = 0..N;
        let p = prop_oneof![1u64..8, 0u64..(EVTCHN_PORTS as u64 + 2), Just(u64::MAX)];
        prop_oneof![
            (d.clone(), d.clone()).prop_map(|(a, b)| Step::Alloc(a, b)),
            (d.clone(), d.clone(), p.clone()).prop_map(|(a, b, p)| Step::Bind(a, b, p)),
            (d.clone(), prop_oneof![Just(3u64), Just(8), 0u64..20])
                .prop_map(|(a, v)| Step::Virq(a, v)),
            (d.clone(), p.clone()).prop_map(|(a, p)| Step::Send(a, p)),
            (d.clone(), p).prop_map(|(a, p)| Step::Close(a, p)),
            d.prop_map(Step::Destroy),
        ]
    }

    /// Every interdomain port's peer names it back; an unbound port is offered to one of the
    /// domains or to nobody; a domain a port names knows the port's table may name it
    /// (`named_by`); the VIRQ index and the ports agree.
    fn check_invariants(e: &EventChannels) -> Result<(), TestCaseError> {
        for d in 0..N {
            for p in 1..EVTCHN_PORTS {
                match e.tables[d].ports[p] {
                    Port::Interdomain(remote, port) => {
                        let back = e.tables[usize::from(remote)].ports[usize::from(port)];
                        prop_assert_eq!(back, Port::Interdomain(d as u16, p as u16));
                        prop_assert!(e.tables[usize::from(remote)].named_by & (1 << d) != 0);
                    }
                    Port::Unbound(remote) => {
                        let r = usize::from(remote);
                        prop_assert!(r == GONE || r < N, "d{d}:{p} offered to {r}");
                        prop_assert!(r == GONE || e.tables[r].named_by & (1 << d) != 0);
                    }
                    Port::Virq(v) => prop_assert_eq!(e.virq_port(d, v.into()), Some(p)),
                    Port::Free => {}
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Random alloc / bind / VIRQ / send / close / destroy sequences across three domains
        /// give the model's results, deliver every send where the model does, and keep the
        /// tables consistent; a destroyed domain comes back empty.
        #[test]
        fn the_tables_follow_the_model(steps in proptest::collection::vec(step(), 1..200)) {
            let mut e = EventChannels::new();
            let mut m = Model::default();
            let mut delivered: BTreeMap<(usize, usize), u32> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Alloc(d, r) => {
                        let want = m.lowest_free(d);
                        if let Ok(p) = want {
                            m.ports.insert((d, p as usize), M::Offered(r));
                        }
                        prop_assert_eq!(e.alloc_unbound(d, r), want);
                    }
                    Step::Bind(d, r, rp) => {
                        let want = match Model::valid(rp).map(|rp| (rp, m.ports.get(&(r, rp)))) {
                            Some((rp, Some(&M::Offered(to)))) if to == d => {
                                m.lowest_free(d).inspect(|&p| {
                                    m.ports.insert((d, p as usize), M::Bound(r, rp));
                                    m.ports.insert((r, rp), M::Bound(d, p as usize));
                                })
                            }
                            _ => Err(Errno::EINVAL),
                        };
                        prop_assert_eq!(e.bind_interdomain(d, r, rp), want);
                    }
                    Step::Virq(d, v) => {
                        let want = if v != 3 && v != 8 {
                            Err(Errno::EINVAL)
                        } else if d != 0 {
                            Err(Errno::EPERM)
                        } else if m.ports.iter().any(|(k, &x)| k.0 == d && x == M::Virq(v as u32)) {
                            Err(Errno::EEXIST)
                        } else {
                            m.lowest_free(d).inspect(|&p| {
                                m.ports.insert((d, p as usize), M::Virq(v as u32));
                            })
                        };
                        prop_assert_eq!(e.bind_virq(d, v), want);
                    }
                    Step::Send(d, p) => {
                        let want = match Model::valid(p).and_then(|p| m.ports.get(&(d, p))) {
                            Some(&M::Bound(r, rp)) => Ok(Some((r, rp))),
                            Some(M::Offered(_)) => Ok(None),
                            _ => Err(Errno::EINVAL),
                        };
                        if let Ok(Some(to)) = want {
                            *m.pending.entry(to).or_default() += 1;
                        }
                        let got = e.send(d, p);
                        if let Ok(Some(to)) = got {
                            *delivered.entry(to).or_default() += 1;
                        }
                        prop_assert_eq!(got, want);
                    }
                    Step::Close(d, p) => {
                        prop_assert_eq!(e.close(d, p), m.close(d, p, d));
                    }
                    Step::Destroy(d) => {
                        e.destroy(d);
                        for p in 1..EVTCHN_PORTS {
                            let _ = m.close(d, p as u64, GONE);
                        }
                        for x in m.ports.values_mut() {
                            if *x == M::Offered(d) {
                                *x = M::Offered(GONE);
                            }
                        }
                        // The successor with the same id starts with nothing.
                        prop_assert!((1..EVTCHN_PORTS as u64).all(|p| e.status(d, p) == Ok(Port::Free)));
                        prop_assert!(e.virq_port(d, VIRQ_DOM_EXC).is_none());
                    }
                }
                check_invariants(&e)?;
                for d in 0..N {
                    for p in 1..EVTCHN_PORTS {
                        let want = match m.ports.get(&(d, p)) {
                            None => Port::Free,
                            Some(&M::Offered(r)) => Port::Unbound(r as u16),
                            Some(&M::Bound(r, rp)) => Port::Interdomain(r as u16, rp as u16),
                            Some(&M::Virq(v)) => Port::Virq(v as u8),
                        };
                        prop_assert_eq!(e.status(d, p as u64), Ok(want), "d{} port {}", d, p);
                    }
                }
            }
            prop_assert_eq!(delivered, m.pending);
        }
    }
}
