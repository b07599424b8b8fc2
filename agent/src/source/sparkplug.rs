//! Sparkplug B (Eclipse Sparkplug 3.0) over MQTT: topics
//! `spBv1.0/<group>/<type>/<edge node>[/<device>]`, payloads a protobuf
//! `Payload` of metrics. Births (`NBIRTH`, `DBIRTH`) name every metric and
//! may give it an alias and a datatype; data messages (`NDATA`, `DDATA`)
//! often carry only the alias, so the decoder keeps each node's and
//! device's births. Deaths, commands and `STATE` carry no measurements.
//!
//! Each numeric metric (integers of every width, float, double, boolean as
//! 1/0) becomes a point: field = the metric's name, tags `group`, `edge_node`
//! and `device` (for a device), time = the metric's timestamp, else the
//! payload's, else the arrival. Metrics without a number (strings, bytes,
//! datasets, nulls) and the `Node Control/`, `Device Control/` and `bdSeq`
//! bookkeeping are skipped; a metric that names neither a name nor an alias
//! known from a birth rejects the message (`unknown_alias`: the node must
//! be asked to rebirth).

use std::collections::HashMap;

use prost::Message;

use super::parse::Reject;

/// The `Payload` message (fields the decoder reads; others are skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the epoch.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// The metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// Message sequence number, 0..=255.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
}

/// One metric of a [`Payload`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// The name (in births; in data messages unless an alias is used).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// The alias a birth gave the name.
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Milliseconds since the epoch.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A Sparkplug datatype (see [`DataType`]).
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    /// The value is null.
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    /// The value.
    #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15")]
    pub value: Option<Value>,
}

/// A metric's value.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// Int8/16/32 (two's complement in 32 bits) and UInt8/16/32.
    #[prost(uint32, tag = "10")]
    Int(u32),
    /// Int64 (two's complement), UInt64, DateTime.
    #[prost(uint64, tag = "11")]
    Long(u64),
    /// Float.
    #[prost(float, tag = "12")]
    Float(f32),
    /// Double.
    #[prost(double, tag = "13")]
    Double(f64),
    /// Boolean.
    #[prost(bool, tag = "14")]
    Boolean(bool),
    /// String, Text, UUID.
    #[prost(string, tag = "15")]
    String(String),
}

/// Sparkplug datatypes the decoder turns into numbers.
pub struct DataType;

impl DataType {
    /// Int8.
    pub const INT8: u32 = 1;
    /// Int16.
    pub const INT16: u32 = 2;
    /// Int32.
    pub const INT32: u32 = 3;
    /// Int64.
    pub const INT64: u32 = 4;
    /// UInt64.
    pub const UINT64: u32 = 8;
    /// DateTime (ms since the epoch: not a measurement).
    pub const DATETIME: u32 = 13;
}

/// The births of one edge node or device: alias → (name, datatype), and
/// name → datatype.
#[derive(Default)]
struct Births {
    aliases: HashMap<u64, (String, u32)>,
    types: HashMap<String, u32>,
}

/// Decodes Sparkplug B messages, remembering births.
#[derive(Default)]
pub struct Sparkplug {
    /// By (group, edge node, device or "").
    births: HashMap<(String, String, String), Births>,
}

/// Most nodes and devices whose births are kept (a bound against a
/// broker full of strangers).
const MAX_BIRTHS: usize = 10_000;

/// A message decoded: its tags, and per numeric metric its field name,
/// time (ns) and value.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    /// `group`, `edge_node` and (for a device) `device`.
    pub tags: Vec<(&'static str, String)>,
    /// (field, ns, value) per metric.
    pub points: Vec<(String, i64, f64)>,
}

impl Sparkplug {
    /// Decodes a message on `topic` received at `now_ns`: the tags
    /// (`group`, `edge_node`, `device`) and the points' fields, times and
    /// values. `Ok` with no metrics for messages that carry no measurements.
    pub fn decode(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ns: i64,
        max_fields: usize,
    ) -> Result<Decoded, Reject> {
        let levels: Vec<&str> = topic.split('/').collect();
        let (group, kind, node, device) = match levels[..] {
            ["spBv1.0", g, k, n] => (g, k, n, ""),
            ["spBv1.0", g, k, n, d] => (g, k, n, d),
            _ => return Err(Reject::BadSparkplug(format!("topic `{topic}`"))),
        };
        let birth = matches!(kind, "NBIRTH" | "DBIRTH");
        if !birth && !matches!(kind, "NDATA" | "DDATA") {
            return Ok(Decoded::default());
        }
        let p = Payload::decode(payload).map_err(|e| Reject::BadSparkplug(e.to_string()))?;
        if p.metrics.len() > max_fields {
            return Err(Reject::TooManyFields);
        }
        let mut tags = vec![
            ("group", group.to_string()),
            ("edge_node", node.to_string()),
        ];
        if !device.is_empty() {
            tags.push(("device", device.to_string()));
        }
        let key = (group.to_string(), node.to_string(), device.to_string());
        if birth {
            if kind == "NBIRTH" {
                // A node's rebirth starts over, its devices' births included.
                self.births.retain(|k, _| !(k.0 == key.0 && k.1 == key.1));
            }
            if self.births.len() >= MAX_BIRTHS {
                self.births.clear();
            }
            let b = self.births.entry(key.clone()).or_default();
            b.aliases.clear();
            b.types.clear();
            for m in &p.metrics {
                if let (Some(name), Some(t)) = (&m.name, m.datatype) {
                    b.types.insert(name.clone(), t);
                    if let Some(a) = m.alias {
                        b.aliases.insert(a, (name.clone(), t));
                    }
                }
            }
        }
        let known = self.births.get(&key);
        let mut out = Vec::with_capacity(p.metrics.len());
        for m in p.metrics {
            let (name, born_type) = match (&m.name, m.alias) {
                (Some(n), _) => (n.clone(), known.and_then(|b| b.types.get(n)).copied()),
                (None, Some(a)) => match known.and_then(|b| b.aliases.get(&a)) {
                    Some((n, t)) => (n.clone(), Some(*t)),
                    None => return Err(Reject::UnknownAlias(a)),
                },
                (None, None) => {
                    return Err(Reject::BadSparkplug(
                        "a metric without a name or alias".into(),
                    ))
                }
            };
            if name == "bdSeq"
                || name.starts_with("Node Control/")
                || name.starts_with("Device Control/")
            {
                continue;
            }
            let datatype = m.datatype.or(born_type).unwrap_or(0);
            let Some(value) =
                number(m.value.as_ref(), datatype).filter(|_| m.is_null != Some(true))
            else {
                continue;
            };
            if !value.is_finite() {
                return Err(Reject::NotFinite(name));
            }
            let ms = m.timestamp.or(p.timestamp);
            let ts = match ms {
                Some(ms) => i64::try_from(ms)
                    .ok()
                    .and_then(|ms| ms.checked_mul(1_000_000))
                    .ok_or_else(|| Reject::BadTimestamp(ms.to_string()))?,
                None => now_ns,
            };
            out.push((name, ts, value));
        }
        Ok(Decoded { tags, points: out })
    }
}

/// The number a metric's value stands for, given its datatype; `None` for
/// values that are not measurements.
fn number(v: Option<&Value>, datatype: u32) -> Option<f64> {
    Some(match v? {
        Value::Int(i) => match datatype {
            DataType::INT8 | DataType::INT16 | DataType::INT32 => *i as i32 as f64,
            _ => *i as f64,
        },
        Value::Long(l) => match datatype {
            DataType::DATETIME => return None,
            DataType::UINT64 => *l as f64,
            // Int64, and a long without a datatype: two's complement.
            _ => *l as i64 as f64,
        },
        Value::Float(f) => *f as f64,
        Value::Double(d) => *d,
        Value::Boolean(b) => f64::from(u8::from(*b)),
        Value::String(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(
        name: Option<&str>,
        alias: Option<u64>,
        datatype: Option<u32>,
        value: Value,
    ) -> Metric {
        Metric {
            name: name.map(str::to_string),
            alias,
            timestamp: None,
            datatype,
            is_null: None,
            value: Some(value),
        }
    }

    fn bytes(timestamp: u64, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(timestamp),
            metrics,
            seq: Some(0),
        }
        .encode_to_vec()
    }

    #[test]
    fn births_name_aliases_and_types_for_data_messages() {
        let mut sp = Sparkplug::default();
        let birth = bytes(
            1_000,
            vec![
                metric(Some("bdSeq"), None, Some(4), Value::Long(0)),
                metric(
                    Some("temp"),
                    Some(1),
                    Some(DataType::INT16),
                    Value::Int(215),
                ),
                metric(Some("on"), Some(2), Some(11), Value::Boolean(true)),
                metric(Some("model"), Some(3), Some(12), Value::String("x".into())),
                metric(
                    Some("Device Control/Rebirth"),
                    None,
                    Some(11),
                    Value::Boolean(false),
                ),
            ],
        );
        let Decoded { tags, points } = sp
            .decode("spBv1.0/plant/DBIRTH/gw1/pump", &birth, 7, 100)
            .unwrap();
        assert_eq!(
            tags,
            [
                ("group", "plant".to_string()),
                ("edge_node", "gw1".to_string()),
                ("device", "pump".to_string())
            ]
        );
        assert_eq!(
            points,
            [
                ("temp".to_string(), 1_000_000_000, 215.0),
                ("on".to_string(), 1_000_000_000, 1.0)
            ]
        );
        // Data by alias, without datatype: the birth's Int16 says negative.
        let mut m = metric(None, Some(1), None, Value::Int((-12i32) as u32));
        m.timestamp = Some(2_000);
        let data = bytes(
            1_500,
            vec![m, metric(None, Some(2), None, Value::Boolean(false))],
        );
        let points = sp
            .decode("spBv1.0/plant/DDATA/gw1/pump", &data, 7, 100)
            .unwrap()
            .points;
        assert_eq!(
            points,
            [
                ("temp".to_string(), 2_000_000_000, -12.0),
                ("on".to_string(), 1_500_000_000, 0.0)
            ]
        );
        // Another device of the node never had a birth.
        assert_eq!(
            sp.decode("spBv1.0/plant/DDATA/gw1/fan", &data, 7, 100),
            Err(Reject::UnknownAlias(1))
        );
        // A node's rebirth forgets its devices' births.
        sp.decode("spBv1.0/plant/NBIRTH/gw1", &bytes(3_000, vec![]), 7, 100)
            .unwrap();
        assert_eq!(
            sp.decode("spBv1.0/plant/DDATA/gw1/pump", &data, 7, 100),
            Err(Reject::UnknownAlias(1))
        );
    }

    #[test]
    fn deaths_commands_and_state_carry_nothing_garbage_is_refused() {
        let mut sp = Sparkplug::default();
        for topic in [
            "spBv1.0/g/NDEATH/n",
            "spBv1.0/g/DCMD/n/d",
            "spBv1.0/g/STATE/n",
        ] {
            assert_eq!(sp.decode(topic, b"\xff\xff", 0, 10), Ok(Decoded::default()));
        }
        assert!(matches!(
            sp.decode("spBv1.0/g/NDATA/n", b"\x12\xff\xff", 0, 10),
            Err(Reject::BadSparkplug(_))
        ));
        assert!(matches!(
            sp.decode("sensors/g/NDATA/n", &bytes(1, vec![]), 0, 10),
            Err(Reject::BadSparkplug(_))
        ));
        let nan = bytes(
            1,
            vec![metric(Some("x"), None, Some(10), Value::Double(f64::NAN))],
        );
        assert_eq!(
            sp.decode("spBv1.0/g/NDATA/n", &nan, 0, 10),
            Err(Reject::NotFinite("x".into()))
        );
        let many = bytes(
            1,
            (0..11)
                .map(|i| metric(Some(&i.to_string()), None, Some(9), Value::Float(1.0)))
                .collect(),
        );
        assert_eq!(
            sp.decode("spBv1.0/g/NDATA/n", &many, 0, 10),
            Err(Reject::TooManyFields)
        );
        // No timestamp anywhere: the arrival time; Int64 and UInt64.
        let mut p = Payload {
            timestamp: None,
            metrics: vec![
                metric(
                    Some("a"),
                    None,
                    Some(DataType::INT64),
                    Value::Long(-5i64 as u64),
                ),
                metric(
                    Some("b"),
                    None,
                    Some(DataType::UINT64),
                    Value::Long(u64::MAX),
                ),
            ],
            seq: None,
        };
        let points = sp
            .decode("spBv1.0/g/NDATA/n", &p.encode_to_vec(), 42, 10)
            .unwrap()
            .points;
        assert_eq!(
            points,
            [
                ("a".to_string(), 42, -5.0),
                ("b".to_string(), 42, u64::MAX as f64)
            ]
        );
        p.metrics[0].is_null = Some(true);
        let points = sp
            .decode("spBv1.0/g/NDATA/n", &p.encode_to_vec(), 42, 10)
            .unwrap()
            .points;
        assert_eq!(points.len(), 1, "a null is skipped");
    }
}
