//! Conformance from dom0 (this kernel is booted *as* dom0): every operation of `ABI.md` — valid
//! use, each documented error, boundary values, bad guest addresses, state misuse, a hypercall
//! from ring 3 — then the domU suite (the `conform-domu` module, run as a domU and read back
//! from its console), then the virtual platform (the `platform` test guest's checks, each a
//! case, and a reset through port 0xCF9 by the `hostile` guest ending in reason reboot), then
//! the robustness storms: `storm=N` random calls from dom0 against
//! throwaway domains (default 10,000) and, at the same time, the `storm` module's random calls
//! from a domU on `domu-storm-vcpus=N` vCPUs (default 4); after them microhv must answer and
//! free memory must be back to where it started. Event channels
//! (area `evtchn`) run between the dom0 and domU suites: every operation from dom0 with its
//! errors and the VIRQs, then delivery end to end with the `evtchn` module in `role=wake` (a
//! domU halted with interrupts on, woken by dom0's event through its upcall vector), then
//! `evtchn-rounds=N` (default 3) rounds of two `evtchn` domUs storming each other with
//! `evtchn-sends=N` (default 1000) events each, destroyed after every round, with free memory
//! back to its start each time. Grant tables (area `grant`) follow: every operation from dom0
//! with its errors on grants to itself (mapped through its window and read and written there),
//! the mapping slots filled; then with the `grant` module: a write through a read-only grant
//! (the domU is stopped, the page unchanged, the crashed domU's mapping keeps the grant busy
//! until it is destroyed), a granter destroyed while dom0 maps its page (exactly one page held
//! until dom0 unmaps), two domUs sharing a page end to end, and `grant-rounds=N` (default 3)
//! rounds of two domUs storming each other with `grant-calls=N` (default 2000) random grant
//! operations, destroyed while they map each other's pages, with free memory back to its start
//! each time. The last line is `conformance total: N passed, M failed`; dom0 then powers off
//! with status 0 only if M is 0.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use abi::Errno::{self, *};
use abi::Op;
use abi::hypercall::*;
use abi::types::*;
use conformance::grant::{self, Pages, window};
use conformance::{Rng, Suite, arch, call, parse_verdict, upcall};
use dom0_agent::builder::{self, DomainSpec};
use dom0_agent::memory::free_bytes;
use guest_rt::{Boot, println, rdtsc};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

rt::pvh_note!();

/// A page-aligned scratch area for arguments (inside dom0's RAM).
#[repr(C, align(4096))]
struct Scratch([u8; 16384]);
static mut SCRATCH: Scratch = Scratch([0; 16384]);

fn scratch() -> &'static mut [u8; 16384] {
    let p = &raw mut SCRATCH;
    // SAFETY: single vCPU; only this kernel's sequential code touches the scratch area, and no
    // reference returned earlier is used after the next call.
    unsafe { &mut (*p).0 }
}

fn scratch_addr() -> u64 {
    (&raw const SCRATCH) as u64
}

/// Puts `v` at the start of the scratch area and returns its address.
fn arg<T: IntoBytes + zerocopy::Immutable>(v: &T) -> u64 {
    let b = v.as_bytes();
    scratch()[..b.len()].copy_from_slice(b);
    scratch_addr()
}

fn out<T: FromBytes>() -> T {
    T::read_from_prefix(&scratch()[..]).map(|(t, _)| t).unwrap_or_else(|_| T::new_zeroed())
}

fn create_args(name: &str, mem: u64) -> DomainCreate {
    DomainCreate {
        name: name_field(name).unwrap_or([b'?'; 32]),
        mem_bytes: mem,
        mmu_pages: 0,
        vcpus: 1,
        flags: 0,
    }
}

fn create(c: &DomainCreate) -> i64 {
    call(Op::DomainCreate as u64, [arg(c), 0, 0, 0, 0])
}

fn op1(op: Op, a: u64) -> i64 {
    call(op as u64, [a, 0, 0, 0, 0])
}

fn info_of(domid: u64) -> Option<DomainInfo> {
    (call(Op::DomainGetInfo as u64, [domid, scratch_addr(), 0, 0, 0]) == 0).then(out::<DomainInfo>)
}

fn flat32(rip: u64) -> VcpuState {
    VcpuState {
        mode: VCPU_MODE_FLAT32,
        flags: 0,
        rip,
        rsp: 0x8000,
        rax: 0,
        rbx: 0,
        rcx: 0,
        rdx: 0,
        rsi: 0,
        rdi: 0,
    }
}

/// `hlt; jmp .-1`: what throwaway domains run.
const HALT_LOOP: [u8; 3] = [0xf4, 0xeb, 0xfd];

/// A created domain, loaded with the halt loop and given a state (not unpaused).
fn throwaway(name: &str) -> u64 {
    let d = create(&create_args(name, MIN_DOMAIN_MEM));
    if d <= 0 {
        return 0;
    }
    let d = d as u64;
    let _ = guest_rt::hv().mem_write(d as u32, 0x10_0000, &HALT_LOOP);
    let _ = call(Op::VcpuSetState as u64, [d, 0, arg(&flat32(0x10_0000)), 0, 0]);
    d
}

fn name(args: core::fmt::Arguments<'_>) -> heapless::String<64> {
    let mut s = heapless::String::new();
    let _ = core::fmt::write(&mut s, args);
    s
}

fn discovery(s: &mut Suite) {
    let hv = guest_rt::hv();
    s.check("cpuid-identifies-dom0", hv.privileged && hv.domid == 0, format_args!("{hv:?}"));
    s.expect("version", call(0, [0; 5]), i64::from(abi::abi_version_word()));
    for n in [0x05u64, 0x0f, 0x23, 0x2f, 0x100, 1 << 32, u64::MAX] {
        s.expect_err(&name(format_args!("unknown-op-{n:#x}")), call(n, [0; 5]), ENOSYS);
    }
    s.expect("yield", call(Op::Yield as u64, [0; 5]), 0);
    s.expect_err("shutdown-bad-reason", call(Op::Shutdown as u64, [9, 0, 0, 0, 0]), EINVAL);
}

fn addresses(s: &mut Suite, boot: &Boot) {
    let end = boot.ram_end();
    let pi = Op::PhysInfo as u64;
    s.expect("physinfo", call(pi, [scratch_addr(), 0, 0, 0, 0]), 0);
    let p = out::<PhysInfo>();
    s.check(
        "physinfo-fields",
        p.free_bytes <= p.total_bytes
            && p.max_domains == MAX_DOMAINS
            && p.abi_version == abi::abi_version_word()
            && p.cpus >= 1
            && p.virt
                == match guest_rt::hv().insn {
                    abi::guest::Insn::Vmcall => VIRT_VMX,
                    abi::guest::Insn::Vmmcall => VIRT_SVM,
                },
        format_args!("{p:?}"),
    );
    for (case, a, e) in [
        ("unmapped", 0xb000_0000u64, EFAULT),
        ("ram-end", end, EFAULT),
        ("straddling-ram-end", end - 8, EFAULT),
        ("overflowing", u64::MAX - 7, EFAULT),
        ("misaligned", scratch_addr() + 4, EINVAL),
        ("apic-page", 0xfee0_0000, EFAULT),
        ("null", 0, Errno::EFAULT),
    ] {
        let r = call(pi, [a, 0, 0, 0, 0]);
        // Address 0 is dom0's own RAM (page 0): writing there is allowed.
        if case == "null" {
            s.expect("physinfo-to-page-0", r, 0);
        } else {
            s.expect_err(&name(format_args!("physinfo-{case}")), r, e);
        }
    }
    // A read-only boot-module window is readable but not writable.
    if let Some((m, _)) = boot.module_named("conform-domu") {
        let window = m.as_ptr() as u64 & !0xfff;
        s.expect_err("physinfo-into-read-only-module", call(pi, [window, 0, 0, 0, 0]), EFAULT);
        let cw = call(Op::ConsoleWrite as u64, [m.as_ptr() as u64, 0, 0, 0, 0]);
        s.expect("console-write-from-module", cw, 0);
    }
    // The caller's own stack and page tables are its memory: OUT structures may go there.
    let mut on_stack = [0u64; 8];
    let r = call(pi, [on_stack.as_mut_ptr() as u64, 0, 0, 0, 0]);
    s.expect("physinfo-onto-own-stack", r, 0);
    s.check("physinfo-onto-own-stack-written", on_stack[0] != 0, format_args!("{on_stack:?}"));
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) cr3) };
    let pml4 = cr3 & !0xfff;
    // As an IN structure, a page-table page holds garbage: a defined error, not a crash.
    let r = call(Op::DomainCreate as u64, [pml4, 0, 0, 0, 0]);
    s.expect_err("create-from-own-page-tables", r, EINVAL);
}

fn create_cases(s: &mut Suite) {
    let ok = create_args("conf-a", MIN_DOMAIN_MEM);
    let mut cases: heapless::Vec<(&str, DomainCreate, Errno), 24> = heapless::Vec::new();
    let mut c = ok;
    c.name = [0; 32];
    let _ = cases.push(("create-empty-name", c, EINVAL));
    let mut c = ok;
    c.name[0] = 0x1b;
    let _ = cases.push(("create-unprintable-name", c, EINVAL));
    let mut c = ok;
    c.name[10] = b'x';
    let _ = cases.push(("create-byte-after-nul", c, EINVAL));
    let mut c = ok;
    c.flags = 0x8000_0000;
    let _ = cases.push(("create-unknown-flag", c, EINVAL));
    let mut c = ok;
    c.vcpus = 0;
    let _ = cases.push(("create-zero-vcpus", c, EINVAL));
    let mut c = ok;
    c.vcpus = MAX_VCPUS_PER_DOMAIN + 1;
    let _ = cases.push(("create-vcpus-max+1", c, E2BIG));
    let mut c = ok;
    c.vcpus = u32::MAX;
    let _ = cases.push(("create-vcpus-u32-max", c, E2BIG));
    for (case, mem, e) in [
        ("create-mem-zero", 0, EINVAL),
        ("create-mem-unaligned", MIN_DOMAIN_MEM + 1, EINVAL),
        ("create-mem-min-4k", MIN_DOMAIN_MEM - 4096, EINVAL),
        ("create-mem-max+4k", MAX_DOMAIN_MEM + 4096, E2BIG),
        ("create-mem-u64-max", !0xfff, E2BIG),
        ("create-mem-more-than-free", MAX_DOMAIN_MEM, ENOMEM),
    ] {
        let mut c = ok;
        c.mem_bytes = mem;
        let _ = cases.push((case, c, e));
    }
    let floor = call(Op::PhysInfo as u64, [scratch_addr(), 0, 0, 0, 0]);
    let floor = if floor == 0 { out::<PhysInfo>().mmu_pages_floor } else { 4 };
    let mut c = ok;
    c.mmu_pages = floor - 1;
    let _ = cases.push(("create-mmu-pages-floor-1", c, EINVAL));
    let mut c = ok;
    c.mmu_pages = u64::MAX;
    let _ = cases.push(("create-mmu-pages-u64-max", c, E2BIG));
    let before = free_bytes();
    for (case, c, e) in &cases {
        s.expect_err(case, create(c), *e);
    }
    s.check(
        "refused-creates-leak-nothing",
        free_bytes() == before,
        format_args!("{before} -> {}", free_bytes()),
    );
    for (case, a, e) in [
        ("create-misaligned", scratch_addr() + 4, EINVAL),
        ("create-unmapped", 0xb000_0000, EFAULT),
        ("create-overflowing", u64::MAX - 7, EFAULT),
    ] {
        s.expect_err(case, call(Op::DomainCreate as u64, [a, 0, 0, 0, 0]), e);
    }
    // Boundary values that are valid, then EEXIST and ENOSPC.
    let mut c = create_args(&"x".repeat_ascii(32), MIN_DOMAIN_MEM);
    c.vcpus = MAX_VCPUS_PER_DOMAIN;
    c.mmu_pages = floor;
    c.flags = DOMCREATE_SMALL_PAGES;
    let d = create(&c);
    s.expect_ok("create-all-boundaries-valid", d);
    s.expect_err("create-duplicate-name", create(&c), EEXIST);
    let mut made: heapless::Vec<u64, 16> = heapless::Vec::new();
    if d > 0 {
        let _ = made.push(d as u64);
    }
    let mut last = 0;
    for i in 0..MAX_DOMAINS {
        last = create(&create_args(&name(format_args!("fill-{i}")), MIN_DOMAIN_MEM));
        if last < 0 {
            break;
        }
        let _ = made.push(last as u64);
    }
    s.expect_err("create-when-the-table-is-full", last, ENOSPC);
    s.check(
        "table-holds-max-domains",
        made.len() as u32 == MAX_DOMAINS - 1,
        format_args!("{}", made.len()),
    );
    for d in made {
        s.expect(&name(format_args!("destroy-d{d}")), op1(Op::DomainDestroy, d), 0);
    }
    let after = free_bytes();
    s.check("destroy-returns-every-frame", after == before, format_args!("{before} -> {after}"));
}

/// `repeat` for ASCII text into a fixed string.
trait RepeatAscii {
    fn repeat_ascii(&self, n: usize) -> heapless::String<64>;
}

impl RepeatAscii for str {
    fn repeat_ascii(&self, n: usize) -> heapless::String<64> {
        let mut s = heapless::String::new();
        for _ in 0..n {
            let _ = s.push_str(self);
        }
        s
    }
}

fn lifecycle(s: &mut Suite) {
    let d = create(&create_args("conf-life", MIN_DOMAIN_MEM));
    if s.expect_ok("create", d).is_none() {
        return;
    }
    let d = d as u64;
    let st = |d| info_of(d).map_or(u32::MAX, |i| i.state);
    s.expect("state-created", i64::from(st(d)), DomainState::Created as i64);
    s.expect_err("pause-created", op1(Op::DomainPause, d), EBUSY);
    s.expect_err("unpause-without-state", op1(Op::DomainUnpause, d), EINVAL);
    let hv = guest_rt::hv();
    s.expect(
        "mem-write",
        hv.mem_write(d as u32, 0x10_0000, &HALT_LOOP).map_or(-1, |v| v as i64),
        3,
    );
    let sv = Op::VcpuSetState as u64;
    s.expect_err("vcpu-state-vcpu-1-of-1", call(sv, [d, 1, arg(&flat32(0x10_0000)), 0, 0]), EINVAL);
    s.expect_err(
        "vcpu-state-vcpu-u64-max",
        call(sv, [d, u64::MAX, arg(&flat32(0x10_0000)), 0, 0]),
        EINVAL,
    );
    let mut bad = flat32(0x10_0000);
    bad.mode = 0;
    s.expect_err("vcpu-state-bad-mode", call(sv, [d, 0, arg(&bad), 0, 0]), EINVAL);
    let mut bad = flat32(0x10_0000);
    bad.flags = 1;
    s.expect_err("vcpu-state-flags", call(sv, [d, 0, arg(&bad), 0, 0]), EINVAL);
    s.expect_err("vcpu-state-rip-above-4g", call(sv, [d, 0, arg(&flat32(1 << 32)), 0, 0]), EINVAL);
    s.expect_err("vcpu-state-misaligned", call(sv, [d, 0, scratch_addr() + 4, 0, 0]), EINVAL);
    s.expect_err("vcpu-state-unmapped", call(sv, [d, 0, 0xb000_0000, 0, 0]), EFAULT);
    s.expect("vcpu-state", call(sv, [d, 0, arg(&flat32(0x10_0000)), 0, 0]), 0);
    s.expect("unpause-created", op1(Op::DomainUnpause, d), 0);
    s.expect_err("unpause-running", op1(Op::DomainUnpause, d), EBUSY);
    s.expect_err("vcpu-state-after-start", call(sv, [d, 0, arg(&flat32(0x10_0000)), 0, 0]), EBUSY);
    s.expect_err(
        "mem-write-running",
        call(Op::MemWrite as u64, [d, 0x10_0000, scratch_addr(), 8, 0]),
        EBUSY,
    );
    s.expect_err("mem-set-running", call(Op::MemSet as u64, [d, 4 << 20, 0, 0, 0]), EBUSY);
    s.expect("pause", op1(Op::DomainPause, d), 0);
    s.expect("state-paused", i64::from(st(d)), DomainState::Paused as i64);
    s.expect_err("pause-paused", op1(Op::DomainPause, d), EBUSY);

    // Memory of a paused domain.
    let ms = Op::MemSet as u64;
    s.expect("mem-set-grow", call(ms, [d, 4 << 20, 0, 0, 0]), 0);
    s.check(
        "mem-set-grow-visible",
        info_of(d).is_some_and(|i| i.mem_bytes == 4 << 20),
        format_args!("{:?}", info_of(d)),
    );
    s.expect("mem-set-shrink", call(ms, [d, 3 << 20, 0, 0, 0]), 0);
    s.expect_err("mem-set-below-min", call(ms, [d, MIN_DOMAIN_MEM - 4096, 0, 0, 0]), EINVAL);
    s.expect_err("mem-set-unaligned", call(ms, [d, (3 << 20) + 1, 0, 0, 0]), EINVAL);
    s.expect_err("mem-set-above-max", call(ms, [d, MAX_DOMAIN_MEM + 4096, 0, 0, 0]), E2BIG);
    s.expect_err("mem-set-more-than-free", call(ms, [d, MAX_DOMAIN_MEM, 0, 0, 0]), ENOMEM);
    let mw = Op::MemWrite as u64;
    scratch()[..16].copy_from_slice(b"0123456789abcdef");
    s.expect("mem-write-paused", call(mw, [d, 0x20_0000, scratch_addr(), 16, 0]), 16);
    s.expect("mem-write-empty", call(mw, [d, 0x20_0000, scratch_addr(), 0, 0]), 0);
    s.expect(
        "mem-write-max",
        call(mw, [d, 0x10_0000, scratch_addr(), MEM_WRITE_MAX, 0]),
        MEM_WRITE_MAX as i64,
    );
    s.expect_err(
        "mem-write-max+1",
        call(mw, [d, 0x10_0000, scratch_addr(), MEM_WRITE_MAX + 1, 0]),
        E2BIG,
    );
    s.expect_err(
        "mem-write-dst-past-ram",
        call(mw, [d, (3 << 20) - 8, scratch_addr(), 16, 0]),
        EFAULT,
    );
    s.expect_err("mem-write-src-unmapped", call(mw, [d, 0x10_0000, 0xb000_0000, 16, 0]), EFAULT);
    s.expect_err(
        "mem-write-dst-overflowing",
        call(mw, [d, u64::MAX - 7, scratch_addr(), 16, 0]),
        EFAULT,
    );
    s.expect("mem-write-restore-code", call(mw, [d, 0x10_0000, arg(&HALT_LOOP), 3, 0]), 3);
    s.expect("unpause-paused", op1(Op::DomainUnpause, d), 0);

    // MMU pages.
    let (set, get) = (Op::MmuPagesSet as u64, Op::MmuPagesGet as u64);
    let default = call(get, [d, 0, 0, 0, 0]);
    s.expect_ok("mmu-pages-get", default);
    s.expect("mmu-pages-set", call(set, [d, 100, 0, 0, 0]), 0);
    s.expect("mmu-pages-get-after-set", call(get, [d, 0, 0, 0, 0]), 100);
    s.check(
        "mmu-requested-in-info",
        info_of(d).is_some_and(|i| i.mmu_requested == 100),
        format_args!(""),
    );
    s.expect("mmu-pages-default-again", call(set, [d, 0, 0, 0, 0]), 0);
    s.expect("mmu-pages-default-restored", call(get, [d, 0, 0, 0, 0]), default);
    s.expect_err("mmu-pages-u64-max", call(set, [d, u64::MAX, 0, 0, 0]), E2BIG);
    s.expect_err("mmu-pages-missing-domain", call(get, [99, 0, 0, 0, 0]), ESRCH);

    // Info, list, stats, console.
    s.check(
        "info-fields",
        info_of(d).is_some_and(|i| i.domid as u64 == d && i.name_str() == "conf-life"),
        format_args!("{:?}", info_of(d)),
    );
    s.check(
        "info-dom0",
        info_of(0).is_some_and(|i| i.flags & DOMINFO_PRIVILEGED != 0 && i.state == 1),
        format_args!(""),
    );
    let gi = Op::DomainGetInfo as u64;
    s.expect_err("info-missing", call(gi, [d + 1, scratch_addr(), 0, 0, 0]), ESRCH);
    s.expect_err("info-misaligned", call(gi, [d, scratch_addr() + 1, 0, 0, 0]), EINVAL);
    s.expect_err("info-unmapped", call(gi, [d, 0xb000_0000, 0, 0, 0]), EFAULT);
    let li = Op::DomainList as u64;
    s.expect("list-count-only", call(li, [scratch_addr(), 0, 0, 0, 0]), 2);
    s.expect("list-one", call(li, [scratch_addr(), 1, 0, 0, 0]), 2);
    s.check("list-first-is-dom0", out::<DomainInfo>().domid == 0, format_args!(""));
    s.expect("list-huge-capacity", call(li, [scratch_addr(), u64::MAX, 0, 0, 0]), 2);
    s.expect_err("list-misaligned", call(li, [scratch_addr() + 8 + 1, 2, 0, 0, 0]), EINVAL);
    s.expect_err("list-unmapped", call(li, [0xb000_0000, 2, 0, 0, 0]), EFAULT);
    let st = Op::Stats as u64;
    s.expect("stats", call(st, [d, scratch_addr(), 0, 0, 0]), 0);
    s.check("stats-fields", out::<DomainStats>().domid as u64 == d, format_args!(""));
    s.expect_err("stats-missing", call(st, [77, scratch_addr(), 0, 0, 0]), ESRCH);
    s.expect_err("stats-unmapped", call(st, [d, 0xb000_0000, 0, 0, 0]), EFAULT);
    let cr = Op::ConsoleRead as u64;
    s.expect("console-read-empty", call(cr, [d, scratch_addr(), 64, 0, 0]), 0);
    s.expect("console-read-zero", call(cr, [d, scratch_addr(), 0, 0, 0]), 0);
    s.expect("console-read-max", call(cr, [d, scratch_addr(), CONSOLE_READ_MAX, 0, 0]), 0);
    s.expect_err(
        "console-read-max+1",
        call(cr, [d, scratch_addr(), CONSOLE_READ_MAX + 1, 0, 0]),
        E2BIG,
    );
    s.expect_err("console-read-unmapped", call(cr, [d, 0xb000_0000, 64, 0, 0]), EFAULT);
    s.expect_err("console-read-missing", call(cr, [99, scratch_addr(), 64, 0, 0]), ESRCH);
    // Typing on a domU's COM1: its receiver (FIFO off after reset) takes one byte at a time.
    let ci = Op::ConsoleInput as u64;
    s.expect("console-input", call(ci, [d, scratch_addr(), 4, 0, 0]), 1);
    s.expect("console-input-receiver-full", call(ci, [d, scratch_addr(), 4, 0, 0]), 0);
    s.expect("console-input-zero", call(ci, [d, scratch_addr(), 0, 0, 0]), 0);
    s.expect_err(
        "console-input-max+1",
        call(ci, [d, scratch_addr(), CONSOLE_INPUT_MAX + 1, 0, 0]),
        E2BIG,
    );
    s.expect_err("console-input-unmapped", call(ci, [d, 0xb000_0000, 4, 0, 0]), EFAULT);
    s.expect_err("console-input-missing", call(ci, [99, scratch_addr(), 4, 0, 0]), ESRCH);
    s.expect_err("console-input-dom0", call(ci, [0, scratch_addr(), 4, 0, 0]), EPERM);

    // The device-model split's operations (the platform area runs them for real: the platform
    // guest's RTC, fw_cfg, PCI and reset go through this dom0). No access waits here.
    let nx = Op::IoreqNext as u64;
    s.expect("ioreq-next-none-waiting", call(nx, [scratch_addr(), 0, 0, 0, 0]), 0);
    s.expect_err("ioreq-next-misaligned", call(nx, [scratch_addr() + 4, 0, 0, 0, 0]), EINVAL);
    s.expect_err("ioreq-next-unmapped", call(nx, [0xb000_0000, 0, 0, 0, 0]), EFAULT);
    let ic = Op::IoreqComplete as u64;
    s.expect_err("ioreq-complete-none-waiting", call(ic, [d, 0, 1, 0, 0]), EINVAL);
    s.expect_err("ioreq-complete-bad-vcpu", call(ic, [d, 9, 1, 0, 0]), EINVAL);
    s.expect_err("ioreq-complete-value-above-32-bits", call(ic, [d, 0, 1, 1 << 32, 0]), EINVAL);
    s.expect_err("ioreq-complete-missing", call(ic, [99, 0, 1, 0, 0]), ESRCH);
    s.expect_err("ioreq-complete-dom0", call(ic, [0, 0, 1, 0, 0]), EPERM);
    let il = Op::IrqLevel as u64;
    let inst = |d| info_of(d).map_or(0, |i| u64::from(i.instance));
    let mut c = create_args("served", MIN_DOMAIN_MEM);
    c.flags = DOMCREATE_DEVICE_MODEL;
    let dm = create(&c).max(0) as u64;
    let i = inst(dm);
    s.check("instances-differ", i != inst(d) && i != 0, format_args!("{i}, {}", inst(d)));
    s.expect("irq-level-high", call(il, [dm, i, 8, 1, 0]), 0);
    s.expect("irq-level-low", call(il, [dm, i, 8, 0, 0]), 0);
    s.expect_err("irq-level-stale-instance", call(il, [dm, i + 1, 8, 1, 0]), ESRCH);
    s.expect_err("irq-level-microhv-line", call(il, [dm, i, 0, 1, 0]), EINVAL);
    s.expect_err("irq-level-gsi-out-of-range", call(il, [dm, i, 32, 1, 0]), EINVAL);
    s.expect_err("irq-level-bad-level", call(il, [dm, i, 8, 2, 0]), EINVAL);
    s.expect_err("irq-level-not-served", call(il, [d, inst(d), 8, 1, 0]), EINVAL);
    s.expect_err("irq-level-missing", call(il, [99, 0, 8, 1, 0]), ESRCH);
    s.expect_err("irq-level-dom0", call(il, [0, 0, 8, 1, 0]), EPERM);
    s.expect("destroy-served", op1(Op::DomainDestroy, dm), 0);

    // Shutdown by dom0, then misuse of a stopped domain.
    let sh = Op::DomainShutdown as u64;
    s.expect_err("domain-shutdown-bad-reason", call(sh, [d, 7, 0, 0, 0]), EINVAL);
    s.expect_err("domain-shutdown-status-above-32-bits", call(sh, [d, 0, 1 << 32, 0, 0]), EINVAL);
    s.expect("domain-shutdown", call(sh, [d, 1, 77, 0, 0]), 0);
    s.check(
        "shutdown-recorded",
        info_of(d).is_some_and(|i| {
            i.state == DomainState::Shutdown as u32
                && (i.shutdown_reason, i.shutdown_status) == (1, 77)
        }),
        format_args!("{:?}", info_of(d)),
    );
    s.expect_err("domain-shutdown-twice", call(sh, [d, 0, 0, 0, 0]), EBUSY);
    s.expect_err("unpause-stopped", op1(Op::DomainUnpause, d), EBUSY);
    s.expect_err("pause-stopped", op1(Op::DomainPause, d), EBUSY);
    s.expect_err("mmu-pages-set-stopped", call(set, [d, 0, 0, 0, 0]), EBUSY);
    s.expect("destroy-stopped", op1(Op::DomainDestroy, d), 0);
    s.expect_err("destroy-twice", op1(Op::DomainDestroy, d), ESRCH);
    s.expect_err("info-after-destroy", call(gi, [d, scratch_addr(), 0, 0, 0]), ESRCH);

    // dom0 is never the target of a destructive operation; out-of-range ids are ESRCH.
    for op in [
        Op::DomainDestroy,
        Op::DomainPause,
        Op::DomainUnpause,
        Op::DomainShutdown,
        Op::MemSet,
        Op::MemWrite,
        Op::VcpuSetState,
    ] {
        s.expect_err(
            &name(format_args!("{op:?}-on-dom0")),
            call(op as u64, [0, 4 << 20, scratch_addr(), 8, 0]),
            EPERM,
        );
    }
    for domid in [MAX_DOMAINS as u64, u64::from(u32::MAX) + 1, u64::MAX] {
        s.expect_err(
            &name(format_args!("destroy-domid-{domid:#x}")),
            op1(Op::DomainDestroy, domid),
            ESRCH,
        );
    }
}

/// Ports of dom0's that later parts of the suite use.
struct Dom0Ports {
    /// Bound to `VIRQ_DOM_EXC`.
    exc: u32,
    /// Bound to `VIRQ_CON_RING`.
    con: u32,
    /// Offered to dom0 itself: any other domain binding it gets `EINVAL`.
    foreign: u32,
}

fn status_of(port: u64) -> Option<EvtchnStatus> {
    (call(Op::EvtchnStatus as u64, [port, scratch_addr(), 0, 0, 0]) == 0).then(out::<EvtchnStatus>)
}

/// Event channels from dom0: each operation's valid use, errors and boundaries, the VIRQs, and
/// what destroying or stopping a domain does to dom0's ports. dom0 polls its page (no vector).
fn evtchn(s: &mut Suite, boot: &Boot) -> Dom0Ports {
    let page = upcall::page_addr();
    let cb = Op::EvtchnSetCallback as u64;
    let window =
        boot.module_named("conform-domu").map_or(0xb000_0000, |(m, _)| m.as_ptr() as u64 & !0xfff);
    for (case, vector, gpa, e) in [
        ("callback-vector-0x1f", 0x1f, page, EINVAL),
        ("callback-vector-0x100", 0x100, page, EINVAL),
        ("callback-vector-u64-max", u64::MAX, page, EINVAL),
        ("callback-misaligned", 0x40, page + 8, EINVAL),
        ("callback-unmapped", 0x40, 0xb000_0000, EFAULT),
        ("callback-ram-end", 0x40, boot.ram_end(), EFAULT),
        ("callback-read-only-module", 0x40, window, EFAULT),
        ("callback-apic-page", 0x40, 0xfee0_0000, EFAULT),
    ] {
        s.expect_err(case, call(cb, [vector, gpa, 0, 0, 0]), e);
    }
    s.expect("callback-polled", call(cb, [0, page, 0, 0, 0]), 0);
    let (alloc, bind) = (Op::EvtchnAllocUnbound as u64, Op::EvtchnBindInterdomain as u64);
    let (send, close) = (Op::EvtchnSend as u64, Op::EvtchnClose as u64);
    let st = Op::EvtchnStatus as u64;
    for (case, remote) in
        [("missing", 99), ("domid-invalid", DOMID_INVALID.into()), ("u64-max", u64::MAX)]
    {
        s.expect_err(
            &name(format_args!("alloc-unbound-{case}")),
            call(alloc, [remote, 0, 0, 0, 0]),
            ESRCH,
        );
    }
    let p = call(alloc, [0, 0, 0, 0, 0]);
    s.expect("alloc-unbound-for-itself", p, 1);
    s.check(
        "status-unbound",
        status_of(1).is_some_and(|x| (x.state, x.remote_domid) == (EVTCHNSTAT_UNBOUND, 0)),
        format_args!("{:?}", status_of(1)),
    );
    s.check(
        "status-free",
        status_of(9).is_some_and(|x| x.state == EVTCHNSTAT_CLOSED),
        format_args!("{:?}", status_of(9)),
    );
    for (case, port, gpa, e) in [
        ("status-port-0", 0, scratch_addr(), EINVAL),
        ("status-port-max", u64::from(EVTCHN_PORTS), scratch_addr(), EINVAL),
        ("status-port-u64-max", u64::MAX, scratch_addr(), EINVAL),
        ("status-misaligned", 1, scratch_addr() + 4, EINVAL),
        ("status-unmapped", 1, 0xb000_0000, EFAULT),
        ("status-straddling-ram-end", 1, boot.ram_end() - 8, EFAULT),
        ("status-read-only-module", 1, window, EFAULT),
    ] {
        s.expect_err(case, call(st, [port, gpa, 0, 0, 0]), e);
    }
    // A loopback pair: dom0 binds its own offer.
    let q = call(bind, [0, 1, 0, 0, 0]);
    s.expect("bind-loopback", q, 2);
    s.check(
        "status-interdomain-both-ends",
        status_of(1).is_some_and(|x| {
            (x.state, x.remote_domid, x.remote_port) == (EVTCHNSTAT_INTERDOMAIN, 0, 2)
        }) && status_of(2).is_some_and(|x| (x.state, x.remote_port) == (EVTCHNSTAT_INTERDOMAIN, 1)),
        format_args!("{:?} {:?}", status_of(1), status_of(2)),
    );
    for (case, domid, port, e) in [
        ("bind-bound-port", 0, 1, EINVAL),
        ("bind-port-0", 0, 0, EINVAL),
        ("bind-port-max", 0, u64::from(EVTCHN_PORTS), EINVAL),
        ("bind-free-port", 0, 9, EINVAL),
        ("bind-missing-domain", 99, 1, ESRCH),
    ] {
        s.expect_err(case, call(bind, [domid, port, 0, 0, 0]), e);
    }
    s.expect("send-2", call(send, [2, 0, 0, 0, 0]), 0);
    s.check(
        "send-2-marks-1",
        upcall::take_pending(1) && !upcall::is_pending(2),
        format_args!(
            "page {:#x}",
            upcall::PAGE.pending[0].load(core::sync::atomic::Ordering::SeqCst)
        ),
    );
    upcall::set_mask(2, true);
    s.expect("send-1-to-masked", call(send, [1, 0, 0, 0, 0]), 0);
    s.check("masked-port-still-marked", upcall::take_pending(2), format_args!("not pending"));
    upcall::set_mask(2, false);
    for (case, port) in [
        ("send-port-0", 0),
        ("send-port-max", u64::from(EVTCHN_PORTS)),
        ("send-free-port", 9),
        ("send-u64-max", u64::MAX),
    ] {
        s.expect_err(case, call(send, [port, 0, 0, 0, 0]), EINVAL);
    }
    s.expect("send-then-close", call(send, [1, 0, 0, 0, 0]), 0);
    s.expect("close-2", call(close, [2, 0, 0, 0, 0]), 0);
    s.check("close-clears-pending", !upcall::is_pending(2), format_args!("port 2 pending"));
    s.check(
        "close-leaves-the-peer-unbound",
        status_of(1).is_some_and(|x| (x.state, x.remote_domid) == (EVTCHNSTAT_UNBOUND, 0)),
        format_args!("{:?}", status_of(1)),
    );
    s.expect("send-on-unbound-is-dropped", call(send, [1, 0, 0, 0, 0]), 0);
    s.check("dropped-marks-nothing", !upcall::is_pending(2), format_args!("port 2 pending"));
    s.expect_err("close-twice", call(close, [2, 0, 0, 0, 0]), EINVAL);
    for (case, port) in [
        ("close-port-0", 0),
        ("close-port-max", u64::from(EVTCHN_PORTS)),
        ("close-u64-max", u64::MAX),
    ] {
        s.expect_err(case, call(close, [port, 0, 0, 0, 0]), EINVAL);
    }
    // VIRQs.
    let virq = Op::EvtchnBindVirq as u64;
    let exc = call(virq, [VIRQ_DOM_EXC.into(), 0, 0, 0, 0]);
    s.expect("bind-virq-dom-exc", exc, 2);
    s.expect_err("bind-virq-twice", call(virq, [VIRQ_DOM_EXC.into(), 0, 0, 0, 0]), EEXIST);
    let con = call(virq, [VIRQ_CON_RING.into(), 0, 0, 0, 0]);
    s.expect("bind-virq-con-ring", con, 3);
    for (case, v) in
        [("bind-virq-timer", 0), ("bind-virq-unknown", 9), ("bind-virq-u64-max", u64::MAX)]
    {
        s.expect_err(case, call(virq, [v, 0, 0, 0, 0]), EINVAL);
    }
    s.check(
        "status-virq",
        status_of(2).is_some_and(|x| (x.state, x.virq) == (EVTCHNSTAT_VIRQ, VIRQ_DOM_EXC)),
        format_args!("{:?}", status_of(2)),
    );
    s.expect_err("send-on-virq-port", call(send, [2, 0, 0, 0, 0]), EINVAL);
    // A port offered to a domain that is destroyed ends up offered to nobody; stopping and
    // destroying a domain raise VIRQ_DOM_EXC.
    let (exc, con) = (exc as u32, con as u32);
    let t = throwaway("evt-t");
    let offered = call(alloc, [t, 0, 0, 0, 0]);
    s.expect("alloc-unbound-for-a-domu", offered, 4);
    s.expect_err("bind-port-offered-to-another", call(bind, [0, 4, 0, 0, 0]), EINVAL);
    upcall::take_pending(exc);
    s.expect("shutdown-a-domu", call(Op::DomainShutdown as u64, [t, 0, 0, 0, 0]), 0);
    s.check("virq-dom-exc-on-shutdown", upcall::take_pending(exc), format_args!("not pending"));
    s.expect("destroy-a-domu", op1(Op::DomainDestroy, t), 0);
    s.check("virq-dom-exc-on-destroy", upcall::take_pending(exc), format_args!("not pending"));
    s.check(
        "destroy-leaves-the-offer-to-nobody",
        status_of(4)
            .is_some_and(|x| (x.state, x.remote_domid) == (EVTCHNSTAT_UNBOUND, DOMID_INVALID)),
        format_args!("{:?}", status_of(4)),
    );
    s.expect("close-orphan", call(close, [4, 0, 0, 0, 0]), 0);
    // The table filled to ENOSPC, then emptied again but for the ports kept.
    let mut made = 0u32;
    let last = loop {
        let r = call(alloc, [0, 0, 0, 0, 0]);
        if r < 0 || made >= EVTCHN_PORTS {
            break r;
        }
        made += 1;
    };
    s.expect_err("alloc-unbound-table-full", last, ENOSPC);
    s.expect("table-holds-ports", i64::from(made), i64::from(EVTCHN_PORTS - 1 - 3));
    let keep = [1, exc, con];
    let closed = (1..EVTCHN_PORTS)
        .filter(|p| !keep.contains(p))
        .filter(|&p| call(close, [p.into(), 0, 0, 0, 0]) == 0)
        .count();
    s.expect("close-all-it-made", closed as i64, i64::from(made));
    Dom0Ports { exc, con, foreign: 1 }
}

/// Builds a domU from `image` (not started).
fn build_domu(image: Option<&[u8]>, name: &str, cmdline: &str) -> Option<u32> {
    let spec = DomainSpec {
        name,
        mem_bytes: 4 << 20,
        vcpus: 1,
        mmu_pages: 0,
        flags: 0,
        cmdline,
        modules: &[],
    };
    builder::build(guest_rt::hv(), &spec, image?).ok()
}

/// Runs the started domains `doms` until every one has stopped, handing each console line to
/// `on_line`; their final infos (`None` if none made progress for a long time).
fn watch<const N: usize>(
    doms: [u32; N],
    mut on_line: impl FnMut(u32, &[u8]),
) -> Option<[DomainInfo; N]> {
    let hv = guest_rt::hv();
    let mut lines: [heapless::Vec<u8, 256>; N] = core::array::from_fn(|_| heapless::Vec::new());
    let mut infos = [DomainInfo::new_zeroed(); N];
    let mut done = [false; N];
    let mut buf = [0u8; CONSOLE_READ_MAX as usize];
    let mut start = rdtsc();
    while done.iter().any(|d| !d) {
        for (i, &d) in doms.iter().enumerate() {
            if done[i] {
                continue;
            }
            // The state first: once stopped, the reads that follow find all it wrote.
            infos[i] = hv.domain_info(d).ok()?;
            let stopped = infos[i].state == DomainState::Shutdown as u32
                || infos[i].state == DomainState::Crashed as u32;
            while let Ok(n @ 1..) = hv.console_read(d, &mut buf) {
                start = rdtsc();
                for &b in &buf[..n as usize] {
                    if b == b'\n' {
                        on_line(d, &lines[i]);
                        lines[i].clear();
                    } else {
                        let _ = lines[i].push(b);
                    }
                }
            }
            done[i] = stopped;
        }
        if rdtsc().saturating_sub(start) > 20_000_000_000 {
            println!("evtchn: domains {doms:?} timed out (no progress)");
            return None;
        }
        dom0_agent::dm::idle(hv);
    }
    Some(infos)
}

/// A domU's verdict line: its counts go into `s`, its failures are repeated (microhv
/// rate-limits a domU's lines in its log).
fn absorb_domu_line(s: &mut Suite, who: &str, line: &[u8]) {
    if line.starts_with(b"FAIL ") {
        println!("{who}: {}", core::str::from_utf8(line).unwrap_or("?"));
    }
    if line.starts_with(b"conformance ")
        && let Some((p, f)) = parse_verdict(line)
    {
        s.absorb(p, f);
    }
}

/// Delivery end to end: the `evtchn` module in `role=wake` offers dom0 a port and halts; dom0
/// binds and sends, sends again once the domU masked the port, and must see the domU's own
/// event in its page; then what the domU's close, shutdown and destruction leave of dom0's port.
fn evtchn_wake(s: &mut Suite, image: Option<&[u8]>, ports: &Dom0Ports) {
    let hv = guest_rt::hv();
    let Some(d) = build_domu(image, "evtchn-wake", "role=wake") else {
        s.check("wake-domu-built", false, format_args!("the evtchn module could not be run"));
        return;
    };
    upcall::take_pending(ports.exc);
    let _ = hv.domain_unpause(d);
    let mut mine = 0u32;
    let info = watch([d], |_, line| {
        if let Some(p) = line.strip_prefix(b"evtchn: offered port ") {
            let p = core::str::from_utf8(p).ok().and_then(|p| p.parse().ok()).unwrap_or(0);
            let r = hv.evtchn_bind_interdomain(d, p);
            s.check("bind-the-domus-offer", r.is_ok(), format_args!("{r:?}"));
            mine = r.unwrap_or(0);
            s.check(
                "send-to-the-halted-domu",
                hv.evtchn_send(mine).is_ok(),
                format_args!("refused"),
            );
        } else if line == b"evtchn: masked" {
            s.check(
                "send-to-the-masked-port",
                hv.evtchn_send(mine).is_ok(),
                format_args!("refused"),
            );
        } else if line == b"evtchn: sent" {
            s.check(
                "event-from-the-domu",
                upcall::take_pending(mine),
                format_args!("port {mine} not pending"),
            );
        } else {
            absorb_domu_line(s, "evtchn-domu", line);
        }
    });
    let clean =
        info.is_some_and(|[i]| i.state == DomainState::Shutdown as u32 && i.shutdown_status == 0);
    s.check("wake-domu-shut-down-with-no-failure", clean, format_args!("{info:?}"));
    s.check(
        "peer-close-leaves-dom0s-port-unbound",
        status_of(mine.into())
            .is_some_and(|x| (x.state, x.remote_domid) == (EVTCHNSTAT_UNBOUND, d)),
        format_args!("{:?}", status_of(mine.into())),
    );
    s.check(
        "virq-dom-exc-on-domu-shutdown",
        upcall::take_pending(ports.exc),
        format_args!("not pending"),
    );
    s.expect("destroy-wake-domu", op1(Op::DomainDestroy, d.into()), 0);
    s.check(
        "destroy-leaves-dom0s-port-to-nobody",
        status_of(mine.into())
            .is_some_and(|x| (x.state, x.remote_domid) == (EVTCHNSTAT_UNBOUND, DOMID_INVALID)),
        format_args!("{:?}", status_of(mine.into())),
    );
    s.expect("close-dom0s-port", call(Op::EvtchnClose as u64, [mine.into(), 0, 0, 0, 0]), 0);
}

/// `rounds` rounds of two `evtchn` domUs storming each other with `sends` events each: both
/// must finish with every send accepted and at least one upcall taken; destroying them must
/// return every frame.
fn evtchn_storms(s: &mut Suite, image: Option<&[u8]>, rounds: u32, sends: u64) {
    let before = free_bytes();
    let hv = guest_rt::hv();
    for r in 0..rounds {
        let b = build_domu(image, "evtchn-b", &name(format_args!("role=storm sends={sends}")));
        let a = b.and_then(|b| {
            build_domu(image, "evtchn-a", &name(format_args!("role=storm peer={b} sends={sends}")))
        });
        let (Some(a), Some(b)) = (a, b) else {
            s.check(&name(format_args!("storm-{r}-built")), false, format_args!("{a:?} {b:?}"));
            break;
        };
        let _ = (hv.domain_unpause(b), hv.domain_unpause(a));
        let infos = watch([a, b], |d, line| {
            if line.starts_with(b"evtchn-storm:") {
                println!("d{d} {}", core::str::from_utf8(line).unwrap_or("?"));
            }
        });
        let clean = infos.is_some_and(|is| {
            is.iter().all(|i| i.state == DomainState::Shutdown as u32 && i.shutdown_status == 0)
        });
        s.check(&name(format_args!("storm-{r}-both-clean")), clean, format_args!("{infos:?}"));
        let _ = (hv.domain_destroy(a), hv.domain_destroy(b));
        let after = free_bytes();
        s.check(
            &name(format_args!("storm-{r}-returns-every-frame")),
            after == before,
            format_args!("{before} -> {after}"),
        );
    }
}

/// Pages dom0 grants (volatile access only: a peer may write them).
static mut GPAGES: Pages<4> = Pages::new();

fn gpage(i: u64) -> u64 {
    (&raw const GPAGES) as u64 + i * 4096
}

fn grant_status(r: u64) -> Option<GrantStatus> {
    (call(Op::GrantQuery as u64, [r, scratch_addr(), 0, 0, 0]) == 0).then(out::<GrantStatus>)
}

/// Grant tables from dom0 (area `grant`): every operation's valid use, errors and boundaries
/// on grants dom0 makes to itself (a loopback: dom0 maps its own pages through the window and
/// reads and writes them there), a grant offered to another domain refused, a grant whose peer
/// is destroyed, every reference usable, the mapping slots filled to `ENOSPC`; free memory back
/// to where it was.
#[inline(never)]
fn grant_area(s: &mut Suite, boot: &Boot) {
    let before = free_bytes();
    let (set, revoke, map) = (Op::GrantSet as u64, Op::GrantRevoke as u64, Op::GrantMap as u64);
    let (unmap, from, to) =
        (Op::GrantUnmap as u64, Op::GrantCopyFrom as u64, Op::GrantCopyTo as u64);
    let module =
        boot.module_named("conform-domu").map_or(0xb000_0000, |(m, _)| m.as_ptr() as u64 & !0xfff);
    let (ram_end, pg) = (boot.ram_end(), gpage(0));
    let pattern = b"a page dom0 grants itself";
    // SAFETY: dom0's grant pool, not granted yet.
    unsafe { grant::write(pg, pattern) };
    for (case, r, peer, gpa, flags, e) in [
        ("set-missing-peer", 0, 99, pg, 0, ESRCH),
        ("set-peer-domid-invalid", 0, DOMID_INVALID.into(), pg, 0, ESRCH),
        ("set-peer-u64-max", 0, u64::MAX, pg, 0, ESRCH),
        ("set-ref-max", GRANT_ENTRIES.into(), 0, pg, 0, EINVAL),
        ("set-ref-u64-max", u64::MAX, 0, pg, 0, EINVAL),
        ("set-unknown-flag", 0, 0, pg, 2, EINVAL),
        ("set-misaligned-page", 0, 0, pg + 8, 0, EINVAL),
        ("set-page-past-ram", 0, 0, ram_end, 0, EFAULT),
        ("set-read-only-module", 0, 0, module, 0, EFAULT),
        ("set-grant-window", 0, 0, window(0), 0, EFAULT),
        ("set-apic-page", 0, 0, 0xfee0_0000, 0, EFAULT),
        ("set-overflowing", 0, 0, !0xfff, 0, EFAULT),
    ] {
        s.expect_err(case, call(set, [r, peer, gpa, flags, 0]), e);
    }
    s.expect("set-for-itself", call(set, [0, 0, pg, 0, 0]), 0);
    s.expect_err("set-in-use", call(set, [0, 0, gpage(1), 0, 0]), EEXIST);
    s.expect("set-read-only", call(set, [1, 0, pg, GRANT_READONLY, 0]), 0);
    s.expect("set-another-page", call(set, [3, 0, gpage(3), 0, 0]), 0);
    let st = grant_status(0);
    let want = GrantStatus { state: GRANT_STATE_GRANTED, peer: 0, flags: 0, mapped: 0, gpa: pg };
    s.check("query-granted", st == Some(want), format_args!("{st:?}"));
    let st = grant_status(1);
    s.check(
        "query-read-only",
        st.is_some_and(|x| x.flags == GRANT_READONLY as u32),
        format_args!("{st:?}"),
    );
    let st = grant_status(9);
    s.check("query-free", st == Some(GrantStatus::new_zeroed()), format_args!("{st:?}"));
    let q = Op::GrantQuery as u64;
    for (case, r, gpa, e) in [
        ("query-ref-max", GRANT_ENTRIES.into(), scratch_addr(), EINVAL),
        ("query-misaligned", 0, scratch_addr() + 4, EINVAL),
        ("query-unmapped", 0, 0xb000_0000, EFAULT),
        ("query-straddling-ram-end", 0, ram_end - 8, EFAULT),
        ("query-read-only-module", 0, module, EFAULT),
    ] {
        s.expect_err(case, call(q, [r, gpa, 0, 0, 0]), e);
    }
    for (case, g, r, gpa, flags, e) in [
        ("map-missing-granter", 99, 0, window(0), 0, ESRCH),
        ("map-ref-max", 0, GRANT_ENTRIES.into(), window(0), 0, EINVAL),
        ("map-unknown-flag", 0, 0, window(0), 2, EINVAL),
        ("map-over-ram", 0, 0, gpage(2), 0, EINVAL),
        ("map-misaligned", 0, 0, window(0) + 8, 0, EINVAL),
        ("map-below-window", 0, 0, window(0) - 4096, 0, EINVAL),
        ("map-past-window", 0, 0, GRANT_WINDOW_GPA + GRANT_WINDOW_BYTES, 0, EINVAL),
        ("map-apic-page", 0, 0, 0xfee0_0000, 0, EINVAL),
        ("map-free-ref", 0, 9, window(0), 0, EINVAL),
    ] {
        s.expect_err(case, call(map, [g, r, gpa, flags, 0]), e);
    }
    let t = throwaway("grant-t");
    s.expect("set-for-a-domu", call(set, [2, t, gpage(2), 0, 0]), 0);
    s.expect_err("map-granted-to-another", call(map, [0, 2, window(0), 0, 0]), EPERM);
    s.expect_err("copy-granted-to-another", call(from, [0, 2, 0, scratch_addr(), 8]), EPERM);
    // dom0 maps its own page and reaches it both ways.
    s.expect("map", call(map, [0, 0, window(0), 0, 0]), 0);
    // SAFETY: mapped just now (writable), and the pool page is dom0's.
    let (seen, wrote) = unsafe {
        let seen = grant::holds(window(0), pattern);
        grant::write(window(0) + 100, b"through the window");
        (seen, grant::holds(pg + 100, b"through the window"))
    };
    s.check("read-through-the-mapping", seen, format_args!("pattern missing"));
    s.check("write-through-the-mapping", wrote, format_args!("not in the page"));
    s.expect_err("map-twice", call(map, [0, 0, window(5), 0, 0]), EEXIST);
    let ro = GRANT_READONLY;
    s.expect_err("map-over-a-mapping", call(map, [0, 1, window(0), ro, 0]), EEXIST);
    let st = grant_status(0);
    s.check("query-mapped", st.is_some_and(|x| x.mapped == 1), format_args!("{st:?}"));
    s.expect_err("revoke-while-mapped", call(revoke, [0, 0, 0, 0, 0]), EBUSY);
    s.expect_err("map-read-only-grant-writable", call(map, [0, 1, window(1), 0, 0]), EPERM);
    s.expect("map-read-only-grant", call(map, [0, 1, window(1), ro, 0]), 0);
    // SAFETY: mapped just now; only read.
    let seen = unsafe { grant::holds(window(1), pattern) };
    s.check("read-the-read-only-mapping", seen, format_args!("pattern missing"));
    s.expect("map-read-only-by-choice", call(map, [0, 3, window(2), GRANT_READONLY, 0]), 0);
    for (case, gpa) in [
        ("unmap-nothing", window(5)),
        ("unmap-misaligned", window(0) + 8),
        ("unmap-ram", pg),
        ("unmap-u64-max", u64::MAX),
    ] {
        s.expect_err(case, call(unmap, [gpa, 0, 0, 0, 0]), EINVAL);
    }
    for (case, gpa) in
        [("unmap", window(0)), ("unmap-read-only", window(1)), ("unmap-3", window(2))]
    {
        s.expect(case, call(unmap, [gpa, 0, 0, 0, 0]), 0);
    }
    s.expect_err("unmap-twice", call(unmap, [window(0), 0, 0, 0, 0]), EINVAL);
    let st = grant_status(0);
    s.check("query-unmapped-grant", st.is_some_and(|x| x.mapped == 0), format_args!("{st:?}"));
    s.expect("revoke", call(revoke, [0, 0, 0, 0, 0]), 0);
    s.expect_err("map-after-revoke", call(map, [0, 0, window(0), 0, 0]), EINVAL);
    for (case, r) in [("revoke-twice", 0), ("revoke-ref-max", GRANT_ENTRIES.into())] {
        s.expect_err(case, call(revoke, [r, 0, 0, 0, 0]), EINVAL);
    }
    // Copies through ref 1 (read-only) and ref 3 (writable).
    let buf = scratch_addr() + 0x1000;
    let n = pattern.len() as u64;
    s.expect("copy-from", call(from, [0, 1, 0, buf, n]), n as i64);
    // SAFETY: dom0's scratch area.
    let seen = unsafe { grant::holds(buf, pattern) };
    s.check("copy-from-brings-the-bytes", seen, format_args!("not copied"));
    s.expect("copy-to", call(to, [0, 3, 4088, buf, 8]), 8);
    // SAFETY: dom0's pool page.
    let seen = unsafe { grant::holds(gpage(3) + 4088, &pattern[..8]) };
    s.check("copy-to-puts-the-bytes", seen, format_args!("not copied"));
    s.expect("copy-to-from-a-module-window", call(to, [0, 3, 0, module, 16]), 16);
    s.expect("copy-empty", call(from, [0, 1, 4096, buf, 0]), 0);
    for (case, op, g, r, off, local, len, e) in [
        ("copy-missing-granter", from, 99, 1, 0, buf, 8, ESRCH),
        ("copy-ref-max", from, 0, GRANT_ENTRIES.into(), 0, buf, 8, EINVAL),
        ("copy-longer-than-a-page", from, 0, 1, 0, buf, 4097, E2BIG),
        ("copy-past-the-page", from, 0, 1, 4090, buf, 8, EINVAL),
        ("copy-offset-u64-max", from, 0, 1, u64::MAX, buf, 1, EINVAL),
        ("copy-free-ref", from, 0, 0, 0, buf, 8, EINVAL),
        ("copy-to-read-only", to, 0, 1, 0, buf, 8, EPERM),
        ("copy-from-into-past-ram", from, 0, 1, 0, ram_end - 4, 8, EFAULT),
        ("copy-from-into-a-module-window", from, 0, 1, 0, module, 8, EFAULT),
        ("copy-from-into-the-window", from, 0, 1, 0, window(0), 8, EFAULT),
        ("copy-to-from-unmapped", to, 0, 3, 0, 0xb000_0000, 8, EFAULT),
    ] {
        s.expect_err(case, call(op, [g, r, off, local, len]), e);
    }
    // The peer destroyed: the grant names nobody, and can be revoked.
    s.expect("destroy-the-peer", op1(Op::DomainDestroy, t), 0);
    let st = grant_status(2);
    s.check(
        "grant-to-a-destroyed-domain-names-nobody",
        st.is_some_and(|x| (x.peer, x.mapped) == (DOMID_INVALID, 0)),
        format_args!("{st:?}"),
    );
    for r in [1, 2, 3] {
        s.expect(&name(format_args!("revoke-{r}")), call(revoke, [r, 0, 0, 0, 0]), 0);
    }
    // Every reference can be used (one page may be granted many times).
    let set_all = (0..u64::from(GRANT_ENTRIES)).filter(|&r| call(set, [r, 0, pg, 0, 0]) == 0);
    s.expect("every-ref-usable", set_all.count() as i64, GRANT_ENTRIES.into());
    // The mapping slots: GRANT_MAPS less dom0's boot-module windows, then ENOSPC.
    let room = u64::from(GRANT_MAPS - boot.info.nr_modules);
    let mapped = (0..room).filter(|&r| call(map, [0, r, window(r), 0, 0]) == 0).count();
    s.expect("maps-up-to-the-slots-left", mapped as i64, room as i64);
    s.expect_err("map-with-no-slot-left", call(map, [0, room, window(room), 0, 0]), ENOSPC);
    let unmapped = (0..room).filter(|&r| call(unmap, [window(r), 0, 0, 0, 0]) == 0).count();
    s.expect("unmap-them-all", unmapped as i64, room as i64);
    let freed = (0..u64::from(GRANT_ENTRIES)).filter(|&r| call(revoke, [r, 0, 0, 0, 0]) == 0);
    s.expect("revoke-them-all", freed.count() as i64, GRANT_ENTRIES.into());
    let after = free_bytes();
    s.check("grant-area-returns-every-frame", after == before, format_args!("{before} -> {after}"));
}

/// The area `grant`, in a frame of its own: `rt_main`'s, which holds the domU suite's console
/// text while dom0's builder runs below it, must stay small (the boot stack is 64 KiB).
#[inline(never)]
fn grant_suite(boot: &Boot, image: Option<&[u8]>, rounds: u32, calls: u64) -> Suite {
    let mut g = Suite::new("grant");
    grant_area(&mut g, boot);
    grant_ro_write(&mut g, image);
    grant_offer(&mut g, image);
    grant_share(&mut g, image);
    grant_storms(&mut g, image, rounds, calls);
    g.verdict();
    g
}

/// Waits until domain `d` prints a line starting with `prefix` (false after 20 s of silence).
fn wait_line(d: u32, prefix: &[u8]) -> bool {
    let hv = guest_rt::hv();
    let mut line: heapless::Vec<u8, 256> = heapless::Vec::new();
    let mut buf = [0u8; 256];
    let mut start = rdtsc();
    while rdtsc().saturating_sub(start) < 20_000_000_000 {
        while let Ok(n @ 1..) = hv.console_read(d, &mut buf) {
            start = rdtsc();
            for &b in &buf[..n as usize] {
                if b != b'\n' {
                    let _ = line.push(b);
                } else if line.starts_with(prefix) {
                    return true;
                } else {
                    line.clear();
                }
            }
        }
        dom0_agent::dm::idle(hv);
    }
    false
}

/// A write through a read-only grant: dom0 grants the `grant` module (`role=ro-write`) a page
/// read-only; the domU reads it through its mapping, then writes: it must be stopped (crashed,
/// access outside its memory) and the page unchanged. The crashed domain still maps the grant
/// (`EBUSY` on revoke) until it is destroyed, which leaves the grant to nobody.
#[inline(never)]
fn grant_ro_write(s: &mut Suite, image: Option<&[u8]>) {
    let before = free_bytes();
    let hv = guest_rt::hv();
    let Some(d) = build_domu(image, "grant-ro", "role=ro-write ref=5") else {
        s.check("ro-write-domu-built", false, format_args!("the grant module could not be run"));
        return;
    };
    // SAFETY: dom0's pool page 1, granted read-only: only dom0 writes it.
    unsafe { grant::write(gpage(1), grant::READ_ONLY) };
    let r = call(Op::GrantSet as u64, [5, d.into(), gpage(1), GRANT_READONLY, 0]);
    s.expect("ro-write-grant", r, 0);
    let _ = hv.domain_unpause(d);
    let mut read_ok = false;
    let info = watch([d], |_, line| read_ok |= line == b"grant: read ok");
    s.check("ro-write-read-through-the-mapping", read_ok, format_args!("no 'read ok'"));
    let crashed = info.is_some_and(|[i]| {
        i.state == DomainState::Crashed as u32
            && i.crash_reason == CrashReason::OutsideMemory as u32
    });
    s.check("write-through-a-read-only-grant-stops-the-domu", crashed, format_args!("{info:?}"));
    // SAFETY: dom0's pool page.
    let intact = unsafe { grant::holds(gpage(1), grant::READ_ONLY) };
    s.check("read-only-page-unchanged", intact, format_args!("written"));
    let st = grant_status(5);
    s.check("crashed-domu-still-maps", st.is_some_and(|x| x.mapped == 1), format_args!("{st:?}"));
    s.expect_err(
        "revoke-mapped-by-a-crashed-domu",
        call(Op::GrantRevoke as u64, [5, 0, 0, 0, 0]),
        EBUSY,
    );
    s.expect("destroy-the-mapping-domu", op1(Op::DomainDestroy, d.into()), 0);
    let st = grant_status(5);
    s.check(
        "grantee-destroyed-while-mapped",
        st.is_some_and(|x| (x.peer, x.mapped) == (DOMID_INVALID, 0)),
        format_args!("{st:?}"),
    );
    s.expect("revoke-after-the-grantee-went", call(Op::GrantRevoke as u64, [5, 0, 0, 0, 0]), 0);
    let after = free_bytes();
    s.check("ro-write-returns-every-frame", after == before, format_args!("{before} -> {after}"));
}

/// The granter destroyed while dom0 maps its page: the `grant` module (`role=offer`) grants dom0
/// a page and sleeps; dom0 maps it, writes through it, destroys the domU, and still finds the
/// page through its mapping with exactly one page of memory held; unmapping frees it.
#[inline(never)]
fn grant_offer(s: &mut Suite, image: Option<&[u8]>) {
    let before = free_bytes();
    let hv = guest_rt::hv();
    let Some(d) = build_domu(image, "grant-offer", "role=offer") else {
        s.check("offer-domu-built", false, format_args!("the grant module could not be run"));
        return;
    };
    let _ = hv.domain_unpause(d);
    s.check("offer-made", wait_line(d, b"grant: offered ref 0"), format_args!("no offer"));
    let at = window(7);
    s.expect("map-a-domus-grant", call(Op::GrantMap as u64, [d.into(), 0, at, 0, 0]), 0);
    // SAFETY: mapped just now (writable).
    let seen = unsafe { grant::holds(at, grant::OFFER) };
    s.check("read-a-domus-page", seen, format_args!("pattern missing"));
    // SAFETY: as above.
    unsafe { grant::write(at + 64, b"dom0 was here") };
    let mut back = [0u8; 13];
    let r = hv.grant_copy_from(d, 0, 64, &mut back);
    s.check("write-seen-by-copy", r == Ok(13) && &back == b"dom0 was here", format_args!("{r:?}"));
    s.expect("destroy-the-granter-while-mapped", op1(Op::DomainDestroy, d.into()), 0);
    // SAFETY: the mapping outlives the granter.
    let kept = unsafe { grant::holds(at, grant::OFFER) && grant::holds(at + 64, &back) };
    s.check("page-kept-for-the-mapping", kept, format_args!("page changed"));
    let held = free_bytes();
    s.check("exactly-one-page-held", held + 4096 == before, format_args!("{before} -> {held}"));
    s.expect_err(
        "copy-from-the-destroyed-granter",
        call(Op::GrantCopyFrom as u64, [d.into(), 0, 0, scratch_addr(), 8]),
        ESRCH,
    );
    s.expect("unmap-the-orphan", call(Op::GrantUnmap as u64, [at, 0, 0, 0, 0]), 0);
    let after = free_bytes();
    s.check("last-unmap-frees-the-page", after == before, format_args!("{before} -> {after}"));
}

/// End to end between two domUs (`role=share` and `role=map`): a pattern read through a
/// mapping and by copy, replies written through the mapping and by copy, each side's verdict.
#[inline(never)]
fn grant_share(s: &mut Suite, image: Option<&[u8]>) {
    let before = free_bytes();
    let hv = guest_rt::hv();
    let b = build_domu(image, "grant-map", "role=map");
    let a = b
        .and_then(|b| build_domu(image, "grant-share", &name(format_args!("role=share peer={b}"))));
    let (Some(a), Some(b)) = (a, b) else {
        s.check("share-domus-built", false, format_args!("{a:?} {b:?}"));
        return;
    };
    let _ = (hv.domain_unpause(b), hv.domain_unpause(a));
    let infos = watch([a, b], |_, line| absorb_domu_line(s, "grant-domu", line));
    let clean = infos.is_some_and(|is| {
        is.iter().all(|i| i.state == DomainState::Shutdown as u32 && i.shutdown_status == 0)
    });
    s.check("share-domus-clean", clean, format_args!("{infos:?}"));
    let _ = (hv.domain_destroy(a), hv.domain_destroy(b));
    let after = free_bytes();
    s.check("share-returns-every-frame", after == before, format_args!("{before} -> {after}"));
}

/// `rounds` rounds of two `grant` domUs storming each other with `calls` random grant
/// operations each; both end holding mappings of each other's page, and dom0 destroys them
/// while mapped, in turn one order and the other; every frame must come back each round.
#[inline(never)]
fn grant_storms(s: &mut Suite, image: Option<&[u8]>, rounds: u32, calls: u64) {
    let before = free_bytes();
    let hv = guest_rt::hv();
    for r in 0..rounds {
        let args = |peer: &str| name(format_args!("role=storm {peer}calls={calls} seed={}", 7 + r));
        let b = build_domu(image, "grant-b", &args(""));
        let a =
            b.and_then(|b| build_domu(image, "grant-a", &args(&name(format_args!("peer={b} ")))));
        let (Some(a), Some(b)) = (a, b) else {
            s.check(
                &name(format_args!("grant-storm-{r}-built")),
                false,
                format_args!("{a:?} {b:?}"),
            );
            break;
        };
        let _ = (hv.domain_unpause(b), hv.domain_unpause(a));
        let infos = watch([a, b], |d, line| {
            if line.starts_with(b"grant-storm:") {
                println!("d{d} {}", core::str::from_utf8(line).unwrap_or("?"));
            }
        });
        let clean = infos.is_some_and(|is| {
            is.iter().all(|i| i.state == DomainState::Shutdown as u32 && i.shutdown_status == 0)
        });
        s.check(
            &name(format_args!("grant-storm-{r}-both-clean")),
            clean,
            format_args!("{infos:?}"),
        );
        let order = if r % 2 == 0 { [a, b] } else { [b, a] };
        let _ = (hv.domain_destroy(order[0]), hv.domain_destroy(order[1]));
        let after = free_bytes();
        s.check(
            &name(format_args!("grant-storm-{r}-returns-every-frame")),
            after == before,
            format_args!("{before} -> {after}"),
        );
    }
}

fn ring3(s: &mut Suite) {
    arch::setup_ring3();
    let insn = guest_rt::hv().insn;
    for op in [Op::Version, Op::PhysInfo, Op::DomainCreate, Op::Shutdown] {
        let r = arch::hypercall_from_ring3(insn, op as u64, [scratch_addr(), 0, 0, 0, 0]);
        s.expect_err(&name(format_args!("ring3-{op:?}")), r, EPERM);
    }
    s.expect("ring0-after-ring3", call(0, [0; 5]), i64::from(abi::abi_version_word()));
}

/// The console text of the domU [`run_domu`] ran last. It lives here, not on the 64 KiB boot
/// stack: `rt_main` holding two such copies while dom0's builder ran below it overflowed the
/// stack into the top entries of the identity map's page directory (the guard page under the
/// stack is not unmapped in guests), which went unnoticed until the grant window, at
/// 0xF000_0000, was the first guest-physical address up there this kernel touched.
static mut DOMU_TEXT: heapless::Vec<u8, 16384> = heapless::Vec::new();

/// Builds a domU named `module` from its boot-module image, runs it to its end, and returns its
/// console text (valid until the next call) and final info.
fn run_domu(
    image: Option<&[u8]>,
    module: &str,
    mem_mib: u64,
    cmdline: &str,
) -> Option<(&'static [u8], DomainInfo)> {
    let d = start_domu(image, module, mem_mib, 1, cmdline)?;
    finish_domu(d, module)
}

/// Builds a domU named `module` with `vcpus` vCPUs from its boot-module image and unpauses it.
fn start_domu(
    image: Option<&[u8]>,
    module: &str,
    mem_mib: u64,
    vcpus: u32,
    cmdline: &str,
) -> Option<u32> {
    let image = image?;
    let hv = guest_rt::hv();
    let spec = DomainSpec {
        name: module,
        mem_bytes: mem_mib << 20,
        vcpus,
        mmu_pages: 0,
        flags: 0,
        cmdline,
        modules: &[],
    };
    let d = builder::build(hv, &spec, image).ok()?;
    hv.domain_unpause(d).ok()?;
    Some(d)
}

/// Waits for domU `d` (built from `module`) to stop, destroys it, and returns its console text
/// (valid until the next call) and final info.
fn finish_domu(d: u32, module: &str) -> Option<(&'static [u8], DomainInfo)> {
    let hv = guest_rt::hv();
    let p = &raw mut DOMU_TEXT;
    // SAFETY: dom0 has one vCPU, and every caller is done with the previous run's text before
    // it calls again.
    let text = unsafe { &mut *p };
    text.clear();
    let mut buf = [0u8; CONSOLE_READ_MAX as usize];
    // The timeout guards against a hang, not a slow machine: it restarts whenever the domain
    // shows progress (console output), so a loaded host (whose TSC under QEMU TCG follows the
    // wall clock) only makes the run longer.
    let mut start = rdtsc();
    let info = loop {
        while let Ok(n @ 1..) = hv.console_read(d, &mut buf) {
            let _ = text.extend_from_slice(&buf[..n as usize]);
            start = rdtsc();
        }
        let i = hv.domain_info(d).ok()?;
        if i.state == DomainState::Shutdown as u32 || i.state == DomainState::Crashed as u32 {
            while let Ok(n @ 1..) = hv.console_read(d, &mut buf) {
                let _ = text.extend_from_slice(&buf[..n as usize]);
            }
            break i;
        }
        if rdtsc().saturating_sub(start) > 20_000_000_000 {
            println!("{module}: timed out (no progress)");
            break i;
        }
        dom0_agent::dm::idle(hv);
    };
    let _ = hv.domain_destroy(d);
    Some((text.as_slice(), info))
}

/// The `platform` guest's checks as cases (`platform: NAME: PASS|FAIL (detail)` lines), its
/// clean shutdown, and a reset through the reset control register ending in reason reboot.
fn platform(s: &mut Suite, image: Option<&[u8]>, hostile: Option<&[u8]>, args: &str) {
    match run_domu(image, "platform", 4, args) {
        Some((text, info)) => {
            let mut cases = 0;
            for line in text.split(|&b| b == b'\n') {
                let Some(rest) = line.strip_prefix(b"platform: ") else { continue };
                let Ok(rest) = core::str::from_utf8(rest) else { continue };
                let Some((case, verdict)) = rest.split_once(": ") else { continue };
                let (ok, detail) = if let Some(d) = verdict.strip_prefix("PASS") {
                    (true, d)
                } else if let Some(d) = verdict.strip_prefix("FAIL") {
                    (false, d)
                } else {
                    continue;
                };
                cases += 1;
                s.check(case, ok, format_args!("{}", detail.trim()));
            }
            let clean = info.state == DomainState::Shutdown as u32 && info.shutdown_status == 0;
            s.check("checks-reported", cases >= 22, format_args!("{cases} checks"));
            s.check("shut-down-with-no-failure", clean, format_args!("{info:?}"));
        }
        None => {
            s.check("ran", false, format_args!("the platform module could not be run"));
        }
    }
    let reboot = abi::hypercall::ShutdownReason::Reboot as u32;
    let reset = run_domu(hostile, "hostile", 4, "attack=reset").map(|(_, i)| i);
    s.check(
        "reset-through-0xcf9-is-reboot",
        reset.is_some_and(|i| {
            i.state == DomainState::Shutdown as u32 && i.shutdown_reason == reboot
        }),
        format_args!("{reset:?}"),
    );
}

/// Random hypercalls from dom0 against throwaway domains; every result must be defined.
fn dom0_storm(s: &mut Suite, calls: u64, seed: u64, spare: Option<u32>) {
    let before = free_bytes();
    let mut rng = Rng::new(seed);
    let mut undefined = 0u64;
    let mut ok = 0u64;
    let ops = [
        Op::Version,
        Op::ConsoleWrite,
        Op::Yield,
        Op::DomainCreate,
        Op::DomainDestroy,
        Op::DomainPause,
        Op::DomainUnpause,
        Op::DomainGetInfo,
        Op::DomainList,
        Op::MmuPagesSet,
        Op::MmuPagesGet,
        Op::MemSet,
        Op::MemWrite,
        Op::VcpuSetState,
        Op::ConsoleRead,
        Op::PhysInfo,
        Op::Stats,
        Op::DomainShutdown,
        Op::ConsoleInput,
        Op::IoreqNext,
        Op::IoreqComplete,
        Op::IrqLevel,
        Op::EvtchnAllocUnbound,
        Op::EvtchnBindInterdomain,
        Op::EvtchnBindVirq,
        Op::EvtchnSend,
        Op::EvtchnClose,
        Op::EvtchnStatus,
        Op::EvtchnSetCallback,
        Op::GrantSet,
        Op::GrantRevoke,
        Op::GrantMap,
        Op::GrantUnmap,
        Op::GrantCopyFrom,
        Op::GrantCopyTo,
        Op::GrantQuery,
    ];
    let mut owned: heapless::Vec<u64, 16> = heapless::Vec::new();
    for i in 0..calls {
        // Keep some throwaway domains alive to aim at.
        if owned.len() < 3 {
            let d = throwaway(&name(format_args!("storm-{i}")));
            if d != 0 {
                let _ = owned.push(d);
            }
        }
        let target = match rng.below(4) {
            0 => rng.next_u64(),
            1 => rng.below(MAX_DOMAINS as u64 + 2),
            _ => owned.get(rng.below(owned.len() as u64) as usize).copied().unwrap_or(1),
        };
        // The domU storm running meanwhile is not a target (`DOMID_INVALID`: `ESRCH`).
        let target = if spare.is_some_and(|d| u64::from(d) == target) {
            DOMID_INVALID.into()
        } else {
            target
        };
        let mut a = [0u64; 5];
        for x in a.iter_mut() {
            *x = match rng.below(7) {
                0 => rng.next_u64(),
                1 => scratch_addr() + rng.below(8192),
                // Low in dom0's RAM but clear of its image, stack and page tables.
                2 => 0x2000 + rng.below(64),
                3 => [0, 1, u64::MAX, CONSOLE_READ_MAX, MEM_WRITE_MAX, MIN_DOMAIN_MEM]
                    [rng.below(6) as usize],
                // Grant-window pages, so that some maps succeed.
                4 => window(rng.below(4)),
                _ => scratch_addr(),
            };
        }
        let mut op = if rng.below(20) == 0 {
            rng.next_u64()
        } else {
            ops[rng.below(ops.len() as u64) as usize] as u64
        };
        if op == Op::Shutdown as u64 {
            // dom0 shutting itself down would end the machine, not test anything.
            op = Op::Version as u64;
        }
        if op == Op::ConsoleWrite as u64 {
            // Keep dom0's log readable: the address is still checked; lengths are the suite's.
            a[1] = 0;
        }
        a[0] = if op == Op::DomainCreate as u64
            || op == Op::DomainList as u64
            || op == Op::PhysInfo as u64
            || op == Op::IoreqNext as u64
        {
            scratch_addr()
        } else {
            target
        };
        // The scratch area sometimes holds a valid create, so creations do happen.
        if op == Op::DomainCreate as u64 && rng.below(2) == 0 {
            let _ = arg(&create_args(&name(format_args!("sc-{i}")), MIN_DOMAIN_MEM));
        }
        let r = call(op, a);
        if r >= 0 {
            ok += 1;
            if op == Op::DomainCreate as u64 && owned.len() < owned.capacity() {
                let _ = owned.push(r as u64);
            }
        } else if Errno::from_code(-r).is_none() {
            undefined += 1;
        }
        if op == Op::DomainDestroy as u64 && r == 0 {
            owned.retain(|&d| d != target);
        }
    }
    // Clean up everything the storm created, and give dom0 its default cap back, its ports
    // closed and its event-channel page back where it was (the storm may have moved it).
    let _ = call(Op::MmuPagesSet as u64, [0, 0, 0, 0, 0]);
    for p in 1..EVTCHN_PORTS {
        let _ = call(Op::EvtchnClose as u64, [p.into(), 0, 0, 0, 0]);
    }
    // Its grant mappings (which may hold a page of a domain destroyed meanwhile) and grants.
    let mut maps = 0;
    for w in 0..4 {
        maps += i32::from(call(Op::GrantUnmap as u64, [window(w), 0, 0, 0, 0]) == 0);
    }
    for r in 0..GRANT_ENTRIES {
        let _ = call(Op::GrantRevoke as u64, [r.into(), 0, 0, 0, 0]);
    }
    let _ = upcall::register(0);
    let mut all = [DomainInfo::new_zeroed(); MAX_DOMAINS as usize];
    if let Ok(n) = guest_rt::hv().domain_list(&mut all) {
        for i in &all[..(n as usize).min(all.len())] {
            if i.domid != 0 && i.name_str() != "storm" {
                let _ = guest_rt::hv().domain_destroy(i.domid);
            }
        }
    }
    println!(
        "storm dom0: {calls} calls (seed {seed:#x}), {ok} succeeded, {undefined} undefined results, {maps} grant mappings left to unmap"
    );
    s.check("dom0-storm-results-defined", undefined == 0, format_args!("{undefined} undefined"));
    // With the domU storm running, its faults take frames meanwhile: the caller checks the
    // two storms together once it is gone.
    if spare.is_none() {
        let after = free_bytes();
        s.check(
            "dom0-storm-leaks-nothing",
            after == before,
            format_args!("{before} -> {after} bytes free"),
        );
    }
    s.expect("dom0-storm-microhv-alive", call(0, [0; 5]), i64::from(abi::abi_version_word()));
}

#[unsafe(no_mangle)]
extern "C" fn rt_main(_eax: u32, ebx: u32) -> ! {
    let boot = guest_rt::start(ebx);
    dom0_agent::dm::init_wall_clock();
    let start_free = free_bytes();
    // Found now: the dom0 storm may scribble over the start page, where the module list is;
    // the modules themselves are read-only.
    let domu_image = boot.module_named("conform-domu").map(|m| m.0);
    let storm_image = boot.module_named("storm").map(|m| m.0);
    let platform_image = boot.module_named("platform").map(|m| m.0);
    let hostile_image = boot.module_named("hostile").map(|m| m.0);
    let evtchn_image = boot.module_named("evtchn").map(|m| m.0);
    let evtchn_rounds: u32 = boot.option("evtchn-rounds").and_then(|v| v.parse().ok()).unwrap_or(3);
    let evtchn_sends: u64 =
        boot.option("evtchn-sends").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let grant_image = boot.module_named("grant").map(|m| m.0);
    let grant_rounds: u32 = boot.option("grant-rounds").and_then(|v| v.parse().ok()).unwrap_or(3);
    let grant_calls: u64 = boot.option("grant-calls").and_then(|v| v.parse().ok()).unwrap_or(2000);
    // Timer rates are exact only where time counts instructions (Bochs).
    let platform_args = if boot.option("strict").is_some() { "strict=1" } else { "" };
    let seed = boot
        .option("seed")
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x5eed);
    let calls: u64 = boot.option("storm").and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let domu_calls: u64 = boot.option("domu-storm").and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let domu_vcpus: u32 = boot
        .option("domu-storm-vcpus")
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAX_VCPUS_PER_DOMAIN);
    let mut s = Suite::new("dom0");
    discovery(&mut s);
    addresses(&mut s, &boot);
    create_cases(&mut s);
    lifecycle(&mut s);
    ring3(&mut s);
    s.verdict();

    let mut total = Suite::new("total");
    total.absorb(s.passed, s.failed);
    let mut e = Suite::new("evtchn");
    let ports = evtchn(&mut e, &boot);
    // A grant of dom0's to itself: the domU's map of it must be refused.
    let gforeign = 60;
    let _ = call(Op::GrantSet as u64, [gforeign, 0, gpage(2), 0, 0]);
    let domu_args = name(format_args!("foreign={} gforeign={gforeign}", ports.foreign));
    match run_domu(domu_image, "conform-domu", 4, &domu_args) {
        // microhv rate-limits a domU's lines in its log: repeat the failures from the ring.
        Some((text, info)) => match parse_verdict(text) {
            Some((p, f)) => {
                for line in text.split(|&b| b == b'\n').filter(|l| l.starts_with(b"FAIL ")) {
                    println!("domu: {}", core::str::from_utf8(line).unwrap_or("?"));
                }
                total.absorb(p, f);
                let clean = info.state == DomainState::Shutdown as u32 && info.shutdown_status == f;
                total.check(
                    "domu-suite-shut-down-with-its-failure-count",
                    clean,
                    format_args!("{info:?}"),
                );
            }
            None => {
                total.check(
                    "domu-suite-verdict",
                    false,
                    format_args!("no verdict (state {})", info.state),
                );
            }
        },
        None => {
            total.check(
                "domu-suite-ran",
                false,
                format_args!("the conform-domu module could not be run"),
            );
        }
    }

    let _ = call(Op::GrantRevoke as u64, [gforeign, 0, 0, 0, 0]);
    e.check(
        "virq-con-ring-on-domu-console",
        upcall::take_pending(ports.con),
        format_args!("not pending"),
    );
    evtchn_wake(&mut e, evtchn_image, &ports);
    evtchn_storms(&mut e, evtchn_image, evtchn_rounds, evtchn_sends);
    e.verdict();
    total.absorb(e.passed, e.failed);

    let g = grant_suite(&boot, grant_image, grant_rounds, grant_calls);
    total.absorb(g.passed, g.failed);

    let mut p = Suite::new("platform");
    platform(&mut p, platform_image, hostile_image, platform_args);
    p.verdict();
    total.absorb(p.passed, p.failed);

    // The two storms at once: the domU's on `domu-storm-vcpus` vCPUs (default 4) hammering
    // hypercalls concurrently (with microhv on several CPUs) while dom0's creates and destroys
    // domains.
    let mut storm = Suite::new("storm");
    let before_storms = free_bytes();
    let mut cmd: heapless::String<64> = heapless::String::new();
    let _ = core::fmt::write(
        &mut cmd,
        format_args!("calls={domu_calls} seed={:#x} vcpus={domu_vcpus}", seed ^ 0xd0),
    );
    let storm_domu = start_domu(storm_image, "storm", 4, domu_vcpus, &cmd);
    dom0_storm(&mut storm, calls, seed, storm_domu);
    match storm_domu.and_then(|d| finish_domu(d, "storm")) {
        Some((text, info)) => {
            let line = conformance::find(text, b"storm domU:").map(|i| &text[i..]).unwrap_or(b"");
            let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
            println!("{}", core::str::from_utf8(line).unwrap_or("?"));
            let ok = info.state == DomainState::Shutdown as u32 && info.shutdown_status == 0;
            storm.check("domu-storm-completed-with-defined-results", ok, format_args!("{info:?}"));
        }
        None => {
            storm.check("domu-storm-ran", false, format_args!("the storm module could not be run"));
        }
    }
    storm.expect("domu-storm-microhv-alive", call(0, [0; 5]), i64::from(abi::abi_version_word()));
    let after_storms = free_bytes();
    storm.check(
        "storms-leak-nothing",
        after_storms == before_storms,
        format_args!("{before_storms} -> {after_storms} bytes free"),
    );
    let end_free = free_bytes();
    storm.check(
        "free-memory-back-to-start",
        end_free == start_free,
        format_args!("{start_free} -> {end_free}"),
    );
    println!("leaked bytes: {}", start_free.saturating_sub(end_free));
    storm.verdict();
    total.absorb(storm.passed, storm.failed);
    total.verdict();
    guest_rt::exit(if total.failed == 0 { 0 } else { 1 })
}
