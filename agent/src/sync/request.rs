//! One sink's request machinery, shared by all its requests in flight:
//! retries with backoff, bisection of refused batches, the adaptive
//! concurrency limit, the outage log and the byte meter.

use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::arc::Controller;
use super::meter::{Gate, LocalTime, Meter};
use super::{Backoff, Sink, SinkError};
use crate::config::DeliveryConfig;
use crate::ops::metrics::SinkStats;
use crate::ops::RateLimit;
use crate::point::Point;

/// A sink with its shared delivery state.
pub struct Requester<S> {
    sink: S,
    /// The sink's name, for logs.
    pub name: String,
    /// The sink's counters.
    pub stats: Arc<SinkStats>,
    backoff_max: Duration,
    max_bytes: u64,
    state: Mutex<State>,
    /// Woken when a request leaves the wire, so a waiting retry looks again.
    turn: Notify,
}

struct State {
    arc: Controller,
    /// New requests wait until then (a `Retry-After`, or a failed request's backoff).
    pause_until: Option<Instant>,
    /// Set while the endpoint is failing, so the outage is logged once.
    down_since: Option<Instant>,
    dead_letter_log: RateLimit,
    meter: Meter,
    /// Requests on the wire now. The feed's slots bound the batches taken
    /// out; this bounds the sends, so a batch's retry waits its turn under
    /// the limit as it stands then, not as it stood when the batch left.
    sending: usize,
}

impl<S: Sink> Requester<S> {
    /// Wraps `sink` with the delivery settings of `cfg`.
    pub fn new(sink: S, cfg: &DeliveryConfig, stats: Arc<SinkStats>) -> Requester<S> {
        stats.concurrency_limit.store(1, Relaxed);
        stats
            .daily_budget
            .store(cfg.daily_budget.map_or(0, |b| b.0), Relaxed);
        Requester {
            sink,
            name: cfg.name.clone(),
            stats,
            backoff_max: cfg.backoff_max,
            max_bytes: cfg.batch_max_bytes,
            state: Mutex::new(State {
                arc: Controller::new(cfg.max_in_flight, Instant::now()),
                pause_until: None,
                down_since: None,
                dead_letter_log: RateLimit::new(Duration::from_secs(10)),
                meter: Meter::new(cfg.schedule.clone(), cfg.daily_budget.map(|b| b.0)),
                sending: 0,
            }),
            turn: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many more requests may start now, given `in_flight` outstanding;
    /// zero while paused or outside the schedule or budget. The `Duration`
    /// says when to look again if zero.
    pub fn slots(&self, in_flight: usize) -> (usize, Option<Duration>) {
        let now = Instant::now();
        let mut st = self.state();
        st.arc.observe_in_flight(in_flight);
        let limit = st.arc.limit();
        self.stats.concurrency_limit.store(limit as u64, Relaxed);
        if let Some(until) = st.pause_until {
            if until > now {
                return (0, Some(until - now));
            }
            st.pause_until = None;
        }
        match st.meter.gate(LocalTime::now()) {
            Gate::Open => {
                *self.stats.held.lock().unwrap() = None;
                (limit.saturating_sub(in_flight), None)
            }
            Gate::Closed { why, retry_in } => {
                let mut held = self.stats.held.lock().unwrap();
                if held.as_deref() != Some(why.as_str()) {
                    info!(sink = self.name, "holding back: {why}");
                    *held = Some(why);
                }
                (0, Some(retry_in))
            }
        }
    }

    /// True while today's byte budget is spent.
    pub fn over_budget(&self) -> bool {
        self.state().meter.over_budget(LocalTime::now())
    }

    /// Delivers all points, retrying what can be retried and setting aside
    /// what the endpoint refuses for good. False if aborted first.
    pub async fn deliver(&self, points: &[Point], abort: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(100), self.backoff_max);
        // Ranges still to send; a refused range is split in halves until the
        // bad points are found, so one poison point never stalls the sink.
        let mut todo: Vec<Range<usize>> = Vec::with_capacity(8);
        if !points.is_empty() {
            todo.push(0..points.len());
        }
        while let Some(range) = todo.pop() {
            let body = self.sink.encode(&points[range.clone()]);
            let len = body.len() as u64;
            if len > self.max_bytes && range.len() > 1 {
                // Too large for one request: halves, before the endpoint says so.
                let mid = range.start + range.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
                continue;
            }
            if !self.wait_turn(abort).await {
                return false;
            }
            self.stats.requests.fetch_add(1, Relaxed);
            let started = Instant::now();
            let result = tokio::select! {
                _ = abort.cancelled() => None,
                r = self.sink.send(body) => Some(r),
            };
            self.state().sending -= 1;
            self.turn.notify_waiters();
            let Some(result) = result else { return false };
            let rtt = started.elapsed();
            match self.settle(result, &points[range.clone()], len, rtt, &mut backoff) {
                Settled::Done => {}
                Settled::Split => {
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
                // `settle` set the pause; `wait_turn` keeps it.
                Settled::Retry => todo.push(range),
            }
        }
        true
    }

    /// Waits until a request may go on the wire: no pause in force and
    /// fewer than the limit sending; then counts it as sending. False if
    /// aborted first.
    async fn wait_turn(&self, abort: &CancellationToken) -> bool {
        loop {
            // Registered before looking, so a request that ends in between
            // still wakes us.
            let turn = self.turn.notified();
            let pause = {
                let mut st = self.state();
                let now = Instant::now();
                match st.pause_until {
                    Some(until) if until > now => Some(until - now),
                    _ if st.sending < st.arc.limit() => {
                        st.sending += 1;
                        return true;
                    }
                    _ => None,
                }
            };
            tokio::select! {
                _ = abort.cancelled() => return false,
                _ = turn => {}
                _ = tokio::time::sleep(pause.unwrap_or_default()), if pause.is_some() => {}
            }
        }
    }

    /// Books one response: counters, the concurrency limit, the outage log;
    /// says what to do with the points next.
    fn settle(
        &self,
        result: Result<(), SinkError>,
        points: &[Point],
        len: u64,
        rtt: Duration,
        backoff: &mut Backoff,
    ) -> Settled {
        let mut st = self.state();
        let pressure = matches!(result, Err(SinkError::Retryable { .. }));
        st.arc.on_response(Instant::now(), rtt, pressure);
        let s = &self.stats;
        match result {
            Ok(()) => {
                s.points_sent.fetch_add(points.len() as u64, Relaxed);
                if let Some(newest) = points.iter().map(|p| p.ts_ns).max() {
                    s.last_sent_ts_ns.fetch_max(newest, Relaxed);
                }
                s.bytes_sent.fetch_add(len, Relaxed);
                let now = LocalTime::now();
                st.meter.add(now, len);
                s.bytes_today.store(st.meter.bytes_today(now), Relaxed);
                s.up.store(true, Relaxed);
                s.set_error(None);
                backoff.reset();
                if let Some(since) = st.down_since.take() {
                    info!(
                        sink = self.name,
                        "sink is back after {:.1}s; sending the backlog",
                        since.elapsed().as_secs_f64()
                    );
                }
                Settled::Done
            }
            Err(SinkError::Permanent { reason }) if points.len() > 1 => {
                s.failures.fetch_add(1, Relaxed);
                s.set_error(Some(reason));
                Settled::Split
            }
            Err(SinkError::Permanent { reason }) => {
                s.failures.fetch_add(1, Relaxed);
                s.dead_letters.fetch_add(1, Relaxed);
                let p = &points[0];
                if let Some(held) = st.dead_letter_log.allow(Instant::now()) {
                    error!(sink = self.name, series = %p.series, ts = p.ts_ns, suppressed = held,
                        "the endpoint refused a point for good, set aside: {reason}");
                }
                s.set_error(Some(reason));
                Settled::Done
            }
            Err(SinkError::Retryable {
                reason,
                retry_after,
            }) => {
                s.failures.fetch_add(1, Relaxed);
                s.up.store(false, Relaxed);
                if st.down_since.is_none() {
                    warn!(sink = self.name, "sink unreachable ({reason}); buffering in the store and retrying with backoff");
                    st.down_since = Some(Instant::now());
                }
                s.set_error(Some(reason));
                let delay = retry_after.unwrap_or_else(|| backoff.next_delay());
                // No new request starts before this one may retry.
                let until = Instant::now() + delay;
                st.pause_until = Some(st.pause_until.map_or(until, |u| u.max(until)));
                Settled::Retry
            }
        }
    }
}

/// What to do with a request's points after its response.
enum Settled {
    /// Delivered or set aside.
    Done,
    /// Refused as a whole: send each half alone.
    Split,
    /// Send them again once the pause `settle` set is over.
    Retry,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::SeriesKey;

    /// Records each request's points; refuses any request holding a NaN.
    #[derive(Default)]
    struct Fake {
        requests: Mutex<Vec<usize>>,
    }

    impl Sink for Fake {
        fn encode(&self, points: &[Point]) -> Vec<u8> {
            points.iter().flat_map(|p| p.value.to_le_bytes()).collect()
        }
        async fn send(&self, body: Vec<u8>) -> Result<(), SinkError> {
            let values: Vec<f64> = body
                .chunks(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if values.iter().any(|v| v.is_nan()) {
                return Err(SinkError::Permanent {
                    reason: "bad point".into(),
                });
            }
            self.requests.lock().unwrap().push(values.len());
            Ok(())
        }
    }

    fn config(max_bytes: u64) -> DeliveryConfig {
        let mut c: crate::config::InfluxSinkConfig =
            toml::from_str("name = \"t\"\nurl = \"http://x\"\ndb = \"d\"\n").unwrap();
        c.batch_max_bytes = crate::config::ByteSize(max_bytes);
        c.delivery()
    }

    fn points(n: usize) -> Vec<Point> {
        (0..n)
            .map(|i| Point {
                series: SeriesKey::new("m", [], "f"),
                ts_ns: i as i64,
                value: i as f64,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_over_the_byte_limit_goes_in_halves() {
        let stats = Arc::new(SinkStats::default());
        let req = Requester::new(Fake::default(), &config(8 * 100), stats.clone());
        assert!(req.deliver(&points(1000), &CancellationToken::new()).await);
        let sizes = req.sink.requests.lock().unwrap().clone();
        assert!(sizes.iter().all(|&n| n <= 100), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert_eq!(stats.points_sent.load(Relaxed), 1000);
    }

    #[tokio::test]
    async fn one_refused_point_is_set_aside_and_the_rest_sent() {
        let stats = Arc::new(SinkStats::default());
        let req = Requester::new(Fake::default(), &config(1 << 20), stats.clone());
        let mut pts = points(1000);
        pts[617].value = f64::NAN;
        assert!(req.deliver(&pts, &CancellationToken::new()).await);
        assert_eq!(stats.points_sent.load(Relaxed), 999);
        assert_eq!(stats.dead_letters.load(Relaxed), 1);
    }
}
