//! Everything in microhv that executes a privileged instruction or holds assembly.
//!
//! - [`x86_64`]: per-CPU tables (GDT, TSS with IST stacks, IDT), exceptions, MSRs and control
//!   registers, machine stop.
//! - [`vmx`]: the Intel VMX backend.
pub mod vmx;
pub mod x86_64;
