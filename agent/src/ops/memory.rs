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

/// Allocator arenas the agent's threads share: two. glibc gives each thread
/// that allocates its own arena (up to eight a core), and each keeps the
/// pages it freed: with four threads (two async workers, the store, main),
/// a 660 s `tidegate bench footprint` at 10k points/s across a seal peaked
/// at 15.6 MiB with two arenas against 16.3 with one a thread (the same
/// build, one run each, 2026-12-06), its CPU alike (7.96 and 7.81%). The store
/// thread and the async workers rarely allocate at the same instant, and a
/// thread's own cache (tcache) serves most small allocations without the
/// arena's lock. `GLIBC_TUNABLES=glibc.malloc.arena_max=N` still decides
/// when set. Call before any thread starts. Elsewhere it does nothing.
pub fn share_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if !tuned {
            // SAFETY: mallopt sets one allocator parameter; before threads start.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
    }
}
