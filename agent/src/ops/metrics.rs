//! Counters every task updates and every view reads: the status socket, the
//! demo's live line and the shutdown summary all show the same numbers.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::point::SeriesKey;

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
    /// Where the configuration came from and its hash, for `status`.
    config_file: Mutex<Option<ConfigInfo>>,
    /// Where the running configuration came from (the file alone, or under a fleet overlay).
    config: Mutex<ConfigOrigin>,
    /// Ingest rate over all sources (EWMA of points/s, f64 bits), see [`Metrics::tick`].
    ingest_rate: AtomicU64,
    /// What the previous [`Metrics::tick`] saw.
    last_tick: Mutex<Option<Tick>>,
}

/// The configuration's provenance.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigInfo {
    /// The file the agent read.
    pub path: String,
    /// FNV-1a 64 of the file's bytes, hex: two agents with the same hash run the same file.
    pub hash: String,
}

impl ConfigInfo {
    /// Provenance of the configuration file at `path` whose text is `text`.
    pub fn of(path: &std::path::Path, text: &[u8]) -> ConfigInfo {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        ConfigInfo {
            path: path.display().to_string(),
            hash: format!("{h:016x}"),
        }
    }
}

#[derive(Debug)]
struct Tick {
    at: Instant,
    store_points: u64,
    sources: Vec<u64>,
}

/// Weight of the newest second in the rate EWMAs (about a 5 s window).
const EWMA_ALPHA: f64 = 0.2;

fn ewma(cell: &AtomicU64, sample: f64) {
    let old = f64::from_bits(cell.load(Relaxed));
    let new = if old == 0.0 {
        sample
    } else {
        old + EWMA_ALPHA * (sample - old)
    };
    cell.store(new.to_bits(), Relaxed);
}

/// The wall clock's state.
#[derive(Debug, Default)]
pub struct ClockStats {
    /// Wall-clock steps seen (against the monotonic clock).
    pub steps: AtomicU64,
    /// The last step, ns (negative: backwards).
    pub last_step_ns: AtomicI64,
    /// Points re-stamped after forward steps (stamped on arrival before it).
    pub corrected: AtomicU64,
    /// Points stamped before a step that a sink had already been handed:
    /// they went upstream with the old time.
    pub sent_uncorrected: AtomicU64,
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

/// Where the running configuration came from (`tidegate status` shows it).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigOrigin {
    /// `local` (the file alone) or `fleet` (the file under a fleet overlay).
    pub source: String,
    /// The fleet configuration's version (0: none; the higher of its two layers).
    pub version: u64,
    /// Its layers, e.g. `local file + all v3 + device v5`.
    #[serde(default)]
    pub layers: String,
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
    /// MQTT messages the broker sent again (DUP) while their first copy was
    /// still unacknowledged here: acknowledged, not stored twice.
    pub redelivered: AtomicU64,
    /// MQTT messages read and not yet acknowledged to the broker, now.
    pub unacked: AtomicU64,
    /// The most MQTT messages unacknowledged at once, since start.
    pub unacked_max: AtomicU64,
    /// Commits asked for because the broker's window of unacknowledged
    /// MQTT messages was three quarters full (each an `fdatasync`).
    pub window_commits: AtomicU64,
    /// Whether the port is open now.
    pub connected: AtomicBool,
    /// Wall time (ns) of the last second in which points arrived (updated by [`Metrics::tick`]).
    pub last_seen_ns: AtomicI64,
    /// Points per second, an EWMA updated by [`Metrics::tick`] (f64 bits).
    rate: AtomicU64,
    rejects: Mutex<BTreeMap<&'static str, u64>>,
    /// Series this source stamps with the arrival time: after a clock step
    /// their points are re-stamped (`ops/clock.rs`).
    arrival: Mutex<HashSet<SeriesKey>>,
}

impl SourceStats {
    /// Notes that the points of `series` carry the agent's arrival time.
    pub fn stamped_on_arrival(&self, series: SeriesKey) {
        self.arrival.lock().unwrap().insert(series);
    }

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
    /// Chunk bytes encoded for journal flushes, before SQLite's pages: with
    /// the two below, what the store's writes are made of.
    pub journal_bytes: AtomicU64,
    /// Chunk bytes encoded by sealing.
    pub sealed_bytes: AtomicU64,
    /// Chunk bytes encoded by compaction merges.
    pub merged_bytes: AtomicU64,
    /// Raw points evicted to keep within the limits (their rollups stay).
    pub points_evicted: AtomicU64,
    /// Bytes of live pages in the database and of the journal's files (what eviction steers).
    pub bytes_used: AtomicU64,
    /// `store.max_disk_bytes`.
    pub max_disk_bytes: AtomicU64,
    /// Raw points kept (journal and sealed chunks).
    pub raw_points: AtomicU64,
    /// Bytes of the chunks holding them.
    pub chunk_bytes: AtomicU64,
    /// Timestamp (ns) of the oldest raw point kept; 0 when empty.
    pub oldest_raw_ns: AtomicI64,
    /// Start (ns) of the oldest rollup window kept; 0 when empty.
    pub oldest_rollup_ns: AtomicI64,
    /// Raw points evicted before some sink had them, still to be sent as rollups.
    pub degraded_points: AtomicU64,
    /// Rollup windows evicted (the last resort).
    pub windows_evicted: AtomicU64,
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
    /// `daily_budget` in bytes; 0 for none.
    pub daily_budget: AtomicU64,
    /// Newest point timestamp (ns) the endpoint acknowledged.
    pub last_sent_ts_ns: AtomicI64,
    /// Oldest timestamp (ns) in the backlog, 0 when there is none (the sink
    /// engine's housekeeping, once a second): the lag is now minus this.
    pub oldest_unsent_ns: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl SinkStats {
    /// Records the latest error, shown by `status`.
    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap() = e;
    }

    /// The latest error, if the last request failed.
    pub fn error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
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
            config_file: Mutex::default(),
            config: Mutex::new(ConfigOrigin {
                source: "local".into(),
                version: 0,
                layers: "local file".into(),
                state: "good".into(),
            }),
            ingest_rate: AtomicU64::new(0),
            last_tick: Mutex::default(),
            clock: ClockStats::default(),
        })
    }

    /// Records where the configuration came from.
    pub fn set_config(&self, info: ConfigInfo) {
        *self.config_file.lock().unwrap() = Some(info);
    }

    /// Once a second (run.rs): rates as EWMAs and each source's last-seen time.
    /// Keeps the hot path to a counter increment.
    pub fn tick(&self) {
        let now = Instant::now();
        let sources = self.sources.lock().unwrap().clone();
        let points: Vec<u64> = sources.iter().map(|s| s.points.load(Relaxed)).collect();
        let store_points = self.store.points_appended.load(Relaxed);
        let mut last = self.last_tick.lock().unwrap();
        if let Some(prev) = last.as_ref() {
            let dt = now.duration_since(prev.at).as_secs_f64();
            if dt > 0.0 {
                ewma(
                    &self.ingest_rate,
                    store_points.saturating_sub(prev.store_points) as f64 / dt,
                );
                for (i, s) in sources.iter().enumerate() {
                    let before = prev.sources.get(i).copied().unwrap_or(0);
                    let new = points[i].saturating_sub(before);
                    ewma(&s.rate, new as f64 / dt);
                    if new > 0 {
                        s.last_seen_ns.store(crate::point::now_ns(), Relaxed);
                    }
                }
            }
        }
        *last = Some(Tick {
            at: now,
            store_points,
            sources: points,
        });
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

    /// Every series a source stamps with the arrival time.
    pub fn arrival_series(&self) -> Vec<SeriesKey> {
        let mut all = HashSet::new();
        for src in self.sources.lock().unwrap().iter() {
            all.extend(src.arrival.lock().unwrap().iter().cloned());
        }
        all.into_iter().collect()
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
                redelivered: s.redelivered.load(Relaxed),
                unacked: s.unacked.load(Relaxed),
                unacked_max: s.unacked_max.load(Relaxed),
                window_commits: s.window_commits.load(Relaxed),
                rejects: s.rejects_snapshot(),
                rate: f64::from_bits(s.rate.load(Relaxed)),
                last_seen_ns: s.last_seen_ns.load(Relaxed),
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
            bytes_used: st.bytes_used.load(Relaxed),
            max_disk_bytes: st.max_disk_bytes.load(Relaxed),
            raw_points: st.raw_points.load(Relaxed),
            chunk_bytes: st.chunk_bytes.load(Relaxed),
            oldest_raw_ns: st.oldest_raw_ns.load(Relaxed),
            oldest_rollup_ns: st.oldest_rollup_ns.load(Relaxed),
            degraded_points: st.degraded_points.load(Relaxed),
            windows_evicted: st.windows_evicted.load(Relaxed),
            ingest_rate: f64::from_bits(self.ingest_rate.load(Relaxed)),
        };
        let now_ns = crate::point::now_ns();
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
                daily_budget: s.daily_budget.load(Relaxed),
                last_sent_ts_ns: s.last_sent_ts_ns.load(Relaxed),
                lag_s: lag_s(
                    s.backlog_points.load(Relaxed),
                    s.oldest_unsent_ns.load(Relaxed),
                    s.last_sent_ts_ns.load(Relaxed),
                    now_ns,
                ),
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            device: self.device.clone(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            config_file: self.config_file.lock().unwrap().clone(),
            clock_synchronised: self.clock.synchronised(),
            now_ns,
            sources,
            store,
            sinks,
            clock: ClockStatus {
                synchronised: self.clock.synchronised(),
                steps: self.clock.steps.load(Relaxed),
                last_step_ms: self.clock.last_step_ns.load(Relaxed) / 1_000_000,
                corrected: self.clock.corrected.load(Relaxed),
                sent_uncorrected: self.clock.sent_uncorrected.load(Relaxed),
            },
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
    /// The configuration file and its hash.
    #[serde(default)]
    pub config_file: Option<ConfigInfo>,
    /// The kernel's clock is NTP-synchronised (`None`: unknown).
    #[serde(default)]
    pub clock_synchronised: Option<bool>,
    /// The agent's wall clock when the snapshot was taken (ns).
    #[serde(default)]
    pub now_ns: i64,
    /// Per source.
    pub sources: Vec<SourceStatus>,
    /// The store.
    pub store: StoreStatus,
    /// Per sink.
    pub sinks: Vec<SinkStatus>,
    /// Where the running configuration came from.
    #[serde(default)]
    pub config: ConfigOrigin,
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
    /// Points re-stamped after forward steps.
    #[serde(default)]
    pub corrected: u64,
    /// Points a sink already had when the step came: upstream with the old time.
    #[serde(default)]
    pub sent_uncorrected: u64,
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
    /// MQTT redeliveries recognised and not stored twice.
    #[serde(default)]
    pub redelivered: u64,
    /// MQTT messages read and not yet acknowledged (waiting for a commit).
    #[serde(default)]
    pub unacked: u64,
    /// The most messages unacknowledged at once since start: against the
    /// broker's window (`broker_inflight`), how full it got.
    #[serde(default)]
    pub unacked_max: u64,
    /// Commits asked for because the broker's window was three quarters
    /// full: more than a few a second means `broker_inflight` (and the
    /// broker's `max_inflight_messages`) is small for the message rate.
    #[serde(default)]
    pub window_commits: u64,
    /// Rejected lines by reason.
    pub rejects: BTreeMap<String, u64>,
    /// Points per second (EWMA over about 5 s).
    #[serde(default)]
    pub rate: f64,
    /// Wall time (ns) of the last second with points; 0 if none yet.
    #[serde(default)]
    pub last_seen_ns: i64,
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
    /// Bytes of live pages in the database and of the journal's files.
    #[serde(default)]
    pub bytes_used: u64,
    /// `store.max_disk_bytes`.
    #[serde(default)]
    pub max_disk_bytes: u64,
    /// Raw points kept.
    #[serde(default)]
    pub raw_points: u64,
    /// Bytes of the chunks that hold them.
    #[serde(default)]
    pub chunk_bytes: u64,
    /// Oldest raw point kept (ns); 0 when none.
    #[serde(default)]
    pub oldest_raw_ns: i64,
    /// Oldest rollup window kept (ns); 0 when none.
    #[serde(default)]
    pub oldest_rollup_ns: i64,
    /// Raw points evicted before a sink had them, owed as rollups.
    #[serde(default)]
    pub degraded_points: u64,
    /// Rollup windows evicted.
    #[serde(default)]
    pub windows_evicted: u64,
    /// Points per second into the store (EWMA over about 5 s).
    #[serde(default)]
    pub ingest_rate: f64,
}

impl StoreStatus {
    /// Chunk bytes per raw point kept.
    pub fn bytes_per_point(&self) -> Option<f64> {
        (self.raw_points > 0).then(|| self.chunk_bytes as f64 / self.raw_points as f64)
    }
}

/// How far behind a sink is: the age of the oldest point it has not had (or,
/// until the store said, now minus the newest point it delivered); 0 when it
/// is caught up; `None` when unknown.
fn lag_s(backlog: u64, oldest_unsent_ns: i64, last_sent_ns: i64, now_ns: i64) -> Option<f64> {
    if backlog == 0 {
        return Some(0.0);
    }
    let since = if oldest_unsent_ns > 0 {
        oldest_unsent_ns
    } else {
        last_sent_ns
    };
    (since > 0).then(|| (now_ns - since).max(0) as f64 / 1e9)
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
    /// `daily_budget` in bytes; 0 for none.
    #[serde(default)]
    pub daily_budget: u64,
    /// Newest point timestamp the endpoint acknowledged (ns); 0 if none.
    #[serde(default)]
    pub last_sent_ts_ns: i64,
    /// How far behind the sink is: the age of the oldest point it has not had, seconds.
    #[serde(default)]
    pub lag_s: Option<f64>,
}

impl SinkStatus {
    /// `up`, `down`, or `held` (outside its schedule or over budget).
    pub fn state(&self) -> &'static str {
        if self.held.is_some() {
            "held"
        } else if self.up {
            "up"
        } else {
            "down"
        }
    }
}
