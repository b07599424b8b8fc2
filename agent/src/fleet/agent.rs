//! The device's side: listens on its fleet topics, checks each envelope,
//! persists an accepted configuration before applying it, applies it by
//! difference, watches health for `confirm_after`, and rolls back to the
//! last-known-good configuration by itself.
//!
//! State (`<state_dir>/fleet-config.json`, replaced atomically: write,
//! fsync, rename, fsync the directory):
//! the overlays running now and whether they are confirmed, the
//! last-known-good overlays, per layer (`all`, the device's own) the highest
//! version ever accepted (the replay floor), and the reports not yet
//! delivered.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::envelope::{now_ms, Check, Envelope, Rejection};
#[cfg(test)]
use super::Applied;
use super::{topics, Overlays};
use crate::config::{Config, FleetConfig};
use crate::ops::{ConfigOrigin, Metrics};
use crate::run::Pipeline;

/// A report on `…/config/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// The reporting device.
    #[serde(default)]
    pub device: String,
    /// The envelope's version (0 if it could not be read).
    pub version: u64,
    /// `accepted`, `applied`, `confirmed`, `rejected` or `rolled_back`.
    pub state: String,
    /// Why (rejected: the rejection's code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub ts: u64,
}

/// The newest envelope a layer ever accepted: older versions are replays.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Floor {
    /// Its version.
    pub version: u64,
    /// Its signature: the same envelope delivered again is not news.
    pub signature: String,
}

/// What persists across restarts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The fleet configurations running now (none: the local file alone).
    pub current: Overlays,
    /// `current` passed its health gate.
    pub confirmed: bool,
    /// The last-known-good fleet configurations.
    pub good: Overlays,
    /// The replay floor of the `all` layer.
    pub floor_all: Floor,
    /// The replay floor of the device's own layer.
    pub floor_device: Floor,
    /// Reports not yet published (a rollback while the broker was away).
    pub outbox: Vec<Report>,
}

impl State {
    /// The replay floor of an envelope addressed to `target`.
    fn floor(&mut self, target: &str) -> &mut Floor {
        if target == "all" {
            &mut self.floor_all
        } else {
            &mut self.floor_device
        }
    }
}

/// Where the state lives.
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("fleet-config.json")
}

impl State {
    /// Reads the state file; none yet → the default.
    pub fn load(path: &Path) -> anyhow::Result<State> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is not fleet state", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Replaces the state file atomically: write, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} into place", tmp.display()))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// What the agent starts from: the local file, and the fleet overlay persisted on top.
#[derive(Clone, Debug)]
pub struct Boot {
    /// The local file's TOML.
    pub local_toml: String,
    /// Where it was read from (for messages).
    pub origin: String,
    /// The effective configuration (credentials not yet resolved).
    pub config: Config,
    /// The persisted state.
    pub state: State,
}

impl Boot {
    /// Loads the local file, then the persisted overlay over it. An overlay
    /// that no longer loads over the file (the file changed) falls back to
    /// the last-known-good, then to the file alone, with a warning.
    pub fn load(path: &Path) -> anyhow::Result<Boot> {
        let local_toml = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let origin = path.display().to_string();
        let local = Config::from_toml_with_env(&local_toml, &origin)?;
        let sp = state_path(&local.agent.state_dir);
        let mut state = State::load(&sp)?;
        let mut config = None;
        for (which, o) in [
            ("current", state.current.clone()),
            ("last-known-good", state.good.clone()),
        ] {
            if o.is_empty() {
                break;
            }
            match o.compose(&local_toml) {
                Ok(c) => {
                    config = Some(c);
                    if which != "current" {
                        state.current = o;
                        state.confirmed = true;
                    }
                    break;
                }
                Err(e) => warn!(layers = o.describe(), "the persisted {which} fleet configuration no longer loads over {origin} ({e}); skipping it"),
            }
        }
        let config = config.unwrap_or_else(|| {
            // The local file alone (the replay floors stay).
            state.current = Overlays::default();
            state.good = Overlays::default();
            state.confirmed = true;
            local
        });
        Ok(Boot {
            local_toml,
            origin,
            config,
            state,
        })
    }

    /// Whether the fleet agent should run.
    pub fn enabled(&self) -> bool {
        self.config.fleet.enabled()
    }
}

/// Why the data path is not healthy, if it is not.
fn health(pipeline: &Pipeline, connected: bool, store_moving: bool) -> Option<String> {
    if !connected {
        return Some("fleet broker not reachable".into());
    }
    if !store_moving {
        return Some("store writer not moving".into());
    }
    if !pipeline.sources_connected() {
        return Some("a source is not connected".into());
    }
    None
}

struct Agent {
    boot: Boot,
    /// The effective configuration running, credentials unresolved.
    running: Config,
    state: State,
    state_path: PathBuf,
    pipeline: Arc<Mutex<Pipeline>>,
    metrics: Arc<Metrics>,
    /// When the health gate of a pending configuration ends.
    deadline: Option<Instant>,
    /// The fleet connection changed: reconnect.
    reconnect: bool,
    client: Option<AsyncClient>,
    connected: bool,
}

/// Runs the fleet agent until `stop`.
pub async fn run(
    boot: Boot,
    pipeline: Arc<Mutex<Pipeline>>,
    metrics: Arc<Metrics>,
    heartbeat: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let state_path = state_path(&boot.config.agent.state_dir);
    let mut a = Agent {
        running: boot.config.clone(),
        state: boot.state.clone(),
        boot,
        state_path,
        pipeline,
        metrics,
        deadline: None,
        reconnect: false,
        client: None,
        connected: false,
    };
    if !a.state.current.is_empty() && !a.state.confirmed {
        a.deadline = Some(Instant::now() + a.running.fleet.confirm_after);
    }
    a.set_origin();
    let mut beat = (heartbeat.load(Relaxed), Instant::now());
    while !stop.is_cancelled() {
        let fleet = a.running.fleet.clone();
        if !fleet.enabled() {
            info!("fleet configuration turned off by the running configuration");
            stop.cancelled().await;
            return;
        }
        let opts = match options(&fleet, &a.running.agent.device) {
            Ok(o) => o,
            Err(e) => {
                warn!("fleet broker settings: {e:#}");
                a.wait_or_rollback(&stop, &heartbeat, &mut beat).await;
                continue;
            }
        };
        let (client, mut events) = AsyncClient::new(opts, 64);
        a.client = Some(client.clone());
        a.connected = false;
        a.reconnect = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut down_logged = false;
        let mut last_birth = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = client.disconnect().await;
                    return;
                }
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        info!(url = ?fleet.url, "fleet broker connected");
                        a.connected = true;
                        down_logged = false;
                        let dev = &a.running.agent.device;
                        for t in [topics::config(&fleet.fleet, dev), topics::config(&fleet.fleet, "all")] {
                            let _ = client.subscribe(t, QoS::AtLeastOnce).await;
                        }
                        a.birth().await;
                        last_birth = Instant::now();
                        a.flush_outbox().await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if !p.payload.is_empty() {
                            a.receive(&p.payload, p.retain).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if !down_logged {
                            warn!(url = ?fleet.url, "fleet broker unreachable ({e}); retrying");
                            down_logged = true;
                        }
                        a.connected = false;
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                },
                _ = tick.tick() => {
                    let hb = heartbeat.load(Relaxed);
                    if hb != beat.0 {
                        beat = (hb, Instant::now());
                    }
                    a.gate(beat.1.elapsed() < Duration::from_secs(5)).await;
                    if a.connected && last_birth.elapsed() >= Duration::from_secs(10) {
                        a.birth().await;
                        last_birth = Instant::now();
                    }
                }
            }
            if a.reconnect {
                // Send what is queued (the `applied` report) before leaving.
                let _ = client.disconnect().await;
                let _ = tokio::time::timeout(Duration::from_secs(3), async {
                    while let Ok(ev) = events.poll().await {
                        if let Event::Outgoing(rumqttc::Outgoing::Disconnect) = ev {
                            break;
                        }
                    }
                })
                .await;
                break;
            }
        }
    }
}

fn options(fleet: &FleetConfig, device: &str) -> anyhow::Result<MqttOptions> {
    let url = fleet.url.as_deref().unwrap_or_default();
    let mut o = crate::mqtt::Connection {
        what: "fleet broker".into(),
        url,
        client_id: fleet
            .client_id
            .clone()
            .unwrap_or_else(|| format!("tidegate-{device}-fleet")),
        username: fleet.username.as_deref(),
        password: fleet.password.as_deref(),
        ca_file: fleet.ca_file.as_deref(),
        client_cert: fleet.client_cert.as_deref(),
        client_key: fleet.client_key.as_deref(),
        keep_alive: fleet.keep_alive,
    }
    .options()?;
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_clean_session(true);
    o.set_last_will(LastWill::new(
        topics::status(&fleet.fleet, device),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    Ok(o)
}

impl Agent {
    fn set_origin(&self) {
        let current = &self.state.current;
        self.metrics.set_config_origin(ConfigOrigin {
            source: if current.is_empty() {
                "local".into()
            } else {
                "fleet".into()
            },
            version: current.version(),
            layers: current.describe(),
            state: if self.state.confirmed || current.is_empty() {
                "good".into()
            } else {
                "pending".into()
            },
        });
    }

    fn save(&self) {
        if let Err(e) = self.state.save(&self.state_path) {
            warn!("cannot persist the fleet state: {e:#}");
        }
    }

    /// Publishes the birth/status message (retained).
    async fn birth(&self) {
        let Some(client) = &self.client else { return };
        let s = self.metrics.snapshot();
        let msg = serde_json::json!({
            "state": "online",
            "device": s.device,
            "version": s.version,
            "uptime_s": s.uptime_s,
            "config_source": s.config.source,
            "config_version": s.config.version,
            "config_state": s.config.state,
            "store_bytes": s.store.bytes_on_disk,
            "points_flushed": s.store.points_flushed,
            "sources": s.sources.iter().map(|x| serde_json::json!({"name": x.name, "connected": x.connected, "points": x.points})).collect::<Vec<_>>(),
            "sinks": s.sinks.iter().map(|x| serde_json::json!({"name": x.name, "up": x.up, "backlog_points": x.backlog_points, "points_sent": x.points_sent})).collect::<Vec<_>>(),
            "sink_backlog_points": s.sinks.iter().map(|x| x.backlog_points).sum::<u64>(),
            "ts": now_ms(),
        });
        let topic = topics::status(&self.running.fleet.fleet, &self.running.agent.device);
        let _ = client
            .publish(topic, QoS::AtLeastOnce, true, msg.to_string())
            .await;
    }

    /// Queues a report and sends what is queued if connected.
    async fn report(
        &mut self,
        version: u64,
        state: &str,
        code: Option<&str>,
        reason: Option<String>,
    ) {
        info!(
            version,
            state,
            reason = reason.as_deref().unwrap_or(""),
            "fleet config"
        );
        self.state.outbox.push(Report {
            device: self.running.agent.device.clone(),
            version,
            state: state.into(),
            code: code.map(String::from),
            reason,
            ts: now_ms(),
        });
        self.flush_outbox().await;
    }

    async fn flush_outbox(&mut self) {
        let Some(client) = &self.client else { return };
        if !self.connected {
            self.save();
            return;
        }
        let topic = topics::config_status(&self.running.fleet.fleet, &self.running.agent.device);
        for r in std::mem::take(&mut self.state.outbox) {
            let body = serde_json::to_string(&r).unwrap_or_default();
            let _ = client.publish(&topic, QoS::AtLeastOnce, true, body).await;
        }
        self.save();
    }

    /// One message on a config topic; `retained`: delivered because we
    /// subscribed (a stored message), not published just now.
    async fn receive(&mut self, payload: &[u8], retained: bool) {
        let env: Envelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                let r = Rejection::Malformed(e.to_string());
                self.report(0, "rejected", Some(r.code()), Some(r.to_string()))
                    .await;
                return;
            }
        };
        // The retained envelope we already took, delivered again on reconnect.
        let floor = self.state.floor(&env.target).clone();
        if env.version == floor.version
            && env.signature.as_deref() == Some(floor.signature.as_str())
        {
            return;
        }
        let check = Check {
            running: &self.running,
            applied_version: floor.version,
            local_toml: &self.boot.local_toml,
            overlays: &self.state.current,
            now_ms: now_ms(),
        };
        let (cfg, overlays) = match check.verify(&env) {
            Ok(x) => x,
            Err(Rejection::Replay { .. }) if retained => {
                // An older envelope the broker still keeps: not news, and
                // not worth overwriting the last report.
                return;
            }
            Err(r) => {
                warn!(version = env.version, "fleet config rejected: {r}");
                self.report(env.version, "rejected", Some(r.code()), Some(r.to_string()))
                    .await;
                return;
            }
        };
        let mut resolved = cfg.clone();
        if let Err(e) = resolved.resolve_credentials() {
            let r = Rejection::InvalidConfig(e.to_string());
            self.report(env.version, "rejected", Some(r.code()), Some(r.to_string()))
                .await;
            return;
        }
        // Persisted before it is applied: a crash mid-apply comes back under it.
        if self.state.current.is_empty() || self.state.confirmed {
            // What ran until now was healthy: it is what a rollback returns to.
            self.state.good = self.state.current.clone();
        }
        self.state.current = overlays;
        self.state.confirmed = false;
        *self.state.floor(&env.target) = Floor {
            version: env.version,
            signature: env.signature.clone().unwrap_or_default(),
        };
        self.save();
        self.report(env.version, "accepted", None, None).await;
        let fleet_changed = cfg.fleet != self.running.fleet;
        let result = self.pipeline.lock().await.apply(&resolved).await;
        match result {
            Ok(changes) => {
                info!(version = env.version, sources = ?changes.sources, sinks = ?changes.sinks, limits = changes.limits, "fleet config applied");
                self.running = cfg;
                self.deadline = Some(Instant::now() + self.running.fleet.confirm_after);
                self.set_origin();
                self.report(env.version, "applied", None, None).await;
                self.birth().await;
                if fleet_changed {
                    self.reconnect = true;
                }
            }
            Err(e) => {
                self.rollback(format!("apply failed: {e:#}")).await;
            }
        }
    }

    /// The health gate, once a second while a configuration is pending.
    async fn gate(&mut self, store_moving: bool) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if Instant::now() < deadline {
            return;
        }
        let why = health(&*self.pipeline.lock().await, self.connected, store_moving);
        match why {
            None => {
                self.deadline = None;
                self.state.confirmed = true;
                self.state.good = self.state.current.clone();
                self.save();
                self.set_origin();
                let v = self.state.current.version();
                self.report(v, "confirmed", None, None).await;
                self.birth().await;
            }
            Some(why) => self.rollback(why).await,
        }
    }

    /// Without a usable fleet connection: wait for the gate (and roll back).
    async fn wait_or_rollback(
        &mut self,
        stop: &CancellationToken,
        heartbeat: &AtomicU64,
        beat: &mut (u64, Instant),
    ) {
        self.connected = false;
        self.client = None;
        if self.deadline.is_none() {
            stop.cancelled().await;
            return;
        }
        while !stop.is_cancelled() && self.deadline.is_some() && !self.reconnect {
            let hb = heartbeat.load(Relaxed);
            if hb != beat.0 {
                *beat = (hb, Instant::now());
            }
            self.gate(beat.1.elapsed() < Duration::from_secs(5)).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Back to the last-known-good configuration; reported now or on reconnect.
    async fn rollback(&mut self, why: String) {
        let bad = self.state.current.version();
        warn!(
            version = bad,
            "rolling back to the last-known-good configuration: {why}"
        );
        self.deadline = None;
        let target = self.state.good.clone();
        let cfg = if target.is_empty() {
            Config::from_toml_with_env(&self.boot.local_toml, &self.boot.origin)
        } else {
            target.compose(&self.boot.local_toml)
        };
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => {
                warn!("the last-known-good configuration no longer loads ({e}); staying");
                return;
            }
        };
        let mut resolved = cfg.clone();
        if let Err(e) = resolved.resolve_credentials() {
            warn!("the last-known-good configuration's credentials: {e}; staying");
            return;
        }
        self.state.current = target;
        self.state.confirmed = true;
        self.save();
        if let Err(e) = self.pipeline.lock().await.apply(&resolved).await {
            warn!("rollback apply failed: {e:#}");
        }
        if cfg.fleet != self.running.fleet {
            self.reconnect = true;
            self.connected = false;
        }
        self.running = cfg;
        self.set_origin();
        self.report(bad, "rolled_back", Some("unhealthy"), Some(why))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_comes_back_under_the_persisted_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        std::fs::create_dir(&state_dir).unwrap();
        let file = dir.path().join("t.toml");
        let key = super::super::envelope::PrivateKey::generate().unwrap();
        std::fs::write(
            &file,
            format!(
                "[agent]\ndevice = \"gw1\"\nstate_dir = \"{}\"\n\
                 [fleet]\nurl = \"mqtt://127.0.0.1:1\"\nfleet = \"f\"\ntrusted_keys = [\"{}\"]\n",
                state_dir.display(),
                key.public().to_text()
            ),
        )
        .unwrap();
        let boot = Boot::load(&file).unwrap();
        assert!(boot.enabled() && boot.state.current.is_empty());
        assert!(boot.config.sinks.influx.is_empty());

        let applied = |v: u64, sink: &str| Overlays {
            all: Some(Applied {
                version: v,
                overlay: format!(
                    "[[sinks.influx]]\nname = \"{sink}\"\nurl = \"http://h:1\"\ndb = \"d\"\n"
                ),
                signature: format!("sig{v}"),
            }),
            ..Overlays::default()
        };
        let state = State {
            current: applied(3, "three"),
            good: applied(2, "two"),
            floor_all: Floor {
                version: 3,
                signature: "sig3".into(),
            },
            ..State::default()
        };
        let path = state_path(&state_dir);
        state.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), state);
        let boot = Boot::load(&file).unwrap();
        assert_eq!(boot.config.sinks.influx[0].name, "three");
        assert!(!boot.state.confirmed, "the gate runs again after a restart");

        // A current overlay that no longer loads: the last-known-good runs.
        let mut broken = state.clone();
        broken.current.all.as_mut().unwrap().overlay = "[store]\nflush_intervall = 1\n".into();
        broken.save(&path).unwrap();
        let boot = Boot::load(&file).unwrap();
        assert_eq!(boot.config.sinks.influx[0].name, "two");
        assert_eq!(boot.state.current.version(), 2);
        assert_eq!(boot.state.floor_all.version, 3, "the replay floor stays");
    }
}
