//! The control socket: a Unix socket in the runtime directory that answers every
//! connection with the agent's status as one JSON line. The CLI views use it, so
//! they need no network and no root — only membership of the socket's group.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::metrics::{Metrics, Status};

/// Binds the socket (owner and group only) and serves until `shutdown`.
pub async fn serve(
    path: PathBuf,
    metrics: Arc<Metrics>,
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
                let Ok((mut stream, _)) = accepted else { continue };
                let mut line = serde_json::to_vec(&metrics.snapshot())?;
                line.push(b'\n');
                // A slow client must not hold up the next one.
                tokio::spawn(async move { let _ = stream.write_all(&line).await; });
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Asks a running agent for its status.
pub async fn fetch_status(path: &Path) -> anyhow::Result<Status> {
    let mut stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach the agent at {}; is `tidegate run` running, and are you in its group? (pass --socket or --config to point at another agent)",
            path.display()
        )
    })?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    serde_json::from_slice(&buf).context("the agent answered with something that is not a status")
}
