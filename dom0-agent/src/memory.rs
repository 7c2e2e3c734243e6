//! Free host memory as dom0's checks count it: whether destroying domains gave back every
//! frame.

/// Free host memory plus what dom0's own MMU holds: dom0's page tables grow as it touches new
/// memory (module images, buffers), so only this sum must come back exactly after a domU is
/// destroyed.
pub fn free_bytes() -> u64 {
    let hv = guest_rt::hv();
    let free = hv.phys_info().map_or(0, |p| p.free_bytes);
    free + hv.stats(0).map_or(0, |s| s.mmu_frames * 4096)
}
