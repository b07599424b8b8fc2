//! The operator's side: `tidegate fleet keygen | sign | publish | status`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use super::envelope::{Envelope, PrivateKey};
use super::topics;

/// Writes a new private key to `out` (mode 0600, never overwritten) and
/// returns the public key (base64) for `fleet.trusted_keys`.
pub fn keygen(out: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = PrivateKey::generate().context("cannot read /dev/urandom")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist yet)", out.display()))?;
    f.write_all(key.to_text().as_bytes())?;
    f.sync_all()?;
    Ok(key.public().to_text())
}

/// Signs `config` (a TOML file, checked against the schema first).
pub fn sign(
    key: &Path,
    version: u64,
    fleet: &str,
    target: &str,
    allow_fleet_change: bool,
    config: &Path,
) -> anyhow::Result<Envelope> {
    let key = std::fs::read_to_string(key)
        .with_context(|| format!("cannot read the key {}", key.display()))?;
    let key = PrivateKey::parse(&key).map_err(anyhow::Error::msg)?;
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    // Catch a typo here rather than on a thousand gateways.
    text.parse::<toml::Table>()
        .with_context(|| format!("{} is not TOML", config.display()))?;
    let mut env = Envelope::new(fleet, target, version, &text);
    env.allow_fleet_change = allow_fleet_change;
    env.sign(&key);
    Ok(env)
}

/// How the operator's commands reach the fleet broker (the same settings as
/// a device's `[fleet]` section: a managed broker wants TLS and a login).
#[derive(clap::Args, Clone, Debug)]
pub struct Broker {
    /// The fleet broker, `mqtt://host:1883` or `mqtts://host:8883`.
    #[arg(long = "broker")]
    pub url: String,
    /// User name, if the broker asks for one.
    #[arg(long)]
    pub username: Option<String>,
    /// Its password (from the environment, so it stays out of `ps` and shell history).
    #[arg(
        long = "password-env",
        env = "TIDEGATE_FLEET_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// PEM CA(s) of the broker's certificate (`mqtts://`); the system's roots if unset.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (with --client-key) for brokers that want one.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM key of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl Broker {
    /// A broker at `url` with no login and no TLS files.
    pub fn plain(url: &str) -> Broker {
        Broker {
            url: url.into(),
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }

    fn options(&self, client: &str) -> anyhow::Result<MqttOptions> {
        crate::mqtt::Connection {
            what: "fleet broker".into(),
            url: &self.url,
            client_id: format!("{client}-{}", std::process::id()),
            username: self.username.as_deref(),
            password: self.password.as_deref(),
            ca_file: self.ca_file.as_deref(),
            client_cert: self.client_cert.as_deref(),
            client_key: self.client_key.as_deref(),
            keep_alive: Duration::from_secs(30),
        }
        .options()
    }
}

/// Publishes `payload` retained at QoS 1 on `topic` and waits for the PUBACK.
/// An empty payload deletes the broker's retained message on `topic`.
pub async fn publish(broker: &Broker, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
    let mut o = broker.options("tidegate-fleet-publish")?;
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(o, 10);
    client
        .publish(topic, QoS::AtLeastOnce, true, payload)
        .await?;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => anyhow::bail!("fleet broker {}: {e}", broker.url),
            }
        }
    })
    .await
    .context("no PUBACK from the fleet broker within 10 s")??;
    let _ = client.disconnect().await;
    Ok(())
}

/// The envelope file's target topic, checking it names the same fleet and target.
pub fn topic_for(env: &Envelope, fleet: &str, device: Option<&str>) -> anyhow::Result<String> {
    let target = device.unwrap_or("all");
    if env.fleet != fleet || env.target != target {
        anyhow::bail!(
            "the envelope is signed for fleet `{}` target `{}`, not fleet `{fleet}` target `{target}`; sign it again",
            env.fleet,
            env.target
        );
    }
    Ok(topics::config(fleet, target))
}

/// One device as `fleet status` sees it.
#[derive(Default, Debug)]
pub struct DeviceRow {
    /// Online, offline or unknown.
    pub online: Option<bool>,
    /// The agent's birth/status message.
    pub status: Option<serde_json::Value>,
    /// The last config report.
    pub report: Option<serde_json::Value>,
}

/// Listens to the fleet's status topics for `wait` and returns what each device said.
pub async fn collect(
    broker: &Broker,
    fleet: &str,
    wait: Duration,
) -> anyhow::Result<BTreeMap<String, DeviceRow>> {
    let o = broker.options("tidegate-fleet-status")?;
    let (client, mut events) = AsyncClient::new(o, 100);
    client
        .subscribe(format!("tidegate/{fleet}/+/status"), QoS::AtLeastOnce)
        .await?;
    client
        .subscribe(
            format!("tidegate/{fleet}/+/config/status"),
            QoS::AtLeastOnce,
        )
        .await?;
    let mut rows: BTreeMap<String, DeviceRow> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let ev = match tokio::time::timeout_at(deadline, events.poll()).await {
            Err(_) => break,
            Ok(Err(e)) => anyhow::bail!("fleet broker {}: {e}", broker.url),
            Ok(Ok(ev)) => ev,
        };
        let Event::Incoming(Packet::Publish(p)) = ev else {
            continue;
        };
        let levels: Vec<&str> = p.topic.split('/').collect();
        let Some(device) = levels.get(2) else {
            continue;
        };
        let row = rows.entry(device.to_string()).or_default();
        let json = serde_json::from_slice::<serde_json::Value>(&p.payload).ok();
        match levels.len() {
            4 => {
                row.online = Some(json.is_some());
                row.status = json;
            }
            5 => row.report = json,
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(rows)
}

/// The table `fleet status` prints.
pub fn table(rows: &BTreeMap<String, DeviceRow>) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:>8} {:<8} {:<40} {:>10} {:>12} {:>10}\n",
        "DEVICE", "ONLINE", "CONFIG", "SOURCE", "LAST REPORT", "SEEN", "STORE", "SINK LAG"
    );
    let now = super::envelope::now_ms();
    for (device, r) in rows {
        let s = r.status.as_ref();
        let get = |k: &str| s.and_then(|s| s.get(k)).cloned();
        let online = match r.online {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let version = get("config_version")
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        let source = get("config_source")
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(|| "-".into());
        let report = r
            .report
            .as_ref()
            .map(|r| {
                let v = r.get("version").map(|v| v.to_string()).unwrap_or_default();
                let st = r.get("state").and_then(|v| v.as_str()).unwrap_or("?");
                let why = r.get("reason").and_then(|v| v.as_str()).unwrap_or("");
                let mut t = format!("v{v} {st} {why}");
                t.truncate(40);
                t
            })
            .unwrap_or_else(|| "-".into());
        let store = get("store_bytes")
            .and_then(|v| v.as_u64())
            .map(|b| format!("{:.1}MiB", b as f64 / (1 << 20) as f64))
            .unwrap_or_else(|| "-".into());
        let lag = get("sink_backlog_points")
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        let seen = get("ts")
            .and_then(|v| v.as_u64())
            .map(|ts| format!("{}s ago", now.saturating_sub(ts) / 1000))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{device:<20} {online:<8} {version:>8} {source:<8} {report:<40} {seen:>10} {store:>12} {lag:>10}\n"
        ));
    }
    out
}
