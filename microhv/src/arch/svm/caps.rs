//! Reads the SVM CPUID leaves and `VM_CR` and decides, with `microhv_core::hwcaps`, whether this
//! CPU can run microhv.

use crate::arch::x86_64::cpu::{cpuid, rdmsr, wrmsr};
use microhv_core::hwcaps::{self, SvmCpuid, SvmFeatures, Unavailable};

/// `VM_CR`.
pub const MSR_VM_CR: u32 = 0xc001_0114;

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
        return Err(Unavailable::NotOffered);
    }
    // SAFETY: VM_CR exists on every CPU that reports SVM.
    let vm_cr = unsafe { rdmsr(MSR_VM_CR) };
    if let Some(v) = hwcaps::vm_cr(vm_cr)? {
        // SAFETY: VM_CR is unlocked, so SVMDIS may be written; only that bit changes.
        unsafe { wrmsr(MSR_VM_CR, v) };
    }
    hwcaps::check_svm(&c).map_err(Unavailable::Missing)
}
