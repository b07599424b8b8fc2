//! Settings every sink has, whatever its endpoint: which tier it sends, in
//! what order, how many requests at once, when, and how many bytes a day.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ByteSize;

/// Which copy of the data a sink sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SinkTier {
    /// Every point as it was stored.
    #[default]
    Raw,
    /// One point per series and rollup window of this width (a tier of `store.rollups`).
    Rollup(Duration),
}

impl SinkTier {
    /// Parses `"raw"` or a window width such as `"1m"`.
    pub fn parse(s: &str) -> Result<SinkTier, String> {
        if s.eq_ignore_ascii_case("raw") {
            return Ok(SinkTier::Raw);
        }
        humantime::parse_duration(s)
            .map(SinkTier::Rollup)
            .map_err(|_| format!("`{s}` is not a tier; expected \"raw\" or a rollup width such as \"1m\" or \"1h\""))
    }
}

impl fmt::Display for SinkTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkTier::Raw => f.write_str("raw"),
            SinkTier::Rollup(d) => f.write_str(&humantime::format_duration(*d).to_string()),
        }
    }
}

impl Serialize for SinkTier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SinkTier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SinkTier::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// In what order a sink works through a backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Strictly oldest first (Prometheus remote write requires it).
    #[default]
    OldestFirst,
    /// New points within seconds, the backlog behind them at `backfill_share`
    /// of the requests (for databases that accept backfill).
    LiveFirst,
}

/// A daily time window, local time, `"22:00-06:00"` (may wrap midnight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight the window opens.
    pub start: u16,
    /// Minutes after midnight it closes.
    pub end: u16,
}

impl Window {
    /// Parses `"HH:MM-HH:MM"`.
    pub fn parse(s: &str) -> Result<Window, String> {
        let bad =
            || format!("`{s}` is not a window; expected \"HH:MM-HH:MM\", e.g. \"22:00-06:00\"");
        let minutes = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        Ok(Window {
            start: minutes(a).ok_or_else(bad)?,
            end: minutes(b).ok_or_else(bad)?,
        })
    }

    /// Whether the window is open at `minute` after midnight.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start <= self.end {
            minute >= self.start && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Window::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The delivery settings of one sink, as the sync engine takes them.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryConfig {
    /// The sink's name: its cursor is stored under it.
    pub name: String,
    /// Largest number of points in one request.
    pub batch_max_points: usize,
    /// Largest request body (as on the wire); a larger batch is split.
    pub batch_max_bytes: u64,
    /// Longest wait between retries.
    pub backoff_max: Duration,
    /// Most requests in flight (the adaptive limit grows up to it).
    pub max_in_flight: usize,
    /// Raw points or a rollup tier.
    pub tier: SinkTier,
    /// Backlog order.
    pub order: Order,
    /// Share of requests given to the backlog while live points wait (live-first).
    pub backfill_share: f64,
    /// Tag marking points that stand for a window of raw points (rollups).
    pub resolution_tag: String,
    /// Publish degraded and lost ranges upstream as `tidegate_gaps` points.
    pub gap_report: bool,
    /// Daily windows in which the sink may send; always when empty.
    pub schedule: Vec<Window>,
    /// Bytes a day (as on the wire) the sink may send; no limit if unset.
    pub daily_budget: Option<ByteSize>,
    /// What to send once the budget is spent: a rollup tier, or nothing until tomorrow.
    pub over_budget_tier: Option<SinkTier>,
}

/// Defines a sink's configuration struct: the endpoint's own fields, then the
/// delivery fields every sink shares (so no sink repeats them, and serde's
/// `deny_unknown_fields` still catches typos, which `flatten` would not).
macro_rules! sink_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, serde::Deserialize, serde::Serialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Names the sink's cursor in the store: renaming a sink starts it from scratch.
            pub name: String,
            $( $(#[$fmeta])* pub $field : $ty, )*
            /// Largest number of points in one request.
            #[serde(default = "crate::config::delivery::defaults::batch_max_points")]
            pub batch_max_points: usize,
            /// Largest request body, as on the wire; a larger batch is split in halves until it fits.
            #[serde(default = "crate::config::delivery::defaults::batch_max_bytes")]
            pub batch_max_bytes: crate::config::ByteSize,
            /// Time allowed for one request.
            #[serde(default = "crate::config::delivery::defaults::timeout", with = "humantime_serde")]
            pub timeout: std::time::Duration,
            /// Longest wait between retries while the endpoint is down.
            #[serde(default = "crate::config::delivery::defaults::backoff_max", with = "humantime_serde")]
            pub backoff_max: std::time::Duration,
            /// Most requests in flight; the sink starts at one and adapts (AIMD) up to this.
            #[serde(default = "crate::config::delivery::defaults::max_in_flight")]
            pub max_in_flight: usize,
            /// `"raw"` (every point) or a rollup tier such as `"1m"` (one point per window).
            #[serde(default)]
            pub tier: crate::config::SinkTier,
            /// `"oldest_first"` or `"live_first"` (new points first, the backlog behind).
            #[serde(default)]
            pub order: crate::config::Order,
            /// Live-first: share of requests the backlog gets while live points wait.
            #[serde(default = "crate::config::delivery::defaults::backfill_share")]
            pub backfill_share: f64,
            /// Tag that marks points standing for a window of raw points.
            #[serde(default = "crate::config::delivery::defaults::resolution_tag")]
            pub resolution_tag: String,
            /// Publish degraded and lost ranges as `tidegate_gaps` points.
            #[serde(default = "crate::config::delivery::defaults::gap_report")]
            pub gap_report: bool,
            /// Daily local-time windows in which the sink may send, e.g. `["22:00-06:00"]`; always if empty.
            #[serde(default)]
            pub schedule: Vec<crate::config::Window>,
            /// Bytes a day the sink may send, counted as on the wire; unlimited if unset.
            #[serde(default)]
            pub daily_budget: Option<crate::config::ByteSize>,
            /// Once the budget is spent, send only this tier (e.g. `"1h"`) until midnight; nothing if unset.
            #[serde(default)]
            pub over_budget_tier: Option<crate::config::SinkTier>,
        }

        impl $name {
            /// The settings the sync engine takes.
            pub fn delivery(&self) -> crate::config::DeliveryConfig {
                crate::config::DeliveryConfig {
                    name: self.name.clone(),
                    batch_max_points: self.batch_max_points,
                    batch_max_bytes: self.batch_max_bytes.0,
                    backoff_max: self.backoff_max,
                    max_in_flight: self.max_in_flight,
                    tier: self.tier,
                    order: self.order,
                    backfill_share: self.backfill_share,
                    resolution_tag: self.resolution_tag.clone(),
                    gap_report: self.gap_report,
                    schedule: self.schedule.clone(),
                    daily_budget: self.daily_budget,
                    over_budget_tier: self.over_budget_tier,
                }
            }
        }
    };
}

/// Defaults of the shared sink fields.
pub mod defaults {
    use std::time::Duration;

    /// 5000 points.
    pub fn batch_max_points() -> usize {
        5000
    }
    /// 4 MiB.
    pub fn batch_max_bytes() -> crate::config::ByteSize {
        crate::config::ByteSize(4 << 20)
    }
    /// 10 s.
    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    /// 30 s.
    pub fn backoff_max() -> Duration {
        Duration::from_secs(30)
    }
    /// 8 requests.
    pub fn max_in_flight() -> usize {
        8
    }
    /// Half.
    pub fn backfill_share() -> f64 {
        0.5
    }
    /// `tidegate_resolution`.
    pub fn resolution_tag() -> String {
        "tidegate_resolution".into()
    }
    /// On.
    pub fn gap_report() -> bool {
        true
    }
}

impl DeliveryConfig {
    /// Checks the shared fields; `key` is the sink's dotted key, `tiers` the
    /// store's rollup widths.
    pub fn validate(&self, key: &str, tiers: &[Duration]) -> Result<(), (String, String)> {
        let check_tier = |field: &str, t: &SinkTier| match t {
            SinkTier::Rollup(w) if !tiers.contains(w) => Err((
                format!("{key}.{field}"),
                format!(
                    "`{t}` is not one of store.rollups ({}); add it there or choose one of them",
                    tiers
                        .iter()
                        .map(|d| humantime::format_duration(*d).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            _ => Ok(()),
        };
        check_tier("tier", &self.tier)?;
        if let Some(t) = &self.over_budget_tier {
            check_tier("over_budget_tier", t)?;
            if *t == SinkTier::Raw || self.tier != SinkTier::Raw || self.daily_budget.is_none() {
                return Err((
                    format!("{key}.over_budget_tier"),
                    "needs tier = \"raw\", a daily_budget, and a rollup tier here such as \"1h\""
                        .into(),
                ));
            }
        }
        if self.batch_max_points == 0 {
            return Err((
                format!("{key}.batch_max_points"),
                "must be at least 1".into(),
            ));
        }
        if self.max_in_flight == 0 {
            return Err((format!("{key}.max_in_flight"), "must be at least 1".into()));
        }
        if !(self.backfill_share > 0.0 && self.backfill_share <= 1.0) {
            return Err((
                format!("{key}.backfill_share"),
                "must be in (0, 1], e.g. 0.5".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_wrap_midnight() {
        let w = Window::parse("22:00-06:00").unwrap();
        assert!(w.contains(23 * 60));
        assert!(w.contains(60));
        assert!(!w.contains(12 * 60));
        let day = Window::parse("08:30-17:00").unwrap();
        assert!(day.contains(8 * 60 + 30) && !day.contains(17 * 60));
        assert!(Window::parse("25:00-01:00").is_err());
        assert_eq!(w.to_string(), "22:00-06:00");
    }

    #[test]
    fn tiers_parse() {
        assert_eq!(SinkTier::parse("raw").unwrap(), SinkTier::Raw);
        assert_eq!(
            SinkTier::parse("1m").unwrap(),
            SinkTier::Rollup(Duration::from_secs(60))
        );
        assert!(SinkTier::parse("soon").is_err());
    }
}
