//! The VMCB: field offsets (AMD APM vol. 2, appendix B, "Layout of VMCB"), typed access to one
//! VMCB frame, and the SVM instructions that take a VMCB or host-save-area address.
//!
//! Unlike a VMCS, a VMCB is ordinary memory: the CPU reads it at VMRUN and writes it at #VMEXIT,
//! and software reads and writes it in between. Offsets below are from the start of the 4 KiB
//! frame; the state-save area starts at 0x400.

/// Control area (APM table B-1).
pub mod control {
    /// u16 CR0–15 read intercepts, then u16 CR0–15 write intercepts.
    pub const INTERCEPT_CR: usize = 0x000;
    /// u32 exception intercepts, one bit per vector.
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    /// u32 intercept vector 3 (INTR … SHUTDOWN), see [`super::misc1`].
    pub const INTERCEPT_MISC1: usize = 0x00c;
    /// u32 intercept vector 4 (VMRUN … RDPRU), see [`super::misc2`].
    pub const INTERCEPT_MISC2: usize = 0x010;
    /// u32 intercept vector 5 (INVLPGB … TLBSYNC), see [`super::misc3`].
    pub const INTERCEPT_MISC3: usize = 0x014;
    /// u64 physical address of the I/O permission map.
    pub const IOPM_BASE_PA: usize = 0x040;
    /// u64 physical address of the MSR permission map.
    pub const MSRPM_BASE_PA: usize = 0x048;
    /// u64 TSC offset.
    pub const TSC_OFFSET: usize = 0x050;
    /// u16 cycles between two PAUSEs beyond which the pause filter's count starts afresh.
    pub const PAUSE_FILTER_THRESHOLD: usize = 0x03c;
    /// u16 PAUSEs the PAUSE intercept lets pass before it exits (with the pause filter).
    pub const PAUSE_FILTER_COUNT: usize = 0x03e;
    /// u32 guest ASID.
    pub const GUEST_ASID: usize = 0x058;
    /// u8 TLB_CONTROL, see [`super::tlb`].
    pub const TLB_CONTROL: usize = 0x05c;
    /// u32 virtual interrupt control: V_TPR, V_IRQ, …, V_INTR_MASKING (bit 24).
    pub const INT_CTL: usize = 0x060;
    /// u64 bit 0: the guest is in an interrupt shadow (STI / MOV SS).
    pub const INT_STATE: usize = 0x068;
    /// u64 exit code.
    pub const EXITCODE: usize = 0x070;
    /// u64 EXITINFO1.
    pub const EXITINFO1: usize = 0x078;
    /// u64 EXITINFO2.
    pub const EXITINFO2: usize = 0x080;
    /// u64 EXITINTINFO: an event whose delivery the exit interrupted (EVENTINJ format).
    pub const EXITINTINFO: usize = 0x088;
    /// u64 bit 0: nested paging enable.
    pub const NESTED_CTL: usize = 0x090;
    /// u64 EVENTINJ: vector 7:0, type 10:8, error code valid 11, valid 31, error code 63:32.
    pub const EVENTINJ: usize = 0x0a8;
    /// u64 nested-paging CR3 (nCR3).
    pub const N_CR3: usize = 0x0b0;
    /// u32 VMCB clean bits.
    pub const VMCB_CLEAN: usize = 0x0c0;
    /// u64 next sequential RIP (written on instruction intercepts with NRIP save).
    pub const NEXT_RIP: usize = 0x0c8;
}

/// State-save area (APM table B-2), from the start of the VMCB.
pub mod save {
    /// Segment registers, 16 bytes each: u16 selector, u16 attributes, u32 limit, u64 base.
    pub const ES: usize = 0x400;
    /// CS.
    pub const CS: usize = 0x410;
    /// SS.
    pub const SS: usize = 0x420;
    /// DS.
    pub const DS: usize = 0x430;
    /// FS (VMLOAD / VMSAVE).
    pub const FS: usize = 0x440;
    /// GS (VMLOAD / VMSAVE).
    pub const GS: usize = 0x450;
    /// GDTR (limit and base only).
    pub const GDTR: usize = 0x460;
    /// LDTR (VMLOAD / VMSAVE).
    pub const LDTR: usize = 0x470;
    /// IDTR (limit and base only).
    pub const IDTR: usize = 0x480;
    /// TR (VMLOAD / VMSAVE).
    pub const TR: usize = 0x490;
    /// u8 CPL.
    pub const CPL: usize = 0x4cb;
    /// u64 EFER.
    pub const EFER: usize = 0x4d0;
    /// u64 CR4.
    pub const CR4: usize = 0x548;
    /// u64 CR3.
    pub const CR3: usize = 0x550;
    /// u64 CR0.
    pub const CR0: usize = 0x558;
    /// u64 DR7.
    pub const DR7: usize = 0x560;
    /// u64 DR6.
    pub const DR6: usize = 0x568;
    /// u64 RFLAGS.
    pub const RFLAGS: usize = 0x570;
    /// u64 RIP.
    pub const RIP: usize = 0x578;
    /// u64 RSP.
    pub const RSP: usize = 0x5d8;
    /// u64 RAX.
    pub const RAX: usize = 0x5f8;
    /// u64 STAR, then LSTAR, CSTAR, SFMASK, KernelGSBase, SYSENTER_CS/ESP/EIP (VMLOAD /
    /// VMSAVE).
    pub const STAR: usize = 0x600;
    /// u64 CR2.
    pub const CR2: usize = 0x640;
    /// u64 guest PAT, used by the guest's page walks when nested paging is on.
    pub const G_PAT: usize = 0x668;
}

/// Byte offsets inside a segment-register field.
pub mod seg {
    /// u16 selector.
    pub const SELECTOR: usize = 0;
    /// u16 attributes: descriptor bits 47:40 in 7:0, bits 55:52 in 11:8.
    pub const ATTRIB: usize = 2;
    /// u32 limit.
    pub const LIMIT: usize = 4;
    /// u64 base.
    pub const BASE: usize = 8;
    /// Attribute bit: 64-bit code segment (descriptor L).
    pub const ATTR_L: u16 = 1 << 9;
    /// Attribute bit: default operand size 32 (descriptor D/B).
    pub const ATTR_DB: u16 = 1 << 10;
}

/// Intercept vector 3 bits.
pub mod misc1 {
    /// Physical INTR.
    pub const INTR: u32 = 1 << 0;
    /// Physical NMI.
    pub const NMI: u32 = 1 << 1;
    /// INIT.
    pub const INIT: u32 = 1 << 3;
    /// Virtual interrupt (V_IRQ taken).
    pub const VINTR: u32 = 1 << 4;
    /// CPUID.
    pub const CPUID: u32 = 1 << 18;
    /// IRET (ends the NMI blocking microhv tracks).
    pub const IRET: u32 = 1 << 20;
    /// RDPMC.
    pub const RDPMC: u32 = 1 << 15;
    /// INVD.
    pub const INVD: u32 = 1 << 22;
    /// PAUSE (with the pause filter: after `PAUSE_FILTER_COUNT` of them).
    pub const PAUSE: u32 = 1 << 23;
    /// HLT.
    pub const HLT: u32 = 1 << 24;
    /// INVLPGA.
    pub const INVLPGA: u32 = 1 << 26;
    /// IN/OUT, filtered by the I/O permission map.
    pub const IOIO_PROT: u32 = 1 << 27;
    /// RDMSR/WRMSR, filtered by the MSR permission map.
    pub const MSR_PROT: u32 = 1 << 28;
    /// Task switches.
    pub const TASK_SWITCH: u32 = 1 << 29;
    /// Shutdown (triple fault).
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// Intercept vector 4 bits.
pub mod misc2 {
    /// VMRUN (VMRUN refuses a VMCB without it).
    pub const VMRUN: u32 = 1 << 0;
    /// VMMCALL.
    pub const VMMCALL: u32 = 1 << 1;
    /// VMLOAD.
    pub const VMLOAD: u32 = 1 << 2;
    /// VMSAVE.
    pub const VMSAVE: u32 = 1 << 3;
    /// STGI.
    pub const STGI: u32 = 1 << 4;
    /// CLGI.
    pub const CLGI: u32 = 1 << 5;
    /// SKINIT.
    pub const SKINIT: u32 = 1 << 6;
    /// RDTSCP.
    pub const RDTSCP: u32 = 1 << 7;
    /// MONITOR / MONITORX.
    pub const MONITOR: u32 = 1 << 10;
    /// MWAIT / MWAITX, unconditionally.
    pub const MWAIT: u32 = 1 << 11;
    /// MWAIT / MWAITX when a monitor is armed.
    pub const MWAIT_COND: u32 = 1 << 12;
    /// XSETBV.
    pub const XSETBV: u32 = 1 << 13;
    /// RDPRU.
    pub const RDPRU: u32 = 1 << 14;
}

/// Intercept vector 5 bits.
pub mod misc3 {
    /// INVPCID.
    pub const INVPCID: u32 = 1 << 2;
}

/// TLB_CONTROL values.
pub mod tlb {
    /// Flush nothing.
    pub const NOTHING: u8 = 0;
    /// Flush every ASID's entries (all CPUs with SVM).
    pub const FLUSH_ALL: u8 = 1;
    /// Flush this guest's ASID (CPUID FlushByAsid).
    pub const FLUSH_ASID: u8 = 3;
}

/// Exit codes (APM appendix C).
pub mod exit {
    /// MOV from CR8.
    pub const READ_CR8: u64 = 0x008;
    /// MOV to CR4.
    pub const WRITE_CR4: u64 = 0x014;
    /// MOV to CR8.
    pub const WRITE_CR8: u64 = 0x018;
    /// Physical INTR.
    pub const INTR: u64 = 0x060;
    /// Physical NMI.
    pub const NMI: u64 = 0x061;
    /// INIT.
    pub const INIT: u64 = 0x063;
    /// Virtual interrupt: the guest can take the V_IRQ.
    pub const VINTR: u64 = 0x064;
    /// CPUID.
    pub const CPUID: u64 = 0x072;
    /// IRET (before it executes).
    pub const IRET: u64 = 0x074;
    /// RDPMC.
    pub const RDPMC: u64 = 0x06f;
    /// INVD.
    pub const INVD: u64 = 0x076;
    /// PAUSE (after the pause filter's count).
    pub const PAUSE: u64 = 0x077;
    /// HLT.
    pub const HLT: u64 = 0x078;
    /// INVLPGA.
    pub const INVLPGA: u64 = 0x07a;
    /// IN / OUT / INS / OUTS.
    pub const IOIO: u64 = 0x07b;
    /// RDMSR (EXITINFO1 = 0) / WRMSR (EXITINFO1 = 1).
    pub const MSR: u64 = 0x07c;
    /// Task switch.
    pub const TASK_SWITCH: u64 = 0x07d;
    /// Shutdown.
    pub const SHUTDOWN: u64 = 0x07f;
    /// VMRUN.
    pub const VMRUN: u64 = 0x080;
    /// VMMCALL.
    pub const VMMCALL: u64 = 0x081;
    /// VMLOAD.
    pub const VMLOAD: u64 = 0x082;
    /// VMSAVE.
    pub const VMSAVE: u64 = 0x083;
    /// STGI.
    pub const STGI: u64 = 0x084;
    /// CLGI.
    pub const CLGI: u64 = 0x085;
    /// SKINIT.
    pub const SKINIT: u64 = 0x086;
    /// RDTSCP.
    pub const RDTSCP: u64 = 0x087;
    /// MONITOR.
    pub const MONITOR: u64 = 0x08a;
    /// MWAIT.
    pub const MWAIT: u64 = 0x08b;
    /// MWAIT with a monitor armed.
    pub const MWAIT_COND: u64 = 0x08c;
    /// XSETBV.
    pub const XSETBV: u64 = 0x08d;
    /// RDPRU.
    pub const RDPRU: u64 = 0x08e;
    /// INVPCID.
    pub const INVPCID: u64 = 0x0a2;
    /// Nested page fault: EXITINFO1 = error code, EXITINFO2 = guest-physical address.
    pub const NPF: u64 = 0x400;
    /// VMRUN found the VMCB's guest state or controls invalid.
    pub const INVALID: u64 = u64::MAX;
}

/// One VMCB frame, by its physical (identity-mapped) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vmcb(pub u64);

impl Vmcb {
    fn ptr<T>(self, off: usize) -> *mut T {
        debug_assert!(off + size_of::<T>() <= 4096 && off.is_multiple_of(size_of::<T>()));
        (self.0 + off as u64) as *mut T
    }

    /// Reads a u64 field.
    pub fn r64(self, off: usize) -> u64 {
        // SAFETY: the frame is a VMCB this backend allocated and owns, identity-mapped; `off`
        // is one of the aligned offsets above, inside the frame. The CPU only writes the VMCB
        // during VMRUN on the CPU that runs the vCPU, which is the only one touching its VMCB
        // (it holds the vCPU: `Vcpu::on`, or the lock), so never during this access.
        unsafe { self.ptr::<u64>(off).read_volatile() }
    }

    /// Writes a u64 field.
    pub fn w64(self, off: usize, v: u64) {
        // SAFETY: as in `r64`.
        unsafe { self.ptr::<u64>(off).write_volatile(v) }
    }

    /// Reads a u32 field.
    pub fn r32(self, off: usize) -> u32 {
        // SAFETY: as in `r64`.
        unsafe { self.ptr::<u32>(off).read_volatile() }
    }

    /// Writes a u32 field.
    pub fn w32(self, off: usize, v: u32) {
        // SAFETY: as in `r64`.
        unsafe { self.ptr::<u32>(off).write_volatile(v) }
    }

    /// Reads a u16 field.
    pub fn r16(self, off: usize) -> u16 {
        // SAFETY: as in `r64`.
        unsafe { self.ptr::<u16>(off).read_volatile() }
    }

    /// Writes a u16 field.
    pub fn w16(self, off: usize, v: u16) {
        // SAFETY: as in `r64`.
        unsafe { self.ptr::<u16>(off).write_volatile(v) }
    }

    /// Reads a u8 field.
    pub fn r8(self, off: usize) -> u8 {
        // SAFETY: as in `r64`.
        unsafe { self.ptr::<u8>(off).read_volatile() }
    }

    /// Writes a u8 field.
    pub fn w8(self, off: usize, v: u8) {
        // SAFETY: as in `r64`.
        unsafe { self.ptr::<u8>(off).write_volatile(v) }
    }

    /// Writes a whole segment-register field.
    pub fn set_segment(self, at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
        self.w16(at + seg::SELECTOR, selector);
        self.w16(at + seg::ATTRIB, attrib);
        self.w32(at + seg::LIMIT, limit);
        self.w64(at + seg::BASE, base);
    }
}

/// VMSAVE: stores FS, GS, TR, LDTR (with their hidden state), KernelGSBase, STAR, LSTAR, CSTAR,
/// SFMASK and SYSENTER_CS/ESP/EIP into the VMCB at `pa`.
///
/// # Safety
/// EFER.SVME is set and `pa` is a VMCB-format frame owned by the backend.
pub unsafe fn vmsave(pa: u64) {
    // SAFETY: forwarded to the caller; VMSAVE writes only the frame at `pa`.
    unsafe { core::arch::asm!("vmsave rax", in("rax") pa, options(nostack)) }
}
