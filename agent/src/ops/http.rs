//! The agent's HTTP listener (`[listen]`, off by default): the relay's write
//! endpoint (`/write`, `/api/v2/write`, as InfluxDB answers them), `/ping`,
//! and for monitoring `/metrics` (OpenMetrics text, ops/prom.rs) and
//! `/healthz` (200 while the data path is healthy, else 503 and why).
//! Plain HTTP/1.1 on hyper; meant for loopback or a private network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::health::Health;
use super::prom;
use crate::source::relay::{Outcome, Relay};

/// What the listener serves.
pub struct Routes {
    /// The relay's write endpoint, if `listen.write` is on.
    pub relay: Option<Relay>,
    /// `/metrics` and `/healthz`, if `listen.metrics` is on.
    pub monitoring: Option<Monitoring>,
}

/// The monitoring endpoints' state.
pub struct Monitoring {
    /// The registry `/metrics` encodes.
    pub registry: prometheus_client::registry::Registry,
    /// What `/healthz` asks.
    pub health: Arc<Health>,
}

/// Binds `address` (so a bad address fails start-up, not later) and returns
/// the task that serves until `stop` is cancelled.
pub async fn bind(
    address: &str,
    routes: Routes,
    stop: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let addr: SocketAddr = address.parse().with_context(|| {
        format!("listen.address `{address}` is not ip:port, e.g. 127.0.0.1:8087")
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; is another process using the port?"))?;
    info!(%addr, write = routes.relay.is_some(), metrics = routes.monitoring.is_some(), "listening for HTTP");
    let routes = Arc::new(routes);
    Ok(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let routes = routes.clone();
                        let stop = stop.clone();
                        conns.spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let routes = routes.clone();
                                async move { Ok::<_, Infallible>(route(&routes, req).await) }
                            });
                            let conn = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service);
                            tokio::pin!(conn);
                            tokio::select! {
                                _ = conn.as_mut() => {}
                                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                            }
                        });
                    }
                    Err(e) => warn!("accept failed: {e}"),
                },
            }
            while conns.try_join_next().is_some() {}
        }
        conns.shutdown().await;
    })
}

async fn route(routes: &Routes, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET | &Method::HEAD, "/ping") => reply(StatusCode::NO_CONTENT, ""),
        (&Method::GET | &Method::HEAD, "/metrics" | "/healthz") => {
            let Some(m) = &routes.monitoring else {
                return reply(
                    StatusCode::NOT_FOUND,
                    "monitoring is off here (listen.metrics = false)",
                );
            };
            let (status, content_type, body) = if path == "/metrics" {
                (
                    StatusCode::OK,
                    prom::CONTENT_TYPE,
                    prom::render(&m.registry),
                )
            } else {
                match m.health.check() {
                    Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", why + "\n"),
                }
            };
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            resp
        }
        (&Method::POST, "/write" | "/api/v2/write") => match &routes.relay {
            Some(relay) => write(relay, req).await,
            None => reply(
                StatusCode::NOT_FOUND,
                "this agent does not accept writes (listen.write = false)",
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "not found"),
    }
}

async fn write(relay: &Relay, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if !relay.authorised(header(AUTHORIZATION)) {
        return reply(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: set the sender's token (v2) or password (v1) to listen.token",
        );
    }
    let gzip = header(CONTENT_ENCODING).is_some_and(|e| e.eq_ignore_ascii_case("gzip"));
    let precision = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("precision=")))
        .map(str::to_string);
    let body = match Limited::new(req.into_body(), relay.max_body())
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body: {e} (listen.max_body)"),
            )
        }
    };
    match relay.write(&body, gzip, precision.as_deref()).await {
        Outcome::Stored(_) => reply(StatusCode::NO_CONTENT, ""),
        Outcome::Refused(code, msg) => reply(
            StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
            &msg,
        ),
        Outcome::Unavailable(msg) => reply(StatusCode::SERVICE_UNAVAILABLE, &msg),
    }
}

/// An InfluxDB-style answer: empty on success, `{"error": ...}` otherwise.
fn reply(status: StatusCode, error: &str) -> Response<Full<Bytes>> {
    let body = if error.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(serde_json::json!({ "error": error }).to_string())
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    if !error.is_empty() {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    resp
}
