//! `prometheus` from Debian's package (2.42) as a remote-write receiver, one
//! instance per test.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

use crate::process::{launch_http, program, start_on_free_port, ChildGuard};
use crate::Sample;

/// A Prometheus on a free loopback port that scrapes nothing and accepts
/// remote write, with its own temporary TSDB directory. Killed when dropped.
pub struct Prometheus {
    _child: ChildGuard,
    dir: TempDir,
    port: u16,
    http: reqwest::blocking::Client,
}

impl Prometheus {
    /// Starts a fresh instance and returns once `GET /-/ready` answers 200.
    pub fn start() -> Prometheus {
        Prometheus::start_with("scrape_configs: []\n")
    }

    /// A fresh instance that also scrapes `target` (`host:port`, path
    /// `/metrics`) every second, as job `tidegate`.
    pub fn start_scraping(target: &str) -> Prometheus {
        Prometheus::start_with(&format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tidegate\n    static_configs:\n      - targets: ['{target}']\n"
        ))
    }

    fn start_with(config_text: &str) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir()
            .expect("create a temporary directory");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text).expect("write prometheus.yml");
        let http = crate::http_client();
        let log = dir.path().join("prometheus.log");
        let (child, port) = start_on_free_port("prometheus", &log, |port| {
            launch_http(
                "prometheus",
                Command::new(program("prometheus", "prometheus"))
                    .arg("--web.enable-remote-write-receiver")
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.path().join("data").display()
                    ))
                    .arg(format!("--config.file={}", config.display()))
                    .arg("--log.level=warn"),
                &log,
                &http,
                &format!("http://127.0.0.1:{port}/-/ready"),
                200,
            )
        });
        Prometheus {
            _child: child,
            dir,
            port,
            http,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The remote-write endpoint, `<url>/api/v1/write`.
    pub fn remote_write_url(&self) -> String {
        format!("{}/api/v1/write", self.url())
    }

    /// The server's log.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    /// The result vector of the instant query `expr` evaluated now.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let v: Value = self
            .http
            .post(format!("{}/api/v1/query", self.url()))
            .form(&[("query", expr)])
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("query {expr}: {e}"));
        assert_eq!(v["status"], "success", "query {expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every sample of the last hour of the series matching `selector`
    /// (e.g. `{__name__=~"sim_.*"}`), sorted: the range query
    /// `selector[1h]` evaluated now.
    pub fn samples(&self, selector: &str) -> Vec<Sample> {
        let query = format!("{selector}[1h]");
        let v: Value = self
            .http
            .post(format!("{}/api/v1/query", self.url()))
            .form(&[("query", query.as_str())])
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("query {query}: {e}"));
        assert_eq!(v["status"], "success", "query {query}: {v}");
        let mut out = Vec::new();
        for series in v["data"]["result"].as_array().expect("a matrix") {
            let labels = crate::labels(&series["metric"]);
            for pair in series["values"].as_array().into_iter().flatten() {
                // [seconds as a float with millisecond precision, "value"]
                let secs = pair[0].as_f64().expect("a timestamp");
                let value: f64 = pair[1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("a value as a string");
                out.push((
                    labels.clone(),
                    (secs * 1000.0).round() as i64,
                    value.to_bits(),
                ));
            }
        }
        out.sort();
        out
    }
}
