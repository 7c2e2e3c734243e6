//! The IDT: every one of the 256 vectors has a stub that records the vector (and a zero error
//! code where the CPU pushes none), saves the registers and calls [`exception_entry`], which
//! prints everything and stops the machine. microhv runs with interrupts off in root mode, so
//! any vector arriving here is a bug or a hardware event it cannot handle — except the SVM
//! backend's slice timer and the APIC's spurious vector, taken in the interrupt window right
//! after a guest exit, the kick another CPU sends (taken there too, or by a CPU waiting for it
//! in `cpu::wait_for_kick`), NMIs, which are counted, and a #DB in the SVM exit window (below):
//! their stubs return.
//!
//! Stacks. A vector whose entry names an IST slot makes the CPU read its stack pointer from the
//! TSS that TR points at — and between VMRUN and the host's VMLOAD that is the *guest's* TSS
//! (see `arch::svm::entry`). So only the vectors that must run on a known-good stack use IST:
//! NMI and #DF (IST_CRITICAL), and the external-interrupt vectors (IST_INTERRUPT), which can
//! only be taken at STGI, after the host's TR is back. Every other exception (#DB and #BP
//! included) is delivered on the current stack: in the exit window that is the host stack the
//! CPU restored at #VMEXIT. Those stubs never return — except the #DB taken inside the exit
//! window, which is counted, disarmed (DR7) and resumed, and whose handler is assembly that
//! uses no red zone — so the compiled code's red zone below RSP is never relied on after one of
//! them. A fault on a stack's guard page cannot be delivered on that stack and becomes a #DF.

use super::gdt::{IST_CRITICAL, IST_INTERRUPT};
use core::arch::global_asm;
use spin::Once;

/// Bytes between consecutive stubs (each fits in 12).
const STUB_STRIDE: u64 = 16;

// Vectors for which the CPU pushes an error code: #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC,
// #SX.
global_asm!(
    r#"
    .section .text.idt_stubs, "ax"
    .balign 16
    .global microhv_idt_stubs
microhv_idt_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    pushq $vec
    .else
    pushq $0
    pushq $vec
    .endif
    jmp microhv_exception_common
    .set vec, vec + 1
    .endr

    /* The slice timer and the kick (arch/x86_64/lapic.rs): signal EOI and return. */
    .global microhv_ack_irq
microhv_ack_irq:
    pushq %rax
    movq {eoi}(%rip), %rax
    movl $0, (%rax)
    popq %rax
    iretq

    .global microhv_spurious_irq
microhv_spurious_irq:
    iretq

    /* A #DB. Inside the SVM exit window (after VMRUN, until the host's VMLOAD) it comes from the
       guest's debug state — a breakpoint an emulator left armed after #VMEXIT, or a single-step
       trap it delivered in the host: disarm DR7 (in two writes, see arch::svm::entry), count it (DEBUG_IN_WINDOW) and resume the exit
       path. Anywhere else it is a bug: report and stop. */
    .global microhv_debug
microhv_debug:
    pushq %rax
    leaq microhv_svm_window_start(%rip), %rax
    cmpq %rax, 8(%rsp)
    jb 1f
    leaq microhv_svm_window_end(%rip), %rax
    cmpq %rax, 8(%rsp)
    ja 1f
    movl $0x10400, %eax
    movq %rax, %dr7
    movl $0x400, %eax
    movq %rax, %dr7
    lock incq {dbs}(%rip)
    popq %rax
    iretq
1:
    popq %rax
    pushq $0
    pushq $1
    jmp microhv_exception_common

    /* An NMI: counted (see NMI_COUNT) and absorbed. */
    .global microhv_nmi
microhv_nmi:
    lock incq {nmis}(%rip)
    iretq

microhv_exception_common:
    pushq %r15
    pushq %r14
    pushq %r13
    pushq %r12
    pushq %r11
    pushq %r10
    pushq %r9
    pushq %r8
    pushq %rbp
    pushq %rdi
    pushq %rsi
    pushq %rdx
    pushq %rcx
    pushq %rbx
    pushq %rax
    movq %rsp, %rdi
    cld
    call {entry}
    ud2
"#,
    entry = sym exception_entry,
    eoi = sym super::lapic::EOI_ADDR,
    nmis = sym NMI_COUNT,
    dbs = sym DEBUG_IN_WINDOW,
    options(att_syntax),
);

/// NMIs taken in root mode (on SVM, also those that arrived while a guest ran: they are taken
/// at STGI). The backends report a change after each run; an NMI carries no information
/// microhv could act on.
pub static NMI_COUNT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// #DB exceptions taken (and absorbed) in the SVM exit window; the SVM backend reports a change
/// after each run.
pub static DEBUG_IN_WINDOW: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

unsafe extern "C" {
    static microhv_idt_stubs: u8;
    static microhv_debug: u8;
    static microhv_nmi: u8;
    static microhv_ack_irq: u8;
    static microhv_spurious_irq: u8;
}

/// What the stubs leave on the stack, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    /// General registers, saved by the common stub (r15 first, so that they lie in `Gprs`
    /// order).
    pub gprs: microhv_core::exit::Gprs,
    /// The vector.
    pub vector: u64,
    /// The CPU's error code, or 0.
    pub error_code: u64,
    /// Interrupted RIP.
    pub rip: u64,
    /// Interrupted CS.
    pub cs: u64,
    /// Interrupted RFLAGS.
    pub rflags: u64,
    /// Interrupted RSP.
    pub rsp: u64,
    /// Interrupted SS.
    pub ss: u64,
}

extern "C" fn exception_entry(frame: &ExceptionFrame) -> ! {
    crate::fatal::exception(frame)
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

static IDT: Once<Idt> = Once::new();

/// Builds and loads the IDT. `code` is microhv's code selector.
pub fn init(code: u16) {
    let idt = IDT.call_once(|| {
        // Only the address of the stub block is taken; it is never read as data.
        let base = core::ptr::addr_of!(microhv_idt_stubs) as u64;
        let mut t = Idt([0; 512]);
        let ack = core::ptr::addr_of!(microhv_ack_irq) as u64;
        let spurious = core::ptr::addr_of!(microhv_spurious_irq) as u64;
        let nmi = core::ptr::addr_of!(microhv_nmi) as u64;
        let debug = core::ptr::addr_of!(microhv_debug) as u64;
        for v in 0..256u64 {
            // Four vectors return: NMI, the slice timer, the kick and the APIC's spurious
            // vector; #DB returns inside the SVM exit window. Every other one reports and stops.
            let handler = match v as u8 {
                1 => debug,
                2 => nmi,
                super::lapic::TIMER_VECTOR | super::lapic::KICK_VECTOR => ack,
                super::lapic::SPURIOUS_VECTOR => spurious,
                _ => base + v * STUB_STRIDE,
            };
            // See the module docs: no exception but NMI and #DF may consult the TSS.
            let ist = match v {
                2 | 8 => IST_CRITICAL,
                0..32 => 0,
                _ => IST_INTERRUPT,
            };
            // 64-bit interrupt gate, present, DPL 0.
            let low = (handler & 0xffff)
                | (u64::from(code) << 16)
                | (u64::from(ist) << 32)
                | (0x8e << 40)
                | ((handler >> 16) & 0xffff) << 48;
            t.0[(2 * v) as usize] = low;
            t.0[(2 * v + 1) as usize] = handler >> 32;
        }
        t
    });
    let ptr = x86_64::structures::DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: x86_64::VirtAddr::from_ptr(idt),
    };
    // SAFETY: the table is static and every entry points at a stub above.
    unsafe { x86_64::instructions::tables::lidt(&ptr) };
}
