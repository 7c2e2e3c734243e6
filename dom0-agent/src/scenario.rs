//! Boot-test scenarios dom0 drives itself (`scenario=domus` on its command line): domUs built
//! from the boot modules, run, observed through the ABI and destroyed. Each scenario prints
//! `scenario NAME: PASS` or `scenario NAME: FAIL: why`; the boot test reads those lines.

use abi::Errno;
use abi::hypercall::CONSOLE_READ_MAX;
use abi::types::{CrashReason, DOMCREATE_SMALL_PAGES, DomainInfo, DomainState};
use dom0_agent::builder::{self, DomainSpec};
use dom0_agent::dm;
use dom0_agent::memory::free_bytes;
use guest_rt::{Boot, println, rdtsc};
use zerocopy::FromZeros;

/// How long a scenario waits for a domain, in TSC ticks (Bochs: instructions, ~66 M/s, so
/// about 5 minutes; QEMU: wall-clock ticks, some seconds).
const TIMEOUT: u64 = 20_000_000_000;
/// Bytes of console output kept per domain.
const CONSOLE_KEEP: usize = 8192;

type Console = heapless::Vec<u8, CONSOLE_KEEP>;

fn info(domid: u32) -> Result<DomainInfo, Errno> {
    guest_rt::hv().domain_info(domid)
}

/// Destroys every domU left by a scenario that failed half-way.
fn destroy_leftovers() {
    let hv = guest_rt::hv();
    let mut all = [DomainInfo::new_zeroed(); abi::hypercall::MAX_DOMAINS as usize];
    if let Ok(n) = hv.domain_list(&mut all) {
        let listed = &all[..(n as usize).min(all.len())];
        for i in listed.iter().filter(|i| i.domid != 0) {
            println!("  destroying leftover d{} ({})", i.domid, i.name_str());
            let _ = hv.domain_destroy(i.domid);
        }
    }
}

/// Appends what is waiting in `domid`'s console ring to `out`.
fn drain(domid: u32, out: &mut Console) {
    let mut buf = [0u8; CONSOLE_READ_MAX as usize];
    while let Ok(n @ 1..) = guest_rt::hv().console_read(domid, &mut buf) {
        for &b in &buf[..n as usize] {
            if out.push(b).is_err() {
                return;
            }
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Yields until `done(info, console)` holds for `domid`, or the timeout.
fn wait(
    domid: u32,
    con: &mut Console,
    mut done: impl FnMut(&DomainInfo, &Console) -> bool,
) -> Result<DomainInfo, &'static str> {
    // A guard against a hang, not a budget: it restarts whenever the domain prints.
    let mut start = rdtsc();
    loop {
        let before = con.len();
        drain(domid, con);
        if con.len() != before {
            start = rdtsc();
        }
        let i = info(domid).map_err(|_| "domain vanished")?;
        if done(&i, con) {
            // The domain may have written its last lines after the drain above (dom0's slice
            // can end between the two hypercalls).
            drain(domid, con);
            return Ok(i);
        }
        if rdtsc().saturating_sub(start) > TIMEOUT {
            return Err("timed out");
        }
        dm::idle(guest_rt::hv());
    }
}

fn stopped(i: &DomainInfo, _: &Console) -> bool {
    matches!(DomainState::from_u32(i.state), Some(DomainState::Shutdown | DomainState::Crashed))
}

fn spec<'a>(name: &'a str, mib: u64, cmdline: &'a str) -> DomainSpec<'a> {
    DomainSpec {
        name,
        mem_bytes: mib << 20,
        vcpus: 1,
        mmu_pages: 0,
        flags: 0,
        cmdline,
        modules: &[],
    }
}

/// Builds and unpauses a domain from boot module `module_name`.
fn start(boot: &Boot, module_name: &str, s: &DomainSpec<'_>) -> Result<u32, &'static str> {
    let (image, _) = boot.module_named(module_name).ok_or("boot module missing")?;
    let hv = guest_rt::hv();
    let domid = builder::build(hv, s, image).map_err(|e| {
        println!("  build {}: {e}", s.name);
        "build failed"
    })?;
    hv.domain_unpause(domid).map_err(|_| "unpause failed")?;
    Ok(domid)
}

fn destroy(domid: u32) -> Result<(), &'static str> {
    guest_rt::hv().domain_destroy(domid).map_err(|_| "destroy failed")
}

fn hello(boot: &Boot) -> Result<(), &'static str> {
    let mut con = Console::new();
    let d = start(boot, "hello", &spec("hello", 4, "status=3"))?;
    let i = wait(d, &mut con, stopped)?;
    destroy(d)?;
    if i.state != DomainState::Shutdown as u32 || i.shutdown_status != 3 {
        return Err("hello did not shut down with status 3");
    }
    if !contains(&con, "hello from domU") {
        return Err("hello's greeting is not in its console ring");
    }
    println!(
        "  hello: status {}, {} exits, {} EPT violations",
        i.shutdown_status, i.exits, i.ept_faults
    );
    Ok(())
}

fn two_domus(boot: &Boot) -> Result<(), &'static str> {
    let hv = guest_rt::hv();
    let p = hv.phys_info().map_err(|_| "physinfo")?;
    let slice = u64::from(p.time_slice);
    let a = start(boot, "spinner", &spec("spin-a", 4, ""))?;
    // B executes CPUID in its loop: exits its backend completes itself, which must not let it
    // keep the CPU past its slice.
    let b = start(boot, "spinner", &spec("spin-b", 4, "cpuid=1"))?;
    // The spinners never return to the core on their own: only the time slice (or a device
    // deadline) interrupts them. dom0 keeps working meanwhile, one hypercall and one yield per round; the
    // longest gap between two rounds is how long dom0 waited for the CPU — in TSC ticks (a
    // figure: under QEMU it is wall time, so it depends on the host's load), and in the
    // spinners' time-slice exits between two rounds (the check: it counts slices, whatever
    // the load).
    let (mut worst, mut worst_exits, mut rounds) = (0, 0, 0u64);
    let mut last = rdtsc();
    let mut last_exits = None;
    let start = last;
    let (ia, ib) = loop {
        let (ia, ib) = (info(a).map_err(|_| "info")?, info(b).map_err(|_| "info")?);
        let now = rdtsc();
        // dom0's vCPU may move to a CPU whose TSC is a little behind.
        worst = worst.max(now.saturating_sub(last));
        last = now;
        // Counted once both have started (their first slices include their start-up exits).
        // Only time-slice exits count: each one hands the CPU on (other exits, such as a
        // stale host-timer interrupt, do not end a slice).
        let timer = |d: u32| {
            hv.stats(d).map_or(0, |s| s.exits_by_reason[abi::types::ExitReason::Timer as usize])
        };
        let exits = timer(a) + timer(b);
        if let Some(prev) = last_exits {
            worst_exits = worst_exits.max(exits - prev);
        }
        if ia.cpu_time > slice && ib.cpu_time > slice {
            last_exits = Some(exits);
        }
        rounds += 1;
        // Each spinner has had several slices.
        if ia.cpu_time > 3 * slice && ib.cpu_time > 3 * slice {
            break (ia, ib);
        }
        if now.saturating_sub(start) > TIMEOUT {
            return Err("the spinners did not both get CPU time");
        }
        dm::idle(hv);
    };
    let running = |i: &DomainInfo| i.state == DomainState::Running as u32;
    let both_running = running(&ia) && running(&ib);
    println!(
        "  two spinners running; dom0 served {rounds} rounds, longest wait {worst} ticks ({worst_exits} spinner slice ends); cpu time {} / {} ticks",
        ia.cpu_time, ib.cpu_time
    );
    destroy(a)?;
    destroy(b)?;
    if !both_running {
        return Err("both spinners should still be running");
    }
    // dom0 waits for the two other vCPUs' slices, never for ever: at most one slice each
    // (each may also exit once more for a device deadline inside its slice). That is the
    // scheduler's fairness on one shared CPU; with several, the spinners' slices on other CPUs
    // go on while dom0 waits for its own, and `crowd` checks progress instead.
    if p.cpus == 1 && worst_exits > 4 {
        return Err("dom0 waited for more than the two other vCPUs' slices");
    }
    Ok(())
}

/// The most spinners [`crowd`] starts.
const CROWD_MAX: usize = 9;

/// More runnable vCPUs than CPUs (#14): one spinner more than microhv has CPUs, next to dom0,
/// which keeps working meanwhile. Every spinner must get several time slices of CPU time (the
/// guard is only against a hang) and still be running.
fn crowd(boot: &Boot) -> Result<(), &'static str> {
    let hv = guest_rt::hv();
    let p = hv.phys_info().map_err(|_| "physinfo")?;
    let slice = u64::from(p.time_slice);
    let n = (p.cpus as usize + 1).clamp(2, CROWD_MAX);
    let mut doms: heapless::Vec<u32, CROWD_MAX> = heapless::Vec::new();
    for i in 0..n {
        let mut name: heapless::String<16> = heapless::String::new();
        let _ = core::fmt::write(&mut name, format_args!("crowd-{i}"));
        // A failure leaves the ones started to `destroy_leftovers`.
        let _ = doms.push(start(boot, "spinner", &spec(&name, 4, ""))?);
    }
    let (start, mut rounds) = (rdtsc(), 0u64);
    let times = loop {
        rounds += 1;
        let mut times: heapless::Vec<u64, CROWD_MAX> = heapless::Vec::new();
        for &d in &doms {
            let _ = times.push(hv.stats(d).map_err(|_| "a spinner vanished")?.cpu_time);
        }
        if times.iter().all(|&t| t > 3 * slice) {
            break times;
        }
        if rdtsc().saturating_sub(start) > TIMEOUT {
            println!("  crowd: cpu time {times:?} ticks after {rounds} rounds");
            return Err("a spinner got no more than 3 slices of CPU time");
        }
        dm::idle(hv);
    };
    let running =
        doms.iter().all(|&d| info(d).is_ok_and(|i| i.state == DomainState::Running as u32));
    for &d in &doms {
        destroy(d)?;
    }
    println!(
        "  crowd: {n} spinners on {} CPU(s) next to dom0: cpu time {times:?} ticks; dom0 served {rounds} rounds",
        p.cpus
    );
    if running { Ok(()) } else { Err("every spinner should still be running") }
}

fn toucher(boot: &Boot) -> Result<(), &'static str> {
    let hv = guest_rt::hv();
    let floor = hv.phys_info().map_err(|_| "physinfo")?.mmu_pages_floor;
    // 40 MiB of 4 KiB mappings need 20 leaf tables: more than the floor allows at once.
    let mut s = spec("toucher", 48, "mib=40 passes=4");
    s.mmu_pages = floor;
    s.flags = DOMCREATE_SMALL_PAGES;
    let d = start(boot, "toucher", &s)?;
    let mut con = Console::new();
    wait(d, &mut con, |i, c| stopped(i, c) || contains(c, "pass 2 ok"))?;
    let low = hv.stats(d).map_err(|_| "stats")?;
    hv.mmu_pages_set(d, 4096).map_err(|_| "raising the limit failed")?;
    let i = wait(d, &mut con, stopped)?;
    let end = hv.stats(d).map_err(|_| "stats")?;
    destroy(d)?;
    println!(
        "  toucher at {} MMU pages (floor {floor}): {} faults fixed, {} reclaims, {} pages zapped; after raising to {}: {} reclaims",
        low.mmu_max,
        low.faults_fixed,
        low.mmu_reclaims,
        low.mmu_pages_zapped,
        end.mmu_max,
        end.mmu_reclaims - low.mmu_reclaims
    );
    if i.state != DomainState::Shutdown as u32 || i.shutdown_status != 0 {
        return Err("the toucher's verification failed");
    }
    if !contains(&con, "verified 40 MiB x 4 passes") {
        return Err("the toucher did not report its verification");
    }
    if low.mmu_reclaims == 0 || end.mmu_max != 4096 {
        return Err("no reclaim under the floor, or the raised limit is not in force");
    }
    Ok(())
}

/// CPU time (TSC ticks in the guest) domain `d` has had.
fn hv_cpu_time(d: u32) -> u64 {
    guest_rt::hv().stats(d).map_or(0, |s| s.cpu_time)
}

fn hostile(boot: &Boot) -> Result<(), &'static str> {
    // A bystander keeps spinning through every attack.
    let by = start(boot, "spinner", &spec("bystander", 4, ""))?;
    // Host addresses for the exit-window attack (from microhv's symbols, via the runner).
    let window = boot.option("hv-window").unwrap_or("0");
    let tss = boot.option("hv-tss").unwrap_or("0");
    let attacks: [(&str, Option<CrashReason>); 13] = [
        ("read-other", None),
        ("write-outside", None),
        ("fetch-outside", Some(CrashReason::UnsupportedMmio)),
        ("dom0-ops", None),
        ("com2", None),
        ("msr", None),
        ("debug-window", None),
        ("noncanonical", None),
        ("apic-walk", Some(CrashReason::UnsupportedMmio)),
        ("invd-rdpmc", None),
        ("console-flood", None),
        ("boost-hog", None),
        ("triple-fault", Some(CrashReason::TripleFault)),
    ];
    let mut failed = false;
    // Bochs's AMD models panic on a guest triple fault instead of taking the shutdown
    // intercept: the runner says when to leave that one out.
    let skip_triple = boot.has_flag("no-triple-fault");
    for (attack, crash) in
        attacks.into_iter().filter(|(a, _)| !(skip_triple && *a == "triple-fault"))
    {
        let mut cmd: heapless::String<128> = heapless::String::new();
        let _ =
            core::fmt::write(&mut cmd, format_args!("attack={attack} window={window} tss={tss}"));
        let mut name: heapless::String<32> = heapless::String::new();
        let _ = core::fmt::write(&mut name, format_args!("hostile-{attack}"));
        let by_before = hv_cpu_time(by);
        let d = start(boot, "hostile", &spec(&name, 4, &cmd))?;
        let mut con = Console::new();
        // dom0's own latency while the attack runs: the longest gap between two of its rounds.
        let (mut worst, mut last) = (0, rdtsc());
        let i = wait(d, &mut con, |i, c| {
            let now = rdtsc();
            worst = worst.max(now.saturating_sub(last));
            last = now;
            stopped(i, c)
        })?;
        let hog = hv_cpu_time(d);
        destroy(d)?;
        if attack == "console-flood" {
            println!("  console-flood: dom0's longest wait {worst} ticks");
        }
        // The hog and the bystander compete for the CPU: the bystander must keep a fair share
        // (its own slices, at least a third of the hog's time).
        let starved = attack == "boost-hog" && {
            let by_time = hv_cpu_time(by).saturating_sub(by_before);
            println!("  boost-hog: the hog ran {hog} ticks, the bystander {by_time}");
            by_time * 3 < hog
        };
        let ok = !starved
            && match crash {
                Some(r) => i.state == DomainState::Crashed as u32 && i.crash_reason == r as u32,
                None => i.state == DomainState::Shutdown as u32 && i.shutdown_status == 0,
            };
        let got = CrashReason::from_u32(i.crash_reason).map_or("?", CrashReason::name);
        println!(
            "  {attack}: {} ({})",
            if ok { "contained" } else { "NOT CONTAINED" },
            if i.state == DomainState::Crashed as u32 { got } else { "refused, shut down cleanly" }
        );
        failed |= !ok;
    }
    let bi = info(by).map_err(|_| "info")?;
    destroy(by)?;
    if bi.state != DomainState::Running as u32 {
        return Err("the bystander stopped");
    }
    if failed { Err("an attack was not contained") } else { Ok(()) }
}

/// The checks the `platform` guest reports, each with a `platform: NAME: PASS` line.
const PLATFORM_CHECKS: [&str; 22] = [
    "apic-base",
    "apic-disable-enable",
    "moffs-load",
    "byte-load",
    "cpuid-frequencies",
    "lapic-timer-periodic",
    "lapic-timer-oneshot",
    "self-ipi",
    "tpr-masking",
    "tpr-cr8",
    "ioapic-pit",
    "hpet-counter",
    "rtc",
    "nmi-ipi",
    "tsc-deadline",
    "x2apic",
    "fw-cfg",
    "pm-timer-rate",
    "ram-zeroed",
    "rf-on-injected-fault",
    "acpi-tables",
    "absent-devices",
];

fn platform(boot: &Boot) -> Result<(), &'static str> {
    // The platform checks, with a spinner competing for the CPU.
    let by = start(boot, "spinner", &spec("bystander", 4, ""))?;
    let mut con = Console::new();
    // On an emulator whose time counts instructions, timer rates are exact.
    let args = if boot.has_flag("strict-timing") { "strict=1" } else { "" };
    let d = start(boot, "platform", &spec("platform", 4, args))?;
    let i = wait(d, &mut con, stopped)?;
    destroy(d)?;
    destroy(by)?;
    println!("  platform: state {}, status {}", i.state, i.shutdown_status);
    if i.state != DomainState::Shutdown as u32 || i.shutdown_status != 0 {
        return Err("a platform check failed");
    }
    // The status counts failures, not checks: a guest that skipped one would pass on it
    // alone, so every check must also have reported its PASS line.
    for check in PLATFORM_CHECKS {
        let mut line: heapless::String<48> = heapless::String::new();
        let _ = core::fmt::write(&mut line, format_args!("platform: {check}: PASS"));
        if !contains(&con, &line) {
            println!("  platform: no PASS line for {check}");
            return Err("a platform check did not report");
        }
    }
    // A reset through the reset control register ends the domain with reason reboot.
    let d = start(boot, "hostile", &spec("resetter", 4, "attack=reset"))?;
    let i = wait(d, &mut con, stopped)?;
    destroy(d)?;
    println!("  reset: state {}, reason {}", i.state, i.shutdown_reason);
    if i.state != DomainState::Shutdown as u32
        || i.shutdown_reason != abi::hypercall::ShutdownReason::Reboot as u32
    {
        return Err("a reset through port 0xCF9 did not end in reboot");
    }
    // Mode changes microhv completes must fault or succeed as on the CPU, never fail VM entry:
    // the guest's status is a mask of the cases that went wrong.
    let d = start(boot, "modes", &spec("modes", 4, ""))?;
    let i = wait(d, &mut con, stopped)?;
    destroy(d)?;
    println!("  modes: state {}, failure mask {:#x}", i.state, i.shutdown_status);
    if i.state != DomainState::Shutdown as u32 || i.shutdown_status != 0 {
        return Err("a mode change did not behave as on the CPU");
    }
    Ok(())
}

/// A module built into dom0 for the multiboot kernel: short text, so its first bytes read
/// plainly in the kernel's output.
const MB_TEXT: &[u8] = b"microhv: a text module for the multiboot kernel\n";

/// The 32-bit FNV-1a hash the multiboot kernel prints for each module (`tests/mbkernel`).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn multiboot(boot: &Boot) -> Result<(), &'static str> {
    let mut con = Console::new();
    // Two modules in its `mods` list: the text above, and a boot module several pages long
    // (the `hello` guest's image), each of which it must find intact.
    let (hello, _) = boot.module_named("hello").ok_or("boot module missing")?;
    let datas = [MB_TEXT, hello];
    let mods = [
        builder::Module { data: &datas[0], cmdline: "text" },
        builder::Module { data: &datas[1], cmdline: "hello image" },
    ];
    let s = DomainSpec { modules: &mods, ..spec("mbkernel", 4, "status=42") };
    let d = start(boot, "mbkernel", &s)?;
    let i = wait(d, &mut con, stopped)?;
    destroy(d)?;
    println!("  mbkernel: state {}, status {}", i.state, i.shutdown_status);
    if !contains(&con, "mbkernel: multiboot magic ok")
        || !contains(&con, "enabled (svr 0x1ff, tpr 0x10)")
    {
        return Err("the kernel's COM1 output is not in its console ring");
    }
    if !contains(&con, "mbkernel: 2 module(s)") {
        return Err("the kernel did not find its two modules");
    }
    for (n, (m, data)) in mods.iter().zip(datas).enumerate() {
        let mut want: heapless::String<96> = heapless::String::new();
        let _ = core::fmt::write(
            &mut want,
            format_args!(
                ": {} bytes, fnv1a {:#010x}, cmdline {:?}",
                data.len(),
                fnv1a(data),
                m.cmdline
            ),
        );
        println!("  mbkernel: module {n} expected as \"{want}\"");
        if !contains(&con, &want) {
            return Err("a module is missing or altered in the kernel's mods list");
        }
    }
    if i.state != DomainState::Shutdown as u32 || i.shutdown_status != 42 {
        return Err("the debug-exit status is not in the domain info");
    }
    Ok(())
}

/// Runs every scenario; true if all passed.
pub fn run_all(boot: &Boot) -> bool {
    type Scenario = fn(&Boot) -> Result<(), &'static str>;
    let all: [(&str, Scenario); 7] = [
        ("hello", hello),
        ("two-domus", two_domus),
        ("crowd", crowd),
        ("toucher", toucher),
        ("hostile", hostile),
        ("multiboot", multiboot),
        ("platform", platform),
    ];
    let (mut pass, mut fail) = (0, 0);
    for (name, f) in all {
        let before = free_bytes();
        let r = f(boot);
        destroy_leftovers();
        let after = free_bytes();
        let leaked = after != before;
        let r = if r.is_ok() && leaked { Err("free memory differs after destroy") } else { r };
        println!(
            "  {name}: free memory (plus dom0's MMU frames) {before} bytes before, {after} after"
        );
        match r {
            Ok(()) => {
                pass += 1;
                println!("scenario {name}: PASS");
            }
            Err(why) => {
                fail += 1;
                println!("scenario {name}: FAIL: {why}");
            }
        }
    }
    println!("scenarios: {pass} passed, {fail} failed");
    fail == 0
}

/// One run of the `smp` guest.
#[derive(Clone, Copy)]
struct SmpRun {
    vcpus: u32,
    /// Every wait spins on PAUSE instead of yielding.
    spin: bool,
    /// Each vCPU writes and verifies its share of [`TOUCH_MIB`] while dom0 lowers and raises
    /// the domain's MMU page cap over and over.
    touch: bool,
}

/// The `smp` guest's runs in `scenario=smp`: every vCPU a domain can have, then two, both
/// yielding while they wait; then every vCPU spinning on PAUSE while it waits, as a lock does
/// (PAUSE-loop exiting / the pause filter must hand the CPU to the vCPU waited for); then every
/// vCPU touching memory while its MMU pages are zapped from under it.
const SMP_RUNS: [SmpRun; 4] = [
    SmpRun { vcpus: abi::hypercall::MAX_VCPUS_PER_DOMAIN, spin: false, touch: false },
    SmpRun { vcpus: 2, spin: false, touch: false },
    SmpRun { vcpus: abi::hypercall::MAX_VCPUS_PER_DOMAIN, spin: true, touch: false },
    SmpRun { vcpus: abi::hypercall::MAX_VCPUS_PER_DOMAIN, spin: false, touch: true },
];
/// MiB the `touch` run's vCPUs share: with 4 KiB mappings, 20 leaf tables, more than the
/// floor the cap is lowered to (`PhysInfo::mmu_pages_floor`), so every lowering zaps.
const TOUCH_MIB: u64 = 40;
/// The `touch` run's high cap.
const TOUCH_HIGH_CAP: u64 = 4096;
/// Looks at the `touch` run's domain per cycle of its cap.
const TOUCH_CYCLE_EVERY: u64 = 16;

impl SmpRun {
    fn name(self) -> heapless::String<24> {
        let mut n = heapless::String::new();
        let tail = if self.spin {
            "-spin"
        } else if self.touch {
            "-touch"
        } else {
            ""
        };
        let _ = core::fmt::write(&mut n, format_args!("smp-{}{tail}", self.vcpus));
        n
    }
}

/// One run of the `smp` guest: it must shut down with status 0 and its verdict line must end
/// in `: ok`; its `smp:` lines are echoed into dom0's console (microhv's log rate-limits a
/// domU's own lines).
fn smp_run(boot: &Boot, run: SmpRun) -> Result<(), &'static str> {
    let hv = guest_rt::hv();
    let floor = hv.phys_info().map_err(|_| "physinfo")?.mmu_pages_floor;
    let mut cmdline: heapless::String<48> = heapless::String::new();
    let spin = if run.spin { " spin" } else { "" };
    let _ = core::fmt::write(&mut cmdline, format_args!("vcpus={}{spin}", run.vcpus));
    let mut s = DomainSpec { vcpus: run.vcpus, ..spec("smp", 4, "") };
    if run.touch {
        let _ = core::fmt::write(&mut cmdline, format_args!(" rounds=4 touch={TOUCH_MIB}"));
        s.mem_bytes = (8 + TOUCH_MIB) << 20;
        s.mmu_pages = TOUCH_HIGH_CAP;
        s.flags = DOMCREATE_SMALL_PAGES;
    }
    s.cmdline = &cmdline;
    let started = rdtsc();
    let d = start(boot, "smp", &s)?;
    let mut con = Console::new();
    let (mut cycles, mut polls) = (0u64, 0u64);
    let mut cap_error = None;
    let i = wait(d, &mut con, |i, c| {
        polls += 1;
        // Every 16th look: every one made the vCPUs fault their tables back in faster than
        // they could touch anything under QEMU.
        if run.touch && !stopped(i, c) && polls.is_multiple_of(TOUCH_CYCLE_EVERY) {
            for cap in [floor, TOUCH_HIGH_CAP] {
                match hv.mmu_pages_set(d, cap) {
                    // It stopped since its state was read.
                    Err(abi::Errno::EBUSY) | Ok(()) => {}
                    Err(e) => cap_error = cap_error.or(Some(e)),
                }
            }
            cycles += 1;
        }
        stopped(i, c)
    })?;
    let ticks = rdtsc() - started;
    let stats = hv.stats(d).map_err(|_| "stats")?;
    let pauses = stats.exits_by_reason[abi::types::ExitReason::Pause as usize];
    destroy(d)?;
    let mut verdict = false;
    for line in con.split(|&b| b == b'\n').filter_map(|l| core::str::from_utf8(l).ok()) {
        if line.starts_with("smp:") {
            println!("  {line}");
            verdict |= line.starts_with("smp: ")
                && line.contains(" vCPUs: work ")
                && line.ends_with(": ok");
        }
    }
    println!(
        "  {} with {} vCPUs: state {}, status {}, {} exits ({pauses} pause), {ticks} ticks from build to stop",
        run.name(),
        run.vcpus,
        i.state,
        i.shutdown_status,
        i.exits
    );
    if run.touch {
        println!(
            "  {}: the cap lowered to {floor} and raised to {TOUCH_HIGH_CAP} {cycles} times; {} reclaims, {} pages zapped; error {cap_error:?}",
            run.name(),
            stats.mmu_reclaims,
            stats.mmu_pages_zapped
        );
        if cap_error.is_some() || cycles == 0 || stats.mmu_pages_zapped == 0 {
            return Err("the MMU page cap was not cycled while the guest ran");
        }
    }
    if i.state != DomainState::Shutdown as u32 || i.shutdown_status != 0 {
        return Err("the smp guest did not shut down with status 0");
    }
    if !verdict {
        return Err("no `: ok` verdict line from the smp guest");
    }
    Ok(())
}

/// `scenario=smp`: the `smp` guest (a parallel workload with IPIs between its vCPUs, started
/// as an OS starts its CPUs) in each of [`SMP_RUNS`]; each run prints `scenario smp-N: PASS`
/// (`smp-N-spin`, `smp-N-touch`) or `FAIL: why`, and must give back every frame when
/// destroyed.
pub fn smp(boot: &Boot) -> bool {
    let mut ok = true;
    for run in SMP_RUNS {
        let before = free_bytes();
        let r = smp_run(boot, run);
        destroy_leftovers();
        let after = free_bytes();
        let r =
            if r.is_ok() && after != before { Err("free memory differs after destroy") } else { r };
        match r {
            Ok(()) => println!("scenario {}: PASS", run.name()),
            Err(why) => {
                ok = false;
                println!("scenario {}: FAIL: {why}", run.name());
            }
        }
    }
    ok
}

/// The command dom0 types on the Linux domU's console.
const TYPED: &[u8] = b"echo typed-on-the-console\n";
/// The longest the Linux domU may stay silent, in milliseconds of real time (at least
/// `TIMEOUT`'s ticks).
const LINUX_QUIET_MS: u64 = 60_000;
/// The Linux domU's memory.
const LINUX_MIB: u64 = 256;
/// The Linux domU's vCPUs unless `linux-vcpus=N` says otherwise: the second starts through
/// INIT and start-up IPIs (`hv/startup.rs`).
const LINUX_VCPUS: u32 = 2;

/// The Linux domU's vCPU count (`linux-vcpus=N`, 1 to 4).
fn linux_vcpus(boot: &Boot) -> u32 {
    let n = boot.option("linux-vcpus").and_then(|n| n.parse().ok());
    n.filter(|n| (1..=4).contains(n)).unwrap_or(LINUX_VCPUS)
}
/// Its command line: a serial console and nothing that helps it calibrate or find its devices.
const LINUX_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 rdinit=/init";

/// `scenario=linux`: builds a domU from the `vmlinux` and `initramfs` boot modules (the Linux
/// kit), echoes its console into dom0's (microhv's log rate-limits a domU's own lines) and
/// checks what its init reports, then that it powered off through ACPI and that destroying it
/// returned every frame.
pub fn linux(boot: &Boot) -> bool {
    let before = free_bytes();
    let r = linux_run(boot);
    destroy_leftovers();
    let after = free_bytes();
    println!("  linux: free memory (plus dom0's MMU frames) {before} bytes before, {after} after");
    match r {
        Ok(()) if before == after => {
            println!("scenario linux: PASS");
            true
        }
        Ok(()) => {
            println!("scenario linux: FAIL: free memory differs after destroy");
            false
        }
        Err(why) => {
            println!("scenario linux: FAIL: {why}");
            false
        }
    }
}

/// Builds and starts the Linux domU from the `vmlinux` and `initramfs.cpio` boot modules; its
/// domid.
pub fn start_linux(boot: &Boot) -> Result<u32, &'static str> {
    let hv = guest_rt::hv();
    let (kernel, _) = boot.module_named("vmlinux").ok_or("no vmlinux boot module")?;
    let (initrd, _) = boot.module_named("initramfs.cpio").ok_or("no initramfs.cpio boot module")?;
    let mods = [builder::Module { data: &initrd, cmdline: "initramfs" }];
    let s = DomainSpec {
        modules: &mods,
        vcpus: linux_vcpus(boot),
        ..spec("linux", LINUX_MIB, LINUX_CMDLINE)
    };
    let d = builder::build(hv, &s, kernel).map_err(|e| {
        println!("  build linux: {e}");
        "build failed"
    })?;
    hv.domain_unpause(d).map_err(|_| "unpause failed")?;
    Ok(d)
}

fn linux_run(boot: &Boot) -> Result<(), &'static str> {
    let hv = guest_rt::hv();
    // Another domU shares the CPU all along and must still be running at the end.
    let by = if boot.module_named("spinner").is_some() {
        Some(start(boot, "spinner", &spec("bystander", 4, ""))?)
    } else {
        None
    };
    let start_tsc = rdtsc();
    let d = start_linux(boot)?;
    // Echo the console line by line; keep the lines init prints for the checks.
    let mut line: heapless::Vec<u8, 256> = heapless::Vec::new();
    let mut marks: heapless::Vec<u8, 4096> = heapless::Vec::new();
    let mut buf = [0u8; CONSOLE_READ_MAX as usize];
    let mut last_progress = rdtsc();
    // Only a guard against a hang: Linux is silent while it unpacks its initramfs, which took
    // more than 7 s of wall time under QEMU's single-threaded TCG (beyond `TIMEOUT` there).
    let quiet = TIMEOUT.max(dm::tsc_khz().saturating_mul(LINUX_QUIET_MS));
    // What dom0 types on the domain's console once init asks for a command.
    let mut typing: &[u8] = b"";
    let i = loop {
        let mut got = false;
        while let Ok(n @ 1..) = hv.console_read(d, &mut buf) {
            got = true;
            for &b in &buf[..n as usize] {
                if b == b'\n' || line.is_full() {
                    let text = core::str::from_utf8(&line).unwrap_or("?");
                    println!("[linux] {}", text.trim_end());
                    if contains(&line, "microhv-linux:") {
                        let _ = marks.extend_from_slice(&line);
                        let _ = marks.push(b'\n');
                    }
                    if contains(&line, "microhv-linux: type a command") {
                        typing = TYPED;
                    }
                    line.clear();
                } else if b != b'\r' {
                    let _ = line.push(b);
                }
            }
        }
        if !typing.is_empty()
            && let Ok(n) = hv.console_input(d, typing)
        {
            typing = &typing[(n as usize).min(typing.len())..];
        }
        if got {
            last_progress = rdtsc();
        }
        let i = info(d).map_err(|_| "domain vanished")?;
        if stopped(&i, &Console::new()) {
            break i;
        }
        if rdtsc().saturating_sub(last_progress) > quiet {
            return Err("no console output for too long");
        }
        dm::idle(hv);
    };
    println!(
        "  linux: state {}, reason {}, status {}; {} exits; {} TSC ticks from build to stop",
        i.state,
        i.shutdown_reason,
        i.shutdown_status,
        i.exits,
        rdtsc() - start_tsc
    );
    destroy(d)?;
    if let Some(by) = by {
        let bi = info(by).map_err(|_| "info")?;
        destroy(by)?;
        println!("  linux: the bystander ran {} TSC ticks meanwhile", bi.cpu_time);
        if bi.state != DomainState::Running as u32 || bi.cpu_time == 0 {
            return Err("the bystander domain did not keep running");
        }
    }
    let mut cpus: heapless::String<32> = heapless::String::new();
    let _ = core::fmt::write(&mut cpus, format_args!("microhv-linux: cpus {}", linux_vcpus(boot)));
    for want in [
        // Every vCPU: the others started by INIT and start-up IPIs.
        cpus.as_str(),
        "microhv-linux: init started",
        "microhv-linux: MemTotal:",
        // The year of the host's clock (this century), not 1970.
        "microhv-linux: rtc 20",
        "microhv-linux: slept 1 s, date advanced (",
        "microhv-linux: timer interrupts",
        "microhv-linux: ran: echo typed-on-the-console",
        "microhv-linux: exit status 0",
        "microhv-linux: powering off",
    ] {
        if !contains(&marks, want) {
            println!("  linux: missing {want:?}");
            return Err("init did not report everything");
        }
    }
    if i.state != DomainState::Shutdown as u32
        || i.shutdown_reason != abi::hypercall::ShutdownReason::Poweroff as u32
    {
        return Err("the domain did not power off");
    }
    Ok(())
}

/// The figure after `key` in a console text (`key` then decimal digits).
fn figure(con: &[u8], key: &str) -> Option<u64> {
    let at = con.windows(key.len()).position(|w| w == key.as_bytes())? + key.len();
    let digits = con[at..].iter().take_while(|b| b.is_ascii_digit());
    digits.fold(None, |v, &b| Some(v.unwrap_or(0u64).saturating_mul(10) + u64::from(b - b'0')))
}

/// `cargo xtask bench`'s figures measured from dom0 with the `bench` boot module: the console
/// hypercall, domain create → first guest instruction (4 MiB domU), destroy, and the `bench`
/// guest's own figures (CPUID exit, demand faults), each printed as `bench: NAME = N`.
pub fn bench(boot: &Boot) -> Result<(), &'static str> {
    let hv = guest_rt::hv();
    const LINES: u64 = 16;
    let t0 = rdtsc();
    for _ in 0..LINES {
        let _ = hv.console_write(b"bench\n");
    }
    println!("bench: console hypercall = {}", (rdtsc() - t0) / LINES);

    // Create → first instruction: from the start of the build (the image written with
    // MemWrite, the vCPU state, the unpause) to the guest's first TSC read, in its entry.
    let t0 = rdtsc();
    let d = start(boot, "bench", &spec("bench-first", 4, "only=first"))?;
    let mut con = Console::new();
    wait(d, &mut con, stopped)?;
    let first = figure(&con, "first instruction tsc = ").ok_or("no first-instruction figure")?;
    println!("bench: domain create to first instruction = {}", first.saturating_sub(t0));
    let t0 = rdtsc();
    destroy(d)?;
    println!("bench: domain destroy = {}", rdtsc() - t0);

    for (pages, flags) in [("pages=4k", DOMCREATE_SMALL_PAGES), ("pages=2m", 0)] {
        // The fault figures are those of an idle machine's RAM, which microhv scrubs while
        // idle: give it the time. (RAM still dirty is zeroed on the fault: 512 more per 4 KiB.)
        // Bounded: only dom0 runs now, but a bench must end whatever microhv does.
        for _ in 0..1_000_000 {
            if hv.phys_info().map_or(0, |p| p.dirty_free_bytes) == 0 {
                break;
            }
            let _ = hv.yield_now();
        }
        let mut s = spec("bench", 20, pages);
        s.flags = flags;
        let d = start(boot, "bench", &s)?;
        let mut con = Console::new();
        let i = wait(d, &mut con, stopped)?;
        destroy(d)?;
        if i.state != DomainState::Shutdown as u32 {
            return Err("the bench guest did not finish");
        }
    }
    Ok(())
}
