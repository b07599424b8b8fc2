//! What the simulated firmware says, and when: pure, time passed in.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use crate::{Framing, LedgerEntry, SimConfig};

/// One line to send and its ledger entry.
#[derive(Debug, Clone)]
pub struct Emitted {
    /// The bytes of the line, without its `\n`.
    pub line: Vec<u8>,
    /// What the ledger records for it.
    pub entry: LedgerEntry,
}

/// The state of every simulated sensor.
pub struct Generator {
    framing: Framing,
    garbage_rate: f64,
    rng: fastrand::Rng,
    rate: f64,
    sensors: Vec<Sensor>,
    next_sensor: usize,
    /// Replay rows (ts ms, value text) and the speed-up, instead of synthetic signals.
    replay: Option<(Vec<(i64, String)>, f64)>,
}

struct Sensor {
    id: String,
    /// Random-walk drift of the temperature, °C.
    drift: f64,
    /// Phase of the daily cycle, so sensors differ.
    phase: f64,
    last_ts: i64,
}

impl Generator {
    /// A generator for `cfg`; reads the replay CSV, if any.
    pub fn new(cfg: &SimConfig) -> io::Result<Generator> {
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let sensors = (0..cfg.sensors.max(1))
            .map(|i| Sensor {
                id: format!("s{:02}", i + 1),
                drift: 0.0,
                phase: rng.f64() * std::f64::consts::TAU,
                last_ts: i64::MIN,
            })
            .collect();
        let replay = match &cfg.replay {
            Some(path) => Some((read_csv(path)?, cfg.speedup.max(1e-9))),
            None => None,
        };
        Ok(Generator {
            framing: cfg.framing,
            garbage_rate: cfg.garbage_rate,
            rng,
            rate: cfg.rate.max(1e-9),
            sensors,
            next_sensor: 0,
            replay,
        })
    }

    /// Lines due after `elapsed` since the start, given `sent` already sent.
    pub fn due_lines(&self, elapsed: Duration, sent: u64) -> u64 {
        match &self.replay {
            Some((rows, speedup)) => {
                let t0 = rows.first().map(|r| r.0).unwrap_or(0);
                let horizon = t0 + (elapsed.as_secs_f64() * 1000.0 * speedup) as i64;
                let due = rows.partition_point(|r| r.0 <= horizon) as u64;
                // Past the end of the file: nothing more is ever due.
                due.saturating_sub(sent)
            }
            None => ((elapsed.as_secs_f64() * self.rate) as u64).saturating_sub(sent),
        }
    }

    /// How long until the next line is due.
    pub fn until_next(&self, elapsed: Duration, sent: u64) -> Duration {
        let at = match &self.replay {
            Some((rows, speedup)) => match rows.get(sent as usize) {
                Some(r) => (r.0 - rows[0].0) as f64 / 1000.0 / speedup,
                None => return Duration::from_millis(50),
            },
            None => (sent + 1) as f64 / self.rate,
        };
        Duration::from_secs_f64((at - elapsed.as_secs_f64()).max(0.0))
    }

    /// The line number `seq`, at wall time `now_ms`.
    pub fn next(&mut self, now_ms: i64, seq: u64) -> Emitted {
        if self.garbage_rate > 0.0 && self.rng.f64() < self.garbage_rate {
            let line = self.garbage(now_ms);
            let entry = LedgerEntry {
                seq,
                valid: false,
                sensor: None,
                ts: None,
                fields: None,
                line: Some(String::from_utf8_lossy(&line).into_owned()),
            };
            return Emitted { line, entry };
        }
        let (sensor, ts, fields) = self.reading(now_ms, seq);
        let line = self.format(&sensor, ts, &fields);
        let values = fields
            .iter()
            .map(|(k, text)| (k.clone(), text.parse::<f64>().expect("we print numbers")))
            .collect::<BTreeMap<_, _>>();
        Emitted {
            line,
            entry: LedgerEntry {
                seq,
                valid: true,
                sensor: Some(sensor),
                ts: Some(ts),
                fields: Some(values),
                line: None,
            },
        }
    }

    /// A reading: sensor id, timestamp (ms) and field texts exactly as printed.
    fn reading(&mut self, now_ms: i64, seq: u64) -> (String, i64, Vec<(String, String)>) {
        if let Some((rows, _)) = &self.replay {
            let (ts, text) = rows[(seq as usize).min(rows.len() - 1)].clone();
            return ("s01".into(), ts, vec![("value".into(), text)]);
        }
        let i = self.next_sensor;
        self.next_sensor = (i + 1) % self.sensors.len();
        let noise_t = self.gauss() * 0.05;
        let noise_h = self.gauss() * 0.3;
        let step = self.gauss() * 0.002;
        let s = &mut self.sensors[i];
        // Strictly increasing per sensor, so (sensor, ts) names one reading.
        let ts = now_ms.max(s.last_ts + 1);
        s.last_ts = ts;
        s.drift = (s.drift + step).clamp(-2.0, 2.0);
        let day = (ts as f64 / 86_400_000.0) * std::f64::consts::TAU + s.phase;
        let temp = 21.0 + 3.0 * day.sin() + s.drift + noise_t;
        let hum = 50.0 - 12.0 * day.sin() + noise_h;
        // Quantise like an ADC: integer counts, printed as short decimals.
        let temp = decimal((temp * 100.0).round() as i64, 2);
        let hum = decimal((hum.clamp(30.0, 70.0) * 10.0).round() as i64, 1);
        (
            s.id.clone(),
            ts,
            vec![("temp".into(), temp), ("hum".into(), hum)],
        )
    }

    fn format(&self, sensor: &str, ts: i64, fields: &[(String, String)]) -> Vec<u8> {
        let mut s = String::with_capacity(64);
        match self.framing {
            Framing::Kv => {
                s.push_str(&format!("sensor={sensor} ts={ts}"));
                for (k, v) in fields {
                    s.push_str(&format!(" {k}={v}"));
                }
            }
            Framing::Json => {
                s.push_str(&format!("{{\"sensor\":\"{sensor}\",\"ts\":{ts}"));
                for (k, v) in fields {
                    s.push_str(&format!(",\"{k}\":{v}"));
                }
                s.push('}');
            }
        }
        s.into_bytes()
    }

    /// A line that the framing's grammar must reject.
    fn garbage(&mut self, now_ms: i64) -> Vec<u8> {
        let (sensor, ts, fields) = self.reading(now_ms, 0);
        let good = self.format(&sensor, ts, &fields);
        match self.rng.u8(0..5) {
            // Printable junk with no '=' and not JSON.
            0 => {
                let n = self.rng.usize(3..40);
                let mut v: Vec<u8> = (0..n).map(|_| self.rng.u8(b'A'..=b'z')).collect();
                v.retain(|&c| c != b'=' && c != b'{' && c != b'[');
                v.insert(0, b'#');
                v
            }
            // A reading cut short: kv leaves an empty value, JSON an open object.
            1 => match self.framing {
                Framing::Kv => format!("sensor={sensor} ts={ts} temp=").into_bytes(),
                Framing::Json => good[..good.len() / 2].to_vec(),
            },
            // A value that is not a finite number.
            2 => {
                let bad = ["21.5x", "nan", "inf", "-", "0x1F"][self.rng.usize(0..5)];
                match self.framing {
                    Framing::Kv => format!("sensor={sensor} ts={ts} temp={bad}").into_bytes(),
                    Framing::Json => {
                        format!("{{\"sensor\":\"{sensor}\",\"ts\":{ts},\"temp\":\"{bad}\"}}")
                            .into_bytes()
                    }
                }
            }
            // Line noise: bytes that are not UTF-8.
            3 => {
                let mut v = vec![0xff, 0xfe];
                v.extend_from_slice(&good);
                v
            }
            // The other framing's syntax.
            _ => match self.framing {
                Framing::Kv => b"{\"temp\":21.5}".to_vec(),
                Framing::Json => format!("sensor={sensor} temp=21.5").into_bytes(),
            },
        }
    }

    /// A standard normal draw (Box–Muller).
    fn gauss(&mut self) -> f64 {
        let u1 = self.rng.f64().max(1e-12);
        let u2 = self.rng.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Prints `count × 10^-decimals` without float noise: `decimal(2153, 2)` is "21.53".
fn decimal(count: i64, decimals: u32) -> String {
    let scale = 10i64.pow(decimals);
    let sign = if count < 0 { "-" } else { "" };
    let a = count.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        a / scale as u64,
        a % scale as u64,
        width = decimals as usize
    )
}

/// Reads a `timestamp,value` CSV (timestamps `YYYY-MM-DD HH:MM:SS`, UTC).
fn read_csv(path: &std::path::Path) -> io::Result<Vec<(i64, String)>> {
    let text = std::fs::read_to_string(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let Some((t, v)) = line.split_once(',') else {
            continue;
        };
        let ts = humantime::parse_rfc3339_weak(t.trim())
            .map_err(|e| io::Error::other(format!("{}:{}: {e}", path.display(), i + 1)))?;
        let ms = ts
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(io::Error::other)?
            .as_millis() as i64;
        let v = v.trim().to_string();
        if v.parse::<f64>().is_err() {
            return Err(io::Error::other(format!(
                "{}:{}: `{v}` is not a number",
                path.display(),
                i + 1
            )));
        }
        rows.push((ms, v));
    }
    if rows.is_empty() {
        return Err(io::Error::other(format!("{}: no rows", path.display())));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(framing: Framing, garbage: f64) -> SimConfig {
        SimConfig {
            sensors: 3,
            framing,
            garbage_rate: garbage,
            seed: 42,
            ..Default::default()
        }
    }

    /// The agent's grammar, restated independently: true if the line is a valid reading.
    fn valid_kv(line: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(line) else {
            return false;
        };
        let mut fields = 0;
        for tok in text.split_ascii_whitespace() {
            let Some((k, v)) = tok.split_once('=') else {
                return false;
            };
            if k.is_empty() {
                return false;
            }
            match k {
                "sensor" => {}
                "ts" => {
                    if v.parse::<i64>().is_err() {
                        return false;
                    }
                }
                _ => match v.parse::<f64>() {
                    Ok(x) if x.is_finite() => fields += 1,
                    _ => return false,
                },
            }
        }
        fields > 0
    }

    fn valid_json(line: &[u8]) -> bool {
        let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(line) else {
            return false;
        };
        let mut fields = 0;
        for (k, v) in m {
            match (k.as_str(), v) {
                ("sensor", serde_json::Value::String(_)) | ("ts", serde_json::Value::Number(_)) => {
                }
                (_, serde_json::Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {
                    fields += 1
                }
                _ => return false,
            }
        }
        fields > 0
    }

    #[test]
    fn garbage_is_always_rejected_and_readings_always_accepted() {
        for framing in [Framing::Kv, Framing::Json] {
            let mut g = Generator::new(&cfg(framing, 0.3)).unwrap();
            let valid = if framing == Framing::Kv {
                valid_kv
            } else {
                valid_json
            };
            let mut garbage = 0;
            for seq in 0..5000 {
                let e = g.next(1_764_000_000_000 + seq as i64, seq);
                assert!(!e.line.contains(&b'\n') && !e.line.contains(&b'\r'));
                assert!(!e.line.iter().all(u8::is_ascii_whitespace));
                assert_eq!(
                    valid(&e.line),
                    e.entry.valid,
                    "{:?}",
                    String::from_utf8_lossy(&e.line)
                );
                if !e.entry.valid {
                    garbage += 1;
                }
            }
            assert!(garbage > 1000, "{garbage}");
        }
    }

    #[test]
    fn ledger_values_are_what_the_line_says() {
        let mut g = Generator::new(&cfg(Framing::Kv, 0.0)).unwrap();
        for seq in 0..1000 {
            let e = g.next(1_764_000_000_000, seq);
            let text = String::from_utf8(e.line).unwrap();
            for tok in text.split(' ').skip(2) {
                let (k, v) = tok.split_once('=').unwrap();
                let want = e.entry.fields.as_ref().unwrap()[k];
                assert_eq!(v.parse::<f64>().unwrap().to_bits(), want.to_bits());
                assert!(v.len() <= 7, "short decimals: {v}");
            }
        }
    }

    #[test]
    fn timestamps_strictly_increase_per_sensor_and_seed_repeats() {
        let mut a = Generator::new(&cfg(Framing::Kv, 0.1)).unwrap();
        let mut b = Generator::new(&cfg(Framing::Kv, 0.1)).unwrap();
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        for seq in 0..3000 {
            // The clock stands still: timestamps must still move.
            let (x, y) = (a.next(1000, seq), b.next(1000, seq));
            assert_eq!(x.line, y.line, "same seed, same stream");
            if let (Some(s), Some(ts)) = (x.entry.sensor, x.entry.ts) {
                if let Some(prev) = last.insert(s, ts) {
                    assert!(ts > prev);
                }
            }
        }
    }

    #[test]
    fn pacing_follows_the_rate() {
        let g = Generator::new(&SimConfig {
            rate: 100.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(g.due_lines(Duration::from_millis(1000), 0), 100);
        assert_eq!(g.due_lines(Duration::from_millis(1000), 60), 40);
        assert_eq!(
            g.until_next(Duration::from_millis(0), 0),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn decimals_print_short() {
        assert_eq!(decimal(2153, 2), "21.53");
        assert_eq!(decimal(-5, 2), "-0.05");
        assert_eq!(decimal(400, 1), "40.0");
    }

    #[test]
    fn replays_a_real_recording() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/nab/speed_6005.csv");
        let mut g = Generator::new(&SimConfig {
            replay: Some(path),
            speedup: 300_000.0, // five minutes a millisecond
            ..Default::default()
        })
        .unwrap();
        let e = g.next(0, 0);
        assert!(e.entry.valid);
        assert_eq!(
            e.entry.fields.unwrap().keys().collect::<Vec<_>>(),
            ["value"]
        );
        assert!(g.due_lines(Duration::from_millis(1), 0) >= 1);
    }
}
