//! Everything in the runtime that is assembly or a privileged instruction.
pub mod x86_64;
