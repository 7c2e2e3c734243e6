//! Guest-side hypercall wrappers.
//!
//! [`Hypervisor::detect`] finds microhv through CPUID and learns which instruction to use; the
//! typed wrappers then pass buffers by address. They assume the caller's virtual addresses are
//! its guest-physical addresses (true of every guest in this repository, which run
//! identity-mapped); other guests use [`Hypervisor::call`] with translated addresses.

pub use crate::arch::Insn;
use crate::cpuid;
use crate::hypercall::{Op, ShutdownReason};
use crate::types::{
    DomainCreate, DomainInfo, DomainStats, EvtchnShared, EvtchnStatus, GrantStatus, IoReq,
    PhysInfo, VcpuState,
};
use crate::{Errno, split_version_word};
use core::arch::x86_64::__cpuid;
use zerocopy::{FromZeros, IntoBytes};

/// Decodes a raw `rax` result: the value, or the error microhv returned.
pub fn decode_ret(ret: i64) -> Result<u64, Errno> {
    if ret >= 0 {
        Ok(ret as u64)
    } else {
        // An unknown negative value cannot come from microhv; report it as the generic EINVAL
        // rather than inventing a code.
        Err(Errno::from_code(ret.unsigned_abs() as i64).unwrap_or(Errno::EINVAL))
    }
}

/// Why [`Hypervisor::detect`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectError {
    /// CPUID leaf 1 does not report a hypervisor.
    NoHypervisor,
    /// A hypervisor is present but its signature is not microhv's.
    NotMicrohv([u8; 12]),
    /// microhv names a hypercall instruction this code does not know.
    UnknownInstruction(u32),
}

/// What the CPUID leaves say about microhv and the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hypervisor {
    /// The hypercall instruction.
    pub insn: Insn,
    /// ABI `(major, minor)` from CPUID.
    pub version: (u16, u16),
    /// The caller's domain id.
    pub domid: u32,
    /// The caller is dom0.
    pub privileged: bool,
}

impl Hypervisor {
    /// Reads microhv's CPUID leaves.
    pub fn detect() -> Result<Self, DetectError> {
        let l1 = __cpuid(1);
        if l1.ecx & (1 << 31) == 0 {
            return Err(DetectError::NoHypervisor);
        }
        let base = __cpuid(cpuid::LEAF_BASE);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&base.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&base.ecx.to_le_bytes());
        sig[8..].copy_from_slice(&base.edx.to_le_bytes());
        if sig != cpuid::SIGNATURE || base.eax < cpuid::LEAF_MAX {
            return Err(DetectError::NotMicrohv(sig));
        }
        let ver = __cpuid(cpuid::LEAF_VERSION);
        let hc = __cpuid(cpuid::LEAF_HYPERCALL);
        let insn = match hc.eax {
            cpuid::HYPERCALL_VMCALL => Insn::Vmcall,
            cpuid::HYPERCALL_VMMCALL => Insn::Vmmcall,
            other => return Err(DetectError::UnknownInstruction(other)),
        };
        Ok(Self {
            insn,
            version: split_version_word(ver.eax),
            domid: ver.ebx,
            privileged: ver.ecx & cpuid::FLAG_PRIVILEGED != 0,
        })
    }

    /// Issues a raw hypercall and returns `rax` as microhv left it.
    ///
    /// # Safety
    /// Addresses among `args` that the operation writes through must be guest-physical
    /// addresses of memory the caller owns, as long as the operation writes.
    pub unsafe fn call(&self, op: u64, args: [u64; 5]) -> i64 {
        // SAFETY: forwarded to the caller's contract.
        unsafe { crate::arch::hypercall(self.insn, op, args) }
    }

    fn op(&self, op: Op, args: [u64; 5]) -> Result<u64, Errno> {
        // SAFETY: the typed wrappers below only pass addresses of Rust objects they borrow
        // (mutably when the operation writes), and guests here are identity-mapped.
        decode_ret(unsafe { self.call(op as u64, args) })
    }

    /// `Version`: ABI `(major, minor)`.
    pub fn abi_version(&self) -> Result<(u16, u16), Errno> {
        self.op(Op::Version, [0; 5]).map(|w| split_version_word(w as u32))
    }

    /// `ConsoleWrite`: at most `CONSOLE_WRITE_MAX` bytes per call.
    pub fn console_write(&self, bytes: &[u8]) -> Result<u64, Errno> {
        self.op(Op::ConsoleWrite, [addr(bytes), bytes.len() as u64, 0, 0, 0])
    }

    /// `ConsoleInput`: bytes typed on `domid`'s console; returns how many it took.
    pub fn console_input(&self, domid: u32, bytes: &[u8]) -> Result<u64, Errno> {
        self.op(Op::ConsoleInput, [domid.into(), addr(bytes), bytes.len() as u64, 0, 0])
    }

    /// `Yield`.
    pub fn yield_now(&self) -> Result<(), Errno> {
        self.op(Op::Yield, [0; 5]).map(drop)
    }

    /// `Shutdown`: returns only if microhv refused.
    pub fn shutdown(&self, reason: ShutdownReason, status: u32) -> Errno {
        match self.op(Op::Shutdown, [reason as u64, u64::from(status), 0, 0, 0]) {
            Err(e) => e,
            // A shutdown that returns success is a microhv bug; report it as such.
            Ok(_) => Errno::EINVAL,
        }
    }

    /// `DomainCreate`: the new domain's id.
    pub fn domain_create(&self, create: &DomainCreate) -> Result<u32, Errno> {
        self.op(Op::DomainCreate, [addr(create.as_bytes()), 0, 0, 0, 0]).map(|d| d as u32)
    }

    /// `DomainDestroy`.
    pub fn domain_destroy(&self, domid: u32) -> Result<(), Errno> {
        self.op(Op::DomainDestroy, [domid.into(), 0, 0, 0, 0]).map(drop)
    }

    /// `DomainPause`.
    pub fn domain_pause(&self, domid: u32) -> Result<(), Errno> {
        self.op(Op::DomainPause, [domid.into(), 0, 0, 0, 0]).map(drop)
    }

    /// `DomainUnpause`.
    pub fn domain_unpause(&self, domid: u32) -> Result<(), Errno> {
        self.op(Op::DomainUnpause, [domid.into(), 0, 0, 0, 0]).map(drop)
    }

    /// `DomainShutdown`.
    pub fn domain_shutdown(
        &self,
        domid: u32,
        reason: ShutdownReason,
        status: u32,
    ) -> Result<(), Errno> {
        let args = [domid.into(), reason as u64, status.into(), 0, 0];
        self.op(Op::DomainShutdown, args).map(drop)
    }

    /// `DomainGetInfo`.
    pub fn domain_info(&self, domid: u32) -> Result<DomainInfo, Errno> {
        let mut info = DomainInfo::new_zeroed();
        let a = addr_mut(info.as_mut_bytes());
        self.op(Op::DomainGetInfo, [domid.into(), a, 0, 0, 0])?;
        Ok(info)
    }

    /// `DomainList`: fills `out` and returns how many domains exist.
    pub fn domain_list(&self, out: &mut [DomainInfo]) -> Result<u64, Errno> {
        let a = addr_mut(out.as_mut_bytes());
        self.op(Op::DomainList, [a, out.len() as u64, 0, 0, 0])
    }

    /// `MmuPagesSet`.
    pub fn mmu_pages_set(&self, domid: u32, pages: u64) -> Result<(), Errno> {
        self.op(Op::MmuPagesSet, [domid.into(), pages, 0, 0, 0]).map(drop)
    }

    /// `MmuPagesGet`: the cap in force.
    pub fn mmu_pages_get(&self, domid: u32) -> Result<u64, Errno> {
        self.op(Op::MmuPagesGet, [domid.into(), 0, 0, 0, 0])
    }

    /// `MemSet`.
    pub fn mem_set(&self, domid: u32, bytes: u64) -> Result<(), Errno> {
        self.op(Op::MemSet, [domid.into(), bytes, 0, 0, 0]).map(drop)
    }

    /// `MemWrite`: copies `src` to `dst_gpa` in the domain.
    pub fn mem_write(&self, domid: u32, dst_gpa: u64, src: &[u8]) -> Result<u64, Errno> {
        let args = [domid.into(), dst_gpa, addr(src), src.len() as u64, 0];
        self.op(Op::MemWrite, args)
    }

    /// `VcpuUp`: starts the caller's vCPU `vcpu` in `state`.
    pub fn vcpu_up(&self, vcpu: u32, state: &VcpuState) -> Result<(), Errno> {
        self.op(Op::VcpuUp, [vcpu.into(), addr(state.as_bytes()), 0, 0, 0]).map(drop)
    }

    /// `VcpuSetState`.
    pub fn vcpu_set_state(&self, domid: u32, vcpu: u32, state: &VcpuState) -> Result<(), Errno> {
        let args = [domid.into(), vcpu.into(), addr(state.as_bytes()), 0, 0];
        self.op(Op::VcpuSetState, args).map(drop)
    }

    /// `ConsoleRead`: bytes taken from the domain's console ring into `buf`.
    pub fn console_read(&self, domid: u32, buf: &mut [u8]) -> Result<u64, Errno> {
        let len = buf.len() as u64;
        self.op(Op::ConsoleRead, [domid.into(), addr_mut(buf), len, 0, 0])
    }

    /// `IoreqNext`: the next waiting access to a device dom0 serves, if any.
    pub fn ioreq_next(&self) -> Result<Option<IoReq>, Errno> {
        let mut req = IoReq::new_zeroed();
        let n = self.op(Op::IoreqNext, [addr_mut(req.as_mut_bytes()), 0, 0, 0, 0])?;
        Ok((n != 0).then_some(req))
    }

    /// `IoreqComplete`: answers `req` (`value` is what an IN reads; ignored for OUT).
    pub fn ioreq_complete(&self, req: &IoReq, value: u32) -> Result<(), Errno> {
        let args = [req.domid.into(), req.vcpu.into(), req.token.into(), value.into(), 0];
        self.op(Op::IoreqComplete, args).map(drop)
    }

    /// `IrqLevel`: drives line `gsi` of the virtual PC of `domid`, if `instance`
    /// (`IoReq::instance`) is still the domain there.
    pub fn irq_level(&self, domid: u32, instance: u32, gsi: u32, high: bool) -> Result<(), Errno> {
        let args = [domid.into(), instance.into(), gsi.into(), high.into(), 0];
        self.op(Op::IrqLevel, args).map(drop)
    }

    /// `EvtchnAllocUnbound`: a new port that `remote` may bind.
    pub fn evtchn_alloc_unbound(&self, remote: u32) -> Result<u32, Errno> {
        self.op(Op::EvtchnAllocUnbound, [remote.into(), 0, 0, 0, 0]).map(|p| p as u32)
    }

    /// `EvtchnBindInterdomain`: a new port bound to port `remote_port` that `remote` offered.
    pub fn evtchn_bind_interdomain(&self, remote: u32, remote_port: u32) -> Result<u32, Errno> {
        let args = [remote.into(), remote_port.into(), 0, 0, 0];
        self.op(Op::EvtchnBindInterdomain, args).map(|p| p as u32)
    }

    /// `EvtchnBindVirq`: a new port bound to a `VIRQ_*`.
    pub fn evtchn_bind_virq(&self, virq: u32) -> Result<u32, Errno> {
        self.op(Op::EvtchnBindVirq, [virq.into(), 0, 0, 0, 0]).map(|p| p as u32)
    }

    /// `EvtchnSend`.
    pub fn evtchn_send(&self, port: u32) -> Result<(), Errno> {
        self.op(Op::EvtchnSend, [port.into(), 0, 0, 0, 0]).map(drop)
    }

    /// `EvtchnClose`.
    pub fn evtchn_close(&self, port: u32) -> Result<(), Errno> {
        self.op(Op::EvtchnClose, [port.into(), 0, 0, 0, 0]).map(drop)
    }

    /// `EvtchnStatus`.
    pub fn evtchn_status(&self, port: u32) -> Result<EvtchnStatus, Errno> {
        let mut st = EvtchnStatus::new_zeroed();
        self.op(Op::EvtchnStatus, [port.into(), addr_mut(st.as_mut_bytes()), 0, 0, 0])?;
        Ok(st)
    }

    /// `EvtchnSetCallback`: registers `page` (the start of a page-aligned page of the caller's
    /// RAM, which microhv writes for as long as the domain lives) and the upcall `vector` (0:
    /// none, the guest polls the page).
    ///
    /// # Safety
    /// `page` must stay the caller's event-channel page, unused for anything else, from now on
    /// (microhv keeps writing pending bits into it).
    pub unsafe fn evtchn_set_callback(
        &self,
        vector: u8,
        page: *mut EvtchnShared,
    ) -> Result<(), Errno> {
        self.op(Op::EvtchnSetCallback, [vector.into(), page as u64, 0, 0, 0]).map(drop)
    }

    /// `GrantSet`: entry `gref` of the caller's grant table lets `peer` map or copy the page at
    /// `page_gpa` (`GRANT_READONLY` in `flags`: only read it).
    ///
    /// # Safety
    /// Unless the grant is read-only, the peer may write the page at any time until the grant
    /// is revoked: it must hold nothing the caller relies on being left alone.
    pub unsafe fn grant_set(
        &self,
        gref: u32,
        peer: u32,
        page_gpa: u64,
        flags: u64,
    ) -> Result<(), Errno> {
        self.op(Op::GrantSet, [gref.into(), peer.into(), page_gpa, flags, 0]).map(drop)
    }

    /// `GrantRevoke`.
    pub fn grant_revoke(&self, gref: u32) -> Result<(), Errno> {
        self.op(Op::GrantRevoke, [gref.into(), 0, 0, 0, 0]).map(drop)
    }

    /// `GrantMap`: maps grant `gref` of `granter` at `gpa` in the grant window (outside the
    /// caller's RAM, so no Rust object is touched).
    pub fn grant_map(&self, granter: u32, gref: u32, gpa: u64, flags: u64) -> Result<(), Errno> {
        self.op(Op::GrantMap, [granter.into(), gref.into(), gpa, flags, 0]).map(drop)
    }

    /// `GrantUnmap`.
    pub fn grant_unmap(&self, gpa: u64) -> Result<(), Errno> {
        self.op(Op::GrantUnmap, [gpa, 0, 0, 0, 0]).map(drop)
    }

    /// `GrantCopyFrom`: `dst.len()` bytes at `offset` of grant `gref` of `granter` into `dst`.
    pub fn grant_copy_from(
        &self,
        granter: u32,
        gref: u32,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<u64, Errno> {
        let args = [granter.into(), gref.into(), offset, addr_mut(dst), dst.len() as u64];
        self.op(Op::GrantCopyFrom, args)
    }

    /// `GrantCopyTo`: `src` to `offset` of grant `gref` of `granter`.
    pub fn grant_copy_to(
        &self,
        granter: u32,
        gref: u32,
        offset: u64,
        src: &[u8],
    ) -> Result<u64, Errno> {
        let args = [granter.into(), gref.into(), offset, addr(src), src.len() as u64];
        self.op(Op::GrantCopyTo, args)
    }

    /// `GrantQuery`: entry `gref` of the caller's grant table.
    pub fn grant_query(&self, gref: u32) -> Result<GrantStatus, Errno> {
        let mut st = GrantStatus::new_zeroed();
        self.op(Op::GrantQuery, [gref.into(), addr_mut(st.as_mut_bytes()), 0, 0, 0])?;
        Ok(st)
    }

    /// `PhysInfo`.
    pub fn phys_info(&self) -> Result<PhysInfo, Errno> {
        let mut info = PhysInfo::new_zeroed();
        self.op(Op::PhysInfo, [addr_mut(info.as_mut_bytes()), 0, 0, 0, 0])?;
        Ok(info)
    }

    /// `Stats`.
    pub fn stats(&self, domid: u32) -> Result<DomainStats, Errno> {
        let mut st = DomainStats::new_zeroed();
        self.op(Op::Stats, [domid.into(), addr_mut(st.as_mut_bytes()), 0, 0, 0])?;
        Ok(st)
    }
}

fn addr(b: &[u8]) -> u64 {
    b.as_ptr() as u64
}

fn addr_mut(b: &mut [u8]) -> u64 {
    b.as_mut_ptr() as u64
}
