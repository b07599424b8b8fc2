//! Configuration over MQTT from a fleet broker: the signed [`envelope`],
//! the overlay it makes on the local file, and what may change live.
//!
//! The overlay: a fleet configuration is TOML of the file's schema. Each
//! top-level section it names replaces that section of what lies under it
//! whole (`[store]`, `[sources]`, `[sinks]`, `[listen]`, `[ops]`, `[fleet]`),
//! except `[agent]`, whose keys are merged one by one so the local device
//! name and state directory stay. Two layers lie over the local file: the
//! fleet-wide configuration (`all`), then the device's own, so a device
//! configuration overrides the fleet-wide one section by section, and each
//! layer keeps its own version sequence. Sections no layer names come from
//! the local file, except `[fleet]`: the fleet connection and trusted keys
//! running now stay until a fleet configuration names them again, so a key
//! rotation is not undone by the next configuration ([`Overlays::fleet`]).

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

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};

/// One fleet configuration as the device keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Applied {
    /// The envelope's version.
    pub version: u64,
    /// The envelope's configuration (TOML).
    pub overlay: String,
    /// The envelope's signature: a redelivery of it is not news.
    pub signature: String,
}

/// The fleet configurations a device runs over its local file: the
/// fleet-wide one (`all`), then its own, whose sections win over it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Overlays {
    /// From `tidegate/{fleet}/all/config`.
    pub all: Option<Applied>,
    /// From `tidegate/{fleet}/{device}/config`.
    pub device: Option<Applied>,
    /// The `[fleet]` section an accepted configuration named last: it
    /// stays, over both layers, until another names one, so a key
    /// rotation is not undone by the next configuration of either layer.
    pub fleet: Option<String>,
}

impl Overlays {
    /// No fleet configuration: the local file alone.
    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.device.is_none()
    }

    /// These overlays with `applied` as the `all` layer (`all`) or the device's.
    pub fn with(&self, all: bool, applied: Applied) -> Result<Overlays, ConfigError> {
        let mut o = self.clone();
        let mut t = table(&applied.overlay, "fleet configuration")?;
        if let Some(f) = t.remove("fleet") {
            let mut only = toml::Table::new();
            only.insert("fleet".into(), f);
            o.fleet = Some(only.to_string());
        }
        *if all { &mut o.all } else { &mut o.device } = Some(applied);
        Ok(o)
    }

    /// The effective configuration over the local file's TOML.
    pub fn compose(&self, local: &str) -> Result<Config, ConfigError> {
        let layers = [&self.all, &self.device]
            .into_iter()
            .flatten()
            .map(|a| a.overlay.as_str())
            .chain(self.fleet.as_deref());
        overlay(local, layers)
    }

    /// The highest version of the two layers (0: none).
    pub fn version(&self) -> u64 {
        [&self.all, &self.device]
            .into_iter()
            .flatten()
            .map(|a| a.version)
            .max()
            .unwrap_or(0)
    }

    /// Provenance for `status`: e.g. `all v3 + device v5`, or `local file`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = &self.all {
            parts.push(format!("all v{}", a.version));
        }
        if let Some(d) = &self.device {
            parts.push(format!("device v{}", d.version));
        }
        if parts.is_empty() {
            "local file".into()
        } else {
            format!("local file + {}", parts.join(" + "))
        }
    }
}

fn table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Load {
        path: origin.into(),
        message: e.to_string(),
    })
}

/// The effective configuration: `local` (the file's TOML) under each of
/// `layers` in turn (TOML overlays; see the module's doc). Environment
/// overrides still win.
pub fn overlay<'a>(
    local: &str,
    layers: impl IntoIterator<Item = &'a str>,
) -> Result<Config, ConfigError> {
    let mut base = table(local, "local configuration")?;
    for layer in layers {
        for (section, value) in table(layer, "fleet configuration")? {
            match (section.as_str(), base.get_mut("agent"), value) {
                ("agent", Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => {
                    mine.extend(theirs)
                }
                (_, _, value) => {
                    base.insert(section, value);
                }
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
        let cfg = overlay(local, [fleet]).unwrap();
        assert_eq!(cfg.agent.device, "gw1");
        assert_eq!(cfg.agent.shutdown_timeout.as_secs(), 9);
        let names: Vec<_> = cfg.sinks.influx.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["c"], "[sinks] replaced whole");
        assert_eq!(cfg.store.max_disk_bytes.0, 10 << 20, "[store] kept");
        let running = Config::from_toml_with_env(local, "l").unwrap();
        assert!(not_live(&running, &cfg).is_ok());
        let cfg = overlay(local, ["[store]\nflush_interval = \"2s\"\n"]).unwrap();
        assert!(not_live(&running, &cfg)
            .unwrap_err()
            .contains("store.flush_interval"));
    }

    fn applied(version: u64, overlay: &str) -> Applied {
        Applied {
            version,
            overlay: overlay.into(),
            signature: format!("sig{version}"),
        }
    }

    #[test]
    fn the_device_layer_wins_over_all_whatever_the_order() {
        let k: Vec<String> = (0..3)
            .map(|_| envelope::PrivateKey::generate().unwrap().public().to_text())
            .collect();
        let local = &format!(
            "[agent]\ndevice = \"gw1\"\nstate_dir = \"/tmp/s\"\n\
             [fleet]\nurl = \"mqtt://h:1\"\nfleet = \"f\"\ntrusted_keys = [\"{}\"]\n",
            k[0]
        );
        let sink = |n: &str| {
            format!("[[sinks.influx]]\nname = \"{n}\"\nurl = \"http://h:1\"\ndb = \"d\"\n")
        };
        let names = |o: &Overlays| -> Vec<String> {
            o.compose(local)
                .unwrap()
                .sinks
                .influx
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        let o = Overlays::default()
            .with(false, applied(2, &sink("mine")))
            .unwrap();
        assert_eq!(names(&o), ["mine"]);
        // A newer fleet-wide configuration: its [sinks] lies under the device's.
        let store = "[store]\nmax_age = \"3d\"\n";
        let o = o
            .with(true, applied(7, &format!("{}{store}", sink("all"))))
            .unwrap();
        assert_eq!(names(&o), ["mine"]);
        assert_eq!(
            o.compose(local).unwrap().store.max_age.map(|d| d.as_secs()),
            Some(3 * 86400),
            "the sections the device leaves alone come from `all`"
        );
        assert_eq!(
            (o.version(), o.describe()),
            (7, "local file + all v7 + device v2".into())
        );
        // Without the device layer, `all` shows through.
        let only_all = Overlays {
            device: None,
            ..o.clone()
        };
        assert_eq!(names(&only_all), ["all"]);
        // [fleet] named by the device layer, then `all` names another: the later wins.
        let fleet = |k: &str| {
            format!("[fleet]\nurl = \"mqtt://h:1\"\nfleet = \"f\"\ntrusted_keys = [\"{k}\"]\n")
        };
        let o = o.with(false, applied(3, &fleet(&k[1]))).unwrap();
        assert_eq!(o.compose(local).unwrap().fleet.trusted_keys, [k[1].clone()]);
        let o = o.with(true, applied(8, &fleet(&k[2]))).unwrap();
        assert_eq!(o.compose(local).unwrap().fleet.trusted_keys, [k[2].clone()]);
        let o = o.with(true, applied(9, &sink("later"))).unwrap();
        assert_eq!(
            o.compose(local).unwrap().fleet.trusted_keys,
            [k[2].clone()],
            "[fleet] sticks"
        );
    }
}
