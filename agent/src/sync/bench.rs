//! `tidegate bench sync`: how fast the real sync engine drains a backlog into
//! a real database, and how many bytes each point costs on the wire.
//!
//! A store is filled with a synthetic backlog (not timed), a VictoriaMetrics
//! is started on a free loopback port with a temporary data directory, and
//! [`run_sink`] — the engine the agent runs, with its store task, cursors,
//! requests in flight and in-order acknowledgements — sends the whole backlog
//! once per protocol. Figures come from the processes themselves: wall time,
//! CPU time (getrusage for the agent, per thread for the store task and the
//! encoders; `/proc/PID/stat` for VictoriaMetrics), peak RSS (`VmHWM`). At the
//! end VictoriaMetrics is asked how many samples it holds, which must be
//! every point sent.
//!
//! With `--to kafka --kafka HOST:PORT` the drains go into a Kafka broker
//! that is already running (one fresh topic per drain, one drain per
//! compression); bytes on the wire are the TCP payload the broker
//! acknowledged on the producer's connections (`tcpi_bytes_acked`), and what
//! the broker holds is what it acknowledged with `acks = all`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::influx::InfluxSink;
use super::kafka::{self, KafkaSink};
use super::remote_write::RemoteWriteSink;
use super::{run_sink, Sink, SinkError, Stopping};
use crate::config::{Config, DeliveryConfig, KafkaCompression, StoreConfig};
use crate::ops::metrics::SinkStats;
use crate::ops::Metrics;
use crate::point::{Batch, Point, SeriesKey};
use crate::store::bench::{cpu_seconds, proc_field, thread_cpu_ns};
use crate::store::{self, Store};

/// The drain rate the bench is expected to reach on the development VM.
pub const FLOOR_POINTS_PER_S: f64 = 500_000.0;

/// How the points reach the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// InfluxDB line protocol, v1 `/write`, gzip bodies.
    LineProtocol,
    /// Prometheus remote write 1.0, `/api/v1/write`.
    RemoteWrite,
    /// Kafka records (line protocol, one point each), with this compression.
    Kafka(KafkaCompression),
}

/// Every Kafka compression, in the order the bench runs them.
const KAFKA_COMPRESSIONS: [KafkaCompression; 5] = [
    KafkaCompression::None,
    KafkaCompression::Gzip,
    KafkaCompression::Lz4,
    KafkaCompression::Snappy,
    KafkaCompression::Zstd,
];

impl Protocol {
    /// `lp`, `remote-write` or `both`.
    pub fn parse_list(s: &str) -> Result<Vec<Protocol>, String> {
        match s {
            "lp" => Ok(vec![Protocol::LineProtocol]),
            "remote-write" => Ok(vec![Protocol::RemoteWrite]),
            "both" => Ok(vec![Protocol::LineProtocol, Protocol::RemoteWrite]),
            "kafka" => Ok(KAFKA_COMPRESSIONS.map(Protocol::Kafka).to_vec()),
            other => match other.strip_prefix("kafka-") {
                Some(c) => {
                    let c: KafkaCompression = serde_json::from_value(c.into()).map_err(|_| {
                        format!("`{other}`: expected kafka-none, -gzip, -lz4, -snappy or -zstd")
                    })?;
                    Ok(vec![Protocol::Kafka(c)])
                }
                None => Err(format!(
                    "`{other}`: expected lp, remote-write, both, kafka (every compression) or kafka-<compression>"
                )),
            },
        }
    }

    fn title(self) -> &'static str {
        match self {
            Protocol::LineProtocol => "line protocol",
            Protocol::RemoteWrite => "remote write",
            Protocol::Kafka(KafkaCompression::None) => "kafka none",
            Protocol::Kafka(KafkaCompression::Gzip) => "kafka gzip",
            Protocol::Kafka(KafkaCompression::Lz4) => "kafka lz4",
            Protocol::Kafka(KafkaCompression::Snappy) => "kafka snappy",
            Protocol::Kafka(KafkaCompression::Zstd) => "kafka zstd",
        }
    }

    fn compression_name(c: KafkaCompression) -> String {
        serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Points in the backlog.
    pub points: u64,
    /// Series they are spread over (one point a second each).
    pub series: usize,
    /// One drain each, in this order, from the same backlog.
    pub protocols: Vec<Protocol>,
    /// Where the store and the databases' data go.
    pub dir: PathBuf,
    /// `batch_max_points` of the sinks.
    pub batch: usize,
    /// `max_in_flight` of the sinks.
    pub max_in_flight: usize,
    /// The `victoria-metrics` program.
    pub victoria: PathBuf,
    /// The Kafka broker (`host:port`, already running) of the Kafka drains.
    pub kafka: Option<String>,
    /// Partitions of each Kafka drain's topic.
    pub kafka_partitions: i32,
    /// Leave Nagle's algorithm on for the Kafka connections (to measure its cost).
    pub kafka_nagle: bool,
}

/// One protocol's drain, measured.
#[derive(Clone, Debug)]
pub struct Drain {
    /// Which protocol.
    pub protocol: Protocol,
    /// Points acknowledged.
    pub points: u64,
    /// From the engine's start to the last acknowledgement.
    pub wall: Duration,
    /// Request bodies, as on the wire.
    pub bytes: u64,
    /// Requests made.
    pub requests: u64,
    /// Requests that failed (and were retried).
    pub failures: u64,
    /// CPU seconds of the whole agent process during the drain.
    pub agent_cpu: f64,
    /// CPU seconds of the store task's thread (reading and decoding chunks).
    pub store_cpu: f64,
    /// CPU seconds spent encoding request bodies (serialising, compressing).
    pub encode_cpu: f64,
    /// CPU seconds of VictoriaMetrics during the drain.
    pub victoria_cpu: f64,
    /// Peak RSS of the agent during the drain, KiB.
    pub agent_rss_kib: u64,
    /// Peak RSS of VictoriaMetrics, KiB.
    pub victoria_rss_kib: u64,
    /// Samples VictoriaMetrics holds afterwards.
    pub stored: u64,
}

impl Drain {
    /// Points per second of wall time.
    pub fn rate(&self) -> f64 {
        self.points as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// The whole run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The options it ran with.
    pub options: Options,
    /// Time to fill the store (not part of any drain).
    pub fill: Duration,
    /// Bytes of the filled store file.
    pub store_bytes: u64,
    /// One per protocol.
    pub drains: Vec<Drain>,
}

/// Fills a store under `opts.dir`, then drains it once per protocol into a
/// fresh VictoriaMetrics each time. Fails if a drain stalls or the database
/// does not hold every point.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    let path = opts.dir.join("bench.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let started = Instant::now();
    let (first_ms, last_ms) = {
        let (path, points, series) = (path.clone(), opts.points, opts.series);
        tokio::task::spawn_blocking(move || fill(&path, points, series)).await??
    };
    let fill = started.elapsed();
    let store_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut drains = Vec::new();
    for &protocol in &opts.protocols {
        if let Protocol::Kafka(_) = protocol {
            let broker = opts
                .kafka
                .as_deref()
                .context("the Kafka drains need a broker: --kafka HOST:PORT")?;
            let drain = drain(opts, protocol, &path, Target::Kafka(broker)).await?;
            // What the broker acknowledged with acks = all is what it holds.
            drains.push(Drain {
                stored: drain.points,
                ..drain
            });
            continue;
        }
        let vm = Victoria::start(&opts.victoria, &opts.dir).await?;
        let drain = drain(opts, protocol, &path, Target::Victoria(&vm)).await?;
        let stored = vm.wait_for_count(opts.points, first_ms, last_ms).await?;
        drains.push(Drain {
            stored,
            victoria_rss_kib: vm.peak_rss_kib(),
            ..drain
        });
    }
    Ok(Report {
        options: opts.clone(),
        fill,
        store_bytes,
        drains,
    })
}

/// The series of the synthetic backlog: half temperatures with two
/// decimals, half humidities with one, from sensors of a few sites.
fn series_keys(n: usize) -> Vec<(SeriesKey, f64)> {
    (0..n)
        .map(|i| {
            let sensor = format!("s{:04}", i / 2);
            let site = format!("site{}", i % 7);
            let tags = [("sensor", sensor.as_str()), ("site", site.as_str())];
            if i % 2 == 0 {
                (SeriesKey::new("bench", tags, "temp"), 100.0)
            } else {
                (SeriesKey::new("bench", tags, "hum"), 10.0)
            }
        })
        .collect()
}

/// Writes `points` points of `series` series into a fresh store at `path`,
/// one a second per series, the newest second being now: flushed every
/// minute, sealed every 512 s and compacted to the end, as a gateway's
/// store looks after a long outage. Returns the first and last timestamps, ms.
fn fill(path: &Path, points: u64, series: usize) -> anyhow::Result<(i64, i64)> {
    const SECOND: i64 = 1_000_000_000;
    let series = series.max(1);
    let keys = series_keys(series);
    let seconds = points.div_ceil(series as u64) as i64;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let start = (now_s - seconds) * SECOND;
    // Each sensor reads at its own millisecond within the second.
    let phase: Vec<i64> = (0..series as i64)
        .map(|i| (i * 7919 % 1000) * 1_000_000)
        .collect();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut level: Vec<i64> = keys
        .iter()
        .map(|(_, scale)| rng.i64(150..300) * (*scale as i64) / 10)
        .collect();
    let mut store = Store::open(path, Metrics::new("bench"))?;
    let mut batch = Batch::with_capacity(60 * series);
    let mut written = 0u64;
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    let progress = crate::ops::progress::bar(points, "backlog filled");
    for s in 0..seconds {
        for (i, (key, scale)) in keys.iter().enumerate() {
            if written == points {
                break;
            }
            level[i] += rng.i64(-3..=3);
            let ts_ns = start + s * SECOND + phase[i];
            first = first.min(ts_ns);
            last = last.max(ts_ns);
            batch.points.push(Point {
                series: key.clone(),
                ts_ns,
                value: level[i] as f64 / scale,
            });
            written += 1;
        }
        if (s + 1) % 60 == 0 || s + 1 == seconds {
            progress.set_position(written);
            store.append(&batch)?;
            batch.points.clear();
            store.flush()?;
        }
        if (s + 1) % 512 == 0 {
            store.seal()?;
        }
    }
    progress.finish_and_clear();
    store.seal()?;
    while store.compact()? > 0 {}
    store.checkpoint()?;
    Ok((first / 1_000_000, last / 1_000_000))
}

/// A sink that counts the CPU time of its encoder (and, for Kafka, the
/// bytes its connections carried).
struct Timed<S> {
    inner: S,
    encode_ns: Arc<AtomicU64>,
    /// Broker ports and the highest byte count seen on their connections.
    wire: Option<(Vec<u16>, Arc<AtomicU64>)>,
}

impl<S: Sink> Sink for Timed<S> {
    fn encode(&self, points: &[Point]) -> Vec<u8> {
        let before = thread_cpu_ns();
        let body = self.inner.encode(points);
        self.encode_ns
            .fetch_add(thread_cpu_ns().saturating_sub(before), Relaxed);
        body
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), SinkError> {
        let r = self.inner.send(body).await;
        if let Some((ports, bytes)) = &self.wire {
            // Read while the connections are open (they close with the sink).
            bytes.fetch_max(kafka::tcp::scan(ports, false), Relaxed);
        }
        r
    }
}

/// utime + stime of `/proc/<pid>[/task/<tid>]/stat`, seconds.
pub(crate) fn stat_cpu_seconds(stat: &Path) -> f64 {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// CPU seconds of this process's threads named `name`.
fn threads_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .map(|t| stat_cpu_seconds(&t.path().join("stat")))
        .sum()
}

/// Where a drain goes.
enum Target<'a> {
    /// A VictoriaMetrics started here.
    Victoria(&'a Victoria),
    /// A Kafka broker, `host:port`.
    Kafka(&'a str),
}

/// The sink's settings, read as a configuration file would be (so every
/// default applies).
fn sink_toml(protocol: Protocol, url: &str, opts: &Options) -> String {
    let common = format!(
        "batch_max_points = {}\nmax_in_flight = {}\n",
        opts.batch, opts.max_in_flight
    );
    match protocol {
        Protocol::LineProtocol => format!(
            "[[sinks.influx]]\nname = \"bench-lp\"\nurl = \"{url}\"\ndb = \"bench\"\n{common}"
        ),
        Protocol::RemoteWrite => format!(
            "[[sinks.remote_write]]\nname = \"bench-rw\"\nurl = \"{url}/api/v1/write\"\n{common}"
        ),
        Protocol::Kafka(c) => {
            let c = Protocol::compression_name(c);
            // A fresh topic per drain: the broker may hold earlier runs.
            let nanos = crate::point::now_ns();
            format!(
                "[[sinks.kafka]]\nname = \"bench-kafka-{c}\"\nbrokers = [\"{url}\"]\n\
                 topic = \"tidegate-bench-{c}-{nanos}\"\ncompression = \"{c}\"\nnodelay = {}\n{common}",
                !opts.kafka_nagle
            )
        }
    }
}

/// Creates the topic of a Kafka drain (brokers do not create topics on
/// produce unless configured to).
async fn create_topic(broker: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let client = rskafka::client::ClientBuilder::new(vec![broker.to_string()])
        .backoff_config(rskafka::BackoffConfig {
            deadline: Some(Duration::from_secs(10)),
            ..Default::default()
        })
        .build()
        .await
        .with_context(|| format!("cannot reach the Kafka broker {broker}"))?;
    client
        .controller_client()?
        .create_topic(topic, partitions, 1, 5_000)
        .await
        .with_context(|| format!("cannot create topic {topic} on {broker}"))?;
    Ok(())
}

/// Drains the whole store at `path` into `vm` with the engine; the figures
/// of the drain (all but what VictoriaMetrics holds).
async fn drain(
    opts: &Options,
    protocol: Protocol,
    path: &Path,
    target: Target<'_>,
) -> anyhow::Result<Drain> {
    let url = match &target {
        Target::Victoria(vm) => vm.url(),
        Target::Kafka(broker) => broker.to_string(),
    };
    let vm = match target {
        Target::Victoria(vm) => Some(vm),
        Target::Kafka(_) => None,
    };
    let vm_cpu = || vm.map_or(0.0, |vm| vm.cpu_seconds());
    let cfg = Config::from_toml(
        &sink_toml(protocol, &url, opts),
        "the bench's sink settings",
    )?;
    if let Some(k) = cfg.sinks.kafka.first() {
        create_topic(&url, &k.topic, opts.kafka_partitions).await?;
    }
    let encode_ns = Arc::new(AtomicU64::new(0));
    let store_cfg = StoreConfig::default();
    let store = Store::open(path, Metrics::new("bench"))?;
    let (handle, task) = store::spawn(store, &store_cfg);
    // Peak RSS from here on (Linux ≥ 4.0 resets VmHWM on "5").
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (cpu0, store0, vm0) = (cpu_seconds(), threads_cpu_seconds(STORE_THREAD), vm_cpu());
    let stats = Arc::new(SinkStats::default());
    let wire = Arc::new(AtomicU64::new(0));
    // Drain: finish what is in the store, then stop.
    let stopping = Stopping::default();
    stopping.drain.cancel();
    let started = Instant::now();
    let run = Running {
        store: &handle,
        stats: &stats,
        stopping: &stopping,
        encode_ns: &encode_ns,
        wire: &wire,
        ports: match protocol {
            Protocol::Kafka(_) => url
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .into_iter()
                .collect(),
            _ => Vec::new(),
        },
    };
    let engine = match protocol {
        Protocol::LineProtocol => {
            let sink = &cfg.sinks.influx[0];
            run.spawn(InfluxSink::new(sink)?, sink.delivery())
        }
        Protocol::RemoteWrite => {
            let sink = &cfg.sinks.remote_write[0];
            run.spawn(RemoteWriteSink::new(sink)?, sink.delivery())
        }
        Protocol::Kafka(_) => {
            let sink = &cfg.sinks.kafka[0];
            run.spawn(KafkaSink::new(sink, "bench")?, sink.engine())
        }
    };
    watch_progress(engine, &stats, &stopping, opts.points).await?;
    let wall = started.elapsed();
    let figures = Drain {
        protocol,
        points: stats.points_sent.load(Relaxed),
        wall,
        bytes: match protocol {
            Protocol::Kafka(_) => wire.load(Relaxed),
            _ => stats.bytes_sent.load(Relaxed),
        },
        requests: stats.requests.load(Relaxed),
        failures: stats.failures.load(Relaxed),
        agent_cpu: cpu_seconds() - cpu0,
        store_cpu: threads_cpu_seconds(STORE_THREAD) - store0,
        encode_cpu: encode_ns.load(Relaxed) as f64 / 1e9,
        victoria_cpu: vm_cpu() - vm0,
        agent_rss_kib: proc_field("/proc/self/status", "VmHWM:").unwrap_or(0),
        victoria_rss_kib: 0,
        stored: 0,
    };
    drop(handle);
    task.wait().await;
    let dead = stats.dead_letters.load(Relaxed);
    if dead > 0 {
        bail!(
            "{}: the endpoint refused {dead} points ({})",
            protocol.title(),
            stats.error().unwrap_or_default()
        );
    }
    if figures.points != opts.points {
        bail!(
            "{}: the engine stopped after {} of {} points",
            protocol.title(),
            figures.points,
            opts.points
        );
    }
    Ok(figures)
}

/// The name of the store task's thread (see `store::spawn`).
const STORE_THREAD: &str = "tidegate-store";

/// What a drain's engine runs with.
struct Running<'a> {
    store: &'a store::StoreHandle,
    stats: &'a Arc<SinkStats>,
    stopping: &'a Stopping,
    encode_ns: &'a Arc<AtomicU64>,
    wire: &'a Arc<AtomicU64>,
    /// The Kafka broker's ports (empty for the databases).
    ports: Vec<u16>,
}

impl Running<'_> {
    /// Starts the engine for `sink`, its encoder timed.
    fn spawn<S: Sink>(
        &self,
        sink: S,
        delivery: DeliveryConfig,
    ) -> tokio::task::JoinHandle<Result<(), store::StoreError>> {
        let ports = self.ports.clone();
        let sink = Timed {
            inner: sink,
            encode_ns: self.encode_ns.clone(),
            wire: (!ports.is_empty()).then(|| (ports, self.wire.clone())),
        };
        tokio::spawn(run_sink(
            sink,
            delivery,
            self.store.clone(),
            self.stats.clone(),
            self.stopping.clone(),
        ))
    }
}

/// Waits for the engine to finish; stops it with an error if no point is
/// acknowledged for 30 s (the database refuses them, or is gone).
async fn watch_progress(
    mut engine: tokio::task::JoinHandle<Result<(), store::StoreError>>,
    stats: &SinkStats,
    stopping: &Stopping,
    total: u64,
) -> anyhow::Result<()> {
    const STALL: Duration = Duration::from_secs(30);
    let (mut seen, mut since) = (0, Instant::now());
    let progress = crate::ops::progress::bar(total, "backlog drained");
    loop {
        tokio::select! {
            done = &mut engine => {
                progress.finish_and_clear();
                return Ok(done.context("the sync engine panicked")??);
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let sent = stats.points_sent.load(Relaxed);
        progress.set_position(sent);
        if sent != seen {
            (seen, since) = (sent, Instant::now());
        } else if since.elapsed() > STALL {
            stopping.abort.cancel();
            let _ = engine.await;
            bail!(
                "no progress for {STALL:?} after {sent} points; last error: {}",
                stats.error().unwrap_or_default()
            );
        }
    }
}

/// A child process killed (and reaped) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A VictoriaMetrics of our own: a free loopback port, a temporary data
/// directory, killed when dropped (and when this process dies).
pub(crate) struct Victoria {
    child: ChildGuard,
    port: u16,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Victoria {
    /// Starts it and returns once `GET /health` answers 200.
    pub(crate) async fn start(program: &Path, under: &Path) -> anyhow::Result<Victoria> {
        let dir = tempfile::Builder::new()
            .prefix("victoria-")
            .tempdir_in(under)
            .with_context(|| format!("cannot create a directory in {}", under.display()))?;
        let log = dir.path().join("victoria-metrics.log");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        for attempt in 1.. {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let out = std::fs::File::create(&log)?;
            let mut cmd = Command::new(program);
            cmd.arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                .arg(format!(
                    "-storageDataPath={}",
                    dir.path().join("data").display()
                ))
                // It drops points older than its retention without a word.
                .arg("-retentionPeriod=100y")
                // Fresh samples are visible to queries at once.
                .arg("-search.latencyOffset=0s")
                .arg("-loggerLevel=WARN")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            // SAFETY: prctl is async-signal-safe and touches no memory of ours.
            unsafe {
                use std::os::unix::process::CommandExt as _;
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = ChildGuard(cmd.spawn().map_err(|e| {
                anyhow::anyhow!(
                    "cannot start {}: {e}; install Debian's victoria-metrics package or pass --victoria PATH",
                    program.display()
                )
            })?);
            let health = format!("http://127.0.0.1:{port}/health");
            let deadline = Instant::now() + Duration::from_secs(30);
            let exited = loop {
                if let Some(status) = child.0.try_wait()? {
                    break Some(status);
                }
                let r = http
                    .get(&health)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    return Ok(Victoria {
                        child,
                        port,
                        http,
                        _dir: dir,
                    });
                }
                if Instant::now() > deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if attempt < 3 && text.contains("address already in use") {
                continue; // taken between our probe and its bind
            }
            let what = match exited {
                Some(status) => format!("exited ({status})"),
                None => "did not answer GET /health within 30 s".to_string(),
            };
            bail!(
                "victoria-metrics {what}; the end of its log:\n{}",
                tail(&text, 20)
            );
        }
        unreachable!("the loop returns")
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn cpu_seconds(&self) -> f64 {
        stat_cpu_seconds(&PathBuf::from(format!("/proc/{}/stat", self.child.0.id())))
    }

    fn peak_rss_kib(&self) -> u64 {
        proc_field(&format!("/proc/{}/status", self.child.0.id()), "VmHWM:").unwrap_or(0)
    }

    /// Samples stored between `first_ms` and `last_ms`, once that count
    /// reaches `expected` or stops moving (VictoriaMetrics makes ingested
    /// samples searchable in the background).
    async fn wait_for_count(
        &self,
        expected: u64,
        first_ms: i64,
        last_ms: i64,
    ) -> anyhow::Result<u64> {
        self.wait_for_count_matching("bench_.*", expected, first_ms, last_ms)
            .await
    }

    /// As [`Victoria::wait_for_count`], for the series named by `names`.
    pub(crate) async fn wait_for_count_matching(
        &self,
        names: &str,
        expected: u64,
        first_ms: i64,
        last_ms: i64,
    ) -> anyhow::Result<u64> {
        let (mut last, mut since) = (u64::MAX, Instant::now());
        loop {
            let n = self.count_matching(names, first_ms, last_ms).await?;
            if n >= expected {
                return Ok(n);
            }
            if n != last {
                (last, since) = (n, Instant::now());
            } else if since.elapsed() > Duration::from_secs(20) {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Samples of the series whose name matches `names` (a regular
    /// expression) between `first_ms` and `last_ms`.
    pub(crate) async fn count_matching(
        &self,
        names: &str,
        first_ms: i64,
        last_ms: i64,
    ) -> anyhow::Result<u64> {
        self.http
            .get(format!("{}/internal/force_flush", self.url()))
            .send()
            .await?
            .error_for_status()?;
        // The window (at - range, at] holds every timestamp of the backlog.
        let at_s = last_ms / 1000 + 1;
        let range_s = at_s - first_ms / 1000 + 1;
        let query = format!("sum(count_over_time({{__name__=~\"{names}\"}}[{range_s}s]))");
        let text = self
            .http
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", query.as_str()), ("time", &at_s.to_string())])
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let reply: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("query answer {text:?}"))?;
        let value = &reply["data"]["result"][0]["value"][1];
        Ok(match value.as_str() {
            Some(v) => v.parse::<f64>().with_context(|| format!("count {v:?}"))? as u64,
            None => 0, // no series yet
        })
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The machine, for the report: CPUs and their model, kernel.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} × {model}, Linux {}, {}",
        kernel.trim(),
        std::env::consts::ARCH
    )
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "backlog                 {} points in {} series, one a second each, ending now; store {:.2} B/pt ({} bytes), filled in {:.1} s (not timed below)",
            o.points,
            o.series,
            self.store_bytes as f64 / o.points.max(1) as f64,
            self.store_bytes,
            self.fill.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "engine                  run_sink, batch_max_points {}, max_in_flight {} (adaptive; 1 for ordered kafka), {}",
            o.batch,
            o.max_in_flight,
            match &o.kafka {
                Some(k) => format!(
                    "kafka broker {k} ({} partitions, one point per record, TCP_NODELAY {}); victoria-metrics on loopback",
                    o.kafka_partitions,
                    if o.kafka_nagle { "off" } else { "on" }
                ),
                None => "victoria-metrics on loopback".into(),
            }
        );
        let _ = writeln!(out, "machine                 {}", machine());
        let _ = writeln!(out);
        let _ = write!(out, "{:<40}", "");
        for d in &self.drains {
            let _ = write!(out, "{:>16}", d.protocol.title());
        }
        let _ = writeln!(out);
        let mut row = |name: &str, cell: &dyn Fn(&Drain) -> String| {
            let _ = write!(out, "{name:<40}");
            for d in &self.drains {
                let _ = write!(out, "{:>16}", cell(d));
            }
            let _ = writeln!(out);
        };
        row("drained, points/s", &|d| format!("{:.0}", d.rate()));
        row("wall time, s", &|d| format!("{:.2}", d.wall.as_secs_f64()));
        row("bytes on the wire per point", &|d| {
            format!("{:.2}", d.bytes as f64 / d.points.max(1) as f64)
        });
        row("requests (failed)", &|d| {
            format!("{} ({})", d.requests, d.failures)
        });
        row("agent CPU, s", &|d| format!("{:.2}", d.agent_cpu));
        row("  store task (read, decode)", &|d| {
            format!("{:.2}", d.store_cpu)
        });
        row("  encode (format, compress)", &|d| {
            format!("{:.2}", d.encode_cpu)
        });
        row("  rest (engine, HTTP)", &|d| {
            format!("{:.2}", d.agent_cpu - d.store_cpu - d.encode_cpu)
        });
        row("agent points per CPU second", &|d| {
            format!("{:.0}", d.points as f64 / d.agent_cpu.max(1e-9))
        });
        row("victoria-metrics CPU, s", &|d| {
            format!("{:.2}", d.victoria_cpu)
        });
        row("agent peak RSS, MiB", &|d| {
            format!("{:.1}", d.agent_rss_kib as f64 / 1024.0)
        });
        row("victoria-metrics peak RSS, MiB", &|d| {
            format!("{:.1}", d.victoria_rss_kib as f64 / 1024.0)
        });
        row("samples victoria-metrics holds", &|d| d.stored.to_string());
        row(
            &format!("floor {:.0}k points/s", FLOOR_POINTS_PER_S / 1e3),
            &|d| {
                if d.rate() >= FLOOR_POINTS_PER_S {
                    "met"
                } else {
                    "NOT met"
                }
                .to_string()
            },
        );
        f.write_str(&out)
    }
}

impl Report {
    /// An error if a database does not hold every point.
    pub fn check(&self) -> anyhow::Result<()> {
        for d in &self.drains {
            // A retried request may store a sample twice; none was retried
            // unless a request failed.
            let resent = d.failures > 0 && d.stored > self.options.points;
            if d.stored != self.options.points && !resent {
                bail!(
                    "{}: victoria-metrics holds {} samples, {} were sent",
                    d.protocol.title(),
                    d.stored,
                    self.options.points
                );
            }
        }
        Ok(())
    }
}
