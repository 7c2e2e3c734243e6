//! Hypercall numbers, the register convention, limits and error codes.
//!
//! Convention: `rax` = operation, arguments in `rdi, rsi, rdx, r10, r8`; the result comes back
//! in `rax`: zero or a positive value on success, `-errno` on failure. The instruction is
//! `VMCALL` on Intel and `VMMCALL` on AMD; CPUID leaf `0x4000_0002` says which. Only guest ring 0
//! may call; a call from another ring gets `EPERM`.

/// Error codes. Each has exactly one meaning across the ABI (numbers are Linux's, for
/// familiarity). A hypercall returns `-(code as i64)`.
#[repr(i64)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "proto", derive(serde::Serialize, serde::Deserialize))]
pub enum Errno {
    /// The caller may not perform this operation (not dom0, not ring 0, the target is dom0, an
    /// event-channel port or grant offered to another domain, a write through a read-only
    /// grant).
    EPERM = 1,
    /// No domain with that id.
    ESRCH = 3,
    /// A length or count is above the documented maximum for the operation.
    E2BIG = 7,
    /// Not enough free host memory.
    ENOMEM = 12,
    /// A guest-physical address range is not entirely inside the caller's memory.
    EFAULT = 14,
    /// The target is in a state that does not allow the operation (a mapped grant included).
    EBUSY = 16,
    /// An object with that identity already exists (a domain name, a VIRQ binding, a grant
    /// entry in use, a grant mapped already, a mapping at that address).
    EEXIST = 17,
    /// An argument or a structure field has a value the operation does not accept.
    EINVAL = 22,
    /// A fixed-capacity table is full (domains, event-channel ports, grant mappings), or a
    /// page-table limit leaves no room.
    ENOSPC = 28,
    /// No operation with that number.
    ENOSYS = 38,
}

impl Errno {
    /// Every error code, in numeric order.
    pub const ALL: [Errno; 10] = [
        Errno::EPERM,
        Errno::ESRCH,
        Errno::E2BIG,
        Errno::ENOMEM,
        Errno::EFAULT,
        Errno::EBUSY,
        Errno::EEXIST,
        Errno::EINVAL,
        Errno::ENOSPC,
        Errno::ENOSYS,
    ];

    /// The value returned in `rax`.
    pub const fn to_ret(self) -> i64 {
        -(self as i64)
    }

    /// The code for a positive errno value.
    pub fn from_code(code: i64) -> Option<Errno> {
        Errno::ALL.into_iter().find(|e| *e as i64 == code)
    }
}

macro_rules! ops {
    ($( $(#[$m:meta])* $name:ident = $num:expr, $priv:expr; )*) => {
        /// Hypercall operation numbers (`rax`).
        #[repr(u64)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op {
            $( $(#[$m])* $name = $num, )*
        }

        impl Op {
            /// Every operation, in numeric order.
            pub const ALL: &'static [Op] = &[$(Op::$name,)*];

            /// The operation with this number.
            pub fn from_number(n: u64) -> Option<Op> {
                match n {
                    $( $num => Some(Op::$name), )*
                    _ => None,
                }
            }

            /// True for the operations only dom0 may call.
            pub const fn dom0_only(self) -> bool {
                match self {
                    $( Op::$name => $priv, )*
                }
            }
        }
    };
}

ops! {
    /// `() -> major << 16 | minor`.
    Version = 0x00, false;
    /// `(buf_gpa, len) -> len`: append to the caller's console ring (and microhv's log).
    ConsoleWrite = 0x01, false;
    /// `() -> 0`: give up the CPU to the next runnable vCPU.
    Yield = 0x02, false;
    /// `(reason, status) -> does not return`: stop the calling domain.
    Shutdown = 0x03, false;
    /// `(vcpu, state_gpa) -> 0`: start one of the caller's own vCPUs that waits for its
    /// state, in the `VcpuState` given (Xen's `VCPUOP_initialise` and `VCPUOP_up` in one).
    VcpuUp = 0x04, false;
    /// `(create_gpa) -> domid`: build a new domain (paused, state Created).
    DomainCreate = 0x10, true;
    /// `(domid) -> 0`: free every resource of a domain.
    DomainDestroy = 0x11, true;
    /// `(domid) -> 0`: stop scheduling a running domain.
    DomainPause = 0x12, true;
    /// `(domid) -> 0`: start a created domain or resume a paused one.
    DomainUnpause = 0x13, true;
    /// `(domid, info_gpa) -> 0`: fill a `DomainInfo`.
    DomainGetInfo = 0x14, true;
    /// `(array_gpa, capacity) -> total`: fill up to `capacity` `DomainInfo`s.
    DomainList = 0x15, true;
    /// `(domid, n) -> 0`: set `n_requested_mmu_pages` (0 = default).
    MmuPagesSet = 0x16, true;
    /// `(domid) -> n_max`: the page-table page cap in force.
    MmuPagesGet = 0x17, true;
    /// `(domid, bytes) -> 0`: grow or shrink a domain's memory.
    MemSet = 0x18, true;
    /// `(domid, dst_gpa, src_gpa, len) -> len`: copy from the caller into a domain's memory.
    MemWrite = 0x19, true;
    /// `(domid, vcpu, state_gpa) -> 0`: set a vCPU's initial state before the first unpause.
    VcpuSetState = 0x1A, true;
    /// `(domid, buf_gpa, len) -> n`: take up to `len` bytes from a domain's console ring.
    ConsoleRead = 0x1B, true;
    /// `(info_gpa) -> 0`: fill a `PhysInfo`.
    PhysInfo = 0x1C, true;
    /// `(domid, stats_gpa) -> 0`: fill a `DomainStats`.
    Stats = 0x1D, true;
    /// `(domid, reason, status) -> 0`: stop another domain with a shutdown reason.
    DomainShutdown = 0x1E, true;
    /// `(domid, buf_gpa, len) -> accepted`: bytes typed on a domU's console (its COM1).
    ConsoleInput = 0x1F, true;
    /// `(req_gpa) -> 1 | 0`: take the next waiting port access to a dom0-served device into an
    /// `IoReq`; 0 when none waits.
    IoreqNext = 0x20, true;
    /// `(domid, vcpu, token, value) -> 0`: answer a taken `IoReq` (`value`: what an IN reads).
    IoreqComplete = 0x21, true;
    /// `(domid, instance, gsi, level) -> 0`: drive an interrupt line of a domU's virtual PC.
    IrqLevel = 0x22, true;
    /// `(remote_domid) -> port`: a new port of the caller's, unbound, that `remote_domid` may
    /// bind.
    EvtchnAllocUnbound = 0x30, false;
    /// `(remote_domid, remote_port) -> port`: a new port of the caller's, bound to a port that
    /// `remote_domid` offered the caller.
    EvtchnBindInterdomain = 0x31, false;
    /// `(virq) -> port`: a new port of the caller's, bound to a virtual IRQ.
    EvtchnBindVirq = 0x32, false;
    /// `(port) -> 0`: an event to the other end of an interdomain port.
    EvtchnSend = 0x33, false;
    /// `(port) -> 0`: frees a port; an interdomain peer is left unbound.
    EvtchnClose = 0x34, false;
    /// `(port, status_gpa) -> 0`: fill an `EvtchnStatus`.
    EvtchnStatus = 0x35, false;
    /// `(vector, page_gpa) -> 0`: register the event-channel page and the upcall vector.
    EvtchnSetCallback = 0x36, false;
    /// `(ref, peer_domid, page_gpa, flags) -> 0`: entry `ref` of the caller's grant table lets
    /// `peer_domid` map or copy the caller's RAM page at `page_gpa` (`GRANT_READONLY`: only
    /// read it).
    GrantSet = 0x40, false;
    /// `(ref) -> 0`: frees a grant entry; `EBUSY` while the peer maps it.
    GrantRevoke = 0x41, false;
    /// `(granter, ref, gpa, flags) -> 0`: maps a page granted to the caller at `gpa` in the
    /// caller's grant window (`GRANT_READONLY`: read-only even if the grant is writable).
    GrantMap = 0x42, false;
    /// `(gpa) -> 0`: removes the caller's grant mapping at `gpa`.
    GrantUnmap = 0x43, false;
    /// `(granter, ref, offset, dst_gpa, len) -> len`: copies `len` bytes at `offset` of a page
    /// granted to the caller into the caller's RAM.
    GrantCopyFrom = 0x44, false;
    /// `(granter, ref, offset, src_gpa, len) -> len`: copies `len` bytes of the caller's memory
    /// to `offset` of a page granted writable to the caller.
    GrantCopyTo = 0x45, false;
    /// `(ref, status_gpa) -> 0`: fill a `GrantStatus` for entry `ref` of the caller's table.
    GrantQuery = 0x46, false;
}

/// Shutdown reasons (`Shutdown`, `DomainShutdown`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "proto", derive(serde::Serialize, serde::Deserialize))]
pub enum ShutdownReason {
    /// The domain is done.
    Poweroff = 0,
    /// The domain asks to be restarted (microhv records it; restarting is the tools' business).
    Reboot = 1,
    /// The domain detected a fatal error in itself.
    Crash = 2,
}

impl ShutdownReason {
    /// The reason with this number.
    pub fn from_u64(v: u64) -> Option<Self> {
        match v {
            0 => Some(Self::Poweroff),
            1 => Some(Self::Reboot),
            2 => Some(Self::Crash),
            _ => None,
        }
    }
}

/// Domain id of dom0.
pub const DOMID_DOM0: u32 = 0;
/// Domains microhv can hold at once, dom0 included.
pub const MAX_DOMAINS: u32 = 16;
/// vCPUs one domain may have.
pub const MAX_VCPUS_PER_DOMAIN: u32 = 4;
/// Bytes of a domain name field (printable ASCII, NUL-padded, at least one character).
pub const DOMAIN_NAME_LEN: usize = 32;
/// Smallest memory a domain may have: the PVH image lives at 1 MiB.
pub const MIN_DOMAIN_MEM: u64 = 2 << 20;
/// Largest memory one domain may have.
pub const MAX_DOMAIN_MEM: u64 = 2 << 30;
/// Longest `ConsoleWrite`.
pub const CONSOLE_WRITE_MAX: u64 = 1024;
/// Longest `ConsoleInput`.
pub const CONSOLE_INPUT_MAX: u64 = 256;
/// Longest `ConsoleRead`; also the size of each domain's console ring.
pub const CONSOLE_READ_MAX: u64 = 4096;
/// Longest `MemWrite`: bounds the time one hypercall spends in ring 0.
pub const MEM_WRITE_MAX: u64 = 64 * 1024;

/// Event-channel ports per domain, port 0 included: port 0 is never allocated (as in Xen, so a
/// guest may use 0 for "no port"), so `1..EVTCHN_PORTS` are the ports.
pub const EVTCHN_PORTS: u32 = 64;
/// The lowest upcall vector `EvtchnSetCallback` takes (0 takes none): 0..=31 are exceptions.
pub const EVTCHN_VECTOR_MIN: u64 = 0x20;
/// `EvtchnSetCallback`'s `page_gpa` that unregisters the page (a kernel handing over to
/// another, kexec): microhv writes the old page no more, and holds events until the next one.
pub const EVTCHN_NO_PAGE: u64 = u64::MAX;
/// "No domain": the remote of a port whose peer domain was destroyed (`EvtchnStatus`), which no
/// domain may bind. Xen's number.
pub const DOMID_INVALID: u32 = 0x7ff4;
/// Virtual IRQ, dom0 only: a domain shut down, crashed or was destroyed (Xen's number).
pub const VIRQ_DOM_EXC: u32 = 3;
/// Entries of each domain's grant table: grant references are `0..GRANT_ENTRIES`.
pub const GRANT_ENTRIES: u32 = 64;
/// Grants one domain may have mapped at once. Each mapping is one second-level memory slot of
/// the grantee (the MMU's 32 slots less the 16 its RAM may use; dom0's boot-module windows
/// take some of these).
pub const GRANT_MAPS: u32 = 16;
/// Guest-physical base of the grant window: `GrantMap` places mappings only in
/// `[GRANT_WINDOW_GPA, GRANT_WINDOW_GPA + GRANT_WINDOW_BYTES)`, above the RAM any domain can
/// have (and dom0's boot-module windows from 0xC000_0000), below the platform's device pages
/// (the I/O APIC at 0xFEC0_0000), inside the 4 GiB a 32-bit or identity-mapped guest reaches.
pub const GRANT_WINDOW_GPA: u64 = 0xf000_0000;
/// Bytes of the grant window (16 MiB: 4096 page positions for `GRANT_MAPS` mappings).
pub const GRANT_WINDOW_BYTES: u64 = 16 << 20;
/// `GrantSet` / `GrantMap` flag: read-only (the mapping's second-level entries never allow a
/// write; `GrantCopyTo` is refused).
pub const GRANT_READONLY: u64 = 1 << 0;
const _: () = assert!(GRANT_WINDOW_GPA >= MAX_DOMAIN_MEM);
const _: () = assert!(GRANT_WINDOW_GPA + GRANT_WINDOW_BYTES <= crate::platform::IOAPIC_BASE);

/// Virtual IRQ, dom0 only: a domU's console ring has new bytes for `ConsoleRead` (Xen's
/// number, whose meaning there is the hypervisor's console ring).
pub const VIRQ_CON_RING: u32 = 8;
