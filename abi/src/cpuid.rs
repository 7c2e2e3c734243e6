//! CPUID leaves through which a guest discovers microhv.
//!
//! | leaf          | eax                          | ebx, ecx, edx                       |
//! |---------------|------------------------------|-------------------------------------|
//! | `0x4000_0000` | highest microhv leaf         | signature `"microhv-vmm\0"`         |
//! | `0x4000_0001` | ABI `major << 16 \| minor`   | ebx = caller's domid, ecx = `FLAG_*`|
//! | `0x4000_0002` | `HYPERCALL_*` instruction    | 0                                   |
//! | `0x4000_0010` | TSC frequency in kHz         | ebx = local APIC bus kHz (the de facto hypervisor timing leaf VMware defined) |
//!
//! Leaves between `LEAF_HYPERCALL` and `LEAF_TIMING` read as zeros.
//!
//! CPUID leaf 1 reports the "hypervisor present" bit (ecx bit 31).

/// First microhv leaf.
pub const LEAF_BASE: u32 = 0x4000_0000;
/// Version and identity leaf.
pub const LEAF_VERSION: u32 = 0x4000_0001;
/// Hypercall-instruction leaf.
pub const LEAF_HYPERCALL: u32 = 0x4000_0002;
/// Timing leaf: eax = TSC kHz, ebx = local APIC timer bus kHz (since ABI 1.2).
pub const LEAF_TIMING: u32 = 0x4000_0010;
/// Highest leaf microhv answers.
pub const LEAF_MAX: u32 = LEAF_TIMING;

/// The 12-byte signature in ebx, ecx, edx of `LEAF_BASE`.
pub const SIGNATURE: [u8; 12] = *b"microhv-vmm\0";

/// `LEAF_VERSION` ecx bit: the caller is dom0 (may call the domain-control operations).
pub const FLAG_PRIVILEGED: u32 = 1 << 0;

/// `LEAF_HYPERCALL` eax: use `VMCALL`.
pub const HYPERCALL_VMCALL: u32 = 1;
/// `LEAF_HYPERCALL` eax: use `VMMCALL`.
pub const HYPERCALL_VMMCALL: u32 = 2;

/// The signature as the three registers carry it.
pub const fn signature_regs() -> [u32; 3] {
    let s = SIGNATURE;
    [
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
    ]
}
