//! `tidegate query`: read the store of a running (or stopped) agent, with no
//! network, e.g. during an outage.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// The current time in nanoseconds since the epoch (for the CLI edge).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

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
    for key in &series {
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
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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
}
