//! InfluxDB line protocol over HTTP: v1 `/write` (InfluxDB 1.x,
//! VictoriaMetrics, Telegraf, QuestDB) and v2 `/api/v2/write` (InfluxDB 2.x
//! and 3.x, VictoriaMetrics), gzip bodies by default.

use std::time::Duration;

use anyhow::Context;
use reqwest::header::CONTENT_ENCODING;
use reqwest::StatusCode;

use super::http::{self, Auth};
use crate::config::{InfluxApi, InfluxSinkConfig};
use crate::point::Point;
use crate::sync::{Sink, SinkError};

/// A line-protocol write endpoint.
pub struct InfluxSink {
    client: reqwest::Client,
    write_url: reqwest::Url,
    /// `/query`, to create a missing database (v1 only).
    query_url: Option<reqwest::Url>,
    db: String,
    auth: Auth,
    gzip: bool,
}

impl InfluxSink {
    /// Builds the HTTP client and the write URL from the sink's settings.
    pub fn new(cfg: &InfluxSinkConfig) -> anyhow::Result<InfluxSink> {
        let base = reqwest::Url::parse(&cfg.url)
            .with_context(|| format!("sink {}: bad url {}", cfg.name, cfg.url))?;
        let client = http::client(&cfg.name, &base, cfg.timeout, cfg.ca_file.as_deref())?;
        let (write_url, query_url, auth) = match cfg.api {
            InfluxApi::V1 => {
                let mut url = base.join("write")?;
                let mut q = url.query_pairs_mut();
                q.append_pair("db", &cfg.db);
                if let Some(rp) = &cfg.rp {
                    q.append_pair("rp", rp);
                }
                q.append_pair("precision", "ns");
                drop(q);
                let auth = Auth::basic(cfg.username.as_deref(), cfg.password.as_deref());
                (url, Some(base.join("query")?), auth)
            }
            InfluxApi::V2 => {
                let mut url = base.join("api/v2/write")?;
                url.query_pairs_mut()
                    .append_pair("org", cfg.org.as_deref().unwrap_or_default())
                    .append_pair("bucket", cfg.bucket.as_deref().unwrap_or_default())
                    .append_pair("precision", "ns");
                let auth = match &cfg.token {
                    Some(t) => Auth::Token("Token", t.clone()),
                    None => Auth::None,
                };
                (url, None, auth)
            }
        };
        Ok(InfluxSink {
            client,
            write_url,
            query_url,
            db: cfg.db.clone(),
            auth,
            gzip: cfg.gzip,
        })
    }

    /// Creates the database if it does not exist, as Telegraf does by default.
    async fn create_database(&self, query_url: &reqwest::Url) -> Result<(), SinkError> {
        let q = format!("CREATE DATABASE \"{}\"", self.db.replace('"', "\\\""));
        let req = self.client.post(query_url.clone()).form(&[("q", q)]);
        let reply = http::exchange(self.auth.apply(req)).await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(SinkError::Retryable {
                reason: format!(
                    "database {} does not exist and cannot be created ({}); create it or grant the user the right",
                    self.db, reply.status
                ),
                retry_after: None,
            })
        }
    }
}

/// Appends one point as a line of line protocol.
pub fn write_line(out: &mut String, p: &Point) {
    let (series, field) = p.series.split();
    write_parts(out, series, field, p);
}

/// Appends `series field=value ts\n`. The value is the shortest decimal
/// that reads back as the same f64 (ryu), with an exponent for very large
/// or small values, and always a `.` or an exponent, so every field stays
/// a float (no `i` suffix).
fn write_parts(out: &mut String, series: &str, field: &str, p: &Point) {
    out.push_str(series);
    out.push(' ');
    out.push_str(field);
    out.push('=');
    out.push_str(ryu::Buffer::new().format(p.value));
    out.push(' ');
    out.push_str(itoa::Buffer::new().format(p.ts_ns));
    out.push('\n');
}

/// `points` as line protocol. A key is split into its series and field
/// once per run of points of one series (batches read from sealed chunks
/// come in such runs).
pub fn write_lines(out: &mut String, points: &[Point]) {
    let mut last: Option<(&str, &str, &str)> = None;
    for p in points {
        let key = p.series.as_str();
        let (series, field) = match last {
            Some((k, series, field)) if k == key => (series, field),
            _ => {
                let (series, field) = p.series.split();
                last = Some((key, series, field));
                (series, field)
            }
        };
        write_parts(out, series, field, p);
    }
}

impl Sink for InfluxSink {
    /// Line protocol, gzip-compressed if so configured: the engine counts
    /// the bytes that go on the wire.
    fn encode(&self, points: &[Point]) -> Vec<u8> {
        if !self.gzip {
            let mut s = String::with_capacity(points.len() * 64);
            write_lines(&mut s, points);
            return s.into_bytes();
        }
        // Compressed a few hundred lines at a time: the plain text of a
        // whole request never exists at once (~450 KB at 5,000 points).
        const LINES: usize = 256;
        let mut gz = http::Gzip::new(points.len() * 64);
        let mut s = String::with_capacity(LINES.min(points.len()) * 96);
        for part in points.chunks(LINES) {
            s.clear();
            write_lines(&mut s, part);
            gz.write(s.as_bytes());
        }
        gz.finish()
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), SinkError> {
        // After CREATE DATABASE, InfluxDB may answer "database not found" for a
        // moment longer: a few quick retries keep that from looking like an outage.
        const CREATE_RETRIES: u32 = 40;
        let mut req = self.client.post(self.write_url.clone()).body(body);
        if self.gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        let req = self.auth.apply(req);
        for attempt in 0.. {
            let reply = http::exchange(req.try_clone().expect("a byte body clones")).await?;
            match &self.query_url {
                Some(query_url)
                    if reply.status == StatusCode::NOT_FOUND
                        && reply.body.contains("database not found")
                        && attempt < CREATE_RETRIES =>
                {
                    if attempt == 0 {
                        self.create_database(query_url).await?;
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                _ => return reply.result(),
            }
        }
        unreachable!("the loop returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::SeriesKey;

    fn sink(extra: &str) -> InfluxSink {
        let text = format!("[[sinks.influx]]\nname = \"i\"\nurl = \"http://h:8086\"\n{extra}");
        let cfg = crate::config::Config::from_toml_with_env(&text, "t").unwrap();
        InfluxSink::new(&cfg.sinks.influx[0]).unwrap()
    }

    #[test]
    fn v1_and_v2_write_urls_and_auth() {
        let v1 = sink("db = \"d b\"\nrp = \"r\"\nusername = \"u\"\npassword = \"p\"\n");
        assert_eq!(
            v1.write_url.as_str(),
            "http://h:8086/write?db=d+b&rp=r&precision=ns"
        );
        assert_eq!(v1.auth, Auth::Basic("u".into(), Some("p".into())));
        assert!(v1.query_url.is_some(), "v1 creates a missing database");
        let v2 = sink("api = \"v2\"\norg = \"o\"\nbucket = \"b\"\ntoken = \"t\"\n");
        assert_eq!(
            v2.write_url.as_str(),
            "http://h:8086/api/v2/write?org=o&bucket=b&precision=ns"
        );
        assert_eq!(v2.auth, Auth::Token("Token", "t".into()));
        assert!(v2.query_url.is_none());
    }

    #[test]
    fn bodies_are_gzipped_unless_told_otherwise() {
        use std::io::Read as _;
        let points = [Point {
            series: SeriesKey::new("m", [("t", "v")], "f"),
            ts_ns: 5,
            value: 1.5,
        }];
        let mut text = String::new();
        flate2::read::GzDecoder::new(&sink("db = \"d\"\n").encode(&points)[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "m,t=v f=1.5 5\n");
        let plain = sink("db = \"d\"\ngzip = false\n").encode(&points);
        assert_eq!(plain, b"m,t=v f=1.5 5\n");
        // A body of many pieces (compressed a few hundred lines at a time)
        // reads back as the plain body, line for line.
        let many: Vec<Point> = (0..1000)
            .map(|i| Point {
                series: SeriesKey::new("m", [("t", format!("v{}", i % 7).as_str())], "f"),
                ts_ns: i,
                value: i as f64 / 8.0,
            })
            .collect();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&sink("db = \"d\"\n").encode(&many)[..])
            .read_to_string(&mut text)
            .unwrap();
        let plain = sink("db = \"d\"\ngzip = false\n").encode(&many);
        assert_eq!(text.as_bytes(), plain);
        assert_eq!(text.lines().count(), 1000);
    }

    #[test]
    fn line_protocol_is_exact() {
        let mut s = String::new();
        write_line(
            &mut s,
            &Point {
                series: SeriesKey::new("env", [("site", "lab 1")], "temp"),
                ts_ns: 1_700_000_000_123_000_000,
                value: 21.53,
            },
        );
        assert_eq!(s, "env,site=lab\\ 1 temp=21.53 1700000000123000000\n");
        s.clear();
        write_line(
            &mut s,
            &Point {
                series: SeriesKey::new("m", [], "f"),
                ts_ns: 1,
                value: 1e-300,
            },
        );
        assert_eq!(s, "m f=1e-300 1\n");
    }

    #[test]
    fn runs_of_one_series_write_as_single_lines() {
        let a = SeriesKey::new("env", [("site", "lab 1")], "temp");
        let b = SeriesKey::new("env", [], "hum");
        let points: Vec<Point> = [(&a, 1.0), (&a, -2.5), (&b, 40.0), (&a, 1e16)]
            .into_iter()
            .enumerate()
            .map(|(i, (k, value))| Point {
                series: k.clone(),
                ts_ns: i as i64 - 1,
                value,
            })
            .collect();
        let (mut one, mut each) = (String::new(), String::new());
        write_lines(&mut one, &points);
        for p in &points {
            write_line(&mut each, p);
        }
        assert_eq!(one, each);
        assert_eq!(
            one,
            "env,site=lab\\ 1 temp=1.0 -1\nenv,site=lab\\ 1 temp=-2.5 0\nenv hum=40.0 1\nenv,site=lab\\ 1 temp=1e16 2\n"
        );
    }

    proptest::proptest! {
        /// Whatever the value, the text reads back as the very same f64.
        #[test]
        fn values_round_trip(bits in proptest::prelude::any::<u64>()) {
            let value = f64::from_bits(bits);
            proptest::prop_assume!(value.is_finite());
            let mut s = String::new();
            write_line(&mut s, &Point { series: SeriesKey::new("m", [], "f"), ts_ns: 0, value });
            let text = s.strip_prefix("m f=").unwrap().strip_suffix(" 0\n").unwrap();
            proptest::prop_assert_eq!(text.parse::<f64>().unwrap().to_bits(), value.to_bits());
        }
    }
}
