//! The signed envelope a fleet configuration travels in, and its checks.
//!
//! ```json
//! {"fleet":"plant-a","target":"all","version":7,"issued_at":1764053000123,
//!  "allow_fleet_change":false,"config":"[sinks.influx]\n...",
//!  "key_id":"3f1c0a9e5b7d2c11","signature":"<base64, 64 bytes>"}
//! ```
//!
//! `config` is TOML text, the same schema as the file on the gateway. A
//! string rather than a JSON object: the operator signs exactly the text they
//! wrote and reviewed, the agent checks the signature over those bytes before
//! parsing anything, and there is no JSON canonicalisation of maps or floats
//! to get wrong. The signature is Ed25519 over [`Envelope::signed_bytes`]:
//! the domain tag `tidegate-fleet-v1\n` followed by the compact JSON of
//! `fleet, target, version, issued_at, allow_fleet_change, config` in that
//! order (serde_json, strings escaped as serde_json does).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::config::{Config, FleetConfig};

/// Prefixed to the signed bytes so a fleet signature can mean nothing else.
const DOMAIN: &[u8] = b"tidegate-fleet-v1\n";

/// A configuration for one device or the whole fleet, signed.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The fleet it is meant for.
    pub fleet: String,
    /// A device name, or `all`.
    pub target: String,
    /// Increases with every configuration the operator issues; a device
    /// refuses any version not newer than the one it runs.
    pub version: u64,
    /// When it was signed, Unix milliseconds.
    pub issued_at: u64,
    /// The configuration may change or turn off the `[fleet]` connection.
    #[serde(default)]
    pub allow_fleet_change: bool,
    /// The overlay: TOML, the schema of the configuration file.
    pub config: String,
    /// Which key signed it: [`PublicKey::id`].
    #[serde(default)]
    pub key_id: Option<String>,
    /// Ed25519 signature of [`Envelope::signed_bytes`], base64.
    #[serde(default)]
    pub signature: Option<String>,
}

/// Everything but the signature, in its fixed order.
#[derive(Serialize)]
struct Signed<'a> {
    fleet: &'a str,
    target: &'a str,
    version: u64,
    issued_at: u64,
    allow_fleet_change: bool,
    config: &'a str,
}

impl Envelope {
    /// An unsigned envelope issued now.
    pub fn new(fleet: &str, target: &str, version: u64, config: &str) -> Envelope {
        Envelope {
            fleet: fleet.into(),
            target: target.into(),
            version,
            issued_at: now_ms(),
            allow_fleet_change: false,
            config: config.into(),
            key_id: None,
            signature: None,
        }
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = DOMAIN.to_vec();
        serde_json::to_writer(
            &mut out,
            &Signed {
                fleet: &self.fleet,
                target: &self.target,
                version: self.version,
                issued_at: self.issued_at,
                allow_fleet_change: self.allow_fleet_change,
                config: &self.config,
            },
        )
        .expect("serialising strings and numbers into a Vec cannot fail");
        out
    }

    /// Signs with `key`, setting `key_id` and `signature`.
    pub fn sign(&mut self, key: &PrivateKey) {
        let sig = key.0.sign(&self.signed_bytes());
        self.key_id = Some(key.public().id());
        self.signature = Some(B64.encode(sig.to_bytes()));
    }
}

/// An Ed25519 signing key; on disk, the 32-byte seed in base64 (mode 0600).
pub struct PrivateKey(SigningKey);

impl PrivateKey {
    /// A new key from the kernel's random source.
    pub fn generate() -> std::io::Result<PrivateKey> {
        use std::io::Read;
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
        Ok(PrivateKey(SigningKey::from_bytes(&seed)))
    }

    /// From the file's text (base64 seed).
    pub fn parse(text: &str) -> Result<PrivateKey, String> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|e| format!("not a base64 private key: {e}"))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "a private key is 32 bytes (base64)".to_string())?;
        Ok(PrivateKey(SigningKey::from_bytes(&seed)))
    }

    /// The file's text.
    pub fn to_text(&self) -> String {
        format!("{}\n", B64.encode(self.0.to_bytes()))
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
}

/// An Ed25519 public key, written as base64 of its 32 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// From base64.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|e| format!("`{text}` is not a base64 Ed25519 public key: {e}"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("`{text}`: an Ed25519 public key is 32 bytes"))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| format!("`{text}` is not an Ed25519 public key: {e}"))
    }

    /// Base64 of the key.
    pub fn to_text(&self) -> String {
        B64.encode(self.0.as_bytes())
    }

    /// A short name: hex of the key's first 8 bytes.
    pub fn id(&self) -> String {
        self.0.as_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Why an envelope was refused; the running configuration stays.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Rejection {
    /// Not JSON, or not an envelope.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// No signature or key id.
    #[error("unsigned: the envelope carries no signature")]
    Unsigned,
    /// The key id names no trusted key.
    #[error("unknown key `{0}`: not in fleet.trusted_keys")]
    UnknownKey(String),
    /// The signature does not match.
    #[error("bad signature (key `{0}`)")]
    BadSignature(String),
    /// Meant for another fleet.
    #[error("wrong fleet `{got}` (this device is in `{want}`)")]
    WrongFleet {
        /// The envelope's.
        got: String,
        /// Ours.
        want: String,
    },
    /// Meant for another device.
    #[error("wrong device `{got}` (this device is `{want}`)")]
    WrongDevice {
        /// The envelope's.
        got: String,
        /// Ours.
        want: String,
    },
    /// Not newer than what runs.
    #[error("replay: version {got} is not newer than the applied version {applied}")]
    Replay {
        /// The envelope's.
        got: u64,
        /// Ours.
        applied: u64,
    },
    /// Issued too far in the future.
    #[error("issued_at is {ahead_ms} ms in the future (more than {max_ms} ms of clock skew)")]
    FromTheFuture {
        /// How far ahead.
        ahead_ms: u64,
        /// The allowed skew.
        max_ms: u64,
    },
    /// Does not parse or validate.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// Would change or turn off this device's fleet connection.
    #[error("the config would cut the device off its fleet broker ({0}); set allow_fleet_change to mean it")]
    FleetCutOff(String),
    /// Changes a setting that cannot change while the agent runs.
    #[error("cannot change while running: {0}")]
    NotLive(String),
}

impl Rejection {
    /// A short machine-readable reason for status messages.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Malformed(_) => "malformed",
            Rejection::Unsigned => "unsigned",
            Rejection::UnknownKey(_) => "unknown_key",
            Rejection::BadSignature(_) => "bad_signature",
            Rejection::WrongFleet { .. } => "wrong_fleet",
            Rejection::WrongDevice { .. } => "wrong_device",
            Rejection::Replay { .. } => "replay",
            Rejection::FromTheFuture { .. } => "future",
            Rejection::InvalidConfig(_) => "invalid_config",
            Rejection::FleetCutOff(_) => "fleet_cut_off",
            Rejection::NotLive(_) => "not_live",
        }
    }
}

/// What an envelope is checked against: the running agent.
pub struct Check<'a> {
    /// The configuration running now (its `[fleet]` gives fleet, keys, skew).
    pub running: &'a Config,
    /// The highest version accepted so far for the envelope's target (0: none).
    pub applied_version: u64,
    /// The local file's TOML text, the base under the overlays.
    pub local_toml: &'a str,
    /// The fleet overlays running now.
    pub overlays: &'a super::Overlays,
    /// Now, Unix milliseconds.
    pub now_ms: u64,
}

impl Check<'_> {
    /// Checks `env` in order (signature, address, freshness, content) and
    /// returns the effective configuration it would make, with the overlays
    /// to persist.
    pub fn verify(&self, env: &Envelope) -> Result<(Config, super::Overlays), Rejection> {
        let fleet = &self.running.fleet;
        let (Some(key_id), Some(sig_text)) = (&env.key_id, &env.signature) else {
            return Err(Rejection::Unsigned);
        };
        let key = fleet
            .trusted_keys
            .iter()
            .filter_map(|k| PublicKey::parse(k).ok())
            .find(|k| &k.id() == key_id)
            .ok_or_else(|| Rejection::UnknownKey(key_id.clone()))?;
        let sig = B64
            .decode(sig_text)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| Rejection::BadSignature(key_id.clone()))?;
        key.0
            .verify(&env.signed_bytes(), &sig)
            .map_err(|_| Rejection::BadSignature(key_id.clone()))?;
        if env.fleet != fleet.fleet {
            return Err(Rejection::WrongFleet {
                got: env.fleet.clone(),
                want: fleet.fleet.clone(),
            });
        }
        let device = &self.running.agent.device;
        if env.target != "all" && &env.target != device {
            return Err(Rejection::WrongDevice {
                got: env.target.clone(),
                want: device.clone(),
            });
        }
        if env.version <= self.applied_version {
            return Err(Rejection::Replay {
                got: env.version,
                applied: self.applied_version,
            });
        }
        let max = fleet.max_clock_skew.as_millis() as u64;
        if env.issued_at > self.now_ms + max {
            return Err(Rejection::FromTheFuture {
                ahead_ms: env.issued_at - self.now_ms,
                max_ms: max,
            });
        }
        let invalid = |e: crate::config::ConfigError| Rejection::InvalidConfig(e.to_string());
        let applied = super::Applied {
            version: env.version,
            overlay: env.config.clone(),
            signature: sig_text.clone(),
        };
        let overlays = self
            .overlays
            .with(env.target == "all", applied)
            .map_err(invalid)?;
        let cfg = overlays.compose(self.local_toml).map_err(invalid)?;
        if !env.allow_fleet_change {
            if let Some(what) = fleet_change(fleet, &cfg.fleet) {
                return Err(Rejection::FleetCutOff(what));
            }
        }
        super::not_live(self.running, &cfg).map_err(Rejection::NotLive)?;
        Ok((cfg, overlays))
    }
}

/// What about the fleet connection differs, if anything does.
fn fleet_change(old: &FleetConfig, new: &FleetConfig) -> Option<String> {
    if new.url.is_none() {
        return Some("fleet.url removed: fleet configuration would be off".into());
    }
    let fields: [(&str, bool); 7] = [
        ("fleet.url", old.url != new.url),
        ("fleet.fleet", old.fleet != new.fleet),
        ("fleet.client_id", old.client_id != new.client_id),
        ("fleet.username", old.username != new.username),
        ("fleet.password", old.password != new.password),
        ("fleet.ca_file", old.ca_file != new.ca_file),
        (
            "fleet.client_cert",
            old.client_cert != new.client_cert || old.client_key != new.client_key,
        ),
    ];
    fields
        .iter()
        .find(|(_, changed)| *changed)
        .map(|(k, _)| format!("{k} changed"))
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(key: &PublicKey) -> String {
        format!(
            "[agent]\ndevice = \"gw1\"\nstate_dir = \"/tmp/x\"\n\
             [fleet]\nurl = \"mqtt://127.0.0.1:1883\"\nfleet = \"f\"\ntrusted_keys = [\"{}\"]\n",
            key.to_text()
        )
    }

    fn envelope(version: u64, config: &str) -> Envelope {
        Envelope::new("f", "all", version, config)
    }

    const SINK: &str =
        "[[sinks.influx]]\nname = \"up\"\nurl = \"http://127.0.0.1:8086\"\ndb = \"d\"\n";

    #[test]
    fn every_rejection_has_its_reason() {
        let key = PrivateKey::generate().unwrap();
        let text = local(&key.public());
        let running = Config::from_toml_with_env(&text, "local").unwrap();
        let check = Check {
            running: &running,
            applied_version: 5,
            local_toml: &text,
            overlays: &Default::default(),
            now_ms: now_ms(),
        };
        let signed = |mut e: Envelope| {
            e.sign(&key);
            e
        };
        let ok = signed(envelope(6, SINK));
        let (cfg, _) = check.verify(&ok).unwrap();
        assert_eq!(cfg.sinks.influx[0].name, "up");
        assert_eq!(cfg.fleet.fleet, "f", "the local [fleet] stays");

        let code = |e: &Envelope| check.verify(e).unwrap_err().code();
        assert_eq!(code(&envelope(6, SINK)), "unsigned");
        let stranger = PrivateKey::generate().unwrap();
        let mut e = envelope(6, SINK);
        e.sign(&stranger);
        assert_eq!(code(&e), "unknown_key");
        let mut e = ok.clone();
        e.config.push('\n');
        assert_eq!(code(&e), "bad_signature");
        let mut e = ok.clone();
        e.version = 7;
        assert_eq!(code(&e), "bad_signature", "the version is signed");
        let mut e = envelope(6, SINK);
        e.fleet = "g".into();
        assert_eq!(code(&signed(e)), "wrong_fleet");
        let mut e = envelope(6, SINK);
        e.target = "gw2".into();
        assert_eq!(code(&signed(e)), "wrong_device");
        let mut e = envelope(6, SINK);
        e.target = "gw1".into();
        assert!(check.verify(&signed(e)).is_ok());
        assert_eq!(code(&signed(envelope(5, SINK))), "replay");
        let mut e = envelope(6, SINK);
        e.issued_at += 3_600_000;
        assert_eq!(code(&signed(e)), "future");
        assert_eq!(
            code(&signed(envelope(6, "[[sinks.influx]]\nname = \"up\"\n"))),
            "invalid_config"
        );
        assert_eq!(
            code(&signed(envelope(6, "[store]\nflush_intervall = \"1s\"\n"))),
            "invalid_config"
        );
        let moved = format!(
            "[fleet]\nurl = \"mqtt://10.0.0.1:1883\"\nfleet = \"f\"\ntrusted_keys = [\"{}\"]\n",
            key.public().to_text()
        );
        assert_eq!(code(&signed(envelope(6, &moved))), "fleet_cut_off");
        let mut e = envelope(6, &moved);
        e.allow_fleet_change = true;
        assert!(check.verify(&signed(e)).is_ok());
    }

    #[test]
    fn a_trusted_key_names_its_successor() {
        let old = PrivateKey::generate().unwrap();
        let new = PrivateKey::generate().unwrap();
        let text = local(&old.public());
        let running = Config::from_toml_with_env(&text, "local").unwrap();
        let check = Check {
            running: &running,
            applied_version: 0,
            local_toml: &text,
            overlays: &Default::default(),
            now_ms: now_ms(),
        };
        let rotate = format!(
            "[fleet]\nurl = \"mqtt://127.0.0.1:1883\"\nfleet = \"f\"\ntrusted_keys = [\"{}\"]\n",
            new.public().to_text()
        );
        let mut e = envelope(1, &rotate);
        e.sign(&old);
        let (rotated, overlays) = check.verify(&e).unwrap();
        let check = Check {
            running: &rotated,
            applied_version: 1,
            overlays: &overlays,
            ..check
        };
        let mut e = envelope(2, SINK);
        e.sign(&old);
        assert_eq!(check.verify(&e).unwrap_err().code(), "unknown_key");
        e.sign(&new);
        let (cfg, _) = check.verify(&e).unwrap();
        assert_eq!(
            cfg.fleet.trusted_keys,
            [new.public().to_text()],
            "a configuration without [fleet] keeps the rotated key"
        );
    }

    #[test]
    fn keys_round_trip_as_text() {
        let k = PrivateKey::generate().unwrap();
        let again = PrivateKey::parse(&k.to_text()).unwrap();
        assert_eq!(k.public(), again.public());
        assert_eq!(PublicKey::parse(&k.public().to_text()).unwrap(), k.public());
        assert_eq!(k.public().id().len(), 16);
    }
}
