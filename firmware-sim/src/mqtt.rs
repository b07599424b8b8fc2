//! A fleet of simulated devices publishing readings to an MQTT broker.
//!
//! Device `sNN` of site `siteK` publishes on `<prefix>/siteK/sNN/<field>`
//! (bare numbers, one message a field) or `<prefix>/siteK/sNN` (JSON or line
//! protocol, one message a reading; `lp-field`: one a field), QoS 1; or, for
//! collectd's MQTT input, `<prefix>/siteK/sensor-sNN/gauge-<field>` with a
//! PUTVAL value list. The ledger holds one entry a reading (or garbage
//! message), as for the PTY, plus the site.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

use crate::{now_ms, Framing, Generator, LedgerEntry, SimConfig, SimStats};

/// How a reading is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MqttFormat {
    /// One message a field, payload `21.53`, topic `.../<device>/<field>`.
    Number,
    /// `{"ts":1764053000123,"temp":21.53,"hum":40.2}` on `.../<device>`.
    Json,
    /// `env temp=21.53,hum=40.2 1764053000123` (ms) on `.../<device>`.
    Lp,
    /// One message a field, `env temp=21.53 1764053000123` (ms) on
    /// `.../<device>`: one point a message, as collectd gets them.
    LpField,
    /// collectd's MQTT input: one message a field, a PUTVAL value list
    /// `1764053000.123:21.53` on `<prefix>/<site>/sensor-<device>/gauge-<field>`
    /// (collectd reads the last three levels as host, plugin-instance and
    /// type-instance; `gauge` is in its types.db).
    Collectd,
}

/// What to publish, where.
#[derive(Clone, Debug)]
pub struct MqttSimConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// CA of the broker's certificate, for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Devices `s01`, `s02`, ...
    pub devices: usize,
    /// Sites `site1`..: device `i` is at site `i % sites + 1`.
    pub sites: usize,
    /// Readings per second over all devices.
    pub rate: f64,
    /// Stop after this many readings (valid and garbage).
    pub count: Option<u64>,
    /// Payload format.
    pub format: MqttFormat,
    /// Probability (0..1) that a reading is replaced by a garbage message.
    pub garbage_rate: f64,
    /// Seed of values and garbage.
    pub seed: u64,
    /// First topic level.
    pub prefix: String,
    /// MQTT client id (a persistent session, so nothing is lost on reconnect).
    pub client_id: String,
}

/// Publishes until `count` readings are sent and acknowledged by the broker
/// (then sets `stats.done`) or `stop` is set. The ledger is flushed on return.
pub fn run(
    cfg: &MqttSimConfig,
    ledger: Option<BufWriter<File>>,
    stats: Arc<SimStats>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(publish(cfg, ledger, stats, stop))
}

fn options(cfg: &MqttSimConfig) -> io::Result<MqttOptions> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    let (tls, rest) = if let Some(r) = cfg.url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = cfg.url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad(format!("{}: expected mqtt:// or mqtts://", cfg.url)));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| bad(format!("bad port in {}", cfg.url)))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    let mut o = MqttOptions::new(cfg.client_id.clone(), host, port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_inflight(1000);
    if tls {
        let ca = match &cfg.ca_file {
            Some(p) => std::fs::read(p)?,
            None => return Err(bad("mqtts:// needs --ca-file".into())),
        };
        o.set_transport(Transport::tls(ca, None, None));
    }
    Ok(o)
}

async fn publish(
    cfg: &MqttSimConfig,
    mut ledger: Option<BufWriter<File>>,
    stats: Arc<SimStats>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let (client, mut eventloop) = AsyncClient::new(options(cfg)?, 4096);
    let acked = Arc::new(AtomicU64::new(0));
    let acks = acked.clone();
    let stopping = stop.clone();
    let poller = tokio::spawn(async move {
        let mut down = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if down {
                        eprintln!("firmware-sim: broker back");
                    }
                    down = false;
                }
                Ok(_) => {}
                Err(e) => {
                    if !down && !stopping.load(Ordering::Relaxed) {
                        eprintln!("firmware-sim: broker connection: {e}; retrying");
                    }
                    down = true;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let sim = SimConfig {
        sensors: cfg.devices.max(1),
        rate: cfg.rate,
        framing: Framing::Json,
        garbage_rate: 0.0,
        seed: cfg.seed,
        ..SimConfig::default()
    };
    let mut generator = Generator::new(&sim)?;
    let mut rng = fastrand::Rng::with_seed(cfg.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut published = 0u64;
    let mut sent = 0u64;
    let start = Instant::now();
    let result: io::Result<()> = async {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if cfg.count.is_some_and(|c| sent >= c) {
                break;
            }
            let due = generator
                .due_lines(start.elapsed(), sent)
                .min(cfg.count.map_or(u64::MAX, |c| c - sent))
                .min(1000);
            if due == 0 {
                if let Some(l) = &mut ledger {
                    l.flush()?;
                }
                let wait = generator.until_next(start.elapsed(), sent);
                tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
                continue;
            }
            let now = now_ms();
            for _ in 0..due {
                let mut entry = generator.next(now, sent).entry;
                let sensor = entry.sensor.clone().unwrap_or_default();
                let index: usize = sensor.trim_start_matches('s').parse().unwrap_or(1);
                let site = format!("site{}", (index - 1) % cfg.sites.max(1) + 1);
                entry.site = Some(site.clone());
                let base = format!("{}/{site}/{sensor}", cfg.prefix);
                let messages = if cfg.garbage_rate > 0.0 && rng.f64() < cfg.garbage_rate {
                    let (topic, payload) = garbage(cfg.format, &base, &entry, &mut rng);
                    entry = LedgerEntry {
                        valid: false,
                        ts: None,
                        fields: None,
                        line: Some(String::from_utf8_lossy(&payload).into_owned()),
                        ..entry
                    };
                    vec![(topic, payload)]
                } else {
                    valid(cfg.format, &base, &entry)
                };
                for (topic, payload) in messages {
                    client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .map_err(io::Error::other)?;
                    published += 1;
                }
                sent += 1;
                let counter = if entry.valid {
                    &stats.valid
                } else {
                    &stats.garbage
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if let Some(l) = &mut ledger {
                    serde_json::to_writer(&mut *l, &entry).map_err(io::Error::other)?;
                    l.write_all(b"\n")?;
                }
            }
        }
        // Done once the broker has every message.
        while acked.load(Ordering::Relaxed) < published {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(l) = &mut ledger {
            l.flush()?;
        }
        stats.done.store(true, Ordering::SeqCst);
        Ok(())
    }
    .await;
    if let Some(l) = &mut ledger {
        l.flush()?;
    }
    if result.is_ok() && !stop.load(Ordering::Relaxed) {
        // Stay connected until told to stop, as the PTY mode stays open.
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    poller.abort();
    result
}

/// The messages of a valid reading.
fn valid(format: MqttFormat, base: &str, e: &LedgerEntry) -> Vec<(String, Vec<u8>)> {
    let fields = e.fields.clone().unwrap_or_default();
    let ts = e.ts.unwrap_or(0);
    match format {
        MqttFormat::Number => fields
            .iter()
            .map(|(k, v)| (format!("{base}/{k}"), format!("{v}").into_bytes()))
            .collect(),
        MqttFormat::Json => {
            let mut m = serde_json::Map::new();
            m.insert("ts".into(), ts.into());
            for (k, v) in &fields {
                m.insert(k.clone(), (*v).into());
            }
            vec![(base.to_string(), serde_json::to_vec(&m).unwrap_or_default())]
        }
        MqttFormat::Lp => {
            let set: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![(
                base.to_string(),
                format!("env {} {ts}", set.join(",")).into_bytes(),
            )]
        }
        MqttFormat::LpField => fields
            .iter()
            .map(|(k, v)| (base.to_string(), format!("env {k}={v} {ts}").into_bytes()))
            .collect(),
        MqttFormat::Collectd => {
            let (host, sensor) = collectd_levels(e);
            let (secs, ms) = (ts.div_euclid(1000), ts.rem_euclid(1000));
            fields
                .iter()
                .map(|(k, v)| {
                    (
                        format!("{}/{host}/sensor-{sensor}/gauge-{k}", collectd_prefix(base)),
                        format!("{secs}.{ms:03}:{v}").into_bytes(),
                    )
                })
                .collect()
        }
    }
}

/// The site (collectd's host) and the device of a ledger entry.
fn collectd_levels(e: &LedgerEntry) -> (&str, &str) {
    (
        e.site.as_deref().unwrap_or("site1"),
        e.sensor.as_deref().unwrap_or("s01"),
    )
}

/// The prefix of `base` (`<prefix>/<site>/<device>`).
fn collectd_prefix(base: &str) -> &str {
    base.rsplitn(3, '/').last().unwrap_or(base)
}

/// One message the agent must reject, on the topic a reading would use.
fn garbage(
    format: MqttFormat,
    base: &str,
    e: &LedgerEntry,
    rng: &mut fastrand::Rng,
) -> (String, Vec<u8>) {
    let ts = e.ts.unwrap_or(0);
    let pick = |rng: &mut fastrand::Rng, v: &[&str]| v[rng.usize(0..v.len())].to_string();
    match format {
        MqttFormat::Number => {
            let mut p = pick(
                rng,
                &["21.5x", "nan", "", "--3", "inf", "{\"temp\":1}", "0x1F"],
            )
            .into_bytes();
            if rng.u8(0..6) == 0 {
                p = b"\xff21.5".to_vec();
            }
            (format!("{base}/temp"), p)
        }
        MqttFormat::Json => {
            let good = format!("{{\"ts\":{ts},\"temp\":21.5,\"hum\":40.2}}");
            let p = match rng.u8(0..5) {
                0 => good[..rng.usize(1..good.len())].to_string().into_bytes(),
                1 => format!("{{\"ts\":{ts},\"temp\":\"hot\"}}").into_bytes(),
                2 => b"NaN".to_vec(),
                3 => format!("{{\"ts\":{ts}.5,\"temp\":1}}").into_bytes(),
                _ => {
                    let mut v = good.into_bytes();
                    v.insert(0, 0xff);
                    v
                }
            };
            (base.to_string(), p)
        }
        MqttFormat::Collectd => {
            let (host, sensor) = collectd_levels(e);
            let p = pick(rng, &["abc", "1764053000", ":", "N:1:2:3", "1764053000:x"]);
            (
                format!(
                    "{}/{host}/sensor-{sensor}/gauge-temp",
                    collectd_prefix(base)
                ),
                p.into_bytes(),
            )
        }
        MqttFormat::Lp | MqttFormat::LpField => {
            let p = match rng.u8(0..5) {
                0 => format!("env temp=21.5x {ts}"),
                1 => format!("env temp=\"hot\" {ts}"),
                2 => format!("env {ts}"),
                3 => "env temp=1 12x".to_string(),
                _ => format!("env,site= temp=1 {ts}"),
            };
            (base.to_string(), p.into_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> LedgerEntry {
        LedgerEntry {
            seq: 0,
            valid: true,
            sensor: Some("s07".into()),
            site: Some("site2".into()),
            ts: Some(1_764_053_000_023),
            fields: Some([("hum".to_string(), 40.5), ("temp".to_string(), 21.53)].into()),
            line: None,
        }
    }

    #[test]
    fn collectd_messages_are_putval_gauges_under_host_plugin_type() {
        let m = valid(MqttFormat::Collectd, "bench/c/site2/s07", &entry());
        assert_eq!(
            m,
            vec![
                (
                    "bench/c/site2/sensor-s07/gauge-hum".to_string(),
                    b"1764053000.023:40.5".to_vec()
                ),
                (
                    "bench/c/site2/sensor-s07/gauge-temp".to_string(),
                    b"1764053000.023:21.53".to_vec()
                ),
            ]
        );
    }

    #[test]
    fn lp_field_sends_one_point_a_message() {
        let m = valid(MqttFormat::LpField, "b/site2/s07", &entry());
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].0, "b/site2/s07");
        assert_eq!(m[1].1, b"env temp=21.53 1764053000023".to_vec());
    }
}
