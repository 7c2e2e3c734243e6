//! Reads the VMX capability MSRs and decides, with `microhv_core::hwcaps`, whether this CPU can
//! run microhv.

use crate::arch::x86_64::cpu::{cpuid, rdmsr, wrmsr};
use microhv_core::hwcaps::{
    self, Unavailable, VMX_BASIC_TRUE_CTLS, VmxFeatures, VmxMsrs, cpuid_bits,
};
use x86::msr;

/// Reads every capability MSR. Only called once CPUID says VMX exists (they #GP otherwise).
fn read_msrs() -> VmxMsrs {
    // SAFETY: CPUID reported VMX, so IA32_VMX_BASIC exists; the TRUE control MSRs exist when its
    // bit 55 is set, and PROCBASED_CTLS2 / EPT_VPID_CAP when the corresponding allowed-1 bits
    // are set, which is checked before each read.
    unsafe {
        let basic = rdmsr(msr::IA32_VMX_BASIC);
        let t = basic & VMX_BASIC_TRUE_CTLS != 0;
        let pick = |tru, legacy| if t { tru } else { legacy };
        let procbased =
            rdmsr(pick(msr::IA32_VMX_TRUE_PROCBASED_CTLS, msr::IA32_VMX_PROCBASED_CTLS));
        let has_secondary = procbased >> 63 != 0;
        let procbased2 = if has_secondary { rdmsr(msr::IA32_VMX_PROCBASED_CTLS2) } else { 0 };
        let sec = (procbased2 >> 32) as u32;
        let ept_or_vpid = sec & (hwcaps::secondary::EPT | hwcaps::secondary::VPID) != 0;
        VmxMsrs {
            basic,
            pinbased: rdmsr(pick(msr::IA32_VMX_TRUE_PINBASED_CTLS, msr::IA32_VMX_PINBASED_CTLS)),
            procbased,
            procbased2,
            exit: rdmsr(pick(msr::IA32_VMX_TRUE_EXIT_CTLS, msr::IA32_VMX_EXIT_CTLS)),
            entry: rdmsr(pick(msr::IA32_VMX_TRUE_ENTRY_CTLS, msr::IA32_VMX_ENTRY_CTLS)),
            misc: rdmsr(msr::IA32_VMX_MISC),
            ept_vpid: if ept_or_vpid { rdmsr(msr::IA32_VMX_EPT_VPID_CAP) } else { 0 },
            cr0_fixed0: rdmsr(msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rdmsr(msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rdmsr(msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rdmsr(msr::IA32_VMX_CR4_FIXED1),
        }
    }
}

/// Checks for VMX and everything microhv needs from it, enabling VMX in
/// `IA32_FEATURE_CONTROL` when the firmware left it unlocked.
pub fn detect() -> Result<(VmxFeatures, VmxMsrs), Unavailable> {
    if cpuid(1, 0)[2] & cpuid_bits::VMX == 0 {
        return Err(Unavailable::NotOffered);
    }
    // SAFETY: IA32_FEATURE_CONTROL exists on every CPU with VMX.
    let fc = unsafe { rdmsr(msr::IA32_FEATURE_CONTROL) };
    if let Some(v) = hwcaps::feature_control(fc)? {
        // SAFETY: the MSR is unlocked, so writing the enable and lock bits is allowed.
        unsafe { wrmsr(msr::IA32_FEATURE_CONTROL, v) };
    }
    let msrs = read_msrs();
    hwcaps::check_vmx(&msrs).map(|f| (f, msrs)).map_err(Unavailable::Missing)
}
