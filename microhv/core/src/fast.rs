//! The exits a backend completes itself, in a loop around VM entry, without returning to the
//! core (#13's fast paths): a `Version` hypercall from ring 0, CPUID, and a demand fault on RAM
//! ([`Faults`]). They need nothing but the vCPU's registers or the domain's MMU and leave the
//! scheduler, the interrupt search and the generic exit decode nothing to do. The backend
//! completes the
//! instruction only where that is plain (no single-step trap to deliver, no RF or interrupt
//! shadow to end, no RIP wrap, time left in the slice, on SVM no NMI blocking to end) and
//! reports how many it completed
//! ([`crate::exit::ExitInfo::completed`]); anything else goes to the core as before, which
//! computes the same results ([`apply`] is what both call).

use crate::cpuid::{Caller, guest_cpuid};
use crate::exit::{DemandFaults, Gprs};
use crate::mem::{Machine, PhysMem};
use mmu::{FaultOutcome, Mmu};

/// A fast exit, as the backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastExit {
    /// VMCALL / VMMCALL.
    Hypercall,
    /// CPUID.
    Cpuid,
    /// A second-level fault [`Faults`] fixed (the instruction runs again).
    Fault,
}

impl FastExit {
    /// Index into `ExitInfo::completed`.
    pub const fn index(self) -> usize {
        match self {
            FastExit::Hypercall => 0,
            FastExit::Cpuid => 1,
            FastExit::Fault => 2,
        }
    }
}

/// Whether `exit` is one a backend may complete itself: `Version` from ring 0 (`cpl` reads the
/// caller's privilege level, only when the rest matches), or any CPUID. Cheap, so that a backend
/// asks it before it reads anything more of the guest's state.
pub fn accepts(exit: FastExit, g: &Gprs, cpl: impl FnOnce() -> u8) -> bool {
    match exit {
        FastExit::Hypercall => g.rax == abi::Op::Version as u64 && cpl() == 0,
        FastExit::Cpuid | FastExit::Fault => true,
    }
}

/// Completes an exit [`accepts`] took, on the registers (CPUID as `caller` sees it, `host`
/// being the host's CPUID).
pub fn apply(exit: FastExit, g: &mut Gprs, caller: &Caller, host: impl Fn(u32, u32) -> [u32; 4]) {
    match exit {
        FastExit::Hypercall => g.rax = abi::abi_version_word().into(),
        FastExit::Cpuid => {
            let r = guest_cpuid(g.rax as u32, g.rcx as u32, caller, host);
            (g.rax, g.rbx, g.rcx, g.rdx) = (r[0].into(), r[1].into(), r[2].into(), r[3].into());
        }
        FastExit::Fault => {}
    }
}

/// Vcpu `vcpu`'s domain's MMU and the frames it maps, for one `Backend::run`.
pub struct Faults<'a, P: PhysMem, const W: usize> {
    /// The domain's MMU.
    pub mmu: &'a mut Mmu,
    /// Frames and memory.
    pub m: Machine<'a, P, W>,
    /// The vCPU that runs.
    pub vcpu: usize,
    /// What the MMU said of the fault `fix` last declined, which is then the exit the backend
    /// returns: the core takes it rather than asking again, so each fault reaches the MMU (and
    /// its statistics) once.
    pub declined: Option<Result<FaultOutcome, mmu::Error>>,
    /// Decline every fault: the core waits for an exit to deliver an NMI it could not arm a
    /// window for (VMX under an STI shadow or without virtual NMIs; SVM), and a fault is one.
    pub off: bool,
}

impl<P: PhysMem, const W: usize> DemandFaults for Faults<'_, P, W> {
    /// Declines device pages and addresses outside the domain (the core emulates them or stops
    /// the domain), a vCPU whose root must be reloaded (`Retry`), and a fault fixed with a
    /// flush owed (reclaim zapped tables), which the core executes before the next entry. (A
    /// fix cannot invalidate the vCPU's own root: reclaim spares roots in use.)
    fn fix(&mut self, gpa: u64, access: mmu::Access) -> Option<bool> {
        if self.off {
            return None;
        }
        let zeroed = self.m.frames.zeroed_frames();
        let Faults { mmu, m, vcpu, .. } = self;
        let r = mmu.topup(m).and_then(|()| mmu.page_fault(m, *vcpu, gpa, access));
        let done = matches!(r, Ok(FaultOutcome::Fixed { .. } | FaultOutcome::Spurious))
            && !mmu.flush_pending();
        // A decline ends the backend's loop: nothing can overwrite what is kept here.
        if !done {
            self.declined = Some(r);
        }
        done.then(|| self.m.frames.zeroed_frames() != zeroed)
    }
}

/// Whether RIP may simply move `len` bytes on, in any mode: within one 64 KiB block it
/// neither wraps (16- and 32-bit code) nor leaves the canonical range.
pub const fn plain_advance(rip: u64, len: u64) -> bool {
    (rip & 0xffff) + len <= 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: Caller =
        Caller { domid: 3, privileged: false, vcpu: 1, hypercall_insn: 1, tsc_khz: 2_000_000 };

    #[test]
    fn version_from_ring_0_and_cpuid_are_completed_the_rest_is_not() {
        let host = |_, _| [0; 4];
        let version = FastExit::Hypercall;
        let mut g = Gprs { rax: abi::Op::Version as u64, ..Gprs::default() };
        assert!(accepts(version, &g, || 0));
        apply(version, &mut g, &CALLER, host);
        assert_eq!(g.rax, u64::from(abi::abi_version_word()));
        for (rax, cpl) in [(abi::Op::Version as u64, 3), (abi::Op::Yield as u64, 0)] {
            let g = Gprs { rax, ..Gprs::default() };
            assert!(!accepts(version, &g, || cpl), "{rax} at CPL {cpl}: the core's");
        }
        let yield_ = Gprs { rax: abi::Op::Yield as u64, ..Gprs::default() };
        assert!(!accepts(version, &yield_, || unreachable!("no CPL read for another op")));
        // CPUID: the same answer the core gives (`cpuid::guest_cpuid`), rbx..rdx included.
        let mut g = Gprs { rax: abi::cpuid::LEAF_VERSION.into(), ..Gprs::default() };
        assert!(accepts(FastExit::Cpuid, &g, || 3));
        apply(FastExit::Cpuid, &mut g, &CALLER, host);
        let want = guest_cpuid(abi::cpuid::LEAF_VERSION, 0, &CALLER, host);
        assert_eq!([g.rax, g.rbx, g.rcx, g.rdx], want.map(u64::from));
        assert_eq!(g.rbx, 3, "the caller's domid");
    }

    #[test]
    fn rip_moves_on_plainly_only_within_a_64k_block() {
        assert!(plain_advance(0x10_0000, 3));
        assert!(plain_advance(0xfffc, 3));
        assert!(!plain_advance(0xfffe, 3), "16-bit IP would wrap");
        assert!(!plain_advance(0xffff_fffe, 2), "32-bit EIP would wrap");
        assert!(!plain_advance(0x7fff_ffff_fffe, 3), "would leave the canonical range");
    }
}
