//! Capped exponential backoff with jitter, for reconnecting to a service and restarting one.

use std::time::Duration;

/// Delays that double from `initial` up to `cap`, each shortened by up to a quarter at random
/// so that many waiters do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Backoff { initial, cap, next: initial }
    }

    /// The delay before the next attempt; each call doubles the one after, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let mut noise = [0u8; 2];
        let _ = getrandom::fill(&mut noise);
        self.next_delay_with(u16::from_le_bytes(noise))
    }

    /// Like [`Backoff::next_delay`], with the jitter chosen by `noise` (0: none, `u16::MAX`: a
    /// whole quarter off), for callers that must be deterministic.
    pub fn next_delay_with(&mut self, noise: u16) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.cap);
        let quarter = base / 4;
        base - quarter.mul_f64(f64::from(noise) / f64::from(u16::MAX))
    }

    /// Back to the initial delay, after an attempt succeeded.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let delays: Vec<_> = (0..6).map(|_| backoff.next_delay()).collect();
        for (delay, base) in delays.iter().zip([100, 200, 400, 800, 1000, 1000]) {
            assert!(*delay <= ms(base) && *delay >= ms(base) * 3 / 4, "{delay:?} vs {base}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= ms(100));
    }
}
