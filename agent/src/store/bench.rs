//! `tidegate bench store`: the store fed as a gateway would feed it, measured.
//!
//! Real recordings (or a synthetic fleet of series) are replayed in timestamp
//! order on a simulated clock: a flush every simulated second (`--commits`
//! a second), a seal every `store.seal_interval` and a round of compaction
//! every `store.compact_every` seals (defaults), as the store task does live.
//! Figures come from the process itself: CPU time (getrusage), bytes written
//! (`/proc/self/io`), peak RSS (`VmHWM`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{JournalMode, Store, StoreError};
use crate::ops::Metrics;
use crate::point::{Batch, Point, SeriesKey};

/// What to replay.
#[derive(Debug, Clone)]
pub enum Feed {
    /// `timestamp,value` CSV files, one series each, interleaved by time.
    Files(Vec<PathBuf>),
    /// `series` synthetic series at `rate` points/s in total for `seconds`.
    Synthetic {
        /// Number of series.
        series: usize,
        /// Points per simulated second, all series together.
        rate: usize,
        /// Simulated seconds.
        seconds: usize,
        /// How far the series' rates spread: 1, all alike; 16, log-uniform
        /// from a quarter to four times the mean.
        spread: f64,
    },
}

/// Reads a NAB-style CSV (`timestamp,value`, header, `YYYY-MM-DD HH:MM:SS` UTC).
pub fn read_nab_csv(path: &Path) -> std::io::Result<(Vec<i64>, Vec<f64>)> {
    let text = std::fs::read_to_string(path)?;
    let (mut ts, mut vs) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate().skip(1) {
        let bad =
            |what: &str| std::io::Error::other(format!("{}:{}: {what}", path.display(), i + 1));
        let (t, v) = line
            .split_once(',')
            .ok_or_else(|| bad("expected timestamp,value"))?;
        let t = humantime::parse_rfc3339_weak(t.trim()).map_err(|e| bad(&e.to_string()))?;
        let t = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| bad(&e.to_string()))?
            .as_nanos() as i64;
        ts.push(t);
        vs.push(v.trim().parse::<f64>().map_err(|e| bad(&e.to_string()))?);
    }
    Ok((ts, vs))
}

/// pco alone over 8192-point blocks of each column: the reference figure.
pub fn pco_reference_bytes(ts: &[i64], vs: &[f64]) -> usize {
    let cfg = pco::ChunkConfig::default();
    ts.chunks(8192)
        .zip(vs.chunks(8192))
        .map(|(t, v)| {
            pco::standalone::simple_compress(t, &cfg).map_or(0, |b| b.len())
                + pco::standalone::simple_compress(v, &cfg).map_or(0, |b| b.len())
        })
        .sum()
}

struct Series {
    name: String,
    key: SeriesKey,
    ts: Vec<i64>,
    vs: Vec<f64>,
}

/// The feed's points in timestamp order, as `(ts, series index, value)`.
/// Recordings are loaded whole (the pco reference needs them); a synthetic
/// fleet is generated a simulated second at a time, so a day at 10k points/s
/// needs no memory for its input and peak RSS is the store's.
enum Replay {
    Files {
        series: Vec<Series>,
        order: std::vec::IntoIter<(i64, u32, u32)>,
    },
    Synthetic(Synthetic),
}

/// Random walks quantised to 0.01, each series at its own rate (all at
/// rate/series Hz, or spread around it) with a little jitter, stamped on
/// arrival to the millisecond as the agent's sources do
/// (`point::arrival_ns`): a busy regional gateway.
struct Synthetic {
    /// Series `i` is `s{i:05}` ([`Synthetic::name`]).
    keys: Vec<SeriesKey>,
    walks: Vec<Walk>,
    rng: fastrand::Rng,
    /// End of the next simulated second to generate.
    until: i64,
    /// The second generated, in timestamp order, and how far it is read.
    ready: Vec<(i64, u32, f64)>,
    read: usize,
}

/// One synthetic series.
struct Walk {
    /// Offset of its first point, nominal ns between points, points in all.
    phase: i64,
    step: i64,
    points: i64,
    /// Position of the walk, and the next point's index.
    x: i64,
    j: i64,
}

const T0: i64 = 1_764_000_000_000_000_000;
const SECOND: i64 = 1_000_000_000;

impl Synthetic {
    fn new(series: usize, rate: usize, seconds: usize, spread: f64) -> Self {
        let mut rng = fastrand::Rng::with_seed(7);
        // Each series' share of the rate: log-uniform over `spread` times,
        // scaled so that together they make `rate`.
        let shares: Vec<f64> = (0..series)
            .map(|_| match spread > 1.0 {
                true => spread.powf(rng.f64() - 0.5),
                false => 1.0,
            })
            .collect();
        let sum: f64 = shares.iter().sum();
        let walks = shares
            .iter()
            .map(|share| {
                let per = (rate as f64 * share / sum).max(1e-9);
                let step = (1e9 / per) as i64;
                Walk {
                    phase: rng.i64(0..step.max(1)),
                    step,
                    points: ((seconds as f64) * per) as i64,
                    x: rng.i64(1000..3000),
                    j: 0,
                }
            })
            .collect();
        let keys = (0..series)
            .map(|i| SeriesKey::new("synthetic", [("id", Self::name(i).as_str())], "v"))
            .collect();
        Synthetic {
            keys,
            walks,
            rng,
            until: T0,
            ready: Vec::new(),
            read: 0,
        }
    }

    fn name(i: usize) -> String {
        format!("s{i:05}")
    }

    /// The next point, generating the next simulated second when one is read.
    fn next(&mut self) -> Option<(i64, u32, f64)> {
        while self.read == self.ready.len() {
            self.ready.clear();
            self.read = 0;
            self.until += SECOND;
            let mut left = false;
            for (i, w) in self.walks.iter_mut().enumerate() {
                while w.j < w.points && T0 + w.phase + w.j * w.step < self.until {
                    w.x += self.rng.i64(-3..=3);
                    let t = T0 + w.phase + w.j * w.step + self.rng.i64(0..1_000_000);
                    self.ready
                        .push((crate::point::to_arrival(t), i as u32, w.x as f64 / 100.0));
                    w.j += 1;
                }
                left |= w.j < w.points;
            }
            self.ready.sort_unstable_by_key(|p| (p.0, p.1));
            if self.ready.is_empty() && !left {
                return None;
            }
        }
        self.read += 1;
        Some(self.ready[self.read - 1])
    }
}

impl Replay {
    fn new(feed: &Feed) -> std::io::Result<Self> {
        match feed {
            Feed::Files(files) => {
                let series = files
                    .iter()
                    .map(|p| {
                        let (ts, vs) = read_nab_csv(p)?;
                        let name = p
                            .file_stem()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let key = SeriesKey::new("nab", [("file", name.as_str())], "value");
                        Ok(Series { name, key, ts, vs })
                    })
                    .collect::<std::io::Result<Vec<_>>>()?;
                // Interleave by timestamp, as the points would arrive live.
                let mut order = Vec::new();
                for (si, s) in series.iter().enumerate() {
                    for (j, &t) in s.ts.iter().enumerate() {
                        order.push((t, si as u32, j as u32));
                    }
                }
                order.sort_unstable();
                Ok(Replay::Files {
                    series,
                    order: order.into_iter(),
                })
            }
            &Feed::Synthetic {
                series,
                rate,
                seconds,
                spread,
            } => Ok(Replay::Synthetic(Synthetic::new(
                series, rate, seconds, spread,
            ))),
        }
    }

    /// Points in all.
    fn total(&self) -> usize {
        match self {
            Replay::Files { series, .. } => series.iter().map(|s| s.ts.len()).sum(),
            Replay::Synthetic(s) => s.walks.iter().map(|w| w.points as usize).sum(),
        }
    }

    fn series_count(&self) -> usize {
        match self {
            Replay::Files { series, .. } => series.len(),
            Replay::Synthetic(s) => s.keys.len(),
        }
    }

    fn key(&self, i: u32) -> &SeriesKey {
        match self {
            Replay::Files { series, .. } => &series[i as usize].key,
            Replay::Synthetic(s) => &s.keys[i as usize],
        }
    }

    /// The longest series: its name, key and middle timestamp.
    fn longest(&self) -> Option<(String, &SeriesKey, i64)> {
        match self {
            Replay::Files { series, .. } => series
                .iter()
                .max_by_key(|s| s.ts.len())
                .map(|s| (s.name.clone(), &s.key, s.ts[s.ts.len() / 2])),
            Replay::Synthetic(s) => {
                // The first of the longest (max_by_key keeps the last).
                let longest = s.walks.iter().enumerate().rev();
                let (i, w) = longest.max_by_key(|(_, w)| w.points)?;
                let mid = T0 + w.phase + w.points / 2 * w.step;
                Some((
                    Synthetic::name(i),
                    &s.keys[i],
                    crate::point::to_arrival(mid),
                ))
            }
        }
    }
}

impl Iterator for Replay {
    type Item = (i64, u32, f64);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Replay::Files { series, order } => order
                .next()
                .map(|(t, si, j)| (t, si, series[si as usize].vs[j as usize])),
            Replay::Synthetic(s) => s.next(),
        }
    }
}

/// CPU seconds (user + system) of this process so far.
pub(crate) fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A `key: value [kB]` line of a `/proc` file such as `/proc/self/status`.
pub(crate) fn proc_field(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time of the calling thread, ns.
pub(crate) fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Bytes written (`/proc/self/io`) during flushes, seals and compaction,
/// and the longest step of each (the store task serves nothing meanwhile),
/// in wall time and in CPU time (on a busy machine the wall time of a step
/// is mostly waiting for a core).
#[derive(Default)]
struct Stages {
    bytes: [u64; 3],
    longest: [Duration; 3],
    longest_cpu: [Duration; 3],
}

impl Stages {
    /// Runs `f`, a step of stage `k`, adding what it wrote.
    fn time<T>(&mut self, k: usize, f: impl FnOnce() -> T) -> T {
        let wb = || proc_field("/proc/self/io", "write_bytes:").unwrap_or(0);
        let before = wb();
        let started = Instant::now();
        let cpu = thread_cpu_ns();
        let out = f();
        let cpu = Duration::from_nanos(thread_cpu_ns().saturating_sub(cpu));
        self.longest[k] = self.longest[k].max(started.elapsed());
        self.longest_cpu[k] = self.longest_cpu[k].max(cpu);
        self.bytes[k] += wb().saturating_sub(before);
        out
    }

    /// Bytes written by all stages so far.
    fn total(&self) -> u64 {
        self.bytes.iter().sum()
    }

    /// Seals as the agent's upkeep does, a step at a time.
    fn seal(&mut self, store: &mut Store) -> Result<(), StoreError> {
        self.time(1, || store.seal_begin());
        while self.time(1, || store.seal_step())? {}
        Ok(())
    }

    /// A round of compaction, a step at a time; returns the merges done.
    fn compact(&mut self, store: &mut Store) -> Result<usize, StoreError> {
        self.time(2, || store.compact_begin())?;
        while self.time(2, || store.compact_step())? {}
        Ok(store.compacted())
    }
}

/// How the bench runs the store.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// SQLite journal mode.
    pub journal: JournalMode,
    /// Commits a simulated second (at least one).
    pub commits: u32,
    /// Simulated time between seals (`store.seal_interval`).
    pub seal_interval: Duration,
    /// Seals between rounds of compaction (`store.compact_every`).
    pub compact_every: u32,
}

/// Runs the bench in `dir` (a fresh store) and returns the printed report.
pub fn run(feed: &Feed, dir: &Path, opts: Options) -> Result<String, StoreError> {
    let mut replay = Replay::new(feed).map_err(|e| StoreError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let total = replay.total();
    let first = replay.next();

    let path = dir.join("bench.db");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir_all(super::engine::journal_dir(&path));
    let metrics = Metrics::new("bench");
    let mut store = Store::open(&path, metrics.clone())?;
    store.set_journal_mode(opts.journal)?;
    let written_before = proc_field("/proc/self/io", "write_bytes:").unwrap_or(0);
    let device_before = device_written(dir);
    let cpu_before = cpu_seconds();
    let wall = Instant::now();

    // A commit each `slot` of simulated time; the seal's clock stays in seconds.
    let slot = SECOND / i64::from(opts.commits.max(1));
    let start = first.map_or(0, |p| p.0);
    let mut current = start.div_euclid(slot);
    let seal_every = opts.seal_interval.as_secs().max(1) as i64;
    let mut next_seal = start.div_euclid(SECOND) + seal_every;
    let mut batch = Batch::default();
    let mut stages = Stages::default();
    let mut compaction = super::actor::CompactAfter::new(opts.compact_every);
    // Written per point in each simulated hour: whether the store settles
    // (compaction's later levels begin hours in), which the whole run's
    // figure, its first hours included, understates.
    const HOUR: i64 = 3600;
    let mut next_hour = start.div_euclid(SECOND) + HOUR;
    let (mut replayed, mut hour_mark) = (0usize, (0usize, 0u64));
    let mut hours: Vec<(usize, u64)> = Vec::new();
    let progress = crate::ops::progress::bar(total as u64, "points replayed");
    let mut point = first;
    while let Some((t, si, value)) = point {
        let s = t.div_euclid(slot);
        if s != current {
            // The simulated clock crosses a slot: what arrived is flushed.
            progress.inc(batch.len() as u64);
            replayed += batch.len();
            store.append(&batch)?;
            batch.points.clear();
            stages.time(0, || store.flush())?;
            current = s;
            let now = t.div_euclid(SECOND);
            if now >= next_seal {
                // As the agent's upkeep does: seal, then a round of compaction.
                stages.seal(&mut store)?;
                if compaction.seal() {
                    stages.compact(&mut store)?;
                }
                next_seal = now + seal_every;
            }
            if now >= next_hour {
                let (points, bytes) = (replayed - hour_mark.0, stages.total() - hour_mark.1);
                hours.push((points, bytes));
                hour_mark = (replayed, stages.total());
                next_hour += HOUR;
            }
        }
        batch.points.push(Point {
            series: replay.key(si).clone(),
            ts_ns: t,
            value,
        });
        point = replay.next();
    }
    store.append(&batch)?;
    stages.time(0, || store.flush())?;
    stages.seal(&mut store)?;
    progress.finish_and_clear();
    let ingest_cpu = cpu_seconds() - cpu_before;
    let ingest_wall = wall.elapsed().as_secs_f64();
    // Compaction to the end: the figure "after compaction".
    while stages.compact(&mut store)? > 0 {}
    stages.time(2, || store.checkpoint())?;
    let written = proc_field("/proc/self/io", "write_bytes:").unwrap_or(0) - written_before;
    let device = device_before.and_then(|(dev, before)| {
        let (_, after) = device_written(dir)?;
        Some((dev, after.saturating_sub(before)))
    });

    let mut report = String::new();
    let used = store.used_bytes()?;
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let chunk_bytes = store.chunk_bytes(None)?;
    let _ = writeln!(
        report,
        "points                  {total} in {} series",
        replay.series_count()
    );
    let _ = writeln!(
        report,
        "ingest                  {:.0} points/s per CPU second ({:.0} points/s wall)",
        total as f64 / ingest_cpu.max(1e-9),
        total as f64 / ingest_wall.max(1e-9)
    );
    let _ = writeln!(
        report,
        "on disk                 {:.3} B/pt chunks only, {:.3} B/pt in use (live pages, journal files, those kept for reuse too), {:.3} B/pt database file ({} bytes)",
        chunk_bytes as f64 / total as f64,
        used as f64 / total as f64,
        file as f64 / total as f64,
        file
    );
    let _ = writeln!(
        report,
        "written                 {:.2} B/pt ({} bytes, /proc/self/io write_bytes, WAL and checkpoints included)",
        written as f64 / total as f64,
        written
    );
    if let Some((dev, bytes)) = device {
        let _ = writeln!(
            report,
            "  at the device         {:.2} B/pt ({bytes} bytes written to {dev} meanwhile: the file system's journal included, and every other writer on it)",
            bytes as f64 / total as f64
        );
    }
    let per = |c: &std::sync::atomic::AtomicU64| {
        c.load(std::sync::atomic::Ordering::Relaxed) as f64 / total as f64
    };
    let st = &metrics.store;
    let _ = writeln!(
        report,
        "  of which chunks       {:.2} B/pt journal + {:.2} sealed + {:.2} merged (encoded; the rest is SQLite's pages and journal)",
        per(&st.journal_bytes),
        per(&st.sealed_bytes),
        per(&st.merged_bytes)
    );
    let _ = writeln!(
        report,
        "  by stage              {:.2} B/pt flushes + {:.2} seals + {:.2} compaction (write_bytes around each)",
        stages.bytes[0] as f64 / total as f64,
        stages.bytes[1] as f64 / total as f64,
        stages.bytes[2] as f64 / total as f64
    );
    // A run of days is shown a day at a time; recordings of months or years
    // (NAB's) not at all: a few points an hour, their bytes the flushes' own.
    let span = match hours.len() {
        2..=48 => Some((1, "hour")),
        49..=1152 => Some((24, "day")),
        _ => None,
    };
    if let Some((span, unit)) = span {
        let list: Vec<String> = hours
            .chunks(span)
            .map(|c| {
                let (points, bytes) = c.iter().fold((0, 0), |a, h| (a.0 + h.0, a.1 + h.1));
                format!("{:.2}", bytes as f64 / points.max(1) as f64)
            })
            .collect();
        let _ = writeln!(
            report,
            "  {:<22}{} B/pt (write_bytes of each simulated {unit}'s stages; the run's end is not in them)",
            format!("by {unit}"),
            list.join(" ")
        );
    }
    for (label, d, what) in [
        (
            "longest step",
            stages.longest,
            "wall; the store task serves nothing meanwhile",
        ),
        (
            "  in CPU time",
            stages.longest_cpu,
            "the longest of each, this thread's",
        ),
    ] {
        let [f, s, c] = d.map(|d| d.as_secs_f64() * 1e3);
        let _ = writeln!(
            report,
            "{label:<24}{f:.0} ms flush, {s:.0} ms seal, {c:.0} ms compaction ({what})"
        );
    }
    let _ = writeln!(
        report,
        "peak RSS                {:.1} MiB (VmHWM; recordings replayed are held in memory, a synthetic feed is not)",
        proc_field("/proc/self/status", "VmHWM:").unwrap_or(0) as f64 / 1024.0
    );
    // One day of the longest series, the median of 21 runs.
    if let Some((name, key, from)) = replay.longest() {
        let to = from + 86_400 * SECOND;
        let mut times: Vec<f64> = (0..21)
            .map(|_| {
                let t = Instant::now();
                let n = store.read(key, from, to).map(|v| v.len()).unwrap_or(0);
                std::hint::black_box(n);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let n = store.read(key, from, to)?.len();
        let _ = writeln!(
            report,
            "query one day           {:.3} ms median ({n} points of {name})",
            times[10]
        );
    }
    if let Replay::Files { series, .. } = &replay {
        let _ = writeln!(
            report,
            "\nper file               points   B/pt store  B/pt pco-8192   ratio"
        );
        let (mut ours, mut reference) = (0usize, 0usize);
        for s in series {
            let b = store.chunk_bytes(Some(&s.key))? as usize;
            let r = pco_reference_bytes(&s.ts, &s.vs);
            ours += b;
            reference += r;
            let n = s.ts.len() as f64;
            let _ = writeln!(
                report,
                "{:<22} {:>7} {:>11.3} {:>14.3} {:>7.3}",
                truncate(&s.name, 22),
                s.ts.len(),
                b as f64 / n,
                r as f64 / n,
                b as f64 / r.max(1) as f64
            );
        }
        let _ = writeln!(
            report,
            "{:<22} {:>7} {:>11.3} {:>14.3} {:>7.3}",
            "all pooled",
            total,
            ours as f64 / total as f64,
            reference as f64 / total as f64,
            ours as f64 / reference.max(1) as f64
        );
    }
    Ok(report)
}

/// The block device holding `dir`, and the bytes written to it so far
/// (`/sys/dev/block/MAJ:MIN/stat`, after a `sync` so that what is dirty
/// now counts now), if the kernel says.
fn device_written(dir: &Path) -> Option<(String, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::metadata(dir).ok()?.dev();
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = format!("/sys/dev/block/{major}:{minor}");
    let stat = std::fs::read_to_string(format!("{sys}/stat")).ok()?;
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    let name = std::fs::read_link(&sys)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or(format!("{major}:{minor}"));
    Some((name, sectors * 512))
}

fn truncate(s: &str, n: usize) -> &str {
    &s[..s.len().min(n)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synthetic_feed_streams_every_point_in_time_order() {
        let feed = Feed::Synthetic {
            series: 50,
            rate: 200,
            seconds: 30,
            spread: 1.0,
        };
        let replay = Replay::new(&feed).unwrap();
        assert_eq!(replay.total(), 50 * 120);
        let points: Vec<(i64, u32, f64)> = replay.collect();
        assert_eq!(points.len(), 50 * 120);
        assert!(points.windows(2).all(|w| w[0].0 <= w[1].0), "out of order");
        let mut per = [0usize; 50];
        for p in &points {
            per[p.1 as usize] += 1;
        }
        assert!(per.iter().all(|&n| n == 120), "{per:?}");
    }

    #[test]
    fn the_bench_stores_what_it_replays() {
        let dir = tempfile::tempdir().unwrap();
        let feed = Feed::Synthetic {
            series: 5,
            rate: 10,
            seconds: 1300,
            spread: 1.0,
        };
        let opts = Options {
            journal: JournalMode::Rollback,
            commits: 1,
            seal_interval: Duration::from_secs(600),
            compact_every: 1,
        };
        let report = run(&feed, dir.path(), opts).unwrap();
        assert!(
            report.contains("points                  13000 in 5 series"),
            "{report}"
        );
        // The middle day of s00000: all of its second half.
        assert!(report.contains("(1300 points of s00000)"), "{report}");
    }
}
