//! Host physical memory through the entry code's identity map of the first 4 GiB.

use core::sync::atomic::{AtomicU64, Ordering};
use microhv_core::frames::MAX_PHYS_BYTES;
use microhv_core::mem::PhysMem;

// The frame allocator never hands out a frame the identity map does not cover.
const _: () = assert!(MAX_PHYS_BYTES <= rt::IDENTITY_MAP_BYTES);

/// [`PhysMem`] over the identity map.
pub struct IdentityMem;

/// The aligned word at `pa` as an atomic, for words a guest updates concurrently.
fn atomic_word(pa: u64) -> &'static AtomicU64 {
    assert!(
        pa < rt::IDENTITY_MAP_BYTES && pa.is_multiple_of(8),
        "pa {pa:#x} unmapped or unaligned"
    );
    // SAFETY: an aligned word inside the identity map (checked), of a frame the core owns for
    // as long as it uses the reference (one operation); the guest only ever accesses it with
    // atomic (locked) instructions or plain aligned loads and stores, never as Rust data.
    unsafe { AtomicU64::from_ptr(pa as *mut u64) }
}

fn check(pa: u64, len: usize) {
    let end = pa.checked_add(len as u64);
    assert!(end.is_some_and(|e| e <= rt::IDENTITY_MAP_BYTES), "pa {pa:#x}+{len:#x} unmapped");
}

impl PhysMem for IdentityMem {
    fn read(&self, pa: u64, buf: &mut [u8]) {
        check(pa, buf.len());
        // SAFETY: the range is inside the identity map (checked), and the core only passes
        // frames it owns (allocated frames, boot modules), which no Rust reference aliases.
        unsafe { core::ptr::copy_nonoverlapping(pa as *const u8, buf.as_mut_ptr(), buf.len()) }
    }

    fn write(&mut self, pa: u64, data: &[u8]) {
        check(pa, data.len());
        // SAFETY: as in `read`; the destination frames belong to the caller.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), pa as *mut u8, data.len()) }
    }

    #[inline]
    fn read_u64(&self, pa: u64) -> u64 {
        assert!(
            pa < rt::IDENTITY_MAP_BYTES && pa.is_multiple_of(8),
            "pa {pa:#x} unmapped or unaligned"
        );
        // SAFETY: an aligned word inside the identity map (checked), of a frame the core owns.
        unsafe { (pa as *const u64).read() }
    }

    #[inline]
    fn write_u64(&mut self, pa: u64, val: u64) {
        assert!(
            pa < rt::IDENTITY_MAP_BYTES && pa.is_multiple_of(8),
            "pa {pa:#x} unmapped or unaligned"
        );
        // SAFETY: as in `read_u64`; the frame belongs to the caller.
        unsafe { (pa as *mut u64).write(val) }
    }

    fn fetch_or_u64(&mut self, pa: u64, bits: u64) -> u64 {
        atomic_word(pa).fetch_or(bits, Ordering::SeqCst)
    }

    fn fetch_and_u64(&mut self, pa: u64, mask: u64) -> u64 {
        atomic_word(pa).fetch_and(mask, Ordering::SeqCst)
    }

    fn zero(&mut self, pa: u64, len: u64) {
        check(pa, len as usize);
        let whole = len & !7;
        // SAFETY: as in `write`.
        unsafe {
            crate::arch::x86_64::cpu::zero_qwords(pa, whole);
            core::ptr::write_bytes((pa + whole) as *mut u8, 0, (len - whole) as usize);
        }
    }
}
