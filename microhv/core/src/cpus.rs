//! The host's CPUs as the firmware lists them (the ACPI MADT's local APIC entries), in the
//! fixed-capacity form the start-up code works from. Reading the tables is the ring-0 binary's
//! (with the `acpi` crate); what is checked here is what that crate trusts: the entries' lengths.

use heapless::Vec;

/// Host CPUs microhv brings up, the boot CPU included: the per-CPU tables (GDT, TSS, IST
/// stacks) are sized by it. Enabled CPUs beyond it are reported and left out.
pub const MAX_CPUS: usize = 8;

/// MADT entry types microhv reads, with their minimum lengths (ACPI 6.5, 5.2.12.2 and 5.2.12.12).
const LOCAL_APIC: (u8, u8) = (0, 8);
const LOCAL_X2APIC: (u8, u8) = (9, 16);

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
/// can be walked safely: each entry's length is at least its header's 2 bytes, at least the
/// size of the structure its type names (for the types microhv reads), and within the table.
/// The `acpi` crate walks them trusting these lengths (a zero length would loop for ever).
pub fn madt_entries_ok(entries: &[u8]) -> bool {
    let mut at = 0;
    while at < entries.len() {
        let (Some(&ty), Some(&len)) = (entries.get(at), entries.get(at + 1)) else {
            return false;
        };
        let min = match ty {
            t if t == LOCAL_APIC.0 => LOCAL_APIC.1,
            t if t == LOCAL_X2APIC.0 => LOCAL_X2APIC.1,
            _ => 2,
        };
        if len < min || at + usize::from(len) > entries.len() {
            return false;
        }
        at += usize::from(len);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        assert!(madt_entries_ok(&[]));
        assert!(madt_entries_ok(&[0, 8, 0, 0, 1, 0, 0, 0, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!madt_entries_ok(&[0, 0]), "zero length");
        assert!(!madt_entries_ok(&[0, 6, 0, 0, 1, 0]), "local APIC entry too short");
        assert!(!madt_entries_ok(&[9, 8, 0, 0, 0, 0, 0, 0]), "x2APIC entry too short");
        assert!(!madt_entries_ok(&[0, 8, 0, 0]), "beyond the table");
        assert!(!madt_entries_ok(&[1]), "half a header");
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
