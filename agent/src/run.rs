//! Wires a configuration into running tasks: sources → store → sinks, plus the
//! control socket; and takes them down in order on shutdown.

use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, DeliveryConfig};
use crate::ops::health::Health;
use crate::ops::{control, notify, Metrics, Status};
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
    let store_path = cfg.store_path();
    let (mut store, _moved_aside) = Store::open_or_recover(&store_path, metrics.clone())
        .with_context(|| format!("cannot open the store at {}", store_path.display()))?;
    store.set_journal_mode(cfg.store.journal)?;
    store.set_tiers(&cfg.store.rollup_widths());
    store.set_limits(store::Limits {
        max_disk_bytes: cfg.store.max_disk_bytes.0,
        max_age_ns: cfg.store.max_age.map(|d| d.as_nanos() as i64),
        min_free_disk: cfg.store.min_free_disk.0,
        dead_letters: cfg.store.dead_letters,
    });
    let (handle, store_task) = store::spawn(store, &cfg.store);

    let stop_sources = CancellationToken::new();
    let mut sources = JoinSet::new();
    for s in &cfg.sources.serial {
        let stats = metrics.source(&s.display_name());
        sources.spawn(crate::source::serial::run(
            s.clone(),
            handle.clone(),
            stats,
            stop_sources.clone(),
        ));
    }
    for s in &cfg.sources.mqtt {
        let stats = metrics.source(&s.name);
        sources.spawn(crate::source::mqtt::run(
            s.clone(),
            cfg.agent.device.clone(),
            handle.clone(),
            stats,
            stop_sources.clone(),
        ));
    }

    // The store writer counts as stalled after this long without a heartbeat
    // (the systemd watchdog and /healthz).
    let stall_after = cfg.store.flush_interval * 3 + std::time::Duration::from_secs(2);
    let health = Arc::new(Health::new(
        metrics.clone(),
        handle.heartbeat(),
        stall_after,
    ));

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
            stop_sources.clone(),
        )
        .await?;
        sources.spawn(async move {
            server.await;
        });
    }

    // The clock watch stops with the sources.
    sources.spawn(crate::ops::clock::run(
        metrics.clone(),
        stop_sources.clone(),
    ));

    let stopping = Stopping::default();
    let mut sinks = JoinSet::new();
    for s in &cfg.sinks.influx {
        spawn_sink(
            &mut sinks,
            InfluxSink::new(s)?,
            s.delivery(),
            &handle,
            &metrics,
            &stopping,
        );
    }
    for s in &cfg.sinks.mqtt {
        let sink = crate::sync::mqtt::MqttSink::new(s, &cfg.agent.device)?;
        spawn_sink(&mut sinks, sink, s.delivery(), &handle, &metrics, &stopping);
    }
    for s in &cfg.sinks.remote_write {
        spawn_sink(
            &mut sinks,
            RemoteWriteSink::new(s)?,
            s.delivery(),
            &handle,
            &metrics,
            &stopping,
        );
    }

    let stop_control = CancellationToken::new();
    let socket = cfg.control_socket();
    let control = tokio::spawn(control::serve(
        socket.clone(),
        metrics.clone(),
        handle.tap(),
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
    info!(store = %store_path.display(), socket = %socket.display(), sources = cfg.sources.serial.len() + cfg.sources.mqtt.len(), sinks = sinks.len(), "tidegate running");

    // systemd (Type=notify): ready now that the store is open and the sources
    // started; then STATUS every second and WATCHDOG while the writer moves.
    let notifier = notify::Notifier::from_env();
    notifier.ready();
    let stop_notify = CancellationToken::new();
    let supervisor = tokio::spawn(notify::supervise(
        notifier.clone(),
        metrics.clone(),
        handle.heartbeat(),
        stall_after,
        stop_notify.clone(),
    ));

    shutdown.cancelled().await;
    stop_notify.cancel();
    let _ = supervisor.await;
    notifier.stopping();
    info!("stopping: sources first, then a last flush and sync");
    stop_sources.cancel();
    while sources.join_next().await.is_some() {}
    if let Err(e) = handle.flush().await {
        warn!("last flush failed: {e}");
    }
    drop(handle);
    stopping.drain.cancel();
    let drained = tokio::time::timeout(cfg.agent.shutdown_timeout, async {
        while let Some(r) = sinks.join_next().await {
            if let Ok(Err(e)) = r {
                warn!("sink stopped with an error: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            "sinks did not catch up within {:?}; the rest stays in the store for next time",
            cfg.agent.shutdown_timeout
        );
        stopping.abort.cancel();
        while sinks.join_next().await.is_some() {}
    }
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

/// Runs the engine for one sink in `tasks`.
fn spawn_sink<S: Sink>(
    tasks: &mut JoinSet<Result<(), StoreError>>,
    sink: S,
    engine: DeliveryConfig,
    store: &StoreHandle,
    metrics: &Metrics,
    stopping: &Stopping,
) {
    let stats = metrics.sink(&engine.name);
    tasks.spawn(sync::run_sink(
        sink,
        engine,
        store.clone(),
        stats,
        stopping.clone(),
    ));
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
