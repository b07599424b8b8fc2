//! MQTT clients for tests: a subscriber (rumqttc on its own thread) collects every
//! message of a topic filter, QoS 1, and is ready once the broker granted
//! the subscription.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Messages received so far, in arrival order.
pub struct Subscriber {
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes to `filter` on the broker at 127.0.0.1:`port`; returns once
    /// the SUBACK arrived (panics after 10 s).
    pub fn start(port: u16, filter: &str) -> Subscriber {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (m, filter) = (messages.clone(), filter.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                static N: AtomicUsize = AtomicUsize::new(0);
                let id = format!(
                    "test-sub-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Relaxed)
                );
                let mut o = MqttOptions::new(id, "127.0.0.1", port);
                o.set_max_packet_size(64 << 20, 64 << 20);
                let (client, mut events) = AsyncClient::new(o, 16);
                client.subscribe(&filter, QoS::AtLeastOnce).await.unwrap();
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = ready_tx.send(());
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            m.lock().unwrap().push(p.payload.to_vec());
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the broker grants the subscription");
        Subscriber {
            messages,
            _thread: thread,
        }
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.messages.lock().unwrap().clone()
    }
}

/// Publishes `messages` (topic, payload) in order at QoS 1 to the broker at
/// 127.0.0.1:`port`; returns once the broker acknowledged every one.
pub fn publish(port: u16, messages: Vec<(String, Vec<u8>)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let id = format!("test-pub-{}", std::process::id());
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_max_packet_size(64 << 20, 64 << 20);
        let (client, mut events) = AsyncClient::new(o, messages.len().max(1));
        let n = messages.len();
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        let mut acked = 0;
        let wait = async {
            while acked < n {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publishing to the broker failed: {e}"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("the broker acknowledges every message");
        let _ = client.disconnect().await;
    });
}
