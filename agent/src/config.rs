//! Configuration: a TOML file, then `TIDEGATE_`-prefixed environment overrides
//! (`TIDEGATE_STORE__FLUSH_INTERVAL=5s` sets `store.flush_interval`).
//!
//! Unknown keys are errors, so a misspelt setting is caught at start-up instead of
//! being silently ignored on a gateway nobody looks at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[macro_use]
mod delivery;
pub use delivery::{DeliveryConfig, Order, SinkTier, Window};
mod secrets;

/// Everything the agent is told.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity and places on disk.
    #[serde(default)]
    pub agent: AgentConfig,
    /// The ring store.
    #[serde(default)]
    pub store: StoreConfig,
    /// Where points come from.
    #[serde(default)]
    pub sources: SourcesConfig,
    /// Where points go.
    #[serde(default)]
    pub sinks: SinksConfig,
    /// Operator interfaces.
    #[serde(default)]
    pub ops: OpsConfig,
    /// The HTTP listener (relay writes from other agents); off unless an address is set.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Configuration over MQTT from a fleet broker (`fleet/`); off unless `url` is set.
    #[serde(default)]
    pub fleet: FleetConfig,
}

/// The fleet broker this agent takes signed configurations from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`; fleet configuration is off while unset.
    pub url: Option<String>,
    /// The fleet's name: topics are `tidegate/{fleet}/{device}/...`.
    pub fleet: String,
    /// Ed25519 public keys (base64, as `tidegate fleet keygen` prints them)
    /// whose signatures this agent accepts.
    pub trusted_keys: Vec<String>,
    /// How long the agent must stay healthy under a new configuration before
    /// it becomes last-known-good; unhealthy before that → rolled back.
    #[serde(with = "humantime_serde")]
    pub confirm_after: Duration,
    /// Envelopes issued further than this in the future are rejected.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Client id; default `tidegate-<device>-fleet`.
    pub client_id: Option<String>,
    /// User name, if the broker asks for one.
    pub username: Option<String>,
    /// Password for `username` (may be `credential:NAME`).
    pub password: Option<String>,
    /// PEM CA(s) of the broker's certificate (`mqtts://`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate.
    pub client_cert: Option<PathBuf>,
    /// PEM key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// MQTT keep-alive (also how soon the broker publishes the last will).
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            url: None,
            fleet: String::new(),
            trusted_keys: Vec::new(),
            confirm_after: Duration::from_secs(60),
            max_clock_skew: Duration::from_secs(300),
            client_id: None,
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            keep_alive: Duration::from_secs(30),
        }
    }
}

impl FleetConfig {
    /// Whether fleet configuration is on.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }
}

/// The HTTP listener: another Tidegate's `[[sinks.influx]]` (or anything that
/// speaks InfluxDB line protocol) writes here, and points are acknowledged
/// once durable in this agent's store.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// `ip:port` to listen on, e.g. `127.0.0.1:8087` (loopback) or
    /// `0.0.0.0:8087`; the listener is off while unset.
    pub address: Option<String>,
    /// Accept line-protocol writes on `/write` and `/api/v2/write`.
    pub write: bool,
    /// If set, writers must send it (`Authorization: Token <token>`, or as
    /// the basic-auth password); `credential:NAME` reads it from systemd's credentials.
    pub token: Option<String>,
    /// Largest request body, compressed or not.
    pub max_body: ByteSize,
    /// Serve `/metrics` (Prometheus) and `/healthz` here.
    pub metrics: bool,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: None,
            write: true,
            token: None,
            max_body: ByteSize(32 << 20),
            metrics: true,
        }
    }
}

/// Identity and places on disk.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// This gateway's name; defaults to the host name.
    pub device: String,
    /// Where the store and persisted state live.
    pub state_dir: PathBuf,
    /// Log filter in `RUST_LOG` syntax, e.g. `info` or `info,tidegate::sync=debug`.
    pub log: String,
    /// How long shutdown may take to flush and make a last sync attempt.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            device: hostname(),
            state_dir: PathBuf::from("/var/lib/tidegate"),
            log: "info".into(),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// The ring store's settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite file; defaults to `<state_dir>/store.db`.
    pub path: Option<PathBuf>,
    /// Points are durable once flushed; a crash loses at most this window.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How often journal rows are sealed into per-series compressed blocks.
    /// Longer means fewer rewrites (SD-card wear) and better blocks; recent
    /// points are then read from the journal, a little slower.
    #[serde(with = "humantime_serde")]
    pub seal_interval: Duration,
    /// Compaction (merging each series' small blocks into large ones) runs
    /// after the first seal after a start, then after every this many seals:
    /// merges that wait for one another share the pages they rewrite. 6 at
    /// the default seal interval is hourly.
    pub compact_every: u32,
    /// `auto` (default: `wal` below about a thousand points a second,
    /// `rollback` above, judged over each minute), `wal` (queries never hold
    /// up a flush; fewer writes at low rates) or `rollback` (40% fewer bytes
    /// written at 10k points a second; a query briefly holds up a flush).
    pub journal: crate::store::JournalMode,
    /// Rollup tiers: window widths of the downsampled copies (min, max, sum,
    /// count, first, last per series and window).
    pub rollups: Vec<humantime_serde::Serde<Duration>>,
    /// The store keeps its files under this size, evicting the oldest raw
    /// blocks first (their rollups stay), rollups last.
    pub max_disk_bytes: ByteSize,
    /// Raw points older than this are evicted (their rollups stay); none if unset.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Stop growing when the file system's free space falls below this.
    pub min_free_disk: ByteSize,
    /// Rows of the dead-letter table kept (rejected input, the newest;
    /// at most 1 KiB of each message); 0 keeps none.
    pub dead_letters: u64,
}

impl StoreConfig {
    /// The rollup window widths.
    pub fn rollup_widths(&self) -> Vec<Duration> {
        self.rollups.iter().map(|d| **d).collect()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: None,
            flush_interval: Duration::from_secs(1),
            seal_interval: Duration::from_secs(600),
            compact_every: 6,
            journal: crate::store::JournalMode::default(),
            rollups: vec![
                Duration::from_secs(60).into(),
                Duration::from_secs(3600).into(),
            ],
            max_disk_bytes: ByteSize(1 << 30),
            max_age: None,
            min_free_disk: ByteSize(256 << 20),
            dead_letters: 10_000,
        }
    }
}

/// A size in bytes, written as a number or with a unit: `"512MiB"`, `"2GB"`, `"64k"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"512MiB"`, `"2 GB"`, `"100k"` or `"4096"`.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; expected e.g. \"512MiB\" or \"2GB\""))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            other => {
                return Err(format!(
                    "`{other}` is not a size unit; use B, kB, KiB, MB, MiB, GB or GiB"
                ))
            }
        };
        Ok(ByteSize((n * mult as f64) as u64))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// All configured sources.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// Serial ports, one reading a line.
    pub serial: Vec<SerialSourceConfig>,
    /// MQTT broker connections (`source/mqtt.rs`).
    pub mqtt: Vec<crate::source::mqtt::MqttSourceConfig>,
    /// Modbus RTU buses, each polling its devices' register maps (`source/modbus.rs`).
    pub modbus: Vec<crate::source::modbus::ModbusSourceConfig>,
}

/// How lines on a serial port are framed.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// `temp=21.5 hum=40`
    Kv,
    /// `{"temp":21.5,"hum":40}`
    Json,
    /// InfluxDB line protocol: `env,sensor=s01 temp=21.5,hum=40 1764053000123`
    /// (timestamps in `timestamp_unit`; the measurement comes from the line).
    Lp,
    /// Comma-separated values in the columns of `csv_header`.
    Csv,
    /// COBS-delimited postcard frames with a CRC-16/CCITT-FALSE (README,
    /// "Binary framing").
    Binary,
}

/// Parity bit of a serial line.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// Flow control of a serial line.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None.
    #[default]
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// The unit of a timestamp carried in a reading.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    /// Seconds.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl TimeUnit {
    /// Nanoseconds in one unit.
    pub fn nanos(self) -> i64 {
        match self {
            TimeUnit::S => 1_000_000_000,
            TimeUnit::Ms => 1_000_000,
            TimeUnit::Us => 1_000,
            TimeUnit::Ns => 1,
        }
    }
}

/// One serial port.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SerialSourceConfig {
    /// A name for logs and counters; defaults to the port's file name.
    #[serde(default)]
    pub name: Option<String>,
    /// Device path; prefer stable `/dev/serial/by-id/...` names.
    pub port: PathBuf,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// How readings are written on the line.
    #[serde(default = "default_framing")]
    pub framing: Framing,
    /// Measurement name of the points.
    #[serde(default = "default_measurement")]
    pub measurement: String,
    /// Tags added to every point of this source.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Keys in a reading that are tags rather than numeric fields.
    #[serde(default = "default_tag_keys")]
    pub tag_keys: Vec<String>,
    /// Key in a reading that carries its timestamp; readings without it are
    /// stamped on arrival.
    #[serde(default = "default_ts_key")]
    pub timestamp_key: Option<String>,
    /// Unit of that timestamp.
    #[serde(default = "default_ts_unit")]
    pub timestamp_unit: TimeUnit,
    /// Longest line accepted, in bytes; longer lines are rejected.
    #[serde(default = "default_max_line")]
    pub max_line: usize,
    /// Keys every reading must carry (e.g. its sensor id and timestamp). A
    /// line without them is rejected: this also catches the tail of a line
    /// cut in half when a port is opened mid-stream, which would otherwise
    /// parse as a reading of a series that does not exist.
    #[serde(default)]
    pub required_keys: Vec<String>,
    /// Column names of the `csv` framing, in order (e.g. `["sensor", "ts",
    /// "temp"]`); each is a tag (`tag_keys`), the timestamp
    /// (`timestamp_key`) or a numeric field. Required for `csv`.
    #[serde(default)]
    pub csv_header: Vec<String>,
    /// Data bits: 5, 6, 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity: `none`, `even` or `odd`.
    #[serde(default)]
    pub parity: Parity,
    /// Stop bits: 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Flow control: `none`, `software` (XON/XOFF) or `hardware` (RTS/CTS).
    #[serde(default)]
    pub flow_control: FlowControl,
    /// Tag `site` on every point of this source, if set.
    #[serde(default)]
    pub site: Option<String>,
    /// Tag `device` on every point of this source, if set.
    #[serde(default)]
    pub device: Option<String>,
    /// Tag `port` (the port path's file name, e.g. `ttyUSB0` or the by-id
    /// name) on every point of this source.
    #[serde(default = "default_true")]
    pub port_tag: bool,
    /// Most fields (points) one reading may carry (`too_many_fields`).
    #[serde(default = "default_max_fields")]
    pub max_fields: usize,
    /// Deepest JSON nesting accepted (`too_deep`).
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// Most distinct series this source may create (since the agent
    /// started); points of a new series beyond it are rejected
    /// (`too_many_series`).
    #[serde(default = "crate::config::default_max_series")]
    pub max_series: usize,
    /// Points stamped further ahead of the gateway's clock are rejected
    /// (`from_the_future`).
    #[serde(
        default = "crate::config::default_max_future_skew",
        with = "humantime_serde"
    )]
    pub max_future_skew: Option<Duration>,
    /// Points older than this are rejected (`too_old`); none if unset.
    #[serde(default, with = "humantime_serde")]
    pub max_past_age: Option<Duration>,
}

impl Default for SerialSourceConfig {
    fn default() -> Self {
        SerialSourceConfig {
            name: None,
            port: PathBuf::from("/dev/null"),
            baud: default_baud(),
            framing: default_framing(),
            measurement: default_measurement(),
            tags: BTreeMap::new(),
            tag_keys: default_tag_keys(),
            timestamp_key: default_ts_key(),
            timestamp_unit: default_ts_unit(),
            max_line: default_max_line(),
            required_keys: vec![],
            csv_header: vec![],
            data_bits: default_data_bits(),
            parity: Parity::None,
            stop_bits: default_stop_bits(),
            flow_control: FlowControl::None,
            site: None,
            device: None,
            port_tag: true,
            max_fields: default_max_fields(),
            max_json_depth: default_max_json_depth(),
            max_series: default_max_series(),
            max_future_skew: default_max_future_skew(),
            max_past_age: None,
        }
    }
}

fn default_max_fields() -> usize {
    1000
}
fn default_max_json_depth() -> usize {
    16
}
/// Default `max_series` of a source.
pub(crate) fn default_max_series() -> usize {
    10_000
}
/// Default `max_future_skew` of a source.
pub(crate) fn default_max_future_skew() -> Option<Duration> {
    Some(Duration::from_secs(300))
}

impl SerialSourceConfig {
    /// This source's limits on series and timestamps.
    pub fn guard(&self) -> crate::source::guard::Guard {
        crate::source::guard::Guard::new(self.max_series, self.max_future_skew, self.max_past_age)
    }
}

fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

fn default_baud() -> u32 {
    115_200
}
fn default_framing() -> Framing {
    Framing::Kv
}
fn default_measurement() -> String {
    "sensor".into()
}
fn default_tag_keys() -> Vec<String> {
    vec!["sensor".into()]
}
fn default_ts_key() -> Option<String> {
    Some("ts".into())
}
fn default_ts_unit() -> TimeUnit {
    TimeUnit::Ms
}
fn default_max_line() -> usize {
    4096
}

impl SerialSourceConfig {
    /// Tags this source adds to every point: `tags`, then `site`, `device`
    /// and `port` (these win over a `tags` entry of the same key).
    pub fn source_tags(&self) -> Vec<(String, String)> {
        let mut t = self.tags.clone();
        if let Some(s) = &self.site {
            t.insert("site".into(), s.clone());
        }
        if let Some(d) = &self.device {
            t.insert("device".into(), d.clone());
        }
        if self.port_tag {
            if let Some(f) = self.port.file_name() {
                t.insert("port".into(), f.to_string_lossy().into_owned());
            }
        }
        t.into_iter().collect()
    }

    /// The name used in logs and counters.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.port
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.port.display().to_string())
        })
    }
}

/// All configured sinks. Every sink's name is unique across all kinds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// InfluxDB line-protocol endpoints, v1 `/write` or v2 `/api/v2/write`
    /// (also VictoriaMetrics, QuestDB and Telegraf).
    pub influx: Vec<InfluxSinkConfig>,
    /// Prometheus remote write 1.0 endpoints (Prometheus, VictoriaMetrics,
    /// Mimir, Cortex, Thanos).
    pub remote_write: Vec<RemoteWriteSinkConfig>,
    /// MQTT brokers to publish batches to (QoS 1; sent once PUBACKed).
    pub mqtt: Vec<MqttSinkConfig>,
    /// Kafka topics to produce to (`acks = all`; sent once every partition acknowledged).
    pub kafka: Vec<KafkaSinkConfig>,
}

/// Which InfluxDB HTTP write API a sink speaks.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// `/write?db=&rp=`, basic authentication (InfluxDB 1.x).
    #[default]
    V1,
    /// `/api/v2/write?org=&bucket=`, `Authorization: Token` (InfluxDB 2.x, 3.x).
    V2,
}

sink_config! {
    /// An InfluxDB line-protocol HTTP endpoint.
    pub struct InfluxSinkConfig {
        /// Base URL, e.g. `http://127.0.0.1:8086`.
        pub url: String,
        /// The write API: `v1` or `v2`.
        #[serde(default)]
        pub api: InfluxApi,
        /// Database to write to (v1; required there).
        #[serde(default)]
        pub db: String,
        /// Retention policy, if not the default (v1).
        #[serde(default)]
        pub rp: Option<String>,
        /// Organisation (v2; required there).
        #[serde(default)]
        pub org: Option<String>,
        /// Bucket (v2; required there).
        #[serde(default)]
        pub bucket: Option<String>,
        /// API token, sent as `Authorization: Token <token>` (v2).
        #[serde(default)]
        pub token: Option<String>,
        /// User name for basic authentication (v1).
        #[serde(default)]
        pub username: Option<String>,
        /// Password for basic authentication (v1).
        #[serde(default)]
        pub password: Option<String>,
        /// Compress request bodies (`Content-Encoding: gzip`).
        #[serde(default = "default_true")]
        pub gzip: bool,
        /// PEM file of extra CA certificates to trust (for a private CA).
        #[serde(default)]
        pub ca_file: Option<PathBuf>,
    }
}

sink_config! {
    /// A Prometheus remote write 1.0 endpoint.
    pub struct RemoteWriteSinkConfig {
        /// The full endpoint URL, e.g. `http://127.0.0.1:9090/api/v1/write`.
        pub url: String,
        /// User name for basic authentication.
        #[serde(default)]
        pub username: Option<String>,
        /// Password for basic authentication.
        #[serde(default)]
        pub password: Option<String>,
        /// Sent as `Authorization: Bearer <token>` (instead of basic authentication).
        #[serde(default)]
        pub bearer_token: Option<String>,
        /// PEM file of extra CA certificates to trust (for a private CA).
        #[serde(default)]
        pub ca_file: Option<PathBuf>,
    }
}

/// How an MQTT uplink writes a batch into its message.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UplinkFormat {
    /// InfluxDB line protocol, one line per point.
    #[default]
    Lp,
    /// `[{"measurement":..,"tags":{..},"field":..,"ts":ns,"value":..}, ...]`.
    Json,
}

sink_config! {
    /// An MQTT broker to publish batches to: one QoS 1 message per batch,
    /// sent once the broker acknowledged it (PUBACK).
    pub struct MqttSinkConfig {
        /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
        pub url: String,
        /// Topic of every message; `{device}` is replaced by `agent.device`.
        pub topic: String,
        /// `lp` (line protocol) or `json`.
        #[serde(default)]
        pub format: UplinkFormat,
        /// Client id; default `tidegate-<device>-<name>`.
        #[serde(default)]
        pub client_id: Option<String>,
        /// User name, if the broker asks for one.
        #[serde(default)]
        pub username: Option<String>,
        /// Password for `username` (may be `credential:NAME`).
        #[serde(default)]
        pub password: Option<String>,
        /// PEM CA(s) of the broker's certificate (`mqtts://`); system roots if unset.
        #[serde(default)]
        pub ca_file: Option<PathBuf>,
        /// PEM client certificate, for brokers that require one.
        #[serde(default)]
        pub client_cert: Option<PathBuf>,
        /// PEM key of `client_cert`.
        #[serde(default)]
        pub client_key: Option<PathBuf>,
        /// MQTT keep-alive.
        #[serde(default = "default_keep_alive", with = "humantime_serde")]
        pub keep_alive: Duration,
    }
}

/// What a Kafka sink keys its messages by (the key picks the partition).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KafkaKey {
    /// The series key (`measurement,tags field`): one series stays in one
    /// partition, in order.
    #[default]
    Series,
    /// `agent.device`: all of a gateway's points in one partition.
    Device,
}

/// How a Kafka sink compresses its record batches.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KafkaCompression {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
    /// LZ4 (frame format).
    Lz4,
    /// Snappy (xerial framing, as Kafka writes it).
    Snappy,
    /// Zstandard: the fewest bytes on the wire.
    #[default]
    Zstd,
}

/// SASL mechanism of a Kafka sink.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `PLAIN` (use it with TLS only: the password travels as is).
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

sink_config! {
    /// A Kafka topic to produce to: each point (or each group of up to
    /// `points_per_message` points of one key) is one record, sent with
    /// `acks = all`; a batch counts as sent once every partition it touched
    /// acknowledged it.
    pub struct KafkaSinkConfig {
        /// Bootstrap brokers, `host:port` each, e.g. `["kafka1:9092", "kafka2:9092"]`.
        pub brokers: Vec<String>,
        /// Topic to produce to (it must exist; `{device}` is replaced by `agent.device`).
        pub topic: String,
        /// `lp` (line protocol, one line per point) or `json` (an array of rows).
        #[serde(default)]
        pub format: UplinkFormat,
        /// Points per record (all of one key, in time order); 1 = one point per message.
        #[serde(default = "default_points_per_message")]
        pub points_per_message: usize,
        /// `series` (order per series, spread over partitions) or `device`.
        #[serde(default)]
        pub key: KafkaKey,
        /// `zstd`, `lz4`, `gzip`, `snappy` or `none`.
        #[serde(default)]
        pub compression: KafkaCompression,
        /// Largest produce request per partition (uncompressed record bytes), like
        /// the broker's `message.max.bytes`; larger ones are split, and so are records.
        #[serde(default = "default_max_message_bytes")]
        pub max_message_bytes: ByteSize,
        /// Keep each series in order across retries: one request in flight (overrides `max_in_flight`).
        #[serde(default = "default_true")]
        pub ordered: bool,
        /// Disable Nagle's algorithm on the broker connections (saves ~40 ms per request).
        #[serde(default = "default_true")]
        pub nodelay: bool,
        /// Connect with TLS (the system's roots, or `ca_file`).
        #[serde(default)]
        pub tls: bool,
        /// PEM CA(s) of the brokers' certificates; implies `tls`.
        #[serde(default)]
        pub ca_file: Option<PathBuf>,
        /// PEM client certificate (mutual TLS).
        #[serde(default)]
        pub client_cert: Option<PathBuf>,
        /// PEM key of `client_cert`.
        #[serde(default)]
        pub client_key: Option<PathBuf>,
        /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; needs `username` and `password`.
        #[serde(default)]
        pub sasl_mechanism: Option<SaslMechanism>,
        /// SASL user name.
        #[serde(default)]
        pub username: Option<String>,
        /// SASL password (may be `credential:NAME`).
        #[serde(default)]
        pub password: Option<String>,
        /// Client id the brokers see; default `tidegate-<device>-<name>`.
        #[serde(default)]
        pub client_id: Option<String>,
    }
}

impl KafkaSinkConfig {
    /// The engine's settings: as [`KafkaSinkConfig::delivery`], with one
    /// request in flight when `ordered` (so a retried batch cannot fall behind
    /// the next one within a partition).
    pub fn engine(&self) -> DeliveryConfig {
        let mut d = self.delivery();
        if self.ordered {
            d.max_in_flight = 1;
        }
        d
    }

    /// Checks what the sink's own fields need; `Err((key, message))`.
    fn validate(&self, key: &str) -> Result<(), (String, String)> {
        let err = |field: &str, msg: &str| Err((format!("{key}.{field}"), msg.to_string()));
        if self.brokers.is_empty() {
            return err(
                "brokers",
                "needs at least one broker, e.g. [\"kafka1:9092\"]",
            );
        }
        for (i, b) in self.brokers.iter().enumerate() {
            let ok = b
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok || b.contains("://") {
                return Err((
                    format!("{key}.brokers[{i}]"),
                    format!("`{b}` is not host:port, e.g. \"kafka1:9092\" (no scheme; set tls = true for TLS)"),
                ));
            }
        }
        let topic = self.topic.replace("{device}", "d");
        if topic.is_empty()
            || topic.len() > 249
            || !topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return err(
                "topic",
                "must be a Kafka topic name: letters, digits, `.`, `_`, `-` (and `{device}`), at most 249",
            );
        }
        if self.points_per_message == 0 {
            return err("points_per_message", "must be at least 1");
        }
        if self.max_message_bytes.0 < 1024 {
            return err(
                "max_message_bytes",
                "must be at least 1 KiB, e.g. \"1MiB\" (Kafka's default)",
            );
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return err("client_cert", "client_cert and client_key go together");
        }
        match (self.sasl_mechanism, &self.username, &self.password) {
            (Some(_), Some(_), Some(_)) | (None, None, None) => Ok(()),
            (Some(_), _, _) => err("username", "SASL needs username and password"),
            (None, _, _) => err(
                "sasl_mechanism",
                "username/password need a SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
            ),
        }
    }
}

fn default_points_per_message() -> usize {
    1
}

fn default_max_message_bytes() -> ByteSize {
    ByteSize(1 << 20)
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

fn default_true() -> bool {
    true
}

/// Operator interfaces.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Unix socket for `tidegate status`; defaults to `$RUNTIME_DIRECTORY/tidegate.sock`
    /// under systemd, else `<state_dir>/tidegate.sock`.
    pub control_socket: Option<PathBuf>,
}

/// A configuration that could not be loaded; the message names the key and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or did not match the schema.
    #[error("{path}: {message}")]
    Load {
        /// The file that was read.
        path: String,
        /// What went wrong, naming the key.
        message: String,
    },
    /// A value has the right type but is not usable.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key, e.g. `sinks.influx[0].url`.
        key: String,
        /// What is expected instead.
        message: String,
    },
}

impl Config {
    /// Loads `path`, then applies `TIDEGATE_*` environment overrides, then validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Load {
            path: path.display().to_string(),
            message: format!("cannot read the file ({e}); pass an existing TOML file"),
        })?;
        Self::from_toml_with_env(&text, &path.display().to_string())
    }

    /// Parses TOML text (named `origin` in errors) with environment overrides.
    pub fn from_toml_with_env(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg = Self::parse(text, origin, Some(env_overrides()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text as it stands: no environment overrides, not
    /// validated (the benches' and the demo's generated settings). Through
    /// the `config` crate like [`Config::load`], not `toml::from_str`: a
    /// second deserializer for the whole `Config` tree was ~0.3 MiB of the
    /// gateway binary.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::parse(text, origin, None)
    }

    fn parse(
        text: &str,
        origin: &str,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml));
        if let Some(env) = env {
            builder = builder.add_source(
                config::Environment::with_prefix("TIDEGATE")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(env)),
            );
        }
        let built = builder.build().map_err(|e| ConfigError::Load {
            path: origin.to_string(),
            message: explain(&e.to_string()),
        })?;
        built.try_deserialize().map_err(|e| ConfigError::Load {
            path: origin.to_string(),
            message: explain(&e.to_string()),
        })
    }

    /// Checks what the types cannot: names unique, URLs usable, sizes non-zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        if self.store.flush_interval.is_zero() {
            return invalid(
                "store.flush_interval".into(),
                "must be longer than zero, e.g. \"1s\"".into(),
            );
        }
        for (i, w) in self.store.rollups.iter().enumerate() {
            if w.as_secs() == 0 || w.subsec_nanos() != 0 {
                return invalid(
                    format!("store.rollups[{i}]"),
                    "must be a whole number of seconds, e.g. \"1m\" or \"1h\"".into(),
                );
            }
        }
        for (i, s) in self.sources.serial.iter().enumerate() {
            if s.baud == 0 {
                return invalid(
                    format!("sources.serial[{i}].baud"),
                    "must be a baud rate such as 9600 or 115200".into(),
                );
            }
            if s.measurement.is_empty() {
                return invalid(
                    format!("sources.serial[{i}].measurement"),
                    "must not be empty".into(),
                );
            }
            if !(5..=8).contains(&s.data_bits) {
                return invalid(
                    format!("sources.serial[{i}].data_bits"),
                    "must be 5, 6, 7 or 8".into(),
                );
            }
            if !(1..=2).contains(&s.stop_bits) {
                return invalid(
                    format!("sources.serial[{i}].stop_bits"),
                    "must be 1 or 2".into(),
                );
            }
            if s.framing == Framing::Csv && s.csv_header.is_empty() {
                return invalid(
                    format!("sources.serial[{i}].csv_header"),
                    "the csv framing needs the column names, e.g. [\"sensor\", \"ts\", \"temp\"]"
                        .into(),
                );
            }
        }
        for (i, s) in self.sources.modbus.iter().enumerate() {
            s.validate(&format!("sources.modbus[{i}]"))
                .or_else(|(key, message)| invalid(key, message))?;
        }
        let mut mqtt_names = std::collections::HashSet::new();
        for (i, s) in self.sources.mqtt.iter().enumerate() {
            if !mqtt_names.insert(s.name.as_str()) {
                return invalid(
                    format!("sources.mqtt[{i}].name"),
                    format!(
                        "`{}` is used twice; it names the source's counters and its MQTT session",
                        s.name
                    ),
                );
            }
            s.validate(&format!("sources.mqtt[{i}]"))
                .or_else(|(key, message)| invalid(key, message))?;
        }
        let mut names = std::collections::HashSet::new();
        let tiers = self.store.rollup_widths();
        // What every sink shares: a unique name, an http(s) URL, delivery settings.
        let mut sink = |key: &str, d: DeliveryConfig, url: &str, example: &str| {
            if !names.insert(d.name.clone()) {
                return invalid(
                    format!("{key}.name"),
                    format!("`{}` is used twice; every sink needs its own name because its cursor is stored under it", d.name),
                );
            }
            if example.starts_with("kafka") {
                // Checked by the sink's own validation.
            } else if example.starts_with("mqtt") {
                if let Err(message) = crate::mqtt::parse_url(url) {
                    return invalid(format!("{key}.url"), message);
                }
            } else {
                check_url(&format!("{key}.url"), url, example)?;
            }
            d.validate(key, &tiers)
                .or_else(|(key, message)| invalid(key, message))
        };
        for (i, s) in self.sinks.influx.iter().enumerate() {
            let key = format!("sinks.influx[{i}]");
            sink(&key, s.delivery(), &s.url, "http://127.0.0.1:8086")?;
            // What each API needs, and what it would silently ignore:
            // (setting, whether it is missing / set).
            type Checks<'a> = &'a [(&'a str, bool)];
            let (api, required, foreign): (&str, Checks, Checks) = match s.api {
                InfluxApi::V1 => (
                    "v1",
                    &[("db", s.db.is_empty())],
                    &[
                        ("org", s.org.is_some()),
                        ("bucket", s.bucket.is_some()),
                        ("token", s.token.is_some()),
                    ],
                ),
                InfluxApi::V2 => (
                    "v2",
                    &[("org", s.org.is_none()), ("bucket", s.bucket.is_none())],
                    &[
                        ("db", !s.db.is_empty()),
                        ("rp", s.rp.is_some()),
                        ("username", s.username.is_some()),
                        ("password", s.password.is_some()),
                    ],
                ),
            };
            if let Some((field, _)) = required.iter().find(|(_, missing)| *missing) {
                return invalid(
                    format!("{key}.{field}"),
                    format!("is required with api = \"{api}\""),
                );
            }
            if let Some((field, _)) = foreign.iter().find(|(_, set)| *set) {
                return invalid(
                    format!("{key}.{field}"),
                    format!("is not used with api = \"{api}\"; remove it or set the api (v1: db, rp, username, password; v2: org, bucket, token)"),
                );
            }
        }
        for (i, s) in self.sinks.mqtt.iter().enumerate() {
            let key = format!("sinks.mqtt[{i}]");
            sink(&key, s.delivery(), &s.url, "mqtt://127.0.0.1:1883")?;
            if s.topic.is_empty() || s.topic.contains(['+', '#']) {
                return invalid(
                    format!("{key}.topic"),
                    "must be a topic to publish to, without wildcards, e.g. \"tidegate/{device}/points\"".into(),
                );
            }
        }
        for (i, s) in self.sinks.kafka.iter().enumerate() {
            let key = format!("sinks.kafka[{i}]");
            // Brokers are host:port, not URLs: the shared check is of name and delivery only.
            sink(&key, s.delivery(), "kafka://", "kafka://")?;
            s.validate(&key)
                .or_else(|(key, message)| invalid(key, message))?;
        }
        for (i, s) in self.sinks.remote_write.iter().enumerate() {
            let key = format!("sinks.remote_write[{i}]");
            sink(
                &key,
                s.delivery(),
                &s.url,
                "http://127.0.0.1:9090/api/v1/write",
            )?;
            if s.order == Order::LiveFirst {
                return invalid(
                    format!("{key}.order"),
                    "remote write needs samples in time order per series (Prometheus refuses older ones); use \"oldest_first\"".into(),
                );
            }
            if s.bearer_token.is_some() && s.username.is_some() {
                return invalid(
                    format!("{key}.bearer_token"),
                    "set either bearer_token or username/password, not both".into(),
                );
            }
        }
        if let Some(url) = &self.fleet.url {
            if let Err(message) = crate::mqtt::parse_url(url) {
                return invalid("fleet.url".into(), message);
            }
            if self.fleet.fleet.is_empty() || self.fleet.fleet.contains(['/', '+', '#']) {
                return invalid(
                    "fleet.fleet".into(),
                    "must name the fleet, without `/`, `+` or `#`, e.g. \"plant-a\"".into(),
                );
            }
            if self.fleet.trusted_keys.is_empty() {
                return invalid(
                    "fleet.trusted_keys".into(),
                    "needs at least one public key (tidegate fleet keygen prints one)".into(),
                );
            }
            if self.agent.device.contains(['/', '+', '#']) || self.agent.device == "all" {
                return invalid(
                    "agent.device".into(),
                    "a fleet device name must not contain `/`, `+`, `#` nor be `all`".into(),
                );
            }
        }
        for (i, k) in self.fleet.trusted_keys.iter().enumerate() {
            if let Err(e) = crate::fleet::envelope::PublicKey::parse(k) {
                return invalid(format!("fleet.trusted_keys[{i}]"), e);
            }
        }
        Ok(())
    }

    /// Where the store file lives.
    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.agent.state_dir.join("store.db"))
    }

    /// Where the control socket lives.
    pub fn control_socket(&self) -> PathBuf {
        if let Some(p) = &self.ops.control_socket {
            return p.clone();
        }
        match std::env::var_os("RUNTIME_DIRECTORY") {
            Some(dir) => PathBuf::from(dir).join("tidegate.sock"),
            None => self.agent.state_dir.join("tidegate.sock"),
        }
    }

    /// The effective configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }
}

/// The `TIDEGATE_<SECTION>__<KEY>` variables. Every setting lives in a section,
/// so a variable without `__` (say `TIDEGATE_CRASH_LOOPS` for a test harness)
/// is not meant for us and is left alone.
fn env_overrides() -> std::collections::HashMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            k.strip_prefix("TIDEGATE_")
                .is_some_and(|rest| rest.contains("__"))
        })
        .collect()
}

/// Adds what to do to the `config` crate's terse messages.
fn explain(msg: &str) -> String {
    if msg.contains("unknown field") {
        format!(
            "{msg}; remove or correct the key (see agent/tidegate.example.toml for every setting)"
        )
    } else if msg.contains("missing field") {
        format!("{msg}; add the key (see agent/tidegate.example.toml)")
    } else {
        msg.to_string()
    }
}

/// An http(s) URL, or an error naming the key and an example.
fn check_url(key: &str, url: &str, example: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        _ => Err(ConfigError::Invalid {
            key: key.to_string(),
            message: format!("`{url}` is not an http(s) URL; expected e.g. \"{example}\""),
        }),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gateway".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_accepted() {
        let text = include_str!("../tidegate.example.toml");
        let cfg = Config::from_toml_with_env(text, "example").expect("example must load");
        assert_eq!(cfg.sources.serial.len(), 1);
        assert_eq!(cfg.sources.mqtt.len(), 1);
        assert_eq!(cfg.sources.modbus.len(), 1);
        assert_eq!(cfg.sinks.influx.len(), 1);
        assert_eq!(cfg.sinks.influx[0].api, InfluxApi::V1);
        assert!(cfg.sinks.influx[0].gzip, "gzip by default");
    }

    #[test]
    fn from_toml_reads_as_toml_does() {
        // The benches' and the demo's generated settings: same Config
        // through the `config` crate as through `toml::from_str`.
        for text in [
            "[[sinks.influx]]\nname = \"demo\"\nurl = \"http://h:8086\"\ndb = \"tidegate\"\nbackoff_max = \"5s\"\n",
            "[[sinks.influx]]\nname = \"bench-lp\"\nurl = \"http://h\"\ndb = \"bench\"\nbatch_max_points = 5000\nmax_in_flight = 4\n",
            "[[sinks.remote_write]]\nname = \"bench-rw\"\nurl = \"http://h/api/v1/write\"\nbatch_max_points = 5000\nmax_in_flight = 4\n",
            "[[sinks.kafka]]\nname = \"bench-kafka-lz4\"\nbrokers = [\"h:9092\"]\ntopic = \"t-1\"\ncompression = \"lz4\"\nnodelay = true\nbatch_max_points = 5000\nmax_in_flight = 4\n",
        ] {
            let via_config = Config::from_toml(text, "t").unwrap();
            let via_toml: Config = toml::from_str(text).unwrap();
            assert_eq!(via_config, via_toml, "{text}");
        }
        let err = Config::from_toml("[[sinks.influx]]\nname = 1\n", "t").unwrap_err();
        assert!(err.to_string().starts_with("t: "), "{err}");
    }

    #[test]
    fn influx_v2_needs_org_and_bucket() {
        let base = "[[sinks.influx]]\nname = \"a\"\nurl = \"http://h:8086\"\napi = \"v2\"\n";
        let err = Config::from_toml_with_env(&format!("{base}org = \"o\"\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.influx[0].bucket"), "{err}");
        let cfg = Config::from_toml_with_env(
            &format!("{base}org = \"o\"\nbucket = \"b\"\ntoken = \"t\"\ngzip = false\n"),
            "t",
        )
        .unwrap();
        assert_eq!(cfg.sinks.influx[0].api, InfluxApi::V2);
        assert!(!cfg.sinks.influx[0].gzip);
        let err =
            Config::from_toml_with_env("[[sinks.influx]]\nname = \"a\"\nurl = \"http://h\"\n", "t")
                .unwrap_err()
                .to_string();
        assert!(err.contains("sinks.influx[0].db"), "{err}");
        let err = Config::from_toml_with_env(
            &format!("{base}org = \"o\"\nbucket = \"b\"\nusername = \"u\"\n"),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("sinks.influx[0].username") && err.contains("not used"),
            "{err}"
        );
    }

    #[test]
    fn sink_names_are_unique_across_kinds() {
        let text = "[[sinks.influx]]\nname = \"up\"\nurl = \"http://h:8086\"\ndb = \"d\"\n\
                    [[sinks.remote_write]]\nname = \"up\"\nurl = \"http://h:9090/api/v1/write\"\n";
        let err = Config::from_toml_with_env(text, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.remote_write[0].name"), "{err}");
        let cfg = Config::from_toml_with_env(&text.replacen("\"up\"", "\"lp\"", 1), "t").unwrap();
        let rw = &cfg.sinks.remote_write[0];
        assert_eq!(
            (rw.batch_max_points, rw.timeout),
            (5000, Duration::from_secs(10))
        );
    }

    #[test]
    fn misspelt_key_is_named() {
        let err = Config::from_toml_with_env("[store]\nflush_intervall = \"1s\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("flush_intervall"), "{err}");
        assert!(err.contains("t.toml"), "{err}");
    }

    #[test]
    fn bad_url_is_named_with_index() {
        let text = "[[sinks.influx]]\nname = \"a\"\nurl = \"nope\"\ndb = \"x\"\n";
        let err = Config::from_toml_with_env(text, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.influx[0].url"), "{err}");
    }

    #[test]
    fn durations_read_as_humantime() {
        let cfg = Config::from_toml_with_env("[store]\nflush_interval = \"250ms\"\n", "t").unwrap();
        assert_eq!(cfg.store.flush_interval, Duration::from_millis(250));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("512MiB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("2 GB").unwrap().0, 2_000_000_000);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert!(ByteSize::parse("12 parsecs").is_err());
        let cfg = Config::from_toml_with_env("[store]\nmax_disk_bytes = \"64MiB\"\n", "t").unwrap();
        assert_eq!(cfg.store.max_disk_bytes.0, 64 << 20);
    }

    #[test]
    fn tag_keys_keep_their_case() {
        let text = "[[sources.serial]]\nport = \"/dev/x\"\ntags = { Site = \"Lab\" }\n";
        let cfg = Config::from_toml_with_env(text, "t").unwrap();
        assert_eq!(
            cfg.sources.serial[0].tags.get("Site").map(|s| s.as_str()),
            Some("Lab")
        );
    }

    #[test]
    fn serial_line_settings_and_framings_are_checked() {
        let base = "[[sources.serial]]\nport = \"/dev/serial/by-id/usb-A\"\n";
        let cfg = Config::from_toml_with_env(
            &format!(
                "{base}framing = \"binary\"\ndata_bits = 7\nparity = \"even\"\nstop_bits = 2\nflow_control = \"hardware\"\nsite = \"n\"\ndevice = \"d\"\nmax_past_age = \"30d\"\n"
            ),
            "t",
        )
        .unwrap();
        let s = &cfg.sources.serial[0];
        assert_eq!(
            (
                s.framing,
                s.data_bits,
                s.parity,
                s.stop_bits,
                s.flow_control
            ),
            (Framing::Binary, 7, Parity::Even, 2, FlowControl::Hardware)
        );
        assert_eq!(s.max_future_skew, Some(Duration::from_secs(300)));
        assert_eq!(s.max_past_age, Some(Duration::from_secs(30 * 86_400)));
        let tags = s.source_tags();
        assert_eq!(
            tags,
            [("device", "d"), ("port", "usb-A"), ("site", "n")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        for (extra, key) in [
            ("data_bits = 9\n", "data_bits"),
            ("stop_bits = 3\n", "stop_bits"),
            ("framing = \"csv\"\n", "csv_header"),
        ] {
            let err = Config::from_toml_with_env(&format!("{base}{extra}"), "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("sources.serial[0].{key}")), "{err}");
        }
    }

    #[test]
    fn kafka_sinks_check_brokers_topic_and_sasl() {
        let base =
            "[[sinks.kafka]]\nname = \"k\"\nbrokers = [\"k1:9092\"]\ntopic = \"tg.{device}\"\n";
        let cfg = Config::from_toml_with_env(base, "t").unwrap();
        let k = &cfg.sinks.kafka[0];
        assert_eq!(k.compression, KafkaCompression::Zstd);
        assert_eq!(k.key, KafkaKey::Series);
        assert_eq!(k.engine().max_in_flight, 1, "ordered by default");
        for (toml, key) in [
            (
                "[[sinks.kafka]]\nname = \"k\"\nbrokers = [\"kafka://k1:9092\"]\ntopic = \"t\"\n",
                "brokers[0]",
            ),
            (
                "[[sinks.kafka]]\nname = \"k\"\nbrokers = []\ntopic = \"t\"\n",
                "brokers",
            ),
            (
                "[[sinks.kafka]]\nname = \"k\"\nbrokers = [\"k1:9092\"]\ntopic = \"a/b\"\n",
                "topic",
            ),
            (
                &format!("{base}username = \"u\"\npassword = \"p\"\n"),
                "sasl_mechanism",
            ),
            (&format!("{base}sasl_mechanism = \"PLAIN\"\n"), "username"),
            (
                &format!("{base}points_per_message = 0\n"),
                "points_per_message",
            ),
        ] {
            let err = Config::from_toml_with_env(toml, "t")
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("sinks.kafka[0].{key}")), "{err}");
        }
        let cfg = Config::from_toml_with_env(
            &format!("{base}sasl_mechanism = \"SCRAM-SHA-512\"\nusername = \"u\"\npassword = \"p\"\nordered = false\n"),
            "t",
        )
        .unwrap();
        assert_eq!(
            cfg.sinks.kafka[0].sasl_mechanism,
            Some(SaslMechanism::ScramSha512)
        );
        assert_eq!(cfg.sinks.kafka[0].engine().max_in_flight, 8);
    }
}
