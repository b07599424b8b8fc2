//! Operations: counters, the control socket, log rate limiting.

pub mod control;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod ratelimit;

pub use metrics::{ConfigOrigin, Metrics, Status};
pub use ratelimit::RateLimit;
pub mod view;

pub use view::render_status;
