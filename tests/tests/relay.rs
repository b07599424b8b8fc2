//! Tidegate → Tidegate → InfluxDB: a gateway relays to a regional agent over
//! HTTP (line protocol), with the same at-least-once contract end to end,
//! through a SIGKILL of the regional agent.

use std::time::Duration;

use tidegate_e2e::agent::{expected_points, sim_config, sim_config_with, Agent, Sim};
use tidegate_e2e::{free_port, wait_until, Influxd};

const DB: &str = "e2e";

fn regional_config(dir: &std::path::Path, port: u16, influx: &str) -> String {
    let sinks = format!(
        r#"
[listen]
address = "127.0.0.1:{port}"
token = "relay-secret"

[[sinks.influx]]
name = "cloud"
url = "{influx}"
db = "{DB}"
backoff_max = "500ms"
"#
    );
    sim_config_with(dir, None, "", &sinks)
}

#[test]
fn relay_through_a_killed_regional_agent_loses_nothing() {
    let influx = Influxd::start();
    let (gw_dir, reg_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let regional = Agent::start(
        reg_dir.path(),
        &regional_config(reg_dir.path(), port, &influx.url()),
    );

    let sim = Sim::start(
        gw_dir.path(),
        &[
            "--sensors",
            "4",
            "--rate",
            "1000",
            "--count",
            "20000",
            "--garbage-rate",
            "0",
        ],
    );
    // The gateway sends to the regional agent as to an InfluxDB, with its token.
    let sink = format!(
        r#"
[[sinks.influx]]
name = "regional"
url = "http://127.0.0.1:{port}"
api = "v2"
org = "site"
bucket = "gateways"
token = "relay-secret"
batch_max_points = 500
backoff_max = "300ms"
"#
    );
    let gateway = Agent::start(
        gw_dir.path(),
        &sim_config(gw_dir.path(), Some("lab"), &sink),
    );
    wait_until("the relay to carry points", Duration::from_secs(30), || {
        (influx.count(DB, "sim") > 2000).then_some(())
    });

    // The regional agent dies without a goodbye; the gateway buffers meanwhile.
    regional.kill();
    wait_until("the gateway to notice", Duration::from_secs(30), || {
        (!gateway.status().sinks[0].up).then_some(())
    });
    wait_until("a backlog at the gateway", Duration::from_secs(30), || {
        (gateway.status().sinks[0].backlog_points > 2000).then_some(())
    });
    let regional = Agent::start(
        reg_dir.path(),
        &regional_config(reg_dir.path(), port, &influx.url()),
    );

    sim.wait_done(Duration::from_secs(60));
    let expected = expected_points(&sim.ledger(), "sim", &[("site", "lab")]);
    wait_until(
        "every point through both agents",
        Duration::from_secs(120),
        || (influx.count(DB, "sim") >= expected.len()).then_some(()),
    );
    let got: std::collections::BTreeSet<_> = influx
        .points(DB, "sim")
        .into_iter()
        .map(|r| (r.series, r.ts_ns, r.value.to_bits()))
        .collect();
    assert_eq!(got, expected, "the cloud holds the ledger exactly");
    let g = &gateway.status().sinks[0];
    assert_eq!(g.dead_letters, 0);
    assert!(g.failures > 0, "the outage was seen");
    let relay = regional.status();
    let src = relay.sources.iter().find(|s| s.name == "relay").unwrap();
    assert_eq!(src.rejected(), 0, "{:?}", src.rejects);
}

#[test]
fn relay_refuses_a_wrong_token_and_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let influx = Influxd::start();
    let _regional = Agent::start(
        dir.path(),
        &regional_config(dir.path(), port, &influx.url()),
    );
    let http = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{port}/write?precision=ns");
    let send = |auth: &str, body: &str| {
        http.post(&url)
            .header("Authorization", auth)
            .body(body.to_string())
            .send()
            .unwrap()
    };
    let r = send("Token wrong", "m f=1 1\n");
    assert_eq!(r.status().as_u16(), 401);
    let r = send("Token relay-secret", "m f=1 1\nm f=\"text\" 2\n");
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("string"), "names the problem");
    let r = send("Token relay-secret", "m,t=a f=1.5 1000000000\n");
    assert_eq!(r.status().as_u16(), 204);
    let ping = http
        .get(format!("http://127.0.0.1:{port}/ping"))
        .send()
        .unwrap();
    assert_eq!(ping.status().as_u16(), 204);
}
