//! Fleet configuration over a real mosquitto: signed envelopes to `all` and
//! to one device, every rejection reason, a dead sink that still applies, a
//! broken fleet connection and a dead source that roll back by themselves, a restart under an
//! accepted configuration, and ten changes under load that lose nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tidegate::fleet::agent::Report;
use tidegate::fleet::cli;
use tidegate::fleet::envelope::{Envelope, PrivateKey};
use tidegate_e2e::agent::{expected_points, stored_raw, Agent, Sim};
use tidegate_e2e::subscriber::Subscriber;
use tidegate_e2e::{bin, free_port, wait_until, Influxd, Mosquitto};

const FLEET: &str = "plant";

/// A dead HTTP endpoint (nothing listens on port 9 of loopback).
const DEAD: &str = "http://127.0.0.1:9";

fn agent_config(dir: &Path, broker: &str, device: &str, key: &PrivateKey, extra: &str) -> String {
    format!(
        r#"
[agent]
device = "{device}"
state_dir = "{state}"
shutdown_timeout = "3s"
[store]
flush_interval = "200ms"
seal_interval = "2s"
[fleet]
url = "{broker}"
fleet = "{FLEET}"
trusted_keys = ["{public}"]
confirm_after = "3s"
keep_alive = "5s"
{extra}
"#,
        state = dir.join("state").display(),
        public = key.public().to_text(),
    )
}

fn serial(dir: &Path, max_line: usize) -> String {
    format!(
        r#"
[[sources.serial]]
name = "sim"
port = "{tty}"
measurement = "sim"
tags = {{ site = "lab" }}
required_keys = ["sensor", "ts"]
max_line = {max_line}
port_tag = false
"#,
        tty = dir.join("tty").display()
    )
}

fn influx(name: &str, db: &str) -> String {
    format!("[[sinks.influx]]\nname = \"{name}\"\nurl = \"{DEAD}\"\ndb = \"{db}\"\n")
}

fn envelope(version: u64, target: &str, config: &str) -> Envelope {
    Envelope::new(FLEET, target, version, config)
}

/// A broker, a key the agents trust, a directory, and a subscriber to
/// `device`'s reports (`+`: every device's).
struct Setup {
    broker: Mosquitto,
    url: String,
    key: PrivateKey,
    dir: tempfile::TempDir,
    sub: Subscriber,
}

fn setup(device: &str) -> Setup {
    let broker = Mosquitto::start();
    let url = broker.url();
    let sub = Subscriber::start(
        broker.port(),
        &format!("tidegate/{FLEET}/{device}/config/status"),
    );
    Setup {
        broker,
        url,
        key: PrivateKey::generate().unwrap(),
        dir: tempfile::tempdir().unwrap(),
        sub,
    }
}

fn signed(key: &PrivateKey, mut e: Envelope) -> Envelope {
    e.sign(key);
    e
}

/// Publishes `e` retained on `target`'s config topic.
fn publish(broker: &str, target: &str, e: &Envelope) {
    publish_raw(broker, target, serde_json::to_vec(e).unwrap());
}

fn publish_raw(broker: &str, target: &str, payload: Vec<u8>) {
    tidegate::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topic = tidegate::fleet::topics::config(FLEET, target);
    rt.block_on(cli::publish(&cli::Broker::plain(broker), &topic, payload))
        .unwrap();
}

/// Every report so far.
fn reports(sub: &Subscriber) -> Vec<Report> {
    sub.messages()
        .iter()
        .filter_map(|m| serde_json::from_slice(m).ok())
        .collect()
}

/// Waits for `device`'s report of `version` in `state`; returns it.
fn wait_report(sub: &Subscriber, device: &str, version: u64, state: &str, secs: u64) -> Report {
    wait_until(
        &format!("{device} to report version {version} {state}"),
        Duration::from_secs(secs),
        || {
            reports(sub)
                .into_iter()
                .find(|r| r.device == device && r.version == version && r.state == state)
        },
    )
}

/// Runs `tidegate fleet ARGS`, which must succeed.
fn fleet_cli(args: &[&str]) -> std::process::Output {
    let out = Command::new(bin("tidegate"))
        .arg("fleet")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tidegate fleet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sink_names(a: &Agent) -> Vec<String> {
    a.status().sinks.into_iter().map(|s| s.name).collect()
}

#[test]
fn all_then_one_device() {
    let Setup {
        broker,
        url,
        key,
        sub,
        ..
    } = setup("+");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let devices = ["gw1", "gw2", "gw3"];
    let agents: Vec<Agent> = dirs
        .iter()
        .zip(devices)
        .map(|(d, dev)| Agent::start(d.path(), &agent_config(d.path(), &url, dev, &key, "")))
        .collect();

    // To all, through the CLI: sign a file, publish it.
    let work = tempfile::tempdir().unwrap();
    let keyfile = work.path().join("fleet.key");
    std::fs::write(&keyfile, "").unwrap();
    std::fs::remove_file(&keyfile).unwrap();
    let keyfile_arg = keyfile.to_str().unwrap();
    let out = fleet_cli(&["keygen", "--out", keyfile_arg]);
    let cli_key = PrivateKey::parse(&std::fs::read_to_string(&keyfile).unwrap()).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cli_key.public().to_text()
    );
    // The agents trust `key`; sign with it through the CLI too.
    std::fs::write(&keyfile, key.to_text()).unwrap();
    let conf = work.path().join("c.toml");
    std::fs::write(&conf, influx("a", "fleet")).unwrap();
    let out = fleet_cli(&[
        "sign",
        "--key",
        keyfile_arg,
        "--version",
        "1",
        "--fleet",
        FLEET,
        "--target",
        "all",
        conf.to_str().unwrap(),
    ]);
    let signed_file = work.path().join("signed.json");
    std::fs::write(&signed_file, &out.stdout).unwrap();
    fleet_cli(&[
        "publish",
        "--broker",
        &url,
        "--fleet",
        FLEET,
        "--all",
        signed_file.to_str().unwrap(),
    ]);

    for (a, dev) in agents.iter().zip(devices) {
        wait_report(&sub, dev, 1, "applied", 10);
        assert_eq!(sink_names(a), ["a"]);
        assert_eq!(a.status().config.version, 1);
        assert_eq!(a.status().config.source, "fleet");
    }

    // To one device: only gw2 changes.
    publish(
        &url,
        "gw2",
        &signed(&key, envelope(2, "gw2", &influx("b", "one"))),
    );
    wait_report(&sub, "gw2", 2, "applied", 10);
    assert_eq!(sink_names(&agents[1]), ["b"]);
    for i in [0, 2] {
        assert_eq!(sink_names(&agents[i]), ["a"]);
        assert_eq!(agents[i].status().config.version, 1);
    }

    // A newer fleet-wide configuration: applied everywhere, but on gw2 its
    // own [sinks] still lies over the fleet's.
    publish(
        &url,
        "all",
        &signed(&key, envelope(3, "all", &influx("c", "fleet"))),
    );
    for (a, dev) in agents.iter().zip(devices) {
        wait_report(&sub, dev, 3, "applied", 10);
        let want = if dev == "gw2" { "b" } else { "c" };
        assert_eq!(sink_names(a), [want], "{dev}");
    }
    assert_eq!(
        agents[1].status().config.layers,
        "local file + all v3 + device v2"
    );
    for dev in devices {
        wait_report(&sub, dev, 3, "confirmed", 10);
    }
    // Each device's reports arrive in order: had gw1 or gw3 taken gw2's
    // version 2, its report would be here, before their version 3.
    assert!(
        reports(&sub)
            .iter()
            .all(|r| r.version != 2 || r.device == "gw2"),
        "only gw2 saw version 2"
    );

    // `fleet status`: a table of the three, online, with their versions.
    let out = fleet_cli(&["status", "--broker", &url, "--fleet", FLEET, "--wait", "2s"]);
    let table = String::from_utf8_lossy(&out.stdout);
    for dev in devices {
        let line = table
            .lines()
            .find(|l| l.starts_with(dev))
            .unwrap_or_else(|| panic!("{dev} missing from\n{table}"));
        assert!(line.contains("yes"), "{line}");
    }

    // `fleet clear`: gw2's retained envelope is gone from the broker, the
    // fleet's stays; gw2 keeps running what it took.
    fleet_cli(&[
        "clear", "--broker", &url, "--fleet", FLEET, "--device", "gw2",
    ]);
    let retained = Subscriber::start(broker.port(), &format!("tidegate/{FLEET}/+/config"));
    // Published after the subscription: it arrives after every retained message.
    publish_raw(&url, "marker", b"end".to_vec());
    let msgs = wait_until("the marker", Duration::from_secs(10), || {
        let m = retained.messages();
        m.iter().any(|x| x == b"end").then_some(m)
    });
    let targets: Vec<String> = msgs
        .iter()
        .filter_map(|m| serde_json::from_slice::<Envelope>(m).ok())
        .map(|e| e.target)
        .collect();
    assert_eq!(targets, ["all"]);
    assert_eq!(sink_names(&agents[1]), ["b"]);
    drop(agents);
}

#[test]
fn every_rejection_is_reported_and_changes_nothing() {
    let Setup {
        broker: _broker,
        url,
        key,
        dir,
        sub,
    } = setup("gw1");
    let _sim = Sim::start(
        dir.path(),
        &["--sensors", "2", "--rate", "200", "--garbage-rate", "0"],
    );
    let agent = Agent::start(
        dir.path(),
        &agent_config(dir.path(), &url, "gw1", &key, &serial(dir.path(), 4096)),
    );
    let good = format!("{}{}", serial(dir.path(), 4096), influx("up", "good"));
    publish(&url, "gw1", &signed(&key, envelope(5, "gw1", &good)));
    wait_report(&sub, "gw1", 5, "applied", 10);

    let stranger = PrivateKey::generate().unwrap();
    let mut cases: Vec<(&str, Envelope, &str)> = Vec::new();
    cases.push(("unsigned", envelope(6, "gw1", &influx("x", "x")), "gw1"));
    cases.push((
        "unknown_key",
        signed(&stranger, envelope(7, "gw1", &influx("x", "x"))),
        "gw1",
    ));
    let mut tampered = signed(&key, envelope(8, "gw1", &influx("x", "x")));
    tampered.config = influx("evil", "x");
    cases.push(("bad_signature", tampered, "gw1"));
    let mut other = envelope(9, "gw1", &influx("x", "x"));
    other.fleet = "elsewhere".into();
    cases.push(("wrong_fleet", signed(&key, other), "gw1"));
    cases.push((
        "wrong_device",
        signed(&key, envelope(10, "gw7", &influx("x", "x"))),
        "gw1",
    ));
    cases.push((
        "replay",
        signed(&key, envelope(4, "gw1", &influx("x", "x"))),
        "gw1",
    ));
    let mut future = envelope(11, "gw1", &influx("x", "x"));
    future.issued_at += 3_600_000;
    cases.push(("future", signed(&key, future), "gw1"));
    cases.push((
        "invalid_config",
        signed(
            &key,
            envelope(12, "gw1", "[[sinks.influx]]\nname = \"x\"\n"),
        ),
        "gw1",
    ));
    let moved = format!(
        "[fleet]\nurl = \"mqtt://127.0.0.1:{}\"\nfleet = \"{FLEET}\"\ntrusted_keys = [\"{}\"]\n",
        free_port(),
        key.public().to_text()
    );
    cases.push((
        "fleet_cut_off",
        signed(&key, envelope(13, "gw1", &moved)),
        "gw1",
    ));
    cases.push((
        "not_live",
        signed(
            &key,
            envelope(14, "gw1", "[store]\nflush_interval = \"5s\"\n"),
        ),
        "gw1",
    ));
    let points = || agent.status().sources[0].points;
    for (code, e, target) in cases {
        let version = e.version;
        publish(&url, target, &e);
        let r = wait_report(&sub, "gw1", version, "rejected", 10);
        assert_eq!(r.code.as_deref(), Some(code), "{r:?}");
        assert!(r.reason.is_some_and(|w| !w.is_empty()));
        // The running configuration is unchanged: same sink, source still reading.
        let st = agent.status();
        assert_eq!(st.config.version, 5, "after {code}");
        let names: Vec<_> = st.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["up"], "after {code}");
        let before = points();
        wait_until("the source to keep reading", Duration::from_secs(5), || {
            (points() > before).then_some(())
        });
    }
    // Not junk either.
    publish_raw(&url, "gw1", b"not json".to_vec());
    let r = wait_report(&sub, "gw1", 0, "rejected", 10);
    assert_eq!(r.code.as_deref(), Some("malformed"));
    assert_eq!(agent.status().config.version, 5);
}

#[test]
fn dead_sink_applies_broken_fleet_rolls_back_restart_keeps_config() {
    let Setup {
        broker: _broker,
        url,
        key,
        dir,
        sub,
    } = setup("gw1");
    let cfg = agent_config(dir.path(), &url, "gw1", &key, "");
    let agent = Agent::start(dir.path(), &cfg);

    // A sink at a dead endpoint: applied and confirmed (the data buffers).
    publish(
        &url,
        "gw1",
        &signed(&key, envelope(1, "gw1", &influx("dead", "d"))),
    );
    wait_report(&sub, "gw1", 1, "applied", 10);
    wait_report(&sub, "gw1", 1, "confirmed", 10);
    assert_eq!(sink_names(&agent), ["dead"]);

    // A fleet broker nobody runs, explicitly allowed: applied, then rolled
    // back within confirm_after (3 s), reported once it reconnects.
    let moved = format!(
        "{}[fleet]\nurl = \"mqtt://127.0.0.1:{}\"\nfleet = \"{FLEET}\"\ntrusted_keys = [\"{}\"]\nconfirm_after = \"3s\"\n",
        influx("other", "o"),
        free_port(),
        key.public().to_text()
    );
    let mut e = envelope(2, "gw1", &moved);
    e.allow_fleet_change = true;
    publish(&url, "gw1", &signed(&key, e));
    wait_report(&sub, "gw1", 2, "applied", 10);
    let r = wait_report(&sub, "gw1", 2, "rolled_back", 15);
    assert!(
        r.reason.as_deref().unwrap_or("").contains("fleet broker"),
        "{r:?}"
    );
    let st = agent.status();
    assert_eq!((st.config.version, st.config.state.as_str()), (1, "good"));
    assert_eq!(sink_names(&agent), ["dead"]);

    // Accepted, then SIGKILL: it comes back under version 3, not 1.
    publish(
        &url,
        "gw1",
        &signed(&key, envelope(3, "gw1", &influx("three", "t"))),
    );
    wait_report(&sub, "gw1", 3, "accepted", 10);
    wait_until("version 3 to run", Duration::from_secs(10), || {
        (agent.status().config.version == 3).then_some(())
    });
    agent.kill();
    let agent = Agent::start(dir.path(), &cfg);
    assert_eq!(agent.status().config.version, 3);
    assert_eq!(sink_names(&agent), ["three"]);
    // The retained version 3, delivered again, is not news; the gate runs again.
    wait_report(&sub, "gw1", 3, "confirmed", 15);
    assert!(!reports(&sub)
        .iter()
        .any(|r| r.version == 3 && r.state == "rejected"));

    // A source that never connects fails the health gate too: back to 3.
    let dead_source = format!(
        "[[sources.mqtt]]\nname = \"nowhere\"\nurl = \"mqtt://127.0.0.1:{}\"\n\
         [[sources.mqtt.subscriptions]]\ntopic = \"sensors/#field\"\nformat = \"number\"\n{}",
        free_port(),
        influx("three", "t")
    );
    publish(&url, "gw1", &signed(&key, envelope(4, "gw1", &dead_source)));
    wait_report(&sub, "gw1", 4, "applied", 10);
    let r = wait_report(&sub, "gw1", 4, "rolled_back", 15);
    assert!(
        r.reason.as_deref().unwrap_or("").contains("source"),
        "{r:?}"
    );
    let st = agent.status();
    assert_eq!((st.config.version, st.sources.len()), (3, 0));
}

#[test]
fn ten_changes_under_load_lose_and_duplicate_nothing() {
    let Setup {
        broker: _broker,
        url,
        key,
        dir,
        sub,
    } = setup("gw1");
    let sim = Sim::start(
        dir.path(),
        &[
            "--sensors",
            "4",
            "--rate",
            "2000",
            "--count",
            "30000",
            "--garbage-rate",
            "0",
        ],
    );
    let agent = Agent::start(
        dir.path(),
        &agent_config(dir.path(), &url, "gw1", &key, &serial(dir.path(), 4096)),
    );
    let influxd = Influxd::start();
    influxd.create_db("fleet");
    for v in 1..=10u64 {
        // Every change restarts the sink `up` (to a real InfluxDB; it keeps
        // its cursor) and swaps a dead one; every other one changes the
        // serial source's parsing (in place: the port stays open, no line
        // is cut); the store's limits change live.
        let config = format!(
            "{}{}[[sinks.influx]]\nname = \"up\"\nurl = \"{}\"\ndb = \"fleet\"\nbatch_max_points = {}\n\
             [store]\nflush_interval = \"200ms\"\nseal_interval = \"2s\"\nmax_disk_bytes = \"{}MiB\"\n",
            serial(dir.path(), 4096 + (v as usize % 2)),
            influx(&format!("s{}", v % 3), &format!("db{v}")),
            influxd.url(),
            200 + v * 50,
            500 + v
        );
        publish(&url, "gw1", &signed(&key, envelope(v, "gw1", &config)));
        wait_report(&sub, "gw1", v, "applied", 10);
        std::thread::sleep(Duration::from_millis(400));
    }
    sim.wait_done(Duration::from_secs(60));
    let expected = expected_points(&sim.ledger(), "sim", &[("site", "lab")]);
    let _ = tidegate_e2e::poll_until(Duration::from_secs(20), Duration::from_millis(200), || {
        (stored_raw(dir.path()).len() >= expected.len()).then_some(())
    });
    let stored = stored_raw(dir.path());
    let unique: BTreeSet<_> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), unique.len(), "duplicates in the store");
    let missing: Vec<_> = expected.difference(&unique).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {} points lost, e.g. {missing:?}",
        expected.difference(&unique).count(),
        expected.len()
    );
    assert_eq!(unique, expected);
    let st = agent.status();
    assert_eq!(st.config.version, 10);
    // The restarted sink resumed from its cursor: InfluxDB holds the ledger.
    let in_db = || -> BTreeSet<(String, i64, u64)> {
        influxd
            .points("fleet", "sim")
            .into_iter()
            .map(|r| (r.series, r.ts_ns, r.value.to_bits()))
            .collect()
    };
    let _ = tidegate_e2e::poll_until(Duration::from_secs(30), Duration::from_millis(500), || {
        (in_db().len() >= expected.len()).then_some(())
    });
    let got = in_db();
    assert_eq!(
        got.len(),
        expected.len(),
        "InfluxDB holds {} of {} points",
        got.len(),
        expected.len()
    );
    assert!(got == expected, "InfluxDB holds exactly the ledger");
}
