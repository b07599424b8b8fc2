//! The operator's view end to end: `status --json` against the ledger and the
//! store, `status --watch` in tmux, `/metrics` scraped by a real Prometheus,
//! `/healthz` when the store writer stalls, and `tap`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tidegate::ops::Status;
use tidegate_e2e::agent::{expected_points, sim_config, stored_raw, Agent, Sim};
use tidegate_e2e::receiver::{Mode, Receiver};
use tidegate_e2e::{bin, free_port, wait_until, ChildGuard, Prometheus};

/// `tidegate status --json` through the CLI.
fn status_cli(agent: &Agent) -> Status {
    let out = Command::new(bin("tidegate"))
        .args(["status", "--json", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status --json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints a Status")
}

fn sink(url: &str) -> String {
    format!(
        r#"
[[sinks.influx]]
name = "rx"
url = "{url}"
db = "ops"
batch_max_points = 200
backoff_max = "1s"
daily_budget = "1GiB"
"#
    )
}

/// `[listen]` on a free loopback port for monitoring only (no relay writes,
/// which would count as a connected source); returns (config lines, host:port).
fn listen() -> (String, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    (
        format!("\n[listen]\naddress = \"{addr}\"\nwrite = false\n"),
        addr,
    )
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[test]
fn status_json_counts_match_the_ledger_and_the_store() {
    let rx = Receiver::start(Mode::Accept(Duration::ZERO));
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(
        dir.path(),
        &[
            "--sensors",
            "3",
            "--rate",
            "300",
            "--count",
            "1500",
            "--garbage-rate",
            "0.03",
        ],
    );
    let agent = Agent::start(
        dir.path(),
        &sim_config(dir.path(), Some("ops"), &sink(&rx.url())),
    );
    sim.wait_done(Duration::from_secs(60));
    let ledger = sim.ledger();
    let want = expected_points(&ledger, "sim", &[("site", "ops")]);
    let n = want.len() as u64;
    let garbage = ledger.iter().filter(|e| !e.valid).count() as u64;
    assert!(garbage > 0);

    // Everything sent, and sealed at least once since (the store's figures
    // are refreshed after each seal, every 2 s here).
    let s = wait_until(
        "every point sent and the store's figures refreshed",
        Duration::from_secs(60),
        || {
            let s = status_cli(&agent);
            (s.sinks[0].points_sent >= n && s.store.raw_points >= n).then_some(s)
        },
    );
    let src = &s.sources[0];
    assert_eq!(src.name, "sim");
    assert_eq!(src.lines, ledger.len() as u64, "every line read");
    assert_eq!(src.points, n, "points == the ledger's valid readings");
    assert_eq!(src.rejected(), garbage, "rejects == the ledger's garbage");
    assert!(src.connected);
    assert!(src.last_seen_ns > 0 && src.last_seen_ns <= s.now_ns);

    let stored = stored_raw(dir.path());
    let st = &s.store;
    assert_eq!(st.points_appended, n);
    assert_eq!(st.points_flushed, n);
    assert_eq!(stored.len() as u64, n, "the store holds exactly the ledger");
    assert_eq!(stored.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(st.raw_points, n, "raw points kept == points stored");
    let series: BTreeSet<&str> = want.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(st.series, series.len() as u64);
    let oldest = want.iter().map(|p| p.1).min().unwrap();
    assert_eq!(st.oldest_raw_ns, oldest, "oldest raw == the ledger's first");
    assert_eq!(st.oldest_rollup_ns, oldest);
    assert_eq!(st.points_evicted, 0);
    assert_eq!(st.max_disk_bytes, 1 << 30);
    assert!(st.bytes_used > 0 && st.bytes_used <= st.bytes_on_disk);
    assert!(st.bytes_per_point().unwrap() > 0.0);

    let k = &s.sinks[0];
    assert_eq!(k.points_sent, n, "nothing sent twice");
    assert_eq!(rx.points(), want, "the receiver holds exactly the ledger");
    assert_eq!(k.state(), "up");
    assert_eq!(k.daily_budget, 1 << 30);
    assert!(k.bytes_today > 0 && k.bytes_today == k.bytes_sent);
    let newest = want.iter().map(|p| p.1).max().unwrap();
    assert_eq!(k.last_sent_ts_ns, newest);
    let s = wait_until("the backlog gauge at 0", Duration::from_secs(10), || {
        let s = status_cli(&agent);
        (s.sinks[0].backlog_points == 0).then_some(s)
    });
    assert_eq!(s.sinks[0].lag_s, Some(0.0));
    assert!(s.clock_synchronised.is_some());
    let cfg = s.config_file.expect("config provenance");
    assert!(
        cfg.path.ends_with(".toml") && cfg.hash.len() == 16,
        "{cfg:?}"
    );

    // The text view shows the same figures.
    let out = Command::new(bin("tidegate"))
        .args(["status", "--socket"])
        .arg(agent.socket())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "sources".to_string(),
        "store".to_string(),
        "sinks".to_string(),
        format!("points {n:>10}"),
        format!("rejects {garbage}"),
        format!("sent {n:>10}"),
        "rx".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} not in\n{text}");
    }
    // The sparkline view: one line per series, the ledger's min, max and last.
    let out = Command::new(bin("tidegate"))
        .args(["query", "--format", "spark", "--from=-10m", "--store"])
        .arg(dir.path().join("state/store.db"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), series.len(), "{text}");
    for key in &series {
        let points: Vec<_> = want.iter().filter(|p| p.0 == *key).collect();
        let value = |p: &&(String, i64, u64)| f64::from_bits(p.2);
        let min = points.iter().map(value).fold(f64::INFINITY, f64::min);
        let max = points.iter().map(value).fold(f64::NEG_INFINITY, f64::max);
        let last = value(points.iter().max_by_key(|p| p.1).unwrap());
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap();
        let head = format!(
            "min {min:<10.4} max {max:<10.4} last {last:<10.4} n {:<7}",
            points.len()
        );
        assert!(line.contains(&head), "{head:?} not in {line:?}");
        assert!(line.chars().any(|c| "▁▂▃▄▅▆▇█".contains(c)), "{line}");
    }
    print!("{text}");
    agent.terminate();
}

/// tmux, killed with its session when dropped.
struct Tmux(String);

impl Tmux {
    fn capture(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// The number after `label` on the line starting (after spaces) with `name`.
fn figure(screen: &str, name: &str, label: &str) -> Option<u64> {
    let line = screen.lines().find(|l| l.trim_start().starts_with(name))?;
    let rest = &line[line.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn status_watch_redraws_in_tmux() {
    let rx = Receiver::start(Mode::Accept(Duration::ZERO));
    let dir = tempfile::tempdir().unwrap();
    let _sim = Sim::start(dir.path(), &["--sensors", "3", "--rate", "100"]);
    let agent = Agent::start(
        dir.path(),
        &sim_config(dir.path(), Some("ops"), &sink(&rx.url())),
    );
    let session = format!("tidegate-ops-{}", std::process::id());
    let cmd = format!(
        "{} status --watch --interval 300ms --socket {}",
        bin("tidegate").display(),
        agent.socket().display()
    );
    let ok = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-x",
            "200",
            "-y",
            "50",
            "-s",
            &session,
            &cmd,
        ])
        .env_remove("TMUX")
        .status()
        .expect("tmux (scripts/test installs it)");
    assert!(ok.success());
    let tmux = Tmux(session);
    let screen = |what: &str| {
        wait_until(what, Duration::from_secs(20), || {
            let s = tmux.capture();
            let points = figure(&s, "sim", "points")?;
            let sent = figure(&s, "rx", "sent")?;
            (points > 0 && sent > 0).then_some((s, points, sent))
        })
    };
    let (first, p1, s1) = screen("a first screen with the sim source and the rx sink");
    for section in ["sources", "store", "sinks", "pt/s", "backlog", "used"] {
        assert!(first.contains(section), "{section} missing from\n{first}");
    }
    let (second, p2, s2) = wait_until(
        "the figures to change on screen",
        Duration::from_secs(20),
        || {
            let (s, p, k) = screen("a second screen");
            (p > p1 && k > s1).then_some((s, p, k))
        },
    );
    assert!(p2 > p1 && s2 > s1, "{first}\n---\n{second}");
    // Redrawn in place: one header, not a scroll of blocks.
    assert_eq!(second.matches("sources").count(), 1, "{second}");
    drop(tmux);
    agent.terminate();
}

#[test]
fn status_watch_without_a_terminal_prints_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let _sim = Sim::start(dir.path(), &["--sensors", "2", "--rate", "50"]);
    let agent = Agent::start(dir.path(), &sim_config(dir.path(), Some("ops"), ""));
    let mut child = ChildGuard::spawn(
        "tidegate status --watch",
        Command::new(bin("tidegate"))
            .args(["status", "--watch", "--interval", "200ms", "--socket"])
            .arg(agent.socket())
            .stdout(Stdio::piped()),
    );
    let out = child.child().stdout.take().unwrap();
    let blocks: Vec<String> = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with("--- "))
        .take(3)
        .collect();
    assert_eq!(blocks.len(), 3);
    drop(child);
    // The first protocol still works: connect and read, no request line.
    let mut sock = std::os::unix::net::UnixStream::connect(agent.socket()).unwrap();
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut sock, &mut buf).unwrap();
    let old: Status = serde_json::from_slice(&buf).expect("a status for an old client");
    assert_eq!(old.sources[0].name, "sim");
    agent.terminate();
}

#[test]
fn prometheus_scrapes_the_ingest_counter() {
    let rx = Receiver::start(Mode::Accept(Duration::ZERO));
    let dir = tempfile::tempdir().unwrap();
    let _sim = Sim::start(dir.path(), &["--sensors", "3", "--rate", "100"]);
    let (listen, addr) = listen();
    let agent = Agent::start(
        dir.path(),
        &sim_config(dir.path(), Some("ops"), &(sink(&rx.url()) + &listen)),
    );

    // The exposition itself, as the encoder wrote it, with every metric the
    // Grafana dashboard uses (the oldest-point gauges appear after a seal).
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/grafana/tidegate.json"),
    )
    .unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let used: BTreeSet<&str> = dashboard
        .match_indices("tidegate_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| *name != "tidegate_")
        .collect();
    assert!(used.len() > 20, "{used:?}");
    let http = reqwest::blocking::Client::new();
    let text = wait_until(
        "every metric of the dashboard exported",
        Duration::from_secs(20),
        || {
            let text = http
                .get(format!("http://{addr}/metrics"))
                .send()
                .ok()?
                .text()
                .ok()?;
            used.iter()
                .all(|name| {
                    text.contains(&format!("\n{name}{{")) || text.contains(&format!("\n{name} "))
                })
                .then_some(text)
        },
    );
    for name in [
        "tidegate_source_points_total{source=\"sim\"}",
        "tidegate_store_points_appended_total",
        "tidegate_sink_backlog_points{sink=\"rx\"}",
        "tidegate_healthy 1",
        "# EOF",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }

    let prom = Prometheus::start_scraping(&addr);
    let value = |expr: &str| -> Option<f64> {
        let r = prom.query(expr);
        r.first()?["value"][1].as_str()?.parse().ok()
    };
    let first = wait_until(
        "Prometheus to scrape the agent's ingest counter",
        Duration::from_secs(30),
        || {
            value("tidegate_source_points_total{job=\"tidegate\",source=\"sim\"}")
                .filter(|v| *v > 0.0)
        },
    );
    let later = wait_until(
        "the scraped ingest counter to increase",
        Duration::from_secs(30),
        || {
            value("tidegate_source_points_total{job=\"tidegate\",source=\"sim\"}")
                .filter(|v| *v > first)
        },
    );
    assert!(later > first);
    let rate = wait_until("a positive ingest rate", Duration::from_secs(30), || {
        value("rate(tidegate_source_points_total{source=\"sim\"}[5s])").filter(|v| *v > 0.0)
    });
    assert!(
        rate > 10.0,
        "the sim sends ~200 points/s, Prometheus says {rate}"
    );
    assert_eq!(value("up{job=\"tidegate\"}"), Some(1.0));
    agent.terminate();
}

#[test]
fn healthz_turns_503_when_the_store_writer_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let _sim = Sim::start(dir.path(), &["--sensors", "2", "--rate", "50"]);
    let (listen, addr) = listen();
    let agent = Agent::start_with_env(
        dir.path(),
        &sim_config(dir.path(), Some("ops"), &listen),
        &[("TIDEGATE_TEST_STALL_STORE_AFTER", "4s")],
    );
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let get = || {
        let r = http.get(format!("http://{addr}/healthz")).send().ok()?;
        Some((r.status().as_u16(), r.text().unwrap_or_default()))
    };
    let healthy = wait_until("/healthz 200", Duration::from_secs(10), || {
        get().filter(|(code, _)| *code == 200)
    });
    assert_eq!(healthy.1.trim(), "ok");
    let t0 = Instant::now();
    let (code, why) = wait_until("/healthz 503", Duration::from_secs(30), || {
        get().filter(|(code, _)| *code != 200)
    });
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("store writer"), "{why}");
    assert!(
        t0.elapsed() > Duration::from_secs(1),
        "not before the stall"
    );
    // /metrics says so too.
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(text.contains("tidegate_healthy 0"), "{text}");
    // A stalled writer cannot shut down cleanly: the harness kills it.
    agent.kill();
}

#[test]
fn healthz_is_503_while_no_source_is_connected() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, addr) = listen();
    // The serial port does not exist (no simulator).
    let agent = Agent::start(dir.path(), &sim_config(dir.path(), Some("ops"), &listen));
    let r = reqwest::blocking::get(format!("http://{addr}/healthz")).unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.text().unwrap().contains("connected"));
    agent.terminate();
}

#[test]
fn tap_prints_points_within_a_second_of_the_sim_sending_them() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path(), &["--sensors", "3", "--rate", "60"]);
    let agent = Agent::start(dir.path(), &sim_config(dir.path(), Some("ops"), ""));
    wait_until("the sim connected", Duration::from_secs(10), || {
        agent.status().sources[0].connected.then_some(())
    });
    let mut tap = ChildGuard::spawn(
        "tidegate tap",
        Command::new(bin("tidegate"))
            .args(["tap", "--series", "sim,*temp", "--socket"])
            .arg(agent.socket())
            .stdout(Stdio::piped()),
    );
    let out = tap.child().stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((l, now_ns())).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 60 && Instant::now() < deadline {
        if let Ok(x) = lines.recv_timeout(Duration::from_secs(1)) {
            got.push(x);
        }
    }
    assert!(got.len() >= 60, "tap printed {} lines in 20 s", got.len());
    drop(tap);
    drop(sim);
    let ledger = Sim::read_ledger_at(dir.path());
    let want = expected_points(&ledger, "sim", &[("site", "ops")]);
    for (line, seen) in &got {
        // `sim,sensor=s01,site=ops temp=21.5 1764053000123000000`
        let (series, ts) = line.rsplit_once(' ').unwrap();
        let ts: i64 = ts.parse().unwrap_or_else(|_| panic!("{line}"));
        let (key, value) = series.rsplit_once('=').unwrap();
        let key = key.to_string();
        let value: f64 = value.parse().unwrap();
        assert!(
            key.ends_with(" temp"),
            "the pattern keeps only temp: {line}"
        );
        assert!(
            want.contains(&(key.clone(), ts, value.to_bits())),
            "{line} is not in the ledger"
        );
        // The sim stamps a reading when it sends it.
        let delay = Duration::from_nanos((seen - ts).max(0) as u64);
        assert!(
            delay < Duration::from_secs(1),
            "{line} printed {delay:?} after it was sent"
        );
    }
    agent.terminate();
}

#[test]
fn status_shows_a_down_sink_falling_behind() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(dir.path(), &["--sensors", "2", "--rate", "50"]);
    // Nothing listens on a port just freed.
    let url = format!("http://127.0.0.1:{}", free_port());
    let agent = Agent::start(
        dir.path(),
        &sim_config(dir.path(), Some("ops"), &sink(&url)),
    );
    let s = wait_until("the sink 3 s behind", Duration::from_secs(30), || {
        let s = status_cli(&agent);
        (s.sinks[0].lag_s? > 3.0).then_some(s)
    });
    let k = &s.sinks[0];
    assert_eq!(k.state(), "down");
    assert!(k.last_error.is_some());
    assert_eq!(k.points_sent, 0);
    assert!(k.backlog_points > 0);
    // The lag is the age of the oldest point not sent: the sim's first reading.
    let first = sim
        .ledger()
        .iter()
        .filter(|e| e.valid)
        .filter_map(|e| e.ts)
        .min()
        .unwrap()
        * 1_000_000;
    let want = (s.now_ns - first) as f64 / 1e9;
    let lag = k.lag_s.unwrap();
    assert!(
        (lag - want).abs() < 1.5,
        "lag {lag} s, oldest unsent point {want} s old"
    );
    agent.terminate();
}
