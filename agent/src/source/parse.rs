//! Line parsers: one reading a line, `kv` or `json`, into points.
//!
//! Pure functions of the bytes and the arrival time: no I/O, no clock, so every
//! framing rule is tested here and fuzzed later without a port.

use std::collections::HashMap;

use crate::config::{Framing, SerialSourceConfig, TimeUnit};
use crate::point::{Point, SeriesKey};

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
    /// Building a key allocates and sorts; sensors repeat the same few keys.
    keys: HashMap<(Vec<(String, String)>, String), SeriesKey>,
}

/// Upper bound on the key cache, so a source inventing new tags cannot grow it forever.
const KEY_CACHE_MAX: usize = 4096;

impl LineParser {
    /// A parser for one serial source's settings.
    pub fn new(cfg: &SerialSourceConfig) -> LineParser {
        LineParser {
            framing: cfg.framing,
            measurement: cfg.measurement.clone(),
            base_tags: cfg
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tag_keys: cfg.tag_keys.clone(),
            ts_key: cfg.timestamp_key.clone(),
            ts_unit: cfg.timestamp_unit,
            max_line: cfg.max_line,
            required: cfg.required_keys.clone(),
            keys: HashMap::new(),
        }
    }

    /// The configured line length limit.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Parses one line (without its `\n`) into `out`. Blank lines yield nothing.
    /// On error nothing is appended.
    pub fn parse(
        &mut self,
        line: &[u8],
        arrival_ns: i64,
        out: &mut Vec<Point>,
    ) -> Result<usize, Reject> {
        if line.len() > self.max_line {
            return Err(Reject::TooLong);
        }
        let text = std::str::from_utf8(line).map_err(|_| Reject::NotUtf8)?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(0);
        }
        let reading = match self.framing {
            Framing::Kv => self.parse_kv(text)?,
            Framing::Json => self.parse_json(text)?,
        };
        if reading.fields.is_empty() {
            return Err(Reject::NoFields);
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

    fn parse_json(&self, text: &str) -> Result<Reading, Reject> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Reject::BadJson(e.to_string()))?;
        let serde_json::Value::Object(map) = value else {
            return Err(Reject::BadJson("not an object".into()));
        };
        let mut r = Reading::default();
        self.flatten_json("", map, &mut r)?;
        Ok(r)
    }

    fn flatten_json(
        &self,
        prefix: &str,
        map: serde_json::Map<String, serde_json::Value>,
        r: &mut Reading,
    ) -> Result<(), Reject> {
        use serde_json::Value;
        for (k, v) in map {
            let key = if prefix.is_empty() {
                k
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Object(inner) => self.flatten_json(&key, inner, r)?,
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
                }
                Value::Bool(b) => r.fields.push((key, if b { 1.0 } else { 0.0 })),
                _ => return Err(Reject::NotANumber(key)),
            }
        }
        Ok(())
    }

    fn key(&mut self, tags: &[(String, String)], field: &str) -> SeriesKey {
        let cache_key = (tags.to_vec(), field.to_string());
        if let Some(k) = self.keys.get(&cache_key) {
            return k.clone();
        }
        let all = self
            .base_tags
            .iter()
            .chain(tags.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let key = SeriesKey::new(&self.measurement, all, field);
        if self.keys.len() >= KEY_CACHE_MAX {
            self.keys.clear();
        }
        self.keys.insert(cache_key, key.clone());
        key
    }
}

/// A reading before it is split into points.
#[derive(Default)]
struct Reading {
    tags: Vec<(String, String)>,
    fields: Vec<(String, f64)>,
    ts_ns: Option<i64>,
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
}
