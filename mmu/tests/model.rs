//! Property tests (spec plan items 2, 7, 33, 40 and the "done when"): random sequences
//! of slot changes, guest accesses, limit changes, zaps, root acquire/release, dirty-log
//! operations and allocation failures, run against a reference model. After every step the
//! crate's global invariant checker runs, the frames it holds must equal what the simulated
//! host has outstanding, and every observable result must match the model; at the end, teardown
//! must return every frame.
//!
//! Case count: `PROPTEST_CASES` if set, else 10,000 per test in an optimised build (the CI run,
//! `cargo test -p mmu --release`) and 1,000 in a debug build.

use std::collections::BTreeSet;

use mmu::sim::SimHost;
use mmu::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence};

const NSLOTS: usize = 4;
/// A slot id the MMU must refuse.
const BAD_ID: usize = MAX_SLOTS + 8;
/// vCPUs that access memory, acquire and release roots: ids `0..NVCPUS`.
const NVCPUS: usize = 3;
/// vCPUs that only pin roots across zap-alls ([`Op::Crowd`]), ids `NVCPUS..ALL_VCPUS`: enough
/// to fill any cap up to a few pages above the floor with pinned invalidated roots, so faults
/// get `Retry` and root loads `NoSpace`.
const PINNERS: usize = MIN_MMU_PAGES as usize + 6;
const ALL_VCPUS: usize = NVCPUS + PINNERS;
const _: () = assert!(ALL_VCPUS <= MAX_VCPUS);
/// Most tables one fault can create (levels 3, 2 and 1).
const WALK: u64 = LEVELS as u64 - 1;
const HPA: u64 = 0x40_0000_0000;
/// Guest windows: two share every upper table, one sits just below a 512 GiB boundary so slots
/// there straddle two level-3 tables, one lies above that boundary.
const REGIONS: [u64; 4] = [0, 1 << 30, (1 << 39) - (8 << 20), (1 << 39) + (1 << 21)];
/// Pages per window that operations aim at.
const WINDOW: u64 = 6144;
/// A stride (in pages) that puts each access of a run in the next 2 MiB region, so one run
/// needs many tables.
const STRIDE_2M: u64 = 512 + 7;
/// Most pages in a slot (64 MiB, 32 2 MiB regions), so one slot can need more tables than the
/// floor.
const MAX_NPAGES: u64 = 16384;

#[derive(Clone, Debug)]
enum Op {
    Add {
        id: usize,
        region: usize,
        page: u64,
        npages: u64,
        hpa_shift: u64,
        ro: bool,
    },
    Remove {
        id: usize,
    },
    Move {
        id: usize,
        region: usize,
        page: u64,
    },
    /// `count` guest accesses `stride` pages apart, starting at `page` of a slot chosen by
    /// `slot`, or of `region`.
    Access {
        vcpu: usize,
        slot: usize,
        region: usize,
        page: u64,
        count: u64,
        stride: u64,
        kind: u8,
    },
    Limit(u64),
    ZapRange {
        region: usize,
        page: u64,
        npages: u64,
    },
    ZapAll,
    ZapTable {
        region: usize,
        page: u64,
        level: u32,
    },
    Acquire(usize),
    Release(usize),
    /// The first `n` pinner vCPUs in turn load the current root (acquire, or reload an
    /// invalidated one) and a zap-all invalidates it, so each pins its own invalidated root.
    Crowd(usize),
    /// The first `n` pinner vCPUs drop their roots: reload (taking the shared valid root) or
    /// release.
    Disperse {
        n: usize,
        reload: bool,
    },
    DirtyOn(usize),
    DirtyOff(usize),
    Harvest(usize),
    /// A fault for an access the tables already allow (a stale TLB entry on real hardware).
    Stale {
        vcpu: usize,
        slot: usize,
        page: u64,
        kind: u8,
    },
    /// Make the allocation after the next `n` fail, for the next operation only.
    Oom(u64),
}

fn slot_id() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0..NSLOTS, 1 => Just(BAD_ID)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (slot_id(), 0..REGIONS.len(), prop_oneof![0..WINDOW, (0..WINDOW / 512).prop_map(|p| p * 512)],
              prop_oneof![1 => 1u64..=2048, 1 => Just(1024u64), 2 => 2049u64..=MAX_NPAGES],
              prop_oneof![Just(0u64), Just(1), Just(511), Just(512), Just(262_144)],
              prop::bool::weighted(0.2))
            .prop_map(|(id, region, page, npages, hpa_shift, ro)| Op::Add {
                id, region, page, npages, hpa_shift, ro
            }),
        2 => slot_id().prop_map(|id| Op::Remove { id }),
        2 => (slot_id(), 0..REGIONS.len(), 0..WINDOW)
            .prop_map(|(id, region, page)| Op::Move { id, region, page }),
        20 => (0..NVCPUS, 0..NSLOTS + 1, 0..REGIONS.len(), prop_oneof![3 => 0u64..64, 1 => 0..WINDOW],
               prop_oneof![4 => Just(1u64), 1 => 1u64..600], 0u8..3)
            .prop_map(|(vcpu, slot, region, page, count, kind)| Op::Access { vcpu, slot, region, page, count, stride: 7, kind }),
        // A sweep: one access per 2 MiB region, so one operation can need more tables than the
        // floor.
        8 => (0..NVCPUS, 0..NSLOTS, 0..REGIONS.len(), 0..WINDOW, 8u64..=64, 0u8..3)
            .prop_map(|(vcpu, slot, region, page, count, kind)| Op::Access { vcpu, slot, region, page, count, stride: STRIDE_2M, kind }),
        4 => prop_oneof![1 => Just(0u64), 1 => 1u64..MIN_MMU_PAGES,
                         6 => MIN_MMU_PAGES..MIN_MMU_PAGES + 8, 1 => MIN_MMU_PAGES + 8..60,
                         1 => 60u64..300, 1 => Just(MAX_MMU_PAGES + 1)]
            .prop_map(Op::Limit),
        2 => (0..REGIONS.len(), 0..WINDOW, 0u64..1200)
            .prop_map(|(region, page, npages)| Op::ZapRange { region, page, npages }),
        1 => Just(Op::ZapAll),
        2 => (0..REGIONS.len(), 0..WINDOW, 1u32..=LEVELS)
            .prop_map(|(region, page, level)| Op::ZapTable { region, page, level }),
        2 => (0..NVCPUS).prop_map(Op::Acquire),
        2 => (0..NVCPUS).prop_map(Op::Release),
        1 => (1..=PINNERS).prop_map(Op::Crowd),
        2 => (1..=PINNERS, any::<bool>()).prop_map(|(n, reload)| Op::Disperse { n, reload }),
        4 => slot_id().prop_map(Op::DirtyOn),
        1 => slot_id().prop_map(Op::DirtyOff),
        4 => slot_id().prop_map(Op::Harvest),
        2 => (0u64..12).prop_map(Op::Oom),
        3 => (0..NVCPUS, 0..NSLOTS, 0u64..64, 0u8..3)
            .prop_map(|(vcpu, slot, page, kind)| Op::Stale { vcpu, slot, page, kind }),
    ]
}

#[derive(Clone, Debug)]
struct MSlot {
    gpa: u64,
    npages: u64,
    hpa: u64,
    ro: bool,
    /// Pages written since logging started or the last harvest; `None` when not logging.
    dirty: Option<BTreeSet<u64>>,
}

impl MSlot {
    fn end(&self) -> u64 {
        self.gpa + self.npages * 4096
    }
}

#[derive(Default, Debug)]
struct Counts {
    fixed: u64,
    spurious: u64,
    no_slot: u64,
    read_only: u64,
    retry: u64,
    no_space: u64,
}

struct World {
    m: Mmu,
    h: SimHost,
    slots: [Option<MSlot>; NSLOTS],
    requested: u64,
    held: [bool; ALL_VCPUS],
    counts: Counts,
    oom_armed: bool,
    harvested_bits: u64,
}

impl World {
    fn new(cfg: mmu::Config) -> World {
        World {
            m: Mmu::new(cfg),
            h: SimHost::new(1 << 20),
            slots: Default::default(),
            requested: 0,
            held: [false; ALL_VCPUS],
            counts: Counts::default(),
            oom_armed: false,
            harvested_bits: 0,
        }
    }

    fn model_slot(&self, gpa: u64) -> Option<&MSlot> {
        self.slots.iter().flatten().find(|s| gpa >= s.gpa && gpa < s.end())
    }

    fn overlaps(&self, gpa: u64, npages: u64, except: usize) -> bool {
        let end = gpa + npages * 4096;
        self.slots
            .iter()
            .enumerate()
            .any(|(i, s)| i != except && s.as_ref().is_some_and(|s| gpa < s.end() && s.gpa < end))
    }

    /// An error is acceptable as out-of-memory only while a failure is armed.
    fn oom_ok<T: std::fmt::Debug>(&self, r: &Result<T, Error>) -> bool {
        self.oom_armed && matches!(r, Err(Error::OutOfMemory))
    }

    /// Other vCPUs pin invalidated roots, so the cap may leave this one no room.
    fn others_pin_invalid(&self, vcpu: usize) -> bool {
        (0..ALL_VCPUS).any(|v| v != vcpu && self.held[v] && self.m.needs_reload(v))
    }

    /// Distinct roots held by vCPUs other than `except`: pages reclaim cannot take.
    fn pinned_roots(&self, except: Option<usize>) -> u64 {
        let roots: BTreeSet<u64> = (0..ALL_VCPUS)
            .filter(|&v| Some(v) != except)
            .filter_map(|v| self.m.root_pointer(&self.h, v))
            .collect();
        roots.len() as u64
    }

    /// The cap the limit asks for: the request, or the default for the slots' pages.
    fn goal(&self) -> u64 {
        let total: u64 = self.slots.iter().flatten().map(|s| s.npages).sum();
        if self.requested == 0 { default_mmu_pages(total) } else { self.requested }
    }

    /// Load `vcpu`'s root as microhv's run loop would: acquire it, or reload an invalidated
    /// one. `Ok(false)` when the load failed as allowed (no room behind pinned roots, or an
    /// injected allocation failure); the vCPU may then hold nothing.
    fn load_root(&mut self, vcpu: usize) -> Result<bool, TestCaseError> {
        // A root load needs one page; reclaim can free everything but the other vCPUs' roots.
        // With fewer of those than the goal there is room; with as many, there is none unless
        // a valid root already exists to share.
        let pinned = self.pinned_roots(Some(vcpu));
        let valid_held =
            (0..ALL_VCPUS).any(|v| v != vcpu && self.held[v] && !self.m.needs_reload(v));
        let goal = self.goal();
        let r = if self.held[vcpu] {
            self.m.reload_root(&mut self.h, vcpu)
        } else {
            self.m.acquire_root(&mut self.h, vcpu)
        };
        match r {
            Ok(_) => {
                self.held[vcpu] = true;
                Ok(true)
            }
            Err(Error::NoSpace) => {
                self.counts.no_space += 1;
                prop_assert!(self.others_pin_invalid(vcpu), "NoSpace without pinned roots");
                prop_assert!(pinned >= goal, "NoSpace with room: {} pinned, goal {}", pinned, goal);
                prop_assert!(!valid_held, "NoSpace with a valid root to share");
                prop_assert_eq!(self.m.n_used(), pinned, "NoSpace with reclaimable pages");
                // reload released the invalid root before failing to get a new one.
                self.held[vcpu] = self.m.root_pointer(&self.h, vcpu).is_some();
                prop_assert!(!self.held[vcpu]);
                Ok(false)
            }
            Err(Error::OutOfMemory) if self.oom_armed => {
                self.held[vcpu] = self.m.root_pointer(&self.h, vcpu).is_some();
                Ok(false)
            }
            Err(e) => Err(TestCaseError::fail(format!("root load: {e:?}"))),
        }
    }

    /// After a zap-all: every held root is invalid, and they are all that is left.
    fn check_zapped_all(&self) -> Result<(), TestCaseError> {
        for v in 0..ALL_VCPUS {
            prop_assert_eq!(self.m.needs_reload(v), true);
        }
        prop_assert_eq!(self.m.n_used(), self.pinned_roots(None));
        Ok(())
    }

    fn slot_id_result(&self, id: usize) -> Result<&MSlot, Error> {
        if id >= MAX_SLOTS {
            return Err(Error::InvalidArgument);
        }
        self.slots.get(id).and_then(|s| s.as_ref()).ok_or(Error::NoSuchSlot)
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Add { id, region, page, npages, hpa_shift, ro } => {
                let gpa = REGIONS[region] + page * 4096;
                let hpa = HPA + (id as u64) * (1 << 32) + hpa_shift * 4096;
                let flags = if ro { SLOT_READ_ONLY } else { 0 };
                let r = self.m.add_slot(&mut self.h, id, gpa, npages * 4096, hpa, flags);
                let expect = if id >= MAX_SLOTS {
                    Err(Error::InvalidArgument)
                } else if self.slots[id].is_some() || self.overlaps(gpa, npages, id) {
                    Err(Error::Exists)
                } else {
                    Ok(())
                };
                if !self.oom_ok(&r) {
                    prop_assert_eq!(r, expect);
                }
                if r.is_ok() {
                    self.slots[id] = Some(MSlot { gpa, npages, hpa, ro, dirty: None });
                }
            }
            Op::Remove { id } => {
                let expect = self.slot_id_result(id).map(|_| ());
                let old = self.slot_id_result(id).ok().cloned();
                prop_assert_eq!(self.m.remove_slot(&mut self.h, id), expect);
                if let Some(s) = old {
                    self.slots[id] = None;
                    for g in [s.gpa, s.end() - 4096] {
                        prop_assert!(self.m.lookup(&self.h, g).is_none());
                    }
                }
            }
            Op::Move { id, region, page } => {
                let gpa = REGIONS[region] + page * 4096;
                let expect = match self.slot_id_result(id) {
                    Err(e) => Err(e),
                    Ok(s) if self.overlaps(gpa, s.npages, id) => Err(Error::Exists),
                    Ok(_) => Ok(()),
                };
                let r = self.m.move_slot(&mut self.h, id, gpa);
                if !self.oom_ok(&r) {
                    prop_assert_eq!(r, expect);
                }
                if r.is_ok()
                    && let Some(s) = self.slots[id].as_mut()
                {
                    let old = s.gpa;
                    s.gpa = gpa;
                    if old != gpa {
                        prop_assert!(
                            self.model_slot(old).is_some() || self.m.lookup(&self.h, old).is_none()
                        );
                    }
                }
            }
            Op::Access { vcpu, slot, region, page, count, stride, kind } => {
                // Slot hint NSLOTS aims at the raw window (mostly no slot); a hint naming no slot
                // falls back to the next existing one, so most accesses land in memory.
                let target = (slot < NSLOTS)
                    .then(|| (0..NSLOTS).find_map(|k| self.slots[(slot + k) % NSLOTS].as_ref()))
                    .flatten();
                let (base, span) = match target {
                    Some(s) => (s.gpa, s.npages),
                    None => (REGIONS[region], WINDOW),
                };
                for k in 0..count {
                    let gpa = base + (page + k * stride) % span * 4096 + (k * 8) % 4096;
                    self.access(vcpu, gpa, kind)?;
                }
            }
            Op::Limit(n) => {
                let r = self.m.set_requested_pages(&mut self.h, n);
                let expect = if n != 0 && n < MIN_MMU_PAGES {
                    Err(Error::InvalidArgument)
                } else if n > MAX_MMU_PAGES {
                    Err(Error::TooBig)
                } else {
                    Ok(())
                };
                prop_assert_eq!(r, expect);
                if r.is_ok() {
                    self.requested = n;
                }
            }
            Op::ZapRange { region, page, npages } => {
                let gpa = REGIONS[region] + page * 4096;
                prop_assert_eq!(self.m.zap_gfn_range(&mut self.h, gpa, npages * 4096), Ok(()));
                for g in [gpa, gpa + npages.saturating_sub(1) * 4096] {
                    if npages > 0 {
                        prop_assert!(self.m.lookup(&self.h, g).is_none());
                    }
                }
            }
            Op::ZapAll => {
                prop_assert_eq!(self.m.zap_all(&mut self.h), Ok(()));
                self.check_zapped_all()?;
            }
            Op::ZapTable { region, page, level } => {
                let gpa = REGIONS[region] + page * 4096;
                prop_assert!(self.m.zap_table(&mut self.h, gpa, level).is_ok());
            }
            Op::Acquire(v) => {
                if self.held[v] {
                    prop_assert_eq!(self.m.acquire_root(&mut self.h, v), Err(Error::Busy));
                } else {
                    self.load_root(v)?;
                }
            }
            Op::Release(v) => {
                let r = self.m.release_root(&mut self.h, v);
                if self.held[v] {
                    prop_assert_eq!(r, Ok(()));
                    self.held[v] = false;
                } else {
                    prop_assert_eq!(r, Err(Error::InvalidArgument));
                }
            }
            Op::Crowd(n) => {
                for v in NVCPUS..NVCPUS + n {
                    if (!self.held[v] || self.m.needs_reload(v)) && !self.load_root(v)? {
                        continue;
                    }
                    prop_assert_eq!(self.m.zap_all(&mut self.h), Ok(()));
                    self.check_zapped_all()?;
                }
            }
            Op::Disperse { n, reload } => {
                for v in NVCPUS..NVCPUS + n {
                    if !self.held[v] {
                        continue;
                    }
                    if reload {
                        self.load_root(v)?;
                    } else {
                        prop_assert_eq!(self.m.release_root(&mut self.h, v), Ok(()));
                        self.held[v] = false;
                    }
                }
            }
            Op::DirtyOn(id) => {
                let expect = self.slot_id_result(id).map(|_| ());
                let r = self.m.enable_dirty_log(&mut self.h, id);
                if !self.oom_ok(&r) {
                    prop_assert_eq!(r, expect);
                }
                if r.is_ok()
                    && let Some(s) = self.slots[id].as_mut()
                    && s.dirty.is_none()
                {
                    s.dirty = Some(BTreeSet::new());
                }
            }
            Op::DirtyOff(id) => {
                let expect = match self.slot_id_result(id) {
                    Err(e) => Err(e),
                    Ok(s) if s.dirty.is_none() => Err(Error::InvalidArgument),
                    Ok(_) => Ok(()),
                };
                prop_assert_eq!(self.m.disable_dirty_log(&mut self.h, id), expect);
                if expect.is_ok() {
                    self.slots[id].as_mut().unwrap().dirty = None;
                }
            }
            Op::Harvest(id) => {
                let mut buf = vec![0u64; (MAX_NPAGES as usize).div_ceil(64) + 1];
                let r = self.m.get_dirty_log(&mut self.h, id, &mut buf);
                match self.slot_id_result(id) {
                    Err(e) => prop_assert_eq!(r, Err(e)),
                    Ok(s) if s.dirty.is_none() => prop_assert_eq!(r, Err(Error::InvalidArgument)),
                    Ok(s) => {
                        prop_assert_eq!(r, Ok(()));
                        let mut expect = vec![0u64; buf.len()];
                        for p in s.dirty.as_ref().unwrap() {
                            expect[(p / 64) as usize] |= 1 << (p % 64);
                        }
                        prop_assert_eq!(&buf, &expect);
                        self.harvested_bits +=
                            buf.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
                        self.slots[id].as_mut().unwrap().dirty = Some(BTreeSet::new());
                    }
                }
            }
            Op::Stale { vcpu, slot, page, kind } => {
                let access = [Access::READ, Access::WRITE, Access::FETCH][kind as usize];
                let Some(s) = self.slots.get(slot).and_then(|s| s.clone()) else {
                    return Ok(());
                };
                let gpa = s.gpa + page % s.npages * 4096;
                if !self.held[vcpu] || self.m.needs_reload(vcpu) {
                    return Ok(());
                }
                let allowed =
                    self.m.lookup(&self.h, gpa).is_some_and(|x| !access.write || x.writable);
                if allowed {
                    let r = self.m.page_fault(&mut self.h, vcpu, gpa, access);
                    prop_assert_eq!(r, Ok(FaultOutcome::Spurious));
                    self.counts.spurious += 1;
                }
            }
            Op::Oom(_) => {}
        }
        Ok(())
    }

    /// The guest on `vcpu` touches `gpa`: what microhv's run loop and the CPU would do.
    fn access(&mut self, vcpu: usize, gpa: u64, kind: u8) -> Result<(), TestCaseError> {
        let access = [Access::READ, Access::WRITE, Access::FETCH][kind as usize];
        if (!self.held[vcpu] || self.m.needs_reload(vcpu)) && !self.load_root(vcpu)? {
            return Ok(());
        }
        self.m.take_flush();
        let slot = self.model_slot(gpa).cloned();
        let permits =
            |m: &Mmu, h: &SimHost| m.lookup(h, gpa).is_some_and(|x| !access.write || x.writable);
        for attempt in 0..3 {
            if permits(&self.m, &self.h) {
                break;
            }
            prop_assert!(attempt < 2, "fault did not make the access possible");
            match self.m.topup(&mut self.h) {
                Ok(()) => {}
                Err(Error::OutOfMemory) if self.oom_armed => return Ok(()),
                Err(e) => return Err(TestCaseError::fail(format!("topup: {e:?}"))),
            }
            let out = self.m.page_fault(&mut self.h, vcpu, gpa, access);
            let out = out.map_err(|e| TestCaseError::fail(format!("fault: {e:?}")))?;
            match out {
                FaultOutcome::NoSlot => {
                    self.counts.no_slot += 1;
                    prop_assert!(slot.is_none());
                    return Ok(());
                }
                FaultOutcome::ReadOnly => {
                    self.counts.read_only += 1;
                    prop_assert!(slot.as_ref().is_some_and(|s| s.ro && access.write));
                    return Ok(());
                }
                FaultOutcome::Retry => {
                    // Everything but the held roots was reclaimed, and what the cap leaves
                    // beside them is less than a walk.
                    self.counts.retry += 1;
                    let pinned = self.pinned_roots(None);
                    prop_assert!(self.others_pin_invalid(vcpu), "retry with room");
                    prop_assert_eq!(self.m.n_used(), pinned, "retry with reclaimable pages");
                    prop_assert!(self.m.n_max() < pinned + WALK, "retry with room for a walk");
                    return Ok(());
                }
                FaultOutcome::Spurious => self.counts.spurious += 1,
                FaultOutcome::Fixed { .. } => self.counts.fixed += 1,
            }
            prop_assert!(slot.is_some(), "fault fixed outside every slot");
            prop_assert!(!(access.write && slot.as_ref().unwrap().ro));
        }
        // The CPU now performs the access through the tables.
        let Some(s) = slot else {
            prop_assert!(self.m.lookup(&self.h, gpa).is_none());
            return Ok(());
        };
        let map = self.m.lookup(&self.h, gpa).unwrap();
        prop_assert_eq!(map.hpa, s.hpa + (gpa - s.gpa));
        prop_assert!(!(map.writable && s.ro));
        if access.write
            && let Some(d) =
                self.slots.iter_mut().flatten().find(|x| gpa >= x.gpa && gpa < x.end()).and_then(
                    |x| {
                        let p = (gpa - x.gpa) / 4096;
                        x.dirty.as_mut().map(|d| (d, p))
                    },
                )
        {
            d.0.insert(d.1);
        }
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        if let Err(v) = self.m.check_invariants(&self.h) {
            return Err(TestCaseError::fail(format!("invariant: {v:?}")));
        }
        prop_assert_eq!(self.m.frames_held(), self.h.outstanding() as u64);
        prop_assert!(self.m.n_used() <= self.m.n_max());
        prop_assert_eq!(self.m.n_requested(), self.requested);
        let total: u64 = self.slots.iter().flatten().map(|s| s.npages).sum();
        prop_assert_eq!(self.m.total_pages(), total);
        let goal = if self.requested == 0 { default_mmu_pages(total) } else { self.requested };
        prop_assert!(self.m.n_max() == goal || self.m.n_max() == self.m.n_used());
        prop_assert!(self.m.n_max() >= goal);
        for (id, s) in self.slots.iter().enumerate() {
            let info = self.m.slot(id);
            match s {
                None => prop_assert_eq!(info, None),
                Some(s) => {
                    prop_assert_eq!(
                        info,
                        Some(SlotInfo {
                            gpa: s.gpa,
                            size: s.npages * 4096,
                            hpa: s.hpa,
                            flags: if s.ro { SLOT_READ_ONLY } else { 0 },
                            dirty_logging: s.dirty.is_some(),
                        })
                    );
                    prop_assert_eq!(self.m.translate(s.gpa + 8), Some(s.hpa + 8));
                    prop_assert_eq!(
                        self.m.translate(s.end() - 1),
                        Some(s.hpa + s.npages * 4096 - 1)
                    );
                }
            }
        }
        for v in 0..ALL_VCPUS {
            prop_assert_eq!(self.m.root_pointer(&self.h, v).is_some(), self.held[v]);
        }
        let st = self.m.stats();
        prop_assert_eq!(st.faults_fixed + st.faults_fast, self.counts.fixed);
        prop_assert_eq!(st.faults_spurious, self.counts.spurious);
        prop_assert_eq!(st.faults_no_slot, self.counts.no_slot);
        prop_assert_eq!(st.faults_read_only, self.counts.read_only);
        prop_assert_eq!(st.faults_retry, self.counts.retry);
        Ok(())
    }
}

/// What one case exercised.
#[derive(Default, Debug, Clone, Copy)]
struct Seen {
    stats: Stats,
    failed_allocs: u64,
    harvested_bits: u64,
    no_space: u64,
    /// Cases in which reclaim zapped something, and in which a fault got `Retry`.
    cases_reclaiming: u64,
    cases_retrying: u64,
}

fn run(cfg: mmu::Config, ops: &[Op]) -> Result<Seen, TestCaseError> {
    let mut w = World::new(cfg);
    let mut arm = None;
    for op in ops {
        if let Op::Oom(n) = op {
            arm = Some(*n);
            continue;
        }
        let n = arm.take();
        w.h.fail_after(n);
        w.oom_armed = n.is_some();
        let r = w.apply(op);
        w.h.fail_after(None);
        w.oom_armed = false;
        r?;
        w.check()?;
    }
    let seen = Seen {
        stats: w.m.stats(),
        failed_allocs: w.h.failed(),
        harvested_bits: w.harvested_bits,
        no_space: w.counts.no_space,
        ..Seen::default()
    };
    w.m.destroy(&mut w.h);
    prop_assert_eq!(w.h.outstanding(), 0, "teardown leaked frames");
    prop_assert_eq!(w.m.frames_held(), 0);
    Ok(seen)
}

fn cases() -> u32 {
    if let Some(n) = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()) {
        return n;
    }
    if cfg!(debug_assertions) { 1_000 } else { 10_000 }
}

fn config() -> PtConfig {
    PtConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..PtConfig::default()
    }
}

const EPT_4K: mmu::Config = mmu::Config { format: Format::Ept, large_2m: false, large_1g: false };
const EPT_LARGE: mmu::Config = mmu::Config { format: Format::Ept, large_2m: true, large_1g: true };
const NPT_LARGE: mmu::Config = mmu::Config { format: Format::Npt, large_2m: true, large_1g: true };

proptest! {
    #![proptest_config(config())]

    /// EPT with and without large pages.
    #[test]
    fn model_ept(large in any::<bool>(), ops in prop::collection::vec(op(), 1..48)) {
        run(if large { EPT_LARGE } else { EPT_4K }, &ops)?;
    }

    /// NPT with large pages.
    #[test]
    fn model_npt(ops in prop::collection::vec(op(), 1..48)) {
        run(NPT_LARGE, &ops)?;
    }
}

/// The generator is only worth its case count if it reaches the states that matter: reclaim
/// under the cap, retries and root loads refused (`NoSpace`) behind pinned roots, large
/// leaves, the fast path, refusals, injected allocation failures and non-empty harvests.
/// The thresholds are per 400 cases, scaled to the cases run.
#[test]
fn generator_reaches_the_interesting_states() {
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    use std::cell::RefCell;
    const CASES: u32 = 1000;
    let per400 = |n: u64| n * u64::from(CASES) / 400;
    let total = RefCell::new(Seen::default());
    // A fixed seed, so the thresholds below are not flaky.
    let mut runner = TestRunner::new_with_rng(
        PtConfig { cases: CASES, failure_persistence: None, ..PtConfig::default() },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    runner
        .run(&(any::<bool>(), prop::collection::vec(op(), 1..48)), |(large, ops)| {
            let s = run(if large { EPT_LARGE } else { EPT_4K }, &ops)?;
            let mut t = total.borrow_mut();
            t.stats.reclaims += s.stats.reclaims;
            t.stats.faults_retry += s.stats.faults_retry;
            t.stats.faults_fast += s.stats.faults_fast;
            t.stats.faults_spurious += s.stats.faults_spurious;
            t.stats.faults_fixed += s.stats.faults_fixed;
            t.stats.faults_read_only += s.stats.faults_read_only;
            t.stats.faults_no_slot += s.stats.faults_no_slot;
            t.stats.large_2m_mapped += s.stats.large_2m_mapped;
            t.stats.pages_zapped += s.stats.pages_zapped;
            t.failed_allocs += s.failed_allocs;
            t.harvested_bits += s.harvested_bits;
            t.no_space += s.no_space;
            t.cases_reclaiming += u64::from(s.stats.reclaims > 0);
            t.cases_retrying += u64::from(s.stats.faults_retry > 0);
            Ok(())
        })
        .unwrap();
    let t = total.into_inner();
    println!("{t:?}");
    let s = t.stats;
    assert!(s.faults_fixed > per400(1000));
    assert!(s.reclaims > per400(100));
    // Reclaim is not confined to a few cases: caps near the floor meet sweeps over many 2 MiB
    // regions, or crowds of pinned roots.
    assert!(t.cases_reclaiming > u64::from(CASES) / 20);
    assert!(s.faults_retry > 0);
    assert!(t.cases_retrying > 1);
    assert!(t.no_space > 0);
    assert!(s.faults_fast > per400(10));
    assert!(s.faults_spurious > 0);
    assert!(s.faults_read_only > per400(10));
    assert!(s.faults_no_slot > per400(100));
    assert!(s.large_2m_mapped > per400(10));
    assert!(t.failed_allocs > per400(10));
    assert!(t.harvested_bits > per400(10));
}
