//! The memory rings live in, and the only code that touches it: a shared mapping of a segment
//! or a doorbell, or a heap buffer (rings within one process: tests, fuzzing). Another process
//! may rewrite any of its bytes at any time, so no reference to them is ever made: bytes are
//! copied in and out through raw pointers, and the words both sides update are used only as
//! atomics. Every access is bounds-checked against the region.
//!
//! Under `--cfg netmachine_loom` a region is a heap of words the model checker tracks, with
//! bytes copied by relaxed atomic loads and stores: a publication that is not ordered shows up
//! as a consumer reading stale bytes.

#[cfg(not(netmachine_loom))]
pub use real::Region;
#[cfg(netmachine_loom)]
pub use model::Region;

/// The atomic a region's counters are.
#[cfg(not(netmachine_loom))]
pub type Atomic64 = std::sync::atomic::AtomicU64;
#[cfg(netmachine_loom)]
pub type Atomic64 = loom::sync::atomic::AtomicU64;

#[cfg(not(netmachine_loom))]
mod real {
    use std::ptr::NonNull;
    use std::sync::atomic::{AtomicU32, AtomicU64};

    /// A region of memory shared with another party, which owns its mapping or allocation.
    pub struct Region {
        base: NonNull<u8>,
        len: usize,
        heap: bool,
    }

    // SAFETY: all access is through atomics or raw copies (see the module comment); the region
    // may be used from any thread.
    unsafe impl Send for Region {}
    unsafe impl Sync for Region {}

    impl Region {
        /// Takes over a mapping, unmapped when the region drops.
        ///
        /// # Safety
        /// `base` must be the start of a `len`-byte shared mapping, readable and writable, that
        /// nothing else in this process unmaps or refers to.
        pub unsafe fn mapped(base: NonNull<u8>, len: usize) -> Region {
            Region { base, len, heap: false }
        }

        /// `len` zeroed bytes on the heap (`len` a multiple of 8), 8-aligned.
        pub fn heap(len: usize) -> Region {
            assert!(len % 8 == 0 && len > 0);
            let words: Box<[u64]> = vec![0u64; len / 8].into_boxed_slice();
            let base = NonNull::new(Box::into_raw(words) as *mut u8).expect("a box is never null");
            Region { base, len, heap: true }
        }

        pub fn len(&self) -> usize {
            self.len
        }

        #[inline]
        pub fn u32_at(&self, at: usize) -> &AtomicU32 {
            if at + 4 > self.len || at % 4 != 0 {
                misplaced_word(at, 4, self.len);
            }
            // SAFETY: in bounds and aligned (checked; the base is page- or 8-aligned); AtomicU32
            // has u32's layout; the memory lives as long as `self`.
            unsafe { &*(self.base.as_ptr().add(at) as *const AtomicU32) }
        }

        #[inline]
        pub fn u64_at(&self, at: usize) -> &AtomicU64 {
            if at + 8 > self.len || at % 8 != 0 {
                misplaced_word(at, 8, self.len);
            }
            // SAFETY: as for `u32_at`.
            unsafe { &*(self.base.as_ptr().add(at) as *const AtomicU64) }
        }

        /// Copies `into.len()` bytes at `at` out of the region.
        #[inline]
        pub fn read(&self, at: usize, into: &mut [u8]) {
            assert!(at.checked_add(into.len()).is_some_and(|end| end <= self.len), "read past the region");
            // SAFETY: in bounds (checked); a raw copy, no reference into the shared bytes.
            unsafe { std::ptr::copy_nonoverlapping(self.base.as_ptr().add(at), into.as_mut_ptr(), into.len()) }
        }

        /// Asks the CPU to start loading the cache line holding byte `at` (a hint: no access is
        /// made, nothing happens out of bounds or on other targets).
        #[inline]
        pub fn prefetch(&self, at: usize) {
            #[cfg(target_arch = "x86_64")]
            if at < self.len {
                // SAFETY: in bounds (checked); a prefetch reads nothing the program can see.
                unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(self.base.as_ptr().add(at) as *const i8) }
            }
        }

        /// Asks the CPU to take the cache line holding byte `at` for writing (`prefetchw`, a
        /// hint: nothing is written, nothing happens out of bounds or on other targets).
        #[inline]
        pub fn prefetch_for_write(&self, at: usize) {
            #[cfg(target_arch = "x86_64")]
            if at < self.len {
                // SAFETY: in bounds (checked); a prefetch changes nothing the program can see.
                unsafe { std::arch::asm!("prefetchw [{}]", in(reg) self.base.as_ptr().add(at), options(nostack, preserves_flags, readonly)) }
            }
        }

        /// Copies `from` into the region at `at`.
        #[inline]
        pub fn write(&self, at: usize, from: &[u8]) {
            assert!(at.checked_add(from.len()).is_some_and(|end| end <= self.len), "write past the region");
            // SAFETY: in bounds (checked); a raw copy, no reference into the shared bytes.
            unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), self.base.as_ptr().add(at), from.len()) }
        }
    }

    /// A word asked for outside the region or off its alignment: a bug in this crate. Out of
    /// line, so that a checked access stays a compare and a load where it is inlined: the
    /// message's arguments, formatted in place, were spilled to the stack on every access, a
    /// store in each round of a side spinning on a word.
    #[cold]
    #[inline(never)]
    fn misplaced_word(at: usize, size: usize, len: usize) -> ! {
        panic!("a {size}-byte word at {at} is outside a {len}-byte region or not aligned");
    }

    impl Drop for Region {
        fn drop(&mut self) {
            if self.heap {
                let words = std::ptr::slice_from_raw_parts_mut(self.base.as_ptr() as *mut u64, self.len / 8);
                // SAFETY: made by `Box::into_raw` in `heap`, with this length, and dropped once.
                drop(unsafe { Box::from_raw(words) });
            } else {
                // SAFETY: unmaps exactly the mapping `mapped` took over; no reference into it
                // outlives `self`.
                let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
            }
        }
    }
}

#[cfg(netmachine_loom)]
mod model {
    use loom::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    /// A region as words the model checker tracks.
    pub struct Region {
        words: Box<[AtomicU64]>,
    }

    impl Region {
        pub fn heap(len: usize) -> Region {
            assert!(len % 8 == 0 && len > 0);
            Region { words: (0..len / 8).map(|_| AtomicU64::new(0)).collect() }
        }

        pub fn len(&self) -> usize {
            self.words.len() * 8
        }

        #[inline]
        pub fn u64_at(&self, at: usize) -> &AtomicU64 {
            assert!(at % 8 == 0);
            &self.words[at / 8]
        }

        /// Copies bytes out a word at a time, each word a relaxed load.
        #[inline]
        pub fn read(&self, at: usize, into: &mut [u8]) {
            let mut done = 0;
            while done < into.len() {
                let (word, within) = ((at + done) / 8, (at + done) % 8);
                let bytes = self.words[word].load(Ordering::Relaxed).to_le_bytes();
                let n = (8 - within).min(into.len() - done);
                into[done..done + n].copy_from_slice(&bytes[within..within + n]);
                done += n;
            }
        }

        /// Prefetching means nothing to the model.
        #[inline]
        pub fn prefetch(&self, _at: usize) {}

        #[inline]
        pub fn prefetch_for_write(&self, _at: usize) {}

        /// Copies bytes in a word at a time, each word a relaxed load and store (the region's
        /// writer is the only one writing those bytes).
        #[inline]
        pub fn write(&self, at: usize, from: &[u8]) {
            let mut done = 0;
            while done < from.len() {
                let (word, within) = ((at + done) / 8, (at + done) % 8);
                let mut bytes = self.words[word].load(Ordering::Relaxed).to_le_bytes();
                let n = (8 - within).min(from.len() - done);
                bytes[within..within + n].copy_from_slice(&from[done..done + n]);
                self.words[word].store(u64::from_le_bytes(bytes), Ordering::Relaxed);
                done += n;
            }
        }
    }
}
