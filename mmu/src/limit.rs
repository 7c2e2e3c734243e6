//! The per-domain cap on MMU pages (spec deviations 1–3): `n_requested_mmu_pages`,
//! `n_max_mmu_pages` and the default computed from the slots.

use crate::host::Host;
use crate::{Error, MAX_MMU_PAGES, MIN_MMU_PAGES, Mmu, PERMILLE_MMU_PAGES};

/// The default cap for a domain with `total_pages` guest pages:
/// `max(total_pages * 20 / 1000, MIN_MMU_PAGES)`, computed without overflow for any `u64`
/// (KVM 4.19 wraps above ~819 GiB, spec H3) and clamped to `MAX_MMU_PAGES`.
pub const fn default_mmu_pages(total_pages: u64) -> u64 {
    let n = (total_pages / 1000) * PERMILLE_MMU_PAGES
        + (total_pages % 1000) * PERMILLE_MMU_PAGES / 1000;
    if n < MIN_MMU_PAGES {
        MIN_MMU_PAGES
    } else if n > MAX_MMU_PAGES {
        MAX_MMU_PAGES
    } else {
        n
    }
}

impl Mmu {
    /// Set `n_requested_mmu_pages`: 0 returns to the default, recomputed whenever slots
    /// change; other values must lie in `MIN_MMU_PAGES..=MAX_MMU_PAGES` (`InvalidArgument`
    /// below, `TooBig` above; nothing changes on error). If pages in use exceed the new cap,
    /// the oldest are zapped at once, skipping roots that vCPUs hold; if only those remain, the
    /// cap in force stays at the pages in use and falls to the request as they are released.
    pub fn set_requested_pages<H: Host>(&mut self, host: &mut H, n: u64) -> Result<(), Error> {
        if n != 0 && n < MIN_MMU_PAGES {
            return Err(Error::InvalidArgument);
        }
        if n > MAX_MMU_PAGES {
            return Err(Error::TooBig);
        }
        self.n_requested = n;
        self.update_goal(host)
    }

    /// Recompute the goal after a change of `n_requested` or of the slots, and apply it.
    pub(crate) fn update_goal<H: Host>(&mut self, host: &mut H) -> Result<(), Error> {
        self.goal = if self.n_requested == 0 {
            default_mmu_pages(self.total_pages)
        } else {
            self.n_requested
        };
        // kvm_mmu_change_mmu_pages, but never leaving n_used above n_max.
        while self.n_used > self.goal {
            if !self.zap_oldest(host)? {
                break;
            }
        }
        self.n_max = self.goal.max(self.n_used);
        Ok(())
    }

    /// After a page is freed, let a cap held up by pinned roots fall back toward the goal.
    #[inline]
    pub(crate) fn relax_cap(&mut self) {
        if self.n_max > self.goal {
            self.n_max = self.goal.max(self.n_used);
        }
    }
}
