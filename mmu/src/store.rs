//! Arrays of 64-bit words kept in frames: per-slot rmaps, large-page counters and dirty bitmaps.
//!
//! An array is a radix tree of 512-entry directory frames whose depth follows from its length,
//! so a slot keeps inline only the root frame's address (and its metadata's depth, for speed).

use crate::Error;
use crate::host::Host;
use crate::sp::alloc_checked;

const FAN: u64 = 512;

/// Directory levels above the data frames for an array of `words` words (9 index bits each).
pub(crate) const fn depth(words: u64) -> u32 {
    (u64::BITS - words.saturating_sub(1).leading_zeros()).saturating_sub(1) / 9
}

/// Frames an array of `words` words occupies (0 for an empty array).
pub(crate) const fn frames(words: u64) -> u64 {
    if words == 0 {
        return 0;
    }
    let mut total = 0;
    let mut n = words;
    loop {
        n = n.div_ceil(FAN);
        total += n;
        if n == 1 {
            return total;
        }
    }
}

/// Allocate a zeroed array of `words` words; all or nothing.
pub(crate) fn alloc<H: Host>(host: &mut H, words: u64) -> Result<u64, Error> {
    if words == 0 {
        return Ok(0);
    }
    alloc_level(host, depth(words), words)
}

fn alloc_level<H: Host>(host: &mut H, depth: u32, words: u64) -> Result<u64, Error> {
    let f = alloc_checked(host)?;
    if depth == 0 {
        return Ok(f);
    }
    let per_child = FAN.pow(depth);
    let children = words.div_ceil(per_child);
    for i in 0..children {
        let cw = per_child.min(words - i * per_child);
        match alloc_level(host, depth - 1, cw) {
            Ok(c) => host.write_u64(f + i * 8, c),
            Err(e) => {
                // Children not yet allocated are 0 in the zeroed directory, so this frees
                // exactly what was taken.
                free_level(host, f, depth);
                return Err(e);
            }
        }
    }
    Ok(f)
}

/// Free an array allocated by [`alloc`] with the same `words`.
pub(crate) fn free<H: Host>(host: &mut H, root: u64, words: u64) {
    if root != 0 {
        free_level(host, root, depth(words));
    }
}

fn free_level<H: Host>(host: &mut H, f: u64, depth: u32) {
    if depth > 0 {
        for i in 0..FAN {
            let c = host.read_u64(f + i * 8);
            if c != 0 {
                free_level(host, c, depth - 1);
            }
        }
    }
    host.free_frame(f);
}

/// Host-physical address of word `i` of an array of `depth` levels; `i` is below its length.
#[inline]
pub(crate) fn addr<H: Host>(host: &H, root: u64, depth: u32, i: u64) -> u64 {
    debug_assert!(i < FAN << (9 * depth));
    let mut f = root;
    let mut d = depth;
    while d > 0 {
        f = host.read_u64(f + ((i >> (9 * d)) & (FAN - 1)) * 8);
        d -= 1;
    }
    f + (i & (FAN - 1)) * 8
}
