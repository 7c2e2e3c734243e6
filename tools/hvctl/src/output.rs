//! What hvctl prints: a table (or a line) for people, JSON with stable field names for
//! scripts. Names and states are strings in JSON; sizes are bytes.

use crate::client::Hello;
use abi::hypercall::ShutdownReason;
use abi::proto::PROTOCOL_VERSION;
use abi::split_version_word;
use abi::types::{
    CrashReason, DOMINFO_PRIVILEGED, DomainInfo, DomainState, DomainStats, ExitReason, PhysInfo,
};
use comfy_table::{CellAlignment, Table, presets};
use serde_json::{Value, json};

fn print_json(v: &Value) {
    // Serialising a `Value` cannot fail.
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.iter().copied());
    t
}

/// Right-aligns every column from `first` on (numbers).
fn numeric_from(t: &mut Table, first: usize) {
    let n = t.column_count();
    for i in first..n {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// A domain's state as hvctl prints it.
pub fn state_name(i: &DomainInfo) -> &'static str {
    DomainState::from_u32(i.state).map_or("unknown", DomainState::name)
}

/// The state with its reason when stopped, for people.
pub fn state_text(i: &DomainInfo) -> String {
    match DomainState::from_u32(i.state) {
        Some(DomainState::Shutdown) => {
            format!("shutdown ({}, status {})", shutdown_reason(i), i.shutdown_status)
        }
        Some(DomainState::Crashed) => format!("crashed ({})", crash_reason(i)),
        _ => state_name(i).into(),
    }
}

fn stopped_as(i: &DomainInfo, s: DomainState) -> bool {
    DomainState::from_u32(i.state) == Some(s)
}

fn shutdown_reason(i: &DomainInfo) -> &'static str {
    match ShutdownReason::from_u64(i.shutdown_reason.into()) {
        Some(ShutdownReason::Poweroff) => "poweroff",
        Some(ShutdownReason::Reboot) => "reboot",
        Some(ShutdownReason::Crash) => "crash",
        None => "unknown",
    }
}

fn crash_reason(i: &DomainInfo) -> &'static str {
    CrashReason::from_u32(i.crash_reason).map_or("unknown", CrashReason::name)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

/// `version`.
pub fn version(h: &Hello, json: bool) {
    if json {
        print_json(&json!({
            "hvctl": env!("CARGO_PKG_VERSION"),
            "protocol": PROTOCOL_VERSION,
            "dom0_agent": h.agent,
            "abi": format!("{}.{}", h.abi.0, h.abi.1),
            "upload_capacity": h.upload_capacity,
        }));
    } else {
        println!("hvctl       {}", env!("CARGO_PKG_VERSION"));
        println!("protocol    {PROTOCOL_VERSION}");
        println!("dom0-agent  {}", h.agent);
        println!("microhv ABI {}.{}", h.abi.0, h.abi.1);
        println!("upload      {} KiB buffer in dom0", h.upload_capacity / 1024);
    }
}

/// `info`.
pub fn phys_info(p: &PhysInfo, json: bool) {
    let (major, minor) = split_version_word(p.abi_version);
    let virt = match p.virt {
        abi::types::VIRT_VMX => "vmx",
        abi::types::VIRT_SVM => "svm",
        _ => "unknown",
    };
    if json {
        print_json(&json!({
            "total_bytes": p.total_bytes,
            "free_bytes": p.free_bytes,
            "dirty_free_bytes": p.dirty_free_bytes,
            "hv_bytes": p.hv_bytes,
            "mmu_pages_floor": p.mmu_pages_floor,
            "cpus": p.cpus,
            "domains": p.domains,
            "max_domains": p.max_domains,
            "abi": format!("{major}.{minor}"),
            "virt": virt,
        }));
        return;
    }
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    for (k, v) in [
        ("virtualization", virt.to_string()),
        ("cpus", p.cpus.to_string()),
        ("total memory", format!("{} MiB", mib(p.total_bytes))),
        ("free memory", format!("{} MiB", mib(p.free_bytes))),
        ("  not yet scrubbed", format!("{} MiB", mib(p.dirty_free_bytes))),
        ("microhv memory", format!("{} MiB", mib(p.hv_bytes))),
        ("domains", format!("{} of {}", p.domains, p.max_domains)),
        ("mmu pages floor", p.mmu_pages_floor.to_string()),
        ("abi", format!("{major}.{minor}")),
    ] {
        t.add_row([k.to_string(), v]);
    }
    println!("{t}");
}

fn domain_json(i: &DomainInfo) -> Value {
    json!({
        "domid": i.domid,
        "name": i.name_str(),
        "state": state_name(i),
        "dom0": i.flags & DOMINFO_PRIVILEGED != 0,
        "vcpus": i.vcpus,
        "mem_bytes": i.mem_bytes,
        "mmu_used": i.mmu_used,
        "mmu_max": i.mmu_max,
        "mmu_requested": i.mmu_requested,
        "exits": i.exits,
        "ept_faults": i.ept_faults,
        "mmu_zaps": i.mmu_zaps,
        "cpu_time": i.cpu_time,
        // Meaningful only once stopped: null before, so scripts need not know the rule.
        "shutdown_reason": stopped_as(i, DomainState::Shutdown).then(|| shutdown_reason(i)),
        "shutdown_status": stopped_as(i, DomainState::Shutdown).then_some(i.shutdown_status),
        "crash_reason": stopped_as(i, DomainState::Crashed).then(|| crash_reason(i)),
    })
}

/// `list`.
pub fn list(all: &[DomainInfo], json: bool) {
    if json {
        print_json(&Value::Array(all.iter().map(domain_json).collect()));
        return;
    }
    let mut t =
        table(&["Name", "ID", "State", "VCPUs", "Mem(MiB)", "MMU used/max", "Exits", "CPU(Mtick)"]);
    for i in all {
        t.add_row([
            i.name_str().to_string(),
            i.domid.to_string(),
            state_text(i),
            i.vcpus.to_string(),
            mib(i.mem_bytes),
            format!("{}/{}", i.mmu_used, i.mmu_max),
            i.exits.to_string(),
            format!("{:.1}", i.cpu_time as f64 / 1e6),
        ]);
    }
    numeric_from(&mut t, 3);
    println!("{t}");
}

/// `create`.
pub fn created(name: &str, domid: u32, state: &str, json: bool) {
    if json {
        print_json(&json!({ "domid": domid, "name": name, "state": state }));
    } else {
        println!("created domain {name} (id {domid}), {state}");
    }
}

/// Commands without a result.
pub fn ok(what: &str, domid: Option<u32>, json: bool) {
    match (json, domid) {
        (true, Some(d)) => print_json(&json!({ "domid": d, "result": "ok" })),
        (true, None) => print_json(&json!({ "result": "ok" })),
        (false, Some(d)) => println!("domain {d}: {what}"),
        (false, None) => println!("{what}"),
    }
}

/// `mmu-pages`.
pub fn mmu_pages(domid: u32, pages: u64, json: bool) {
    if json {
        print_json(&json!({ "domid": domid, "mmu_pages": pages }));
    } else {
        println!("domain {domid}: {pages} MMU pages");
    }
}

/// `console --json`: one object per chunk of output.
pub fn console_chunk(domid: u32, data: &[u8]) {
    let v = json!({ "domid": domid, "output": String::from_utf8_lossy(data) });
    println!("{v}");
}

/// `stats`.
pub fn stats(s: &DomainStats, json: bool) {
    let exits: Vec<(&str, u64)> = ExitReason::ALL
        .iter()
        .map(|r| (r.name(), s.exits_by_reason.get(*r as usize).copied().unwrap_or(0)))
        .collect();
    let counters = [
        ("hypercalls", s.hypercalls),
        ("faults_fixed", s.faults_fixed),
        ("faults_spurious", s.faults_spurious),
        ("faults_mmio", s.faults_mmio),
        ("mmu_pages_allocated", s.mmu_pages_allocated),
        ("mmu_pages_zapped", s.mmu_pages_zapped),
        ("mmu_reclaims", s.mmu_reclaims),
        ("tlb_flushes", s.tlb_flushes),
        ("mmu_used", s.mmu_used),
        ("mmu_max", s.mmu_max),
        ("mmu_requested", s.mmu_requested),
        ("mmu_frames", s.mmu_frames),
        ("cpu_time", s.cpu_time),
    ];
    if json {
        let mut m = serde_json::Map::new();
        m.insert("domid".into(), s.domid.into());
        let e: serde_json::Map<String, Value> =
            exits.iter().map(|(k, v)| ((*k).to_string(), (*v).into())).collect();
        m.insert("exits".into(), Value::Object(e));
        for (k, v) in counters {
            m.insert(k.into(), v.into());
        }
        // One line per sample, so `--watch --json` is a JSON-lines stream.
        println!("{}", Value::Object(m));
        return;
    }
    let mut t = table(&["Exit reason", "Count", "", "Counter", "Value"]);
    let rows = exits.len().max(counters.len());
    for i in 0..rows {
        let (a, b) = exits
            .get(i)
            .map_or((String::new(), String::new()), |(k, v)| ((*k).into(), v.to_string()));
        let (c, d) = counters
            .get(i)
            .map_or((String::new(), String::new()), |(k, v)| (k.replace('_', " "), v.to_string()));
        t.add_row([a, b, String::new(), c, d]);
    }
    for col in [1, 4] {
        if let Some(c) = t.column_mut(col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    println!("domain {} statistics", s.domid);
    println!("{t}");
}

/// `modules`.
pub fn modules(mods: &[(String, u64)], json: bool) {
    if json {
        let v: Vec<Value> = mods.iter().map(|(n, s)| json!({ "name": n, "size": s })).collect();
        print_json(&Value::Array(v));
        return;
    }
    let mut t = table(&["Module", "Bytes"]);
    for (n, s) in mods {
        t.add_row([n.clone(), s.to_string()]);
    }
    numeric_from(&mut t, 1);
    println!("{t}");
}

/// An entry of a directory on dom0's disk, as hvctl keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    /// Its name.
    pub name: String,
    /// Bytes (0 for a directory).
    pub size: u64,
    /// A directory.
    pub dir: bool,
}

/// `disk ls`.
pub fn disk_list(path: &str, entries: &[DiskEntry], json: bool) {
    if json {
        let v: Vec<Value> = entries
            .iter()
            .map(|e| json!({ "name": e.name, "size": e.size, "dir": e.dir }))
            .collect();
        print_json(&json!({ "path": path, "entries": v }));
        return;
    }
    let mut t = table(&["Name", "Bytes"]);
    for e in entries {
        let name = if e.dir { format!("{}/", e.name) } else { e.name.clone() };
        t.add_row([name, if e.dir { String::new() } else { e.size.to_string() }]);
    }
    numeric_from(&mut t, 1);
    println!("{t}");
}

/// `disk info`.
pub fn disk_info(model: &str, sectors: u64, lba48: bool, filesystem: &str, json: bool) {
    if json {
        print_json(&json!({
            "model": model,
            "sectors": sectors,
            "bytes": sectors * 512,
            "lba48": lba48,
            "filesystem": filesystem,
        }));
        return;
    }
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.add_row(["model", model]);
    t.add_row(["size", &format!("{sectors} sectors ({:.1} MiB)", sectors as f64 / 2048.0)]);
    t.add_row(["addressing", if lba48 { "48-bit LBA" } else { "28-bit LBA" }]);
    t.add_row(["file system", filesystem]);
    println!("{t}");
}
