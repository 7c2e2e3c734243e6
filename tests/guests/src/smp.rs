//! Starting a domain's other vCPUs as an OS starts its application processors (APs): a 16-bit
//! trampoline in a page below 1 MiB and INIT, STARTUP, STARTUP through the xAPIC's ICR with
//! the Intel SDM's delays (Vol. 3A, "Typical BSP Initialization Sequence": INIT, 10 ms,
//! STARTUP, 200 µs, STARTUP, 200 µs), one AP at a time — the technique microhv uses for its
//! own host CPUs (`microhv/src/arch/x86_64/smp.rs`).
//!
//! A STARTUP IPI starts the vCPU in real mode at CS = vector << 8, IP = 0 (microhv:
//! `microhv/core/src/hv/startup.rs`). The trampoline loads a GDT, sets CR0.PE and far-jumps
//! into 32-bit code in the image (loaded at its link address, so it runs with paging off);
//! that code loads the BSP's CR4 (PAE) and CR3 (rt's identity map of the first 4 GiB, in the
//! image's .bss, below 4 GiB), sets EFER.LME, loads the BSP's CR0 (PG: long mode), jumps to
//! 64-bit code with rt's selectors (code 0x08, data 0x10, so IDT gates written for the BSP
//! serve the APs too) and calls the entry [`start_ap`] was given on the AP's own stack.

use crate::lapic;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

/// The page the APs start in: RAM in every domain's memory map (`[0x2000, 0xA0000)`,
/// `abi::pvh::memmap`), below the image (1 MiB, its stacks in its .bss) and apart from what
/// dom0 puts in low memory (the start page at 0x1000, the ACPI tables in the legacy hole).
pub const TRAMPOLINE_PA: u64 = 0x8000;
/// The STARTUP IPI's vector: the trampoline's page number.
const STARTUP_VECTOR: u32 = (TRAMPOLINE_PA >> 12) as u32;
const _: () = assert!(TRAMPOLINE_PA.is_multiple_of(4096) && STARTUP_VECTOR <= 0xff);
/// The SDM's wait after INIT.
const INIT_DELAY_US: u64 = 10_000;
/// The SDM's wait after each STARTUP.
const STARTUP_DELAY_US: u64 = 200;
/// EFER (MSR) and its long-mode enable bit, which the 32-bit code sets.
const MSR_EFER: u32 = 0xc000_0080;
const EFER_LME: u32 = 1 << 8;

/// What the AP being started reads, by the slot names below (the assembly reads them by
/// address: slot × 8). One AP starts at a time, so one set suffices.
static AP_BOOT: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
const CR3: usize = 0;
const CR4: usize = 1;
const CR0: usize = 2;
const STACK_TOP: usize = 3;
const ENTRY: usize = 4;
const ARG: usize = 5;

global_asm!(
    r#"
    /* Copied to TRAMPOLINE_PA and run there in real mode (CS = TRAMPOLINE_PA >> 4). */
    .section .rodata.guest_smp_trampoline, "a"
    .code16
    .global guest_smp_trampoline
guest_smp_trampoline:
    cli
    lgdtl %cs:guest_smp_gdtr - guest_smp_trampoline
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x18, $guest_smp_entry32
    .balign 8
guest_smp_gdtr:
    .short guest_smp_gdt_end - guest_smp_gdt - 1
    .long guest_smp_gdt
    .global guest_smp_trampoline_end
guest_smp_trampoline_end:

    /* rt's layout for 0x08 and 0x10, plus 32-bit code; accessed bits preset, so the CPU
       never writes the descriptors. */
    .section .rodata.guest_smp_gdt, "a"
    .balign 16
guest_smp_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF          /* 0x08: 64-bit code */
    .quad 0x00CF93000000FFFF          /* 0x10: data */
    .quad 0x00CF9B000000FFFF          /* 0x18: 32-bit code */
guest_smp_gdt_end:

    .section .text.guest_smp_entry, "ax"
    .code32
guest_smp_entry32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl {boot}+8, %eax               /* CR4: PAE, OSFXSR, OSXMMEXCPT */
    movl %eax, %cr4
    movl {boot}, %eax                 /* CR3: rt's identity map, below 4 GiB */
    movl %eax, %cr3
    movl ${efer}, %ecx
    rdmsr
    orl ${lme}, %eax
    wrmsr
    movl {boot}+16, %eax              /* CR0: PG (long mode from here), WP, NE, MP */
    movl %eax, %cr0
    ljmpl $0x08, $guest_smp_entry64
    .code64
guest_smp_entry64:
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movq {boot}+24(%rip), %rsp        /* the AP's stack (16-byte aligned) */
    movq {boot}+40(%rip), %rdi        /* the entry's argument */
    xorl %ebp, %ebp
    callq *{boot}+32(%rip)
    ud2
"#,
    boot = sym AP_BOOT,
    efer = const MSR_EFER,
    lme = const EFER_LME,
    options(att_syntax),
);

unsafe extern "C" {
    static guest_smp_trampoline: u8;
    static guest_smp_trampoline_end: u8;
}

fn control_registers() -> (u64, u64, u64) {
    let (cr0, cr3, cr4): (u64, u64, u64);
    // SAFETY: reading control registers has no side effects.
    unsafe {
        asm!("mov {}, cr0", "mov {}, cr3", "mov {}, cr4", out(reg) cr0, out(reg) cr3,
             out(reg) cr4, options(nomem, nostack))
    };
    (cr0, cr3, cr4)
}

/// Waits at least `us` microseconds on the TSC (`khz` ticks per millisecond), calling `idle`
/// between reads (a vCPU that only spins keeps the CPU from the one it waits for until its
/// time slice ends).
pub fn delay(khz: u64, us: u64, idle: &mut impl FnMut()) {
    let start = guest_rt::rdtsc();
    while guest_rt::rdtsc() - start < khz * us / 1000 {
        idle();
    }
}

/// Copies the trampoline to [`TRAMPOLINE_PA`] and records this CPU's (the BSP's) control
/// registers for the APs; call once before [`start_ap`]. False if the BSP's CR3 is out of the
/// 32-bit code's reach (rt's tables are in the image, so it never is).
pub fn prepare() -> bool {
    let (cr0, cr3, cr4) = control_registers();
    if cr3 > u64::from(u32::MAX) {
        return false;
    }
    // Only the symbols' addresses are taken: they bound the trampoline's code.
    let (start, end) = (&raw const guest_smp_trampoline, &raw const guest_smp_trampoline_end);
    // SAFETY: the trampoline page is RAM of this domain that nothing else uses (see
    // `TRAMPOLINE_PA`), identity-mapped and writable; the code is a few dozen bytes (`end`
    // follows `start` in the same section).
    unsafe {
        core::ptr::copy_nonoverlapping(
            start,
            TRAMPOLINE_PA as *mut u8,
            end.offset_from(start) as usize,
        )
    };
    for (slot, v) in [(CR0, cr0), (CR3, cr3), (CR4, cr4)] {
        AP_BOOT[slot].store(v, Ordering::Relaxed);
    }
    true
}

/// Starts the AP with APIC ID `dest`: INIT, STARTUP, STARTUP with the SDM's delays (timed
/// with the TSC of `khz` ticks per millisecond, `idle` called while waiting). The AP calls
/// `entry(arg)` on the stack whose top is `stack_top` (16-byte aligned); whether it arrived is
/// for `entry` to report. Start APs one at a time: each reads the same slots, so the next may
/// start only once this one's `entry` runs. False if an IPI could not be sent.
pub fn start_ap(
    dest: u8,
    stack_top: u64,
    entry: extern "C" fn(u64) -> !,
    arg: u64,
    khz: u64,
    idle: &mut impl FnMut(),
) -> bool {
    AP_BOOT[STACK_TOP].store(stack_top, Ordering::Relaxed);
    AP_BOOT[ENTRY].store(entry as usize as u64, Ordering::Relaxed);
    // Release: the AP reads every slot after the STARTUP, which follows this store.
    AP_BOOT[ARG].store(arg, Ordering::Release);
    if !lapic::send(dest, lapic::ICR_INIT | lapic::ICR_ASSERT) {
        return false;
    }
    delay(khz, INIT_DELAY_US, idle);
    for _ in 0..2 {
        // A started AP ignores the second STARTUP (SDM Vol. 3A, "MP Initialization Protocol
        // Algorithm"); it is there for a CPU that missed the first.
        if !lapic::send(dest, lapic::ICR_STARTUP | STARTUP_VECTOR) {
            return false;
        }
        delay(khz, STARTUP_DELAY_US, idle);
    }
    true
}
