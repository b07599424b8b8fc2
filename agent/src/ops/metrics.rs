//! Counters every task updates and every view reads: the status socket, the
//! demo's live line and the shutdown summary all show the same numbers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
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
    /// The wall clock (`ops/clock.rs`).
    pub clock: ClockStats,
}

/// The wall clock's state.
#[derive(Debug, Default)]
pub struct ClockStats {
    /// Wall-clock steps seen (against the monotonic clock).
    pub steps: AtomicU64,
    /// The last step, ns (negative: backwards).
    pub last_step_ns: AtomicI64,
    /// 0 unknown, 1 not synchronised, 2 synchronised.
    synchronised: AtomicU8,
}

impl ClockStats {
    /// Records the kernel's answer.
    pub fn set_synchronised(&self, s: Option<bool>) {
        self.synchronised.store(
            match s {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            },
            Relaxed,
        );
    }

    fn synchronised(&self) -> Option<bool> {
        match self.synchronised.load(Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }
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
            clock: ClockStats::default(),
        })
    }

    /// Registers a source and returns its counters.
    pub fn source(&self, name: &str) -> Arc<SourceStats> {
        let s = Arc::new(SourceStats {
            name: name.to_string(),
            ..Default::default()
        });
        self.sources.lock().unwrap().push(s.clone());
        s
    }

    /// Registers a sink and returns its counters.
    pub fn sink(&self, name: &str) -> Arc<SinkStats> {
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
            clock: ClockStatus {
                synchronised: self.clock.synchronised(),
                steps: self.clock.steps.load(Relaxed),
                last_step_ms: self.clock.last_step_ns.load(Relaxed) / 1_000_000,
            },
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
    /// The wall clock.
    #[serde(default)]
    pub clock: ClockStatus,
}

/// The wall clock in [`Status`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ClockStatus {
    /// The kernel's NTP state (adjtimex): synchronised or not; unknown
    /// before the first check or where it cannot be asked.
    pub synchronised: Option<bool>,
    /// Wall-clock steps seen since start (jumps of more than 2 s against the
    /// monotonic clock).
    pub steps: u64,
    /// The last step, ms (negative: backwards).
    pub last_step_ms: i64,
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
