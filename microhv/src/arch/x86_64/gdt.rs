//! microhv's GDTs and TSSs, one pair per CPU, with the IST stacks of the vectors that need a
//! known-good stack (the host target's code assumes a red zone below RSP; see `idt` for which
//! vectors use them). The boot CPU's IST stacks are statics with guard pages; an application
//! processor's come from the frame allocator (`smp`), without guard pages (the identity map
//! outside the image is made of 2 MiB pages).

use microhv_core::cpus::MAX_CPUS;
use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot (1-based in the IDT) used by external interrupts.
pub const IST_INTERRUPT: u16 = 1;
/// IST slot used by double faults and NMIs, so they never share a stack with the fault they
/// interrupt.
pub const IST_CRITICAL: u16 = 2;
const IST_STACK_BYTES: usize = 16 * 1024;
const PAGE: usize = 4096;

/// A stack of `N` bytes with a guard page below it, which `paging` leaves unmapped: an
/// overflow faults instead of running into whatever lies below.
#[repr(C, align(4096))]
pub struct GuardedStack<const N: usize> {
    guard: [u8; PAGE],
    // Written by the CPU: the cell keeps the static out of read-only data.
    stack: core::cell::UnsafeCell<[u8; N]>,
}

// SAFETY: only the CPU touches a stack's bytes (as the stack of the code or vectors that use
// it, on the one CPU it belongs to).
unsafe impl<const N: usize> Sync for GuardedStack<N> {}

impl<const N: usize> GuardedStack<N> {
    const fn new() -> Self {
        Self { guard: [0; PAGE], stack: core::cell::UnsafeCell::new([0; N]) }
    }

    // The stacks are only ever named by address (`&raw const`), never by reference: a
    // reference to one would claim its guard page readable, which `paging` unmaps.

    /// Address of the guard page of the stack at `s` (`repr(C)`: it comes first).
    fn guard(s: *const Self) -> u64 {
        s as u64
    }

    /// Address just above the stack at `s` (16-byte aligned: the stack is page-aligned and
    /// whole pages).
    fn top(s: *const Self) -> u64 {
        s as u64 + (PAGE + N) as u64
    }
}

/// An IST stack.
type IstStack = GuardedStack<IST_STACK_BYTES>;

static INTERRUPT_STACK: IstStack = GuardedStack::new();
static CRITICAL_STACK: IstStack = GuardedStack::new();

/// An application processor's stacks, in the image (so that their guard pages can be unmapped:
/// the identity map outside the image is made of 2 MiB pages): its two IST stacks, and its own
/// stack, as large as the boot CPU's (the exit handlers run on it).
#[repr(C)]
struct ApStacks {
    ist: [IstStack; 2],
    main: GuardedStack<{ rt::BOOT_STACK_BYTES }>,
}

/// AP `i`'s stacks (`i` + 1 is its CPU number): their guard pages' addresses and their tops,
/// `None` beyond the array.
fn ap(i: usize) -> Option<([u64; 3], [u64; 3])> {
    if i >= MAX_CPUS - 1 {
        return None;
    }
    let p = (&raw const AP_STACKS).cast::<ApStacks>().wrapping_add(i);
    // SAFETY: `p` points at element `i` of the static (in bounds, checked); the projections
    // compute field addresses without reading anything or making a reference.
    let (a, b, c) =
        unsafe { (&raw const (*p).ist[0], &raw const (*p).ist[1], &raw const (*p).main) };
    Some((
        [GuardedStack::guard(a), GuardedStack::guard(b), GuardedStack::guard(c)],
        [GuardedStack::top(a), GuardedStack::top(b), GuardedStack::top(c)],
    ))
}

static AP_STACKS: [ApStacks; MAX_CPUS - 1] =
    [const { ApStacks { ist: [const { GuardedStack::new() }; 2], main: GuardedStack::new() } };
        MAX_CPUS - 1];

/// AP `cpu`'s IST stack tops (for [`init_cpu`]) and its own stack's top; `None` for the boot
/// CPU (0) and beyond `MAX_CPUS`.
pub fn ap_stacks(cpu: usize) -> Option<([u64; 2], u64)> {
    let (_, [ist0, ist1, main]) = ap(cpu.checked_sub(1)?)?;
    Some(([ist0, ist1], main))
}

/// Every guard page of these stacks (the boot CPU's IST stacks', every AP's), for `paging` to
/// leave unmapped.
pub fn guard_pages() -> impl Iterator<Item = u64> {
    [
        GuardedStack::guard(&raw const INTERRUPT_STACK),
        GuardedStack::guard(&raw const CRITICAL_STACK),
    ]
    .into_iter()
    .chain((0..MAX_CPUS - 1).filter_map(ap).flat_map(|(guards, _)| guards))
}

/// The selectors the VMX host-state area needs.
#[derive(Debug, Clone, Copy)]
pub struct Selectors {
    /// 64-bit ring-0 code.
    pub code: SegmentSelector,
    /// Ring-0 data.
    pub data: SegmentSelector,
    /// The TSS.
    pub tss: SegmentSelector,
}

static TSS: [Once<TaskStateSegment>; MAX_CPUS] = [const { Once::new() }; MAX_CPUS];
static GDT: [Once<(GlobalDescriptorTable, Selectors)>; MAX_CPUS] =
    [const { Once::new() }; MAX_CPUS];

/// Loads the boot CPU's GDT and TSS and reloads every segment register.
pub fn init() -> Selectors {
    init_cpu(
        0,
        [
            GuardedStack::top(&raw const INTERRUPT_STACK),
            GuardedStack::top(&raw const CRITICAL_STACK),
        ],
    )
}

/// Loads CPU `cpu`'s GDT and TSS (built on first use, with the tops of its IST stacks for
/// [`IST_INTERRUPT`] and [`IST_CRITICAL`]) and reloads every segment register. Every CPU's
/// selectors are the same.
pub fn init_cpu(cpu: usize, ist: [u64; 2]) -> Selectors {
    let tss = TSS[cpu].call_once(|| {
        let mut t = TaskStateSegment::new();
        t.interrupt_stack_table[usize::from(IST_INTERRUPT - 1)] = VirtAddr::new(ist[0]);
        t.interrupt_stack_table[usize::from(IST_CRITICAL - 1)] = VirtAddr::new(ist[1]);
        t
    });
    let (gdt, sel) = GDT[cpu].call_once(|| {
        let mut g = GlobalDescriptorTable::new();
        let code = g.append(Descriptor::kernel_code_segment());
        let data = g.append(Descriptor::kernel_data_segment());
        let tss = g.append(Descriptor::tss_segment(tss));
        (g, Selectors { code, data, tss })
    });
    gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives for ever.
    unsafe {
        CS::set_reg(sel.code);
        DS::set_reg(sel.data);
        ES::set_reg(sel.data);
        SS::set_reg(sel.data);
        load_tss(sel.tss);
    }
    *sel
}

/// CPU `cpu`'s TSS address (the VMX host TR base), once [`init_cpu`] built it (0 before).
pub fn tss_base(cpu: usize) -> u64 {
    TSS.get(cpu).and_then(Once::get).map_or(0, |t| t as *const TaskStateSegment as u64)
}

/// CPU `cpu`'s GDT address (the VMX host GDTR base), once [`init_cpu`] built it (0 before).
pub fn gdt_base(cpu: usize) -> u64 {
    GDT.get(cpu).and_then(Once::get).map_or(0, |(g, _)| g.entries().as_ptr() as u64)
}
