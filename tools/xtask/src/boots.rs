//! The boot tests: each boots microhv under an emulator and checks its log.

use crate::emu::{self, Emulator, Outcome, Spec};
use crate::images::{Images, Module};
use anyhow::Result;
use microhv_core::status::StopStatus;
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

/// One boot test.
pub struct Case {
    /// Name (also its log directory).
    pub name: &'static str,
    /// The boot.
    pub spec: Spec,
    /// What must hold.
    pub checks: Vec<Check>,
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

/// Every boot test.
pub fn cases(images: &Images) -> Vec<Case> {
    use Check::*;
    vec![
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
        },
        Case {
            name: "qemu-no-vmx",
            spec: spec("qemu-no-vmx", Emulator::Qemu, images, "smoke"),
            checks: vec![
                Status(StopStatus::NoVirtualization),
                Contains("no VMX: CPUID.1:ECX.VMX[bit 5] = 0"),
                QemuExit(((StopStatus::NoVirtualization as i32) << 1) | 1),
            ],
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
        let out = emu::boot(&case.spec, images)?;
        let failures = verify(&out, &case.checks);
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
