//! Kafka producer: each point, or each group of up to `points_per_message`
//! points of one key, is one record (line protocol or JSON), keyed by series
//! (or device) and placed in a partition by Kafka's own murmur2 partitioner,
//! so a Java or librdkafka producer with the same key agrees on the partition.
//!
//! A batch counts as sent only once every partition it touched acknowledged
//! it with `acks = all`; until then the engine retries the whole batch from
//! the store (at-least-once; consumers deduplicate by series and time).
//!
//! The client is `rskafka` (pure Rust). It writes each request as two
//! `write`s (length, then body) on a socket with Nagle's algorithm on, so
//! the tail of a request waits for the broker's delayed ACK: ~40 ms per
//! request. It offers no socket hook, so [`tcp`] sets `TCP_NODELAY` on the
//! process's sockets to the brokers' ports after each connect.
//!
//! Not supported by rskafka 0.6, hence not here: the idempotent producer
//! (producer ids, sequence numbers) and transactions; SASL GSSAPI.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use rskafka::BackoffConfig;
use tracing::debug;

use super::{influx::write_line, mqtt::json_row, Sink, SinkError};
use crate::config::{KafkaCompression, KafkaKey, KafkaSinkConfig, SaslMechanism, UplinkFormat};
use crate::point::Point;

/// Bytes a record costs in a batch beyond its key and value (varints,
/// attributes, deltas): what the request-size accounting adds per record.
const RECORD_OVERHEAD: usize = 24;

/// A producer for one topic.
pub struct KafkaSink {
    name: String,
    brokers: Vec<String>,
    topic: String,
    format: UplinkFormat,
    points_per_message: usize,
    key: KafkaKey,
    device: String,
    compression: Compression,
    max_message_bytes: usize,
    timeout: Duration,
    backoff_max: Duration,
    client_id: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    sasl: Option<SaslConfig>,
    /// Brokers' ports whose sockets get `TCP_NODELAY` (empty: Nagle stays on).
    nodelay_ports: Vec<u16>,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// Records split because they (or their request) were over the size limit.
    splits: AtomicU64,
}

/// A connection: one client per partition of the topic, by partition id.
struct Conn {
    partitions: Vec<Arc<PartitionClient>>,
}

impl KafkaSink {
    /// Reads the TLS files and prepares the client; connects at the first send.
    pub fn new(cfg: &KafkaSinkConfig, device: &str) -> anyhow::Result<KafkaSink> {
        let what = format!("sink {}", cfg.name);
        let tls = if cfg.tls || cfg.ca_file.is_some() {
            Some(Arc::new(tls_config(cfg, &what)?))
        } else {
            None
        };
        let sasl = match (cfg.sasl_mechanism, &cfg.username, &cfg.password) {
            (Some(m), Some(u), Some(p)) => {
                let c = Credentials::new(u.clone(), p.clone());
                Some(match m {
                    SaslMechanism::Plain => SaslConfig::Plain(c),
                    SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(c),
                    SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(c),
                })
            }
            _ => None,
        };
        let nodelay_ports = if cfg.nodelay {
            let mut ports: Vec<u16> = cfg
                .brokers
                .iter()
                .filter_map(|b| b.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
                .collect();
            ports.sort_unstable();
            ports.dedup();
            ports
        } else {
            Vec::new()
        };
        Ok(KafkaSink {
            name: cfg.name.clone(),
            brokers: cfg.brokers.clone(),
            topic: cfg.topic.replace("{device}", device),
            format: cfg.format,
            points_per_message: cfg.points_per_message.max(1),
            key: cfg.key,
            device: device.to_string(),
            compression: compression(cfg.compression),
            max_message_bytes: cfg.max_message_bytes.0 as usize,
            timeout: cfg.timeout,
            backoff_max: cfg.backoff_max,
            client_id: cfg
                .client_id
                .clone()
                .unwrap_or_else(|| format!("tidegate-{device}-{}", cfg.name)),
            tls,
            sasl,
            nodelay_ports,
            conn: tokio::sync::Mutex::new(None),
            splits: AtomicU64::new(0),
        })
    }

    /// Records split so far because they were over `max_message_bytes`.
    pub fn splits(&self) -> u64 {
        self.splits.load(Relaxed)
    }

    /// TCP payload bytes the brokers acknowledged on the open connections
    /// (Linux `tcpi_bytes_acked`): the bytes on the wire, compression and
    /// protocol framing included.
    pub fn wire_bytes(&self) -> u64 {
        tcp::scan(&self.broker_ports(), false)
    }

    fn broker_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .brokers
            .iter()
            .filter_map(|b| b.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
            .collect();
        ports.dedup();
        ports
    }

    /// The connection, made now if there is none: bootstrap, the topic's
    /// partitions, a client for each.
    async fn connect(&self) -> Result<Arc<Conn>, SinkError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let brokers = self.brokers.join(", ");
        let retry = |reason: String| SinkError::Retryable {
            reason,
            retry_after: None,
        };
        let mut builder = ClientBuilder::new(self.brokers.clone())
            .client_id(self.client_id.as_str())
            .backoff_config(BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: self.backoff_max.min(Duration::from_secs(1)),
                base: 2.0,
                // rskafka retries inside a request until then; past it the
                // engine's own backoff and the store take over.
                deadline: Some(self.timeout),
            });
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(tls.clone());
        }
        if let Some(sasl) = &self.sasl {
            builder = builder.sasl_config(sasl.clone());
        }
        let client = match tokio::time::timeout(self.timeout, builder.build()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(retry(format!(
                    "cannot reach the Kafka brokers {brokers}: {e}"
                )))
            }
            Err(_) => {
                return Err(retry(format!(
                    "no answer from the Kafka brokers {brokers} within {:?}",
                    self.timeout
                )))
            }
        };
        let topics = tokio::time::timeout(self.timeout, client.list_topics())
            .await
            .map_err(|_| {
                retry(format!(
                    "no metadata from {brokers} within {:?}",
                    self.timeout
                ))
            })?
            .map_err(|e| retry(format!("cannot list the topics of {brokers}: {e}")))?;
        let Some(topic) = topics.into_iter().find(|t| t.name == self.topic) else {
            return Err(unknown_topic(&self.topic, &brokers));
        };
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for (i, p) in topic.partitions.iter().enumerate() {
            if *p != i as i32 {
                return Err(retry(format!(
                    "topic `{}` has partitions {:?}; expected 0..{}",
                    self.topic,
                    topic.partitions,
                    topic.partitions.len()
                )));
            }
            let pc = client
                .partition_client(self.topic.clone(), *p, UnknownTopicHandling::Error)
                .await
                .map_err(|e| classify(e, &self.topic, &brokers))?;
            partitions.push(Arc::new(pc));
        }
        if partitions.is_empty() {
            return Err(unknown_topic(&self.topic, &brokers));
        }
        debug!(
            sink = self.name,
            partitions = partitions.len(),
            "connected to {brokers}"
        );
        tcp::scan(&self.nodelay_ports, true);
        let conn = Arc::new(Conn { partitions });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Produces one partition's records in order: requests up to the size
    /// limit, split further if the broker says they are too large.
    async fn produce(&self, pc: &PartitionClient, recs: Vec<Rec<'_>>) -> Result<(), SinkError> {
        let mut todo: Vec<Vec<Rec>> = pack(self.fit(recs)?, self.max_message_bytes, self.format);
        todo.reverse();
        while let Some(request) = todo.pop() {
            let records: Vec<Record> = request.iter().map(|r| self.record(r)).collect();
            match pc.produce(records, self.compression).await {
                Ok(_) => {}
                Err(KafkaError::ServerError {
                    protocol_error:
                        ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge,
                    ..
                }) => {
                    // The broker's limit is below ours: halves, in order.
                    self.splits.fetch_add(1, Relaxed);
                    let (a, b) = halve_request(request).ok_or_else(|| SinkError::Permanent {
                        reason: format!(
                            "the brokers refuse even one point as too large for topic `{}`; raise its max.message.bytes",
                            self.topic
                        ),
                    })?;
                    todo.push(b);
                    todo.push(a);
                }
                Err(e) => return Err(classify(e, &self.topic, &self.brokers.join(", "))),
            }
        }
        Ok(())
    }

    /// Splits every record over the size limit into records of fewer points.
    fn fit<'a>(&self, recs: Vec<Rec<'a>>) -> Result<Vec<Rec<'a>>, SinkError> {
        let mut out = Vec::with_capacity(recs.len());
        let mut todo = recs;
        todo.reverse();
        while let Some(r) = todo.pop() {
            if r.size(self.format) <= self.max_message_bytes {
                out.push(r);
                continue;
            }
            if r.parts.len() < 2 {
                return Err(SinkError::Permanent {
                    reason: format!(
                        "a point of {} bytes is over max_message_bytes ({})",
                        r.size(self.format),
                        self.max_message_bytes
                    ),
                });
            }
            self.splits.fetch_add(1, Relaxed);
            let (a, b) = r.halve();
            todo.push(b);
            todo.push(a);
        }
        Ok(out)
    }

    fn record(&self, r: &Rec) -> Record {
        Record {
            key: Some(r.key.to_vec()),
            value: Some(r.value(self.format)),
            headers: Default::default(),
            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(r.ts_ms)
                .unwrap_or_default(),
        }
    }

    /// Appends one point's part of a record value.
    fn part(&self, out: &mut Vec<u8>, p: &Point, scratch: &mut String) {
        match self.format {
            UplinkFormat::Lp => {
                scratch.clear();
                write_line(scratch, p);
                out.extend_from_slice(scratch.as_bytes());
            }
            UplinkFormat::Json => {
                serde_json::to_writer(&mut *out, &json_row(p)).expect("JSON of numbers and strings")
            }
        }
    }
}

/// The rskafka compression of a setting.
fn compression(c: KafkaCompression) -> Compression {
    match c {
        KafkaCompression::None => Compression::NoCompression,
        KafkaCompression::Gzip => Compression::Gzip,
        KafkaCompression::Lz4 => Compression::Lz4,
        KafkaCompression::Snappy => Compression::Snappy,
        KafkaCompression::Zstd => Compression::Zstd,
    }
}

fn unknown_topic(topic: &str, brokers: &str) -> SinkError {
    SinkError::Retryable {
        reason: format!(
            "topic `{topic}` does not exist on the Kafka brokers {brokers}; create it (the sink \
             does not create topics), points stay in the store until then"
        ),
        retry_after: None,
    }
}

/// Retryable unless the broker refused the records themselves: an outage,
/// a missing topic or missing rights must not set points aside.
fn classify(e: KafkaError, topic: &str, brokers: &str) -> SinkError {
    match &e {
        KafkaError::ServerError {
            protocol_error: ProtocolError::UnknownTopicOrPartition,
            ..
        } => unknown_topic(topic, brokers),
        KafkaError::ServerError {
            protocol_error:
                ProtocolError::InvalidRecord
                | ProtocolError::InvalidTimestamp
                | ProtocolError::CorruptMessage,
            ..
        } => SinkError::Permanent {
            reason: format!("topic `{topic}` refused the records: {e}"),
        },
        _ => SinkError::Retryable {
            reason: format!("producing to `{topic}` on {brokers} failed: {e}"),
            retry_after: None,
        },
    }
}

impl Sink for KafkaSink {
    /// The records of a batch, framed for [`Sink::send`]: per record its key,
    /// timestamp and each point's part (so `send` can split a record).
    fn encode(&self, points: &[Point]) -> Vec<u8> {
        let mut out = Vec::with_capacity(points.len() * 96);
        let mut scratch = String::with_capacity(128);
        let mut part = Vec::with_capacity(128);
        let mut put = |out: &mut Vec<u8>, group: &[&Point]| {
            let key = match self.key {
                KafkaKey::Series => group[0].series.as_str().as_bytes(),
                KafkaKey::Device => self.device.as_bytes(),
            };
            put_bytes(out, key);
            out.extend_from_slice(&(group[0].ts_ns.div_euclid(1_000_000)).to_le_bytes());
            out.extend_from_slice(&(group.len() as u32).to_le_bytes());
            for p in group {
                part.clear();
                self.part(&mut part, p, &mut scratch);
                put_bytes(out, &part);
            }
        };
        if self.points_per_message == 1 {
            for p in points {
                put(&mut out, &[p]);
            }
            return out;
        }
        // Up to points_per_message points of one key per record, in batch
        // order; groups in the order their key first appears.
        let mut groups: Vec<Vec<&Point>> = Vec::new();
        let mut open: HashMap<&str, usize> = HashMap::new();
        for p in points {
            let k = match self.key {
                KafkaKey::Series => p.series.as_str(),
                KafkaKey::Device => "",
            };
            match open.get(k).copied() {
                Some(g) if groups[g].len() < self.points_per_message => groups[g].push(p),
                _ => {
                    open.insert(k, groups.len());
                    groups.push(vec![p]);
                }
            }
        }
        for g in &groups {
            put(&mut out, g);
        }
        out
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), SinkError> {
        let recs = decode(&body).ok_or_else(|| SinkError::Permanent {
            reason: "internal: a malformed batch frame".into(),
        })?;
        let conn = self.connect().await?;
        let n = conn.partitions.len();
        let mut per: Vec<Vec<Rec>> = (0..n).map(|_| Vec::new()).collect();
        for r in recs {
            per[partition(r.key, n)].push(r);
        }
        let sends = per
            .into_iter()
            .enumerate()
            .filter(|(_, recs)| !recs.is_empty())
            .map(|(i, recs)| self.produce(&conn.partitions[i], recs));
        let result =
            match tokio::time::timeout(self.timeout, futures_util::future::join_all(sends)).await {
                Ok(results) => results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(())),
                Err(_) => Err(SinkError::Retryable {
                    reason: format!(
                        "no acknowledgement from the brokers within {:?}",
                        self.timeout
                    ),
                    retry_after: None,
                }),
            };
        if !self.nodelay_ports.is_empty() {
            // rskafka reconnects inside a request (broker restarts, leader
            // moves): fix new sockets too, for the requests that follow.
            tcp::scan(&self.nodelay_ports, true);
        }
        if matches!(result, Err(SinkError::Retryable { .. })) {
            // Connect afresh next time: new metadata (leaders, partitions, a
            // topic created meanwhile) and new sockets.
            *self.conn.lock().await = None;
        }
        result
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// One record of a framed batch, borrowing from the frame.
#[derive(Clone, Debug, PartialEq)]
struct Rec<'a> {
    key: &'a [u8],
    ts_ms: i64,
    /// Each point's line or JSON row.
    parts: Vec<&'a [u8]>,
}

impl Rec<'_> {
    /// The record's value: the lines one after the other, or a JSON array.
    fn value(&self, format: UplinkFormat) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.size(format));
        match format {
            UplinkFormat::Lp => self.parts.iter().for_each(|p| v.extend_from_slice(p)),
            UplinkFormat::Json => {
                v.push(b'[');
                for (i, p) in self.parts.iter().enumerate() {
                    if i > 0 {
                        v.push(b',');
                    }
                    v.extend_from_slice(p);
                }
                v.push(b']');
            }
        }
        v
    }

    /// Bytes in a request, overhead included.
    fn size(&self, format: UplinkFormat) -> usize {
        let brackets = match format {
            UplinkFormat::Lp => 0,
            UplinkFormat::Json => 1 + self.parts.len(),
        };
        RECORD_OVERHEAD
            + self.key.len()
            + self.parts.iter().map(|p| p.len()).sum::<usize>()
            + brackets
    }

    /// Two records of the first and second half of the points (the second
    /// keeps the first's timestamp: a record's time is its first point's,
    /// to the millisecond, and only the first half's first point is known).
    fn halve(mut self) -> (Self, Self) {
        let tail = self.parts.split_off(self.parts.len() / 2);
        let second = Rec {
            key: self.key,
            ts_ms: self.ts_ms,
            parts: tail,
        };
        (self, second)
    }
}

/// Records in order, grouped into requests of at most `max` bytes.
fn pack(recs: Vec<Rec<'_>>, max: usize, format: UplinkFormat) -> Vec<Vec<Rec<'_>>> {
    let mut out: Vec<Vec<Rec>> = Vec::new();
    let mut size = 0;
    for r in recs {
        let s = r.size(format);
        match out.last_mut() {
            Some(req) if size + s <= max => {
                size += s;
                req.push(r);
            }
            _ => {
                size = s;
                out.push(vec![r]);
            }
        }
    }
    out
}

/// A request's records in two halves, or its one record's points in two
/// halves; `None` for a single point.
fn halve_request(mut request: Vec<Rec<'_>>) -> Option<(Vec<Rec<'_>>, Vec<Rec<'_>>)> {
    if request.len() > 1 {
        let tail = request.split_off(request.len() / 2);
        return Some((request, tail));
    }
    let r = request.pop()?;
    if r.parts.len() < 2 {
        return None;
    }
    let (a, b) = r.halve();
    Some((vec![a], vec![b]))
}

/// Reads a frame of [`KafkaSink::encode`].
fn decode(mut b: &[u8]) -> Option<Vec<Rec<'_>>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (b.get(..n)?, b.get(n..)?);
        *b = tail;
        Some(head)
    }
    fn u32_at(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    let mut recs = Vec::new();
    while !b.is_empty() {
        let n = u32_at(&mut b)?;
        let key = take(&mut b, n)?;
        let ts_ms = i64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
        let count = u32_at(&mut b)?;
        let mut parts = Vec::with_capacity(count);
        for _ in 0..count {
            let n = u32_at(&mut b)?;
            parts.push(take(&mut b, n)?);
        }
        recs.push(Rec { key, ts_ms, parts });
    }
    Some(recs)
}

/// Kafka's default partitioner for keyed records: `murmur2(key) & 0x7fffffff % n`.
fn partition(key: &[u8], n: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % n
}

/// MurmurHash2 as Kafka's Java client computes it (seed `0x9747b28c`).
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The TLS settings: the CA file's roots or the system's, and a client
/// certificate if given.
fn tls_config(cfg: &KafkaSinkConfig, what: &str) -> anyhow::Result<rustls::ClientConfig> {
    let read = |p: &std::path::Path, field: &str| {
        std::fs::read(p).with_context(|| format!("{what}: cannot read {field} {}", p.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(ca) => {
            for cert in rustls_pemfile::certs(&mut read(ca, "ca_file")?.as_slice()) {
                let cert =
                    cert.with_context(|| format!("{what}: ca_file {} is not PEM", ca.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("{what}: bad CA in {}", ca.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    Ok(match (&cfg.client_cert, &cfg.client_key) {
        (Some(c), Some(k)) => {
            let certs = rustls_pemfile::certs(&mut read(c, "client_cert")?.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{what}: client_cert {} is not PEM", c.display()))?;
            let key = rustls_pemfile::private_key(&mut read(k, "client_key")?.as_slice())
                .ok()
                .flatten()
                .with_context(|| format!("{what}: client_key {} holds no PEM key", k.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .with_context(|| format!("{what}: client_cert and client_key do not match"))?
        }
        _ => builder.with_no_client_auth(),
    })
}

/// The process's TCP sockets, seen through `/proc/self/fd` (rskafka does not
/// hand out its sockets).
pub mod tcp {
    /// Visits the connected TCP sockets whose peer port is one of `ports`:
    /// sets `TCP_NODELAY` if `nodelay`, and returns the sum of their
    /// `tcpi_bytes_acked`.
    #[cfg(target_os = "linux")]
    pub fn scan(ports: &[u16], nodelay: bool) -> u64 {
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        let mut acked = 0;
        for entry in dir.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|l| l.as_os_str().as_encoded_bytes().starts_with(b"socket:"));
            if !is_socket || !peer_port(fd).is_some_and(|p| ports.contains(&p)) {
                continue;
            }
            // SAFETY: plain socket option calls on a descriptor of this
            // process with correctly sized buffers; a descriptor closed
            // meanwhile only makes them fail.
            unsafe {
                let one: libc::c_int = 1;
                if nodelay {
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_TCP,
                        libc::TCP_NODELAY,
                        &one as *const _ as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
                // struct tcp_info: tcpi_bytes_acked is the u64 at offset 120 (Linux >= 4.1).
                let mut info = [0u8; 256];
                let mut len = info.len() as libc::socklen_t;
                let ok = libc::getsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    info.as_mut_ptr() as *mut libc::c_void,
                    &mut len,
                ) == 0;
                if ok && len as usize >= 128 {
                    acked += u64::from_ne_bytes(info[120..128].try_into().unwrap());
                }
            }
        }
        acked
    }

    /// Elsewhere there is nothing to scan: Nagle stays on.
    #[cfg(not(target_os = "linux"))]
    pub fn scan(_ports: &[u16], _nodelay: bool) -> u64 {
        0
    }

    /// The peer port of a connected TCP (stream) socket.
    #[cfg(target_os = "linux")]
    fn peer_port(fd: i32) -> Option<u16> {
        // SAFETY: getsockopt/getpeername write at most the given lengths.
        unsafe {
            let mut ty: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let ok = libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                &mut ty as *mut _ as *mut libc::c_void,
                &mut len,
            ) == 0;
            if !ok || ty != libc::SOCK_STREAM {
                return None;
            }
            let mut addr: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getpeername(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) != 0 {
                return None;
            }
            match addr.ss_family as i32 {
                libc::AF_INET => {
                    let a = &*(&addr as *const _ as *const libc::sockaddr_in);
                    Some(u16::from_be(a.sin_port))
                }
                libc::AF_INET6 => {
                    let a = &*(&addr as *const _ as *const libc::sockaddr_in6);
                    Some(u16::from_be(a.sin6_port))
                }
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::SeriesKey;

    fn sink(extra: &str) -> KafkaSink {
        let cfg: KafkaSinkConfig = toml::from_str(&format!(
            "name = \"k\"\nbrokers = [\"127.0.0.1:1\"]\ntopic = \"t-{{device}}\"\n{extra}"
        ))
        .unwrap();
        KafkaSink::new(&cfg, "gw1").unwrap()
    }

    fn points(series: usize, each: usize) -> Vec<Point> {
        let mut v = Vec::new();
        for t in 0..each {
            for s in 0..series {
                v.push(Point {
                    series: SeriesKey::new("env", [("s", s.to_string().as_str())], "temp"),
                    ts_ns: t as i64 * 1_000_000,
                    value: t as f64,
                });
            }
        }
        v
    }

    #[test]
    fn murmur2_matches_kafkas_java_client() {
        // Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    #[test]
    fn one_point_per_record_keyed_by_series() {
        let s = sink("");
        assert_eq!(s.topic, "t-gw1");
        let pts = points(3, 2);
        let body = s.encode(&pts);
        let recs = decode(&body).unwrap();
        assert_eq!(recs.len(), 6);
        assert_eq!(recs[1].key, pts[1].series.as_str().as_bytes());
        assert_eq!(recs[3].ts_ms, 1);
        let line = String::from_utf8(recs[4].value(UplinkFormat::Lp)).unwrap();
        assert_eq!(line, "env,s=1 temp=1.0 1000000\n");
    }

    #[test]
    fn groups_hold_one_key_in_order() {
        let s = sink("points_per_message = 2\nformat = \"json\"");
        let pts = points(2, 3);
        let recs_body = s.encode(&pts);
        let recs = decode(&recs_body).unwrap();
        // Series 0: [t0, t1], [t2]; series 1 likewise.
        let sizes: Vec<usize> = recs.iter().map(|r| r.parts.len()).collect();
        assert_eq!(sizes, [2, 2, 1, 1]);
        let v: serde_json::Value =
            serde_json::from_slice(&recs[0].value(UplinkFormat::Json)).unwrap();
        assert_eq!(v[0]["tags"]["s"], "0");
        assert_eq!(v[1]["ts"], 1_000_000);
        let dev = sink("points_per_message = 100\nkey = \"device\"");
        let recs_body = dev.encode(&pts);
        let recs = decode(&recs_body).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].key, b"gw1");
    }

    #[test]
    fn records_over_the_limit_split_down_to_single_points() {
        let s = sink("points_per_message = 1000\nkey = \"device\"\nmax_message_bytes = \"1KiB\"");
        let pts = points(5, 200);
        let body = s.encode(&pts);
        let recs = s.fit(decode(&body).unwrap()).unwrap();
        assert!(recs.len() > 1);
        assert!(recs.iter().all(|r| r.size(UplinkFormat::Lp) <= 1024));
        // Every point once, in order.
        let all: Vec<u8> = recs
            .iter()
            .flat_map(|r| r.value(UplinkFormat::Lp))
            .collect();
        let mut expected = String::new();
        pts.iter().for_each(|p| write_line(&mut expected, p));
        assert_eq!(all, expected.as_bytes());
        assert!(s.splits() > 0);
        let requests = pack(recs, 1024, UplinkFormat::Lp);
        assert!(requests
            .iter()
            .all(|r| r.iter().map(|r| r.size(UplinkFormat::Lp)).sum::<usize>() <= 1024));
        // The broker's own refusal halves a request, then a record.
        let big = pack(requests.concat(), 4096, UplinkFormat::Lp);
        assert!(big[0].len() > 1);
        let (a, b) = halve_request(big[0].clone()).unwrap();
        assert_eq!(a.len() + b.len(), big[0].len());
        let one = vec![requests[0][0].clone()];
        let (a, b) = halve_request(one).unwrap();
        assert_eq!(
            a[0].parts.len() + b[0].parts.len(),
            requests[0][0].parts.len()
        );
    }

    #[test]
    fn a_point_over_the_limit_is_refused_for_good() {
        let s = sink("max_message_bytes = \"1KiB\"");
        let p = Point {
            series: SeriesKey::new(&"m".repeat(2000), [], "f"),
            ts_ns: 0,
            value: 1.0,
        };
        let body = s.encode(&[p]);
        assert!(matches!(
            s.fit(decode(&body).unwrap()),
            Err(SinkError::Permanent { .. })
        ));
    }

    #[tokio::test]
    async fn no_broker_is_retryable_and_names_the_brokers() {
        let s = sink("timeout = \"500ms\"");
        let body = s.encode(&points(1, 1));
        match s.send(body).await {
            Err(SinkError::Retryable { reason, .. }) => {
                assert!(reason.contains("127.0.0.1:1"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
}
