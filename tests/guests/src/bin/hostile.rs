//! Tries to break out, one way per boot (`attack=NAME`). Attacks microhv must refuse end with
//! a report and status 0 (1 if anything was allowed); attacks microhv must stop end the domain
//! with a crash.
//!
//! - `read-other` / `write-outside`: touch guest-physical memory past its own RAM, where a
//!   careless hypervisor would have put another domain (crash: outside its memory).
//! - `dom0-ops`: every dom0-only hypercall, aimed at dom0 and at itself (each must be EPERM).
//! - `com2`: dom0's UART (must read as absent, writes dropped).
//! - `msr`: VMX MSRs, IA32_FEATURE_CONTROL, EFER.SVME, clearing EFER.LME while paging, CR4.VMXE
//!   (each must raise #GP).
//! - `triple-fault` (crash: triple fault).
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
            // SAFETY: deliberately outside this domain's memory; microhv must stop it here.
            let v = unsafe { core::ptr::read_volatile(OUTSIDE as *const u64) };
            println!("hostile: read {v:#x} outside my memory");
            false
        }
        "write-outside" => {
            // SAFETY: as above, a write.
            unsafe { core::ptr::write_volatile(OUTSIDE as *mut u64, 0xbad) };
            println!("hostile: wrote outside my memory");
            false
        }
        "dom0-ops" => dom0_ops(),
        "com2" => com2(),
        "msr" => msrs(),
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
