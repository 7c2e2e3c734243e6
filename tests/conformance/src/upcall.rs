//! Event channels as a guest uses them: its event-channel page, and the upcall taken the way a
//! Xen HVM guest takes its callback vector — the local APIC software-enabled, an IDT gate for
//! the vector microhv raises, whose handler counts and EOIs. Interrupts are on only inside
//! [`window`] and [`wait_upcall`]. A halt that waits for an upcall is bounded by the local APIC
//! timer (one-shot), so a missing event fails a case instead of hanging the suite.

use crate::arch;
use abi::Errno;
use abi::types::{EVTCHN_WORDS, EvtchnShared};
use core::arch::{asm, global_asm};
use core::mem::offset_of;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// The upcall vector the test guests register.
pub const VECTOR: u8 = 0x40;
/// The watchdog's vector (the local APIC timer).
const WATCHDOG: u8 = 0x41;
/// The local APIC's xAPIC page (identity-mapped by `rt`).
const LAPIC: u64 = 0xfee0_0000;

/// Upcalls taken.
pub static UPCALLS: AtomicU64 = AtomicU64::new(0);
/// Watchdog interrupts taken.
static WATCHDOGS: AtomicU64 = AtomicU64::new(0);

global_asm!(
    r#"
    .section .text.conform_upcall, "ax"
    .global conform_upcall
conform_upcall:
    push rax
    lock inc qword ptr [rip + {upcalls}]
    jmp 1f
    .global conform_watchdog
conform_watchdog:
    push rax
    lock inc qword ptr [rip + {watchdogs}]
1:
    movabs rax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
"#,
    upcalls = sym UPCALLS,
    watchdogs = sym WATCHDOGS,
);

unsafe extern "C" {
    fn conform_upcall();
    fn conform_watchdog();
}

/// An event-channel page: [`EvtchnShared`]'s layout, with atomic words because microhv writes
/// them between the guest's instructions (and the guest clears bits with locked operations).
#[repr(C, align(4096))]
pub struct Page {
    /// `EvtchnShared::pending`.
    pub pending: [AtomicU64; EVTCHN_WORDS],
    /// `EvtchnShared::mask`.
    pub mask: [AtomicU64; EVTCHN_WORDS],
    _reserved: [u8; 4096 - size_of::<EvtchnShared>()],
}
const _: () = assert!(offset_of!(Page, pending) == offset_of!(EvtchnShared, pending));
const _: () = assert!(offset_of!(Page, mask) == offset_of!(EvtchnShared, mask));
const _: () = assert!(size_of::<Page>() == 4096);

/// This kernel's event-channel page.
pub static PAGE: Page = Page {
    pending: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
    mask: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
    _reserved: [0; 4096 - size_of::<EvtchnShared>()],
};

/// Its guest-physical address (guests here are identity-mapped).
pub fn page_addr() -> u64 {
    (&raw const PAGE) as u64
}

fn lapic_write(reg: u64, v: u32) {
    // SAFETY: a register of the local APIC microhv emulates, identity-mapped.
    unsafe { core::ptr::write_volatile((LAPIC + reg) as *mut u32, v) }
}

/// Registers [`PAGE`] with `vector` (0: none, the kernel polls). With a vector, also installs
/// the gates and software-enables the local APIC (SVR), so that the upcall can arrive once
/// interrupts are on.
pub fn register(vector: u8) -> Result<(), Errno> {
    if vector != 0 {
        arch::set_gate(vector.into(), conform_upcall as *const () as u64, false);
        arch::set_gate(WATCHDOG.into(), conform_watchdog as *const () as u64, false);
        lapic_write(0xf0, 0x1ff);
    }
    let page = (&raw const PAGE).cast::<EvtchnShared>().cast_mut();
    // SAFETY: PAGE is this kernel's for ever and used for nothing else; its words are atomics,
    // so microhv's writes race nothing.
    unsafe { guest_rt::hv().evtchn_set_callback(vector, page) }
}

/// Clears `port`'s pending bit; whether it was set.
pub fn take_pending(port: u32) -> bool {
    let bit = 1u64 << (port % 64);
    PAGE.pending[(port / 64) as usize % EVTCHN_WORDS].fetch_and(!bit, SeqCst) & bit != 0
}

/// Whether `port`'s pending bit is set.
pub fn is_pending(port: u32) -> bool {
    PAGE.pending[(port / 64) as usize % EVTCHN_WORDS].load(SeqCst) & (1 << (port % 64)) != 0
}

/// Masks (`true`) or unmasks `port`.
pub fn set_mask(port: u32, masked: bool) {
    let (w, bit) = (&PAGE.mask[(port / 64) as usize % EVTCHN_WORDS], 1u64 << (port % 64));
    if masked {
        w.fetch_or(bit, SeqCst);
    } else {
        w.fetch_and(!bit, SeqCst);
    }
}

/// Opens the interrupt window for an instant (`sti; nop; cli`): an upcall pending for this
/// vCPU is taken there. Interrupts are otherwise off in these kernels: their code is built for
/// the host target, which assumes a red zone below RSP that an interrupt frame would overwrite,
/// so an interrupt may only arrive inside an `asm!` block that may use the stack (no
/// `nostack`), where the compiler keeps nothing there.
pub fn window() {
    // SAFETY: the gates were installed by `register`; see above for the stack.
    unsafe { asm!("sti", "nop", "cli") };
}

/// Halts with the interrupt window open until an upcall beyond `seen` has been taken (true),
/// or until about `ms` milliseconds passed (false).
pub fn wait_upcall(seen: u64, ms: u64) -> bool {
    let bus_khz = u64::from(core::arch::x86_64::__cpuid(abi::cpuid::LEAF_TIMING).ebx).max(1);
    let dogs = WATCHDOGS.load(SeqCst);
    // One-shot, divide by 16.
    lapic_write(0x3e0, 0x3);
    lapic_write(0x320, WATCHDOG.into());
    lapic_write(0x380, u32::try_from(bus_khz * ms / 16).unwrap_or(u32::MAX));
    let woken = loop {
        if UPCALLS.load(SeqCst) > seen {
            break true;
        }
        if WATCHDOGS.load(SeqCst) != dogs {
            break false;
        }
        // SAFETY: the check above ran with interrupts off; STI's shadow keeps an upcall that
        // arrives from now on pending until HLT has begun, so it ends the halt rather than
        // being missed. The stack: see `window`.
        unsafe { asm!("sti", "hlt", "cli") };
    };
    lapic_write(0x380, 0);
    woken
}
