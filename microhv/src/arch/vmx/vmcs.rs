//! VMCS field access and the VMX instructions that manage it.

use x86::bits64::vmx;

/// Reads a field of the current VMCS.
///
/// Unchecked, as the exit path wants it (one check per exit, not per field): VMREAD fails only
/// without a current VMCS or for an encoding the CPU lacks, and the backend reads only with
/// its vCPU's VMCS current (`make_current`) and only fields every VMX CPU with the features
/// `detect` requires has. A failure would leave the destination as initialized, 0.
pub fn read(field: u32) -> u64 {
    let mut v = 0u64;
    // SAFETY: as above; VMREAD only writes its register operand (and RFLAGS).
    unsafe {
        core::arch::asm!(
            "vmread {v}, {f}",
            v = inout(reg) v,
            f = in(reg) u64::from(field),
            options(nostack, nomem)
        )
    };
    v
}

/// Writes a field of the current VMCS, unchecked for the same reasons as [`read`] (VMWRITE
/// checks the encoding, not the value: values are checked by VM entry, whose failure is
/// reported as an exit).
pub fn write(field: u32, value: u64) {
    // SAFETY: VMX operation is on and a VMCS is current whenever the backend runs; the values
    // written are checked against the capability MSRs where the SDM requires it.
    unsafe {
        core::arch::asm!(
            "vmwrite {f}, {v}",
            f = in(reg) u64::from(field),
            v = in(reg) value,
            options(nostack, nomem)
        )
    };
}

/// VMXON with the region at `pa`.
///
/// # Safety
/// CR4.VMXE is set, the fixed CR0/CR4 bits are honoured, and `pa` is a zeroed frame holding the
/// VMCS revision identifier, owned by the backend for as long as VMX operation lasts.
pub unsafe fn vmxon(pa: u64) -> Result<(), x86::vmx::VmFail> {
    // SAFETY: forwarded to the caller.
    unsafe { vmx::vmxon(pa) }
}

/// VMCLEAR then VMPTRLD: makes the VMCS at `pa` current and clear.
///
/// # Safety
/// `pa` is a frame holding the revision identifier, owned by one vCPU.
pub unsafe fn clear_and_load(pa: u64) -> Result<(), x86::vmx::VmFail> {
    // SAFETY: forwarded to the caller.
    unsafe {
        vmx::vmclear(pa)?;
        vmx::vmptrld(pa)
    }
}

/// VMPTRLD.
///
/// # Safety
/// `pa` is a VMCS previously set up with [`clear_and_load`] and not freed.
pub unsafe fn load(pa: u64) -> Result<(), x86::vmx::VmFail> {
    // SAFETY: forwarded to the caller.
    unsafe { vmx::vmptrld(pa) }
}

/// VMCLEAR (before a VMCS frame is freed).
///
/// # Safety
/// `pa` is a VMCS of this backend.
pub unsafe fn clear(pa: u64) -> Result<(), x86::vmx::VmFail> {
    // SAFETY: forwarded to the caller.
    unsafe { vmx::vmclear(pa) }
}

#[repr(C, align(16))]
struct InvDescriptor([u64; 2]);

/// INVEPT single-context for `eptp`.
pub fn invept_single(eptp: u64) {
    let d = InvDescriptor([eptp, 0]);
    // SAFETY: VMX operation is on, single-context INVEPT was checked at detection, and the
    // descriptor is a valid 16-byte structure on the stack.
    unsafe {
        core::arch::asm!("invept {t}, [{d}]", t = in(reg) 1u64, d = in(reg) &d,
                         options(nostack, readonly));
    }
}

/// INVVPID single-context for `vpid`.
pub fn invvpid_single(vpid: u16) {
    let d = InvDescriptor([u64::from(vpid), 0]);
    // SAFETY: as for INVEPT; single-context INVVPID was checked at detection; vpid != 0.
    unsafe {
        core::arch::asm!("invvpid {t}, [{d}]", t = in(reg) 1u64, d = in(reg) &d,
                         options(nostack, readonly));
    }
}
