//! End-to-end harness: the workspace's binaries and real servers from Debian's
//! packages (`influxdb` 1.6, `victoria-metrics` 1.79, `prometheus` 2.42,
//! `mosquitto` 2.0; `tansu` 0.6 from crates.io), each started on free loopback ports with a temporary
//! data directory, and killed when dropped (also when a test panics).
//!
//! Nothing here sleeps to synchronise: readiness is polled with a deadline
//! ([`wait_until`]), and a missed deadline panics naming what was awaited,
//! with the tail of the server's log.

pub mod agent;
mod influxd;
mod mosquitto;
mod process;
mod prometheus;
pub mod receiver;
pub mod subscriber;
mod tansu;
mod victoria;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use influxd::{rollup_of, Influxd, Row};
pub use mosquitto::Mosquitto;
pub use nix::sys::signal::Signal;
pub use process::{program, tail, ChildGuard};
pub use prometheus::Prometheus;
pub use tansu::{Consumer, Message, Tansu};
pub use victoria::Victoria;

/// One sample as a Prometheus-style database holds it: the series' labels
/// (`__name__` included), the time in milliseconds and the value's bits.
pub type Sample = (BTreeMap<String, String>, i64, u64);

/// The labels of a `"metric": {...}` object of a Prometheus-style answer.
fn labels(metric: &serde_json::Value) -> BTreeMap<String, String> {
    metric
        .as_object()
        .expect("a metric is an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a label value").to_string()))
        .collect()
}

/// The HTTP client of the harness's servers.
fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

/// The path of a workspace binary (`tidegate`, `firmware-sim`), built next to
/// the test executable, or in `$TIDEGATE_BIN_DIR` if set (a copy of this
/// checkout's binaries, when the target directory is shared with another
/// checkout that may relink them meanwhile).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = match std::env::var_os("TIDEGATE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>")
            .to_path_buf(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Polls `f` every `interval` until it returns `Some`; `None` once `timeout`
/// has passed (`f` is called at least once, and once more at the deadline).
pub fn poll_until<T>(
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline - now));
    }
}

/// Polls `f` (every 25 ms) until it returns `Some`, or panics naming `what`
/// after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, Duration::from_millis(25), f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}
