//! Speculative-execution hygiene around guest entries, as Xen and KVM do it, where the CPU
//! enumerates the means:
//!
//! - IBPB (an indirect-branch prediction barrier) when the CPU passes from a vCPU of one domain
//!   to a vCPU of another, so one domain cannot train the branch predictor against another. The
//!   backends decide it when they make a vCPU ready on a CPU (`load`, before every run), each
//!   CPU against the domain it last ran, so the entry loop pays nothing for it.
//! - On Intel CPUs subject to L1TF: flush the L1 data cache before every VM entry
//!   (IA32_FLUSH_CMD), unless IA32_ARCH_CAPABILITIES says the CPU needs no such flush.
//!   Otherwise, on CPUs with MD_CLEAR: VERW before every entry to clear the CPU's buffers (MDS).
//!
//! Return-stack-buffer filling after exits is not done: microhv's own indirect branches are
//! few, and the CPUs it is tested on (Bochs, QEMU TCG) enumerate none of these mitigations.

use super::cpu::{cpuid, rdmsr, wrmsr};

const IA32_PRED_CMD: u32 = 0x49;
const IA32_FLUSH_CMD: u32 = 0x10b;
const IA32_ARCH_CAPABILITIES: u32 = 0x10a;
/// IA32_ARCH_CAPABILITIES: RDCL_NO (not subject to L1TF / Meltdown).
const ARCH_CAP_RDCL_NO: u64 = 1 << 0;
/// IA32_ARCH_CAPABILITIES: the L1D need not be flushed on VM entry.
const ARCH_CAP_SKIP_L1DFL_VMENTRY: u64 = 1 << 3;

/// A CPU's last domain before any ran there (see [`Mitigations::switch_domain`]).
pub const NO_DOMAIN: u32 = u32::MAX;

/// What the CPU offers (every CPU the same).
#[derive(Debug, Clone, Copy)]
pub struct Mitigations {
    ibpb: bool,
    l1d_flush: bool,
    verw: bool,
    /// `l1d_flush || verw`: the one test the entry loop makes when neither applies.
    entry_barrier: bool,
}

/// A data segment selector VERW checks (the GDT's ring-0 data segment).
static VERW_SELECTOR: u16 = 0x10;

impl Mitigations {
    /// Reads the CPUID bits and IA32_ARCH_CAPABILITIES.
    pub fn detect() -> Self {
        let max = cpuid(0, 0)[0];
        let edx7 = if max >= 7 { cpuid(7, 0)[3] } else { 0 };
        let ext_max = cpuid(0x8000_0000, 0)[0];
        let ebx_e8 = if ext_max >= 0x8000_0008 { cpuid(0x8000_0008, 0)[1] } else { 0 };
        let arch_caps = if edx7 & (1 << 29) != 0 {
            // SAFETY: CPUID.7.0:EDX[29] says IA32_ARCH_CAPABILITIES exists.
            unsafe { rdmsr(IA32_ARCH_CAPABILITIES) }
        } else {
            0
        };
        let l1tf = arch_caps & (ARCH_CAP_RDCL_NO | ARCH_CAP_SKIP_L1DFL_VMENTRY) == 0;
        let (l1d_flush, verw) = (edx7 & (1 << 28) != 0 && l1tf, edx7 & (1 << 10) != 0);
        let m = Self {
            ibpb: edx7 & (1 << 26) != 0 || ebx_e8 & (1 << 12) != 0,
            l1d_flush,
            verw,
            entry_barrier: l1d_flush || verw,
        };
        log::info!(
            "speculation: IBPB on domain switch {}, L1D flush before entry {}, VERW before entry {}",
            yes_no(m.ibpb),
            yes_no(m.l1d_flush),
            yes_no(m.verw && !m.l1d_flush)
        );
        m
    }

    /// A vCPU of domain `domid` is about to run on a CPU whose last was of domain `*last`
    /// ([`NO_DOMAIN`] at first): the barrier if they differ; `*last` becomes `domid` (only
    /// looked at, so only kept, where the CPU has the barrier).
    pub fn switch_domain(&self, last: &mut u32, domid: u32) {
        if self.ibpb {
            if *last != domid {
                // SAFETY: CPUID enumerated IBPB; the barrier only discards predictions.
                unsafe { wrmsr(IA32_PRED_CMD, 1) };
            }
            *last = domid;
        }
    }

    /// Immediately before every VM entry: the flush.
    #[inline(always)]
    pub fn before_entry(&self) {
        if self.entry_barrier {
            self.entry_flush();
        }
    }

    /// The flush itself.
    #[cold]
    fn entry_flush(&self) {
        if self.l1d_flush {
            // SAFETY: CPUID enumerated L1D_FLUSH; the command only writes back and invalidates
            // the L1 data cache (it also clears the buffers VERW would).
            unsafe { wrmsr(IA32_FLUSH_CMD, 1) };
        } else if self.verw {
            // SAFETY: with MD_CLEAR, VERW of a valid selector overwrites the CPU's buffers; it
            // only sets ZF otherwise.
            unsafe {
                core::arch::asm!("verw word ptr [{}]", in(reg) &VERW_SELECTOR, options(nostack));
            }
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
