//! The PV console part of the `disk-qemu` and `disk-bochs` boot tests: the `pvcon` guest
//! (`tests/guests/src/bin/pvcon.rs`) writes only through the console page dom0 serves, and
//! reads its input there. `hvctl console` shows what it wrote (dom0's buffer after ring 0's
//! console) and sends what is typed; none of it passes through ring 0's console. A hostile
//! frontend's bogus `out_prod` costs dom0 nothing while another domain's console goes on.

use crate::emu::Running;
use crate::hvctl_test::{Hv, console_until};
use anyhow::{Result, ensure};
use std::time::{Duration, Instant};

/// Bytes of the guest's long line (`LONG` there).
const LONG: usize = 3000;

/// Waits for `name` to shut down with status 0, then destroys it.
fn shut_down_and_destroy(hv: &mut Hv<'_>, name: &str) -> Result<()> {
    let t = Instant::now();
    loop {
        let d = hv.json(&["list", name])?;
        let d = &d[0];
        if d["state"] == "shutdown" {
            ensure!(d["shutdown_status"] == 0, "{name} shut down with {d}");
            break;
        }
        ensure!(t.elapsed() < Duration::from_secs(60), "{name} did not shut down: {d}");
        std::thread::sleep(Duration::from_millis(200));
    }
    hv.ok(&["destroy", name])?;
    Ok(())
}

/// The test's steps, on a dom0 serving the control protocol with the `pvcon` boot module.
pub fn drive(run: &mut Running, hv: &mut Hv<'_>) -> Result<()> {
    hv.json(&["create", "pvcon", "--module", "pvcon", "-m", "4M"])?;
    let text = console_until(hv, "pvcon", "pvcon: type lines; quit ends")?;
    ensure!(text.contains("pvcon: hello through dom0\n"), "pvcon's console: {text:?}");
    let long: String = (0..LONG).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    ensure!(
        text.contains(&format!("pvcon: long line: {long}\n")),
        "the long line did not arrive intact: {text:?}"
    );
    let hello = text.lines().find(|l| l.contains("hello through dom0")).unwrap_or_default();
    hv.log.push(format!("{}; the {LONG}-byte line intact", hello.trim()));

    // A hostile frontend meanwhile: `out_prod` far ahead. dom0 takes a ring's worth (zeros)
    // and goes on; the domain's next line arrives.
    hv.json(&["create", "pvcon-evil", "--module", "pvcon", "-m", "4M", "-c", "hostile"])?;
    let evil = console_until(hv, "pvcon-evil", "pvcon: after garbage")?;
    ensure!(
        evil.len() <= 2048 + 64,
        "more than a ring's worth from a bogus out_prod: {}",
        evil.len()
    );
    shut_down_and_destroy(hv, "pvcon-evil")?;
    hv.log.push(format!(
        "pvcon-evil: a bogus out_prod gave {} bytes, then \"pvcon: after garbage\"",
        evil.len()
    ));

    // Typed input reaches the first domain through its console page, and it answers there.
    let typed = hv.console_typed("pvcon", b"ping\nquit\n", Duration::from_secs(120))?;
    ensure!(typed.contains("pvcon: echo ping\n"), "no echo: {typed:?}");
    ensure!(typed.contains("pvcon: bye\n"), "no bye: {typed:?}");
    hv.log.push("pvcon: typed \"ping\", got \"pvcon: echo ping\" and \"pvcon: bye\"".into());
    shut_down_and_destroy(hv, "pvcon")?;

    // Nothing of it went through ring 0's console (which microhv's log shows as `[dN] ...`).
    let log = run.log();
    ensure!(
        !log.contains("pvcon: hello through dom0") && !log.contains("pvcon: echo"),
        "the PV console's lines reached ring 0's console"
    );
    Ok(())
}
