//! Plain-text rendering of a [`Status`] for `tidegate status` (and `--watch`).

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::Status;

/// One screen: the agent, each source, the store, each sink.
pub fn render_status(s: &Status) -> String {
    let mut o = String::new();
    let clock = match s.clock_synchronised {
        Some(true) => "clock synchronised",
        Some(false) => "CLOCK NOT SYNCHRONISED (timestamps may be wrong)",
        None => "clock state unknown",
    };
    let _ = writeln!(
        o,
        "tidegate {} on {} — up {} — {clock}",
        s.version,
        s.device,
        duration(s.uptime_s)
    );
    if s.clock.steps > 0 {
        let _ = writeln!(
            o,
            "clock stepped {} times (last {:+.1}s): {} points stamped on arrival re-stamped, {} sent before a step kept the old time",
            s.clock.steps,
            s.clock.last_step_ms as f64 / 1e3,
            s.clock.corrected,
            s.clock.sent_uncorrected
        );
    }
    if let Some(f) = &s.config_file {
        let _ = writeln!(o, "config {} (hash {})", f.path, &f.hash);
    }
    let c = &s.config;
    if c.source == "fleet" {
        let _ = writeln!(o, "config: {} ({})", c.layers, c.state);
    }
    let _ = writeln!(o, "\nsources");
    for src in &s.sources {
        let rejects: Vec<String> = src
            .rejects
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            o,
            "  {:<16} {:<6} {:>9.1} pt/s  points {:>10}  lines {:>10}  last seen {}  rejects {}{}{}",
            src.name,
            if src.connected { "open" } else { "closed" },
            src.rate,
            src.points,
            src.lines,
            ago(src.last_seen_ns, s.now_ns),
            src.rejected(),
            if rejects.is_empty() {
                String::new()
            } else {
                format!(" ({})", rejects.join(", "))
            },
            // MQTT: against `broker_inflight`, how full the window gets,
            // and how often it filled (each time a commit).
            if src.unacked_max > 0 {
                format!(
                    "  unacked {} (most {}, filled {}x)",
                    src.unacked, src.unacked_max, src.window_commits
                )
            } else {
                String::new()
            }
        );
    }
    let st = &s.store;
    let _ = writeln!(o, "\nstore");
    let _ = writeln!(
        o,
        "  {:.1} pt/s in; points {} stored of {} received, {} series",
        st.ingest_rate, st.points_flushed, st.points_appended, st.series
    );
    let _ = writeln!(
        o,
        "  used {} of {} ({} on disk), {} raw points kept, {}",
        bytes(st.bytes_used),
        bytes(st.max_disk_bytes),
        bytes(st.bytes_on_disk),
        st.raw_points,
        match st.bytes_per_point() {
            Some(b) => format!("{b:.2} B/point"),
            None => "no point sealed yet".into(),
        }
    );
    let _ = writeln!(
        o,
        "  oldest raw {}, oldest rollup {}; evicted {} raw points, {} windows; degraded {} points owed as rollups",
        when(st.oldest_raw_ns),
        when(st.oldest_rollup_ns),
        st.points_evicted,
        st.windows_evicted,
        st.degraded_points
    );
    let _ = writeln!(o, "\nsinks");
    for k in &s.sinks {
        let lag = match k.lag_s {
            Some(l) => duration(l),
            None => "-".into(),
        };
        let budget = if k.daily_budget > 0 {
            format!("{} / {}", bytes(k.bytes_today), bytes(k.daily_budget))
        } else {
            bytes(k.bytes_today)
        };
        let _ = writeln!(
            o,
            "  {:<16} {:<4} backlog {:>9} points, lag {:>7}  in flight {}/{}  sent {:>10}  failed {}  dead letters {}  today {budget}",
            k.name,
            k.state(),
            k.backlog_points,
            lag,
            k.in_flight,
            k.concurrency_limit,
            k.points_sent,
            k.failures,
            k.dead_letters,
        );
        if let Some(h) = &k.held {
            let _ = writeln!(o, "    held: {h}");
        }
        if k.raw_replaced > 0 || k.lost > 0 {
            let _ = writeln!(
                o,
                "    degraded: {} raw points sent as {} rollup windows, {} lost",
                k.raw_replaced, k.rollups_replacing, k.lost
            );
        }
        if let Some(e) = &k.last_error {
            let _ = writeln!(o, "    last error: {e}");
        }
    }
    o
}

/// `1d 2h`, `3h 4m`, `5m 6s`, `7.0s`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{secs:.1}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `3.2s ago`, or `never`.
fn ago(ns: i64, now_ns: i64) -> String {
    if ns <= 0 {
        return "never".into();
    }
    format!("{} ago", duration((now_ns - ns).max(0) as f64 / 1e9))
}

/// An RFC 3339 time to the second, or `-`.
fn when(ns: i64) -> String {
    if ns <= 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns as u64)).to_string()
}

/// `12.3 MiB`.
fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(3.25), "3.2s");
        assert_eq!(duration(3700.0), "1h 1m");
        assert_eq!(ago(0, 5), "never");
    }

    #[test]
    fn an_mqtt_source_shows_how_full_its_window_got() {
        let m = crate::ops::Metrics::new("gw1");
        let serial = m.source("serial");
        serial.points.store(5, std::sync::atomic::Ordering::Relaxed);
        let mqtt = m.source("broker");
        mqtt.unacked.store(3, std::sync::atomic::Ordering::Relaxed);
        mqtt.unacked_max
            .store(1000, std::sync::atomic::Ordering::Relaxed);
        let line = |name: &str| {
            let text = render_status(&m.snapshot());
            let line = text.lines().find(|l| l.contains(name)).unwrap().to_string();
            (line, text)
        };
        let (broker, text) = line("broker");
        assert!(
            broker.ends_with("unacked 3 (most 1000, filled 0x)"),
            "{text}"
        );
        assert!(!line("serial").0.contains("unacked"), "{text}");
        // Each time the window filled, the store committed at once.
        mqtt.window_commits
            .store(12, std::sync::atomic::Ordering::Relaxed);
        let (broker, text) = line("broker");
        assert!(
            broker.ends_with("unacked 3 (most 1000, filled 12x)"),
            "{text}"
        );
    }
}
