//! Operations: counters, the control socket, the HTTP listener with
//! `/metrics` and `/healthz`, log rate limiting.

pub mod clock;
pub mod control;
pub mod health;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod progress;
pub mod prom;
pub mod ratelimit;

pub use metrics::{ConfigOrigin, Metrics, Status};
pub use ratelimit::RateLimit;
pub mod view;

pub use view::render_status;
