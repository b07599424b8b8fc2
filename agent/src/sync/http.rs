//! What every HTTP sink shares: the client (timeouts, user agent, private
//! CAs), authentication, `Retry-After`, and one reading of HTTP statuses.
//!
//! | answer | meaning |
//! |---|---|
//! | 2xx | acknowledged |
//! | 408, 429 | retryable, honouring `Retry-After` |
//! | 401, 403, 404 | retryable: a configuration error (url, credentials); the data stays in the store until the operator fixes it |
//! | other 4xx | permanent: the endpoint refused these points (the engine splits the batch to find them) |
//! | 5xx, no answer | retryable, honouring `Retry-After` |

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};

use crate::sync::SinkError;

/// The longest part of a server's answer kept in an error message: an
/// InfluxDB partial write can list thousands of points.
const MAX_MESSAGE: usize = 1024;

/// Builds the client of sink `name` for `url`: a whole request may take
/// `timeout` (connecting at most 5 s of it), and the certificates of
/// `ca_file` (a PEM bundle) are trusted besides the system's.
///
/// The system's roots are loaded only for an `https` URL: the ~140
/// certificates of /etc/ssl/certs, parsed, keep ~190 KB of heap for the
/// client's life (206 KB against 20 KB for a plain client, by mallinfo2),
/// to talk plain HTTP to a database on the LAN. (A plain URL that
/// redirects to https then fails verification, and says so; write the
/// https URL instead.)
pub fn client(
    name: &str,
    url: &reqwest::Url,
    timeout: Duration,
    ca_file: Option<&Path>,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("tidegate/", env!("CARGO_PKG_VERSION")))
        .tls_built_in_root_certs(url.scheme() == "https");
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca)
            .with_context(|| format!("sink {name}: cannot read ca_file {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("sink {name}: ca_file {} is not PEM", ca.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("cannot build the HTTP client")
}

/// How a sink proves who it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Auth {
    /// Nothing.
    #[default]
    None,
    /// `Authorization: Basic` with a user name and an optional password.
    Basic(String, Option<String>),
    /// `Authorization: <scheme> <token>`: `Bearer` (OAuth-style) or `Token`
    /// (InfluxDB 2).
    Token(&'static str, String),
}

impl Auth {
    /// Basic authentication if a user name is given, else nothing.
    pub fn basic(username: Option<&str>, password: Option<&str>) -> Auth {
        match username {
            Some(u) => Auth::Basic(u.to_string(), password.map(str::to_string)),
            None => Auth::None,
        }
    }

    /// A bearer token if given, else basic authentication if a user name is
    /// given, else nothing.
    pub fn bearer_or_basic(
        token: Option<&str>,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Auth {
        match token {
            Some(t) => Auth::Token("Bearer", t.to_string()),
            None => Auth::basic(username, password),
        }
    }

    /// Adds the credentials to a request.
    pub fn apply(&self, req: RequestBuilder) -> RequestBuilder {
        match self {
            Auth::None => req,
            Auth::Basic(u, p) => req.basic_auth(u, p.as_ref()),
            Auth::Token(scheme, t) => {
                req.header(reqwest::header::AUTHORIZATION, format!("{scheme} {t}"))
            }
        }
    }
}

/// An endpoint's answer, read whole.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// What `Retry-After` asked for, if anything readable.
    pub retry_after: Option<Duration>,
    /// The body as text (lossy), for error messages.
    pub body: String,
}

impl Reply {
    /// What the answer means for the points sent ([`classify`]).
    pub fn result(&self) -> Result<(), SinkError> {
        classify(self.status, self.retry_after, &self.body)
    }
}

/// Sends `req` and reads the answer; only a failure to get one is an error
/// (retryable: the endpoint is unreachable or timed out).
pub async fn exchange(req: RequestBuilder) -> Result<Reply, SinkError> {
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status();
    let retry_after = retry_after(resp.headers(), SystemTime::now());
    let body = resp.text().await.unwrap_or_default();
    Ok(Reply {
        status,
        retry_after,
        body,
    })
}

/// Sends `req`: `Ok` on a 2xx, else the [`classify`]d error.
pub async fn send(req: RequestBuilder) -> Result<(), SinkError> {
    exchange(req).await?.result()
}

/// The one reading of an HTTP answer for every sink (see the module's table).
pub fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &str,
) -> Result<(), SinkError> {
    if status.is_success() {
        return Ok(());
    }
    let reason = format!("HTTP {status}: {}", shorten(body.trim()));
    Err(match status {
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => SinkError::Retryable {
            reason,
            retry_after,
        },
        // Configuration errors: keep the data and retry while the operator
        // fixes the credentials or the URL.
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
            SinkError::Retryable {
                reason: format!("{reason}; check the sink's url, credentials and database/bucket"),
                retry_after: None,
            }
        }
        s if s.is_client_error() => SinkError::Permanent { reason },
        _ => SinkError::Retryable {
            reason,
            retry_after,
        },
    })
}

/// No answer at all (connection refused, reset, timed out, TLS failure):
/// retryable. The message carries the causes, where the detail is.
pub fn transport(e: reqwest::Error) -> SinkError {
    let mut reason = format!("request failed: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    SinkError::Retryable {
        reason,
        retry_after: None,
    }
}

/// `Retry-After` as a delay: delay-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, counted from `now`; a date in the past
/// is no delay).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses the IMF-fixdate form of an HTTP-date (RFC 9110 §5.6.7), the one
/// servers send: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let rest = s.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else { return None };
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Deflate's state, ~400 KB: kept between requests rather than allocated,
/// zeroed and freed for each, and one for the process, not one for each
/// worker thread that happens to encode. A `Gzip` takes it while it lives;
/// one made meanwhile gets a state of its own, dropped when done.
static DEFLATE: std::sync::Mutex<Option<flate2::Compress>> = std::sync::Mutex::new(None);

/// A gzip body (`Content-Encoding: gzip`) written piece by piece, so that
/// the plain text never exists whole: a request of 5,000 points is ~450 KB
/// of line protocol but ~60 KB of gzip. Deflate at the fast level (on a
/// gateway's CPU, most of the ratio for a fraction of the time), the
/// process's state reused.
pub struct Gzip {
    // Put back in `DEFLATE` on drop.
    deflate: Option<flate2::Compress>,
    crc: flate2::Crc,
    out: Vec<u8>,
}

impl Gzip {
    /// Starts a body of about `plain_len` plain bytes (a hint for its size).
    pub fn new(plain_len: usize) -> Gzip {
        let kept = DEFLATE.lock().unwrap_or_else(|e| e.into_inner()).take();
        let deflate = kept
            .map(|mut d| {
                d.reset();
                d
            })
            .unwrap_or_else(|| flate2::Compress::new(flate2::Compression::fast(), false));
        let mut out = Vec::with_capacity(plain_len / 6 + 64);
        // RFC 1952: deflate, no flags, no time, fastest, OS unknown.
        out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 0xff]);
        Gzip {
            deflate: Some(deflate),
            crc: flate2::Crc::new(),
            out,
        }
    }

    /// Appends `bytes` to the plain text.
    pub fn write(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        self.deflate_all(bytes, flate2::FlushCompress::None);
    }

    /// The whole body: the end of the deflate stream and gzip's trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.deflate_all(&[], flate2::FlushCompress::Finish);
        let mut out = std::mem::take(&mut self.out);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        out
    }

    /// Feeds `bytes` until deflate has taken them all (and, with `Finish`,
    /// ended the stream), growing the output as it fills.
    fn deflate_all(&mut self, bytes: &[u8], flush: flate2::FlushCompress) {
        let deflate = self.deflate.as_mut().expect("taken only on drop");
        let start = deflate.total_in();
        loop {
            let done = (deflate.total_in() - start) as usize;
            if self.out.capacity() - self.out.len() < 64 {
                self.out.reserve(self.out.len() / 2 + 1024);
            }
            let status = deflate
                .compress_vec(&bytes[done..], &mut self.out, flush)
                .expect("deflating into a Vec cannot fail");
            let finished = match flush {
                flate2::FlushCompress::Finish => status == flate2::Status::StreamEnd,
                // All taken and room left over: deflate holds nothing back
                // that it could have written.
                _ => {
                    (deflate.total_in() - start) as usize == bytes.len()
                        && self.out.len() < self.out.capacity()
                }
            };
            if finished {
                return;
            }
        }
    }
}

impl Drop for Gzip {
    fn drop(&mut self) {
        let mut kept = DEFLATE.lock().unwrap_or_else(|e| e.into_inner());
        if kept.is_none() {
            *kept = self.deflate.take();
        }
    }
}

/// `s` cut to [`MAX_MESSAGE`] bytes (at a character boundary), marked if cut.
fn shorten(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: u16) -> &'static str {
        match classify(StatusCode::from_u16(status).unwrap(), None, "msg") {
            Ok(()) => "ok",
            Err(SinkError::Retryable { .. }) => "retry",
            Err(SinkError::Permanent { .. }) => "permanent",
        }
    }

    #[test]
    fn statuses_are_read_once_for_all_sinks() {
        for (status, want) in [
            (200, "ok"),
            (204, "ok"),
            (400, "permanent"),
            (413, "permanent"),
            (422, "permanent"),
            (408, "retry"),
            (429, "retry"),
            (401, "retry"),
            (403, "retry"),
            (404, "retry"),
            (500, "retry"),
            (503, "retry"),
        ] {
            assert_eq!(kind(status), want, "HTTP {status}");
        }
    }

    #[test]
    fn retry_after_is_kept_for_overload_only() {
        let wait = Some(Duration::from_secs(7));
        let after = |s: u16| match classify(StatusCode::from_u16(s).unwrap(), wait, "") {
            Err(SinkError::Retryable { retry_after, .. }) => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(after(429), wait);
        assert_eq!(after(503), wait);
        assert_eq!(after(401), None);
    }

    #[test]
    fn messages_name_the_fix_and_stay_short() {
        let Err(SinkError::Retryable { reason, .. }) = classify(StatusCode::UNAUTHORIZED, None, "")
        else {
            panic!()
        };
        assert!(reason.contains("credentials"), "{reason}");
        let long = "x".repeat(10_000);
        let Err(SinkError::Permanent { reason }) = classify(StatusCode::BAD_REQUEST, None, &long)
        else {
            panic!()
        };
        assert!(reason.len() < 1200, "{}", reason.len());
        assert!(reason.ends_with("(10000 bytes)"), "{reason}");
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_767); // 06 Nov 1994 08:49:27
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, " 120 ".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        h.insert(
            RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        h.insert(
            RETRY_AFTER,
            "Sat, 05 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_164_800))
        );
    }

    /// `bytes` as one gzip body.
    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = Gzip::new(bytes.len());
        gz.write(bytes);
        gz.finish()
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let unzip = |packed: &[u8]| {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(packed)
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        let text = "sim,sensor=s01 temp=21.5 1\n".repeat(100);
        let packed = gzip(text.as_bytes());
        assert!(packed.len() < text.len() / 5, "{}", packed.len());
        assert_eq!(unzip(&packed), text.as_bytes());
        // The deflate state is reused: empty, then incompressible
        // bytes larger than the first guess of the output's size.
        assert!(unzip(&gzip(b"")).is_empty());
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(unzip(&gzip(&noise)), noise);
        assert_eq!(unzip(&gzip(text.as_bytes())), text.as_bytes());
        // Piece by piece, two bodies at once (the second gets a state of
        // its own): each reads back as its pieces joined.
        let (mut a, mut b) = (Gzip::new(0), Gzip::new(10));
        for piece in noise.chunks(7_001) {
            a.write(piece);
            b.write(text.as_bytes());
        }
        let pieces = noise.len().div_ceil(7_001);
        assert_eq!(unzip(&b.finish()), text.repeat(pieces).as_bytes());
        assert_eq!(unzip(&a.finish()), noise);
    }

    #[test]
    fn auth_headers() {
        let c = reqwest::Client::new();
        let header = |a: Auth| {
            a.apply(c.post("http://x/"))
                .build()
                .unwrap()
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(header(Auth::None), None);
        assert_eq!(
            header(Auth::Token("Token", "t0k".into())).as_deref(),
            Some("Token t0k")
        );
        assert_eq!(
            header(Auth::bearer_or_basic(Some("b"), Some("u"), None)).as_deref(),
            Some("Bearer b")
        );
        assert_eq!(
            header(Auth::basic(Some("u"), Some("p"))).as_deref(),
            Some("Basic dTpw")
        );
    }
}
