//! Line parsers: one reading a line, `kv` or `json`, into points.
//!
//! Pure functions of the bytes and the arrival time: no I/O, no clock, so every
//! framing rule is tested here and fuzzed later without a port.

use super::lp::LpParser;
use crate::config::{Framing, SerialSourceConfig, TimeUnit};
use crate::point::{KeyCache, Point, SeriesKey};

/// Why a line was not accepted. The label is the counter's reason name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// The line is longer than `max_line`.
    #[error("line longer than max_line")]
    TooLong,
    /// The bytes are not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// A kv token has no `=` or an empty key.
    #[error("malformed token `{0}` (expected key=value)")]
    BadToken(String),
    /// A field value is not a number.
    #[error("field `{0}` is not a number")]
    NotANumber(String),
    /// A field value is NaN or infinite: time-series databases cannot store it.
    #[error("field `{0}` is not finite")]
    NotFinite(String),
    /// The timestamp is not an integer in range.
    #[error("bad timestamp `{0}`")]
    BadTimestamp(String),
    /// The reading carries no numeric field.
    #[error("no numeric field")]
    NoFields,
    /// A key listed in `required_keys` is missing.
    #[error("required key `{0}` missing")]
    MissingKey(String),
    /// The JSON does not parse, or is not an object.
    #[error("invalid JSON: {0}")]
    BadJson(String),
    /// The JSON nests deeper than the source allows.
    #[error("JSON nested deeper than max_json_depth")]
    TooDeep,
    /// The message carries more fields than the source allows.
    #[error("more fields than max_fields")]
    TooManyFields,
    /// A line-protocol field is a string: time-series points here are numbers.
    #[error("field `{0}` is a string")]
    StringField(String),
    /// A line of line protocol does not parse.
    #[error("bad line protocol: {0}")]
    BadLine(String),
    /// A tag (bound from a topic level, or in line protocol) has an empty value.
    #[error("tag `{0}` is empty")]
    EmptyTag(String),
    /// A JSON pointer of the subscription finds nothing in the message.
    #[error("JSON pointer `{0}` not found")]
    MissingPointer(String),
    /// No subscription's pattern matches the message's topic (overlapping
    /// subscriptions of another client id sharing the session).
    #[error("no subscription matches topic `{0}`")]
    UnmatchedTopic(String),
    /// The store refused the points (e.g. too many series).
    #[error("refused by the store: {0}")]
    StoreRefused(String),
    /// A CSV line has another number of columns than `csv_header`.
    #[error("{0} columns, the header has {1}")]
    BadColumns(usize, usize),
    /// A binary frame's CRC-16 does not match its bytes.
    #[error("CRC-16 mismatch")]
    BadCrc,
    /// A binary frame is not valid COBS or its postcard bytes do not decode.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// A new series beyond the source's `max_series`.
    #[error("a new series beyond max_series ({0})")]
    TooManySeries(usize),
    /// A timestamp further ahead of the clock than `max_future_skew` (ns ahead).
    #[error("timestamp {}s in the future (max_future_skew)", .0 / 1_000_000_000)]
    FromTheFuture(i64),
    /// A timestamp older than `max_past_age` (its age, ns).
    #[error("timestamp {}s old (max_past_age)", .0 / 1_000_000_000)]
    TooOld(i64),
    /// Not a Sparkplug B message (topic or protobuf).
    #[error("not Sparkplug B: {0}")]
    BadSparkplug(String),
    /// A Sparkplug metric by an alias no birth named (the node must rebirth).
    #[error("Sparkplug alias {0} unknown: no birth named it yet")]
    UnknownAlias(u64),
}

impl Reject {
    /// A short stable label for counters.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::TooLong => "too_long",
            Reject::NotUtf8 => "not_utf8",
            Reject::BadToken(_) => "bad_token",
            Reject::NotANumber(_) => "not_a_number",
            Reject::NotFinite(_) => "not_finite",
            Reject::BadTimestamp(_) => "bad_timestamp",
            Reject::NoFields => "no_fields",
            Reject::MissingKey(_) => "missing_key",
            Reject::BadJson(_) => "bad_json",
            Reject::TooDeep => "too_deep",
            Reject::TooManyFields => "too_many_fields",
            Reject::StringField(_) => "string_field",
            Reject::BadLine(_) => "bad_line",
            Reject::EmptyTag(_) => "empty_tag",
            Reject::MissingPointer(_) => "missing_pointer",
            Reject::UnmatchedTopic(_) => "unmatched_topic",
            Reject::StoreRefused(_) => "store_refused",
            Reject::BadColumns(..) => "bad_columns",
            Reject::BadCrc => "bad_crc",
            Reject::BadFrame(_) => "bad_frame",
            Reject::TooManySeries(_) => "too_many_series",
            Reject::FromTheFuture(_) => "from_the_future",
            Reject::TooOld(_) => "too_old",
            Reject::BadSparkplug(_) => "bad_sparkplug",
            Reject::UnknownAlias(_) => "unknown_alias",
        }
    }
}

/// Turns lines of one source into points, remembering series keys it has built.
pub struct LineParser {
    framing: Framing,
    measurement: String,
    base_tags: Vec<(String, String)>,
    tag_keys: Vec<String>,
    ts_key: Option<String>,
    ts_unit: TimeUnit,
    max_line: usize,
    required: Vec<String>,
    csv_header: Vec<String>,
    max_fields: usize,
    max_depth: usize,
    /// The `lp` framing's parser (it keeps its own key cache).
    lp: LpParser,
    /// Building a key allocates and sorts; sensors repeat the same few keys.
    keys: KeyCache,
}

impl LineParser {
    /// A parser for one serial source's settings.
    pub fn new(cfg: &SerialSourceConfig) -> LineParser {
        LineParser {
            framing: cfg.framing,
            measurement: cfg.measurement.clone(),
            base_tags: cfg.source_tags(),
            tag_keys: cfg.tag_keys.clone(),
            ts_key: cfg.timestamp_key.clone(),
            ts_unit: cfg.timestamp_unit,
            max_line: cfg.max_line,
            required: cfg.required_keys.clone(),
            csv_header: cfg.csv_header.clone(),
            max_fields: cfg.max_fields,
            max_depth: cfg.max_json_depth,
            lp: LpParser::new(cfg.timestamp_unit, cfg.max_fields),
            keys: KeyCache::default(),
        }
    }

    /// The configured line length limit.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// The byte that ends a line (a frame, for `binary`).
    pub fn terminator(&self) -> u8 {
        match self.framing {
            Framing::Binary => 0,
            _ => b'\n',
        }
    }

    /// True for the binary framing (its rejects are logged in hex).
    pub fn is_binary(&self) -> bool {
        self.framing == Framing::Binary
    }

    /// Parses one line (without its `\n`; a binary frame without its 0x00)
    /// into `out`. Blank lines and empty frames yield nothing. On error
    /// nothing is appended.
    pub fn parse(
        &mut self,
        line: &[u8],
        arrival_ns: i64,
        out: &mut Vec<Point>,
    ) -> Result<usize, Reject> {
        if line.len() > self.max_line {
            return Err(Reject::TooLong);
        }
        let reading = if self.framing == Framing::Binary {
            if line.is_empty() {
                return Ok(0);
            }
            decode_frame(line, self.ts_unit)?
        } else {
            let text = std::str::from_utf8(line).map_err(|_| Reject::NotUtf8)?;
            let text = text.trim();
            if text.is_empty() {
                return Ok(0);
            }
            match self.framing {
                Framing::Kv => self.parse_kv(text)?,
                Framing::Json => self.parse_json(text)?,
                Framing::Csv => self.parse_csv(text)?,
                Framing::Lp => return self.parse_lp(text, arrival_ns, out),
                Framing::Binary => unreachable!("decoded above"),
            }
        };
        if reading.fields.is_empty() {
            return Err(Reject::NoFields);
        }
        if reading.fields.len() > self.max_fields {
            return Err(Reject::TooManyFields);
        }
        for key in &self.required {
            let present = self.ts_key.as_deref() == Some(key.as_str()) && reading.ts_ns.is_some()
                || reading.tags.iter().any(|(k, _)| k == key)
                || reading.fields.iter().any(|(k, _)| k == key);
            if !present {
                return Err(Reject::MissingKey(key.clone()));
            }
        }
        let ts_ns = reading.ts_ns.unwrap_or(arrival_ns);
        let n = reading.fields.len();
        for (field, value) in reading.fields {
            let series = self.key(&reading.tags, &field);
            out.push(Point {
                series,
                ts_ns,
                value,
            });
        }
        Ok(n)
    }

    fn is_tag(&self, key: &str) -> bool {
        self.tag_keys.iter().any(|t| t == key)
    }

    fn is_ts(&self, key: &str) -> bool {
        self.ts_key.as_deref() == Some(key)
    }

    fn timestamp(&self, raw: &str) -> Result<i64, Reject> {
        raw.parse::<i64>()
            .ok()
            .and_then(|t| t.checked_mul(self.ts_unit.nanos()))
            .ok_or_else(|| Reject::BadTimestamp(raw.chars().take(32).collect()))
    }

    fn parse_kv(&self, text: &str) -> Result<Reading, Reject> {
        let mut r = Reading::default();
        for token in text.split_ascii_whitespace() {
            let (k, v) = token
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| Reject::BadToken(token.chars().take(32).collect()))?;
            if self.is_ts(k) {
                r.ts_ns = Some(self.timestamp(v)?);
            } else if self.is_tag(k) {
                r.tags.push((k.to_string(), v.to_string()));
            } else {
                r.fields.push((k.to_string(), number(k, v)?));
            }
        }
        Ok(r)
    }

    fn parse_csv(&self, text: &str) -> Result<Reading, Reject> {
        let cells = text.split(',').count();
        if cells != self.csv_header.len() {
            return Err(Reject::BadColumns(cells, self.csv_header.len()));
        }
        let mut r = Reading::default();
        for (k, v) in self.csv_header.iter().zip(text.split(',')) {
            let v = v.trim();
            if v.is_empty() {
                // An empty cell: the column has no value in this reading.
                continue;
            }
            if self.is_ts(k) {
                r.ts_ns = Some(self.timestamp(v)?);
            } else if self.is_tag(k) {
                r.tags.push((k.clone(), v.to_string()));
            } else {
                r.fields.push((k.clone(), number(k, v)?));
            }
        }
        Ok(r)
    }

    /// Line protocol: the measurement and tags come from the line, the
    /// source's tags are added; a required key must be a tag or a field of
    /// every point (a timestamp is not checked: line protocol has no key for it).
    fn parse_lp(
        &mut self,
        text: &str,
        arrival_ns: i64,
        out: &mut Vec<Point>,
    ) -> Result<usize, Reject> {
        let extra: Vec<(&str, &str)> = self
            .base_tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let start = out.len();
        let n = self.lp.parse(text.as_bytes(), &extra, arrival_ns, out)?;
        for key in &self.required {
            if self.is_ts(key) {
                continue;
            }
            let missing = out[start..].iter().any(|p| {
                let (series, field) = p.series.split();
                field != key.as_str()
                    && !series
                        .split(',')
                        .skip(1)
                        .any(|t| t.split_once('=').is_some_and(|(k, _)| k == key.as_str()))
            });
            if missing {
                out.truncate(start);
                return Err(Reject::MissingKey(key.clone()));
            }
        }
        if n == 0 {
            return Err(Reject::NoFields);
        }
        Ok(n)
    }

    fn parse_json(&self, text: &str) -> Result<Reading, Reject> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Reject::BadJson(e.to_string()))?;
        let serde_json::Value::Object(map) = value else {
            return Err(Reject::BadJson("not an object".into()));
        };
        let mut r = Reading::default();
        self.flatten_json("", map, 1, &mut r)?;
        Ok(r)
    }

    fn flatten_json(
        &self,
        prefix: &str,
        map: serde_json::Map<String, serde_json::Value>,
        depth: usize,
        r: &mut Reading,
    ) -> Result<(), Reject> {
        use serde_json::Value;
        if depth > self.max_depth {
            return Err(Reject::TooDeep);
        }
        for (k, v) in map {
            let key = if prefix.is_empty() {
                k
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Object(inner) => self.flatten_json(&key, inner, depth + 1, r)?,
                _ if self.is_ts(&key) => {
                    let raw = match &v {
                        Value::Number(n) => n.to_string(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    r.ts_ns = Some(self.timestamp(&raw)?);
                }
                Value::String(s) if self.is_tag(&key) => r.tags.push((key, s)),
                Value::Number(n) if self.is_tag(&key) => r.tags.push((key, n.to_string())),
                Value::Number(n) => {
                    let x = n.as_f64().ok_or_else(|| Reject::NotANumber(key.clone()))?;
                    if !x.is_finite() {
                        return Err(Reject::NotFinite(key));
                    }
                    r.fields.push((key, x));
                    if r.fields.len() > self.max_fields {
                        return Err(Reject::TooManyFields);
                    }
                }
                Value::Bool(b) => r.fields.push((key, if b { 1.0 } else { 0.0 })),
                _ => return Err(Reject::NotANumber(key)),
            }
        }
        Ok(())
    }

    fn key(&mut self, tags: &[(String, String)], field: &str) -> SeriesKey {
        let raw = self.keys.raw_with_tags(tags.iter().map(|(k, v)| (k, v)));
        raw.push(0xff);
        raw.extend_from_slice(field.as_bytes());
        let (measurement, base_tags) = (&self.measurement, &self.base_tags);
        self.keys.get_or_insert_with(|| {
            let all = base_tags
                .iter()
                .chain(tags.iter())
                .map(|(k, v)| (k.as_str(), v.as_str()));
            SeriesKey::new(measurement, all, field)
        })
    }
}

/// A reading before it is split into points.
#[derive(Default)]
struct Reading {
    tags: Vec<(String, String)>,
    fields: Vec<(String, f64)>,
    ts_ns: Option<i64>,
}

/// The postcard body of a binary frame (README, "Binary framing").
#[derive(serde::Deserialize)]
struct Frame {
    sensor: String,
    ts: Option<i64>,
    fields: Vec<(String, f64)>,
}

/// Decodes one COBS frame (without its 0x00): COBS, then the CRC-16/CCITT-FALSE
/// (big-endian, over the postcard bytes), then postcard. The sensor becomes tag
/// `sensor` (unless empty); `ts` is in `unit`.
fn decode_frame(cobs: &[u8], unit: TimeUnit) -> Result<Reading, Reject> {
    let raw = cobs_decode(cobs).ok_or_else(|| Reject::BadFrame("invalid COBS".into()))?;
    if raw.len() < 3 {
        return Err(Reject::BadFrame(format!("{} bytes", raw.len())));
    }
    let (body, crc) = raw.split_at(raw.len() - 2);
    if crc16(body).to_be_bytes() != crc {
        return Err(Reject::BadCrc);
    }
    let (frame, rest) =
        postcard::take_from_bytes::<Frame>(body).map_err(|e| Reject::BadFrame(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Reject::BadFrame(format!(
            "{} bytes after the reading",
            rest.len()
        )));
    }
    let mut r = Reading::default();
    if !frame.sensor.is_empty() {
        r.tags.push(("sensor".into(), frame.sensor));
    }
    if let Some(t) = frame.ts {
        r.ts_ns = Some(
            t.checked_mul(unit.nanos())
                .ok_or_else(|| Reject::BadTimestamp(t.to_string()))?,
        );
    }
    for (k, v) in frame.fields {
        if k.is_empty() {
            return Err(Reject::BadFrame("empty field name".into()));
        }
        if !v.is_finite() {
            return Err(Reject::NotFinite(k.chars().take(32).collect()));
        }
        r.fields.push((k, v));
    }
    Ok(r)
}

/// CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, xorout 0
/// (the simulator's, which the README's example frame pins on both sides).
pub use firmware_sim::frame::crc16;

/// Decodes COBS (the input holds no 0x00); `None` if a code runs past the end.
pub fn cobs_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let code = input[i] as usize;
        if code == 0 {
            return None;
        }
        let end = i + code;
        if end > input.len() {
            return None;
        }
        out.extend_from_slice(&input[i + 1..end]);
        i = end;
        if code < 0xFF && i < input.len() {
            out.push(0);
        }
    }
    Some(out)
}

/// `raw` as a finite number, the reject naming `key` otherwise.
pub(crate) fn number(key: &str, raw: &str) -> Result<f64, Reject> {
    let x: f64 = raw
        .parse()
        .map_err(|_| Reject::NotANumber(key.chars().take(32).collect()))?;
    if !x.is_finite() {
        return Err(Reject::NotFinite(key.chars().take(32).collect()));
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg(framing: Framing) -> SerialSourceConfig {
        SerialSourceConfig {
            name: None,
            port: PathBuf::from("/dev/null"),
            baud: 9600,
            framing,
            measurement: "env".into(),
            tags: [("site".to_string(), "lab".to_string())].into(),
            tag_keys: vec!["sensor".into()],
            timestamp_key: Some("ts".into()),
            timestamp_unit: TimeUnit::Ms,
            max_line: 128,
            required_keys: vec![],
            port_tag: false,
            ..Default::default()
        }
    }

    fn parse(framing: Framing, line: &str) -> Result<Vec<Point>, Reject> {
        let mut p = LineParser::new(&cfg(framing));
        let mut out = Vec::new();
        p.parse(line.as_bytes(), 7, &mut out).map(|_| out)
    }

    #[test]
    fn kv_reading_with_tag_and_timestamp() {
        let pts = parse(Framing::Kv, "sensor=s01 ts=1000 temp=21.53 hum=40").unwrap();
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[0].series.as_str(), "env,sensor=s01,site=lab temp");
        assert_eq!(pts[0].ts_ns, 1_000_000_000);
        assert_eq!(pts[0].value, 21.53);
        assert_eq!(pts[1].series.as_str(), "env,sensor=s01,site=lab hum");
    }

    #[test]
    fn kv_without_timestamp_uses_arrival() {
        let pts = parse(Framing::Kv, "temp=1").unwrap();
        assert_eq!(pts[0].ts_ns, 7);
    }

    #[test]
    fn kv_rejects() {
        assert!(matches!(
            parse(Framing::Kv, "temp=21.5x"),
            Err(Reject::NotANumber(_))
        ));
        assert!(matches!(
            parse(Framing::Kv, "temp=nan"),
            Err(Reject::NotFinite(_))
        ));
        assert!(matches!(
            parse(Framing::Kv, "junk"),
            Err(Reject::BadToken(_))
        ));
        assert!(matches!(
            parse(Framing::Kv, "=3 temp=1"),
            Err(Reject::BadToken(_))
        ));
        assert!(matches!(
            parse(Framing::Kv, "sensor=s0"),
            Err(Reject::NoFields)
        ));
        assert!(matches!(
            parse(Framing::Kv, "ts=12x temp=1"),
            Err(Reject::BadTimestamp(_))
        ));
        assert!(matches!(
            parse(Framing::Kv, &"a=1 ".repeat(40)),
            Err(Reject::TooLong)
        ));
        let mut p = LineParser::new(&cfg(Framing::Kv));
        assert_eq!(
            p.parse(b"temp=\xff1", 0, &mut Vec::new()),
            Err(Reject::NotUtf8)
        );
    }

    #[test]
    fn required_keys_reject_the_tail_of_a_cut_line() {
        let mut c = cfg(Framing::Kv);
        c.required_keys = vec!["sensor".into(), "ts".into()];
        let mut p = LineParser::new(&c);
        let line = "sensor=s01 ts=1764053000123 temp=21.53 hum=40.2";
        // Every proper suffix of a reading is rejected; the whole line is not.
        for cut in 1..line.len() {
            let mut out = Vec::new();
            assert!(
                p.parse(&line.as_bytes()[cut..], 0, &mut out).is_err(),
                "{:?}",
                &line[cut..]
            );
        }
        assert_eq!(p.parse(line.as_bytes(), 0, &mut Vec::new()), Ok(2));
    }

    #[test]
    fn timestamp_overflow_is_rejected_not_wrapped() {
        assert!(matches!(
            parse(Framing::Kv, "ts=9223372036854775807 temp=1"),
            Err(Reject::BadTimestamp(_))
        ));
    }

    #[test]
    fn blank_line_is_ignored() {
        assert_eq!(parse(Framing::Kv, "  \r").unwrap(), vec![]);
    }

    #[test]
    fn json_nested_fields_flatten() {
        let pts = parse(
            Framing::Json,
            r#"{"sensor":"s01","ts":5,"env":{"temp":21.5},"on":true}"#,
        )
        .unwrap();
        let keys: Vec<_> = pts.iter().map(|p| p.series.as_str().to_string()).collect();
        assert_eq!(
            keys,
            [
                "env,sensor=s01,site=lab env.temp",
                "env,sensor=s01,site=lab on"
            ]
        );
        assert_eq!(pts[0].ts_ns, 5_000_000);
        assert_eq!(pts[1].value, 1.0);
    }

    #[test]
    fn json_rejects() {
        assert!(matches!(
            parse(Framing::Json, "{\"temp\":"),
            Err(Reject::BadJson(_))
        ));
        assert!(matches!(
            parse(Framing::Json, "[1]"),
            Err(Reject::BadJson(_))
        ));
        assert!(matches!(
            parse(Framing::Json, r#"{"temp":"hot"}"#),
            Err(Reject::NotANumber(_))
        ));
        assert!(matches!(
            parse(Framing::Json, r#"{"sensor":"a"}"#),
            Err(Reject::NoFields)
        ));
    }

    #[test]
    fn values_round_trip_exactly() {
        for v in [21.53_f64, 0.1 + 0.2, 1e-300, 123_456_789.123_456_78, -0.0] {
            // Debug prints the shortest round-trip form, with an exponent when long.
            let line = format!("temp={v:?}");
            let pts = parse(Framing::Kv, &line).unwrap();
            assert_eq!(pts[0].value.to_bits(), v.to_bits());
        }
    }

    #[test]
    fn csv_columns_by_header() {
        let mut c = cfg(Framing::Csv);
        c.csv_header = vec!["sensor".into(), "ts".into(), "temp".into(), "hum".into()];
        let mut p = LineParser::new(&c);
        let mut out = Vec::new();
        assert_eq!(p.parse(b"s01, 1000,21.5,", 0, &mut out), Ok(1));
        assert_eq!(out[0].series.as_str(), "env,sensor=s01,site=lab temp");
        assert_eq!(out[0].ts_ns, 1_000_000_000);
        assert_eq!(
            p.parse(b"s01,1000,21.5", 0, &mut out),
            Err(Reject::BadColumns(3, 4))
        );
        assert!(matches!(
            p.parse(b"s01,1000,x,1", 0, &mut out),
            Err(Reject::NotANumber(_))
        ));
    }

    #[test]
    fn binary_readme_example_and_rejects() {
        let hex = "1c0373303101f6fe849cd766010474656d7048e17a14ae873540761700";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let frame = &bytes[..bytes.len() - 1];
        let mut p = LineParser::new(&cfg(Framing::Binary));
        let mut out = Vec::new();
        assert_eq!(p.parse(frame, 0, &mut out), Ok(1));
        assert_eq!(out[0].series.as_str(), "env,sensor=s01,site=lab temp");
        assert_eq!(out[0].ts_ns, 1_764_053_000_123_000_000);
        assert_eq!(out[0].value, 21.53);
        assert_eq!(crc16(b"123456789"), 0x29B1);
        let mut bad = frame.to_vec();
        bad[5] ^= 1;
        assert_eq!(p.parse(&bad, 0, &mut out), Err(Reject::BadCrc));
        assert!(matches!(
            p.parse(&frame[..10], 0, &mut out),
            Err(Reject::BadFrame(_))
        ));
        assert_eq!(p.parse(b"", 0, &mut out), Ok(0));
        assert_eq!(
            cobs_decode(&[3, 0x11, 0x22, 2, 0x33]).unwrap(),
            [0x11, 0x22, 0, 0x33]
        );
    }

    #[test]
    fn lp_adds_source_tags_and_checks_required_tags() {
        let mut c = cfg(Framing::Lp);
        c.required_keys = vec!["sensor".into(), "ts".into()];
        c.site = Some("north".into());
        c.port = "/dev/serial/by-id/usb-X".into();
        c.port_tag = true;
        let mut p = LineParser::new(&c);
        let mut out = Vec::new();
        assert_eq!(
            p.parse(b"sim,sensor=s01 temp=1,hum=2 5", 0, &mut out),
            Ok(2)
        );
        assert_eq!(
            out[0].series.as_str(),
            "sim,port=usb-X,sensor=s01,site=north temp"
        );
        assert_eq!(out[0].ts_ns, 5_000_000);
        assert_eq!(
            p.parse(b"sim temp=1", 0, &mut out),
            Err(Reject::MissingKey("sensor".into()))
        );
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn json_depth_and_field_count_are_limited() {
        let mut c = cfg(Framing::Json);
        c.max_json_depth = 2;
        c.max_fields = 2;
        c.max_line = 4096;
        let mut p = LineParser::new(&c);
        let mut out = Vec::new();
        assert_eq!(p.parse(br#"{"a":{"b":1}}"#, 0, &mut out), Ok(1));
        assert_eq!(
            p.parse(br#"{"a":{"b":{"c":1}}}"#, 0, &mut out),
            Err(Reject::TooDeep)
        );
        assert_eq!(
            p.parse(br#"{"a":1,"b":2,"c":3}"#, 0, &mut out),
            Err(Reject::TooManyFields)
        );
        let mut c = cfg(Framing::Kv);
        c.max_fields = 2;
        let mut p = LineParser::new(&c);
        assert_eq!(
            p.parse(b"a=1 b=2 c=3", 0, &mut out),
            Err(Reject::TooManyFields)
        );
    }

    /// The simulator's readings parse to exactly its ledger, and its garbage
    /// is always rejected, in every framing.
    #[test]
    fn every_framing_takes_the_sims_readings_and_rejects_its_garbage() {
        use firmware_sim::{Framing as Sim, Generator, SimConfig};
        for (sim, framing) in [
            (Sim::Kv, Framing::Kv),
            (Sim::Json, Framing::Json),
            (Sim::Lp, Framing::Lp),
            (Sim::Csv, Framing::Csv),
            (Sim::Binary, Framing::Binary),
        ] {
            let mut c = cfg(framing);
            c.measurement = "sim".into();
            c.csv_header = vec!["sensor".into(), "ts".into(), "temp".into(), "hum".into()];
            c.required_keys = vec!["sensor".into(), "ts".into()];
            c.port = "/dev/ttyX".into();
            c.port_tag = true;
            let mut p = LineParser::new(&c);
            let mut g = Generator::new(&SimConfig {
                sensors: 3,
                framing: sim,
                garbage_rate: 0.3,
                seed: 42,
                ..Default::default()
            })
            .unwrap();
            let mut garbage = 0;
            for seq in 0..20_000 {
                let e = g.next(1_764_000_000_000 + seq as i64 / 7, seq);
                assert!(
                    !e.line.contains(&g.terminator()),
                    "{framing:?} {:?}",
                    e.line
                );
                let mut out = Vec::new();
                let r = p.parse(&e.line, 0, &mut out);
                if !e.entry.valid {
                    garbage += 1;
                    assert!(
                        r.is_err(),
                        "{framing:?} accepted garbage {:?}",
                        e.entry.line
                    );
                    continue;
                }
                let fields = e.entry.fields.unwrap();
                assert_eq!(r, Ok(fields.len()), "{framing:?} {:?}", e.line);
                let sensor = e.entry.sensor.unwrap();
                let ts = e.entry.ts.unwrap();
                for (pt, (field, value)) in out.iter().zip(&fields) {
                    let key = SeriesKey::new(
                        "sim",
                        [
                            ("site", "lab"),
                            ("port", "ttyX"),
                            ("sensor", sensor.as_str()),
                        ],
                        field,
                    );
                    let mut got: Vec<_> = out
                        .iter()
                        .map(|p| (p.series.clone(), p.ts_ns, p.value.to_bits()))
                        .collect();
                    got.sort();
                    assert!(
                        got.contains(&(key, ts * 1_000_000, value.to_bits())),
                        "{framing:?} {pt:?} {got:?}"
                    );
                }
            }
            assert!(garbage > 5000, "{framing:?} {garbage}");
        }
    }
}
