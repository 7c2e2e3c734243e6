//! The Intel VMX backend: feature detection, VMXON, the VMCS, the entry/exit path, EPT and
//! VPID flushes, and the translation of VM exits into the core's arch-neutral [`Exit`] values.
//!
//! Choices, and why:
//! - Unrestricted guest with EPT: vCPUs start in the PVH state (32-bit, paging off) with no
//!   real-mode emulation, and the CPU itself moves the guest into long mode (it stores
//!   EFER.LMA into the "IA-32e mode guest" entry control on every exit).
//! - CR0/CR4: only the bits the hardware forces (CR0.NE, CR4.VMXE) and the CR4 features microhv
//!   does not offer are host-owned; writes touching them exit and the core validates them.
//! - One I/O bitmap for dom0 (COM2 and the RTC passed through) and one for domUs (everything traps); one
//!   MSR bitmap passing through only state the VMCS saves or that microhv swaps itself.
//! - Guest FPU/SSE state is swapped in the entry/exit assembly. DR7 and IA32_DEBUGCTL are
//!   loaded and saved by the VMCS (debug-controls entry/exit controls); the state no VMCS field
//!   holds — the syscall MSRs (STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE, passed through),
//!   DR0–DR3, DR6, CR2 and CR8 — stays in the hardware across exits and is swapped when another
//!   vCPU takes the CPU (`Owned`).
//! - Every vCPU has its own VPID (flushed when reused) and the EPTP of its domain.
//! - Several CPUs: what a CPU holds for a vCPU — its VMCS, active and current (a VMCS must be
//!   cleared before another CPU loads it: SDM Vol. 3C, "Software Use of Virtual-Machine Control
//!   Structures"), its `Owned` state, its translations — is kept per CPU (`set_cpu` names it). `load` makes a vCPU ready on a
//!   CPU: its VMCS current, the host state of that CPU in it, its VPID and EPT translations from
//!   an earlier stay flushed (as KVM's `vmx_vcpu_load_vmcs` does), and an EPT flush of its
//!   domain done elsewhere (`flush_gen`) made up; `unload` saves and clears it. Guests are
//!   entered through each CPU's `VmxRunner`, which holds only what never changes.

mod caps;
mod entry;
mod vmcs;

pub use caps::detect;

use crate::arch::x86_64::cpu::{self, DebugRegs, rdmsr, wrmsr};
use crate::arch::x86_64::fpu::{self, FxArea};
use crate::arch::x86_64::gdt::{self, Selectors};
use crate::arch::x86_64::lapic;
use crate::arch::x86_64::spec::{Mitigations, NO_DOMAIN};
use abi::hypercall::MAX_DOMAINS;
use entry::{microhv_vmx_exit, vmx_run};
use microhv_core::cpuid::Caller;
use microhv_core::cpus::MAX_CPUS;
use microhv_core::exit::{
    Access, BackendError, CpuMode, DemandFaults, Event, Exit, ExitInfo, FrameSource, Gprs,
    GuestReg, VcpuConfig, VcpuInit,
};
use microhv_core::fast::{self, FastExit};
use microhv_core::frames::FRAME_SIZE;
use microhv_core::hwcaps::{VmxFeatures, VmxMsrs, adjust_controls};
use microhv_core::policy::{GUEST_CR4_ALLOWED, clear_bit};
use x86::msr;
use x86::vmx::vmcs::control::{
    EntryControls, ExitControls, PinbasedControls, PrimaryControls, SecondaryControls,
};
use x86::vmx::vmcs::{control, guest, host, ro};

use microhv_core::policy::{PASSTHROUGH_MSRS, SYSCALL_MSRS as SWAPPED_MSRS};
use microhv_core::regs::{
    CR0_ET, CR0_PE, CR0_PG, DEFAULT_PAT, DR6_BS, EFER_LMA, EFER_LME, RFLAGS_FIXED, RFLAGS_IF,
    RFLAGS_RF, RFLAGS_TF,
};

/// Guest interruptibility state: blocking by NMI (with virtual NMIs, virtual-NMI blocking).
const INTR_BLOCK_NMI: u64 = 1 << 3;
/// PAUSE-loop exiting (SDM Vol. 3C, "VM-Execution Controls"): PAUSEs at most this many TSC
/// ticks apart are one loop (KVM's default).
const PLE_GAP: u64 = 128;
/// PAUSE-loop exiting: a loop longer than this many TSC ticks exits (KVM's default: a lock
/// spin is a few hundred ticks per PAUSE, and short waits end by themselves).
const PLE_WINDOW: u64 = 4096;
const DOMAINS: usize = MAX_DOMAINS as usize;

/// A vCPU's state that stays in the hardware across VM exits because no VMCS field holds it:
/// the syscall MSRs, DR0–DR3 and DR6, CR2 (its last page-fault address) and CR8. microhv never
/// uses any of them in root mode, so they are only swapped when another vCPU takes the CPU.
#[derive(Debug, Default, Clone, Copy)]
struct Owned {
    msrs: [u64; 5],
    debug: DebugRegs,
    cr2: u64,
    cr8: u64,
}

impl Owned {
    fn load(&self) {
        for (m, val) in SWAPPED_MSRS.iter().zip(self.msrs) {
            // SAFETY: these MSRs exist on every 64-bit CPU and microhv never uses them itself;
            // the values were read from the hardware (or are the reset value 0).
            unsafe { wrmsr(*m, val) };
        }
        self.debug.load();
        cpu::write_cr2(self.cr2);
        cpu::write_cr8(self.cr8);
    }

    fn save() -> Self {
        let mut msrs = [0; 5];
        for (m, val) in SWAPPED_MSRS.iter().zip(msrs.iter_mut()) {
            // SAFETY: as in `load`; reading has no side effects.
            *val = unsafe { rdmsr(*m) };
        }
        Self { msrs, debug: DebugRegs::save(), cr2: cpu::cr2(), cr8: cpu::cr8() }
    }
}

/// The hardware state of one vCPU.
pub struct VmxVcpu {
    vmcs: u64,
    launched: bool,
    domid: u32,
    vpid: u16,
    eptp: u64,
    fx: FxArea,
    /// Guest state no VMCS field holds, in memory while another vCPU has the hardware.
    owned: Owned,
    /// Who it is, for the CPUID exits `run` completes itself.
    caller: Caller,
    /// The CPU its VMCS is active on (VMPTRLD, no VMCLEAR since): one at most (SDM Vol. 3C,
    /// "Software Use of Virtual-Machine Control Structures").
    active: Option<usize>,
    /// The CPU it was last loaded on: its VMCS holds that CPU's host state, and that CPU's
    /// translations for it were flushed when it arrived. `None` after it was built or reset:
    /// the next load, wherever it is, flushes as after a move.
    cpu: Option<usize>,
    /// The flush generation of its domain that `cpu` last flushed it for.
    seen_gen: u64,
}

/// What entering a guest takes, fixed when the backend is built: one per CPU
/// ([`Vmx::runner`]), so CPUs enter guests concurrently. Nothing in it is per CPU — each vCPU's
/// VMCS carries the host state of the CPU it is loaded on ([`Vmx::load`]).
#[derive(Clone)]
pub struct VmxRunner {
    features: VmxFeatures,
    pin: u32,
    /// The VM-exit control "save VMX-preemption timer value" is on.
    save_timer: bool,
    cr0_mask: u64,
    cr4_mask: u64,
    /// Speculation barriers the CPU offers.
    spec: Mitigations,
}

/// What the VMX backend keeps for each CPU.
#[derive(Clone, Copy)]
struct PerCpu {
    /// The VMCS current on the CPU (0: none).
    current: u64,
    /// VPID of the vCPU whose [`Owned`] state is in the CPU's hardware (0: nobody's).
    owned_by: u16,
    /// Domain of the vCPU loaded last, for the branch-prediction barrier.
    last_domid: u32,
}

/// The VMX backend.
pub struct Vmx {
    /// The boot CPU's runner, which [`Vmx::run`] enters guests with; the rest of the backend
    /// reads the configuration in it too.
    boot: VmxRunner,
    msrs: VmxMsrs,
    proc1: u32,
    proc2: u32,
    exit_ctl: u32,
    entry_ctl: u32,
    /// I/O bitmaps A and B for dom0.
    io_dom0: (u64, u64),
    /// I/O bitmaps A and B for every other domain.
    io_domu: (u64, u64),
    msr_bitmap: u64,
    selectors: Selectors,
    /// The CPU the backend's calls run on ([`Vmx::set_cpu`]).
    cpu: usize,
    cpus: [PerCpu; MAX_CPUS],
    /// Per domain: bumped by every EPT flush the `mmu` asks for.
    flush_gen: [u64; DOMAINS],
}

fn frame_bytes(pa: u64) -> &'static mut [u8; 4096] {
    // SAFETY: only called on frames this backend allocated and owns exclusively, inside the
    // identity map; no other reference to them exists.
    unsafe { &mut *(pa as *mut [u8; 4096]) }
}

/// Enters VMX operation on this CPU with `vmxon`, a zeroed frame it keeps for good as its
/// VMXON region (SDM Vol. 3C, 24.7 and 24.11.5).
pub fn enter(features: &VmxFeatures, msrs: &VmxMsrs, vmxon: u64) -> Result<(), &'static str> {
    // SAFETY: CR4.VMXE and the fixed bits are what VMXON requires; setting them does not
    // disturb anything microhv relies on (they only add requirements satisfied here).
    unsafe {
        cpu::write_cr0((cpu::cr0() | msrs.cr0_fixed0) & msrs.cr0_fixed1);
        cpu::write_cr4((cpu::cr4() | msrs.cr4_fixed0) & msrs.cr4_fixed1);
    }
    frame_bytes(vmxon)[..4].copy_from_slice(&features.revision.to_le_bytes());
    // SAFETY: CR4.VMXE set, fixed bits honoured, the region is ours for good.
    unsafe { vmcs::vmxon(vmxon) }.map_err(|_| "VMXON failed")
}

/// Enters VMX operation on an application processor: its own feature check (VMX offered,
/// IA32_FEATURE_CONTROL) and `vmxon`, a zeroed frame set aside for it.
pub fn enter_ap(vmxon: u64) -> Result<(), &'static str> {
    let (features, msrs) = detect().map_err(|_| "no usable VMX on this CPU")?;
    enter(&features, &msrs, vmxon)
}

impl Vmx {
    /// Enters VMX operation and builds the structures all vCPUs share.
    pub fn new(
        features: VmxFeatures,
        msrs: VmxMsrs,
        selectors: Selectors,
        frames: &mut dyn FrameSource,
    ) -> Result<Self, &'static str> {
        // Virtual NMIs (the CPU tracks the guest's NMI blocking and its IRET) where offered:
        // without them microhv injects no NMI, as it could not tell when the handler ended.
        // NMI-window exiting needs them too, and must be allowed itself.
        let vnmi = PinbasedControls::VIRTUAL_NMIS.bits();
        let window = PrimaryControls::NMI_WINDOW_EXITING.bits();
        let offered =
            (msrs.pinbased >> 32) as u32 & vnmi != 0 && (msrs.procbased >> 32) as u32 & window != 0;
        let vnmi = if offered { vnmi } else { 0 };
        let pin = adjust_controls(
            (PinbasedControls::EXTERNAL_INTERRUPT_EXITING
                | PinbasedControls::NMI_EXITING
                | PinbasedControls::VMX_PREEMPTION_TIMER)
                .bits()
                | vnmi,
            msrs.pinbased,
        )
        .map_err(|_| "pin-based controls")?;
        if vnmi == 0 {
            log::warn!("VMX without virtual NMIs: guests get no NMIs");
        }
        let proc1 = adjust_controls(
            (PrimaryControls::HLT_EXITING
                | PrimaryControls::RDPMC_EXITING
                | PrimaryControls::MWAIT_EXITING
                | PrimaryControls::MONITOR_EXITING
                | PrimaryControls::USE_IO_BITMAPS
                | PrimaryControls::USE_MSR_BITMAPS
                | PrimaryControls::USE_TSC_OFFSETTING
                // CR8 is the virtual local APIC's TPR (no TPR shadow is used).
                | PrimaryControls::CR8_LOAD_EXITING
                | PrimaryControls::CR8_STORE_EXITING
                | PrimaryControls::SECONDARY_CONTROLS)
                .bits(),
            msrs.procbased,
        )
        .map_err(|_| "primary processor controls")?;
        // PAUSE-loop exiting where the CPU has it: a vCPU spinning on another gives the CPU to
        // it instead of waiting out its slice (`PLE_GAP`, `PLE_WINDOW`).
        let ple = SecondaryControls::PAUSE_LOOP_EXITING;
        let ple = if ple.bits() as u64 & (msrs.procbased2 >> 32) != 0 {
            ple
        } else {
            SecondaryControls::empty()
        };
        let proc2 = adjust_controls(
            (SecondaryControls::ENABLE_EPT
                | SecondaryControls::ENABLE_VPID
                | SecondaryControls::UNRESTRICTED_GUEST
                | ple)
                .bits(),
            msrs.procbased2,
        )
        .map_err(|_| "secondary processor controls")?;
        // Where the CPU can save the preemption timer at exits, the exits `run` completes itself
        // leave it counting on: the slice needs no recomputing for them.
        let save_timer = ExitControls::SAVE_VMX_PREEMPTION_TIMER;
        let save_timer = save_timer.bits() as u64 & (msrs.exit >> 32) != 0;
        let exit_ctl = adjust_controls(
            (if save_timer {
                ExitControls::SAVE_VMX_PREEMPTION_TIMER
            } else {
                ExitControls::empty()
            } | ExitControls::HOST_ADDRESS_SPACE_SIZE
                | ExitControls::ACK_INTERRUPT_ON_EXIT
                | ExitControls::SAVE_DEBUG_CONTROLS
                | ExitControls::SAVE_IA32_EFER
                | ExitControls::LOAD_IA32_EFER
                | ExitControls::SAVE_IA32_PAT
                | ExitControls::LOAD_IA32_PAT)
                .bits(),
            msrs.exit,
        )
        .map_err(|_| "VM-exit controls")?;
        let entry_ctl = adjust_controls(
            (EntryControls::LOAD_DEBUG_CONTROLS
                | EntryControls::LOAD_IA32_EFER
                | EntryControls::LOAD_IA32_PAT)
                .bits(),
            msrs.entry,
        )
        .map_err(|_| "VM-entry controls")?;

        // Host-owned CR bits: what the hardware forces (except PE/PG, free with unrestricted
        // guest) and the CR4 features guests are not offered.
        let cr0_forced = (msrs.cr0_fixed0 & !(CR0_PE | CR0_PG)) | !msrs.cr0_fixed1;
        let cr4_forced = msrs.cr4_fixed0 | !msrs.cr4_fixed1;
        let cr0_mask = cr0_forced & 0xffff_ffff;
        let cr4_mask = (cr4_forced | !GUEST_CR4_ALLOWED) & 0xffff_ffff_ffff;

        let vmxon = frames.alloc_zeroed().ok_or("no frame for the VMXON region")?;
        enter(&features, &msrs, vmxon)?;
        fpu::capture_host_fx();
        // External interrupts exit, acknowledged: only another CPU's kick is expected (the PICs
        // are masked and nothing else programs the APIC), but one that came would otherwise
        // stay pending and make every entry exit again at once. Its EOI needs the APIC.
        lapic::enable();

        let io_dom0 = Self::io_bitmap(frames, true)?;
        let io_domu = Self::io_bitmap(frames, false)?;
        let msr_bitmap = frames.alloc_zeroed().ok_or("no frame for the MSR bitmap")?;
        let bm = frame_bytes(msr_bitmap);
        bm.fill(0xff);
        for m in PASSTHROUGH_MSRS {
            let (base, idx) = if m >= 0xC000_0000 { (1024, m - 0xC000_0000) } else { (0, m) };
            clear_bit(&mut bm[base..base + 1024], idx as usize);
            clear_bit(&mut bm[base + 2048..base + 3072], idx as usize);
        }
        // TSC reads are harmless; writes still exit.
        clear_bit(&mut bm[..1024], msr::IA32_TIME_STAMP_COUNTER as usize);

        Ok(Self {
            boot: VmxRunner {
                features,
                pin,
                save_timer,
                cr0_mask,
                cr4_mask,
                spec: Mitigations::detect(),
            },
            msrs,
            proc1,
            proc2,
            exit_ctl,
            entry_ctl,
            io_dom0,
            io_domu,
            msr_bitmap,
            selectors,
            cpu: 0,
            cpus: [PerCpu { current: 0, owned_by: 0, last_domid: NO_DOMAIN }; MAX_CPUS],
            flush_gen: [0; DOMAINS],
        })
    }

    /// Bitmaps A and B: every port traps, except dom0's own (`io::dom0_ports`).
    fn io_bitmap(frames: &mut dyn FrameSource, dom0: bool) -> Result<(u64, u64), &'static str> {
        let a = frames.alloc_zeroed().ok_or("no frame for an I/O bitmap")?;
        let b = frames.alloc_zeroed().ok_or("no frame for an I/O bitmap")?;
        // A covers ports 0-0x7FFF (dom0's among them), B the rest.
        microhv_core::io::io_bitmap(frame_bytes(a), dom0);
        frame_bytes(b).fill(0xff);
        Ok((a, b))
    }

    /// Makes `v`'s VMCS current on this CPU.
    // The check in line (every backend operation begins with it), the load out of line.
    #[inline(always)]
    fn make_current(&mut self, v: &mut VmxVcpu) {
        if self.cpus[self.cpu].current != v.vmcs {
            self.load_vmcs(v);
        }
    }

    /// VMPTRLD of `v`'s VMCS on this CPU.
    #[cold]
    fn load_vmcs(&mut self, v: &mut VmxVcpu) {
        if let Some(cpu) = v.active.filter(|&c| c != self.cpu) {
            log::error!("VMCS {:#x} loaded on cpu {} while active on cpu {cpu}", v.vmcs, self.cpu);
        }
        // SAFETY: `v.vmcs` was initialized by `create_vcpu` and is still owned by `v`.
        if unsafe { vmcs::load(v.vmcs) }.is_err() {
            log::error!("VMPTRLD {:#x} failed", v.vmcs);
        }
        self.cpus[self.cpu].current = v.vmcs;
        v.active = Some(self.cpu);
    }

    /// A flush of `v`'s translations was just executed on this CPU only: if `v` was last
    /// loaded on another, wherever it is loaded next must flush as after a move.
    fn flushed_here(&self, v: &mut VmxVcpu) {
        if v.cpu != Some(self.cpu) {
            v.cpu = None;
        }
    }

    fn write_cr0(&self, visible: u64) {
        let real = (visible | (self.msrs.cr0_fixed0 & !(CR0_PE | CR0_PG))) & self.msrs.cr0_fixed1;
        let was_paging = vmcs::read(guest::CR0) & CR0_PG != 0;
        vmcs::write(guest::CR0, real);
        vmcs::write(control::CR0_READ_SHADOW, visible);
        // A CR0 write microhv completes on the guest's behalf does not get the CPU's long-mode
        // transition: turning paging on with EFER.LME activates IA-32e mode (EFER.LMA and the
        // entry control), turning it off leaves it.
        let paging = visible & CR0_PG != 0;
        if paging != was_paging {
            let efer = vmcs::read(guest::IA32_EFER_FULL);
            let long = paging && efer & EFER_LME != 0;
            let efer = if long { efer | EFER_LMA } else { efer & !EFER_LMA };
            vmcs::write(guest::IA32_EFER_FULL, efer);
            let entry = vmcs::read(control::VMENTRY_CONTROLS);
            let ia32e = u64::from(EntryControls::IA32E_MODE_GUEST.bits());
            let entry = if long { entry | ia32e } else { entry & !ia32e };
            vmcs::write(control::VMENTRY_CONTROLS, entry);
        }
    }

    fn write_cr4(&self, visible: u64) {
        let real = (visible | self.msrs.cr4_fixed0) & self.msrs.cr4_fixed1;
        vmcs::write(guest::CR4, real);
        vmcs::write(control::CR4_READ_SHADOW, visible);
    }

    fn setup_vmcs(&self, cfg: &VcpuConfig, vpid: u16) {
        use vmcs::write;
        write(control::PINBASED_EXEC_CONTROLS, self.boot.pin.into());
        write(control::PRIMARY_PROCBASED_EXEC_CONTROLS, self.proc1.into());
        write(control::SECONDARY_PROCBASED_EXEC_CONTROLS, self.proc2.into());
        if self.proc2 & SecondaryControls::PAUSE_LOOP_EXITING.bits() != 0 {
            write(control::PLE_GAP, PLE_GAP);
            write(control::PLE_WINDOW, PLE_WINDOW);
        }
        write(control::VMEXIT_CONTROLS, self.exit_ctl.into());
        write(control::VMENTRY_CONTROLS, self.entry_ctl.into());
        write(control::EXCEPTION_BITMAP, 0);
        write(control::TSC_OFFSET_FULL, 0);
        write(control::CR3_TARGET_COUNT, 0);
        write(control::CR0_GUEST_HOST_MASK, self.boot.cr0_mask);
        write(control::CR4_GUEST_HOST_MASK, self.boot.cr4_mask);
        let io = if cfg.privileged { self.io_dom0 } else { self.io_domu };
        write(control::IO_BITMAP_A_ADDR_FULL, io.0);
        write(control::IO_BITMAP_B_ADDR_FULL, io.1);
        write(control::MSR_BITMAPS_ADDR_FULL, self.msr_bitmap);
        write(control::VPID, vpid.into());
        write(control::EPTP_FULL, cfg.root);
        write(guest::LINK_PTR_FULL, u64::MAX);

        // Host state: what `vmx_run`'s caller runs with; the part that is the CPU's own is
        // written by `load` (`write_cpu_host_state`).
        let sel = &self.selectors;
        write(host::CS_SELECTOR, sel.code.0.into());
        for f in [host::SS_SELECTOR, host::DS_SELECTOR, host::ES_SELECTOR] {
            write(f, sel.data.0.into());
        }
        write(host::FS_SELECTOR, 0);
        write(host::GS_SELECTOR, 0);
        write(host::TR_SELECTOR, sel.tss.0.into());
        write(host::FS_BASE, 0);
        write(host::GS_BASE, 0);
        write(host::IA32_SYSENTER_CS, 0);
        write(host::IA32_SYSENTER_ESP, 0);
        write(host::IA32_SYSENTER_EIP, 0);
        write(host::RIP, core::ptr::addr_of!(microhv_vmx_exit) as u64);
    }

    /// The host state that is this CPU's own, into the current VMCS: its TSS and GDT, and the
    /// control registers and MSRs as this CPU runs with them (an AP's need not be the boot
    /// CPU's). The IDT is shared, but read here with the rest. (RSP is `vmx_run`'s.)
    fn write_cpu_host_state(&self) {
        use vmcs::write;
        use x86_64::instructions::tables::sidt;
        write(host::CR0, cpu::cr0());
        write(host::CR3, cpu::cr3());
        write(host::CR4, cpu::cr4());
        write(host::TR_BASE, gdt::tss_base(self.cpu));
        write(host::GDTR_BASE, gdt::gdt_base(self.cpu));
        write(host::IDTR_BASE, sidt().base.as_u64());
        // SAFETY: EFER and PAT exist on every CPU with VMX.
        let (efer, pat) = unsafe { (rdmsr(msr::IA32_EFER), rdmsr(msr::IA32_PAT)) };
        write(host::IA32_EFER_FULL, efer);
        write(host::IA32_PAT_FULL, pat);
    }

    /// The PVH / multiboot entry state: flat 32-bit protected mode, paging off.
    fn write_start_state(&self, init: &VcpuInit) {
        use vmcs::write;
        write(control::VMENTRY_CONTROLS, self.entry_ctl.into());
        write(guest::IA32_EFER_FULL, 0);
        write(guest::CR0, 0);
        // Real mode after a start-up IPI (unrestricted guest), else flat 32-bit (PVH).
        let real = init.startup.map(u64::from);
        self.write_cr0(if real.is_some() { CR0_ET } else { CR0_PE | CR0_ET });
        self.write_cr4(0);
        write(guest::CR3, 0);
        write(guest::DR7, 0x400);
        write(guest::RIP, init.rip);
        write(guest::RSP, init.rsp);
        write(guest::RFLAGS, RFLAGS_FIXED);
        // 32-bit code (accessed, readable), data (accessed, writable), both 4 GiB, DPL 0; an
        // unusable LDT and a busy 32-bit TSS (required by the entry checks). Each field of ES,
        // CS, SS, DS, FS, GS, LDTR and TR is encoded 2 after the previous segment's, in that
        // order (SDM Appendix B: the encodings' index).
        // In real mode: 64 KiB 16-bit segments, CS at the start page.
        let (code, data) = match real {
            None => ((0x08, 0xffff_ffff, 0xc09b), (0x10, 0xffff_ffff, 0xc093)),
            Some(page) => ((page << 8, 0xffff, 0x9b), (0, 0xffff, 0x93)),
        };
        let segs = [data, code, data, data, data, data, (0, 0, 1 << 16), (0, 0x67, 0x8b)];
        for (i, (selector, limit, access)) in segs.into_iter().enumerate() {
            let base = if i == 1 { real.map_or(0, |page| page << 12) } else { 0 };
            let i = 2 * i as u32;
            write(guest::ES_SELECTOR + i, selector);
            write(guest::ES_BASE + i, base);
            write(guest::ES_LIMIT + i, limit);
            write(guest::ES_ACCESS_RIGHTS + i, access);
        }
        write(guest::GDTR_BASE, 0);
        write(guest::GDTR_LIMIT, 0xffff);
        write(guest::IDTR_BASE, 0);
        write(guest::IDTR_LIMIT, 0xffff);
        write(guest::IA32_PAT_FULL, DEFAULT_PAT);
        write(guest::IA32_DEBUGCTL_FULL, 0);
        write(guest::IA32_SYSENTER_CS, 0);
        write(guest::IA32_SYSENTER_ESP, 0);
        write(guest::IA32_SYSENTER_EIP, 0);
        write(guest::ACTIVITY_STATE, 0);
        write(guest::INTERRUPTIBILITY_STATE, 0);
        write(guest::PENDING_DBG_EXCEPTIONS, 0);
        write(control::VMENTRY_INTERRUPTION_INFO_FIELD, 0);
    }
}

/// The guest entry and exit: the body of [`Vmx::run`] and of every CPU's runner.
impl VmxRunner {
    fn virtual_nmis(&self) -> bool {
        self.pin & PinbasedControls::VIRTUAL_NMIS.bits() != 0
    }

    /// CR0 as the guest sees it: the real register, with the read shadow's bits where
    /// microhv owns them.
    fn guest_cr0(&self) -> u64 {
        let (real, shadow) = (vmcs::read(guest::CR0), vmcs::read(control::CR0_READ_SHADOW));
        (real & !self.cr0_mask) | (shadow & self.cr0_mask)
    }

    /// CR4 as the guest sees it.
    fn guest_cr4(&self) -> u64 {
        let (real, shadow) = (vmcs::read(guest::CR4), vmcs::read(control::CR4_READ_SHADOW));
        (real & !self.cr4_mask) | (shadow & self.cr4_mask)
    }

    fn translate(&self, reason: u64, qual: u64, gprs: &Gprs, visible_cr0: u64) -> Exit {
        if reason & (1 << 31) != 0 {
            return Exit::EntryFailure;
        }
        match reason & 0xffff {
            0 => {
                let info = vmcs::read(ro::VMEXIT_INTERRUPTION_INFO);
                // Type 2: NMI. No exception is intercepted, so anything else is unexpected.
                if (info >> 8) & 7 == 2 {
                    log::warn!("NMI while a guest ran; absorbed");
                    Exit::Interrupt
                } else {
                    Exit::Unhandled
                }
            }
            1 => {
                // Acknowledged on exit: the APIC has it in service until the EOI. Expected: a
                // kick (another CPU wants this one back), and the APIC timer of an idle halt
                // that woke on a kick first (`lapic::halt_until` stops it, but one that fired
                // meanwhile stays pending).
                let vector = vmcs::read(ro::VMEXIT_INTERRUPTION_INFO) & 0xff;
                if vector != u64::from(lapic::SPURIOUS_VECTOR) {
                    lapic::eoi();
                }
                if vector != u64::from(lapic::KICK_VECTOR)
                    && vector != u64::from(lapic::TIMER_VECTOR)
                {
                    log::warn!("unexpected external interrupt, vector {vector:#x}, in a guest");
                }
                Exit::Interrupt
            }
            2 => Exit::TripleFault,
            9 => Exit::TaskSwitch,
            10 => Exit::Cpuid,
            12 => Exit::Hlt,
            40 => Exit::Pause,
            13 => Exit::Invd,
            15 => Exit::Rdpmc,
            18 => Exit::Hypercall,
            19..=27 | 36 | 39 | 50 | 53 | 55 => Exit::InvalidOpcode,
            28 => Self::cr_access(qual, gprs, visible_cr0),
            30 => Exit::Io {
                port: (qual >> 16) as u16,
                size: (qual & 7) as u8 + 1,
                write: qual & (1 << 3) == 0,
                string: qual & (1 << 4) != 0,
                rep: qual & (1 << 5) != 0,
            },
            31 => Exit::RdMsr,
            32 => Exit::WrMsr,
            48 => {
                // An IRET that faulted after unblocking NMIs has not completed: the blocking
                // it lifted must hold again when it re-executes (SDM 28.2.3). Bit 12 means
                // that only when the exit did not cut off an event's delivery.
                if qual & (1 << 12) != 0
                    && self.virtual_nmis()
                    && vmcs::read(ro::IDT_VECTORING_INFO) & (1 << 31) == 0
                {
                    let intr = vmcs::read(guest::INTERRUPTIBILITY_STATE);
                    vmcs::write(guest::INTERRUPTIBILITY_STATE, intr | INTR_BLOCK_NMI);
                }
                Exit::NestedPageFault {
                    gpa: vmcs::read(ro::GUEST_PHYSICAL_ADDR_FULL),
                    access: Self::ept_access(qual),
                }
            }
            7 | 8 => Exit::InterruptWindow,
            52 => Exit::Timer,
            _ => Exit::Unhandled,
        }
    }

    /// What an EPT violation's qualification says the access was.
    fn ept_access(qual: u64) -> Access {
        Access {
            read: qual & 1 != 0,
            write: qual & 2 != 0,
            exec: qual & 4 != 0,
            present: qual & 0x38 != 0,
            // A linear address (bit 7) whose translation was not what was accessed (bit 8
            // clear): a paging-structure entry.
            walk: qual & (1 << 7) != 0 && qual & (1 << 8) == 0,
        }
    }

    /// An exit can interrupt the delivery of an event (an EPT violation on the guest's IDT or
    /// stack while it delivers #PF, say): the CPU then reports it in the IDT-vectoring fields,
    /// and unless it is injected again on the next entry the guest loses it. A handler that
    /// injects an event of its own afterwards replaces it.
    fn reinject_interrupted_event(&self) {
        let info = vmcs::read(ro::IDT_VECTORING_INFO);
        // Every exit clears the entry field's valid bit: nothing to undo when nothing was cut.
        if info & (1 << 31) == 0 {
            return;
        }
        // An NMI cut off in delivery left virtual-NMI blocking set, and injecting an NMI with
        // it set fails VM entry (SDM 26.3.1.5): the NMI it blocks is the one delivered again.
        if (info >> 8) & 7 == 2 && self.virtual_nmis() {
            let intr = vmcs::read(guest::INTERRUPTIBILITY_STATE);
            vmcs::write(guest::INTERRUPTIBILITY_STATE, intr & !INTR_BLOCK_NMI);
        }
        // Bit 12 is undefined in the vectoring field and reserved in the entry field.
        vmcs::write(control::VMENTRY_INTERRUPTION_INFO_FIELD, info & !(1 << 12));
        if info & (1 << 11) != 0 {
            vmcs::write(
                control::VMENTRY_EXCEPTION_ERR_CODE,
                vmcs::read(ro::IDT_VECTORING_ERR_CODE),
            );
        }
        // Software interrupts and exceptions are re-executed from their instruction.
        if matches!((info >> 8) & 7, 4..=6) {
            vmcs::write(control::VMENTRY_INSTRUCTION_LEN, vmcs::read(ro::VMEXIT_INSTRUCTION_LEN));
        }
    }

    /// The code segment's mode: real mode, or the CS.L / CS.D bits (L only counts with LMA).
    fn mode(cr0: u64) -> CpuMode {
        let ar = vmcs::read(guest::CS_ACCESS_RIGHTS);
        let lma = vmcs::read(guest::IA32_EFER_FULL) & EFER_LMA != 0;
        CpuMode::of(cr0 & CR0_PE != 0, lma && ar & (1 << 13) != 0, ar & (1 << 14) != 0)
    }

    /// Decodes a control-register access exit (only writes to host-owned bits exit).
    fn cr_access(qual: u64, gprs: &Gprs, visible_cr0: u64) -> Exit {
        let cr = (qual & 0xf) as u8;
        match (qual >> 4) & 3 {
            // MOV to CR: the source register; RSP as a source is read from the VMCS.
            0 => {
                let reg = ((qual >> 8) & 0xf) as u8;
                let value = gprs.get(reg).unwrap_or_else(|| vmcs::read(guest::RSP));
                Exit::CrWrite { cr, value }
            }
            // MOV from CR (only CR8 exits): the destination register.
            1 => Exit::CrRead { cr, gpr: ((qual >> 8) & 0xf) as u8 },
            // CLTS.
            2 => Exit::CrWrite { cr: 0, value: visible_cr0 & !(1 << 3) },
            // LMSW: loads CR0[3:0] but can never clear PE.
            3 => {
                let src = (qual >> 16) & 0xf;
                Exit::CrWrite { cr: 0, value: (visible_cr0 & !0xe) | src | (visible_cr0 & 1) }
            }
            _ => Exit::Unhandled,
        }
    }

    /// See `Runner::run`: `v` was made ready on this CPU by [`Vmx::load`].
    // In line, as when it was `Vmx::run`'s own body: the core's run loop keeps it there (its
    // cost figures were measured so), although it now has two callers.
    #[inline(always)]
    pub(super) fn run(
        &mut self,
        v: &mut VmxVcpu,
        gprs: &mut Gprs,
        slice: u64,
        faults: &mut dyn DemandFaults,
    ) -> ExitInfo {
        let start = cpu::rdtsc();
        let end = start.saturating_add(slice);
        let (mut completed, mut now) = ([0u32; 3], Some(start));
        // The exits `complete` finishes go straight back into the guest while the slice lasts.
        let (raw, qual) = loop {
            if let Some(now) = now {
                // The preemption timer counts in the guest only: it gets what is left of the
                // slice, rounded up (a slice never ends before its last tick).
                let left = end.saturating_sub(now) >> self.features.preemption_timer_rate;
                vmcs::write(guest::VMX_PREEMPTION_TIMER_VALUE, (left + 1).min(u32::MAX.into()));
            }
            self.spec.before_entry();
            // SAFETY: the VMCS is current and initialized; `gprs` and `fx` are this vCPU's.
            if unsafe { vmx_run(gprs, &mut v.fx, u64::from(v.launched)) } != 0 {
                // VMfail: report the VM-instruction error as an entry failure.
                break ((1 << 31) | vmcs::read(ro::VM_INSTRUCTION_ERROR), 0);
            }
            v.launched = true;
            let reason = vmcs::read(ro::EXIT_REASON);
            // The wall clock is looked at every 16th completed exit where the timer saves its
            // count (it missed only their root-mode time: a few thousand ticks at most), at
            // every one where it does not, and after a fault whose fix zeroed memory (up to a
            // 2 MiB page); past the slice's end the core decides.
            now = (!self.save_timer || completed.iter().sum::<u32>() % 16 == 15).then(cpu::rdtsc);
            let in_slice = now.is_none_or(|now| now < end);
            match in_slice.then(|| self.complete(v, reason, gprs, faults)).flatten() {
                Some((i, long)) => {
                    completed[i] += 1;
                    if long {
                        now = Some(cpu::rdtsc());
                    }
                }
                None => break (reason, vmcs::read(ro::EXIT_QUALIFICATION)),
            }
        };
        let ran = cpu::rdtsc().wrapping_sub(start);
        // Instruction exits (and the timer and window exits, which come between instructions)
        // cannot interrupt the delivery of an event: only the others need the IDT-vectoring
        // field looked at.
        if raw >> 31 == 0
            && !matches!(raw & 0xffff, 7 | 8 | 10 | 12 | 13 | 18 | 28 | 30..=32 | 40 | 52)
        {
            self.reinject_interrupted_event();
        }
        let cr0 = if raw & 0xffff == 28 { self.guest_cr0() } else { 0 };
        let exit = self.translate(raw, qual, gprs, cr0);
        let mut info = ExitInfo::fast(exit, raw, qual, ran);
        info.completed = completed;
        match exit {
            // The quick exits: their handlers need no guest state but the instruction's length
            // (and a hypercall's CPL, HLT's RFLAGS.IF); each VMREAD spared counts.
            Exit::Hypercall => {
                info.insn_len = vmcs::read(ro::VMEXIT_INSTRUCTION_LEN) as u8;
                info.cpl = ((vmcs::read(guest::SS_ACCESS_RIGHTS) >> 5) & 3) as u8;
            }
            Exit::Cpuid
            | Exit::RdMsr
            | Exit::WrMsr
            | Exit::Invd
            | Exit::Io { string: false, .. } => {
                info.insn_len = vmcs::read(ro::VMEXIT_INSTRUCTION_LEN) as u8;
            }
            Exit::Hlt => {
                info.insn_len = vmcs::read(ro::VMEXIT_INSTRUCTION_LEN) as u8;
                info.rflags = vmcs::read(guest::RFLAGS);
            }
            Exit::Timer | Exit::InterruptWindow | Exit::Interrupt | Exit::Pause => {}
            _ => {
                let cr0 = self.guest_cr0();
                info.rip = vmcs::read(guest::RIP);
                info.rsp = vmcs::read(guest::RSP);
                info.rflags = vmcs::read(guest::RFLAGS);
                info.cr0 = cr0;
                info.cr3 = vmcs::read(guest::CR3);
                info.cr4 = self.guest_cr4();
                info.efer = vmcs::read(guest::IA32_EFER_FULL);
                info.insn_len = vmcs::read(ro::VMEXIT_INSTRUCTION_LEN) as u8;
                info.cpl = ((vmcs::read(guest::SS_ACCESS_RIGHTS) >> 5) & 3) as u8;
                info.mode = Self::mode(cr0);
                info.cs_base = vmcs::read(guest::CS_BASE);
            }
        }
        info
    }

    /// Completes a VMCALL or CPUID exit in place when that is plain (`microhv_core::fast`): no
    /// single-step trap to deliver, no RF or STI / MOV SS shadow to end, no RIP wrap; or an
    /// EPT violation `faults` fixes, unless it cut off an event's delivery or an IRET's NMI
    /// unblocking (qualification bit 12), which the core must undo or re-inject. Which kind it
    /// was (`ExitInfo::completed`'s index) and whether it took long (a fix that zeroed
    /// memory), or `None`: the core's.
    // In line in the exit loop (both the boot CPU's `Vmx::run` and every runner expand it):
    // called out of line it cost 21 instructions per completed exit under Bochs.
    #[inline(always)]
    fn complete(
        &self,
        v: &VmxVcpu,
        reason: u64,
        gprs: &mut Gprs,
        faults: &mut dyn DemandFaults,
    ) -> Option<(usize, bool)> {
        let exit = match reason {
            18 => FastExit::Hypercall,
            10 => FastExit::Cpuid,
            48 => {
                let qual = vmcs::read(ro::EXIT_QUALIFICATION);
                if qual & (1 << 12) != 0 || vmcs::read(ro::IDT_VECTORING_INFO) & (1 << 31) != 0 {
                    return None;
                }
                let gpa = vmcs::read(ro::GUEST_PHYSICAL_ADDR_FULL);
                let access = mmu::Access::from_ept_qualification(qual);
                return faults.fix(gpa, access).map(|long| (FastExit::Fault.index(), long));
            }
            _ => return None,
        };
        let cpl = || ((vmcs::read(guest::SS_ACCESS_RIGHTS) >> 5) & 3) as u8;
        if !fast::accepts(exit, gprs, cpl) {
            return None;
        }
        let (rip, len) = (vmcs::read(guest::RIP), vmcs::read(ro::VMEXIT_INSTRUCTION_LEN));
        let plain = fast::plain_advance(rip, len)
            && vmcs::read(guest::RFLAGS) & (RFLAGS_TF | RFLAGS_RF) == 0
            && vmcs::read(guest::INTERRUPTIBILITY_STATE) & 3 == 0;
        if !plain {
            return None;
        }
        fast::apply(exit, gprs, &v.caller, cpu::cpuid);
        vmcs::write(guest::RIP, rip + len);
        Some((exit.index(), false))
    }
}

/// The operations of [`Backend`](microhv_core::exit::Backend) on VMX:
/// [`crate::arch::Arch`], the core's only backend, dispatches to them.
impl Vmx {
    /// See `Backend::set_cpu`.
    pub(super) fn set_cpu(&mut self, cpu: usize) {
        self.cpu = cpu;
    }

    /// See `Backend::runner`. A copy of the boot CPU's: a CPU's own host state is in the VMCSs
    /// loaded there, not in its runner.
    pub(super) fn runner(&self) -> VmxRunner {
        self.boot.clone()
    }

    /// See `Backend::load`.
    pub(super) fn load(&mut self, v: &mut VmxVcpu) {
        self.make_current(v);
        let cpu = self.cpu;
        let here = &mut self.cpus[cpu];
        if here.owned_by != v.vpid {
            v.owned.load();
            here.owned_by = v.vpid;
        }
        self.boot.spec.switch_domain(&mut here.last_domid, v.domid);
        let generation = self.flush_gen[v.domid as usize % DOMAINS];
        if v.cpu != Some(cpu) {
            self.arrive(v, generation);
        } else if v.seen_gen != generation {
            // Its domain's EPT was flushed on another CPU since.
            vmcs::invept_single(v.eptp);
            v.seen_gen = generation;
        }
    }

    /// `v`, current, is new here (built, reset, or last loaded elsewhere): this CPU's host
    /// state, and nothing this CPU may still cache for its VPID or EPTP from an earlier stay.
    // Cold: kept out of the path of a vCPU that runs again where it ran.
    #[cold]
    fn arrive(&mut self, v: &mut VmxVcpu, generation: u64) {
        self.write_cpu_host_state();
        vmcs::invvpid_single(v.vpid);
        vmcs::invept_single(v.eptp);
        (v.cpu, v.seen_gen) = (Some(self.cpu), generation);
    }

    /// See `Backend::create_vcpu`.
    pub(super) fn create_vcpu(
        &mut self,
        frames: &mut dyn FrameSource,
        cfg: &VcpuConfig,
        init: &VcpuInit,
    ) -> Result<VmxVcpu, BackendError> {
        let pa = frames.alloc_zeroed().ok_or(BackendError::NoMemory)?;
        frame_bytes(pa)[..4].copy_from_slice(&self.boot.features.revision.to_le_bytes());
        // SAFETY: a fresh frame with the revision identifier, owned by the new vCPU.
        if let Err(e) = unsafe { vmcs::clear_and_load(pa) } {
            frames.free(pa);
            return Err(BackendError::Hardware(e as u64));
        }
        self.cpus[self.cpu].current = pa;
        // VPIDs are derived from the slot, so a reused slot must not inherit stale entries: the
        // first load on each CPU flushes them (`cpu` is `None` until then).
        let vpid = (1 + cfg.domid * abi::hypercall::MAX_VCPUS_PER_DOMAIN + cfg.index) as u16;
        self.setup_vmcs(cfg, vpid);
        let mut v = VmxVcpu {
            vmcs: pa,
            launched: false,
            domid: cfg.domid,
            vpid,
            eptp: cfg.root,
            fx: FxArea::reset(),
            owned: Owned::default(),
            caller: cfg.caller(abi::cpuid::HYPERCALL_VMCALL),
            active: Some(self.cpu),
            cpu: None,
            seen_gen: 0,
        };
        self.reset_vcpu(&mut v, init);
        Ok(v)
    }

    /// See `Backend::reset_vcpu`.
    pub(super) fn reset_vcpu(&mut self, v: &mut VmxVcpu, init: &VcpuInit) {
        self.make_current(v);
        self.write_start_state(init);
        // New paging state: nothing the vCPU cached before may survive on any CPU (KVM flushes
        // at INIT): its next load flushes wherever it is.
        v.cpu = None;
        v.fx = FxArea::reset();
        v.owned = Owned::default();
        self.disown(v.vpid);
    }

    /// See `Backend::destroy_vcpu`.
    pub(super) fn destroy_vcpu(&mut self, frames: &mut dyn FrameSource, v: VmxVcpu) {
        if let Some(cpu) = v.active.filter(|&c| c != self.cpu) {
            log::error!("VMCS {:#x} freed on cpu {} while active on cpu {cpu}", v.vmcs, self.cpu);
        }
        // SAFETY: the VMCS belongs to `v`, which is being dropped; VMCLEAR makes the frame
        // ordinary memory again.
        if unsafe { vmcs::clear(v.vmcs) }.is_err() {
            log::error!("VMCLEAR {:#x} failed", v.vmcs);
        }
        self.disown(v.vpid);
        // A later VMCS in this frame must be loaded (VMPTRLD) before it is used.
        for c in self.cpus.iter_mut().filter(|c| c.current == v.vmcs) {
            c.current = 0;
        }
        frames.free(v.vmcs);
    }

    /// This CPU no longer holds the [`Owned`] state of the vCPU with `vpid`: its copy in memory
    /// (reset, or freed) is what counts, and a later vCPU with its VPID must load its own. No
    /// other CPU can hold it: a CPU saves it when it lets the vCPU go (`unload`), and the core
    /// resets or frees only vCPUs no other CPU holds. (A vCPU of a destroyed domain is freed by
    /// the CPU that ran it, while its slot may already hold a new vCPU running elsewhere, whose
    /// state that CPU's record is.)
    fn disown(&mut self, vpid: u16) {
        let here = &mut self.cpus[self.cpu];
        if here.owned_by == vpid {
            here.owned_by = 0;
        }
    }

    /// See `Backend::run`: loads `v` on this CPU and runs it with the boot CPU's runner.
    pub(super) fn run(
        &mut self,
        v: &mut VmxVcpu,
        gprs: &mut Gprs,
        slice: u64,
        faults: &mut dyn DemandFaults,
    ) -> ExitInfo {
        self.load(v);
        self.boot.run(v, gprs, slice, faults)
    }

    /// See `Backend::unload`.
    pub(super) fn unload(&mut self, v: &mut VmxVcpu) {
        let here = &mut self.cpus[self.cpu];
        if here.owned_by == v.vpid {
            v.owned = Owned::save();
            here.owned_by = 0;
        }
        match v.active {
            Some(cpu) if cpu == self.cpu => {
                // SAFETY: the VMCS belongs to `v` and is active on this CPU: VMCLEAR writes
                // its state back to memory, so that any CPU may load it next.
                if unsafe { vmcs::clear(v.vmcs) }.is_err() {
                    log::error!("VMCLEAR {:#x} failed", v.vmcs);
                }
                // VMCLEAR of the current VMCS leaves this CPU without one (SDM Vol. 3C, VMCLEAR).
                if here.current == v.vmcs {
                    here.current = 0;
                }
                (v.active, v.launched) = (None, false);
            }
            Some(cpu) => log::error!(
                "VMCS {:#x} unloaded on cpu {} but active on cpu {cpu}",
                v.vmcs,
                self.cpu
            ),
            None => {}
        }
    }

    /// See `Backend::read`.
    pub(super) fn read(&mut self, v: &mut VmxVcpu, reg: GuestReg) -> u64 {
        self.make_current(v);
        match reg {
            GuestReg::Rip => vmcs::read(guest::RIP),
            GuestReg::Rsp => vmcs::read(guest::RSP),
            GuestReg::Rflags => vmcs::read(guest::RFLAGS),
            GuestReg::Cr0 => self.boot.guest_cr0(),
            GuestReg::Cr4 => self.boot.guest_cr4(),
            GuestReg::Efer => vmcs::read(guest::IA32_EFER_FULL),
            GuestReg::FsBase => vmcs::read(guest::FS_BASE),
            GuestReg::GsBase => vmcs::read(guest::GS_BASE),
            GuestReg::Pdpte(i) => vmcs::read(guest::PDPTE0_FULL + 2 * u32::from(i & 3)),
            // Access rights: L is bit 13, D/B bit 14; the type is bits 3:0.
            GuestReg::CsLd => (vmcs::read(guest::CS_ACCESS_RIGHTS) >> 13) & 3,
            GuestReg::TrType => vmcs::read(guest::TR_ACCESS_RIGHTS) & 0xf,
            GuestReg::TscOffset => vmcs::read(control::TSC_OFFSET_FULL),
            // The bases of ES, CS, SS, DS, FS and GS are 2 apart, in `Seg`'s order.
            GuestReg::SegBase(s) => vmcs::read(guest::ES_BASE + 2 * s as u32),
        }
    }

    /// See `Backend::write`.
    pub(super) fn write(&mut self, v: &mut VmxVcpu, reg: GuestReg, value: u64) {
        self.make_current(v);
        match reg {
            GuestReg::Rip => vmcs::write(guest::RIP, value),
            GuestReg::Rsp => vmcs::write(guest::RSP, value),
            GuestReg::Rflags => vmcs::write(guest::RFLAGS, value | RFLAGS_FIXED),
            // MOV to CR0 / CR4 flushes the TLB entries the changed paging bits affect; a write
            // microhv completes for the guest must do the same for its VPID.
            GuestReg::Cr0 => {
                self.write_cr0(value);
                vmcs::invvpid_single(v.vpid);
                self.flushed_here(v);
            }
            GuestReg::Cr4 => {
                self.write_cr4(value);
                vmcs::invvpid_single(v.vpid);
                self.flushed_here(v);
            }
            GuestReg::Efer => {
                let lma = vmcs::read(guest::IA32_EFER_FULL) & EFER_LMA;
                vmcs::write(guest::IA32_EFER_FULL, (value & !EFER_LMA) | lma);
            }
            GuestReg::FsBase => vmcs::write(guest::FS_BASE, value),
            GuestReg::GsBase => vmcs::write(guest::GS_BASE, value),
            // With EPT the CPU enters PAE paging with these fields, not from memory.
            GuestReg::Pdpte(i) => vmcs::write(guest::PDPTE0_FULL + 2 * u32::from(i & 3), value),
            GuestReg::TscOffset => vmcs::write(control::TSC_OFFSET_FULL, value),
            GuestReg::CsLd | GuestReg::TrType | GuestReg::SegBase(_) => {}
        }
    }

    /// See `Backend::advance_rip`.
    pub(super) fn advance_rip(&mut self, v: &mut VmxVcpu, len: u8) -> bool {
        self.make_current(v);
        let rip = vmcs::read(guest::RIP);
        let mode = VmxRunner::mode(vmcs::read(guest::CR0));
        let Some(next) = mode.next_ip_checked(rip, len) else {
            return false;
        };
        vmcs::write(guest::RIP, next);
        // Skipping the instruction ends any STI / MOV SS interrupt shadow it began.
        let intr = vmcs::read(guest::INTERRUPTIBILITY_STATE);
        vmcs::write(guest::INTERRUPTIBILITY_STATE, intr & !3);
        // The CPU clears RF when an instruction completes. A single-stepping guest gets the #DB
        // trap the instruction would have raised: a pending single-step debug exception is
        // delivered right after VM entry.
        let rflags = vmcs::read(guest::RFLAGS);
        if rflags & RFLAGS_RF != 0 {
            vmcs::write(guest::RFLAGS, rflags & !RFLAGS_RF);
        }
        if rflags & RFLAGS_TF != 0 {
            let pending = vmcs::read(guest::PENDING_DBG_EXCEPTIONS);
            vmcs::write(guest::PENDING_DBG_EXCEPTIONS, pending | DR6_BS);
        }
        true
    }

    /// See `Backend::inject`.
    pub(super) fn inject(&mut self, v: &mut VmxVcpu, event: Event) {
        self.make_current(v);
        // No VMCS field holds CR2: it is the hardware's while this vCPU owns it.
        if let Event::PageFault { addr, .. } = event {
            if self.cpus[self.cpu].owned_by == v.vpid {
                cpu::write_cr2(addr);
            } else {
                v.owned.cr2 = addr;
            }
        }
        // PE is guest-owned with unrestricted guest: the real CR0 has it, the read shadow may
        // not.
        let (info, code) = event.encode(vmcs::read(guest::CR0) & CR0_PE != 0);
        vmcs::write(control::VMENTRY_INTERRUPTION_INFO_FIELD, info);
        vmcs::write(control::VMENTRY_EXCEPTION_ERR_CODE, code.into());
    }

    /// See `Backend::interruptible`.
    pub(super) fn interruptible(&mut self, v: &mut VmxVcpu, nmi: bool) -> bool {
        self.make_current(v);
        // NMIs wait out the STI shadow too: some CPUs refuse the entry otherwise (SDM 26.3.1.5).
        let (open, blocking) = if nmi {
            (self.boot.virtual_nmis(), 3 | INTR_BLOCK_NMI)
        } else {
            (vmcs::read(guest::RFLAGS) & RFLAGS_IF != 0, 3)
        };
        open && vmcs::read(guest::INTERRUPTIBILITY_STATE) & blocking == 0
            && vmcs::read(control::VMENTRY_INTERRUPTION_INFO_FIELD) & (1 << 31) == 0
    }

    /// See `Backend::inject_interrupt`.
    pub(super) fn inject_interrupt(&mut self, v: &mut VmxVcpu, vector: u8) {
        self.make_current(v);
        // Type 0: external interrupt.
        vmcs::write(control::VMENTRY_INTERRUPTION_INFO_FIELD, u64::from(vector) | (1 << 31));
    }

    /// See `Backend::set_interrupt_window`.
    pub(super) fn set_interrupt_window(&mut self, v: &mut VmxVcpu, on: bool, nmi: bool) {
        self.make_current(v);
        let bit = match nmi {
            // NMI-window exiting exists only with virtual NMIs. Under an STI shadow it is not
            // armed: whether that shadow holds the exit back is the CPU's choice (SDM 26.7.6),
            // and one that exits would exit again before the guest ever runs the instruction
            // that ends the shadow. The NMI is then delivered at the next exit.
            true if !self.boot.virtual_nmis() => return,
            true if on && vmcs::read(guest::INTERRUPTIBILITY_STATE) & 1 != 0 => return,
            true => u64::from(PrimaryControls::NMI_WINDOW_EXITING.bits()),
            false => u64::from(PrimaryControls::INTERRUPT_WINDOW_EXITING.bits()),
        };
        let ctl = vmcs::read(control::PRIMARY_PROCBASED_EXEC_CONTROLS);
        let new = if on { ctl | bit } else { ctl & !bit };
        if new != ctl {
            vmcs::write(control::PRIMARY_PROCBASED_EXEC_CONTROLS, new);
        }
    }

    /// See `Backend::set_root`.
    pub(super) fn set_root(&mut self, v: &mut VmxVcpu, root: u64) {
        self.make_current(v);
        vmcs::write(control::EPTP_FULL, root);
        v.eptp = root;
        vmcs::invept_single(root);
        self.flushed_here(v);
    }

    /// See `Backend::flush`: the flush the `mmu` owes is domain-wide, so every vCPU of the
    /// domain makes it up at its next load on a CPU where it has not been done (`flush_gen`).
    pub(super) fn flush(&mut self, v: &mut VmxVcpu) {
        let g = &mut self.flush_gen[v.domid as usize % DOMAINS];
        *g = g.wrapping_add(1);
        v.seen_gen = *g;
        vmcs::invept_single(v.eptp);
        self.flushed_here(v);
    }
}

const _: () = assert!(FRAME_SIZE == 4096);
