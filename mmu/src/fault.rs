//! The fault path: `tdp_page_fault` → `fast_page_fault` → `__direct_map` → `mmu_set_spte`.

use crate::entry::{ADDR_MASK, HOST_WRITABLE, LARGE, is_leaf};
use crate::host::Host;
use crate::slot::{Slot, pages_per_entry};
use crate::sp::NIL;
use crate::{
    Access, Error, FaultOutcome, GPA_LIMIT, LEVELS, Mmu, PageSize, RECLAIM_BATCH,
    RECLAIM_MAX_FRACTION, WALK_MAX, store,
};

/// Where a walk stopped: at a non-present entry, or at a leaf.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Walk {
    /// Table holding the entry.
    pub table: u64,
    /// Level of that table.
    pub level: u32,
    /// Address of the entry.
    pub addr: u64,
    /// The entry.
    pub entry: u64,
}

/// Index of `gfn`'s entry in a table of `level`.
#[inline]
pub(crate) const fn index(gfn: u64, level: u32) -> u64 {
    (gfn >> (9 * (level - 1))) & 511
}

impl Mmu {
    #[inline]
    pub(crate) fn walk<H: Host>(&self, host: &H, root_table: u64, gfn: u64) -> Walk {
        let mut table = root_table;
        let mut level = LEVELS;
        loop {
            let addr = table + index(gfn, level) * 8;
            let entry = host.read_u64(addr);
            if level == 1 || !self.masks.is_present(entry) || is_leaf(entry, level) {
                return Walk { table, level, addr, entry };
            }
            table = entry & ADDR_MASK;
            level -= 1;
        }
    }

    /// Handle a second-level fault of `vcpu` at `gpa` (KVM's `tdp_page_fault`).
    ///
    /// The tables are walked first: an access they already allow is `Spurious`, and a write to
    /// a 4 KiB leaf that dirty logging write-protected is fixed in place without a flush (the
    /// fast path). Otherwise the mapping level is chosen from the slot's large-page counts,
    /// room for the whole walk is made under the cap (reclaiming oldest pages first), and the
    /// missing tables and the leaf are built. Requires [`Mmu::topup`] beforehand for the slow
    /// path (`CachesEmpty` otherwise, with nothing changed). `InvalidArgument` if `vcpu` is out
    /// of range or holds no root.
    pub fn page_fault<H: Host>(
        &mut self,
        host: &mut H,
        vcpu: usize,
        gpa: u64,
        access: Access,
    ) -> Result<FaultOutcome, Error> {
        let root = *self.vcpu_root.get(vcpu).ok_or(Error::InvalidArgument)?;
        if root == NIL {
            return Err(Error::InvalidArgument);
        }
        let out = self.fault(host, vcpu, gpa, access)?;
        let s = &mut self.stats;
        match out {
            FaultOutcome::Fixed { .. } => {}
            FaultOutcome::Spurious => s.faults_spurious += 1,
            FaultOutcome::NoSlot => s.faults_no_slot += 1,
            FaultOutcome::ReadOnly => s.faults_read_only += 1,
            FaultOutcome::Retry => s.faults_retry += 1,
        }
        Ok(out)
    }

    fn fault<H: Host>(
        &mut self,
        host: &mut H,
        vcpu: usize,
        gpa: u64,
        access: Access,
    ) -> Result<FaultOutcome, Error> {
        // The vCPU's root is invalid (so not `root_table`) exactly when its reload bit is set.
        if self.reload_mask & (1 << vcpu) != 0 {
            return Ok(FaultOutcome::Retry);
        }
        if gpa >= GPA_LIMIT {
            return Ok(FaultOutcome::NoSlot);
        }
        let gfn = gpa >> 12;
        let Some(slot) = self.slot_of(gfn) else {
            return Ok(FaultOutcome::NoSlot);
        };
        if access.write && !slot.writable() {
            return Ok(FaultOutcome::ReadOnly);
        }

        let w = self.walk(host, self.root_table, gfn);
        if self.masks.is_present(w.entry) {
            if !access.write || self.masks.is_writable(w.entry) {
                return Ok(FaultOutcome::Spurious);
            }
            // Only write protection from dirty logging gets here (read-only slots returned
            // above). Making a 4 KiB leaf writable is more permissive, so no flush; a large
            // leaf goes to the slow path, which splits it so the log stays per 4 KiB page.
            if w.level == 1 && w.entry & HOST_WRITABLE != 0 {
                host.write_u64(w.addr, w.entry | self.masks.writable);
                self.mark_dirty(host, &slot, gfn);
                self.stats.faults_fast += 1;
                return Ok(FaultOutcome::Fixed { size: PageSize::Size4K });
            }
        }

        let level = self.mapping_level(host, &slot, gfn);
        // The walk reached the table the leaf goes in (the common case): nothing to build, no
        // room to make. Otherwise resume from where the walk stopped unless reclaim may have
        // freed part of it, or the walk went below the level being mapped (a table is about to
        // become a large leaf).
        let (table, from) = if w.level == level && !self.masks.is_present(w.entry) {
            (w.table, w.level)
        } else {
            if u64::from(self.cached_sps()) < WALK_MAX {
                return Err(Error::CachesEmpty);
            }
            match self.make_room_for_walk(host, gfn, level, w.level)? {
                None => return Ok(FaultOutcome::Retry),
                Some(zapped) if zapped || w.level < level => (self.root_table, LEVELS),
                Some(_) => (w.table, w.level),
            }
        };
        let writable = slot.writable() && (access.write || !slot.logging());
        self.direct_map(host, table, from, gfn, level, &slot, writable)?;
        self.stats.faults_fixed += 1;
        Ok(FaultOutcome::Fixed { size: PageSize::from_level(level) })
    }

    /// `mapping_level`: 4 KiB while the slot logs dirty pages; otherwise the largest size the
    /// CPU supports whose disallow count is 0 at every level up to it.
    pub(crate) fn mapping_level<H: Host>(&self, host: &H, slot: &Slot, gfn: u64) -> u32 {
        if slot.logging() || !self.cfg.large_2m {
            return 1;
        }
        if host.read_u64(slot.count_addr(host, gfn, 2)) != 0 {
            return 1;
        }
        if !self.cfg.large_1g || host.read_u64(slot.count_addr(host, gfn, 3)) != 0 {
            return 2;
        }
        3
    }

    /// The hard cap (spec deviation 1): before building anything, make sure every table the
    /// walk to `target` may create fits under `n_max`, reclaiming oldest pages first. `stop` is
    /// the level where [`Mmu::walk`] stops now; each level below it down to `target` needs a
    /// table (an upper bound: an orphan found in the hash is re-linked, not allocated).
    /// `Some(zapped)` when there is room, `None` when even reclaiming everything not pinned is
    /// not enough.
    #[inline]
    pub(crate) fn make_room_for_walk<H: Host>(
        &mut self,
        host: &mut H,
        gfn: u64,
        target: u32,
        stop: u32,
    ) -> Result<Option<bool>, Error> {
        let need = u64::from(stop.saturating_sub(target));
        if self.available() >= need {
            return Ok(Some(false));
        }
        self.reclaim_for_walk(host, gfn, target, need)
    }

    /// [`Mmu::make_room_for_walk`] when there is not room already (out of line: rare).
    #[inline(never)]
    fn reclaim_for_walk<H: Host>(
        &mut self,
        host: &mut H,
        gfn: u64,
        target: u32,
        need: u64,
    ) -> Result<Option<bool>, Error> {
        self.reclaim_batch(host, need)?;
        // Reclaim may have zapped tables of this very walk, which raises its need.
        loop {
            let need = self.walk(host, self.root_table, gfn).level.saturating_sub(target);
            if self.available() >= u64::from(need) {
                return Ok(Some(true));
            }
            if !self.zap_oldest(host)? {
                return Ok(None);
            }
        }
    }

    /// `make_mmu_pages_available`'s refill: free up to a batch so the flush this costs is shared
    /// by several faults, but never more than a fraction of a small cap.
    pub(crate) fn reclaim_batch<H: Host>(&mut self, host: &mut H, need: u64) -> Result<(), Error> {
        let want = need.max(RECLAIM_BATCH.min(self.n_max / RECLAIM_MAX_FRACTION));
        while self.available() < want {
            if !self.zap_oldest(host)? {
                break;
            }
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn available(&self) -> u64 {
        self.n_max.saturating_sub(self.n_used)
    }

    /// `__direct_map` from the table at `table` (of `level`) down to `target`.
    #[allow(clippy::too_many_arguments)]
    fn direct_map<H: Host>(
        &mut self,
        host: &mut H,
        mut table: u64,
        mut level: u32,
        gfn: u64,
        target: u32,
        slot: &Slot,
        writable: bool,
    ) -> Result<(), Error> {
        while level > target {
            let addr = table + index(gfn, level) * 8;
            let mut e = host.read_u64(addr);
            if self.masks.is_present(e) && is_leaf(e, level) {
                // drop_large_spte: a smaller mapping is wanted under a large leaf.
                let head = gfn & !(pages_per_entry(level) - 1);
                self.drop_leaf(host, addr, e, level, head)?;
                e = 0;
            }
            if !self.masks.is_present(e) {
                let head = gfn & !(pages_per_entry(level) - 1);
                let child =
                    if self.orphans == 0 { NIL } else { self.find_sp(host, head, level - 1) };
                let child_table = if child == NIL {
                    self.alloc_sp(host, head, level - 1, addr)?.1
                } else if self.parent(host, child) != 0 {
                    // The only entry that may point at it is this one, and it is empty.
                    debug_assert!(false, "orphan candidate {child} has a parent");
                    return Err(Error::Internal);
                } else {
                    self.set_parent(host, child, addr);
                    self.orphans -= 1;
                    self.sp_table(host, child)
                };
                e = child_table | self.masks.table;
                host.write_u64(addr, e);
            }
            table = e & ADDR_MASK;
            level -= 1;
        }
        self.install_leaf(host, table + index(gfn, target) * 8, target, gfn, slot, writable)
    }

    /// `mmu_set_spte` for a direct leaf.
    fn install_leaf<H: Host>(
        &mut self,
        host: &mut H,
        addr: u64,
        level: u32,
        gfn: u64,
        slot: &Slot,
        writable: bool,
    ) -> Result<(), Error> {
        let span = pages_per_entry(level);
        let head = gfn & !(span - 1);
        if !slot.contains(head) || !slot.contains(head + span - 1) {
            debug_assert!(false, "leaf at level {level} would leave its slot");
            return Err(Error::Internal);
        }
        let mut new = self.masks.leaf | (slot.pfn_of(head) << 12);
        host.before_map(slot.pfn_of(head) << 12, span << 12);
        if level > 1 {
            new |= LARGE;
        }
        if slot.writable() {
            new |= HOST_WRITABLE;
        }
        if writable {
            new |= self.masks.writable;
        }
        let old = host.read_u64(addr);
        let mut rmapped = false;
        if self.masks.is_present(old) {
            if !is_leaf(old, level) {
                // A table becomes a large leaf: its subtree is orphaned, as in KVM.
                let child = self.find_sp(host, head, level - 1);
                if child == NIL || self.parent(host, child) != addr {
                    debug_assert!(false, "table entry without a matching child");
                    return Err(Error::Internal);
                }
                self.set_parent(host, child, 0);
                self.orphans += 1;
                self.owe_flush(host);
            } else {
                rmapped = true;
                if old & ADDR_MASK != new & ADDR_MASK
                    || (self.masks.is_writable(old) && !self.masks.is_writable(new))
                {
                    self.owe_flush(host);
                }
            }
        }
        host.write_u64(addr, new);
        if !rmapped {
            self.rmap_set(host, slot, head, level, addr)?;
        }
        if writable {
            self.mark_dirty(host, slot, gfn);
        }
        match level {
            2 => self.stats.large_2m_mapped += 1,
            3 => self.stats.large_1g_mapped += 1,
            _ => {}
        }
        Ok(())
    }

    /// Remove a present leaf: rmap, entry, flush.
    pub(crate) fn drop_leaf<H: Host>(
        &mut self,
        host: &mut H,
        addr: u64,
        e: u64,
        level: u32,
        head: u64,
    ) -> Result<(), Error> {
        debug_assert!(self.masks.is_present(e) && is_leaf(e, level));
        self.rmap_clear(host, head, level, addr)?;
        host.write_u64(addr, 0);
        self.stats.leaves_zapped += 1;
        self.owe_flush(host);
        Ok(())
    }

    pub(crate) fn rmap_set<H: Host>(
        &self,
        host: &mut H,
        slot: &Slot,
        head: u64,
        level: u32,
        spte: u64,
    ) -> Result<(), Error> {
        let a = slot.rmap_addr(host, head, level);
        let cur = host.read_u64(a);
        if cur != 0 && cur != spte {
            debug_assert!(false, "second leaf for gfn {head:#x} level {level}");
            return Err(Error::Internal);
        }
        host.write_u64(a, spte);
        Ok(())
    }

    /// Forget the rmap of the leaf at `spte` mapping (`head`, `level`).
    pub(crate) fn rmap_clear<H: Host>(
        &self,
        host: &mut H,
        head: u64,
        level: u32,
        spte: u64,
    ) -> Result<(), Error> {
        let Some(slot) = self.find_slot(head) else {
            debug_assert!(false, "leaf for gfn {head:#x} outside every slot");
            return Err(Error::Internal);
        };
        let a = slot.rmap_addr(host, head, level);
        if host.read_u64(a) != spte {
            debug_assert!(false, "rmap of gfn {head:#x} level {level} does not hold {spte:#x}");
            return Err(Error::Internal);
        }
        host.write_u64(a, 0);
        Ok(())
    }

    /// Set `gfn`'s bit in the slot's dirty bitmap, if it logs.
    #[inline(always)]
    pub(crate) fn mark_dirty<H: Host>(&self, host: &mut H, slot: &Slot, gfn: u64) {
        if !slot.logging() {
            return;
        }
        let off = gfn - slot.base;
        let a = store::addr(host, slot.dirty, store::depth(slot.dirty_words()), off / 64);
        let w = host.read_u64(a);
        host.write_u64(a, w | (1 << (off % 64)));
    }
}
