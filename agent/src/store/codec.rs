//! Chunk encodings of the ring store: columns of timestamps and values,
//! compressed, framed by a format byte and closed by a CRC-32.
//!
//! Two encodings, for two lives of a point:
//!
//! * **Per-series blocks** ([`encode_series`]): sealed, long-lived, what the
//!   disk mostly holds, so size wins and encoding may try several candidates
//!   per column and keep the smallest (see *Series layout* below).
//! * **Journal chunks** ([`encode_mixed`]): the points of every series in
//!   frames by series id, arrival order within each, written once a second
//!   on the ingest path and sealed into per-series blocks within minutes,
//!   so speed wins: one pass of per-series deltas and XORs, then zstd at
//!   level 1.
//!
//! Every encoding starts with a format byte so the store can evolve it; the
//! formats of the first skeleton (bytes 1 and 2) are still decoded.
//!
//! # Series layout (format 4)
//!
//! ```text
//! u8 format = 4 | varint n | ts column | value column | u32 LE crc32
//! ts column:    u8 tag, then
//!     TS_LINEAR:    varint zigzag(first), varint zigzag(step)
//!     TS_PCO:       varint len, pco standalone i64
//!     TS_STEPS:     varint zigzag(first), varint g, varint len,
//!                   zstd(n−1 × varint zigzag(delta / g))
//! value column: u8 tag, then
//!     V_CONST:      u64 LE bits
//!     V_PCO:        varint len, pco standalone f64
//!     V_DECIMAL:    u8 k, varint len, pco standalone i64 mantissas,
//!                   varint count, count × (varint index gap, u64 LE bits)
//!     V_RAW:        n × u64 LE bits
//! ```
//!
//! `V_DECIMAL` stores `value = mantissa / 10^k` for sensors that report a
//! fixed number of decimals; the few values that do not round-trip that way
//! (NaN, -0.0, float artefacts such as `74.93588199999998`) are listed as
//! exceptions with their exact bits.
//!
//! # Journal layout (format 8)
//!
//! ```text
//! u8 format = 8 | varint n | varint f
//!   | f × (varint lowest id, varint highest − lowest, varint points,
//!          varint raw length, varint zstd length)
//!   | f × zstd(raw) | u32 LE crc32
//! ```
//!
//! Points are cut into frames of whole series (ascending ids, about 256
//! points each), in arrival order within a frame. Sealing gathers
//! a few hundred series per pass and decompresses only their frames; one
//! frame for the whole chunk (format 6: `varint n | varint raw length |
//! zstd(raw)`, still decoded) made it decode every chunk once per pass.
//! A frame's raw columns:
//!
//! ```text
//! raw: n × varint series id
//!    | n × varint zigzag(ts − reference)
//!    | n × u8 k (decimals, or 0xFF for a value kept as its bits)
//!    | for each k ≠ 0xFF: varint zigzag(mantissa − reference mantissa)
//!    | 8 byte planes of (bits XOR previous bits of the series), k = 0xFF only
//! ```
//!
//! # Windows layout (format 7)
//!
//! ```text
//! u8 format = 7 | varint n | ts columns: start, count, first_ts − start,
//!   last_ts − start | value columns: min, max, sum, first, last | u32 LE crc32
//! ```
//!
//! Rollup windows of one series and tier, as eviction keeps them: the
//! columns of a series block, so starts a width apart cost nothing, and
//! readings of a few decimals keep their decimal form. (The first rollups
//! were postcard rows under zstd: 41 B a window against ~12 B here.)
//!
//! A time's reference is the series' previous point in the chunk or, for its
//! first, the point that arrived before it; a mantissa's is the series'
//! previous mantissa if it had the same `k`, else 0. One second of journal
//! holds one point of most series, so nothing is gained by waiting for a
//! series to repeat: values are `m / 10^k` wherever that is exact (2 bytes
//! for a 2-decimal reading, against 6 or more for its bits). Format 5 (bits
//! XOR the previous point of the series, 12 B/pt at 10k series) still decodes.

use std::collections::HashMap;
use std::io::Read;
use std::ops::RangeInclusive;

use super::rollup::Agg;

mod context;
pub use context::{context_back, decode_with_state, encode_context_part, JournalState};

/// Format byte of a per-series chunk of the first skeleton (decoded only).
const SERIES_V1: u8 = 1;
/// Format byte of a journal chunk of the first skeleton (decoded only).
const MIXED_V1: u8 = 2;
/// Format byte of a per-series block, layout in the module docs.
const SERIES_V2: u8 = 4;
/// Format byte of a journal chunk before decimal values (decoded only).
const MIXED_V2: u8 = 5;
/// Format byte of a journal chunk in one zstd frame (decoded only).
const MIXED_V3: u8 = 6;
/// Format byte of a journal chunk in frames by series, layout in the module docs.
const MIXED_V4: u8 = 8;
/// Format byte of a journal chunk coded against the chunks before it
/// ([`context`]).
const MIXED_V5: u8 = 9;
/// Rollup windows: columns like a series block's (see *Windows layout*).
const WINDOWS_V1: u8 = 7;

/// Timestamps `first + i * step` (wrapping): regular series and single points.
const TS_LINEAR: u8 = 0;
/// Timestamps compressed by pco (it finds the delta order and the common step).
const TS_PCO: u8 = 1;
/// Timestamps as zstd'ed multiples of the common step.
const TS_STEPS: u8 = 2;

/// Every value has the same bits.
const V_CONST: u8 = 0;
/// Values compressed by pco as f64.
const V_PCO: u8 = 1;
/// Values as decimal mantissas (pco i64) plus exceptions.
const V_DECIMAL: u8 = 2;
/// Values as raw little-endian bits: the fallback that cannot fail.
const V_RAW: u8 = 3;

/// zstd level of the timestamp steps of blocks that stay (written once,
/// read many times). 19 was half of `bench store`'s CPU once nearly every
/// merge made a full block: `--series 10000 --rate 10000 --seconds 14400`
/// ingested 0.80M points per CPU second at 19, 1.22M at 12, 1.29M at 9,
/// for chunks of 0.488, 0.490 and 0.490 B/pt and the same database file;
/// NAB pooled 2.488 B/pt at 19 and 12, 2.490 at 9 (2026-12-08).
const SEAL_LEVEL: i32 = 12;
/// zstd level of blocks sealed at [`Effort::Quick`], which compaction
/// merges and writes again at [`Effort::Thorough`]. Level 19's search over
/// the few hundred bytes of a block's step multiples was half of `bench
/// store`'s CPU once arrival stamps were whole milliseconds (every block then
/// takes `TS_STEPS`): 0.90M points per CPU second at 19, 2.17M at 3, for
/// sealed blocks of 0.84 against 0.83 B/pt (2026-12-06).
const QUICK_LEVEL: i32 = 3;
/// zstd level of journal chunks: on the ingest path, speed first.
const MIXED_LEVEL: i32 = 1;

/// Points a journal frame gathers before it closes (at a series boundary).
/// Sealing reads the frames of the series it gathers and skips the rest;
/// frames this size keep zstd's cost per frame near 0.1 B a point.
const FRAME_POINTS: usize = 256;

/// Most points one encoding may hold. Decoding trusts no count beyond it, so
/// a corrupt or hostile chunk can make the decoder allocate at most about
/// `MAX_POINTS × 24` bytes; the store's blocks (8192 points) and one second
/// of journal are far below it.
pub const MAX_POINTS: usize = 1 << 22;

/// Largest power of ten tried for decimal values: 10^18 still fits i64 and is
/// exact in f64 (10^22 is the last exact one).
const MAX_DECIMALS: usize = 18;

/// A chunk that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The format byte is not one this version knows.
    #[error("unknown chunk format {0}")]
    Format(u8),
    /// The checksum does not match: the bytes were damaged or cut short.
    #[error("chunk checksum mismatch")]
    Checksum,
    /// The bytes end early or do not frame as expected.
    #[error("corrupt chunk: {0}")]
    Corrupt(String),
}

fn corrupt(what: impl Into<String>) -> CodecError {
    CodecError::Corrupt(what.into())
}

// ---------------------------------------------------------------------------
// Per-series blocks
// ---------------------------------------------------------------------------

/// Encodes one series' points (in arrival order; out-of-order and duplicate
/// timestamps round-trip too) into `out`, bit for bit.
///
/// # Panics
///
/// If `ts` and `values` differ in length or hold more than [`MAX_POINTS`]:
/// both are bugs of the caller, which chunks its points.
pub fn encode_series(ts: &[i64], values: &[f64], out: &mut Vec<u8>) {
    encode_series_with(ts, values, Effort::Thorough, out)
}

/// How hard [`encode_series_with`] searches for the smallest encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effort {
    /// The candidates that win nearly everywhere: for blocks that
    /// compaction will merge again.
    Quick,
    /// Every candidate: for blocks that stay.
    Thorough,
}

/// [`encode_series`] at the given effort; both decode alike.
pub fn encode_series_with(ts: &[i64], values: &[f64], effort: Effort, out: &mut Vec<u8>) {
    assert_eq!(ts.len(), values.len(), "one value per timestamp");
    assert!(ts.len() <= MAX_POINTS, "{} points in one chunk", ts.len());
    let start = out.len();
    out.push(SERIES_V2);
    put_varint(out, ts.len() as u64);
    encode_ts_column(ts, effort, out);
    encode_value_column(values, effort, out);
    seal(start, out);
}

/// Decodes a per-series chunk, appending to `ts` and `values`. On error the
/// vectors may hold part of the chunk.
pub fn decode_series(
    bytes: &[u8],
    ts: &mut Vec<i64>,
    values: &mut Vec<f64>,
) -> Result<(), CodecError> {
    match bytes.first() {
        Some(&SERIES_V2) => {}
        Some(&SERIES_V1) => return legacy::decode_series_v1(bytes, ts, values),
        Some(&f) => return Err(CodecError::Format(f)),
        None => return Err(corrupt("empty")),
    }
    let body = unseal(bytes)?;
    let mut r = Reader::new(&body[1..]);
    let n = r.count()?;
    decode_ts_column(&mut r, n, ts)?;
    decode_value_column(&mut r, n, values)?;
    r.finish()
}

/// Encodes rollup windows (start, aggregate) of one series and tier into `out`.
pub fn encode_windows(windows: &[(i64, Agg)], out: &mut Vec<u8>) {
    let start = out.len();
    out.push(WINDOWS_V1);
    put_varint(out, windows.len() as u64);
    let int = |f: fn(&(i64, Agg)) -> i64| windows.iter().map(f).collect::<Vec<_>>();
    for col in [
        int(|w| w.0),
        int(|w| w.1.count as i64),
        int(|w| w.1.first_ts.wrapping_sub(w.0)),
        int(|w| w.1.last_ts.wrapping_sub(w.0)),
    ] {
        encode_ts_column(&col, Effort::Thorough, out);
    }
    let float = |f: fn(&Agg) -> f64| windows.iter().map(|w| f(&w.1)).collect::<Vec<_>>();
    for col in [
        float(|a| a.min),
        float(|a| a.max),
        float(|a| a.sum),
        float(|a| a.first),
        float(|a| a.last),
    ] {
        encode_value_column(&col, Effort::Thorough, out);
    }
    seal(start, out);
}

/// Decodes what [`encode_windows`] wrote.
pub fn decode_windows(bytes: &[u8]) -> Result<Vec<(i64, Agg)>, CodecError> {
    match bytes.first() {
        Some(&WINDOWS_V1) => {}
        Some(&f) => return Err(CodecError::Format(f)),
        None => return Err(corrupt("empty")),
    }
    let body = unseal(bytes)?;
    let mut r = Reader::new(&body[1..]);
    let n = r.count()?;
    let mut ints = [(); 4].map(|_| Vec::with_capacity(n));
    for col in &mut ints {
        decode_ts_column(&mut r, n, col)?;
    }
    let mut floats = [(); 5].map(|_| Vec::with_capacity(n));
    for col in &mut floats {
        decode_value_column(&mut r, n, col)?;
    }
    r.finish()?;
    let [start, count, first_ts, last_ts] = ints;
    let [min, max, sum, first, last] = floats;
    Ok((0..n)
        .map(|i| {
            let agg = Agg {
                min: min[i],
                max: max[i],
                sum: sum[i],
                count: count[i] as u64,
                first: first[i],
                first_ts: first_ts[i].wrapping_add(start[i]),
                last: last[i],
                last_ts: last_ts[i].wrapping_add(start[i]),
            };
            (start[i], agg)
        })
        .collect())
}

fn encode_ts_column(ts: &[i64], effort: Effort, out: &mut Vec<u8>) {
    let (first, step) = match ts {
        [] => (0, 0),
        [a] => (*a, 0),
        [a, b, ..] => (*a, b.wrapping_sub(*a)),
    };
    let mut t = first;
    let linear = ts.iter().all(|&x| {
        let ok = x == t;
        t = t.wrapping_add(step);
        ok
    });
    if linear {
        out.push(TS_LINEAR);
        put_varint(out, zigzag(first));
        put_varint(out, zigzag(step));
        return;
    }
    // Candidates, smallest wins: pco finds the delta order and the common
    // step of regular series with gaps; zstd over the step multiples wins on
    // the few-distinct-steps jitter of polled sensors (order-0 entropy
    // coding, which pco's bins only approximate). pco without its mode
    // detection was a third candidate: it never won on the NAB recordings
    // and saved 0.09% on jittered synthetic timestamps, for a pco run each.
    let mut best = Vec::with_capacity(ts.len() / 2 + 64);
    best.push(TS_PCO);
    put_pco_ints(ts, effort, &mut best);
    if let Some(c) = encode_ts_steps(ts, best.len(), effort) {
        best = c;
    }
    out.extend_from_slice(&best);
}

/// `TS_STEPS`: first, the common divisor g of the deltas, then zstd of the
/// zigzag varints of delta / g; `None` unless smaller than `beat` bytes.
///
/// It wins where a sensor is polled: few distinct steps, repeating. Where
/// most steps differ (timestamps with sub-millisecond jitter) zstd has no
/// repeats to find and pco's bit packing already wins, so it is not tried:
/// at its sealing level it cost a third of sealing's CPU there, for nothing.
fn encode_ts_steps(ts: &[i64], beat: usize, effort: Effort) -> Option<Vec<u8>> {
    let deltas: Vec<i64> = ts.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    let mut distinct = deltas.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() * 2 > deltas.len() {
        return None;
    }
    let g = deltas.iter().fold(0u64, |g, d| gcd(g, d.unsigned_abs()));
    // g = 2^63 (every delta i64::MIN or 0) does not fit i64: divide by 1.
    let g = i64::try_from(g).ok().filter(|&g| g > 0).unwrap_or(1);
    let mut raw = Vec::with_capacity(deltas.len() * 2);
    for d in &deltas {
        put_varint(&mut raw, zigzag(d / g));
    }
    let mut out = vec![TS_STEPS];
    put_varint(&mut out, zigzag(ts.first().copied().unwrap_or(0)));
    put_varint(&mut out, g as u64);
    let zstd =
        |level| with_compressor(level, |c| c.compress(&raw)).expect("zstd compresses any input");
    let mut z = zstd(QUICK_LEVEL);
    if effort == Effort::Thorough {
        // Higher levels are not smaller on every input.
        z = Some(zstd(SEAL_LEVEL))
            .filter(|t| t.len() < z.len())
            .unwrap_or(z);
    }
    put_varint(&mut out, z.len() as u64);
    out.extend_from_slice(&z);
    (out.len() < beat).then_some(out)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn decode_ts_column(r: &mut Reader, n: usize, ts: &mut Vec<i64>) -> Result<(), CodecError> {
    match r.u8()? {
        TS_LINEAR => {
            let first = unzigzag(r.varint()?);
            let step = unzigzag(r.varint()?);
            ts.reserve(n);
            let mut t = first;
            for _ in 0..n {
                ts.push(t);
                t = t.wrapping_add(step);
            }
            Ok(())
        }
        TS_PCO => get_pco(r, n, ts),
        TS_STEPS => {
            let first = unzigzag(r.varint()?);
            let g = r.varint()? as i64;
            // A point's varint takes at most 10 bytes: the bound of the
            // decompressed size, so the allocation follows the count.
            let len = r.len()?;
            let raw = unzstd(r.take(len)?, n.saturating_sub(1) * 10)?;
            let mut c = Reader::new(&raw);
            ts.reserve(n);
            let mut t = first;
            for i in 0..n {
                if i > 0 {
                    t = t.wrapping_add(unzigzag(c.varint()?).wrapping_mul(g));
                }
                ts.push(t);
            }
            c.finish()
        }
        tag => Err(corrupt(format!("timestamp tag {tag}"))),
    }
}

fn encode_value_column(values: &[f64], effort: Effort, out: &mut Vec<u8>) {
    if let Some(first) = values.first() {
        if values.iter().all(|v| v.to_bits() == first.to_bits()) {
            out.push(V_CONST);
            out.extend_from_slice(&first.to_bits().to_le_bytes());
            return;
        }
    }
    // Candidates, smallest wins: pco over the raw floats, and decimal
    // mantissas. A block that stays also tries pco's top level and its
    // lookback deltas (repeating patterns such as daily cycles): over all
    // the blocks sealed and merged from the NAB recordings they saved 0.07%
    // of the bytes, but on some final blocks 8% (rds_cpu_utilization), and
    // they are two of the four pco runs.
    let decimal = encode_decimal(values, effort);
    // A block on its way to a merge takes exact decimals as they are: they
    // beat pco over the floats on nearly every sealed block, and skipping
    // that pco run took `bench store --series 10000` from about 0.85M to
    // 1.2M points per CPU second.
    if effort == Effort::Quick {
        if let Some((dec, 0)) = decimal {
            out.extend_from_slice(&dec);
            return;
        }
    }
    let mut best = Vec::with_capacity(values.len() * 3);
    best.push(V_PCO);
    put_pco(values, &pco::ChunkConfig::default(), &mut best);
    if effort == Effort::Thorough {
        let top = pco::ChunkConfig::default().with_compression_level(12);
        let lookback = top.clone().with_delta_spec(pco::DeltaSpec::TryLookback);
        for config in [top, lookback] {
            let mut c = vec![V_PCO];
            put_pco(values, &config, &mut c);
            if c.len() < best.len() {
                best = c;
            }
        }
    }
    if let Some((dec, _)) = decimal {
        if dec.len() < best.len() {
            best = dec;
        }
    }
    if best.len() > 1 + values.len() * 8 {
        best.clear();
        best.push(V_RAW);
        for v in values {
            best.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    out.extend_from_slice(&best);
}

fn decode_value_column(r: &mut Reader, n: usize, values: &mut Vec<f64>) -> Result<(), CodecError> {
    match r.u8()? {
        V_CONST => {
            let v = f64::from_bits(r.u64()?);
            values.extend(std::iter::repeat_n(v, n));
            Ok(())
        }
        V_PCO => get_pco(r, n, values),
        V_DECIMAL => decode_decimal(r, n, values),
        V_RAW => {
            let raw = r.take(n.checked_mul(8).ok_or_else(|| corrupt("count"))?)?;
            values.extend(
                raw.chunks_exact(8)
                    .map(|b| f64::from_bits(u64::from_le_bytes(b.try_into().expect("8 bytes")))),
            );
            Ok(())
        }
        tag => Err(corrupt(format!("value tag {tag}"))),
    }
}

const POW10: [f64; MAX_DECIMALS + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18,
];

/// 2^53: the integers up to it are all exact in f64.
const EXACT_INT: f64 = (1u64 << 53) as f64;

/// The mantissa `m` with `m as f64 / 10^k` bit-identical to `v`, if any.
/// The check is the decoder's own computation, so a hit always round-trips.
#[inline]
fn decimal_mantissa(v: f64, k: usize) -> Option<i64> {
    let x = (v * POW10[k]).round();
    // Beyond 2^53 consecutive integers are not all floats: not a mantissa.
    if x.is_nan() || x.abs() > EXACT_INT {
        return None;
    }
    let m = x as i64;
    ((m as f64 / POW10[k]).to_bits() == v.to_bits()).then_some(m)
}

/// Values as `mantissa / 10^k` with exceptions, or None when no `k` fits
/// well enough to be worth a try.
fn encode_decimal(values: &[f64], effort: Effort) -> Option<(Vec<u8>, usize)> {
    // Pick k by a cost model: an exception costs about 10 bytes, a decimal
    // digit about log2(10) bits on every point. Exceptions never grow with k
    // (m/10^k = 10m/10^(k+1)) until mantissas leave the exact range.
    let n = values.len();
    let mut best: Option<(usize, f64)> = None;
    for k in 0..=MAX_DECIMALS {
        let misses = values
            .iter()
            .filter(|&&v| decimal_mantissa(v, k).is_none())
            .count();
        let cost = misses as f64 * 80.0 + n as f64 * 3.32 * k as f64;
        if misses * 4 < n && best.is_none_or(|(_, c)| cost < c) {
            best = Some((k, cost));
        }
        if misses == 0 {
            break; // Larger k only adds digits.
        }
    }
    let (k, _) = best?;
    let mut mantissas = Vec::with_capacity(n);
    let mut exceptions = Vec::new();
    let mut prev = 0i64;
    for (i, &v) in values.iter().enumerate() {
        let m = match decimal_mantissa(v, k) {
            Some(m) => m,
            None => {
                exceptions.push((i, v.to_bits()));
                // Fill with the nearest mantissa so deltas stay smooth.
                let x = (v * POW10[k]).round();
                if x.abs() <= EXACT_INT {
                    x as i64
                } else {
                    prev
                }
            }
        };
        mantissas.push(m);
        prev = m;
    }
    let mut out = Vec::with_capacity(n * 2);
    out.push(V_DECIMAL);
    out.push(k as u8);
    put_pco_ints(&mantissas, effort, &mut out);
    put_varint(&mut out, exceptions.len() as u64);
    let misses = exceptions.len();
    let mut last = 0;
    for (i, bits) in exceptions {
        put_varint(&mut out, (i - last) as u64);
        out.extend_from_slice(&bits.to_le_bytes());
        last = i;
    }
    Some((out, misses))
}

fn decode_decimal(r: &mut Reader, n: usize, values: &mut Vec<f64>) -> Result<(), CodecError> {
    let k = r.u8()? as usize;
    let p = *POW10.get(k).ok_or_else(|| corrupt("decimal places"))?;
    let mut mantissas: Vec<i64> = Vec::new();
    get_pco(r, n, &mut mantissas)?;
    let start = values.len();
    values.extend(mantissas.iter().map(|&m| m as f64 / p));
    let count = r.varint()?;
    let mut at = 0u64;
    for j in 0..count {
        let gap = r.varint()?;
        // Indices strictly increase after the first (which may be 0).
        if j > 0 && gap == 0 {
            return Err(corrupt("exception index repeats"));
        }
        at = at
            .checked_add(gap)
            .ok_or_else(|| corrupt("exception index"))?;
        let slot = usize::try_from(at)
            .ok()
            .filter(|&i| i < n)
            .ok_or_else(|| corrupt("exception index past the end"))?;
        values[start + slot] = f64::from_bits(r.u64()?);
    }
    Ok(())
}

/// Appends `varint len, pco bytes` of `nums`. The default config is pco as
/// the reference figures use it (automatic mode and delta, level 8).
fn put_pco<T: pco::data_types::Number>(nums: &[T], config: &pco::ChunkConfig, out: &mut Vec<u8>) {
    let bytes = pco::standalone::simple_compress(nums, config)
        .expect("pco compresses any slice with a valid config");
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(&bytes);
}

/// [`put_pco`] of an integer column (timestamps, mantissas). A block on its
/// way to a merge takes first-order deltas, the choice pco's own search
/// makes for jittered timestamps and slowly moving readings anyway, for a
/// fraction of its time; a block that stays takes the smaller of that and
/// the search (whose estimate misses by a few percent now and then).
fn put_pco_ints(nums: &[i64], effort: Effort, out: &mut Vec<u8>) {
    let first = pco::ChunkConfig::default().with_delta_spec(pco::DeltaSpec::TryConsecutive(1));
    let start = out.len();
    put_pco(nums, &first, out);
    if effort == Effort::Thorough {
        let mut searched = Vec::new();
        put_pco(nums, &pco::ChunkConfig::default(), &mut searched);
        if searched.len() < out.len() - start {
            out.truncate(start);
            out.extend_from_slice(&searched);
        }
    }
}

/// Reads `varint len, pco bytes` holding exactly `n` numbers onto `dst`.
fn get_pco<T: pco::data_types::Number>(
    r: &mut Reader,
    n: usize,
    dst: &mut Vec<T>,
) -> Result<(), CodecError> {
    let len = r.len()?;
    let src = r.take(len)?;
    let start = dst.len();
    // Decoding into a slice of exactly n (n ≤ MAX_POINTS) bounds what a
    // hostile pco stream can make us allocate.
    dst.resize(start + n, T::default());
    let progress = pco::standalone::simple_decompress_into(src, &mut dst[start..])
        .map_err(|e| corrupt(format!("pco: {e}")))?;
    if progress.n_processed != n {
        return Err(corrupt(format!(
            "pco column holds {} numbers, expected {n}",
            progress.n_processed
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Journal chunks
// ---------------------------------------------------------------------------

/// Spans of series ids narrower than this get a dense table of previous
/// points; a frame's ids are close together, and a table beats hashing on
/// the hot path.
const DENSE_IDS: u32 = 1 << 16;

/// Per-series state carried along a journal frame: the previous point of
/// each series, so deltas are taken against the same sensor. A dense table
/// over the frame's ids (sized by their span, not the largest id: a frame
/// of ids 9,000–9,300 needs 301 slots), a map beyond.
enum Last<T> {
    Dense { base: u32, slots: Vec<T> },
    Sparse(HashMap<u32, T>),
}

impl<T: Copy + Default> Last<T> {
    fn new(ids: RangeInclusive<u32>) -> Self {
        Self::with_slots(Vec::new(), ids)
    }

    /// As [`Last::new`], the dense table in `slots` (each slot default, as
    /// [`Last::recycle`] leaves them).
    fn with_slots(mut slots: Vec<T>, ids: RangeInclusive<u32>) -> Self {
        let (lo, hi) = (*ids.start(), *ids.end());
        if hi.saturating_sub(lo) < DENSE_IDS {
            let span = hi.saturating_sub(lo) as usize + 1;
            if slots.len() < span {
                slots.resize(span, T::default());
            }
            Last::Dense { base: lo, slots }
        } else {
            Last::Sparse(HashMap::new())
        }
    }

    /// The dense table back for the next frame, the slots of `touched` (the
    /// series of every point taken) reset: clearing only those costs a
    /// frame its points, not its span (a small commit over a large fleet
    /// makes frames of a few points over thousands of ids).
    fn recycle(self, touched: &[u32]) -> Vec<T> {
        match self {
            Last::Dense { base, mut slots } => {
                for &s in touched {
                    slots[(s - base) as usize] = T::default();
                }
                slots
            }
            Last::Sparse(_) => Vec::new(),
        }
    }

    /// The state of series `s` (within the range given to `new`), to read
    /// and replace.
    #[inline]
    fn slot(&mut self, s: u32) -> &mut T {
        match self {
            Last::Dense { base, slots } => &mut slots[(s - *base) as usize],
            Last::Sparse(m) => m.entry(s).or_default(),
        }
    }
}

/// What a journal chunk remembers of a series' previous point: 24 bytes, so
/// the table for 10k series stays small in cache.
#[derive(Clone, Copy, Default)]
struct Prev {
    ts: i64,
    /// The mantissa (as bits of an i64), or the value's bits when `k` is
    /// [`RAW_VALUE`].
    val: u64,
    /// Decimals of the value, or [`RAW_VALUE`].
    k: u8,
    /// The series has had a point in this chunk.
    seen: bool,
}

impl Prev {
    /// The previous value's bits: what a raw value is XORed with (0 before
    /// the series' first point).
    #[inline]
    fn bits(&self) -> u64 {
        match (self.seen, self.k) {
            (false, _) => 0,
            (true, RAW_VALUE) => self.val,
            (true, k) => (self.val as i64 as f64 / POW10[k as usize]).to_bits(),
        }
    }

    /// The mantissa a value with `k` decimals is taken against.
    #[inline]
    fn mantissa_ref(&self, k: u8) -> i64 {
        if self.seen && self.k == k {
            self.val as i64
        } else {
            0
        }
    }
}

/// Most decimals a journal value is tried with; beyond, its bits are kept.
const JOURNAL_DECIMALS: u8 = 6;
/// The `k` of a value stored as its bits (NaN, -0.0, full-precision floats).
const RAW_VALUE: u8 = 0xFF;

/// `(k, m)` with `v` bit-identical to `m / 10^k`, trying the series' last `k`
/// first (sensors keep their decimals), then the fewest decimals that fit.
#[inline]
fn journal_decimal(v: f64, hint: u8) -> Option<(u8, i64)> {
    if hint <= JOURNAL_DECIMALS {
        if let Some(m) = decimal_mantissa(v, hint as usize) {
            // A smaller k may fit too (12.50 after 12.25); the hint's m is as
            // good for the delta, and the decoder computes the same value.
            return Some((hint, m));
        }
    }
    (0..=JOURNAL_DECIMALS).find_map(|k| decimal_mantissa(v, k as usize).map(|m| (k, m)))
}

/// Encodes points of many series (parallel columns, arrival order) into
/// `out`, bit for bit. They decode in frames of ascending series ids, in
/// arrival order within a frame (so each series' points are in arrival
/// order): encoding what was decoded gives the same bytes, so positions in
/// a chunk stay put when it is rewritten.
///
/// # Panics
///
/// If the columns differ in length or hold more than [`MAX_POINTS`].
pub fn encode_mixed(series: &[u32], ts: &[i64], values: &[f64], out: &mut Vec<u8>) {
    let mut order = by_series(series);
    encode_mixed_part(series, ts, values, &mut order, out);
}

/// The positions of `series`' points ordered by series, then position
/// (arrival): a stable counting sort while the ids are few beside the
/// points (a flush: every series of a fleet once or more), else a sort of
/// packed keys. A stable sort by a key looked up per comparison was 3% of
/// `bench store`.
pub fn by_series(series: &[u32]) -> Vec<u32> {
    let n = series.len();
    // In u64: the largest id plus one does not fit a 32-bit usize.
    let top = series.iter().copied().max().map_or(0, |m| u64::from(m) + 1);
    if top <= 4 * n as u64 + 1024 {
        let top = top as usize;
        let mut start = vec![0u32; top + 1];
        for &s in series {
            start[s as usize + 1] += 1;
        }
        for i in 1..start.len() {
            start[i] += start[i - 1];
        }
        let mut order = vec![0u32; n];
        for (i, &s) in series.iter().enumerate() {
            let at = &mut start[s as usize];
            order[*at as usize] = i as u32;
            *at += 1;
        }
        return order;
    }
    let mut keyed: Vec<u64> = (0..n)
        .map(|i| u64::from(series[i]) << 32 | i as u64)
        .collect();
    keyed.sort_unstable();
    keyed.iter().map(|&k| k as u32).collect()
}

/// [`encode_mixed`] of the points at positions `order` (ordered as
/// [`by_series`] orders them) of the columns; it reorders `order` within
/// each frame. A flush cuts its points into parts this way without copying
/// them (see the store's journal rows).
///
/// # Panics
///
/// If the columns differ in length or `order` holds more than [`MAX_POINTS`].
pub fn encode_mixed_part(
    series: &[u32],
    ts: &[i64],
    values: &[f64],
    order: &mut [u32],
    out: &mut Vec<u8>,
) {
    let n = check_part(series, ts, values, order);
    let (mut fs, mut ft, mut fv, mut raw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut framer = Framer::default();
    let mut at = 0;
    while at < n {
        let begin = at;
        at = frame_end(series, order, begin);
        let (lo, hi) = (
            series[order[begin] as usize],
            series[order[at - 1] as usize],
        );
        // Arrival order within the frame: neighbours in time compress best.
        order[begin..at].sort_unstable();
        fs.clear();
        ft.clear();
        fv.clear();
        for &i in &order[begin..at] {
            fs.push(series[i as usize]);
            ft.push(ts[i as usize]);
            fv.push(values[i as usize]);
        }
        raw.clear();
        encode_mixed_raw(&fs, &ft, &fv, &mut raw);
        framer.push(&raw, lo, hi, fs.len());
    }
    framer.finish(MIXED_V4, None, n, out);
}

/// The points a journal chunk of `order` holds, once the columns are
/// checked to be parallel and the chunk within [`MAX_POINTS`].
fn check_part(series: &[u32], ts: &[i64], values: &[f64], order: &[u32]) -> usize {
    assert!(
        ts.len() == series.len() && values.len() == series.len(),
        "parallel columns of one length"
    );
    let n = order.len();
    assert!(n <= MAX_POINTS, "{n} points in one chunk");
    n
}

/// The frames of a journal chunk being written (formats 8 and 9): the
/// table of their heads and their compressed bytes.
#[derive(Default)]
struct Framer {
    z: Vec<u8>,
    head: Vec<u8>,
    frames: Vec<u8>,
    count: usize,
}

impl Framer {
    /// Compresses one frame's raw columns: `n` points of series `lo..=hi`.
    fn push(&mut self, raw: &[u8], lo: u32, hi: u32, n: usize) {
        let z_len = compress_onto(raw, &mut self.z, &mut self.frames);
        put_varint(&mut self.head, lo as u64);
        put_varint(&mut self.head, (hi - lo) as u64);
        put_varint(&mut self.head, n as u64);
        put_varint(&mut self.head, raw.len() as u64);
        put_varint(&mut self.head, z_len as u64);
        self.count += 1;
    }

    /// Appends the chunk to `out`: its format, how far back its group
    /// begins (format 9), its `n` points, the frame table, the frames and
    /// the checksum.
    fn finish(self, format: u8, back: Option<u64>, n: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(format);
        if let Some(back) = back {
            put_varint(out, back);
        }
        put_varint(out, n as u64);
        put_varint(out, self.count as u64);
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.frames);
        seal(start, out);
    }
}

/// The raw columns of one journal frame: ids, time deltas, value decimals,
/// mantissa deltas, then the byte planes of the raw values.
fn encode_mixed_raw(series: &[u32], ts: &[i64], values: &[f64], raw: &mut Vec<u8>) {
    let n = series.len();
    let lo = series.iter().copied().min().unwrap_or(0);
    let hi = series.iter().copied().max().unwrap_or(0);
    let mut last: Last<Prev> = Last::new(lo..=hi);
    raw.reserve(n * 8);
    for &s in series {
        put_varint(raw, s as u64);
    }
    let mut ks = Vec::with_capacity(n);
    let mut mantissas = Vec::with_capacity(n * 2);
    let mut xors: Vec<u64> = Vec::new();
    let mut prev_ts = 0i64;
    for ((&s, &t), &v) in series.iter().zip(ts).zip(values) {
        let slot = last.slot(s);
        let p = *slot;
        // A series' first point in the frame is taken against the point
        // before it: a frame spans about one flush interval, so the delta is
        // small even when every series has one point a second.
        let t_ref = if p.seen { p.ts } else { prev_ts };
        put_varint(raw, zigzag(t.wrapping_sub(t_ref)));
        prev_ts = t;
        *slot = match journal_decimal(v, p.k) {
            Some((k, m)) => {
                ks.push(k);
                put_varint(&mut mantissas, zigzag(m.wrapping_sub(p.mantissa_ref(k))));
                Prev {
                    ts: t,
                    val: m as u64,
                    k,
                    seen: true,
                }
            }
            None => {
                ks.push(RAW_VALUE);
                xors.push(v.to_bits() ^ p.bits());
                Prev {
                    ts: t,
                    val: v.to_bits(),
                    k: RAW_VALUE,
                    seen: true,
                }
            }
        };
    }
    raw.extend_from_slice(&ks);
    raw.extend_from_slice(&mantissas);
    put_planes(raw, &xors);
}

/// Where the frame of a journal chunk that begins at `order[begin]` ends:
/// [`FRAME_POINTS`] on, then at the end of that series (a series' points
/// in one frame, so a reader of a range of series decodes only its frames).
fn frame_end(series: &[u32], order: &[u32], begin: usize) -> usize {
    let n = order.len();
    let mut at = begin + 1;
    while at < n
        && (at - begin < FRAME_POINTS
            || series[order[at] as usize] == series[order[at - 1] as usize])
    {
        at += 1;
    }
    at
}

/// Appends the byte planes of `xors`, most significant first: XORs of
/// neighbours are zero in their high bytes, so zstd sees long runs of zeros.
fn put_planes(raw: &mut Vec<u8>, xors: &[u64]) {
    let e = xors.len();
    let at = raw.len();
    raw.resize(at + e * 8, 0);
    for (i, x) in xors.iter().enumerate() {
        for (k, b) in x.to_be_bytes().iter().enumerate() {
            raw[at + k * e + i] = *b;
        }
    }
}

/// A frame's value columns after its times: a decimals byte a point, the
/// mantissa steps (into `mantissas`, cleared first), then the byte planes
/// of the raw values. Returns the decimals and the planes.
fn read_values<'a>(
    c: &mut Reader<'a>,
    n: usize,
    mantissas: &mut Vec<i64>,
) -> Result<(&'a [u8], &'a [u8]), CodecError> {
    let ks = c.take(n)?;
    mantissas.clear();
    for &k in ks {
        match k {
            0..=JOURNAL_DECIMALS => mantissas.push(unzigzag(c.varint()?)),
            RAW_VALUE => {}
            k => return Err(corrupt(format!("value decimals {k}"))),
        }
    }
    let planes = c.take((n - mantissas.len()) * 8)?;
    Ok((ks, planes))
}

/// The values of [`read_values`]' columns, in order, each against its
/// series' previous point.
struct Values<'a> {
    mantissas: &'a [i64],
    planes: &'a [u8],
    next_m: usize,
    next_x: usize,
}

impl<'a> Values<'a> {
    fn new(mantissas: &'a [i64], planes: &'a [u8]) -> Values<'a> {
        Values {
            mantissas,
            planes,
            next_m: 0,
            next_x: 0,
        }
    }

    /// The next value, of `k` decimals, against `p`: its mantissa (or its
    /// bits for a raw value) and its bits.
    #[inline]
    fn next(&mut self, p: &Prev, k: u8) -> (u64, u64) {
        if k == RAW_VALUE {
            let e = self.planes.len() / 8;
            let mut x = [0u8; 8];
            for (j, b) in x.iter_mut().enumerate() {
                *b = self.planes[j * e + self.next_x];
            }
            self.next_x += 1;
            let bits = p.bits() ^ u64::from_be_bytes(x);
            (bits, bits)
        } else {
            let m = p.mantissa_ref(k).wrapping_add(self.mantissas[self.next_m]);
            self.next_m += 1;
            (m as u64, (m as f64 / POW10[k as usize]).to_bits())
        }
    }

    /// Passes over the next value (of a series not read).
    #[inline]
    fn skip(&mut self, k: u8) {
        if k == RAW_VALUE {
            self.next_x += 1;
        } else {
            self.next_m += 1;
        }
    }
}

/// Decodes a journal chunk, appending to the three columns. On error the
/// vectors may hold part of the chunk.
pub fn decode_mixed(
    bytes: &[u8],
    series: &mut Vec<u32>,
    ts: &mut Vec<i64>,
    values: &mut Vec<f64>,
) -> Result<(), CodecError> {
    decode_mixed_with(bytes, Checksum::Verify, 0..=u32::MAX, series, ts, values)
}

/// Whether [`decode_mixed_with`] checks a chunk's CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// Check it: bytes from disk, seen for the first time.
    Verify,
    /// Skip it, for bytes accepted before (sealing decodes each journal
    /// chunk once per group of series). Every other check stays, so damage
    /// is still an error, never a panic.
    Skip,
}

/// [`decode_mixed`], with or without the checksum, of the series in `ids`:
/// every point of those series, only those (a chunk of format 5 or older:
/// every point). Frames of other series are skipped undecoded.
pub fn decode_mixed_with(
    bytes: &[u8],
    checksum: Checksum,
    ids: RangeInclusive<u32>,
    series: &mut Vec<u32>,
    ts: &mut Vec<i64>,
    values: &mut Vec<f64>,
) -> Result<(), CodecError> {
    let (heads, zs) = match mixed_frames(bytes, checksum)? {
        Mixed::Framed(MIXED_V5, ..) => {
            return Err(corrupt(
                "coded against the chunks before it: decode with their state",
            ))
        }
        Mixed::Framed(_, heads, zs) => (heads, zs),
        Mixed::Legacy(format, n, raw) => {
            if format == MIXED_V2 {
                return legacy::decode_mixed_v2(&raw, n, series, ts, values);
            }
            decode_mixed_raw(&raw, n, ids, series, ts, values)?;
            return Ok(());
        }
        Mixed::V1 => return legacy::decode_mixed_v1(bytes, series, ts, values),
    };
    each_frame(&heads, zs, &ids, |raw, h| {
        let held = decode_mixed_raw(raw, h.n, ids.clone(), series, ts, values)?;
        // Skipping frames by their ids is only sound if they hold no other.
        if !h.ids.contains(held.start()) || !h.ids.contains(held.end()) {
            return Err(corrupt("series id outside its frame"));
        }
        Ok(())
    })
}

/// The series id of every point of a journal chunk, in the order
/// [`decode_mixed`] gives them, without decoding times or values: a seal
/// counts each series' points of its run first (a fifth of the work of a
/// whole decode). What it skips is still checked by the CRC, if asked, and
/// by the seal's decode of each frame later.
pub fn mixed_series(
    bytes: &[u8],
    checksum: Checksum,
    series: &mut Vec<u32>,
) -> Result<(), CodecError> {
    let (format, heads, zs) = match mixed_frames(bytes, checksum)? {
        Mixed::Framed(format, heads, zs) => (format, heads, zs),
        Mixed::Legacy(..) | Mixed::V1 => {
            let (mut ts, mut values) = (Vec::new(), Vec::new());
            return decode_mixed_with(bytes, checksum, 0..=u32::MAX, series, &mut ts, &mut values);
        }
    };
    each_frame(&heads, zs, &(0..=u32::MAX), |raw, h| {
        if format == MIXED_V5 {
            return context::read_context_ids(&mut Reader::new(raw), h, series);
        }
        let held = read_ids(&mut Reader::new(raw), h.n, series)?;
        if !h.ids.contains(held.start()) || !h.ids.contains(held.end()) {
            return Err(corrupt("series id outside its frame"));
        }
        Ok(())
    })
}

/// The head of one frame of a journal chunk of format 8.
struct FrameHead {
    ids: RangeInclusive<u32>,
    n: usize,
    raw_len: usize,
    z_len: usize,
}

/// A journal chunk, its framing checked.
enum Mixed<'a> {
    /// Formats 8 and 9: the format, the frame table and the frames'
    /// compressed bytes.
    Framed(u8, Vec<FrameHead>, &'a [u8]),
    /// Formats 2 and 6: the format, the point count and the raw columns.
    Legacy(u8, usize, Vec<u8>),
    /// Format 1, decoded whole by its own code.
    V1,
}

/// Checks a journal chunk's framing (and its CRC if asked) and reads its
/// frame table; older formats are decompressed whole.
fn mixed_frames(bytes: &[u8], checksum: Checksum) -> Result<Mixed<'_>, CodecError> {
    match bytes.first() {
        Some(&MIXED_V5 | &MIXED_V4 | &MIXED_V3 | &MIXED_V2) => {}
        Some(&MIXED_V1) => return Ok(Mixed::V1),
        Some(&f) => return Err(CodecError::Format(f)),
        None => return Err(corrupt("empty")),
    }
    let body = if checksum == Checksum::Verify {
        unseal(bytes)?
    } else {
        bytes
            .get(..bytes.len().saturating_sub(4))
            .filter(|b| b.len() > 1)
            .ok_or_else(|| corrupt("shorter than a frame"))?
    };
    let mut r = Reader::new(&body[1..]);
    if body[0] == MIXED_V5 {
        // How far back its group begins: read by `context_back`.
        r.varint()?;
    }
    let n = r.count()?;
    if body[0] != MIXED_V4 && body[0] != MIXED_V5 {
        let raw_len = r.len()?;
        let raw = unzstd(r.rest(), raw_len_checked(body[0], n, raw_len)?)?;
        if raw.len() != raw_len {
            return Err(corrupt("raw length mismatch"));
        }
        return Ok(Mixed::Legacy(body[0], n, raw));
    }
    let frames = r.count()?;
    if frames > n {
        return Err(corrupt("more frames than points"));
    }
    // Each head takes 5 bytes or more: no allocation beyond what is there.
    let mut heads = Vec::with_capacity(frames.min(body.len() / 5));
    let (mut points, mut z_total) = (0usize, 0usize);
    for _ in 0..frames {
        let id = |v: u64| u32::try_from(v).map_err(|_| corrupt("series id out of range"));
        let lo = id(r.varint()?)?;
        let hi = lo
            .checked_add(id(r.varint()?)?)
            .ok_or_else(|| corrupt("series id out of range"))?;
        let n = r.count()?;
        let raw_len = raw_len_checked(body[0], n, r.len()?)?;
        let z_len = r.len()?;
        points = points.saturating_add(n);
        z_total = z_total.saturating_add(z_len);
        heads.push(FrameHead {
            ids: lo..=hi,
            n,
            raw_len,
            z_len,
        });
    }
    let zs = r.rest();
    if points != n || z_total != zs.len() || heads.iter().any(|h| h.n == 0) {
        return Err(corrupt("frame table does not add up"));
    }
    Ok(Mixed::Framed(body[0], heads, zs))
}

/// Decompresses each frame that may hold a series in `ids` and hands its
/// raw columns to `f`, with the thread's decompression context.
fn each_frame(
    heads: &[FrameHead],
    zs: &[u8],
    ids: &RangeInclusive<u32>,
    mut f: impl FnMut(&[u8], &FrameHead) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    with_decompressor(|zstd| {
        let mut z = Reader::new(zs);
        for h in heads {
            let frame = z.take(h.z_len)?;
            if h.ids.end() < ids.start() || h.ids.start() > ids.end() {
                continue;
            }
            let raw = zstd
                .decompress(frame, h.raw_len)
                .map_err(|e| corrupt(format!("zstd: {e}")))?;
            if raw.len() != h.raw_len {
                return Err(corrupt("raw length mismatch"));
            }
            f(&raw, h)?;
        }
        Ok(())
    })
}

/// Appends `raw` compressed at [`MIXED_LEVEL`] to `out`, with this
/// thread's context, through `z` (scratch); returns the compressed length.
fn compress_onto(raw: &[u8], z: &mut Vec<u8>, out: &mut Vec<u8>) -> usize {
    z.clear();
    z.reserve(zstd::zstd_safe::compress_bound(raw.len()));
    let n = with_compressor(MIXED_LEVEL, |c| c.compress_to_buffer(raw, z))
        .expect("zstd compresses any input into its bound");
    out.extend_from_slice(z);
    n
}

/// Runs `f` with this thread's compression context (made on first use) set
/// to `level`. Sealed and merged blocks compress their timestamp steps with
/// it too: a context made for each was 2.4% of `bench store`'s CPU once
/// compaction kept up (10k merges a seal at 10k series).
fn with_compressor<T>(
    level: i32,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    COMPRESSOR.with(|cell| {
        // Taken out while in use, as the decompressor is.
        let mut zstd = match cell.borrow_mut().take() {
            Some(z) => z,
            None => zstd::bulk::Compressor::new(level)?,
        };
        let out = zstd
            .set_compression_level(level)
            .and_then(|()| f(&mut zstd));
        *cell.borrow_mut() = Some(zstd);
        out
    })
}

thread_local! {
    /// A zstd compression context per thread, kept: a journal chunk is
    /// encoded at every flush (many a second when QoS 1 acknowledgements
    /// ask for commits), and a context set up for each showed in profiles
    /// (see [`with_compressor`]).
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    /// A zstd decompression context per thread, kept: a seal decodes every
    /// journal chunk of its run once per group of series, and creating a
    /// context for each (it allocates and sets up its tables) was 8.7% of
    /// the store's CPU in `bench store --series 10000 --rate 10000`.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's decompression context (made on first use).
fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> Result<T, CodecError>,
) -> Result<T, CodecError> {
    DECOMPRESSOR.with(|cell| {
        // Taken out while in use: `f` cannot re-enter, and a panic in it
        // drops the context rather than leaving a half-used one behind.
        let mut zstd = match cell.borrow_mut().take() {
            Some(z) => z,
            None => zstd::bulk::Decompressor::new().map_err(|e| corrupt(format!("zstd: {e}")))?,
        };
        let out = f(&mut zstd);
        *cell.borrow_mut() = Some(zstd);
        out
    })
}

/// `raw_len` if it can hold `n` points of journal `format`: checking it
/// before decompressing bounds the allocation by the trusted point cap.
fn raw_len_checked(format: u8, n: usize, raw_len: usize) -> Result<usize, CodecError> {
    let (lo, hi) = if format == MIXED_V2 {
        // 10 to 23: 8 plane bytes, 1–5 of id, 1–10 of delta.
        (10, 23)
    } else {
        // 4 to 26: 1–5 of id, 1–10 of time, 1 of decimals, then 1–10 of
        // mantissa or 8 of bits.
        (4, 26)
    };
    // Format 9 adds a frame's base time: 1–10 bytes.
    let base = if format == MIXED_V5 { 10 } else { 0 };
    if raw_len < n * lo || raw_len > n * hi + base {
        return Err(corrupt("raw length does not fit the point count"));
    }
    Ok(raw_len)
}

/// Decodes the raw columns of one journal frame of `n` points, appending
/// those of the series in `want`; returns the range of series the frame
/// holds. The others' times are still followed (a series' first point is
/// taken against the point before it, whichever series that is), not
/// their values: a seal gathers a few hundred series a pass, and a small
/// commit's frames span thousands.
fn decode_mixed_raw(
    raw: &[u8],
    n: usize,
    want: RangeInclusive<u32>,
    series: &mut Vec<u32>,
    ts: &mut Vec<i64>,
    values: &mut Vec<f64>,
) -> Result<RangeInclusive<u32>, CodecError> {
    let mut c = Reader::new(raw);
    // Scratch of this thread, reused: a seal decodes thousands of frames.
    // Taken out while in use, and not put back after an error.
    let mut scratch = FRAME_SCRATCH.with(|cell| cell.take());
    let FrameScratch {
        frame_ids,
        deltas,
        mantissas,
        prev,
    } = &mut scratch;
    frame_ids.clear();
    let held = read_ids(&mut c, n, frame_ids)?;
    deltas.clear();
    mantissas.clear();
    for _ in 0..n {
        deltas.push(unzigzag(c.varint()?));
    }
    let (ks, planes) = read_values(&mut c, n, mantissas)?;
    c.finish()?;
    let mut last: Last<Prev> = Last::with_slots(std::mem::take(prev), held.clone());
    let mut prev_ts = 0i64;
    let mut vals = Values::new(mantissas, planes);
    let whole = want.contains(held.start()) && want.contains(held.end());
    if whole {
        series.extend_from_slice(frame_ids);
        ts.reserve(n);
        values.reserve(n);
    }
    for (i, &k) in ks.iter().enumerate() {
        let s = frame_ids[i];
        let slot = last.slot(s);
        let p = *slot;
        let t = if p.seen { p.ts } else { prev_ts }.wrapping_add(deltas[i]);
        prev_ts = t;
        if !whole && !want.contains(&s) {
            vals.skip(k);
            slot.ts = t;
            slot.seen = true;
            continue;
        }
        let (val, bits) = vals.next(&p, k);
        *slot = Prev {
            ts: t,
            val,
            k,
            seen: true,
        };
        if !whole {
            series.push(s);
        }
        ts.push(t);
        values.push(f64::from_bits(bits));
    }
    *prev = last.recycle(frame_ids);
    // A table for a frame of tens of thousands of ids is not kept.
    if prev.len() <= KEEP_SCRATCH_IDS {
        FRAME_SCRATCH.with(|cell| cell.set(scratch));
    }
    Ok(held)
}

/// Slots of the largest previous-point table a thread keeps between frames
/// (24 bytes each).
const KEEP_SCRATCH_IDS: usize = 8192;

/// What decoding a journal frame needs besides its output, kept per thread.
#[derive(Default)]
struct FrameScratch {
    frame_ids: Vec<u32>,
    deltas: Vec<i64>,
    mantissas: Vec<i64>,
    /// A dense [`Last`] table, every slot default.
    prev: Vec<Prev>,
}

thread_local! {
    static FRAME_SCRATCH: std::cell::Cell<FrameScratch> = std::cell::Cell::new(FrameScratch::default());
}

/// Reads a journal chunk's column of `n` varint series ids onto `series`;
/// returns their range (`0..=0` for none).
fn read_ids(
    c: &mut Reader,
    n: usize,
    series: &mut Vec<u32>,
) -> Result<RangeInclusive<u32>, CodecError> {
    series.reserve(n);
    let (mut lo, mut hi) = (u32::MAX, 0);
    for _ in 0..n {
        let s = u32::try_from(c.varint()?).map_err(|_| corrupt("series id out of range"))?;
        lo = lo.min(s);
        hi = hi.max(s);
        series.push(s);
    }
    Ok(lo.min(hi)..=hi)
}

/// Decompresses a zstd frame of at most `max` bytes. Streaming, so memory
/// follows what the frame really holds, not what its header claims.
fn unzstd(z: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
    let mut raw = Vec::with_capacity(max.min(z.len().saturating_mul(64)));
    zstd::stream::read::Decoder::with_buffer(z)
        .map_err(|e| corrupt(format!("zstd: {e}")))?
        .take(max as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| corrupt(format!("zstd: {e}")))?;
    if raw.len() > max {
        return Err(corrupt("zstd frame larger than its bound"));
    }
    Ok(raw)
}

// ---------------------------------------------------------------------------
// Framing, varints, checksum
// ---------------------------------------------------------------------------

/// Appends the CRC-32 of `out[start..]`.
fn seal(start: usize, out: &mut Vec<u8>) {
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Checks and strips the trailing CRC-32: damage anywhere (a flipped byte,
/// a cut tail) is caught here, before any decoder looks at the bytes.
fn unseal(bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < 5 {
        return Err(corrupt("shorter than a frame"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32(body) != crc {
        return Err(CodecError::Checksum);
    }
    Ok(body)
}

/// CRC-32 (IEEE) table, built at compile time: the checksum is small enough
/// to keep rather than pull in a crate for.
const CRC_TABLE: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut j = 1;
        while j < 8 {
            t[j][i] = (t[j - 1][i] >> 8) ^ t[0][(t[j - 1][i] & 0xff) as usize];
            j += 1;
        }
        i += 1;
    }
    t
};

/// CRC-32 (IEEE), slicing by 8: about a byte per cycle, noise next to zstd.
fn crc32(bytes: &[u8]) -> u32 {
    crc32_update(0, bytes)
}

/// The CRC-32 of bytes whose CRC-32 is `crc`, followed by `bytes` (start from 0), for data in pieces.
pub(crate) fn crc32_update(crc: u32, bytes: &[u8]) -> u32 {
    let mut c = !crc;
    let mut chunks = bytes.chunks_exact(8);
    for b in &mut chunks {
        let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        c = CRC_TABLE[7][(lo & 0xff) as usize]
            ^ CRC_TABLE[6][((lo >> 8) & 0xff) as usize]
            ^ CRC_TABLE[5][((lo >> 16) & 0xff) as usize]
            ^ CRC_TABLE[4][(lo >> 24) as usize]
            ^ CRC_TABLE[3][b[4] as usize]
            ^ CRC_TABLE[2][b[5] as usize]
            ^ CRC_TABLE[1][b[6] as usize]
            ^ CRC_TABLE[0][b[7] as usize];
    }
    for &b in chunks.remainder() {
        c = CRC_TABLE[0][((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A cursor over bytes whose every read is checked.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .buf
            .get(self.at)
            .ok_or_else(|| corrupt("past the end"))?;
        self.at += 1;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        let end = self.at.checked_add(len).ok_or_else(|| corrupt("length"))?;
        let s = self
            .buf
            .get(self.at..end)
            .ok_or_else(|| corrupt("past the end"))?;
        self.at = end;
        Ok(s)
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.at..];
        self.at = self.buf.len();
        s
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, CodecError> {
        // One or two bytes, most of them: no loop, one bounds check.
        if let Some(&[a, b]) = self.buf.get(self.at..self.at + 2) {
            if a < 0x80 {
                self.at += 1;
                return Ok(u64::from(a));
            }
            if b < 0x80 {
                self.at += 2;
                return Ok(u64::from(a & 0x7f) | u64::from(b) << 7);
            }
        }
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(corrupt("varint too long"))
    }

    /// A point count, trusted only up to [`MAX_POINTS`].
    fn count(&mut self) -> Result<usize, CodecError> {
        usize::try_from(self.varint()?)
            .ok()
            .filter(|&n| n <= MAX_POINTS)
            .ok_or_else(|| corrupt("point count"))
    }

    /// A byte length (checked against what is left by [`Self::take`]).
    fn len(&mut self) -> Result<usize, CodecError> {
        usize::try_from(self.varint()?).map_err(|_| corrupt("length"))
    }

    /// Every byte must have been read: trailing bytes mean a bad frame.
    fn finish(&self) -> Result<(), CodecError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(corrupt("trailing bytes"))
        }
    }
}

// ---------------------------------------------------------------------------
// Formats of the first skeleton, decoded so that stores written by it open.
// ---------------------------------------------------------------------------

mod legacy {
    use super::{corrupt, read_ids, unzigzag, CodecError, Last, Reader};
    use serde::Deserialize;

    /// The framed columns of a v1 chunk (postcard, inside zstd).
    #[derive(Deserialize)]
    struct Frame {
        count: u32,
        series: Vec<u8>,
        ts: Vec<u8>,
        values: Vec<u8>,
    }

    fn open(bytes: &[u8]) -> Result<Frame, CodecError> {
        // The old chunks held at most a few hundred thousand points; the
        // bound keeps a corrupt length from allocating gigabytes.
        let raw = zstd::bulk::decompress(&bytes[1..], 64 << 20)
            .map_err(|e| corrupt(format!("zstd: {e}")))?;
        postcard::from_bytes(&raw).map_err(|e| corrupt(format!("frame: {e}")))
    }

    /// Byte planes back to words, most significant plane first.
    fn unplanes(buf: &[u8], n: usize) -> Result<Vec<u64>, CodecError> {
        if Some(buf.len()) != n.checked_mul(8) {
            return Err(corrupt("value planes do not match the count"));
        }
        Ok((0..n)
            .map(|i| {
                let mut b = [0u8; 8];
                for (k, byte) in b.iter_mut().enumerate() {
                    *byte = buf[k * n + i];
                }
                u64::from_be_bytes(b)
            })
            .collect())
    }

    /// v1 series chunk: delta-of-delta varint timestamps, XOR planes.
    pub(super) fn decode_series_v1(
        bytes: &[u8],
        ts: &mut Vec<i64>,
        values: &mut Vec<f64>,
    ) -> Result<(), CodecError> {
        let f = open(bytes)?;
        let n = f.count as usize;
        let xors = unplanes(&f.values, n)?;
        let mut r = Reader::new(&f.ts);
        let (mut prev, mut delta) = (0i64, 0i64);
        for _ in 0..n {
            delta = delta.wrapping_add(unzigzag(r.varint()?));
            prev = prev.wrapping_add(delta);
            ts.push(prev);
        }
        let mut v = 0u64;
        for x in xors {
            v ^= x;
            values.push(f64::from_bits(v));
        }
        Ok(())
    }

    /// v2 journal chunk (format 5), its zstd frame already opened: varint
    /// ids, varint per-series time deltas, byte planes of per-series XORs.
    pub(super) fn decode_mixed_v2(
        raw: &[u8],
        n: usize,
        series: &mut Vec<u32>,
        ts: &mut Vec<i64>,
        values: &mut Vec<f64>,
    ) -> Result<(), CodecError> {
        let (planes, cols) = raw.split_at(n * 8);
        let mut c = Reader::new(cols);
        let first = series.len();
        let ids = read_ids(&mut c, n, series)?;
        let mut last: Last<(i64, u64)> = Last::new(ids);
        ts.reserve(n);
        values.reserve(n);
        for i in 0..n {
            let s = series[first + i];
            let d = unzigzag(c.varint()?);
            let mut x = [0u8; 8];
            for (k, b) in x.iter_mut().enumerate() {
                *b = planes[k * n + i];
            }
            let slot = last.slot(s);
            let (pt, pv) = *slot;
            let now = (pt.wrapping_add(d), pv ^ u64::from_be_bytes(x));
            *slot = now;
            ts.push(now.0);
            values.push(f64::from_bits(now.1));
        }
        c.finish()
    }

    /// v1 journal chunk: varint ids, per-series deltas and XOR planes.
    pub(super) fn decode_mixed_v1(
        bytes: &[u8],
        series: &mut Vec<u32>,
        ts: &mut Vec<i64>,
        values: &mut Vec<f64>,
    ) -> Result<(), CodecError> {
        let f = open(bytes)?;
        let n = f.count as usize;
        let xors = unplanes(&f.values, n)?;
        let (mut a, mut b) = (Reader::new(&f.series), Reader::new(&f.ts));
        let mut last: Last<(i64, u64)> = Last::new(0..=u32::MAX);
        for x in xors {
            let s = u32::try_from(a.varint()?).map_err(|_| corrupt("series id out of range"))?;
            let d = unzigzag(b.varint()?);
            let slot = last.slot(s);
            let (pt, pv) = *slot;
            let now = (pt.wrapping_add(d), pv ^ x);
            *slot = now;
            series.push(s);
            ts.push(now.0);
            values.push(f64::from_bits(now.1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    proptest! {
        #[test]
        fn by_series_orders_by_series_then_position(
            series in prop::collection::vec(prop_oneof![0u32..50, 0u32..5000, Just(u32::MAX)], 0..400)
        ) {
            let mut want: Vec<u32> = (0..series.len() as u32).collect();
            want.sort_by_key(|&i| series[i as usize]);
            prop_assert_eq!(by_series(&series), want);
        }
    }

    /// Both efforts round-trip; returns the thorough encoding's size, which
    /// is never larger than the quick one's.
    fn series_round_trip(ts: &[i64], vs: &[f64]) -> usize {
        let sizes = [Effort::Quick, Effort::Thorough].map(|effort| {
            let mut buf = vec![0xEE]; // Appends: bytes before are left alone.
            encode_series_with(ts, vs, effort, &mut buf);
            let (mut t2, mut v2) = (vec![7], vec![7.0]);
            decode_series(&buf[1..], &mut t2, &mut v2).unwrap();
            assert_eq!(&t2[1..], ts);
            assert_eq!(bits(&v2[1..]), bits(vs));
            buf.len() - 1
        });
        assert!(
            sizes[1] <= sizes[0],
            "thorough {} > quick {}",
            sizes[1],
            sizes[0]
        );
        sizes[1]
    }

    /// Round-trips a journal chunk: the points come back grouped by series
    /// in arrival order, re-encoding them gives the same bytes, and a
    /// decode of one range of ids holds every point of it.
    fn mixed_round_trip(s: &[u32], ts: &[i64], vs: &[f64]) -> usize {
        let mut buf = Vec::new();
        encode_mixed(s, ts, vs, &mut buf);
        let (mut s2, mut t2, mut v2) = (Vec::new(), Vec::new(), Vec::new());
        decode_mixed(&buf, &mut s2, &mut t2, &mut v2).unwrap();
        // Every series' points, in arrival order.
        let per_series = |s: &[u32], t: &[i64], v: &[f64]| {
            let mut m: BTreeMap<u32, Vec<(i64, u64)>> = BTreeMap::new();
            for i in 0..s.len() {
                m.entry(s[i]).or_default().push((t[i], v[i].to_bits()));
            }
            m
        };
        assert_eq!(s2.len(), s.len());
        assert_eq!(per_series(&s2, &t2, &v2), per_series(s, ts, vs));
        let mut again = Vec::new();
        encode_mixed(&s2, &t2, &v2, &mut again);
        assert_eq!(again, buf, "re-encoding moved points");
        // The ids alone, in the same order.
        let mut ids = Vec::new();
        mixed_series(&buf, Checksum::Verify, &mut ids).unwrap();
        assert_eq!(ids, s2, "series ids alone");
        // The middle third of the ids, without the checksum.
        let (lo, hi) = (s2.len() / 3, s2.len() * 2 / 3);
        if let (Some(&a), Some(&b)) = (s2.get(lo), s2.get(hi)) {
            let (mut s3, mut t3, mut v3) = (Vec::new(), Vec::new(), Vec::new());
            decode_mixed_with(&buf, Checksum::Skip, a..=b, &mut s3, &mut t3, &mut v3).unwrap();
            let want: Vec<_> = (0..s2.len())
                .filter(|&i| (a..=b).contains(&s2[i]))
                .collect();
            let got: Vec<_> = (0..s3.len())
                .filter(|&i| (a..=b).contains(&s3[i]))
                .collect();
            assert_eq!(want.len(), got.len());
            for (&w, &g) in want.iter().zip(&got) {
                assert_eq!(
                    (s2[w], t2[w], v2[w].to_bits()),
                    (s3[g], t3[g], v3[g].to_bits())
                );
            }
        }
        buf.len()
    }

    fn special() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            any::<u64>().prop_map(f64::from_bits), // NaN payloads, subnormals
            (0x7ff0_0000_0000_0001u64..=0x7fff_ffff_ffff_ffff)
                .prop_map(|b| f64::from_bits(b | (1 << 63))), // negative NaNs
            Just(-0.0),
            Just(0.0),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MIN_POSITIVE / 3.0),
            Just(f64::MAX),
            (0i64..10_000).prop_map(|c| c as f64 / 100.0),
            (-5000i64..5000).prop_map(|c| c as f64 / 1000.0),
        ]
    }

    fn timestamp() -> impl Strategy<Value = i64> {
        prop_oneof![
            any::<i64>(),
            Just(i64::MIN),
            Just(i64::MAX),
            0i64..1_000_000,
        ]
    }

    /// Sealing speed: `cargo test --release -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing, for release builds"]
    fn series_speed() {
        let data = nab();
        let start = std::time::Instant::now();
        let (mut points, mut bufs) = (0, Vec::new());
        for (_, ts, vs) in &data {
            for (t, v) in ts.chunks(8192).zip(vs.chunks(8192)) {
                let mut buf = Vec::new();
                encode_series(t, v, &mut buf);
                bufs.push(buf);
                points += t.len();
            }
        }
        let enc = start.elapsed();
        let start = std::time::Instant::now();
        let (mut t, mut v) = (Vec::new(), Vec::new());
        for b in &bufs {
            decode_series(b, &mut t, &mut v).unwrap();
        }
        let dec = start.elapsed();
        assert_eq!(t.len(), points);
        println!(
            "series blocks of 8192: encode {:.2} M pt/s, decode {:.1} M pt/s",
            points as f64 / enc.as_secs_f64() / 1e6,
            points as f64 / dec.as_secs_f64() / 1e6
        );
    }

    /// Series whose points look like sensors: steps, decimals, then noise.
    fn sensor_like() -> impl Strategy<Value = (Vec<i64>, Vec<f64>)> {
        (
            1usize..3000,
            any::<i64>(),
            prop_oneof![Just(0i64), Just(1), Just(60_000_000_000), 1..1_000_000i64],
            0u32..4,
            any::<u64>(),
        )
            .prop_map(|(n, t0, step, decimals, seed)| {
                let mut rng = seed;
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let p = 10f64.powi(decimals as i32);
                let (mut ts, mut vs) = (Vec::new(), Vec::new());
                let mut level = 2000i64;
                for i in 0..n as i64 {
                    let jitter = if next() % 50 == 0 {
                        (next() % 7) as i64 - 3
                    } else {
                        0
                    };
                    ts.push(t0.wrapping_add(step.wrapping_mul(i + jitter)));
                    level += (next() % 21) as i64 - 10;
                    vs.push(match next() % 200 {
                        0 => f64::NAN,
                        1 => -0.0,
                        2 => f64::from_bits(next()),
                        _ => level as f64 / p,
                    });
                }
                (ts, vs)
            })
    }

    proptest! {
        #[test]
        fn series_round_trips_bit_for_bit(points in proptest::collection::vec((timestamp(), special()), 0..700)) {
            let (ts, vs): (Vec<i64>, Vec<f64>) = points.into_iter().unzip();
            series_round_trip(&ts, &vs);
        }

        #[test]
        fn sensor_like_series_round_trip((ts, vs) in sensor_like()) {
            series_round_trip(&ts, &vs);
            let s: Vec<u32> = (0..ts.len() as u32).map(|i| i % 3).collect();
            mixed_round_trip(&s, &ts, &vs);
        }

        #[test]
        fn mixed_round_trips_bit_for_bit(
            points in proptest::collection::vec(
                (prop_oneof![0u32..5, Just(u32::MAX), any::<u32>()], timestamp(), special()),
                0..700,
            )
        ) {
            let s: Vec<u32> = points.iter().map(|p| p.0).collect();
            let t: Vec<i64> = points.iter().map(|p| p.1).collect();
            let v: Vec<f64> = points.iter().map(|p| p.2).collect();
            mixed_round_trip(&s, &t, &v);
        }

        #[test]
        fn damaged_input_is_an_error_not_a_panic(
            (ts, vs) in sensor_like(),
            flip in any::<usize>(), mask in 1u8..=255, cut in any::<usize>(),
        ) {
            let mut one = Vec::new();
            encode_series(&ts, &vs, &mut one);
            let s: Vec<u32> = (0..ts.len() as u32).map(|i| i % 5).collect();
            let mut many = Vec::new();
            encode_mixed(&s, &ts, &vs, &mut many);
            let (mut s2, mut t2, mut v2) = (Vec::new(), Vec::new(), Vec::new());
            for buf in [&one, &many] {
                let mut bad = buf.clone();
                bad[flip % buf.len()] ^= mask;
                prop_assert!(decode_series(&bad, &mut t2, &mut v2).is_err());
                prop_assert!(decode_mixed(&bad, &mut s2, &mut t2, &mut v2).is_err());
                let short = &buf[..cut % buf.len()];
                prop_assert!(decode_series(short, &mut t2, &mut v2).is_err());
                prop_assert!(decode_mixed(short, &mut s2, &mut t2, &mut v2).is_err());
                if buf == &many {
                    prop_assert!(mixed_series(&bad, Checksum::Verify, &mut s2).is_err());
                    prop_assert!(mixed_series(short, Checksum::Verify, &mut s2).is_err());
                }
            }
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..300), format in 0u8..9) {
            if let Some(b) = bytes.first_mut() {
                *b = format;
            }
            let (mut s2, mut t2, mut v2) = (Vec::new(), Vec::new(), Vec::new());
            let _ = decode_series(&bytes, &mut t2, &mut v2);
            let _ = decode_mixed(&bytes, &mut s2, &mut t2, &mut v2);
            // Without the checksum check the decoder faces the garbage itself.
            let _ = decode_mixed_with(&bytes, Checksum::Skip, 3..=9, &mut s2, &mut t2, &mut v2);
            let _ = mixed_series(&bytes, Checksum::Skip, &mut s2);
            // With a valid checksum the decoders themselves face the garbage.
            if bytes.len() >= 5 {
                let body = bytes.len() - 4;
                let crc = crc32(&bytes[..body]).to_le_bytes();
                bytes[body..].copy_from_slice(&crc);
                let _ = decode_series(&bytes, &mut t2, &mut v2);
                let _ = decode_mixed(&bytes, &mut s2, &mut t2, &mut v2);
            }
        }
    }

    /// Journal chunks of format 5, written by stores before format 6, still
    /// decode: built here by that format's definition.
    #[test]
    fn format_5_journal_chunks_decode() {
        let s = [3u32, 1, 3, 70_000, 1];
        let t = [100i64, 90, 250, -5, i64::MAX];
        let v = [1.5, f64::NAN, -0.0, 21.37, 1e300];
        let n = s.len();
        let mut raw = vec![0u8; n * 8];
        let mut last: HashMap<u32, (i64, u64)> = HashMap::new();
        let mut deltas = Vec::new();
        for i in 0..n {
            let (pt, pv) = last.insert(s[i], (t[i], v[i].to_bits())).unwrap_or((0, 0));
            put_varint(&mut deltas, zigzag(t[i].wrapping_sub(pt)));
            for (k, b) in (v[i].to_bits() ^ pv).to_be_bytes().iter().enumerate() {
                raw[k * n + i] = *b;
            }
        }
        for &id in &s {
            put_varint(&mut raw, id as u64);
        }
        raw.extend_from_slice(&deltas);
        assert_single_frame_decodes(MIXED_V2, &raw, &s, &t, &v);
    }

    /// A journal chunk of an older `format` (one zstd frame of `raw`)
    /// decodes to the points it was made of, in arrival order.
    fn assert_single_frame_decodes(format: u8, raw: &[u8], s: &[u32], t: &[i64], v: &[f64]) {
        let mut buf = vec![format];
        put_varint(&mut buf, s.len() as u64);
        put_varint(&mut buf, raw.len() as u64);
        buf.extend_from_slice(&zstd::bulk::compress(raw, 1).unwrap());
        seal(0, &mut buf);
        let (mut s2, mut t2, mut v2) = (Vec::new(), Vec::new(), Vec::new());
        decode_mixed(&buf, &mut s2, &mut t2, &mut v2).unwrap();
        assert_eq!((s2.as_slice(), t2.as_slice()), (s, t));
        assert_eq!(bits(&v2), bits(v));
    }

    /// Rollup windows round-trip bit for bit, at the edges of i64 too, and
    /// a series of 2-decimal readings at 10 s windows takes well under the
    /// 41 B a window of the first encoding.
    #[test]
    fn windows_round_trip_and_stay_small() {
        let agg = |t: i64, v: f64, n: u64| Agg {
            min: v - 0.5,
            max: v + 0.25,
            sum: v * n as f64,
            count: n,
            first: v,
            first_ts: t.wrapping_add(17_000_000),
            last: -0.0,
            last_ts: t.wrapping_add(9_990_000_000),
        };
        let width = 10_000_000_000i64;
        let t0 = 1_796_220_260_000_000_000i64;
        let windows: Vec<(i64, Agg)> = (0..64)
            .map(|i| {
                let v = 2000.0 + ((i * 37) % 200) as f64 / 100.0;
                (t0 + i * width, agg(t0 + i * width, v, 140 + (i % 3) as u64))
            })
            .collect();
        let mut out = Vec::new();
        encode_windows(&windows, &mut out);
        let back = decode_windows(&out).unwrap();
        assert_eq!(format!("{back:?}"), format!("{windows:?}"));
        assert!(out.len() < 64 * 20, "{} B for 64 windows", out.len());
        let odd = vec![
            (i64::MIN, agg(i64::MAX - 5, f64::INFINITY, u64::MAX)),
            (0, agg(i64::MIN, 5e-324, 0)),
            (i64::MAX, agg(0, f64::MAX, 1)),
        ];
        let mut out = Vec::new();
        encode_windows(&odd, &mut out);
        let back = decode_windows(&out).unwrap();
        assert_eq!(format!("{back:?}"), format!("{odd:?}"));
        assert!(decode_windows(&out[..out.len() - 1]).is_err());
        assert!(decode_windows(&[]).is_err());
    }

    /// Values of every kind the journal meets keep their bits, and readings
    /// with a few decimals take about two bytes, not their eight.
    #[test]
    fn journal_values_by_decimals() {
        let v = [
            21.37,
            21.4,
            21.375,
            0.1,
            3.0,
            -0.0,
            f64::NAN,
            74.935_881_999_999_98,
            1e300,
            -12.5,
            5e-324,
            0.123_456_7,
            1e15,
            f64::INFINITY,
        ];
        let s: Vec<u32> = (0..v.len() as u32).map(|i| i % 3).collect();
        let t: Vec<i64> = (0..v.len() as i64).collect();
        mixed_round_trip(&s, &t, &v);
        // 10k series, one 2-decimal reading each, arrivals 100 µs apart.
        let n = 10_000u32;
        let s: Vec<u32> = (0..n).map(|i| (i * 7919) % n + 1).collect();
        let t: Vec<i64> = (0..n as i64)
            .map(|i| 1_764_000_000_000_000_000 + i * 100_000 + (i * 37) % 1000)
            .collect();
        let v: Vec<f64> = (0..n)
            .map(|i| ((i * 104_729) % 4000 + 1000) as f64 / 100.0)
            .collect();
        let bytes = mixed_round_trip(&s, &t, &v);
        assert!(bytes < n as usize * 6, "{} B/pt", bytes as f64 / n as f64);
    }

    /// A journal chunk of format 6 (one zstd frame, arrival order), as
    /// stores before the framed format hold, decodes in arrival order.
    #[test]
    fn single_frame_journal_still_decodes() {
        let s = [7u32, 9, 7, 3];
        let t = [100i64, 200, 150, 90];
        let v = [1.25, f64::NAN, -0.0, 3.0];
        let mut raw = Vec::new();
        encode_mixed_raw(&s, &t, &v, &mut raw);
        assert_single_frame_decodes(MIXED_V3, &raw, &s, &t, &v);
    }

    /// A frame table that claims ids its frame does not hold is damage:
    /// skipping frames by their ids would otherwise lose points.
    #[test]
    fn frame_ids_are_checked() {
        let s: Vec<u32> = (0..600).map(|i| i % 300 + 1).collect();
        let t: Vec<i64> = (0..600).collect();
        let v: Vec<f64> = (0..600).map(|i| i as f64).collect();
        let mut buf = Vec::new();
        encode_mixed(&s, &t, &v, &mut buf);
        // Format, n (2 bytes), frames, then the first head's lowest id (1).
        assert_eq!(buf[4], 1, "first frame starts at id 1");
        buf[4] = 2;
        let body = buf.len() - 4;
        let crc = crc32(&buf[..body]).to_le_bytes();
        buf[body..].copy_from_slice(&crc);
        let (mut s2, mut t2, mut v2) = (Vec::new(), Vec::new(), Vec::new());
        assert!(decode_mixed(&buf, &mut s2, &mut t2, &mut v2).is_err());
    }

    #[test]
    fn edge_cases_round_trip() {
        series_round_trip(&[], &[]);
        mixed_round_trip(&[], &[], &[]);
        series_round_trip(&[i64::MIN], &[f64::NAN]);
        series_round_trip(&[i64::MAX, i64::MIN, i64::MAX], &[-0.0, 0.0, -0.0]);
        series_round_trip(&[5, 5, 5, 4], &[1.5, 1.5, 1.5, 1.5]);
        series_round_trip(&[1, 2], &[f64::INFINITY, f64::NEG_INFINITY]);
        let nan_payload = f64::from_bits(0x7ff0_dead_beef_0001);
        series_round_trip(&[3, 1, 2], &[nan_payload, -nan_payload, 5e-324]);
        // More than a block, regular and decimal, with a few exceptions.
        let n = 20_000;
        let ts: Vec<i64> = (0..n)
            .map(|i| 1_400_000_000_000_000_000 + i * 300_000_000_000)
            .collect();
        let mut vs: Vec<f64> = (0..n).map(|i| ((i * 37) % 1000) as f64 / 100.0).collect();
        vs[17] = f64::NAN;
        vs[18] = -0.0;
        vs[19_999] = 0.1 + 0.2;
        let size = series_round_trip(&ts, &vs);
        assert!(size < n as usize * 2, "{size} bytes");
        let s: Vec<u32> = (0..n as u32).map(|i| i % 7).collect();
        mixed_round_trip(&s, &ts, &vs);
    }

    #[test]
    fn foreign_and_cut_frames_are_errors() {
        let mut buf = Vec::new();
        encode_series(&[1, 2, 3], &[1.0, 2.0, 3.0], &mut buf);
        let (mut s, mut t, mut v) = (Vec::new(), Vec::new(), Vec::new());
        assert!(matches!(
            decode_mixed(&buf, &mut s, &mut t, &mut v),
            Err(CodecError::Format(_))
        ));
        assert!(decode_series(&[], &mut t, &mut v).is_err());
        assert!(matches!(
            decode_series(&[99, 0, 0, 0, 0], &mut t, &mut v),
            Err(CodecError::Format(99))
        ));
        buf.push(0);
        assert!(decode_series(&buf, &mut t, &mut v).is_err());
    }

    /// A chunk of the first skeleton's series format, written as it did.
    #[test]
    fn skeleton_chunks_still_decode() {
        #[derive(serde::Serialize)]
        struct Frame {
            count: u32,
            series: Vec<u8>,
            ts: Vec<u8>,
            values: Vec<u8>,
        }
        // Points (10, 0.5), (20, -0.0), (25, NaN): dod varints and XOR planes.
        let words = [
            0.5f64.to_bits(),
            0.5f64.to_bits() ^ (-0.0f64).to_bits(),
            (-0.0f64).to_bits() ^ f64::NAN.to_bits(),
        ];
        let mut planes = vec![0u8; 24];
        for (i, w) in words.iter().enumerate() {
            for (k, b) in w.to_be_bytes().iter().enumerate() {
                planes[k * 3 + i] = *b;
            }
        }
        let mut tcol = Vec::new();
        for dod in [10i64, 0, -5] {
            put_varint(&mut tcol, zigzag(dod));
        }
        let frame = Frame {
            count: 3,
            series: vec![],
            ts: tcol,
            values: planes.clone(),
        };
        let raw = postcard::to_allocvec(&frame).unwrap();
        let mut buf = vec![SERIES_V1];
        buf.extend(zstd::bulk::compress(&raw, 3).unwrap());
        let (mut t, mut v) = (Vec::new(), Vec::new());
        decode_series(&buf, &mut t, &mut v).unwrap();
        assert_eq!(t, [10, 20, 25]);
        assert_eq!(
            bits(&v),
            [0.5f64.to_bits(), (-0.0f64).to_bits(), f64::NAN.to_bits()]
        );

        // The journal: series 7, 9, 7 with per-series deltas and XORs.
        let words = [
            1.0f64.to_bits(),
            2.0f64.to_bits(),
            1.0f64.to_bits() ^ 3.0f64.to_bits(),
        ];
        for (i, w) in words.iter().enumerate() {
            for (k, b) in w.to_be_bytes().iter().enumerate() {
                planes[k * 3 + i] = *b;
            }
        }
        let mut tcol = Vec::new();
        for d in [100i64, 200, 50] {
            put_varint(&mut tcol, zigzag(d));
        }
        let frame = Frame {
            count: 3,
            series: vec![7, 9, 7],
            ts: tcol,
            values: planes,
        };
        let raw = postcard::to_allocvec(&frame).unwrap();
        let mut buf = vec![MIXED_V1];
        buf.extend(zstd::bulk::compress(&raw, 1).unwrap());
        let (mut s, mut t, mut v) = (Vec::new(), Vec::new(), Vec::new());
        decode_mixed(&buf, &mut s, &mut t, &mut v).unwrap();
        assert_eq!(s, [7, 9, 7]);
        assert_eq!(t, [100, 200, 150]);
        assert_eq!(v, [1.0, 2.0, 3.0]);
    }

    /// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// One NAB file: "YYYY-MM-DD HH:MM:SS" UTC → ns, values by str::parse.
    fn read_nab(path: &std::path::Path) -> (Vec<i64>, Vec<f64>) {
        let text = std::fs::read_to_string(path).unwrap();
        let (mut ts, mut vs) = (Vec::new(), Vec::new());
        for line in text.lines().skip(1) {
            let (t, v) = line.split_once(',').unwrap();
            let num = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
            let days = days_from_civil(num(0..4), num(5..7), num(8..10));
            let secs = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
            ts.push(secs * 1_000_000_000);
            vs.push(v.trim().parse().unwrap());
        }
        (ts, vs)
    }

    fn nab() -> Vec<(String, Vec<i64>, Vec<f64>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nab");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("../shared/data/nab beside the repository")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                let (ts, vs) = read_nab(p);
                (
                    p.file_stem().unwrap().to_string_lossy().into_owned(),
                    ts,
                    vs,
                )
            })
            .collect()
    }

    /// pco 1.1 figures from shared/data/README.md: 8192- and 1024-point blocks.
    const REFERENCE: [(&str, f64, f64); 9] = [
        ("ambient_temperature_system_failure", 3.69, 3.87),
        ("cpu_utilization_asg_misconfiguration", 1.98, 2.09),
        ("ec2_cpu_utilization_24ae8d", 0.36, 0.47),
        ("ec2_network_in_257a54", 2.23, 2.30),
        ("machine_temperature_system_failure", 3.73, 3.90),
        ("nyc_taxi", 1.73, 1.84),
        ("occupancy_6005", 1.59, 1.82),
        ("rds_cpu_utilization_cc0c53", 1.86, 1.54),
        ("speed_6005", 0.97, 1.10),
    ];

    /// The real recordings, each series alone in 8192- and 1024-point
    /// blocks, exact round trip checked: pooled bytes per point must stay
    /// within 5 % of pco's 2.51 (8192 blocks), and each file within 25 %.
    /// `--nocapture` prints the table.
    #[test]
    fn real_recordings_compress_like_pco() {
        let data = nab();
        assert_eq!(data.len(), 9, "the nine NAB files");
        let mut table = String::from(
            "file                                   points  B/pt@8192  pco@8192  B/pt@1024  pco@1024\n",
        );
        let (mut points, mut b8, mut b1) = (0, 0, 0);
        for (name, ts, vs) in &data {
            let size = |block: usize| -> usize {
                ts.chunks(block)
                    .zip(vs.chunks(block))
                    .map(|(t, v)| series_round_trip(t, v))
                    .sum()
            };
            let (s8, s1) = (size(8192), size(1024));
            let n = ts.len();
            let (_, r8, r1) = REFERENCE
                .iter()
                .find(|r| r.0 == name)
                .expect("a known file");
            let (x8, x1) = (s8 as f64 / n as f64, s1 as f64 / n as f64);
            table += &format!("{name:<38} {n:>6}  {x8:>9.3}  {r8:>8.2}  {x1:>9.3}  {r1:>8.2}\n");
            assert!(x8 <= r8 * 1.25, "{name}: {x8:.3} B/pt against pco's {r8}");
            points += n;
            b8 += s8;
            b1 += s1;
        }
        let (p8, p1) = (b8 as f64 / points as f64, b1 as f64 / points as f64);
        table += &format!(
            "{:<38} {points:>6}  {p8:>9.3}  {:>8.2}  {p1:>9.3}  {:>8.2}\n",
            "all pooled", 2.51, 2.63
        );
        println!("{table}");
        assert!(p8 <= 2.64, "pooled {p8:.3} B/pt in 8192-point blocks");
    }

    /// Journal speed: `cargo test --release -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing, for release builds"]
    fn mixed_speed() {
        // 200 sensors at 2-decimal random walks, jittered arrivals: a busy gateway.
        let n = 2_000_000usize;
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut level = vec![2000i64; 200];
        let (mut s, mut t, mut v) = (Vec::new(), Vec::new(), Vec::new());
        let t0 = 1_700_000_000_000_000_000i64;
        for i in 0..n {
            let id = (next() % 200) as u32;
            level[id as usize] += (next() % 5) as i64 - 2;
            s.push(id);
            t.push(t0 + i as i64 * 500_000 + (next() % 1000) as i64);
            v.push(level[id as usize] as f64 / 100.0);
        }
        for chunk in [n / 10, n] {
            let (s, t, v) = (&s[..chunk], &t[..chunk], &v[..chunk]);
            let mut buf = Vec::new();
            let start = std::time::Instant::now();
            encode_mixed(s, t, v, &mut buf);
            let enc = start.elapsed();
            let (mut s2, mut t2, mut v2) = (Vec::new(), Vec::new(), Vec::new());
            let start = std::time::Instant::now();
            decode_mixed(&buf, &mut s2, &mut t2, &mut v2).unwrap();
            let dec = start.elapsed();
            assert_eq!(t2, t);
            println!(
                "{chunk} points: encode {:.1} M pt/s, decode {:.1} M pt/s, {:.2} B/pt",
                chunk as f64 / enc.as_secs_f64() / 1e6,
                chunk as f64 / dec.as_secs_f64() / 1e6,
                buf.len() as f64 / chunk as f64
            );
        }
    }

    /// Estimate for the context-coded journal (issue 3): bytes a point of
    /// today's frames against frames coded against each series' state.
    /// `cargo test --release -p tidegate --lib context_estimate -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn context_estimate() {
        let (series, flushes) = (10_000usize, 40usize);
        let mut rng = fastrand::Rng::with_seed(7);
        let t0 = 1_764_000_000_000_000_000i64;
        // (phase, x) per series, as bench store's synthetic feed.
        let mut st: Vec<(i64, i64)> = (0..series)
            .map(|_| (rng.i64(0..1_000_000_000), rng.i64(1000..3000)))
            .collect();
        let (mut steady, mut keyed) = (JournalState::new(), JournalState::new());
        let (mut base_bytes, mut ctx_bytes, mut key_bytes, mut points) =
            (0usize, 0usize, 0usize, 0usize);
        for f in 0..flushes as i64 {
            // One flush: every series' point of second f, in arrival order.
            let mut pts: Vec<(i64, u32, f64)> = st
                .iter_mut()
                .enumerate()
                .map(|(i, (phase, x))| {
                    *x += rng.i64(-3..=3);
                    let t = crate::point::to_arrival(
                        t0 + *phase + f * 1_000_000_000 + rng.i64(0..1_000_000),
                    );
                    (t, i as u32, *x as f64 / 100.0)
                })
                .collect();
            pts.sort_unstable_by_key(|p| (p.0, p.1));
            let s: Vec<u32> = pts.iter().map(|p| p.1).collect();
            let t: Vec<i64> = pts.iter().map(|p| p.0).collect();
            let v: Vec<f64> = pts.iter().map(|p| p.2).collect();
            // Today's frames: parts of 2048 points by series, as the store cuts them.
            let mut order = by_series(&s);
            let mut out = Vec::new();
            for part in order.chunks_mut(2048) {
                encode_mixed_part(&s, &t, &v, part, &mut out);
            }
            // Coded against the state: always (after the first flush), and
            // with a self-contained flush every 8.
            let mut cout = Vec::new();
            let mut order2: Vec<u32> = (0..s.len() as u32).collect();
            encode_context_part(&s, &t, &v, &mut order2, &mut steady, f as u64, &mut cout);
            let mut kout = Vec::new();
            if f % 8 == 0 {
                kout.extend_from_slice(&out);
                // Each series' points in arrival order, as a decode gives them.
                keyed.note(&s, &t, &v);
            } else {
                let mut order3: Vec<u32> = (0..s.len() as u32).collect();
                encode_context_part(
                    &s,
                    &t,
                    &v,
                    &mut order3,
                    &mut keyed,
                    (f % 8) as u64,
                    &mut kout,
                );
            }
            points += s.len();
            base_bytes += out.len();
            key_bytes += kout.len();
            if f > 1 {
                ctx_bytes += cout.len();
            }
        }
        let per = |b: usize, n: usize| b as f64 / n as f64;
        println!(
            "today {:.3} B/pt; context-coded (steady) {:.3} B/pt; with a key flush every 8 {:.3} B/pt",
            per(base_bytes, points),
            per(ctx_bytes, points - 2 * series),
            per(key_bytes, points)
        );
    }
}
