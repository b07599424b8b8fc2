//! What the simulated firmware says, and when: pure, with time passed in.
//!
//! Nothing here reads the clock or touches a file descriptor (apart from
//! loading a replay CSV once), so unit tests can check the exact bytes.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::Duration;

use crate::{Faults, Framing, LedgerEntry, SimConfig};

/// One line to send and its ledger entry.
#[derive(Debug, Clone)]
pub struct Emitted {
    /// The bytes of the line, without its `\n`.
    pub line: Vec<u8>,
    /// What the ledger records for it (`seq` as given to [`Generator::next`]).
    pub entry: LedgerEntry,
}

/// The state of every simulated sensor, and the pacing of the stream.
pub struct Generator {
    framing: Framing,
    garbage_rate: f64,
    rng: fastrand::Rng,
    rate: f64,
    sensors: Vec<Sensor>,
    next_sensor: usize,
    /// Replay rows and the speed-up, instead of synthetic signals.
    replay: Option<Replay>,
    faults: Faults,
    /// The last reading sent, for a duplicate.
    last_valid: Option<Emitted>,
    /// A reading held back (reordered) and the line number from which it goes.
    held: Option<(u64, Emitted)>,
}

struct Replay {
    /// (timestamp ms, value) per CSV row, in file order.
    rows: Vec<(i64, f64)>,
    speedup: f64,
}

struct Sensor {
    id: String,
    /// Random-walk drift of the temperature, °C.
    drift: f64,
    /// Phase of the daily cycle, so sensors differ.
    phase: f64,
    /// Last timestamp sent, to keep (sensor, ts) unique.
    last_ts: i64,
}

/// One reading before framing: sensor, timestamp, fields in print order.
struct Reading {
    sensor: String,
    ts: i64,
    fields: Vec<(&'static str, f64)>,
}

impl Generator {
    /// A generator for `cfg`; reads the replay CSV, if any.
    pub fn new(cfg: &SimConfig) -> io::Result<Generator> {
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let replay = match &cfg.replay {
            Some(path) => Some(Replay {
                rows: read_csv(path)?,
                speedup: if cfg.speedup > 0.0 { cfg.speedup } else { 1.0 },
            }),
            None => None,
        };
        // Replay is one sensor by definition; otherwise at least one.
        let n = if replay.is_some() {
            1
        } else {
            cfg.sensors.max(1)
        };
        let sensors = (0..n)
            .map(|i| Sensor {
                id: format!("s{:02}", i + 1),
                drift: 0.0,
                phase: rng.f64() * std::f64::consts::TAU,
                last_ts: i64::MIN,
            })
            .collect();
        Ok(Generator {
            framing: cfg.framing,
            garbage_rate: cfg.garbage_rate.clamp(0.0, 1.0),
            rng,
            rate: if cfg.rate > 0.0 { cfg.rate } else { 1.0 },
            sensors,
            next_sensor: 0,
            replay,
            faults: cfg.faults.clone(),
            last_valid: None,
            held: None,
        })
    }

    /// Lines due `elapsed` after the start of a run, given `sent` already sent
    /// in that run. Deadlines come from the start, so sleeping late never
    /// drifts the rate: a late wake-up just finds more lines due.
    pub fn due_lines(&self, elapsed: Duration, sent: u64) -> u64 {
        match &self.replay {
            Some(r) => {
                let horizon = r.rows[0].0 + (elapsed.as_secs_f64() * 1000.0 * r.speedup) as i64;
                let due = r.rows.partition_point(|row| row.0 <= horizon) as u64;
                due.saturating_sub(sent)
            }
            None => {
                let bursts = match self.faults.burst_every {
                    Some(every) if !every.is_zero() => {
                        (elapsed.as_secs_f64() / every.as_secs_f64()) as u64
                            * self.faults.burst_lines
                    }
                    _ => 0,
                };
                ((elapsed.as_secs_f64() * self.rate) as u64 + bursts).saturating_sub(sent)
            }
        }
    }

    /// How long after `elapsed` the next line is due (`sent` already sent).
    pub fn until_next(&self, elapsed: Duration, sent: u64) -> Duration {
        match self.deadline(sent) {
            Some(at) => at.saturating_sub(elapsed),
            None => Duration::from_millis(50),
        }
    }

    /// When, after the start of a run, line number `sent` of the run is due;
    /// `None` past the end of a replay.
    pub fn deadline(&self, sent: u64) -> Option<Duration> {
        let secs = match &self.replay {
            Some(r) => {
                let row = r.rows.get(sent as usize)?;
                (row.0 - r.rows[0].0) as f64 / 1000.0 / r.speedup
            }
            None => (sent + 1) as f64 / self.rate,
        };
        Some(Duration::from_secs_f64(secs.max(0.0)))
    }

    /// The byte that ends each line (frame) this generator makes.
    pub fn terminator(&self) -> u8 {
        self.framing.terminator()
    }

    /// True once a replay has sent all `sent` rows of its file; never for
    /// synthetic sensors.
    pub fn finished(&self, sent: u64) -> bool {
        self.replay
            .as_ref()
            .is_some_and(|r| sent >= r.rows.len() as u64)
    }

    /// The line number `seq` (replay: the CSV row `seq`), at wall time `now_ms`.
    pub fn next(&mut self, now_ms: i64, seq: u64) -> Emitted {
        if self.held.as_ref().is_some_and(|(due, _)| seq >= *due) {
            let (_, mut e) = self.held.take().expect("checked");
            e.entry.seq = seq;
            return e;
        }
        if self.garbage_rate > 0.0 && self.rng.f64() < self.garbage_rate {
            let line = self.garbage(now_ms, seq);
            return Self::invalid(seq, line);
        }
        if let Some(e) = self.fault(now_ms, seq) {
            return e;
        }
        let e = self.valid(now_ms, seq);
        self.last_valid = Some(e.clone());
        e
    }

    /// A fault instead of the next plain reading, if one is due (a roll of
    /// the dice for each kind configured).
    fn fault(&mut self, now_ms: i64, seq: u64) -> Option<Emitted> {
        let f = self.faults.clone();
        if self.roll(f.baud_mismatch) {
            let line = if self.framing == Framing::Binary {
                self.frame_garbage(now_ms, seq)
            } else {
                // Bits shifted as by a wrong baud rate; 0xff first: never UTF-8.
                let good = self.valid(now_ms, seq).line;
                let mut bytes: Vec<u8> = good.iter().map(|b| b.rotate_left(3) | 0x80).collect();
                bytes[0] = 0xff;
                bytes
            };
            return Some(Self::invalid(seq, line));
        }
        if self.roll(f.clock_jump) {
            let mut r = self.reading(now_ms, seq);
            r.ts += 3_600_000;
            let line = self.format(&r);
            return Some(Self::invalid(seq, line));
        }
        if self.roll(f.duplicate) {
            if let Some(mut e) = self.last_valid.clone() {
                e.entry.seq = seq;
                return Some(e);
            }
        }
        if self.held.is_none() && self.roll(f.reorder) {
            // Goes out after the sensor's next reading (round-robin).
            let held = self.valid(now_ms, seq);
            self.held = Some((seq + self.sensors.len() as u64 + 1, held));
        }
        None
    }

    /// True with probability `p` (no draw at all when `p` is 0, so a
    /// stream without faults is the same as before they existed).
    fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.f64() < p
    }

    fn invalid(seq: u64, line: Vec<u8>) -> Emitted {
        let entry = LedgerEntry {
            seq,
            valid: false,
            sensor: None,
            site: None,
            ts: None,
            fields: None,
            line: Some(String::from_utf8_lossy(&line).into_owned()),
        };
        Emitted { line, entry }
    }

    fn valid(&mut self, now_ms: i64, seq: u64) -> Emitted {
        let r = self.reading(now_ms, seq);
        let line = self.format(&r);
        let fields: BTreeMap<String, f64> =
            r.fields.iter().map(|&(k, v)| (k.to_string(), v)).collect();
        Emitted {
            line,
            entry: LedgerEntry {
                seq,
                valid: true,
                sensor: Some(r.sensor),
                site: None,
                ts: Some(r.ts),
                fields: Some(fields),
                line: None,
            },
        }
    }

    /// The next reading, round-robin over the sensors.
    fn reading(&mut self, now_ms: i64, seq: u64) -> Reading {
        if let Some(r) = &self.replay {
            let (ts, value) = r.rows[(seq as usize).min(r.rows.len() - 1)];
            let s = &mut self.sensors[0];
            // A CSV may repeat a timestamp; (sensor, ts) must stay unique.
            let ts = ts.max(s.last_ts.saturating_add(1));
            s.last_ts = ts;
            return Reading {
                sensor: s.id.clone(),
                ts,
                fields: vec![("value", value)],
            };
        }
        let i = self.next_sensor;
        self.next_sensor = (i + 1) % self.sensors.len();
        let noise_t = self.gauss() * 0.05;
        let noise_h = self.gauss() * 0.3;
        let step = self.gauss() * 0.01;
        let s = &mut self.sensors[i];
        // Strictly increasing per sensor, so (sensor, ts) names one reading.
        let ts = now_ms.max(s.last_ts.saturating_add(1));
        s.last_ts = ts;
        s.drift = (s.drift + step).clamp(-2.0, 2.0);
        let day = (ts as f64 / 86_400_000.0) * std::f64::consts::TAU + s.phase;
        let temp = 21.0 + 3.0 * day.sin() + s.drift + noise_t;
        let hum = (50.0 - 12.0 * day.sin() + noise_h).clamp(30.0, 70.0);
        // Quantise like an ADC: an integer count, turned into the f64 nearest
        // to its decimal text, so `{}` prints it short ("21.53", not
        // "21.530000000000001" as `count as f64 * 0.01` could).
        Reading {
            sensor: s.id.clone(),
            ts,
            fields: vec![("temp", quantise(temp, 2)), ("hum", quantise(hum, 1))],
        }
    }

    fn format(&self, r: &Reading) -> Vec<u8> {
        use std::fmt::Write;
        let mut s = String::with_capacity(64);
        match self.framing {
            Framing::Kv => {
                let _ = write!(s, "sensor={} ts={}", r.sensor, r.ts);
                for (k, v) in &r.fields {
                    // `{}` on f64 is the shortest text that parses back to it.
                    let _ = write!(s, " {k}={v}");
                }
            }
            Framing::Json => {
                // serde_json for every token, so quoting and number
                // formatting are exactly what a JSON parser reads back; keys
                // are written in this order rather than a map's sorted order.
                let _ = write!(s, "{{\"sensor\":{},\"ts\":{}", json(&r.sensor), r.ts);
                for (k, v) in &r.fields {
                    let _ = write!(s, ",{}:{}", json(k), json(v));
                }
                s.push('}');
            }
            Framing::Lp => {
                let _ = write!(s, "sim,sensor={} ", r.sensor);
                for (i, (k, v)) in r.fields.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    let _ = write!(s, "{sep}{k}={v}");
                }
                let _ = write!(s, " {}", r.ts);
            }
            Framing::Csv => {
                // Header `sensor,ts,temp,hum` (not sent); replays have one
                // field, `value`, and the header `sensor,ts,value`.
                let _ = write!(s, "{},{}", r.sensor, r.ts);
                for (_, v) in &r.fields {
                    let _ = write!(s, ",{v}");
                }
            }
            Framing::Binary => {
                let p = crate::frame::postcard_reading(&r.sensor, Some(r.ts), &r.fields);
                return crate::frame::seal(&p);
            }
        }
        s.into_bytes()
    }

    /// A line that the framing's grammar rejects: one line, never blank.
    fn garbage(&mut self, now_ms: i64, seq: u64) -> Vec<u8> {
        match self.framing {
            Framing::Kv | Framing::Json => self.text_garbage(now_ms, seq),
            Framing::Lp | Framing::Csv => self.table_garbage(now_ms, seq),
            Framing::Binary => self.frame_garbage(now_ms, seq),
        }
    }

    /// Garbage for line protocol and CSV.
    fn table_garbage(&mut self, now_ms: i64, seq: u64) -> Vec<u8> {
        let r = self.reading(now_ms, seq);
        let good = self.format(&r);
        let (sensor, ts) = (r.sensor.as_str(), r.ts);
        let lp = self.framing == Framing::Lp;
        match self.rng.u8(0..5) {
            // A reading cut short: line protocol up to its first field's
            // '=' (no field set, or a field without a value); CSV before
            // its last column (too few columns).
            0 => {
                let stop = if lp {
                    good.iter().position(|&c| c == b'=').map_or(1, |i| {
                        i + 1 + good[i + 1..].iter().position(|&c| c == b'=').unwrap_or(0)
                    })
                } else {
                    good.iter().rposition(|&c| c == b',').unwrap_or(1)
                };
                good[..self.rng.usize(1..=stop.max(1))].to_vec()
            }
            // A value that is not a finite number.
            1 => {
                let bad = ["21.5x", "nan", "inf", "-", "0x1F", "--3"];
                let bad = bad[self.rng.usize(0..bad.len())];
                if lp {
                    format!("sim,sensor={sensor} temp={bad} {ts}").into_bytes()
                } else {
                    format!("{sensor},{ts},{bad},40.2").into_bytes()
                }
            }
            // Not UTF-8.
            2 => {
                let mut v = good;
                v.insert(0, 0xff);
                v
            }
            // A bad timestamp, or (line protocol) a string field.
            3 => {
                if lp && self.rng.bool() {
                    format!("sim,sensor={sensor} temp=\"hot\" {ts}").into_bytes()
                } else if lp {
                    format!("sim,sensor={sensor} temp=21.5 {ts}.5").into_bytes()
                } else {
                    format!("{sensor},{ts}.5,21.5,40.2").into_bytes()
                }
            }
            // The other framing's syntax: kv for CSV (no comma, so one
            // column), CSV for line protocol (a tag without `=`).
            _ if lp => format!("{sensor},{ts},21.5,40.2").into_bytes(),
            _ => format!("sensor={sensor} ts={ts} temp=21.5").into_bytes(),
        }
    }

    /// Garbage for the binary framing: a bad CRC, a truncated frame, or noise;
    /// never a frame whose CRC checks.
    fn frame_garbage(&mut self, now_ms: i64, seq: u64) -> Vec<u8> {
        let r = self.reading(now_ms, seq);
        let p = crate::frame::postcard_reading(&r.sensor, Some(r.ts), &r.fields);
        let mut raw = p.clone();
        raw.extend_from_slice(&crate::frame::crc16(&p).to_be_bytes());
        match self.rng.u8(0..3) {
            // One bit flipped, in the payload or the CRC.
            0 => {
                let at = self.rng.usize(0..raw.len());
                raw[at] ^= 1 << self.rng.u8(0..8);
            }
            // The tail lost.
            1 => raw.truncate(self.rng.usize(0..raw.len() - 1)),
            // Noise.
            _ => {
                let n = self.rng.usize(1..40);
                raw = (0..n).map(|_| self.rng.u8(..)).collect();
            }
        }
        if crate::frame::crc_ok(&raw) {
            let last = raw.len() - 1;
            raw[last] ^= 0x5A;
        }
        crate::frame::cobs_encode(&raw)
    }

    /// Garbage for kv and JSON.
    fn text_garbage(&mut self, now_ms: i64, seq: u64) -> Vec<u8> {
        let r = self.reading(now_ms, seq);
        let good = self.format(&r);
        let (sensor, ts) = (r.sensor.as_str(), r.ts);
        let kv = self.framing == Framing::Kv;
        match self.rng.u8(0..6) {
            // Printable line noise: no '=' (so no kv token) and starting
            // with a character no JSON text starts with.
            0 => {
                let n = self.rng.usize(4..60);
                let mut v = vec![b'#'];
                v.extend(
                    (0..n)
                        .map(|_| self.rng.u8(b' '..=b'~'))
                        .filter(|&c| c != b'='),
                );
                v
            }
            // A reading cut short (a lost tail).
            1 => {
                if kv {
                    // Any cut up to and including the first field's '=' has no
                    // numeric field or ends in a bad token ("ts=", "te",
                    // "temp="); a cut later could leave a valid shorter line.
                    let first = good.iter().position(|&c| c == b'=').unwrap_or(0);
                    let field_eq = good
                        .iter()
                        .enumerate()
                        .filter(|&(_, &c)| c == b'=')
                        .map(|(i, _)| i)
                        .nth(2)
                        .unwrap_or(first);
                    good[..self.rng.usize(1..=field_eq + 1)].to_vec()
                } else {
                    // Every strict prefix of a JSON object is invalid JSON.
                    good[..self.rng.usize(1..good.len())].to_vec()
                }
            }
            // A value that is not a finite number.
            2 => {
                let bad = ["21.5x", "nan", "inf", "-inf", "-", "0x1F", "1,5", "--3"];
                let bad = bad[self.rng.usize(0..bad.len())];
                let field = ["temp", "hum"][self.rng.usize(0..2)];
                if kv {
                    format!("sensor={sensor} ts={ts} {field}={bad}").into_bytes()
                } else {
                    let v = match self.rng.u8(0..3) {
                        0 => json(bad),     // a string
                        1 => "null".into(), // not a number
                        _ => "NaN".into(),  // not JSON at all
                    };
                    format!(
                        "{{\"sensor\":{},\"ts\":{ts},\"{field}\":{v}}}",
                        json(sensor)
                    )
                    .into_bytes()
                }
            }
            // Bytes that are not UTF-8: a stray high byte, or a Latin-1 '°'.
            3 => {
                let mut v = good;
                if self.rng.bool() {
                    v.insert(0, 0xff);
                } else {
                    let at = self.rng.usize(1..v.len());
                    v.insert(at, 0xb0);
                }
                v
            }
            // Well-formed but with no numeric field, or a bad key/timestamp.
            4 => {
                if kv {
                    match self.rng.u8(0..3) {
                        0 => format!("sensor={sensor} ts={ts}"),
                        1 => format!("sensor={sensor} ts={ts} =21.5"),
                        _ => format!("sensor={sensor} ts={ts}.5 temp=21.5"),
                    }
                    .into_bytes()
                } else if self.rng.bool() {
                    format!("{{\"sensor\":{},\"ts\":{ts}}}", json(sensor)).into_bytes()
                } else {
                    b"[21.5,40.2]".to_vec()
                }
            }
            // The other framing's syntax.
            _ => {
                if kv {
                    format!("{{\"sensor\":{},\"temp\":21.5}}", json(sensor)).into_bytes()
                } else {
                    format!("sensor={sensor} ts={ts} temp=21.5").into_bytes()
                }
            }
        }
    }

    /// A standard normal draw (Box–Muller).
    fn gauss(&mut self) -> f64 {
        let u1 = self.rng.f64().max(1e-12);
        let u2 = self.rng.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// `x` rounded to `decimals` places, as the f64 nearest that decimal.
fn quantise(x: f64, decimals: u32) -> f64 {
    let count = (x * 10f64.powi(decimals as i32)).round() as i64;
    decimal(count, decimals)
        .parse()
        .expect("a decimal is a number")
}

/// Prints `count × 10^-decimals` without float noise: `decimal(2153, 2)` is "21.53".
fn decimal(count: i64, decimals: u32) -> String {
    let scale = 10u64.pow(decimals);
    let sign = if count < 0 { "-" } else { "" };
    let a = count.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        a / scale,
        a % scale,
        width = decimals as usize
    )
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("strings and finite numbers serialise")
}

/// Reads a `timestamp,value` CSV with a header line (timestamps
/// `YYYY-MM-DD HH:MM:SS`, UTC); values must be finite numbers.
fn read_csv(path: &Path) -> io::Result<Vec<(i64, f64)>> {
    let text = std::fs::read_to_string(path)?;
    let bad = |line: usize, why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}:{line}: {why}", path.display()),
        )
    };
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let (t, v) = line
            .split_once(',')
            .ok_or_else(|| bad(i + 1, "expected `timestamp,value`".into()))?;
        let at = humantime::parse_rfc3339_weak(t.trim()).map_err(|e| bad(i + 1, e.to_string()))?;
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| bad(i + 1, e.to_string()))?
            .as_millis() as i64;
        let value = v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| bad(i + 1, format!("`{}` is not a finite number", v.trim())))?;
        rows.push((ms, value));
    }
    if rows.is_empty() {
        return Err(bad(1, "no rows".into()));
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

    /// What a reference parser reads from a valid line: sensor, ts, fields.
    type Parsed = (Option<String>, Option<i64>, BTreeMap<String, f64>);

    /// The kv grammar, restated independently (and as permissively as the
    /// agent): the reading's (sensor, ts, fields) if the line is valid.
    fn parse_kv(line: &[u8]) -> Option<Parsed> {
        let text = std::str::from_utf8(line).ok()?;
        let (mut sensor, mut ts, mut fields) = (None, None, BTreeMap::new());
        for tok in text.split_ascii_whitespace() {
            let (k, v) = tok.split_once('=').filter(|(k, _)| !k.is_empty())?;
            match k {
                "sensor" => sensor = Some(v.to_string()),
                "ts" => ts = Some(v.parse::<i64>().ok()?),
                _ => {
                    let x = v.parse::<f64>().ok().filter(|x| x.is_finite())?;
                    fields.insert(k.to_string(), x);
                }
            }
        }
        (!fields.is_empty()).then_some((sensor, ts, fields))
    }

    /// The JSON grammar, as permissively as the agent (which also takes
    /// booleans and flattens nested objects).
    fn parse_json(line: &[u8]) -> Option<Parsed> {
        use serde_json::Value;
        let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(line) else {
            return None;
        };
        fn walk(prefix: &str, m: serde_json::Map<String, Value>, out: &mut Parsed) -> Option<()> {
            for (k, v) in m {
                let key = format!("{prefix}{k}");
                match (key.as_str(), v) {
                    (_, Value::Object(inner)) => walk(&format!("{key}."), inner, out)?,
                    ("ts", v) => out.1 = Some(v.to_string().trim_matches('"').parse().ok()?),
                    ("sensor", Value::String(s)) => out.0 = Some(s),
                    ("sensor", Value::Number(n)) => out.0 = Some(n.to_string()),
                    (_, Value::Number(n)) => {
                        let x = n.as_f64().filter(|x| x.is_finite())?;
                        out.2.insert(key, x);
                    }
                    (_, Value::Bool(b)) => {
                        out.2.insert(key, b as u8 as f64);
                    }
                    _ => return None,
                }
            }
            Some(())
        }
        let mut out = (None, None, BTreeMap::new());
        walk("", m, &mut out)?;
        (!out.2.is_empty()).then_some(out)
    }

    fn parser(framing: Framing) -> fn(&[u8]) -> Option<Parsed> {
        match framing {
            Framing::Kv => parse_kv,
            Framing::Json => parse_json,
            _ => unreachable!("checked against the agent's parser in tidegate"),
        }
    }

    #[test]
    fn garbage_is_always_rejected_and_readings_parse_to_the_ledger() {
        for framing in [Framing::Kv, Framing::Json] {
            let parse = parser(framing);
            let mut g = Generator::new(&cfg(framing, 0.3)).unwrap();
            let mut garbage = 0;
            for seq in 0..20_000 {
                let e = g.next(1_764_000_000_000 + seq as i64 / 7, seq);
                let shown = String::from_utf8_lossy(&e.line).into_owned();
                assert!(
                    !e.line.contains(&b'\n') && !e.line.contains(&b'\r'),
                    "{shown:?}"
                );
                assert!(!e.line.iter().all(u8::is_ascii_whitespace), "{shown:?}");
                assert_eq!(e.entry.seq, seq);
                match parse(&e.line) {
                    Some((sensor, ts, fields)) => {
                        assert!(e.entry.valid, "garbage accepted: {shown:?}");
                        assert_eq!(sensor, e.entry.sensor);
                        assert_eq!(ts, e.entry.ts);
                        let want = e.entry.fields.as_ref().unwrap();
                        assert_eq!(fields.len(), want.len());
                        for (k, v) in &fields {
                            // Bit-exact: the ledger holds what the text parses to.
                            assert_eq!(v.to_bits(), want[k].to_bits(), "{shown}");
                        }
                    }
                    None => {
                        assert!(!e.entry.valid, "reading rejected: {shown:?}");
                        assert_eq!(e.entry.line.as_deref(), Some(shown.as_str()));
                        garbage += 1;
                    }
                }
            }
            assert!((5000..7000).contains(&garbage), "{garbage}");
        }
    }

    #[test]
    fn values_print_short_and_stay_in_range() {
        let mut g = Generator::new(&cfg(Framing::Kv, 0.0)).unwrap();
        for seq in 0..20_000 {
            // Sweep two days so the daily cycle is covered.
            let e = g.next(1_764_000_000_000 + seq as i64 * 8_640, seq);
            let text = String::from_utf8(e.line).unwrap();
            let toks: Vec<&str> = text.split(' ').collect();
            assert_eq!(toks.len(), 4, "{text}");
            assert!(toks[0].starts_with("sensor=s0") && toks[1].starts_with("ts="));
            let (_, temp) = toks[2].split_once('=').unwrap();
            let (_, hum) = toks[3].split_once('=').unwrap();
            let decimals = |v: &str| v.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals(temp) <= 2 && decimals(hum) <= 1, "{text}");
            let (t, h) = (temp.parse::<f64>().unwrap(), hum.parse::<f64>().unwrap());
            assert!((10.0..32.0).contains(&t), "{text}");
            assert!((30.0..=70.0).contains(&h), "{text}");
        }
    }

    #[test]
    fn json_lines_keep_field_order() {
        let mut g = Generator::new(&cfg(Framing::Json, 0.0)).unwrap();
        let line = String::from_utf8(g.next(1_764_053_000_123, 0).line).unwrap();
        assert!(
            line.starts_with("{\"sensor\":\"s01\",\"ts\":1764053000123,\"temp\":"),
            "{line}"
        );
        assert!(line.contains(",\"hum\":") && line.ends_with('}'), "{line}");
    }

    #[test]
    fn timestamps_strictly_increase_per_sensor_and_seed_repeats() {
        let mut a = Generator::new(&cfg(Framing::Kv, 0.1)).unwrap();
        let mut b = Generator::new(&cfg(Framing::Kv, 0.1)).unwrap();
        let mut c = Generator::new(&SimConfig {
            seed: 43,
            ..cfg(Framing::Kv, 0.1)
        })
        .unwrap();
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        let mut differs = false;
        for seq in 0..3000 {
            // The clock stands still: timestamps must still move.
            let (x, y, z) = (a.next(1000, seq), b.next(1000, seq), c.next(1000, seq));
            assert_eq!(x.line, y.line, "same seed, same stream");
            differs |= x.line != z.line;
            if let (Some(s), Some(ts)) = (x.entry.sensor, x.entry.ts) {
                if let Some(prev) = last.insert(s, ts) {
                    assert!(ts > prev);
                }
            }
        }
        assert!(differs, "another seed, another stream");
        assert_eq!(last.len(), 3);
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
        assert_eq!(g.due_lines(Duration::from_millis(1000), 200), 0);
        assert_eq!(g.until_next(Duration::ZERO, 0), Duration::from_millis(10));
        assert_eq!(g.deadline(99), Some(Duration::from_secs(1)));
        assert!(!g.finished(u64::MAX));
    }

    #[test]
    fn decimals_print_short() {
        assert_eq!(decimal(2153, 2), "21.53");
        assert_eq!(decimal(-5, 2), "-0.05");
        assert_eq!(decimal(400, 1), "40.0");
        assert_eq!(quantise(21.534999, 2).to_string(), "21.53");
        assert_eq!(quantise(40.04, 1).to_string(), "40");
    }

    #[test]
    fn replays_a_csv_at_the_speedup() {
        let path = std::env::temp_dir().join(format!("fwsim-replay-{}.csv", std::process::id()));
        std::fs::write(
            &path,
            "timestamp,value\n2015-08-31 18:22:00,90\n2015-08-31 18:32:00,80.50\n\
             2015-08-31 18:32:00,7e1\n2015-08-31 19:22:00,-3\n",
        )
        .unwrap();
        let mut g = Generator::new(&SimConfig {
            replay: Some(path.clone()),
            speedup: 600.0, // ten minutes a second
            garbage_rate: 0.0,
            ..Default::default()
        })
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(g.due_lines(Duration::ZERO, 0), 1);
        assert_eq!(g.due_lines(Duration::from_millis(999), 0), 1);
        assert_eq!(g.due_lines(Duration::from_millis(1000), 0), 3);
        assert_eq!(g.until_next(Duration::ZERO, 1), Duration::from_secs(1));
        let lines: Vec<String> = (0..4)
            .map(|seq| String::from_utf8(g.next(0, seq).line).unwrap())
            .collect();
        let t0 = 1_441_045_320_000i64; // 2015-08-31 18:22:00 UTC
        assert_eq!(
            lines,
            [
                format!("sensor=s01 ts={t0} value=90"),
                format!("sensor=s01 ts={} value=80.5", t0 + 600_000),
                // A repeated timestamp is bumped to keep (sensor, ts) unique.
                format!("sensor=s01 ts={} value=70", t0 + 600_001),
                format!("sensor=s01 ts={} value=-3", t0 + 3_600_000),
            ]
        );
        assert!(g.finished(4) && !g.finished(3));
    }

    #[test]
    fn replay_rejects_non_numbers() {
        let path = std::env::temp_dir().join(format!("fwsim-bad-{}.csv", std::process::id()));
        std::fs::write(&path, "timestamp,value\n2015-08-31 18:22:00,nan\n").unwrap();
        let err = Generator::new(&SimConfig {
            replay: Some(path.clone()),
            ..Default::default()
        })
        .err()
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(err.to_string().contains("not a finite number"), "{err}");
    }

    #[test]
    fn faults_keep_their_ledger_promises() {
        let faults = Faults {
            duplicate: 0.05,
            reorder: 0.05,
            clock_jump: 0.05,
            baud_mismatch: 0.05,
            ..Faults::default()
        };
        for framing in [Framing::Kv, Framing::Lp, Framing::Binary] {
            let mut g = Generator::new(&SimConfig {
                faults: faults.clone(),
                ..cfg(framing, 0.0)
            })
            .unwrap();
            let now = 1_764_053_000_000;
            let lines: Vec<Emitted> = (0..4000).map(|i| g.next(now + i as i64, i)).collect();
            let (mut dups, mut backwards, mut jumps, mut noise) = (0, 0, 0, 0);
            let mut seen = std::collections::HashMap::new();
            let mut last: BTreeMap<String, i64> = BTreeMap::new();
            for (i, e) in lines.iter().enumerate() {
                assert_eq!(e.entry.seq, i as u64, "seq is the line's position");
                if !e.entry.valid {
                    // No garbage asked for: a wrong baud rate (never
                    // text) or a clock jump (a reading an hour ahead).
                    if e.line.first() == Some(&0xff) {
                        noise += 1;
                    } else {
                        jumps += 1;
                    }
                    continue;
                }
                let sensor = e.entry.sensor.clone().unwrap();
                let ts = e.entry.ts.unwrap();
                if let Some(&first) = seen.get(&(sensor.clone(), ts)) {
                    dups += 1;
                    let first: &Emitted = &lines[first];
                    assert_eq!(e.line, first.line, "a duplicate repeats a reading");
                    continue;
                }
                seen.insert((sensor.clone(), ts), i);
                if last.get(&sensor).is_some_and(|&t| ts < t) {
                    backwards += 1;
                }
                let t = last.entry(sensor).or_insert(ts);
                *t = (*t).max(ts);
            }
            assert!(dups > 50, "{framing:?}: duplicates {dups}");
            assert!(backwards > 50, "{framing:?}: out of order {backwards}");
            if framing == Framing::Binary {
                // Both are frames the agent refuses (a CRC, a time).
                assert!(noise + jumps > 100, "{framing:?}: {noise} + {jumps}");
            } else {
                assert!(noise > 50, "{framing:?}: baud mismatch {noise}");
                assert!(jumps > 50, "{framing:?}: clock jumps {jumps}");
            }
        }
    }

    #[test]
    fn bursts_add_lines_at_once_on_top_of_the_rate() {
        let g = Generator::new(&SimConfig {
            rate: 100.0,
            faults: Faults {
                burst_lines: 500,
                burst_every: Some(Duration::from_secs(2)),
                ..Faults::default()
            },
            ..cfg(Framing::Kv, 0.0)
        })
        .unwrap();
        assert_eq!(g.due_lines(Duration::from_millis(1990), 0), 199);
        assert_eq!(g.due_lines(Duration::from_millis(2000), 0), 700);
        assert_eq!(g.due_lines(Duration::from_millis(2020), 700), 2);
    }
}
