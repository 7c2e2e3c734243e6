//! Grant-table hypercalls, mappings and frame ownership (#15). The tables and their rules are
//! `crate::grant`'s; here the domains and pages they name are checked, a mapping becomes a
//! 4 KiB memory slot of the grantee's MMU (read-only when the grant or the map asks for it, so
//! EPT / NPT enforce it: a write faults as `FaultOutcome::ReadOnly` and the grantee is stopped,
//! as for dom0's boot-module windows), and frames are given back only when no mapping names
//! them.
//!
//! TLB: removing a slot zaps its leaf and leaves a flush owed in the grantee's MMU, which the
//! run loop executes before any vCPU of the grantee enters again (`prepare_entry`; the flush is
//! domain-wide on both backends). Only the grantee's own `GrantUnmap` or its destruction remove
//! a mapping (a revoke of a mapped grant is `EBUSY`), so no other domain's translations are
//! ever zapped from here, and a frame an unmap frees cannot be reached through a stale
//! translation: the grantee does not run between the free and its flush (one CPU).

use super::*;
use crate::grant::{GRANT_MAPS, Grant, Map, gref, readonly};
use crate::hypercall::R;
use abi::hypercall::{GRANT_WINDOW_BYTES, GRANT_WINDOW_GPA};

const _: () = assert!(GRANT_WINDOW_GPA >= MAX_DOM0_MEM, "no RAM in the grant window");

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    /// `GrantSet`: `gpa` must be a page of the caller's RAM (not a boot-module window or a
    /// grant mapping: what a domain maps it cannot grant on).
    pub(crate) fn grant_set(&mut self, d: usize, r: u64, peer: u64, gpa: u64, flags: u64) -> R {
        let peer = self.target(peer)?;
        let (r, readonly) = (gref(r)?, readonly(flags)?);
        if !gpa.is_multiple_of(FRAME_SIZE) {
            return Err(Errno::EINVAL);
        }
        self.guest_hpa(d, gpa, FRAME_SIZE, true).ok_or(Errno::EFAULT)?;
        self.grants.set(d, r, Grant { peer: peer as u16, gpa, readonly })
    }

    /// `GrantMap`: grant `r` of `granter`, offered to the caller and not mapped yet, at the
    /// page `gpa` of the caller's grant window, in a free MMU slot. A read-only grant must be
    /// mapped read-only (`EPERM` otherwise, as Xen): a writable mapping that silently was not
    /// would crash the grantee at its first write, and the grantee may be dom0.
    pub(crate) fn grant_map(&mut self, d: usize, a: [u64; 5]) -> R {
        let [granter, r, gpa, flags, _] = a;
        let g = self.target(granter)?;
        let (r, ro) = (gref(r)?, readonly(flags)?);
        let window = GRANT_WINDOW_GPA..GRANT_WINDOW_GPA + GRANT_WINDOW_BYTES;
        if !gpa.is_multiple_of(FRAME_SIZE) || !window.contains(&gpa) {
            return Err(Errno::EINVAL);
        }
        let grant = self.grants.offered(g, r, d)?;
        if grant.readonly && !ro {
            return Err(Errno::EPERM);
        }
        if self.grants.mapper(g, r).is_some() {
            return Err(Errno::EEXIST);
        }
        // The granter's RAM may have shrunk since it granted the page.
        let hpa = self.guest_hpa(g, grant.gpa, FRAME_SIZE, true).ok_or(Errno::EFAULT)?;
        let i = (0..GRANT_MAPS).find(|&i| self.domains[d].mmu.slot(MODULE_SLOT_BASE + i).is_none());
        let i = i.ok_or(Errno::ENOSPC)?;
        let flags = if ro { mmu::SLOT_READ_ONLY } else { 0 };
        let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        let mmu = &mut self.domains[d].mmu;
        let added = mmu.add_slot(&mut m, MODULE_SLOT_BASE + i, gpa, FRAME_SIZE, hpa, flags);
        // Recorded whenever the MMU installed the slot, so that every slot mapping a frame is
        // known to the unmap and ownership code; one installed by a call that then failed is
        // taken out again (the caller was told there is no mapping).
        if mmu.slot(MODULE_SLOT_BASE + i).is_some() {
            self.grants.tables[d].maps[i] = Map::Grant(g as u8, r as u8);
            if added.is_err() {
                self.unmap(d, i);
            }
        }
        added.map(|()| 0).map_err(mmu_errno)
    }

    /// `GrantUnmap`: the caller's mapping at `gpa`; `EINVAL` if there is none.
    pub(crate) fn grant_unmap(&mut self, d: usize, gpa: u64) -> R {
        let i = (0..GRANT_MAPS).find(|&i| self.map_slot(d, i).is_some_and(|s| s.gpa == gpa));
        self.unmap(d, i.ok_or(Errno::EINVAL)?);
        Ok(0)
    }

    /// `GrantCopyFrom` (`to` false) and `GrantCopyTo`: `len` bytes at `offset` of grant `r` of
    /// `granter`, offered to the caller, from or to the caller's memory (its RAM, when written).
    pub(crate) fn grant_copy(&mut self, d: usize, a: [u64; 5], to: bool) -> R {
        let [granter, r, offset, local, len] = a;
        let g = self.target(granter)?;
        let r = gref(r)?;
        if len > FRAME_SIZE {
            return Err(Errno::E2BIG);
        }
        if offset.checked_add(len).is_none_or(|end| end > FRAME_SIZE) {
            return Err(Errno::EINVAL);
        }
        let grant = self.grants.offered(g, r, d)?;
        if to && grant.readonly {
            return Err(Errno::EPERM);
        }
        self.guest_hpa(g, grant.gpa, FRAME_SIZE, true).ok_or(Errno::EFAULT)?;
        let mut buf = [0u8; FRAME_SIZE as usize];
        let buf = &mut buf[..len as usize];
        let remote = grant.gpa + offset;
        if to {
            self.copy_from_guest(d, local, buf)?;
            self.copy_to_guest(g, remote, buf)?;
        } else {
            self.check_range(d, local, len, true)?;
            self.copy_from_guest(g, remote, buf)?;
            self.copy_to_guest(d, local, buf)?;
        }
        Ok(len)
    }

    /// The slot of domain `d`'s grant mapping `i`, if it maps one.
    fn map_slot(&self, d: usize, i: usize) -> Option<mmu::SlotInfo> {
        let mapped = self.grants.tables[d].maps[i] != Map::Free;
        mapped.then(|| self.domains[d].mmu.slot(MODULE_SLOT_BASE + i)).flatten()
    }

    /// Whether any domain's grant mapping names the frame at `hpa`.
    fn frame_mapped(&self, hpa: u64) -> bool {
        (0..DOMAINS)
            .any(|e| (0..GRANT_MAPS).any(|i| self.map_slot(e, i).is_some_and(|s| s.hpa == hpa)))
    }

    /// Removes domain `d`'s grant mapping `i` (if it has one); an orphaned frame is freed when
    /// this was the last mapping naming it.
    pub(super) fn unmap(&mut self, d: usize, i: usize) {
        let Some(s) = self.map_slot(d, i) else {
            return;
        };
        let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        let mmu = &mut self.domains[d].mmu;
        if let Err(e) = mmu.remove_slot(&mut m, MODULE_SLOT_BASE + i) {
            // Still installed, the slot may map the frame: leaking the frame is safe, handing
            // it out is not. Gone (a later step failed), its leaf was zapped: forget it below.
            log::error!("d{d}: removing grant mapping {i} failed ({e})");
            if mmu.slot(MODULE_SLOT_BASE + i).is_some() {
                return;
            }
        }
        let was = core::mem::replace(&mut self.grants.tables[d].maps[i], Map::Free);
        if was == Map::Orphan && !self.frame_mapped(s.hpa) {
            free_run(&mut self.frames, s.hpa, 1);
        }
    }

    /// Gives back frames `[pa, pa + n pages)` of domain `d`'s RAM, except those a grant mapping
    /// names: each such mapping becomes an owner of its frame (`Map::Orphan`), and the last of
    /// them frees it. Only `d`'s grants can map its RAM, so only the tables of domains it
    /// granted pages to are looked at.
    pub(crate) fn release_ram(&mut self, d: usize, pa: u64, n: u64) {
        let mut held: heapless::Vec<u64, { DOMAINS * GRANT_MAPS }> = heapless::Vec::new();
        let peers = self.grants.tables[d].granted_to;
        let maps = (0..DOMAINS).filter(|e| peers & (1 << e) != 0);
        for (e, i) in maps.flat_map(|e| (0..GRANT_MAPS).map(move |i| (e, i))) {
            if let Some(s) =
                self.map_slot(e, i).filter(|s| (pa..pa + n * FRAME_SIZE).contains(&s.hpa))
            {
                self.grants.tables[e].maps[i] = Map::Orphan;
                let _ = held.push(s.hpa);
            }
        }
        if held.is_empty() {
            return free_run(&mut self.frames, pa, n);
        }
        held.sort_unstable();
        for a in (0..n).map(|f| pa + f * FRAME_SIZE) {
            if held.binary_search(&a).is_err() {
                free_run(&mut self.frames, a, 1);
            }
        }
    }
}
