//! Issuing a hypercall from guest ring 3: microhv must refuse it (`EPERM`) whatever the
//! operation, because only the guest kernel may call.
//!
//! The kernel installs a GDT with user segments and a TSS, an IDT gate (vector 0x80, DPL 3)
//! to come back through, makes its identity map user-accessible, then IRETQs to a ring-3 stub
//! that issues the hypercall and traps back with `int 0x80`.

use abi::guest::Insn;
use core::arch::{asm, global_asm};

const KCODE: u64 = 0x08;
const UCODE: u64 = 0x18 | 3;
const UDATA: u64 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;
const RING3_VECTOR: usize = 0x80;

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

    .section .bss.conform_saved_rsp, "aw", @nobits
    .balign 8
conform_saved_rsp:
    .quad 0
"#,
    udata = const UDATA,
    ucode = const UCODE,
);

unsafe extern "C" {
    fn conform_ring3_call(op: u64, args: *const [u64; 5], vmmcall: u64) -> i64;
    fn conform_ring3_back();
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

/// Installs the GDT (the `rt` layout plus user segments and a TSS), the TSS and the return
/// gate. Call once before [`hypercall_from_ring3`].
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
        let h = conform_ring3_back as *const () as u64;
        let idt = &raw mut IDT;
        (*idt)[2 * RING3_VECTOR] =
            (h & 0xffff) | (KCODE << 16) | (0xee << 40) | (((h >> 16) & 0xffff) << 48);
        (*idt)[2 * RING3_VECTOR + 1] = h >> 32;
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
