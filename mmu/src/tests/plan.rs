//! The plan items, in the spec's order.

use super::common::*;
use crate::entry::{ept, npt};
use crate::*;

// ---- SPTE encoding (15, 16, 20) -------------------------------------------------------------

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

// ---- fault path (22) -------------------------------------------------------------------------

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

// ---- roots (31) -------------------------------------------------------------------------------

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

// ---- limits (38) and teardown -------------------------------------------------------------------

#[test]
fn p38_lowering_the_limit_zaps_oldest_first_skipping_roots() {
    let (mut m, mut h) = domain(EPT4K, 64 * MIB);
    m.set_requested_pages(&mut h, 100).unwrap();
    for k in 0..32 {
        fault(&mut m, &mut h, k * 2 * MIB, Access::WRITE);
    }
    // root + L3 + L2 + 32 L1
    assert_eq!(m.n_used(), 35);
    m.set_requested_pages(&mut h, 10).unwrap();
    check(&m, &h);
    assert_eq!(m.n_used(), 10);
    assert_eq!(m.n_max(), 10);
    // The root survived (it is pinned), so did the newest L1 tables; the oldest went first.
    assert!(!m.needs_reload(0));
    assert!(m.lookup(&h, 31 * 2 * MIB).is_none(), "upper levels were zapped");
    assert!(m.stats().reclaims >= 25);
    // The surviving (orphaned) L1 tables are re-linked, not rebuilt.
    let before = m.stats().pages_allocated;
    fault(&mut m, &mut h, 31 * 2 * MIB, Access::READ);
    assert_eq!(m.stats().pages_allocated - before, 2, "L3 and L2 only");
    teardown(m, h);
}

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

// ---- large pages (11) ---------------------------------------------------------------------------

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
