//! hvctl against scripted fake dom0s on a UNIX socket: exit statuses and one-line reasons.

use abi::Errno;
use abi::proto::{
    self, Error, FrameEncoder, FrameReader, NO_ID, PROTOCOL_VERSION, Req, Resp, Response,
};
use abi::types::DomainInfo;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread;
use zerocopy::FromZeros;

/// A fresh socket path in the temporary directory.
fn socket(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("hvctl-test-{}-{tag}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Serves one connection: `answer` maps each request (id, body) to the responses to send.
fn fake_dom0(
    tag: &str,
    answer: impl Fn(u32, &Req<'_>) -> Vec<(u32, Resp<'static>)> + Send + 'static,
) -> PathBuf {
    let path = socket(tag);
    let listener = UnixListener::bind(&path).unwrap();
    thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return };
        let mut reader = Box::new(FrameReader::new());
        let mut enc = Box::new(FrameEncoder::new());
        let mut b = [0u8; 1];
        while let Ok(1) = s.read(&mut b) {
            let Some(Ok(msg)) = reader.push(b[0]) else { continue };
            let Ok(req) = proto::decode_request(msg) else { continue };
            for (id, body) in answer(req.id, &req.body) {
                let frame = enc.encode(&Response { id, body }).unwrap().to_vec();
                if s.write_all(&frame).is_err() {
                    return;
                }
            }
        }
    });
    path
}

fn hvctl(path: &PathBuf, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hvctl"))
        .arg("--socket")
        .arg(path)
        .args(["--timeout", "2"])
        .args(args)
        .env_remove("HVCTL_SOCKET")
        .output()
        .unwrap()
}

fn hello(id: u32) -> (u32, Resp<'static>) {
    (
        id,
        Resp::Hello {
            version: PROTOCOL_VERSION,
            abi_major: 1,
            abi_minor: 0,
            agent: "fake",
            upload_capacity: 1024,
        },
    )
}

/// Fails with status 1 and exactly one line on stderr containing `want`.
fn fails(out: &Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains(want), "{err:?} lacks {want:?}");
}

fn domain(domid: u32, name: &str) -> DomainInfo {
    let mut d = DomainInfo::new_zeroed();
    d.domid = domid;
    d.state = 1;
    d.name[..name.len()].copy_from_slice(name.as_bytes());
    d
}

/// A fake that answers the hello, lists dom0 and `web`, and fails everything else with ESRCH.
fn simple(id: u32, req: &Req<'_>) -> Vec<(u32, Resp<'static>)> {
    match req {
        Req::Hello { .. } => vec![hello(id)],
        Req::List => {
            vec![(id, Resp::List([domain(0, "dom0"), domain(3, "web")].into_iter().collect()))]
        }
        _ => vec![(id, Resp::Error(Error::Hypercall { errno: Errno::ESRCH }))],
    }
}

#[test]
fn no_channel() {
    fails(&hvctl(&socket("absent"), &["list"]), "no control channel at");
}

#[test]
fn dom0_refuses_our_version() {
    let p = fake_dom0("refuse", |id, _| {
        vec![(id, Resp::Error(Error::VersionMismatch { dom0: 7, client: PROTOCOL_VERSION }))]
    });
    fails(&hvctl(&p, &["list"]), "protocol version mismatch: dom0 speaks 7");
}

#[test]
fn dom0_speaks_another_version() {
    let p = fake_dom0("other", |id, _| {
        let (_, mut h) = hello(id);
        if let Resp::Hello { version, .. } = &mut h {
            *version = PROTOCOL_VERSION + 1;
        }
        vec![(id, h)]
    });
    fails(&hvctl(&p, &["version"]), "protocol version mismatch");
}

#[test]
fn silent_dom0_times_out() {
    let path = socket("mute");
    let _listener = UnixListener::bind(&path).unwrap();
    fails(&hvctl(&path, &["list"]), "did not answer within 2.0 s");
}

#[test]
fn stale_and_unattributed_answers_before_the_hello_are_skipped() {
    let p = fake_dom0("stale", |id, req| {
        let mut v = Vec::new();
        if matches!(req, Req::Hello { .. }) {
            // An error for an earlier client's half frame, and a late answer to another id.
            v.push((NO_ID, Resp::Error(Error::Malformed(proto::Malformed::Cobs))));
            v.push((id.wrapping_add(1000), Resp::Done));
        }
        v.extend(simple(id, req));
        v
    });
    let out = hvctl(&p, &["--json", "list"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[1]["name"], "web");
    assert_eq!(v[1]["state"], "running");
    assert_eq!(v[1]["shutdown_reason"], serde_json::Value::Null);
}

#[test]
fn hypercall_errors_are_named() {
    let p = fake_dom0("esrch", simple);
    fails(&hvctl(&p, &["pause", "9"]), "unknown domain \"9\" (ESRCH: no such domain)");
    let p = fake_dom0("noname", simple);
    fails(&hvctl(&p, &["destroy", "nope"]), "unknown domain \"nope\"");
    let p = fake_dom0("busy", |id, req| match req {
        Req::Pause { .. } => vec![(id, Resp::Error(Error::Hypercall { errno: Errno::EBUSY }))],
        _ => simple(id, req),
    });
    fails(&hvctl(&p, &["pause", "web"]), "EBUSY");
}

#[test]
fn an_image_over_dom0s_buffer_is_refused_before_uploading() {
    let img = std::env::temp_dir().join(format!("hvctl-test-{}-big.img", std::process::id()));
    std::fs::write(&img, vec![0u8; 2048]).unwrap();
    let p = fake_dom0("big", simple);
    fails(&hvctl(&p, &["create", "x", img.to_str().unwrap()]), "upload buffer holds 1024");
    let _ = std::fs::remove_file(img);
}

#[test]
fn bad_sizes_are_usage_errors() {
    let out = hvctl(&socket("unused"), &["create", "x", "--module", "m", "-m", "12Q"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn a_build_from_the_disk_may_take_longer_than_the_timeout() {
    // dom0 answers the create 3 s after it, beyond `--timeout 2`: hvctl waits for a build from
    // the disk (dom0 reads the whole image first), and sends the paths without `dom0:`.
    let path = fake_dom0("disk-create", |id, req| match req {
        Req::List => vec![(id, Resp::List(heapless::Vec::new()))],
        Req::CreateFromDisk { config, kernel, modules, start } => {
            assert_eq!((config.name, *kernel, *start), ("d", "/boot/vmlinux", true));
            assert_eq!(modules.as_slice(), ["/boot/initrd.img"]);
            thread::sleep(std::time::Duration::from_secs(3));
            vec![(id, Resp::Created { domid: 4 })]
        }
        other => simple(id, other),
    });
    let out = hvctl(
        &path,
        &["create", "d", "--kernel", "dom0:/boot/vmlinux", "--initrd", "dom0:/boot/initrd.img"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("created domain d (id 4), running"));
}

#[test]
fn disk_errors_and_listings() {
    let path = fake_dom0("disk-ls", |id, req| match req {
        // Two pages: hvctl asks again from where the first ended.
        Req::DiskList { path: "/boot", skip: 0 } => {
            let e = proto::DiskEntry { name: "vmlinux", size: 53_243_444, dir: false };
            vec![(id, Resp::DiskList { entries: [e].into_iter().collect(), more: true })]
        }
        Req::DiskList { path: "/boot", skip: 1 } => {
            let e = proto::DiskEntry { name: "grub", size: 0, dir: true };
            vec![(id, Resp::DiskList { entries: [e].into_iter().collect(), more: false })]
        }
        other => simple(id, other),
    });
    let out = hvctl(&path, &["--json", "disk", "ls", "dom0:/boot"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["path"], "/boot");
    assert_eq!(v["entries"][0]["name"], "vmlinux");
    assert_eq!(v["entries"][0]["size"], 53_243_444);
    assert_eq!(v["entries"][1]["dir"], true);
    let path = fake_dom0("disk-ls-err", |id, req| match req {
        Req::DiskList { .. } => {
            let error = proto::DiskError::NotFound;
            vec![(id, Resp::Error(Error::Disk { error, path: "/x" }))]
        }
        other => simple(id, other),
    });
    fails(&hvctl(&path, &["disk", "ls", "/x"]), "dom0's disk: /x: no such file or directory");
    // An older dom0, without the disk requests.
    let path = fake_dom0("disk-old", |id, req| match req {
        Req::DiskInfo => vec![(id, Resp::Error(Error::UnknownRequest { tag: 22 }))],
        other => simple(id, other),
    });
    fails(&hvctl(&path, &["disk", "info"]), "dom0 does not know this request (tag 22)");
}

#[test]
fn mixed_sources_are_refused_before_connecting() {
    let path = socket("never-listened");
    let out = hvctl(&path, &["create", "d", "--kernel", "dom0:/k", "--initrd", "initrd"]);
    fails(&out, "takes its modules from the disk too");
    let out = hvctl(&path, &["create", "d", "--module", "m", "--initrd", "dom0:/i"]);
    fails(&out, "need a kernel from it too");
}

#[test]
fn a_domain_with_a_disk_starts_only_once_the_disk_is_attached() {
    use std::sync::{Arc, Mutex};
    // What dom0 was asked, in order; attaching to the domain named "bad" fails.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let path = fake_dom0("vbd", move |id, req| {
        let mut log = log.lock().unwrap();
        match req {
            Req::List => vec![(id, Resp::List(heapless::Vec::new()))],
            Req::Create { config, start, .. } => {
                log.push(format!("create {} start={start}", config.name));
                let domid = if config.name == "bad" { 6 } else { 5 };
                vec![(id, Resp::Created { domid })]
            }
            Req::VbdAttach { domid, bytes } => {
                log.push(format!("attach d{domid} {bytes}"));
                if *domid == 6 {
                    let error = proto::DiskError::SizeMismatch { sectors: 2048 };
                    vec![(id, Resp::Error(Error::Disk { error, path: "" }))]
                } else {
                    vec![(id, Resp::Done)]
                }
            }
            Req::Unpause { domid } => {
                log.push(format!("unpause d{domid}"));
                vec![(id, Resp::Done)]
            }
            Req::Destroy { domid } => {
                log.push(format!("destroy d{domid}"));
                vec![(id, Resp::Done)]
            }
            other => simple(id, other),
        }
    });
    let out = hvctl(&path, &["create", "good", "--module", "m", "--disk", "1M"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        *seen.lock().unwrap(),
        ["create good start=false", "attach d5 1048576", "unpause d5"]
    );
    seen.lock().unwrap().clear();
    let path = fake_dom0("vbd-bad", {
        let log = Arc::clone(&seen);
        move |id, req| match req {
            Req::List => vec![(id, Resp::List(heapless::Vec::new()))],
            Req::Create { .. } => vec![(id, Resp::Created { domid: 6 })],
            Req::VbdAttach { .. } => {
                let error = proto::DiskError::SizeMismatch { sectors: 2048 };
                vec![(id, Resp::Error(Error::Disk { error, path: "" }))]
            }
            Req::Destroy { domid } => {
                log.lock().unwrap().push(format!("destroy d{domid}"));
                vec![(id, Resp::Done)]
            }
            other => simple(id, other),
        }
    });
    let out = hvctl(&path, &["create", "bad", "--module", "m", "--disk", "2M"]);
    fails(&out, "the virtual disk exists with another size (1024 KiB)");
    assert_eq!(*seen.lock().unwrap(), ["destroy d6"], "a failed create leaves nothing");
}
