//! A deterministic simulation of many netmachine nodes: their protocol cores (the transport's
//! connection pool, the router and the pubsub service) joined by a fake network on virtual time, with delay, loss,
//! partitions, crashes and restarts, all driven by one seed. A scenario that fails prints its
//! seed; `NETMACHINE_SIM_SEED=<seed>` replays it exactly, and `NETMACHINE_SIM_SEEDS=<n>` runs
//! each scenario over `n` more random seeds.

pub mod pubsub;
pub mod rng;
pub mod routing;
pub mod storage;
pub mod world;

pub use routing::Traffic;
pub use world::{Frame, Report, World, QUIC_IDLE};

/// The seeds a scenario runs with: `NETMACHINE_SIM_SEED` alone if set; else `fixed`, plus
/// `NETMACHINE_SIM_SEEDS` random ones.
pub fn seeds(fixed: &[u64]) -> Vec<u64> {
    if let Some(seed) = std::env::var("NETMACHINE_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let extra: usize = std::env::var("NETMACHINE_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut random = rng::Rng::new(clock);
    fixed.iter().copied().chain((0..extra).map(|_| random.next_u64())).collect()
}

/// Runs `scenario` for each seed, naming the seed of the first that panics so it can be
/// replayed.
pub fn for_each_seed(fixed: &[u64], scenario: impl Fn(u64) + std::panic::RefUnwindSafe) {
    for seed in seeds(fixed) {
        if let Err(panic) = std::panic::catch_unwind(|| scenario(seed)) {
            eprintln!("scenario failed with seed {seed}: replay it with NETMACHINE_SIM_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}
