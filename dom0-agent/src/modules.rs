//! The boot modules microhv hands dom0 (listed in its PVH start info, mapped read-only): the
//! kernel images dom0 can build domains from without an upload.

use abi::proto::MAX_MODULES;
use dom0_agent::server::BootModule;
use guest_rt::Boot;

/// Every boot module (the first [`MAX_MODULES`]), named by the first word of its command
/// line without the directory part.
pub fn all(boot: &Boot) -> heapless::Vec<BootModule<'static>, MAX_MODULES> {
    (0..boot.info.nr_modules)
        .filter_map(|i| boot.module(i))
        .map(|(m, cmdline)| {
            let first = cmdline.split_whitespace().next().unwrap_or("");
            let name = first.rsplit('/').next().unwrap_or(first);
            // SAFETY: microhv maps each boot module read-only at the address the module list
            // gives, inside dom0's identity-mapped 4 GiB, for as long as dom0 runs.
            let bytes =
                unsafe { core::slice::from_raw_parts(m.paddr as *const u8, m.size as usize) };
            BootModule { name, bytes }
        })
        .take(MAX_MODULES)
        .collect()
}

/// The boot module called `name`: its bytes and the rest of its command line.
pub fn find(boot: &Boot, name: &str) -> Option<(&'static [u8], &'static str)> {
    let i = all(boot).iter().position(|m| m.name == name)?;
    let (_, cmdline) = boot.module(i as u32)?;
    let args = cmdline.split_once(char::is_whitespace).map_or("", |(_, rest)| rest.trim());
    all(boot).get(i).map(|m| (m.bytes, args))
}
