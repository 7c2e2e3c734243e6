//! Shadow pages (`kvm_mmu_page`): headers in a slab of frames, the hash by (gfn, level), the
//! active list in creation order, and the object caches that feed them.
//!
//! A header is 32 bytes, four words:
//! - w0: table frame | level (bits 0..2) | invalid (bit 3) | in use (bit 4) | root count (52..63)
//! - w1: gfn (bits 0..39) | next in hash bucket or free list, as index + 1 (bits 40..63)
//! - w2: address of the one parent entry pointing here, or 0 (roots, orphans)
//! - w3: previous (low half) and next (high half) on the active list, as index + 1
//!
//! The role of a TDP page reduces to its level (direct, ACC_ALL, no SMM or guest mode in this
//! project), and a non-root TDP page has at most one parent entry (the unique valid table one
//! level up), so KVM's `parent_ptes` list is one word here.

use crate::entry::ADDR_MASK;
use crate::host::Host;
use crate::{Error, Mmu, frame_ok};

/// "No shadow page".
pub(crate) const NIL: u32 = u32::MAX;

pub(crate) const HDR_BYTES: u64 = 32;
pub(crate) const HDRS_PER_FRAME: u32 = 128;
pub(crate) const HDR_FRAMES_PER_DIR: u32 = 512;
pub(crate) const HDRS_PER_DIR: u32 = HDRS_PER_FRAME * HDR_FRAMES_PER_DIR;
/// Directory frames the `Mmu` can point to: enough headers for `MAX_MMU_PAGES` plus one
/// pinned root per vCPU, which is the most `n_used` can reach.
pub(crate) const HDR_DIR_LEN: usize =
    (crate::MAX_MMU_PAGES as usize + crate::MAX_VCPUS).div_ceil(HDRS_PER_DIR as usize);
pub(crate) const HDR_CAPACITY: u32 = HDRS_PER_DIR * HDR_DIR_LEN as u32;

pub(crate) const HASH_FRAMES: usize = crate::HASH_BUCKETS / 1024;

const W0_LEVEL: u64 = 0x7;
const W0_INVALID: u64 = 1 << 3;
const W0_IN_USE: u64 = 1 << 4;
const W0_COUNT_SHIFT: u32 = 52;
const W1_GFN: u64 = (1 << 40) - 1;
const W1_NEXT_SHIFT: u32 = 40;

#[inline]
const fn pack(i: u32) -> u64 {
    if i == NIL { 0 } else { i as u64 + 1 }
}

#[inline]
const fn unpack(v: u64) -> u32 {
    if v == 0 { NIL } else { (v - 1) as u32 }
}

/// A decoded header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sp {
    pub table: u64,
    pub level: u32,
    pub invalid: bool,
    pub in_use: bool,
    pub root_count: u32,
    pub gfn: u64,
}

#[inline]
pub(crate) const fn hash(gfn: u64, level: u32) -> usize {
    let k = (gfn ^ ((level as u64) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (k >> (64 - crate::HASH_SHIFT)) as usize
}

impl Mmu {
    /// Address of header `i`; `i` must be below `hdr_total`.
    #[inline]
    pub(crate) fn hdr<H: Host>(&self, host: &H, i: u32) -> u64 {
        debug_assert!(i < self.hdr_total);
        // `min` rather than `%` keeps an index past the end from panicking at less cost.
        let dir = self.hdr_dir[((i / HDRS_PER_DIR) as usize).min(HDR_DIR_LEN - 1)];
        let frame = host.read_u64(dir + u64::from((i / HDRS_PER_FRAME) % HDR_FRAMES_PER_DIR) * 8);
        frame + u64::from(i % HDRS_PER_FRAME) * HDR_BYTES
    }

    #[inline]
    pub(crate) fn sp<H: Host>(&self, host: &H, i: u32) -> Sp {
        let h = self.hdr(host, i);
        let w0 = host.read_u64(h);
        let w1 = host.read_u64(h + 8);
        Sp {
            table: w0 & ADDR_MASK,
            level: (w0 & W0_LEVEL) as u32,
            invalid: w0 & W0_INVALID != 0,
            in_use: w0 & W0_IN_USE != 0,
            root_count: (w0 >> W0_COUNT_SHIFT) as u32,
            gfn: w1 & W1_GFN,
        }
    }

    #[inline]
    pub(crate) fn sp_table<H: Host>(&self, host: &H, i: u32) -> u64 {
        host.read_u64(self.hdr(host, i)) & ADDR_MASK
    }

    pub(crate) fn set_root_count<H: Host>(&self, host: &mut H, i: u32, count: u32) {
        let h = self.hdr(host, i);
        let w0 = host.read_u64(h);
        let w0 = (w0 & !(u64::MAX << W0_COUNT_SHIFT)) | (u64::from(count) << W0_COUNT_SHIFT);
        host.write_u64(h, w0);
    }

    pub(crate) fn set_invalid<H: Host>(&self, host: &mut H, i: u32) {
        let h = self.hdr(host, i);
        let w0 = host.read_u64(h);
        host.write_u64(h, w0 | W0_INVALID);
    }

    #[inline]
    pub(crate) fn parent<H: Host>(&self, host: &H, i: u32) -> u64 {
        host.read_u64(self.hdr(host, i) + 16)
    }

    #[inline]
    pub(crate) fn set_parent<H: Host>(&self, host: &mut H, i: u32, spte: u64) {
        let h = self.hdr(host, i);
        host.write_u64(h + 16, spte);
    }

    fn next_in_chain<H: Host>(&self, host: &H, i: u32) -> u32 {
        unpack(host.read_u64(self.hdr(host, i) + 8) >> W1_NEXT_SHIFT)
    }

    fn set_next_in_chain<H: Host>(&self, host: &mut H, i: u32, next: u32) {
        let h = self.hdr(host, i);
        let w1 = host.read_u64(h + 8) & W1_GFN;
        host.write_u64(h + 8, w1 | (pack(next) << W1_NEXT_SHIFT));
    }

    /// (previous, next) on the active list.
    pub(crate) fn lru_links<H: Host>(&self, host: &H, i: u32) -> (u32, u32) {
        let w3 = host.read_u64(self.hdr(host, i) + 24);
        (unpack(w3 & 0xffff_ffff), unpack(w3 >> 32))
    }

    fn set_lru_links<H: Host>(&self, host: &mut H, i: u32, prev: u32, next: u32) {
        let h = self.hdr(host, i);
        host.write_u64(h + 24, pack(prev) | (pack(next) << 32));
    }

    // ---- hash -------------------------------------------------------------------------------

    fn bucket_addr(&self, b: usize) -> (u64, u32) {
        let frame = self.hash[(b >> 10) % HASH_FRAMES];
        (frame + (((b & 1023) >> 1) as u64) * 8, ((b & 1) * 32) as u32)
    }

    pub(crate) fn bucket_head<H: Host>(&self, host: &H, b: usize) -> u32 {
        if self.hash[0] == 0 {
            return NIL;
        }
        let (a, shift) = self.bucket_addr(b);
        unpack((host.read_u64(a) >> shift) & 0xffff_ffff)
    }

    fn set_bucket_head<H: Host>(&self, host: &mut H, b: usize, i: u32) {
        let (a, shift) = self.bucket_addr(b);
        let w = host.read_u64(a) & !(0xffff_ffff << shift);
        host.write_u64(a, w | (pack(i) << shift));
    }

    /// The valid shadow page for (`gfn`, `level`) (`for_each_valid_sp` + role match).
    pub(crate) fn find_sp<H: Host>(&self, host: &H, gfn: u64, level: u32) -> u32 {
        let mut i = self.bucket_head(host, hash(gfn, level));
        let mut guard = self.hdr_total;
        while i != NIL && guard > 0 {
            let h = self.hdr(host, i);
            let w0 = host.read_u64(h);
            let w1 = host.read_u64(h + 8);
            if w1 & W1_GFN == gfn && (w0 & W0_LEVEL) as u32 == level && w0 & W0_INVALID == 0 {
                return i;
            }
            i = unpack(w1 >> W1_NEXT_SHIFT);
            guard -= 1;
        }
        NIL
    }

    /// Next shadow page in bucket chain order (for the invariant checker).
    pub(crate) fn chain_next<H: Host>(&self, host: &H, i: u32) -> u32 {
        self.next_in_chain(host, i)
    }

    fn unhash<H: Host>(&self, host: &mut H, i: u32, gfn: u64, level: u32) -> Result<(), Error> {
        let b = hash(gfn, level);
        let next = self.next_in_chain(host, i);
        let mut cur = self.bucket_head(host, b);
        if cur == i {
            self.set_bucket_head(host, b, next);
            return Ok(());
        }
        let mut guard = self.hdr_total;
        while cur != NIL && guard > 0 {
            let n = self.next_in_chain(host, cur);
            if n == i {
                self.set_next_in_chain(host, cur, next);
                return Ok(());
            }
            cur = n;
            guard -= 1;
        }
        debug_assert!(false, "shadow page {i} missing from its hash bucket");
        Err(Error::Internal)
    }

    // ---- active list --------------------------------------------------------------------------

    fn lru_unlink<H: Host>(&mut self, host: &mut H, i: u32) {
        let (prev, next) = self.lru_links(host, i);
        if prev == NIL {
            self.lru_head = next;
        } else {
            let (pp, _) = self.lru_links(host, prev);
            self.set_lru_links(host, prev, pp, next);
        }
        if next == NIL {
            self.lru_tail = prev;
        } else {
            let (_, nn) = self.lru_links(host, next);
            self.set_lru_links(host, next, prev, nn);
        }
    }

    /// Puts `i`, whose header is at `h`, first (every table a fault creates comes here: each
    /// header is looked up once).
    #[inline]
    fn lru_push_head<H: Host>(&mut self, host: &mut H, i: u32, h: u64) {
        let old = self.lru_head;
        host.write_u64(h + 24, pack(NIL) | (pack(old) << 32));
        if old == NIL {
            self.lru_tail = i;
        } else {
            let w3 = self.hdr(host, old) + 24;
            host.write_u64(w3, (host.read_u64(w3) & !0xffff_ffff) | pack(i));
        }
        self.lru_head = i;
    }

    /// KVM moves a zapped root that is still referenced to the head, so the tail stays the
    /// oldest reclaimable page.
    pub(crate) fn lru_move_to_head<H: Host>(&mut self, host: &mut H, i: u32) {
        if self.lru_head != i {
            self.lru_unlink(host, i);
            let h = self.hdr(host, i);
            self.lru_push_head(host, i, h);
        }
    }

    // ---- caches -------------------------------------------------------------------------------

    /// Shadow pages the caches can supply without touching the allocator.
    #[inline]
    pub(crate) fn cached_sps(&self) -> u32 {
        (self.page_cache_len as u32).min(self.hdr_free_len)
    }

    /// `mmu_topup_memory_caches`: no-op above the minimum, otherwise fill to capacity; a
    /// failed allocation keeps what was obtained and reports `OutOfMemory`.
    pub(crate) fn topup_caches<H: Host>(&mut self, host: &mut H) -> Result<(), Error> {
        if self.hash[0] == 0 {
            let mut frames = [0u64; HASH_FRAMES];
            for k in 0..HASH_FRAMES {
                match alloc_checked(host) {
                    Ok(f) => {
                        if let Some(slot) = frames.get_mut(k) {
                            *slot = f;
                        }
                    }
                    Err(e) => {
                        for f in frames.iter().take(k) {
                            host.free_frame(*f);
                        }
                        return Err(e);
                    }
                }
            }
            self.hash = frames;
        }
        if self.page_cache_len < crate::PAGE_CACHE_MIN {
            while let Some(slot) = self.page_cache.get_mut(self.page_cache_len) {
                *slot = alloc_checked(host)?;
                self.page_cache_len += 1;
            }
        }
        if self.hdr_free_len < crate::PAGE_CACHE_MIN as u32 {
            self.grow_headers(host)?;
        }
        Ok(())
    }

    /// Add one frame of headers to the free list (and a directory frame when one fills).
    fn grow_headers<H: Host>(&mut self, host: &mut H) -> Result<(), Error> {
        let total = self.hdr_total;
        if total >= HDR_CAPACITY {
            // n_used is bounded well below the capacity, so the free list cannot be short here.
            debug_assert!(false, "header slab exhausted");
            return Err(Error::Internal);
        }
        let d = (total / HDRS_PER_DIR) as usize;
        let Some(&dir) = self.hdr_dir.get(d) else {
            return Err(Error::Internal);
        };
        let mut new_dir = 0;
        if dir == 0 {
            new_dir = alloc_checked(host)?;
        }
        let frame = match alloc_checked(host) {
            Ok(f) => f,
            Err(e) => {
                if new_dir != 0 {
                    host.free_frame(new_dir);
                }
                return Err(e);
            }
        };
        let dir = if new_dir != 0 {
            if let Some(e) = self.hdr_dir.get_mut(d) {
                *e = new_dir;
            }
            new_dir
        } else {
            dir
        };
        let slot = u64::from((total / HDRS_PER_FRAME) % HDR_FRAMES_PER_DIR);
        host.write_u64(dir + slot * 8, frame);
        self.hdr_total = total + HDRS_PER_FRAME;
        // Push in reverse so the lowest index is handed out first.
        for k in (0..HDRS_PER_FRAME).rev() {
            let i = total + k;
            self.set_next_in_chain(host, i, self.hdr_free);
            self.hdr_free = i;
        }
        self.hdr_free_len += HDRS_PER_FRAME;
        Ok(())
    }

    /// `kvm_mmu_alloc_page` + the miss path of `kvm_mmu_get_page`: a zeroed table, hashed, at
    /// the head of the active list, its parent word set to `parent`. The caller checked the
    /// caches and the cap. Returns the page and its table.
    pub(crate) fn alloc_sp<H: Host>(
        &mut self,
        host: &mut H,
        gfn: u64,
        level: u32,
        parent: u64,
    ) -> Result<(u32, u64), Error> {
        let cached =
            self.page_cache_len.checked_sub(1).and_then(|n| Some((n, *self.page_cache.get(n)?)));
        // The hash exists whenever the caches hold anything: topup allocates it first.
        let ready = self.hash[0] != 0 && self.hdr_free != NIL && self.n_used < self.n_max;
        let Some((len, table)) = cached.filter(|_| ready) else {
            debug_assert!(false, "alloc_sp without caches or room");
            return Err(Error::Internal);
        };
        self.page_cache_len = len;
        let i = self.hdr_free;
        let h = self.hdr(host, i);
        self.hdr_free = unpack(host.read_u64(h + 8) >> W1_NEXT_SHIFT);
        self.hdr_free_len -= 1;
        host.write_u64(h, table | u64::from(level) | W0_IN_USE);
        // First in its hash bucket (the word holding the bucket's head is read once).
        let (a, shift) = self.bucket_addr(hash(gfn, level));
        let heads = host.read_u64(a);
        let head = unpack((heads >> shift) & 0xffff_ffff);
        host.write_u64(h + 8, gfn | (pack(head) << W1_NEXT_SHIFT));
        host.write_u64(a, (heads & !(0xffff_ffff << shift)) | (pack(i) << shift));
        host.write_u64(h + 16, parent);
        self.lru_push_head(host, i, h);
        self.n_used += 1;
        self.stats.pages_allocated += 1;
        Ok((i, table))
    }

    /// `kvm_mmu_free_page`: the table is empty and unreachable; give its frame back.
    pub(crate) fn free_sp<H: Host>(&mut self, host: &mut H, i: u32) -> Result<(), Error> {
        let sp = self.sp(host, i);
        self.unhash(host, i, sp.gfn, sp.level)?;
        self.lru_unlink(host, i);
        let h = self.hdr(host, i);
        host.write_u64(h, 0);
        host.write_u64(h + 16, 0);
        host.write_u64(h + 24, 0);
        host.write_u64(h + 8, pack(self.hdr_free) << W1_NEXT_SHIFT);
        self.hdr_free = i;
        self.hdr_free_len += 1;
        host.free_frame(sp.table);
        self.n_used -= 1;
        self.stats.pages_freed += 1;
        self.relax_cap();
        Ok(())
    }
}

/// A frame from the host, checked against the contract.
pub(crate) fn alloc_checked<H: Host>(host: &mut H) -> Result<u64, Error> {
    match host.alloc_frame() {
        Some(f) if frame_ok(f) => Ok(f),
        Some(_) => {
            debug_assert!(false, "Host::alloc_frame broke its contract");
            Err(Error::Internal)
        }
        None => Err(Error::OutOfMemory),
    }
}
