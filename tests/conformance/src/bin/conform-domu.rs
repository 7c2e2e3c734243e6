//! Conformance from an unprivileged domU: the guest operations with their errors and
//! boundaries, the privilege sweep (every dom0-only operation → EPERM), unknown numbers →
//! ENOSYS, a hypercall from ring 3 → EPERM, and the event-channel operations from a domU (a
//! loopback pair polled through its page, each error, the table filled to ENOSPC, the VIRQs
//! and a port dom0 offered someone else (`foreign=N`) → EINVAL), and the grant operations from a
//! domU (grants to itself mapped through its window and read and written there, copies, each
//! error, a grant dom0 made to someone else (`gforeign=R`) → EPERM, the mapping slots filled
//! to ENOSPC). Its console ends with the verdict line; it then shuts down with the number of
//! failed cases as its status.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::Errno::*;
use abi::Op;
use abi::hypercall::*;
use abi::types::*;
use conformance::grant::{self, Pages, window};
use conformance::{Suite, arch, call, upcall};

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
    for n in [0x05u64, 0x0f, 0x23, 0x2f, 0xffff, 1 << 32, u64::MAX] {
        let mut name: heapless::String<48> = heapless::String::new();
        let _ = core::fmt::write(&mut name, format_args!("unknown-op-{n:#x}"));
        s.expect_err(&name, call(n, [0; 5]), ENOSYS);
    }
    // `VcpuUp` on its one vCPU (running) and on vCPUs it does not have; the state is never read.
    let up = Op::VcpuUp as u64;
    s.expect_err("vcpu-up-running", call(up, [0, p, 0, 0, 0]), EEXIST);
    s.expect_err("vcpu-up-beyond", call(up, [1, p, 0, 0, 0]), EINVAL);
    s.expect_err("vcpu-up-huge-index", call(up, [u64::MAX, 0, 0, 0, 0]), EINVAL);

    let foreign = boot.option("foreign").and_then(|v| v.parse().ok()).unwrap_or(0);
    evtchn(&mut s, boot.ram_end(), foreign);
    let gforeign = boot.option("gforeign").and_then(|v| v.parse().ok()).unwrap_or(0);
    grant(&mut s, boot.ram_end(), gforeign);

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

/// Event channels from a domU: every operation's errors, a loopback pair whose events are
/// polled in the page, the table filled, the VIRQs refused, dom0's `foreign` port (offered to
/// another domain) refused.
fn evtchn(s: &mut Suite, ram_end: u64, foreign: u64) {
    let me = u64::from(guest_rt::hv().domid);
    let page = upcall::page_addr();
    let cb = Op::EvtchnSetCallback as u64;
    for (case, vector, gpa, e) in [
        ("evtchn-callback-vector-0x1f", 0x1f, page, EINVAL),
        ("evtchn-callback-vector-0x100", 0x100, page, EINVAL),
        ("evtchn-callback-misaligned", 0, page + 8, EINVAL),
        ("evtchn-callback-past-ram", 0, ram_end, EFAULT),
        ("evtchn-callback-apic-page", 0, 0xfee0_0000, EFAULT),
        ("evtchn-callback-overflowing", 0, !0xfff, EFAULT),
    ] {
        s.expect_err(case, call(cb, [vector, gpa, 0, 0, 0]), e);
    }
    s.expect("evtchn-callback-polled", call(cb, [0, page, 0, 0, 0]), 0);
    s.expect("evtchn-callback-unregister", call(cb, [0x40, EVTCHN_NO_PAGE, 0, 0, 0]), 0);
    s.expect("evtchn-callback-again", call(cb, [0, page, 0, 0, 0]), 0);
    let (alloc, bind) = (Op::EvtchnAllocUnbound as u64, Op::EvtchnBindInterdomain as u64);
    let (send, close) = (Op::EvtchnSend as u64, Op::EvtchnClose as u64);
    let (status, virq) = (Op::EvtchnStatus as u64, Op::EvtchnBindVirq as u64);
    s.expect_err("evtchn-alloc-missing-domain", call(alloc, [99, 0, 0, 0, 0]), ESRCH);
    s.expect_err(
        "evtchn-alloc-domid-invalid",
        call(alloc, [DOMID_INVALID.into(), 0, 0, 0, 0]),
        ESRCH,
    );
    s.expect_err("evtchn-bind-foreign-port", call(bind, [0, foreign, 0, 0, 0]), EINVAL);
    s.expect_err("evtchn-bind-missing-domain", call(bind, [99, 1, 0, 0, 0]), ESRCH);
    s.expect_err("evtchn-bind-virq-dom-exc", call(virq, [VIRQ_DOM_EXC.into(), 0, 0, 0, 0]), EPERM);
    s.expect_err(
        "evtchn-bind-virq-con-ring",
        call(virq, [VIRQ_CON_RING.into(), 0, 0, 0, 0]),
        EPERM,
    );
    s.expect_err("evtchn-bind-virq-timer", call(virq, [0, 0, 0, 0, 0]), EINVAL);
    for (op, name) in [(send, "send"), (close, "close"), (status, "status")] {
        // Port 9 is valid but free: nothing to send on or close (its status is "closed").
        let free = if op == status { None } else { Some(9) };
        for port in [0, u64::from(EVTCHN_PORTS), u64::MAX].into_iter().chain(free) {
            let mut case: heapless::String<48> = heapless::String::new();
            let _ = core::fmt::write(&mut case, format_args!("evtchn-{name}-port-{port:#x}"));
            let st = [0u64; 2];
            s.expect_err(&case, call(op, [port, st.as_ptr() as u64, 0, 0, 0]), EINVAL);
        }
    }
    // A loopback pair: each end's event shows in the other's pending bit.
    let p = call(alloc, [me, 0, 0, 0, 0]);
    s.expect("evtchn-alloc-for-itself", p, 1);
    s.expect_err("evtchn-bind-own-free-port", call(bind, [me, 2, 0, 0, 0]), EINVAL);
    let q = call(bind, [me, 1, 0, 0, 0]);
    s.expect("evtchn-bind-loopback", q, 2);
    s.expect_err("evtchn-bind-bound-port", call(bind, [me, 1, 0, 0, 0]), EINVAL);
    let st = |port: u64| -> Option<EvtchnStatus> {
        let mut out = [0u64; 2];
        let r = call(status, [port, out.as_mut_ptr() as u64, 0, 0, 0]);
        (r == 0).then(|| zerocopy::transmute!(out))
    };
    s.check(
        "evtchn-status-free-port",
        st(9).is_some_and(|x| x.state == EVTCHNSTAT_CLOSED),
        format_args!("{:?}", st(9)),
    );
    s.check(
        "evtchn-status-loopback",
        st(1).is_some_and(|x| {
            (x.state, x.remote_domid, x.remote_port) == (EVTCHNSTAT_INTERDOMAIN, me as u32, 2)
        }) && st(2).is_some_and(|x| (x.state, x.remote_port) == (EVTCHNSTAT_INTERDOMAIN, 1)),
        format_args!("{:?} {:?}", st(1), st(2)),
    );
    let unaligned = [0u64; 3];
    s.expect_err(
        "evtchn-status-misaligned",
        call(status, [1, unaligned.as_ptr() as u64 + 4, 0, 0, 0]),
        EINVAL,
    );
    s.expect_err("evtchn-status-past-ram", call(status, [1, ram_end - 8, 0, 0, 0]), EFAULT);
    s.expect("evtchn-send-2", call(send, [2, 0, 0, 0, 0]), 0);
    s.check(
        "evtchn-send-2-marks-1",
        upcall::take_pending(1) && !upcall::is_pending(2),
        format_args!(
            "pending {:#x}",
            upcall::PAGE.pending[0].load(core::sync::atomic::Ordering::SeqCst)
        ),
    );
    s.expect("evtchn-send-1", call(send, [1, 0, 0, 0, 0]), 0);
    s.check("evtchn-send-1-marks-2", upcall::is_pending(2), format_args!("not pending"));
    s.expect("evtchn-close-1", call(close, [1, 0, 0, 0, 0]), 0);
    s.check(
        "evtchn-close-leaves-the-peer-unbound",
        st(2).is_some_and(|x| (x.state, x.remote_domid) == (EVTCHNSTAT_UNBOUND, me as u32)),
        format_args!("{:?}", st(2)),
    );
    s.expect("evtchn-send-on-unbound-is-dropped", call(send, [2, 0, 0, 0, 0]), 0);
    s.check("evtchn-dropped-marks-nothing", !upcall::is_pending(1), format_args!("port 1 pending"));
    s.expect_err("evtchn-close-twice", call(close, [1, 0, 0, 0, 0]), EINVAL);
    s.expect("evtchn-close-2", call(close, [2, 0, 0, 0, 0]), 0);
    s.check("evtchn-close-clears-pending", !upcall::is_pending(2), format_args!("port 2 pending"));
    // The table: EVTCHN_PORTS - 1 ports, then ENOSPC; closing makes room again.
    let mut n = 0;
    let last = loop {
        let r = call(alloc, [0, 0, 0, 0, 0]);
        if r < 0 || n > EVTCHN_PORTS {
            break r;
        }
        n += 1;
    };
    s.expect_err("evtchn-alloc-table-full", last, ENOSPC);
    s.expect("evtchn-table-holds-ports", i64::from(n), i64::from(EVTCHN_PORTS - 1));
    let closed = (1..EVTCHN_PORTS).filter(|&p| call(close, [p.into(), 0, 0, 0, 0]) == 0).count();
    s.expect("evtchn-close-all", closed as i64, i64::from(EVTCHN_PORTS - 1));
}

/// Pages the domU suite grants itself (volatile access only).
static mut PAGES: Pages<2> = Pages::new();

fn page(i: u64) -> u64 {
    (&raw const PAGES) as u64 + i * 4096
}

/// Grant tables from a domU: grants to itself (a loopback) with every error, mapped through its
/// window and reached there, copies, dom0's grant to someone else (`gforeign`) refused, the
/// mapping slots filled to `ENOSPC`.
fn grant(s: &mut Suite, ram_end: u64, gforeign: u64) {
    let me = u64::from(guest_rt::hv().domid);
    let (set, revoke, map) = (Op::GrantSet as u64, Op::GrantRevoke as u64, Op::GrantMap as u64);
    let (unmap, from, to) =
        (Op::GrantUnmap as u64, Op::GrantCopyFrom as u64, Op::GrantCopyTo as u64);
    let query = |r: u64| -> Option<GrantStatus> {
        let mut out = [0u64; 3];
        let ret = call(Op::GrantQuery as u64, [r, out.as_mut_ptr() as u64, 0, 0, 0]);
        (ret == 0).then(|| zerocopy::transmute!(out))
    };
    let pattern = b"a domU grants itself a page";
    // SAFETY: the suite's own pages, not granted yet.
    unsafe { grant::write(page(0), pattern) };
    for (case, r, peer, gpa, flags, e) in [
        ("grant-set-missing-peer", 0, 99, page(0), 0, ESRCH),
        ("grant-set-domid-invalid", 0, DOMID_INVALID.into(), page(0), 0, ESRCH),
        ("grant-set-ref-max", GRANT_ENTRIES.into(), me, page(0), 0, EINVAL),
        ("grant-set-unknown-flag", 0, me, page(0), 4, EINVAL),
        ("grant-set-misaligned", 0, me, page(0) + 1, 0, EINVAL),
        ("grant-set-past-ram", 0, me, ram_end, 0, EFAULT),
        ("grant-set-window", 0, me, window(0), 0, EFAULT),
        ("grant-set-apic-page", 0, me, 0xfee0_0000, 0, EFAULT),
    ] {
        s.expect_err(case, call(set, [r, peer, gpa, flags, 0]), e);
    }
    s.expect("grant-set-for-itself", call(set, [0, me, page(0), 0, 0]), 0);
    s.expect_err("grant-set-in-use", call(set, [0, me, page(1), 0, 0]), EEXIST);
    s.expect("grant-set-read-only", call(set, [1, me, page(0), GRANT_READONLY, 0]), 0);
    s.expect("grant-set-for-dom0", call(set, [2, 0, page(1), 0, 0]), 0);
    let st = query(0);
    s.check(
        "grant-query",
        st.is_some_and(|x| {
            (x.state, x.peer, x.flags, x.mapped, x.gpa)
                == (GRANT_STATE_GRANTED, me as u32, 0, 0, page(0))
        }),
        format_args!("{st:?}"),
    );
    s.check(
        "grant-query-free",
        query(9).is_some_and(|x| x.state == 0),
        format_args!("{:?}", query(9)),
    );
    let q = Op::GrantQuery as u64;
    s.expect_err("grant-query-past-ram", call(q, [0, ram_end - 8, 0, 0, 0]), EFAULT);
    s.expect_err("grant-query-ref-max", call(q, [64, page(1), 0, 0, 0]), EINVAL);
    for (case, g, r, gpa, flags, e) in [
        ("grant-map-missing-granter", 99, 0, window(0), 0, ESRCH),
        ("grant-map-ref-max", me, GRANT_ENTRIES.into(), window(0), 0, EINVAL),
        ("grant-map-unknown-flag", me, 0, window(0), 2, EINVAL),
        ("grant-map-over-ram", me, 0, page(1), 0, EINVAL),
        ("grant-map-misaligned", me, 0, window(0) + 8, 0, EINVAL),
        ("grant-map-past-window", me, 0, GRANT_WINDOW_GPA + GRANT_WINDOW_BYTES, 0, EINVAL),
        ("grant-map-free-ref", me, 9, window(0), 0, EINVAL),
        ("grant-map-dom0s-grant-to-another", 0, gforeign, window(0), 0, EPERM),
        ("grant-map-own-grant-to-dom0", me, 2, window(0), 0, EPERM),
    ] {
        s.expect_err(case, call(map, [g, r, gpa, flags, 0]), e);
    }
    s.expect("grant-map", call(map, [me, 0, window(0), 0, 0]), 0);
    // SAFETY: mapped just now (writable); page 0 is the suite's.
    let (seen, wrote) = unsafe {
        let seen = grant::holds(window(0), pattern);
        grant::write(window(0) + 512, b"via the window");
        (seen, grant::holds(page(0) + 512, b"via the window"))
    };
    s.check("grant-read-through-the-mapping", seen, format_args!("pattern missing"));
    s.check("grant-write-through-the-mapping", wrote, format_args!("not in the page"));
    s.expect_err("grant-map-twice", call(map, [me, 0, window(3), 0, 0]), EEXIST);
    let ro = GRANT_READONLY;
    s.expect_err("grant-map-over-a-mapping", call(map, [me, 1, window(0), ro, 0]), EEXIST);
    s.check(
        "grant-query-mapped",
        query(0).is_some_and(|x| x.mapped == 1),
        format_args!("{:?}", query(0)),
    );
    s.expect_err("grant-revoke-while-mapped", call(revoke, [0, 0, 0, 0, 0]), EBUSY);
    s.expect_err("grant-map-read-only-writable", call(map, [me, 1, window(1), 0, 0]), EPERM);
    s.expect("grant-map-read-only", call(map, [me, 1, window(1), ro, 0]), 0);
    // SAFETY: mapped just now; only read.
    let seen = unsafe { grant::holds(window(1), pattern) };
    s.check("grant-read-the-read-only-mapping", seen, format_args!("pattern missing"));
    let mut buf = [0u8; 64];
    let b = buf.as_mut_ptr() as u64;
    let n = pattern.len() as u64;
    s.expect("grant-copy-from", call(from, [me, 1, 0, b, n]), n as i64);
    s.check(
        "grant-copy-from-brings-the-bytes",
        buf[..pattern.len()] == pattern[..],
        format_args!("{buf:?}"),
    );
    s.expect("grant-copy-to", call(to, [me, 0, 1024, b, 8]), 8);
    // SAFETY: the suite's page.
    let seen = unsafe { grant::holds(page(0) + 1024, &pattern[..8]) };
    s.check("grant-copy-to-puts-the-bytes", seen, format_args!("not copied"));
    for (case, op, g, r, off, local, len, e) in [
        ("grant-copy-to-read-only", to, me, 1, 0, b, 8, EPERM),
        ("grant-copy-longer-than-a-page", from, me, 1, 0, b, 4097, E2BIG),
        ("grant-copy-past-the-page", from, me, 1, 4095, b, 2, EINVAL),
        ("grant-copy-free-ref", from, me, 9, 0, b, 8, EINVAL),
        ("grant-copy-into-past-ram", from, me, 1, 0, ram_end - 4, 8, EFAULT),
        ("grant-copy-into-the-window", from, me, 1, 0, window(0), 8, EFAULT),
        ("grant-copy-dom0s-grant-to-another", from, 0, gforeign, 0, b, 8, EPERM),
        ("grant-copy-missing-granter", from, 99, 1, 0, b, 8, ESRCH),
    ] {
        s.expect_err(case, call(op, [g, r, off, local, len]), e);
    }
    // The mapping slots: GRANT_MAPS at once (two are in use), then ENOSPC.
    let refs = 3..3 + u64::from(GRANT_MAPS) - 1;
    let more = refs.clone().filter(|&r| call(set, [r, me, page(0), 0, 0]) == 0).count();
    s.expect("grant-set-more", more as i64, i64::from(GRANT_MAPS) - 1);
    let mapped = refs
        .clone()
        .take(GRANT_MAPS as usize - 2)
        .filter(|&r| call(map, [me, r, window(r), 0, 0]) == 0)
        .count();
    s.expect("grant-map-up-to-the-slots", mapped as i64, i64::from(GRANT_MAPS) - 2);
    let last = refs.end - 1;
    s.expect_err("grant-map-with-no-slot-left", call(map, [me, last, window(last), 0, 0]), ENOSPC);
    s.expect_err("grant-unmap-nothing", call(unmap, [window(last), 0, 0, 0, 0]), EINVAL);
    let pages = [0, 1].into_iter().chain(refs.clone().take(GRANT_MAPS as usize - 2));
    let unmapped = pages.filter(|&w| call(unmap, [window(w), 0, 0, 0, 0]) == 0).count();
    s.expect("grant-unmap-all", unmapped as i64, GRANT_MAPS.into());
    let revoked =
        (0..u64::from(GRANT_ENTRIES)).filter(|&r| call(revoke, [r, 0, 0, 0, 0]) == 0).count();
    s.expect("grant-revoke-all", revoked as i64, i64::from(GRANT_MAPS) + 2);
    s.expect_err("grant-revoke-free", call(revoke, [0, 0, 0, 0, 0]), EINVAL);
}
