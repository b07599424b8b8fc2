//! The walking skeleton end to end: firmware-sim on a PTY → `tidegate run` →
//! a real influxd, checked against the simulator's ledger.

use std::collections::BTreeSet;
use std::time::Duration;

use tidegate_e2e::agent::{expected_points, Agent, Sim};
use tidegate_e2e::{wait_until, Influxd};

const DB: &str = "e2e";

fn config(dir: &std::path::Path, influx: &str, flush: &str) -> String {
    format!(
        r#"
[agent]
state_dir = "{state}"
shutdown_timeout = "15s"

[store]
flush_interval = "{flush}"
seal_interval = "2s"

[[sources.serial]]
name = "sim"
port = "{tty}"
port_tag = false
measurement = "sim"
tags = {{ site = "lab" }}
required_keys = ["sensor", "ts"]
tag_keys = ["sensor"]

[[sinks.influx]]
name = "influx"
url = "{influx}"
db = "{DB}"
batch_max_points = 500
backoff_max = "1s"
"#,
        state = dir.join("state").display(),
        tty = dir.join("tty").display(),
    )
}

fn stored(influx: &Influxd) -> BTreeSet<(String, i64, u64)> {
    influx
        .points(DB, "sim")
        .into_iter()
        .map(|r| (r.series, r.ts_ns, r.value.to_bits()))
        .collect()
}

#[test]
fn ledger_arrives_exactly_once_and_garbage_is_counted() {
    let influx = Influxd::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &influx.url(), "200ms");
    let sim = Sim::start(
        dir.path(),
        &[
            "--sensors",
            "3",
            "--rate",
            "200",
            "--count",
            "2000",
            "--garbage-rate",
            "0.02",
        ],
    );
    let agent = Agent::start(dir.path(), &cfg);
    sim.wait_done(Duration::from_secs(60));
    let ledger = sim.ledger();
    let want = expected_points(&ledger, "sim", &[("site", "lab")]);
    let garbage = ledger.iter().filter(|e| !e.valid).count() as u64;
    assert!(garbage > 0, "the sim was asked for 2% garbage");

    let status = wait_until(
        "the agent to send every point",
        Duration::from_secs(60),
        || {
            let s = agent.status();
            (s.sinks[0].points_sent >= want.len() as u64).then_some(s)
        },
    );
    assert_eq!(
        status.sources[0].lines,
        ledger.len() as u64,
        "every line read"
    );
    assert_eq!(
        status.sources[0].rejected(),
        garbage,
        "rejects == the ledger's garbage"
    );
    assert_eq!(
        status.sinks[0].points_sent,
        want.len() as u64,
        "nothing sent twice"
    );
    assert_eq!(stored(&influx), want, "InfluxDB holds exactly the ledger");

    let summary = agent.terminate();
    assert_eq!(summary.sinks[0].points_sent, want.len() as u64);
}

#[test]
fn influx_outage_loses_and_doubles_nothing() {
    let mut influx = Influxd::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &influx.url(), "200ms");
    let sim = Sim::start(
        dir.path(),
        &[
            "--sensors",
            "3",
            "--rate",
            "200",
            "--count",
            "5000",
            "--garbage-rate",
            "0.02",
        ],
    );
    let agent = Agent::start(dir.path(), &cfg);
    wait_until("first points in InfluxDB", Duration::from_secs(30), || {
        (agent.status().sinks[0].points_sent > 0).then_some(())
    });

    influx.stop();
    let at_stop = agent.status().store.points_flushed;
    // The outage lasts while the sim sends ~10 s worth of readings (400 points/s).
    wait_until(
        "the agent to buffer 4000 points during the outage",
        Duration::from_secs(60),
        || {
            let s = agent.status();
            (!s.sinks[0].up && s.store.points_flushed >= at_stop + 4000).then_some(())
        },
    );
    influx.start_again();

    sim.wait_done(Duration::from_secs(60));
    let ledger = sim.ledger();
    let want = expected_points(&ledger, "sim", &[("site", "lab")]);
    wait_until("the backlog to drain", Duration::from_secs(60), || {
        (agent.status().sinks[0].points_sent >= want.len() as u64).then_some(())
    });
    assert_eq!(stored(&influx), want, "nothing lost, nothing doubled");
    let log_path_agent = agent.log();
    let summary = agent.terminate();
    assert_eq!(
        summary.sinks[0].points_sent,
        want.len() as u64,
        "no point sent twice"
    );
    let log = log_path_agent;
    assert_eq!(
        log.matches("sink unreachable").count(),
        1,
        "outage logged once:\n{log}"
    );
    assert_eq!(
        log.matches("sink is back").count(),
        1,
        "recovery logged once:\n{log}"
    );
}

#[test]
fn sigterm_flushes_and_restart_resumes_from_the_cursor() {
    let influx = Influxd::start();
    let dir = tempfile::tempdir().unwrap();

    // Run 1: a flush interval of an hour, so only the shutdown flush can make the
    // points durable, and only the last sync can deliver them.
    let sim = Sim::start(
        dir.path(),
        &[
            "--sensors",
            "2",
            "--rate",
            "300",
            "--count",
            "900",
            "--seed",
            "7",
        ],
    );
    let agent = Agent::start(dir.path(), &config(dir.path(), &influx.url(), "1h"));
    sim.wait_done(Duration::from_secs(60));
    let first = expected_points(&sim.ledger(), "sim", &[("site", "lab")]);
    wait_until(
        "the agent to read every line",
        Duration::from_secs(30),
        || (agent.status().sources[0].lines == 900).then_some(()),
    );
    assert_eq!(
        agent.status().store.points_flushed,
        0,
        "nothing flushed before SIGTERM"
    );
    let summary = agent.terminate();
    assert_eq!(
        summary.store.points_flushed,
        first.len() as u64,
        "journal flushed at SIGTERM"
    );
    assert_eq!(
        summary.sinks[0].points_sent,
        first.len() as u64,
        "last sync delivered"
    );
    assert_eq!(stored(&influx), first);
    drop(sim);

    // Run 2: same state directory; only the new readings are sent.
    let sim = Sim::start(
        dir.path(),
        &[
            "--sensors",
            "2",
            "--rate",
            "300",
            "--count",
            "600",
            "--seed",
            "8",
        ],
    );
    let agent = Agent::start(dir.path(), &config(dir.path(), &influx.url(), "200ms"));
    sim.wait_done(Duration::from_secs(60));
    let second = expected_points(&sim.ledger(), "sim", &[("site", "lab")]);
    wait_until("the second run's points", Duration::from_secs(60), || {
        (agent.status().sinks[0].points_sent >= second.len() as u64).then_some(())
    });
    let summary = agent.terminate();
    assert_eq!(
        summary.sinks[0].points_sent,
        second.len() as u64,
        "acknowledged points not resent"
    );
    let all: BTreeSet<_> = first.union(&second).cloned().collect();
    assert_eq!(stored(&influx), all);
}

/// The agent's HTTPS client (reqwest on rustls with the ring provider, the
/// one crypto provider of the tree) trusts a private CA from `ca_file`.
#[test]
fn sink_speaks_tls_to_a_private_ca() {
    let influx = Influxd::start_tls();
    assert!(influx.url().starts_with("https://"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &influx.url(), "200ms").replace(
        "backoff_max = \"1s\"",
        &format!(
            "backoff_max = \"1s\"\nca_file = \"{}\"",
            influx.ca_file().display()
        ),
    );
    let sim = Sim::start(
        dir.path(),
        &["--sensors", "2", "--rate", "200", "--count", "300"],
    );
    let agent = Agent::start(dir.path(), &cfg);
    sim.wait_done(Duration::from_secs(30));
    let want = expected_points(&sim.ledger(), "sim", &[("site", "lab")]);
    wait_until("points over HTTPS", Duration::from_secs(30), || {
        (agent.status().sinks[0].points_sent >= want.len() as u64).then_some(())
    });
    assert_eq!(stored(&influx), want);
    assert_eq!(
        agent.terminate().sinks[0].failures,
        0,
        "no TLS error on the way"
    );
}
