//! `tidegate demo`: the whole pipeline with nothing to install. A simulated
//! sensor board on a pseudo-terminal feeds the agent, which stores into a
//! temporary directory (and syncs to InfluxDB when given one), showing its
//! figures once a second.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Framing, SerialSourceConfig, TimeUnit};
use crate::ops::{Metrics, Status};

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// Also sync to this InfluxDB 1.x URL.
    pub influx: Option<String>,
    /// Simulated sensors.
    pub sensors: usize,
    /// Readings per second over all sensors.
    pub rate: f64,
    /// Share of garbage lines the simulated firmware sends.
    pub garbage_rate: f64,
}

/// Runs the demo; returns the final counters.
pub async fn demo(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<Status> {
    let dir = tempfile::Builder::new()
        .prefix("tidegate-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let sim = firmware_sim::spawn_pty(
        firmware_sim::SimConfig {
            sensors: opts.sensors,
            rate: opts.rate,
            garbage_rate: opts.garbage_rate,
            framing: firmware_sim::Framing::Kv,
            ..Default::default()
        },
        None,
    )
    .context("cannot start the simulated firmware on a pseudo-terminal")?;

    let mut cfg = Config::default();
    cfg.agent.state_dir = dir.path().to_path_buf();
    cfg.agent.device = "demo".into();
    cfg.sources.serial.push(SerialSourceConfig {
        name: Some("sim".into()),
        port: sim.slave_path.clone(),
        baud: 115_200,
        framing: Framing::Kv,
        measurement: "sensor".into(),
        tags: [("site".to_string(), "demo".to_string())].into(),
        tag_keys: vec!["sensor".into()],
        timestamp_key: Some("ts".into()),
        timestamp_unit: TimeUnit::Ms,
        max_line: 4096,
        required_keys: vec!["sensor".into(), "ts".into()],
        // A PTY's file name is a number that changes every run.
        port_tag: false,
        ..Default::default()
    });
    if let Some(url) = &opts.influx {
        // Through serde, so every other setting takes its documented default.
        let text = format!(
            "[[sinks.influx]]\nname = \"demo\"\nurl = {url:?}\ndb = \"tidegate\"\nbackoff_max = \"5s\"\n"
        );
        cfg.sinks
            .influx
            .extend(Config::from_toml(&text, "the demo's sink")?.sinks.influx);
    }
    cfg.validate()?;

    println!(
        "tidegate demo: {} simulated sensors at {} readings/s on {}, store in {}{}",
        opts.sensors,
        opts.rate,
        sim.slave_path.display(),
        dir.path().display(),
        opts.influx
            .as_ref()
            .map(|u| format!(", syncing to {u} (db tidegate)"))
            .unwrap_or_default()
    );
    let metrics = Metrics::new("demo");
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(crate::run::run(cfg, metrics.clone(), stop.clone()));

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_in = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let s = metrics.snapshot();
        let points_in: u64 = s.sources.iter().map(|x| x.points).sum();
        print_line(&s, points_in - last_in, started.elapsed());
        last_in = points_in;
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    stop.cancel();
    let status = pipeline.await.context("the pipeline task failed")??;
    sim.stop();
    print_summary(&status, started.elapsed());
    Ok(status)
}

fn print_line(s: &Status, per_second: u64, elapsed: Duration) {
    let rejects: u64 = s.sources.iter().map(|x| x.rejected()).sum();
    let sent: u64 = s.sinks.iter().map(|x| x.points_sent).sum();
    let st = &s.store;
    let bpp = bytes_per_point(st.bytes_on_disk, st.points_flushed);
    // Redraw in place on a terminal; one line a second otherwise.
    let start = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        "\r"
    } else {
        "\n"
    };
    print!(
        "{start}[{:>4.0}s] in {:>6}/s  stored {:>9}  disk {:>9}  {:>6} B/pt  rejects {:>5}",
        elapsed.as_secs_f64(),
        per_second,
        st.points_flushed,
        human_bytes(st.bytes_on_disk),
        bpp,
        rejects,
    );
    if !s.sinks.is_empty() {
        print!("  sent {sent:>9}");
    }
    let _ = std::io::stdout().flush();
}

fn print_summary(s: &Status, elapsed: Duration) {
    let points_in: u64 = s.sources.iter().map(|x| x.points).sum();
    let rejects: u64 = s.sources.iter().map(|x| x.rejected()).sum();
    let st = &s.store;
    println!();
    println!("summary after {:.1}s:", elapsed.as_secs_f64());
    println!(
        "  points in      {points_in} ({:.0}/s)",
        points_in as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    println!("  points stored  {}", st.points_flushed);
    println!("  series         {}", st.series);
    println!(
        "  bytes on disk  {} ({} B/pt, SQLite file and WAL)",
        human_bytes(st.bytes_on_disk),
        bytes_per_point(st.bytes_on_disk, st.points_flushed)
    );
    println!("  rejects        {rejects}");
    for sink in &s.sinks {
        println!(
            "  sink {:<9} sent {} points in {} requests, {} failed",
            sink.name, sink.points_sent, sink.requests, sink.failures
        );
    }
}

fn bytes_per_point(bytes: u64, points: u64) -> String {
    if points == 0 {
        "-".into()
    } else {
        format!("{:.2}", bytes as f64 / points as f64)
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
