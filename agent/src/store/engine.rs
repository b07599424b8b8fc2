//! The store itself: one SQLite file, written by one owner.
//!
//! Every stored row is a *chunk* under a 64-bit key `seq << 20 | series`:
//!
//! - A journal chunk (`series = 0`) holds every point of one flush, in arrival
//!   order, under the flush's sequence number `seq`.
//! - Sealing turns a run of journal chunks `[a..=b]` into one chunk per series,
//!   keyed `b << 20 | series`, each holding that series' points in arrival order.
//!   (No cursor lies inside a run, so `a` or `b` sort alike for every
//!   reader; `b` puts the new chunks after the run's journal rows rather than
//!   among them, and SQLite rebalances fewer of those big rows' pages:
//!   `bench store --seconds 7200`, written 12.30 → 11.74 B/pt. Chunks sealed
//!   before 2026-12-06 are keyed by `a`.)
//!
//! Sinks read chunks in key order from a [`Cursor`]. A run is sealed only if no
//! sink's cursor falls inside it, so the points after every cursor stay the same
//! points, in the same order per series, whatever the store does to its layout.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::codec;
use super::rollup::{window_start, Agg};
use super::{Cursor, StoreError};
use crate::ops::Metrics;

/// The condition a row of `chunks` (sealed chunks) must meet to be read:
/// it is not past the sealing watermark (`sealed_through` in `counters`:
/// the last journal sequence number whose chunk was sealed), nor of a
/// journal chunk left below it unsealed (`journal_kept`: a sink was
/// part-way through it when a later run was sealed; it is sealed alone
/// later, its chunks hidden until then the same way). A
/// seal writes its chunks in several commits, keyed and marked (`seq_hi`)
/// by its run's last journal chunk, and moves the watermark in its last
/// commit, so its chunks become valid all at once, and those of a seal cut
/// short (an error, a crash) stay hidden until they are removed (at open, or
/// when the run is sealed again). Valid chunks therefore sort before every
/// journal chunk. The subquery is evaluated once per statement.
macro_rules! valid {
    () => {
        "(seq_hi <= (SELECT value FROM counters WHERE name = 'sealed_through')
          AND seq_hi NOT IN (SELECT key >> 20 FROM journal_kept))"
    };
}

mod chain;
use chain::{ChainReader, ChainWriter};
mod clock;
pub use clock::{ClockStep, Correction, CorrectionRow};
mod dead;
pub use dead::DeadLetterRow;
mod segments;
use segments::{Frame, Sealed, Segments};
mod uplink;
use crate::point::{Batch, Point, SeriesKey, SeriesMap, SeriesMemo};
pub use uplink::{DegradedPending, DegradedRange};

/// Bits of a chunk key given to the series id: at most about a million series.
pub const SERIES_BITS: u32 = 20;
const SERIES_MASK: i64 = (1 << SERIES_BITS) - 1;
/// Largest series id.
pub const MAX_SERIES: u32 = (1 << SERIES_BITS) - 1;
/// Compaction merges a series' chunks up to this many points: the block size at
/// which the codec reaches its ratio (see ../shared/data/README.md).
pub const TARGET_CHUNK_POINTS: i64 = 8192;
/// Chunks of one size class merged at once: each point of a tiny chunk is
/// rewritten about log4(TINY / points per seal) times before it is in a
/// full block.
const FANOUT: usize = 4;
/// Chunks of fewer points merge by size class ([`FANOUT`] at a time); larger
/// ones wait until they fill a block (at most 12 of them wait). Before
/// 2026-12-07 every size merged by class: the 600-point chunks a series at
/// one point a second seals every 10 minutes went 600 -> 2400 -> 7200, each
/// point merged twice, and compaction's share of `bench store --seconds
/// 7200` was the one that grew with time.
const TINY: i64 = TARGET_CHUNK_POINTS / 16;
/// A merge of at least this many points is a full block, never merged
/// again: compaction plans from the chunks short of it (`chunks_short`).
const FULL: i64 = TARGET_CHUNK_POINTS * 3 / 4;
/// SQLite's page cache, KiB (its default is 2000). The hot pages are the
/// chunk and index pages a flush appends to, a few dozen; a miss is
/// usually served by the kernel's page cache rather than the card. What the
/// rest held showed as peak RSS (`tidegate bench footprint`): a seal's
/// reads filled it. 2026-12-06, 256 against 1024 KiB: a 660 s footprint at
/// 10k points/s (side by side) peaked at 15.1 against 15.7 MiB, 5.6 against
/// 6.7 MiB anonymous at the end, CPU alike; `bench store` ingested alike
/// (1.74–1.84M against 1.51–1.85M points per CPU second, alternating, a
/// busy hour) and wrote 15.28 against 15.15 B/pt; queries alike.
const CACHE_KIB: i64 = 256;
/// Most points in one sealing run: the journal it turns into one chunk per series.
const SEAL_MAX_POINTS: usize = 8 * 1024 * 1024;
/// Most points held in memory while sealing: a large run is sealed in passes,
/// each keeping only a group of series, so chunks are large and memory small
/// (16 bytes a point: 1 MiB). Each pass reads the whole run again and
/// commits once: in a 660 s footprint at 10k points/s (2026-12-04) 64K
/// points a pass peaked at 16.2 MiB against 17.0 at 128K and 16.3 at 32K,
/// for 15-20% more CPU in sealing and 15.1 B/pt written against 14.4
/// (`bench store --series 10000 --rate 10000 --seconds 660`).
const SEAL_PASS_POINTS: usize = 64 * 1024;
/// Most points a seal step commits at once, pass after pass (the columns
/// reused): each commit rewrites page 1, the right edge of the chunks
/// table and the index leaves of its series, and the rollback journal
/// holds each of those pages too. `bench store --series 10000 --rate 10000
/// --seconds 3600 --journal rollback`: seals wrote 2.05 B/pt committing
/// each pass, 1.28 at 256K, 1.17 at 512K, 1.10 at 1M; the longest seal
/// step 0.2, 0.29 and 0.53 s (compaction's: 0.2 s).
const SEAL_COMMIT_POINTS: usize = 512 * 1024;
/// Fewest points of a journal row cut from a flush: a flush of at least
/// twice this many is cut, by series ids, into rows of consecutive sequence
/// numbers committed together. Each pass of a seal reads only the rows
/// that hold its series: one row a flush made each of the ~100 passes of a
/// 10-minute seal at 10k series read the whole journal of the run, a fifth
/// of `bench store`'s CPU. Rows of 512 points sealed as fast but wrote 14%
/// more bytes (a ~3.5 KB row takes a page to itself); 4096 sealed slower.
const JOURNAL_PART_POINTS: usize = 2048;

/// Points whose merges a compaction step commits in one transaction.
/// `bench store --seconds 7200`: written 14.27 B/pt with steps of 64k
/// points, 12.68 with 256k, 12.30 with 1M (neighbouring merges share pages).
pub const COMPACT_STEP_POINTS: usize = 1 << 20;
/// Most points a compaction step decodes and encodes, outside any
/// transaction; the merges wait in memory for the commit of
/// [`COMPACT_STEP_POINTS`]. Full blocks take `Effort::Thorough` (~0.8M
/// points a second here): 1M points in one step held flushes and reads for
/// 1.26 s (median, `bench store --seconds 14400`, 2026-12-07).
const COMPACT_ENCODE_POINTS: usize = 128 * 1024;
/// Most encoded bytes a compaction step holds for its commit: 1M points of
/// the synthetic fleet's blocks take ~0.5 MB, of the NAB recordings' ~2.5 MB,
/// which would sit in the agent's memory meanwhile.
const COMPACT_STEP_BYTES: usize = 512 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS series (
    id   INTEGER PRIMARY KEY,
    key  TEXT NOT NULL UNIQUE
);
-- Sealed (and merged) chunks: one series each. Journal chunks were rows of
-- this table, with series 0, until 2026-12-06 (moved at open).
CREATE TABLE IF NOT EXISTS chunks (
    id     INTEGER PRIMARY KEY,   -- seq << 20 | series
    series INTEGER NOT NULL,
    seq_hi INTEGER NOT NULL,      -- last journal seq the chunk covers
    ts_min INTEGER NOT NULL,
    ts_max INTEGER NOT NULL,
    count  INTEGER NOT NULL,
    data   BLOB NOT NULL
);
-- Chunks by series, in two partial indexes: those short of a full block
-- (what seals add and compaction takes away, a bounded few a series) and
-- full blocks (compaction's, every couple of hours a busy series). In one
-- index of both, each seal touched a leaf a series in an index that grows
-- with the store's age. `chunks_by_series`, that one index, until
-- 2026-12-07, and `chunks_filling` on (series, ts_max) for a day: dropped
-- at open. Keyed by series alone, an entry of `chunks_short` is ~40% smaller
-- (rowid order is key order within a series) and the pages a seal touches
-- as many fewer; its queries filter a dozen rows a series by time.
DROP INDEX IF EXISTS chunks_by_series;
DROP INDEX IF EXISTS chunks_filling;
CREATE INDEX IF NOT EXISTS chunks_short ON chunks (series) WHERE series != 0 AND count < 6144;
CREATE INDEX IF NOT EXISTS chunks_full ON chunks (series, ts_max) WHERE series != 0 AND count >= 6144;
-- The journal's table until 2026-12-07, empty since: the journal is kept
-- in append-only segment files beside the database (`<db>.tgj/`), where a
-- flush writes about its data once instead of SQLite's pages and their
-- rollback journal. Rows found here at open move to the files.
CREATE TABLE IF NOT EXISTS journal (
    id     INTEGER PRIMARY KEY,   -- seq << 20
    ts_min INTEGER NOT NULL,
    ts_max INTEGER NOT NULL,
    count  INTEGER NOT NULL,
    data   BLOB NOT NULL
);
-- Journal chunks below the sealing watermark not sealed yet (see `valid!`).
CREATE TABLE IF NOT EXISTS journal_kept (
    key INTEGER PRIMARY KEY
);
-- Rollup windows of raw chunks that eviction removed. While raw points
-- exist their windows are computed from them; only what eviction takes is
-- kept here, compressed, up to 64 windows a row per series and tier. A row
-- of chunks some sink lacked has `chunk` set (see `degraded`).
CREATE TABLE IF NOT EXISTS rollup_chunks (
    id        INTEGER PRIMARY KEY,
    tier      INTEGER NOT NULL,   -- window width in seconds
    series    INTEGER NOT NULL,
    start_min INTEGER NOT NULL,
    start_max INTEGER NOT NULL,
    windows   INTEGER NOT NULL,
    data      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rollup_chunks_by_series ON rollup_chunks (series, tier, start_max);
CREATE TABLE IF NOT EXISTS degraded (
    sink    TEXT NOT NULL,
    series  INTEGER NOT NULL,
    ts_min  INTEGER NOT NULL,
    ts_max  INTEGER NOT NULL,
    points  INTEGER NOT NULL     -- raw points evicted before this sink had them
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    sink   TEXT PRIMARY KEY,
    key    INTEGER NOT NULL,
    offset INTEGER NOT NULL
);
";

/// The condition of each partial index of the chunks table by series
/// (`chunks_short` and `chunks_full`, [`FULL`] points). SQLite uses a
/// partial index only when the query itself implies the index's condition,
/// so queries spell it out (without it, every query by series scanned the
/// whole table: 4.4 ms at 10k series).
macro_rules! short {
    () => {
        "series != 0 AND count < 6144"
    };
}
macro_rules! full {
    () => {
        "series != 0 AND count >= 6144"
    };
}
/// `SELECT $cols` of series `?1`'s valid chunks matching `$tail`: one
/// select an index, their rows together.
macro_rules! by_series {
    ($cols:literal, $tail:literal) => {
        concat!(
            "SELECT ",
            $cols,
            " FROM chunks WHERE series = ?1 AND ",
            short!(),
            $tail,
            " AND ",
            valid!(),
            " UNION ALL SELECT ",
            $cols,
            " FROM chunks WHERE series = ?1 AND ",
            full!(),
            $tail,
            " AND ",
            valid!()
        )
    };
}

/// Sealed chunks that may hold points of series `?1` in `[?2, ?3]`, in key
/// order (the journal's follow them, see [`Store::each_chunk`]).
const SERIES_CHUNKS: &str = concat!(
    by_series!("id, data", " AND ts_max >= ?2 AND ts_min <= ?3"),
    " ORDER BY id"
);
/// The oldest sealed timestamp of series `?1`.
const SERIES_OLDEST: &str = concat!("SELECT MIN(ts_min) FROM (", by_series!("ts_min", ""), ")");
/// Bytes of series `?1`'s sealed chunks.
const SERIES_BYTES: &str = concat!(
    "SELECT COALESCE(SUM(n), 0) FROM (",
    by_series!("length(data) AS n", ""),
    ")"
);

/// The chunks compaction plans from: those short of a full block, a series
/// at a time in key order (the order of `chunks_short`: no sort).
const PLAN_CHUNKS: &str = concat!(
    "SELECT series, id, count, ts_max FROM chunks WHERE ",
    short!(),
    " AND ",
    valid!(),
    " ORDER BY series, id"
);

/// A sink's two positions: what it has acknowledged, and what it has been handed.
#[derive(Clone, Copy, Debug, Default)]
struct SinkPos {
    acked: Cursor,
    read: Cursor,
    /// The acknowledged cursor changed since it was last persisted.
    dirty: bool,
    /// A reader of a sink's (its live stream), not a sink: never persisted,
    /// never owed degraded ranges.
    ephemeral: bool,
}

/// Limits the store keeps to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Bytes of the store's files.
    pub max_disk_bytes: u64,
    /// Raw points older than this (ns) are evicted.
    pub max_age_ns: Option<i64>,
    /// Free space the file system must keep.
    pub min_free_disk: u64,
    /// Rows of the dead-letter table kept (the newest); 0 keeps none.
    pub dead_letters: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_disk_bytes: u64::MAX,
            max_age_ns: None,
            min_free_disk: 0,
            dead_letters: 10_000,
        }
    }
}

/// What one eviction pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Raw points removed.
    pub raw_points: u64,
    /// Rollup windows removed.
    pub windows: u64,
}

/// Whether a flush saves the sinks' moved cursors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursors {
    Save,
    Later,
}

/// Points appended but not yet flushed.
#[derive(Default)]
struct Pending {
    series: Vec<u32>,
    ts: Vec<i64>,
    values: Vec<f64>,
}

/// A seal under way (see [`Store::seal_step`]).
#[derive(Default)]
struct SealState {
    /// The newest journal chunk this seal takes; `None`: no seal under way.
    upto: Option<i64>,
    /// The run being sealed.
    job: Option<SealJob>,
    /// Most points a step gathers ([`SEAL_PASS_POINTS`]; smaller in tests).
    pass_points: usize,
    /// Most points a step commits ([`SEAL_COMMIT_POINTS`]; in most tests
    /// 1: a group a step).
    commit_points: usize,
}

/// A round of compaction under way (see [`Store::compact_step`]).
#[derive(Default)]
struct CompactState {
    /// The chunk ids of the merges planned, one group after another (flat:
    /// ~3,300 merges a round at 10k series).
    ids: Vec<i64>,
    /// Where each group ends in `ids`.
    ends: Vec<usize>,
    /// Groups done (or skipped) so far.
    done: usize,
    /// The newest point stored when the round was planned ("settled" is judged by it).
    now: i64,
    /// Merges of the round left for the next (a cursor moved into them).
    skipped: usize,
    /// Merges encoded, waiting for the step that commits them.
    ready: Vec<Merged>,
    /// Points in `ready`, and their encoded bytes.
    ready_points: usize,
    ready_bytes: usize,
}

/// A merge encoded outside the transaction that will replace its inputs.
struct Merged {
    /// Where its input chunks' ids lie in [`CompactState::ids`].
    group: std::ops::Range<usize>,
    seq_hi: i64,
    ts_min: i64,
    ts_max: i64,
    count: usize,
    data: Vec<u8>,
}

impl CompactState {
    /// The ids of the next group of the plan, if any is left.
    fn next_group(&mut self) -> Option<std::ops::Range<usize>> {
        let end = *self.ends.get(self.done)?;
        let start = self.done.checked_sub(1).map_or(0, |k| self.ends[k]);
        self.done += 1;
        Some(start..end)
    }

    fn remaining(&self) -> bool {
        self.done < self.ends.len()
    }

    /// Drops the merges encoded and not committed: their inputs are about
    /// to change in place (a clock correction re-stamps them). They are
    /// planned again next round.
    fn drop_ready(&mut self) {
        self.skipped += self.ready.len();
        self.ready.clear();
        self.ready_points = 0;
        self.ready_bytes = 0;
    }

    /// Whether the merges encoded fill a step's commit.
    fn ready_full(&self) -> bool {
        self.ready_points >= COMPACT_STEP_POINTS || self.ready_bytes >= COMPACT_STEP_BYTES
    }
}

/// One run of journal chunks being sealed.
struct SealJob {
    /// Its journal chunks' keys, ascending.
    run: Vec<i64>,
    /// Points per series; empty until the count step.
    counts: BTreeMap<u32, usize>,
    /// The lowest and highest series of each chunk of `run` (count step):
    /// a pass reads only the chunks that hold its series.
    spans: Vec<(u32, u32)>,
    /// Groups of series not sealed yet; once empty, the last step is next.
    groups: std::collections::VecDeque<RangeInclusive<u32>>,
    /// The flat columns a group is gathered into, kept from step to step.
    ts: Vec<i64>,
    vals: Vec<f64>,
}

impl SealJob {
    fn new(run: Vec<i64>) -> SealJob {
        SealJob {
            run,
            counts: BTreeMap::new(),
            spans: Vec::new(),
            groups: Default::default(),
            ts: Vec::new(),
            vals: Vec::new(),
        }
    }
}

/// The ring store. Not `Sync`: one task owns it (see [`super::spawn`]).
pub struct Store {
    conn: Connection,
    path: PathBuf,
    ids: SeriesMap<u32>,
    /// `ids` remembered on the keys (a lookup a point).
    memo: SeriesMemo,
    /// Series keys by id; index 0 is unused.
    keys: Vec<SeriesKey>,
    /// Ids assigned since the last successful flush.
    unsaved_series: Vec<u32>,
    /// The journal: flushed points not yet sealed, in append-only segment
    /// files beside the database, indexed by key in memory.
    journal: Segments,
    /// The state the next journal frame is coded against.
    chain: ChainWriter,
    /// Each sink reader's journal reader, kept from read to read: its next
    /// frame then decodes alone, not after its group's earlier frames again
    /// (a sink's live and backfill lanes read at two places, by two names).
    chain_readers: HashMap<String, ChainReader>,
    /// Which journal chunks are sealed (as the database says).
    sealed: Sealed,
    pending: Pending,
    /// Rejected input waiting for the next flush.
    pending_dead: Vec<crate::point::DeadLetter>,
    next_seq: i64,
    /// First journal sequence number of this boot (see `engine/clock.rs`).
    boot_seq: i64,
    sinks: HashMap<String, SinkPos>,
    /// Rollup window widths, seconds, finest first.
    tiers: Vec<i64>,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Set when `store.journal = "auto"`.
    auto_journal: Option<AutoJournal>,
    /// Per series, the degraded rows eviction may still extend (see
    /// [`OpenDegraded`]). In memory only: after a restart groups start anew.
    open_degraded: HashMap<u32, OpenDegraded>,
    seal: SealState,
    compaction: CompactState,
}

/// The newest degraded rows of one series, one per sink that lacked the
/// chunks, and their rollup rows (linked by `group`, the first chunk's id).
/// The next evicted chunk of the series that the same sinks lack joins them
/// instead of adding a row per sink and tier: a row per chunk cost more than
/// the windows it kept (64 B per degraded row with its index entry, for a
/// chunk of a few seconds).
#[derive(Debug)]
struct OpenDegraded {
    group: i64,
    /// (sink, row id in `degraded`), in the order of `Store::sinks`' cursors.
    rows: Vec<(String, i64)>,
    /// Finest-tier windows in the group.
    windows: usize,
}

/// How SQLite keeps a commit atomic (`store.journal`). Which writes less
/// depends on the rate (`tidegate bench store --journal`): a flush of many
/// points adds new pages, which WAL writes twice (log, checkpoint) and a
/// rollback journal once; a flush of a few points rewrites the same few pages,
/// which a rollback journal writes twice every commit and WAL's checkpoint
/// coalesces. Measured crossover: about a thousand points a second.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum JournalMode {
    /// WAL while commits carry fewer than about a thousand points, the
    /// rollback journal above, switched by the average commit over the last
    /// 10 s (to rollback) or minute (back to WAL).
    #[default]
    Auto,
    /// Write-ahead log: queries never hold up a flush; best below about a
    /// thousand points a commit (a commit a second, unless MQTT QoS 1
    /// acknowledgements ask for more).
    Wal,
    /// A rollback journal (`TRUNCATE`): new pages written once, so about half
    /// the writes at thousands of points a commit; but each commit writes
    /// the pages it changes twice, so many small commits write more than in
    /// WAL. A query beside the agent briefly holds up a flush.
    Rollback,
}

impl JournalMode {
    fn pragma(self) -> &'static str {
        match self {
            JournalMode::Rollback => "TRUNCATE",
            JournalMode::Wal | JournalMode::Auto => "WAL",
        }
    }
}

/// How long the writer waits for a reader's lock before a flush fails (and
/// is retried): a query beside the agent holds it for milliseconds.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `JournalMode::Auto`: in WAL the commits are judged over this long, so a
/// busy gateway's first seconds are not written twice for long...
const AUTO_WINDOW_UP: std::time::Duration = std::time::Duration::from_secs(10);
/// ...with the rollback journal over this long, so a burst's pause does not
/// switch back and forth...
const AUTO_WINDOW_DOWN: std::time::Duration = std::time::Duration::from_secs(60);
/// ...and the rollback journal taken above this many points a commit on
/// average: what bytes written depend on. The rollback journal writes a
/// commit's new pages once where WAL writes them twice, but the pages it
/// changes (a B-tree's last leaf, the header) twice each commit where WAL's
/// checkpoint writes them once for many. `bench store`, a commit a second:
/// WAL 25.2 B/pt written against 18.7 at 3,000 points, a tie at 1,000.
/// `bench compare`, QoS 1 at 10k points/s (about 13 commits a second of
/// ~750 points): WAL 36 B/pt, rollback 67 (judged by points a second, this
/// switched to rollback)...
const AUTO_TO_ROLLBACK: f64 = 1500.0;
/// ...and WAL again below this many (the gap keeps commits near the
/// crossover from switching back and forth).
const AUTO_TO_WAL: f64 = 700.0;

/// What `JournalMode::Auto` tracks between flushes.
#[derive(Debug)]
struct AutoJournal {
    /// The mode SQLite is in (`Wal` or `Rollback`).
    on: JournalMode,
    since: std::time::Instant,
    points: u64,
    commits: u64,
}

impl Store {
    /// Sets the journal mode: at start, before anyone else opens the file.
    /// `Auto` starts in WAL; flushes switch it as the rate moves.
    pub fn set_journal_mode(&mut self, mode: JournalMode) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "journal_mode", mode.pragma())?;
        self.auto_journal = (mode == JournalMode::Auto).then(|| AutoJournal {
            on: JournalMode::Wal,
            since: std::time::Instant::now(),
            points: 0,
            commits: 0,
        });
        Ok(())
    }

    /// `JournalMode::Auto`: counts a commit and its points and, once a
    /// window has passed, switches SQLite's mode if the average commit has
    /// crossed over. A switch needs the file to itself (a `tidegate query`
    /// in WAL mode holds it); it is tried without waiting, and again a
    /// window later.
    fn adapt_journal(&mut self, points: usize) {
        let Some(auto) = &mut self.auto_journal else {
            return;
        };
        auto.points += points as u64;
        auto.commits += 1;
        let elapsed = auto.since.elapsed();
        let window = match auto.on {
            JournalMode::Rollback => AUTO_WINDOW_DOWN,
            _ => AUTO_WINDOW_UP,
        };
        if elapsed < window {
            return;
        }
        let per_commit = auto.points as f64 / auto.commits as f64;
        let rate = auto.points as f64 / elapsed.as_secs_f64();
        let on = auto.on;
        auto.since = std::time::Instant::now();
        auto.points = 0;
        auto.commits = 0;
        let want = match on {
            JournalMode::Wal if per_commit > AUTO_TO_ROLLBACK => JournalMode::Rollback,
            JournalMode::Rollback if per_commit < AUTO_TO_WAL => JournalMode::Wal,
            _ => return,
        };
        // Without waiting: a reader holding the file defers the switch.
        let switched = self
            .conn
            .busy_timeout(std::time::Duration::ZERO)
            .and_then(|()| {
                let mode = format!("PRAGMA journal_mode = {}", want.pragma());
                self.conn.query_row(&mode, [], |r| r.get::<_, String>(0))
            })
            .map(|now| now.eq_ignore_ascii_case(want.pragma()));
        let _ = self.conn.busy_timeout(BUSY_WAIT);
        match (switched, &mut self.auto_journal) {
            (Ok(true), Some(auto)) => {
                auto.on = want;
                tracing::info!(
                    "store journal: {want:?} at {per_commit:.0} points a commit, {rate:.0} points/s \
                     (fewer bytes written with commits this size; store.journal fixes the mode)"
                );
            }
            _ => tracing::debug!(
                "store journal: staying {on:?} at {per_commit:.0} points a commit: another process has the file open"
            ),
        }
    }

    #[cfg(test)]
    /// The mode SQLite is in now (`Wal` or `Rollback`).
    fn journal_mode(&self) -> Result<JournalMode, StoreError> {
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        Ok(if mode.eq_ignore_ascii_case("wal") {
            JournalMode::Wal
        } else {
            JournalMode::Rollback
        })
    }

    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        }
        let mut conn = Connection::open(path)?;
        // WAL by default (see JournalMode). FULL: a committed flush survives
        // power loss, which is the durability contract.
        conn.pragma_update(None, "journal_mode", JournalMode::default().pragma())?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // After a checkpoint the WAL is cut back to this, so it cannot hoard space.
        conn.pragma_update(None, "journal_size_limit", 4 << 20)?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        // A query reading beside the agent holds a lock for milliseconds:
        // the writer waits for it rather than failing a flush.
        conn.busy_timeout(BUSY_WAIT)?;
        conn.execute_batch(SCHEMA)?;
        uplink::migrate(&conn)?;
        let mut hidden = migrate_journal(&mut conn)?;
        let dir = journal_dir(path);
        let (mut journal, damage) = Segments::open(&dir, &sealed(&conn)?)?;
        for d in &damage {
            if d.cut {
                tracing::info!("store journal: {d}, the write a stop cut short (nothing flushed before it is lost)");
            } else {
                tracing::error!(
                    "store journal damaged: {d}; the points after it in that file are lost, \
                     the rest of the journal is kept (the file stays for inspection until sealed)"
                );
            }
        }
        move_journal_rows(&mut conn, &mut journal)?;
        let mut store = Self::with_connection(conn, path, metrics, journal)?;
        let (points, broken) = Self::drop_broken_groups(&mut store.journal);
        if let Some(first) = broken.first() {
            tracing::error!(
                "store journal: {} chunks from {first} on ({points} points) were coded against \
                 chunks lost to the damage above and are lost with them; the rest of the journal is kept",
                broken.len()
            );
        }
        hidden += store.undo_cut_seal()?;
        if hidden > 0 {
            tracing::info!(
                chunks = hidden,
                "removed the chunks of a seal cut short by the last stop; the journal they came from is kept and sealed again"
            );
        }
        store.note_boot()?;
        Ok(store)
    }

    /// Removes the chunks a seal cut short left (hidden: past the sealing
    /// watermark) and returns how many.
    fn undo_cut_seal(&mut self) -> Result<usize, StoreError> {
        // A run's sealed chunks are keyed by its last journal chunk: those of
        // a run past the watermark lie after every valid chunk's key, those
        // of a kept chunk's right after its key.
        let mut n = self
            .conn
            .prepare_cached("DELETE FROM chunks WHERE id > ?1")?
            .execute([self.sealed.through | SERIES_MASK])?;
        for &key in &self.sealed.kept {
            n += drop_hidden(&self.conn, key..=key)?;
        }
        Ok(n)
    }

    /// Opens the store; if it is corrupt or unreadable, moves it aside under a
    /// timestamped name and starts a fresh one, so a damaged SD card never puts
    /// the agent in a crash loop. Returns the store and the path moved aside.
    pub fn open_or_recover(
        path: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<(Store, Option<PathBuf>), StoreError> {
        let attempt = Self::open(path, metrics.clone()).and_then(|st| {
            let check: String = st.conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            if check == "ok" {
                Ok(st)
            } else {
                Err(StoreError::Corrupt(check))
            }
        });
        match attempt {
            Ok(st) => Ok((st, None)),
            Err(StoreError::Io { path, source }) => Err(StoreError::Io { path, source }),
            Err(e) => {
                let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string()
                    .replace(':', "");
                let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
                for suffix in ["", "-wal", "-shm", JOURNAL_SUFFIX] {
                    let from = PathBuf::from(format!("{}{suffix}", path.display()));
                    if from.exists() {
                        let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                        std::fs::rename(&from, &to).map_err(|source| StoreError::Io {
                            path: from.clone(),
                            source,
                        })?;
                    }
                }
                tracing::error!(
                    store = %path.display(), moved_to = %aside.display(),
                    "the store is unreadable ({e}); it was moved aside and a fresh store started. \
                     Unsynced points in the old file are not sent; inspect it with `sqlite3` or delete it once you no longer need it"
                );
                Ok((Self::open(path, metrics)?, Some(aside)))
            }
        }
    }

    /// Opens an existing store for reading only, beside a running agent.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no store here"),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The agent's commit holds the file for milliseconds: wait for it.
        conn.busy_timeout(BUSY_WAIT)?;
        if !table_exists(&conn, "journal")? || !table_exists(&conn, "journal_kept")? {
            return Err(StoreError::Outdated);
        }
        // The journal's files are read before the database: a seal that
        // ends in between turned frames read here into sealed chunks, which
        // the watermark read below shows instead (those frames are dropped),
        // and a file unlinked before was sealed before. One read transaction
        // then holds the watermark and the chunks at the same moment.
        let mut journal = Segments::open_read_only(&journal_dir(path), &Sealed::none())?;
        conn.execute_batch("BEGIN")?;
        journal.forget(&sealed(&conn)?);
        let unmoved: bool =
            conn.query_row("SELECT EXISTS (SELECT 1 FROM journal)", [], |r| r.get(0))?;
        if unmoved {
            return Err(StoreError::Outdated);
        }
        let mut store = Self::with_connection(conn, path, Metrics::new("query"), journal)?;
        // What the agent dropped at its open (damage), or a group whose
        // start a seal took between the scan and the watermark read.
        Self::drop_broken_groups(&mut store.journal);
        Ok(store)
    }

    fn with_connection(
        conn: Connection,
        path: &Path,
        metrics: Arc<Metrics>,
        journal: Segments,
    ) -> Result<Store, StoreError> {
        let mut keys = vec![SeriesKey::from_canonical("")];
        let mut ids = SeriesMap::default();
        {
            let mut stmt = conn.prepare("SELECT id, key FROM series ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (id, key) = row?;
                let key = SeriesKey::from_canonical(&key);
                while keys.len() < id as usize {
                    keys.push(SeriesKey::from_canonical(""));
                }
                keys.push(key.clone());
                ids.insert(key, id);
            }
        }
        // Sequence numbers go on past everything ever handed out, even once
        // eviction has emptied both tables: below the watermark a new run's
        // chunks would count as sealed before their seal ended, and keys
        // before a sink's cursor would never be sent to it.
        let sealed = self::sealed(&conn)?;
        let stored: Option<i64> = conn.query_row(
            "SELECT MAX(s) FROM (SELECT MAX(seq_hi) AS s FROM chunks
             UNION ALL SELECT MAX(key) >> 20 FROM cursors)",
            [],
            |r| r.get(0),
        )?;
        let max_seq = stored.max(Some(sealed.through >> SERIES_BITS)).max(
            journal
                .frames()
                .keys()
                .next_back()
                .map(|k| k >> SERIES_BITS),
        );
        let store = Store {
            conn,
            path: path.to_path_buf(),
            ids,
            memo: SeriesMemo::store(),
            keys,
            unsaved_series: Vec::new(),
            journal,
            chain: ChainWriter::default(),
            chain_readers: HashMap::new(),
            sealed,
            pending: Pending::default(),
            pending_dead: Vec::new(),
            next_seq: max_seq.unwrap_or(0) + 1,
            boot_seq: 0,
            sinks: HashMap::new(),
            tiers: vec![60, 3600],
            limits: Limits::default(),
            metrics,
            auto_journal: None,
            open_degraded: HashMap::new(),
            seal: SealState {
                pass_points: SEAL_PASS_POINTS,
                commit_points: SEAL_COMMIT_POINTS,
                ..SealState::default()
            },
            compaction: CompactState::default(),
        };
        store
            .metrics
            .store
            .series
            .store((store.keys.len() - 1) as u64, Relaxed);
        store.update_size();
        Ok(store)
    }

    /// Takes points into the in-memory journal; they are durable after the next [`flush`](Self::flush).
    pub fn append(&mut self, batch: &Batch) -> Result<(), StoreError> {
        for p in &batch.points {
            let id = self.series_id(&p.series)?;
            self.pending.series.push(id);
            self.pending.ts.push(p.ts_ns);
            self.pending.values.push(p.value);
        }
        self.metrics
            .store
            .points_appended
            .fetch_add(batch.len() as u64, Relaxed);
        Ok(())
    }

    fn series_id(&mut self, key: &SeriesKey) -> Result<u32, StoreError> {
        if let Some(id) = self.memo.get(key) {
            return Ok(id);
        }
        if let Some(&id) = self.ids.get(key) {
            self.memo.set(key, id);
            return Ok(id);
        }
        let id = self.keys.len() as u32;
        if id > MAX_SERIES {
            return Err(StoreError::TooManySeries);
        }
        self.keys.push(key.clone());
        self.ids.insert(key.clone(), id);
        self.memo.set(key, id);
        self.unsaved_series.push(id);
        self.metrics.store.series.store(id as u64, Relaxed);
        Ok(id)
    }

    /// Sets the rollup tiers (window widths), e.g. one minute and one hour.
    pub fn set_tiers(&mut self, tiers: &[std::time::Duration]) {
        let mut t: Vec<i64> = tiers.iter().map(|d| d.as_secs().max(1) as i64).collect();
        t.sort_unstable();
        t.dedup();
        self.tiers = t;
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the limits eviction keeps to.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        self.metrics
            .store
            .max_disk_bytes
            .store(limits.max_disk_bytes, Relaxed);
    }

    /// Refreshes the store's gauges shown by `status` and `/metrics`: bytes
    /// used, raw points and their chunk bytes, the oldest raw point and rollup
    /// window, degraded points owed. A few aggregate queries over the chunk
    /// index (blob lengths come from the record headers): run at start and
    /// after each seal, not per flush.
    pub fn refresh_stats(&self) -> Result<(), StoreError> {
        let m = &self.metrics.store;
        m.bytes_used.store(self.used_bytes()?, Relaxed);
        let (points, bytes, oldest): (i64, i64, Option<i64>) = self.conn.query_row(
            concat!(
                "SELECT COALESCE(SUM(count), 0), COALESCE(SUM(length(data)), 0), MIN(ts_min) FROM chunks WHERE ",
                valid!()
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let j = self.journal_sums(..);
        let oldest = min_opt(oldest, j.ts_min);
        m.raw_points.store(points as u64 + j.points, Relaxed);
        m.chunk_bytes.store(bytes as u64 + j.bytes, Relaxed);
        m.oldest_raw_ns.store(oldest.unwrap_or(0), Relaxed);
        // While raw points exist their windows are computed from them, so the
        // oldest window is the older of the kept rollups and the oldest raw.
        let rollup: Option<i64> =
            self.conn
                .query_row("SELECT MIN(start_min) FROM rollup_chunks", [], |r| r.get(0))?;
        let oldest_window = min_opt(rollup, oldest).unwrap_or(0);
        m.oldest_rollup_ns.store(oldest_window, Relaxed);
        let degraded: i64 =
            self.conn
                .query_row("SELECT COALESCE(SUM(points), 0) FROM degraded", [], |r| {
                    r.get(0)
                })?;
        m.degraded_points.store(degraded as u64, Relaxed);
        m.windows_evicted
            .store(self.counter("evicted_windows")?, Relaxed);
        Ok(())
    }

    /// Bytes of live pages in the database and of the journal's files (those
    /// kept for reuse too). Freed pages are reused, so this is what eviction
    /// steers; the WAL is bounded apart (`journal_size_limit`).
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let page_size: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))?;
        let pages: i64 = self
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))?;
        let free: i64 = self
            .conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        Ok(((pages - free) * page_size) as u64 + self.journal.bytes())
    }

    /// Keeps the store within its limits: the oldest raw chunks go first (their
    /// rollups stay, and every sink that had not received them is told which
    /// range to take from a rollup tier instead), rollup windows last, oldest
    /// first. `free_disk` is the file system's free space, if known.
    pub fn evict(&mut self, now_ns: i64, free_disk: Option<u64>) -> Result<Evicted, StoreError> {
        let mut done = Evicted::default();
        if let Some(age) = self.limits.max_age_ns {
            let cutoff = now_ns.saturating_sub(age);
            loop {
                let n = self.evict_raw(Some(cutoff), 256)?;
                if n == 0 {
                    break;
                }
                done.raw_points += n;
            }
        }
        // Evict to 90% of the limit so a full store does not evict on every flush.
        let over = |st: &Store, freed: u64| -> Result<bool, StoreError> {
            let used = st.used_bytes()?;
            let disk_low = free_disk.is_some_and(|f| f + freed < st.limits.min_free_disk);
            Ok(disk_low || used > st.limits.max_disk_bytes)
        };
        if !over(self, 0)? {
            return Ok(done);
        }
        let target = self.limits.max_disk_bytes / 10 * 9;
        let start_used = self.used_bytes()?;
        // Journal files kept for reuse go before any data.
        self.journal.empty_pool()?;
        loop {
            let used = self.used_bytes()?;
            let freed = start_used.saturating_sub(used);
            let disk_low = free_disk.is_some_and(|f| f + freed < self.limits.min_free_disk);
            if used <= target && !disk_low {
                break;
            }
            let n = self.evict_raw(None, 4)?;
            if n > 0 {
                done.raw_points += n;
                continue;
            }
            let w = self.evict_windows(8)?;
            if w == 0 {
                break; // only the journal is left
            }
            done.windows += w;
        }
        // Deletions went to the WAL; fold them in and give the WAL's space back.
        self.checkpoint()?;
        Ok(done)
    }

    /// Deletes up to `max` of the oldest sealed raw chunks (only those ending
    /// before `before`, if given). Returns the raw points removed.
    fn evict_raw(&mut self, before: Option<i64>, max: usize) -> Result<u64, StoreError> {
        let in_flight: Vec<(Cursor, Cursor)> =
            self.sinks.values().map(|p| (p.acked, p.read)).collect();
        // By name: `degrade` compares the lacking sinks of consecutive chunks
        // in order, and a HashMap's order is not one.
        let mut cursors: Vec<(String, Cursor)> = self
            .sinks
            .iter()
            .filter(|(_, p)| !p.ephemeral)
            .map(|(name, p)| (name.clone(), p.acked))
            .collect();
        cursors.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let tiers = self.tiers.clone();
        // Taken out, so an error (the transaction rolled back) leaves no group
        // pointing at rows that were never written.
        let mut open = std::mem::take(&mut self.open_degraded);
        let tx = self.conn.transaction()?;
        // A sink is sending these chunks right now: leave them, they are
        // nearly gone anyway. Excluded in the query, so a long in-flight
        // range cannot fill every LIMIT and stop eviction altogether.
        let mut busy = String::new();
        for (a, r) in &in_flight {
            let end = if r.offset > 0 { r.key + 1 } else { r.key };
            if end > a.key {
                busy.push_str(&format!(" AND NOT (id >= {} AND id < {end})", a.key));
            }
        }
        let victims: Vec<(i64, u32, i64, i64, i64)> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT id, series, ts_min, ts_max, count FROM chunks
                 WHERE series != 0 AND ts_max < ?1{busy} AND {} ORDER BY id LIMIT ?2",
                valid!()
            ))?;
            let rows = stmt.query_map(params![before.unwrap_or(i64::MAX), max as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut removed = 0u64;
        for (id, sid, lo, hi, count) in victims {
            // The sinks that had not received the chunk, and how much of it.
            let lacking: Vec<(&String, i64)> = cursors
                .iter()
                .filter_map(|(sink, acked)| {
                    let unsent = if id > acked.key {
                        count
                    } else if id == acked.key {
                        count - acked.offset as i64
                    } else {
                        0
                    };
                    (unsent > 0).then_some((sink, unsent))
                })
                .collect();
            // Degrade before drop: the chunk's windows of every tier stay.
            let data: Vec<u8> =
                tx.query_row("SELECT data FROM chunks WHERE id = ?1", [id], |r| r.get(0))?;
            let (mut ts, mut vs) = (Vec::new(), Vec::new());
            codec::decode_series(&data, &mut ts, &mut vs)
                .map_err(|e| StoreError::Corrupt(format!("chunk {id}: {e}")))?;
            let windows: Vec<BTreeMap<i64, Agg>> = tiers
                .iter()
                .map(|&tier| aggregate(&ts, &vs, tier * 1_000_000_000))
                .collect();
            if lacking.is_empty() {
                // Every sink had it: its windows join the series' history row.
                open.remove(&sid);
                for (&tier, w) in tiers.iter().zip(windows) {
                    fold_windows(&tx, tier, sid, w)?;
                }
            } else {
                degrade(&tx, &mut open, (id, sid, lo, hi), &lacking, &tiers, windows)?;
            }
            tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")?
                .execute([id])?;
            bump(&tx, "evicted_raw", count)?;
            removed += count as u64;
        }
        tx.commit()?;
        self.open_degraded = open;
        self.metrics
            .store
            .points_evicted
            .fetch_add(removed, Relaxed);
        Ok(removed)
    }

    /// Deletes up to `max` of the oldest rollup chunks, finest tier first;
    /// returns the windows removed.
    fn evict_windows(&mut self, max: usize) -> Result<u64, StoreError> {
        // A group whose rollups go is not extended: its range is lost now.
        self.open_degraded.clear();
        let tx = self.conn.transaction()?;
        let n: i64 = tx.query_row(
            "SELECT COALESCE(SUM(windows), 0) FROM (SELECT windows FROM rollup_chunks ORDER BY tier, start_min LIMIT ?1)",
            [max as i64],
            |r| r.get(0),
        )?;
        tx.execute(
            "DELETE FROM rollup_chunks WHERE id IN (SELECT id FROM rollup_chunks ORDER BY tier, start_min LIMIT ?1)",
            [max as i64],
        )?;
        bump(&tx, "evicted_windows", n)?;
        tx.commit()?;
        Ok(n as u64)
    }

    /// Degraded ranges recorded for `sink`: (series key, ts_min, ts_max, points).
    pub fn degraded(&self, sink: &str) -> Result<Vec<(SeriesKey, i64, i64, u64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT series, ts_min, ts_max, points FROM degraded WHERE sink = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([sink], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, i64>(3)? as u64,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (sid, lo, hi, n) = row?;
            out.push((self.keys[sid as usize].clone(), lo, hi, n));
        }
        Ok(out)
    }

    /// A persisted counter (e.g. `evicted_raw`, `degraded:<sink>`).
    pub fn counter(&self, name: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn
            .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// The rollup tiers' widths in seconds, finest first.
    pub fn tiers(&self) -> &[i64] {
        &self.tiers
    }

    /// Points appended and not yet flushed.
    pub fn pending(&self) -> usize {
        self.pending.ts.len()
    }

    /// Commits the in-memory journal as journal frames, with new series,
    /// dead letters and the sinks' moved cursors. Returns the last frame's
    /// sequence number, if any point was pending. On error nothing is lost
    /// from memory: the next flush retries.
    pub fn flush(&mut self) -> Result<Option<i64>, StoreError> {
        self.flush_with(Cursors::Save)
    }

    /// As [`Store::flush`], but the sinks' moved cursors wait for the next
    /// full flush: what a group commit needs, whose callers wait for their
    /// points, not for cursors. An MQTT source at QoS 1 commits several
    /// times a second; a cursor saved a second later costs a sink at most a
    /// second of points sent again after a crash (the databases take them
    /// as one), and spares the SD card a database commit each time.
    pub fn flush_points(&mut self) -> Result<Option<i64>, StoreError> {
        self.flush_with(Cursors::Later)
    }

    fn flush_with(&mut self, cursors: Cursors) -> Result<Option<i64>, StoreError> {
        let dirty_cursors = cursors == Cursors::Save && self.sinks.values().any(|s| s.dirty);
        if self.pending.ts.is_empty()
            && self.unsaved_series.is_empty()
            && !dirty_cursors
            && self.pending_dead.is_empty()
        {
            return Ok(None);
        }
        let seq = self.next_seq;
        let n = self.pending.ts.len();
        // The database first: the series the journal's frames name must be
        // there before the frames are.
        self.flush_database(cursors)?;
        let p = &self.pending;
        let mut order = codec::by_series(&p.series);
        let parts = journal_parts(&p.series, &order, JOURNAL_PART_POINTS);
        if n > 0 {
            // The parts' encodings end to end, then one append (one sync).
            let mut data = Vec::with_capacity(n * 3);
            let at = self.chain.encode(
                seq,
                (&p.series, &p.ts, &p.values),
                &mut order,
                &parts,
                &mut data,
            );
            let heads: Vec<_> = parts
                .iter()
                .zip(at)
                .enumerate()
                .map(|(k, (part, at))| {
                    let (ts_min, ts_max) =
                        min_max(order[part.clone()].iter().map(|&i| p.ts[i as usize]));
                    (seq + k as i64, ts_min, ts_max, part.len(), at)
                })
                .collect();
            let frames: Vec<Frame<&[u8]>> = heads
                .iter()
                .map(|(seq, ts_min, ts_max, count, at)| Frame {
                    key: seq << SERIES_BITS,
                    ts_min: *ts_min,
                    ts_max: *ts_max,
                    count: *count as u32,
                    data: &data[at.clone()],
                })
                .collect();
            if let Err(e) = self.journal.append(&frames) {
                // The state went on past points the journal does not hold.
                self.chain.restart();
                return Err(e.into());
            }
            self.metrics
                .store
                .journal_bytes
                .fetch_add(data.len() as u64, Relaxed);
        }
        self.metrics.store.flushes.fetch_add(1, Relaxed);
        self.update_size();
        let flushed = (n > 0).then(|| {
            self.pending = Pending::default();
            self.next_seq += parts.len() as i64;
            let seq = self.next_seq - 1;
            self.metrics
                .store
                .points_flushed
                .fetch_add(n as u64, Relaxed);
            seq
        });
        // Judged by the flushes' points, not by what SQLite commits (series
        // and cursors): seals and compaction, whose commits the mode
        // matters for, grow with them.
        self.adapt_journal(n);
        Ok(flushed)
    }

    /// Commits what a flush keeps in the database (new series, dead
    /// letters, and the sinks' cursors unless they wait), if anything.
    fn flush_database(&mut self, cursors: Cursors) -> Result<(), StoreError> {
        let save = cursors == Cursors::Save;
        let dirty_cursors = save && self.sinks.values().any(|s| s.dirty && !s.ephemeral);
        if self.unsaved_series.is_empty() && !dirty_cursors && self.pending_dead.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut ins = tx.prepare_cached("INSERT INTO series (id, key) VALUES (?1, ?2)")?;
            for &id in &self.unsaved_series {
                ins.execute(params![id, self.keys[id as usize].as_str()])?;
            }
        }
        for (name, pos) in self.sinks.iter().filter(|_| save) {
            if pos.dirty && !pos.ephemeral {
                tx.prepare_cached(
                    "INSERT INTO cursors (sink, key, offset) VALUES (?1, ?2, ?3)
                     ON CONFLICT (sink) DO UPDATE SET key = excluded.key, offset = excluded.offset",
                )?
                .execute(params![name, pos.acked.key, pos.acked.offset])?;
            }
        }
        dead::write(&tx, &self.pending_dead, self.limits.dead_letters)?;
        tx.commit()?;
        self.unsaved_series.clear();
        self.pending_dead.clear();
        for pos in self.sinks.values_mut().filter(|_| save) {
            pos.dirty = false;
        }
        Ok(())
    }

    fn update_size(&self) {
        let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let total = size(self.path.clone()) + size(PathBuf::from(wal)) + self.journal.bytes();
        self.metrics.store.bytes_on_disk.store(total, Relaxed);
    }

    /// Where sealing and compaction must not join chunks: every sink's
    /// positions, the start of this boot (a clock step may move this
    /// boot's points, and only them), and each kept journal chunk (its
    /// sealed chunks will sort there: merging the chunks around it would
    /// put its points after later ones of the same series).
    fn boundaries(&self) -> Vec<Cursor> {
        self.sinks
            .values()
            .flat_map(|p| [p.acked, p.read])
            .chain([self.boot_cursor()])
            .chain(
                self.sealed
                    .kept
                    .iter()
                    .map(|&key| Cursor { key, offset: 0 }),
            )
            .collect()
    }

    /// Merges small sealed chunks of a series into larger ones (size-tiered, as
    /// an LSM tree does), so slow series reach the ratio of large blocks: a
    /// whole round, planned by [`Store::compact_begin`] and done at once.
    /// Never merges across a sink's cursor. Returns the merges done; a round's
    /// merges may make chunks that merge again in the next.
    pub fn compact(&mut self) -> Result<usize, StoreError> {
        self.compact_begin()?;
        while self.compact_step()? {}
        Ok(self.compacted())
    }

    /// Merges done so far in the round of compaction under way (or the last).
    pub fn compacted(&self) -> usize {
        self.compaction.done - self.compaction.skipped
    }

    /// Plans a round of compaction: every merge the sealed chunks allow now.
    /// [`Store::compact_step`] does them, a step at a time. Returns how many.
    /// Planned once a round, not a step: the plan reads every small chunk's
    /// row, and planning each step of eight merges made `bench store`
    /// (10k series, 7200 s, each round done) five times slower.
    pub fn compact_begin(&mut self) -> Result<usize, StoreError> {
        // "Now" is the newest point stored, not the wall clock: a replay or a
        // gateway whose clock is wrong still compacts by the data's own time.
        let sealed: Option<i64> =
            self.conn
                .query_row("SELECT MAX(ts_max) FROM chunks", [], |r| r.get(0))?;
        let now = sealed.max(self.journal_sums(..).ts_max).unwrap_or(0);
        let cursors = self.boundaries();
        let mut plan = CompactState {
            now,
            ..CompactState::default()
        };
        {
            let mut stmt = self.conn.prepare_cached(PLAN_CHUNKS)?;
            let mut rows = stmt.query([])?;
            // A series at a time (no merge joins two): a store of months holds
            // hundreds of thousands of chunks below the target, most of which
            // will never merge again; all at once they did not fit in memory.
            let mut series: Vec<ChunkInfo> = Vec::new();
            loop {
                let chunk = match rows.next()? {
                    Some(r) => Some(ChunkInfo {
                        series: r.get(0)?,
                        id: r.get(1)?,
                        count: r.get(2)?,
                        ts_max: r.get(3)?,
                    }),
                    None => None,
                };
                let next_series = chunk.map(|c| c.series);
                if series.last().is_some_and(|l| next_series != Some(l.series)) {
                    for group in plan_merges(&series, &cursors, now) {
                        plan.ids.extend_from_slice(&group);
                        plan.ends.push(plan.ids.len());
                    }
                    series.clear();
                }
                match chunk {
                    Some(c) => series.push(c),
                    None => break,
                }
            }
        }
        let planned = plan.ends.len();
        self.compaction = plan;
        Ok(planned)
    }

    /// Does the next step of the round begun by [`Store::compact_begin`]:
    /// encodes up to [`COMPACT_ENCODE_POINTS`] points of merges, held in
    /// memory, or, once [`COMPACT_STEP_POINTS`] points or
    /// [`COMPACT_STEP_BYTES`] are held (or the plan is done), commits them
    /// in one transaction. Returns whether steps remain. A merge that a
    /// sink's cursor has moved into since the plan, or whose chunks are
    /// gone, is left for the next round. On an error the round is dropped
    /// (what its step wrote is undone).
    pub fn compact_step(&mut self) -> Result<bool, StoreError> {
        let step = self.compact_step_inner();
        if step.is_err() {
            self.compaction = CompactState::default();
        }
        step
    }

    fn compact_step_inner(&mut self) -> Result<bool, StoreError> {
        let cursors = self.boundaries();
        let plan = &mut self.compaction;
        if !plan.remaining() && plan.ready.is_empty() {
            return Ok(false);
        }
        // Encode merges a step at a time with no transaction open, so that
        // flushes go on between steps; commit them together (below).
        if plan.remaining() && !plan.ready_full() {
            let mut points = 0;
            while points < COMPACT_ENCODE_POINTS && !plan.ready_full() {
                let Some(group) = plan.next_group() else {
                    break;
                };
                let merged = if splits(&cursors, &plan.ids[group.clone()]) {
                    None
                } else {
                    Self::encode_merge(&self.conn, plan, group)?
                };
                match merged {
                    Some(m) => {
                        points += m.count;
                        plan.ready_points += m.count;
                        plan.ready_bytes += m.data.len();
                        plan.ready.push(m);
                    }
                    None => plan.skipped += 1,
                }
            }
            return Ok(true);
        }
        // One commit a step: a merge alone commits page 1, the leaves of the
        // runs it reads from and the index, each copied to the rollback
        // journal first, ~80 KB for ~1 KB of merged data; merges of
        // neighbouring series in one commit share those pages. `bench store
        // --seconds 7200 --journal rollback`: 47.8 B/pt written with a
        // commit a merge (see COMPACT_STEP_POINTS for larger steps).
        let tx = self.conn.transaction()?;
        let mut merged = 0;
        for m in std::mem::take(&mut plan.ready) {
            let ids = &plan.ids[m.group.clone()];
            // Sinks read on, and eviction may have taken an input, since it
            // was encoded: then the merge waits for the next round.
            if splits(&cursors, ids) || !Self::inputs_intact(&tx, ids, m.count)? {
                plan.skipped += 1;
                continue;
            }
            let mut del = tx.prepare_cached("DELETE FROM chunks WHERE id = ?1")?;
            for &id in ids {
                del.execute([id])?;
            }
            tx.prepare_cached(
                "INSERT INTO chunks (id, series, seq_hi, ts_min, ts_max, count, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![ids[0], ids[0] & SERIES_MASK, m.seq_hi, m.ts_min, m.ts_max, m.count as i64, m.data])?;
            merged += m.data.len() as u64;
        }
        tx.commit()?;
        self.metrics.store.merged_bytes.fetch_add(merged, Relaxed);
        (plan.ready_points, plan.ready_bytes) = (0, 0);
        Ok(plan.remaining())
    }

    /// Reads and merges the chunks of `group` (one series, ascending ids)
    /// into one block keyed by the first; `None` if one of them is gone.
    fn encode_merge(
        conn: &Connection,
        plan: &CompactState,
        group: std::ops::Range<usize>,
    ) -> Result<Option<Merged>, StoreError> {
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        let mut seq_hi = 0i64;
        let mut get = conn.prepare_cached("SELECT seq_hi, data FROM chunks WHERE id = ?1")?;
        let (mut t, mut v) = (Vec::new(), Vec::new());
        for &id in &plan.ids[group.clone()] {
            let Some((hi, data)): Option<(i64, Vec<u8>)> = get
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
            else {
                return Ok(None);
            };
            seq_hi = seq_hi.max(hi);
            t.clear();
            v.clear();
            codec::decode_series(&data, &mut t, &mut v)
                .map_err(|e| StoreError::Corrupt(format!("chunk {id}: {e}")))?;
            ts.extend_from_slice(&t);
            vals.extend_from_slice(&v);
        }
        let (ts_min, ts_max) = min_max(ts.iter().copied());
        let settled = ts_max < plan.now.saturating_sub(SETTLE_NS);
        let mut data = Vec::new();
        codec::encode_series_with(&ts, &vals, effort(ts.len(), settled), &mut data);
        Ok(Some(Merged {
            group,
            seq_hi,
            ts_min,
            ts_max,
            count: ts.len(),
            data,
        }))
    }

    /// Whether the chunks `ids` are all still stored, with `count` points
    /// between them, as when their merge was encoded.
    fn inputs_intact(tx: &Connection, ids: &[i64], count: usize) -> Result<bool, StoreError> {
        let mut get = tx.prepare_cached("SELECT count FROM chunks WHERE id = ?1")?;
        let mut total = 0i64;
        for &id in ids {
            match get.query_row([id], |r| r.get::<_, i64>(0)).optional()? {
                Some(n) => total += n,
                None => return Ok(false),
            }
        }
        Ok(total == count as i64)
    }

    /// Seals the journal flushed so far into per-series chunks, in runs that
    /// no sink cursor splits, all at once. Returns the number of journal
    /// chunks sealed. The store task seals in steps instead ([`Store::seal_step`]).
    pub fn seal(&mut self) -> Result<usize, StoreError> {
        let before = self.journal.frames().len();
        self.seal_begin();
        while self.seal_step()? {}
        Ok(before - self.journal.frames().len())
    }

    /// Seals the journal and unlinks the files kept for reuse: a stopped
    /// agent leaves only what it holds (the pool saves filesystem-journal
    /// writes while running; after a restart one file grows again).
    /// Returns the number of journal chunks sealed.
    pub fn close(&mut self) -> Result<usize, StoreError> {
        let sealed = self.seal()?;
        self.journal.empty_pool()?;
        Ok(sealed)
    }

    /// Starts a seal of the journal flushed so far; [`Store::seal_step`] does
    /// the work, a step at a time. What is flushed meanwhile waits for the next seal.
    pub fn seal_begin(&mut self) {
        self.seal.upto = self.journal.frames().keys().next_back().copied();
        // The frames flushed from now on begin a group the run leaves whole.
        self.chain.restart();
    }

    /// Does one step of the seal begun by [`Store::seal_begin`], each in its
    /// own transaction, so appends and flushes go on between steps: plan a
    /// run, count its points per series, seal one group of series, or
    /// delete the run's journal chunks (which makes its sealed chunks valid,
    /// see [`VALID`]). Returns whether steps remain. On an error the seal is
    /// dropped; what it wrote stays hidden and is removed when the run is
    /// sealed again.
    pub fn seal_step(&mut self) -> Result<bool, StoreError> {
        let step = self.seal_step_inner();
        if step.is_err() {
            self.seal_abort();
        }
        step
    }

    fn seal_step_inner(&mut self) -> Result<bool, StoreError> {
        let Some(mut job) = self.seal.job.take() else {
            let run = self.next_run()?;
            self.seal.job = run.map(SealJob::new);
            if self.seal.job.is_none() {
                self.seal.upto = None;
                self.update_size();
            }
            return Ok(self.seal.job.is_some());
        };
        if job.counts.is_empty() {
            self.seal_count(&mut job)?;
        } else if !job.groups.is_empty() {
            self.seal_groups(&mut job)?;
        } else {
            self.seal_finish(&job)?;
            return Ok(true);
        }
        self.seal.job = Some(job);
        Ok(true)
    }

    /// Whether a run is being sealed (its steps not all done).
    pub fn sealing(&self) -> bool {
        self.seal.job.is_some()
    }

    /// Drops the seal under way, if any (a clock correction is about to
    /// rewrite the journal it reads). Its sealed chunks stay hidden.
    pub(super) fn seal_abort(&mut self) {
        self.seal.job = None;
        self.seal.upto = None;
    }

    /// The first run of journal chunks up to `seal.upto` that may be sealed
    /// now. Planned afresh for each run: sinks read on between steps.
    fn next_run(&self) -> Result<Option<Vec<i64>>, StoreError> {
        let Some(upto) = self.seal.upto else {
            return Ok(None);
        };
        let journal: Vec<(i64, i64)> = self
            .journal
            .frames()
            .range(..=upto)
            .map(|(&key, f)| (key, i64::from(f.count)))
            .collect();
        let runs = plan_runs(&journal, &self.boundaries(), SEAL_MAX_POINTS);
        Ok(runs.into_iter().next())
    }

    /// Hands each journal chunk of `run` to `f`, in order.
    fn each_run_row(
        journal: &Segments,
        run: &[i64],
        mut f: impl FnMut(&[u8]) -> Result<(), codec::CodecError>,
    ) -> Result<(), StoreError> {
        let mut data = Vec::new();
        for &id in run {
            journal.read_into(id, &mut data, codec::Checksum::Skip)?;
            f(&data).map_err(|e| StoreError::Corrupt(format!("chunk {id}: {e}")))?;
        }
        Ok(())
    }

    /// Decodes every journal chunk of `run` that holds a series in `ids`
    /// (by `spans`, each chunk's lowest and highest series), in order,
    /// keeping the points of those series.
    fn each_run_chunk(
        journal: &Segments,
        run: &[i64],
        spans: &[(u32, u32)],
        checksum: codec::Checksum,
        ids: RangeInclusive<u32>,
        f: &mut ColumnsFn<'_>,
    ) -> Result<(), StoreError> {
        let (mut s, mut t, mut v) = (Vec::new(), Vec::new(), Vec::new());
        let mut reader = ChainReader::new(ids.clone());
        for (&id, &(lo, hi)) in run.iter().zip(spans) {
            if lo > *ids.end() || hi < *ids.start() {
                reader.pass(journal, id);
                continue;
            }
            reader.decode(journal, id, checksum, (&mut s, &mut t, &mut v))?;
            f(&s, &t, &v);
        }
        Ok(())
    }

    /// The first step of a run: checks each chunk's checksum and counts the
    /// points per series, then splits the series into groups whose points
    /// fit in `seal.pass_points` (memory on a Pi is scarce). Removes first
    /// what an earlier, dropped seal of the run left.
    fn seal_count(&mut self, job: &mut SealJob) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        drop_hidden(&tx, job.run[0]..=job.run[job.run.len() - 1])?;
        // Counted by id in a flat table (ids are dense, given out in order):
        // a map entry per point was 4% of the store's CPU at 10k series.
        let mut dense: Vec<u32> = Vec::new();
        let mut stray = None;
        let mut spans = Vec::with_capacity(job.run.len());
        let mut s = Vec::new();
        // Series ids only: times and values are decoded pass by pass.
        Self::each_run_row(&self.journal, &job.run, |data| {
            s.clear();
            codec::mixed_series(data, codec::Checksum::Verify, &mut s)?;
            spans.push(
                s.iter()
                    .fold((u32::MAX, 0), |(lo, hi), &id| (lo.min(id), hi.max(id))),
            );
            for &id in &s {
                if id > MAX_SERIES {
                    stray = Some(id);
                    continue;
                }
                let i = id as usize;
                if i >= dense.len() {
                    dense.resize(i + 1, 0);
                }
                dense[i] += 1;
            }
            Ok(())
        })?;
        if let Some(id) = stray {
            return Err(StoreError::Corrupt(format!(
                "journal chunk names series {id}, beyond the largest id"
            )));
        }
        tx.commit()?;
        job.spans = spans;
        job.counts = dense
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(id, &n)| (id as u32, n as usize))
            .collect();
        job.groups = seal_groups(&job.counts, self.seal.pass_points).into();
        Ok(())
    }

    /// Seals groups of series of the job's run, in one commit, until
    /// [`SEAL_COMMIT_POINTS`] points or the last group.
    fn seal_groups(&mut self, job: &mut SealJob) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let mut points = 0;
        while points < self.seal.commit_points {
            let Some(group) = job.groups.pop_front() else {
                break;
            };
            points += Self::seal_group(&self.journal, &self.metrics, &tx, job, group)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Seals one group of series of the job's run into a chunk per series,
    /// keyed `first seq << 20 | series`: hidden until the run's journal
    /// goes. Returns the points sealed.
    fn seal_group(
        journal: &Segments,
        metrics: &Metrics,
        tx: &rusqlite::Transaction,
        job: &mut SealJob,
        group: RangeInclusive<u32>,
    ) -> Result<usize, StoreError> {
        let last_seq = job.run[job.run.len() - 1] >> SERIES_BITS;
        // (series, start of its slice, next free slot), ascending ids: one
        // pair of flat columns, each series' points in one slice of them.
        // Two growing vectors per series left the allocator's arenas
        // fragmented and the agent's RSS megabytes higher after each seal.
        let mut slices: Vec<(u32, usize, usize)> = Vec::new();
        let mut total = 0;
        for (&sid, &n) in job.counts.range(group.clone()) {
            slices.push((sid, total, total));
            total += n;
        }
        let (ts, vals) = (&mut job.ts, &mut job.vals);
        ts.clear();
        ts.resize(total, 0);
        vals.clear();
        vals.resize(total, 0.0);
        // The count step checked every checksum, and nothing writes the
        // run's chunks while its seal is under way (a clock correction drops it).
        Self::each_run_chunk(
            journal,
            &job.run,
            &job.spans,
            codec::Checksum::Skip,
            group.clone(),
            &mut |s, t, v| {
                for i in 0..s.len() {
                    if group.contains(&s[i]) {
                        // In arrival order within each series.
                        let k = slices.partition_point(|x| x.0 < s[i]);
                        let at = slices[k].2;
                        slices[k].2 += 1;
                        ts[at] = t[i];
                        vals[at] = v[i];
                    }
                }
            },
        )?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO chunks (id, series, seq_hi, ts_min, ts_max, count, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut data = Vec::new();
            for &(sid, start, end) in &slices {
                let (ts, vals) = (&ts[start..end], &vals[start..end]);
                data.clear();
                codec::encode_series_with(ts, vals, effort(ts.len(), false), &mut data);
                metrics
                    .store
                    .sealed_bytes
                    .fetch_add(data.len() as u64, Relaxed);
                let (lo, hi) = min_max(ts.iter().copied());
                ins.execute(params![
                    last_seq << SERIES_BITS | sid as i64,
                    sid,
                    last_seq,
                    lo,
                    hi,
                    ts.len() as i64,
                    data
                ])?;
            }
        }
        Ok(total)
    }

    /// The last step of a run: moves the sealing watermark past it, which
    /// makes its sealed chunks valid and its journal chunks sealed in one
    /// commit; then the journal lets go of them (files wholly sealed are
    /// unlinked; a stop before that leaves them to the next open).
    fn seal_finish(&mut self, job: &SealJob) -> Result<(), StoreError> {
        let last = job.run[job.run.len() - 1];
        // Chunks below the watermark that are not in the run stay: a sink
        // was part-way through them (see `plan_runs`), at this seal or an
        // earlier one (the run may be a kept chunk alone, below it).
        let through = self.sealed.through.max(last);
        let mut sealed = Sealed {
            through,
            kept: self
                .journal
                .frames()
                .range(..=through)
                .map(|(&k, _)| k)
                .collect(),
        };
        for key in &job.run {
            sealed.kept.remove(key);
        }
        // What stays of the run's groups is written alone first: a stop
        // between the two leaves both readable.
        let gone: std::collections::BTreeSet<i64> = job.run.iter().copied().collect();
        self.rewrite_cut_groups(&gone)?;
        let tx = self.conn.transaction()?;
        set_sealed_through(&tx, sealed.through >> SERIES_BITS)?;
        if sealed.kept != self.sealed.kept {
            tx.execute("DELETE FROM journal_kept", [])?;
            let mut ins = tx.prepare_cached("INSERT INTO journal_kept (key) VALUES (?1)")?;
            for key in &sealed.kept {
                ins.execute([key])?;
            }
        }
        tx.commit()?;
        self.sealed = sealed;
        // The index lets go first; a file that will not unlink is unlinked
        // at the next open (the watermark says it is sealed).
        if let Err(e) = self.journal.seal(&self.sealed) {
            tracing::warn!("store journal: {e}; the sealed files are removed at the next start");
        }
        self.metrics
            .store
            .sealed_rows
            .fetch_add(job.run.len() as u64, Relaxed);
        Ok(())
    }

    /// Where a sink may read while a seal is under way: not into its run,
    /// whose points are about to move (a cursor inside it would then point
    /// at nothing). A sink behind the run waits for the seal's last step.
    fn read_limit(&self, from: Cursor) -> i64 {
        match &self.seal.job {
            Some(job) if from.key <= job.run[job.run.len() - 1] => job.run[0],
            _ => i64::MAX,
        }
    }

    /// Whether a read from `from` to `until` stops short at the run of the
    /// seal under way: an empty answer then means "wait", not "caught up".
    pub fn read_held(&self, from: Cursor, until: Option<Cursor>) -> bool {
        let limit = self.read_limit(from);
        limit < i64::MAX && until.is_none_or(|u| u.key > limit)
    }

    /// Windows of `tier` (seconds) for one series over `[from, to]`: windows
    /// kept for evicted raw chunks, merged with windows computed from the raw
    /// points still stored (sealed and journal), in arrival order, so partial
    /// windows at an eviction boundary and open windows come out whole.
    pub fn read_rollup(
        &self,
        series: &SeriesKey,
        tier: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Agg)>, StoreError> {
        let Some(&sid) = self.ids.get(series) else {
            return Ok(Vec::new());
        };
        let width = tier * 1_000_000_000;
        let lo = window_start(from, width);
        let mut windows: BTreeMap<i64, Agg> = BTreeMap::new();
        let mut merge = |start: i64, agg: &Agg| {
            if start >= lo && start <= to {
                windows
                    .entry(start)
                    .and_modify(|a| a.merge(agg))
                    .or_insert(*agg);
            }
        };
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT data FROM rollup_chunks WHERE series = ?1 AND tier = ?2
                 AND start_max >= ?3 AND start_min <= ?4 ORDER BY id",
            )?;
            let mut rows = stmt.query(params![sid, tier, lo, to])?;
            while let Some(row) = rows.next()? {
                let data: Vec<u8> = row.get(0)?;
                for (start, agg) in decode_windows(&data)? {
                    merge(start, &agg);
                }
            }
        }
        self.each_series_point(sid, lo, to.saturating_add(width), |t, v| {
            merge(window_start(t, width), &Agg::point(t, v));
        })?;
        Ok(windows.into_iter().collect())
    }

    /// The acknowledged cursor of `sink` (the start, for a new sink).
    pub fn cursor(&mut self, sink: &str) -> Result<Cursor, StoreError> {
        Ok(self.sink_pos(sink)?.acked)
    }

    fn sink_pos(&mut self, sink: &str) -> Result<&mut SinkPos, StoreError> {
        if !self.sinks.contains_key(sink) {
            let saved: Option<Cursor> = self
                .conn
                .query_row(
                    "SELECT key, offset FROM cursors WHERE sink = ?1",
                    [sink],
                    |r| {
                        Ok(Cursor {
                            key: r.get(0)?,
                            offset: r.get(1)?,
                        })
                    },
                )
                .optional()?;
            let c = saved.unwrap_or_default();
            self.sinks.insert(
                sink.to_string(),
                SinkPos {
                    acked: c,
                    read: c,
                    dirty: false,
                    ephemeral: false,
                },
            );
        }
        Ok(self.sinks.get_mut(sink).expect("inserted above"))
    }

    /// Records that `sink`'s endpoint acknowledged everything before `cursor`.
    /// Persisted with the next flush.
    pub fn ack(&mut self, sink: &str, cursor: Cursor) -> Result<(), StoreError> {
        let pos = self.sink_pos(sink)?;
        if cursor > pos.acked {
            pos.acked = cursor;
            pos.dirty = true;
        }
        if pos.read < pos.acked {
            pos.read = pos.acked;
        }
        Ok(())
    }

    /// Up to `limit` flushed points after `from` and before `until` (a chunk
    /// boundary), in chunk order, and the cursor that follows them. Remembers
    /// how far `sink` has read, so sealing leaves its in-flight range alone.
    pub fn after(
        &mut self,
        sink: &str,
        from: Cursor,
        until: Option<Cursor>,
        limit: usize,
    ) -> Result<(Batch, Cursor), StoreError> {
        let mut batch = Batch::with_capacity(limit.min(65_536));
        let mut next = from;
        let until = until.map_or(i64::MAX, |u| u.key).min(self.read_limit(from));
        if limit > 0 && from.key < until {
            // Taken out while the read borrows the store, and put back:
            // without a String allocated per read once the sink has one.
            let mut reader = self
                .chain_readers
                .get_mut(sink)
                .map(std::mem::take)
                .unwrap_or_default();
            let sealed = concat!(
                "SELECT id, data FROM chunks WHERE id >= ?1 AND id < ?2 AND ",
                valid!(),
                " ORDER BY id"
            );
            self.each_chunk(
                sealed,
                [from.key, until],
                from.key..until,
                ..,
                &mut reader,
                |id, s, t, v| {
                    let skip = if id == from.key {
                        from.offset as usize
                    } else {
                        0
                    };
                    let take = (limit - batch.len()).min(t.len().saturating_sub(skip));
                    for i in skip..skip + take {
                        batch.points.push(Point {
                            series: self.keys[s[i] as usize].clone(),
                            ts_ns: t[i],
                            value: v[i],
                        });
                    }
                    next = if skip + take < t.len() {
                        Cursor {
                            key: id,
                            offset: (skip + take) as u32,
                        }
                    } else {
                        Cursor::after_chunk(id)
                    };
                    Ok(batch.len() < limit)
                },
            )?;
            match self.chain_readers.get_mut(sink) {
                Some(kept) => *kept = reader,
                None => {
                    self.chain_readers.insert(sink.to_string(), reader);
                }
            }
        }
        let pos = self.sink_pos(sink)?;
        if next > pos.read {
            pos.read = next;
        }
        Ok((batch, next))
    }

    /// Points stored after `from` (flushed ones only).
    pub fn backlog(&self, from: Cursor) -> Result<u64, StoreError> {
        Ok(self.backlog_age(from)?.0)
    }

    /// Points stored after `from` (flushed ones only), and the oldest
    /// timestamp among their chunks (a chunk partly consumed counts whole).
    pub fn backlog_age(&self, from: Cursor) -> Result<(u64, Option<i64>), StoreError> {
        let (n, oldest): (i64, Option<i64>) = self.conn.query_row(
            concat!(
                "SELECT COALESCE(SUM(count), 0), MIN(ts_min) FROM chunks WHERE id >= ?1 AND ",
                valid!()
            ),
            [from.key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let j = self.journal_sums(from.key..);
        let n = n as u64 + j.points;
        Ok((
            n.saturating_sub(from.offset as u64),
            min_opt(oldest, j.ts_min),
        ))
    }

    /// The points of one series with `from <= ts <= to`, sorted by time.
    pub fn read(
        &self,
        series: &SeriesKey,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let Some(&sid) = self.ids.get(series) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        self.each_series_point(sid, from, to, |t, v| {
            if t >= from && t <= to {
                out.push((t, v));
            }
        })?;
        out.sort_by_key(|p| p.0);
        Ok(out)
    }

    /// The oldest raw timestamp stored for `series`, if any.
    pub fn oldest_raw(&self, series: &SeriesKey) -> Result<Option<i64>, StoreError> {
        let Some(&sid) = self.ids.get(series) else {
            return Ok(None);
        };
        let sealed: Option<i64> = self.conn.query_row(SERIES_OLDEST, [sid], |r| r.get(0))?;
        // The journal is newer than anything sealed, except after eviction
        // emptied the sealed chunks: look there only then.
        if sealed.is_some() {
            return Ok(sealed);
        }
        Ok(self.read(series, i64::MIN, i64::MAX)?.first().map(|p| p.0))
    }

    /// Bytes of chunk data (all chunks, or one series' sealed chunks).
    pub fn chunk_bytes(&self, series: Option<&SeriesKey>) -> Result<u64, StoreError> {
        let n: i64 = match series {
            None => {
                self.conn.query_row(
                    concat!(
                        "SELECT COALESCE(SUM(length(data)), 0) FROM chunks WHERE ",
                        valid!()
                    ),
                    [],
                    |r| r.get::<_, i64>(0),
                )? + self.journal_sums(..).bytes as i64
            }
            Some(k) => match self.ids.get(k) {
                Some(&sid) => self.conn.query_row(SERIES_BYTES, [sid], |r| r.get(0))?,
                None => 0,
            },
        };
        Ok(n as u64)
    }

    /// Hands `f` chunks in key order, decoded (series ids, times, values):
    /// the sealed ones that `sealed` selects (id and data, valid only, in
    /// key order, with `params`) merged with the journal's with keys in
    /// `keys` and a time in `times`, decoded by `reader` (only the points of
    /// its series; sealed chunks come whole). (Valid sealed chunks
    /// sort before the journal's, but for kept ones, see `valid!`.) `f`
    /// returns whether to go on.
    fn each_chunk(
        &self,
        sealed: &str,
        params: impl rusqlite::Params,
        keys: impl std::ops::RangeBounds<i64>,
        times: impl std::ops::RangeBounds<i64>,
        reader: &mut ChainReader,
        mut f: impl FnMut(i64, &[u32], &[i64], &[f64]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut frames = self
            .journal
            .frames()
            .range(keys)
            .filter(|(_, r)| overlaps(&times, r.ts_min, r.ts_max))
            .map(|(&key, _)| key)
            .peekable();
        let (mut s, mut t, mut v) = (Vec::new(), Vec::new(), Vec::new());
        let mut stmt = self.conn.prepare_cached(sealed)?;
        let mut rows = stmt.query(params)?;
        loop {
            let row = match rows.next()? {
                Some(row) => Some((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)),
                None => None,
            };
            let until = row.as_ref().map_or(i64::MAX, |r| r.0);
            // The journal's chunks before it.
            while let Some(k) = frames.next_if(|&k| k < until) {
                reader.decode(
                    &self.journal,
                    k,
                    codec::Checksum::Skip,
                    (&mut s, &mut t, &mut v),
                )?;
                if !f(k, &s, &t, &v)? {
                    return Ok(());
                }
            }
            let Some((id, data)) = row else {
                return Ok(());
            };
            decode_chunk(id, &data, &mut s, &mut t, &mut v)?;
            if !f(id, &s, &t, &v)? {
                return Ok(());
            }
        }
    }

    /// Hands `f` every point of series `sid` in the chunks that may hold
    /// its points in `[from, to]` (some outside it too), in key order.
    fn each_series_point(
        &self,
        sid: u32,
        from: i64,
        to: i64,
        mut f: impl FnMut(i64, f64),
    ) -> Result<(), StoreError> {
        self.each_chunk(
            SERIES_CHUNKS,
            params![sid, from, to],
            ..,
            from..=to,
            &mut ChainReader::new(sid..=sid),
            |_, s, t, v| {
                for i in 0..t.len() {
                    if s[i] == sid {
                        f(t[i], v[i]);
                    }
                }
                Ok(true)
            },
        )
    }

    /// Totals over the journal's chunks with keys in `keys`.
    fn journal_sums(&self, keys: impl std::ops::RangeBounds<i64>) -> JournalSums {
        let mut sums = JournalSums::default();
        for frame in self.journal.frames().range(keys).map(|(_, f)| f) {
            sums.points += u64::from(frame.count);
            sums.bytes += u64::from(frame.len);
            sums.ts_min = min_opt(sums.ts_min, Some(frame.ts_min));
            sums.ts_max = sums.ts_max.max(Some(frame.ts_max));
        }
        sums
    }

    /// Folds the WAL into the database file and truncates it.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        self.update_size();
        Ok(())
    }

    /// Every series key known to the store.
    pub fn series(&self) -> impl Iterator<Item = &SeriesKey> {
        self.keys.iter().skip(1)
    }
}

/// Totals over journal chunks (see [`Store::journal_sums`]).
#[derive(Clone, Copy, Debug, Default)]
struct JournalSums {
    points: u64,
    bytes: u64,
    ts_min: Option<i64>,
    ts_max: Option<i64>,
}

/// The smaller of two optional values, either standing alone.
fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether `[lo, hi]` meets `range`.
fn overlaps(range: &impl std::ops::RangeBounds<i64>, lo: i64, hi: i64) -> bool {
    use std::ops::Bound::*;
    let above = match range.start_bound() {
        Included(&a) => hi >= a,
        Excluded(&a) => hi > a,
        Unbounded => true,
    };
    let below = match range.end_bound() {
        Included(&b) => lo <= b,
        Excluded(&b) => lo < b,
        Unbounded => true,
    };
    above && below
}

/// The journal's directory beside the database at `path` (see [`Segments`]).
pub(crate) fn journal_dir(path: &Path) -> PathBuf {
    let mut dir = path.as_os_str().to_owned();
    dir.push(JOURNAL_SUFFIX);
    PathBuf::from(dir)
}

/// What [`journal_dir`] adds to the database's name.
const JOURNAL_SUFFIX: &str = ".tgj";

/// Which journal chunks the database says are sealed (see `valid!`).
fn sealed(conn: &Connection) -> Result<Sealed, StoreError> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT value FROM counters WHERE name = 'sealed_through'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let mut stmt = conn.prepare_cached("SELECT key FROM journal_kept")?;
    let kept = stmt.query_map([], |r| r.get(0))?;
    Ok(Sealed {
        through: seq.unwrap_or(0) << SERIES_BITS,
        kept: kept.collect::<Result<_, _>>()?,
    })
}

/// Moves journal chunks left in the `journal` table (by a Tidegate from
/// before the segment files) to the files: appended there first, deleted
/// here after, so a stop in between appends them again at the next open,
/// the same keys, which the later frames of replace. Chunks below the
/// watermark (a sink was part-way through them) are kept.
fn move_journal_rows(conn: &mut Connection, journal: &mut Segments) -> Result<(), StoreError> {
    let frames: Vec<Frame<Vec<u8>>> = {
        let mut stmt =
            conn.prepare("SELECT id, ts_min, ts_max, count, data FROM journal ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(Frame {
                key: r.get(0)?,
                ts_min: r.get(1)?,
                ts_max: r.get(2)?,
                count: r.get(3)?,
                data: r.get(4)?,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    if frames.is_empty() {
        return Ok(());
    }
    journal.append(&frames)?;
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT OR IGNORE INTO journal_kept (key) SELECT id FROM journal
         WHERE id >> 20 <= (SELECT value FROM counters WHERE name = 'sealed_through')",
        [],
    )?;
    tx.execute("DELETE FROM journal", [])?;
    tx.commit()?;
    tracing::info!(
        chunks = frames.len(),
        "moved the journal out of the database into its own files"
    );
    Ok(())
}

/// Whether the store has table `name` (some are created on first use).
fn table_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

fn bump(tx: &rusqlite::Transaction<'_>, name: &str, by: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
    )?
    .execute(params![name, by])?;
    Ok(())
}

/// Brings a store from before the journal had its table and the sealing
/// watermark (2026-12-06) to both: its journal chunks (series 0 in
/// `chunks`) move, and the chunks of a seal cut short go, by the rule of
/// then (hidden while the run's last, or first, journal chunk existed,
/// keyed as it). Everything before the journal was sealed. Returns the
/// hidden chunks removed.
fn migrate_journal(conn: &mut Connection) -> Result<usize, StoreError> {
    let current: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM counters WHERE name = 'sealed_through')",
        [],
        |r| r.get(0),
    )?;
    if current {
        return Ok(0);
    }
    let tx = conn.transaction()?;
    let keys: Vec<i64> = {
        let mut stmt = tx.prepare("SELECT id FROM chunks WHERE series = 0 ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut hidden = 0;
    for &key in &keys {
        hidden += drop_hidden(&tx, key..=key)?;
    }
    tx.execute(
        "INSERT INTO journal (id, ts_min, ts_max, count, data)
         SELECT id, ts_min, ts_max, count, data FROM chunks WHERE series = 0",
        [],
    )?;
    tx.execute("DELETE FROM chunks WHERE series = 0", [])?;
    let through = match keys.first() {
        Some(&key) => (key >> SERIES_BITS) - 1,
        None => tx.query_row("SELECT COALESCE(MAX(seq_hi), 0) FROM chunks", [], |r| {
            r.get(0)
        })?,
    };
    set_sealed_through(&tx, through)?;
    tx.commit()?;
    Ok(hidden)
}

/// Moves the sealing watermark (see `valid!`) to journal sequence `seq`.
fn set_sealed_through(tx: &Connection, seq: i64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO counters (name, value) VALUES ('sealed_through', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute([seq])?;
    Ok(())
}

/// Deletes the sealed chunks that a seal of journal chunks `run` (first and
/// last keys) cut short left (hidden, see `valid!`): keyed `last | series`
/// (`first | series` before 2026-12-06), and the run planned again may end
/// elsewhere than the dropped one, so the whole key range goes (valid chunks
/// all sort before the first). A key range, so no scan. Returns how many went.
fn drop_hidden(conn: &Connection, run: RangeInclusive<i64>) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM chunks WHERE id > ?1 AND id < ?2 AND series != 0")?
        .execute([*run.start(), *run.end() + (1 << SERIES_BITS)])?)
}

/// A visitor of decoded columns: series ids, timestamps, values.
type ColumnsFn<'a> = dyn FnMut(&[u32], &[i64], &[f64]) + 'a;

/// Decodes a chunk of either kind into parallel columns.
fn decode_chunk(
    id: i64,
    data: &[u8],
    s: &mut Vec<u32>,
    t: &mut Vec<i64>,
    v: &mut Vec<f64>,
) -> Result<(), StoreError> {
    s.clear();
    t.clear();
    v.clear();
    let series = (id & SERIES_MASK) as u32;
    let res = if series == 0 {
        codec::decode_mixed(data, s, t, v)
    } else {
        let r = codec::decode_series(data, t, v);
        s.resize(t.len(), series);
        r
    };
    res.map_err(|e| StoreError::Corrupt(format!("chunk {id}: {e}")))
}

/// Windows of width `width_ns` over points in arrival order.
fn aggregate(ts: &[i64], vals: &[f64], width_ns: i64) -> BTreeMap<i64, Agg> {
    let mut out: BTreeMap<i64, Agg> = BTreeMap::new();
    for (&t, &v) in ts.iter().zip(vals) {
        out.entry(window_start(t, width_ns))
            .and_modify(|a| a.add(t, v))
            .or_insert_with(|| Agg::point(t, v));
    }
    out
}

/// Most windows in a rollup row that evicted chunks are folded into. A row
/// and its two index entries cost ~40 B: a short chunk (a few seconds of a
/// series) rolls up to one or two windows, so one row per chunk cost more
/// than its windows. 64 windows share that, and eviction still takes
/// rollups in small steps.
const ROW_WINDOWS: usize = 64;

/// Writes `windows` (non-empty) of one series and tier as rollup row `row`,
/// or as a new row if `None`; `chunk` links the row to a degraded chunk.
fn put_windows(
    tx: &rusqlite::Transaction,
    row: Option<i64>,
    tier: i64,
    sid: u32,
    windows: &BTreeMap<i64, Agg>,
    chunk: Option<i64>,
) -> Result<(), StoreError> {
    let (Some(&smin), Some(&smax)) = (windows.keys().next(), windows.keys().next_back()) else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT OR REPLACE INTO rollup_chunks (id, tier, series, start_min, start_max, windows, data, chunk)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        row,
        tier,
        sid,
        smin,
        smax,
        windows.len() as i64,
        encode_windows(windows),
        chunk
    ])?;
    Ok(())
}

/// Records chunk `(id, series, ts_min, ts_max)`, about to be evicted, as
/// degraded for the `lacking` sinks (with the points each lacked), and keeps
/// its `windows` (one map per tier). It joins the series' open group when
/// the same sinks lack it and the group has room; else it opens a new
/// group. A group is closed when its range is handed to a sink (see
/// [`Store::degraded_pending`]), when a chunk of the series every sink had
/// is evicted (so a range spans nothing a sink received), and when rollups
/// are evicted.
fn degrade(
    tx: &rusqlite::Transaction,
    open: &mut HashMap<u32, OpenDegraded>,
    (id, sid, lo, hi): (i64, u32, i64, i64),
    lacking: &[(&String, i64)],
    tiers: &[i64],
    windows: Vec<BTreeMap<i64, Agg>>,
) -> Result<(), StoreError> {
    let finest = windows.first().map_or(0, |w| w.len());
    let joins = open.get(&sid).is_some_and(|g| {
        g.windows < ROW_WINDOWS
            && g.rows.len() == lacking.len()
            && g.rows.iter().zip(lacking).all(|(a, b)| &a.0 == b.0)
    });
    if joins {
        let g = open.get_mut(&sid).expect("checked above");
        for ((sink, row), (_, unsent)) in g.rows.iter().zip(lacking) {
            tx.prepare_cached(
                "UPDATE degraded SET points = points + ?1, ts_min = MIN(ts_min, ?2),
                 ts_max = MAX(ts_max, ?3) WHERE rowid = ?4",
            )?
            .execute(params![unsent, lo, hi, row])?;
            bump(tx, &format!("degraded:{sink}"), *unsent)?;
        }
        for (&tier, w) in tiers.iter().zip(windows) {
            let stored: Option<(i64, Vec<u8>)> = tx
                .prepare_cached(
                    "SELECT id, data FROM rollup_chunks WHERE chunk = ?1 AND tier = ?2",
                )?
                .query_row(params![g.group, tier], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            // Gone only if eviction took the rollups too (which closes every
            // group, see `evict_windows`); the new windows then stand alone.
            let (row, merged) = match stored {
                Some((row, data)) => (Some(row), merge_windows(&data, w)?),
                None => (None, w),
            };
            if tier == tiers[0] {
                g.windows = merged.len();
            }
            put_windows(tx, row, tier, sid, &merged, Some(g.group))?;
        }
        return Ok(());
    }
    let mut rows = Vec::with_capacity(lacking.len());
    for (sink, unsent) in lacking {
        tx.prepare_cached(
            "INSERT INTO degraded (sink, series, ts_min, ts_max, points, chunk) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![sink, sid, lo, hi, unsent, id])?;
        rows.push(((*sink).clone(), tx.last_insert_rowid()));
        bump(tx, &format!("degraded:{sink}"), *unsent)?;
    }
    for (&tier, w) in tiers.iter().zip(&windows) {
        put_windows(tx, None, tier, sid, w, Some(id))?;
    }
    open.insert(
        sid,
        OpenDegraded {
            group: id,
            rows,
            windows: finest,
        },
    );
    Ok(())
}

/// Stored windows `data` with `windows` added (after them: they came from
/// older chunks, and `merge` keeps the earlier of two points on a tie).
fn merge_windows(
    data: &[u8],
    windows: BTreeMap<i64, Agg>,
) -> Result<BTreeMap<i64, Agg>, StoreError> {
    let mut merged: BTreeMap<i64, Agg> = decode_windows(data)?.into_iter().collect();
    for (start, agg) in windows {
        merged
            .entry(start)
            .and_modify(|a| a.merge(&agg))
            .or_insert(agg);
    }
    Ok(merged)
}

/// Adds `windows` of one series and tier to its newest rollup row that
/// belongs to no degraded chunk, if it has room, else starts a new row.
fn fold_windows(
    tx: &rusqlite::Transaction,
    tier: i64,
    sid: u32,
    windows: BTreeMap<i64, Agg>,
) -> Result<(), StoreError> {
    // Only the newest such row is looked at, so a series' rows stay in time
    // order and a full row is never searched past (the index walk skips
    // only the series' degraded rows, which are sent and few).
    let newest: Option<(i64, i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT id, windows, data FROM rollup_chunks WHERE series = ?1 AND tier = ?2
             AND chunk IS NULL ORDER BY start_max DESC LIMIT 1",
        )?
        .query_row(params![sid, tier], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((row, _, data)) = newest.filter(|r| (r.1 as usize) < ROW_WINDOWS) else {
        return put_windows(tx, None, tier, sid, &windows, None);
    };
    put_windows(
        tx,
        Some(row),
        tier,
        sid,
        &merge_windows(&data, windows)?,
        None,
    )
}

/// The first rollup rows' encoding (postcard columns under zstd), still read.
#[derive(serde::Serialize, serde::Deserialize)]
struct WindowColumns {
    start: Vec<i64>,
    aggs: Vec<Agg>,
}

fn encode_windows(windows: &BTreeMap<i64, Agg>) -> Vec<u8> {
    let rows: Vec<(i64, Agg)> = windows.iter().map(|(s, a)| (*s, *a)).collect();
    let mut out = Vec::new();
    codec::encode_windows(&rows, &mut out);
    out
}

fn decode_windows(data: &[u8]) -> Result<Vec<(i64, Agg)>, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("rollup chunk: {e}"));
    // A zstd frame (magic 28 B5 2F FD) is a row of the first encoding.
    if data.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        let raw = zstd::bulk::decompress(data, 64 << 20).map_err(|e| corrupt(&e))?;
        let cols: WindowColumns = postcard::from_bytes(&raw).map_err(|e| corrupt(&e))?;
        return Ok(cols.start.into_iter().zip(cols.aggs).collect());
    }
    codec::decode_windows(data).map_err(|e| corrupt(&e))
}

/// Cuts `order` (positions of `series` by series, see [`codec::by_series`])
/// into ranges of at least `part_points` points of whole series; the last
/// takes a tail shorter than that. One range when there are few points.
fn journal_parts(series: &[u32], order: &[u32], part_points: usize) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let mut begin = 0;
    for j in 0..order.len() {
        let len = j + 1 - begin;
        let rest = order.len() - j - 1;
        let series_ends = order
            .get(j + 1)
            .is_none_or(|&next| series[next as usize] != series[order[j] as usize]);
        if series_ends && len >= part_points && rest >= part_points {
            parts.push(begin..j + 1);
            begin = j + 1;
        }
    }
    if begin < order.len() || parts.is_empty() {
        parts.push(begin..order.len());
    }
    parts
}

fn min_max(ts: impl IntoIterator<Item = i64>) -> (i64, i64) {
    ts.into_iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)))
}

/// A chunk whose newest point is this much older than the newest point seen
/// is settled: no more is coming to its neighbourhood, so its series' small
/// chunks are merged whatever their sizes (the LSM tree's last level).
const SETTLE_NS: i64 = 3600 * 1_000_000_000;
/// A chunk whose newest point is a day older than the newest point seen: a
/// busy series fills its blocks in hours, so its chunks never get stale.
const STALE_NS: i64 = 24 * SETTLE_NS;

/// A sealed chunk as compaction sees it.
#[derive(Clone, Copy, Debug)]
struct ChunkInfo {
    series: u32,
    id: i64,
    count: i64,
    ts_max: i64,
}

/// Chooses groups of a series' consecutive small chunks (sorted by series,
/// then id) to merge, at most `TARGET_CHUNK_POINTS` together, with no cursor
/// between or inside them:
///
/// - `FANOUT` tiny chunks (below [`TINY`]) of one size class (log4 of the
///   count), as a size-tiered LSM tree merges;
/// - chunks below [`FULL`] as soon as they add up to a full block: a series
///   sealing hundreds of points at a time (a busy one) has each point merged
///   once, not log4(8192 / n) times;
/// - settled chunks (no new point near them for an hour) whatever their sizes,
///   once the smaller ones add up to a quarter of the largest, so a full block
///   is not rewritten for every straggler; only tiny ones while newer chunks
///   of the series follow them unsettled: the series is still filling a
///   block, and settling its 600-point chunks one seal at a time rewrote
///   the growing block each time; tiny chunks of a slow series, irregular in
///   size, seldom make a same-class group, and a slow series' larger chunks
///   may take weeks to fill a block: those of a day ago merge meanwhile.
fn plan_merges(chunks: &[ChunkInfo], cursors: &[Cursor], now_ns: i64) -> Vec<Vec<i64>> {
    let class = |n: i64| (64 - (n.max(1) as u64).leading_zeros()) / 2;
    let settled = |c: &ChunkInfo| c.ts_max < now_ns.saturating_sub(SETTLE_NS);
    let stale = |c: &ChunkInfo| c.ts_max < now_ns.saturating_sub(STALE_NS);
    let worth = |g: &[ChunkInfo]| {
        let total: i64 = g.iter().map(|c| c.count).sum();
        let largest = g.iter().map(|c| c.count).max().unwrap_or(0);
        g.len() >= 2 && (total - largest) * FANOUT as i64 >= largest
    };
    let mut out: Vec<Vec<i64>> = Vec::new();
    // Runs of chunks that may merge at all: one series, no cursor in between.
    let mut run: Vec<ChunkInfo> = Vec::new();
    let mut runs: Vec<Vec<ChunkInfo>> = Vec::new();
    for c in chunks {
        let part_read = part_read(cursors, c.id);
        let joins = run
            .last()
            .is_some_and(|last| last.series == c.series && !cut(cursors, last.id, c.id));
        if !joins || part_read {
            runs.push(std::mem::take(&mut run));
        }
        if !part_read {
            run.push(*c);
        }
    }
    runs.push(run);
    for run in runs {
        let mut i = 0;
        while i < run.len() {
            // Same-class group of FANOUT tiny chunks starting here?
            let end = i + FANOUT;
            if end <= run.len()
                && run[i].count < TINY
                && run[i..end]
                    .iter()
                    .all(|c| class(c.count) == class(run[i].count))
            {
                out.push(run[i..end].iter().map(|c| c.id).collect());
                i = end;
                continue;
            }
            // A full block of chunks short of one?
            let mut j = i;
            let mut total = 0;
            while j < run.len()
                && run[j].count < FULL
                && total + run[j].count <= TARGET_CHUNK_POINTS
            {
                total += run[j].count;
                j += 1;
            }
            if j - i >= 2 && total >= FULL {
                out.push(run[i..j].iter().map(|c| c.id).collect());
                i = j;
                continue;
            }
            // Else the longest settled window from here that fits the target;
            // only its tiny or stale chunks if an unsettled chunk stopped it
            // (see above).
            let mut j = i;
            let mut total = 0;
            while j < run.len() && settled(&run[j]) && total + run[j].count <= TARGET_CHUNK_POINTS {
                total += run[j].count;
                j += 1;
            }
            if j < run.len() && !settled(&run[j]) {
                j = i + run[i..j]
                    .iter()
                    .take_while(|c| c.count < TINY || stale(c))
                    .count();
            }
            if worth(&run[i..j]) {
                out.push(run[i..j].iter().map(|c| c.id).collect());
                i = j;
            } else {
                i += 1;
            }
        }
    }
    out
}

/// Whether a cursor lies in `(a, b]`: chunks `a` and `b` would merge across it.
fn cut(cursors: &[Cursor], a: i64, b: i64) -> bool {
    cursors.iter().any(|k| k.key > a && k.key <= b)
}

/// Whether a sink has read part of chunk `id` (a merge would move what it has not read).
fn part_read(cursors: &[Cursor], id: i64) -> bool {
    cursors.iter().any(|k| k.key == id && k.offset > 0)
}

/// Whether merging `group` (one series' chunk ids, ascending) would cross or split a cursor.
fn splits(cursors: &[Cursor], group: &[i64]) -> bool {
    let (first, last) = (group[0], group[group.len() - 1]);
    cut(cursors, first, last) || group.iter().any(|&id| part_read(cursors, id))
}

/// How hard to compress a block of `points`: thoroughly if compaction will
/// not merge it again (it is large, or settled: merged again only with
/// later settled neighbours, rarely), quickly if it is a step on the way.
fn effort(points: usize, settled: bool) -> codec::Effort {
    if settled || points as i64 * 2 >= TARGET_CHUNK_POINTS {
        codec::Effort::Thorough
    } else {
        codec::Effort::Quick
    }
}

/// Splits series (ascending ids, with their point counts) into ranges of
/// ids whose points together fit in `max_points`, one sealing pass each (a
/// series with more points than that is a range of its own).
fn seal_groups(counts: &BTreeMap<u32, usize>, max_points: usize) -> Vec<RangeInclusive<u32>> {
    let mut groups: Vec<RangeInclusive<u32>> = Vec::new();
    let mut acc = 0usize;
    for (&sid, &n) in counts {
        match groups.last_mut() {
            Some(g) if acc + n <= max_points => {
                *g = *g.start()..=sid;
                acc += n;
            }
            _ => {
                groups.push(sid..=sid);
                acc = n;
            }
        }
    }
    groups
}

/// Splits journal chunks `(key, count)` into runs that may be sealed: no cursor
/// lies strictly inside a run (it would see points move across it), no chunk a
/// cursor is part-way through is sealed, and no run exceeds `max_points`.
fn plan_runs(journal: &[(i64, i64)], cursors: &[Cursor], max_points: usize) -> Vec<Vec<i64>> {
    let mut runs: Vec<Vec<i64>> = Vec::new();
    let mut current: Vec<i64> = Vec::new();
    let mut points = 0usize;
    for &(key, count) in journal {
        let part_read = cursors.iter().any(|c| c.key == key && c.offset > 0);
        let split_before = current
            .last()
            .is_some_and(|&last| cursors.iter().any(|c| c.key > last && c.key <= key));
        if part_read || split_before || points + count as usize > max_points {
            if !current.is_empty() {
                runs.push(std::mem::take(&mut current));
            }
            points = 0;
        }
        if !part_read {
            current.push(key);
            points += count as usize;
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(seq: i64) -> i64 {
        seq << SERIES_BITS
    }

    #[test]
    fn runs_split_at_cursors() {
        let journal: Vec<(i64, i64)> = (1..=6).map(|s| (k(s), 10)).collect();
        // A sink that has consumed chunks 1..=2, and one part-way through 5.
        let cursors = [
            Cursor::after_chunk(k(2)),
            Cursor {
                key: k(5),
                offset: 3,
            },
        ];
        let runs = plan_runs(&journal, &cursors, 1000);
        assert_eq!(runs, vec![vec![k(1), k(2)], vec![k(3), k(4)], vec![k(6)]]);
    }

    #[test]
    fn merges_group_same_class_and_respect_cursors() {
        // Series 1: eight chunks of 100 points; series 2: two chunks. All fresh.
        let info = |series, id, count| ChunkInfo {
            series,
            id,
            count,
            ts_max: 0,
        };
        let mut chunks: Vec<ChunkInfo> = (0..8).map(|i| info(1, k(i + 1) | 1, 100)).collect();
        chunks.extend([info(2, k(1) | 2, 100), info(2, k(2) | 2, 100)]);
        let merges = plan_merges(&chunks, &[], 0);
        assert_eq!(
            merges,
            vec![
                vec![k(1) | 1, k(2) | 1, k(3) | 1, k(4) | 1],
                vec![k(5) | 1, k(6) | 1, k(7) | 1, k(8) | 1]
            ]
        );
        // A sink that has read series 1's third chunk but not the fourth: the
        // first three cannot join the fourth; chunks 4..=7 merge after it.
        let c = Cursor::after_chunk(k(3) | 1);
        let merges = plan_merges(&chunks, &[c], 0);
        assert_eq!(merges, vec![vec![k(4) | 1, k(5) | 1, k(6) | 1, k(7) | 1]]);
        // Settled chunks merge whatever their sizes: series 2's pair, and a
        // mixed-size run of series 1 up to the target.
        let now = 10 * SETTLE_NS;
        let merges = plan_merges(&chunks, &[], now);
        assert!(merges.contains(&vec![k(1) | 2, k(2) | 2]), "{merges:?}");
        let sizes = [5000, 3000, 100, 200, 7000, 50, 1000, 900];
        let mixed: Vec<ChunkInfo> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| info(3, k(i as i64 + 1) | 3, n))
            .collect();
        assert_eq!(
            plan_merges(&mixed, &[], now),
            vec![vec![k(1) | 3, k(2) | 3, k(3) | 3], vec![k(6) | 3, k(7) | 3, k(8) | 3]],
            "greedy up to 8192 points; 7000 is not rewritten for 50 points; 50 + 1000 + 900 are worth it"
        );
    }

    #[test]
    fn a_busy_series_merges_its_chunks_once_into_a_full_block() {
        let info = |i: i64, count, ts_max| ChunkInfo {
            series: 1,
            id: k(i + 1) | 1,
            count,
            ts_max,
        };
        // A series sealing 600 points every 10 minutes: ten chunks wait (no
        // merge of four into 2400), the eleventh fills a block of 6600.
        let now = 10 * SETTLE_NS;
        let fresh = |n: i64| (0..n).map(|i| info(i, 600, now)).collect::<Vec<_>>();
        assert_eq!(plan_merges(&fresh(10), &[], now), Vec::<Vec<i64>>::new());
        let eleven: Vec<i64> = fresh(11).iter().map(|c| c.id).collect();
        assert_eq!(plan_merges(&fresh(11), &[], now), vec![eleven]);
        // Its older chunks settled while newer ones follow unsettled: the
        // series is still filling a block, so they are not merged yet...
        let mut run: Vec<ChunkInfo> = (0..4).map(|i| info(i, 600, 0)).collect();
        run.push(info(4, 600, now));
        assert_eq!(plan_merges(&run, &[], now), Vec::<Vec<i64>>::new());
        // ...but once the series stopped (all settled), they are.
        run[4].ts_max = 0;
        let all: Vec<i64> = run.iter().map(|c| c.id).collect();
        assert_eq!(plan_merges(&run, &[], now), vec![all]);
        // A slow series' tiny chunks, of no one size class, merge once
        // settled even while it goes on.
        let mut slow: Vec<ChunkInfo> = [1, 2, 1, 4, 1]
            .into_iter()
            .enumerate()
            .map(|(i, n)| info(i as i64, n, 0))
            .collect();
        slow.push(info(5, 1, now));
        let settled: Vec<i64> = slow[..5].iter().map(|c| c.id).collect();
        assert_eq!(plan_merges(&slow, &[], now), vec![settled]);
        // Nor do its larger chunks wait weeks to fill a block: a day old, they
        // merge too.
        let mut weeks: Vec<ChunkInfo> = (0..3).map(|i| info(i, 600, now - STALE_NS - 1)).collect();
        weeks.push(info(3, 600, now - SETTLE_NS - 1));
        weeks.push(info(4, 1, now));
        let stale: Vec<i64> = weeks[..3].iter().map(|c| c.id).collect();
        assert_eq!(plan_merges(&weeks, &[], now), vec![stale]);
    }

    #[test]
    fn compaction_keeps_every_point_in_order() {
        let (_d, mut st) = open();
        let mut want = Vec::new();
        for i in 0..64i64 {
            st.append(&Batch {
                points: vec![point("m a", i, i as f64), point("m b", -i, 0.5)],
            })
            .unwrap();
            want.push((i, i as f64));
            st.flush().unwrap();
            st.seal().unwrap();
        }
        let (before, _) = drain(&mut st, "x", Cursor::default(), 1000);
        let mut merges = 0;
        loop {
            let n = st.compact().unwrap();
            if n == 0 {
                break;
            }
            merges += n;
        }
        assert!(merges > 16 + 4, "merged {merges} times");
        let chunks: i64 = st
            .conn
            .query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(chunks, 2, "one chunk per series");
        assert_eq!(
            st.read(&SeriesKey::from_canonical("m a"), 0, 100).unwrap(),
            want
        );
        let (after, _) = drain(&mut st, "y", Cursor::default(), 1000);
        for key in ["m a", "m b"] {
            let a: Vec<_> = before.iter().filter(|p| p.series.as_str() == key).collect();
            let b: Vec<_> = after.iter().filter(|p| p.series.as_str() == key).collect();
            assert_eq!(a, b);
        }
    }

    /// A store of eight one-point chunks of "m a", planned as two merges
    /// of four.
    fn two_merges_planned() -> (tempfile::TempDir, Store) {
        let (d, mut st) = open();
        st.seal.pass_points = 4;
        for i in 0..8i64 {
            st.append(&Batch {
                points: vec![point("m a", i, i as f64)],
            })
            .unwrap();
            st.flush().unwrap();
            st.seal().unwrap();
        }
        assert_eq!(st.compact_begin().unwrap(), 2, "two groups of four chunks");
        (d, st)
    }

    /// [`two_merges_planned`] and the first step done: both merges
    /// encoded, not committed.
    fn two_merges_encoded() -> (tempfile::TempDir, Store) {
        let (d, mut st) = two_merges_planned();
        assert!(st.compact_step().unwrap(), "the commit is left");
        assert_eq!(st.compaction.ready.len(), 2, "both merges encoded");
        (d, st)
    }

    fn chunk_count(st: &Store) -> i64 {
        st.conn
            .query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))
            .unwrap()
    }

    /// A sink reads the first two points of [`two_merges_planned`]'s store
    /// (its cursor now inside the first group), the round goes to its end,
    /// and the sink reads on: the first merge waited, each point comes once.
    fn a_sink_reads_into_the_first_merge(mut st: Store) {
        let (first, at) = st.after("x", Cursor::default(), None, 2).unwrap();
        assert_eq!(first.len(), 2);
        while st.compact_step().unwrap() {}
        assert_eq!(st.compaction.skipped, 1);
        assert_eq!(
            chunk_count(&st),
            4 + 1,
            "the first four as they were, the last four merged"
        );
        let (rest, _) = drain(&mut st, "x", at, 100);
        let ts: Vec<i64> = first.points.iter().chain(&rest).map(|p| p.ts_ns).collect();
        assert_eq!(ts, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_compaction_round_leaves_a_merge_a_cursor_moved_into_for_the_next() {
        let (_d, st) = two_merges_planned();
        a_sink_reads_into_the_first_merge(st);
    }

    #[test]
    fn a_merge_a_cursor_moved_into_after_its_encoding_is_not_committed() {
        let (_d, st) = two_merges_encoded();
        a_sink_reads_into_the_first_merge(st);
    }

    #[test]
    fn a_merge_whose_input_was_evicted_after_its_encoding_is_not_committed() {
        let (_d, mut st) = two_merges_encoded();
        assert_eq!(st.evict_raw(None, 1).unwrap(), 1, "the oldest point goes");
        assert!(!st.compact_step().unwrap());
        assert_eq!(st.compaction.skipped, 1);
        assert_eq!(chunk_count(&st), 3 + 1);
        // The evicted point does not come back with its merge.
        let (all, _) = drain(&mut st, "y", Cursor::default(), 100);
        let ts: Vec<i64> = all.iter().map(|p| p.ts_ns).collect();
        assert_eq!(ts, (1..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_store_with_older_series_indexes_gets_the_two_at_open() {
        let (d, mut st) = open();
        st.append(&Batch {
            points: vec![point("m a", 1, 1.0), point("m b", 2, 2.0)],
        })
        .unwrap();
        st.flush().unwrap();
        st.seal().unwrap();
        st.conn
            .execute_batch(
                "DROP INDEX chunks_short; DROP INDEX chunks_full;
                 CREATE INDEX chunks_by_series ON chunks (series, ts_max) WHERE series != 0;
                 CREATE INDEX chunks_filling ON chunks (series, ts_max) WHERE series != 0 AND count < 6144;",
            )
            .unwrap();
        drop(st);
        let st = Store::open(&d.path().join("s.db"), Metrics::new("t")).unwrap();
        let indexes: Vec<String> = st
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'chunks' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["chunks_full", "chunks_short"]);
        let a = SeriesKey::from_canonical("m a");
        assert_eq!(st.read(&a, 0, 10).unwrap(), vec![(1, 1.0)]);
        assert_eq!(st.oldest_raw(&a).unwrap(), Some(1));
    }

    #[test]
    fn series_queries_use_the_series_index() {
        let (_d, st) = open();
        assert_eq!(FULL, 6144, "the partial indexes' bound, spelt out in SQL");
        for sql in [SERIES_CHUNKS, SERIES_OLDEST, SERIES_BYTES] {
            let plan = query_plan(&st, sql);
            assert!(
                plan.iter().all(|step| !step.starts_with("SCAN chunks")),
                "a whole-table scan per query: {plan:?}"
            );
            for index in ["chunks_short", "chunks_full"] {
                assert!(plan.iter().any(|step| step.contains(index)), "{plan:?}");
            }
        }
        // Compaction's plan reads the index in its order: no sort of what
        // may be every chunk short of full.
        let plan = query_plan(&st, PLAN_CHUNKS);
        assert!(
            plan.iter().any(|step| step.contains("chunks_short")),
            "{plan:?}"
        );
        assert!(
            plan.iter().all(|step| !step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }

    /// SQLite's plan for `sql`, its parameters bound to 1, 2, ...
    fn query_plan(st: &Store, sql: &str) -> Vec<String> {
        let mut stmt = st
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let args: Vec<i64> = (1..=stmt.parameter_count() as i64).collect();
        stmt.query_map(rusqlite::params_from_iter(&args), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn runs_respect_point_cap() {
        let journal: Vec<(i64, i64)> = (1..=5).map(|s| (k(s), 10)).collect();
        let runs = plan_runs(&journal, &[], 25);
        assert_eq!(runs, vec![vec![k(1), k(2)], vec![k(3), k(4)], vec![k(5)]]);
    }

    fn point(key: &str, ts: i64, v: f64) -> Point {
        Point {
            series: SeriesKey::from_canonical(key),
            ts_ns: ts,
            value: v,
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), Metrics::new("t")).unwrap();
        (dir, store)
    }

    fn drain(store: &mut Store, sink: &str, from: Cursor, limit: usize) -> (Vec<Point>, Cursor) {
        let mut out = Vec::new();
        let mut c = from;
        loop {
            let (b, next) = store.after(sink, c, None, limit).unwrap();
            if b.is_empty() {
                return (out, c);
            }
            out.extend(b.points);
            c = next;
        }
    }

    #[test]
    fn sealing_keeps_what_a_cursor_has_not_read() {
        let (_d, mut st) = open();
        let mut all = Vec::new();
        for i in 0..20 {
            let b = Batch {
                points: vec![point("m a", i, i as f64), point("m b", i, -(i as f64))],
            };
            all.extend(b.points.clone());
            st.append(&b).unwrap();
            st.flush().unwrap();
        }
        // The sink reads 13 points (part-way through a chunk), acks them.
        let (first, c) = st.after("s", Cursor::default(), None, 13).unwrap();
        st.ack("s", c).unwrap();
        assert_eq!(c.offset, 1);
        st.seal().unwrap();
        let (rest, _) = drain(&mut st, "s", c, 7);
        // Nothing lost, nothing repeated; per series in order.
        let mut got = first.points.clone();
        got.extend(rest);
        assert_eq!(got.len(), all.len());
        for key in ["m a", "m b"] {
            let want: Vec<_> = all.iter().filter(|p| p.series.as_str() == key).collect();
            let have: Vec<_> = got.iter().filter(|p| p.series.as_str() == key).collect();
            assert_eq!(want, have, "series {key}");
        }
    }

    /// A store with `flushes` journal chunks of series "m 0".."m 5", and
    /// seals gathering at most 2 series' points a step (three groups).
    fn stepped_store(flushes: i64) -> (tempfile::TempDir, Store, Vec<Point>) {
        let (d, mut st) = open();
        st.seal.pass_points = 2 * flushes as usize;
        st.seal.commit_points = 1;
        // Groups of 16 flushes, as the tests spell out.
        st.chain.group_flushes = 16;
        let mut all = Vec::new();
        stepped_flushes(&mut st, 0..flushes, &mut all);
        (d, st, all)
    }

    /// Flushes `at` of [`stepped_store`]'s feed (a point of each series `m
    /// 0`..`m 5` at each time), adding the points to `all`.
    fn stepped_flushes(st: &mut Store, at: std::ops::Range<i64>, all: &mut Vec<Point>) {
        for i in at {
            let b = Batch {
                points: (0..6)
                    .map(|k| point(&format!("m {k}"), i, (i * 10 + k) as f64))
                    .collect(),
            };
            all.extend(b.points.clone());
            st.append(&b).unwrap();
            st.flush().unwrap();
        }
    }

    /// Series `m {k}` for each `k` reads back as `all` holds it, in order.
    fn assert_series_read(st: &Store, all: &[Point], ks: impl IntoIterator<Item = usize>) {
        for k in ks {
            let key = SeriesKey::from_canonical(&format!("m {k}"));
            let want: Vec<(i64, f64)> = all
                .iter()
                .filter(|p| p.series == key)
                .map(|p| (p.ts_ns, p.value))
                .collect();
            assert_eq!(st.read(&key, i64::MIN, i64::MAX).unwrap(), want, "{key:?}");
        }
    }

    /// Every point of `all` is read exactly once, per series and by a sink
    /// reading from the start, and no hidden chunk is counted.
    fn assert_once(st: &mut Store, all: &[Point]) {
        assert_series_read(st, all, 0..6);
        assert_eq!(st.backlog(Cursor::default()).unwrap(), all.len() as u64);
        let (got, _) = drain(st, "reader", Cursor::default(), 7);
        let mut got: Vec<_> = got.iter().map(|p| (p.series.clone(), p.ts_ns)).collect();
        let mut want: Vec<_> = all.iter().map(|p| (p.series.clone(), p.ts_ns)).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    /// Begins a seal and takes `n` of its steps, each of which must leave more to do.
    fn seal_steps(st: &mut Store, n: usize) {
        st.seal_begin();
        for _ in 0..n {
            assert!(st.seal_step().unwrap());
        }
    }

    /// Journal chunks and sealed chunks in the file.
    fn journal_and_sealed(st: &Store) -> (i64, i64) {
        let sealed = st
            .conn
            .query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))
            .unwrap();
        (st.journal.frames().len() as i64, sealed)
    }

    fn hidden_chunks(st: &Store) -> i64 {
        st.conn
            .query_row(
                concat!("SELECT COUNT(*) FROM chunks WHERE NOT ", valid!()),
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// The group distance of each journal frame, by sequence number.
    fn backs(st: &Store) -> Vec<(i64, u32)> {
        st.journal
            .frames()
            .iter()
            .map(|(&key, r)| (key >> SERIES_BITS, r.back))
            .collect()
    }

    #[test]
    fn journal_frames_are_coded_in_groups_and_read_from_any_frame() {
        let (d, mut st, all) = stepped_store(20);
        // A group every 16 flushes (64 but in tests), each frame naming how
        // far back it begins.
        let want: Vec<(i64, u32)> = (1..=20).map(|q| (q, ((q - 1) % 16) as u32)).collect();
        assert_eq!(backs(&st), want);
        // A reader starting mid-group, one frame at a time and at once.
        let from = Cursor::after_chunk(k(11));
        let (one, _) = drain(&mut st, "s", from, 4);
        let (whole, _) = drain(&mut st, "t", from, 1000);
        let rest: Vec<Point> = all[11 * 6..].to_vec();
        assert_eq!(one, rest);
        assert_eq!(whole, rest);
        assert_once(&mut st, &all);
        drop(st);
        let mut st = Store::open(&d.path().join("s.db"), Metrics::new("t")).unwrap();
        assert_once(&mut st, &all);
        // After a reopen the next flush begins a group.
        let mut all = all;
        stepped_flushes(&mut st, 20..22, &mut all);
        assert_eq!(backs(&st)[20..], [(21, 0), (22, 1)]);
        assert_once(&mut st, &all);
    }

    #[test]
    fn the_store_codes_the_journal_in_groups_of_64_flushes() {
        let (_d, mut st) = open();
        let mut all = Vec::new();
        stepped_flushes(&mut st, 0..70, &mut all);
        let want: Vec<(i64, u32)> = (1..=70).map(|q| (q, ((q - 1) % 64) as u32)).collect();
        assert_eq!(backs(&st), want);
        assert_once(&mut st, &all);
    }

    #[test]
    fn two_lanes_reading_at_two_places_decode_each_frame_once() {
        let (_d, mut st, all) = stepped_store(40);
        // A backfill lane from the start and a live lane from flush 20 on,
        // taking turns, each batch ending part-way through a frame.
        let (mut back, mut live) = (Cursor::default(), Cursor::after_chunk(k(20)));
        let (mut got_back, mut got_live) = (Vec::new(), Vec::new());
        loop {
            let (b, next) = st
                .after("s/backfill", back, Some(Cursor::after_chunk(k(20))), 4)
                .unwrap();
            let (l, lnext) = st.after("s/live", live, None, 4).unwrap();
            if b.is_empty() && l.is_empty() {
                break;
            }
            (back, live) = (next, lnext);
            got_back.extend(b.points);
            got_live.extend(l.points);
        }
        assert_eq!(got_back, all[..20 * 6]);
        assert_eq!(got_live, all[20 * 6..]);
        // Chunks 17..=32 are one group: the live lane decodes 17..=20 once,
        // to start at 21, then every frame once; re-reads of a frame a
        // batch ended in decode nothing.
        assert_eq!(st.chain_readers["s/backfill"].decoded(), 20);
        assert_eq!(st.chain_readers["s/live"].decoded(), 4 + 20);
    }

    #[test]
    fn what_a_seal_leaves_of_a_group_is_rewritten_alone() {
        let (d, mut st, all) = stepped_store(20);
        // A sink part-way through chunk 4 (group 1..=8): the seal takes 1..=3
        // and 5..=20, and keeps 4, whose group goes.
        let (_, c) = st.after("s", Cursor::after_chunk(k(3)), None, 2).unwrap();
        st.ack("s", c).unwrap();
        assert_eq!(
            c,
            Cursor {
                key: k(4),
                offset: 2
            }
        );
        st.seal().unwrap();
        assert_eq!(backs(&st), [(4, 0)]);
        assert_once(&mut st, &all);
        // Sealed, the rest comes a series at a time.
        let (mut rest, _) = drain(&mut st, "s", c, 5);
        let mut want = all[3 * 6 + 2..].to_vec();
        rest.sort_by(|a, b| (&a.series, a.ts_ns).cmp(&(&b.series, b.ts_ns)));
        want.sort_by(|a, b| (&a.series, a.ts_ns).cmp(&(&b.series, b.ts_ns)));
        assert_eq!(rest, want);
        drop(st);
        let mut st = Store::open(&d.path().join("s.db"), Metrics::new("t")).unwrap();
        assert_once(&mut st, &all);
    }

    #[test]
    fn a_frame_lost_to_damage_takes_the_rest_of_its_group_only() {
        let (d, mut st) = open();
        st.journal.set_rotate_bytes(1); // a file a flush
        st.chain.group_flushes = 16;
        let mut all = Vec::new();
        stepped_flushes(&mut st, 0..20, &mut all);
        let r = st.journal.frames()[&k(10)];
        drop(st);
        // Flip a byte of chunk 10's payload (group 1..=16).
        let file = journal_dir(&d.path().join("s.db")).join(format!("{:016x}.tgj", r.segment));
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[r.offset as usize + 3] ^= 0x40;
        std::fs::write(&file, bytes).unwrap();
        let mut st = Store::open(&d.path().join("s.db"), Metrics::new("t")).unwrap();
        let seqs: Vec<i64> = backs(&st).iter().map(|b| b.0).collect();
        let want: Vec<i64> = (1..=9).chain(17..=20).collect();
        assert_eq!(seqs, want);
        // Flush i is chunk i + 1: flushes 9..=15 are lost, the rest reads.
        let kept: Vec<Point> = all
            .iter()
            .filter(|p| !(9..=15).contains(&p.ts_ns))
            .cloned()
            .collect();
        assert_once(&mut st, &kept);
    }

    #[test]
    fn large_flushes_are_cut_into_journal_rows_that_seal_pass_by_pass() {
        let (_d, mut st) = open();
        // Passes of ~40 series: each reads only the rows that hold its series.
        st.seal.pass_points = 120;
        let series = 5000;
        let mut all = Vec::new();
        for i in 0..3 {
            // Arrival order unlike id order, a series twice in one flush.
            let b = Batch {
                points: (0..series)
                    .rev()
                    .chain(0..100)
                    .enumerate()
                    .map(|(j, k)| {
                        point(&format!("m {k}"), i * 10_000 + j as i64, (k * 3 + i) as f64)
                    })
                    .collect(),
            };
            all.extend(b.points.clone());
            st.append(&b).unwrap();
            st.flush().unwrap();
        }
        // Rows of at least JOURNAL_PART_POINTS points of whole series.
        let counts: Vec<i64> = st
            .journal
            .frames()
            .values()
            .map(|f| i64::from(f.count))
            .collect();
        assert_eq!(counts.len(), 6, "{counts:?}");
        assert!(
            counts.iter().all(|&c| c >= JOURNAL_PART_POINTS as i64),
            "{counts:?}"
        );
        assert_eq!(counts.iter().sum::<i64>(), all.len() as i64);
        let check = |st: &mut Store| {
            let (got, _) = drain(st, "reader", Cursor::default(), 10_000);
            let mut got: Vec<_> = got
                .iter()
                .map(|p| (p.series.clone(), p.ts_ns, p.value.to_bits()))
                .collect();
            let mut want: Vec<_> = all
                .iter()
                .map(|p| (p.series.clone(), p.ts_ns, p.value.to_bits()))
                .collect();
            got.sort();
            want.sort();
            assert_eq!(got, want);
            assert_series_read(st, &all, [0, 99, 100, 2777, 4999]);
        };
        check(&mut st);
        st.seal().unwrap();
        let (journal, sealed) = journal_and_sealed(&st);
        assert_eq!((journal, sealed), (0, series));
        check(&mut st);
    }

    #[test]
    fn a_seal_in_steps_hides_its_chunks_until_its_last_step() {
        a_seal_in_steps_hides_its_chunks(1, 6); // plan, count, three groups, the last step
        a_seal_in_steps_hides_its_chunks(40, 5); // two groups in one commit, then one
    }

    fn a_seal_in_steps_hides_its_chunks(commit_points: usize, want_steps: usize) {
        let (_d, mut st, all) = stepped_store(10);
        st.seal.commit_points = commit_points;
        // A sink that has read nothing yet: it must wait while the run is sealed.
        let _ = st.cursor("s").unwrap();
        st.seal_begin();
        let mut steps = 0;
        let mut hidden_seen = 0;
        while st.seal_step().unwrap() {
            steps += 1;
            if st.seal.job.is_some() {
                let (b, next) = st.after("s", Cursor::default(), None, 100).unwrap();
                assert!(b.is_empty(), "a sink read into a run being sealed");
                assert_eq!(next, Cursor::default());
                // The store task holds such a read rather than answer "caught up"...
                assert!(st.read_held(Cursor::default(), None));
                // ...but not one that ends before the run.
                let first = st.seal.job.as_ref().unwrap().run[0];
                let before = Cursor {
                    key: first,
                    offset: 0,
                };
                assert!(!st.read_held(Cursor::default(), Some(before)));
            }
            hidden_seen = hidden_seen.max(hidden_chunks(&st));
            let read: Vec<i64> = st
                .read(&SeriesKey::from_canonical("m 0"), 0, 100)
                .unwrap()
                .iter()
                .map(|p| p.0)
                .collect();
            assert_eq!(read, (0..10).collect::<Vec<_>>(), "after step {steps}");
        }
        assert_eq!(steps, want_steps);
        assert_eq!(hidden_seen, 6, "the groups' chunks were not hidden");
        assert!(st.journal.is_empty());
        assert_eq!(hidden_chunks(&st), 0);
        assert_once(&mut st, &all);
    }

    #[test]
    fn a_seal_dropped_part_way_is_done_again_from_the_journal() {
        let (_d, mut st, all) = stepped_store(10);
        seal_steps(&mut st, 3); // plan, count, one group
        assert_eq!(hidden_chunks(&st), 2);
        // As a clock correction (or an error) drops it.
        st.seal_abort();
        assert_once(&mut st, &all);
        // Sealing again replaces what the dropped seal wrote.
        assert_eq!(st.seal().unwrap(), 10);
        assert_eq!(hidden_chunks(&st), 0);
        assert_once(&mut st, &all);
    }

    #[test]
    fn a_seal_dropped_part_way_and_planned_longer_leaves_nothing_twice() {
        let (_d, mut st, mut all) = stepped_store(10);
        seal_steps(&mut st, 3); // plan, count, one group
        assert_eq!(hidden_chunks(&st), 2);
        st.seal_abort();
        // More flushes: the next seal's run ends past the dropped one's,
        // whose hidden chunks are keyed by its own last journal chunk.
        stepped_flushes(&mut st, 10..14, &mut all);
        assert_eq!(st.seal().unwrap(), 14);
        assert_eq!(hidden_chunks(&st), 0);
        assert_once(&mut st, &all);
        assert_series_read(&st, &all, 0..6);
    }

    #[test]
    fn the_head_during_a_seal_is_after_the_whole_run() {
        let (_d, mut st, _all) = stepped_store(10);
        seal_steps(&mut st, 3); // plan, count, one group: some chunks hidden
        assert_eq!(hidden_chunks(&st), 2);
        let head = st.head().unwrap();
        st.track("live", head);
        while st.seal_step().unwrap() {}
        let (b, _) = st.after("live", head, None, 100).unwrap();
        assert!(
            b.is_empty(),
            "points flushed before the head: {:?}",
            b.points
        );
    }

    #[test]
    fn a_chunk_a_sink_was_part_way_through_is_sealed_later_alone_and_once() {
        let (d, mut st, all) = stepped_store(10);
        let (_, c) = st.after("s", Cursor::default(), None, 15).unwrap();
        st.ack("s", c).unwrap();
        assert_eq!(c.offset, 3);
        st.seal().unwrap();
        // The chunk read part-way stays in the journal, below the watermark.
        let journal = |st: &Store| st.journal.frames().keys().copied().collect::<Vec<_>>();
        assert_eq!(journal(&st), [c.key]);
        assert_eq!(st.sealed.kept.iter().copied().collect::<Vec<_>>(), [c.key]);
        assert_once(&mut st, &all);
        st.flush().unwrap();
        drop(st);
        let mut st = Store::open(&d.path().join("s.db"), Metrics::new("t")).unwrap();
        assert_eq!(journal(&st), [c.key]);
        assert_once(&mut st, &all);
        // Once the sink is past it, it is sealed alone, its chunks hidden
        // (below the watermark) until the seal's last step.
        let (_, end) = drain(&mut st, "s", c, 100);
        st.ack("s", end).unwrap();
        seal_steps(&mut st, 3);
        assert_eq!(hidden_chunks(&st), 6);
        assert_series_read(&st, &all, 0..6);
        while st.seal_step().unwrap() {}
        assert!(journal(&st).is_empty() && st.sealed.kept.is_empty());
        assert_eq!(hidden_chunks(&st), 0);
        assert_once(&mut st, &all);
        drop(st);
        let mut st = Store::open(&d.path().join("s.db"), Metrics::new("t")).unwrap();
        assert!(journal(&st).is_empty());
        assert_once(&mut st, &all);
    }

    #[test]
    fn the_head_is_past_the_runs_sealed_after_a_kept_chunk() {
        let (_d, mut st, _all) = stepped_store(10);
        let (_, c) = st.after("s", Cursor::default(), None, 15).unwrap();
        st.ack("s", c).unwrap();
        st.seal().unwrap();
        assert_eq!(st.sealed.kept.iter().copied().collect::<Vec<_>>(), [c.key]);
        // A live reader starting at the head finds nothing already stored.
        let head = st.head().unwrap();
        assert!(head.key > c.key);
        let (b, _) = st.after("live", head, None, 100).unwrap();
        assert!(b.points.is_empty(), "{} points behind the head", b.len());
    }

    #[test]
    fn of_two_chunks_kept_below_the_watermark_sealing_one_keeps_the_other() {
        let (_d, mut st, all) = stepped_store(10);
        let (_, a) = st.after("a", Cursor::default(), None, 15).unwrap();
        st.ack("a", a).unwrap();
        let (_, b) = st.after("b", Cursor::default(), None, 39).unwrap();
        st.ack("b", b).unwrap();
        st.seal().unwrap();
        let journal = |st: &Store| st.journal.frames().keys().copied().collect::<Vec<_>>();
        assert_eq!(journal(&st), [a.key, b.key]);
        // Sink a moves on: its chunk is sealed alone; b's stays kept.
        let (_, end) = drain(&mut st, "a", a, 100);
        st.ack("a", end).unwrap();
        assert_eq!(st.seal().unwrap(), 1);
        assert_eq!(journal(&st), [b.key]);
        assert_eq!(st.sealed.kept.iter().copied().collect::<Vec<_>>(), [b.key]);
        assert_once(&mut st, &all);
        let (_, end) = drain(&mut st, "b", b, 100);
        st.ack("b", end).unwrap();
        assert_eq!(st.seal().unwrap(), 1);
        assert!(journal(&st).is_empty());
        assert_once(&mut st, &all);
    }

    #[test]
    fn a_seal_cut_short_by_a_stop_is_undone_at_open() {
        let (d, mut st, all) = stepped_store(10);
        seal_steps(&mut st, 4); // plan, count, two groups
        assert_eq!(hidden_chunks(&st), 4);
        // Each step committed: dropping the store here is a kill between steps.
        drop(st);
        let mut st = Store::open(&d.path().join("s.db"), Metrics::new("t")).unwrap();
        assert_eq!(hidden_chunks(&st), 0);
        assert_eq!(st.journal.len(), 10);
        assert_once(&mut st, &all);
        assert_eq!(st.seal().unwrap(), 10);
        assert_once(&mut st, &all);
    }

    #[test]
    fn sequence_numbers_go_on_past_the_watermark_when_everything_was_evicted() {
        let (d, mut st) = open();
        for i in 0..10 {
            st.append(&Batch {
                points: vec![point("m a", i, i as f64)],
            })
            .unwrap();
            st.flush().unwrap();
        }
        st.seal().unwrap();
        let c = st.cursor("s").unwrap();
        let (_, c) = drain(&mut st, "s", c, 100);
        st.ack("s", c).unwrap();
        st.flush().unwrap();
        st.set_limits(Limits {
            max_age_ns: Some(1),
            ..Limits::default()
        });
        st.evict(1_000, None).unwrap();
        assert!(st
            .read(&SeriesKey::from_canonical("m a"), 0, i64::MAX)
            .unwrap()
            .is_empty());
        let through = st.counter("sealed_through").unwrap() as i64;
        drop(st);
        let mut st = Store::open(&d.path().join("s.db"), Metrics::new("t")).unwrap();
        let later = Batch {
            points: vec![point("m a", 2_000, 1.0)],
        };
        st.append(&later).unwrap();
        assert!(
            st.flush().unwrap().unwrap() > through,
            "a sequence number reused"
        );
        st.seal().unwrap();
        let c = st.cursor("s").unwrap();
        let (got, _) = drain(&mut st, "s", c, 100);
        assert_eq!(got, later.points, "the sink gets what came after eviction");
    }

    /// Puts the journal back in the database's table, as a Tidegate of
    /// 2026-12-06 kept it, and removes its files.
    fn journal_to_table(st: &mut Store) {
        let mut data = Vec::new();
        for (&key, f) in st.journal.frames() {
            st.journal
                .read_into(key, &mut data, codec::Checksum::Skip)
                .unwrap();
            st.conn
                .execute(
                    "INSERT INTO journal (id, ts_min, ts_max, count, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![key, f.ts_min, f.ts_max, f.count, data],
                )
                .unwrap();
        }
        std::fs::remove_dir_all(journal_dir(&st.path)).unwrap();
    }

    #[test]
    fn journal_rows_in_the_database_move_to_the_files_at_open() {
        let (d, mut st, mut all) = stepped_store(10);
        st.seal().unwrap();
        stepped_flushes(&mut st, 10..20, &mut all);
        journal_to_table(&mut st);
        let mut st = reopen_outdated(st, &d);
        assert_eq!(journal_and_sealed(&st), (10, 6));
        let rows: i64 = st
            .conn
            .query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "the table is emptied");
        assert_once(&mut st, &all);
        let ro = Store::open_read_only(&d.path().join("s.db")).unwrap();
        assert_series_read(&ro, &all, 0..6);
        drop(ro);
        assert_eq!(st.seal().unwrap(), 10);
        assert_once(&mut st, &all);
    }

    /// Reopens a store of an older layout: read-only, a clear error (it
    /// cannot be brought up to date); for writing, brought up to date.
    fn reopen_outdated(st: Store, d: &tempfile::TempDir) -> Store {
        drop(st);
        let path = d.path().join("s.db");
        assert!(matches!(
            Store::open_read_only(&path),
            Err(StoreError::Outdated)
        ));
        Store::open(&path, Metrics::new("t")).unwrap()
    }

    #[test]
    fn a_store_from_before_the_journal_table_is_brought_up_to_date_at_open() {
        // Sealed twice, then a seal of the rest cut short: hidden chunks.
        let (d, mut st, mut all) = stepped_store(10);
        st.seal().unwrap();
        stepped_flushes(&mut st, 10..20, &mut all);
        st.seal().unwrap();
        stepped_flushes(&mut st, 20..30, &mut all);
        seal_steps(&mut st, 4);
        assert_eq!(hidden_chunks(&st), 4);
        // What such a store held: journal chunks as series 0 of `chunks`,
        // no watermark.
        journal_to_table(&mut st);
        st.conn
            .execute_batch(
                "INSERT INTO chunks (id, series, seq_hi, ts_min, ts_max, count, data)
                 SELECT id, 0, id >> 20, ts_min, ts_max, count, data FROM journal;
                 DROP TABLE journal;
                 DELETE FROM counters WHERE name = 'sealed_through';",
            )
            .unwrap();
        // Opened for writing: journal moved, watermark recorded, cut seal undone.
        let mut st = reopen_outdated(st, &d);
        let path = d.path().join("s.db");
        assert_eq!(hidden_chunks(&st), 0);
        assert_eq!(journal_and_sealed(&st), (10, 12));
        assert_eq!(st.counter("sealed_through").unwrap(), 20);
        assert_once(&mut st, &all);
        assert_eq!(st.seal().unwrap(), 10);
        assert_eq!(st.counter("sealed_through").unwrap(), 30);
        assert_once(&mut st, &all);
        let ro = Store::open_read_only(&path).unwrap();
        assert_series_read(&ro, &all, 0..6);
    }

    #[test]
    fn rollups_cover_sealed_and_journal_points() {
        let (_d, mut st) = open();
        let min = 60_000_000_000i64;
        let key = SeriesKey::from_canonical("m a");
        let mut raw = Vec::new();
        for i in 0..300i64 {
            let (ts, v) = (i * 1_000_000_000, (i % 17) as f64 * 0.5);
            raw.push((ts, v));
            st.append(&Batch {
                points: vec![point("m a", ts, v)],
            })
            .unwrap();
            if i % 50 == 49 {
                st.flush().unwrap();
            }
            if i == 149 {
                st.seal().unwrap();
            }
        }
        st.flush().unwrap();
        let windows = st.read_rollup(&key, 60, 0, 300 * 1_000_000_000).unwrap();
        let want = aggregate(
            &raw.iter().map(|p| p.0).collect::<Vec<_>>(),
            &raw.iter().map(|p| p.1).collect::<Vec<_>>(),
            min,
        );
        assert_eq!(windows, want.into_iter().collect::<Vec<_>>());
        // Sealing the rest moves points from the journal into the windows: same answer.
        st.seal().unwrap();
        assert_eq!(
            st.read_rollup(&key, 60, 0, 300 * 1_000_000_000).unwrap(),
            windows
        );
        let hour = st.read_rollup(&key, 3600, 0, 300 * 1_000_000_000).unwrap();
        assert_eq!(hour.len(), 1);
        assert_eq!(hour[0].1.count, 300);
    }

    #[test]
    fn eviction_folds_delivered_rollups_into_few_rows() {
        // A full store evicts chunks as young as one seal (5 s of a series
        // here): their windows go into one row per 64 windows, not a row each.
        let (_d, mut st) = open();
        // Thousands of commits: without fsync, or under qemu this one test
        // takes minutes. Durability is not what it checks.
        st.conn.pragma_update(None, "synchronous", "OFF").unwrap();
        let keys = ["m a", "m b", "m c"];
        let mut all: Vec<Vec<(i64, f64)>> = vec![Vec::new(); keys.len()];
        st.set_limits(Limits {
            max_disk_bytes: 128 << 10,
            ..Limits::default()
        });
        let mut evicted = 0;
        for i in 0..8_000i64 {
            let points: Vec<Point> = keys
                .iter()
                .enumerate()
                .map(|(k, key)| {
                    let v = ((i * 7919 + k as i64 * 104_729) % 100_003) as f64;
                    all[k].push((i * 1_000_000_000, v));
                    point(key, i * 1_000_000_000, v)
                })
                .collect();
            st.append(&Batch { points }).unwrap();
            if i % 5 == 4 {
                st.flush().unwrap();
                st.seal().unwrap();
                let ev = st.evict(0, None).unwrap();
                assert_eq!(ev.windows, 0, "the budget holds the rollups");
                evicted += ev.raw_points;
            }
        }
        assert!(evicted > 12_000, "eviction ran: {evicted} points");
        for &tier in st.tiers().to_vec().iter() {
            for (k, key) in keys.iter().enumerate() {
                let key = SeriesKey::from_canonical(key);
                let sid = st.ids[&key];
                let rows: i64 = st
                    .conn
                    .query_row(
                        "SELECT COUNT(*) FROM rollup_chunks WHERE series = ?1 AND tier = ?2",
                        params![sid, tier],
                        |r| r.get(0),
                    )
                    .unwrap();
                let (ts, vs): (Vec<i64>, Vec<f64>) = all[k].iter().copied().unzip();
                let expected: Vec<(i64, Agg)> = aggregate(&ts, &vs, tier * 1_000_000_000)
                    .into_iter()
                    .collect();
                assert!(
                    rows as usize <= expected.len() / ROW_WINDOWS + 2,
                    "tier {tier}: {rows} rows for {} windows",
                    expected.len()
                );
                let got = st.read_rollup(&key, tier, 0, i64::MAX).unwrap();
                assert!(got == expected, "tier {tier}: windows changed by eviction");
            }
        }
    }

    #[test]
    fn rollup_rows_of_the_first_encoding_still_read() {
        let windows: BTreeMap<i64, Agg> = [
            (0, Agg::point(5, 1.5)),
            (60_000_000_000, Agg::point(60_000_000_001, -2.0)),
        ]
        .into();
        let cols = WindowColumns {
            start: windows.keys().copied().collect(),
            aggs: windows.values().copied().collect(),
        };
        let old = zstd::bulk::compress(&postcard::to_allocvec(&cols).unwrap(), 9).unwrap();
        let want: Vec<(i64, Agg)> = windows.clone().into_iter().collect();
        assert_eq!(decode_windows(&old).unwrap(), want);
        assert_eq!(decode_windows(&encode_windows(&windows)).unwrap(), want);
    }

    /// Appends one point a second of series `m a` for seconds `[from, to)`,
    /// sealing every 7 s (small chunks, as eviction meets them at a full
    /// budget), and seals the rest.
    fn add_small_chunks(st: &mut Store, from: i64, to: i64) {
        for t in from..to {
            st.append(&Batch {
                points: vec![point("m a", t * 1_000_000_000, t as f64)],
            })
            .unwrap();
            if t % 7 == 6 {
                st.flush().unwrap();
                st.seal().unwrap();
            }
        }
        st.flush().unwrap();
        st.seal().unwrap();
    }

    #[test]
    fn a_group_whose_rollups_were_evicted_is_not_extended() {
        let (_d, mut st) = open();
        st.cursor("a").unwrap();
        add_small_chunks(&mut st, 0, 140);
        assert_eq!(st.evict_raw(None, 10).unwrap(), 70);
        assert!(st.evict_windows(1000).unwrap() > 0);
        assert_eq!(st.evict_raw(None, 100).unwrap(), 70);
        let head = st.head().unwrap();
        st.ack("a", head).unwrap();
        let pending = st.degraded_pending("a", 60, 10).unwrap();
        let got: Vec<(u64, u64)> = pending
            .ranges
            .iter()
            .map(|r| (r.points, r.windows.iter().map(|w| w.1.count).sum()))
            .collect();
        // The first range lost its windows; the second has its own.
        assert_eq!(got, vec![(70, 0), (70, 70)]);
    }

    #[test]
    fn degraded_chunks_share_rows_until_handed_out() {
        let (_d, mut st) = open();
        st.cursor("a").unwrap();
        st.cursor("b").unwrap();
        let key = SeriesKey::from_canonical("m a");
        let add = add_small_chunks;
        let rows = |st: &Store, sink: &str| -> Vec<(i64, i64, i64, i64)> {
            let mut stmt = st
                .conn
                .prepare("SELECT ts_min, ts_max, points, sent FROM degraded WHERE sink = ?1 ORDER BY rowid")
                .unwrap();
            let r = stmt
                .query_map([sink], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap();
            r.map(|r| r.unwrap()).collect()
        };
        add(&mut st, 0, 280);
        // 20 chunks of 7 s that both sinks lack: one row each, not 20.
        assert_eq!(st.evict_raw(None, 20).unwrap(), 140);
        let s = 1_000_000_000;
        assert_eq!(rows(&st, "a"), vec![(0, 139 * s, 140, 0)]);
        assert_eq!(rows(&st, "b"), vec![(0, 139 * s, 140, 0)]);
        // Now only `a` lacks what is evicted: a group of its own.
        let head = st.head().unwrap();
        st.ack("b", head).unwrap();
        assert_eq!(st.evict_raw(None, 100).unwrap(), 140);
        assert_eq!(rows(&st, "a")[1], (140 * s, 279 * s, 140, 0));
        assert_eq!(rows(&st, "b").len(), 1);
        // `a` catches up; its ranges are final and handed out.
        st.ack("a", head).unwrap();
        let pending = st.degraded_pending("a", 60, 10).unwrap();
        assert_eq!(pending.held, 0);
        let points: Vec<u64> = pending.ranges.iter().map(|r| r.points).collect();
        assert_eq!(points, vec![140, 140]);
        // A late point in the handed-out range's last window: evicted before
        // `a` had it, it gets a row of its own, so what is being sent stays
        // what it was.
        add(&mut st, 275, 276);
        let head = st.head().unwrap();
        st.ack("b", head).unwrap();
        assert_eq!(st.evict_raw(None, 100).unwrap(), 1);
        let a = rows(&st, "a");
        assert_eq!(a.len(), 3);
        assert_eq!(a[1], (140 * s, 279 * s, 140, 0));
        assert_eq!(a[2], (275 * s, 275 * s, 1, 0));
        // Its window goes again, whole: all `a` lost of it (the 40 points of
        // 240-279 s sent before, and the late one).
        let ids: Vec<i64> = pending.ranges.iter().map(|r| r.id).collect();
        st.degraded_sent("a", &ids, 0).unwrap();
        let rest = st.degraded_pending("a", 60, 10).unwrap();
        assert_eq!(rest.ranges.len(), 1);
        assert_eq!(rest.ranges[0].points, 1);
        assert_eq!(rest.ranges[0].windows.len(), 1);
        assert_eq!(rest.ranges[0].windows[0].1.count, 41);
        // The history counts every point once.
        let all: u64 = st
            .read_rollup(&key, 60, 0, i64::MAX)
            .unwrap()
            .iter()
            .map(|w| w.1.count)
            .sum();
        assert_eq!(all, 281);
    }

    #[test]
    fn journal_files_kept_for_reuse_go_before_any_point() {
        let (_d, mut st, _all) = stepped_store(10);
        st.seal().unwrap();
        let dir = journal_dir(&st.path);
        let pool = || -> u64 {
            std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tgr"))
                .map(|e| e.metadata().unwrap().len())
                .sum()
        };
        let pooled = pool();
        assert!(pooled > 0);
        let used = st.used_bytes().unwrap();
        // The file system is short of just what they hold.
        st.set_limits(Limits {
            min_free_disk: 1 << 30,
            ..Limits::default()
        });
        let free = (1 << 30) - pooled;
        assert_eq!(st.evict(0, Some(free)).unwrap(), Evicted::default());
        assert_eq!((pool(), st.used_bytes().unwrap()), (0, used - pooled));
    }

    #[test]
    fn a_clean_close_leaves_no_journal_file_kept_for_reuse() {
        let (_d, mut st, mut all) = stepped_store(10);
        st.seal().unwrap();
        // Flushes after the seal take the sealed file from the pool; the
        // close seals them and the file goes back to the pool, then away.
        stepped_flushes(&mut st, 10..12, &mut all);
        let files = |st: &Store| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(journal_dir(&st.path))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(files(&st).len(), 1);
        assert!(!files(&st)[0].ends_with(".tgr"));
        st.close().unwrap();
        assert_eq!(files(&st), Vec::<String>::new());
        let path = st.path.clone();
        drop(st);
        // Everything is still there, and the journal grows a file again.
        let mut st = Store::open(&path, Metrics::new("t")).unwrap();
        assert_series_read(&st, &all, 0..6);
        stepped_flushes(&mut st, 12..13, &mut all);
        assert_series_read(&st, &all, 0..6);
        assert_eq!(files(&st).len(), 1);
    }

    #[test]
    fn eviction_degrades_unsent_raw_and_keeps_rollups() {
        let (_d, mut st) = open();
        st.cursor("cloud").unwrap(); // a sink that never got anything
        let mut rng = 1u64;
        for i in 0..40_000i64 {
            // Noisy values so chunks do not compress to nothing.
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Integers below 2^40: every window sum is exact, so equality is exact.
            let v = (rng >> 24) as f64;
            st.append(&Batch {
                points: vec![point("m a", i * 1_000_000_000, v)],
            })
            .unwrap();
            if i % 997 == 996 {
                st.flush().unwrap();
                st.seal().unwrap();
            }
        }
        st.flush().unwrap();
        let before = st.used_bytes().unwrap();
        let windows_before = st
            .read_rollup(&SeriesKey::from_canonical("m a"), 60, 0, i64::MAX)
            .unwrap();
        st.set_limits(Limits {
            max_disk_bytes: before / 10 * 6,
            ..Limits::default()
        });
        let ev = st.evict(0, None).unwrap();
        assert!(ev.raw_points > 0 && ev.raw_points < 39_880, "{ev:?}");
        assert_eq!(ev.windows, 0, "raw goes before rollups");
        assert!(st.used_bytes().unwrap() <= before / 10 * 6);
        // Every evicted point is counted as degraded for the sink, and its range is recorded.
        assert_eq!(st.counter("evicted_raw").unwrap(), ev.raw_points);
        assert_eq!(st.counter("degraded:cloud").unwrap(), ev.raw_points);
        let ranges: u64 = st.degraded("cloud").unwrap().iter().map(|r| r.3).sum();
        assert_eq!(ranges, ev.raw_points);
        // The oldest points went; rollups still cover them.
        let raw = st
            .read(&SeriesKey::from_canonical("m a"), 0, i64::MAX)
            .unwrap();
        assert_eq!(raw.len() as u64, 40_000 - ev.raw_points);
        assert_eq!(raw[0].0, ev.raw_points as i64 * 1_000_000_000);
        let windows_after = st
            .read_rollup(&SeriesKey::from_canonical("m a"), 60, 0, i64::MAX)
            .unwrap();
        assert!(
            windows_after == windows_before,
            "windows changed by eviction"
        );
        // What the sink is sent instead: windows standing for exactly the
        // evicted points, each window once. The newest range's last window
        // goes on into a chunk the sink has still to be sent (a chunk every
        // 997 s, windows at multiples of 60 s): it waits, so that it goes
        // upstream once, whole.
        let pending = st.degraded_pending("cloud", 60, 10_000).unwrap();
        assert_eq!(
            pending.held, 1,
            "the range whose window the kept chunk continues"
        );
        let early: u64 = pending.ranges.iter().map(|r| r.points).sum();
        assert!(early < ev.raw_points);
        let ids: Vec<i64> = pending.ranges.iter().map(|r| r.id).collect();
        st.degraded_sent("cloud", &ids, 0).unwrap();
        // The sink gets the oldest raw chunk left: now that window is final.
        let (chunk, next) = st.after("cloud", Cursor::default(), None, 997).unwrap();
        assert_eq!(chunk.len(), 997);
        st.ack("cloud", next).unwrap();
        let rest = st.degraded_pending("cloud", 60, 10_000).unwrap();
        assert_eq!(rest.held, 0);
        assert_eq!(rest.ranges.len(), 1);
        let pending: Vec<DegradedRange> = pending.ranges.into_iter().chain(rest.ranges).collect();
        let standing: u64 = pending
            .iter()
            .flat_map(|r| r.windows.iter().map(|w| w.1.count))
            .sum::<u64>();
        let mut starts: Vec<i64> = pending
            .iter()
            .flat_map(|r| r.windows.iter().map(|w| w.0))
            .collect();
        let n = starts.len();
        starts.sort();
        starts.dedup();
        // A window split across two evicted chunks appears in both ranges, merged.
        assert!(starts.len() <= n);
        let whole: u64 = starts.len() as u64;
        assert!(whole > 0);
        assert!(standing >= ev.raw_points);
        let last = starts.last().copied().unwrap();
        let unique: u64 = st
            .rollup_windows(60, 0, last)
            .unwrap()
            .iter()
            .map(|w| w.2.count)
            .sum();
        assert_eq!(
            unique,
            last as u64 / 1_000_000_000,
            "all windows before the last evicted one are whole"
        );
        let ids: Vec<i64> = pending.iter().map(|r| r.id).collect();
        st.degraded_sent("cloud", &ids[ids.len() - 1..], 0).unwrap();
        assert!(st
            .degraded_pending("cloud", 60, 10)
            .unwrap()
            .ranges
            .is_empty());
        assert_eq!(st.counter("degraded_sent:cloud").unwrap(), ev.raw_points);
        // The rollup tier over all time counts every point once.
        let all: u64 = st
            .rollup_windows(60, 0, i64::MAX)
            .unwrap()
            .iter()
            .map(|w| w.2.count)
            .sum();
        assert_eq!(all, 40_000);
    }

    #[test]
    fn rollback_journal_mode_keeps_what_was_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        {
            let mut st = Store::open(&path, Metrics::new("t")).unwrap();
            st.set_journal_mode(JournalMode::Rollback).unwrap();
            let mode: String = st
                .conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "truncate");
            for i in 0..3000 {
                st.append(&Batch {
                    points: vec![point("m a", i, i as f64)],
                })
                .unwrap();
                if i % 1000 == 999 {
                    st.flush().unwrap();
                }
            }
            st.seal().unwrap();
        }
        let st = Store::open_read_only(&path).unwrap();
        let got = st
            .read(&SeriesKey::from_canonical("m a"), 0, i64::MAX)
            .unwrap();
        assert_eq!(got.len(), 3000);
    }

    #[test]
    fn a_journal_chunk_naming_an_impossible_series_stops_the_seal_and_keeps_the_journal() {
        let (_dir, mut st) = open();
        st.append(&Batch {
            points: vec![point("m a", 1, 1.0)],
        })
        .unwrap();
        st.flush().unwrap();
        // A chunk with a good checksum whose id no series can have: its
        // sealed key would spill into the sequence bits.
        let mut data = Vec::new();
        codec::encode_mixed(&[MAX_SERIES + 1], &[1], &[1.0], &mut data);
        let (&key, f) = st.journal.frames().iter().next().unwrap();
        let f = Frame {
            key,
            ts_min: f.ts_min,
            ts_max: f.ts_max,
            count: f.count,
            data: &data,
        };
        st.journal.append(&[f]).unwrap();
        let err = st.seal().unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("beyond the largest id")),
            "{err}"
        );
        // The journal chunk stays, nothing sealed was kept.
        let (journal, sealed) = journal_and_sealed(&st);
        assert_eq!((journal, sealed), (1, 0));
    }

    #[test]
    fn auto_journal_follows_the_commit_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut st = Store::open(&path, Metrics::new("t")).unwrap();
        st.set_journal_mode(JournalMode::Auto).unwrap();
        assert_eq!(st.journal_mode().unwrap(), JournalMode::Wal);
        let mut t = 0;
        // A window of `commits` commits of `each` points over `span` that
        // ended now.
        let mut window_over =
            |st: &mut Store, commits: i64, each: i64, span: std::time::Duration| {
                for c in 0..commits {
                    let pts = (0..each).map(|i| point(&format!("m s={}", i % 50), t + i, 1.5));
                    st.append(&Batch {
                        points: pts.collect(),
                    })
                    .unwrap();
                    t += each;
                    if c == commits - 1 {
                        st.auto_journal.as_mut().unwrap().since -= span;
                    }
                    st.flush().unwrap();
                }
            };
        let (minute, ten) = (AUTO_WINDOW_DOWN, AUTO_WINDOW_UP);
        // 1000 points a commit: between the thresholds, WAL stays.
        window_over(&mut st, 60, 1000, minute);
        assert_eq!(st.journal_mode().unwrap(), JournalMode::Wal);
        // 3,000 points a second in commits of 500 (MQTT QoS 1 acknowledged
        // in groups): WAL writes less, it stays.
        window_over(&mut st, 60, 500, ten);
        assert_eq!(st.journal_mode().unwrap(), JournalMode::Wal);
        // 2000 a commit, but another process (a `tidegate query`) has the
        // file open in WAL mode: the switch waits for it, and holds up nothing.
        let reader = Connection::open(&path).unwrap();
        let n: i64 = reader
            .query_row("SELECT COUNT(*) FROM series", [], |r| r.get(0))
            .unwrap();
        assert!(n > 0);
        let started = std::time::Instant::now();
        window_over(&mut st, 60, 2000, minute);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(st.journal_mode().unwrap(), JournalMode::Wal);
        drop(reader);
        // The next window switches to the rollback journal.
        window_over(&mut st, 60, 2000, minute);
        assert_eq!(st.journal_mode().unwrap(), JournalMode::Rollback);
        // A trickle: WAL again.
        window_over(&mut st, 1, 100, minute);
        assert_eq!(st.journal_mode().unwrap(), JournalMode::Wal);
        // In WAL 10 s of 2000 a commit are enough to switch...
        window_over(&mut st, 10, 2000, ten);
        assert_eq!(st.journal_mode().unwrap(), JournalMode::Rollback);
        // ...but back to WAL only after a quiet minute, not a quiet 10 s.
        window_over(&mut st, 1, 100, ten);
        assert_eq!(st.journal_mode().unwrap(), JournalMode::Rollback);
        window_over(&mut st, 1, 100, minute);
        assert_eq!(st.journal_mode().unwrap(), JournalMode::Wal);
        let got = st
            .read(&SeriesKey::from_canonical("m s=0"), 0, i64::MAX)
            .unwrap();
        assert_eq!(
            got.len(),
            (60_000 + 30_000 + 120_000 + 120_000 + 100 + 20_000 + 100 + 100) / 50
        );
    }

    #[test]
    fn corrupt_store_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let mut st = Store::open(&path, Metrics::new("t")).unwrap();
            let mut rng = 7u64;
            for i in 0..20_000 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                st.append(&Batch {
                    points: vec![point("m a", i, (rng >> 11) as f64)],
                })
                .unwrap();
                if i % 1000 == 999 {
                    st.flush().unwrap();
                }
            }
            st.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        // Flip bytes in the middle of the file, then truncate it.
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.len() > 64 * 1024,
            "a store of some size: {}",
            bytes.len()
        );
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 8192] {
            *b ^= 0x5a;
        }
        bytes.truncate(bytes.len() - 6000);
        std::fs::write(&path, &bytes).unwrap();

        let (mut st, aside) = Store::open_or_recover(&path, Metrics::new("t")).unwrap();
        let aside = aside.expect("the corrupt file is moved aside");
        assert!(aside.exists());
        st.append(&Batch {
            points: vec![point("m a", 1, 1.0)],
        })
        .unwrap();
        st.flush().unwrap();
        assert_eq!(
            st.read(&SeriesKey::from_canonical("m a"), 0, 10).unwrap(),
            vec![(1, 1.0)]
        );

        // Garbage that is not even SQLite.
        std::fs::write(
            dir.path().join("g.db"),
            b"this is not a database at all, not even close........",
        )
        .unwrap();
        let (_st, aside) =
            Store::open_or_recover(&dir.path().join("g.db"), Metrics::new("t")).unwrap();
        assert!(aside.is_some());
    }

    #[test]
    fn cursor_and_data_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let mut st = Store::open(&path, Metrics::new("t")).unwrap();
            st.append(&Batch {
                points: vec![point("m a", 1, 1.5), point("m a", 2, 2.5)],
            })
            .unwrap();
            st.flush().unwrap();
            let (_, c) = st.after("s", Cursor::default(), None, 1).unwrap();
            st.ack("s", c).unwrap();
            st.flush().unwrap();
        }
        let mut st = Store::open(&path, Metrics::new("t")).unwrap();
        let c = st.cursor("s").unwrap();
        let (b, _) = st.after("s", c, None, 10).unwrap();
        assert_eq!(b.points, vec![point("m a", 2, 2.5)]);
        assert_eq!(
            st.read(&SeriesKey::from_canonical("m a"), 0, 10).unwrap(),
            vec![(1, 1.5), (2, 2.5)]
        );
        // New flushes continue after the old sequence numbers.
        st.append(&Batch {
            points: vec![point("m b", 3, 3.0)],
        })
        .unwrap();
        st.flush().unwrap();
        let (b, _) = st.after("s", c, None, 10).unwrap();
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn a_group_commit_keeps_points_and_leaves_cursors_to_the_next_full_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let two = |st: &mut Store, t: i64| {
            st.append(&Batch {
                points: vec![point("m a", t, 1.0), point("m a", t + 1, 2.0)],
            })
            .unwrap();
        };
        {
            let mut st = Store::open(&path, Metrics::new("t")).unwrap();
            two(&mut st, 1);
            st.flush().unwrap();
            let (_, c) = st.after("s", Cursor::default(), None, 1).unwrap();
            st.ack("s", c).unwrap();
            st.flush().unwrap();
            let (_, c) = st.after("s", c, None, 1).unwrap();
            st.ack("s", c).unwrap();
            // Points of a group commit are durable; the moved cursor is not.
            two(&mut st, 3);
            assert!(st.flush_points().unwrap().is_some());
            // Nothing pending but a cursor: a group commit has nothing to do.
            assert_eq!(st.flush_points().unwrap(), None);
        }
        let mut st = Store::open(&path, Metrics::new("t")).unwrap();
        let c = st.cursor("s").unwrap();
        let (b, _) = st.after("s", c, None, 10).unwrap();
        // The cursor of the full flush: after the first point, so the
        // second is sent again, and the group commit's two are there.
        assert_eq!(
            b.points,
            vec![
                point("m a", 2, 2.0),
                point("m a", 3, 1.0),
                point("m a", 4, 2.0)
            ]
        );
        let (_, c) = st.after("s", c, None, 1).unwrap();
        st.ack("s", c).unwrap();
        st.flush().unwrap();
        drop(st);
        let mut st = Store::open(&path, Metrics::new("t")).unwrap();
        assert_eq!(st.cursor("s").unwrap(), c);
    }
}
