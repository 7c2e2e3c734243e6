//! The Intel VMX backend: feature detection, VMXON, the VMCS, the entry/exit path, EPT and
//! VPID flushes, and the translation of VM exits into the core's arch-neutral `Exit` values.

mod caps;

pub use caps::{Unavailable, detect};
