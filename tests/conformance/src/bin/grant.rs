//! The grant-table domU, run by `conform-dom0` in several roles.
//!
//! - `role=offer`: grants dom0 a writable page holding [`OFFER`] (`grant: offered ref 0` on its
//!   console) and sleeps; dom0 maps it, then destroys this domain while the mapping lives.
//! - `role=ro-write ref=R`: maps dom0's read-only grant `R`, checks it holds [`READ_ONLY`]
//!   (`grant: read ok`), then writes through the mapping: microhv must stop it (crashed,
//!   access outside its memory). Surviving the write is reported and fails.
//! - `role=share peer=B` and `role=map`: end to end between two domUs. The sharer grants B a
//!   writable page holding [`SHARED`] (ref 0) and a read-only one (ref 1); the mapper finds the
//!   sharer by trying ref 0 of every other domain (each refusal must be `EPERM`, `EINVAL` or
//!   `ESRCH`), reads the page through its mapping and by copy, is refused a copy into the
//!   read-only grant and a second mapping, writes [`REPLY_MAP`] through the mapping and
//!   [`REPLY_COPY`] by copy, and unmaps; the sharer must see both replies in its page, then
//!   revokes. Each prints its verdict (`conformance grant-share|grant-map: ...`) and shuts down
//!   with its failure count.
//! - `role=storm [peer=D] calls=N seed=S`: one of two domUs storming each other. Each grants its
//!   peer page 0 (ref 0, holding its domid) and maps the peer's ref 0 at window page 0 for good;
//!   then N random grant operations (sets, revokes, maps, unmaps, copies and queries with valid
//!   and hostile arguments, reads of the pages it maps), each result a success or an error the
//!   operation documents. It ends holding its mappings (dom0 then destroys both while mapped),
//!   prints `grant-storm: ...` and shuts down with status 0 if every result was documented, the
//!   peer's page still read right and its table was empty when it started, 1 otherwise.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::Errno::{self, *};
use abi::hypercall::{DOMID_INVALID, GRANT_ENTRIES, GRANT_READONLY, MAX_DOMAINS};
use abi::types::GRANT_STATE_FREE;
use conformance::grant::{self, OFFER, Pages, READ_ONLY, window};
use conformance::{Rng, Suite, poll};
use guest_rt::println;

rt::pvh_note!();

/// What the sharer's writable grant holds.
pub const SHARED: &[u8] = b"shared by a domU";
/// What the sharer's read-only grant holds.
const SHARED_RO: &[u8] = b"read-only, from a domU";
/// What the mapper writes through its mapping, at [`REPLY_AT`].
const REPLY_MAP: &[u8] = b"written through the mapping";
/// What the mapper copies in, at [`COPY_AT`].
const REPLY_COPY: &[u8] = b"copied in by GrantCopyTo";
const REPLY_AT: u64 = 2048;
const COPY_AT: u64 = 3072;

/// The pages this guest grants (volatile access only: a peer may write them).
static mut PAGES: Pages<8> = Pages::new();
/// Where the storm's copies and queries write (never its code, stack or pages).
static mut SINK: Pages<1> = Pages::new();

fn page(i: u64) -> u64 {
    (&raw const PAGES) as u64 + i * 4096
}

fn sleep_for_good() -> ! {
    loop {
        // SAFETY: with interrupts off HLT sleeps until the domain is destroyed.
        unsafe { core::arch::asm!("cli", "hlt") };
    }
}

fn offer() -> ! {
    let hv = guest_rt::hv();
    // SAFETY: page 0 is this guest's pool page, not yet granted.
    unsafe { grant::write(page(0), OFFER) };
    // SAFETY: the page is only ever accessed volatilely.
    match unsafe { hv.grant_set(0, 0, page(0), 0) } {
        Ok(()) => println!("grant: offered ref 0"),
        Err(e) => println!("grant: offer refused: {e:?}"),
    }
    sleep_for_good()
}

fn ro_write(r: u32) -> u32 {
    let hv = guest_rt::hv();
    if let Err(e) = hv.grant_map(0, r, window(0), GRANT_READONLY) {
        println!("grant: map refused: {e:?}");
        return 1;
    }
    // SAFETY: mapped just now.
    if unsafe { grant::holds(window(0), READ_ONLY) } {
        println!("grant: read ok");
    } else {
        println!("grant: the mapping does not hold dom0's page");
    }
    println!("grant: writing");
    // SAFETY: deliberately a write through a read-only mapping; microhv must stop the guest.
    unsafe { grant::write(window(0) + 8, b"X") };
    println!("grant: the write went through");
    1
}

fn share(peer: u32) -> u32 {
    let hv = guest_rt::hv();
    let mut s = Suite::new("grant-share");
    // SAFETY: pool pages, not granted yet.
    unsafe { (grant::write(page(0), SHARED), grant::write(page(1), SHARED_RO)) };
    // Ref 1 first: the peer maps ref 1 once it found ref 0.
    // SAFETY: the pages are only ever accessed volatilely.
    let set = unsafe { (hv.grant_set(1, peer, page(1), 1), hv.grant_set(0, peer, page(0), 0)) };
    s.check("set-for-the-peer", set == (Ok(()), Ok(())), format_args!("{set:?}"));
    println!("grant: shared");
    // SAFETY: our own pages.
    let replied = poll(20_000, || unsafe {
        grant::holds(page(0) + REPLY_AT, REPLY_MAP) && grant::holds(page(0) + COPY_AT, REPLY_COPY)
    });
    // SAFETY: as above.
    let (m, c) = unsafe {
        (grant::holds(page(0) + REPLY_AT, REPLY_MAP), grant::holds(page(0) + COPY_AT, REPLY_COPY))
    };
    s.check("peer-wrote-through-its-mapping", m, format_args!("replied {replied}"));
    s.check("peer-copied-into-the-page", c, format_args!("replied {replied}"));
    let unmapped = poll(20_000, || hv.grant_query(0).is_ok_and(|st| st.mapped == 0));
    s.check("peer-unmapped", unmapped, format_args!("{:?}", hv.grant_query(0)));
    s.check("revoke", hv.grant_revoke(0).is_ok(), format_args!("refused"));
    s.check("revoke-read-only", hv.grant_revoke(1).is_ok(), format_args!("refused"));
    s.check(
        "entry-free-after-revoke",
        hv.grant_query(0).is_ok_and(|st| st.state == GRANT_STATE_FREE),
        format_args!("{:?}", hv.grant_query(0)),
    );
    s.verdict();
    s.failed
}

/// Finds the domain that granted this one its ref 0 by mapping it at `at`; every refusal on
/// the way must be one the ABI gives for someone else's table.
fn find_granter(at: u64, undefined: &mut u64) -> Option<u32> {
    let hv = guest_rt::hv();
    let mut found = None;
    poll(20_000, || {
        for d in (1..MAX_DOMAINS).filter(|&d| d != hv.domid) {
            match hv.grant_map(d, 0, at, 0) {
                Ok(()) => found = Some(d),
                Err(EPERM | EINVAL | ESRCH) => continue,
                Err(_) => *undefined += 1,
            }
            return true;
        }
        false
    });
    found
}

fn map() -> u32 {
    let hv = guest_rt::hv();
    let mut s = Suite::new("grant-map");
    let mut undefined = 0;
    let Some(a) = find_granter(window(0), &mut undefined) else {
        s.check("found-the-sharer", false, format_args!("{undefined} undefined refusals"));
        s.verdict();
        return s.failed;
    };
    s.check("found-the-sharer", undefined == 0, format_args!("{undefined} undefined refusals"));
    // SAFETY: mapped by `find_granter`.
    let seen = unsafe { grant::holds(window(0), SHARED) };
    s.check("read-through-the-mapping", seen, format_args!("pattern missing"));
    let mut buf = [0u8; 16];
    let r = hv.grant_copy_from(a, 0, 0, &mut buf);
    s.check("copy-from-the-grant", r == Ok(16) && buf == SHARED[..16], format_args!("{r:?}"));
    let r = hv.grant_map(a, 1, window(1), 0);
    s.check("map-the-read-only-grant-writable", r == Err(EPERM), format_args!("{r:?}"));
    let r = hv.grant_map(a, 1, window(1), GRANT_READONLY);
    s.check("map-the-read-only-grant", r.is_ok(), format_args!("{r:?}"));
    // SAFETY: mapped just now (read only).
    let seen = r.is_ok() && unsafe { grant::holds(window(1), SHARED_RO) };
    s.check("read-the-read-only-grant", seen, format_args!("pattern missing"));
    let r = hv.grant_copy_to(a, 1, 0, b"no");
    s.check("copy-to-a-read-only-grant", r == Err(EPERM), format_args!("{r:?}"));
    let r = hv.grant_map(a, 0, window(2), 0);
    s.check("map-twice", r == Err(EEXIST), format_args!("{r:?}"));
    let r = hv.grant_revoke(0);
    s.check("revoke-what-is-not-mine", r == Err(EINVAL), format_args!("{r:?}"));
    // SAFETY: a writable mapping of the sharer's page, outside this guest's RAM.
    unsafe { grant::write(window(0) + REPLY_AT, REPLY_MAP) };
    let r = hv.grant_copy_to(a, 0, COPY_AT, REPLY_COPY);
    s.check("copy-to-the-grant", r == Ok(REPLY_COPY.len() as u64), format_args!("{r:?}"));
    // Ref 1's mapping first: the sharer revokes both once ref 0 is unmapped.
    for (case, at) in [("unmap-read-only", window(1)), ("unmap", window(0))] {
        let r = hv.grant_unmap(at);
        s.check(case, r.is_ok(), format_args!("{r:?}"));
    }
    let r = hv.grant_unmap(window(0));
    s.check("unmap-twice", r == Err(EINVAL), format_args!("{r:?}"));
    s.verdict();
    s.failed
}

/// Whether `e` is an error `op` documents.
fn documented(op: u64, e: Errno) -> bool {
    use abi::Op::*;
    let allowed: &[Errno] = match op {
        o if o == GrantSet as u64 => &[ESRCH, EINVAL, EFAULT, EEXIST],
        o if o == GrantRevoke as u64 => &[EINVAL, EBUSY],
        o if o == GrantMap as u64 => &[ESRCH, EINVAL, EPERM, EEXIST, EFAULT, ENOSPC, ENOMEM],
        o if o == GrantUnmap as u64 => &[EINVAL],
        o if o == GrantCopyFrom as u64 || o == GrantCopyTo as u64 => {
            &[ESRCH, EINVAL, E2BIG, EPERM, EFAULT]
        }
        _ => &[EINVAL, EFAULT],
    };
    allowed.contains(&e)
}

fn storm(peer: Option<u32>, calls: u64, seed: u64) -> u32 {
    use abi::Op::*;
    let hv = guest_rt::hv();
    let me = hv.domid;
    // A domain that reuses an id starts with nothing of its predecessor's.
    let fresh = (0..GRANT_ENTRIES).all(|r| hv.grant_query(r).is_ok_and(|st| st.state == 0));
    let mut undefined = 0u64;
    let marker = [me as u8; 16];
    // SAFETY: pool page 0, granted only below.
    unsafe { grant::write(page(0), &marker) };
    // Both sides grant first, then map: the finder maps what the other granted it.
    let peer = match peer {
        Some(p) => {
            // SAFETY: the pool pages are only ever accessed volatilely.
            let _ = unsafe { hv.grant_set(0, p, page(0), 0) };
            poll(20_000, || hv.grant_map(p, 0, window(0), 0).is_ok()).then_some(p)
        }
        None => find_granter(window(0), &mut undefined).inspect(|&p| {
            // SAFETY: as above.
            let _ = unsafe { hv.grant_set(0, p, page(0), 0) };
        }),
    };
    let Some(peer) = peer else {
        println!("grant-storm: no peer ({undefined} undefined refusals)");
        return 1;
    };
    let mut rng = Rng::new(seed);
    let mut mapped = [false; 16];
    mapped[0] = true;
    let local = (&raw const SINK) as u64;
    let (mut ok, mut maps, mut copies, mut reads) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..calls {
        // Mostly the peer and a few references, so that many maps and copies succeed; itself,
        // dom0, domains that do not exist and references out of range now and then.
        let r = 1 + rng.below(4);
        let r = if rng.below(16) == 0 { [64, u64::MAX][rng.below(2) as usize] } else { r };
        let granter = match rng.below(8) {
            0..4 => u64::from(peer),
            4 | 5 => u64::from(me),
            6 => 0,
            _ => [99, DOMID_INVALID.into()][rng.below(2) as usize],
        };
        let w = 1 + rng.below(8);
        // Pool page 0 is granted to the peer as ref 0 only: its marker must stay as it is.
        let gpa = match rng.below(10) {
            0 => page(1 + rng.below(7)),
            1 => window(w) + 8,
            2 => window(4096),
            3 => 0x10_0000,
            _ => window(w),
        };
        let flags = [0, 0, GRANT_READONLY, 2][rng.below(4) as usize];
        let len = if rng.below(4) == 0 { rng.below(4200) } else { rng.below(64) };
        let (op, a) = match rng.below(7) {
            0 => {
                // Its pool pages, or pages it may not grant; never its code or stack, which
                // the peer could then write.
                let bad = [window(w), page(1) + 8, 0xfee0_0000, !0xfff][rng.below(4) as usize];
                let page = if rng.below(4) == 0 { bad } else { page(1 + rng.below(7)) };
                (GrantSet, [r, granter, page, flags, 0])
            }
            1 => (GrantRevoke, [r, 0, 0, 0, 0]),
            2 => (GrantMap, [granter, r, gpa, flags, 0]),
            3 => (GrantUnmap, [gpa, 0, 0, 0, 0]),
            4 => (GrantCopyFrom, [granter, r, rng.below(4100), local, len]),
            5 => {
                let src = [local, window(0), gpa][rng.below(3) as usize];
                (GrantCopyTo, [granter, r, rng.below(4100), src, len])
            }
            _ => (GrantQuery, [r, local + 8 * rng.below(4), 0, 0, 0]),
        };
        let ret = conformance::call(op as u64, a);
        match abi::guest::decode_ret(ret) {
            Ok(_) => {
                ok += 1;
                if op == GrantMap {
                    maps += 1;
                    mapped[((a[2] - window(0)) / 4096) as usize] = true;
                } else if op == GrantUnmap {
                    mapped[((a[0] - window(0)) / 4096) as usize] = false;
                } else if op == GrantCopyFrom || op == GrantCopyTo {
                    copies += 1;
                }
            }
            Err(e) if Errno::from_code(-ret).is_some() && documented(op as u64, e) => {}
            Err(_) => {
                undefined += 1;
                println!("grant-storm: {op:?} {a:x?} -> {ret}");
            }
        }
        // Read a page it maps now and then (touching one it does not map would stop it).
        if i % 8 == 0 {
            let p = rng.below(16);
            if mapped[p as usize] {
                let mut b = [0u8; 8];
                // SAFETY: window page `p` is mapped (tracked from the results above).
                unsafe { grant::read(window(p) + rng.below(4088), &mut b) };
                reads += 1;
            }
        }
        if i % 64 == 63 {
            let _ = hv.yield_now();
        }
    }
    // SAFETY: window page 0 maps the peer's ref 0 for good (never unmapped above: the
    // random unmaps aim at pages 1..16 or at addresses that are none).
    let peer_ok = unsafe { grant::holds(window(0), &[peer as u8; 16]) };
    let holding = mapped.iter().filter(|&&m| m).count();
    println!(
        "grant-storm: d{me} with d{peer}: {calls} calls, {ok} succeeded ({maps} maps, {copies} copies), {reads} reads, {undefined} undefined, holding {holding} mappings, fresh table {fresh}, peer's page {}",
        if peer_ok { "intact" } else { "WRONG" }
    );
    u32::from(undefined != 0 || !peer_ok || !fresh)
}

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let num = |key| boot.option(key).and_then(|v| v.parse::<u64>().ok());
    let status = match boot.option("role") {
        Some("offer") => offer(),
        Some("ro-write") => ro_write(num("ref").unwrap_or(0) as u32),
        Some("share") => share(num("peer").unwrap_or(0) as u32),
        Some("map") => map(),
        Some("storm") => {
            let seed = num("seed").unwrap_or(1);
            storm(num("peer").map(|p| p as u32), num("calls").unwrap_or(2000), seed)
        }
        other => {
            println!("grant: unknown role {other:?}");
            1
        }
    };
    guest_rt::exit(status)
}
