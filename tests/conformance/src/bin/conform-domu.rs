//! Conformance from an unprivileged domU: the guest operations with their errors and
//! boundaries, the privilege sweep (every dom0-only operation → EPERM), unknown numbers →
//! ENOSYS, a hypercall from ring 3 → EPERM. Its console ends with the verdict line; it then
//! shuts down with the number of failed cases as its status.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::Errno::*;
use abi::Op;
use abi::hypercall::*;
use conformance::{Suite, arch, call};

rt::pvh_note!();

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let hv = guest_rt::hv();
    let mem = boot.info.memmap_entries; // only to show the start info was read
    let mut s = Suite::new("domu");
    let ver = i64::from(abi::abi_version_word());
    s.expect("version", call(Op::Version as u64, [0; 5]), ver);
    s.expect("version-ignores-arguments", call(Op::Version as u64, [u64::MAX; 5]), ver);
    s.check("cpuid-identifies-a-domu", !hv.privileged && hv.domid != 0, format_args!("{hv:?}"));
    s.check("start-info-has-a-memory-map", mem >= 1, format_args!("{mem} entries"));

    // ConsoleWrite: lengths and addresses.
    let text = *b"a line from the domU suite\n";
    let buf = text.as_ptr() as u64;
    let stack_buf = [b'.'; 16];
    let cw = |a: u64, l: u64| call(Op::ConsoleWrite as u64, [a, l, 0, 0, 0]);
    s.expect("console-write", cw(buf, text.len() as u64), text.len() as i64);
    s.expect("console-write-empty", cw(buf, 0), 0);
    s.expect("console-write-from-stack", cw(stack_buf.as_ptr() as u64, 16), 16);
    let big = [b'x'; CONSOLE_WRITE_MAX as usize + 1];
    s.expect(
        "console-write-max",
        cw(big.as_ptr() as u64, CONSOLE_WRITE_MAX),
        CONSOLE_WRITE_MAX as i64,
    );
    s.expect_err("console-write-max+1", cw(big.as_ptr() as u64, CONSOLE_WRITE_MAX + 1), E2BIG);
    s.expect_err("console-write-huge", cw(buf, u64::MAX), E2BIG);
    s.expect_err("console-write-unmapped", cw(0xb000_0000, 8), EFAULT);
    s.expect_err("console-write-overflowing", cw(u64::MAX - 3, 8), EFAULT);
    let end = boot.ram_end();
    s.expect_err("console-write-straddling-ram-end", cw(end - 4, 8), EFAULT);
    s.expect_err("console-write-apic-page", cw(0xfee0_0000, 8), EFAULT);

    s.expect("yield", call(Op::Yield as u64, [0; 5]), 0);
    s.expect_err("shutdown-bad-reason", call(Op::Shutdown as u64, [3, 0, 0, 0, 0]), EINVAL);
    s.expect_err(
        "shutdown-status-above-32-bits",
        call(Op::Shutdown as u64, [0, 1 << 32, 0, 0, 0]),
        EINVAL,
    );

    // The privilege sweep: every dom0-only operation, aimed at dom0, at itself and at nothing.
    let me = u64::from(hv.domid);
    let scratch = [0u64; 64];
    let p = scratch.as_ptr() as u64;
    for op in Op::ALL.iter().filter(|o| o.dom0_only()) {
        for (who, target) in [("dom0", 0), ("self", me), ("none", 99)] {
            let mut name: heapless::String<48> = heapless::String::new();
            let _ = core::fmt::write(&mut name, format_args!("privilege-{op:?}-on-{who}"));
            s.expect_err(&name, call(*op as u64, [target, p, p, 16, 0]), EPERM);
        }
    }
    for n in [0x04u64, 0x0f, 0x23, 0x2f, 0xffff, 1 << 32, u64::MAX] {
        let mut name: heapless::String<48> = heapless::String::new();
        let _ = core::fmt::write(&mut name, format_args!("unknown-op-{n:#x}"));
        s.expect_err(&name, call(n, [0; 5]), ENOSYS);
    }

    arch::setup_ring3();
    for op in [Op::Version, Op::ConsoleWrite, Op::Shutdown, Op::DomainCreate] {
        let mut name: heapless::String<48> = heapless::String::new();
        let _ = core::fmt::write(&mut name, format_args!("ring3-{op:?}"));
        s.expect_err(
            &name,
            arch::hypercall_from_ring3(hv.insn, op as u64, [buf, 8, 0, 0, 0]),
            EPERM,
        );
    }
    s.expect("ring0-again-after-ring3", call(Op::Version as u64, [0; 5]), ver);

    // Single-stepping over instructions microhv completes itself: the trap lands right after.
    let step = arch::single_step(arch::Stepped::Cpuid(abi::cpuid::LEAF_BASE));
    s.check(
        "single-step-over-cpuid",
        step.traps == 1 && step.offset == 0 && step.rax == u64::from(abi::cpuid::LEAF_MAX),
        format_args!("{step:?}"),
    );
    let step = arch::single_step(arch::Stepped::Hypercall(hv.insn, Op::Version as u64));
    s.check(
        "single-step-over-hypercall",
        step.traps == 1 && step.offset == 0 && step.rax as i64 == ver,
        format_args!("{step:?}"),
    );

    s.verdict();
    guest_rt::exit(s.failed)
}
