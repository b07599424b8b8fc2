//! Re-stamping after a wall-clock step. A board without a real-time clock
//! boots with the time it last saved and stamps arrivals with it until NTP
//! steps the clock forward, often by hours or days. The points stamped on
//! arrival in between are moved by the step, in the journal and in sealed
//! chunks no sink has been handed yet; each correction is recorded, so a
//! query can tell which points it moved.
//!
//! Only this boot's points are candidates: the store remembers where this
//! boot's journal starts, and sealing and compaction never mix chunks of two
//! boots, so a point of the previous boot stamped in the same old-clock
//! range (a clock restored from a save older than the power loss) stays.

use std::collections::HashSet;

use rusqlite::{params, OptionalExtension};

use super::chain::{alone, ChainReader};
use super::{codec, decode_chunk, min_max, table_exists, Store, SERIES_BITS, SERIES_MASK};
use crate::point::SeriesKey;
use crate::store::{Cursor, StoreError};

/// A forward step of the wall clock, and the points it made wrong.
#[derive(Clone, Debug)]
pub struct ClockStep {
    /// How far the clock jumped forward, ns.
    pub step_ns: i64,
    /// Old-clock time of the boot, ns: points stamped from here...
    pub from_ns: i64,
    /// ...to here (the old clock when the step was seen) are moved.
    pub to_ns: i64,
    /// Series whose points carry the arrival time; others keep their time.
    pub series: Vec<SeriesKey>,
}

/// What a [`ClockStep`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Correction {
    /// Points moved by the step.
    pub moved: u64,
    /// Points in range that a sink had already been handed: they keep the
    /// old time, so every sink holds the same time for a point.
    pub sent_before: u64,
}

/// One recorded correction, as `query` reports it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CorrectionRow {
    /// When the step was seen (new clock), ns.
    pub at_ns: i64,
    /// The step, ns.
    pub step_ns: i64,
    /// The moved points now lie in `[from_ns, to_ns]` (new clock).
    pub from_ns: i64,
    /// End of that range.
    pub to_ns: i64,
    /// Points moved.
    pub moved: u64,
    /// Points left with the old time (already sent).
    pub sent_before: u64,
}

const TABLE: &str = "CREATE TABLE IF NOT EXISTS clock_corrections (
    at_ns       INTEGER NOT NULL,
    step_ns     INTEGER NOT NULL,
    from_ns     INTEGER NOT NULL,   -- new clock
    to_ns       INTEGER NOT NULL,
    moved       INTEGER NOT NULL,
    sent_before INTEGER NOT NULL
)";

/// The kernel's id of this boot, hashed (FNV-1a 64); `None` off Linux.
fn boot_id() -> Option<i64> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.trim().bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    Some(h as i64)
}

impl Store {
    /// Remembers the first journal sequence number of this boot (at the
    /// first open after a boot, kept over agent restarts within it).
    pub(super) fn note_boot(&mut self) -> Result<(), StoreError> {
        let Some(boot) = boot_id() else {
            self.boot_seq = self.next_seq;
            return Ok(());
        };
        let saved: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'boot_id'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if saved == Some(boot) {
            self.boot_seq = self.counter("boot_seq")? as i64;
            return Ok(());
        }
        self.boot_seq = self.next_seq;
        let tx = self.conn.transaction()?;
        for (name, value) in [("boot_id", boot), ("boot_seq", self.boot_seq)] {
            tx.execute(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Where this boot's chunks start: sealing and compaction split there.
    pub(super) fn boot_cursor(&self) -> Cursor {
        Cursor {
            key: self.boot_seq << SERIES_BITS,
            offset: 0,
        }
    }

    /// Moves this boot's points of `step.series` stamped in
    /// `[step.from_ns, step.to_ns]` forward by `step.step_ns`, except those a
    /// sink has already been handed, and records the correction.
    pub fn correct_clock(
        &mut self,
        step: &ClockStep,
        at_ns: i64,
    ) -> Result<Correction, StoreError> {
        let wanted: HashSet<u32> = step
            .series
            .iter()
            .filter_map(|k| self.ids.get(k).copied())
            .collect();
        let mut done = Correction::default();
        if wanted.is_empty() || step.step_ns <= 0 {
            return Ok(done);
        }
        // Points not flushed yet: no sink has seen them.
        let p = &mut self.pending;
        for (s, t) in p.series.iter().zip(p.ts.iter_mut()) {
            if wanted.contains(s) && (step.from_ns..=step.to_ns).contains(t) {
                *t += step.step_ns;
                done.moved += 1;
            }
        }
        let handed: Vec<Cursor> = self.sinks.values().map(|p| p.read).collect();
        // A seal under way read this journal before the step: it starts again.
        self.seal_abort();
        // So does a round of compaction: merges encoded before the step
        // would write the old times back.
        self.compaction.drop_ready();
        let boot = self.boot_seq << SERIES_BITS;
        let (mut s, mut t, mut v) = (Vec::new(), Vec::new(), Vec::new());
        // Re-stamps one chunk's points (decoded: ids, times, values) and
        // returns how many moved.
        let mut restamp = |id: i64, s: &[u32], t: &mut [i64]| -> u64 {
            // The first points of the chunk that some sink has had.
            let sent = handed
                .iter()
                .map(|c| match c.key.cmp(&id) {
                    std::cmp::Ordering::Greater => t.len(),
                    std::cmp::Ordering::Equal => c.offset as usize,
                    std::cmp::Ordering::Less => 0,
                })
                .max()
                .unwrap_or(0);
            let mut moved = 0;
            for i in 0..t.len() {
                if !wanted.contains(&s[i]) || t[i] < step.from_ns || t[i] > step.to_ns {
                    continue;
                }
                if i < sent {
                    done.sent_before += 1;
                } else {
                    t[i] += step.step_ns;
                    moved += 1;
                }
            }
            done.moved += moved;
            moved
        };
        // The journal's chunks are rewritten by appending them again (the
        // later frame of a key wins), before the database commits: a stop
        // in between leaves them moved and the correction unrecorded, never
        // recorded and not moved. A rewritten frame is coded alone, and so
        // is every later frame of its group: they were coded against the
        // times it held.
        let mut rewrites = Vec::new();
        let mut reader = ChainReader::default();
        let mut changed_group = None;
        let frames: Vec<(i64, super::segments::FrameRef)> = self
            .journal
            .frames()
            .range(boot..)
            .map(|(&k, &r)| (k, r))
            .collect();
        for (key, frame) in frames {
            let seq = key >> SERIES_BITS;
            let group = seq - i64::from(frame.back);
            let follows = frame.back > 0 && changed_group == Some(group);
            if !follows && (frame.ts_max < step.from_ns || frame.ts_min > step.to_ns) {
                continue;
            }
            reader.decode(
                &self.journal,
                key,
                codec::Checksum::Skip,
                (&mut s, &mut t, &mut v),
            )?;
            if restamp(key, &s, &mut t) == 0 && !follows {
                continue;
            }
            changed_group = Some(group);
            rewrites.push(alone(key, &s, &t, &v));
        }
        let tx = self.conn.transaction()?;
        {
            let mut rows = tx.prepare(
                "SELECT id, data FROM chunks WHERE id >= ?1 AND series != 0 AND ts_max >= ?2 AND ts_min <= ?3",
            )?;
            let mut update =
                tx.prepare("UPDATE chunks SET data = ?2, ts_min = ?3, ts_max = ?4 WHERE id = ?1")?;
            let mut rows = rows.query(params![boot, step.from_ns, step.to_ns])?;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                if !wanted.contains(&((id & SERIES_MASK) as u32)) {
                    continue;
                }
                decode_chunk(id, &row.get::<_, Vec<u8>>(1)?, &mut s, &mut t, &mut v)?;
                if restamp(id, &s, &mut t) == 0 {
                    continue;
                }
                let mut data = Vec::with_capacity(t.len() * 4);
                codec::encode_series(&t, &v, &mut data);
                let (ts_min, ts_max) = min_max(t.iter().copied());
                update.execute(params![id, data, ts_min, ts_max])?;
            }
        }
        // The next flush begins a group: the writer's state holds old times;
        // the sinks' readers may hold the frames rewritten.
        self.chain.restart();
        self.chain_readers.clear();
        self.journal.append(&rewrites)?;
        tx.execute(TABLE, [])?;
        tx.execute(
            "INSERT INTO clock_corrections (at_ns, step_ns, from_ns, to_ns, moved, sent_before)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                at_ns,
                step.step_ns,
                step.from_ns + step.step_ns,
                step.to_ns + step.step_ns,
                done.moved as i64,
                done.sent_before as i64
            ],
        )?;
        tx.commit()?;
        Ok(done)
    }

    /// Every recorded correction, oldest first (none in a store that never
    /// saw a step).
    pub fn clock_corrections(&self) -> Result<Vec<CorrectionRow>, StoreError> {
        if !table_exists(&self.conn, "clock_corrections")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT at_ns, step_ns, from_ns, to_ns, moved, sent_before FROM clock_corrections ORDER BY rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(CorrectionRow {
                at_ns: r.get(0)?,
                step_ns: r.get(1)?,
                from_ns: r.get(2)?,
                to_ns: r.get(3)?,
                moved: r.get::<_, i64>(4)? as u64,
                sent_before: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Metrics;
    use crate::point::{Batch, Point};

    const S: i64 = 1_000_000_000;
    const DAY: i64 = 86_400 * S;

    fn batch(series: &str, ts: impl IntoIterator<Item = i64>) -> Batch {
        Batch {
            points: ts
                .into_iter()
                .map(|t| Point {
                    series: SeriesKey::from_canonical(series),
                    ts_ns: t,
                    value: t as f64,
                })
                .collect(),
        }
    }

    fn times(store: &Store, series: &str) -> Vec<i64> {
        let key = SeriesKey::from_canonical(series);
        let mut t: Vec<i64> = store
            .read(&key, i64::MIN, i64::MAX)
            .unwrap()
            .into_iter()
            .map(|p| p.0)
            .collect();
        t.sort();
        t
    }

    #[test]
    fn a_forward_step_moves_this_boots_unsent_arrival_stamps_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), Metrics::new("t")).unwrap();
        let old = 1_000 * S;
        // The previous boot: stamped in the same old-clock range (a clock
        // restored from a save older than the power loss).
        store.append(&batch("m a", [old + 5 * S])).unwrap();
        store.flush().unwrap();
        store.boot_seq = store.next_seq;
        // This boot: arrival stamps, and a series with its device's time.
        store
            .append(&batch("m a", (0..4).map(|i| old + i * S)))
            .unwrap();
        store.append(&batch("m b", [old + S])).unwrap();
        store.flush().unwrap();
        // A sink took the first two points of this boot's journal chunk...
        let from = store.cursor("sink").unwrap();
        let (_, c) = store.after("sink", from, None, 1).unwrap();
        let (_, c) = store.after("sink", c, None, 1).unwrap();
        let (_, c) = store.after("sink", c, None, 1).unwrap();
        assert_eq!(c.offset, 2, "the sink is part-way into this boot's chunk");
        // ...and sealing must keep the two boots apart.
        store.append(&batch("m a", [old + 10 * S])).unwrap();
        store.flush().unwrap();
        store.seal().unwrap();
        // And one still in memory.
        store.append(&batch("m a", [old + 11 * S])).unwrap();

        let step = ClockStep {
            step_ns: DAY,
            from_ns: old,
            to_ns: old + 20 * S,
            series: vec![SeriesKey::from_canonical("m a")],
        };
        let done = store.correct_clock(&step, old + DAY + 21 * S).unwrap();
        store.flush().unwrap();
        assert_eq!(
            done,
            Correction {
                moved: 4,
                sent_before: 2
            }
        );
        assert_eq!(
            times(&store, "m a"),
            [
                old,
                old + S,
                old + 5 * S, // the previous boot's
                old + DAY + 2 * S,
                old + DAY + 3 * S,
                old + DAY + 10 * S,
                old + DAY + 11 * S
            ]
        );
        assert_eq!(times(&store, "m b"), [old + S], "device time stays");
        let rows = store.clock_corrections().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].moved, rows[0].sent_before), (4, 2));
        assert_eq!(rows[0].from_ns, old + DAY);

        // The sink goes on from where it was, and reads the moved points.
        let (rest, _) = store.after("sink", c, None, 100).unwrap();
        let a: Vec<i64> = rest
            .points
            .iter()
            .filter(|p| p.series.as_str() == "m a")
            .map(|p| p.ts_ns)
            .collect();
        assert_eq!(
            a,
            [
                old + DAY + 2 * S,
                old + DAY + 3 * S,
                old + DAY + 10 * S,
                old + DAY + 11 * S
            ]
        );
    }

    #[test]
    fn the_frames_after_a_moved_one_in_its_group_read_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path, Metrics::new("t")).unwrap();
        let old = 1_000 * S;
        // One journal group: a flush a second, "m a" stamped on arrival,
        // "m b" with its device's time.
        for i in 0..6 {
            store.append(&batch("m a", [old + i * S])).unwrap();
            store.append(&batch("m b", [old + i * S + 7])).unwrap();
            store.flush().unwrap();
        }
        assert!(store.journal.frames().values().skip(1).all(|r| r.back > 0));
        let step = ClockStep {
            step_ns: DAY,
            from_ns: old + S,
            to_ns: old + 2 * S,
            series: vec![SeriesKey::from_canonical("m a")],
        };
        let done = store.correct_clock(&step, old + DAY + 3 * S).unwrap();
        assert_eq!(done.moved, 2);
        let a = [
            old,
            old + 3 * S,
            old + 4 * S,
            old + 5 * S,
            old + DAY + S,
            old + DAY + 2 * S,
        ];
        let b: Vec<i64> = (0..6).map(|i| old + i * S + 7).collect();
        assert_eq!(times(&store, "m a"), a);
        assert_eq!(times(&store, "m b"), b);
        drop(store);
        let store = Store::open(&path, Metrics::new("t")).unwrap();
        assert_eq!(times(&store, "m a"), a);
        assert_eq!(times(&store, "m b"), b);
    }

    #[test]
    fn a_correction_between_compaction_steps_is_not_undone_by_the_merges() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db"), Metrics::new("t")).unwrap();
        store.seal.pass_points = 4;
        let old = 1_000 * S;
        for i in 0..8 {
            store.append(&batch("m a", [old + i * S])).unwrap();
            store.flush().unwrap();
            store.seal().unwrap();
        }
        assert_eq!(store.compact_begin().unwrap(), 2);
        assert!(
            store.compact_step().unwrap(),
            "merges encoded, not committed"
        );
        let step = ClockStep {
            step_ns: DAY,
            from_ns: old,
            to_ns: old + 20 * S,
            series: vec![SeriesKey::from_canonical("m a")],
        };
        assert_eq!(
            store.correct_clock(&step, old + DAY + 9 * S).unwrap().moved,
            8
        );
        while store.compact_step().unwrap() {}
        let moved: Vec<i64> = (0..8).map(|i| old + DAY + i * S).collect();
        assert_eq!(times(&store, "m a"), moved);
        // The next round merges the corrected chunks.
        assert_eq!(store.compact().unwrap(), 2);
        assert_eq!(times(&store, "m a"), moved);
    }

    #[test]
    fn the_boot_is_remembered_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Store::open(&path, Metrics::new("t")).unwrap();
        store.append(&batch("m a", [1])).unwrap();
        store.flush().unwrap();
        let boot = store.boot_seq;
        drop(store);
        // The agent restarts within the same boot: this boot still starts
        // at the first chunk.
        let store = Store::open(&path, Metrics::new("t")).unwrap();
        assert_eq!(store.boot_seq, boot);
        assert!(store.next_seq > boot);
    }
}
