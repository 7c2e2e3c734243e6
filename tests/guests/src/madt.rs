//! The CPUs of the domain as an OS finds them: the enabled local APIC entries of the ACPI MADT,
//! reached from the RSDP dom0's builder gives the domain in `hvm_start_info.rsdp_paddr`, read
//! with the `acpi` crate (as microhv reads the host's, `microhv/src/madt.rs`) — which also
//! checks dom0's tables against a parser that is not dom0's.

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;

/// Processor local APIC flags: enabled (ACPI 6.5, "Processor Local APIC Structure").
const LOCAL_APIC_ENABLED: u32 = 1 << 0;

/// rt's identity map as the crate's handler: a region is its own physical address.
#[derive(Clone, Copy)]
struct Identity;

impl AcpiHandler for Identity {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        // SAFETY: the crate maps only what the domain's tables name, which dom0 put in the
        // domain's legacy hole, inside rt's identity map of the first 4 GiB (the caller checks
        // the RSDP's address); a table is never written.
        unsafe { PhysicalMapping::new(pa, NonNull::new_unchecked(pa as *mut T), size, size, Self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Fills `ids` with the APIC IDs of the enabled local APICs the MADT lists, in its order, from
/// the RSDP at `rsdp`; returns how many there are (more than `ids.len()` is an error).
pub fn local_apic_ids(rsdp: u64, ids: &mut [u8]) -> Result<usize, &'static str> {
    if rsdp == 0 || rsdp >= rt::IDENTITY_MAP_BYTES - 4096 {
        return Err("no RSDP (hvm_start_info.rsdp_paddr)");
    }
    // SAFETY: the RSDP's address is inside the identity map (just checked), where dom0 put it.
    let tables = unsafe { AcpiTables::from_rsdp(Identity, rsdp as usize) }
        .map_err(|_| "no valid RSDP or root table")?;
    let madt = tables.find_table::<Madt>().map_err(|_| "no valid MADT")?;
    let mut n = 0;
    for e in madt.get().entries() {
        if let MadtEntry::LocalApic(a) = e
            && a.flags & LOCAL_APIC_ENABLED != 0
        {
            *ids.get_mut(n).ok_or("more local APICs than this guest has room for")? = a.apic_id;
            n += 1;
        }
    }
    Ok(n)
}
