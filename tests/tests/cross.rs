//! The aarch64 build of `tidegate` under qemu-user → a real influxd, checked
//! against the simulator's ledger (the simulator runs natively; see the test
//! for why the serial leg runs natively too).
//!
//! Needs `target/aarch64-unknown-linux-gnu/<profile>/tidegate` and
//! `qemu-aarch64`. The profile is `TIDEGATE_CROSS_PROFILE`, `debug` by
//! default; scripts/test sets `gateway` after `scripts/package` built it, so
//! the binary tested is the one the arm64 .deb ships (size-optimised, no
//! unwind tables). Without them the test says why and passes, unless
//! `TIDEGATE_CROSS=require` (scripts/test sets it after the cross builds),
//! where it fails; `TIDEGATE_CROSS=skip` skips it (scripts/test's native
//! pass, before the aarch64 binary is built).

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tidegate::ops::Status;
use tidegate_e2e::agent::{expected_points, sim_config, Agent, Sim};
use tidegate_e2e::{bin, wait_until, Influxd};

const TRIPLE: &str = "aarch64-unknown-linux-gnu";
const DB: &str = "cross";

/// The cross-built agent and the runner that executes it, or why not.
fn cross_agent() -> Result<(PathBuf, Vec<String>), String> {
    // target/debug/tidegate → target/<triple>/<profile>/tidegate
    let native = bin("tidegate");
    let target = native.parent().and_then(Path::parent).unwrap();
    let profile = std::env::var("TIDEGATE_CROSS_PROFILE").unwrap_or_else(|_| "debug".into());
    let path = target.join(TRIPLE).join(&profile).join("tidegate");
    if !path.exists() {
        return Err(format!(
            "{} is missing (cargo build --target {TRIPLE} -p tidegate --bin tidegate, or scripts/package {TRIPLE} for the gateway profile)",
            path.display()
        ));
    }
    let runner = vec![
        "qemu-aarch64".to_string(),
        "-L".to_string(),
        "/usr/aarch64-linux-gnu".to_string(),
    ];
    let ok = Command::new(&runner[0])
        .arg("-version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err("qemu-aarch64 is missing (apt-get install qemu-user)".into());
    }
    Ok((path, runner))
}

/// `tidegate run` through `runner`; killed when dropped.
struct CrossAgent {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl CrossAgent {
    fn start(dir: &Path, agent: &Path, runner: &[String], config: &str) -> CrossAgent {
        let cfg = dir.join("agent.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join("agent.log");
        let child = Command::new(&runner[0])
            .args(&runner[1..])
            .arg(agent)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn the runner");
        let a = CrossAgent {
            child,
            socket: dir.join("state").join("tidegate.sock"),
            log,
        };
        wait_until(
            "the emulated agent's control socket",
            Duration::from_secs(60),
            || a.try_status(),
        );
        a
    }

    fn try_status(&self) -> Option<Status> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).ok()?;
        serde_json::from_slice(&buf).ok()
    }

    fn status(&self) -> Status {
        self.try_status().unwrap_or_else(|| {
            panic!(
                "status unavailable; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }

    fn terminate(mut self) -> Status {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let exit = self.child.wait().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(exit.success(), "exit {exit:?}; log:\n{log}");
        let last = out.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| panic!("final line {last:?}: {e}"))
    }
}

impl Drop for CrossAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, source: bool, influx: Option<&str>) -> String {
    let sink = match influx {
        Some(url) => format!(
            r#"
[[sinks.influx]]
name = "influx"
url = "{url}"
db = "{DB}"
batch_max_points = 500
backoff_max = "1s"
"#
        ),
        None => String::new(),
    };
    sim_config(dir, source.then_some("qemu"), &sink)
}

/// qemu-user does not emulate TCSETS2, so the emulated agent cannot open a
/// serial port (ENOSYS). The ledger therefore goes in through the native agent
/// (serial → store, no sink), and the aarch64 agent takes over the same store
/// under qemu and syncs it: its SQLite, chunk codec, cursor and HTTP sink run
/// emulated, on a store file written by another architecture.
#[test]
fn aarch64_agent_under_qemu_delivers_the_ledger_to_influxdb() {
    let mode = std::env::var("TIDEGATE_CROSS").unwrap_or_default();
    if mode == "skip" {
        eprintln!("skipped: TIDEGATE_CROSS=skip");
        return;
    }
    let (agent_bin, runner) = match cross_agent() {
        Ok(x) => x,
        Err(why) if mode != "require" => {
            eprintln!("skipped: {why}");
            return;
        }
        Err(why) => panic!("TIDEGATE_CROSS=require: {why}"),
    };
    let influx = Influxd::start();
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(
        dir.path(),
        &[
            "--sensors",
            "3",
            "--rate",
            "200",
            "--count",
            "1000",
            "--garbage-rate",
            "0.02",
        ],
    );
    let native = Agent::start(dir.path(), &config(dir.path(), true, None));
    sim.wait_done(Duration::from_secs(60));
    let ledger = sim.ledger();
    let want = expected_points(&ledger, "sim", &[("site", "qemu")]);
    let garbage = ledger.iter().filter(|e| !e.valid).count() as u64;
    wait_until(
        "the native agent to store the ledger",
        Duration::from_secs(30),
        || {
            let s = native.status();
            (s.sources[0].lines == ledger.len() as u64
                && s.store.points_flushed >= want.len() as u64)
                .then_some(())
        },
    );
    let ingest = native.terminate();
    assert_eq!(ingest.sources[0].rejected(), garbage);
    assert_eq!(ingest.store.points_appended, want.len() as u64);

    let agent = CrossAgent::start(
        dir.path(),
        &agent_bin,
        &runner,
        &config(dir.path(), false, Some(&influx.url())),
    );
    wait_until(
        "the emulated agent to send every point",
        Duration::from_secs(90),
        || (agent.status().sinks[0].points_sent >= want.len() as u64).then_some(()),
    );
    let stored: BTreeSet<(String, i64, u64)> = influx
        .points(DB, "sim")
        .into_iter()
        .map(|r| (r.series, r.ts_ns, r.value.to_bits()))
        .collect();
    assert_eq!(stored, want, "InfluxDB holds exactly the ledger");
    let summary = agent.terminate();
    assert_eq!(
        summary.sinks[0].points_sent,
        want.len() as u64,
        "nothing sent twice"
    );
}
