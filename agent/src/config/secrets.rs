//! Secrets out of the configuration file: a password or token written as
//! `"credential:NAME"` is read at start-up from systemd's credentials
//! directory (`LoadCredential=`, `$CREDENTIALS_DIRECTORY`), so the file itself
//! can be world-readable and shipped by configuration management.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

/// The prefix that marks a value as a reference to a credential file.
pub const PREFIX: &str = "credential:";

/// Where a credential named `name` is looked for: the unit's
/// `LoadCredential=tidegate:/etc/tidegate/credentials` hands the directory's
/// files over as `tidegate_<file>`; a credential loaded under its own name
/// (`LoadCredential=influx_token:...`) is found too.
fn candidates(dir: &Path, name: &str) -> [PathBuf; 2] {
    [dir.join(format!("tidegate_{name}")), dir.join(name)]
}

/// Replaces a `credential:NAME` value by the file's content (one trailing
/// newline removed); other values are left alone.
fn resolve(value: &mut Option<String>, key: &str, dir: Option<&Path>) -> Result<(), ConfigError> {
    let Some(name) = value.as_deref().and_then(|v| v.strip_prefix(PREFIX)) else {
        return Ok(());
    };
    let invalid = |message: String| ConfigError::Invalid {
        key: key.to_string(),
        message,
    };
    if name.is_empty() || name.contains('/') {
        return Err(invalid(format!(
            "`{PREFIX}{name}` must name a credential file, e.g. \"{PREFIX}influx_token\""
        )));
    }
    let Some(dir) = dir else {
        return Err(invalid(format!(
            "refers to credential `{name}` but $CREDENTIALS_DIRECTORY is not set; run under systemd with \
             LoadCredential= (see systemd/tidegate.service) or set the variable to a directory holding `{name}`"
        )));
    };
    for path in candidates(dir, name) {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let text = text.strip_suffix('\n').unwrap_or(&text);
            *value = Some(text.strip_suffix('\r').unwrap_or(text).to_string());
            return Ok(());
        }
    }
    Err(invalid(format!(
        "credential `{name}` not found in {} (looked for tidegate_{name} and {name}); put it in \
         /etc/tidegate/credentials/{name} (mode 0600, root) and restart the service",
        dir.display()
    )))
}

impl Config {
    /// Reads every `credential:NAME` secret from `$CREDENTIALS_DIRECTORY`.
    pub fn resolve_credentials(&mut self) -> Result<(), ConfigError> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        self.resolve_credentials_in(dir.as_deref())
    }

    /// [`Config::resolve_credentials`] with the directory given.
    pub fn resolve_credentials_in(&mut self, dir: Option<&Path>) -> Result<(), ConfigError> {
        resolve(&mut self.listen.token, "listen.token", dir)?;
        resolve(&mut self.fleet.password, "fleet.password", dir)?;
        for (i, s) in self.sources.mqtt.iter_mut().enumerate() {
            resolve(&mut s.password, &format!("sources.mqtt[{i}].password"), dir)?;
        }
        for (i, s) in self.sinks.mqtt.iter_mut().enumerate() {
            resolve(&mut s.password, &format!("sinks.mqtt[{i}].password"), dir)?;
        }
        for (i, s) in self.sinks.kafka.iter_mut().enumerate() {
            resolve(&mut s.password, &format!("sinks.kafka[{i}].password"), dir)?;
        }
        for (i, s) in self.sinks.influx.iter_mut().enumerate() {
            resolve(&mut s.password, &format!("sinks.influx[{i}].password"), dir)?;
            resolve(&mut s.token, &format!("sinks.influx[{i}].token"), dir)?;
        }
        for (i, s) in self.sinks.remote_write.iter_mut().enumerate() {
            resolve(
                &mut s.password,
                &format!("sinks.remote_write[{i}].password"),
                dir,
            )?;
            resolve(
                &mut s.bearer_token,
                &format!("sinks.remote_write[{i}].bearer_token"),
                dir,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::from_toml_with_env(
            "[[sinks.influx]]\nname = \"a\"\nurl = \"http://x\"\ndb = \"d\"\npassword = \"credential:influx_pw\"\n\
             [[sinks.remote_write]]\nname = \"b\"\nurl = \"http://y/api/v1/write\"\nbearer_token = \"plain\"\n",
            "t",
        )
        .unwrap()
    }

    #[test]
    fn credentials_come_from_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tidegate_influx_pw"), "s3cret\n").unwrap();
        let mut c = cfg();
        c.resolve_credentials_in(Some(dir.path())).unwrap();
        assert_eq!(c.sinks.influx[0].password.as_deref(), Some("s3cret"));
        assert_eq!(
            c.sinks.remote_write[0].bearer_token.as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn a_missing_credential_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = cfg()
            .resolve_credentials_in(Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sinks.influx[0].password"), "{err}");
        assert!(err.contains("influx_pw"), "{err}");
        let err = cfg().resolve_credentials_in(None).unwrap_err().to_string();
        assert!(err.contains("CREDENTIALS_DIRECTORY"), "{err}");
    }
}
