//! Round trips of every message, and the decoder against random input.

use super::*;
use crate::types::{DomainInfo, DomainStats, PhysInfo};
use proptest::prelude::*;
use std::string::String;
use std::vec::Vec;
use zerocopy::FromZeros;

/// Request number `sel` (every variant), with fields from the arguments.
fn req<'a>(sel: u32, a: u32, b: u64, s: &'a str, data: &'a [u8]) -> Req<'a> {
    let config = DomainConfig {
        name: s,
        mem_bytes: b,
        vcpus: a,
        mmu_pages: b / 3,
        flags: a ^ 1,
        cmdline: s,
    };
    match sel {
        0 => Req::Hello { version: a as u16 },
        1 => Req::PhysInfo,
        2 => Req::List,
        3 => Req::DomainInfo { domid: a },
        4 => Req::UploadBegin { size: a },
        5 => Req::UploadChunk { offset: a, data },
        6 => Req::Create { config, image: ImageSource::Uploaded, start: a & 1 == 0 },
        7 => Req::Destroy { domid: a },
        8 => Req::Pause { domid: a },
        9 => Req::Unpause { domid: a },
        10 => Req::Shutdown { domid: a, reason: ShutdownReason::Reboot, status: a / 2 },
        11 => Req::MemSet { domid: a, bytes: b },
        12 => Req::MmuPagesGet { domid: a },
        13 => Req::MmuPagesSet { domid: a, pages: b },
        14 => Req::ConsoleRead { domid: a, max: a / 5 },
        15 => Req::Stats { domid: a },
        16 => Req::Modules,
        17 => Req::Poweroff,
        18 => Req::ConsoleInput { domid: a, data: &data[..data.len().min(256)] },
        19 => Req::CreateWithModules {
            config,
            image: ImageSource::Module(s),
            modules: [s, "initrd"].into_iter().take((a % 3) as usize).collect(),
            start: a & 2 == 0,
        },
        20 => Req::CreateFromDisk {
            config,
            kernel: s,
            modules: [s, "/initrd"].into_iter().take((a % 3) as usize).collect(),
            start: a & 4 == 0,
        },
        21 => Req::DiskList { path: s, skip: a },
        22 => Req::DiskInfo,
        23 => Req::VbdAttach { domid: a, bytes: b },
        // Also `Create` from a module, so both image sources round-trip.
        _ => Req::Create { config, image: ImageSource::Module(s), start: true },
    }
}

fn error(sel: u32, a: u32, s: &str) -> Error<'_> {
    match sel {
        0 => Error::Malformed(Malformed::Checksum),
        1 => Error::Oversize { limit: a },
        2 => Error::UnknownRequest { tag: a },
        3 => Error::VersionMismatch { dom0: a as u16, client: (a >> 16) as u16 },
        4 => Error::HelloRequired,
        5 => Error::Hypercall { errno: Errno::ALL[a as usize % Errno::ALL.len()] },
        6 => Error::NoSuchModule,
        7 => Error::ImageRejected { reason: s },
        8 => Error::BadRequest { reason: s },
        9 => Error::Upload(UploadError::Incomplete { received: a, size: a / 2 }),
        10 => Error::Disk { error: DiskError::NotFound, path: s },
        _ => Error::Disk {
            error: DiskError::Device { status: a as u8, error: (a >> 8) as u8 },
            path: "",
        },
    }
}

fn resp<'a>(sel: u32, a: u32, b: u64, s: &'a str, data: &'a [u8]) -> Resp<'a> {
    let mut info = DomainInfo::new_zeroed();
    info.domid = a;
    info.mem_bytes = b;
    info.name[..s.len().min(32)].copy_from_slice(&s.as_bytes()[..s.len().min(32)]);
    let mut stats = DomainStats::new_zeroed();
    stats.exits_by_reason[3] = b;
    stats.mmu_frames = b;
    let mut phys = PhysInfo::new_zeroed();
    phys.free_bytes = b;
    match sel {
        0 => Resp::Hello {
            version: a as u16,
            abi_major: 1,
            abi_minor: 0,
            agent: s,
            upload_capacity: a,
        },
        1 => Resp::PhysInfo(phys),
        2 => Resp::List((0..(a % 17) as usize).map(|_| info).collect()),
        3 => Resp::DomainInfo(info),
        4 => Resp::UploadProgress { received: a },
        5 => Resp::Created { domid: a },
        6 => Resp::Done,
        7 => Resp::MmuPages { pages: b },
        8 => Resp::Console { data },
        9 => Resp::Stats(stats),
        10 => Resp::Modules(
            (0..(a % 17) as usize).map(|i| ModuleInfo { name: s, size: i as u64 }).collect(),
        ),
        11 => Resp::Accepted { bytes: a },
        12 => Resp::DiskList {
            entries: (0..(a % 65) as usize)
                .map(|i| DiskEntry { name: s, size: b ^ i as u64, dir: i % 2 == 0 })
                .collect(),
            more: a & 1 == 0,
        },
        13 => Resp::DiskInfo { model: s, sectors: b, lba48: a & 1 == 0, filesystem: s },
        n => Resp::Error(error(n - 14, a, s)),
    }
}

fn frame_of<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut enc = std::boxed::Box::new(FrameEncoder::new());
    enc.encode(msg).expect("fits").to_vec()
}

/// Feeds `bytes` to a reader; the result of each non-empty frame, as owned data.
fn read_all(bytes: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut r = std::boxed::Box::new(FrameReader::new());
    bytes.iter().filter_map(|&b| r.push(b).map(|res| res.map(<[u8]>::to_vec))).collect()
}

fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

proptest! {
    #[test]
    fn every_request_round_trips(
        sel in 0u32..=REQ_VARIANTS, a: u32, b: u64, s in text(),
        data in proptest::collection::vec(any::<u8>(), 0..UPLOAD_CHUNK_MAX),
    ) {
        let msg = Request { id: a.wrapping_add(1), body: req(sel, a, b, &s, &data) };
        let frame = frame_of(&msg);
        prop_assert!(frame.len() <= MAX_FRAME + 1);
        prop_assert_eq!(frame.iter().filter(|&&x| x == 0).count(), 1, "one delimiter, at the end");
        let got = read_all(&frame);
        prop_assert_eq!(got.len(), 1);
        let payload = got[0].clone().expect("valid frame");
        prop_assert_eq!(decode_request(&payload), Ok(msg));
    }

    #[test]
    fn every_response_round_trips(
        sel in 0u32..26, a: u32, b: u64, s in text(),
        data in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let msg = Response { id: a, body: resp(sel, a, b, &s, &data) };
        let frame = frame_of(&msg);
        let got = read_all(&frame);
        prop_assert_eq!(got.len(), 1);
        let payload = got[0].clone().expect("valid frame");
        prop_assert_eq!(decode_response(&payload), Ok(msg));
    }

    #[test]
    fn random_bytes_never_panic_and_give_defined_errors(
        bytes in proptest::collection::vec(any::<u8>(), 0..20_000),
    ) {
        let frames = bytes.iter().filter(|&&b| b == 0).count();
        let got = read_all(&bytes);
        prop_assert!(got.len() <= frames, "at most one result per delimiter");
        for msg in got.into_iter().flatten() {
            let _ = decode_request(&msg);
            let _ = decode_response(&msg);
        }
    }

    #[test]
    fn random_messages_in_valid_frames_decode_or_fail_cleanly(
        msg in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        // A correct checksum around random bytes: the checksum passes, so postcard sees them.
        let mut body = msg.clone();
        body.extend_from_slice(&crc32(&msg).to_le_bytes());
        let mut frame = std::vec![0u8; cobs::max_encoding_length(body.len()) + 1];
        let n = cobs::encode(&body, &mut frame);
        frame.truncate(n);
        frame.push(0);
        let got = read_all(&frame);
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(got[0].as_deref(), Ok(&msg[..]));
        match decode_request(&msg) {
            Ok(r) => {
                // Anything that decodes re-encodes to the same bytes: no silent reading.
                prop_assert_eq!(postcard::to_allocvec(&r).unwrap(), msg.clone());
            }
            Err((_, e)) => {
                let defined = matches!(
                    e,
                    Error::Malformed(Malformed::Decode | Malformed::TrailingBytes)
                        | Error::UnknownRequest { .. }
                );
                prop_assert!(defined, "unexpected error {:?}", e);
            }
        }
    }

    #[test]
    fn corrupting_one_byte_is_detected(
        sel in 0u32..REQ_VARIANTS, a: u32, s in text(), at: usize, flip in 1u8..=255,
    ) {
        let msg = Request { id: 7, body: req(sel, a, 5, &s, b"abc") };
        let mut frame = frame_of(&msg);
        let i = at % (frame.len() - 1);
        frame[i] ^= flip;
        // The result is an error or nothing yet (a zero was made inside the frame: then the
        // first part is an error and the rest waits for more), never the wrong request.
        for payload in read_all(&frame).into_iter().flatten() {
            prop_assert_eq!(decode_request(&payload).ok(), None::<Request<'_>>);
        }
    }
}

#[test]
fn oversize_frames_are_reported_once_at_their_delimiter() {
    let mut bytes = std::vec![0x55u8; MAX_FRAME + 10];
    bytes.push(0);
    bytes.extend(frame_of(&Request { id: 9, body: Req::List }));
    let got = read_all(&bytes);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], Err(FrameError::Oversize));
    assert_eq!(decode_request(got[1].as_ref().unwrap()), Ok(Request { id: 9, body: Req::List }));
    // Exactly MAX_FRAME encoded bytes is still a frame (here a malformed one).
    let mut edge = std::vec![0x55u8; MAX_FRAME];
    edge.push(0);
    assert!(matches!(read_all(&edge)[..], [Err(FrameError::Malformed(_))]));
}

#[test]
fn empty_frames_are_ignored() {
    assert!(read_all(&[0, 0, 0]).is_empty());
    let mut bytes = std::vec![0, 0];
    bytes.extend(frame_of(&Request { id: 1, body: Req::Modules }));
    assert_eq!(read_all(&bytes).len(), 1);
}

#[test]
fn unknown_tags_keep_their_id() {
    let mut msg = postcard::to_allocvec(&300u32).unwrap();
    msg.extend(postcard::to_allocvec(&REQ_VARIANTS).unwrap());
    assert_eq!(decode_request(&msg), Err((300, Error::UnknownRequest { tag: REQ_VARIANTS })));
    // The last known tag is known.
    let body = Req::VbdAttach { domid: 1, bytes: 4096 };
    let last = postcard::to_allocvec(&Request { id: 1, body: body.clone() }).unwrap();
    assert_eq!(last[1] as u32, REQ_VARIANTS - 1);
    assert_eq!(decode_request(&last), Ok(Request { id: 1, body }));
}

#[test]
fn the_largest_messages_fit_a_frame() {
    let data = [0xffu8; UPLOAD_CHUNK_MAX];
    let chunk = Request { id: u32::MAX, body: Req::UploadChunk { offset: u32::MAX, data: &data } };
    assert!(frame_of(&chunk).len() <= MAX_FRAME + 1);
    let console = [0x01u8; crate::hypercall::CONSOLE_READ_MAX as usize];
    assert!(
        frame_of(&Response { id: u32::MAX, body: Resp::Console { data: &console } }).len()
            <= MAX_FRAME + 1
    );
    let mut info = DomainInfo::new_zeroed();
    info.name = [b'x'; 32];
    info.exits = u64::MAX;
    let list = Resp::List((0..MAX_DOMAINS).map(|_| info).collect());
    assert!(frame_of(&Response { id: u32::MAX, body: list }).len() <= MAX_FRAME + 1);
    let long = "y".repeat(CMDLINE_MAX);
    let create = Req::Create {
        config: DomainConfig {
            name: &long[..32],
            mem_bytes: u64::MAX,
            vcpus: u32::MAX,
            mmu_pages: u64::MAX,
            flags: u32::MAX,
            cmdline: &long,
        },
        image: ImageSource::Module(&long[..MODULE_NAME_MAX]),
        start: true,
    };
    assert!(frame_of(&Request { id: 1, body: create }).len() <= MAX_FRAME + 1);
    // A create from the disk with every path at its longest.
    let path = "p".repeat(DISK_PATH_MAX);
    let create = Req::CreateFromDisk {
        config: DomainConfig {
            name: &long[..32],
            mem_bytes: u64::MAX,
            vcpus: u32::MAX,
            mmu_pages: u64::MAX,
            flags: u32::MAX,
            cmdline: &long,
        },
        kernel: &path,
        modules: (0..KERNEL_MODULES_MAX).map(|_| path.as_str()).collect(),
        start: true,
    };
    assert!(frame_of(&Request { id: 1, body: create }).len() <= MAX_FRAME + 1);
    // A listing page at its limits: the most entries, the most name bytes.
    let name = "n".repeat(DISK_LIST_BYTES / DISK_LIST_MAX);
    let entries =
        (0..DISK_LIST_MAX).map(|_| DiskEntry { name: &name, size: u64::MAX, dir: false }).collect();
    let page = Resp::DiskList { entries, more: true };
    assert!(frame_of(&Response { id: u32::MAX, body: page }).len() <= MAX_FRAME + 1);
    let one = "m".repeat(DISK_LIST_BYTES);
    let mut entries = heapless::Vec::new();
    let _ = entries.push(DiskEntry { name: &one, size: u64::MAX, dir: true });
    let page = Resp::DiskList { entries, more: true };
    assert!(frame_of(&Response { id: u32::MAX, body: page }).len() <= MAX_FRAME + 1);
}

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
}
