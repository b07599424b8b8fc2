//! The wall clock of a board without a real-time clock: after power loss it
//! restarts from the last saved time until NTP steps it, sometimes by days.
//! [`ClockWatch`] compares the wall clock with the monotonic clock once a
//! second and reports steps; [`synchronised`] asks the kernel (adjtimex)
//! whether NTP has the clock in sync. Both show in `status`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Metrics;

/// A wall-clock jump larger than this, against the monotonic clock, is a step.
pub const STEP_THRESHOLD: Duration = Duration::from_secs(2);

/// Detects wall-clock steps from pairs of (wall, monotonic) readings.
#[derive(Debug)]
pub struct ClockWatch {
    last: (i64, Duration),
    threshold_ns: i64,
}

impl ClockWatch {
    /// Starts from one reading: wall time in ns since the epoch, and a
    /// monotonic time.
    pub fn new(wall_ns: i64, mono: Duration, threshold: Duration) -> ClockWatch {
        ClockWatch {
            last: (wall_ns, mono),
            threshold_ns: threshold.as_nanos() as i64,
        }
    }

    /// The next reading; `Some(step)` (ns, negative for backwards) when the
    /// wall clock moved by more than the threshold besides the monotonic time.
    pub fn observe(&mut self, wall_ns: i64, mono: Duration) -> Option<i64> {
        let (wall0, mono0) = self.last;
        self.last = (wall_ns, mono);
        let elapsed = mono.saturating_sub(mono0).as_nanos() as i64;
        let step = wall_ns - wall0 - elapsed;
        (step.abs() > self.threshold_ns).then_some(step)
    }
}

/// Whether the kernel says the clock is synchronised (adjtimex: no
/// `STA_UNSYNC`, not `TIME_ERROR`), as `timedatectl` shows it; `None` where
/// it cannot be asked.
pub fn synchronised() -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: adjtimex with modes = 0 only reads into the zeroed struct.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut tx) };
        if state < 0 {
            return None;
        }
        Some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

fn wall_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Watches the clock once a second until `shutdown`: counts and logs steps,
/// keeps the kernel's sync state in the metrics.
pub async fn run(metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let start = Instant::now();
    let mut watch = ClockWatch::new(wall_ns(), start.elapsed(), STEP_THRESHOLD);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics.clock.set_synchronised(synchronised());
        if let Some(step) = watch.observe(wall_ns(), start.elapsed()) {
            metrics.clock.steps.fetch_add(1, Relaxed);
            metrics.clock.last_step_ns.store(step, Relaxed);
            warn!(
                step_s = step as f64 / 1e9,
                synchronised = ?synchronised(),
                "the wall clock stepped by {:.1}s (NTP after a boot without RTC?); points stamped on arrival before it carry the old time",
                step as f64 / 1e9
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn steps_beyond_the_threshold_are_reported_with_sign() {
        let d = Duration::from_secs;
        let mut w = ClockWatch::new(1_000 * S, d(10), STEP_THRESHOLD);
        // One second each way: no step; drift of 1 s is below the threshold.
        assert_eq!(w.observe(1_001 * S, d(11)), None);
        assert_eq!(w.observe(1_003 * S, d(12)), None);
        // NTP steps the clock forward by a day.
        assert_eq!(w.observe(1_004 * S + 86_400 * S, d(13)), Some(86_400 * S));
        // ...and from there on it runs normally again.
        assert_eq!(w.observe(1_005 * S + 86_400 * S, d(14)), None);
        // A step backwards.
        assert_eq!(w.observe(1_000 * S, d(15)), Some(-(6 * S + 86_400 * S)));
    }

    #[test]
    fn the_kernel_answers_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(synchronised().is_some());
        }
    }
}
