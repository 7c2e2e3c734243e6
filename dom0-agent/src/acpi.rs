//! The ACPI tables a domain's firmware would provide, built by dom0 as Xen's toolstack builds
//! them (libacpi): they describe microhv's virtual platform (`microhv/core/src/platform.rs`) —
//! one local APIC per vCPU, the I/O APIC with the IRQ 0 → GSI 2 and SCI overrides, the PM
//! timer and PM1 blocks, the reset register, the HPET, and a DSDT whose only object is `\_S5`,
//! so that ACPI power-off and reset work.
//!
//! The tables fill one page at [`ACPI_GPA`], in the PC's BIOS area (reserved in the memory
//! map), where a kernel that scans for the RSDP also finds it; PVH guests get its address in
//! `hvm_start_info.rsdp_paddr`.

/// Guest-physical address of the tables' page (the RSDP is its first bytes).
pub const ACPI_GPA: u64 = 0xe_0000;
/// The page's size.
pub const ACPI_BYTES: usize = 4096;
/// vCPUs the MADT can list.
pub const MAX_CPUS: u32 = 64;

/// The platform the tables describe, in the widths the tables use (`abi::platform` is the one
/// description, shared with microhv's device models).
mod hw {
    use abi::platform as p;
    pub const LAPIC: u32 = p::LAPIC_BASE as u32;
    pub const IOAPIC: u32 = p::IOAPIC_BASE as u32;
    pub const HPET: u64 = p::HPET_BASE;
    pub const PM1A_EVT: u32 = p::PM1A_EVT_BLK as u32;
    pub const PM1A_CNT: u32 = p::PM1A_CNT_BLK as u32;
    pub const PM_TMR: u32 = p::PM_TMR_BLK as u32;
    pub const SCI: u16 = p::SCI_IRQ as u16;
    pub const SLP_TYP_S5: u8 = p::SLP_TYP_S5;
    pub const RESET_PORT: u64 = p::RESET_PORT as u64;
    pub const RESET_VALUE: u8 = p::RESET_VALUE;
    pub const CENTURY: u8 = p::CMOS_CENTURY;
    /// HPET event timer block ID: vendor 0x8086, legacy-replacement capable, 64-bit counter,
    /// 3 comparators (field = last index), revision 1.
    pub const HPET_ID: u32 = 0x8086_a201;
}

const RSDP: usize = 0x000;
const XSDT: usize = 0x040;
const FADT: usize = 0x100;
const FACS: usize = 0x200;
const DSDT: usize = 0x280;
const MADT: usize = 0x300;
const HPET: usize = 0x700;

fn put(page: &mut [u8], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

fn put16(page: &mut [u8], at: usize, v: u16) {
    put(page, at, &v.to_le_bytes());
}

fn put32(page: &mut [u8], at: usize, v: u32) {
    put(page, at, &v.to_le_bytes());
}

fn put64(page: &mut [u8], at: usize, v: u64) {
    put(page, at, &v.to_le_bytes());
}

/// Makes `page[at..at + len]` sum to zero by setting the byte at `at + field`.
fn checksum(page: &mut [u8], at: usize, len: usize, field: usize) {
    page[at + field] = 0;
    let sum = page[at..at + len].iter().fold(0u8, |s, b| s.wrapping_add(*b));
    page[at + field] = sum.wrapping_neg();
}

/// A system description table's 36-byte header; the checksum is filled by [`finish`].
fn header(page: &mut [u8], at: usize, sig: &[u8; 4], len: usize, rev: u8) {
    put(page, at, sig);
    put32(page, at + 4, len as u32);
    page[at + 8] = rev;
    put(page, at + 10, b"MICRHV");
    put(page, at + 16, b"MICROHV ");
    put32(page, at + 24, 1);
    put(page, at + 28, b"MHV ");
    put32(page, at + 32, 1);
}

fn finish(page: &mut [u8], at: usize, len: usize) {
    checksum(page, at, len, 9);
}

/// A generic address structure: I/O space (1) or memory (0), `bits` wide.
fn gas(page: &mut [u8], at: usize, space: u8, bits: u8, access: u8, addr: u64) {
    page[at] = space;
    page[at + 1] = bits;
    page[at + 2] = 0;
    page[at + 3] = access;
    put64(page, at + 4, addr);
}

/// Builds the tables for a domain with `vcpus` vCPUs (at most [`MAX_CPUS`]).
pub fn build(vcpus: u32) -> [u8; ACPI_BYTES] {
    let vcpus = vcpus.clamp(1, MAX_CPUS);
    let base = ACPI_GPA;
    let mut p = [0u8; ACPI_BYTES];

    // RSDP, revision 2: the XSDT's address.
    put(&mut p, RSDP, b"RSD PTR ");
    put(&mut p, RSDP + 9, b"MICRHV");
    p[RSDP + 15] = 2;
    put32(&mut p, RSDP + 20, 36);
    put64(&mut p, RSDP + 24, base + XSDT as u64);
    checksum(&mut p, RSDP, 20, 8);
    checksum(&mut p, RSDP, 36, 32);

    // XSDT: FADT, MADT, HPET.
    let entries = [FADT, MADT, HPET];
    let len = 36 + 8 * entries.len();
    header(&mut p, XSDT, b"XSDT", len, 1);
    for (i, t) in entries.iter().enumerate() {
        put64(&mut p, XSDT + 36 + 8 * i, base + *t as u64);
    }
    finish(&mut p, XSDT, len);

    // FADT (revision 4, 244 bytes): the PM blocks, SCI, reset register, century; no SMI
    // command port, so the platform is always in ACPI mode.
    let f = FADT;
    header(&mut p, f, b"FACP", 244, 4);
    put32(&mut p, f + 36, (base + FACS as u64) as u32);
    put32(&mut p, f + 40, (base + DSDT as u64) as u32);
    put16(&mut p, f + 46, hw::SCI);
    put32(&mut p, f + 56, hw::PM1A_EVT);
    put32(&mut p, f + 64, hw::PM1A_CNT);
    put32(&mut p, f + 76, hw::PM_TMR);
    p[f + 88] = 4; // PM1_EVT_LEN
    p[f + 89] = 2; // PM1_CNT_LEN
    p[f + 91] = 4; // PM_TMR_LEN
    p[f + 108] = hw::CENTURY;
    put16(&mut p, f + 109, 1); // IAPC_BOOT_ARCH: legacy devices (RTC, PIT, PICs)
    // Flags: WBINVD, PROC_C1, SLP_BUTTON (none), RESET_REG_SUP.
    put32(&mut p, f + 112, (1 << 0) | (1 << 2) | (1 << 5) | (1 << 10));
    gas(&mut p, f + 116, 1, 8, 1, hw::RESET_PORT);
    p[f + 128] = hw::RESET_VALUE;
    put64(&mut p, f + 132, base + FACS as u64);
    put64(&mut p, f + 140, base + DSDT as u64);
    gas(&mut p, f + 148, 1, 32, 3, hw::PM1A_EVT.into());
    gas(&mut p, f + 172, 1, 16, 2, hw::PM1A_CNT.into());
    gas(&mut p, f + 208, 1, 32, 3, hw::PM_TMR.into());
    finish(&mut p, f, 244);

    // FACS: required outside hardware-reduced ACPI; nothing in it is used.
    put(&mut p, FACS, b"FACS");
    put32(&mut p, FACS + 4, 64);
    p[FACS + 32] = 2;

    // DSDT: Name (\_S5, Package () { SLP_TYP, SLP_TYP, 0, 0 }).
    let s5 = [
        0x08,
        b'\\',
        b'_',
        b'S',
        b'5',
        b'_',
        0x12,
        0x08,
        0x04,
        0x0a,
        hw::SLP_TYP_S5,
        0x0a,
        hw::SLP_TYP_S5,
        0x00,
        0x00,
    ];
    let len = 36 + s5.len();
    header(&mut p, DSDT, b"DSDT", len, 2);
    put(&mut p, DSDT + 36, &s5);
    finish(&mut p, DSDT, len);

    // MADT: the local APICs, the I/O APIC, IRQ 0 → GSI 2, the SCI (level, active high), and
    // LINT1 as NMI on every processor.
    let m = MADT;
    let mut at = m + 44;
    for i in 0..vcpus {
        put(&mut p, at, &[0, 8, i as u8, i as u8]);
        put32(&mut p, at + 4, 1);
        at += 8;
    }
    put(&mut p, at, &[1, 12, 0, 0]);
    put32(&mut p, at + 4, hw::IOAPIC);
    put32(&mut p, at + 8, 0);
    at += 12;
    for (irq, gsi, flags) in [(0u8, 2u32, 0u16), (hw::SCI as u8, hw::SCI.into(), 0x000d)] {
        put(&mut p, at, &[2, 10, 0, irq]);
        put32(&mut p, at + 4, gsi);
        put16(&mut p, at + 8, flags);
        at += 10;
    }
    put(&mut p, at, &[4, 6, 0xff, 0, 0, 1]);
    at += 6;
    let len = at - m;
    header(&mut p, m, b"APIC", len, 3);
    put32(&mut p, m + 36, hw::LAPIC);
    put32(&mut p, m + 40, 1); // PCAT_COMPAT: the 8259 pair is there
    finish(&mut p, m, len);

    // HPET.
    let h = HPET;
    header(&mut p, h, b"HPET", 56, 1);
    put32(&mut p, h + 36, hw::HPET_ID);
    gas(&mut p, h + 40, 0, 64, 0, hw::HPET);
    put16(&mut p, h + 53, 128); // minimum periodic tick
    finish(&mut p, h, 56);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    fn u32_at(p: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(p[at..at + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(p: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(p[at..at + 8].try_into().expect("8 bytes"))
    }

    /// The table at guest-physical `gpa`: its bytes, after checking its checksum.
    fn table(p: &[u8], gpa: u64, sig: &[u8; 4]) -> std::vec::Vec<u8> {
        let at = (gpa - ACPI_GPA) as usize;
        assert_eq!(&p[at..at + 4], sig);
        let len = u32_at(p, at + 4) as usize;
        assert_eq!(sum(&p[at..at + len]), 0, "{} checksum", core::str::from_utf8(sig).unwrap());
        p[at..at + len].to_vec()
    }

    #[test]
    fn every_table_is_reachable_from_the_rsdp_and_checksummed() {
        let p = build(2);
        assert_eq!(&p[..8], b"RSD PTR ");
        assert_eq!(sum(&p[..20]), 0);
        assert_eq!(sum(&p[..36]), 0);
        let xsdt = table(&p, u64_at(&p, 24), b"XSDT");
        let sigs: [&[u8; 4]; 3] = [b"FACP", b"APIC", b"HPET"];
        for (i, sig) in sigs.iter().enumerate() {
            table(&p, u64_at(&xsdt, 36 + 8 * i), sig);
        }
        let fadt = table(&p, u64_at(&xsdt, 36), b"FACP");
        let dsdt = table(&p, u64_at(&fadt, 140), b"DSDT");
        assert_eq!(u64::from(u32_at(&fadt, 40)), u64_at(&fadt, 140));
        // The PM timer and PM1 blocks where microhv's PM model is, and \_S5 with its SLP_TYP.
        assert_eq!(
            (u32_at(&fadt, 56), u32_at(&fadt, 64), u32_at(&fadt, 76)),
            (0x600, 0x604, 0x608)
        );
        assert_eq!(&dsdt[36..42], b"\x08\\_S5_");
        assert_eq!(dsdt[46], hw::SLP_TYP_S5);
        let facs = (u64_at(&fadt, 132) - ACPI_GPA) as usize;
        assert_eq!(&p[facs..facs + 4], b"FACS");
    }

    #[test]
    fn the_madt_lists_every_vcpu_the_io_apic_and_the_overrides() {
        let p = build(3);
        let madt = table(&p, ACPI_GPA + MADT as u64, b"APIC");
        let (mut at, mut cpus, mut overrides) = (44, 0, std::vec::Vec::new());
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            match kind {
                0 => {
                    assert_eq!(madt[at + 3], cpus, "APIC ids in order");
                    cpus += 1;
                }
                1 => assert_eq!(u32_at(&madt, at + 4), 0xfec0_0000),
                2 => overrides.push((madt[at + 3], u32_at(&madt, at + 4))),
                4 => {}
                k => panic!("unexpected MADT entry {k}"),
            }
            at += len;
        }
        assert_eq!(at, madt.len());
        assert_eq!(cpus, 3);
        assert_eq!(overrides, [(0, 2), (9, 9)]);
        // Oversized requests are clamped to what fits.
        let p = build(1000);
        let madt = table(&p, ACPI_GPA + MADT as u64, b"APIC");
        assert!(madt.len() < HPET - MADT);
    }
}
