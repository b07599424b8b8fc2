//! Limits every source applies to what it parsed, before the store sees it:
//! series cardinality (`max_series`) and timestamps too far in the future
//! (`max_future_skew`) or past (`max_past_age`). A message is taken or
//! rejected whole.

use std::collections::HashSet;
use std::time::Duration;

use super::parse::Reject;
use crate::point::{Point, SeriesKey};

/// A source's limits, and the series it has let through.
pub struct Guard {
    max_series: usize,
    max_future_ns: Option<i64>,
    max_past_ns: Option<i64>,
    seen: HashSet<SeriesKey>,
}

impl Guard {
    /// Limits of one source; `None` turns a time limit off.
    pub fn new(
        max_series: usize,
        max_future_skew: Option<Duration>,
        max_past_age: Option<Duration>,
    ) -> Guard {
        let ns = |d: Duration| d.as_nanos().min(i64::MAX as u128) as i64;
        Guard {
            max_series,
            max_future_ns: max_future_skew.map(ns),
            max_past_ns: max_past_age.map(ns),
            seen: HashSet::new(),
        }
    }

    /// These limits, with the series `old` let through (a source's settings
    /// changed live: the cardinality count goes on).
    pub fn carry_over(mut self, old: Guard) -> Guard {
        self.seen = old.seen;
        self
    }

    /// Checks the points of one message received at `now_ns`; on `Ok` their
    /// new series count from now on.
    pub fn check(&mut self, points: &[Point], now_ns: i64) -> Result<(), Reject> {
        for p in points {
            if let Some(skew) = self.max_future_ns {
                if p.ts_ns > now_ns.saturating_add(skew) {
                    return Err(Reject::FromTheFuture(p.ts_ns - now_ns));
                }
            }
            if let Some(age) = self.max_past_ns {
                if p.ts_ns < now_ns.saturating_sub(age) {
                    return Err(Reject::TooOld(now_ns.saturating_sub(p.ts_ns)));
                }
            }
        }
        let mut new = 0;
        for (i, p) in points.iter().enumerate() {
            if !self.seen.contains(&p.series) && !points[..i].iter().any(|q| q.series == p.series) {
                new += 1;
            }
        }
        if new > 0 {
            if self.seen.len() + new > self.max_series {
                return Err(Reject::TooManySeries(self.max_series));
            }
            self.seen.extend(points.iter().map(|p| p.series.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(series: &str, ts_ns: i64) -> Point {
        Point {
            series: SeriesKey::from_canonical(series),
            ts_ns,
            value: 1.0,
        }
    }

    #[test]
    fn series_beyond_the_limit_are_rejected_known_ones_pass() {
        let mut g = Guard::new(2, None, None);
        assert_eq!(g.check(&[pt("m a", 0), pt("m a", 1)], 0), Ok(()));
        assert_eq!(
            g.check(&[pt("m b", 0), pt("m c", 0)], 0),
            Err(Reject::TooManySeries(2))
        );
        assert_eq!(g.check(&[pt("m b", 0)], 0), Ok(()));
        assert_eq!(g.check(&[pt("m c", 0)], 0), Err(Reject::TooManySeries(2)));
        assert_eq!(g.check(&[pt("m a", 5), pt("m b", 5)], 0), Ok(()));
    }

    #[test]
    fn timestamps_outside_the_window_are_rejected() {
        let s = 1_000_000_000;
        let mut g = Guard::new(
            10,
            Some(Duration::from_secs(300)),
            Some(Duration::from_secs(60)),
        );
        let now = 1_000 * s;
        assert_eq!(g.check(&[pt("m a", now + 300 * s)], now), Ok(()));
        assert!(matches!(
            g.check(&[pt("m a", now), pt("m a", now + 301 * s)], now),
            Err(Reject::FromTheFuture(_))
        ));
        assert!(matches!(
            g.check(&[pt("m a", now - 61 * s)], now),
            Err(Reject::TooOld(_))
        ));
        assert_eq!(Reject::TooOld(1).label(), "too_old");
        assert_eq!(Reject::FromTheFuture(1).label(), "from_the_future");
    }
}
