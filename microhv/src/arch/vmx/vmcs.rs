//! VMCS field access and the VMX instructions that manage it.

use x86::bits64::vmx;

/// Reads a field of the current VMCS. A failure (an encoding this CPU lacks) reads as 0 and is
/// logged: the callers only read fields every VMX CPU with the checked features has.
pub fn read(field: u32) -> u64 {
    // SAFETY: VMX operation is on and a VMCS is current whenever the backend runs.
    match unsafe { vmx::vmread(field) } {
        Ok(v) => v,
        Err(e) => {
            log::error!("VMREAD {field:#x} failed: {e:?}");
            0
        }
    }
}

/// Writes a field of the current VMCS.
pub fn write(field: u32, value: u64) {
    // SAFETY: VMX operation is on and a VMCS is current whenever the backend runs; the values
    // written are checked against the capability MSRs where the SDM requires it.
    if let Err(e) = unsafe { vmx::vmwrite(field, value) } {
        log::error!("VMWRITE {field:#x} = {value:#x} failed: {e:?}");
    }
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
