//! How a service's allocator (glibc malloc) keeps freed memory. By default glibc gives the top
//! of its heap back to the kernel once more than twice its mmap threshold (128 KiB at start) is
//! free there. A service that moves frames of up to a megabyte frees that much many times a
//! second, so each new frame was mapped, faulted in page by page and zeroed again: in `bench
//! remote` at 4 KiB bodies the router spent most of its time in page faults, and the transport
//! a fifth. Here the heap keeps up to `KEPT_FREE` at its top, and only blocks over
//! `OWN_MAPPING` get mappings of their own. An idle node never grows its heap that far, so its
//! resident memory stays as it was.

/// Free memory the heap keeps at its top instead of returning it.
const KEPT_FREE: usize = 32 << 20;
/// Blocks at least this large are mapped on their own and unmapped when freed.
const OWN_MAPPING: usize = 4 << 20;

/// Sets the thresholds; call once, first thing in `main`. Without glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes two of malloc's thresholds; it is called before any other
    // thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEPT_FREE as libc::c_int);
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING as libc::c_int);
    }
}
