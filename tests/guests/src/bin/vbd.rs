//! A PV block frontend (`ABI.md`, "Split drivers"): finds its store through the descriptor in
//! its start page, connects a ring to dom0's backend, and moves sectors through it. What it
//! does is chosen on the command line:
//!
//! - `write=SEED`: writes the whole disk with SEED's pattern, then reads it back.
//! - `read=SEED`: reads the whole disk and checks SEED's pattern (`read=0`: all zeros).
//! - `bench`: the round trip of one request, then the throughput of full rings.
//! - `loop`: rounds of writing and checking the first 64 KiB until a `q` arrives on COM1 (a
//!   bystander while other frontends misbehave), with a line every 4 rounds.
//! - `hostile`: requests the backend must refuse one by one, a ring it must not let go, a data
//!   grant revoked under a request, a ring full of random bytes; then a good request must
//!   still work.
//! - `overflow`: more requests than slots: the backend must close the device.
//! - `garbage`: a ring reference and port that do not parse: the backend must close the device.
//!
//! Each mode prints one `vbd: ...` verdict line and shuts down with status 0 if it held, 1 if
//! not (2: no store or no connection).
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::hypercall::GRANT_READONLY;
use abi::pv::{self, BLK_RING_SLOTS, BlkRequest, BlkResponse, Half, PAGE, keys, state};
use core::fmt::Write;
use core::sync::atomic::{Ordering, compiler_fence};
use guest_rt::{println, rdtsc};
use test_guests::pv::{Store, ticks_per_ms, wait};
use zerocopy::{FromZeros, IntoBytes};

rt::pvh_note!();

/// The grant reference of the ring page; data page `i` is `DATA_REF + i`.
const RING_REF: u32 = 0;
const DATA_REF: u32 = 1;
/// Sectors per request: a whole page.
const PER_REQ: u64 = abi::pv::BLK_MAX_SECTORS as u64;
#[repr(C, align(4096))]
struct Pages<const N: usize>([[u8; PAGE]; N]);
/// The ring page, granted to dom0.
static mut RING: Pages<1> = Pages([[0; PAGE]; 1]);
/// One data page per slot, each granted to dom0 writable.
static mut DATA: Pages<{ BLK_RING_SLOTS as usize }> = Pages([[0; PAGE]; BLK_RING_SLOTS as usize]);

/// The connection to the backend.
struct Vbd {
    backend: u32,
    store: Store,
    port: u32,
    sectors: u64,
    req_prod: u32,
    rsp_cons: u32,
}

fn ring() -> *mut u8 {
    (&raw mut RING).cast()
}

fn data(i: usize) -> *mut u8 {
    // SAFETY: in bounds of DATA for i < BLK_RING_SLOTS (every caller's slot index).
    unsafe { (&raw mut DATA).cast::<u8>().add(i * PAGE) }
}

/// The word at index `w` of sector `s` in `seed`'s pattern (all zeros for seed 0).
fn pattern(seed: u64, s: u64, w: u64) -> u64 {
    if seed == 0 { 0 } else { seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (s << 16 | w) }
}

impl Vbd {
    fn backend_state(&self) -> Option<u64> {
        self.store.number(keys::VBD_BACKEND_STATE)
    }

    /// The backend's reason for closing, if it gave one.
    fn error(&self) -> heapless::String<24> {
        let snap = self.store.snapshot();
        let e = pv::get(&snap, Half::Backend, keys::VBD_ERROR);
        e.and_then(|e| e.try_into().ok()).unwrap_or_default()
    }

    /// Finds the store, waits for the backend, grants the ring and the data pages, offers a
    /// port and waits for `Connected`.
    fn connect() -> Result<Self, &'static str> {
        let hv = guest_rt::hv();
        let store = Store::connect()?;
        let mut v =
            Vbd { backend: store.backend, store, port: 0, sectors: 0, req_prod: 0, rsp_cons: 0 };
        if !wait(|| v.backend_state() == Some(state::INIT_WAIT)) {
            return Err("the backend never reached InitWait");
        }
        v.sectors = v.store.number(keys::VBD_SECTORS).ok_or("no sectors key")?;
        let backend = v.store.number(keys::VBD_BACKEND_ID).ok_or("no backend-id key")?;
        v.backend = u32::try_from(backend).map_err(|_| "a backend-id out of range")?;
        // SAFETY: the ring page is this guest's, granted to dom0 from now on.
        unsafe {
            core::ptr::write_bytes(ring(), 0, PAGE);
            hv.grant_set(RING_REF, v.backend, ring() as u64, 0).map_err(|_| "ring grant")?;
            for i in 0..BLK_RING_SLOTS {
                hv.grant_set(DATA_REF + i, v.backend, data(i as usize) as u64, 0)
                    .map_err(|_| "data grant")?;
            }
        }
        v.port = hv.evtchn_alloc_unbound(v.backend).map_err(|_| "no port")?;
        let (mut r, mut p) = (heapless::String::<24>::new(), heapless::String::<24>::new());
        let _ = (write!(r, "{RING_REF}"), write!(p, "{}", v.port));
        v.store.publish(&[
            (keys::VBD_RING_REF, &r),
            (keys::VBD_EVENT_CHANNEL, &p),
            (keys::VBD_STATE, "3"),
        ]);
        if !wait(|| matches!(v.backend_state(), Some(state::CONNECTED | state::CLOSED))) {
            return Err("the backend never connected");
        }
        if v.backend_state() != Some(state::CONNECTED) {
            println!("vbd: the backend closed the device: {}", v.error());
            return Err("the backend closed the device");
        }
        Ok(v)
    }

    /// Puts `req` in the next slot (not yet visible to the backend).
    fn put(&mut self, req: &BlkRequest) {
        let at = pv::blk_slot(self.req_prod);
        for (i, w) in req.as_bytes().chunks_exact(8).enumerate() {
            let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            // SAFETY: the slot lies in the ring page (`blk_slot` keeps it there), 8-aligned;
            // dom0 reads the page concurrently, hence volatile word stores.
            unsafe { core::ptr::write_volatile(ring().add(at).cast::<u64>().add(i), w) };
        }
        self.req_prod = self.req_prod.wrapping_add(1);
    }

    /// Makes the slots put so far visible and tells the backend.
    fn push(&self) {
        compiler_fence(Ordering::SeqCst);
        // SAFETY: the header's first word.
        unsafe { core::ptr::write_volatile(ring().cast::<u32>(), self.req_prod) };
        let _ = guest_rt::hv().evtchn_send(self.port);
    }

    fn rsp_prod(&self) -> u32 {
        // SAFETY: the header's second word, which dom0 writes.
        unsafe { core::ptr::read_volatile(ring().cast::<u32>().add(1)) }
    }

    /// Waits for every response outstanding and checks each: `f(response)`; false if the
    /// backend stopped answering.
    fn collect(&mut self, mut f: impl FnMut(&BlkResponse)) -> bool {
        let target = self.req_prod;
        if !wait(|| self.rsp_prod() == target || self.backend_state() != Some(state::CONNECTED)) {
            return false;
        }
        compiler_fence(Ordering::SeqCst);
        while self.rsp_cons != self.rsp_prod() {
            let at = pv::blk_slot(self.rsp_cons);
            let mut r = BlkResponse::new_zeroed();
            for (i, w) in r.as_mut_bytes().chunks_exact_mut(8).enumerate() {
                // SAFETY: as in `put`: a word of the slot, which dom0 may be writing.
                let v = unsafe { core::ptr::read_volatile(ring().add(at).cast::<u64>().add(i)) };
                w.copy_from_slice(&v.to_le_bytes());
            }
            f(&r);
            self.rsp_cons = self.rsp_cons.wrapping_add(1);
        }
        self.rsp_cons == target
    }

    /// One request, waited for: its status (`None`: no answer).
    fn one(&mut self, op: u8, sector: u64, nr: u8, gref: u32) -> Option<i32> {
        let mut req = BlkRequest::new_zeroed();
        (req.id, req.op, req.sector, req.nr_sectors, req.gref) = (0x1d, op, sector, nr, gref);
        self.put(&req);
        self.push();
        let mut status = None;
        let ok = self.collect(|r| status = Some(r.status));
        if ok { status } else { None }
    }

    /// Moves `sectors` from `first` in requests of a page, a ring's worth at a time, filling
    /// (write) or checking (read) `seed`'s pattern; the first bad sector, or the number of
    /// requests that failed.
    fn stream(&mut self, write: bool, first: u64, sectors: u64, seed: u64) -> Result<(), u64> {
        let mut s = first;
        while s < first + sectors {
            let batch = ((first + sectors - s).div_ceil(PER_REQ)).min(u64::from(BLK_RING_SLOTS));
            for i in 0..batch {
                let at = s + i * PER_REQ;
                let nr = PER_REQ.min(first + sectors - at);
                if write {
                    fill(i as usize, at, nr, seed);
                }
                let mut req = BlkRequest::new_zeroed();
                req.id = at;
                req.sector = at;
                req.nr_sectors = nr as u8;
                req.op = if write { pv::BLK_OP_WRITE } else { pv::BLK_OP_READ };
                req.gref = DATA_REF + i as u32;
                self.put(&req);
            }
            self.push();
            let mut failed = 0;
            if !self.collect(|r| failed += u64::from(r.status != pv::BLK_RSP_OKAY)) {
                return Err(u64::MAX);
            }
            if failed > 0 {
                return Err(failed);
            }
            if !write {
                for i in 0..batch {
                    let at = s + i * PER_REQ;
                    let nr = PER_REQ.min(first + sectors - at);
                    if let Some(bad) = check(i as usize, at, nr, seed) {
                        return Err(bad);
                    }
                }
            }
            s += batch * PER_REQ;
        }
        Ok(())
    }
}

/// Fills data page `i` with `nr` sectors of `seed`'s pattern from sector `s`.
fn fill(i: usize, s: u64, nr: u64, seed: u64) {
    for k in 0..nr * 64 {
        // SAFETY: word k of the page (nr ≤ 8 sectors of 64 words).
        unsafe {
            core::ptr::write_volatile(
                data(i).cast::<u64>().add(k as usize),
                pattern(seed, s + k / 64, k % 64),
            )
        };
    }
}

/// The first sector of data page `i` (holding `nr` sectors from `s`) that is not `seed`'s.
fn check(i: usize, s: u64, nr: u64, seed: u64) -> Option<u64> {
    (0..nr * 64)
        // SAFETY: as in `fill`.
        .find(|&k| unsafe { core::ptr::read_volatile(data(i).cast::<u64>().add(k as usize)) } != pattern(seed, s + k / 64, k % 64))
        .map(|k| s + k / 64)
}

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let mut v = match Vbd::connect() {
        Ok(v) => v,
        Err(why) => {
            println!("vbd: not connected: {why}");
            guest_rt::exit(2);
        }
    };
    println!("vbd: connected: {} sectors, ring ref {RING_REF}, port {}", v.sectors, v.port);
    let ok = if let Some(seed) = boot.option("write").and_then(|s| s.parse().ok()) {
        let done =
            v.stream(true, 0, v.sectors, seed).and_then(|()| v.stream(false, 0, v.sectors, seed));
        report(&format_args!("wrote {} sectors with pattern {seed}", v.sectors), done)
    } else if let Some(seed) = boot.option("read").and_then(|s| s.parse().ok()) {
        let done = v.stream(false, 0, v.sectors, seed);
        report(&format_args!("read {} sectors: pattern {seed}", v.sectors), done)
    } else if boot.has_flag("loop") {
        // Until a `q` arrives on COM1 (`hvctl console`), saying how far it got every 4 rounds.
        // SAFETY: COM1 is this domain's (microhv's model); nothing else reads it.
        let com1 = unsafe { rt::uart::Uart::new(rt::uart::COM1) };
        let sectors = 128.min(v.sectors);
        let mut rounds = 0u64;
        let done = loop {
            if com1.try_read_byte() == Some(b'q') {
                break Ok(());
            }
            rounds += 1;
            let r = v
                .stream(true, 0, sectors, rounds)
                .and_then(|()| v.stream(false, 0, sectors, rounds));
            if r.is_err() {
                break r;
            }
            if rounds.is_multiple_of(4) {
                println!("vbd: loop: round {rounds}");
            }
        };
        report(&format_args!("loop: {rounds} rounds of {sectors} sectors"), done)
    } else if boot.has_flag("bench") {
        bench(&mut v)
    } else if boot.has_flag("hostile") {
        hostile(&mut v)
    } else if boot.has_flag("overflow") {
        let mut req = BlkRequest::new_zeroed();
        req.nr_sectors = 1;
        req.gref = DATA_REF;
        for _ in 0..BLK_RING_SLOTS + 8 {
            v.put(&req);
        }
        v.push();
        disconnected(&v)
    } else if boot.has_flag("garbage") {
        // Reconnect with keys that do not parse: dom0 may only refuse them.
        v.store.publish(&[(keys::VBD_STATE, "6")]);
        wait(|| v.backend_state() == Some(state::INIT_WAIT));
        v.store.publish(&[
            (keys::VBD_RING_REF, "99999999999999999999999"),
            (keys::VBD_EVENT_CHANNEL, "-1"),
            (keys::VBD_STATE, "3"),
        ]);
        disconnected(&v)
    } else {
        println!("vbd: nothing to do (write=, read=, loop, bench, hostile, overflow, garbage)");
        true
    };
    guest_rt::exit(if ok { 0 } else { 1 })
}

/// Prints the verdict of a stream: `what ok`, or where it went wrong.
fn report(what: &dyn core::fmt::Display, done: Result<(), u64>) -> bool {
    match done {
        Ok(()) => println!("vbd: {what}: ok"),
        Err(u64::MAX) => println!("vbd: {what}: FAILED: the backend stopped answering"),
        Err(bad) => println!("vbd: {what}: FAILED at sector {bad} (or {bad} requests failed)"),
    }
    done.is_ok()
}

/// Waits for the backend to close the device and prints its reason.
fn disconnected(v: &Vbd) -> bool {
    let closed = wait(|| v.backend_state() == Some(state::CLOSED));
    println!("vbd: disconnected: {} ({})", closed, v.error());
    closed
}

/// The round trip of one request of one sector (instructions under Bochs), then the time of
/// writing and reading the disk a ring at a time.
fn bench(v: &mut Vbd) -> bool {
    const ROUNDS: u64 = 200;
    let start = rdtsc();
    let mut ok = true;
    for i in 0..ROUNDS {
        ok &= v.one(pv::BLK_OP_READ, i % v.sectors, 1, DATA_REF) == Some(pv::BLK_RSP_OKAY);
    }
    let round_trip = (rdtsc() - start) / ROUNDS;
    println!("vbd: bench: round trip of a 1-sector read = {round_trip} ticks");
    let kib = v.sectors / 2;
    let ms = |t: u64| (t / ticks_per_ms()).max(1);
    let t = rdtsc();
    ok &= v.stream(true, 0, v.sectors, 7).is_ok();
    let write = rdtsc() - t;
    let t = rdtsc();
    ok &= v.stream(false, 0, v.sectors, 7).is_ok();
    let read = rdtsc() - t;
    println!(
        "vbd: bench: write {kib} KiB in {write} ticks ({} KiB/s), read in {read} ticks ({} KiB/s)",
        kib * 1000 / ms(write),
        kib * 1000 / ms(read)
    );
    println!("vbd: bench: {}", if ok { "ok" } else { "FAILED" });
    ok
}

/// Requests the backend must refuse, one at a time; then the ring it must keep and a data grant
/// revoked under a request; then a good request.
fn hostile(v: &mut Vbd) -> bool {
    use pv::{
        BLK_OP_FLUSH, BLK_OP_READ, BLK_OP_WRITE, BLK_RSP_EOPNOTSUPP as NOTSUPP,
        BLK_RSP_ERROR as ERR,
    };
    let hv = guest_rt::hv();
    let end = v.sectors;
    let cases: [(&str, u8, u64, u8, u32, i32); 11] = [
        ("unknown op", 7, 0, 1, DATA_REF, NOTSUPP),
        ("op 255", 255, 0, 1, DATA_REF, NOTSUPP),
        ("no sectors", BLK_OP_READ, 0, 0, DATA_REF, ERR),
        ("nine sectors", BLK_OP_READ, 0, 9, DATA_REF, ERR),
        ("past the end", BLK_OP_READ, end, 1, DATA_REF, ERR),
        ("across the end", BLK_OP_WRITE, end - 1, 2, DATA_REF, ERR),
        ("sector 2^64-1", BLK_OP_READ, u64::MAX, 8, DATA_REF, ERR),
        ("ungranted ref", BLK_OP_READ, 0, 1, 60, ERR),
        ("ref out of range", BLK_OP_WRITE, 0, 1, 1 << 20, ERR),
        ("flush with sectors", BLK_OP_FLUSH, 0, 1, DATA_REF, ERR),
        ("flush", BLK_OP_FLUSH, 0, 0, 0, pv::BLK_RSP_OKAY),
    ];
    let (mut passed, mut failed) = (0u32, 0u32);
    let mut expect = |what: &str, got: Option<i32>, want: i32| {
        if got == Some(want) {
            passed += 1;
        } else {
            failed += 1;
            println!("vbd: hostile: {what}: got {got:?}, want {want}");
        }
    };
    for (what, op, sector, nr, gref, want) in cases {
        expect(what, v.one(op, sector, nr, gref), want);
    }
    // The ring stays granted while dom0 maps it.
    let revoke = hv.grant_revoke(RING_REF);
    expect("revoke the mapped ring", Some(i32::from(revoke == Err(abi::Errno::EBUSY))), 1);
    // A read into a data page that is read-only, then one into a page no longer granted.
    let _ = hv.grant_revoke(DATA_REF + 1);
    // SAFETY: DATA page 1 is this guest's; dom0 may now only read it.
    let ro = unsafe { hv.grant_set(DATA_REF + 1, v.backend, data(1) as u64, GRANT_READONLY) };
    expect(
        "read-only grant for a read",
        ro.ok().and_then(|()| v.one(BLK_OP_READ, 0, 1, DATA_REF + 1)),
        ERR,
    );
    let _ = hv.grant_revoke(DATA_REF + 1);
    expect("revoked data grant", v.one(BLK_OP_WRITE, 0, 1, DATA_REF + 1), ERR);
    // Garbage ids come back as they went; and after all this the device still works.
    let mut req = BlkRequest::new_zeroed();
    (req.id, req.op, req.nr_sectors, req.gref) = (u64::MAX, BLK_OP_READ, 1, DATA_REF);
    v.put(&req);
    v.push();
    let mut id = 0;
    let answered = v.collect(|r| id = r.id);
    expect("an id of all ones is echoed", Some(i32::from(answered && id == u64::MAX)), 1);
    // A full ring of random bytes: every slot is answered, with its own id, and whatever a
    // slot happened to ask of this domain's own disk is all it could reach.
    let mut x = rdtsc() | 1;
    let mut ids = [0u64; BLK_RING_SLOTS as usize];
    for id in ids.iter_mut() {
        let mut junk = BlkRequest::new_zeroed();
        for w in junk.as_mut_bytes().chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        *id = junk.id;
        v.put(&junk);
    }
    v.push();
    let mut k = 0;
    let mut in_order = true;
    let answered = v.collect(|r| {
        in_order &= ids.get(k) == Some(&r.id) && (-2..=0).contains(&r.status);
        k += 1;
    });
    let whole = answered && in_order && k == ids.len();
    expect("a ring of random slots, each answered", Some(i32::from(whole)), 1);
    expect("then a good write", v.one(BLK_OP_WRITE, 0, 8, DATA_REF), pv::BLK_RSP_OKAY);
    expect("still connected", v.backend_state().map(|s| s as i32), state::CONNECTED as i32);
    println!("vbd: hostile: {passed} checks passed, {failed} failed");
    failed == 0
}
