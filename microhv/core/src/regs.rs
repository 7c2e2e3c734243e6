//! Architectural x86 register bits the core and both backends name (SDM Vol. 3 §2.5, AMD APM
//! Vol. 2 §3.1). One list, so a backend and the policy that validates guest writes cannot
//! disagree on a bit.

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (reads as 1).
pub const CR0_ET: u64 = 1 << 4;
/// CR0.WP: supervisor writes honour read-only pages.
pub const CR0_WP: u64 = 1 << 16;
/// CR0.NW: not write-through.
pub const CR0_NW: u64 = 1 << 29;
/// CR0.CD: cache disable.
pub const CR0_CD: u64 = 1 << 30;
/// CR0.PG: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages in 32-bit paging.
pub const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.SMAP: supervisor accesses to user pages fault unless RFLAGS.AC is set.
pub const CR4_SMAP: u64 = 1 << 21;
/// EFER.SCE: SYSCALL.
pub const EFER_SCE: u64 = 1 << 0;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active (set by the CPU).
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE.
pub const EFER_NXE: u64 = 1 << 11;
/// EFER.SVME: SVM enable (AMD).
pub const EFER_SVME: u64 = 1 << 12;
/// RFLAGS bit 1, which always reads as 1.
pub const RFLAGS_FIXED: u64 = 1 << 1;
/// RFLAGS.IF: maskable interrupts enabled.
pub const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS.TF: single-step, a #DB trap after each instruction.
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.DF: string instructions step their index registers down.
pub const RFLAGS_DF: u64 = 1 << 10;
/// RFLAGS.AC: alignment check; under CR4.SMAP, lets supervisor code reach user pages.
pub const RFLAGS_AC: u64 = 1 << 18;
/// RFLAGS.RF: resume flag (suppresses instruction breakpoints for one instruction).
pub const RFLAGS_RF: u64 = 1 << 16;
/// DR6.BS: the #DB was a single-step trap.
pub const DR6_BS: u64 = 1 << 14;
/// IA32_PAT at power-on.
pub const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;
