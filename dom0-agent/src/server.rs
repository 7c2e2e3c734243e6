//! dom0's side of the control protocol (`abi::proto`): frames in, hypercalls, frames out.
//!
//! Serving model: one request at a time. [`Server::poll`] reads the bytes waiting on the
//! channel, and when a delimiter completes a frame it decodes it, acts on it (hypercalls, the
//! domain builder), and writes exactly one response frame before it reads on. Every action is
//! bounded (no retry loop, no wait on a domain; every wait on the disk has its timeout), so a
//! response always follows. State kept between requests: whether the hello succeeded, and the
//! image upload in progress. dom0's disk, if it has one, is read afresh for each request
//! that needs it (`disk::fs`).
//!
//! The hypercalls and the byte channel are traits ([`Control`], [`Channel`]) so that the host
//! tests drive the same code with a fake hypervisor and random input.

use crate::builder::{self, BuildError, DomainSpec, Format, Hypercalls};
use crate::disk::Sectors;
use crate::disk::ata::Identity;
use crate::disk::fs::{File, Fs, ReadAhead};
use crate::image::Source;
use crate::vbd::{AttachError, Backend, NoStore, VbdHypercalls};
use abi::Errno;
use abi::hypercall::{CONSOLE_READ_MAX, MAX_DOMAINS, ShutdownReason};
use abi::proto::{
    self, CMDLINE_MAX, DISK_LIST_BYTES, DISK_LIST_MAX, DiskEntry, DiskError, DomainConfig, Error,
    FrameEncoder, FrameReader, ImageSource, KERNEL_MODULES_MAX, MAX_MODULES, ModuleInfo, NO_ID,
    PROTOCOL_VERSION, REASON_MAX, Req, Request, Resp, Response, UPLOAD_CHUNK_MAX, UploadError,
};
use abi::types::{DomainInfo, DomainStats, PhysInfo, name_field};
use core::fmt::Write;
use zerocopy::FromZeros;

/// The hypercalls the server makes, beyond the builder's (implemented by
/// `abi::guest::Hypervisor`; faked in tests), and dom0's console for its log lines.
pub trait Control: Hypercalls {
    /// The ABI version microhv reports.
    fn abi_version(&self) -> Result<(u16, u16), Errno>;
    /// `PhysInfo`.
    fn phys_info(&self) -> Result<PhysInfo, Errno>;
    /// `DomainList`.
    fn domain_list(&self, out: &mut [DomainInfo]) -> Result<u64, Errno>;
    /// `DomainGetInfo`.
    fn domain_info(&self, domid: u32) -> Result<DomainInfo, Errno>;
    /// `DomainPause`.
    fn domain_pause(&self, domid: u32) -> Result<(), Errno>;
    /// `DomainUnpause`.
    fn domain_unpause(&self, domid: u32) -> Result<(), Errno>;
    /// `DomainShutdown`.
    fn domain_shutdown(&self, domid: u32, reason: ShutdownReason, status: u32)
    -> Result<(), Errno>;
    /// `MemSet`.
    fn mem_set(&self, domid: u32, bytes: u64) -> Result<(), Errno>;
    /// `MmuPagesGet`.
    fn mmu_pages_get(&self, domid: u32) -> Result<u64, Errno>;
    /// `MmuPagesSet`.
    fn mmu_pages_set(&self, domid: u32, pages: u64) -> Result<(), Errno>;
    /// `ConsoleRead`.
    fn console_read(&self, domid: u32, buf: &mut [u8]) -> Result<u64, Errno>;
    /// `ConsoleInput`.
    fn console_input(&self, domid: u32, bytes: &[u8]) -> Result<u64, Errno>;
    /// `Stats`.
    fn stats(&self, domid: u32) -> Result<DomainStats, Errno>;
    /// Writes one line (without its newline) to dom0's console.
    fn log(&self, line: &str);
    /// Milliseconds on some clock, for the figures in dom0's log (0 where there is none).
    fn millis(&self) -> u64 {
        0
    }
}

impl Control for abi::guest::Hypervisor {
    fn abi_version(&self) -> Result<(u16, u16), Errno> {
        abi::guest::Hypervisor::abi_version(self)
    }
    fn phys_info(&self) -> Result<PhysInfo, Errno> {
        abi::guest::Hypervisor::phys_info(self)
    }
    fn domain_list(&self, out: &mut [DomainInfo]) -> Result<u64, Errno> {
        abi::guest::Hypervisor::domain_list(self, out)
    }
    fn domain_info(&self, domid: u32) -> Result<DomainInfo, Errno> {
        abi::guest::Hypervisor::domain_info(self, domid)
    }
    fn domain_pause(&self, domid: u32) -> Result<(), Errno> {
        abi::guest::Hypervisor::domain_pause(self, domid)
    }
    fn domain_unpause(&self, domid: u32) -> Result<(), Errno> {
        abi::guest::Hypervisor::domain_unpause(self, domid)
    }
    fn domain_shutdown(
        &self,
        domid: u32,
        reason: ShutdownReason,
        status: u32,
    ) -> Result<(), Errno> {
        abi::guest::Hypervisor::domain_shutdown(self, domid, reason, status)
    }
    fn mem_set(&self, domid: u32, bytes: u64) -> Result<(), Errno> {
        abi::guest::Hypervisor::mem_set(self, domid, bytes)
    }
    fn mmu_pages_get(&self, domid: u32) -> Result<u64, Errno> {
        abi::guest::Hypervisor::mmu_pages_get(self, domid)
    }
    fn mmu_pages_set(&self, domid: u32, pages: u64) -> Result<(), Errno> {
        abi::guest::Hypervisor::mmu_pages_set(self, domid, pages)
    }
    fn console_read(&self, domid: u32, buf: &mut [u8]) -> Result<u64, Errno> {
        abi::guest::Hypervisor::console_read(self, domid, buf)
    }
    fn console_input(&self, domid: u32, bytes: &[u8]) -> Result<u64, Errno> {
        abi::guest::Hypervisor::console_input(self, domid, bytes)
    }
    fn stats(&self, domid: u32) -> Result<DomainStats, Errno> {
        abi::guest::Hypervisor::stats(self, domid)
    }
    fn log(&self, line: &str) {
        // One console write per line keeps lines whole in microhv's log; a line longer than
        // the line buffer is cut, which the fixed-size formatting below never produces.
        let mut buf = [0u8; 192];
        let n = line.len().min(buf.len() - 1);
        buf[..n].copy_from_slice(&line.as_bytes()[..n]);
        buf[n] = b'\n';
        let _ = self.console_write(&buf[..=n]);
    }
    fn millis(&self) -> u64 {
        // SAFETY: RDTSC has no side effects; microhv does not intercept it.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        tsc / crate::dm::tsc_khz().max(1)
    }
}

/// The byte channel (COM2 in dom0; a buffer in tests).
pub trait Channel {
    /// A received byte, if one is waiting (never blocks).
    fn read_byte(&mut self) -> Option<u8>;
    /// Sends every byte.
    fn write(&mut self, bytes: &[u8]);
}

/// A boot module dom0 can build domains from.
#[derive(Debug, Clone, Copy)]
pub struct BootModule<'a> {
    /// Its name (the first word of its command line, without a path).
    pub name: &'a str,
    /// Its bytes.
    pub bytes: &'a [u8],
}

/// The server's fixed buffers (about 92 KiB): kept apart so dom0 can place them in a static
/// rather than on its 64 KiB stack.
pub struct Buffers {
    reader: FrameReader,
    encoder: FrameEncoder,
    console: [u8; CONSOLE_READ_MAX as usize],
    ahead: ReadAhead,
}

impl Default for Buffers {
    fn default() -> Self {
        Self::new()
    }
}

impl Buffers {
    /// Empty buffers.
    pub const fn new() -> Self {
        Self {
            reader: FrameReader::new(),
            encoder: FrameEncoder::new(),
            console: [0; CONSOLE_READ_MAX as usize],
            ahead: ReadAhead::new(),
        }
    }

    /// The file system's read-ahead lines, for a use of the disk outside a request.
    pub fn read_ahead(&mut self) -> &mut ReadAhead {
        &mut self.ahead
    }
}

/// What [`Server::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// No byte was waiting.
    Idle,
    /// Bytes were read (and any complete frame answered).
    Busy,
    /// A `Poweroff` request was answered: the caller powers dom0 off.
    Poweroff,
}

#[derive(Debug, Clone, Copy, Default)]
struct Upload {
    active: bool,
    size: u32,
    received: u32,
}

/// State kept between requests.
struct State<'a> {
    image: &'a mut [u8],
    upload: Upload,
    greeted: bool,
    /// What the builder reads files from the disk through.
    scratch: &'a mut [u8],
    /// The PV devices (stores, consoles, virtual disks) dom0 serves, if it was given a backend.
    vbds: Option<Backend<'a>>,
}

/// dom0's disk as the server sees it.
#[derive(Clone, Copy)]
pub struct DiskAccess<'a> {
    /// Its sectors.
    pub sectors: &'a dyn Sectors,
    /// What IDENTIFY said.
    pub identity: &'a Identity,
}

/// The control-protocol server.
pub struct Server<'a> {
    modules: &'a [BootModule<'a>],
    bufs: &'a mut Buffers,
    state: State<'a>,
    agent: &'a str,
    disk: Option<DiskAccess<'a>>,
    /// Requests answered so far (frames, malformed ones included).
    pub served: u64,
}

/// A log line: what the request was and how it ended.
type Line = heapless::String<160>;

impl<'a> Server<'a> {
    /// A server building domains from `modules` or from images uploaded into `image` (whose
    /// length is the upload capacity). `agent` is dom0-agent's version, sent in the hello.
    pub fn new(
        modules: &'a [BootModule<'a>],
        bufs: &'a mut Buffers,
        image: &'a mut [u8],
        agent: &'a str,
    ) -> Self {
        Self {
            modules,
            bufs,
            state: State {
                image,
                upload: Upload::default(),
                greeted: false,
                scratch: &mut [],
                vbds: None,
            },
            agent,
            disk: None,
            served: 0,
        }
    }

    /// Serves dom0's disk too (without one, disk requests get [`DiskError::NoDisk`]): the
    /// builder reads files through `scratch`, whose size (at least `image::SCRATCH_MIN`, up
    /// to `MEM_WRITE_MAX`) is the chunk it copies into a domain at a time.
    pub fn with_disk(mut self, disk: DiskAccess<'a>, scratch: &'a mut [u8]) -> Self {
        self.disk = Some(disk);
        self.state.scratch = scratch;
        self
    }

    /// Serves PV devices through `vbds`: a store and console for every PVH domain it builds,
    /// virtual disks (`VbdAttach`; without a backend it is [`DiskError::NoDisk`]); the server
    /// tears them down when it destroys the domain; [`Server::poll_vbds`] serves them.
    pub fn with_vbds(mut self, vbds: Backend<'a>) -> Self {
        self.state.vbds = Some(vbds);
        self
    }

    /// Serves the stores, consoles and virtual disks' rings, if an event came in (cheap
    /// otherwise); whether anything was done.
    pub fn poll_vbds<H: VbdHypercalls>(&mut self, hv: &H) -> bool {
        self.state.vbds.as_mut().is_some_and(|b| b.poll(hv))
    }

    /// Reads the bytes waiting on `ch` and answers every frame they complete.
    pub fn poll<H: Control + VbdHypercalls, C: Channel>(&mut self, hv: &H, ch: &mut C) -> Poll {
        let Buffers { reader, encoder, console, ahead } = &mut *self.bufs;
        let mut result = Poll::Idle;
        while let Some(b) = ch.read_byte() {
            if result == Poll::Idle {
                result = Poll::Busy;
            }
            let Some(frame) = reader.push(b) else { continue };
            let mut reason = heapless::String::<REASON_MAX>::new();
            let mut line = Line::new();
            let (id, resp, poweroff) = match frame {
                Err(e) => {
                    let _ = write!(line, "ctl: unreadable frame");
                    (NO_ID, Resp::Error(e.to_error()), false)
                }
                Ok(msg) => match proto::decode_request(msg) {
                    Err((id, e)) => {
                        let _ = write!(line, "ctl #{id}: undecodable request");
                        (id, Resp::Error(e), false)
                    }
                    Ok(req) => {
                        describe(&mut line, &req);
                        let poweroff = req.body == Req::Poweroff;
                        let ctx =
                            Ctx { hv, modules: self.modules, agent: self.agent, disk: self.disk };
                        let bufs = (&mut console[..], &mut *ahead);
                        let resp = handle(&ctx, &mut self.state, bufs, &mut reason, req.body);
                        (req.id, resp, poweroff)
                    }
                },
            };
            outcome(&mut line, &resp);
            hv.log(&line);
            self.served += 1;
            match encoder.encode(&Response { id, body: resp }) {
                Ok(bytes) => ch.write(bytes),
                // Every response fits a frame (checked by abi's tests); should one not, the
                // client still gets an answer rather than silence.
                Err(_) => {
                    let fallback = Resp::Error(Error::BadRequest { reason: "response too large" });
                    if let Ok(bytes) = encoder.encode(&Response { id, body: fallback }) {
                        ch.write(bytes);
                    }
                }
            }
            if poweroff {
                return Poll::Poweroff;
            }
        }
        result
    }
}

struct Ctx<'h, 'm, H> {
    hv: &'h H,
    modules: &'m [BootModule<'m>],
    agent: &'m str,
    disk: Option<DiskAccess<'m>>,
}

fn describe(line: &mut Line, req: &Request<'_>) {
    let id = req.id;
    let _ = match &req.body {
        Req::Hello { version } => write!(line, "ctl #{id}: hello v{version}"),
        Req::PhysInfo => write!(line, "ctl #{id}: info"),
        Req::List => write!(line, "ctl #{id}: list"),
        Req::DomainInfo { domid } => write!(line, "ctl #{id}: info d{domid}"),
        Req::UploadBegin { size } => write!(line, "ctl #{id}: upload {size} bytes"),
        Req::UploadChunk { offset, data } => {
            write!(line, "ctl #{id}: upload chunk {offset}+{}", data.len())
        }
        Req::Create { config, image, .. } | Req::CreateWithModules { config, image, .. } => {
            let _ = write!(line, "ctl #{id}: create ");
            let name = config.name.get(..32).unwrap_or(config.name);
            let _ = write!(line, "{name:?} ");
            match image {
                ImageSource::Uploaded => write!(line, "from upload"),
                ImageSource::Module(m) => {
                    write!(line, "from module {:?}", m.get(..32).unwrap_or(m))
                }
            }
        }
        Req::Destroy { domid } => write!(line, "ctl #{id}: destroy d{domid}"),
        Req::Pause { domid } => write!(line, "ctl #{id}: pause d{domid}"),
        Req::Unpause { domid } => write!(line, "ctl #{id}: unpause d{domid}"),
        Req::Shutdown { domid, .. } => write!(line, "ctl #{id}: shutdown d{domid}"),
        Req::MemSet { domid, bytes } => write!(line, "ctl #{id}: mem-set d{domid} {bytes}"),
        Req::MmuPagesGet { domid } => write!(line, "ctl #{id}: mmu-pages get d{domid}"),
        Req::MmuPagesSet { domid, pages } => {
            write!(line, "ctl #{id}: mmu-pages set d{domid} {pages}")
        }
        Req::ConsoleRead { domid, .. } => write!(line, "ctl #{id}: console d{domid}"),
        Req::Stats { domid } => write!(line, "ctl #{id}: stats d{domid}"),
        Req::Modules => write!(line, "ctl #{id}: modules"),
        Req::Poweroff => write!(line, "ctl #{id}: poweroff"),
        Req::ConsoleInput { domid, data } => {
            write!(line, "ctl #{id}: type {} bytes on d{domid}", data.len())
        }
        Req::CreateFromDisk { config, kernel, modules, .. } => {
            let name = config.name.get(..32).unwrap_or(config.name);
            let kernel = kernel.get(..48).unwrap_or(kernel);
            write!(line, "ctl #{id}: create {name:?} from disk {kernel:?} (+{})", modules.len())
        }
        Req::DiskList { path, skip } => {
            write!(line, "ctl #{id}: disk ls {:?} from {skip}", path.get(..48).unwrap_or(path))
        }
        Req::DiskInfo => write!(line, "ctl #{id}: disk info"),
        Req::VbdAttach { domid, bytes } => write!(line, "ctl #{id}: vbd attach d{domid} {bytes}"),
    };
}

fn outcome(line: &mut Line, resp: &Resp<'_>) {
    // A full line just loses its tail: the log is for people.
    let _ = match resp {
        Resp::Error(e) => write!(line, " -> error: {e}"),
        Resp::Created { domid } => write!(line, " -> d{domid}"),
        Resp::Console { data } => write!(line, " -> {} bytes", data.len()),
        Resp::UploadProgress { received } => write!(line, " -> {received}"),
        Resp::DiskList { entries, more } => {
            write!(line, " -> {} entries{}", entries.len(), if *more { ", more" } else { "" })
        }
        _ => write!(line, " -> ok"),
    };
}

fn hc(e: Errno) -> Resp<'static> {
    Resp::Error(Error::Hypercall { errno: e })
}

fn done(r: Result<(), Errno>) -> Resp<'static> {
    r.map_or_else(hc, |()| Resp::Done)
}

fn handle<'r, H: Control + VbdHypercalls>(
    ctx: &Ctx<'_, 'r, H>,
    st: &mut State<'_>,
    (console, ahead): (&'r mut [u8], &mut ReadAhead),
    reason: &'r mut heapless::String<REASON_MAX>,
    req: Req<'_>,
) -> Resp<'r> {
    let hv = ctx.hv;
    if let Req::Hello { version } = req {
        st.greeted = version == PROTOCOL_VERSION;
        if !st.greeted {
            return Resp::Error(Error::VersionMismatch { dom0: PROTOCOL_VERSION, client: version });
        }
        let (abi_major, abi_minor) = hv.abi_version().unwrap_or((0, 0));
        return Resp::Hello {
            version: PROTOCOL_VERSION,
            abi_major,
            abi_minor,
            agent: ctx.agent,
            upload_capacity: u32::try_from(st.image.len()).unwrap_or(u32::MAX),
        };
    }
    if !st.greeted {
        return Resp::Error(Error::HelloRequired);
    }
    match req {
        Req::Hello { .. } => Resp::Error(Error::HelloRequired),
        Req::PhysInfo => hv.phys_info().map_or_else(hc, Resp::PhysInfo),
        Req::List => {
            let mut all = [DomainInfo::new_zeroed(); MAX_DOMAINS as usize];
            match hv.domain_list(&mut all) {
                Ok(n) => {
                    let n = usize::try_from(n).unwrap_or(usize::MAX).min(all.len());
                    Resp::List(all[..n].iter().copied().collect())
                }
                Err(e) => hc(e),
            }
        }
        Req::DomainInfo { domid } => hv.domain_info(domid).map_or_else(hc, Resp::DomainInfo),
        Req::UploadBegin { size } => {
            if size as usize > st.image.len() {
                st.upload = Upload::default();
                let capacity = u32::try_from(st.image.len()).unwrap_or(u32::MAX);
                return Resp::Error(Error::Upload(UploadError::TooLarge { size, capacity }));
            }
            st.upload = Upload { active: true, size, received: 0 };
            Resp::UploadProgress { received: 0 }
        }
        Req::UploadChunk { offset, data } => upload_chunk(st, offset, data),
        Req::Create { config, image, start } => create(ctx, st, reason, &config, image, &[], start),
        Req::CreateWithModules { config, image, modules, start } => {
            create(ctx, st, reason, &config, image, &modules, start)
        }
        Req::Destroy { domid } => {
            let destroyed = hv.domain_destroy(domid);
            if destroyed.is_ok()
                && let Some(vbds) = st.vbds.as_mut()
            {
                vbds.destroyed(hv, domid);
            }
            done(destroyed)
        }
        Req::Pause { domid } => done(hv.domain_pause(domid)),
        Req::Unpause { domid } => done(hv.domain_unpause(domid)),
        Req::Shutdown { domid, reason, status } => done(hv.domain_shutdown(domid, reason, status)),
        Req::MemSet { domid, bytes } => done(hv.mem_set(domid, bytes)),
        Req::MmuPagesGet { domid } => {
            hv.mmu_pages_get(domid).map_or_else(hc, |pages| Resp::MmuPages { pages })
        }
        Req::MmuPagesSet { domid, pages } => done(hv.mmu_pages_set(domid, pages)),
        Req::ConsoleRead { domid, max } => {
            // More than a ring's worth is never waiting: asking for more just gets it all.
            let max = (max as usize).min(console.len());
            match hv.console_read(domid, &mut console[..max]) {
                Ok(n) => {
                    let mut n = usize::try_from(n).unwrap_or(max).min(max);
                    // Then the PV console's output, in what room is left (`ABI.md`).
                    if let Some(b) = st.vbds.as_mut() {
                        n += b.console_read(hv, domid, &mut console[n..max]);
                    }
                    Resp::Console { data: &console[..n] }
                }
                Err(e) => hc(e),
            }
        }
        Req::Stats { domid } => hv.stats(domid).map_or_else(hc, Resp::Stats),
        Req::Modules => Resp::Modules(
            ctx.modules
                .iter()
                .take(MAX_MODULES)
                .map(|m| ModuleInfo { name: m.name, size: m.bytes.len() as u64 })
                .collect(),
        ),
        Req::Poweroff => Resp::Done,
        Req::ConsoleInput { domid, data } => {
            // A domain that uses its PV console reads its input there; others on their COM1.
            match st.vbds.as_mut().and_then(|b| b.console_input(hv, domid, data)) {
                // At most the request's 256 bytes.
                Some(n) => Resp::Accepted { bytes: n as u32 },
                None => match hv.console_input(domid, data) {
                    Ok(n) => Resp::Accepted { bytes: u32::try_from(n).unwrap_or(0) },
                    Err(e) => hc(e),
                },
            }
        }
        Req::CreateFromDisk { config, kernel, modules, start } => {
            create_from_disk(ctx, st, ahead, reason, &config, kernel, &modules, start)
        }
        Req::DiskList { path, skip } => disk_list(ctx, console, ahead, reason, path, skip),
        Req::DiskInfo => disk_info(ctx, console, ahead, reason),
        Req::VbdAttach { domid, bytes } => vbd_attach(hv, st, reason, domid, bytes),
    }
}

/// Gives `domid`, created and not yet started, a virtual disk of `bytes`. Not inlined: its
/// frame (the pool's table, a chunk of zeros) stays off the path of every other request.
#[inline(never)]
fn vbd_attach<'r, H: Control + VbdHypercalls>(
    hv: &H,
    st: &mut State<'_>,
    reason: &'r mut heapless::String<REASON_MAX>,
    domid: u32,
    bytes: u64,
) -> Resp<'r> {
    let Some(vbds) = st.vbds.as_mut() else {
        return disk_err(reason, DiskError::NoDisk, "");
    };
    let info = match hv.domain_info(domid) {
        Ok(info) => info,
        Err(e) => return hc(e),
    };
    match vbds.attach(hv, &info, bytes) {
        Ok(()) => Resp::Done,
        Err(AttachError::BadRequest(reason)) => Resp::Error(Error::BadRequest { reason }),
        Err(AttachError::Hypercall(e)) => hc(e),
        Err(AttachError::Disk(e)) => disk_err(reason, e, ""),
    }
}

/// A disk error about `path` (copied into `reason`, cut at its capacity on a character
/// boundary).
fn disk_err<'r>(
    reason: &'r mut heapless::String<REASON_MAX>,
    error: DiskError,
    path: &str,
) -> Resp<'r> {
    reason.clear();
    for c in path.chars() {
        if reason.push(c).is_err() {
            break;
        }
    }
    Resp::Error(Error::Disk { error, path: reason.as_str() })
}

/// The checks dom0 makes of a domain's configuration itself: the `BadRequest` reason.
fn check_config(config: &DomainConfig<'_>) -> Result<(), &'static str> {
    if name_field(config.name).is_none() {
        return Err("a domain name is 1 to 32 printable ASCII characters");
    }
    if config.cmdline.len() > CMDLINE_MAX {
        return Err("command line too long");
    }
    Ok(())
}

/// The last component of a path: a module's command line, as a boot module's is its name.
fn file_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or(path)
}

// Not inlined (nor the other disk requests): their frames (file handles, long-name buffers)
// stay off the path of every other request, on dom0's 64 KiB stack.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn create_from_disk<'r, H: Control + VbdHypercalls>(
    ctx: &Ctx<'_, 'r, H>,
    st: &mut State<'_>,
    ahead: &mut ReadAhead,
    reason: &'r mut heapless::String<REASON_MAX>,
    config: &DomainConfig<'_>,
    kernel: &str,
    module_paths: &[&str],
    start: bool,
) -> Resp<'r> {
    if let Err(reason) = check_config(config) {
        return Resp::Error(Error::BadRequest { reason });
    }
    let Some(disk) = ctx.disk else {
        return disk_err(reason, DiskError::NoDisk, "");
    };
    let t0 = ctx.hv.millis();
    let fs = match Fs::open(disk.sectors, ahead) {
        Ok(fs) => fs,
        Err(e) => return disk_err(reason, e, ""),
    };
    let image = match fs.open_file(kernel) {
        Ok(f) => f,
        Err(e) => return disk_err(reason, e, kernel),
    };
    // A file is open once at a time: a module that names the kernel or an earlier module
    // again (in whatever spelling) shares its handle. `slots` says whose: 0 the kernel, i + 1
    // `files[i]`.
    let mut files: heapless::Vec<File<'_, '_>, KERNEL_MODULES_MAX> = heapless::Vec::new();
    let mut slots: heapless::Vec<usize, KERNEL_MODULES_MAX> = heapless::Vec::new();
    for path in module_paths {
        let id = match fs.entry_id(path) {
            Ok(id) => id,
            Err(e) => return disk_err(reason, e, path),
        };
        let slot = if id == image.id() {
            0
        } else if let Some(i) = files.iter().position(|f| f.id() == id) {
            i + 1
        } else {
            match fs.open_file(path) {
                Ok(f) => {
                    if files.push(f).is_err() {
                        return Resp::Error(Error::BadRequest { reason: "too many modules" });
                    }
                    files.len()
                }
                Err(e) => return disk_err(reason, e, path),
            }
        };
        if slots.push(slot).is_err() {
            return Resp::Error(Error::BadRequest { reason: "too many modules" });
        }
    }
    let source = |slot: usize| -> &dyn Source {
        match slot.checked_sub(1).and_then(|i| files.get(i)) {
            Some(f) => f,
            None => &image,
        }
    };
    let modules: heapless::Vec<builder::Module<'_>, KERNEL_MODULES_MAX> = slots
        .iter()
        .zip(module_paths)
        .map(|(&slot, p)| builder::Module { data: source(slot), cmdline: file_name(p) })
        .collect();
    let spec = spec_of(config, &modules);
    let built = builder::build_as(ctx.hv, &spec, &image, st.scratch);
    if let Err(BuildError::Read(which, e)) = built {
        let path = which.and_then(|i| module_paths.get(i)).copied().unwrap_or(kernel);
        return disk_err(reason, e, path);
    }
    if built.is_ok() {
        let bytes = image.size() + modules.iter().map(|m| m.data.size()).sum::<u64>();
        let ms = ctx.hv.millis().saturating_sub(t0);
        let mut line = Line::new();
        let _ = write!(
            line,
            "ctl: built from dom0's disk: {bytes} bytes in {ms} ms ({} KiB/s)",
            (bytes * 1000 / 1024).checked_div(ms).unwrap_or(0)
        );
        ctx.hv.log(&line);
    }
    finish(ctx.hv, &mut st.vbds, reason, built, start)
}

/// A page of the directory at `path` from its `skip`th entry, the names held in `names`.
#[inline(never)]
fn disk_list<'r, H: Control>(
    ctx: &Ctx<'_, 'r, H>,
    names: &'r mut [u8],
    ahead: &mut ReadAhead,
    reason: &'r mut heapless::String<REASON_MAX>,
    path: &str,
    skip: u32,
) -> Resp<'r> {
    let Some(disk) = ctx.disk else {
        return disk_err(reason, DiskError::NoDisk, "");
    };
    let fs = match Fs::open(disk.sectors, ahead) {
        Ok(fs) => fs,
        Err(e) => return disk_err(reason, e, ""),
    };
    // The names are copied into `names` first and the entries made from it after: the
    // entries borrow what the copying writes.
    let cap = names.len().min(DISK_LIST_BYTES);
    let names = &mut names[..cap];
    let mut found: heapless::Vec<(usize, usize, u64, bool), DISK_LIST_MAX> = heapless::Vec::new();
    let mut used = 0;
    let listed = fs.list(path, skip, |name, size, dir| {
        let end = used + name.len();
        if found.is_full() || end > names.len() {
            return core::ops::ControlFlow::Break(());
        }
        names[used..end].copy_from_slice(name.as_bytes());
        let _ = found.push((used, end, size, dir));
        used = end;
        core::ops::ControlFlow::Continue(())
    });
    let more = match listed {
        Ok(more) => more,
        Err(e) => return disk_err(reason, e, path),
    };
    let names: &'r [u8] = names;
    let entries = found
        .iter()
        .map(|&(a, b, size, dir)| DiskEntry {
            name: core::str::from_utf8(&names[a..b]).unwrap_or("?"),
            size,
            dir,
        })
        .collect();
    Resp::DiskList { entries, more }
}

/// The disk's drive and file system.
#[inline(never)]
fn disk_info<'r, H: Control>(
    ctx: &Ctx<'_, 'r, H>,
    text: &'r mut [u8],
    ahead: &mut ReadAhead,
    reason: &'r mut heapless::String<REASON_MAX>,
) -> Resp<'r> {
    let Some(disk) = ctx.disk else {
        return disk_err(reason, DiskError::NoDisk, "");
    };
    let mut fs_text = heapless::String::<REASON_MAX>::new();
    match Fs::open(disk.sectors, ahead) {
        Ok(fs) => fs.describe(&mut fs_text),
        Err(e) => {
            let _ = write!(fs_text, "none: {e}");
        }
    }
    let n = fs_text.len().min(text.len());
    text[..n].copy_from_slice(&fs_text.as_bytes()[..n]);
    reason.clear();
    let _ = reason.push_str(&disk.identity.model);
    Resp::DiskInfo {
        model: reason.as_str(),
        sectors: disk.identity.sectors,
        lba48: disk.identity.lba48,
        filesystem: core::str::from_utf8(&text[..n]).unwrap_or("?"),
    }
}

fn upload_chunk<'r>(st: &mut State<'_>, offset: u32, data: &[u8]) -> Resp<'r> {
    let up = st.upload;
    if !up.active {
        return Resp::Error(Error::Upload(UploadError::NotStarted));
    }
    if offset != up.received {
        return Resp::Error(Error::Upload(UploadError::OutOfOrder { expected: up.received }));
    }
    let start = up.received as usize;
    let end = start.saturating_add(data.len());
    if data.len() > UPLOAD_CHUNK_MAX || end > up.size as usize {
        return Resp::Error(Error::Upload(UploadError::Overflow));
    }
    let Some(dst) = st.image.get_mut(start..end) else {
        return Resp::Error(Error::Upload(UploadError::Overflow));
    };
    dst.copy_from_slice(data);
    // `end <= size`, a u32.
    st.upload.received = end as u32;
    Resp::UploadProgress { received: st.upload.received }
}

fn create<'r, H: Control + VbdHypercalls>(
    ctx: &Ctx<'_, 'r, H>,
    st: &mut State<'_>,
    reason: &'r mut heapless::String<REASON_MAX>,
    config: &DomainConfig<'_>,
    source: ImageSource<'_>,
    module_names: &[&str],
    start: bool,
) -> Resp<'r> {
    if let Err(reason) = check_config(config) {
        return Resp::Error(Error::BadRequest { reason });
    }
    let image: &[u8] = match source {
        ImageSource::Uploaded => {
            let up = st.upload;
            if !up.active {
                return Resp::Error(Error::Upload(UploadError::NotStarted));
            }
            if up.received != up.size {
                return Resp::Error(Error::Upload(UploadError::Incomplete {
                    received: up.received,
                    size: up.size,
                }));
            }
            st.image.get(..up.size as usize).unwrap_or(&[])
        }
        ImageSource::Module(name) => match ctx.modules.iter().find(|m| m.name == name) {
            Some(m) => m.bytes,
            None => return Resp::Error(Error::NoSuchModule),
        },
    };
    let mut modules: heapless::Vec<builder::Module<'_>, { abi::proto::KERNEL_MODULES_MAX }> =
        heapless::Vec::new();
    for name in module_names {
        let Some(m) = ctx.modules.iter().find(|m| m.name == *name) else {
            return Resp::Error(Error::NoSuchModule);
        };
        if modules.push(builder::Module { data: &m.bytes, cmdline: name }).is_err() {
            return Resp::Error(Error::BadRequest { reason: "too many modules" });
        }
    }
    let built = builder::build_as(ctx.hv, &spec_of(config, &modules), &image, &mut []);
    finish(ctx.hv, &mut st.vbds, reason, built, start)
}

/// What the builder needs of a request's domain configuration, with the kernel's modules.
fn spec_of<'a>(config: &DomainConfig<'a>, modules: &'a [builder::Module<'a>]) -> DomainSpec<'a> {
    DomainSpec {
        name: config.name,
        mem_bytes: config.mem_bytes,
        vcpus: config.vcpus,
        mmu_pages: config.mmu_pages,
        flags: config.flags,
        cmdline: config.cmdline,
        modules,
    }
}

/// The response to a build: the new domain, with its store if it is PVH (before it runs),
/// started if asked, or why there is none.
fn finish<'r, H: Control + VbdHypercalls>(
    hv: &H,
    backend: &mut Option<Backend<'_>>,
    reason: &'r mut heapless::String<REASON_MAX>,
    built: Result<(u32, Format), BuildError>,
    start: bool,
) -> Resp<'r> {
    let domid = match built {
        Ok((d, format)) => {
            if let Some(b) = backend.as_mut() {
                add_store(hv, b, d, format);
            }
            d
        }
        Err(BuildError::Hypercall(_, e)) => return hc(e),
        Err(BuildError::BadName) => {
            return Resp::Error(Error::BadRequest { reason: "bad domain name" });
        }
        Err(BuildError::CmdlineTooLong) => {
            return Resp::Error(Error::BadRequest { reason: "command line too long" });
        }
        Err(e) => {
            // The reason is cut at `REASON_MAX` bytes if it is longer (it is not today).
            let _ = write!(reason, "{e}");
            return Resp::Error(Error::ImageRejected { reason: reason.as_str() });
        }
    };
    if start && let Err(e) = hv.domain_unpause(domid) {
        if hv.domain_destroy(domid).is_ok()
            && let Some(b) = backend.as_mut()
        {
            b.destroyed(hv, domid);
        }
        return hc(e);
    }
    Resp::Created { domid }
}

/// Gives the new domain `domid` its store and console if it is a PVH domain. A domain without
/// one (a multiboot kernel, no store left, a hypercall that failed) is still created: it just
/// has no PV devices, and dom0's log says why. Either way nothing of an earlier domain with
/// this id (destroyed other than through this server) is left for it.
fn add_store<H: Control + VbdHypercalls>(hv: &H, b: &mut Backend<'_>, domid: u32, format: Format) {
    if format != Format::Pvh {
        b.destroyed(hv, domid);
        return;
    }
    let added = match hv.domain_info(domid) {
        Ok(info) => b.add_store(hv, &info),
        Err(e) => Err(NoStore::Hypercall("domain info", e)),
    };
    if let Err(why) = added {
        b.destroyed(hv, domid);
        let mut line = Line::new();
        let _ = write!(line, "ctl: d{domid} has no store, hence no PV devices: {why}");
        hv.log(&line);
    }
}

#[cfg(test)]
mod tests;
