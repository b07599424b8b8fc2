//! Progress bars for long operations run by a person (the benches): drawn on
//! stderr only when it is a terminal, so pipes, logs and CI see nothing.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `total` items of `what` (e.g. "points replayed"); hidden
/// when stderr is not a terminal.
pub fn bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(&format!(
        "{{spinner}} {what} {{bar:30}} {{human_pos}}/{{human_len}} ({{per_sec}}, eta {{eta}})"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}
