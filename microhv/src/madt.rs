//! The host's CPUs from the firmware's ACPI MADT, read with the `acpi` crate through microhv's
//! identity map. Nothing here is fatal: without an RSDP, a MADT, or with malformed tables,
//! microhv runs on the boot CPU alone and says why.

use acpi::madt::*;
use acpi::sdt::SdtHeader;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use microhv_core::boot::BootInfo;
use microhv_core::cpus::{CpuList, madt_entries_ok, rsdp_len};

/// Read as the bytes of a region the identity map does not cover (see [`Identity`]).
static ZEROS: [u64; 8] = [0; 8];

/// The identity map as the `acpi` crate's handler: a region is its own physical address.
#[derive(Clone, Copy)]
struct Identity;

/// The longest root table or MADT microhv reads: a bound on what a table's own length makes
/// the crate checksum (a MADT with 8 CPUs is a few hundred bytes; an XSDT lists a few dozen
/// tables).
const MAX_TABLE_BYTES: usize = 64 * 1024;

impl AcpiHandler for Identity {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        // A table header is checked with the length it announces (at offset 4), so a table
        // shorter than its header (the crate would subtract unchecked), longer than
        // `MAX_TABLE_BYTES`, one that would run past the identity map, or a null pointer, reads
        // as zeros: a bad signature, which the crate reports instead of faulting. The RSDP,
        // also a header's size, was checked before the crate saw it (`find_rsdp`).
        let within = |len: usize| {
            (pa as u64).checked_add(len as u64).is_some_and(|e| e <= rt::IDENTITY_MAP_BYTES)
        };
        let header = size == core::mem::size_of::<SdtHeader>();
        let ok = pa != 0
            && within(size.max(8))
            && (!header || pa as u64 == RSDP.load(Ordering::Relaxed) || {
                // SAFETY: bytes 4..8 at `pa` are inside the identity map (`within(8)` held).
                let len = unsafe { (pa as *const u32).add(1).read_unaligned() } as usize;
                len >= size && len <= MAX_TABLE_BYTES && within(len)
            });
        let at = if ok || (pa != 0 && size > size_of_val(&ZEROS)) {
            pa
        } else {
            ZEROS.as_ptr() as usize
        };
        // SAFETY: `at` is ZEROS, or an identity-mapped address (equal to its physical one): a
        // checked one, or one of the larger regions the crate asks for, which are only a whole
        // table whose header passed the check above.
        unsafe { PhysicalMapping::new(pa, NonNull::new_unchecked(at as *mut T), size, size, Self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// The RSDP `find_rsdp` checked: the one header-sized mapping the handler does not read as a
/// table header (its bytes 4..8 are "PTR ", not a length).
static RSDP: AtomicU64 = AtomicU64::new(0);

/// The 64 bytes at physical `pa` (identity-mapped, below 1 MiB or the loader's copy).
fn bytes_at(pa: u64) -> Option<[u8; 64]> {
    if pa == 0 || pa.checked_add(64)? > rt::IDENTITY_MAP_BYTES {
        return None;
    }
    // SAFETY: 64 bytes inside the identity map (just checked), read without alignment.
    Some(unsafe { (pa as *const [u8; 64]).read_unaligned() })
}

/// A valid RSDP: the loader's copy, or the BIOS-area search (ACPI 6.5, 5.2.5.1: the first KiB
/// of the EBDA, whose segment the BIOS data area holds at 0x40E, then 0xE0000-0xFFFFF, on
/// 16-byte boundaries). Done here rather than by the crate because the crate checksums as many
/// bytes as the RSDP's `length` claims.
fn find_rsdp(boot: &BootInfo) -> Option<(u64, &'static str)> {
    let valid = |pa: u64| bytes_at(pa).is_some_and(|b| rsdp_len(&b).is_some());
    if let Some(pa) = boot.rsdp {
        return valid(pa).then_some((pa, "the loader's copy"));
    }
    // SAFETY: the BIOS data area's EBDA pointer, in the identity-mapped first page.
    let ebda = u64::from(unsafe { (0x40e as *const u16).read_unaligned() }) << 4;
    let ebda = (ebda >= 0x1000).then_some(ebda..ebda + 1024).into_iter().flatten();
    ebda.chain(0xe_0000..0x10_0000)
        .step_by(16)
        .find(|&pa| valid(pa))
        .map(|pa| (pa, "the BIOS areas"))
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
    let (rsdp, from) = find_rsdp(boot).ok_or("no valid RSDP")?;
    RSDP.store(rsdp, Ordering::Relaxed);
    // SAFETY: `rsdp` is a valid RSDP in the identity map (checked above, its length bounded);
    // the handler keeps every table the crate maps inside the identity map.
    let tables = unsafe { AcpiTables::from_rsdp(Identity, rsdp as usize) }
        .map_err(|_| "no valid root table")?;
    let madt = tables.find_table::<Madt>().map_err(|_| "no valid MADT")?;
    log::info!("ACPI: RSDP from {from}, MADT at {:#x}", madt.physical_start());
    let fixed = core::mem::size_of::<Madt>();
    let len = madt.get().header.length as usize;
    let start = madt.virtual_start().as_ptr() as *const u8;
    // SAFETY: the crate mapped (and checksummed) the whole table, `len` bytes from `start`.
    let table = unsafe { core::slice::from_raw_parts(start, len) };
    // The crate subtracts the fixed part from the length unchecked.
    let entries = table.get(fixed..).ok_or("MADT shorter than its fixed part")?;
    if !madt_entries_ok(entries, entry_size) {
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

/// The size of the structure the `acpi` crate makes a reference to for a MADT entry of type
/// `ty` (0 for the types it skips): an entry shorter than that would have it read past the
/// entry.
fn entry_size(ty: u8) -> usize {
    use core::mem::size_of;
    match ty {
        0x0 => size_of::<LocalApicEntry>(),
        0x1 => size_of::<IoApicEntry>(),
        0x2 => size_of::<InterruptSourceOverrideEntry>(),
        0x3 => size_of::<NmiSourceEntry>(),
        0x4 => size_of::<LocalApicNmiEntry>(),
        0x5 => size_of::<LocalApicAddressOverrideEntry>(),
        0x6 => size_of::<IoSapicEntry>(),
        0x7 => size_of::<LocalSapicEntry>(),
        0x8 => size_of::<PlatformInterruptSourceEntry>(),
        0x9 => size_of::<LocalX2ApicEntry>(),
        0xa => size_of::<X2ApicNmiEntry>(),
        0xb => size_of::<GiccEntry>(),
        0xc => size_of::<GicdEntry>(),
        0xd => size_of::<GicMsiFrameEntry>(),
        0xe => size_of::<GicRedistributorEntry>(),
        0xf => size_of::<GicInterruptTranslationServiceEntry>(),
        0x10 => size_of::<MultiprocessorWakeupEntry>(),
        _ => 0,
    }
}
