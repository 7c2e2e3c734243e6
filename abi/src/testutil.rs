//! Helpers for tests, this crate's and other crates' (feature `testing`): minimal PVH images,
//! and an [`IrqSink`] test double for device models on both sides of the split. No image
//! contains them.

extern crate alloc;
use crate::platform::IrqSink;
use alloc::vec::Vec;

/// Builds a minimal PVH image: an ELF64 header, one `PT_LOAD` segment and one `PT_NOTE`
/// segment with the entry note. It loads `code` at `paddr` (with `bss` zero bytes after it)
/// and enters at `entry`.
pub fn pvh_image(paddr: u64, code: &[u8], bss: u64, entry: u32) -> Vec<u8> {
    let ehsize = 64u64;
    let phsize = 56u64;
    let note_off = ehsize + 2 * phsize;
    let note: Vec<u8> = [4u32, 4, crate::pvh::XEN_ELFNOTE_PHYS32_ENTRY]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain(*b"Xen\0")
        .chain(entry.to_le_bytes())
        .collect();
    let code_off = note_off + note.len() as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&u64::from(entry).to_le_bytes());
    f.extend_from_slice(&ehsize.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&(ehsize as u16).to_le_bytes());
    f.extend_from_slice(&(phsize as u16).to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&[0u8; 6]); // shentsize, shnum, shstrndx
    let ph = |f: &mut Vec<u8>, ty: u32, off: u64, addr: u64, filesz: u64, memsz: u64| {
        f.extend_from_slice(&ty.to_le_bytes());
        f.extend_from_slice(&7u32.to_le_bytes());
        for v in [off, addr, addr, filesz, memsz, 4] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    };
    let len = code.len() as u64;
    ph(&mut f, 1, code_off, paddr, len, len + bss);
    ph(&mut f, 4, note_off, 0, note.len() as u64, note.len() as u64);
    f.extend_from_slice(&note);
    f.extend_from_slice(code);
    f
}

/// An [`IrqSink`] that records every level it is driven to.
#[derive(Default)]
pub struct Sink(pub Vec<(u32, bool)>);

impl IrqSink for Sink {
    fn set_level(&mut self, gsi: u32, high: bool) {
        self.0.push((gsi, high));
    }
}

impl Sink {
    /// Rising edges on `gsi`.
    pub fn pulses(&self, gsi: u32) -> usize {
        self.0.iter().filter(|e| **e == (gsi, true)).count()
    }
}
