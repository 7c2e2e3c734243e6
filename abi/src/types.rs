//! Argument and result structures passed by guest-physical address.
//!
//! Every structure is `#[repr(C)]`, has no implicit padding (zerocopy's `IntoBytes` derive
//! refuses padding at compile time), and has its size and field offsets asserted below, so the
//! same bytes mean the same thing to microhv, dom0 and the tools. Fields that hold enumerations
//! are plain integers: microhv reads the structures in place from guest memory, where any bit
//! pattern can appear, and validates every field.

use crate::hypercall::DOMAIN_NAME_LEN;
use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

macro_rules! layout {
    ($t:ty, $size:expr, { $($field:ident @ $off:expr),* $(,)? }) => {
        const _: () = assert!(size_of::<$t>() == $size);
        $( const _: () = assert!(offset_of!($t, $field) == $off); )*
    };
}

/// IN to `DomainCreate`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[cfg_attr(feature = "proto", derive(serde::Serialize, serde::Deserialize))]
pub struct DomainCreate {
    /// Printable ASCII (0x20..=0x7e), NUL-padded, at least one character, unique among domains.
    pub name: [u8; DOMAIN_NAME_LEN],
    /// Memory in bytes: a multiple of 4 KiB in `MIN_DOMAIN_MEM..=MAX_DOMAIN_MEM`.
    pub mem_bytes: u64,
    /// Initial `n_requested_mmu_pages`: 0 for the default, otherwise at least the MMU floor
    /// (reported by `PhysInfo::mmu_pages_floor`).
    pub mmu_pages: u64,
    /// vCPUs, `1..=MAX_VCPUS_PER_DOMAIN`.
    pub vcpus: u32,
    /// `DOMCREATE_*` bits; the others must be 0.
    pub flags: u32,
}
layout!(DomainCreate, 56, { name @ 0, mem_bytes @ 32, mmu_pages @ 40, vcpus @ 48, flags @ 52 });

/// `DomainCreate::flags` bit: map the domain's memory with 4 KiB second-level pages only (no
/// 2 MiB or 1 GiB leaves), e.g. to exercise or bound the page-table page cap.
pub const DOMCREATE_SMALL_PAGES: u32 = 1 << 0;
/// `DomainCreate::flags` bit: dom0 serves the domain's configuration devices (the ports of
/// [`crate::platform::DM_PORTS`]): microhv hands each access to them to dom0 as an [`IoReq`]
/// and the vCPU waits for the answer. Without it those ports are absent (all-ones, writes
/// dropped).
pub const DOMCREATE_DEVICE_MODEL: u32 = 1 << 1;
/// Every `DomainCreate::flags` bit defined.
pub const DOMCREATE_FLAGS_VALID: u32 = DOMCREATE_SMALL_PAGES | DOMCREATE_DEVICE_MODEL;

/// OUT of `IoreqNext`: one IN or OUT of a domU's vCPU to a port dom0 serves. The vCPU waits,
/// with RIP on the instruction, until `IoreqComplete` answers with the same token; it then
/// executes the instruction again, which takes the answer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct IoReq {
    /// The domain.
    pub domid: u32,
    /// Its vCPU.
    pub vcpu: u32,
    /// Names this request in `IoreqComplete`.
    pub token: u32,
    /// Which domain `domid` is: a new number for each `DomainCreate`, so that device state
    /// kept for a destroyed domain is never shown to a new one with the same id.
    pub instance: u32,
    /// The first port accessed.
    pub port: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    /// 1 for OUT, 0 for IN.
    pub write: u8,
    /// For OUT, the value written (`size` bytes); 0 for IN.
    pub value: u32,
}
layout!(IoReq, 24, {
    domid @ 0, vcpu @ 4, token @ 8, instance @ 12, port @ 16, size @ 18, write @ 19, value @ 20,
});

/// Domain states (`DomainInfo::state`). The tools decode them (`from_u32`, `name`) with the
/// `proto` feature.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "proto", derive(serde::Serialize, serde::Deserialize))]
pub enum DomainState {
    /// Built, never run: waiting for its first unpause.
    Created = 0,
    /// Runnable.
    Running = 1,
    /// Not scheduled until unpaused.
    Paused = 2,
    /// Stopped itself or was stopped by dom0; `shutdown_reason` / `shutdown_status` say how.
    Shutdown = 3,
    /// Stopped by microhv for misbehaving; `crash_reason` says why.
    Crashed = 4,
}

/// Why microhv stopped a domain (`DomainInfo::crash_reason`). The tools decode it (`from_u32`)
/// with the `proto` feature.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "proto", derive(serde::Serialize, serde::Deserialize))]
pub enum CrashReason {
    /// Not crashed.
    None = 0,
    /// The vCPU triple-faulted.
    TripleFault = 1,
    /// The guest touched guest-physical memory outside its slots that nothing emulates.
    OutsideMemory = 2,
    /// A VM exit microhv does not handle.
    UnhandledExit = 3,
    /// The hardware refused to enter the vCPU (invalid guest state).
    EntryFailure = 4,
    /// The MMU could not map memory the guest owns (page-table memory exhausted).
    MmuFailure = 5,
    /// An I/O instruction microhv cannot emulate (a string I/O exit whose instruction at RIP
    /// is not the INS / OUTS that exited).
    UnsupportedIo = 6,
    /// The guest shut itself down with the `crash` reason.
    GuestRequested = 7,
    /// An access to emulated MMIO (the local APIC page) that microhv cannot emulate: an
    /// instruction other than MOV, or a width or alignment the register does not take.
    UnsupportedMmio = 8,
}

impl CrashReason {
    /// Lower-case name, as logs and tools print it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::TripleFault => "triple fault",
            Self::OutsideMemory => "access outside its memory",
            Self::UnhandledExit => "unhandled exit",
            Self::EntryFailure => "vm entry failure",
            Self::MmuFailure => "mmu failure",
            Self::UnsupportedIo => "unsupported i/o",
            Self::GuestRequested => "guest requested crash",
            Self::UnsupportedMmio => "unsupported mmio access",
        }
    }
}

/// `DomainInfo::flags` bit: the domain is dom0.
pub const DOMINFO_PRIVILEGED: u32 = 1 << 0;

/// OUT of `DomainGetInfo` and `DomainList`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[cfg_attr(feature = "proto", derive(serde::Serialize, serde::Deserialize))]
pub struct DomainInfo {
    /// Domain id.
    pub domid: u32,
    /// A [`DomainState`] number.
    pub state: u32,
    /// The name given at creation.
    pub name: [u8; DOMAIN_NAME_LEN],
    /// vCPU count.
    pub vcpus: u32,
    /// `DOMINFO_*` bits.
    pub flags: u32,
    /// Memory the domain owns, in bytes.
    pub mem_bytes: u64,
    /// Page-table pages in use (`n_used_mmu_pages`).
    pub mmu_used: u64,
    /// Page-table page cap in force (`n_max_mmu_pages`).
    pub mmu_max: u64,
    /// Requested cap, 0 for the default (`n_requested_mmu_pages`).
    pub mmu_requested: u64,
    /// VM exits taken.
    pub exits: u64,
    /// EPT violations / nested page faults taken.
    pub ept_faults: u64,
    /// Page-table pages zapped.
    pub mmu_zaps: u64,
    /// CPU time used, in TSC ticks.
    pub cpu_time: u64,
    /// A `ShutdownReason` number; meaningful in state Shutdown.
    pub shutdown_reason: u32,
    /// The status given with the shutdown.
    pub shutdown_status: u32,
    /// A [`CrashReason`] number.
    pub crash_reason: u32,
    /// Which domain this is (`IoReq::instance`): a new number for each `DomainCreate`.
    pub instance: u32,
}
layout!(DomainInfo, 128, {
    domid @ 0, state @ 4, name @ 8, vcpus @ 40, flags @ 44, mem_bytes @ 48, mmu_used @ 56,
    mmu_max @ 64, mmu_requested @ 72, exits @ 80, ept_faults @ 88, mmu_zaps @ 96,
    cpu_time @ 104, shutdown_reason @ 112, shutdown_status @ 116, crash_reason @ 120,
    instance @ 124,
});

impl DomainInfo {
    /// The name up to its first NUL (names are validated ASCII at creation).
    pub fn name_str(&self) -> &str {
        name_str(&self.name)
    }
}

/// The text of a NUL-padded name field; non-ASCII content reads as `"?"`.
pub fn name_str(name: &[u8; DOMAIN_NAME_LEN]) -> &str {
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    core::str::from_utf8(&name[..end]).unwrap_or("?")
}

/// Builds a name field from text; `None` if it is empty, too long or not printable ASCII.
pub fn name_field(name: &str) -> Option<[u8; DOMAIN_NAME_LEN]> {
    let ok = !name.is_empty()
        && name.len() <= DOMAIN_NAME_LEN
        && name.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if !ok {
        return None;
    }
    let mut field = [0u8; DOMAIN_NAME_LEN];
    field[..name.len()].copy_from_slice(name.as_bytes());
    Some(field)
}

/// `VcpuState::mode`: 32-bit protected mode, flat 4 GiB segments, paging off — the PVH and
/// multiboot entry state.
pub const VCPU_MODE_FLAT32: u32 = 1;

/// IN to `VcpuSetState`: the state a vCPU starts in.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[cfg_attr(feature = "proto", derive(serde::Serialize, serde::Deserialize))]
pub struct VcpuState {
    /// `VCPU_MODE_*`; only `VCPU_MODE_FLAT32` in ABI 1.0.
    pub mode: u32,
    /// Reserved, must be 0.
    pub flags: u32,
    /// Entry point (below 4 GiB in flat32 mode).
    pub rip: u64,
    /// Initial stack pointer (below 4 GiB in flat32 mode).
    pub rsp: u64,
    /// Initial `rax` (multiboot: the loader magic).
    pub rax: u64,
    /// Initial `rbx` (PVH: start info; multiboot: information structure).
    pub rbx: u64,
    /// Initial `rcx`.
    pub rcx: u64,
    /// Initial `rdx`.
    pub rdx: u64,
    /// Initial `rsi`.
    pub rsi: u64,
    /// Initial `rdi`.
    pub rdi: u64,
}
layout!(VcpuState, 72, {
    mode @ 0, flags @ 4, rip @ 8, rsp @ 16, rax @ 24, rbx @ 32, rcx @ 40, rdx @ 48, rsi @ 56,
    rdi @ 64,
});

/// `PhysInfo::virt`: Intel VMX with EPT.
pub const VIRT_VMX: u32 = 1;
/// `PhysInfo::virt`: AMD SVM with NPT.
pub const VIRT_SVM: u32 = 2;

/// OUT of `PhysInfo`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[cfg_attr(feature = "proto", derive(serde::Serialize, serde::Deserialize))]
pub struct PhysInfo {
    /// Host memory managed by microhv's frame allocator, in bytes.
    pub total_bytes: u64,
    /// Of which free, in bytes.
    pub free_bytes: u64,
    /// Host memory microhv keeps for itself (its image, boot data), in bytes.
    pub hv_bytes: u64,
    /// The smallest non-zero `n_requested_mmu_pages` accepted.
    pub mmu_pages_floor: u64,
    /// Physical CPUs microhv runs on.
    pub cpus: u32,
    /// Domains that exist, dom0 included.
    pub domains: u32,
    /// `MAX_DOMAINS`.
    pub max_domains: u32,
    /// `major << 16 | minor`.
    pub abi_version: u32,
    /// [`VIRT_VMX`] or [`VIRT_SVM`].
    pub virt: u32,
    /// TSC ticks a vCPU runs before another waiting one gets the CPU.
    pub time_slice: u32,
    /// Of the free memory, the bytes an earlier owner left that idle time has not zeroed yet
    /// (RAM taken from them is zeroed when first shown instead).
    pub dirty_free_bytes: u64,
}
layout!(PhysInfo, 64, {
    total_bytes @ 0, free_bytes @ 8, hv_bytes @ 16, mmu_pages_floor @ 24, cpus @ 32,
    domains @ 36, max_domains @ 40, abi_version @ 44, virt @ 48, time_slice @ 52,
    dirty_free_bytes @ 56,
});

/// Arch-neutral exit reasons, the index into `DomainStats::exits_by_reason`. The tools list
/// and name them (`ALL`, `name`) with the `proto` feature.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "proto", derive(serde::Serialize, serde::Deserialize))]
pub enum ExitReason {
    /// VMCALL / VMMCALL.
    Hypercall = 0,
    /// EPT violation / nested page fault.
    NestedPageFault = 1,
    /// IN / OUT to a trapped port.
    Io = 2,
    /// CPUID.
    Cpuid = 3,
    /// RDMSR / WRMSR.
    Msr = 4,
    /// HLT.
    Hlt = 5,
    /// The time slice ended (preemption timer).
    Timer = 6,
    /// A control-register access microhv intercepts.
    CrAccess = 7,
    /// An external interrupt or NMI arrived.
    Interrupt = 8,
    /// Triple fault.
    TripleFault = 9,
    /// Anything else (counted, and the domain crashed with `UnhandledExit`).
    Other = 10,
    /// A vCPU spinning on PAUSE (VMX PAUSE-loop exiting, SVM's PAUSE filter): it gave the CPU
    /// away.
    Pause = 11,
}

/// Entries in `DomainStats::exits_by_reason`.
pub const EXIT_REASONS: usize = 16;

/// OUT of `Stats`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[cfg_attr(feature = "proto", derive(serde::Serialize, serde::Deserialize))]
pub struct DomainStats {
    /// Domain id.
    pub domid: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// Exits counted by [`ExitReason`] index; unused entries are 0.
    pub exits_by_reason: [u64; EXIT_REASONS],
    /// Hypercalls made.
    pub hypercalls: u64,
    /// Nested page faults that installed a mapping.
    pub faults_fixed: u64,
    /// Nested page faults that found the mapping already valid.
    pub faults_spurious: u64,
    /// Nested page faults outside every memory slot.
    pub faults_mmio: u64,
    /// Page-table pages allocated.
    pub mmu_pages_allocated: u64,
    /// Page-table pages zapped.
    pub mmu_pages_zapped: u64,
    /// Pages zapped to stay under the cap (oldest first).
    pub mmu_reclaims: u64,
    /// TLB flushes (INVEPT / ASID flush) executed.
    pub tlb_flushes: u64,
    /// `n_used_mmu_pages`.
    pub mmu_used: u64,
    /// `n_max_mmu_pages`.
    pub mmu_max: u64,
    /// `n_requested_mmu_pages`.
    pub mmu_requested: u64,
    /// CPU time used, in TSC ticks.
    pub cpu_time: u64,
    /// Host frames the domain's MMU holds: tables, their metadata, slot metadata, caches.
    pub mmu_frames: u64,
}
layout!(DomainStats, 240, {
    domid @ 0, reserved @ 4, exits_by_reason @ 8, hypercalls @ 136, faults_fixed @ 144,
    faults_spurious @ 152, faults_mmio @ 160, mmu_pages_allocated @ 168, mmu_pages_zapped @ 176,
    mmu_reclaims @ 184, tlb_flushes @ 192, mmu_used @ 200, mmu_max @ 208, mmu_requested @ 216,
    cpu_time @ 224, mmu_frames @ 232,
});

/// `EvtchnStatus::state`: the port is free (Xen's `EVTCHNSTAT_closed`).
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// `EvtchnStatus::state`: offered to `remote_domid`, which may bind it.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// `EvtchnStatus::state`: bound to `remote_port` of `remote_domid`.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
/// `EvtchnStatus::state`: bound to `virq` (Xen's number; 3, Xen's physical IRQs, is unused).
pub const EVTCHNSTAT_VIRQ: u32 = 4;

/// OUT of `EvtchnStatus`: one port of the caller's. Fields that do not apply to the state are 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct EvtchnStatus {
    /// An `EVTCHNSTAT_*` value.
    pub state: u32,
    /// Unbound: the domain that may bind it; interdomain: the peer. `DOMID_INVALID` once that
    /// domain was destroyed.
    pub remote_domid: u32,
    /// Interdomain: the peer's port.
    pub remote_port: u32,
    /// VIRQ: its number.
    pub virq: u32,
}
layout!(EvtchnStatus, 16, { state @ 0, remote_domid @ 4, remote_port @ 8, virq @ 12 });

/// Words of each bitmap of [`EvtchnShared`]: room for 512 ports, so that the port table may
/// grow without moving a field. Bits of ports at and above `EVTCHN_PORTS` are never set.
pub const EVTCHN_WORDS: usize = 8;

/// The start of the page a domain registers with `EvtchnSetCallback`: bit `p % 64` of word
/// `p / 64` is port `p`. microhv sets a pending bit when an event arrives and clears it when the
/// port is closed; the guest clears pending bits as it handles them and owns the mask bits (a
/// masked port's events are recorded but raise no upcall). The rest of the page is reserved.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct EvtchnShared {
    /// Events not yet handled.
    pub pending: [u64; EVTCHN_WORDS],
    /// Ports whose events raise no upcall.
    pub mask: [u64; EVTCHN_WORDS],
}
layout!(EvtchnShared, 128, { pending @ 0, mask @ 64 });

/// `GrantStatus::state`: the entry is free.
pub const GRANT_STATE_FREE: u32 = 0;
/// `GrantStatus::state`: the entry grants `gpa` to `peer`.
pub const GRANT_STATE_GRANTED: u32 = 1;

/// OUT of `GrantQuery`: one entry of the caller's grant table. Fields that do not apply to a
/// free entry are 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct GrantStatus {
    /// A `GRANT_STATE_*` value.
    pub state: u32,
    /// The domain the page is granted to; `DOMID_INVALID` once that domain was destroyed.
    pub peer: u32,
    /// `GRANT_READONLY` if the grant is read-only.
    pub flags: u32,
    /// 1 while the peer maps the grant (`GrantRevoke` is then `EBUSY`), else 0.
    pub mapped: u32,
    /// The granted page (guest-physical, in the caller's RAM).
    pub gpa: u64,
}
layout!(GrantStatus, 24, { state @ 0, peer @ 4, flags @ 8, mapped @ 12, gpa @ 16 });
