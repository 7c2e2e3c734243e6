//! Exception catchers for the hostile guest: a #GP catcher that counts the faults its probes
//! raise and skips the probe (or resumes at a landing address), and a #DB catcher that counts
//! debug traps and resumes with RF set.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

/// #GP faults caught so far.
pub static GP_COUNT: AtomicU64 = AtomicU64::new(0);
/// Bytes to skip past the faulting instruction (set before each probe).
pub static GP_SKIP: AtomicU64 = AtomicU64::new(0);
/// When non-zero, a #GP resumes here instead of skipping (the faulting RIP goes to `GP_RIP`).
pub static GP_RESUME: AtomicU64 = AtomicU64::new(0);
/// RIP of the last #GP.
pub static GP_RIP: AtomicU64 = AtomicU64::new(0);
/// RFLAGS pushed by the last #GP (a fault: the CPU sets RF in it, and so must an injection).
pub static GP_RFLAGS: AtomicU64 = AtomicU64::new(0);
/// #DB exceptions caught so far.
pub static DB_COUNT: AtomicU64 = AtomicU64::new(0);
/// Local APIC timer interrupts ([`TIMER_VECTOR`]) taken so far.
pub static TIMER_COUNT: AtomicU64 = AtomicU64::new(0);
/// The vector of the local APIC timer's handler.
pub const TIMER_VECTOR: usize = 0x30;

global_asm!(
    r#"
    .section .text.gp_catcher, "ax"
    .global test_gp_handler
test_gp_handler:
    /* Stack: error code, rip, cs, rflags, rsp, ss. */
    push rax
    lock inc qword ptr [rip + {count}]
    mov rax, [rsp + 32]
    mov [rip + {gp_rflags}], rax
    mov rax, [rsp + 16]
    mov [rip + {gp_rip}], rax
    mov rax, [rip + {resume}]
    test rax, rax
    jz 1f
    mov [rsp + 16], rax
    jmp 2f
1:
    mov rax, [rip + {skip}]
    add [rsp + 16], rax
2:
    pop rax
    add rsp, 8
    iretq

    .global test_db_handler
test_db_handler:
    /* Stack: rip, cs, rflags, rsp, ss. RF keeps an instruction breakpoint from firing again
       on the instruction it stopped. */
    lock inc qword ptr [rip + {dbs}]
    or qword ptr [rsp + 16], 0x10000
    iretq

    .global test_timer_handler
test_timer_handler:
    push rax
    lock inc qword ptr [rip + {timers}]
    movabs rax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
"#,
    timers = sym TIMER_COUNT,
    count = sym GP_COUNT,
    skip = sym GP_SKIP,
    resume = sym GP_RESUME,
    gp_rip = sym GP_RIP,
    gp_rflags = sym GP_RFLAGS,
    dbs = sym DB_COUNT,
);

unsafe extern "C" {
    fn test_gp_handler();
    fn test_db_handler();
    fn test_timer_handler();
}

#[repr(C, align(16))]
struct Idt([u64; 128]);

static mut IDT: Idt = Idt([0; 128]);

#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

/// Installs an IDT whose #GP entry is the catcher, with the #DB catcher and the local APIC
/// timer's handler (the other vectors stay empty: any other exception still triple-faults,
/// which is what a bug here should do).
pub fn install_gp_catcher() {
    for (vector, handler) in [
        (13, test_gp_handler as *const () as u64),
        (1, test_db_handler as *const () as u64),
        (TIMER_VECTOR, test_timer_handler as *const () as u64),
    ] {
        let low =
            (handler & 0xffff) | (0x08 << 16) | (0x8e << 40) | (((handler >> 16) & 0xffff) << 48);
        // SAFETY: single vCPU, called before any probe; the IDT is a static that lives for ever,
        // and the gates point at the handlers above with the rt GDT's code selector.
        unsafe {
            let idt = &raw mut IDT;
            (*idt).0[2 * vector] = low;
            (*idt).0[2 * vector + 1] = handler >> 32;
        }
    }
    // SAFETY: as above.
    unsafe {
        let idt = &raw mut IDT;
        let r = Idtr { limit: (size_of::<Idt>() - 1) as u16, base: idt as u64 };
        asm!("lidt [{}]", in(reg) &r, options(readonly, nostack));
    }
}

/// Calls the instruction at `addr` (which must end in a fault: nothing returns from it) with
/// `rax` and `rcx`; returns the RIP of the #GP that ended it, or 0.
pub fn call_until_gp(addr: u64, rax: u64, rcx: u64) -> u64 {
    GP_RIP.store(0, Ordering::SeqCst);
    // SAFETY: a probe: the code at `addr` faults (#GP), and the catcher resumes at label 2 with
    // the call's return address still on the stack, which is dropped there; rbx (which CPUID
    // writes) is saved around it by hand because it cannot be named as a clobber.
    unsafe {
        asm!(
            "push rbx",
            "lea r11, [rip + 2f]",
            "mov [rip + {resume}], r11",
            "call rdx",
            "2:",
            "add rsp, 8",
            "pop rbx",
            resume = sym GP_RESUME,
            in("rdx") addr,
            inout("rax") rax => _,
            inout("rcx") rcx => _,
            out("r11") _,
            out("rsi") _,
            out("rdi") _,
        );
    }
    GP_RESUME.store(0, Ordering::SeqCst);
    GP_RIP.load(Ordering::SeqCst)
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
