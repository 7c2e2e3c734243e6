//! The physical frame allocator: two bitmaps over the first [`MAX_PHYS_BYTES`] of host memory.
//!
//! One bitmap says which frames the allocator manages (usable RAM that is not microhv's image,
//! a boot module or boot data), the other which of those are free. Keeping both lets `free`
//! refuse a frame it never handed out, so a double free or a stray address is an error instead
//! of silent corruption, and lets tests and the leak checks compare free counts exactly.

/// Size of a host frame.
pub const FRAME_SIZE: u64 = 4096;
/// Host physical memory the allocator can manage; RAM above it is ignored (logged at boot).
pub const MAX_PHYS_BYTES: u64 = 4 << 30;
/// Bitmap words needed for [`MAX_PHYS_BYTES`].
pub const HOST_BITMAP_WORDS: usize = (MAX_PHYS_BYTES / FRAME_SIZE / 64) as usize;

/// Why a frame operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The address is not frame-aligned.
    Unaligned,
    /// The frame is not one this allocator manages (reserved, absent, or out of range).
    NotManaged,
    /// The frame is already free: a double free.
    AlreadyFree,
}

/// A frame allocator over `WORDS * 64` frames starting at physical address 0.
pub struct FrameAllocator<const WORDS: usize> {
    managed: [u64; WORDS],
    free: [u64; WORDS],
    /// Frames whose contents are not known to be zero, which nobody may see: a free frame
    /// until the idle scrubber zeroes it ([`FrameAllocator::scrub`]), RAM until it is first
    /// shown ([`FrameAllocator::clean`]). Every frame starts dirty and becomes dirty when freed.
    dirty: [u64; WORDS],
    managed_count: u64,
    free_count: u64,
    /// Of the free frames, the dirty ones.
    dirty_free: u64,
    /// Word where the last allocation succeeded: the next search starts there.
    hint: usize,
    /// Word where the last scrub stopped.
    scrub_hint: usize,
    /// Frames [`FrameAllocator::clean`] has zeroed: whoever needs to know whether a call
    /// zeroed anything compares it before and after.
    zeroed: u64,
}

impl<const WORDS: usize> Default for FrameAllocator<WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const WORDS: usize> FrameAllocator<WORDS> {
    /// Frames this allocator can describe.
    pub const CAPACITY_FRAMES: u64 = WORDS as u64 * 64;

    /// An allocator that manages nothing yet.
    pub const fn new() -> Self {
        Self {
            managed: [0; WORDS],
            free: [0; WORDS],
            dirty: [0; WORDS],
            managed_count: 0,
            free_count: 0,
            dirty_free: 0,
            hint: 0,
            scrub_hint: 0,
            zeroed: 0,
        }
    }

    /// Frames whose whole 4 KiB lies inside `[start, end)` become managed and free; the part
    /// of the range beyond the capacity is ignored. Returns the frames added.
    pub fn add_free_range(&mut self, start: u64, end: u64) -> u64 {
        let first = start.div_ceil(FRAME_SIZE);
        let last = (end / FRAME_SIZE).min(Self::CAPACITY_FRAMES);
        let mut added = 0;
        for (w, m) in spans(first, last) {
            let new = m & !self.managed[w];
            self.managed[w] |= new;
            self.free[w] |= new;
            self.dirty[w] |= new;
            added += u64::from(new.count_ones());
        }
        self.managed_count += added;
        self.free_count += added;
        self.dirty_free += added;
        added
    }

    /// Frames touching `[start, end)` stop being managed: they are never handed out and can
    /// never be freed. For microhv's image, boot modules and boot information. Frames of the
    /// range that are currently allocated are left alone (and keep counting as allocated).
    pub fn reserve_range(&mut self, start: u64, end: u64) -> u64 {
        let first = start / FRAME_SIZE;
        let last = end.div_ceil(FRAME_SIZE).min(Self::CAPACITY_FRAMES);
        let mut removed = 0;
        for (w, m) in spans(first, last) {
            let gone = m & self.managed[w] & self.free[w];
            self.managed[w] &= !gone;
            self.free[w] &= !gone;
            self.dirty_free -= u64::from((gone & self.dirty[w]).count_ones());
            self.dirty[w] &= !gone;
            removed += u64::from(gone.count_ones());
        }
        self.managed_count -= removed;
        self.free_count -= removed;
        removed
    }

    /// One free frame, maybe dirty (not zeroed: the caller owns the memory and clears what it
    /// needs, [`FrameAllocator::clean`] zeroes it only if dirty).
    pub fn alloc(&mut self) -> Option<u64> {
        if self.free_count == 0 {
            return None;
        }
        for i in 0..WORDS {
            let w = (self.hint + i) % WORDS;
            let bits = self.free[w];
            if bits != 0 {
                let b = bits.trailing_zeros() as u64;
                self.free[w] &= !(1 << b);
                self.free_count -= 1;
                self.dirty_free -= (self.dirty[w] >> b) & 1;
                self.hint = w;
                return Some((w as u64 * 64 + b) * FRAME_SIZE);
            }
        }
        debug_assert!(false, "free_count {} but no free bit", self.free_count);
        None
    }

    /// `count` physically contiguous free frames whose first frame number is a multiple of
    /// `align_frames` (a power of two); the lowest such run.
    pub fn alloc_contiguous(&mut self, count: u64, align_frames: u64) -> Option<u64> {
        if count == 0 || count > self.free_count || !align_frames.is_power_of_two() {
            return None;
        }
        let mut start = 0u64;
        while start.checked_add(count)? <= Self::CAPACITY_FRAMES {
            let busy = spans(start, start + count).find_map(|(w, m)| {
                let taken = m & !self.free[w];
                (taken != 0).then(|| w as u64 * 64 + u64::from(taken.trailing_zeros()))
            });
            match busy {
                None => {
                    for (w, m) in spans(start, start + count) {
                        self.free[w] &= !m;
                        self.dirty_free -= u64::from((m & self.dirty[w]).count_ones());
                    }
                    self.free_count -= count;
                    return Some(start * FRAME_SIZE);
                }
                // Restart past the busy frame, rounded up to the alignment.
                Some(busy) => start = (busy + 1).next_multiple_of(align_frames),
            }
        }
        None
    }

    /// Returns a frame obtained from [`alloc`](Self::alloc) or
    /// [`alloc_contiguous`](Self::alloc_contiguous).
    pub fn free(&mut self, pa: u64) -> Result<(), FrameError> {
        if !pa.is_multiple_of(FRAME_SIZE) {
            return Err(FrameError::Unaligned);
        }
        let f = pa / FRAME_SIZE;
        if f >= Self::CAPACITY_FRAMES {
            return Err(FrameError::NotManaged);
        }
        let (w, bit) = split(f);
        if self.managed[w] & bit == 0 {
            return Err(FrameError::NotManaged);
        }
        if self.free[w] & bit != 0 {
            return Err(FrameError::AlreadyFree);
        }
        self.free[w] |= bit;
        self.dirty[w] |= bit;
        self.free_count += 1;
        self.dirty_free += 1;
        Ok(())
    }

    /// Zeroes up to `max` free dirty frames (`zero` gets each one's address), onwards from where
    /// the last scrub stopped; returns how many. Idle time's work (Xen scrubs in its idle
    /// loop): RAM handed out later is found clean, and its first use costs no zeroing.
    pub fn scrub(&mut self, max: u64, mut zero: impl FnMut(u64)) -> u64 {
        let mut done = 0;
        for i in 0..WORDS {
            if done == max || self.dirty_free == 0 {
                break;
            }
            let w = (self.scrub_hint + i) % WORDS;
            let mut bits = self.free[w] & self.dirty[w];
            while bits != 0 && done < max {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                zero((w as u64 * 64 + u64::from(b)) * FRAME_SIZE);
                self.dirty[w] &= !(1 << b);
                (self.dirty_free, done) = (self.dirty_free - 1, done + 1);
            }
            self.scrub_hint = w;
        }
        done
    }

    /// Makes `[pa, pa + len)` safe to show: each run of dirty frames in it goes to `zero`
    /// (address, bytes) and is clean from then on. A range with nothing dirty costs a word test
    /// per 64 frames.
    pub fn clean(&mut self, pa: u64, len: u64, mut zero: impl FnMut(u64, u64)) {
        // Inside one clean frame (every 4 KiB demand fault, most hypercall buffers): a bit test.
        if len <= FRAME_SIZE - pa % FRAME_SIZE && !self.is_dirty(pa) {
            return;
        }
        let last = pa.saturating_add(len).div_ceil(FRAME_SIZE).min(Self::CAPACITY_FRAMES);
        for (w, m) in spans(pa / FRAME_SIZE, last) {
            let mut bits = self.dirty[w] & m;
            self.dirty[w] &= !m;
            while bits != 0 {
                let lo = bits.trailing_zeros();
                let n = (bits >> lo).trailing_ones();
                zero((w as u64 * 64 + u64::from(lo)) * FRAME_SIZE, u64::from(n) * FRAME_SIZE);
                self.zeroed += u64::from(n);
                bits &= !(if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << lo });
            }
        }
    }

    /// Whether `pa`'s frame is dirty (its contents must read as zeros).
    pub fn is_dirty(&self, pa: u64) -> bool {
        let f = pa / FRAME_SIZE;
        if f >= Self::CAPACITY_FRAMES {
            return false;
        }
        let (w, bit) = split(f);
        self.dirty[w] & bit != 0
    }

    /// Dirty frames now (allocated, not yet zeroed).
    #[cfg(test)]
    pub fn dirty_frames(&self) -> u64 {
        self.dirty.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// True if `pa`'s frame is managed and currently allocated.
    #[cfg(test)]
    pub fn is_allocated(&self, pa: u64) -> bool {
        let f = pa / FRAME_SIZE;
        if f >= Self::CAPACITY_FRAMES {
            return false;
        }
        let (w, bit) = split(f);
        self.managed[w] & bit != 0 && self.free[w] & bit == 0
    }

    /// Frames free now.
    pub fn free_frames(&self) -> u64 {
        self.free_count
    }

    /// Free frames not scrubbed yet.
    pub fn dirty_free_frames(&self) -> u64 {
        self.dirty_free
    }

    /// Frames zeroed on first use so far ([`FrameAllocator::clean`]).
    pub fn zeroed_frames(&self) -> u64 {
        self.zeroed
    }

    /// Frames managed (free or allocated).
    pub fn managed_frames(&self) -> u64 {
        self.managed_count
    }
}

fn split(frame: u64) -> (usize, u64) {
    ((frame / 64) as usize, 1u64 << (frame % 64))
}

/// The bitmap words that frames `[first, last)` touch, each with the mask of those frames: the
/// range operations work a word (64 frames) at a time (bit by bit, marking a 512 MiB machine's
/// frames at boot cost Bochs about 2 M instructions).
fn spans(first: u64, last: u64) -> impl Iterator<Item = (usize, u64)> {
    let words = if first < last { first / 64..last.div_ceil(64) } else { 0..0 };
    words.map(move |w| {
        let lo = first.max(w * 64) - w * 64;
        let hi = last.min(w * 64 + 64) - w * 64;
        let ones = if hi - lo == 64 { u64::MAX } else { (1u64 << (hi - lo)) - 1 };
        (w as usize, ones << lo)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    type Small = FrameAllocator<16>; // 1024 frames = 4 MiB

    #[test]
    fn ranges_round_inward_and_reserve_rounds_outward() {
        let mut a = Small::new();
        assert_eq!(a.add_free_range(100, 3 * FRAME_SIZE + 5), 2); // frames 1 and 2
        assert_eq!(a.reserve_range(2 * FRAME_SIZE + 1, 2 * FRAME_SIZE + 2), 1); // frame 2
        assert_eq!(a.alloc(), Some(FRAME_SIZE));
        assert_eq!(a.alloc(), None);
        assert_eq!(a.free(2 * FRAME_SIZE), Err(FrameError::NotManaged));
    }

    #[test]
    fn reserved_frames_are_never_handed_out() {
        let mut a = Small::new();
        a.add_free_range(0, 1024 * FRAME_SIZE);
        a.reserve_range(0x100000, 0x180000);
        let mut got = Vec::new();
        while let Some(f) = a.alloc() {
            assert!(!(0x100000..0x180000).contains(&f));
            got.push(f);
        }
        assert_eq!(got.len() as u64, 1024 - 128);
        assert_eq!(a.free_frames(), 0);
        for f in got {
            a.free(f).unwrap();
        }
        assert_eq!(a.free_frames(), a.managed_frames());
    }

    #[test]
    fn double_free_and_bad_addresses_are_errors() {
        let mut a = Small::new();
        a.add_free_range(0, 16 * FRAME_SIZE);
        let f = a.alloc().unwrap();
        assert_eq!(a.free(f + 1), Err(FrameError::Unaligned));
        assert_eq!(a.free(f), Ok(()));
        assert_eq!(a.free(f), Err(FrameError::AlreadyFree));
        assert_eq!(a.free(!0xfff), Err(FrameError::NotManaged));
        assert_eq!(a.free(1000 * FRAME_SIZE), Err(FrameError::NotManaged));
    }

    #[test]
    fn contiguous_runs_respect_alignment_and_holes() {
        let mut a = Small::new();
        a.add_free_range(0, 1024 * FRAME_SIZE);
        a.reserve_range(5 * FRAME_SIZE, 6 * FRAME_SIZE);
        let run = a.alloc_contiguous(8, 8).unwrap();
        assert_eq!(run, 8 * FRAME_SIZE);
        let run2 = a.alloc_contiguous(512, 512).unwrap();
        assert_eq!(run2, 512 * FRAME_SIZE);
        assert_eq!(a.alloc_contiguous(512, 512), None);
        assert_eq!(a.alloc_contiguous(0, 1), None);
        assert_eq!(a.alloc_contiguous(1, 3), None);
        assert_eq!(a.free_frames(), 1023 - 8 - 512);
    }

    #[test]
    fn dirty_frames_are_zeroed_once_on_first_use_or_when_scrubbed() {
        let mut a = Box::new(Small::new());
        a.add_free_range(0, 1024 * FRAME_SIZE);
        assert_eq!((a.dirty_frames(), a.dirty_free_frames()), (1024, 1024), "unknown contents");
        let run = a.alloc_contiguous(100, 1).expect("run");
        assert_eq!((a.dirty_frames(), a.dirty_free_frames()), (1024, 924));
        let mut zeroed = Vec::new();
        a.clean(run + 10 * FRAME_SIZE + 5, 8, |p, n| zeroed.push((p, n)));
        assert_eq!(zeroed, [(run + 10 * FRAME_SIZE, FRAME_SIZE)]);
        zeroed.clear();
        a.clean(run, 100 * FRAME_SIZE, |p, n| zeroed.push((p, n)));
        let total: u64 = zeroed.iter().map(|z| z.1).sum();
        assert_eq!(total, 99 * FRAME_SIZE, "the frame zeroed before is not zeroed again");
        assert_eq!((a.dirty_frames(), a.dirty_free_frames()), (924, 924));
        // Freeing makes a frame dirty; the scrubber zeroes free dirty frames in batches, the
        // lowest first, and leaves allocated ones to `clean`.
        a.free(run).expect("free");
        assert_eq!((a.dirty_frames(), a.dirty_free_frames()), (925, 925));
        let mut scrubbed = Vec::new();
        assert_eq!(a.scrub(3, |p| scrubbed.push(p)), 3);
        assert_eq!(scrubbed, [run, 100 * FRAME_SIZE, 101 * FRAME_SIZE]);
        while a.scrub(64, |p| assert!(p < 1024 * FRAME_SIZE && p != run + FRAME_SIZE)) > 0 {}
        assert_eq!((a.dirty_frames(), a.dirty_free_frames()), (0, 0));
        // A run of scrubbed frames needs no zeroing when first shown.
        let run = a.alloc_contiguous(100, 1).expect("run");
        a.clean(run, 100 * FRAME_SIZE, |p, n| panic!("zeroed {p:#x}+{n:#x} again"));
        let f = a.alloc().expect("frame");
        a.clean(f, FRAME_SIZE, |_, _| panic!("zeroed again"));
        a.reserve_range(0, 1024 * FRAME_SIZE);
        assert_eq!(a.dirty_free_frames(), 0);
    }

    #[test]
    fn word_spans_cover_exactly_the_range() {
        for (first, last) in [(0, 0), (5, 5), (3, 64), (0, 64), (63, 65), (10, 200), (64, 128)] {
            let mut got = Vec::new();
            for (w, m) in spans(first, last) {
                got.extend((0..64).filter(|b| m & (1 << b) != 0).map(|b| w as u64 * 64 + b));
            }
            assert_eq!(got, (first..last).collect::<Vec<_>>(), "[{first}, {last})");
        }
    }

    proptest::proptest! {
        /// Ranges added, reserved and runs taken agree with a frame-by-frame model.
        #[test]
        fn range_operations_match_a_frame_by_frame_model(
            ops in proptest::collection::vec((0u8..3, 0u64..1024, 0u64..300, 0u32..4), 1..20)
        ) {
            let mut a = Box::new(Small::new());
            let (mut managed, mut free) = ([false; 1024], [false; 1024]);
            for (op, f, n, align) in ops {
                let end = (f + n).min(1024);
                match op {
                    0 => {
                        a.add_free_range(f * FRAME_SIZE, end * FRAME_SIZE);
                        for i in f..end {
                            if !managed[i as usize] {
                                (managed[i as usize], free[i as usize]) = (true, true);
                            }
                        }
                    }
                    1 => {
                        a.reserve_range(f * FRAME_SIZE, end * FRAME_SIZE);
                        for i in f as usize..end as usize {
                            if managed[i] && free[i] {
                                (managed[i], free[i]) = (false, false);
                            }
                        }
                    }
                    _ => {
                        let (n, al) = (n.max(1), 1u64 << align);
                        let want = (0..1024u64)
                            .step_by(al as usize)
                            .find(|&s| s + n <= 1024 && (s..s + n).all(|i| free[i as usize]));
                        let got = a.alloc_contiguous(n, al);
                        proptest::prop_assert_eq!(got, want.map(|s| s * FRAME_SIZE));
                        if let Some(s) = want {
                            for i in s..s + n {
                                free[i as usize] = false;
                            }
                        }
                    }
                }
                proptest::prop_assert_eq!(a.free_frames(), free.iter().filter(|&&x| x).count() as u64);
                proptest::prop_assert_eq!(
                    a.managed_frames(),
                    managed.iter().filter(|&&x| x).count() as u64
                );
            }
        }
    }

    #[test]
    fn the_host_allocator_fits_a_static() {
        type HostFrames = FrameAllocator<HOST_BITMAP_WORDS>;
        let a: Box<HostFrames> = Box::default();
        assert_eq!(HostFrames::CAPACITY_FRAMES * FRAME_SIZE, MAX_PHYS_BYTES);
        assert_eq!(a.free_frames(), 0);
    }
}
