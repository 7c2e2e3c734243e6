//! The `hvctl-bochs` boot test: microhv with dom0 serving the control protocol under Bochs,
//! driven by `hvctl` as a subprocess, with garbage frames sent between the commands.

use crate::emu::Running;
use abi::proto::{self, FrameEncoder, FrameReader, PROTOCOL_VERSION, Req, Request};
use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Per-answer timeout given to hvctl: generous, Bochs shares two cores with builds.
const HVCTL_TIMEOUT: &str = "60";
/// Timeout of the raw garbage exchanges.
const RAW_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds hvctl (host, release) and returns its path.
pub fn build_hvctl() -> Result<PathBuf> {
    let status = Command::new(env!("CARGO"))
        .current_dir(crate::images::root())
        .args(["build", "--release", "--quiet", "-p", "hvctl"])
        .status()
        .context("building hvctl")?;
    ensure!(status.success(), "building hvctl failed");
    Ok(crate::images::root().join("target/release/hvctl"))
}

/// hvctl run as a subprocess against one socket, with a log of every run.
pub(crate) struct Hv<'a> {
    bin: &'a Path,
    socket: &'a Path,
    /// What was run and how it went, for the report.
    pub(crate) log: Vec<String>,
}

impl<'a> Hv<'a> {
    /// hvctl at `bin` talking to `socket`.
    pub(crate) fn new(bin: &'a Path, socket: &'a Path) -> Self {
        Hv { bin, socket, log: Vec::new() }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_with(self.socket, HVCTL_TIMEOUT, args)
    }

    fn cmd_with(&self, socket: &Path, timeout: &str, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.arg("--socket").arg(socket).args(["--timeout", timeout]).args(args);
        c.env_remove("HVCTL_SOCKET");
        c
    }

    /// Runs hvctl; its stdout if it exited 0.
    pub(crate) fn ok(&mut self, args: &[&str]) -> Result<String> {
        let t = Instant::now();
        let out = self.cmd(args).output().with_context(|| format!("running hvctl {args:?}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        self.log.push(format!(
            "hvctl {} -> {} ({:.2} s){}",
            args.join(" "),
            out.status.code().unwrap_or(-1),
            t.elapsed().as_secs_f64(),
            stderr
                .lines()
                .find(|l| l.starts_with("uploaded") || l.starts_with("built from"))
                .map_or(String::new(), |l| format!(": {l}"))
        ));
        if !out.status.success() {
            bail!("hvctl {args:?} failed ({}): {}", out.status, stderr.trim());
        }
        Ok(stdout)
    }

    /// Runs `hvctl console NAME` (following) with `input` on its standard input, as a person
    /// typing would; what it printed once the domain stopped (hvctl then ends by itself).
    /// Killed after `limit`, a guard.
    pub(crate) fn console_typed(
        &mut self,
        name: &str,
        input: &[u8],
        limit: Duration,
    ) -> Result<String> {
        use std::io::{Read, Write};
        use std::process::Stdio;
        let t = Instant::now();
        let mut child = self
            .cmd(&["console", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running hvctl console")?;
        // Written and closed at once: hvctl sends it as the domain takes it.
        child.stdin.take().context("hvctl's stdin")?.write_all(input)?;
        // Read while it runs, so that a full pipe never holds hvctl up.
        let drain = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = r.read_to_end(&mut out);
                String::from_utf8_lossy(&out).into_owned()
            })
        };
        let stdout = drain(Box::new(child.stdout.take().context("hvctl's stdout")?));
        let stderr = drain(Box::new(child.stderr.take().context("hvctl's stderr")?));
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if t.elapsed() > limit {
                let _ = child.kill();
                bail!("hvctl console {name} did not end in {limit:?}: the domain did not stop");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (out, err) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
        self.log.push(format!(
            "hvctl console {name} <<< {:?} -> {} ({:.2} s)",
            String::from_utf8_lossy(input),
            status.code().unwrap_or(-1),
            t.elapsed().as_secs_f64()
        ));
        ensure!(status.success(), "hvctl console {name} failed ({status}): {}", err.trim());
        Ok(out)
    }

    /// Runs hvctl with `--json`; what it printed.
    pub(crate) fn json(&mut self, args: &[&str]) -> Result<Value> {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a)?;
        serde_json::from_str(&out).with_context(|| format!("hvctl {args:?} printed no JSON: {out}"))
    }

    /// Runs hvctl expecting failure with one line on stderr containing `want`.
    pub(crate) fn fails(&mut self, args: &[&str], socket: Option<&Path>, want: &str) -> Result<()> {
        let out = self.cmd_with(socket.unwrap_or(self.socket), HVCTL_TIMEOUT, args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        self.log.push(format!(
            "hvctl {} -> {}: {}",
            args.join(" "),
            out.status.code().unwrap_or(-1),
            stderr.trim()
        ));
        // 1: dom0 or hvctl refused; 2: clap refused the command line.
        ensure!(
            matches!(out.status.code(), Some(1 | 2)),
            "hvctl {args:?} should fail with status 1: {out:?}"
        );
        ensure!(
            out.status.code() == Some(2) || stderr.lines().count() == 1,
            "hvctl {args:?}: not one line: {stderr:?}"
        );
        ensure!(stderr.contains(want), "hvctl {args:?}: {stderr:?} lacks {want:?}");
        Ok(())
    }
}

/// Sends `bytes` on a fresh connection and reads `n` responses: (id, body rendered with Debug).
fn raw(socket: &Path, bytes: &[u8], n: usize) -> Result<Vec<(u32, String)>> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(RAW_TIMEOUT))?;
    s.write_all(bytes)?;
    let mut reader = Box::new(FrameReader::new());
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    let deadline = Instant::now() + RAW_TIMEOUT;
    while got.len() < n {
        ensure!(Instant::now() < deadline, "no answer to the garbage");
        if s.read(&mut b).context("waiting for dom0's answer")? == 0 {
            bail!("the bridge closed the connection");
        }
        if let Some(f) = reader.push(b[0]) {
            let msg = f.map_err(|e| anyhow!("dom0 sent a bad frame: {e:?}"))?;
            let r = proto::decode_response(msg).map_err(|e| anyhow!("bad response: {e}"))?;
            got.push((r.id, format!("{:?}", r.body)));
        }
    }
    Ok(got)
}

fn frame(id: u32, body: Req<'_>) -> Vec<u8> {
    let mut e = Box::new(FrameEncoder::new());
    e.encode(&Request { id, body }).map(<[u8]>::to_vec).unwrap_or_default()
}

fn hello() -> Vec<u8> {
    let mut v = vec![0];
    v.extend(frame(1, Req::Hello { version: PROTOCOL_VERSION }));
    v
}

/// A frame with good COBS whose message is `msg`; its checksum is right unless `flip` is set.
fn frame_of_message(msg: &[u8], flip: u32) -> Vec<u8> {
    let mut body = msg.to_vec();
    body.extend((proto::crc32(msg) ^ flip).to_le_bytes());
    let mut out = vec![0u8; body.len() + body.len() / 254 + 2];
    let n = cobs::encode(&body, &mut out);
    out.truncate(n);
    out.push(0);
    out
}

/// A small deterministic generator for the random garbage (xorshift64*).
struct Rng(u64);

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }
}

/// One kind of bad input, sent on its own connection; checks dom0's answer.
fn garbage(socket: &Path, kind: &str, rng: &mut Rng, log: &mut Vec<String>) -> Result<()> {
    let (bytes, n, want): (Vec<u8>, usize, Vec<&str>) = match kind {
        "before-hello" => (frame(5, Req::List), 1, vec!["Error(HelloRequired)"]),
        "random" => {
            let mut b = rng.bytes(400);
            b.push(0);
            // Each run of non-zero bytes ended by a zero is a frame and gets one answer.
            let frames = b.split(|&x| x == 0).rev().skip(1).filter(|f| !f.is_empty()).count();
            let mut v = hello();
            v.extend(b);
            (v, frames + 1, vec!["Error(Malformed"])
        }
        "oversize" => {
            let mut v = hello();
            v.extend(std::iter::repeat_n(0x41, proto::MAX_FRAME + 1000));
            v.push(0);
            (v, 2, vec!["Error(Oversize { limit: 8192 })"])
        }
        "unknown-request" => {
            let mut msg = postcard::to_allocvec(&4242u32)?;
            msg.extend(postcard::to_allocvec(&99u32)?);
            let mut v = hello();
            v.extend(frame_of_message(&msg, 0));
            (v, 2, vec!["Error(UnknownRequest { tag: 99 })"])
        }
        "missing-domain" => {
            let mut v = hello();
            v.extend(frame(77, Req::DomainInfo { domid: 13 }));
            (v, 2, vec!["Error(Hypercall { errno: ESRCH })"])
        }
        "bad-checksum" => {
            let msg = postcard::to_allocvec(&Request { id: 78, body: Req::List })?;
            let mut v = hello();
            v.extend(frame_of_message(&msg, 1 << 7));
            (v, 2, vec!["Error(Malformed(Checksum))"])
        }
        "half-frame" => {
            // Half a request, then the connection closes: the next client's leading delimiter
            // ends it (dom0 answers it as malformed, and that client skips the answer).
            let f = frame(79, Req::List);
            let mut v = hello();
            v.extend(&f[..f.len() / 2]);
            (v, 1, vec![])
        }
        _ => bail!("unknown garbage kind {kind}"),
    };
    let got = raw(socket, &bytes, n)?;
    log.push(format!("garbage {kind}: {} byte(s) -> {:?}", bytes.len(), got.last()));
    if kind == "before-hello" {
        ensure!(got[0].1 == want[0], "{kind}: {got:?}");
        return Ok(());
    }
    ensure!(got[0].1.starts_with("Hello"), "{kind}: no hello answer: {got:?}");
    for (id, body) in &got[1..] {
        ensure!(want.iter().any(|w| body.starts_with(w)), "{kind}: unexpected {body}");
        match kind {
            "unknown-request" => ensure!(*id == 4242, "{kind}: id {id} not echoed"),
            "missing-domain" => ensure!(*id == 77, "{kind}: id {id} not echoed"),
            _ => ensure!(*id == proto::NO_ID, "{kind}: id {id} for an unreadable frame"),
        }
    }
    Ok(())
}

/// The entry named `name` in a JSON array.
pub(crate) fn domain<'v>(list: &'v Value, name: &str) -> Result<&'v Value> {
    list.as_array()
        .and_then(|a| a.iter().find(|d| d["name"] == name))
        .ok_or_else(|| anyhow!("{name} missing from {list}"))
}

/// `v[key]` as a number.
pub(crate) fn num(v: &Value, key: &str) -> Result<u64> {
    v[key].as_u64().ok_or_else(|| anyhow!("{key} is not a number in {v}"))
}

/// Waits until `name`'s console (read without following) contains `text`; returns it all.
pub(crate) fn console_until(hv: &mut Hv<'_>, name: &str, text: &str) -> Result<String> {
    let mut all = String::new();
    let start = Instant::now();
    while !all.contains(text) {
        ensure!(
            start.elapsed() < Duration::from_secs(120),
            "{name}'s console lacks {text:?}: {all:?}"
        );
        all += &hv.ok(&["console", name, "--no-follow"])?;
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(all)
}

/// The test's steps; the lines of its report.
pub fn drive(
    run: &mut Running,
    socket: &Path,
    images: &crate::images::Images,
) -> Result<Vec<String>> {
    let bin = build_hvctl()?;
    ensure!(
        run.wait_for("serving the control protocol", Duration::from_secs(120))?,
        "dom0 did not start serving"
    );
    let mut hv = Hv::new(&bin, socket);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut g = |kind: &str, log: &mut Vec<String>| garbage(socket, kind, &mut rng, log);

    g("before-hello", &mut hv.log)?;
    let v = hv.ok(&["version"])?;
    ensure!(v.contains(&format!("protocol    {PROTOCOL_VERSION}")), "version: {v}");
    let info = hv.json(&["info"])?;
    let virt = info["virt"].as_str().unwrap_or("");
    ensure!(["vmx", "svm"].contains(&virt) && num(&info, "domains")? == 1, "info: {info}");
    let floor = num(&info, "mmu_pages_floor")?;
    let mods = hv.json(&["modules"])?;
    ensure!(domain(&mods, "hello").is_ok() && domain(&mods, "spinner").is_ok(), "modules: {mods}");

    g("random", &mut hv.log)?;
    let spinner = images.guest("spinner");
    let up = hv.json(&[
        "create",
        "up-spin",
        &spinner.to_string_lossy(),
        "--memory",
        "8M",
        "--cmdline",
        "report=5",
    ])?;
    let up_id = num(&up, "domid")?;
    g("oversize", &mut hv.log)?;
    let m = hv.json(&["create", "mod-hello", "--module", "hello", "-m", "4M", "-c", "status=3"])?;
    let m_id = num(&m, "domid")?;
    g("unknown-request", &mut hv.log)?;

    let list = hv.json(&["list"])?;
    ensure!(list.as_array().map(Vec::len) == Some(3), "list: {list}");
    let d0 = domain(&list, "dom0")?;
    ensure!(d0["domid"] == 0 && d0["state"] == "running" && d0["dom0"] == true, "dom0: {d0}");
    let u = domain(&list, "up-spin")?;
    ensure!(num(u, "domid")? == up_id && u["state"] == "running", "up-spin: {u}");
    ensure!(num(u, "mem_bytes")? == 8 << 20 && u["vcpus"] == 1, "up-spin: {u}");
    let h = domain(&list, "mod-hello")?;
    ensure!(num(h, "domid")? == m_id, "mod-hello: {h}");
    ensure!(["running", "shutdown"].contains(&h["state"].as_str().unwrap_or("")), "{h}");

    // Following hello's console ends when it has shut down (status 3) and the ring is empty.
    let text = hv.ok(&["console", "mod-hello"])?;
    ensure!(text.contains(&format!("hello from domU {m_id}")), "hello's console: {text:?}");
    let h = hv.json(&["list", "mod-hello"])?;
    ensure!(h[0]["state"] == "shutdown" && h[0]["shutdown_status"] == 3, "mod-hello: {h}");

    // No disk is attached to this boot: every disk request gets the defined error, and dom0
    // goes on serving.
    hv.fails(&["create", "nodisk", "--kernel", "dom0:/guests/hello"], None, "dom0 has no disk")?;
    hv.fails(&["disk", "ls"], None, "dom0 has no disk")?;
    hv.fails(&["disk", "info"], None, "dom0 has no disk")?;
    g("missing-domain", &mut hv.log)?;
    hv.fails(&["pause", "13"], None, "ESRCH")?;
    hv.fails(&["destroy", "no-such-domain"], None, "unknown domain \"no-such-domain\"")?;
    console_until(&mut hv, "up-spin", "spinning")?;

    let before = num(&hv.json(&["mmu-pages", "get", "up-spin"])?, "mmu_pages")?;
    let low = hv.json(&["mmu-pages", "set", "up-spin", &floor.to_string()])?;
    ensure!(num(&low, "mmu_pages")? == floor && floor < before, "lowering: {low} (was {before})");
    let st = hv.json(&["stats", "up-spin"])?;
    ensure!(num(&st, "mmu_max")? == floor && num(&st, "mmu_used")? <= floor, "stats: {st}");
    ensure!(num(&st["exits"], "timer")? > 0, "the spinner has had no time slice: {st}");
    g("bad-checksum", &mut hv.log)?;
    let high = hv.json(&["mmu-pages", "set", "up-spin", "512"])?;
    ensure!(num(&high, "mmu_pages")? == 512, "raising: {high}");

    hv.ok(&["pause", "up-spin"])?;
    let p = hv.json(&["list", "up-spin"])?;
    ensure!(p[0]["state"] == "paused", "after pause: {p}");
    g("half-frame", &mut hv.log)?;
    hv.ok(&["unpause", &up_id.to_string()])?;
    let p = hv.json(&["list", "up-spin"])?;
    ensure!(p[0]["state"] == "running", "after unpause: {p}");

    hv.ok(&["destroy", "up-spin"])?;
    hv.ok(&["destroy", &m_id.to_string()])?;
    let list = hv.json(&["list"])?;
    ensure!(list.as_array().map(Vec::len) == Some(1), "after destroy: {list}");

    // Failures without dom0: no channel; a channel that never answers.
    let dir = socket.parent().unwrap_or(Path::new("."));
    hv.fails(&["list"], Some(&dir.join("absent.sock")), "no control channel")?;
    let mute = dir.join("mute.sock");
    let _ = std::fs::remove_file(&mute);
    let listener = UnixListener::bind(&mute)?;
    let t = Instant::now();
    let out = hv.cmd_with(&mute, "1", &["list"]).output()?;
    drop(listener);
    let _ = std::fs::remove_file(&mute);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && err.contains("did not answer within 1.0 s"),
        "mute channel: {out:?}"
    );
    hv.log.push(format!(
        "hvctl list (mute socket, --timeout 1) -> 1 after {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        err.trim()
    ));

    hv.ok(&["poweroff"])?;
    Ok(hv.log)
}
