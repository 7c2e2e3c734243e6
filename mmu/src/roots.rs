//! Roots (`mmu_alloc_direct_roots`, `kvm_mmu_free_roots`, `kvm_mmu_reload`).
//!
//! All vCPUs of a domain share one valid root, reference-counted per vCPU. The crate records
//! which vCPU holds which root, so a double acquire or a release of nothing is an error rather
//! than a corrupted count.

use crate::entry::{eptp, ncr3};
use crate::host::Host;
use crate::sp::NIL;
use crate::{Error, Format, LEVELS, MAX_VCPUS, Mmu};

const _: () = assert!(MAX_VCPUS <= 64, "reload_mask is a u64");

impl Mmu {
    /// Take a reference on the domain's root for `vcpu`, creating the root if there is none
    /// (this tops up the caches itself), and return the value for the EPTP or nCR3. A flush is
    /// recorded, as KVM flushes on every root load. Errors: `InvalidArgument` (vCPU id),
    /// `Busy` (already holds one: release or reload instead), `OutOfMemory`, `NoSpace` (no page
    /// under the cap even after reclaim, because other vCPUs pin invalidated roots).
    pub fn acquire_root<H: Host>(&mut self, host: &mut H, vcpu: usize) -> Result<u64, Error> {
        let cur = *self.vcpu_root.get(vcpu).ok_or(Error::InvalidArgument)?;
        if cur != NIL {
            return Err(Error::Busy);
        }
        let mut r = self.find_sp(host, 0, LEVELS);
        if r == NIL {
            self.topup_caches(host)?;
            if self.available() < 1 {
                self.reclaim_batch(host, 1)?;
            }
            if self.available() < 1 {
                return Err(Error::NoSpace);
            }
            r = self.alloc_sp(host, 0, LEVELS, 0)?.0;
        }
        let sp = self.sp(host, r);
        self.set_root_count(host, r, sp.root_count + 1);
        if let Some(slot) = self.vcpu_root.get_mut(vcpu) {
            *slot = r;
        }
        self.reload_mask &= !(1 << vcpu);
        self.root_table = sp.table;
        self.owe_flush(host);
        Ok(self.pointer(sp.table))
    }

    /// Drop `vcpu`'s reference on its root. An invalidated root is freed with its last
    /// reference; a valid one stays, reclaimable, for the next acquire. `InvalidArgument` if
    /// the vCPU holds none.
    pub fn release_root<H: Host>(&mut self, host: &mut H, vcpu: usize) -> Result<(), Error> {
        let slot = self.vcpu_root.get_mut(vcpu).ok_or(Error::InvalidArgument)?;
        let r = *slot;
        if r == NIL {
            return Err(Error::InvalidArgument);
        }
        *slot = NIL;
        self.reload_mask &= !(1 << vcpu);
        let sp = self.sp(host, r);
        if sp.root_count == 0 {
            debug_assert!(false, "root {r} held with a zero count");
            return Err(Error::Internal);
        }
        self.set_root_count(host, r, sp.root_count - 1);
        if sp.root_count == 1 && sp.invalid {
            // Zapping emptied it when it was invalidated.
            self.free_sp(host, r)?;
        }
        Ok(())
    }

    /// `true` if `vcpu` must (re)load its root before entering: it holds none, or its root was
    /// invalidated by a zap. Out-of-range ids answer `true`.
    pub fn needs_reload(&self, vcpu: usize) -> bool {
        match self.vcpu_root.get(vcpu) {
            Some(r) => *r == NIL || self.reload_mask & (1 << vcpu) != 0,
            None => true,
        }
    }

    /// `kvm_mmu_reload`: the current root pointer if `vcpu`'s root is valid; otherwise release
    /// the invalidated one (if any) and acquire the valid root.
    pub fn reload_root<H: Host>(&mut self, host: &mut H, vcpu: usize) -> Result<u64, Error> {
        let r = *self.vcpu_root.get(vcpu).ok_or(Error::InvalidArgument)?;
        if r != NIL {
            if !self.needs_reload(vcpu) {
                return Ok(self.pointer(self.root_table));
            }
            self.release_root(host, vcpu)?;
        }
        self.acquire_root(host, vcpu)
    }

    /// The EPTP or nCR3 of `vcpu`'s root, if it holds one (valid or not).
    pub fn root_pointer<H: Host>(&self, host: &H, vcpu: usize) -> Option<u64> {
        let r = *self.vcpu_root.get(vcpu)?;
        (r != NIL).then(|| self.pointer(self.sp_table(host, r)))
    }

    fn pointer(&self, table: u64) -> u64 {
        match self.cfg.format {
            Format::Ept => eptp(table),
            Format::Npt => ncr3(table),
        }
    }
}
