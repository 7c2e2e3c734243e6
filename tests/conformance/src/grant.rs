//! Grant tables as the test guests use them: page-aligned pages to grant, and the grant window,
//! which `rt` identity-maps like everything below 4 GiB. A granted page and a mapping may be
//! written by the peer at any moment, so both are only ever touched with volatile accesses.

use abi::hypercall::GRANT_WINDOW_GPA;
use core::ptr::{read_volatile, write_volatile};

/// What the `grant` module in `role=offer` grants dom0.
pub const OFFER: &[u8] = b"offered to dom0";
/// What dom0's read-only grant to the `grant` module in `role=ro-write` holds.
pub const READ_ONLY: &[u8] = b"dom0's read-only page";

/// Pages a guest grants.
#[repr(C, align(4096))]
pub struct Pages<const N: usize>(pub [[u8; 4096]; N]);

impl<const N: usize> Pages<N> {
    /// `N` zeroed pages.
    pub const fn new() -> Self {
        Self([[0; 4096]; N])
    }
}

impl<const N: usize> Default for Pages<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The guest-physical address of page `i` of the grant window.
pub const fn window(i: u64) -> u64 {
    GRANT_WINDOW_GPA + i * 4096
}

/// Copies `out.len()` bytes from `gpa`.
///
/// # Safety
/// `[gpa, gpa + out.len())` must be mapped: the guest's RAM or a grant mapping.
pub unsafe fn read(gpa: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        // SAFETY: forwarded to the caller.
        *b = unsafe { read_volatile((gpa + i as u64) as *const u8) };
    }
}

/// Copies `data` to `gpa`.
///
/// # Safety
/// `[gpa, gpa + data.len())` must be the guest's RAM, not holding Rust objects, or a writable
/// grant mapping (a read-only one stops the guest: that is what some tests want).
pub unsafe fn write(gpa: u64, data: &[u8]) {
    for (i, &b) in data.iter().enumerate() {
        // SAFETY: forwarded to the caller.
        unsafe { write_volatile((gpa + i as u64) as *mut u8, b) };
    }
}

/// Whether `[gpa, gpa + want.len())` holds `want`.
///
/// # Safety
/// As for [`read`].
pub unsafe fn holds(gpa: u64, want: &[u8]) -> bool {
    let mut buf = [0u8; 64];
    let n = want.len().min(buf.len());
    // SAFETY: forwarded to the caller.
    unsafe { read(gpa, &mut buf[..n]) };
    buf[..n] == want[..n]
}
