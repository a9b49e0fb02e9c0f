//! Which cores the two sides of a latency pair run on: one each, the first two this process may
//! use. Left to the scheduler, two sides that wait for each other by yielding or sleeping are
//! now and then put on one core, where each round trip waits out the other side's turn (a
//! run-long 1.5 us one-way instead of 0.4, or a Unix socket ping-pong of 2 us instead of 29), and
//! which placement a run got decided its figure. The floor is two processes on two cores by
//! definition; every latency pair, figure and baseline alike, is now placed the same way.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Where a latency pair's sides go; nowhere in particular on a machine with one core.
pub(super) struct Cores(Option<Placement>);

/// The near core (the measuring thread's), the far one (the other side's), and every core this
/// process may use.
struct Placement {
    near: CpuSet,
    far: CpuSet,
    all: CpuSet,
}

impl Cores {
    /// The first two cores this process may use.
    pub fn find() -> Cores {
        let placement = || {
            let all = sched_getaffinity(Pid::from_raw(0)).ok()?;
            let mut usable = (0..CpuSet::count()).filter(|&cpu| all.is_set(cpu).unwrap_or(false));
            let only = |cpu: usize| {
                let mut set = CpuSet::new();
                set.set(cpu).ok().map(|()| set)
            };
            Some(Placement { near: only(usable.next()?)?, far: only(usable.next()?)?, all })
        };
        Cores(placement())
    }

    /// Puts the main thread of the helper process `pid` (the side a latency pair measures
    /// against) on the far core.
    pub fn place_far(&self, pid: u32) {
        let Some(placement) = &self.0 else { return };
        if let Err(error) = sched_setaffinity(Pid::from_raw(pid as i32), &placement.far) {
            tracing::warn!(pid, %error, "could not place a latency helper on its core");
        }
    }

    /// Runs `measure` with this thread on the near core, then lets it run anywhere again.
    pub fn near<R>(&self, measure: impl FnOnce() -> R) -> R {
        let Some(placement) = &self.0 else { return measure() };
        if sched_setaffinity(Pid::from_raw(0), &placement.near).is_err() {
            return measure();
        }
        let result = measure();
        let _ = sched_setaffinity(Pid::from_raw(0), &placement.all);
        result
    }
}
