//! The two binaries under test: `firmware-sim` playing a sensor board on a PTY,
//! and `tidegate run` reading it. Both are killed when dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use firmware_sim::LedgerEntry;
use tidegate::ops::Status;
use tidegate::point::SeriesKey;

use crate::{bin, wait_until, Sample};

/// A running `firmware-sim` with its PTY linked at `<dir>/tty`.
pub struct Sim {
    child: Child,
    lines: mpsc::Receiver<String>,
    ledger: PathBuf,
}

impl Sim {
    /// Starts the simulator with extra `args`; returns once its PTY exists.
    pub fn start(dir: &Path, args: &[&str]) -> Sim {
        Sim::start_as(dir, &[], args)
    }

    /// [`Sim::start`] for a subcommand that plays on a PTY too
    /// (`["modbus"]`): `firmware-sim SUBCOMMAND --link <dir>/tty --ledger ... ARGS`.
    pub fn start_as(dir: &Path, subcommand: &[&str], args: &[&str]) -> Sim {
        let ledger = dir.join("ledger.jsonl");
        let (child, lines) = spawn_with_lines(
            Command::new(bin("firmware-sim"))
                .args(subcommand)
                .arg("--link")
                .arg(dir.join("tty"))
                .arg("--ledger")
                .arg(&ledger)
                .args(args),
        );
        let sim = Sim {
            child,
            lines,
            ledger,
        };
        let first = sim
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("firmware-sim prints its PTY path first");
        assert!(
            first.starts_with("/dev/"),
            "unexpected first line {first:?}"
        );
        sim
    }

    /// Waits until the simulator says it has sent everything.
    pub fn wait_done(&self, timeout: Duration) -> String {
        wait_done(&self.lines, timeout)
    }

    /// Every line the simulator sent, with its fate.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        firmware_sim::read_ledger(&self.ledger).expect("read the ledger")
    }

    /// The ledger a simulator left in `dir`.
    pub fn read_ledger_at(dir: &Path) -> Vec<LedgerEntry> {
        firmware_sim::read_ledger(&dir.join("ledger.jsonl")).expect("read the ledger")
    }
}

impl Drop for Sim {
    /// SIGTERM, so the simulator flushes its ledger, then wait.
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// The readings a ledger promises: (sensor, ts ms, field, value).
fn valid_readings(ledger: &[LedgerEntry]) -> impl Iterator<Item = (&str, i64, &str, f64)> {
    ledger.iter().filter(|e| e.valid).flat_map(|e| {
        let sensor = e.sensor.as_deref().expect("valid entries name the sensor");
        let ts = e.ts.expect("valid entries have ts");
        e.fields
            .iter()
            .flatten()
            .map(move |(field, value)| (sensor, ts, field.as_str(), *value))
    })
}

/// Spawns `cmd` with its stdout read line by line on a thread.
fn spawn_with_lines(cmd: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn firmware-sim");
    let (tx, lines) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

/// Waits for the simulator's `done ...` line.
fn wait_done(lines: &mpsc::Receiver<String>, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.starts_with("done") => return l,
            Ok(_) => continue,
            Err(e) => panic!("firmware-sim did not finish within {timeout:?}: {e}"),
        }
    }
}

/// SIGTERM, so the simulator flushes its ledger, then wait.
fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

/// A running `firmware-sim fleet`: devices on PTYs linked at `<dir>/<name>`,
/// MQTT publishers, each with its ledger `<dir>/<name>.jsonl`.
pub struct FleetSim {
    child: Child,
    lines: mpsc::Receiver<String>,
    dir: PathBuf,
}

impl FleetSim {
    /// Starts `firmware-sim fleet --dir DIR ARGS`.
    pub fn start(dir: &Path, args: &[&str]) -> FleetSim {
        let (child, lines) = spawn_with_lines(
            Command::new(bin("firmware-sim"))
                .args(["fleet", "--dir"])
                .arg(dir)
                .args(args),
        );
        FleetSim {
            child,
            lines,
            dir: dir.to_path_buf(),
        }
    }

    /// Waits until every device has sent its count (the totals line).
    pub fn wait_done(&self, timeout: Duration) -> String {
        wait_done(&self.lines, timeout)
    }

    /// The ledger of device `name` (`kv`, `modbus`, `mqtt`, ...).
    pub fn ledger(&self, name: &str) -> Vec<LedgerEntry> {
        firmware_sim::read_ledger(&self.dir.join(format!("{name}.jsonl"))).expect("read the ledger")
    }
}

impl Drop for FleetSim {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// A running `firmware-sim mqtt` publishing to a broker, its ledger in
/// `<dir>/mqtt-ledger.jsonl`.
pub struct MqttSim {
    child: Child,
    lines: mpsc::Receiver<String>,
    ledger: PathBuf,
}

impl MqttSim {
    /// Starts `firmware-sim mqtt --url URL` with extra `args`.
    pub fn start(dir: &Path, url: &str, args: &[&str]) -> MqttSim {
        let ledger = dir.join("mqtt-ledger.jsonl");
        let (child, lines) = spawn_with_lines(
            Command::new(bin("firmware-sim"))
                .args(["mqtt", "--url", url, "--ledger"])
                .arg(&ledger)
                .args(args),
        );
        MqttSim {
            child,
            lines,
            ledger,
        }
    }

    /// Waits until the broker has acknowledged every message.
    pub fn wait_done(&self, timeout: Duration) -> String {
        wait_done(&self.lines, timeout)
    }

    /// Every reading (or garbage message) sent, with its fate.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        firmware_sim::read_ledger(&self.ledger).expect("read the ledger")
    }
}

impl Drop for MqttSim {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// Every raw point in the store under `<dir>/state`, read with `tidegate
/// query` (while the agent runs, or after): (series, ts ns, value bits).
pub fn stored_raw(dir: &Path) -> Vec<(String, i64, u64)> {
    query_json(
        dir,
        &[
            "--tier",
            "raw",
            "--from",
            "1970-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
        ],
    )
    .iter()
    .map(|v| {
        (
            v["series"].as_str().unwrap().to_string(),
            v["ts_ns"].as_i64().unwrap(),
            v["value"].as_f64().unwrap().to_bits(),
        )
    })
    .collect()
}

/// `tidegate query --format json ARGS` on the store under `<dir>/state`: one
/// value a line of its output.
fn query_json(dir: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(bin("tidegate"))
        .args(["query", "--format", "json"])
        .args(args)
        .arg("--store")
        .arg(dir.join("state/store.db"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "query {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Rows of the dead-letter table per source of the store under
/// `<dir>/state`, read with `tidegate query --dead-letters`.
pub fn dead_letters(dir: &Path) -> BTreeMap<String, u64> {
    let mut per_source = BTreeMap::new();
    for v in query_json(dir, &["--dead-letters", "--limit", "1000000"]) {
        *per_source
            .entry(v["source"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    per_source
}

/// The series key of an MQTT device's `field`, as the subscription
/// `sensors/+site/+device/#field` binds it, under `measurement`.
pub fn mqtt_series(e: &LedgerEntry, measurement: &str, field: &str) -> String {
    let site = e.site.as_deref().expect("the MQTT ledger names the site");
    let device = e.sensor.as_deref().expect("and the device");
    SeriesKey::new(measurement, [("site", site), ("device", device)], field)
        .as_str()
        .to_string()
}

/// What an MQTT ledger of bare numbers promises: (series, value bits) as a
/// multiset (the agent stamps each on arrival, so no time to compare), and
/// the number of messages they came in (one a field).
pub fn mqtt_values(ledger: &[LedgerEntry]) -> (BTreeMap<(String, u64), u64>, u64) {
    let mut want: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let mut messages = 0;
    for e in ledger.iter().filter(|e| e.valid) {
        for (field, v) in e.fields.iter().flatten() {
            *want
                .entry((mqtt_series(e, "env", field), v.to_bits()))
                .or_default() += 1;
            messages += 1;
        }
    }
    (want, messages)
}

/// The points a ledger promises, as (series key, ts ns, value bits).
pub fn expected_points(
    ledger: &[LedgerEntry],
    measurement: &str,
    tags: &[(&str, &str)],
) -> BTreeSet<(String, i64, u64)> {
    let mut out = BTreeSet::new();
    for (sensor, ts, field, value) in valid_readings(ledger) {
        let mut all: Vec<(&str, &str)> = tags.to_vec();
        all.push(("sensor", sensor));
        let key = SeriesKey::new(measurement, all, field);
        out.insert((key.as_str().to_string(), ts * 1_000_000, value.to_bits()));
    }
    out
}

/// The samples a ledger promises in a Prometheus-style database, sorted:
/// metric `<measurement>_<field>`, labels `sensor` and `tags` (names and
/// values that need no sanitising), time in ms.
pub fn expected_samples(
    ledger: &[LedgerEntry],
    measurement: &str,
    tags: &[(&str, &str)],
) -> Vec<Sample> {
    let mut out: Vec<Sample> = valid_readings(ledger)
        .map(|(sensor, ts, field, value)| {
            let mut labels: BTreeMap<String, String> = tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            labels.insert("sensor".into(), sensor.into());
            labels.insert("__name__".into(), format!("{measurement}_{field}"));
            (labels, ts, value.to_bits())
        })
        .collect();
    out.sort();
    out
}

/// An agent's configuration for a test in `dir`: state in `<dir>/state`,
/// flushes every 200 ms; with `Some(site)`, the simulator's PTY
/// (`<dir>/tty`) as measurement `sim`, tagged `site`; then `sinks` (TOML).
pub fn sim_config(dir: &Path, site: Option<&str>, sinks: &str) -> String {
    sim_config_with(dir, site, "seal_interval = \"2s\"", sinks)
}

/// [`sim_config`] with `store` (TOML lines) in the `[store]` section.
pub fn sim_config_with(dir: &Path, site: Option<&str>, store: &str, sinks: &str) -> String {
    let mut c = format!(
        r#"
[agent]
state_dir = "{state}"
shutdown_timeout = "15s"

[store]
flush_interval = "200ms"
{store}
"#,
        state = dir.join("state").display(),
    );
    if let Some(site) = site {
        c += &format!(
            r#"
[[sources.serial]]
name = "sim"
port = "{tty}"
measurement = "sim"
tags = {{ site = "{site}" }}
required_keys = ["sensor", "ts"]
tag_keys = ["sensor"]
port_tag = false
"#,
            tty = dir.join("tty").display(),
        );
    }
    c + sinks
}

/// A running `tidegate run`.
pub struct Agent {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Writes `config` next to the state and starts the agent; returns once its
    /// control socket answers. The state directory must be `<dir>/state`.
    pub fn start(dir: &Path, config: &str) -> Agent {
        Agent::start_with_env(dir, config, &[])
    }

    /// [`Agent::start`] with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Agent {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let cfg_path = dir.join(format!("agent-{n}.toml"));
        std::fs::write(&cfg_path, config).unwrap();
        let log = dir.join(format!("agent-{n}.log"));
        let child = Command::new(bin("tidegate"))
            .arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tidegate");
        let agent = Agent {
            child: Some(child),
            socket: dir.join("state").join("tidegate.sock"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.try_status().is_none() {
            assert!(
                Instant::now() < deadline,
                "the agent's control socket did not answer within 20 s; log:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn try_status(&self) -> Option<Status> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        // A request line; an agent of the first protocol answers without one.
        let _ = std::io::Write::write_all(&mut s, b"status\n");
        let mut buf = Vec::new();
        // Such an agent closes with our request unread, which resets the
        // connection after its answer: keep what arrived.
        let _ = s.read_to_end(&mut buf);
        serde_json::from_slice(&buf).ok()
    }

    /// The agent's live counters.
    pub fn status(&self) -> Status {
        self.try_status()
            .unwrap_or_else(|| panic!("agent status unavailable; log:\n{}", self.log()))
    }

    /// Waits until the feed has gone quiet and everything read is durable and
    /// sent: no source line for longer than a flush interval, every appended
    /// point flushed, every sink's backlog empty. For a test that compares the
    /// store with a sink once a simulator has finished: lines still in the PTY
    /// or a batch awaiting its flush would otherwise reach the sink after the
    /// store was read.
    pub fn wait_settled(&self, timeout: Duration) -> Status {
        let lines = |st: &Status| st.sources.iter().map(|s| s.lines).sum::<u64>();
        let mut quiet_since: Option<(Instant, u64)> = None;
        wait_until("the agent to settle", timeout, || {
            let st = self.status();
            let settled = st.store.points_appended == st.store.points_flushed
                && st.sinks.iter().all(|s| s.backlog_points == 0);
            let now = (Instant::now(), lines(&st) + st.store.points_appended);
            match quiet_since {
                Some((t, n)) if n == now.1 => {
                    (settled && t.elapsed() > Duration::from_millis(1500)).then_some(st)
                }
                _ => {
                    quiet_since = Some(now);
                    None
                }
            }
        })
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends SIGTERM, asserts a clean exit 0, returns the final counters it printed.
    pub fn terminate(mut self) -> Status {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "exit {status:?}; log:\n{}", self.log());
        let last = out.lines().last().unwrap_or_default();
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("final status line {last:?}: {e}; log:\n{}", self.log()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
