//! Grant tables (#15): every domain's grant entries and grant mappings, and the rules over them.
//!
//! A domain (the granter) lets one named peer map or copy one page of its RAM through an entry
//! of its own table, which lives here, in ring 0, and is set and revoked by hypercalls: simpler
//! and safer than Xen's grant-table page shared with the guest, where microhv would have to
//! re-read and re-validate entries the guest may change under it at any moment (Xen's
//! `GTF_*` flag dance), and where a revoke races a map.
//!
//! The peer (the grantee) maps a grant into its grant window; each mapping is one of its MMU
//! memory slots (`hv/grant.rs`), and [`Table::maps`] entry `i` describes slot
//! `MODULE_SLOT_BASE + i`. A mapping names its grant (`Map::Grant`) while the granter still has
//! the frame in its RAM. When the granter gives the frame up while it is mapped (the granter is
//! destroyed, or its RAM shrinks), the mapping becomes `Map::Orphan`: it owns the frame, which
//! is freed when the last mapping naming it goes. A frame's reference count is therefore the
//! number of mappings naming it, counted by a scan of these bounded tables when it matters
//! rather than kept in a counter that could drift.
//!
//! Rules kept here: a grant names one peer and is mapped at most once at a time (the peer's
//! second `GrantMap` is `EEXIST`); an entry in use cannot be set again (`EEXIST`: revoke
//! first), and a mapped one cannot be revoked (`EBUSY`), so a mapped grant never changes.
//! Hence a `Map::Grant(g, r)` can only be in the table of `g`'s entry `r`'s peer, which is
//! where [`Grants::mapper`] looks.

use crate::domain::MAX_RAM_SLOTS;
use crate::hv::DOMAINS;
use abi::Errno;
use abi::hypercall::{DOMID_INVALID, GRANT_READONLY};
use abi::types::{GRANT_STATE_FREE, GRANT_STATE_GRANTED, GrantStatus};
use zerocopy::FromZeros;
const _: () = assert!(GRANT_STATE_FREE == 0, "a free entry's status is all zeros");

/// Entries of each domain's grant table, as an array length.
pub const GRANT_ENTRIES: usize = abi::hypercall::GRANT_ENTRIES as usize;
/// Grant mappings a domain may hold, as an array length: one MMU slot each.
pub const GRANT_MAPS: usize = abi::hypercall::GRANT_MAPS as usize;
const _: () = assert!(MAX_RAM_SLOTS + GRANT_MAPS == mmu::MAX_SLOTS);
const _: () = assert!(GRANT_ENTRIES <= 256 && DOMAINS <= 256, "`Map` keeps both in a byte");

/// One entry of a granter's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The domain that may map or copy the page; `DOMID_INVALID` once it was destroyed (its
    /// successor under the same id must not inherit the grant).
    pub peer: u16,
    /// The page, guest-physical in the granter's RAM; translated at each use, so a grant never
    /// pins a frame it is not mapped through.
    pub gpa: u64,
    /// The peer may only read it.
    pub readonly: bool,
}

/// What one of a domain's grant-mapping slots holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    /// Nothing (the MMU slot is free, or a boot-module window of dom0's).
    Free,
    /// Grant `ref` (second) of domain `granter` (first), whose RAM holds the frame.
    Grant(u8, u8),
    /// The granter gave the frame up while it was mapped here: the mappings naming it own it.
    Orphan,
}

/// One domain's grant entries and mappings.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// Entry `r` is grant reference `r`.
    pub entries: [Option<Grant>; GRANT_ENTRIES],
    /// Entry `i` describes MMU slot `MODULE_SLOT_BASE + i`.
    pub maps: [Map; GRANT_MAPS],
    /// Domains (a bit each) this one has granted a page to since it was created: a superset of
    /// its entries' peers, hence of the tables that may map its frames, so that destroying a
    /// domain (or shrinking it) looks only at those (a domain destroy is a budgeted figure).
    pub granted_to: u32,
}
const _: () = assert!(DOMAINS <= 32, "`Table::granted_to` has a bit per domain");

impl Table {
    const EMPTY: Self =
        Self { entries: [None; GRANT_ENTRIES], maps: [Map::Free; GRANT_MAPS], granted_to: 0 };
}

/// A grant reference from a hypercall argument: `0..GRANT_ENTRIES`, else `EINVAL`.
pub fn gref(r: u64) -> Result<usize, Errno> {
    usize::try_from(r).ok().filter(|&r| r < GRANT_ENTRIES).ok_or(Errno::EINVAL)
}

/// A `GRANT_*` flags argument: `GRANT_READONLY` or nothing, else `EINVAL`.
pub fn readonly(flags: u64) -> Result<bool, Errno> {
    if flags & !GRANT_READONLY != 0 { Err(Errno::EINVAL) } else { Ok(flags != 0) }
}

/// Every domain's grant table.
pub struct Grants {
    /// Entry `d` is domain id `d`'s.
    pub tables: [Table; DOMAINS],
}

impl Grants {
    /// No grants anywhere.
    pub(crate) const fn new() -> Self {
        Self { tables: [Table::EMPTY; DOMAINS] }
    }

    /// `GrantSet`: entry `r` of `d`, which must be free (`EEXIST`); `grant.peer` is a domain.
    pub fn set(&mut self, d: usize, r: usize, grant: Grant) -> Result<u64, Errno> {
        let t = &mut self.tables[d];
        if t.entries[r].is_some() {
            return Err(Errno::EEXIST);
        }
        t.entries[r] = Some(grant);
        t.granted_to |= 1 << grant.peer;
        Ok(0)
    }

    /// `GrantRevoke`: entry `r` of `d` must be in use (`EINVAL`) and not mapped (`EBUSY`).
    pub fn revoke(&mut self, d: usize, r: u64) -> Result<u64, Errno> {
        let r = gref(r)?;
        if self.tables[d].entries[r].is_none() {
            return Err(Errno::EINVAL);
        }
        if self.mapper(d, r).is_some() {
            return Err(Errno::EBUSY);
        }
        self.tables[d].entries[r] = None;
        Ok(0)
    }

    /// Entry `r` of `granter`, if it is granted to `to`: `EINVAL` if it is free, `EPERM` if it
    /// is granted to another domain.
    pub fn offered(&self, granter: usize, r: usize, to: usize) -> Result<Grant, Errno> {
        match self.tables[granter].entries[r] {
            Some(g) if usize::from(g.peer) == to => Ok(g),
            Some(_) => Err(Errno::EPERM),
            None => Err(Errno::EINVAL),
        }
    }

    /// The grantee and mapping index through which grant `r` of `granter` is mapped, if it is.
    pub fn mapper(&self, granter: usize, r: usize) -> Option<(usize, usize)> {
        let peer = usize::from(self.tables[granter].entries[r]?.peer);
        let want = Map::Grant(granter as u8, r as u8);
        let i = self.tables.get(peer)?.maps.iter().position(|&m| m == want)?;
        Some((peer, i))
    }

    /// `GrantQuery`: entry `r` of `d` as the ABI reports it.
    pub fn status(&self, d: usize, r: u64) -> Result<GrantStatus, Errno> {
        let r = gref(r)?;
        let Some(g) = self.tables[d].entries[r] else {
            return Ok(GrantStatus::new_zeroed());
        };
        Ok(GrantStatus {
            state: GRANT_STATE_GRANTED,
            peer: g.peer.into(),
            flags: if g.readonly { GRANT_READONLY as u32 } else { 0 },
            mapped: self.mapper(d, r).is_some().into(),
            gpa: g.gpa,
        })
    }

    /// Domain `d` is gone: its entries are freed and every entry of another domain that
    /// granted it a page now names `DOMID_INVALID`, which no domain is. Its mappings must have
    /// been removed and others' mappings of its frames orphaned first (`hv/grant.rs`).
    pub fn forget(&mut self, d: usize) {
        debug_assert!(self.tables[d].maps.iter().all(|&m| m == Map::Free));
        self.tables[d] = Table::EMPTY;
        for t in self.tables.iter_mut().filter(|t| t.granted_to & (1 << d) != 0) {
            for g in t.entries.iter_mut().flatten().filter(|g| usize::from(g.peer) == d) {
                g.peer = DOMID_INVALID as u16;
            }
        }
    }
}
