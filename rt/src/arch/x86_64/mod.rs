//! x86-64: the 32-bit entry, the application processors' way in (`ap`), boot headers, port I/O
//! and the C memory functions.
pub mod ap;
mod entry;
pub use entry::entry_tsc;
pub mod headers;
pub mod io;
// The C runtime symbols exist only in images: a hosted build gets them from libc.
#[cfg(image)]
mod mem;
