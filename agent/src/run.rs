//! Wires a configuration into running tasks: sources → store → sinks, plus the
//! control socket; and takes them down in order on shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{
    Config, DeliveryConfig, InfluxSinkConfig, KafkaSinkConfig, MqttSinkConfig,
    RemoteWriteSinkConfig, SerialSourceConfig,
};
use crate::ops::health::Health;
use crate::ops::{control, notify, Metrics, Status};
use crate::source::mqtt::MqttSourceConfig;
use crate::store::{self, Store, StoreError, StoreHandle};
use crate::sync::{self, influx::InfluxSink, remote_write::RemoteWriteSink, Sink, Stopping};

/// Runs the pipeline until `shutdown` is cancelled, then stops it in order:
/// sources first, then a flush, then the sinks drain what they can within
/// `agent.shutdown_timeout`, then the store closes. Returns the final counters.
pub async fn run(
    cfg: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<Status> {
    run_with(cfg, metrics, shutdown, None).await
}

/// [`run`], with the fleet agent when `fleet` is given (`[fleet]` set).
pub async fn run_with(
    cfg: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    fleet: Option<crate::fleet::agent::Boot>,
) -> anyhow::Result<Status> {
    let store_path = cfg.store_path();
    let (mut store, _moved_aside) = Store::open_or_recover(&store_path, metrics.clone())
        .with_context(|| format!("cannot open the store at {}", store_path.display()))?;
    store.set_journal_mode(cfg.store.journal)?;
    store.set_tiers(&cfg.store.rollup_widths());
    store.set_limits(limits(&cfg));
    let (handle, store_task) = store::spawn(store, &cfg.store);
    let heartbeat = handle.heartbeat();
    let tap = handle.tap();

    // The store writer counts as stalled after this long without a heartbeat
    // (the systemd watchdog and /healthz).
    let stall_after = cfg.store.flush_interval * 3 + std::time::Duration::from_secs(2);
    let health = Arc::new(Health::new(metrics.clone(), heartbeat.clone(), stall_after));

    let stop_listener = CancellationToken::new();
    let mut listener = JoinSet::new();
    // The HTTP listener is an input too (relay writes): it stops with the sources.
    if let Some(address) = &cfg.listen.address {
        let relay = cfg.listen.write.then(|| {
            crate::source::relay::Relay::new(
                handle.clone(),
                metrics.source("relay"),
                cfg.listen.token.clone(),
                cfg.listen.max_body.0 as usize,
            )
        });
        let server = crate::ops::http::bind(
            address,
            crate::ops::http::Routes {
                relay,
                monitoring: cfg.listen.metrics.then(|| crate::ops::http::Monitoring {
                    registry: crate::ops::prom::registry(metrics.clone(), Some(health.clone())),
                    health: health.clone(),
                }),
            },
            stop_listener.clone(),
        )
        .await?;
        listener.spawn(async move {
            server.await;
        });
    }
    // The clock watch stops with the inputs.
    listener.spawn(crate::ops::clock::run(
        metrics.clone(),
        handle.clone(),
        stop_listener.clone(),
    ));

    let mut pipeline = Pipeline {
        cfg: Config::default(),
        store: handle,
        metrics: metrics.clone(),
        sources: BTreeMap::new(),
        sinks: BTreeMap::new(),
    };
    pipeline.cfg.store = cfg.store.clone();
    pipeline.apply(&cfg).await?;

    let stop_control = CancellationToken::new();
    let socket = cfg.control_socket();
    let control = tokio::spawn(control::serve(
        socket.clone(),
        metrics.clone(),
        tap,
        stop_control.clone(),
    ));
    // Rates and last-seen times for status, the writer's progress for
    // /healthz, once a second.
    let ticker = {
        let metrics = metrics.clone();
        let health = health.clone();
        let stop = stop_control.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {
                        metrics.tick();
                        health.observe();
                    }
                }
            }
        })
    };
    info!(store = %store_path.display(), socket = %socket.display(), sources = pipeline.sources.len(), sinks = pipeline.sinks.len(), "tidegate running");

    // systemd (Type=notify): ready now that the store is open and the sources
    // started; then STATUS every second and WATCHDOG while the writer moves.
    let notifier = notify::Notifier::from_env();
    notifier.ready();
    let stop_notify = CancellationToken::new();
    let supervisor = tokio::spawn(notify::supervise(
        notifier.clone(),
        metrics.clone(),
        heartbeat.clone(),
        stall_after,
        stop_notify.clone(),
    ));

    let pipeline = Arc::new(tokio::sync::Mutex::new(pipeline));
    let stop_fleet = CancellationToken::new();
    let fleet_task = fleet.map(|boot| {
        tokio::spawn(crate::fleet::agent::run(
            boot,
            pipeline.clone(),
            metrics.clone(),
            heartbeat,
            stop_fleet.clone(),
        ))
    });

    shutdown.cancelled().await;
    stop_fleet.cancel();
    if let Some(t) = fleet_task {
        let _ = t.await;
    }
    stop_notify.cancel();
    let _ = supervisor.await;
    notifier.stopping();
    info!("stopping: sources first, then a last flush and sync");
    stop_listener.cancel();
    while listener.join_next().await.is_some() {}
    let pipeline = Arc::try_unwrap(pipeline)
        .map_err(|_| anyhow::anyhow!("the pipeline is still shared at shutdown"))?
        .into_inner();
    pipeline.shutdown(cfg.agent.shutdown_timeout).await;
    store_task.wait().await;
    stop_control.cancel();
    let _ = ticker.await;
    match control.await {
        Ok(Err(e)) => warn!("control socket: {e:#}"),
        Err(e) => warn!("control socket task: {e}"),
        Ok(Ok(())) => {}
    }
    Ok(metrics.snapshot())
}

fn limits(cfg: &Config) -> store::Limits {
    store::Limits {
        max_disk_bytes: cfg.store.max_disk_bytes.0,
        max_age_ns: cfg.store.max_age.map(|d| d.as_nanos() as i64),
        min_free_disk: cfg.store.min_free_disk.0,
        dead_letters: cfg.store.dead_letters,
    }
}

/// A source's settings, as the supervisor compares them.
#[derive(Clone, Debug, PartialEq)]
enum SourceSpec {
    Serial(SerialSourceConfig),
    Mqtt(MqttSourceConfig),
    Modbus(crate::source::modbus::ModbusSourceConfig),
}

/// A sink's settings, as the supervisor compares them.
#[derive(Clone, Debug, PartialEq)]
enum SinkSpec {
    Influx(InfluxSinkConfig),
    RemoteWrite(RemoteWriteSinkConfig),
    Mqtt(MqttSinkConfig),
    Kafka(KafkaSinkConfig),
}

/// In configuration order (the order `status` lists them in).
fn source_specs(cfg: &Config) -> Vec<(String, SourceSpec)> {
    let serial = cfg
        .sources
        .serial
        .iter()
        .map(|s| (s.display_name(), SourceSpec::Serial(s.clone())));
    let mqtt = cfg
        .sources
        .mqtt
        .iter()
        .map(|s| (s.name.clone(), SourceSpec::Mqtt(s.clone())));
    let modbus = cfg
        .sources
        .modbus
        .iter()
        .map(|s| (s.display_name(), SourceSpec::Modbus(s.clone())));
    serial.chain(mqtt).chain(modbus).collect()
}

/// In configuration order: influx, mqtt, kafka, remote write.
fn sink_specs(cfg: &Config) -> Vec<(String, SinkSpec)> {
    let influx = cfg
        .sinks
        .influx
        .iter()
        .map(|s| (s.name.clone(), SinkSpec::Influx(s.clone())));
    let rw = cfg
        .sinks
        .remote_write
        .iter()
        .map(|s| (s.name.clone(), SinkSpec::RemoteWrite(s.clone())));
    let mqtt = cfg
        .sinks
        .mqtt
        .iter()
        .map(|s| (s.name.clone(), SinkSpec::Mqtt(s.clone())));
    let kafka = cfg
        .sinks
        .kafka
        .iter()
        .map(|s| (s.name.clone(), SinkSpec::Kafka(s.clone())));
    influx.chain(mqtt).chain(kafka).chain(rw).collect()
}

struct RunningSource {
    spec: SourceSpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// A serial source takes new settings while it runs (the port stays
    /// open unless its line settings change; see `source::serial`).
    serial: Option<tokio::sync::watch::Sender<SerialSourceConfig>>,
}

struct RunningSink {
    spec: SinkSpec,
    stopping: Stopping,
    task: JoinHandle<Result<(), StoreError>>,
}

/// A sink built and ready to start (building can fail: a CA file, a URL).
type Starter = Box<dyn FnOnce(&StoreHandle, &Metrics, &Stopping) -> RunningTask + Send>;
type RunningTask = JoinHandle<Result<(), StoreError>>;

/// What an apply changed, by name.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Sources started, restarted or stopped.
    pub sources: Vec<String>,
    /// Sinks started, restarted or stopped.
    pub sinks: Vec<String>,
    /// The store's limits changed.
    pub limits: bool,
}

/// The running sources and sinks, keyed by name, around one store that
/// never stops: [`Pipeline::apply`] restarts only what a new configuration changed.
pub struct Pipeline {
    cfg: Config,
    store: StoreHandle,
    metrics: Arc<Metrics>,
    sources: BTreeMap<String, RunningSource>,
    sinks: BTreeMap<String, RunningSink>,
}

impl Pipeline {
    /// The configuration running now.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether every source is connected (port open, broker connected).
    pub fn sources_connected(&self) -> bool {
        self.metrics
            .snapshot()
            .sources
            .iter()
            .filter(|s| self.sources.contains_key(&s.name))
            .all(|s| s.connected)
    }

    /// Moves to `new`: sinks are built first (an error leaves everything as
    /// it was), then removed or changed sources and sinks stop and new or
    /// changed ones start; unchanged ones and the store keep running. A
    /// stopped sink keeps its cursor (what it had not had acknowledged is
    /// sent again: at-least-once); a stopped source commits what it read.
    /// Settings that cannot change live are the caller's to refuse
    /// ([`crate::fleet::not_live`]).
    pub async fn apply(&mut self, new: &Config) -> anyhow::Result<Changes> {
        let mut changes = Changes::default();
        let sink_order = sink_specs(new);
        let new_sinks: BTreeMap<_, _> = sink_order.iter().cloned().collect();
        let mut starters: Vec<(String, SinkSpec, Starter)> = Vec::new();
        for (name, spec) in &sink_order {
            if self.sinks.get(name).map(|r| &r.spec) == Some(spec) {
                continue;
            }
            starters.push((
                name.clone(),
                spec.clone(),
                starter(spec, &new.agent.device)?,
            ));
        }
        let source_order = source_specs(new);
        let new_sources: BTreeMap<_, _> = source_order.iter().cloned().collect();
        let stale: Vec<String> = self
            .sources
            .iter()
            .filter(|(name, r)| new_sources.get(*name) != Some(&r.spec))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let r = self.sources.get_mut(&name).expect("listed above");
            if let (Some(tx), Some(SourceSpec::Serial(new))) = (&r.serial, new_sources.get(&name)) {
                // Changed in place: no reading is cut by a restart.
                let _ = tx.send(new.clone());
                r.spec = SourceSpec::Serial(new.clone());
                changes.sources.push(name);
                continue;
            }
            let r = self.sources.remove(&name).expect("listed above");
            r.stop.cancel();
            let _ = r.task.await;
            if !new_sources.contains_key(&name) {
                self.metrics.forget_source(&name);
            }
            // A Modbus bus also counts per device; a device gone from the
            // new map takes its counters with it.
            if let SourceSpec::Modbus(old) = &r.spec {
                let keep = match new_sources.get(&name) {
                    Some(SourceSpec::Modbus(new)) => new.device_stats_names(),
                    _ => vec![],
                };
                for d in old.device_stats_names() {
                    if !keep.contains(&d) {
                        self.metrics.forget_source(&d);
                    }
                }
            }
            changes.sources.push(name);
        }
        for (name, spec) in source_order {
            if self.sources.contains_key(&name) {
                continue;
            }
            let stop = CancellationToken::new();
            let stats = self.metrics.source(&name);
            let mut serial = None;
            let task = match &spec {
                SourceSpec::Serial(s) => {
                    let (tx, rx) = tokio::sync::watch::channel(s.clone());
                    serial = Some(tx);
                    tokio::spawn(crate::source::serial::run(
                        rx,
                        self.store.clone(),
                        stats,
                        stop.clone(),
                    ))
                }
                SourceSpec::Modbus(s) => tokio::spawn(crate::source::modbus::run(
                    s.clone(),
                    self.store.clone(),
                    self.metrics.clone(),
                    stats,
                    stop.clone(),
                )),
                SourceSpec::Mqtt(s) => tokio::spawn(crate::source::mqtt::run(
                    s.clone(),
                    new.agent.device.clone(),
                    self.store.clone(),
                    stats,
                    stop.clone(),
                )),
            };
            if !changes.sources.contains(&name) {
                changes.sources.push(name.clone());
            }
            self.sources.insert(
                name,
                RunningSource {
                    spec,
                    stop,
                    task,
                    serial,
                },
            );
        }
        let stale: Vec<String> = self
            .sinks
            .iter()
            .filter(|(name, r)| new_sinks.get(*name) != Some(&r.spec))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let r = self.sinks.remove(&name).expect("listed above");
            r.stopping.abort.cancel();
            if let Ok(Err(e)) = r.task.await {
                warn!(sink = %name, "sink stopped with an error: {e}");
            }
            if !new_sinks.contains_key(&name) {
                self.metrics.forget_sink(&name);
            }
            changes.sinks.push(name);
        }
        for (name, spec, start) in starters {
            let stopping = Stopping::default();
            let task = start(&self.store, &self.metrics, &stopping);
            if !changes.sinks.contains(&name) {
                changes.sinks.push(name.clone());
            }
            self.sinks.insert(
                name,
                RunningSink {
                    spec,
                    stopping,
                    task,
                },
            );
        }
        if limits(new) != limits(&self.cfg) {
            let l = limits(new);
            self.store
                .with(move |s| {
                    s.set_limits(l);
                    Ok(())
                })
                .await?;
            changes.limits = true;
        }
        self.cfg = new.clone();
        Ok(changes)
    }

    /// Stops sources, flushes, lets the sinks drain within `timeout`, then
    /// aborts them; the store closes once every handle is gone.
    pub async fn shutdown(self, timeout: std::time::Duration) {
        for r in self.sources.values() {
            r.stop.cancel();
        }
        for (_, r) in self.sources {
            let _ = r.task.await;
        }
        if let Err(e) = self.store.flush().await {
            warn!("last flush failed: {e}");
        }
        drop(self.store);
        for r in self.sinks.values() {
            r.stopping.drain.cancel();
        }
        let mut tasks: Vec<_> = self.sinks.into_values().collect();
        let drained = tokio::time::timeout(timeout, async {
            for r in &mut tasks {
                if let Ok(Err(e)) = (&mut r.task).await {
                    warn!("sink stopped with an error: {e}");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                "sinks did not catch up within {timeout:?}; the rest stays in the store for next time"
            );
            for r in &tasks {
                r.stopping.abort.cancel();
            }
            for r in tasks {
                let _ = r.task.await;
            }
        }
    }
}

/// Builds the sink of `spec` now, and returns what starts its engine.
fn starter(spec: &SinkSpec, device: &str) -> anyhow::Result<Starter> {
    fn boxed<S: Sink>(sink: S, engine: DeliveryConfig) -> Starter {
        Box::new(move |store, metrics, stopping| {
            let stats = metrics.sink(&engine.name);
            tokio::spawn(sync::run_sink(
                sink,
                engine,
                store.clone(),
                stats,
                stopping.clone(),
            ))
        })
    }
    Ok(match spec {
        SinkSpec::Influx(s) => boxed(InfluxSink::new(s)?, s.delivery()),
        SinkSpec::RemoteWrite(s) => boxed(RemoteWriteSink::new(s)?, s.delivery()),
        SinkSpec::Mqtt(s) => boxed(crate::sync::mqtt::MqttSink::new(s, device)?, s.delivery()),
        SinkSpec::Kafka(s) => boxed(crate::sync::kafka::KafkaSink::new(s, device)?, s.engine()),
    })
}

/// Cancels the returned token on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
        t.cancel();
    });
    Ok(token)
}
