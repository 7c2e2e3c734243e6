//! The second-level (EPT / NPT) MMU of microhv: a from-scratch reimplementation of the direct
//! (TDP) part of Linux KVM's x86 MMU, following `shared/mmu-spec.md` (its section "project
//! decisions" wins where it differs from KVM). `mmu/README.md` has the design notes, the
//! measured figures and the list of differences from KVM.
//!
//! # Shape
//!
//! One [`Mmu`] per domain, owned by microhv's domain table. It is small
//! (`size_of::<Mmu>()` ≤ [`MMU_INLINE_BYTES_MAX`], asserted in a test) and built in place by the
//! `const fn` [`Mmu::new`]; everything that grows (tables, shadow-page headers, the hash,
//! rmaps, large-page counts, dirty bitmaps, cached frames) lives in frames obtained through the
//! caller's [`Host`]. There is no locking: microhv runs on one physical CPU and every operation
//! takes `&mut self`. The crate is `no_std`, uses no `alloc`, no `unsafe`, no assembly, and never
//! panics on any argument: every failure is an [`Error`].
//!
//! # Using it from the VM-exit path
//!
//! ```text
//! domain create:    mmu = Mmu::new(Config { format, large_2m, large_1g })
//!                   mmu.add_slot(host, id, gpa, size, hpa, flags)?      (per RAM range)
//! before entry:     if mmu.needs_reload(vcpu) { ptr = mmu.reload_root(host, vcpu)?; write EPTP/nCR3 }
//!                   if mmu.take_flush() { INVEPT single-context(EPTP) / flush the ASID }
//! EPT violation:    mmu.topup(host)?;
//!                   match mmu.page_fault(host, vcpu, gpa, Access::from_ept_qualification(q))? {
//!                       Fixed{..} | Spurious | Retry => resume (after the two checks above),
//!                       NoSlot => emulate MMIO or stop the domain,
//!                       ReadOnly => emulate the write or stop the domain }
//! vCPU destroy:     mmu.release_root(host, vcpu)?
//! domain destroy:   mmu.destroy(host)            (returns every frame)
//! ```
//!
//! The same against the simulated host (feature `sim`):
//!
//! ```
//! use mmu::{Access, Config, FaultOutcome, Format, Mmu, PageSize, sim::SimHost};
//!
//! let mut host = SimHost::new(1 << 16);
//! let mut mmu = Mmu::new(Config { format: Format::Ept, large_2m: true, large_1g: false });
//! // 16 MiB of guest RAM at gpa 0, backed by host 0x8000_0000.
//! mmu.add_slot(&mut host, 0, 0, 16 << 20, 0x8000_0000, 0)?;
//! let eptp = mmu.acquire_root(&mut host, 0)?;
//! assert_eq!(eptp & 0xfff, 0x1e); // WB, 4-level walk
//! mmu.topup(&mut host)?;
//! let out = mmu.page_fault(&mut host, 0, 0x20_1234, Access::from_ept_qualification(0x2))?;
//! assert_eq!(out, FaultOutcome::Fixed { size: PageSize::Size2M });
//! assert_eq!(mmu.lookup(&host, 0x20_1234).unwrap().hpa, 0x8020_1234);
//! assert!(mmu.take_flush()); // the root load
//! mmu.release_root(&mut host, 0)?;
//! mmu.destroy(&mut host);
//! assert_eq!(host.outstanding(), 0);
//! # Ok::<(), mmu::Error>(())
//! ```
//!
//! # TLB flushes
//!
//! Every operation that clears or narrows a present entry, or frees a table, records a flush
//! owed; [`Mmu::take_flush`] returns it once. The caller must execute it before entering any
//! vCPU of the domain: INVEPT single-context with the domain's current EPTP (all vCPUs share the
//! one valid root) or all-context; on AMD, flush the domain's ASID. Freed table frames may be
//! reused by the host at once: that is safe because no vCPU of this domain runs between the
//! free and the flush, and stale paging-structure-cache entries are tagged with this domain's
//! EPTP / ASID. Acquiring a root also records a flush (KVM's `kvm_mmu_load` flush), because a
//! new root may reuse the frame, hence the EPTP, of a freed one.
//!
//! # Errors and the ABI
//!
//! | [`Error`] | meaning | errno |
//! |---|---|---|
//! | `InvalidArgument` | malformed argument, or not valid in the current state | `EINVAL` |
//! | `TooBig` | a size exceeds a named capacity (`MAX_SLOT_PAGES`, `GPA_LIMIT`, `MAX_MMU_PAGES`) | `E2BIG` |
//! | `OutOfMemory` | the host frame allocator is exhausted | `ENOMEM` |
//! | `NoSpace` | no page left under the domain's MMU-page cap, even after reclaim | `ENOSPC` |
//! | `Exists` | the slot id is taken, or the gfn range overlaps another slot | `EEXIST` |
//! | `NoSuchSlot` | no slot has that id | `ESRCH` |
//! | `Busy` | the vCPU already holds a root | `EBUSY` |
//! | `CachesEmpty` | `topup` was not called before `page_fault` (a microhv bug) | not ABI-visible |
//! | `Internal` | corrupted metadata or a `Host` breaking its contract (a bug) | not ABI-visible |
//!
//! The last two never reach a guest or dom0: microhv logs them and stops the domain.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(any(test, feature = "sim"))]
extern crate std;

pub mod check;
mod dirty;
pub mod entry;
mod fault;
mod host;
mod limit;
mod roots;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod slot;
mod slots;
mod sp;
mod store;
mod zap;

#[cfg(test)]
mod tests;

pub use entry::{Format, eptp, ncr3};
pub use host::Host;
pub use limit::default_mmu_pages;

use entry::Masks;
use slot::Slot;
use sp::NIL;

// ---- capacities and tunables ----------------------------------------------------------------

/// Paging levels of every table this crate builds (4-level EPT / long-mode NPT).
pub const LEVELS: u32 = 4;
/// Guest-physical addresses at or above this cannot be translated by 4-level tables.
pub const GPA_LIMIT: u64 = 1 << 48;
/// Host-physical addresses must be below this (the entry formats' 52-bit address field).
pub const HPA_LIMIT: u64 = 1 << 52;
/// Memory slots per domain; slot ids are `0..MAX_SLOTS` (KVM: 509).
pub const MAX_SLOTS: usize = 32;
/// Pages per slot (1 TiB). Bounds the slot's eagerly allocated metadata (8 bytes per page).
pub const MAX_SLOT_PAGES: u64 = 1 << 28;
/// vCPUs per domain; vCPU ids are `0..MAX_VCPUS`.
pub const MAX_VCPUS: usize = 64;
/// Distinct 2 MiB guest-physical regions the floor lets one guest instruction have mapped at
/// the same time. One walk is not enough: an instruction needs its code page, its memory
/// operands (two for MOVS, each possibly crossing a page), the stack, and the guest's own
/// page-table pages for each of those linear addresses, all translated before it can retire.
/// If reclaim zaps one to map another, the vCPU faults for ever: seen with the toucher guest
/// and a floor of 4, whose stores went to a different 2 MiB region than its code and stack.
pub const INSN_REGIONS: u64 = 8;
/// The smallest cap on MMU pages: the root, one PDPT (guest-physical space below 512 GiB), and
/// a PD and a PT for each of [`INSN_REGIONS`] regions, so an instruction touching that many
/// distinct 2 MiB regions (even in distinct GiBs) still completes once reclaim has zapped
/// everything else. Each single fault needs only the root and one walk ([`PAGE_CACHE_MIN`]).
/// Any other value below it is `InvalidArgument` (spec deviation 3; KVM's floor is 64).
pub const MIN_MMU_PAGES: u64 = 2 + 2 * INSN_REGIONS;
/// The largest cap that can be requested (2 GiB of tables, enough to map 1 TiB with 4 KiB pages).
pub const MAX_MMU_PAGES: u64 = 1 << 19;
/// Default cap in pages per 1000 guest pages (`KVM_PERMILLE_MMU_PAGES`).
pub const PERMILLE_MMU_PAGES: u64 = 20;
/// When a fault or root load finds too few pages under the cap, reclaim brings the free count up
/// to this (bounded by [`RECLAIM_MAX_FRACTION`]) so one flush pays for several faults
/// (`KVM_REFILL_PAGES`).
pub const RECLAIM_BATCH: u64 = 25;
/// The batch never frees more than `n_max / RECLAIM_MAX_FRACTION` pages beyond what the walk
/// needs, so a small cap is not emptied by every fault.
pub const RECLAIM_MAX_FRACTION: u64 = 16;
/// Frames the page cache holds after a top-up that found it below the minimum.
pub const PAGE_CACHE_CAPACITY: usize = 16;
/// Minimum cached frames and headers for a fault or root load: a root plus a full walk.
pub const PAGE_CACHE_MIN: usize = 1 + WALK_MAX as usize;
/// log2 of [`HASH_BUCKETS`].
pub const HASH_SHIFT: u32 = 12;
/// Buckets of the shadow-page hash (`KVM_NUM_MMU_PAGES`); four frames of 32-bit heads.
pub const HASH_BUCKETS: usize = 1 << HASH_SHIFT;
/// Upper bound on `size_of::<Mmu>()`, asserted in the tests.
pub const MMU_INLINE_BYTES_MAX: usize = 4096;
/// Metadata bytes per shadow page (its header), not counting the table frame itself.
pub const SP_HEADER_BYTES: u64 = sp::HDR_BYTES;

/// Slot flag: the guest may read and execute but not write; writes fault as
/// [`FaultOutcome::ReadOnly`].
pub const SLOT_READ_ONLY: u32 = 1 << 0;
/// All slot flags `add_slot` accepts.
pub const SLOT_FLAGS_VALID: u32 = SLOT_READ_ONLY;

/// Most tables one fault can allocate (levels 3, 2 and 1 below the root).
pub(crate) const WALK_MAX: u64 = LEVELS as u64 - 1;

/// A frame address the crate accepts from `Host::alloc_frame`.
#[inline]
pub(crate) const fn frame_ok(f: u64) -> bool {
    f != 0 && f & 0xfff == 0 && f < HPA_LIMIT
}

// ---- public value types -----------------------------------------------------------------------

/// What the CPU offers, fixed for the domain's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Entry format of the domain's tables.
    pub format: Format,
    /// The CPU supports 2 MiB second-level pages (EPT: always on CPUs with EPT; NPT: always).
    pub large_2m: bool,
    /// The CPU supports 1 GiB second-level pages (EPT capability bit 17; NPT: always).
    pub large_1g: bool,
}

/// Failures. Each variant has one meaning; the crate docs give the errno each maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A malformed argument (misaligned, zero, unknown flag, out-of-range id, arithmetic
    /// overflow), or one not valid in the current state (e.g. a dirty log of a slot that does not
    /// log, releasing a root that is not held).
    InvalidArgument,
    /// A size exceeds a named capacity: `MAX_SLOT_PAGES`, `GPA_LIMIT`, `HPA_LIMIT`,
    /// `MAX_MMU_PAGES`.
    TooBig,
    /// The host frame allocator returned no frame.
    OutOfMemory,
    /// No page left under the MMU-page cap, even after reclaiming every page not pinned as a
    /// root.
    NoSpace,
    /// The slot id is in use, or the gfn range overlaps another slot.
    Exists,
    /// No slot has that id.
    NoSuchSlot,
    /// The vCPU already holds a root.
    Busy,
    /// The object caches hold fewer frames or headers than the fault may need: call
    /// [`Mmu::topup`] first.
    CachesEmpty,
    /// The crate found its own metadata inconsistent, or the `Host` broke its contract.
    Internal,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::InvalidArgument => "invalid argument",
            Error::TooBig => "argument exceeds a capacity",
            Error::OutOfMemory => "out of host memory",
            Error::NoSpace => "no room under the MMU page cap",
            Error::Exists => "slot id or range already taken",
            Error::NoSuchSlot => "no such slot",
            Error::Busy => "vCPU already holds a root",
            Error::CachesEmpty => "object caches not topped up",
            Error::Internal => "internal inconsistency",
        })
    }
}

/// The access that faulted, decoded from the exit information.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// A data read (also set for reads that are part of a write on some CPUs).
    pub read: bool,
    /// A data write.
    pub write: bool,
    /// An instruction fetch.
    pub fetch: bool,
    /// The entry the CPU found was present (a permission fault rather than a missing entry).
    /// Informational: the crate re-walks the tables and trusts what it finds.
    pub present: bool,
}

impl Access {
    /// A read of a missing translation.
    pub const READ: Access = Access { read: true, write: false, fetch: false, present: false };
    /// A write of a missing translation.
    pub const WRITE: Access = Access { read: false, write: true, fetch: false, present: false };
    /// An instruction fetch of a missing translation.
    pub const FETCH: Access = Access { read: false, write: false, fetch: true, present: false };

    /// Decode an EPT-violation exit qualification (SDM table "Exit Qualification for EPT
    /// Violations"): bits 0/1/2 = read/write/fetch, bits 3..5 = the entry allowed R/W/X, any of
    /// which means it was present.
    pub const fn from_ept_qualification(q: u64) -> Access {
        Access { read: q & 1 != 0, write: q & 2 != 0, fetch: q & 4 != 0, present: q & 0x38 != 0 }
    }

    /// Decode an NPT #NPF error code (EXITINFO1): bit 0 present, bit 1 write, bit 4 fetch; an
    /// access that is neither a write nor a fetch is a read.
    pub const fn from_npt_error_code(ec: u64) -> Access {
        let write = ec & 2 != 0;
        let fetch = ec & 16 != 0;
        Access { read: !write && !fetch, write, fetch, present: ec & 1 != 0 }
    }
}

/// Size of a leaf mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB.
    Size2M,
    /// 1 GiB.
    Size1G,
}

impl PageSize {
    /// The level of the table holding a leaf of this size.
    pub const fn level(self) -> u32 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }

    pub(crate) const fn from_level(level: u32) -> PageSize {
        match level {
            3 => PageSize::Size1G,
            2 => PageSize::Size2M,
            _ => PageSize::Size4K,
        }
    }

    /// Bytes mapped by one leaf of this size.
    pub const fn bytes(self) -> u64 {
        4096 << (9 * (self.level() - 1))
    }
}

/// What a fault did. Anything but `NoSlot` and `ReadOnly` means "re-enter the guest" (after the
/// usual reload and flush checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// A leaf was installed or made writable.
    Fixed {
        /// The size of the leaf now serving the gpa.
        size: PageSize,
    },
    /// The tables already allow the access (a stale TLB entry, or fixed meanwhile).
    Spurious,
    /// The gpa is in no slot: emulate MMIO, or stop the domain.
    NoSlot,
    /// A write to a read-only slot: emulate it, or stop the domain.
    ReadOnly,
    /// Nothing installed: the vCPU's root was invalidated (reload it first), or the cap leaves
    /// no room for the walk right now because other vCPUs still pin invalidated roots.
    Retry,
}

/// A translation found by walking the tables ([`Mmu::lookup`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Host-physical address the gpa maps to.
    pub hpa: u64,
    /// Leaf size.
    pub size: PageSize,
    /// The leaf allows writes.
    pub writable: bool,
    /// The raw leaf entry.
    pub entry: u64,
}

/// Description of a slot ([`Mmu::slot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// First guest-physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// First host-physical address.
    pub hpa: u64,
    /// `SLOT_*` flags.
    pub flags: u32,
    /// Dirty logging is on.
    pub dirty_logging: bool,
}

/// Counters, as returned by [`Mmu::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Faults that installed a leaf through the table walk (`pf_fixed`).
    pub faults_fixed: u64,
    /// Faults fixed by making a write-protected 4 KiB leaf writable (the fast path).
    pub faults_fast: u64,
    /// Faults whose access the tables already allowed.
    pub faults_spurious: u64,
    /// Faults outside every slot.
    pub faults_no_slot: u64,
    /// Writes to read-only slots.
    pub faults_read_only: u64,
    /// Faults that installed nothing (invalid root, no room).
    pub faults_retry: u64,
    /// 2 MiB leaves installed.
    pub large_2m_mapped: u64,
    /// 1 GiB leaves installed.
    pub large_1g_mapped: u64,
    /// Shadow pages (tables) created.
    pub pages_allocated: u64,
    /// Shadow pages whose frame was returned to the host.
    pub pages_freed: u64,
    /// Shadow pages zapped, for any reason (`mmu_shadow_zapped`).
    pub pages_zapped: u64,
    /// Of those, zapped to respect the cap (`mmu_recycled`).
    pub reclaims: u64,
    /// Leaves removed.
    pub leaves_zapped: u64,
    /// Flushes owed to the caller (each returned once by `take_flush`).
    pub flushes_owed: u64,
    /// Shadow pages in use.
    pub n_used: u64,
    /// Cap in force.
    pub n_max: u64,
    /// Requested cap, 0 for the default.
    pub n_requested: u64,
}

// ---- the MMU ----------------------------------------------------------------------------------

/// A domain's second-level MMU. See the crate docs.
#[derive(Debug)]
pub struct Mmu {
    cfg: Config,
    masks: Masks,
    slots: [Slot; MAX_SLOTS],
    /// Last slot a gfn was found in (lookups are usually clustered).
    last_slot: usize,
    total_pages: u64,
    n_used: u64,
    n_max: u64,
    n_requested: u64,
    /// The cap the limit asks for: `n_requested`, or the default when that is 0.
    goal: u64,
    /// Per vCPU, the shadow page of its root, or `NIL`.
    vcpu_root: [u32; MAX_VCPUS],
    /// vCPUs whose root was invalidated since they loaded it.
    reload_mask: u64,
    /// Table of the root the last acquire took. A held root is invalid exactly when its vCPU's
    /// reload bit is set, and there is one valid root, so faults need not read its header.
    root_table: u64,
    page_cache: [u64; PAGE_CACHE_CAPACITY],
    page_cache_len: usize,
    hdr_dir: [u64; sp::HDR_DIR_LEN],
    hdr_total: u32,
    hdr_free: u32,
    hdr_free_len: u32,
    hash: [u64; sp::HASH_FRAMES],
    /// Newest shadow page.
    lru_head: u32,
    /// Oldest shadow page: reclaim starts here.
    lru_tail: u32,
    flush_owed: bool,
    /// Valid shadow pages below the root level that no entry points at (a zap or a new large
    /// leaf cut them off): while there are none, a fault building a table need not look for
    /// one to re-link.
    orphans: u64,
    stats: Stats,
}

impl Mmu {
    /// An empty MMU: no slots, no tables, the default cap ([`MIN_MMU_PAGES`] until slots are
    /// added). Takes no frames, so it can initialise a domain-table entry in place.
    pub const fn new(cfg: Config) -> Mmu {
        Mmu {
            cfg,
            masks: Masks::new(cfg.format),
            slots: [Slot::EMPTY; MAX_SLOTS],
            last_slot: 0,
            total_pages: 0,
            n_used: 0,
            n_max: MIN_MMU_PAGES,
            n_requested: 0,
            goal: MIN_MMU_PAGES,
            vcpu_root: [NIL; MAX_VCPUS],
            reload_mask: 0,
            root_table: 0,
            page_cache: [0; PAGE_CACHE_CAPACITY],
            page_cache_len: 0,
            hdr_dir: [0; sp::HDR_DIR_LEN],
            hdr_total: 0,
            hdr_free: NIL,
            hdr_free_len: 0,
            hash: [0; sp::HASH_FRAMES],
            lru_head: NIL,
            lru_tail: NIL,
            flush_owed: false,
            orphans: 0,
            stats: Stats {
                faults_fixed: 0,
                faults_fast: 0,
                faults_spurious: 0,
                faults_no_slot: 0,
                faults_read_only: 0,
                faults_retry: 0,
                large_2m_mapped: 0,
                large_1g_mapped: 0,
                pages_allocated: 0,
                pages_freed: 0,
                pages_zapped: 0,
                reclaims: 0,
                leaves_zapped: 0,
                flushes_owed: 0,
                n_used: 0,
                n_max: 0,
                n_requested: 0,
            },
        }
    }

    /// The configuration the MMU was built with.
    pub const fn config(&self) -> Config {
        self.cfg
    }

    /// Fill the object caches (`mmu_topup_memory_caches`): the hash on first use, then frames
    /// and shadow-page headers. A no-op while they hold at least [`PAGE_CACHE_MIN`]; otherwise
    /// frames are filled to [`PAGE_CACHE_CAPACITY`] and one frame of headers is added. On
    /// `OutOfMemory` what was obtained stays cached. Call it before every [`Mmu::page_fault`].
    #[inline]
    pub fn topup<H: Host>(&mut self, host: &mut H) -> Result<(), Error> {
        // Full caches return without a call (anything cached implies the hash exists).
        if self.cached_sps() >= PAGE_CACHE_MIN as u32 {
            return Ok(());
        }
        self.topup_caches(host)
    }

    /// Frames currently in the page cache (for tests and statistics).
    pub const fn cached_frames(&self) -> usize {
        self.page_cache_len
    }

    /// Shadow-page headers currently free in the slab.
    pub const fn cached_headers(&self) -> u32 {
        self.hdr_free_len
    }

    /// Return the flush owed, if any, and forget it: `true` means the caller must invalidate
    /// this domain's guest-physical translations before entering any of its vCPUs.
    pub fn take_flush(&mut self) -> bool {
        core::mem::take(&mut self.flush_owed)
    }

    /// Whether a flush is owed, without taking it.
    pub const fn flush_pending(&self) -> bool {
        self.flush_owed
    }

    #[inline]
    pub(crate) fn owe_flush<H: Host>(&mut self, host: &mut H) {
        if !self.flush_owed {
            host.before_zap();
            self.flush_owed = true;
            self.stats.flushes_owed += 1;
        }
    }

    /// Shadow pages in use (`n_used_mmu_pages`), including invalidated roots still pinned.
    pub const fn n_used(&self) -> u64 {
        self.n_used
    }

    /// The cap in force (`n_max_mmu_pages`, what "get the limit" returns).
    pub const fn n_max(&self) -> u64 {
        self.n_max
    }

    /// The requested cap (`n_requested_mmu_pages`), 0 when the default applies.
    pub const fn n_requested(&self) -> u64 {
        self.n_requested
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.n_used = self.n_used;
        s.n_max = self.n_max;
        s.n_requested = self.n_requested;
        s
    }

    /// Frames the MMU holds from the host right now: tables, headers and their directory, the
    /// hash, slot metadata, dirty bitmaps and the page cache. After [`Mmu::destroy`] it is 0.
    pub fn frames_held(&self) -> u64 {
        let mut n = self.n_used + self.page_cache_len as u64;
        if self.hash[0] != 0 {
            n += sp::HASH_FRAMES as u64;
        }
        n += u64::from(self.hdr_total / sp::HDRS_PER_FRAME);
        n += self.hdr_dir.iter().filter(|d| **d != 0).count() as u64;
        for s in self.slots.iter().filter(|s| s.used()) {
            n += store::frames(s.meta_words());
            if s.logging() {
                n += store::frames(s.dirty_words());
            }
        }
        n
    }

    /// Bytes of metadata (everything but the table frames) the MMU holds in host frames.
    pub fn metadata_bytes(&self) -> u64 {
        (self.frames_held() - self.n_used) * 4096
    }

    /// Walk the tables for `gpa` from the current valid root, the way the CPU would. `None` if
    /// there is no valid root or no leaf.
    pub fn lookup<H: Host>(&self, host: &H, gpa: u64) -> Option<Mapping> {
        if gpa >= GPA_LIMIT {
            return None;
        }
        let root = self.find_sp(host, 0, LEVELS);
        if root == NIL {
            return None;
        }
        let w = self.walk(host, self.sp_table(host, root), gpa >> 12);
        if !self.masks.is_present(w.entry) {
            return None;
        }
        let size = PageSize::from_level(w.level);
        Some(Mapping {
            hpa: (w.entry & entry::ADDR_MASK) + (gpa & (size.bytes() - 1)),
            size,
            writable: self.masks.is_writable(w.entry),
            entry: w.entry,
        })
    }

    /// Tear everything down and give every frame back to the host. The `Mmu` is left as
    /// [`Mmu::new`] made it (same configuration, counters reset), so the domain-table entry can
    /// be reused. vCPU roots are dropped: the caller must not enter any of them again, and must
    /// flush the domain's translations before its frames can be handed to another domain's
    /// guest (`INVEPT` all-context / retire the ASID).
    pub fn destroy<H: Host>(&mut self, host: &mut H) {
        let mut i = self.lru_head;
        let mut guard = self.hdr_total;
        while i != NIL && guard > 0 {
            let next = self.lru_links(host, i).1;
            host.free_frame(self.sp_table(host, i));
            i = next;
            guard -= 1;
        }
        for dir in self.hdr_dir {
            if dir == 0 {
                continue;
            }
            for k in 0..u64::from(sp::HDR_FRAMES_PER_DIR) {
                let f = host.read_u64(dir + k * 8);
                if f != 0 {
                    host.free_frame(f);
                }
            }
            host.free_frame(dir);
        }
        if self.hash[0] != 0 {
            for f in self.hash {
                host.free_frame(f);
            }
        }
        for s in self.slots {
            if s.used() {
                store::free(host, s.meta, s.meta_words());
                store::free(host, s.dirty, s.dirty_words());
            }
        }
        for f in self.page_cache.iter().take(self.page_cache_len) {
            host.free_frame(*f);
        }
        *self = Mmu::new(self.cfg);
    }

    /// A copy of the slot holding `gfn`, remembered for the next lookup.
    #[inline]
    pub(crate) fn slot_of(&mut self, gfn: u64) -> Option<Slot> {
        if let Some(s) = self.slots.get(self.last_slot)
            && s.contains(gfn)
        {
            return Some(*s);
        }
        let i = self.slots.iter().position(|s| s.contains(gfn))?;
        self.last_slot = i;
        self.slots.get(i).copied()
    }

    /// Like [`Mmu::slot_of`] for `&self` callers.
    #[inline]
    pub(crate) fn find_slot(&self, gfn: u64) -> Option<&Slot> {
        match self.slots.get(self.last_slot) {
            Some(s) if s.contains(gfn) => Some(s),
            _ => self.slots.iter().find(|s| s.contains(gfn)),
        }
    }
}

/// `size_of::<Mmu>()`, for callers sizing their domain table.
pub const MMU_INLINE_BYTES: usize = core::mem::size_of::<Mmu>();
const _: () = assert!(MMU_INLINE_BYTES <= MMU_INLINE_BYTES_MAX);
