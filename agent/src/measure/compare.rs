//! `tidegate bench compare`: Tidegate and collectd on the same MQTT feed, on
//! one machine, in one run.
//!
//! Each system gets a run of its own, with a fresh mosquitto (so the
//! broker's CPU is the feed's and that system's alone): `firmware-sim mqtt`
//! publishes a fixed number of points at a paced rate, one point a message
//! for both (line protocol for Tidegate, a PUTVAL value list for collectd),
//! QoS 1 on both sides. Tidegate runs as `tidegate run` with its store and
//! one sink (InfluxDB line protocol into a VictoriaMetrics of its own);
//! collectd 5.12 with its `mqtt`, `csv` and `rrdtool` plugins. Nothing is
//! published before the system's subscription shows in mosquitto's log.
//!
//! After the feeder's last message is acknowledged by the broker, the bench
//! waits until the system has stored every point (or stops making
//! progress), takes the kernel's figures for each process, stops the system
//! and checks what it stored against the feeder's ledger, point by point.
//! A rate sweep then repeats shorter runs at rising rates until a system
//! falls behind. Last, Tidegate is restarted with a second sink that starts
//! from the beginning of its store: the drain rate.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::rig::{self, Agent, Audit, Broker, Collectd, Feed, Feeder, SeriesId, Usage};
use crate::sync::bench::Victoria;

/// What to run, with which programs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Series (devices × 2 fields).
    pub series: usize,
    /// Points per second of the main run.
    pub rate: f64,
    /// Points of the main run, per system.
    pub points: u64,
    /// Rates of the sweep (points/s), tried in order until a system falls behind.
    pub sweep: Vec<f64>,
    /// Length of each sweep run at its rate.
    pub sweep_seconds: f64,
    /// Where everything goes.
    pub dir: PathBuf,
    /// The `tidegate` binary to measure.
    pub tidegate: PathBuf,
    /// `firmware-sim`.
    pub firmware_sim: PathBuf,
    /// `collectd`.
    pub collectd: PathBuf,
    /// `victoria-metrics`.
    pub victoria: PathBuf,
    /// mosquitto's `max_inflight_messages`.
    pub inflight: usize,
}

/// Which system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// This agent.
    Tidegate,
    /// collectd 5.12 (mqtt → csv + rrdtool).
    Collectd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Tidegate => "tidegate",
            System::Collectd => "collectd",
        }
    }
}

/// One system's run at one rate, measured.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Points per second asked of the feeder.
    pub rate: f64,
    /// Points the feeder sent (its ledger).
    pub sent: u64,
    /// Seconds from the feeder's start to the broker's last acknowledgement.
    pub send_secs: f64,
    /// Points the system took in (Tidegate: parsed by the source; collectd:
    /// CSV rows, it has no counter of its own).
    pub received: u64,
    /// The books against the ledger.
    pub audit: Audit,
    /// From the feeder's end to the system's last stored point, seconds.
    pub lag_secs: f64,
    /// The system's usage over the run (from its subscription to the end).
    pub system: Usage,
    /// mosquitto's, over the same span.
    pub broker: Usage,
    /// The feeder's, over its whole life.
    pub feeder: Usage,
    /// Bytes on disk: Tidegate's state directory, or collectd's CSV files.
    pub disk: u64,
    /// collectd's RRD files.
    pub disk_rrd: u64,
    /// Points VictoriaMetrics holds afterwards (Tidegate).
    pub delivered: Option<u64>,
    /// Lines the system logged (collectd: mostly rrdtool refusing a second
    /// update within one second).
    pub log_lines: Option<u64>,
}

impl Run {
    /// Points sent per second of the feed.
    pub fn send_rate(&self) -> f64 {
        self.sent as f64 / self.send_secs.max(1e-9)
    }

    /// Whether the system kept up with the feed: everything stored, within
    /// `LAG_OK` of the feed's end. (The feed itself may be slower than
    /// asked: see [`Run::feed_saturated`].)
    pub fn kept_up(&self) -> bool {
        self.audit.lost == 0 && self.lag_secs <= LAG_OK
    }

    /// Whether the feeder and broker fell short of the rate asked (< 90%):
    /// rates above it measure them, not the system.
    pub fn feed_saturated(&self) -> bool {
        self.send_rate() < 0.9 * self.rate
    }
}

/// How long after the feed's end a system may still be storing and count as
/// keeping up: Tidegate commits once a second by default (`flush_interval`).
pub const LAG_OK: f64 = 1.5;

/// What a system stored: per series, in its order, (timestamp ms, value).
type Books = HashMap<SeriesId, Vec<(i64, f64)>>;

/// How long without progress before a system is taken to have stored all it will.
const STALL: Duration = Duration::from_secs(10);

/// The whole comparison.
#[derive(Clone, Debug)]
pub struct Report {
    /// The options it ran with.
    pub options: Options,
    /// The machine.
    pub machine: String,
    /// The 1-minute load average at the start and at the end.
    pub load: (String, String),
    /// When it ran (RFC 3339).
    pub date: String,
    /// The main runs.
    pub tidegate: Run,
    /// The main runs.
    pub collectd: Run,
    /// The sweeps.
    pub sweep: Vec<(System, Run)>,
    /// Tidegate's drain of its whole store into a sink starting from zero:
    /// points and seconds.
    pub drain: Option<(u64, f64)>,
}

/// Runs the comparison.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&opts.dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let load0 = rig::load();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut main = Vec::new();
    for system in [System::Tidegate, System::Collectd] {
        eprintln!(
            "{}: {} points at {} points/s...",
            system.name(),
            opts.points,
            opts.rate
        );
        main.push(one(&rt, opts, system, opts.rate, opts.points, "main")?);
    }
    let drain = drain(&rt, opts)?;
    let mut sweep = Vec::new();
    for system in [System::Tidegate, System::Collectd] {
        for &rate in &opts.sweep {
            let points = ((rate * opts.sweep_seconds) as u64).max(rig::FIELDS);
            eprintln!(
                "{} sweep: {points} points at {rate} points/s...",
                system.name()
            );
            let r = one(&rt, opts, system, rate, points, &format!("sweep-{rate}"))?;
            let stop = !r.kept_up() || r.feed_saturated();
            sweep.push((system, r));
            if stop {
                break;
            }
        }
    }
    let collectd = main.pop().context("collectd's run")?;
    let tidegate = main.pop().context("Tidegate's run")?;
    Ok(Report {
        options: opts.clone(),
        machine: crate::sync::bench::machine(),
        load: (load0, rig::load()),
        date,
        tidegate,
        collectd,
        sweep,
        drain,
    })
}

/// The feed for `system`.
fn feed(opts: &Options, system: System, rate: f64, points: u64) -> Feed {
    Feed {
        format: match system {
            System::Tidegate => "lp-field",
            System::Collectd => "collectd",
        },
        series: opts.series,
        rate,
        points,
        prefix: "bench",
    }
}

/// One run of `system` at `rate`, in its own directory.
fn one(
    rt: &tokio::runtime::Runtime,
    opts: &Options,
    system: System,
    rate: f64,
    points: u64,
    label: &str,
) -> anyhow::Result<Run> {
    let dir = opts.dir.join(format!("{}-{label}", system.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let broker = Broker::start(&dir, opts.inflight)?;
    let feed = feed(opts, system, rate, points);
    let points = points / rig::FIELDS * rig::FIELDS;
    enum Sut {
        Tidegate(Agent, Victoria),
        Collectd(Collectd),
    }
    let mut sut = match system {
        System::Tidegate => {
            let vm = rt.block_on(Victoria::start(&opts.victoria, &dir))?;
            let url = vm.url();
            let agent = Agent::start(
                &opts.tidegate,
                &dir,
                &broker,
                feed.prefix,
                Some(("vm", &url)),
            )?;
            Sut::Tidegate(agent, vm)
        }
        System::Collectd => {
            Sut::Collectd(Collectd::start(&opts.collectd, &dir, &broker, feed.prefix)?)
        }
    };
    let pid = match &sut {
        Sut::Tidegate(a, _) => a.proc.pid(),
        Sut::Collectd(c) => c.proc.pid(),
    };
    let (sys0, broker0) = (Usage::of(pid), Usage::of(broker.pid()));
    let mut feeder = Feeder::start(&opts.firmware_sim, &broker, &feed, &dir)?;
    let timeout = Duration::from_secs_f64(points as f64 / rate * 5.0 + 60.0);
    let send = feeder.wait_done(timeout)?;
    let fed = Instant::now();
    let feeder_usage = feeder.proc().usage();
    // Stored so far, and how many points the system took in.
    let stored = |sut: &mut Sut| -> anyhow::Result<(u64, u64)> {
        Ok(match sut {
            Sut::Tidegate(a, _) => {
                a.proc.check_alive()?;
                let s = a.status(rt)?;
                let received = s.sources.iter().map(|s| s.points).sum();
                (s.store.points_flushed, received)
            }
            Sut::Collectd(c) => {
                c.proc.check_alive()?;
                let n = c.rows();
                (n, n)
            }
        })
    };
    let (mut last, mut since) = (stored(&mut sut)?, Instant::now());
    while last.0 < points && since.elapsed() < STALL {
        std::thread::sleep(Duration::from_millis(50));
        let now = stored(&mut sut)?;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    let lag = since.saturating_duration_since(fed).as_secs_f64();
    let received = last.1;
    // The sink catches up (Tidegate), then the page cache goes to disk so
    // that the write counters see the flushes.
    let (mut delivered, mut log_lines) = (None, None);
    if let Sut::Tidegate(a, vm) = &sut {
        let (mut sent, mut since) = (0, Instant::now());
        while sent < last.0 && since.elapsed() < STALL {
            std::thread::sleep(Duration::from_millis(50));
            let now: u64 = a.status(rt)?.sinks.iter().map(|s| s.points_sent).sum();
            if now != sent {
                (sent, since) = (now, Instant::now());
            }
        }
        let _ = vm;
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let (sys1, broker1) = (Usage::of(pid), Usage::of(broker.pid()));
    let ledger = feeder.finish()?;
    let (books, disk, disk_rrd): (Books, u64, u64) = match sut {
        Sut::Tidegate(agent, vm) => {
            let state = agent.state.clone();
            let books = agent.finish()?;
            let (lo, hi) = ledger.span_ms;
            delivered = Some(
                rt.block_on(vm.wait_for_count_matching("env_.*", ledger.points, lo, hi))
                    .context("counting what VictoriaMetrics holds")?,
            );
            // The store's files, less the control socket.
            (books, rig::du(&state), 0)
        }
        Sut::Collectd(c) => {
            let (csv, rrd) = (c.csv.clone(), c.rrd.clone());
            log_lines = Some(c.log_lines());
            let books = c.finish()?;
            (books, rig::du(&csv), rig::du(&rrd))
        }
    };
    let tolerance = match system {
        System::Tidegate => 0.0,
        System::Collectd => 1e-6,
    };
    let audit = Audit::of(&ledger, &books, tolerance);
    Ok(Run {
        rate,
        sent: ledger.points,
        send_secs: send.as_secs_f64(),
        received,
        audit,
        lag_secs: lag,
        system: sys1.since(sys0),
        broker: broker1.since(broker0),
        feeder: feeder_usage,
        disk,
        disk_rrd,
        delivered,
        log_lines,
    })
}

/// Tidegate fed as in the main run with no sink, then restarted with one
/// that starts from the beginning: points and seconds to drain the store.
fn drain(rt: &tokio::runtime::Runtime, opts: &Options) -> anyhow::Result<Option<(u64, f64)>> {
    let dir = opts.dir.join("tidegate-drain");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "tidegate drain: {} points into a fresh sink...",
        opts.points
    );
    let broker = Broker::start(&dir, opts.inflight)?;
    let feed = feed(opts, System::Tidegate, opts.rate, opts.points);
    let agent = Agent::start(&opts.tidegate, &dir, &broker, feed.prefix, None)?;
    let mut feeder = Feeder::start(&opts.firmware_sim, &broker, &feed, &dir)?;
    feeder.wait_done(Duration::from_secs_f64(
        opts.points as f64 / opts.rate * 5.0 + 60.0,
    ))?;
    let want = opts.points / rig::FIELDS * rig::FIELDS;
    rig::wait_for("the store to hold the feed", STALL * 6, || {
        Ok((agent.status(rt)?.store.points_flushed >= want).then_some(()))
    })?;
    drop(feeder);
    agent.finish()?;
    let vm = rt.block_on(Victoria::start(&opts.victoria, &dir))?;
    let url = vm.url();
    // From the agent's start: its sink may send before it is subscribed.
    let start = Instant::now();
    let agent = Agent::start(
        &opts.tidegate,
        &dir,
        &broker,
        feed.prefix,
        Some(("drain", &url)),
    )?;
    let (mut sent, mut since) = (0, Instant::now());
    while sent < want && since.elapsed() < STALL {
        std::thread::sleep(Duration::from_millis(20));
        let now: u64 = agent.status(rt)?.sinks.iter().map(|s| s.points_sent).sum();
        if now != sent {
            (sent, since) = (now, Instant::now());
        }
    }
    let secs = since.duration_since(start).as_secs_f64();
    agent.finish()?;
    Ok((sent >= want).then_some((sent, secs)))
}

impl Report {
    /// The highest rate (as sent) each system kept up with in the sweep;
    /// `true` when it never fell behind (its ceiling is higher: the feed or
    /// the rates tried ran out first).
    pub fn ceiling(&self, system: System) -> Option<(f64, bool)> {
        let runs: Vec<&Run> = self
            .sweep
            .iter()
            .filter(|(s, _)| *s == system)
            .map(|(_, r)| r)
            .collect();
        let best = runs
            .iter()
            .filter(|r| r.kept_up())
            .map(|r| r.send_rate())
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))))?;
        Some((best, runs.iter().all(|r| r.kept_up())))
    }

    /// Whether Tidegate lost, duplicated, reordered or altered nothing in
    /// any run, and every point reached the database.
    pub fn tidegate_exact(&self) -> bool {
        let t = &self.tidegate;
        let clean =
            |a: &Audit| a.lost == 0 && a.duplicated == 0 && a.reordered == 0 && a.wrong == 0;
        clean(&t.audit)
            && t.delivered == Some(t.sent)
            && self
                .sweep
                .iter()
                .filter(|(s, _)| *s == System::Tidegate)
                .all(|(_, r)| clean(&r.audit))
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        let (t, c) = (&self.tidegate, &self.collectd);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Tidegate vs collectd, {} series, {} points per system at {} points/s, one point a MQTT message (QoS 1), fresh mosquitto per run (max_inflight_messages {})",
            o.series, o.points, o.rate, o.inflight
        );
        let _ = writeln!(
            out,
            "{}; {}; load average {} at start, {} at end (shared machine: CPU figures are CPU seconds, not wall time)",
            self.date, self.machine, self.load.0, self.load.1
        );
        let _ = writeln!(
            out,
            "{:<40} {:>14} {:>14} {:>10}",
            "", "tidegate", "collectd", "ratio t/c"
        );
        let per_m = |cpu: f64, r: &Run| cpu / (r.sent.max(1) as f64 / 1e6);
        let per_pt = |bytes: u64, r: &Run| bytes as f64 / r.sent.max(1) as f64;
        let mut row = |name: &str, a: f64, b: f64, prec: usize| {
            let ratio = if b != 0.0 && !name.starts_with("lag") {
                format!("{:.3}", a / b)
            } else {
                "-".into()
            };
            let _ = writeln!(out, "{name:<40} {a:>14.prec$} {b:>14.prec$} {ratio:>10}");
        };
        row("points sent", t.sent as f64, c.sent as f64, 0);
        row("points received", t.received as f64, c.received as f64, 0);
        row(
            "points stored",
            t.audit.stored as f64,
            c.audit.stored as f64,
            0,
        );
        row("points lost", t.audit.lost as f64, c.audit.lost as f64, 0);
        row(
            "points duplicated",
            t.audit.duplicated as f64,
            c.audit.duplicated as f64,
            0,
        );
        row(
            "points reordered",
            t.audit.reordered as f64,
            c.audit.reordered as f64,
            0,
        );
        row(
            "points altered or unknown",
            t.audit.wrong as f64,
            c.audit.wrong as f64,
            0,
        );
        row(
            "CPU s per million points",
            per_m(t.system.cpu_s, t),
            per_m(c.system.cpu_s, c),
            2,
        );
        row(
            "  mosquitto CPU s per million points",
            per_m(t.broker.cpu_s, t),
            per_m(c.broker.cpu_s, c),
            2,
        );
        row(
            "  firmware-sim CPU s per million points",
            per_m(t.feeder.cpu_s, t),
            per_m(c.feeder.cpu_s, c),
            2,
        );
        row(
            "peak RSS, MiB",
            t.system.hwm_kib as f64 / 1024.0,
            c.system.hwm_kib as f64 / 1024.0,
            1,
        );
        row(
            "  anonymous at the end (RssAnon), MiB",
            t.system.anon_kib as f64 / 1024.0,
            c.system.anon_kib as f64 / 1024.0,
            1,
        );
        row(
            "disk bytes per point (collectd: csv)",
            per_pt(t.disk, t),
            per_pt(c.disk, c),
            1,
        );
        row(
            "disk bytes per point (collectd: rrd)",
            per_pt(t.disk, t),
            per_pt(c.disk_rrd, c),
            1,
        );
        row(
            "bytes written per point",
            per_pt(t.system.write_bytes, t),
            per_pt(c.system.write_bytes, c),
            1,
        );
        row("lag after the feed's end, s", t.lag_secs, c.lag_secs, 2);
        let ceiling = |s: System| -> (f64, String) {
            match self.ceiling(s) {
                Some((r, true)) => (
                    r,
                    format!(
                        "(>= {r:.0}: never fell behind; the feed or the rates tried ran out first)"
                    ),
                ),
                Some((r, false)) => (r, String::new()),
                None => (0.0, "(none of the rates tried)".into()),
            }
        };
        let (tc, tn) = ceiling(System::Tidegate);
        let (cc, cn) = ceiling(System::Collectd);
        if !self.sweep.is_empty() {
            row("highest rate kept up with, points/s", tc, cc, 0);
            for note in [("tidegate", tn), ("collectd", cn)] {
                if !note.1.is_empty() {
                    let _ = writeln!(out, "  {}: {}", note.0, note.1);
                }
            }
        }
        if let Some(n) = c.log_lines {
            let _ = writeln!(
                out,
                "{:<40} {:>14} {n:>14}",
                "log lines (collectd: rrdtool refusals)", "-"
            );
        }
        if let Some(d) = t.delivered {
            let _ = writeln!(
                out,
                "{:<40} {d:>14} {:>14}",
                "points the sink (VictoriaMetrics) holds", "-"
            );
        }
        if let Some((n, secs)) = self.drain {
            let _ = writeln!(
                out,
                "{:<40} {:>14.0} {:>14}",
                "drain to the sink, points/s",
                n as f64 / secs.max(1e-9),
                "-"
            );
        }
        if !self.sweep.is_empty() {
            let _ = writeln!(
                out,
                "\nsweep ({} s a rate; kept up: nothing lost, all stored within {LAG_OK} s of the feed's end; it stops when a system falls behind or the feed reaches < 90% of the rate asked)",
                o.sweep_seconds
            );
            let _ = writeln!(
                out,
                "{:<10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
                "system", "asked/s", "sent/s", "sent", "lost", "lag s", "kept up"
            );
            for (s, r) in &self.sweep {
                let _ = writeln!(
                    out,
                    "{:<10} {:>10.0} {:>10.0} {:>10} {:>10} {:>8.2} {:>8}",
                    s.name(),
                    r.rate,
                    r.send_rate(),
                    r.sent,
                    r.audit.lost,
                    r.lag_secs,
                    if r.kept_up() { "yes" } else { "no" }
                );
            }
        }
        f.write_str(&out)
    }
}
