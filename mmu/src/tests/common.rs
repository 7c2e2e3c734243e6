//! Helpers shared by the unit tests.

use crate::sim::SimHost;
use crate::*;

/// Host backing used by test slots; the crate never touches guest memory, so any aligned
/// address works.
pub const HPA: u64 = 0x40_0000_0000;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

pub const EPT4K: Config = Config { format: Format::Ept, large_2m: false, large_1g: false };
pub const EPT: Config = Config { format: Format::Ept, large_2m: true, large_1g: true };
pub const NPT: Config = Config { format: Format::Npt, large_2m: true, large_1g: true };

pub fn host() -> SimHost {
    SimHost::new(1 << 22)
}

#[track_caller]
pub fn check(m: &Mmu, h: &SimHost) {
    if let Err(v) = m.check_invariants(h) {
        panic!("invariant broken: {v:?}");
    }
    assert_eq!(m.frames_held(), h.outstanding() as u64, "frame accounting");
}

/// A domain with one slot at gpa 0 and vCPU 0 holding the root.
pub fn domain(cfg: Config, size: u64) -> (Mmu, SimHost) {
    let mut h = host();
    let mut m = Mmu::new(cfg);
    m.add_slot(&mut h, 0, 0, size, HPA, 0).unwrap();
    m.acquire_root(&mut h, 0).unwrap();
    check(&m, &h);
    (m, h)
}

#[track_caller]
pub fn fault(m: &mut Mmu, h: &mut SimHost, gpa: u64, a: Access) -> FaultOutcome {
    fault_on(m, h, 0, gpa, a)
}

#[track_caller]
pub fn fault_on(m: &mut Mmu, h: &mut SimHost, vcpu: usize, gpa: u64, a: Access) -> FaultOutcome {
    m.topup(h).unwrap();
    let r = m.page_fault(h, vcpu, gpa, a).unwrap();
    check(m, h);
    r
}

pub const FIXED_4K: FaultOutcome = FaultOutcome::Fixed { size: PageSize::Size4K };
pub const FIXED_2M: FaultOutcome = FaultOutcome::Fixed { size: PageSize::Size2M };
pub const FIXED_1G: FaultOutcome = FaultOutcome::Fixed { size: PageSize::Size1G };

#[track_caller]
pub fn teardown(mut m: Mmu, mut h: SimHost) {
    m.destroy(&mut h);
    assert_eq!(h.outstanding(), 0, "frames leaked");
    assert_eq!(m.frames_held(), 0);
}
