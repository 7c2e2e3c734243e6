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

/// A stack with a guard page below it, which `paging` leaves unmapped: an overflow faults
/// instead of running into whatever lies below.
#[repr(C, align(4096))]
pub struct GuardedStack {
    guard: [u8; PAGE],
    // Written by the CPU: the cell keeps the static out of read-only data.
    stack: core::cell::UnsafeCell<[u8; IST_STACK_BYTES]>,
}

// SAFETY: only the CPU touches a stack's bytes (as the stack of the vectors that use it).
unsafe impl Sync for GuardedStack {}

impl GuardedStack {
    const fn new() -> Self {
        Self { guard: [0; PAGE], stack: core::cell::UnsafeCell::new([0; IST_STACK_BYTES]) }
    }

    /// Address of the guard page.
    pub fn guard(&'static self) -> u64 {
        self.guard.as_ptr() as u64
    }

    fn top(&'static self) -> VirtAddr {
        VirtAddr::new(self.stack.get() as u64 + IST_STACK_BYTES as u64)
    }
}

static INTERRUPT_STACK: GuardedStack = GuardedStack::new();
static CRITICAL_STACK: GuardedStack = GuardedStack::new();

/// The IST stacks, for `paging` to unmap their guard pages.
pub fn ist_stacks() -> [&'static GuardedStack; 2] {
    [&INTERRUPT_STACK, &CRITICAL_STACK]
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
    init_cpu(0, [INTERRUPT_STACK.top().as_u64(), CRITICAL_STACK.top().as_u64()])
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
