//! The parts a whole-process bench starts: a mosquitto of its own, the feeder
//! (`firmware-sim mqtt`), a Tidegate agent (`tidegate run`), collectd; and
//! what is read from them: usage from `/proc`, the feeder's ledger, what each
//! system stored.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::store::Cursor;

/// What the kernel counts for one process, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// Peak resident set (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// Anonymous resident memory now (`RssAnon`: heap, stacks), KiB; the
    /// rest of the RSS is file pages (the program's text, libraries),
    /// shared and reclaimable.
    pub anon_kib: u64,
    /// Bytes the process caused to be written to storage (`write_bytes`,
    /// less `cancelled_write_bytes`: pages truncated before writeback).
    pub write_bytes: u64,
}

impl Usage {
    /// The usage of process `pid` now; zeros for what cannot be read.
    pub fn of(pid: u32) -> Usage {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let io_field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Usage {
            cpu_s: crate::sync::bench::stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat"))),
            hwm_kib: crate::store::bench::proc_field(&format!("/proc/{pid}/status"), "VmHWM:")
                .unwrap_or(0),
            anon_kib: crate::store::bench::proc_field(&format!("/proc/{pid}/status"), "RssAnon:")
                .unwrap_or(0),
            write_bytes: io_field("write_bytes:")
                .saturating_sub(io_field("cancelled_write_bytes:")),
        }
    }

    /// What was used between `earlier` and `self` (the peak RSS is `self`'s).
    pub fn since(self, earlier: Usage) -> Usage {
        Usage {
            cpu_s: (self.cpu_s - earlier.cpu_s).max(0.0),
            hwm_kib: self.hwm_kib,
            anon_kib: self.anon_kib,
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
        }
    }
}

/// Bytes allocated on disk under `path` (as `du`: blocks, not lengths).
pub fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0)
}

/// A program found on `$PATH` or in the sbin directories (mosquitto and
/// collectd live in /usr/sbin, often not on a user's `$PATH`).
pub fn program(name: &str) -> PathBuf {
    let dirs = std::env::var("PATH").unwrap_or_default();
    let found = dirs
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| PathBuf::from(name))
}

/// A child process with its output in a log file; killed (and reaped) when
/// dropped, and when this process dies.
pub struct Proc {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stderr appended to `log` (`hint` says what to do
    /// if it cannot start).
    pub fn spawn(cmd: Command, what: &str, log: &Path, hint: &str) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        Proc::spawn_with(cmd, what, log, hint, out.into())
    }

    /// Starts `cmd` with stderr to `stderr`; `log` is where its log ends up.
    pub fn spawn_with(
        mut cmd: Command,
        what: &str,
        log: &Path,
        hint: &str,
        stderr: Stdio,
    ) -> anyhow::Result<Proc> {
        cmd.stdin(Stdio::null()).stderr(stderr);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what} ({hint})"))?;
        Ok(Proc {
            child,
            what: what.to_string(),
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its usage now.
    pub fn usage(&self) -> Usage {
        Usage::of(self.pid())
    }

    /// Fails, with the end of its log, if it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); the end of its log {}:\n{}",
                self.what,
                self.log.display(),
                self.tail()
            );
        }
        Ok(())
    }

    /// The last lines of its log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its stdout, if the caller piped it.
    fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 20 ms until it returns `Some`; fails naming `what` after
/// `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A mosquitto of our own on a free loopback port, logging subscriptions so
/// that a bench can wait for a subscriber before it publishes.
pub struct Broker {
    proc: Proc,
    port: u16,
    log: PathBuf,
    /// Its `max_inflight_messages`, which the agent is told (`broker_inflight`).
    inflight: usize,
}

impl Broker {
    /// Starts it in `dir` and waits until it accepts connections. The queue
    /// per client is unbounded (`max_queued_messages 0`): a slow subscriber
    /// falls behind instead of losing messages, so lag is what shows.
    pub fn start(dir: &Path, inflight: usize) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(dir)?;
        for attempt in 1.. {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let log = dir.join("mosquitto.log");
            let _ = std::fs::remove_file(&log);
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                     max_queued_messages 0\nmax_inflight_messages {inflight}\n\
                     log_type error\nlog_type warning\nlog_type subscribe\n\
                     log_dest file {}\n{}",
                    log.display(),
                    // As root mosquitto would switch to its own user, which
                    // may not write the log here.
                    if unsafe { libc::geteuid() } == 0 {
                        "user root\n"
                    } else {
                        ""
                    }
                ),
            )?;
            let mut cmd = Command::new(program("mosquitto"));
            cmd.arg("-c").arg(&conf).stdout(Stdio::null());
            let mut proc = Proc::spawn(
                cmd,
                "mosquitto",
                &dir.join("mosquitto.out"),
                "apt-get install mosquitto",
            )?;
            let up = wait_for("mosquitto to listen", Duration::from_secs(10), || {
                if proc.child.try_wait()?.is_some() {
                    return Ok(Some(false));
                }
                Ok(std::net::TcpStream::connect(("127.0.0.1", port))
                    .is_ok()
                    .then_some(true))
            })?;
            if up {
                return Ok(Broker {
                    proc,
                    port,
                    log,
                    inflight,
                });
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if attempt < 3 && text.contains("in use") {
                continue; // taken between our probe and its bind
            }
            bail!("mosquitto exited at start; its log:\n{text}{}", proc.tail());
        }
        unreachable!("the loop returns")
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Where its log ends now: [`Broker::wait_subscribed`] looks past it.
    pub fn log_mark(&self) -> usize {
        std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize)
    }

    /// Waits until the log shows `client_id` subscribed to `filter` after
    /// `mark` ([`Broker::log_mark`], taken before the subscriber started: an
    /// earlier subscriber with the same client id does not count): what is
    /// published before that never reaches a fresh session.
    pub fn wait_subscribed(
        &self,
        client_id: &str,
        filter: &str,
        subscriber: &mut Proc,
        mark: usize,
    ) -> anyhow::Result<()> {
        wait_for(
            &format!("{client_id}'s subscription to {filter}"),
            Duration::from_secs(30),
            || {
                subscriber.check_alive()?;
                let log = std::fs::read(&self.log).unwrap_or_default();
                let log = String::from_utf8_lossy(log.get(mark..).unwrap_or_default());
                Ok(log
                    .lines()
                    .any(|l| {
                        let mut w = l.split_whitespace().skip(1);
                        w.next() == Some(client_id) && w.nth(1) == Some(filter)
                    })
                    .then_some(()))
            },
        )
    }
}

/// The feed: how many points, how fast, in which payload.
#[derive(Clone, Debug)]
pub struct Feed {
    /// `firmware-sim mqtt --format`: `lp-field`, `lp` or `collectd`.
    pub format: &'static str,
    /// Series: devices × 2 fields (temp, hum).
    pub series: usize,
    /// Points per second over all series.
    pub rate: f64,
    /// Points in all (rounded down to whole readings of 2 fields).
    pub points: u64,
    /// First topic level.
    pub prefix: &'static str,
}

/// Fields per reading of the simulated devices (temp, hum).
pub const FIELDS: u64 = 2;

/// A running `firmware-sim mqtt`.
pub struct Feeder {
    proc: Proc,
    done: mpsc::Receiver<String>,
    ledger: PathBuf,
    started: Instant,
}

impl Feeder {
    /// Starts publishing `feed` to `broker`, the ledger in `dir`.
    pub fn start(program: &Path, broker: &Broker, feed: &Feed, dir: &Path) -> anyhow::Result<Self> {
        let ledger = dir.join("ledger.jsonl");
        let mut cmd = Command::new(program);
        cmd.arg("mqtt")
            .arg("--url")
            .arg(broker.url())
            .arg("--format")
            .arg(feed.format)
            .arg("--devices")
            .arg((feed.series as u64).div_ceil(FIELDS).to_string())
            .arg("--sites")
            .arg("4")
            .arg("--rate")
            .arg((feed.rate / FIELDS as f64).to_string())
            .arg("--count")
            .arg((feed.points / FIELDS).to_string())
            .arg("--garbage-rate")
            .arg("0")
            .arg("--prefix")
            .arg(feed.prefix)
            .arg("--client-id")
            .arg("bench-feeder")
            .arg("--ledger")
            .arg(&ledger)
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn(
            cmd,
            "firmware-sim",
            &dir.join("firmware-sim.log"),
            "cargo build --workspace --bins, or pass --firmware-sim PATH",
        )?;
        let started = Instant::now();
        let stdout = proc.take_stdout().context("firmware-sim's stdout")?;
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("done") {
                    let _ = tx.send(line);
                }
            }
        });
        Ok(Feeder {
            proc,
            done,
            ledger,
            started,
        })
    }

    /// Waits until the broker has acknowledged every message; returns the
    /// time from the start.
    pub fn wait_done(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.done.recv_timeout(Duration::from_millis(200)) {
                Ok(_) => return Ok(self.started.elapsed()),
                Err(mpsc::RecvTimeoutError::Timeout) => self.proc.check_alive()?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.proc.check_alive()?;
                    bail!("firmware-sim closed its stdout before `done`")
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "firmware-sim did not finish within {timeout:?}; its log:\n{}",
                    self.proc.tail()
                );
            }
        }
    }

    /// The feeder's process.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Stops it (the ledger is flushed) and reads the ledger.
    pub fn finish(mut self) -> anyhow::Result<Ledger> {
        self.proc.stop(Duration::from_secs(10))?;
        Ledger::read(&self.ledger)
    }
}

/// A point's series as both systems name it: site, device, field.
pub type SeriesId = (String, String, String);

/// What the feeder sent: per series, timestamp (ms) → value.
pub struct Ledger {
    series: HashMap<SeriesId, HashMap<i64, f64>>,
    /// Points sent.
    pub points: u64,
    /// The first and last timestamps, ms.
    pub span_ms: (i64, i64),
}

impl Ledger {
    fn read(path: &Path) -> anyhow::Result<Ledger> {
        let entries = firmware_sim::read_ledger(path)
            .with_context(|| format!("cannot read the ledger {}", path.display()))?;
        let mut series: HashMap<SeriesId, HashMap<i64, f64>> = HashMap::new();
        let (mut points, mut lo, mut hi) = (0, i64::MAX, i64::MIN);
        for e in entries.into_iter().filter(|e| e.valid) {
            let (Some(ts), Some(fields)) = (e.ts, e.fields) else {
                continue;
            };
            let site = e.site.unwrap_or_default();
            let device = e.sensor.unwrap_or_default();
            for (field, v) in fields {
                series
                    .entry((site.clone(), device.clone(), field))
                    .or_default()
                    .insert(ts, v);
                points += 1;
            }
            (lo, hi) = (lo.min(ts), hi.max(ts));
        }
        Ok(Ledger {
            series,
            points,
            span_ms: (lo, hi),
        })
    }
}

/// A system's books against the ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Points stored (rows, duplicates included).
    pub stored: u64,
    /// Points of the ledger found, with their value.
    pub found: u64,
    /// Points of the ledger not found.
    pub lost: u64,
    /// Stored more than once (same series and timestamp).
    pub duplicated: u64,
    /// Stored after a later point of the same series (in the order the
    /// system keeps them: collectd's CSV lines, the store's chunks).
    pub reordered: u64,
    /// Stored but not in the ledger, or with another value.
    pub wrong: u64,
}

impl Audit {
    /// Checks `stored` (per series, in stored order: timestamp ms, value)
    /// against `ledger`. Values match within `tolerance` (collectd's CSV
    /// prints six decimals).
    pub fn of(
        ledger: &Ledger,
        stored: &HashMap<SeriesId, Vec<(i64, f64)>>,
        tolerance: f64,
    ) -> Audit {
        let mut a = Audit::default();
        for (id, points) in stored {
            let sent = ledger.series.get(id);
            let mut seen: HashMap<i64, ()> = HashMap::with_capacity(points.len());
            let mut latest = i64::MIN;
            for &(ts, v) in points {
                a.stored += 1;
                if ts < latest {
                    a.reordered += 1;
                }
                latest = latest.max(ts);
                if seen.insert(ts, ()).is_some() {
                    a.duplicated += 1;
                    continue;
                }
                match sent.and_then(|s| s.get(&ts)) {
                    Some(want) if (want - v).abs() <= tolerance => a.found += 1,
                    _ => a.wrong += 1,
                }
            }
        }
        a.lost = ledger.points.saturating_sub(a.found);
        a
    }
}

/// A Tidegate agent (`tidegate run`) subscribed to the feed.
pub struct Agent {
    /// The process.
    pub proc: Proc,
    socket: PathBuf,
    store: PathBuf,
    /// Its state directory (the store and its WAL).
    pub state: PathBuf,
}

/// The agent's MQTT client id in the benches (device `bench`, source `feed`).
pub const AGENT_CLIENT: &str = "tidegate-bench-feed";

impl Agent {
    /// Starts `tidegate run` in `dir`, subscribed to `<prefix>/+site/+device`
    /// (line protocol, ms) on `broker`, syncing to `sink` (an InfluxDB /write
    /// URL) under the sink name `sink_name`; waits for its subscription.
    pub fn start(
        program: &Path,
        dir: &Path,
        broker: &Broker,
        prefix: &str,
        sink: Option<(&str, &str)>,
    ) -> anyhow::Result<Agent> {
        let state = dir.join("state");
        std::fs::create_dir_all(&state)?;
        let mut cfg = format!(
            r#"[agent]
state_dir = "{state}"
device = "bench"
log = "warn"

[[sources.mqtt]]
name = "feed"
url = "{url}"
backoff_max = "1s"
max_series = 1000000
broker_inflight = {inflight}

[[sources.mqtt.subscriptions]]
topic = "{prefix}/+site/+device"
format = "lp"
precision = "ms"
"#,
            state = state.display(),
            url = broker.url(),
            inflight = broker.inflight,
        );
        if let Some((name, url)) = sink {
            cfg.push_str(&format!(
                "\n[[sinks.influx]]\nname = \"{name}\"\nurl = \"{url}\"\ndb = \"bench\"\nbackoff_max = \"1s\"\n"
            ));
        }
        let path = dir.join("tidegate.toml");
        std::fs::write(&path, cfg)?;
        let mut cmd = Command::new(program);
        cmd.arg("run").arg("-c").arg(&path).stdout(Stdio::null());
        let mark = broker.log_mark();
        let mut proc = Proc::spawn(
            cmd,
            "tidegate",
            &dir.join("tidegate.log"),
            "pass --tidegate PATH",
        )?;
        broker.wait_subscribed(AGENT_CLIENT, &format!("{prefix}/+/+"), &mut proc, mark)?;
        // The control socket comes up beside the sources, not before them.
        let socket = state.join("tidegate.sock");
        wait_for(
            "the agent's control socket",
            Duration::from_secs(30),
            || {
                proc.check_alive()?;
                Ok(socket.exists().then_some(()))
            },
        )?;
        Ok(Agent {
            proc,
            socket,
            store: state.join("store.db"),
            state,
        })
    }

    /// Its status over the control socket.
    pub fn status(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<crate::ops::Status> {
        rt.block_on(crate::ops::control::fetch_status(&self.socket))
    }

    /// Stops it (SIGTERM: flush, seal, exit) and reads what the store holds,
    /// per series in chunk order (the order the sinks send).
    pub fn finish(mut self) -> anyhow::Result<HashMap<SeriesId, Vec<(i64, f64)>>> {
        let status = self.proc.stop(Duration::from_secs(60))?;
        anyhow::ensure!(
            status.success(),
            "tidegate exited with {status}; its log:\n{}",
            self.proc.tail()
        );
        read_store(&self.store)
    }
}

/// Every point of the store at `path`, per series in chunk order.
fn read_store(path: &Path) -> anyhow::Result<HashMap<SeriesId, Vec<(i64, f64)>>> {
    let mut store = crate::store::Store::open(path, crate::ops::Metrics::new("audit"))
        .with_context(|| format!("cannot open the store {}", path.display()))?;
    let (batch, _) = store.after("bench-audit", Cursor::default(), None, usize::MAX)?;
    let mut out: HashMap<SeriesId, Vec<(i64, f64)>> = HashMap::new();
    for p in batch.points {
        let parts = p.series.parts();
        let tag = |k: &str| {
            parts
                .tags
                .iter()
                .find(|t| t.0 == k)
                .map(|t| t.1.clone())
                .unwrap_or_default()
        };
        out.entry((tag("site"), tag("device"), parts.field.clone()))
            .or_default()
            .push((p.ts_ns.div_euclid(1_000_000), p.value));
    }
    Ok(out)
}

/// The client id collectd subscribes with.
pub const COLLECTD_CLIENT: &str = "collectd-bench";

/// collectd 5.12 with only its `mqtt` (subscribe), `csv` and `rrdtool`
/// plugins.
pub struct Collectd {
    /// The process.
    pub proc: Proc,
    /// The csv plugin's directory.
    pub csv: PathBuf,
    /// The rrdtool plugin's directory.
    pub rrd: PathBuf,
    log_lines: Arc<AtomicU64>,
}

impl Collectd {
    /// Starts `collectd -C FILE -f` in `dir`, subscribed to `<prefix>/#` on
    /// `broker` (QoS 1, as the agent); waits for its subscription.
    pub fn start(
        program: &Path,
        dir: &Path,
        broker: &Broker,
        prefix: &str,
    ) -> anyhow::Result<Collectd> {
        // collectd's csv and rrdtool plugins refuse to create a directory
        // under one whose name starts with a dot, and drop every value.
        let abs = std::path::absolute(dir)?;
        if let Some(c) = abs.components().find(|c| {
            matches!(c, std::path::Component::Normal(n) if n.to_string_lossy().starts_with('.'))
        }) {
            bail!(
                "collectd cannot write under {} (the component {:?} starts with a dot): use another --dir",
                abs.display(),
                c.as_os_str()
            );
        }
        let (csv, rrd, base) = (dir.join("csv"), dir.join("rrd"), dir.join("base"));
        for d in [&csv, &rrd, &base] {
            std::fs::create_dir_all(d)?;
        }
        let conf = dir.join("collectd.conf");
        std::fs::write(
            &conf,
            format!(
                r#"Hostname "bench"
FQDNLookup false
BaseDir "{base}"
PIDFile "{base}/collectd.pid"
TypesDB "/usr/share/collectd/types.db"
AutoLoadPlugin false
LoadPlugin mqtt
LoadPlugin csv
LoadPlugin rrdtool
<Plugin mqtt>
  <Subscribe "feed">
    Host "127.0.0.1"
    Port {port}
    ClientId "{COLLECTD_CLIENT}"
    QoS 1
    CleanSession true
    Topic "{prefix}/#"
  </Subscribe>
</Plugin>
<Plugin csv>
  DataDir "{csv}"
  StoreRates false
</Plugin>
<Plugin rrdtool>
  DataDir "{rrd}"
</Plugin>
"#,
                base = base.display(),
                port = broker.port(),
                csv = csv.display(),
                rrd = rrd.display(),
            ),
        )?;
        let mut cmd = Command::new(program);
        cmd.arg("-C").arg(&conf).arg("-f").stdout(Stdio::null());
        let log = dir.join("collectd.log");
        std::fs::write(&log, "")?;
        let mark = broker.log_mark();
        let mut proc = Proc::spawn_with(
            cmd,
            "collectd",
            &log,
            "apt-get install collectd-core libmosquitto1 librrd8, or pass --collectd PATH",
            Stdio::piped(),
        )?;
        // Its log goes through a pipe to a thread that keeps the first lines
        // and counts the rest: rrdtool refuses a second update of a file
        // within one second and collectd logs every refusal, and those
        // writes to a log file would count against collectd's written bytes.
        let errors = Arc::new(AtomicU64::new(0));
        if let Some(stderr) = proc.child.stderr.take() {
            let count = errors.clone();
            std::thread::spawn(move || {
                let mut file = std::fs::OpenOptions::new().append(true).open(&log).ok();
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if count.fetch_add(1, Relaxed) < 50 {
                        if let Some(f) = &mut file {
                            let _ = writeln!(f, "{line}");
                        }
                    }
                }
            });
        }
        broker.wait_subscribed(COLLECTD_CLIENT, &format!("{prefix}/#"), &mut proc, mark)?;
        Ok(Collectd {
            proc,
            csv,
            rrd,
            log_lines: errors,
        })
    }

    /// Lines collectd has logged so far.
    pub fn log_lines(&self) -> u64 {
        self.log_lines.load(Relaxed)
    }

    /// Rows in its CSV files so far (headers excluded).
    pub fn rows(&self) -> u64 {
        let mut n = 0;
        visit_csv(&self.csv, &mut |_, text| {
            n += text.lines().filter(|l| !l.starts_with("epoch")).count() as u64;
        });
        n
    }

    /// Stops it and reads its CSV files, per series in file order.
    pub fn finish(mut self) -> anyhow::Result<HashMap<SeriesId, Vec<(i64, f64)>>> {
        self.proc.stop(Duration::from_secs(30))?;
        let mut out: HashMap<SeriesId, Vec<(i64, f64)>> = HashMap::new();
        visit_csv(&self.csv, &mut |file, text| {
            // csv/<host>/sensor-<device>/gauge-<field>-YYYY-MM-DD
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let parent = file.parent().unwrap_or(file);
            let device = parent.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let host = parent
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .unwrap_or("");
            let field = name
                .strip_prefix("gauge-")
                .and_then(|n| n.rsplitn(4, '-').last())
                .unwrap_or(name);
            let id = (
                host.to_string(),
                device.trim_start_matches("sensor-").to_string(),
                field.to_string(),
            );
            let rows = out.entry(id).or_default();
            for line in text.lines().filter(|l| !l.starts_with("epoch")) {
                let Some((t, v)) = line.split_once(',') else {
                    continue;
                };
                let (Ok(t), Ok(v)) = (t.parse::<f64>(), v.parse::<f64>()) else {
                    continue;
                };
                rows.push(((t * 1000.0).round() as i64, v));
            }
        });
        Ok(out)
    }
}

/// Calls `f` with every regular file under `dir` and its text.
fn visit_csv(dir: &Path, f: &mut dyn FnMut(&Path, &str)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        if path.is_dir() {
            visit_csv(&path, f);
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            f(&path, &text);
        }
    }
}

/// The 1-minute load average, for the report.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
