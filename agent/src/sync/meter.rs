//! Metered links: a sink may send only inside its daily windows, and only so
//! many bytes a day (counted as on the wire, after compression).

use std::time::Duration;

use crate::config::Window;

/// Local wall-clock time, as the schedule sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTime {
    /// Days since the epoch, local calendar (changes at local midnight).
    pub day: i64,
    /// Minutes since local midnight.
    pub minute: u16,
    /// Seconds into the minute.
    pub second: u8,
}

impl LocalTime {
    /// Now, in the gateway's time zone.
    // time_t and c_long are 32 bits on some ARM targets: the conversions are real there.
    #[allow(clippy::useless_conversion)]
    pub fn now() -> LocalTime {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as libc::time_t)
            .unwrap_or(0);
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
        let ok = !unsafe { libc::localtime_r(&t, &mut tm) }.is_null();
        let offset = if ok { i64::from(tm.tm_gmtoff) } else { 0 };
        let local = i64::from(t) + offset;
        LocalTime {
            day: local.div_euclid(86_400),
            minute: (local.rem_euclid(86_400) / 60) as u16,
            second: (local.rem_euclid(60)) as u8,
        }
    }
}

/// Whether a sink may send now, and if not, why and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Send.
    Open,
    /// Hold back; look again after this long.
    Closed {
        /// For `status`.
        why: String,
        /// When it is worth looking again.
        retry_in: Duration,
    },
}

/// A sink's schedule and daily byte budget.
#[derive(Debug, Clone)]
pub struct Meter {
    schedule: Vec<Window>,
    budget: Option<u64>,
    day: i64,
    bytes_today: u64,
}

impl Meter {
    /// Always open, when `schedule` is empty and `budget` unset.
    pub fn new(schedule: Vec<Window>, budget: Option<u64>) -> Meter {
        Meter {
            schedule,
            budget,
            day: i64::MIN,
            bytes_today: 0,
        }
    }

    /// Counts bytes put on the wire.
    pub fn add(&mut self, now: LocalTime, bytes: u64) {
        self.roll(now);
        self.bytes_today += bytes;
    }

    /// Bytes sent today.
    pub fn bytes_today(&mut self, now: LocalTime) -> u64 {
        self.roll(now);
        self.bytes_today
    }

    /// True once today's budget is spent.
    pub fn over_budget(&mut self, now: LocalTime) -> bool {
        self.roll(now);
        self.budget.is_some_and(|b| self.bytes_today >= b)
    }

    fn roll(&mut self, now: LocalTime) {
        if now.day != self.day {
            self.day = now.day;
            self.bytes_today = 0;
        }
    }

    /// May the sink send at `now`?
    pub fn gate(&mut self, now: LocalTime) -> Gate {
        let to_next_minute = Duration::from_secs(60 - now.second.min(59) as u64);
        if self.over_budget(now) {
            let to_midnight = Duration::from_secs((1440 - now.minute as u64) * 60)
                .saturating_sub(Duration::from_secs(now.second as u64));
            return Gate::Closed {
                why: format!(
                    "daily budget of {} bytes spent; sending again after local midnight",
                    self.budget.unwrap_or(0)
                ),
                retry_in: to_midnight.max(Duration::from_secs(1)),
            };
        }
        if self.schedule.is_empty() || self.schedule.iter().any(|w| w.contains(now.minute)) {
            return Gate::Open;
        }
        let windows: Vec<String> = self.schedule.iter().map(|w| w.to_string()).collect();
        Gate::Closed {
            why: format!(
                "outside the sink's schedule ({}); buffering",
                windows.join(", ")
            ),
            retry_in: to_next_minute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64, h: u16, m: u16) -> LocalTime {
        LocalTime {
            day,
            minute: h * 60 + m,
            second: 0,
        }
    }

    #[test]
    fn schedule_opens_and_closes() {
        let mut m = Meter::new(vec![Window::parse("22:00-06:00").unwrap()], None);
        assert_eq!(m.gate(at(1, 23, 0)), Gate::Open);
        assert!(matches!(m.gate(at(1, 12, 0)), Gate::Closed { .. }));
        assert_eq!(Meter::new(vec![], None).gate(at(1, 12, 0)), Gate::Open);
    }

    #[test]
    fn budget_closes_until_midnight_and_resets() {
        let mut m = Meter::new(vec![], Some(1000));
        m.add(at(1, 10, 0), 600);
        assert_eq!(m.gate(at(1, 10, 1)), Gate::Open);
        m.add(at(1, 10, 2), 600);
        match m.gate(at(1, 23, 0)) {
            Gate::Closed { retry_in, why } => {
                assert_eq!(retry_in, Duration::from_secs(3600));
                assert!(why.contains("budget"), "{why}");
            }
            g => panic!("{g:?}"),
        }
        assert_eq!(m.gate(at(2, 0, 1)), Gate::Open);
        assert_eq!(m.bytes_today(at(2, 0, 1)), 0);
    }
}
