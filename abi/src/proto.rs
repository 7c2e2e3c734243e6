//! The control protocol between the host tools (`hvctl`) and dom0, over dom0's UART (COM2).
//!
//! # Framing
//!
//! Every message is one frame: the `postcard` encoding of a [`Request`] or [`Response`],
//! followed by the CRC-32 (IEEE) of those bytes, little-endian, the whole COBS-encoded and
//! terminated by one zero byte ([`DELIMITER`]). COBS removes every zero from the frame, so a
//! zero always ends a frame and a reader that lost its place resynchronises at the next one.
//! A frame longer than [`MAX_FRAME`] encoded bytes (delimiter excluded) is oversize. An empty
//! frame (a zero right after another, or at the start) is ignored and answered by nothing: a
//! client sends one before its first request to end whatever a previous client left half-sent.
//!
//! # Exchange
//!
//! One request at a time: the client sends a request and waits for its response before it
//! sends the next. dom0 answers every non-empty frame with exactly one response, in order,
//! and carries the request's `id` into it (id 0 when the frame could not be read far enough to
//! find one: bad COBS, bad checksum, oversize). The first request must be [`Req::Hello`];
//! anything before it gets [`Error::HelloRequired`]. Hello carries the client's
//! [`PROTOCOL_VERSION`]; dom0 refuses a different one with [`Error::VersionMismatch`], and the
//! client checks the version in dom0's answer.
//!
//! `ABI.md` ("Control protocol") documents every message and the changelog.

use crate::hypercall::{Errno, MAX_DOMAINS, ShutdownReason};
use crate::types::{CrashReason, DomainInfo, DomainState, DomainStats, ExitReason, PhysInfo};
use serde::{Deserialize, Serialize};

/// Protocol version: both sides must speak the same one (checked by [`Req::Hello`]).
pub const PROTOCOL_VERSION: u16 = 2;
/// Frame delimiter.
pub const DELIMITER: u8 = 0;
/// Longest frame on the wire, in COBS-encoded bytes, delimiter excluded.
pub const MAX_FRAME: usize = 8192;
/// Bytes of the trailing checksum.
pub const CRC_LEN: usize = 4;
/// Longest `postcard` message that always fits a frame with its checksum.
pub const MAX_MESSAGE: usize = MAX_FRAME - cobs::max_encoding_overhead(MAX_FRAME) - CRC_LEN;
/// Longest [`Req::UploadChunk`] data.
pub const UPLOAD_CHUNK_MAX: usize = 4096;
/// Size of dom0's image buffer: the largest image [`Req::UploadBegin`] accepts.
pub const IMAGE_CAPACITY: usize = 8 << 20;
/// Longest kernel command line in [`DomainConfig`].
pub const CMDLINE_MAX: usize = 1024;
/// Longest boot-module name.
pub const MODULE_NAME_MAX: usize = 64;
/// Boot modules [`Resp::Modules`] lists at most.
pub const MAX_MODULES: usize = 16;
/// Longest text in an error ([`Error::ImageRejected`], [`Error::BadRequest`]).
pub const REASON_MAX: usize = 128;
/// Longest path on dom0's disk in a request ([`Req::CreateFromDisk`], [`Req::DiskList`]).
pub const DISK_PATH_MAX: usize = 255;
/// Entries one [`Resp::DiskList`] carries at most.
pub const DISK_LIST_MAX: usize = 64;
/// Bytes of names one [`Resp::DiskList`] carries at most (dom0 holds them in one buffer).
pub const DISK_LIST_BYTES: usize = 4096;

/// Ids a frame that could not be attributed is answered with.
pub const NO_ID: u32 = 0;

/// A request: an id the response echoes (clients use non-zero ids), and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<'a> {
    /// Echoed by the response.
    pub id: u32,
    /// The operation.
    #[serde(borrow)]
    pub body: Req<'a>,
}

/// Request bodies. New requests are only ever appended (dom0 answers an unknown one with
/// [`Error::UnknownRequest`]); the numbers are postcard's variant indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Req<'a> {
    /// 0: must come first; carries the client's [`PROTOCOL_VERSION`].
    Hello {
        /// The client's protocol version.
        version: u16,
    },
    /// 1: the machine: memory, CPUs, MMU floor ([`Resp::PhysInfo`]).
    PhysInfo,
    /// 2: every domain, dom0 included ([`Resp::List`]).
    List,
    /// 3: one domain ([`Resp::DomainInfo`]).
    DomainInfo {
        /// Domain id.
        domid: u32,
    },
    /// 4: start an image upload of `size` bytes into dom0's image buffer (discarding any
    /// previous one) ([`Resp::UploadProgress`] with 0).
    UploadBegin {
        /// The image's size, at most [`IMAGE_CAPACITY`].
        size: u32,
    },
    /// 5: the next piece of the image, at `offset` = bytes sent so far
    /// ([`Resp::UploadProgress`]).
    UploadChunk {
        /// Where the data goes in the image: exactly the bytes received so far.
        offset: u32,
        /// At most [`UPLOAD_CHUNK_MAX`] bytes.
        data: &'a [u8],
    },
    /// 6: build a domain from the uploaded image or a boot module; unpause it if `start`
    /// ([`Resp::Created`]).
    Create {
        /// Name, memory, vCPUs, MMU pages, flags, command line.
        #[serde(borrow)]
        config: DomainConfig<'a>,
        /// Where the kernel image comes from.
        #[serde(borrow)]
        image: ImageSource<'a>,
        /// Unpause the new domain (otherwise it stays `created`).
        start: bool,
    },
    /// 7: `DomainDestroy` ([`Resp::Done`]).
    Destroy {
        /// Domain id.
        domid: u32,
    },
    /// 8: `DomainPause` ([`Resp::Done`]).
    Pause {
        /// Domain id.
        domid: u32,
    },
    /// 9: `DomainUnpause` ([`Resp::Done`]).
    Unpause {
        /// Domain id.
        domid: u32,
    },
    /// 10: `DomainShutdown` ([`Resp::Done`]).
    Shutdown {
        /// Domain id.
        domid: u32,
        /// Recorded reason.
        reason: ShutdownReason,
        /// Recorded status.
        status: u32,
    },
    /// 11: `MemSet` ([`Resp::Done`]).
    MemSet {
        /// Domain id.
        domid: u32,
        /// New memory size in bytes.
        bytes: u64,
    },
    /// 12: `MmuPagesGet` ([`Resp::MmuPages`]).
    MmuPagesGet {
        /// Domain id.
        domid: u32,
    },
    /// 13: `MmuPagesSet` ([`Resp::Done`]).
    MmuPagesSet {
        /// Domain id.
        domid: u32,
        /// `n_requested_mmu_pages`, 0 for the default.
        pages: u64,
    },
    /// 14: take up to `max` bytes from a domain's console ring ([`Resp::Console`]).
    ConsoleRead {
        /// Domain id.
        domid: u32,
        /// At most `CONSOLE_READ_MAX`.
        max: u32,
    },
    /// 15: `Stats` ([`Resp::Stats`]).
    Stats {
        /// Domain id.
        domid: u32,
    },
    /// 16: the boot modules dom0 can build domains from ([`Resp::Modules`]).
    Modules,
    /// 17: dom0 answers [`Resp::Done`], then powers off (which stops the machine).
    Poweroff,
    /// 18: bytes typed on a domain's console: `ConsoleInput` ([`Resp::Accepted`]).
    ConsoleInput {
        /// Domain id.
        domid: u32,
        /// At most `CONSOLE_INPUT_MAX` bytes.
        data: &'a [u8],
    },
    /// 19: [`Req::Create`] with boot modules for the kernel (an initrd first), named as boot
    /// modules of dom0 ([`Resp::Created`]).
    CreateWithModules {
        /// Name, memory, vCPUs, MMU pages, flags, command line.
        #[serde(borrow)]
        config: DomainConfig<'a>,
        /// Where the kernel image comes from.
        #[serde(borrow)]
        image: ImageSource<'a>,
        /// dom0 boot modules handed to the kernel, in order.
        #[serde(borrow)]
        modules: heapless::Vec<&'a str, KERNEL_MODULES_MAX>,
        /// Unpause the new domain (otherwise it stays `created`).
        start: bool,
    },
    /// 20: build a domain from files on dom0's disk: the kernel and its modules (an initrd
    /// first) are absolute paths on the disk's FAT file system ([`Resp::Created`]).
    CreateFromDisk {
        /// Name, memory, vCPUs, MMU pages, flags, command line.
        #[serde(borrow)]
        config: DomainConfig<'a>,
        /// The kernel's path, at most [`DISK_PATH_MAX`] bytes.
        kernel: &'a str,
        /// The modules' paths, handed to the kernel in order (each module's command line is
        /// its file name).
        #[serde(borrow)]
        modules: heapless::Vec<&'a str, KERNEL_MODULES_MAX>,
        /// Unpause the new domain (otherwise it stays `created`).
        start: bool,
    },
    /// 21: a directory of dom0's disk, from its `skip`th entry on ([`Resp::DiskList`]).
    DiskList {
        /// The directory's absolute path (`/` for the root), at most [`DISK_PATH_MAX`] bytes.
        path: &'a str,
        /// Entries to pass over: what earlier pages returned.
        skip: u32,
    },
    /// 22: dom0's disk: the drive and its file system ([`Resp::DiskInfo`]).
    DiskInfo,
    /// 23: give a domain that has not started yet a virtual disk served by dom0 (PV block,
    /// `ABI.md` "Split drivers"): the region of dom0's disk named after the domain, made
    /// (zeroed) at the first attach and kept across destroys and reboots ([`Resp::Done`]).
    VbdAttach {
        /// The domain, created and not yet unpaused.
        domid: u32,
        /// The disk's size: a multiple of 4096, at least 4096.
        bytes: u64,
    },
}

/// Boot modules [`Req::CreateWithModules`] can hand a kernel.
pub const KERNEL_MODULES_MAX: usize = 4;

/// Number of [`Req`] variants this version knows: tags from here on are unknown.
pub const REQ_VARIANTS: u32 = 24;

/// What to build (`DomainCreate` fields plus the kernel command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainConfig<'a> {
    /// Printable ASCII, 1 to `DOMAIN_NAME_LEN` bytes, unique.
    pub name: &'a str,
    /// Memory in bytes.
    pub mem_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Initial `n_requested_mmu_pages`, 0 for the default.
    pub mmu_pages: u64,
    /// `DOMCREATE_*` flags.
    pub flags: u32,
    /// The kernel's command line, at most [`CMDLINE_MAX`] bytes.
    pub cmdline: &'a str,
}

/// Where a kernel image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageSource<'a> {
    /// The image uploaded with [`Req::UploadBegin`] / [`Req::UploadChunk`] (complete).
    Uploaded,
    /// The boot module with this name (the first word of its command line, without the path).
    Module(&'a str),
}

/// An entry of a directory on dom0's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry<'a> {
    /// Its name: the long name if it has one, else the 8.3 name.
    pub name: &'a str,
    /// Bytes (0 for a directory).
    pub size: u64,
    /// A directory.
    pub dir: bool,
}

/// A boot module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its size in bytes.
    pub size: u64,
}

/// A response: the request's id and the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response<'a> {
    /// The request's id, or [`NO_ID`] if the frame could not be read.
    pub id: u32,
    /// The outcome.
    #[serde(borrow)]
    pub body: Resp<'a>,
}

/// Response bodies.
// `List` is about 2 KiB; dom0 has no allocator to box it, and builds one response at a time.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resp<'a> {
    /// 0: dom0's side of the hello.
    Hello {
        /// dom0's protocol version.
        version: u16,
        /// microhv's ABI version as dom0 saw it.
        abi_major: u16,
        /// Minor part.
        abi_minor: u16,
        /// dom0-agent's version.
        agent: &'a str,
        /// dom0's image buffer ([`IMAGE_CAPACITY`] for this dom0).
        upload_capacity: u32,
    },
    /// 1: `PhysInfo`.
    PhysInfo(PhysInfo),
    /// 2: every domain in domid order.
    List(heapless::Vec<DomainInfo, { MAX_DOMAINS as usize }>),
    /// 3: one domain.
    DomainInfo(DomainInfo),
    /// 4: image bytes received so far.
    UploadProgress {
        /// Bytes received.
        received: u32,
    },
    /// 5: the new domain's id.
    Created {
        /// Domain id.
        domid: u32,
    },
    /// 6: the operation succeeded and has no result.
    Done,
    /// 7: the MMU page cap in force.
    MmuPages {
        /// `n_max_mmu_pages`.
        pages: u64,
    },
    /// 8: console bytes (possibly none).
    Console {
        /// The bytes taken from the ring.
        data: &'a [u8],
    },
    /// 9: counters.
    Stats(DomainStats),
    /// 10: boot modules.
    #[serde(borrow)]
    Modules(heapless::Vec<ModuleInfo<'a>, MAX_MODULES>),
    /// 11: the request failed; nothing changed unless the error says otherwise.
    #[serde(borrow)]
    Error(Error<'a>),
    /// 12: how many of the typed bytes the domain's console took (the rest are for later).
    Accepted {
        /// Bytes taken.
        bytes: u32,
    },
    /// 13: one page of a directory listing, in the directory's order.
    DiskList {
        /// At most [`DISK_LIST_MAX`] entries, their names at most [`DISK_LIST_BYTES`] in all.
        #[serde(borrow)]
        entries: heapless::Vec<DiskEntry<'a>, DISK_LIST_MAX>,
        /// More entries follow: ask again with `skip` advanced by `entries.len()`.
        more: bool,
    },
    /// 14: dom0's disk.
    DiskInfo {
        /// The drive's model (IDENTIFY words 27-46), trimmed.
        model: &'a str,
        /// 512-byte sectors.
        sectors: u64,
        /// The drive takes 48-bit LBA commands (needed above 2^28 sectors).
        lba48: bool,
        /// The file system dom0 found: `FAT16` / `FAT32` and its label, or why there is none.
        filesystem: &'a str,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Error<'a> {
    /// 0: the frame could not be read.
    Malformed(Malformed),
    /// 1: the frame was longer than [`MAX_FRAME`]; it was discarded up to its delimiter.
    Oversize {
        /// [`MAX_FRAME`].
        limit: u32,
    },
    /// 2: a request tag this dom0 does not know.
    UnknownRequest {
        /// The tag.
        tag: u32,
    },
    /// 3: the client's protocol version is not dom0's.
    VersionMismatch {
        /// dom0's version.
        dom0: u16,
        /// The client's.
        client: u16,
    },
    /// 4: a request before a successful hello.
    HelloRequired,
    /// 5: a hypercall failed with this error.
    Hypercall {
        /// The error microhv returned.
        errno: Errno,
    },
    /// 6: no boot module with the requested name.
    NoSuchModule,
    /// 7: the domain builder refused the image.
    ImageRejected {
        /// Why, in words (at most [`REASON_MAX`] bytes).
        reason: &'a str,
    },
    /// 8: an argument dom0 checks itself is out of range (name, command line, length).
    BadRequest {
        /// Which, in words.
        reason: &'a str,
    },
    /// 9: the upload went wrong.
    Upload(UploadError),
    /// 10: dom0's disk could not serve the request.
    Disk {
        /// What went wrong.
        error: DiskError,
        /// The path concerned, if any (cut at [`REASON_MAX`] bytes).
        path: &'a str,
    },
}

/// What went wrong with dom0's disk ([`Error::Disk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskError {
    /// 0: no disk on dom0's ATA channel (nothing attached, not an ATA disk, or the channel is
    /// not passed through to dom0).
    NoDisk,
    /// 1: no FAT file system dom0 can read: no MBR partition of a FAT16 / FAT32 type in the
    /// first slot, or its volume does not parse.
    NoFileSystem,
    /// 2: no file or directory at that path.
    NotFound,
    /// 3: a directory where a file was expected.
    IsADirectory,
    /// 4: a file where a directory was expected.
    NotADirectory,
    /// 5: not an absolute path of names of at most 255 bytes ([`DISK_PATH_MAX`] in all).
    BadPath,
    /// 6: the drive stayed busy, or did not offer data, for longer than dom0 waits.
    Timeout,
    /// 7: the drive reported an error (ERR or DF in its status).
    Device {
        /// The status register.
        status: u8,
        /// The error register.
        error: u8,
    },
    /// 8: a read past the end of the drive or of a file.
    OutOfRange,
    /// 9: the file system's structures are inconsistent (a cluster chain that ends early or
    /// points outside the volume, ...).
    Corrupt,
    /// 10: no region for virtual disks on dom0's disk (no second MBR partition of type
    /// `0xDA`), or its table does not parse.
    NoPool,
    /// 11: the virtual disks' region has no room (space, or entries) for a new disk.
    PoolFull,
    /// 12: the domain's virtual disk exists with another size.
    SizeMismatch {
        /// Its size in 512-byte sectors.
        sectors: u64,
    },
}

/// How a frame was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Malformed {
    /// 0: not valid COBS.
    Cobs,
    /// 1: shorter than a checksum.
    TooShort,
    /// 2: the checksum does not match.
    Checksum,
    /// 3: the checksum matched but the message does not decode.
    Decode,
    /// 4: bytes left over after the message.
    TrailingBytes,
}

/// Upload errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadError {
    /// 0: the image is larger than dom0's buffer.
    TooLarge {
        /// The size asked for.
        size: u32,
        /// [`IMAGE_CAPACITY`].
        capacity: u32,
    },
    /// 1: a chunk without an upload in progress.
    NotStarted,
    /// 2: a chunk not at the next offset.
    OutOfOrder {
        /// The offset expected.
        expected: u32,
    },
    /// 3: a chunk running past the announced size, or over [`UPLOAD_CHUNK_MAX`].
    Overflow,
    /// 4: `Create` from an upload that is not complete.
    Incomplete {
        /// Bytes received.
        received: u32,
        /// Bytes announced.
        size: u32,
    },
}

impl core::fmt::Display for Malformed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Malformed::Cobs => "not valid COBS",
            Malformed::TooShort => "shorter than its checksum",
            Malformed::Checksum => "checksum mismatch",
            Malformed::Decode => "message does not decode",
            Malformed::TrailingBytes => "bytes after the message",
        })
    }
}

impl core::fmt::Display for DiskError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DiskError::NoDisk => f.write_str("dom0 has no disk"),
            DiskError::NoFileSystem => f.write_str("no FAT file system on dom0's disk"),
            DiskError::NotFound => f.write_str("no such file or directory"),
            DiskError::IsADirectory => f.write_str("is a directory"),
            DiskError::NotADirectory => f.write_str("not a directory"),
            DiskError::BadPath => f.write_str("not an absolute path"),
            DiskError::Timeout => f.write_str("the disk did not answer in time"),
            DiskError::Device { status, error } => {
                write!(f, "the disk reported an error (status {status:#04x}, error {error:#04x})")
            }
            DiskError::OutOfRange => f.write_str("read past the end of the disk or file"),
            DiskError::Corrupt => f.write_str("the file system is inconsistent"),
            DiskError::NoPool => f.write_str("no region for virtual disks on dom0's disk"),
            DiskError::PoolFull => f.write_str("no room for another virtual disk"),
            DiskError::SizeMismatch { sectors } => {
                write!(f, "the virtual disk exists with another size ({} KiB)", sectors / 2)
            }
        }
    }
}

impl core::error::Error for DiskError {}

impl core::fmt::Display for UploadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UploadError::TooLarge { size, capacity } => {
                write!(f, "image of {size} bytes exceeds dom0's {capacity}-byte buffer")
            }
            UploadError::NotStarted => f.write_str("no upload in progress"),
            UploadError::OutOfOrder { expected } => {
                write!(f, "chunk out of order (expected offset {expected})")
            }
            UploadError::Overflow => f.write_str("chunk beyond the announced size"),
            UploadError::Incomplete { received, size } => {
                write!(f, "upload incomplete ({received} of {size} bytes)")
            }
        }
    }
}

impl core::fmt::Display for Error<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Malformed(m) => write!(f, "malformed frame: {m}"),
            Error::Oversize { limit } => write!(f, "frame longer than {limit} bytes"),
            Error::UnknownRequest { tag } => write!(f, "unknown request (tag {tag})"),
            Error::VersionMismatch { dom0, client } => {
                write!(f, "protocol version mismatch: dom0 speaks {dom0}, client {client}")
            }
            Error::HelloRequired => f.write_str("hello required before any other request"),
            Error::Hypercall { errno } => write!(f, "{errno}"),
            Error::NoSuchModule => f.write_str("no such boot module"),
            Error::ImageRejected { reason } => write!(f, "image rejected: {reason}"),
            Error::BadRequest { reason } => write!(f, "bad request: {reason}"),
            Error::Upload(u) => write!(f, "upload: {u}"),
            Error::Disk { error: DiskError::NoDisk, .. } => f.write_str("dom0 has no disk"),
            Error::Disk { error, path: "" } => write!(f, "dom0's disk: {error}"),
            Error::Disk { error, path } => write!(f, "dom0's disk: {path}: {error}"),
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in bytes {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The message is longer than [`MAX_MESSAGE`].
    TooLong,
}

/// Turns messages into frames; holds the two buffers that needs (about 16 KiB), so it lives
/// in a static or on the heap rather than on a small stack.
pub struct FrameEncoder {
    message: [u8; MAX_MESSAGE + CRC_LEN],
    frame: [u8; MAX_FRAME + 1],
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameEncoder {
    /// Empty buffers.
    pub const fn new() -> Self {
        Self { message: [0; MAX_MESSAGE + CRC_LEN], frame: [0; MAX_FRAME + 1] }
    }

    /// The frame for `msg`, delimiter included.
    pub fn encode<T: Serialize>(&mut self, msg: &T) -> Result<&[u8], EncodeError> {
        let len = postcard::to_slice(msg, &mut self.message[..MAX_MESSAGE])
            .map_err(|_| EncodeError::TooLong)?
            .len();
        let crc = crc32(&self.message[..len]);
        self.message[len..len + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
        // `MAX_MESSAGE` leaves room for COBS's worst case, so this cannot fail; keep the check
        // rather than trust the arithmetic.
        let n = cobs::try_encode(&self.message[..len + CRC_LEN], &mut self.frame[..MAX_FRAME])
            .map_err(|_| EncodeError::TooLong)?;
        self.frame[n] = DELIMITER;
        Ok(&self.frame[..=n])
    }
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Longer than [`MAX_FRAME`]; discarded up to its delimiter.
    Oversize,
    /// Corrupt.
    Malformed(Malformed),
}

impl FrameError {
    /// The error response for it.
    pub fn to_error(self) -> Error<'static> {
        match self {
            FrameError::Oversize => Error::Oversize { limit: MAX_FRAME as u32 },
            FrameError::Malformed(m) => Error::Malformed(m),
        }
    }
}

/// Reassembles frames from a byte stream, one byte at a time (no allocation).
pub struct FrameReader {
    buf: [u8; MAX_FRAME],
    len: usize,
    /// The current frame outgrew the buffer: discard up to the delimiter.
    overflow: bool,
    /// The last call returned a frame: start a new one on the next byte.
    done: bool,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// An empty reader.
    pub const fn new() -> Self {
        Self { buf: [0; MAX_FRAME], len: 0, overflow: false, done: false }
    }

    /// True while part of a frame has arrived.
    pub fn in_frame(&self) -> bool {
        !self.done && (self.len > 0 || self.overflow)
    }

    /// Takes one byte. At a delimiter that ends a non-empty frame, returns the checked
    /// message bytes (COBS decoded, checksum verified and removed) or the frame's error;
    /// otherwise `None` (empty frames included).
    pub fn push(&mut self, byte: u8) -> Option<Result<&[u8], FrameError>> {
        if self.done {
            self.done = false;
            self.len = 0;
            self.overflow = false;
        }
        if byte != DELIMITER {
            if self.len < MAX_FRAME {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflow = true;
            }
            return None;
        }
        if self.len == 0 && !self.overflow {
            return None;
        }
        self.done = true;
        if self.overflow {
            return Some(Err(FrameError::Oversize));
        }
        Some(check(&mut self.buf[..self.len]))
    }
}

/// COBS-decodes `frame` in place and verifies and strips its checksum.
fn check(frame: &mut [u8]) -> Result<&[u8], FrameError> {
    let n = cobs::decode_in_place(frame).map_err(|_| FrameError::Malformed(Malformed::Cobs))?;
    let frame = frame.get(..n).ok_or(FrameError::Malformed(Malformed::Cobs))?;
    let Some(body_len) = n.checked_sub(CRC_LEN) else {
        return Err(FrameError::Malformed(Malformed::TooShort));
    };
    let (body, crc) = frame.split_at(body_len);
    let mut want = [0u8; CRC_LEN];
    want.copy_from_slice(crc);
    if crc32(body) != u32::from_le_bytes(want) {
        return Err(FrameError::Malformed(Malformed::Checksum));
    }
    Ok(body)
}

/// Decodes a request's message bytes. On failure, the id to answer with (the request's if it
/// could be read, else [`NO_ID`]) and the error.
pub fn decode_request(msg: &[u8]) -> Result<Request<'_>, (u32, Error<'static>)> {
    // Read the id and tag on their own first, so that a request this version does not know
    // is answered as such, with its id, rather than as an undecodable frame.
    let Ok((id, rest)) = postcard::take_from_bytes::<u32>(msg) else {
        return Err((NO_ID, Error::Malformed(Malformed::Decode)));
    };
    let Ok((tag, _)) = postcard::take_from_bytes::<u32>(rest) else {
        return Err((id, Error::Malformed(Malformed::Decode)));
    };
    if tag >= REQ_VARIANTS {
        return Err((id, Error::UnknownRequest { tag }));
    }
    match postcard::take_from_bytes::<Request<'_>>(msg) {
        Ok((req, [])) => Ok(req),
        Ok((_, _)) => Err((id, Error::Malformed(Malformed::TrailingBytes))),
        Err(_) => Err((id, Error::Malformed(Malformed::Decode))),
    }
}

/// Decodes a response's message bytes.
pub fn decode_response(msg: &[u8]) -> Result<Response<'_>, Malformed> {
    match postcard::take_from_bytes::<Response<'_>>(msg) {
        Ok((resp, [])) => Ok(resp),
        Ok(_) => Err(Malformed::TrailingBytes),
        Err(_) => Err(Malformed::Decode),
    }
}

// ---- the ABI's numbers decoded for the tools -------------------------------------------------
//
// Only the tools and dom0 turn the numbers of `DomainInfo` and `DomainStats`, and error codes,
// back into names; microhv itself never does, so these live behind the `proto` feature, out of
// its image.

impl Errno {
    /// The symbolic name, as the tools print it.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ESRCH => "ESRCH",
            Errno::E2BIG => "E2BIG",
            Errno::ENOMEM => "ENOMEM",
            Errno::EFAULT => "EFAULT",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::EINVAL => "EINVAL",
            Errno::ENOSPC => "ENOSPC",
            Errno::ENOSYS => "ENOSYS",
        }
    }

    /// A one-line description for people.
    pub const fn describe(self) -> &'static str {
        match self {
            Errno::EPERM => "operation not permitted",
            Errno::ESRCH => "no such domain",
            Errno::E2BIG => "length or count too large",
            Errno::ENOMEM => "out of host memory",
            Errno::EFAULT => "bad guest address",
            Errno::EBUSY => "domain state does not allow this",
            Errno::EEXIST => "already exists",
            Errno::EINVAL => "invalid argument",
            Errno::ENOSPC => "no space left (table or limit full)",
            Errno::ENOSYS => "no such operation",
        }
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.name(), self.describe())
    }
}

impl DomainState {
    /// The state with this number.
    pub fn from_u32(v: u32) -> Option<Self> {
        [Self::Created, Self::Running, Self::Paused, Self::Shutdown, Self::Crashed]
            .into_iter()
            .find(|s| *s as u32 == v)
    }

    /// Lower-case name, as the tools print it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Shutdown => "shutdown",
            Self::Crashed => "crashed",
        }
    }
}

impl CrashReason {
    /// The reason with this number.
    pub fn from_u32(v: u32) -> Option<Self> {
        [
            Self::None,
            Self::TripleFault,
            Self::OutsideMemory,
            Self::UnhandledExit,
            Self::EntryFailure,
            Self::MmuFailure,
            Self::UnsupportedIo,
            Self::GuestRequested,
            Self::UnsupportedMmio,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

impl ExitReason {
    /// Every reason, in index order.
    pub const ALL: [ExitReason; 12] = [
        Self::Hypercall,
        Self::NestedPageFault,
        Self::Io,
        Self::Cpuid,
        Self::Msr,
        Self::Hlt,
        Self::Timer,
        Self::CrAccess,
        Self::Interrupt,
        Self::TripleFault,
        Self::Other,
        Self::Pause,
    ];

    /// Lower-case name, as the tools print it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hypercall => "hypercall",
            Self::NestedPageFault => "ept-violation",
            Self::Io => "io",
            Self::Cpuid => "cpuid",
            Self::Msr => "msr",
            Self::Hlt => "hlt",
            Self::Timer => "timer",
            Self::CrAccess => "cr-access",
            Self::Interrupt => "interrupt",
            Self::TripleFault => "triple-fault",
            Self::Other => "other",
            Self::Pause => "pause",
        }
    }
}

#[cfg(test)]
mod tests;
