//! InfluxDB line protocol in: `measurement,tag=v field=1.5,n=3i,ok=t 1764053000123456789`.
//!
//! Used for MQTT payloads and, later, by the HTTP relay receiver, so it knows
//! nothing about either: bytes, a precision and the arrival time in, points out.
//!
//! - Measurement: `,` and ` ` escaped with `\`; tag keys, tag values and field
//!   keys: `,`, `=` and ` ` escaped. `\\` reads as one backslash; a backslash
//!   before any other character is kept as it is (as InfluxDB does).
//! - Field values: floats (`1.5`, `-2e-3`), integers (`3i`), unsigned integers
//!   (`3u`) and booleans (`t`, `true`, `F`, `FALSE`, ...; stored as 1 and 0).
//!   String fields are rejected (`string_field`): points here are numbers.
//! - The timestamp is optional (the arrival time is used) and read in the
//!   given precision.
//! - Blank lines and `#` comments are skipped; `\r\n` line ends are accepted.
//! - A message is taken whole or not at all: one bad line rejects it, with the
//!   reason of that line.

use super::parse::Reject;
use crate::config::TimeUnit;
use crate::point::{KeyCache, Point, SeriesKey};

/// Parses line protocol, remembering the series keys it has built (sensors
/// repeat the same few, and building one allocates).
pub struct LpParser {
    precision: TimeUnit,
    max_fields: usize,
    keys: KeyCache,
}

/// Parses a whole payload of line protocol with timestamps in `precision`,
/// stamping lines without one at `now_ns`.
pub fn parse_lines(input: &[u8], precision: TimeUnit, now_ns: i64) -> Result<Vec<Point>, Reject> {
    let mut out = Vec::new();
    LpParser::new(precision, usize::MAX).parse(input, &[], now_ns, &mut out)?;
    Ok(out)
}

impl LpParser {
    /// A parser for timestamps in `precision`, accepting at most `max_fields`
    /// fields (points) per call.
    pub fn new(precision: TimeUnit, max_fields: usize) -> LpParser {
        LpParser {
            precision,
            max_fields,
            keys: KeyCache::default(),
        }
    }

    /// Parses `input` into `out`, adding `extra_tags` to every point (a tag of
    /// the line itself wins over an extra one of the same key). Returns the
    /// number of points; on error `out` is left as it was.
    pub fn parse(
        &mut self,
        input: &[u8],
        extra_tags: &[(&str, &str)],
        now_ns: i64,
        out: &mut Vec<Point>,
    ) -> Result<usize, Reject> {
        let text = std::str::from_utf8(input).map_err(|_| Reject::NotUtf8)?;
        let start = out.len();
        let result = text
            .split('\n')
            .try_for_each(|line| self.line(line, extra_tags, now_ns, start, out));
        match result {
            Ok(()) => Ok(out.len() - start),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    fn line(
        &mut self,
        line: &str,
        extra: &[(&str, &str)],
        now_ns: i64,
        start: usize,
        out: &mut Vec<Point>,
    ) -> Result<(), Reject> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let b = line.as_bytes();
        // measurement[,tags] up to the first unescaped space
        let series_end = scan(b, 0, b" ");
        if series_end == b.len() {
            return Err(bad(line, "no field set"));
        }
        let series = &line[..series_end];
        let meas_end = scan(b, 0, b", ");
        if meas_end == 0 {
            return Err(bad(line, "empty measurement"));
        }
        let mut i = series_end;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let first = out.len();
        let mut ts_ns = None;
        loop {
            let key_end = scan(b, i, b"= ,");
            if key_end == i || key_end == b.len() || b[key_end] != b'=' {
                return Err(bad(line, "expected field=value"));
            }
            let key = &line[i..key_end];
            let v0 = key_end + 1;
            if b.get(v0) == Some(&b'"') {
                return Err(Reject::StringField(short(&unescape(key))));
            }
            let v_end = b[v0..]
                .iter()
                .position(|&c| c == b',' || c == b' ')
                .map_or(b.len(), |p| v0 + p);
            let value = field_value(&line[v0..v_end], key)?;
            if out.len() - start >= self.max_fields {
                return Err(Reject::TooManyFields);
            }
            let series_key = self.key(series, meas_end, key, extra)?;
            out.push(Point {
                series: series_key,
                ts_ns: 0,
                value,
            });
            i = v_end;
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b' ') => {
                    let rest = line[i..].trim_matches([' ', '\t']);
                    if !rest.is_empty() {
                        ts_ns = Some(self.timestamp(rest)?);
                    }
                    break;
                }
                _ => break,
            }
        }
        let ts = ts_ns.unwrap_or(now_ns);
        for p in &mut out[first..] {
            p.ts_ns = ts;
        }
        Ok(())
    }

    fn timestamp(&self, raw: &str) -> Result<i64, Reject> {
        raw.parse::<i64>()
            .ok()
            .and_then(|t| t.checked_mul(self.precision.nanos()))
            .ok_or_else(|| Reject::BadTimestamp(short(raw)))
    }

    /// The key of `series` (escaped, measurement ending at `meas_end`) and
    /// `field` (escaped), with `extra` tags.
    fn key(
        &mut self,
        series: &str,
        meas_end: usize,
        field: &str,
        extra: &[(&str, &str)],
    ) -> Result<SeriesKey, Reject> {
        let raw = self.keys.raw_with_tags(extra.iter().copied());
        raw.push(0xff);
        raw.extend_from_slice(series.as_bytes());
        raw.push(0xff);
        raw.extend_from_slice(field.as_bytes());
        self.keys.get_or_build(|| {
            let measurement = unescape(&series[..meas_end]);
            let tags = parse_tags(series, meas_end)?;
            let all = extra
                .iter()
                .copied()
                .chain(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            Ok(SeriesKey::new(&measurement, all, &unescape(field)))
        })
    }
}

/// The tags after the measurement: `,k=v,k2=v2`, unescaped.
fn parse_tags(series: &str, meas_end: usize) -> Result<Vec<(String, String)>, Reject> {
    let b = series.as_bytes();
    let mut tags = Vec::new();
    let mut i = meas_end;
    while i < b.len() {
        // b[i] == ','
        let k0 = i + 1;
        let k_end = scan(b, k0, b"=,");
        if k_end == k0 || k_end == b.len() || b[k_end] != b'=' {
            return Err(bad(series, "expected tag=value"));
        }
        let v0 = k_end + 1;
        let v_end = scan(b, v0, b",=");
        if v_end < b.len() && b[v_end] == b'=' {
            return Err(bad(series, "unescaped `=` in a tag value"));
        }
        let key = unescape(&series[k0..k_end]);
        if v_end == v0 {
            return Err(Reject::EmptyTag(short(&key)));
        }
        tags.push((key, unescape(&series[v0..v_end])));
        i = v_end;
    }
    Ok(tags)
}

/// The index of the first byte of `stops` at or after `from` that is not
/// escaped by a backslash, or the length.
fn scan(b: &[u8], from: usize, stops: &[u8]) -> usize {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if stops.contains(&c) => return i,
            _ => i += 1,
        }
    }
    b.len()
}

/// Removes the backslash of `\,`, `\=`, `\ ` and `\\`; keeps any other.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&n) = chars.peek() {
                if matches!(n, ',' | '=' | ' ' | '\\') {
                    out.push(n);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

fn field_value(raw: &str, key: &str) -> Result<f64, Reject> {
    let not_a_number = || Reject::NotANumber(short(&unescape(key)));
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(1.0),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(0.0),
        _ => {}
    }
    let x = if let Some(int) = raw.strip_suffix('i') {
        int.parse::<i64>().map_err(|_| not_a_number())? as f64
    } else if let Some(uint) = raw.strip_suffix('u') {
        uint.parse::<u64>().map_err(|_| not_a_number())? as f64
    } else {
        // Rust also reads "inf", "NaN" and "infinity": line protocol does not.
        if raw.is_empty()
            || !raw
                .bytes()
                .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
        {
            return Err(not_a_number());
        }
        raw.parse::<f64>().map_err(|_| not_a_number())?
    };
    if !x.is_finite() {
        return Err(Reject::NotFinite(short(&unescape(key))));
    }
    Ok(x)
}

fn short(s: &str) -> String {
    s.chars().take(32).collect()
}

fn bad(line: &str, what: &str) -> Reject {
    Reject::BadLine(format!("{what} in `{}`", short(line)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::influx::write_line;
    use proptest::prelude::*;

    fn one(line: &str) -> Result<Vec<(String, i64, f64)>, Reject> {
        parse_lines(line.as_bytes(), TimeUnit::Ns, 42).map(|v| {
            v.into_iter()
                .map(|p| (p.series.as_str().to_string(), p.ts_ns, p.value))
                .collect()
        })
    }

    #[test]
    fn fields_of_every_type() {
        let got = one("env,site=lab,dev=d1 t=21.5,n=-3i,u=7u,on=t,off=FALSE 1000").unwrap();
        let want = [
            ("env,dev=d1,site=lab t", 21.5),
            ("env,dev=d1,site=lab n", -3.0),
            ("env,dev=d1,site=lab u", 7.0),
            ("env,dev=d1,site=lab on", 1.0),
            ("env,dev=d1,site=lab off", 0.0),
        ];
        assert_eq!(got.len(), want.len());
        for ((k, ts, v), (wk, wv)) in got.iter().zip(want) {
            assert_eq!((k.as_str(), *ts, *v), (wk, 1000, wv));
        }
    }

    #[test]
    fn escapes_and_precision() {
        let pts = parse_lines(
            br"my\ env,si\,te=a\ b\=c,x=back\\slash fi\=eld=1 5",
            TimeUnit::Ms,
            0,
        )
        .unwrap();
        assert_eq!(pts[0].ts_ns, 5_000_000);
        let want = SeriesKey::new(
            "my env",
            [("si,te", "a b=c"), ("x", r"back\slash")],
            "fi=eld",
        );
        assert_eq!(pts[0].series, want);
        // A backslash before an ordinary character stays.
        let pts = parse_lines(br"m,k=a\b v=1", TimeUnit::Ns, 0).unwrap();
        assert_eq!(pts[0].series, SeriesKey::new("m", [("k", r"a\b")], "v"));
    }

    #[test]
    fn no_timestamp_uses_arrival_and_comments_blank_lines_skip() {
        let pts = parse_lines(b"# hello\r\n\nm v=1\r\n  m v=2 \n", TimeUnit::Ns, 9).unwrap();
        assert_eq!(pts.len(), 2);
        assert!(pts.iter().all(|p| p.ts_ns == 9));
    }

    #[test]
    fn rejects_with_reasons() {
        let label = |s: &str| one(s).unwrap_err().label();
        assert_eq!(label("m s=\"hot\" 1"), "string_field");
        assert_eq!(label("m v=1x"), "not_a_number");
        assert_eq!(label("m v=inf"), "not_a_number");
        assert_eq!(label("m v=1e999"), "not_finite");
        assert_eq!(label("m v=1 12x"), "bad_timestamp");
        assert_eq!(label("m v=1 99999999999999999999"), "bad_timestamp");
        assert_eq!(label("m"), "bad_line");
        assert_eq!(label("m v"), "bad_line");
        assert_eq!(label(",t=1 v=1"), "bad_line");
        assert_eq!(label("m,t v=1"), "bad_line");
        assert_eq!(label("m,t= v=1"), "empty_tag");
        assert_eq!(label("m v=1,"), "bad_line");
        assert_eq!(
            parse_lines(b"m v=\xff", TimeUnit::Ns, 0).unwrap_err(),
            Reject::NotUtf8
        );
        // All or nothing.
        assert!(one("m v=1\nm v=oops").is_err());
        let mut p = LpParser::new(TimeUnit::Ns, 3);
        let mut out = Vec::new();
        assert_eq!(
            p.parse(b"m a=1,b=2\nm c=3,d=4", &[], 0, &mut out),
            Err(Reject::TooManyFields)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn extra_tags_are_added_and_the_line_wins() {
        let mut p = LpParser::new(TimeUnit::Ns, 100);
        let mut out = Vec::new();
        p.parse(
            b"m,site=own v=1",
            &[("site", "topic"), ("dev", "d1")],
            0,
            &mut out,
        )
        .unwrap();
        p.parse(b"m,site=own v=1", &[("dev", "d2")], 0, &mut out)
            .unwrap();
        assert_eq!(out[0].series.as_str(), "m,dev=d1,site=own v");
        assert_eq!(out[1].series.as_str(), "m,dev=d2,site=own v");
    }

    fn name() -> impl Strategy<Value = String> {
        // Specials, backslashes, unicode; never a newline; not starting with '#'.
        proptest::string::string_regex(r"[a-zA-Z0-9_ ,=\\\\é°\x22-]{1,12}")
            .unwrap()
            .prop_filter("not a comment", |s| !s.starts_with('#'))
    }

    proptest! {
        #[test]
        fn round_trips_what_the_influx_sink_writes(
            m in name(),
            tags in proptest::collection::btree_map(name(), name(), 0..4),
            field in name(),
            value in any::<f64>().prop_filter("finite", |v| v.is_finite()),
            ts in any::<i64>(),
        ) {
            let key = SeriesKey::new(&m, tags.iter().map(|(k, v)| (k.as_str(), v.as_str())), &field);
            let p = Point { series: key, ts_ns: ts, value };
            let mut text = String::new();
            write_line(&mut text, &p);
            let back = parse_lines(text.as_bytes(), TimeUnit::Ns, 0)
                .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
            prop_assert_eq!(back.len(), 1);
            prop_assert_eq!(&back[0].series, &p.series, "{:?}", text);
            prop_assert_eq!(back[0].ts_ns, ts);
            prop_assert_eq!(back[0].value.to_bits(), value.to_bits());
        }
    }
}
