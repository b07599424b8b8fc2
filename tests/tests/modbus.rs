//! Modbus RTU end to end: `firmware-sim modbus` plays two units on a PTY
//! (with wrong CRCs and silences, and an unplug mid-stream), the agent polls
//! them and a third unit that is not there; the store must hold exactly the
//! values the slave answered with, scaled, with their tags, and the
//! per-device counters must match the slave's ledger.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use firmware_sim::LedgerEntry;
use tidegate::point::SeriesKey;
use tidegate_e2e::agent::{dead_letters, sim_config, stored_raw, Agent, Sim};
use tidegate_e2e::wait_until;

/// A register of the map: (field, table, address, type, word order, scale,
/// offset, unit tag).
type Entry = (
    &'static str,
    &'static str,
    u16,
    &'static str,
    &'static str,
    f64,
    f64,
    Option<&'static str>,
);

/// The register map of the simulated units (firmware-sim/src/modbus.rs).
const MAP: [Entry; 5] = [
    ("temp", "holding", 0, "i16", "big", 0.1, 0.0, Some("degC")),
    (
        "energy",
        "holding",
        1,
        "u32",
        "big",
        0.001,
        5.0,
        Some("kWh"),
    ),
    ("delta", "holding", 3, "i32", "little", 1.0, 0.0, None),
    ("power", "input", 0, "f32", "big", 1.0, 0.0, Some("W")),
    ("status", "input", 2, "u16", "big", 1.0, 0.0, None),
];

fn registers(extra: &str) -> String {
    let mut r = String::from("registers = [\n");
    for (field, kind, address, ty, order, scale, offset, unit) in MAP {
        let unit = unit
            .map(|u| format!(", unit = \"{u}\""))
            .unwrap_or_default();
        r += &format!(
            "  {{ field = \"{field}\", kind = \"{kind}\", address = {address}, type = \"{ty}\", word_order = \"{order}\", scale = {scale:?}, offset = {offset:?}{unit} }},\n"
        );
    }
    r + extra + "]\n"
}

fn config(dir: &Path) -> String {
    sim_config(dir, None, "")
        + &format!(
            r#"
[[sources.modbus]]
name = "bus"
port = "{tty}"
baud = 19200
site = "plant"
timeout = "600ms"

[[sources.modbus.devices]]
name = "d1"
unit = 1
poll_interval = "20ms"
{d1}
[[sources.modbus.devices]]
name = "d2"
unit = 2
poll_interval = "20ms"
{d2}
[[sources.modbus.devices]]
name = "d3"
unit = 3
poll_interval = "200ms"
timeout = "100ms"
registers = [{{ field = "x", address = 0 }}]
"#,
            tty = dir.join("tty").display(),
            d1 = registers(""),
            // An address the unit does not have: exception 2 every poll.
            d2 = registers("  { field = \"missing\", address = 100 },\n"),
        )
}

/// The stored value of a raw register value, computed as the agent does.
fn scaled(field: &str, raw: f64) -> f64 {
    let (.., scale, offset, _) = MAP.iter().find(|m| m.0 == field).unwrap();
    raw * scale + offset
}

fn series(device: &str, field: &str) -> String {
    let unit = MAP.iter().find(|m| m.0 == field).unwrap().7;
    let mut tags = vec![("site", "plant"), ("port", "tty"), ("device", device)];
    if let Some(u) = unit {
        tags.push(("unit", u));
    }
    SeriesKey::new("modbus", tags, field).as_str().to_string()
}

/// Ledger entries of unit `u` whose fate line is `fate`.
fn fates(ledger: &[LedgerEntry], unit: &str, fate: &str) -> u64 {
    ledger
        .iter()
        .filter(|e| e.sensor.as_deref() == Some(unit) && e.line.as_deref() == Some(fate))
        .count() as u64
}

#[test]
fn modbus_values_scaled_and_tagged_faults_counted_per_device_port_replugged() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start_as(
        dir.path(),
        &["modbus"],
        &[
            "--units",
            "1,2",
            "--count",
            "600",
            "--crc-error-rate",
            "0.05",
            "--silence-rate",
            "0.02",
            "--seed",
            "5",
            "--unplug-after",
            "250",
            "--replug-after",
            "1s",
        ],
    );
    let agent = Agent::start(dir.path(), &config(dir.path()));
    sim.wait_done(Duration::from_secs(120));
    let ledger = sim.ledger();
    assert_eq!(ledger.len(), 600, "one ledger entry a request");

    // What the slave answered, as the store should hold it: per series, the
    // sorted value bits.
    let mut want: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in ledger.iter().filter(|e| e.valid) {
        let device = match e.sensor.as_deref() {
            Some("u1") => "d1",
            Some("u2") => "d2",
            other => panic!("unexpected unit {other:?}"),
        };
        for (field, raw) in e.fields.iter().flatten() {
            want.entry(series(device, field))
                .or_default()
                .push(scaled(field, *raw).to_bits());
        }
    }
    let total: usize = want.values().map(Vec::len).sum();
    assert_eq!(want.len(), 10, "five fields of two devices answered");
    wait_until(
        "every answered value flushed",
        Duration::from_secs(60),
        || (agent.status().store.points_flushed >= total as u64).then_some(()),
    );
    let log = agent.log();
    assert!(log.contains("port lost"), "the unplug was seen:\n{log}");
    assert_eq!(
        log.matches("port back").count(),
        1,
        "replug logged once:\n{log}"
    );
    let status = agent.terminate();

    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (s, _, bits) in stored_raw(dir.path()) {
        got.entry(s).or_default().push(bits);
    }
    for v in got.values_mut().chain(want.values_mut()) {
        v.sort_unstable();
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "series and tags"
    );
    for (s, w) in &want {
        assert_eq!(&got[s], w, "{s}: stored values == answered values");
    }
    // Spot checks of decoding: a negative i16 scaled, a little-endian i32.
    let temp = &got[&series("d1", "temp")];
    assert!(
        temp.iter().any(|&b| f64::from_bits(b) < 0.0),
        "negative temps"
    );
    let delta = &got[&series("d2", "delta")];
    assert!(
        delta.iter().all(|&b| f64::from_bits(b) <= -2.0),
        "i32 low word first"
    );

    let device = |name: &str| {
        status
            .sources
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no counters for {name}: {:?}", status.sources))
    };
    for (name, unit) in [("bus/d1", "u1"), ("bus/d2", "u2")] {
        let d = device(name);
        let answered: usize = want
            .iter()
            .filter(|(s, _)| s.contains(&format!("device={}", &name[4..])))
            .map(|(_, v)| v.len())
            .sum();
        assert_eq!(d.points, answered as u64, "{name}: points");
        assert_eq!(
            d.rejects.get("crc").copied().unwrap_or(0),
            fates(&ledger, unit, "crc"),
            "{name}: {:?}",
            d.rejects
        );
        assert_eq!(
            d.rejects.get("timeout").copied().unwrap_or(0),
            fates(&ledger, unit, "silence"),
            "{name}: {:?}",
            d.rejects
        );
        assert!(
            fates(&ledger, unit, "crc") > 0,
            "{name}: the sim was asked for 5% bad CRCs"
        );
    }
    let exceptions = fates(&ledger, "u2", "exception 2");
    assert!(exceptions > 0);
    assert_eq!(device("bus/d2").rejects.get("exception"), Some(&exceptions));
    assert_eq!(device("bus/d1").rejects.get("exception"), None);
    let d3 = device("bus/d3");
    assert!(
        d3.rejects.get("timeout").copied().unwrap_or(0) > 0,
        "{:?}",
        d3.rejects
    );
    assert_eq!(d3.points, 0);
    // What came back broken is dead-lettered; silence has nothing to keep.
    let dead = dead_letters(dir.path());
    assert_eq!(dead.get("bus/d1"), Some(&fates(&ledger, "u1", "crc")));
    assert_eq!(
        dead.get("bus/d2"),
        Some(&(fates(&ledger, "u2", "crc") + exceptions))
    );
    assert_eq!(dead.get("bus/d3"), None);
}
