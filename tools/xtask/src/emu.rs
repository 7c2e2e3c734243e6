//! Running microhv under an emulator, headless, with its serial logs kept on disk.

use crate::images::{self, Images, Module};
use anyhow::{Context, Result, bail};
use microhv_core::status::{STOP_LINE_MARKER, StopStatus};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// CPUs of the emulated machine (Bochs `cpu: count=`, QEMU `-smp`); 0: the run's default
    /// (`--cpus`, one for the cost figures).
    pub cpus: u32,
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
    /// Expose dom0's UART (COM2, the control channel) as a UNIX socket at this path.
    pub control: Option<PathBuf>,
    /// dom0's disk: a raw image (`disk.rs`) attached as the primary ATA channel's master.
    pub disk: Option<PathBuf>,
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
        parse_stop_line(&self.log).map(|(s, r)| (s, r.to_string()))
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Finds microhv's stop line (`microhv_core::status`) in a log and returns its status and
/// reason.
pub fn parse_stop_line(log: &str) -> Option<(StopStatus, &str)> {
    let line = log.lines().rev().find(|l| l.contains(STOP_LINE_MARKER))?;
    let rest = &line[line.find(STOP_LINE_MARKER)? + STOP_LINE_MARKER.len()..];
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    let code: u8 = digits.parse().ok()?;
    let status = StopStatus::ALL.into_iter().find(|s| *s as u8 == code)?;
    let reason = rest.split_once("): ").map_or("", |(_, r)| r.trim_end());
    Some((status, reason))
}

/// Set by Ctrl-C: stop the emulator and return.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Bochs serial line for COM2: `socket-client` to `port` on the loopback, where the runner
/// listens before Bochs starts (Bochs connects once, at power-on).
fn bochs_com2(port: Option<u16>) -> String {
    match port {
        Some(p) => format!("com2: enabled=1, mode=socket-client, dev=127.0.0.1:{p}\n"),
        None => String::new(),
    }
}

fn bochs(
    spec: &Spec,
    dir: &std::path::Path,
    images: &Images,
    com1: &std::path::Path,
    com2_port: Option<u16>,
) -> Result<Command> {
    let iso = images::make_iso(dir, images, &spec.cmdline, &spec.modules)?;
    let model = spec.cpu.as_deref().unwrap_or("corei7_skylake_x");
    // The primary channel is dom0's (its disk, or nothing); the CD-ROM the BIOS boots GRUB
    // from sits on the secondary one.
    let disk = match &spec.disk {
        Some(path) => format!("ata0-master: type=disk, path={}, mode=flat\n", path.display()),
        None => String::new(),
    };
    let rc = format!(
        "megs: {mem}\n\
         cpu: model={model}, count={cpus}, ips=50000000, reset_on_triple_fault=0\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest\n\
         ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14\n\
         {disk}\
         ata1: enabled=1, ioaddr1=0x170, ioaddr2=0x370, irq=15\n\
         ata1-master: type=cdrom, path={iso}, status=inserted\n\
         boot: cdrom\n\
         display_library: term\n\
         com1: enabled=1, mode=file, dev={com1}\n\
         {com2}\
         magic_break: enabled=1\n\
         sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy\n\
         speaker: enabled=0\n\
         log: {log}\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=report\n\
         debug: action=ignore\n",
        mem = spec.mem_mib,
        cpus = spec.cpus.max(1),
        iso = iso.display(),
        com1 = com1.display(),
        com2 = bochs_com2(com2_port),
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
    cmd.args([
        "-cpu",
        &cpu,
        "-m",
        &spec.mem_mib.to_string(),
        "-smp",
        &spec.cpus.max(1).to_string(),
    ]);
    if spec.kvm {
        cmd.arg("-enable-kvm");
    }
    cmd.args(["-display", "none", "-monitor", "none", "-no-reboot"]);
    if !spec.kvm && spec.cpus > 1 {
        // One host thread for all the CPUs. Under QEMU 7.2's multi-threaded TCG a CPU that
        // just took a #VMEXIT was seen walking its own (host) page tables through the guest's
        // nested ones: the walk faults, QEMU raises a second #VMEXIT in host mode and writes
        // the host's registers into the VMCB of the vCPU that had exited, which later runs
        // them and triple-faults (README, "SMP"). Seen in about one conformance run in four
        // with threads, never in 17 runs without; a PAUSE hands the thread to the next CPU,
        // so spinning CPUs cost little. `MICROHV_QEMU_THREADS=multi` keeps the threads, for
        // a stress run of the SVM backend's cross-CPU paths.
        if std::env::var("MICROHV_QEMU_THREADS").as_deref() != Ok("multi") {
            cmd.args(["-accel", "tcg,thread=single"]);
        }
    }
    cmd.arg("-serial").arg(format!("file:{}", com1.display()));
    if let Some(path) = &spec.control {
        // QEMU listens on the UNIX socket itself and serves one client at a time; without a
        // client it discards what dom0 sends.
        cmd.arg("-chardev").arg(format!(
            "socket,id=ctl,path={},server=on,wait=off",
            path.display().to_string().replace(',', ",,")
        ));
        cmd.args(["-serial", "chardev:ctl"]);
    }
    cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    if let Some(path) = &spec.disk {
        // index 0: the primary channel's master, dom0's disk.
        let file = path.display().to_string().replace(',', ",,");
        cmd.arg("-drive").arg(format!("file={file},format=raw,if=ide,index=0"));
    }
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

/// A running boot: the emulator, its COM1 log as read so far, and the control bridge.
pub struct Running {
    spec: Spec,
    dir: PathBuf,
    child: Child,
    log: std::fs::File,
    seen: u64,
    text: Vec<u8>,
    start: Instant,
    bridge: Option<Bridge>,
}

/// Starts `spec`'s emulator; [`Running::finish`] waits for it.
pub fn start(spec: &Spec, images: &Images) -> Result<Running> {
    let dir = images::out_dir().join(&spec.name);
    std::fs::create_dir_all(&dir)?;
    let com1 = dir.join("com1.log");
    std::fs::write(&com1, "")?;
    if let Some(path) = &spec.control {
        // A socket left by an earlier run would make the bind fail.
        let _ = std::fs::remove_file(path);
    }
    let tcp = match (spec.emulator, &spec.control) {
        (Emulator::Bochs, Some(_)) => Some(TcpListener::bind("127.0.0.1:0")?),
        _ => None,
    };
    let port = tcp.as_ref().map(|l| l.local_addr()).transpose()?.map(|a| a.port());
    let mut cmd = match spec.emulator {
        Emulator::Bochs => bochs(spec, &dir, images, &com1, port)?,
        Emulator::Qemu => qemu(spec, images, &com1),
    };
    let console = std::fs::File::create(dir.join("emulator.out"))?;
    cmd.stdin(Stdio::null()).stdout(console.try_clone()?).stderr(console);
    // An emulator must not outlive the xtask that started it (killed by a timeout, a signal or
    // a CI run's end): a forgotten Bochs spinning on both cores skews every timing after it.
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    std::fs::write(dir.join("command"), format!("{cmd:?}\n"))?;
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let bridge = match (tcp, &spec.control) {
        (Some(l), Some(path)) => Some(Bridge::start(l, path)?),
        _ => None,
    };
    let log = std::fs::File::open(&com1)?;
    Ok(Running { spec: spec.clone(), dir, child, log, seen: 0, text: Vec::new(), start, bridge })
}

impl Running {
    /// Reads what COM1 got since the last call (echoing it if asked); the exit status if the
    /// emulator has exited.
    fn pump(&mut self) -> Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        self.log.seek(SeekFrom::Start(self.seen))?;
        let mut new = Vec::new();
        self.log.read_to_end(&mut new)?;
        self.seen += new.len() as u64;
        if self.spec.echo && !new.is_empty() {
            std::io::stdout().write_all(&new)?;
            std::io::stdout().flush()?;
        }
        self.text.extend_from_slice(&new);
        Ok(status)
    }

    /// COM1 so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.text).replace('\r', "")
    }

    /// Waits until COM1 contains `needle`; false if the emulator exited or `timeout` passed
    /// first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<bool> {
        let start = Instant::now();
        loop {
            let exited = self.pump()?.is_some();
            if self.log().contains(needle) {
                return Ok(true);
            }
            if exited || start.elapsed() > timeout || INTERRUPTED.load(Ordering::SeqCst) {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The boot's spec.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Waits until the emulator exits (true), or `timeout` passes or Ctrl-C (false).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<bool> {
        let start = Instant::now();
        loop {
            if self.pump()?.is_some() {
                return Ok(true);
            }
            if start.elapsed() > timeout || INTERRUPTED.load(Ordering::SeqCst) {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the emulator now (a test gave up half-way); `finish` then returns at once.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Waits until the emulator exits, the spec's timeout passes, or Ctrl-C.
    pub fn finish(mut self) -> Result<Outcome> {
        let (exit, timed_out) = loop {
            if let Some(s) = self.pump()? {
                break (Some(s), false);
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                kill(&mut self.child);
                break (None, false);
            }
            if self.start.elapsed() > self.spec.timeout {
                kill(&mut self.child);
                break (None, true);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Whatever the emulator flushed while exiting.
        self.pump()?;
        drop(self.bridge.take());
        if let Some(path) = &self.spec.control {
            let _ = std::fs::remove_file(path);
        }
        let out = Outcome {
            dir: self.dir.clone(),
            log: self.log(),
            exit,
            timed_out,
            wall: self.start.elapsed(),
        };
        if out.log.is_empty() && !out.timed_out && !INTERRUPTED.load(Ordering::SeqCst) {
            let emu = std::fs::read_to_string(out.dir.join("emulator.out")).unwrap_or_default();
            bail!("the emulator printed nothing on COM1 and exited with {exit:?}:\n{emu}");
        }
        Ok(out)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // An abandoned boot (an error half-way through a test) must not outlive the runner.
        if matches!(self.child.try_wait(), Ok(None)) {
            kill(&mut self.child);
        }
    }
}

/// Boots `spec` and waits until the emulator exits, the timeout passes, or Ctrl-C.
pub fn boot(spec: &Spec, images: &Images) -> Result<Outcome> {
    start(spec, images)?.finish()
}

/// Bridges Bochs's COM2 (a TCP connection Bochs makes to the runner) to a UNIX socket that
/// one client at a time uses; bytes from dom0 while no client is connected are dropped, as a
/// serial line would. The threads end with the emulator (its connection closes).
struct Bridge {
    stop: Arc<AtomicBool>,
}

/// How long Bochs has to connect to COM2's listener after it starts.
const BOCHS_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl Bridge {
    fn start(tcp: TcpListener, path: &Path) -> Result<Bridge> {
        let unix = UnixListener::bind(path)
            .with_context(|| format!("creating the control socket {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            if let Err(e) = bridge(tcp, unix, &flag)
                && !flag.load(Ordering::SeqCst)
            {
                eprintln!("xtask: control bridge: {e:#}");
            }
        });
        Ok(Bridge { stop })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Accepts Bochs's connection, then serves UNIX clients one after the other.
fn bridge(tcp: TcpListener, unix: UnixListener, stop: &AtomicBool) -> Result<()> {
    tcp.set_nonblocking(true)?;
    let start = Instant::now();
    let dom0 = loop {
        match tcp.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::SeqCst) || start.elapsed() > BOCHS_CONNECT_TIMEOUT {
                    bail!("Bochs did not connect COM2");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    };
    dom0.set_nonblocking(false)?;
    dom0.set_nodelay(true)?;
    let client: Arc<Mutex<Option<UnixStream>>> = Arc::new(Mutex::new(None));
    let to_client = client.clone();
    let mut from_dom0 = dom0.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = from_dom0.read(&mut buf) {
            let mut c = to_client.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = c.as_mut()
                && s.write_all(&buf[..n]).is_err()
            {
                *c = None;
            }
        }
    });
    unix.set_nonblocking(true)?;
    loop {
        let s = match unix.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        s.set_nonblocking(false)?;
        *client.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.try_clone()?);
        let served = serve_client(s, &dom0, stop);
        *client.lock().unwrap_or_else(|p| p.into_inner()) = None;
        served?;
    }
}

/// Copies one client's bytes to dom0 until it disconnects.
fn serve_client(mut s: UnixStream, mut dom0: &TcpStream, stop: &AtomicBool) -> Result<()> {
    // A timeout so that a silent client does not keep the bridge from noticing the end.
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => dom0.write_all(&buf[..n]).context("writing to Bochs's COM2")?,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
            }
            Err(_) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_lines_round_trip() {
        for s in StopStatus::ALL {
            let log =
                format!("boot\n[hv] {STOP_LINE_MARKER}{} ({}): why not\r\n", s as u8, s.name());
            assert_eq!(parse_stop_line(&log), Some((s, "why not")));
        }
        assert_eq!(parse_stop_line("nothing here"), None);
        assert_eq!(parse_stop_line("stop: status=99 (x): y"), None);
    }
}
