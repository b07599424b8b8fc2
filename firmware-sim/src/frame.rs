//! The binary serial framing, written by hand the way a firmware author would
//! (no serde): postcard bytes of a reading, a CRC-16/CCITT-FALSE appended
//! big-endian, the whole COBS-encoded and ended by one 0x00 byte. The README
//! ("Binary framing") is the specification; the agent decodes with postcard's
//! serde implementation, so the two sides check each other.

/// CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, xorout 0
/// (check value of `b"123456789"`: 0x29B1).
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// COBS-encodes `data` (no 0x00 in the output; the frame end is not added).
pub fn cobs_encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 254 + 2);
    let mut code_at = out.len();
    out.push(0);
    let mut code = 1u8;
    for &b in data {
        if b == 0 {
            out[code_at] = code;
            code_at = out.len();
            out.push(0);
            code = 1;
        } else {
            out.push(b);
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            }
        }
    }
    out[code_at] = code;
    out
}

/// Postcard varint (LEB128) of an unsigned integer.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The postcard bytes of a reading: `sensor: String`, `ts: Option<i64>`
/// (zigzag varint), `fields: Vec<(String, f64)>` (f64 little-endian).
pub fn postcard_reading(sensor: &str, ts: Option<i64>, fields: &[(&str, f64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + fields.len() * 16);
    string(&mut out, sensor);
    match ts {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            varint(&mut out, ((t << 1) ^ (t >> 63)) as u64);
        }
    }
    varint(&mut out, fields.len() as u64);
    for (k, v) in fields {
        string(&mut out, k);
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// `payload` with its CRC appended (big-endian), COBS-encoded; without the
/// terminating 0x00.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut raw = payload.to_vec();
    raw.extend_from_slice(&crc16(payload).to_be_bytes());
    cobs_encode(&raw)
}

/// True if the CRC of a decoded (un-COBSed) frame matches; for garbage that
/// must never pass.
pub fn crc_ok(raw: &[u8]) -> bool {
    raw.len() >= 2 && {
        let (body, crc) = raw.split_at(raw.len() - 2);
        crc16(body).to_be_bytes() == crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn cobs_known_vectors() {
        assert_eq!(cobs_encode(&[]), [1]);
        assert_eq!(cobs_encode(&[0]), [1, 1]);
        assert_eq!(
            cobs_encode(&[0x11, 0x22, 0, 0x33]),
            [3, 0x11, 0x22, 2, 0x33]
        );
        let long: Vec<u8> = (1..=254).collect();
        let enc = cobs_encode(&long);
        assert_eq!(enc[0], 0xFF);
        assert_eq!(enc.len(), 256);
        assert!(!enc.contains(&0));
    }

    #[test]
    fn readme_example_frame() {
        let p = postcard_reading("s01", Some(1_764_053_000_123), &[("temp", 21.53)]);
        let frame = seal(&p);
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        // The example in the README ("Binary framing"), without its 0x00.
        assert_eq!(
            hex,
            "1c0373303101f6fe849cd766010474656d7048e17a14ae87354076 17".replace(' ', "")
        );
    }
}
