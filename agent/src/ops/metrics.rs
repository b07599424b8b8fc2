//! Counters every task updates and every view reads: the status socket, the
//! demo's live line and the shutdown summary all show the same numbers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// All counters of one running agent.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    device: String,
    sources: Mutex<Vec<Arc<SourceStats>>>,
    /// The store's counters.
    pub store: StoreStats,
    sinks: Mutex<Vec<Arc<SinkStats>>>,
    config: Mutex<ConfigOrigin>,
}

/// Where the running configuration came from (`tidegate status` shows it).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigOrigin {
    /// `local` (the file alone) or `fleet` (the file under a fleet overlay).
    pub source: String,
    /// The fleet configuration's version (0: none).
    pub version: u64,
    /// `pending` (applied, health gate running) or `good` (last-known-good).
    pub state: String,
}

/// One source's counters.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// The source's name.
    pub name: String,
    /// Lines (or messages) received, valid or not.
    pub lines: AtomicU64,
    /// Points produced.
    pub points: AtomicU64,
    /// Whether the port is open now.
    pub connected: AtomicBool,
    rejects: Mutex<BTreeMap<&'static str, u64>>,
}

impl SourceStats {
    /// Counts one rejected input under `reason`.
    pub fn reject(&self, reason: &'static str) {
        *self.rejects.lock().unwrap().entry(reason).or_default() += 1;
    }

    /// Rejected inputs by reason, so far.
    pub fn rejects_snapshot(&self) -> BTreeMap<String, u64> {
        self.rejects
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }
}

/// The store's counters.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Points handed to the store.
    pub points_appended: AtomicU64,
    /// Points committed to disk (durable).
    pub points_flushed: AtomicU64,
    /// Journal flushes committed.
    pub flushes: AtomicU64,
    /// Size of the store's files now.
    pub bytes_on_disk: AtomicU64,
    /// Distinct series known.
    pub series: AtomicU64,
    /// Journal rows sealed into per-series blocks.
    pub sealed_rows: AtomicU64,
    /// Raw points evicted to keep within the limits (their rollups stay).
    pub points_evicted: AtomicU64,
}

/// One sink's counters.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// The sink's name.
    pub name: String,
    /// Points the endpoint acknowledged.
    pub points_sent: AtomicU64,
    /// Requests made, successful or not.
    pub requests: AtomicU64,
    /// Requests that failed.
    pub failures: AtomicU64,
    /// Points the endpoint refused for good (kept out of the retry loop).
    pub dead_letters: AtomicU64,
    /// Whether the last request succeeded.
    pub up: AtomicBool,
    /// Bytes sent on the wire (request bodies).
    pub bytes_sent: AtomicU64,
    /// Requests in flight now.
    pub in_flight: AtomicU64,
    /// Requests the adaptive limit allows now.
    pub concurrency_limit: AtomicU64,
    /// Durable points not yet acknowledged by the endpoint.
    pub backlog_points: AtomicU64,
    /// Raw points evicted before this sink had them, sent as rollups instead.
    pub raw_replaced: AtomicU64,
    /// Rollup windows sent in place of evicted raw points.
    pub rollups_replacing: AtomicU64,
    /// Raw points evicted before this sink had them whose rollups were gone too.
    pub lost: AtomicU64,
    /// Rollup windows sent by a rollup-tier sink.
    pub windows_sent: AtomicU64,
    /// Bytes sent since local midnight (the daily budget's count).
    pub bytes_today: AtomicU64,
    /// Why the sink is holding back, if it is (outside its schedule, over budget).
    pub held: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
}

impl SinkStats {
    /// Records the latest error, shown by `status`.
    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap() = e;
    }
}

impl Metrics {
    /// Fresh counters for the agent named `device`.
    pub fn new(device: &str) -> Arc<Metrics> {
        Arc::new(Metrics {
            started: Instant::now(),
            device: device.to_string(),
            sources: Mutex::default(),
            store: StoreStats::default(),
            sinks: Mutex::default(),
            config: Mutex::new(ConfigOrigin {
                source: "local".into(),
                version: 0,
                state: "good".into(),
            }),
        })
    }

    /// Records where the running configuration came from.
    pub fn set_config_origin(&self, origin: ConfigOrigin) {
        *self.config.lock().unwrap() = origin;
    }

    /// Drops a source's counters (it was removed from the configuration).
    pub fn forget_source(&self, name: &str) {
        self.sources.lock().unwrap().retain(|s| s.name != name);
    }

    /// Drops a sink's counters (it was removed from the configuration).
    pub fn forget_sink(&self, name: &str) {
        self.sinks.lock().unwrap().retain(|s| s.name != name);
    }

    /// Registers a source and returns its counters.
    /// A source restarted under the same name keeps its counters.
    pub fn source(&self, name: &str) -> Arc<SourceStats> {
        if let Some(s) = self.sources.lock().unwrap().iter().find(|s| s.name == name) {
            return s.clone();
        }
        let s = Arc::new(SourceStats {
            name: name.to_string(),
            ..Default::default()
        });
        self.sources.lock().unwrap().push(s.clone());
        s
    }

    /// Registers a sink and returns its counters.
    /// A sink restarted under the same name keeps its counters.
    pub fn sink(&self, name: &str) -> Arc<SinkStats> {
        if let Some(s) = self.sinks.lock().unwrap().iter().find(|s| s.name == name) {
            return s.clone();
        }
        let s = Arc::new(SinkStats {
            name: name.to_string(),
            ..Default::default()
        });
        self.sinks.lock().unwrap().push(s.clone());
        s
    }

    /// A consistent-enough copy of every counter, for display and the socket.
    pub fn snapshot(&self) -> Status {
        let sources = self
            .sources
            .lock()
            .unwrap()
            .iter()
            .map(|s| SourceStatus {
                name: s.name.clone(),
                lines: s.lines.load(Relaxed),
                points: s.points.load(Relaxed),
                connected: s.connected.load(Relaxed),
                rejects: s.rejects_snapshot(),
            })
            .collect();
        let st = &self.store;
        let store = StoreStatus {
            points_appended: st.points_appended.load(Relaxed),
            points_flushed: st.points_flushed.load(Relaxed),
            flushes: st.flushes.load(Relaxed),
            bytes_on_disk: st.bytes_on_disk.load(Relaxed),
            series: st.series.load(Relaxed),
            sealed_rows: st.sealed_rows.load(Relaxed),
            points_evicted: st.points_evicted.load(Relaxed),
        };
        let sinks = self
            .sinks
            .lock()
            .unwrap()
            .iter()
            .map(|s| SinkStatus {
                name: s.name.clone(),
                up: s.up.load(Relaxed),
                points_sent: s.points_sent.load(Relaxed),
                requests: s.requests.load(Relaxed),
                failures: s.failures.load(Relaxed),
                dead_letters: s.dead_letters.load(Relaxed),
                bytes_sent: s.bytes_sent.load(Relaxed),
                in_flight: s.in_flight.load(Relaxed),
                concurrency_limit: s.concurrency_limit.load(Relaxed),
                backlog_points: s.backlog_points.load(Relaxed),
                raw_replaced: s.raw_replaced.load(Relaxed),
                rollups_replacing: s.rollups_replacing.load(Relaxed),
                lost: s.lost.load(Relaxed),
                windows_sent: s.windows_sent.load(Relaxed),
                bytes_today: s.bytes_today.load(Relaxed),
                held: s.held.lock().unwrap().clone(),
                last_error: s.last_error.lock().unwrap().clone(),
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            device: self.device.clone(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            sources,
            store,
            sinks,
            config: self.config.lock().unwrap().clone(),
        }
    }
}

/// What `tidegate status --json` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Agent version.
    pub version: String,
    /// Device name.
    pub device: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Per source.
    pub sources: Vec<SourceStatus>,
    /// The store.
    pub store: StoreStatus,
    /// Per sink.
    pub sinks: Vec<SinkStatus>,
    /// Where the running configuration came from.
    #[serde(default)]
    pub config: ConfigOrigin,
}

/// One source in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SourceStatus {
    /// Name.
    pub name: String,
    /// Lines received.
    pub lines: u64,
    /// Points produced.
    pub points: u64,
    /// Port open now.
    pub connected: bool,
    /// Rejected lines by reason.
    pub rejects: BTreeMap<String, u64>,
}

impl SourceStatus {
    /// All rejects, whatever the reason.
    pub fn rejected(&self) -> u64 {
        self.rejects.values().sum()
    }
}

/// The store in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoreStatus {
    /// Points handed to the store.
    pub points_appended: u64,
    /// Points durable on disk.
    pub points_flushed: u64,
    /// Flushes committed.
    pub flushes: u64,
    /// Bytes of the store's files.
    pub bytes_on_disk: u64,
    /// Distinct series.
    pub series: u64,
    /// Journal rows sealed into blocks.
    pub sealed_rows: u64,
    /// Raw points evicted (rollups kept).
    #[serde(default)]
    pub points_evicted: u64,
}

/// One sink in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SinkStatus {
    /// Name.
    pub name: String,
    /// Last request succeeded.
    pub up: bool,
    /// Points acknowledged by the endpoint.
    pub points_sent: u64,
    /// Requests made.
    pub requests: u64,
    /// Requests failed.
    pub failures: u64,
    /// Points refused for good.
    pub dead_letters: u64,
    /// Request body bytes sent.
    pub bytes_sent: u64,
    /// Requests in flight.
    #[serde(default)]
    pub in_flight: u64,
    /// Requests the adaptive limit allows.
    #[serde(default)]
    pub concurrency_limit: u64,
    /// Durable points the endpoint has not acknowledged yet.
    #[serde(default)]
    pub backlog_points: u64,
    /// Raw points evicted before they were sent, replaced by rollups.
    #[serde(default)]
    pub raw_replaced: u64,
    /// Rollup windows sent in their place.
    #[serde(default)]
    pub rollups_replacing: u64,
    /// Raw points evicted before they were sent, with no rollup left either.
    #[serde(default)]
    pub lost: u64,
    /// Windows sent by a rollup-tier sink.
    #[serde(default)]
    pub windows_sent: u64,
    /// Bytes sent since local midnight.
    #[serde(default)]
    pub bytes_today: u64,
    /// Why the sink holds back, if it does.
    #[serde(default)]
    pub held: Option<String>,
    /// The last error, if the last request failed.
    pub last_error: Option<String>,
}
