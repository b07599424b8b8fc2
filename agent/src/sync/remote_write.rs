//! Prometheus remote write 1.0: a protobuf `WriteRequest`, snappy-compressed
//! (block format), POSTed to the endpoint (Prometheus with
//! `--web.enable-remote-write-receiver`, VictoriaMetrics, Mimir, Cortex,
//! Thanos receive).
//!
//! # From series keys to Prometheus series
//!
//! A series key `measurement,tag1=v1,tag2=v2 field` (line-protocol escaped;
//! the escapes are removed first) becomes:
//!
//! - the metric name `__name__` = `<measurement>_<field>`, every character
//!   outside `[a-zA-Z0-9_:]` replaced by `_`, and `_` put in front if it
//!   would start with a digit (`env room,site=a temp.c` → `env_room_temp_c`);
//! - one label per tag: the name with every character outside
//!   `[a-zA-Z0-9_]` replaced by `_` (and `_` in front of a leading digit),
//!   the value as is. Should two tag names become the same label name, the
//!   first in key order is kept;
//! - labels sorted by name, as the protocol requires.
//!
//! The samples of one series are grouped into one `TimeSeries` per request
//! and sorted by time (Prometheus rejects out-of-order samples). Timestamps
//! go from nanoseconds to milliseconds (rounded down): two points of one
//! series within the same millisecond collide, and only the later of them
//! is sent (both count as sent). Values are sent as they are.

use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};

use super::http::{self, Auth};
use crate::config::RemoteWriteSinkConfig;
use crate::point::{Point, SeriesKey};
use crate::sync::{Sink, SinkError};

/// `prometheus.WriteRequest` (remote write 1.0; metadata left out).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series and their samples.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: labels sorted by name, samples by time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// The series' identity, `__name__` included.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// The values, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub struct Label {
    /// `[a-zA-Z_][a-zA-Z0-9_]*`, or `__name__`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Any UTF-8.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// The value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// A remote-write endpoint.
pub struct RemoteWriteSink {
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Auth,
}

impl RemoteWriteSink {
    /// Builds the HTTP client from the sink's settings.
    pub fn new(cfg: &RemoteWriteSinkConfig) -> anyhow::Result<RemoteWriteSink> {
        let url = reqwest::Url::parse(&cfg.url)
            .map_err(|e| anyhow::anyhow!("sink {}: bad url {}: {e}", cfg.name, cfg.url))?;
        Ok(RemoteWriteSink {
            client: http::client(&cfg.name, &url, cfg.timeout, cfg.ca_file.as_deref())?,
            url,
            auth: Auth::bearer_or_basic(
                cfg.bearer_token.as_deref(),
                cfg.username.as_deref(),
                cfg.password.as_deref(),
            ),
        })
    }
}

impl Sink for RemoteWriteSink {
    /// The snappy-compressed protobuf: the bytes on the wire.
    fn encode(&self, points: &[Point]) -> Vec<u8> {
        let proto = prost::Message::encode_to_vec(&write_request(points));
        snap::raw::Encoder::new()
            .compress_vec(&proto)
            .expect("snappy compresses any buffer that fits in memory")
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), SinkError> {
        let req = self
            .client
            .post(self.url.clone())
            .header(CONTENT_ENCODING, "snappy")
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body);
        http::send(self.auth.apply(req)).await
    }
}

/// Groups `points` into one series each (in order of first appearance),
/// samples sorted by time, one per millisecond.
pub fn write_request(points: &[Point]) -> WriteRequest {
    let mut index: std::collections::HashMap<&SeriesKey, usize> = Default::default();
    let mut timeseries: Vec<TimeSeries> = Vec::new();
    let mut nanos: Vec<Vec<(i64, f64)>> = Vec::new();
    // Batches read from sealed chunks come in runs of one series: the
    // previous point's series is tried before the map.
    let mut last: Option<(&SeriesKey, usize)> = None;
    for p in points {
        let i = match last {
            Some((key, i)) if *key == p.series => i,
            _ => *index.entry(&p.series).or_insert_with(|| {
                timeseries.push(TimeSeries {
                    labels: labels(&p.series),
                    samples: Vec::new(),
                });
                nanos.push(Vec::new());
                nanos.len() - 1
            }),
        };
        last = Some((&p.series, i));
        nanos[i].push((p.ts_ns, p.value));
    }
    for (ts, mut points) in timeseries.iter_mut().zip(nanos) {
        points.sort_by_key(|&(t, _)| t);
        ts.samples.reserve(points.len());
        for (t, value) in points {
            let timestamp = t.div_euclid(1_000_000);
            match ts.samples.last_mut() {
                // Same millisecond: the later point wins.
                Some(last) if last.timestamp == timestamp => last.value = value,
                _ => ts.samples.push(Sample { value, timestamp }),
            }
        }
    }
    WriteRequest { timeseries }
}

/// The labels of a series key, `__name__` included, sorted by name.
pub fn labels(key: &SeriesKey) -> Vec<Label> {
    let parts = key.parts();
    let mut labels = vec![Label {
        name: "__name__".into(),
        value: sanitise(&format!("{}_{}", parts.measurement, parts.field), true),
    }];
    for (name, value) in parts.tags {
        labels.push(Label {
            name: sanitise(&name, false),
            value,
        });
    }
    // Stable: of two tags that sanitise to one name, the first stays.
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels.dedup_by(|later, first| later.name == first.name);
    labels
}

/// A metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`, `colons`) or a label name
/// (`[a-zA-Z_][a-zA-Z0-9_]*`): other characters become `_`, and a leading
/// digit gets a `_` in front.
fn sanitise(s: &str, colons: bool) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(s.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':') {
            c
        } else {
            '_'
        }
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn point(key: &SeriesKey, ts_ns: i64, value: f64) -> Point {
        Point {
            series: key.clone(),
            ts_ns,
            value,
        }
    }

    fn names(labels: &[Label]) -> Vec<(&str, &str)> {
        labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect()
    }

    /// Decodes a body the way a receiver does: snappy block, then protobuf.
    fn decode(body: &[u8]) -> WriteRequest {
        let proto = snap::raw::Decoder::new().decompress_vec(body).unwrap();
        WriteRequest::decode(&proto[..]).unwrap()
    }

    fn sink() -> RemoteWriteSink {
        let cfg: crate::config::Config = toml::from_str(
            "[[sinks.remote_write]]\nname = \"rw\"\nurl = \"http://127.0.0.1:9/api/v1/write\"\n",
        )
        .unwrap();
        RemoteWriteSink::new(&cfg.sinks.remote_write[0]).unwrap()
    }

    #[test]
    fn body_decodes_to_sorted_series() {
        let a = SeriesKey::new("sim", [("sensor", "s01"), ("site", "lab")], "temp");
        let b = SeriesKey::new("sim", [("sensor", "s02"), ("site", "lab")], "hum");
        let points = [
            point(&a, 3_000_000, 3.0),
            point(&b, 1_000_000, 10.0),
            point(&a, 1_000_000, 1.0),
            point(&a, 2_500_000, 2.0),
        ];
        let req = decode(&sink().encode(&points));
        assert_eq!(req.timeseries.len(), 2);
        let ts = &req.timeseries[0];
        assert_eq!(
            names(&ts.labels),
            [("__name__", "sim_temp"), ("sensor", "s01"), ("site", "lab")]
        );
        let samples: Vec<(i64, f64)> = ts.samples.iter().map(|s| (s.timestamp, s.value)).collect();
        assert_eq!(samples, [(1, 1.0), (2, 2.0), (3, 3.0)], "ns → ms, in order");
        assert_eq!(names(&req.timeseries[1].labels)[0], ("__name__", "sim_hum"));
        assert_eq!(req.timeseries[1].samples.len(), 1);
    }

    #[test]
    fn names_are_unescaped_then_sanitised() {
        let k = SeriesKey::new(
            "env room",
            [
                ("site", "lab 1"),
                ("dev.id", "a,b=c"),
                ("2nd", "x"),
                ("Zone", "é"),
            ],
            "temp.c",
        );
        assert_eq!(
            names(&labels(&k)),
            [
                ("Zone", "é"),
                ("_2nd", "x"),
                ("__name__", "env_room_temp_c"),
                ("dev_id", "a,b=c"),
                ("site", "lab 1"),
            ]
        );
        let k = SeriesKey::new("1wire", [], "t:µ");
        assert_eq!(names(&labels(&k)), [("__name__", "_1wire_t:_")]);
    }

    #[test]
    fn colliding_label_names_keep_the_first() {
        let k = SeriesKey::new("m", [("a-b", "1"), ("a.b", "2")], "f");
        assert_eq!(names(&labels(&k)), [("__name__", "m_f"), ("a_b", "1")]);
    }

    #[test]
    fn same_millisecond_keeps_the_later_point() {
        let k = SeriesKey::new("m", [], "f");
        let req = write_request(&[point(&k, 5_000_900, 2.0), point(&k, 5_000_100, 1.0)]);
        let s = &req.timeseries[0].samples;
        assert_eq!((s.len(), s[0].timestamp, s[0].value), (1, 5, 2.0));
    }
}
