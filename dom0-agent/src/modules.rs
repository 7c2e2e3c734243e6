//! The boot modules microhv hands dom0 (listed in its PVH start info, mapped read-only): the
//! kernel images dom0 can build domains from without an upload. (`Boot::module_named` finds
//! one by name; the server needs them all, to list them.)

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
