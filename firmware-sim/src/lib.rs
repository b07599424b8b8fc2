//! Simulated sensor firmware for Tidegate.
//!
//! It plays a board of sensors on a serial line: it opens its own
//! pseudo-terminal, writes one reading a line at a chosen rate, and keeps a
//! ledger of every line it sent, so a test can prove what arrived.
//!
//! The [`Generator`] is pure (time is passed in); [`Pty`] and [`spawn_pty`] do
//! the I/O.

mod generator;
mod pty;

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use generator::{Emitted, Generator};
pub use pty::Pty;
use serde::{Deserialize, Serialize};

/// How readings are written on the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// `sensor=s01 ts=1764053000123 temp=21.53 hum=40.2`
    Kv,
    /// `{"sensor":"s01","ts":1764053000123,"temp":21.53,"hum":40.2}`
    Json,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of sensors, named `s01`, `s02`, ...
    pub sensors: usize,
    /// Readings per second over all sensors.
    pub rate: f64,
    /// Stop after this many lines (valid and garbage); `None` runs until stopped.
    pub count: Option<u64>,
    /// Line format.
    pub framing: Framing,
    /// Probability that a line is garbage instead of a reading.
    pub garbage_rate: f64,
    /// Seed: the same seed gives the same values and garbage.
    pub seed: u64,
    /// Replay this CSV (`timestamp,value`) instead of synthetic signals.
    pub replay: Option<PathBuf>,
    /// Replay speed-up: 3600 plays an hour of the CSV per second.
    pub speedup: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            sensors: 3,
            rate: 200.0,
            count: None,
            framing: Framing::Kv,
            garbage_rate: 0.0,
            seed: 1,
            replay: None,
            speedup: 3600.0,
        }
    }
}

/// One line sent, as the ledger records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the stream, from 0.
    pub seq: u64,
    /// A reading (true) or garbage (false).
    pub valid: bool,
    /// Sensor id, for readings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<String>,
    /// Timestamp in Unix milliseconds, for readings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// Field values, for readings: exactly the f64 the printed text parses to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<std::collections::BTreeMap<String, f64>>,
    /// The garbage bytes (lossy UTF-8), for garbage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
}

/// Reads a ledger written by the simulator.
pub fn read_ledger(path: &Path) -> io::Result<Vec<LedgerEntry>> {
    let mut out = Vec::new();
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(io::Error::other)?);
    }
    Ok(out)
}

/// Live counters of a running simulation.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Readings sent.
    pub valid: AtomicU64,
    /// Garbage lines sent.
    pub garbage: AtomicU64,
    /// All lines sent.
    pub done: AtomicBool,
}

/// A simulation running on its own thread.
pub struct SimHandle {
    /// The PTY's slave side: what the agent opens.
    pub slave_path: PathBuf,
    /// Live counters.
    pub stats: Arc<SimStats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl SimHandle {
    /// Stops the writer and waits for it (flushing the ledger).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Opens a PTY and writes readings to it on a thread, until stopped or `count` is reached.
pub fn spawn_pty(cfg: SimConfig, ledger: Option<PathBuf>) -> io::Result<SimHandle> {
    let pty = Pty::open()?;
    let slave_path = pty.slave_path().to_path_buf();
    let stats = Arc::new(SimStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut generator = Generator::new(&cfg)?;
    let ledger = match ledger {
        Some(p) => Some(BufWriter::new(File::create(p)?)),
        None => None,
    };
    let (st, sp) = (stats.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("firmware-sim".into())
        .spawn(move || {
            let mut w = Writer::new(pty, ledger, st, sp);
            if !w.wait_reader()? {
                return Ok(());
            }
            w.run(&mut generator, &cfg)
        })?;
    Ok(SimHandle {
        slave_path,
        stats,
        stop,
        thread: Some(thread),
    })
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Writes generated lines to a PTY at the configured pace and keeps the ledger.
pub struct Writer {
    /// The terminal written to.
    pub pty: Pty,
    ledger: Option<BufWriter<File>>,
    stats: Arc<SimStats>,
    stop: Arc<AtomicBool>,
    sent: u64,
}

/// What [`Writer::run_until`] stopped for.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// `count` lines were sent.
    Count,
    /// Asked to stop.
    Asked,
    /// The reader went away (write failed).
    ReaderGone,
    /// `until` lines were sent.
    Until,
}

impl Writer {
    /// A writer on `pty`.
    pub fn new(
        pty: Pty,
        ledger: Option<BufWriter<File>>,
        stats: Arc<SimStats>,
        stop: Arc<AtomicBool>,
    ) -> Writer {
        Writer {
            pty,
            ledger,
            stats,
            stop,
            sent: 0,
        }
    }

    /// Lines sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Waits until someone opens the slave; false if asked to stop first.
    pub fn wait_reader(&mut self) -> io::Result<bool> {
        while !self.stop.load(Ordering::Relaxed) {
            if self.pty.wait_opened(Duration::from_millis(100))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes until `count` (from the config) or stop.
    pub fn run(&mut self, generator: &mut Generator, cfg: &SimConfig) -> io::Result<()> {
        self.run_until(generator, cfg, None).map(|_| ())
    }

    /// Writes lines paced by `generator` until the config's count, `until`
    /// lines in total, a stop request or a failed write.
    pub fn run_until(
        &mut self,
        generator: &mut Generator,
        cfg: &SimConfig,
        until: Option<u64>,
    ) -> io::Result<Stopped> {
        let start = Instant::now();
        let first = self.sent;
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut entries = Vec::new();
        let result = loop {
            if self.stop.load(Ordering::Relaxed) {
                break Stopped::Asked;
            }
            if cfg.count.is_some_and(|c| self.sent >= c) {
                break Stopped::Count;
            }
            if until.is_some_and(|u| self.sent >= u) {
                break Stopped::Until;
            }
            // Every line due by now goes out in one write: at high rates this
            // batches, at low rates it is one line a write.
            let due = generator.due_lines(start.elapsed(), self.sent - first);
            if due == 0 {
                let wait = generator.until_next(start.elapsed(), self.sent - first);
                std::thread::sleep(wait.min(Duration::from_millis(50)));
                continue;
            }
            let mut n = due.min(4096);
            if let Some(c) = cfg.count {
                n = n.min(c - self.sent);
            }
            if let Some(u) = until {
                n = n.min(u - self.sent);
            }
            buf.clear();
            entries.clear();
            let now = now_ms();
            for _ in 0..n {
                let e = generator.next(now, self.sent + entries.len() as u64);
                buf.extend_from_slice(&e.line);
                buf.push(b'\n');
                entries.push(e.entry);
            }
            if self.pty.write_all(&buf, &self.stop).is_err() {
                break Stopped::ReaderGone;
            }
            self.sent += n;
            for e in &entries {
                if e.valid {
                    self.stats.valid.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.garbage.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(l) = &mut self.ledger {
                    serde_json::to_writer(&mut *l, e).map_err(io::Error::other)?;
                    l.write_all(b"\n")?;
                }
            }
        };
        if let Some(l) = &mut self.ledger {
            l.flush()?;
        }
        if result == Stopped::Count {
            self.stats.done.store(true, Ordering::Relaxed);
        }
        Ok(result)
    }

    /// Flushes the ledger.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.ledger {
            Some(l) => l.flush(),
            None => Ok(()),
        }
    }
}
