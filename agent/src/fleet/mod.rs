//! Configuration over MQTT from a fleet broker: the signed [`envelope`],
//! the overlay it makes on the local file, and what may change live.
//!
//! The overlay: the fleet configuration is TOML of the file's schema. Each
//! top-level section it names replaces that section of the local file
//! whole (`[store]`, `[sources]`, `[sinks]`, `[listen]`, `[ops]`, `[fleet]`),
//! except `[agent]`, whose keys are merged one by one so the local device
//! name and state directory stay. Sections it leaves out come from the
//! local file, except `[fleet]`: the fleet connection and trusted keys
//! running now stay until a fleet configuration names them again, so a key
//! rotation is not undone by the next configuration.

pub mod agent;
pub mod cli;
pub mod envelope;

/// The fleet's MQTT topics.
pub mod topics {
    /// Where configurations for `target` (a device or `all`) are retained.
    pub fn config(fleet: &str, target: &str) -> String {
        format!("tidegate/{fleet}/{target}/config")
    }
    /// A device's birth message, and its last will `offline`.
    pub fn status(fleet: &str, device: &str) -> String {
        format!("tidegate/{fleet}/{device}/status")
    }
    /// A device's report on each configuration version it received.
    pub fn config_status(fleet: &str, device: &str) -> String {
        format!("tidegate/{fleet}/{device}/config/status")
    }
}

use crate::config::{Config, ConfigError, FleetConfig};

/// The overlay as it is persisted and applied: `fleet` (an envelope's TOML)
/// with the running `[fleet]` section added when it names none.
pub fn sticky_overlay(fleet: &str, running_fleet: &FleetConfig) -> Result<String, ConfigError> {
    let mut over = table(fleet, "fleet configuration")?;
    if !over.contains_key("fleet") {
        let v = toml::Value::try_from(running_fleet).map_err(|e| ConfigError::Load {
            path: "running [fleet]".into(),
            message: e.to_string(),
        })?;
        over.insert("fleet".into(), v);
    }
    Ok(over.to_string())
}

fn table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Load {
        path: origin.into(),
        message: e.to_string(),
    })
}

/// The effective configuration: `local` (the file's TOML) under `fleet`
/// (an overlay's TOML). Environment overrides still win.
pub fn overlay(local: &str, fleet: &str) -> Result<Config, ConfigError> {
    let mut base = table(local, "local configuration")?;
    for (section, value) in table(fleet, "fleet configuration")? {
        match (section.as_str(), base.get_mut("agent"), value) {
            ("agent", Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => {
                mine.extend(theirs)
            }
            (_, _, value) => {
                base.insert(section, value);
            }
        }
    }
    Config::from_toml_with_env(&base.to_string(), "fleet configuration")
}

/// Refuses a configuration that changes what cannot change while the agent
/// runs (the store's file and layout, identity, the control socket); names
/// the first such setting. The store's limits change live.
pub fn not_live(running: &Config, new: &Config) -> Result<(), String> {
    let (a, b) = (running, new);
    // Whole sections less what changes live, so a setting added later is
    // refused until someone makes it live.
    let mut a_store = a.store.clone();
    a_store.max_disk_bytes = b.store.max_disk_bytes;
    a_store.max_age = b.store.max_age;
    a_store.min_free_disk = b.store.min_free_disk;
    let mut a_agent = a.agent.clone();
    a_agent.shutdown_timeout = b.agent.shutdown_timeout;
    let fixed: [(&str, bool); 10] = [
        ("agent.device", a.agent.device != b.agent.device),
        ("agent.state_dir", a.agent.state_dir != b.agent.state_dir),
        ("agent.log", a.agent.log != b.agent.log),
        ("agent", a_agent != b.agent),
        ("store.path", a.store_path() != b.store_path()),
        (
            "store.flush_interval",
            a.store.flush_interval != b.store.flush_interval,
        ),
        ("store.rollups", a.store.rollups != b.store.rollups),
        (
            "store (all but max_disk_bytes, max_age, min_free_disk)",
            a_store != b.store,
        ),
        ("ops", a.ops != b.ops),
        ("listen", a.listen != b.listen),
    ];
    match fixed.iter().find(|(_, changed)| *changed) {
        Some((key, _)) => Err(format!(
            "`{key}` differs from the running configuration; change it in the local file and restart the agent"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_replace_agent_merges() {
        let local = "[agent]\ndevice = \"gw1\"\nstate_dir = \"/tmp/s\"\n\
                     [[sinks.influx]]\nname = \"a\"\nurl = \"http://h:1\"\ndb = \"d\"\n\
                     [[sinks.influx]]\nname = \"b\"\nurl = \"http://h:2\"\ndb = \"d\"\n\
                     [store]\nmax_disk_bytes = \"10MiB\"\n";
        let fleet = "[agent]\nshutdown_timeout = \"9s\"\n\
                     [[sinks.influx]]\nname = \"c\"\nurl = \"http://h:3\"\ndb = \"d\"\n";
        let cfg = overlay(local, fleet).unwrap();
        assert_eq!(cfg.agent.device, "gw1");
        assert_eq!(cfg.agent.shutdown_timeout.as_secs(), 9);
        let names: Vec<_> = cfg.sinks.influx.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["c"], "[sinks] replaced whole");
        assert_eq!(cfg.store.max_disk_bytes.0, 10 << 20, "[store] kept");
        let running = Config::from_toml_with_env(local, "l").unwrap();
        assert!(not_live(&running, &cfg).is_ok());
        let cfg = overlay(local, "[store]\nflush_interval = \"2s\"\n").unwrap();
        assert!(not_live(&running, &cfg)
            .unwrap_err()
            .contains("store.flush_interval"));
    }
}
