//! Tidegate: a lightweight edge agent for IoT gateways.
//!
//! The library reads as the pipeline: [`source`] → [`store`] → [`sync`], with
//! [`ops`] for what the operator sees and [`config`] for what they say.

pub mod config;
pub mod demo;
pub mod fleet;
pub mod measure;
pub mod mqtt;
pub mod ops;
pub mod point;
pub mod run;
pub mod source;
pub mod store;
pub mod sync;

/// Installs the one TLS crypto provider of the whole process (ring). Two
/// providers linked in (rumqttc's and reqwest's defaults) make rustls panic at
/// the first TLS connection unless one is chosen, so we choose at start-up.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
