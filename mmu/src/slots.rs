//! Slot management (`__kvm_set_memory_region` reduced to add / remove / move) and the
//! slot-only translation used to check hypercall arguments.

use crate::host::Host;
use crate::slot::{Slot, alloc_meta};
use crate::{Error, GPA_LIMIT, HPA_LIMIT, MAX_SLOT_PAGES, Mmu, SLOT_FLAGS_VALID, SlotInfo, store};

impl Mmu {
    /// Add slot `id` (`0..MAX_SLOTS`) mapping guest `[gpa, gpa + size)` to the physically
    /// contiguous host `[hpa, hpa + size)`, with `SLOT_*` `flags`. Its metadata (8 bytes per
    /// page, plus a little for large pages) is allocated now, so faults never allocate it.
    /// Checks, in order: `InvalidArgument` for the id, unknown flags, a zero or unaligned size,
    /// unaligned addresses or an overflowing end; `TooBig` beyond `GPA_LIMIT`, `HPA_LIMIT` or
    /// `MAX_SLOT_PAGES`; `Exists` if the id is used or the range overlaps a slot;
    /// `OutOfMemory`. With the default cap, the cap grows with the guest.
    pub fn add_slot<H: Host>(
        &mut self,
        host: &mut H,
        id: usize,
        gpa: u64,
        size: u64,
        hpa: u64,
        flags: u32,
    ) -> Result<(), Error> {
        let cur = *self.slots.get(id).ok_or(Error::InvalidArgument)?;
        if flags & !SLOT_FLAGS_VALID != 0 {
            return Err(Error::InvalidArgument);
        }
        let npages = check_range(gpa, size, hpa)?;
        if cur.used() {
            return Err(Error::Exists);
        }
        let base = gpa >> 12;
        if self.overlaps(base, npages, None) {
            return Err(Error::Exists);
        }
        let pfn = hpa >> 12;
        let new = alloc_meta(host, base, npages, pfn)?;
        if let Some(s) = self.slots.get_mut(id) {
            *s = Slot { flags, ..new };
        }
        self.total_pages += npages;
        self.update_goal(host)
    }

    /// Remove slot `id`: every leaf mapping its pages is zapped (tables stay, reclaimable), its
    /// metadata is freed, and with the default cap the cap shrinks, zapping oldest pages if
    /// needed. `InvalidArgument` for an out-of-range id, `NoSuchSlot` for an unused one.
    /// The host range may be reused once the flush this owes has been executed.
    pub fn remove_slot<H: Host>(&mut self, host: &mut H, id: usize) -> Result<(), Error> {
        let s = *self.slots.get(id).ok_or(Error::InvalidArgument)?;
        if !s.used() {
            return Err(Error::NoSuchSlot);
        }
        self.zap_gfns(host, s.base, s.end())?;
        store::free(host, s.meta, s.meta_words());
        store::free(host, s.dirty, s.dirty_words());
        if let Some(s) = self.slots.get_mut(id) {
            *s = Slot::EMPTY;
        }
        self.total_pages -= s.npages;
        self.update_goal(host)
    }

    /// Move slot `id` to guest address `gpa` (same size, host range and flags). Leaves of the
    /// old range are zapped, and the large-page metadata is recomputed for the new base (KVM
    /// 4.19/5.4 kept the old one, spec H1). A dirty log, if on, keeps its bits (they are
    /// slot-relative). Errors as for `add_slot`; on error nothing changes. Like a removal, the
    /// old translations are gone only once the flush this owes has been executed.
    pub fn move_slot<H: Host>(&mut self, host: &mut H, id: usize, gpa: u64) -> Result<(), Error> {
        let s = *self.slots.get(id).ok_or(Error::InvalidArgument)?;
        if !s.used() {
            return Err(Error::NoSuchSlot);
        }
        check_range(gpa, s.npages << 12, s.pfn << 12)?;
        let base = gpa >> 12;
        if base == s.base {
            return Ok(());
        }
        if self.overlaps(base, s.npages, Some(id)) {
            return Err(Error::Exists);
        }
        let new = alloc_meta(host, base, s.npages, s.pfn)?;
        self.zap_gfns(host, s.base, s.end())?;
        store::free(host, s.meta, s.meta_words());
        if let Some(slot) = self.slots.get_mut(id) {
            *slot = Slot { flags: s.flags, dirty: s.dirty, ..new };
        }
        Ok(())
    }

    /// Slot `id`, if it exists.
    pub fn slot(&self, id: usize) -> Option<SlotInfo> {
        let s = self.slots.get(id)?;
        s.used().then_some(SlotInfo {
            gpa: s.base << 12,
            size: s.npages << 12,
            hpa: s.pfn << 12,
            flags: s.flags,
            dirty_logging: s.logging(),
        })
    }

    /// Guest pages in all slots.
    pub const fn total_pages(&self) -> u64 {
        self.total_pages
    }

    /// The host-physical address of `gpa` according to the slots alone (no table walk):
    /// `None` if no slot holds it.
    pub fn translate(&self, gpa: u64) -> Option<u64> {
        if gpa >= GPA_LIMIT {
            return None;
        }
        let s = self.find_slot(gpa >> 12)?;
        Some((s.pfn << 12) + (gpa - (s.base << 12)))
    }

    /// The host-physical address of `gpa` if all of `[gpa, gpa + len)` lies in one slot (so the
    /// host range is contiguous), checked for overflow: how hypercall arguments are validated.
    /// `len == 0` checks `gpa` alone.
    pub fn translate_range(&self, gpa: u64, len: u64) -> Option<u64> {
        let last = gpa.checked_add(len.saturating_sub(1))?;
        if last >= GPA_LIMIT {
            return None;
        }
        let s = self.find_slot(gpa >> 12)?;
        if !s.contains(last >> 12) {
            return None;
        }
        Some((s.pfn << 12) + (gpa - (s.base << 12)))
    }

    fn overlaps(&self, base: u64, npages: u64, except: Option<usize>) -> bool {
        let end = base + npages;
        self.slots
            .iter()
            .enumerate()
            .any(|(i, s)| Some(i) != except && s.used() && base < s.end() && s.base < end)
    }
}

/// Validate a slot's placement; the page count on success.
fn check_range(gpa: u64, size: u64, hpa: u64) -> Result<u64, Error> {
    if size == 0 || (gpa | size | hpa) & 0xfff != 0 {
        return Err(Error::InvalidArgument);
    }
    let end = gpa.checked_add(size).ok_or(Error::InvalidArgument)?;
    let hend = hpa.checked_add(size).ok_or(Error::InvalidArgument)?;
    if end > GPA_LIMIT || hend > HPA_LIMIT {
        return Err(Error::TooBig);
    }
    let npages = size >> 12;
    if npages > MAX_SLOT_PAGES {
        return Err(Error::TooBig);
    }
    Ok(npages)
}
