//! The server against a fake hypervisor: a scripted session, then random input.

use super::*;
use abi::proto::{FrameReader, IMAGE_CAPACITY, MAX_FRAME, REQ_VARIANTS, decode_response};
use abi::types::DomainState;
use core::cell::RefCell;
use proptest::prelude::*;
use std::boxed::Box;
use std::collections::VecDeque;
use std::string::String;
use std::vec;
use std::vec::Vec;

/// A hypervisor with a domain table and nothing else.
#[derive(Default)]
struct Fake {
    domains: RefCell<Vec<DomainInfo>>,
    console: RefCell<Vec<u8>>,
    log: RefCell<Vec<String>>,
    /// The backend's teardown calls.
    vbd_calls: RefCell<Vec<&'static str>>,
    /// dom0's grants and ports held: (grants, ports).
    held: RefCell<(i64, i64)>,
    /// Ports dom0 allocated so far (each allocation a new number).
    next_port: RefCell<u32>,
    /// Operations that fail (`ENOSPC`).
    fail: RefCell<Vec<&'static str>>,
}

impl Fake {
    fn new() -> Self {
        let f = Fake::default();
        let mut d0 = DomainInfo::new_zeroed();
        d0.state = DomainState::Running as u32;
        d0.name[..4].copy_from_slice(b"dom0");
        f.domains.borrow_mut().push(d0);
        f.console.borrow_mut().extend_from_slice(b"hello from domU 1\n");
        f
    }

    fn with<T>(&self, domid: u32, f: impl FnOnce(&mut DomainInfo) -> T) -> Result<T, Errno> {
        let mut ds = self.domains.borrow_mut();
        ds.iter_mut().find(|d| d.domid == domid).map(f).ok_or(Errno::ESRCH)
    }

    fn domu<T>(&self, domid: u32, f: impl FnOnce(&mut DomainInfo) -> T) -> Result<T, Errno> {
        if domid == 0 {
            return Err(Errno::EPERM);
        }
        self.with(domid, f)
    }
}

impl Hypercalls for Fake {
    fn domain_create(&self, c: &abi::types::DomainCreate) -> Result<u32, Errno> {
        let mut ds = self.domains.borrow_mut();
        if ds.iter().any(|d| d.name == c.name) {
            return Err(Errno::EEXIST);
        }
        let domid = (1..16).find(|i| ds.iter().all(|d| d.domid != *i)).ok_or(Errno::ENOSPC)?;
        let mut d = DomainInfo::new_zeroed();
        d.domid = domid;
        d.name = c.name;
        d.mem_bytes = c.mem_bytes;
        d.vcpus = c.vcpus;
        ds.push(d);
        Ok(domid)
    }
    fn mem_write(&self, domid: u32, _: u64, src: &[u8]) -> Result<u64, Errno> {
        self.domu(domid, |_| src.len() as u64)
    }
    fn vcpu_set_state(&self, domid: u32, _: u32, _: &abi::types::VcpuState) -> Result<(), Errno> {
        self.domu(domid, |_| ())
    }
    fn domain_destroy(&self, domid: u32) -> Result<(), Errno> {
        self.domu(domid, |_| ())?;
        self.domains.borrow_mut().retain(|d| d.domid != domid);
        Ok(())
    }
}

/// Event channels and grants that always work: the server tests see only what `VbdAttach`
/// answers (the backend has its own tests against a stricter fake).
impl crate::vbd::VbdHypercalls for Fake {
    fn evtchn_alloc_unbound(&self, remote: u32) -> Result<u32, Errno> {
        self.with(remote, |_| ())?;
        if self.fail.borrow().contains(&"alloc") {
            return Err(Errno::ENOSPC);
        }
        self.held.borrow_mut().1 += 1;
        let mut p = self.next_port.borrow_mut();
        *p = *p % 63 + 1;
        Ok(*p)
    }
    fn evtchn_bind_interdomain(&self, _: u32, _: u32) -> Result<u32, Errno> {
        Err(Errno::EINVAL)
    }
    fn evtchn_send(&self, _: u32) -> Result<(), Errno> {
        Ok(())
    }
    fn evtchn_close(&self, _: u32) -> Result<(), Errno> {
        self.vbd_calls.borrow_mut().push("close");
        self.held.borrow_mut().1 -= 1;
        Ok(())
    }
    unsafe fn grant_set(&self, _: u32, peer: u32, _: u64, _: u64) -> Result<(), Errno> {
        self.with(peer, |_| ())?;
        self.held.borrow_mut().0 += 1;
        Ok(())
    }
    fn grant_revoke(&self, _: u32) -> Result<(), Errno> {
        self.vbd_calls.borrow_mut().push("revoke");
        self.held.borrow_mut().0 -= 1;
        Ok(())
    }
    fn grant_map(&self, _: u32, _: u32, _: u64, _: u64) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    fn grant_unmap(&self, _: u64) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    fn grant_copy_from(&self, _: u32, _: u32, _: u64, _: &mut [u8]) -> Result<u64, Errno> {
        Err(Errno::EINVAL)
    }
    fn grant_copy_to(&self, _: u32, _: u32, _: u64, _: &[u8]) -> Result<u64, Errno> {
        Err(Errno::EINVAL)
    }
}

impl Control for Fake {
    fn abi_version(&self) -> Result<(u16, u16), Errno> {
        Ok((1, 0))
    }
    fn phys_info(&self) -> Result<PhysInfo, Errno> {
        Ok(PhysInfo::new_zeroed())
    }
    fn domain_list(&self, out: &mut [DomainInfo]) -> Result<u64, Errno> {
        let ds = self.domains.borrow();
        for (o, d) in out.iter_mut().zip(ds.iter()) {
            *o = *d;
        }
        Ok(ds.len() as u64)
    }
    fn domain_info(&self, domid: u32) -> Result<DomainInfo, Errno> {
        self.with(domid, |d| *d)
    }
    fn domain_pause(&self, domid: u32) -> Result<(), Errno> {
        self.domu(domid, |d| d.state = DomainState::Paused as u32)
    }
    fn domain_unpause(&self, domid: u32) -> Result<(), Errno> {
        self.domu(domid, |d| d.state = DomainState::Running as u32)
    }
    fn domain_shutdown(&self, domid: u32, _: ShutdownReason, s: u32) -> Result<(), Errno> {
        self.domu(domid, |d| {
            d.state = DomainState::Shutdown as u32;
            d.shutdown_status = s;
        })
    }
    fn mem_set(&self, domid: u32, bytes: u64) -> Result<(), Errno> {
        self.domu(domid, |d| d.mem_bytes = bytes)
    }
    fn mmu_pages_get(&self, domid: u32) -> Result<u64, Errno> {
        self.with(domid, |d| d.mmu_max)
    }
    fn mmu_pages_set(&self, domid: u32, pages: u64) -> Result<(), Errno> {
        if pages != 0 && pages < 4 {
            return Err(Errno::EINVAL);
        }
        self.with(domid, |d| d.mmu_max = pages)
    }
    fn console_read(&self, domid: u32, buf: &mut [u8]) -> Result<u64, Errno> {
        self.with(domid, |_| ())?;
        let mut c = self.console.borrow_mut();
        let n = buf.len().min(c.len());
        buf[..n].copy_from_slice(&c[..n]);
        c.drain(..n);
        Ok(n as u64)
    }
    fn console_input(&self, domid: u32, bytes: &[u8]) -> Result<u64, Errno> {
        self.with(domid, |_| ())?;
        // A receiver that takes at most 16 bytes at a time, like a 16550A's FIFO.
        Ok(bytes.len().min(16) as u64)
    }
    fn stats(&self, domid: u32) -> Result<DomainStats, Errno> {
        self.with(domid, |d| {
            let mut s = DomainStats::new_zeroed();
            s.domid = d.domid;
            s
        })
    }
    fn log(&self, line: &str) {
        self.log.borrow_mut().push(line.into());
    }
}

/// Bytes in, bytes out.
#[derive(Default)]
struct Pipe {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl Channel for Pipe {
    fn read_byte(&mut self) -> Option<u8> {
        self.input.pop_front()
    }
    fn write(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }
}

/// A PVH image the builder accepts.
fn image() -> Vec<u8> {
    abi::testutil::pvh_image(0x10_0000, &[0x90; 10_000], 0x100, 0x10_0000)
}

struct Rig {
    fake: Fake,
    bufs: Box<Buffers>,
    image: Vec<u8>,
    module: Vec<u8>,
}

impl Rig {
    fn new(capacity: usize) -> Self {
        Rig {
            fake: Fake::new(),
            bufs: Box::new(Buffers::new()),
            image: vec![0; capacity],
            module: image(),
        }
    }
}

fn frame(id: u32, body: Req<'_>) -> Vec<u8> {
    let mut enc = Box::new(FrameEncoder::new());
    enc.encode(&Request { id, body }).unwrap().to_vec()
}

/// Polls until the input is consumed; fails the test rather than loop for ever.
fn drain(server: &mut Server<'_>, hv: &Fake, pipe: &mut Pipe) -> bool {
    let mut poweroff = false;
    for _ in 0..pipe.input.len() + 2 {
        match server.poll(hv, pipe) {
            Poll::Idle => return poweroff,
            Poll::Poweroff => poweroff = true,
            Poll::Busy => {}
        }
    }
    panic!("poll did not consume its input");
}

/// Every response frame in `bytes`, decoded into (id, body rendered with Debug).
fn responses(bytes: &[u8]) -> Vec<(u32, String)> {
    let mut r = Box::new(FrameReader::new());
    let mut out = Vec::new();
    for &b in bytes {
        if let Some(f) = r.push(b) {
            let msg = f.expect("dom0 sends valid frames");
            let resp = decode_response(msg).expect("dom0 sends valid responses");
            out.push((resp.id, std::format!("{:?}", resp.body)));
        }
    }
    out
}

fn exchange(rig: &mut Rig, input: &[Vec<u8>]) -> Vec<(u32, String)> {
    let modules = [BootModule { name: "hello", bytes: &rig.module }];
    let mut server = Server::new(&modules, &mut rig.bufs, &mut rig.image, "test");
    let mut pipe = Pipe::default();
    for f in input {
        pipe.input.extend(f);
    }
    drain(&mut server, &rig.fake, &mut pipe);
    responses(&pipe.output)
}

fn config(name: &str) -> DomainConfig<'_> {
    DomainConfig { name, mem_bytes: 4 << 20, vcpus: 1, mmu_pages: 0, flags: 0, cmdline: "x=1" }
}

#[test]
fn a_session() {
    let mut rig = Rig::new(64 * 1024);
    let img = image();
    let mut input = vec![
        frame(1, Req::List),
        frame(2, Req::Hello { version: PROTOCOL_VERSION + 1 }),
        frame(3, Req::Hello { version: PROTOCOL_VERSION }),
        frame(4, Req::UploadBegin { size: img.len() as u32 }),
    ];
    for (i, c) in img.chunks(UPLOAD_CHUNK_MAX).enumerate() {
        input.push(frame(5, Req::UploadChunk { offset: (i * UPLOAD_CHUNK_MAX) as u32, data: c }));
    }
    input.extend([
        frame(6, Req::Create { config: config("up"), image: ImageSource::Uploaded, start: true }),
        frame(
            7,
            Req::Create { config: config("m"), image: ImageSource::Module("hello"), start: false },
        ),
        frame(
            8,
            Req::Create { config: config("x"), image: ImageSource::Module("nope"), start: true },
        ),
        frame(9, Req::Create { config: config("up"), image: ImageSource::Uploaded, start: true }),
        frame(10, Req::Pause { domid: 1 }),
        frame(11, Req::ConsoleRead { domid: 1, max: 100_000 }),
        frame(12, Req::Destroy { domid: 9 }),
        frame(13, Req::Destroy { domid: 0 }),
        frame(14, Req::UploadBegin { size: 64 * 1024 + 1 }),
        frame(15, Req::UploadChunk { offset: 0, data: b"x" }),
        frame(
            16,
            Req::Create {
                config: config("bad\n"),
                image: ImageSource::Module("hello"),
                start: true,
            },
        ),
        frame(17, Req::List),
        frame(
            19,
            Req::CreateWithModules {
                config: config("with-initrd"),
                image: ImageSource::Module("hello"),
                modules: heapless::Vec::from_slice(&["hello"]).unwrap(),
                start: false,
            },
        ),
        frame(
            20,
            Req::CreateWithModules {
                config: config("missing-initrd"),
                image: ImageSource::Module("hello"),
                modules: heapless::Vec::from_slice(&["nope"]).unwrap(),
                start: false,
            },
        ),
        frame(21, Req::ConsoleInput { domid: 2, data: b"ls\n" }),
        frame(18, Req::Poweroff),
    ]);
    let got = responses(&{
        let modules = [BootModule { name: "hello", bytes: &rig.module }];
        let mut server = Server::new(&modules, &mut rig.bufs, &mut rig.image, "test");
        let mut pipe = Pipe::default();
        for f in &input {
            pipe.input.extend(f);
        }
        assert!(drain(&mut server, &rig.fake, &mut pipe), "poweroff reported");
        pipe.output
    });
    let find = |id: u32| got.iter().find(|(i, _)| *i == id).map(|(_, s)| s.as_str()).unwrap();
    assert_eq!(got.len(), input.len(), "one response per frame");
    assert_eq!(find(1), "Error(HelloRequired)");
    assert!(find(2).starts_with("Error(VersionMismatch"));
    assert!(find(3).starts_with(&std::format!("Hello {{ version: {PROTOCOL_VERSION},")));
    assert_eq!(find(6), "Created { domid: 1 }");
    assert_eq!(find(7), "Created { domid: 2 }");
    assert_eq!(find(8), "Error(NoSuchModule)");
    assert_eq!(find(9), "Error(Hypercall { errno: EEXIST })");
    assert_eq!(find(10), "Done");
    assert!(find(11).starts_with("Console { data: [104, 101, 108, 108, 111"), "hello…");
    assert_eq!(find(12), "Error(Hypercall { errno: ESRCH })");
    assert_eq!(find(13), "Error(Hypercall { errno: EPERM })");
    assert!(find(14).starts_with("Error(Upload(TooLarge"));
    assert_eq!(find(15), "Error(Upload(NotStarted))");
    assert!(find(16).starts_with("Error(BadRequest"));
    assert!(find(17).contains("domid: 2"));
    assert_eq!(find(18), "Done");
    assert_eq!(find(19), "Created { domid: 3 }");
    assert_eq!(find(20), "Error(NoSuchModule)");
    assert_eq!(find(21), "Accepted { bytes: 3 }");
    let log = rig.fake.log.borrow();
    assert_eq!(log.len(), input.len(), "one log line per request");
    assert!(log.iter().any(|l| l.contains("create \"up\" from upload -> d1")), "{log:?}");
}

#[test]
fn bad_frames_get_errors_and_the_server_goes_on() {
    let mut rig = Rig::new(1024);
    let mut oversize = vec![1u8; MAX_FRAME + 100];
    oversize.push(0);
    let mut unknown = postcard::to_allocvec(&77u32).unwrap();
    unknown.push(REQ_VARIANTS as u8 + 3);
    let crc = abi::proto::crc32(&unknown);
    unknown.extend(crc.to_le_bytes());
    let mut unknown_frame = vec![0u8; unknown.len() + 2];
    let n = cobs::encode(&unknown, &mut unknown_frame);
    unknown_frame.truncate(n);
    unknown_frame.push(0);
    let got = exchange(
        &mut rig,
        &[
            frame(1, Req::Hello { version: PROTOCOL_VERSION }),
            vec![0x17, 0x42, 0x99, 0x00],
            oversize,
            unknown_frame,
            vec![0, 0, 0],
            frame(5, Req::DomainInfo { domid: 12 }),
            frame(6, Req::List),
        ],
    );
    let bodies: Vec<&str> = got.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(got.len(), 6, "{bodies:?}");
    assert!(bodies[1].starts_with("Error(Malformed"));
    assert_eq!(got[1].0, NO_ID);
    assert_eq!(bodies[2], std::format!("Error(Oversize {{ limit: {MAX_FRAME} }})"));
    assert_eq!(got[3], (77, std::format!("Error(UnknownRequest {{ tag: {} }})", REQ_VARIANTS + 3)));
    assert_eq!(bodies[4], "Error(Hypercall { errno: ESRCH })");
    assert!(bodies[5].starts_with("List"));
}

#[test]
fn the_image_capacity_is_the_buffer() {
    let mut rig = Rig::new(IMAGE_CAPACITY.min(4096));
    let got = exchange(
        &mut rig,
        &[
            frame(1, Req::Hello { version: PROTOCOL_VERSION }),
            frame(2, Req::UploadBegin { size: 4096 }),
            frame(3, Req::UploadChunk { offset: 0, data: &[1; 4000] }),
            frame(4, Req::UploadChunk { offset: 10, data: &[1; 10] }),
            frame(5, Req::UploadChunk { offset: 4000, data: &[1; 97] }),
            frame(
                6,
                Req::Create { config: config("a"), image: ImageSource::Uploaded, start: false },
            ),
            frame(7, Req::UploadChunk { offset: 4000, data: &[1; 96] }),
            frame(
                8,
                Req::Create { config: config("a"), image: ImageSource::Uploaded, start: false },
            ),
        ],
    );
    let b: Vec<&str> = got.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(b[1], "UploadProgress { received: 0 }");
    assert_eq!(b[2], "UploadProgress { received: 4000 }");
    assert_eq!(b[3], "Error(Upload(OutOfOrder { expected: 4000 }))");
    assert_eq!(b[4], "Error(Upload(Overflow))");
    assert_eq!(b[5], "Error(Upload(Incomplete { received: 4000, size: 4096 }))");
    assert_eq!(b[6], "UploadProgress { received: 4096 }");
    // Complete, but not a kernel: the builder's reason comes back.
    assert_eq!(b[7], "Error(ImageRejected { reason: \"not a PVH ELF or multiboot kernel\" })");
}

/// A disk with a FAT32 volume holding a kernel, an initrd, a text file and a directory of
/// 100 files with 60-byte names.
fn disk_image() -> Vec<u8> {
    let (kernel, initrd) = (image(), vec![0x5a; 9000]);
    let names: Vec<String> =
        (0..100).map(|i| std::format!("many/{i:03}-{}", "n".repeat(56))).collect();
    let mut files: Vec<(&str, &[u8])> = vec![
        ("boot/hello.elf", &kernel),
        ("boot/initrd.img", &initrd),
        ("README.TXT", b"not a kernel"),
    ];
    files.extend(names.iter().map(|n| (n.as_str(), &b"x"[..])));
    crate::disk::fake::fat_image(fatfs::FatType::Fat32, 0x0c, 70_000, &["boot", "many"], &files)
}

/// Runs `input` against a server with `disk` (or none) and returns the responses.
fn exchange_disk(
    rig: &mut Rig,
    disk: Option<&crate::disk::MemDisk>,
    input: &[Vec<u8>],
) -> Vec<(u32, String)> {
    let modules = [BootModule { name: "hello", bytes: &rig.module }];
    let identity = crate::disk::ata::Identity {
        model: "TEST DISK".try_into().unwrap(),
        sectors: disk.map_or(0, crate::disk::Sectors::sectors),
        lba48: true,
        multiple: 16,
    };
    let mut scratch = vec![0u8; 65536];
    let mut server = Server::new(&modules, &mut rig.bufs, &mut rig.image, "test");
    if let Some(d) = disk {
        server = server.with_disk(DiskAccess { sectors: d, identity: &identity }, &mut scratch);
    }
    let mut pipe = Pipe::default();
    for f in input {
        pipe.input.extend(f);
    }
    drain(&mut server, &rig.fake, &mut pipe);
    responses(&pipe.output)
}

fn from_disk<'a>(id: u32, name: &'a str, kernel: &'a str, modules: &[&'a str]) -> Vec<u8> {
    let body = Req::CreateFromDisk {
        config: config(name),
        kernel,
        modules: modules.iter().copied().collect(),
        start: true,
    };
    frame(id, body)
}

#[test]
fn domains_are_built_from_files_on_the_disk() {
    let mut rig = Rig::new(1024);
    let disk = crate::disk::MemDisk(RefCell::new(disk_image()));
    let got = exchange_disk(
        &mut rig,
        Some(&disk),
        &[
            frame(1, Req::Hello { version: PROTOCOL_VERSION }),
            from_disk(2, "a", "/boot/hello.elf", &["/boot/initrd.img"]),
            from_disk(3, "b", "/BOOT/HELLO.ELF", &[]),
            // The kernel named again as a module, in another spelling: one open file serves.
            from_disk(4, "c", "/boot/hello.elf", &["/boot/initrd.img", "/Boot/Hello.elf"]),
            from_disk(5, "d", "/boot/nothing", &[]),
            from_disk(6, "d", "/boot/hello.elf", &["/boot/none.img"]),
            from_disk(7, "d", "/boot", &[]),
            from_disk(8, "d", "/README.TXT", &[]),
            from_disk(9, "d", "boot/hello.elf", &[]),
            from_disk(10, "a", "/boot/hello.elf", &[]),
            from_disk(11, "", "/boot/hello.elf", &[]),
        ],
    );
    let b: Vec<&str> = got.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(b[1], "Created { domid: 1 }");
    assert_eq!(b[2], "Created { domid: 2 }");
    assert_eq!(b[3], "Created { domid: 3 }");
    assert_eq!(b[4], "Error(Disk { error: NotFound, path: \"/boot/nothing\" })");
    assert_eq!(b[5], "Error(Disk { error: NotFound, path: \"/boot/none.img\" })");
    assert_eq!(b[6], "Error(Disk { error: IsADirectory, path: \"/boot\" })");
    assert_eq!(b[7], "Error(ImageRejected { reason: \"not a PVH ELF or multiboot kernel\" })");
    assert_eq!(b[8], "Error(Disk { error: BadPath, path: \"boot/hello.elf\" })");
    assert_eq!(b[9], "Error(Hypercall { errno: EEXIST })");
    assert!(b[10].starts_with("Error(BadRequest"));
    let log = rig.fake.log.borrow();
    assert!(
        log.iter().any(|l| l.contains("create \"a\" from disk \"/boot/hello.elf\" (+1) -> d1"))
    );
    // Each build says how much it read: the kernel's 10,196 bytes plus the initrd's 9,000.
    assert!(log.iter().any(|l| l.contains("built from dom0's disk: 19196 bytes")), "{log:?}");
    assert_eq!(rig.fake.domains.borrow().len(), 4, "no half-built domain is left");
    assert_eq!(disk.0.borrow()[..], disk_image()[..], "the disk is only read");
}

#[test]
fn directories_list_in_pages_and_the_disk_describes_itself() {
    let mut rig = Rig::new(1024);
    let disk = crate::disk::MemDisk(RefCell::new(disk_image()));
    let got = exchange_disk(
        &mut rig,
        Some(&disk),
        &[
            frame(1, Req::Hello { version: PROTOCOL_VERSION }),
            frame(2, Req::DiskList { path: "/", skip: 0 }),
            frame(3, Req::DiskList { path: "/many", skip: 0 }),
            frame(4, Req::DiskList { path: "/many", skip: 64 }),
            frame(5, Req::DiskList { path: "/README.TXT", skip: 0 }),
            frame(6, Req::DiskList { path: "/many", skip: 1000 }),
            frame(7, Req::DiskInfo),
        ],
    );
    let b: Vec<&str> = got.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        b[1],
        "DiskList { entries: [DiskEntry { name: \"boot\", size: 0, dir: true }, \
         DiskEntry { name: \"many\", size: 0, dir: true }, \
         DiskEntry { name: \"README.TXT\", size: 12, dir: false }], more: false }"
    );
    // 64 entries of 60-byte names fit a page (3,840 of 4,096 bytes); the rest follow.
    assert_eq!(b[2].matches("DiskEntry").count(), DISK_LIST_MAX, "{}", b[2]);
    assert!(b[2].ends_with("more: true }") && b[2].contains("063-nnn"));
    assert_eq!(b[3].matches("DiskEntry").count(), 36);
    assert!(b[3].ends_with("more: false }") && b[3].contains("\"064-nnn"));
    assert_eq!(b[4], "Error(Disk { error: NotADirectory, path: \"/README.TXT\" })");
    assert_eq!(b[5], "DiskList { entries: [], more: false }");
    assert_eq!(
        b[6],
        "DiskInfo { model: \"TEST DISK\", sectors: 72048, lba48: true, \
         filesystem: \"FAT32 (partition type 0x0c), label MICROHVTEST\" }"
    );
    // Pages are also cut by the names' bytes: 40 names of 200 bytes are 8,000.
    let names: Vec<String> = (0..40).map(|i| std::format!("d/{i:02}{}", "x".repeat(198))).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let img = crate::disk::fake::fat_image(fatfs::FatType::Fat32, 0x0c, 70_000, &["d"], &files);
    let disk = crate::disk::MemDisk(RefCell::new(img));
    let got = exchange_disk(
        &mut rig,
        Some(&disk),
        &[
            frame(1, Req::Hello { version: PROTOCOL_VERSION }),
            frame(2, Req::DiskList { path: "/d", skip: 0 }),
        ],
    );
    assert_eq!(got[1].1.matches("DiskEntry").count(), DISK_LIST_BYTES / 200);
    assert!(got[1].1.ends_with("more: true }"));
}

#[test]
fn without_a_disk_every_disk_request_says_so() {
    let mut rig = Rig::new(1024);
    let no_disk = "Error(Disk { error: NoDisk, path: \"\" })";
    let got = exchange_disk(
        &mut rig,
        None,
        &[
            frame(1, Req::Hello { version: PROTOCOL_VERSION }),
            from_disk(2, "a", "/boot/hello.elf", &[]),
            frame(3, Req::DiskList { path: "/", skip: 0 }),
            frame(4, Req::DiskInfo),
            frame(5, Req::List),
        ],
    );
    let b: Vec<&str> = got.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(b[1..4], [no_disk; 3]);
    assert!(b[4].starts_with("List"), "and dom0 goes on serving");
    // A disk without a file system.
    let blank = crate::disk::MemDisk(RefCell::new(vec![0; 64 * 512]));
    let got = exchange_disk(
        &mut rig,
        Some(&blank),
        &[
            frame(1, Req::Hello { version: PROTOCOL_VERSION }),
            from_disk(2, "a", "/boot/hello.elf", &[]),
            frame(3, Req::DiskInfo),
        ],
    );
    assert_eq!(got[1].1, "Error(Disk { error: NoFileSystem, path: \"\" })");
    assert!(got[2].1.ends_with("filesystem: \"none: no FAT file system on dom0's disk\" }"));
}

#[test]
fn domains_get_virtual_disks_before_they_start() {
    use crate::vbd::Backend;
    let mut rig = Rig::new(1024);
    let disk = crate::disk::MemDisk(RefCell::new(crate::vbd::pool::tests::pool_disk(4096, 0xda)));
    let mem = crate::vbd::test_memory();
    let modules = [BootModule { name: "hello", bytes: &rig.module }];
    let identity = crate::disk::ata::Identity {
        model: "TEST DISK".try_into().unwrap(),
        sectors: crate::disk::Sectors::sectors(&disk),
        lba48: true,
        multiple: 16,
    };
    let mut scratch = vec![0u8; 65536];
    // SAFETY: leaked pages nothing else uses.
    let backend = unsafe { Backend::new(mem, Some(&disk)) };
    let mut server = Server::new(&modules, &mut rig.bufs, &mut rig.image, "test")
        .with_disk(DiskAccess { sectors: &disk, identity: &identity }, &mut scratch)
        .with_vbds(backend);
    let module = |name| ImageSource::Module(name);
    let input = [
        frame(1, Req::Hello { version: PROTOCOL_VERSION }),
        frame(2, Req::Create { config: config("v"), image: module("hello"), start: false }),
        frame(3, Req::VbdAttach { domid: 1, bytes: 1 << 20 }),
        frame(4, Req::VbdAttach { domid: 1, bytes: 1 << 20 }),
        frame(5, Req::VbdAttach { domid: 9, bytes: 1 << 20 }),
        frame(6, Req::VbdAttach { domid: 1, bytes: 1000 }),
        frame(7, Req::Create { config: config("w"), image: module("hello"), start: true }),
        frame(8, Req::VbdAttach { domid: 2, bytes: 4096 }),
        frame(9, Req::Destroy { domid: 1 }),
        frame(10, Req::Create { config: config("v"), image: module("hello"), start: false }),
        frame(11, Req::VbdAttach { domid: 1, bytes: 2 << 20 }),
    ];
    let mut pipe = Pipe::default();
    for f in &input {
        pipe.input.extend(f);
    }
    drain(&mut server, &rig.fake, &mut pipe);
    assert!(!server.poll_vbds(&rig.fake), "no event, nothing to do");
    let got = responses(&pipe.output);
    let b: Vec<&str> = got.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(b[1], "Created { domid: 1 }");
    assert_eq!(b[2], "Done");
    assert!(b[3].contains("has a virtual disk already"), "{}", b[3]);
    assert_eq!(b[4], "Error(Hypercall { errno: ESRCH })");
    assert!(b[5].starts_with("Error(BadRequest"), "{}", b[5]);
    assert!(b[7].contains("attach before the domain starts"), "{}", b[7]);
    assert_eq!(b[8], "Done");
    assert_eq!(
        *rig.fake.vbd_calls.borrow(),
        ["close", "close", "revoke", "revoke"],
        "the store, console and disk went with d1"
    );
    assert_eq!(b[10], "Error(Disk { error: SizeMismatch { sectors: 2048 }, path: \"\" })");
    let log = rig.fake.log.borrow().clone();
    assert!(log.iter().any(|l| l.contains("vbd attach d1 1048576 -> ok")), "{log:?}");
    // Without a backend (dom0 without a disk): no disk.
    let got = exchange(
        &mut rig,
        &[
            frame(1, Req::Hello { version: PROTOCOL_VERSION }),
            frame(2, Req::VbdAttach { domid: 1, bytes: 4096 }),
        ],
    );
    assert_eq!(got[1].1, "Error(Disk { error: NoDisk, path: \"\" })");
}

/// A multiboot kernel the builder accepts: header with address fields at 0, loaded at 1 MiB.
fn mb_image() -> Vec<u8> {
    let flags = 0x0001_0002u32;
    let magic = crate::multiboot::HEADER_MAGIC;
    let mut v: Vec<u8> =
        [magic, flags, 0u32.wrapping_sub(magic.wrapping_add(flags)), 0x10_0000, 0x10_0000, 0]
            .iter()
            .chain(&[0x10_3000, 0x10_0020])
            .flat_map(|w| w.to_le_bytes())
            .collect();
    v.resize(8192, 0x90);
    v
}

/// Sends `frames` to `server` and answers the responses' bodies.
fn ask(server: &mut Server<'_>, hv: &Fake, frames: &[Vec<u8>]) -> Vec<String> {
    let mut pipe = Pipe::default();
    for f in frames {
        pipe.input.extend(f);
    }
    drain(server, hv, &mut pipe);
    responses(&pipe.output).into_iter().map(|(_, b)| b).collect()
}

#[test]
fn pvh_domains_get_a_store_and_a_pv_console_and_leave_nothing_behind() {
    use crate::vbd::Backend;
    use abi::pv::{self, Half, keys};
    let mut rig = Rig::new(1024);
    let mb = mb_image();
    let mem = crate::vbd::test_memory();
    let modules =
        [BootModule { name: "hello", bytes: &rig.module }, BootModule { name: "mb", bytes: &mb }];
    // SAFETY: leaked pages nothing else uses.
    let backend = unsafe { Backend::new(mem, None) };
    let mut server =
        Server::new(&modules, &mut rig.bufs, &mut rig.image, "test").with_vbds(backend);
    let hv = &rig.fake;
    let module = |name| ImageSource::Module(name);
    let got = ask(
        &mut server,
        hv,
        &[
            frame(1, Req::Hello { version: PROTOCOL_VERSION }),
            frame(2, Req::Create { config: config("pv"), image: module("hello"), start: true }),
            frame(3, Req::Create { config: config("mb"), image: module("mb"), start: false }),
            frame(4, Req::VbdAttach { domid: 2, bytes: 4096 }),
        ],
    );
    assert_eq!(got[1..3], ["Created { domid: 1 }", "Created { domid: 2 }"]);
    assert!(got[3].contains("the domain has no store (not a PVH kernel)"), "{}", got[3]);
    assert_eq!(*hv.held.borrow(), (2, 2), "a store and a console for the PVH domain only");
    // The domain connects its PV console and writes to it.
    let store = mem.store.cast::<u8>();
    let cons = mem.consoles.cast::<u8>();
    // SAFETY: store 0's page, the test's frontend.
    let mut page = unsafe { pv::snapshot(store) };
    pv::set(&mut page, Half::Frontend, keys::CONSOLE_STATE, "4").unwrap();
    // SAFETY: as above; then the console page's output ring and `out_prod`.
    unsafe {
        pv::publish(store, &page, Half::Frontend);
        core::ptr::copy_nonoverlapping(b"pv!".as_ptr(), cons.add(pv::CONS_OUT), 3);
        core::ptr::write_volatile(cons.add(pv::CONS_OUT_PROD).cast::<u32>(), 3);
    }
    let got = ask(
        &mut server,
        hv,
        &[
            frame(5, Req::ConsoleRead { domid: 1, max: 20 }),
            frame(6, Req::ConsoleRead { domid: 1, max: 4096 }),
            frame(7, Req::ConsoleInput { domid: 1, data: b"ping\n" }),
            frame(8, Req::ConsoleInput { domid: 2, data: &[b'x'; 40] }),
        ],
    );
    assert_eq!(got[0], std::format!("Console {{ data: {:?} }}", b"hello from domU 1\npv"));
    assert_eq!(got[1], std::format!("Console {{ data: {:?} }}", b"!"));
    assert_eq!(got[2], "Accepted { bytes: 5 }", "into the PV console");
    assert_eq!(got[3], "Accepted { bytes: 16 }", "the multiboot domain's COM1");
    // SAFETY: the console page's input ring and `in_prod`.
    let (input, in_prod) = unsafe {
        (
            core::slice::from_raw_parts(cons.add(pv::CONS_IN), 5).to_vec(),
            core::ptr::read_volatile(cons.add(pv::CONS_IN_PROD).cast::<u32>()),
        )
    };
    assert_eq!((input.as_slice(), in_prod), (&b"ping\n"[..], 5));
    // Destroyed: nothing left behind; created and destroyed again and again: still nothing.
    let mut frames =
        vec![frame(9, Req::Destroy { domid: 1 }), frame(10, Req::Destroy { domid: 2 })];
    for i in 0..20 {
        frames.push(frame(
            11 + 2 * i,
            Req::Create { config: config("again"), image: module("hello"), start: false },
        ));
        frames.push(frame(12 + 2 * i, Req::Destroy { domid: 1 }));
    }
    let got = ask(&mut server, hv, &frames);
    assert!(got.iter().all(|r| r == "Done" || r == "Created { domid: 1 }"), "{got:?}");
    assert_eq!(*hv.held.borrow(), (0, 0));
    // A store dom0 cannot make: the domain is created without one, and the log says why.
    hv.fail.replace(vec!["alloc"]);
    let got = ask(
        &mut server,
        hv,
        &[frame(60, Req::Create { config: config("bare"), image: module("hello"), start: true })],
    );
    assert_eq!(got[0], "Created { domid: 1 }");
    assert_eq!(*hv.held.borrow(), (0, 0), "the grants made before the failure revoked");
    let log = hv.log.borrow().clone();
    assert!(
        log.iter().any(|l| l.contains("d1 has no store, hence no PV devices: store port failed")),
        "{log:?}"
    );
    hv.fail.replace(vec![]);
}

/// One piece of random input.
#[derive(Debug, Clone)]
enum Piece {
    /// A valid frame of a request with random fields.
    Request(u32, u32, u64, String, Vec<u8>),
    /// Random bytes (zeros included).
    Bytes(Vec<u8>),
    /// A frame over the limit.
    Oversize(usize),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => (0..REQ_VARIANTS + 2, 0u32..20, any::<u64>(), "[ -~]{0,40}",
              proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(s, a, b, t, d)| Piece::Request(s, a, b, t, d)),
        2 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Piece::Bytes),
        1 => (1usize..200).prop_map(Piece::Oversize),
    ]
}

fn random_req<'a>(sel: u32, a: u32, b: u64, s: &'a str, data: &'a [u8]) -> Req<'a> {
    let config =
        DomainConfig { name: s, mem_bytes: b, vcpus: a, mmu_pages: b, flags: a, cmdline: s };
    match sel {
        0 => Req::Hello { version: if a == 0 { 9 } else { PROTOCOL_VERSION } },
        1 => Req::PhysInfo,
        2 => Req::List,
        3 => Req::DomainInfo { domid: a },
        4 => Req::UploadBegin { size: b as u32 },
        5 => Req::UploadChunk { offset: a, data },
        6 => Req::Create { config, image: ImageSource::Uploaded, start: a & 1 == 0 },
        7 => Req::Destroy { domid: a },
        8 => Req::Pause { domid: a },
        9 => Req::Unpause { domid: a },
        10 => Req::Shutdown { domid: a, reason: ShutdownReason::Poweroff, status: 1 },
        11 => Req::MemSet { domid: a, bytes: b },
        12 => Req::MmuPagesGet { domid: a },
        13 => Req::MmuPagesSet { domid: a, pages: b },
        14 => Req::ConsoleRead { domid: a, max: b as u32 },
        15 => Req::Stats { domid: a },
        16 => Req::Modules,
        17 => Req::Poweroff,
        20 => Req::CreateFromDisk {
            config,
            kernel: if a & 1 == 0 { "/boot/hello.elf" } else { s },
            modules: [s].into_iter().take((a % 2) as usize).collect(),
            start: true,
        },
        21 => Req::DiskList { path: s, skip: a },
        22 => Req::DiskInfo,
        23 => Req::VbdAttach { domid: a, bytes: b },
        _ => Req::Create {
            config,
            image: ImageSource::Module(if a & 1 == 0 { "hello" } else { s }),
            start: true,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Random frames and bytes: no panic, no hang, and exactly one valid response per
    /// non-empty frame.
    #[test]
    fn every_frame_gets_exactly_one_response(
        pieces in proptest::collection::vec(piece(), 0..40),
    ) {
        let mut rig = Rig::new(8192);
        let mut input = Vec::new();
        for p in &pieces {
            match p {
                Piece::Request(s, a, b, t, d) => {
                    let req = random_req(*s, *a, *b, t, d);
                    input.extend(frame(a.wrapping_add(1), req));
                }
                Piece::Bytes(bytes) => input.extend(bytes),
                Piece::Oversize(extra) => {
                    input.extend(std::iter::repeat_n(0x33, MAX_FRAME + extra));
                    input.push(0);
                }
            }
        }
        // Frames: runs of non-zero bytes ended by a zero.
        let expected = input
            .split(|&b| b == 0)
            .rev()
            .skip(1)
            .filter(|f| !f.is_empty())
            .count();
        let got = exchange(&mut rig, &[input]);
        prop_assert_eq!(got.len(), expected);
    }
}
