//! The C memory functions the host target's prebuilt `core` calls (its `compiler_builtins` does
//! not export them). Copies and fills are `rep movsq` / `rep stosq` for the 8-byte words and
//! `rep movsb` / `rep stosb` for the tail (eight times fewer iterations for page-sized work,
//! which is what Bochs counts); the comparisons read through `read_volatile` so LLVM cannot
//! recognise the loops and turn them back into calls to the very functions being defined.

use core::arch::asm;
use core::ffi::c_int;
use core::ptr::read_volatile;

/// # Safety
/// C `memcpy`: `dst` and `src` are valid for `n` bytes and do not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint; DF is clear in all our
    // code. The word copy advances rdi/rsi to where the byte copy continues.
    unsafe {
        asm!("rep movsq", "mov rcx, {tail}", "rep movsb",
             tail = in(reg) n % 8,
             inout("rcx") n / 8 => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// C `memmove`: `dst` and `src` are valid for `n` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy is correct when dst is below src or the ranges are disjoint.
        return unsafe { memcpy(dst, src, n) };
    }
    if n == 0 {
        return dst;
    }
    // SAFETY: dst lies inside [src, src+n): copy backwards from the last byte with DF set,
    // restoring DF before returning as the ABI requires.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dst
}

/// # Safety
/// C `memset`: `dst` is valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: c_int, n: usize) -> *mut u8 {
    let word = u64::from(c as u8) * 0x0101_0101_0101_0101;
    // SAFETY: the caller guarantees the range is valid; DF is clear. The word fill advances
    // rdi to where the byte fill continues; al is the low byte of the pattern.
    unsafe {
        asm!("rep stosq", "mov rcx, {tail}", "rep stosb",
             tail = in(reg) n % 8,
             inout("rcx") n / 8 => _, inout("rdi") dst => _, in("rax") word,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// C `memcmp`: both pointers are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and the caller guarantees n readable bytes behind each pointer.
        let (x, y) = unsafe { (read_volatile(a.add(i)), read_volatile(b.add(i))) };
        if x != y {
            return c_int::from(x) - c_int::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// C `bcmp`: both pointers are valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
/// C `strlen`: `s` points to a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller guarantees a terminating NUL, so every byte up to it is readable.
    while unsafe { read_volatile(s.add(n)) } != 0 {
        n += 1;
    }
    n
}

/// The prebuilt `core` refers to this symbol even with `panic = "abort"`; it is never called.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
