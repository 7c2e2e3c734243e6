//! dom0's PV backends: every PVH domain's configuration store and PV console, and virtual
//! disks for domUs, served from dom0's own disk (`ABI.md`, "Split drivers", and `abi::pv`).
//!
//! - [`pool`]: the regions of dom0's disk that are the virtual disks (the disk's second MBR
//!   partition, type `0xDA`, with a table of named regions at its start).
//! - [`backend`]: per PVH domain, the configuration store page dom0 grants it, the store's
//!   event channel, its console page and the console's event channel; per attached domain,
//!   once the frontend is connected, its block ring; [`Backend::poll`] serves them all from
//!   dom0's serve loop.
//! - [`console`]: the console page's rings and dom0's buffer of each domain's output.
//!
//! The hypercalls are a trait ([`VbdHypercalls`]) and the shared pages come as raw pointers
//! ([`Memory`]), so that the host tests run the same code against a fake hypervisor whose
//! "shared" pages are heap pages the test writes as a frontend would.

pub mod backend;
pub mod console;
pub mod pool;
mod ring;

pub use backend::{AttachError, Backend, NoStore};
pub use console::ConsoleLog;
pub use pool::{Pool, Region};

use crate::builder::Hypercalls;
use abi::Errno;
use abi::hypercall::{GRANT_ENTRIES, GRANT_WINDOW_GPA, MAX_DOMAINS};
use abi::pv::PAGE;
use abi::types::EvtchnShared;

/// Virtual disks dom0 serves at once (one per domain): each connected ring takes one of dom0's
/// `GRANT_MAPS` mapping slots.
pub const MAX_VBDS: usize = 8;
/// Stores (and PV consoles) dom0 serves at once: one for every domU there can be. They cost
/// dom0 no mapping (the pages are its own), only grant references and ports.
pub const MAX_STORES: usize = MAX_DOMAINS as usize - 1;
/// The first of dom0's grant references for store pages: store `i` grants its page with
/// reference `STORE_REF_BASE + i`. (Reference 0 is the grant benchmark's.)
pub const STORE_REF_BASE: u32 = 1;
/// The first of dom0's grant references for console pages: store `i`'s console page is
/// granted with reference `CONSOLE_REF_BASE + i`.
pub const CONSOLE_REF_BASE: u32 = STORE_REF_BASE + MAX_STORES as u32;
const _: () = assert!(CONSOLE_REF_BASE + MAX_STORES as u32 <= GRANT_ENTRIES);
/// The first page of dom0's grant window for rings: slot `i` maps its frontend's ring at
/// window page `RING_PAGE_BASE + i`. (Page 0 is the grant benchmark's.)
pub const RING_PAGE_BASE: u64 = 1;

/// Where dom0 maps the ring of slot `slot` (guest-physical, in its grant window).
pub const fn ring_gpa(slot: usize) -> u64 {
    GRANT_WINDOW_GPA + (RING_PAGE_BASE + slot as u64) * PAGE as u64
}

/// A 4 KiB-aligned page: a store or console page, or a ring as dom0 maps it.
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
    /// [`MAX_STORES`] store pages of dom0's RAM, used for nothing else (granted to the domains;
    /// their guest-physical address is their address: dom0 is identity-mapped).
    pub store: *mut [Page; MAX_STORES],
    /// [`MAX_STORES`] console pages of dom0's RAM, as the store pages.
    pub consoles: *mut [Page; MAX_STORES],
    /// dom0's buffers of the domains' console output, one per store (not shared: dom0's
    /// alone, but too large for its stack, hence a pointer to a static).
    pub logs: *mut [ConsoleLog; MAX_STORES],
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

/// Leaked pages and logs for a backend under test (the backend keeps raw pointers to them).
#[cfg(test)]
pub(crate) fn test_memory() -> Memory {
    use std::boxed::Box;
    let store = Box::leak(Box::new([const { Page::zeroed() }; MAX_STORES]));
    let consoles = Box::leak(Box::new([const { Page::zeroed() }; MAX_STORES]));
    let logs = Box::leak(Box::new([const { ConsoleLog::new() }; MAX_STORES]));
    let rings = Box::leak(Box::new([const { Page::zeroed() }; MAX_VBDS]));
    let events = Box::leak(Box::new(Page::zeroed()));
    Memory {
        store: store as *mut _,
        consoles: consoles as *mut _,
        logs: logs as *mut _,
        rings: rings as *mut _,
        events: (events as *mut Page).cast::<EvtchnShared>(),
    }
}
