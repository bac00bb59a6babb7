//! The daemon's descriptor budget: the soft `RLIMIT_NOFILE` raised to the hard limit
//! at start, then shared between the store's file pool and the producer files held
//! open, with the rest left for FUSE, inotify, directory listings and transient opens.

/// How the descriptor limit is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The soft limit now.
    pub limit: u64,
    /// Store files kept open at most ([`crate::store::pool::FilePool`]).
    pub store: usize,
    /// Producer files held open before idle ones are closed (reopened by identity when
    /// they grow).
    pub sources: usize,
}

/// Raises the soft descriptor limit to the hard limit; returns the soft limit after.
pub fn raise_nofile_limit() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl = raised;
            }
        }
    }
    rl.rlim_cur
}

/// The budget under the soft limit at its first use (after [`raise_nofile_limit`]).
pub fn cached_budget() -> DescriptorBudget {
    static BUDGET: std::sync::OnceLock<DescriptorBudget> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(descriptor_budget)
}

/// The budget under the current soft limit.
pub fn descriptor_budget() -> DescriptorBudget {
    let mut rl = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
    // SAFETY: getrlimit writes the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    budget_for(rl.rlim_cur)
}

/// The budget under a limit of `limit` descriptors: a quarter for the store (at most
/// 4,096), half for producer files (at most 65,536), the rest in reserve.
pub fn budget_for(limit: u64) -> DescriptorBudget {
    let limit = limit.max(64);
    DescriptorBudget {
        limit,
        store: (limit / 4).clamp(16, 4096) as usize,
        sources: (limit / 2).clamp(16, 65_536) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_a_reserve_under_any_limit() {
        for limit in [64, 256, 1024, 20_000, 1 << 20] {
            let b = budget_for(limit);
            assert!((b.store + b.sources) as u64 <= limit * 3 / 4 + 8, "{b:?}");
        }
        assert_eq!(budget_for(1024).store, 256);
        assert_eq!(budget_for(1024).sources, 512);
    }
}
