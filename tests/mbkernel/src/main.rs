//! A small, ordinary multiboot v1 kernel that knows nothing of microhv: it checks the loader's
//! magic, reads the multiboot information (memory size, command line, the boot modules, each
//! printed with its address, length, FNV-1a hash, command line and first bytes), prints on the
//! COM1 UART, configures the local APIC (reads its ID and version, enables it through the spurious
//! vector register, sets the task priority, signals EOI) and exits through QEMU's debug-exit
//! port with `status=N` from its command line (default 7). Under microhv, COM1 and port 0xF4
//! are emulated devices and the APIC page is emulated MMIO.
#![no_std]
#![cfg_attr(image, no_main)]

#[cfg(not(image))]
extern crate std;
rt::hosted_main!();

use core::fmt::Write;
use rt::uart::{COM1, Uart};

rt::multiboot1_header!();

const BOOT_MAGIC: u32 = 0x2bad_b002;
const APIC: u64 = 0xfee0_0000;

fn uart() -> Uart {
    // SAFETY: this kernel owns the machine it believes it runs on, COM1 included.
    unsafe { Uart::new(COM1) }
}

fn exit(status: u8) -> ! {
    // SAFETY: the debug-exit port ends the (virtual) machine; nothing runs after it.
    unsafe { rt::io::outb(0xf4, status) };
    loop {
        core::hint::spin_loop();
    }
}

fn apic_read(reg: u64) -> u32 {
    // SAFETY: the local APIC page is at its default address and identity-mapped.
    unsafe { core::ptr::read_volatile((APIC + reg) as *const u32) }
}

fn apic_write(reg: u64, v: u32) {
    // SAFETY: as for `apic_read`.
    unsafe { core::ptr::write_volatile((APIC + reg) as *mut u32, v) }
}

/// Reads the multiboot information the loader left at `mbi`: upper memory in KiB and the
/// command line.
fn info(mbi: u32) -> (u32, &'static str) {
    let p = mbi as usize as *const u32;
    // SAFETY: the loader passed a valid information structure in ebx; fields are read at the
    // multiboot specification's offsets, the command line only if flag bit 2 says it exists.
    unsafe {
        let flags = p.read_volatile();
        let upper = if flags & 1 != 0 { p.add(2).read_volatile() } else { 0 };
        let cmdline = if flags & 4 != 0 {
            let s = core::ffi::CStr::from_ptr(p.add(4).read_volatile() as usize as *const _);
            s.to_str().unwrap_or("")
        } else {
            ""
        };
        (upper, cmdline)
    }
}

/// Flag bit 3 of the information structure: `mods_count` and `mods_addr` are valid.
const INFO_MODS: u32 = 1 << 3;
/// Bytes of each module printed (escaped) after its hash.
const HEAD_BYTES: usize = 8;

/// The 32-bit FNV-1a hash of `bytes`: what dom0's `multiboot` scenario computes over the
/// modules it passed, to find them intact in this kernel's output.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Prints the module list of the information structure at `mbi`: the count, then one line per
/// module.
fn modules(out: &mut Uart, mbi: u32) {
    let p = mbi as usize as *const u32;
    // SAFETY: the loader's information structure; `mods_count` and `mods_addr` (offsets 20 and
    // 24) are read only if flag bit 3 says they are valid.
    let (flags, count, addr) =
        unsafe { (p.read_volatile(), p.add(5).read_volatile(), p.add(6).read_volatile()) };
    if flags & INFO_MODS == 0 {
        let _ = writeln!(out, "mbkernel: no module list (flags {flags:#x})");
        return;
    }
    let _ = writeln!(out, "mbkernel: {count} module(s)");
    for i in 0..count {
        let e = (addr as usize + 16 * i as usize) as *const u32;
        // SAFETY: entry `i` of the loader's module list: start, end (exclusive), string.
        let (start, end, string) =
            unsafe { (e.read_volatile(), e.add(1).read_volatile(), e.add(2).read_volatile()) };
        let len = end.saturating_sub(start) as usize;
        // SAFETY: the loader placed the module at [start, end) in RAM, which rt's entry
        // identity-mapped; it is only read.
        let bytes = unsafe { core::slice::from_raw_parts(start as usize as *const u8, len) };
        let cmdline = if string == 0 {
            ""
        } else {
            // SAFETY: the module's command line, a NUL-terminated string the loader wrote.
            let s = unsafe { core::ffi::CStr::from_ptr(string as usize as *const _) };
            s.to_str().unwrap_or("")
        };
        let head = &bytes[..len.min(HEAD_BYTES)];
        let _ = writeln!(
            out,
            "mbkernel: module {i} at {start:#x}: {len} bytes, fnv1a {:#010x}, cmdline {cmdline:?}, starts \"{}\"",
            fnv1a(bytes),
            head.escape_ascii()
        );
    }
}

#[unsafe(no_mangle)]
extern "C" fn rt_main(eax: u32, ebx: u32) -> ! {
    let mut out = uart();
    out.init();
    if eax != BOOT_MAGIC {
        let _ = writeln!(out, "mbkernel: bad multiboot magic {eax:#x}");
        exit(0xfe);
    }
    let (upper_kib, cmdline) = info(ebx);
    let _ = writeln!(
        out,
        "mbkernel: multiboot magic ok, mem_upper {upper_kib} KiB, cmdline {cmdline:?}"
    );
    modules(&mut out, ebx);
    let id = apic_read(0x20) >> 24;
    let version = apic_read(0x30);
    apic_write(0xf0, 0x1ff);
    apic_write(0x80, 0x10);
    apic_write(0xb0, 0);
    let svr = apic_read(0xf0);
    let tpr = apic_read(0x80);
    let _ = writeln!(
        out,
        "mbkernel: local APIC id {id} version {version:#x}, enabled (svr {svr:#x}, tpr {tpr:#x})"
    );
    let status = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("status=").and_then(|v| v.parse().ok()))
        .unwrap_or(7);
    let _ = writeln!(out, "mbkernel: exiting with status {status}");
    out.flush();
    exit(status)
}

#[cfg(image)]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(uart(), "mbkernel: panic: {info}");
    exit(0xff)
}
