//! What the MQTT source and the MQTT uplink share: broker URLs and the
//! connection options (client id, credentials, TLS with a CA and client
//! certificate, keep-alive).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{MqttOptions, Transport};

/// How to reach a broker, borrowed from a source's or a sink's settings.
pub struct Connection<'a> {
    /// For error messages, e.g. `source broker` or `sink cloud`.
    pub what: String,
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
    pub url: &'a str,
    /// The client id (the broker keeps a persistent session under it).
    pub client_id: String,
    /// User name, if any.
    pub username: Option<&'a str>,
    /// Its password.
    pub password: Option<&'a str>,
    /// PEM CA(s) of the broker's certificate (`mqtts://`); the system's roots if unset.
    pub ca_file: Option<&'a Path>,
    /// PEM client certificate, with `client_key`.
    pub client_cert: Option<&'a Path>,
    /// PEM key of `client_cert`.
    pub client_key: Option<&'a Path>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
}

/// The [`Connection`] of a source's or sink's settings (both name their
/// fields alike: url, username, password, ca_file, client_cert, client_key,
/// keep_alive).
macro_rules! connection {
    ($cfg:expr, $what:expr, $client_id:expr) => {
        $crate::mqtt::Connection {
            what: $what,
            url: &$cfg.url,
            client_id: $client_id,
            username: $cfg.username.as_deref(),
            password: $cfg.password.as_deref(),
            ca_file: $cfg.ca_file.as_deref(),
            client_cert: $cfg.client_cert.as_deref(),
            client_key: $cfg.client_key.as_deref(),
            keep_alive: $cfg.keep_alive,
        }
    };
}
pub(crate) use connection;

/// `host`, `port` and TLS of an `mqtt://` or `mqtts://` URL.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
    let tls = match u.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(format!(
                "`{url}`: scheme `{other}`; expected mqtt://host:1883 or mqtts://host:8883"
            ))
        }
    };
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("`{url}` has no host; expected e.g. mqtt://127.0.0.1:1883"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((
        host.to_string(),
        u.port().unwrap_or(if tls { 8883 } else { 1883 }),
        tls,
    ))
}

impl<'a> Connection<'a> {
    /// The rumqttc options (TLS files are read here); the caller adds what
    /// is its own (session, acks, packet sizes).
    pub fn options(&self) -> anyhow::Result<MqttOptions> {
        let (host, port, tls) = parse_url(self.url).map_err(anyhow::Error::msg)?;
        let mut o = MqttOptions::new(self.client_id.clone(), host, port);
        o.set_keep_alive(self.keep_alive);
        if let Some(user) = self.username {
            o.set_credentials(user, self.password.unwrap_or_default());
        }
        if tls {
            let read = |p: &Path, what: &str| {
                std::fs::read(p)
                    .with_context(|| format!("{}: cannot read {what} {}", self.what, p.display()))
            };
            let client_auth = match (self.client_cert, self.client_key) {
                (Some(c), Some(k)) => Some((read(c, "client_cert")?, read(k, "client_key")?)),
                _ => None,
            };
            let transport = match self.ca_file {
                Some(ca) => Transport::tls(read(ca, "ca_file")?, client_auth, None),
                None if client_auth.is_none() => Transport::tls_with_default_config(),
                None => anyhow::bail!(
                    "{}: a client certificate needs ca_file (the broker's CA) too",
                    self.what
                ),
            };
            o.set_transport(transport);
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("mqtt://h").unwrap(), ("h".into(), 1883, false));
        assert_eq!(
            parse_url("mqtts://127.0.0.1:9").unwrap(),
            ("127.0.0.1".into(), 9, true)
        );
        assert!(parse_url("http://h").is_err());
    }
}
