//! The virtual-disk part of the `disk-qemu` and `disk-bochs` boot tests: domUs running the `vbd`
//! frontend guest (`tests/guests/src/bin/vbd.rs`) against dom0's PV block backend, driven by
//! `hvctl create --disk`. Data written by one domain is read back by the next of its name,
//! is invisible to a domain of another name, and survives a restart of the emulator; hostile
//! frontends get errors or are disconnected while a bystander's I/O goes on.

use crate::emu::{self, Running, Spec};
use crate::hvctl_test::{Hv, console_until, num};
use crate::images::Images;
use anyhow::{Context, Result, ensure};
use std::path::Path;
use std::time::{Duration, Instant};

/// Memory of each frontend domain.
const MEM: &str = "4M";

/// Runs the `vbd` guest as `name` with a disk of `disk` and `cmdline`, waits for its verdict
/// line (`vbd: ...` with `want`), checks its exit status and destroys it; the verdict line.
fn frontend(hv: &mut Hv<'_>, name: &str, disk: &str, cmdline: &str, want: &str) -> Result<String> {
    start(hv, name, disk, cmdline)?;
    finish(hv, name, want)
}

fn start(hv: &mut Hv<'_>, name: &str, disk: &str, cmdline: &str) -> Result<()> {
    hv.json(&["create", name, "--module", "vbd", "-m", MEM, "--disk", disk, "-c", cmdline])?;
    Ok(())
}

/// Waits for `name`'s verdict containing `want`, then for its shutdown with status 0, and
/// destroys it.
fn finish(hv: &mut Hv<'_>, name: &str, want: &str) -> Result<String> {
    let text = console_until(hv, name, want)?;
    let line = text.lines().find(|l| l.contains(want)).unwrap_or_default().trim().to_string();
    stopped(hv, name, &text)?;
    // Its verdict, and the figures and complaints before it.
    for l in text.lines().filter(|l| l.contains("vbd: ") && !l.contains("vbd: connected")) {
        hv.log.push(format!("{name}: {}", l.trim()));
    }
    Ok(line)
}

/// Waits for `name` to shut down with status 0 and destroys it (`text`: its console, for the
/// error).
fn stopped(hv: &mut Hv<'_>, name: &str, text: &str) -> Result<()> {
    let t = Instant::now();
    loop {
        let d = hv.json(&["list", name])?;
        let d = &d[0];
        if d["state"] == "shutdown" {
            ensure!(d["shutdown_status"] == 0, "{name} shut down with {d}: {text:?}");
            break;
        }
        ensure!(t.elapsed() < Duration::from_secs(60), "{name} did not shut down: {d}");
        std::thread::sleep(Duration::from_millis(200));
    }
    hv.ok(&["destroy", name])?;
    Ok(())
}

/// The last `vbd: loop: round N` in `text` (0 if none).
fn rounds(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split("vbd: loop: round ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// The steps on the first boot, before dom0 powers off.
pub fn first_boot(hv: &mut Hv<'_>) -> Result<()> {
    let free = |hv: &mut Hv<'_>| -> Result<u64> { num(&hv.json(&["info"])?, "free_bytes") };
    let free_before = free(hv)?;
    // Written by one domain, read back by the next of its name.
    frontend(hv, "vbd-a", "1M", "write=11", "wrote 2048 sectors with pattern 11: ok")?;
    frontend(hv, "vbd-a", "1M", "read=11", "read 2048 sectors: pattern 11: ok")?;
    // Another name is another disk: zeros, and what it writes leaves vbd-a's data alone.
    frontend(hv, "vbd-b", "1M", "read=0", "read 2048 sectors: pattern 0: ok")?;
    frontend(hv, "vbd-b", "1M", "write=22", "wrote 2048 sectors with pattern 22: ok")?;
    frontend(hv, "vbd-a", "1M", "read=11", "read 2048 sectors: pattern 11: ok")?;
    // The same name with another size is refused, and the create leaves nothing behind.
    hv.fails(
        &["create", "vbd-a", "--module", "vbd", "-m", MEM, "--disk", "2M"],
        None,
        "the virtual disk exists with another size (1024 KiB)",
    )?;
    ensure!(
        hv.json(&["list"])?.as_array().map(Vec::len) == Some(1),
        "a failed create left a domain"
    );

    // Hostile frontends while a bystander keeps writing and checking its own disk: it must
    // have got further by the time they are done (it runs until told to stop), then finish
    // clean.
    start(hv, "bystander", "1M", "loop")?;
    let before = rounds(&console_until(hv, "bystander", "vbd: loop: round 4")?);
    frontend(hv, "evil", "1M", "hostile", "vbd: hostile: 18 checks passed, 0 failed")?;
    frontend(hv, "flood", "1M", "overflow", "vbd: disconnected: true (more requests than slots)")?;
    frontend(hv, "junk", "1M", "garbage", "vbd: disconnected: true (bad ring-ref)")?;
    let during = rounds(&hv.ok(&["console", "bystander", "--no-follow"])?);
    ensure!(during > before, "the bystander made no progress beside the hostile frontends");
    hv.log.push(format!("bystander: round {before} before the hostile frontends, {during} after"));
    let text = hv.console_typed("bystander", b"q", Duration::from_secs(120))?;
    ensure!(text.contains(" rounds of 128 sectors: ok"), "bystander: {text:?}");
    stopped(hv, "bystander", &text)?;

    // The figures: one request's round trip, and whole rings.
    frontend(hv, "bench", "2M", "bench", "vbd: bench: ok")?;
    let free_after = free(hv)?;
    ensure!(
        free_after == free_before,
        "free memory {free_before} before the virtual disks, {free_after} after"
    );
    Ok(())
}

/// Boots the emulator again on the same disk image and reads back what the first boot wrote.
pub fn second_boot(
    first: &mut Running,
    spec: &Spec,
    images: &Images,
    bin: &Path,
) -> Result<Vec<String>> {
    ensure!(first.wait_exit(Duration::from_secs(60))?, "the first boot did not end");
    let mut again = spec.clone();
    again.name = format!("{}-again", spec.name);
    let dir = crate::images::out_dir().join(&again.name);
    again.control = Some(dir.join("dom0.sock"));
    let socket = again.control.clone().context("a control socket")?;
    let mut run = emu::start(&again, images)?;
    let driven = (|| -> Result<Vec<String>> {
        ensure!(
            run.wait_for("serving the control protocol", Duration::from_secs(120))?,
            "dom0 did not start serving after the restart"
        );
        let mut hv = Hv::new(bin, &socket);
        frontend(&mut hv, "vbd-a", "1M", "read=11", "read 2048 sectors: pattern 11: ok")?;
        frontend(&mut hv, "vbd-b", "1M", "read=22", "read 2048 sectors: pattern 22: ok")?;
        hv.ok(&["poweroff"])?;
        Ok(hv.log.into_iter().map(|l| format!("after the restart: {l}")).collect())
    })();
    if driven.is_err() {
        run.kill();
    }
    let out = run.finish()?;
    let report = driven?;
    ensure!(
        out.stop().is_some_and(|(s, _)| s == microhv_core::status::StopStatus::Ok),
        "the second boot did not stop with status 0 (log in {})",
        out.dir.display()
    );
    Ok(report)
}
