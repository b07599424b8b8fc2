//! SIGKILL at random moments under load: after every restart the store opens
//! without repair, everything committed before the kill is still there exactly
//! once, and nothing is stored that the sensor did not send.

use std::collections::BTreeSet;
use std::time::Duration;

use tidegate_e2e::agent::{expected_points, stored_raw as stored, Agent, Sim};

/// Kills per run: 50 by default, more with TIDEGATE_CRASH_LOOPS.
fn loops() -> usize {
    std::env::var("TIDEGATE_CRASH_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

#[test]
fn sigkill_loop_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"
[agent]
state_dir = "{state}"
[store]
flush_interval = "100ms"
seal_interval = "300ms"
[[sources.serial]]
name = "sim"
port = "{tty}"
port_tag = false
measurement = "sim"
tags = {{ site = "lab" }}
required_keys = ["sensor", "ts"]
"#,
        state = dir.path().join("state").display(),
        tty = dir.path().join("tty").display(),
    );
    let sim = Sim::start(
        dir.path(),
        &["--sensors", "4", "--rate", "2000", "--garbage-rate", "0"],
    );
    let mut committed: BTreeSet<(String, i64, u64)> = BTreeSet::new();
    let mut rng = 0x9e3779b97f4a7c15u64;
    for round in 0..loops() {
        let agent = Agent::start(dir.path(), &cfg);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // A random moment: the fault's timing, not a synchronisation.
        std::thread::sleep(Duration::from_millis(50 + rng % 400));
        let before: BTreeSet<_> = stored(dir.path()).into_iter().collect();
        agent.kill();
        assert!(
            before.is_superset(&committed),
            "round {round}: points committed before an earlier kill are gone"
        );
        committed = before;
    }
    let after = stored(dir.path());
    let unique: BTreeSet<_> = after.iter().cloned().collect();
    assert_eq!(unique.len(), after.len(), "a point is stored twice");
    assert!(unique.is_superset(&committed));
    assert!(
        committed.len() > 1000,
        "the load was real: {} points",
        committed.len()
    );
    drop(sim);
    let ledger: BTreeSet<_> =
        expected_points(&Sim::read_ledger_at(dir.path()), "sim", &[("site", "lab")]);
    assert!(
        unique.is_subset(&ledger),
        "every stored point was sent by the sensor, bit for bit"
    );
    let aside = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("corrupt")
        })
        .count();
    assert_eq!(aside, 0, "the store never needed repair");
}
