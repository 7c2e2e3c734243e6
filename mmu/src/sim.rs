//! `SimHost`: a simulated physical memory for host-side tests (feature `sim`, uses `std`).
//!
//! Frames live in one vector; the simulation checks every access and counts every frame, so a
//! test can assert that an MMU returned everything it took and never touched memory it did not
//! own. Misuse panics with a description: it is a bug in the code under test.

use std::collections::VecDeque;
use std::vec::Vec;

use crate::host::Host;

/// Host-physical address of the first simulated frame. Not 0 and well above low memory, so
/// addresses look real and 0 keeps its "none" meaning.
pub const SIM_BASE: u64 = 0x1_0000_0000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Allocated,
    Free,
}

/// A simulated frame allocator and physical memory with exact accounting.
#[derive(Debug)]
pub struct SimHost {
    mem: Vec<u64>,
    state: Vec<State>,
    /// Freed frames, reused first-in first-out so a stale access is likely to hit a free frame.
    free: VecDeque<u32>,
    limit: usize,
    outstanding: usize,
    peak: usize,
    allocs: u64,
    frees: u64,
    failed: u64,
    fail_in: Option<u64>,
}

impl SimHost {
    /// A host that can hand out at most `max_frames` frames at a time.
    pub fn new(max_frames: usize) -> SimHost {
        SimHost {
            mem: Vec::new(),
            state: Vec::new(),
            free: VecDeque::new(),
            limit: max_frames,
            outstanding: 0,
            peak: 0,
            allocs: 0,
            frees: 0,
            failed: 0,
            fail_in: None,
        }
    }

    /// Frames allocated and not yet freed.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Highest `outstanding` seen.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Successful allocations so far.
    pub fn allocs(&self) -> u64 {
        self.allocs
    }

    /// Frees so far.
    pub fn frees(&self) -> u64 {
        self.frees
    }

    /// Allocations refused so far (injected failures and the limit).
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Change the maximum number of frames outstanding.
    pub fn set_limit(&mut self, max_frames: usize) {
        self.limit = max_frames;
    }

    /// Make allocations fail after `n` more succeed (`None`: never, `Some(0)`: the next one).
    pub fn fail_after(&mut self, n: Option<u64>) {
        self.fail_in = n;
    }

    /// Whether `hpa` lies in a frame currently allocated.
    pub fn is_allocated(&self, hpa: u64) -> bool {
        self.frame_index(hpa).is_some_and(|i| self.state.get(i) == Some(&State::Allocated))
    }

    fn frame_index(&self, hpa: u64) -> Option<usize> {
        let off = hpa.checked_sub(SIM_BASE)?;
        usize::try_from(off >> 12).ok()
    }

    #[inline]
    fn word(&self, hpa: u64) -> usize {
        assert!(hpa & 7 == 0, "unaligned access at {hpa:#x}");
        let i =
            self.frame_index(hpa).unwrap_or_else(|| panic!("access to foreign address {hpa:#x}"));
        match self.state.get(i) {
            Some(State::Allocated) => {}
            Some(State::Free) => panic!("access to freed frame at {hpa:#x}"),
            None => panic!("access to never-allocated frame at {hpa:#x}"),
        }
        ((hpa - SIM_BASE) >> 3) as usize
    }
}

impl Host for SimHost {
    fn alloc_frame(&mut self) -> Option<u64> {
        if let Some(n) = self.fail_in.as_mut() {
            if *n == 0 {
                self.failed += 1;
                return None;
            }
            *n -= 1;
        }
        if self.outstanding >= self.limit {
            self.failed += 1;
            return None;
        }
        let i = match self.free.pop_front() {
            Some(i) => {
                let i = i as usize;
                self.mem[i * 512..(i + 1) * 512].fill(0);
                i
            }
            None => {
                let i = self.state.len();
                self.state.push(State::Free);
                self.mem.resize((i + 1) * 512, 0);
                i
            }
        };
        self.state[i] = State::Allocated;
        self.outstanding += 1;
        self.peak = self.peak.max(self.outstanding);
        self.allocs += 1;
        Some(SIM_BASE + ((i as u64) << 12))
    }

    fn free_frame(&mut self, hpa: u64) {
        assert!(hpa & 0xfff == 0, "free of unaligned address {hpa:#x}");
        let i = self.frame_index(hpa).unwrap_or_else(|| panic!("free of foreign address {hpa:#x}"));
        match self.state.get(i) {
            Some(State::Allocated) => {}
            Some(State::Free) => panic!("double free of {hpa:#x}"),
            None => panic!("free of never-allocated frame {hpa:#x}"),
        }
        self.state[i] = State::Free;
        self.free.push_back(i as u32);
        self.outstanding -= 1;
        self.frees += 1;
    }

    #[inline]
    fn read_u64(&self, hpa: u64) -> u64 {
        self.mem[self.word(hpa)]
    }

    #[inline]
    fn write_u64(&mut self, hpa: u64, val: u64) {
        let w = self.word(hpa);
        self.mem[w] = val;
    }
}
