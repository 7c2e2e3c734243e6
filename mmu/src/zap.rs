//! Zapping: one shadow page (`kvm_mmu_prepare_zap_page` + commit), the oldest one (reclaim), a
//! gfn range (`kvm_zap_gfn_range`), everything (`kvm_mmu_zap_all`).
//!
//! Zapped subtrees (spec deviation 4): like KVM, zapping a table **orphans** its child tables
//! rather than freeing them. A child stays allocated, hashed, counted in `n_used` and on the
//! active list with its own entries intact; the next fault below it re-links it from the hash
//! instead of rebuilding it, and reclaim frees it in its turn, oldest first. So every zap frees
//! exactly one page, `n_used` falls by exactly one per zapped non-root page, and reclaim can
//! stop at exactly the page count it needs. Leaves in orphans stay in their gfn's rmap, so
//! range zaps, dirty logging and slot removal still reach them.
//!
//! "Commit" happens at once: a zapped page's frame is returned to the host immediately and a
//! flush is recorded. That is safe on microhv's single physical CPU because no vCPU of the
//! domain runs until the caller has executed the flush (see the crate docs).

use crate::entry::is_leaf;
use crate::host::Host;
use crate::slot::{MAX_LEAF_LEVEL, lpage_index, pages_per_entry};
use crate::sp::NIL;
use crate::{Error, GPA_LIMIT, LEVELS, MAX_SLOTS, Mmu};

impl Mmu {
    /// Zap shadow page `i`: drop its leaves, orphan its children, unlink it from its parent;
    /// free it, or, if vCPUs still hold it as their root, mark it invalid and keep it counted
    /// until the last one releases it.
    pub(crate) fn zap_sp<H: Host>(&mut self, host: &mut H, i: u32) -> Result<(), Error> {
        let sp = self.sp(host, i);
        let span = pages_per_entry(sp.level);
        for k in 0..512u64 {
            let addr = sp.table + k * 8;
            let e = host.read_u64(addr);
            if !self.masks.is_present(e) {
                continue;
            }
            let g = sp.gfn + k * span;
            if is_leaf(e, sp.level) {
                self.drop_leaf(host, addr, e, sp.level, g)?;
            } else {
                let child = self.find_sp(host, g, sp.level - 1);
                if child == NIL || self.parent(host, child) != addr {
                    debug_assert!(false, "table entry without a matching child");
                    return Err(Error::Internal);
                }
                self.set_parent(host, child, 0);
                self.orphans += 1;
                host.write_u64(addr, 0);
                self.owe_flush(host);
            }
        }
        let parent = self.parent(host, i);
        if parent != 0 {
            host.write_u64(parent, 0);
            self.set_parent(host, i, 0);
            self.owe_flush(host);
        } else if sp.level < LEVELS {
            // An orphan, freed below (only roots are kept when zapped).
            self.orphans -= 1;
        }
        self.stats.pages_zapped += 1;
        if sp.root_count == 0 {
            return self.free_sp(host, i);
        }
        if !sp.invalid {
            self.set_invalid(host, i);
            self.lru_move_to_head(host, i);
            for (v, r) in self.vcpu_root.iter().enumerate() {
                if *r == i {
                    self.reload_mask |= 1 << v;
                }
            }
        }
        Ok(())
    }

    /// Zap the oldest page not pinned as a root (`kvm_mmu_zap_oldest_mmu_pages` of later
    /// kernels, spec H2). `false` if there is none.
    pub(crate) fn zap_oldest<H: Host>(&mut self, host: &mut H) -> Result<bool, Error> {
        let mut i = self.lru_tail;
        let mut guard = self.hdr_total;
        while i != NIL && guard > 0 {
            if self.sp(host, i).root_count == 0 {
                self.zap_sp(host, i)?;
                self.stats.reclaims += 1;
                return Ok(true);
            }
            i = self.lru_links(host, i).0;
            guard -= 1;
        }
        Ok(false)
    }

    /// Zap every shadow page, oldest first. Roots still held become invalid (and empty): their
    /// vCPUs see [`Mmu::needs_reload`] and get `Retry` from faults until they reload.
    pub fn zap_all<H: Host>(&mut self, host: &mut H) -> Result<(), Error> {
        let mut i = self.lru_tail;
        let mut guard = self.hdr_total;
        while i != NIL && guard > 0 {
            let prev = self.lru_links(host, i).0;
            if !self.sp(host, i).invalid {
                self.zap_sp(host, i)?;
            }
            i = prev;
            guard -= 1;
        }
        Ok(())
    }

    /// Zap the table of `level` (1..=4) whose range holds `gpa`, if there is one: KVM's
    /// `kvm_mmu_prepare_zap_page` on a single shadow page. Returns whether a table was zapped.
    pub fn zap_table<H: Host>(
        &mut self,
        host: &mut H,
        gpa: u64,
        level: u32,
    ) -> Result<bool, Error> {
        if gpa >= GPA_LIMIT || !(1..=crate::LEVELS).contains(&level) {
            return Err(Error::InvalidArgument);
        }
        let gfn = (gpa >> 12) & !(pages_per_entry(level + 1) - 1);
        let i = self.find_sp(host, gfn, level);
        if i == NIL {
            return Ok(false);
        }
        self.zap_sp(host, i)?;
        Ok(true)
    }

    /// Remove every leaf mapping a page of `[gpa, gpa + size)` at any level (a large leaf that
    /// overlaps the range goes entirely). Tables stay. `gpa` and `size` must be 4 KiB-aligned.
    pub fn zap_gfn_range<H: Host>(
        &mut self,
        host: &mut H,
        gpa: u64,
        size: u64,
    ) -> Result<(), Error> {
        if gpa & 0xfff != 0 || size & 0xfff != 0 {
            return Err(Error::InvalidArgument);
        }
        let end = gpa.checked_add(size).ok_or(Error::InvalidArgument)?;
        self.zap_gfns(host, gpa >> 12, end >> 12)
    }

    /// Drop the leaves of `[start, end)` found through the rmaps.
    pub(crate) fn zap_gfns<H: Host>(
        &mut self,
        host: &mut H,
        start: u64,
        end: u64,
    ) -> Result<(), Error> {
        self.zap_leaves(host, start, end, MAX_LEAF_LEVEL)
    }

    /// Drop the leaves of `[start, end)` at levels `1..=max_level`.
    pub(crate) fn zap_leaves<H: Host>(
        &mut self,
        host: &mut H,
        start: u64,
        end: u64,
        max_level: u32,
    ) -> Result<(), Error> {
        for si in 0..MAX_SLOTS {
            let Some(s) = self.slots.get(si).copied() else {
                break;
            };
            if !s.used() {
                continue;
            }
            let lo = start.max(s.base);
            let hi = end.min(s.end());
            if lo >= hi {
                continue;
            }
            for level in 1..=max_level {
                let first = lpage_index(lo, s.base, level);
                let last = lpage_index(hi - 1, s.base, level);
                let span = pages_per_entry(level);
                for k in first..=last {
                    // Any gfn of the k-th large page that lies in the slot names its rmap.
                    let g = (((s.base / span) + k) * span).max(s.base);
                    let a = s.rmap_addr(host, g, level);
                    let spte = host.read_u64(a);
                    if spte == 0 {
                        continue;
                    }
                    debug_assert!(is_leaf(host.read_u64(spte), level));
                    host.write_u64(spte, 0);
                    host.write_u64(a, 0);
                    self.stats.leaves_zapped += 1;
                    self.owe_flush(host);
                }
            }
        }
        Ok(())
    }
}
