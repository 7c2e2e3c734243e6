//! The run loop: round-robin scheduling on this CPU and entry preparation.

use super::*;
use crate::domain::IoStage;
use abi::types::ExitReason;

/// A slice-timer exit this close to the slice's end ends it: the SVM slice timer (the host's
/// local APIC timer, calibrated at boot) may fire that much early, and running the vCPU again
/// for the rest would only cost exits.
const SLICE_SLACK: u64 = VCPU_SLICE / 256;
/// A woken vCPU's boost: it preempts the running vCPU once that one has had this much of its
/// slice, and runs for at most this long before the round-robin order resumes. A guest that
/// halts with a short timer to be woken again and again therefore gets at most half the CPU
/// against one that computes, never all of it (Xen bounds its BOOST with credits).
const BOOST_QUANTUM: u64 = VCPU_SLICE / 16;

/// One CPU's scheduler state.
pub(super) struct Sched {
    /// Last (domain, vCPU) run, where round-robin resumes.
    pub(super) cursor: (usize, usize),
    /// The cursor's vCPU is loaded on this CPU (its VMCS active here).
    pub(super) holds: bool,
    /// TSC when the current vCPU's slice began.
    pub(super) slice_start: u64,
    /// Length of the current slice: [`VCPU_SLICE`], or a boost's shorter quantum.
    pub(super) slice_len: u64,
    /// A halted vCPU an interrupt woke, to run next (see `woken`).
    pub(super) boost: Option<(usize, usize)>,
    /// The running slice is a boost's.
    pub(super) boosting: bool,
    /// The last vCPU picked in turn, where round-robin resumes after a boost.
    pub(super) in_turn: (usize, usize),
    /// The running vCPU asked to give up the CPU.
    pub(super) yielded: bool,
    /// A vCPU waiting for dom0 to serve its port access, with its slice (start, length): it
    /// resumes when dom0 is done (`ioreq.rs`).
    pub(super) detour: Option<((usize, usize), u64, u64)>,
}

impl Sched {
    pub(super) const fn new() -> Self {
        Self {
            cursor: (0, 0),
            holds: false,
            slice_start: 0,
            slice_len: VCPU_SLICE,
            boost: None,
            boosting: false,
            in_turn: (0, 0),
            yielded: false,
            detour: None,
        }
    }
}

/// A scheduling decision.
pub(crate) enum Next {
    /// Run vCPU `.1` of domain `.0` for at most `.2` TSC ticks.
    Run(usize, usize, u64),
    /// Nothing to run here now.
    Idle,
    /// The machine stops.
    Stop(Stop),
}

impl<B: Backend, P: PhysMem, const W: usize> Hv<B, P, W> {
    /// The first runnable (domain, vCPU) after `after`, round-robin, that `also` accepts.
    fn pick_where(
        &self,
        after: (usize, usize),
        now: u64,
        mine: bool,
        also: impl Fn(&Self, (usize, usize)) -> bool,
    ) -> Option<(usize, usize)> {
        let total = DOMAINS * VCPUS;
        let start = after.0 * VCPUS + after.1 + 1;
        (0..total).map(|k| (start + k) % total).map(|i| (i / VCPUS, i % VCPUS)).find(|&(d, v)| {
            (!mine || self.mine(usize::from(self.domains[d].vcpus[v].home)))
                && self.can_run((d, v), now)
                && also(self, (d, v))
        })
    }

    /// Whether a vCPU placed on CPU `home` is this CPU's to run: placed here, or on a CPU that
    /// runs no vCPUs (one that failed to come up, or any while only the boot CPU runs).
    #[inline]
    fn mine(&self, home: usize) -> bool {
        home == self.cpu || self.online & (1 << home) == 0
    }

    /// A halted vCPU an interrupt has made runnable (the first, round-robin from the cursor):
    /// it runs ahead of its turn, as Xen's credit scheduler boosts a vCPU that wakes, so that a
    /// guest waiting for its timer is not held up by a guest that computes (within the limits
    /// of [`BOOST_QUANTUM`]). A vCPU that was running when its interrupt came waits for its
    /// turn instead.
    fn woken(&self, now: u64) -> Option<(usize, usize)> {
        self.pick_where(self.sched[self.cpu].cursor, now, true, |hv, (d, v)| {
            hv.domains[d].vcpus[v].halted
        })
    }

    /// True if vCPU `v` of domain `d` may run at `now`.
    #[inline]
    pub(crate) fn can_run(&self, (d, v): (usize, usize), now: u64) -> bool {
        let dom = &self.domains[d];
        let vc = &dom.vcpus[v];
        dom.runnable()
            && vc.arch.is_some()
            && vc.init.is_none()
            && (!vc.reaps || self.orphans == 0)
            && vc.blocked_until <= now
            && vc.io.is_none_or(|w| w.stage == IoStage::Answered)
            && (!vc.halted
                || dom
                    .platform
                    .as_ref()
                    .is_some_and(|p| (vc.halted_if && p.pending(v).is_some()) || p.nmi_pending(v)))
    }

    /// Runs the device models whose deadline has come and recomputes the earliest one
    /// ([`Hv::timers_changed`] forces the recomputation).
    fn fire_timers(&mut self, now: u64) {
        let clock = Clock { now, tsc_khz: self.tsc_khz };
        let mut next = u64::MAX;
        for p in self.domains.iter_mut().filter_map(|dom| dom.platform.as_mut()) {
            if p.deadline <= now {
                p.update(&clock);
            }
            next = next.min(p.deadline);
        }
        self.wake_at = next;
    }

    /// Runs guests on this one CPU until the machine must stop: host tests, and the ring-0
    /// image on a machine of one CPU (with several, every CPU runs [`Hv::run_cpu`]).
    pub fn run(&mut self) -> Stop {
        loop {
            match self.next() {
                Next::Stop(stop) => return stop,
                Next::Idle => {
                    let _ = self.scrub_idle();
                    core::hint::spin_loop();
                }
                Next::Run(d, v, slice) => {
                    if let Some(stop) = self.run_one(d, v, slice) {
                        return stop;
                    }
                }
            }
        }
    }

    /// This CPU's scheduling decision.
    ///
    /// Scheduling is round-robin over the runnable vCPUs placed on this CPU (then, when none
    /// is, over any runnable vCPU no CPU runs, which moves to this one): a vCPU keeps the CPU
    /// until its slice ([`VCPU_SLICE`], enforced with the backend's preemption timer) is used,
    /// it yields or halts, or its domain stops; a vCPU alone starts a new slice.
    #[inline]
    pub(crate) fn next(&mut self) -> Next {
        loop {
            let now = self.now();
            if now >= self.wake_at {
                self.fire_timers(now);
                if self.sched[self.cpu].boost.is_none() {
                    let cursor = self.sched[self.cpu].cursor;
                    self.sched[self.cpu].boost = self.woken(now).filter(|&w| w != cursor);
                }
                self.nudge();
            }
            let s = &self.sched[self.cpu];
            let used = now.wrapping_sub(s.slice_start);
            let (cd, cv) = s.cursor;
            // (Still this CPU's: another may have taken it since.)
            let running = !s.yielded
                && self.mine(usize::from(self.domains[cd].vcpus[cv].home))
                && self.can_run(s.cursor, now);
            // A pending boost waits until the running vCPU has had its quantum.
            let boost = s.boost.filter(|_| !running || used >= BOOST_QUANTUM - SLICE_SLACK);
            let keep = running && boost.is_none() && used < s.slice_len - SLICE_SLACK;
            let (d, v) = if keep {
                s.cursor
            } else {
                // Buffered log output moves on at every scheduling decision (at least once a
                // slice), off the exit fast path.
                log::logger().flush();
                // A boost never follows a boost, and round-robin resumes after the vCPU last
                // picked in turn: vCPUs that wake each other and halt (IPIs, events) cannot
                // hand the CPU back and forth for ever while the others wait.
                // A detour to dom0 (`ioreq.rs`: it serves an I/O request the vCPU waits for) is
                // no boost of its own: it may follow one, and leaves the order as it was.
                let detour = s.detour.is_some();
                let boosting = s.boosting;
                let boosted = boost.filter(|&b| (detour || !boosting) && self.can_run(b, now));
                let s = &mut self.sched[self.cpu];
                s.boost = None;
                s.slice_len = if boosted.is_some() { BOOST_QUANTUM } else { VCPU_SLICE };
                // Back from a detour to dom0 (`ioreq.rs`): the vCPU that took it carries on with
                // what is left of its slice; once that is used, round-robin resumes after it (so
                // a guest that keeps dom0 busy cannot keep the CPU).
                let home = if boosted.is_none() { s.detour.take() } else { None };
                let mut after = if s.boosting { s.in_turn } else { s.cursor };
                if let Some((at, start, len)) = home {
                    if self.can_run(at, now) && now.wrapping_sub(start) < len - SLICE_SLACK {
                        self.switch_to(at, start, len);
                        continue;
                    }
                    after = at;
                }
                // The vCPU whose boost just ended goes last: it had its extra turn.
                let s = &self.sched[self.cpu];
                let ended = s.boosting.then_some(s.cursor);
                let next = boosted
                    .or_else(|| self.pick_where(after, now, true, |_, dv| Some(dv) != ended))
                    .or_else(|| self.pick_where(after, now, true, |_, _| true))
                    .or_else(|| self.pick_where(after, now, false, |_, _| true));
                let Some(next) = next else {
                    if !self.domains[DOMID_DOM0 as usize].exists() {
                        return Next::Stop(Stop::new(
                            StopStatus::Dom0Failed,
                            format_args!("dom0 is gone"),
                        ));
                    }
                    // Every vCPU is halted or runs elsewhere: wait for a device deadline or a
                    // kick to wake one.
                    return Next::Idle;
                };
                // dom0 polls rather than halts: its yield with nobody else to run is idle time.
                let s = &mut self.sched[self.cpu];
                if s.yielded && next == s.cursor {
                    let _ = self.scrub_idle();
                }
                let s = &mut self.sched[self.cpu];
                if !(detour && boosted.is_some()) {
                    s.boosting = boosted.is_some();
                    if !s.boosting {
                        s.in_turn = next;
                    }
                }
                let len = s.slice_len;
                self.switch_to(next, now, len);
                next
            };
            // Every slice is timed, even a vCPU's that runs alone: one exit per slice costs
            // less than asking, at every exit, whether anyone else could run (a scan of every
            // vCPU slot). Its slice then simply starts over (`pick` finds it again).
            let s = &self.sched[self.cpu];
            let used = now.wrapping_sub(s.slice_start);
            let mut slice = s.slice_len.saturating_sub(used).max(1);
            if s.boost.is_some() {
                slice = slice.min(BOOST_QUANTUM.saturating_sub(used).max(1));
            }
            // The next device deadline (of any domain) ends the slice, so that its interrupt is
            // delivered on time.
            let slice = match self.wake_at {
                u64::MAX => slice,
                at => slice.min(at.saturating_sub(now).max(1)),
            };
            return Next::Run(d, v, slice);
        }
    }

    /// Makes `at` the running vCPU, its slice begun at `start` and `len` long (a detour's vCPU
    /// gets back the slice it had); the vCPU that ran until now gives its hardware state up. A
    /// vCPU taken from another CPU's queue joins this one's.
    fn switch_to(&mut self, at: (usize, usize), start: u64, len: u64) {
        if at != self.sched[self.cpu].cursor {
            self.release_cursor();
        }
        self.domains[at.0].vcpus[at.1].home = self.cpu as u8;
        let s = &mut self.sched[self.cpu];
        (s.cursor, s.slice_start, s.slice_len, s.yielded) = (at, start, len, false);
    }

    /// This CPU lets go of the vCPU it ran last: its hardware state is saved and its VMCS
    /// cleared, so that any CPU may load it.
    pub(super) fn release_cursor(&mut self) {
        let s = &mut self.sched[self.cpu];
        if core::mem::take(&mut s.holds) {
            let (d, v) = s.cursor;
            if let Some(prev) = self.domains[d].vcpus[v].arch.as_mut() {
                self.backend.unload(prev);
            }
        }
    }

    /// Runs vCPU `v` of domain `d` once and handles its exit (one CPU: the hypervisor stays
    /// locked while the guest runs).
    pub(super) fn run_one(&mut self, d: usize, v: usize, slice: u64) -> Option<Stop> {
        self.sched[self.cpu].holds = true;
        if let Err(reason) = self.prepare_entry(d, v) {
            return self.crash(d, v, reason, None);
        }
        let dom = &mut self.domains[d];
        let vc = &mut dom.vcpus[v];
        // Picked while halted: an interrupt woke it (`can_run`).
        vc.halted = false;
        let arch = vc.arch.as_mut()?;
        let m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        let off = vc.nmi_window;
        let mut faults = crate::fast::Faults { mmu: &mut dom.mmu, m, vcpu: v, declined: None, off };
        let mut info = self.backend.run(arch, &mut vc.gprs, slice, &mut faults);
        info.mmu = faults.declined;
        self.after_run(d, v, &info)
    }

    /// Accounts for a run of vCPU `v` of domain `d` and handles its exit.
    #[inline]
    pub(super) fn after_run(&mut self, d: usize, v: usize, info: &ExitInfo) -> Option<Stop> {
        let dom = &mut self.domains[d];
        dom.counters.cpus |= 1 << self.cpu;
        dom.counters.cpu_time += info.ran_ticks;
        dom.counters.count_exit(info.exit.reason());
        if info.completed != [0; 3] {
            let [hypercalls, cpuids, faults] = info.completed.map(u64::from);
            dom.counters.hypercalls += hypercalls;
            dom.counters.exits[ExitReason::Hypercall as usize] += hypercalls;
            dom.counters.exits[ExitReason::Cpuid as usize] += cpuids;
            dom.counters.exits[ExitReason::NestedPageFault as usize] += faults;
        }
        self.handle_exit(d, v, info)
    }

    /// Loads a new MMU root if the old one was zapped, executes a flush the MMU owes, and
    /// delivers the vCPU's highest pending interrupt if the guest can take it now (otherwise,
    /// or if more are waiting, it asks to exit as soon as the guest can).
    pub(super) fn prepare_entry(&mut self, d: usize, v: usize) -> Result<(), CrashReason> {
        if self.domains[d].vcpus[v].io.is_some() {
            self.finish_io(d, v);
        }
        let mut m = Machine { frames: &mut self.frames, mem: &mut self.mem };
        let dom = &mut self.domains[d];
        let crate::domain::Vcpu { arch, irq_window, nmi_window, .. } = &mut dom.vcpus[v];
        let arch = arch.as_mut().ok_or(CrashReason::EntryFailure)?;
        if dom.mmu.needs_reload(v) {
            let root = dom.mmu.reload_root(&mut m, v).map_err(|e| {
                log::error!("d{d}v{v}: cannot load an MMU root: {e}");
                CrashReason::MmuFailure
            })?;
            self.backend.set_root(arch, root);
        }
        if dom.mmu.take_flush() {
            self.backend.flush(arch);
            dom.counters.tlb_flushes += 1;
        }
        if let Some(p) = dom.platform.as_mut() {
            // Nothing can have become deliverable since the last look, and no window is open:
            // nothing to do (the search costs a hypercall round trip about 100 instructions).
            let bit = 1u32 << (v % 32);
            if p.search & bit == 0 && !*irq_window && !*nmi_window {
                return Ok(());
            }
            p.search &= !bit;
            // An NMI goes first; an interrupt then waits for the next window.
            let mut window = false;
            if p.nmi_pending(v) {
                if self.backend.interruptible(arch, true) {
                    p.take_nmi(v);
                    self.backend.inject(arch, Event::Nmi);
                } else {
                    window = true;
                }
            }
            // Asked again at every entry while it is needed (rare): the backend may decline to
            // arm it for now (VMX under an STI shadow).
            if window || *nmi_window {
                *nmi_window = window;
                self.backend.set_interrupt_window(arch, window, true);
            }
            let mut window = false;
            if let Some(pending) = p.pending(v) {
                if self.backend.interruptible(arch, false) {
                    let vector = p.acknowledge(v, pending);
                    self.backend.inject_interrupt(arch, vector);
                    window = p.pending(v).is_some();
                } else {
                    window = true;
                }
            }
            if window != *irq_window {
                *irq_window = window;
                self.backend.set_interrupt_window(arch, window, false);
            }
        }
        Ok(())
    }
}
