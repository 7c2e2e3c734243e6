//! The VMRUN path.
//!
//! [`svm_run`] saves the host's callee-saved registers, restores the guest's FPU/SSE state,
//! clears GIF, VMLOADs the guest's FS/GS/TR/LDTR and syscall MSRs, loads the guest's general
//! registers (RAX and RSP come from the VMCB) and executes VMRUN. At #VMEXIT the CPU is back
//! after VMRUN with the host's RSP and GIF clear; the code stores the guest's registers, VMSAVEs
//! the guest's FS/GS/TR/LDTR and syscall MSRs into its VMCB, VMLOADs the host's (its TR is what
//! the IST stacks of every IDT entry hang off), sets GIF, swaps the FPU/SSE state back and
//! returns. The extended state must be swapped here, in assembly, because the compiled Rust
//! around the call uses SSE registers freely.
//!
//! **The exit window.** From #VMEXIT until the host's VMLOAD the CPU holds the guest's TR (and
//! FS, GS, LDTR): an exception taken there whose IDT entry names an IST slot would take its
//! stack pointer from a TSS the guest chose. The invariants that make the window safe:
//! 1. GIF = 0 throughout (CLGI before VMRUN, STGI after the host's VMLOAD): no NMI, SMI or
//!    interrupt is delivered in it.
//! 2. No exception in it consults the TSS: only NMI, #DF and external interrupts use IST
//!    (`arch::x86_64::idt`); #DB and every other exception run on the current stack, which
//!    #VMEXIT restored from the host save area.
//! 3. No guest breakpoint stays armed: DR7 is written with its reset value right after VMRUN
//!    (the guest's DR7 is in the VMCB), by way of a value that differs above the enable bits,
//!    which is what makes QEMU TCG drop the breakpoints it keeps armed. Hardware clears it at #VMEXIT; emulators have been seen
//!    not to (QEMU TCG), or to deliver a guest single-step #DB after #VMEXIT (Bochs). A #DB
//!    that still lands in the window — on the instructions before DR7 is cleared — is
//!    recognized by its RIP (`microhv_svm_window_start..=microhv_svm_window_end`), disarmed
//!    and resumed by the #DB stub; the guest's own single-step trap is injected by the core.
//! 4. Nothing in the window dereferences a guest-controlled address: it stores to the `gprs`
//!    block and runs VMSAVE / VMLOAD on addresses kept on the host stack.
//! 5. microhv's code is read-only and its data non-executable (`arch::x86_64::paging`), so
//!    even a store to an address the guest chose could not change what ring 0 executes.

use crate::arch::x86_64::fpu::{FxArea, HOST_FX};
use core::arch::naked_asm;
use microhv_core::exit::Gprs;

/// Runs the guest of the VMCB at `vmcb` until its next #VMEXIT.
///
/// # Safety
/// EFER.SVME is set, VM_HSAVE_PA names the host save area, `vmcb` is a fully initialized VMCB
/// owned by the vCPU whose `gprs` and `fx` these are, and `host_vmcb` holds the host's VMSAVE
/// state (taken after the GDT and TSS were loaded). Interrupts are off (RFLAGS.IF = 0).
// The window's two labels are global so the #DB stub can find them; a naked function is
// emitted exactly once, so they cannot be duplicated.
#[allow(named_asm_labels)]
#[unsafe(naked)]
pub unsafe extern "C" fn svm_run(gprs: *mut Gprs, fx: *mut FxArea, vmcb: u64, host_vmcb: u64) {
    naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        // Kept for the exit path: [rsp] = guest VMCB, +8 host VMCB, +16 fx, +24 gprs.
        "push rdi",
        "push rsi",
        "push rcx",
        "push rdx",
        // AMD's FXRSTOR leaves the x87 last-instruction and last-operand pointers alone unless
        // the image has an exception pending, so the previous vCPU's would show through. Give
        // them a known value first (as Linux does for X86_BUG_FXSAVE_LEAK).
        "fnclex",
        "emms",
        "fild dword ptr [rip + {host_fx}]",
        "fxrstor64 [rsi]",
        "mov rax, rdx",
        // GIF = 0 from here to STGI: no NMI or SMI may arrive while the CPU holds the guest's
        // TR (an IST lookup would use the guest's TSS). IF = 1 under GIF = 0 only tells VMRUN
        // (V_INTR_MASKING) that physical interrupts make the guest exit.
        "clgi",
        "sti",
        "vmload rax",
        gprs_asm!(load),
        "vmrun rax",
        // #VMEXIT: RSP is the host's again; every other register but RAX still holds the
        // guest's value, and RAX is not relied upon (the guest's is in the VMCB). Disarm any
        // breakpoint the guest's DR7 set (invariant 3).
        ".global microhv_svm_window_start",
        "microhv_svm_window_start:",
        // Two writes: QEMU TCG re-arms breakpoints only when DR7 changes above its enable bits,
        // and after #VMEXIT it believes DR7 already holds 0x400. The first write (R/W0 = 01,
        // breakpoint 0 still disabled) changes those bits, so it disarms everything.
        "mov eax, 0x10400",
        "mov dr7, rax",
        "mov eax, 0x400",
        "mov dr7, rax",
        "push rdi",
        "mov rdi, [rsp + 32]",
        gprs_asm!(store),
        "pop rax",
        "mov [rdi + 40], rax",
        "pop rax",
        "vmsave rax",
        "pop rax",
        "vmload rax",
        ".global microhv_svm_window_end",
        "microhv_svm_window_end:",
        // A pending slice-timer interrupt is taken here, on microhv's IDT; then IF is off again.
        "stgi",
        "cli",
        "pop rsi",
        "fxsave64 [rsi]",
        "fxrstor64 [rip + {host_fx}]",
        "pop rdi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
        host_fx = sym HOST_FX,
    )
}
