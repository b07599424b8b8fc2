//! Limits every source applies to what it parsed, before the store sees it:
//! series cardinality (`max_series`) and timestamps too far in the future
//! (`max_future_skew`) or past (`max_past_age`). A message is taken or
//! rejected whole.

use std::time::Duration;

use super::parse::Reject;
use crate::ops::metrics::SourceStats;
use crate::point::{Point, SeriesKey, SeriesMap, SeriesMemo};

/// A source's limits, and the series it has let through.
pub struct Guard {
    max_series: usize,
    max_future_ns: Option<i64>,
    max_past_ns: Option<i64>,
    /// Series let through, and whether one was seen stamped on arrival.
    seen: SeriesMap<bool>,
    /// Keys of `seen` remembered on the keys (a lookup a point).
    memo: SeriesMemo,
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
            seen: SeriesMap::default(),
            memo: SeriesMemo::guard(),
        }
    }

    /// These limits, with the series `old` let through (a source's settings
    /// changed live: the cardinality count goes on).
    pub fn carry_over(mut self, old: Guard) -> Guard {
        // `self.memo` is new: its first lookup of each key finds it in `seen`.
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
            if self.memo.get(&p.series).is_some() {
                continue;
            }
            if let Some(&stamped) = self.seen.get(&p.series) {
                self.memo.set(&p.series, memo_of(stamped));
            } else if !points[..i].iter().any(|q| q.series == p.series) {
                new += 1;
            }
        }
        if new > 0 {
            if self.seen.len() + new > self.max_series {
                return Err(Reject::TooManySeries(self.max_series));
            }
            for p in points {
                let stamped = *self.seen.entry(p.series.clone()).or_insert(false);
                self.memo.set(&p.series, memo_of(stamped));
            }
        }
        Ok(())
    }

    /// Settles the arrival stamps of `points` (a message [`Guard::check`]
    /// took, received at `now_ns`): tells `stats` the series seen stamped on
    /// arrival for the first time, then rounds those stamps down to an
    /// arrival stamp's unit ([`arrival_ns`]). The telling comes first: an
    /// arrival stamp is told from a device's own time by that very
    /// nanosecond.
    ///
    /// [`arrival_ns`]: crate::point::arrival_ns
    pub fn settle_arrivals(&mut self, points: &mut [Point], now_ns: i64, stats: &SourceStats) {
        for key in self.newly_stamped(points, now_ns) {
            stats.stamped_on_arrival(key.clone());
        }
        let stamp = crate::point::to_arrival(now_ns);
        for p in points.iter_mut().filter(|p| p.ts_ns == now_ns) {
            p.ts_ns = stamp;
        }
    }

    /// The series of `points` (a message [`Guard::check`] took, received at
    /// `now_ns`) seen stamped with the arrival time for the first time.
    ///
    /// A point carries the arrival time when its timestamp is that very
    /// nanosecond: parsers stamp a reading without a time with the same
    /// `now_ns` the guard gets, and a device's own clock agreeing to the
    /// nanosecond is out of reach.
    pub fn newly_stamped<'a>(
        &'a mut self,
        points: &'a [Point],
        now_ns: i64,
    ) -> impl Iterator<Item = &'a SeriesKey> + 'a {
        points.iter().filter_map(move |p| {
            if p.ts_ns != now_ns {
                return None;
            }
            if self.memo.get(&p.series) == Some(memo_of(true)) {
                return None;
            }
            let stamped = self.seen.get_mut(&p.series)?;
            self.memo.set(&p.series, memo_of(true));
            (!std::mem::replace(stamped, true)).then_some(&p.series)
        })
    }
}

/// What [`Guard::memo`] keeps of a series let through: whether it was seen
/// stamped on arrival.
fn memo_of(stamped: bool) -> u32 {
    1 + u32::from(stamped)
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
    fn series_stamped_on_arrival_are_told_once() {
        let mut g = Guard::new(10, None, None);
        let msg = [pt("m a", 7), pt("m b", 3), pt("m a", 7)];
        g.check(&msg, 7).unwrap();
        let first: Vec<_> = g.newly_stamped(&msg, 7).cloned().collect();
        assert_eq!(first, [SeriesKey::from_canonical("m a")]);
        // Known by now; "m b" carries its device's time.
        assert_eq!(g.newly_stamped(&msg, 7).count(), 0);
        let later = [pt("m b", 9)];
        g.check(&later, 9).unwrap();
        assert_eq!(g.newly_stamped(&later, 9).count(), 1);
    }

    #[test]
    fn arrival_stamps_are_rounded_to_the_millisecond_device_times_kept() {
        let now = 1_764_000_000_123_456_789;
        // A device clock on the same millisecond is not an arrival stamp.
        let device = 1_764_000_000_123_000_000;
        let mut msg = [pt("m a", now), pt("m b", device), pt("m a", now - 1)];
        let mut g = Guard::new(10, None, None);
        g.check(&msg, now).unwrap();
        let metrics = crate::ops::Metrics::new("test");
        g.settle_arrivals(&mut msg, now, &metrics.source("s"));
        let ts: Vec<i64> = msg.iter().map(|p| p.ts_ns).collect();
        assert_eq!(ts, [device, device, now - 1]);
        // Told by the nanosecond before the rounding: "m a" only.
        assert_eq!(metrics.arrival_series(), [SeriesKey::from_canonical("m a")]);
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
