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
        mem_mib: MACHINE_MIB,
        cmdline: String::new(),
        modules: vec![Module { path: images.dom0.clone(), args: dom0_args.into() }],
        timeout: BOOT_TIMEOUT,
        kvm: false,
        echo: false,
        control: None,
    }
}

/// The test guests the domU scenarios boot as modules.
pub const SCENARIO_GUESTS: &[&str] = &["hello", "spinner", "toucher", "hostile", "mbkernel"];

/// A boot of microhv with dom0 running the domU scenarios over the test guests.
pub fn domus_spec(name: &str, emulator: Emulator, images: &Images) -> Spec {
    let mut s = spec(name, emulator, images, "scenario=domus");
    for g in SCENARIO_GUESTS {
        s.modules.push(Module { path: images.guest(g), args: String::new() });
    }
    s
}

/// A boot of microhv with dom0 serving the control protocol, the test guests as boot
/// modules, and COM2 on a socket in the run's directory.
pub fn hvctl_spec(name: &str, emulator: Emulator, images: &Images) -> Spec {
    let mut s = domus_spec(name, emulator, images);
    s.modules[0].args = String::new();
    s.control = Some(crate::images::out_dir().join(name).join("dom0.sock"));
    s
}

/// Every boot test.
pub fn cases(images: &Images) -> Vec<Case> {
    use Check::*;
    vec![
        Case {
            name: "hvctl-bochs",
            spec: hvctl_spec("hvctl-bochs", Emulator::Bochs, images),
            checks: vec![
                Status(StopStatus::Ok),
                Contains("[d0] serving the control protocol v1 on COM2 (5 boot module(s)"),
                Contains("create \"up-spin\" from upload -> d1"),
                Contains("create \"mod-hello\" from module \"hello\" -> d2"),
                Contains("undecodable request -> error: unknown request (tag 99)"),
                Contains("unreadable frame -> error: frame longer than 8192 bytes"),
                Contains("unreadable frame -> error: malformed frame: checksum mismatch"),
                Contains("[d0] powering off at the tools' request"),
            ],
            driver: Some(crate::hvctl_test::drive),
        },
        Case {
            name: "domus-bochs",
            spec: domus_spec("domus-bochs", Emulator::Bochs, images),
            checks: vec![
                Status(StopStatus::Ok),
                Contains("scenario hello: PASS"),
                Contains("scenario two-domus: PASS"),
                Contains("scenario toucher: PASS"),
                Contains("scenario hostile: PASS"),
                Contains("scenario multiboot: PASS"),
                Contains("scenarios: 5 passed, 0 failed"),
                Contains("crashed: access outside its memory"),
                Contains("crashed: triple fault"),
                Contains("[d1] hello from domU 1"),
            ],
            driver: None,
        },
        Case {
            name: "smoke-bochs",
            spec: spec("smoke-bochs", Emulator::Bochs, images, "smoke bench"),
            checks: vec![
                Status(StopStatus::Ok),
                Contains("VMX with EPT"),
                Contains("[d0] microhv ABI 1.0 (dom0 built for 1.0): ok"),
                Contains("[d0] dom0 ready"),
                Contains("EPT violations served by the mmu"),
            ],
            driver: None,
        },
        Case {
            name: "qemu-no-vmx",
            spec: spec("qemu-no-vmx", Emulator::Qemu, images, "smoke"),
            checks: vec![
                Status(StopStatus::NoVirtualization),
                Contains("no VMX: CPUID.1:ECX.VMX[bit 5] = 0"),
                QemuExit(((StopStatus::NoVirtualization as i32) << 1) | 1),
            ],
            driver: None,
        },
        Case {
            name: "dom0-triple-fault",
            spec: spec("dom0-triple-fault", Emulator::Bochs, images, "misbehave=triple-fault"),
            checks: vec![
                Status(StopStatus::Dom0Crashed),
                Contains("[d0] triple-faulting on purpose"),
                Contains("d0v0 (dom0) crashed: triple fault"),
                Contains("exit 0x2 (TripleFault)"),
                Contains("dom0 crashed: triple fault"),
            ],
            driver: None,
        },
        Case {
            name: "dom0-outside-memory",
            spec: spec("dom0-outside-memory", Emulator::Bochs, images, "misbehave=outside-memory"),
            checks: vec![
                Status(StopStatus::Dom0Crashed),
                Contains("read access to guest-physical 0xb0000000 outside its memory"),
                Contains("d0v0 (dom0) crashed: access outside its memory"),
                Contains("exit 0x30 (NestedPageFault"),
            ],
            driver: None,
        },
    ]
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

/// Runs the boot tests whose name contains `filter` (all if empty); true if all passed.
pub fn run_all(images: &Images, filter: &str) -> Result<bool> {
    let mut ok = true;
    for case in cases(images).into_iter().filter(|c| c.name.contains(filter)) {
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
