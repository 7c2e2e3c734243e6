//! The 32-bit entry shared by every image: identity map, long mode, SSE, 64-bit GDT, stack.
//!
//! Reached from multiboot v1/v2 loaders and from the PVH convention alike: 32-bit protected
//! mode, flat segments, paging off, interrupts off. `eax`/`ebx` are handed to `rt_main`.

use core::arch::global_asm;

unsafe extern "C" {
    static rt_entry_tsc: u64;
}

/// The TSC when the image's first instruction ran (read before anything else in the entry).
pub fn entry_tsc() -> u64 {
    // SAFETY: written once by the entry code before any Rust runs, read-only after.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(rt_entry_tsc)) }
}

global_asm!(
    r#"
    .section .text.entry32, "ax"
    .code32
    .global rt_entry32
rt_entry32:
    cli
    cld
    movl %eax, %edi
    movl %ebx, %esi
    /* The TSC at the first instruction, for cost figures (`rt::entry_tsc`). */
    rdtsc
    movl %eax, rt_entry_tsc
    movl %edx, rt_entry_tsc+4

    /* 2048 2 MiB identity mappings (4 GiB) in four page directories. */
    xorl %ecx, %ecx
1:
    movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax                   /* present, writable, 2 MiB page */
    movl %eax, rt_pd(,%ecx,8)
    movl $0, rt_pd+4(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jne 1b

    xorl %ecx, %ecx
2:
    movl %ecx, %eax
    shll $12, %eax
    addl $rt_pd, %eax
    orl $0x3, %eax
    movl %eax, rt_pdpt(,%ecx,8)
    movl $0, rt_pdpt+4(,%ecx,8)
    incl %ecx
    cmpl $4, %ecx
    jne 2b

    movl $rt_pdpt, %eax
    orl $0x3, %eax
    movl %eax, rt_pml4
    movl $0, rt_pml4+4
    movl $rt_pml4, %eax
    movl %eax, %cr3

    /* CR4: PAE, OSFXSR, OSXMMEXCPT (the prebuilt core uses SSE2). */
    movl %cr4, %eax
    orl $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    movl %eax, %cr4

    /* EFER.LME */
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    wrmsr

    /* CR0: PG, WP, NE, MP, PE set; EM, TS clear. */
    movl %cr0, %eax
    andl $~((1 << 2) | (1 << 3)), %eax
    orl $((1 << 31) | (1 << 16) | (1 << 5) | (1 << 1) | (1 << 0)), %eax
    movl %eax, %cr0

    lgdt rt_gdt_ptr
    ljmp $0x08, $rt_entry64

    .code64
rt_entry64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    leaq rt_stack_top(%rip), %rsp
    xorl %ebp, %ebp
    /* edi = entry eax, esi = entry ebx; the upper halves are already zero. */
    call rt_main
3:
    hlt
    jmp 3b

    .section .rodata.rt_gdt, "a"
    .balign 16
rt_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF          /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00CF92000000FFFF          /* 0x10: data, DPL 0 */
rt_gdt_end:
    .balign 4
    .short 0
rt_gdt_ptr:
    .short rt_gdt_end - rt_gdt - 1
    .long rt_gdt

    .section .bss.rt_entry_tsc, "aw", @nobits
    .balign 8
    .global rt_entry_tsc
rt_entry_tsc:
    .space 8

    .section .bss.rt_tables, "aw", @nobits
    .balign 4096
rt_pml4:
    .space 4096
rt_pdpt:
    .space 4096
rt_pd:
    .space 4096 * 4

    /* The page below the stack is a guard an image may unmap (microhv does). */
    .section .bss.rt_stack, "aw", @nobits
    .balign 4096
    .global rt_stack_guard
rt_stack_guard:
    .space 4096
rt_stack:
    .space {stack}
rt_stack_top:
"#,
    stack = const crate::BOOT_STACK_BYTES,
    options(att_syntax),
);
