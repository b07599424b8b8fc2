//! Whole-process measurements: `tidegate bench compare` (Tidegate against
//! collectd on the same MQTT feed) and `tidegate bench footprint` (the
//! agent's RSS and CPU at the deployment tiers' rates).
//!
//! Every figure comes from the kernel's books for a process we started:
//! utime + stime from `/proc/PID/stat`, the peak RSS from `VmHWM` in
//! `/proc/PID/status`, bytes written from `write_bytes` in `/proc/PID/io`.
//! CPU seconds, not wall time, because the machines these run on are shared.

pub mod compare;
pub mod footprint;
mod rig;

pub use rig::{program, Usage};
