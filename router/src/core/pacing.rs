//! How the ring thread waits between its rounds over the engines' outboxes, decided from what
//! the last round did. After progress: another round at once, so a busy node never sleeps
//! between records. While a receiver (or the main thread) has no room: a short sleep, doubling
//! up to 1 ms, as only the slow side can make room. With nothing to do: a few spins, then
//! yields, then sleep on the doorbell, which engines ring only while the thread sleeps; so an
//! idle node costs nothing.

use std::time::Duration;

/// Idle rounds spent spinning, then yielding, before sleeping on the doorbell (as the engines
/// wait, in `netmachine_engine::ring::wait`).
const SPINS: u32 = 16;
const YIELDS: u32 = 100;
const FIRST_BACKOFF: Duration = Duration::from_micros(50);
const MAX_BACKOFF: Duration = Duration::from_millis(1);

/// What a round over the outboxes did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Some record moved.
    Progressed,
    /// Nothing moved, and some record waits for room.
    Blocked,
    /// Nothing to move.
    Idle,
}

/// What the ring thread does before its next round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    None,
    Spin,
    Yield,
    Sleep(Duration),
    /// Sleep until an engine rings the doorbell (or the endpoints change).
    Doorbell,
}

#[derive(Debug)]
pub struct Pacer {
    idle_rounds: u32,
    backoff: Duration,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer { idle_rounds: 0, backoff: FIRST_BACKOFF }
    }
}

impl Pacer {
    pub fn after(&mut self, round: Round) -> Pause {
        match round {
            Round::Progressed => {
                *self = Pacer::default();
                Pause::None
            }
            Round::Blocked => {
                let pause = self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                Pause::Sleep(pause)
            }
            Round::Idle => {
                // Past the yields it stays at the doorbell until something moves: a thread whose
                // sleep ended with nothing to do sleeps again, rather than spin and yield again
                // each time (a yield is a system call, about a microsecond in a VM).
                self.idle_rounds = (self.idle_rounds + 1).min(SPINS + YIELDS);
                if self.idle_rounds < SPINS {
                    Pause::Spin
                } else if self.idle_rounds < SPINS + YIELDS {
                    Pause::Yield
                } else {
                    Pause::Doorbell
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_never_pauses_and_starts_the_waiting_over() {
        let mut pacer = Pacer::default();
        for _ in 0..SPINS + 5 {
            pacer.after(Round::Idle);
        }
        pacer.after(Round::Blocked);
        assert_eq!(pacer.after(Round::Progressed), Pause::None);
        assert_eq!(pacer.after(Round::Idle), Pause::Spin, "idle rounds counted from zero again");
        assert_eq!(pacer.after(Round::Blocked), Pause::Sleep(FIRST_BACKOFF), "the backoff starts over");
    }

    #[test]
    fn a_blocked_thread_sleeps_longer_each_round_up_to_a_millisecond() {
        let mut pacer = Pacer::default();
        let sleeps: Vec<Pause> = (0..7).map(|_| pacer.after(Round::Blocked)).collect();
        let micros = |us| Pause::Sleep(Duration::from_micros(us));
        assert_eq!(sleeps, vec![micros(50), micros(100), micros(200), micros(400), micros(800), micros(1000), micros(1000)]);
    }

    #[test]
    fn an_idle_thread_spins_then_yields_then_sleeps_on_the_doorbell_until_something_moves() {
        let mut pacer = Pacer::default();
        let round = (SPINS + YIELDS) as usize;
        for cycle in 0..2 {
            let pauses: Vec<Pause> = (0..3 * round).map(|_| pacer.after(Round::Idle)).collect();
            for (i, pause) in pauses.iter().enumerate() {
                let at = i + 1;
                let expected = if at < SPINS as usize {
                    Pause::Spin
                } else if at < round {
                    Pause::Yield
                } else {
                    Pause::Doorbell
                };
                assert_eq!(*pause, expected, "idle round {i} of cycle {cycle}");
            }
            // Every round past the first sleep sleeps again, with no spins or yields between.
            assert_eq!(pauses.iter().filter(|p| **p == Pause::Doorbell).count(), 2 * round + 1);
            assert_eq!(pacer.after(Round::Progressed), Pause::None, "progress starts the waiting over");
        }
    }
}
