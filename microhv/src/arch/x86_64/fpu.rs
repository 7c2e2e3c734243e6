//! Guest FPU/SSE state: the FXSAVE images both backends swap in their entry and exit assembly.
//!
//! The host target's compiled Rust uses SSE freely, so a guest's x87/SSE state can only be live
//! between the entry code's FXRSTOR and the exit code's FXSAVE; around them the host runs with
//! the state captured at boot ([`HOST_FX`]), so no guest MXCSR or x87 control word leaks into
//! microhv.

/// A 512-byte FXSAVE image.
#[repr(C, align(16))]
pub struct FxArea(pub [u8; 512]);

impl FxArea {
    /// The power-on state: x87 control word 0x37f, MXCSR 0x1f80, everything else zero.
    pub const fn reset() -> Self {
        let mut b = [0u8; 512];
        let fcw = 0x037fu16.to_le_bytes();
        let mxcsr = 0x1f80u32.to_le_bytes();
        (b[0], b[1]) = (fcw[0], fcw[1]);
        (b[24], b[25], b[26], b[27]) = (mxcsr[0], mxcsr[1], mxcsr[2], mxcsr[3]);
        Self(b)
    }
}

/// The host's FPU/SSE state, captured at boot and restored after every exit.
pub static mut HOST_FX: FxArea = FxArea([0; 512]);

/// Captures the host's FPU/SSE state into [`HOST_FX`]; called once before the first guest runs.
pub fn capture_host_fx() {
    // SAFETY: single CPU, called during initialization before any guest runs; FXSAVE writes
    // exactly the 512 aligned bytes of the static.
    unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) core::ptr::addr_of_mut!(HOST_FX)) };
}
