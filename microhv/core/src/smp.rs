//! What the CPUs tell each other outside the hypervisor lock (`hv/smp.rs` runs vCPUs on every
//! CPU): which CPU is in a guest of which domain, which CPU holds the lock, which are idle; and
//! the two ways one CPU acts on another: a kick (an IPI that ends its guest's run or its halt)
//! and a quiesce (every other CPU out of its guest before a second-level entry's old target is
//! freed or reused).
//!
//! The protocol (`SMP.md` in the README's "SMP" section):
//! - A CPU marks itself in a guest ([`entering`]) under the lock, before it releases it, and
//!   clears the mark ([`left`]) as soon as its runner returns, before it waits for the lock
//!   again. So while a CPU holds the lock, a CPU whose mark is clear cannot be in a guest, and
//!   cannot enter one before it has the lock in its turn.
//! - The `mmu` calls [`quiesce`] (through `mmu::Host::before_zap`) when it first removes or
//!   replaces a present entry since the domain's last flush: every marked CPU is kicked and
//!   waited for. Their next entry goes through `Hv::prepare_entry` under the lock, which takes
//!   the flush owed and has the backend flush that CPU (`Backend::flush`, `Backend::load`).
//! - A runner's own demand faults take the lock with `try_lock` only (`hv/smp.rs`), so a CPU
//!   being waited for never waits for the lock while its mark is set: no deadlock.

use crate::cpus::MAX_CPUS;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Per CPU: 0, or 1 + the domain whose vCPU it runs.
static IN_GUEST: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// The CPU holding the hypervisor lock: the one [`quiesce`] must not wait for.
static HOLDER: AtomicUsize = AtomicUsize::new(0);
/// CPUs halted until kicked, a bit each.
static IDLE: AtomicU32 = AtomicU32::new(0);
/// How to kick a CPU: an IPI (installed by the ring-0 image; none in host tests).
static KICK: spin::Once<fn(usize)> = spin::Once::new();
/// Quiesces that had to wait for at least one CPU, and kicks sent: figures for the README.
static QUIESCES: AtomicU64 = AtomicU64::new(0);
static KICKS: AtomicU64 = AtomicU64::new(0);

/// Installs the kick (the ring-0 image, once, before any AP runs vCPUs).
pub fn set_kick(f: fn(usize)) {
    KICK.call_once(|| f);
}

/// Sends CPU `cpu` a kick: its guest exits, or its halt ends.
pub fn kick(cpu: usize) {
    if let Some(f) = KICK.get() {
        KICKS.fetch_add(1, Ordering::Relaxed);
        f(cpu);
    }
}

/// CPU `cpu` now holds the hypervisor lock.
pub fn hold(cpu: usize) {
    HOLDER.store(cpu, Ordering::Relaxed);
}

/// CPU `cpu` is about to enter a vCPU of domain `d` (called under the lock).
pub fn entering(cpu: usize, d: usize) {
    IN_GUEST[cpu].store(d as u32 + 1, Ordering::SeqCst);
}

/// CPU `cpu`'s runner returned: it is out of the guest (called without the lock).
pub fn left(cpu: usize) {
    IN_GUEST[cpu].store(0, Ordering::Release);
}

/// Whether CPU `cpu` runs a vCPU of domain `d`.
pub fn in_guest_of(cpu: usize, d: usize) -> bool {
    IN_GUEST[cpu].load(Ordering::Acquire) == d as u32 + 1
}

/// Brings every CPU but the lock holder out of its guest, and waits until each is out (called
/// under the lock). Until the lock is released no CPU can enter a guest again.
pub fn quiesce() {
    let me = HOLDER.load(Ordering::Relaxed);
    let mut waited = false;
    for (c, g) in IN_GUEST.iter().enumerate() {
        if c == me || g.load(Ordering::Acquire) == 0 {
            continue;
        }
        kick(c);
        while g.load(Ordering::Acquire) != 0 {
            core::hint::spin_loop();
        }
        waited = true;
    }
    if waited {
        QUIESCES.fetch_add(1, Ordering::Relaxed);
    }
}

/// CPU `cpu` is about to halt until kicked (called under the lock, so that whoever makes a
/// vCPU runnable next sees it).
pub fn going_idle(cpu: usize) {
    IDLE.fetch_or(1 << cpu, Ordering::SeqCst);
}

/// CPU `cpu` is awake again.
pub fn awake(cpu: usize) {
    IDLE.fetch_and(!(1 << cpu), Ordering::SeqCst);
}

/// Kicks one idle CPU, if any: a vCPU became runnable that no CPU runs. True if one was.
pub fn wake_one() -> bool {
    let idle = IDLE.load(Ordering::SeqCst);
    if idle == 0 {
        return false;
    }
    let c = idle.trailing_zeros() as usize;
    awake(c);
    kick(c);
    true
}

/// Whether some CPU is halted.
pub fn any_idle() -> bool {
    IDLE.load(Ordering::Relaxed) != 0
}

/// (quiesces that waited, kicks sent) so far.
pub fn figures() -> (u64, u64) {
    (QUIESCES.load(Ordering::Relaxed), KICKS.load(Ordering::Relaxed))
}
