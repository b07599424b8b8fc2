//! Real servers for the suites, one instance per test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::free_port;

/// A point as InfluxDB returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Series key in line-protocol form: `measurement,tag=v field`, tags sorted.
    pub series: String,
    /// Nanoseconds since the epoch.
    pub ts_ns: i64,
    /// The value.
    pub value: f64,
}

/// An `influxd` (Debian's `influxdb`, 1.x) on free loopback ports.
pub struct Influxd {
    child: Option<Child>,
    dir: TempDir,
    http_port: u16,
    http: reqwest::blocking::Client,
}

impl Influxd {
    /// Starts a fresh instance and waits until `/ping` answers.
    pub fn start() -> Influxd {
        let dir = tempfile::Builder::new()
            .prefix("influxd-")
            .tempdir()
            .unwrap();
        let http_port = free_port();
        let rpc_port = free_port();
        let d = dir.path().display();
        let conf = format!(
            r#"bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  max-row-limit = 0
[logging]
  level = "warn"
"#
        );
        std::fs::write(dir.path().join("influxdb.conf"), conf).unwrap();
        let mut db = Influxd {
            child: None,
            dir,
            http_port,
            http: reqwest::blocking::Client::new(),
        };
        db.start_again();
        db
    }

    /// Starts the same instance again (same ports, same data), after [`Influxd::stop`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "influxd is already running");
        let log = std::fs::File::create(self.dir.path().join("influxd.log")).unwrap();
        let child = Command::new("influxd")
            .arg("-config")
            .arg(self.dir.path().join("influxdb.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn influxd (apt-get install influxdb; scripts/test does)");
        self.child = Some(child);
        let ping = format!("{}/ping", self.url());
        let log = self.dir.path().join("influxd.log");
        let http = self.http.clone();
        let ready = (0..800).any(|_| {
            if http
                .get(&ping)
                .send()
                .is_ok_and(|r| r.status().as_u16() == 204)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(25));
            false
        });
        assert!(
            ready,
            "influxd did not answer /ping within 20 s; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// Kills the server (as a crash or a network cut would), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The data directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Runs an InfluxQL query, returning the JSON answer (timestamps in ns).
    pub fn query(&self, db: &str, q: &str) -> serde_json::Value {
        self.http
            .post(format!("{}/query", self.url()))
            .form(&[("db", db), ("q", q), ("epoch", "ns")])
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("query {q:?}: {e}"))
    }

    /// Every point of `measurement`, one [`Row`] per non-null field value.
    pub fn points(&self, db: &str, measurement: &str) -> Vec<Row> {
        let v = self.query(db, &format!("SELECT * FROM \"{measurement}\" GROUP BY *"));
        let mut out = Vec::new();
        let Some(series) = v["results"][0]["series"].as_array() else {
            return out;
        };
        for s in series {
            let mut tags: Vec<(String, String)> = s["tags"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, v)| v.as_str().is_some_and(|s| !s.is_empty()))
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            tags.sort();
            let prefix: String = std::iter::once(measurement.to_string())
                .chain(tags.iter().map(|(k, v)| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(",");
            let columns: Vec<&str> = s["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            for row in s["values"].as_array().unwrap() {
                let row = row.as_array().unwrap();
                let ts = row[0].as_i64().unwrap();
                for (i, col) in columns.iter().enumerate().skip(1) {
                    if let Some(x) = row[i].as_f64() {
                        out.push(Row {
                            series: format!("{prefix} {col}"),
                            ts_ns: ts,
                            value: x,
                        });
                    }
                }
            }
        }
        out
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        self.stop();
    }
}
