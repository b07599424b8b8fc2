//! `tidegate query`: read the store of a running (or stopped) agent, with no
//! network, e.g. during an outage.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::{Store, StoreError};
use crate::point::SeriesKey;

/// How query results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// `series,ts_ns,value`.
    Csv,
    /// InfluxDB line protocol.
    Lp,
    /// One JSON object a point.
    Json,
    /// One line per series: min, max, last and a Unicode sparkline over the range.
    Spark,
}

/// Which resolution to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// The finest that covers the whole range.
    Auto,
    /// Raw points.
    Raw,
    /// Rollup windows of this many seconds.
    Rollup(i64),
}

impl Tier {
    /// Parses `auto`, `raw`, or a window width such as `1m`, `1h`.
    pub fn parse(s: &str) -> Result<Tier, String> {
        match s {
            "auto" => Ok(Tier::Auto),
            "raw" => Ok(Tier::Raw),
            other => humantime::parse_duration(other)
                .map(|d| Tier::Rollup(d.as_secs().max(1) as i64))
                .map_err(|_| format!("`{other}`: expected auto, raw, or a tier such as 1m or 1h")),
        }
    }
}

/// The finest tier that covers `[from, ..]` for `key`: raw if raw points reach
/// back to `from`, else the finest rollup tier (they are kept together on eviction).
fn choose(store: &Store, key: &SeriesKey, from: i64, tier: Tier) -> Result<Tier, StoreError> {
    Ok(match tier {
        Tier::Auto => match (store.oldest_raw(key)?, store.tiers().first()) {
            (Some(oldest), Some(&finest)) if oldest > from => Tier::Rollup(finest),
            (None, Some(&finest)) => Tier::Rollup(finest),
            _ => Tier::Raw,
        },
        t => t,
    })
}

/// Parses `now`, a relative time (`-1h`, `-15m`) or an RFC 3339 date, against `now_ns`.
pub fn parse_time(s: &str, now_ns: i64) -> Result<i64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now_ns);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let d = humantime::parse_duration(rel)
            .map_err(|e| format!("`{s}`: {e}; expected e.g. -1h, -15m"))?;
        return Ok(now_ns.saturating_sub(d.as_nanos() as i64));
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("`{s}`: {e}; expected now, -1h or 2026-11-25T08:00:00Z"))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as i64)
}

pub use crate::point::now_ns;

/// True when `key` matches `pattern`, where `*` stands for any run of characters.
pub fn glob(pattern: &str, key: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == key;
    }
    let mut rest = key;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Runs a query and renders it.
pub fn run(
    store: &Store,
    pattern: &str,
    from: i64,
    to: i64,
    tier: Tier,
    format: Format,
) -> Result<String, StoreError> {
    let series: Vec<SeriesKey> = store
        .series()
        .filter(|k| glob(pattern, k.as_str()))
        .cloned()
        .collect();
    let mut out = String::new();
    if format == Format::Csv {
        out.push_str("series,ts_ns,value\n");
    }
    if format == Format::Spark {
        let label = series.iter().map(|k| k.as_str().len()).max().unwrap_or(0);
        for key in &series {
            // (time, value, min, max) per point or window. `auto` stitches:
            // the finest rollup windows before the oldest raw point, raw after,
            // so a short history is not one window and an old outage still shows.
            let windows = |width: i64, to: i64| -> Result<Vec<_>, StoreError> {
                Ok(store
                    .read_rollup(key, width, from, to)?
                    .into_iter()
                    .map(|(t, a)| (t, a.mean(), a.min, a.max))
                    .collect())
            };
            let raw = |from: i64| -> Result<Vec<_>, StoreError> {
                Ok(store
                    .read(key, from, to)?
                    .into_iter()
                    .map(|(t, v)| (t, v, v, v))
                    .collect())
            };
            let samples: Vec<(i64, f64, f64, f64)> = match (tier, store.oldest_raw(key)?) {
                (Tier::Auto, Some(oldest)) if oldest > from => match store.tiers().first() {
                    Some(&finest) => {
                        // Whole windows only: one that reaches past the oldest
                        // raw point would count those points twice.
                        let mut s = windows(finest, oldest - 1)?;
                        s.retain(|w| w.0 + finest * 1_000_000_000 <= oldest);
                        s.extend(raw(oldest)?);
                        s
                    }
                    None => raw(from)?,
                },
                (Tier::Rollup(width), _) => windows(width, to)?,
                (Tier::Auto, None) => match store.tiers().first() {
                    Some(&finest) => windows(finest, to)?,
                    None => Vec::new(),
                },
                _ => raw(from)?,
            };
            let _ = writeln!(
                out,
                "{}",
                spark_line(key.as_str(), label, &samples, from, to, terminal_width())
            );
        }
        return Ok(out);
    }
    for key in &series {
        if let Tier::Rollup(width) = choose(store, key, from, tier)? {
            render_windows(
                &mut out,
                key,
                width,
                &store.read_rollup(key, width, from, to)?,
                format,
            );
            continue;
        }
        let points = store.read(key, from, to)?;
        for (ts, v) in points {
            match format {
                Format::Table => {
                    let t = humantime::format_rfc3339_nanos(
                        UNIX_EPOCH + Duration::from_nanos(ts.max(0) as u64),
                    );
                    let _ = writeln!(out, "{:<48} {t} {v:?}", key.as_str());
                }
                Format::Csv => {
                    let _ = writeln!(out, "\"{}\",{ts},{v:?}", key.as_str().replace('"', "\"\""));
                }
                Format::Lp => {
                    let (s, f) = key.split();
                    let _ = writeln!(out, "{s} {f}={v:?} {ts}");
                }
                Format::Json => {
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::json!({"series": key.as_str(), "ts_ns": ts, "value": v})
                    );
                }
                Format::Spark => unreachable!("rendered above"),
            }
        }
    }
    Ok(out)
}

/// The dead-letter table's rows (newest first) and how many there are in all:
/// table (time, source, reason, bytes, the bytes escaped, the reason's
/// message, then a count line), csv, or json (one object a line, the bytes
/// in hex). Line protocol has no form for them.
pub fn render_dead_letters(
    rows: &[super::DeadLetterRow],
    total: u64,
    format: Format,
) -> Result<String, String> {
    let mut out = String::new();
    let printable = |raw: &[u8]| raw.escape_ascii().to_string();
    let hex = |raw: &[u8]| raw.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match format {
        Format::Lp | Format::Spark => return Err("--dead-letters prints table, csv or json".into()),
        Format::Csv => out.push_str("ts_ns,source,reason,len,raw_hex,detail\n"),
        _ => {}
    }
    for r in rows {
        match format {
            Format::Table => {
                let t = humantime::format_rfc3339_millis(
                    UNIX_EPOCH + Duration::from_nanos(r.ts_ns.max(0) as u64),
                );
                let _ = writeln!(
                    out,
                    "{t} {:<12} {:<16} {:>5} B  \"{}\"  ({})",
                    r.source,
                    r.reason,
                    r.len,
                    printable(&r.raw),
                    r.detail
                );
            }
            Format::Csv => {
                let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{}",
                    r.ts_ns,
                    q(&r.source),
                    q(&r.reason),
                    r.len,
                    hex(&r.raw),
                    q(&r.detail)
                );
            }
            Format::Json => {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"ts_ns": r.ts_ns, "source": r.source, "reason": r.reason,
                        "detail": r.detail, "len": r.len, "raw_hex": hex(&r.raw)})
                );
            }
            Format::Lp | Format::Spark => unreachable!("refused above"),
        }
    }
    if format == Format::Table {
        let _ = writeln!(out, "{} of {total} dead letters (newest first)", rows.len());
    }
    Ok(out)
}

/// Notes on the clock corrections that moved points into `[from, to]`: one
/// line each, for stderr beside a query's output.
pub fn render_corrections(rows: &[super::CorrectionRow], from: i64, to: i64) -> String {
    let time = |ns: i64| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64))
    };
    let mut out = String::new();
    for r in rows.iter().filter(|r| r.to_ns >= from && r.from_ns <= to) {
        let _ = writeln!(
            out,
            "note: the clock stepped forward by {:.1}s at {}: {} points stamped on arrival, now between {} and {}, were moved by the step; {} sent before it keep the old time",
            r.step_ns as f64 / 1e9,
            time(r.at_ns),
            r.moved,
            time(r.from_ns),
            time(r.to_ns),
            r.sent_before
        );
    }
    out
}

/// Rollup windows: one row (or line-protocol line, tagged with the resolution) a window.
fn render_windows(
    out: &mut String,
    key: &SeriesKey,
    width: i64,
    windows: &[(i64, super::rollup::Agg)],
    format: Format,
) {
    let res = humantime::format_duration(Duration::from_secs(width as u64)).to_string();
    for (start, a) in windows {
        match format {
            Format::Table => {
                let t = humantime::format_rfc3339(
                    UNIX_EPOCH + Duration::from_nanos((*start).max(0) as u64),
                );
                let _ = writeln!(
                    out,
                    "{:<48} {t} [{res}] mean {:?} min {:?} max {:?} n {}",
                    key.as_str(),
                    a.mean(),
                    a.min,
                    a.max,
                    a.count
                );
            }
            Format::Csv => {
                let _ = writeln!(
                    out,
                    "\"{}\",{start},{:?},{res},{:?},{:?},{}",
                    key.as_str().replace('"', "\"\""),
                    a.mean(),
                    a.min,
                    a.max,
                    a.count
                );
            }
            Format::Lp => {
                let (s, f) = key.split();
                let _ = writeln!(
                    out,
                    "{s},tidegate_resolution={res} {f}={:?},{f}_min={:?},{f}_max={:?},{f}_count={}i {start}",
                    a.mean(),
                    a.min,
                    a.max,
                    a.count
                );
            }
            Format::Spark => unreachable!("rendered in run"),
            Format::Json => {
                let _ = writeln!(
                    out,
                    "{}",
                    serde_json::json!({"series": key.as_str(), "start_ns": start, "resolution": res,
                        "mean": a.mean(), "min": a.min, "max": a.max, "sum": a.sum, "count": a.count,
                        "first": a.first, "last": a.last})
                );
            }
        }
    }
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Columns of the terminal on stdout, if it is one.
fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ writes a winsize into `ws` and nothing else.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(ws.ws_col as usize)
}

/// `key  min … max … last …  ▁▂▅█▇▃` with the sparkline over `[from, to]`:
/// one column per equal slice of the range (its mean), blank where the
/// slice has no data (an outage shows as a gap). As wide as the terminal
/// allows, else 60 columns.
fn spark_line(
    key: &str,
    label: usize,
    samples: &[(i64, f64, f64, f64)],
    from: i64,
    to: i64,
    columns: Option<usize>,
) -> String {
    let Some(last) = samples.last() else {
        return format!("{key:<label$}  no data in the range");
    };
    let min = samples.iter().map(|s| s.2).fold(f64::INFINITY, f64::min);
    let max = samples
        .iter()
        .map(|s| s.3)
        .fold(f64::NEG_INFINITY, f64::max);
    let head = format!(
        "{key:<label$}  min {min:<10.4} max {max:<10.4} last {:<10.4} n {:<7} ",
        last.1,
        samples.len()
    );
    let width = match columns {
        Some(c) => c.saturating_sub(head.chars().count() + 1).clamp(10, 1000),
        None => 60,
    };
    let span = (to - from).max(1) as f64;
    let mut sums = vec![(0.0f64, 0u32); width];
    for &(t, v, _, _) in samples {
        let i = (((t - from) as f64 / span) * width as f64) as i64;
        let slot = &mut sums[i.clamp(0, width as i64 - 1) as usize];
        slot.0 += v;
        slot.1 += 1;
    }
    let means: Vec<Option<f64>> = sums
        .iter()
        .map(|&(s, n)| (n > 0).then(|| s / n as f64))
        .collect();
    let lo = means
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let hi = means
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let line: String = means
        .iter()
        .map(|m| match m {
            None => ' ',
            Some(v) if hi > lo => BARS[(((v - lo) / (hi - lo)) * 7.0).round() as usize],
            Some(_) => BARS[3],
        })
        .collect();
    format!("{head}{line}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn sparkline_spans_the_range_and_shows_gaps() {
        let samples: Vec<(i64, f64, f64, f64)> = (0..10)
            .chain(20..30)
            .map(|i| (i * 10, i as f64, i as f64, i as f64))
            .collect();
        let line = spark_line("m f", 3, &samples, 0, 300, None);
        assert!(line.starts_with("m f  min 0"), "{line}");
        let bars: String = line
            .chars()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert_eq!(bars.chars().count(), 60);
        assert_eq!(bars.chars().next(), Some('▁'));
        assert_eq!(bars.chars().last(), Some(' '), "{bars:?}");
        // The hole between 100 and 200 is blank, the end of the data is the top bar.
        assert_eq!(bars.chars().nth(30), Some(' '), "{bars:?}");
        assert!(bars.contains('█'));
        assert_eq!(
            spark_line("k", 1, &[], 0, 1, None),
            "k  no data in the range"
        );
    }

    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "a b"));
        assert!(glob("sim,*temp", "sim,sensor=s01 temp"));
        assert!(!glob("sim,*temp", "sim,sensor=s01 hum"));
        assert!(glob("*s01*", "sim,sensor=s01 hum"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn tiers_parse() {
        assert_eq!(Tier::parse("auto").unwrap(), Tier::Auto);
        assert_eq!(Tier::parse("1m").unwrap(), Tier::Rollup(60));
        assert_eq!(Tier::parse("1h").unwrap(), Tier::Rollup(3600));
        assert!(Tier::parse("fine").is_err());
    }

    #[test]
    fn auto_picks_raw_while_it_covers_and_a_rollup_after_eviction() {
        use crate::point::{Batch, Point};
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(&dir.path().join("s.db"), crate::ops::Metrics::new("t")).unwrap();
        let key = SeriesKey::from_canonical("m f");
        for i in 0..7200i64 {
            st.append(&Batch {
                points: vec![Point {
                    series: key.clone(),
                    ts_ns: i * 1_000_000_000,
                    value: (i % 10) as f64,
                }],
            })
            .unwrap();
            if i % 600 == 599 {
                st.flush().unwrap();
                st.seal().unwrap();
            }
        }
        let from = 0;
        assert_eq!(choose(&st, &key, from, Tier::Auto).unwrap(), Tier::Raw);
        // Raw older than an hour goes; its windows stay.
        st.set_limits(crate::store::Limits {
            max_age_ns: Some(3600 * 1_000_000_000),
            ..Default::default()
        });
        let ev = st.evict(7200 * 1_000_000_000, None).unwrap();
        assert!(ev.raw_points >= 3000, "{ev:?}");
        assert_eq!(
            choose(&st, &key, from, Tier::Auto).unwrap(),
            Tier::Rollup(60)
        );
        let text = run(&st, "*", 0, 7200 * 1_000_000_000, Tier::Auto, Format::Json).unwrap();
        let windows = text.lines().count();
        assert_eq!(
            windows, 120,
            "two hours of one-minute windows, evicted or not"
        );
        let count: u64 = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["count"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        assert_eq!(count, 7200, "every point is counted in some window");
    }

    #[test]
    fn times() {
        let now = 10_000_000_000_000;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("-1s", now).unwrap(), now - 1_000_000_000);
        assert_eq!(
            parse_time("1970-01-01T00:00:01Z", now).unwrap(),
            1_000_000_000
        );
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn dead_letters_render_in_every_format() {
        let rows = vec![super::super::DeadLetterRow {
            ts_ns: 1_764_053_000_123_000_000,
            source: "bench".into(),
            reason: "bad_crc".into(),
            detail: "CRC-16 mismatch".into(),
            raw: vec![0x1c, b'a', 0x00],
            len: 3,
        }];
        let table = render_dead_letters(&rows, 7, Format::Table).unwrap();
        assert!(
            table.starts_with("2025-11-25T06:43:20.123Z bench        bad_crc              3 B  \"\\x1ca\\x00\"  (CRC-16 mismatch)\n"),
            "{table}"
        );
        assert!(
            table.ends_with("1 of 7 dead letters (newest first)\n"),
            "{table}"
        );
        let csv = render_dead_letters(&rows, 7, Format::Csv).unwrap();
        assert_eq!(
            csv,
            "ts_ns,source,reason,len,raw_hex,detail\n1764053000123000000,\"bench\",\"bad_crc\",3,1c6100,\"CRC-16 mismatch\"\n"
        );
        let json = render_dead_letters(&rows, 7, Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
        assert_eq!(v["raw_hex"], "1c6100");
        assert!(render_dead_letters(&rows, 7, Format::Lp).is_err());
    }
}
