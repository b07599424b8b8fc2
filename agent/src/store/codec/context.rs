//! Journal chunks coded against each series' state (format 9).
//!
//! A flush holds about one point a series, so a chunk coded alone has
//! nothing to take a point against: its ids, times and values cost ~5 B a
//! point on a fleet of 10k series. Coded against the point each series
//! left in the chunks before it (time as delta-of-delta, mantissa as a
//! delta, ids in ascending order), a chunk costs about a quarter of that.
//! The price: a chunk decodes only with the [`JournalState`] the chunks
//! before it leave, so a reader starts at a self-contained chunk (any other
//! format) and carries the state forward; see the store's journal.
//!
//! Layout: as format 8 (frame table, frames of ascending series ranges,
//! each zstd'ed alone, CRC-32 at the end), each frame's raw columns being
//! its points sorted by series (arrival order within one): ids as varint
//! steps from the frame's lowest id; a base time (zigzag varint: the first
//! point of a series without state, else 0); times as zigzag varints,
//! against the series' last time plus its last step if it has a state,
//! else against the base; value decimals (one byte each, as format
//! 8); mantissas as zigzag steps from the series' last mantissa of the same
//! decimals; the byte planes of the XORs of raw values with the series'
//! last value.

use super::*;

/// A series' last point, as context-coded chunks take it: 24 bytes (the
/// writer and each sink's reader keep one a series).
#[derive(Clone, Copy, Default)]
struct Slot {
    ts: i64,
    /// The mantissa (as bits of an i64), or the value's bits when `k` is
    /// [`RAW_VALUE`].
    val: u64,
    /// Its last time step in microseconds, clamped to ±35 minutes (0 after
    /// its first point): arrival stamps are whole milliseconds, and a
    /// slower series pays a few bytes a point for the clamp.
    step_us: i32,
    /// Decimals of the value, or [`RAW_VALUE`].
    k: u8,
    /// The series has had a point.
    seen: bool,
}

/// What the journal chunks read so far leave for the next: each series'
/// last point (time, step, decimals and mantissa or bits). Both the writer
/// and every reader keep one; they agree because both note each point the
/// same way ([`JournalState::note`]), whatever format carried it.
#[derive(Clone)]
pub struct JournalState {
    /// The series whose state is kept: a reader of a range of series keeps
    /// only theirs.
    ids: RangeInclusive<u32>,
    /// By series id from `ids.start()` on (ids are dense, given out in order).
    slots: Vec<Slot>,
    /// Where a point of a series outside `ids` is decoded (and forgotten).
    spare: Slot,
}

impl Default for JournalState {
    fn default() -> Self {
        JournalState::for_ids(0..=u32::MAX)
    }
}

impl JournalState {
    /// No series seen; every series' state kept.
    pub fn new() -> JournalState {
        JournalState::default()
    }

    /// No series seen; only the state of the series in `ids` kept (a
    /// reader of those alone: the points of others decode wrong, unseen).
    pub fn for_ids(ids: RangeInclusive<u32>) -> JournalState {
        JournalState {
            ids,
            slots: Vec::new(),
            spare: Slot::default(),
        }
    }

    /// Forgets every series (a reader starting afresh).
    pub fn clear(&mut self) {
        self.slots.clear();
    }

    #[inline]
    fn slot(&mut self, s: u32) -> &mut Slot {
        if !self.ids.contains(&s) {
            self.spare = Slot::default();
            return &mut self.spare;
        }
        let i = (s - self.ids.start()) as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, Slot::default());
        }
        &mut self.slots[i]
    }

    /// Notes points read from (or written in) a self-contained chunk, in
    /// the order a decode gives them (each series' points in arrival order).
    pub fn note(&mut self, series: &[u32], ts: &[i64], values: &[f64]) {
        for ((&s, &t), &v) in series.iter().zip(ts).zip(values) {
            let slot = self.slot(s);
            let (k, val) = match journal_decimal(v, slot.k) {
                Some((k, m)) => (k, m as u64),
                None => (RAW_VALUE, v.to_bits()),
            };
            *slot = slot.after(t, k, val);
        }
    }
}

/// Nanoseconds in the unit a time step is kept in (a microsecond).
const STEP_UNIT: i64 = 1000;

impl Slot {
    /// Its last point as the frame codec's [`Prev`].
    #[inline]
    fn prev(&self) -> Prev {
        Prev {
            ts: self.ts,
            val: self.val,
            k: self.k,
            seen: self.seen,
        }
    }

    /// The slot once a point (`t`, decimals `k`, mantissa or bits `val`) follows.
    #[inline]
    fn after(&self, t: i64, k: u8, val: u64) -> Slot {
        let step_us = if self.seen {
            let us = t.wrapping_sub(self.ts) / STEP_UNIT;
            us.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
        } else {
            0
        };
        Slot {
            ts: t,
            val,
            step_us,
            k,
            seen: true,
        }
    }

    /// What a point's time is coded against: its series' last time plus
    /// its last step, or the frame's base for a series seen first. Never
    /// another series' point: a reader of a range of series holds the
    /// state of those series only, and a frame mixes them with others.
    #[inline]
    fn expected(&self, base: i64) -> i64 {
        if self.seen {
            self.ts.wrapping_add(i64::from(self.step_us) * STEP_UNIT)
        } else {
            base
        }
    }
}

/// [`encode_mixed_part`] coded against `state` (format 9), which it
/// advances past these points. `order` is reordered by series. `back`:
/// how many sequence numbers before this chunk's the self-contained chunk
/// that began the state's run lies (readers start there; see
/// [`context_back`]).
///
/// # Panics
///
/// If the columns differ in length or `order` holds more than [`MAX_POINTS`].
pub fn encode_context_part(
    series: &[u32],
    ts: &[i64],
    values: &[f64],
    order: &mut [u32],
    state: &mut JournalState,
    back: u64,
    out: &mut Vec<u8>,
) {
    let n = check_part(series, ts, values, order);
    // By series, arrival order within one.
    order.sort_unstable_by_key(|&i| (series[i as usize], i));
    let mut raw = Vec::new();
    let mut framer = Framer::default();
    let mut at = 0;
    while at < n {
        let begin = at;
        at = frame_end(series, order, begin);
        let part = &order[begin..at];
        let (lo, hi) = (
            series[part[0] as usize],
            series[part[part.len() - 1] as usize],
        );
        raw.clear();
        encode_context_raw(series, ts, values, part, lo, state, &mut raw);
        framer.push(&raw, lo, hi, part.len());
    }
    framer.finish(MIXED_V5, Some(back), n, out);
}

/// The raw columns of one frame of format 9 (layout in the module docs).
fn encode_context_raw(
    series: &[u32],
    ts: &[i64],
    values: &[f64],
    part: &[u32],
    lo: u32,
    state: &mut JournalState,
    raw: &mut Vec<u8>,
) {
    let n = part.len();
    raw.reserve(n * 4);
    let mut last_id = lo;
    for &i in part {
        let s = series[i as usize];
        put_varint(raw, u64::from(s - last_id));
        last_id = s;
    }
    // The base: the time of the first point whose series has no state.
    let base = part
        .iter()
        .find(|&&i| !state.slot(series[i as usize]).seen)
        .map_or(0, |&i| ts[i as usize]);
    put_varint(raw, zigzag(base));
    let mut ks = Vec::with_capacity(n);
    let mut mantissas = Vec::with_capacity(n * 2);
    let mut xors: Vec<u64> = Vec::new();
    for &i in part {
        let (s, t, v) = (series[i as usize], ts[i as usize], values[i as usize]);
        let slot = state.slot(s);
        let p = slot.prev();
        put_varint(raw, zigzag(t.wrapping_sub(slot.expected(base))));
        let (k, val) = match journal_decimal(v, p.k) {
            Some((k, m)) => {
                put_varint(&mut mantissas, zigzag(m.wrapping_sub(p.mantissa_ref(k))));
                (k, m as u64)
            }
            None => {
                xors.push(v.to_bits() ^ p.bits());
                (RAW_VALUE, v.to_bits())
            }
        };
        ks.push(k);
        *slot = slot.after(t, k, val);
    }
    raw.extend_from_slice(&ks);
    raw.extend_from_slice(&mantissas);
    put_planes(raw, &xors);
}

/// Decodes a journal chunk of any format with the state the chunks before
/// it left, which it advances: the points of the series the state keeps
/// ([`JournalState::for_ids`]). A chunk of format 9 needs the state; the
/// others are self-contained and only note their points.
pub fn decode_with_state(
    bytes: &[u8],
    checksum: Checksum,
    state: &mut JournalState,
    series: &mut Vec<u32>,
    ts: &mut Vec<i64>,
    values: &mut Vec<f64>,
) -> Result<(), CodecError> {
    let ids = state.ids.clone();
    if bytes.first() != Some(&MIXED_V5) {
        let from = series.len();
        decode_mixed_with(bytes, checksum, ids, series, ts, values)?;
        state.note(&series[from..], &ts[from..], &values[from..]);
        return Ok(());
    }
    let Mixed::Framed(_, heads, zs) = mixed_frames(bytes, checksum)? else {
        return Err(corrupt("format 9 without its frame table"));
    };
    each_frame(&heads, zs, &ids, |raw, h| {
        decode_context_raw(raw, h, &ids, state, series, ts, values)
    })
}

/// For a chunk coded against the chunks before it, how many sequence
/// numbers back the self-contained chunk lies whose state it continues;
/// `None` for a self-contained chunk (or bytes too short to tell).
pub fn context_back(bytes: &[u8]) -> Option<u64> {
    if bytes.first() != Some(&MIXED_V5) {
        return None;
    }
    Reader::new(&bytes[1..]).varint().ok()
}

/// The series ids of one frame of format 9, checked against its head.
pub(super) fn read_context_ids(
    c: &mut Reader,
    h: &FrameHead,
    out: &mut Vec<u32>,
) -> Result<(), CodecError> {
    out.reserve(h.n);
    let mut id = *h.ids.start();
    for _ in 0..h.n {
        let step = u32::try_from(c.varint()?).map_err(|_| corrupt("series id out of range"))?;
        id = id
            .checked_add(step)
            .filter(|s| h.ids.contains(s))
            .ok_or_else(|| corrupt("series id outside its frame"))?;
        out.push(id);
    }
    Ok(())
}

fn decode_context_raw(
    raw: &[u8],
    h: &FrameHead,
    want: &RangeInclusive<u32>,
    state: &mut JournalState,
    series: &mut Vec<u32>,
    ts: &mut Vec<i64>,
    values: &mut Vec<f64>,
) -> Result<(), CodecError> {
    let n = h.n;
    let mut c = Reader::new(raw);
    let mut ids = Vec::with_capacity(n);
    read_context_ids(&mut c, h, &mut ids)?;
    let base = unzigzag(c.varint()?);
    let mut deltas = Vec::with_capacity(n);
    for _ in 0..n {
        deltas.push(unzigzag(c.varint()?));
    }
    let mut mantissas = Vec::with_capacity(n);
    let (ks, planes) = read_values(&mut c, n, &mut mantissas)?;
    c.finish()?;
    let mut vals = Values::new(&mantissas, planes);
    for (i, &k) in ks.iter().enumerate() {
        let s = ids[i];
        let slot = state.slot(s);
        let p = slot.prev();
        let t = slot.expected(base).wrapping_add(deltas[i]);
        let (val, bits) = vals.next(&p, k);
        *slot = slot.after(t, k, val);
        if want.contains(&s) {
            series.push(s);
            ts.push(t);
            values.push(f64::from_bits(bits));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Flushes of (series, time, value); every `key`-th chunk self-contained
    /// (format 8), the rest coded against the state; then read back from a
    /// fresh state, all series and one range of them.
    fn round_trip(flushes: &[Vec<(u32, i64, f64)>], key: usize, range: RangeInclusive<u32>) {
        let mut writer = JournalState::new();
        let mut chunks = Vec::new();
        for (f, points) in flushes.iter().enumerate() {
            let s: Vec<u32> = points.iter().map(|p| p.0).collect();
            let t: Vec<i64> = points.iter().map(|p| p.1).collect();
            let v: Vec<f64> = points.iter().map(|p| p.2).collect();
            let mut order: Vec<u32> = (0..s.len() as u32).collect();
            let mut out = Vec::new();
            if f % key == 0 {
                let mut order = by_series(&s);
                encode_mixed_part(&s, &t, &v, &mut order, &mut out);
                // As a reader will: from what the chunk decodes to.
                let (mut s2, mut t2, mut v2) = (Vec::new(), Vec::new(), Vec::new());
                decode_mixed(&out, &mut s2, &mut t2, &mut v2).unwrap();
                writer.note(&s2, &t2, &v2);
            } else {
                encode_context_part(
                    &s,
                    &t,
                    &v,
                    &mut order,
                    &mut writer,
                    (f % key) as u64,
                    &mut out,
                );
                assert_eq!(context_back(&out), Some((f % key) as u64));
            }
            chunks.push(out);
        }
        for want in [0..=u32::MAX, range] {
            let mut reader = JournalState::for_ids(want.clone());
            for (chunk, points) in chunks.iter().zip(flushes) {
                let (mut s, mut t, mut v) = (Vec::new(), Vec::new(), Vec::new());
                decode_with_state(chunk, Checksum::Verify, &mut reader, &mut s, &mut t, &mut v)
                    .unwrap();
                // Each series' points, in arrival order, bit for bit.
                let mut expect: Vec<(u32, usize, i64, u64)> = points
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| want.contains(&p.0))
                    .map(|(i, p)| (p.0, i, p.1, p.2.to_bits()))
                    .collect();
                expect.sort_unstable();
                let got: Vec<(u32, i64, u64)> = s
                    .iter()
                    .zip(&t)
                    .zip(&v)
                    .map(|((&s, &t), &v)| (s, t, v.to_bits()))
                    .collect();
                let mut got_sorted = got.clone();
                got_sorted.sort_by_key(|g| g.0);
                let expect: Vec<(u32, i64, u64)> = expect.iter().map(|e| (e.0, e.2, e.3)).collect();
                assert_eq!(got_sorted, expect);
            }
        }
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (-100_000i64..100_000, 0u32..4).prop_map(|(m, k)| m as f64 / 10f64.powi(k as i32)),
            any::<f64>(),
            Just(f64::NAN),
            Just(-0.0),
            Just(f64::INFINITY),
            Just(f64::MIN_POSITIVE / 2.0),
        ]
    }

    proptest! {
        #[test]
        fn chunks_coded_against_the_state_round_trip(
            flushes in prop::collection::vec(
                prop::collection::vec((0u32..40, any::<i64>(), value()), 0..120),
                1..12,
            ),
            key in 1usize..5,
            lo in 0u32..40,
            width in 0u32..20,
        ) {
            round_trip(&flushes, key, lo..=lo + width);
        }

        #[test]
        fn single_points_of_extreme_times_and_values_round_trip(
            flushes in prop::collection::vec(
                prop::collection::vec((0u32..3, prop_oneof![Just(i64::MIN), Just(i64::MAX), any::<i64>()], value()), 1..2),
                1..12,
            ),
            key in 1usize..5,
            lo in 0u32..40,
            width in 0u32..20,
        ) {
            round_trip(&flushes, key, lo..=lo + width);
        }

        #[test]
        fn a_paced_fleet_round_trips(
            steps in prop::collection::vec((0i64..3, -3i64..=3), 30 * 8),
            key in 1usize..9,
        ) {
            // 30 series, a point each a second with millisecond jitter.
            let mut x = [0i64; 30];
            let flushes: Vec<Vec<(u32, i64, f64)>> = steps
                .chunks(30)
                .enumerate()
                .map(|(f, c)| {
                    c.iter().enumerate().map(|(s, &(j, d))| {
                        x[s] += d;
                        (s as u32 + 1, 1_764_000_000_000 + f as i64 * 1000 + j, x[s] as f64 / 100.0)
                    }).collect()
                })
                .collect();
            round_trip(&flushes, key, 3..=9);
        }

        #[test]
        fn damage_is_an_error_never_a_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (s, t, v): (Vec<u32>, Vec<i64>, Vec<f64>) =
                ((1..50).collect(), (1..50).map(|i| i * 1000).collect(), (1..50).map(|i| i as f64).collect());
            let mut st = JournalState::new();
            let mut out = Vec::new();
            let mut order: Vec<u32> = (0..s.len() as u32).collect();
            encode_context_part(&s, &t, &v, &mut order, &mut st, 1, &mut out);
            let mut bad = out.clone();
            let i = at.index(bad.len());
            bad[i] ^= flip;
            let (mut s2, mut t2, mut v2) = (Vec::new(), Vec::new(), Vec::new());
            let mut st = JournalState::new();
            prop_assert!(decode_with_state(&bad, Checksum::Verify, &mut st, &mut s2, &mut t2, &mut v2).is_err());
            let mut garbage = vec![MIXED_V5];
            garbage.extend_from_slice(&bytes);
            let _ = decode_with_state(&garbage, Checksum::Skip, &mut st, &mut s2, &mut t2, &mut v2);
        }
    }
}
