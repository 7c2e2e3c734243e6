//! A #GP catcher: the hostile guest probes instructions that must fault, and counts the faults
//! instead of dying of them.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

/// #GP faults caught so far.
pub static GP_COUNT: AtomicU64 = AtomicU64::new(0);
/// Bytes to skip past the faulting instruction (set before each probe).
pub static GP_SKIP: AtomicU64 = AtomicU64::new(0);

global_asm!(
    r#"
    .section .text.gp_catcher, "ax"
    .global test_gp_handler
test_gp_handler:
    /* Stack: error code, rip, cs, rflags, rsp, ss. */
    push rax
    lock inc qword ptr [rip + {count}]
    mov rax, [rip + {skip}]
    add [rsp + 16], rax
    pop rax
    add rsp, 8
    iretq
"#,
    count = sym GP_COUNT,
    skip = sym GP_SKIP,
);

unsafe extern "C" {
    fn test_gp_handler();
}

#[repr(C, align(16))]
struct Idt([u64; 64]);

static mut IDT: Idt = Idt([0; 64]);

#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

/// Installs an IDT whose #GP entry is the catcher (the other vectors stay empty: any other
/// exception still triple-faults, which is what a bug here should do).
pub fn install_gp_catcher() {
    let handler = test_gp_handler as *const () as u64;
    let low = (handler & 0xffff) | (0x08 << 16) | (0x8e << 40) | (((handler >> 16) & 0xffff) << 48);
    // SAFETY: single vCPU, called once before any probe; the IDT is a static that lives for
    // ever, and the gate points at the handler above with the rt GDT's code selector.
    unsafe {
        let idt = &raw mut IDT;
        (*idt).0[26] = low;
        (*idt).0[27] = handler >> 32;
        let r = Idtr { limit: (size_of::<Idt>() - 1) as u16, base: idt as u64 };
        asm!("lidt [{}]", in(reg) &r, options(readonly, nostack));
    }
}

/// Runs `probe` (an instruction of `len` bytes that should fault) and tells whether it raised
/// #GP.
pub fn raises_gp(len: u64, probe: impl FnOnce()) -> bool {
    GP_SKIP.store(len, Ordering::SeqCst);
    let before = GP_COUNT.load(Ordering::SeqCst);
    probe();
    GP_COUNT.load(Ordering::SeqCst) != before
}

/// RDMSR (2 bytes).
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: a probe: a #GP is caught and skipped by the catcher; otherwise it reads an MSR.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// WRMSR (2 bytes).
pub fn wrmsr(msr: u32, v: u64) {
    // SAFETY: a probe: a #GP is caught and skipped by the catcher.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    };
}

/// MOV CR4, RAX with `v` (3 bytes: 0F 22 E0).
pub fn write_cr4(v: u64) {
    // SAFETY: a probe: setting a bit microhv refuses raises #GP, caught and skipped.
    unsafe { asm!("mov cr4, rax", in("rax") v, options(nostack)) };
}

/// CR4.
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nostack)) };
    v
}

/// IN AL, DX.
pub fn inb(port: u16) -> u8 {
    // SAFETY: a probe of a port the guest does not own; microhv traps it.
    unsafe { rt::io::inb(port) }
}

/// OUT DX, AL.
pub fn outb(port: u16, v: u8) {
    // SAFETY: as for `inb`.
    unsafe { rt::io::outb(port, v) }
}
