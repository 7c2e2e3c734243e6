//! dom0's half of the device-model split (shared/design.md, "Placement"; `ABI.md`, `IoreqNext`):
//! the configuration devices of every domU created with `DOMCREATE_DEVICE_MODEL` — the RTC and
//! CMOS, fw_cfg, PCI configuration space with the reset control register, system control port
//! A and the keyboard controller (the ports of [`abi::platform::DM_PORTS`]) — as Xen's device
//! models serve a domain's ioreqs. microhv keeps what sits on the interrupt and time path.
//!
//! [`DeviceModels::serve`] takes each waiting request, answers it from the domain's [`Pc`]
//! (made at its first request, from `DomainGetInfo`; a new `IoReq::instance` in the same slot
//! gets a new one, so nothing of a destroyed domain reaches the next), and lets the RTCs catch
//! up with the time, driving their interrupt line with `IrqLevel` when it changes. A reset
//! through any of the devices shuts the domain down with reason reboot. dom0 calls it wherever
//! it waits ([`idle`]), so its latency is dom0's: microhv runs dom0 next when a request is
//! posted. An RTC interrupt is raised when dom0 next runs after it came due.

pub mod fwcfg;
pub mod kbc;
pub mod pci;
pub mod porta;
pub mod rtc;

use abi::Errno;
use abi::hypercall::{MAX_DOMAINS, ShutdownReason};
use abi::platform::{Clock, IrqSink, RTC_GSI};
use abi::types::{DomainInfo, IoReq};
use fwcfg::FwCfg;
use kbc::Kbc;
use pci::Pci;
use porta::PortA;
use rtc::Rtc;

/// The hypercalls the device models use (the real interface, or a fake in tests).
pub trait DmHypercalls {
    /// `IoreqNext`.
    fn ioreq_next(&self) -> Result<Option<IoReq>, Errno>;
    /// `IoreqComplete`.
    fn ioreq_complete(&self, req: &IoReq, value: u32) -> Result<(), Errno>;
    /// `IrqLevel`.
    fn irq_level(&self, domid: u32, instance: u32, gsi: u32, high: bool) -> Result<(), Errno>;
    /// `DomainGetInfo`.
    fn domain_info(&self, domid: u32) -> Result<DomainInfo, Errno>;
    /// `DomainShutdown`.
    fn domain_shutdown(&self, domid: u32, reason: ShutdownReason) -> Result<(), Errno>;
}

impl DmHypercalls for abi::guest::Hypervisor {
    fn ioreq_next(&self) -> Result<Option<IoReq>, Errno> {
        abi::guest::Hypervisor::ioreq_next(self)
    }
    fn ioreq_complete(&self, req: &IoReq, value: u32) -> Result<(), Errno> {
        abi::guest::Hypervisor::ioreq_complete(self, req, value)
    }
    fn irq_level(&self, domid: u32, instance: u32, gsi: u32, high: bool) -> Result<(), Errno> {
        abi::guest::Hypervisor::irq_level(self, domid, instance, gsi, high)
    }
    fn domain_info(&self, domid: u32) -> Result<DomainInfo, Errno> {
        abi::guest::Hypervisor::domain_info(self, domid)
    }
    fn domain_shutdown(&self, domid: u32, reason: ShutdownReason) -> Result<(), Errno> {
        abi::guest::Hypervisor::domain_shutdown(self, domid, reason, 0)
    }
}

/// The bits an access of `size` bytes covers.
fn mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

/// The RTC's interrupt line as last driven, and whether it changed since dom0 last told microhv.
#[derive(Debug, Clone, Copy, Default)]
struct Line {
    high: bool,
    changed: bool,
}

impl IrqSink for Line {
    fn set_level(&mut self, _gsi: u32, high: bool) {
        self.changed |= high != self.high;
        self.high = high;
    }
}

/// One domain's devices.
#[derive(Debug, Clone)]
pub struct Pc {
    instance: u32,
    rtc: Rtc,
    fwcfg: FwCfg,
    pci: Pci,
    kbc: Kbc,
    porta: PortA,
    line: Line,
}

impl Pc {
    /// The devices at power-on of domain instance `instance` with `ram` bytes and `vcpus`
    /// vCPUs, its RTC showing `unix_time` now.
    pub fn new(clock: &Clock, unix_time: u64, ram: u64, vcpus: usize, instance: u32) -> Self {
        let below = ram.min(0xc000_0000);
        Self {
            instance,
            rtc: Rtc::new(clock, unix_time, below, ram - below),
            fwcfg: FwCfg::new(ram, vcpus),
            pci: Pci::default(),
            kbc: Kbc::default(),
            porta: PortA,
            line: Line::default(),
        }
    }

    /// One IN (`write` false) or OUT of `size` bytes at `port`: what an IN reads (all ones
    /// where no device answers), and whether the access reset the machine.
    pub fn access(
        &mut self,
        clock: &Clock,
        port: u16,
        size: u8,
        write: bool,
        value: u32,
    ) -> (u32, bool) {
        let (rtc, line) = (&mut self.rtc, &mut self.line);
        match port {
            p if Rtc::claims(p) && write => rtc.write(clock, line, p, size, value),
            p if Rtc::claims(p) => return (rtc.read(clock, line, p, size), false),
            p if FwCfg::claims(p) && write => self.fwcfg.write(size, value),
            p if FwCfg::claims(p) => return (self.fwcfg.read(size), false),
            p if Pci::claims(p) && write => return (0, self.pci.write(p, size, value)),
            p if Pci::claims(p) => return (self.pci.read(p, size), false),
            p if Kbc::claims(p) && write => return (0, self.kbc.write(p, value)),
            p if Kbc::claims(p) => return (self.kbc.read(p, size), false),
            p if PortA::claims(p) && write => return (0, self.porta.write(value)),
            p if PortA::claims(p) => return (self.porta.read(size), false),
            _ if write => {}
            _ => return (mask(size), false),
        }
        (0, false)
    }

    /// Tells microhv the RTC line's level if it changed.
    fn sync_line(&mut self, hv: &impl DmHypercalls, domid: u32) -> Result<(), Errno> {
        if core::mem::take(&mut self.line.changed) {
            hv.irq_level(domid, self.instance, RTC_GSI, self.line.high)?;
        }
        Ok(())
    }
}

/// The devices of every domU dom0 serves, by domain id.
pub struct DeviceModels {
    pcs: [Option<Pc>; MAX_DOMAINS as usize],
    /// Seconds since 1970 at a TSC value, from the host's RTC.
    wall_clock: (u64, u64),
}

impl Default for DeviceModels {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceModels {
    /// No domain served yet; the time of day is 1970 until [`Self::set_wall_clock`].
    pub const fn new() -> Self {
        Self { pcs: [const { None }; MAX_DOMAINS as usize], wall_clock: (0, 0) }
    }

    /// The host's time of day: `unix` seconds since 1970 at TSC `tsc`. New domains' RTCs start
    /// from it.
    pub fn set_wall_clock(&mut self, unix: u64, tsc: u64) {
        self.wall_clock = (unix, tsc);
    }

    /// Answers every waiting request, then lets each RTC catch up with `clock`. Returns how
    /// many requests were served.
    pub fn serve(&mut self, hv: &impl DmHypercalls, clock: &Clock) -> usize {
        let mut served = 0;
        while let Ok(Some(req)) = hv.ioreq_next() {
            served += 1;
            let (unix, at) = self.wall_clock;
            let slot = match self.pcs.get_mut(req.domid as usize) {
                Some(slot) if slot.as_ref().is_some_and(|pc| pc.instance == req.instance) => slot,
                Some(slot) => match hv.domain_info(req.domid) {
                    Ok(info) => {
                        let now = unix + clock.now.saturating_sub(at) / clock.tsc_khz.max(1) / 1000;
                        let vcpus = info.vcpus as usize;
                        *slot = Some(Pc::new(clock, now, info.mem_bytes, vcpus, req.instance));
                        slot
                    }
                    // Gone meanwhile: it no longer needs an answer.
                    Err(_) => continue,
                },
                // Not a domain id: answer as absent hardware would.
                None => {
                    let _ = hv.ioreq_complete(&req, mask(req.size));
                    continue;
                }
            };
            let Some(pc) = slot.as_mut() else { continue };
            let (value, reset) = pc.access(clock, req.port, req.size, req.write != 0, req.value);
            // A reset ends the domain: its vCPU never needs the answer.
            let _ = if reset {
                hv.domain_shutdown(req.domid, ShutdownReason::Reboot)
            } else {
                hv.ioreq_complete(&req, value)
            };
            let _ = pc.sync_line(hv, req.domid);
        }
        for (domid, slot) in self.pcs.iter_mut().enumerate() {
            if let Some(pc) = slot {
                pc.rtc.update(clock, &mut pc.line);
                // A domain that is gone needs no devices.
                if pc.sync_line(hv, domid as u32) == Err(Errno::ESRCH) {
                    *slot = None;
                }
            }
        }
        served
    }
}

/// dom0's device models (dom0 has one vCPU, so the lock is never contended).
pub static MODELS: spin::Mutex<DeviceModels> = spin::Mutex::new(DeviceModels::new());

/// The TSC's rate, from microhv's timing leaf (read once: CPUID is an exit).
static TSC_KHZ: spin::Once<u64> = spin::Once::new();

/// The TSC's rate in kHz, from microhv's timing leaf (0 if it says nothing).
pub fn tsc_khz() -> u64 {
    *TSC_KHZ.call_once(|| core::arch::x86_64::__cpuid(abi::cpuid::LEAF_TIMING).eax.into())
}

/// The clock of dom0's device models: the TSC.
fn clock() -> Clock {
    // SAFETY: RDTSC has no side effects; microhv does not intercept it.
    Clock { now: unsafe { core::arch::x86_64::_rdtsc() }, tsc_khz: tsc_khz() }
}

/// Sets the device models' time of day from the host's RTC; false if it could not be read (the
/// domUs' clocks then start at 1970).
pub fn init_wall_clock() -> bool {
    let t = rtc::read_host();
    if let Some(t) = t {
        MODELS.lock().set_wall_clock(t, clock().now);
    }
    t.is_some()
}

/// Serves the domUs' waiting device accesses; true if there were any (dom0 should then give
/// up the CPU, so the domUs run on).
pub fn poll(hv: &abi::guest::Hypervisor) -> bool {
    MODELS.lock().serve(hv, &clock()) > 0
}

/// What dom0 does wherever it waits: serves the device models, then yields.
pub fn idle(hv: &abi::guest::Hypervisor) {
    poll(hv);
    let _ = hv.yield_now();
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::platform::{FW_CFG_DATA, FW_CFG_SELECTOR};
    use core::cell::RefCell;
    use std::vec::Vec;
    use zerocopy::FromZeros;

    /// microhv as dom0's device models see it: requests to hand out, and a record of the calls.
    #[derive(Default)]
    struct Fake {
        waiting: RefCell<Vec<IoReq>>,
        answers: RefCell<Vec<(u32, u32)>>,
        lines: RefCell<Vec<(u32, u32, bool)>>,
        resets: RefCell<Vec<u32>>,
        gone: Vec<u32>,
    }

    impl DmHypercalls for Fake {
        fn ioreq_next(&self) -> Result<Option<IoReq>, Errno> {
            let mut w = self.waiting.borrow_mut();
            Ok((!w.is_empty()).then(|| w.remove(0)))
        }
        fn ioreq_complete(&self, req: &IoReq, value: u32) -> Result<(), Errno> {
            self.answers.borrow_mut().push((req.token, value));
            Ok(())
        }
        fn irq_level(&self, domid: u32, _instance: u32, gsi: u32, high: bool) -> Result<(), Errno> {
            if self.gone.contains(&domid) {
                return Err(Errno::ESRCH);
            }
            self.lines.borrow_mut().push((domid, gsi, high));
            Ok(())
        }
        fn domain_info(&self, domid: u32) -> Result<DomainInfo, Errno> {
            let mut i = DomainInfo::new_zeroed();
            (i.domid, i.mem_bytes, i.vcpus) = (domid, 128 << 20, 2);
            Ok(i)
        }
        fn domain_shutdown(&self, domid: u32, reason: ShutdownReason) -> Result<(), Errno> {
            assert_eq!(reason, ShutdownReason::Reboot);
            self.resets.borrow_mut().push(domid);
            Ok(())
        }
    }

    fn req(domid: u32, instance: u32, token: u32, port: u16, size: u8, out: Option<u32>) -> IoReq {
        let (write, value) = out.map_or((0, 0), |v| (1, v));
        IoReq { domid, vcpu: 0, token, instance, port, size, write, value }
    }

    const KHZ: u64 = 1_000_000;
    fn at(ms: u64) -> Clock {
        Clock { now: ms * KHZ, tsc_khz: KHZ }
    }

    #[test]
    fn requests_are_answered_by_the_domains_devices() {
        let fake = Fake::default();
        let mut m = DeviceModels::new();
        fake.waiting.borrow_mut().extend([
            req(1, 7, 1, FW_CFG_SELECTOR, 2, Some(0x05)), // NB_CPUS
            req(1, 7, 2, FW_CFG_DATA, 1, None),
            req(1, 7, 3, 0xcf8, 4, Some(0x8000_0000)),
            req(1, 7, 4, 0xcfc, 4, None),
            req(1, 7, 5, 0x64, 1, None),
            req(1, 7, 6, 0x92, 1, None),
            req(1, 7, 7, 0x70, 1, Some(0x0d)),
            req(1, 7, 8, 0x71, 1, None),
        ]);
        assert_eq!(m.serve(&fake, &at(0)), 8);
        // The vCPU count, the host bridge's IDs, the KBC's status, port A, RTC register D.
        let want =
            [(1, 0), (2, 2), (3, 0), (4, 0x1237_8086), (5, 0x1c), (6, 0x02), (7, 0), (8, 0x80)];
        assert_eq!(*fake.answers.borrow(), want);
        assert!(fake.resets.borrow().is_empty());
    }

    #[test]
    fn resets_end_the_domain_instead_of_answering() {
        let fake = Fake::default();
        let mut m = DeviceModels::new();
        for (t, (port, v)) in [(0xcf9, 6), (0x92, 1), (0x64, 0xfe)].into_iter().enumerate() {
            fake.waiting.borrow_mut().push(req(2, 1, t as u32, port, 1, Some(v)));
        }
        m.serve(&fake, &at(0));
        assert_eq!(*fake.resets.borrow(), [2, 2, 2]);
        assert!(fake.answers.borrow().is_empty());
    }

    #[test]
    fn a_new_instance_gets_new_devices_and_gone_domains_are_dropped() {
        let fake = Fake { gone: std::vec![3], ..Fake::default() };
        let mut m = DeviceModels::new();
        m.set_wall_clock(1_700_000_000, 0);
        // Instance 1 writes CMOS byte 0x40; instance 2 in the same slot must not see it.
        fake.waiting.borrow_mut().extend([
            req(3, 1, 1, 0x70, 2, Some(0x5a40)),
            req(3, 1, 2, 0x70, 1, Some(0x40)),
            req(3, 1, 3, 0x71, 1, None),
            req(4, 2, 4, 0x70, 1, Some(0x40)),
            req(4, 2, 5, 0x71, 1, None),
        ]);
        m.serve(&fake, &at(0));
        let a: Vec<u32> = fake.answers.borrow().iter().map(|a| a.1).collect();
        assert_eq!((a[2], a[4]), (0x5a, 0));
        fake.waiting.borrow_mut().extend([req(4, 9, 6, 0x71, 1, None)]);
        m.serve(&fake, &at(0));
        // 1,700,000,000 is 22:13:20: the seconds, in BCD, as the index is back at 0.
        assert_eq!(fake.answers.borrow().last(), Some(&(6, 0x20)));
        // Domain 3 enables the update-ended interrupt; when it comes due dom0 raises its line,
        // but domain 3 is gone: its devices are dropped, domain 4's stay.
        fake.waiting.borrow_mut().extend([req(3, 1, 7, 0x70, 2, Some(0x120b))]);
        m.serve(&fake, &at(0));
        m.serve(&fake, &at(1_500));
        assert!(m.pcs[3].is_none() && m.pcs[4].is_some());
    }

    #[test]
    fn the_rtc_line_is_driven_when_it_changes() {
        let fake = Fake::default();
        let mut m = DeviceModels::new();
        // Update-ended interrupts on (B = 24-hour | UIE).
        fake.waiting.borrow_mut().push(req(5, 1, 1, 0x70, 2, Some(0x120b)));
        m.serve(&fake, &at(0));
        assert!(fake.lines.borrow().is_empty());
        m.serve(&fake, &at(600));
        m.serve(&fake, &at(1_600));
        assert_eq!(*fake.lines.borrow(), [(5, RTC_GSI, true)], "one update: high, once");
        // Reading C lowers it.
        fake.waiting
            .borrow_mut()
            .extend([req(5, 1, 2, 0x70, 1, Some(0x0c)), req(5, 1, 3, 0x71, 1, None)]);
        m.serve(&fake, &at(1_700));
        assert_eq!(fake.lines.borrow().last(), Some(&(5, RTC_GSI, false)));
        assert_eq!(fake.answers.borrow().last().map(|a| a.1 & 0x90), Some(0x90), "IRQF | UF");
    }
}
