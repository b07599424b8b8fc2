//! MQTT uplink to a cloud broker: each batch is one QoS 1 message (line
//! protocol, or a JSON array), and it counts as sent when the broker's PUBACK
//! for it arrives.
//!
//! rumqttc numbers publishes itself, in the order they are queued, and
//! reports each number as it goes out (`Outgoing::Publish(pkid)`). So a send
//! queues its message and a waiter under one lock (the order of the waiters
//! is the order of the numbers), and the event loop task moves each waiter
//! to its number when the publish goes out and wakes it on the PUBACK. When
//! the connection drops, the waiters of messages on the wire are told to
//! retry (the engine resends: at-least-once); rumqttc reconnects by itself.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::debug;

use super::{influx::write_line, Sink, SinkError};
use crate::config::{MqttSinkConfig, UplinkFormat};
use crate::point::Point;

type Waiter = oneshot::Sender<Result<(), SinkError>>;

/// Sends waiting for their message's number, then for its PUBACK.
#[derive(Default)]
struct Waiters {
    queued: VecDeque<Waiter>,
    on_wire: HashMap<u16, Waiter>,
    /// Numbers of messages whose waiters were told to retry when the
    /// connection dropped: rumqttc sends them again under the same number
    /// after reconnecting, and that resend must not take a new waiter.
    resent: HashSet<u16>,
}

/// A publishing connection to one broker.
pub struct MqttSink {
    client: AsyncClient,
    topic: String,
    format: UplinkFormat,
    timeout: Duration,
    waiters: Arc<Mutex<Waiters>>,
    task: JoinHandle<()>,
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttSink {
    /// Connects (in the background) with the sink's settings.
    pub fn new(cfg: &MqttSinkConfig, device: &str) -> anyhow::Result<MqttSink> {
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("tidegate-{device}-{}", cfg.name));
        let what = format!("sink {}", cfg.name);
        let mut opts = crate::mqtt::connection!(cfg, what, client_id).options()?;
        // A batch is one message: let large ones through.
        opts.set_max_packet_size(64 << 20, 64 << 20)
            .set_inflight(cfg.max_in_flight.clamp(1, u16::MAX as usize) as u16);
        let (client, eventloop) = AsyncClient::new(opts, 64);
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let task = tokio::spawn(drive(eventloop, waiters.clone(), cfg.backoff_max));
        Ok(MqttSink {
            client,
            topic: cfg.topic.replace("{device}", device),
            format: cfg.format,
            timeout: cfg.timeout,
            waiters,
            task,
        })
    }
}

/// Polls the connection: numbers to waiters, PUBACKs to answers, drops to retries.
async fn drive(mut eventloop: EventLoop, waiters: Arc<Mutex<Waiters>>, backoff_max: Duration) {
    let mut backoff = super::Backoff::new(Duration::from_millis(100), backoff_max);
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut w = waiters.lock().unwrap();
                if !w.resent.remove(&pkid) {
                    if let Some(waiter) = w.queued.pop_front() {
                        w.on_wire.insert(pkid, waiter);
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(waiter) = waiters.lock().unwrap().on_wire.remove(&ack.pkid) {
                    let _ = waiter.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => backoff.reset(),
            Ok(_) => {}
            Err(e) => {
                debug!("uplink broker connection: {e}");
                let reason = format!("broker connection failed: {e}");
                {
                    let mut w = waiters.lock().unwrap();
                    let failed: Vec<(u16, Waiter)> = w.on_wire.drain().collect();
                    for (pkid, waiter) in failed {
                        w.resent.insert(pkid);
                        let _ = waiter.send(Err(SinkError::Retryable {
                            reason: reason.clone(),
                            retry_after: None,
                        }));
                    }
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// One point as a JSON row: `{"measurement":..,"tags":{..},"field":..,"ts":ns,"value":..}`.
pub(crate) fn json_row(p: &Point) -> serde_json::Value {
    let parts = p.series.parts();
    let tags: serde_json::Map<String, serde_json::Value> =
        parts.tags.into_iter().map(|(k, v)| (k, v.into())).collect();
    serde_json::json!({
        "measurement": parts.measurement,
        "tags": tags,
        "field": parts.field,
        "ts": p.ts_ns,
        "value": p.value,
    })
}

impl Sink for MqttSink {
    fn encode(&self, points: &[Point]) -> Vec<u8> {
        match self.format {
            UplinkFormat::Lp => {
                let mut s = String::with_capacity(points.len() * 64);
                for p in points {
                    write_line(&mut s, p);
                }
                s.into_bytes()
            }
            UplinkFormat::Json => {
                let rows: Vec<serde_json::Value> = points.iter().map(json_row).collect();
                serde_json::to_vec(&rows).expect("JSON of numbers and strings")
            }
        }
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), SinkError> {
        let (tx, rx) = oneshot::channel();
        {
            // Queue the waiter and the message under one lock, so waiters
            // line up with the numbers rumqttc gives the messages.
            let mut w = self.waiters.lock().unwrap();
            if let Err(e) = self
                .client
                .try_publish(&self.topic, QoS::AtLeastOnce, false, body)
            {
                return Err(SinkError::Retryable {
                    reason: format!("cannot queue the message: {e}"),
                    retry_after: Some(Duration::from_millis(200)),
                });
            }
            w.queued.push_back(tx);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SinkError::Retryable {
                reason: "the broker connection was reset".into(),
                retry_after: None,
            }),
            Err(_) => Err(SinkError::Retryable {
                reason: format!("no PUBACK within {:?}", self.timeout),
                retry_after: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::SeriesKey;

    #[tokio::test]
    async fn json_rows_carry_unescaped_parts() {
        let cfg: MqttSinkConfig = toml::from_str(
            "name = \"c\"\nurl = \"mqtt://127.0.0.1:1\"\ntopic = \"t/{device}\"\nformat = \"json\"\n",
        )
        .unwrap();
        let sink = MqttSink::new(&cfg, "gw1").unwrap();
        assert_eq!(sink.topic, "t/gw1");
        let body = sink.encode(&[Point {
            series: SeriesKey::new("env", [("site", "lab 1")], "temp"),
            ts_ns: 5,
            value: 21.5,
        }]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"measurement":"env","tags":{"site":"lab 1"},"field":"temp","ts":5,"value":21.5}])
        );
    }
}
