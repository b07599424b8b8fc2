//! Adaptive request concurrency (AIMD), after Vector's ARC.
//!
//! A sink starts with one request in flight. Each *window* (about one round
//! trip long) the controller looks at what happened: if the endpoint pushed
//! back (429, 503, a timeout, a refused connection) or the round trip grew well
//! beyond its usual value, the limit is halved; if the sink used every slot and
//! latency held, the limit grows by one. So a sink finds the concurrency the
//! link and the database can take, and backs off as soon as they cannot.

use std::time::{Duration, Instant};

/// Round trips longer than this multiple of the usual one count as pressure.
const LATENCY_TOLERANCE: f64 = 2.0;
/// Weight of a new window in the usual round trip (an EWMA).
const BASELINE_WEIGHT: f64 = 0.2;
/// Shortest window, so very fast endpoints are not re-judged every request.
const MIN_WINDOW: Duration = Duration::from_millis(50);

/// Decides how many requests a sink may have in flight.
#[derive(Debug, Clone)]
pub struct Controller {
    limit: usize,
    max: usize,
    /// The usual round trip, seconds; `None` until the first window ends.
    baseline: Option<f64>,
    window_start: Instant,
    window_rtt_sum: f64,
    window_n: u32,
    window_pressure: bool,
    /// Every slot was in use at some point of the window.
    window_saturated: bool,
}

impl Controller {
    /// One request in flight at first, never more than `max`.
    pub fn new(max: usize, now: Instant) -> Controller {
        Controller {
            limit: 1,
            max: max.max(1),
            baseline: None,
            window_start: now,
            window_rtt_sum: 0.0,
            window_n: 0,
            window_pressure: false,
            window_saturated: false,
        }
    }

    /// Requests that may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Tells the controller that `in_flight` requests are outstanding, so it
    /// knows whether the sink actually used the concurrency it was given.
    pub fn observe_in_flight(&mut self, in_flight: usize) {
        if in_flight >= self.limit {
            self.window_saturated = true;
        }
    }

    /// Records one response: its round trip, and whether the endpoint pushed back.
    pub fn on_response(&mut self, now: Instant, rtt: Duration, pressure: bool) {
        if pressure {
            // Halve at once, but only once per window: ten requests failing
            // together are one signal, not ten.
            if !self.window_pressure {
                self.limit = (self.limit / 2).max(1);
            }
            self.window_pressure = true;
        } else {
            self.window_rtt_sum += rtt.as_secs_f64();
            self.window_n += 1;
        }
        let window = self
            .baseline
            .map(Duration::from_secs_f64)
            .unwrap_or(MIN_WINDOW)
            .max(MIN_WINDOW);
        if now.duration_since(self.window_start) >= window {
            self.end_window(now);
        }
    }

    fn end_window(&mut self, now: Instant) {
        if self.window_n > 0 {
            let mean = self.window_rtt_sum / self.window_n as f64;
            match self.baseline {
                Some(base) if mean > base * LATENCY_TOLERANCE => {
                    if !self.window_pressure {
                        self.limit = (self.limit / 2).max(1);
                    }
                    // The baseline follows slowly, so a lasting change in the
                    // link becomes the new normal instead of pressure forever.
                    self.baseline = Some(base + BASELINE_WEIGHT * (mean - base));
                }
                Some(base) => {
                    if !self.window_pressure && self.window_saturated && self.limit < self.max {
                        self.limit += 1;
                    }
                    self.baseline = Some(base + BASELINE_WEIGHT * (mean - base));
                }
                None => self.baseline = Some(mean),
            }
        }
        self.window_start = now;
        self.window_rtt_sum = 0.0;
        self.window_n = 0;
        self.window_pressure = false;
        self.window_saturated = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(100);

    /// Drives `windows` windows of saturated, healthy responses.
    fn healthy(c: &mut Controller, t: &mut Instant, windows: usize, rtt: Duration) {
        for _ in 0..windows {
            c.observe_in_flight(c.limit());
            *t += rtt;
            c.on_response(*t, rtt, false);
        }
    }

    #[test]
    fn grows_while_latency_holds_and_the_slots_are_used() {
        let mut t = Instant::now();
        let mut c = Controller::new(8, t);
        assert_eq!(c.limit(), 1);
        healthy(&mut c, &mut t, 20, RTT);
        assert_eq!(c.limit(), 8, "capped at max");
    }

    #[test]
    fn does_not_grow_when_the_slots_are_not_used() {
        let mut t = Instant::now();
        let mut c = Controller::new(8, t);
        for _ in 0..20 {
            t += RTT;
            c.on_response(t, RTT, false);
        }
        assert_eq!(c.limit(), 1);
    }

    #[test]
    fn halves_once_per_window_on_pressure() {
        let mut t = Instant::now();
        let mut c = Controller::new(16, t);
        healthy(&mut c, &mut t, 12, RTT);
        let before = c.limit();
        assert!(before >= 8);
        // Many requests fail in the same window: one halving.
        for _ in 0..5 {
            c.on_response(t, Duration::from_millis(1), true);
        }
        assert_eq!(c.limit(), before / 2);
        t += RTT;
        c.on_response(t, RTT, true);
        assert_eq!(c.limit(), before / 2, "still the same window");
        t += RTT;
        c.on_response(t, RTT, true);
        assert_eq!(c.limit(), before / 4, "a new window, a new halving");
    }

    #[test]
    fn halves_when_latency_grows_then_recovers() {
        let mut t = Instant::now();
        let mut c = Controller::new(16, t);
        healthy(&mut c, &mut t, 10, RTT);
        let before = c.limit();
        healthy(&mut c, &mut t, 1, RTT * 5);
        assert_eq!(c.limit(), before / 2);
        healthy(&mut c, &mut t, 30, RTT);
        assert!(c.limit() > before / 2);
    }

    #[test]
    fn never_below_one() {
        let mut t = Instant::now();
        let mut c = Controller::new(4, t);
        for _ in 0..10 {
            t += RTT;
            c.on_response(t, RTT, true);
        }
        assert_eq!(c.limit(), 1);
    }
}
