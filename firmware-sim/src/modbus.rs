//! A Modbus RTU slave (server) on the PTY: several units answering read
//! holding registers (3) and read input registers (4), written by hand
//! from the specification so the agent's `tokio-modbus` client is checked
//! against an independent implementation.
//!
//! Every unit has the same register layout, its values a function of the
//! unit's step (the number of requests it has received so far):
//!
//! | table   | address | type                     | ledger field | value at step `s`, unit `u`     |
//! |---------|---------|--------------------------|--------------|---------------------------------|
//! | holding | 0       | i16                      | `temp`       | `(37 s + 100 u) mod 2000 - 1000` |
//! | holding | 1–2     | u32, high word first     | `energy`     | `70000 + 65539 s + u`            |
//! | holding | 3–4     | i32, low word first      | `delta`      | `-100003 s - u`                  |
//! | input   | 0–1     | f32, high word first     | `power`      | `1.5 s + 0.25 + u` (as f32)      |
//! | input   | 2       | u16                      | `status`     | `s mod 65536`                    |
//!
//! Other addresses answer exception 2 (illegal data address), other function
//! codes exception 1. Requests for other units are ignored, as on a real bus.
//!
//! The ledger has one entry a request to a simulated unit, `sensor` = `u<unit>`:
//! `valid` with the `fields` (raw register values, before any scaling) of
//! the values wholly inside the answered range; or not valid, `line` saying
//! the fate: `crc` (answered with a corrupted CRC), `silence` (no answer),
//! `exception <code>`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::{LedgerEntry, Pty, SimStats};

/// What the slave simulates.
#[derive(Clone, Debug)]
pub struct ModbusSimConfig {
    /// Unit ids that answer.
    pub units: Vec<u8>,
    /// Stop after this many requests to simulated units (any fate).
    pub count: Option<u64>,
    /// Probability (0..1) that an answer goes out with a wrong CRC.
    pub crc_error_rate: f64,
    /// Probability (0..1) that a request gets no answer.
    pub silence_rate: f64,
    /// Seed of the fault choices.
    pub seed: u64,
}

/// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The holding registers 0..5 of `unit` at `step`.
fn holding(unit: u8, step: u64) -> [u16; 5] {
    let u = u64::from(unit);
    let temp = ((37 * step + 100 * u) % 2000) as i32 - 1000;
    let energy = (70_000 + 65_539 * step + u) as u32;
    let delta = (-100_003 * step as i64 - u as i64) as i32 as u32;
    [
        temp as i16 as u16,
        (energy >> 16) as u16,
        energy as u16,
        delta as u16,
        (delta >> 16) as u16,
    ]
}

/// The input registers 0..3 of `unit` at `step`.
fn input(unit: u8, step: u64) -> [u16; 3] {
    let power = (step as f32) * 1.5 + 0.25 + f32::from(unit);
    let bits = power.to_bits();
    [(bits >> 16) as u16, bits as u16, step as u16]
}

/// The named values of `unit` at `step` wholly inside `start..start+count`
/// of a table (function 3 or 4), as the ledger records them.
fn values(function: u8, unit: u8, step: u64, start: u16, count: u16) -> BTreeMap<String, f64> {
    let u = u64::from(unit);
    let all: Vec<(&str, u16, u16, f64)> = if function == 3 {
        vec![
            (
                "temp",
                0,
                1,
                f64::from(((37 * step + 100 * u) % 2000) as i32 - 1000),
            ),
            (
                "energy",
                1,
                2,
                f64::from((70_000 + 65_539 * step + u) as u32),
            ),
            (
                "delta",
                3,
                2,
                f64::from((-100_003 * step as i64 - u as i64) as i32),
            ),
        ]
    } else {
        vec![
            (
                "power",
                0,
                2,
                f64::from((step as f32) * 1.5 + 0.25 + f32::from(unit)),
            ),
            ("status", 2, 1, f64::from(step as u16)),
        ]
    };
    let end = u32::from(start) + u32::from(count);
    all.into_iter()
        .filter(|&(_, at, n, _)| at >= start && u32::from(at + n) <= end)
        .map(|(name, _, _, v)| (name.to_string(), v))
        .collect()
}

/// A response frame: `pdu` after the unit id, the CRC appended.
fn seal(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(pdu.len() + 3);
    f.push(unit);
    f.extend_from_slice(pdu);
    let crc = crc16(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

/// Why [`Slave::serve`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// `until` requests handled.
    Until,
    /// Asked to stop.
    Asked,
}

/// The slave's state: steps per unit, the fault dice, the ledger.
pub struct Slave {
    cfg: ModbusSimConfig,
    rng: fastrand::Rng,
    steps: BTreeMap<u8, u64>,
    handled: u64,
    buf: Vec<u8>,
    ledger: Option<BufWriter<File>>,
    stats: Arc<SimStats>,
}

impl Slave {
    /// A slave writing its ledger to `ledger`, if given.
    pub fn new(
        cfg: ModbusSimConfig,
        ledger: Option<BufWriter<File>>,
        stats: Arc<SimStats>,
    ) -> Slave {
        Slave {
            rng: fastrand::Rng::with_seed(cfg.seed),
            cfg,
            steps: BTreeMap::new(),
            handled: 0,
            buf: Vec::new(),
            ledger,
            stats,
        }
    }

    /// Requests to simulated units handled so far.
    pub fn handled(&self) -> u64 {
        self.handled
    }

    /// True once `count` requests are handled.
    pub fn finished(&self) -> bool {
        self.cfg.count.is_some_and(|c| self.handled >= c)
    }

    /// Answers one request frame (8 bytes, CRC checked by the caller)
    /// received at `now_ms`: the bytes to send, or `None` for silence.
    pub fn handle(&mut self, req: &[u8; 8], now_ms: i64) -> io::Result<Option<Vec<u8>>> {
        let unit = req[0];
        if !self.cfg.units.contains(&unit) {
            return Ok(None);
        }
        let function = req[1];
        let start = u16::from_be_bytes([req[2], req[3]]);
        let count = u16::from_be_bytes([req[4], req[5]]);
        let step = {
            let s = self.steps.entry(unit).or_insert(0);
            *s += 1;
            *s - 1
        };
        let seq = self.handled;
        self.handled += 1;
        let mut entry = LedgerEntry {
            seq,
            valid: false,
            sensor: Some(format!("u{unit}")),
            site: None,
            ts: Some(now_ms),
            fields: None,
            line: None,
        };
        let dice = self.rng.f64();
        let answer = if dice < self.cfg.silence_rate {
            entry.line = Some("silence".into());
            None
        } else {
            let regs: Option<Vec<u16>> = match function {
                3 => Some(holding(unit, step).to_vec()),
                4 => Some(input(unit, step).to_vec()),
                _ => None,
            };
            let pdu = match regs {
                None => {
                    entry.line = Some("exception 1".into());
                    vec![function | 0x80, 1]
                }
                Some(regs) => {
                    let end = usize::from(start) + usize::from(count);
                    if count == 0 || count > 125 || end > regs.len() {
                        entry.line = Some("exception 2".into());
                        vec![function | 0x80, 2]
                    } else {
                        let mut pdu = vec![function, (count * 2) as u8];
                        for r in &regs[usize::from(start)..end] {
                            pdu.extend_from_slice(&r.to_be_bytes());
                        }
                        entry.valid = true;
                        entry.fields = Some(values(function, unit, step, start, count));
                        pdu
                    }
                }
            };
            let mut frame = seal(unit, &pdu);
            if dice < self.cfg.silence_rate + self.cfg.crc_error_rate {
                *frame.last_mut().expect("a frame") ^= 0xA5;
                entry.valid = false;
                entry.fields = None;
                entry.line = Some("crc".into());
            }
            Some(frame)
        };
        let counter = if entry.valid {
            &self.stats.valid
        } else {
            &self.stats.garbage
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = &mut self.ledger {
            serde_json::to_writer(&mut *l, &entry)?;
            l.write_all(b"\n")?;
        }
        Ok(answer)
    }

    /// Reads requests from `pty` and answers them until `until` requests
    /// are handled in all (if given) or `stop` is set. Returns `Until` only
    /// once the master has sent its next request: it has then finished with
    /// the last answer (or timed out on it), so closing the port now cannot
    /// turn a fault the ledger records into a lost port.
    pub fn serve(
        &mut self,
        pty: &Pty,
        until: Option<u64>,
        stop: &AtomicBool,
    ) -> io::Result<Served> {
        let mut chunk = [0u8; 512];
        loop {
            if until.is_some_and(|u| self.handled >= u) && !self.buf.is_empty() {
                return Ok(Served::Until);
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(Served::Asked);
            }
            // SAFETY: the descriptor belongs to `pty`, which outlives this borrow.
            let fd = unsafe { BorrowedFd::borrow_raw(pty.raw_fd()) };
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            let hup = match poll(&mut fds, PollTimeout::from(50u16)) {
                Ok(_) => fds[0].revents().unwrap_or(PollFlags::empty()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if !hup.contains(PollFlags::POLLIN) {
                if hup.contains(PollFlags::POLLHUP) {
                    // Nobody has the port open: no requests to wait for.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                continue;
            }
            match nix::unistd::read(pty.raw_fd(), &mut chunk) {
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(Errno::EAGAIN | Errno::EINTR | Errno::EIO) => continue,
                Err(e) => return Err(e.into()),
            }
            // Every request this slave takes is 8 bytes; a window whose CRC
            // does not match is noise: slide by a byte to resynchronise.
            while self.buf.len() >= 8 && until.is_none_or(|u| self.handled < u) {
                let req: [u8; 8] = self.buf[..8].try_into().expect("8 bytes");
                if crc16(&req[..6]).to_le_bytes() != [req[6], req[7]] {
                    self.buf.remove(0);
                    continue;
                }
                self.buf.drain(..8);
                if let Some(answer) = self.handle(&req, crate::now_ms())? {
                    pty.write_all(&answer, stop).map_err(|e| e.error)?;
                }
            }
        }
    }

    /// Writes out the ledger.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.ledger {
            Some(l) => l.flush(),
            None => Ok(()),
        }
    }

    /// Drops requests received but not handled (the port went away).
    pub fn forget_input(&mut self) {
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(unit: u8, function: u8, start: u16, count: u16) -> [u8; 8] {
        let mut r = vec![unit, function];
        r.extend_from_slice(&start.to_be_bytes());
        r.extend_from_slice(&count.to_be_bytes());
        let crc = crc16(&r);
        r.extend_from_slice(&crc.to_le_bytes());
        r.try_into().unwrap()
    }

    fn slave(crc: f64, silence: f64) -> Slave {
        let cfg = ModbusSimConfig {
            units: vec![1, 2],
            count: None,
            crc_error_rate: crc,
            silence_rate: silence,
            seed: 7,
        };
        Slave::new(cfg, None, Arc::new(SimStats::default()))
    }

    #[test]
    fn answers_the_documented_layout() {
        let mut s = slave(0.0, 0.0);
        // Step 0 of unit 2, holding 0..5.
        let a = s.handle(&request(2, 3, 0, 5), 0).unwrap().unwrap();
        assert_eq!(&a[..3], &[2, 3, 10]);
        assert_eq!(crc16(&a[..a.len() - 2]).to_le_bytes(), [a[13], a[14]]);
        let w = |i: usize| u16::from_be_bytes([a[3 + 2 * i], a[4 + 2 * i]]);
        assert_eq!(w(0) as i16, 200 - 1000);
        assert_eq!((u32::from(w(1)) << 16) | u32::from(w(2)), 70_002);
        assert_eq!(((u32::from(w(4)) << 16) | u32::from(w(3))) as i32, -2);
        // Step 1: input registers; the f32 high word first.
        let a = s.handle(&request(2, 4, 0, 3), 0).unwrap().unwrap();
        let bits = (u32::from(u16::from_be_bytes([a[3], a[4]])) << 16)
            | u32::from(u16::from_be_bytes([a[5], a[6]]));
        assert_eq!(f32::from_bits(bits), 1.5 + 0.25 + 2.0);
        assert_eq!(u16::from_be_bytes([a[7], a[8]]), 1);
        // Bad address: exception 2; another unit: silence.
        let a = s.handle(&request(2, 3, 4, 2), 0).unwrap().unwrap();
        assert_eq!(&a[..3], &[2, 0x83, 2]);
        assert_eq!(s.handle(&request(9, 3, 0, 1), 0).unwrap(), None);
        assert_eq!(s.handled(), 3);
    }

    #[test]
    fn ledger_values_match_registers_and_faults_are_marked() {
        assert_eq!(
            values(3, 1, 5, 0, 5),
            BTreeMap::from([
                ("temp".into(), f64::from(285 - 1000)),
                ("energy".into(), f64::from(70_000 + 65_539 * 5 + 1)),
                ("delta".into(), -500_016.0),
            ])
        );
        // A range cutting a value in half does not list it.
        assert_eq!(values(3, 1, 0, 0, 2).len(), 1);
        let mut s = slave(0.5, 0.25);
        let (mut crc, mut silent) = (0, 0);
        for _ in 0..400 {
            match s.handle(&request(1, 3, 0, 5), 0).unwrap() {
                None => silent += 1,
                Some(a) if crc16(&a[..a.len() - 2]).to_le_bytes() != [a[13], a[14]] => crc += 1,
                Some(_) => {}
            }
        }
        assert!((60..140).contains(&silent), "{silent}");
        assert!((150..250).contains(&crc), "{crc}");
        assert_eq!(s.stats.garbage.load(Ordering::Relaxed), crc + silent);
    }
}
