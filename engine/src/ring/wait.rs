//! Waiting without burning CPU (RING.md, "Waking"): spin briefly, then yield, then sleep on a
//! futex word after saying so in it; the other side makes the wake-up call only when the word
//! says someone sleeps.

use super::futex;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::Duration;

/// How a side waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitMode {
    /// Spin, yield, then sleep: ~0% CPU when idle.
    #[default]
    Adaptive,
    /// Never sleep: the lowest latency, a whole core while waiting.
    BusySpin,
}

const SPINS: u32 = 200;
/// Busy-spinning yields once in this many rounds.
const BUSY_SPIN_YIELD_EVERY: u32 = 1024;
const YIELDS: u32 = 20;
/// The longest sleep; a lost wake-up costs at most this much latency.
pub const SLEEP: Duration = Duration::from_millis(100);

/// Returns once `ready()` holds, sleeping on `word` when it has waited a while.
pub fn wait_for(mode: WaitMode, word: &AtomicU32, mut ready: impl FnMut() -> bool) {
    while !wait_a_while(mode, word, &mut ready) {}
}

/// Like [`wait_for`], but returns after at most one sleep (`SLEEP`) even if `ready()` does not
/// hold yet, so that callers can keep their own deadlines. Returns whether it holds.
pub fn wait_a_while(mode: WaitMode, word: &AtomicU32, mut ready: impl FnMut() -> bool) -> bool {
    let mut round = 0u32;
    loop {
        if ready() {
            return true;
        }
        round = round.saturating_add(1);
        if mode == WaitMode::BusySpin {
            // Give the core up now and then: with more spinners than cores (two cores, a
            // router and two engines), pure spinning starves the very side it waits for.
            if round % BUSY_SPIN_YIELD_EVERY == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        } else if round < SPINS {
            std::hint::spin_loop();
        } else if round < SPINS + YIELDS {
            std::thread::yield_now();
        } else {
            word.store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if ready() {
                word.store(0, Ordering::SeqCst);
                return true;
            }
            futex::wait(word, 1, SLEEP);
            word.store(0, Ordering::SeqCst);
            return ready();
        }
    }
}

/// After publishing something the other side may be sleeping for: wake it if it sleeps.
pub fn wake_if_sleeping(word: &AtomicU32) {
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) == 1 && word.swap(0, Ordering::SeqCst) == 1 {
        futex::wake(word, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::layout::Kind;
    use crate::ring::spsc::tests::HeapRing;
    use crate::ring::spsc::{Consumer, Producer};
    use std::sync::Arc;

    #[test]
    fn a_sleeping_consumer_is_woken_for_every_burst_and_misses_nothing() {
        let mut ring = HeapRing::new(4096);
        let memory = ring.memory();
        let sleeping = Arc::new(AtomicU32::new(0));
        let bursts = 20u64;
        let producer = {
            let sleeping = sleeping.clone();
            std::thread::spawn(move || {
                let mut producer = Producer::new(memory);
                for n in 0..bursts * 10 {
                    if n % 10 == 0 {
                        // Pause long enough for the consumer to go to sleep.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    while producer.try_write(Kind::Message, 8, |b| b.copy_from_slice(&n.to_le_bytes())).is_err() {
                        std::thread::yield_now();
                    }
                    wake_if_sleeping(&sleeping);
                }
            })
        };
        let mut consumer = Consumer::new(ring.memory());
        for expected in 0..bursts * 10 {
            wait_for(WaitMode::Adaptive, &sleeping, || consumer.has_data());
            let record = consumer.peek().unwrap().unwrap();
            assert_eq!(u64::from_le_bytes(record.body.try_into().unwrap()), expected);
            consumer.consume();
        }
        producer.join().unwrap();
        drop(ring);
    }
}
