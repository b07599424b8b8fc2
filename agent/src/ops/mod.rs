//! Operations: counters, the control socket, log rate limiting.

pub mod clock;
pub mod control;
pub mod metrics;
pub mod notify;
pub mod ratelimit;

pub use metrics::{Metrics, Status};
pub use ratelimit::RateLimit;
pub mod view;

pub use view::render_status;
