//! vCPUs on every CPU. Each CPU runs [`Hv::run_cpu`]: it takes the hypervisor lock, makes its
//! scheduling decision (`run.rs`, its own run queue), loads the vCPU and prepares its entry,
//! takes the vCPU's hardware state and registers out of the domain table, releases the lock,
//! enters the guest through its own runner, and takes the lock again to put them back and
//! handle the exit. Guests run concurrently; exits are handled one at a time.
//!
//! The rules that keep that sound (the README's "SMP" section has the whole protocol):
//! - A vCPU is run by one CPU at a time: while it runs, its hardware state is that CPU's
//!   (`Vcpu::on`), and no other CPU can pick it (`can_run` wants `arch`).
//! - A vCPU's VMCS is active on at most one CPU: a CPU unloads the vCPU it leaves (switching,
//!   or idle) and every vCPU it touched without running it.
//! - A domain destroyed while one of its vCPUs runs elsewhere leaves that vCPU's hardware state
//!   to the CPU running it, which frees it when it comes back (it finds `on` changed).
//! - Second-level entries: `crate::smp`'s quiesce, from the `mmu`, before anything is freed.
//! - The runner's demand faults take the lock with `try_lock`: one that cannot have it goes
//!   back to this loop as an ordinary exit.

use super::run::Next;
use super::*;
use crate::exit::{DemandFaults, Runner};
use crate::smp;
use mmu::FaultOutcome;
use spin::mutex::SpinMutex;

/// The MMU lent to a runner: a demand fault is fixed in place if the lock is free.
struct Shared<'a, B: Backend, P: PhysMem, const W: usize> {
    hv: &'a SpinMutex<Hv<B, P, W>>,
    cpu: usize,
    d: usize,
    v: usize,
    /// The domain's `instance` when the run began: a fault of a domain destroyed since is not
    /// fixed.
    instance: u32,
    /// Decline every fault (as `fast::Faults::off`).
    off: bool,
    declined: Option<Result<FaultOutcome, mmu::Error>>,
}

impl<B: Backend, P: PhysMem, const W: usize> DemandFaults for Shared<'_, B, P, W> {
    fn fix(&mut self, gpa: u64, access: mmu::Access) -> Option<bool> {
        if self.off {
            return None;
        }
        let mut g = self.hv.try_lock()?;
        g.hold(self.cpu);
        let h = &mut *g;
        let dom = &mut h.domains[self.d];
        if dom.instance != self.instance || dom.vcpus[self.v].on != Some(self.cpu as u8) {
            return None;
        }
        let m = Machine { frames: &mut h.frames, mem: &mut h.mem };
        let mut f =
            crate::fast::Faults { mmu: &mut dom.mmu, m, vcpu: self.v, declined: None, off: false };
        let r = f.fix(gpa, access);
        self.declined = f.declined;
        r
    }

    #[cfg(not(loom))]
    fn kick_flag(&self) -> Option<&'static core::sync::atomic::AtomicBool> {
        Some(smp::presence().kick_flag(self.cpu))
    }
}

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    /// CPU `cpu` holds the lock: the calls that follow act for it.
    fn hold(&mut self, cpu: usize) {
        self.cpu = cpu;
        self.backend.set_cpu(cpu);
        smp::presence().hold(cpu);
    }

    /// Runs guests on CPU `cpu` (with its `runner`) until the machine must stop. A CPU with
    /// nothing to run scrubs free memory and calls `halt`, which waits for a kick or for the
    /// TSC ticks it is given (until the next device deadline: whichever CPU wakes first fires
    /// the device models and wakes others for the vCPUs that became runnable).
    pub fn run_cpu(hv: &SpinMutex<Self>, cpu: usize, mut runner: B::Runner, halt: fn(u64)) -> Stop {
        let mut g = Self::lock(hv, cpu);
        g.online |= 1 << cpu;
        loop {
            g.hold(cpu);
            if let Some(stop) = g.stopped.clone() {
                return stop;
            }
            let (d, v, slice) = match g.next() {
                Next::Stop(stop) => {
                    g.stopped = Some(stop.clone());
                    return stop;
                }
                Next::Idle => {
                    g.release_cursor();
                    // Memory left to scrub: a batch, and look again (the lock is released
                    // between batches).
                    if g.scrub_idle() != 0 {
                        drop(g);
                        g = Self::lock(hv, cpu);
                        continue;
                    }
                    // A delay, not the deadline: this CPU's TSC may differ a little from the
                    // one `now` was last read on.
                    let delay = match g.wake_at {
                        u64::MAX => u64::MAX,
                        at => at.saturating_sub(g.now()),
                    };
                    smp::presence().going_idle(cpu);
                    drop(g);
                    smp::presence().set_phase(cpu, smp::Phase::Halted);
                    halt(delay);
                    smp::presence().awake(cpu);
                    g = Self::lock(hv, cpu);
                    continue;
                }
                Next::Run(d, v, slice) => (d, v, slice),
            };
            let h = &mut *g;
            if let Some(a) = h.domains[d].vcpus[v].arch.as_mut() {
                h.backend.load(a);
            }
            h.sched[cpu].holds = true;
            if let Err(reason) = h.prepare_entry(d, v) {
                if let Some(stop) = h.crash(d, v, reason, None) {
                    h.stopped = Some(stop.clone());
                    return stop;
                }
                continue;
            }
            let instance = h.domains[d].instance;
            let vc = &mut h.domains[d].vcpus[v];
            // Picked while halted: an interrupt woke it (`can_run`).
            vc.halted = false;
            let Some(mut arch) = vc.arch.take() else { continue };
            let mut gprs = vc.gprs;
            vc.on = Some(cpu as u8);
            let off = vc.nmi_window;
            smp::presence().entering(cpu, d, h.now());
            drop(g);
            smp::presence().set_phase(cpu, smp::Phase::Running);

            let mut faults = Shared { hv, cpu, d, v, instance, off, declined: None };
            let mut info = runner.run(&mut arch, &mut gprs, slice, &mut faults);
            smp::presence().left(cpu);
            info.mmu = faults.declined;

            g = Self::lock(hv, cpu);
            g.hold(cpu);
            let h = &mut *g;
            let dom = &mut h.domains[d];
            if dom.instance != instance || dom.vcpus[v].on != Some(cpu as u8) {
                h.sched[cpu].holds = false;
                h.reap(arch);
                h.nudge();
                continue;
            }
            let vc = &mut dom.vcpus[v];
            (vc.arch, vc.gprs, vc.on) = (Some(arch), gprs, None);
            // An INIT or start-up IPI that came while it ran.
            h.startups(d);
            if let Some(stop) = h.after_run(d, v, &info) {
                h.stopped = Some(stop.clone());
                return stop;
            }
            h.nudge();
        }
    }

    /// Frees the hardware state of a vCPU whose domain was destroyed while this CPU ran it:
    /// all that is left of it, with its VMCS active here. The last one lets the vCPUs that
    /// destroyed such domains run again.
    pub(crate) fn reap(&mut self, mut arch: B::Vcpu) {
        self.backend.unload(&mut arch);
        let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        self.backend.destroy_vcpu(&mut m, arch);
        debug_assert!(self.orphans > 0, "a reaped vCPU was not counted");
        self.orphans = self.orphans.saturating_sub(1);
        if self.orphans == 0 {
            for vc in self.domains.iter_mut().flat_map(|dom| dom.vcpus.iter_mut()) {
                vc.reaps = false;
            }
        }
    }

    /// The hypervisor lock, for CPU `cpu` (its phase recorded for reports).
    fn lock(hv: &SpinMutex<Self>, cpu: usize) -> spin::mutex::SpinMutexGuard<'_, Self> {
        smp::presence().set_phase(cpu, smp::Phase::Locking);
        let g = hv.lock();
        smp::presence().set_phase(cpu, smp::Phase::Locked);
        g
    }

    /// With several CPUs: kicks each CPU whose vCPU has an interrupt, an NMI or a start-up
    /// IPI to take or whose domain stopped running, so that it comes back to be prepared or
    /// descheduled; kicks the busy home CPU of a vCPU an interrupt woke, so that it boosts it
    /// (`run.rs`); and wakes an idle CPU if a runnable vCPU waits that nobody runs.
    pub(super) fn nudge(&mut self) {
        if self.cpus < 2 {
            return;
        }
        let now = self.now();
        let mine = self.sched[self.cpu].cursor;
        let mut waiting = false;
        for (d, dom) in self.domains.iter().enumerate().filter(|(_, dom)| dom.exists()) {
            let p = dom.platform.as_ref();
            for (v, vc) in dom.vcpus.iter().enumerate().take(dom.vcpu_count as usize) {
                let bit = 1u32 << (v % 32);
                let wants = |p: &Platform| {
                    p.search & bit != 0
                        && (p.pending(v).is_some()
                            || p.nmi_pending(v)
                            || p.lapics.get(v).is_some_and(|l| l.startup_pending()))
                };
                match vc.on {
                    Some(c) if !dom.runnable() || p.is_some_and(wants) => smp::kick(c.into()),
                    None if (d, v) != mine && self.can_run((d, v), now) => {
                        let home = usize::from(vc.home);
                        if vc.halted && home != self.cpu {
                            smp::kick(home);
                        }
                        waiting = true;
                    }
                    _ => {}
                }
            }
        }
        if waiting {
            smp::wake_one();
        }
    }
}
