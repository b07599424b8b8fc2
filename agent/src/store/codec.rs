//! Chunk encodings: columns of timestamps and values, compressed.
//!
//! Timestamps are delta-of-delta, zigzag, varint: a regular sensor costs about
//! one byte a point before zstd and nearly nothing after. Values are XORed with
//! the previous value of the same series (Gorilla's observation: neighbours
//! share sign, exponent and high mantissa bits), then the eight bytes of the
//! results are written plane by plane, so zstd sees long runs of zero bytes.
//! Every encoding starts with a format byte so the store can evolve it.

use serde::{Deserialize, Serialize};

/// Format byte of a per-series chunk.
const SERIES_V1: u8 = 1;
/// Format byte of a journal (mixed-series) chunk.
const MIXED_V1: u8 = 2;
/// zstd level for per-series chunks: written once, read many times.
const SERIES_LEVEL: i32 = 9;
/// zstd level for journal chunks: on the ingest path, speed first.
const MIXED_LEVEL: i32 = 1;

/// A chunk that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The format byte is not one this version knows.
    #[error("unknown chunk format {0}")]
    Format(u8),
    /// The bytes end early or do not frame as expected.
    #[error("corrupt chunk: {0}")]
    Corrupt(String),
}

/// The framed columns of a chunk (postcard), before zstd.
#[derive(Serialize, Deserialize)]
struct Frame {
    count: u32,
    series: Vec<u8>,
    ts: Vec<u8>,
    values: Vec<u8>,
}

/// Encodes one series' points (in arrival order) into `out`.
pub fn encode_series(ts: &[i64], values: &[f64], out: &mut Vec<u8>) {
    let frame = Frame {
        count: ts.len() as u32,
        series: Vec::new(),
        ts: encode_ts(ts.iter().copied()),
        values: encode_values(values.iter().map(|v| v.to_bits())),
    };
    finish(SERIES_V1, &frame, SERIES_LEVEL, out);
}

/// Decodes a per-series chunk, appending to `ts` and `values`.
pub fn decode_series(
    bytes: &[u8],
    ts: &mut Vec<i64>,
    values: &mut Vec<f64>,
) -> Result<(), CodecError> {
    let frame = open(SERIES_V1, bytes)?;
    let n = frame.count as usize;
    decode_ts(&frame.ts, n, ts)?;
    decode_values(&frame.values, n, values)?;
    Ok(())
}

/// Encodes points of many series (parallel columns, arrival order) into `out`.
pub fn encode_mixed(series: &[u32], ts: &[i64], values: &[f64], out: &mut Vec<u8>) {
    // Deltas and XORs against the same series' previous point, not the
    // previous point of the stream, which is usually another sensor.
    let mut last: std::collections::HashMap<u32, (i64, u64)> = Default::default();
    let mut sid = Vec::with_capacity(series.len() * 2);
    let mut t = Vec::with_capacity(ts.len() * 2);
    let mut xors = Vec::with_capacity(values.len());
    for i in 0..series.len() {
        let (s, bits) = (series[i], values[i].to_bits());
        put_varint(&mut sid, s as u64);
        let (pt, pv) = last.insert(s, (ts[i], bits)).unwrap_or((0, 0));
        put_varint(&mut t, zigzag(ts[i].wrapping_sub(pt)));
        xors.push(bits ^ pv);
    }
    let frame = Frame {
        count: series.len() as u32,
        series: sid,
        ts: t,
        values: planes(&xors),
    };
    finish(MIXED_V1, &frame, MIXED_LEVEL, out);
}

/// Decodes a journal chunk, appending to the three columns.
pub fn decode_mixed(
    bytes: &[u8],
    series: &mut Vec<u32>,
    ts: &mut Vec<i64>,
    values: &mut Vec<f64>,
) -> Result<(), CodecError> {
    let frame = open(MIXED_V1, bytes)?;
    let n = frame.count as usize;
    let xors = unplanes(&frame.values, n)?;
    let (mut a, mut b) = (0usize, 0usize);
    let mut last: std::collections::HashMap<u32, (i64, u64)> = Default::default();
    series.reserve(n);
    ts.reserve(n);
    values.reserve(n);
    for x in xors {
        let s = u32::try_from(get_varint(&frame.series, &mut a)?)
            .map_err(|_| CodecError::Corrupt("series id out of range".into()))?;
        let d = unzigzag(get_varint(&frame.ts, &mut b)?);
        let (pt, pv) = last.get(&s).copied().unwrap_or((0, 0));
        let (t, v) = (pt.wrapping_add(d), pv ^ x);
        last.insert(s, (t, v));
        series.push(s);
        ts.push(t);
        values.push(f64::from_bits(v));
    }
    Ok(())
}

fn finish(format: u8, frame: &Frame, level: i32, out: &mut Vec<u8>) {
    let raw = postcard::to_allocvec(frame).expect("a frame always serialises");
    out.push(format);
    let compressed = zstd::bulk::compress(&raw, level).expect("zstd compresses any input");
    out.extend_from_slice(&compressed);
}

fn open(format: u8, bytes: &[u8]) -> Result<Frame, CodecError> {
    let (&f, body) = bytes
        .split_first()
        .ok_or_else(|| CodecError::Corrupt("empty".into()))?;
    if f != format {
        return Err(CodecError::Format(f));
    }
    // A chunk never holds more than a few hundred thousand points; this bound
    // keeps a corrupt length from allocating gigabytes.
    let raw = zstd::bulk::decompress(body, 64 << 20)
        .map_err(|e| CodecError::Corrupt(format!("zstd: {e}")))?;
    let frame: Frame =
        postcard::from_bytes(&raw).map_err(|e| CodecError::Corrupt(format!("frame: {e}")))?;
    Ok(frame)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], at: &mut usize) -> Result<u64, CodecError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf
            .get(*at)
            .ok_or_else(|| CodecError::Corrupt("varint past the end".into()))?;
        *at += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(CodecError::Corrupt("varint too long".into()))
}

/// Delta-of-delta, zigzag, varint.
fn encode_ts(ts: impl Iterator<Item = i64>) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut prev, mut delta) = (0i64, 0i64);
    for t in ts {
        let d = t.wrapping_sub(prev);
        put_varint(&mut out, zigzag(d.wrapping_sub(delta)));
        prev = t;
        delta = d;
    }
    out
}

fn decode_ts(buf: &[u8], n: usize, out: &mut Vec<i64>) -> Result<(), CodecError> {
    let (mut prev, mut delta, mut at) = (0i64, 0i64, 0usize);
    out.reserve(n.min(buf.len()));
    for _ in 0..n {
        delta = delta.wrapping_add(unzigzag(get_varint(buf, &mut at)?));
        prev = prev.wrapping_add(delta);
        out.push(prev);
    }
    Ok(())
}

/// XOR with the previous value, then byte planes.
fn encode_values(bits: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut prev = 0u64;
    let xors: Vec<u64> = bits
        .map(|b| {
            let x = b ^ prev;
            prev = b;
            x
        })
        .collect();
    planes(&xors)
}

fn decode_values(buf: &[u8], n: usize, out: &mut Vec<f64>) -> Result<(), CodecError> {
    let mut prev = 0u64;
    out.reserve(n);
    for x in unplanes(buf, n)? {
        prev ^= x;
        out.push(f64::from_bits(prev));
    }
    Ok(())
}

/// Byte `k` of every word, then byte `k+1`, ...: most significant first.
fn planes(words: &[u64]) -> Vec<u8> {
    let n = words.len();
    let mut out = vec![0u8; n * 8];
    for (i, w) in words.iter().enumerate() {
        for (k, b) in w.to_be_bytes().iter().enumerate() {
            out[k * n + i] = *b;
        }
    }
    out
}

fn unplanes(buf: &[u8], n: usize) -> Result<Vec<u64>, CodecError> {
    if buf.len() != n * 8 {
        return Err(CodecError::Corrupt(format!(
            "{} value bytes for {n} points",
            buf.len()
        )));
    }
    let mut out = vec![0u64; n];
    for (i, w) in out.iter_mut().enumerate() {
        let mut b = [0u8; 8];
        for (k, byte) in b.iter_mut().enumerate() {
            *byte = buf[k * n + i];
        }
        *w = u64::from_be_bytes(b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn special() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            any::<u64>().prop_map(f64::from_bits), // NaN payloads, subnormals
            Just(-0.0),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MIN_POSITIVE / 2.0),
            (0i64..10_000).prop_map(|c| c as f64 / 100.0),
        ]
    }

    fn timestamp() -> impl Strategy<Value = i64> {
        prop_oneof![
            any::<i64>(),
            Just(i64::MIN),
            Just(i64::MAX),
            0i64..1_000_000
        ]
    }

    proptest! {
        #[test]
        fn series_round_trips_bit_for_bit(points in proptest::collection::vec((timestamp(), special()), 0..600)) {
            let (ts, vs): (Vec<i64>, Vec<f64>) = points.iter().copied().unzip();
            let mut buf = Vec::new();
            encode_series(&ts, &vs, &mut buf);
            let (mut t2, mut v2) = (Vec::new(), Vec::new());
            decode_series(&buf, &mut t2, &mut v2).unwrap();
            prop_assert_eq!(&t2, &ts);
            prop_assert_eq!(v2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), vs.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }

        #[test]
        fn mixed_round_trips_bit_for_bit(points in proptest::collection::vec((0u32..5, timestamp(), special()), 0..600)) {
            let s: Vec<u32> = points.iter().map(|p| p.0).collect();
            let t: Vec<i64> = points.iter().map(|p| p.1).collect();
            let v: Vec<f64> = points.iter().map(|p| p.2).collect();
            let mut buf = Vec::new();
            encode_mixed(&s, &t, &v, &mut buf);
            let (mut s2, mut t2, mut v2) = (Vec::new(), Vec::new(), Vec::new());
            decode_mixed(&buf, &mut s2, &mut t2, &mut v2).unwrap();
            prop_assert_eq!(s2, s);
            prop_assert_eq!(t2, t);
            prop_assert_eq!(v2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), v.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }

        #[test]
        fn corrupt_input_is_an_error_not_a_panic(
            points in proptest::collection::vec((timestamp(), special()), 1..200),
            flip in any::<usize>(), cut in any::<usize>(),
        ) {
            let (ts, vs): (Vec<i64>, Vec<f64>) = points.iter().copied().unzip();
            let mut buf = Vec::new();
            encode_series(&ts, &vs, &mut buf);
            let mut bad = buf.clone();
            let i = flip % bad.len();
            bad[i] ^= 0xa5;
            let (mut t2, mut v2) = (Vec::new(), Vec::new());
            let _ = decode_series(&bad, &mut t2, &mut v2);
            let _ = decode_series(&buf[..cut % buf.len()], &mut t2, &mut v2);
            let _ = decode_mixed(&bad, &mut Vec::new(), &mut t2, &mut v2);
        }
    }
}
