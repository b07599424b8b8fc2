//! A board without a real-time clock: the agent's wall clock runs a day
//! behind until "NTP" steps it forward (the `TIDEGATE_TEST_CLOCK_STEP`
//! hook). Every point the agent stamped on arrival before the step (here,
//! Modbus polls of a simulated slave on a PTY) must end up at the true time,
//! none lost, and the query must say what was moved.

use std::process::Command;
use std::time::Duration;

use tidegate::point::now_ns;
use tidegate_e2e::agent::{sim_config, stored_raw, Agent, Sim};
use tidegate_e2e::{bin, wait_until};

const DAY_NS: i64 = 86_400 * 1_000_000_000;

#[test]
fn points_stamped_on_arrival_before_a_clock_step_are_moved_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let _slave = Sim::start_as(dir.path(), &["modbus"], &["--units", "1"]);
    let config = sim_config(dir.path(), None, "")
        + &format!(
            r#"
[[sources.modbus]]
name = "bus"
port = "{tty}"
baud = 19200

[[sources.modbus.devices]]
name = "d1"
unit = 1
poll_interval = "50ms"
registers = [{{ field = "temp", address = 0 }}, {{ field = "status", kind = "input", address = 2 }}]
"#,
            tty = dir.path().join("tty").display(),
        );
    // The test's own clock is the true one.
    let t0 = now_ns();
    let agent = Agent::start_with_env(
        dir.path(),
        &config,
        &[("TIDEGATE_TEST_CLOCK_STEP", "4s:1day")],
    );
    let at_step = wait_until(
        "the clock step and its correction",
        Duration::from_secs(60),
        || {
            let s = agent.status();
            (s.clock.steps > 0).then_some(s)
        },
    );
    assert_eq!(at_step.clock.steps, 1);
    assert!(
        at_step.clock.corrected > 20,
        "four seconds of polls before the step were moved: {:?}\n{}",
        at_step.clock,
        agent.log()
    );
    assert_eq!(at_step.clock.sent_uncorrected, 0, "no sink had them");
    assert!(
        (at_step.clock.last_step_ms - DAY_NS / 1_000_000).abs() < 2_000,
        "a day forward: {:?}",
        at_step.clock
    );
    // Some polls under the corrected clock too.
    let flushed = at_step.store.points_flushed;
    wait_until("more polls after the step", Duration::from_secs(30), || {
        (agent.status().store.points_flushed > flushed + 20).then_some(())
    });
    let end = agent.terminate();
    let t1 = now_ns();

    let stored = stored_raw(dir.path());
    assert_eq!(
        stored.len() as u64,
        end.store.points_flushed,
        "nothing lost"
    );
    assert_eq!(end.clock.corrected, at_step.clock.corrected);
    let wrong: Vec<_> = stored
        .iter()
        .filter(|(_, ts, _)| *ts < t0 || *ts > t1)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} points lie outside the true run [{t0}, {t1}], e.g. {:?}",
        wrong.len(),
        stored.len(),
        wrong.first()
    );

    // The query over that time says what the step moved.
    let out = Command::new(bin("tidegate"))
        .args(["query", "--from=-1h", "--to", "now", "--store"])
        .arg(dir.path().join("state/store.db"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("the clock stepped forward by 86400.0s")
            && note.contains(&format!(
                "{} points stamped on arrival",
                end.clock.corrected
            )),
        "query's note: {note}"
    );
}
