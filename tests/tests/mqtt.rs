//! MQTT source end to end: `firmware-sim mqtt` → a real mosquitto →
//! `tidegate run` → the store, checked against the simulator's ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use firmware_sim::LedgerEntry;
use prost::Message;
use tidegate::point::SeriesKey;
use tidegate_e2e::agent::{
    dead_letters, mqtt_series, mqtt_values, stored_raw as stored, Agent, MqttSim,
};
use tidegate_e2e::{wait_until, Mosquitto};

/// Starts the agent with one MQTT source on `url` (settings `extra`) and one
/// subscription; returns once mosquitto has its subscription to `filter`, so
/// that nothing published afterwards can miss the session. Also returns the
/// configuration, for a restart.
fn start_agent(
    broker: &Mosquitto,
    dir: &Path,
    url: &str,
    extra: &str,
    subscription: &str,
    filter: &str,
) -> (Agent, String) {
    let cfg = format!(
        r#"
[agent]
state_dir = "{state}"
device = "gw"
[store]
seal_interval = "2s"
[[sources.mqtt]]
name = "broker"
url = "{url}"
backoff_max = "1s"
{extra}
[[sources.mqtt.subscriptions]]
{subscription}
"#,
        state = dir.join("state").display(),
    );
    let agent = Agent::start(dir, &cfg);
    broker.wait_subscribed("tidegate-gw-broker", filter);
    (agent, cfg)
}

/// The exact points of the ledger's valid readings (they carry their time).
fn readings(ledger: &[LedgerEntry]) -> BTreeSet<(String, i64, u64)> {
    ledger
        .iter()
        .filter(|e| e.valid)
        .flat_map(|e| {
            e.fields.iter().flatten().map(|(f, v)| {
                (
                    mqtt_series(e, "env", f),
                    e.ts.unwrap() * 1_000_000,
                    v.to_bits(),
                )
            })
        })
        .collect()
}

#[test]
fn twenty_devices_with_topic_bound_tags_arrive_once_and_garbage_is_counted() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (agent, _) = start_agent(
        &broker,
        dir.path(),
        &broker.url(),
        // The harness's mosquitto has max_inflight_messages 1000.
        "broker_inflight = 1000",
        "topic = \"sensors/+site/+device/#field\"\nmeasurement = \"env\"",
        "sensors/+/+/#",
    );
    let sim = MqttSim::start(
        dir.path(),
        &broker.url(),
        &[
            "--devices",
            "20",
            "--sites",
            "3",
            "--rate",
            "2000",
            "--count",
            "6000",
            "--format",
            "number",
            "--garbage-rate",
            "0.03",
        ],
    );
    sim.wait_done(Duration::from_secs(90));
    let ledger = sim.ledger();
    let garbage = ledger.iter().filter(|e| !e.valid).count() as u64;
    assert!(garbage > 0);
    // Bare numbers carry no timestamp (the agent stamps arrival): compare
    // series and values, as a multiset.
    let (want, valid_messages) = mqtt_values(&ledger);
    let messages = garbage + valid_messages;
    let points: u64 = want.values().sum();
    let status = wait_until(
        "the agent to read and commit every message",
        Duration::from_secs(60),
        || {
            let s = agent.status();
            (s.sources[0].lines >= messages && s.store.points_flushed >= points).then_some(s)
        },
    );
    assert_eq!(status.sources[0].lines, messages, "every message read once");
    assert_eq!(status.sources[0].points, points);
    assert_eq!(
        status.sources[0].rejected(),
        garbage,
        "rejects == the ledger's garbage: {:?}",
        status.sources[0].rejects
    );
    assert!(
        status.sources[0].rejects.len() >= 2,
        "{:?}",
        status.sources[0].rejects
    );
    assert!(status.sources[0].connected);
    // Messages are committed with the 1 s flush, or once three quarters of
    // the broker's window wait: a few commits a second over the ~3 s feed,
    // not one every 10 ms (~300) as when each message hurried its commit.
    assert!(
        status.store.flushes < messages / 100,
        "{} commits for {messages} messages",
        status.store.flushes
    );
    agent.terminate();
    assert_eq!(
        dead_letters(dir.path()),
        BTreeMap::from([("broker".to_string(), garbage)]),
        "one dead letter a garbage message"
    );
    let mut got: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let points = stored(dir.path());
    // Arrival stamps are whole milliseconds (point::arrival_ns).
    let odd: Vec<i64> = (points.iter().map(|p| p.1))
        .filter(|ts| ts % 1_000_000 != 0)
        .take(3)
        .collect();
    assert!(odd.is_empty(), "arrival stamps below the ms: {odd:?}");
    for (series, _, v) in points {
        *got.entry((series, v)).or_default() += 1;
    }
    let devices: BTreeSet<_> = got.keys().map(|(s, _)| s.clone()).collect();
    assert_eq!(devices.len(), 40, "20 devices x 2 fields: {devices:?}");
    assert!(got == want, "the store holds exactly the ledger's readings");
}

#[test]
fn sigkill_with_a_backlog_at_the_broker_loses_nothing() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (agent, cfg) = start_agent(
        &broker,
        dir.path(),
        &broker.url(),
        "",
        "topic = \"sensors/+site/+device\"\nformat = \"json\"\nmeasurement = \"env\"\ntimestamp = \"/ts\"",
        "sensors/+/+",
    );
    let sim = MqttSim::start(
        dir.path(),
        &broker.url(),
        &[
            "--devices",
            "20",
            "--rate",
            "2000",
            "--count",
            "12000",
            "--format",
            "json",
            "--garbage-rate",
            "0",
        ],
    );
    wait_until(
        "the agent to be mid-stream",
        Duration::from_secs(30),
        || (agent.status().sources[0].lines > 2000).then_some(()),
    );
    agent.kill();
    // The broker queues the rest for the persistent session meanwhile.
    sim.wait_done(Duration::from_secs(60));
    let ledger = sim.ledger();
    let want = readings(&ledger);
    assert_eq!(want.len(), 24000);
    let agent = Agent::start(dir.path(), &cfg);
    let got = wait_until(
        "every ledger reading in the store after the restart",
        Duration::from_secs(60),
        || {
            let got = stored(dir.path());
            let set: BTreeSet<_> = got.iter().cloned().collect();
            set.is_superset(&want).then_some(got)
        },
    );
    let status = agent.terminate();
    let set: BTreeSet<_> = got.iter().cloned().collect();
    assert!(set.is_subset(&want), "nothing the devices did not send");
    let redelivered = got.len() - set.len();
    // At-least-once: only messages received but not yet acknowledged at the
    // kill come twice (at most the broker's in-flight window, 2 points each).
    assert!(redelivered <= 2 * 1000, "{redelivered} points stored twice");
    assert!(
        status.sources[0].lines > 0,
        "the backlog came after the restart"
    );
    // The broker's window (1000) is wider than the agent's (`broker_inflight`
    // 20, read as one batch of 256): the agent stops reading at its own,
    // give or take the 10 packets rumqttc reads at a time.
    let most = status.sources[0].unacked_max;
    assert!(most <= 256 + 10, "{most} messages unacknowledged at once");
    // ...and it did fill past the 15 at which it asks for a commit (the
    // figure is counted at all).
    assert!(most > 20, "only {most} messages unacknowledged at once");
    eprintln!(
        "backlog after restart: {} messages, {redelivered} points redelivered, at most {most} unacknowledged",
        status.sources[0].lines
    );
}

#[test]
fn tls_connection_with_a_private_ca() {
    let broker = Mosquitto::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let (agent, _) = start_agent(
        &broker,
        dir.path(),
        &broker.tls_url(),
        &format!("ca_file = \"{}\"", broker.ca_file().display()),
        "topic = \"sensors/+site/+device\"\nformat = \"lp\"\nprecision = \"ms\"",
        "sensors/+/+",
    );
    assert!(agent.status().sources[0].connected);
    let sim = MqttSim::start(
        dir.path(),
        &broker.url(),
        &[
            "--devices",
            "4",
            "--rate",
            "500",
            "--count",
            "400",
            "--format",
            "lp",
            "--garbage-rate",
            "0.05",
        ],
    );
    sim.wait_done(Duration::from_secs(30));
    let ledger = sim.ledger();
    let garbage = ledger.iter().filter(|e| !e.valid).count() as u64;
    let want = readings(&ledger);
    wait_until("every message over TLS", Duration::from_secs(30), || {
        (agent.status().sources[0].lines >= ledger.len() as u64).then_some(())
    });
    let status = agent.terminate();
    assert_eq!(status.sources[0].rejected(), garbage);
    let got = stored(dir.path());
    assert_eq!(got.len(), want.len());
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
}

#[test]
fn broker_restart_reconnects_and_resubscribes() {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (agent, _) = start_agent(
        &broker,
        dir.path(),
        &broker.url(),
        "",
        "topic = \"sensors/+site/+device\"\nformat = \"json\"\nmeasurement = \"env\"\ntimestamp = \"/ts\"",
        "sensors/+/+",
    );
    broker.stop();
    wait_until(
        "the agent to notice the outage",
        Duration::from_secs(30),
        || (!agent.status().sources[0].connected).then_some(()),
    );
    // A fresh broker (no persistence): the agent subscribes again by itself.
    std::fs::write(broker.log_file(), "").unwrap();
    broker.start_again();
    broker.wait_subscribed("tidegate-gw-broker", "sensors/+/+");
    assert!(agent.status().sources[0].connected);
    let sim = MqttSim::start(
        dir.path(),
        &broker.url(),
        &[
            "--devices",
            "5",
            "--rate",
            "500",
            "--count",
            "300",
            "--format",
            "json",
            "--garbage-rate",
            "0",
        ],
    );
    sim.wait_done(Duration::from_secs(30));
    let want = readings(&sim.ledger());
    wait_until(
        "the readings after the restart",
        Duration::from_secs(30),
        || (agent.status().sources[0].lines >= 300).then_some(()),
    );
    let log = agent.log();
    agent.terminate();
    let got: BTreeSet<_> = stored(dir.path()).into_iter().collect();
    assert_eq!(got, want);
    assert_eq!(
        log.matches("connection failed or lost").count(),
        1,
        "the outage is logged once:\n{log}"
    );
}

#[test]
fn sparkplug_births_and_aliased_data_arrive_with_their_metric_times() {
    use tidegate::source::sparkplug::{Metric, Payload, Value};
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (agent, _) = start_agent(
        &broker,
        dir.path(),
        &broker.url(),
        "",
        "topic = \"spBv1.0/#\"\nformat = \"sparkplug\"\nmeasurement = \"sp\"",
        "spBv1.0/#",
    );
    let metric = |name: Option<&str>, alias: u64, datatype: Option<u32>, ts: u64, value| Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        timestamp: Some(ts),
        datatype,
        is_null: None,
        value: Some(value),
    };
    let payload = |ts: u64, metrics| {
        Payload {
            timestamp: Some(ts),
            metrics,
            seq: None,
        }
        .encode_to_vec()
    };
    let t0: u64 = 1_764_000_000_000;
    let mut want: BTreeSet<(String, i64, u64)> = BTreeSet::new();
    let mut point = |device: Option<&str>, field: &str, ts: u64, v: f64| {
        let mut tags = vec![("group", "plant"), ("edge_node", "gw1")];
        tags.extend(device.map(|d| ("device", d)));
        let key = SeriesKey::new("sp", tags, field);
        want.insert((key.as_str().to_string(), ts as i64 * 1_000_000, v.to_bits()));
    };
    let mut messages = vec![(
        "spBv1.0/plant/NBIRTH/gw1".to_string(),
        payload(
            t0,
            vec![
                metric(Some("bdSeq"), 0, Some(4), t0, Value::Long(0)),
                metric(
                    Some("Node Control/Rebirth"),
                    1,
                    Some(11),
                    t0,
                    Value::Boolean(false),
                ),
                metric(Some("uptime"), 2, Some(7), t0, Value::Int(3_600)),
            ],
        ),
    )];
    point(None, "uptime", t0, 3_600.0);
    messages.push((
        "spBv1.0/plant/DBIRTH/gw1/pump".into(),
        payload(
            t0,
            vec![
                metric(Some("temp"), 1, Some(2), t0, Value::Int(215)),
                metric(Some("rpm"), 2, Some(9), t0, Value::Float(1450.5)),
                metric(Some("model"), 3, Some(12), t0, Value::String("P-7".into())),
            ],
        ),
    ));
    point(Some("pump"), "temp", t0, 215.0);
    point(Some("pump"), "rpm", t0, 1450.5);
    // Data by alias only, the Int16 going negative.
    for i in 1..=200u64 {
        let ts = t0 + i * 100;
        let temp = 100 - i as i32;
        let rpm = 1000.0 + i as f32 / 4.0;
        messages.push((
            "spBv1.0/plant/DDATA/gw1/pump".into(),
            payload(
                ts,
                vec![
                    metric(None, 1, None, ts, Value::Int(temp as u32)),
                    metric(None, 2, None, ts, Value::Float(rpm)),
                ],
            ),
        ));
        point(Some("pump"), "temp", ts, temp as f64);
        point(Some("pump"), "rpm", ts, rpm as f64);
    }
    // A device without a birth, a payload that is not protobuf, a death.
    messages.push((
        "spBv1.0/plant/DDATA/gw1/fan".into(),
        payload(t0, vec![metric(None, 1, None, t0, Value::Int(1))]),
    ));
    messages.push(("spBv1.0/plant/NDATA/gw1".into(), b"\x12\xff\xff".to_vec()));
    messages.push(("spBv1.0/plant/NDEATH/gw1".into(), payload(t0, vec![])));
    tidegate_e2e::subscriber::publish(broker.port(), messages);

    let status = wait_until(
        "every Sparkplug metric stored",
        Duration::from_secs(30),
        || {
            let s = agent.status();
            (s.sources[0].lines >= 205 && s.store.points_flushed >= want.len() as u64).then_some(s)
        },
    );
    assert_eq!(status.sources[0].lines, 205, "every message read once");
    assert_eq!(
        status.sources[0].rejects,
        BTreeMap::from([("bad_sparkplug".into(), 1), ("unknown_alias".into(), 1)])
    );
    agent.terminate();
    let got: BTreeSet<_> = stored(dir.path()).into_iter().collect();
    assert_eq!(got, want, "each metric at its own time, aliases resolved");
}
