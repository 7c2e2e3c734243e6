//! dom0's logic that needs no privilege to be tested on the host: the image formats it can
//! boot (PVH ELF, multiboot v1) and where their bytes come from (`image`), the domain builder
//! with the ACPI tables it gives domains, the device models it serves domUs (`dm`), its disk
//! (`disk`: the ATA driver, the FAT file system), the PV block backend that serves domUs virtual
//! disks from it (`vbd`), and the control-protocol server, written
//! against traits (`builder::Hypercalls`, `server::Control`, `server::Channel`,
//! `vbd::VbdHypercalls`, `disk::ata::Bus`) that the real hypercall interface, COM2 and the ATA ports implement.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod acpi;
pub mod builder;
pub mod disk;
pub mod dm;
pub mod image;
pub mod memory;
pub mod multiboot;
pub mod server;
pub mod vbd;
