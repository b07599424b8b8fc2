//! Simulated sensor firmware for Tidegate.
//!
//! It plays a board of sensors on a serial line: it opens its own
//! pseudo-terminal, writes one reading a line at a chosen rate, and keeps a
//! ledger of every line it sent, so a test can prove what arrived.
//!
//! The [`Generator`] is pure (time is passed in); [`Pty`] and [`Writer`] do
//! the I/O, and [`spawn_pty`] runs them on a thread for in-process use.

#![warn(missing_docs)]

pub mod frame;
mod generator;
pub mod modbus;
pub mod mqtt;
mod pty;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use generator::{Emitted, Generator};
pub use pty::{PartialWrite, Pty};
use serde::{Deserialize, Serialize};

/// How readings are written on the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// `sensor=s01 ts=1764053000123 temp=21.53 hum=40.2`
    Kv,
    /// `{"sensor":"s01","ts":1764053000123,"temp":21.53,"hum":40.2}`
    Json,
    /// InfluxDB line protocol: `sim,sensor=s01 temp=21.53,hum=40.2 1764053000123`
    Lp,
    /// CSV with the header `sensor,ts,temp,hum` (not sent): `s01,1764053000123,21.53,40.2`
    Csv,
    /// COBS-delimited postcard frames with a CRC-16 (`frame.rs`, README).
    Binary,
}

impl Framing {
    /// The byte that ends a line (a frame, for `binary`).
    pub fn terminator(self) -> u8 {
        match self {
            Framing::Binary => 0,
            _ => b'\n',
        }
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of sensors, named `s01`, `s02`, ...
    pub sensors: usize,
    /// Readings per second over all sensors (ignored when replaying).
    pub rate: f64,
    /// Stop after this many lines (valid and garbage); `None` runs until
    /// stopped (or, replaying, until the file ends).
    pub count: Option<u64>,
    /// Line format.
    pub framing: Framing,
    /// Probability (0..1) that a line is garbage instead of a reading.
    pub garbage_rate: f64,
    /// Seed: the same seed gives the same values and garbage.
    pub seed: u64,
    /// Replay this CSV (`timestamp,value`, header, UTC `YYYY-MM-DD HH:MM:SS`)
    /// as sensor `s01`, field `value`, instead of synthetic signals.
    pub replay: Option<PathBuf>,
    /// Replay speed-up: 3600 plays an hour of the CSV per second.
    pub speedup: f64,
    /// Faults beyond garbage (none by default).
    pub faults: Faults,
}

/// Faults a real serial device shows besides garbage. Each is a probability
/// per line (0: never), except bursts.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The previous reading sent again, unchanged (a retransmission): a
    /// valid ledger entry of its own, so a reading may appear twice.
    pub duplicate: f64,
    /// A reading held back and sent after its sensor's next one: the
    /// sensor's timestamps go backwards once.
    pub reorder: f64,
    /// A reading stamped an hour ahead (the device's clock jumped): the
    /// agent refuses it (`max_future_skew`), so the ledger calls it garbage.
    pub clock_jump: f64,
    /// A line as a UART set to the wrong baud rate decodes it: bytes that
    /// are not text (binary framing: a frame whose CRC fails). Garbage.
    pub baud_mismatch: f64,
    /// Every `burst_every`, `burst_lines` more lines at once, on top of the rate.
    pub burst_lines: u64,
    /// How often a burst comes.
    pub burst_every: Option<Duration>,
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
            faults: Faults::default(),
        }
    }
}

/// One line sent, as the ledger records it (one JSON object a line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the stream of lines sent, from 0.
    pub seq: u64,
    /// A reading (true) or garbage (false).
    pub valid: bool,
    /// Sensor id, for readings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<String>,
    /// The device's site (MQTT mode: a topic level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Timestamp in Unix milliseconds, for readings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// Field values, for readings: exactly the f64 the printed text parses to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, f64>>,
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
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
        );
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
    /// Set once `count` lines are sent (or the replay ended) and the ledger
    /// is flushed: it can be read in full from then on.
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
    /// Stops the writer and waits for it (flushing the ledger, closing the PTY).
    pub fn stop(self) {
        let _ = self.finish();
    }

    /// Like [`SimHandle::stop`], but says whether the writer failed.
    pub fn finish(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the firmware-sim thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Opens a PTY and writes readings to it on a thread: from when the slave is
/// first opened, pausing while nobody has it open, until `count` lines are
/// sent (the PTY then stays open so the reader can drain it) or the handle is
/// stopped. `ledger`, if given, is created (truncated) and written as lines go.
pub fn spawn_pty(cfg: SimConfig, ledger: Option<PathBuf>) -> io::Result<SimHandle> {
    let pty = Pty::open()?;
    let slave_path = pty.slave_path().to_path_buf();
    let stats = Arc::new(SimStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = match ledger {
        Some(p) => Some(BufWriter::new(File::create(p)?)),
        None => None,
    };
    let mut writer = Writer::new(&cfg, ledger, stats.clone(), stop.clone())?;
    let thread = std::thread::Builder::new()
        .name("firmware-sim".into())
        .spawn(move || {
            let result = serve(&mut writer, &pty);
            writer.flush().and(result)
        })?;
    Ok(SimHandle {
        slave_path,
        stats,
        stop,
        thread: Some(thread),
    })
}

/// The in-process writer's life: send while someone reads, then idle.
fn serve(writer: &mut Writer, pty: &Pty) -> io::Result<()> {
    loop {
        if !writer.wait_reader(pty)? {
            return Ok(());
        }
        match writer.run_until(pty, None)? {
            Stopped::Done => {
                // Closing the master would drop what the reader has not read
                // yet: keep it open until stopped.
                writer.idle(pty);
                return Ok(());
            }
            Stopped::Asked => return Ok(()),
            Stopped::ReaderGone | Stopped::Until => {}
            Stopped::WriteFailed(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lines written at most per write(2): enough to reach 100k lines/s with a
/// few wake-ups a millisecond, small enough to keep the ledger close behind.
const BATCH_LINES: u64 = 1024;

/// How far behind schedule the writer may fall before it gives up catching
/// up on the lost time.
const MAX_LAG: Duration = Duration::from_secs(1);

/// Writes generated lines to a PTY at the configured pace and keeps the
/// ledger and the counters.
pub struct Writer {
    generator: Generator,
    count: Option<u64>,
    ledger: Option<BufWriter<File>>,
    stats: Arc<SimStats>,
    stop: Arc<AtomicBool>,
    sent: u64,
    /// The last write stopped inside a line: the next write starts with a
    /// '\n' so the fragment cannot glue onto a ledgered line.
    torn: bool,
    follow_reader: bool,
}

/// Why [`Writer::run_until`] returned.
#[derive(Debug)]
pub enum Stopped {
    /// `count` lines were sent, or the replay file ended; the ledger is flushed.
    Done,
    /// The stop flag was set.
    Asked,
    /// Nobody has the slave open any more.
    ReaderGone,
    /// `until` lines were sent in total.
    Until,
    /// A write failed; only the lines written in full were counted.
    WriteFailed(io::Error),
}

impl Writer {
    /// A writer for `cfg`, setting `stop` ends it; reads the replay CSV, if any.
    pub fn new(
        cfg: &SimConfig,
        ledger: Option<BufWriter<File>>,
        stats: Arc<SimStats>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Writer> {
        Ok(Writer {
            generator: Generator::new(cfg)?,
            count: cfg.count,
            ledger,
            stats,
            stop,
            sent: 0,
            torn: false,
            follow_reader: true,
        })
    }

    /// Whether [`Writer::run_until`] pauses (returns
    /// [`Stopped::ReaderGone`]) when nobody has the slave open; on by
    /// default. Off, lines go into the kernel's buffer for the next reader,
    /// and writing blocks once it is full.
    pub fn follow_reader(&mut self, on: bool) {
        self.follow_reader = on;
    }

    /// Lines sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Waits until someone has the slave open; false if asked to stop first.
    pub fn wait_reader(&mut self, pty: &Pty) -> io::Result<bool> {
        // A pause: let ledger readers see everything sent so far.
        self.flush()?;
        while !self.stop.load(Ordering::Relaxed) {
            if pty.wait_opened(Duration::from_millis(100))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Keeps `pty` open, doing nothing, until asked to stop.
    pub fn idle(&self, pty: &Pty) {
        while !self.stop.load(Ordering::Relaxed) {
            pty.discard_input();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes lines, paced from this call's start, until `count` lines (from
    /// the config) or `until` lines in total are sent, the stop flag is set,
    /// the reader goes away or a write fails. The ledger is flushed on return.
    pub fn run_until(&mut self, pty: &Pty, until: Option<u64>) -> io::Result<Stopped> {
        let result = self.pump(pty, until);
        self.flush()?;
        let result = result?;
        if matches!(result, Stopped::Done) {
            // After the flush: `done` promises a complete ledger.
            self.stats.done.store(true, Ordering::SeqCst);
        }
        Ok(result)
    }

    fn pump(&mut self, pty: &Pty, until: Option<u64>) -> io::Result<Stopped> {
        let mut start = Instant::now();
        let first = self.sent;
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut lines: Vec<(usize, LedgerEntry)> = Vec::new();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(Stopped::Asked);
            }
            if self.count.is_some_and(|c| self.sent >= c) || self.generator.finished(self.sent) {
                return Ok(Stopped::Done);
            }
            if until.is_some_and(|u| self.sent >= u) {
                return Ok(Stopped::Until);
            }
            if self.follow_reader && pty.hung_up()? {
                return Ok(Stopped::ReaderGone);
            }
            pty.discard_input();
            // Behind by more than MAX_LAG (a reader that stopped reading, a
            // stalled machine): let the schedule slip rather than make it all
            // up in one burst, as a UART cannot send faster either.
            if let Some(at) = self.generator.deadline(self.sent - first) {
                let lag = start.elapsed().saturating_sub(at);
                if lag > MAX_LAG {
                    start += lag - MAX_LAG;
                }
            }
            // Every line due by now goes out in one write: at high rates this
            // batches, at low rates it is one line a write.
            let due = self.generator.due_lines(start.elapsed(), self.sent - first);
            if due == 0 {
                // A pause: flush the ledger while nothing else is going on.
                self.flush()?;
                let wait = self
                    .generator
                    .until_next(start.elapsed(), self.sent - first);
                std::thread::sleep(wait.min(Duration::from_millis(20)));
                continue;
            }
            let limit = [self.count, until]
                .into_iter()
                .flatten()
                .map(|c| c.saturating_sub(self.sent))
                .fold(BATCH_LINES, u64::min);
            let n = due.min(limit);
            buf.clear();
            lines.clear();
            let end = self.generator.terminator();
            if self.torn {
                buf.push(end);
            }
            let now = now_ms();
            for i in 0..n {
                let e = self.generator.next(now, self.sent + i);
                buf.extend_from_slice(&e.line);
                buf.push(end);
                lines.push((buf.len(), e.entry));
            }
            let (written, failure) = match pty.write_all(&buf, &self.stop) {
                Ok(()) => (buf.len(), None),
                Err(p) => (p.written, Some(p.error)),
            };
            // Only lines that went out whole count as sent.
            let whole = lines.partition_point(|(end, _)| *end <= written);
            let boundary = if whole == 0 {
                usize::from(self.torn)
            } else {
                lines[whole - 1].0
            };
            if whole > 0 || written > 0 {
                self.torn = written != boundary;
            }
            for (_, e) in lines.drain(..whole) {
                self.record(&e)?;
            }
            if let Some(error) = failure {
                return Ok(if error.kind() == io::ErrorKind::Interrupted {
                    Stopped::Asked
                } else {
                    Stopped::WriteFailed(error)
                });
            }
        }
    }

    fn record(&mut self, e: &LedgerEntry) -> io::Result<()> {
        self.sent += 1;
        let counter = if e.valid {
            &self.stats.valid
        } else {
            &self.stats.garbage
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = &mut self.ledger {
            serde_json::to_writer(&mut *l, e).map_err(io::Error::other)?;
            l.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Flushes the ledger.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.ledger {
            Some(l) => l.flush(),
            None => Ok(()),
        }
    }
}
