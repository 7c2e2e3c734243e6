//! What the CPUs tell each other outside the hypervisor lock (`hv/smp.rs` runs vCPUs on every
//! CPU): which CPU is in a guest of which domain, which CPU holds the lock, which are idle; and
//! the two ways one CPU acts on another: a kick (an IPI that ends its guest's run or its halt)
//! and a quiesce (every other CPU out of its guest before a second-level entry's old target is
//! freed or reused).
//!
//! The protocol (the README's "SMP" section):
//! - A CPU marks itself in a guest ([`Presence::entering`]) under the lock, before it releases it, and
//!   clears the mark ([`Presence::left`]) as soon as its runner returns, before it waits for the lock
//!   again. So while a CPU holds the lock, a CPU whose mark is clear cannot be in a guest, and
//!   cannot enter one before it has the lock in its turn.
//! - The `mmu` calls [`quiesce`] (through `mmu::Host::before_zap`) when it first removes or
//!   replaces a present entry since the domain's last flush: every marked CPU is kicked and
//!   waited for. Their next entry goes through `Hv::prepare_entry` under the lock, which takes
//!   the flush owed and has the backend flush that CPU (`Backend::flush`, `Backend::load`).
//! - A runner's own demand faults take the lock with `try_lock` only (`hv/smp.rs`), so a CPU
//!   being waited for never waits for the lock while its mark is set: no deadlock.

use crate::cpus::MAX_CPUS;
#[cfg(not(loom))]
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// What every CPU can see of the others without the hypervisor lock.
#[derive(Default)]
pub struct Presence {
    /// Per CPU: 0, or 1 + the domain whose vCPU it runs.
    in_guest: [AtomicU32; MAX_CPUS],
    /// The CPU holding the hypervisor lock: the one [`Presence::quiesce`] must not wait for.
    holder: AtomicUsize,
    /// CPUs halted until kicked, a bit each.
    idle: AtomicU32,
    /// Per CPU: a kick was sent since it last entered a guest (an SVM runner, which takes the
    /// kick's interrupt in its exit window, looks here before it re-enters).
    kicked: [AtomicBool; MAX_CPUS],
    /// Per CPU: the TSC when it last entered a guest (for reports).
    entered: [AtomicU64; MAX_CPUS],
    /// Per CPU: what it does (a [`Phase`], for reports).
    phase: [AtomicU8; MAX_CPUS],
    /// Quiesces that had to wait for at least one CPU, the kicks they sent, and the TSC ticks
    /// they waited in all (from a kick until its CPU was out of its guest): figures for the
    /// README.
    quiesces: AtomicU64,
    kicks: AtomicU64,
    waited: AtomicU64,
}

impl Presence {
    /// Nobody in a guest, nobody idle.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            in_guest: [const { AtomicU32::new(0) }; MAX_CPUS],
            holder: AtomicUsize::new(0),
            idle: AtomicU32::new(0),
            kicked: [const { AtomicBool::new(false) }; MAX_CPUS],
            entered: [const { AtomicU64::new(0) }; MAX_CPUS],
            phase: [const { AtomicU8::new(0) }; MAX_CPUS],
            quiesces: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            waited: AtomicU64::new(0),
        }
    }

    /// Nobody in a guest, nobody idle (loom's atomics are not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            in_guest: core::array::from_fn(|_| AtomicU32::new(0)),
            holder: AtomicUsize::new(0),
            idle: AtomicU32::new(0),
            kicked: core::array::from_fn(|_| AtomicBool::new(false)),
            entered: core::array::from_fn(|_| AtomicU64::new(0)),
            phase: core::array::from_fn(|_| AtomicU8::new(0)),
            quiesces: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            waited: AtomicU64::new(0),
        }
    }

    /// CPU `cpu` now holds the hypervisor lock.
    pub fn hold(&self, cpu: usize) {
        self.holder.store(cpu, Ordering::Relaxed);
    }

    /// CPU `cpu` is about to enter a vCPU of domain `d` (called under the lock).
    pub fn entering(&self, cpu: usize, d: usize, now: u64) {
        // A kick sent before this has its interrupt pending still, which ends the coming
        // entry at once.
        self.kicked[cpu].store(false, Ordering::Relaxed);
        self.entered[cpu].store(now, Ordering::Relaxed);
        self.in_guest[cpu].store(d as u32 + 1, Ordering::SeqCst);
    }

    /// CPU `cpu` now does `p`.
    pub fn set_phase(&self, cpu: usize, p: Phase) {
        self.phase[cpu].store(p as u8, Ordering::Relaxed);
    }

    /// What CPU `cpu` does (as a [`Phase`] number).
    pub fn phase(&self, cpu: usize) -> u8 {
        self.phase[cpu].load(Ordering::Relaxed)
    }

    /// Where CPU `cpu` is: `Some((domain, TSC when it entered))` while in a guest.
    pub fn in_guest(&self, cpu: usize) -> Option<(usize, u64)> {
        let mark = self.in_guest[cpu].load(Ordering::Acquire);
        (mark != 0).then(|| (mark as usize - 1, self.entered[cpu].load(Ordering::Relaxed)))
    }

    /// Records a kick of CPU `cpu` (before its IPI is sent).
    pub fn mark_kicked(&self, cpu: usize) {
        self.kicked[cpu].store(true, Ordering::SeqCst);
    }

    /// Whether CPU `cpu` was kicked since it last entered a guest.
    pub fn was_kicked(&self, cpu: usize) -> bool {
        self.kicked[cpu].load(Ordering::Acquire)
    }

    /// CPU `cpu`'s kick flag, for its runner to look at between exits.
    pub fn kick_flag(&self, cpu: usize) -> &AtomicBool {
        &self.kicked[cpu]
    }

    /// CPU `cpu`'s runner returned: it is out of the guest (called without the lock).
    pub fn left(&self, cpu: usize) {
        self.in_guest[cpu].store(0, Ordering::Release);
    }

    /// Brings every CPU but the lock holder out of its guest with `kick`, and waits until
    /// each is out (called under the lock). Until the lock is released no CPU can enter a
    /// guest again.
    pub fn quiesce(&self, kick: impl Fn(usize), now: impl Fn() -> u64) {
        self.quiesce_where(|_| true, kick, now);
    }

    /// [`Presence::quiesce`] for the CPUs in a guest of domain `d` only.
    pub fn quiesce_domain(&self, d: usize, kick: impl Fn(usize), now: impl Fn() -> u64) {
        self.quiesce_where(|g| g == d as u32 + 1, kick, now);
    }

    /// Kicks every CPU but the holder whose in-guest mark `which` accepts, all first, then
    /// waits until each is out (the wait is the slowest CPU's, not the sum); a kick that went
    /// unanswered is sent again now and then (an IPI the APIC could not send).
    fn quiesce_where(
        &self,
        which: impl Fn(u32) -> bool,
        kick: impl Fn(usize),
        now: impl Fn() -> u64,
    ) {
        let me = self.holder.load(Ordering::Relaxed);
        let mut marks = [0u32; MAX_CPUS];
        let mut start = None;
        for (c, (g, mark)) in self.in_guest.iter().zip(marks.iter_mut()).enumerate() {
            let m = g.load(Ordering::Acquire);
            if c == me || m == 0 || !which(m) {
                continue;
            }
            start = start.or_else(|| Some(now()));
            *mark = m;
            self.kicks.fetch_add(1, Ordering::Relaxed);
            self.mark_kicked(c);
            kick(c);
        }
        let Some(start) = start else { return };
        for (c, (g, &mark)) in self.in_guest.iter().zip(marks.iter()).enumerate() {
            let mut spins = 0u32;
            while mark != 0 && g.load(Ordering::Acquire) == mark {
                relax();
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(REKICK_SPINS) {
                    kick(c);
                }
            }
        }
        self.quiesces.fetch_add(1, Ordering::Relaxed);
        self.waited.fetch_add(now().wrapping_sub(start), Ordering::Relaxed);
    }

    /// CPU `cpu` is about to halt until kicked (called under the lock, so that whoever makes
    /// a vCPU runnable next sees it).
    pub fn going_idle(&self, cpu: usize) {
        self.idle.fetch_or(1 << cpu, Ordering::SeqCst);
    }

    /// CPU `cpu` is awake again.
    pub fn awake(&self, cpu: usize) {
        self.idle.fetch_and(!(1 << cpu), Ordering::SeqCst);
    }

    /// The lowest idle CPU, now marked awake, for the caller to kick.
    pub fn take_idle(&self) -> Option<usize> {
        let idle = self.idle.load(Ordering::SeqCst);
        (idle != 0).then(|| {
            let c = idle.trailing_zeros() as usize;
            self.awake(c);
            c
        })
    }

    /// (quiesces that waited, kicks they sent, TSC ticks they waited) so far.
    pub fn figures(&self) -> (u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (l(&self.quiesces), l(&self.kicks), l(&self.waited))
    }
}

/// Spins of a quiesce's wait between kicks of the same CPU.
const REKICK_SPINS: u32 = 1 << 20;

/// What a CPU does, for reports of a domain that did not make progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Not running vCPUs (yet).
    Off = 0,
    /// Waiting for the hypervisor lock.
    Locking = 1,
    /// Holding it.
    Locked = 2,
    /// Running a vCPU (its runner).
    Running = 3,
    /// Halted until kicked.
    Halted = 4,
}

#[cfg(not(loom))]
fn relax() {
    core::hint::spin_loop();
}

#[cfg(loom)]
fn relax() {
    loom::thread::yield_now();
}

/// The machine's CPUs.
#[cfg(not(loom))]
static PRESENCE: Presence = Presence::new();
/// How to kick a CPU (an IPI) and read the TSC.
struct Hooks {
    kick: fn(usize),
    now: fn() -> u64,
}

/// Installed by the ring-0 image; none in host tests.
static HOOKS: spin::Once<Hooks> = spin::Once::new();

/// The machine's [`Presence`].
#[cfg(not(loom))]
pub fn presence() -> &'static Presence {
    &PRESENCE
}

/// Under loom only [`Presence`] values made inside a model are used.
#[cfg(loom)]
pub fn presence() -> &'static Presence {
    unreachable!("loom models make their own Presence")
}

/// Installs the kick and the clock (the ring-0 image, once, before any AP runs vCPUs).
pub fn set_hooks(kick: fn(usize), now: fn() -> u64) {
    HOOKS.call_once(|| Hooks { kick, now });
}

/// Sends CPU `cpu` a kick: its guest exits, or its halt ends.
pub fn kick(cpu: usize) {
    if let Some(h) = HOOKS.get() {
        presence().mark_kicked(cpu);
        (h.kick)(cpu);
    }
}

/// [`Presence::quiesce_domain`] on the machine's CPUs.
pub fn quiesce_domain(d: usize) {
    presence().quiesce_domain(d, kick, || HOOKS.get().map_or(0, |h| (h.now)()));
}

/// [`Presence::quiesce`] on the machine's CPUs.
pub fn quiesce() {
    presence().quiesce(kick, || HOOKS.get().map_or(0, |h| (h.now)()));
}

/// Kicks one idle CPU, if any: a vCPU became runnable that no CPU runs.
pub fn wake_one() {
    if let Some(c) = presence().take_idle() {
        kick(c);
    }
}

/// Model checks of the cross-CPU protocols with loom (`cargo xtask test` runs them with
/// `RUSTFLAGS=--cfg loom`), every interleaving of two CPUs: one running a vCPU twice while the
/// other zaps the vCPU's only second-level entry and frees its frame under the lock; and a
/// domain destroyed while its vCPU runs on the other CPU.
#[cfg(all(test, loom))]
mod model {
    use super::Presence;
    use loom::sync::atomic::{AtomicBool, Ordering};
    use loom::sync::{Arc, Mutex};

    /// The two CPUs: `quiesce` says whether the zapping CPU quiesces (the protocol) or not (a
    /// broken one, which the model must catch).
    fn two_cpus(quiesce: bool) {
        loom::model(move || {
            let p = Arc::new(Presence::new());
            // Under the hypervisor lock: the domain's flush generation.
            let lock = Arc::new(Mutex::new(0u32));
            // The second-level entry (walked by the guest without the lock) and its frame.
            let present = Arc::new(AtomicBool::new(true));
            let freed = Arc::new(AtomicBool::new(false));
            let runner = {
                let (p, lock, present, freed) =
                    (p.clone(), lock.clone(), present.clone(), freed.clone());
                loom::thread::spawn(move || {
                    // CPU 1's cached translation (its TLB), and the generation it flushed at.
                    let (mut tlb, mut seen) = (false, 0);
                    for _ in 0..2 {
                        {
                            let flushes = lock.lock().unwrap();
                            p.hold(1);
                            // `Hv::prepare_entry` and `Backend::load`: a flush not yet seen.
                            if *flushes != seen {
                                (tlb, seen) = (false, *flushes);
                            }
                            p.entering(1, 0, 0);
                        }
                        // The guest: a walk fills the TLB, an access uses it.
                        tlb = tlb || present.load(Ordering::Acquire);
                        if tlb {
                            assert!(!freed.load(Ordering::Acquire), "a freed frame was used");
                        }
                        p.left(1);
                    }
                })
            };
            {
                let mut flushes = lock.lock().unwrap();
                p.hold(0);
                present.store(false, Ordering::Release);
                if quiesce {
                    // `mmu::Host::before_zap`; the kick only hurries the guest out.
                    p.quiesce(|_| {}, || 0);
                }
                freed.store(true, Ordering::Release);
                // The flush owed, taken by the next entry.
                *flushes += 1;
            }
            runner.join().unwrap();
        });
    }

    /// A domain destroyed while its vCPU runs on another CPU (`Hv::run_cpu`,
    /// `Hv::destroy_domain`, `Hv::reap`): the destroying CPU quiesces, frees the domain's
    /// memory, counts the vCPU it could not free (`Hv::orphans`) and clears its slot; the
    /// running CPU, back under the lock, finds the slot changed, frees the vCPU's hardware
    /// state itself and uncounts it; the destroyer's caller goes on only once the count is 0
    /// (`Vcpu::reaps`). The guest never touches freed memory, the hardware state is freed
    /// exactly once, by whichever CPU holds it, and it is freed when the caller goes on.
    #[test]
    fn a_domain_destroyed_while_its_vcpu_runs_elsewhere() {
        destroy_while_running(true);
    }

    #[test]
    #[should_panic(expected = "freed when the caller goes on")]
    fn without_the_count_the_caller_goes_on_too_early() {
        destroy_while_running(false);
    }

    /// The model above; `count`: the destroyer counts the vCPU it leaves to the other CPU.
    fn destroy_while_running(count: bool) {
        loom::model(move || {
            let p = Arc::new(Presence::new());
            // Under the lock: the vCPU's hardware state when at home, the domain's instance
            // (0: destroyed), and the states other CPUs still have to free.
            let table = Arc::new(Mutex::new((Some(()), 1u32, 0u32)));
            let freed = Arc::new(AtomicBool::new(false));
            let hw_frees = Arc::new(loom::sync::atomic::AtomicU32::new(0));
            let runner = {
                let (p, table, freed, hw_frees) =
                    (p.clone(), table.clone(), freed.clone(), hw_frees.clone());
                loom::thread::spawn(move || {
                    let (hw, instance) = {
                        let mut t = table.lock().unwrap();
                        p.hold(1);
                        let Some(hw) = t.0.take() else { return };
                        p.entering(1, 0, 0);
                        (hw, t.1)
                    };
                    // The guest uses its memory.
                    assert!(!freed.load(Ordering::Acquire), "a destroyed domain's memory was used");
                    p.left(1);
                    let mut t = table.lock().unwrap();
                    p.hold(1);
                    if t.1 != instance {
                        // Orphaned: its hardware state is this CPU's to free.
                        let () = hw;
                        hw_frees.fetch_add(1, Ordering::Relaxed);
                        t.2 = t.2.saturating_sub(1);
                    } else {
                        t.0 = Some(hw);
                    }
                })
            };
            {
                let mut t = table.lock().unwrap();
                p.hold(0);
                p.quiesce(|_| {}, || 0);
                freed.store(true, Ordering::Release);
                match t.0.take() {
                    Some(()) => {
                        hw_frees.fetch_add(1, Ordering::Relaxed);
                    }
                    None => t.2 += u32::from(count),
                }
                t.1 = 0;
            }
            // The caller is not run again until the count is 0.
            loop {
                if table.lock().unwrap().2 == 0 {
                    assert_eq!(
                        hw_frees.load(Ordering::Relaxed),
                        1,
                        "freed when the caller goes on"
                    );
                    break;
                }
                loom::thread::yield_now();
            }
            runner.join().unwrap();
            assert_eq!(hw_frees.load(Ordering::Relaxed), 1, "freed once");
        });
    }

    #[test]
    fn no_cpu_uses_a_frame_freed_after_a_quiesce() {
        two_cpus(true);
    }

    #[test]
    #[should_panic(expected = "a freed frame was used")]
    fn without_the_quiesce_a_freed_frame_is_used() {
        two_cpus(false);
    }
}
