//! What a guest sees through CPUID: the host's values filtered down to what microhv really
//! provides, plus microhv's own leaves from `0x4000_0000` (see `abi::cpuid`).
//!
//! The policy is a whitelist per leaf. Anything microhv does not virtualize is hidden: VMX and
//! SVM (no nesting), SMX, XSAVE and AVX (guest extended state is saved with FXSAVE only), PCID,
//! performance monitoring, thermal and power management, and every leaf describing those. Leaf
//! 1 sets the hypervisor-present bit. What the virtual platform emulates is offered whatever the
//! host has: x2APIC, the TSC-deadline timer and IA32_TSC_ADJUST (`dev/lapic.rs`, the MSR
//! handlers), and the TSC's frequency (leaf 0x15 with the APIC bus as the crystal, leaf 0x16,
//! and microhv's timing leaf), measured by microhv at boot: the guest runs on the host's TSC.

use abi::cpuid as hv;

/// Highest basic leaf reported (the TSC / crystal leaf 0x15 and the frequency leaf 0x16).
pub const MAX_BASIC_LEAF: u32 = 0x16;
/// Leaf 1 ecx bits the virtual platform provides: x2APIC, TSC-deadline.
const L1_ECX_EMULATED: u32 = (1 << 21) | (1 << 24);
/// Leaf 7.0 ebx bit the MSR handlers provide: IA32_TSC_ADJUST.
const L7_EBX_EMULATED: u32 = 1 << 1;
/// Highest extended leaf reported.
pub const MAX_EXT_LEAF: u32 = 0x8000_0008;

/// The mask with bits `list` set.
const fn bits(list: &[u32]) -> u32 {
    let (mut mask, mut i) = (0, 0);
    while i < list.len() {
        mask |= 1 << list[i];
        i += 1;
    }
    mask
}

/// Leaf 1 ecx bits passed through: SSE3, PCLMULQDQ, SSSE3, CX16, SSE4.1, SSE4.2,
/// MOVBE, POPCNT, AES, RDRAND.
const L1_ECX_KEEP: u32 = bits(&[0, 1, 9, 13, 19, 20, 22, 23, 25, 30]);
/// Leaf 1 edx bits passed through: FPU, VME, DE, PSE, TSC, MSR, PAE, CX8, APIC, SEP, MTRR, PGE,
/// CMOV, PAT, PSE36, CLFSH, MMX, FXSR, SSE, SSE2.
const L1_EDX_KEEP: u32 =
    bits(&[0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 12, 13, 15, 16, 17, 19, 23, 24, 25, 26]);
/// Leaf 7.0 ebx bits passed through: FSGSBASE, BMI1, SMEP, BMI2, ERMS, RDSEED, ADX, SMAP,
/// CLFLUSHOPT.
const L7_EBX_KEEP: u32 = bits(&[0, 3, 7, 8, 9, 18, 19, 20, 23]);
/// Leaf 0x8000_0001 ecx bits passed through: LAHF/SAHF, ABM/LZCNT, PREFETCHW.
const E1_ECX_KEEP: u32 = bits(&[0, 5, 8]);
/// Leaf 0x8000_0001 edx bits passed through: the leaf-1 edx duplicates AMD reports, SYSCALL, NX,
/// 1 GiB pages, long mode. RDTSCP is hidden: microhv does not enable it for guests.
const E1_EDX_KEEP: u32 = L1_EDX_KEEP | (1 << 11) | (1 << 20) | (1 << 26) | (1 << 29);

/// Who is asking, for microhv's leaves.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The caller's domain id.
    pub domid: u32,
    /// The caller is dom0.
    pub privileged: bool,
    /// The vCPU's index in its domain (its APIC id).
    pub vcpu: u32,
    /// `abi::cpuid::HYPERCALL_*` for this machine.
    pub hypercall_insn: u32,
    /// The TSC's frequency (kHz), as microhv measured it.
    pub tsc_khz: u32,
}

/// The guest's view of CPUID `(leaf, subleaf)`, given the host's `host(leaf, subleaf)`.
pub fn guest_cpuid(
    leaf: u32,
    subleaf: u32,
    caller: &Caller,
    host: impl Fn(u32, u32) -> [u32; 4],
) -> [u32; 4] {
    // The APIC timer's clock, which leaves 0x15, 0x16 and microhv's timing leaf report (only
    // computed for them: the CPUID exit is a fast path).
    let bus = || crate::dev::lapic::bus_hz_for(caller.tsc_khz.into());
    match leaf {
        // The highest leaf is microhv's whatever the host's: the leaves it emulates (0x15,
        // 0x16) exist on every host, and those it does not offer read as zeros.
        0 => {
            let [_, b, c, d] = host(0, 0);
            [MAX_BASIC_LEAF, b, c, d]
        }
        1 => {
            let [a, b, c, d] = host(1, 0);
            // ebx: keep brand index and CLFLUSH size; one logical CPU; APIC id = vCPU index.
            let b = (b & 0xffff) | (1 << 16) | (caller.vcpu << 24);
            [a, b, (c & L1_ECX_KEEP) | L1_ECX_EMULATED | (1 << 31), d & L1_EDX_KEEP]
        }
        7 if subleaf == 0 => {
            // A host without leaf 7 answers it with its highest leaf's values: none are taken.
            let b = if host(0, 0)[0] >= 7 { host(7, 0)[1] & L7_EBX_KEEP } else { 0 };
            [0, b | L7_EBX_EMULATED, 0, 0]
        }
        // TSC = crystal × ebx / eax, with the APIC bus as the crystal: Linux derives both its
        // TSC and its APIC timer frequency from this leaf, so they must agree with the models.
        0x15 => {
            let ratio = (u64::from(caller.tsc_khz) * 1000).div_ceil(bus().max(1));
            [1, ratio as u32, bus() as u32, 0]
        }
        0x16 => {
            let mhz = caller.tsc_khz / 1000;
            [mhz, mhz, (bus() / 1_000_000) as u32, 0]
        }
        hv::LEAF_BASE => {
            let [b, c, d] = hv::signature_regs();
            [hv::LEAF_MAX, b, c, d]
        }
        hv::LEAF_VERSION => [
            abi::abi_version_word(),
            caller.domid,
            if caller.privileged { hv::FLAG_PRIVILEGED } else { 0 },
            0,
        ],
        hv::LEAF_HYPERCALL => [caller.hypercall_insn, 0, 0, 0],
        hv::LEAF_TIMING => [caller.tsc_khz, (bus() / 1000) as u32, 0, 0],
        0x8000_0000 => {
            let [max, b, c, d] = host(0x8000_0000, 0);
            [max.min(MAX_EXT_LEAF), b, c, d]
        }
        0x8000_0001 => {
            let [a, b, c, d] = host(0x8000_0001, 0);
            [a, b, c & E1_ECX_KEEP, d & E1_EDX_KEEP]
        }
        // Brand string and cache description carry no features.
        0x8000_0002..=0x8000_0006 => host(leaf, subleaf),
        0x8000_0008 => [host(0x8000_0008, 0)[0] & 0xffff, 0, 0, 0],
        _ => [0; 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ones(_: u32, _: u32) -> [u32; 4] {
        [u32::MAX; 4]
    }

    const CALLER: Caller = Caller {
        domid: 3,
        privileged: false,
        vcpu: 1,
        hypercall_insn: hv::HYPERCALL_VMCALL,
        tsc_khz: 2_500_000,
    };

    #[test]
    fn virtualization_and_unsupported_state_are_hidden() {
        let [_, b, c, _] = guest_cpuid(1, 0, &CALLER, all_ones);
        assert_eq!(c & (1 << 5), 0, "VMX");
        assert_eq!(c & (1 << 26), 0, "XSAVE");
        assert_eq!(c & (1 << 28), 0, "AVX");
        assert_ne!(c & (1 << 31), 0, "hypervisor bit");
        assert_eq!(b >> 24, 1, "APIC id is the vCPU index");
        let [_, _, c, _] = guest_cpuid(0x8000_0001, 0, &CALLER, all_ones);
        assert_eq!(c & (1 << 2), 0, "SVM");
        assert_eq!(guest_cpuid(0xd, 0, &CALLER, all_ones), [0; 4], "XSAVE leaf");
        assert_eq!(guest_cpuid(0, 0, &CALLER, all_ones)[0], MAX_BASIC_LEAF);
    }

    #[test]
    fn microhv_leaves_identify_caller_and_instruction() {
        let base = guest_cpuid(hv::LEAF_BASE, 0, &CALLER, all_ones);
        assert_eq!(base[0], hv::LEAF_MAX);
        assert_eq!(&base[1..], &hv::signature_regs());
        let v = guest_cpuid(hv::LEAF_VERSION, 0, &CALLER, all_ones);
        assert_eq!(v, [abi::abi_version_word(), 3, 0, 0]);
        let dom0 = Caller { domid: 0, privileged: true, ..CALLER };
        assert_eq!(guest_cpuid(hv::LEAF_VERSION, 0, &dom0, all_ones)[2], hv::FLAG_PRIVILEGED);
        assert_eq!(guest_cpuid(hv::LEAF_HYPERCALL, 0, &CALLER, all_ones)[0], 1);
        assert_eq!(guest_cpuid(hv::LEAF_MAX + 1, 0, &CALLER, all_ones), [0; 4]);
        assert_eq!(guest_cpuid(hv::LEAF_TIMING - 1, 0, &CALLER, all_ones), [0; 4]);
    }

    #[test]
    fn emulated_features_and_the_tsc_frequency_are_offered_on_any_host() {
        let none = |_, _| [0; 4];
        let [_, _, c, _] = guest_cpuid(1, 0, &CALLER, none);
        assert_ne!(c & (1 << 21), 0, "x2APIC");
        assert_ne!(c & (1 << 24), 0, "TSC-deadline");
        assert_ne!(guest_cpuid(7, 0, &CALLER, none)[1] & 2, 0, "TSC_ADJUST");
        // Linux: tsc_khz = (crystal_hz / 1000) * ebx / eax, in 32-bit arithmetic; the
        // crystal is its APIC timer rate.
        for (khz, bus) in
            [(2_500_000u32, 2_500_000_000u64), (50_027, 50_027_000), (5_000_000, 2_500_000_000)]
        {
            let c = Caller { tsc_khz: khz, ..CALLER };
            let [den, num, crystal, _] = guest_cpuid(0x15, 0, &c, none);
            let linux = (crystal / 1000).checked_mul(num).expect("no 32-bit overflow") / den;
            assert_eq!(linux, khz);
            assert_eq!(u64::from(crystal), bus);
            assert_eq!(crate::dev::lapic::bus_hz_for(khz.into()), bus);
            assert_eq!(guest_cpuid(hv::LEAF_TIMING, 0, &c, none), [khz, (bus / 1000) as u32, 0, 0]);
        }
        assert_eq!(guest_cpuid(0x16, 0, &CALLER, none)[..3], [2500, 2500, 2500]);
        // A host whose highest leaf is 5 (answering higher ones with leaf 5's values) still
        // shows the emulated leaves, and nothing of its own in leaf 7.
        let old = |l: u32, _| if l == 0 { [5, 0, 0, 0] } else { [u32::MAX; 4] };
        assert_eq!(guest_cpuid(0, 0, &CALLER, old)[0], MAX_BASIC_LEAF);
        assert_eq!(guest_cpuid(7, 0, &CALLER, old), [0, 2, 0, 0]);
        assert_eq!(guest_cpuid(0xb, 0, &CALLER, all_ones), [0; 4], "no topology leaf");
    }
}
