//! The AMD SVM backend: feature detection, EFER.SVME and the host save area, one VMCB per vCPU,
//! the VMRUN path, ASIDs and their flushes, and the translation of #VMEXITs into the core's
//! arch-neutral [`Exit`] values.
//!
//! Choices, and why:
//! - Nested paging with the `mmu` crate's NPT tables: vCPUs start in the PVH state (32-bit,
//!   paging off) and the CPU itself moves the guest into long mode when it turns paging on. The
//!   guest's EFER in the VMCB always has SVME set (VMRUN refuses it clear); the guest never sees
//!   that bit, because EFER accesses exit and the core goes through [`GuestReg::Efer`].
//! - CR0: SVM forces no CR0 bit, and the CPU itself rejects every invalid CR0 value the core's
//!   policy would, so CR0 writes do not exit. CR4 writes exit, because the CPU accepts CR4 bits
//!   of features it has but microhv hides (OSXSAVE, PCIDE, …); with OSXSAVE a guest could use
//!   AVX state that the FXSAVE-based swap does not preserve.
//! - Instructions the guest must not have (the SVM instructions other than VMMCALL,
//!   MONITOR/MWAIT, and, where the CPU has them, RDTSCP, XSETBV, RDPRU and INVPCID, which CPUID
//!   hides or VMX guests cannot execute) are intercepted and become #UD.
//! - One I/O permission map for dom0 (COM2 and the RTC passed through) and one for domUs (everything
//!   traps); one MSR permission map passing through the same MSRs as VMX: state VMRUN, VMSAVE
//!   and VMLOAD move (FS/GS bases, KernelGSBase, the syscall and SYSENTER MSRs, and the PAT,
//!   which with nested paging is the VMCB's G_PAT).
//! - Guest FPU/SSE state is swapped in the entry/exit assembly. The syscall MSRs, FS, GS, TR
//!   and LDTR are swapped with VMLOAD/VMSAVE around every VMRUN, as KVM does, rather than on
//!   `unload` as VMX does: microhv's IDT runs every vector on an IST stack, which the CPU finds
//!   through TR, so the host's TR must be back before anything can fault.
//! - Every vCPU has an ASID of its own when the CPU has enough (otherwise vCPUs share them and
//!   an ASID is flushed when its user changes). A flush the `mmu` owes is domain-wide, so it
//!   flushes every vCPU of the domain, each at its next VMRUN.
//! - Several CPUs: an ASID tags one CPU's TLB, so its users and the owner of the debug
//!   registers are kept per CPU (`set_cpu` names the CPU). `load` makes a vCPU ready on a CPU:
//!   its debug registers, and an ASID flush where another vCPU used the ASID there last, where
//!   the vCPU was last loaded on another CPU (what this one cached for it may be from an earlier
//!   stay), or where its domain was flushed since. Guests are entered through each CPU's
//!   `SvmRunner`: its host VMCB and slice timer, and the configuration, which never changes.
//! - Without NRIP save (QEMU TCG) the length of an intercepted instruction is decoded from the
//!   guest's instruction bytes (`insn`), except for IN/OUT, whose EXITINFO2 is the next RIP;
//!   without decode assists the source register of MOV to CR4 is decoded the same way.
//! - The time slice: SVM has no preemption timer, so `run` arms the CPU's local APIC timer
//!   (one-shot, `lapic::TIMER_VECTOR`) for the slice. The entry code sets RFLAGS.IF while GIF
//!   is clear, so with V_INTR_MASKING the timer's interrupt makes the guest exit (INTR
//!   intercept, translated to `Exit::Timer`), stays pending through the exit path, and is taken
//!   at STGI by microhv's IDT, whose stub for that vector signals EOI and returns; IF is
//!   cleared again right after. The legacy PICs are masked at boot, so nothing else arrives.
//!   An NMI exits the same way and is taken at STGI too, by an IDT stub that counts it; `run`
//!   reports it. So does another CPU's kick (`lapic::KICK_VECTOR`), translated to
//!   `Exit::Interrupt` (the slice timer is still running then).

mod caps;
mod entry;
mod insn;
mod vmcb;

pub use caps::detect;

use crate::arch::x86_64::cpu::{self, DebugRegs, rdmsr, wrmsr};
use crate::arch::x86_64::fpu::{self, FxArea};
use crate::arch::x86_64::idt::{DEBUG_IN_WINDOW, NMI_COUNT};
use crate::arch::x86_64::lapic::SliceTimer;
use crate::arch::x86_64::spec::{Mitigations, NO_DOMAIN};
use abi::hypercall::{MAX_DOMAINS, MAX_VCPUS_PER_DOMAIN};
use core::sync::atomic::Ordering;
use entry::svm_run;
use insn::FetchError;
use microhv_core::cpuid::Caller;
use microhv_core::cpus::MAX_CPUS;
use microhv_core::exit::{
    Access, BackendError, CpuMode, DemandFaults, Event, Exit, ExitInfo, FrameSource, Gprs,
    GuestReg, VcpuConfig, VcpuInit,
};
use microhv_core::fast::{self, FastExit};
use microhv_core::frames::{FRAME_SIZE, FrameAllocator};
use microhv_core::hwcaps::SvmFeatures;
use microhv_core::insn::{Expected, Intercepted, Mismatch, decode_intercepted};
use microhv_core::walk::Paging;
use vmcb::{Vmcb, control, exit, misc1, misc2, misc3, save, seg, tlb};
use x86::msr;

use microhv_core::policy::{PASSTHROUGH_MSRS, clear_bit};
use microhv_core::regs::{
    CR0_ET, CR0_PE, CR0_PG, DEFAULT_PAT, DR6_BS, EFER_LMA, EFER_LME, EFER_SVME, RFLAGS_FIXED,
    RFLAGS_IF, RFLAGS_RF, RFLAGS_TF,
};
/// VMCB INT_CTL: V_INTR_MASKING.
const V_INTR_MASKING: u32 = 1 << 24;
/// PAUSEs the pause filter lets pass before the PAUSE intercept exits (AMD APM Vol. 2, "Pause
/// Intercept Filtering"; KVM's default).
const PAUSE_FILTER_COUNT: u16 = 3000;
/// With the filter threshold: PAUSEs more than this many cycles apart start the count afresh,
/// so only a tight loop exits (KVM's default).
const PAUSE_FILTER_THRESHOLD: u16 = 128;
/// VMCB INT_CTL: V_IRQ (a virtual interrupt is pending), with priority 15 (bits 19:16) and
/// V_IGN_TPR (bit 20), so only RFLAGS.IF and the interrupt shadow hold it back: microhv uses it
/// only to learn when the guest can take an interrupt (the VINTR intercept), never delivers it.
const V_IRQ_WINDOW: u32 = (1 << 8) | (0xf << 16) | (1 << 20);
/// `VM_HSAVE_PA`: where VMRUN saves the host state.
const MSR_VM_HSAVE_PA: u32 = 0xc001_0117;

/// The I/O permission map: one bit per port plus the bits a multi-byte access at 0xFFFF
/// reaches, 12 KiB, physically contiguous.
const IOPM_FRAMES: u64 = 3;
/// The MSR permission map: 8 KiB, physically contiguous.
const MSRPM_FRAMES: u64 = 2;
/// vCPUs that can exist at once, and so the ASIDs microhv would like to have.
const VCPU_SLOTS: usize = (MAX_DOMAINS * MAX_VCPUS_PER_DOMAIN) as usize;
const DOMAINS: usize = MAX_DOMAINS as usize;

/// The hardware state of one vCPU.
pub struct SvmVcpu {
    vmcb: Vmcb,
    /// `domid * MAX_VCPUS_PER_DOMAIN + index`.
    slot: u16,
    domid: u32,
    asid: u32,
    /// The domain's flush generation this vCPU's ASID was last flushed for.
    flushed: u64,
    /// The CPU it was last loaded on (`None`: none yet).
    cpu: Option<usize>,
    fx: FxArea,
    /// DR0–DR3, which no VMCB field holds, while another vCPU has the hardware.
    debug: DebugRegs,
    /// An injected NMI's handler has not returned: SVM does not track the guest's NMI
    /// blocking, so microhv does, ending it at the handler's IRET (intercepted meanwhile).
    nmi_blocked: bool,
    /// The RIP of that IRET, which the intercept reports before it executes: the blocking
    /// ends once the guest has moved past it (at a later exit; KVM single-steps it instead).
    nmi_iret_rip: Option<u64>,
    /// Who it is, for the CPUID exits `run` completes itself.
    caller: Caller,
}

/// What entering a guest takes on one CPU ([`Svm::runner`]): the configuration, fixed when
/// the backend is built, and the CPU's own host VMCB and slice timer, so CPUs enter guests
/// concurrently.
#[derive(Clone, Copy)]
pub struct SvmRunner {
    features: SvmFeatures,
    /// Speculation barriers the CPU offers.
    spec: Mitigations,
    /// The CPU's FS, GS, TR, LDTR and syscall MSRs, as VMSAVE stored them there.
    host_vmcb: u64,
    /// The CPU's local APIC timer, which enforces time slices.
    timer: SliceTimer,
}

/// What the SVM backend keeps for each CPU.
#[derive(Clone, Copy)]
struct PerCpu {
    /// `slot + 1` of the vCPU whose DR0–DR3 are in the CPU's hardware (0: nobody's).
    dr_owner: u16,
    /// For each ASID, `slot + 1` of the vCPU whose translations it may still tag in the CPU's
    /// TLB (0: none).
    asid_user: [u16; VCPU_SLOTS + 1],
    /// Domain of the vCPU loaded last, for the branch-prediction barrier.
    last_domid: u32,
}

/// The SVM backend.
pub struct Svm {
    /// The boot CPU's runner, which [`Svm::run`] enters guests with; the rest of the backend
    /// reads the features in it too.
    boot: SvmRunner,
    /// I/O permission map for dom0.
    iopm_dom0: u64,
    /// I/O permission map for every other domain.
    iopm_domu: u64,
    msrpm: u64,
    misc2: u32,
    misc3: u32,
    /// ASIDs `1..=guest_asids` are used.
    guest_asids: u32,
    /// The CPU the backend's calls run on ([`Svm::set_cpu`]).
    cpu: usize,
    cpus: [PerCpu; MAX_CPUS],
    /// Per domain: bumped by every flush the `mmu` asks for.
    flush_gen: [u64; DOMAINS],
}

/// The bytes of `frames` frames at `pa`.
fn frame_bytes(pa: u64, frames: u64) -> &'static mut [u8] {
    // SAFETY: only called on frames this backend just allocated and owns exclusively, inside
    // the identity map (the allocator hands out nothing beyond it); no other reference to them
    // exists.
    unsafe { core::slice::from_raw_parts_mut(pa as *mut u8, (frames * FRAME_SIZE) as usize) }
}

/// Reads of host RAM for the instruction decoder: guest memory and nested page tables, all of
/// it frames in the identity map.
struct IdentityRam;

impl insn::Memory for IdentityRam {
    fn read_u64(&self, hpa: u64) -> Option<u64> {
        if !hpa.is_multiple_of(8) || hpa.checked_add(8)? > rt::IDENTITY_MAP_BYTES {
            return None;
        }
        // SAFETY: aligned and inside the identity map (checked). The addresses come from the
        // domain's nested page tables (built by the `mmu` from its RAM slots) or from their
        // leaves, so they are RAM frames owned by the domain or its tables; nothing holds a Rust
        // reference to those frames (the core and the `mmu` copy through `PhysMem`), and this is
        // a read.
        Some(unsafe { (hpa as *const u64).read_volatile() })
    }
}

/// Sets EFER.SVME on this CPU with `hsave` as its host save area (APM Vol. 2, 15.4 and
/// 15.30.4). `detect` must have found SVM usable on this CPU.
fn enable(hsave: u64) {
    // SAFETY: CPUID reported SVM and VM_CR allows it (checked by `detect`), so setting
    // EFER.SVME is allowed; VM_HSAVE_PA then gets a page-aligned frame microhv never uses
    // for anything else. Neither changes how microhv's own code runs.
    unsafe {
        wrmsr(msr::IA32_EFER, rdmsr(msr::IA32_EFER) | EFER_SVME);
        wrmsr(MSR_VM_HSAVE_PA, hsave);
    }
}

/// Enables SVM on an application processor: its own feature check (SVM offered, VM_CR) and
/// `hsave`, a zeroed frame set aside for it.
pub fn enable_ap(hsave: u64) -> Result<(), &'static str> {
    detect().map_err(|_| "no usable SVM on this CPU")?;
    enable(hsave);
    Ok(())
}

impl Svm {
    /// Enables SVM and builds the structures all vCPUs share. `frames` gives the physically
    /// contiguous runs the permission maps need; `tsc_khz` times the slice timer's calibration.
    pub fn new<const W: usize>(
        features: SvmFeatures,
        frames: &mut FrameAllocator<W>,
        tsc_khz: u64,
    ) -> Result<Self, &'static str> {
        let hsave = frames.alloc().ok_or("no frame for the host save area")?;
        let host_vmcb = frames.alloc().ok_or("no frame for the host VMCB")?;
        frame_bytes(hsave, 1).fill(0);
        frame_bytes(host_vmcb, 1).fill(0);
        enable(hsave);
        fpu::capture_host_fx();
        let timer = SliceTimer::init(tsc_khz);
        // SAFETY: EFER.SVME is set; the frame is ours. The GDT and TSS were loaded before the
        // backend was built, so this captures the TR (and FS/GS/LDTR) the host runs with.
        unsafe { vmcb::vmsave(host_vmcb) };

        let iopm_dom0 = Self::iopm(frames, true)?;
        let iopm_domu = Self::iopm(frames, false)?;
        let msrpm = frames.alloc_contiguous(MSRPM_FRAMES, 1).ok_or("no frames for the MSRPM")?;
        let bm = frame_bytes(msrpm, MSRPM_FRAMES);
        bm.fill(0xff);
        for m in PASSTHROUGH_MSRS {
            // Two bits per MSR (read, then write); 2 KiB per range of 8192 MSRs.
            let (base, idx) = match m {
                0..=0x1fff => (0, m),
                0xc000_0000..=0xc000_1fff => (0x800, m - 0xc000_0000),
                _ => (0x1000, m - 0xc001_0000),
            };
            let bit = base * 8 + idx as usize * 2;
            clear_bit(bm, bit);
            clear_bit(bm, bit + 1);
        }
        // TSC reads are harmless; writes still exit.
        clear_bit(bm, msr::IA32_TIME_STAMP_COUNTER as usize * 2);

        // Intercepts of instructions that only exist on some CPUs are set only where the CPU
        // has them (elsewhere they #UD anyway, and the intercept bits may be reserved).
        let has = |leaf: u32, reg: usize, bit: u32| {
            cpu::cpuid(leaf & 0x8000_0000, 0)[0] >= leaf && cpu::cpuid(leaf, 0)[reg] & bit != 0
        };
        let mut misc2 = misc2::VMRUN
            | misc2::VMMCALL
            | misc2::VMLOAD
            | misc2::VMSAVE
            | misc2::STGI
            | misc2::CLGI
            | misc2::SKINIT
            | misc2::MONITOR
            | misc2::MWAIT
            | misc2::MWAIT_COND;
        for (leaf, reg, bit, intercept) in [
            (0x8000_0001, 3, 1 << 27, misc2::RDTSCP),
            (1, 2, 1 << 26, misc2::XSETBV),
            (0x8000_0008, 1, 1 << 4, misc2::RDPRU),
        ] {
            if has(leaf, reg, bit) {
                misc2 |= intercept;
            }
        }
        let misc3 = if has(7, 1, 1 << 10) { misc3::INVPCID } else { 0 };

        let cpu = PerCpu { dr_owner: 0, asid_user: [0; VCPU_SLOTS + 1], last_domid: NO_DOMAIN };
        Ok(Self {
            guest_asids: (features.asids - 1).min(VCPU_SLOTS as u32),
            boot: SvmRunner { features, spec: Mitigations::detect(), host_vmcb, timer },
            iopm_dom0,
            iopm_domu,
            msrpm,
            misc2,
            misc3,
            cpu: 0,
            cpus: [cpu; MAX_CPUS],
            flush_gen: [0; DOMAINS],
        })
    }

    /// An I/O permission map: every port traps, except dom0's own (`io::dom0_ports`).
    fn iopm<const W: usize>(
        frames: &mut FrameAllocator<W>,
        dom0: bool,
    ) -> Result<u64, &'static str> {
        let pa = frames.alloc_contiguous(IOPM_FRAMES, 1).ok_or("no frames for an IOPM")?;
        microhv_core::io::io_bitmap(frame_bytes(pa, IOPM_FRAMES), dom0);
        Ok(pa)
    }

    fn setup_vmcb(&self, vm: Vmcb, cfg: &VcpuConfig, asid: u32) {
        // Writes to CR4; reads and writes of CR8, the virtual local APIC's TPR.
        vm.w32(control::INTERCEPT_CR, (1 << (16 + 4)) | (1 << 8) | (1 << (16 + 8)));
        vm.w32(control::INTERCEPT_EXCEPTIONS, 0);
        vm.w32(
            control::INTERCEPT_MISC1,
            misc1::INTR
                | misc1::NMI
                | misc1::INIT
                | misc1::CPUID
                | misc1::RDPMC
                | misc1::INVD
                | misc1::HLT
                | misc1::INVLPGA
                | misc1::IOIO_PROT
                | misc1::MSR_PROT
                | misc1::TASK_SWITCH
                | misc1::SHUTDOWN
                | if self.boot.features.pause_filter { misc1::PAUSE } else { 0 },
        );
        // Only with the filter: without it every PAUSE would exit. A vCPU spinning this many
        // PAUSEs on another gives the CPU to it (KVM's default count).
        if self.boot.features.pause_filter {
            vm.w16(control::PAUSE_FILTER_COUNT, PAUSE_FILTER_COUNT);
        }
        if self.boot.features.pause_filter_threshold {
            vm.w16(control::PAUSE_FILTER_THRESHOLD, PAUSE_FILTER_THRESHOLD);
        }
        vm.w32(control::INTERCEPT_MISC2, self.misc2);
        vm.w32(control::INTERCEPT_MISC3, self.misc3);
        let iopm = if cfg.privileged { self.iopm_dom0 } else { self.iopm_domu };
        vm.w64(control::IOPM_BASE_PA, iopm);
        vm.w64(control::MSRPM_BASE_PA, self.msrpm);
        vm.w64(control::TSC_OFFSET, 0);
        vm.w32(control::GUEST_ASID, asid);
        vm.w8(control::TLB_CONTROL, tlb::NOTHING);
        vm.w32(control::INT_CTL, V_INTR_MASKING);
        vm.w64(control::NESTED_CTL, 1);
        vm.w64(control::N_CR3, cfg.root);
    }

    /// The PVH / multiboot entry state: flat 32-bit protected mode, paging off.
    fn write_start_state(vm: Vmcb, init: &VcpuInit) {
        // Flat 32-bit (PVH): code (accessed, readable), data (accessed, writable), both 4 GiB,
        // DPL 0; SVM's attribute format is the descriptor's bits 47:40 and 55:52, so 0xc9b /
        // 0xc93. After a start-up IPI: real mode, 64 KiB 16-bit segments, CS at the start page.
        let (cs, ds, attr, limit, cr0) = match init.startup.map(u16::from) {
            None => ((0x08, 0), 0x10, 0xc00, 0xffff_ffff, CR0_PE | CR0_ET),
            Some(page) => ((page << 8, u64::from(page) << 12), 0, 0, 0xffff, CR0_ET),
        };
        vm.set_segment(save::CS, cs.0, attr | 0x9b, limit, cs.1);
        for s in [save::ES, save::SS, save::DS, save::FS, save::GS] {
            vm.set_segment(s, ds, attr | 0x93, limit, 0);
        }
        // A busy 32-bit TSS and an empty LDT, as after reset.
        vm.set_segment(save::TR, 0, 0x8b, 0x67, 0);
        vm.set_segment(save::LDTR, 0, 0, 0, 0);
        vm.set_segment(save::GDTR, 0, 0, 0xffff, 0);
        vm.set_segment(save::IDTR, 0, 0, 0xffff, 0);
        vm.w8(save::CPL, 0);
        vm.w64(save::EFER, EFER_SVME);
        vm.w64(save::CR0, cr0);
        vm.w64(save::CR2, 0);
        vm.w64(save::CR3, 0);
        vm.w64(save::CR4, 0);
        vm.w64(save::DR6, 0xffff_0ff0);
        vm.w64(save::DR7, 0x400);
        vm.w64(save::RFLAGS, RFLAGS_FIXED);
        vm.w64(save::RIP, init.rip);
        vm.w64(save::RSP, init.rsp);
        vm.w64(save::RAX, init.gprs.rax);
        // STAR, LSTAR, CSTAR, SFMASK, KernelGSBase, SYSENTER_CS/ESP/EIP: zero, as after reset.
        for off in (save::STAR..save::CR2).step_by(8) {
            vm.w64(off, 0);
        }
        vm.w64(save::G_PAT, DEFAULT_PAT);
        vm.w64(control::INT_STATE, 0);
        vm.w64(control::EVENTINJ, 0);
    }

    fn write_cr0(&self, v: &mut SvmVcpu, value: u64) {
        let vm = v.vmcb;
        let old = vm.r64(save::CR0);
        // ET is hardwired to 1 on every CPU with SVM.
        vm.w64(save::CR0, value | CR0_ET);
        // A CR0 write microhv completes on the guest's behalf does not get the CPU's long-mode
        // transition: turning paging on with EFER.LME activates long mode (EFER.LMA), turning it
        // off leaves it.
        if (old ^ value) & CR0_PG != 0 {
            let efer = vm.r64(save::EFER);
            let long = value & CR0_PG != 0 && efer & EFER_LME != 0;
            vm.w64(save::EFER, if long { efer | EFER_LMA } else { efer & !EFER_LMA });
        }
        // A MOV to CR0 the CPU executes flushes what the new paging mode no longer allows; this
        // one was not executed, so flush the vCPU's ASID instead.
        self.request_flush(vm);
    }

    /// Flushes the vCPU's ASID at its next VMRUN (new vCPU, new root, paging-mode change made
    /// on the guest's behalf, domain-wide flush), on the CPU that runs it: should that not be
    /// the CPU it ran on last, that CPU flushes when it next gives the ASID out (`load`).
    fn request_flush(&self, vm: Vmcb) {
        let ctl = if self.boot.features.flush_by_asid { tlb::FLUSH_ASID } else { tlb::FLUSH_ALL };
        vm.w8(control::TLB_CONTROL, ctl);
    }
}

/// The guest entry and exit, and the decoding of exits: the body of [`Svm::run`] and of every
/// CPU's runner.
impl SvmRunner {
    /// The code segment's mode: real mode, or the CS.L / CS.D attribute bits (L only counts
    /// with EFER.LMA).
    fn mode(vm: Vmcb) -> CpuMode {
        let db = vm.r16(save::CS + seg::ATTRIB) & seg::ATTR_DB != 0;
        CpuMode::of(vm.r64(save::CR0) & CR0_PE != 0, Self::code64(vm), db)
    }

    /// Guest RIP as a linear address, and whether the guest runs 64-bit code.
    fn linear_rip(vm: Vmcb) -> (u64, bool) {
        let rip = vm.r64(save::RIP);
        if Self::code64(vm) {
            (rip, true)
        } else {
            (vm.r64(save::CS + seg::BASE).wrapping_add(rip) & 0xffff_ffff, false)
        }
    }

    fn code64(vm: Vmcb) -> bool {
        vm.r64(save::EFER) & EFER_LMA != 0 && vm.r16(save::CS + seg::ATTRIB) & seg::ATTR_L != 0
    }

    /// Decodes the guest's instruction at RIP, which must be `expected`.
    fn decode_at_rip(vm: Vmcb, expected: Expected) -> Result<Intercepted, Exit> {
        let (linear, code64) = Self::linear_rip(vm);
        let paging = Paging {
            cr0: vm.r64(save::CR0),
            cr3: vm.r64(save::CR3),
            cr4: vm.r64(save::CR4),
            efer: vm.r64(save::EFER),
        };
        let ncr3 = vm.r64(control::N_CR3);
        let (bytes, n, err) = insn::fetch(&IdentityRam, ncr3, &paging, linear, code64);
        match decode_intercepted(&bytes[..n], code64, expected) {
            Ok(d) => Ok(d),
            Err(Mismatch::Truncated) => match err {
                // The CPU fetched it through a mapping the nested tables no longer hold: let the
                // core map the page again; the instruction re-executes and exits again.
                Some(FetchError::NotMapped(gpa)) => Err(Exit::NestedPageFault {
                    gpa,
                    access: Access { read: true, ..Access::default() },
                }),
                // The same for a page of its page tables (another CPU's reclaim zapped it
                // since the CPU's own walk): a read by the walk.
                Some(FetchError::TableNotMapped(gpa)) => Err(Exit::NestedPageFault {
                    gpa,
                    access: Access { read: true, walk: true, ..Access::default() },
                }),
                _ => {
                    log::warn!("cannot read the guest's {expected:?} instruction at {linear:#x}");
                    Err(Exit::Unhandled)
                }
            },
            Err(Mismatch::Mismatch) => {
                log::warn!(
                    "guest bytes at {linear:#x} are not the intercepted {expected:?}: {:02x?}",
                    &bytes[..n]
                );
                Err(Exit::Unhandled)
            }
        }
    }

    /// `exit` with the length of the intercepted instruction: NRIP save's, else decoded.
    fn with_len(&self, vm: Vmcb, exit: Exit, expected: Expected) -> (Exit, u8) {
        if let Some(len) = self.nrip_len(vm) {
            return (exit, len);
        }
        match Self::decode_at_rip(vm, expected) {
            Ok(d) => (exit, d.len),
            Err(e) => (e, 0),
        }
    }

    /// The instruction length NRIP save gives, if the CPU has it and it is plausible.
    fn nrip_len(&self, vm: Vmcb) -> Option<u8> {
        if !self.features.nrip_save {
            return None;
        }
        Self::len_to(vm, vm.r64(control::NEXT_RIP))
    }

    /// `next - RIP`, if it is the length of one instruction.
    fn len_to(vm: Vmcb, next: u64) -> Option<u8> {
        let mut len = next.wrapping_sub(vm.r64(save::RIP));
        if !Self::code64(vm) {
            len &= 0xffff_ffff;
        }
        (1..=microhv_core::insn::MAX_INSN_LEN as u64).contains(&len).then_some(len as u8)
    }

    /// A CR-access intercept on control register `cr`: the general register involved
    /// (decode assists' EXITINFO1, else decoded from the guest's bytes) and the length.
    fn cr_access(
        &self,
        vm: Vmcb,
        info1: u64,
        cr: u8,
        expected: Expected,
    ) -> Result<(u8, u8), Exit> {
        let assisted = self.features.decode_assists && info1 >> 63 != 0;
        match (assisted, self.nrip_len(vm)) {
            (true, Some(len)) => Ok(((info1 & 0xf) as u8, len)),
            _ => match Self::decode_at_rip(vm, expected) {
                Ok(d) if d.cr == cr => Ok((d.gpr, d.len)),
                Ok(d) => {
                    log::warn!("CR{cr} intercept on a {expected:?} of CR{}", d.cr);
                    Err(Exit::Unhandled)
                }
                Err(e) => Err(e),
            },
        }
    }

    fn cr_write(&self, vm: Vmcb, info1: u64, gprs: &Gprs, cr: u8) -> (Exit, u8) {
        let (gpr, len) = match self.cr_access(vm, info1, cr, Expected::MovToCr) {
            Ok(x) => x,
            Err(e) => return (e, 0),
        };
        let mut value = gprs.get(gpr).unwrap_or_else(|| vm.r64(save::RSP));
        if !Self::code64(vm) {
            value &= 0xffff_ffff;
        }
        (Exit::CrWrite { cr, value }, len)
    }

    /// Translates a #VMEXIT; the length is that of the instruction to skip, if any.
    fn translate(&self, vm: Vmcb, code: u64, info1: u64, info2: u64, gprs: &Gprs) -> (Exit, u8) {
        match code {
            exit::VMMCALL => self.with_len(vm, Exit::Hypercall, Expected::Vmmcall),
            exit::CPUID => self.with_len(vm, Exit::Cpuid, Expected::Cpuid),
            exit::HLT => self.with_len(vm, Exit::Hlt, Expected::Hlt),
            // The PAUSE is left to re-execute: nothing to skip, nothing to decode.
            exit::PAUSE => (Exit::Pause, 0),
            exit::MSR if info1 & 1 == 0 => self.with_len(vm, Exit::RdMsr, Expected::Rdmsr),
            exit::MSR => self.with_len(vm, Exit::WrMsr, Expected::Wrmsr),
            // EXITINFO2 is the next RIP with or without NRIP save.
            exit::IOIO => match Self::len_to(vm, info2) {
                Some(len) => {
                    let size = match (info1 >> 4) & 7 {
                        1 => 1,
                        2 => 2,
                        _ => 4,
                    };
                    let io = Exit::Io {
                        port: (info1 >> 16) as u16,
                        size,
                        write: info1 & 1 == 0,
                        string: info1 & (1 << 2) != 0,
                        rep: info1 & (1 << 3) != 0,
                    };
                    (io, len)
                }
                None => (Exit::Unhandled, 0),
            },
            exit::WRITE_CR4 => self.cr_write(vm, info1, gprs, 4),
            exit::WRITE_CR8 => self.cr_write(vm, info1, gprs, 8),
            exit::READ_CR8 => match self.cr_access(vm, info1, 8, Expected::MovFromCr) {
                Ok((gpr, len)) => (Exit::CrRead { cr: 8, gpr }, len),
                Err(e) => (e, 0),
            },
            exit::NPF => (Exit::NestedPageFault { gpa: info2, access: Self::npf_access(info1) }, 0),
            exit::INTR | exit::NMI => (Exit::Interrupt, 0),
            exit::VINTR | exit::IRET => (Exit::InterruptWindow, 0),
            exit::SHUTDOWN => (Exit::TripleFault, 0),
            exit::VMRUN
            | exit::VMLOAD
            | exit::VMSAVE
            | exit::STGI
            | exit::CLGI
            | exit::SKINIT
            | exit::INVLPGA
            | exit::RDTSCP
            | exit::MONITOR
            | exit::MWAIT
            | exit::MWAIT_COND
            | exit::XSETBV
            | exit::RDPRU
            | exit::INVPCID => (Exit::InvalidOpcode, 0),
            // APM: VMEXIT_INVALID is -1; QEMU TCG writes it as a 32-bit -1.
            exit::INVALID | 0xffff_ffff => (Exit::EntryFailure, 0),
            exit::INVD => self.with_len(vm, Exit::Invd, Expected::Invd),
            exit::RDPMC => (Exit::Rdpmc, 0),
            exit::TASK_SWITCH => (Exit::TaskSwitch, 0),
            // As under VMX, where it exits unconditionally and the core stops the domain.
            exit::INIT => (Exit::Unhandled, 0),
            _ => (Exit::Unhandled, 0),
        }
    }

    /// What to inject at the next VMRUN for an event whose delivery the #VMEXIT interrupted
    /// (EXITINTINFO): the same event again, except software interrupts and INT3/INTO, whose
    /// instruction is re-executed instead (RIP still points at it).
    fn reinjection(intinfo: u64) -> u64 {
        if intinfo & (1 << 31) == 0 {
            return 0;
        }
        let (vector, kind) = (intinfo & 0xff, (intinfo >> 8) & 7);
        if kind == 4 || (kind == 3 && (vector == 3 || vector == 4)) {
            return 0;
        }
        intinfo & 0xffff_ffff_8000_0fff
    }

    /// See `Runner::run`: `v` was made ready on this CPU by [`Svm::load`].
    // Out of line: inlined into the core's run loop next to VMX's, it made the loop too large
    // to keep its own hot path inline (measured: +24 instructions per VMX hypercall round trip
    // under Bochs, 8 with this).
    #[inline(never)]
    pub(super) fn run(
        &mut self,
        v: &mut SvmVcpu,
        gprs: &mut Gprs,
        slice: u64,
        faults: &mut dyn DemandFaults,
    ) -> ExitInfo {
        let vm = v.vmcb;
        vm.w64(save::RAX, gprs.rax);
        self.timer.arm(slice);
        let kick = faults.kick_flag();
        let nmis = NMI_COUNT.load(Ordering::Relaxed);
        let dbs = DEBUG_IN_WINDOW.load(Ordering::Relaxed);
        let start = cpu::rdtsc();
        let mut completed = [0; 3];
        // The exits `complete` finishes go straight back into the guest while the slice timer
        // runs; its interrupt, pending, ends the loop with the next VMRUN.
        let code = loop {
            self.spec.before_entry();
            // SAFETY: EFER.SVME and VM_HSAVE_PA were set up on this CPU (`new`, `enable_ap`);
            // the VMCB is this vCPU's and fully initialized; `gprs` and `fx` are this vCPU's;
            // the host VMCB holds this CPU's VMSAVE state (`runner`); what can be pending after
            // the run (the slice timer, a kick, a spurious interrupt, an NMI) has an IDT stub
            // that returns.
            unsafe { svm_run(gprs, &mut v.fx, vm.0, self.host_vmcb) };
            vm.w8(control::TLB_CONTROL, tlb::NOTHING);
            let code = vm.r64(control::EXITCODE);
            // Past the slice's end the timer's interrupt may already have been taken in root
            // mode (its stub only acknowledges it): the core decides then. So may a kick's,
            // which the kicker records (`DemandFaults::kick_flag`).
            let go_on = self.timer.running() && !kick.is_some_and(|k| k.load(Ordering::Acquire));
            match go_on.then(|| self.complete(v, code, gprs, faults)).flatten() {
                Some(i) => completed[i] += 1,
                None => break code,
            }
        };
        vm.w64(control::EVENTINJ, Self::reinjection(vm.r64(control::EXITINTINFO)));
        // An interrupt exit before the slice ran out was another CPU's kick.
        let kicked = (code == exit::INTR && self.timer.running())
            || kick.is_some_and(|k| k.load(Ordering::Acquire));
        self.timer.disarm();
        if NMI_COUNT.load(Ordering::Relaxed) != nmis {
            log::warn!("NMI while a guest ran; absorbed");
        }
        if DEBUG_IN_WINDOW.load(Ordering::Relaxed) != dbs {
            log::warn!(
                "d{}: #DB from the guest's debug state in the exit window; disarmed",
                v.domid
            );
        }
        let ran = cpu::rdtsc().wrapping_sub(start);
        gprs.rax = vm.r64(save::RAX);
        let info1 = vm.r64(control::EXITINFO1);
        let info2 = vm.r64(control::EXITINFO2);
        if code == exit::IRET {
            v.nmi_blocked = false;
            v.nmi_iret_rip = Some(vm.r64(save::RIP));
            vm.w32(control::INTERCEPT_MISC1, vm.r32(control::INTERCEPT_MISC1) & !misc1::IRET);
        }
        let (exit, insn_len) = match self.translate(vm, code, info1, info2, gprs) {
            // The slice timer (the kick is the only other interrupt source unmasked).
            (Exit::Interrupt, len) if code == exit::INTR && !kicked => (Exit::Timer, len),
            other => other,
        };
        let mut info = ExitInfo::fast(exit, code, info1, ran);
        info.completed = completed;
        info.insn_len = insn_len;
        info.cpl = vm.r8(save::CPL) & 3;
        info.rflags = vm.r64(save::RFLAGS);
        // The quick exits' handlers need no more (`ExitInfo`); the others get all of it.
        let quick = matches!(
            exit,
            Exit::Hypercall
                | Exit::Cpuid
                | Exit::RdMsr
                | Exit::WrMsr
                | Exit::Invd
                | Exit::Hlt
                | Exit::Io { string: false, .. }
                | Exit::Timer
                | Exit::InterruptWindow
                | Exit::Interrupt
                | Exit::Pause
        );
        if !quick {
            info.rip = vm.r64(save::RIP);
            info.rsp = vm.r64(save::RSP);
            info.cr0 = vm.r64(save::CR0);
            info.cr3 = vm.r64(save::CR3);
            info.cr4 = vm.r64(save::CR4);
            info.efer = vm.r64(save::EFER) & !EFER_SVME;
            info.mode = Self::mode(vm);
            info.cs_base = vm.r64(save::CS + seg::BASE);
        }
        info
    }

    /// What a nested page fault's error code (EXITINFO1) says the access was.
    fn npf_access(info1: u64) -> Access {
        let a = mmu::Access::from_npt_error_code(info1);
        // EXITINFO1 bit 33: the fault was on the guest's page-table walk.
        Access {
            read: a.read,
            write: a.write,
            exec: a.fetch,
            present: a.present,
            walk: info1 & (1 << 33) != 0,
        }
    }

    /// Completes a VMMCALL or CPUID exit in place when that is plain (`microhv_core::fast`):
    /// NRIP save gives the length, no single-step trap to deliver, no RF or interrupt shadow to
    /// end, no RIP wrap, no NMI blocking waiting for its IRET to be passed (the core ends it at
    /// an exit); or a nested page fault `faults` fixes, unless it cut off an event's delivery
    /// (EXITINTINFO), which the core injects again. Which kind it was
    /// (`ExitInfo::completed`'s index), or `None`: the core's.
    fn complete(
        &self,
        v: &SvmVcpu,
        code: u64,
        gprs: &mut Gprs,
        faults: &mut dyn DemandFaults,
    ) -> Option<usize> {
        let vm = v.vmcb;
        let exit = match code {
            exit::VMMCALL => FastExit::Hypercall,
            exit::CPUID => FastExit::Cpuid,
            exit::NPF => {
                let (info1, gpa) = (vm.r64(control::EXITINFO1), vm.r64(control::EXITINFO2));
                // The slice timer counts root-mode time too: how long a fix took needs no look.
                let fixed = vm.r64(control::EXITINTINFO) & (1 << 31) == 0
                    && v.nmi_iret_rip.is_none()
                    && faults.fix(gpa, mmu::Access::from_npt_error_code(info1)).is_some();
                if fixed {
                    // What was injected at the entry has been delivered.
                    vm.w64(control::EVENTINJ, 0);
                }
                return fixed.then_some(FastExit::Fault.index());
            }
            _ => return None,
        };
        gprs.rax = vm.r64(save::RAX);
        if !fast::accepts(exit, gprs, || vm.r8(save::CPL) & 3) || v.nmi_iret_rip.is_some() {
            return None;
        }
        let (rip, next) = (vm.r64(save::RIP), vm.r64(control::NEXT_RIP));
        let len = next.wrapping_sub(rip);
        let plain = self.features.nrip_save
            && (1..=microhv_core::insn::MAX_INSN_LEN as u64).contains(&len)
            && fast::plain_advance(rip, len)
            && vm.r64(save::RFLAGS) & (RFLAGS_TF | RFLAGS_RF) == 0
            && vm.r64(control::INT_STATE) & 1 == 0;
        if !plain {
            return None;
        }
        fast::apply(exit, gprs, &v.caller, cpu::cpuid);
        vm.w64(save::RAX, gprs.rax);
        vm.w64(save::RIP, next);
        // An intercepted instruction interrupts no event delivery: nothing to inject again,
        // and what was injected at the entry has been delivered.
        vm.w64(control::EVENTINJ, 0);
        Some(exit.index())
    }
}

/// The operations of [`Backend`](microhv_core::exit::Backend) on SVM:
/// [`crate::arch::Arch`], the core's only backend, dispatches to them.
impl Svm {
    /// See `Backend::set_cpu`.
    pub(super) fn set_cpu(&mut self, cpu: usize) {
        self.cpu = cpu;
    }

    /// See `Backend::runner`: on an AP, its own host VMCB (VMSAVE there captures its TR, FS,
    /// GS and LDTR) and its slice timer, with the boot CPU's calibration; the boot CPU (0)
    /// shares the backend's.
    pub(super) fn runner(
        &mut self,
        cpu: usize,
        frames: &mut dyn FrameSource,
    ) -> Result<SvmRunner, BackendError> {
        if cpu == 0 {
            return Ok(self.boot);
        }
        let host_vmcb = frames.alloc_zeroed().ok_or(BackendError::NoMemory)?;
        // SAFETY: EFER.SVME is set on this CPU (`enable_ap`); the frame is ours. Its GDT and
        // TSS were loaded at its start-up (`smp`), so this captures the TR (and FS/GS/LDTR) it
        // runs with.
        unsafe { vmcb::vmsave(host_vmcb) };
        Ok(SvmRunner { host_vmcb, timer: self.boot.timer.for_this_cpu(), ..self.boot })
    }

    /// See `Backend::load`.
    pub(super) fn load(&mut self, v: &mut SvmVcpu) {
        let vm = v.vmcb;
        let me = v.slot + 1;
        let here = &mut self.cpus[self.cpu];
        if here.dr_owner != me {
            v.debug.load();
            here.dr_owner = me;
        }
        let reused = match here.asid_user.get_mut(v.asid as usize) {
            Some(user) => core::mem::replace(user, me) != me,
            None => true,
        };
        self.boot.spec.switch_domain(&mut here.last_domid, v.domid);
        let generation = self.flush_gen[v.domid as usize % DOMAINS];
        if reused || v.flushed != generation || v.cpu != Some(self.cpu) {
            self.request_flush(vm);
        }
        (v.flushed, v.cpu) = (generation, Some(self.cpu));
        // No clean bits: the CPU reloads every VMCB field at every VMRUN, so no write in the
        // core's handlers needs bookkeeping, and a VMCB that moves to another CPU has none to
        // clear (APM Vol. 2, "VMCB Clean Bits").
        vm.w32(control::VMCB_CLEAN, 0);
    }

    /// See `Backend::create_vcpu`.
    pub(super) fn create_vcpu(
        &mut self,
        frames: &mut dyn FrameSource,
        cfg: &VcpuConfig,
        init: &VcpuInit,
    ) -> Result<SvmVcpu, BackendError> {
        let slot = cfg
            .domid
            .checked_mul(MAX_VCPUS_PER_DOMAIN)
            .and_then(|s| s.checked_add(cfg.index))
            .filter(|&s| (s as usize) < VCPU_SLOTS)
            .ok_or(BackendError::Hardware(u64::from(cfg.domid)))?;
        let pa = frames.alloc_zeroed().ok_or(BackendError::NoMemory)?;
        // ASIDs are derived from the slot; when there are fewer than slots, vCPUs share them and
        // `load` flushes an ASID whose user changed.
        let asid = 1 + slot % self.guest_asids;
        let vm = Vmcb(pa);
        self.setup_vmcb(vm, cfg, asid);
        let mut v = SvmVcpu {
            vmcb: vm,
            slot: slot as u16,
            domid: cfg.domid,
            asid,
            flushed: 0,
            cpu: None,
            fx: FxArea::reset(),
            debug: DebugRegs::default(),
            nmi_blocked: false,
            nmi_iret_rip: None,
            caller: cfg.caller(abi::cpuid::HYPERCALL_VMMCALL),
        };
        self.reset_vcpu(&mut v, init);
        Ok(v)
    }

    /// See `Backend::reset_vcpu`.
    pub(super) fn reset_vcpu(&mut self, v: &mut SvmVcpu, init: &VcpuInit) {
        Self::write_start_state(v.vmcb, init);
        v.fx = FxArea::reset();
        v.debug = DebugRegs::default();
        self.disown(v.slot);
        // A new vCPU or paging state: nothing its ASID tags may survive (a new vCPU in a reused
        // slot would inherit its predecessor's translations).
        self.request_flush(v.vmcb);
        v.nmi_blocked = false;
        v.nmi_iret_rip = None;
        let vm = v.vmcb;
        vm.w32(control::INTERCEPT_MISC1, vm.r32(control::INTERCEPT_MISC1) & !misc1::IRET);
    }

    /// See `Backend::destroy_vcpu`.
    pub(super) fn destroy_vcpu(&mut self, frames: &mut dyn FrameSource, v: SvmVcpu) {
        self.disown(v.slot);
        for c in &mut self.cpus {
            if let Some(u) = c.asid_user.get_mut(v.asid as usize).filter(|u| **u == v.slot + 1) {
                *u = 0;
            }
        }
        frames.free(v.vmcb.0);
    }

    /// This CPU no longer holds the debug registers of the vCPU in `slot`: its copy in memory
    /// (reset, or freed) is what counts, and a new vCPU in its slot must load its own. No other
    /// CPU can hold them (as `Vmx::disown` explains).
    fn disown(&mut self, slot: u16) {
        let here = &mut self.cpus[self.cpu];
        if here.dr_owner == slot + 1 {
            here.dr_owner = 0;
        }
    }

    /// See `Backend::run`: loads `v` on this CPU and runs it with the boot CPU's runner.
    pub(super) fn run(
        &mut self,
        v: &mut SvmVcpu,
        gprs: &mut Gprs,
        slice: u64,
        faults: &mut dyn DemandFaults,
    ) -> ExitInfo {
        self.load(v);
        self.boot.run(v, gprs, slice, faults)
    }

    /// See `Backend::unload`.
    pub(super) fn unload(&mut self, v: &mut SvmVcpu) {
        // Every #VMEXIT VMSAVEs the guest's FS, GS, TR, LDTR and syscall MSRs into its VMCB and
        // VMLOADs the host's (see `entry`); DR6, DR7 and CR2 are VMCB fields. Only DR0–DR3 stay
        // in the hardware.
        let here = &mut self.cpus[self.cpu];
        if here.dr_owner == v.slot + 1 {
            v.debug = DebugRegs::save();
            here.dr_owner = 0;
        }
    }

    /// See `Backend::read`.
    pub(super) fn read(&mut self, v: &mut SvmVcpu, reg: GuestReg) -> u64 {
        let vm = v.vmcb;
        match reg {
            GuestReg::Rip => vm.r64(save::RIP),
            GuestReg::Rsp => vm.r64(save::RSP),
            GuestReg::Rflags => vm.r64(save::RFLAGS),
            GuestReg::Cr0 => vm.r64(save::CR0),
            GuestReg::Cr4 => vm.r64(save::CR4),
            GuestReg::Efer => vm.r64(save::EFER) & !EFER_SVME,
            GuestReg::FsBase => vm.r64(save::FS + seg::BASE),
            GuestReg::GsBase => vm.r64(save::GS + seg::BASE),
            // With nested paging the CPU walks the guest's PAE PDPTEs from guest CR3 on every
            // VMRUN; there is no cached copy in the VMCB to read or refresh.
            GuestReg::Pdpte(_) => 0,
            GuestReg::CsLd => u64::from(vm.r16(save::CS + seg::ATTRIB) >> 9) & 3,
            GuestReg::TrType => u64::from(vm.r16(save::TR + seg::ATTRIB) & 0xf),
            GuestReg::TscOffset => vm.r64(control::TSC_OFFSET),
            // ES, CS, SS, DS, FS, GS lie in that order, 16 bytes apart, as `Seg` counts them.
            GuestReg::SegBase(s) => vm.r64(save::ES + 0x10 * s as usize + seg::BASE),
        }
    }

    /// See `Backend::write`.
    pub(super) fn write(&mut self, v: &mut SvmVcpu, reg: GuestReg, value: u64) {
        let vm = v.vmcb;
        match reg {
            GuestReg::Rip => vm.w64(save::RIP, value),
            GuestReg::Rsp => vm.w64(save::RSP, value),
            GuestReg::Rflags => vm.w64(save::RFLAGS, value | RFLAGS_FIXED),
            GuestReg::Cr0 => self.write_cr0(v, value),
            GuestReg::Cr4 => {
                vm.w64(save::CR4, value);
                // As for CR0: an executed MOV to CR4 would have flushed the TLB.
                self.request_flush(vm);
            }
            GuestReg::Efer => {
                let lma = vm.r64(save::EFER) & EFER_LMA;
                vm.w64(save::EFER, (value & !EFER_LMA) | lma | EFER_SVME);
                self.request_flush(vm);
            }
            GuestReg::FsBase => vm.w64(save::FS + seg::BASE, value),
            GuestReg::GsBase => vm.w64(save::GS + seg::BASE, value),
            GuestReg::TscOffset => vm.w64(control::TSC_OFFSET, value),
            GuestReg::Pdpte(_) | GuestReg::CsLd | GuestReg::TrType | GuestReg::SegBase(_) => {}
        }
    }

    /// See `Backend::advance_rip`.
    pub(super) fn advance_rip(&mut self, v: &mut SvmVcpu, len: u8) -> bool {
        let vm = v.vmcb;
        let Some(next) = SvmRunner::mode(vm).next_ip_checked(vm.r64(save::RIP), len) else {
            return false;
        };
        vm.w64(save::RIP, next);
        // Skipping the instruction ends any STI / MOV SS interrupt shadow it began.
        vm.w64(control::INT_STATE, vm.r64(control::INT_STATE) & !1);
        // The CPU clears RF when an instruction completes. A single-stepping guest gets the #DB
        // trap the instruction would have raised. SVM has no pending-debug-exception field, so
        // inject it (a trap: RIP already points past).
        let rflags = vm.r64(save::RFLAGS);
        vm.w64(save::RFLAGS, rflags & !RFLAGS_RF);
        if rflags & RFLAGS_TF != 0 {
            vm.w64(save::DR6, vm.r64(save::DR6) | DR6_BS);
            vm.w64(control::EVENTINJ, 1 | (3 << 8) | (1 << 31));
        }
        true
    }

    /// See `Backend::inject`.
    pub(super) fn inject(&mut self, v: &mut SvmVcpu, event: Event) {
        let vm = v.vmcb;
        match event {
            Event::PageFault { addr, .. } => vm.w64(save::CR2, addr),
            // Blocked until the handler's IRET.
            Event::Nmi => {
                v.nmi_blocked = true;
                vm.w32(control::INTERCEPT_MISC1, vm.r32(control::INTERCEPT_MISC1) | misc1::IRET);
            }
            Event::InvalidOpcode | Event::GeneralProtection => {}
        }
        // The error code is bits 63:32.
        let (info, code) = event.encode(vm.r64(save::CR0) & CR0_PE != 0);
        vm.w64(control::EVENTINJ, info | u64::from(code) << 32);
    }

    /// See `Backend::interruptible`.
    pub(super) fn interruptible(&mut self, v: &mut SvmVcpu, nmi: bool) -> bool {
        let vm = v.vmcb;
        let open = if nmi {
            if v.nmi_iret_rip.is_some_and(|rip| rip == vm.r64(save::RIP)) {
                return false;
            }
            v.nmi_iret_rip = None;
            !v.nmi_blocked
        } else {
            vm.r64(save::RFLAGS) & RFLAGS_IF != 0
        };
        open && vm.r64(control::INT_STATE) & 1 == 0 && vm.r64(control::EVENTINJ) & (1 << 31) == 0
    }

    /// See `Backend::inject_interrupt`.
    pub(super) fn inject_interrupt(&mut self, v: &mut SvmVcpu, vector: u8) {
        // Type 0: external interrupt.
        v.vmcb.w64(control::EVENTINJ, u64::from(vector) | (1 << 31));
    }

    /// See `Backend::set_interrupt_window`.
    pub(super) fn set_interrupt_window(&mut self, v: &mut SvmVcpu, on: bool, nmi: bool) {
        // The NMI window is the IRET intercept, armed with every injected NMI.
        if nmi {
            return;
        }
        let vm = v.vmcb;
        let ctl = vm.r32(control::INT_CTL);
        let misc = vm.r32(control::INTERCEPT_MISC1);
        if on {
            vm.w32(control::INT_CTL, ctl | V_IRQ_WINDOW);
            vm.w32(control::INTERCEPT_MISC1, misc | misc1::VINTR);
        } else {
            vm.w32(control::INT_CTL, ctl & !V_IRQ_WINDOW);
            vm.w32(control::INTERCEPT_MISC1, misc & !misc1::VINTR);
        }
    }

    /// See `Backend::set_root`.
    pub(super) fn set_root(&mut self, v: &mut SvmVcpu, root: u64) {
        v.vmcb.w64(control::N_CR3, root);
        self.request_flush(v.vmcb);
    }

    /// See `Backend::flush`.
    pub(super) fn flush(&mut self, v: &mut SvmVcpu) {
        // Domain-wide, like INVEPT single-context: the vCPU about to run flushes at its next
        // VMRUN, the domain's others at their next load.
        let g = &mut self.flush_gen[v.domid as usize % DOMAINS];
        *g = g.wrapping_add(1);
        v.flushed = *g;
        self.request_flush(v.vmcb);
    }
}

const _: () = assert!(FRAME_SIZE == 4096);
const _: () = assert!(VCPU_SLOTS < u16::MAX as usize);
