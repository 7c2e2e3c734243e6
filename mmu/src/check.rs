//! A global consistency check of an [`Mmu`]'s metadata against its tables (spec section 9 and
//! plan item 7). It only reads, allocates nothing and costs time proportional to the tables and
//! slot sizes, so it is meant for tests (microhv's included) and debugging, not the exit path.

use crate::entry::{ADDR_MASK, HOST_WRITABLE, LARGE, is_leaf};
use crate::host::Host;
use crate::limit::default_mmu_pages;
use crate::slot::{MAX_LEAF_LEVEL, lpage_index, pages_per_entry};
use crate::sp::{HASH_FRAMES, HDRS_PER_FRAME, NIL, hash};
use crate::{HASH_BUCKETS, LEVELS, Mmu, PAGE_CACHE_CAPACITY, frame_ok, store};

/// A broken invariant: what, and two values that locate it (meaning depends on `what`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant that does not hold.
    pub what: &'static str,
    /// First locating value (usually a shadow-page index, gfn or address).
    pub a: u64,
    /// Second locating value.
    pub b: u64,
}

fn fail<T>(what: &'static str, a: u64, b: u64) -> Result<T, Violation> {
    Err(Violation { what, a, b })
}

fn ensure(ok: bool, what: &'static str, a: u64, b: u64) -> Result<(), Violation> {
    if ok { Ok(()) } else { fail(what, a, b) }
}

impl Mmu {
    /// Check every invariant the crate maintains:
    /// - the active list, the hash and the counters agree (`n_used` = pages on the list = pages
    ///   hashed = allocated − freed; `n_used ≤ n_max`; `n_max` = the goal unless pinned roots
    ///   hold it at `n_used`; free headers + `n_used` = headers created);
    /// - at most one valid root, whose table is the one cached for faults if a vCPU holds it;
    ///   root counts equal the vCPU references; invalid pages are pinned, empty roots;
    /// - every present non-leaf entry points to the valid table for its range, whose parent
    ///   word points back, and every parent word names such an entry;
    /// - every present leaf maps its slot's frame for its gfn, with the slot's permissions,
    ///   a size allowed by the configuration and the slot's large-page counts, and is the one
    ///   entry in its gfn's rmap; every rmap entry names such a leaf; in a logging slot every
    ///   writable leaf is 4 KiB and already marked dirty;
    /// - the slots do not overlap; their metadata depth, page total and the default cap match.
    pub fn check_invariants<H: Host>(&self, host: &H) -> Result<(), Violation> {
        self.check_counters()?;
        let (listed, leaves) = self.check_pages(host)?;
        ensure(listed == self.n_used, "active list length != n_used", listed, self.n_used)?;
        self.check_hash(host)?;
        self.check_roots(host)?;
        let rmapped = self.check_rmaps(host)?;
        ensure(rmapped == leaves, "rmap entries != present leaves", rmapped, leaves)
    }

    fn check_counters(&self) -> Result<(), Violation> {
        let s = &self.stats;
        ensure(self.n_used <= self.n_max, "n_used > n_max", self.n_used, self.n_max)?;
        ensure(self.n_max >= self.goal, "n_max below goal", self.n_max, self.goal)?;
        ensure(
            self.n_max == self.goal || self.n_max == self.n_used,
            "n_max neither goal nor n_used",
            self.n_max,
            self.goal,
        )?;
        let expect_goal = if self.n_requested == 0 {
            default_mmu_pages(self.total_pages)
        } else {
            self.n_requested
        };
        ensure(self.goal == expect_goal, "goal stale", self.goal, expect_goal)?;
        ensure(
            s.pages_allocated - s.pages_freed == self.n_used,
            "allocated - freed != n_used",
            s.pages_allocated - s.pages_freed,
            self.n_used,
        )?;
        ensure(
            u64::from(self.hdr_free_len) + self.n_used == u64::from(self.hdr_total),
            "free headers + n_used != headers",
            u64::from(self.hdr_free_len),
            u64::from(self.hdr_total),
        )?;
        ensure(
            self.hdr_total.is_multiple_of(HDRS_PER_FRAME),
            "header total not whole frames",
            u64::from(self.hdr_total),
            0,
        )?;
        ensure(
            self.page_cache_len <= PAGE_CACHE_CAPACITY,
            "page cache overfull",
            self.page_cache_len as u64,
            0,
        )?;
        for f in self.page_cache.iter().take(self.page_cache_len) {
            ensure(frame_ok(*f), "bad cached frame", *f, 0)?;
        }
        let mut total = 0u64;
        for (i, s) in self.slots.iter().enumerate() {
            if !s.used() {
                continue;
            }
            total += s.npages;
            ensure(s.meta != 0, "slot without metadata", i as u64, 0)?;
            let depth = store::depth(s.meta_words());
            ensure(s.depth == depth, "slot metadata depth stale", i as u64, depth.into())?;
            for (j, t) in self.slots.iter().enumerate() {
                if j != i && t.used() && s.base < t.end() && t.base < s.end() {
                    return fail("slots overlap", i as u64, j as u64);
                }
            }
        }
        ensure(total == self.total_pages, "total_pages stale", total, self.total_pages)
    }

    /// Walk the active list; check each page and its entries. Returns (pages, present leaves).
    fn check_pages<H: Host>(&self, host: &H) -> Result<(u64, u64), Violation> {
        let mut i = self.lru_head;
        let mut prev = NIL;
        let mut count = 0u64;
        let mut leaves = 0u64;
        let mut free_headers = 0u64;
        let mut orphans = 0u64;
        let mut f = self.hdr_free;
        while f != NIL {
            free_headers += 1;
            if free_headers > u64::from(self.hdr_total) {
                return fail("free list cycles", u64::from(f), 0);
            }
            ensure(!self.sp(host, f).in_use, "free header in use", u64::from(f), 0)?;
            f = self.chain_next(host, f);
        }
        ensure(
            free_headers == u64::from(self.hdr_free_len),
            "free list length",
            free_headers,
            u64::from(self.hdr_free_len),
        )?;
        while i != NIL {
            count += 1;
            if count > u64::from(self.hdr_total) {
                return fail("active list cycles", u64::from(i), 0);
            }
            let (p, n) = self.lru_links(host, i);
            ensure(p == prev, "active list prev link", u64::from(i), u64::from(p))?;
            leaves += self.check_page(host, i)?;
            let sp = self.sp(host, i);
            orphans += u64::from(sp.level < LEVELS && !sp.invalid && self.parent(host, i) == 0);
            prev = i;
            i = n;
        }
        ensure(prev == self.lru_tail, "active list tail", u64::from(prev), 0)?;
        ensure(orphans == self.orphans, "orphan count", orphans, self.orphans)?;
        Ok((count, leaves))
    }

    fn check_page<H: Host>(&self, host: &H, i: u32) -> Result<u64, Violation> {
        let sp = self.sp(host, i);
        let ix = u64::from(i);
        ensure(sp.in_use, "listed page not in use", ix, 0)?;
        ensure((1..=LEVELS).contains(&sp.level), "bad level", ix, u64::from(sp.level))?;
        ensure(frame_ok(sp.table), "bad table frame", ix, sp.table)?;
        ensure(
            sp.gfn & (pages_per_entry(sp.level + 1) - 1) == 0,
            "gfn not aligned to the table's range",
            ix,
            sp.gfn,
        )?;
        ensure(
            sp.root_count == 0 || sp.level == LEVELS,
            "root count on a non-root",
            ix,
            u64::from(sp.root_count),
        )?;
        let parent = self.parent(host, i);
        if sp.invalid {
            ensure(sp.root_count > 0, "invalid page not pinned", ix, 0)?;
            ensure(parent == 0, "invalid page has a parent", ix, parent)?;
            for k in 0..512 {
                ensure(host.read_u64(sp.table + k * 8) == 0, "invalid root not empty", ix, k)?;
            }
            return Ok(0);
        }
        ensure(
            self.find_sp(host, sp.gfn, sp.level) == i,
            "valid page is not what lookup finds",
            ix,
            sp.gfn,
        )?;
        if parent != 0 {
            ensure(sp.level < LEVELS, "root has a parent", ix, parent)?;
            let pgfn = sp.gfn & !(pages_per_entry(sp.level + 2) - 1);
            let p = self.find_sp(host, pgfn, sp.level + 1);
            ensure(p != NIL, "parent page missing", ix, parent)?;
            let k = lpage_index(sp.gfn, 0, sp.level + 1) & 511;
            ensure(
                self.sp_table(host, p) + k * 8 == parent,
                "parent word names the wrong entry",
                ix,
                parent,
            )?;
            let pe = host.read_u64(parent);
            ensure(
                self.masks.is_present(pe) && pe & ADDR_MASK == sp.table,
                "parent entry does not point here",
                ix,
                pe,
            )?;
        }
        let span = pages_per_entry(sp.level);
        let mut leaves = 0;
        for k in 0..512u64 {
            let addr = sp.table + k * 8;
            let e = host.read_u64(addr);
            if !self.masks.is_present(e) {
                ensure(e == 0, "non-present entry not zero", addr, e)?;
                continue;
            }
            let g = sp.gfn + k * span;
            if !is_leaf(e, sp.level) {
                ensure(e & !ADDR_MASK == self.masks.table, "table entry bits", addr, e)?;
                let c = self.find_sp(host, g, sp.level - 1);
                ensure(c != NIL, "table entry without child", addr, g)?;
                ensure(
                    self.sp_table(host, c) == e & ADDR_MASK,
                    "table entry points elsewhere",
                    addr,
                    e,
                )?;
                ensure(self.parent(host, c) == addr, "child parent word", addr, u64::from(c))?;
                continue;
            }
            leaves += 1;
            self.check_leaf(host, addr, e, sp.level, g)?;
        }
        Ok(leaves)
    }

    fn check_leaf<H: Host>(
        &self,
        host: &H,
        addr: u64,
        e: u64,
        level: u32,
        g: u64,
    ) -> Result<(), Violation> {
        let span = pages_per_entry(level);
        match level {
            1 => {}
            2 => ensure(self.cfg.large_2m, "2M leaf without 2M support", addr, e)?,
            3 => ensure(self.cfg.large_1g, "1G leaf without 1G support", addr, e)?,
            _ => return fail("leaf above level 3", addr, e),
        }
        let Some(s) = self.find_slot(g) else {
            return fail("leaf outside every slot", addr, g);
        };
        ensure(s.contains(g + span - 1), "leaf crosses its slot's end", addr, g)?;
        ensure(e & ADDR_MASK == s.pfn_of(g) << 12, "leaf maps the wrong frame", addr, e)?;
        let mut fixed = self.masks.leaf;
        if level > 1 {
            fixed |= LARGE;
        }
        if s.writable() {
            fixed |= HOST_WRITABLE;
        }
        let w = e & self.masks.writable;
        ensure(w == 0 || w == self.masks.writable, "partial write permission", addr, e)?;
        ensure(e & !ADDR_MASK & !self.masks.writable == fixed, "leaf bits", addr, e)?;
        ensure(w == 0 || s.writable(), "writable leaf in read-only slot", addr, e)?;
        for l in 2..=level {
            let c = host.read_u64(s.count_addr(host, g, l));
            ensure(c == 0, "large leaf where disallowed", addr, u64::from(l))?;
        }
        ensure(
            host.read_u64(s.rmap_addr(host, g, level)) == addr,
            "leaf not in its rmap",
            addr,
            g,
        )?;
        if s.logging() && w != 0 {
            ensure(level == 1, "writable large leaf while logging", addr, e)?;
            let off = g - s.base;
            let a = store::addr(host, s.dirty, store::depth(s.dirty_words()), off / 64);
            ensure(
                host.read_u64(a) & (1 << (off % 64)) != 0,
                "writable leaf not marked dirty",
                addr,
                g,
            )?;
        }
        Ok(())
    }

    fn check_hash<H: Host>(&self, host: &H) -> Result<(), Violation> {
        if self.hash[0] == 0 {
            ensure(self.n_used == 0, "pages without a hash", self.n_used, 0)?;
            return Ok(());
        }
        for f in self.hash.iter().take(HASH_FRAMES) {
            ensure(frame_ok(*f), "bad hash frame", *f, 0)?;
        }
        let mut hashed = 0u64;
        for b in 0..HASH_BUCKETS {
            let mut i = self.bucket_head(host, b);
            while i != NIL {
                hashed += 1;
                if hashed > self.n_used {
                    return fail("more pages hashed than in use", b as u64, u64::from(i));
                }
                let sp = self.sp(host, i);
                ensure(sp.in_use, "hashed page not in use", u64::from(i), 0)?;
                ensure(
                    hash(sp.gfn, sp.level) == b,
                    "page in the wrong bucket",
                    u64::from(i),
                    b as u64,
                )?;
                i = self.chain_next(host, i);
            }
        }
        ensure(hashed == self.n_used, "hashed pages != n_used", hashed, self.n_used)
    }

    fn check_roots<H: Host>(&self, host: &H) -> Result<(), Violation> {
        let mut valid_roots = 0;
        let mut i = self.lru_head;
        while i != NIL {
            let sp = self.sp(host, i);
            if sp.level == LEVELS {
                if !sp.invalid {
                    valid_roots += 1;
                }
                let refs = self.vcpu_root.iter().filter(|r| **r == i).count() as u32;
                ensure(
                    refs == sp.root_count,
                    "root count != vCPU references",
                    u64::from(i),
                    u64::from(refs),
                )?;
            }
            i = self.lru_links(host, i).1;
        }
        ensure(valid_roots <= 1, "several valid roots", valid_roots, 0)?;
        for (v, &r) in self.vcpu_root.iter().enumerate() {
            let flagged = self.reload_mask & (1 << v) != 0;
            if r == NIL {
                ensure(!flagged, "reload flag without a root", v as u64, 0)?;
                continue;
            }
            ensure(r < self.hdr_total, "vCPU root index", v as u64, u64::from(r))?;
            let sp = self.sp(host, r);
            ensure(
                sp.in_use && sp.level == LEVELS,
                "vCPU root is not a root",
                v as u64,
                u64::from(r),
            )?;
            ensure(sp.invalid == flagged, "reload flag != root invalid", v as u64, u64::from(r))?;
            let stale = !flagged && sp.table != self.root_table;
            ensure(!stale, "cached root table stale", v as u64, self.root_table)?;
        }
        Ok(())
    }

    /// Every rmap word names a present leaf of its level mapping its gfn. Returns the count.
    fn check_rmaps<H: Host>(&self, host: &H) -> Result<u64, Violation> {
        let mut n = 0;
        for s in self.slots.iter().filter(|s| s.used()) {
            for level in 1..=MAX_LEAF_LEVEL {
                let span = pages_per_entry(level);
                let count = lpage_index(s.end() - 1, s.base, level) + 1;
                for k in 0..count {
                    let g = (((s.base / span) + k) * span).max(s.base);
                    let spte = host.read_u64(s.rmap_addr(host, g, level));
                    if spte == 0 {
                        continue;
                    }
                    n += 1;
                    let e = host.read_u64(spte);
                    ensure(
                        self.masks.is_present(e) && is_leaf(e, level),
                        "rmap names a non-leaf",
                        g,
                        spte,
                    )?;
                    let head = g & !(span - 1);
                    ensure(head >= s.base, "rmap of a partial large page", g, spte)?;
                    ensure(
                        e & ADDR_MASK == s.pfn_of(head) << 12,
                        "rmap leaf maps another gfn",
                        g,
                        e,
                    )?;
                }
            }
        }
        Ok(n)
    }
}
