//! Decoding of the CPU's virtualization capability values (CPUID leaves, the VMX capability
//! MSRs, AMD's `VM_CR`). This is pure arithmetic on values the arch backends read, kept here so
//! it is tested on the host: which features are missing, and which control values to program.

/// A feature microhv needs, with where the CPU reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// What it is, in words.
    pub what: &'static str,
    /// Where it is reported (CPUID bit or MSR field).
    pub source: &'static str,
}

/// The VMX capabilities microhv needs, in the order [`check_vmx`] checks them.
pub const VMX_REQUIREMENTS: [Requirement; 10] = [
    Requirement { what: "TRUE VMX control MSRs", source: "IA32_VMX_BASIC[55]" },
    Requirement { what: "write-back VMCS memory", source: "IA32_VMX_BASIC[53:50]" },
    Requirement { what: "secondary processor controls", source: "IA32_VMX_PROCBASED_CTLS[63]" },
    Requirement { what: "EPT", source: "IA32_VMX_PROCBASED_CTLS2[33]" },
    Requirement { what: "unrestricted guest", source: "IA32_VMX_PROCBASED_CTLS2[39]" },
    Requirement { what: "VPID", source: "IA32_VMX_PROCBASED_CTLS2[37]" },
    Requirement { what: "4-level EPT", source: "IA32_VMX_EPT_VPID_CAP[6]" },
    Requirement { what: "write-back EPT tables", source: "IA32_VMX_EPT_VPID_CAP[14]" },
    Requirement { what: "single-context INVEPT", source: "IA32_VMX_EPT_VPID_CAP[20,25]" },
    Requirement { what: "single-context INVVPID", source: "IA32_VMX_EPT_VPID_CAP[32,41]" },
];

/// The requirements a check found missing: bit `i` stands for `table[i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing {
    bits: u32,
    table: &'static [Requirement],
}

impl Missing {
    /// The missing requirements.
    pub fn iter(&self) -> impl Iterator<Item = &'static Requirement> + '_ {
        self.table.iter().enumerate().filter(|(i, _)| self.bits & (1 << i) != 0).map(|(_, r)| r)
    }

    /// The requirements of `table` whose entry in `has` is false, if any.
    fn check<const N: usize>(has: [bool; N], table: &'static [Requirement; N]) -> Result<(), Self> {
        let bits = (0..N).filter(|&i| !has[i]).fold(0, |b, i| b | 1 << i);
        if bits == 0 { Ok(()) } else { Err(Missing { bits, table }) }
    }

    /// How many are missing.
    #[cfg(test)]
    pub fn count(&self) -> u32 {
        self.bits.count_ones()
    }
}

/// The value of a VMX control field: `desired` plus the bits the capability MSR forces to 1,
/// if every desired bit is allowed to be 1. `cap` is the `IA32_VMX_*_CTLS` / `TRUE_*` value:
/// allowed 0-settings in bits 31:0 (a 1 there means "must be 1"), allowed 1-settings in 63:32.
pub fn adjust_controls(desired: u32, cap: u64) -> Result<u32, u32> {
    let must_be_one = cap as u32;
    let may_be_one = (cap >> 32) as u32;
    let missing = desired & !may_be_one;
    if missing != 0 {
        return Err(missing);
    }
    Ok((desired | must_be_one) & may_be_one)
}

/// `IA32_FEATURE_CONTROL` bits.
pub mod feature_control {
    /// Lock: the MSR can no longer be written until reset.
    pub const LOCK: u64 = 1 << 0;
    /// VMXON allowed outside SMX operation.
    pub const VMX_OUTSIDE_SMX: u64 = 1 << 2;
}

/// Why the CPU's virtualization extension (VMX or SVM) cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// CPUID does not report it.
    NotOffered,
    /// The firmware disabled it and locked the setting.
    DisabledByFirmware,
    /// It is there, without features microhv needs.
    Missing(Missing),
}

/// What `IA32_FEATURE_CONTROL` needs before VMXON: nothing (locked with VMX enabled), this
/// value written (unlocked: VMX enabled, locked), or nothing can be done (locked with VMX off).
pub fn feature_control(value: u64) -> Result<Option<u64>, Unavailable> {
    use feature_control::*;
    match (value & LOCK != 0, value & VMX_OUTSIDE_SMX != 0) {
        (true, true) => Ok(None),
        (true, false) => Err(Unavailable::DisabledByFirmware),
        (false, _) => Ok(Some(value | LOCK | VMX_OUTSIDE_SMX)),
    }
}

/// The VMX capability MSRs microhv reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmxMsrs {
    /// `IA32_VMX_BASIC`.
    pub basic: u64,
    /// `IA32_VMX_TRUE_PINBASED_CTLS` (or the non-TRUE MSR when TRUE ones are absent).
    pub pinbased: u64,
    /// `IA32_VMX_TRUE_PROCBASED_CTLS`.
    pub procbased: u64,
    /// `IA32_VMX_PROCBASED_CTLS2`.
    pub procbased2: u64,
    /// `IA32_VMX_TRUE_EXIT_CTLS`.
    pub exit: u64,
    /// `IA32_VMX_TRUE_ENTRY_CTLS`.
    pub entry: u64,
    /// `IA32_VMX_MISC`.
    pub misc: u64,
    /// `IA32_VMX_EPT_VPID_CAP`.
    pub ept_vpid: u64,
    /// `IA32_VMX_CR0_FIXED0`.
    pub cr0_fixed0: u64,
    /// `IA32_VMX_CR0_FIXED1`.
    pub cr0_fixed1: u64,
    /// `IA32_VMX_CR4_FIXED0`.
    pub cr4_fixed0: u64,
    /// `IA32_VMX_CR4_FIXED1`.
    pub cr4_fixed1: u64,
}

/// `IA32_VMX_BASIC` bit 55: the TRUE control MSRs exist.
pub const VMX_BASIC_TRUE_CTLS: u64 = 1 << 55;

/// Secondary-control bits microhv relies on.
pub mod secondary {
    /// Enable EPT.
    pub const EPT: u32 = 1 << 1;
    /// Enable VPID.
    pub const VPID: u32 = 1 << 5;
    /// Unrestricted guest.
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
}

/// `IA32_VMX_EPT_VPID_CAP` bits.
pub mod ept_vpid {
    /// Page-walk length 4.
    pub const WALK_4: u64 = 1 << 6;
    /// Write-back EPT paging structures.
    pub const WB: u64 = 1 << 14;
    /// 2 MiB EPT pages.
    pub const PAGE_2M: u64 = 1 << 16;
    /// 1 GiB EPT pages.
    pub const PAGE_1G: u64 = 1 << 17;
    /// INVEPT.
    pub const INVEPT: u64 = 1 << 20;
    /// INVEPT single-context.
    pub const INVEPT_SINGLE: u64 = 1 << 25;
    /// INVVPID.
    pub const INVVPID: u64 = 1 << 32;
    /// INVVPID single-context.
    pub const INVVPID_SINGLE: u64 = 1 << 41;
}

/// What the VMX backend may use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxFeatures {
    /// VMCS revision identifier.
    pub revision: u32,
    /// 2 MiB EPT leaves.
    pub ept_2m: bool,
    /// 1 GiB EPT leaves.
    pub ept_1g: bool,
    /// The preemption timer counts down every `2^rate` TSC ticks.
    pub preemption_timer_rate: u8,
}

/// Checks every VMX capability microhv needs: the TRUE controls, write-back VMCS memory, the
/// secondary controls with EPT, unrestricted guest and VPID, 4-level write-back EPT with
/// single-context INVEPT, and single-context INVVPID.
pub fn check_vmx(m: &VmxMsrs) -> Result<VmxFeatures, Missing> {
    use ept_vpid::*;
    let sec = (m.procbased2 >> 32) as u32;
    let has = [
        m.basic & VMX_BASIC_TRUE_CTLS != 0,
        (m.basic >> 50) & 0xf == 6,
        m.procbased >> 63 != 0,
        sec & secondary::EPT != 0,
        sec & secondary::UNRESTRICTED_GUEST != 0,
        sec & secondary::VPID != 0,
        m.ept_vpid & WALK_4 != 0,
        m.ept_vpid & WB != 0,
        m.ept_vpid & INVEPT != 0 && m.ept_vpid & INVEPT_SINGLE != 0,
        m.ept_vpid & INVVPID != 0 && m.ept_vpid & INVVPID_SINGLE != 0,
    ];
    Missing::check(has, &VMX_REQUIREMENTS)?;
    Ok(VmxFeatures {
        revision: (m.basic & 0x7fff_ffff) as u32,
        ept_2m: m.ept_vpid & PAGE_2M != 0,
        ept_1g: m.ept_vpid & PAGE_1G != 0,
        preemption_timer_rate: (m.misc & 0x1f) as u8,
    })
}

/// CPUID bits the backends are chosen by.
pub mod cpuid_bits {
    /// Leaf 1 ecx: VMX.
    pub const VMX: u32 = 1 << 5;
    /// Leaf 0x8000_0001 ecx: SVM.
    pub const SVM: u32 = 1 << 2;
    /// Leaf 0x8000_0001 edx: 1 GiB pages (also usable as nested-paging leaves).
    pub const PAGE_1G: u32 = 1 << 26;
    /// Leaf 0x8000_000A edx: nested paging.
    pub const NPT: u32 = 1 << 0;
    /// Leaf 0x8000_000A edx: NRIP save (the VMCB's next-RIP field is written on instruction
    /// intercepts).
    pub const NRIP_SAVE: u32 = 1 << 3;
    /// Leaf 0x8000_000A edx: TLB_CONTROL may flush a single ASID (values 3 and 7).
    pub const FLUSH_BY_ASID: u32 = 1 << 6;

    /// Leaf 0x8000_000A edx: decode assists (EXITINFO1 names the GPR of a MOV-to-CR intercept).
    pub const DECODE_ASSISTS: u32 = 1 << 7;
    /// Leaf 0x8000_000A edx: the PAUSE intercept honours the VMCB's pause filter count.
    pub const PAUSE_FILTER: u32 = 1 << 10;
    /// Leaf 0x8000_000A edx: the pause filter has a threshold.
    pub const PAUSE_FILTER_THRESHOLD: u32 = 1 << 12;
}

/// The vendor string of CPUID leaf 0.
pub fn vendor(leaf0: [u32; 4]) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&leaf0[1].to_le_bytes());
    v[4..8].copy_from_slice(&leaf0[3].to_le_bytes());
    v[8..].copy_from_slice(&leaf0[2].to_le_bytes());
    v
}

/// True for the vendors whose CPUs implement AMD SVM rather than Intel VMX: AMD and Hygon
/// (whose Dhyana cores are AMD Zen). microhv picks its backend by this, as Xen does.
pub fn is_amd_vendor(vendor: &[u8; 12]) -> bool {
    vendor == b"AuthenticAMD" || vendor == b"HygonGenuine"
}

/// The SVM capabilities microhv needs beyond SVM itself, in the order [`check_svm`] checks them.
pub const SVM_REQUIREMENTS: [Requirement; 2] = [
    Requirement { what: "nested paging (NPT)", source: "CPUID.8000_000Ah:EDX.NP[bit 0]" },
    Requirement { what: "guest ASIDs", source: "CPUID.8000_000Ah:EBX (NASID >= 2)" },
];

/// The CPUID values that describe SVM, as the backend reads them. Leaves beyond the highest
/// extended leaf read as zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SvmCpuid {
    /// Leaf 0x8000_0000 eax: the highest extended leaf.
    pub max_ext_leaf: u32,
    /// Leaf 0x8000_0001 ecx.
    pub ext1_ecx: u32,
    /// Leaf 0x8000_0001 edx.
    pub ext1_edx: u32,
    /// Leaf 0x8000_000A eax: SVM revision in bits 7:0.
    pub svm_eax: u32,
    /// Leaf 0x8000_000A ebx: number of ASIDs (ASID 0 is the host's).
    pub svm_ebx: u32,
    /// Leaf 0x8000_000A edx: SVM feature flags.
    pub svm_edx: u32,
}

impl SvmCpuid {
    /// CPUID.8000_0001h:ECX.SVM.
    pub fn has_svm(&self) -> bool {
        self.max_ext_leaf >= 0x8000_0001 && self.ext1_ecx & cpuid_bits::SVM != 0
    }
}

/// What the SVM backend may use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvmFeatures {
    /// SVM revision (CPUID.8000_000Ah:EAX[7:0]).
    pub revision: u8,
    /// ASIDs, counting the host's ASID 0: guests may use `1..asids`.
    pub asids: u32,
    /// The VMCB's next-RIP field is written on instruction intercepts.
    pub nrip_save: bool,
    /// EXITINFO1 of a MOV-to-CR intercept names the source register.
    pub decode_assists: bool,
    /// TLB_CONTROL can flush one ASID (otherwise microhv flushes every ASID).
    pub flush_by_asid: bool,
    /// 1 GiB nested-paging leaves (the CPU has 1 GiB pages).
    pub npt_1g: bool,
    /// The PAUSE intercept can wait for a count of PAUSEs (the PAUSE filter).
    pub pause_filter: bool,
    /// The pause filter's count can be restarted by a gap between PAUSEs (its threshold).
    pub pause_filter_threshold: bool,
}

/// Checks what microhv needs from a CPU that has SVM ([`SvmCpuid::has_svm`]): nested paging and
/// at least one guest ASID. The optional features are reported in [`SvmFeatures`].
pub fn check_svm(c: &SvmCpuid) -> Result<SvmFeatures, Missing> {
    let (eax, ebx, edx) =
        if c.max_ext_leaf >= 0x8000_000A { (c.svm_eax, c.svm_ebx, c.svm_edx) } else { (0, 0, 0) };
    let has = [edx & cpuid_bits::NPT != 0, ebx >= 2];
    Missing::check(has, &SVM_REQUIREMENTS)?;
    Ok(SvmFeatures {
        revision: (eax & 0xff) as u8,
        asids: ebx,
        nrip_save: edx & cpuid_bits::NRIP_SAVE != 0,
        pause_filter: edx & cpuid_bits::PAUSE_FILTER != 0,
        pause_filter_threshold: edx & cpuid_bits::PAUSE_FILTER_THRESHOLD != 0,
        decode_assists: edx & cpuid_bits::DECODE_ASSISTS != 0,
        flush_by_asid: edx & cpuid_bits::FLUSH_BY_ASID != 0,
        npt_1g: c.ext1_edx & cpuid_bits::PAGE_1G != 0,
    })
}

/// `VM_CR` (MSR 0xC001_0114) bits.
pub mod vm_cr {
    /// LOCK: SVMDIS and LOCK can no longer be written.
    pub const LOCK: u64 = 1 << 3;
    /// SVMDIS: EFER.SVME cannot be set.
    pub const SVMDIS: u64 = 1 << 4;
}

/// What `VM_CR` needs before EFER.SVME is set: nothing (SVM allowed), this value written
/// (SVMDIS set but not locked: cleared), or nothing can be done (SVMDIS set and locked).
pub fn vm_cr(value: u64) -> Result<Option<u64>, Unavailable> {
    match (value & vm_cr::SVMDIS != 0, value & vm_cr::LOCK != 0) {
        (false, _) => Ok(None),
        (true, true) => Err(Unavailable::DisabledByFirmware),
        (true, false) => Ok(Some(value & !vm_cr::SVMDIS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Capability values as Bochs reports them for `corei7_skylake_x` (shape, not exact).
    fn good() -> VmxMsrs {
        VmxMsrs {
            basic: (1 << 55) | (6 << 50) | 1,
            pinbased: (0x7fu64 << 32) | 0x16,
            procbased: (0xffff_fffeu64 << 32) | 0x0401_e172,
            procbased2: (0x0000_00ffu64 << 32),
            exit: 0,
            entry: 0,
            misc: 5,
            ept_vpid: ept_vpid::WALK_4
                | ept_vpid::WB
                | ept_vpid::PAGE_2M
                | ept_vpid::INVEPT
                | ept_vpid::INVEPT_SINGLE
                | ept_vpid::INVVPID
                | ept_vpid::INVVPID_SINGLE,
            ..Default::default()
        }
    }

    #[test]
    fn a_capable_cpu_passes() {
        let f = check_vmx(&good()).unwrap();
        assert_eq!(f.revision, 1);
        assert!(f.ept_2m && !f.ept_1g);
        assert_eq!(f.preemption_timer_rate, 5);
    }

    #[test]
    fn each_missing_feature_is_named() {
        let mut m = good();
        m.procbased2 &= !((u64::from(secondary::UNRESTRICTED_GUEST)) << 32);
        m.ept_vpid &= !ept_vpid::INVVPID;
        let missing = check_vmx(&m).unwrap_err();
        let names: std::vec::Vec<_> = missing.iter().map(|x| x.what).collect();
        assert_eq!(names, ["unrestricted guest", "single-context INVVPID"]);
        let none = check_vmx(&VmxMsrs::default()).unwrap_err();
        assert_eq!(none.count(), VMX_REQUIREMENTS.len() as u32, "{none:?}");
    }

    #[test]
    fn controls_are_adjusted_to_the_capabilities() {
        let cap = (0x0000_ff0fu64 << 32) | 0x0000_0006;
        assert_eq!(adjust_controls(0x1, cap), Ok(0x7));
        assert_eq!(adjust_controls(0x100, cap), Ok(0x106));
        assert_eq!(adjust_controls(0x30, cap), Err(0x30 & !0xff0f));
    }

    #[test]
    fn feature_control_cases() {
        assert_eq!(feature_control(0b101), Ok(None));
        assert_eq!(feature_control(0b001), Err(Unavailable::DisabledByFirmware));
        assert_eq!(feature_control(0), Ok(Some(0b101)));
    }

    #[test]
    fn vendor_string() {
        let leaf0 = [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69];
        assert_eq!(&vendor(leaf0), b"GenuineIntel");
        assert!(!is_amd_vendor(&vendor(leaf0)));
        // "AuthenticAMD" as ebx, ecx, edx.
        let amd = [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65];
        assert_eq!(&vendor(amd), b"AuthenticAMD");
        assert!(is_amd_vendor(&vendor(amd)));
        assert!(is_amd_vendor(b"HygonGenuine"));
    }

    /// CPUID as QEMU 7.2 TCG reports it for `-cpu max`: SVM revision 1, 16 ASIDs, NPT, VGIF,
    /// SVME-address check; no NRIP save, decode assists, flush by ASID or clean bits.
    fn qemu_max() -> SvmCpuid {
        SvmCpuid {
            max_ext_leaf: 0x8000_001f,
            ext1_ecx: cpuid_bits::SVM,
            ext1_edx: cpuid_bits::PAGE_1G,
            svm_eax: 1,
            svm_ebx: 16,
            svm_edx: cpuid_bits::NPT | (1 << 16) | (1 << 28),
        }
    }

    #[test]
    fn svm_with_npt_passes_and_optional_features_are_decoded() {
        let c = qemu_max();
        assert!(c.has_svm());
        let f = check_svm(&c).unwrap();
        assert_eq!(f.revision, 1);
        assert_eq!(f.asids, 16);
        assert!(f.npt_1g);
        assert!(!f.nrip_save && !f.decode_assists && !f.flush_by_asid);

        let mut full = c;
        full.svm_edx |=
            cpuid_bits::NRIP_SAVE | cpuid_bits::DECODE_ASSISTS | cpuid_bits::FLUSH_BY_ASID;
        full.ext1_edx = 0;
        let f = check_svm(&full).unwrap();
        assert!(f.nrip_save && f.decode_assists && f.flush_by_asid);
        assert!(!f.npt_1g);
    }

    #[test]
    fn svm_without_npt_or_asids_is_named() {
        // `-cpu qemu64,+svm`: SVM without nested paging.
        let mut c = qemu_max();
        c.svm_edx &= !cpuid_bits::NPT;
        let names: std::vec::Vec<_> = check_svm(&c).unwrap_err().iter().map(|r| r.what).collect();
        assert_eq!(names, ["nested paging (NPT)"]);

        c.svm_ebx = 1;
        assert_eq!(check_svm(&c).unwrap_err().count(), 2);

        // A CPU whose extended leaves stop before 0x8000_000A has neither.
        let mut short = qemu_max();
        short.max_ext_leaf = 0x8000_0008;
        assert_eq!(check_svm(&short).unwrap_err().count(), SVM_REQUIREMENTS.len() as u32);
    }

    #[test]
    fn svm_bit_needs_the_extended_leaf() {
        let mut c = qemu_max();
        c.max_ext_leaf = 0x8000_0000;
        assert!(!c.has_svm());
        c.max_ext_leaf = 0x8000_0001;
        c.ext1_ecx = 0;
        assert!(!c.has_svm());
        assert!(!SvmCpuid::default().has_svm());
    }

    #[test]
    fn vm_cr_cases() {
        assert_eq!(vm_cr(0), Ok(None));
        assert_eq!(vm_cr(vm_cr::LOCK), Ok(None));
        assert_eq!(vm_cr(vm_cr::SVMDIS | vm_cr::LOCK), Err(Unavailable::DisabledByFirmware));
        assert_eq!(vm_cr(vm_cr::SVMDIS | 1), Ok(Some(1)));
    }
}
