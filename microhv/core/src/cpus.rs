//! The host's CPUs as the firmware lists them (the ACPI MADT's local APIC entries), in the
//! fixed-capacity form the start-up code works from. Reading the tables is the ring-0 binary's
//! (with the `acpi` crate); what is checked here is what that crate trusts: the entries' lengths.

use crate::boot::Range;
use heapless::Vec;

/// Host CPUs microhv brings up, the boot CPU included: the per-CPU tables (GDT, TSS, IST
/// stacks) are sized by it. Enabled CPUs beyond it are reported and left out.
pub const MAX_CPUS: usize = 8;

/// The CPUs found: APIC ids, the boot CPU's first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuList {
    /// APIC ids of the enabled CPUs kept, the boot CPU first.
    pub apic_ids: Vec<u32, MAX_CPUS>,
    /// Enabled CPUs that did not fit.
    pub left_out: u32,
}

impl CpuList {
    /// Just the boot CPU (what microhv runs on when discovery fails).
    pub fn boot_only(bsp: u32) -> Self {
        let mut l = Self::default();
        let _ = l.apic_ids.push(bsp);
        l
    }

    /// Adds an enabled CPU (the boot CPU's own entry and repeats are ignored).
    pub fn add(&mut self, apic_id: u32) {
        if !self.apic_ids.contains(&apic_id) && self.apic_ids.push(apic_id).is_err() {
            self.left_out += 1;
        }
    }
}

/// Whether the MADT's interrupt-controller structures (the bytes after its 44-byte fixed part)
/// can be walked safely: each entry's length is at least its header's 2 bytes, at least
/// `min_len(type)` (the size of the structure the `acpi` crate makes a reference to for that
/// type), and within the table. The crate walks them trusting these lengths (a zero length
/// would loop for ever).
pub fn madt_entries_ok(entries: &[u8], min_len: impl Fn(u8) -> usize) -> bool {
    let mut at = 0;
    while at < entries.len() {
        let (Some(&ty), Some(&len)) = (entries.get(at), entries.get(at + 1)) else {
            return false;
        };
        let len = usize::from(len);
        if len < min_len(ty).max(2) || at + len > entries.len() {
            return false;
        }
        at += len;
    }
    true
}

/// Bytes of an ACPI 1.0 RSDP (the part its first checksum covers).
const RSDP_V1_LEN: usize = 20;
/// Bytes of an ACPI 2.0+ RSDP, and the most microhv accepts in its `length` field.
const RSDP_V2_LEN: usize = 36;
const RSDP_MAX_LEN: usize = 64;

/// The length of the valid RSDP that `bytes` starts with (ACPI 6.5, 5.2.5.3): the signature
/// "RSD PTR ", the checksum of its first 20 bytes, and from revision 1 on a `length` of 36 to
/// 64 and the extended checksum over it. `bytes` holds at least 64 bytes from the candidate
/// (where it has fewer, the RSDP cannot be that long). The `acpi` crate checksums as many bytes
/// as `length` says, so a wild length must be refused before it sees the RSDP.
pub fn rsdp_len(bytes: &[u8]) -> Option<usize> {
    let sum = |b: &[u8]| b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
    let v1 = bytes.get(..RSDP_V1_LEN)?;
    if &v1[..8] != b"RSD PTR " || sum(v1) != 0 {
        return None;
    }
    // Revision 0 is ACPI 1.0; the `acpi` crate reads every later one (1 included, which no
    // version of the spec defines) as the 36-byte form and checksums its `length`.
    if v1[15] == 0 {
        return Some(RSDP_V1_LEN);
    }
    let len = u32::from_le_bytes(bytes.get(20..24)?.try_into().ok()?) as usize;
    let all = bytes.get(..len).filter(|_| (RSDP_V2_LEN..=RSDP_MAX_LEN).contains(&len))?;
    (sum(all) == 0).then_some(len)
}

/// The page the APs' real-mode trampoline goes in: below the legacy hole (a STARTUP vector
/// names a page under 1 MiB, and 0xA0-0xBF are reserved), not page 0 (the real-mode IVT and
/// BIOS data area), inside `ram`, and clear of `taken` (the loader's modules: GRUB may put a
/// `module2` below 1 MiB). 0x8000 when it is free, as firmware conventionally uses; else the
/// lowest free page.
pub fn trampoline_page(ram: &[Range], taken: &[Range]) -> Option<u64> {
    const PAGE: u64 = 4096;
    const PREFERRED: u64 = 0x8000;
    const LIMIT: u64 = 0x9f000;
    let free = |p: u64| {
        ram.iter().any(|r| r.start <= p && p + PAGE <= r.end)
            && !taken.iter().any(|t| t.start < p + PAGE && p < t.end)
    };
    core::iter::once(PREFERRED).chain((1..LIMIT / PAGE).map(|i| i * PAGE)).find(|&p| free(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        // Types 0 and 9 need 8 and 16 bytes (what the crate's structures take), others 2.
        let min = |t: u8| match t {
            0 => 8,
            9 => 16,
            _ => 0,
        };
        let ok = |e: &[u8]| madt_entries_ok(e, min);
        assert!(ok(&[]));
        assert!(ok(&[0, 8, 0, 0, 1, 0, 0, 0, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!ok(&[0, 0]), "zero length");
        assert!(!ok(&[5, 0]), "zero length of a type with no minimum: the header's 2 bytes");
        assert!(!ok(&[0, 6, 0, 0, 1, 0]), "local APIC entry too short");
        assert!(!ok(&[9, 8, 0, 0, 0, 0, 0, 0]), "x2APIC entry too short");
        assert!(!ok(&[0, 8, 0, 0]), "beyond the table");
        assert!(!ok(&[1]), "half a header");
    }

    fn rsdp(revision: u8, len: u32) -> [u8; 64] {
        let mut r = [0u8; 64];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[15] = revision;
        r[16..20].copy_from_slice(&0x1234u32.to_le_bytes());
        r[20..24].copy_from_slice(&len.to_le_bytes());
        let fix = |r: &mut [u8; 64], at: usize, upto: usize| {
            r[at] = 0;
            r[at] = 0u8.wrapping_sub(r[..upto].iter().fold(0u8, |s, &x| s.wrapping_add(x)));
        };
        fix(&mut r, 8, 20);
        if (36..=64).contains(&len) {
            fix(&mut r, 32, len as usize);
        }
        r
    }

    #[test]
    fn rsdps() {
        assert_eq!(rsdp_len(&rsdp(0, 0)), Some(20));
        assert_eq!(rsdp_len(&rsdp(2, 36)), Some(36));
        assert_eq!(rsdp_len(&rsdp(1, 36)), Some(36), "revision 1 is read as the long form");
        assert_eq!(rsdp_len(&rsdp(1, u32::MAX)), None, "and its length checked");
        let mut bad = rsdp(2, 36);
        bad[9] ^= 1;
        assert_eq!(rsdp_len(&bad), None, "first checksum");
        let mut bad = rsdp(2, 36);
        bad[33] ^= 1;
        assert_eq!(rsdp_len(&bad), None, "extended checksum");
        // A length the crate would checksum across memory: refused, whatever the sums say.
        assert_eq!(rsdp_len(&rsdp(2, u32::MAX)), None);
        assert_eq!(rsdp_len(&rsdp(2, 35)), None);
        assert_eq!(rsdp_len(&rsdp(2, 65)), None);
        assert_eq!(rsdp_len(&rsdp(2, 36)[..30]), None, "cut short");
        let mut sig = rsdp(0, 0);
        sig[0] = b'X';
        assert_eq!(rsdp_len(&sig), None);
    }

    #[test]
    fn the_trampoline_avoids_modules_and_what_is_not_ram() {
        let r = |start, end| Range { start, end };
        let ram = [r(0, 0x9fc00), r(0x10_0000, 0x2000_0000)];
        assert_eq!(trampoline_page(&ram, &[]), Some(0x8000));
        assert_eq!(trampoline_page(&ram, &[r(0x8fff, 0x9000)]), Some(0x1000), "a module's byte");
        assert_eq!(trampoline_page(&ram, &[r(0x1000, 0x9000)]), Some(0x9000));
        assert_eq!(trampoline_page(&[r(0x9000, 0x9f000)], &[r(0x8000, 0x9e000)]), Some(0x9e000));
        assert_eq!(trampoline_page(&[r(0, 0x1000), r(0x10_0000, 0x200000)], &[]), None);
        assert_eq!(trampoline_page(&ram, &[r(0, 0xa0000)]), None);
    }

    #[test]
    fn list() {
        let mut l = CpuList::boot_only(3);
        for id in [3, 0, 1, 1, 2, 4, 5, 6, 7, 8, 9] {
            l.add(id);
        }
        assert_eq!(l.apic_ids.as_slice(), &[3, 0, 1, 2, 4, 5, 6, 7]);
        assert_eq!(l.left_out, 2);
    }
}
