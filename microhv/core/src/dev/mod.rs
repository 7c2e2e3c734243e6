//! Device models of the virtual PC that unmodified guests see (shared/design.md, "The virtual
//! platform"). One device per file; each is a pure state machine driven by the core: port or
//! MMIO accesses come in as calls, time comes in as a [`Clock`], interrupts go out through an
//! [`IrqSink`]. Nothing here executes a privileged instruction, so every model is tested on the
//! host.

pub mod hpet;
pub mod ioapic;
pub mod lapic;
pub mod pic;
pub mod pit;
pub mod pmtimer;
pub mod uart;

pub use abi::platform::{Clock, IrqSink};
