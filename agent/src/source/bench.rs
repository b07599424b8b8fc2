//! `tidegate bench ingest --mqtt`: the MQTT source draining a real mosquitto.
//!
//! Three phases, so the agent's own cost is measured apart from the broker's
//! and the publisher's: (1) the agent's persistent session is created and
//! subscribed, then disconnected; (2) a publisher in this process sends every
//! message (QoS 1) while the agent is away, so mosquitto queues them for the
//! session; (3) the MQTT source runs as in `tidegate run` (manual acks after
//! the group commit, a fresh store) and drains the backlog. Phase 3 gives the
//! ingest rate (points/s committed to the store) and the process's CPU time
//! (getrusage: the source, the store thread and the runtime), and mosquitto's
//! CPU time meanwhile from `/proc/<pid>/stat`.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use super::mqtt::{MqttSourceConfig, MqttSubscription, PayloadFormat};
use crate::config::{StoreConfig, TimeUnit};
use crate::ops::Metrics;
use crate::store::{self, Store};

/// What to send.
#[derive(Debug, Clone)]
pub struct IngestBench {
    /// Broker URL; `None` starts a `mosquitto` of its own on a free port.
    pub broker: Option<String>,
    /// Messages of one point each (bare numbers).
    pub single_messages: usize,
    /// Messages of line protocol, `points_per_message` lines each.
    pub lp_messages: usize,
    /// Lines (points) in one line protocol message.
    pub points_per_message: usize,
    /// mosquitto's `max_inflight_messages` for a broker started here.
    pub inflight: usize,
}

/// A mosquitto started for the bench, killed when dropped.
struct Broker {
    child: std::process::Child,
    url: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(dir: &Path, inflight: usize) -> anyhow::Result<Broker> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nmax_inflight_messages {inflight}\n{}",
            // As root mosquitto would switch to its own user.
            if unsafe { libc::geteuid() } == 0 {
                "user root\n"
            } else {
                ""
            }
        ),
    )?;
    let program = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto");
    let child = std::process::Command::new(program)
        .arg("-c")
        .arg(&conf)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| {
            format!("cannot start {program} (apt-get install mosquitto, or pass --broker URL)")
        })?;
    let broker = Broker {
        child,
        url: format!("mqtt://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "mosquitto did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(broker)
}

/// CPU seconds of process `pid` (utime + stime), if readable.
fn process_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn options(url: &str, id: &str, clean: bool) -> anyhow::Result<MqttOptions> {
    let (host, port, _) = crate::mqtt::parse_url(url).map_err(anyhow::Error::msg)?;
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(clean)
        .set_inflight(1000)
        .set_max_packet_size(16 << 20, 16 << 20);
    Ok(o)
}

/// Drives `client`'s event loop until `done` says so (given the PubAcks and
/// SubAcks seen so far).
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    mut done: impl FnMut(u64, u64) -> bool,
) -> anyhow::Result<()> {
    let (mut pubacks, mut subacks) = (0u64, 0u64);
    loop {
        match eventloop.poll().await? {
            Event::Incoming(Packet::PubAck(_)) => pubacks += 1,
            Event::Incoming(Packet::SubAck(_)) => subacks += 1,
            _ => {}
        }
        if done(pubacks, subacks) {
            return Ok(());
        }
    }
}

struct Round {
    label: String,
    messages: usize,
    points: u64,
    secs: f64,
    cpu: f64,
    broker_cpu: Option<f64>,
    flushes: u64,
}

async fn round(
    url: &str,
    broker_pid: Option<u32>,
    dir: &Path,
    label: &str,
    messages: usize,
    per_message: usize,
    inflight: usize,
) -> anyhow::Result<Round> {
    let lp = per_message > 1;
    let tag = if lp { "lp" } else { "num" };
    let client_id = format!("tidegate-bench-{tag}");
    let subscription = MqttSubscription {
        topic: if lp {
            format!("bench-{tag}/+site")
        } else {
            format!("bench-{tag}/+site/+device/#field")
        },
        qos: 1,
        format: if lp {
            PayloadFormat::Lp
        } else {
            PayloadFormat::Number
        },
        measurement: "bench".into(),
        field: "value".into(),
        values: Default::default(),
        timestamp: None,
        timestamp_unit: TimeUnit::Ms,
        precision: TimeUnit::Ns,
        tags: Default::default(),
    };
    let filter = super::topic::TopicPattern::parse(&subscription.topic)
        .map_err(anyhow::Error::msg)?
        .filter();

    // 1. The session and its subscription, then away.
    let (client, eventloop) = AsyncClient::new(options(url, &client_id, false)?, 16);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    drive(eventloop, |_, subacks| subacks > 0).await?;

    // 2. The backlog.
    let (client, eventloop) = AsyncClient::new(options(url, "tidegate-bench-pub", true)?, 4096);
    let total = messages as u64;
    let driver = tokio::spawn(drive(eventloop, move |pubacks, _| pubacks >= total));
    let t0 = 1_764_000_000_000_000_000i64;
    let mut payload = String::new();
    for m in 0..messages {
        payload.clear();
        let (topic, body) = if lp {
            for j in 0..per_message {
                let ts = t0 + (m as i64) * 1_000_000_000 + j as i64;
                let _ = writeln!(
                    payload,
                    "bench,sensor=s{:03} v={}.{} {ts}",
                    j % 100,
                    m % 1000,
                    j
                );
            }
            (format!("bench-{tag}/site1"), payload.clone())
        } else {
            (
                format!("bench-{tag}/site1/d{:03}/temp", m % 100),
                format!("{}.{}", m % 1000, m % 7),
            )
        };
        client
            .publish(topic, QoS::AtLeastOnce, false, body.into_bytes())
            .await?;
    }
    driver.await??;
    drop(client);

    // 3. The agent drains it into a fresh store.
    let metrics = Metrics::new("bench");
    let path = dir.join(format!("store-{tag}.db"));
    let _ = std::fs::remove_file(&path);
    let st = Store::open(&path, metrics.clone())?;
    let (handle, task) = store::spawn(st, &StoreConfig::default());
    let cfg = MqttSourceConfig {
        name: format!("bench-{tag}"),
        url: url.to_string(),
        client_id: Some(client_id),
        username: None,
        password: None,
        ca_file: None,
        client_cert: None,
        client_key: None,
        keep_alive: Duration::from_secs(30),
        backoff_max: Duration::from_secs(1),
        max_payload: 16 << 20,
        max_json_depth: 16,
        max_fields: per_message.max(1),
        // A throughput bench: no limits on series or timestamps.
        max_series: usize::MAX,
        max_future_skew: None,
        max_past_age: None,
        broker_inflight: inflight,
        tags: Default::default(),
        subscriptions: vec![subscription],
    };
    let points = (messages * per_message) as u64;
    let stats = metrics.source(&cfg.name);
    let stop = CancellationToken::new();
    let cpu0 = crate::store::bench::cpu_seconds();
    let broker0 = broker_pid.and_then(process_cpu);
    let start = Instant::now();
    let source = tokio::spawn(super::mqtt::run(
        cfg,
        "bench".into(),
        handle.clone(),
        stats.clone(),
        stop.clone(),
    ));
    let deadline = start + Duration::from_secs(600);
    while metrics.store.points_flushed.load(Relaxed) < points {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {points} points after 10 minutes (rejects: {:?})",
            metrics.store.points_flushed.load(Relaxed),
            stats.rejects_snapshot()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let flushes = metrics.store.flushes.load(Relaxed);
    let cpu = crate::store::bench::cpu_seconds() - cpu0;
    let broker_cpu = broker_pid
        .and_then(process_cpu)
        .zip(broker0)
        .map(|(b, a)| b - a);
    stop.cancel();
    let _ = source.await;
    drop(handle);
    task.wait().await;
    Ok(Round {
        label: label.to_string(),
        messages,
        points,
        secs,
        cpu,
        broker_cpu,
        flushes,
    })
}

/// Runs the bench with its files in `dir`; returns the report.
pub fn run(b: &IngestBench, dir: &Path) -> anyhow::Result<String> {
    let broker = match &b.broker {
        Some(_) => None,
        None => Some(start_broker(dir, b.inflight)?),
    };
    let url = b
        .broker
        .clone()
        .or_else(|| broker.as_ref().map(|x| x.url.clone()))
        .unwrap_or_default();
    let pid = broker.as_ref().map(|x| x.child.id());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rounds = rt.block_on(async {
        let mut rounds = Vec::new();
        if b.single_messages > 0 {
            rounds.push(
                round(
                    &url,
                    pid,
                    dir,
                    "1 point/message",
                    b.single_messages,
                    1,
                    b.inflight,
                )
                .await?,
            );
        }
        if b.lp_messages > 0 {
            let label = format!("{} points/message (lp)", b.points_per_message);
            rounds.push(
                round(
                    &url,
                    pid,
                    dir,
                    &label,
                    b.lp_messages,
                    b.points_per_message.max(2),
                    b.inflight,
                )
                .await?,
            );
        }
        anyhow::Ok(rounds)
    })?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "MQTT ingest: a QoS 1 backlog queued at mosquitto ({url}{}) drained by the MQTT source into a fresh store (acks after group commit)",
        if broker.is_some() {
            format!(", max_inflight_messages {}", b.inflight)
        } else {
            String::new()
        }
    );
    for r in rounds {
        let _ = writeln!(
            out,
            "{:<26} {:>8} msgs {:>9} points in {:>6.2} s: {:>9.0} points/s, {:>7.0} msgs/s; {} commits; agent CPU {:.2} s ({:.2} s per million points){}",
            r.label,
            r.messages,
            r.points,
            r.secs,
            r.points as f64 / r.secs,
            r.messages as f64 / r.secs,
            r.flushes,
            r.cpu,
            r.cpu / (r.points as f64 / 1e6),
            r.broker_cpu
                .map(|c| format!("; mosquitto CPU {c:.2} s"))
                .unwrap_or_default()
        );
    }
    Ok(out)
}
