//! A gateway's whole input side at once: one `firmware-sim fleet` plays
//! five serial devices (one per framing: kv, json, line protocol, csv,
//! binary frames) on PTYs, a Modbus RTU slave on another, and 20 MQTT
//! devices through a real mosquitto, all with garbage (serial devices also
//! with duplicates, readings out of order, clock jumps, a wrong baud rate
//! and bursts), into one agent; and a binary device unplugged and plugged
//! in again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use tidegate::point::SeriesKey;
use tidegate_e2e::agent::{
    dead_letters, expected_points, mqtt_values, sim_config, stored_raw, Agent, FleetSim, Sim,
};
use tidegate_e2e::{poll_until, wait_until, Mosquitto};

const FRAMINGS: [&str; 5] = ["kv", "json", "lp", "csv", "binary"];

/// One serial source per framing in `framings`, named after it, reading
/// `port(framing)`, tagged `device=<framing>`.
fn serial_sources(framings: &[&str], port: impl Fn(&str) -> PathBuf) -> String {
    let mut c = String::new();
    for &f in framings {
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
            tty = port(f).display(),
        );
    }
    c
}

/// Points as a multiset: a duplicated reading counts twice.
type Counted = BTreeMap<(String, i64, u64), u64>;

/// The store holds every valid ledger reading as often as it was sent
/// (duplicates twice) and nothing else.
fn assert_stored_counted(got: Vec<(String, i64, u64)>, want: &Counted) {
    let mut have = Counted::new();
    for p in got {
        *have.entry(p).or_default() += 1;
    }
    let missing: Vec<_> = want
        .iter()
        .filter(|(p, n)| have.get(p) != Some(n))
        .take(5)
        .collect();
    let extra: Vec<_> = have
        .keys()
        .filter(|p| !want.contains_key(p))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing or miscounted {missing:?}, extra {extra:?}"
    );
}

/// The store holds every valid reading exactly once and nothing else.
fn assert_stored_exactly(got: &[(String, i64, u64)], want: &BTreeSet<(String, i64, u64)>) {
    let set: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(set.len(), got.len(), "a point stored twice");
    let missing: Vec<_> = want.difference(&set).take(5).collect();
    let extra: Vec<_> = set.difference(want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
}

/// Series key of the Modbus slave's register `field`.
fn modbus_key(field: &str) -> String {
    SeriesKey::new("modbus", [("device", "d1"), ("port", "modbus")], field)
        .as_str()
        .to_string()
}

const LINES: u64 = 1200;

#[test]
fn serial_modbus_and_mqtt_devices_at_once_every_reading_stored_as_sent_garbage_dead_lettered() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let ports = dir.path().join("fleet");
    let mut config = sim_config(dir.path(), None, "");
    config = config.replacen("[agent]", "[agent]\ndevice = \"gw\"", 1);
    config += &serial_sources(&FRAMINGS, |f| ports.join(f));
    config += &format!(
        r#"
[[sources.mqtt]]
name = "broker"
url = "{url}"
[[sources.mqtt.subscriptions]]
topic = "sensors/+site/+device/#field"
measurement = "env"

[[sources.modbus]]
name = "bus"
port = "{modbus}"
baud = 19200
timeout = "300ms"
[[sources.modbus.devices]]
name = "d1"
unit = 1
poll_interval = "10ms"
registers = [{{ field = "temp", address = 0, type = "i16", scale = 0.1 }}, {{ field = "status", kind = "input", address = 2 }}]
"#,
        url = broker.url(),
        modbus = ports.join("modbus").display(),
    );
    let agent = Agent::start(dir.path(), &config);
    // MQTT has no ledger replay: subscribe before the devices publish.
    broker.wait_subscribed("tidegate-gw-broker", "sensors/+/+/#");
    let count = LINES.to_string();
    let fleet = FleetSim::start(
        &ports,
        &[
            "--serial",
            "kv,json,lp,csv,binary",
            "--sensors",
            "3",
            "--modbus",
            "1",
            "--mqtt",
            &broker.url(),
            "--mqtt-devices",
            "20",
            "--rate",
            "3000",
            "--count",
            &count,
            "--garbage-rate",
            "0.05",
            "--seed",
            "11",
            "--duplicate-rate",
            "0.01",
            "--reorder-rate",
            "0.01",
            "--clock-jump-rate",
            "0.01",
            "--baud-mismatch-rate",
            "0.01",
            "--burst-lines",
            "200",
            "--burst-every",
            "1s",
        ],
    );
    fleet.wait_done(Duration::from_secs(120));

    // Serial: exact points (the devices send their time), duplicates
    // twice; one reject and one dead letter per garbage line (a clock jump
    // or a wrong baud rate included).
    let mut want = Counted::new();
    let mut garbage = BTreeMap::new();
    for f in FRAMINGS {
        let ledger = fleet.ledger(f);
        assert_eq!(ledger.len() as u64, LINES);
        let tags = [("site", "lab"), ("device", f), ("port", f)];
        for e in ledger.iter().filter(|e| e.valid) {
            for p in expected_points(std::slice::from_ref(e), "sim", &tags) {
                *want.entry(p).or_default() += 1;
            }
        }
        let g = ledger.iter().filter(|e| !e.valid).count() as u64;
        assert!(g > 0, "{f}: the sim was asked for 5% garbage");
        garbage.insert(f.to_string(), g);
    }
    // MQTT: bare numbers carry no time (stamped on arrival): series and
    // values, as a multiset.
    let mqtt = fleet.ledger("mqtt");
    let mqtt_garbage = mqtt.iter().filter(|e| !e.valid).count() as u64;
    assert!(mqtt_garbage > 0);
    garbage.insert("broker".into(), mqtt_garbage);
    let (mqtt_want, valid_messages) = mqtt_values(&mqtt);
    let messages = mqtt_garbage + valid_messages;
    // Modbus: every answer with a good CRC stored (scaled), every bad CRC
    // counted against the device.
    let modbus = fleet.ledger("modbus");
    assert_eq!(modbus.len() as u64, LINES, "one entry a request");
    let mut modbus_want: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in modbus.iter().filter(|e| e.valid) {
        let fields = e.fields.as_ref().unwrap();
        for (field, scale) in [("temp", 0.1), ("status", 1.0)] {
            if let Some(raw) = fields.get(field) {
                modbus_want
                    .entry(modbus_key(field))
                    .or_default()
                    // As the agent computes it: raw * scale + offset.
                    .push((raw * scale + 0.0).to_bits());
            }
        }
    }
    let crc = modbus
        .iter()
        .filter(|e| e.line.as_deref() == Some("crc"))
        .count() as u64;
    assert!(crc > 0, "the slave was asked for 5% bad CRCs");
    let modbus_points: usize = modbus_want.values().map(Vec::len).sum();

    let mqtt_points: u64 = mqtt_want.values().sum();
    let serial_points: u64 = want.values().sum();
    assert!(
        serial_points > want.len() as u64,
        "the devices were asked for duplicates"
    );
    let total = serial_points + mqtt_points + modbus_points as u64;
    // On a timeout, say how far the agent got, per source: a slow machine
    // (counts still rising) reads differently from points lost (counts
    // short of the ledger's, e.g. a Modbus answer later than its timeout).
    let mut last = None;
    let status = poll_until(Duration::from_secs(60), Duration::from_millis(25), || {
        let s = agent.status();
        if s.store.points_flushed >= total {
            return Some(s);
        }
        last = Some(s);
        None
    })
    .unwrap_or_else(|| {
        let s = last.expect("polled at least once");
        let sources: Vec<_> = s
            .sources
            .iter()
            .map(|src| (&src.name, src.lines, src.points, &src.rejects))
            .collect();
        panic!(
            "timed out after 60 s: {} of {total} points flushed ({serial_points} serial, \
             {mqtt_points} MQTT, {modbus_points} Modbus expected; {messages} MQTT messages, \
             {crc} bad CRCs); per source (name, lines, points, rejects): {sources:?}",
            s.store.points_flushed
        )
    });
    for src in &status.sources {
        match src.name.as_str() {
            "broker" => assert_eq!(src.lines, messages, "every MQTT message read once"),
            // The bus's own counters (port open or not); its device's below.
            "bus" => continue,
            "bus/d1" => {
                assert_eq!(
                    src.rejects.get("crc").copied().unwrap_or(0),
                    crc,
                    "bad CRCs counted: {:?}",
                    src.rejects
                );
                continue;
            }
            f => assert_eq!(src.lines, LINES, "{f}: every line read once"),
        }
        assert_eq!(
            src.rejected(),
            garbage[&src.name],
            "{}: rejects == the ledger's garbage: {:?}",
            src.name,
            src.rejects
        );
    }
    assert_eq!(status.store.points_flushed, total, "nothing else stored");
    let summary = agent.terminate();
    assert_eq!(summary.store.points_flushed, total);

    let stored = stored_raw(dir.path());
    let (serial, rest): (Vec<_>, Vec<_>) =
        stored.into_iter().partition(|p| p.0.starts_with("sim,"));
    assert_stored_counted(serial, &want);
    let mut mqtt_got: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let mut modbus_got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (series, _, v) in rest {
        if series.starts_with("modbus,") {
            modbus_got.entry(series).or_default().push(v);
        } else {
            *mqtt_got.entry((series, v)).or_default() += 1;
        }
    }
    assert!(
        mqtt_got == mqtt_want,
        "the store holds exactly the MQTT ledger's readings"
    );
    for v in modbus_got.values_mut().chain(modbus_want.values_mut()) {
        v.sort_unstable();
    }
    assert_eq!(modbus_got, modbus_want, "stored == answered, scaled");
    let mut letters = dead_letters(dir.path());
    assert_eq!(
        letters.remove("bus/d1").unwrap_or(0),
        crc,
        "one dead letter a bad CRC"
    );
    assert_eq!(
        letters, garbage,
        "one dead letter a garbage line or message"
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
    let config = sim_config(dir.path(), None, "") + &serial_sources(&["binary"], |_| d.join("tty"));
    let agent = Agent::start(dir.path(), &config);
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
    assert_stored_exactly(&stored_raw(dir.path()), &want);
    assert_eq!(
        dead_letters(dir.path()),
        BTreeMap::from([("binary".to_string(), garbage)])
    );
}
