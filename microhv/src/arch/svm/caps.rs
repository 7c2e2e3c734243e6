//! Reads the SVM CPUID leaves and `VM_CR` and decides, with `microhv_core::hwcaps`, whether this
//! CPU can run microhv.

use crate::arch::x86_64::cpu::{cpuid, rdmsr, wrmsr};
use microhv_core::hwcaps::{self, Missing, SvmCpuid, SvmFeatures, VmCr};

/// `VM_CR`.
pub const MSR_VM_CR: u32 = 0xc001_0114;

/// Why SVM cannot be used.
#[derive(Debug)]
pub enum Unavailable {
    /// CPUID.8000_0001h:ECX.SVM is clear.
    NoSvm,
    /// The firmware set and locked `VM_CR.SVMDIS`.
    DisabledByFirmware,
    /// SVM is there, without features microhv needs.
    Missing(Missing),
}

/// The CPUID leaves that describe SVM.
pub fn read_cpuid() -> SvmCpuid {
    let max_ext_leaf = cpuid(0x8000_0000, 0)[0];
    let [_, _, ext1_ecx, ext1_edx] =
        if max_ext_leaf >= 0x8000_0001 { cpuid(0x8000_0001, 0) } else { [0; 4] };
    let [svm_eax, svm_ebx, _, svm_edx] =
        if max_ext_leaf >= 0x8000_000a { cpuid(0x8000_000a, 0) } else { [0; 4] };
    SvmCpuid { max_ext_leaf, ext1_ecx, ext1_edx, svm_eax, svm_ebx, svm_edx }
}

/// Checks for SVM and everything microhv needs from it, clearing `VM_CR.SVMDIS` when the
/// firmware left it unlocked.
pub fn detect() -> Result<SvmFeatures, Unavailable> {
    let c = read_cpuid();
    if !c.has_svm() {
        return Err(Unavailable::NoSvm);
    }
    // SAFETY: VM_CR exists on every CPU that reports SVM.
    let vm_cr = unsafe { rdmsr(MSR_VM_CR) };
    match hwcaps::vm_cr(vm_cr) {
        VmCr::Ready => {}
        VmCr::DisabledByFirmware => return Err(Unavailable::DisabledByFirmware),
        // SAFETY: VM_CR is unlocked, so SVMDIS may be written; only that bit changes.
        VmCr::Write(v) => unsafe { wrmsr(MSR_VM_CR, v) },
    }
    hwcaps::check_svm(&c).map_err(Unavailable::Missing)
}
