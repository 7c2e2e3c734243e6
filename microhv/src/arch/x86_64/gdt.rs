//! microhv's GDT and TSS, with separate IST stacks so every exception and NMI handler runs on a
//! known-good stack (the host target's code assumes a red zone below RSP).

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot (1-based in the IDT) used by ordinary exceptions.
pub const IST_EXCEPTION: u16 = 1;
/// IST slot used by double faults and NMIs, so they never share a stack with the fault they
/// interrupt.
pub const IST_CRITICAL: u16 = 2;
const IST_STACK_BYTES: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_STACK_BYTES]);

static EXCEPTION_STACK: Stack = Stack([0; IST_STACK_BYTES]);
static CRITICAL_STACK: Stack = Stack([0; IST_STACK_BYTES]);

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

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

fn stack_top(s: &'static Stack) -> VirtAddr {
    VirtAddr::from_ptr(s.0.as_ptr_range().end)
}

/// Loads the GDT and TSS and reloads every segment register.
pub fn init() -> Selectors {
    let tss = TSS.call_once(|| {
        let mut t = TaskStateSegment::new();
        t.interrupt_stack_table[usize::from(IST_EXCEPTION - 1)] = stack_top(&EXCEPTION_STACK);
        t.interrupt_stack_table[usize::from(IST_CRITICAL - 1)] = stack_top(&CRITICAL_STACK);
        t
    });
    let (gdt, sel) = GDT.call_once(|| {
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

/// The TSS's address (the VMX host TR base).
pub fn tss_base() -> u64 {
    TSS.get().map_or(0, |t| t as *const TaskStateSegment as u64)
}
