//! Whether the data path is healthy, for `/healthz`: the store writer makes
//! progress (its heartbeat moves, as for the systemd watchdog in notify.rs)
//! and, when sources are configured, at least one is connected.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Metrics;

/// Watches the store writer's heartbeat; [`Health::observe`] runs once a second.
#[derive(Debug)]
pub struct Health {
    metrics: Arc<Metrics>,
    heartbeat: Arc<AtomicU64>,
    stall_after: Duration,
    last: Mutex<(u64, Instant)>,
}

impl Health {
    /// `stall_after`: how long the heartbeat may stand still (more than the
    /// store's flush interval, its longest idle wait).
    pub fn new(metrics: Arc<Metrics>, heartbeat: Arc<AtomicU64>, stall_after: Duration) -> Health {
        let beat = heartbeat.load(Relaxed);
        Health {
            metrics,
            heartbeat,
            stall_after,
            last: Mutex::new((beat, Instant::now())),
        }
    }

    /// Notes whether the heartbeat moved since the last call.
    pub fn observe(&self) {
        let beat = self.heartbeat.load(Relaxed);
        let mut last = self.last.lock().unwrap();
        if beat != last.0 {
            *last = (beat, Instant::now());
        }
    }

    /// `Ok` while healthy, else why not (one line, with what to check).
    pub fn check(&self) -> Result<(), String> {
        self.observe();
        let still = self.last.lock().unwrap().1.elapsed();
        if still > self.stall_after {
            return Err(format!(
                "the store writer has made no progress for {:.0}s (hung disk or SD card?); the agent needs a restart",
                still.as_secs_f64()
            ));
        }
        let status = self.metrics.snapshot();
        if !status.sources.is_empty() && status.sources.iter().all(|s| !s.connected) {
            return Err(format!(
                "none of the {} sources is connected; check the serial ports and brokers (`tidegate status`)",
                status.sources.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_when_the_heartbeat_stands_still() {
        let m = Metrics::new("t");
        let beat = Arc::new(AtomicU64::new(0));
        let h = Health::new(m.clone(), beat.clone(), Duration::from_millis(50));
        assert!(h.check().is_ok());
        std::thread::sleep(Duration::from_millis(80));
        assert!(h.check().unwrap_err().contains("no progress"));
        beat.fetch_add(1, Relaxed);
        assert!(h.check().is_ok());
        let src = m.source("sim");
        assert!(h.check().unwrap_err().contains("connected"));
        src.connected.store(true, Relaxed);
        assert!(h.check().is_ok());
    }
}
