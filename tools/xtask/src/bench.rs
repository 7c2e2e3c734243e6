//! `cargo xtask bench`: cost figures under an emulator, one table, and the budgets CI holds
//! them to (`tools/xtask/budgets.txt`). Under Bochs the TSC counts retired instructions, so
//! every figure is an exact count that repeats from run to run: a budget check on them is
//! deterministic, not a timing.

use crate::boots;
use crate::emu::{self, Emulator};
use crate::images::{Images, Module};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// The CPU models the figures are taken on: VMX, then SVM.
pub const CPUS: [&str; 2] = ["corei7_skylake_x", "ryzen"];

/// One run's figures, in the order they were found: (name, TSC ticks).
pub type Figures = Vec<(String, u64)>;

/// Boots microhv with dom0 in `bench` mode and the `bench` guest under `emulator` (with
/// Bochs CPU model `cpu`), and returns the figures its log reports.
pub fn measure(emulator: Emulator, cpu: Option<&str>, images: &Images) -> Result<Figures> {
    let name = format!("bench-{emulator:?}-{}", cpu.unwrap_or("default")).to_lowercase();
    let mut spec = boots::spec(&name, emulator, images, "smoke bench");
    spec.cpu = cpu.map(str::to_string);
    spec.modules.push(Module { path: images.guest("bench"), args: String::new() });
    let out = emu::boot(&spec, images)?;
    let figures = parse(&out.log);
    if figures.len() < 3 || out.log.contains("bench: failed") {
        bail!("the bench run reported too little; log: {}", out.dir.join("com1.log").display());
    }
    Ok(figures)
}

/// The figures of a bench log: every `bench: NAME = N` line (the first of each name; TSC
/// readings themselves are not figures), and the boot's two spans from its TSC marks.
pub fn parse(log: &str) -> Figures {
    let mut f: Figures = Vec::new();
    let mark = |key: &str| crate::figure(log, key);
    if let Some(start) = mark("starting (tsc ") {
        f.push(("boot: power-on to microhv entry".into(), start));
        if let Some(ready) = mark("dom0 ready (domid 0, tsc ") {
            f.push(("boot: microhv entry to dom0 ready".into(), ready.saturating_sub(start)));
        }
    }
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("bench: ") else { continue };
        let Some((name, value)) = rest.split_once(" = ") else { continue };
        let Ok(v) = value.trim().parse::<u64>() else { continue };
        if !name.contains("tsc") && !f.iter().any(|(n, _)| n == name) {
            f.push((name.to_string(), v));
        }
    }
    f
}

/// A figure's budget per CPU model (`None`: not budgeted on that one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The figure's name.
    pub name: String,
    /// Limit on VMX (`corei7_skylake_x`) and on SVM (`ryzen`).
    pub limits: [Option<u64>; 2],
}

/// The budgets file.
pub fn budgets_path() -> PathBuf {
    crate::images::root().join("tools/xtask/budgets.txt")
}

/// Parses `name | vmx | svm | why` lines (`-` for no limit; `#` starts a comment line).
pub fn parse_budgets(text: &str) -> Result<Vec<Budget>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() < 3 {
            bail!("budgets line {}: want `name | vmx | svm | why`", i + 1);
        }
        let limit = |s: &str| -> Result<Option<u64>> {
            if s == "-" {
                return Ok(None);
            }
            let n = s.replace([',', '_'], "");
            n.parse().map(Some).with_context(|| format!("budgets line {}: {s:?}", i + 1))
        };
        out.push(Budget { name: cols[0].to_string(), limits: [limit(cols[1])?, limit(cols[2])?] });
    }
    Ok(out)
}

/// The budgets a set of runs (one per [`CPUS`] entry) breaks, as printable lines; a budgeted
/// figure a run did not report breaks its budget too.
pub fn over_budget(budgets: &[Budget], runs: &[Figures]) -> Vec<String> {
    let mut bad = Vec::new();
    for b in budgets {
        for (k, run) in runs.iter().enumerate() {
            let Some(limit) = b.limits.get(k).copied().flatten() else { continue };
            match run.iter().find(|(n, _)| *n == b.name) {
                Some((_, v)) if *v <= limit => {}
                Some((_, v)) => bad.push(format!("{} on {}: {v} > {limit}", b.name, CPUS[k])),
                None => bad.push(format!("{} on {}: not reported", b.name, CPUS[k])),
            }
        }
    }
    bad
}

/// The table: one row per figure, one column per run.
pub fn table(runs: &[(String, Figures)]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for (_, f) in runs {
        for (n, _) in f {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    let mut s = String::from("| figure (TSC ticks) |");
    for (label, _) in runs {
        s += &format!(" {label} |");
    }
    s += "\n|---|";
    s += &"---|".repeat(runs.len());
    for n in names {
        s += &format!("\n| {n} |");
        for (_, f) in runs {
            match f.iter().find(|(m, _)| m == n) {
                Some((_, v)) => s += &format!(" {v} |"),
                None => s += " - |",
            }
        }
    }
    s
}

/// Runs the figures under Bochs on both CPU models, prints the table, and checks the budgets.
pub fn bench_and_check(images: &Images) -> Result<bool> {
    let mut runs = Vec::new();
    for cpu in CPUS {
        runs.push((format!("Bochs {cpu}"), measure(Emulator::Bochs, Some(cpu), images)?));
    }
    println!("{}", table(&runs));
    let text = std::fs::read_to_string(budgets_path())
        .with_context(|| format!("reading {}", budgets_path().display()))?;
    let figures: Vec<Figures> = runs.into_iter().map(|(_, f)| f).collect();
    let bad = over_budget(&parse_budgets(&text)?, &figures);
    for b in &bad {
        println!("over budget: {b}");
    }
    Ok(bad.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "[hv] microhv 0.1.0 starting (tsc 1000)\n\
        [d0] dom0 ready (domid 0, tsc 1500)\n\
        [d0] bench: null hypercall round trip = 850\n\
        [d1] bench: first instruction tsc = 123456\n\
        [d1] bench: cpuid exit = 300\n\
        [d2] bench: cpuid exit = 310\n";

    #[test]
    fn figures_come_from_bench_lines_and_boot_marks() {
        let f = parse(LOG);
        let get = |n: &str| f.iter().find(|(m, _)| m == n).map(|x| x.1);
        assert_eq!(get("boot: power-on to microhv entry"), Some(1000));
        assert_eq!(get("boot: microhv entry to dom0 ready"), Some(500));
        assert_eq!(get("null hypercall round trip"), Some(850));
        assert_eq!(get("cpuid exit"), Some(300), "the first of a name");
        assert!(f.iter().all(|(n, _)| !n.contains("tsc")));
    }

    #[test]
    fn budgets_are_checked_per_cpu_and_missing_figures_fail() {
        let b = parse_budgets(
            "# c\nnull hypercall round trip | 900 | - | why\ncpuid exit | 1,000 | 200 |\n",
        )
        .expect("parses");
        assert_eq!(b[1].limits, [Some(1000), Some(200)]);
        let vmx = parse(LOG);
        let svm = vec![("null hypercall round trip".to_string(), 5000)];
        let bad = over_budget(&b, &[vmx, svm]);
        assert_eq!(bad, ["cpuid exit on ryzen: not reported"]);
        assert!(parse_budgets("x | y | 1").is_err());
        assert!(table(&[("a".into(), parse(LOG))]).contains("| cpuid exit | 300 |"));
    }
}
