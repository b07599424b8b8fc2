//! Tidegate → Tidegate: the line-protocol write endpoint a downstream agent's
//! `[[sinks.influx]]` sends to (`/write` or `/api/v2/write`), so gateways
//! relay to a regional Tidegate (device → gateway → regional → cloud).
//!
//! The contract is the sink's, end to end: a request is answered 204 only
//! once its points are durable in this store's journal (a group-committed
//! flush), so the sender advances its cursor only over points that survive a
//! crash here. A request with one bad line is refused whole (400, naming the
//! line's problem), so the sender's bisection sets aside exactly the bad
//! points and nothing is stored twice. A store that cannot keep up answers
//! slowly (backpressure), which the sender's adaptive concurrency follows.

use std::io::Read;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::warn;

use super::parse::Reject;
use crate::config::TimeUnit;
use crate::ops::metrics::SourceStats;
use crate::ops::RateLimit;
use crate::point::arrival_ns;
use crate::point::Batch;
use crate::store::StoreHandle;

/// What a write request comes to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Stored durably (204).
    Stored(usize),
    /// The request is malformed or not allowed (4xx, the sender gives up on it).
    Refused(u16, String),
    /// The store failed (503, the sender retries).
    Unavailable(String),
}

/// The receiving end of a relay.
pub struct Relay {
    store: StoreHandle,
    stats: Arc<SourceStats>,
    token: Option<String>,
    max_body: usize,
    log: Mutex<RateLimit>,
}

impl Relay {
    /// Receives into `store`, counted under `stats`; a request must carry
    /// `token` (as `Authorization: Token <t>`, or as the basic-auth password)
    /// if one is set.
    pub fn new(
        store: StoreHandle,
        stats: Arc<SourceStats>,
        token: Option<String>,
        max_body: usize,
    ) -> Relay {
        stats.connected.store(true, Relaxed);
        Relay {
            store,
            stats,
            token,
            max_body,
            log: Mutex::new(RateLimit::new(std::time::Duration::from_secs(10))),
        }
    }

    /// Largest request body accepted (after decompression too).
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Whether `authorization` (the header's value) carries the token.
    pub fn authorised(&self, authorization: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(h) = authorization else {
            return false;
        };
        if let Some(t) = h.strip_prefix("Token ") {
            return t.trim() == token;
        }
        if let Some(b) = h.strip_prefix("Basic ") {
            return decode_basic_password(b.trim()).is_some_and(|p| &p == token);
        }
        false
    }

    /// Handles one write: `body` as sent, gzip or not; `precision` from the
    /// query string (`ns` if absent).
    pub async fn write(&self, body: &[u8], gzip: bool, precision: Option<&str>) -> Outcome {
        let precision = match precision.unwrap_or("ns") {
            "ns" | "n" => TimeUnit::Ns,
            "us" | "u" => TimeUnit::Us,
            "ms" => TimeUnit::Ms,
            "s" => TimeUnit::S,
            p => {
                return Outcome::Refused(
                    400,
                    format!("precision `{p}` is not one of ns, us, ms, s"),
                )
            }
        };
        let mut plain = Vec::new();
        let body = if gzip {
            let read = flate2::read::GzDecoder::new(body)
                .take(self.max_body as u64 + 1)
                .read_to_end(&mut plain);
            match read {
                Ok(n) if n > self.max_body => {
                    return Outcome::Refused(413, "body larger than listen.max_body".into())
                }
                Ok(_) => &plain[..],
                Err(e) => return Outcome::Refused(400, format!("bad gzip body: {e}")),
            }
        } else {
            body
        };
        self.stats.lines.fetch_add(1, Relaxed);
        let points = match super::lp::parse_lines(body, precision, arrival_ns()) {
            Ok(p) => p,
            Err(reject) => return self.refuse(reject),
        };
        let n = points.len();
        match self.store.append_durable(Batch { points }).await {
            Ok(()) => {
                self.stats.points.fetch_add(n as u64, Relaxed);
                Outcome::Stored(n)
            }
            Err(e) => Outcome::Unavailable(format!("store: {e}")),
        }
    }

    fn refuse(&self, reject: Reject) -> Outcome {
        self.stats.reject(reject.label());
        if let Some(held) = self.log.lock().unwrap().allow(Instant::now()) {
            warn!(
                source = self.stats.name,
                suppressed = held,
                "relay: refused a write request: {reject}"
            );
        }
        Outcome::Refused(400, format!("unable to parse: {reject}"))
    }
}

/// The password of a basic-auth value (`base64(user:password)`).
fn decode_basic_password(b64: &str) -> Option<String> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.split_once(':').map(|(_, p)| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_password() {
        // base64("tidegate:s3cret")
        assert_eq!(
            decode_basic_password("dGlkZWdhdGU6czNjcmV0").as_deref(),
            Some("s3cret")
        );
        assert_eq!(decode_basic_password("!!"), None);
    }
}
