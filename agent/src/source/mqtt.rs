//! An MQTT source: one task a broker connection, subscriptions whose topic
//! patterns bind tags (`sensors/+site/+device/#field`), payloads as bare
//! numbers, JSON or InfluxDB line protocol.
//!
//! Delivery: QoS 1 with a persistent session (clean_session = false, a stable
//! client id) and manual acks. A message is acknowledged only once its points
//! are durable in the store's journal ([`StoreHandle::append_durable_begin`]),
//! so a crash between receipt and flush makes the broker deliver it again
//! instead of losing it (at-least-once: a point may then be stored twice,
//! which the target databases treat as one).
//!
//! When to commit: read messages linger here up to 50 ms and go to the store
//! in one batch; their acknowledgements wait for the store's next flush tick
//! (one commit a second), unless the broker's window of unacknowledged
//! messages (`broker_inflight`, mosquitto's `max_inflight_messages`) is full,
//! or the stream pauses with messages waiting: then the store commits within
//! milliseconds. A commit writes a few pages, so committing per window rather
//! than per message is most of the difference in CPU and SD-card writes.
//!
//! Backpressure: when the store is behind, appending waits, the event loop is
//! not polled, TCP fills, and the broker keeps the messages. mosquitto's
//! default window is 20 messages, which costs a commit every 20 messages:
//! operators set `max_inflight_messages` to about a second of messages, at
//! least 1000 (and `broker_inflight` the same here; `WindowWatch` says so
//! when it is too small) and `max_queued_messages 0` (unlimited; the default 1000 drops
//! messages queued for a slow or absent subscriber) in mosquitto.conf. That
//! window also bounds the memory held here for messages not yet acknowledged:
//! the source keeps to it itself (at least [`GATHER`] messages), as a broker
//! may send more (mosquitto 2.0.11 sent 4,545 against 1000 when a backlog
//! drained); while it is full the event loop only writes acknowledgements.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::guard::Guard;
use super::lp::LpParser;
use super::parse::{number, Reject};
use super::sparkplug::Sparkplug;
use super::topic::TopicPattern;
use crate::config::TimeUnit;
use crate::mqtt::parse_url;
use crate::ops::metrics::SourceStats;
use crate::ops::RateLimit;
use crate::point::now_ns;
use crate::point::{Batch, DeadLetter, KeyCache, Point, SeriesKey};
use crate::store::{Commit, Durable, StoreError, StoreHandle};
use crate::sync::Backoff;

/// One broker connection (`[[sources.mqtt]]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// Names the source in logs and counters, and in the default client id.
    pub name: String,
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]` (TLS).
    pub url: String,
    /// MQTT client id; the broker keeps the persistent session under it, so it
    /// must be stable and unique. Default: `tidegate-<agent.device>-<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name, if the broker asks for one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for `username`.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM file of the CA(s) that sign the broker's certificate (`mqtts://`);
    /// default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that require one (with `client_key`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// MQTT keep-alive: the broker drops the connection after 1.5 times this
    /// without traffic; at least 1 s.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Longest wait between reconnection attempts.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Largest payload accepted, in bytes; larger ones are rejected
    /// (`too_long`). Packets over 16 MiB (or twice this, if larger) make the
    /// connection fail instead.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// Deepest JSON nesting accepted (`too_deep`).
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// Most points one message may carry (`too_many_fields`).
    #[serde(default = "default_max_fields")]
    pub max_fields: usize,
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
    /// The broker's window of unacknowledged QoS 1 messages for this client
    /// (mosquitto's `max_inflight_messages`, 20 by default): once this many
    /// wait for their acknowledgement the broker sends no more, so the store
    /// commits as soon as three quarters of it wait. Below that, messages are
    /// acknowledged after the store's next flush (`store.flush_interval`):
    /// one commit a second, not one every few milliseconds, is what spares
    /// the SD card. The source also reads no further than this many (at
    /// least 256) before acknowledging. Set it to the broker's value; too
    /// high costs throughput (commits then wait for a pause in the stream),
    /// never data.
    #[serde(default = "default_broker_inflight")]
    pub broker_inflight: usize,
    /// Tags added to every point of this source.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// What to subscribe to and how to read it; a message goes to the first
    /// subscription whose pattern matches its topic.
    pub subscriptions: Vec<MqttSubscription>,
}

/// One subscription of an MQTT source.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttSubscription {
    /// Topic pattern: an MQTT filter whose wildcards may bind names: `+name`
    /// binds one level, `#name` the remaining levels joined by `.`; the names
    /// `field` and `measurement` set the point's field and measurement, any
    /// other name a tag. `sensors/+site/+device/#field` subscribes to
    /// `sensors/+/+/#`.
    pub topic: String,
    /// Subscription QoS: 0, 1 (default; acknowledged once durable) or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Payload format: `number`, `json`, `lp` (InfluxDB line protocol) or
    /// `sparkplug` (Sparkplug B).
    #[serde(default)]
    pub format: PayloadFormat,
    /// Measurement of the points (`number`, `json`), unless the topic binds it.
    #[serde(default = "default_measurement")]
    pub measurement: String,
    /// Field name of a bare number (or of a JSON number) when the topic binds
    /// no field.
    #[serde(default = "default_field")]
    pub field: String,
    /// `json`: field name → JSON pointer (`{ temp = "/env/temp" }`). Empty:
    /// every numeric leaf (booleans as 1/0), nested keys joined as `a.b`,
    /// array elements as `a.0`. With a topic-bound field F the names become `F.name`.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// `json`: JSON pointer of the timestamp (an integer, or a string of
    /// one); without it, or when absent from the message, the arrival time.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// `json`: unit of that timestamp.
    #[serde(default = "default_ts_unit")]
    pub timestamp_unit: TimeUnit,
    /// `lp`: precision of the line protocol timestamps.
    #[serde(default = "default_precision")]
    pub precision: TimeUnit,
    /// Tags added to the points of this subscription.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// How a payload is written.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// `21.5`
    #[default]
    Number,
    /// `{"ts":1764053000123,"temp":21.5}`
    Json,
    /// `env,room=k temp=21.5,on=t 1764053000123456789`
    Lp,
    /// Sparkplug B protobuf on `spBv1.0/<group>/<type>/<node>[/<device>]`
    /// (subscribe to `spBv1.0/#`): tags `group`, `edge_node`, `device`,
    /// field = metric name (`source/sparkplug.rs`).
    Sparkplug,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_broker_inflight() -> usize {
    20
}
fn default_max_payload() -> usize {
    256 * 1024
}
fn default_max_json_depth() -> usize {
    16
}
fn default_max_fields() -> usize {
    5000
}
fn default_qos() -> u8 {
    1
}
fn default_measurement() -> String {
    "mqtt".into()
}
fn default_field() -> String {
    "value".into()
}
fn default_ts_unit() -> TimeUnit {
    TimeUnit::Ms
}
fn default_precision() -> TimeUnit {
    TimeUnit::Ns
}

impl MqttSourceConfig {
    /// Checks what serde cannot; the error names the key under `prefix`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((format!("{prefix}.{k}"), m));
        if self.name.is_empty() {
            return err("name", "must not be empty".into());
        }
        if let Err(e) = parse_url(&self.url) {
            return err("url", e);
        }
        if !self.keep_alive.is_zero() && self.keep_alive < Duration::from_secs(1) {
            return err("keep_alive", "must be 0 or at least 1s".into());
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return err(
                "client_cert",
                "client_cert and client_key go together".into(),
            );
        }
        if self.subscriptions.is_empty() {
            return err(
                "subscriptions",
                "add at least one { topic = \"sensors/+site/+device/#field\" }".into(),
            );
        }
        for (i, s) in self.subscriptions.iter().enumerate() {
            let pattern = match TopicPattern::parse(&s.topic) {
                Ok(p) => p,
                Err(e) => return err(&format!("subscriptions[{i}].topic"), e),
            };
            if s.qos > 2 {
                return err(
                    &format!("subscriptions[{i}].qos"),
                    "must be 0, 1 or 2".into(),
                );
            }
            if s.measurement.is_empty() {
                return err(
                    &format!("subscriptions[{i}].measurement"),
                    "must not be empty".into(),
                );
            }
            if s.field.is_empty() && !pattern.binds_field() {
                return err(
                    &format!("subscriptions[{i}].field"),
                    "must not be empty".into(),
                );
            }
            let pointers = s.values.values().chain(s.timestamp.as_ref());
            for p in pointers {
                if !p.is_empty() && !p.starts_with('/') {
                    return err(
                        &format!("subscriptions[{i}]"),
                        format!("`{p}` is not a JSON pointer; write it as \"/a/b\""),
                    );
                }
            }
        }
        Ok(())
    }

    fn client_id(&self, device: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("tidegate-{device}-{}", self.name))
    }
}

/// One subscription, ready to match and decode.
struct Sub {
    cfg: MqttSubscription,
    pattern: TopicPattern,
}

/// Turns messages into points: pure (no I/O, time passed in).
pub struct Decoder {
    subs: Vec<Sub>,
    /// One line protocol parser (and key cache) per subscription.
    lps: Vec<LpParser>,
    tags: BTreeMap<String, String>,
    max_payload: usize,
    max_depth: usize,
    max_fields: usize,
    keys: KeyCache,
    /// Sparkplug B births seen (aliases and datatypes).
    sparkplug: Sparkplug,
}

impl Decoder {
    /// A decoder for a validated source configuration.
    pub fn new(cfg: &MqttSourceConfig) -> Result<Decoder, String> {
        let subs = cfg
            .subscriptions
            .iter()
            .map(|s| {
                Ok(Sub {
                    pattern: TopicPattern::parse(&s.topic)?,
                    cfg: s.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Decoder {
            subs,
            lps: cfg
                .subscriptions
                .iter()
                .map(|s| LpParser::new(s.precision, cfg.max_fields))
                .collect(),
            tags: cfg.tags.clone(),
            max_payload: cfg.max_payload,
            max_depth: cfg.max_json_depth,
            max_fields: cfg.max_fields,
            keys: KeyCache::default(),
            sparkplug: Sparkplug::default(),
        })
    }

    /// The broker filters to subscribe to, with their QoS.
    pub fn filters(&self) -> Vec<(String, u8)> {
        self.subs
            .iter()
            .map(|s| (s.pattern.filter(), s.cfg.qos))
            .collect()
    }

    /// Decodes one message received at `now_ns` into `out`; on error nothing
    /// is appended.
    pub fn decode(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ns: i64,
        out: &mut Vec<Point>,
    ) -> Result<usize, Reject> {
        if payload.len() > self.max_payload {
            return Err(Reject::TooLong);
        }
        let Some((i, bound)) =
            (self.subs.iter().enumerate()).find_map(|(i, s)| s.pattern.bind(topic).map(|b| (i, b)))
        else {
            return Err(Reject::UnmatchedTopic(topic.chars().take(64).collect()));
        };
        let sub = &self.subs[i];
        if let Some((k, _)) = bound.tags.iter().find(|(_, v)| v.is_empty()) {
            return Err(Reject::EmptyTag(k.to_string()));
        }
        let mut tags: smallvec::SmallVec<[(&str, &str); 8]> =
            (self.tags.iter().chain(&sub.cfg.tags))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
        tags.extend(bound.tags.iter().map(|(k, v)| (*k, v.as_ref())));
        let topic_field = bound.field.as_deref().filter(|f| !f.is_empty());
        let measurement = bound
            .measurement
            .as_deref()
            .filter(|m| !m.is_empty())
            .unwrap_or(&sub.cfg.measurement);
        let values: Vec<(Cow<str>, f64)>;
        let mut ts_ns = now_ns;
        match sub.cfg.format {
            PayloadFormat::Lp => return self.lps[i].parse(payload, &tags, now_ns, out),
            PayloadFormat::Sparkplug => {
                // Each metric has its own time: points straight from here.
                let msg = self
                    .sparkplug
                    .decode(topic, payload, now_ns, self.max_fields)?;
                // A copy declared after `msg`, so dropped before it.
                let tags: smallvec::SmallVec<[(&str, &str); 8]> = (tags.iter().copied())
                    .chain(msg.tags.iter().map(|(k, v)| (*k, v.as_str())))
                    .collect();
                return Ok(push_points(
                    &mut self.keys,
                    (measurement, &tags),
                    msg.points,
                    out,
                ));
            }
            PayloadFormat::Number => {
                let text = std::str::from_utf8(payload).map_err(|_| Reject::NotUtf8)?;
                let name = topic_field.unwrap_or(&sub.cfg.field);
                values = vec![(Cow::Borrowed(name), number(name, text.trim())?)];
            }
            PayloadFormat::Json => {
                let text = std::str::from_utf8(payload).map_err(|_| Reject::NotUtf8)?;
                let doc: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| Reject::BadJson(e.to_string()))?;
                if too_deep(&doc, self.max_depth) {
                    return Err(Reject::TooDeep);
                }
                if let Some(ptr) = &sub.cfg.timestamp {
                    if let Some(v) = doc.pointer(ptr) {
                        ts_ns = json_timestamp(v, sub.cfg.timestamp_unit)?;
                    }
                }
                let mut found = Vec::new();
                if let serde_json::Value::Object(_) | serde_json::Value::Array(_) = doc {
                    if sub.cfg.values.is_empty() {
                        flatten(
                            &doc,
                            String::new(),
                            sub.cfg.timestamp.as_deref(),
                            "",
                            &mut found,
                            self.max_fields,
                        )?;
                    } else {
                        for (name, ptr) in &sub.cfg.values {
                            let v = doc
                                .pointer(ptr)
                                .ok_or_else(|| Reject::MissingPointer(ptr.clone()))?;
                            found.push((name.clone(), json_number(name, v)?));
                        }
                    }
                } else {
                    let name = topic_field.unwrap_or(&sub.cfg.field);
                    found.push((String::new(), json_number(name, &doc)?));
                }
                values = found
                    .into_iter()
                    .map(|(name, v)| {
                        let field = match (topic_field, name.is_empty()) {
                            (Some(f), true) => Cow::Owned(f.to_string()),
                            (None, true) => Cow::Owned(sub.cfg.field.clone()),
                            (Some(f), false) => Cow::Owned(format!("{f}.{name}")),
                            (None, false) => Cow::Owned(name),
                        };
                        (field, v)
                    })
                    .collect();
            }
        }
        if values.is_empty() {
            return Err(Reject::NoFields);
        }
        if values.len() > self.max_fields {
            return Err(Reject::TooManyFields);
        }
        Ok(push_points(
            &mut self.keys,
            (measurement, &tags),
            values.into_iter().map(|(field, v)| (field, ts_ns, v)),
            out,
        ))
    }
}

/// Appends one point per (field, ns, value) of `measurement` with `tags`
/// to `out`; returns how many.
fn push_points<F: AsRef<str>>(
    keys: &mut KeyCache,
    (measurement, tags): (&str, &[(&str, &str)]),
    points: impl IntoIterator<Item = (F, i64, f64)>,
    out: &mut Vec<Point>,
) -> usize {
    let start = out.len();
    for (field, ts_ns, value) in points {
        let field = field.as_ref();
        let raw = keys.raw();
        for part in std::iter::once(measurement)
            .chain(tags.iter().flat_map(|(k, v)| [*k, *v]))
            .chain(std::iter::once(field))
        {
            raw.extend_from_slice(part.as_bytes());
            raw.push(0xff);
        }
        let series =
            keys.get_or_insert_with(|| SeriesKey::new(measurement, tags.iter().copied(), field));
        out.push(Point {
            series,
            ts_ns,
            value,
        });
    }
    out.len() - start
}

fn json_number(name: &str, v: &serde_json::Value) -> Result<f64, Reject> {
    match v {
        serde_json::Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| Reject::NotFinite(name.chars().take(32).collect())),
        serde_json::Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        _ => Err(Reject::NotANumber(name.chars().take(32).collect())),
    }
}

fn json_timestamp(v: &serde_json::Value, unit: TimeUnit) -> Result<i64, Reject> {
    let raw = match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    raw.parse::<i64>()
        .ok()
        .and_then(|t| t.checked_mul(unit.nanos()))
        .ok_or_else(|| Reject::BadTimestamp(raw.chars().take(32).collect()))
}

/// Whether `v` nests objects and arrays more than `max` deep.
fn too_deep(v: &serde_json::Value, max: usize) -> bool {
    use serde_json::Value;
    match v {
        Value::Object(m) => max == 0 || m.values().any(|c| too_deep(c, max - 1)),
        Value::Array(a) => max == 0 || a.iter().any(|c| too_deep(c, max - 1)),
        _ => false,
    }
}

/// Every numeric (and boolean) leaf under `v`, named `a.b.0`; strings and
/// nulls are skipped, as is the leaf at pointer `skip` (the timestamp).
fn flatten(
    v: &serde_json::Value,
    name: String,
    skip: Option<&str>,
    pointer: &str,
    out: &mut Vec<(String, f64)>,
    max: usize,
) -> Result<(), Reject> {
    use serde_json::Value;
    if skip == Some(pointer) {
        return Ok(());
    }
    let child = |k: &str| {
        if name.is_empty() {
            k.to_string()
        } else {
            format!("{name}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let ptr = format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1"));
                flatten(c, child(k), skip, &ptr, out, max)?;
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                flatten(
                    c,
                    child(&i.to_string()),
                    skip,
                    &format!("{pointer}/{i}"),
                    out,
                    max,
                )?;
            }
        }
        Value::Number(_) | Value::Bool(_) => {
            if out.len() >= max {
                return Err(Reject::TooManyFields);
            }
            let x = json_number(&name, v)?;
            out.push((name, x));
        }
        Value::String(_) | Value::Null => {}
    }
    Ok(())
}

/// The rumqttc options of a source (TLS files are read here).
fn options(cfg: &MqttSourceConfig, device: &str) -> anyhow::Result<MqttOptions> {
    let what = format!("source {}", cfg.name);
    let mut o = crate::mqtt::connection!(cfg, what, cfg.client_id(device)).options()?;
    o.set_clean_session(false)
        .set_manual_acks(true)
        // Incoming packets up to this size are read (larger payloads than
        // max_payload are then counted as rejects); beyond it the connection fails.
        .set_max_packet_size((16 << 20).max(cfg.max_payload.saturating_mul(2)), 64 * 1024);
    Ok(o)
}

/// Requests queued for the event loop (acks, subscribes): acks of one group
/// commit go out together.
const REQUEST_CAPACITY: usize = 1024;

/// Messages waiting for their points to be durable before they are
/// acknowledged, in the order received.
struct Pending {
    durable: Option<Durable>,
    publishes: Vec<Unacked>,
}

/// What acknowledging a message needs, kept instead of the message until
/// its points are durable: a held payload is a slice of rumqttc's read
/// buffer and keeps all of it alive (2 MB of buffers and 2.3 MB of held
/// messages at a seal, heaptrack, 10k messages/s; ~4,900 were unacknowledged).
#[derive(Clone, Copy, Debug)]
struct Unacked {
    pkid: u16,
    qos: QoS,
    /// Its fingerprint in [`Outstanding`].
    print: u64,
}

impl Unacked {
    /// The message as [`AsyncClient::ack`] reads it: its QoS and packet id.
    fn as_publish(&self) -> Publish {
        let mut p = Publish::new("", self.qos, Vec::new());
        p.pkid = self.pkid;
        p
    }
}

/// At most this many messages are held before they go to the store as one
/// batch: one store request and one wake-up of the acknowledger for all of
/// them (at one request a message, the hand-offs, not the parsing, were most
/// of the CPU).
const GATHER: usize = 256;

/// At most this many points are held before they go to the store.
const GATHER_POINTS: usize = 8192;

/// How long read messages may wait here before they go to the store
/// together: a paced stream reaches the store in a few batches a second,
/// not one wake-up a message. Their acknowledgements wait for a commit anyway.
const LINGER: Duration = Duration::from_millis(50);

/// A pause this long in the stream while messages wait for their
/// acknowledgement asks the store to commit at once: the broker may be
/// holding back because its window is smaller than `broker_inflight` says.
const IDLE: Duration = Duration::from_millis(100);

/// Watches how often the broker's window forces a commit. Each is a journal
/// append and an `fdatasync`: at 10k messages/s and a window of 1000, ~13 a
/// second cost a sixth to a fifth of the agent's CPU and half its bytes
/// written against a window of 10000 (one commit a second; `tidegate bench
/// compare`, see the README). Once a minute it judges the last minute.
struct WindowWatch {
    since: Instant,
    commits: u32,
    messages: u64,
}

impl WindowWatch {
    /// How long it counts before judging.
    const SPAN: Duration = Duration::from_secs(60);

    /// Window commits a second above which it speaks up.
    const MANY: f64 = 2.0;

    fn new(now: Instant) -> WindowWatch {
        WindowWatch {
            since: now,
            commits: 0,
            messages: 0,
        }
    }

    /// Notes `n` messages read.
    fn read(&mut self, n: usize) {
        self.messages += n as u64;
    }

    /// Notes a window commit at `now`; at the end of a span in which they
    /// came more than [`WindowWatch::MANY`] a second, returns the span's
    /// commits and messages per second.
    fn commit(&mut self, now: Instant) -> Option<(f64, f64)> {
        self.commits += 1;
        let span = now.duration_since(self.since);
        if span < Self::SPAN {
            return None;
        }
        let secs = span.as_secs_f64();
        let rates = (self.commits as f64 / secs, self.messages as f64 / secs);
        *self = WindowWatch::new(now);
        (rates.0 > Self::MANY).then_some(rates)
    }
}

/// Messages read and decoded, not yet handed to the store.
#[derive(Default)]
struct Held {
    /// QoS 1 and 2 messages, acknowledged once their points are durable.
    publishes: Vec<Unacked>,
    /// Their points.
    acked: Batch,
    /// Points of QoS 0 messages: nothing to acknowledge.
    at_most_once: Batch,
    /// Rejected messages.
    dead: Vec<DeadLetter>,
    /// Messages held, of any QoS.
    messages: usize,
    /// When the first of them was read.
    since: Option<Instant>,
}

impl Held {
    fn is_full(&self) -> bool {
        self.messages >= GATHER
            || self.acked.points.len() + self.at_most_once.points.len() >= GATHER_POINTS
    }
}

/// Messages read and not yet acknowledged (QoS 1 and 2): how many (the
/// broker counts them against its window) and their fingerprints, topic and
/// payload hashed, and the fingerprints of the last messages acknowledged.
/// When a connection drops before the broker has an acknowledgement, it
/// sends the message again with DUP set; one that is still here, or among
/// the last acknowledged (the broker restarted before it took the
/// acknowledgement in), was stored already, so it is acknowledged without
/// storing its points twice. (After an agent restart nothing is here: a
/// message that was committed but not acknowledged is stored again, at
/// least once.)
struct Outstanding {
    hasher: ahash::RandomState,
    /// In the order read, which is the order acknowledged: a message costs a
    /// push and a pop (a hash table, inserted into and removed from for every
    /// message, was 2-3% of the agent's CPU at 10k messages/s). Only a DUP,
    /// after a reconnect, is looked for.
    prints: std::collections::VecDeque<u64>,
    count: usize,
    /// Fingerprints of the last messages acknowledged, oldest first: the
    /// broker resends at most its window of them.
    recent: std::collections::VecDeque<u64>,
    recent_max: usize,
}

impl Outstanding {
    /// For a broker that keeps up to `window` messages unacknowledged.
    fn new(window: usize) -> Outstanding {
        Outstanding {
            hasher: ahash::RandomState::new(),
            prints: std::collections::VecDeque::new(),
            count: 0,
            recent: std::collections::VecDeque::new(),
            recent_max: window.saturating_mul(2).max(64),
        }
    }

    fn print(&self, p: &Publish) -> u64 {
        self.hasher.hash_one((&p.topic, &p.payload[..]))
    }

    /// Counts `p` in: what acknowledging it needs, and whether it is a
    /// redelivery of a message still here.
    fn read(&mut self, p: &Publish) -> (Unacked, bool) {
        let print = self.print(p);
        // Scans, but only of a DUP, which comes only after a reconnect.
        let redelivered = p.dup && (self.prints.contains(&print) || self.recent.contains(&print));
        self.prints.push_back(print);
        self.count += 1;
        let unacked = Unacked {
            pkid: p.pkid,
            qos: p.qos,
            print,
        };
        (unacked, redelivered)
    }

    fn acknowledged(&mut self, u: &Unacked) {
        let print = u.print;
        if self.prints.front() == Some(&print) {
            self.prints.pop_front();
        } else if let Some(at) = self.prints.iter().position(|&p| p == print) {
            self.prints.remove(at);
        }
        self.count = self.count.saturating_sub(1);
        if self.recent.len() == self.recent_max {
            self.recent.pop_front();
        }
        self.recent.push_back(print);
    }
}

/// Hands what is held to the store: dead letters, QoS 0 points, then the
/// points of the messages to acknowledge, whose acknowledgements go to the
/// acknowledger to wait for the commit `commit` asks for. An error means the
/// store or the acknowledger is gone.
async fn hand_off(
    held: &mut Held,
    commit: Commit,
    store: &StoreHandle,
    ack_tx: &mpsc::UnboundedSender<Pending>,
) -> Result<(), StoreError> {
    let Held {
        publishes,
        acked,
        at_most_once,
        dead,
        ..
    } = std::mem::take(held);
    let rejected = !dead.is_empty();
    store.dead_letters(dead).await?;
    if !at_most_once.is_empty() {
        store.append(at_most_once).await?;
    }
    if publishes.is_empty() && commit == Commit::WithTick {
        return Ok(());
    }
    // Waits while the store is behind: the event loop is not polled
    // meanwhile (backpressure to the broker). A rejected message is
    // acknowledged once its dead letter is committed too (the same flush,
    // as the store takes requests in order).
    let durable = if acked.is_empty() && !rejected && commit == Commit::WithTick {
        None
    } else {
        Some(store.append_durable_begin(acked, commit).await?)
    };
    ack_tx
        .send(Pending { durable, publishes })
        .map_err(|_| StoreError::Closed)
}

/// Runs one MQTT source until `shutdown`.
pub async fn run(
    cfg: MqttSourceConfig,
    device: String,
    store: StoreHandle,
    stats: Arc<SourceStats>,
    shutdown: CancellationToken,
) {
    let name = cfg.name.clone();
    let (opts, mut decoder) = match options(&cfg, &device)
        .and_then(|o| Ok((o, Decoder::new(&cfg).map_err(anyhow::Error::msg)?)))
    {
        Ok(v) => v,
        Err(e) => {
            error!(source = %name, "MQTT source not started: {e:#}");
            return;
        }
    };
    let mut guard = Guard::new(cfg.max_series, cfg.max_future_skew, cfg.max_past_age);
    let dead_name: Arc<str> = name.as_str().into();
    let filters: Vec<rumqttc::SubscribeFilter> = decoder
        .filters()
        .into_iter()
        .map(|(f, q)| rumqttc::SubscribeFilter::new(f, qos(q)))
        .collect();
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CAPACITY);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let outstanding = Arc::new(Mutex::new(Outstanding::new(cfg.broker_inflight)));
    // Rings after each group of acknowledgements: reads paused at the window resume.
    let acked = Arc::new(tokio::sync::Notify::new());
    let acker = tokio::spawn(ack_when_durable(
        client.clone(),
        ack_rx,
        store.clone(),
        stats.clone(),
        name.clone(),
        (outstanding.clone(), acked.clone()),
    ));
    // Commit once three quarters of the broker's window wait, so that the
    // acknowledgements are back before it runs dry.
    let window = (cfg.broker_inflight * 3 / 4).max(1);
    // And read no further than the window, whatever the broker does
    // (mosquitto 2.0.11 sent ~30% more live, 4.5 times as many to an agent
    // draining a backlog): what waits for a commit stays bounded. Not below a batch, so that a `broker_inflight` set
    // smaller than the broker's window does not throttle the stream.
    let cap = cfg.broker_inflight.max(GATHER);
    let mut backoff = Backoff::new(Duration::from_millis(200), cfg.backoff_max);
    let mut down_since: Option<Instant> = None;
    let mut log = RateLimit::new(Duration::from_secs(10));
    let mut window_watch = WindowWatch::new(Instant::now());
    let mut window_log = RateLimit::new(Duration::from_secs(3600));
    let mut held = Held::default();
    let mut last_read = Instant::now();
    // Whether a prompt commit was asked for since the last message read.
    let mut hurried = true;
    // An event read while gathering messages, handled next.
    let mut next = None;
    loop {
        // When to stop waiting for the broker: held messages have lingered
        // long enough, or the stream paused with messages unacknowledged.
        let waiting = lock(&outstanding).count;
        // Acknowledgements still go out while reads are paused.
        let paused = waiting >= cap;
        eventloop.pause_reads(paused);
        let idle_at = (!hurried && (held.messages > 0 || waiting > 0)).then_some(last_read + IDLE);
        let wake_at = match (held.since.map(|t| t + LINGER), idle_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let event = match next.take() {
            Some(e) => e,
            None => tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = acked.notified(), if paused => continue,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake_at.unwrap_or_else(Instant::now))), if wake_at.is_some() => {
                    let commit = if idle_at.is_some_and(|t| Instant::now() >= t) {
                        hurried = true;
                        Commit::Soon
                    } else {
                        Commit::WithTick
                    };
                    if hand_off(&mut held, commit, &store, &ack_tx).await.is_err() {
                        break;
                    }
                    continue;
                }
                e = eventloop.poll() => e,
            },
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                match down_since.take() {
                    Some(t) => {
                        info!(source = %name, url = %cfg.url, session_present = ack.session_present,
                        "broker back after {:.1}s", t.elapsed().as_secs_f64())
                    }
                    None => {
                        info!(source = %name, url = %cfg.url, session_present = ack.session_present, "connected")
                    }
                }
                backoff.reset();
                stats.connected.store(true, Relaxed);
                // Also when the session is present: cheap, and it covers a
                // broker that lost its state.
                if let Err(e) = client.try_subscribe_many(filters.clone()) {
                    warn!(source = %name, "cannot subscribe: {e}");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    warn!(source = %name, "the broker refused a subscription; check the topic patterns and the broker's ACLs");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // What the event loop already read comes along (polled once
                // each, never waiting).
                let mut publishes = vec![p];
                while held.messages + publishes.len() < GATHER && waiting + publishes.len() < cap {
                    // Events the last network read queued come straight off
                    // the queue (`poll` would return them first): a `poll`
                    // future a message, built and moved, was ~2% of the CPU.
                    let event = match eventloop.state.events.pop_front() {
                        Some(e) => Ok(e),
                        None => match futures_util::FutureExt::now_or_never(eventloop.poll()) {
                            Some(e) => e,
                            None => break,
                        },
                    };
                    match event {
                        Ok(Event::Incoming(Packet::Publish(p))) => publishes.push(p),
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                last_read = Instant::now();
                window_watch.read(publishes.len());
                hurried = false;
                held.since.get_or_insert(last_read);
                let now = now_ns();
                // Its own block: the lock is never held across an await.
                let waiting = {
                    let mut out = lock(&outstanding);
                    for p in publishes {
                        stats.lines.fetch_add(1, Relaxed);
                        held.messages += 1;
                        let unacked = if p.qos == QoS::AtMostOnce {
                            None
                        } else {
                            let (unacked, redelivered) = out.read(&p);
                            if redelivered {
                                // Its first copy is stored (or on its way): the
                                // acknowledgement is all the broker still needs.
                                stats.redelivered.fetch_add(1, Relaxed);
                                held.publishes.push(unacked);
                                continue;
                            }
                            Some(unacked)
                        };
                        let batch = if p.qos == QoS::AtMostOnce {
                            &mut held.at_most_once
                        } else {
                            &mut held.acked
                        };
                        let start = batch.points.len();
                        let decoded = decoder
                            .decode(&p.topic, &p.payload, now, &mut batch.points)
                            .and_then(|n| guard.check(&batch.points[start..], now).map(|()| n));
                        match decoded {
                            Ok(n) => {
                                stats.points.fetch_add(n as u64, Relaxed);
                                guard.settle_arrivals(&mut batch.points[start..], now, &stats);
                            }
                            Err(reason) => {
                                batch.points.truncate(start);
                                stats.reject(reason.label());
                                held.dead.push(DeadLetter::new(
                                    dead_name.clone(),
                                    reason.label(),
                                    format!("topic {}: {reason}", p.topic),
                                    &p.payload,
                                    now,
                                ));
                                if let Some(n) = log.allow(Instant::now()) {
                                    let example = String::from_utf8_lossy(
                                        &p.payload[..p.payload.len().min(120)],
                                    );
                                    warn!(source = %name, topic = %p.topic, reason = reason.label(), suppressed = n,
                                    "rejected a message ({reason}): {example:?}; check the sensor's payload and the subscription's format");
                                }
                            }
                        }
                        held.publishes.extend(unacked);
                    }
                    stats.unacked.store(out.count as u64, Relaxed);
                    stats.unacked_max.fetch_max(out.count as u64, Relaxed);
                    // The broker's window is (nearly) full: it sends nothing more until
                    // these are acknowledged, so they are committed at once.
                    out.count
                };
                let commit = if waiting >= window {
                    hurried = true;
                    stats.window_commits.fetch_add(1, Relaxed);
                    if let Some((commits, messages)) = window_watch.commit(last_read) {
                        if window_log.allow(last_read).is_some() {
                            warn!(source = %name, broker_inflight = cfg.broker_inflight,
                            "the broker's window of unacknowledged messages filled {commits:.1} times a second over the last minute, each a commit and an fdatasync (CPU, SD-card wear); set mosquitto's max_inflight_messages and this source's broker_inflight to about a second of messages (~{:.0} here)",
                            messages.ceil());
                        }
                    }
                    Some(Commit::Soon)
                } else {
                    held.is_full().then_some(Commit::WithTick)
                };
                if let Some(commit) = commit {
                    if hand_off(&mut held, commit, &store, &ack_tx).await.is_err() {
                        break;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.connected.store(false, Relaxed);
                if down_since.is_none() {
                    warn!(source = %name, url = %cfg.url, "MQTT connection failed or lost ({e}); reconnecting with backoff, the broker keeps QoS 1 messages for the session");
                    down_since = Some(Instant::now());
                }
                // What was read before the loss is stored; the broker sends
                // the unacknowledged messages again on the next session.
                if hand_off(&mut held, Commit::WithTick, &store, &ack_tx)
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
    stats.connected.store(false, Relaxed);
    // Store what was read, commit it now rather than at the next tick, and
    // acknowledge what is durable; then say goodbye, within a short grace.
    let _ = hand_off(&mut held, Commit::Soon, &store, &ack_tx).await;
    drop(ack_tx);
    // What arrives now would not be stored: the broker keeps it.
    eventloop.pause_reads(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut acker = acker;
        loop {
            tokio::select! {
                r = &mut acker => { let _ = r; break; }
                e = eventloop.poll() => if e.is_err() { return; },
            }
        }
        if client.try_disconnect().is_ok() {
            while let Ok(e) = eventloop.poll().await {
                if e == Event::Outgoing(Outgoing::Disconnect) {
                    break;
                }
            }
        }
    })
    .await;
}

/// Acknowledges messages in the order received, each once its points are
/// durable; every message of one group commit is acknowledged together.
async fn ack_when_durable(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    store: StoreHandle,
    stats: Arc<SourceStats>,
    name: String,
    (outstanding, acked): (Arc<Mutex<Outstanding>>, Arc<tokio::sync::Notify>),
) {
    while let Some(p) = rx.recv().await {
        if let Some(d) = p.durable {
            match d.wait().await {
                Ok(()) => {}
                Err(StoreError::Closed) => return,
                Err(StoreError::FlushFailed(e)) => {
                    // The points stay pending in the store: ack once a later
                    // flush commits them.
                    warn!(source = %name, "not acknowledging until the store can flush ({e})");
                    while store.flush().await.is_err() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Err(e) => {
                    // Refused for good (e.g. too many series): redelivery
                    // would not help.
                    stats.reject(Reject::StoreRefused(String::new()).label());
                    warn!(source = %name, "points refused by the store: {e}");
                }
            }
        }
        for publish in &p.publishes {
            if client.ack(&publish.as_publish()).await.is_err() {
                return;
            }
        }
        let mut out = lock(&outstanding);
        for publish in &p.publishes {
            out.acknowledged(publish);
        }
        stats.unacked.store(out.count as u64, Relaxed);
        acked.notify_one();
    }
}

/// The outstanding messages; a panic elsewhere while holding the lock
/// leaves counts that are still usable.
fn lock(o: &Mutex<Outstanding>) -> MutexGuard<'_, Outstanding> {
    o.lock().unwrap_or_else(|e| e.into_inner())
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(subs: &str) -> MqttSourceConfig {
        let text = format!(
            "name = \"m\"\nurl = \"mqtt://127.0.0.1\"\ntags = {{ gw = \"g1\" }}\nmax_json_depth = 3\nmax_fields = 4\n{subs}"
        );
        let cfg: MqttSourceConfig = toml::from_str(&text).unwrap();
        cfg.validate("s").unwrap();
        cfg
    }

    fn decode(
        d: &mut Decoder,
        topic: &str,
        payload: &str,
    ) -> Result<Vec<(String, i64, f64)>, Reject> {
        let mut out = Vec::new();
        d.decode(topic, payload.as_bytes(), 7, &mut out)?;
        Ok(out
            .into_iter()
            .map(|p| (p.series.as_str().to_string(), p.ts_ns, p.value))
            .collect())
    }

    #[test]
    fn bare_numbers_with_topic_bound_tags_and_field() {
        let cfg = source(
            "[[subscriptions]]\ntopic = \"sensors/+site/+device/#field\"\nmeasurement = \"env\"\n",
        );
        let mut d = Decoder::new(&cfg).unwrap();
        assert_eq!(d.filters(), [("sensors/+/+/#".to_string(), 1)]);
        assert_eq!(
            decode(&mut d, "sensors/lab/d01/temp", " 21.5\n").unwrap(),
            [("env,device=d01,gw=g1,site=lab temp".into(), 7, 21.5)]
        );
        assert_eq!(
            decode(&mut d, "sensors/lab/d01/a/b", "1").unwrap()[0].0,
            "env,device=d01,gw=g1,site=lab a.b"
        );
        // No field level: the configured default name.
        assert_eq!(
            decode(&mut d, "sensors/lab/d01", "1").unwrap()[0].0,
            "env,device=d01,gw=g1,site=lab value"
        );
        let label = |d: &mut Decoder, t: &str, p: &str| decode(d, t, p).unwrap_err().label();
        assert_eq!(label(&mut d, "sensors/lab/d01/t", "21.5x"), "not_a_number");
        assert_eq!(label(&mut d, "sensors/lab/d01/t", "NaN"), "not_finite");
        assert_eq!(label(&mut d, "sensors//d01/t", "1"), "empty_tag");
        let mut out = Vec::new();
        assert_eq!(
            d.decode("sensors/a/b/c", b"\xff", 0, &mut out),
            Err(Reject::NotUtf8)
        );
        assert_eq!(
            d.decode("sensors/a/b/c", &vec![b'1'; 300 * 1024], 0, &mut out),
            Err(Reject::TooLong)
        );
    }

    #[test]
    fn json_pointers_flattening_timestamp_and_limits() {
        let cfg = source(
            r#"
[[subscriptions]]
topic = "picked/+device"
format = "json"
values = { temp = "/env/t", on = "/on" }
timestamp = "/ts"
timestamp_unit = "s"
[[subscriptions]]
topic = "all/+device/#field"
format = "json"
timestamp = "/meta/ts"
"#,
        );
        let mut d = Decoder::new(&cfg).unwrap();
        let got = decode(
            &mut d,
            "picked/d1",
            r#"{"ts":"5","env":{"t":21.5,"h":3},"on":true}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                ("mqtt,device=d1,gw=g1 on".to_string(), 5_000_000_000, 1.0),
                ("mqtt,device=d1,gw=g1 temp".to_string(), 5_000_000_000, 21.5)
            ]
        );
        assert_eq!(
            decode(&mut d, "picked/d1", r#"{"env":{}}"#)
                .unwrap_err()
                .label(),
            "missing_pointer"
        );
        assert_eq!(
            decode(&mut d, "picked/d1", r#"{"env":{"t":"hot"},"on":1}"#)
                .unwrap_err()
                .label(),
            "not_a_number"
        );
        // Every numeric leaf, the timestamp excluded, under the topic's field.
        let got = decode(
            &mut d,
            "all/d2/x",
            r#"{"meta":{"ts":9,"id":"abc"},"a":[1,2],"b":{"c":false}}"#,
        )
        .unwrap();
        let keys: Vec<_> = got.iter().map(|g| (g.0.as_str(), g.1)).collect();
        assert_eq!(
            keys,
            [
                ("mqtt,device=d2,gw=g1 x.a.0", 9_000_000),
                ("mqtt,device=d2,gw=g1 x.a.1", 9_000_000),
                ("mqtt,device=d2,gw=g1 x.b.c", 9_000_000)
            ]
        );
        // A bare JSON number, arrival time.
        assert_eq!(
            decode(&mut d, "all/d2/y", "3").unwrap()[0],
            ("mqtt,device=d2,gw=g1 y".into(), 7, 3.0)
        );
        let label = |d: &mut Decoder, p: &str| decode(d, "all/d2/x", p).unwrap_err().label();
        assert_eq!(label(&mut d, r#"{"a":{"b":{"c":{"d":1}}}}"#), "too_deep");
        assert_eq!(label(&mut d, r#"{"a":[1,2,3,4,5]}"#), "too_many_fields");
        assert_eq!(label(&mut d, r#"{"a":"x"}"#), "no_fields");
        assert_eq!(label(&mut d, r#"{"a":1"#), "bad_json");
        assert_eq!(
            label(&mut d, r#"{"meta":{"ts":1.5},"a":1}"#),
            "bad_timestamp"
        );
    }

    #[test]
    fn line_protocol_gets_the_topic_tags() {
        let cfg = source(
            "[[subscriptions]]\ntopic = \"lp/+site\"\nformat = \"lp\"\nprecision = \"ms\"\n",
        );
        let mut d = Decoder::new(&cfg).unwrap();
        let got = decode(
            &mut d,
            "lp/lab",
            "env,dev=d1 t=1,h=2i 10\nenv,dev=d2 t=3 11",
        )
        .unwrap();
        assert_eq!(
            got[0],
            ("env,dev=d1,gw=g1,site=lab t".into(), 10_000_000, 1.0)
        );
        assert_eq!(
            got[2],
            ("env,dev=d2,gw=g1,site=lab t".into(), 11_000_000, 3.0)
        );
        assert_eq!(
            decode(&mut d, "lp/lab", "env s=\"x\"").unwrap_err().label(),
            "string_field"
        );
        assert_eq!(
            decode(&mut d, "lp/lab", "e a=1,b=2,c=3,d=4,e=5")
                .unwrap_err()
                .label(),
            "too_many_fields"
        );
    }

    #[test]
    fn a_window_that_fills_often_is_reported_once_a_minute_at_most() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        // One commit a second: what a window of about a second of messages
        // costs; not reported.
        let mut w = WindowWatch::new(t0);
        for i in 1..=120 {
            w.read(10_000);
            assert_eq!(w.commit(s(i as f64)), None);
        }
        // Thirteen a second (10k messages/s, a window of 1000): reported at
        // the end of the minute, with the rates seen, then counted afresh.
        let mut w = WindowWatch::new(t0);
        let mut said = Vec::new();
        for i in 1..=13 * 130 {
            w.read(750);
            if let Some(r) = w.commit(s(i as f64 / 13.0)) {
                said.push((i, r));
            }
        }
        assert_eq!(said.len(), 2, "{said:?}");
        let (i, (commits, messages)) = said[0];
        assert_eq!(i, 13 * 60);
        assert!((commits - 13.0).abs() < 0.01, "{commits}");
        assert!((messages - 9750.0).abs() < 1.0, "{messages}");
    }

    #[test]
    fn urls_and_validation() {
        let mut cfg = source("[[subscriptions]]\ntopic = \"a/#\"\n");
        cfg.subscriptions[0].topic = "a/#x/b".into();
        assert_eq!(cfg.validate("s").unwrap_err().0, "s.subscriptions[0].topic");
        cfg.subscriptions.clear();
        assert!(cfg.validate("s").is_err());
        assert_eq!(
            source("[[subscriptions]]\ntopic = \"a\"\n").client_id("gw"),
            "tidegate-gw-m"
        );
    }

    #[test]
    fn a_redelivery_is_recognised_while_its_first_copy_is_outstanding_or_just_acknowledged() {
        let msg = |payload: &str, dup: bool| {
            let mut p = Publish::new("s/a", QoS::AtLeastOnce, payload.as_bytes().to_vec());
            p.dup = dup;
            p
        };
        let mut o = Outstanding::new(20);
        let (first, dup) = o.read(&msg("21.5", false));
        assert!(!dup);
        // The same reading sent again, not flagged: a new message.
        let (second, dup) = o.read(&msg("21.5", false));
        assert!(!dup);
        let (third, dup) = o.read(&msg("21.5", true));
        assert!(dup, "DUP while a copy is outstanding");
        assert!(!o.read(&msg("21.6", true)).1, "DUP of a message never read");
        assert_eq!(o.count, 4);
        for u in [first, second, third] {
            o.acknowledged(&u);
        }
        // Every copy acknowledged, and the broker restarted before it took
        // the acknowledgements in: the DUP it sends is not stored again.
        let (again, dup) = o.read(&msg("21.5", true));
        assert!(dup);
        o.acknowledged(&again);
        // Once 64 messages (twice the window, at least 64) were acknowledged
        // since, a DUP is a message the broker never saw acknowledged, and
        // is stored.
        for i in 0..64 {
            let (u, dup) = o.read(&msg(&format!("{i}"), false));
            assert!(!dup);
            o.acknowledged(&u);
        }
        assert!(!o.read(&msg("21.5", true)).1);
        assert_eq!(o.count, 2);
    }
}
