//! Plain-text rendering of a [`Status`] for `tidegate status`.

use std::fmt::Write;

use super::Status;

/// One screen: the agent, each source, the store, each sink.
pub fn render_status(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "tidegate {} on {} — up {:.0}s",
        s.version, s.device, s.uptime_s
    );
    let c = &s.config;
    if c.source == "fleet" {
        let _ = writeln!(
            o,
            "config: local file under fleet version {} ({})",
            c.version, c.state
        );
    } else {
        let _ = writeln!(o, "config: local file");
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
            "  {:<16} {:<6} lines {:>10}  points {:>10}  rejects {} {}",
            src.name,
            if src.connected { "open" } else { "closed" },
            src.lines,
            src.points,
            src.rejected(),
            if rejects.is_empty() {
                String::new()
            } else {
                format!("({})", rejects.join(", "))
            }
        );
    }
    let st = &s.store;
    let _ = writeln!(o, "\nstore");
    let _ = writeln!(
        o,
        "  points {:>10} stored of {} received, {} series, {} bytes on disk",
        st.points_flushed, st.points_appended, st.series, st.bytes_on_disk
    );
    let _ = writeln!(o, "\nsinks");
    for k in &s.sinks {
        let _ = writeln!(
            o,
            "  {:<16} {:<4} sent {:>10}  requests {:>7}  failed {:>5}  dead letters {}{}",
            k.name,
            if k.up { "up" } else { "down" },
            k.points_sent,
            k.requests,
            k.failures,
            k.dead_letters,
            k.last_error
                .as_ref()
                .map(|e| format!("\n    last error: {e}"))
                .unwrap_or_default()
        );
    }
    o
}
