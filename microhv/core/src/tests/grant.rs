//! Grant tables (#15): every operation's errors, mappings through the MMU with their
//! permissions and flushes, copies, frame ownership when either side goes away, the slot
//! limit, and a property test of random operations across three domUs against a model.

use super::*;
use crate::exit::Access;
use crate::grant::{GRANT_ENTRIES, GRANT_MAPS, Map};
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

const WIN: u64 = GRANT_WINDOW_GPA;
/// Where the tests put a domU's hypercall structures (in its first 2 MiB).
const ARGS: u64 = 0x1_0000;

fn set(hv: &mut TestHv, d: usize, r: u64, peer: u64, gpa: u64, flags: u64) -> i64 {
    call(hv, d, Op::GrantSet as u64, [r, peer, gpa, flags, 0])
}

fn map(hv: &mut TestHv, d: usize, granter: u64, r: u64, gpa: u64, flags: u64) -> i64 {
    call(hv, d, Op::GrantMap as u64, [granter, r, gpa, flags, 0])
}

fn unmap(hv: &mut TestHv, d: usize, gpa: u64) -> i64 {
    call(hv, d, Op::GrantUnmap as u64, [gpa, 0, 0, 0, 0])
}

fn revoke(hv: &mut TestHv, d: usize, r: u64) -> i64 {
    call(hv, d, Op::GrantRevoke as u64, [r, 0, 0, 0, 0])
}

fn copy(hv: &mut TestHv, d: usize, to: bool, a: [u64; 5]) -> i64 {
    call(hv, d, if to { Op::GrantCopyTo } else { Op::GrantCopyFrom } as u64, a)
}

fn query(hv: &mut TestHv, d: usize, r: u64) -> GrantStatus {
    let at = if d == 0 { SCRATCH } else { ARGS };
    assert_eq!(call(hv, d, Op::GrantQuery as u64, [r, at, 0, 0, 0]), 0);
    get(hv, d, at)
}

fn destroy(hv: &mut TestHv, d: usize) {
    assert_eq!(call(hv, 0, Op::DomainDestroy as u64, [d as u64, 0, 0, 0, 0]), 0);
}

/// Free frames plus what dom0's MMU holds (its grant slots' metadata and tables come and go).
fn held(hv: &TestHv) -> u64 {
    hv.frames.free_frames() + hv.domains[0].mmu.frames_held()
}

/// The host frame of domain `d`'s page at `gpa`, RAM or grant mapping.
fn frame(hv: &TestHv, d: usize, gpa: u64) -> Option<u64> {
    hv.domains[d].mmu.translate(gpa)
}

#[test]
fn grant_set_revoke_and_query_errors_follow_the_abi() {
    let mut hv = world();
    let (a, b) = (create(&mut hv, "a"), create(&mut hv, "b"));
    let ab = b as u64;
    for (r, peer, gpa, flags, want) in [
        (0, 99, 0x1000, 0, ESRCH),
        (0, u64::MAX, 0x1000, 0, ESRCH),
        (0, u64::from(DOMID_INVALID), 0x1000, 0, ESRCH),
        (GRANT_ENTRIES as u64, ab, 0x1000, 0, EINVAL),
        (u64::MAX, ab, 0x1000, 0, EINVAL),
        (0, ab, 0x1000, 2, EINVAL),
        (0, ab, 0x1001, 0, EINVAL),
        (0, ab, 2 << 20, 0, EFAULT),
        (0, ab, !0xfff, 0, EFAULT),
        (0, ab, WIN, 0, EFAULT),
        (0, ab, 0xfee0_0000, 0, EFAULT),
    ] {
        assert_eq!(set(&mut hv, a, r, peer, gpa, flags), want, "{r} {peer} {gpa:#x} {flags}");
    }
    assert!(hv.grants.tables[a].entries.iter().all(Option::is_none), "refused calls set nothing");
    assert_eq!(set(&mut hv, a, 0, ab, 0x1000, 0), 0);
    assert_eq!(set(&mut hv, a, 0, ab, 0x2000, 0), EEXIST, "in use: revoke first");
    assert_eq!(set(&mut hv, a, 63, a as u64, 0x1f_f000, GRANT_READONLY), 0, "to itself");
    let st = query(&mut hv, a, 63);
    let want = GrantStatus {
        state: GRANT_STATE_GRANTED,
        peer: a as u32,
        flags: GRANT_READONLY as u32,
        mapped: 0,
        gpa: 0x1f_f000,
    };
    assert_eq!(st, want);
    assert_eq!(query(&mut hv, a, 5), GrantStatus::new_zeroed(), "a free entry is not an error");
    let q = Op::GrantQuery as u64;
    assert_eq!(call(&mut hv, a, q, [64, ARGS, 0, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, a, q, [0, ARGS + 4, 0, 0, 0]), EINVAL, "misaligned");
    assert_eq!(call(&mut hv, a, q, [0, (2 << 20) - 8, 0, 0, 0]), EFAULT);
    for r in [5, 64, u64::MAX] {
        assert_eq!(revoke(&mut hv, a, r), EINVAL, "{r}");
    }
    assert_eq!(revoke(&mut hv, b, 0), EINVAL, "another domain's entry is not the caller's");
    assert_eq!(revoke(&mut hv, a, 0), 0);
    assert_eq!(query(&mut hv, a, 0).state, GRANT_STATE_FREE);
    // Every entry can be used; there is no allocation, so no "full" beyond the last reference.
    for r in 0..GRANT_ENTRIES as u64 {
        assert_eq!(set(&mut hv, a, r, 0, r * 0x1000, 0), if r == 63 { EEXIST } else { 0 });
    }
}

#[test]
fn grant_map_and_unmap_errors_follow_the_abi() {
    let mut hv = world();
    let (a, b, c) = (create(&mut hv, "a"), create(&mut hv, "b"), create(&mut hv, "c"));
    assert_eq!(set(&mut hv, a, 0, b as u64, 0x5000, 0), 0);
    assert_eq!(set(&mut hv, a, 1, b as u64, 0x6000, 0), 0);
    let ga = a as u64;
    for (granter, r, gpa, flags, want) in [
        (99, 0, WIN, 0, ESRCH),
        (ga, 64, WIN, 0, EINVAL),
        (ga, 0, WIN, 2, EINVAL),
        (ga, 0, 0x5000, 0, EINVAL),
        (ga, 0, 0x20_0000, 0, EINVAL),
        (ga, 0, WIN + 8, 0, EINVAL),
        (ga, 0, WIN - 0x1000, 0, EINVAL),
        (ga, 0, WIN + GRANT_WINDOW_BYTES, 0, EINVAL),
        (ga, 0, !0xfff, 0, EINVAL),
        (ga, 2, WIN, 0, EINVAL),
    ] {
        assert_eq!(map(&mut hv, b, granter, r, gpa, flags), want, "{granter} {r} {gpa:#x}");
    }
    assert_eq!(map(&mut hv, c, ga, 0, WIN, 0), EPERM, "granted to b, not c");
    assert_eq!(map(&mut hv, 0, ga, 0, WIN, 0), EPERM, "dom0 included");
    assert!(hv.grants.tables.iter().all(|t| t.maps.iter().all(|&m| m == Map::Free)));
    assert_eq!(map(&mut hv, b, ga, 0, WIN, 0), 0);
    assert_eq!(map(&mut hv, b, ga, 0, WIN + 0x1000, 0), EEXIST, "a grant maps once");
    assert_eq!(map(&mut hv, b, ga, 1, WIN, 0), EEXIST, "the window page is taken");
    assert_eq!(query(&mut hv, a, 0).mapped, 1);
    assert_eq!(revoke(&mut hv, a, 0), EBUSY);
    assert_eq!(set(&mut hv, a, 0, c as u64, 0x7000, 0), EEXIST, "a mapped grant cannot change");
    assert_eq!(unmap(&mut hv, c, WIN), EINVAL, "not c's mapping");
    assert_eq!(unmap(&mut hv, b, WIN + 0x1000), EINVAL, "nothing there");
    assert_eq!(unmap(&mut hv, b, WIN + 8), EINVAL);
    assert_eq!(unmap(&mut hv, b, 0x5000), EINVAL, "RAM is no grant mapping");
    assert_eq!(unmap(&mut hv, b, WIN), 0);
    assert_eq!(unmap(&mut hv, b, WIN), EINVAL, "unmapped twice");
    assert_eq!(query(&mut hv, a, 0).mapped, 0);
    assert_eq!(revoke(&mut hv, a, 0), 0);
    assert_eq!(map(&mut hv, b, ga, 0, WIN, 0), EINVAL, "map after revoke");
    // A page the granter no longer has (its memory shrank) cannot be mapped or copied.
    let big = create_with(&mut hv, &create_args("big", 4 << 20, 1, 0)) as usize;
    assert_eq!(set(&mut hv, big, 0, b as u64, 0x30_0000, 0), 0);
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [big as u64, 2 << 20, 0, 0, 0]), 0);
    assert_eq!(map(&mut hv, b, big as u64, 0, WIN, 0), EFAULT);
    assert_eq!(copy(&mut hv, b, false, [big as u64, 0, 0, ARGS, 8]), EFAULT);
    assert_eq!(query(&mut hv, big, 0).state, GRANT_STATE_GRANTED, "the entry stays");
    assert_eq!(revoke(&mut hv, big, 0), 0);
}

#[test]
fn grant_copies_move_bytes_both_ways_within_the_grant() {
    let mut hv = world();
    let (a, b, c) = (create(&mut hv, "a"), create(&mut hv, "b"), create(&mut hv, "c"));
    put(&mut hv, a, 0x5000, b"granted page");
    assert_eq!(set(&mut hv, a, 0, b as u64, 0x5000, 0), 0);
    assert_eq!(set(&mut hv, a, 1, b as u64, 0x6000, GRANT_READONLY), 0);
    let ga = a as u64;
    assert_eq!(copy(&mut hv, b, false, [ga, 0, 8, 0x9000, 4]), 4);
    assert_eq!(get_bytes(&hv, b, 0x9000, 4), b"page");
    put(&mut hv, b, 0x9100, b"written by b");
    assert_eq!(copy(&mut hv, b, true, [ga, 0, 4090, 0x9100, 6]), 6, "up to the page's end");
    assert_eq!(get_bytes(&hv, a, 0x5ffa, 6), b"writte");
    for (to, args, want) in [
        (false, [99, 0, 0, 0x9000, 4], ESRCH),
        (false, [ga, 64, 0, 0x9000, 4], EINVAL),
        (false, [ga, 0, 0, 0x9000, 4097], E2BIG),
        (false, [ga, 0, 4093, 0x9000, 4], EINVAL),
        (false, [ga, 0, u64::MAX, 0x9000, 1], EINVAL),
        (false, [ga, 2, 0, 0x9000, 4], EINVAL),
        (true, [ga, 1, 0, 0x9100, 4], EPERM),
        (false, [ga, 0, 0, (2 << 20) - 2, 4], EFAULT),
        (false, [ga, 0, 0, WIN, 4], EFAULT),
        (true, [ga, 0, 0, 2 << 20, 4], EFAULT),
    ] {
        assert_eq!(copy(&mut hv, b, to, args), want, "{to} {args:?}");
    }
    assert_eq!(copy(&mut hv, c, false, [ga, 0, 0, 0x9000, 4]), EPERM, "granted to b");
    assert_eq!(copy(&mut hv, b, false, [ga, 1, 0, 0x9000, 0]), 0, "an empty copy");
    // A read-only grant is read; a copy through a mapped grant needs no unmap.
    assert_eq!(map(&mut hv, b, ga, 0, WIN, 0), 0);
    assert_eq!(copy(&mut hv, b, false, [ga, 0, 0, 0x9200, 12]), 12);
    assert_eq!(get_bytes(&hv, b, 0x9200, 12), b"granted page");
    // The source of a copy to a grant may be any memory of the caller's, a mapping included.
    assert_eq!(copy(&mut hv, b, true, [ga, 0, 100, WIN, 7]), 7);
    assert_eq!(get_bytes(&hv, a, 0x5064, 7), b"granted");
}

/// Runs `steps` nested page faults in domU `u` (then a triple fault unless it stopped), with
/// dom0 yielding meanwhile.
fn faults(hv: &mut TestHv, u: usize, steps: &[(u64, bool)]) {
    for &(gpa, write) in steps {
        let access = Access { read: !write, write, ..Access::default() };
        let exit = Exit::NestedPageFault { gpa, access };
        hv.backend.push(u as u32, 0, Step { exit, gprs: None, cpl: 0 });
    }
    hv.backend.push(u as u32, 0, Step { exit: Exit::TripleFault, gprs: None, cpl: 0 });
    dom0_yields_then_powers_off(hv, steps.len() + 3);
    assert_eq!(run_until_stop(hv).status, StopStatus::Ok);
}

#[test]
fn a_mapping_is_the_granters_frame_and_a_write_through_a_read_only_one_stops_the_grantee() {
    let mut hv = world();
    let a = create(&mut hv, "a");
    let b = running(&mut hv, "b");
    put(&mut hv, a, 0x5000, b"read-only page");
    put(&mut hv, a, 0x6000, b"writable page");
    assert_eq!(set(&mut hv, a, 3, b as u64, 0x5000, GRANT_READONLY), 0);
    assert_eq!(set(&mut hv, a, 4, b as u64, 0x6000, 0), 0);
    assert_eq!(set(&mut hv, a, 5, b as u64, 0x7000, 0), 0);
    assert_eq!(map(&mut hv, b, a as u64, 3, WIN, 0), EPERM, "a read-only grant, mapped writable");
    assert_eq!(map(&mut hv, b, a as u64, 3, WIN, GRANT_READONLY), 0);
    assert_eq!(map(&mut hv, b, a as u64, 4, WIN + 0x1000, 0), 0);
    assert_eq!(map(&mut hv, b, a as u64, 5, WIN + 0x2000, GRANT_READONLY), 0, "mapped read-only");
    assert_eq!(frame(&hv, b, WIN), frame(&hv, a, 0x5000));
    assert_eq!(frame(&hv, b, WIN + 0x1000), frame(&hv, a, 0x6000));
    let ro = |hv: &TestHv, i| hv.domains[b].mmu.slot(MAX_RAM_SLOTS + i).map(|s| s.flags);
    assert_eq!((ro(&hv, 0), ro(&hv, 1), ro(&hv, 2)), (Some(1), Some(0), Some(1)));
    assert_eq!(get_bytes(&hv, b, WIN, 14), b"read-only page", "microhv reads through it too");
    // The guest reads the read-only page, writes the writable one, then writes the read-only one.
    faults(&mut hv, b, &[(WIN, false), (WIN + 0x1000, true), (WIN + 0x20, true)]);
    let (ro_page, rw_page) = (frame(&hv, a, 0x5000), frame(&hv, a, 0x6000));
    let host = crate::mem::Machine { frames: &mut hv.frames, mem: &mut hv.mem };
    let m = hv.domains[b].mmu.lookup(&host, WIN).expect("mapped");
    assert_eq!((Some(m.hpa), m.writable), (ro_page, false));
    let m = hv.domains[b].mmu.lookup(&host, WIN + 0x1000).expect("mapped");
    assert_eq!((Some(m.hpa), m.writable), (rw_page, true));
    assert_eq!(hv.domains[b].state, Some(DomainState::Crashed));
    assert_eq!(hv.domains[b].crash, CrashReason::OutsideMemory, "the defined outcome");
    assert_eq!(hv.domains[b].mmu.stats().faults_read_only, 1);
    assert_eq!(hv.domains[a].state, Some(DomainState::Created), "the granter is untouched");
    assert_eq!(get_bytes(&hv, a, 0x5000, 14), b"read-only page");
}

#[test]
fn an_unmap_leaves_a_flush_that_runs_before_the_grantee_enters_again() {
    let mut hv = world();
    let a = create(&mut hv, "a");
    let b = running(&mut hv, "b");
    assert_eq!(set(&mut hv, a, 0, b as u64, 0x5000, 0), 0);
    assert_eq!(map(&mut hv, b, a as u64, 0, WIN, 0), 0);
    // b reads the mapping, unmaps it, and reads there again.
    let read =
        Exit::NestedPageFault { gpa: WIN, access: Access { read: true, ..Access::default() } };
    hv.backend.push(b as u32, 0, Step { exit: read, gprs: None, cpl: 0 });
    push(
        &mut hv,
        b as u32,
        Exit::Hypercall,
        Gprs { rax: Op::GrantUnmap as u64, rdi: WIN, ..Gprs::default() },
    );
    hv.backend.push(b as u32, 0, Step { exit: read, gprs: None, cpl: 0 });
    dom0_yields_then_powers_off(&mut hv, 6);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let dom = &hv.domains[b];
    assert_eq!(dom.vcpus[0].gprs.rax, 0, "unmapped");
    assert_eq!(dom.mmu.stats().faults_fixed, 1);
    // The flush the unmap owed was executed before b's next entry (the root load's came
    // first), which then found nothing at the address: a domain without a PC stops there.
    assert!(!dom.mmu.flush_pending());
    let flushes = dom.vcpus[0].arch.as_ref().expect("vcpu").flushes;
    assert_eq!((flushes, dom.counters.tlb_flushes), (2, 2));
    assert_eq!((dom.state, dom.crash), (Some(DomainState::Crashed), CrashReason::OutsideMemory));
    assert_eq!(dom.mmu.stats().faults_no_slot, 1);
}

#[test]
fn destroying_the_granter_while_mapped_keeps_the_frame_until_the_last_unmap() {
    let mut hv = world();
    let start = held(&hv);
    let a = create(&mut hv, "a");
    let (b, c) = (create(&mut hv, "b"), create(&mut hv, "c"));
    put(&mut hv, a, 0x5000, b"still here");
    assert_eq!(set(&mut hv, a, 0, b as u64, 0x5000, 0), 0);
    assert_eq!(set(&mut hv, a, 1, c as u64, 0x5000, GRANT_READONLY), 0, "one page, two grants");
    assert_eq!(map(&mut hv, b, a as u64, 0, WIN, 0), 0);
    assert_eq!(map(&mut hv, c, a as u64, 1, WIN + 0x5000, GRANT_READONLY), 0);
    let f = frame(&hv, a, 0x5000).expect("a's page");
    destroy(&mut hv, a);
    assert!(hv.frames.is_allocated(f), "still mapped by b and c");
    assert_eq!(hv.grants.tables[b].maps[0], Map::Orphan);
    assert_eq!(hv.grants.tables[c].maps[0], Map::Orphan);
    assert_eq!(get_bytes(&hv, b, WIN, 10), b"still here");
    // A new domain (a's id, a's freed frames) never gets the mapped frame.
    let rest = (hv.frames.free_frames() - 256) * 4096;
    let n = create_with(&mut hv, &create_args("n", rest, 1, 0));
    assert!(n > 0, "{n}: all free memory but 1 MiB");
    let n = n as usize;
    assert_eq!(n, a);
    let pages = hv.domains[n].mem_bytes / 4096;
    assert!((0..pages).all(|p| frame(&hv, n, p * 4096) != Some(f)));
    assert_eq!(map(&mut hv, b, n as u64, 0, WIN + 0x1000, 0), EINVAL, "the grant went with a");
    destroy(&mut hv, n);
    assert_eq!(unmap(&mut hv, b, WIN), 0);
    assert!(hv.frames.is_allocated(f), "c still maps it");
    assert_eq!(get_bytes(&hv, c, WIN + 0x5000, 10), b"still here");
    // Destroying the last grantee frees it with the rest.
    destroy(&mut hv, c);
    assert!(!hv.frames.is_allocated(f));
    destroy(&mut hv, b);
    assert_eq!(held(&hv), start);
}

#[test]
fn destroying_the_grantee_unmaps_and_its_successor_inherits_nothing() {
    let mut hv = world();
    let start = held(&hv);
    let a = create(&mut hv, "a");
    for round in 0..3 {
        let b = create(&mut hv, "b");
        assert_eq!(set(&mut hv, a, 0, b as u64, 0x5000, 0), 0, "round {round}");
        assert_eq!(set(&mut hv, 0, 0, b as u64, 0x20_0000, 0), 0);
        assert_eq!(map(&mut hv, b, a as u64, 0, WIN, 0), 0);
        assert_eq!(map(&mut hv, b, 0, 0, WIN + 0x1000, 0), 0);
        assert_eq!(map(&mut hv, a, b as u64, 0, WIN, 0), EINVAL);
        assert_eq!((query(&mut hv, a, 0).mapped, query(&mut hv, 0, 0).mapped), (1, 1));
        destroy(&mut hv, b);
        let gone = u32::from(DOMID_INVALID as u16);
        for d in [a, 0] {
            let st = query(&mut hv, d, 0);
            assert_eq!((st.peer, st.mapped), (gone, 0), "round {round}: {d}'s grant");
        }
        let next = create(&mut hv, "next");
        assert_eq!(next, b);
        assert_eq!(map(&mut hv, next, a as u64, 0, WIN, 0), EPERM, "offered to the old b");
        assert_eq!(copy(&mut hv, next, false, [0, 0, 0, ARGS, 8]), EPERM);
        assert_eq!(revoke(&mut hv, a, 0), 0);
        assert_eq!(revoke(&mut hv, 0, 0), 0);
        destroy(&mut hv, next);
    }
    destroy(&mut hv, a);
    assert_eq!(held(&hv), start);
}

#[test]
fn shrinking_the_granter_orphans_the_frames_it_gave_up() {
    let mut hv = world();
    let start = held(&hv);
    let a = create_with(&mut hv, &create_args("a", 4 << 20, 1, 0)) as usize;
    let b = create(&mut hv, "b");
    put(&mut hv, a, 0x30_0000, b"top");
    assert_eq!(set(&mut hv, a, 0, b as u64, 0x30_0000, 0), 0);
    assert_eq!(set(&mut hv, a, 1, b as u64, 0x1000, 0), 0);
    assert_eq!(map(&mut hv, b, a as u64, 0, WIN, 0), 0);
    assert_eq!(map(&mut hv, b, a as u64, 1, WIN + 0x1000, 0), 0);
    let (top, low) = (frame(&hv, a, 0x30_0000).expect("a's"), frame(&hv, a, 0x1000));
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [a as u64, 2 << 20, 0, 0, 0]), 0);
    assert!(hv.frames.is_allocated(top));
    assert_eq!(hv.grants.tables[b].maps[..2], [Map::Orphan, Map::Grant(a as u8, 1)]);
    assert_eq!(frame(&hv, a, 0x1000), low, "the page a kept is still a's and still mapped");
    assert_eq!(query(&mut hv, a, 0).mapped, 0, "no longer a's frame: revocable");
    assert_eq!(revoke(&mut hv, a, 0), 0);
    assert_eq!(revoke(&mut hv, a, 1), EBUSY);
    // Grown again, a's page at that address is a new frame; the old one is b's until unmapped.
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [a as u64, 4 << 20, 0, 0, 0]), 0);
    assert_ne!(frame(&hv, a, 0x30_0000), Some(top));
    assert_eq!(get_bytes(&hv, b, WIN, 3), b"top");
    assert_eq!(unmap(&mut hv, b, WIN), 0);
    assert!(!hv.frames.is_allocated(top));
    destroy(&mut hv, a);
    destroy(&mut hv, b);
    assert_eq!(held(&hv), start);
}

#[test]
fn a_flood_of_maps_stops_at_the_slot_limit_and_every_mapping_faults_in_at_the_floor_cap() {
    let mut hv = world();
    let start = held(&hv);
    let a = create(&mut hv, "a");
    let b = running(&mut hv, "b");
    for r in 0..GRANT_ENTRIES as u64 {
        assert_eq!(set(&mut hv, a, r, b as u64, r * 0x1000, 0), 0);
    }
    for r in 0..GRANT_MAPS as u64 {
        assert_eq!(map(&mut hv, b, a as u64, r, WIN + r * 0x10_0000, 0), 0, "{r}");
    }
    assert_eq!(map(&mut hv, b, a as u64, 16, WIN + 0xff_f000, 0), ENOSPC);
    assert_eq!(unmap(&mut hv, b, WIN + 0x30_0000), 0);
    assert_eq!(map(&mut hv, b, a as u64, 16, WIN + 0xff_f000, 0), 0, "a slot came free");
    // With its cap at the MMU floor, the guest touches every mapping (one per MiB: 8 distinct
    // 2 MiB regions, a leaf table each) and its RAM: every fault is fixed under the cap.
    let floor = mmu::MIN_MMU_PAGES;
    assert_eq!(call(&mut hv, 0, Op::MmuPagesSet as u64, [b as u64, floor, 0, 0, 0]), 0);
    let mut touch: Vec<(u64, bool)> =
        (0..GRANT_MAPS as u64).filter(|&r| r != 3).map(|r| (WIN + r * 0x10_0000, true)).collect();
    touch.push((WIN + 0xff_f000, false));
    touch.push((0x10_0000, true));
    faults(&mut hv, b, &touch);
    let dom = &hv.domains[b];
    assert_eq!(dom.crash, CrashReason::TripleFault, "every fault fixed, the script's end reached");
    assert!(dom.mmu.n_used() <= floor);
    assert_eq!(dom.mmu.stats().faults_fixed as usize, touch.len());
    destroy(&mut hv, b);
    destroy(&mut hv, a);
    assert_eq!(held(&hv), start);
}

// ---- a model -----------------------------------------------------------------------------------

/// A mapping: the granter and reference (`None` once orphaned), read-only, the frame.
type Mapped = (Option<(usize, u64)>, bool, u64);

/// Three domUs (ids 1..=3) of 4 MiB; grants and mappings as the ABI describes them.
#[derive(Default)]
struct Model {
    /// (granter, ref) → (peer, gpa, read-only).
    entries: BTreeMap<(usize, u64), (usize, u64, bool)>,
    /// (grantee, window page) → what is mapped there.
    maps: BTreeMap<(usize, u64), Mapped>,
    /// RAM of each domU (0: destroyed).
    mem: [u64; 4],
}

#[derive(Debug, Clone)]
enum Step_ {
    Set {
        d: usize,
        r: u64,
        peer: usize,
        page: u64,
        ro: bool,
    },
    Revoke {
        d: usize,
        r: u64,
    },
    /// With `aim`, `g` picks one of the grants offered to `d` instead (if there is one), so
    /// that most maps and copies get past the first checks.
    Map {
        d: usize,
        g: usize,
        r: u64,
        at: u64,
        ro: bool,
        aim: bool,
    },
    Unmap {
        d: usize,
        at: u64,
    },
    Copy {
        d: usize,
        g: usize,
        r: u64,
        to: bool,
        offset: u64,
        len: u64,
        aim: bool,
    },
    Recreate {
        d: usize,
    },
    Resize {
        d: usize,
        mib: u64,
    },
}

const PAGES: [u64; 4] = [0x1000, 0x20_0000, 0x30_0000, 0x3f_f000];

fn step() -> impl Strategy<Value = Step_> {
    let d = 1usize..4;
    // Mostly the domUs and references in use, so that most steps get past the first checks;
    // dom0 (no grants here), a domain that does not exist and a reference out of range now
    // and then.
    let dom = prop_oneof![8 => 1usize..4, 1 => Just(0usize), 1 => Just(4usize)];
    let r = prop_oneof![9 => 0u64..2, 1 => Just(64u64)];
    let aim = prop_oneof![3 => Just(true), 1 => Just(false)];
    prop_oneof![
        6 => (d.clone(), r.clone(), dom.clone(), 0usize..4, any::<bool>())
            .prop_map(|(d, r, peer, p, ro)| Step_::Set { d, r, peer, page: PAGES[p], ro }),
        1 => (d.clone(), r.clone()).prop_map(|(d, r)| Step_::Revoke { d, r }),
        6 => (d.clone(), dom.clone(), r.clone(), 0u64..4, any::<bool>(), aim.clone())
            .prop_map(|(d, g, r, at, ro, aim)| Step_::Map { d, g, r, at, ro, aim }),
        3 => (d.clone(), 0u64..4).prop_map(|(d, at)| Step_::Unmap { d, at }),
        3 => (d.clone(), (dom, r, aim), any::<bool>(), 0u64..4100, 0u64..64).prop_map(
            |(d, (g, r, aim), to, offset, len)| Step_::Copy { d, g, r, to, offset, len, aim }
        ),
        1 => d.clone().prop_map(|d| Step_::Recreate { d }),
        1 => (d, prop_oneof![Just(2u64), Just(4)]).prop_map(|(d, mib)| Step_::Resize { d, mib }),
    ]
}

impl Model {
    fn alive(&self, d: usize) -> bool {
        d == 0 || self.mem.get(d).is_some_and(|&m| m > 0)
    }

    /// `(g, r)`, or with `aim` the `g`-th grant (modulo their number) offered to `d`.
    fn aim(&self, d: usize, g: usize, r: u64, aim: bool) -> (usize, u64) {
        let offered: Vec<(usize, u64)> =
            self.entries.iter().filter(|e| e.1.0 == d).map(|e| *e.0).collect();
        if aim && !offered.is_empty() { offered[g % offered.len()] } else { (g, r) }
    }

    fn mapped(&self, g: usize, r: u64) -> bool {
        self.maps.values().any(|m| m.0 == Some((g, r)))
    }

    /// Applies a step to the model and to `hv`; returns (model's result, hv's result).
    fn apply(&mut self, hv: &mut TestHv, s: &Step_) -> (i64, i64) {
        match *s {
            Step_::Set { d, r, peer, page, ro } => {
                let want = if !self.alive(peer) {
                    ESRCH
                } else if r >= 64 {
                    EINVAL
                } else if page >= self.mem[d] {
                    EFAULT
                } else {
                    match self.entries.entry((d, r)) {
                        Entry::Occupied(_) => EEXIST,
                        Entry::Vacant(v) => {
                            v.insert((peer, page, ro));
                            0
                        }
                    }
                };
                (want, set(hv, d, r, peer as u64, page, u64::from(ro)))
            }
            Step_::Revoke { d, r } => {
                let want = if r >= 64 || !self.entries.contains_key(&(d, r)) {
                    EINVAL
                } else if self.mapped(d, r) {
                    EBUSY
                } else {
                    self.entries.remove(&(d, r));
                    0
                };
                (want, revoke(hv, d, r))
            }
            Step_::Map { d, g, r, at, ro, aim } => {
                let (g, r) = self.aim(d, g, r, aim);
                let gpa = WIN + at * 0x1000;
                let want = match self.entries.get(&(g, r)).copied() {
                    _ if !self.alive(g) => ESRCH,
                    None => EINVAL,
                    Some((peer, _, _)) if peer != d => EPERM,
                    Some((_, _, true)) if !ro => EPERM,
                    Some(_) if self.mapped(g, r) => EEXIST,
                    Some((_, page, _)) if page >= self.mem[g] => EFAULT,
                    Some((_, page, gro)) => match self.maps.entry((d, at)) {
                        Entry::Occupied(_) => EEXIST,
                        Entry::Vacant(v) => {
                            let f = frame(hv, g, page).expect("RAM");
                            v.insert((Some((g, r)), gro || ro, f));
                            0
                        }
                    },
                };
                (want, map(hv, d, g as u64, r, gpa, u64::from(ro)))
            }
            Step_::Unmap { d, at } => {
                let want = if self.maps.remove(&(d, at)).is_some() { 0 } else { EINVAL };
                (want, unmap(hv, d, WIN + at * 0x1000))
            }
            Step_::Copy { d, g, r, to, offset, len, aim } => {
                let (g, r) = self.aim(d, g, r, aim);
                let entry = self.entries.get(&(g, r)).copied();
                let want = if !self.alive(g) {
                    ESRCH
                } else if r >= 64 || offset + len > 4096 || entry.is_none() {
                    EINVAL
                } else if entry.is_some_and(|e| e.0 != d || (to && e.2)) {
                    EPERM
                } else if entry.is_some_and(|e| e.1 >= self.mem[g]) {
                    EFAULT
                } else {
                    len as i64
                };
                let pattern: Vec<u8> = (0..len).map(|i| (i as u8) ^ 0x5a).collect();
                put(hv, d, ARGS, &pattern);
                let got = copy(hv, d, to, [g as u64, r, offset, ARGS, len]);
                if got > 0 && to {
                    let (_, page, _) = entry.expect("granted");
                    assert_eq!(get_bytes(hv, g, page + offset, len as usize), pattern);
                }
                (want, got)
            }
            Step_::Recreate { d } => {
                if self.mem[d] > 0 {
                    self.gone(d);
                    destroy(hv, d);
                }
                let got = create_with(hv, &create_args(&std::format!("d{d}"), 4 << 20, 1, 0));
                self.mem[d] = 4 << 20;
                (d as i64, got)
            }
            Step_::Resize { d, mib } => {
                if self.mem[d] == 0 {
                    return (0, 0);
                }
                if mib << 20 < self.mem[d] {
                    self.shrink(d, mib << 20);
                }
                self.mem[d] = mib << 20;
                (0, call(hv, 0, Op::MemSet as u64, [d as u64, mib << 20, 0, 0, 0]))
            }
        }
    }

    /// Mappings of `d`'s pages at or above `end` become orphans.
    fn shrink(&mut self, d: usize, end: u64) {
        for m in self.maps.values_mut() {
            if let Some((g, r)) = m.0
                && g == d
                && self.entries[&(g, r)].1 >= end
            {
                m.0 = None;
            }
        }
    }

    /// Domain `d` is destroyed.
    fn gone(&mut self, d: usize) {
        self.maps.retain(|k, _| k.0 != d);
        self.shrink(d, 0);
        self.entries.retain(|k, _| k.0 != d);
        for e in self.entries.values_mut().filter(|e| e.0 == d) {
            e.0 = DOMID_INVALID as usize;
        }
        self.mem[d] = 0;
    }

    /// What `hv` holds must be what the model says, and no mapping may reach a frame its
    /// domain was not granted.
    fn check(&self, hv: &TestHv) -> Result<(), TestCaseError> {
        for d in 0..4 {
            let t = &hv.grants.tables[d];
            let mut seen = 0;
            for i in 0..GRANT_MAPS {
                let slot = hv.domains[d].mmu.slot(MAX_RAM_SLOTS + i);
                let Some(s) = slot.filter(|_| t.maps[i] != Map::Free) else {
                    prop_assert_eq!(t.maps[i], Map::Free, "d{} map {}: no slot", d, i);
                    continue;
                };
                seen += 1;
                let at = (s.gpa - WIN) / 0x1000;
                let Some(&(grant, ro, f)) = self.maps.get(&(d, at)) else {
                    return Err(TestCaseError::fail(std::format!("d{d}: unknown mapping at {at}")));
                };
                prop_assert_eq!((s.hpa, s.size, s.flags == mmu::SLOT_READ_ONLY), (f, 4096, ro));
                match (t.maps[i], grant) {
                    (Map::Grant(g, r), Some((mg, mr))) => {
                        prop_assert_eq!((usize::from(g), u64::from(r)), (mg, mr));
                        let peers = hv.grants.tables[mg].granted_to;
                        prop_assert!(peers & (1 << d) != 0, "granted_to misses d{}", d);
                        let (peer, page, _) = self.entries[&(mg, mr)];
                        prop_assert_eq!(peer, d);
                        prop_assert_eq!(frame(hv, mg, page), Some(f), "the granter's frame");
                    }
                    (Map::Orphan, None) => {
                        prop_assert!(hv.frames.is_allocated(f));
                        for e in 0..DOMAINS {
                            let ram =
                                (0..MAX_RAM_SLOTS).filter_map(|id| hv.domains[e].mmu.slot(id));
                            for r in ram {
                                prop_assert!(
                                    !(r.hpa..r.hpa + r.size).contains(&f),
                                    "in d{e}'s RAM"
                                );
                            }
                        }
                    }
                    (m, g) => {
                        return Err(TestCaseError::fail(std::format!("d{d}: {m:?} for {g:?}")));
                    }
                }
            }
            prop_assert_eq!(seen, self.maps.keys().filter(|k| k.0 == d).count());
        }
        for d in 1..4 {
            for r in 0..64u64 {
                let want = self.entries.get(&(d, r)).map(|&(peer, gpa, ro)| (peer as u16, gpa, ro));
                let got =
                    hv.grants.tables[d].entries[r as usize].map(|g| (g.peer, g.gpa, g.readonly));
                prop_assert_eq!(got, want, "d{} ref {}", d, r);
                // `granted_to` is a superset of the peers named (destroy relies on it).
                if let Some(&(peer @ 0..DOMAINS, _, _)) = self.entries.get(&(d, r)) {
                    let peers = hv.grants.tables[d].granted_to;
                    prop_assert!(peers & (1 << peer) != 0, "d{} granted_to misses {}", d, peer);
                }
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random grant operations, resizes and destroy / create cycles across three domUs give the
    /// model's results; every mapping is a frame its domain was granted (or one it kept when the
    /// granter let go), and once everything is destroyed every frame is free again.
    #[test]
    fn grant_operations_match_the_model_and_leak_nothing(
        steps in proptest::collection::vec(step(), 1..80)
    ) {
        let mut hv = world();
        let start = held(&hv);
        let mut model = Model::default();
        for d in 1..4 {
            prop_assert_eq!(model.apply(&mut hv, &Step_::Recreate { d }), (d as i64, d as i64));
        }
        for s in &steps {
            let (want, got) = model.apply(&mut hv, s);
            prop_assert_eq!(got, want, "{:?}", s);
            model.check(&hv)?;
        }
        for d in 1..4 {
            destroy(&mut hv, d);
            model.gone(d);
            model.check(&hv)?;
        }
        prop_assert_eq!(held(&hv), start);
    }
}
