//! Giving freed heap back to the system.

/// Returns the allocator's free pages to the kernel, after work that
/// allocated and freed megabytes (sealing, compaction).
///
/// glibc keeps freed memory in per-thread arenas and gives back only what
/// lies at an arena's top; the store's periodic work frees megabytes below
/// longer-lived blocks, so without this the agent's RSS climbs by a few
/// MiB with every seal although it uses no more. `malloc_trim` releases
/// free pages anywhere in every arena. Elsewhere it does nothing.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
