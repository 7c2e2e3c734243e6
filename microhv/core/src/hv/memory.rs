//! Domain memory: RAM as MMU slots of host-contiguous runs, growing, shrinking, translating.

use super::*;

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    /// Gives domain `d` `bytes` more RAM starting at guest-physical `gpa` as MMU slots of
    /// host-contiguous runs. On failure nothing is left allocated.
    ///
    /// The frames are not zeroed here: those the idle scrubber has not zeroed yet
    /// ([`Hv::scrub_idle`]) are still dirty, and each is zeroed the first time it is shown:
    /// when the MMU maps it for the guest (`mmu::Host::before_map`) or microhv reads or writes
    /// it ([`Hv::guest_range`]), the only two ways to reach a domain's RAM. A domain therefore
    /// never sees what an earlier owner left, and memory nobody touches costs nothing (dom0's
    /// 32 MiB were zeroed at boot: 4.2 M instructions under Bochs).
    pub(crate) fn add_ram(&mut self, d: usize, gpa: u64, bytes: u64) -> Result<(), Errno> {
        let mut left = bytes / FRAME_SIZE;
        let mut at = gpa;
        let mut added = 0u32;
        while left > 0 {
            let Some(id) = (0..MAX_RAM_SLOTS).find(|&i| self.domains[d].mmu.slot(i).is_none())
            else {
                self.rollback_ram(d, added);
                return Err(Errno::ENOMEM);
            };
            let mut n = left;
            let run = loop {
                let align =
                    if n >= LARGE_RUN_FRAMES && at.is_multiple_of(LARGE_RUN_FRAMES * FRAME_SIZE) {
                        LARGE_RUN_FRAMES
                    } else {
                        1
                    };
                if let Some(pa) = self.frames.alloc_contiguous(n, align) {
                    break pa;
                }
                if n == 1 {
                    self.rollback_ram(d, added);
                    return Err(Errno::ENOMEM);
                }
                n /= 2;
            };
            let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
            if let Err(e) = self.domains[d].mmu.add_slot(&mut m, id, at, n * FRAME_SIZE, run, 0) {
                // A slot the MMU installed before failing is removed (and its run freed) by the
                // rollback; only a run no slot maps may be freed here.
                if self.domains[d].mmu.slot(id).is_some() {
                    added |= 1 << id;
                } else {
                    free_run(&mut self.frames, run, n);
                }
                self.rollback_ram(d, added);
                return Err(mmu_errno(e));
            }
            added |= 1 << id;
            at += n * FRAME_SIZE;
            left -= n;
        }
        self.domains[d].mem_bytes += bytes;
        Ok(())
    }

    pub(super) fn rollback_ram(&mut self, d: usize, slots: u32) {
        for id in (0..MAX_RAM_SLOTS).filter(|i| slots & (1 << i) != 0) {
            self.remove_ram_slot(d, id);
        }
    }

    /// Removes RAM slot `id` of domain `d` and frees its frames.
    pub(super) fn remove_ram_slot(&mut self, d: usize, id: usize) {
        let Some(s) = self.domains[d].mmu.slot(id) else {
            return;
        };
        let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        match self.domains[d].mmu.remove_slot(&mut m, id) {
            Ok(()) => self.release_ram(d, s.hpa, s.size / FRAME_SIZE),
            // The slot may still map the run: leaking it is safe, handing it out is not.
            Err(e) => log::error!("d{d}: removing slot {id} failed ({e}): its frames are leaked"),
        }
    }

    /// Shrinks domain `d`'s RAM to `bytes`: slots above are removed, the slot across the new
    /// end is cut (its tail frames freed).
    pub(crate) fn shrink_ram(&mut self, d: usize, bytes: u64) -> Result<(), Errno> {
        for id in 0..MAX_RAM_SLOTS {
            let Some(s) = self.domains[d].mmu.slot(id) else {
                continue;
            };
            if s.gpa >= bytes {
                self.remove_ram_slot(d, id);
            } else if s.gpa + s.size > bytes {
                let keep = bytes - s.gpa;
                let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
                let mmu = &mut self.domains[d].mmu;
                mmu.remove_slot(&mut m, id).map_err(mmu_errno)?;
                self.release_ram(d, s.hpa + keep, (s.size - keep) / FRAME_SIZE);
                let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
                if let Err(e) = self.domains[d].mmu.add_slot(&mut m, id, s.gpa, keep, s.hpa, 0) {
                    // The kept part is unmapped now: free it too, and end the RAM where the
                    // slot began, so that `mem_bytes` still describes memory that exists.
                    if self.domains[d].mmu.slot(id).is_none() {
                        self.release_ram(d, s.hpa, keep / FRAME_SIZE);
                    }
                    self.shrink_ram(d, s.gpa)?;
                    return Err(mmu_errno(e));
                }
            }
        }
        self.domains[d].mem_bytes = bytes;
        Ok(())
    }

    /// Host-physical address of `[gpa, gpa + len)` in domain `d` if it lies in one slot;
    /// `writable` also requires it to be RAM (not a read-only module window). Its RAM may still
    /// be dirty: read it with [`Hv::read_clean`], or take [`Hv::guest_range`] to write it.
    pub(crate) fn guest_hpa(&self, d: usize, gpa: u64, len: u64, writable: bool) -> Option<u64> {
        let dom = &self.domains[d];
        if writable && gpa.checked_add(len)? > dom.mem_bytes {
            return None;
        }
        dom.mmu.translate_range(gpa, len)
    }

    /// Idle time (no vCPU but one that yielded wants the CPU): zeroes a batch of free frames an
    /// earlier owner left dirty, so that RAM handed out later is found clean.
    pub(crate) fn scrub_idle(&mut self) -> u64 {
        let mem = &mut self.mem;
        self.frames.scrub(SCRUB_BATCH, |pa| mem.zero(pa, FRAME_SIZE))
    }

    /// [`Hv::guest_hpa`], with the RAM in the range nobody has seen yet zeroed first (see
    /// [`Hv::add_ram`]): for writing it, or handing it out.
    pub(crate) fn guest_range(
        &mut self,
        d: usize,
        gpa: u64,
        len: u64,
        writable: bool,
    ) -> Option<u64> {
        let hpa = self.guest_hpa(d, gpa, len, writable)?;
        let mem = &mut self.mem;
        self.frames.clean(hpa, len, |pa, n| mem.zero(pa, n));
        Some(hpa)
    }

    /// Reads host-physical `[hpa, hpa + buf.len())` of a guest's RAM as the guest would see
    /// it: a frame still dirty reads as zeros, without being scrubbed (readers need not own
    /// the allocator).
    pub(crate) fn read_clean(&self, hpa: u64, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let at = hpa + done as u64;
            let n = ((FRAME_SIZE - at % FRAME_SIZE) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            if self.frames.is_dirty(at) {
                part.fill(0);
            } else {
                self.mem.read(at, part);
            }
            done += n;
        }
    }
}
