//! A serial port source: one task a port, one reading a line.
//!
//! The port may vanish at any time (a USB adapter unplugged, a board reset): the
//! task logs it once, reopens with backoff, and carries on when it is back.
//!
//! New settings arrive on a watch channel (a fleet configuration): parsing
//! settings change in place, between two bytes, so the line being read is
//! not cut; only new line settings (path, baud, bits, parity, flow control)
//! reopen the port. Closing a port loses what the wire carries meanwhile,
//! so a configuration change must not close it for nothing.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::guard::Guard;
use super::parse::LineParser;
use crate::config::SerialSourceConfig;
use crate::ops::metrics::SourceStats;
use crate::ops::RateLimit;
use crate::point::now_ns;
use crate::point::{Batch, DeadLetter};
use crate::store::StoreHandle;
use crate::sync::Backoff;

/// Reads one serial port until `shutdown`, under the latest `settings`.
pub async fn run(
    mut settings: watch::Receiver<SerialSourceConfig>,
    store: StoreHandle,
    stats: Arc<SourceStats>,
    shutdown: CancellationToken,
) {
    let mut cfg = settings.borrow_and_update().clone();
    let name = cfg.display_name();
    let mut lines = Lines::new(
        LineParser::new(&cfg),
        cfg.guard(),
        stats.clone(),
        name.clone(),
    );
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut log = PortLog::new(&name);
    while !shutdown.is_cancelled() {
        match port_builder(&cfg).open_native_async() {
            Ok(mut port) => {
                log.opened(&cfg.port, cfg.baud);
                backoff.reset();
                stats.connected.store(true, Relaxed);
                let mut session = Session {
                    lines: &mut lines,
                    cfg: &mut cfg,
                    settings: &mut settings,
                    store: &store,
                    shutdown: &shutdown,
                };
                let end = session.read_port(&mut port).await;
                stats.connected.store(false, Relaxed);
                match end {
                    End::Shutdown | End::StoreClosed => break,
                    End::Reopen => {
                        info!(source = %name, port = %cfg.port.display(), baud = cfg.baud, "line settings changed; reopening the port");
                        lines.cut();
                        continue;
                    }
                    End::Lost(e) => {
                        lines.cut();
                        log.lost(&cfg.port, &e);
                    }
                }
            }
            Err(e) => log.cannot_open(&cfg.port, &e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // New settings (perhaps the right path at last): try them now.
            Ok(()) = settings.changed() => {
                cfg = settings.borrow_and_update().clone();
                lines.reconfigure(&cfg);
                lines.cut();
            }
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// A port's ups and downs, each logged once rather than on every retry.
pub(crate) struct PortLog {
    source: String,
    down_since: Option<Instant>,
}

impl PortLog {
    /// For the source named `source`.
    pub(crate) fn new(source: &str) -> PortLog {
        PortLog {
            source: source.into(),
            down_since: None,
        }
    }

    /// The port is open (at last).
    pub(crate) fn opened(&mut self, port: &Path, baud: u32) {
        let (source, port) = (&self.source, port.display());
        match self.down_since.take() {
            Some(t) => {
                info!(%source, %port, "port back after {:.1}s", t.elapsed().as_secs_f64())
            }
            None => info!(%source, %port, baud, "port opened"),
        }
    }

    /// The open port failed.
    pub(crate) fn lost(&mut self, port: &Path, e: &dyn std::fmt::Display) {
        warn!(source = %self.source, port = %port.display(), "port lost ({e}); reopening with backoff");
        self.down_since = Some(Instant::now());
    }

    /// The port cannot be opened (logged the first time).
    pub(crate) fn cannot_open(&mut self, port: &Path, e: &dyn std::fmt::Display) {
        if self.down_since.is_none() {
            warn!(source = %self.source, port = %port.display(), "cannot open the port ({e}); check the path, the adapter and that the user is in group dialout; retrying with backoff");
            self.down_since = Some(Instant::now());
        }
    }
}

/// Whether two settings open the port alike.
fn same_line(a: &SerialSourceConfig, b: &SerialSourceConfig) -> bool {
    (
        a.port.as_path(),
        a.baud,
        a.data_bits,
        a.parity,
        a.stop_bits,
        a.flow_control,
    ) == (
        b.port.as_path(),
        b.baud,
        b.data_bits,
        b.parity,
        b.stop_bits,
        b.flow_control,
    )
}

/// The port's line settings: baud, data bits, parity, stop bits, flow control.
pub(crate) fn port_builder(cfg: &SerialSourceConfig) -> tokio_serial::SerialPortBuilder {
    use crate::config::{FlowControl, Parity};
    use tokio_serial::{DataBits, StopBits};
    let data_bits = match cfg.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match cfg.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let flow = match cfg.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    tokio_serial::new(cfg.port.to_string_lossy(), cfg.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(if cfg.stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        })
        .flow_control(flow)
}

enum End {
    Shutdown,
    StoreClosed,
    /// New line settings: open the port again with them.
    Reopen,
    Lost(std::io::Error),
}

/// What reading an open port works with.
struct Session<'a> {
    lines: &'a mut Lines,
    cfg: &'a mut SerialSourceConfig,
    settings: &'a mut watch::Receiver<SerialSourceConfig>,
    store: &'a StoreHandle,
    shutdown: &'a CancellationToken,
}

impl Session<'_> {
    async fn read_port(&mut self, port: &mut tokio_serial::SerialStream) -> End {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                _ = self.shutdown.cancelled() => return End::Shutdown,
                changed = self.settings.changed() => {
                    // The sender goes only with the source.
                    if changed.is_err() {
                        return End::Shutdown;
                    }
                    let new = self.settings.borrow_and_update().clone();
                    let reopen = !same_line(self.cfg, &new);
                    *self.cfg = new;
                    self.lines.reconfigure(self.cfg);
                    if reopen {
                        return End::Reopen;
                    }
                    continue;
                }
                r = port.read(&mut buf) => match r {
                    Ok(0) => return End::Lost(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "end of file")),
                    Ok(n) => n,
                    Err(e) => return End::Lost(e),
                },
            };
            let batch = self.lines.feed(&buf[..n], now_ns());
            if !batch.is_empty() && self.store.append(batch).await.is_err() {
                return End::StoreClosed;
            }
            if self
                .store
                .dead_letters(self.lines.take_dead())
                .await
                .is_err()
            {
                return End::StoreClosed;
            }
        }
    }
}

/// Splits a byte stream into lines (frames: at 0x00) and parses them; counts
/// and logs rejects.
struct Lines {
    parser: LineParser,
    guard: Guard,
    stats: Arc<SourceStats>,
    name: Arc<str>,
    /// Rejected lines since the last [`Lines::take_dead`].
    dead: Vec<DeadLetter>,
    partial: Vec<u8>,
    /// Inside an over-long line: drop bytes until its end.
    discarding: bool,
    log: RateLimit,
}

impl Lines {
    fn new(parser: LineParser, guard: Guard, stats: Arc<SourceStats>, name: String) -> Lines {
        Lines {
            parser,
            guard,
            stats,
            name: name.into(),
            dead: Vec::new(),
            partial: Vec::new(),
            discarding: false,
            log: RateLimit::new(Duration::from_secs(10)),
        }
    }

    /// Parses with `cfg` from the next byte on; the line being read stays.
    fn reconfigure(&mut self, cfg: &SerialSourceConfig) {
        self.parser = LineParser::new(cfg);
        let old = std::mem::replace(&mut self.guard, cfg.guard());
        self.guard = cfg.guard().carry_over(old);
    }

    /// Forgets the line being read (the port closed under it).
    fn cut(&mut self) {
        self.partial.clear();
        self.discarding = false;
    }

    /// The rejected lines (for the store's dead-letter table) since the last call.
    fn take_dead(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead)
    }

    /// Feeds bytes read at `arrival_ns`; returns the points of the complete lines.
    fn feed(&mut self, mut bytes: &[u8], arrival_ns: i64) -> Batch {
        let mut batch = Batch::default();
        let end = self.parser.terminator();
        while let Some(nl) = bytes.iter().position(|&b| b == end) {
            let (head, rest) = (&bytes[..nl], &bytes[nl + 1..]);
            bytes = rest;
            if self.discarding {
                self.discarding = false;
                self.partial.clear();
                continue;
            }
            let line = if self.partial.is_empty() {
                head.to_vec()
            } else {
                let mut l = std::mem::take(&mut self.partial);
                l.extend_from_slice(head);
                l
            };
            self.line(&line, arrival_ns, &mut batch);
        }
        if !self.discarding {
            self.partial.extend_from_slice(bytes);
            if self.partial.len() > self.parser.max_line() {
                // Count the over-long line now, once, and skip to its end.
                let line = std::mem::take(&mut self.partial);
                self.line(&line, arrival_ns, &mut batch);
                self.discarding = true;
            }
        }
        batch
    }

    fn line(&mut self, line: &[u8], arrival_ns: i64, batch: &mut Batch) {
        let binary = self.parser.is_binary();
        let line = if binary {
            line
        } else {
            line.strip_suffix(b"\r").unwrap_or(line)
        };
        self.stats.lines.fetch_add(1, Relaxed);
        let start = batch.points.len();
        let parsed = self
            .parser
            .parse(line, arrival_ns, &mut batch.points)
            .and_then(|n| {
                self.guard
                    .check(&batch.points[start..], arrival_ns)
                    .map(|()| n)
            });
        match parsed {
            Ok(n) => {
                self.stats.points.fetch_add(n as u64, Relaxed);
                self.guard
                    .settle_arrivals(&mut batch.points[start..], arrival_ns, &self.stats);
            }
            Err(reason) => {
                batch.points.truncate(start);
                self.stats.reject(reason.label());
                self.dead.push(DeadLetter::new(
                    self.name.clone(),
                    reason.label(),
                    reason.to_string(),
                    line,
                    arrival_ns,
                ));
                if let Some(held) = self.log.allow(Instant::now()) {
                    let head = &line[..line.len().min(120)];
                    let example = if binary {
                        head.iter().map(|b| format!("{b:02x}")).collect()
                    } else {
                        String::from_utf8_lossy(head).into_owned()
                    };
                    warn!(source = %self.name, reason = reason.label(), suppressed = held,
                        "rejected a line ({reason}): {example:?}; check the sensor's framing and the source's settings");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Framing, TimeUnit};
    use crate::ops::Metrics;

    fn lines(max_line: usize) -> (Lines, Arc<SourceStats>) {
        let cfg = SerialSourceConfig {
            name: None,
            port: "/dev/null".into(),
            baud: 9600,
            framing: Framing::Kv,
            measurement: "m".into(),
            tags: Default::default(),
            tag_keys: vec![],
            timestamp_key: None,
            timestamp_unit: TimeUnit::Ms,
            max_line,
            port_tag: false,
            ..Default::default()
        };
        let stats = Metrics::new("t").source("s");
        (
            Lines::new(
                LineParser::new(&cfg),
                cfg.guard(),
                stats.clone(),
                "s".into(),
            ),
            stats,
        )
    }

    #[test]
    fn lines_split_across_reads() {
        let (mut l, stats) = lines(100);
        assert!(l.feed(b"a=1\na=", 1).len() == 1);
        let b = l.feed(b"2\r\n", 2);
        assert_eq!(b.points[0].value, 2.0);
        assert_eq!(stats.lines.load(Relaxed), 2);
    }

    #[test]
    fn new_settings_do_not_cut_the_line_being_read() {
        let (mut l, stats) = lines(100);
        assert_eq!(l.feed(b"a=1\nbb=", 1).len(), 1);
        let cfg = SerialSourceConfig {
            port: "/dev/null".into(),
            framing: Framing::Kv,
            measurement: "n".into(),
            max_line: 4,
            ..Default::default()
        };
        l.reconfigure(&cfg);
        let b = l.feed(b"2\n", 2);
        assert_eq!(b.len(), 1, "the line begun before the change is whole");
        assert_eq!(b.points[0].value, 2.0);
        assert!(
            b.points[0].series.to_string().starts_with("n,"),
            "parsed under the new settings: {}",
            b.points[0].series
        );
        // The new limit holds from now on.
        assert!(l.feed(b"a=12345\n", 3).is_empty());
        assert_eq!(stats.rejects_snapshot().get("too_long"), Some(&1));
    }

    #[test]
    fn overlong_line_counted_once_and_skipped() {
        let (mut l, stats) = lines(8);
        assert!(l.feed(b"a=1234567", 1).is_empty());
        assert!(l.feed(b"89012345", 1).is_empty());
        let b = l.feed(b"6\na=7\n", 1);
        assert_eq!(b.points.len(), 1);
        assert_eq!(b.points[0].value, 7.0);
        let snap = stats.rejects_snapshot();
        assert_eq!(snap.get("too_long"), Some(&1));
        let dead = l.take_dead();
        assert_eq!(dead.len(), 1, "one dead letter a reject");
        // An over-long line is kept as far as it was read when it was cut.
        assert_eq!(
            (dead[0].reason, dead[0].raw.as_slice()),
            ("too_long", &b"a=1234567"[..])
        );
        assert!(l.take_dead().is_empty());
    }
}
