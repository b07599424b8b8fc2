//! The agent as a systemd `Type=notify` service, against a fake service
//! manager: a Unix datagram socket the test binds and hands over in
//! `NOTIFY_SOCKET`. The agent must say READY=1 (store open, sources started),
//! then STATUS= and WATCHDOG=1, and STOPPING=1 at shutdown; and it must stop
//! the watchdog pings when the store writer stalls (the test-only fault
//! `TIDEGATE_TEST_STALL_STORE_AFTER`), while STATUS= keeps coming.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidegate_e2e::agent::Sim;
use tidegate_e2e::bin;

/// The fake service manager's end of `NOTIFY_SOCKET`.
struct FakeSystemd {
    sock: UnixDatagram,
}

impl FakeSystemd {
    fn bind(path: &Path) -> FakeSystemd {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        FakeSystemd { sock }
    }

    /// The next notification's lines (`READY=1`, `STATUS=...`), or `None` on timeout.
    fn recv(&self) -> Option<Vec<String>> {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_string)
                .collect(),
        )
    }

    /// Every notification line received during `d`, with its arrival time.
    fn collect_for(&self, d: Duration) -> Vec<(Instant, String)> {
        let end = Instant::now() + d;
        let mut out = Vec::new();
        while Instant::now() < end {
            if let Some(lines) = self.recv() {
                let t = Instant::now();
                out.extend(lines.into_iter().map(|l| (t, l)));
            }
        }
        out
    }

    /// Lines until one starts with `prefix` (inclusive); panics after `timeout`.
    fn until(&self, prefix: &str, timeout: Duration, log: &Path) -> Vec<String> {
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < end {
            if let Some(lines) = self.recv() {
                let hit = lines.iter().any(|l| l.starts_with(prefix));
                seen.extend(lines);
                if hit {
                    return seen;
                }
            }
        }
        panic!(
            "no {prefix} within {timeout:?}; got {seen:?}; agent log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

fn kind(line: &str) -> &str {
    line.split('=').next().unwrap_or(line)
}

fn config(dir: &Path) -> String {
    format!(
        r#"
[agent]
state_dir = "{state}"
shutdown_timeout = "2s"

[store]
flush_interval = "200ms"
seal_interval = "2s"

[[sources.serial]]
name = "sim"
port = "{tty}"
port_tag = false
measurement = "sim"
"#,
        state = dir.join("state").display(),
        tty = dir.join("tty").display(),
    )
}

/// `tidegate run` under the fake manager, with a 1 s watchdog (pings every 0.5 s),
/// as systemd starts it: NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.
fn spawn(dir: &Path, notify: &Path, extra_env: &[(&str, &str)]) -> Child {
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, config(dir)).unwrap();
    // systemd sets WATCHDOG_PID to the service's pid, and sd_watchdog_enabled
    // checks it: a shell learns its pid ($$) and execs the agent in its place.
    Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" run --config "$1""#)
        .arg(bin("tidegate"))
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", "1000000")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .expect("spawn tidegate")
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn notifies_ready_status_watchdog_stopping_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let systemd = FakeSystemd::bind(&notify);
    let _sim = Sim::start(dir.path(), &["--sensors", "2", "--rate", "50"]);
    let log = dir.path().join("agent.log");
    let mut agent = Killed(spawn(dir.path(), &notify, &[]));

    let mut seen = systemd.until("READY=1", Duration::from_secs(20), &log);
    assert_eq!(
        seen.len(),
        1,
        "READY=1 comes first, alone: {seen:?}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The store is open and the source started by now.
    assert!(dir.path().join("state").join("store.db").exists());
    seen.extend(systemd.until("STATUS=", Duration::from_secs(5), &log));
    seen.extend(systemd.until("WATCHDOG=1", Duration::from_secs(5), &log));
    // A few more seconds of steady state: STATUS about once a second,
    // WATCHDOG about twice (half of WATCHDOG_USEC).
    let steady = systemd.collect_for(Duration::from_secs(3));
    let statuses = steady.iter().filter(|(_, l)| kind(l) == "STATUS").count();
    let pings = steady.iter().filter(|(_, l)| l == "WATCHDOG=1").count();
    assert!(
        (2..=5).contains(&statuses),
        "STATUS lines in 3 s: {steady:?}"
    );
    assert!(pings >= 4, "WATCHDOG pings in 3 s: {steady:?}");
    let status = steady
        .iter()
        .rev()
        .find(|(_, l)| kind(l) == "STATUS")
        .unwrap();
    assert!(
        status.1.contains("points/s") && status.1.contains("sources 1/1 connected"),
        "a one-line summary: {status:?}"
    );
    seen.extend(steady.into_iter().map(|(_, l)| l));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    seen.extend(systemd.until("STOPPING=1", Duration::from_secs(5), &log));
    let exit = agent.0.wait().unwrap();
    assert!(exit.success(), "clean exit: {exit:?}");
    let after = systemd.collect_for(Duration::from_millis(300));
    assert!(after.is_empty(), "nothing after STOPPING=1: {after:?}");

    // The order of first appearances, and STOPPING last.
    let mut order: Vec<&str> = Vec::new();
    for l in &seen {
        if !order.contains(&kind(l)) {
            order.push(kind(l));
        }
    }
    assert_eq!(
        order,
        ["READY", "STATUS", "WATCHDOG", "STOPPING"],
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("STOPPING=1"));
    assert_eq!(seen.iter().filter(|l| l.as_str() == "READY=1").count(), 1);
}

#[test]
fn watchdog_stops_when_the_store_writer_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let systemd = FakeSystemd::bind(&notify);
    let _sim = Sim::start(dir.path(), &["--sensors", "2", "--rate", "50"]);
    let log = dir.path().join("agent.log");
    let _agent = Killed(spawn(
        dir.path(),
        &notify,
        &[("TIDEGATE_TEST_STALL_STORE_AFTER", "2s")],
    ));

    systemd.until("READY=1", Duration::from_secs(20), &log);
    systemd.until("WATCHDOG=1", Duration::from_secs(5), &log);
    // The writer stalls 2 s after it started; pings may go on for the grace
    // period (3 × flush_interval + 2 s = 2.6 s), then must stop for good.
    let got = systemd.collect_for(Duration::from_secs(10));
    let last_ping = got
        .iter()
        .rev()
        .find(|(_, l)| l == "WATCHDOG=1")
        .map(|(t, _)| *t);
    let end = Instant::now();
    let quiet = last_ping
        .map(|t| end - t)
        .unwrap_or(Duration::from_secs(10));
    assert!(
        quiet >= Duration::from_secs(4),
        "pings stopped for the last {quiet:?} of 10 s only: {got:?}"
    );
    // The agent is alive and still reports: only the watchdog went quiet.
    let late_status = got
        .iter()
        .filter(|(t, l)| kind(l) == "STATUS" && end - *t < quiet)
        .count();
    assert!(
        late_status >= 3,
        "STATUS keeps coming while the pings stop: {got:?}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("watchdog pings stopped"),
        "the agent says why; log:\n{log_text}"
    );
}

/// `systemd-analyze verify` (with ExecStart at the built binary: verify checks
/// it exists) and `systemd-analyze security --offline=true` ≤ 2.0.
#[test]
fn unit_verifies_and_exposure_is_at_most_2() {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: systemd-analyze is missing (apt-get install systemd)");
        return;
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/tidegate.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("\nExecStart=/usr/bin/tidegate run "));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tidegate.service");
    let exe = bin("tidegate");
    std::fs::write(
        &copy,
        text.replace(
            "\nExecStart=/usr/bin/tidegate ",
            &format!("\nExecStart={} ", exe.display()),
        ),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("tidegate.service"),
        "verify warns about the unit: {said}"
    );

    let sec = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&sec.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in {out}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{out}");
}
