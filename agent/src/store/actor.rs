//! The task that owns the [`Store`]: requests come in on a bounded channel, so a
//! store that cannot keep up slows its sources down instead of filling memory.
//!
//! It runs on its own OS thread because SQLite calls block; the async world
//! talks to it through [`StoreHandle`]. It stops when every handle is dropped,
//! after a last flush and seal.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::{Cursor, Store, StoreError};
use crate::config::StoreConfig;
use crate::ops::RateLimit;
use crate::point::now_ns;
use crate::point::Batch;

/// Requests waiting for the store; bounds the memory between sources and disk.
const CHANNEL_CAPACITY: usize = 64;

/// Group commit: how long the store waits, once a source asks for a prompt
/// commit ([`Commit::Soon`]), before it flushes (instead of the
/// `flush_interval` tick), so that every append of that window shares one commit.
const GROUP_COMMIT: Duration = Duration::from_millis(10);

/// When a durable append (one whose caller waits until its points are
/// committed) wants that commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Within a few milliseconds (group commit): the caller is held up until
    /// then, as an HTTP client waiting for its answer, or a broker that sends
    /// nothing more until it has acknowledgements.
    Soon,
    /// With the next flush tick (`store.flush_interval`): the caller can
    /// wait, and every commit saved spares the SD card a few pages.
    WithTick,
}

enum Request {
    Append(Batch),
    AppendDurable {
        batch: Batch,
        commit: Commit,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    After {
        sink: String,
        from: Cursor,
        until: Option<Cursor>,
        limit: usize,
        reply: oneshot::Sender<Result<(Batch, Cursor), StoreError>>,
    },
    Ack {
        sink: String,
        cursor: Cursor,
    },
    Cursor {
        sink: String,
        reply: oneshot::Sender<Result<Cursor, StoreError>>,
    },
    Backlog {
        from: Cursor,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    DeadLetters(Vec<crate::point::DeadLetter>),
    /// Anything else a caller needs of the store (rare requests: the closure
    /// sends its own reply).
    With(Box<dyn FnOnce(&mut Store) + Send>),
}

/// A cheap, cloneable way to talk to the store task.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Request>,
    flushed: watch::Receiver<i64>,
    heartbeat: Arc<AtomicU64>,
    tap: Tap,
}

/// Batches queued for each tapper before the slowest starts losing them.
const TAP_CAPACITY: usize = 1024;

/// A copy of every batch handed to the store, for `tidegate tap`: fed only
/// while someone listens (one atomic load on the hot path otherwise). A
/// tapper that falls behind loses batches (told by how many); the store
/// never waits for it.
#[derive(Clone)]
pub struct Tap {
    subscribers: Arc<AtomicUsize>,
    tx: broadcast::Sender<Arc<Batch>>,
}

/// One listener on a [`Tap`]; unsubscribes when dropped.
pub struct TapReceiver {
    /// The batches, as they enter the store.
    pub rx: broadcast::Receiver<Arc<Batch>>,
    subscribers: Arc<AtomicUsize>,
}

impl Drop for TapReceiver {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Relaxed);
    }
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            subscribers: Arc::default(),
            tx: broadcast::channel(TAP_CAPACITY).0,
        }
    }
}

impl Tap {
    /// Starts listening.
    pub fn subscribe(&self) -> TapReceiver {
        self.subscribers.fetch_add(1, Relaxed);
        TapReceiver {
            rx: self.tx.subscribe(),
            subscribers: self.subscribers.clone(),
        }
    }

    fn feed(&self, batch: &Batch) {
        if self.subscribers.load(Relaxed) > 0 && !batch.points.is_empty() {
            let _ = self.tx.send(Arc::new(batch.clone()));
        }
    }
}

/// A batch handed to the store, not yet known to be durable.
pub struct Durable(oneshot::Receiver<Result<(), StoreError>>);

impl Durable {
    /// Resolves once a flush containing the batch committed (or failed).
    pub async fn wait(self) -> Result<(), StoreError> {
        self.0.await.map_err(|_| StoreError::Closed)?
    }
}

/// The running store task; [`StoreTask::wait`] returns once it has closed the file.
pub struct StoreTask {
    done: oneshot::Receiver<()>,
}

impl StoreTask {
    /// Waits until the store has flushed and closed (after every handle is dropped).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Starts the store task.
pub fn spawn(store: Store, cfg: &StoreConfig) -> (StoreHandle, StoreTask) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (flushed_tx, flushed) = watch::channel(0);
    let (done_tx, done) = oneshot::channel();
    let flush_every = cfg.flush_interval;
    let seal_every = cfg.seal_interval;
    let compact_every = cfg.compact_every;
    let heartbeat = Arc::new(AtomicU64::new(0));
    let beat = heartbeat.clone();
    std::thread::Builder::new()
        .name("tidegate-store".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime");
            let upkeep = UpkeepPlan {
                seal_every,
                compaction: CompactAfter::new(compact_every),
            };
            rt.block_on(run(store, rx, flushed_tx, flush_every, upkeep, beat));
            let _ = done_tx.send(());
        })
        .expect("spawn the store thread");
    (
        StoreHandle {
            tx,
            flushed,
            heartbeat,
            tap: Tap::default(),
        },
        StoreTask { done },
    )
}

async fn run(
    mut store: Store,
    mut rx: mpsc::Receiver<Request>,
    flushed: watch::Sender<i64>,
    flush_every: Duration,
    mut plan: UpkeepPlan,
    heartbeat: Arc<AtomicU64>,
) {
    let stall_at = test_stall_after().map(|d| Instant::now() + d);
    let mut flush_tick = tokio::time::interval(flush_every);
    let mut seal_tick = tokio::time::interval(plan.seal_every);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    seal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Neither ticks at once: a flush interval after the start is soon enough.
    flush_tick.reset();
    seal_tick.reset();
    let mut errors = RateLimit::new(Duration::from_secs(10));
    if let Err(e) = store.refresh_stats() {
        warn!("cannot read the store's figures for status: {e}");
    }
    // Sources waiting until their appends are durable, and when the group
    // commit that answers them is due.
    let mut waiters: Vec<oneshot::Sender<Result<(), StoreError>>> = Vec::new();
    let mut commit_at: Option<tokio::time::Instant> = None;
    let mut upkeep = Upkeep::Idle;
    // Sinks' reads waiting for a run being sealed (see `serve_after`).
    let mut held: Vec<HeldRead> = Vec::new();
    // `how`: `Store::flush`, or `Store::flush_points` for a group commit
    // (its callers wait for their points, not for the sinks' cursors).
    let flush = |store: &mut Store,
                 errors: &mut RateLimit,
                 waiters: &mut Vec<oneshot::Sender<Result<(), StoreError>>>,
                 how: fn(&mut Store) -> Result<Option<i64>, StoreError>|
     -> Result<(), StoreError> {
        let result = match how(store) {
            Ok(Some(seq)) => {
                flushed.send_replace(seq);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                if let Some(held) = errors.allow(Instant::now()) {
                    error!(
                        pending = store.pending(),
                        suppressed = held,
                        "store flush failed, points kept in memory and retried: {e}"
                    );
                }
                Err(e)
            }
        };
        // Every waiter's points were in this flush: answer them together.
        for w in waiters.drain(..) {
            let _ = w.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::FlushFailed(e.to_string())),
            });
        }
        result
    };
    loop {
        // Progress for the systemd watchdog (ops/notify.rs): one beat per
        // iteration, and the flush tick wakes the loop at least once per
        // flush interval.
        heartbeat.fetch_add(1, Relaxed);
        if stall_at.is_some_and(|t| Instant::now() >= t) {
            error!(
                "TIDEGATE_TEST_STALL_STORE_AFTER: the store writer stalls now (test-only fault)"
            );
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        tokio::select! {
            req = rx.recv() => {
                let Some(req) = req else { break };
                match req {
                    Request::Append(batch) => {
                        if let Err(e) = store.append(&batch) {
                            if let Some(held) = errors.allow(Instant::now()) {
                                warn!(suppressed = held, "points refused by the store: {e}");
                            }
                        }
                    }
                    Request::AppendDurable { batch, commit, reply } => match store.append(&batch) {
                        Ok(()) => {
                            waiters.push(reply);
                            if commit == Commit::Soon {
                                commit_at.get_or_insert_with(|| tokio::time::Instant::now() + GROUP_COMMIT);
                            }
                        }
                        Err(e) => { let _ = reply.send(Err(e)); }
                    },
                    Request::After { sink, from, until, limit, reply } => {
                        serve_after(&mut store, HeldRead { sink, from, until, limit, reply }, &mut held);
                    }
                    Request::With(f) => f(&mut store),
                    Request::DeadLetters(v) => store.add_dead_letters(v),
                    Request::Ack { sink, cursor } => {
                        if let Err(e) = store.ack(&sink, cursor) {
                            warn!("cannot record {sink}'s cursor: {e}");
                        }
                    }
                    Request::Cursor { sink, reply } => {
                        let _ = reply.send(store.cursor(&sink));
                    }
                    Request::Backlog { from, reply } => {
                        let _ = reply.send(store.backlog(from));
                    }
                    Request::Flush { reply } => {
                        commit_at = None;
                        let _ = reply.send(flush(&mut store, &mut errors, &mut waiters, Store::flush));
                    }
                }
            }
            _ = tokio::time::sleep_until(commit_at.unwrap_or_else(tokio::time::Instant::now)), if commit_at.is_some() => {
                commit_at = None;
                let _ = flush(&mut store, &mut errors, &mut waiters, Store::flush_points);
            }
            _ = flush_tick.tick() => {
                commit_at = None;
                let _ = flush(&mut store, &mut errors, &mut waiters, Store::flush);
            }
            _ = seal_tick.tick(), if upkeep == Upkeep::Idle => {
                store.seal_begin();
                upkeep = Upkeep::Seal {
                    then_compact: plan.compaction.seal(),
                };
            }
            // One step of upkeep at a time; requests and flushes are served
            // between steps (select! picks among ready branches at random).
            _ = std::future::ready(()), if upkeep != Upkeep::Idle => {
                upkeep = upkeep_step(&mut store, upkeep, &mut errors);
                if !held.is_empty() && !store.sealing() {
                    for read in std::mem::take(&mut held) {
                        serve_after(&mut store, read, &mut held);
                    }
                }
            }
        }
    }
    // Every handle is gone: sources and sinks have stopped.
    if flush(&mut store, &mut errors, &mut waiters, Store::flush).is_ok() {
        match store.close() {
            Ok(n) => info!(sealed = n, "store closed cleanly"),
            Err(e) => warn!("store closed, sealing skipped: {e}"),
        }
    }
}

/// A sink's read, kept while it waits for the run being sealed.
struct HeldRead {
    sink: String,
    from: Cursor,
    until: Option<Cursor>,
    limit: usize,
    reply: oneshot::Sender<Result<(Batch, Cursor), StoreError>>,
}

/// Answers a sink's read, or holds it while the only points it could get
/// are in the run being sealed: an empty answer would tell the sink it has
/// caught up (a backfill would end early). Held reads are answered once
/// the run is sealed, a few seconds at most.
fn serve_after(store: &mut Store, read: HeldRead, held: &mut Vec<HeldRead>) {
    let answer = store.after(&read.sink, read.from, read.until, read.limit);
    match answer {
        Ok((batch, _)) if batch.is_empty() && store.read_held(read.from, read.until) => {
            held.push(read);
        }
        answer => {
            let _ = read.reply.send(answer);
        }
    }
}

/// How often the store's upkeep runs.
struct UpkeepPlan {
    seal_every: Duration,
    compaction: CompactAfter,
}

/// Counts seals to the next round of compaction: one after the first seal,
/// then one every `store.compact_every` seals (at least one). The first
/// round comes at once so that an agent restarted more often than every
/// `compact_every` seals (a watchdog, a flaky supply) still compacts.
pub(crate) struct CompactAfter {
    every: u32,
    seals: u32,
}

impl CompactAfter {
    pub(crate) fn new(every: u32) -> Self {
        let every = every.max(1);
        CompactAfter {
            every,
            seals: every - 1,
        }
    }

    /// A seal is done: whether a round of compaction follows it.
    pub(crate) fn seal(&mut self) -> bool {
        self.seals = (self.seals + 1) % self.every;
        self.seals == 0
    }
}

/// The store's periodic upkeep, begun by the seal tick and done a step at a
/// time: a seal of ten minutes at 10k points/s takes seconds, and points
/// arriving meanwhile would wait in memory (the broker client's buffer, the
/// store's queue) and leave it larger for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upkeep {
    Idle,
    /// Sealing the journal, a run's group of series per step; then a round
    /// of compaction if it is due.
    Seal {
        then_compact: bool,
    },
    /// Compacting: the round planned after the seal, a step at a time. Every
    /// merge the seals made possible is done in the round; a round of 64
    /// merges (the first rule) left 10k series ever further behind, ~3,300
    /// merges a seal at one point a second each. Rounds come every
    /// `store.compact_every` seals: the merges of a round rewrite the pages
    /// their inputs share once, where a series' merge alone rewrites a page
    /// of its neighbours' blocks (see `Store::compact_begin`).
    Compact,
    /// Eviction, figures for status, memory handed back.
    Tidy,
}

/// Does one step of `state`; returns the next.
fn upkeep_step(store: &mut Store, state: Upkeep, errors: &mut RateLimit) -> Upkeep {
    let mut fail = |what: &str, e: StoreError| {
        if let Some(held) = errors.allow(Instant::now()) {
            error!(suppressed = held, "{what}: {e}");
        }
    };
    match state {
        Upkeep::Idle => Upkeep::Idle,
        Upkeep::Seal { then_compact } => {
            match store.seal_step() {
                Ok(true) => return state,
                Ok(false) => {}
                Err(e) => fail("sealing failed, journal kept as it is and sealed later", e),
            }
            if !then_compact {
                return Upkeep::Tidy;
            }
            match store.compact_begin() {
                Ok(_) => Upkeep::Compact,
                Err(e) => {
                    fail("compaction failed, chunks kept as they are", e);
                    Upkeep::Tidy
                }
            }
        }
        Upkeep::Compact => match store.compact_step() {
            Ok(true) => Upkeep::Compact,
            Ok(false) => Upkeep::Tidy,
            Err(e) => {
                fail("compaction failed, chunks kept as they are", e);
                Upkeep::Tidy
            }
        },
        Upkeep::Tidy => {
            match store.evict(now_ns(), free_disk(store.path())) {
                Ok(ev) if ev.raw_points > 0 || ev.windows > 0 => {
                    warn!(raw_points = ev.raw_points, windows = ev.windows, "store full: evicted the oldest data (rollups kept where raw went); raise store.max_disk_bytes or free disk space to keep more");
                }
                Ok(_) => {}
                Err(e) => fail("eviction failed", e),
            }
            if let Err(e) = store.refresh_stats() {
                fail("cannot read the store's figures for status", e);
            }
            crate::ops::memory::return_free_memory();
            Upkeep::Idle
        }
    }
}

/// Test-only fault injection: `TIDEGATE_TEST_STALL_STORE_AFTER=2s` makes the
/// store thread block for good that long after it starts, as a writer stuck on
/// a hung SD card would (tests/tests/service.rs checks that the watchdog pings
/// stop). Never set it in production.
fn test_stall_after() -> Option<Duration> {
    let v = std::env::var("TIDEGATE_TEST_STALL_STORE_AFTER").ok()?;
    humantime::parse_duration(&v).ok()
}

/// Free bytes for unprivileged users on the file system holding `path`.
fn free_disk(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent()?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

impl StoreHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Hands rejected input to the store's dead-letter table, written with
    /// the next flush; waits only while the store's queue is full.
    pub async fn dead_letters(
        &self,
        letters: Vec<crate::point::DeadLetter>,
    ) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Request::DeadLetters(letters))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Hands points to the store; waits while the store is behind (backpressure).
    pub async fn append(&self, batch: Batch) -> Result<(), StoreError> {
        self.tap.feed(&batch);
        self.tx
            .send(Request::Append(batch))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Hands points to the store and waits until a flush containing them has
    /// committed (group commit: the store flushes within a few milliseconds
    /// while someone waits). On a flush error the points stay pending, as
    /// for [`StoreHandle::append`], and the error is returned.
    pub async fn append_durable(&self, batch: Batch) -> Result<(), StoreError> {
        self.append_durable_begin(batch, Commit::Soon)
            .await?
            .wait()
            .await
    }

    /// Like [`StoreHandle::append_durable`] in two steps, so a source can keep
    /// appending while earlier batches commit: waits for room in the store's
    /// queue (backpressure), then returns a future that resolves once the
    /// batch is durable, committed as `commit` asks (an empty batch with
    /// [`Commit::Soon`] hurries the commit of what was handed before).
    /// Batches become durable in the order they were handed.
    pub async fn append_durable_begin(
        &self,
        batch: Batch,
        commit: Commit,
    ) -> Result<Durable, StoreError> {
        self.tap.feed(&batch);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::AppendDurable {
                batch,
                commit,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Durable(rx))
    }

    /// Up to `limit` durable points after `from` (and before `until`), and
    /// the cursor after them.
    pub async fn after(
        &self,
        sink: &str,
        from: Cursor,
        until: Option<Cursor>,
        limit: usize,
    ) -> Result<(Batch, Cursor), StoreError> {
        let sink = sink.to_string();
        self.call(|reply| Request::After {
            sink,
            from,
            until,
            limit,
            reply,
        })
        .await
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call(|reply| {
            Request::With(Box::new(move |store: &mut Store| {
                let _ = reply.send(f(store));
            }))
        })
        .await
    }

    /// Records that `sink`'s endpoint acknowledged everything before `cursor`.
    pub async fn ack(&self, sink: &str, cursor: Cursor) -> Result<(), StoreError> {
        self.tx
            .send(Request::Ack {
                sink: sink.to_string(),
                cursor,
            })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// The persisted cursor of `sink`.
    pub async fn cursor(&self, sink: &str) -> Result<Cursor, StoreError> {
        let sink = sink.to_string();
        self.call(|reply| Request::Cursor { sink, reply }).await
    }

    /// Durable points after `from`.
    pub async fn backlog(&self, from: Cursor) -> Result<u64, StoreError> {
        self.call(|reply| Request::Backlog { from, reply }).await
    }

    /// Flushes now.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.call(|reply| Request::Flush { reply }).await
    }

    /// Bumped by the store thread on every loop iteration: it stands still only
    /// when the writer is stuck (the systemd watchdog watches it).
    pub fn heartbeat(&self) -> Arc<AtomicU64> {
        self.heartbeat.clone()
    }

    /// The stream of batches entering the store, for `tidegate tap`.
    pub fn tap(&self) -> Tap {
        self.tap.clone()
    }

    /// Changes whenever a flush made new points durable.
    pub fn flushed(&self) -> watch::Receiver<i64> {
        self.flushed.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Metrics;
    use crate::point::{Point, SeriesKey};

    /// A store task whose flush tick is an hour away, in a temporary directory.
    fn hourly_store() -> (tempfile::TempDir, Arc<Metrics>, StoreHandle, StoreTask) {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new("t");
        let store = Store::open(&dir.path().join("s.db"), metrics.clone()).unwrap();
        let cfg = StoreConfig {
            flush_interval: Duration::from_secs(3600),
            ..Default::default()
        };
        let (handle, task) = spawn(store, &cfg);
        (dir, metrics, handle, task)
    }

    fn one_point(i: i64) -> Batch {
        Batch {
            points: vec![Point {
                series: SeriesKey::new("m", [], "f"),
                ts_ns: i,
                value: i as f64,
            }],
        }
    }

    #[test]
    fn compaction_follows_every_nth_seal() {
        let mut after = CompactAfter::new(3);
        let rounds: Vec<bool> = (0..8).map(|_| after.seal()).collect();
        assert_eq!(
            rounds,
            [true, false, false, true, false, false, true, false]
        );
        for every in [0, 1] {
            let mut after = CompactAfter::new(every);
            assert!(
                (0..3).all(|_| after.seal()),
                "every {every}: after each seal"
            );
        }
    }

    #[tokio::test]
    async fn append_durable_commits_as_a_group_long_before_the_tick() {
        let (_dir, metrics, handle, task) = hourly_store();
        let t0 = Instant::now();
        let mut waits = Vec::new();
        for i in 0..200 {
            let d = handle.append_durable_begin(one_point(i), Commit::Soon);
            waits.push(d.await.unwrap());
        }
        for w in waits {
            w.wait().await.unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(metrics.store.points_flushed.load(Relaxed), 200);
        // Pipelined: a handful of commits, not one per batch.
        assert!(metrics.store.flushes.load(Relaxed) < 50);
        handle.append_durable(Batch::default()).await.unwrap();
        drop(handle);
        task.wait().await;
    }

    #[tokio::test]
    async fn with_tick_appends_wait_for_a_prompt_commit_or_the_tick() {
        let (_dir, metrics, handle, task) = hourly_store();
        let flushes = metrics.store.flushes.load(Relaxed);
        let mut waits = Vec::new();
        for i in 0..100 {
            let d = handle.append_durable_begin(one_point(i), Commit::WithTick);
            waits.push(d.await.unwrap());
        }
        // A round trip: the store has taken every append, and committed none.
        let pending = handle.with(|s| Ok(s.pending())).await.unwrap();
        assert_eq!(pending, 100);
        assert_eq!(metrics.store.flushes.load(Relaxed), flushes);
        assert_eq!(metrics.store.points_flushed.load(Relaxed), 0);
        // An empty prompt request commits them all, in one flush.
        let hurry = handle
            .append_durable_begin(Batch::default(), Commit::Soon)
            .await
            .unwrap();
        for w in waits {
            w.wait().await.unwrap();
        }
        hurry.wait().await.unwrap();
        assert_eq!(metrics.store.points_flushed.load(Relaxed), 100);
        assert_eq!(metrics.store.flushes.load(Relaxed), flushes + 1);
        drop(handle);
        task.wait().await;
    }
}
