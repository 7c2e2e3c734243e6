//! String port I/O: INS and OUTS, with and without REP (SDM vol. 2 INS / OUTS / REP), emulated
//! element by element. Not every CPU's exit reports the address size and segment, so the
//! instruction at RIP is decoded on both backends (`insn::decode`); the exit's port, size and
//! direction stay the hardware's, and a decoded instruction that disagrees stops the domain.

use super::*;
use crate::exit::is_canonical;
use crate::insn::{Seg, StrKind, StrRegs};
use crate::walk::{DataAccess, WalkError, translate};

/// Bytes one exit moves at most. A longer REP leaves RIP on the instruction with its registers
/// advanced, so it executes (and exits) again for the rest once any pending interrupt was
/// taken, as the CPU interrupts a REP between iterations.
pub const STRING_IO_CHUNK: u64 = 4096;

/// Why an element's memory operand cannot be reached.
enum Miss {
    /// The CPU would fault: the guest gets the event.
    Fault(Event),
    /// A guest-physical address outside the domain's RAM (where the CPU's own access would have
    /// stopped the domain).
    Outside,
}

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    /// Emulates the INS (`write` false) or OUTS at RIP that exited on `port`: at most
    /// [`STRING_IO_CHUNK`] bytes, updating rCX / rSI / rDI as the CPU does; RIP moves past it
    /// only once rCX (with REP) is exhausted. A fault on an element is injected with the
    /// elements before it done.
    pub(super) fn string_io(
        &mut self,
        d: usize,
        v: usize,
        port: u16,
        size: u8,
        write: bool,
        info: &ExitInfo,
    ) -> Option<Stop> {
        let (bytes, n) = self.fetch_insn(d, info);
        let kind = if write { StrKind::Outs } else { StrKind::Ins };
        // The bytes must still be the instruction the CPU executed (a guest can rewrite them).
        let decoded = insn::decode(&bytes[..n], info.mode).ok().and_then(|m| match m.op {
            MmioOp::String(s) if s.kind == kind && s.size == size => Some((s, m.len)),
            _ => None,
        });
        let Some((s, len)) = decoded else {
            log::warn!("d{d}v{v}: string I/O exit, but not {kind:?} at RIP: {:02x?}", &bytes[..n]);
            return self.crash(d, v, CrashReason::UnsupportedIo, Some(info));
        };
        let g = self.domains[d].vcpus[v].gprs;
        let df = info.rflags & regs::RFLAGS_DF != 0;
        let total = s.count(g.rcx);
        let chunk = total.min(STRING_IO_CHUNK / u64::from(size));
        // OUTS reads seg:rSI (DS unless overridden), INS writes ES:rDI.
        let (seg, index) = if write { (s.seg, g.rsi) } else { (Seg::Es, g.rdi) };
        let base = match (info.mode, seg) {
            (CpuMode::Bits64, Seg::Fs) => self.read_reg(d, v, GuestReg::FsBase),
            (CpuMode::Bits64, Seg::Gs) => self.read_reg(d, v, GuestReg::GsBase),
            (CpuMode::Bits64, _) => 0,
            _ => self.read_reg(d, v, GuestReg::SegBase(seg)),
        };
        let paging = Paging { cr0: info.cr0, cr3: info.cr3, cr4: info.cr4, efer: info.efer };
        let acc = DataAccess {
            write: !write,
            user: info.cpl == 3,
            ac: info.rflags & regs::RFLAGS_AC != 0,
        };
        // The last page translated (linear page number, guest-physical and host address): one
        // walk per page.
        let mut cache = (u64::MAX, 0, 0);
        let dom0s = self.dom0_serves(d, port, size);
        let (mut done, mut miss) = (0, None);
        while done < chunk {
            let at = base.wrapping_add(s.offset(index, df, done));
            let (mut hpa, mut gpa) = ([0u64; 4], [0u64; 4]);
            // Byte by byte: an element may straddle two pages.
            let r = (0..usize::from(size)).try_for_each(|i| {
                let b = at.wrapping_add(i as u64);
                (hpa[i], gpa[i]) = self.string_byte(d, b, info.mode, &paging, acc, &mut cache)?;
                Ok(())
            });
            if let Err(e) = r {
                miss = Some(e);
                break;
            }
            let mut buf = [0u8; 4];
            let hpa = &hpa[..usize::from(size)];
            if write {
                for (b, &h) in buf.iter_mut().zip(hpa) {
                    self.mem.read(h, core::slice::from_mut(b));
                }
            }
            if dom0s {
                // One element per request: the answer completes it (`ioreq.rs`), and the
                // instruction runs again for the next.
                let regs = s.advance(StrRegs { rcx: g.rcx, rsi: g.rsi, rdi: g.rdi }, df, 1);
                let len = if total == 1 { len } else { 0 };
                let then = IoThen::String { regs, len, dest: gpa };
                self.forward((d, v), port, (size, write, u32::from_le_bytes(buf)), then);
                return None;
            }
            let Some(val) = self.port_io(d, port, size, write, u32::from_le_bytes(buf)) else {
                return self.after_stop(d);
            };
            if !write {
                for (b, &h) in val.to_le_bytes().iter().zip(hpa) {
                    self.mem.write(h, core::slice::from_ref(b));
                }
            }
            done += 1;
        }
        let r = s.advance(StrRegs { rcx: g.rcx, rsi: g.rsi, rdi: g.rdi }, df, done);
        let gp = &mut self.domains[d].vcpus[v].gprs;
        (gp.rcx, gp.rsi, gp.rdi) = (r.rcx, r.rsi, r.rdi);
        match miss {
            Some(Miss::Fault(e)) => {
                self.inject(d, v, e);
                None
            }
            Some(Miss::Outside) => {
                log::warn!("d{d}v{v}: {kind:?} memory operand outside the domain's memory");
                self.crash(d, v, CrashReason::OutsideMemory, Some(info))
            }
            None if done == total => {
                self.skip(d, v, len);
                None
            }
            // RIP stays: the instruction runs again for the rest.
            None => None,
        }
    }

    /// Host- and guest-physical address of the byte at linear address `at` for access `a`;
    /// `cache` holds the last page translated.
    fn string_byte(
        &mut self,
        d: usize,
        at: u64,
        mode: CpuMode,
        p: &Paging,
        a: DataAccess,
        cache: &mut (u64, u64, u64),
    ) -> Result<(u64, u64), Miss> {
        // Outside 64-bit mode linear addresses wrap at 4 GiB; in it they must be canonical.
        let at = if mode == CpuMode::Bits64 { at } else { at & 0xffff_ffff };
        if !is_canonical(at) {
            return Err(Miss::Fault(Event::GeneralProtection));
        }
        if cache.0 != at >> 12 {
            let gpa =
                translate(p, at, a, |g, w| self.read_guest(d, g, w)).map_err(|e| match e {
                    WalkError::PageFault(code) => Miss::Fault(Event::PageFault { addr: at, code }),
                    WalkError::Unreadable => Miss::Outside,
                })?;
            let page = self.guest_range(d, gpa & !0xfff, FRAME_SIZE, a.write);
            *cache = (at >> 12, gpa & !0xfff, page.ok_or(Miss::Outside)?);
        }
        Ok((cache.2 | (at & 0xfff), cache.1 | (at & 0xfff)))
    }
}
