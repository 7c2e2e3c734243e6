//! Host physical memory as the core sees it, and the frame source built on it.
//!
//! In ring 0, [`PhysMem`] is implemented over microhv's identity map; in host tests, over a
//! simulated memory. Everything the core writes into frames (guest images, hypercall results,
//! page tables through the `mmu` crate) goes through it.

use crate::exit::FrameSource;
use crate::frames::{FRAME_SIZE, FrameAllocator};

/// Access to host physical memory. Addresses are host-physical; callers only pass addresses of
/// frames they own (allocated from the frame allocator, or boot modules).
pub trait PhysMem {
    /// Copies `buf.len()` bytes from `pa`.
    fn read(&self, pa: u64, buf: &mut [u8]);
    /// Copies `data` to `pa`.
    fn write(&mut self, pa: u64, data: &[u8]);
    /// Sets `len` bytes at `pa` to zero.
    fn zero(&mut self, pa: u64, len: u64);
    /// The 8-aligned word at `pa` (the MMU's tables and metadata: every fault reads several).
    fn read_u64(&self, pa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(pa, &mut b);
        u64::from_le_bytes(b)
    }
    /// Writes the 8-aligned word at `pa`.
    fn write_u64(&mut self, pa: u64, val: u64) {
        self.write(pa, &val.to_le_bytes());
    }
    /// Sets `bits` in the 8-aligned word at `pa` with one locked read-modify-write (a full
    /// barrier), returning the old value: for words a guest updates with locked instructions
    /// while its vCPUs run on other CPUs (the event-channel page).
    fn fetch_or_u64(&mut self, pa: u64, bits: u64) -> u64 {
        let old = self.read_u64(pa);
        self.write_u64(pa, old | bits);
        old
    }
    /// Keeps only `mask`'s bits of the 8-aligned word at `pa`, as [`PhysMem::fetch_or_u64`].
    fn fetch_and_u64(&mut self, pa: u64, mask: u64) -> u64 {
        let old = self.read_u64(pa);
        self.write_u64(pa, old & mask);
        old
    }
}

/// The frame allocator and physical memory together: what the `mmu` crate and the backends
/// need to get zeroed frames and touch them.
pub struct Machine<'a, P: PhysMem, const W: usize> {
    /// Frames.
    pub frames: &'a mut FrameAllocator<W>,
    /// Memory.
    pub mem: &'a mut P,
}

impl<P: PhysMem, const W: usize> FrameSource for Machine<'_, P, W> {
    fn alloc_zeroed(&mut self) -> Option<u64> {
        let pa = self.frames.alloc()?;
        let mem = &mut *self.mem;
        self.frames.clean(pa, FRAME_SIZE, |pa, n| mem.zero(pa, n));
        Some(pa)
    }

    fn free(&mut self, pa: u64) {
        let r = self.frames.free(pa);
        debug_assert!(r.is_ok(), "freeing {pa:#x}: {r:?}");
        if r.is_err() {
            log::error!("frame {pa:#x} returned twice or never allocated: {r:?}");
        }
    }
}

impl<P: PhysMem, const W: usize> mmu::Host for Machine<'_, P, W> {
    fn alloc_frame(&mut self) -> Option<u64> {
        FrameSource::alloc_zeroed(self)
    }

    fn free_frame(&mut self, hpa: u64) {
        FrameSource::free(self, hpa);
    }

    fn read_u64(&self, hpa: u64) -> u64 {
        self.mem.read_u64(hpa)
    }

    fn write_u64(&mut self, hpa: u64, val: u64) {
        self.mem.write_u64(hpa, val);
    }

    fn before_map(&mut self, hpa: u64, len: u64) {
        let mem = &mut *self.mem;
        self.frames.clean(hpa, len, |pa, n| mem.zero(pa, n));
    }

    fn before_zap(&mut self) {
        crate::smp::quiesce();
    }
}
