//! The control socket: a Unix socket in the runtime directory. The CLI views
//! use it, so they need no network and no root — only membership of the
//! socket's group.
//!
//! Protocol: the client sends one request line, the agent answers.
//!
//! - `status\n`: the status as one JSON line, then the agent closes.
//! - `tap <pattern>\n` (`*` matches any run of characters; `tap\n` is `tap *`):
//!   every point entering the store whose series key matches, as line
//!   protocol, until the client hangs up. A client that reads too slowly
//!   loses points; the agent then sends `# lost N batches (reading too
//!   slowly)` and goes on. The store never waits for a tapper.
//!
//! A client that sends nothing within [`OLD_CLIENT_WAIT`] (the first
//! protocol: connect and read) gets the status, as before.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::metrics::{Metrics, Status};
use crate::store::query::glob;
use crate::store::Tap;

/// How long the agent waits for a request line before it answers with the
/// status, for clients of the connect-and-read protocol.
pub const OLD_CLIENT_WAIT: Duration = Duration::from_millis(200);

/// Binds the socket (owner and group only) and serves until `shutdown`.
pub async fn serve(
    path: PathBuf,
    metrics: Arc<Metrics>,
    tap: Tap,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A socket file left by a killed agent would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| {
        format!(
            "cannot create the control socket {}; check that its directory exists and is writable, or set ops.control_socket",
            path.display()
        )
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // A slow client must not hold up the next one.
                tokio::spawn(answer(stream, metrics.clone(), tap.clone(), shutdown.clone()));
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn answer(stream: UnixStream, metrics: Arc<Metrics>, tap: Tap, stop: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read).take(4096);
    let mut line = String::new();
    let request = tokio::time::timeout(OLD_CLIENT_WAIT, read.read_line(&mut line)).await;
    let request = match request {
        Ok(Ok(_)) => line.trim().to_string(),
        // Nothing sent (old client), or the client closed its side.
        _ => "status".to_string(),
    };
    let (verb, arg) = request.split_once(' ').unwrap_or((&request, ""));
    match verb {
        "status" | "" => {
            if let Ok(mut json) = serde_json::to_vec(&metrics.snapshot()) {
                json.push(b'\n');
                let _ = write.write_all(&json).await;
            }
        }
        "tap" => {
            let pattern = match arg.trim() {
                "" => "*".to_string(),
                p => p.to_string(),
            };
            let mut sub = tap.subscribe();
            // The client hanging up ends the tap.
            let mut hangup = [0u8; 1];
            let mut out = String::new();
            loop {
                out.clear();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = read.read(&mut hangup) => break,
                    got = sub.rx.recv() => match got {
                        Ok(batch) => {
                            for p in batch.points.iter().filter(|p| glob(&pattern, p.series.as_str())) {
                                let (series, field) = p.series.split();
                                let _ = writeln!(out, "{series} {field}={:?} {}", p.value, p.ts_ns);
                            }
                        }
                        Err(RecvError::Lagged(n)) => {
                            let _ = writeln!(out, "# lost {n} batches (reading too slowly)");
                        }
                        Err(RecvError::Closed) => break,
                    },
                }
                if !out.is_empty() && write.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
        other => {
            let _ = write
                .write_all(
                    format!("# unknown request `{other}`; expected `status` or `tap <pattern>`\n")
                        .as_bytes(),
                )
                .await;
        }
    }
}

async fn connect(path: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach the agent at {}; is `tidegate run` running, and are you in its group? (pass --socket or --config to point at another agent)",
            path.display()
        )
    })
}

/// Asks a running agent for its status.
pub async fn fetch_status(path: &Path) -> anyhow::Result<Status> {
    let mut stream = connect(path).await?;
    // An agent of the first protocol answers without reading the request and
    // closes with it unread, which resets the connection after the answer:
    // what arrived before the reset is the whole answer.
    let sent = stream.write_all(b"status\n").await;
    let mut buf = Vec::new();
    let read = stream.read_to_end(&mut buf).await;
    if buf.is_empty() {
        sent?;
        read?;
    }
    serde_json::from_slice(&buf).context("the agent answered with something that is not a status")
}

/// Streams the points entering a running agent's store whose series match
/// `pattern`, one line-protocol line each, to `out` until the agent stops or
/// `out` fails.
pub async fn tap(
    path: &Path,
    pattern: &str,
    out: &mut (impl std::io::Write + ?Sized),
) -> anyhow::Result<()> {
    let mut stream = connect(path).await?;
    stream
        .write_all(format!("tap {pattern}\n").as_bytes())
        .await?;
    let mut lines = BufReader::new(stream).lines();
    while let Some(line) = lines.next_line().await? {
        if line.starts_with('#') {
            eprintln!("{line}");
            continue;
        }
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}
