//! The host's CPUs from the firmware's ACPI MADT, read with the `acpi` crate through microhv's
//! identity map. Nothing here is fatal: without an RSDP, a MADT, or with malformed tables,
//! microhv runs on the boot CPU alone and says why.

use acpi::madt::{Madt, MadtEntry};
use acpi::sdt::SdtHeader;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;
use microhv_core::boot::BootInfo;
use microhv_core::cpus::{CpuList, madt_entries_ok};

/// Read as the bytes of a region the identity map does not cover (see [`Identity`]).
static ZEROS: [u64; 8] = [0; 8];

/// The identity map as the `acpi` crate's handler: a region is its own physical address.
#[derive(Clone, Copy)]
struct Identity;

impl AcpiHandler for Identity {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        // A table header is checked with the length it announces (at offset 4), so a table
        // shorter than its header (the crate would subtract unchecked), one that would run past
        // the identity map, or a null pointer, reads as zeros: a bad signature, which the crate
        // reports instead of faulting. (The RSDP has a header's size too: its bytes 4..8, "PTR ",
        // read as a length of 542 MB, which fits below 4 GiB from where firmware and GRUB put it.)
        let within = |len: usize| {
            (pa as u64).checked_add(len as u64).is_some_and(|e| e <= rt::IDENTITY_MAP_BYTES)
        };
        let header = size == core::mem::size_of::<SdtHeader>();
        let ok = pa != 0
            && within(size.max(8))
            && (!header || {
                // SAFETY: the first 8 bytes at `pa` are inside the identity map (just checked).
                let len = unsafe { (pa as *const u32).add(1).read_unaligned() } as usize;
                len >= size && within(len)
            });
        let at = if ok || (pa != 0 && size > size_of_val(&ZEROS)) {
            pa
        } else {
            ZEROS.as_ptr() as usize
        };
        // SAFETY: `at` is ZEROS, or an identity-mapped address (equal to its physical one): a
        // checked one, or one of the larger regions the crate asks for, which are only a whole
        // table whose header passed the check above and the BIOS areas below 1 MiB.
        unsafe { PhysicalMapping::new(pa, NonNull::new_unchecked(at as *mut T), size, size, Self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The enabled CPUs the MADT lists, `bsp` (the boot CPU's APIC id) first; the boot CPU alone,
/// with a warning, when the tables cannot be read.
pub fn find_cpus(boot: &BootInfo, bsp: u32) -> CpuList {
    match read(boot, bsp) {
        Ok(l) => l,
        Err(why) => {
            log::warn!("no CPU list from ACPI ({why}): running on the boot CPU alone");
            CpuList::boot_only(bsp)
        }
    }
}

fn read(boot: &BootInfo, bsp: u32) -> Result<CpuList, &'static str> {
    // SAFETY: an RSDP address from the loader points at its copy of the RSDP inside the boot
    // information; without one, the BIOS areas the search reads are RAM or ROM on every PC
    // (microhv boots through a BIOS: multiboot from GRUB's BIOS build or QEMU's loader). The
    // handler keeps every read inside the identity map.
    let tables = unsafe {
        match boot.rsdp {
            Some(pa) => AcpiTables::from_rsdp(Identity, pa as usize),
            None => AcpiTables::search_for_rsdp_bios(Identity),
        }
    }
    .map_err(|_| "no valid RSDP or root table")?;
    let from = if boot.rsdp.is_some() { "the loader's copy" } else { "the BIOS areas" };
    let madt = tables.find_table::<Madt>().map_err(|_| "no valid MADT")?;
    log::info!("ACPI: RSDP from {from}, MADT at {:#x}", madt.physical_start());
    let fixed = core::mem::size_of::<Madt>();
    let len = madt.get().header.length as usize;
    let start = madt.virtual_start().as_ptr() as *const u8;
    // SAFETY: the crate mapped (and checksummed) the whole table, `len` bytes from `start`.
    let table = unsafe { core::slice::from_raw_parts(start, len) };
    // The crate subtracts the fixed part from the length unchecked.
    let entries = table.get(fixed..).ok_or("MADT shorter than its fixed part")?;
    if !madt_entries_ok(entries) {
        return Err("malformed MADT entries");
    }
    let mut cpus = CpuList::boot_only(bsp);
    for e in madt.get().entries() {
        // Bit 0: enabled; bit 1: online capable (ACPI 6.5, table 5.23). Only enabled CPUs are
        // started: an online-capable one is a hot-plug slot.
        let (id, flags) = match e {
            MadtEntry::LocalApic(a) => (u32::from(a.apic_id), a.flags),
            MadtEntry::LocalX2Apic(a) => (a.x2apic_id, a.flags),
            _ => continue,
        };
        log::info!(
            "MADT: CPU with APIC id {id}, {}",
            if flags & 1 != 0 { "enabled" } else { "disabled" }
        );
        if flags & 1 != 0 {
            cpus.add(id);
        }
    }
    Ok(cpus)
}
