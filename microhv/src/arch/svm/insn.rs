//! The guest instruction at RIP, for CPUs that do not say enough about an intercepted one.
//!
//! Without NRIP save the VMCB does not give the next RIP of an intercepted CPUID, RDMSR, WRMSR,
//! HLT, VMMCALL or MOV to CR4, and without decode assists it does not name the source register
//! of the MOV. microhv then reads the instruction bytes the guest executed and decodes them, as
//! Xen's `svm_get_insn_len` and KVM's emulator do: prefixes, then the opcode it must be. The
//! bytes are reached the way the CPU reached them: the guest's own page tables (none, 32-bit,
//! PAE or 4-level) give the guest-physical address, and the domain's nested page tables the
//! host-physical one. Everything here is arithmetic over a [`Memory`]: the only memory reads are
//! the caller's.

use mmu::entry::{ADDR_MASK, LARGE, npt};

/// The longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// Host-physical reads, bounds-checked by the implementation.
pub trait Memory {
    /// The u64 at host-physical `hpa` (8-aligned), or `None` if it lies outside RAM microhv
    /// can read.
    fn read_u64(&self, hpa: u64) -> Option<u64>;
}

/// Why the instruction could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchError {
    /// The nested page tables do not map this guest-physical address (yet).
    NotMapped(u64),
    /// The guest's page tables do not map the linear address, or point outside RAM.
    Unreadable,
}

/// The guest paging state a linear address is translated with.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    /// CR0.PG.
    pub enabled: bool,
    /// EFER.LMA: 4-level paging.
    pub long: bool,
    /// CR4.PAE (without LMA: PAE paging).
    pub pae: bool,
    /// CR4.PSE: 4 MiB pages in 32-bit paging.
    pub pse: bool,
    /// CR3.
    pub cr3: u64,
}

/// Present bit of every paging-structure entry, guest or nested.
const P: u64 = 1;
/// Page-size bit of a directory entry (guest formats; the same bit as [`LARGE`]).
const PS: u64 = 1 << 7;

/// Host-physical address of guest-physical `gpa` through the nested page tables at `ncr3`.
pub fn nested(mem: &dyn Memory, ncr3: u64, gpa: u64) -> Result<u64, FetchError> {
    let mut table = ncr3 & ADDR_MASK;
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let idx = (gpa >> shift) & 0x1ff;
        let e = mem.read_u64(table + idx * 8).ok_or(FetchError::NotMapped(gpa))?;
        if e & npt::P == 0 {
            return Err(FetchError::NotMapped(gpa));
        }
        if level == 1 || (level <= 3 && e & LARGE != 0) {
            let size_mask = (1u64 << shift) - 1;
            return Ok((e & ADDR_MASK & !size_mask) | (gpa & size_mask));
        }
        table = e & ADDR_MASK;
    }
    Err(FetchError::Unreadable)
}

/// Reads the guest-physical u64 at `gpa` (8-aligned).
fn guest_u64(mem: &dyn Memory, ncr3: u64, gpa: u64) -> Result<u64, FetchError> {
    let hpa = nested(mem, ncr3, gpa)?;
    mem.read_u64(hpa).ok_or(FetchError::Unreadable)
}

/// Reads the guest-physical u32 at `gpa` (4-aligned).
fn guest_u32(mem: &dyn Memory, ncr3: u64, gpa: u64) -> Result<u32, FetchError> {
    let q = guest_u64(mem, ncr3, gpa & !7)?;
    Ok((q >> ((gpa & 4) * 8)) as u32)
}

/// Guest-physical address of `linear` through the guest's page tables. Only presence is
/// checked: the CPU has just used the translation, so its permissions held.
pub fn guest(mem: &dyn Memory, ncr3: u64, p: &Paging, linear: u64) -> Result<u64, FetchError> {
    if !p.enabled {
        return Ok(linear);
    }
    if p.long || p.pae {
        // 4-level: PML4, PDPT, PD, PT. PAE: the PDPT is the four entries CR3 points at.
        let (mut table, top) = if p.long {
            (p.cr3 & ADDR_MASK, 4u32)
        } else {
            let pdpte = guest_u64(mem, ncr3, (p.cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8)?;
            if pdpte & P == 0 {
                return Err(FetchError::Unreadable);
            }
            (pdpte & ADDR_MASK, 2)
        };
        for level in (1..=top).rev() {
            let shift = 12 + 9 * (level - 1);
            let e = guest_u64(mem, ncr3, table + ((linear >> shift) & 0x1ff) * 8)?;
            if e & P == 0 {
                return Err(FetchError::Unreadable);
            }
            if level == 1 || (level <= 3 && e & PS != 0) {
                let size_mask = (1u64 << shift) - 1;
                return Ok((e & ADDR_MASK & !size_mask) | (linear & size_mask));
            }
            table = e & ADDR_MASK;
        }
        return Err(FetchError::Unreadable);
    }
    // 32-bit paging: a directory of 1024 u32 entries, 4 MiB pages with CR4.PSE (PSE-36 puts
    // physical-address bits 39:32 in entry bits 20:13).
    let linear = linear & 0xffff_ffff;
    let pde = guest_u32(mem, ncr3, (p.cr3 & 0xffff_f000) + (linear >> 22) * 4)?;
    if pde & 1 == 0 {
        return Err(FetchError::Unreadable);
    }
    if p.pse && u64::from(pde) & PS != 0 {
        let high = u64::from((pde >> 13) & 0xff) << 32;
        return Ok(high | u64::from(pde & 0xffc0_0000) | (linear & 0x3f_ffff));
    }
    let pte = guest_u32(mem, ncr3, u64::from(pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4)?;
    if pte & 1 == 0 {
        return Err(FetchError::Unreadable);
    }
    Ok(u64::from(pte & 0xffff_f000) | (linear & 0xfff))
}

/// Up to [`MAX_LEN`] instruction bytes at `linear`. Bytes on a page that cannot be read are
/// left out; the error says why, for the caller to report if the decoder needed them.
pub fn fetch(
    mem: &dyn Memory,
    ncr3: u64,
    p: &Paging,
    linear: u64,
    wide: bool,
) -> ([u8; MAX_LEN], usize, Option<FetchError>) {
    let mut buf = [0u8; MAX_LEN];
    let mut n = 0;
    while n < MAX_LEN {
        let mut at = linear.wrapping_add(n as u64);
        if !wide {
            at &= 0xffff_ffff;
        }
        let hpa = match guest(mem, ncr3, p, at).and_then(|gpa| nested(mem, ncr3, gpa)) {
            Ok(h) => h,
            Err(e) => return (buf, n, Some(e)),
        };
        // The rest of this page, one aligned u64 at a time.
        let page_left = (0x1000 - (hpa & 0xfff)) as usize;
        let take = page_left.min(MAX_LEN - n);
        for i in 0..take {
            let a = hpa + i as u64;
            let Some(q) = mem.read_u64(a & !7) else {
                return (buf, n, Some(FetchError::Unreadable));
            };
            buf[n] = (q >> ((a & 7) * 8)) as u8;
            n += 1;
        }
    }
    (buf, n, None)
}

/// The instructions microhv intercepts and has to skip or decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// `0F 01 D9` (with F3: VMGEXIT, which outside SEV-ES behaves as VMMCALL).
    Vmmcall,
    /// `0F A2`.
    Cpuid,
    /// `0F 32`.
    Rdmsr,
    /// `0F 30`.
    Wrmsr,
    /// `F4`.
    Hlt,
    /// `0F 22 /r`: MOV to a control register.
    MovToCr,
}

/// A decoded instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Length in bytes, prefixes included.
    pub len: u8,
    /// MOV to CR: the control register (REX.R and AMD's LOCK-for-CR8 applied).
    pub cr: u8,
    /// MOV to CR: the source register, by x86 number (REX.B applied).
    pub gpr: u8,
}

/// Why decoding failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes ended before the instruction did.
    Truncated,
    /// The bytes are not the expected instruction (the guest changed them, or a prefix run
    /// longer than an instruction may be).
    Mismatch,
}

/// Decodes the instruction at the start of `bytes`, which must be `expected`. `code64`: the
/// guest runs 64-bit code (REX prefixes exist).
pub fn decode(bytes: &[u8], code64: bool, expected: Expected) -> Result<Decoded, DecodeError> {
    let mut i = 0;
    let mut rex = 0u8;
    let mut lock = false;
    loop {
        let Some(&b) = bytes.get(i) else {
            return Err(if i >= MAX_LEN { DecodeError::Mismatch } else { DecodeError::Truncated });
        };
        match b {
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf2 | 0xf3 => rex = 0,
            0xf0 => {
                lock = true;
                rex = 0;
            }
            // A REX prefix only counts right before the opcode: a later legacy prefix cancels it.
            0x40..=0x4f if code64 => rex = b,
            _ => break,
        }
        i += 1;
    }
    let opcode: &[u8] = match expected {
        Expected::Vmmcall => &[0x0f, 0x01, 0xd9],
        Expected::Cpuid => &[0x0f, 0xa2],
        Expected::Rdmsr => &[0x0f, 0x32],
        Expected::Wrmsr => &[0x0f, 0x30],
        Expected::Hlt => &[0xf4],
        Expected::MovToCr => &[0x0f, 0x22],
    };
    for (k, &want) in opcode.iter().enumerate() {
        match bytes.get(i + k) {
            Some(&got) if got == want => {}
            Some(_) => return Err(DecodeError::Mismatch),
            None => return Err(DecodeError::Truncated),
        }
    }
    let mut len = i + opcode.len();
    let (mut cr, mut gpr) = (0, 0);
    if expected == Expected::MovToCr {
        // The ModRM byte's mod field is ignored: the operand is always a register.
        let modrm = *bytes.get(len).ok_or(DecodeError::Truncated)?;
        len += 1;
        cr = ((modrm >> 3) & 7) | ((rex & 4) << 1);
        gpr = (modrm & 7) | ((rex & 1) << 3);
        if lock && cr == 0 {
            cr = 8;
        }
    }
    if len > MAX_LEN {
        return Err(DecodeError::Mismatch);
    }
    Ok(Decoded { len: len as u8, cr, gpr })
}
