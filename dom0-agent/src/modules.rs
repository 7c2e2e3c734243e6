//! The boot modules microhv hands dom0 (listed in its PVH start info, mapped read-only): the
//! kernel images dom0 can build domains from without an upload. (`Boot::module_named` finds
//! one by name; the server needs them all, to list them.)

use abi::proto::MAX_MODULES;
use dom0_agent::server::BootModule;
use guest_rt::Boot;

/// Every boot module (the first [`MAX_MODULES`]), named by the first word of its command
/// line without the directory part.
pub fn all(boot: &Boot) -> heapless::Vec<BootModule<'static>, MAX_MODULES> {
    boot.modules().map(|m| BootModule { name: m.name, bytes: m.bytes }).take(MAX_MODULES).collect()
}
