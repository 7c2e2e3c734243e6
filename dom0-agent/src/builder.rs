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
//!
//! Images and modules are [`Source`]s: in memory (an upload, a boot module) or files on dom0's
//! disk. The builder reads only the headers it needs and copies each loadable segment into the
//! domain in chunks of at most `MEM_WRITE_MAX` bytes, so an image need not fit in dom0's memory.

use crate::image::{self, SCRATCH_MIN, Source};
use crate::multiboot;
use abi::Errno;
use abi::hypercall::MEM_WRITE_MAX;
use abi::proto::DiskError;
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
#[derive(Clone, Copy)]
pub struct Module<'a> {
    /// Its bytes.
    pub data: &'a dyn Source,
    /// Its command line.
    pub cmdline: &'a str,
}

impl core::fmt::Debug for Module<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Module")
            .field("size", &self.data.size())
            .field("cmdline", &self.cmdline)
            .finish()
    }
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
    /// The image (`None`) or a module (its index) could not be read (a file on dom0's disk).
    Read(Option<usize>, DiskError),
    /// A file source was given no scratch buffer of at least `image::SCRATCH_MIN` bytes to
    /// read through (a caller's mistake, reported rather than trusted).
    NoBuffer,
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
            BuildError::Read(None, e) => write!(f, "reading the image: {e}"),
            BuildError::Read(Some(i), e) => write!(f, "reading module {i}: {e}"),
            BuildError::NoBuffer => f.write_str("no buffer to read the image through"),
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
    pub file: core::ops::Range<u64>,
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
    plan_source(&image, mem_bytes, &mut [])
}

/// Works out how to load the image `src` into a domain with `mem_bytes` of RAM, reading its
/// headers through `scratch` (at least [`SCRATCH_MIN`] bytes unless `src` is in memory).
pub fn plan_source(
    src: &dyn Source,
    mem_bytes: u64,
    scratch: &mut [u8],
) -> Result<Plan, BuildError> {
    if src.as_slice().is_none() && scratch.len() < SCRATCH_MIN {
        return Err(BuildError::NoBuffer);
    }
    let (head_buf, table_buf) = scratch.split_at_mut(scratch.len().min(image::HEAD_BYTES));
    let head = image::head(src, head_buf).map_err(|e| BuildError::Read(None, e))?;
    let elf = image::parse(src, head, table_buf);
    let plan = match (&elf, multiboot::Header::find(head)) {
        (Ok(e), _) if e.pvh_entry.is_some() => Plan {
            format: Format::Pvh,
            loads: e.segments.iter().map(load).collect(),
            entry: e.pvh_entry.ok_or(BuildError::Elf(ImageError::NoPvhEntry))?,
        },
        (_, Ok(h)) if h.addresses.is_some() => {
            let len = usize::try_from(src.size()).map_err(|_| BuildError::DoesNotFit)?;
            let (file, gpa, memsz, entry) = h.load_plan(len).ok_or(BuildError::DoesNotFit)?;
            let file = file.start as u64..file.end as u64;
            let mut loads = heapless::Vec::new();
            let _ = loads.push(Load { gpa, file, memsz });
            Plan { format: Format::Multiboot, loads, entry }
        }
        (Ok(e), Ok(_)) => Plan {
            format: Format::Multiboot,
            loads: e.segments.iter().map(load).collect(),
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

fn load(s: &pvh::Segment) -> Load {
    let start = s.offset as u64;
    Load { gpa: s.paddr, file: start..start + s.filesz as u64, memsz: s.memsz }
}

/// Builds a domain from `image` and leaves it `Created`; returns its domid.
pub fn build<H: Hypercalls>(h: &H, spec: &DomainSpec<'_>, image: &[u8]) -> Result<u32, BuildError> {
    build_from(h, spec, &image, &mut [])
}

/// Builds a domain from the image `src` and leaves it `Created`; returns its domid. Sources
/// that are not in memory are read through `scratch` (at least [`SCRATCH_MIN`] bytes; reads
/// go in chunks of up to its size, at most `MEM_WRITE_MAX`).
pub fn build_from<H: Hypercalls>(
    h: &H,
    spec: &DomainSpec<'_>,
    src: &dyn Source,
    scratch: &mut [u8],
) -> Result<u32, BuildError> {
    build_as(h, spec, src, scratch).map(|(domid, _)| domid)
}

/// As [`build_from`], and which format the image was: what the domain was given to boot with
/// (only a PVH domain has a start page, and with it a place for its store's descriptor).
pub fn build_as<H: Hypercalls>(
    h: &H,
    spec: &DomainSpec<'_>,
    src: &dyn Source,
    scratch: &mut [u8],
) -> Result<(u32, Format), BuildError> {
    let name = name_field(spec.name).ok_or(BuildError::BadName)?;
    let plan = plan_source(src, spec.mem_bytes, scratch)?;
    let mut sources = core::iter::once(src).chain(spec.modules.iter().map(|m| m.data));
    if sources.any(|f| f.as_slice().is_none()) && scratch.len() < SCRATCH_MIN {
        return Err(BuildError::NoBuffer);
    }
    // Modules go page-aligned after the image's highest byte, whatever the format: the boot
    // page (0x1000) and the ACPI tables lie below the image, which starts at 1 MiB or above.
    let mut next = plan.loads.iter().map(|l| l.gpa + l.memsz).max().unwrap_or(IMAGE_MIN_GPA);
    let mut descs: heapless::Vec<pvh::ModuleDesc<'_>, { pvh::MAX_MODULES }> = heapless::Vec::new();
    for m in spec.modules {
        let at = next.next_multiple_of(4096);
        let end = at.checked_add(m.data.size()).ok_or(BuildError::DoesNotFit)?;
        if end > spec.mem_bytes {
            return Err(BuildError::DoesNotFit);
        }
        let d = pvh::ModuleDesc { paddr: at, size: m.data.size(), cmdline: m.cmdline };
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
    let mut populate = || -> Result<(), BuildError> {
        for l in &plan.loads {
            copy(h, domid, src, l.file.clone(), l.gpa, scratch, None)?;
        }
        for (i, (m, d)) in spec.modules.iter().zip(&descs).enumerate() {
            copy(h, domid, m.data, 0..m.data.size(), d.paddr, scratch, Some(i))?;
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
    Ok((domid, plan.format))
}

/// Copies the bytes `range` of `src` (the image, or module `module`) to the domain's
/// guest-physical `dst`, in `MemWrite`s of at most `MEM_WRITE_MAX` bytes: straight from
/// memory, or read through `scratch`.
fn copy<H: Hypercalls>(
    h: &H,
    domid: u32,
    src: &dyn Source,
    range: core::ops::Range<u64>,
    dst: u64,
    scratch: &mut [u8],
    module: Option<usize>,
) -> Result<(), BuildError> {
    let what = if module.is_some() { "module" } else { "load" };
    let write = |at: u64, bytes: &[u8]| {
        h.mem_write(domid, dst + (at - range.start), bytes)
            .map(|_| ())
            .map_err(|e| BuildError::Hypercall(what, e))
    };
    if let Some(all) = src.as_slice() {
        let (start, end) = (range.start as usize, range.end as usize);
        let data = all.get(start..end).ok_or(BuildError::DoesNotFit)?;
        for (i, chunk) in data.chunks(MEM_WRITE_MAX as usize).enumerate() {
            write(range.start + (i as u64) * MEM_WRITE_MAX, chunk)?;
        }
        return Ok(());
    }
    let step = scratch.len().min(MEM_WRITE_MAX as usize) as u64;
    if step == 0 {
        return Err(BuildError::NoBuffer);
    }
    let mut at = range.start;
    while at < range.end {
        let n = step.min(range.end - at) as usize;
        let buf = &mut scratch[..n];
        src.read_at(at, buf).map_err(|e| BuildError::Read(module, e))?;
        write(at, buf)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::tests::FileLike;
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
        let big = big.as_slice();
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
            Module { data: &text, cmdline: "greeting" },
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

    /// A PVH image whose note segment lies after `tail` bytes past its code, far from the
    /// head (as a `vmlinux`'s notes lie 23 MB in), followed by bytes no segment loads.
    fn far_note_image(code: usize, tail: usize) -> Vec<u8> {
        let mut img = abi::testutil::pvh_image(0x10_0000, &std::vec![0xab; code], 0x100, 0x10_0000);
        let note = img[176..176 + 16 + 4].to_vec();
        img.resize(img.len() + tail, 0xee);
        let at = img.len() as u64;
        img.extend_from_slice(&note);
        img.resize(img.len() + tail, 0xdd);
        // The note segment's p_offset (the second program header, at 64 + 56, field at +8).
        img[128..136].copy_from_slice(&at.to_le_bytes());
        img
    }

    #[test]
    fn a_file_source_builds_what_the_memory_image_builds() {
        for img in [
            abi::testutil::pvh_image(0x10_0000, &[0xab; 200_000], 0x100, 0x10_0000),
            mb_image(0x3_0000),
            far_note_image(70_000, 100_000),
        ] {
            let initrd: Vec<u8> = (0..90_000u32).map(|i| i as u8).collect();
            let (mem_f, file_f) = (Fake::default(), Fake::default());
            let from_mem = {
                let initrd = initrd.as_slice();
                let mods = [Module { data: &initrd, cmdline: "initrd" }];
                build(&mem_f, &DomainSpec { modules: &mods, ..spec(8 << 20) }, &img)
            };
            let file = FileLike::new(img.clone());
            let initrd_file = FileLike::new(initrd.clone());
            let mut scratch = std::vec![0u8; 30_000];
            let mods = [Module { data: &initrd_file, cmdline: "initrd" }];
            let from_file = build_from(
                &file_f,
                &DomainSpec { modules: &mods, ..spec(8 << 20) },
                &file,
                &mut scratch,
            );
            assert_eq!(from_mem, Ok(7));
            assert_eq!(from_file, Ok(7));
            // The same bytes land at the same places (in chunks of the scratch's size).
            let flat = |w: &Vec<(u64, Vec<u8>)>| {
                let mut m = std::collections::BTreeMap::new();
                for (at, bytes) in w {
                    for (i, b) in bytes.iter().enumerate() {
                        m.insert(at + i as u64, *b);
                    }
                }
                m
            };
            assert_eq!(flat(&file_f.writes.borrow()), flat(&mem_f.writes.borrow()));
            assert!(file_f.writes.borrow().iter().all(|w| w.1.len() <= scratch.len()));
            assert_eq!(*file_f.state.borrow(), *mem_f.state.borrow());
            // Only the headers and what is loaded were read, never the whole file twice.
            let loaded: u64 =
                plan(&img, 8 << 20).unwrap().loads.iter().map(|l| l.file.end - l.file.start).sum();
            let read = file.bytes_read() as u64;
            assert!(read <= loaded + image::SCRATCH_MIN as u64, "read {read} of {}", img.len());
            assert_eq!(initrd_file.bytes_read(), initrd.len());
        }
        // The far note was found by reading it, not by loading the file: 200 KB of its tail
        // were never read.
        let img = far_note_image(1000, 100_000);
        let file = FileLike::new(img.clone());
        let p = plan_source(&file, 4 << 20, &mut [0u8; image::SCRATCH_MIN]).expect("plan");
        assert_eq!(p.format, Format::Pvh);
        assert!(file.bytes_read() < 20_000, "{} bytes read of {}", file.bytes_read(), img.len());
    }

    #[test]
    fn read_errors_name_what_failed_and_leave_nothing_behind() {
        let img = abi::testutil::pvh_image(0x10_0000, &[0xab; 200_000], 0x100, 0x10_0000);
        let mut scratch = std::vec![0u8; 65536];
        let mut file = FileLike::new(img.clone());
        file.fail_at = Some(150_000);
        let f = Fake::default();
        let got = build_from(&f, &spec(4 << 20), &file, &mut scratch);
        let dev = DiskError::Device { status: 0x41, error: 0x40 };
        assert_eq!(got, Err(BuildError::Read(None, dev)));
        assert!(*f.destroyed.borrow(), "the half-built domain is destroyed");
        // In the head: refused before the domain exists.
        file.fail_at = Some(3);
        let f = Fake::default();
        assert_eq!(
            build_from(&f, &spec(4 << 20), &file, &mut scratch),
            Err(BuildError::Read(None, dev))
        );
        assert!(f.writes.borrow().is_empty() && !*f.destroyed.borrow());
        // A module's error names the module.
        let good = FileLike::new(img.clone());
        let mut bad = FileLike::new(std::vec![1; 5000]);
        bad.fail_at = Some(4999);
        let mods = [Module { data: &good, cmdline: "a" }, Module { data: &bad, cmdline: "b" }];
        let f = Fake::default();
        let s = DomainSpec { modules: &mods, ..spec(8 << 20) };
        assert_eq!(build_from(&f, &s, &good, &mut scratch), Err(BuildError::Read(Some(1), dev)));
        assert!(*f.destroyed.borrow());
        // A file source with no room to read through is refused up front.
        let f = Fake::default();
        let small = &mut [0u8; 100][..];
        assert_eq!(build_from(&f, &spec(4 << 20), &good, small), Err(BuildError::NoBuffer));
        assert!(f.writes.borrow().is_empty());
        // So is a memory image with a file module and no scratch.
        let s = DomainSpec { modules: &mods[..1], ..spec(8 << 20) };
        assert_eq!(build(&f, &s, &img), Err(BuildError::NoBuffer));
    }

    #[test]
    fn truncated_files_are_bad_segments_not_reads_past_the_end() {
        let img = far_note_image(70_000, 10_000);
        // Cut inside the far note: its program header points past the end.
        let cut = FileLike::new(img[..img.len() - 10_005].to_vec());
        let mut scratch = std::vec![0u8; image::SCRATCH_MIN];
        // (As for an image in memory: a note outside the file is not an ELF dom0 can boot.)
        assert_eq!(plan_source(&cut, 4 << 20, &mut scratch), Err(BuildError::UnknownFormat));
        // Cut inside the loaded segment.
        let cut = FileLike::new(img[..1000].to_vec());
        assert_eq!(
            plan_source(&cut, 4 << 20, &mut scratch),
            Err(BuildError::Elf(ImageError::BadSegment))
        );
        assert!(cut.reads.borrow().iter().all(|(at, n)| at + *n as u64 <= 1000));
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
