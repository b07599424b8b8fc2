//! `influxd` from Debian's `influxdb` package (1.6.7), one instance per test.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::free_port;
use crate::process::{self, launch_http, port_taken, program, ChildGuard};

/// One field value of a point as InfluxDB returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Series key in line-protocol form, `measurement,tagA=x,tagB=y field`:
    /// tags sorted by key, empty tags left out, `,`, `=`, ` ` and `\` escaped
    /// with `\` (`,` and ` ` only in the measurement), as the agent spells it.
    pub series: String,
    /// Nanoseconds since the epoch.
    pub ts_ns: i64,
    /// The value (integers are converted; strings and booleans are skipped).
    pub value: f64,
}

/// An `influxd` (1.x) on free loopback ports with its own temporary
/// directory (meta, data, WAL, config, log). Killed when dropped.
pub struct Influxd {
    child: Option<ChildGuard>,
    dir: TempDir,
    http_port: u16,
    http: reqwest::blocking::Client,
    /// Serving HTTPS with a certificate of a CA generated for the test.
    tls: bool,
}

impl Influxd {
    /// Starts a fresh instance and returns once `GET /ping` answers 204.
    /// Retries with new ports if one was taken meanwhile.
    pub fn start() -> Influxd {
        Self::start_with(false)
    }

    /// Like [`Influxd::start`], serving HTTPS only, with a server certificate
    /// for 127.0.0.1 signed by a CA generated for the test ([`Influxd::ca_file`]).
    pub fn start_tls() -> Influxd {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Influxd {
        let dir = tempfile::Builder::new()
            .prefix("influxd-")
            .tempdir()
            .expect("create a temporary directory");
        let mut http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60));
        if tls {
            crate::mosquitto::make_certs(dir.path());
            let pem = std::fs::read(dir.path().join("ca.crt")).expect("read ca.crt");
            http = http.add_root_certificate(
                reqwest::Certificate::from_pem(&pem).expect("the generated CA is PEM"),
            );
        }
        let http = http.build().expect("an HTTP client");
        let mut db = Influxd {
            child: None,
            dir,
            http_port: 0,
            http,
            tls,
        };
        for attempt in 1.. {
            db.http_port = free_port();
            db.write_config(free_port());
            match db.launch() {
                Ok(()) => break,
                Err(e) if attempt < 3 && db.port_taken() => {
                    eprintln!("influxd: {e}; retrying with other ports");
                }
                Err(e) => db.fail(&e),
            }
        }
        db
    }

    /// Starts the instance again after [`Influxd::stop`]: same ports, same
    /// data. Returns once `GET /ping` answers 204.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "influxd is already running");
        if let Err(e) = self.launch() {
            self.fail(&e);
        }
    }

    /// Kills the server (SIGKILL, as a crash or power cut would) and reaps it,
    /// keeping its data. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Stops the server as an operator would (SIGTERM) and waits for it to
    /// exit, keeping its data.
    pub fn shutdown(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::process::shut_down(&mut c, &self.log_file());
        }
    }

    /// Whether the server process is running (it was started and has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().is_none())
    }

    /// The server process, while it runs (e.g. to send it a signal).
    pub fn process(&mut self) -> Option<&mut ChildGuard> {
        self.child.as_mut()
    }

    /// `http://127.0.0.1:PORT`, the HTTP API.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.http_port)
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.http_port
    }

    /// The temporary directory (config, log, `meta/`, `data/`, `wal/`).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The server's log (stdout and stderr of every start).
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("influxd.log")
    }

    /// `CREATE DATABASE "name"` (a no-op if it exists); panics on an error.
    pub fn create_db(&self, name: &str) {
        let q = format!("CREATE DATABASE {}", quote_ident(name));
        let v: Value = self
            .http
            .post(format!("{}/query", self.url()))
            .form(&[("q", q.as_str())])
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        if let Some(e) = first_error(&v) {
            panic!("{q}: {e}");
        }
    }

    /// Writes line protocol with nanosecond timestamps to `db` (`POST
    /// /write?precision=ns`); panics unless InfluxDB answers 204.
    pub fn write(&self, db: &str, lines: &str) {
        let r = self
            .http
            .post(format!("{}/write", self.url()))
            .query(&[("db", db), ("precision", "ns")])
            .body(lines.to_string())
            .send()
            .unwrap_or_else(|e| panic!("write to {db}: {e}"));
        let status = r.status();
        assert!(
            status.as_u16() == 204,
            "write to {db}: {status}: {}",
            r.text().unwrap_or_default()
        );
    }

    /// Runs an InfluxQL query (`GET /query?epoch=ns`) and returns the JSON
    /// answer as is (errors are in it, not raised).
    pub fn query(&self, db: &str, q: &str) -> Value {
        self.http
            .get(format!("{}/query", self.url()))
            .query(&[("db", db), ("q", q), ("epoch", "ns")])
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("query {q:?}: {e}"))
    }

    /// Every point of `measurement` in `db`, one [`Row`] per non-null numeric
    /// field value, sorted by series key then time. Empty if the database or
    /// the measurement does not exist (yet); panics on other query errors.
    pub fn points(&self, db: &str, measurement: &str) -> Vec<Row> {
        let q = format!("SELECT * FROM {} GROUP BY *", quote_ident(measurement));
        let v = self.query(db, &q);
        let mut out = Vec::new();
        for s in series(&v, &q) {
            let mut tags: Vec<(&str, &str)> = s["tags"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                        .filter(|(_, v)| !v.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            tags.sort();
            let mut prefix = escape(measurement, &[',', ' ']);
            for (k, v) in tags {
                prefix.push(',');
                prefix.push_str(&escape(k, &[',', '=', ' ']));
                prefix.push('=');
                prefix.push_str(&escape(v, &[',', '=', ' ']));
            }
            let columns = columns(s);
            for row in s["values"].as_array().into_iter().flatten() {
                let row = row.as_array().expect("a row is an array");
                let ts_ns = row[0].as_i64().expect("time in ns");
                for (col, x) in columns.iter().zip(row).skip(1) {
                    if let Some(value) = x.as_f64() {
                        out.push(Row {
                            series: format!("{prefix} {}", escape(col, &[',', '=', ' '])),
                            ts_ns,
                            value,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.series, a.ts_ns).cmp(&(&b.series, b.ts_ns)));
        out
    }

    /// How many non-null field values `measurement` holds in `db` (0 if the
    /// database or the measurement does not exist); `SELECT COUNT(*)`.
    pub fn count(&self, db: &str, measurement: &str) -> usize {
        let q = format!("SELECT COUNT(*) FROM {}", quote_ident(measurement));
        let v = self.query(db, &q);
        series(&v, &q)
            .iter()
            .flat_map(|s| s["values"].as_array().into_iter().flatten())
            .filter_map(|row| row.as_array())
            .flat_map(|row| row.iter().skip(1))
            .filter_map(Value::as_u64)
            .sum::<u64>() as usize
    }

    /// The CA that signed the HTTPS certificate (only after [`Influxd::start_tls`]).
    pub fn ca_file(&self) -> PathBuf {
        assert!(self.tls, "influxd was started without TLS");
        self.dir.path().join("ca.crt")
    }

    fn write_config(&self, rpc_port: u16) {
        let d = self.dir.path().display();
        let http_port = self.http_port;
        let https = if self.tls {
            format!(
                "https-enabled = true\n  https-certificate = \"{d}/server.crt\"\n  https-private-key = \"{d}/server.key\""
            )
        } else {
            String::new()
        };
        // Keys checked against `influxd config` of Debian's 1.6.7~rc0. Its
        // build reads `reporting-enabled` (default false) instead of
        // upstream's `reporting-disabled`; unknown keys are ignored, so both.
        let conf = format!(
            r#"reporting-enabled = false
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{d}/meta"
  logging-enabled = false

[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false

[retention]
  enabled = false

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  suppress-write-log = true
  pprof-enabled = false
  max-row-limit = 0
  {https}

[continuous_queries]
  enabled = false
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
"#
        );
        std::fs::write(self.config_file(), conf).expect("write influxdb.conf");
    }

    fn config_file(&self) -> PathBuf {
        self.dir.path().join("influxdb.conf")
    }

    /// Spawns `influxd` and waits for `/ping`; on failure the child is killed.
    fn launch(&mut self) -> Result<(), String> {
        let child = launch_http(
            "influxd",
            Command::new(program("influxd", "influxdb"))
                .arg("-config")
                .arg(self.config_file()),
            &self.log_file(),
            &self.http,
            &format!("{}/ping", self.url()),
            204,
        )?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the last start failed because a port was taken meanwhile.
    fn port_taken(&self) -> bool {
        port_taken(&self.log_file())
    }

    fn fail(&self, e: &str) -> ! {
        process::fail(e, &self.log_file())
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `"name"` with `"` and `\` escaped, for InfluxQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `s` with `\` and the `special` characters escaped, as line protocol does.
fn escape(s: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' || special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The error of a query answer (top level or first statement), if any.
fn first_error(v: &Value) -> Option<&str> {
    v["error"]
        .as_str()
        .or_else(|| v["results"][0]["error"].as_str())
}

/// The series of the first statement's result; empty when the database does
/// not exist; panics on other errors.
fn series<'a>(v: &'a Value, q: &str) -> &'a [Value] {
    match first_error(v) {
        Some(e) if e.starts_with("database not found") => &[],
        Some(e) => panic!("query {q:?}: {e}"),
        None => v["results"][0]["series"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    }
}

/// The column names of a series.
fn columns(s: &Value) -> Vec<&str> {
    s["columns"]
        .as_array()
        .expect("a series has columns")
        .iter()
        .map(|c| c.as_str().expect("a column name"))
        .collect()
}

/// The raw series a rollup row (of InfluxDB) stands for, and its field suffix:
/// `sim,sensor=s01,site=lab,tidegate_resolution=10s temp_count` →
/// (`sim,sensor=s01,site=lab temp`, `_count`).
pub fn rollup_of(series: &str) -> (String, &'static str) {
    let (head, field) = series.rsplit_once(' ').unwrap();
    let mut parts = head.split(',');
    let measurement = parts.next().unwrap();
    let mut tags: Vec<&str> = parts
        .filter(|t| !t.starts_with("tidegate_resolution="))
        .collect();
    tags.sort();
    tags.insert(0, measurement);
    for suffix in ["_count", "_min", "_max"] {
        if let Some(f) = field.strip_suffix(suffix) {
            return (format!("{} {f}", tags.join(",")), suffix);
        }
    }
    (format!("{} {field}", tags.join(",")), "")
}
