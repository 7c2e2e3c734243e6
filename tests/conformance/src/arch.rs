//! Guest-side probes that need their own descriptor tables.
//!
//! - A hypercall from guest ring 3: microhv must refuse it (`EPERM`) whatever the operation,
//!   because only the guest kernel may call. The kernel installs a GDT with user segments and
//!   a TSS, an IDT gate (vector 0x80, DPL 3) to come back through, makes its identity map
//!   user-accessible, then IRETQs to a ring-3 stub that issues the hypercall and traps back
//!   with `int 0x80`.
//! - Single-stepping (RFLAGS.TF) over an instruction microhv completes on the guest's behalf
//!   (CPUID, the hypercall): the #DB trap must come right after that instruction, as on bare
//!   metal, not one instruction late. The #DB gate records where the trap hit and clears TF.

use abi::guest::Insn;
use core::arch::{asm, global_asm};

const KCODE: u64 = 0x08;
const UCODE: u64 = 0x18 | 3;
const UDATA: u64 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;
const RING3_VECTOR: usize = 0x80;
const DEBUG_VECTOR: usize = 1;

#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap: u16,
}

#[repr(C, align(16))]
struct Stack([u8; 8192]);

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap: 104,
};
static mut GDT: [u64; 7] = [0; 7];
static mut IDT: [u64; 512] = [0; 512];
static mut KERNEL_STACK: Stack = Stack([0; 8192]);
/// The ring-3 stack lives in the kernel's image too; the identity map is made user-accessible.
#[unsafe(no_mangle)]
static mut CONFORM_USER_STACK: Stack = Stack([0; 8192]);

global_asm!(
    r#"
    .section .text.conform_ring3, "ax"
    .global conform_ring3_call
conform_ring3_call:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    mov [rip + conform_saved_rsp], rsp
    lea r11, [rip + conform_ring3_vmcall]
    lea rax, [rip + conform_ring3_vmmcall]
    test rdx, rdx
    cmovnz r11, rax
    mov rax, rdi
    mov rdi, [rsi]
    mov rdx, [rsi + 16]
    mov r10, [rsi + 24]
    mov r8, [rsi + 32]
    mov rsi, [rsi + 8]
    push {udata}
    lea rcx, [rip + CONFORM_USER_STACK + 8192]
    push rcx
    push 2
    push {ucode}
    push r11
    iretq
conform_ring3_vmcall:
    vmcall
    int 0x80
conform_ring3_vmmcall:
    vmmcall
    int 0x80
    .global conform_ring3_back
conform_ring3_back:
    mov rsp, [rip + conform_saved_rsp]
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

    /* #DB: record the trapping RIP, count, and stop stepping (clear the saved TF). */
    .global conform_db_handler
conform_db_handler:
    push rax
    mov rax, [rsp + 8]
    mov [rip + conform_db_rip], rax
    and qword ptr [rsp + 24], -0x101
    lock inc qword ptr [rip + conform_db_count]
    pop rax
    iretq

    /* conform_step(op, kind): set TF, run one CPUID (kind 0, leaf `op`), VMCALL (1) or
       VMMCALL (2) with rax = op, and return rax as the instruction left it. */
    .global conform_step
conform_step:
    push rbx
    mov rax, rdi
    xor ecx, ecx
    cmp rsi, 1
    je 2f
    cmp rsi, 2
    je 3f
    pushfq
    or qword ptr [rsp], 0x100
    popfq
    cpuid
    .global conform_after_cpuid
conform_after_cpuid:
    nop
    jmp 4f
2:
    xor edi, edi
    xor esi, esi
    pushfq
    or qword ptr [rsp], 0x100
    popfq
    vmcall
    .global conform_after_vmcall
conform_after_vmcall:
    nop
    jmp 4f
3:
    xor edi, edi
    xor esi, esi
    pushfq
    or qword ptr [rsp], 0x100
    popfq
    vmmcall
    .global conform_after_vmmcall
conform_after_vmmcall:
    nop
4:
    pop rbx
    ret

    .section .bss.conform_saved_rsp, "aw", @nobits
    .balign 8
conform_saved_rsp:
    .quad 0
conform_db_rip:
    .quad 0
conform_db_count:
    .quad 0
"#,
    udata = const UDATA,
    ucode = const UCODE,
);

unsafe extern "C" {
    fn conform_ring3_call(op: u64, args: *const [u64; 5], vmmcall: u64) -> i64;
    fn conform_ring3_back();
    fn conform_db_handler();
    fn conform_step(op: u64, kind: u64) -> u64;
    fn conform_after_cpuid();
    fn conform_after_vmcall();
    fn conform_after_vmmcall();
    static conform_db_rip: u64;
    static conform_db_count: u64;
}

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// Sets the user bit on the identity map's first GiB (PML4[0], PDPT[0..4], PD[0]'s entries),
/// so ring-3 code can run from the kernel image.
///
/// # Safety
/// Single vCPU, identity-mapped paging as set up by `rt`'s entry code.
unsafe fn make_low_gib_user() {
    let cr3: u64;
    // SAFETY: reading CR3 in ring 0.
    unsafe { asm!("mov {}, cr3", out(reg) cr3) };
    let mask = 0x000f_ffff_ffff_f000u64;
    let pml4 = (cr3 & mask) as *mut u64;
    // SAFETY: the tables are identity-mapped frames of this kernel; adding the user bit keeps
    // every translation the same.
    unsafe {
        *pml4 |= 4;
        let pdpt = (*pml4 & mask) as *mut u64;
        *pdpt |= 4;
        let pd = (*pdpt & mask) as *mut u64;
        for i in 0..512 {
            *pd.add(i) |= 4;
        }
        asm!("mov cr3, {}", in(reg) cr3);
    }
}

/// Installs the GDT (the `rt` layout plus user segments and a TSS), the TSS, the return gate
/// and the #DB gate. Call once before [`hypercall_from_ring3`] and [`single_step`].
pub fn setup_ring3() {
    // SAFETY: single vCPU, called once during start-up; the tables are statics that live for
    // ever. The new GDT keeps selectors 0x08/0x10 identical to `rt`'s, so CS and SS stay valid.
    unsafe {
        make_low_gib_user();
        let tss = &raw mut TSS;
        (*tss).rsp[0] = (&raw const KERNEL_STACK) as u64 + 8192;
        let base = tss as u64;
        let gdt = &raw mut GDT;
        (*gdt)[1] = 0x00af_9a00_0000_ffff;
        (*gdt)[2] = 0x00cf_9200_0000_ffff;
        (*gdt)[3] = 0x00af_fa00_0000_ffff;
        (*gdt)[4] = 0x00cf_f200_0000_ffff;
        (*gdt)[5] = 103 | ((base & 0xff_ffff) << 16) | (0x89 << 40) | (((base >> 24) & 0xff) << 56);
        (*gdt)[6] = base >> 32;
        let g = Pointer { limit: (size_of::<[u64; 7]>() - 1) as u16, base: gdt as u64 };
        asm!("lgdt [{}]", in(reg) &g);
        asm!("ltr {0:x}", in(reg) TSS_SEL);
    }
    set_gate(RING3_VECTOR, conform_ring3_back as *const () as u64, true);
    set_gate(DEBUG_VECTOR, conform_db_handler as *const () as u64, false);
}

/// Points interrupt gate `vector` of this kernel's IDT at `handler` (callable from ring 3 if
/// `dpl3`) and loads the IDT; the other gates stay as they were.
pub fn set_gate(vector: usize, handler: u64, dpl3: bool) {
    let kind = if dpl3 { 0xee } else { 0x8e };
    // SAFETY: single vCPU; the IDT is a static that lives for ever, and each gate is written
    // whole before the IDT is (re)loaded; `rt`'s code selector stays valid.
    unsafe {
        let idt = &raw mut IDT;
        (*idt)[2 * vector] =
            (handler & 0xffff) | (KCODE << 16) | (kind << 40) | (((handler >> 16) & 0xffff) << 48);
        (*idt)[2 * vector + 1] = handler >> 32;
        let i = Pointer { limit: (size_of::<[u64; 512]>() - 1) as u16, base: idt as u64 };
        asm!("lidt [{}]", in(reg) &i);
    }
}

/// Issues hypercall `op` from ring 3 and returns `rax` as microhv left it.
pub fn hypercall_from_ring3(insn: Insn, op: u64, args: [u64; 5]) -> i64 {
    let vmmcall = u64::from(insn == Insn::Vmmcall);
    // SAFETY: `setup_ring3` installed the segments, TSS, gate and user mappings the round trip
    // needs; the stub only issues the hypercall and traps straight back.
    unsafe { conform_ring3_call(op, &args, vmmcall) }
}

/// The instruction [`single_step`] steps over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stepped {
    /// CPUID with this leaf.
    Cpuid(u32),
    /// This hypercall (no arguments) with the domain's instruction.
    Hypercall(Insn, u64),
}

/// What [`single_step`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// RAX after the instruction.
    pub rax: u64,
    /// #DB traps taken (one expected).
    pub traps: u64,
    /// Where the trap hit, less the address right after the stepped instruction (0 expected).
    pub offset: i64,
}

/// Sets RFLAGS.TF just before `insn` and reports the single-step trap that follows it.
pub fn single_step(insn: Stepped) -> Step {
    let (op, kind, after) = match insn {
        Stepped::Cpuid(leaf) => (u64::from(leaf), 0, conform_after_cpuid as *const () as u64),
        Stepped::Hypercall(Insn::Vmcall, op) => (op, 1, conform_after_vmcall as *const () as u64),
        Stepped::Hypercall(Insn::Vmmcall, op) => (op, 2, conform_after_vmmcall as *const () as u64),
    };
    // SAFETY: `setup_ring3` installed the #DB gate; the stub sets TF for one instruction, the
    // gate clears it again, and the counters are only written by the gate on this vCPU.
    unsafe {
        let before = core::ptr::read_volatile(&raw const conform_db_count);
        let rax = conform_step(op, kind);
        let traps = core::ptr::read_volatile(&raw const conform_db_count) - before;
        let hit = core::ptr::read_volatile(&raw const conform_db_rip);
        Step { rax, traps, offset: hit.wrapping_sub(after) as i64 }
    }
}
