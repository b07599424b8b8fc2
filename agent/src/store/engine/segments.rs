//! The journal's segment files: each flush's journal chunks appended as
//! frames to a file in a directory beside the database, not to an SQLite
//! table. One `sync_data` per flush on an append-only file writes about the
//! data and one metadata block, where SQLite wrote about 1.8 times the data;
//! the SD card's wear follows the bytes written.
//!
//! A file is named `{key:016x}.tgj`: its first frame's key, or if larger, one
//! past every key and name of the files before it (a file begun by a
//! rewrite), so the names sort in the order the files were written, and a
//! later frame of a key replaces an earlier one when they are read back in
//! that order. A frame:
//!
//! ```text
//! u32 LE len | u32 LE crc | i64 LE key | i64 LE ts_min | i64 LE ts_max | u32 LE count | payload (len bytes)
//! ```
//!
//! `crc` is the CRC-32 of the 28 bytes from `key` through `count`, then the
//! payload. The length and CRC let a write torn by a crash be found and cut
//! at open.
//!
//! Files are reused: one whose keys are all sealed goes to a small pool
//! (`{key:016x}.tgr`) instead of being unlinked, and a new file is one
//! taken from the pool and renamed, its old bytes overwritten in place.
//! On ext4, an append that grows a file makes every `fdatasync` commit the
//! inode (and block bitmaps) through the filesystem's journal as well:
//! 6 KB appended and synced 400 times wrote 5.8 times the data to the
//! device, the same into a file already that long 1.7 times (measured on
//! a loop device; 42 KB a sync: 1.6 and 1.1 times). Such a file (format 2)
//! begins with a header,
//!
//! ```text
//! "TGJ\x02" | u32 LE flags (1: reused) | i64 LE previous file | u64 LE its length
//! ```
//!
//! and its frames' CRCs start from the CRC of its own name's key, so the
//! frames of a former life, left behind the last one written, do not
//! check. The header names the file written before it and how far: a file
//! whose frames stop short of that is damaged; past it lie old bytes. Files
//! of format 1 (no header, plain CRCs) are still read.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::store::codec::{crc32_update, Checksum};
use crate::store::StoreError;

/// A segment file takes no appends once it has reached this size, so sealed
/// data is unlinked a file at a time, soon after it is sealed.
pub const SEGMENT_BYTES: u64 = 4 << 20;
/// A longer frame is taken for damage: no flush comes near it.
const MAX_FRAME: u32 = 64 << 20;
/// Bytes of a frame's header.
const HEADER: usize = 36;
/// A format 2 file's first bytes.
const MAGIC: [u8; 4] = *b"TGJ\x02";
/// Bytes of a format 2 file's header.
const FILE_HEADER: usize = 24;
/// Its flag for a file reused from the pool.
const REUSED: u32 = 1;
/// The page size writes are counted in (the kernel's, and SD cards' at least).
const PAGE: usize = 4096;
/// An append of at least this many bytes ends with a padding frame up to
/// the next page boundary: the next append then starts a page of its own
/// instead of writing the last one again. Below it the next append
/// rewrites the page either way, and padding would only take room.
const PAD_FROM: usize = PAGE;
/// A padding frame's key: every watermark seals it (`i64::MIN`), so no
/// reader indexes it (nor did builds before it).
const PAD_KEY: i64 = i64::MIN;
/// What a padding frame holds (a slice of it: no allocation a flush).
static ZEROS: [u8; PAGE] = [0; PAGE];
/// Sealed files kept for reuse, at most: a seal frees several at once
/// (at 10k points/s, ~6 files of 4 MiB every 10 minutes).
const POOL_FILES: usize = 8;

/// A journal chunk to append.
#[derive(Clone, Copy, Debug)]
pub struct Frame<D> {
    /// The chunk's key.
    pub key: i64,
    /// Earliest timestamp of its points.
    pub ts_min: i64,
    /// Latest timestamp of its points.
    pub ts_max: i64,
    /// Its number of points.
    pub count: u32,
    /// The encoded chunk (borrowed or owned).
    pub data: D,
}

/// Where one frame lies and what it holds (the in-memory index entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef {
    /// The key its file is named by.
    pub segment: i64,
    /// Offset of its payload in that file.
    pub offset: u64,
    /// Length of its payload.
    pub len: u32,
    /// Earliest timestamp of its points.
    pub ts_min: i64,
    /// Latest timestamp of its points.
    pub ts_max: i64,
    /// Its number of points.
    pub count: u32,
    /// How many sequence numbers back the first frame of its group lies
    /// (0: it begins one, or it is self-contained): a frame coded against
    /// the frames before it (see `codec::context_back`) decodes only after
    /// them, so readers and the seal look here rather than at the payload.
    pub back: u32,
}

/// The group distance a payload names (0 when it is self-contained).
fn back_of(payload: &[u8]) -> u32 {
    crate::store::codec::context_back(payload).map_or(0, |b| u32::try_from(b).unwrap_or(u32::MAX))
}

/// A frame found damaged at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// Offset of the frame's header.
    pub offset: u64,
    /// What is wrong with it.
    pub what: &'static str,
    /// Whether the file was cut there (the tail of the last file: a write
    /// torn by a crash) rather than the rest of the file skipped.
    pub cut: bool,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let then = if self.cut {
            "cut there (a write torn by a stop)"
        } else {
            "the rest of the file skipped"
        };
        write!(
            f,
            "{}: frame at offset {}: {}; {then}",
            self.path.display(),
            self.offset,
            self.what
        )
    }
}

/// What can go wrong with the segment files.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// A file or the directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A frame read back does not check.
    #[error("{path}: journal frame at offset {offset} is corrupt: {what}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Offset of the frame's header.
        offset: u64,
        /// What is wrong with it.
        what: &'static str,
    },
}

impl From<SegmentError> for StoreError {
    fn from(e: SegmentError) -> Self {
        match e {
            SegmentError::Io { path, source } => StoreError::Io { path, source },
            e @ SegmentError::Corrupt { .. } => StoreError::Corrupt(e.to_string()),
        }
    }
}

/// One segment file, open.
struct Seg {
    file: File,
    /// The end of its frames: where the next append goes.
    len: u64,
    /// Its size on disk (a reused file's old bytes past `len` included).
    size: u64,
    /// The CRC its frames' CRCs start from (0 in format 1).
    salt: u32,
    /// A reader's copy of the file as it scanned it: beside a running
    /// writer, a file may be sealed and reused between the scan and a read.
    held: Option<Vec<u8>>,
    /// Its highest key, stale frames (rewritten since) included: the file may
    /// go once the seal has passed it, and not before, or a stale frame would
    /// come back at the next open.
    max_key: i64,
}

/// Which journal keys are sealed: every key up to `through`, except those
/// `kept` (chunks a sink was part-way through when a later run was sealed:
/// they wait for a seal of their own, see `plan_runs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sealed {
    /// The sealing watermark, as a key.
    pub through: i64,
    /// Keys at or below `through` not sealed yet.
    pub kept: std::collections::BTreeSet<i64>,
}

impl Sealed {
    /// Nothing sealed.
    pub fn none() -> Sealed {
        Sealed {
            through: i64::MIN,
            kept: Default::default(),
        }
    }

    /// Whether the frame of `key` is sealed.
    pub fn contains(&self, key: i64) -> bool {
        key <= self.through && !self.kept.contains(&key)
    }
}

/// The journal's segment files and the index of their frames by key.
pub struct Segments {
    dir: PathBuf,
    segs: BTreeMap<i64, Seg>,
    index: BTreeMap<i64, FrameRef>,
    /// The file appends go to; `None` until the first append after open,
    /// which starts a new file: files from before are never written again,
    /// so no append lands behind a tail cut at open, and an append after
    /// open begins the way one into an empty directory does.
    active: Option<i64>,
    writable: bool,
    /// A file was created and the directory not yet synced since.
    dir_unsynced: bool,
    rotate_bytes: u64,
    /// Sealed files kept for reuse, and their sizes.
    pool: Vec<(PathBuf, u64)>,
}

impl Segments {
    /// Opens the segments in `dir` (created if missing) for writing. Frames
    /// `sealed` are left out, and files that hold no other frames are
    /// unlinked. A frame that does not check at the
    /// end of the last file is a write torn by a crash: the file is cut
    /// before it. Elsewhere, the rest of that file is skipped and the file
    /// kept. Both are returned for the caller to log.
    pub fn open(dir: &Path, sealed: &Sealed) -> Result<(Segments, Vec<Damage>), SegmentError> {
        match fs::create_dir(dir) {
            // So the files made in it survive a power loss too.
            Ok(()) => {
                let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
                let parent = parent.unwrap_or(Path::new("."));
                sync_dir(parent).map_err(|e| io_err(parent, e))?;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(dir, e)),
        }
        Self::load(dir, sealed, true)
    }

    /// Opens the segments in `dir` for reading beside a running writer:
    /// nothing is cut or unlinked; a frame that does not check at the end of
    /// the last file is the end (the writer may be writing it), and a file
    /// unlinked before it is opened is skipped (it was sealed). Appends fail.
    /// The files are held in memory as read until [`Segments::forget`]
    /// drops what is sealed (the journal between two seals: ~25 MB at 10k
    /// points/s): the writer may seal a file and reuse it under the reader.
    pub fn open_read_only(dir: &Path, sealed: &Sealed) -> Result<Segments, SegmentError> {
        Ok(Self::load(dir, sealed, false)?.0)
    }

    fn load(
        dir: &Path,
        sealed: &Sealed,
        writable: bool,
    ) -> Result<(Segments, Vec<Damage>), SegmentError> {
        let mut ids = Vec::new();
        let mut pool = Vec::new();
        match fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|e| io_err(dir, e))?;
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    ids.extend(parse_name(&name, ".tgj"));
                    if writable && parse_name(&name, ".tgr").is_some() {
                        let size = entry.metadata().map_or(0, |m| m.len());
                        pool.push((entry.path(), size));
                    }
                }
            }
            Err(e) if !writable && e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(dir, e)),
        }
        ids.sort_unstable();
        let mut s = Segments {
            dir: dir.to_path_buf(),
            segs: BTreeMap::new(),
            index: BTreeMap::new(),
            active: None,
            writable,
            dir_unsynced: false,
            rotate_bytes: SEGMENT_BYTES,
            pool,
        };
        // Each file's frames first; whether one stopped short is known once
        // the file written after it has told how far it went.
        struct Scanned {
            id: i64,
            end: u64,
            what: Option<&'static str>,
            reused: bool,
        }
        let mut scanned = Vec::new();
        let mut lengths = BTreeMap::new();
        let mut buf = Vec::new();
        for &id in &ids {
            let path = s.path(id);
            let mut file = match OpenOptions::new().read(true).write(writable).open(&path) {
                Ok(file) => file,
                Err(e) if !writable && e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path, e)),
            };
            buf.clear();
            file.read_to_end(&mut buf).map_err(|e| io_err(&path, e))?;
            let (mut at, mut salt, mut reused) = (0, 0, false);
            if let Some(head) = buf.first_chunk::<FILE_HEADER>().filter(|h| h[..4] == MAGIC) {
                let flags = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
                let prev = i64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
                let prev_len = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
                lengths.insert(prev, prev_len);
                (at, salt, reused) = (FILE_HEADER, salt_of(id), flags & REUSED != 0);
            }
            let mut max_key = i64::MIN;
            let what = loop {
                let Some(rest) = buf.get(at..).filter(|r| !r.is_empty()) else {
                    break None;
                };
                let (key, r) = match check(rest, id, at as u64, salt) {
                    Ok(frame) => frame,
                    Err(what) => break Some(what),
                };
                if !sealed.contains(key) {
                    s.index.insert(key, r);
                }
                max_key = max_key.max(key);
                at += HEADER + r.len as usize;
            };
            scanned.push(Scanned {
                id,
                end: at as u64,
                what,
                reused,
            });
            let size = buf.len() as u64;
            let held = (!writable).then(|| std::mem::take(&mut buf));
            s.segs.insert(
                id,
                Seg {
                    file,
                    len: at as u64,
                    size,
                    salt,
                    held,
                    max_key,
                },
            );
        }
        let mut damage = Vec::new();
        let last = scanned.last().map(|f| f.id);
        for f in scanned {
            let Some(what) = f.what else { continue };
            let written = lengths.get(&f.id).copied();
            let short = match written {
                // The next file says how far this one went: past that, old bytes.
                Some(len) => f.end < len,
                // A reused file's frames end where its old bytes begin.
                None => !f.reused,
            };
            if !short {
                continue;
            }
            let cut = last == Some(f.id) && written.is_none();
            let path = s.path(f.id);
            let seg = s.segs.get_mut(&f.id).expect("scanned");
            if cut && writable {
                seg.file
                    .set_len(f.end)
                    .and_then(|()| seg.file.sync_all())
                    .map_err(|e| io_err(&path, e))?;
                seg.size = f.end;
            } else if !cut {
                // What lay past the damage is unknown: the file goes
                // once the seal has passed its name at least.
                seg.max_key = seg.max_key.max(f.id);
            }
            if writable {
                damage.push(Damage {
                    path,
                    offset: f.end,
                    what,
                    cut,
                });
            }
        }
        s.unlink_sealed(sealed.through)?;
        Ok((s, damage))
    }

    /// Appends `frames` in one write and makes them durable with one
    /// `sync_data` (and a sync of the directory when a file was created, so
    /// its name survives a power loss). A key already indexed is a rewrite:
    /// its new frame replaces the old one. On an error the file is cut back
    /// (best effort) and the index is unchanged, so the whole append can be
    /// tried again.
    pub fn append<D: AsRef<[u8]>>(&mut self, frames: &[Frame<D>]) -> Result<(), SegmentError> {
        if !self.writable {
            return Err(io_err(
                &self.dir,
                io::Error::new(ErrorKind::PermissionDenied, "journal opened read-only"),
            ));
        }
        let Some(first) = frames.first() else {
            return Ok(());
        };
        let id = match self
            .active
            .filter(|id| self.segs[id].len < self.rotate_bytes)
        {
            Some(id) => id,
            None => self.create(first.key)?,
        };
        let salt = self.segs[&id].salt;
        let mut buf =
            Vec::with_capacity(frames.iter().map(|f| HEADER + f.data.as_ref().len()).sum());
        for f in frames {
            if f.data.as_ref().len() > MAX_FRAME as usize {
                return Err(io_err(
                    &self.dir,
                    io::Error::new(ErrorKind::InvalidInput, "journal frame over 64 MiB"),
                ));
            }
            put_frame(&mut buf, salt, f);
        }
        let seg = self.segs.get_mut(&id).expect("the active file is open");
        let start = seg.len;
        let gap = (PAGE - (start as usize + buf.len()) % PAGE) % PAGE;
        if buf.len() >= PAD_FROM && gap >= HEADER {
            put_frame(
                &mut buf,
                salt,
                &Frame {
                    key: PAD_KEY,
                    ts_min: 0,
                    ts_max: 0,
                    count: 0,
                    data: &ZEROS[..gap - HEADER],
                },
            );
        }
        let mut done = seg
            .file
            .write_all_at(&buf, start)
            .and_then(|()| seg.file.sync_data());
        if done.is_ok() && self.dir_unsynced {
            done = sync_dir(&self.dir);
            self.dir_unsynced = done.is_err();
        }
        if let Err(e) = done {
            let _ = seg.file.set_len(start);
            // Linux may mark pages that failed to write clean: a retry into
            // this file could sync without them, so it goes to a new file.
            self.active = None;
            return Err(io_err(&self.path(id), e));
        }
        seg.len += buf.len() as u64;
        seg.size = seg.size.max(seg.len);
        let mut offset = start;
        for f in frames {
            offset += HEADER as u64;
            let (len, ts_min, ts_max, count) =
                (f.data.as_ref().len() as u32, f.ts_min, f.ts_max, f.count);
            let r = FrameRef {
                segment: id,
                offset,
                len,
                ts_min,
                ts_max,
                count,
                back: back_of(f.data.as_ref()),
            };
            self.index.insert(f.key, r);
            seg.max_key = seg.max_key.max(f.key);
            offset += f.data.as_ref().len() as u64;
        }
        Ok(())
    }

    /// Creates a file for appends beginning with `key` and makes it
    /// active: one from the pool, renamed, if there is one. Its header is
    /// made durable by the first append's sync.
    fn create(&mut self, key: i64) -> Result<i64, SegmentError> {
        let past = self.segs.iter().map(|(&id, s)| id.max(s.max_key)).max();
        let id = past.map_or(key, |p| key.max(p.saturating_add(1)));
        let path = self.path(id);
        // The file written before this one, and how far.
        let prev = self
            .active
            .or_else(|| self.segs.keys().next_back().copied())
            .map_or((i64::MIN, 0), |p| (p, self.segs[&p].len));
        let mut flags = 0;
        let mut size = 0;
        // A pool file that will not move is left for the next open to find.
        let reused = self
            .pool
            .pop()
            .filter(|(old, _)| fs::rename(old, &path).is_ok());
        let file = match reused {
            Some((_, old_size)) => {
                (flags, size) = (REUSED, old_size);
                OpenOptions::new().read(true).write(true).open(&path)
            }
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path),
        }
        .map_err(|e| io_err(&path, e))?;
        let mut head = [0u8; FILE_HEADER];
        head[..4].copy_from_slice(&MAGIC);
        head[4..8].copy_from_slice(&flags.to_le_bytes());
        head[8..16].copy_from_slice(&prev.0.to_le_bytes());
        head[16..24].copy_from_slice(&prev.1.to_le_bytes());
        file.write_all_at(&head, 0).map_err(|e| io_err(&path, e))?;
        self.segs.insert(
            id,
            Seg {
                file,
                len: FILE_HEADER as u64,
                size: size.max(FILE_HEADER as u64),
                salt: salt_of(id),
                held: None,
                max_key: i64::MIN,
            },
        );
        self.active = Some(id);
        self.dir_unsynced = true;
        Ok(id)
    }

    /// The payload of the frame with this key, its CRC checked again. (The
    /// store reads with [`Segments::read_into`], tests with this.)
    #[cfg(test)]
    pub fn read(&self, key: i64) -> Result<Vec<u8>, SegmentError> {
        let mut buf = Vec::new();
        self.read_into(key, &mut buf, Checksum::Verify)?;
        Ok(buf)
    }

    /// The payload of the frame with this key into `buf` (cleared first).
    /// With `Checksum::Skip`, one `pread` of the payload and no CRC: the
    /// scan at open checked every frame, and the store's payloads carry
    /// the codec's own checksum, which their decoders verify (a seal reads
    /// each frame once per pass: ~20 reads a frame at 10k series, each a
    /// CRC over the whole payload; not measured apart, `bench store`'s
    /// ingest was alike within noise either way).
    pub fn read_into(
        &self,
        key: i64,
        buf: &mut Vec<u8>,
        checksum: Checksum,
    ) -> Result<(), SegmentError> {
        buf.clear();
        let Some(r) = self.index.get(&key) else {
            return Err(io_err(
                &self.dir,
                io::Error::new(ErrorKind::NotFound, format!("no journal frame {key}")),
            ));
        };
        let seg = &self.segs[&r.segment];
        let at = r.offset - HEADER as u64;
        let mut head = [0; HEADER];
        if let Some(held) = &seg.held {
            // The scan found the frame whole in these very bytes.
            let frame = &held[at as usize..(r.offset + u64::from(r.len)) as usize];
            head.copy_from_slice(&frame[..HEADER]);
            buf.extend_from_slice(&frame[HEADER..]);
        } else {
            buf.resize(r.len as usize, 0);
            let read = seg.file.read_exact_at(buf, r.offset);
            read.map_err(|e| io_err(&self.path(r.segment), e))?;
            if checksum == Checksum::Verify {
                // The header apart, so the payload needs no move within `buf`.
                seg.file
                    .read_exact_at(&mut head, at)
                    .map_err(|e| io_err(&self.path(r.segment), e))?;
            }
        }
        if checksum == Checksum::Skip {
            return Ok(());
        }
        let (crc, found, on_disk) = decode(&head, r.segment, r.offset);
        let what = if found != key || on_disk.len != r.len {
            "its header does not match the index"
        } else if crc32_update(crc32_update(seg.salt, &head[8..]), buf) != crc {
            "CRC mismatch"
        } else {
            return Ok(());
        };
        buf.clear();
        Err(SegmentError::Corrupt {
            path: self.path(r.segment),
            offset: at,
            what,
        })
    }

    /// The index: every frame not sealed, by key.
    pub fn frames(&self) -> &BTreeMap<i64, FrameRef> {
        &self.index
    }

    /// Lets go of the frames `sealed` now (call once the seal is durable):
    /// unlinks every file whose keys are all sealed, the active one included
    /// (the next append starts a new file). An unlink lost to a power loss
    /// is done again at the next open.
    pub fn seal(&mut self, sealed: &Sealed) -> Result<(), SegmentError> {
        self.forget(sealed);
        self.unlink_sealed(sealed.through)
    }

    /// Unlinks (if writable) and drops the files whose keys are all at or
    /// below `through` and that hold no indexed frame (a kept one).
    fn unlink_sealed(&mut self, through: i64) -> Result<(), SegmentError> {
        let live: std::collections::BTreeSet<i64> =
            self.index.values().map(|r| r.segment).collect();
        let gone: Vec<i64> = self
            .segs
            .iter()
            .filter(|(id, s)| s.max_key <= through && !live.contains(id))
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            if self.writable {
                let path = self.path(id);
                let size = self.segs[&id].size;
                let kept = self.pool.len() < POOL_FILES && {
                    let to = self.dir.join(format!("{id:016x}.tgr"));
                    let renamed = fs::rename(&path, &to).is_ok();
                    if renamed {
                        self.pool.push((to, size));
                    }
                    renamed
                };
                if !kept {
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(&path, e)),
                    }
                }
            }
            self.segs.remove(&id);
            if self.active == Some(id) {
                self.active = None;
            }
        }
        Ok(())
    }

    /// Unlinks the files kept for reuse: the store is out of space, and
    /// they go before any data does.
    pub fn empty_pool(&mut self) -> Result<(), SegmentError> {
        while let Some((path, _)) = self.pool.pop() {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, e)),
            }
        }
        Ok(())
    }

    /// Drops the frames `sealed` from the index, touching no file (for a
    /// reader that learns the watermark after opening).
    pub fn forget(&mut self, sealed: &Sealed) {
        let Some(next) = sealed.through.checked_add(1) else {
            self.index.clear();
            return;
        };
        let rest = self.index.split_off(&next);
        let below = std::mem::replace(&mut self.index, rest);
        for key in &sealed.kept {
            if let Some(r) = below.get(key) {
                self.index.insert(*key, *r);
            }
        }
        if !self.writable {
            // A reader lets go of the copies it no longer reads from.
            let live: std::collections::BTreeSet<i64> =
                self.index.values().map(|r| r.segment).collect();
            self.segs.retain(|id, _| live.contains(id));
        }
    }

    /// Drops frames from the index that can no longer be read (their group
    /// lost a frame before them); their files go once the seal passes them.
    pub fn drop_frames(&mut self, keys: &[i64]) {
        for key in keys {
            self.index.remove(key);
        }
    }

    /// Number of frames indexed (not sealed); for tests, as the store uses [`Segments::frames`].
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no frame is indexed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of the segment files, for the store's disk accounting (the
    /// pool's included).
    pub fn bytes(&self) -> u64 {
        let pool: u64 = self.pool.iter().map(|p| p.1).sum();
        pool + self.segs.values().map(|s| s.size).sum::<u64>()
    }

    fn path(&self, id: i64) -> PathBuf {
        self.dir.join(format!("{id:016x}.tgj"))
    }

    #[cfg(test)]
    pub(super) fn set_rotate_bytes(&mut self, n: u64) {
        self.rotate_bytes = n;
    }
}

/// A frame header's CRC, key and index entry (as if at `segment`, `offset`;
/// `back` 0: [`check`] reads it from the payload).
fn decode(b: &[u8; HEADER], segment: i64, offset: u64) -> (u32, i64, FrameRef) {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let i64_at = |i: usize| i64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let (len, ts_min, ts_max, count) = (u32_at(0), i64_at(16), i64_at(24), u32_at(32));
    (
        u32_at(4),
        i64_at(8),
        FrameRef {
            segment,
            offset,
            len,
            ts_min,
            ts_max,
            count,
            back: 0,
        },
    )
}

/// Appends frame `f` to `buf`, its CRC started from `salt`.
fn put_frame<D: AsRef<[u8]>>(buf: &mut Vec<u8>, salt: u32, f: &Frame<D>) {
    let data = f.data.as_ref();
    let start = buf.len();
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&f.key.to_le_bytes());
    buf.extend_from_slice(&f.ts_min.to_le_bytes());
    buf.extend_from_slice(&f.ts_max.to_le_bytes());
    buf.extend_from_slice(&f.count.to_le_bytes());
    buf.extend_from_slice(data);
    let crc = crc32_update(salt, &buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The key and index entry of the frame at the start of `b`, at `offset` in
/// file `segment`, or what is wrong with it.
fn check(b: &[u8], segment: i64, offset: u64, salt: u32) -> Result<(i64, FrameRef), &'static str> {
    let Some(head) = b.first_chunk::<HEADER>() else {
        return Err("short header");
    };
    let (crc, key, r) = decode(head, segment, offset + HEADER as u64);
    if r.len > MAX_FRAME {
        return Err("length over 64 MiB");
    }
    match b.get(8..HEADER + r.len as usize) {
        None => Err("short frame"),
        Some(body) if crc32_update(salt, body) != crc => Err("CRC mismatch"),
        Some(body) => Ok((
            key,
            FrameRef {
                back: back_of(&body[HEADER - 8..]),
                ..r
            },
        )),
    }
}

/// The key a file's name gives, if it ends in `suffix` (`.tgj`: a
/// segment file; `.tgr`: one kept for reuse).
fn parse_name(name: &str, suffix: &str) -> Option<i64> {
    let hex = name.strip_suffix(suffix).filter(|h| h.len() == 16)?;
    u64::from_str_radix(hex, 16).ok().map(|k| k as i64)
}

/// Where the CRCs of the frames of format 2 file `id` start.
fn salt_of(id: i64) -> u32 {
    crc32_update(0, &id.to_le_bytes())
}

fn io_err(path: &Path, source: io::Error) -> SegmentError {
    SegmentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sealed through `key`, nothing kept.
    fn upto(key: i64) -> Sealed {
        Sealed {
            through: key,
            kept: Default::default(),
        }
    }

    fn payload(key: i64, version: u8) -> Vec<u8> {
        (0..40 + key as usize)
            .map(|i| (i as u8).wrapping_mul(31) ^ version ^ key as u8)
            .collect()
    }

    fn frame(key: i64, data: &[u8]) -> Frame<&[u8]> {
        Frame {
            key,
            ts_min: key * 10,
            ts_max: key * 10 + 9,
            count: data.len() as u32,
            data,
        }
    }

    /// Appends one flush of version `v` of `keys`.
    fn append(s: &mut Segments, keys: &[i64], v: u8) {
        let data: Vec<Vec<u8>> = keys.iter().map(|&k| payload(k, v)).collect();
        let frames: Vec<Frame<&[u8]>> = keys.iter().zip(&data).map(|(&k, d)| frame(k, d)).collect();
        s.append(&frames).unwrap();
    }

    /// The segment files' keys and sizes, in name order.
    fn files(dir: &Path) -> Vec<(i64, u64)> {
        named(dir, ".tgj")
    }

    /// The keys and sizes of the files named with `suffix`, in name order.
    fn named(dir: &Path, suffix: &str) -> Vec<(i64, u64)> {
        let mut out: Vec<(i64, u64)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter_map(|e| {
                let key = parse_name(&e.file_name().to_string_lossy(), suffix)?;
                Some((key, e.metadata().unwrap().len()))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Bytes of every file in `dir`, the pool's included.
    fn disk(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    fn keys(s: &Segments) -> Vec<i64> {
        s.frames().keys().copied().collect()
    }

    fn add_bytes(path: &Path, bytes: &[u8]) {
        let mut all = fs::read(path).unwrap();
        all.extend_from_slice(bytes);
        fs::write(path, all).unwrap();
    }

    fn flip(path: &Path, at: u64) {
        let mut all = fs::read(path).unwrap();
        all[at as usize] ^= 0x40;
        fs::write(path, all).unwrap();
    }

    #[test]
    fn appends_read_back_after_reopen_and_rewrites_win() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("j.tgj");
        let (mut s, damage) = Segments::open(&dir, &upto(0)).unwrap();
        assert!(damage.is_empty() && s.frames().is_empty());
        s.set_rotate_bytes(300);
        append(&mut s, &[1, 2, 3], 0);
        append(&mut s, &[4], 0);
        append(&mut s, &[5, 6], 0);
        append(&mut s, &[7, 7], 0); // the later frame of a flush wins too
        append(&mut s, &[], 0);
        // Rewrites: `2` and `6` in a new file, which would sort before 6's
        // file if it were named by its first key.
        append(&mut s, &[2, 6], 1);
        append(&mut s, &[8], 0);
        let expect = |k: i64| payload(k, u8::from(k == 2 || k == 6));
        let before = s.frames().clone();
        assert_eq!(s.read(7).unwrap(), payload(7, 0));
        assert_eq!(
            s.frames()[&3],
            FrameRef {
                segment: 1,
                offset: (FILE_HEADER + 2 * HEADER + 41 + 42 + HEADER) as u64,
                len: 43,
                ts_min: 30,
                ts_max: 39,
                count: 43,
                back: 0,
            }
        );
        let names: Vec<i64> = files(&dir).iter().map(|f| f.0).collect();
        assert_eq!(names, [1, 5, 8]);
        drop(s);
        let (s, damage) = Segments::open(&dir, &upto(0)).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(keys(&s), (1..=8).collect::<Vec<_>>());
        assert_eq!(s.frames(), &before);
        let mut buf = vec![9; 3];
        for k in 1..=8 {
            s.read_into(k, &mut buf, Checksum::Verify).unwrap();
            assert_eq!(buf, expect(k), "key {k}");
        }
        assert!(s.read(9).is_err());
        assert_eq!(s.bytes(), disk(&dir));
    }

    #[test]
    fn a_large_append_ends_on_a_page_and_its_padding_reads_as_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("j.tgj");
        let (mut s, _) = Segments::open(&dir, &upto(0)).unwrap();
        let big: Vec<Vec<u8>> = (0..3).map(|k| vec![k as u8 + 1; 5000 + 700 * k]).collect();
        append(&mut s, &[1], 0); // small: no padding
        assert_eq!(files(&dir)[0].1, (FILE_HEADER + HEADER + 41) as u64);
        for (k, data) in big.iter().enumerate() {
            s.append(&[frame(2 + k as i64, data)]).unwrap();
            let len = files(&dir)[0].1;
            assert_eq!(len % PAGE as u64, 0, "append {k} ends at {len}");
        }
        append(&mut s, &[5], 0);
        let before = s.frames().clone();
        drop(s);
        // The padding is neither a frame nor damage, and an append after
        // it reads back.
        let (s, damage) = Segments::open(&dir, &upto(0)).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(keys(&s), [1, 2, 3, 4, 5]);
        assert_eq!(s.frames(), &before);
        for (k, data) in big.iter().enumerate() {
            assert_eq!(&s.read(2 + k as i64).unwrap(), data);
        }
        assert_eq!(s.read(5).unwrap(), payload(5, 0));
    }

    #[test]
    fn a_torn_tail_is_cut_at_open() {
        let kinds = ["short frame", "short header", "CRC mismatch"];
        for (i, what) in kinds.into_iter().enumerate() {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let path = dir.join(format!("{:016x}.tgj", 1));
            let (mut s, _) = Segments::open(dir, &upto(0)).unwrap();
            append(&mut s, &[1], 0);
            let mut torn = fs::read(&path).unwrap().split_off(FILE_HEADER); // one whole frame
            match i {
                0 => torn.truncate(HEADER + 4),
                1 => torn.truncate(20),
                _ => *torn.last_mut().unwrap() ^= 1,
            }
            append(&mut s, &[2, 3], 0);
            drop(s);
            let good = fs::metadata(&path).unwrap().len();
            add_bytes(&path, &torn);
            let (mut s, damage) = Segments::open(dir, &upto(0)).unwrap();
            let cut = Damage {
                path: path.clone(),
                offset: good,
                what,
                cut: true,
            };
            assert_eq!(damage, [cut]);
            assert_eq!(fs::metadata(&path).unwrap().len(), good, "{what}");
            assert_eq!(keys(&s), [1, 2, 3]);
            append(&mut s, &[4], 0);
            drop(s);
            let (s, damage) = Segments::open(dir, &upto(0)).unwrap();
            assert!(damage.is_empty(), "{what}: {damage:?}");
            for k in 1..=4 {
                assert_eq!(s.read(k).unwrap(), payload(k, 0), "{what}: key {k}");
            }
        }
    }

    #[test]
    fn damage_inside_is_reported_and_skipped() {
        let (tmp, mut s) = fresh();
        let dir = tmp.path();
        append(&mut s, &[1, 2, 3], 0);
        append(&mut s, &[4, 5], 0);
        append(&mut s, &[6], 0);
        let two = s.frames()[&2];
        drop(s);
        let first = dir.join(format!("{:016x}.tgj", 1));
        let size = fs::metadata(&first).unwrap().len();
        flip(&first, two.offset + 5);
        let (s, damage) = Segments::open(dir, &upto(0)).unwrap();
        let at = two.offset - HEADER as u64;
        assert_eq!(
            damage,
            [Damage {
                path: first.clone(),
                offset: at,
                what: "CRC mismatch",
                cut: false
            }]
        );
        assert_eq!(fs::metadata(&first).unwrap().len(), size);
        assert_eq!(keys(&s), [1, 4, 5, 6]);
        for k in [1, 4, 5, 6] {
            assert_eq!(s.read(k).unwrap(), payload(k, 0));
        }
        // Damaged after open: found when read.
        flip(&dir.join(format!("{:016x}.tgj", 4)), s.frames()[&5].offset);
        match s.read(5) {
            Err(SegmentError::Corrupt {
                offset,
                what: "CRC mismatch",
                ..
            }) => assert_eq!(offset, s.frames()[&5].offset - HEADER as u64),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.read(4).unwrap(), payload(4, 0));
        // The damaged file goes once its good frames and name are sealed.
        drop(s);
        let (_, damage) = Segments::open(dir, &upto(1)).unwrap();
        let paths: Vec<&Path> = damage.iter().map(|d| d.path.as_path()).collect();
        assert_eq!(
            paths,
            [first.as_path(), &dir.join(format!("{:016x}.tgj", 4))]
        );
        assert!(!first.exists());
    }

    #[test]
    fn seal_through_unlinks_files_wholly_sealed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let names = || files(dir).iter().map(|f| f.0).collect::<Vec<_>>();
        let (mut s, _) = Segments::open(dir, &upto(0)).unwrap();
        s.set_rotate_bytes(1);
        append(&mut s, &[1, 2], 0);
        append(&mut s, &[3], 0);
        append(&mut s, &[2], 1); // a rewrite alone in a file named 4
        append(&mut s, &[5], 0);
        assert_eq!(names(), [1, 3, 4, 5]);
        s.seal(&upto(2)).unwrap();
        // 4 holds no key past 2, though its name is.
        assert_eq!(names(), [3, 5]);
        assert_eq!(keys(&s), [3, 5]);
        assert_eq!(s.bytes(), disk(dir));
        drop(s);
        let (s, _) = Segments::open(dir, &upto(2)).unwrap();
        assert_eq!((keys(&s), names()), (vec![3, 5], vec![3, 5]));
        drop(s);
        let (mut s, _) = Segments::open(dir, &upto(3)).unwrap();
        s.set_rotate_bytes(1);
        assert_eq!((keys(&s), names()), (vec![5], vec![5]));
        append(&mut s, &[6], 0);
        append(&mut s, &[7], 0);
        // The active file, wholly sealed, goes too; appends go on in a new one.
        s.seal(&upto(7)).unwrap();
        assert!(names().is_empty() && s.frames().is_empty());
        assert_eq!(s.bytes(), disk(dir));
        append(&mut s, &[8], 0);
        assert_eq!(names(), [8]);
        assert_eq!(s.read(8).unwrap(), payload(8, 0));
        // A file holding a sealed rewrite stays while it holds later keys.
        append(&mut s, &[9], 0);
        append(&mut s, &[8, 10], 1);
        assert_eq!(names(), [8, 9, 10]);
        s.seal(&upto(8)).unwrap();
        assert_eq!(names(), [9, 10]);
        s.seal(&upto(9)).unwrap();
        assert_eq!(names(), [10]);
        drop(s);
        let (s, _) = Segments::open(dir, &upto(9)).unwrap();
        assert_eq!(keys(&s), [10]);
        assert_eq!(s.read(10).unwrap(), payload(10, 1));
    }

    #[test]
    fn a_kept_frame_outlives_the_watermark_until_it_is_sealed() {
        let (tmp, mut s) = fresh();
        let dir = tmp.path();
        for k in 1..=5 {
            append(&mut s, &[k], 0);
        }
        let sealed = Sealed {
            through: 4,
            kept: [2].into(),
        };
        s.seal(&sealed).unwrap();
        assert_eq!(keys(&s), [2, 5]);
        assert_eq!(files(dir).iter().map(|f| f.0).collect::<Vec<_>>(), [2, 5]);
        drop(s);
        let (mut s, _) = Segments::open(dir, &sealed).unwrap();
        assert_eq!(keys(&s), [2, 5]);
        assert_eq!(s.read(2).unwrap(), payload(2, 0));
        s.seal(&upto(4)).unwrap();
        assert_eq!(keys(&s), [5]);
        assert_eq!(files(dir).iter().map(|f| f.0).collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn a_reader_beside_the_writer_cuts_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("j");
        let none = Segments::open_read_only(&dir, &upto(0)).unwrap();
        assert!(none.frames().is_empty() && !dir.exists());
        let (mut w, _) = Segments::open(&dir, &upto(0)).unwrap();
        append(&mut w, &[1], 0);
        append(&mut w, &[2], 0);
        let path = dir.join(format!("{:016x}.tgj", 1));
        // The writer part way through its next append.
        add_bytes(&path, &[7; HEADER + 3]);
        let size = fs::metadata(&path).unwrap().len();
        let mut r = Segments::open_read_only(&dir, &upto(0)).unwrap();
        assert_eq!(keys(&r), [1, 2]);
        assert_eq!(r.read(2).unwrap(), payload(2, 0));
        assert_eq!(fs::metadata(&path).unwrap().len(), size);
        assert!(r.append(&[frame(3, b"x")]).is_err());
        r.forget(&upto(1));
        assert_eq!(keys(&r), [2]);
        let r = Segments::open_read_only(&dir, &upto(2)).unwrap();
        assert!(r.frames().is_empty());
        assert!(path.exists());
    }

    /// A fresh directory and a writer in it that starts a file every append.
    fn fresh() -> (tempfile::TempDir, Segments) {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, _) = Segments::open(tmp.path(), &upto(0)).unwrap();
        s.set_rotate_bytes(1);
        (tmp, s)
    }

    /// Overwrites `bytes` at `at` in `path`.
    fn write_at(path: &Path, at: u64, bytes: &[u8]) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, at).unwrap();
    }

    #[test]
    fn sealed_files_are_reused_and_their_old_frames_stay_dead() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let pool = || named(dir, ".tgr").iter().map(|f| f.0).collect::<Vec<_>>();
        let names = || files(dir).iter().map(|f| f.0).collect::<Vec<_>>();
        let (mut s, _) = Segments::open(dir, &upto(0)).unwrap();
        s.set_rotate_bytes(1);
        append(&mut s, &[1, 2], 0);
        append(&mut s, &[3, 4], 0);
        let old_size = files(dir)[0].1;
        s.seal(&upto(2)).unwrap();
        assert_eq!((names(), pool()), (vec![3], vec![1]));
        assert_eq!(s.bytes(), disk(dir));
        // Frame 5 overwrites the header and frame 1 and part of frame 2.
        append(&mut s, &[5], 0);
        assert_eq!((names(), pool()), (vec![3, 5], vec![]));
        assert_eq!(files(dir)[1].1, old_size, "reused in place, not cut");
        assert_eq!(s.read(5).unwrap(), payload(5, 0));
        drop(s);
        let (mut s, damage) = Segments::open(dir, &upto(2)).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(keys(&s), [3, 4, 5]);
        assert_eq!(s.read(5).unwrap(), payload(5, 0));
        // Old frames left whole behind the new ones do not check either.
        s.set_rotate_bytes(1);
        s.seal(&upto(5)).unwrap();
        assert_eq!((names(), pool()), (vec![], vec![3, 5]));
        append(&mut s, &[6], 0); // into 5's file
                                 // Into 3's, exactly over frame 3: frame 4 lies whole behind it.
        let d7 = [7u8; 43];
        s.append(&[frame(7, &d7)]).unwrap();
        assert_eq!((names(), pool()), (vec![6, 7], vec![]));
        let seven = s.frames()[&7];
        assert_eq!(seven.offset + 43, (FILE_HEADER + HEADER + 43) as u64);
        drop(s);
        let (s, damage) = Segments::open(dir, &upto(5)).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(keys(&s), [6, 7]);
        assert_eq!(s.read(7).unwrap(), d7);
        drop(s);
        // A write torn in a reused last file: its end is found, nothing said.
        let path7 = dir.join(format!("{:016x}.tgj", 7));
        write_at(&path7, seven.offset + u64::from(seven.len), &[0xAB; 50]);
        let (mut s, damage) = Segments::open(dir, &upto(5)).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(keys(&s), [6, 7]);
        s.set_rotate_bytes(1);
        append(&mut s, &[8], 0);
        drop(s);
        // Damage inside a reused file that is not the last: the next file's
        // header says how far it went.
        flip(&path7, seven.offset + 3);
        let (s, damage) = Segments::open(dir, &upto(5)).unwrap();
        assert_eq!(
            damage,
            [Damage {
                path: path7.clone(),
                offset: seven.offset - HEADER as u64,
                what: "CRC mismatch",
                cut: false
            }]
        );
        assert_eq!(keys(&s), [6, 8]);
        assert_eq!(s.read(8).unwrap(), payload(8, 0));
        // Out of space: the pool goes first.
        let mut s = s;
        s.seal(&upto(8)).unwrap();
        assert_eq!(pool(), [6, 7, 8]);
        s.empty_pool().unwrap();
        assert!(pool().is_empty() && names().is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn files_of_format_1_are_read_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // As the journal of 2026-12-07 wrote them: no file header, plain CRCs.
        let mut bytes = Vec::new();
        for key in [1, 2] {
            let data = payload(key, 0);
            let mut f = Vec::new();
            f.extend_from_slice(&(data.len() as u32).to_le_bytes());
            f.extend_from_slice(&[0; 4]);
            for v in [key, key * 10, key * 10 + 9] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend_from_slice(&(data.len() as u32).to_le_bytes());
            f.extend_from_slice(&data);
            let crc = crc32_update(0, &f[8..]);
            f[4..8].copy_from_slice(&crc.to_le_bytes());
            bytes.extend_from_slice(&f);
        }
        let path = dir.join(format!("{:016x}.tgj", 1));
        fs::write(&path, &bytes).unwrap();
        let (mut s, damage) = Segments::open(dir, &upto(0)).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(keys(&s), [1, 2]);
        assert_eq!(s.read(2).unwrap(), payload(2, 0));
        s.set_rotate_bytes(1);
        append(&mut s, &[3], 0);
        s.seal(&upto(2)).unwrap();
        assert_eq!(named(dir, ".tgr"), [(1, bytes.len() as u64)]);
        append(&mut s, &[4], 0); // into the old file
        assert!(named(dir, ".tgr").is_empty());
        drop(s);
        let (s, damage) = Segments::open(dir, &upto(2)).unwrap();
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(keys(&s), [3, 4]);
        assert_eq!(s.read(4).unwrap(), payload(4, 0));
    }

    #[test]
    fn a_reader_keeps_what_it_scanned_when_the_writer_reuses_the_file() {
        let (tmp, mut w) = fresh();
        let dir = tmp.path();
        append(&mut w, &[1], 0);
        append(&mut w, &[2], 0);
        let r = Segments::open_read_only(dir, &upto(0)).unwrap();
        // The writer seals 1 and reuses its file for 3, in place.
        w.seal(&upto(1)).unwrap();
        append(&mut w, &[3], 0);
        assert_eq!(files(dir).iter().map(|f| f.0).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(r.read(1).unwrap(), payload(1, 0));
        assert_eq!(r.read(2).unwrap(), payload(2, 0));
    }
}
