//! The `disk-qemu` and `disk-bochs` boot tests: dom0 with a disk of its own (a fresh image in
//! the run's directory, made with mtools like `cargo xtask disk`), driven by `hvctl` as a
//! subprocess. Domains are built from the disk's files (`--kernel dom0:/PATH`, an initrd from
//! the disk), the figures of a large read are reported, and each error a user can meet gets
//! its one-line reason while dom0 goes on serving.

use crate::boots::{self, Check};
use crate::emu::{Emulator, Running, Spec};
use crate::hvctl_test::{Hv, build_hvctl, console_until, domain, num};
use crate::images::{Images, Module};
use anyhow::{Context, Result, ensure};
use microhv_core::status::StopStatus;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes of the large file whose read gives the throughput figure: enough to time, little
/// enough for Bochs (which reads about 1 MiB/s).
fn blob_bytes(emulator: Emulator) -> usize {
    match emulator {
        Emulator::Qemu => 16 << 20,
        Emulator::Bochs => 4 << 20,
    }
}

/// Deterministic bytes that do not compress (xorshift64*).
fn blob(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// FNV-1a, as the multiboot test kernel prints it for each of its modules.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The boot: dom0 serving the control protocol, the `hello` guest as its one boot module (for
/// the comparison with a build from memory), COM2 on a socket and the disk in the run's
/// directory.
pub fn spec(name: &str, emulator: Emulator, images: &Images) -> Spec {
    let mut s = boots::spec(name, emulator, images, "");
    s.modules.push(Module { path: images.guest("hello"), args: String::new() });
    s.modules.push(Module { path: images.guest("vbd"), args: String::new() });
    s.modules.push(Module { path: images.guest("pvcon"), args: String::new() });
    let dir = crate::images::out_dir().join(name);
    s.control = Some(dir.join("dom0.sock"));
    s.disk = Some(dir.join("disk.img"));
    s
}

/// What the log must show.
pub fn checks() -> Vec<Check> {
    vec![
        Check::Status(StopStatus::Ok),
        Check::Contains("[d0] disk: ata0 master "),
        Check::Contains(
            "1048320 sectors (511 MiB), LBA48; FAT32 (partition type 0x0c), label MICROHV",
        ),
        Check::Contains("create \"from-disk\" from disk \"/guests/hello\" (+0) -> d"),
        Check::Contains("[d0] ctl: built from dom0's disk: "),
        Check::Contains("-> error: dom0's disk: /guests/nothing: no such file or directory"),
        Check::Contains("[d0] powering off at the tools' request"),
    ]
}

/// Makes the test's disk before the boot: the guests, the multiboot kernel, a large file and
/// a text file that is no kernel.
pub fn prepare(spec: &Spec, images: &Images) -> Result<()> {
    let img = spec.disk.as_deref().context("the disk test has a disk")?;
    let dir = img.parent().context("the disk lies in the run's directory")?;
    std::fs::create_dir_all(dir)?;
    let big = dir.join("blob.bin");
    std::fs::write(&big, blob(blob_bytes(spec.emulator)))?;
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "this file is not a kernel\n")?;
    let hello = images.guest("hello");
    let mbkernel = images.guest("mbkernel");
    crate::disk::with_files(
        img,
        &[
            (&hello, "/guests/hello"),
            (&mbkernel, "/boot/mbkernel"),
            (&big, "/data/blob.bin"),
            (&notes, "/data/notes.txt"),
        ],
    )
}

/// The figure dom0 logs after a build from its disk: (bytes, milliseconds, KiB/s).
fn build_figure(log: &str, bytes: usize) -> Option<(u64, u64, u64)> {
    let key = format!("built from dom0's disk: {bytes} bytes in ");
    // The whole line: the log may have been read while dom0 was half-way through it.
    let line = log.lines().find(|l| l.contains(&key) && l.ends_with("KiB/s)"))?;
    let rest = &line[line.find(&key)? + key.len()..];
    let mut nums = rest.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty());
    Some((bytes as u64, nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
}

/// The test's steps; the lines of its report.
pub fn drive(run: &mut Running, socket: &Path, images: &Images) -> Result<Vec<String>> {
    let bin = build_hvctl()?;
    ensure!(
        run.wait_for("serving the control protocol", Duration::from_secs(120))?,
        "dom0 did not start serving"
    );
    let mut hv = Hv::new(&bin, socket);

    let info = hv.json(&["disk", "info"])?;
    ensure!(num(&info, "sectors")? == crate::disk::SECTORS, "disk info: {info}");
    ensure!(info["filesystem"].as_str().is_some_and(|f| f.starts_with("FAT32")), "{info}");
    let model = info["model"].as_str().unwrap_or("").to_string();
    ensure!(!model.is_empty(), "disk info without a model: {info}");
    let root = hv.json(&["disk", "ls"])?;
    let names: Vec<&str> = root["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    ensure!(names == ["guests", "boot", "data"], "disk ls /: {root}");
    let hello = std::fs::read(images.guest("hello"))?;
    let guests = hv.json(&["disk", "ls", "dom0:/guests"])?;
    let h = domain(&guests["entries"], "hello")?;
    ensure!(
        num(h, "size")? == hello.len() as u64 && h["dir"] == false,
        "disk ls /guests: {guests}"
    );

    // A PVH kernel from the disk: it runs and shuts down with the status it was given.
    let d = hv.json(&[
        "create",
        "from-disk",
        "--kernel",
        "dom0:/guests/hello",
        "-m",
        "4M",
        "-c",
        "status=5",
    ])?;
    let id = num(&d, "domid")?;
    let text = console_until(&mut hv, "from-disk", "hello from domU")?;
    ensure!(text.contains(&format!("hello from domU {id} (cmdline \"status=5\")")), "{text:?}");
    // A multiboot kernel with an initrd from the disk: it finds the module intact.
    hv.json(&[
        "create",
        "mb-disk",
        "--kernel",
        "dom0:/boot/mbkernel",
        "--initrd",
        "dom0:/guests/hello",
        "-m",
        "8M",
    ])?;
    let want = format!(": {} bytes, fnv1a {:#010x}, cmdline \"hello\"", hello.len(), fnv1a(&hello));
    let text = console_until(&mut hv, "mb-disk", "mbkernel: exiting with status 7")?;
    ensure!(text.contains("mbkernel: 1 module(s)") && text.contains(&want), "{text:?}");

    // A large module, read from the disk: the throughput figure.
    let data = hv.json(&["disk", "ls", "/data"])?;
    let big = num(domain(&data["entries"], "blob.bin")?, "size")? as usize;
    let t = Instant::now();
    hv.json(&[
        "create",
        "big",
        "--kernel",
        "dom0:/guests/hello",
        "--initrd",
        "dom0:/data/blob.bin",
        "-m",
        "32M",
        "--paused",
    ])?;
    let wall = t.elapsed();
    let total = hello.len() + big;
    let key = format!("built from dom0's disk: {total} bytes");
    let start = Instant::now();
    let (bytes, ms, kib_s) = loop {
        // `wait_for` reads what COM1 got meanwhile.
        ensure!(run.wait_for(&key, Duration::from_secs(30))?, "no figure in dom0's log");
        if let Some(f) = build_figure(&run.log(), total) {
            break f;
        }
        ensure!(start.elapsed() < Duration::from_secs(30), "the figure's line never ended");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Both clocks: dom0's is the TSC at the rate microhv measured against the PIT at boot,
    // exact under Bochs (where it counts instructions) but off under a loaded QEMU, whose PIT
    // and TSC follow the host; hvctl's is the host's.
    hv.log.push(format!(
        "read from dom0's disk: {bytes} bytes in {ms} ms by dom0's clock ({kib_s} KiB/s); hvctl's create took {:.2} s ({:.0} KiB/s)",
        wall.as_secs_f64(),
        bytes as f64 / 1024.0 / wall.as_secs_f64().max(1e-9)
    ));
    // The same kernel from a boot module, for comparison.
    let t = Instant::now();
    hv.json(&["create", "from-module", "--module", "hello", "-m", "4M", "--paused"])?;
    hv.log.push(format!("the same kernel from a boot module: {:.2} s", t.elapsed().as_secs_f64()));

    // Each mistake gets its one-line reason; dom0 goes on serving.
    hv.fails(
        &["create", "e", "--kernel", "dom0:/guests/nothing"],
        None,
        "dom0's disk: /guests/nothing: no such file or directory",
    )?;
    hv.fails(
        &["create", "e", "--kernel", "dom0:/guests"],
        None,
        "dom0's disk: /guests: is a directory",
    )?;
    hv.fails(
        &["create", "e", "--kernel", "dom0:/data/notes.txt"],
        None,
        "image rejected: not a PVH ELF or multiboot kernel",
    )?;
    hv.fails(
        &["create", "e", "--kernel", "dom0:/guests/hello", "--initrd", "dom0:/nothing"],
        None,
        "dom0's disk: /nothing: no such file or directory",
    )?;
    hv.fails(&["create", "e", "--kernel", "dom0:guests/hello"], None, "not an absolute path")?;
    hv.fails(
        &["create", "e", "--kernel", "dom0:/guests/hello", "--initrd", "hello"],
        None,
        "takes its modules from the disk too",
    )?;
    hv.fails(
        &["create", "e", "--module", "hello", "--initrd", "dom0:/guests/hello"],
        None,
        "need a kernel from it too",
    )?;
    hv.fails(&["create", "from-disk", "--kernel", "dom0:/guests/hello"], None, "EEXIST")?;
    hv.fails(&["disk", "ls", "/nothing"], None, "no such file or directory")?;
    hv.fails(&["disk", "ls", "/data/notes.txt"], None, "not a directory")?;

    let list = hv.json(&["list"])?;
    ensure!(list.as_array().map(Vec::len) == Some(5), "list: {list}");
    ensure!(domain(&list, "dom0")?["state"] == "running", "{list}");
    ensure!(domain(&list, "from-disk")?["shutdown_status"] == 5, "{list}");
    for d in ["from-disk", "mb-disk", "big", "from-module"] {
        hv.ok(&["destroy", d])?;
    }
    ensure!(hv.json(&["list"])?.as_array().map(Vec::len) == Some(1), "after destroy");

    // The PV console dom0 serves every PVH domain.
    crate::pvcon_test::drive(run, &mut hv)?;

    // Virtual disks: across destroys, between names, against hostile frontends, and (below)
    // across a restart of the emulator on the same image.
    crate::vbd_test::first_boot(&mut hv)?;
    hv.ok(&["poweroff"])?;
    let spec = run.spec().clone();
    let again = crate::vbd_test::second_boot(run, &spec, images, &bin)?;
    hv.log.extend(again);
    Ok(hv.log)
}
