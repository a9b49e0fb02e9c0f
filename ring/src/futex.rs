//! Linux futexes on words in shared memory (not FUTEX_PRIVATE: the word is shared between
//! processes), the sleeping half of the ring's doorbells.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `word` holds `expected`, at most `timeout`. Returns early on a wake-up, a
/// signal, or if the word already differs; callers re-check their condition in every case.
/// Returns true when it was woken by a FUTEX_WAKE (not by the timeout, a signal or the word).
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) -> bool {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call (it lives in a
    // mapping the caller holds); FUTEX_WAIT only reads it and takes no other pointer but the
    // timeout, which outlives the call.
    let outcome = unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &timeout as *const libc::timespec, 0usize, 0u32)
    };
    outcome == 0
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

    #[test]
    fn a_sleeper_is_woken_by_a_wake_and_a_changed_word_does_not_sleep() {
        let word = Arc::new(AtomicU32::new(1));
        let sleeper = {
            let word = word.clone();
            // Far longer than the test can take: returning early means it was woken.
            std::thread::spawn(move || wait(&word, 1, Duration::from_secs(3600)))
        };
        // Wake until the sleeper is gone (it may not be asleep yet at the first wake); a broken
        // wake fails here instead of hanging the test for an hour.
        let give_up = std::time::Instant::now() + Duration::from_secs(30);
        while !sleeper.is_finished() && std::time::Instant::now() < give_up {
            wake(&word, 1);
            std::thread::yield_now();
        }
        assert!(sleeper.is_finished(), "FUTEX_WAKE did not wake the sleeper");
        assert!(sleeper.join().unwrap(), "the sleeper returned without being woken");
        // The word no longer holds the expected value: no sleep, and no wake-up reported.
        word.store(0, Ordering::SeqCst);
        assert!(!wait(&word, 1, Duration::from_secs(3600)));
    }
}
