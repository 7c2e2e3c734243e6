//! Everything in microhv that executes a privileged instruction or holds assembly.
//!
//! - [`x86_64`]: per-CPU tables (GDT, TSS with IST stacks, IDT), exceptions, MSRs and control
//!   registers, machine stop.
//! - [`vmx`]: the Intel VMX backend.
//! - [`svm`]: the AMD SVM backend.

/// Assembly moving the guest's general registers between the CPU and the [`Gprs`] block whose
/// address is in RDI, one `mov` per register at its offset in `Gprs`: `gprs_asm!(load)` loads
/// RBX, RCX, RDX, RSI, RBP and R8–R15, and RDI itself last; `gprs_asm!(store)` stores the same
/// registers but RDI. RAX (which VMRUN takes from the VMCB) and RDI's slot are each entry
/// path's own. Both backends' entry code expands it.
macro_rules! gprs_asm {
    ($dir:ident) => {
        gprs_asm!(@$dir rbx 8, rcx 16, rdx 24, rsi 32, rbp 48, r8 56, r9 64, r10 72, r11 80,
            r12 88, r13 96, r14 104, r15 112)
    };
    (@load $($r:ident $off:literal),*) => {
        concat!($("mov ", stringify!($r), ", [rdi + ", $off, "]\n",)* "mov rdi, [rdi + 40]")
    };
    (@store $($r:ident $off:literal),*) => {
        concat!($("mov [rdi + ", $off, "], ", stringify!($r), "\n",)*)
    };
}

pub mod svm;
pub mod vmx;
pub mod x86_64;

use microhv_core::exit::{
    Backend, BackendError, DemandFaults, Event, Exit, ExitInfo, FrameSource, Gprs, GuestReg,
    Runner, VcpuConfig, VcpuInit,
};

/// The backend chosen at boot. `None` only exists so the hypervisor's static storage can be
/// initialized at compile time; no vCPU is ever created before a real backend is installed.
#[expect(
    clippy::large_enum_variant,
    reason = "one, in a static: SVM's per-CPU ASID tables cost nothing on VMX but space"
)]
pub enum Arch {
    /// No backend yet.
    None,
    /// Intel VMX.
    Vmx(vmx::Vmx),
    /// AMD SVM.
    Svm(svm::Svm),
}

/// A vCPU of whichever backend runs.
pub enum ArchVcpu {
    /// A VMX vCPU.
    Vmx(vmx::VmxVcpu),
    /// An SVM vCPU.
    Svm(svm::SvmVcpu),
}

/// The runner of one CPU, of whichever backend runs.
pub enum ArchRunner {
    /// A VMX runner.
    Vmx(vmx::VmxRunner),
    /// An SVM runner.
    Svm(svm::SvmRunner),
}

/// What a vCPU of the wrong kind (impossible by construction) reports.
fn mismatch() -> ExitInfo {
    ExitInfo::fast(Exit::EntryFailure, u64::MAX, 0, 0)
}

/// Calls backend (or, after `$kind;`, runner) method `$m` with the vCPU and `$arg`s, or gives
/// `$none` for a vCPU of the other backend's kind (impossible by construction).
macro_rules! dispatch {
    ($b:expr, $v:expr, $m:ident($($arg:expr),*), $none:expr) => {
        dispatch!(Arch; $b, $v, $m($($arg),*), $none)
    };
    ($kind:ident; $b:expr, $v:expr, $m:ident($($arg:expr),*), $none:expr) => {
        match ($b, $v) {
            ($kind::Vmx(b), ArchVcpu::Vmx(v)) => b.$m(v $(, $arg)*),
            ($kind::Svm(b), ArchVcpu::Svm(v)) => b.$m(v $(, $arg)*),
            _ => $none,
        }
    };
}

impl Runner for ArchRunner {
    type Vcpu = ArchVcpu;

    fn run(
        &mut self,
        vcpu: &mut ArchVcpu,
        gprs: &mut Gprs,
        slice: u64,
        faults: &mut dyn DemandFaults,
    ) -> ExitInfo {
        dispatch!(ArchRunner; self, vcpu, run(gprs, slice, faults), mismatch())
    }
}

impl Backend for Arch {
    type Vcpu = ArchVcpu;
    type Runner = ArchRunner;

    fn set_cpu(&mut self, cpu: usize) {
        match self {
            Arch::Vmx(b) => b.set_cpu(cpu),
            Arch::Svm(b) => b.set_cpu(cpu),
            Arch::None => {}
        }
    }

    fn runner(
        &mut self,
        cpu: usize,
        frames: &mut dyn FrameSource,
    ) -> Result<ArchRunner, BackendError> {
        match self {
            Arch::Vmx(b) => Ok(ArchRunner::Vmx(b.runner())),
            Arch::Svm(b) => b.runner(cpu, frames).map(ArchRunner::Svm),
            Arch::None => Err(BackendError::Hardware(0)),
        }
    }

    fn load(&mut self, vcpu: &mut ArchVcpu) {
        dispatch!(self, vcpu, load(), {})
    }

    fn hypercall_insn(&self) -> u32 {
        match self {
            Arch::Vmx(_) => abi::cpuid::HYPERCALL_VMCALL,
            Arch::Svm(_) => abi::cpuid::HYPERCALL_VMMCALL,
            Arch::None => 0,
        }
    }

    fn kind(&self) -> u32 {
        match self {
            Arch::Vmx(_) => abi::types::VIRT_VMX,
            Arch::Svm(_) => abi::types::VIRT_SVM,
            Arch::None => 0,
        }
    }

    fn create_vcpu(
        &mut self,
        frames: &mut dyn FrameSource,
        cfg: &VcpuConfig,
        init: &VcpuInit,
    ) -> Result<ArchVcpu, BackendError> {
        match self {
            Arch::Vmx(b) => b.create_vcpu(frames, cfg, init).map(ArchVcpu::Vmx),
            Arch::Svm(b) => b.create_vcpu(frames, cfg, init).map(ArchVcpu::Svm),
            Arch::None => Err(BackendError::Hardware(0)),
        }
    }

    fn reset_vcpu(&mut self, vcpu: &mut ArchVcpu, init: &VcpuInit) {
        dispatch!(self, vcpu, reset_vcpu(init), {})
    }

    fn destroy_vcpu(&mut self, frames: &mut dyn FrameSource, vcpu: ArchVcpu) {
        match (self, vcpu) {
            (Arch::Vmx(b), ArchVcpu::Vmx(v)) => b.destroy_vcpu(frames, v),
            (Arch::Svm(b), ArchVcpu::Svm(v)) => b.destroy_vcpu(frames, v),
            _ => {}
        }
    }

    fn run(
        &mut self,
        vcpu: &mut ArchVcpu,
        gprs: &mut Gprs,
        slice: u64,
        faults: &mut dyn DemandFaults,
    ) -> ExitInfo {
        dispatch!(self, vcpu, run(gprs, slice, faults), mismatch())
    }

    fn unload(&mut self, vcpu: &mut ArchVcpu) {
        dispatch!(self, vcpu, unload(), {})
    }

    fn read(&mut self, vcpu: &mut ArchVcpu, reg: GuestReg) -> u64 {
        dispatch!(self, vcpu, read(reg), 0)
    }

    fn write(&mut self, vcpu: &mut ArchVcpu, reg: GuestReg, value: u64) {
        dispatch!(self, vcpu, write(reg, value), {})
    }

    fn advance_rip(&mut self, vcpu: &mut ArchVcpu, len: u8) -> bool {
        dispatch!(self, vcpu, advance_rip(len), true)
    }

    fn interruptible(&mut self, vcpu: &mut ArchVcpu, nmi: bool) -> bool {
        dispatch!(self, vcpu, interruptible(nmi), false)
    }

    fn inject_interrupt(&mut self, vcpu: &mut ArchVcpu, vector: u8) {
        dispatch!(self, vcpu, inject_interrupt(vector), {})
    }

    fn set_interrupt_window(&mut self, vcpu: &mut ArchVcpu, on: bool, nmi: bool) {
        dispatch!(self, vcpu, set_interrupt_window(on, nmi), {})
    }

    fn inject(&mut self, vcpu: &mut ArchVcpu, event: Event) {
        dispatch!(self, vcpu, inject(event), {})
    }

    fn set_root(&mut self, vcpu: &mut ArchVcpu, root: u64) {
        dispatch!(self, vcpu, set_root(root), {})
    }

    fn flush(&mut self, vcpu: &mut ArchVcpu) {
        dispatch!(self, vcpu, flush(), {})
    }

    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        self::x86_64::cpu::cpuid(leaf, subleaf)
    }

    fn now(&self) -> u64 {
        self::x86_64::cpu::rdtsc()
    }
}
