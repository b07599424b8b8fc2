//! `/metrics`: everything `status` shows, in the Prometheus/OpenMetrics text
//! format, encoded by `prometheus-client` from one [`Status`] snapshot per
//! scrape (the counters stay the atomics the pipeline already bumps).
//!
//! The names are stable (documented in the README); counters get `_total`
//! from the encoder.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::health::Health;
use super::metrics::{SinkStatus, SourceStatus};
use super::{Metrics, Status};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry holding the agent's collector.
pub fn registry(metrics: Arc<Metrics>, health: Option<Arc<Health>>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(StatusCollector { metrics, health }));
    r
}

/// The registry's metrics as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[derive(Debug)]
struct StatusCollector {
    metrics: Arc<Metrics>,
    health: Option<Arc<Health>>,
}

type Labels = Vec<(&'static str, String)>;

/// A per-sink metric: name, help, and how to read it from a sink's status.
type SinkFigure<T> = (&'static str, &'static str, fn(&SinkStatus) -> T);

/// One metric family: its rows of labels and values.
struct Family<'a> {
    enc: DescriptorEncoder<'a>,
}

impl Family<'_> {
    fn encode<M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        rows: impl IntoIterator<Item = (Labels, M)>,
    ) -> std::fmt::Result {
        let mut rows = rows.into_iter().peekable();
        let Some(kind) = rows.peek().map(|(_, m)| m.metric_type()) else {
            return Ok(());
        };
        let mut m = self.enc.encode_descriptor(name, help, None, kind)?;
        for (labels, v) in rows {
            v.encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn counter(&mut self, name: &str, help: &str, rows: Vec<(Labels, u64)>) -> std::fmt::Result {
        let rows = rows.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
        self.encode(name, help, rows)
    }

    fn gauge(&mut self, name: &str, help: &str, rows: Vec<(Labels, f64)>) -> std::fmt::Result {
        let rows = rows.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
        self.encode(name, help, rows)
    }
}

fn one<T>(v: T) -> Vec<(Labels, T)> {
    vec![(Vec::new(), v)]
}

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

impl Collector for StatusCollector {
    fn encode(&self, enc: DescriptorEncoder) -> std::fmt::Result {
        let s = self.metrics.snapshot();
        let healthy = self.health.as_ref().map(|h| h.check().is_ok());
        encode_status(&mut Family { enc }, &s, healthy)
    }
}

fn encode_status(f: &mut Family, s: &Status, healthy: Option<bool>) -> std::fmt::Result {
    f.gauge(
        "tidegate_build_info",
        "Always 1; the version and device as labels.",
        vec![(
            vec![("version", s.version.clone()), ("device", s.device.clone())],
            1.0,
        )],
    )?;
    f.gauge(
        "tidegate_uptime_seconds",
        "Seconds since the agent started.",
        one(s.uptime_s),
    )?;
    if let Some(sync) = s.clock_synchronised {
        f.gauge(
            "tidegate_clock_synchronised",
            "1 while the kernel clock is NTP-synchronised.",
            one(sync as u8 as f64),
        )?;
    }
    f.counter(
        "tidegate_clock_steps_total",
        "Wall-clock steps of more than 2 s against the monotonic clock.",
        one(s.clock.steps),
    )?;
    f.counter(
        "tidegate_clock_corrected_points_total",
        "Points stamped on arrival before a forward clock step, re-stamped by it.",
        one(s.clock.corrected),
    )?;
    if let Some(h) = healthy {
        f.gauge(
            "tidegate_healthy",
            "1 while /healthz answers 200.",
            one(h as u8 as f64),
        )?;
    }

    let by_source = |v: &dyn Fn(&SourceStatus) -> u64| -> Vec<(Labels, u64)> {
        s.sources
            .iter()
            .map(|x| (vec![("source", x.name.clone())], v(x)))
            .collect()
    };
    let gauge_by_source = |v: &dyn Fn(&SourceStatus) -> u64| -> Vec<(Labels, f64)> {
        by_source(v)
            .into_iter()
            .map(|(l, n)| (l, n as f64))
            .collect()
    };
    f.counter(
        "tidegate_source_lines",
        "Lines or messages received by a source, valid or not.",
        by_source(&|x| x.lines),
    )?;
    f.counter(
        "tidegate_source_points",
        "Points produced by a source (the ingest counter).",
        by_source(&|x| x.points),
    )?;
    f.counter(
        "tidegate_source_rejects",
        "Inputs a source rejected, by reason.",
        s.sources
            .iter()
            .flat_map(|x| {
                x.rejects.iter().map(|(reason, n)| {
                    (
                        vec![("source", x.name.clone()), ("reason", reason.clone())],
                        *n,
                    )
                })
            })
            .collect(),
    )?;
    f.gauge(
        "tidegate_source_connected",
        "1 while the source's port or broker connection is open.",
        gauge_by_source(&|x| x.connected as u64),
    )?;
    f.gauge(
        "tidegate_source_unacked_messages",
        "MQTT messages read and not yet acknowledged to the broker (their points wait for a commit).",
        gauge_by_source(&|x| x.unacked),
    )?;
    f.counter(
        "tidegate_source_window_commits",
        "Commits an MQTT source asked for because the broker's window of unacknowledged messages was three quarters full; a few a second or more: raise max_inflight_messages and broker_inflight.",
        by_source(&|x| x.window_commits),
    )?;
    f.gauge(
        "tidegate_source_last_seen_timestamp_seconds",
        "Unix time of the last second in which the source produced points.",
        s.sources
            .iter()
            .filter(|x| x.last_seen_ns > 0)
            .map(|x| (vec![("source", x.name.clone())], secs(x.last_seen_ns)))
            .collect(),
    )?;

    let st = &s.store;
    f.counter(
        "tidegate_store_points_appended",
        "Points handed to the store.",
        one(st.points_appended),
    )?;
    f.counter(
        "tidegate_store_points_flushed",
        "Points committed to disk (durable).",
        one(st.points_flushed),
    )?;
    f.counter(
        "tidegate_store_flushes",
        "Journal flushes committed.",
        one(st.flushes),
    )?;
    f.counter(
        "tidegate_store_points_evicted",
        "Raw points evicted to stay within the limits (rollups kept).",
        one(st.points_evicted),
    )?;
    let gauges: [(&str, &str, f64); 9] = [
        (
            "tidegate_store_disk_bytes",
            "Bytes of the store's files (database and WAL).",
            st.bytes_on_disk as f64,
        ),
        (
            "tidegate_store_used_bytes",
            "Bytes of live pages in the database and of the journal's files (what eviction steers).",
            st.bytes_used as f64,
        ),
        (
            "tidegate_store_max_bytes",
            "store.max_disk_bytes.",
            st.max_disk_bytes as f64,
        ),
        (
            "tidegate_store_raw_points",
            "Raw points kept.",
            st.raw_points as f64,
        ),
        (
            "tidegate_store_chunk_bytes",
            "Compressed bytes of the raw points kept.",
            st.chunk_bytes as f64,
        ),
        (
            "tidegate_store_series",
            "Distinct series.",
            st.series as f64,
        ),
        (
            "tidegate_store_degraded_points",
            "Raw points evicted before a sink had them, owed as rollups.",
            st.degraded_points as f64,
        ),
        (
            "tidegate_store_windows_evicted",
            "Rollup windows evicted (the last resort).",
            st.windows_evicted as f64,
        ),
        (
            "tidegate_store_ingest_rate",
            "Points per second into the store (EWMA over about 5 s).",
            st.ingest_rate,
        ),
    ];
    for (name, help, v) in gauges {
        f.gauge(name, help, one(v))?;
    }
    for (name, help, ns) in [
        (
            "tidegate_store_oldest_raw_timestamp_seconds",
            "Unix time of the oldest raw point kept.",
            st.oldest_raw_ns,
        ),
        (
            "tidegate_store_oldest_rollup_timestamp_seconds",
            "Unix time of the oldest rollup window kept.",
            st.oldest_rollup_ns,
        ),
    ] {
        let rows = if ns > 0 { one(secs(ns)) } else { Vec::new() };
        f.gauge(name, help, rows)?;
    }

    let sink = |name: &str| vec![("sink", name.to_string())];
    let counters: [SinkFigure<u64>; 7] = [
        (
            "tidegate_sink_points_sent",
            "Points the endpoint acknowledged.",
            |k| k.points_sent,
        ),
        (
            "tidegate_sink_requests",
            "Requests made, successful or not.",
            |k| k.requests,
        ),
        ("tidegate_sink_failures", "Requests that failed.", |k| {
            k.failures
        }),
        (
            "tidegate_sink_dead_letters",
            "Points the endpoint refused for good (set aside).",
            |k| k.dead_letters,
        ),
        (
            "tidegate_sink_bytes_sent",
            "Bytes sent on the wire (compressed request bodies).",
            |k| k.bytes_sent,
        ),
        (
            "tidegate_sink_raw_replaced",
            "Raw points evicted before they were sent, sent as rollups instead.",
            |k| k.raw_replaced,
        ),
        (
            "tidegate_sink_lost",
            "Raw points evicted before they were sent whose rollups were gone too.",
            |k| k.lost,
        ),
    ];
    for (name, help, get) in counters {
        f.counter(
            name,
            help,
            s.sinks.iter().map(|k| (sink(&k.name), get(k))).collect(),
        )?;
    }
    let gauges: [SinkFigure<Option<f64>>; 8] = [
        (
            "tidegate_sink_up",
            "1 while the last request succeeded.",
            |k| Some(k.up as u8 as f64),
        ),
        (
            "tidegate_sink_held",
            "1 while the sink holds back (outside its schedule, over budget).",
            |k| Some(k.held.is_some() as u8 as f64),
        ),
        (
            "tidegate_sink_backlog_points",
            "Durable points the endpoint has not acknowledged yet.",
            |k| Some(k.backlog_points as f64),
        ),
        (
            "tidegate_sink_lag_seconds",
            "Age of the oldest point the sink has not had (0 when caught up).",
            |k| k.lag_s,
        ),
        ("tidegate_sink_in_flight", "Requests in flight.", |k| {
            Some(k.in_flight as f64)
        }),
        (
            "tidegate_sink_concurrency_limit",
            "Requests the adaptive limit allows in flight.",
            |k| Some(k.concurrency_limit as f64),
        ),
        (
            "tidegate_sink_bytes_today",
            "Bytes sent since local midnight.",
            |k| Some(k.bytes_today as f64),
        ),
        (
            "tidegate_sink_daily_budget_bytes",
            "The sink's daily_budget (absent when unlimited).",
            |k| (k.daily_budget > 0).then_some(k.daily_budget as f64),
        ),
    ];
    for (name, help, get) in gauges {
        f.gauge(
            name,
            help,
            s.sinks
                .iter()
                .filter_map(|k| get(k).map(|v| (sink(&k.name), v)))
                .collect(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let m = Metrics::new("gw1");
        let src = m.source("sim");
        src.points.store(42, Relaxed);
        src.reject("bad_number");
        src.unacked.store(7, Relaxed);
        src.window_commits.store(3, Relaxed);
        m.store.points_appended.store(42, Relaxed);
        let k = m.sink("influx");
        k.points_sent.store(40, Relaxed);
        k.backlog_points.store(2, Relaxed);
        let text = render(&registry(m, None));
        for want in [
            "tidegate_build_info{version=\"",
            "tidegate_source_points_total{source=\"sim\"} 42",
            "tidegate_source_rejects_total{source=\"sim\",reason=\"bad_number\"} 1",
            "tidegate_source_unacked_messages{source=\"sim\"} 7",
            "tidegate_source_window_commits_total{source=\"sim\"} 3",
            "tidegate_store_points_appended_total 42",
            "tidegate_sink_points_sent_total{sink=\"influx\"} 40",
            "tidegate_sink_backlog_points{sink=\"influx\"} 2",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
