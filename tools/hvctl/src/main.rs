//! `hvctl`: manage microhv's domains from the host, like Xen's `xl`, through dom0's control
//! protocol (`abi::proto`) on dom0's UART, which `cargo xtask run` exposes as a UNIX socket.
//!
//! Tables for people, `--json` for scripts; exit status 0 on success, 1 with a one-line reason
//! on stderr on any error (2 for a command line clap refuses).

mod client;
mod output;

use abi::hypercall::{CONSOLE_READ_MAX, ShutdownReason};
use abi::proto::{DomainConfig, ImageSource, Req, Resp, UPLOAD_CHUNK_MAX};
use abi::types::{DOMCREATE_SMALL_PAGES, DomainInfo, DomainState};
use clap::{Parser, Subcommand, ValueEnum};
use client::{Client, Fail, unexpected};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Where `cargo xtask run` puts dom0's control socket, relative to the workspace root.
const WELL_KNOWN: &str = "target/microhv/run/dom0.sock";
/// The prefix that names a file on dom0's disk rather than on the host (or a boot module).
const DOM0_PREFIX: &str = "dom0:";
/// How long a build from dom0's disk may take at least, whatever `--timeout` says: dom0
/// answers once the whole kernel is read (a 50 MB `vmlinux` takes tens of seconds under an
/// emulator) and sends nothing meanwhile.
const DISK_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Parser)]
#[command(
    name = "hvctl",
    version,
    about = "Manage microhv domains through dom0 (like Xen's xl)",
    after_help = "The control socket is found, in order: --socket, $HVCTL_SOCKET, \
                  target/microhv/run/dom0.sock above the current directory or next to hvctl's \
                  own target directory (where `cargo xtask run` keeps it)."
)]
struct Cli {
    /// dom0's control socket.
    #[arg(long, global = true, env = "HVCTL_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Seconds to wait for each answer from dom0.
    #[arg(long, global = true, default_value_t = 20.0, value_name = "SECS")]
    timeout: f64,
    /// Machine-readable output (stable field names; names and states as strings).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Versions of hvctl, the protocol, dom0-agent and microhv's ABI.
    Version,
    /// The physical machine: memory, CPUs, domains, MMU floor.
    Info,
    /// Domains (all, or the one given).
    List {
        /// Domain name or id.
        domain: Option<String>,
    },
    /// Build a domain from a kernel image (uploaded, a boot module, or a file on dom0's disk),
    /// and start it.
    #[command(after_help = "Files on dom0's disk are named dom0:/PATH (see `hvctl disk ls`): \
                            `--kernel dom0:/boot/vmlinux --initrd dom0:/boot/initrd.img` builds \
                            the domain from them without sending a byte of them over the serial \
                            line. A kernel from the disk takes its modules from the disk too.")]
    Create {
        /// Domain name (1 to 32 printable ASCII characters).
        name: String,
        /// Kernel image to upload (PVH ELF or multiboot v1); the same as --kernel FILE.
        #[arg(
            conflicts_with_all = ["module", "kernel"],
            required_unless_present_any = ["module", "kernel"]
        )]
        image: Option<PathBuf>,
        /// The kernel: dom0:/PATH on dom0's disk, or a host file to upload.
        #[arg(long, value_name = "dom0:/PATH|FILE", conflicts_with = "module")]
        kernel: Option<String>,
        /// Use the boot module with this name instead of uploading an image.
        #[arg(long, value_name = "NAME")]
        module: Option<String>,
        /// The kernel's initrd (its first module): dom0:/PATH on dom0's disk, or the name of
        /// one of dom0's boot modules.
        #[arg(long, value_name = "dom0:/PATH|NAME")]
        initrd: Option<String>,
        /// A further module for the kernel (repeatable): dom0:/PATH or a boot module's name.
        #[arg(long = "with-module", value_name = "dom0:/PATH|NAME")]
        with_modules: Vec<String>,
        /// Memory (bytes, or with K, M, G).
        #[arg(long, short, default_value = "16M", value_parser = parse_size)]
        memory: u64,
        /// vCPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Page-table page cap (0 = microhv's default).
        #[arg(long, default_value_t = 0)]
        mmu_pages: u64,
        /// The kernel's command line.
        #[arg(long, short, default_value = "")]
        cmdline: String,
        /// Map the domain with 4 KiB second-level pages only.
        #[arg(long)]
        small_pages: bool,
        /// Leave the domain paused (state `created`) instead of starting it.
        #[arg(long, short)]
        paused: bool,
        /// Give the domain a virtual disk of this size (a multiple of 4K) that dom0 serves
        /// (PV block): the region of dom0's disk named after the domain, made zeroed at the
        /// first use and kept for the next domain of that name.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        disk: Option<u64>,
    },
    /// Free a domain and everything it holds.
    Destroy {
        /// Domain name or id.
        domain: String,
    },
    /// Stop scheduling a domain.
    Pause {
        /// Domain name or id.
        domain: String,
    },
    /// Resume a paused domain (or start a created one).
    Unpause {
        /// Domain name or id.
        domain: String,
    },
    /// Stop a domain as if it had shut itself down.
    Shutdown {
        /// Domain name or id.
        domain: String,
        /// Recorded reason.
        #[arg(long, value_enum, default_value = "poweroff")]
        reason: Reason,
        /// Recorded status.
        #[arg(long, default_value_t = 0)]
        status: u32,
    },
    /// Set a (created or paused) domain's memory.
    MemSet {
        /// Domain name or id.
        domain: String,
        /// New size (bytes, or with K, M, G).
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// Read or set a domain's page-table page cap.
    MmuPages {
        #[command(subcommand)]
        op: MmuOp,
    },
    /// Show a domain's console output and follow it until the domain stops, sending what is
    /// typed on standard input to the domain's console (its PV console once it uses one, else
    /// its COM1).
    Console {
        /// Domain name or id.
        domain: String,
        /// Print what is waiting and exit.
        #[arg(long)]
        no_follow: bool,
    },
    /// Counters of a domain: exits by reason, faults, MMU pages and zaps.
    Stats {
        /// Domain name or id.
        domain: String,
        /// Refresh every SECS seconds until interrupted.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
    },
    /// Boot modules dom0 can build domains from.
    Modules,
    /// dom0's disk: its files (`ls`) and the drive (`info`).
    Disk {
        #[command(subcommand)]
        op: DiskOp,
    },
    /// Power dom0 off, which stops microhv and the machine.
    Poweroff,
}

#[derive(Subcommand)]
enum MmuOp {
    /// The cap in force.
    Get {
        /// Domain name or id.
        domain: String,
    },
    /// Request a cap (0 = default); lowering it below the pages in use zaps the oldest.
    Set {
        /// Domain name or id.
        domain: String,
        /// Pages.
        pages: u64,
    },
}

#[derive(Subcommand)]
enum DiskOp {
    /// The entries of a directory of dom0's disk.
    Ls {
        /// The directory (dom0:/PATH or /PATH).
        #[arg(default_value = "/")]
        path: String,
    },
    /// The drive and its file system.
    Info,
}

#[derive(Clone, Copy, ValueEnum)]
enum Reason {
    Poweroff,
    Reboot,
    Crash,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hvctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `16M`, `4MiB`, `512k`, `1G`, or bytes.
/// Gives a domain created paused its virtual disk, then starts it unless `paused`; a domain
/// whose disk cannot be attached is destroyed, so that a failed `create` leaves nothing.
fn attach_and_start(
    c: &mut Client,
    domid: u32,
    disk: Option<u64>,
    paused: bool,
) -> Result<(), Fail> {
    let Some(bytes) = disk else { return Ok(()) };
    let done = |r: Resp<'_>| match r {
        Resp::Done => Ok(()),
        o => Err(unexpected(&o)),
    };
    // A first attach zeroes the region on dom0's disk: seconds for a large one.
    let attached =
        c.call_within(DISK_BUILD_TIMEOUT.max(c.timeout()), Req::VbdAttach { domid, bytes }, done);
    let started =
        attached.and_then(|()| if paused { Ok(()) } else { c.call(Req::Unpause { domid }, done) });
    if started.is_err() {
        let _ = c.call(Req::Destroy { domid }, done);
    }
    started
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("unknown unit in {s:?} (use K, M or G)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("size too large: {s:?}"))
}

/// The socket to use: `--socket` / `$HVCTL_SOCKET`, else the well-known place found from the
/// current directory or from hvctl's own location.
fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(p) = &cli.socket {
        return p.clone();
    }
    let mut candidates = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        candidates.extend(cwd.ancestors().map(|d| d.join(WELL_KNOWN)));
    }
    // hvctl itself usually lives in `<workspace>/target/<profile>/hvctl`.
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe.parent().and_then(Path::parent)
    {
        candidates.push(target.join("microhv/run/dom0.sock"));
    }
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| PathBuf::from(WELL_KNOWN))
}

fn connect(cli: &Cli) -> Result<Client, Fail> {
    if !(cli.timeout.is_finite() && cli.timeout > 0.0 && cli.timeout < 1e6) {
        return Err(Fail::Usage(format!(
            "--timeout must be a positive number of seconds, not {}",
            cli.timeout
        )));
    }
    Client::connect(&socket_path(cli), Duration::from_secs_f64(cli.timeout))
}

/// Refuses a `create` whose kernel and modules come from places one request cannot name
/// together, before anything is sent: every module from the disk with a kernel from the disk,
/// none otherwise (the protocol builds from one place at a time).
fn check_sources(kernel: Option<&str>, modules: &[&String]) -> Result<(), Fail> {
    let on_disk = |s: &str| s.starts_with(DOM0_PREFIX);
    let disk_modules = modules.iter().filter(|m| on_disk(m)).count();
    match (kernel.is_some_and(on_disk), disk_modules) {
        (true, n) if n != modules.len() => Err(Fail::Usage(format!(
            "a kernel from dom0's disk takes its modules from the disk too ({DOM0_PREFIX}/PATH)"
        ))),
        (false, n) if n > 0 => Err(Fail::Usage(format!(
            "modules from dom0's disk ({DOM0_PREFIX}/PATH) need a kernel from it too"
        ))),
        _ => Ok(()),
    }
}

fn run(cli: &Cli) -> Result<(), Fail> {
    if let Cmd::Create { kernel, initrd, with_modules, .. } = &cli.cmd {
        let modules: Vec<&String> = initrd.iter().chain(with_modules).collect();
        check_sources(kernel.as_deref(), &modules)?;
    }
    let mut c = connect(cli)?;
    let json = cli.json;
    match &cli.cmd {
        Cmd::Version => output::version(&c.hello, json),
        Cmd::Info => {
            let p = c.call(Req::PhysInfo, |r| match r {
                Resp::PhysInfo(p) => Ok(p),
                o => Err(unexpected(&o)),
            })?;
            output::phys_info(&p, json);
        }
        Cmd::List { domain } => {
            let mut all = list(&mut c)?;
            if let Some(d) = domain {
                let id = resolve_in(&all, d)?;
                all.retain(|i| i.domid == id);
            }
            output::list(&all, json);
        }
        Cmd::Create {
            name,
            image,
            kernel,
            module,
            initrd,
            with_modules,
            memory,
            vcpus,
            mmu_pages,
            cmdline,
            small_pages,
            paused,
            disk,
        } => {
            // With a disk the domain starts only once the disk is attached.
            let start = !paused && disk.is_none();
            let modules: Vec<&str> =
                initrd.iter().chain(with_modules.iter()).map(String::as_str).collect();
            let kernel = match (kernel, image) {
                (Some(k), _) => Some(k.clone()),
                (None, Some(p)) => Some(p.to_string_lossy().into_owned()),
                (None, None) => None,
            };
            let from_disk = kernel.as_deref().and_then(|k| k.strip_prefix(DOM0_PREFIX));
            let disk_modules: Vec<&str> =
                modules.iter().filter_map(|m| m.strip_prefix(DOM0_PREFIX)).collect();
            // Refuse a taken name before spending seconds on an upload (dom0 checks again).
            if list(&mut c)?.iter().any(|i| i.name_str() == name.as_str()) {
                return Err(Fail::Dom0(format!(
                    "a domain named {name:?} exists (EEXIST: already exists)"
                )));
            }
            let config = DomainConfig {
                name,
                mem_bytes: *memory,
                vcpus: *vcpus,
                mmu_pages: *mmu_pages,
                flags: if *small_pages { DOMCREATE_SMALL_PAGES } else { 0 },
                cmdline,
            };
            let too_many = || {
                Fail::Usage(format!(
                    "at most {} modules per kernel",
                    abi::proto::KERNEL_MODULES_MAX
                ))
            };
            if let Some(path) = from_disk {
                let modules = heapless::Vec::from_slice(&disk_modules).map_err(|_| too_many())?;
                let request = Req::CreateFromDisk { config, kernel: path, modules, start };
                let t = Instant::now();
                let timeout = DISK_BUILD_TIMEOUT.max(c.timeout());
                let domid = c.call_within(timeout, request, |r| match r {
                    Resp::Created { domid } => Ok(domid),
                    o => Err(unexpected(&o)),
                })?;
                if !json {
                    eprintln!("built from dom0's disk in {:.1} s", t.elapsed().as_secs_f64());
                }
                attach_and_start(&mut c, domid, *disk, *paused)?;
                let state = if *paused { "created" } else { "running" };
                output::created(name, domid, state, json);
                return Ok(());
            }
            let source = match (module, kernel) {
                (Some(m), _) => ImageSource::Module(m),
                (None, Some(path)) => {
                    upload(&mut c, Path::new(&path), json)?;
                    ImageSource::Uploaded
                }
                (None, None) => {
                    return Err(Fail::Usage(
                        "give a kernel: an image file, --kernel dom0:/PATH or --module".into(),
                    ));
                }
            };
            let request = if modules.is_empty() {
                Req::Create { config, image: source, start }
            } else {
                let modules = heapless::Vec::from_slice(&modules).map_err(|_| too_many())?;
                Req::CreateWithModules { config, image: source, modules, start }
            };
            let domid = c.call(request, |r| match r {
                Resp::Created { domid } => Ok(domid),
                o => Err(unexpected(&o)),
            })?;
            attach_and_start(&mut c, domid, *disk, *paused)?;
            let state = if *paused { "created" } else { "running" };
            output::created(name, domid, state, json);
        }
        Cmd::Destroy { domain } => {
            simple(&mut c, domain, json, "destroyed", |domid| Req::Destroy { domid })?
        }
        Cmd::Pause { domain } => {
            simple(&mut c, domain, json, "paused", |domid| Req::Pause { domid })?
        }
        Cmd::Unpause { domain } => {
            simple(&mut c, domain, json, "unpaused", |domid| Req::Unpause { domid })?
        }
        Cmd::Shutdown { domain, reason, status } => {
            let reason = match reason {
                Reason::Poweroff => ShutdownReason::Poweroff,
                Reason::Reboot => ShutdownReason::Reboot,
                Reason::Crash => ShutdownReason::Crash,
            };
            simple(&mut c, domain, json, "shut down", |domid| Req::Shutdown {
                domid,
                reason,
                status: *status,
            })?
        }
        Cmd::MemSet { domain, size } => {
            simple(&mut c, domain, json, "memory set", |domid| Req::MemSet { domid, bytes: *size })?
        }
        Cmd::MmuPages { op: MmuOp::Get { domain } } => {
            let domid = resolve(&mut c, domain)?;
            let pages = on_domain(
                domain,
                c.call(Req::MmuPagesGet { domid }, |r| match r {
                    Resp::MmuPages { pages } => Ok(pages),
                    o => Err(unexpected(&o)),
                }),
            )?;
            output::mmu_pages(domid, pages, json);
        }
        Cmd::MmuPages { op: MmuOp::Set { domain, pages } } => {
            let domid = resolve(&mut c, domain)?;
            match on_domain(domain, done(&mut c, Req::MmuPagesSet { domid, pages: *pages })) {
                // Say which rule was broken: the floor is the one a user meets.
                Err(Fail::Hypercall(abi::Errno::EINVAL)) => {
                    let floor = c.call(Req::PhysInfo, |r| match r {
                        Resp::PhysInfo(p) => Ok(p.mmu_pages_floor),
                        o => Err(unexpected(&o)),
                    })?;
                    return Err(Fail::Dom0(format!(
                        "EINVAL: invalid argument ({pages} is below the MMU page floor, {floor}; 0 restores the default)"
                    )));
                }
                r => r?,
            }
            let now = on_domain(
                domain,
                c.call(Req::MmuPagesGet { domid }, |r| match r {
                    Resp::MmuPages { pages } => Ok(pages),
                    o => Err(unexpected(&o)),
                }),
            )?;
            output::mmu_pages(domid, now, json);
        }
        Cmd::Console { domain, no_follow } => console(&mut c, domain, !no_follow, json)?,
        Cmd::Stats { domain, watch } => {
            let domid = resolve(&mut c, domain)?;
            let interval = match watch {
                Some(s) if !(s.is_finite() && *s > 0.0 && *s < 1e6) => {
                    return Err(Fail::Usage("--watch takes a positive number of seconds".into()));
                }
                Some(s) => Some(Duration::from_secs_f64(*s)),
                None => None,
            };
            loop {
                let s = on_domain(
                    domain,
                    c.call(Req::Stats { domid }, |r| match r {
                        Resp::Stats(s) => Ok(s),
                        o => Err(unexpected(&o)),
                    }),
                )?;
                if interval.is_some() && !json {
                    // Clear the screen and home the cursor: a refreshing view for people.
                    print!("\x1b[2J\x1b[H");
                }
                output::stats(&s, json);
                match interval {
                    Some(i) => std::thread::sleep(i),
                    None => break,
                }
            }
        }
        Cmd::Modules => {
            let mods = c.call(Req::Modules, |r| match r {
                Resp::Modules(m) => {
                    Ok(m.iter().map(|m| (m.name.to_string(), m.size)).collect::<Vec<_>>())
                }
                o => Err(unexpected(&o)),
            })?;
            output::modules(&mods, json);
        }
        Cmd::Poweroff => {
            done(&mut c, Req::Poweroff)?;
            output::ok("dom0 powering off", None, json);
        }
        Cmd::Disk { op: DiskOp::Ls { path } } => {
            let path = path.strip_prefix(DOM0_PREFIX).unwrap_or(path);
            let entries = disk_list(&mut c, path)?;
            output::disk_list(path, &entries, json);
        }
        Cmd::Disk { op: DiskOp::Info } => {
            c.call(Req::DiskInfo, |r| match r {
                Resp::DiskInfo { model, sectors, lba48, filesystem } => {
                    output::disk_info(model, sectors, lba48, filesystem, json);
                    Ok(())
                }
                o => Err(unexpected(&o)),
            })?;
        }
    }
    Ok(())
}

/// Every entry of a directory of dom0's disk, page after page.
fn disk_list(c: &mut Client, path: &str) -> Result<Vec<output::DiskEntry>, Fail> {
    let mut all: Vec<output::DiskEntry> = Vec::new();
    loop {
        let skip = u32::try_from(all.len()).unwrap_or(u32::MAX);
        let more = c.call(Req::DiskList { path, skip }, |r| match r {
            Resp::DiskList { entries, more } => {
                all.extend(entries.iter().map(|e| output::DiskEntry {
                    name: e.name.into(),
                    size: e.size,
                    dir: e.dir,
                }));
                // A page that added nothing ends the listing even if dom0 says "more".
                Ok(more && !entries.is_empty())
            }
            o => Err(unexpected(&o)),
        })?;
        if !more {
            return Ok(all);
        }
    }
}

fn done(c: &mut Client, req: Req<'_>) -> Result<(), Fail> {
    c.call(req, |r| match r {
        Resp::Done => Ok(()),
        o => Err(unexpected(&o)),
    })
}

/// A request on one domain that answers `Done`.
fn simple(
    c: &mut Client,
    domain: &str,
    json: bool,
    what: &str,
    req: impl FnOnce(u32) -> Req<'static>,
) -> Result<(), Fail> {
    let domid = resolve(c, domain)?;
    on_domain(domain, done(c, req(domid)))?;
    output::ok(what, Some(domid), json);
    Ok(())
}

/// Names the domain in an `ESRCH` failure.
fn on_domain<T>(domain: &str, r: Result<T, Fail>) -> Result<T, Fail> {
    r.map_err(|e| match e {
        Fail::Hypercall(e @ abi::Errno::ESRCH) => Fail::UnknownDomain(domain.into(), Some(e)),
        other => other,
    })
}

fn list(c: &mut Client) -> Result<Vec<DomainInfo>, Fail> {
    c.call(Req::List, |r| match r {
        Resp::List(l) => Ok(l.to_vec()),
        o => Err(unexpected(&o)),
    })
}

/// A domain id from an id or a name (names need a `List`; ids are checked by dom0).
fn resolve(c: &mut Client, domain: &str) -> Result<u32, Fail> {
    if let Ok(id) = domain.parse::<u32>() {
        return Ok(id);
    }
    resolve_in(&list(c)?, domain)
}

fn resolve_in(all: &[DomainInfo], domain: &str) -> Result<u32, Fail> {
    let by_id = domain.parse::<u32>().ok();
    all.iter()
        .find(|i| Some(i.domid) == by_id || i.name_str() == domain)
        .map(|i| i.domid)
        .ok_or_else(|| Fail::UnknownDomain(domain.into(), None))
}

/// Uploads `path` into dom0's image buffer, with a progress bar.
fn upload(c: &mut Client, path: &Path, json: bool) -> Result<(), Fail> {
    let image = std::fs::read(path)
        .map_err(|e| Fail::Usage(format!("cannot read {}: {e}", path.display())))?;
    let cap = c.hello.upload_capacity as usize;
    if image.len() > cap {
        return Err(Fail::Usage(format!(
            "{} is {} bytes; dom0's upload buffer holds {cap}",
            path.display(),
            image.len()
        )));
    }
    let size = image.len() as u32;
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(size.into())
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "uploading {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let t = Instant::now();
    let progress = |r: Resp<'_>| match r {
        Resp::UploadProgress { received } => Ok(received),
        o => Err(unexpected(&o)),
    };
    c.call(Req::UploadBegin { size }, progress)?;
    for (i, chunk) in image.chunks(UPLOAD_CHUNK_MAX).enumerate() {
        let offset = (i * UPLOAD_CHUNK_MAX) as u32;
        let received = c.call(Req::UploadChunk { offset, data: chunk }, progress)?;
        bar.set_position(received.into());
    }
    bar.finish_and_clear();
    if !json {
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "uploaded {} bytes in {secs:.1} s ({:.1} KiB/s)",
            image.len(),
            image.len() as f64 / 1024.0 / secs.max(1e-9)
        );
    }
    Ok(())
}

/// Prints a domain's console; with `follow`, until the domain stops and its ring is empty.
fn console(c: &mut Client, domain: &str, follow: bool, json: bool) -> Result<(), Fail> {
    let domid = resolve(c, domain)?;
    let mut out = std::io::stdout();
    let mut all = Vec::new();
    // Keystrokes: a thread reads standard input (until its end) and hands the bytes over; they
    // go to the domain as fast as its UART takes them.
    let typed = follow.then(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdin, &mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        rx
    });
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if let Some(rx) = &typed {
            while let Ok(bytes) = rx.try_recv() {
                pending.extend_from_slice(&bytes);
            }
            while !pending.is_empty() {
                let n = pending.len().min(abi::hypercall::CONSOLE_INPUT_MAX as usize);
                let taken = on_domain(
                    domain,
                    c.call(Req::ConsoleInput { domid, data: &pending[..n] }, |r| match r {
                        Resp::Accepted { bytes } => Ok(bytes as usize),
                        o => Err(unexpected(&o)),
                    }),
                )?;
                pending.drain(..taken.min(n));
                if taken < n {
                    break;
                }
            }
        }
        let data = on_domain(
            domain,
            c.call(Req::ConsoleRead { domid, max: CONSOLE_READ_MAX as u32 }, |r| match r {
                Resp::Console { data } => Ok(data.to_vec()),
                o => Err(unexpected(&o)),
            }),
        )?;
        if !data.is_empty() {
            if json {
                all.extend_from_slice(&data);
                if follow {
                    output::console_chunk(domid, &all);
                    all.clear();
                }
            } else {
                let _ = out.write_all(&data);
                let _ = out.flush();
            }
            // Without following, what was buffered when asked: a read that did not fill its
            // buffer emptied the ring, and what a busy domain writes after it is the next
            // call's (reading on until a read comes back empty might never end).
            if follow || data.len() >= CONSOLE_READ_MAX as usize {
                continue;
            }
        }
        if !follow {
            break;
        }
        let info = on_domain(
            domain,
            c.call(Req::DomainInfo { domid }, |r| match r {
                Resp::DomainInfo(i) => Ok(i),
                o => Err(unexpected(&o)),
            }),
        )?;
        let state = DomainState::from_u32(info.state);
        if matches!(state, Some(DomainState::Shutdown | DomainState::Crashed)) {
            // Anything written between the last read and the stop.
            let tail =
                c.call(Req::ConsoleRead { domid, max: CONSOLE_READ_MAX as u32 }, |r| match r {
                    Resp::Console { data } => Ok(data.to_vec()),
                    o => Err(unexpected(&o)),
                })?;
            if !tail.is_empty() {
                continue_print(&mut out, &tail, json, domid, &mut all);
                continue;
            }
            if !json {
                eprintln!(
                    "[domain {} ({}) is {}]",
                    domid,
                    info.name_str(),
                    output::state_text(&info)
                );
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if json && !follow {
        output::console_chunk(domid, &all);
    }
    Ok(())
}

fn continue_print(
    out: &mut std::io::Stdout,
    data: &[u8],
    json: bool,
    domid: u32,
    all: &mut Vec<u8>,
) {
    if json {
        all.extend_from_slice(data);
        output::console_chunk(domid, all);
        all.clear();
    } else {
        let _ = out.write_all(data);
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, Fail, check_sources, parse_size};
    use clap::Parser;

    #[test]
    fn disk_kernels_take_disk_modules_and_no_others() {
        let s = |v: &str| v.to_string();
        let (disk, module, host) = (s("dom0:/boot/initrd"), s("initrd"), s("dom0:/x"));
        assert!(check_sources(Some("dom0:/boot/vmlinux"), &[&disk, &host]).is_ok());
        assert!(check_sources(Some("vmlinux"), &[&module]).is_ok());
        assert!(check_sources(None, &[&module]).is_ok(), "--module with boot modules");
        let refused =
            |k: Option<&str>, m: &[&String]| matches!(check_sources(k, m), Err(Fail::Usage(_)));
        assert!(refused(Some("dom0:/boot/vmlinux"), &[&disk, &module]));
        assert!(refused(Some("vmlinux"), &[&disk]));
        assert!(refused(None, &[&disk]));
    }

    #[test]
    fn create_needs_one_kernel() {
        let parse =
            |args: &[&str]| Cli::try_parse_from(["hvctl", "create", "d"].iter().chain(args));
        assert!(parse(&[]).is_err(), "no kernel");
        assert!(parse(&["img"]).is_ok());
        assert!(parse(&["--kernel", "dom0:/k"]).is_ok());
        assert!(parse(&["--module", "hello"]).is_ok());
        assert!(parse(&["img", "--kernel", "dom0:/k"]).is_err(), "two kernels");
        assert!(parse(&["--module", "hello", "--kernel", "dom0:/k"]).is_err(), "two kernels");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(parse_size("18446744073709551615G").is_err());
    }
}
