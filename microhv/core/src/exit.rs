//! The arch-neutral interface between the core and an arch backend (VMX or SVM).
//!
//! The core asks the backend to run a vCPU until its next exit ([`Backend::run`]), receives an
//! [`ExitInfo`] whose [`Exit`] no longer mentions VMCS fields or VMCB offsets, decides what to
//! do, and tells the backend what to apply: advance RIP, write a guest register, inject an
//! event, load a new second-level root, flush. Calls only go from the core to the backend.

use abi::types::ExitReason;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The guest's general-purpose registers that VM exits do not save in hardware state (RSP and
/// RIP live in the VMCS / VMCB). The entry/exit code loads and stores this layout, the ring-0
/// exception stub pushes it, and [`Gprs::get`] / [`Gprs::set`] index it as 15 words.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Gprs {
    /// rax.
    pub rax: u64,
    /// rbx.
    pub rbx: u64,
    /// rcx.
    pub rcx: u64,
    /// rdx.
    pub rdx: u64,
    /// rsi.
    pub rsi: u64,
    /// rdi.
    pub rdi: u64,
    /// rbp.
    pub rbp: u64,
    /// r8.
    pub r8: u64,
    /// r9.
    pub r9: u64,
    /// r10.
    pub r10: u64,
    /// r11.
    pub r11: u64,
    /// r12.
    pub r12: u64,
    /// r13.
    pub r13: u64,
    /// r14.
    pub r14: u64,
    /// r15.
    pub r15: u64,
}

impl Gprs {
    /// Every register 0.
    pub const ZERO: Self = zerocopy::transmute!([0u64; 15]);
    /// The registers' names, in field order.
    const NAMES: [&str; 15] = [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
        "r14", "r15",
    ];

    /// The field holding the register with x86 encoding number `n` (0 = rax … 15 = r15); rsp
    /// (4) is not here.
    fn field(n: u8) -> Option<usize> {
        const FIELD: [u8; 16] = [0, 2, 3, 1, 0xff, 6, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14];
        FIELD.get(usize::from(n)).map(|&f| usize::from(f)).filter(|&f| f < 15)
    }

    /// The registers in field order.
    fn as_array(&self) -> &[u64; 15] {
        zerocopy::transmute_ref!(self)
    }

    /// Register by its x86 encoding number (0 = rax … 15 = r15); 4 (rsp) is not here and
    /// reads as `None`.
    pub fn get(&self, n: u8) -> Option<u64> {
        Some(self.as_array()[Self::field(n)?])
    }

    /// Sets the register with encoding number `n`; 4 (rsp) and out-of-range numbers are
    /// ignored (RSP lives in the backend).
    pub fn set(&mut self, n: u8, value: u64) {
        if let Some(f) = Self::field(n) {
            let regs: &mut [u64; 15] = zerocopy::transmute_mut!(self);
            regs[f] = value;
        }
    }

    /// The registers as a crash report shows them: four a line, each line starting with
    /// `line_start` (a newline and an indent).
    pub fn dump(&self, line_start: &'static str) -> GprDump<'_> {
        GprDump(self, line_start)
    }
}

/// The registers formatted for a crash report ([`Gprs::dump`]).
pub struct GprDump<'a>(&'a Gprs, &'static str);

impl core::fmt::Display for GprDump<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, (name, v)) in Gprs::NAMES.iter().zip(self.0.as_array()).enumerate() {
            let sep = if i % 4 == 0 { self.1 } else { " " };
            write!(f, "{sep}{name:<3} {v:#018x}")?;
        }
        Ok(())
    }
}

/// What a nested page fault was trying to do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// A read (or a page walk).
    pub read: bool,
    /// A write.
    pub write: bool,
    /// An instruction fetch.
    pub exec: bool,
    /// A translation was present but lacked the permission.
    pub present: bool,
    /// The access was the CPU walking the guest's own page tables, not the instruction's
    /// operand (VMX qualification bits 7–8, SVM EXITINFO1 bit 33).
    pub walk: bool,
}

/// Why the vCPU stopped running, in arch-neutral terms.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// VMCALL / VMMCALL: operation in rax, arguments in rdi, rsi, rdx, r10, r8.
    Hypercall,
    /// EPT violation / nested page fault at a guest-physical address.
    NestedPageFault {
        /// The faulting guest-physical address.
        gpa: u64,
        /// The access.
        access: Access,
    },
    /// IN / OUT (or their string forms, INS / OUTS, which the core decodes) to a trapped port.
    Io {
        /// Port.
        port: u16,
        /// Bytes: 1, 2 or 4.
        size: u8,
        /// OUT rather than IN.
        write: bool,
        /// INS / OUTS.
        string: bool,
        /// REP prefix.
        rep: bool,
    },
    /// CPUID: leaf in eax, subleaf in ecx.
    Cpuid,
    /// RDMSR: index in ecx.
    RdMsr,
    /// WRMSR: index in ecx, value in edx:eax.
    WrMsr,
    /// HLT.
    Hlt,
    /// A PAUSE in a spin loop (VMX PAUSE-loop exiting, SVM's PAUSE filter): the vCPU waits on
    /// another, which should run instead. The PAUSE has not executed; it is left to re-execute
    /// (no side effect).
    Pause,
    /// The time slice given to [`Backend::run`] ran out (or the next device deadline came).
    Timer,
    /// The guest can take an external interrupt now (the window [`Backend::set_interrupt_window`]
    /// asked for).
    InterruptWindow,
    /// A write to CR0 or CR4 that changes a bit microhv owns, or any write to CR8 (the local
    /// APIC's TPR); `value` is what the guest wrote.
    CrWrite {
        /// 0, 4 or 8.
        cr: u8,
        /// The value the guest asked for.
        value: u64,
    },
    /// A read of CR8 (the local APIC's TPR) into general register `gpr` (x86 number).
    CrRead {
        /// 8.
        cr: u8,
        /// The destination register.
        gpr: u8,
    },
    /// An instruction the guest's CPU must not have (VMX/SVM instructions, MONITOR/MWAIT,
    /// XSETBV): the core injects #UD.
    InvalidOpcode,
    /// INVD: completed as a no-op (WBINVD without the write-back would lose other domains'
    /// data in the host's caches; guest memory is write-back cached and coherent anyway).
    Invd,
    /// RDPMC: no virtual PMU is offered (CPUID leaf 0xA is hidden), so #GP.
    Rdpmc,
    /// A hardware task switch (far JMP/CALL to a TSS or task gate, IRET with NT, an event
    /// through a task gate): not emulated; the guest gets #GP(0) at the instruction.
    TaskSwitch,
    /// An external interrupt or NMI arrived while the guest ran.
    Interrupt,
    /// The guest triple-faulted (shutdown).
    TripleFault,
    /// The hardware refused to enter the guest.
    EntryFailure,
    /// Anything the backend does not translate.
    #[default]
    Unhandled,
}

impl Exit {
    /// The statistics bucket.
    pub fn reason(&self) -> ExitReason {
        match self {
            Exit::Hypercall => ExitReason::Hypercall,
            Exit::NestedPageFault { .. } => ExitReason::NestedPageFault,
            Exit::Io { .. } => ExitReason::Io,
            Exit::Cpuid => ExitReason::Cpuid,
            Exit::RdMsr | Exit::WrMsr => ExitReason::Msr,
            Exit::Hlt => ExitReason::Hlt,
            Exit::Pause => ExitReason::Pause,
            Exit::Timer | Exit::InterruptWindow => ExitReason::Timer,
            Exit::CrWrite { .. } | Exit::CrRead { .. } => ExitReason::CrAccess,
            Exit::Interrupt => ExitReason::Interrupt,
            Exit::TripleFault => ExitReason::TripleFault,
            Exit::InvalidOpcode
            | Exit::Invd
            | Exit::Rdpmc
            | Exit::TaskSwitch
            | Exit::EntryFailure
            | Exit::Unhandled => ExitReason::Other,
        }
    }
}

/// The code segment's operating mode, for decoding the guest's instructions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// Real mode (CR0.PE clear) or a 16-bit code segment.
    #[default]
    Bits16,
    /// Protected mode with a 32-bit code segment (or compatibility mode).
    Bits32,
    /// 64-bit mode (EFER.LMA and CS.L).
    Bits64,
}

impl CpuMode {
    /// The mode of the code segment: 16-bit in real mode (`pe` clear), else by CS.L (`long`,
    /// which only counts with EFER.LMA) and CS.D (`db`).
    pub fn of(pe: bool, long: bool, db: bool) -> Self {
        match (pe, long, db) {
            (true, true, _) => CpuMode::Bits64,
            (true, false, true) => CpuMode::Bits32,
            _ => CpuMode::Bits16,
        }
    }

    /// The instruction pointer after the `len`-byte instruction at `rip`: IP wraps at 64 KiB
    /// in 16-bit code and EIP at 4 GiB in 32-bit code, as they do when the CPU executes it.
    pub fn next_ip(self, rip: u64, len: u8) -> u64 {
        let next = rip.wrapping_add(len.into());
        match self {
            CpuMode::Bits16 => next & 0xffff,
            CpuMode::Bits32 => next & 0xffff_ffff,
            CpuMode::Bits64 => next,
        }
    }

    /// [`CpuMode::next_ip`], or `None` when the next instruction pointer would not be canonical
    /// in 64-bit code: the CPU raises #GP there (and VM entry would fail on a non-canonical RIP,
    /// the XSA-170 class), so the instruction does not complete.
    pub fn next_ip_checked(self, rip: u64, len: u8) -> Option<u64> {
        let next = self.next_ip(rip, len);
        (self != CpuMode::Bits64 || is_canonical(next)).then_some(next)
    }
}

/// Whether `addr` is a canonical 48-bit linear address (guests are not offered LA57).
pub fn is_canonical(addr: u64) -> bool {
    (((addr << 16) as i64) >> 16) as u64 == addr
}

/// An exit, with the guest state a handler or a crash report needs.
///
/// Backends may leave the guest-state fields (`rip` to `efer`, `cpl`, `mode`, `cs_base`) at
/// [`ExitInfo::fast`]'s zeros for the fast exits, whose handlers use none of them: `Hypercall`
/// (which needs `insn_len` and `cpl`), `Cpuid`, `RdMsr`, `WrMsr`, `Invd`, port I/O without a
/// string (`insn_len`), `Hlt` (`insn_len`, `rflags`), `Timer`, `InterruptWindow` and
/// `Interrupt`. Every other exit carries all of it: those are the ones whose handlers decode
/// instructions, check control-register writes, or report a crash.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The translated exit.
    pub exit: Exit,
    /// The arch's own exit code (VMX basic exit reason with its flags, SVM exit code).
    pub raw_reason: u64,
    /// The arch's exit qualification (VMX) or EXITINFO1 (SVM).
    pub qualification: u64,
    /// Guest RIP.
    pub rip: u64,
    /// Guest RSP.
    pub rsp: u64,
    /// Guest RFLAGS.
    pub rflags: u64,
    /// Guest CR0 as the guest sees it.
    pub cr0: u64,
    /// Guest CR3.
    pub cr3: u64,
    /// Guest CR4 as the guest sees it.
    pub cr4: u64,
    /// Guest EFER.
    pub efer: u64,
    /// Length of the exiting instruction; 0 when the hardware does not say.
    pub insn_len: u8,
    /// Guest privilege level (CPL).
    pub cpl: u8,
    /// Code-segment mode. Backends need only fill it for the exits whose instruction the core
    /// decodes (`NestedPageFault`, string `Io`) and `CrWrite` exits (whose operand width
    /// depends on it).
    pub mode: CpuMode,
    /// Code-segment base (RIP is relative to it); like `mode`, for those exits.
    pub cs_base: u64,
    /// TSC ticks the guest ran (with the backend's time for the exits it completed).
    pub ran_ticks: u64,
    /// Exits the backend completed itself before this one (`fast.rs`), by
    /// [`crate::fast::FastExit::index`]: hypercalls, CPUIDs, demand faults.
    pub completed: [u32; 3],
    /// For a `NestedPageFault` the backend offered to [`DemandFaults::fix`], what the MMU
    /// said (filled in by the core's run loop, not by the backend).
    pub mmu: Option<Result<mmu::FaultOutcome, mmu::Error>>,
}

impl ExitInfo {
    /// `exit` with nothing read from the guest's state yet.
    pub fn fast(exit: Exit, raw_reason: u64, qualification: u64, ran_ticks: u64) -> Self {
        Self { exit, raw_reason, qualification, ran_ticks, ..Self::default() }
    }
}

/// A guest register the core reads or writes through the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestReg {
    /// RIP.
    Rip,
    /// RSP.
    Rsp,
    /// RFLAGS.
    Rflags,
    /// CR0 (the guest's view; the backend keeps the bits the hardware forces).
    Cr0,
    /// CR4 (the guest's view).
    Cr4,
    /// IA32_EFER (LMA is owned by the hardware and kept).
    Efer,
    /// IA32_FS_BASE.
    FsBase,
    /// IA32_GS_BASE.
    GsBase,
    /// PAE page-directory-pointer-table entry 0..=3, as the CPU caches it: a backend that keeps
    /// them (VMX with EPT) needs them written when microhv completes a CR0/CR4 write that
    /// enters PAE paging; one that reloads them itself (SVM) ignores the write.
    Pdpte(u8),
    /// The code segment's L (bit 0) and D/B (bit 1) attributes; read-only.
    CsLd,
    /// The type field (0–15) of the task register's cached descriptor; read-only.
    TrType,
    /// The TSC offset: the guest's RDTSC reads the host TSC plus this (wrapping).
    TscOffset,
    /// A segment register's cached base (outside 64-bit mode, where segmentation applies);
    /// read-only.
    SegBase(crate::insn::Seg),
}

/// An event to deliver to the guest on the next entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// #UD.
    InvalidOpcode,
    /// #GP(0).
    GeneralProtection,
    /// An NMI (only when [`Backend::interruptible`] said so for NMIs). The backend blocks
    /// further NMIs until the guest's IRET, as the CPU does.
    Nmi,
    /// #PF at linear address `addr` (the guest's CR2) with error code `code`.
    PageFault {
        /// The faulting linear address.
        addr: u64,
        /// The error code (`walk::PF_*`).
        code: u32,
    },
}

impl Event {
    /// The event as VMX's VM-entry interruption-information field and SVM's EVENTINJ both
    /// encode it (vector, type 3 exception or 2 NMI, error code valid, valid), and its error
    /// code. Real mode (`pe` clear) delivers no error code, and VM entry refuses to inject one
    /// there.
    pub fn encode(self, pe: bool) -> (u64, u32) {
        let (vector, kind, code) = match self {
            Event::InvalidOpcode => (6, 3, None),
            Event::GeneralProtection => (13, 3, Some(0)),
            Event::PageFault { code, .. } => (14, 3, Some(code)),
            Event::Nmi => (2, 2, None),
        };
        let code = code.filter(|_| pe);
        (vector | kind << 8 | u64::from(code.is_some()) << 11 | 1 << 31, code.unwrap_or(0))
    }
}

/// The state a vCPU starts in (`abi::types::VcpuState`, validated).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VcpuInit {
    /// Entry point.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// General registers.
    pub gprs: Gprs,
    /// Started by a start-up IPI with this vector: real mode, CS = `vector << 8` (base
    /// `vector << 12`), IP 0, as a CPU leaves wait-for-SIPI, instead of flat 32-bit protected
    /// mode at `rip` (PVH).
    pub startup: Option<u8>,
}

/// Why a backend operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendError {
    /// No frame for the hardware control structure.
    NoMemory,
    /// The hardware rejected an operation (a VMX instruction failed).
    Hardware(u64),
}

/// Where backends get frames from (zeroed 4 KiB frames).
pub trait FrameSource {
    /// A zeroed frame.
    fn alloc_zeroed(&mut self) -> Option<u64>;
    /// Gives a frame back.
    fn free(&mut self, pa: u64);
}

/// Per-vCPU facts a backend needs when building the hardware state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuConfig {
    /// Owning domain.
    pub domid: u32,
    /// Index in the domain.
    pub index: u32,
    /// dom0: its ports (`io::dom0_ports`) are passed through.
    pub privileged: bool,
    /// Second-level root as the hardware takes it (EPTP / nCR3, from the `mmu`).
    pub root: u64,
    /// The TSC's frequency (kHz), for the CPUID leaves a backend completes itself (`fast.rs`).
    pub tsc_khz: u32,
}

impl VcpuConfig {
    /// Who this vCPU is for CPUID, on a machine whose hypercall instruction is `insn`.
    pub const fn caller(&self, insn: u32) -> crate::cpuid::Caller {
        crate::cpuid::Caller {
            domid: self.domid,
            privileged: self.privileged,
            vcpu: self.index,
            hypercall_insn: insn,
            tsc_khz: self.tsc_khz,
        }
    }
}

/// The domain's MMU, lent to [`Backend::run`] so that a demand fault on RAM is fixed without
/// leaving the backend's exit loop ([`crate::fast::Faults`]).
pub trait DemandFaults {
    /// Fixes a second-level fault at `gpa` if it is on the domain's RAM and leaves nothing owed
    /// before the next entry (no flush): `Some`, go back into the guest — `Some(true)` if the
    /// fix zeroed memory, which takes long enough that the backend should look at the clock.
    /// `None`: the exit is the core's (with what the MMU said, if it was asked:
    /// [`ExitInfo::mmu`]); the backend must then return this very exit.
    fn fix(&mut self, gpa: u64, access: mmu::Access) -> Option<bool>;
    /// Where another CPU records that it asked this one to leave the guest (a kick, whose
    /// interrupt the backend may have taken in root mode): once it is set the backend must not
    /// re-enter without returning. Asked once per run (`None`: one CPU, nobody kicks).
    fn kick_flag(&self) -> Option<&'static core::sync::atomic::AtomicBool> {
        None
    }
}

/// What enters a guest on one CPU while the hypervisor lock is released (`hv/smp.rs`): built
/// once per CPU ([`Backend::runner`]), it holds only what never changes after boot and that
/// CPU's own resources (SVM's host VMCB, its VMSAVE area, and slice timer), so CPUs run vCPUs
/// concurrently.
pub trait Runner {
    /// The hardware state of one vCPU.
    type Vcpu;
    /// Runs a vCPU [`Backend::load`] made ready on this CPU, as [`Backend::run`] does.
    fn run(
        &mut self,
        vcpu: &mut Self::Vcpu,
        gprs: &mut Gprs,
        slice: u64,
        faults: &mut dyn DemandFaults,
    ) -> ExitInfo;
}

/// An arch backend: the only code that touches the VMCS / VMCB or enters a guest.
///
/// On several CPUs the backend is used by whichever CPU holds the hypervisor lock
/// ([`Backend::set_cpu`] says which, for the state each CPU keeps: the VMX owned-register
/// state, SVM's ASID users); guests are entered through each CPU's [`Runner`]. A vCPU's VMCS is
/// active on at most one CPU: [`Backend::unload`] clears it, and the core unloads every vCPU a
/// CPU leaves or touched without running it (a start-up IPI, a new vCPU).
pub trait Backend {
    /// The hardware state of one vCPU.
    type Vcpu;
    /// This backend's runner.
    type Runner: Runner<Vcpu = Self::Vcpu>;

    /// The calls that follow run on CPU `cpu` (it holds the hypervisor lock).
    fn set_cpu(&mut self, cpu: usize);
    /// Builds the runner of CPU `cpu`, on that CPU (its host save area, its slice timer).
    fn runner(
        &mut self,
        cpu: usize,
        frames: &mut dyn FrameSource,
    ) -> Result<Self::Runner, BackendError>;
    /// Makes the vCPU current on this CPU, with the state the hardware keeps outside its
    /// control structure in place, and flushes what this CPU may have cached for it from an
    /// earlier stay (VPID / ASID, and EPT after a flush it has not seen): what
    /// [`Runner::run`] needs.
    fn load(&mut self, vcpu: &mut Self::Vcpu);

    /// `abi::cpuid::HYPERCALL_*` for this backend.
    fn hypercall_insn(&self) -> u32;
    /// `abi::types::PhysInfo::virt` value (`abi::types::VIRT_*`).
    fn kind(&self) -> u32;
    /// Builds a vCPU in the state `init`.
    fn create_vcpu(
        &mut self,
        frames: &mut dyn FrameSource,
        cfg: &VcpuConfig,
        init: &VcpuInit,
    ) -> Result<Self::Vcpu, BackendError>;
    /// Resets a vCPU to `init` (before its first run).
    fn reset_vcpu(&mut self, vcpu: &mut Self::Vcpu, init: &VcpuInit);
    /// Frees a vCPU's hardware state.
    fn destroy_vcpu(&mut self, frames: &mut dyn FrameSource, vcpu: Self::Vcpu);
    /// Runs the vCPU until its next exit, or until `slice` TSC ticks have passed. Second-level
    /// faults go to `faults` first: one it fixes is completed in place (`fast.rs`).
    fn run(
        &mut self,
        vcpu: &mut Self::Vcpu,
        gprs: &mut Gprs,
        slice: u64,
        faults: &mut dyn DemandFaults,
    ) -> ExitInfo;
    /// The vCPU leaves this CPU: save whatever guest state the hardware still holds for it
    /// outside its control structure, and make its control structure loadable on any CPU
    /// (VMCLEAR).
    fn unload(&mut self, vcpu: &mut Self::Vcpu);
    /// Reads a guest register.
    fn read(&mut self, vcpu: &mut Self::Vcpu, reg: GuestReg) -> u64;
    /// Writes a guest register.
    fn write(&mut self, vcpu: &mut Self::Vcpu, reg: GuestReg, value: u64);
    /// Completes the exiting instruction of `len` bytes as the CPU would have: RIP moves past
    /// it (wrapping at the code width, [`CpuMode::next_ip`]), an STI / MOV SS interrupt shadow
    /// ends, and with RFLAGS.TF set the single-step #DB trap follows. Returns false, changing
    /// nothing, when the next RIP would not be canonical ([`CpuMode::next_ip_checked`]): the
    /// caller raises #GP instead.
    fn advance_rip(&mut self, vcpu: &mut Self::Vcpu, len: u8) -> bool;
    /// Delivers `event` on the next entry.
    fn inject(&mut self, vcpu: &mut Self::Vcpu, event: Event);
    /// Whether the guest can take an external interrupt at the next entry: RFLAGS.IF set, no
    /// STI / MOV SS interrupt shadow, and no event already queued for delivery. With `nmi`,
    /// whether it can take an NMI: no shadow, no event queued, and not blocked by an NMI whose
    /// handler has not returned (IRET).
    fn interruptible(&mut self, vcpu: &mut Self::Vcpu, nmi: bool) -> bool;
    /// Queues external interrupt `vector` for the next entry (only when
    /// [`Backend::interruptible`] said so).
    fn inject_interrupt(&mut self, vcpu: &mut Self::Vcpu, vector: u8);
    /// With `on`, the guest exits ([`Exit::InterruptWindow`]) as soon as it can take an
    /// interrupt (VMX interrupt-window exiting, SVM virtual interrupt with its intercept); with
    /// `nmi`, as soon as it can take an NMI (VMX NMI-window exiting; on SVM the IRET intercept
    /// that ends NMI blocking, which is armed whenever an NMI is being handled).
    fn set_interrupt_window(&mut self, vcpu: &mut Self::Vcpu, on: bool, nmi: bool);
    /// Installs a new second-level root (the EPTP / nCR3 value the `mmu` computed) and flushes
    /// what the CPU may have cached for it.
    fn set_root(&mut self, vcpu: &mut Self::Vcpu, root: u64);
    /// Flushes the vCPU's cached second-level translations (INVEPT / ASID flush).
    fn flush(&mut self, vcpu: &mut Self::Vcpu);
    /// Host CPUID.
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// The TSC.
    fn now(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::{CpuMode, Event, Gprs};

    #[test]
    fn code_segment_modes_and_event_encoding() {
        assert_eq!(CpuMode::of(false, true, true), CpuMode::Bits16);
        assert_eq!(CpuMode::of(true, true, false), CpuMode::Bits64);
        assert_eq!(CpuMode::of(true, false, true), CpuMode::Bits32);
        assert_eq!(CpuMode::of(true, false, false), CpuMode::Bits16);
        let pf = Event::PageFault { addr: 0x1000, code: 2 };
        assert_eq!(pf.encode(true), (14 | 3 << 8 | 1 << 11 | 1 << 31, 2));
        assert_eq!(pf.encode(false), (14 | 3 << 8 | 1 << 31, 0));
        assert_eq!(Event::GeneralProtection.encode(true), (13 | 3 << 8 | 1 << 11 | 1 << 31, 0));
        assert_eq!(Event::InvalidOpcode.encode(true), (6 | 3 << 8 | 1 << 31, 0));
        assert_eq!(Event::Nmi.encode(true), (2 | 2 << 8 | 1 << 31, 0));
    }

    #[test]
    fn registers_by_number_and_the_crash_dump() {
        let mut g = Gprs { rcx: 1, rbx: 3, rbp: 5, rsi: 6, rdi: 7, r15: 15, ..Gprs::ZERO };
        let got = [0, 1, 3, 4, 5, 6, 7, 15, 16].map(|n| g.get(n));
        let want = [Some(0), Some(1), Some(3), None, Some(5), Some(6), Some(7), Some(15), None];
        assert_eq!(got, want);
        let before = g;
        g.set(4, 9); // RSP lives in the backend.
        g.set(16, 9);
        assert_eq!(g, before);
        g.set(8, 0x88);
        assert_eq!(g, Gprs { r8: 0x88, ..before });
        let dump = std::format!("{}", g.dump("\n  "));
        let lines: std::vec::Vec<_> = dump.split('\n').collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "");
        let l2 = "  rsi 0x0000000000000006 rdi 0x0000000000000007 rbp 0x0000000000000005 r8  0x0000000000000088";
        assert_eq!(lines[2], l2);
        let l4 = "  r13 0x0000000000000000 r14 0x0000000000000000 r15 0x000000000000000f";
        assert_eq!(lines[4], l4);
    }

    #[test]
    fn the_instruction_pointer_wraps_at_the_code_width() {
        assert_eq!(CpuMode::Bits16.next_ip(0xfffe, 3), 1);
        assert_eq!(CpuMode::Bits16.next_ip(0x1_0000_7c00, 2), 0x7c02);
        assert_eq!(CpuMode::Bits32.next_ip(0xffff_fffe, 3), 1);
        assert_eq!(CpuMode::Bits32.next_ip(0x10_0000, 3), 0x10_0003);
        assert_eq!(CpuMode::Bits64.next_ip(0xffff_fffe, 3), 0x1_0000_0001);
        assert_eq!(CpuMode::Bits64.next_ip(u64::MAX, 1), 0);
    }

    #[test]
    fn only_canonical_instruction_pointers_complete_in_64_bit_code() {
        use super::is_canonical;
        assert!(is_canonical(0x7fff_ffff_ffff));
        assert!(!is_canonical(0x8000_0000_0000));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0xfff7_8000_0000_0000));
        // CPUID (2 bytes) at the top of the lower half, from ring 3 or anywhere.
        assert_eq!(CpuMode::Bits64.next_ip_checked(0x7fff_ffff_fffe, 2), None);
        assert_eq!(CpuMode::Bits64.next_ip_checked(0x7fff_ffff_fffc, 2), Some(0x7fff_ffff_fffe));
        // Wrapping to 0 from the top of the upper half is canonical.
        assert_eq!(CpuMode::Bits64.next_ip_checked(u64::MAX - 1, 2), Some(0));
        // Outside 64-bit code the pointer wraps instead.
        assert_eq!(CpuMode::Bits32.next_ip_checked(0xffff_fffe, 3), Some(1));
    }
}
