//! Progress bars for long operations run by a person (the benches): drawn on
//! stderr only when it is a terminal, so pipes, logs and CI see nothing.
//!
//! One line, redrawn in place at most ten times a second:
//! `⠹ points replayed [=========>          ] 1,234,000/3,000,000 (220,512/s, eta 8s)`.
//! Hand-written rather than indicatif: the benches need this much, and
//! indicatif (with console and unicode-width) was ~50 KiB of the gateway binary.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bar counting up to a known total; does nothing when hidden.
pub struct ProgressBar {
    state: Option<Mutex<State>>,
}

struct State {
    what: String,
    total: u64,
    pos: u64,
    start: Instant,
    drawn: Option<Instant>,
    frame: usize,
}

const WIDTH: usize = 30;
const EVERY: Duration = Duration::from_millis(100);
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// A bar counting `total` items of `what` (e.g. "points replayed"); hidden
/// when stderr is not a terminal.
pub fn bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    ProgressBar {
        state: Some(Mutex::new(State {
            what: what.to_owned(),
            total,
            pos: 0,
            start: Instant::now(),
            drawn: None,
            frame: 0,
        })),
    }
}

impl ProgressBar {
    /// A bar that draws nothing.
    pub fn hidden() -> Self {
        ProgressBar { state: None }
    }

    /// Counts `n` more items.
    pub fn inc(&self, n: u64) {
        self.update(|s| s.pos = s.pos.saturating_add(n));
    }

    /// Sets the count to `pos`.
    pub fn set_position(&self, pos: u64) {
        self.update(|s| s.pos = pos);
    }

    /// Erases the bar's line.
    pub fn finish_and_clear(&self) {
        if let Some(state) = &self.state {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            if s.drawn.take().is_some() {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(b"\r\x1b[2K");
                let _ = err.flush();
            }
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let Some(state) = &self.state else { return };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        let now = Instant::now();
        if s.drawn.is_some_and(|d| now.duration_since(d) < EVERY) {
            return;
        }
        s.drawn = Some(now);
        s.frame = (s.frame + 1) % SPINNER.len();
        let line = s.line(now);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }
}

impl Drop for ProgressBar {
    fn drop(&mut self) {
        self.finish_and_clear();
    }
}

impl State {
    fn line(&self, now: Instant) -> String {
        let pos = self.pos.min(self.total);
        let filled = if self.total == 0 {
            WIDTH
        } else {
            (pos as u128 * WIDTH as u128 / self.total as u128) as usize
        };
        let mut bar = "=".repeat(filled);
        if filled < WIDTH {
            bar.push('>');
            bar.push_str(&" ".repeat(WIDTH - filled - 1));
        }
        let secs = now.duration_since(self.start).as_secs_f64();
        let rate = if secs > 0.0 { pos as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 {
            format!("{}s", ((self.total - pos) as f64 / rate).ceil() as u64)
        } else {
            "?".to_owned()
        };
        format!(
            "{} {} [{bar}] {}/{} ({}/s, eta {eta})",
            SPINNER[self.frame],
            self.what,
            grouped(self.pos),
            grouped(self.total),
            grouped(rate as u64),
        )
    }
}

/// `1234567` → `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1234567), "1,234,567");
    }

    #[test]
    fn line_shows_count_and_bar() {
        let start = Instant::now();
        let s = State {
            what: "points".into(),
            total: 200,
            pos: 100,
            start,
            drawn: None,
            frame: 0,
        };
        let line = s.line(start + Duration::from_secs(1));
        assert!(line.contains("points [===============>"), "{line}");
        assert!(line.contains("100/200 (100/s, eta 1s)"), "{line}");
        let hidden = ProgressBar::hidden();
        hidden.inc(5);
        hidden.finish_and_clear();
    }
}
