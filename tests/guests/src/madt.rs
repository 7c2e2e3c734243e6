//! The CPUs of the domain as an OS finds them: the enabled local APIC entries of the ACPI MADT
//! (ACPI 6.5, "Multiple APIC Description Table"), reached from the RSDP dom0's builder gives
//! the domain in `hvm_start_info.rsdp_paddr` through the XSDT (or, for an ACPI 1.0 RSDP, the
//! RSDT). Minimal: signatures, lengths and the MADT's checksum are checked, nothing else of
//! the tables is read.

/// The RSDP's signature.
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
/// RSDP: revision byte (0: ACPI 1.0, RSDT only; 2 and up: XSDT).
const RSDP_REVISION: usize = 15;
/// RSDP: the RSDT's 32-bit address.
const RSDP_RSDT: usize = 16;
/// RSDP: the XSDT's 64-bit address (revision 2 and up).
const RSDP_XSDT: usize = 24;
/// Bytes of an RSDP of revision 2.
const RSDP_BYTES: u64 = 36;
/// Bytes of the header every system description table starts with.
const HEADER_BYTES: usize = 36;
/// Header: the table's length, header included.
const HEADER_LENGTH: usize = 4;
/// MADT: its interrupt controller structures start after the header, the local APIC address
/// and the flags.
const MADT_ENTRIES: usize = HEADER_BYTES + 8;
/// MADT structure type: processor local APIC.
const MADT_LOCAL_APIC: u8 = 0;
/// Processor local APIC structure: the APIC ID byte.
const LOCAL_APIC_ID: usize = 3;
/// Processor local APIC structure: its flags.
const LOCAL_APIC_FLAGS: usize = 4;
/// Processor local APIC flags: enabled.
const LOCAL_APIC_ENABLED: u32 = 1 << 0;
/// Bytes of a processor local APIC structure.
const LOCAL_APIC_BYTES: usize = 8;
/// The longest table read: dom0's tables are a few hundred bytes.
const TABLE_MAX: usize = 4096;

/// `len` bytes at guest-physical `pa`.
///
/// # Safety
/// `pa..pa + len` must be mapped memory that stays in place (the domain's identity-mapped RAM
/// or its ACPI tables, which nothing writes).
unsafe fn bytes(pa: u64, len: usize) -> &'static [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { core::slice::from_raw_parts(pa as *const u8, len) }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// The whole table at `pa` if it has `signature` and a plausible length.
fn table(pa: u64, signature: &[u8; 4]) -> Result<&'static [u8], &'static str> {
    if pa == 0 || pa >= rt::IDENTITY_MAP_BYTES - TABLE_MAX as u64 {
        return Err("a table address outside the identity map");
    }
    // SAFETY: below the identity map's end with room for the longest table; dom0's ACPI
    // tables sit in the domain's legacy hole and are never written.
    let head = unsafe { bytes(pa, HEADER_BYTES) };
    let len = u32_at(head, HEADER_LENGTH) as usize;
    if &head[..4] != signature || !(HEADER_BYTES..=TABLE_MAX).contains(&len) {
        return Err("a table with the wrong signature or length");
    }
    // SAFETY: as above; `len` is at most `TABLE_MAX`.
    Ok(unsafe { bytes(pa, len) })
}

/// Fills `ids` with the APIC IDs of the enabled local APICs the MADT lists, in its order, from
/// the RSDP at `rsdp`; returns how many there are (more than `ids.len()` is an error).
pub fn local_apic_ids(rsdp: u64, ids: &mut [u8]) -> Result<usize, &'static str> {
    if rsdp == 0 || rsdp >= rt::IDENTITY_MAP_BYTES - RSDP_BYTES {
        return Err("no RSDP (hvm_start_info.rsdp_paddr)");
    }
    // SAFETY: inside the identity map; dom0 puts the RSDP in the legacy hole.
    let r = unsafe { bytes(rsdp, RSDP_BYTES as usize) };
    if &r[..8] != RSDP_SIGNATURE {
        return Err("no RSDP signature at rsdp_paddr");
    }
    let (root, wide) = if r[RSDP_REVISION] >= 2 {
        (table(u64_at(r, RSDP_XSDT), b"XSDT")?, true)
    } else {
        (table(u64::from(u32_at(r, RSDP_RSDT)), b"RSDT")?, false)
    };
    let step = if wide { 8 } else { 4 };
    let madt = (HEADER_BYTES..root.len() - step + 1)
        .step_by(step)
        .map(|at| if wide { u64_at(root, at) } else { u64::from(u32_at(root, at)) })
        .find_map(|pa| table(pa, b"APIC").ok())
        .ok_or("no MADT in the root table")?;
    if madt.iter().fold(0u8, |s, &b| s.wrapping_add(b)) != 0 {
        return Err("the MADT's checksum is wrong");
    }
    let mut n = 0;
    let mut at = MADT_ENTRIES;
    while at + 2 <= madt.len() {
        let (kind, len) = (madt[at], usize::from(madt[at + 1]));
        if len < 2 || at + len > madt.len() {
            return Err("a MADT entry with a bad length");
        }
        if kind == MADT_LOCAL_APIC
            && len >= LOCAL_APIC_BYTES
            && u32_at(madt, at + LOCAL_APIC_FLAGS) & LOCAL_APIC_ENABLED != 0
        {
            *ids.get_mut(n).ok_or("more local APICs than this guest has room for")? =
                madt[at + LOCAL_APIC_ID];
            n += 1;
        }
        at += len;
    }
    Ok(n)
}
