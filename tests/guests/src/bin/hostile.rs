//! Tries to break out, one way per boot (`attack=NAME`). Attacks microhv must refuse end with
//! a report and status 0 (1 if anything was allowed); attacks microhv must stop end the domain
//! with a crash.
//!
//! - `read-other` / `write-outside`: touch guest-physical memory past its own RAM, where a
//!   careless hypervisor would have put another domain: on its PC that is space no device
//!   claims, which reads all ones and keeps nothing written. `fetch-outside`: execute there
//!   (crash: unsupported MMIO).
//! - `dom0-ops`: every dom0-only hypercall, aimed at dom0 and at itself (each must be EPERM).
//! - `com2`: dom0's UART (must read as absent, writes dropped).
//! - `msr`: VMX MSRs, IA32_FEATURE_CONTROL, EFER.SVME, clearing EFER.LME while paging, CR4.VMXE
//!   (each must raise #GP).
//! - `triple-fault` (crash: triple fault).
//! - `debug-window`: the SVM exit-window attack: a TSS whose base is a host address
//!   (`tss=ADDR`), DR0–DR3 armed as instruction breakpoints on the host's exit path
//!   (`window=ADDR`), and single-stepping over every intercepted instruction; microhv must
//!   live, and the guest must get its own single-step traps (#DB) and nothing else.
//! - `noncanonical`: each emulated instruction (CPUID, RDMSR, IN, OUT, INVD, the hypercall)
//!   placed so that it ends at the top of the lower canonical half; each must raise #GP at
//!   itself, not leave RIP non-canonical (which fails VM entry on Intel hardware).
//! - `apic-walk`: guest page tables that live in the APIC page (crash: unsupported MMIO, with
//!   a reason, instead of emulating the walk as the instruction's access).
//! - `invd-rdpmc`: INVD completes as a no-op; RDPMC (no virtual PMU) raises #GP with RF set in
//!   the pushed RFLAGS; CLFLUSH of the APIC page completes.
//! - `reset`: a reset through port 0xCF9 (the domain ends with reason reboot).
//! - `boost-hog`: computes for 3/4 of a time slice, then halts with its local APIC timer due
//!   2 ms later, ten times: a scheduler that lets every waking vCPU preempt the running one at
//!   once would give it the whole CPU and starve the others.
//! - `console-flood`: 256 KiB of console output in one go; microhv's log takes what its rate
//!   limit allows, the console ring keeps the rest, and nobody else waits for the UART.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::Op;
use guest_rt::println;
use test_guests::arch;

rt::pvh_note!();

/// Guest-physical address past any test domain's RAM.
const OUTSIDE: u64 = 0x4000_0000;

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let hv = guest_rt::hv();
    let attack = boot.option("attack").unwrap_or("");
    println!("hostile {}: attack {attack}", hv.domid);
    let ok = match attack {
        "read-other" => {
            // SAFETY: deliberately outside this domain's memory: absent hardware there.
            let v = unsafe { core::ptr::read_volatile(OUTSIDE as *const u64) };
            println!("hostile: read {v:#x} outside my memory");
            v == u64::MAX
        }
        "write-outside" => {
            // SAFETY: as above, a write, then a read of what stayed.
            let v = unsafe {
                core::ptr::write_volatile(OUTSIDE as *mut u64, 0xbad);
                core::ptr::read_volatile(OUTSIDE as *const u64)
            };
            println!("hostile: wrote outside my memory, read back {v:#x}");
            v == u64::MAX
        }
        "fetch-outside" => {
            // SAFETY: deliberately jumps to where nothing is: microhv must stop it.
            unsafe { core::mem::transmute::<u64, extern "C" fn()>(OUTSIDE)() };
            println!("hostile: executed outside my memory");
            false
        }
        "dom0-ops" => dom0_ops(),
        "com2" => com2(),
        "msr" => msrs(),
        "debug-window" => debug_window(&boot),
        "noncanonical" => noncanonical(&boot),
        "apic-walk" => apic_walk(),
        "invd-rdpmc" => invd_rdpmc(),
        "console-flood" => console_flood(),
        "boost-hog" => boost_hog(),
        "reset" => {
            // The reset control register's CPU reset: the domain ends with reason reboot.
            arch::outb(0xcf9, 0x06);
            println!("hostile: still running after a reset");
            false
        }
        "triple-fault" => {
            println!("hostile: triple-faulting");
            let idtr = [0u64; 2];
            // SAFETY: deliberately destroys this domain.
            unsafe { core::arch::asm!("lidt [{}]", "int3", in(reg) &idtr) };
            false
        }
        _ => {
            println!("hostile: unknown attack");
            false
        }
    };
    guest_rt::exit(if ok { 0 } else { 1 })
}

fn dom0_ops() -> bool {
    let hv = guest_rt::hv();
    let me = u64::from(hv.domid);
    let buf = [0u64; 64];
    let addr = buf.as_ptr() as u64;
    let mut refused = 0;
    let mut allowed = 0;
    for op in Op::ALL.iter().filter(|o| o.dom0_only()) {
        for target in [0, me] {
            // SAFETY: every call must be refused; the buffer is ours if one were not.
            let r = unsafe { hv.call(*op as u64, [target, addr, addr, 16, 0]) };
            if r == abi::Errno::EPERM.to_ret() {
                refused += 1;
            } else {
                allowed += 1;
                println!("hostile: {op:?} on d{target} returned {r}");
            }
        }
    }
    println!("hostile: dom0-only operations: {refused} refused with EPERM, {allowed} allowed");
    allowed == 0
}

fn com2() -> bool {
    let lsr = arch::inb(0x2fd);
    for b in b"hostile" {
        arch::outb(0x2f8, *b);
    }
    let rbr = arch::inb(0x2f8);
    println!("hostile: COM2 line status {lsr:#x}, data {rbr:#x} (absent reads 0xff)");
    lsr == 0xff && rbr == 0xff
}

fn msrs() -> bool {
    arch::install_gp_catcher();
    let efer = arch::rdmsr(0xc000_0080);
    let probes: [(&str, u64, &dyn Fn()); 6] = [
        ("rdmsr IA32_VMX_BASIC", 2, &|| {
            let _ = arch::rdmsr(0x480);
        }),
        ("wrmsr IA32_FEATURE_CONTROL", 2, &|| arch::wrmsr(0x3a, 5)),
        ("wrmsr IA32_VMX_CR0_FIXED0", 2, &|| arch::wrmsr(0x486, 0)),
        ("wrmsr EFER.SVME", 2, &|| arch::wrmsr(0xc000_0080, efer | (1 << 12))),
        ("wrmsr EFER without LME while paging", 2, &|| arch::wrmsr(0xc000_0080, efer & !(1 << 8))),
        ("mov cr4 with VMXE", 3, &|| arch::write_cr4(arch::read_cr4() | (1 << 13))),
    ];
    let mut all = true;
    for (name, len, probe) in probes {
        let gp = arch::raises_gp(len, probe);
        println!("hostile: {name}: {}", if gp { "#GP" } else { "ALLOWED" });
        all &= gp;
    }
    all && arch::rdmsr(0xc000_0080) == efer
}

/// A hexadecimal number after `key=` (with or without `0x`).
fn hex(boot: &guest_rt::Boot, key: &str) -> u64 {
    boot.option(key)
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0)
}

#[repr(C, align(16))]
struct Gdt([u64; 5]);

static mut GDT: Gdt = Gdt([0; 5]);

/// Loads a GDT like rt's (same code and data selectors) plus a 64-bit TSS at `base`, and TR.
fn load_tss(base: u64) {
    let low = 0x67 | ((base & 0xff_ffff) << 16) | (0x89 << 40) | (((base >> 24) & 0xff) << 56);
    // SAFETY: single vCPU; the GDT is a static with the same code (0x08) and data (0x10)
    // descriptors as the one in use, so no loaded selector changes meaning. LTR marks the TSS
    // descriptor busy in this writable copy.
    unsafe {
        let gdt = &raw mut GDT;
        (*gdt).0 = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, low, base >> 32];
        #[repr(C, packed)]
        struct Gdtr {
            limit: u16,
            base: u64,
        }
        let r = Gdtr { limit: (size_of::<Gdt>() - 1) as u16, base: gdt as u64 };
        core::arch::asm!("lgdt [{}]", "ltr {sel:x}", in(reg) &r, sel = in(reg) 0x18u64, options(nostack));
    }
}

fn debug_window(boot: &guest_rt::Boot) -> bool {
    use core::sync::atomic::Ordering;
    arch::install_gp_catcher();
    let window = hex(boot, "window");
    let tss = hex(boot, "tss");
    println!("hostile: TSS base {tss:#x}, breakpoints from {window:#x}");
    load_tss(tss);
    let hv = guest_rt::hv();
    let vmcall = matches!(hv.insn, abi::guest::Insn::Vmcall);
    // SAFETY: this guest's own debug registers: instruction breakpoints on four addresses of
    // the host's exit path (which this guest's own code may share; its #DB catcher steps over).
    unsafe {
        core::arch::asm!(
            "mov dr0, {a}", "mov dr1, {b}", "mov dr2, {c}", "mov dr3, {d}", "mov dr7, {e}",
            a = in(reg) window, b = in(reg) window + 5, c = in(reg) window + 10,
            d = in(reg) window + 14, e = in(reg) 0x7ffu64, options(nostack),
        );
    }
    let before = arch::DB_COUNT.load(Ordering::SeqCst);
    const ROUNDS: u64 = 200;
    for _ in 0..ROUNDS {
        // Each intercepted instruction with RFLAGS.TF set: its single-step trap must reach this
        // guest (once per instruction), never microhv.
        // SAFETY: TF is set and cleared around instructions that are safe to execute here
        // (CPUID, the version hypercall, RDMSR of EFER, OUT to the unused port 0x80); the #DB
        // catcher counts the traps. rbx is saved by hand (CPUID writes it).
        unsafe {
            core::arch::asm!(
                "push rbx",
                "pushfq", "or qword ptr [rsp], 0x100", "popfq",
                "xor eax, eax", "cpuid",
                "mov ecx, 0xc0000080", "rdmsr",
                "out 0x80, al",
                "xor eax, eax",
                "test {v}, {v}",
                "jz 3f",
                "vmcall",
                "jmp 4f",
                "3:",
                "vmmcall",
                "4:",
                "pushfq", "and qword ptr [rsp], ~0x100", "popfq",
                "pop rbx",
                v = in(reg) u64::from(vmcall),
                out("rax") _, out("rcx") _, out("rdx") _,
            );
        }
    }
    // SAFETY: disarms what was armed above.
    unsafe { core::arch::asm!("mov dr7, {}", in(reg) 0x400u64, options(nostack)) };
    let traps = arch::DB_COUNT.load(Ordering::SeqCst) - before;
    println!("hostile: {ROUNDS} rounds, {traps} #DB delivered to the guest");
    // At least one trap per single-stepped instruction (CPUID, MOV, RDMSR, OUT, XOR, TEST,
    // JZ/JMP, the hypercall, PUSHFQ, AND, POPFQ): 9 or more per round.
    traps >= 9 * ROUNDS
}

/// The last page of the lower canonical half; mapped to this guest's last RAM page.
const TOP_OF_LOWER_HALF: u64 = 0x7fff_ffff_f000;

#[repr(C, align(4096))]
struct Table([u64; 512]);

static mut PDPT_HI: Table = Table([0; 512]);
static mut PD_HI: Table = Table([0; 512]);

fn pml4() -> *mut u64 {
    let cr3: u64;
    // SAFETY: reading CR3.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nostack)) };
    (cr3 & !0xfff) as *mut u64
}

fn flush_tlb() {
    // SAFETY: reloading CR3 with itself.
    unsafe { core::arch::asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack)) };
}

fn noncanonical(_boot: &guest_rt::Boot) -> bool {
    arch::install_gp_catcher();
    // Map the last 2 MiB of the lower half onto guest-physical 0x200000..0x400000.
    // SAFETY: this guest's own page tables (identity-mapped); PML4 slot 255 is unused.
    unsafe {
        let pd = &raw mut PD_HI;
        let pdpt = &raw mut PDPT_HI;
        (*pd).0[511] = 0x20_0000 | 0x83;
        (*pdpt).0[511] = (pd as u64) | 3;
        *pml4().add(255) = (pdpt as u64) | 3;
    }
    flush_tlb();
    let hv = guest_rt::hv();
    let hypercall: &[u8] = if matches!(hv.insn, abi::guest::Insn::Vmcall) {
        &[0x0f, 0x01, 0xc1]
    } else {
        &[0x0f, 0x01, 0xd9]
    };
    let cases: [(&str, &[u8], u64, u64); 6] = [
        ("cpuid", &[0x0f, 0xa2], 0, 0),
        ("rdmsr EFER", &[0x0f, 0x32], 0, 0xc000_0080),
        ("out 0x80", &[0xe6, 0x80], 0, 0),
        ("in 0x80", &[0xe4, 0x80], 0, 0),
        ("invd", &[0x0f, 0x08], 0, 0),
        ("hypercall", hypercall, 0, 0),
    ];
    let mut all = true;
    for (name, bytes, rax, rcx) in cases {
        let at = TOP_OF_LOWER_HALF + 0x1000 - bytes.len() as u64;
        // The same bytes through the identity map (guest-physical 0x3ff000 + offset).
        let phys = 0x3f_f000 + (0x1000 - bytes.len() as u64);
        // SAFETY: the last page of this guest's 4 MiB, which nothing else uses.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), phys as *mut u8, bytes.len()) };
        let rip = arch::call_until_gp(at, rax, rcx);
        // QEMU TCG ignores the INVD intercept: the CPU itself executes it, and faults on the
        // next fetch. That is the emulator's answer, not microhv's.
        let native = name == "invd" && rip == at + bytes.len() as u64;
        let ok = rip == at || native;
        let how = if native {
            "executed by the CPU, not intercepted"
        } else if ok {
            "ok"
        } else {
            "WRONG"
        };
        println!("hostile: {name} at {at:#x}: #GP at {rip:#x} ({how})");
        all &= ok;
    }
    all
}

fn apic_walk() -> bool {
    // PML4 slot 1 (linear 512 GiB) names the APIC page as its page-directory-pointer table.
    // SAFETY: this guest's own page tables; slot 1 is unused.
    unsafe { *pml4().add(1) = 0xfee0_0000 | 3 };
    flush_tlb();
    // SAFETY: deliberately walks through the APIC page; microhv must stop this domain.
    let v = unsafe { core::ptr::read_volatile(0x80_0000_0000 as *const u64) };
    println!("hostile: read {v:#x} through page tables in the APIC page");
    false
}

fn invd_rdpmc() -> bool {
    arch::install_gp_catcher();
    // SAFETY: INVD would discard this guest's dirty cache lines on bare metal; microhv completes
    // it as a no-op.
    unsafe { core::arch::asm!("invd", options(nostack)) };
    println!("hostile: INVD completed");
    let gp = arch::raises_gp(2, || {
        // SAFETY: a probe: RDPMC must raise #GP (no PMU is offered); the catcher skips it.
        unsafe {
            core::arch::asm!("rdpmc", in("ecx") 0, out("eax") _, out("edx") _, options(nostack))
        };
    });
    // The injected #GP is a fault: RF is set in the RFLAGS image it pushed.
    let rf = arch::GP_RFLAGS.load(core::sync::atomic::Ordering::SeqCst) & (1 << 16) != 0;
    println!(
        "hostile: RDPMC: {} (RF in the pushed RFLAGS: {rf})",
        if gp { "#GP" } else { "ALLOWED" }
    );
    // CLFLUSH of the APIC page: nothing to flush in an emulated device; it completes.
    // SAFETY: CLFLUSH of a mapped address has no architectural effect on memory contents.
    unsafe { core::arch::asm!("clflush [{}]", in(reg) 0xfee0_0020u64, options(nostack)) };
    println!("hostile: CLFLUSH of the APIC page completed");
    gp && rf
}

/// See the module documentation.
fn boost_hog() -> bool {
    const LAPIC: u64 = 0xfee0_0000;
    let w32 = |off: u64, v: u32| {
        // SAFETY: the local APIC's registers (emulated, identity-mapped).
        unsafe { core::ptr::write_volatile((LAPIC + off) as *mut u32, v) }
    };
    arch::install_gp_catcher();
    let timing = core::arch::x86_64::__cpuid(abi::cpuid::LEAF_TIMING);
    let (tsc_khz, bus_khz) = (u64::from(timing.eax), timing.ebx);
    w32(0xf0, 0x1ff);
    w32(0x3e0, 0xb);
    w32(0x320, arch::TIMER_VECTOR as u32);
    // 3/4 of microhv's 4 M-tick slice.
    let compute = 3_000_000;
    for round in 1..=10 {
        let t0 = guest_rt::rdtsc();
        while guest_rt::rdtsc() - t0 < compute {
            core::hint::spin_loop();
        }
        // Due once dom0's short turn is over, inside the next vCPU's slice.
        w32(0x380, (bus_khz * 2).max(1));
        // SAFETY: the timer handler is installed; STI; HLT waits for it.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nostack)) };
        if arch::TIMER_COUNT.load(core::sync::atomic::Ordering::SeqCst) < round {
            println!("hostile: woke without the timer in round {round}");
            return false;
        }
    }
    println!("hostile: hogged for 10 rounds ({tsc_khz} kHz TSC)");
    true
}

fn console_flood() -> bool {
    let hv = guest_rt::hv();
    let mut line = [b'#'; 1024];
    line[1023] = b'\n';
    let mut written = 0;
    for _ in 0..256 {
        if hv.console_write(&line).is_ok() {
            written += line.len();
        }
    }
    println!("hostile: flooded the console with {written} bytes");
    written == 256 * 1024
}
