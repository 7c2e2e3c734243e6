//! A PV console frontend (`ABI.md`, "Split drivers"): finds its store through the descriptor in
//! its start page, maps dom0's console page, binds the console's port, says `console/state` 4,
//! and from then on talks only through that page — never through the `ConsoleWrite` hypercall
//! (ring 0's console), except for a line when it cannot connect at all.
//!
//! It prints `pvcon: hello through dom0`, then a line of 3000 bytes in pieces (the ring wraps,
//! and it waits for dom0 when the ring is full), then echoes every input line (`pvcon: echo
//! LINE`) until a line `quit`, prints `pvcon: bye` and shuts down with status 0.
//!
//! With `hostile` on the command line it first sets `out_prod` far ahead of `out_cons` (dom0
//! must take at most a ring and go on), then prints `pvcon: after garbage` and shuts down.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::pv::{self, PAGE, keys};
use core::sync::atomic::{Ordering, compiler_fence};
use guest_rt::println;
use test_guests::pv::{STORE_PAGE, Store, wait};

rt::pvh_note!();

/// Bytes of the long line (more than the output ring: it must wrap and wait).
const LONG: usize = 3000;
/// Bytes written at a time.
const PIECE: usize = 500;

/// The connection to dom0's console.
struct Console {
    /// Where the console page is mapped.
    page: *mut u8,
    /// This domain's end of the console's event channel.
    port: u32,
    /// Output bytes put so far (this domain's count; the page's copy is written from it).
    out_prod: u32,
    /// Input bytes taken so far.
    in_cons: u32,
}

impl Console {
    /// Finds the store, maps the console page and binds its port, and says so in the store.
    fn connect() -> Result<Self, &'static str> {
        let hv = guest_rt::hv();
        let store = Store::connect()?;
        // The console at the grant window's page after the store's.
        let page = (STORE_PAGE + PAGE as u64) as *mut u8;
        let number = |key| store.number(key).and_then(|n| u32::try_from(n).ok());
        let gref = number(keys::CONSOLE_RING_REF).ok_or("no console/ring-ref")?;
        let remote = number(keys::CONSOLE_PORT).ok_or("no console/port")?;
        hv.grant_map(store.backend, gref, page as u64, 0).map_err(|_| "console map")?;
        let port = hv.evtchn_bind_interdomain(store.backend, remote).map_err(|_| "console bind")?;
        // SAFETY: the console page, mapped just now: start where dom0's indices are.
        let (out_prod, in_cons) = unsafe {
            (
                core::ptr::read_volatile(page.add(pv::CONS_OUT_PROD).cast::<u32>()),
                core::ptr::read_volatile(page.add(pv::CONS_IN_CONS).cast::<u32>()),
            )
        };
        // 4: Connected (`pv::state::CONNECTED`): dom0 sends typed input to the page now.
        store.publish(&[(keys::CONSOLE_STATE, "4")]);
        Ok(Console { page, port, out_prod, in_cons })
    }

    fn read_u32(&self, at: usize) -> u32 {
        // SAFETY: an index word of the mapped console page.
        unsafe { core::ptr::read_volatile(self.page.add(at).cast::<u32>()) }
    }

    fn write_u32(&self, at: usize, v: u32) {
        // SAFETY: as in `read_u32`.
        unsafe { core::ptr::write_volatile(self.page.add(at).cast::<u32>(), v) }
    }

    /// Writes `bytes`, waiting for dom0 whenever the output ring is full; false if dom0 stopped
    /// taking them.
    fn write(&mut self, mut bytes: &[u8]) -> bool {
        let hv = guest_rt::hv();
        while !bytes.is_empty() {
            let room = || {
                let used = self.out_prod.wrapping_sub(self.read_u32(pv::CONS_OUT_CONS));
                pv::CONS_OUT_SIZE.saturating_sub(used as usize)
            };
            if !wait(|| room() > 0) {
                return false;
            }
            let n = room().min(bytes.len());
            for &b in &bytes[..n] {
                let at = pv::CONS_OUT + self.out_prod as usize % pv::CONS_OUT_SIZE;
                // SAFETY: inside the output array of the mapped page.
                unsafe { core::ptr::write_volatile(self.page.add(at), b) };
                self.out_prod = self.out_prod.wrapping_add(1);
            }
            // The bytes are in the ring before `out_prod` says so.
            compiler_fence(Ordering::SeqCst);
            self.write_u32(pv::CONS_OUT_PROD, self.out_prod);
            let _ = hv.evtchn_send(self.port);
            bytes = &bytes[n..];
        }
        true
    }

    /// The next input byte, waiting for it (`None` after [`WAIT_MS`] without input).
    fn read_byte(&mut self) -> Option<u8> {
        if !wait(|| self.read_u32(pv::CONS_IN_PROD) != self.in_cons) {
            return None;
        }
        compiler_fence(Ordering::SeqCst);
        let at = pv::CONS_IN + self.in_cons as usize % pv::CONS_IN_SIZE;
        // SAFETY: inside the input array of the mapped page.
        let b = unsafe { core::ptr::read_volatile(self.page.add(at)) };
        self.in_cons = self.in_cons.wrapping_add(1);
        self.write_u32(pv::CONS_IN_CONS, self.in_cons);
        Some(b)
    }
}

/// The long line's byte `i`: letters, so that a byte lost or repeated shows.
fn long_byte(i: usize) -> u8 {
    b'a' + (i % 26) as u8
}

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let mut c = match Console::connect() {
        Ok(c) => c,
        Err(why) => {
            // The one line through ring 0's console: there is no other.
            println!("pvcon: not connected: {why}");
            guest_rt::exit(2);
        }
    };
    if boot.has_flag("hostile") {
        // An index far ahead of anything written: dom0 takes a ring's worth and goes on.
        c.out_prod = c.out_prod.wrapping_add(0x7654_3210);
        c.write_u32(pv::CONS_OUT_PROD, c.out_prod);
        let _ = guest_rt::hv().evtchn_send(c.port);
        let ok = c.write(b"\npvcon: after garbage\n");
        guest_rt::exit(if ok { 0 } else { 1 });
    }
    let mut ok = c.write(b"pvcon: hello through dom0\n");
    ok &= c.write(b"pvcon: long line: ");
    let mut piece = [0u8; PIECE];
    for start in (0..LONG).step_by(PIECE) {
        let n = PIECE.min(LONG - start);
        for (i, b) in piece[..n].iter_mut().enumerate() {
            *b = long_byte(start + i);
        }
        ok &= c.write(&piece[..n]);
    }
    ok &= c.write(b"\npvcon: type lines; quit ends\n");
    // Echo input lines until `quit`.
    let mut line = heapless::Vec::<u8, 128>::new();
    loop {
        let Some(b) = c.read_byte() else {
            let _ = c.write(b"pvcon: no input came\n");
            guest_rt::exit(1);
        };
        if b != b'\n' && b != b'\r' {
            let _ = line.push(b);
            continue;
        }
        if line.is_empty() {
            continue;
        }
        if line.as_slice() == b"quit" {
            break;
        }
        ok &= c.write(b"pvcon: echo ");
        ok &= c.write(&line);
        ok &= c.write(b"\n");
        line.clear();
    }
    ok &= c.write(b"pvcon: bye\n");
    guest_rt::exit(if ok { 0 } else { 1 })
}
