//! Downsampling: per series and window, min, max, sum, count, first and last.
//!
//! Sum and count are kept, never a mean, so windows of a coarse tier can be
//! re-aggregated from a finer tier's windows exactly as from the raw points.
//! First and last carry their timestamps so merging in any order agrees.

use serde::{Deserialize, Serialize};

/// The aggregate of one window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of the values.
    pub sum: f64,
    /// Number of points.
    pub count: u64,
    /// Value of the earliest point (by timestamp; the first to arrive on ties).
    pub first: f64,
    /// Timestamp of `first`.
    pub first_ts: i64,
    /// Value of the latest point (by timestamp; the last to arrive on ties).
    pub last: f64,
    /// Timestamp of `last`.
    pub last_ts: i64,
}

impl Agg {
    /// The aggregate of one point.
    pub fn point(ts: i64, v: f64) -> Agg {
        Agg {
            min: v,
            max: v,
            sum: v,
            count: 1,
            first: v,
            first_ts: ts,
            last: v,
            last_ts: ts,
        }
    }

    /// Adds one point that arrived after those already in.
    pub fn add(&mut self, ts: i64, v: f64) {
        self.merge(&Agg::point(ts, v));
    }

    /// Folds in `other`, whose points arrived after this one's.
    pub fn merge(&mut self, other: &Agg) {
        // NaN never reaches a window (sources reject non-finite values), so
        // plain comparisons are total here.
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.count += other.count;
        if other.first_ts < self.first_ts {
            self.first = other.first;
            self.first_ts = other.first_ts;
        }
        if other.last_ts >= self.last_ts {
            self.last = other.last;
            self.last_ts = other.last_ts;
        }
    }

    /// The mean, derived on read.
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// Start of the window of width `width_ns` that holds `ts` (floor, also for
/// timestamps before 1970).
pub fn window_start(ts: i64, width_ns: i64) -> i64 {
    ts.div_euclid(width_ns) * width_ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000_000_000;
    const HOUR: i64 = 60 * MIN;

    fn aggregate(points: &[(i64, f64)], width: i64) -> std::collections::BTreeMap<i64, Agg> {
        let mut out = std::collections::BTreeMap::new();
        for &(ts, v) in points {
            out.entry(window_start(ts, width))
                .and_modify(|a: &mut Agg| a.add(ts, v))
                .or_insert_with(|| Agg::point(ts, v));
        }
        out
    }

    proptest! {
        /// An hour re-aggregated from its minutes equals the hour from raw
        /// points. Values are multiples of 1/1024 below 2^20, so every sum is
        /// exact in f64 and equality can be bit for bit.
        #[test]
        fn hour_from_minutes_equals_hour_from_raw(
            raw in proptest::collection::vec((0..3 * HOUR, -(1i64 << 30)..(1i64 << 30)), 1..400)
        ) {
            let points: Vec<(i64, f64)> = raw.iter().map(|&(t, v)| (t, v as f64 / 1024.0)).collect();
            let minutes = aggregate(&points, MIN);
            let mut hours_from_minutes: std::collections::BTreeMap<i64, Agg> = Default::default();
            for (start, agg) in &minutes {
                hours_from_minutes
                    .entry(window_start(*start, HOUR))
                    .and_modify(|a| a.merge(agg))
                    .or_insert(*agg);
            }
            let hours_from_raw = aggregate(&points, HOUR);
            prop_assert_eq!(hours_from_minutes.len(), hours_from_raw.len());
            for (k, a) in &hours_from_raw {
                let b = &hours_from_minutes[k];
                prop_assert_eq!(a.min, b.min);
                prop_assert_eq!(a.max, b.max);
                prop_assert_eq!(a.sum, b.sum);
                prop_assert_eq!(a.count, b.count);
                prop_assert_eq!(a.first_ts, b.first_ts);
                prop_assert_eq!(a.last_ts, b.last_ts);
                // With duplicate timestamps the tie rule picks by arrival: both
                // paths see arrivals in the same order inside a minute.
                prop_assert_eq!(a.first, b.first);
                prop_assert_eq!(a.last, b.last);
            }
        }
    }

    #[test]
    fn windows_floor_before_the_epoch() {
        assert_eq!(window_start(-1, MIN), -MIN);
        assert_eq!(window_start(MIN + 5, MIN), MIN);
    }
}
