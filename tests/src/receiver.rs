//! A small line-protocol HTTP receiver whose behaviour a test changes on the
//! fly: answer at once, slowly, or with 429 and `Retry-After`. It records the
//! points it accepted and how many requests it was serving at once, so a test
//! can see a sink's concurrency rise and fall.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 204 after this delay.
    Accept(Duration),
    /// 429 with `Retry-After: <seconds>`, at once.
    Throttle(u64),
}

#[derive(Default)]
struct Shared {
    mode: Mutex<Option<Mode>>,
    points: Mutex<BTreeSet<(String, i64, u64)>>,
    /// Points received, duplicates included.
    received: AtomicUsize,
    /// Requests answered, of any kind.
    answered: AtomicUsize,
    /// Requests being served now, and the most since the last reset.
    current: AtomicUsize,
    peak: AtomicUsize,
    stop: AtomicBool,
}

/// A receiver on a free loopback port; stops when dropped.
pub struct Receiver {
    port: u16,
    shared: Arc<Shared>,
}

impl Receiver {
    /// Starts accepting at once with `mode`.
    pub fn start(mode: Mode) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        *shared.mode.lock().unwrap() = Some(mode);
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Receiver { port, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Changes how the receiver answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = Some(mode);
    }

    /// The most requests served at once since the last call; resets it.
    pub fn take_peak(&self) -> usize {
        self.shared
            .peak
            .swap(self.shared.current.load(SeqCst), SeqCst)
    }

    /// Distinct points accepted (series key, ts ns, value bits).
    pub fn points(&self) -> BTreeSet<(String, i64, u64)> {
        self.shared.points.lock().unwrap().clone()
    }

    /// Requests answered so far, accepted or throttled.
    pub fn answered(&self) -> usize {
        self.shared.answered.load(SeqCst)
    }

    /// Points received, duplicates included.
    pub fn received(&self) -> usize {
        self.shared.received.load(SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serves one keep-alive connection.
fn serve(conn: TcpStream, s: &Shared) {
    let mut out = conn.try_clone().expect("clone the socket");
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        let mut gzip = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("content-encoding:") && lower.contains("gzip") {
                gzip = true;
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let now = s.current.fetch_add(1, SeqCst) + 1;
        s.peak.fetch_max(now, SeqCst);
        let mode = s.mode.lock().unwrap().expect("mode set at start");
        let answer = match mode {
            Mode::Accept(delay) => {
                std::thread::sleep(delay);
                if gzip {
                    let mut plain = Vec::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_end(&mut plain)
                        .expect("a gzip body");
                    body = plain;
                }
                record(&body, s);
                "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".to_string()
            }
            Mode::Throttle(secs) => format!(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {secs}\r\nContent-Length: 0\r\n\r\n"
            ),
        };
        s.current.fetch_sub(1, SeqCst);
        s.answered.fetch_add(1, SeqCst);
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn record(body: &[u8], s: &Shared) {
    let lines = parse_lines(body);
    s.received.fetch_add(lines.len(), SeqCst);
    s.points.lock().unwrap().extend(lines);
}

/// Parses `series field=value ts` lines (one field each, as the agent
/// writes) into (series key, ts ns, value bits).
pub fn parse_lines(body: &[u8]) -> Vec<(String, i64, u64)> {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (rest, ts) = line.rsplit_once(' ').expect("a timestamp");
            let (series, fv) = rest.rsplit_once(' ').expect("a field");
            let (field, value) = fv.rsplit_once('=').expect("field=value");
            let value: f64 = value.parse().expect("a float field");
            (
                format!("{series} {field}"),
                ts.parse().expect("ns timestamp"),
                value.to_bits(),
            )
        })
        .collect()
}
