//! The conformance framework: each case prints `PASS area/case` or `FAIL area/case: ...`, and
//! each test kernel ends with one verdict line, `conformance AREA: N passed, M failed` (in the
//! manner of Xen's test framework). The host harness (`cargo xtask conformance`) reads them.
#![no_std]

#[cfg(not(image))]
extern crate std;

pub mod arch;
pub mod grant;
pub mod upcall;

use abi::Errno;
use core::fmt;
use guest_rt::println;

/// Counts and reports cases.
pub struct Suite {
    area: &'static str,
    /// Cases that passed.
    pub passed: u32,
    /// Cases that failed.
    pub failed: u32,
}

/// A hypercall result as text: the value, or the error's name.
pub struct Ret(pub i64);

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match abi::guest::decode_ret(self.0) {
            Ok(v) => write!(f, "{v}"),
            // Debug prints the variant: the symbolic name (EPERM, …).
            Err(e) if Errno::from_code(-self.0).is_some() => write!(f, "{e:?}"),
            Err(_) => write!(f, "undefined ({})", self.0),
        }
    }
}

impl Suite {
    /// A suite for `area`.
    pub const fn new(area: &'static str) -> Self {
        Self { area, passed: 0, failed: 0 }
    }

    /// Records a case.
    pub fn check(&mut self, case: &str, ok: bool, detail: fmt::Arguments<'_>) -> bool {
        if ok {
            self.passed += 1;
            println!("PASS {}/{case}", self.area);
        } else {
            self.failed += 1;
            println!("FAIL {}/{case}: {detail}", self.area);
        }
        ok
    }

    /// Records a hypercall that must return exactly `want` (a value, or `-errno`).
    pub fn expect(&mut self, case: &str, got: i64, want: i64) -> bool {
        self.check(case, got == want, format_args!("got {}, want {}", Ret(got), Ret(want)))
    }

    /// Records a hypercall that must fail with `e`.
    pub fn expect_err(&mut self, case: &str, got: i64, e: Errno) -> bool {
        self.expect(case, got, e.to_ret())
    }

    /// Records a hypercall that must succeed; returns its value.
    pub fn expect_ok(&mut self, case: &str, got: i64) -> Option<u64> {
        let ok = got >= 0;
        self.check(case, ok, format_args!("got {}", Ret(got)));
        ok.then_some(got as u64)
    }

    /// Adds another suite's counts (a domU's verdict read back by dom0).
    pub fn absorb(&mut self, passed: u32, failed: u32) {
        self.passed += passed;
        self.failed += failed;
    }

    /// Prints the verdict line.
    pub fn verdict(&self) {
        println!("conformance {}: {} passed, {} failed", self.area, self.passed, self.failed);
    }
}

/// A raw hypercall from ring 0.
pub fn call(op: u64, args: [u64; 5]) -> i64 {
    // SAFETY: the conformance kernels pass addresses of their own buffers (or deliberately bad
    // ones, which microhv must refuse without writing); nothing else of theirs is written.
    unsafe { guest_rt::hv().call(op, args) }
}

/// A seeded xorshift64* generator (the storms must be reproducible).
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced: xorshift cannot leave 0).
    pub const fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Finds the last `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// Parses the last `conformance AREA: N passed, M failed` line of console text.
pub fn parse_verdict(text: &[u8]) -> Option<(u32, u32)> {
    let at = find(text, b"conformance ")?;
    let line = &text[at..];
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let s = core::str::from_utf8(line).ok()?;
    let (_, counts) = s.split_once(": ")?;
    let mut nums = counts.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty());
    Some((nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
}

/// TSC ticks in `ms` milliseconds (microhv's timing leaf).
pub fn ticks(ms: u64) -> u64 {
    u64::from(core::arch::x86_64::__cpuid(abi::cpuid::LEAF_TIMING).eax).max(1) * ms
}

/// Yields until `done` holds (true) or about `ms` milliseconds passed (false).
pub fn poll(ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = guest_rt::rdtsc();
    while !done() {
        if guest_rt::rdtsc().saturating_sub(start) > ticks(ms) {
            return false;
        }
        let _ = guest_rt::hv().yield_now();
    }
    true
}
