//! Bringing up the application processors (APs), one at a time, with INIT-SIPI-SIPI through the
//! boot CPU's local APIC (Intel SDM Vol. 3A, "Typical BSP Initialization Sequence", 9.4.4.1 in
//! the 2023 edition: INIT, 10 ms, STARTUP, 200 µs, STARTUP, 200 µs), the delays timed with the
//! TSC.
//!
//! A STARTUP IPI starts an AP in real mode at CS = vector << 8, IP = 0 (SDM Vol. 3A, "Interrupt
//! Command Register (ICR)", delivery mode 110), so its first instructions must lie in a page
//! below 1 MiB: [`TRAMPOLINE_PA`], which the frame allocator never hands out (it keeps the whole
//! first MiB, `boot::LOW_MEMORY_RESERVED`) and nothing else of microhv uses once the loader's
//! information is copied. The page holds 16-bit code only — load a GDT, set CR0.PE, far-jump
//! into the image — so it runs with paging off and its no-execute mapping in microhv's tables
//! does not matter. The image's 32-bit code
//! loads the boot CPU's CR4, CR3, EFER (LME, and NXE: the tables use NX) and CR0 (PG), jumps to
//! 64-bit code, takes the stack set aside for the AP and calls [`ap_main`], which loads the
//! AP's own GDT and TSS and the shared IDT, enables VMX or SVM with its own region and parks.
//!
//! Each AP gets [`AP_FRAMES`] contiguous frames from the allocator: its two IST stacks, its
//! stack, and its VMXON region or host save area. They have no guard pages (the identity map
//! outside the image is made of 2 MiB pages), and an AP that does not come up keeps them.

use super::cpu::{self, rdtsc};
use super::{gdt, idt, lapic};
use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use microhv_core::cpus::CpuList;
use microhv_core::frames::{FRAME_SIZE, FrameAllocator};
use microhv_core::regs::{EFER_LMA, EFER_SVME};

/// The page the APs start in (STARTUP vector 0x08).
pub const TRAMPOLINE_PA: u64 = 0x8000;
/// Bytes of each of an AP's three stacks.
const STACK_BYTES: u64 = 16 * 1024;
/// Frames per AP: two IST stacks, the stack, the VMXON region or host save area.
const AP_FRAMES: u64 = 3 * STACK_BYTES / FRAME_SIZE + 1;
/// ICR: INIT, level assert (SDM Vol. 3A, "Interrupt Command Register (ICR)").
const ICR_INIT: u32 = 0x4500;
/// ICR: STARTUP with the trampoline's page number as vector.
const ICR_STARTUP: u32 = 0x4600 | (TRAMPOLINE_PA >> 12) as u32;
/// How long an AP has to report, from the second STARTUP, before it is left out.
const TIMEOUT_MS: u64 = 1000;
/// CR4.VMXE and CR4.PCIDE: the AP sets the first itself; the second cannot be set outside
/// long mode, where the trampoline loads CR4.
const CR4_CLEAR: u64 = (1 << 13) | (1 << 17);

/// Where the AP being started is (`STATE`): the boot CPU sets `WAITING`; the AP moves it to
/// `ARRIVED` (in Rust, on its stack), `REPORTING`, then `ONLINE` or `FAILED`; the boot CPU
/// moves it from `WAITING` or `ARRIVED` to `ABANDONED` when its time is up.
const WAITING: u32 = 0;
const ARRIVED: u32 = 1;
const REPORTING: u32 = 2;
const ONLINE: u32 = 3;
const FAILED: u32 = 4;
const ABANDONED: u32 = 5;
static STATE: AtomicU32 = AtomicU32::new(ABANDONED);

/// What the AP being started reads, indexed by the names below (the trampoline's assembly
/// reads the first five by address: slot × 8).
static AP_BOOT: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];
const CR3: usize = 0;
const CR4: usize = 1;
const EFER: usize = 2;
const CR0: usize = 3;
const STACK_TOP: usize = 4;
const CPU: usize = 5;
const APIC_ID: usize = 6;
const FRAMES: usize = 7;
const SVM: usize = 8;

fn set(slot: usize, v: u64) {
    AP_BOOT[slot].store(v, Ordering::Relaxed);
}

fn get(slot: usize) -> u64 {
    AP_BOOT[slot].load(Ordering::Relaxed)
}

global_asm!(
    r#"
    /* Copied to TRAMPOLINE_PA and run there in real mode (CS = TRAMPOLINE_PA >> 4). */
    .section .rodata.microhv_trampoline, "a"
    .code16
    .global microhv_trampoline
microhv_trampoline:
    cli
    lgdtl %cs:microhv_trampoline_gdtr - microhv_trampoline
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $microhv_ap_entry32
    .balign 8
microhv_trampoline_gdtr:
    .short microhv_ap_gdt_end - microhv_ap_gdt - 1
    .long microhv_ap_gdt
    .global microhv_trampoline_end
microhv_trampoline_end:

    /* Accessed bits preset: the CPU never writes these read-only descriptors. */
    .section .rodata.microhv_ap_gdt, "a"
    .balign 16
microhv_ap_gdt:
    .quad 0
    .quad 0x00CF9B000000FFFF          /* 0x08: 32-bit code */
    .quad 0x00CF93000000FFFF          /* 0x10: data */
    .quad 0x00AF9B000000FFFF          /* 0x18: 64-bit code */
microhv_ap_gdt_end:

    .section .text.microhv_ap_entry, "ax"
    .code32
microhv_ap_entry32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl {boot}+8, %eax               /* CR4: PAE, the SSE bits */
    movl %eax, %cr4
    movl {boot}, %eax                 /* CR3: microhv's tables, below 4 GiB */
    movl %eax, %cr3
    movl $0xC0000080, %ecx            /* EFER: LME, NXE */
    movl {boot}+16, %eax
    movl {boot}+20, %edx
    wrmsr
    movl {boot}+24, %eax              /* CR0: PG (long mode from here), WP, NE, MP */
    movl %eax, %cr0
    ljmpl $0x18, $microhv_ap_entry64
    .code64
microhv_ap_entry64:
    movq {boot}+32(%rip), %rsp        /* the AP's stack (16-byte aligned) */
    xorl %ebp, %ebp
    call {main}
    ud2
"#,
    boot = sym AP_BOOT,
    main = sym ap_main,
    options(att_syntax),
);

unsafe extern "C" {
    static microhv_trampoline: u8;
    static microhv_trampoline_end: u8;
}

/// Waits `us` microseconds on the TSC, of `khz` ticks per millisecond.
fn delay(khz: u64, us: u64) {
    let start = rdtsc();
    while rdtsc() - start < khz * us / 1000 {
        core::hint::spin_loop();
    }
}

/// Starts every CPU of `cpus` but the first (the boot CPU), one at a time, with frames from
/// `frames`; `svm` says which extension they enable, `khz` is the TSC's rate. Returns how many
/// CPUs are online, the boot CPU included. A CPU that does not come up is reported and left out.
pub fn start_aps<const W: usize>(
    cpus: &CpuList,
    frames: &mut FrameAllocator<W>,
    svm: bool,
    khz: u64,
) -> u32 {
    let cr3 = cpu::cr3();
    if cpus.apic_ids.len() < 2 {
        return 1;
    }
    if cr3 > u64::from(u32::MAX) {
        log::warn!("CR3 {cr3:#x} is above 4 GiB, out of the trampoline's reach: no AP started");
        return 1;
    }
    // Only the symbols' addresses are taken: they bound the trampoline's code.
    let (start, end) = (&raw const microhv_trampoline, &raw const microhv_trampoline_end);
    // SAFETY: the trampoline page is RAM below 1 MiB that nothing else uses (module docs),
    // identity-mapped and writable; the code is a few dozen bytes (`end` follows `start` in the
    // same section).
    unsafe {
        core::ptr::copy_nonoverlapping(
            start,
            TRAMPOLINE_PA as *mut u8,
            end.offset_from(start) as usize,
        )
    };
    set(CR3, cr3);
    set(CR4, cpu::cr4() & !CR4_CLEAR);
    // SAFETY: EFER exists on every 64-bit CPU.
    let efer = unsafe { cpu::rdmsr(0xc000_0080) };
    set(EFER, efer & !(EFER_SVME | EFER_LMA));
    set(CR0, cpu::cr0());
    set(SVM, svm.into());
    let apic = lapic::enable();
    let mut online = 1;
    for (n, &id) in cpus.apic_ids.iter().enumerate().skip(1) {
        match start_ap(apic, n, id, frames, khz) {
            Ok(()) => online += 1,
            Err(why) => log::warn!("cpu {n} (apic id {id}) left out: {why}"),
        }
    }
    online
}

/// Starts CPU `n` (APIC id `id`) and waits for its report.
fn start_ap<const W: usize>(
    apic: u64,
    n: usize,
    id: u32,
    frames: &mut FrameAllocator<W>,
    khz: u64,
) -> Result<(), &'static str> {
    let dest = u8::try_from(id).map_err(|_| "an x2APIC id, beyond the xAPIC's reach")?;
    let base = frames.alloc_contiguous(AP_FRAMES, 1).ok_or("no frames for its stacks")?;
    // SAFETY: the last frame was just allocated: ours, identity-mapped, aliased by nothing.
    unsafe { cpu::zero_qwords(base + 3 * STACK_BYTES, FRAME_SIZE) };
    set(STACK_TOP, base + 3 * STACK_BYTES);
    set(CPU, n as u64);
    set(APIC_ID, id.into());
    set(FRAMES, base);
    STATE.store(WAITING, Ordering::Release);
    lapic::ipi(apic, dest, ICR_INIT)?;
    delay(khz, 10_000);
    for _ in 0..2 {
        // An AP that already started ignores the second STARTUP (SDM Vol. 3A, "MP
        // Initialization Protocol Algorithm").
        lapic::ipi(apic, dest, ICR_STARTUP)?;
        delay(khz, 200);
    }
    let deadline = rdtsc() + khz * TIMEOUT_MS;
    loop {
        match STATE.load(Ordering::Acquire) {
            ONLINE => return Ok(()),
            FAILED => return Err("it could not enable virtualization (above)"),
            s @ (WAITING | ARRIVED) if rdtsc() > deadline => {
                if STATE.compare_exchange(s, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok()
                {
                    // Back to waiting for a STARTUP, so that it cannot run late on the next
                    // AP's stack (INIT is not blocked outside VMX operation).
                    let _ = lapic::ipi(apic, dest, ICR_INIT);
                    return Err(match s {
                        WAITING => "it did not answer the start-up IPIs",
                        _ => "it stopped during start-up",
                    });
                }
            }
            _ => core::hint::spin_loop(),
        }
    }
}

/// Moves `STATE` from `from` to `to`; false if the boot CPU gave up on this AP first.
fn advance(from: u32, to: u32) -> bool {
    STATE.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// An AP's first Rust code, on its own stack, interrupts off: its tables, its virtualization
/// extension, its report; then it parks (no vCPU runs on an AP yet).
extern "C" fn ap_main() -> ! {
    if advance(WAITING, ARRIVED) {
        let n = get(CPU) as usize;
        let id = get(APIC_ID);
        let base = get(FRAMES);
        let sel = gdt::init_cpu(n, [base + 2 * STACK_BYTES, base + STACK_BYTES]);
        idt::init(sel.code.0);
        let region = base + 3 * STACK_BYTES;
        let (ext, r) = match get(SVM) {
            0 => ("VMX", crate::arch::vmx::enter_ap(region)),
            _ => ("SVM", crate::arch::svm::enable_ap(region)),
        };
        if advance(ARRIVED, REPORTING) {
            match r {
                Ok(()) => log::info!("cpu {n} (apic id {id}) online, {ext} on"),
                Err(e) => log::warn!("cpu {n} (apic id {id}): {e}"),
            }
            STATE.store(if r.is_ok() { ONLINE } else { FAILED }, Ordering::Release);
        }
    }
    cpu::halt_forever()
}
