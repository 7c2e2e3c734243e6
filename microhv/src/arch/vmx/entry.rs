//! The VM entry and exit path.
//!
//! [`vmx_run`] saves the host's callee-saved registers, records the host RSP in the VMCS,
//! restores the guest's FPU/SSE state and general registers and enters the guest; the exit lands
//! on `microhv_vmx_exit` (the VMCS host RIP), which stores the guest's registers and FPU/SSE
//! state, restores the host's default FPU/SSE state and returns to the caller. The guest's
//! extended state must be swapped here, in assembly, because the compiled Rust around the call
//! uses SSE registers freely.

use crate::arch::x86_64::fpu::{FxArea, HOST_FX};
use core::arch::naked_asm;
use microhv_core::exit::Gprs;

/// Enters the guest of the current VMCS and returns after its next VM exit (0), or at once if
/// VMLAUNCH / VMRESUME failed (1: the VM-instruction error field says why).
///
/// # Safety
/// VMX operation is on, the VMCS is current and fully initialized, `gprs` and `fx` belong to
/// its vCPU, and `launched` says whether it was launched since its last VMCLEAR.
#[unsafe(naked)]
pub unsafe extern "C" fn vmx_run(gprs: *mut Gprs, fx: *mut FxArea, launched: u64) -> u64 {
    naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdi",
        "push rsi",
        // HOST_RSP (0x6C14) = rsp: on exit [rsp] = fx, [rsp + 8] = gprs.
        "mov rax, 0x6C14",
        "vmwrite rax, rsp",
        "jbe 3f",
        "fxrstor64 [rsi]",
        "test rdx, rdx",
        "mov rax, [rdi + 0]",
        gprs_asm!(load),
        "jnz 2f",
        "vmlaunch",
        "jmp 3f",
        "2:",
        "vmresume",
        // VMfailValid / VMfailInvalid: back to the host with the default FPU state.
        "3:",
        "fxrstor64 [rip + {host_fx}]",
        "pop rsi",
        "pop rdi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "mov eax, 1",
        "ret",
        ".global microhv_vmx_exit",
        "microhv_vmx_exit:",
        "push rdi",
        "mov rdi, [rsp + 16]",
        "mov [rdi + 0], rax",
        gprs_asm!(store),
        "pop rax",
        "mov [rdi + 40], rax",
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
        "xor eax, eax",
        "ret",
        host_fx = sym HOST_FX,
    )
}

unsafe extern "C" {
    /// The exit landing point inside [`vmx_run`] (the VMCS host RIP).
    pub static microhv_vmx_exit: u8;
}
