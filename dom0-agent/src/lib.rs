//! dom0's logic that needs no privilege to be tested on the host: the image formats it can
//! boot (PVH ELF, multiboot v1), the domain builder with the ACPI tables it gives domains, the
//! device models it serves domUs (`dm`), and the control-protocol server, written
//! against traits (`builder::Hypercalls`, `server::Control`, `server::Channel`) that the real
//! hypercall interface and COM2 implement.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod acpi;
pub mod builder;
pub mod dm;
pub mod multiboot;
pub mod server;
