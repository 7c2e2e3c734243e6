//! The event-channel domU, run by `conform-dom0` in two roles.
//!
//! `role=wake`: delivery end to end. It registers its event-channel page with the upcall vector,
//! offers dom0 a port (`evtchn: offered port N` on its console), and halts with interrupts on;
//! dom0 binds the port and sends, which must wake it through the vector with the port's pending
//! bit set. It then masks the port (`evtchn: masked`): dom0's next event must be recorded
//! without an upcall. Last it sends to dom0 (`evtchn: sent`), closes the port, prints its
//! verdict (`conformance evtchn-domu: ...`) and shuts down with the number of failures.
//!
//! `role=storm [peer=D] sends=N`: one of two domUs that storm each other. With `peer`, it offers
//! D a port and waits until D bound it; without, it finds the port offered to it by trying to
//! bind every port of every other domain (each refusal must be `EPERM`, `EINVAL` or `ESRCH`).
//! Both then send N events, clearing their pending bit now and then, opening the interrupt
//! window every 16 sends and yielding every 64 (so the two alternate), and must take at least
//! one upcall and at most N. It prints a summary and shuts down with status 0 if
//! all held, 1 otherwise.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::Errno;
use abi::hypercall::{EVTCHN_PORTS, MAX_DOMAINS};
use abi::types::{EVTCHNSTAT_CLOSED, EVTCHNSTAT_INTERDOMAIN};
use conformance::upcall::{self, UPCALLS, VECTOR};
use conformance::{Suite, poll};
use core::sync::atomic::Ordering::SeqCst;
use guest_rt::println;

rt::pvh_note!();

fn wake() -> u32 {
    let hv = guest_rt::hv();
    let mut s = Suite::new("evtchn-domu");
    s.check("set-callback", upcall::register(VECTOR).is_ok(), format_args!("refused"));
    let Ok(p) = hv.evtchn_alloc_unbound(0) else {
        s.check("alloc-unbound-for-dom0", false, format_args!("refused"));
        s.verdict();
        return s.failed;
    };
    println!("evtchn: offered port {p}");
    let woke = upcall::wait_upcall(0, 10_000);
    let n = UPCALLS.load(SeqCst);
    s.check("halted-until-the-upcall", woke && n == 1, format_args!("woke {woke}, upcalls {n}"));
    s.check("pending-bit-set", upcall::take_pending(p), format_args!("port {p} not pending"));
    let st = hv.evtchn_status(p);
    s.check(
        "status-interdomain-with-dom0",
        st.is_ok_and(|st| st.state == EVTCHNSTAT_INTERDOMAIN && st.remote_domid == 0),
        format_args!("{st:?}"),
    );
    upcall::set_mask(p, true);
    println!("evtchn: masked");
    let seen = poll(10_000, || upcall::is_pending(p));
    let n = UPCALLS.load(SeqCst);
    s.check(
        "masked-event-recorded-without-upcall",
        seen && n == 1,
        format_args!("pending {seen}, upcalls {n}"),
    );
    upcall::set_mask(p, false);
    upcall::take_pending(p);
    s.check("send-to-dom0", hv.evtchn_send(p).is_ok(), format_args!("refused"));
    println!("evtchn: sent");
    s.check("close", hv.evtchn_close(p).is_ok(), format_args!("refused"));
    let st = hv.evtchn_status(p);
    s.check(
        "status-after-close",
        st.is_ok_and(|st| st.state == EVTCHNSTAT_CLOSED),
        format_args!("{st:?}"),
    );
    s.verdict();
    s.failed
}

fn storm(peer: Option<u32>, sends: u64) -> u32 {
    let hv = guest_rt::hv();
    let mut undefined = 0u64;
    if upcall::register(VECTOR).is_err() {
        println!("evtchn-storm: set-callback refused");
        return 1;
    }
    let port = match peer {
        Some(peer) => hv.evtchn_alloc_unbound(peer).ok().filter(|&p| {
            poll(20_000, || hv.evtchn_status(p).is_ok_and(|st| st.state == EVTCHNSTAT_INTERDOMAIN))
        }),
        None => {
            let mut found = None;
            poll(20_000, || {
                for d in (1..MAX_DOMAINS).filter(|&d| d != hv.domid) {
                    for rp in 1..EVTCHN_PORTS {
                        match hv.evtchn_bind_interdomain(d, rp) {
                            Ok(p) => found = Some(p),
                            // No such domain: on to the next.
                            Err(Errno::ESRCH) => break,
                            Err(Errno::EPERM | Errno::EINVAL) => continue,
                            Err(_) => undefined += 1,
                        }
                        return true;
                    }
                }
                false
            });
            found
        }
    };
    let Some(port) = port else {
        println!("evtchn-storm: no peer bound (undefined refusals {undefined})");
        return 1;
    };
    let mut refused = 0u64;
    for i in 0..sends {
        refused += u64::from(hv.evtchn_send(port).is_err());
        // Handled now and then, as a guest's upcall handler would: the peer's next event
        // raises the vector again, and the window lets it in. A yield every 64 sends makes
        // the two storms alternate even where one slice would hold all of them (Bochs).
        if i % 64 == 0 {
            upcall::take_pending(port);
        }
        if i % 16 == 0 {
            upcall::window();
        }
        if i % 64 == 63 {
            let _ = hv.yield_now();
        }
    }
    let upcalls = UPCALLS.load(SeqCst);
    let got = upcalls > 0 || upcall::wait_upcall(0, 20_000);
    let upcalls = UPCALLS.load(SeqCst);
    println!(
        "evtchn-storm: port {port}, {sends} sends, {refused} refused, {undefined} undefined, {upcalls} upcalls"
    );
    u32::from(refused != 0 || undefined != 0 || !got || upcalls > sends)
}

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let status = match boot.option("role") {
        Some("wake") => wake(),
        Some("storm") => {
            let peer = boot.option("peer").and_then(|v| v.parse().ok());
            storm(peer, boot.option("sends").and_then(|v| v.parse().ok()).unwrap_or(1000))
        }
        other => {
            println!("evtchn: unknown role {other:?}");
            1
        }
    };
    guest_rt::exit(status)
}
