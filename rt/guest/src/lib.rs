//! Runtime for the guests in this repository (dom0-agent and the test guests).
//!
//! A guest image links `rt` (entry, linker script) and this crate, emits the PVH note with
//! `rt::pvh_note!()`, and defines `rt_main`, where it calls [`init`] with the `ebx` it was
//! entered with. After that, [`println!`] writes to the domain's console through the console
//! hypercall, [`hv`] gives the hypercall wrappers, and a panic prints its message and shuts
//! the domain down with the `crash` reason.
#![no_std]

#[cfg(not(image))]
extern crate std;

use abi::guest::Hypervisor;
use abi::hypercall::{CONSOLE_WRITE_MAX, ShutdownReason};
use abi::pvh::{MemmapEntry, ModlistEntry, START_INFO_MAGIC, StartInfo};
use core::fmt::{self, Write};
use spin::{Mutex, Once};
use zerocopy::FromBytes;

static HV: Once<Hypervisor> = Once::new();
static CONSOLE: Mutex<Console> = Mutex::new(Console { buf: [0; LINE], len: 0 });

const LINE: usize = 256;

/// What the domain was started with.
pub struct Boot {
    /// The start info.
    pub info: StartInfo,
    /// The command line.
    pub cmdline: &'static str,
}

/// A boot module as [`Boot::modules`] gives it.
#[derive(Debug, Clone, Copy)]
pub struct BootModule {
    /// Its name: the first word of its command line, without a directory part.
    pub name: &'static str,
    /// Its bytes, read-only.
    pub bytes: &'static [u8],
    /// The rest of its command line.
    pub args: &'static str,
}

/// Why the runtime cannot start.
#[derive(Debug)]
pub enum InitError {
    /// microhv was not found through CPUID.
    NoHypervisor(abi::guest::DetectError),
    /// `ebx` does not point at a PVH start info.
    NoStartInfo,
}

/// Finds microhv and reads the start info at `ebx`.
pub fn init(ebx: u32) -> Result<Boot, InitError> {
    let hv = Hypervisor::detect().map_err(InitError::NoHypervisor)?;
    HV.call_once(|| hv);
    // SAFETY: the PVH convention puts the start info at `ebx`, inside this guest's identity-
    // mapped memory; it is only read, and copied out before anything could reuse the page.
    let info = unsafe { read_phys::<StartInfo>(u64::from(ebx)) };
    if info.magic != START_INFO_MAGIC {
        return Err(InitError::NoStartInfo);
    }
    // SAFETY: as above; the command line is a NUL-terminated string in the start page.
    let cmdline = unsafe { c_str(info.cmdline_paddr) };
    Ok(Boot { info, cmdline })
}

/// [`init`], or, when there is no microhv or no start info to report to, stop this vCPU.
pub fn start(ebx: u32) -> Boot {
    match init(ebx) {
        Ok(b) => b,
        Err(_) => rt_halt(),
    }
}

impl Boot {
    /// The `i`th boot module and its command line.
    pub fn module(&self, i: u32) -> Option<(ModlistEntry, &'static str)> {
        if i >= self.info.nr_modules {
            return None;
        }
        let at = self.info.modlist_paddr + u64::from(i) * size_of::<ModlistEntry>() as u64;
        // SAFETY: the module list lies in the start page microhv built for this guest.
        let e = unsafe { read_phys::<ModlistEntry>(at) };
        // SAFETY: its command line is a NUL-terminated string in the same page.
        Some((e, unsafe { c_str(e.cmdline_paddr) }))
    }

    /// The boot modules (mapped read-only by microhv): each one's name (its command line's
    /// first word, without a directory part), bytes, and the rest of its command line.
    pub fn modules(&self) -> impl Iterator<Item = BootModule> + '_ {
        (0..self.info.nr_modules).filter_map(|i| self.module(i)).map(|(m, cmdline)| {
            let mut words = cmdline.trim_start().splitn(2, char::is_whitespace);
            let first = words.next().unwrap_or("");
            // SAFETY: microhv maps each boot module read-only at the address the module list
            // gives, inside the identity-mapped 4 GiB, for as long as the domain runs.
            let bytes =
                unsafe { core::slice::from_raw_parts(m.paddr as *const u8, m.size as usize) };
            BootModule {
                name: first.rsplit('/').next().unwrap_or(first),
                bytes,
                args: words.next().unwrap_or("").trim(),
            }
        })
    }

    /// The boot module called `name`: its bytes and arguments.
    pub fn module_named(&self, name: &str) -> Option<(&'static [u8], &'static str)> {
        self.modules().find(|m| m.name == name).map(|m| (m.bytes, m.args))
    }

    /// One past the last byte of RAM in the memory map.
    pub fn ram_end(&self) -> u64 {
        (0..u64::from(self.info.memmap_entries))
            .map(|i| {
                let at = self.info.memmap_paddr + i * size_of::<MemmapEntry>() as u64;
                // SAFETY: the memory map lies in the start page microhv built for this guest.
                unsafe { read_phys::<MemmapEntry>(at) }
            })
            .filter(|e| e.kind == abi::pvh::MEMMAP_RAM)
            .map(|e| e.addr.saturating_add(e.size))
            .max()
            .unwrap_or(0)
    }

    /// True if the command line has the word `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.cmdline.split_whitespace().any(|w| w == flag)
    }

    /// The value of `key=value` on the command line.
    pub fn option(&self, key: &str) -> Option<&'static str> {
        self.cmdline
            .split_whitespace()
            .find_map(|w| w.split_once('=').and_then(|(k, v)| (k == key).then_some(v)))
    }
}

/// Reads a `T` at a guest-physical address.
///
/// # Safety
/// `pa` must be mapped (the guest is identity-mapped) and hold a `T`.
unsafe fn read_phys<T: FromBytes>(pa: u64) -> T {
    // SAFETY: forwarded to the caller; `read_unaligned` has no alignment requirement.
    unsafe { core::ptr::read_unaligned(pa as *const T) }
}

/// A NUL-terminated string at a guest-physical address, as `&str` (empty if not UTF-8).
///
/// # Safety
/// `pa` must be 0 or point at a NUL-terminated string that stays in place for ever.
unsafe fn c_str(pa: u64) -> &'static str {
    if pa == 0 {
        return "";
    }
    // SAFETY: forwarded to the caller.
    let bytes = unsafe { core::ffi::CStr::from_ptr(pa as *const core::ffi::c_char) };
    bytes.to_str().unwrap_or("")
}

/// The hypercall interface (after [`init`]).
pub fn hv() -> &'static Hypervisor {
    match HV.get() {
        Some(h) => h,
        // Without microhv there is nobody to report to: stop here.
        None => rt_halt(),
    }
}

fn rt_halt() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

struct Console {
    buf: [u8; LINE],
    len: usize,
}

impl Console {
    fn flush(&mut self) {
        if self.len > 0 {
            if let Some(h) = HV.get() {
                let n = self.len.min(CONSOLE_WRITE_MAX as usize);
                let _ = h.console_write(&self.buf[..n]);
            }
            self.len = 0;
        }
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == LINE {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

/// Writes formatted text to the console (used by [`println!`]).
pub fn print(args: fmt::Arguments<'_>) {
    let mut c = CONSOLE.lock();
    let _ = c.write_fmt(args);
}

/// Writes a line to the domain's console.
#[macro_export]
macro_rules! println {
    ($($t:tt)*) => {{
        $crate::print(format_args!($($t)*));
        $crate::print(format_args!("\n"));
    }};
}

/// Shuts the domain down with `reason` and `status`; never returns.
pub fn shutdown(reason: ShutdownReason, status: u32) -> ! {
    CONSOLE.lock().flush();
    if let Some(h) = HV.get() {
        let e = h.shutdown(reason, status);
        println!("shutdown refused: {e:?}");
    }
    rt_halt()
}

/// Ends the domain with a poweroff and `status`.
pub fn exit(status: u32) -> ! {
    shutdown(ShutdownReason::Poweroff, status)
}

/// The TSC (under Bochs: instructions retired since power-on).
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; microhv does not intercept it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(image)]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // The console lock may be held by the code that panicked; format without it.
    if let Some(h) = HV.get() {
        let mut line = Console { buf: [0; LINE], len: 0 };
        let _ = writeln!(line, "panic: {info}");
        line.flush();
        let _ = h.shutdown(ShutdownReason::Crash, 1);
    }
    rt_halt()
}
