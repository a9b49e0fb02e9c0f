//! Linux futexes on words in shared memory (not FUTEX_PRIVATE: the word is shared between
//! processes), the sleeping half of the ring's doorbells.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `word` holds `expected`, at most `timeout`. Returns early on a wake-up, a
/// signal, or if the word already differs; callers re-check their condition in every case.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call (it lives in a
    // mapping the caller holds); FUTEX_WAIT only reads it and takes no other pointer but the
    // timeout, which outlives the call.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &timeout as *const libc::timespec, 0usize, 0u32);
    }
}

/// Wakes up to `waiters` sleepers on `word`.
pub fn wake(word: &AtomicU32, waiters: i32) {
    // SAFETY: FUTEX_WAKE only uses the address of `word` as a key; it reads no memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, waiters, 0usize, 0usize, 0u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_sleeper_is_woken_by_a_wake_and_a_changed_word_does_not_sleep() {
        let word = Arc::new(AtomicU32::new(1));
        let sleeper = {
            let word = word.clone();
            std::thread::spawn(move || {
                while word.load(Ordering::SeqCst) == 1 {
                    wait(&word, 1, Duration::from_secs(30));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        word.store(0, Ordering::SeqCst);
        wake(&word, 1);
        let started = Instant::now();
        sleeper.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(20), "the sleeper was not woken");
        // The word no longer holds the expected value: no sleep at all.
        wait(&word, 1, Duration::from_secs(30));
    }
}
