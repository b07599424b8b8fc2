//! The dead-letter table: input the sources rejected (raw bytes, source,
//! reason, arrival time), written with the next flush, the newest
//! `Limits::dead_letters` rows kept. Created with the first dead letter, so
//! a store that never saw bad input carries no trace of it.

use rusqlite::{params, Transaction};

use super::Store;
use crate::point::DeadLetter;
use crate::store::StoreError;

/// Dead letters held in memory while flushes fail, at most; older ones go.
const PENDING_MAX: usize = 10_000;

/// One row of the dead-letter table, as `query --dead-letters` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DeadLetterRow {
    /// Arrival time, ns since the Unix epoch.
    pub ts_ns: i64,
    /// The source's name.
    pub source: String,
    /// The reject's counter label.
    pub reason: String,
    /// The reject's message.
    pub detail: String,
    /// The bytes (at most 1 KiB of them).
    #[serde(skip)]
    pub raw: Vec<u8>,
    /// Their original length.
    pub len: u64,
}

impl Store {
    /// Queues rejected input for the next flush.
    pub fn add_dead_letters(&mut self, letters: Vec<DeadLetter>) {
        if self.limits.dead_letters == 0 {
            return;
        }
        self.pending_dead.extend(letters);
        if self.pending_dead.len() > PENDING_MAX {
            let over = self.pending_dead.len() - PENDING_MAX;
            self.pending_dead.drain(..over);
        }
    }

    /// The newest `limit` dead letters (of `source`, if given), newest first,
    /// and how many rows there are in all (of that source). A store written
    /// before the table existed has none.
    pub fn dead_letters(
        &self,
        source: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<DeadLetterRow>, u64), StoreError> {
        if !super::table_exists(&self.conn, "dead_letters")? {
            return Ok((Vec::new(), 0));
        }
        let total: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM dead_letters WHERE ?1 IS NULL OR source = ?1",
            [source],
            |r| r.get(0),
        )?;
        let mut stmt = self.conn.prepare(
            "SELECT ts, source, reason, detail, raw, len FROM dead_letters
             WHERE ?1 IS NULL OR source = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![source, limit.min(i64::MAX as usize) as i64], |r| {
            Ok(DeadLetterRow {
                ts_ns: r.get(0)?,
                source: r.get(1)?,
                reason: r.get(2)?,
                detail: r.get(3)?,
                raw: r.get(4)?,
                len: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok((rows.collect::<Result<_, _>>()?, total as u64))
    }
}

const DDL: &str = "
CREATE TABLE IF NOT EXISTS dead_letters (
    id      INTEGER PRIMARY KEY,
    ts      INTEGER NOT NULL,    -- arrival, ns since the epoch
    source  TEXT NOT NULL,
    reason  TEXT NOT NULL,
    detail  TEXT NOT NULL,
    raw     BLOB NOT NULL,       -- at most 1 KiB of the bytes
    len     INTEGER NOT NULL     -- their original length
)";

/// Appends `letters` and trims the table to the newest `keep` rows.
pub(super) fn write(
    tx: &Transaction<'_>,
    letters: &[DeadLetter],
    keep: u64,
) -> Result<(), StoreError> {
    if letters.is_empty() || keep == 0 {
        return Ok(());
    }
    tx.execute_batch(DDL)?;
    let mut ins = tx.prepare_cached(
        "INSERT INTO dead_letters (ts, source, reason, detail, raw, len)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for d in letters {
        ins.execute(params![
            d.ts_ns,
            &*d.source,
            d.reason,
            d.detail,
            d.raw,
            d.len as i64
        ])?;
    }
    // Ids only grow (INTEGER PRIMARY KEY, rows appended): everything below the
    // newest `keep` goes.
    tx.prepare_cached(
        "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?1",
    )?
    .execute([keep as i64])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Metrics;
    use crate::store::Limits;

    #[test]
    fn dead_letters_are_kept_bounded_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Store::open(&dir.path().join("s.db"), Metrics::new("t")).unwrap();
        st.set_limits(Limits {
            dead_letters: 5,
            ..Limits::default()
        });
        let src: std::sync::Arc<str> = "a".into();
        for i in 0..8 {
            let letters = vec![DeadLetter::new(
                src.clone(),
                "bad_crc",
                "CRC-16 mismatch".into(),
                &vec![i as u8; 2000],
                i,
            )];
            st.add_dead_letters(letters);
            st.flush().unwrap();
        }
        let (rows, total) = st.dead_letters(None, 3).unwrap();
        assert_eq!(total, 5);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].ts_ns, 7);
        assert_eq!(rows[0].raw.len(), DeadLetter::MAX_RAW);
        assert_eq!(rows[0].len, 2000);
        assert_eq!(st.dead_letters(Some("b"), 10).unwrap().1, 0);
    }
}
