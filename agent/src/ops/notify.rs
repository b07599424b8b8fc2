//! sd_notify(3): tells systemd the truth about the agent.
//!
//! - `READY=1` once the store is open and the sources are started;
//! - `STATUS=` once a second, one line: points/s, durable backlog, sinks up;
//! - `WATCHDOG=1` only while the store writer makes progress: the store task
//!   bumps a heartbeat on every loop iteration (it wakes at least once per
//!   `store.flush_interval`). A writer stuck in a blocking SQLite call (a hung
//!   SD card, a deadlock) stops the pings and systemd restarts the agent after
//!   `WatchdogSec=`;
//! - `STOPPING=1` when shutdown starts.
//!
//! Without `NOTIFY_SOCKET` (not under systemd, or `Type=simple`) every call is
//! a no-op; without `WATCHDOG_USEC` no `WATCHDOG=1` is sent.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Metrics, Status};

/// A handle on the service manager's notification socket.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let mut usec = 0u64;
        let watchdog = (enabled && sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
            .then(|| Duration::from_micros(usec));
        Notifier { enabled, watchdog }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The watchdog timeout systemd asked for (`WatchdogSec=`), if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, state: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(false, state) {
            debug!("sd_notify: {e}");
        }
    }

    /// `READY=1`.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// `STATUS=<line>`.
    pub fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(line)]);
    }

    /// `WATCHDOG=1`, only if systemd asked for a watchdog.
    pub fn watchdog_ping(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }
}

/// One line for `systemctl status`: rate since the previous line, durable
/// backlog (points flushed but not yet sent by the slowest sink), sinks up.
pub fn status_line(now: &Status, prev: Option<(&Status, Duration)>) -> String {
    let rate = match prev {
        Some((p, dt)) if dt > Duration::ZERO => {
            now.store
                .points_appended
                .saturating_sub(p.store.points_appended) as f64
                / dt.as_secs_f64()
        }
        _ => 0.0,
    };
    let sent = now.sinks.iter().map(|s| s.points_sent).min().unwrap_or(0);
    let backlog = if now.sinks.is_empty() {
        0
    } else {
        now.store.points_flushed.saturating_sub(sent)
    };
    let up = now.sinks.iter().filter(|s| s.up).count();
    let sources = now.sources.iter().filter(|s| s.connected).count();
    format!(
        "{rate:.0} points/s, backlog {backlog}, sinks {up}/{} up, sources {sources}/{} connected",
        now.sinks.len(),
        now.sources.len()
    )
}

/// Sends `STATUS=` every second and `WATCHDOG=1` while `heartbeat` keeps
/// moving, until `stop` is cancelled. `stall_after`: how long the heartbeat may
/// stand still before the writer counts as stalled (it must exceed the store's
/// longest idle wait, its flush interval).
pub async fn supervise(
    notifier: Notifier,
    metrics: Arc<Metrics>,
    heartbeat: Arc<AtomicU64>,
    stall_after: Duration,
    stop: CancellationToken,
) {
    if !notifier.enabled() {
        return;
    }
    let mut every = Duration::from_secs(1);
    if let Some(w) = notifier.watchdog() {
        // sd_watchdog_enabled(3): ping at least every half of the timeout.
        every = every.min(w / 2).max(Duration::from_millis(10));
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_beat = heartbeat.load(Relaxed);
    let mut last_progress = Instant::now();
    let mut prev: Option<(Status, Instant)> = None;
    let mut last_status = Instant::now() - Duration::from_secs(1);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if now.duration_since(last_status) >= Duration::from_millis(990) {
            let snap = metrics.snapshot();
            let line = status_line(
                &snap,
                prev.as_ref().map(|(s, t)| (s, now.duration_since(*t))),
            );
            notifier.status(&line);
            prev = Some((snap, now));
            last_status = now;
        }
        let beat = heartbeat.load(Relaxed);
        if beat != last_beat {
            last_beat = beat;
            last_progress = now;
        }
        if now.duration_since(last_progress) <= stall_after {
            notifier.watchdog_ping();
            warned = false;
        } else if !warned {
            warned = true;
            warn!(
                stalled_for = ?now.duration_since(last_progress),
                "the store writer makes no progress: watchdog pings stopped, systemd will restart the agent"
            );
        }
    }
}
