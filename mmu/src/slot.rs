//! Memory slots: one physically contiguous host range each, plus the metadata KVM keeps in
//! `kvm_arch_memory_slot` (rmaps, large-page disallow counts) and the dirty bitmap.
//!
//! Metadata layout, one word array per slot (see [`crate::store`]):
//! - `[0, npages)`: level-1 rmap, one word per gfn: the host-physical address of the 4 KiB leaf
//!   mapping it, or 0.
//! - then, for level 2 and level 3, two words per large-page index (KVM's `gfn_to_index`):
//!   the rmap of the large leaf, and the disallow count (`lpage_info.disallow_lpage`).
//!
//! In a TDP MMU a (gfn, level) pair has at most one leaf: all vCPUs share one valid root, a
//! table for a given (gfn, level) is unique (it is looked up in the hash before one is created),
//! and an invalidated root is emptied before it can be skipped by lookups. So KVM's
//! `pte_list_desc` chains collapse into a single word per (gfn, level).

use crate::host::Host;
use crate::{Error, store};

/// Largest level that can hold a leaf (1 GiB pages).
pub(crate) const MAX_LEAF_LEVEL: u32 = 3;

/// A slot as kept inline in the `Mmu` (the slot id is its index).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    /// First gfn.
    pub base: u64,
    /// Pages; 0 means the slot id is unused.
    pub npages: u64,
    /// Host pfn backing `base`.
    pub pfn: u64,
    /// Root of the metadata array.
    pub meta: u64,
    /// Root of the dirty bitmap, 0 while dirty logging is off.
    pub dirty: u64,
    /// `SLOT_*` flags.
    pub flags: u32,
    /// `store::depth(meta_words())`, set by `alloc_meta` so rmap lookups skip recomputing it.
    pub depth: u32,
}

impl Slot {
    pub const EMPTY: Slot =
        Slot { base: 0, npages: 0, pfn: 0, meta: 0, dirty: 0, flags: 0, depth: 0 };

    #[inline]
    pub const fn used(&self) -> bool {
        self.npages != 0
    }

    #[inline]
    pub const fn contains(&self, gfn: u64) -> bool {
        // `npages != 0` and `base + npages` was overflow-checked at creation.
        gfn >= self.base && gfn - self.base < self.npages
    }

    #[inline]
    pub const fn end(&self) -> u64 {
        self.base + self.npages
    }

    #[inline]
    pub const fn writable(&self) -> bool {
        self.flags & crate::SLOT_READ_ONLY == 0
    }

    #[inline]
    pub const fn logging(&self) -> bool {
        self.dirty != 0
    }

    #[inline]
    pub const fn meta_words(&self) -> u64 {
        meta_words(self.base, self.npages)
    }

    #[inline]
    pub const fn dirty_words(&self) -> u64 {
        self.npages.div_ceil(64)
    }

    /// Word index of the rmap for (`gfn`, `level`); `gfn` must be inside the slot.
    #[inline]
    pub const fn rmap_word(&self, gfn: u64, level: u32) -> u64 {
        if level == 1 {
            gfn - self.base
        } else {
            self.large_base(level) + 2 * lpage_index(gfn, self.base, level)
        }
    }

    /// Word index of the disallow count of the large page at `level` (2 or 3) holding `gfn`.
    #[inline]
    pub const fn count_word(&self, gfn: u64, level: u32) -> u64 {
        self.rmap_word(gfn, level) + 1
    }

    const fn large_base(&self, level: u32) -> u64 {
        if level == 2 { self.npages } else { self.npages + 2 * lpages(self.base, self.npages, 2) }
    }

    #[inline(always)]
    pub fn rmap_addr<H: Host>(&self, host: &H, gfn: u64, level: u32) -> u64 {
        store::addr(host, self.meta, self.depth, self.rmap_word(gfn, level))
    }

    #[inline]
    pub fn count_addr<H: Host>(&self, host: &H, gfn: u64, level: u32) -> u64 {
        store::addr(host, self.meta, self.depth, self.count_word(gfn, level))
    }

    /// Host pfn backing `gfn` (inside the slot).
    #[inline]
    pub const fn pfn_of(&self, gfn: u64) -> u64 {
        self.pfn + (gfn - self.base)
    }
}

/// Pages covered by one entry of a table at `level` (`level` ≥ 1): 1, 512, 512², 512³.
#[inline]
pub(crate) const fn pages_per_entry(level: u32) -> u64 {
    1 << (9 * (level - 1))
}

/// KVM's `gfn_to_index`: index of the level-`level` page holding `gfn`, relative to the slot's
/// first one. Unaligned bases get a partial page at index 0.
#[inline]
pub(crate) const fn lpage_index(gfn: u64, base: u64, level: u32) -> u64 {
    let shift = 9 * (level - 1);
    (gfn >> shift) - (base >> shift)
}

/// Number of level-`level` pages a slot touches (KVM's `lpages`): `idx(last) + 1`.
#[inline]
pub(crate) const fn lpages(base: u64, npages: u64, level: u32) -> u64 {
    lpage_index(base + npages - 1, base, level) + 1
}

/// Length of a slot's metadata array.
pub(crate) const fn meta_words(base: u64, npages: u64) -> u64 {
    if npages == 0 {
        return 0;
    }
    npages + 2 * lpages(base, npages, 2) + 2 * lpages(base, npages, 3)
}

/// A slot at `base` with its metadata allocated and initialised (no flags, no dirty log).
///
/// The disallow counts start as KVM's `kvm_arch_create_memslot` sets them: 1 for a partial
/// large page at either end, and 1 everywhere at a level where the guest and host frames are
/// not congruent (a large leaf would need a host range that is not aligned).
pub(crate) fn alloc_meta<H: Host>(
    host: &mut H,
    base: u64,
    npages: u64,
    pfn: u64,
) -> Result<Slot, Error> {
    let words = meta_words(base, npages);
    let meta = store::alloc(host, words)?;
    let probe = Slot { base, npages, pfn, meta, depth: store::depth(words), ..Slot::EMPTY };
    for level in 2..=MAX_LEAF_LEVEL {
        let span = pages_per_entry(level);
        let n = lpages(base, npages, level);
        let first = base & !(span - 1);
        if (base ^ pfn) & (span - 1) != 0 {
            for i in 0..n {
                let a = probe.count_addr(host, first + i * span, level);
                host.write_u64(a, 1);
            }
            continue;
        }
        if base & (span - 1) != 0 {
            let a = probe.count_addr(host, base, level);
            host.write_u64(a, 1);
        }
        if (base + npages) & (span - 1) != 0 {
            let a = probe.count_addr(host, base + npages - 1, level);
            host.write_u64(a, 1);
        }
    }
    Ok(probe)
}
