//! What sinks need of the store beyond reading raw points in order: the head of
//! the chunk order (for live-first delivery), rollup windows of every series
//! (for sinks that send a rollup tier), and the ranges eviction degraded before
//! a sink had them (sent from the rollups instead, with a gap report).

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    decode_windows, min_opt, window_start, Agg, ChainReader, Store, StoreError, SERIES_MASK,
};
use crate::point::SeriesKey;
use crate::store::Cursor;

/// Raw points of one series that eviction removed before a sink had them.
#[derive(Clone, Debug, PartialEq)]
pub struct DegradedRange {
    /// Row id in the `degraded` table, for [`Store::degraded_sent`].
    pub id: i64,
    /// The series.
    pub series: SeriesKey,
    /// Oldest evicted timestamp.
    pub ts_min: i64,
    /// Newest evicted timestamp.
    pub ts_max: i64,
    /// Raw points the sink never received.
    pub points: u64,
    /// The windows (start, aggregate) that replace them; empty when the rollup
    /// itself was evicted too, so the points are lost for this sink.
    pub windows: Vec<(i64, Agg)>,
}

/// What [`Store::degraded_pending`] found for a sink.
#[derive(Debug, Default)]
pub struct DegradedPending {
    /// Ranges whose windows are final, oldest first.
    pub ranges: Vec<DegradedRange>,
    /// Ranges held back: a window of theirs still has raw points the sink
    /// has not had, which eviction could add to it. Sent once the sink's
    /// cursor is past them.
    pub held: usize,
}

/// Columns added after the first release, added in place to older files.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let has = |table: &str, column: &str| -> Result<bool, StoreError> {
        let n: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    };
    for (table, column, ddl) in [
        (
            "degraded",
            "chunk",
            "ALTER TABLE degraded ADD COLUMN chunk INTEGER",
        ),
        (
            "degraded",
            "sent",
            "ALTER TABLE degraded ADD COLUMN sent INTEGER NOT NULL DEFAULT 0",
        ),
        (
            "rollup_chunks",
            "chunk",
            "ALTER TABLE rollup_chunks ADD COLUMN chunk INTEGER",
        ),
    ] {
        if !has(table, column)? {
            conn.execute_batch(ddl)?;
        }
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS degraded_by_sink ON degraded (sink, sent);
         CREATE INDEX IF NOT EXISTS rollup_chunks_by_chunk ON rollup_chunks (chunk, tier);
         CREATE TABLE IF NOT EXISTS watermarks (
             sink TEXT PRIMARY KEY,
             ts   INTEGER NOT NULL   -- every window starting before ts was sent
         );",
    )?;
    Ok(())
}

impl Store {
    /// The position after the newest flushed point.
    pub fn head(&self) -> Result<Cursor, StoreError> {
        // The later of the journal's last chunk and the last valid sealed
        // one: sealed chunks usually sort before the journal, but a chunk
        // kept in the journal (a sink was part-way through it) sorts before
        // the runs sealed after it. Not a hidden chunk: a seal under way
        // keys them after its run's last journal chunk, and a head among
        // them would put the rest of the run's series, once sealed, after it.
        let sealed: Option<i64> = self
            .conn
            .query_row(
                concat!(
                    "SELECT id FROM chunks WHERE ",
                    valid!(),
                    " ORDER BY id DESC LIMIT 1"
                ),
                [],
                |r| r.get(0),
            )
            .optional()?;
        let journal = self.journal.frames().keys().next_back().copied();
        Ok(journal
            .max(sealed)
            .map(Cursor::after_chunk)
            .unwrap_or_default())
    }

    /// Registers a reader that is not a sink of its own (a sink's live stream):
    /// sealing keeps its range `[start, read)` intact like a sink's, but it
    /// is never persisted and never counted in degraded ranges.
    pub fn track(&mut self, reader: &str, start: Cursor) {
        self.sinks.insert(
            reader.to_string(),
            super::SinkPos {
                acked: start,
                read: start,
                dirty: false,
                ephemeral: true,
            },
        );
    }

    /// Forgets a reader registered with [`track`](Self::track).
    pub fn untrack(&mut self, reader: &str) {
        if self.sinks.get(reader).is_some_and(|p| p.ephemeral) {
            self.sinks.remove(reader);
        }
    }

    /// Up to `max` degraded ranges `sink` has not been sent yet, oldest first,
    /// each with its windows of the `tier` (seconds). A window shared with
    /// other ranges of the sink is merged with them.
    ///
    /// A range is returned only once its windows are final: no chunk the
    /// sink has still to be sent holds a point of the series before the end
    /// of its last window. Otherwise eviction could still take more of that
    /// window, and the window would have to go upstream twice, and a
    /// database that keeps either of two samples at one timestamp
    /// (VictoriaMetrics' deduplication) could keep the partial one. For the
    /// same reason a range handed out here is closed to eviction: the next
    /// chunk it degrades starts a new range.
    pub fn degraded_pending(
        &mut self,
        sink: &str,
        tier: i64,
        max: usize,
    ) -> Result<DegradedPending, StoreError> {
        let rows: Vec<(i64, u32, i64, i64, i64, Option<i64>)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT rowid, series, ts_min, ts_max, points, chunk FROM degraded
                 WHERE sink = ?1 AND sent = 0 ORDER BY rowid",
            )?;
            let rows = stmt.query_map(params![sink], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut found = DegradedPending::default();
        if rows.is_empty() {
            return Ok(found);
        }
        let unsent = self.unsent_from(sink)?;
        let width = tier * 1_000_000_000;
        for (id, sid, lo, hi, points, chunk) in rows {
            if found.ranges.len() == max {
                break;
            }
            let own = match chunk {
                Some(chunk) => self.chunk_windows(chunk, tier)?,
                None => None,
            };
            let windows = match own {
                None => Vec::new(),
                Some(own) => {
                    let (first, last) = (
                        own.first().map_or(lo, |w| w.0),
                        own.last().map_or(hi, |w| w.0),
                    );
                    let end = last.saturating_add(width);
                    let still_unsent = [sid, 0]
                        .iter()
                        .filter_map(|s| unsent.get(s))
                        .any(|from| *from < end);
                    if still_unsent {
                        found.held += 1;
                        continue;
                    }
                    // Everything this sink lost of the series in those windows.
                    let mut merged: BTreeMap<i64, Agg> = BTreeMap::new();
                    let mut stmt = self.conn.prepare_cached(
                        "SELECT r.data FROM degraded d JOIN rollup_chunks r
                         ON r.chunk = d.chunk AND r.tier = ?3
                         WHERE d.sink = ?1 AND d.series = ?2
                         AND d.ts_max >= ?4 AND d.ts_min < ?5 ORDER BY d.rowid",
                    )?;
                    let mut q = stmt.query(params![sink, sid, tier, first, end])?;
                    while let Some(row) = q.next()? {
                        let data: Vec<u8> = row.get(0)?;
                        for (start, agg) in decode_windows(&data)? {
                            if own.binary_search_by_key(&start, |w| w.0).is_ok() {
                                merged
                                    .entry(start)
                                    .and_modify(|a| a.merge(&agg))
                                    .or_insert(agg);
                            }
                        }
                    }
                    merged.into_iter().collect()
                }
            };
            if self
                .open_degraded
                .get(&sid)
                .is_some_and(|g| g.rows.iter().any(|r| r.1 == id))
            {
                self.open_degraded.remove(&sid);
            }
            found.ranges.push(DegradedRange {
                id,
                series: self.keys[sid as usize].clone(),
                ts_min: lo,
                ts_max: hi,
                points: points as u64,
                windows,
            });
        }
        Ok(found)
    }

    /// Per series, the oldest timestamp in the chunks `sink` has not
    /// acknowledged (series 0: the journal's chunks, which hold every
    /// series). Empty for a reader the store does not know.
    fn unsent_from(&self, sink: &str) -> Result<HashMap<u32, i64>, StoreError> {
        let Some(pos) = self.sinks.get(sink) else {
            return Ok(HashMap::new());
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT series, MIN(ts_min) FROM chunks WHERE id >= ?1 GROUP BY series",
        )?;
        let rows = stmt.query_map([pos.acked.key], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let mut from: HashMap<u32, i64> = rows.collect::<Result<_, _>>()?;
        if let Some(t) = self.journal_sums(pos.acked.key..).ts_min {
            from.insert(0, t);
        }
        Ok(from)
    }

    fn chunk_windows(&self, chunk: i64, tier: i64) -> Result<Option<Vec<(i64, Agg)>>, StoreError> {
        let data: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT data FROM rollup_chunks WHERE chunk = ?1 AND tier = ?2",
                params![chunk, tier],
                |r| r.get(0),
            )
            .optional()?;
        data.map(|d| decode_windows(&d)).transpose()
    }

    /// Marks degraded ranges as delivered to their sink (as rollups, or
    /// reported lost). Counted under `degraded_sent:<sink>` and `lost:<sink>`.
    pub fn degraded_sent(
        &mut self,
        sink: &str,
        replaced: &[i64],
        lost_points: u64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let mut n = 0i64;
        for id in replaced {
            n += tx
                .prepare_cached(
                    "UPDATE degraded SET sent = 1 WHERE rowid = ?1 AND sink = ?2 RETURNING points",
                )?
                .query_row(params![id, sink], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0);
        }
        super::bump(&tx, &format!("degraded_sent:{sink}"), n)?;
        if lost_points > 0 {
            super::bump(&tx, &format!("lost:{sink}"), lost_points as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Where `sink` (a rollup-tier sink) stands: every window starting before it was sent.
    pub fn watermark(&self, sink: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT ts FROM watermarks WHERE sink = ?1", [sink], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Records `sink`'s watermark; committed at once (rare: once per window).
    pub fn set_watermark(&mut self, sink: &str, ts: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO watermarks (sink, ts) VALUES (?1, ?2)
             ON CONFLICT (sink) DO UPDATE SET ts = excluded.ts",
            params![sink, ts],
        )?;
        Ok(())
    }

    /// The oldest point's timestamp in the store, raw or rolled up.
    pub fn oldest(&self) -> Result<Option<i64>, StoreError> {
        let stored: Option<i64> = self.conn.query_row(
            "SELECT MIN(t) FROM (SELECT MIN(ts_min) AS t FROM chunks
             UNION ALL SELECT MIN(start_min) FROM rollup_chunks)",
            [],
            |r| r.get(0),
        )?;
        Ok(min_opt(stored, self.journal_sums(..).ts_min))
    }

    /// Windows of `tier` (seconds) starting in `[from, to)`, for every series,
    /// from the raw points still stored and the windows kept for evicted
    /// ones (all merged, so a window is whole whatever eviction did).
    pub fn rollup_windows(
        &self,
        tier: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<(SeriesKey, i64, Agg)>, StoreError> {
        let width = tier * 1_000_000_000;
        let mut windows: BTreeMap<(u32, i64), Agg> = BTreeMap::new();
        let mut merge = |sid: u32, start: i64, agg: &Agg| {
            if start >= from && start < to {
                windows
                    .entry((sid, start))
                    .and_modify(|a| a.merge(agg))
                    .or_insert(*agg);
            }
        };
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT series, data FROM rollup_chunks WHERE tier = ?1
                 AND start_max >= ?2 AND start_min < ?3 ORDER BY id",
            )?;
            let mut rows = stmt.query(params![tier, from, to])?;
            while let Some(row) = rows.next()? {
                let sid: u32 = row.get(0)?;
                let data: Vec<u8> = row.get(1)?;
                for (start, agg) in decode_windows(&data)? {
                    merge(sid, start, &agg);
                }
            }
        }
        let sealed = concat!(
            "SELECT id, data FROM chunks WHERE ts_max >= ?1 AND ts_min < ?2 AND ",
            valid!(),
            " ORDER BY id"
        );
        self.each_chunk(
            sealed,
            params![from, to],
            ..,
            from..to,
            &mut ChainReader::default(),
            |id, s, t, v| {
                debug_assert!(
                    id & SERIES_MASK == 0 || s.iter().all(|&x| x as i64 == id & SERIES_MASK)
                );
                for i in 0..t.len() {
                    merge(s[i], window_start(t[i], width), &Agg::point(t[i], v[i]));
                }
                Ok(true)
            },
        )?;
        Ok(windows
            .into_iter()
            .map(|((sid, start), agg)| (self.keys[sid as usize].clone(), start, agg))
            .collect())
    }
}
