//! The PV console as dom0 serves it (`ABI.md`, "Split drivers", "The console page"): moving
//! bytes between a console page (dom0's own, granted to the domain) and dom0's buffer of the
//! domain's output, or from the tools' input into the page.
//!
//! The page is dom0's memory, but the domain may write any of it at any time: the indices dom0
//! owns (`out_cons`, `in_prod`) are kept in [`Cursor`] and only written to the page, never read
//! back from it, and the domain's indices are read once per call and checked.

use abi::pv::{
    CONS_IN, CONS_IN_CONS, CONS_IN_PROD, CONS_IN_SIZE, CONS_OUT, CONS_OUT_CONS, CONS_OUT_PROD,
    CONS_OUT_SIZE,
};
use core::sync::atomic::{Ordering, compiler_fence};

/// Bytes of a domain's console output dom0 keeps until the tools read them (`ConsoleRead`).
/// When it is full the oldest bytes are dropped: a domain that writes faster than anyone
/// reads loses its oldest output, never its newest, and never holds dom0 up.
pub const LOG_BYTES: usize = 4096;

/// A domain's PV console output waiting for the tools: a ring of [`LOG_BYTES`].
pub struct ConsoleLog {
    bytes: [u8; LOG_BYTES],
    /// Index of the oldest byte.
    start: usize,
    /// Bytes held.
    len: usize,
}

impl Default for ConsoleLog {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleLog {
    /// An empty log.
    pub const fn new() -> Self {
        Self { bytes: [0; LOG_BYTES], start: 0, len: 0 }
    }

    /// Forgets everything (a new domain in the slot).
    pub fn clear(&mut self) {
        self.start = 0;
        self.len = 0;
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`, dropping the oldest bytes to make room.
    pub fn push(&mut self, data: &[u8]) {
        for &b in data {
            let end = (self.start + self.len) % LOG_BYTES;
            self.bytes[end] = b;
            if self.len == LOG_BYTES {
                self.start = (self.start + 1) % LOG_BYTES;
            } else {
                self.len += 1;
            }
        }
    }

    /// Moves the oldest bytes into `out` (as many as fit); how many.
    pub fn take(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len);
        for (i, o) in out[..n].iter_mut().enumerate() {
            *o = self.bytes[(self.start + i) % LOG_BYTES];
        }
        self.start = (self.start + n) % LOG_BYTES;
        self.len -= n;
        n
    }
}

/// dom0's own indices of a console page: the page's copies are written, never trusted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Cursor {
    /// Output bytes dom0 has taken.
    pub out_cons: u32,
    /// Input bytes dom0 has put.
    pub in_prod: u32,
}

/// # Safety
/// `page` must be valid for volatile reads of a page and 4-byte aligned.
unsafe fn read_u32(page: *const u8, at: usize) -> u32 {
    // SAFETY: `at` is one of the index offsets, inside the page and 4-byte aligned.
    unsafe { core::ptr::read_volatile(page.add(at).cast::<u32>()) }
}

/// # Safety
/// `page` must be valid for volatile writes of a page and 4-byte aligned.
unsafe fn write_u32(page: *mut u8, at: usize, v: u32) {
    // SAFETY: as in `read_u32`.
    unsafe { core::ptr::write_volatile(page.add(at).cast::<u32>(), v) }
}

/// Takes the output waiting in the console page at `page` into `log`; how many bytes. An
/// `out_prod` more than a ring ahead of dom0's count is the domain's bug: dom0 takes one ring's
/// worth and goes on from `out_prod`.
///
/// # Safety
/// `page` must be valid for volatile reads and writes of a page and 4-byte aligned.
pub(super) unsafe fn drain(page: *mut u8, cur: &mut Cursor, log: &mut ConsoleLog) -> usize {
    // SAFETY: the caller's promise.
    let prod = unsafe { read_u32(page, CONS_OUT_PROD) };
    // The bytes are read after `out_prod`, as the domain wrote them before it.
    compiler_fence(Ordering::Acquire);
    let waiting = prod.wrapping_sub(cur.out_cons);
    let n = (waiting as usize).min(CONS_OUT_SIZE);
    let mut chunk = [0u8; CONS_OUT_SIZE];
    for (i, c) in chunk[..n].iter_mut().enumerate() {
        let at = CONS_OUT + (cur.out_cons as usize).wrapping_add(i) % CONS_OUT_SIZE;
        // SAFETY: `at` lies in the page's output array.
        *c = unsafe { core::ptr::read_volatile(page.add(at)) };
    }
    log.push(&chunk[..n]);
    // Exactly `n` bytes on when the domain behaved; resynchronised with it when it did not.
    cur.out_cons = prod;
    // The bytes are copied before the domain may reuse their places.
    compiler_fence(Ordering::Release);
    // SAFETY: the caller's promise.
    unsafe { write_u32(page, CONS_OUT_CONS, cur.out_cons) };
    n
}

/// Puts as much of `data` into the console page's input ring as it has room for; how many
/// bytes. An `in_cons` the domain set beyond what dom0 put (or more than a ring behind) leaves
/// no room: the domain's bug stops its own input, nothing else.
///
/// # Safety
/// As [`drain`].
pub(super) unsafe fn put_input(page: *mut u8, cur: &mut Cursor, data: &[u8]) -> usize {
    // SAFETY: the caller's promise.
    let cons = unsafe { read_u32(page, CONS_IN_CONS) };
    let used = cur.in_prod.wrapping_sub(cons) as usize;
    let room = CONS_IN_SIZE.saturating_sub(used);
    let n = data.len().min(room);
    for (i, &b) in data[..n].iter().enumerate() {
        let at = CONS_IN + (cur.in_prod as usize).wrapping_add(i) % CONS_IN_SIZE;
        // SAFETY: `at` lies in the page's input array.
        unsafe { core::ptr::write_volatile(page.add(at), b) };
    }
    // The bytes are in place before `in_prod` says so.
    compiler_fence(Ordering::Release);
    // `n` ≤ 1024.
    cur.in_prod = cur.in_prod.wrapping_add(n as u32);
    // SAFETY: the caller's promise.
    unsafe { write_u32(page, CONS_IN_PROD, cur.in_prod) };
    n
}
