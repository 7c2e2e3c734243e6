//! microhv's own page tables, replacing the all-RWX identity map `rt_entry32` built: the same
//! identity map of the first `rt::IDENTITY_MAP_BYTES`, with 2 MiB pages except where the image
//! lies, whose pages get what `microhv_core::hostmap` says (W^X, guard pages unmapped). With
//! CR0.WP (set by `rt_entry32`) ring 0 cannot write its own code either, so a guest that found a
//! way to make microhv store somewhere it chose still could not change what microhv executes.

use super::cpu::{cpuid, rdmsr, wrmsr};
use core::cell::UnsafeCell;
use microhv_core::hostmap::{Layout, Perm};
use microhv_core::regs::EFER_NXE;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const LARGE: u64 = 1 << 7;
const NO_EXEC: u64 = 1 << 63;
const LARGE_PAGE: u64 = 2 << 20;
/// Page directories: one per GiB of the identity map.
const PDS: usize = (rt::IDENTITY_MAP_BYTES >> 30) as usize;
/// Page tables for the 2 MiB regions the image covers: room for an 8 MiB image.
const IMAGE_PTS: usize = 4;
const IA32_EFER: u32 = 0xc000_0080;

#[repr(C, align(4096))]
struct Tables {
    pml4: [u64; 512],
    pdpt: [u64; 512],
    pd: [[u64; 512]; PDS],
    pt: [[u64; 512]; IMAGE_PTS],
}

struct Cell(UnsafeCell<Tables>);

// SAFETY: written once by `init` on the boot CPU before anything else runs; afterwards only the
// CPUs' page walkers and `lapic::make_uncacheable` (boot CPU, before any AP starts: it flushes
// only its own TLB, so it must never run once APs share these tables) touch it.
unsafe impl Sync for Cell {}

static TABLES: Cell = Cell(UnsafeCell::new(Tables {
    pml4: [0; 512],
    pdpt: [0; 512],
    pd: [[0; 512]; PDS],
    pt: [[0; 512]; IMAGE_PTS],
}));

/// Builds the W^X identity map for `layout` and switches to it. Fails, changing nothing, if the
/// image needs more page tables than there are.
pub fn init(layout: &Layout) -> Result<(), &'static str> {
    let first = layout.start / LARGE_PAGE;
    let last = layout.end.div_ceil(LARGE_PAGE);
    if last - first > IMAGE_PTS as u64 || layout.end > rt::IDENTITY_MAP_BYTES {
        return Err("the image is larger than its page tables cover");
    }
    // NX exists on every CPU with VMX or SVM that microhv has met; without it code stays
    // read-only but data is executable.
    let nx = if cpuid(0x8000_0000, 0)[0] >= 0x8000_0001 && cpuid(0x8000_0001, 0)[3] & (1 << 20) != 0
    {
        // SAFETY: EFER exists on every 64-bit CPU; NXE only makes bit 63 of entries meaningful,
        // and no entry in use has it set yet.
        unsafe { wrmsr(IA32_EFER, rdmsr(IA32_EFER) | EFER_NXE) };
        NO_EXEC
    } else {
        log::warn!("no NX (CPUID.80000001h:EDX[20]): microhv's data stays executable");
        0
    };
    // SAFETY: nothing else references the tables yet (see `Cell`); the CPU does not use them
    // until CR3 is loaded below.
    let t = unsafe { &mut *TABLES.0.get() };
    for (g, pd) in t.pd.iter_mut().enumerate() {
        for (i, e) in pd.iter_mut().enumerate() {
            let pa = ((g * 512 + i) as u64) * LARGE_PAGE;
            *e = pa | PRESENT | WRITABLE | LARGE | nx;
        }
        t.pdpt[g] = (pd.as_ptr() as u64) | PRESENT | WRITABLE;
    }
    for (k, pt) in t.pt.iter_mut().enumerate().take((last - first) as usize) {
        let region = (first + k as u64) * LARGE_PAGE;
        for (i, e) in pt.iter_mut().enumerate() {
            let pa = region + (i as u64) * 4096;
            *e = match layout.perm(pa) {
                Perm::None => 0,
                Perm::ReadExec => pa | PRESENT,
                Perm::Read => pa | PRESENT | nx,
                Perm::ReadWrite => pa | PRESENT | WRITABLE | nx,
            };
        }
        let r = region / LARGE_PAGE;
        t.pd[(r / 512) as usize][(r % 512) as usize] = (pt.as_ptr() as u64) | PRESENT | WRITABLE;
    }
    t.pml4[0] = (t.pdpt.as_ptr() as u64) | PRESENT | WRITABLE;
    let root = t.pml4.as_ptr() as u64;
    // SAFETY: the new tables identity-map everything the old ones did (the first
    // IDENTITY_MAP_BYTES), including the code running now (read-execute), its stack and data
    // (read-write) and the tables themselves, so execution continues at the same addresses.
    // Only the guard pages lose their mapping, and nothing uses them.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) root, options(nostack)) };
    Ok(())
}
