//! Building a domain from a kernel image, through hypercalls: dom0's equivalent of Xen's
//! `libxenguest`.
//!
//! Two image formats are accepted: ELF with the PVH entry note (started in the PVH state with
//! `ebx` = start info at `0x1000`), and multiboot v1 kernels (ELF, or any file with the header's
//! address fields; started with `eax = 0x2BADB002`, `ebx` = the information structure at
//! `0x1000`). Every domain also gets the ACPI tables of its virtual platform (`acpi`) and its
//! boot modules (an initrd), page-aligned after the image: PVH kernels find them in the start
//! info's module list, multiboot kernels in the information structure's `mods` list. The
//! domain is left in state `Created`; the caller unpauses it. On any failure the half-built
//! domain is destroyed.

use crate::multiboot;
use abi::Errno;
use abi::hypercall::MEM_WRITE_MAX;
use abi::pvh::{self, ImageError, START_INFO_GPA};
use abi::types::{DOMCREATE_DEVICE_MODEL, DomainCreate, VCPU_MODE_FLAT32, VcpuState, name_field};

/// The hypercalls the builder uses (implemented by `abi::guest::Hypervisor`; faked in tests).
pub trait Hypercalls {
    /// `DomainCreate`.
    fn domain_create(&self, c: &DomainCreate) -> Result<u32, Errno>;
    /// `MemWrite`.
    fn mem_write(&self, domid: u32, dst: u64, src: &[u8]) -> Result<u64, Errno>;
    /// `VcpuSetState`.
    fn vcpu_set_state(&self, domid: u32, vcpu: u32, s: &VcpuState) -> Result<(), Errno>;
    /// `DomainDestroy`.
    fn domain_destroy(&self, domid: u32) -> Result<(), Errno>;
}

impl Hypercalls for abi::guest::Hypervisor {
    fn domain_create(&self, c: &DomainCreate) -> Result<u32, Errno> {
        abi::guest::Hypervisor::domain_create(self, c)
    }
    fn mem_write(&self, domid: u32, dst: u64, src: &[u8]) -> Result<u64, Errno> {
        abi::guest::Hypervisor::mem_write(self, domid, dst, src)
    }
    fn vcpu_set_state(&self, domid: u32, vcpu: u32, s: &VcpuState) -> Result<(), Errno> {
        abi::guest::Hypervisor::vcpu_set_state(self, domid, vcpu, s)
    }
    fn domain_destroy(&self, domid: u32) -> Result<(), Errno> {
        abi::guest::Hypervisor::domain_destroy(self, domid)
    }
}

/// What to build.
#[derive(Debug, Clone, Copy)]
pub struct DomainSpec<'a> {
    /// Name.
    pub name: &'a str,
    /// RAM in bytes.
    pub mem_bytes: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Initial `n_requested_mmu_pages` (0 = default).
    pub mmu_pages: u64,
    /// `DOMCREATE_*` flags.
    pub flags: u32,
    /// The kernel's command line.
    pub cmdline: &'a str,
    /// Boot modules for the kernel (an initrd first), placed page-aligned after its image;
    /// PVH guests find them in `hvm_start_info`'s module list, multiboot kernels in the
    /// information structure's (`mods_count`, `mods_addr`).
    pub modules: &'a [Module<'a>],
}

/// A boot module handed to the domain's kernel.
#[derive(Debug, Clone, Copy)]
pub struct Module<'a> {
    /// Its bytes.
    pub data: &'a [u8],
    /// Its command line.
    pub cmdline: &'a str,
}

/// The image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ELF with a PVH entry note.
    Pvh,
    /// Multiboot v1.
    Multiboot,
}

/// Why a domain could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// The name is empty, too long or not printable ASCII.
    BadName,
    /// Neither a PVH ELF nor a multiboot kernel.
    UnknownFormat,
    /// A broken ELF image.
    Elf(ImageError),
    /// A broken multiboot header.
    Multiboot(multiboot::HeaderError),
    /// The image does not fit in the domain's memory, or overlaps the boot-information page.
    DoesNotFit,
    /// The command line does not fit in the boot-information page.
    CmdlineTooLong,
    /// A hypercall failed.
    Hypercall(&'static str, Errno),
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::BadName => f.write_str("bad domain name"),
            BuildError::UnknownFormat => f.write_str("not a PVH ELF or multiboot kernel"),
            BuildError::Elf(e) => write!(f, "bad ELF image: {e:?}"),
            BuildError::Multiboot(e) => write!(f, "bad multiboot header: {e:?}"),
            BuildError::DoesNotFit => f.write_str("image does not fit in the domain's memory"),
            BuildError::CmdlineTooLong => f.write_str("command line too long"),
            BuildError::Hypercall(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

/// A load step: file bytes to place at a guest-physical address (the rest of `memsz` stays
/// zero: domain memory starts zeroed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// Guest-physical destination.
    pub gpa: u64,
    /// File range.
    pub file: core::ops::Range<usize>,
    /// Bytes occupied in memory.
    pub memsz: u64,
}

/// How to load and start an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The format.
    pub format: Format,
    /// What to copy where.
    pub loads: heapless::Vec<Load, { pvh::MAX_SEGMENTS }>,
    /// Entry point.
    pub entry: u32,
}

/// First guest-physical address an image may occupy: below are the boot-information page and
/// the real-mode area.
pub const IMAGE_MIN_GPA: u64 = 0x10_0000;

/// Works out how to load `image` into a domain with `mem_bytes` of RAM.
pub fn plan(image: &[u8], mem_bytes: u64) -> Result<Plan, BuildError> {
    let elf = pvh::Image::parse(image);
    let plan = match (&elf, multiboot::Header::find(image)) {
        (Ok(e), _) if e.pvh_entry.is_some() => Plan {
            format: Format::Pvh,
            loads: e.segments.iter().map(|s| load(s, e.data_range(s))).collect(),
            entry: e.pvh().map_err(BuildError::Elf)?,
        },
        (_, Ok(h)) if h.addresses.is_some() => {
            let (file, gpa, memsz, entry) =
                h.load_plan(image.len()).ok_or(BuildError::DoesNotFit)?;
            let mut loads = heapless::Vec::new();
            let _ = loads.push(Load { gpa, file, memsz });
            Plan { format: Format::Multiboot, loads, entry }
        }
        (Ok(e), Ok(_)) => Plan {
            format: Format::Multiboot,
            loads: e.segments.iter().map(|s| load(s, e.data_range(s))).collect(),
            entry: u32::try_from(e.elf_entry).map_err(|_| BuildError::DoesNotFit)?,
        },
        (
            _,
            Err(
                h @ (multiboot::HeaderError::BadChecksum
                | multiboot::HeaderError::Unsupported(_)
                | multiboot::HeaderError::BadAddresses),
            ),
        ) => return Err(BuildError::Multiboot(h)),
        (Err(ImageError::NotElf), _) => return Err(BuildError::UnknownFormat),
        (Err(e), _) => return Err(BuildError::Elf(*e)),
        (Ok(_), Err(_)) => return Err(BuildError::Elf(ImageError::NoPvhEntry)),
    };
    for l in &plan.loads {
        let end = l.gpa.checked_add(l.memsz).ok_or(BuildError::DoesNotFit)?;
        if l.gpa < IMAGE_MIN_GPA || end > mem_bytes {
            return Err(BuildError::DoesNotFit);
        }
    }
    if u64::from(plan.entry) >= mem_bytes {
        return Err(BuildError::DoesNotFit);
    }
    Ok(plan)
}

fn load(s: &pvh::Segment, file: core::ops::Range<usize>) -> Load {
    Load { gpa: s.paddr, file, memsz: s.memsz }
}

/// Builds a domain from `image` and leaves it `Created`; returns its domid.
pub fn build<H: Hypercalls>(h: &H, spec: &DomainSpec<'_>, image: &[u8]) -> Result<u32, BuildError> {
    let name = name_field(spec.name).ok_or(BuildError::BadName)?;
    let plan = plan(image, spec.mem_bytes)?;
    // Modules go page-aligned after the image's highest byte, whatever the format: the boot
    // page (0x1000) and the ACPI tables lie below the image, which starts at 1 MiB or above.
    let mut next = plan.loads.iter().map(|l| l.gpa + l.memsz).max().unwrap_or(IMAGE_MIN_GPA);
    let mut descs: heapless::Vec<pvh::ModuleDesc<'_>, { pvh::MAX_MODULES }> = heapless::Vec::new();
    for m in spec.modules {
        let at = next.next_multiple_of(4096);
        let end = at.checked_add(m.data.len() as u64).ok_or(BuildError::DoesNotFit)?;
        if end > spec.mem_bytes {
            return Err(BuildError::DoesNotFit);
        }
        let d = pvh::ModuleDesc { paddr: at, size: m.data.len() as u64, cmdline: m.cmdline };
        descs.push(d).map_err(|_| BuildError::CmdlineTooLong)?;
        next = end;
    }
    let acpi = crate::acpi::build(spec.vcpus);
    let boot_page = match plan.format {
        Format::Pvh => {
            pvh::build_start_page(spec.mem_bytes, spec.cmdline, &descs, crate::acpi::ACPI_GPA)
                .map_err(|_| BuildError::CmdlineTooLong)?
        }
        Format::Multiboot => {
            // The module list's fields are 32-bit, `mod_end` (one past the last byte)
            // included: every module must end below 4 GiB.
            if descs.iter().any(|d| d.paddr + d.size > u64::from(u32::MAX)) {
                return Err(BuildError::DoesNotFit);
            }
            multiboot::build_info(START_INFO_GPA as u32, spec.mem_bytes, spec.cmdline, &descs)
                .ok_or(BuildError::CmdlineTooLong)?
        }
    };
    let create = DomainCreate {
        name,
        mem_bytes: spec.mem_bytes,
        mmu_pages: spec.mmu_pages,
        vcpus: spec.vcpus,
        // Every domain dom0 builds gets dom0's device models (`dm`).
        flags: spec.flags | DOMCREATE_DEVICE_MODEL,
    };
    let domid = h.domain_create(&create).map_err(|e| BuildError::Hypercall("create", e))?;
    let populate = || -> Result<(), BuildError> {
        for l in &plan.loads {
            let data = image.get(l.file.clone()).ok_or(BuildError::DoesNotFit)?;
            for (i, chunk) in data.chunks(MEM_WRITE_MAX as usize).enumerate() {
                let dst = l.gpa + (i as u64) * MEM_WRITE_MAX;
                h.mem_write(domid, dst, chunk).map_err(|e| BuildError::Hypercall("load", e))?;
            }
        }
        for (m, d) in spec.modules.iter().zip(&descs) {
            for (i, chunk) in m.data.chunks(MEM_WRITE_MAX as usize).enumerate() {
                let dst = d.paddr + (i as u64) * MEM_WRITE_MAX;
                h.mem_write(domid, dst, chunk).map_err(|e| BuildError::Hypercall("module", e))?;
            }
        }
        h.mem_write(domid, crate::acpi::ACPI_GPA, &acpi)
            .map_err(|e| BuildError::Hypercall("ACPI tables", e))?;
        h.mem_write(domid, START_INFO_GPA, &boot_page)
            .map_err(|e| BuildError::Hypercall("boot information", e))?;
        let (rax, rbx) = match plan.format {
            Format::Pvh => (0, START_INFO_GPA),
            Format::Multiboot => (multiboot::BOOT_MAGIC.into(), START_INFO_GPA),
        };
        let state = VcpuState {
            mode: VCPU_MODE_FLAT32,
            flags: 0,
            rip: plan.entry.into(),
            rsp: 0,
            rax,
            rbx,
            rcx: 0,
            rdx: 0,
            rsi: 0,
            rdi: 0,
        };
        h.vcpu_set_state(domid, 0, &state).map_err(|e| BuildError::Hypercall("vcpu state", e))
    };
    if let Err(e) = populate() {
        let _ = h.domain_destroy(domid);
        return Err(e);
    }
    Ok(domid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::pvh::ModuleDesc;
    use core::cell::RefCell;
    use std::vec::Vec;
    use zerocopy::FromBytes;

    #[derive(Default)]
    struct Fake {
        writes: RefCell<Vec<(u64, Vec<u8>)>>,
        state: RefCell<Option<VcpuState>>,
        destroyed: RefCell<bool>,
        fail_write: bool,
    }

    impl Hypercalls for Fake {
        fn domain_create(&self, c: &DomainCreate) -> Result<u32, Errno> {
            if c.mem_bytes > 1 << 30 { Err(Errno::ENOMEM) } else { Ok(7) }
        }
        fn mem_write(&self, _: u32, dst: u64, src: &[u8]) -> Result<u64, Errno> {
            if self.fail_write {
                return Err(Errno::EFAULT);
            }
            assert!(src.len() as u64 <= MEM_WRITE_MAX);
            self.writes.borrow_mut().push((dst, src.to_vec()));
            Ok(src.len() as u64)
        }
        fn vcpu_set_state(&self, _: u32, _: u32, s: &VcpuState) -> Result<(), Errno> {
            *self.state.borrow_mut() = Some(*s);
            Ok(())
        }
        fn domain_destroy(&self, _: u32) -> Result<(), Errno> {
            *self.destroyed.borrow_mut() = true;
            Ok(())
        }
    }

    fn spec(mem: u64) -> DomainSpec<'static> {
        DomainSpec {
            name: "t",
            mem_bytes: mem,
            vcpus: 1,
            mmu_pages: 0,
            flags: 0,
            cmdline: "a b",
            modules: &[],
        }
    }

    /// A multiboot image with address fields: header at offset 0, loaded at 1 MiB.
    fn mb_image(payload: usize) -> Vec<u8> {
        let flags = 0x0001_0002u32;
        let mut v: Vec<u8> = [
            multiboot::HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(multiboot::HEADER_MAGIC.wrapping_add(flags)),
            0x10_0000,
            0x10_0000,
            0,
            0x10_0000 + 0x3000,
            0x10_0020,
        ]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
        v.resize(payload, 0x90);
        v
    }

    #[test]
    fn pvh_images_are_loaded_and_started_with_a_start_info() {
        let img = abi::testutil::pvh_image(0x10_0000, &[0xab; 70_000], 0x100, 0x10_0000);
        let f = Fake::default();
        assert_eq!(build(&f, &spec(4 << 20), &img), Ok(7));
        let w = f.writes.borrow();
        assert_eq!(w.len(), 4, "two chunks of the segment, the ACPI tables, the start page");
        assert_eq!((w[0].0, w[0].1.len()), (0x10_0000, 65536));
        assert_eq!((w[1].0, w[1].1.len()), (0x11_0000, 70_000 - 65536));
        assert_eq!((w[2].0, &w[2].1[..8]), (crate::acpi::ACPI_GPA, &b"RSD PTR "[..]));
        assert_eq!(w[3].0, START_INFO_GPA);
        let info = pvh::StartInfo::read_from_prefix(&w[3].1).unwrap().0;
        assert_eq!((info.rsdp_paddr, info.nr_modules), (crate::acpi::ACPI_GPA, 0));
        let s = f.state.borrow().expect("state set");
        assert_eq!((s.rip, s.rbx, s.mode), (0x10_0000, START_INFO_GPA, VCPU_MODE_FLAT32));
    }

    #[test]
    fn modules_follow_the_image_page_aligned_and_are_listed() {
        let img = abi::testutil::pvh_image(0x10_0000, &[0xab; 70_000], 0x100, 0x10_0000);
        let initrd = [0x5au8; 5000];
        let mods = [Module { data: &initrd, cmdline: "initrd" }];
        let f = Fake::default();
        assert_eq!(build(&f, &DomainSpec { modules: &mods, ..spec(4 << 20) }, &img), Ok(7));
        let w = f.writes.borrow();
        // The image ends at 0x1112a0 (70,000 bytes and 0x100 of bss): the module is at 0x112000.
        assert_eq!((w[2].0, w[2].1.len()), (0x11_2000, 5000));
        let page = &w.last().expect("start page").1;
        let info = pvh::StartInfo::read_from_prefix(page).unwrap().0;
        assert_eq!(info.nr_modules, 1);
        let at = (info.modlist_paddr - START_INFO_GPA) as usize;
        let m = pvh::ModlistEntry::read_from_prefix(&page[at..]).unwrap().0;
        assert_eq!((m.paddr, m.size), (0x11_2000, 5000));
        // A module that does not fit is refused before anything is created.
        let big = std::vec![0u8; 4 << 20];
        let mods = [Module { data: &big, cmdline: "" }];
        let f = Fake::default();
        let spec = DomainSpec { modules: &mods, ..spec(4 << 20) };
        assert_eq!(build(&f, &spec, &img), Err(BuildError::DoesNotFit));
        assert!(f.writes.borrow().is_empty());
    }

    #[test]
    fn multiboot_images_get_the_magic_and_an_info_page() {
        let img = mb_image(0x2000);
        let p = plan(&img, 4 << 20).unwrap();
        assert_eq!(p.format, Format::Multiboot);
        assert_eq!(p.entry, 0x10_0020);
        assert_eq!(p.loads[0], Load { gpa: 0x10_0000, file: 0..0x2000, memsz: 0x3000 });
        let f = Fake::default();
        assert_eq!(build(&f, &spec(4 << 20), &img), Ok(7));
        let s = f.state.borrow().expect("state set");
        assert_eq!((s.rax, s.rbx), (u64::from(multiboot::BOOT_MAGIC), START_INFO_GPA));
        let w = f.writes.borrow();
        let info = multiboot::Info::read_from_prefix(&w[2].1).unwrap().0;
        assert_eq!(info.mem_upper, 3 * 1024);
        let cmd = (info.cmdline - START_INFO_GPA as u32) as usize;
        assert_eq!(&w[2].1[cmd..cmd + 4], b"a b\0");
    }

    #[test]
    fn multiboot_kernels_get_their_modules_in_the_mods_list() {
        // The image occupies 0x100000-0x103000 (its bss included).
        let img = mb_image(0x2000);
        let (text, blob) = (b"a short text module".as_slice(), [0xc3u8; 5000]);
        let mods = [
            Module { data: text, cmdline: "greeting" },
            Module { data: &blob, cmdline: "blob x=1" },
        ];
        let f = Fake::default();
        assert_eq!(build(&f, &DomainSpec { modules: &mods, ..spec(4 << 20) }, &img), Ok(7));
        let w = f.writes.borrow();
        // The same placement as for PVH kernels: page-aligned after the image, in order.
        assert_eq!((w[1].0, &w[1].1[..]), (0x10_3000, text));
        assert_eq!((w[2].0, w[2].1.len()), (0x10_4000, 5000));
        let page = &w.last().expect("information page").1;
        assert_eq!(w.last().expect("information page").0, START_INFO_GPA);
        let info = multiboot::Info::read_from_prefix(page).unwrap().0;
        assert_ne!(info.flags & multiboot::INFO_MODS, 0);
        assert_eq!(info.mods_count, 2);
        let at = |gpa: u32| (gpa - START_INFO_GPA as u32) as usize;
        let entry = |i: usize| {
            let o = at(info.mods_addr) + 16 * i;
            multiboot::ModEntry::read_from_prefix(&page[o..]).unwrap().0
        };
        let (a, b) = (entry(0), entry(1));
        assert_eq!((a.mod_start, a.mod_end), (0x10_3000, 0x10_3000 + text.len() as u32));
        assert_eq!((b.mod_start, b.mod_end), (0x10_4000, 0x10_4000 + 5000));
        assert_eq!(&page[at(a.string)..at(a.string) + 9], b"greeting\0");
        assert_eq!(&page[at(b.string)..at(b.string) + 9], b"blob x=1\0");
        // The list and its strings stay in the information page, clear of the modules.
        assert!(at(info.mods_addr) + 32 <= 4096 && u64::from(a.mod_start) >= START_INFO_GPA + 4096);
        let cmd = at(info.cmdline);
        assert_eq!(&page[cmd..cmd + 4], b"a b\0");
        // Without modules the list is empty.
        let f = Fake::default();
        assert_eq!(build(&f, &spec(4 << 20), &img), Ok(7));
        let w = f.writes.borrow();
        let info = multiboot::Info::read_from_prefix(&w.last().expect("page").1).unwrap().0;
        assert_eq!((info.mods_count, info.mods_addr), (0, 0));
    }

    #[test]
    fn multiboot_modules_must_end_below_4_gib() {
        let mods = [Module { data: &[1, 2, 3], cmdline: "m" }];
        let high = [ModuleDesc { paddr: 0xffff_f000, size: 0x2000, cmdline: "m" }];
        assert!(multiboot::build_info(0x1000, 8 << 30, "", &high).is_none());
        let at_4g = [ModuleDesc { paddr: 0xffff_f000, size: 0x1000, cmdline: "m" }];
        assert!(multiboot::build_info(0x1000, 8 << 30, "", &at_4g).is_none(), "mod_end = 2^32");
        let low = [ModuleDesc { paddr: 0xffff_f000, size: 0xfff, cmdline: "m" }];
        assert!(multiboot::build_info(0x1000, 8 << 30, "", &low).is_some());
        // A module list whose strings overflow the page is refused, not truncated.
        let long = "x".repeat(3000);
        let two = [ModuleDesc { paddr: 0x20_0000, size: 1, cmdline: &long }; 2];
        assert!(multiboot::build_info(0x1000, 8 << 20, "", &two).is_none());
        let f = Fake::default();
        let s = DomainSpec { modules: &mods, cmdline: &long, ..spec(4 << 20) };
        assert_eq!(build(&f, &s, &mb_image(0x2000)), Ok(7));
        let s = DomainSpec { cmdline: &"y".repeat(4000), ..s };
        assert_eq!(build(&f, &s, &mb_image(0x2000)), Err(BuildError::CmdlineTooLong));
    }

    #[test]
    fn bad_images_are_refused_before_anything_is_created() {
        let f = Fake::default();
        assert_eq!(build(&f, &spec(4 << 20), b"hello"), Err(BuildError::UnknownFormat));
        let mut bad = mb_image(0x2000);
        bad[8] ^= 1;
        assert_eq!(
            plan(&bad, 4 << 20),
            Err(BuildError::Multiboot(multiboot::HeaderError::BadChecksum))
        );
        let big = abi::testutil::pvh_image(0x10_0000, &[1; 16], 8 << 20, 0x10_0000);
        assert_eq!(plan(&big, 4 << 20), Err(BuildError::DoesNotFit));
        let low = abi::testutil::pvh_image(0x1000, &[1; 16], 0, 0x1000);
        assert_eq!(plan(&low, 4 << 20), Err(BuildError::DoesNotFit), "over the start page");
        let mut s = spec(4 << 20);
        s.name = "";
        assert_eq!(build(&f, &s, &mb_image(0x2000)), Err(BuildError::BadName));
        assert!(f.writes.borrow().is_empty());
    }

    #[test]
    fn a_failed_load_destroys_the_half_built_domain() {
        let f = Fake { fail_write: true, ..Fake::default() };
        let r = build(&f, &spec(4 << 20), &mb_image(0x2000));
        assert_eq!(r, Err(BuildError::Hypercall("load", Errno::EFAULT)));
        assert!(*f.destroyed.borrow());
    }

    proptest::proptest! {
        #[test]
        fn random_and_corrupted_images_never_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            at in 0usize..64,
            v in proptest::num::u8::ANY,
        ) {
            let _ = plan(&bytes, 4 << 20);
            let mut mb = mb_image(0x100);
            mb[at % 32] = v;
            let _ = plan(&mb, 4 << 20);
        }
    }
}
