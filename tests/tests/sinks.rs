//! The sinks against real databases: firmware-sim on a PTY → `tidegate run`
//! → VictoriaMetrics (line protocol v1 and v2, remote write), Prometheus
//! (remote write) and InfluxDB 1.x (a refused point in a batch), each
//! checked against the simulator's ledger: every valid reading arrives
//! exactly once per (series, timestamp).
//!
//! The simulated sensors stamp readings with the current time, as
//! Prometheus refuses samples older than its head and VictoriaMetrics drops
//! those older than its retention.

use std::path::Path;
use std::time::Duration;

use tidegate::ops::Status;
use tidegate_e2e::agent::{expected_points, expected_samples, sim_config, Agent, Sim};
use tidegate_e2e::{poll_until, wait_until, Influxd, Prometheus, Sample, Victoria};

/// The counters of sink `name`.
fn sink<'a>(status: &'a Status, name: &str) -> &'a tidegate::ops::metrics::SinkStatus {
    status
        .sinks
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no sink {name} in {:?}", status.sinks))
}

/// Feeds `lines` readings of three sensors (2% garbage) through an agent
/// with `sinks`; returns the agent once every sink in `names` has sent all
/// valid points, and what the ledger promises.
fn feed(dir: &Path, sinks: &str, names: &[&str], lines: u32) -> (Agent, Sim, usize) {
    let sim = Sim::start(
        dir,
        &[
            "--sensors",
            "3",
            "--rate",
            "300",
            "--count",
            &lines.to_string(),
        ],
    );
    let agent = Agent::start(dir, &sim_config(dir, Some("lab"), sinks));
    sim.wait_done(Duration::from_secs(60));
    let n = expected_points(&sim.ledger(), "sim", &[("site", "lab")]).len();
    wait_until(
        "every sink to send every point",
        Duration::from_secs(60),
        || {
            let s = agent.status();
            names
                .iter()
                .all(|name| sink(&s, name).points_sent >= n as u64)
                .then_some(())
        },
    );
    (agent, sim, n)
}

/// What `read` returns once it holds at least `n` samples (the databases
/// make what they acknowledged searchable within moments), or after 30 s.
fn settled(n: usize, read: impl Fn() -> Vec<Sample>) -> Vec<Sample> {
    poll_until(Duration::from_secs(30), Duration::from_millis(250), || {
        let s = read();
        (s.len() >= n).then_some(s)
    })
    .unwrap_or_else(read)
}

/// `samples` without the label `name` (VictoriaMetrics adds `db` to
/// line-protocol writes).
fn without(mut samples: Vec<Sample>, name: &str) -> Vec<Sample> {
    for s in &mut samples {
        s.0.remove(name);
    }
    samples.sort();
    samples
}

#[test]
fn victoria_gets_the_ledger_once_by_line_protocol_and_by_remote_write() {
    let vm = Victoria::start();
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        r#"
[[sinks.influx]]
name = "lp"
url = "{url}"
db = "lp"
batch_max_points = 500
backoff_max = "1s"

[[sinks.remote_write]]
name = "rw"
url = "{rw}"
batch_max_points = 500
backoff_max = "1s"
"#,
        url = vm.url(),
        rw = vm.remote_write_url()
    );
    let (agent, sim, n) = feed(dir.path(), &sinks, &["lp", "rw"], 1500);
    let want = expected_samples(&sim.ledger(), "sim", &[("site", "lab")]);
    assert_eq!(want.len(), n);
    // Line protocol carries `db=lp`; remote write has no `db` label.
    let lp = settled(n, || vm.samples(r#"{__name__=~"sim_.*",db="lp"}"#));
    let lp = without(lp, "db");
    assert_eq!(lp.len(), n, "line protocol: nothing lost, nothing doubled");
    assert!(
        lp == want,
        "line protocol: VictoriaMetrics holds exactly the ledger"
    );
    let rw = settled(n, || vm.samples(r#"{__name__=~"sim_.*",db=""}"#));
    assert_eq!(rw.len(), n, "remote write: nothing lost, nothing doubled");
    assert!(
        rw == want,
        "remote write: VictoriaMetrics holds exactly the ledger"
    );

    let summary = agent.terminate();
    for name in ["lp", "rw"] {
        let s = sink(&summary, name);
        assert_eq!(s.points_sent, n as u64, "{name}: nothing sent twice");
        assert_eq!((s.failures, s.dead_letters), (0, 0), "{name}: {s:?}");
    }
}

#[test]
fn prometheus_gets_the_ledger_once_by_remote_write() {
    let prom = Prometheus::start();
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        r#"
[[sinks.remote_write]]
name = "prom"
url = "{url}"
batch_max_points = 500
backoff_max = "1s"
"#,
        url = prom.remote_write_url()
    );
    let (agent, sim, n) = feed(dir.path(), &sinks, &["prom"], 1500);
    let want = expected_samples(&sim.ledger(), "sim", &[("site", "lab")]);
    let got = settled(n, || prom.samples(r#"{__name__=~"sim_.*"}"#));
    assert_eq!(got.len(), n, "nothing lost, nothing doubled");
    assert!(got == want, "Prometheus holds exactly the ledger");
    let summary = agent.terminate();
    let s = sink(&summary, "prom");
    assert_eq!(s.points_sent, n as u64);
    assert_eq!(
        (s.failures, s.dead_letters),
        (0, 0),
        "no sample refused: {s:?}\n{}",
        tidegate_e2e::tail(&prom.log_file(), 20)
    );
}

/// VictoriaMetrics also speaks the InfluxDB v2 write API (`/api/v2/write`,
/// org and bucket, a token it ignores), with gzip bodies.
#[test]
fn influx_v2_api_with_gzip_into_victoria() {
    let vm = Victoria::start();
    let dir = tempfile::tempdir().unwrap();
    let sinks = format!(
        r#"
[[sinks.influx]]
name = "v2"
url = "{url}"
api = "v2"
org = "tidegate"
bucket = "e2e"
token = "secret-token"
gzip = true
batch_max_points = 500
backoff_max = "1s"
"#,
        url = vm.url()
    );
    let (agent, sim, n) = feed(dir.path(), &sinks, &["v2"], 1500);
    let ledger = sim.ledger();
    let want = expected_samples(&ledger, "sim", &[("site", "lab")]);
    let got = settled(n, || vm.samples(r#"{__name__=~"sim_.*"}"#));
    assert_eq!(got.len(), n, "nothing lost, nothing doubled");
    assert!(got == want, "VictoriaMetrics holds exactly the ledger");

    // The byte counter counts the gzip bodies on the wire.
    let mut plain = String::new();
    for (series, ts_ns, bits) in expected_points(&ledger, "sim", &[("site", "lab")]) {
        let p = tidegate::point::Point {
            series: tidegate::point::SeriesKey::from_canonical(&series),
            ts_ns,
            value: f64::from_bits(bits),
        };
        tidegate::sync::influx::write_line(&mut plain, &p);
    }
    let summary = agent.terminate();
    let s = sink(&summary, "v2");
    assert_eq!(s.points_sent, n as u64);
    assert!(
        s.bytes_sent * 3 < plain.len() as u64,
        "gzip: {} bytes sent for {} bytes of line protocol",
        s.bytes_sent,
        plain.len()
    );
}

/// A 400 for one point of a batch of 1000: the engine splits the batch until
/// it finds the point, sets it aside (dead_letters == 1) and delivers the
/// other 999.
///
/// InfluxDB 1.x fixes a field's type per measurement and shard (here a
/// week, Monday to Monday), so a string value written first makes every
/// float value of that field in the same week a type conflict. The feed is
/// a replay: 999 readings in one week and the last one eight weeks later,
/// next to the string value, so exactly one point conflicts.
#[test]
fn one_refused_point_in_a_batch_of_1000_is_dead_lettered_and_999_arrive() {
    const DB: &str = "e2e";
    let influx = Influxd::start();
    influx.create_db(DB);
    // 2025-03-04T00:00:00Z: shard 2025-03-03..10, not 2025-01-06..13.
    let odd_s: i64 = 1_741_046_400;
    influx.write(
        DB,
        &format!(
            "sim,sensor=s01,site=lab value=\"bad\" {}\n",
            (odd_s + 1) * 1_000_000_000
        ),
    );

    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("timestamp,value\n");
    for i in 0..999 {
        csv.push_str(&format!(
            "2025-01-06 00:{:02}:{:02},{}\n",
            i / 60,
            i % 60,
            i as f64 * 0.5
        ));
    }
    csv.push_str("2025-03-04 00:00:00,1.5\n");
    let csv_path = dir.path().join("replay.csv");
    std::fs::write(&csv_path, csv).unwrap();

    // Run 1, without sinks: the 1000 points wait in the store, so that the
    // sink added in run 2 reads them as one batch.
    let sim = Sim::start(
        dir.path(),
        &[
            "--replay",
            csv_path.to_str().unwrap(),
            "--speedup",
            "1e10",
            "--garbage-rate",
            "0",
        ],
    );
    let agent = Agent::start(dir.path(), &sim_config(dir.path(), Some("lab"), ""));
    sim.wait_done(Duration::from_secs(60));
    let want = expected_points(&sim.ledger(), "sim", &[("site", "lab")]);
    assert_eq!(want.len(), 1000);
    wait_until(
        "the agent to read every line",
        Duration::from_secs(30),
        || (agent.status().sources[0].lines == 1000).then_some(()),
    );
    assert_eq!(agent.terminate().store.points_flushed, 1000);
    drop(sim);

    // Run 2: one sink, batches of up to 1000.
    let sinks = format!(
        r#"
[[sinks.influx]]
name = "influx"
url = "{url}"
db = "{DB}"
batch_max_points = 1000
backoff_max = "1s"
"#,
        url = influx.url()
    );
    let agent = Agent::start(dir.path(), &sim_config(dir.path(), None, &sinks));
    let s = wait_until(
        "the sink to go through the batch",
        Duration::from_secs(60),
        || {
            let s = agent.status();
            let k = sink(&s, "influx");
            (k.points_sent + k.dead_letters >= 1000).then(|| k.clone())
        },
    );
    assert_eq!((s.points_sent, s.dead_letters), (999, 1), "{s:?}");
    let log = agent.log();
    assert!(
        log.contains("set aside") && log.contains("field type conflict"),
        "the refused point is logged with the server's message:\n{log}"
    );

    let odd_ns = odd_s * 1_000_000_000;
    let good: std::collections::BTreeSet<_> = want
        .into_iter()
        .filter(|(_, ts, _)| *ts != odd_ns)
        .collect();
    assert_eq!(good.len(), 999);
    let stored: std::collections::BTreeSet<_> = influx
        .points(DB, "sim")
        .into_iter()
        .map(|r| (r.series, r.ts_ns, r.value.to_bits()))
        .collect();
    assert_eq!(
        stored, good,
        "InfluxDB holds the 999 and not the refused one"
    );
    let summary = agent.terminate();
    assert_eq!(sink(&summary, "influx").dead_letters, 1);
}
