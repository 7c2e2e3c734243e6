//! dom0-agent: microhv's privileged domain.
//!
//! It finds microhv through CPUID, refuses an ABI major version it does not know, reports
//! ready on its console, and serves the host tools' control protocol on COM2 (passed through
//! to it). Command-line words steer the boot tests:
//!
//! - `smoke`: power off (status 0) right after reporting ready.
//! - `bench`: measure the null-hypercall and `EvtchnSend` round trips, a grant's map, first
//!   read and unmap, and a 4 KiB grant copy, after reporting ready.
//! - `misbehave=triple-fault` / `misbehave=outside-memory`: misbehave on purpose after
//!   reporting ready, so the tests can check microhv's crash report and clean stop.
//! - `scenario=domus`: run the domU scenarios (`scenario.rs`) with the boot modules, then
//!   power off with status 0 if all passed.
//! - `scenario=smp`: run the `smp` guest (a boot module) with 4 and with 2 vCPUs, then power
//!   off with status 0 if both runs passed.
//!
//! Without any of these, dom0 probes its disk (the primary ATA channel's master, passed through
//! by microhv) and serves the control protocol on COM2 (`serve`) until a `Poweroff` request.
#![no_std]
#![cfg_attr(image, no_main)]

// Without `cfg(image)` (see `rt::build`) this is a hosted stub that only points at the runner.
#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

mod modules;
mod scenario;

use abi::hypercall::MEM_WRITE_MAX;
use abi::proto::{IMAGE_CAPACITY, PROTOCOL_VERSION};
use abi::{ABI_VERSION_MAJOR, ABI_VERSION_MINOR};
use dom0_agent::disk::fs::{Fs, ReadAhead};
use dom0_agent::disk::{Disk, PrimaryChannel};
use dom0_agent::dm;
use dom0_agent::server::{Buffers, Channel, DiskAccess, Poll, Server};
use dom0_agent::vbd::{self, Backend, ConsoleLog, MAX_STORES, MAX_VBDS, Memory, Page};
use guest_rt::{Boot, println, rdtsc};
use rt::uart::{COM2, Uart};

rt::pvh_note!();

/// Null hypercalls timed by `bench`.
const BENCH_CALLS: u64 = 1000;
/// A guest-physical address in no slot of dom0: above its RAM, below the module window.
const OUTSIDE_MEMORY: u64 = 0xb000_0000;
/// How long the serve loop keeps polling COM2 after the last byte before it gives the CPU
/// away, in TSC ticks (Bochs: instructions; a byte at 115200 baud is about 4,500 of them).
/// Polling between the bytes of a request keeps an upload at line speed; yielding when idle
/// lets the domUs run.
const SPIN_TICKS: u64 = 2_000_000;

/// How long dom0 waits on its disk (the drive busy, or not offering data) before it gives up
/// with a timeout, in seconds.
const DISK_TIMEOUT_SECS: u64 = 5;

/// The upload buffer (`IMAGE_CAPACITY`, in .bss).
static mut IMAGE: [u8; IMAGE_CAPACITY] = [0; IMAGE_CAPACITY];
/// What the builder reads files from the disk through: one `MemWrite`'s worth at a time.
static mut DISK_CHUNK: [u8; MEM_WRITE_MAX as usize] = [0; MEM_WRITE_MAX as usize];
/// The server's frame buffers (in .bss rather than on the 64 KiB stack).
static mut BUFFERS: Buffers = Buffers::new();
/// The domains' store pages, one per slot, granted to the domains (`vbd`).
static mut STORE_PAGES: [Page; MAX_STORES] = [const { Page::zeroed() }; MAX_STORES];
/// The domains' PV console pages, one per store, granted to the domains (`vbd`).
static mut CONSOLE_PAGES: [Page; MAX_STORES] = [const { Page::zeroed() }; MAX_STORES];
/// The domains' PV console output until the tools read it (`vbd::console`; in .bss rather
/// than on the stack).
static mut CONSOLE_LOGS: [ConsoleLog; MAX_STORES] = [const { ConsoleLog::new() }; MAX_STORES];

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    let hv = guest_rt::hv();
    println!("dom0-agent {} cmdline {:?}", env!("CARGO_PKG_VERSION"), boot.cmdline);
    let (major, minor) = match hv.abi_version() {
        Ok(v) => v,
        Err(e) => {
            println!("version hypercall failed: {e}");
            guest_rt::exit(2);
        }
    };
    if major != ABI_VERSION_MAJOR || !hv.privileged {
        println!(
            "refusing microhv ABI {major}.{minor} (privileged: {}); this dom0 speaks {}.{}",
            hv.privileged, ABI_VERSION_MAJOR, ABI_VERSION_MINOR
        );
        guest_rt::exit(3);
    }
    println!(
        "microhv ABI {major}.{minor} (dom0 built for {ABI_VERSION_MAJOR}.{ABI_VERSION_MINOR}): ok"
    );

    if !dm::init_wall_clock() {
        println!("the host RTC kept updating; domUs' clocks start at 1970");
    }
    println!("dom0 ready (domid {}, tsc {})", hv.domid, rdtsc());
    if boot.has_flag("bench") {
        bench();
        if boot.module_named("bench").is_some()
            && let Err(e) = scenario::bench(&boot)
        {
            println!("bench: failed: {e}");
        }
    }

    match boot.option("misbehave") {
        Some("triple-fault") => triple_fault(),
        Some("outside-memory") => {
            println!("reading guest-physical {OUTSIDE_MEMORY:#x}, outside dom0's memory");
            // SAFETY: deliberately touches memory dom0 does not own; microhv must stop dom0.
            let v = unsafe { core::ptr::read_volatile(OUTSIDE_MEMORY as *const u64) };
            println!("read {v:#x}: microhv did not stop dom0");
            guest_rt::exit(4);
        }
        Some(other) => println!("unknown misbehave={other}"),
        None => {}
    }
    match boot.option("scenario") {
        Some("domus") => guest_rt::exit(if scenario::run_all(&boot) { 0 } else { 1 }),
        Some("linux") => guest_rt::exit(if scenario::linux(&boot) { 0 } else { 1 }),
        Some("smp") => guest_rt::exit(if scenario::smp(&boot) { 0 } else { 1 }),
        _ => {}
    }
    if boot.has_flag("smoke") {
        guest_rt::exit(0);
    }
    // `cargo xtask run --linux`: a Linux domU to attach to (`hvctl console linux`).
    if boot.has_flag("linux") {
        match scenario::start_linux(&boot) {
            Ok(d) => println!("started Linux as d{d}: hvctl console linux"),
            Err(why) => println!("cannot start Linux: {why}"),
        }
    }
    serve(&boot)
}

/// COM2, dom0's end of the control channel.
struct Com2(Uart);

impl Channel for Com2 {
    fn read_byte(&mut self) -> Option<u8> {
        self.0.try_read_byte()
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.write_bytes(bytes);
    }
}

/// Serves the control protocol on COM2 until a `Poweroff` request, then powers off.
fn serve(boot: &Boot) -> ! {
    let hv = guest_rt::hv();
    // SAFETY: microhv passes COM2 through to dom0, and only this loop drives it.
    let uart = unsafe { Uart::new(COM2) };
    uart.init();
    let modules = modules::all(boot);
    // SAFETY: `serve` runs once and never returns, so these are the only references to the
    // three statics for the rest of dom0's life.
    let (bufs, image, chunk) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(BUFFERS),
            &mut *core::ptr::addr_of_mut!(IMAGE),
            &mut *core::ptr::addr_of_mut!(DISK_CHUNK),
        )
    };
    let disk = probe_disk(bufs.read_ahead());
    let events = (&raw mut EVTCHN_PAGE).cast::<abi::types::EvtchnShared>();
    // SAFETY: EVTCHN_PAGE is dom0's event-channel page from now on (as in `bench`), and only
    // the backend reads it.
    let registered = unsafe { hv.evtchn_set_callback(0, events) };
    if let Err(e) = registered {
        println!("no event-channel page ({e}): no PV consoles or virtual disks");
    }
    let mem = Memory {
        store: &raw mut STORE_PAGES,
        consoles: &raw mut CONSOLE_PAGES,
        logs: &raw mut CONSOLE_LOGS,
        rings: vbd::ring_gpa(0) as *mut [Page; MAX_VBDS],
        events,
    };
    let sectors = disk.as_ref().map(|d| d as &dyn dom0_agent::disk::Sectors);
    // SAFETY: the store and console pages, the console logs and the event-channel page are
    // used by nothing else from now on (`serve` never returns); dom0 is identity-mapped, so
    // the ring window's guest-physical addresses are where it sees the rings it maps there,
    // and the backend only maps there.
    let backend = unsafe { Backend::new(mem, sectors) };
    let mut server = Server::new(&modules, bufs, image, env!("CARGO_PKG_VERSION"));
    // Without the page dom0 would never see an event: no store is handed out rather than
    // devices that are never served.
    if registered.is_ok() {
        server = server.with_vbds(backend);
    }
    if let Some(d) = &disk {
        server = server.with_disk(DiskAccess { sectors: d, identity: d.identity() }, chunk);
    }
    println!(
        "serving the control protocol v{PROTOCOL_VERSION} on COM2 ({} boot module(s), {} KiB image buffer)",
        modules.len(),
        IMAGE_CAPACITY / 1024
    );
    let mut chan = Com2(uart);
    let mut last = rdtsc();
    let (mut round, mut quiet) = (0u32, true);
    loop {
        // The domUs' device accesses and virtual disks are served whenever no byte was
        // waiting, and every 256 rounds while a request streams in (each look at the device
        // models costs a hypercall; a byte comes every ~4,500 TSC ticks). After serving, the
        // CPU goes to the domains that waited.
        round = round.wrapping_add(1);
        if quiet || round % 256 == 0 {
            let models = dm::poll(hv);
            if server.poll_vbds(hv) || models {
                let _ = hv.yield_now();
            }
        }
        let poll = server.poll(hv, &mut chan);
        quiet = poll == Poll::Idle;
        match poll {
            Poll::Poweroff => {
                // Let the response leave the UART before the machine stops.
                uart.flush();
                println!("powering off at the tools' request ({} requests served)", server.served);
                guest_rt::exit(0);
            }
            Poll::Busy => last = rdtsc(),
            Poll::Idle => {
                if rdtsc().wrapping_sub(last) > SPIN_TICKS {
                    dm::idle(hv);
                }
            }
        }
    }
}

/// Finds dom0's disk and says what it found: the drive and its file system, or why there is
/// none (dom0 then serves everything else as before).
fn probe_disk(ahead: &mut ReadAhead) -> Option<Disk<PrimaryChannel>> {
    let khz = dm::tsc_khz();
    // Without a rate from microhv, a guess of 3 GHz: the bound only has to end a wait.
    let timeout = DISK_TIMEOUT_SECS * 1000 * if khz == 0 { 3_000_000 } else { khz };
    // SAFETY: microhv passes the primary ATA channel through to dom0, and this is the only
    // driver of it.
    match Disk::probe(unsafe { PrimaryChannel::new() }, timeout) {
        Ok(d) => {
            let id = d.identity();
            let mut fs: heapless::String<128> = heapless::String::new();
            match Fs::open(&d, ahead) {
                Ok(f) => f.describe(&mut fs),
                Err(e) => {
                    let _ = core::fmt::write(&mut fs, format_args!("no file system: {e}"));
                }
            }
            println!(
                "disk: ata0 master {:?}, {} sectors ({} MiB){}; {fs}",
                id.model.as_str(),
                id.sectors,
                id.sectors / 2048,
                if id.lba48 { ", LBA48" } else { "" }
            );
            Some(d)
        }
        Err(why) => {
            println!("disk: none on the primary ATA channel: {why}");
            None
        }
    }
}

/// Times `BENCH_CALLS` null (`version`) hypercalls with the TSC.
fn bench() {
    let hv = guest_rt::hv();
    let start = rdtsc();
    for _ in 0..BENCH_CALLS {
        let _ = hv.abi_version();
    }
    let ticks = rdtsc() - start;
    println!("bench: null hypercall round trip = {}", ticks / BENCH_CALLS);
    // An event on a loopback pair that is new each time (dom0 clears the pending bit, as a
    // handler would): the port lookup and the page's pending and mask words; dom0 polls, so
    // no upcall is raised.
    let page = (&raw mut EVTCHN_PAGE).cast::<abi::types::EvtchnShared>();
    // SAFETY: EVTCHN_PAGE is dom0's event-channel page from now on, used for nothing else.
    let pair = unsafe { hv.evtchn_set_callback(0, page) }
        .and_then(|()| hv.evtchn_alloc_unbound(0))
        .and_then(|a| Ok((a, hv.evtchn_bind_interdomain(0, a)?)));
    let Ok((a, b)) = pair else {
        println!("bench: failed: no loopback event channel: {pair:?}");
        return;
    };
    let start = rdtsc();
    for _ in 0..BENCH_CALLS {
        let _ = hv.evtchn_send(b);
        // SAFETY: a word of the page microhv writes only during the hypercall.
        unsafe { core::ptr::write_volatile(&raw mut (*page).pending[0], 0) };
    }
    let ticks = rdtsc() - start;
    println!("bench: evtchn send round trip = {}", ticks / BENCH_CALLS);
    let _ = (hv.evtchn_close(a), hv.evtchn_close(b));
    bench_grants(hv);
}

/// A grant of one of dom0's pages to itself: `GrantMap`, the first read through the mapping
/// (a demand fault of the new slot), `GrantUnmap` (whose TLB flush comes at the next entry);
/// and `GrantCopyFrom` of the whole page.
fn bench_grants(hv: &abi::guest::Hypervisor) {
    let (page, copy) = ((&raw const GRANT_PAGES) as u64, (&raw mut GRANT_PAGES).cast::<u8>());
    let at = abi::hypercall::GRANT_WINDOW_GPA;
    // SAFETY: GRANT_PAGES[0] is granted to dom0 itself, and nothing else uses it.
    if let Err(e) = unsafe { hv.grant_set(0, 0, page, 0) } {
        println!("bench: failed: no grant: {e:?}");
        return;
    }
    let start = rdtsc();
    for _ in 0..BENCH_CALLS {
        if hv.grant_map(0, 0, at, 0).is_err() {
            println!("bench: failed: grant map refused");
            return;
        }
        // SAFETY: mapped just now.
        let _ = unsafe { core::ptr::read_volatile(at as *const u8) };
        let _ = hv.grant_unmap(at);
    }
    let ticks = rdtsc() - start;
    println!("bench: grant map, first read, unmap = {}", ticks / BENCH_CALLS);
    // SAFETY: the second page, which only this copy writes.
    let dst = unsafe { core::slice::from_raw_parts_mut(copy.add(4096), 4096) };
    let start = rdtsc();
    for _ in 0..BENCH_CALLS {
        let _ = hv.grant_copy_from(0, 0, 0, dst);
    }
    let ticks = rdtsc() - start;
    println!("bench: grant copy 4 KiB = {}", ticks / BENCH_CALLS);
    let _ = hv.grant_revoke(0);
}

/// A page dom0 grants itself and the destination of the copies (`bench`).
#[repr(C, align(4096))]
struct GrantPages([u8; 8192]);
static mut GRANT_PAGES: GrantPages = GrantPages([0; 8192]);

/// dom0's event-channel page (`bench`; then the virtual disks' events, `serve`).
#[repr(C, align(4096))]
struct EvtchnPage([u8; 4096]);
static mut EVTCHN_PAGE: EvtchnPage = EvtchnPage([0; 4096]);

/// Loads an empty IDT and raises an exception: #BP cannot be delivered, nor the #DF that
/// follows, so the vCPU triple-faults.
fn triple_fault() -> ! {
    println!("triple-faulting on purpose");
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }
    let idtr = Idtr { limit: 0, base: 0 };
    // SAFETY: deliberately destroys this domain; nothing after it is expected to run.
    unsafe { core::arch::asm!("lidt [{}]", "int3", in(reg) &idtr) };
    guest_rt::exit(5);
}
