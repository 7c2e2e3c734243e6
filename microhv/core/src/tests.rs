//! Host conformance tests of the hypercall dispatcher and the exit handling, against the fake
//! backend and simulated memory (`testutil`). Each test names the ABI rule it checks.

mod grant;

use crate::domain::MAX_RAM_SLOTS;
use crate::exit::{Exit, Gprs};
use crate::hv::{DOMAINS, Stop};
use crate::hypercall::Outcome;
use crate::status::StopStatus;
use crate::testutil::{DOM0_MEM, SCRATCH, Step, TestHv, world};
use abi::hypercall::*;
use abi::types::*;
use abi::{Errno, Op};
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

const EPERM: i64 = -1;
const ESRCH: i64 = -3;
const E2BIG: i64 = -7;
const ENOMEM: i64 = -12;
const EFAULT: i64 = -14;
const EBUSY: i64 = -16;
const EEXIST: i64 = -17;
const EINVAL: i64 = -22;
const ENOSPC: i64 = -28;
const ENOSYS: i64 = -38;

/// Issues a hypercall from vCPU 0 of domain `d`; `i64::MIN` if the caller stopped.
fn call(hv: &mut TestHv, d: usize, op: u64, a: [u64; 5]) -> i64 {
    let g = &mut hv.domains[d].vcpus[0].gprs;
    (g.rax, g.rdi, g.rsi, g.rdx, g.r10, g.r8) = (op, a[0], a[1], a[2], a[3], a[4]);
    match hv.dispatch(d, 0) {
        Outcome::Return(r) => r,
        Outcome::Stopped => i64::MIN,
    }
}

fn put(hv: &mut TestHv, d: usize, gpa: u64, bytes: &[u8]) {
    let hpa = hv.guest_range(d, gpa, bytes.len() as u64, true).expect("test address mapped");
    crate::mem::PhysMem::write(&mut hv.mem, hpa, bytes);
}

/// What the guest would read (dirty RAM reads as zeros).
fn get_bytes(hv: &TestHv, d: usize, gpa: u64, len: usize) -> Vec<u8> {
    let hpa = hv.guest_hpa(d, gpa, len as u64, false).expect("test address mapped");
    let mut v = std::vec![0; len];
    hv.read_clean(hpa, &mut v);
    v
}

fn get<T: FromBytes>(hv: &TestHv, d: usize, gpa: u64) -> T {
    T::read_from_bytes(&get_bytes(hv, d, gpa, size_of::<T>())).expect("size")
}

fn create_args(name: &str, mem: u64, vcpus: u32, mmu: u64) -> DomainCreate {
    DomainCreate {
        name: name_field(name).expect("valid test name"),
        mem_bytes: mem,
        mmu_pages: mmu,
        vcpus,
        flags: 0,
    }
}

fn create_with(hv: &mut TestHv, c: &DomainCreate) -> i64 {
    put(hv, 0, SCRATCH, c.as_bytes());
    call(hv, 0, Op::DomainCreate as u64, [SCRATCH, 0, 0, 0, 0])
}

fn create(hv: &mut TestHv, name: &str) -> usize {
    let r = create_with(hv, &create_args(name, 2 << 20, 1, 0));
    assert!(r > 0, "create {name}: {r}");
    r as usize
}

fn set_state(hv: &mut TestHv, d: usize, vcpu: u64, s: &VcpuState) -> i64 {
    put(hv, 0, SCRATCH + 0x1000, s.as_bytes());
    call(hv, 0, Op::VcpuSetState as u64, [d as u64, vcpu, SCRATCH + 0x1000, 0, 0])
}

fn flat32(rip: u64) -> VcpuState {
    VcpuState {
        mode: VCPU_MODE_FLAT32,
        flags: 0,
        rip,
        rsp: 0x8000,
        rax: 0,
        rbx: 0x1000,
        rcx: 0,
        rdx: 0,
        rsi: 0,
        rdi: 0,
    }
}

/// A created domain with vCPU 0 set, unpaused.
fn running(hv: &mut TestHv, name: &str) -> usize {
    let d = create(hv, name);
    assert_eq!(set_state(hv, d, 0, &flat32(0x10_0000)), 0);
    assert_eq!(call(hv, 0, Op::DomainUnpause as u64, [d as u64, 0, 0, 0, 0]), 0);
    d
}

fn info(hv: &mut TestHv, d: u64) -> DomainInfo {
    assert_eq!(call(hv, 0, Op::DomainGetInfo as u64, [d, SCRATCH, 0, 0, 0]), 0);
    get(hv, 0, SCRATCH)
}

// ---- discovery and dispatch -----------------------------------------------------------------

#[test]
fn version_is_the_abi_word_for_everyone() {
    let mut hv = world();
    let d = running(&mut hv, "u");
    for caller in [0, d] {
        let r = call(&mut hv, caller, Op::Version as u64, [u64::MAX; 5]);
        assert_eq!(r, i64::from(abi::abi_version_word()));
    }
}

#[test]
fn console_input_reaches_a_domus_com1_only_from_dom0() {
    let mut hv = world();
    let d = running(&mut hv, "u");
    put(&mut hv, 0, SCRATCH, b"ls\n");
    let op = Op::ConsoleInput as u64;
    // FIFO off: the receiver takes one byte; the rest is for later.
    assert_eq!(call(&mut hv, 0, op, [d as u64, SCRATCH, 3, 0, 0]), 1);
    assert_eq!(call(&mut hv, 0, op, [d as u64, SCRATCH, 3, 0, 0]), 0);
    assert_eq!(call(&mut hv, 0, op, [0, SCRATCH, 3, 0, 0]), EPERM, "not into dom0");
    assert_eq!(call(&mut hv, 0, op, [99, SCRATCH, 3, 0, 0]), ESRCH);
    assert_eq!(call(&mut hv, 0, op, [d as u64, SCRATCH, CONSOLE_INPUT_MAX + 1, 0, 0]), E2BIG);
    assert_eq!(call(&mut hv, 0, op, [d as u64, u64::MAX - 1, 3, 0, 0]), EFAULT);
    assert_eq!(call(&mut hv, d, op, [d as u64, SCRATCH, 3, 0, 0]), EPERM, "dom0 only");
    let com1 = &mut hv.domains[d].platform.as_mut().expect("platform").com1;
    assert_eq!(com1.read(0), b'l');
}

#[test]
fn unknown_operations_are_enosys() {
    let mut hv = world();
    let d = running(&mut hv, "u");
    for op in [0x05, 0x0f, 0x23, 0x2f, 0x100, 1 << 32, u64::MAX] {
        assert_eq!(call(&mut hv, 0, op, [0; 5]), ENOSYS, "op {op:#x} from dom0");
        assert_eq!(call(&mut hv, d, op, [0; 5]), ENOSYS, "op {op:#x} from a domU");
    }
}

#[test]
fn every_dom0_operation_is_eperm_from_a_domu() {
    let mut hv = world();
    let d = running(&mut hv, "u");
    let before = info(&mut hv, d as u64);
    for op in Op::ALL.iter().filter(|o| o.dom0_only()) {
        // Arguments that would succeed from dom0 where that is easy: the domU itself.
        let r = call(&mut hv, d, *op as u64, [d as u64, 0x2000, 0x2000, 16, 0]);
        assert_eq!(r, EPERM, "{op:?}");
    }
    let after = info(&mut hv, d as u64);
    assert_eq!((after.state, after.mem_bytes), (before.state, before.mem_bytes));
}

#[test]
fn a_hypercall_from_ring_3_is_eperm() {
    let mut hv = world();
    let mut g = Gprs { rax: Op::PhysInfo as u64, rdi: SCRATCH, ..Gprs::default() };
    g.rsi = 0;
    hv.backend.push(0, 0, Step { exit: Exit::Hypercall, gprs: Some(g), cpl: 3 });
    hv.backend.push(0, 0, Step { exit: Exit::TripleFault, gprs: None, cpl: 0 });
    let stop = hv.run();
    assert_eq!(stop.status, StopStatus::Dom0Crashed);
    assert_eq!(hv.domains[0].vcpus[0].gprs.rax as i64, EPERM);
}

// ---- console ------------------------------------------------------------------------------------

#[test]
fn console_write_and_read() {
    let mut hv = world();
    let d = running(&mut hv, "u");
    put(&mut hv, d, 0x3000, b"hello\n");
    assert_eq!(call(&mut hv, d, Op::ConsoleWrite as u64, [0x3000, 6, 0, 0, 0]), 6);
    assert_eq!(call(&mut hv, d, Op::ConsoleWrite as u64, [0x3000, 0, 0, 0, 0]), 0);
    let max = CONSOLE_WRITE_MAX;
    assert_eq!(call(&mut hv, d, Op::ConsoleWrite as u64, [0x3000, max, 0, 0, 0]), max as i64);
    assert_eq!(call(&mut hv, d, Op::ConsoleWrite as u64, [0x3000, max + 1, 0, 0, 0]), E2BIG);
    assert_eq!(call(&mut hv, 0, Op::ConsoleRead as u64, [d as u64, SCRATCH, 4, 0, 0]), 4);
    assert_eq!(get_bytes(&hv, 0, SCRATCH, 4), b"hell");
    let r = call(&mut hv, 0, Op::ConsoleRead as u64, [d as u64, SCRATCH, CONSOLE_READ_MAX, 0, 0]);
    assert_eq!(r, 2 + max as i64);
    let big = CONSOLE_READ_MAX + 1;
    assert_eq!(call(&mut hv, 0, Op::ConsoleRead as u64, [d as u64, SCRATCH, big, 0, 0]), E2BIG);
    assert_eq!(call(&mut hv, 0, Op::ConsoleRead as u64, [99, SCRATCH, 1, 0, 0]), ESRCH);
}

#[test]
fn bad_guest_addresses_are_efault() {
    let mut hv = world();
    let d = running(&mut hv, "u");
    let mem = 2u64 << 20;
    for (gpa, len) in [
        (mem, 1),          // just past the end of memory
        (mem - 2, 4),      // straddling the end
        (0xc000_0000, 8),  // unmapped hole
        (u64::MAX - 3, 8), // overflowing
        (u64::MAX, 1),
        (1 << 52, 1),
    ] {
        let r = call(&mut hv, d, Op::ConsoleWrite as u64, [gpa, len, 0, 0, 0]);
        assert_eq!(r, EFAULT, "console write at {gpa:#x}+{len}");
    }
    // Structure arguments: unmapped, straddling, overflowing → EFAULT; misaligned → EINVAL.
    for gpa in [DOM0_MEM, DOM0_MEM - 8, u64::MAX - 7] {
        assert_eq!(call(&mut hv, 0, Op::PhysInfo as u64, [gpa, 0, 0, 0, 0]), EFAULT, "{gpa:#x}");
        assert_eq!(call(&mut hv, 0, Op::DomainCreate as u64, [gpa, 0, 0, 0, 0]), EFAULT);
    }
    assert_eq!(call(&mut hv, 0, Op::PhysInfo as u64, [SCRATCH + 4, 0, 0, 0, 0]), EINVAL);
    // Results are never written over the caller's page tables' neighbour: ranges are checked
    // whole before anything is written.
    let before = get_bytes(&hv, 0, DOM0_MEM - 16, 16);
    assert_eq!(call(&mut hv, 0, Op::DomainGetInfo as u64, [0, DOM0_MEM - 16, 0, 0, 0]), EFAULT);
    assert_eq!(get_bytes(&hv, 0, DOM0_MEM - 16, 16), before);
}

// ---- domain lifecycle -----------------------------------------------------------------------

#[test]
fn create_validates_every_field() {
    let mut hv = world();
    let ok = create_args("a", 2 << 20, 1, 0);
    let mut cases: Vec<(DomainCreate, i64)> = Vec::new();
    let mut c = ok;
    c.name = [0; 32];
    cases.push((c, EINVAL)); // empty name
    let mut c = ok;
    c.name[0] = 0x07;
    cases.push((c, EINVAL)); // not printable
    let mut c = ok;
    c.name[5] = b'x';
    cases.push((c, EINVAL)); // a byte after the first NUL
    let mut c = ok;
    c.flags = 4;
    cases.push((c, EINVAL));
    let mut c = ok;
    c.flags = u32::MAX;
    cases.push((c, EINVAL));
    let mut c = ok;
    c.vcpus = 0;
    cases.push((c, EINVAL));
    let mut c = ok;
    c.vcpus = MAX_VCPUS_PER_DOMAIN + 1;
    cases.push((c, E2BIG));
    let mut c = ok;
    c.vcpus = u32::MAX;
    cases.push((c, E2BIG));
    for (mem, e) in [(0, EINVAL), (MIN_DOMAIN_MEM - 4096, EINVAL), ((2 << 20) + 1, EINVAL)] {
        let mut c = ok;
        c.mem_bytes = mem;
        cases.push((c, e));
    }
    for mem in [MAX_DOMAIN_MEM + 4096, !0xfff] {
        let mut c = ok;
        c.mem_bytes = mem;
        cases.push((c, E2BIG));
    }
    let mut c = ok;
    c.mmu_pages = mmu::MIN_MMU_PAGES - 1;
    cases.push((c, EINVAL));
    let mut c = ok;
    c.mmu_pages = mmu::MAX_MMU_PAGES + 1;
    cases.push((c, E2BIG));
    let free = hv.frames.free_frames();
    for (c, e) in cases {
        assert_eq!(create_with(&mut hv, &c), e, "{c:?}");
    }
    assert_eq!(hv.frames.free_frames(), free, "a refused create leaks nothing");
    // Boundary values that are valid.
    let mut c = create_args(&"n".repeat(32), MIN_DOMAIN_MEM, MAX_VCPUS_PER_DOMAIN, 0);
    c.mmu_pages = mmu::MIN_MMU_PAGES;
    assert!(create_with(&mut hv, &c) > 0);
    assert_eq!(create_with(&mut hv, &c), EEXIST);
}

#[test]
fn create_fails_cleanly_when_memory_or_slots_run_out() {
    let mut hv = world();
    let free = hv.frames.free_frames();
    assert_eq!(create_with(&mut hv, &create_args("big", 1 << 30, 1, 0)), ENOMEM);
    assert_eq!(hv.frames.free_frames(), free);
    let mut made = Vec::new();
    for i in 1..DOMAINS {
        let r = create_with(&mut hv, &create_args(&std::format!("d{i}"), 2 << 20, 1, 0));
        assert!(r > 0, "domain {i}: {r}");
        made.push(r as u64);
    }
    assert_eq!(create_with(&mut hv, &create_args("one-too-many", 2 << 20, 1, 0)), ENOSPC);
    for d in made {
        assert_eq!(call(&mut hv, 0, Op::DomainDestroy as u64, [d, 0, 0, 0, 0]), 0);
    }
    assert_eq!(hv.frames.free_frames(), free, "destroy returns every frame");
    assert_eq!(hv.backend.live, 1, "only dom0's vCPU is left");
}

#[test]
fn lifecycle_and_state_misuse() {
    let mut hv = world();
    let d = create(&mut hv, "u") as u64;
    let op = |o: Op| o as u64;
    assert_eq!(info(&mut hv, d).state, DomainState::Created as u32);
    assert_eq!(call(&mut hv, 0, op(Op::DomainPause), [d, 0, 0, 0, 0]), EBUSY);
    assert_eq!(call(&mut hv, 0, op(Op::DomainUnpause), [d, 0, 0, 0, 0]), EINVAL, "no state yet");
    assert_eq!(set_state(&mut hv, d as usize, 0, &flat32(0x10_0000)), 0);
    assert_eq!(call(&mut hv, 0, op(Op::DomainUnpause), [d, 0, 0, 0, 0]), 0);
    assert_eq!(call(&mut hv, 0, op(Op::DomainUnpause), [d, 0, 0, 0, 0]), EBUSY, "running");
    assert_eq!(set_state(&mut hv, d as usize, 0, &flat32(0)), EBUSY, "state after start");
    assert_eq!(call(&mut hv, 0, op(Op::DomainPause), [d, 0, 0, 0, 0]), 0);
    assert_eq!(info(&mut hv, d).state, DomainState::Paused as u32);
    assert_eq!(call(&mut hv, 0, op(Op::DomainPause), [d, 0, 0, 0, 0]), EBUSY, "paused");
    assert_eq!(call(&mut hv, 0, op(Op::DomainUnpause), [d, 0, 0, 0, 0]), 0);
    assert_eq!(call(&mut hv, 0, op(Op::DomainShutdown), [d, 3, 0, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, 0, op(Op::DomainShutdown), [d, 0, 1 << 32, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, 0, op(Op::DomainShutdown), [d, 1, 42, 0, 0]), 0);
    let i = info(&mut hv, d);
    assert_eq!((i.state, i.shutdown_reason, i.shutdown_status), (3, 1, 42));
    assert_eq!(call(&mut hv, 0, op(Op::DomainShutdown), [d, 0, 0, 0, 0]), EBUSY, "stopped");
    assert_eq!(call(&mut hv, 0, op(Op::DomainUnpause), [d, 0, 0, 0, 0]), EBUSY, "stopped");
    assert_eq!(call(&mut hv, 0, op(Op::MmuPagesSet), [d, 0, 0, 0, 0]), EBUSY, "stopped");
    assert_eq!(call(&mut hv, 0, op(Op::DomainDestroy), [d, 0, 0, 0, 0]), 0);
    assert_eq!(call(&mut hv, 0, op(Op::DomainDestroy), [d, 0, 0, 0, 0]), ESRCH, "twice");
    assert_eq!(call(&mut hv, 0, op(Op::DomainGetInfo), [d, SCRATCH, 0, 0, 0]), ESRCH);
}

#[test]
fn dom0_cannot_be_the_target_of_destructive_operations() {
    let mut hv = world();
    for op in [
        Op::DomainDestroy,
        Op::DomainPause,
        Op::DomainUnpause,
        Op::DomainShutdown,
        Op::MemSet,
        Op::MemWrite,
        Op::VcpuSetState,
    ] {
        assert_eq!(call(&mut hv, 0, op as u64, [0, 4 << 20, SCRATCH, 16, 0]), EPERM, "{op:?}");
    }
    assert!(hv.domains[0].runnable());
}

#[test]
fn domids_out_of_range_are_esrch() {
    let mut hv = world();
    for domid in [1, DOMAINS as u64 - 1, DOMAINS as u64, u32::MAX as u64 + 1, u64::MAX] {
        for op in [Op::DomainDestroy, Op::DomainPause, Op::MmuPagesGet, Op::DomainGetInfo] {
            assert_eq!(call(&mut hv, 0, op as u64, [domid, SCRATCH, 0, 0, 0]), ESRCH);
        }
    }
}

#[test]
fn shutdown_of_self() {
    let mut hv = world();
    let d = running(&mut hv, "u");
    assert_eq!(call(&mut hv, d, Op::Shutdown as u64, [3, 0, 0, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, d, Op::Shutdown as u64, [0, 1 << 32, 0, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, d, Op::Shutdown as u64, [2, 7, 0, 0, 0]), i64::MIN);
    let i = info(&mut hv, d as u64);
    assert_eq!((i.state, i.shutdown_reason, i.shutdown_status), (3, 2, 7));
    assert_eq!(i.crash_reason, CrashReason::GuestRequested as u32);
}

#[test]
fn structures_may_cross_from_one_memory_slot_into_the_next() {
    let cfg = mmu::Config { format: mmu::Format::Ept, large_2m: true, large_1g: false };
    let mut hv = std::boxed::Box::new(crate::hv::Hv::new(
        crate::testutil::FakeBackend::default(),
        crate::testutil::SimMem::default(),
        cfg,
    ));
    hv.frames.add_free_range(1 << 20, 64 << 20);
    // A reserved frame every 4 MiB: no run of host memory is long enough for dom0's 8 MiB.
    for mib in (4..64).step_by(4) {
        hv.frames.reserve_range(mib << 20, (mib << 20) + 4096);
    }
    let img = abi::testutil::pvh_image(0x10_0000, &[0xf4; 64], 0x1000, 0x10_0000);
    hv.build_dom0(&img, "test", DOM0_MEM, &[]).expect("dom0 builds from several runs");
    let first = hv.domains[0].mmu.slot(0).expect("slot 0");
    assert!(first.size < DOM0_MEM, "dom0's RAM is split: {first:?}");
    let boundary = first.gpa + first.size;
    let at = boundary - 16;
    assert_eq!(call(&mut hv, 0, Op::PhysInfo as u64, [at, 0, 0, 0, 0]), 0);
    let p: PhysInfo = get_across(&hv, 0, at);
    assert_eq!(p.max_domains, MAX_DOMAINS);
    // And as an IN structure.
    let c = create_args("across", 2 << 20, 1, 0);
    put_across(&mut hv, 0, at, c.as_bytes());
    assert!(call(&mut hv, 0, Op::DomainCreate as u64, [at, 0, 0, 0, 0]) > 0);
}

/// Reads a `T` at `gpa` of domain `d`, a byte at a time (it may cross slots).
fn get_across<T: FromBytes>(hv: &TestHv, d: usize, gpa: u64) -> T {
    let bytes: Vec<u8> =
        (0..size_of::<T>() as u64).map(|i| get_bytes(hv, d, gpa + i, 1)[0]).collect();
    T::read_from_bytes(&bytes).expect("size")
}

/// Writes bytes at `gpa` of domain `d`, a byte at a time (they may cross slots).
fn put_across(hv: &mut TestHv, d: usize, gpa: u64, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        put(hv, d, gpa + i as u64, &[*b]);
    }
}

// ---- info, list, physinfo, stats --------------------------------------------------------------

#[test]
fn getinfo_list_physinfo_and_stats() {
    let mut hv = world();
    let a = running(&mut hv, "alpha");
    let b = create(&mut hv, "beta");
    let i = info(&mut hv, a as u64);
    assert_eq!((i.domid, i.name_str(), i.vcpus, i.mem_bytes), (a as u32, "alpha", 1, 2 << 20));
    assert_eq!(i.flags, 0);
    assert!(i.mmu_max >= mmu::MIN_MMU_PAGES);
    let d0 = info(&mut hv, 0);
    assert_eq!((d0.flags, d0.mem_bytes), (DOMINFO_PRIVILEGED, DOM0_MEM));

    assert_eq!(call(&mut hv, 0, Op::DomainList as u64, [SCRATCH, 0, 0, 0, 0]), 3);
    assert_eq!(call(&mut hv, 0, Op::DomainList as u64, [SCRATCH, 2, 0, 0, 0]), 3);
    let second: DomainInfo = get(&hv, 0, SCRATCH + 128);
    assert_eq!(second.domid, a as u32);
    assert_eq!(call(&mut hv, 0, Op::DomainList as u64, [SCRATCH, u64::MAX, 0, 0, 0]), 3);
    let third: DomainInfo = get(&hv, 0, SCRATCH + 256);
    assert_eq!(third.name_str(), "beta");
    assert_eq!(third.domid, b as u32);
    assert_eq!(call(&mut hv, 0, Op::DomainList as u64, [DOM0_MEM - 128, 2, 0, 0, 0]), EFAULT);
    assert_eq!(call(&mut hv, 0, Op::DomainList as u64, [SCRATCH + 1, 2, 0, 0, 0]), EINVAL);

    assert_eq!(call(&mut hv, 0, Op::PhysInfo as u64, [SCRATCH, 0, 0, 0, 0]), 0);
    let p: PhysInfo = get(&hv, 0, SCRATCH);
    assert_eq!(p.free_bytes, hv.frames.free_frames() * 4096);
    assert_eq!((p.domains, p.max_domains, p.cpus), (3, MAX_DOMAINS, 1));
    assert_eq!(p.mmu_pages_floor, mmu::MIN_MMU_PAGES);

    assert_eq!(call(&mut hv, 0, Op::Stats as u64, [a as u64, SCRATCH, 0, 0, 0]), 0);
    let s: DomainStats = get(&hv, 0, SCRATCH);
    assert_eq!(s.domid, a as u32);
    assert_eq!(s.mmu_max, i.mmu_max);
}

// ---- MMU pages and memory ---------------------------------------------------------------------

#[test]
fn mmu_pages_set_and_get() {
    let mut hv = world();
    let d = create(&mut hv, "u") as u64;
    let default = call(&mut hv, 0, Op::MmuPagesGet as u64, [d, 0, 0, 0, 0]);
    assert_eq!(default as u64, mmu::MIN_MMU_PAGES.max(512 * 20 / 1000));
    let floor = mmu::MIN_MMU_PAGES;
    assert_eq!(call(&mut hv, 0, Op::MmuPagesSet as u64, [d, floor - 1, 0, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, 0, Op::MmuPagesSet as u64, [d, u64::MAX, 0, 0, 0]), E2BIG);
    assert_eq!(call(&mut hv, 0, Op::MmuPagesSet as u64, [d, 100, 0, 0, 0]), 0);
    assert_eq!(call(&mut hv, 0, Op::MmuPagesGet as u64, [d, 0, 0, 0, 0]), 100);
    assert_eq!(info(&mut hv, d).mmu_requested, 100);
    assert_eq!(call(&mut hv, 0, Op::MmuPagesSet as u64, [d, 0, 0, 0, 0]), 0);
    assert_eq!(call(&mut hv, 0, Op::MmuPagesGet as u64, [d, 0, 0, 0, 0]), default);
    // dom0 may cap itself.
    assert_eq!(call(&mut hv, 0, Op::MmuPagesSet as u64, [0, floor, 0, 0, 0]), 0);
}

#[test]
fn mem_set_grows_and_shrinks() {
    let mut hv = world();
    let d = create(&mut hv, "u") as u64;
    // Frames not used for the domain's RAM (the MMU keeps per-slot metadata in frames too).
    let not_ram = |hv: &TestHv| hv.frames.free_frames() + hv.domains[d as usize].mmu.frames_held();
    let free = not_ram(&hv);
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [d, 4 << 20, 0, 0, 0]), 0);
    assert_eq!(info(&mut hv, d).mem_bytes, 4 << 20);
    assert_eq!(not_ram(&hv), free - 512);
    assert!(hv.guest_range(d as usize, (4 << 20) - 8, 8, true).is_some());
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [d, 3 << 20, 0, 0, 0]), 0);
    assert_eq!(not_ram(&hv), free - 256);
    assert!(hv.guest_range(d as usize, 3 << 20, 8, true).is_none());
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [d, 1 << 20, 0, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [d, (3 << 20) + 1, 0, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [d, !0xfff, 0, 0, 0]), E2BIG);
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [d, MAX_DOMAIN_MEM, 0, 0, 0]), ENOMEM);
    let r = running(&mut hv, "r") as u64;
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [r, 4 << 20, 0, 0, 0]), EBUSY);
}

#[test]
fn mem_write_copies_into_the_domain() {
    let mut hv = world();
    let d = create(&mut hv, "u") as u64;
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    put(&mut hv, 0, SCRATCH, &data);
    let len = data.len() as u64;
    let w = |hv: &mut TestHv, dst: u64, src: u64, len: u64| {
        call(hv, 0, Op::MemWrite as u64, [d, dst, src, len, 0])
    };
    assert_eq!(w(&mut hv, 0x10_0ff0, SCRATCH, len), len as i64);
    assert_eq!(get_bytes(&hv, d as usize, 0x10_0ff0, data.len()), data);
    assert_eq!(w(&mut hv, 0x10_0000, SCRATCH, 0), 0);
    assert_eq!(w(&mut hv, 0x10_0000, SCRATCH, MEM_WRITE_MAX + 1), E2BIG);
    assert_eq!(w(&mut hv, (2 << 20) - 8, SCRATCH, 16), EFAULT, "past the target's memory");
    assert_eq!(w(&mut hv, 0, DOM0_MEM - 8, 16), EFAULT, "past dom0's memory");
    assert_eq!(w(&mut hv, u64::MAX - 7, SCRATCH, 16), EFAULT, "overflow");
    assert_eq!(set_state(&mut hv, d as usize, 0, &flat32(0x10_0000)), 0);
    assert_eq!(call(&mut hv, 0, Op::DomainUnpause as u64, [d, 0, 0, 0, 0]), 0);
    assert_eq!(w(&mut hv, 0x10_0000, SCRATCH, 16), EBUSY, "running");
}

#[test]
fn vcpu_state_is_validated() {
    let mut hv = world();
    let d = create_with(&mut hv, &create_args("two", 2 << 20, 2, 0)) as usize;
    assert_eq!(set_state(&mut hv, d, 2, &flat32(0x10_0000)), EINVAL, "no vCPU 2");
    assert_eq!(set_state(&mut hv, d, u64::MAX, &flat32(0x10_0000)), EINVAL);
    let mut s = flat32(0x10_0000);
    s.mode = 2;
    assert_eq!(set_state(&mut hv, d, 0, &s), EINVAL);
    let mut s = flat32(0x10_0000);
    s.flags = 1;
    assert_eq!(set_state(&mut hv, d, 0, &s), EINVAL);
    assert_eq!(set_state(&mut hv, d, 0, &flat32(1 << 32)), EINVAL);
    let mut s = flat32(0x10_0000);
    s.rbx = u64::MAX;
    assert_eq!(set_state(&mut hv, d, 0, &s), EINVAL);
    let r = call(&mut hv, 0, Op::VcpuSetState as u64, [d as u64, 0, SCRATCH + 4, 0, 0]);
    assert_eq!(r, EINVAL, "misaligned");
    let r = call(&mut hv, 0, Op::VcpuSetState as u64, [d as u64, 0, DOM0_MEM, 0, 0]);
    assert_eq!(r, EFAULT);
    assert_eq!(set_state(&mut hv, d, 1, &flat32(0x10_0100)), 0);
    assert_eq!(hv.domains[d].vcpus[1].arch.as_ref().map(|v| v.rip), Some(0x10_0100));
}

// ---- exits handled by the run loop ---------------------------------------------------------------

fn run_until_stop(hv: &mut TestHv) -> Stop {
    hv.run()
}

#[test]
fn dom0_triple_fault_stops_the_machine_with_a_crash() {
    let mut hv = world();
    hv.backend.push(0, 0, Step { exit: Exit::TripleFault, gprs: None, cpl: 0 });
    let stop = run_until_stop(&mut hv);
    assert_eq!(stop.status, StopStatus::Dom0Crashed);
    assert!(stop.reason.contains("triple fault"), "{}", stop.reason);
    assert_eq!(hv.domains[0].crash, CrashReason::TripleFault);
}

#[test]
fn dom0_poweroff_stops_the_machine_ok() {
    let mut hv = world();
    let g = Gprs { rax: Op::Shutdown as u64, rdi: 0, rsi: 0, ..Gprs::default() };
    hv.backend.push(0, 0, Step { exit: Exit::Hypercall, gprs: Some(g), cpl: 0 });
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let mut hv = world();
    let g = Gprs { rax: Op::Shutdown as u64, rdi: 0, rsi: 9, ..Gprs::default() };
    hv.backend.push(0, 0, Step { exit: Exit::Hypercall, gprs: Some(g), cpl: 0 });
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Dom0Failed);
}

#[test]
fn a_crashing_domu_leaves_dom0_running() {
    let mut hv = world();
    let d = running(&mut hv, "bad");
    hv.backend.push(d as u32, 0, Step { exit: Exit::TripleFault, gprs: None, cpl: 0 });
    dom0_yields_then_powers_off(&mut hv, 3);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    assert_eq!(hv.domains[d].state, Some(DomainState::Crashed));
    assert_eq!(hv.domains[d].crash, CrashReason::TripleFault);
}

fn push(hv: &mut TestHv, d: u32, exit: Exit, g: Gprs) {
    hv.backend.push(d, 0, Step { exit, gprs: Some(g), cpl: 0 });
}

/// dom0 yields `n` times, then powers off.
fn dom0_yields_then_powers_off(hv: &mut TestHv, n: usize) {
    for _ in 0..n {
        push(hv, 0, Exit::Hypercall, Gprs { rax: Op::Yield as u64, ..Gprs::default() });
    }
    push(hv, 0, Exit::Hypercall, Gprs { rax: Op::Shutdown as u64, ..Gprs::default() });
}

#[test]
fn exits_the_backend_completed_are_counted() {
    let mut hv = world();
    let d = running(&mut hv, "u");
    hv.backend.completed = [5, 7, 3];
    hv.backend.push(d as u32, 0, Step { exit: Exit::TripleFault, gprs: None, cpl: 0 });
    dom0_yields_then_powers_off(&mut hv, 1);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    // dom0 ran first and reported them: they are dom0's.
    let c = hv.domains[0].counters;
    assert_eq!(c.hypercalls, 5 + 2, "five completed, two dispatched");
    assert_eq!(c.exits[ExitReason::Cpuid as usize], 7);
    assert_eq!(c.exits[ExitReason::Hypercall as usize], 5 + 2);
    assert_eq!(c.exits[ExitReason::NestedPageFault as usize], 3);
}

#[test]
fn cpuid_msr_io_and_cr_exits() {
    let mut hv = world();
    let d = running(&mut hv, "u") as u32;
    push(&mut hv, d, Exit::Cpuid, Gprs { rax: 0x4000_0001, ..Gprs::default() });
    hv.backend.push(d, 0, Step { exit: Exit::TripleFault, gprs: None, cpl: 0 });
    dom0_yields_then_powers_off(&mut hv, 4);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let g = hv.domains[d as usize].vcpus[0].gprs;
    assert_eq!((g.rax as u32, g.rbx as u32), (abi::abi_version_word(), d));

    // MSRs: EFER is emulated, an unknown MSR gets #GP, VMX MSRs get #GP.
    let mut hv = world();
    let d = running(&mut hv, "u") as u32;
    let wr =
        |idx: u64, v: u64| Gprs { rcx: idx, rax: v & 0xffff_ffff, rdx: v >> 32, ..Gprs::default() };
    push(&mut hv, d, Exit::WrMsr, wr(0xc000_0080, 1 << 8));
    push(&mut hv, d, Exit::WrMsr, wr(0xc000_0080, 1 << 12)); // SVME: refused
    push(&mut hv, d, Exit::RdMsr, wr(0x480, 0)); // IA32_VMX_BASIC: refused
    push(&mut hv, d, Exit::RdMsr, wr(0x1b, 0));
    push(&mut hv, d, Exit::CrWrite { cr: 4, value: 1 << 13 }, Gprs::default()); // VMXE: refused
    push(&mut hv, d, Exit::CrWrite { cr: 0, value: 0x8000_0000 }, Gprs::default()); // PG w/o PE
    push(&mut hv, d, Exit::InvalidOpcode, Gprs::default());
    push(
        &mut hv,
        d,
        Exit::Io { port: 0x60, size: 1, write: false, string: false, rep: false },
        Gprs { rax: 0x1234, ..Gprs::default() },
    );
    push(
        &mut hv,
        d,
        Exit::Io { port: 0xf4, size: 1, write: true, string: false, rep: false },
        Gprs { rax: 0x2a, ..Gprs::default() },
    );
    dom0_yields_then_powers_off(&mut hv, 12);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let v = hv.domains[d as usize].vcpus[0].arch.as_ref().expect("vcpu");
    use crate::exit::Event::*;
    assert_eq!(
        v.injected,
        [GeneralProtection, GeneralProtection, GeneralProtection, GeneralProtection, InvalidOpcode]
    );
    assert_eq!(v.regs.get("efer"), Some(&(1 << 8)));
    assert_eq!(hv.domains[d as usize].state, Some(DomainState::Shutdown));
    assert_eq!(hv.domains[d as usize].shutdown, (0, 0x2a));
}

#[test]
fn turning_on_pae_paging_loads_the_pdptes_or_raises_gp() {
    // Guest CR3 is 0 in the fake backend, so the PDPT is the first 32 bytes of guest memory.
    let pdpt = |e1: u64| {
        let mut hv = world();
        let d = running(&mut hv, "pae");
        let mut b = Vec::new();
        for e in [0x1001u64, e1, 0, 0x4001] {
            b.extend_from_slice(&e.to_le_bytes());
        }
        put(&mut hv, d, 0, &b);
        push(&mut hv, d as u32, Exit::CrWrite { cr: 4, value: 0x20 }, Gprs::default());
        push(&mut hv, d as u32, Exit::CrWrite { cr: 0, value: 0x8000_0011 }, Gprs::default());
        dom0_yields_then_powers_off(&mut hv, 4);
        assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
        hv.domains[d].vcpus[0].arch.take().expect("vcpu")
    };
    let v = pdpt(0x2001);
    let got: Vec<_> =
        (0..4).map(|i| v.regs.get(["pdpte0", "pdpte1", "pdpte2", "pdpte3"][i])).collect();
    assert_eq!(got, [Some(&0x1001), Some(&0x2001), Some(&0), Some(&0x4001)]);
    assert_eq!(v.regs.get("cr0"), Some(&0x8000_0011));
    assert!(v.injected.is_empty());

    // A present PDPTE with a reserved bit (bit 7) set makes the MOV to CR0 fault, unapplied.
    let v = pdpt(0x2081);
    assert_eq!(v.injected, [crate::exit::Event::GeneralProtection]);
    assert_eq!(v.regs.get("cr0"), None);
    assert_eq!(v.regs.get("pdpte1"), None);
}

/// Runs one scripted exit of domU `d` (after `setup` on its vCPU), then lets dom0 power off;
/// returns the vCPU.
fn one_exit(
    exit: Exit,
    setup: impl FnOnce(&mut crate::testutil::FakeVcpu),
) -> (crate::testutil::FakeVcpu, DomainState, CrashReason) {
    let mut hv = world();
    let d = running(&mut hv, "u");
    setup(hv.domains[d].vcpus[0].arch.as_mut().expect("vcpu"));
    push(&mut hv, d as u32, exit, Gprs::default());
    let off = Gprs { rax: Op::Shutdown as u64, ..Gprs::default() };
    push(&mut hv, d as u32, Exit::Hypercall, off);
    dom0_yields_then_powers_off(&mut hv, 4);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let dom = &mut hv.domains[d];
    let state = dom.state.expect("exists");
    (dom.vcpus[0].arch.take().expect("vcpu"), state, dom.crash)
}

#[test]
fn emulated_instructions_complete_as_the_cpu_would() {
    use crate::exit::{Access, Event::*};
    use crate::regs::{CR0_PG, EFER_LME, RFLAGS_RF};
    // CPUID (3 bytes in the fake) ending past the lower canonical half: #GP at the CPUID, with
    // RF in the pushed flags as for every fault; RIP does not move.
    let (v, ..) = one_exit(Exit::Cpuid, |v| v.rip = 0x7fff_ffff_fffd);
    assert_eq!((v.rip, v.injected.as_slice()), (0x7fff_ffff_fffd, [GeneralProtection].as_slice()));
    assert_eq!(v.regs.get("rflags").map(|f| f & RFLAGS_RF), Some(RFLAGS_RF));
    let (v, ..) = one_exit(Exit::Cpuid, |v| v.rip = 0x7fff_ffff_fff0);
    assert_eq!((v.rip, v.injected.len()), (0x7fff_ffff_fff3, 0));
    // INVD completes as a no-op; RDPMC and task switches fault.
    let (v, ..) = one_exit(Exit::Invd, |v| v.rip = 0x1000);
    assert_eq!((v.rip, v.injected.len()), (0x1003, 0));
    for e in [Exit::Rdpmc, Exit::TaskSwitch] {
        let (v, state, _) = one_exit(e, |v| v.rip = 0x1000);
        assert_eq!((v.rip, v.injected.as_slice()), (0x1000, [GeneralProtection].as_slice()));
        assert_eq!(state, DomainState::Shutdown, "{e:?}: the domain carries on");
    }
    // Activating IA-32e mode: CS.L set, or a TSS other than a busy 32-bit one in TR, is #GP
    // (the write is not applied).
    let activate = Exit::CrWrite { cr: 0, value: CR0_PG | 0x11 };
    let long = |cs_ld: u64, tr: u64| {
        move |v: &mut crate::testutil::FakeVcpu| {
            v.regs.extend([("efer", EFER_LME), ("cr4", 0x20), ("cs_ld", cs_ld), ("tr_type", tr)]);
        }
    };
    for cs_ld in [1, 3] {
        let (v, ..) = one_exit(activate, long(cs_ld, 11));
        assert_eq!(v.injected, [GeneralProtection], "CS.L/D {cs_ld:#b}");
        assert_eq!(v.regs.get("cr0"), None);
    }
    let (v, ..) = one_exit(activate, long(2, 3));
    assert_eq!(v.injected, [GeneralProtection], "16-bit busy TSS");
    assert_eq!(v.regs.get("cr0"), None);
    let (v, ..) = one_exit(activate, long(2, 11));
    assert!(v.injected.is_empty());
    assert_eq!(v.regs.get("cr0"), Some(&(CR0_PG | 0x11)));
    // A page walk that reaches the APIC page stops the domain with a reason instead of being
    // emulated as the instruction's access.
    let walk = Access { read: true, walk: true, ..Access::default() };
    let (_, state, crash) =
        one_exit(Exit::NestedPageFault { gpa: 0xfee0_0000, access: walk }, |_| {});
    assert_eq!((state, crash), (DomainState::Crashed, CrashReason::UnsupportedMmio));
}

// ---- string port I/O ----------------------------------------------------------------------------

/// Where the string I/O tests put the instruction (the domU's RIP).
const STR_RIP: u64 = 0x10_0000;

/// A domU whose instruction at RIP is `insn`, after `setup` on the machine and its vCPU, runs
/// `exits` (with `g` in its registers for the first), then triple-faults (which keeps its
/// registers for the test to read) unless it stopped; dom0 then powers off.
fn string_io(
    insn: &[u8],
    g: Gprs,
    exits: &[Exit],
    setup: impl FnOnce(&mut TestHv, usize, &mut crate::testutil::FakeVcpu),
) -> (std::boxed::Box<TestHv>, usize) {
    string_io_at(0, insn, g, exits, setup)
}

/// [`string_io`] at privilege level `cpl`.
fn string_io_at(
    cpl: u8,
    insn: &[u8],
    g: Gprs,
    exits: &[Exit],
    setup: impl FnOnce(&mut TestHv, usize, &mut crate::testutil::FakeVcpu),
) -> (std::boxed::Box<TestHv>, usize) {
    let mut hv = world();
    let d = running(&mut hv, "u");
    put(&mut hv, d, STR_RIP, insn);
    let mut v = hv.domains[d].vcpus[0].arch.take().expect("vcpu");
    setup(&mut hv, d, &mut v);
    hv.domains[d].vcpus[0].arch = Some(v);
    for (i, &exit) in exits.iter().enumerate() {
        let gprs = (i == 0).then_some(g);
        hv.backend.push(d as u32, 0, Step { exit, gprs, cpl });
    }
    dom0_yields_then_powers_off(&mut hv, 4);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    (hv, d)
}

fn io(port: u16, size: u8, write: bool, rep: bool) -> Exit {
    Exit::Io { port, size, write, string: true, rep }
}

fn console(hv: &mut TestHv, d: usize) -> Vec<u8> {
    let mut out = [0u8; 64];
    let n = hv.domains[d].console.read(&mut out);
    out[..n].to_vec()
}

fn vcpu(hv: &TestHv, d: usize) -> &crate::testutil::FakeVcpu {
    hv.domains[d].vcpus[0].arch.as_ref().expect("vcpu")
}

fn str_regs(hv: &TestHv, d: usize) -> (u64, u64, u64) {
    let g = hv.domains[d].vcpus[0].gprs;
    (g.rcx, g.rsi, g.rdi)
}

#[test]
fn rep_outsb_writes_a_string_to_com1_forwards_and_backwards() {
    use crate::regs::RFLAGS_DF;
    let g = Gprs { rcx: 4, rsi: 0x2000, rdi: 7, ..Gprs::default() };
    let (mut hv, d) = string_io(&[0xf3, 0x6e], g, &[io(0x3f8, 1, true, true)], |hv, d, _| {
        put(hv, d, 0x2000, b"hi!\n");
    });
    assert_eq!(console(&mut hv, d), b"hi!\n");
    assert_eq!(str_regs(&hv, d), (0, 0x2004, 7));
    assert_eq!(vcpu(&hv, d).rip, STR_RIP + 2);
    assert_eq!(hv.domains[d].crash, CrashReason::TripleFault, "carried on to its next exit");

    // DF = 1: from rSI downwards.
    let g = Gprs { rcx: 3, rsi: 0x2002, ..Gprs::default() };
    let (mut hv, d) = string_io(&[0xf3, 0x6e], g, &[io(0x3f8, 1, true, true)], |hv, d, v| {
        put(hv, d, 0x2000, b"abc");
        v.regs.insert("rflags", 2 | RFLAGS_DF);
    });
    assert_eq!(console(&mut hv, d), b"cba");
    assert_eq!(str_regs(&hv, d), (0, 0x1fff, 0));
    assert!(vcpu(&hv, d).injected.is_empty());
}

#[test]
fn outsw_to_the_debug_exit_port_stops_the_domain_with_its_status() {
    // rep outsw: the first word already shuts the domain down, with that word as its status.
    let g = Gprs { rcx: 3, rsi: 0x2000, ..Gprs::default() };
    let (hv, d) = string_io(&[0x66, 0xf3, 0x6f], g, &[io(0xf4, 2, true, true)], |hv, d, _| {
        put(hv, d, 0x2000, &[0x34, 0x12, 0x78, 0x56]);
    });
    assert_eq!(hv.domains[d].state, Some(DomainState::Shutdown));
    assert_eq!(hv.domains[d].shutdown, (0, 0x1234));
}

#[test]
fn absent_ports_read_all_ones_by_string_io() {
    // INSB from a port nobody has: 0xff per byte, as the plain IN reads.
    let g = Gprs { rdi: 0x3000, ..Gprs::default() };
    let (hv, d) = string_io(&[0x6c], g, &[io(0x300, 1, false, false)], |_, _, _| {});
    assert_eq!(get_bytes(&hv, d, 0x3000, 2), [0xff, 0]);
    assert_eq!((str_regs(&hv, d), vcpu(&hv, d).rip), ((0, 0, 0x3001), STR_RIP + 1));
    // Without DOMCREATE_DEVICE_MODEL the RTC is nobody's either: nothing waits for dom0.
    let (hv, d) = string_io(&[0x6c], g, &[io(0x71, 1, false, false)], |_, _, _| {});
    assert_eq!(get_bytes(&hv, d, 0x3000, 2), [0xff, 0]);
    assert_eq!(hv.domains[d].vcpus[0].io, None);
}

/// A domU created with `DOMCREATE_DEVICE_MODEL`, running, its instruction at RIP `insn`.
fn dm_domain(hv: &mut TestHv, name: &str, insn: &[u8]) -> u32 {
    let mut c = create_args(name, 2 << 20, 1, 0);
    c.flags = DOMCREATE_DEVICE_MODEL;
    let d = create_with(hv, &c) as usize;
    assert_eq!(set_state(hv, d, 0, &flat32(0x10_0000)), 0);
    assert_eq!(call(hv, 0, Op::DomainUnpause as u64, [d as u64, 0, 0, 0, 0]), 0);
    put(hv, d, STR_RIP, insn);
    hv.domains[d].vcpus[0].arch.as_mut().expect("vcpu").rip = STR_RIP;
    d as u32
}

/// dom0 yields (the domU runs), then serves `n` requests of domain `d` with `answer`, yielding
/// after each (the fake gives each `IoreqComplete` the token of `d`'s latest access), then
/// yields `last_yields` times and powers off.
fn dom0_serves(hv: &mut TestHv, d: u32, n: usize, answer: u64, last_yields: usize) {
    hv.backend.answer = Some((d, 0));
    let hc = |op: Op, rdi, rsi, r10| Gprs { rax: op as u64, rdi, rsi, r10, ..Gprs::default() };
    push(hv, 0, Exit::Hypercall, hc(Op::Yield, 0, 0, 0));
    for _ in 0..n {
        push(hv, 0, Exit::Hypercall, hc(Op::IoreqNext, SCRATCH, 0, 0));
        push(hv, 0, Exit::Hypercall, hc(Op::IoreqComplete, d.into(), 0, answer));
        push(hv, 0, Exit::Hypercall, hc(Op::Yield, 0, 0, 0));
    }
    dom0_yields_then_powers_off(hv, last_yields);
}

#[test]
fn dom0_answers_a_port_access_and_it_completes() {
    let mut hv = world();
    let d = dm_domain(&mut hv, "dm", &[0xe4, 0x71]);
    let inb = Exit::Io { port: 0x71, size: 1, write: false, string: false, rep: false };
    push(&mut hv, d, inb, Gprs { rax: 0x1234_5678, ..Gprs::default() });
    dom0_serves(&mut hv, d, 1, 0x1_42, 1);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let req: IoReq = get(&hv, 0, SCRATCH);
    let instance = hv.domains[d as usize].instance;
    let want =
        IoReq { domid: d, vcpu: 0, token: 1, instance, port: 0x71, size: 1, write: 0, value: 0 };
    assert_eq!(req, want);
    let v = &hv.domains[d as usize].vcpus[0];
    assert_eq!(v.gprs.rax, 0x1234_5642, "AL only, the answer cut to a byte");
    assert_eq!(v.arch.as_ref().expect("vcpu").rip, STR_RIP + 3, "completed once");
    assert_eq!(v.io, None);
    assert_eq!(hv.domains[d as usize].crash, CrashReason::TripleFault, "carried on");
}

#[test]
fn an_out_is_posted_with_its_value_cut_to_its_size() {
    let mut hv = world();
    let d = dm_domain(&mut hv, "dm", &[0x66, 0xef]);
    let outw = Exit::Io { port: 0x510, size: 2, write: true, string: false, rep: false };
    push(&mut hv, d, outw, Gprs { rax: 0xdead_0019, ..Gprs::default() });
    dom0_serves(&mut hv, d, 1, 0, 1);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let req: IoReq = get(&hv, 0, SCRATCH);
    assert_eq!((req.port, req.size, req.write, req.value), (0x510, 2, 1, 0x19));
    let v = &hv.domains[d as usize].vcpus[0];
    assert_eq!((v.gprs.rax, v.arch.as_ref().expect("vcpu").rip), (0xdead_0019, STR_RIP + 3));
}

#[test]
fn rep_insb_from_a_dom0_port_asks_for_each_element() {
    let mut hv = world();
    let d = dm_domain(&mut hv, "dm", &[0xf3, 0x6c]);
    let insb = io(0x511, 1, false, true);
    push(&mut hv, d, insb, Gprs { rcx: 2, rdi: 0x3000, ..Gprs::default() });
    hv.backend.push(d, 0, Step { exit: insb, gprs: None, cpl: 0 });
    dom0_serves(&mut hv, d, 2, b'Q'.into(), 1);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let d = d as usize;
    assert_eq!(get_bytes(&hv, d, 0x3000, 3), b"QQ\0");
    assert_eq!((str_regs(&hv, d), vcpu(&hv, d).rip), ((0, 0, 0x3002), STR_RIP + 2));
}

#[test]
fn a_domu_that_keeps_dom0_busy_does_not_keep_the_cpu() {
    // A reads the RTC in a loop; B computes. Every access is a detour through dom0, charged to
    // A's slice: once that is used, B gets its turn, although A is always ready again at once.
    let mut hv = world();
    let a = dm_domain(&mut hv, "a", &[0xe4, 0x71]);
    let b = running(&mut hv, "b") as u32;
    let inb = Exit::Io { port: 0x71, size: 1, write: false, string: false, rep: false };
    // A cycle (A's exit, dom0's three hypercalls) takes 4,000 fake ticks: n cycles are three
    // of A's slices. A has more accesses than dom0 serves, so it never stops on its own.
    let n = 3 * (crate::policy::VCPU_SLICE / 4000) as usize;
    for _ in 0..2 * n {
        hv.backend.push(a, 0, Step { exit: inb, gprs: None, cpl: 0 });
    }
    for _ in 0..n {
        hv.backend.push(b, 0, Step { exit: Exit::Timer, gprs: None, cpl: 0 });
    }
    // dom0 stops right after the last answer: B must have run by then.
    dom0_serves(&mut hv, a, n, 0, 0);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let runs = |d: u32| hv.backend.runs.get(&(d, 0)).copied().unwrap_or(0);
    assert!(runs(b) >= 1000, "b ran {} times, a {}", runs(b), runs(a));
    assert_eq!(hv.backend.wrong_unloads, 0, "a switch unloaded a vCPU that was not running");
}

#[test]
fn a_waiting_vcpu_survives_pause_and_its_domain_can_be_destroyed() {
    let mut hv = world();
    let d = dm_domain(&mut hv, "dm", &[0xe4, 0x71]) as u64;
    let inb = Exit::Io { port: 0x71, size: 1, write: false, string: false, rep: false };
    push(&mut hv, d as u32, inb, Gprs::default());
    // dom0 takes the request, pauses the domain, answers, unpauses; then a second access is
    // posted and the domain destroyed while dom0 holds it.
    hv.backend.push(d as u32, 0, Step { exit: inb, gprs: None, cpl: 0 });
    hv.backend.answer = Some((d as u32, 0));
    let hc = |op: Op, rdi, rsi, r10| Gprs { rax: op as u64, rdi, rsi, r10, ..Gprs::default() };
    for g in [
        hc(Op::Yield, 0, 0, 0),
        hc(Op::IoreqNext, SCRATCH, 0, 0),
        hc(Op::DomainPause, d, 0, 0),
        hc(Op::IoreqComplete, d, 0, 7),
        hc(Op::DomainUnpause, d, 0, 0),
        hc(Op::Yield, 0, 0, 0),
        hc(Op::IoreqNext, SCRATCH, 0, 0),
        hc(Op::DomainDestroy, d, 0, 0),
        hc(Op::IoreqComplete, d, 0, 7),
    ] {
        push(&mut hv, 0, Exit::Hypercall, g);
    }
    dom0_yields_then_powers_off(&mut hv, 1);
    let free = hv.frames.free_frames();
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    assert!(!hv.domains[d as usize].exists());
    let late = [d, 0, 2, 7, 0];
    assert_eq!(call(&mut hv, 0, Op::IoreqComplete as u64, late), ESRCH, "a late answer");
    assert!(hv.frames.free_frames() > free, "the domain's frames came back");
}

#[test]
fn memory_nothing_claims_reads_all_ones_on_a_pc_and_stops_other_domains() {
    use crate::exit::Access;
    let read = Access { read: true, ..Access::default() };
    let write = Access { write: true, ..Access::default() };
    let fetch = Access { exec: true, ..Access::default() };
    // mov eax, [rbx] (2 bytes) above RAM, then mov [rbx], eax, then a fetch there.
    let mut hv = world();
    let d = dm_domain(&mut hv, "pc", &[0x8b, 0x03]);
    let g = Gprs { rax: 0x1234_5678_9abc_def0, rbx: 0x3000_0000, ..Gprs::default() };
    push(&mut hv, d, Exit::NestedPageFault { gpa: 0x3000_0000, access: read }, g);
    hv.backend.push(d, 0, Step { exit: Exit::TripleFault, gprs: None, cpl: 0 });
    dom0_yields_then_powers_off(&mut hv, 2);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let v = &hv.domains[d as usize].vcpus[0];
    assert_eq!(v.gprs.rax, 0xffff_ffff, "all ones, zero-extended from 32 bits");
    assert_eq!(v.arch.as_ref().expect("vcpu").rip, STR_RIP + 2);
    assert_eq!(hv.domains[d as usize].crash, CrashReason::TripleFault, "carried on");
    let mut hv = world();
    let d = dm_domain(&mut hv, "pc", &[0x89, 0x03]);
    push(&mut hv, d, Exit::NestedPageFault { gpa: 0x3000_0000, access: write }, g);
    hv.backend.push(
        d,
        0,
        Step {
            exit: Exit::NestedPageFault { gpa: 0x3000_0000, access: fetch },
            gprs: None,
            cpl: 0,
        },
    );
    dom0_yields_then_powers_off(&mut hv, 2);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    assert_eq!(hv.domains[d as usize].vcpus[0].arch.as_ref().expect("vcpu").rip, STR_RIP + 2);
    assert_eq!(hv.domains[d as usize].crash, CrashReason::UnsupportedMmio, "no code there");
    // A domain without a PC (no DOMCREATE_DEVICE_MODEL) is stopped at the first access.
    let (_, state, crash) =
        one_exit(Exit::NestedPageFault { gpa: 0x3000_0000, access: read }, |_| {});
    assert_eq!((state, crash), (DomainState::Crashed, CrashReason::OutsideMemory));
}

#[test]
fn demand_faults_on_ram_are_fixed_in_the_backend_loop_the_rest_go_to_the_core() {
    use crate::exit::Access;
    let write = Access { write: true, ..Access::default() };
    let read = Access { read: true, ..Access::default() };
    let mut hv = world();
    hv.backend.fast_faults = true;
    // Two first writes to RAM, then mov eax, [rbx] above RAM, which the core emulates.
    let d = dm_domain(&mut hv, "pc", &[0x8b, 0x03]);
    for gpa in [0x1f_0000, 0x1f_1000] {
        let exit = Exit::NestedPageFault { gpa, access: write };
        hv.backend.push(d, 0, Step { exit, gprs: None, cpl: 0 });
    }
    let g = Gprs { rbx: 0x3000_0000, ..Gprs::default() };
    push(&mut hv, d, Exit::NestedPageFault { gpa: 0x3000_0000, access: read }, g);
    hv.backend.push(d, 0, Step { exit: Exit::TripleFault, gprs: None, cpl: 0 });
    dom0_yields_then_powers_off(&mut hv, 2);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let dom = &hv.domains[d as usize];
    assert_eq!(dom.counters.exits[ExitReason::NestedPageFault as usize], 3, "all counted");
    let st = dom.mmu.stats();
    // The first maps the whole 2 MiB page: the second finds it mapped.
    let ram = (st.faults_fixed, st.faults_spurious);
    assert_eq!((ram, st.faults_no_slot), ((1, 1), 1), "each reached the MMU once");
    assert_eq!(dom.vcpus[0].gprs.rax, 0xffff_ffff, "the core emulated the device access");
    assert_eq!(dom.crash, CrashReason::TripleFault);
}

#[test]
fn init_and_start_up_ipis_start_a_pcs_other_vcpu_in_real_mode() {
    use crate::exit::Access;
    let mut hv = world();
    let mut c = create_args("smp", 2 << 20, 2, 0);
    c.flags = DOMCREATE_DEVICE_MODEL;
    let d = create_with(&mut hv, &c) as usize;
    assert_eq!(set_state(&mut hv, d, 0, &flat32(0x10_0000)), 0);
    assert_eq!(call(&mut hv, 0, Op::DomainUnpause as u64, [d as u64, 0, 0, 0, 0]), 0);
    // vCPU 0: mov [rbx], eax (89 03) on its APIC page: enable it (SVR), then ICR high = APIC
    // 1, ICR low = INIT (level assert); a start-up IPI (vector 9), then another (vector 10),
    // which the running vCPU ignores, and INIT and start-up to all including self (invalid).
    put(&mut hv, d, 0x10_0000, &[0x89, 0x03].repeat(7));
    let write = Access { write: true, ..Access::default() };
    let icr = [
        (0xf0, 0x1ff),
        (0x310, 1 << 24),
        (0x300, 0x4500),
        (0x300, 0x4609),
        (0x300, 0x460a),
        (0x300, 0x8_4500),
        (0x300, 0x8_460b),
    ];
    for (reg, val) in icr {
        let g = Gprs { rax: val, rbx: 0xfee0_0000 + reg, ..Gprs::default() };
        push(&mut hv, d as u32, Exit::NestedPageFault { gpa: 0xfee0_0000 + reg, access: write }, g);
    }
    hv.domains[d].vcpus[0].arch.as_mut().expect("vcpu").rip = 0x10_0000;
    assert!(hv.domains[d].vcpus[1].init.is_some(), "vCPU 1 waits for a start-up IPI");
    dom0_yields_then_powers_off(&mut hv, 3);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let ap = hv.domains[d].vcpus[1].arch.as_ref().expect("vcpu");
    assert_eq!((ap.rip, ap.regs.get("cs_base")), (0, Some(&0x9000)), "real mode at 9000:0");
    assert!(hv.domains[d].vcpus[1].init.is_none(), "started: it may run");
    assert!(hv.domains[d].vcpus[0].init.is_none(), "the BSP ignored the INIT to all");
}

#[test]
fn ioreq_and_irq_level_errors() {
    let mut hv = world();
    let d = dm_domain(&mut hv, "dm", &[0x90]) as u64;
    let u = running(&mut hv, "plain") as u64;
    let op = |o: Op| o as u64;
    let inst = u64::from(hv.domains[d as usize].instance);
    // Nothing waits; a bad buffer is refused first.
    assert_eq!(call(&mut hv, 0, op(Op::IoreqNext), [SCRATCH, 0, 0, 0, 0]), 0);
    assert_eq!(call(&mut hv, 0, op(Op::IoreqNext), [SCRATCH + 4, 0, 0, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, 0, op(Op::IoreqNext), [u64::MAX - 7, 0, 0, 0, 0]), EFAULT);
    // No request with that token, vCPU or domain.
    assert_eq!(call(&mut hv, 0, op(Op::IoreqComplete), [d, 0, 1, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, 0, op(Op::IoreqComplete), [d, 9, 1, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, 0, op(Op::IoreqComplete), [d, u64::MAX, 1, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, 0, op(Op::IoreqComplete), [d, 0, 1, 1 << 32, 0]), EINVAL);
    assert_eq!(call(&mut hv, 0, op(Op::IoreqComplete), [99, 0, 1, 0, 0]), ESRCH);
    assert_eq!(call(&mut hv, 0, op(Op::IoreqComplete), [0, 0, 1, 0, 0]), EPERM);
    // IrqLevel: the domain instance dom0's devices belong to, only dom0's lines, levels 0 and 1,
    // only domains dom0 serves.
    let il = op(Op::IrqLevel);
    assert_eq!(call(&mut hv, 0, il, [d, inst, 8, 1, 0]), 0);
    assert_eq!(call(&mut hv, 0, il, [d, inst, 8, 0, 0]), 0);
    assert_eq!(call(&mut hv, 0, il, [d, inst + 1, 8, 1, 0]), ESRCH, "a stale instance");
    for (gsi, level) in [(0, 1), (4, 1), (9, 0), (8, 2), (32, 1), (1 << 33, 1)] {
        assert_eq!(call(&mut hv, 0, il, [d, inst, gsi, level, 0]), EINVAL, "{gsi}");
    }
    let ui = u64::from(hv.domains[u as usize].instance);
    assert_eq!(call(&mut hv, 0, il, [u, ui, 8, 1, 0]), EINVAL, "no device model");
    assert_eq!(call(&mut hv, 0, il, [0, 0, 8, 1, 0]), EPERM);
    for o in [Op::IoreqNext, Op::IoreqComplete, Op::IrqLevel] {
        assert_eq!(call(&mut hv, u as usize, op(o), [d, inst, 8, 1, 0]), EPERM);
    }
}

#[test]
fn sixteen_bit_addressing_wraps_and_keeps_the_upper_register_bits() {
    // Real-mode rep insb at ES:DI = 0x2000:0xfffe, CX = 4: DI wraps to 0 within ES.
    let g = Gprs { rcx: 0xbeef_0004, rdi: 0xdead_fffe, ..Gprs::default() };
    let (hv, d) = string_io(&[0xf3, 0x6c], g, &[io(0x300, 1, false, true)], |hv, d, v| {
        v.regs.extend([("mode", 16), ("cs_base", STR_RIP), ("es_base", 0x2_0000)]);
        v.rip = 0;
        put(hv, d, 0x2_fffd, &[0; 6]);
    });
    assert_eq!(get_bytes(&hv, d, 0x2_fffd, 3), [0, 0xff, 0xff]);
    assert_eq!(get_bytes(&hv, d, 0x2_0000, 3), [0xff, 0xff, 0]);
    assert_eq!(str_regs(&hv, d), (0xbeef_0000, 0, 0xdead_0002));
    assert_eq!(vcpu(&hv, d).rip, 2);
}

#[test]
fn rep_with_a_zero_count_only_completes() {
    let g = Gprs { rcx: 0xffff_ffff_0000_0000, rdi: 0x3000, ..Gprs::default() };
    // 67: 32-bit addressing, so only ECX (0) counts.
    let (hv, d) = string_io(&[0x67, 0xf3, 0x6c], g, &[io(0x300, 1, false, true)], |_, _, _| {});
    assert_eq!(get_bytes(&hv, d, 0x3000, 1), [0]);
    assert_eq!(str_regs(&hv, d), (0xffff_ffff_0000_0000, 0, 0x3000));
    assert_eq!(vcpu(&hv, d).rip, STR_RIP + 3);
}

#[test]
fn a_long_rep_stops_at_the_chunk_and_executes_again() {
    use crate::hv::STRING_IO_CHUNK;
    let g = Gprs { rcx: STRING_IO_CHUNK + 3, rdi: 0x4000, ..Gprs::default() };
    let once = |exits: &[Exit]| string_io(&[0xf3, 0x6c], g, exits, |_, _, _| {});
    // One exit: a chunk's worth done, RIP still on the instruction.
    let (hv, d) = once(&[io(0x300, 1, false, true)]);
    assert_eq!(str_regs(&hv, d), (3, 0, 0x4000 + STRING_IO_CHUNK));
    assert_eq!(vcpu(&hv, d).rip, STR_RIP);
    assert_eq!(get_bytes(&hv, d, 0x4000 + STRING_IO_CHUNK - 1, 2), [0xff, 0]);
    // Executed again, it finishes the rest and completes.
    let (hv, d) = once(&[io(0x300, 1, false, true), io(0x300, 1, false, true)]);
    assert_eq!(str_regs(&hv, d), (0, 0, 0x4003 + STRING_IO_CHUNK));
    assert_eq!(vcpu(&hv, d).rip, STR_RIP + 2);
    assert_eq!(get_bytes(&hv, d, 0x4000 + STRING_IO_CHUNK + 2, 2), [0xff, 0]);
    // Words: the chunk is in bytes.
    let g = Gprs { rcx: STRING_IO_CHUNK, rdi: 0x4000, ..Gprs::default() };
    let (hv, d) = string_io(&[0x66, 0xf3, 0x6d], g, &[io(0x300, 2, false, true)], |_, _, _| {});
    assert_eq!(str_regs(&hv, d), (STRING_IO_CHUNK / 2, 0, 0x4000 + STRING_IO_CHUNK));
}

#[test]
fn outs_takes_its_segment_override_and_64_bit_code_only_fs_and_gs_bases() {
    let bases = |v: &mut crate::testutil::FakeVcpu| {
        v.regs.extend([("ds_base", 0x1000), ("es_base", 0x5000), ("gs_base", 0x7000)]);
    };
    let out = |insn: &[u8], mode: u64| {
        let g = Gprs { rsi: 0x10, ..Gprs::default() };
        let (mut hv, d) = string_io(insn, g, &[io(0x3f8, 1, true, false)], |hv, d, v| {
            for (gpa, c) in [(0x10, b'0'), (0x1010, b'D'), (0x5010, b'E'), (0x7010, b'G')] {
                put(hv, d, gpa, &[c]);
            }
            bases(v);
            v.regs.insert("mode", mode);
        });
        assert_eq!(str_regs(&hv, d).1, 0x11);
        console(&mut hv, d)
    };
    assert_eq!(out(&[0x6e], 32), b"D");
    assert_eq!(out(&[0x26, 0x6e], 32), b"E", "ES override");
    assert_eq!(out(&[0x65, 0x6e], 32), b"G", "GS override");
    assert_eq!(out(&[0x6e], 64), b"0", "no DS base in 64-bit code");
    assert_eq!(out(&[0x26, 0x6e], 64), b"0", "ES override ignored in 64-bit code");
    assert_eq!(out(&[0x65, 0x6e], 64), b"G", "GS base in 64-bit code");
    // INS writes ES:rDI whatever the prefix says.
    let g = Gprs { rdi: 0x10, ..Gprs::default() };
    let (hv, d) = string_io(&[0x65, 0x6c], g, &[io(0x300, 1, false, false)], |_, _, v| {
        bases(v);
        v.regs.insert("mode", 32);
    });
    assert_eq!(get_bytes(&hv, d, 0x5010, 1), [0xff]);
    assert_eq!(get_bytes(&hv, d, 0x7010, 1), [0]);
}

#[test]
fn a_fault_on_the_memory_operand_is_injected_after_the_elements_before_it() {
    use crate::exit::Event::*;
    use crate::walk::{PF_PRESENT, PF_USER, PF_WRITE};
    // 32-bit paging: PDE 0 -> page table at 0x2000 mapping the first 2 MiB one to one, but
    // page 5 is missing and page 6 is supervisor-only.
    let paged = |hv: &mut TestHv, d: usize, v: &mut crate::testutil::FakeVcpu| {
        put(hv, d, 0x1000, &0x2007u32.to_le_bytes());
        for i in 0..512u32 {
            let pte = match i {
                5 => 0,
                6 => 0x6003,
                _ => (i << 12) | 7,
            };
            put(hv, d, 0x2000 + 4 * u64::from(i), &pte.to_le_bytes());
        }
        v.regs.extend([("mode", 32), ("cr0", 0x8000_0011), ("cr3", 0x1000)]);
    };
    let g = Gprs { rcx: 4, rdi: 0x4ffe, ..Gprs::default() };
    let (hv, d) = string_io(&[0xf3, 0x6c], g, &[io(0x300, 1, false, true)], paged);
    assert_eq!(vcpu(&hv, d).injected, [PageFault { addr: 0x5000, code: PF_WRITE }]);
    assert_eq!(str_regs(&hv, d), (2, 0, 0x5000));
    assert_eq!(vcpu(&hv, d).rip, STR_RIP, "the fault is at the instruction");
    assert_eq!(get_bytes(&hv, d, 0x4ffe, 2), [0xff, 0xff]);
    // A word straddling into the missing page faults as a whole: nothing of it is written.
    let g = Gprs { rdi: 0x4fff, ..Gprs::default() };
    let (hv, d) = string_io(&[0x66, 0x6d], g, &[io(0x300, 2, false, false)], paged);
    assert_eq!(vcpu(&hv, d).injected, [PageFault { addr: 0x5000, code: PF_WRITE }]);
    assert_eq!((get_bytes(&hv, d, 0x4fff, 1), str_regs(&hv, d).2), (vec![0], 0x4fff));
    // At CPL 3 a supervisor page is a protection fault; OUTS reads, so W is clear.
    let g = Gprs { rsi: 0x6000, ..Gprs::default() };
    let (mut hv, d) = string_io_at(3, &[0x6e], g, &[io(0x3f8, 1, true, false)], paged);
    assert_eq!(vcpu(&hv, d).injected, [PageFault { addr: 0x6000, code: PF_PRESENT | PF_USER }]);
    assert_eq!(console(&mut hv, d), b"");
    // A non-canonical address in 64-bit code is #GP.
    let g = Gprs { rsi: 0x8000_0000_0000, ..Gprs::default() };
    let (hv, d) = string_io(&[0x6e], g, &[io(0x3f8, 1, true, false)], |_, _, _| {});
    assert_eq!(vcpu(&hv, d).injected, [GeneralProtection]);
}

#[test]
fn string_io_outside_memory_or_not_at_rip_crashes_only_the_domu() {
    let g = Gprs { rdi: 0x4000_0000, ..Gprs::default() };
    let (hv, d) = string_io(&[0x6c], g, &[io(0x300, 1, false, false)], |_, _, _| {});
    assert_eq!(hv.domains[d].crash, CrashReason::OutsideMemory);
    // The exit says OUTSB; RIP holds a NOP (or an INSB).
    for insn in [[0x90u8], [0x6c]] {
        let (hv, d) = string_io(&insn, Gprs::default(), &[io(0x3f8, 1, true, true)], |_, _, _| {});
        assert_eq!(hv.domains[d].crash, CrashReason::UnsupportedIo);
    }
}

#[test]
fn nested_page_faults_are_served_by_the_mmu() {
    use crate::exit::Access;
    let mut hv = world();
    let read = Access { read: true, ..Access::default() };
    for gpa in [0x10_0000, 0x10_0000, 0x1000] {
        hv.backend.push(
            0,
            0,
            Step { exit: Exit::NestedPageFault { gpa, access: read }, gprs: None, cpl: 0 },
        );
    }
    hv.backend.push(
        0,
        0,
        Step { exit: Exit::NestedPageFault { gpa: 0xb000_0000, access: read }, gprs: None, cpl: 0 },
    );
    let stop = run_until_stop(&mut hv);
    assert_eq!(stop.status, StopStatus::Dom0Crashed);
    assert_eq!(hv.domains[0].crash, CrashReason::OutsideMemory);
    let st = hv.domains[0].mmu.stats();
    assert_eq!(st.faults_fixed, 1, "one 2 MiB leaf covers both low addresses");
    assert_eq!(st.faults_spurious, 2);
    assert_eq!(st.faults_no_slot, 1);
    let host = crate::mem::Machine { frames: &mut hv.frames, mem: &mut hv.mem };
    let m = hv.domains[0].mmu.lookup(&host, 0x10_0123).expect("mapped");
    assert_eq!(m.hpa, hv.domains[0].mmu.translate(0x10_0123).expect("in a slot"));
}

#[test]
fn small_pages_flag_maps_4k_leaves() {
    use crate::exit::Access;
    let mut hv = world();
    let mut c = create_args("small", 4 << 20, 1, 0);
    c.flags = DOMCREATE_SMALL_PAGES;
    let d = create_with(&mut hv, &c) as usize;
    let big = running(&mut hv, "big");
    let read = Access { read: true, ..Access::default() };
    for dom in [d, big] {
        assert_eq!(
            set_state(&mut hv, dom, 0, &flat32(0x10_0000)),
            if dom == d { 0 } else { EBUSY }
        );
    }
    assert_eq!(call(&mut hv, 0, Op::DomainUnpause as u64, [d as u64, 0, 0, 0, 0]), 0);
    for dom in [d, big] {
        let npf = Exit::NestedPageFault { gpa: 0x10_0000, access: read };
        hv.backend.push(dom as u32, 0, Step { exit: npf, gprs: None, cpl: 0 });
        hv.backend.push(dom as u32, 0, Step { exit: Exit::TripleFault, gprs: None, cpl: 0 });
    }
    dom0_yields_then_powers_off(&mut hv, 6);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let host = crate::mem::Machine { frames: &mut hv.frames, mem: &mut hv.mem };
    let small = hv.domains[d].mmu.lookup(&host, 0x10_0000).expect("mapped").size;
    let large = hv.domains[big].mmu.lookup(&host, 0x10_0000).expect("mapped").size;
    assert_eq!((small, large), (mmu::PageSize::Size4K, mmu::PageSize::Size2M));
}

// ---- properties --------------------------------------------------------------------------------

fn arg() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u32::MAX as u64),
        Just(SCRATCH),
        Just(SCRATCH + 4),
        Just(DOM0_MEM - 8),
        Just(2 << 20),
        Just(4096),
        Just(CONSOLE_READ_MAX),
        Just(GRANT_WINDOW_GPA),
        0u64..20,
        any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = u64> {
    prop_oneof![(0usize..Op::ALL.len()).prop_map(|i| Op::ALL[i] as u64), any::<u64>(),]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random hypercalls from dom0 and a domU: every result is success or a documented error,
    /// nothing panics, and once every domU is destroyed no frame is lost.
    #[test]
    fn random_hypercalls_are_answered_and_leak_nothing(
        calls in proptest::collection::vec((any::<bool>(), op(), [arg(), arg(), arg(), arg(), arg()]), 1..60)
    ) {
        let mut hv = world();
        let held = |hv: &TestHv| hv.frames.free_frames() + hv.domains[0].mmu.frames_held();
        let free = held(&hv);
        let u = running(&mut hv, "victim");
        // Valid structures at the scratch address, so creates and state sets sometimes succeed.
        let c = create_args("made", 2 << 20, 1, 0);
        put(&mut hv, 0, SCRATCH, c.as_bytes());
        for (from_dom0, op, args) in calls {
            let caller = if from_dom0 || !hv.domains[u].runnable() { 0 } else { u };
            if !hv.domains[caller].runnable() {
                break;
            }
            let r = call(&mut hv, caller, op, args);
            let defined = r >= 0 || r == i64::MIN || Errno::from_code(-r).is_some();
            prop_assert!(defined, "op {op:#x} args {args:?} returned {r}");
            if caller == u && Op::from_number(op).is_some_and(Op::dom0_only) {
                prop_assert_eq!(r, EPERM);
            }
        }
        for d in 1..DOMAINS {
            if hv.domains[d].exists() {
                hv.destroy_domain(d);
            }
        }
        // A grant dom0 mapped may hold a destroyed domU's frame until dom0 unmaps it.
        for id in MAX_RAM_SLOTS..mmu::MAX_SLOTS {
            if let Some(s) = hv.domains[0].mmu.slot(id) {
                prop_assert_eq!(call(&mut hv, 0, Op::GrantUnmap as u64, [s.gpa, 0, 0, 0, 0]), 0);
            }
        }
        prop_assert_eq!(held(&hv), free);
    }
}

#[test]
fn tsc_misc_enable_x2apic_and_an_nmi_ipi() {
    use crate::exit::Event::*;
    let mut hv = world();
    let d = running(&mut hv, "u");
    let wr =
        |idx: u64, v: u64| Gprs { rcx: idx, rax: v & 0xffff_ffff, rdx: v >> 32, ..Gprs::default() };
    let du = d as u32;
    push(&mut hv, du, Exit::WrMsr, wr(0x3b, 1000)); // TSC_ADJUST
    push(&mut hv, du, Exit::WrMsr, wr(0x10, 1 << 40)); // TSC
    push(&mut hv, du, Exit::WrMsr, wr(0x1a0, crate::policy::MISC_ENABLE_VALUE & !1));
    push(&mut hv, du, Exit::WrMsr, wr(0x1a0, crate::policy::MISC_ENABLE_VALUE | (1 << 22))); // #GP
    push(&mut hv, du, Exit::RdMsr, wr(0x802, 0)); // x2APIC ID before x2APIC mode: #GP
    push(&mut hv, du, Exit::WrMsr, wr(0x1b, 0xfee0_0000 | (1 << 11) | (1 << 10) | (1 << 8)));
    push(&mut hv, du, Exit::WrMsr, wr(0x80f, 0x1ff)); // SVR: software-enabled
    push(&mut hv, du, Exit::WrMsr, wr(0x830, 4 << 8)); // ICR: NMI to APIC id 0 (itself)
    push(&mut hv, du, Exit::RdMsr, wr(0x802, 0));
    dom0_yields_then_powers_off(&mut hv, 12);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let vc = &hv.domains[d].vcpus[0];
    // Every TSC write moves TSC_ADJUST with it (SDM 17.17.3): both started at 0.
    assert_eq!(vc.tsc_offset, vc.tsc_adjust);
    assert_ne!(vc.tsc_offset, 0);
    assert_eq!(vc.misc_enable, crate::policy::MISC_ENABLE_VALUE & !1);
    let v = vc.arch.as_ref().expect("vcpu");
    assert_eq!(v.regs.get("tsc_offset"), Some(&vc.tsc_offset));
    assert_eq!(v.injected, [GeneralProtection, GeneralProtection, Nmi]);
    assert_eq!((vc.gprs.rax, vc.gprs.rdx), (0, 0), "x2APIC id of vCPU 0");
}

#[test]
fn a_new_domain_never_sees_what_a_destroyed_one_left() {
    use crate::exit::Access;
    let mut hv = world();
    let a = running(&mut hv, "a");
    let mib = 2 << 20;
    let pattern: Vec<u8> = (0..mib).map(|i| (i % 251) as u8 + 1).collect();
    put(&mut hv, a, 0, &pattern);
    let raw_a = hv.guest_hpa(a, 0, 1, false).expect("a's RAM");
    assert_eq!(call(&mut hv, 0, Op::DomainDestroy as u64, [a as u64, 0, 0, 0, 0]), 0);
    let b = running(&mut hv, "b");
    // Lazily scrubbed: b's frames may still hold a's bytes in host memory ...
    let raw_b = hv.guest_hpa(b, 0, 1, false).expect("b's RAM");
    assert_eq!(raw_a, raw_b, "the test expects the frames to be reused");
    let mut host = std::vec![0u8; 16];
    crate::mem::PhysMem::read(&hv.mem, raw_b + 0x3000, &mut host);
    assert_ne!(host, [0; 16], "frames were zeroed eagerly: nothing lazy left to test");
    // ... but every way in shows zeros: microhv's reads,
    assert!(get_bytes(&hv, b, 0, mib).iter().all(|&x| x == 0));
    // the MMU's mappings (the frame is zeroed before the guest can reach it),
    let access = Access { read: true, write: false, exec: false, present: false, walk: false };
    push(&mut hv, b as u32, Exit::NestedPageFault { gpa: 0x3000, access }, Gprs::default());
    dom0_yields_then_powers_off(&mut hv, 4);
    run_until_stop(&mut hv);
    crate::mem::PhysMem::read(&hv.mem, raw_b + 0x3000, &mut host);
    assert_eq!(host, [0; 16], "mapped for the guest while still holding a's data");
    // and microhv's writes (the rest of a written frame is zero).
    put(&mut hv, b, 0x5008, &[7]);
    crate::mem::PhysMem::read(&hv.mem, raw_b + 0x5000, &mut host);
    assert_eq!(host, [0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn idle_time_scrubs_what_a_destroyed_domain_left_before_anyone_gets_it() {
    let mut hv = world();
    let a = running(&mut hv, "a");
    put(&mut hv, a, 0, &[0xa5; 0x4000]);
    let raw = hv.guest_hpa(a, 0, 1, false).expect("a's RAM");
    assert_eq!(call(&mut hv, 0, Op::DomainDestroy as u64, [a as u64, 0, 0, 0, 0]), 0);
    // Each dom0 yield with nobody else to run scrubs a batch.
    let dirty = hv.frames.dirty_free_frames();
    dom0_yields_then_powers_off(&mut hv, 3);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    assert_eq!(hv.frames.dirty_free_frames(), dirty - 3 * crate::hv::SCRUB_BATCH);
    while hv.frames.dirty_free_frames() > 0 {
        let _ = hv.scrub_idle();
    }
    let mut host = [0xffu8; 16];
    crate::mem::PhysMem::read(&hv.mem, raw + 0x3000, &mut host);
    assert_eq!(host, [0; 16], "a's data is gone from the free frame");
    // A new domain on those frames finds them clean: nothing is left to zero on first use.
    let b = create_with(&mut hv, &create_args("b", 2 << 20, 1, 0)) as usize;
    assert_eq!(hv.guest_hpa(b, 0, 1, false), Some(raw), "the test expects the frames reused");
    assert!(!hv.frames.is_dirty(raw + 0x3000));
    assert!(get_bytes(&hv, b, 0, 0x4000).iter().all(|&x| x == 0));
}

#[test]
fn cr8_is_the_local_apics_tpr() {
    use crate::exit::Event::*;
    let mut hv = world();
    let d = running(&mut hv, "u");
    let du = d as u32;
    push(&mut hv, du, Exit::CrWrite { cr: 8, value: 0xa }, Gprs::default());
    push(&mut hv, du, Exit::CrWrite { cr: 8, value: 0x10 }, Gprs::default()); // reserved: #GP
    push(&mut hv, du, Exit::CrRead { cr: 8, gpr: 1 }, Gprs::default());
    dom0_yields_then_powers_off(&mut hv, 6);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let p = hv.domains[d].platform.as_ref().expect("platform");
    assert_eq!(p.lapics[0].tpr(), 0xa0);
    assert_eq!(hv.domains[d].vcpus[0].gprs.rcx, 0xa);
    let v = hv.domains[d].vcpus[0].arch.as_ref().expect("vcpu");
    assert_eq!(v.injected, [GeneralProtection]);
}

// ---- event channels ------------------------------------------------------------------------------

/// dom0's event-channel page in the tests, and a domU's.
const DOM0_PAGE: u64 = SCRATCH + 0x3000;
const DOMU_PAGE: u64 = 0x8000;

fn evtchn_page(hv: &TestHv, d: usize) -> EvtchnShared {
    get(hv, d, if d == 0 { DOM0_PAGE } else { DOMU_PAGE })
}

/// Domain `d`'s local APIC software-enabled (SVR), as a guest that takes interrupts has it.
fn apic_on(hv: &mut TestHv, d: usize) {
    let clock = hv.clock();
    let p = hv.domains[d].platform.as_mut().expect("platform");
    p.mmio(&clock, 0, crate::platform::MmioPage::Lapic, 0xf0, 4, Some(0x1ff)).expect("SVR");
}

fn upcall_pending(hv: &TestHv, d: usize) -> Option<crate::platform::Pending> {
    hv.domains[d].platform.as_ref().and_then(|p| p.pending(0))
}

#[test]
fn evtchn_errors_follow_the_abi() {
    let mut hv = world();
    let u = running(&mut hv, "u");
    let cb = Op::EvtchnSetCallback as u64;
    for (vector, gpa, want) in [
        (0x1f, DOM0_PAGE, EINVAL),
        (0x100, DOM0_PAGE, EINVAL),
        (u64::MAX, DOM0_PAGE, EINVAL),
        (0x40, DOM0_PAGE + 8, EINVAL),
        (0x40, DOM0_MEM, EFAULT),
        (0x40, !0xfff, EFAULT),
        (0x40, 0xfee0_0000, EFAULT),
    ] {
        assert_eq!(call(&mut hv, 0, cb, [vector, gpa, 0, 0, 0]), want, "{vector:#x} {gpa:#x}");
    }
    assert_eq!(hv.evtchn.tables[0].callback, None, "nothing registered by a refused call");
    let (alloc, bind) = (Op::EvtchnAllocUnbound as u64, Op::EvtchnBindInterdomain as u64);
    assert_eq!(call(&mut hv, u, alloc, [DOMAINS as u64, 0, 0, 0, 0]), ESRCH);
    assert_eq!(call(&mut hv, u, alloc, [u64::from(DOMID_INVALID), 0, 0, 0, 0]), ESRCH);
    let p = call(&mut hv, 0, alloc, [0, 0, 0, 0, 0]);
    assert_eq!(p, 1);
    assert_eq!(call(&mut hv, u, bind, [0, 1, 0, 0, 0]), EINVAL, "offered to dom0 itself");
    assert_eq!(call(&mut hv, u, bind, [99, 1, 0, 0, 0]), ESRCH);
    assert_eq!(call(&mut hv, u, bind, [0, 2, 0, 0, 0]), EINVAL, "a free port");
    assert_eq!(call(&mut hv, u, bind, [0, 64, 0, 0, 0]), EINVAL);
    let virq = Op::EvtchnBindVirq as u64;
    assert_eq!(call(&mut hv, u, virq, [VIRQ_DOM_EXC.into(), 0, 0, 0, 0]), EPERM);
    assert_eq!(call(&mut hv, 0, virq, [0, 0, 0, 0, 0]), EINVAL, "no VIRQ_TIMER");
    let st = Op::EvtchnStatus as u64;
    assert_eq!(call(&mut hv, 0, st, [0, SCRATCH, 0, 0, 0]), EINVAL, "port 0");
    assert_eq!(call(&mut hv, 0, st, [1, SCRATCH + 4, 0, 0, 0]), EINVAL);
    assert_eq!(call(&mut hv, 0, st, [1, DOM0_MEM - 8, 0, 0, 0]), EFAULT);
    assert_eq!(call(&mut hv, 0, st, [1, SCRATCH, 0, 0, 0]), 0);
    let s: EvtchnStatus = get(&hv, 0, SCRATCH);
    assert_eq!((s.state, s.remote_domid), (EVTCHNSTAT_UNBOUND, 0));
    assert_eq!(call(&mut hv, 0, st, [5, SCRATCH, 0, 0, 0]), 0);
    assert_eq!(get::<EvtchnStatus>(&hv, 0, SCRATCH).state, EVTCHNSTAT_CLOSED);
    for op in [Op::EvtchnSend, Op::EvtchnClose] {
        for port in [0, 5, 64, u64::MAX] {
            assert_eq!(call(&mut hv, u, op as u64, [port, 0, 0, 0, 0]), EINVAL, "{op:?} {port}");
        }
    }
    for want in 1..EVTCHN_PORTS {
        assert_eq!(call(&mut hv, u, alloc, [0, 0, 0, 0, 0]), i64::from(want));
    }
    assert_eq!(call(&mut hv, u, alloc, [0, 0, 0, 0, 0]), ENOSPC);
}

#[test]
fn an_event_wakes_a_halted_domu_through_its_upcall_vector() {
    let mut hv = world();
    let u = running(&mut hv, "u");
    apic_on(&mut hv, u);
    let cb = Op::EvtchnSetCallback as u64;
    assert_eq!(call(&mut hv, 0, cb, [0, DOM0_PAGE, 0, 0, 0]), 0, "dom0 polls");
    assert_eq!(call(&mut hv, 0, Op::EvtchnBindVirq as u64, [VIRQ_DOM_EXC.into(), 0, 0, 0, 0]), 1);
    assert_eq!(call(&mut hv, u, cb, [0x40, DOMU_PAGE, 0, 0, 0]), 0);
    let up = call(&mut hv, u, Op::EvtchnAllocUnbound as u64, [0, 0, 0, 0, 0]) as u64;
    let d0 = call(&mut hv, 0, Op::EvtchnBindInterdomain as u64, [u as u64, up, 0, 0, 0]) as u64;
    assert_eq!((up, d0), (1, 2));
    // The domU halts with interrupts on; dom0 sends; the domU wakes, takes the vector and shuts
    // down, which dom0 hears about through VIRQ_DOM_EXC.
    hv.domains[u].vcpus[0].arch.as_mut().expect("vcpu").regs.insert("rflags", 0x202);
    push(&mut hv, u as u32, Exit::Hlt, Gprs::default());
    push(&mut hv, u as u32, Exit::Hypercall, Gprs { rax: Op::Shutdown as u64, ..Gprs::default() });
    let send = Gprs { rax: Op::EvtchnSend as u64, rdi: d0, ..Gprs::default() };
    push(&mut hv, 0, Exit::Hypercall, Gprs { rax: Op::Yield as u64, ..Gprs::default() });
    push(&mut hv, 0, Exit::Hypercall, send);
    dom0_yields_then_powers_off(&mut hv, 4);
    assert_eq!(run_until_stop(&mut hv).status, StopStatus::Ok);
    let v = hv.domains[u].vcpus[0].arch.as_ref().expect("vcpu");
    assert_eq!(v.irqs, [0x40], "the upcall vector, once");
    assert_eq!(hv.domains[u].state, Some(DomainState::Shutdown), "it ran again after the event");
    assert_eq!(evtchn_page(&hv, u).pending[0], 1 << up);
    assert_eq!(evtchn_page(&hv, 0).pending[0], 1 << 1, "VIRQ_DOM_EXC");
}

#[test]
fn an_upcall_is_raised_only_for_a_new_unmasked_event_and_nothing_is_lost() {
    let mut hv = world();
    let u = running(&mut hv, "u");
    apic_on(&mut hv, u);
    let up = call(&mut hv, u, Op::EvtchnAllocUnbound as u64, [0, 0, 0, 0, 0]) as u64;
    let d0 = call(&mut hv, 0, Op::EvtchnBindInterdomain as u64, [u as u64, up, 0, 0, 0]) as u64;
    let send = |hv: &mut TestHv| call(hv, 0, Op::EvtchnSend as u64, [d0, 0, 0, 0, 0]);
    // No page yet: the event is held in microhv, and lands when the page is registered.
    assert_eq!(send(&mut hv), 0);
    assert_eq!(upcall_pending(&hv, u), None);
    put(&mut hv, u, DOMU_PAGE, EvtchnShared::new_zeroed().as_bytes());
    assert_eq!(call(&mut hv, u, Op::EvtchnSetCallback as u64, [0x40, DOMU_PAGE, 0, 0, 0]), 0);
    assert_eq!(evtchn_page(&hv, u).pending[0], 1 << up);
    let apic = Some(crate::platform::Pending::Apic(0x40));
    assert_eq!(upcall_pending(&hv, u), apic);
    let p = hv.domains[u].platform.as_mut().expect("platform");
    p.acknowledge(0, crate::platform::Pending::Apic(0x40));
    p.lapics[0].eoi();
    // Still pending in the page: another send raises nothing.
    assert_eq!(send(&mut hv), 0);
    assert_eq!(upcall_pending(&hv, u), None);
    // Handled (cleared) but masked: recorded, no upcall.
    let mut page = EvtchnShared::new_zeroed();
    page.mask[0] = 1 << up;
    put(&mut hv, u, DOMU_PAGE, page.as_bytes());
    assert_eq!(send(&mut hv), 0);
    assert_eq!(evtchn_page(&hv, u).pending[0], 1 << up);
    assert_eq!(upcall_pending(&hv, u), None);
    // Unmasked and handled: the next send raises the vector again.
    put(&mut hv, u, DOMU_PAGE, EvtchnShared::new_zeroed().as_bytes());
    assert_eq!(send(&mut hv), 0);
    assert_eq!(upcall_pending(&hv, u), apic);
    // Closing a port clears its pending bit; the peer is left unbound and its sends dropped.
    assert_eq!(call(&mut hv, u, Op::EvtchnClose as u64, [up, 0, 0, 0, 0]), 0);
    assert_eq!(evtchn_page(&hv, u).pending[0], 0);
    assert_eq!(send(&mut hv), 0);
    assert_eq!(evtchn_page(&hv, u).pending[0], 0);
    assert_eq!(hv.evtchn.status(0, d0), Ok(crate::evtchn::Port::Unbound(u as u16)));
}

#[test]
fn destroying_a_domain_unbinds_its_peers_and_tells_dom0() {
    let mut hv = world();
    let held = |hv: &TestHv| hv.frames.free_frames() + hv.domains[0].mmu.frames_held();
    let free = held(&hv);
    assert_eq!(call(&mut hv, 0, Op::EvtchnSetCallback as u64, [0, DOM0_PAGE, 0, 0, 0]), 0);
    let virq = Op::EvtchnBindVirq as u64;
    let exc = call(&mut hv, 0, virq, [VIRQ_DOM_EXC.into(), 0, 0, 0, 0]) as u64;
    let con = call(&mut hv, 0, virq, [VIRQ_CON_RING.into(), 0, 0, 0, 0]) as u64;
    assert_eq!(call(&mut hv, 0, virq, [VIRQ_CON_RING.into(), 0, 0, 0, 0]), EEXIST);
    for round in 0..3 {
        put(&mut hv, 0, DOM0_PAGE, EvtchnShared::new_zeroed().as_bytes());
        let u = running(&mut hv, "u");
        put(&mut hv, u, 0x9000, b"hi\n");
        assert_eq!(call(&mut hv, u, Op::ConsoleWrite as u64, [0x9000, 3, 0, 0, 0]), 3);
        assert_eq!(evtchn_page(&hv, 0).pending[0], 1 << con, "round {round}: VIRQ_CON_RING");
        let up = call(&mut hv, u, Op::EvtchnAllocUnbound as u64, [0, 0, 0, 0, 0]) as u64;
        let bind = Op::EvtchnBindInterdomain as u64;
        let d0 = call(&mut hv, 0, bind, [u as u64, up, 0, 0, 0]) as u64;
        let offered = call(&mut hv, 0, Op::EvtchnAllocUnbound as u64, [u as u64, 0, 0, 0, 0]);
        put(&mut hv, 0, DOM0_PAGE, EvtchnShared::new_zeroed().as_bytes());
        assert_eq!(call(&mut hv, 0, Op::DomainDestroy as u64, [u as u64, 0, 0, 0, 0]), 0);
        assert_eq!(evtchn_page(&hv, 0).pending[0], 1 << exc, "round {round}: VIRQ_DOM_EXC");
        let gone = crate::evtchn::Port::Unbound(DOMID_INVALID as u16);
        assert_eq!(hv.evtchn.status(0, d0), Ok(gone));
        assert_eq!(hv.evtchn.status(0, offered as u64), Ok(gone));
        // The next domain gets the same id and inherits nothing.
        let next = running(&mut hv, "next");
        assert_eq!(next, u);
        assert_eq!(call(&mut hv, next, bind, [0, offered as u64, 0, 0, 0]), EINVAL);
        assert_eq!(call(&mut hv, 0, Op::EvtchnSend as u64, [d0, 0, 0, 0, 0]), 0, "dropped");
        assert_eq!(hv.evtchn.tables[next].held, 0);
        for p in [d0, offered as u64] {
            assert_eq!(call(&mut hv, 0, Op::EvtchnClose as u64, [p, 0, 0, 0, 0]), 0);
        }
        assert_eq!(call(&mut hv, 0, Op::DomainDestroy as u64, [next as u64, 0, 0, 0, 0]), 0);
    }
    assert_eq!(held(&hv), free);
}

/// Two vCPUs of a domain that wake each other with IPIs and halt, again and again, while
/// another domain computes: each wake-up is boosted, and before boosts could follow boosts the
/// pair kept the CPU for ever (the bystander and dom0 ran no more until it stopped).
#[test]
fn vcpus_waking_each_other_do_not_starve_the_others() {
    let mut hv = world();
    let d = create_with(&mut hv, &create_args("pair", 2 << 20, 2, 0)) as usize;
    for v in 0..2 {
        assert_eq!(set_state(&mut hv, d, v, &flat32(0x10_0000)), 0);
    }
    assert_eq!(call(&mut hv, 0, Op::DomainUnpause as u64, [d as u64, 0, 0, 0, 0]), 0);
    let c = running(&mut hv, "bystander");
    let clock = hv.clock();
    for v in 0..2 {
        let p = hv.domains[d].platform.as_mut().expect("platform");
        let bsp = if v == 0 { 1 << 8 } else { 0 };
        p.lapics[v].set_apic_base(0xfee0_0000 | (1 << 11) | (1 << 10) | bsp).expect("x2APIC");
        p.apic_msr(&clock, v, 0x80f, Some(0x1ff)).expect("enabled");
        hv.domains[d].vcpus[v].arch.as_mut().expect("vcpu").regs.insert("rflags", 0x202);
    }
    let step = |exit, g| Step { exit, gprs: Some(g), cpl: 0 };
    let ipi = |to: u64| Gprs { rcx: 0x830, rax: 0x40, rdx: to, ..Gprs::default() };
    let eoi = Gprs { rcx: 0x80b, ..Gprs::default() };
    hv.backend.push(d as u32, 0, step(Exit::WrMsr, ipi(1)));
    hv.backend.push(d as u32, 0, step(Exit::Hlt, Gprs::default()));
    const ROUNDS: usize = 2_000;
    for _ in 0..ROUNDS {
        for (v, to) in [(1u32, 0u64), (0, 1)] {
            hv.backend.push(d as u32, v, step(Exit::WrMsr, eoi));
            hv.backend.push(d as u32, v, step(Exit::WrMsr, ipi(to)));
            hv.backend.push(d as u32, v, step(Exit::Hlt, Gprs::default()));
        }
    }
    for _ in 0..100_000 {
        push(&mut hv, c as u32, Exit::Cpuid, Gprs::default());
    }
    dom0_yields_then_powers_off(&mut hv, 50);
    run_until_stop(&mut hv);
    let order = &hv.backend.order;
    let last = order.iter().rposition(|&k| k == d as u32).expect("the pair ran");
    let during = |who: u32| order[..last].iter().filter(|&&k| k == who).count();
    // Round-robin comes between two boosts: the others get turns while the pair goes on, and
    // dom0 powers the machine off before the pair is done.
    assert!(during(c as u32) >= 50, "bystander ran {} times", during(c as u32));
    assert_eq!(hv.backend.runs.get(&(0, 0)), Some(&51), "dom0 took all its turns");
    let left = hv.backend.script.get(&(d as u32, 0)).map_or(0, |s| s.len());
    assert!(left > 0, "dom0 stopped the machine while the pair still had work");
}

/// Events held while the page is not RAM (memory given back) land with the next event once it
/// is again, and closing a port forgets its held event.
#[test]
fn held_events_land_once_the_page_is_ram_again() {
    let mut hv = world();
    let u = create(&mut hv, "u");
    let page = (3 << 20) - crate::frames::FRAME_SIZE;
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [u as u64, 3 << 20, 0, 0, 0]), 0);
    let mut ports = [0u64; 3];
    for p in &mut ports {
        let up = call(&mut hv, u, Op::EvtchnAllocUnbound as u64, [0, 0, 0, 0, 0]) as u64;
        *p = call(&mut hv, 0, Op::EvtchnBindInterdomain as u64, [u as u64, up, 0, 0, 0]) as u64;
    }
    assert_eq!(call(&mut hv, u, Op::EvtchnSetCallback as u64, [0, page, 0, 0, 0]), 0);
    let send = |hv: &mut TestHv, p: u64| call(hv, 0, Op::EvtchnSend as u64, [p, 0, 0, 0, 0]);
    let pending = |hv: &TestHv| get::<EvtchnShared>(hv, u, page).pending[0];
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [u as u64, 2 << 20, 0, 0, 0]), 0);
    assert_eq!((send(&mut hv, ports[0]), send(&mut hv, ports[1])), (0, 0), "held");
    assert_eq!(call(&mut hv, u, Op::EvtchnClose as u64, [2, 0, 0, 0, 0]), 0, "forgets port 2");
    assert_eq!(call(&mut hv, 0, Op::MemSet as u64, [u as u64, 3 << 20, 0, 0, 0]), 0);
    assert_eq!(pending(&hv), 0, "a new frame, nothing written yet");
    assert_eq!(send(&mut hv, ports[2]), 0);
    assert_eq!(pending(&hv), (1 << 1) | (1 << 3), "the held port 1 with the new event on 3");
}

/// `EVTCHN_NO_PAGE` unregisters the page: microhv writes it no more and holds events until the
/// next registration, which gets them.
#[test]
fn an_unregistered_page_is_written_no_more() {
    use abi::hypercall::EVTCHN_NO_PAGE;
    let mut hv = world();
    let u = running(&mut hv, "u");
    let up = call(&mut hv, u, Op::EvtchnAllocUnbound as u64, [0, 0, 0, 0, 0]) as u64;
    let d0 = call(&mut hv, 0, Op::EvtchnBindInterdomain as u64, [u as u64, up, 0, 0, 0]) as u64;
    let cb = Op::EvtchnSetCallback as u64;
    assert_eq!(call(&mut hv, u, cb, [0, DOMU_PAGE, 0, 0, 0]), 0);
    assert_eq!(call(&mut hv, u, cb, [0x40, EVTCHN_NO_PAGE, 0, 0, 0]), 0, "vector ignored");
    assert_eq!(call(&mut hv, 0, Op::EvtchnSend as u64, [d0, 0, 0, 0, 0]), 0);
    assert_eq!(evtchn_page(&hv, u).pending[0], 0, "the old page is left alone");
    assert_eq!(call(&mut hv, u, cb, [0, DOMU_PAGE + 0x1000, 0, 0, 0]), 0);
    assert_eq!(get::<EvtchnShared>(&hv, u, DOMU_PAGE + 0x1000).pending[0], 1 << up, "held");
}

/// A vCPU spinning on PAUSE (PAUSE-loop exiting, the pause filter) gives the CPU away at each
/// such exit when a sibling of its domain could run (the one it waits for), without its PAUSE
/// being skipped, and the exit is counted as `Pause`; a vCPU with no sibling to wait for goes
/// on (a timed wait, or a wait on a device).
#[test]
fn a_pause_loop_exit_gives_the_cpu_to_a_sibling() {
    let mut hv = world();
    let d = create_with(&mut hv, &create_args("pair", 2 << 20, 2, 0)) as usize;
    for v in 0..2 {
        assert_eq!(set_state(&mut hv, d, v, &flat32(0x10_0000)), 0);
    }
    assert_eq!(call(&mut hv, 0, Op::DomainUnpause as u64, [d as u64, 0, 0, 0, 0]), 0);
    let lone = running(&mut hv, "lone");
    const SPINS: usize = 20;
    for _ in 0..SPINS {
        hv.backend.push(d as u32, 0, Step { exit: Exit::Pause, gprs: None, cpl: 0 });
        push(&mut hv, lone as u32, Exit::Pause, Gprs::default());
    }
    for _ in 0..1_000 {
        hv.backend.push(d as u32, 1, Step { exit: Exit::Cpuid, gprs: None, cpl: 0 });
    }
    let rip =
        |hv: &TestHv| hv.domains[d].vcpus[0].arch.as_ref().and_then(|a| a.regs.get("rip").copied());
    let before = rip(&hv);
    dom0_yields_then_powers_off(&mut hv, 40);
    run_until_stop(&mut hv);
    let order = hv.backend.order_vcpus.clone();
    let spinner = (d as u32, 0);
    let twice = |k| order.windows(2).filter(|w| w == &[k, k]).count();
    assert_eq!(twice(spinner), 0, "the spinner ran twice in a row: {order:?}");
    assert!(twice((lone as u32, 0)) > 0, "a lone vCPU's spin goes on: {order:?}");
    assert_eq!(rip(&hv), before, "the PAUSE re-executes: RIP stays");
    assert_eq!(call(&mut hv, 0, Op::Stats as u64, [d as u64, SCRATCH, 0, 0, 0]), 0);
    let s: DomainStats = get(&hv, 0, SCRATCH);
    let spun = order.iter().filter(|&&k| k == spinner).count().min(SPINS);
    assert!(spun > 0, "the spinner ran");
    assert_eq!(s.exits_by_reason[abi::types::ExitReason::Pause as usize], spun as u64);
}

#[test]
fn each_cpu_runs_the_vcpus_placed_on_it_then_takes_the_others() {
    use crate::hv::Next;
    let mut hv = world();
    (hv.cpus, hv.online) = (2, 0b11);
    let d = create_with(&mut hv, &create_args("pair", 2 << 20, 2, 0)) as usize;
    for v in 0..2 {
        assert_eq!(set_state(&mut hv, d, v, &flat32(0x10_0000)), 0);
    }
    assert_eq!(call(&mut hv, 0, Op::DomainUnpause as u64, [d as u64, 0, 0, 0, 0]), 0);
    let home = |hv: &TestHv, v: usize| usize::from(hv.domains[d].vcpus[v].home);
    let mut homes = [home(&hv, 0), home(&hv, 1)];
    homes.sort();
    assert_eq!(homes, [0, 1], "placed round-robin");
    let on_1 = (0..2).find(|&v| home(&hv, v) == 1).unwrap();
    hv.cpu = 1;
    let Next::Run(d1, v1, _) = hv.next() else { panic!("CPU 1 has a vCPU") };
    assert_eq!((d1, v1), (d, on_1), "CPU 1 runs its own vCPU first");
    // Its own halted: CPU 1 takes one of CPU 0's instead, and that one moves.
    hv.domains[d].vcpus[on_1].halted = true;
    hv.domains[d].vcpus[on_1].halted_if = false;
    let Next::Run(d2, v2, _) = hv.next() else { panic!("CPU 1 takes CPU 0's work") };
    assert_ne!((d2, v2), (d, on_1));
    assert_eq!(usize::from(hv.domains[d2].vcpus[v2].home), 1, "it moved to CPU 1");
    // A vCPU another CPU runs (its hardware state away) is nobody else's to pick.
    let away = hv.domains[d2].vcpus[v2].arch.take();
    hv.domains[d2].vcpus[v2].on = Some(1);
    hv.cpu = 0;
    if let Next::Run(d3, v3, _) = hv.next() {
        assert_ne!((d3, v3), (d2, v2));
    }
    hv.domains[d2].vcpus[v2].arch = away;
}

#[test]
fn the_destroyer_waits_for_the_state_of_a_vcpu_running_elsewhere() {
    let mut hv = world();
    (hv.cpus, hv.online) = (2, 0b11);
    let free = hv.frames.free_frames();
    let d = create_with(&mut hv, &create_args("away", 2 << 20, 1, 0)) as usize;
    assert_eq!(set_state(&mut hv, d, 0, &flat32(0x10_0000)), 0);
    assert_eq!(call(&mut hv, 0, Op::DomainUnpause as u64, [d as u64, 0, 0, 0, 0]), 0);
    // CPU 1 runs it: its hardware state is CPU 1's.
    let away = hv.domains[d].vcpus[0].arch.take().expect("a vCPU state");
    hv.domains[d].vcpus[0].on = Some(1);
    assert!(hv.can_run((0, 0), 0));
    assert_eq!(call(&mut hv, 0, Op::DomainDestroy as u64, [d as u64, 0, 0, 0, 0]), 0);
    assert_eq!(hv.orphans, 1);
    assert!(!hv.can_run((0, 0), 0), "dom0 waits until CPU 1 freed it");
    assert!(hv.frames.free_frames() < free, "CPU 1 still holds it");
    // CPU 1 comes back and frees it.
    hv.cpu = 1;
    hv.reap(away);
    hv.cpu = 0;
    assert_eq!(hv.orphans, 0);
    assert!(hv.can_run((0, 0), 0), "dom0 goes on");
    assert!(!hv.domains[0].vcpus[0].reaps);
    assert_eq!(hv.frames.free_frames(), free, "every frame back");
    // Nothing ran elsewhere: the destroyer goes straight on.
    let d = create_with(&mut hv, &create_args("here", 2 << 20, 1, 0)) as usize;
    assert_eq!(call(&mut hv, 0, Op::DomainDestroy as u64, [d as u64, 0, 0, 0, 0]), 0);
    assert!(hv.can_run((0, 0), 0));
    assert_eq!(hv.frames.free_frames(), free);
}

#[test]
fn a_domain_starts_its_own_waiting_vcpus() {
    let mut hv = world();
    let d = create_with(&mut hv, &create_args("pair", 2 << 20, 2, 0)) as usize;
    assert_eq!(set_state(&mut hv, d, 0, &flat32(0x10_0000)), 0);
    assert_eq!(call(&mut hv, 0, Op::DomainUnpause as u64, [d as u64, 0, 0, 0, 0]), 0);
    let at = 0x1000;
    put(&mut hv, d, at, flat32(0x10_0200).as_bytes());
    let up =
        |hv: &mut TestHv, vcpu: u64, gpa: u64| call(hv, d, Op::VcpuUp as u64, [vcpu, gpa, 0, 0, 0]);
    assert_eq!(up(&mut hv, 2, at), EINVAL, "no vCPU 2");
    assert_eq!(up(&mut hv, u64::MAX, at), EINVAL);
    assert_eq!(up(&mut hv, 0, at), EEXIST, "vCPU 0 runs");
    assert_eq!(up(&mut hv, 1, 2 << 20), EFAULT, "beyond its RAM");
    let mut bad = flat32(0x10_0200);
    bad.mode = 2;
    put(&mut hv, d, at + 0x100, bad.as_bytes());
    assert_eq!(up(&mut hv, 1, at + 0x100), EINVAL);
    assert!(!hv.can_run((d, 1), 0), "still waiting");
    assert_eq!(up(&mut hv, 1, at), 0);
    assert_eq!(hv.domains[d].vcpus[1].arch.as_ref().map(|v| v.rip), Some(0x10_0200));
    assert!(hv.can_run((d, 1), 0), "started");
    assert_eq!(up(&mut hv, 1, at), EEXIST, "once");
    // Only its own: dom0's vCPU 0 runs, and it has no other.
    assert_eq!(call(&mut hv, 0, Op::VcpuUp as u64, [1, SCRATCH, 0, 0, 0]), EINVAL);
}
