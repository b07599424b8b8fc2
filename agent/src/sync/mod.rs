//! Uplink: one engine moves points from the store to every sink.
//!
//! Batching, cursors, retries and backoff live here once; a sink only encodes a
//! batch and sends it (as Vector's sinks share one request machinery). A batch
//! advances the sink's cursor only after the endpoint acknowledged it, so
//! delivery is at-least-once and the databases deduplicate by series and time.

mod backoff;
pub mod influx;

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use backoff::Backoff;

use crate::ops::metrics::SinkStats;
use crate::ops::RateLimit;
use crate::point::Point;
use crate::store::{StoreError, StoreHandle};

/// Why a request failed, and so what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying later: the endpoint is down, overloaded or timed out.
    #[error("{reason}")]
    Retryable {
        /// What happened.
        reason: String,
        /// The endpoint asked to wait this long (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Retrying the same points will fail again: the endpoint refused them.
    #[error("{reason}")]
    Permanent {
        /// The endpoint's explanation.
        reason: String,
    },
}

/// An encoder plus an endpoint.
pub trait Sink: Send + Sync + 'static {
    /// Serialises points into one request body.
    fn encode(&self, points: &[Point]) -> Vec<u8>;
    /// Sends one body; `Ok` only once the endpoint acknowledged it.
    fn send(&self, body: Vec<u8>) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// How a sink task is told to stop.
#[derive(Clone, Default)]
pub struct Stopping {
    /// Finish what is in the store, then stop.
    pub drain: CancellationToken,
    /// Stop now, even mid-retry.
    pub abort: CancellationToken,
}

/// Settings of the engine for one sink.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The sink's name: its cursor is stored under it.
    pub name: String,
    /// Largest number of points a request carries.
    pub batch_max_points: usize,
    /// Longest wait between retries.
    pub backoff_max: Duration,
}

/// Feeds `sink` from the store until told to stop.
pub async fn run_sink<S: Sink>(
    sink: S,
    cfg: EngineConfig,
    store: StoreHandle,
    stats: Arc<SinkStats>,
    stopping: Stopping,
) -> Result<(), StoreError> {
    let mut flushed = store.flushed();
    let mut cursor = store.cursor(&cfg.name).await?;
    let mut delivery = Delivery {
        sink: &sink,
        name: &cfg.name,
        stats: &stats,
        backoff: Backoff::new(Duration::from_millis(100), cfg.backoff_max),
        down_since: None,
        dead_letter_log: RateLimit::new(Duration::from_secs(10)),
    };
    loop {
        // Mark the newest flush as seen before reading, so a flush that lands
        // during the read wakes us up again.
        flushed.borrow_and_update();
        let (batch, next) = store.after(&cfg.name, cursor, cfg.batch_max_points).await?;
        if batch.is_empty() {
            if stopping.drain.is_cancelled() {
                return Ok(());
            }
            tokio::select! {
                _ = stopping.abort.cancelled() => return Ok(()),
                _ = stopping.drain.cancelled() => {}
                changed = flushed.changed() => if changed.is_err() { return Ok(()) },
            }
            continue;
        }
        if !delivery.deliver(&batch.points, &stopping.abort).await {
            return Ok(());
        }
        store.ack(&cfg.name, next).await?;
        cursor = next;
    }
}

/// The retry state of one sink.
struct Delivery<'a, S> {
    sink: &'a S,
    name: &'a str,
    stats: &'a SinkStats,
    backoff: Backoff,
    /// Set while the endpoint is failing, so the outage is logged once.
    down_since: Option<Instant>,
    dead_letter_log: RateLimit,
}

impl<S: Sink> Delivery<'_, S> {
    /// Delivers all points, retrying what can be retried and setting aside
    /// what the endpoint refuses for good. False if aborted first.
    async fn deliver(&mut self, points: &[Point], abort: &CancellationToken) -> bool {
        // Ranges still to send; a refused range is split in halves until the
        // bad points are found, so one poison point never stalls the sink.
        let mut todo: Vec<Range<usize>> = Vec::with_capacity(8);
        todo.push(0..points.len());
        while let Some(range) = todo.pop() {
            let body = self.sink.encode(&points[range.clone()]);
            let len = body.len() as u64;
            self.stats.requests.fetch_add(1, Relaxed);
            let result = tokio::select! {
                _ = abort.cancelled() => return false,
                r = self.sink.send(body) => r,
            };
            match result {
                Ok(()) => {
                    self.stats
                        .points_sent
                        .fetch_add(range.len() as u64, Relaxed);
                    self.stats.bytes_sent.fetch_add(len, Relaxed);
                    self.stats.up.store(true, Relaxed);
                    self.stats.set_error(None);
                    self.backoff.reset();
                    if let Some(since) = self.down_since.take() {
                        info!(
                            sink = self.name,
                            "sink is back after {:.1}s; sending the backlog",
                            since.elapsed().as_secs_f64()
                        );
                    }
                }
                Err(SinkError::Permanent { reason }) if range.len() > 1 => {
                    self.stats.failures.fetch_add(1, Relaxed);
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                    self.stats.set_error(Some(reason));
                }
                Err(SinkError::Permanent { reason }) => {
                    self.stats.failures.fetch_add(1, Relaxed);
                    self.stats.dead_letters.fetch_add(1, Relaxed);
                    let p = &points[range.start];
                    if let Some(held) = self.dead_letter_log.allow(Instant::now()) {
                        error!(sink = self.name, series = %p.series, ts = p.ts_ns, suppressed = held,
                            "the endpoint refused a point for good, set aside: {reason}");
                    }
                    self.stats.set_error(Some(reason));
                }
                Err(SinkError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    self.stats.failures.fetch_add(1, Relaxed);
                    self.stats.up.store(false, Relaxed);
                    if self.down_since.is_none() {
                        warn!(sink = self.name, "sink unreachable ({reason}); buffering in the store and retrying with backoff");
                        self.down_since = Some(Instant::now());
                    }
                    self.stats.set_error(Some(reason));
                    let delay = retry_after.unwrap_or_else(|| self.backoff.next_delay());
                    todo.push(range);
                    tokio::select! {
                        _ = abort.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        true
    }
}
