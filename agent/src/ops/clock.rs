//! The wall clock of a board without a real-time clock: after power loss it
//! restarts from the last saved time until NTP steps it, sometimes by days.
//! [`ClockWatch`] compares the wall clock with the monotonic clock once a
//! second and reports steps; [`synchronised`] asks the kernel (adjtimex)
//! whether NTP has the clock in sync. Both show in `status`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Metrics;
use crate::point::{now_ns, ARRIVAL_NS};
use crate::store::{ClockStep, StoreHandle};

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

/// Time since boot, suspend included (CLOCK_BOOTTIME); `None` off Linux.
fn since_boot() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes into `ts`.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Watches the clock once a second until `shutdown`: counts and logs steps,
/// keeps the kernel's sync state in the metrics, and after a forward step
/// has the store re-stamp what the sources stamped on arrival since boot.
pub async fn run(metrics: Arc<Metrics>, store: StoreHandle, shutdown: CancellationToken) {
    let start = Instant::now();
    let mut watch = ClockWatch::new(now_ns(), start.elapsed(), STEP_THRESHOLD);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics.clock.set_synchronised(synchronised());
        let wall = now_ns();
        let Some(step) = watch.observe(wall, start.elapsed()) else {
            continue;
        };
        // Whole milliseconds, as arrival stamps are: moved points stay on them.
        let step = step.saturating_add(ARRIVAL_NS / 2).div_euclid(ARRIVAL_NS) * ARRIVAL_NS;
        // A step counts in status once its correction is done, so a reader
        // that sees the step sees what it moved.
        let counted = || {
            metrics.clock.last_step_ns.store(step, Relaxed);
            metrics.clock.steps.fetch_add(1, Relaxed);
        };
        if step < 0 {
            counted();
            warn!(
                step_s = step as f64 / 1e9,
                synchronised = ?synchronised(),
                "the wall clock stepped back by {:.1}s; points stamped on arrival before it keep their time (only forward steps, as after a boot without RTC, are corrected)",
                -step as f64 / 1e9
            );
            continue;
        }
        // The old clock read `to` now; the boot was `since_boot` before.
        let to_ns = wall - step;
        let from_ns = since_boot().map_or(i64::MIN, |d| to_ns - d.as_nanos() as i64);
        let fix = ClockStep {
            step_ns: step,
            from_ns,
            to_ns,
            series: metrics.arrival_series(),
        };
        let result = store.with(move |s| s.correct_clock(&fix, wall)).await;
        if let Ok(done) = &result {
            metrics.clock.corrected.fetch_add(done.moved, Relaxed);
            metrics
                .clock
                .sent_uncorrected
                .fetch_add(done.sent_before, Relaxed);
        }
        counted();
        match result {
            Ok(done) => {
                warn!(
                    step_s = step as f64 / 1e9,
                    corrected = done.moved,
                    sent_before = done.sent_before,
                    "the wall clock stepped forward by {:.1}s (NTP after a boot without RTC?): {} points stamped on arrival since boot were moved by the step; {} already sent upstream keep the old time",
                    step as f64 / 1e9,
                    done.moved,
                    done.sent_before
                );
            }
            Err(e) => warn!(
                "the wall clock stepped forward by {:.1}s but the points stamped before it could not be corrected: {e}",
                step as f64 / 1e9
            ),
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
