//! The Kafka sink against a real broker (`tansu`): firmware-sim on a PTY →
//! `tidegate run` → tansu, read back by a consumer in the test and compared
//! with the simulator's ledger: every point once per (series, timestamp), in
//! order per series within its partition; an unknown topic buffers until it
//! exists; a broker that stops answering at 10k points/s loses nothing; an
//! agent killed mid-stream resends only what was not acknowledged; records
//! over the size limit are split, not dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use tidegate::ops::metrics::SinkStatus;
use tidegate::ops::Status;
use tidegate_e2e::agent::{expected_points, sim_config, stored_raw, Agent, Sim};
use tidegate_e2e::{wait_until, Consumer, Message, Signal, Tansu};

/// A point as read back: (series key, ts ns, value bits).
type Pt = (String, i64, u64);

fn sink<'a>(status: &'a Status, name: &str) -> &'a SinkStatus {
    status
        .sinks
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no sink {name} in {:?}", status.sinks))
}

fn sim(dir: &Path, sensors: u32, rate: u32, count: u32, garbage: &str) -> Sim {
    Sim::start(
        dir,
        &[
            "--sensors",
            &sensors.to_string(),
            "--rate",
            &rate.to_string(),
            "--count",
            &count.to_string(),
            "--garbage-rate",
            garbage,
        ],
    )
}

/// The points of one line-protocol line `series field=value ts`.
fn parse_line(line: &str) -> Pt {
    let (rest, ts) = line.rsplit_once(' ').expect("a timestamp");
    let (series, fv) = rest.rsplit_once(' ').expect("a field");
    let (field, value) = fv.split_once('=').expect("field=value");
    let v: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("value in {line:?}"));
    (
        format!("{series} {field}"),
        ts.parse().unwrap(),
        v.to_bits(),
    )
}

/// The points of a message, in their order in it.
fn points_of(m: &Message) -> Vec<Pt> {
    let text = std::str::from_utf8(&m.value).expect("UTF-8");
    if text.starts_with('[') {
        let rows: Vec<serde_json::Value> = serde_json::from_str(text).expect("a JSON array");
        rows.iter()
            .map(|r| {
                let tags: Vec<(&str, &str)> = r["tags"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                    .collect();
                let key = tidegate::point::SeriesKey::new(
                    r["measurement"].as_str().unwrap(),
                    tags,
                    r["field"].as_str().unwrap(),
                );
                let v = r["value"].as_f64().unwrap();
                (
                    key.as_str().to_string(),
                    r["ts"].as_i64().unwrap(),
                    v.to_bits(),
                )
            })
            .collect()
    } else {
        text.lines().map(parse_line).collect()
    }
}

/// Every point read, in partition and offset order.
fn all_points(c: &Consumer) -> Vec<Pt> {
    c.by_partition()
        .values()
        .flatten()
        .flat_map(|m| points_of(m))
        .collect()
}

/// Polls `c` until what it read covers `want`; returns how many points it read.
fn read_until_covered(c: &mut Consumer, want: &BTreeSet<Pt>, timeout: Duration) -> usize {
    wait_until("the consumer to read every ledger point", timeout, || {
        c.poll();
        let got: BTreeSet<Pt> = all_points(c).into_iter().collect();
        want.is_subset(&got).then_some(())
    });
    all_points(c).len()
}

/// Within each partition, each series' timestamps rise (after the first
/// copy of each point: a resent batch may repeat a stretch); and each series
/// stays in one partition.
fn assert_in_order_per_series(c: &Consumer) {
    let mut home: BTreeMap<String, i32> = BTreeMap::new();
    for (partition, msgs) in c.by_partition() {
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        let mut seen: BTreeSet<(String, i64)> = BTreeSet::new();
        for m in msgs {
            for (series, ts, _) in points_of(m) {
                let h = *home.entry(series.clone()).or_insert(partition);
                assert_eq!(
                    h, partition,
                    "{series} is in partitions {h} and {partition}"
                );
                if !seen.insert((series.clone(), ts)) {
                    continue;
                }
                if let Some(&prev) = last.get(&series) {
                    assert!(
                        prev < ts,
                        "{series}: {ts} after {prev} in partition {partition}"
                    );
                }
                last.insert(series, ts);
            }
        }
    }
}

#[test]
fn every_point_once_in_order_after_the_topic_appears() {
    let tansu = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        r#"
[[sinks.kafka]]
name = "lp"
brokers = ["{b}"]
topic = "points"
batch_max_points = 500
backoff_max = "500ms"

[[sinks.kafka]]
name = "json"
brokers = ["{b}"]
topic = "points-json"
format = "json"
points_per_message = 20
compression = "lz4"
batch_max_points = 500
backoff_max = "500ms"
"#,
        b = tansu.broker()
    );
    let sim = sim(dir.path(), 4, 500, 2000, "0.02");
    let agent = Agent::start(dir.path(), &sim_config(dir.path(), Some("lab"), &sinks));
    // No topic yet: a clear error naming it, the points kept.
    wait_until(
        "the sink to say the topic is missing",
        Duration::from_secs(30),
        || {
            let s = agent.status();
            let err = sink(&s, "lp").last_error.clone().unwrap_or_default();
            (err.contains("topic `points` does not exist") && sink(&s, "lp").backlog_points > 0)
                .then_some(())
        },
    );
    assert!(
        agent.log().contains("topic `points` does not exist"),
        "{}",
        agent.log()
    );
    tansu.create_topic("points", 3);
    tansu.create_topic("points-json", 2);

    sim.wait_done(Duration::from_secs(60));
    let want = expected_points(&sim.ledger(), "sim", &[("site", "lab")]);
    for topic in ["points", "points-json"] {
        let mut c = tansu.consumer(topic);
        let read = read_until_covered(&mut c, &want, Duration::from_secs(60));
        assert_eq!(read, want.len(), "{topic}: every point exactly once");
        let got: BTreeSet<Pt> = all_points(&c).into_iter().collect();
        assert!(got == want, "{topic}: the topic holds exactly the ledger");
        assert_in_order_per_series(&c);
        if topic == "points" {
            // One point per message, keyed by its series.
            for m in &c.messages {
                let (series, ts, _) = parse_line(std::str::from_utf8(&m.value).unwrap().trim_end());
                assert_eq!(m.key, series.as_bytes());
                assert_eq!(m.ts_ms, ts / 1_000_000);
            }
            let partitions = c.by_partition().len();
            assert!(
                partitions > 1,
                "series spread over partitions: {partitions}"
            );
        } else {
            assert!(
                c.messages.len() < want.len() / 5,
                "{} messages hold groups",
                c.messages.len()
            );
        }
    }
    let s = agent.terminate();
    for name in ["lp", "json"] {
        assert_eq!(sink(&s, name).dead_letters, 0, "{name}");
        assert!(sink(&s, name).points_sent >= want.len() as u64, "{name}");
    }
}

#[test]
fn a_broker_that_stops_answering_at_10k_points_per_second_loses_nothing() {
    let mut tansu = Tansu::start();
    tansu.create_topic("points", 4);
    let pid = nix::unistd::Pid::from_raw(tansu.process().unwrap().pid() as i32);
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        r#"
[[sinks.kafka]]
name = "k"
brokers = ["{b}"]
topic = "points"
timeout = "1s"
backoff_max = "500ms"
"#,
        b = tansu.broker()
    );
    // 5000 lines/s of two fields: 10k points/s, for 8 s.
    let sim = sim(dir.path(), 10, 5000, 40_000, "0");
    let agent = Agent::start(dir.path(), &sim_config(dir.path(), Some("lab"), &sinks));
    let mut c = tansu.consumer("points");
    wait_until("points to flow", Duration::from_secs(30), || {
        (c.poll() > 0).then_some(())
    });
    // The broker hangs (SIGSTOP): requests time out, connections stall.
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    wait_until(
        "the sink to notice the broker is gone",
        Duration::from_secs(30),
        || {
            let s = agent.status();
            (!sink(&s, "k").up && sink(&s, "k").failures > 0).then_some(())
        },
    );
    // One request at a time (ordered): after its failure nothing is pending.
    let sent_before = sink(&agent.status(), "k").points_sent;
    // Down while at least 20k points (2 s at 10k/s) pile up in the store.
    wait_until("a backlog to build up", Duration::from_secs(30), || {
        (sink(&agent.status(), "k").backlog_points >= 20_000).then_some(())
    });
    assert_eq!(
        sink(&agent.status(), "k").points_sent,
        sent_before,
        "nothing is acknowledged while the broker hangs"
    );
    nix::sys::signal::kill(pid, Signal::SIGCONT).unwrap();

    sim.wait_done(Duration::from_secs(60));
    let want = expected_points(&sim.ledger(), "sim", &[("site", "lab")]);
    assert_eq!(want.len(), 80_000);
    let read = read_until_covered(&mut c, &want, Duration::from_secs(90));
    let got: BTreeSet<Pt> = all_points(&c).into_iter().collect();
    assert!(got == want, "nothing lost, nothing foreign");
    eprintln!(
        "read {read} points for {} (duplicates {})",
        want.len(),
        read - want.len()
    );
    assert_in_order_per_series(&c);
    let s = agent.terminate();
    assert!(sink(&s, "k").failures > 0);
    assert_eq!(sink(&s, "k").dead_letters, 0);
}

#[test]
fn sigkill_mid_stream_resends_only_the_unacknowledged_tail() {
    let tansu = Tansu::start();
    tansu.create_topic("points", 2);
    let dir = tempfile::tempdir().unwrap();
    let batch = 1000;
    let sinks = format!(
        r#"
[[sinks.kafka]]
name = "k"
brokers = ["{b}"]
topic = "points"
batch_max_points = {batch}
"#,
        b = tansu.broker()
    );
    let cfg = sim_config(dir.path(), Some("lab"), &sinks);
    // 2000 lines/s, two points each, for 6 s.
    let sim = sim(dir.path(), 4, 2000, 12_000, "0");
    let agent = Agent::start(dir.path(), &cfg);
    let mut c = tansu.consumer("points");
    wait_until("points to flow", Duration::from_secs(30), || {
        c.poll();
        (c.messages.len() >= 4000).then_some(())
    });
    agent.kill();
    let agent = Agent::start(dir.path(), &cfg);
    sim.wait_done(Duration::from_secs(60));
    let ledger = expected_points(&sim.ledger(), "sim", &[("site", "lab")]);
    // Lines still in the PTY or awaiting their flush must be in the store
    // before it is read, or they reach Kafka as "foreign" points.
    agent.wait_settled(Duration::from_secs(60));
    // What the store holds: lines read but not yet committed when the agent
    // was killed are the source's loss (tests/tests/crash.rs), not the sink's.
    let want: BTreeSet<Pt> = stored_raw(dir.path()).into_iter().collect();
    assert!(
        want.is_subset(&ledger),
        "the store holds only ledger points"
    );
    eprintln!("ledger {} points, stored {}", ledger.len(), want.len());
    let read = read_until_covered(&mut c, &want, Duration::from_secs(60));
    let got: BTreeSet<Pt> = all_points(&c).into_iter().collect();
    assert!(
        got == want,
        "every stored point after the restart, nothing foreign: {} missing, {} foreign",
        want.difference(&got).count(),
        got.difference(&want).count()
    );
    let duplicates = read - want.len();
    eprintln!(
        "duplicates after SIGKILL: {duplicates} (of {} points)",
        want.len()
    );
    // What may come twice: the batch in flight, plus what was acknowledged
    // after the cursor's last flush (every 200 ms; 4000 points/s).
    assert!(
        duplicates <= batch + 4000 / 2,
        "{duplicates} duplicates: more than the unacknowledged tail"
    );
    assert_in_order_per_series(&c);
    let s = agent.terminate();
    assert_eq!(sink(&s, "k").dead_letters, 0);
}

#[test]
fn records_over_the_size_limit_are_split_not_dropped() {
    let tansu = Tansu::start();
    tansu.create_topic("points", 1);
    let dir = tempfile::tempdir().unwrap();
    let limit = 4096;
    // 500 points of a device per record would be ~25 KB: over the limit,
    // so every record is split until it fits.
    let sinks = format!(
        r#"
[[sinks.kafka]]
name = "k"
brokers = ["{b}"]
topic = "points"
key = "device"
points_per_message = 500
max_message_bytes = "{limit}B"
batch_max_points = 2000
"#,
        b = tansu.broker()
    );
    let sim = sim(dir.path(), 3, 1000, 3000, "0");
    let agent = Agent::start(dir.path(), &sim_config(dir.path(), Some("lab"), &sinks));
    sim.wait_done(Duration::from_secs(60));
    let want = expected_points(&sim.ledger(), "sim", &[("site", "lab")]);
    let mut c = tansu.consumer("points");
    let read = read_until_covered(&mut c, &want, Duration::from_secs(60));
    assert_eq!(read, want.len(), "every point once");
    let got: BTreeSet<Pt> = all_points(&c).into_iter().collect();
    assert!(got == want);
    let biggest = c.messages.iter().map(|m| m.value.len()).max().unwrap();
    assert!(biggest <= limit, "a message of {biggest} bytes");
    let per_message = want.len() as f64 / c.messages.len() as f64;
    assert!(
        per_message > 10.0 && per_message < 500.0,
        "split into records of several points each: {per_message:.1} points per message"
    );
    // Key = device, so all in order in the one partition.
    assert_in_order_per_series(&c);
    let s = agent.terminate();
    assert_eq!(sink(&s, "k").dead_letters, 0);
}
