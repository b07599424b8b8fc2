//! Exponential backoff with full jitter, capped.
//!
//! Full jitter spreads a fleet's retries after a shared outage, so a thousand
//! gateways do not hit the recovering server in the same second.

use std::time::Duration;

/// Delays between retries: random in `[0, min(max, base * 2^attempt)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, never waits longer than `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay, jittered with the process's random generator.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(fastrand::f64())
    }

    /// The next delay for a random draw `r` in `[0, 1)`; pure, for tests.
    pub fn next_delay_with(&mut self, r: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // Never zero: a hot retry loop against a dead server helps no one.
        ceiling.mul_f64(r.clamp(0.0, 1.0)).max(self.base / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..6).map(|_| b.next_delay_with(1.0)).collect();
        assert_eq!(d[0], Duration::from_millis(100));
        assert_eq!(d[1], Duration::from_millis(200));
        assert_eq!(d[3], Duration::from_millis(800));
        assert_eq!(d[4], Duration::from_secs(1));
        assert_eq!(d[5], Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next_delay_with(1.0), Duration::from_millis(100));
    }

    #[test]
    fn jitter_has_a_floor() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.next_delay_with(0.0), Duration::from_millis(25));
    }
}
