//! `victoria-metrics` from Debian's package (single-node 1.79), one instance
//! per test: InfluxDB line protocol on `/write` and `/api/v2/write`,
//! Prometheus remote write on `/api/v1/write`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

use crate::process::{launch_http, program, start_on_free_port, ChildGuard};
use crate::Sample;

/// A VictoriaMetrics on a free loopback port with its own temporary data
/// directory. Killed when dropped.
pub struct Victoria {
    child: Option<ChildGuard>,
    dir: TempDir,
    port: u16,
    http: reqwest::blocking::Client,
    /// Extra command-line flags, kept for [`Victoria::start_again`].
    args: Vec<String>,
}

impl Victoria {
    /// Starts a fresh instance and returns once `GET /health` answers 200.
    pub fn start() -> Victoria {
        Victoria::start_with(&[])
    }

    /// [`Victoria::start`] with extra command-line flags (e.g.
    /// `-dedup.minScrapeInterval=1ms`), also used by [`Victoria::start_again`].
    pub fn start_with(args: &[&str]) -> Victoria {
        let dir = tempfile::Builder::new()
            .prefix("victoria-")
            .tempdir()
            .expect("create a temporary directory");
        let mut vm = Victoria {
            child: None,
            dir,
            port: 0,
            http: crate::http_client(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        let log = vm.log_file();
        let (child, port) = start_on_free_port("victoria-metrics", &log, |port| {
            vm.port = port;
            vm.launch()
        });
        vm.child = Some(child);
        vm.port = port;
        vm
    }

    /// Starts the instance again after [`Victoria::stop`]: same port, same data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "victoria-metrics is already running");
        match self.launch() {
            Ok(c) => self.child = Some(c),
            Err(e) => crate::process::fail(&e, &self.log_file()),
        }
    }

    /// Stops the server as an operator would (SIGTERM: it flushes what it
    /// acknowledged) and waits for it to exit, keeping its data.
    pub fn shutdown(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::shut_down(&mut c, &self.log_file());
        }
    }

    /// Kills the server (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// `http://127.0.0.1:PORT`: the base URL of the line-protocol endpoints.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The remote-write endpoint, `<url>/api/v1/write`.
    pub fn remote_write_url(&self) -> String {
        format!("{}/api/v1/write", self.url())
    }

    /// The server's log.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("victoria-metrics.log")
    }

    /// Every raw sample of the series matching `selector` (e.g.
    /// `{__name__=~"sim_.*",db="lp"}`), duplicates included, sorted: makes
    /// what was ingested searchable (`/internal/force_flush`), then reads it
    /// with `/api/v1/export`.
    pub fn samples(&self, selector: &str) -> Vec<Sample> {
        let flush = format!("{}/internal/force_flush", self.url());
        let r = self.http.get(&flush).send();
        assert!(
            r.as_ref().is_ok_and(|r| r.status().is_success()),
            "GET {flush}: {r:?}"
        );
        let text = self
            .http
            .post(format!("{}/api/v1/export", self.url()))
            .form(&[("match[]", selector)])
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("export {selector}: {e}"));
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("export line {line:?}: {e}"));
            let labels = crate::labels(&v["metric"]);
            let ts = v["timestamps"].as_array().expect("timestamps");
            let values = v["values"].as_array().expect("values");
            assert_eq!(ts.len(), values.len(), "{line}");
            for (t, x) in ts.iter().zip(values) {
                let t = t.as_i64().expect("a timestamp in ms");
                let x = x.as_f64().expect("a finite value");
                out.push((labels.clone(), t, x.to_bits()));
            }
        }
        out.sort();
        out
    }

    fn launch(&self) -> Result<ChildGuard, String> {
        launch_http(
            "victoria-metrics",
            Command::new(program("victoria-metrics", "victoria-metrics"))
                .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
                .arg(format!(
                    "-storageDataPath={}",
                    self.dir.path().join("data").display()
                ))
                // It drops points older than its retention without a word.
                .arg("-retentionPeriod=100y")
                // Fresh samples are visible to queries at once.
                .arg("-search.latencyOffset=0s")
                .arg("-loggerLevel=WARN")
                .args(&self.args),
            &self.log_file(),
            &self.http,
            &format!("{}/health", self.url()),
            200,
        )
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        self.stop();
    }
}
