//! What guests may do with control registers and MSRs, and scheduling constants.
//!
//! The backends own the bits the hardware forces; these functions decide, for a write a guest
//! attempted, whether it is architecturally valid and offered by microhv (apply it) or not
//! (inject #GP, as a CPU without the feature would).

/// CR4 bits a guest may set: VME, PVI, TSD, DE, PSE, PAE, MCE, PGE, PCE, OSFXSR, OSXMMEXCPT,
/// FSGSBASE, SMEP, SMAP. Everything else (VMXE, SMXE, OSXSAVE, PCIDE, PKE, LA57, UMIP, CET, …)
/// is for features CPUID hides.
pub const GUEST_CR4_ALLOWED: u64 = 0x1ff | (1 << 9) | (1 << 10) | (1 << 16) | (1 << 20) | (1 << 21);

/// Time slice given to a vCPU when another one is waiting, in TSC ticks (under Bochs: retired
/// instructions).
pub const VCPU_SLICE: u64 = 4_000_000;
const _: () = assert!(VCPU_SLICE <= u32::MAX as u64, "reported in PhysInfo::time_slice");

use crate::regs::*;
/// EFER bits a guest may write (LMA is the hardware's).
pub const GUEST_EFER_ALLOWED: u64 = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;

/// Whether a guest write of `new` to CR0 is valid, given the current EFER and CR4 and whether
/// the writing code runs in 64-bit mode (where paging cannot be turned off).
pub fn cr0_write_ok(new: u64, efer: u64, cr4: u64, code64: bool) -> bool {
    let reserved = new >> 32 != 0;
    let pg_without_pe = new & CR0_PG != 0 && new & CR0_PE == 0;
    let nw_without_cd = new & CR0_NW != 0 && new & CR0_CD == 0;
    let long_without_pae = new & CR0_PG != 0 && efer & EFER_LME != 0 && cr4 & CR4_PAE == 0;
    let paging_off_in_64bit = code64 && new & CR0_PG == 0;
    !(reserved || pg_without_pe || nw_without_cd || long_without_pae || paging_off_in_64bit)
}

/// Whether a CR0 write from `old` to `new` activates IA-32e mode: paging goes on with
/// EFER.LME set.
pub fn activates_ia32e(old: u64, new: u64, efer: u64) -> bool {
    old & CR0_PG == 0 && new & CR0_PG != 0 && efer & EFER_LME != 0
}

/// Descriptor type of a busy 32-bit TSS, which in IA-32e mode is the 64-bit busy TSS.
pub const TSS_BUSY_64: u64 = 11;

/// Whether a guest write of `new` to CR4 is valid: only bits of `allowed` (see
/// [`guest_cr4_allowed`]), and PAE stays on in long mode.
pub fn cr4_write_ok(new: u64, efer: u64, allowed: u64) -> bool {
    new & !allowed == 0 && !(efer & EFER_LMA != 0 && new & CR4_PAE == 0)
}

/// [`GUEST_CR4_ALLOWED`] less the features this CPU lacks, from its CPUID leaf 1 edx and leaf
/// 7.0 ebx: a guest may only turn on what the hardware can run (and what CPUID shows it).
pub fn guest_cr4_allowed(leaf1_edx: u32, leaf7_ebx: u32) -> u64 {
    // (CR4 bit, CPUID register, CPUID bit) for each feature that gates a CR4 bit.
    const GATES: [(u32, bool, u32); 12] = [
        (0, false, 1),   // VME
        (1, false, 1),   // PVI
        (3, false, 2),   // DE
        (4, false, 3),   // PSE
        (5, false, 6),   // PAE
        (6, false, 7),   // MCE
        (7, false, 13),  // PGE
        (9, false, 24),  // OSFXSR: FXSR
        (10, false, 25), // OSXMMEXCPT: SSE
        (16, true, 0),   // FSGSBASE
        (20, true, 7),   // SMEP
        (21, true, 20),  // SMAP
    ];
    let mut allowed = GUEST_CR4_ALLOWED;
    for (cr4_bit, leaf7, cpuid_bit) in GATES {
        let reg = if leaf7 { leaf7_ebx } else { leaf1_edx };
        if reg & (1 << cpuid_bit) == 0 {
            allowed &= !(1 << cr4_bit);
        }
    }
    allowed
}

/// Whether a guest write of `new` to EFER is valid, given the current EFER and CR0: only
/// offered bits, and LME may not change while paging is on.
pub fn efer_write_ok(new: u64, cur: u64, cr0: u64) -> bool {
    new & !GUEST_EFER_ALLOWED == 0 && !(cr0 & CR0_PG != 0 && (new ^ cur) & EFER_LME != 0)
}

/// MSRs microhv answers itself when they exit.
pub mod msr {
    /// IA32_TIME_STAMP_COUNTER.
    pub const TSC: u32 = 0x10;
    /// IA32_APIC_BASE.
    pub const APIC_BASE: u32 = 0x1b;
    /// IA32_FEATURE_CONTROL.
    pub const FEATURE_CONTROL: u32 = 0x3a;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_TSC_ADJUST.
    pub const TSC_ADJUST: u32 = 0x3b;
    /// AMD's legacy PERF_CTL0–3 (`..=0xc001_0003`) and PERF_CTR0–3 (inert: read 0).
    pub const AMD_PERF: core::ops::RangeInclusive<u32> = 0xc001_0000..=0xc001_0007;
    /// IA32_EFER.
    pub const EFER: u32 = 0xc000_0080;
    /// IA32_BIOS_SIGN_ID: the microcode revision (bits 63:32), which software reads after
    /// writing 0 and executing CPUID; writes are accepted and dropped.
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    /// AMD's interrupt-pending message register (C1E); read as 0 on AMD CPUs: no C1E.
    pub const AMD_INT_PENDING: u32 = 0xc001_0055;
    /// AMD's SYSCFG (its MTRR extensions); read as 0 on AMD CPUs: no DRAM-modified fixed
    /// ranges, no top-of-memory registers in use.
    pub const AMD_SYSCFG: u32 = 0xc001_0010;
    /// IA32_FS_BASE.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// IA32_GS_BASE.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// IA32_KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// IA32_STAR.
    pub const STAR: u32 = 0xc000_0081;
    /// IA32_LSTAR.
    pub const LSTAR: u32 = 0xc000_0082;
    /// IA32_CSTAR.
    pub const CSTAR: u32 = 0xc000_0083;
    /// IA32_FMASK.
    pub const FMASK: u32 = 0xc000_0084;
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_PAT.
    pub const PAT: u32 = 0x277;
}

/// MSRs guests read and write without an exit. The backends keep each guest's values: FS/GS
/// bases, SYSENTER and PAT are guest state the VMCS / VMCB loads and saves; the syscall MSRs and
/// KERNEL_GS_BASE are swapped by the backend (microhv never uses them itself). TSC reads are
/// passed through too; its writes still exit.
pub const PASSTHROUGH_MSRS: [u32; 11] = [
    msr::FS_BASE,
    msr::GS_BASE,
    msr::KERNEL_GS_BASE,
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::FMASK,
    msr::SYSENTER_CS,
    msr::SYSENTER_ESP,
    msr::SYSENTER_EIP,
    msr::PAT,
];

/// Clears bit `bit` of an I/O or MSR permission bitmap (bit 0 is bit 0 of byte 0): the
/// access it stands for no longer exits.
pub fn clear_bit(bits: &mut [u8], bit: usize) {
    bits[bit / 8] &= !(1 << (bit % 8));
}

/// Of [`PASSTHROUGH_MSRS`], those no VMCS field holds: the VMX backend swaps them itself.
pub const SYSCALL_MSRS: [u32; 5] =
    [msr::STAR, msr::LSTAR, msr::CSTAR, msr::FMASK, msr::KERNEL_GS_BASE];

/// The xAPIC base microhv reports: the default address, enabled, this CPU is the BSP.
pub const APIC_BASE_VALUE: u64 = 0xfee0_0000 | (1 << 11) | (1 << 8);
/// IA32_MISC_ENABLE at reset: fast strings on, branch-trace store and PEBS unavailable (the
/// debug store is hidden).
pub const MISC_ENABLE_VALUE: u64 = 1 | (1 << 11) | (1 << 12);
/// IA32_MISC_ENABLE bits a guest may change: fast strings. A write that changes any other bit
/// would enable a feature CPUID does not show (or disable one it does) and raises #GP.
pub const MISC_ENABLE_WRITABLE: u64 = 1;
/// IA32_FEATURE_CONTROL as reported: locked, VMX off (guests get no VMX).
pub const FEATURE_CONTROL_VALUE: u64 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cr0_rules() {
        assert!(cr0_write_ok(0x8000_0011, 0, CR4_PAE, false));
        assert!(!cr0_write_ok(0x8000_0000, 0, 0, false), "PG without PE");
        assert!(!cr0_write_ok(CR0_NW | CR0_PE, 0, 0, false), "NW without CD");
        assert!(!cr0_write_ok(1 << 32, 0, 0, false), "reserved");
        assert!(!cr0_write_ok(CR0_PG | CR0_PE, EFER_LME, 0, false), "long mode without PAE");
        assert!(!cr0_write_ok(CR0_PE, EFER_LME | EFER_LMA, CR4_PAE, true), "PG off in 64-bit code");
        assert!(cr0_write_ok(CR0_PE, EFER_LME | EFER_LMA, CR4_PAE, false), "compatibility mode");
    }

    #[test]
    fn cr4_rules() {
        assert!(cr4_write_ok(CR4_PAE | (1 << 9) | (1 << 10), 0, GUEST_CR4_ALLOWED));
        assert!(!cr4_write_ok(1 << 13, 0, GUEST_CR4_ALLOWED), "VMXE");
        assert!(!cr4_write_ok(1 << 18, 0, GUEST_CR4_ALLOWED), "OSXSAVE");
        assert!(!cr4_write_ok(0, EFER_LMA, GUEST_CR4_ALLOWED), "PAE off in long mode");
    }

    #[test]
    fn cr4_follows_the_cpu() {
        assert_eq!(guest_cr4_allowed(u32::MAX, u32::MAX), GUEST_CR4_ALLOWED);
        let no_smep_smap = guest_cr4_allowed(u32::MAX, !((1 << 7) | (1 << 20)));
        assert_eq!(no_smep_smap & ((1 << 20) | (1 << 21)), 0);
        assert_ne!(no_smep_smap & (1 << 16), 0, "FSGSBASE stays");
        assert_eq!(guest_cr4_allowed(!(1 << 13), u32::MAX) & (1 << 7), 0, "no PGE");
    }

    #[test]
    fn efer_rules() {
        assert!(efer_write_ok(EFER_LME | EFER_NXE, 0, 0));
        assert!(!efer_write_ok(1 << 12, 0, 0), "SVME");
        assert!(!efer_write_ok(0, EFER_LME | EFER_LMA, CR0_PG), "LME off while paging");
        assert!(efer_write_ok(EFER_LME | EFER_LMA | EFER_SCE, EFER_LME | EFER_LMA, CR0_PG));
    }
}
