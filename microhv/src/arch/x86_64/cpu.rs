//! Thin, documented wrappers over the CPU instructions microhv uses outside the VMX code.

use core::arch::x86_64::{__cpuid_count, _rdtsc};

/// CPUID `(leaf, subleaf)` as `[eax, ebx, ecx, edx]`.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = __cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The time-stamp counter (under Bochs: instructions retired since power-on).
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear in ring 0 anyway.
    unsafe { _rdtsc() }
}

/// Reads an MSR.
///
/// # Safety
/// `msr` must exist on this CPU, or RDMSR raises #GP.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: forwarded to the caller.
    unsafe { x86::msr::rdmsr(msr) }
}

/// Writes an MSR.
///
/// # Safety
/// `msr` must exist and `value` must be valid for it; writing changes CPU behaviour.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { x86::msr::wrmsr(msr, value) }
}

/// CR0.
pub fn cr0() -> u64 {
    // SAFETY: reading CR0 in ring 0 has no side effects.
    unsafe { x86::controlregs::cr0().bits() as u64 }
}

/// CR3.
pub fn cr3() -> u64 {
    // SAFETY: reading CR3 in ring 0 has no side effects.
    unsafe { x86::controlregs::cr3() }
}

/// CR4.
pub fn cr4() -> u64 {
    // SAFETY: reading CR4 in ring 0 has no side effects.
    unsafe { x86::controlregs::cr4().bits() as u64 }
}

/// Writes CR0.
///
/// # Safety
/// The new value must keep paging, protection and the host's assumptions (SSE on) intact.
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { x86::controlregs::cr0_write(x86::controlregs::Cr0::from_bits_truncate(v as usize)) }
}

/// Writes CR4.
///
/// # Safety
/// The new value must keep PAE, the SSE bits and the host's assumptions intact.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { x86::controlregs::cr4_write(x86::controlregs::Cr4::from_bits_truncate(v as usize)) }
}

/// Stops this CPU for good: interrupts off, then HLT forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI; HLT only stops this CPU, which is what the caller wants.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// CR2, the last page-fault address.
pub fn cr2() -> u64 {
    // SAFETY: reading CR2 in ring 0 has no side effects.
    unsafe { x86::controlregs::cr2() as u64 }
}
