//! Uplink: one engine moves points from the store to every sink.
//!
//! Batching, cursors, retries and backoff live here once; a sink only encodes a
//! batch and sends it (as Vector's sinks share one request machinery). A batch
//! advances the sink's cursor only after the endpoint acknowledged it, so
//! delivery is at-least-once and the databases deduplicate by series and time.

pub mod arc;
mod backoff;
pub mod bench;
pub mod http;
pub mod influx;
pub mod kafka;
pub mod meter;
pub mod mqtt;
pub mod remote_write;
mod request;
pub mod rollup;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use backoff::Backoff;
pub use request::Requester;
use rollup::TierMode;

use crate::config::{DeliveryConfig, Order, SinkTier};
use crate::ops::metrics::SinkStats;
use crate::point::{Batch, Point};
use crate::store::{Cursor, StoreError, StoreHandle};

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

/// A live-first sink goes live when its backlog holds more than this many
/// batches: below it, oldest-first catches up within seconds anyway.
const LIVE_AFTER_BATCHES: u64 = 4;
/// How often a sink looks for ranges eviction degraded, and at its backlog.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Feeds `sink` from the store until told to stop.
pub async fn run_sink<S: Sink>(
    sink: S,
    cfg: DeliveryConfig,
    store: StoreHandle,
    stats: Arc<SinkStats>,
    stopping: Stopping,
) -> Result<(), StoreError> {
    let req = Requester::new(sink, &cfg, stats);
    let fallback = async {
        match (cfg.tier, cfg.over_budget_tier) {
            (SinkTier::Raw, Some(SinkTier::Rollup(width))) => {
                let (st, stop) = (store.clone(), stopping.clone());
                rollup::run_tier(&req, &cfg, width, TierMode::OverBudget, st, stop).await
            }
            _ => Ok(()),
        }
    };
    let main = async {
        match cfg.tier {
            SinkTier::Raw => {
                let feed = RawFeed::new(&req, &cfg, store.clone(), stopping.clone()).await?;
                feed.run().await
            }
            SinkTier::Rollup(width) => {
                let (st, stop) = (store.clone(), stopping.clone());
                rollup::run_tier(&req, &cfg, width, TierMode::Always, st, stop).await
            }
        }
    };
    let (main, fallback) = tokio::join!(main, fallback);
    main.and(fallback)
}

/// Which of a raw sink's two readers a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// From the acknowledged cursor on: the backlog, oldest first.
    Backfill,
    /// From the head as it was when the sink went live: new points.
    Live,
}

/// One reader over the store's chunk order, with its requests in order.
struct Reader {
    /// Name the store knows the reader by (the sink's, or its live stream's).
    name: String,
    /// Where the next read starts.
    next: Cursor,
    /// Reads stop here (the backfill stops where the live stream began).
    until: Option<Cursor>,
    /// Requests sent, oldest first: their end cursor, and whether acknowledged.
    queue: VecDeque<(u64, Cursor, bool)>,
    /// Acknowledged up to here, in order.
    acked: Cursor,
    /// The last read found nothing; wait for a flush.
    idle: bool,
    /// Points this reader has had acknowledged (for the live-first share).
    sent: u64,
}

impl Reader {
    fn new(name: String, at: Cursor, until: Option<Cursor>) -> Reader {
        Reader {
            name,
            next: at,
            until,
            queue: VecDeque::new(),
            acked: at,
            idle: false,
            sent: 0,
        }
    }

    /// Marks request `id` done and returns the new in-order acknowledged
    /// cursor, if it moved.
    fn done(&mut self, id: u64) -> Option<Cursor> {
        if let Some(slot) = self.queue.iter_mut().find(|s| s.0 == id) {
            slot.2 = true;
        }
        let mut moved = None;
        while let Some(&(_, end, true)) = self.queue.front() {
            self.queue.pop_front();
            self.acked = end;
            moved = Some(end);
        }
        moved
    }
}

/// What finished among a sink's requests.
enum Done {
    /// A batch of raw points: delivered (`ok`), or aborted.
    Batch {
        lane: Lane,
        id: u64,
        points: usize,
        ok: bool,
    },
    /// The rollups and gap report for degraded ranges.
    Degraded(Result<rollup::DegradedRun, StoreError>),
}

type InFlight<'a> = FuturesUnordered<Pin<Box<dyn Future<Output = Done> + Send + 'a>>>;

/// A raw-tier sink: points in the store's chunk order, acknowledged in order,
/// several requests in flight, optionally new points first.
struct RawFeed<'a, S> {
    req: &'a Requester<S>,
    cfg: &'a DeliveryConfig,
    store: StoreHandle,
    stopping: Stopping,
    backfill: Reader,
    live: Option<Reader>,
    next_id: u64,
}

impl<'a, S: Sink> RawFeed<'a, S> {
    async fn new(
        req: &'a Requester<S>,
        cfg: &'a DeliveryConfig,
        store: StoreHandle,
        stopping: Stopping,
    ) -> Result<RawFeed<'a, S>, StoreError> {
        let at = store.cursor(&cfg.name).await?;
        Ok(RawFeed {
            req,
            cfg,
            store,
            stopping,
            backfill: Reader::new(cfg.name.clone(), at, None),
            live: None,
            next_id: 0,
        })
    }

    async fn run(mut self) -> Result<(), StoreError> {
        let mut flushed = self.store.flushed();
        let mut in_flight: InFlight<'a> = FuturesUnordered::new();
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Degraded ranges are looked for when the store's count moves, once
        // at start, and each tick while some are held back; one replacement
        // send runs at a time.
        let mut degraded_seen = u64::MAX;
        let mut degraded_running = false;
        loop {
            // Mark the newest flush as seen before reading, so a flush that
            // lands during the read wakes us up again.
            if flushed.has_changed().unwrap_or(false) {
                self.wake_readers();
            }
            flushed.borrow_and_update();
            let (slots, wait) = self.req.slots(in_flight.len());
            for _ in 0..slots {
                let Some((lane, batch, end)) = self.read_next().await? else {
                    break;
                };
                let id = self.next_id;
                self.next_id += 1;
                self.reader(lane).queue.push_back((id, end, false));
                let (req, abort) = (self.req, self.stopping.abort.clone());
                let n = batch.len();
                in_flight.push(Box::pin(async move {
                    let ok = req.deliver(&batch.points, &abort).await;
                    Done::Batch {
                        lane,
                        id,
                        points: n,
                        ok,
                    }
                }));
            }
            self.req
                .stats
                .in_flight
                .store(in_flight.len() as u64, Relaxed);
            let idle = self.backfill.idle && self.live.as_ref().is_none_or(|l| l.idle);
            if in_flight.is_empty() && idle && self.stopping.drain.is_cancelled() {
                return Ok(());
            }
            let pause = async {
                match wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(done) = in_flight.next(), if !in_flight.is_empty() => match done {
                    Done::Batch { ok: false, .. } | Done::Degraded(Ok(rollup::DegradedRun::Aborted)) => return Ok(()),
                    Done::Batch { lane, id, points, ok: true } => self.on_acked(lane, id, points).await?,
                    Done::Degraded(result) => {
                        degraded_running = false;
                        match result {
                            Err(e) => {
                                warn!(sink = self.cfg.name, "cannot send the rollups of degraded ranges, will retry: {e}");
                                degraded_seen = u64::MAX;
                            }
                            // Look again at the next tick, when the cursor may have moved.
                            Ok(rollup::DegradedRun::Held) => degraded_seen = u64::MAX,
                            Ok(_) => {}
                        }
                    }
                },
                _ = self.stopping.abort.cancelled() => return Ok(()),
                _ = self.stopping.drain.cancelled(), if !self.stopping.drain.is_cancelled() => {}
                changed = flushed.changed() => {
                    if changed.is_err() && in_flight.is_empty() {
                        return Ok(());
                    }
                    self.wake_readers();
                }
                _ = pause => {}
                _ = housekeeping.tick() => {
                    let degraded = self.housekeeping().await?;
                    if degraded != degraded_seen && !degraded_running {
                        degraded_seen = degraded;
                        degraded_running = true;
                        let (req, cfg, store, stopping) = (self.req, self.cfg, self.store.clone(), self.stopping.clone());
                        in_flight.push(Box::pin(async move {
                            Done::Degraded(rollup::send_degraded(req, cfg, &store, &stopping).await)
                        }));
                    }
                }
            }
        }
    }

    /// New points were flushed: both readers may find some.
    fn wake_readers(&mut self) {
        self.backfill.idle = false;
        if let Some(l) = &mut self.live {
            l.idle = false;
        }
    }

    fn reader(&mut self, lane: Lane) -> &mut Reader {
        match lane {
            Lane::Backfill => &mut self.backfill,
            Lane::Live => self
                .live
                .as_mut()
                .expect("a live request implies a live reader"),
        }
    }

    /// The next batch to send: from the live reader while it has points and
    /// the backfill had its share, else from the backfill.
    async fn read_next(&mut self) -> Result<Option<(Lane, Batch, Cursor)>, StoreError> {
        let live_turn = self.live.as_ref().is_some_and(|l| {
            let total = (l.sent + self.backfill.sent).max(1) as f64;
            !l.idle
                && (self.backfill.idle
                    || self.backfill.sent as f64 / total >= self.cfg.backfill_share)
        });
        let order = if live_turn {
            [Lane::Live, Lane::Backfill]
        } else {
            [Lane::Backfill, Lane::Live]
        };
        for lane in order {
            if lane == Lane::Live && self.live.is_none() {
                continue;
            }
            let limit = self.cfg.batch_max_points;
            let r = match lane {
                Lane::Backfill => &mut self.backfill,
                Lane::Live => self.live.as_mut().expect("checked above"),
            };
            if r.idle {
                continue;
            }
            let (batch, next) = self.store.after(&r.name, r.next, r.until, limit).await?;
            if batch.is_empty() {
                r.idle = true;
                continue;
            }
            r.next = next;
            return Ok(Some((lane, batch, next)));
        }
        Ok(None)
    }

    async fn on_acked(&mut self, lane: Lane, id: u64, points: usize) -> Result<(), StoreError> {
        let r = self.reader(lane);
        r.sent += points as u64;
        let moved = r.done(id);
        if lane == Lane::Backfill {
            if let Some(c) = moved {
                self.store.ack(&self.cfg.name, c).await?;
            }
        }
        // The backfill reached where the live stream began: one reader again.
        let caught_up = self
            .live
            .as_ref()
            .is_some_and(|_| self.backfill.idle && self.backfill.queue.is_empty());
        if caught_up {
            self.join_live().await?;
        }
        Ok(())
    }

    /// Ends live-first mode: the live reader becomes the sink's only reader.
    async fn join_live(&mut self) -> Result<(), StoreError> {
        let Some(live) = self.live.take() else {
            return Ok(());
        };
        let shadow = live.name.clone();
        self.store.ack(&self.cfg.name, live.acked).await?;
        self.backfill = Reader {
            name: self.cfg.name.clone(),
            until: None,
            sent: self.backfill.sent,
            ..live
        };
        self.store
            .with(move |st| {
                st.untrack(&shadow);
                Ok(())
            })
            .await?;
        info!(sink = self.cfg.name, "backlog sent; back to one stream");
        Ok(())
    }

    /// Once a second: the backlog gauge, and whether a live-first sink should
    /// go live or is back to one stream. Returns the store's count of points
    /// degraded for this sink.
    async fn housekeeping(&mut self) -> Result<u64, StoreError> {
        let name = self.cfg.name.clone();
        let from = self.backfill.acked;
        let ((backlog, oldest), degraded) = self
            .store
            .with(move |st| {
                Ok((
                    st.backlog_age(from)?,
                    st.counter(&format!("degraded:{name}"))?,
                ))
            })
            .await?;
        self.req.stats.backlog_points.store(backlog, Relaxed);
        let oldest = if backlog > 0 { oldest.unwrap_or(0) } else { 0 };
        self.req.stats.oldest_unsent_ns.store(oldest, Relaxed);
        if self.live.is_some() && self.backfill.idle && self.backfill.queue.is_empty() {
            self.join_live().await?;
        }
        let threshold = LIVE_AFTER_BATCHES * self.cfg.batch_max_points as u64;
        if self.cfg.order == Order::LiveFirst && self.live.is_none() && backlog > threshold {
            let shadow = format!("{}~live", self.cfg.name);
            let name = shadow.clone();
            let head = self
                .store
                .with(move |st| {
                    let head = st.head()?;
                    st.track(&name, head);
                    Ok(head)
                })
                .await?;
            info!(
                sink = self.cfg.name,
                backlog, "behind: sending new points first, the backlog behind them"
            );
            self.backfill.until = Some(head);
            self.live = Some(Reader::new(shadow, head, None));
        }
        Ok(degraded)
    }
}
