//! Rollups upstream: sinks that send a rollup tier instead of raw points, and
//! the points that stand in for raw ranges eviction took before a sink had them.
//!
//! A window of series `m,tags field` goes out as four points stamped with the
//! window's start, under the extra tag `<resolution_tag>=<width>`:
//! `field` (the mean), `field_min`, `field_max` and `field_count`. Upstream
//! they are their own series, so raw and rolled-up data never overwrite each
//! other, and `sum(field_count)` says how many raw points a range stood for.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tracing::{info, warn};

use super::request::Requester;
use super::{Sink, Stopping};
use crate::config::DeliveryConfig;
use crate::point::now_ns;
use crate::point::{Point, SeriesKey};
use crate::store::rollup::{window_start, Agg};
use crate::store::{DegradedRange, StoreError, StoreHandle};

/// A closed window may still receive points this late (a flush interval and
/// a slow source); it is sent only after.
const GRACE: Duration = Duration::from_secs(10);
/// Most windows read at once (series × windows), to keep memory bounded.
const MAX_WINDOWS_PER_READ: i64 = 100_000;

/// `60` → `1m`, `3600` → `1h`, `90` → `90s`.
pub fn width_label(seconds: i64) -> String {
    if seconds % 3600 == 0 {
        format!("{}h", seconds / 3600)
    } else if seconds % 60 == 0 {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

/// Appends the points that carry one window upstream.
pub fn window_points(
    series: &SeriesKey,
    start: i64,
    agg: &Agg,
    tag: &str,
    label: &str,
    out: &mut Vec<Point>,
) {
    let (head, field) = series.split();
    let mean = if agg.count > 0 {
        agg.sum / agg.count as f64
    } else {
        f64::NAN
    };
    // Tags need not be sorted in line protocol, and these keys are never stored.
    for (suffix, value) in [
        ("", mean),
        ("_min", agg.min),
        ("_max", agg.max),
        ("_count", agg.count as f64),
    ] {
        out.push(Point {
            series: SeriesKey::from_canonical(&format!("{head},{tag}={label} {field}{suffix}")),
            ts_ns: start,
            value,
        });
    }
}

/// The gap report of one degraded range: a `tidegate_gaps` point per range,
/// stamped with its first timestamp; `raw_points` is how many raw points
/// the sink never got, `until_ms` the range's last timestamp, `windows` how
/// many rollup windows stand in for them (0 when they are lost).
pub fn gap_points(sink: &str, range: &DegradedRange, label: &str, out: &mut Vec<Point>) {
    let kind = if range.windows.is_empty() {
        "lost"
    } else {
        "degraded"
    };
    let tags = [
        ("sink", sink),
        ("series", range.series.as_str()),
        ("kind", kind),
        ("resolution", label),
    ];
    for (field, value) in [
        ("raw_points", range.points as f64),
        ("until_ms", (range.ts_max / 1_000_000) as f64),
        ("windows", range.windows.len() as f64),
    ] {
        out.push(Point {
            series: SeriesKey::new("tidegate_gaps", tags, field),
            ts_ns: range.ts_min,
            value,
        });
    }
}

/// How a run of [`send_degraded`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DegradedRun {
    /// Every degraded range was sent.
    Done,
    /// Some wait for the sink to get past raw points of their windows: run
    /// again later.
    Held,
    /// The sink is stopping.
    Aborted,
}

/// Sends what eviction took from `sink` before it had it: the rollups in its
/// place and (if on) the gap report, for the ranges whose windows are final.
pub async fn send_degraded<S: Sink>(
    req: &Requester<S>,
    cfg: &DeliveryConfig,
    store: &StoreHandle,
    stopping: &Stopping,
) -> Result<DegradedRun, StoreError> {
    let Some(tier) = store.with(|st| Ok(st.tiers().first().copied())).await? else {
        return Ok(DegradedRun::Done);
    };
    let label = width_label(tier);
    loop {
        let name = cfg.name.clone();
        let pending = store
            .with(move |st| st.degraded_pending(&name, tier, 256))
            .await?;
        let ranges = pending.ranges;
        if ranges.is_empty() {
            return Ok(match pending.held {
                0 => DegradedRun::Done,
                _ => DegradedRun::Held,
            });
        }
        let mut points = Vec::new();
        let (mut replaced, mut windows, mut lost) = (0u64, 0u64, 0u64);
        // Two ranges sharing a window carry it merged, the same in both.
        let mut sent_windows = std::collections::HashSet::new();
        for r in &ranges {
            for (start, agg) in &r.windows {
                if !sent_windows.insert((&r.series, *start)) {
                    continue;
                }
                window_points(
                    &r.series,
                    *start,
                    agg,
                    &cfg.resolution_tag,
                    &label,
                    &mut points,
                );
            }
            if r.windows.is_empty() {
                lost += r.points;
            } else {
                replaced += r.points;
                windows += r.windows.len() as u64;
            }
            if cfg.gap_report {
                gap_points(&cfg.name, r, &label, &mut points);
            }
        }
        for part in points.chunks(cfg.batch_max_points) {
            if !req.deliver(part, &stopping.abort).await {
                return Ok(DegradedRun::Aborted);
            }
        }
        let s = &req.stats;
        s.raw_replaced.fetch_add(replaced, Relaxed);
        s.rollups_replacing.fetch_add(windows, Relaxed);
        s.lost.fetch_add(lost, Relaxed);
        if lost > 0 {
            warn!(sink = cfg.name, points = lost, "raw points were evicted before this sink had them and their rollups are gone too: reported as lost in tidegate_gaps; give the store more room (store.max_disk_bytes)");
        } else {
            info!(
                sink = cfg.name,
                raw_points = replaced,
                windows,
                "sent rollups in place of raw points evicted during the outage"
            );
        }
        let name = cfg.name.clone();
        let ids: Vec<i64> = ranges.iter().map(|r| r.id).collect();
        store
            .with(move |st| st.degraded_sent(&name, &ids, lost))
            .await?;
    }
}

/// When a rollup feed sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierMode {
    /// Always (within the sink's schedule and budget): a rollup-tier sink.
    Always,
    /// Only while the sink's daily budget is spent (its `over_budget_tier`):
    /// the raw feed holds back, and this keeps the cloud roughly informed
    /// until midnight. Windows closing while the budget lasts are skipped,
    /// the raw points cover them.
    OverBudget,
}

/// Feeds a rollup tier: every closed window of every series, once, in
/// time order, from a watermark kept in the store.
pub async fn run_tier<S: Sink>(
    req: &Requester<S>,
    cfg: &DeliveryConfig,
    width: Duration,
    mode: TierMode,
    store: StoreHandle,
    stopping: Stopping,
) -> Result<(), StoreError> {
    let tier = width.as_secs() as i64;
    let width_ns = tier * 1_000_000_000;
    let label = width_label(tier);
    let name = match mode {
        TierMode::Always => cfg.name.clone(),
        TierMode::OverBudget => format!("{}@over_budget", cfg.name),
    };
    let key = name.clone();
    let mut mark = match store.with(move |st| st.watermark(&key)).await? {
        Some(m) => m,
        // A new rollup-tier sink starts with the oldest data the store has.
        None if mode == TierMode::Always => store
            .with(|st| st.oldest())
            .await?
            .map(|t| window_start(t, width_ns))
            .unwrap_or_else(|| window_start(now_ns(), width_ns)),
        None => window_start(now_ns(), width_ns),
    };
    loop {
        let closed = window_start(now_ns() - GRACE.as_nanos() as i64, width_ns);
        if mode == TierMode::OverBudget && !req.over_budget() {
            mark = mark.max(closed);
        } else if mark < closed && !stopping.drain.is_cancelled() {
            let series = store.with(|st| Ok(st.series().count() as i64)).await?;
            let per_read = (MAX_WINDOWS_PER_READ / series.max(1)).max(1);
            let to = closed.min(mark.saturating_add(per_read * width_ns));
            let windows = store
                .with(move |st| st.rollup_windows(tier, mark, to))
                .await?;
            let mut points = Vec::with_capacity(windows.len() * 4);
            for (series, start, agg) in &windows {
                window_points(
                    series,
                    *start,
                    agg,
                    &cfg.resolution_tag,
                    &label,
                    &mut points,
                );
            }
            // Wait for the schedule and budget like the raw path does (the
            // over-budget feed is what the budget allows once spent).
            loop {
                let (slots, wait) = req.slots(0);
                if slots > 0 || mode == TierMode::OverBudget {
                    break;
                }
                tokio::select! {
                    _ = stopping.abort.cancelled() => return Ok(()),
                    _ = stopping.drain.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(1))) => {}
                }
            }
            for part in points.chunks(cfg.batch_max_points) {
                if !req.deliver(part, &stopping.abort).await {
                    return Ok(());
                }
            }
            req.stats
                .windows_sent
                .fetch_add(windows.len() as u64, Relaxed);
            let key = name.clone();
            store.with(move |st| st.set_watermark(&key, to)).await?;
            mark = to;
            continue;
        }
        if stopping.drain.is_cancelled() {
            return Ok(());
        }
        // Sleep until the next window closes.
        let next = mark + width_ns + GRACE.as_nanos() as i64;
        let wait =
            Duration::from_nanos((next - now_ns()).clamp(100_000_000, 60_000_000_000) as u64);
        tokio::select! {
            _ = stopping.abort.cancelled() => return Ok(()),
            _ = stopping.drain.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(width_label(60), "1m");
        assert_eq!(width_label(3600), "1h");
        assert_eq!(width_label(90), "90s");
    }

    #[test]
    fn a_window_becomes_four_points_under_the_resolution_tag() {
        let key = SeriesKey::new("env", [("site", "a b")], "temp");
        let mut agg = Agg::point(10, 1.0);
        agg.add(20, 3.0);
        let mut out = Vec::new();
        window_points(&key, 0, &agg, "tidegate_resolution", "1m", &mut out);
        let lines: Vec<(String, f64)> = out
            .iter()
            .map(|p| (p.series.as_str().to_string(), p.value))
            .collect();
        assert_eq!(
            lines,
            vec![
                (
                    "env,site=a\\ b,tidegate_resolution=1m temp".to_string(),
                    2.0
                ),
                (
                    "env,site=a\\ b,tidegate_resolution=1m temp_min".to_string(),
                    1.0
                ),
                (
                    "env,site=a\\ b,tidegate_resolution=1m temp_max".to_string(),
                    3.0
                ),
                (
                    "env,site=a\\ b,tidegate_resolution=1m temp_count".to_string(),
                    2.0
                ),
            ]
        );
    }
}
