//! dom0's PV block backend: virtual disks for domUs, served from its own disk (`ABI.md`,
//! "Split drivers", and `abi::pv`).
//!
//! - [`pool`]: the regions of dom0's disk that are the virtual disks (the disk's second MBR
//!   partition, type `0xDA`, with a table of named regions at its start).
//! - [`backend`]: per attached domain, the configuration store page dom0 grants it, the store's
//!   event channel, and, once the frontend is connected, its block ring; [`Backend::poll`]
//!   serves them all from dom0's serve loop.
//!
//! The hypercalls are a trait ([`VbdHypercalls`]) and the shared pages come as raw pointers
//! ([`Memory`]), so that the host tests run the same code against a fake hypervisor whose
//! "shared" pages are heap pages the test writes as a frontend would.

pub mod backend;
pub mod pool;
mod ring;

pub use backend::{AttachError, Backend};
pub use pool::{Pool, Region};

use crate::builder::Hypercalls;
use abi::Errno;
use abi::hypercall::GRANT_WINDOW_GPA;
use abi::pv::PAGE;
use abi::types::EvtchnShared;

/// Virtual disks dom0 serves at once (one per domain).
pub const MAX_VBDS: usize = 8;
/// The first of dom0's grant references for store pages: slot `i` grants its store page with
/// reference `STORE_REF_BASE + i`. (Reference 0 is the grant benchmark's.)
pub const STORE_REF_BASE: u32 = 1;
/// The first page of dom0's grant window for rings: slot `i` maps its frontend's ring at
/// window page `RING_PAGE_BASE + i`. (Page 0 is the grant benchmark's.)
pub const RING_PAGE_BASE: u64 = 1;

/// Where dom0 maps the ring of slot `slot` (guest-physical, in its grant window).
pub const fn ring_gpa(slot: usize) -> u64 {
    GRANT_WINDOW_GPA + (RING_PAGE_BASE + slot as u64) * PAGE as u64
}

/// A 4 KiB-aligned page: a store page, or a ring as dom0 maps it.
#[repr(C, align(4096))]
pub struct Page(pub [u8; PAGE]);

impl Page {
    /// A zeroed page.
    pub const fn zeroed() -> Self {
        Self([0; PAGE])
    }
}

/// The memory the backend shares with microhv and the frontends, as raw pointers: another
/// party writes it at any time, so it is only ever read and written through volatile or atomic
/// accesses, never through references.
#[derive(Clone, Copy)]
pub struct Memory {
    /// [`MAX_VBDS`] store pages of dom0's RAM, used for nothing else (granted to the domains;
    /// their guest-physical address is their address: dom0 is identity-mapped).
    pub store: *mut [Page; MAX_VBDS],
    /// Where dom0 sees its grant window's pages `RING_PAGE_BASE..RING_PAGE_BASE + MAX_VBDS`
    /// (in dom0: [`ring_gpa`]`(0)`). Page `i` is only touched while slot `i`'s ring is mapped.
    pub rings: *mut [Page; MAX_VBDS],
    /// dom0's event-channel page, registered with `EvtchnSetCallback` (vector 0: dom0 polls):
    /// the backend owns its pending bits.
    pub events: *mut EvtchnShared,
}

/// The hypercalls the backend makes beyond the builder's `MemWrite` (implemented by
/// `abi::guest::Hypervisor`; faked in tests).
pub trait VbdHypercalls: Hypercalls {
    /// `EvtchnAllocUnbound`.
    fn evtchn_alloc_unbound(&self, remote: u32) -> Result<u32, Errno>;
    /// `EvtchnBindInterdomain`.
    fn evtchn_bind_interdomain(&self, remote: u32, remote_port: u32) -> Result<u32, Errno>;
    /// `EvtchnSend`.
    fn evtchn_send(&self, port: u32) -> Result<(), Errno>;
    /// `EvtchnClose`.
    fn evtchn_close(&self, port: u32) -> Result<(), Errno>;
    /// `GrantSet`.
    ///
    /// # Safety
    /// Unless read-only, `peer` may write the page at `page_gpa` until the grant is revoked:
    /// it must hold nothing the caller relies on being left alone.
    unsafe fn grant_set(
        &self,
        gref: u32,
        peer: u32,
        page_gpa: u64,
        flags: u64,
    ) -> Result<(), Errno>;
    /// `GrantRevoke`.
    fn grant_revoke(&self, gref: u32) -> Result<(), Errno>;
    /// `GrantMap`.
    fn grant_map(&self, granter: u32, gref: u32, gpa: u64, flags: u64) -> Result<(), Errno>;
    /// `GrantUnmap`.
    fn grant_unmap(&self, gpa: u64) -> Result<(), Errno>;
    /// `GrantCopyFrom`.
    fn grant_copy_from(
        &self,
        granter: u32,
        gref: u32,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<u64, Errno>;
    /// `GrantCopyTo`.
    fn grant_copy_to(&self, granter: u32, gref: u32, offset: u64, src: &[u8])
    -> Result<u64, Errno>;
}

impl VbdHypercalls for abi::guest::Hypervisor {
    fn evtchn_alloc_unbound(&self, remote: u32) -> Result<u32, Errno> {
        abi::guest::Hypervisor::evtchn_alloc_unbound(self, remote)
    }
    fn evtchn_bind_interdomain(&self, remote: u32, remote_port: u32) -> Result<u32, Errno> {
        abi::guest::Hypervisor::evtchn_bind_interdomain(self, remote, remote_port)
    }
    fn evtchn_send(&self, port: u32) -> Result<(), Errno> {
        abi::guest::Hypervisor::evtchn_send(self, port)
    }
    fn evtchn_close(&self, port: u32) -> Result<(), Errno> {
        abi::guest::Hypervisor::evtchn_close(self, port)
    }
    unsafe fn grant_set(
        &self,
        gref: u32,
        peer: u32,
        page_gpa: u64,
        flags: u64,
    ) -> Result<(), Errno> {
        // SAFETY: forwarded to the caller's contract.
        unsafe { abi::guest::Hypervisor::grant_set(self, gref, peer, page_gpa, flags) }
    }
    fn grant_revoke(&self, gref: u32) -> Result<(), Errno> {
        abi::guest::Hypervisor::grant_revoke(self, gref)
    }
    fn grant_map(&self, granter: u32, gref: u32, gpa: u64, flags: u64) -> Result<(), Errno> {
        abi::guest::Hypervisor::grant_map(self, granter, gref, gpa, flags)
    }
    fn grant_unmap(&self, gpa: u64) -> Result<(), Errno> {
        abi::guest::Hypervisor::grant_unmap(self, gpa)
    }
    fn grant_copy_from(
        &self,
        granter: u32,
        gref: u32,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<u64, Errno> {
        abi::guest::Hypervisor::grant_copy_from(self, granter, gref, offset, dst)
    }
    fn grant_copy_to(
        &self,
        granter: u32,
        gref: u32,
        offset: u64,
        src: &[u8],
    ) -> Result<u64, Errno> {
        abi::guest::Hypervisor::grant_copy_to(self, granter, gref, offset, src)
    }
}
