//! Running microhv under an emulator, headless, with its serial logs kept on disk.

use crate::images::{self, Images, Module};
use anyhow::{Context, Result, bail};
use microhv_core::status::StopStatus;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Which emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emulator {
    /// Bochs with `cpu: model=corei7_skylake_x`: VMX with EPT, VPID, unrestricted guest.
    Bochs,
    /// QEMU (TCG `-cpu max`: AMD SVM with NPT, no VMX; or KVM with `--kvm`).
    Qemu,
}

/// One boot.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Names the run's directory under `target/microhv/`.
    pub name: String,
    /// Emulator.
    pub emulator: Emulator,
    /// CPU model override (Bochs `cpu: model=`, QEMU `-cpu`).
    pub cpu: Option<String>,
    /// Guest RAM of the emulated machine, MiB.
    pub mem_mib: u32,
    /// microhv's command line.
    pub cmdline: String,
    /// Boot modules, dom0 first.
    pub modules: Vec<Module>,
    /// Give up after this long.
    pub timeout: Duration,
    /// QEMU with KVM.
    pub kvm: bool,
    /// Copy COM1 to stdout as it arrives.
    pub echo: bool,
}

/// What a boot produced.
#[derive(Debug)]
pub struct Outcome {
    /// The run's directory.
    pub dir: PathBuf,
    /// COM1 (microhv's log).
    pub log: String,
    /// The emulator's exit status, if it exited.
    pub exit: Option<ExitStatus>,
    /// It was killed after `timeout`.
    pub timed_out: bool,
    /// Wall time of the boot.
    pub wall: Duration,
}

impl Outcome {
    /// The verdict line's status and reason.
    pub fn stop(&self) -> Option<(StopStatus, String)> {
        StopStatus::parse_log(&self.log).map(|(s, r)| (s, r.to_string()))
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Set by Ctrl-C: stop the emulator and return.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn bochs(
    spec: &Spec,
    dir: &std::path::Path,
    images: &Images,
    com1: &std::path::Path,
) -> Result<Command> {
    let iso = images::make_iso(dir, images, &spec.cmdline, &spec.modules)?;
    let model = spec.cpu.as_deref().unwrap_or("corei7_skylake_x");
    let rc = format!(
        "megs: {mem}\n\
         cpu: model={model}, count=1, ips=50000000, reset_on_triple_fault=0\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest\n\
         ata0-master: type=cdrom, path={iso}, status=inserted\n\
         boot: cdrom\n\
         display_library: term\n\
         com1: enabled=1, mode=file, dev={com1}\n\
         magic_break: enabled=1\n\
         sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy\n\
         speaker: enabled=0\n\
         log: {log}\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=report\n\
         debug: action=ignore\n",
        mem = spec.mem_mib,
        iso = iso.display(),
        com1 = com1.display(),
        log = dir.join("bochs.log").display(),
    );
    std::fs::write(dir.join("bochsrc"), rc)?;
    // This Bochs build stops in its debugger at reset: continue, and quit when it returns.
    std::fs::write(dir.join("bochs.cmds"), "c\nquit\n")?;
    let mut cmd = Command::new("bochs");
    cmd.arg("-q").arg("-f").arg(dir.join("bochsrc")).arg("-rc").arg(dir.join("bochs.cmds"));
    cmd.env("TERM", "dumb");
    Ok(cmd)
}

fn qemu(spec: &Spec, images: &Images, com1: &std::path::Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    let cpu = spec.cpu.clone().unwrap_or_else(|| if spec.kvm { "host" } else { "max" }.into());
    cmd.args(["-cpu", &cpu, "-m", &spec.mem_mib.to_string()]);
    if spec.kvm {
        cmd.arg("-enable-kvm");
    }
    cmd.args(["-display", "none", "-monitor", "none", "-no-reboot"]);
    cmd.arg("-serial").arg(format!("file:{}", com1.display()));
    cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    cmd.arg("-kernel").arg(&images.microhv);
    cmd.arg("-append").arg(&spec.cmdline);
    let initrd: Vec<String> = spec
        .modules
        .iter()
        .map(|m| format!("{} {}", m.path.display(), m.args).trim_end().replace(',', ",,"))
        .collect();
    if !initrd.is_empty() {
        cmd.arg("-initrd").arg(initrd.join(","));
    }
    cmd
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Boots `spec` and waits until the emulator exits, the timeout passes, or Ctrl-C.
pub fn boot(spec: &Spec, images: &Images) -> Result<Outcome> {
    let dir = images::out_dir().join(&spec.name);
    std::fs::create_dir_all(&dir)?;
    let com1 = dir.join("com1.log");
    std::fs::write(&com1, "")?;
    let mut cmd = match spec.emulator {
        Emulator::Bochs => bochs(spec, &dir, images, &com1)?,
        Emulator::Qemu => qemu(spec, images, &com1),
    };
    let console = std::fs::File::create(dir.join("emulator.out"))?;
    cmd.stdin(Stdio::null()).stdout(console.try_clone()?).stderr(console);
    std::fs::write(dir.join("command"), format!("{cmd:?}\n"))?;
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let mut log = std::fs::File::open(&com1)?;
    let mut seen = 0u64;
    let mut text = Vec::new();
    let (exit, timed_out) = loop {
        let status = child.try_wait()?;
        log.seek(SeekFrom::Start(seen))?;
        let mut new = Vec::new();
        log.read_to_end(&mut new)?;
        seen += new.len() as u64;
        if spec.echo && !new.is_empty() {
            std::io::stdout().write_all(&new)?;
            std::io::stdout().flush()?;
        }
        text.extend_from_slice(&new);
        if let Some(s) = status {
            break (Some(s), false);
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            kill(&mut child);
            break (None, false);
        }
        if start.elapsed() > spec.timeout {
            kill(&mut child);
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever the emulator flushed while exiting.
    log.seek(SeekFrom::Start(seen))?;
    log.read_to_end(&mut text)?;
    let out = Outcome {
        dir,
        log: String::from_utf8_lossy(&text).replace('\r', ""),
        exit,
        timed_out,
        wall: start.elapsed(),
    };
    if out.log.is_empty() && !out.timed_out && !INTERRUPTED.load(Ordering::SeqCst) {
        let emu = std::fs::read_to_string(out.dir.join("emulator.out")).unwrap_or_default();
        bail!("the emulator printed nothing on COM1 and exited with {exit:?}:\n{emu}");
    }
    Ok(out)
}
