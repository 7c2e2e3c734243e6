//! The way into 64-bit mode for an application processor (AP) that a STARTUP IPI woke: shared
//! by microhv (its host CPUs, `microhv/src/arch/x86_64/smp.rs`) and the test guests (their
//! vCPUs, `tests/guests/src/smp.rs`), which each send the IPIs themselves.
//!
//! A STARTUP IPI starts the AP in real mode at CS = vector << 8, IP = 0 (Intel SDM Vol. 3A,
//! "Interrupt Command Register (ICR)", delivery mode 110), so its first instructions must lie in
//! a page below 1 MiB: the caller's, where [`prepare`] copies the 16-bit trampoline. That code
//! uses only CS-relative and absolute addresses (so any such page does): it loads a GDT, sets
//! CR0.PE and far-jumps into 32-bit code in the image (loaded at its link address, so it runs
//! with paging off — where the image maps low memory no-execute, that mapping is not in force
//! yet). The 32-bit code loads the CR4, CR3 (below 4 GiB), EFER and CR0 [`prepare`] was given,
//! and enters 64-bit code with rt's selectors (code 0x08, data 0x10: an IDT whose gates were
//! written for the boot CPU serves the APs too), which calls the entry [`set_next`] named, with
//! its argument, on its stack. The descriptors have their accessed bits preset, so the CPU never
//! writes them (they are read-only data).
//!
//! One AP starts at a time: they all read the same slots, so the next may be prepared only once
//! the previous one's entry runs (which the caller learns from the entry itself).

use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering, fence};

/// What the AP being started reads, by the slot names below (the assembly reads them by
/// address: slot × 8).
static AP_BOOT: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
const CR3: usize = 0;
const CR4: usize = 1;
const EFER: usize = 2;
const CR0: usize = 3;
const STACK_TOP: usize = 4;
const ENTRY: usize = 5;
const ARG: usize = 6;

/// Bytes of the page the trampoline is copied to.
const PAGE: u64 = 4096;
/// Where the legacy hole starts: the trampoline's page lies below it.
const LEGACY_HOLE: u64 = 0xa_0000;

global_asm!(
    r#"
    .section .rodata.rt_ap_trampoline, "a"
    .code16
    .global rt_ap_trampoline
rt_ap_trampoline:
    cli
    lgdtl %cs:rt_ap_gdtr - rt_ap_trampoline
    movl %cr0, %eax
    orl $1, %eax                      /* CR0.PE */
    movl %eax, %cr0
    ljmpl $0x18, $rt_ap_entry32
    .balign 8
rt_ap_gdtr:
    .short rt_ap_gdt_end - rt_ap_gdt - 1
    .long rt_ap_gdt
    .global rt_ap_trampoline_end
rt_ap_trampoline_end:

    .section .rodata.rt_ap_gdt, "a"
    .balign 16
rt_ap_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF          /* 0x08: 64-bit code (rt's selector) */
    .quad 0x00CF93000000FFFF          /* 0x10: data (rt's selector) */
    .quad 0x00CF9B000000FFFF          /* 0x18: 32-bit code */
rt_ap_gdt_end:

    .section .text.rt_ap_entry, "ax"
    .code32
    /* A vCPU a hypervisor started in flat 32-bit protected mode, paging off (microhv's
       `VcpuUp`): the trampoline's GDT, then its way. */
    .global rt_ap_flat32
rt_ap_flat32:
    cli
    lgdtl rt_ap_gdtr
    ljmpl $0x18, $rt_ap_entry32
rt_ap_entry32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl {boot}+8, %eax               /* CR4: PAE first (long mode needs it) */
    movl %eax, %cr4
    movl {boot}, %eax                 /* CR3, below 4 GiB */
    movl %eax, %cr3
    movl $0xC0000080, %ecx            /* EFER: LME, and NXE where the tables use NX */
    movl {boot}+16, %eax
    movl {boot}+20, %edx
    wrmsr
    movl {boot}+24, %eax              /* CR0: PG (long mode from here) */
    movl %eax, %cr0
    ljmpl $0x08, $rt_ap_entry64
    .code64
rt_ap_entry64:
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movq {boot}+32(%rip), %rsp        /* the AP's stack (16-byte aligned) */
    movq {boot}+48(%rip), %rdi        /* the entry's argument */
    xorl %ebp, %ebp
    callq *{boot}+40(%rip)
    ud2
"#,
    boot = sym AP_BOOT,
    options(att_syntax),
);

unsafe extern "C" {
    static rt_ap_trampoline: u8;
    static rt_ap_trampoline_end: u8;
    static rt_ap_flat32: u8;
}

/// Where a vCPU started in flat 32-bit protected mode with paging off (microhv's `VcpuUp`)
/// takes the trampoline's way from its 32-bit stage: [`prepare`] (or [`set_registers`]) and
/// [`set_next`] as for a STARTUP IPI.
pub fn flat32_entry() -> u64 {
    // Only the symbol's address is taken.
    &raw const rt_ap_flat32 as u64
}

/// IA32_EFER and the bits an AP's value must or must not have.
const MSR_EFER: u32 = 0xc000_0080;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_SVME: u64 = 1 << 12;

/// This CPU's CR0, CR3 and CR4, and the EFER an AP of the same kernel loads (this CPU's, with
/// LME; never LMA, which only the CPU sets, nor SVME): what [`prepare`] takes, for a kernel
/// whose APs run as its boot CPU does.
pub fn this_cpu_registers() -> (u64, u64, u64, u64) {
    let (cr0, cr3, cr4): (u64, u64, u64);
    let (lo, hi): (u32, u32);
    // SAFETY: reading the control registers and EFER (present on every 64-bit CPU) has no
    // side effects.
    unsafe {
        core::arch::asm!("mov {}, cr0", "mov {}, cr3", "mov {}, cr4", out(reg) cr0,
            out(reg) cr3, out(reg) cr4, options(nomem, nostack));
        core::arch::asm!("rdmsr", in("ecx") MSR_EFER, out("eax") lo, out("edx") hi,
            options(nomem, nostack));
    }
    let efer = (u64::from(hi) << 32 | u64::from(lo)) & !(EFER_LMA | EFER_SVME) | EFER_LME;
    (cr0, cr3, cr4, efer)
}

/// Records the control registers the APs load, as [`prepare`] does, without a trampoline page:
/// for APs that enter at [`flat32_entry`] only. The reason is returned, and nothing recorded,
/// if `cr3` is above 4 GiB.
pub fn set_registers(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> Result<(), &'static str> {
    if cr3 > u64::from(u32::MAX) {
        return Err("CR3 is above 4 GiB, out of the 32-bit code's reach");
    }
    for (slot, v) in [(CR0, cr0), (CR3, cr3), (CR4, cr4), (EFER, efer)] {
        AP_BOOT[slot].store(v, Ordering::Relaxed);
    }
    Ok(())
}

/// Copies the trampoline to the page at physical (identity-mapped) `page`, below 0xA0000, and
/// records the control registers the APs load: `cr4` must have PAE, `efer` LME (not LMA, which
/// only the CPU sets), `cr0` PG and PE, and `cr3` must be below 4 GiB. Nothing is written, and
/// the reason returned, if `cr3` is not or `page` is not a page below 0xA0000.
///
/// # Safety
/// `page` must be RAM that nothing else uses while APs start, identity-mapped and writable.
pub unsafe fn prepare(
    page: u64,
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
) -> Result<(), &'static str> {
    // Only the symbols' addresses are taken: they bound the trampoline's code.
    let start = &raw const rt_ap_trampoline as u64;
    let len = &raw const rt_ap_trampoline_end as u64 - start;
    // STARTUP vectors 0xA0-0xBF are reserved (SDM Vol. 3A, "MP Initialization Protocol
    // Algorithm"), and the legacy hole from 0xA0000 is no RAM anyway.
    let low = page.checked_add(PAGE).is_some_and(|end| end <= LEGACY_HOLE);
    if !page.is_multiple_of(PAGE) || !low || len > PAGE {
        return Err("the trampoline page is not a page below 0xA0000 that the code fits");
    }
    set_registers(cr0, cr3, cr4, efer)?;
    // SAFETY: `page` is the caller's (this function's contract) and the code fits it (checked);
    // the source is the image's read-only data between the two symbols of one section.
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, page as *mut u8, len as usize) };
    Ok(())
}

/// Names what the next AP to start runs: `entry(arg)` on the stack whose top is `stack_top`
/// (16-byte aligned). Call before its INIT; the stores are visible to it once the IPI is sent.
///
/// # Safety
/// The stack below `stack_top` must be the AP's alone, identity-mapped and writable, and the
/// AP started before must have reached its entry (it read these slots) or been given up on.
pub unsafe fn set_next(stack_top: u64, entry: extern "C" fn(u64) -> !, arg: u64) {
    AP_BOOT[STACK_TOP].store(stack_top, Ordering::Relaxed);
    AP_BOOT[ENTRY].store(entry as usize as u64, Ordering::Relaxed);
    AP_BOOT[ARG].store(arg, Ordering::Relaxed);
    // The AP reads the slots with plain loads after the IPI, which the caller sends next.
    fence(Ordering::SeqCst);
}
