//! The ring store: every point, compressed, on the gateway's own disk.
//!
//! The surface is small on purpose: sources [`StoreHandle::append`], sinks read
//! [`StoreHandle::after`] a [`Cursor`] and [`StoreHandle::ack`] what their endpoint
//! took, queries [`Store::read`] a series over a time range. The inside (codec,
//! sealing, later compaction, rollups and eviction) can change without touching
//! sources or sinks.

mod actor;
pub mod bench;
pub mod codec;
mod engine;
pub mod query;
pub mod rollup;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use actor::{spawn, Commit, Durable, StoreHandle, StoreTask, Tap, TapReceiver};
use engine::SERIES_BITS;
pub use engine::{
    ClockStep, Correction, CorrectionRow, DeadLetterRow, DegradedPending, DegradedRange, Evicted,
    JournalMode, Limits, Store,
};

/// A position in the store's chunk order: everything before `key`, and the first
/// `offset` points of chunk `key`, have been consumed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Cursor {
    /// Chunk key (`seq << 20 | series`).
    pub key: i64,
    /// Points of that chunk already consumed.
    pub offset: u32,
}

impl Cursor {
    /// The position just after the whole chunk `id`.
    pub fn after_chunk(id: i64) -> Cursor {
        let series_mask = (1i64 << SERIES_BITS) - 1;
        let key = if id & series_mask == 0 {
            // A journal chunk: per-series chunks sealed from the journal runs
            // after it are keyed from the next sequence number on.
            id + (1 << SERIES_BITS)
        } else {
            id + 1
        };
        Cursor { key, offset: 0 }
    }
}

/// What can go wrong in the store. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, permissions, corruption).
    #[error("store database error: {0}; check free space and permissions of the state directory")]
    Sqlite(#[from] rusqlite::Error),
    /// A file or directory could not be used.
    #[error("{path}: {source}; check that the state directory exists and is writable")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A chunk does not decode.
    #[error("corrupt chunk ({0}); move the store file aside to start a fresh one")]
    Corrupt(String),
    /// The series table is full.
    #[error("more than a million distinct series; reduce the tags' cardinality")]
    TooManySeries,
    /// A flush failed (the first error's text; the points stay pending and are retried).
    #[error("store flush failed: {0}")]
    FlushFailed(String),
    /// The store was made by an older Tidegate and cannot be upgraded read-only.
    #[error("the store was made by an older Tidegate; start the agent once (it upgrades the store as it opens it), then read it again")]
    Outdated,
    /// The store task has stopped.
    #[error("the store has stopped")]
    Closed,
}
