//! Serial sources end to end: one simulated device per framing (kv, json,
//! line protocol, csv, binary frames) on its own PTY at once, with garbage,
//! into one agent; and a binary device unplugged and plugged in again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use tidegate_e2e::agent::{dead_letters, expected_points, sim_config, stored_raw, Agent, Sim};
use tidegate_e2e::wait_until;

const FRAMINGS: [&str; 5] = ["kv", "json", "lp", "csv", "binary"];

/// The agent's configuration: one serial source per framing in `framings`,
/// named after it, reading `<dir>/<framing>/tty`, tagged `device=<framing>`.
fn config(dir: &Path, framings: &[&str]) -> String {
    // The agent and store settings of the harness, without its sim source.
    let mut c = sim_config(dir, None, "");
    for f in framings {
        c += &format!(
            r#"
[[sources.serial]]
name = "{f}"
port = "{tty}"
framing = "{f}"
measurement = "sim"
tags = {{ site = "lab" }}
device = "{f}"
required_keys = ["sensor", "ts"]
csv_header = ["sensor", "ts", "temp", "hum"]
"#,
            tty = dir.join(f).join("tty").display(),
        );
    }
    c
}

/// The store holds every valid reading exactly once and nothing else.
fn assert_stored_exactly(dir: &Path, want: &BTreeSet<(String, i64, u64)>) {
    let got = stored_raw(dir);
    let set: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(set.len(), got.len(), "a point stored twice");
    let missing: Vec<_> = want.difference(&set).take(5).collect();
    let extra: Vec<_> = set.difference(want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
}

#[test]
fn every_framing_at_once_readings_stored_once_garbage_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let sims: Vec<Sim> = FRAMINGS
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let d = dir.path().join(f);
            std::fs::create_dir_all(&d).unwrap();
            let seed = (i + 11).to_string();
            Sim::start(
                &d,
                &[
                    "--framing",
                    f,
                    "--sensors",
                    "3",
                    "--rate",
                    "300",
                    "--count",
                    "1200",
                    "--garbage-rate",
                    "0.05",
                    "--seed",
                    &seed,
                ],
            )
        })
        .collect();
    let agent = Agent::start(dir.path(), &config(dir.path(), &FRAMINGS));
    for s in &sims {
        s.wait_done(Duration::from_secs(60));
    }
    let mut want = BTreeSet::new();
    let mut garbage = BTreeMap::new();
    for (f, s) in FRAMINGS.iter().zip(&sims) {
        let ledger = s.ledger();
        assert_eq!(ledger.len(), 1200);
        want.extend(expected_points(
            &ledger,
            "sim",
            &[("site", "lab"), ("device", f), ("port", "tty")],
        ));
        let g = ledger.iter().filter(|e| !e.valid).count() as u64;
        assert!(g > 0, "{f}: the sim was asked for 5% garbage");
        garbage.insert(f.to_string(), g);
    }
    let status = wait_until(
        "every line read and every point flushed",
        Duration::from_secs(60),
        || {
            let s = agent.status();
            (s.sources.iter().all(|src| src.lines >= 1200)
                && s.store.points_flushed >= want.len() as u64)
                .then_some(s)
        },
    );
    for src in &status.sources {
        assert_eq!(src.lines, 1200, "{}: every line read once", src.name);
        assert_eq!(
            src.rejected(),
            garbage[&src.name],
            "{}: rejects == the ledger's garbage: {:?}",
            src.name,
            src.rejects
        );
    }
    assert_eq!(status.store.points_flushed, want.len() as u64);
    let summary = agent.terminate();
    assert_eq!(summary.store.points_flushed, want.len() as u64);
    assert!(
        summary.clock.synchronised.is_some(),
        "the kernel's clock state in status"
    );
    assert_stored_exactly(dir.path(), &want);
    assert_eq!(
        dead_letters(dir.path()),
        garbage,
        "one dead letter a garbage line"
    );
}

#[test]
fn binary_device_unplugged_and_replugged_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("binary");
    std::fs::create_dir_all(&d).unwrap();
    let sim = Sim::start(
        &d,
        &[
            "--framing",
            "binary",
            "--sensors",
            "2",
            "--rate",
            "200",
            "--count",
            "800",
            "--garbage-rate",
            "0.02",
            "--unplug-after",
            "300",
            "--replug-after",
            "1s",
        ],
    );
    let agent = Agent::start(dir.path(), &config(dir.path(), &["binary"]));
    sim.wait_done(Duration::from_secs(60));
    let ledger = sim.ledger();
    assert_eq!(ledger.len(), 800);
    let want = expected_points(
        &ledger,
        "sim",
        &[("site", "lab"), ("device", "binary"), ("port", "tty")],
    );
    let garbage = ledger.iter().filter(|e| !e.valid).count() as u64;
    wait_until(
        "every point of both plug-ins flushed",
        Duration::from_secs(60),
        || (agent.status().store.points_flushed >= want.len() as u64).then_some(()),
    );
    let log = agent.log();
    assert_eq!(
        log.matches("port lost").count(),
        1,
        "unplug logged once:\n{log}"
    );
    assert_eq!(
        log.matches("port back").count(),
        1,
        "replug logged once:\n{log}"
    );
    let summary = agent.terminate();
    assert_eq!(summary.store.points_flushed, want.len() as u64);
    assert_eq!(summary.sources[0].rejected(), garbage);
    assert_stored_exactly(dir.path(), &want);
    assert_eq!(
        dead_letters(dir.path()),
        BTreeMap::from([("binary".to_string(), garbage)])
    );
}
