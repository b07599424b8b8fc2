//! The data model: a point is a series key, a timestamp and a value.
//!
//! Series keys are kept in InfluxDB line-protocol form (`measurement,tag=v field`,
//! tags sorted, special characters escaped) so the most common sink can write them
//! without re-encoding, and so two spellings of the same series compare equal.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use triomphe::HeaderSlice;

use serde::{Deserialize, Serialize};

/// A map keyed by series, hashed with aHash: several times faster than the
/// default SipHash on keys of 30–80 bytes. The sources' guard and the store
/// look a point's key up here only when the key does not carry their entry
/// already (see [`SeriesMemo`]). Seeded at random, as SipHash is: series keys
/// come from devices, and a fixed seed would let crafted keys collide.
pub type SeriesMap<V> = std::collections::HashMap<SeriesKey, V, ahash::RandomState>;

/// Series keys already built, by the raw bytes they were built from: building
/// a key unescapes, sorts tags and allocates, and sensors repeat the same
/// keys. Bounded, so that a source inventing tags cannot grow it forever:
/// past [`KeyCache::MAX`] keys it starts afresh. The bound is well above the
/// default `max_series`, because a cache smaller than a fleet's working set
/// is emptied once every round of readings and then hits almost never.
#[derive(Default)]
pub struct KeyCache {
    keys: std::collections::HashMap<Box<[u8]>, SeriesKey, ahash::RandomState>,
    raw: Vec<u8>,
}

impl KeyCache {
    /// Most keys kept.
    pub const MAX: usize = 1 << 16;

    /// The buffer to write the raw form of the next key into (cleared):
    /// anything that tells keys apart, e.g. the parts with separators.
    pub fn raw(&mut self) -> &mut Vec<u8> {
        self.raw.clear();
        &mut self.raw
    }

    /// [`KeyCache::raw`] with `tags` written into it (`k 0xfe v 0xfe` each:
    /// bytes no UTF-8 text holds, so no two tag lists write the same).
    pub fn raw_with_tags<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        tags: impl IntoIterator<Item = (K, V)>,
    ) -> &mut Vec<u8> {
        let raw = self.raw();
        for (k, v) in tags {
            raw.extend_from_slice(k.as_ref().as_bytes());
            raw.push(0xfe);
            raw.extend_from_slice(v.as_ref().as_bytes());
            raw.push(0xfe);
        }
        raw
    }

    /// The key of the raw form last written to [`KeyCache::raw`]; `build`
    /// makes it when it is not cached.
    pub fn get_or_build<E>(
        &mut self,
        build: impl FnOnce() -> Result<SeriesKey, E>,
    ) -> Result<SeriesKey, E> {
        if let Some(k) = self.keys.get(&self.raw[..]) {
            return Ok(k.clone());
        }
        let key = build()?;
        if self.keys.len() >= Self::MAX {
            self.keys.clear();
        }
        self.keys.insert(self.raw.as_slice().into(), key.clone());
        Ok(key)
    }

    /// [`KeyCache::get_or_build`] for a `build` that cannot fail.
    pub fn get_or_insert_with(&mut self, build: impl FnOnce() -> SeriesKey) -> SeriesKey {
        match self.get_or_build(|| Ok::<_, std::convert::Infallible>(build())) {
            Ok(key) => key,
            Err(never) => match never {},
        }
    }
}

/// The identity of one time series: `measurement,tag=v field`.
///
/// Cheap to clone (one reference-counted allocation): the same key is attached
/// to many points. The allocation also holds a [`SeriesMemo`] slot per table
/// that looks series up for every point (the store's ids, a source's guard).
#[derive(Clone)]
pub struct SeriesKey(triomphe::Arc<HeaderSlice<[AtomicU64; MEMO_SLOTS], str>>);

/// Tables that remember their entry on the keys themselves.
const MEMO_SLOTS: usize = 2;

/// A table keyed by series that also remembers each key's entry (a `u32`) on
/// the key: the next lookup of the same key reads it there, in the
/// allocation the caller just touched, instead of probing a hash table of
/// thousands of series. At 10k series and 10k points/s three such probes a
/// point (a source's key cache, its guard, the store's ids) were a fifth of
/// the agent's CPU, their time almost all cache misses. A key holds one
/// entry per slot, tagged with its owner, so two owners of one slot (two
/// stores in one process) only take turns; the owner keeps its hash table
/// as the truth and this as a shortcut.
#[derive(Debug)]
pub struct SeriesMemo {
    slot: usize,
    owner: u64,
}

impl SeriesMemo {
    /// The store's slot: series ids.
    pub fn store() -> SeriesMemo {
        SeriesMemo::new(0)
    }

    /// A source guard's slot: series let through.
    pub fn guard() -> SeriesMemo {
        SeriesMemo::new(1)
    }

    fn new(slot: usize) -> SeriesMemo {
        // Owner 0 is no owner (a fresh key's slots).
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SeriesMemo {
            slot,
            owner: NEXT.fetch_add(1, Relaxed) << 32,
        }
    }

    /// This owner's entry on `key`, if it was the last to set one.
    pub fn get(&self, key: &SeriesKey) -> Option<u32> {
        let v = key.0.header[self.slot].load(Relaxed);
        (v & !u64::from(u32::MAX) == self.owner).then_some(v as u32)
    }

    /// Remembers `value` on `key`.
    pub fn set(&self, key: &SeriesKey, value: u32) {
        key.0.header[self.slot].store(self.owner | u64::from(value), Relaxed);
    }
}

/// The same allocation first: a source's key cache hands out clones of one
/// allocation, so lookups in tables keyed by series mostly compare a pointer.
impl PartialEq for SeriesKey {
    fn eq(&self, other: &SeriesKey) -> bool {
        triomphe::Arc::ptr_eq(&self.0, &other.0) || self.as_str() == other.as_str()
    }
}

impl Eq for SeriesKey {}

impl PartialOrd for SeriesKey {
    fn partial_cmp(&self, other: &SeriesKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// By text.
impl Ord for SeriesKey {
    fn cmp(&self, other: &SeriesKey) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// Hashes the text, as equality compares it (the pointer is only a shortcut).
impl std::hash::Hash for SeriesKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

/// As its text.
impl Serialize for SeriesKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SeriesKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SeriesKey, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(SeriesKey::from_canonical(&text))
    }
}

impl SeriesKey {
    /// Builds a key from unescaped parts. Tags are sorted by key; later
    /// duplicates of a tag key override earlier ones.
    pub fn new<'a>(
        measurement: &str,
        tags: impl IntoIterator<Item = (&'a str, &'a str)>,
        field: &str,
    ) -> SeriesKey {
        let mut tags: Vec<(&str, &str)> = tags.into_iter().collect();
        // Stable sort keeps insertion order among equal keys; dedup keeps the last.
        tags.sort_by(|a, b| a.0.cmp(b.0));
        let mut deduped: Vec<(&str, &str)> = Vec::with_capacity(tags.len());
        for t in tags {
            match deduped.last_mut() {
                Some(last) if last.0 == t.0 => *last = t,
                _ => deduped.push(t),
            }
        }
        let mut s = String::with_capacity(measurement.len() + field.len() + 16 * deduped.len());
        escape_into(&mut s, measurement, &[',', ' ']);
        for (k, v) in deduped {
            s.push(',');
            escape_into(&mut s, k, &[',', '=', ' ']);
            s.push('=');
            escape_into(&mut s, v, &[',', '=', ' ']);
        }
        s.push(' ');
        escape_into(&mut s, field, &[',', '=', ' ']);
        SeriesKey::from_canonical(&s)
    }

    /// Wraps a key that is already in canonical line-protocol form (as stored).
    pub fn from_canonical(s: &str) -> SeriesKey {
        SeriesKey(triomphe::Arc::from_header_and_str(Default::default(), s))
    }

    /// The key as text, `measurement,tags field`.
    pub fn as_str(&self) -> &str {
        &self.0.slice
    }

    /// Splits the key into its line-protocol series part (`measurement,tags`)
    /// and its field name (still escaped), at the last unescaped space.
    pub fn split(&self) -> (&str, &str) {
        let text = self.as_str();
        let bytes = text.as_bytes();
        let mut split = None;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 1,
                b' ' => split = Some(i),
                _ => {}
            }
            i += 1;
        }
        match split {
            Some(at) => (&text[..at], &text[at + 1..]),
            None => (text, ""),
        }
    }
}

/// A series key's parts, unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesParts {
    /// The measurement.
    pub measurement: String,
    /// Tags in key order.
    pub tags: Vec<(String, String)>,
    /// The field name.
    pub field: String,
}

impl SeriesKey {
    /// The measurement, tags and field, with line protocol's escapes removed.
    pub fn parts(&self) -> SeriesParts {
        let (series, field) = self.split();
        let mut parts = split_escaped(series, ',').into_iter();
        let measurement = unescape(parts.next().unwrap_or_default());
        let tags = parts
            .map(|tag| {
                let name = split_escaped(tag, '=')[0];
                let value = tag.get(name.len() + 1..).unwrap_or_default();
                (unescape(name), unescape(value))
            })
            .collect();
        SeriesParts {
            measurement,
            tags,
            field: unescape(field),
        }
    }
}

/// `s` split at every `sep` not escaped with a backslash.
fn split_escaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Removes line protocol's backslash escapes.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap_or('\\')),
            c => out.push(c),
        }
    }
    out
}

fn escape_into(out: &mut String, s: &str, special: &[char]) {
    for c in s.chars() {
        if c == '\\' || special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The wall clock now, in nanoseconds since the Unix epoch (0 before 1970).
///
/// Every arrival stamp and the clock watch read this, so a test can play a
/// board whose clock is wrong until NTP steps it: see [`test_clock_lag`].
pub fn now_ns() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    now - test_clock_lag()
}

/// The time a source stamps on a reading that carries none: [`now_ns`]
/// rounded down to the millisecond.
///
/// An arrival time holds the jitter of the serial line, the broker and the
/// scheduler, a millisecond or more, so its digits below the millisecond are
/// noise, and noise is what a store cannot compress: about 20 bits a point,
/// paid in the journal and again in the sealed block (`tidegate bench store`
/// at 10k series: 15.3 B/pt written with nanosecond stamps, see the README).
/// Telegraf rounds its timestamps too (`precision`, by default to the
/// collection interval). A time the device sends is stored as sent.
pub fn arrival_ns() -> i64 {
    to_arrival(now_ns())
}

/// `ns` rounded down to an arrival stamp's unit: for sources that tell
/// arrival-stamped points apart by their exact nanosecond first (see
/// [`crate::source::guard::Guard::newly_stamped`]).
pub fn to_arrival(ns: i64) -> i64 {
    ns.div_euclid(ARRIVAL_NS) * ARRIVAL_NS
}

/// The unit of arrival stamps, ns.
pub const ARRIVAL_NS: i64 = 1_000_000;

/// Test hook `TIDEGATE_TEST_CLOCK_STEP=AFTER:BY` (humantime durations, e.g.
/// `3s:1day`): the agent's wall clock runs `BY` behind for the first `AFTER`
/// of the process, then steps forward to the true time, as a Raspberry Pi's
/// clock does when NTP corrects the time restored at boot.
fn test_clock_lag() -> i64 {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};
    static LAG: OnceLock<Option<(Instant, i64)>> = OnceLock::new();
    let lag = LAG.get_or_init(|| {
        let v = std::env::var("TIDEGATE_TEST_CLOCK_STEP").ok()?;
        let (after, by) = v.split_once(':')?;
        let after: Duration = humantime::parse_duration(after).ok()?;
        let by: Duration = humantime::parse_duration(by).ok()?;
        Some((Instant::now() + after, by.as_nanos() as i64))
    });
    match lag {
        Some((until, by)) if Instant::now() < *until => *by,
        _ => 0,
    }
}

/// One reading: a value of a series at an instant (nanoseconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Which series the value belongs to.
    pub series: SeriesKey,
    /// Nanoseconds since the Unix epoch, UTC.
    pub ts_ns: i64,
    /// The value; integers and booleans are stored as f64.
    pub value: f64,
}

/// Bytes a source could not turn into points, kept in the store's bounded
/// dead-letter table for inspection (`tidegate query --dead-letters`).
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The source's name.
    pub source: Arc<str>,
    /// The reject's counter label (`bad_crc`, `too_old`, ...).
    pub reason: &'static str,
    /// The reject's message.
    pub detail: String,
    /// The bytes as received, cut to [`DeadLetter::MAX_RAW`]; `len` is the
    /// original length.
    pub raw: Vec<u8>,
    /// Original length of the bytes.
    pub len: usize,
    /// Arrival time, ns since the Unix epoch.
    pub ts_ns: i64,
}

impl DeadLetter {
    /// Bytes of a message kept at most.
    pub const MAX_RAW: usize = 1024;

    /// A dead letter of `raw` (cut to [`DeadLetter::MAX_RAW`]).
    pub fn new(
        source: Arc<str>,
        reason: &'static str,
        detail: String,
        raw: &[u8],
        ts_ns: i64,
    ) -> DeadLetter {
        DeadLetter {
            source,
            reason,
            detail,
            raw: raw[..raw.len().min(Self::MAX_RAW)].to_vec(),
            len: raw.len(),
            ts_ns,
        }
    }
}

/// Points that travel together: from a source to the store, or from the store to a sink.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// The points, in arrival order.
    pub points: Vec<Point>,
}

impl Batch {
    /// An empty batch with room for `n` points.
    pub fn with_capacity(n: usize) -> Batch {
        Batch {
            points: Vec::with_capacity(n),
        }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// True when there is no point.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_sorted_and_escaped() {
        let k = SeriesKey::new("env room", [("site", "lab 1"), ("dev", "a,b")], "temp");
        assert_eq!(k.as_str(), r"env\ room,dev=a\,b,site=lab\ 1 temp");
        assert_eq!(k.split(), (r"env\ room,dev=a\,b,site=lab\ 1", "temp"));
    }

    #[test]
    fn keys_built_apart_are_equal_and_hash_alike() {
        let a = SeriesKey::new("m", [("site", "lab")], "f");
        let b = SeriesKey::from_canonical("m,site=lab f");
        assert!(!triomphe::Arc::ptr_eq(&a.0, &b.0));
        assert!(a == b && a == a.clone());
        let h = ahash::RandomState::new();
        assert_eq!(h.hash_one(&a), h.hash_one(&b));
        assert_ne!(a, SeriesKey::from_canonical("m,site=lab g"));
        assert!(a < SeriesKey::from_canonical("m,site=lab g"));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#""m,site=lab f""#);
        assert_eq!(serde_json::from_str::<SeriesKey>(&json).unwrap(), a);
    }

    #[test]
    fn a_memo_is_its_owners_alone_and_shared_by_clones() {
        let (one, two) = (SeriesMemo::store(), SeriesMemo::store());
        let guard = SeriesMemo::guard();
        let a = SeriesKey::from_canonical("m f");
        assert_eq!(one.get(&a), None);
        one.set(&a, 7);
        assert_eq!(one.get(&a.clone()), Some(7));
        // Another owner of the slot takes it over; the first sees nothing
        // rather than the other's value.
        assert_eq!(two.get(&a), None);
        two.set(&a, u32::MAX);
        assert_eq!(two.get(&a), Some(u32::MAX));
        assert_eq!(one.get(&a), None);
        // Slots are apart, and an equal key built apart has its own.
        guard.set(&a, 0);
        assert_eq!((guard.get(&a), two.get(&a)), (Some(0), Some(u32::MAX)));
        assert_eq!(two.get(&SeriesKey::from_canonical("m f")), None);
    }

    #[test]
    fn later_duplicate_tag_wins() {
        let k = SeriesKey::new("m", [("a", "1"), ("a", "2")], "f");
        assert_eq!(k.as_str(), "m,a=2 f");
    }

    #[test]
    fn split_respects_escapes() {
        assert_eq!(split_escaped(r"a\,b,c=d\=e", ','), [r"a\,b", r"c=d\=e"]);
        assert_eq!(unescape(r"a\,b\ c\\d"), r"a,b c\d");
    }

    #[test]
    fn parts_are_unescaped() {
        let k = SeriesKey::new(
            "env room",
            [("site", "lab 1"), ("dev", "a,b=c")],
            "my field",
        );
        let p = k.parts();
        assert_eq!(p.measurement, "env room");
        assert_eq!(
            p.tags,
            vec![
                ("dev".into(), "a,b=c".into()),
                ("site".into(), "lab 1".into())
            ]
        );
        assert_eq!(p.field, "my field");
    }

    #[test]
    fn split_handles_escaped_space_in_field() {
        let k = SeriesKey::new("m", [], "my field");
        assert_eq!(k.split(), ("m", r"my\ field"));
    }
}
