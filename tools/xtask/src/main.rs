//! `cargo xtask`: builds microhv's images, boots them under Bochs or QEMU, and runs every test.
//!
//! - `cargo xtask run`: boots microhv with dom0 and shows its console until interrupted.
//! - `cargo xtask smoke`: boots, waits for dom0 to report ready, prints `dom0 ready`.
//! - `cargo xtask test`: formatting, clippy, host tests, then every boot test.
//! - `cargo xtask linux-kit`: fetches Debian's cloud kernel and busybox, and builds the Linux
//!   guest kit (a PVH `vmlinux` and an initramfs) in `target/linux/`.
//! - `cargo xtask disk add|ls|rm`: the files on dom0's disk (`target/microhv/disk.img`).
//!
//! Logs of each boot are kept in `target/microhv/<name>/` (`com1.log` is microhv's console).

mod bench;
mod boots;
mod deps;
mod disk;
mod disk_test;
mod emu;
mod hvctl_test;
mod images;
mod linux;
mod loc;
mod pvcon_test;
mod vbd_test;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use emu::Emulator;
use microhv_core::status::StopStatus;
use std::process::{Command, ExitCode};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Build, boot and test microhv", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// CPUs of an emulated machine unless told otherwise: microhv runs vCPUs on every CPU (#14).
const DEFAULT_CPUS: u32 = 2;

#[derive(Subcommand)]
enum Cmd {
    /// Boot microhv with dom0 and show its console until interrupted (Ctrl-C).
    Run {
        /// Emulator to boot under.
        #[arg(long, value_enum, default_value = "bochs")]
        emulator: Emulator,
        /// QEMU with KVM (a workstation with VMX or SVM exposed to it).
        #[arg(long)]
        kvm: bool,
        /// CPU model: Bochs `cpu: model=` (e.g. `ryzen` for the SVM path), QEMU `-cpu`.
        #[arg(long)]
        cpu: Option<String>,
        /// CPUs of the emulated machine (Bochs `cpu: count=`, QEMU `-smp`).
        #[arg(long, default_value_t = DEFAULT_CPUS, value_parser = clap::value_parser!(u32).range(1..=64))]
        cpus: u32,
        /// microhv's command line (e.g. `dom0_mem=64M loglvl=debug`).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// dom0's command line.
        #[arg(long, default_value = "")]
        dom0_args: String,
        /// Also give dom0 the test guests (hello, spinner, toucher, hostile, mbkernel, …) as
        /// boot modules, for `hvctl create --module NAME`.
        #[arg(long)]
        guests: bool,
        /// Start Debian's Linux (the kit) as domU "linux"; attach with `hvctl console linux`.
        #[arg(long)]
        linux: bool,
        /// Leave dom0's disk (target/microhv/disk.img) unattached.
        #[arg(long)]
        no_disk: bool,
    },
    /// Boot, wait for dom0 to report ready, stop; exits 0 only if it did.
    Smoke {
        /// Emulator to boot under.
        #[arg(long, value_enum, default_value = "bochs")]
        emulator: Emulator,
        /// CPU model: Bochs `cpu: model=` (e.g. `ryzen` for the SVM path), QEMU `-cpu`.
        #[arg(long)]
        cpu: Option<String>,
        /// CPUs of the emulated machine (Bochs `cpu: count=`, QEMU `-smp`).
        #[arg(long, default_value_t = DEFAULT_CPUS, value_parser = clap::value_parser!(u32).range(1..=64))]
        cpus: u32,
    },
    /// Cost figures under Bochs (TSC = retired instructions) on the VMX and SVM models, as one
    /// table, checked against `tools/xtask/budgets.txt`.
    Bench {
        /// Only this CPU model (`corei7_skylake_x`, `ryzen`), without the budget check.
        #[arg(long)]
        cpu: Option<String>,
        /// Emulator (under QEMU the TSC is the host's clock: figures neither repeat nor
        /// compare, and there is no budget check).
        #[arg(long, value_enum, default_value = "bochs")]
        emulator: Emulator,
    },
    /// Ring 0's size as #12's budget counts it (code lines compiled into microhv, tests
    /// excluded), with the largest files.
    Loc,
    /// Every test: formatting, clippy, host tests, boot tests.
    Test {
        /// CPUs of the emulated machine for every boot test that does not need a count of its
        /// own (the SMP, conformance and Linux boots; the cost figures keep one).
        #[arg(long, default_value_t = DEFAULT_CPUS, value_parser = clap::value_parser!(u32).range(1..=64))]
        cpus: u32,
    },
    /// The hypercall ABI conformance suite and robustness storms against a live microhv.
    Conformance {
        /// Emulator to boot under.
        #[arg(long, value_enum, default_value = "bochs")]
        emulator: Emulator,
    },
    /// Only the boot tests whose name contains FILTER (all without one).
    Boot {
        /// Part of a boot test's name.
        filter: Option<String>,
        /// CPUs for the boot tests that do not need a count of their own (as `test --cpus`).
        #[arg(long, default_value_t = DEFAULT_CPUS, value_parser = clap::value_parser!(u32).range(1..=64))]
        cpus: u32,
    },
    /// Boot Debian's Linux kernel as a domU (the Linux kit) and check it reaches userspace and
    /// powers off.
    Linux {
        /// Emulator to boot under.
        #[arg(long, value_enum, default_value = "qemu")]
        emulator: Emulator,
        /// The PVH vmlinux to boot (default: the kit's, built under target/linux/).
        #[arg(long)]
        kernel: Option<std::path::PathBuf>,
        /// The initramfs (default: the kit's).
        #[arg(long)]
        initramfs: Option<std::path::PathBuf>,
    },
    /// Build the freestanding images only.
    Build,
    /// Fetch Debian's cloud kernel and busybox; build the Linux guest kit in target/linux/.
    LinuxKit,
    /// dom0's disk, target/microhv/disk.img (FAT32; made on first use, kept across runs).
    Disk {
        #[command(subcommand)]
        op: DiskOp,
    },
}

#[derive(Subcommand)]
enum DiskOp {
    /// Copy a host file onto the disk (replacing a file of that path), making directories.
    Add {
        /// The host file.
        file: std::path::PathBuf,
        /// Its path on the disk (default: /NAME).
        #[arg(long = "as", value_name = "/PATH")]
        to: Option<String>,
    },
    /// List a directory of the disk.
    Ls {
        /// The directory.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Remove a file, or a directory with everything in it.
    Rm {
        /// What to remove.
        path: String,
    },
    /// Print the image's path (made if it is not there yet).
    Path,
}

fn main() -> ExitCode {
    let _ = ctrlc::set_handler(|| emu::INTERRUPTED.store(true, Ordering::SeqCst));
    match run(Cli::parse().cmd) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn needs(emulator: Emulator) -> Vec<&'static [&'static str]> {
    match emulator {
        Emulator::Bochs => vec![deps::BOCHS, deps::ISO],
        Emulator::Qemu => vec![deps::QEMU],
    }
}

fn run(cmd: Cmd) -> Result<bool> {
    match cmd {
        Cmd::Build => {
            let i = images::build()?;
            println!("{}\n{}", i.microhv.display(), i.dom0.display());
            Ok(true)
        }
        Cmd::Run { emulator, kvm, cpu, cpus, cmdline, dom0_args, guests, linux, no_disk } => {
            deps::ensure(&needs(emulator))?;
            let images = images::build()?;
            let dom0_args = if linux { format!("{dom0_args} linux") } else { dom0_args };
            let mut spec = boots::spec("run", emulator, &images, &dom0_args);
            if linux {
                let kit = linux::kit()?;
                for path in [kit.vmlinux, kit.initramfs] {
                    spec.modules.push(images::Module { path, args: String::new() });
                }
            }
            if guests {
                for g in boots::SCENARIO_GUESTS {
                    spec.modules
                        .push(images::Module { path: images.guest(g), args: String::new() });
                }
            }
            spec.cmdline = cmdline;
            if !no_disk {
                let img = disk::kept()?;
                eprintln!("xtask: dom0's disk: {} (cargo xtask disk add FILE)", img.display());
                spec.disk = Some(img);
            }
            spec.kvm = kvm;
            spec.cpu = cpu;
            spec.cpus = cpus;
            spec.echo = true;
            spec.timeout = Duration::MAX;
            let socket = images::control_socket();
            spec.control = Some(socket.clone());
            eprintln!(
                "xtask: booting microhv under {emulator:?}; logs in {}; Ctrl-C stops",
                images::out_dir().join("run").display()
            );
            eprintln!(
                "xtask: dom0's control channel (COM2): {} (hvctl uses it by default)",
                socket.display()
            );
            let out = emu::boot(&spec, &images)?;
            match out.stop() {
                Some((s, why)) => eprintln!("xtask: microhv stopped: {} ({why})", s.name()),
                None => eprintln!("xtask: stopped"),
            }
            Ok(out.stop().is_none_or(|(s, _)| s == StopStatus::Ok))
        }
        Cmd::Smoke { emulator, cpu, cpus } => smoke(emulator, cpu, cpus),
        Cmd::Bench { cpu, emulator } => {
            deps::ensure(&needs(emulator))?;
            let images = images::build()?;
            if emulator == Emulator::Bochs && cpu.is_none() {
                return bench::bench_and_check(&images);
            }
            let f = bench::measure(emulator, cpu.as_deref(), &images)?;
            let label = format!("{emulator:?} {}", cpu.as_deref().unwrap_or("default"));
            println!("{}", bench::table(&[(label, f)]));
            Ok(true)
        }
        Cmd::Loc => {
            let files = loc::count()?;
            for (p, n) in files.iter().take(15) {
                println!("{n:6}  {}", p.display());
            }
            println!(
                "ring 0: {} lines of code in {} files (budget {})",
                files.iter().map(|f| f.1).sum::<usize>(),
                files.len(),
                loc::BUDGET
            );
            Ok(true)
        }
        Cmd::Test { cpus } => test(cpus),
        Cmd::Conformance { emulator } => {
            deps::ensure(&needs(emulator))?;
            conformance(emulator, &images::build()?)
        }
        Cmd::Linux { emulator, kernel, initramfs } => linux_boot(emulator, kernel, initramfs),
        Cmd::LinuxKit => {
            linux::report(&linux::kit()?)?;
            Ok(true)
        }
        Cmd::Disk { op } => {
            deps::ensure(&[disk::DEPS])?;
            let img = disk::kept()?;
            match op {
                DiskOp::Add { file, to } => {
                    let at = disk::add(&img, &file, to.as_deref())?;
                    println!("{} -> dom0:{at}", file.display());
                }
                DiskOp::Ls { path } => print!("{}", disk::list(&img, &path)?),
                DiskOp::Rm { path } => disk::remove(&img, &path)?,
                DiskOp::Path => println!("{}", img.display()),
            }
            Ok(true)
        }
        Cmd::Boot { filter, cpus } => {
            deps::ensure(&[deps::BOCHS, deps::ISO, deps::QEMU])?;
            boots::run_all(&images::build()?, filter.as_deref().unwrap_or(""), cpus)
        }
    }
}

/// Boots the Linux kit's kernel (or the given files) as a domU and checks the scenario.
fn linux_boot(
    emulator: Emulator,
    kernel: Option<std::path::PathBuf>,
    initramfs: Option<std::path::PathBuf>,
) -> Result<bool> {
    deps::ensure(&needs(emulator))?;
    let (kernel, initramfs) = match (kernel, initramfs) {
        (Some(k), Some(i)) => (k, i),
        (k, i) => {
            let kit = linux::kit()?;
            (k.unwrap_or(kit.vmlinux), i.unwrap_or(kit.initramfs))
        }
    };
    let images = images::build()?;
    let spec = boots::linux_spec(emulator, &images, &kernel, &initramfs);
    for (from, to) in [kernel, initramfs].iter().zip(&spec.modules[1..3]) {
        if *from != to.path {
            std::fs::copy(from, &to.path)
                .with_context(|| format!("copying {} to {}", from.display(), to.path.display()))?;
        }
    }
    let out = emu::boot(&spec, &images)?;
    let failures = boots::verify(&out, &boots::linux_checks());
    for l in out.log.lines().filter(|l| {
        l.contains("[d0]   linux") || l.contains("scenario linux") || l.contains("microhv-linux:")
    }) {
        println!("{l}");
    }
    println!("wall time: {:.1} s; log: {}", out.wall.as_secs_f64(), out.dir.display());
    for f in &failures {
        println!("    {f}");
    }
    Ok(failures.is_empty())
}

/// Extracts the figure after `key` in the log (up to the next non-digit).
pub(crate) fn figure(log: &str, key: &str) -> Option<u64> {
    let at = log.find(key)? + key.len();
    log[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn smoke(emulator: Emulator, cpu: Option<String>, cpus: u32) -> Result<bool> {
    deps::ensure(&needs(emulator))?;
    let images = images::build()?;
    let mut name = match &cpu {
        Some(c) => format!("smoke-{emulator:?}-{c}"),
        None => format!("smoke-{emulator:?}"),
    };
    if cpus != 1 {
        name += &format!("-smp{cpus}");
    }
    let mut spec = boots::spec(&name.to_lowercase(), emulator, &images, "smoke bench");
    spec.cpu = cpu;
    spec.cpus = cpus;
    let out = emu::boot(&spec, &images)?;
    println!("--- {} (last lines) ---\n{}\n---", out.dir.join("com1.log").display(), out.tail(20));
    let ready = out.log.lines().find(|l| l.contains("dom0 ready"));
    if let Some(t) = figure(&out.log, "dom0 ready (domid 0, tsc ") {
        println!("TSC at dom0 ready: {t}");
    }
    if let Some(t) = figure(&out.log, "null hypercall round trip = ") {
        println!("null hypercall round trip: {t} TSC ticks");
    }
    println!("wall time: {:.2} s", out.wall.as_secs_f64());
    match (ready, out.stop()) {
        (Some(_), Some((StopStatus::Ok, _))) => {
            println!("dom0 ready");
            Ok(true)
        }
        (_, Some((s, why))) => {
            println!("smoke failed: microhv stopped with status {} ({}): {why}", s as u8, s.name());
            Ok(false)
        }
        (_, None) => {
            println!("smoke failed: no verdict (timed out: {})", out.timed_out);
            Ok(false)
        }
    }
}

/// Runs the conformance suite under `emulator` and prints its report row.
fn conformance(emulator: Emulator, images: &images::Images) -> Result<bool> {
    let spec = boots::conformance_spec(emulator, images);
    let out = emu::boot(&spec, images)?;
    let failures = boots::verify(&out, &boots::conformance_checks());
    for l in out.log.lines().filter(|l| l.contains("FAIL ") || l.contains("storm ")) {
        println!("{l}");
    }
    let (passed, failed) = boots::conformance_totals(&out.log).unwrap_or((0, 0));
    let leaked = figure(&out.log, "leaked bytes: ").map_or("?".into(), |b| (b / 4096).to_string());
    println!(
        "conformance under {emulator:?}: {passed} cases passed, {failed} failed; leaked frames: {leaked}; {:.1} s",
        out.wall.as_secs_f64()
    );
    for f in &failures {
        println!("    {f}");
    }
    if !failures.is_empty() {
        println!("    log: {}", out.dir.join("com1.log").display());
    }
    Ok(failures.is_empty())
}

fn step(name: &str, cmd: &mut Command) -> Result<()> {
    let t = Instant::now();
    println!("== {name}");
    let status = cmd.current_dir(images::root()).status()?;
    println!(
        "== {name}: {} ({:.1} s)",
        if status.success() { "ok" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{name} failed");
    }
    Ok(())
}

fn test(cpus: u32) -> Result<bool> {
    let start = Instant::now();
    deps::ensure(&[deps::BOCHS, deps::ISO, deps::QEMU])?;
    let cargo = env!("CARGO");
    step("cargo fmt --check", Command::new(cargo).args(["fmt", "--all", "--check"]))?;
    step(
        "cargo clippy",
        Command::new(cargo).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The freestanding crates again, as images (`cfg(image)`, see `rt::build`).
    for p in images::PACKAGES {
        step(
            &format!("cargo clippy -p {p} (image)"),
            Command::new(cargo)
                .env("MICROHV_IMAGE", "1")
                .env("CARGO_TARGET_DIR", images::image_target_dir())
                .args(["clippy", "--release", "-p", p, "--", "-D", "warnings"]),
        )?;
    }
    step("cargo test", Command::new(cargo).args(["test", "--workspace", "--release"]))?;
    // The cross-CPU protocols under the loom model checker (every interleaving), in a target
    // directory of their own: `--cfg loom` rebuilds everything it touches.
    step(
        "cargo test (loom models)",
        Command::new(cargo)
            .env("RUSTFLAGS", "--cfg loom")
            .env("CARGO_TARGET_DIR", images::root().join("target/loom"))
            .args(["test", "--release", "-p", "microhv-core", "--lib", "smp::model"]),
    )?;
    let lines: usize = loc::count()?.iter().map(|f| f.1).sum();
    let small = lines <= loc::BUDGET;
    println!(
        "== ring-0 size: {lines} lines of code (budget {}): {}",
        loc::BUDGET,
        if small { "ok" } else { "EXCEEDED" }
    );
    println!("== boot tests");
    let images = images::build()?;
    let mut ok = boots::run_all(&images, "", cpus)?;
    println!("== cost budgets (tools/xtask/budgets.txt), under Bochs");
    let within = bench::bench_and_check(&images)?;
    println!("== cost budgets: {}", if within { "ok" } else { "EXCEEDED" });
    ok &= within && small;
    println!(
        "== all tests: {} ({:.0} s)",
        if ok { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    Ok(ok)
}
