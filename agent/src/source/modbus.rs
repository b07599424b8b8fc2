//! Modbus RTU polling: one task a bus (serial port), several devices (unit
//! ids) on it, each with a register map read every `poll_interval`.
//!
//! The protocol side is pure and tested without a port: [`plan`] groups a
//! device's registers into read requests, [`check_response`] validates a
//! response frame, [`decode`] turns registers into a value. The driver
//! ([`run`]) talks through `tokio-modbus` and counts every failed request per
//! device and reason: `timeout` (no answer), `crc` (an answer with a wrong
//! CRC), `exception` (the device refused, e.g. code 2 for an address it does
//! not have), `bad_response` (a frame that fits no request). A device that
//! stops answering costs the others only its timeout; a lost port is
//! reopened with backoff.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_modbus::prelude::{Reader, Slave, SlaveContext};
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::{Parity, SerialSourceConfig};
use crate::ops::metrics::SourceStats;
use crate::ops::{Metrics, RateLimit};
use crate::point::{arrival_ns, Batch, DeadLetter, Point, SeriesKey};
use crate::store::StoreHandle;
use crate::sync::Backoff;

use super::serial::PortLog;

/// Most registers one read request may ask for (Modbus: 125).
pub const MAX_REGISTERS: u16 = 125;

/// One Modbus RTU bus: a serial port and the devices on it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModbusSourceConfig {
    /// Names the source's counters and logs; defaults to the port's file name.
    #[serde(default)]
    pub name: Option<String>,
    /// Device path; prefer stable `/dev/serial/by-id/...` names.
    pub port: PathBuf,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Data bits: 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity: `none`, `even` (the Modbus default) or `odd`.
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// Stop bits: 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Measurement name of the points.
    #[serde(default = "default_measurement")]
    pub measurement: String,
    /// Tags added to every point of this bus.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Tag `site` on every point, if set.
    #[serde(default)]
    pub site: Option<String>,
    /// Tag `port` (the port path's file name) on every point.
    #[serde(default = "default_true")]
    pub port_tag: bool,
    /// How long to wait for a device's answer, unless the device says otherwise.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The devices (unit ids) polled on this bus.
    pub devices: Vec<ModbusDevice>,
}

/// One device on a bus and its register map.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModbusDevice {
    /// Tag `device` of its points, and its counters' name (`<bus>/<name>`).
    pub name: String,
    /// Unit (slave) id, 1..=247.
    pub unit: u8,
    /// How often the register map is read.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Answer timeout of this device's requests; the bus's `timeout` if unset.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Extra tags on this device's points.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The register map: one field a value.
    pub registers: Vec<Register>,
}

/// A value held in one or two registers.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// Field name of the points.
    pub field: String,
    /// Register address (0-based, as on the wire).
    pub address: u16,
    /// `holding` (function 3) or `input` (function 4).
    #[serde(default)]
    pub kind: RegisterKind,
    /// `u16`, `i16`, `u32`, `i32` or `f32` (the 32-bit types take two registers).
    #[serde(rename = "type", default)]
    pub value_type: ValueType,
    /// For 32-bit types: `big` (high word first, the Modbus convention) or `little`.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Stored value = raw × scale + offset.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// See `scale`.
    #[serde(default)]
    pub offset: f64,
    /// Tag `unit` (e.g. `degC`), if set.
    #[serde(default)]
    pub unit: Option<String>,
}

/// Which register table a value is read from.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// Read/write registers, function code 3.
    #[default]
    Holding,
    /// Read-only registers, function code 4.
    Input,
}

/// How a value is encoded in its registers.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// Unsigned 16-bit.
    #[default]
    U16,
    /// Signed 16-bit (two's complement).
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// IEEE 754 single precision, two registers.
    F32,
}

impl ValueType {
    /// Registers the value takes.
    pub fn words(self) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 => 1,
            _ => 2,
        }
    }
}

/// Order of the two registers of a 32-bit value (bytes within a register
/// are always big-endian).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// High word at the lower address.
    #[default]
    Big,
    /// Low word at the lower address.
    Little,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> Parity {
    Parity::Even
}
fn default_stop_bits() -> u8 {
    1
}
fn default_measurement() -> String {
    "modbus".into()
}
fn default_true() -> bool {
    true
}
fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_scale() -> f64 {
    1.0
}

impl ModbusSourceConfig {
    /// The name used in logs and counters.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.port
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.port.display().to_string())
        })
    }

    /// Counter names of the devices (`<bus>/<device>`), in order.
    pub fn device_stats_names(&self) -> Vec<String> {
        let bus = self.display_name();
        self.devices
            .iter()
            .map(|d| format!("{bus}/{}", d.name))
            .collect()
    }

    /// Checks what the types cannot; `Err((key, message))` names the key under `prefix`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let bad = |key: String, msg: &str| Err((key, msg.to_string()));
        if self.baud == 0 {
            return bad(format!("{prefix}.baud"), "must be a baud rate such as 9600");
        }
        if !(7..=8).contains(&self.data_bits) {
            return bad(format!("{prefix}.data_bits"), "must be 7 or 8");
        }
        if !(1..=2).contains(&self.stop_bits) {
            return bad(format!("{prefix}.stop_bits"), "must be 1 or 2");
        }
        if self.measurement.is_empty() {
            return bad(format!("{prefix}.measurement"), "must not be empty");
        }
        if self.timeout.is_zero() {
            return bad(
                format!("{prefix}.timeout"),
                "must be longer than zero, e.g. \"500ms\"",
            );
        }
        if self.devices.is_empty() {
            return bad(
                format!("{prefix}.devices"),
                "list at least one device (name, unit, registers)",
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let key = format!("{prefix}.devices[{i}]");
            if d.name.is_empty() || !names.insert(d.name.as_str()) {
                return bad(
                    format!("{key}.name"),
                    "needs a name of its own on this bus (its `device` tag and counters)",
                );
            }
            if !(1..=247).contains(&d.unit) {
                return bad(format!("{key}.unit"), "must be a unit id within 1..=247");
            }
            if d.poll_interval.is_zero() {
                return bad(
                    format!("{key}.poll_interval"),
                    "must be longer than zero, e.g. \"1s\"",
                );
            }
            if d.timeout.is_some_and(|t| t.is_zero()) {
                return bad(
                    format!("{key}.timeout"),
                    "must be longer than zero, e.g. \"500ms\"",
                );
            }
            if d.registers.is_empty() {
                return bad(
                    format!("{key}.registers"),
                    "list at least one register (field, address)",
                );
            }
            for (j, r) in d.registers.iter().enumerate() {
                let rkey = format!("{key}.registers[{j}]");
                if r.field.is_empty() {
                    return bad(format!("{rkey}.field"), "must not be empty");
                }
                if u32::from(r.address) + u32::from(r.value_type.words()) > 0x1_0000 {
                    return bad(
                        format!("{rkey}.address"),
                        "the value runs past register 65535",
                    );
                }
                if !r.scale.is_finite() || !r.offset.is_finite() {
                    return bad(
                        format!("{rkey}.scale"),
                        "scale and offset must be finite numbers",
                    );
                }
            }
        }
        Ok(())
    }
}

/// One read request of a device: `count` registers of `kind` from `start`,
/// and the registers (indexes into the device's map) it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Register table.
    pub kind: RegisterKind,
    /// First address.
    pub start: u16,
    /// Number of registers.
    pub count: u16,
    /// Indexes of the registers in the map, whose words all lie in the block.
    pub fields: Vec<usize>,
}

/// Groups a register map into as few requests as it can without reading
/// registers nobody asked for (devices often refuse gaps with exception 2):
/// values of one kind that touch or overlap share a request of at most
/// [`MAX_REGISTERS`].
pub fn plan(registers: &[Register]) -> Vec<Block> {
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| (registers[i].kind, registers[i].address));
    let mut blocks: Vec<Block> = Vec::new();
    for i in order {
        let r = &registers[i];
        let end = u32::from(r.address) + u32::from(r.value_type.words());
        if let Some(b) = blocks.last_mut() {
            let b_end = u32::from(b.start) + u32::from(b.count);
            let new_end = b_end.max(end);
            if b.kind == r.kind
                && u32::from(r.address) <= b_end
                && new_end - u32::from(b.start) <= u32::from(MAX_REGISTERS)
            {
                b.count = (new_end - u32::from(b.start)) as u16;
                b.fields.push(i);
                continue;
            }
        }
        blocks.push(Block {
            kind: r.kind,
            start: r.address,
            count: r.value_type.words(),
            fields: vec![i],
        });
    }
    blocks
}

/// The raw value of `words` (one or two registers) as `value_type`; `order`
/// matters for 32-bit types only. Missing words read as 0 (callers pass
/// enough; the fuzz target passes anything).
pub fn decode(words: &[u16], value_type: ValueType, order: WordOrder) -> f64 {
    let w = |i: usize| words.get(i).copied().unwrap_or(0);
    let pair = || -> u32 {
        let (hi, lo) = match order {
            WordOrder::Big => (w(0), w(1)),
            WordOrder::Little => (w(1), w(0)),
        };
        (u32::from(hi) << 16) | u32::from(lo)
    };
    match value_type {
        ValueType::U16 => f64::from(w(0)),
        ValueType::I16 => f64::from(w(0) as i16),
        ValueType::U32 => f64::from(pair()),
        ValueType::I32 => f64::from(pair() as i32),
        ValueType::F32 => f64::from(f32::from_bits(pair())),
    }
}

/// The stored value of register `r` within `block`'s answer `words`:
/// decoded, scaled, offset. `None` for NaN or infinity (not a measurement).
pub fn value_of(r: &Register, block: &Block, words: &[u16]) -> Option<f64> {
    let at = usize::from(r.address - block.start);
    let raw = decode(
        words.get(at..).unwrap_or_default(),
        r.value_type,
        r.word_order,
    );
    let v = raw * r.scale + r.offset;
    v.is_finite().then_some(v)
}

/// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Why a request got no usable answer: the counter label of a device.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// Nothing came back in time.
    #[error("no answer within the timeout; check the unit id, wiring, baud rate and parity")]
    Timeout,
    /// A frame came back whose CRC does not match: noise on the line, or a
    /// baud rate or parity mismatch.
    #[error("answer with a wrong CRC; check termination, cabling, baud rate and parity")]
    Crc,
    /// The device refused the request with this exception code.
    #[error(
        "exception {0} from the device (2: an address it does not have; check the register map)"
    )]
    Exception(u8),
    /// Something came back that is not an answer to the request.
    #[error("a response that does not fit the request ({0}); check for a second master or a unit id used twice")]
    BadResponse(&'static str),
}

impl Fault {
    /// The counter label.
    pub fn label(&self) -> &'static str {
        match self {
            Fault::Timeout => "timeout",
            Fault::Crc => "crc",
            Fault::Exception(_) => "exception",
            Fault::BadResponse(_) => "bad_response",
        }
    }
}

/// Checks a response frame `raw` (unit, function, payload, CRC) to a read of
/// `count` registers with `function` (3 or 4) from `unit`, and returns its
/// registers. A frame cut short is a [`Fault::Timeout`]: the rest never came.
pub fn check_response(raw: &[u8], unit: u8, function: u8, count: u16) -> Result<Vec<u16>, Fault> {
    if raw.len() < 5 {
        return Err(Fault::Timeout);
    }
    let exception = raw[1] == function | 0x80;
    let len = if exception {
        5
    } else {
        3 + usize::from(raw[2]) + 2
    };
    if raw.len() < len {
        return Err(Fault::Timeout);
    }
    let (frame, crc) = raw[..len].split_at(len - 2);
    if crc16(frame) != u16::from_le_bytes([crc[0], crc[1]]) {
        return Err(Fault::Crc);
    }
    if frame[0] != unit {
        return Err(Fault::BadResponse("another unit id"));
    }
    if exception {
        return Err(Fault::Exception(frame[2]));
    }
    if frame[1] != function {
        return Err(Fault::BadResponse("another function code"));
    }
    if usize::from(frame[2]) != 2 * usize::from(count) {
        return Err(Fault::BadResponse("another register count"));
    }
    Ok(frame[3..]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect())
}

/// Why a request timed out, from the bytes that did arrive: none is a plain
/// timeout; a whole frame is a CRC error or a stray answer.
pub fn classify_timeout(raw: &[u8], unit: u8, function: u8, count: u16) -> Fault {
    match check_response(raw, unit, function, count) {
        Err(f) => f,
        // Whole and valid, yet the client did not take it: not ours.
        Ok(_) => Fault::BadResponse("a late or unexpected frame"),
    }
}

/// Polls every device of one bus until `shutdown`. The bus's own counters
/// (`stats`) say whether the port is open; each device counts its requests
/// (`lines`), points and faults under `<bus>/<device>` in `metrics`.
pub async fn run(
    cfg: ModbusSourceConfig,
    store: StoreHandle,
    metrics: Arc<Metrics>,
    stats: Arc<SourceStats>,
    shutdown: CancellationToken,
) {
    let name = cfg.display_name();
    let mut bus = Bus::new(&cfg, &metrics);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut log = PortLog::new(&name);
    while !shutdown.is_cancelled() {
        match port_builder(&cfg).open_native_async() {
            Ok(port) => {
                log.opened(&cfg.port, cfg.baud);
                backoff.reset();
                stats.connected.store(true, Relaxed);
                let seen = Arc::new(Mutex::new(Vec::new()));
                let tap = Tap {
                    inner: port,
                    seen: seen.clone(),
                };
                let ctx = tokio_modbus::client::rtu::attach_slave(tap, Slave(1));
                let end = bus.poll(ctx, seen, &store, &shutdown).await;
                stats.connected.store(false, Relaxed);
                match end {
                    End::Shutdown | End::StoreClosed => break,
                    // The client gave up on the stream (garbage it could
                    // not resynchronise on): start it afresh at once.
                    End::Reset => continue,
                    End::Lost(e) => log.lost(&cfg.port, &e),
                }
            }
            Err(e) => log.cannot_open(&cfg.port, &e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    for d in &bus.devices {
        d.stats.connected.store(false, Relaxed);
    }
}

/// The serial line settings, through the serial source's builder.
fn port_builder(cfg: &ModbusSourceConfig) -> tokio_serial::SerialPortBuilder {
    super::serial::port_builder(&SerialSourceConfig {
        port: cfg.port.clone(),
        baud: cfg.baud,
        data_bits: cfg.data_bits,
        parity: cfg.parity,
        stop_bits: cfg.stop_bits,
        ..Default::default()
    })
}

enum End {
    Shutdown,
    StoreClosed,
    Reset,
    Lost(std::io::Error),
}

/// A device being polled: its plan, its series and its counters.
struct Device {
    cfg: ModbusDevice,
    blocks: Vec<Block>,
    /// The series key of each register of the map, in map order.
    series: Vec<SeriesKey>,
    timeout: Duration,
    stats: Arc<SourceStats>,
    name: Arc<str>,
    next: Instant,
    log: RateLimit,
}

/// The devices of a bus, polled one request at a time (RTU has one master
/// and no concurrency on the wire).
struct Bus {
    devices: Vec<Device>,
}

impl Bus {
    fn new(cfg: &ModbusSourceConfig, metrics: &Metrics) -> Bus {
        let mut base = cfg.tags.clone();
        if let Some(s) = &cfg.site {
            base.insert("site".into(), s.clone());
        }
        if cfg.port_tag {
            if let Some(f) = cfg.port.file_name() {
                base.insert("port".into(), f.to_string_lossy().into_owned());
            }
        }
        let now = Instant::now();
        let devices = cfg
            .devices
            .iter()
            .zip(cfg.device_stats_names())
            .map(|(d, stats_name)| {
                let mut tags = base.clone();
                tags.extend(d.tags.clone());
                tags.insert("device".into(), d.name.clone());
                let series = d
                    .registers
                    .iter()
                    .map(|r| {
                        let mut t = tags.clone();
                        if let Some(u) = &r.unit {
                            t.insert("unit".into(), u.clone());
                        }
                        SeriesKey::new(
                            &cfg.measurement,
                            t.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                            &r.field,
                        )
                    })
                    .collect::<Vec<_>>();
                // A poll's answer carries no time: every point is stamped on arrival.
                let stats = metrics.source(&stats_name);
                for key in &series {
                    stats.stamped_on_arrival(key.clone());
                }
                Device {
                    blocks: plan(&d.registers),
                    series,
                    timeout: d.timeout.unwrap_or(cfg.timeout),
                    stats,
                    name: stats_name.into(),
                    next: now,
                    log: RateLimit::new(Duration::from_secs(10)),
                    cfg: d.clone(),
                }
            })
            .collect();
        Bus { devices }
    }

    /// Polls until the port fails or `shutdown`.
    async fn poll(
        &mut self,
        mut ctx: tokio_modbus::client::Context,
        seen: Arc<Mutex<Vec<u8>>>,
        store: &StoreHandle,
        shutdown: &CancellationToken,
    ) -> End {
        loop {
            // The device due first; ties go to the earlier in the config.
            let Some(i) = (0..self.devices.len()).min_by_key(|&i| self.devices[i].next) else {
                return End::Shutdown;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return End::Shutdown,
                _ = tokio::time::sleep_until(self.devices[i].next.into()) => {}
            }
            let d = &mut self.devices[i];
            // The next poll is one interval after this one was due; a bus too
            // slow for it polls back to back rather than bunching up.
            d.next = (d.next + d.cfg.poll_interval).max(Instant::now());
            ctx.set_slave(Slave(d.cfg.unit));
            let mut batch = Batch::default();
            let mut dead = Vec::new();
            // Set when the poll cannot go on; what it read so far is kept.
            let mut end = None;
            for b in 0..d.blocks.len() {
                seen.lock().unwrap().clear();
                let block = d.blocks[b].clone();
                let (function, call) = match block.kind {
                    RegisterKind::Holding => {
                        (3, ctx.read_holding_registers(block.start, block.count))
                    }
                    RegisterKind::Input => (4, ctx.read_input_registers(block.start, block.count)),
                };
                let answer = tokio::select! {
                    _ = shutdown.cancelled() => None,
                    r = tokio::time::timeout(d.timeout, call) => Some(r),
                };
                let Some(answer) = answer else {
                    end = Some(End::Shutdown);
                    break;
                };
                d.stats.lines.fetch_add(1, Relaxed);
                let now = arrival_ns();
                let fault = match answer {
                    Ok(Ok(Ok(words))) => {
                        d.stats.connected.store(true, Relaxed);
                        let mut n = 0;
                        for &f in &block.fields {
                            if let Some(v) = value_of(&d.cfg.registers[f], &block, &words) {
                                batch.points.push(Point {
                                    series: d.series[f].clone(),
                                    ts_ns: now,
                                    value: v,
                                });
                                n += 1;
                            }
                        }
                        d.stats.points.fetch_add(n, Relaxed);
                        continue;
                    }
                    Ok(Ok(Err(code))) => Fault::Exception(u8::from(code)),
                    Ok(Err(tokio_modbus::Error::Protocol(_))) => {
                        Fault::BadResponse("another unit id or function code")
                    }
                    Ok(Err(tokio_modbus::Error::Transport(e))) => {
                        if e.kind() != std::io::ErrorKind::InvalidData {
                            end = Some(End::Lost(e));
                            break;
                        }
                        // The client's stream is finished after a decode
                        // error: count it, then reopen.
                        let raw = seen.lock().unwrap().clone();
                        d.fault(
                            Fault::BadResponse("undecodable frame"),
                            &raw,
                            now,
                            &mut dead,
                        );
                        end = Some(End::Reset);
                        break;
                    }
                    Err(_elapsed) => {
                        let raw = seen.lock().unwrap();
                        classify_timeout(&raw, d.cfg.unit, function, block.count)
                    }
                };
                let raw = seen.lock().unwrap().clone();
                d.fault(fault, &raw, now, &mut dead);
            }
            if !flush(store, batch, dead).await {
                return End::StoreClosed;
            }
            if let Some(end) = end {
                return end;
            }
        }
    }
}

/// Hands points and dead letters to the store; false once it is closed.
async fn flush(store: &StoreHandle, batch: Batch, dead: Vec<DeadLetter>) -> bool {
    (batch.is_empty() || store.append(batch).await.is_ok())
        && (dead.is_empty() || store.dead_letters(dead).await.is_ok())
}

impl Device {
    /// Counts and logs (rate-limited) a failed request; what came back, if
    /// anything, goes to the dead letters.
    fn fault(&mut self, fault: Fault, raw: &[u8], now_ns: i64, dead: &mut Vec<DeadLetter>) {
        self.stats.reject(fault.label());
        if fault == Fault::Timeout {
            self.stats.connected.store(false, Relaxed);
        } else {
            dead.push(DeadLetter::new(
                self.name.clone(),
                fault.label(),
                fault.to_string(),
                raw,
                now_ns,
            ));
        }
        if let Some(held) = self.log.allow(Instant::now()) {
            let hex: String = raw.iter().take(64).map(|b| format!("{b:02x}")).collect();
            warn!(source = %self.name, unit = self.cfg.unit, reason = fault.label(), suppressed = held,
                "modbus request failed: {fault}; received {hex:?}");
        }
    }
}

/// The port, keeping a copy of the bytes read since the last clear: the
/// client drops a frame with a bad CRC silently and waits on, so the
/// driver looks at what arrived to tell a CRC error from silence.
struct Tap<T> {
    inner: T,
    seen: Arc<Mutex<Vec<u8>>>,
}

/// Bytes kept per request: more than the longest RTU frame (256).
const TAP_LIMIT: usize = 512;

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let mut seen = self.seen.lock().unwrap();
            let new = &buf.filled()[before..];
            let room = TAP_LIMIT.saturating_sub(seen.len());
            seen.extend_from_slice(&new[..new.len().min(room)]);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(field: &str, address: u16, kind: RegisterKind, value_type: ValueType) -> Register {
        Register {
            field: field.into(),
            address,
            kind,
            value_type,
            word_order: WordOrder::Big,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        }
    }

    /// A response frame as a device sends it.
    fn frame(unit: u8, function: u8, words: &[u16]) -> Vec<u8> {
        let mut f = vec![unit, function, (words.len() * 2) as u8];
        for w in words {
            f.extend_from_slice(&w.to_be_bytes());
        }
        let crc = crc16(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    #[test]
    fn crc_matches_the_specification() {
        // Check value of CRC-16/MODBUS, and a read request from the spec's
        // examples (unit 1, function 3, address 0, 1 register: CRC 84 0A).
        assert_eq!(crc16(b"123456789"), 0x4B37);
        assert_eq!(crc16(&[1, 3, 0, 0, 0, 1]).to_le_bytes(), [0x84, 0x0A]);
    }

    #[test]
    fn decodes_both_word_orders_signs_and_floats() {
        use ValueType::*;
        use WordOrder::*;
        assert_eq!(decode(&[0xFFFF], U16, Big), 65535.0);
        assert_eq!(decode(&[0xFFFF], I16, Big), -1.0);
        assert_eq!(decode(&[0x8000], I16, Big), -32768.0);
        assert_eq!(decode(&[0x0001, 0x0002], U32, Big), 65538.0);
        assert_eq!(decode(&[0x0002, 0x0001], U32, Little), 65538.0);
        assert_eq!(decode(&[0xFFFF, 0xFFFE], I32, Big), -2.0);
        assert_eq!(decode(&[0xFFFE, 0xFFFF], I32, Little), -2.0);
        let bits = 21.5f32.to_bits();
        let (hi, lo) = ((bits >> 16) as u16, bits as u16);
        assert_eq!(decode(&[hi, lo], F32, Big), 21.5);
        assert_eq!(decode(&[lo, hi], F32, Little), 21.5);
        assert!(decode(&[0x7FC0, 0], F32, Big).is_nan());
        // Too few words read as zeros rather than panicking.
        assert_eq!(decode(&[1], U32, Big), 65536.0);
        assert_eq!(decode(&[], I16, Big), 0.0);
    }

    #[test]
    fn scaled_values_and_nan_is_not_a_measurement() {
        let mut r = reg("t", 10, RegisterKind::Holding, ValueType::I16);
        r.scale = 0.1;
        r.offset = -40.0;
        let b = &plan(std::slice::from_ref(&r))[0];
        assert_eq!(
            value_of(&r, b, &[(-215i16) as u16]),
            Some(-215.0 * 0.1 - 40.0)
        );
        let f = reg("f", 10, RegisterKind::Holding, ValueType::F32);
        assert_eq!(value_of(&f, b, &[0x7FC0, 0]), None, "NaN");
        assert_eq!(value_of(&f, b, &[0x7F80, 0]), None, "infinity");
    }

    #[test]
    fn plan_groups_touching_registers_of_a_kind_and_skips_gaps() {
        use RegisterKind::*;
        use ValueType::*;
        let map = [
            reg("a", 0, Holding, I16),
            reg("c", 3, Holding, I32),
            reg("b", 1, Holding, U32),
            reg("x", 0, Input, F32),
            reg("far", 100, Holding, U16),
            reg("y", 2, Input, U16),
        ];
        let p = plan(&map);
        assert_eq!(
            p,
            vec![
                Block {
                    kind: Holding,
                    start: 0,
                    count: 5,
                    fields: vec![0, 2, 1]
                },
                Block {
                    kind: Holding,
                    start: 100,
                    count: 1,
                    fields: vec![4]
                },
                Block {
                    kind: Input,
                    start: 0,
                    count: 3,
                    fields: vec![3, 5]
                },
            ]
        );
        // No request over 125 registers.
        let long: Vec<Register> = (0..130).map(|i| reg("r", i, Holding, U16)).collect();
        let p = plan(&long);
        assert_eq!(p.iter().map(|b| b.count).collect::<Vec<_>>(), vec![125, 5]);
    }

    #[test]
    fn responses_are_checked_and_faults_told_apart() {
        let ok = frame(7, 3, &[1, 0xFFFF]);
        assert_eq!(check_response(&ok, 7, 3, 2), Ok(vec![1, 0xFFFF]));
        let mut bad = ok.clone();
        *bad.last_mut().unwrap() ^= 0x55;
        assert_eq!(check_response(&bad, 7, 3, 2), Err(Fault::Crc));
        assert_eq!(classify_timeout(&bad, 7, 3, 2), Fault::Crc);
        assert_eq!(classify_timeout(&[], 7, 3, 2), Fault::Timeout);
        assert_eq!(
            classify_timeout(&ok[..6], 7, 3, 2),
            Fault::Timeout,
            "cut short"
        );
        assert!(matches!(
            check_response(&ok, 8, 3, 2),
            Err(Fault::BadResponse(_))
        ));
        assert!(matches!(
            check_response(&ok, 7, 4, 2),
            Err(Fault::BadResponse(_))
        ));
        assert!(matches!(
            check_response(&ok, 7, 3, 3),
            Err(Fault::BadResponse(_))
        ));
        let mut exc = vec![7, 0x83, 2];
        let crc = crc16(&exc);
        exc.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(check_response(&exc, 7, 3, 2), Err(Fault::Exception(2)));
        assert_eq!(Fault::Exception(2).label(), "exception");
    }

    proptest::proptest! {
        /// Whatever comes back, checking never panics, an accepted frame
        /// carries exactly the registers asked for, and a frame built from
        /// registers reads back as them.
        #[test]
        fn any_bytes_are_checked_safely(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            words in proptest::collection::vec(proptest::prelude::any::<u16>(), 1..125),
            count in 1u16..126,
        ) {
            if let Ok(w) = check_response(&raw, raw.first().copied().unwrap_or(0), 3, count) {
                proptest::prop_assert_eq!(w.len(), usize::from(count));
            }
            let _ = classify_timeout(&raw, 1, 4, count);
            let f = frame(9, 4, &words);
            proptest::prop_assert_eq!(check_response(&f, 9, 4, words.len() as u16), Ok(words.clone()));
            let mut cut = f.clone();
            cut.pop();
            proptest::prop_assert_eq!(check_response(&cut, 9, 4, words.len() as u16), Err(Fault::Timeout));
        }
    }

    #[test]
    fn config_parses_and_bad_values_name_their_key() {
        let text = r#"
port = "/dev/ttyUSB0"
timeout = "300ms"
site = "plant"
[[devices]]
name = "meter"
unit = 3
poll_interval = "250ms"
registers = [
  { field = "energy", address = 0, type = "u32", word_order = "little", scale = 0.01, unit = "kWh" },
  { field = "temp", address = 10, kind = "input", type = "i16", scale = 0.1 },
]
"#;
        let cfg: ModbusSourceConfig = toml::from_str(text).unwrap();
        assert_eq!(cfg.parity, Parity::Even);
        assert_eq!(cfg.display_name(), "ttyUSB0");
        assert_eq!(cfg.device_stats_names(), vec!["ttyUSB0/meter"]);
        let d = &cfg.devices[0];
        assert_eq!(d.registers[0].value_type, ValueType::U32);
        assert_eq!(d.registers[0].word_order, WordOrder::Little);
        assert_eq!(d.registers[1].kind, RegisterKind::Input);
        assert_eq!(cfg.validate("m"), Ok(()));
        let mut bad = cfg.clone();
        bad.devices[0].unit = 0;
        assert_eq!(bad.validate("m").unwrap_err().0, "m.devices[0].unit");
        let mut bad = cfg.clone();
        bad.devices[0].registers[0].address = 65535;
        assert_eq!(
            bad.validate("m").unwrap_err().0,
            "m.devices[0].registers[0].address"
        );
        let mut bad = cfg;
        bad.devices.push(bad.devices[0].clone());
        assert_eq!(bad.validate("m").unwrap_err().0, "m.devices[1].name");
    }
}
