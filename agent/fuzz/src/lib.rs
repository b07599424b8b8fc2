//! What the fuzz targets share: a parser per framing, fed the input, with the
//! invariants every parse must keep checked.

use tidegate::config::{Framing, SerialSourceConfig, TimeUnit};
use tidegate::point::Point;
use tidegate::source::guard::Guard;
use tidegate::source::mqtt::{Decoder, MqttSourceConfig};
use tidegate::source::parse::LineParser;

/// A serial source's settings that reach every branch of the parsers.
pub fn serial_config(framing: Framing) -> SerialSourceConfig {
    SerialSourceConfig {
        framing,
        port: "/dev/ttyFUZZ".into(),
        measurement: "m".into(),
        tags: [("site".to_string(), "lab".to_string())].into(),
        tag_keys: vec!["sensor".into()],
        timestamp_key: Some("ts".into()),
        timestamp_unit: TimeUnit::Ms,
        max_line: 4096,
        required_keys: vec!["sensor".into()],
        csv_header: vec!["sensor".into(), "ts".into(), "temp".into(), "hum".into()],
        max_fields: 64,
        max_json_depth: 8,
        max_series: 32,
        ..Default::default()
    }
}

/// Splits `data` at the framing's terminator and parses every piece, as the
/// serial source does, then applies the source's limits.
pub fn serial(framing: Framing, data: &[u8]) {
    let cfg = serial_config(framing);
    let mut parser = LineParser::new(&cfg);
    let mut guard: Guard = cfg.guard();
    let end = parser.terminator();
    for line in data.split(|&b| b == end) {
        let mut out = Vec::new();
        if let Ok(n) = parser.parse(line, 1_764_000_000_000_000_000, &mut out) {
            check(&out, n);
            let _ = guard.check(&out, 1_764_000_000_000_000_000);
        } else {
            assert!(out.is_empty(), "a reject appended points");
        }
    }
}

/// Invariants of a successful parse.
pub fn check(out: &[Point], n: usize) {
    assert_eq!(out.len(), n);
    for p in out {
        assert!(p.value.is_finite(), "{p:?}");
        assert!(!p.series.as_str().is_empty());
    }
}

const MQTT: &str = r#"
name = "f"
url = "mqtt://127.0.0.1"
max_json_depth = 8
max_fields = 64
max_payload = 4096
tags = { gw = "g1" }

[[subscriptions]]
topic = "n/+site/#field"
format = "number"

[[subscriptions]]
topic = "j/+device"
format = "json"
timestamp = "/ts"

[[subscriptions]]
topic = "jp/+device"
format = "json"
values = { temp = "/env/temp", hum = "/h" }

[[subscriptions]]
topic = "l/#rest"
format = "lp"

[[subscriptions]]
topic = "spBv1.0/#"
format = "sparkplug"
"#;

const TOPICS: &[&str] = &[
    "n/lab/temp",
    "n/lab/a/b/c",
    "j/d1",
    "jp/d2",
    "l/x",
    "other/x",
    "n//t",
    "spBv1.0/g/NBIRTH/n",
    "spBv1.0/g/DBIRTH/n/d",
    "spBv1.0/g/DDATA/n/d",
    "spBv1.0/g/NDATA/n",
    "spBv1.0/g/NDEATH/n",
];

/// An MQTT message: the first byte picks the topic, the rest is the payload.
pub fn mqtt(data: &[u8]) {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    thread_local! {
        static DECODER: std::cell::RefCell<Decoder> = {
            let cfg: MqttSourceConfig = toml::from_str(MQTT).expect("the fuzz config parses");
            cfg.validate("f").expect("the fuzz config is valid");
            std::cell::RefCell::new(Decoder::new(&cfg).expect("the fuzz config is valid"))
        };
    }
    let topic = TOPICS[pick as usize % TOPICS.len()];
    let mut out = Vec::new();
    DECODER.with(|d| {
        match d
            .borrow_mut()
            .decode(topic, payload, 1_764_000_000_000_000_000, &mut out)
        {
            Ok(n) => check(&out, n),
            Err(_) => assert!(out.is_empty(), "a reject appended points"),
        }
    });
}

/// A Modbus response: the first byte picks the request it answers (unit,
/// function, count) and whether the rest goes out as it is or is sealed
/// with a correct CRC first (so the checks behind the CRC are reached);
/// accepted registers are then decoded as every type and word order.
pub fn modbus(data: &[u8]) {
    use tidegate::source::modbus::{
        check_response, classify_timeout, crc16, decode, plan, value_of, Register, RegisterKind,
        ValueType, WordOrder,
    };
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let unit = 1 + (pick & 1);
    let function = if pick & 2 == 0 { 3 } else { 4 };
    let mut raw = rest.to_vec();
    if pick & 4 != 0 {
        let crc = crc16(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
    }
    // The count the response claims half of the time, so `Ok` is reachable.
    let count = if pick & 8 != 0 {
        u16::from(raw.get(2).copied().unwrap_or(0) / 2)
    } else {
        u16::from(pick >> 4) + 1
    };
    let _ = classify_timeout(&raw, unit, function, count);
    let Ok(words) = check_response(&raw, unit, function, count) else {
        return;
    };
    assert_eq!(
        words.len(),
        usize::from(count),
        "registers == the count asked for"
    );
    let types = [
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
    ];
    let map: Vec<Register> = (0..count)
        .map(|i| Register {
            field: format!("r{i}"),
            address: i,
            kind: RegisterKind::Holding,
            value_type: types[usize::from(i) % types.len()],
            word_order: if i % 2 == 0 {
                WordOrder::Big
            } else {
                WordOrder::Little
            },
            scale: 0.1,
            offset: -40.0,
            unit: None,
        })
        .collect();
    for block in plan(&map) {
        assert!(block.count <= 125 && !block.fields.is_empty());
        let Some(answer) = words.get(usize::from(block.start)..) else {
            continue;
        };
        for &f in &block.fields {
            if let Some(v) = value_of(&map[f], &block, answer) {
                assert!(v.is_finite());
            }
        }
    }
    for w in words.windows(2) {
        for order in [WordOrder::Big, WordOrder::Little] {
            assert!((0.0..=65535.0).contains(&decode(w, ValueType::U16, order)));
            assert!((-32768.0..=32767.0).contains(&decode(w, ValueType::I16, order)));
            assert!((0.0..=4_294_967_295.0).contains(&decode(w, ValueType::U32, order)));
            assert!((-2_147_483_648.0..=2_147_483_647.0).contains(&decode(
                w,
                ValueType::I32,
                order
            )));
        }
        // The word orders are each other's mirror image.
        let swapped = [w[1], w[0]];
        assert_eq!(
            decode(w, ValueType::U32, WordOrder::Big),
            decode(&swapped, ValueType::U32, WordOrder::Little)
        );
    }
}
