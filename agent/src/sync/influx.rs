//! InfluxDB 1.x line protocol over HTTP `/write` (also VictoriaMetrics, Telegraf).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;

use super::{Sink, SinkError};
use crate::config::InfluxSinkConfig;
use crate::point::Point;

/// A `/write` endpoint.
pub struct InfluxSink {
    client: reqwest::Client,
    write_url: reqwest::Url,
    query_url: reqwest::Url,
    db: String,
    auth: Option<(String, Option<String>)>,
}

impl InfluxSink {
    /// Builds the HTTP client from the sink's settings.
    pub fn new(cfg: &InfluxSinkConfig) -> anyhow::Result<InfluxSink> {
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("tidegate/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).with_context(|| {
                format!("sink {}: cannot read ca_file {}", cfg.name, ca.display())
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("sink {}: ca_file {} is not PEM", cfg.name, ca.display())
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().context("cannot build the HTTP client")?;
        let base = reqwest::Url::parse(&cfg.url)
            .with_context(|| format!("sink {}: bad url {}", cfg.name, cfg.url))?;
        let mut write_url = base.join("write")?;
        {
            let mut q = write_url.query_pairs_mut();
            q.append_pair("db", &cfg.db).append_pair("precision", "ns");
            if let Some(rp) = &cfg.rp {
                q.append_pair("rp", rp);
            }
        }
        Ok(InfluxSink {
            client,
            write_url,
            query_url: base.join("query")?,
            db: cfg.db.clone(),
            auth: cfg.username.clone().map(|u| (u, cfg.password.clone())),
        })
    }

    fn with_auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((u, p)) => req.basic_auth(u, p.as_ref()),
            None => req,
        }
    }

    /// Creates the database if it does not exist, as Telegraf does by default.
    async fn create_database(&self) -> Result<(), SinkError> {
        let q = format!("CREATE DATABASE \"{}\"", self.db.replace('"', "\\\""));
        let req = self.with_auth(self.client.post(self.query_url.clone()).form(&[("q", q)]));
        let resp = req.send().await.map_err(transport)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SinkError::Retryable {
                reason: format!(
                    "database {} does not exist and cannot be created ({}); create it or grant the user the right",
                    self.db,
                    resp.status()
                ),
                retry_after: None,
            })
        }
    }
}

/// Appends one point as a line of line protocol.
pub fn write_line(out: &mut String, p: &Point) {
    let (series, field) = p.series.split();
    // Debug of f64 is the shortest exact round-trip form, with an exponent for
    // very large or small values (Display would print hundreds of digits);
    // no `i` suffix keeps every field a float.
    let _ = writeln!(out, "{series} {field}={:?} {}", p.value, p.ts_ns);
}

fn transport(e: reqwest::Error) -> SinkError {
    SinkError::Retryable {
        reason: format!("request failed: {e}"),
        retry_after: None,
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl Sink for InfluxSink {
    fn encode(&self, points: &[Point]) -> Vec<u8> {
        let mut s = String::with_capacity(points.len() * 64);
        for p in points {
            write_line(&mut s, p);
        }
        s.into_bytes()
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), SinkError> {
        // After CREATE DATABASE, InfluxDB may answer "database not found" for a
        // moment longer: a few quick retries keep that from looking like an outage.
        const CREATE_RETRIES: u32 = 40;
        for attempt in 0..=CREATE_RETRIES {
            let req = self.with_auth(self.client.post(self.write_url.clone()).body(body.clone()));
            let resp = req.send().await.map_err(transport)?;
            let status = resp.status();
            if status.is_success() {
                return Ok(());
            }
            let after = retry_after(&resp);
            let text = resp.text().await.unwrap_or_default();
            if status == StatusCode::NOT_FOUND
                && text.contains("database not found")
                && attempt < CREATE_RETRIES
            {
                if attempt == 0 {
                    self.create_database().await?;
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
            let reason = format!("HTTP {status}: {}", text.trim());
            return Err(match status {
                StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
                    SinkError::Retryable {
                        reason,
                        retry_after: after,
                    }
                }
                // 401/403/404 are configuration errors: keep the data and retry,
                // the operator fixes the credentials or the URL.
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                    SinkError::Retryable {
                        reason: format!("{reason}; check the sink's url, db and credentials"),
                        retry_after: None,
                    }
                }
                s if s.is_client_error() => SinkError::Permanent { reason },
                _ => SinkError::Retryable {
                    reason,
                    retry_after: after,
                },
            });
        }
        unreachable!("the loop returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::SeriesKey;

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
}
