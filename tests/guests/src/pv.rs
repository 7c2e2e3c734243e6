//! What the PV frontends (`vbd`, `pvcon`) share: finding the store through the descriptor in
//! the start page, mapping it and binding its port (`ABI.md`, "Split drivers"), reading dom0's
//! keys and writing their own, and waiting for dom0 with a guard.

use abi::hypercall::GRANT_WINDOW_GPA;
use abi::pv::{self, Half, StoreInfo};
use abi::pvh::START_INFO_GPA;
use core::sync::atomic::{Ordering, compiler_fence};
use guest_rt::rdtsc;

/// How long a frontend waits for dom0 before it gives up, in milliseconds (a guard against a
/// hang, not a timing).
pub const WAIT_MS: u64 = 60_000;

/// The grant-window page the store is mapped at; frontends map their other pages after it.
pub const STORE_PAGE: u64 = GRANT_WINDOW_GPA;

/// TSC ticks per millisecond (microhv's timing leaf).
pub fn ticks_per_ms() -> u64 {
    u64::from(core::arch::x86_64::__cpuid(abi::cpuid::LEAF_TIMING).eax).max(1)
}

/// Yields until `done`, or false after [`WAIT_MS`].
pub fn wait(mut done: impl FnMut() -> bool) -> bool {
    let start = rdtsc();
    while !done() {
        if rdtsc().saturating_sub(start) > WAIT_MS * ticks_per_ms() {
            return false;
        }
        let _ = guest_rt::hv().yield_now();
    }
    true
}

/// The domain's store, mapped at [`STORE_PAGE`], and its end of the store's event channel.
pub struct Store {
    /// The store's owner (dom0).
    pub backend: u32,
    /// Where the store page is mapped.
    pub page: *mut u8,
    /// This domain's port of the store's event channel.
    pub port: u32,
}

impl Store {
    /// Reads the descriptor dom0 left in the start page, maps the store and binds its port.
    pub fn connect() -> Result<Self, &'static str> {
        let hv = guest_rt::hv();
        let at = (START_INFO_GPA as usize + pv::STORE_INFO_OFFSET) as *const StoreInfo;
        // SAFETY: the start page is RAM the builder wrote before the domain started.
        let info = unsafe { core::ptr::read_volatile(at) };
        if info.magic != pv::STORE_INFO_MAGIC || info.version != 1 {
            return Err("no store descriptor in the start page");
        }
        hv.grant_map(info.backend, info.gref, STORE_PAGE, 0).map_err(|_| "cannot map the store")?;
        let port = hv
            .evtchn_bind_interdomain(info.backend, info.port)
            .map_err(|_| "cannot bind the store's port")?;
        Ok(Store { backend: info.backend, page: STORE_PAGE as *mut u8, port })
    }

    /// A copy of the page as it is now.
    pub fn snapshot(&self) -> [u8; pv::PAGE] {
        // SAFETY: the store page is mapped at `page` for the domain's life.
        unsafe { pv::snapshot(self.page) }
    }

    /// dom0's value of `key` as a number.
    pub fn number(&self, key: &str) -> Option<u64> {
        pv::get_u64(&self.snapshot(), Half::Backend, key)
    }

    /// Writes the frontend's `entries` in order (a state key last, as `ABI.md` asks) and tells
    /// dom0.
    pub fn publish(&self, entries: &[(&str, &str)]) {
        let mut page = self.snapshot();
        for (k, v) in entries {
            let _ = pv::set(&mut page, Half::Frontend, k, v);
            // SAFETY: mapped as above; the frontend half is this domain's to write.
            unsafe { pv::publish(self.page, &page, Half::Frontend) };
            compiler_fence(Ordering::SeqCst);
        }
        let _ = guest_rt::hv().evtchn_send(self.port);
    }
}
