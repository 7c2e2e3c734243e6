//! What the boot loader told microhv, in an arch-neutral form, and what microhv makes of it.
//!
//! The multiboot v1 / v2 structures are parsed (with the `multiboot` and `multiboot2` crates)
//! in the ring-0 binary and copied into a [`BootInfo`] before the frame allocator starts, so
//! nothing afterwards reads the loader's memory. [`init_frames`] then hands the allocator every
//! usable RAM frame except microhv's image, the boot modules, the boot information, and the first
//! MiB (real-mode IVT, BIOS data, and ROM shadows).

use crate::frames::FrameAllocator;
use heapless::{String, Vec};

/// Memory-map entries kept.
pub const MAX_MEMORY_REGIONS: usize = 64;
/// Boot modules kept (dom0 first, then guest images).
pub const MAX_MODULES: usize = 16;
/// Bytes of a command line kept (microhv's own, or one module's).
pub const MAX_CMDLINE: usize = 256;
/// Physical memory below this is never allocated.
pub const LOW_MEMORY_RESERVED: u64 = 1 << 20;

/// A range of physical memory `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Range {
    /// Bytes in the range.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True when the range holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One boot module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Where the loader put it.
    pub range: Range,
    /// Its command line; the first word names it.
    pub cmdline: String<MAX_CMDLINE>,
}

impl Module {
    /// The module's name: the last path component of its command line's first word.
    pub fn name(&self) -> &str {
        let first = self.cmdline.split_whitespace().next().unwrap_or("");
        first.rsplit('/').next().unwrap_or(first)
    }

    /// Its arguments: the command line after the first word.
    pub fn args(&self) -> &str {
        let s = self.cmdline.trim_start();
        s.find(char::is_whitespace).map_or("", |i| s[i..].trim_start())
    }
}

/// Which protocol started microhv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// Multiboot v1 (QEMU `-kernel`).
    Multiboot1,
    /// Multiboot2 (GRUB).
    Multiboot2,
}

/// Why a [`BootInfo`] could not hold everything the loader gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInfoError {
    /// More memory-map entries than [`MAX_MEMORY_REGIONS`].
    TooManyRegions,
    /// More modules than [`MAX_MODULES`].
    TooManyModules,
}

/// The boot information, copied out of the loader's structures.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// Which loader.
    pub loader: Loader,
    /// Usable RAM ranges from the memory map.
    pub ram: Vec<Range, MAX_MEMORY_REGIONS>,
    /// The modules, in the loader's order.
    pub modules: Vec<Module, MAX_MODULES>,
    /// microhv's command line (without the image path, if the loader included it).
    pub cmdline: String<MAX_CMDLINE>,
    /// Where the loader's own information structures lie.
    pub info_range: Range,
    /// Command lines longer than [`MAX_CMDLINE`] were cut.
    pub truncated_cmdline: bool,
    /// The ACPI RSDP the loader passed a copy of (multiboot2), inside `info_range`.
    pub rsdp: Option<u64>,
}

impl BootInfo {
    /// Empty information for `loader`.
    pub const fn new(loader: Loader) -> Self {
        Self {
            loader,
            ram: Vec::new(),
            modules: Vec::new(),
            cmdline: String::new(),
            info_range: Range { start: 0, end: 0 },
            truncated_cmdline: false,
            rsdp: None,
        }
    }

    /// Records a usable RAM range.
    pub fn add_ram(&mut self, start: u64, len: u64) -> Result<(), BootInfoError> {
        let end = start.saturating_add(len);
        self.ram.push(Range { start, end }).map_err(|_| BootInfoError::TooManyRegions)
    }

    /// Records a module.
    pub fn add_module(&mut self, start: u64, end: u64, cmdline: &str) -> Result<(), BootInfoError> {
        let mut m = Module { range: Range { start, end }, cmdline: String::new() };
        self.truncated_cmdline |= !push_truncated(&mut m.cmdline, cmdline);
        self.modules.push(m).map_err(|_| BootInfoError::TooManyModules)
    }

    /// Records microhv's command line.
    pub fn set_cmdline(&mut self, cmdline: &str) {
        self.cmdline.clear();
        self.truncated_cmdline |= !push_truncated(&mut self.cmdline, cmdline);
    }

    /// Bytes of usable RAM the loader reported.
    pub fn ram_bytes(&self) -> u64 {
        self.ram.iter().map(Range::len).sum()
    }
}

/// Appends as much of `s` as fits, cutting on a character boundary; false if cut.
fn push_truncated<const N: usize>(out: &mut String<N>, s: &str) -> bool {
    s.chars().all(|c| out.push(c).is_ok())
}

/// Hands the allocator every usable frame of `info` except the reserved ones: `image` (microhv
/// itself), the modules, the loader's information, and the first MiB.
pub fn init_frames<const W: usize>(
    info: &BootInfo,
    image: Range,
    frames: &mut FrameAllocator<W>,
) -> u64 {
    for r in &info.ram {
        frames.add_free_range(r.start, r.end);
    }
    frames.reserve_range(0, LOW_MEMORY_RESERVED);
    frames.reserve_range(image.start, image.end);
    frames.reserve_range(info.info_range.start, info.info_range.end);
    for m in &info.modules {
        frames.reserve_range(m.range.start, m.range.end);
    }
    frames.free_frames()
}

/// microhv's command-line options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// dom0's memory in bytes (`dom0_mem=`, with K/M/G suffixes).
    pub dom0_mem: u64,
    /// Most verbose log level (`loglvl=error|warn|info|debug|trace`).
    pub log_level: log::LevelFilter,
    /// A protection self-test to run right after the page tables are loaded (`selftest=`).
    pub selftest: Option<SelfTest>,
}

/// Boot-time proofs that microhv's own mappings hold: each does what its mapping forbids, so the
/// expected outcome is a page fault in ring 0 (stop status 4) naming the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfTest {
    /// `selftest=write-text`: store into microhv's code.
    WriteText,
    /// `selftest=exec-data`: call into microhv's writable data.
    ExecData,
    /// `selftest=stack-guard`: store into the guard page under the boot stack.
    StackGuard,
}

/// dom0's memory unless `dom0_mem=` says otherwise.
pub const DEFAULT_DOM0_MEM: u64 = 32 << 20;

impl Default for Options {
    fn default() -> Self {
        Self { dom0_mem: DEFAULT_DOM0_MEM, log_level: log::LevelFilter::Info, selftest: None }
    }
}

/// A word of the command line that was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOption<'a>(pub &'a str);

impl Options {
    /// Parses `key=value` words; unknown or malformed words are returned (and the defaults
    /// kept for them) so the caller can log each one.
    pub fn parse(cmdline: &str) -> (Self, Vec<BadOption<'_>, 8>) {
        let mut o = Self::default();
        let mut bad = Vec::new();
        for word in cmdline.split_whitespace() {
            let ok = match word.split_once('=') {
                Some(("dom0_mem", v)) => parse_size(v).map(|b| o.dom0_mem = b).is_some(),
                Some(("loglvl", v)) => v.parse().map(|l| o.log_level = l).is_ok(),
                Some(("selftest", v)) => {
                    o.selftest = match v {
                        "write-text" => Some(SelfTest::WriteText),
                        "exec-data" => Some(SelfTest::ExecData),
                        "stack-guard" => Some(SelfTest::StackGuard),
                        _ => None,
                    };
                    o.selftest.is_some()
                }
                _ => false,
            };
            if !ok {
                let _ = bad.push(BadOption(word));
            }
        }
        (o, bad)
    }
}

/// `"32M"` → 32 MiB; plain numbers are bytes; `K`, `M`, `G` (either case) are binary units.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::FRAME_SIZE;

    #[test]
    fn frames_skip_image_modules_info_and_low_memory() {
        let mut info = BootInfo::new(Loader::Multiboot2);
        info.add_ram(0, 0x9f000).unwrap();
        info.add_ram(0x100000, 63 << 20).unwrap();
        info.add_module(0x400000, 0x401234, "/boot/dom0.elf smoke").unwrap();
        info.info_range = Range { start: 0x10000, end: 0x10100 };
        let image = Range { start: 0x100000, end: 0x180000 };
        let mut f = FrameAllocator::<256>::new(); // 64 MiB
        init_frames(&info, image, &mut f);
        let expect = (64 << 20) / FRAME_SIZE - 256 - 2; // minus first MiB, minus module frames
        assert_eq!(f.free_frames(), expect - 128);
        while let Some(pa) = f.alloc() {
            assert!(pa >= 0x180000, "{pa:#x}");
            assert!(!(0x400000..0x402000).contains(&pa), "{pa:#x}");
        }
    }

    #[test]
    fn module_names_and_args() {
        let mut info = BootInfo::new(Loader::Multiboot1);
        info.add_module(0, 1, "/boot/dom0.elf smoke  crash=triple").unwrap();
        info.add_module(0, 1, "hello").unwrap();
        assert_eq!(info.modules[0].name(), "dom0.elf");
        assert_eq!(info.modules[0].args(), "smoke  crash=triple");
        assert_eq!(info.modules[1].name(), "hello");
        assert_eq!(info.modules[1].args(), "");
    }

    #[test]
    fn long_command_lines_are_cut_and_flagged() {
        let mut info = BootInfo::new(Loader::Multiboot1);
        let long = "x".repeat(MAX_CMDLINE + 10);
        info.set_cmdline(&long);
        assert_eq!(info.cmdline.len(), MAX_CMDLINE);
        assert!(info.truncated_cmdline);
    }

    #[test]
    fn options_parse_and_report_bad_words() {
        let (o, bad) = Options::parse("dom0_mem=64M loglvl=debug bogus dom0_mem=12Q");
        assert_eq!(o.dom0_mem, 64 << 20);
        assert_eq!(o.log_level, log::LevelFilter::Debug);
        assert_eq!(bad.as_slice(), &[BadOption("bogus"), BadOption("dom0_mem=12Q")]);
        assert_eq!(parse_size("18446744073709551615G"), None);
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size(""), None);
    }
}
