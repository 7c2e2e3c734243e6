//! CPU-exact mode changes, from a guest that enters at its own 32-bit code (not the runtime's,
//! which goes straight to long mode) and ends by writing a failure mask to port 0xF4:
//!
//! - bit 0: activating IA-32e mode (CR0.PG with EFER.LME, written with CR0.NE flipped so that
//!   VMX exits on it — NE is host-owned — and microhv completes the write) while CS has L and D
//!   set must raise #GP, not fail VM entry.
//! - bit 1: the same activation with a 16-bit TSS in TR must raise #GP too (the CPU wants a
//!   busy 32-bit TSS there; VM entry into an IA-32e guest would refuse anything else), leaving
//!   EFER.LMA clear.
//!
//! Both are skipped on AMD CPUs, where CR0 writes do not exit and the CPU (or emulator) answers
//! for itself.
//! - bit 2: in real mode, a #GP microhv injects (for a WRMSR of an MSR that does not exist)
//!   arrives without an error code: the real-mode handler skips the 2-byte WRMSR and returns to
//!   the next instruction.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

// The panic handler and C runtime symbols come with the guest runtime.
use guest_rt as _;

// The runtime's entry is not used: this image's PVH note names `modes_entry`.
#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, _ebx: u32) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

rt::pvh_note!(modes_entry);

core::arch::global_asm!(
    r#"
    .section .text.modes, "ax"
    .code32
    .global modes_entry
modes_entry:
    cli
    lgdt modes_gdtr
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $modes_stack_top, %esp
    ljmp $0x08, $.Lflat

.Lflat:
    /* The 16-bit TSS descriptor (0x28) needs the TSS's address. */
    movl $modes_tss16, %eax
    movl %eax, %edx
    shll $16, %eax
    orl $0x2b, %eax
    movl %eax, modes_gdt + 0x28
    shrl $16, %edx
    andl $0xff, %edx
    orl $0x8100, %edx
    movl %edx, modes_gdt + 0x2c
    /* The #GP gate (vector 13): a 32-bit interrupt gate to modes_gp. */
    movl $modes_gp, %eax
    movl %eax, %edx
    andl $0xffff, %eax
    orl $0x00080000, %eax
    movl %eax, modes_idt + 13 * 8
    andl $0xffff0000, %edx
    orl $0x8e00, %edx
    movl %edx, modes_idt + 13 * 8 + 4
    lidt modes_idtr
    movl $0, 0x500

    /* Long-mode page tables at 0x200000: 4 MiB identity-mapped with 2 MiB pages. */
    movl $0x201003, 0x200000
    movl $0, 0x200004
    movl $0x202003, 0x201000
    movl $0, 0x201004
    movl $0x000083, 0x202000
    movl $0, 0x202004
    movl $0x200083, 0x202008
    movl $0, 0x20200c
    movl $0x200000, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr

    /* Cases 0 and 1 (skipped on AMD: "AuthenticAMD"). */
    xorl %eax, %eax
    cpuid
    cmpl $0x68747541, %ebx
    jne .Lcase0
    movb $1, 0x500
    movb $1, 0x501
    jmp .Lcase2

    /* Case 0: CS with L and D set: the activation must raise #GP. */
.Lcase0:
    ljmp $0x18, $.Lcsl
.Lcsl:
    movl $0, modes_gp_count
    movl %cr0, %eax
    orl $0x80000000, %eax
    xorl $0x20, %eax
    movl %eax, %cr0
    ljmp $0x08, $.Lcsl_done
.Lcsl_done:
    movl modes_gp_count, %eax
    movb %al, 0x500

    /* Case 1: a 16-bit TSS in TR: the activation must raise #GP and leave LMA clear. */
    movl $0, modes_gp_count
    movw $0x28, %ax
    ltr %ax
    movl %cr0, %eax
    orl $0x80000000, %eax
    xorl $0x20, %eax
    movl %eax, %cr0
    movl $0xc0000080, %ecx
    rdmsr
    shrl $10, %eax
    andl $1, %eax
    xorl $1, %eax
    andl modes_gp_count, %eax
    movb %al, 0x501

.Lcase2:
    /* Case 2: real mode. Copy the 16-bit stub to 0x8000, point the IVT's #GP at it, and go
       there through a 16-bit protected-mode segment. */
    movl $modes_rm_start, %esi
    movl $0x8000, %edi
    movl $(modes_rm_end - modes_rm_start), %ecx
    cld
    rep movsb
    movw $(modes_rm_gp - modes_rm_start), 0x34
    movw $0x0800, 0x36
    movb $0, 0x502
    ljmp $0x30, $0

    .code16
modes_rm_start:
    movw $0x38, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr0, %eax
    andl $~1, %eax
    movl %eax, %cr0
    ljmp $0x0800, $(modes_rm_real - modes_rm_start)
modes_rm_real:
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    movw $0x7000, %sp
    lidtw %cs:(modes_rm_ivt - modes_rm_start)
    movl $0xdead, %ecx
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
    /* The failure mask: bit 0 unless one #GP in case 0, bit 1 unless one #GP and LMA clear
       in case 1, bit 2 unless the real-mode handler ran once and returned here. */
    xorb %bl, %bl
    cmpb $1, 0x500
    je 1f
    orb $1, %bl
1:
    cmpb $1, 0x501
    je 2f
    orb $2, %bl
2:
    cmpb $1, 0x502
    je 3f
    orb $4, %bl
3:
    movb %bl, %al
    outb %al, $0xf4
4:
    hlt
    jmp 4b
modes_rm_gp:
    /* Real-mode frame: IP, CS, FLAGS; no error code. Skip the 2-byte WRMSR. */
    pushw %bp
    movw %sp, %bp
    addw $2, 2(%bp)
    popw %bp
    incb 0x502
    iretw
modes_rm_ivt:
    .word 0x3ff
    .long 0
modes_rm_end:

    .code32
modes_gp:
    /* 32-bit frame: error code, EIP, CS, EFLAGS. Skip the 3-byte MOV to CR0. */
    addl $4, %esp
    addl $3, (%esp)
    incl modes_gp_count
    iretl

    .section .data.modes, "aw"
    .balign 8
modes_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF    /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
    .quad 0x00EF9A000000FFFF    /* 0x18: code with L and D set */
    .quad 0x00AF9A000000FFFF    /* 0x20: 64-bit code */
    .quad 0                     /* 0x28: 16-bit TSS, filled in */
    .quad 0x00009A008000FFFF    /* 0x30: 16-bit code at 0x8000 */
    .quad 0x000092000000FFFF    /* 0x38: 16-bit data */
modes_gdt_end:
    .balign 4
    .word 0
modes_gdtr:
    .word modes_gdt_end - modes_gdt - 1
    .long modes_gdt
    .balign 8
modes_idt:
    .fill 32, 8, 0
    .word 0
modes_idtr:
    .word 32 * 8 - 1
    .long modes_idt
modes_gp_count:
    .long 0
    .balign 16
modes_tss16:
    .fill 44, 1, 0

    .section .bss.modes, "aw", @nobits
    .balign 16
modes_stack:
    .space 4096
modes_stack_top:
"#,
    options(att_syntax),
);
