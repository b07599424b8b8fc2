//! `tidegate bench footprint`: the agent's memory and CPU at the rates of the
//! deployment tiers (device, gateway, regional), and the size of the binary
//! shipped for each target.
//!
//! Per rate: a fresh mosquitto, a VictoriaMetrics as the one sink, and the
//! agent as a process (`tidegate run`: MQTT source, store, sink — the real
//! pipeline), fed by `firmware-sim mqtt` at a paced rate over many series.
//! Only the agent process is measured: CPU seconds per second of the steady
//! part of the feed (after a warm-up) as a share of one core, and its peak
//! RSS (`VmHWM`) at the end.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::rig::{self, Agent, Broker, Feed, Feeder, Usage};
use crate::sync::bench::Victoria;

/// The peak RSS allowed at 10k points/s, MiB.
pub const FLOOR_RSS_MIB: f64 = 16.0;
/// The CPU allowed at 10k points/s, share of one core (of the development VM).
pub const FLOOR_CPU: f64 = 0.05;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Points per second, one run each.
    pub rates: Vec<f64>,
    /// Series (devices × 2 fields).
    pub series: usize,
    /// Seconds of feed per rate.
    pub seconds: f64,
    /// Seconds at the start of each feed left out of the CPU figure.
    pub warmup: f64,
    /// mosquitto's `max_inflight_messages` (and the agent's `broker_inflight`).
    pub inflight: usize,
    /// Where everything goes.
    pub dir: PathBuf,
    /// The `tidegate` binary to measure.
    pub tidegate: PathBuf,
    /// `firmware-sim`.
    pub firmware_sim: PathBuf,
    /// `victoria-metrics`.
    pub victoria: PathBuf,
    /// The cargo target directory, for the binaries' sizes.
    pub target_dir: PathBuf,
}

/// One rate, measured.
#[derive(Clone, Debug)]
pub struct Tier {
    /// Points per second asked.
    pub rate: f64,
    /// Points per second the feeder managed.
    pub sent_rate: f64,
    /// Points the store holds at the end.
    pub stored: u64,
    /// Points the sink delivered.
    pub delivered: u64,
    /// CPU seconds per second of the steady part.
    pub cpu_share: f64,
    /// Peak RSS, KiB.
    pub hwm_kib: u64,
    /// Anonymous RSS at the end (heap, stacks), KiB.
    pub anon_kib: u64,
    /// Bytes the agent wrote per point stored over the steady part
    /// (`write_bytes`: pages dirtied, so a page rewritten after each sync
    /// counts each time; the filesystem's own journal is not counted).
    pub written_per_point: f64,
}

/// The whole report.
#[derive(Clone, Debug)]
pub struct Report {
    /// The options.
    pub options: Options,
    /// The machine.
    pub machine: String,
    /// When it ran.
    pub date: String,
    /// One per rate.
    pub tiers: Vec<Tier>,
    /// The measured binary's size.
    pub binary: (PathBuf, u64),
    /// Per target triple: the gateway build's size, if built.
    pub targets: Vec<(&'static str, Option<u64>)>,
}

/// The targets the gateway build is made for (`scripts/package`, cross.toml).
const TARGETS: [&str; 4] = [
    "x86_64-unknown-linux-gnu",
    "aarch64-unknown-linux-gnu",
    "armv7-unknown-linux-gnueabihf",
    "arm-unknown-linux-gnueabihf",
];

/// Runs it.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&opts.dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut tiers = Vec::new();
    for &rate in &opts.rates {
        eprintln!(
            "footprint at {rate} points/s over {} series...",
            opts.series
        );
        tiers.push(tier(&rt, opts, rate)?);
    }
    let size = |p: &Path| std::fs::metadata(p).ok().map(|m| m.len());
    let mut targets: Vec<(&'static str, Option<u64>)> = TARGETS
        .iter()
        .map(|t| (*t, size(&opts.target_dir.join(t).join("gateway/tidegate"))))
        .collect();
    // A native build without --target lands in target/gateway.
    if let Some(native) = size(&opts.target_dir.join("gateway/tidegate")) {
        targets.push(("(native, no --target)", Some(native)));
    }
    Ok(Report {
        options: opts.clone(),
        machine: crate::sync::bench::machine(),
        date,
        tiers,
        binary: (opts.tidegate.clone(), size(&opts.tidegate).unwrap_or(0)),
        targets,
    })
}

fn tier(rt: &tokio::runtime::Runtime, opts: &Options, rate: f64) -> anyhow::Result<Tier> {
    let dir = opts.dir.join(format!("rate-{rate}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let broker = Broker::start(&dir, opts.inflight)?;
    let vm = rt.block_on(Victoria::start(&opts.victoria, &dir))?;
    let url = vm.url();
    let agent = Agent::start(&opts.tidegate, &dir, &broker, "fp", Some(("vm", &url)))?;
    let feed = Feed {
        // Two points a message: the feeder, not the agent, is what tops out first.
        format: "lp",
        series: opts.series,
        rate,
        points: (rate * opts.seconds) as u64,
        prefix: "fp",
    };
    let mut feeder = Feeder::start(&opts.firmware_sim, &broker, &feed, &dir)?;
    let start = Instant::now();
    let warm = Duration::from_secs_f64(opts.warmup.min(opts.seconds / 2.0));
    // A bench samples at a time on purpose: the steady part of the feed.
    std::thread::sleep(warm.saturating_sub(start.elapsed()));
    let (u0, t0) = (agent.proc.usage(), Instant::now());
    let flushed0 = agent.status(rt)?.store.points_flushed;
    let sent = feeder.wait_done(Duration::from_secs_f64(opts.seconds * 5.0 + 60.0))?;
    let (u1, t1) = (agent.proc.usage(), Instant::now());
    let flushed1 = agent.status(rt)?.store.points_flushed;
    let want = feed.points / rig::FIELDS * rig::FIELDS;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = agent.status(rt)?;
        let delivered: u64 = s.sinks.iter().map(|s| s.points_sent).sum();
        if (s.store.points_flushed >= want && delivered >= want) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let end = agent.proc.usage();
    drop(feeder);
    agent.finish()?;
    let used: Usage = u1.since(u0);
    Ok(Tier {
        rate,
        sent_rate: want as f64 / sent.as_secs_f64().max(1e-9),
        stored: status.store.points_flushed,
        delivered: status.sinks.iter().map(|s| s.points_sent).sum(),
        cpu_share: used.cpu_s / (t1 - t0).as_secs_f64().max(1e-9),
        hwm_kib: end.hwm_kib,
        anon_kib: end.anon_kib,
        written_per_point: used.write_bytes as f64
            / (flushed1.saturating_sub(flushed0)).max(1) as f64,
    })
}

impl Report {
    /// Fails if a floor is missed at 10k points/s.
    pub fn check(&self) -> anyhow::Result<()> {
        for t in self.tiers.iter().filter(|t| t.rate == 10_000.0) {
            let rss = t.hwm_kib as f64 / 1024.0;
            anyhow::ensure!(
                rss <= FLOOR_RSS_MIB,
                "peak RSS {rss:.1} MiB at 10k points/s is over the {FLOOR_RSS_MIB} MiB floor"
            );
            anyhow::ensure!(
                t.cpu_share <= FLOOR_CPU,
                "CPU {:.1}% of a core at 10k points/s is over the {:.0}% floor",
                t.cpu_share * 100.0,
                FLOOR_CPU * 100.0
            );
        }
        Ok(())
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Tidegate footprint: `tidegate run` (MQTT source, store, one sink to VictoriaMetrics) over {} series, {} s a rate, CPU after {} s of warm-up, mosquitto's max_inflight_messages {}",
            o.series, o.seconds, o.warmup, o.inflight
        );
        let _ = writeln!(
            out,
            "{}; {} (a Raspberry Pi 4 core is several times slower than one of these)",
            self.date, self.machine
        );
        let _ = writeln!(
            out,
            "{:>12} {:>12} {:>10} {:>10} {:>12} {:>14} {:>10} {:>12}",
            "asked pt/s",
            "sent pt/s",
            "stored",
            "delivered",
            "CPU % core",
            "peak RSS MiB",
            "anon MiB",
            "written B/pt"
        );
        for t in &self.tiers {
            let _ = writeln!(
                out,
                "{:>12.0} {:>12.0} {:>10} {:>10} {:>12.2} {:>14.1} {:>10.1} {:>12.2}",
                t.rate,
                t.sent_rate,
                t.stored,
                t.delivered,
                t.cpu_share * 100.0,
                t.hwm_kib as f64 / 1024.0,
                t.anon_kib as f64 / 1024.0,
                t.written_per_point
            );
        }
        let _ = writeln!(
            out,
            "floors at 10k points/s: peak RSS <= {FLOOR_RSS_MIB} MiB, CPU <= {:.0}% of a core",
            FLOOR_CPU * 100.0
        );
        let _ = writeln!(
            out,
            "binary measured: {} ({:.1} MiB)",
            self.binary.0.display(),
            self.binary.1 as f64 / (1 << 20) as f64
        );
        for (t, size) in &self.targets {
            let _ = match size {
                Some(s) => writeln!(
                    out,
                    "gateway build {t:<32} {:>8.2} MiB",
                    *s as f64 / (1 << 20) as f64
                ),
                None => writeln!(
                    out,
                    "gateway build {t:<32} not built (cargo build --profile gateway --target {t})"
                ),
            };
        }
        f.write_str(&out)
    }
}
