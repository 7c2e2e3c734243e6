//! The boot tests: each boots microhv under an emulator and checks its log.

use crate::emu::{self, Emulator, Outcome, Running, Spec};
use crate::images::{Images, Module};
use anyhow::Result;
use microhv_core::status::StopStatus;
use std::path::Path;
use std::time::Duration;

/// Guest RAM of the emulated machine.
pub const MACHINE_MIB: u32 = 512;
/// Longest a boot test may take.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a boot test expects.
#[derive(Debug, Clone)]
pub enum Check {
    /// The verdict line has this status.
    Status(StopStatus),
    /// The log contains this text.
    Contains(&'static str),
    /// QEMU exited with this code (`isa-debug-exit`: status << 1 | 1).
    QemuExit(i32),
    /// A conformance verdict line `conformance total: N passed, 0 failed` with N > 0.
    Verdict,
    /// The log contains one of these texts.
    Any(&'static [&'static str]),
}

/// Drives a boot while it runs, through the control socket; returns the lines of its report.
pub type Driver = fn(&mut Running, &Path, &Images) -> Result<Vec<String>>;

/// One boot test.
pub struct Case {
    /// Name (also its log directory).
    pub name: &'static str,
    /// The boot.
    pub spec: Spec,
    /// What must hold.
    pub checks: Vec<Check>,
    /// Steps taken while the boot runs (needs `spec.control`).
    pub driver: Option<Driver>,
}

/// A boot of microhv with dom0 and `dom0_args`.
pub fn spec(name: &str, emulator: Emulator, images: &Images, dom0_args: &str) -> Spec {
    Spec {
        name: name.into(),
        emulator,
        cpu: None,
        cpus: 0,
        mem_mib: MACHINE_MIB,
        cmdline: String::new(),
        modules: vec![Module { path: images.dom0.clone(), args: dom0_args.into() }],
        timeout: BOOT_TIMEOUT,
        kvm: false,
        echo: false,
        control: None,
        disk: None,
    }
}

/// The test guests the domU scenarios boot as modules.
pub const SCENARIO_GUESTS: &[&str] =
    &["hello", "spinner", "toucher", "hostile", "mbkernel", "platform", "modes"];

/// A boot of microhv with dom0 running the domU scenarios over the test guests, on one CPU:
/// the scenarios check the scheduler's fairness between guests that share a CPU (boost-hog,
/// two-domus), and under Bochs the timers' exact rates, which hold only where one CPU counts
/// the instructions (Bochs keeps a TSC per CPU).
pub fn domus_spec(name: &str, emulator: Emulator, images: &Images) -> Spec {
    domus_spec_on(name, emulator, images, 1)
}

/// The domU scenarios on `cpus` CPUs; the exact timer rates are asked for only under Bochs on
/// one.
fn domus_spec_on(name: &str, emulator: Emulator, images: &Images, cpus: u32) -> Spec {
    // The exit-window attack aims at microhv's exit path and at its hypervisor state.
    let strict = emulator == Emulator::Bochs && cpus == 1;
    let args = format!(
        "scenario=domus hv-window={:#x} hv-tss={:#x}{}",
        images.microhv_symbol("microhv_svm_window_start"),
        images.microhv_symbol("microhv2HV"),
        if strict { " strict-timing" } else { "" },
    );
    let mut s = spec(name, emulator, images, &args);
    s.cpus = cpus;
    for g in SCENARIO_GUESTS {
        s.modules.push(Module { path: images.guest(g), args: String::new() });
    }
    s
}

/// What every run of dom0's `scenario=domus` must show (`domus-*`, `domus-smp-*`).
fn domus_checks() -> Vec<Check> {
    use Check::*;
    vec![
        Status(StopStatus::Ok),
        Contains("scenario hello: PASS"),
        Contains("scenario two-domus: PASS"),
        Contains("scenario crowd: PASS"),
        Contains("scenario toucher: PASS"),
        Contains("scenario hostile: PASS"),
        Contains("scenario multiboot: PASS"),
        Contains("scenario platform: PASS"),
        Contains("scenarios: 7 passed, 0 failed"),
        Contains("platform: 22 passed, 0 failed"),
        Contains("platform: tpr-cr8: PASS"),
        Contains("platform: ram-zeroed: PASS"),
        Contains("platform: nmi-ipi: PASS"),
        Contains("platform: tsc-deadline: PASS"),
        Contains("platform: x2apic: PASS"),
        Contains("platform: fw-cfg: PASS"),
        Contains("platform: acpi-tables: PASS"),
        Contains("platform: absent-devices: PASS"),
        Contains("mbkernel: 2 module(s)"),
        Contains("modes: state 3, failure mask 0x0"),
        Contains("hostile: read 0xffffffffffffffff outside my memory"),
        Contains("hostile: wrote outside my memory, read back 0xffffffffffffffff"),
        Contains("Absent access at 0x40000000 not emulated: instruction fetch from a device page"),
        Contains(
            "platform: absent: memory at 0x30000000, 0x3ffffff8, 0xc0000000 reads all ones: true",
        ),
        Contains("crashed: triple fault"),
        Contains("[d1] hello from domU 1"),
        // The hostile regression cases (each also counted by "scenario hostile: PASS").
        Contains("debug-window: contained (refused, shut down cleanly)"),
        Contains("noncanonical: contained (refused, shut down cleanly)"),
        Contains("hostile: hypercall at 0x7ffffffffffd: #GP at 0x7ffffffffffd (ok)"),
        Contains("Lapic access at 0xfee00000 not emulated: the guest's page-table walk reached it"),
        Contains("apic-walk: contained (unsupported mmio access)"),
        Contains("invd-rdpmc: contained (refused, shut down cleanly)"),
        Contains("hostile: RDPMC: #GP (RF in the pushed RFLAGS: true)"),
        Contains("hostile: CLFLUSH of the APIC page completed"),
        Contains("console-flood: contained (refused, shut down cleanly)"),
        Contains("lines not logged: rate limit; all are in its console ring"),
    ]
}

/// A boot of microhv with dom0 serving the control protocol, the test guests as boot
/// modules, and COM2 on a socket in the run's directory.
pub fn hvctl_spec(name: &str, emulator: Emulator, images: &Images) -> Spec {
    let mut s = domus_spec(name, emulator, images);
    s.modules[0].args = String::new();
    s.control = Some(crate::images::out_dir().join(name).join("dom0.sock"));
    s
}

/// A boot of microhv with dom0 running the Linux scenario over `kernel` and `initramfs`.
pub fn linux_spec(emulator: Emulator, images: &Images, kernel: &Path, initramfs: &Path) -> Spec {
    let name = format!("linux-{emulator:?}").to_lowercase();
    // Linux with 2 vCPUs. Under Bochs on as many CPUs as it, dom0 (which polls) and the
    // bystander (which spins) keep busy: with 3, its two vCPUs once both settled on one CPU,
    // none idle to steal either (balancing goes no further: README, "SMP"). Under QEMU two:
    // with 4 on its one TCG thread, Linux's console set-up, each port access served by dom0,
    // made no progress for dom0's whole guard (the spinning CPUs hold the thread), while with
    // 2 it ran on both CPUs in every run.
    let mut s = spec(&name, emulator, images, "scenario=linux");
    s.cpus = if emulator == Emulator::Bochs { 4 } else { 2 };
    // The module names dom0 looks for are the file names: a file named otherwise (given on
    // the command line) is copied under the expected name when the boot starts.
    for (path, want) in [(kernel, "vmlinux"), (initramfs, "initramfs.cpio")] {
        let named = if path.file_name().is_some_and(|n| n == want) {
            path.to_path_buf()
        } else {
            images.dir.join(want)
        };
        s.modules.push(Module { path: named, args: String::new() });
    }
    // A bystander domU shares the CPU with Linux.
    s.modules.push(Module { path: images.guest("spinner"), args: String::new() });
    s.timeout = Duration::from_secs(1200);
    s
}

/// dom0's line when it starts serving the control protocol with the test guests.
fn serving_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        format!(
            "[d0] serving the control protocol v{} on COM2 (7 boot module(s)",
            abi::proto::PROTOCOL_VERSION
        )
    })
}

/// dom0's line for a matching ABI version (this tree's `abi` on both sides).
fn abi_ok_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        let v = format!("{}.{}", abi::ABI_VERSION_MAJOR, abi::ABI_VERSION_MINOR);
        format!("[d0] microhv ABI {v} (dom0 built for {v}): ok")
    })
}

/// What the Linux scenario must show (dom0 checks every line init prints; these are the
/// summary and a few of them, as they reached microhv's log through dom0's echo).
pub fn linux_checks() -> Vec<Check> {
    vec![
        Check::Status(StopStatus::Ok),
        Check::Contains("[linux] microhv-linux: init started"),
        Check::Contains("[linux] microhv-linux: slept 1 s, date advanced ("),
        Check::Contains("[linux] microhv-linux: ran: echo typed-on-the-console"),
        Check::Contains("] reboot: Power down"),
        Check::Contains("linux: state 3, reason 0, status 0"),
        Check::Contains("linux: the bystander ran"),
        Check::Contains("scenario linux: PASS"),
    ]
}

/// The conformance run: `conform-dom0` booted as dom0, with the domU suite and the storm
/// guest as modules.
pub fn conformance_spec(emulator: Emulator, images: &Images) -> Spec {
    let name = format!("conformance-{emulator:?}").to_lowercase();
    let mut s = spec(&name, emulator, images, "");
    // Four CPUs: the storm domU's 4 vCPUs hammer hypercalls concurrently while dom0's storm
    // creates and destroys domains (#14). (Bochs's CPUs each count their own instructions as
    // their TSC, so the exact timer rates of `strict=1` hold on one CPU only: not asked.)
    s.cpus = 4;
    s.modules = ["conform-dom0", "conform-domu", "storm", "platform", "hostile", "evtchn", "grant"]
        .iter()
        .map(|g| Module { path: images.guest(g), args: String::new() })
        .collect();
    s
}

/// The checks of a conformance run: a verdict line with no failure (silence fails), and a clean
/// power-off.
pub fn conformance_checks() -> Vec<Check> {
    vec![
        Check::Status(StopStatus::Ok),
        Check::Contains("conformance dom0: "),
        Check::Contains("conformance evtchn: "),
        Check::Contains("conformance grant: "),
        Check::Contains("conformance storm: "),
        Check::Contains("calls on 4 vCPUs"),
        Check::Verdict,
    ]
}

/// A boot with a CPU model other than the emulator's default.
fn with_cpu(mut spec: Spec, cpu: &str) -> Spec {
    spec.cpu = Some(cpu.into());
    spec
}

/// QEMU's exit code for a verdict (`isa-debug-exit`: status << 1 | 1).
fn qemu_exit(s: StopStatus) -> Check {
    Check::QemuExit(((s as i32) << 1) | 1)
}

/// Every boot test: the VMX path under Bochs (`corei7_skylake_x`), the SVM path under QEMU TCG
/// (`-cpu max`) with the same checks, one SVM smoke under Bochs (`ryzen`), and the messages for
/// CPUs without what microhv needs.
pub fn cases(images: &Images) -> Vec<Case> {
    use Check::*;
    use Emulator::{Bochs, Qemu};
    let triple_fault = |name: &'static str, emu, exit: &'static str| Case {
        name,
        spec: spec(name, emu, images, "misbehave=triple-fault"),
        checks: vec![
            Status(StopStatus::Dom0Crashed),
            Contains("[d0] triple-faulting on purpose"),
            Contains("d0v0 (dom0) crashed: triple fault"),
            Contains(exit),
            Contains("dom0 crashed: triple fault"),
        ],
        driver: None,
    };
    let outside_memory = |name: &'static str, emu, exit: &'static str| Case {
        name,
        spec: spec(name, emu, images, "misbehave=outside-memory"),
        checks: vec![
            Status(StopStatus::Dom0Crashed),
            Contains("read access to guest-physical 0xb0000000 outside its memory"),
            Contains("d0v0 (dom0) crashed: access outside its memory"),
            Contains(exit),
        ],
        driver: None,
    };
    let domus = |name: &'static str, emu| Case {
        name,
        spec: domus_spec(name, emu, images),
        checks: domus_checks(),
        driver: None,
    };
    // The same scenarios on 4 CPUs (#14): `crowd` runs 5 spinners next to dom0, more runnable
    // vCPUs than CPUs.
    let domus_smp = |name: &'static str, emu| Case {
        name,
        spec: domus_spec_on(name, emu, images, 4),
        checks: {
            let mut c = domus_checks();
            c.push(Contains("[hv] 4 CPU(s) online"));
            c.push(Contains("crowd: 5 spinners on 4 CPU(s) next to dom0"));
            c
        },
        driver: None,
    };
    let hvctl = |name: &'static str, emu| Case {
        name,
        spec: hvctl_spec(name, emu, images),
        checks: vec![
            Status(StopStatus::Ok),
            Contains(serving_line()),
            Contains("[d0] disk: none on the primary ATA channel: "),
            Contains("create \"up-spin\" from upload -> d1"),
            Contains("create \"mod-hello\" from module \"hello\" -> d2"),
            Contains("undecodable request -> error: unknown request (tag 99)"),
            Contains("unreadable frame -> error: frame longer than 8192 bytes"),
            Contains("unreadable frame -> error: malformed frame: checksum mismatch"),
            Contains("[d0] powering off at the tools' request"),
        ],
        driver: Some(crate::hvctl_test::drive),
    };
    let disk = |name: &'static str, emu| Case {
        name,
        spec: crate::disk_test::spec(name, emu, images),
        checks: crate::disk_test::checks(),
        driver: Some(crate::disk_test::drive),
    };
    // W^X and guard pages: each self-test must end in a ring-0 page fault on its address, with
    // the error code of the access the mapping forbids (P|W, P|I/D, W on a missing page).
    let selftest = |name: &'static str, emu, test: &str, fault: &'static str| {
        let mut s = spec(name, emu, images, "smoke");
        s.cmdline = format!("selftest={test}");
        Case {
            name,
            spec: s,
            checks: vec![
                Status(StopStatus::Exception),
                Contains("must fault"),
                Contains(fault),
                Contains("CPU exception 14 (page fault) in ring 0"),
            ],
            driver: None,
        }
    };
    // Debian's Linux as a domU, from the kit (`run_all` builds it first).
    let linux = |emu| {
        let dir = crate::linux::dir();
        let spec = linux_spec(emu, images, &dir.join("vmlinux"), &dir.join("initramfs.cpio"));
        let name = if emu == Bochs { "linux-bochs" } else { "linux-qemu" };
        let mut checks = linux_checks();
        // Its two vCPUs ran on two CPUs.
        checks.push(Contains("[hv] d2: its vCPUs ran on 2 CPUs"));
        Case { name, spec, checks, driver: None }
    };
    // SMP (#14): every CPU of a 4-CPU machine comes up and runs vCPUs; dom0 runs the `smp`
    // guest's parallel workload with 4 and with 2 vCPUs, spinning, and touching memory while
    // dom0 cycles its MMU page cap.
    let smp = |name: &'static str, emu, ext: &'static str| {
        let mut spec = spec(name, emu, images, "scenario=smp");
        spec.cpus = 4;
        spec.modules.push(Module { path: images.guest("smp"), args: String::new() });
        let mut checks = vec![Status(StopStatus::Ok), Contains("[d0] dom0 ready")];
        checks.extend([ext, "cpu 2 (apic id 2) online", "cpu 3 (apic id 3) online"].map(Contains));
        checks.push(Contains("[hv] 4 CPU(s) online"));
        checks.extend(
            ["[d0]   smp: 4 vCPUs: work ", "[d0]   smp: 2 vCPUs: work "]
                .into_iter()
                .chain([
                    "[d0] scenario smp-4: PASS",
                    "[d0] scenario smp-2: PASS",
                    "[d0] scenario smp-4-spin: PASS",
                    "[d0] scenario smp-4-touch: PASS",
                ])
                .map(Contains),
        );
        // The 4-vCPU guest's vCPUs ran on the CPUs dom0 left them (it polls, so it keeps one
        // busy), or on all.
        checks.push(Any(&["[hv] d1: its vCPUs ran on 3 CPUs", "[hv] d1: its vCPUs ran on 4 CPUs"]));
        if emu == Qemu {
            checks.push(qemu_exit(StopStatus::Ok));
        }
        Case { name, spec, checks, driver: None }
    };
    vec![
        smp("smp-bochs", Bochs, "cpu 1 (apic id 1) online, VMX on"),
        smp("smp-qemu", Qemu, "cpu 1 (apic id 1) online, SVM on"),
        linux(Qemu),
        linux(Bochs),
        selftest("wx-write-text", Bochs, "write-text", "vector 14 (page fault) error code 0x3\n"),
        selftest("wx-exec-data", Bochs, "exec-data", "vector 14 (page fault) error code 0x11\n"),
        selftest("wx-stack-guard", Bochs, "stack-guard", "vector 14 (page fault) error code 0x2\n"),
        selftest(
            "qemu-wx-write-text",
            Qemu,
            "write-text",
            "vector 14 (page fault) error code 0x3\n",
        ),
        hvctl("hvctl-bochs", Bochs),
        hvctl("hvctl-qemu", Qemu),
        disk("disk-qemu", Qemu),
        disk("disk-bochs", Bochs),
        Case {
            name: "conformance-bochs",
            spec: conformance_spec(Bochs, images),
            checks: {
                let mut c = conformance_checks();
                c.push(Contains("[hv] 4 CPU(s) online"));
                c
            },
            driver: None,
        },
        Case {
            name: "conformance-qemu",
            spec: conformance_spec(Qemu, images),
            checks: {
                let mut c = conformance_checks();
                c.push(Contains("[hv] 4 CPU(s) online"));
                c
            },
            driver: None,
        },
        domus("domus-bochs", Bochs),
        domus("domus-qemu", Qemu),
        domus_smp("domus-smp-bochs", Bochs),
        domus_smp("domus-smp-qemu", Qemu),
        {
            // Bochs's AMD model panics on a guest triple fault (see shared/platform-notes.md):
            // the hostile scenario leaves that attack out there.
            let mut spec = with_cpu(domus_spec("domus-bochs-ryzen", Bochs, images), "ryzen");
            spec.modules[0].args.push_str(" no-triple-fault");
            let checks = domus("domus-bochs-ryzen", Bochs)
                .checks
                .into_iter()
                .filter(|c| !matches!(c, Contains(t) if t.contains("triple fault")))
                .collect();
            Case { name: "domus-bochs-ryzen", spec, checks, driver: None }
        },
        Case {
            name: "smoke-bochs",
            spec: spec("smoke-bochs", Bochs, images, "smoke bench"),
            checks: vec![
                Status(StopStatus::Ok),
                Contains("VMX with EPT"),
                Contains(abi_ok_line()),
                Contains("[d0] dom0 ready"),
                Contains("nested page faults served by the mmu"),
            ],
            driver: None,
        },
        Case {
            name: "smoke-qemu",
            spec: spec("smoke-qemu", Qemu, images, "smoke bench"),
            checks: vec![
                Status(StopStatus::Ok),
                Contains("SVM with NPT"),
                Contains(abi_ok_line()),
                Contains("[d0] dom0 ready"),
                Contains("[d0] bench: null hypercall round trip"),
                Contains("nested page faults served by the mmu"),
                qemu_exit(StopStatus::Ok),
            ],
            driver: None,
        },
        Case {
            name: "smoke-bochs-ryzen",
            spec: with_cpu(spec("smoke-bochs-ryzen", Bochs, images, "smoke bench"), "ryzen"),
            checks: vec![
                Status(StopStatus::Ok),
                Contains("SVM with NPT"),
                Contains(abi_ok_line()),
                Contains("[d0] dom0 ready"),
                Contains("[d0] bench: null hypercall round trip"),
                Contains("nested page faults served by the mmu"),
            ],
            driver: None,
        },
        Case {
            name: "qemu-no-npt",
            spec: with_cpu(spec("qemu-no-npt", Qemu, images, "smoke"), "qemu64,+svm"),
            checks: vec![
                Status(StopStatus::NoVirtualization),
                Contains("SVM lacks nested paging (NPT) (CPUID.8000_000Ah:EDX.NP[bit 0])"),
                qemu_exit(StopStatus::NoVirtualization),
            ],
            driver: None,
        },
        Case {
            name: "qemu-no-vmx",
            spec: with_cpu(spec("qemu-no-vmx", Qemu, images, "smoke"), "max,vendor=GenuineIntel"),
            checks: vec![
                Status(StopStatus::NoVirtualization),
                Contains("no VMX: CPUID.1:ECX.VMX[bit 5] = 0 on this GenuineIntel CPU"),
                qemu_exit(StopStatus::NoVirtualization),
            ],
            driver: None,
        },
        Case {
            name: "qemu-no-svm",
            spec: with_cpu(spec("qemu-no-svm", Qemu, images, "smoke"), "max,-svm"),
            checks: vec![
                Status(StopStatus::NoVirtualization),
                Contains("no SVM: CPUID.8000_0001h:ECX.SVM[bit 2] = 0 on this AuthenticAMD CPU"),
                qemu_exit(StopStatus::NoVirtualization),
            ],
            driver: None,
        },
        triple_fault("dom0-triple-fault", Bochs, "exit 0x2 (TripleFault)"),
        triple_fault("qemu-dom0-triple-fault", Qemu, "exit 0x7f (TripleFault)"),
        outside_memory("dom0-outside-memory", Bochs, "exit 0x30 (NestedPageFault"),
        outside_memory("qemu-dom0-outside-memory", Qemu, "exit 0x400 (NestedPageFault"),
    ]
}

/// `(passed, failed)` from the `conformance total:` verdict line.
pub fn conformance_totals(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains("conformance total: "))?;
    let rest = &line[line.find("conformance total: ")? + "conformance total: ".len()..];
    let mut nums = rest.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty());
    Some((nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
}

/// Checks `out` against `checks`; the failures, in words.
pub fn verify(out: &Outcome, checks: &[Check]) -> Vec<String> {
    let mut failures = Vec::new();
    if out.timed_out {
        failures.push("timed out".into());
    }
    let stop = out.stop();
    for c in checks {
        match c {
            Check::Status(s) => match &stop {
                Some((got, _)) if got == s => {}
                Some((got, why)) => failures.push(format!(
                    "status {} ({}): {why}, expected {} ({})",
                    *got as u8,
                    got.name(),
                    *s as u8,
                    s.name()
                )),
                None => failures.push(format!("no stop line, expected status {}", s.name())),
            },
            Check::Contains(t) => {
                if !out.log.contains(t) {
                    failures.push(format!("log lacks {t:?}"));
                }
            }
            Check::Verdict => match conformance_totals(&out.log) {
                Some((p, 0)) if p > 0 => {}
                Some((p, f)) => failures.push(format!("conformance: {p} passed, {f} failed")),
                None => failures.push("no conformance verdict: the suite crashed or hung".into()),
            },
            Check::Any(texts) => {
                if !texts.iter().any(|t| out.log.contains(t)) {
                    failures.push(format!("log lacks every one of {texts:?}"));
                }
            }
            Check::QemuExit(code) => {
                let got = out.exit.and_then(|e| e.code());
                if got != Some(*code) {
                    failures.push(format!("QEMU exit code {got:?}, expected {code}"));
                }
            }
        }
    }
    failures
}

/// Runs the boot tests whose name contains `filter` (all if empty), each with `cpus` CPUs
/// unless it needs a count of its own; true if all passed.
pub fn run_all(images: &Images, filter: &str, cpus: u32) -> Result<bool> {
    let mut ok = true;
    let mut cases: Vec<Case> =
        cases(images).into_iter().filter(|c| c.name.contains(filter)).collect();
    for c in cases.iter_mut().filter(|c| c.spec.cpus == 0) {
        c.spec.cpus = cpus;
    }
    if cases.iter().any(|c| c.name.starts_with("linux")) {
        crate::linux::kit()?;
    }
    for case in cases {
        // A boot with a disk gets a fresh one of its own, with the disk test's files.
        if case.spec.disk.is_some() {
            crate::disk_test::prepare(&case.spec, images)?;
        }
        let (out, mut failures, report) = match (case.driver, &case.spec.control) {
            (Some(drive), Some(socket)) => {
                let mut run = emu::start(&case.spec, images)?;
                let driven = drive(&mut run, socket, images);
                if driven.is_err() {
                    run.kill();
                }
                let out = run.finish()?;
                match driven {
                    Ok(report) => (out, Vec::new(), report),
                    Err(e) => (out, vec![format!("{e:#}")], Vec::new()),
                }
            }
            _ => (emu::boot(&case.spec, images)?, Vec::new(), Vec::new()),
        };
        failures.extend(verify(&out, &case.checks));
        for line in &report {
            println!("    {line}");
        }
        let verdict = if failures.is_empty() { "PASS" } else { "FAIL" };
        println!("boot test {:<24} {verdict}  ({:.1} s)", case.name, out.wall.as_secs_f64());
        if !failures.is_empty() {
            ok = false;
            for f in &failures {
                println!("    {f}");
            }
            println!("    log: {}\n--- last lines ---\n{}\n---", out.dir.display(), out.tail(25));
        }
    }
    Ok(ok)
}
