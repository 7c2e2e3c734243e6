//! x86-64 CPU plumbing for ring 0.
pub mod cpu;
pub mod fpu;
pub mod gdt;
pub mod idt;
pub mod lapic;
pub mod paging;
pub mod power;
pub mod smp;
pub mod spec;
pub mod tsc;
