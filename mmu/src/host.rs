//! The one door to physical memory: everything the crate stores lives in frames the caller hands
//! out through [`Host`], because ring 0 has no heap.

/// Physical memory and frames, implemented by the caller.
///
/// In microhv the implementation reads and writes through the identity map of host physical
/// memory and allocates from the bitmap frame allocator; in tests, `sim::SimHost` (feature `sim`)
/// simulates both with exact accounting.
///
/// Contract (the crate checks what it cheaply can and reports [`crate::Error::Internal`] or
/// [`crate::Error::OutOfMemory`] otherwise, never undefined behaviour):
/// - `alloc_frame` returns a 4 KiB-aligned, **zeroed** frame below 2^52 and never frame 0
///   (the crate uses 0 as "none" in its metadata; frame 0 is reserved on x86 anyway).
/// - The crate only reads and writes 8-aligned addresses inside frames it obtained from
///   `alloc_frame` and has not yet returned with `free_frame`.
/// - It returns each frame exactly once, with arbitrary contents.
pub trait Host {
    /// A zeroed 4 KiB frame, or `None` when memory is exhausted.
    fn alloc_frame(&mut self) -> Option<u64>;
    /// Give back a frame obtained from [`Host::alloc_frame`].
    fn free_frame(&mut self, hpa: u64);
    /// Read the 64-bit word at `hpa` (8-aligned, inside a frame this crate owns).
    fn read_u64(&self, hpa: u64) -> u64;
    /// Write the 64-bit word at `hpa` (8-aligned, inside a frame this crate owns).
    fn write_u64(&mut self, hpa: u64, val: u64);
    /// The guest memory `[hpa, hpa + len)` of a slot is about to be mapped for the guest: a
    /// caller that hands out slot memory lazily zeroes what the guest has not seen yet here.
    fn before_map(&mut self, hpa: u64, len: u64) {
        let _ = (hpa, len);
    }
    /// A present entry has just been removed or replaced, and frames or table pages it led to
    /// may be freed or reused next: a caller whose vCPUs run on other CPUs stops them first
    /// (they might still walk the old entry). Called once per flush owed, before anything is
    /// freed; until [`crate::Mmu::take_flush`] is called, no vCPU may enter again.
    fn before_zap(&mut self) {}
}
