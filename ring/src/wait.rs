//! Waiting without burning CPU (RING.md, "Waking"): spin briefly, then yield, then sleep on a
//! futex word after saying so in it; the other side makes the wake-up call only when the word
//! says someone sleeps. The protocol is written against [`FutexWord`] so that loom can check it
//! (`scripts/loom`) with a futex modelled without timeouts, where a lost wake-up is a deadlock.

use std::sync::atomic::{AtomicU32, Ordering};
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

// How long a side spins, then how many times it yields, before it sleeps. A message between
// two engines goes by a direct channel: two parties, each on a core of its own when there are
// two, so a wait shorter than a yield's cost is cheaper spun than yielded (a yield is a system
// call: about a microsecond in a VM, and a message that comes during one waits for it to end).
// So a side spins about as long as a yield costs. A relay through the router has three parties
// on two cores, where a spinner holds the core the side it waits for needs: spinning longer
// slows it. Measured on 2 cores (`bench local`, pinned pairs; the relay with
// `router.direct_channels=false`): 16 spins (about 0.5 us) gave a send_all/poll p50 of 330-360
// ns; spinning 1 us 270-310 ns with a relay of 5.0-5.1 us; 3 us 255-326 ns with a relay of 6.1
// us. Idle CPU is unchanged, since a side with nothing to do still sleeps after the yields.
#[cfg(not(netmachine_loom))]
const SPIN_FOR: Duration = Duration::from_micros(1);
#[cfg(not(netmachine_loom))]
const YIELDS: u32 = 100;
// Under the model checker every round is a branch to explore: go straight to sleeping.
#[cfg(netmachine_loom)]
const SPIN_FOR: Duration = Duration::ZERO;
#[cfg(netmachine_loom)]
const YIELDS: u32 = 0;
/// Spinning reads the clock once in this many rounds (a read is tens of nanoseconds in a VM).
const CLOCK_EVERY: u32 = 16;
/// Busy-spinning yields once it has spun this long since its last yield: a spinner that shares
/// its core with the side it waits for gives it up, without paying a system call every few
/// rounds while each has a core. Measured on 2 cores (`bench local`): a yield every 8 rounds
/// gave a busy-spin p50 of 980-1180 ns by direct channel; a yield after 2 us of spinning
/// 460-600 ns, with a relay through the router of 5.4-5.9 us (after 5 us, 7.1-7.3 us; after 50
/// us, 31 us).
const BUSY_SPIN_YIELD_AFTER: Duration = Duration::from_micros(2);
/// The longest sleep of a side that keeps a deadline; a lost wake-up costs it at most this much
/// latency.
pub const SLEEP: Duration = Duration::from_millis(100);
/// The sleep of a side with no deadline to keep once a whole `SLEEP` found nothing (an engine
/// waiting to receive, the router with nothing to forward): every wake-up of an idle process
/// costs tens of microseconds in a VM, and a node's idle engines and router woke ten times a
/// second each. Everything they wait for wakes them: the wait is a safety net, not a poll.
pub const IDLE_SLEEP: Duration = Duration::from_secs(1);

/// A shared word a side sleeps on: a futex word in shared memory.
pub trait FutexWord {
    fn load(&self, order: Ordering) -> u32;
    fn store(&self, value: u32, order: Ordering);
    fn swap(&self, value: u32, order: Ordering) -> u32;
    fn fetch_add(&self, value: u32, order: Ordering) -> u32;
    /// A sequentially consistent fence.
    fn fence(&self);
    /// Sleeps while the word holds `expected`, until woken or for at most `timeout`.
    fn sleep(&self, expected: u32, timeout: Duration);
    /// Wakes a sleeper.
    fn wake(&self);
    /// Lets another thread run.
    fn yield_now(&self);
}

impl FutexWord for AtomicU32 {
    #[inline]
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }
    #[inline]
    fn store(&self, value: u32, order: Ordering) {
        AtomicU32::store(self, value, order)
    }
    #[inline]
    fn swap(&self, value: u32, order: Ordering) -> u32 {
        AtomicU32::swap(self, value, order)
    }
    #[inline]
    fn fetch_add(&self, value: u32, order: Ordering) -> u32 {
        AtomicU32::fetch_add(self, value, order)
    }
    #[inline]
    fn fence(&self) {
        full_fence();
    }
    #[inline]
    fn sleep(&self, expected: u32, timeout: Duration) {
        crate::futex::wait(self, expected, timeout);
    }
    #[inline]
    fn wake(&self) {
        crate::futex::wake(self, 1);
    }
    #[inline]
    fn yield_now(&self) {
        std::thread::yield_now();
    }
}

/// A sequentially consistent fence. On x86-64, a locked OR of zero into the word at the stack
/// pointer: a locked instruction is a full barrier, as `mfence` is, for the ordinary memory the
/// rings use, and costs a tenth as much (measured here: `mfence` 20 ns, locked OR 2.3 ns; it is
/// Linux's `smp_mb()` on x86-64 for the same reason). Every send that may wake a sleeper makes
/// one.
#[inline]
fn full_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: ORs zero into this thread's own stack word at the stack pointer: no value changes,
    // and the block is assumed to read and write any memory, so the compiler moves no memory
    // access across it either.
    unsafe {
        std::arch::asm!("lock or dword ptr [rsp], 0");
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// Returns once `ready()` holds, sleeping on `word` when it has waited a while.
#[cfg(test)]
pub fn wait_for(mode: WaitMode, word: &impl FutexWord, mut ready: impl FnMut() -> bool) {
    let mut waiter = Waiter::default();
    while !waiter.wait_a_while(mode, word, &mut ready) {}
}

/// One side's waiting, over the waits of one call that waits for something: whether its last
/// wait slept and still found nothing. Such a side is idle, and its next wait goes straight
/// back to sleep, rather than spin and yield again each time a sleep ends (a yield is a system
/// call: about a microsecond in a VM, and a hundred of them every `SLEEP` were most of what an
/// idle engine cost).
#[derive(Debug, Default)]
pub struct Waiter {
    idle: bool,
    /// Its caller keeps no deadline: once idle, it sleeps `IDLE_SLEEP` at a time.
    without_deadline: bool,
}

impl Waiter {
    /// A waiter for a caller with no deadline to keep.
    pub fn without_deadline() -> Waiter {
        Waiter { idle: false, without_deadline: true }
    }

    /// Waits until `ready()` holds (spinning, then yielding, then sleeping on `word`, unless the
    /// last wait found it idle), but returns after at most one sleep (`SLEEP`) even if it does
    /// not hold yet, so that callers can keep their own deadlines. Returns whether it holds.
    pub fn wait_a_while(&mut self, mode: WaitMode, word: &impl FutexWord, mut ready: impl FnMut() -> bool) -> bool {
        let held = match mode {
            WaitMode::BusySpin => busy_spin(word, &mut ready),
            WaitMode::Adaptive => {
                let sleep = if self.idle && self.without_deadline { IDLE_SLEEP } else { SLEEP };
                (!self.idle && spin_then_yield(word, &mut ready)) || sleep_on(word, sleep, &mut ready)
            }
        };
        self.idle = !held;
        held
    }
}

/// Spins until `ready()` holds, for at most `SLEEP` (callers keep their deadlines), yielding
/// after each `BUSY_SPIN_YIELD_AFTER` of spinning. Whether it holds.
fn busy_spin(word: &impl FutexWord, ready: &mut impl FnMut() -> bool) -> bool {
    if ready() {
        return true;
    }
    let started = std::time::Instant::now();
    let mut yielded = started;
    let mut round = 0u32;
    loop {
        if ready() {
            return true;
        }
        round = round.wrapping_add(1);
        if round % CLOCK_EVERY == 0 {
            let now = std::time::Instant::now();
            if now - started >= SLEEP {
                return false;
            }
            if now - yielded >= BUSY_SPIN_YIELD_AFTER {
                word.yield_now();
                yielded = now;
            }
        }
        std::hint::spin_loop();
    }
}

/// Spins for up to `SPIN_FOR`, then yields `YIELDS` times, until `ready()` holds. Whether it
/// does.
fn spin_then_yield(word: &impl FutexWord, ready: &mut impl FnMut() -> bool) -> bool {
    if ready() {
        return true;
    }
    if !SPIN_FOR.is_zero() {
        let started = std::time::Instant::now();
        let mut round = 0u32;
        loop {
            std::hint::spin_loop();
            if ready() {
                return true;
            }
            round = round.wrapping_add(1);
            if round % CLOCK_EVERY == 0 && started.elapsed() >= SPIN_FOR {
                break;
            }
        }
    }
    for _ in 0..YIELDS {
        word.yield_now();
        if ready() {
            return true;
        }
    }
    false
}

/// Looks, says in `word` that this side sleeps, looks once more, then sleeps on it until woken
/// or for at most `sleep`. Whether `ready()` holds after.
fn sleep_on(word: &impl FutexWord, sleep: Duration, ready: &mut impl FnMut() -> bool) -> bool {
    if ready() {
        return true;
    }
    word.store(1, Ordering::SeqCst);
    word.fence();
    if ready() {
        word.store(0, Ordering::SeqCst);
        return true;
    }
    word.sleep(1, sleep);
    word.store(0, Ordering::SeqCst);
    ready()
}

/// After publishing something the other side may be sleeping for: wake it if it sleeps.
pub fn wake_if_sleeping(word: &impl FutexWord) {
    word.fence();
    if word.load(Ordering::Relaxed) == 1 && word.swap(0, Ordering::SeqCst) == 1 {
        word.wake();
    }
}

/// An engine, after writing to its outbox: rings the router's doorbell if the router sleeps
/// (RING.md, "Router waiting for outbox records").
pub fn ring_doorbell(router_sleeping: &impl FutexWord, rings: &impl FutexWord) {
    router_sleeping.fence();
    if router_sleeping.load(Ordering::Relaxed) == 1 {
        rings.fetch_add(1, Ordering::SeqCst);
        rings.wake();
    }
}

/// The router, with nothing to do: says it sleeps, looks once more, then sleeps on the doorbell
/// until an engine rings it, or the router's own threads do (or for `IDLE_SLEEP`). Returns after
/// at most one sleep.
pub fn sleep_on_doorbell(router_sleeping: &impl FutexWord, rings: &impl FutexWord, mut anything_waiting: impl FnMut() -> bool) {
    let before = rings.load(Ordering::SeqCst);
    router_sleeping.store(1, Ordering::SeqCst);
    router_sleeping.fence();
    if !anything_waiting() {
        rings.sleep(before, IDLE_SLEEP);
    }
    router_sleeping.store(0, Ordering::SeqCst);
}

/// A test's futex word's own operations, on the atomic in its field `$field`.
#[cfg(test)]
macro_rules! word_operations {
    ($field:tt) => {
        fn load(&self, order: Ordering) -> u32 {
            self.$field.load(order)
        }
        fn store(&self, value: u32, order: Ordering) {
            self.$field.store(value, order)
        }
        fn swap(&self, value: u32, order: Ordering) -> u32 {
            self.$field.swap(value, order)
        }
        fn fetch_add(&self, value: u32, order: Ordering) -> u32 {
            self.$field.fetch_add(value, order)
        }
    };
}

#[cfg(all(test, not(netmachine_loom)))]
mod tests {
    use super::*;
    use crate::layout::Kind;
    use crate::spsc::heap_ring;
    use std::sync::Arc;

    /// A futex word whose sleep lasts a minute instead of `SLEEP`: a lost wake-up is not
    /// absorbed by the sleep ending, it stalls the sleeper.
    struct Patient(AtomicU32);

    impl FutexWord for Patient {
        word_operations!(0);
        fn fence(&self) {
            self.0.fence()
        }
        fn sleep(&self, expected: u32, _timeout: Duration) {
            crate::futex::wait(&self.0, expected, Duration::from_secs(60));
        }
        fn wake(&self) {
            self.0.wake()
        }
        fn yield_now(&self) {
            self.0.yield_now()
        }
    }

    /// A futex word that counts its yields and sleeps, and whose sleep ends at once.
    #[derive(Default)]
    struct Counted {
        word: AtomicU32,
        yields: std::cell::Cell<u32>,
        sleeps: std::cell::Cell<u32>,
        /// How long the last sleep was to last at most.
        slept: std::cell::Cell<Duration>,
    }

    impl FutexWord for Counted {
        word_operations!(word);
        fn fence(&self) {
            self.word.fence()
        }
        fn sleep(&self, _expected: u32, timeout: Duration) {
            self.sleeps.set(self.sleeps.get() + 1);
            self.slept.set(timeout);
        }
        fn wake(&self) {}
        fn yield_now(&self) {
            self.yields.set(self.yields.get() + 1);
        }
    }

    #[test]
    fn a_waiter_whose_sleep_found_nothing_sleeps_again_at_once_until_something_comes() {
        let (word, mut waiter) = (Counted::default(), Waiter::default());
        let counts = |word: &Counted| (word.yields.replace(0), word.sleeps.replace(0));
        assert!(!waiter.wait_a_while(WaitMode::Adaptive, &word, || false));
        assert_eq!(counts(&word), (YIELDS, 1), "the first wait spins, yields, then sleeps once");
        for _ in 0..3 {
            assert!(!waiter.wait_a_while(WaitMode::Adaptive, &word, || false));
            assert_eq!(counts(&word), (0, 1), "an idle waiter goes straight back to sleep");
        }
        // Something comes during its sleep (after a look before it says it sleeps, and one after):
        // the next wait spins and yields first again.
        let mut looks = 0;
        assert!(waiter.wait_a_while(WaitMode::Adaptive, &word, || {
            looks += 1;
            looks > 2
        }));
        assert_eq!(counts(&word), (0, 1), "it found it after its sleep");
        assert!(!waiter.wait_a_while(WaitMode::Adaptive, &word, || false));
        assert_eq!(counts(&word), (YIELDS, 1));
        assert_eq!(word.word.load(Ordering::SeqCst), 0, "it never leaves its word saying it sleeps");
    }

    #[test]
    fn only_an_idle_waiter_without_a_deadline_sleeps_long() {
        for (mut waiter, idle_sleep) in [(Waiter::default(), SLEEP), (Waiter::without_deadline(), IDLE_SLEEP)] {
            let word = Counted::default();
            assert!(!waiter.wait_a_while(WaitMode::Adaptive, &word, || false));
            assert_eq!(word.slept.get(), SLEEP, "the first sleep after something came is a short one");
            assert!(!waiter.wait_a_while(WaitMode::Adaptive, &word, || false));
            assert_eq!(word.slept.get(), idle_sleep, "once idle");
            assert!(waiter.wait_a_while(WaitMode::Adaptive, &word, || true));
            assert!(!waiter.wait_a_while(WaitMode::Adaptive, &word, || false));
            assert_eq!(word.slept.get(), SLEEP, "something came: short again");
        }
    }

    #[test]
    fn a_sleeping_consumer_is_woken_for_every_burst_and_misses_nothing() {
        let (mut producer, mut consumer) = heap_ring(4096);
        let sleeping = Arc::new(Patient(AtomicU32::new(0)));
        let bursts = 20u64;
        let producer = {
            let sleeping = sleeping.clone();
            std::thread::spawn(move || {
                for n in 0..bursts * 10 {
                    if n % 10 == 0 {
                        // Until the consumer has said it sleeps (in the word) and then a little
                        // more, so that most bursts find it asleep in the futex.
                        while sleeping.load(Ordering::SeqCst) == 0 {
                            std::thread::yield_now();
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    while producer.try_write(Kind::Message, &[&n.to_le_bytes()]).is_err() {
                        std::thread::yield_now();
                    }
                    wake_if_sleeping(&*sleeping);
                }
            })
        };
        let (done, finished) = std::sync::mpsc::channel();
        let consumer = std::thread::spawn({
            let sleeping = sleeping.clone();
            move || {
                for expected in 0..bursts * 10 {
                    wait_for(WaitMode::Adaptive, &*sleeping, || consumer.has_data());
                    let record = consumer.peek().unwrap().unwrap();
                    assert_eq!(u64::from_le_bytes(record.body.try_into().unwrap()), expected);
                    consumer.consume();
                }
                let _ = done.send(());
            }
        });
        let outcome = finished.recv_timeout(Duration::from_secs(20));
        assert_ne!(outcome, Err(std::sync::mpsc::RecvTimeoutError::Timeout), "the consumer slept through a burst: a wake-up was lost");
        // Had the consumer failed (a record missing or out of order), it shows here.
        consumer.join().expect("the consumer read every record, in order");
        producer.join().unwrap();
    }
}

/// The wake-up protocol under loom: every interleaving of one sleeper and one waker, with a
/// futex that never times out. A lost wake-up leaves the sleeper blocked, which loom reports as
/// a deadlock.
#[cfg(all(test, netmachine_loom))]
mod model {
    use super::*;
    use loom::sync::atomic::{AtomicBool, AtomicU32 as LoomU32};
    use loom::sync::{Arc, Condvar, Mutex};

    /// FUTEX_WAIT and FUTEX_WAKE, modelled: the check of the word and the sleep are atomic with
    /// respect to wakes, as the kernel makes them.
    struct ModelWord {
        word: LoomU32,
        lock: Mutex<()>,
        woken: Condvar,
    }

    impl FutexWord for ModelWord {
        word_operations!(word);
        fn fence(&self) {
            loom::sync::atomic::fence(Ordering::SeqCst);
        }
        fn sleep(&self, expected: u32, _timeout: Duration) {
            let guard = self.lock.lock().unwrap();
            if self.word.load(Ordering::SeqCst) == expected {
                drop(self.woken.wait(guard).unwrap());
            }
        }
        fn wake(&self) {
            let _guard = self.lock.lock().unwrap();
            self.woken.notify_all();
        }
        fn yield_now(&self) {
            loom::thread::yield_now();
        }
    }

    fn word() -> Arc<ModelWord> {
        Arc::new(ModelWord { word: LoomU32::new(0), lock: Mutex::new(()), woken: Condvar::new() })
    }

    #[test]
    fn two_engines_publishing_always_wake_a_router_that_went_to_sleep() {
        // Three threads looping over shared words: bound the preemptions, as loom advises, so
        // the search ends (bugs of this kind need one or two).
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(2);
        model.check(|| {
            let (sleeping, rings) = (word(), word());
            let outboxes: Vec<Arc<AtomicBool>> = (0..2).map(|_| Arc::new(AtomicBool::new(false))).collect();
            let engines: Vec<_> = outboxes
                .iter()
                .map(|outbox| {
                    let (sleeping, rings, outbox) = (sleeping.clone(), rings.clone(), outbox.clone());
                    loom::thread::spawn(move || {
                        outbox.store(true, Ordering::Release);
                        ring_doorbell(&*sleeping, &*rings);
                    })
                })
                .collect();
            // The router takes what is published and sleeps on the doorbell in between.
            let mut taken = [false, false];
            while taken != [true, true] {
                for (seen, outbox) in taken.iter_mut().zip(&outboxes) {
                    *seen |= outbox.load(Ordering::Acquire);
                }
                if taken != [true, true] {
                    let pending = || outboxes.iter().zip(taken).any(|(o, seen)| !seen && o.load(Ordering::Acquire));
                    sleep_on_doorbell(&*sleeping, &*rings, pending);
                }
            }
            for engine in engines {
                engine.join().unwrap();
            }
        });
    }

    #[test]
    fn a_published_record_always_wakes_a_consumer_that_went_to_sleep() {
        loom::model(|| {
            let word = word();
            // Stands for the ring's tail: released by the producer, acquired by the consumer.
            let published = Arc::new(AtomicBool::new(false));
            let producer = {
                let (word, published) = (word.clone(), published.clone());
                loom::thread::spawn(move || {
                    published.store(true, Ordering::Release);
                    wake_if_sleeping(&*word);
                })
            };
            wait_for(WaitMode::Adaptive, &*word, || published.load(Ordering::Acquire));
            producer.join().unwrap();
        });
    }
}
