//! Journal frames coded against the frames before them (format 9, see
//! `codec/context.rs`), as the store writes and reads them.
//!
//! The writer codes each series' point against the point that series left
//! in the frames before, and begins a *group* afresh (its state cleared)
//! every [`GROUP_FLUSHES`] flushes, after open, and whenever a frame of the
//! group may have gone or changed (a seal, a clock correction, a failed
//! append). A frame names how far back its group begins (`FrameRef::back`),
//! so a reader of any frame decodes its group from the start, and keeps
//! the state to go on with the next. The invariant the store keeps: every
//! frame of the journal has the frames of its group before it. A seal that
//! takes part of a group rewrites the rest of it self-contained first
//! ([`Store::rewrite_cut_groups`]); at open a group with a frame lost to
//! damage loses the frames after it ([`Store::drop_broken_groups`]).
//!
//! Why groups of 64: `bench store --series 10000 --rate 10000 --seconds
//! 3600 --journal rollback` wrote 1.61 / 1.46 / 1.39 B a point of journal
//! frames with groups of 8 / 16 / 32 flushes (4.16 coded alone); 300 s
//! runs, 1.46 / 1.39 / 1.35 with 16 / 32 / 64, and with the series' rates
//! spread 16 times (`--spread 16`: a series at a quarter of the mean shows
//! up in one flush of four, and its first point in a group is coded alone)
//! 2.32 / 2.00 / 1.82. A reader starting mid-group decodes at most 63
//! flushes it does not need (~10k points each at 10k points/s; a sink
//! reading on from where it stopped decodes none: its reader is kept), and
//! a frame lost to damage takes at most the 63 after it.

use std::ops::RangeInclusive;

use super::segments::Segments;
use super::{codec, min_max, Frame, Store, StoreError, SERIES_BITS};

/// Flushes a group of journal frames holds: its first coded alone, the
/// others against it and each other.
pub const GROUP_FLUSHES: u32 = 64;

/// The writer's side: the state its next frame is coded against.
pub struct ChainWriter {
    state: codec::JournalState,
    /// Flushes a group holds ([`GROUP_FLUSHES`]; fewer in tests).
    pub(super) group_flushes: u32,
    /// Sequence number of the current group's first frame; `None`: the next
    /// flush begins a group.
    group: Option<i64>,
    /// Flushes in the current group so far.
    flushes: u32,
}

impl Default for ChainWriter {
    fn default() -> Self {
        ChainWriter {
            state: codec::JournalState::default(),
            group_flushes: GROUP_FLUSHES,
            group: None,
            flushes: 0,
        }
    }
}

impl ChainWriter {
    /// The next flush begins a group (what the frames so far hold may go or change).
    pub fn restart(&mut self) {
        self.group = None;
    }

    /// Encodes one flush's parts (`parts` of `order`) from sequence number
    /// `seq` on, end to end into `out`; returns each part's byte range.
    pub fn encode(
        &mut self,
        seq: i64,
        cols: (&[u32], &[i64], &[f64]),
        order: &mut [u32],
        parts: &[std::ops::Range<usize>],
        out: &mut Vec<u8>,
    ) -> Vec<std::ops::Range<usize>> {
        if self.group.is_none() || self.flushes >= self.group_flushes {
            self.state.clear();
            self.group = Some(seq);
            self.flushes = 0;
        }
        let group = self.group.expect("set above");
        self.flushes += 1;
        let (s, t, v) = cols;
        parts
            .iter()
            .enumerate()
            .map(|(k, part)| {
                let start = out.len();
                let back = (seq + k as i64 - group) as u64;
                codec::encode_context_part(
                    s,
                    t,
                    v,
                    &mut order[part.clone()],
                    &mut self.state,
                    back,
                    out,
                );
                start..out.len()
            })
            .collect()
    }
}

/// A rewrite of journal frame `key`: its points (decoded, in that order)
/// coded alone, a group of its own.
pub fn alone(key: i64, s: &[u32], t: &[i64], v: &[f64]) -> Frame<Vec<u8>> {
    let mut order: Vec<u32> = (0..s.len() as u32).collect();
    let mut state = codec::JournalState::new();
    let mut data = Vec::with_capacity(t.len() * 6);
    codec::encode_context_part(s, t, v, &mut order, &mut state, 0, &mut data);
    let (ts_min, ts_max) = min_max(t.iter().copied());
    Frame {
        key,
        ts_min,
        ts_max,
        count: t.len() as u32,
        data,
    }
}

/// Decoded points: series ids, times, values.
type Columns = (Vec<u32>, Vec<i64>, Vec<f64>);

/// A reader's side: decodes journal frames in any order, each after the
/// frames of its group before it, and keeps the state so that the next
/// frame of the same group costs one decode.
pub struct ChainReader {
    state: codec::JournalState,
    /// The group the state is of and the last frame in it the state is
    /// past (sequence numbers).
    at: Option<(i64, i64)>,
    /// A frame's bytes, and the columns of frames decoded only for their state.
    buf: Vec<u8>,
    scratch: Columns,
    /// The last frame decoded, and its columns: a sink whose batch ended
    /// part-way through a frame reads it again next, and the state is
    /// already past it.
    last: Option<(i64, Columns)>,
    /// Frames decoded so far (those decoded only for their state included).
    decoded: u64,
}

impl Default for ChainReader {
    fn default() -> Self {
        ChainReader::new(0..=u32::MAX)
    }
}

impl ChainReader {
    /// A reader of the points of the series in `ids`.
    pub fn new(ids: RangeInclusive<u32>) -> ChainReader {
        ChainReader {
            state: codec::JournalState::for_ids(ids),
            at: None,
            buf: Vec::new(),
            scratch: Default::default(),
            last: None,
            decoded: 0,
        }
    }

    /// Decodes journal frame `key` into the columns (cleared first): the
    /// points of this reader's series.
    pub fn decode(
        &mut self,
        journal: &Segments,
        key: i64,
        checksum: codec::Checksum,
        cols: (&mut Vec<u32>, &mut Vec<i64>, &mut Vec<f64>),
    ) -> Result<(), StoreError> {
        let (s, t, v) = cols;
        if let Some((k, (ls, lt, lv))) = self.last.as_ref().filter(|l| l.0 == key) {
            debug_assert_eq!(Some(*k), self.at.map(|a| a.1 << SERIES_BITS));
            s.clone_from(ls);
            t.clone_from(lt);
            v.clone_from(lv);
            return Ok(());
        }
        let spare = self.last.take();
        let (seq, group) = self.group_of(journal, key)?;
        if seq != group && self.at != Some((group, seq - 1)) {
            // Not where this reader stopped: the group from its start.
            self.at = None;
            let (mut ss, mut ts, mut vs) = std::mem::take(&mut self.scratch);
            for q in group..seq {
                let k = q << SERIES_BITS;
                if self.group_of(journal, k).ok() != Some((q, group)) {
                    return Err(StoreError::Corrupt(format!(
                        "journal chunk {key} is coded against chunk {k}, which is missing"
                    )));
                }
                self.step(
                    journal,
                    k,
                    q == group,
                    checksum,
                    (&mut ss, &mut ts, &mut vs),
                )?;
            }
            self.scratch = (ss, ts, vs);
        }
        self.step(journal, key, seq == group, checksum, (s, t, v))?;
        self.at = Some((group, seq));
        let (mut ls, mut lt, mut lv) = spare.map(|l| l.1).unwrap_or_default();
        ls.clone_from(s);
        lt.clone_from(t);
        lv.clone_from(v);
        self.last = Some((key, (ls, lt, lv)));
        Ok(())
    }

    /// Goes past frame `key` without decoding it: the caller knows it holds
    /// none of this reader's series (their state stays as it is).
    pub fn pass(&mut self, journal: &Segments, key: i64) {
        self.last = None;
        self.at = match self.group_of(journal, key) {
            Ok((seq, group)) if seq == group => {
                // A group begins: the writer forgot every series here.
                self.state.clear();
                Some((group, seq))
            }
            Ok((seq, group)) if self.at == Some((group, seq - 1)) => Some((group, seq)),
            _ => None,
        };
    }

    /// Frames decoded so far, those decoded only for their state included.
    #[cfg(test)]
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Frame `key`'s sequence number and its group's first.
    fn group_of(&self, journal: &Segments, key: i64) -> Result<(i64, i64), StoreError> {
        let r = journal
            .frames()
            .get(&key)
            .ok_or_else(|| StoreError::Corrupt(format!("journal chunk {key} is missing")))?;
        let seq = key >> SERIES_BITS;
        Ok((seq, seq - i64::from(r.back)))
    }

    fn step(
        &mut self,
        journal: &Segments,
        key: i64,
        first: bool,
        checksum: codec::Checksum,
        (s, t, v): (&mut Vec<u32>, &mut Vec<i64>, &mut Vec<f64>),
    ) -> Result<(), StoreError> {
        s.clear();
        t.clear();
        v.clear();
        self.decoded += 1;
        if first {
            self.state.clear();
        }
        journal.read_into(key, &mut self.buf, checksum)?;
        codec::decode_with_state(&self.buf, checksum, &mut self.state, s, t, v).map_err(|e| {
            self.at = None;
            StoreError::Corrupt(format!("chunk {key}: {e}"))
        })
    }
}

impl Store {
    /// Before a seal lets go of `gone` (journal keys), rewrites alone every
    /// frame left whose group loses a frame before it, so that what stays
    /// decodes without what goes. Appended (the later frame of a key
    /// wins) and synced before the seal commits.
    pub(super) fn rewrite_cut_groups(
        &mut self,
        gone: &std::collections::BTreeSet<i64>,
    ) -> Result<usize, StoreError> {
        let mut cut = Vec::new();
        for (&key, r) in self.journal.frames() {
            if r.back == 0 || gone.contains(&key) {
                continue;
            }
            let seq = key >> SERIES_BITS;
            let first = (seq - i64::from(r.back)) << SERIES_BITS;
            if gone.range(first..key).next().is_some() {
                cut.push(key);
            }
        }
        if cut.is_empty() {
            return Ok(0);
        }
        // What the sinks' readers hold of these frames is about to be stale.
        self.chain_readers.clear();
        let mut reader = ChainReader::default();
        let (mut s, mut t, mut v) = (Vec::new(), Vec::new(), Vec::new());
        let mut frames = Vec::with_capacity(cut.len());
        for &key in &cut {
            reader.decode(
                &self.journal,
                key,
                codec::Checksum::Skip,
                (&mut s, &mut t, &mut v),
            )?;
            frames.push(alone(key, &s, &t, &v));
        }
        self.journal.append(&frames)?;
        self.metrics.store.journal_bytes.fetch_add(
            frames.iter().map(|f| f.data.len() as u64).sum(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(cut.len())
    }

    /// At open: drops from the journal's index every frame whose group lost
    /// a frame before it (damage); returns the points dropped.
    pub(super) fn drop_broken_groups(journal: &mut Segments) -> (u64, Vec<i64>) {
        let frames = journal.frames();
        let broken: Vec<i64> = frames
            .iter()
            .filter(|(&key, r)| {
                let seq = key >> SERIES_BITS;
                (seq - i64::from(r.back)..seq).any(|q| {
                    frames
                        .get(&(q << SERIES_BITS))
                        .is_none_or(|p| i64::from(p.back) != q - (seq - i64::from(r.back)))
                })
            })
            .map(|(&k, _)| k)
            .collect();
        let points = broken.iter().map(|k| u64::from(frames[k].count)).sum();
        journal.drop_frames(&broken);
        (points, broken)
    }
}
