//! The plan items, in the spec's order.

use super::common::*;
use crate::entry::{ept, npt};
use crate::*;

// ---- helpers --------------------------------------------------------------------------------

/// Internal inconsistencies are typed errors plus debug assertions: in a debug build the
/// assertion fires, in a release build the error comes back.
#[track_caller]
fn assert_internal<T: core::fmt::Debug>(f: impl FnOnce() -> Result<T, Error>) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    match r {
        Err(_) => {
            let debug_build = cfg!(debug_assertions);
            assert!(debug_build, "panicked in a release build");
        }
        Ok(v) => assert_eq!(v.unwrap_err(), Error::Internal),
    }
}

fn counts(m: &Mmu, h: &crate::sim::SimHost, level: u32) -> std::vec::Vec<u64> {
    let s = m.slots[0];
    let span = crate::slot::pages_per_entry(level);
    (0..crate::slot::lpages(s.base, s.npages, level))
        .map(|k| {
            let g = (((s.base / span) + k) * span).max(s.base);
            crate::host::Host::read_u64(h, s.count_addr(h, g, level))
        })
        .collect()
}

// ---- object caches -------------------------------------------------------------------------

#[test]
fn p01_topup_noop_above_min_fills_to_capacity_keeps_partial_on_oom() {
    let mut h = host();
    let mut m = Mmu::new(EPT4K);
    m.add_slot(&mut h, 0, 0, 8 * GIB, HPA, 0).unwrap();
    m.topup(&mut h).unwrap();
    assert_eq!(m.cached_frames(), PAGE_CACHE_CAPACITY);
    assert_eq!(m.cached_headers(), 128, "one frame of headers");
    let allocs = h.allocs();
    m.topup(&mut h).unwrap();
    assert_eq!(h.allocs(), allocs, "no-op at or above the minimum");
    m.acquire_root(&mut h, 0).unwrap();
    // Drain without topping up: each fault in a fresh GiB takes two frames (L2, L1).
    let mut k = 0;
    while m.cached_frames() >= PAGE_CACHE_MIN {
        assert!(matches!(
            m.page_fault(&mut h, 0, k * GIB, Access::READ),
            Ok(FaultOutcome::Fixed { .. })
        ));
        k += 1;
    }
    let before = m.cached_frames();
    assert!(before + 1 < PAGE_CACHE_MIN);
    let allocs = h.allocs();
    h.fail_after(Some(1));
    assert_eq!(m.topup(&mut h), Err(Error::OutOfMemory));
    assert_eq!(h.allocs() - allocs, 1);
    assert_eq!(m.cached_frames(), before + 1, "partial fill is kept");
    h.fail_after(None);
    check(&m, &h);
    m.topup(&mut h).unwrap();
    assert_eq!(m.cached_frames(), PAGE_CACHE_CAPACITY, "below the minimum: filled to capacity");
    teardown(m, h);
}

#[test]
fn p02_a_fault_never_takes_more_than_one_walk_from_the_caches() {
    for cfg in [EPT4K, EPT, NPT] {
        let mut h = host();
        let mut m = Mmu::new(cfg);
        m.add_slot(&mut h, 0, 0, 4 * GIB, HPA, 0).unwrap();
        m.add_slot(&mut h, 1, 1 << 40, 8 * MIB, HPA + 4 * GIB + 0x1000, 0).unwrap();
        // The smallest cap, so faults keep reclaiming while they take from the caches.
        m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
        m.acquire_root(&mut h, 0).unwrap();
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let gpa =
                if x & 1 == 0 { (x >> 8) % (4 * GIB) } else { (1 << 40) + (x >> 8) % (8 * MIB) };
            m.topup(&mut h).unwrap();
            let (f, n) = (m.cached_frames(), m.stats().pages_allocated);
            m.page_fault(&mut h, 0, gpa, Access::WRITE).unwrap();
            // Zapped tables go back to the host, never to the cache, so the cache only shrinks.
            assert!(f - m.cached_frames() <= 3);
            assert_eq!((f - m.cached_frames()) as u64, m.stats().pages_allocated - n);
            assert!(m.n_used() <= MIN_MMU_PAGES);
        }
        if cfg == EPT4K {
            assert!(m.stats().reclaims > 100, "4 KiB mappings outgrow the cap");
        }
        check(&m, &h);
        teardown(m, h);
    }
}

// ---- reverse maps --------------------------------------------------------------------------

#[test]
fn p03_rmap_holds_one_leaf_per_gfn_and_level() {
    let (mut m, mut h) = domain(EPT4K, 2 * MIB);
    fault(&mut m, &mut h, 0x5000, Access::READ);
    let slot = m.slots[0];
    let a = crate::host::Host::read_u64(&h, slot.rmap_addr(&h, 5, 1));
    assert_ne!(a, 0);
    // Re-adding the same entry is idempotent; a second, different leaf is refused.
    m.rmap_set(&mut h, &slot, 5, 1, a).unwrap();
    assert_internal(|| m.rmap_set(&mut h, &slot, 5, 1, a + 8));
}

#[test]
fn p06_removing_an_absent_rmap_entry_is_refused() {
    let (mut m, mut h) = domain(EPT4K, 2 * MIB);
    fault(&mut m, &mut h, 0x5000, Access::READ);
    let slot = m.slots[0];
    let a = crate::host::Host::read_u64(&h, slot.rmap_addr(&h, 5, 1));
    assert_internal(|| m.rmap_clear(&mut h, 6, 1, a));
    assert_internal(|| m.rmap_clear(&mut h, 5, 1, a + 8));
    assert_internal(|| m.rmap_clear(&mut h, 1 << 30, 1, a));
}

#[test]
fn p08_rmap_index_formula_and_lengths() {
    use crate::slot::{lpage_index, lpages, meta_words};
    // (base, npages) -> (lpages level 2, lpages level 3)
    for (base, n, l2, l3) in [
        (0u64, 1u64, 1u64, 1u64),
        (0, 512, 1, 1),
        (0, 513, 2, 1),
        (511, 1, 1, 1),
        (511, 2, 2, 1),
        (0x3ffff, 2, 2, 2),
        (0x200, 0x40000, 512, 2),
        (0x3fe00, 0x40200, 513, 2),
    ] {
        assert_eq!(lpages(base, n, 1), n);
        assert_eq!(lpages(base, n, 2), l2, "base {base:#x} n {n:#x}");
        assert_eq!(lpages(base, n, 3), l3, "base {base:#x} n {n:#x}");
        assert_eq!(meta_words(base, n), n + 2 * l2 + 2 * l3);
    }
    assert_eq!(lpage_index(0x400, 0x3ff, 2), 1);
    assert_eq!(lpage_index(0x3ff, 0x3ff, 2), 0);
    assert_eq!(lpage_index(0x40000, 0x3ffff, 3), 1);
    assert_eq!(lpage_index(0x1234, 0x1000, 1), 0x234);
    // Word layout: L1 rmaps, then (rmap, count) pairs for level 2, then for level 3.
    let s = crate::slot::Slot { base: 0x1ff, npages: 0x402, ..crate::slot::Slot::EMPTY };
    assert_eq!(s.rmap_word(0x1ff, 1), 0);
    assert_eq!(s.rmap_word(0x600, 1), 0x401);
    assert_eq!(s.rmap_word(0x1ff, 2), 0x402);
    assert_eq!(s.count_word(0x200, 2), 0x402 + 3);
    assert_eq!(s.rmap_word(0x600, 2), 0x402 + 2 * 3);
    assert_eq!(s.rmap_word(0x600, 3), 0x402 + 2 * 4);
    assert_eq!(s.meta_words(), 0x402 + 2 * 4 + 2);
}

#[test]
fn p08b_array_depth_and_the_depth_a_slot_keeps() {
    let reference = |words: u64| {
        let (mut d, mut cap) = (0, 512u64);
        while cap < words {
            d += 1;
            cap = cap.saturating_mul(512);
        }
        d
    };
    for w in [0, 1, 2, 511, u64::MAX - 1, u64::MAX] {
        assert_eq!(crate::store::depth(w), reference(w), "{w:#x}");
    }
    for p in (9..64).step_by(9) {
        for w in [(1u64 << p) - 1, 1 << p, (1 << p) + 1] {
            assert_eq!(crate::store::depth(w), reference(w), "{w:#x}");
        }
    }
    // 506 pages take 510 metadata words at gpa 0 (depth 0) but 514 across a GiB boundary
    // (depth 1): a move must carry the new depth, or rmap lookups would use the wrong words.
    let (mut m, mut h) = domain(EPT, 506 * 4096);
    assert_eq!(m.slots[0].depth, 0);
    assert_eq!(fault(&mut m, &mut h, 0x1000, Access::WRITE), FIXED_4K);
    m.move_slot(&mut h, 0, GIB - 0x1000).unwrap();
    check(&m, &h);
    assert_eq!(m.slots[0].depth, 1);
    for gpa in [GIB - 0x1000, GIB, GIB + 504 * 0x1000] {
        assert_eq!(fault(&mut m, &mut h, gpa, Access::WRITE), FIXED_4K);
    }
    m.zap_gfn_range(&mut h, GIB - 0x1000, 506 * 4096).unwrap();
    check(&m, &h);
    assert!(m.lookup(&h, GIB).is_none());
    teardown(m, h);
}

// ---- large pages ---------------------------------------------------------------------------

#[test]
fn p10_disallow_counts_from_slot_geometry() {
    let whole_gib = std::vec![0u64; 512];
    for (base, n, pfn, l2, l3) in [
        (0u64, 1024u64, 0u64, &[0u64, 0][..], &[1u64][..]),
        (1, 1023, 1, &[1, 0], &[1]),
        (0, 1024, 1, &[1, 1], &[1]),
        (512, 1, 512, &[1], &[1]),
        (0, 0x40000, 0, &whole_gib, &[0]),
        (0, 0x40000, 512, &whole_gib, &[1]),
        (0x3ffff, 2, 0x3ffff, &[1, 1], &[1, 1]),
    ] {
        let mut h = host();
        let mut m = Mmu::new(EPT);
        m.add_slot(&mut h, 0, base << 12, n << 12, pfn << 12, 0).unwrap();
        assert_eq!(counts(&m, &h, 2), l2, "base {base:#x} n {n:#x} pfn {pfn:#x}");
        assert_eq!(counts(&m, &h, 3), l3, "base {base:#x} n {n:#x} pfn {pfn:#x}");
        teardown(m, h);
    }
}

#[test]
fn p11_mapping_level_follows_config_and_alignment() {
    for cfg in [EPT, NPT] {
        let (mut m, mut h) = domain(cfg, 2 * GIB);
        m.add_slot(&mut h, 1, 4 * GIB, 4 * MIB, HPA + 4 * GIB, 0).unwrap();
        // gpa/hpa congruent at 1 GiB: a 1 GiB leaf.
        assert_eq!(fault(&mut m, &mut h, 0x1234_5000, Access::READ), FIXED_1G);
        assert_eq!(m.lookup(&h, 0x1234_5678).unwrap().hpa, HPA + 0x1234_5678);
        // A 4 MiB slot: 2 MiB leaves only.
        assert_eq!(fault(&mut m, &mut h, 4 * GIB + 3 * MIB, Access::WRITE), FIXED_2M);
        teardown(m, h);
    }
}

#[test]
fn p11_mapping_level_table() {
    let cases = [
        (EPT, 0u64, 2 * GIB, 0u64, 0x1234_5000u64, 3u32),
        (EPT, 0, 2 * GIB, 2 * MIB, 0x1234_5000, 2),
        (EPT, 0, 2 * GIB, 0x1000, 0x1234_5000, 1),
        (Config { large_1g: false, ..EPT }, 0, 2 * GIB, 0, 0x1234_5000, 2),
        (EPT4K, 0, 2 * GIB, 0, 0x1234_5000, 1),
        (NPT, 0, 2 * GIB, 0, 0x1234_5000, 3),
        // Partial large pages at either end of the slot.
        (EPT, 0x1000, 8 * MIB, 0x1000, 0x1000, 1),
        (EPT, 0x1000, 8 * MIB, 0x1000, 4 * MIB, 2),
        (EPT, 0x1000, 8 * MIB, 0x1000, 8 * MIB, 1),
    ];
    for (cfg, gpa, size, hpa_off, at, level) in cases {
        let mut h = host();
        let mut m = Mmu::new(cfg);
        m.add_slot(&mut h, 0, gpa, size, HPA + hpa_off, 0).unwrap();
        let s = m.slots[0];
        assert_eq!(m.mapping_level(&h, &s, at >> 12), level, "{cfg:?} at {at:#x}");
        m.enable_dirty_log(&mut h, 0).unwrap();
        let s = m.slots[0];
        assert_eq!(m.mapping_level(&h, &s, at >> 12), 1, "logging forces 4K");
        teardown(m, h);
    }
}

#[test]
fn p12_large_leaf_maps_the_aligned_range() {
    let (mut m, mut h) = domain(EPT, 8 * MIB);
    assert_eq!(fault(&mut m, &mut h, 3 * MIB + 0x5000, Access::READ), FIXED_2M);
    for off in [0, 0x1000, MIB, 2 * MIB - 8] {
        let map = m.lookup(&h, 2 * MIB + off).unwrap();
        assert_eq!(map.size, PageSize::Size2M);
        assert_eq!(map.hpa, HPA + 2 * MIB + off);
        assert_eq!(map.entry & entry::ADDR_MASK, HPA + 2 * MIB);
    }
    teardown(m, h);
}

#[test]
fn p14_move_recomputes_large_page_metadata() {
    let (mut m, mut h) = domain(EPT, 4 * MIB);
    assert_eq!(fault(&mut m, &mut h, 0x3000, Access::WRITE), FIXED_2M);
    // Move to a base that is not congruent with the host range at 2 MiB.
    m.move_slot(&mut h, 0, 64 * MIB + 0x1000).unwrap();
    check(&m, &h);
    assert!(m.lookup(&h, 0x3000).is_none(), "old range zapped");
    assert_eq!(fault(&mut m, &mut h, 0x3000, Access::READ), FaultOutcome::NoSlot);
    for k in 0..1024 {
        let gpa = 64 * MIB + 0x1000 + k * 0x1000;
        assert_eq!(fault(&mut m, &mut h, gpa, Access::READ), FIXED_4K, "{gpa:#x}");
        assert_eq!(m.lookup(&h, gpa).unwrap().hpa, HPA + k * 0x1000);
    }
    // And back to an aligned base: large pages again.
    m.move_slot(&mut h, 0, 128 * MIB).unwrap();
    assert_eq!(fault(&mut m, &mut h, 129 * MIB, Access::READ), FIXED_2M);
    assert_eq!(m.lookup(&h, 129 * MIB).unwrap().hpa, HPA + MIB);
    teardown(m, h);
}

#[test]
fn p11b_one_gib_leaves_split_for_logging_and_collapse_back() {
    let (mut m, mut h) = domain(EPT, 2 * GIB);
    assert_eq!(fault(&mut m, &mut h, 0x1234_5000, Access::WRITE), FIXED_1G);
    assert_eq!(m.n_used(), 2, "root and one level-3 table");
    m.enable_dirty_log(&mut h, 0).unwrap();
    assert!(m.take_flush());
    // The write splits the 1 GiB leaf: a level-2 and a level-1 table appear.
    assert_eq!(fault(&mut m, &mut h, 0x1234_5000, Access::WRITE), FIXED_4K);
    assert!(m.take_flush(), "dropping the large leaf");
    assert_eq!(m.n_used(), 4);
    // Reads in other 2 MiB regions of the GiB add level-1 tables below the same level-2 table
    // until one page more than the floor is in use.
    for k in 0..MIN_MMU_PAGES - 3 {
        let gpa = 0x2000_0000 + k * 2 * MIB;
        assert_eq!(fault(&mut m, &mut h, gpa, Access::READ), FIXED_4K);
        assert!(!m.lookup(&h, gpa).unwrap().writable);
    }
    assert_eq!(m.n_used(), MIN_MMU_PAGES + 1);
    let mut bits = std::vec![0u64; ((2 * GIB) >> 12) as usize / 64];
    m.get_dirty_log(&mut h, 0, &mut bits).unwrap();
    assert_eq!(bits.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
    assert_eq!(bits[0x12345 / 64], 1 << (0x12345 % 64));
    // Logging off: the next fault replaces the level-2 table by a 1 GiB leaf again, orphaning
    // the subtree (still counted, reclaimable).
    m.disable_dirty_log(&mut h, 0).unwrap();
    m.take_flush();
    assert_eq!(fault(&mut m, &mut h, 0x1234_5000, Access::READ), FIXED_1G);
    assert!(m.take_flush(), "table replaced by a large leaf");
    assert_eq!(m.n_used(), MIN_MMU_PAGES + 1);
    assert_eq!(m.lookup(&h, 0x3fff_f008).unwrap().hpa, HPA + 0x3fff_f008);
    // Reclaim takes the oldest page after the root: the level-3 table, with the 1 GiB leaf.
    m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
    check(&m, &h);
    assert_eq!(m.n_used(), MIN_MMU_PAGES);
    assert_eq!(m.stats().reclaims, 1);
    assert!(m.lookup(&h, 0x1234_5000).is_none());
    assert_ne!(m.find_sp(&h, 0, 2), crate::sp::NIL, "the orphaned level-2 table stays");
    // Rebuilding it needs one table: the orphaned level-2 table (the oldest) makes room.
    assert_eq!(fault(&mut m, &mut h, 0x1234_5000, Access::READ), FIXED_1G);
    assert_eq!(m.n_used(), MIN_MMU_PAGES);
    assert_eq!(m.stats().reclaims, 2);
    assert_eq!(m.find_sp(&h, 0, 2), crate::sp::NIL, "the oldest page went");
    assert_eq!(m.lookup(&h, 0x1234_5000).unwrap().size, PageSize::Size1G);
    teardown(m, h);
}

// ---- entry encoding ------------------------------------------------------------------------

#[test]
fn p15_leaf_encoding_ept_and_npt() {
    for (cfg, rw_leaf, ro_leaf) in [
        // pfn | HOST_WRITABLE | IPAT | WB | X | W | R
        (EPT4K, 0x0010_0040_0000_0077u64, 0x0000_0040_0000_0075u64),
        // pfn | HOST_WRITABLE | D | A | US | RW | P
        (Config { format: Format::Npt, ..EPT4K }, 0x0010_0040_0000_0067, 0x0000_0040_0000_0025),
    ] {
        let mut h = host();
        let mut m = Mmu::new(cfg);
        m.add_slot(&mut h, 0, 0, 2 * MIB, HPA, 0).unwrap();
        m.add_slot(&mut h, 1, 4 * MIB, 2 * MIB, HPA, SLOT_READ_ONLY).unwrap();
        m.acquire_root(&mut h, 0).unwrap();
        assert_eq!(fault(&mut m, &mut h, 0, Access::READ), FIXED_4K);
        assert_eq!(m.lookup(&h, 0).unwrap().entry, rw_leaf);
        assert_eq!(fault(&mut m, &mut h, 4 * MIB, Access::READ), FIXED_4K);
        assert_eq!(m.lookup(&h, 4 * MIB).unwrap().entry, ro_leaf);
        teardown(m, h);
    }
}

#[test]
fn p16_nonleaf_entries_grant_everything() {
    for (cfg, bits) in [
        (EPT4K, ept::R | ept::W | ept::X),
        (Config { format: Format::Npt, ..EPT4K }, npt::P | npt::RW | npt::US | npt::A),
    ] {
        let (mut m, mut h) = domain(cfg, 2 * MIB);
        fault(&mut m, &mut h, 0x1000, Access::READ);
        let mut table = m.root_pointer(&h, 0).unwrap() & entry::ADDR_MASK;
        for _ in 0..3 {
            let e = crate::host::Host::read_u64(&h, table);
            assert_eq!(e & !entry::ADDR_MASK, bits);
            table = e & entry::ADDR_MASK;
        }
        teardown(m, h);
    }
}

#[test]
fn p20_eptp_and_ncr3() {
    assert_eq!(eptp(0x1234_5000), 0x1234_501e);
    assert_eq!(ncr3(0x1234_5000), 0x1234_5000);
    let (mut m, mut h) = domain(EPT4K, 2 * MIB);
    let p = m.root_pointer(&h, 0).unwrap();
    assert_eq!(p & 0xfff, 0x1e, "WB, 4-level walk, no A/D");
    assert!(h.is_allocated(p & entry::ADDR_MASK));
    let mut n = Mmu::new(Config { format: Format::Npt, ..EPT4K });
    let q = n.acquire_root(&mut h, 3).unwrap();
    assert_eq!(q & 0xfff, 0);
    assert!(h.is_allocated(q));
    n.destroy(&mut h);
    m.release_root(&mut h, 0).unwrap();
    teardown(m, h);
}

// ---- fault path ----------------------------------------------------------------------------

#[test]
fn p21_exit_qualification_and_error_code_decoding() {
    for q in 0u64..64 {
        for b8 in [0u64, 1 << 8] {
            let a = Access::from_ept_qualification(q | b8 | (1 << 12));
            assert_eq!(a.read, q & 1 != 0);
            assert_eq!(a.write, q & 2 != 0);
            assert_eq!(a.fetch, q & 4 != 0);
            assert_eq!(a.present, q & 0x38 != 0);
        }
    }
    for ec in 0u64..32 {
        let a = Access::from_npt_error_code(ec | (1 << 32));
        assert_eq!(a.present, ec & 1 != 0);
        assert_eq!(a.write, ec & 2 != 0);
        assert_eq!(a.fetch, ec & 16 != 0);
        assert_eq!(a.read, ec & 0x12 == 0);
    }
}

#[test]
fn p22_first_touch_creates_missing_tables_only() {
    let mut h = host();
    let mut m = Mmu::new(EPT4K);
    m.add_slot(&mut h, 0, 0, 2 * GIB, HPA, 0).unwrap();
    m.add_slot(&mut h, 1, 512 * GIB, 2 * MIB, HPA + 2 * GIB, 0).unwrap();
    m.set_requested_pages(&mut h, 1000).unwrap();
    m.acquire_root(&mut h, 0).unwrap();
    assert_eq!(m.n_used(), 1);
    for (gpa, new_tables) in [
        (0x5000, 3),
        (0x6000, 0),
        (2 * MIB, 1),
        (GIB + 0x3000, 2),
        (GIB + 0x4000, 0),
        (512 * GIB, 3),
    ] {
        let before = m.n_used();
        let fixed = m.stats().faults_fixed;
        assert_eq!(fault(&mut m, &mut h, gpa, Access::WRITE), FIXED_4K);
        assert_eq!(m.n_used() - before, new_tables, "gpa {gpa:#x}");
        assert_eq!(m.stats().faults_fixed, fixed + 1);
        let map = m.lookup(&h, gpa + 0x123).unwrap();
        assert_eq!(map.hpa, m.translate(gpa + 0x123).unwrap());
        assert!(map.writable);
    }
    teardown(m, h);
}

#[test]
fn p23_refault_of_a_valid_translation_is_spurious_and_changes_nothing() {
    let (mut m, mut h) = domain(EPT, 8 * MIB);
    fault(&mut m, &mut h, 0x7000, Access::WRITE);
    m.take_flush();
    let before = (m.stats(), m.lookup(&h, 0x7000), h.allocs(), h.frees());
    for a in [Access::READ, Access::WRITE, Access::FETCH] {
        assert_eq!(fault(&mut m, &mut h, 0x7000, a), FaultOutcome::Spurious);
    }
    let after = (m.stats(), m.lookup(&h, 0x7000), h.allocs(), h.frees());
    assert_eq!(before.1, after.1);
    assert_eq!((before.2, before.3), (after.2, after.3));
    assert_eq!(after.0.faults_spurious, before.0.faults_spurious + 3);
    assert_eq!(after.0.pages_allocated, before.0.pages_allocated);
    assert!(!m.take_flush());
    teardown(m, h);
}

#[test]
fn p24_fast_path_unprotects_4k_leaves_without_flush() {
    let mut h = host();
    let mut m = Mmu::new(EPT);
    // The first 2 MiB are partial (4 KiB leaves), the block at 4 MiB is whole (a 2 MiB leaf).
    m.add_slot(&mut h, 0, 0x1000, 8 * MIB - 0x1000, HPA + 0x1000, 0).unwrap();
    m.acquire_root(&mut h, 0).unwrap();
    assert_eq!(fault(&mut m, &mut h, 0x1000, Access::WRITE), FIXED_4K);
    assert_eq!(fault(&mut m, &mut h, 4 * MIB, Access::WRITE), FIXED_2M);
    m.enable_dirty_log(&mut h, 0).unwrap();
    assert!(m.take_flush(), "write protection narrows present leaves");
    assert!(!m.lookup(&h, 0x1000).unwrap().writable);
    // 4 KiB leaf: fixed in place, bit set, no flush.
    let s = m.stats();
    assert_eq!(fault(&mut m, &mut h, 0x1000, Access::WRITE), FIXED_4K);
    assert_eq!(m.stats().faults_fast, s.faults_fast + 1);
    assert_eq!(m.stats().faults_fixed, s.faults_fixed);
    assert!(!m.take_flush());
    assert!(m.lookup(&h, 0x1000).unwrap().writable);
    // Large leaf: refused by the fast path, split by the slow path (flush for the drop).
    assert_eq!(fault(&mut m, &mut h, 4 * MIB + 0x3000, Access::WRITE), FIXED_4K);
    assert_eq!(m.stats().faults_fast, s.faults_fast + 1);
    assert!(m.take_flush());
    assert_eq!(m.lookup(&h, 4 * MIB + 0x3000).unwrap().size, PageSize::Size4K);
    let mut bits = [0u64; 32];
    m.get_dirty_log(&mut h, 0, &mut bits).unwrap();
    // Bits are slot-relative: gpa 0x1000 is page 0, gpa 4 MiB + 0x3000 is page 1026.
    assert_eq!(bits[0], 1);
    assert_eq!(bits[16], 1 << 2);
    teardown(m, h);
}

#[test]
fn p25_access_outside_every_slot_is_reported_and_installs_nothing() {
    let (mut m, mut h) = domain(EPT, 8 * MIB);
    let s = m.stats();
    for gpa in [8 * MIB, GIB, GPA_LIMIT - 1, GPA_LIMIT, u64::MAX] {
        assert_eq!(fault(&mut m, &mut h, gpa, Access::READ), FaultOutcome::NoSlot);
    }
    assert_eq!(m.stats().faults_no_slot, s.faults_no_slot + 5);
    assert_eq!(m.n_used(), 1);
    assert!(!m.take_flush() || s.flushes_owed == m.stats().flushes_owed);
    m.add_slot(&mut h, 1, GIB, 2 * MIB, HPA + GIB, 0).unwrap();
    assert_eq!(fault(&mut m, &mut h, GIB, Access::READ), FIXED_2M);
    teardown(m, h);
}

#[test]
fn p26_read_only_slots() {
    let mut h = host();
    let mut m = Mmu::new(EPT);
    m.add_slot(&mut h, 0, 0, 4 * MIB, HPA, SLOT_READ_ONLY).unwrap();
    m.acquire_root(&mut h, 0).unwrap();
    assert_eq!(fault(&mut m, &mut h, 0x2000, Access::WRITE), FaultOutcome::ReadOnly);
    assert_eq!(m.n_used(), 1, "nothing built for a refused write");
    assert_eq!(fault(&mut m, &mut h, 0x2000, Access::READ), FIXED_2M);
    let map = m.lookup(&h, 0x2000).unwrap();
    assert!(!map.writable);
    assert_eq!(map.entry & entry::HOST_WRITABLE, 0);
    assert_eq!(fault(&mut m, &mut h, 0x2000, Access::WRITE), FaultOutcome::ReadOnly);
    assert_eq!(fault(&mut m, &mut h, 0x2000, Access::FETCH), FaultOutcome::Spurious);
    assert_eq!(m.stats().faults_read_only, 2);
    teardown(m, h);
}

#[test]
fn p29_flush_rules_of_the_fault_path() {
    let (mut m, mut h) = domain(EPT, 8 * MIB);
    m.take_flush();
    // not-present -> present: no flush.
    assert_eq!(fault(&mut m, &mut h, 0, Access::WRITE), FIXED_2M);
    assert!(!m.take_flush());
    // large leaf -> table: flush.
    m.enable_dirty_log(&mut h, 0).unwrap();
    m.take_flush();
    assert_eq!(fault(&mut m, &mut h, 0x1000, Access::WRITE), FIXED_4K);
    assert!(m.take_flush());
    // table -> large leaf: flush. Disabling the log zaps the 4 KiB leaves (flush), the table
    // stays linked until a fault wants a 2 MiB leaf there.
    m.disable_dirty_log(&mut h, 0).unwrap();
    assert!(m.take_flush());
    assert_eq!(fault(&mut m, &mut h, 0x1000, Access::READ), FIXED_2M);
    assert!(m.take_flush());
    // same pfn, wider permission: no flush. A write-protected 2 MiB leaf survives the log.
    m.enable_dirty_log(&mut h, 0).unwrap();
    m.disable_dirty_log(&mut h, 0).unwrap();
    m.take_flush();
    assert!(!m.lookup(&h, 0).unwrap().writable);
    assert_eq!(fault(&mut m, &mut h, 0, Access::WRITE), FIXED_2M);
    assert!(!m.take_flush());
    assert!(m.lookup(&h, 0).unwrap().writable);
    teardown(m, h);
}

// ---- roots ---------------------------------------------------------------------------------

#[test]
fn p30_root_load_fails_with_nospace_when_pinned_roots_fill_the_cap() {
    let mut h = host();
    let mut m = Mmu::new(EPT4K);
    assert_eq!(m.n_max(), MIN_MMU_PAGES, "no slots: the floor");
    // Each vCPU pins a root that a zap-all then invalidates, until they fill the cap.
    let full = MIN_MMU_PAGES as usize;
    for v in 0..full {
        m.acquire_root(&mut h, v).unwrap();
        m.zap_all(&mut h).unwrap();
        assert!(m.needs_reload(v));
        check(&m, &h);
    }
    assert_eq!(m.n_used(), MIN_MMU_PAGES);
    let allocated = m.stats().pages_allocated;
    assert_eq!(m.acquire_root(&mut h, full), Err(Error::NoSpace));
    assert_eq!(m.stats().pages_allocated, allocated, "nothing built");
    assert_eq!(m.n_used(), MIN_MMU_PAGES);
    assert!(m.needs_reload(full));
    check(&m, &h);
    m.release_root(&mut h, 0).unwrap();
    assert_eq!(m.n_used(), MIN_MMU_PAGES - 1, "an invalid root goes with its last reference");
    m.acquire_root(&mut h, full).unwrap();
    check(&m, &h);
    teardown(m, h);
}

#[test]
fn p31_vcpus_share_one_counted_root() {
    let (mut m, mut h) = domain(EPT4K, 2 * MIB);
    let p0 = m.root_pointer(&h, 0).unwrap();
    assert_eq!(m.acquire_root(&mut h, 1).unwrap(), p0);
    assert_eq!(m.acquire_root(&mut h, 2).unwrap(), p0);
    assert_eq!(m.n_used(), 1);
    check(&m, &h);
    for v in 0..3 {
        m.release_root(&mut h, v).unwrap();
        check(&m, &h);
    }
    // A valid root with no references stays for the next acquire.
    assert_eq!(m.n_used(), 1);
    assert_eq!(m.acquire_root(&mut h, 5).unwrap(), p0);
    assert_eq!(m.acquire_root(&mut h, 5), Err(Error::Busy));
    assert_eq!(m.release_root(&mut h, 4), Err(Error::InvalidArgument));
    assert_eq!(m.acquire_root(&mut h, MAX_VCPUS), Err(Error::InvalidArgument));
    teardown(m, h);
}

#[test]
fn p32_loading_a_root_owes_a_flush() {
    let mut h = host();
    let mut m = Mmu::new(NPT);
    assert!(!m.take_flush());
    m.acquire_root(&mut h, 0).unwrap();
    assert!(m.take_flush());
    m.acquire_root(&mut h, 1).unwrap();
    assert!(m.take_flush(), "every load, as kvm_mmu_load");
    assert!(!m.take_flush(), "returned once");
    assert_eq!(m.stats().flushes_owed, 2);
    teardown(m, h);
}

// ---- limits and accounting -----------------------------------------------------------------

#[test]
fn p33_frames_of_several_domains_add_up() {
    let mut h = host();
    let mut a = Mmu::new(EPT);
    let mut b = Mmu::new(NPT);
    a.add_slot(&mut h, 0, 0, 16 * MIB, HPA, 0).unwrap();
    b.add_slot(&mut h, 7, GIB, 16 * MIB, HPA, 0).unwrap();
    a.acquire_root(&mut h, 0).unwrap();
    b.acquire_root(&mut h, 0).unwrap();
    for k in 0..64 {
        a.topup(&mut h).unwrap();
        b.topup(&mut h).unwrap();
        a.page_fault(&mut h, 0, k * 0x3000, Access::WRITE).unwrap();
        b.page_fault(&mut h, 0, GIB + k * 0x5000, Access::READ).unwrap();
        assert_eq!(a.frames_held() + b.frames_held(), h.outstanding() as u64);
    }
    a.check_invariants(&h).unwrap();
    b.check_invariants(&h).unwrap();
    a.destroy(&mut h);
    assert_eq!(b.frames_held(), h.outstanding() as u64);
    b.destroy(&mut h);
    assert_eq!(h.outstanding(), 0);
}

#[test]
fn p34_default_cap_follows_the_slots() {
    // 2% of the guest pages, but never below the floor: 50 pages per cap page, so the default
    // first exceeds the floor at (MIN_MMU_PAGES + 1) * 50 pages (950).
    let floor_until = MIN_MMU_PAGES * 50 - 1;
    for (pages, cap) in [
        (0u64, MIN_MMU_PAGES),
        (floor_until, MIN_MMU_PAGES),
        ((MIN_MMU_PAGES + 1) * 50, MIN_MMU_PAGES + 1),
        (3072, 61),
        (262_144, 5242),
        (1 << 20, 20971),
        (4 << 20, 83886),
    ] {
        assert_eq!(default_mmu_pages(pages), cap, "{pages} pages");
    }
    let (mut m, mut h) = domain(EPT4K, 64 * MIB);
    assert_eq!(m.n_max(), default_mmu_pages(16384));
    m.add_slot(&mut h, 1, GIB, 64 * MIB, HPA + GIB, 0).unwrap();
    assert_eq!(m.n_max(), default_mmu_pages(32768));
    for k in 0..32 {
        fault(&mut m, &mut h, GIB + k * 2 * MIB, Access::READ);
        fault(&mut m, &mut h, k * 2 * MIB, Access::READ);
    }
    assert_eq!(m.n_used(), 1 + 1 + 2 + 64);
    // Deleting memory lowers the cap, and the pages above it are zapped at once.
    m.remove_slot(&mut h, 1).unwrap();
    check(&m, &h);
    assert_eq!(m.n_max(), default_mmu_pages(16384));
    assert!(m.n_used() <= m.n_max());
    teardown(m, h);
}

#[test]
fn p35_default_cap_arithmetic_does_not_wrap() {
    // 4.19 computes total * 20 in 32 bits: wrong from ~214.7 M pages (819 GiB).
    for pages in [214_748_365u64, 1 << 32, 1 << 40, u64::MAX / 20, u64::MAX] {
        assert_eq!(default_mmu_pages(pages), MAX_MMU_PAGES);
    }
    assert_eq!(default_mmu_pages(50 * 500_000), 500_000);
    let mut last = 0;
    for pages in (0..(1u64 << 36)).step_by(1 << 24) {
        let c = default_mmu_pages(pages);
        assert!(c >= last);
        last = c;
    }
}

#[test]
fn p36_requests_below_the_floor_are_refused_and_requests_pin_the_cap() {
    let (mut m, mut h) = domain(EPT4K, 64 * MIB);
    let before = (m.n_max(), m.n_requested());
    for n in 1..MIN_MMU_PAGES {
        assert_eq!(m.set_requested_pages(&mut h, n), Err(Error::InvalidArgument));
    }
    assert_eq!(m.set_requested_pages(&mut h, MAX_MMU_PAGES + 1), Err(Error::TooBig));
    assert_eq!(m.set_requested_pages(&mut h, u64::MAX), Err(Error::TooBig));
    assert_eq!((m.n_max(), m.n_requested()), before, "no change on error");
    m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
    assert_eq!(m.n_max(), MIN_MMU_PAGES);
    m.set_requested_pages(&mut h, 50).unwrap();
    m.add_slot(&mut h, 1, GIB, GIB, HPA, 0).unwrap();
    assert_eq!(m.n_max(), 50, "slot changes leave a requested cap alone");
    m.remove_slot(&mut h, 0).unwrap();
    assert_eq!(m.n_max(), 50);
    m.set_requested_pages(&mut h, 0).unwrap();
    assert_eq!(m.n_requested(), 0);
    assert_eq!(m.n_max(), default_mmu_pages(1 << 18), "0 restores the default");
    check(&m, &h);
    teardown(m, h);
}

#[test]
fn p37_raising_or_keeping_the_cap_zaps_nothing() {
    let (mut m, mut h) = domain(EPT4K, 64 * MIB);
    // More pages in use than the floor, so every value tried below is a valid request.
    for k in 0..MIN_MMU_PAGES {
        fault(&mut m, &mut h, k * 2 * MIB, Access::READ);
    }
    let used = m.n_used();
    assert_eq!(used, 3 + MIN_MMU_PAGES);
    let zapped = m.stats().pages_zapped;
    for n in [used, used + 1, 1000, MAX_MMU_PAGES] {
        m.set_requested_pages(&mut h, n).unwrap();
        assert_eq!(m.n_max(), n);
        assert_eq!(m.n_used(), used);
        assert_eq!(m.stats().pages_zapped, zapped);
    }
    teardown(m, h);
}

#[test]
fn p38_lowering_the_limit_zaps_oldest_first_skipping_roots() {
    let (mut m, mut h) = domain(EPT4K, 64 * MIB);
    m.set_requested_pages(&mut h, 100).unwrap();
    for k in 0..32 {
        fault(&mut m, &mut h, k * 2 * MIB, Access::WRITE);
    }
    // root + L3 + L2 + 32 L1
    assert_eq!(m.n_used(), 35);
    m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
    check(&m, &h);
    assert_eq!(m.n_used(), MIN_MMU_PAGES);
    assert_eq!(m.n_max(), MIN_MMU_PAGES);
    // The root survived (it is pinned), so did the newest L1 tables; the oldest went first:
    // L3, L2, then the oldest L1 tables.
    assert!(!m.needs_reload(0));
    assert!(m.lookup(&h, 31 * 2 * MIB).is_none(), "upper levels were zapped");
    assert_eq!(m.stats().reclaims, 35 - MIN_MMU_PAGES);
    let first_kept = 32 - (MIN_MMU_PAGES - 1);
    for k in 0..32 {
        let alive = m.find_sp(&h, k * 512, 1) != crate::sp::NIL;
        assert_eq!(alive, k >= first_kept, "L1 table of region {k}");
    }
    // The surviving (orphaned) L1 tables are re-linked, not rebuilt.
    let before = m.stats().pages_allocated;
    fault(&mut m, &mut h, 31 * 2 * MIB, Access::READ);
    assert_eq!(m.stats().pages_allocated - before, 2, "L3 and L2 only");
    teardown(m, h);
}

#[test]
fn p38b_cap_held_by_pinned_roots_falls_back_when_they_go() {
    let (mut m, mut h) = domain(EPT4K, 64 * MIB);
    // More roots than the floor: vCPU 0's and one per vCPU loaded after each zap-all.
    let roots = MIN_MMU_PAGES as usize + 2;
    let last = roots - 1;
    for v in 1..roots {
        m.zap_all(&mut h).unwrap();
        m.acquire_root(&mut h, v).unwrap();
    }
    fault_on(&mut m, &mut h, last, 0, Access::READ);
    assert_eq!(m.n_used(), roots as u64 + 3);
    m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
    check(&m, &h);
    assert_eq!(m.n_used(), roots as u64, "only pinned roots remain");
    assert_eq!(m.n_max(), roots as u64, "the cap in force cannot go below them");
    for v in 0..last {
        m.release_root(&mut h, v).unwrap();
        check(&m, &h);
        assert_eq!(m.n_used(), (roots - 1 - v) as u64);
        assert_eq!(m.n_max(), m.n_used().max(MIN_MMU_PAGES), "falls as they are released");
    }
    assert_eq!(m.n_used(), 1);
    assert_eq!(m.n_max(), MIN_MMU_PAGES, "back to the request");
    teardown(m, h);
}

#[test]
fn p39_make_room_only_when_short_then_in_a_batch() {
    let (mut m, mut h) = domain(EPT4K, 256 * MIB);
    m.set_requested_pages(&mut h, 100).unwrap();
    for k in 0..96 {
        fault(&mut m, &mut h, k * 2 * MIB, Access::READ);
    }
    // root + L3 + L2 + 96 L1 = 99: one left, and a new 2 MiB region needs one table.
    assert_eq!(m.n_used(), 99);
    let r = m.stats().reclaims;
    fault(&mut m, &mut h, 96 * 2 * MIB, Access::READ);
    assert_eq!(m.stats().reclaims, r, "enough room: no reclaim");
    assert_eq!(m.n_used(), 100);
    // Now short: the batch frees max(need, min(25, 100 / 16)) = 6 pages, then the walk takes
    // what it needs (the L3 and L2 were the oldest, so three tables).
    fault(&mut m, &mut h, 97 * 2 * MIB, Access::READ);
    assert_eq!(m.stats().reclaims - r, 6);
    assert_eq!(m.n_used(), 100 - 6 + 3);
    teardown(m, h);
}

#[test]
fn p39b_the_fault_walk_tells_make_room_what_it_needs() {
    let (mut m, mut h) = domain(EPT, 64 * MIB);
    m.enable_dirty_log(&mut h, 0).unwrap();
    for k in 0..15 {
        fault(&mut m, &mut h, k * 2 * MIB, Access::WRITE);
    }
    // root + L3 + L2 + 15 L1: the cap is full.
    m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
    assert_eq!(m.n_used(), MIN_MMU_PAGES);
    m.disable_dirty_log(&mut h, 0).unwrap();
    let r = m.stats().reclaims;
    // The walk ends at level 1, below the 2 MiB leaf being mapped: nothing to build.
    assert_eq!(fault(&mut m, &mut h, 2 * MIB, Access::WRITE), FIXED_2M);
    assert_eq!(m.stats().reclaims, r);
    // Splitting that leaf for logging needs one table: one free page is enough.
    m.enable_dirty_log(&mut h, 0).unwrap();
    m.set_requested_pages(&mut h, MIN_MMU_PAGES + 1).unwrap();
    assert_eq!(fault(&mut m, &mut h, 2 * MIB + 0x5000, Access::WRITE), FIXED_4K);
    assert_eq!(m.stats().reclaims, r);
    // With none free it reclaims; p39 covers a reclaim that zaps the walk's own tables.
    m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
    assert_eq!(m.n_used(), MIN_MMU_PAGES);
    assert_eq!(fault(&mut m, &mut h, 30 * MIB, Access::WRITE), FIXED_4K);
    assert!(m.stats().reclaims > r);
    teardown(m, h);
}

#[test]
fn p40_the_cap_is_hard_and_a_fault_without_room_builds_nothing() {
    let (mut m, mut h) = domain(EPT4K, 64 * MIB);
    m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
    for k in 0..32 {
        fault(&mut m, &mut h, k * 2 * MIB + 0x1000, Access::WRITE);
        assert!(m.n_used() <= MIN_MMU_PAGES);
        assert_eq!(m.lookup(&h, k * 2 * MIB + 0x1000).unwrap().hpa, HPA + k * 2 * MIB + 0x1000);
    }
    assert!(m.stats().reclaims > 0);
    // vCPU 1 pins the old root across a zap-all, then vCPUs 2.. each load a new root and pin
    // it across another zap-all; vCPU 0 reloads. MIN_MMU_PAGES - 2 pinned roots leave two
    // pages, less than a full walk.
    let pinners = MIN_MMU_PAGES as usize - 3;
    for v in 1..=pinners {
        m.acquire_root(&mut h, v).unwrap();
        m.zap_all(&mut h).unwrap();
    }
    m.reload_root(&mut h, 0).unwrap();
    assert_eq!(m.n_used(), MIN_MMU_PAGES - 2);
    let s = m.stats();
    assert_eq!(fault(&mut m, &mut h, 0x5000, Access::READ), FaultOutcome::Retry);
    assert_eq!(m.stats().pages_allocated, s.pages_allocated);
    assert_eq!(m.stats().faults_retry, s.faults_retry + 1);
    // Once vCPU 1 reloads, its old root goes and the fault succeeds.
    assert_eq!(fault_on(&mut m, &mut h, 1, 0x5000, Access::READ), FaultOutcome::Retry);
    m.reload_root(&mut h, 1).unwrap();
    assert_eq!(m.n_used(), MIN_MMU_PAGES - 3);
    assert_eq!(fault(&mut m, &mut h, 0x5000, Access::READ), FIXED_4K);
    assert_eq!(m.n_used(), MIN_MMU_PAGES);
    teardown(m, h);
}

/// Instructions the floor test runs, each over its own `INSN_REGIONS` GiBs.
const INSNS: u64 = 3;
const _: () = assert!((INSNS * INSN_REGIONS) as usize <= MAX_SLOTS);

/// A domain with one 2 MiB slot at the start of each of `INSNS * INSN_REGIONS` GiBs, 4 KiB
/// mappings only, vCPU 0 holding the root; and per instruction, the gpa of one 4 KiB page in
/// each of its `INSN_REGIONS` regions: every region needs its own level-2 and level-1 table.
fn insn_domain() -> (Mmu, crate::sim::SimHost, std::vec::Vec<std::vec::Vec<u64>>) {
    let mut h = host();
    let mut m = Mmu::new(EPT4K);
    for n in 0..INSNS * INSN_REGIONS {
        m.add_slot(&mut h, n as usize, n * GIB, 2 * MIB, HPA + n * 2 * MIB, 0).unwrap();
    }
    m.acquire_root(&mut h, 0).unwrap();
    let sets = (0..INSNS)
        .map(|i| {
            (0..INSN_REGIONS).map(|k| (i * INSN_REGIONS + k) * GIB + (k + 1) * 0x1000).collect()
        })
        .collect();
    (m, h, sets)
}

#[test]
fn p40b_the_floor_keeps_all_regions_of_one_instruction_mapped() {
    // One guest instruction may need INSN_REGIONS 2 MiB regions translated at the same time
    // (code, operands, stack, the guest's own page-table pages), in distinct GiBs at worst, and
    // the CPU retries it until all translate at once. At the floor, one round of faults over
    // them (what the retries produce) maps them all together, even when every fault has to
    // reclaim: the instructions run in turn over fresh regions, so after the first the cap is
    // full of the previous instruction's tables.
    let (mut m, mut h, sets) = insn_domain();
    m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
    for (i, set) in sets.iter().enumerate() {
        let reclaims = m.stats().reclaims;
        for (j, &gpa) in set.iter().enumerate() {
            assert_eq!(fault(&mut m, &mut h, gpa, Access::WRITE), FIXED_4K);
            assert!(m.n_used() <= MIN_MMU_PAGES);
            // No fault of the instruction reclaimed a mapping that another of its faults made.
            for &g in &set[..=j] {
                assert!(m.lookup(&h, g).is_some(), "insn {i}: {g:#x} lost at fault {j}");
            }
        }
        if i > 0 {
            assert!(m.stats().reclaims - reclaims >= 2 * INSN_REGIONS, "every fault reclaimed");
        }
        // Root, level-3 table and a level-2 and level-1 table per region: exactly the floor.
        assert_eq!(m.n_used(), MIN_MMU_PAGES);
        // The instruction retires: further rounds find everything mapped, build nothing.
        let allocated = m.stats().pages_allocated;
        for _ in 0..3 {
            for &g in set {
                assert_eq!(fault(&mut m, &mut h, g, Access::WRITE), FaultOutcome::Spurious);
            }
        }
        assert_eq!(m.stats().pages_allocated, allocated);
    }
    teardown(m, h);

    // The old floor of 4 pages (a root and one walk), set behind `set_requested_pages`' back:
    // each fault reclaims the walk the previous one built, so the instruction never retires.
    let (mut m, mut h, sets) = insn_domain();
    m.n_requested = 4;
    m.update_goal(&mut h).unwrap();
    check(&m, &h);
    assert_eq!(m.n_max(), 4);
    for round in 0..10 {
        for (j, &gpa) in sets[0].iter().enumerate() {
            assert_eq!(fault(&mut m, &mut h, gpa, Access::WRITE), FIXED_4K, "round {round}");
            assert!(m.n_used() <= 4);
            let mapped: std::vec::Vec<bool> =
                sets[0].iter().map(|&g| m.lookup(&h, g).is_some()).collect();
            assert!(mapped[j]);
            assert_eq!(mapped.iter().filter(|x| **x).count(), 1, "round {round}, fault {j}");
        }
    }
    teardown(m, h);
}

// ---- zapping -------------------------------------------------------------------------------

#[test]
fn p41_eviction_follows_creation_order_not_use() {
    let (mut m, mut h) = domain(EPT4K, 64 * MIB);
    // L1 tables in creation order 3, 1, 2, then 4..=MIN_MMU_PAGES: as many as the floor.
    let order: std::vec::Vec<u64> = [3u64, 1, 2].into_iter().chain(4..=MIN_MMU_PAGES).collect();
    for &k in &order {
        fault(&mut m, &mut h, k * 2 * MIB, Access::READ);
    }
    assert_eq!(m.n_used(), 3 + MIN_MMU_PAGES);
    // Using the first table again must not protect it.
    for _ in 0..10 {
        fault(&mut m, &mut h, 3 * 2 * MIB + 0x1000, Access::READ);
    }
    let alive =
        |m: &Mmu, h: &crate::sim::SimHost, k: u64| m.find_sp(h, k * 512, 1) != crate::sp::NIL;
    // root, L3, L2, then the L1 tables: three go, oldest first (L3, L2, L1(3)).
    m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
    assert!(!alive(&m, &h, 3));
    assert!(order[1..].iter().all(|&k| alive(&m, &h, k)));
    // A new walk: L3', L2', L1(new) are now the newest; the surviving orphans are older.
    let new = MIN_MMU_PAGES + 1;
    m.set_requested_pages(&mut h, 0).unwrap();
    fault(&mut m, &mut h, new * 2 * MIB, Access::READ);
    assert_eq!(m.n_used(), 3 + MIN_MMU_PAGES);
    m.set_requested_pages(&mut h, MIN_MMU_PAGES + 1).unwrap();
    assert!(!alive(&m, &h, 1) && !alive(&m, &h, 2));
    assert!(order[3..].iter().all(|&k| alive(&m, &h, k)));
    assert!(alive(&m, &h, new));
    teardown(m, h);
}

#[test]
fn p42_zapping_a_table_orphans_its_children() {
    let (mut m, mut h) = domain(EPT4K, 64 * MIB);
    for k in 0..4 {
        fault(&mut m, &mut h, k * 2 * MIB, Access::WRITE);
    }
    assert_eq!(m.n_used(), 1 + 1 + 1 + 4);
    let s = m.stats();
    m.take_flush();
    assert!(m.zap_table(&mut h, 0, 3).unwrap());
    check(&m, &h);
    assert!(m.take_flush());
    assert_eq!(m.n_used(), 6, "exactly one page freed");
    assert_eq!(m.stats().pages_zapped, s.pages_zapped + 1);
    assert_eq!(m.stats().pages_freed, s.pages_freed + 1);
    assert!(m.lookup(&h, 0).is_none(), "unreachable");
    // The orphaned L2 (with its L1 tables and their leaves) is re-linked by the next fault.
    assert_eq!(fault(&mut m, &mut h, 0x1000, Access::READ), FIXED_4K);
    assert_eq!(m.stats().pages_allocated, s.pages_allocated + 1);
    for k in 0..4 {
        assert!(m.lookup(&h, k * 2 * MIB).is_some(), "leaves survived in orphans");
    }
    assert!(!m.zap_table(&mut h, 40 * MIB, 1).unwrap(), "no such table");
    assert_eq!(m.zap_table(&mut h, 0, 0), Err(Error::InvalidArgument));
    assert_eq!(m.zap_table(&mut h, GPA_LIMIT, 1), Err(Error::InvalidArgument));
    teardown(m, h);
}

#[test]
fn p43_zapping_a_pinned_root_invalidates_it_until_released() {
    let (mut m, mut h) = domain(EPT4K, 64 * MIB);
    m.acquire_root(&mut h, 1).unwrap();
    fault(&mut m, &mut h, 0, Access::WRITE);
    let old = m.root_pointer(&h, 0).unwrap();
    assert!(m.zap_table(&mut h, 0, 4).unwrap());
    check(&m, &h);
    assert!(m.needs_reload(0) && m.needs_reload(1));
    assert_eq!(m.n_used(), 4, "root still counted, children orphaned");
    assert!(!m.zap_table(&mut h, 0, 4).unwrap(), "lookups skip it");
    assert_eq!(fault(&mut m, &mut h, 0, Access::READ), FaultOutcome::Retry);
    let new = m.reload_root(&mut h, 0).unwrap();
    assert_ne!(new, old);
    assert_eq!(m.n_used(), 5);
    m.release_root(&mut h, 1).unwrap();
    assert_eq!(m.n_used(), 4, "freed with its last reference");
    check(&m, &h);
    assert_eq!(fault(&mut m, &mut h, 0x1000, Access::READ), FIXED_4K);
    teardown(m, h);
}

#[test]
fn p43b_faults_use_the_cached_root_table_only_while_the_root_is_valid() {
    let (mut m, mut h) = domain(EPT4K, 64 * MIB);
    m.acquire_root(&mut h, 1).unwrap();
    fault(&mut m, &mut h, 0, Access::WRITE);
    // vCPU 1 reloads onto a new root while vCPU 0 still holds the invalidated one.
    m.zap_all(&mut h).unwrap();
    let new = m.reload_root(&mut h, 1).unwrap();
    assert_ne!(m.root_pointer(&h, 0), Some(new));
    assert_eq!(fault_on(&mut m, &mut h, 1, 0x1000, Access::WRITE), FIXED_4K);
    let s = m.stats();
    assert_eq!(fault(&mut m, &mut h, 0x2000, Access::WRITE), FaultOutcome::Retry);
    assert_eq!(m.stats().faults_retry, s.faults_retry + 1);
    assert!(m.lookup(&h, 0x2000).is_none());
    assert_eq!(m.reload_root(&mut h, 0).unwrap(), new);
    assert_eq!(m.reload_root(&mut h, 0).unwrap(), new, "valid: the cached table");
    assert_eq!(fault(&mut m, &mut h, 0x2000, Access::WRITE), FIXED_4K);
    // Unheld, the valid root is zapped like any page; the next acquire builds another.
    m.release_root(&mut h, 0).unwrap();
    m.release_root(&mut h, 1).unwrap();
    m.zap_all(&mut h).unwrap();
    assert_eq!(m.n_used(), 0);
    assert_ne!(m.acquire_root(&mut h, 0).unwrap(), new);
    assert_eq!(fault(&mut m, &mut h, 0x3000, Access::WRITE), FIXED_4K);
    assert_eq!(m.lookup(&h, 0x3000).unwrap().hpa, HPA + 0x3000);
    teardown(m, h);
}

#[test]
fn p44_zap_all_unmaps_everything_and_owes_one_flush() {
    let (mut m, mut h) = domain(EPT, 64 * MIB);
    m.add_slot(&mut h, 1, GIB, GIB, HPA + GIB, 0).unwrap();
    m.acquire_root(&mut h, 1).unwrap();
    for k in 0..40 {
        fault(&mut m, &mut h, k * 0x11000, Access::WRITE);
    }
    fault(&mut m, &mut h, GIB + 0x1000, Access::WRITE);
    m.take_flush();
    let owed = m.stats().flushes_owed;
    m.zap_all(&mut h).unwrap();
    check(&m, &h);
    assert_eq!(m.n_used(), 1, "only the pinned, emptied root");
    assert_eq!(m.stats().flushes_owed, owed + 1);
    assert!(m.take_flush());
    assert!(m.needs_reload(0) && m.needs_reload(1));
    m.reload_root(&mut h, 0).unwrap();
    m.reload_root(&mut h, 1).unwrap();
    assert_eq!(m.n_used(), 1);
    for k in 0..40 {
        assert!(m.lookup(&h, k * 0x11000).is_none());
    }
    assert!(m.lookup(&h, GIB).is_none());
    teardown(m, h);
}

#[test]
fn p45_range_zap_drops_leaves_keeps_tables() {
    let (mut m, mut h) = domain(EPT, 16 * MIB);
    m.add_slot(&mut h, 1, 16 * MIB, 16 * MIB, HPA + 16 * MIB + 0x1000, 0).unwrap();
    fault(&mut m, &mut h, 2 * MIB, Access::WRITE);
    for k in 0..64 {
        fault(&mut m, &mut h, 16 * MIB + k * 0x1000, Access::WRITE);
    }
    let used = m.n_used();
    m.take_flush();
    m.zap_gfn_range(&mut h, 3 * MIB, 13 * MIB + 0x5000).unwrap();
    check(&m, &h);
    assert!(m.take_flush());
    assert!(m.lookup(&h, 2 * MIB).is_none(), "a 2 MiB leaf overlapping the range goes");
    for k in 0..64 {
        assert_eq!(m.lookup(&h, 16 * MIB + k * 0x1000).is_some(), k >= 5, "{k}");
    }
    assert_eq!(m.n_used(), used, "tables stay");
    assert_eq!(m.zap_gfn_range(&mut h, 0x800, 0x1000), Err(Error::InvalidArgument));
    assert_eq!(m.zap_gfn_range(&mut h, !0xfffu64, 0x2000), Err(Error::InvalidArgument));
    m.zap_gfn_range(&mut h, 0, 0).unwrap();
    teardown(m, h);
}

// ---- TLB flush bookkeeping -----------------------------------------------------------------

#[test]
fn p47_every_narrowing_change_owes_a_flush_returned_once() {
    let (mut m, mut h) = domain(EPT, 64 * MIB);
    m.take_flush();
    let expect = |m: &mut Mmu, h: &mut crate::sim::SimHost, what: &str, owed: bool| {
        check(m, h);
        assert_eq!(m.take_flush(), owed, "{what}");
        assert!(!m.take_flush(), "{what}: taken twice");
    };
    fault(&mut m, &mut h, 0, Access::WRITE);
    expect(&mut m, &mut h, "new mapping", false);
    m.zap_gfn_range(&mut h, 8 * MIB, 2 * MIB).unwrap();
    expect(&mut m, &mut h, "range zap of nothing", false);
    m.zap_gfn_range(&mut h, 0, 4096).unwrap();
    expect(&mut m, &mut h, "range zap", true);
    fault(&mut m, &mut h, 0, Access::READ);
    m.enable_dirty_log(&mut h, 0).unwrap();
    expect(&mut m, &mut h, "write protect", true);
    fault(&mut m, &mut h, 0x1000, Access::WRITE);
    expect(&mut m, &mut h, "split for logging", true);
    fault(&mut m, &mut h, 0x1000, Access::WRITE);
    expect(&mut m, &mut h, "spurious", false);
    let mut bits = [0u64; 256];
    m.get_dirty_log(&mut h, 0, &mut bits).unwrap();
    expect(&mut m, &mut h, "harvest re-protects", true);
    m.get_dirty_log(&mut h, 0, &mut bits).unwrap();
    expect(&mut m, &mut h, "empty harvest", false);
    // New tables and leaves until one page more than the floor is in use.
    for k in 2..MIN_MMU_PAGES - 1 {
        fault(&mut m, &mut h, k * 2 * MIB, Access::WRITE);
        expect(&mut m, &mut h, "new table and leaf", false);
    }
    assert_eq!(m.n_used(), MIN_MMU_PAGES + 1);
    m.set_requested_pages(&mut h, MIN_MMU_PAGES).unwrap();
    expect(&mut m, &mut h, "reclaim", true);
    m.move_slot(&mut h, 0, GIB).unwrap();
    expect(&mut m, &mut h, "move", true);
    m.zap_all(&mut h).unwrap();
    expect(&mut m, &mut h, "zap all", true);
    teardown(m, h);
}

// ---- dirty logging -------------------------------------------------------------------------

#[test]
fn p48_logging_write_protects_forces_4k_and_reports_each_write_once() {
    for cfg in [EPT, NPT] {
        let (mut m, mut h) = domain(cfg, 8 * MIB);
        fault(&mut m, &mut h, 0, Access::WRITE);
        m.enable_dirty_log(&mut h, 0).unwrap();
        check(&m, &h);
        assert!(!m.lookup(&h, 0).unwrap().writable, "2 MiB leaf now read-only");
        assert_eq!(fault(&mut m, &mut h, 4 * MIB, Access::READ), FIXED_4K);
        assert!(!m.lookup(&h, 4 * MIB).unwrap().writable, "a read maps read-only");
        for _ in 0..3 {
            // The guest writes each page repeatedly; only the first write faults.
            for gpa in [4 * MIB, 4 * MIB + 0x2000, 0x3000] {
                if !m.lookup(&h, gpa).is_some_and(|x| x.writable) {
                    fault(&mut m, &mut h, gpa, Access::WRITE);
                }
            }
        }
        let mut bits = [0u64; 32];
        m.get_dirty_log(&mut h, 0, &mut bits).unwrap();
        let mut expect = [0u64; 32];
        expect[0] = 1 << 3;
        expect[16] = 0b101;
        assert_eq!(bits, expect);
        assert_eq!(m.enable_dirty_log(&mut h, 0), Ok(()), "already on: no-op");
        teardown(m, h);
    }
}

#[test]
fn p49_harvest_clears_reprotects_and_checks_its_arguments() {
    let (mut m, mut h) = domain(EPT4K, 1 << 20);
    m.enable_dirty_log(&mut h, 0).unwrap();
    for k in [0u64, 63, 64, 255] {
        fault(&mut m, &mut h, k * 0x1000, Access::WRITE);
    }
    let mut bits = [0u64; 4];
    let mut short = [0u64; 3];
    assert_eq!(m.get_dirty_log(&mut h, 0, &mut short), Err(Error::InvalidArgument));
    m.get_dirty_log(&mut h, 0, &mut bits).unwrap();
    assert_eq!(bits, [1 | 1 << 63, 1, 0, 1 << 63]);
    for k in [0u64, 63, 64, 255] {
        assert!(!m.lookup(&h, k * 0x1000).unwrap().writable);
    }
    m.get_dirty_log(&mut h, 0, &mut bits).unwrap();
    assert_eq!(bits, [0; 4]);
    fault(&mut m, &mut h, 64 * 0x1000, Access::WRITE);
    m.get_dirty_log(&mut h, 0, &mut bits).unwrap();
    assert_eq!(bits, [0, 1, 0, 0]);
    assert_eq!(m.get_dirty_log(&mut h, 1, &mut bits), Err(Error::NoSuchSlot));
    assert_eq!(m.get_dirty_log(&mut h, MAX_SLOTS, &mut bits), Err(Error::InvalidArgument));
    m.disable_dirty_log(&mut h, 0).unwrap();
    assert_eq!(m.get_dirty_log(&mut h, 0, &mut bits), Err(Error::InvalidArgument));
    assert_eq!(m.disable_dirty_log(&mut h, 0), Err(Error::InvalidArgument));
    teardown(m, h);
}

#[test]
fn p50_disabling_the_log_lets_faults_rebuild_large_leaves() {
    let (mut m, mut h) = domain(EPT, 8 * MIB);
    m.enable_dirty_log(&mut h, 0).unwrap();
    for k in 0..8 {
        fault(&mut m, &mut h, 2 * MIB + k * 0x1000, Access::WRITE);
    }
    m.disable_dirty_log(&mut h, 0).unwrap();
    check(&m, &h);
    assert!(m.lookup(&h, 2 * MIB).is_none(), "collapsible 4 KiB leaves zapped");
    assert_eq!(fault(&mut m, &mut h, 2 * MIB, Access::WRITE), FIXED_2M);
    assert_eq!(m.frames_held(), h.outstanding() as u64);
    teardown(m, h);
}

// ---- slots and vCPUs -----------------------------------------------------------------------

#[test]
fn p52_slot_validation_matrix() {
    use Error::*;
    let mut h = host();
    let mut m = Mmu::new(EPT);
    let add = |m: &mut Mmu, h: &mut crate::sim::SimHost, id, gpa, size, hpa, flags| {
        let r = m.add_slot(h, id, gpa, size, hpa, flags);
        check(m, h);
        r
    };
    assert_eq!(add(&mut m, &mut h, MAX_SLOTS, 0, 4096, 0, 0), Err(InvalidArgument));
    assert_eq!(add(&mut m, &mut h, 0, 0, 4096, 0, 1 << 5), Err(InvalidArgument));
    assert_eq!(add(&mut m, &mut h, 0, 0, 0, 0, 0), Err(InvalidArgument));
    assert_eq!(add(&mut m, &mut h, 0, 0x800, 4096, 0, 0), Err(InvalidArgument));
    assert_eq!(add(&mut m, &mut h, 0, 0, 4095, 0, 0), Err(InvalidArgument));
    assert_eq!(add(&mut m, &mut h, 0, 0, 4096, 8, 0), Err(InvalidArgument));
    assert_eq!(
        add(&mut m, &mut h, 0, !0xfffu64, 8192, 0, 0),
        Err(InvalidArgument),
        "gpa + size overflows"
    );
    assert_eq!(
        add(&mut m, &mut h, 0, 0, 8192, !0xfffu64, 0),
        Err(InvalidArgument),
        "hpa + size overflows"
    );
    assert_eq!(add(&mut m, &mut h, 0, GPA_LIMIT - 4096, 8192, 0, 0), Err(TooBig));
    assert_eq!(add(&mut m, &mut h, 0, 0, 8192, HPA_LIMIT - 4096, 0), Err(TooBig));
    assert_eq!(add(&mut m, &mut h, 0, 0, (MAX_SLOT_PAGES + 1) << 12, 0, 0), Err(TooBig));
    assert_eq!(add(&mut m, &mut h, 0, GPA_LIMIT - 4096, 4096, HPA_LIMIT - 4096, 0), Ok(()));
    assert_eq!(add(&mut m, &mut h, 0, 0, 4096, 0, 0), Err(Exists), "id in use");
    assert_eq!(add(&mut m, &mut h, 1, 16 * MIB, 16 * MIB, HPA, SLOT_READ_ONLY), Ok(()));
    for (gpa, size) in [
        (16 * MIB, 4096),
        (20 * MIB, 4096),
        (32 * MIB - 4096, 4096),
        (8 * MIB, 8 * MIB + 4096),
        (31 * MIB, 2 * MIB),
        (8 * MIB, 64 * MIB),
    ] {
        assert_eq!(add(&mut m, &mut h, 2, gpa, size, HPA, 0), Err(Exists), "{gpa:#x}+{size:#x}");
    }
    assert_eq!(add(&mut m, &mut h, 2, 8 * MIB, 8 * MIB, HPA, 0), Ok(()), "adjacent below");
    assert_eq!(add(&mut m, &mut h, 3, 32 * MIB, 8 * MIB, HPA, 0), Ok(()), "adjacent above");
    // Every id can hold a slot.
    for id in 4..MAX_SLOTS {
        add(&mut m, &mut h, id, GIB * id as u64, 4096, HPA, 0).unwrap();
    }
    assert_eq!(m.remove_slot(&mut h, MAX_SLOTS), Err(InvalidArgument));
    m.remove_slot(&mut h, 4).unwrap();
    assert_eq!(m.remove_slot(&mut h, 4), Err(NoSuchSlot));
    assert_eq!(m.move_slot(&mut h, 4, 0), Err(NoSuchSlot));
    assert_eq!(m.move_slot(&mut h, 1, 30 * MIB), Err(Exists));
    assert_eq!(m.move_slot(&mut h, 1, 0x800), Err(InvalidArgument));
    assert_eq!(m.move_slot(&mut h, 1, GPA_LIMIT - 4096), Err(TooBig));
    assert_eq!(m.move_slot(&mut h, 1, 16 * MIB), Ok(()), "to itself");
    assert_eq!(m.move_slot(&mut h, 1, 20 * MIB), Err(Exists), "overlaps slot 3");
    assert_eq!(m.move_slot(&mut h, 3, 36 * MIB), Ok(()), "may overlap its old range");
    let info = m.slot(1).unwrap();
    assert_eq!(
        info,
        SlotInfo {
            gpa: 16 * MIB,
            size: 16 * MIB,
            hpa: HPA,
            flags: SLOT_READ_ONLY,
            dirty_logging: false
        }
    );
    assert_eq!(m.slot(4), None);
    assert_eq!(m.slot(MAX_SLOTS), None);
    check(&m, &h);
    teardown(m, h);
}

#[test]
fn p53_vcpu_ids_and_reference_errors() {
    let mut h = host();
    let mut m = Mmu::new(EPT);
    assert_eq!(m.acquire_root(&mut h, MAX_VCPUS), Err(Error::InvalidArgument));
    assert_eq!(m.acquire_root(&mut h, usize::MAX), Err(Error::InvalidArgument));
    m.acquire_root(&mut h, MAX_VCPUS - 1).unwrap();
    assert_eq!(m.acquire_root(&mut h, MAX_VCPUS - 1), Err(Error::Busy));
    assert_eq!(m.release_root(&mut h, 0), Err(Error::InvalidArgument));
    assert_eq!(m.release_root(&mut h, MAX_VCPUS), Err(Error::InvalidArgument));
    assert_eq!(
        m.page_fault(&mut h, 0, 0, Access::READ),
        Err(Error::InvalidArgument),
        "a vCPU without a root cannot fault"
    );
    assert_eq!(m.page_fault(&mut h, MAX_VCPUS, 0, Access::READ), Err(Error::InvalidArgument));
    assert!(m.needs_reload(0));
    assert!(m.needs_reload(MAX_VCPUS));
    assert!(!m.needs_reload(MAX_VCPUS - 1));
    assert_eq!(m.root_pointer(&h, MAX_VCPUS), None);
    // reload_root is idempotent on a valid root and replaces an invalid one.
    let p = m.reload_root(&mut h, MAX_VCPUS - 1).unwrap();
    assert_eq!(m.reload_root(&mut h, MAX_VCPUS - 1).unwrap(), p);
    m.zap_all(&mut h).unwrap();
    m.reload_root(&mut h, MAX_VCPUS - 1).unwrap();
    assert!(!m.needs_reload(MAX_VCPUS - 1));
    assert_eq!(m.n_used(), 1);
    check(&m, &h);
    teardown(m, h);
}

// ---- beyond the plan: teardown, size, robustness ----------------------------------------------

#[test]
fn teardown_returns_every_frame() {
    let (mut m, mut h) = domain(EPT, 8 * MIB);
    m.add_slot(&mut h, 3, GIB, 4 * MIB, HPA + GIB, SLOT_READ_ONLY).unwrap();
    m.acquire_root(&mut h, 1).unwrap();
    for k in 0..2048 {
        fault(&mut m, &mut h, k * 0x1000, Access::READ);
    }
    m.enable_dirty_log(&mut h, 3).unwrap();
    check(&m, &h);
    assert!(h.outstanding() > 0);
    teardown(m, h);
}

#[test]
fn mmu_is_small() {
    assert!(core::mem::size_of::<Mmu>() <= MMU_INLINE_BYTES_MAX);
    std::println!("size_of::<Mmu>() = {}", core::mem::size_of::<Mmu>());
}

#[test]
fn slot_translation_checks_bounds_and_overflow() {
    let mut h = host();
    let mut m = Mmu::new(EPT);
    m.add_slot(&mut h, 0, 0, 8 * MIB, HPA, 0).unwrap();
    m.add_slot(&mut h, 1, 8 * MIB, 8 * MIB, 2 * HPA, 0).unwrap();
    assert_eq!(m.translate(0x1234), Some(HPA + 0x1234));
    assert_eq!(m.translate(8 * MIB + 8), Some(2 * HPA + 8));
    assert_eq!(m.translate(16 * MIB), None);
    assert_eq!(m.translate(u64::MAX), None);
    assert_eq!(m.translate_range(8 * MIB - 16, 16), Some(HPA + 8 * MIB - 16));
    assert_eq!(m.translate_range(8 * MIB - 16, 17), None, "crosses into another slot");
    assert_eq!(m.translate_range(0, 0), Some(HPA));
    assert_eq!(m.translate_range(u64::MAX - 4, 16), None);
    assert_eq!(m.translate_range(16, u64::MAX), None);
    teardown(m, h);
}

#[test]
fn faults_without_topup_fail_cleanly() {
    let mut h = host();
    let mut m = Mmu::new(EPT4K);
    m.add_slot(&mut h, 0, 0, 64 * MIB, HPA, 0).unwrap();
    m.acquire_root(&mut h, 0).unwrap();
    // acquire_root topped up; each fault in a fresh 2 MiB region now takes one frame.
    let mut k = 0;
    while m.cached_frames() >= 3 {
        assert_eq!(m.page_fault(&mut h, 0, k * 2 * MIB, Access::READ), Ok(FIXED_4K));
        k += 1;
    }
    let before = (m.stats(), h.allocs(), h.frees());
    assert_eq!(m.page_fault(&mut h, 0, k * 2 * MIB, Access::READ), Err(Error::CachesEmpty));
    assert_eq!((m.stats(), h.allocs(), h.frees()), before, "nothing changed");
    check(&m, &h);
    // Faults that need no table still work without a top-up.
    assert_eq!(m.page_fault(&mut h, 0, 0, Access::READ), Ok(FaultOutcome::Spurious));
    assert_eq!(m.page_fault(&mut h, 0, GIB, Access::READ), Ok(FaultOutcome::NoSlot));
    m.topup(&mut h).unwrap();
    assert_eq!(m.page_fault(&mut h, 0, k * 2 * MIB, Access::READ), Ok(FIXED_4K));
    teardown(m, h);
}

#[test]
fn out_of_memory_anywhere_leaks_nothing() {
    // Fail the k-th allocation of a scripted sequence for every k until it runs through.
    for k in 0.. {
        let mut h = host();
        let mut m = Mmu::new(EPT);
        h.fail_after(Some(k));
        let r = (|| -> Result<(), Error> {
            m.add_slot(&mut h, 0, 0, 64 * MIB, HPA, 0)?;
            m.add_slot(&mut h, 1, 8 * GIB, 8 * MIB, HPA + 0x1000, 0)?;
            m.acquire_root(&mut h, 0)?;
            m.topup(&mut h)?;
            m.page_fault(&mut h, 0, 8 * GIB, Access::WRITE)?;
            m.enable_dirty_log(&mut h, 0)?;
            m.topup(&mut h)?;
            m.page_fault(&mut h, 0, 0x1000, Access::WRITE)?;
            Ok(())
        })();
        check(&m, &h);
        let done = r.is_ok();
        if !done {
            assert_eq!(r, Err(Error::OutOfMemory));
        }
        teardown(m, h);
        if done {
            assert!(k > 20);
            break;
        }
    }
}

/// A host that breaks its contract: frames that are not aligned.
struct BadHost(crate::sim::SimHost);

impl crate::Host for BadHost {
    fn alloc_frame(&mut self) -> Option<u64> {
        self.0.alloc_frame().map(|f| f + 8)
    }
    fn free_frame(&mut self, hpa: u64) {
        self.0.free_frame(hpa)
    }
    fn read_u64(&self, hpa: u64) -> u64 {
        self.0.read_u64(hpa)
    }
    fn write_u64(&mut self, hpa: u64, val: u64) {
        self.0.write_u64(hpa, val)
    }
}

#[test]
fn a_host_breaking_its_contract_is_an_internal_error() {
    let mut h = BadHost(host());
    let mut m = Mmu::new(EPT);
    assert_internal(|| m.acquire_root(&mut h, 0));
    assert_internal(|| m.add_slot(&mut h, 0, 0, 8 * MIB, HPA, 0));
}
