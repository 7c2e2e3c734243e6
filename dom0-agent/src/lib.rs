//! dom0's logic that needs no privilege to be tested on the host: the image formats it can
//! boot (PVH ELF, multiboot v1) and the domain builder, written against a `Hypercalls` trait
//! that the real hypercall interface implements.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod builder;
pub mod multiboot;
