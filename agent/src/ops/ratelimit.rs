//! Log at most once per period, and say how many were held back.
//!
//! A sensor spewing garbage or a sink that is down would otherwise fill the
//! journal (and the SD card) with the same line thousands of times a minute.

use std::time::{Duration, Instant};

/// Decides whether a repeated event may be logged now. Time is passed in.
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// Allows one log line per `period`.
    pub fn new(period: Duration) -> RateLimit {
        RateLimit {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(n)` when the event may be logged, `n` being the number of
    /// events held back since the last one logged; `None` when it must be held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_period_with_count() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(10));
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(r.allow(t0 + Duration::from_secs(11)), None);
    }
}
