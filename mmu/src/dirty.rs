//! Dirty logging per slot, by write protection (KVM without PML): enabling write-protects every
//! leaf of the slot and forces 4 KiB mappings; the first write to a page after each harvest
//! faults, sets its bit and makes the leaf writable again (the fast path).
//!
//! Unlike KVM, a read fault in a logging slot maps the page read-only, so a page is reported
//! only once written (KVM maps it writable and marks it dirty at once).

use crate::host::Host;
use crate::slot::{MAX_LEAF_LEVEL, Slot, lpage_index, pages_per_entry};
use crate::{Error, Mmu, store};

impl Mmu {
    /// Start logging slot `id`: allocate its bitmap (`OutOfMemory`), write-protect every leaf
    /// that maps it (a flush is owed if any was writable). Large leaves stay, read-only, and are
    /// split by the first write. A no-op if the slot already logs.
    pub fn enable_dirty_log<H: Host>(&mut self, host: &mut H, id: usize) -> Result<(), Error> {
        let s = self.slot_by_id(id)?;
        if s.logging() {
            return Ok(());
        }
        let bitmap = store::alloc(host, s.dirty_words())?;
        if let Some(slot) = self.slots.get_mut(id) {
            slot.dirty = bitmap;
        }
        self.write_protect_slot(host, &s);
        Ok(())
    }

    /// Stop logging slot `id` and free its bitmap. 4 KiB leaves inside ranges where a large
    /// page is allowed are zapped, so later faults rebuild large mappings (KVM's
    /// `kvm_mmu_zap_collapsible_sptes`). `InvalidArgument` if it does not log.
    pub fn disable_dirty_log<H: Host>(&mut self, host: &mut H, id: usize) -> Result<(), Error> {
        let s = self.slot_by_id(id)?;
        if !s.logging() {
            return Err(Error::InvalidArgument);
        }
        store::free(host, s.dirty, s.dirty_words());
        if let Some(slot) = self.slots.get_mut(id) {
            slot.dirty = 0;
        }
        if !self.cfg.large_2m {
            return Ok(());
        }
        let span = pages_per_entry(2);
        let n = crate::slot::lpages(s.base, s.npages, 2);
        for k in 0..n {
            let head = ((s.base / span) + k) * span;
            let g = head.max(s.base);
            if host.read_u64(s.count_addr(host, g, 2)) != 0 {
                continue;
            }
            // Only the 4 KiB leaves: a large leaf here is already what faults would build.
            self.zap_leaves(host, head, head + span, 1)?;
        }
        Ok(())
    }

    /// Copy slot `id`'s dirty bitmap into `out` and clear it (bit `i` of word `w` is page
    /// `64 * w + i` of the slot), then write-protect the pages reported so their next write is
    /// seen (a flush is owed if any was writable). `out` needs `ceil(pages / 64)` words; words
    /// beyond are left alone. `InvalidArgument` if the slot does not log or `out` is short.
    pub fn get_dirty_log<H: Host>(
        &mut self,
        host: &mut H,
        id: usize,
        out: &mut [u64],
    ) -> Result<(), Error> {
        let s = self.slot_by_id(id)?;
        if !s.logging() {
            return Err(Error::InvalidArgument);
        }
        let words = s.dirty_words();
        if (out.len() as u64) < words {
            return Err(Error::InvalidArgument);
        }
        for (w, dst) in (0..words).zip(out.iter_mut()) {
            let a = store::addr(host, s.dirty, store::depth(words), w);
            let bits = host.read_u64(a);
            *dst = bits;
            if bits == 0 {
                continue;
            }
            host.write_u64(a, 0);
            let mut rest = bits;
            while rest != 0 {
                let b = u64::from(rest.trailing_zeros());
                rest &= rest - 1;
                let gfn = s.base + w * 64 + b;
                self.write_protect(host, s.rmap_addr(host, gfn, 1));
            }
        }
        Ok(())
    }

    fn slot_by_id(&self, id: usize) -> Result<Slot, Error> {
        let s = *self.slots.get(id).ok_or(Error::InvalidArgument)?;
        if !s.used() {
            return Err(Error::NoSuchSlot);
        }
        Ok(s)
    }

    fn write_protect_slot<H: Host>(&mut self, host: &mut H, s: &Slot) {
        for level in 1..=MAX_LEAF_LEVEL {
            let span = pages_per_entry(level);
            let n = lpage_index(s.end() - 1, s.base, level) + 1;
            for k in 0..n {
                let g = (((s.base / span) + k) * span).max(s.base);
                self.write_protect(host, s.rmap_addr(host, g, level));
            }
        }
    }

    /// Clear write permission of the leaf an rmap word names, if any.
    fn write_protect<H: Host>(&mut self, host: &mut H, rmap: u64) {
        let spte = host.read_u64(rmap);
        if spte == 0 {
            return;
        }
        let e = host.read_u64(spte);
        debug_assert!(self.masks.is_present(e));
        if e & self.masks.writable != 0 {
            host.write_u64(spte, e & !self.masks.writable);
            self.owe_flush(host);
        }
    }
}
