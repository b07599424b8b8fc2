//! `firmware-sim`: simulated sensor firmware on a pseudo-terminal.
//!
//! Prints the PTY's path first, then `done valid=V garbage=G` once `--count`
//! lines are sent, and keeps the PTY open until SIGTERM or SIGINT (exit 0).
//! `firmware-sim fleet` runs many devices (serial, Modbus, MQTT) in one process.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use firmware_sim::{Framing, Pty, SimConfig, SimStats, Stopped, Writer};

/// Plays a board of sensors on a serial line (a PTY it opens itself), or a
/// fleet of MQTT devices (`firmware-sim mqtt`), and keeps a ledger of every
/// reading it sent.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    pty: Args,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Publish readings of N devices to an MQTT broker (QoS 1); prints
    /// `done valid=V garbage=G` once `--count` readings are acknowledged by
    /// the broker, then stays connected until SIGTERM or SIGINT.
    Mqtt(MqttArgs),
    /// Play a Modbus RTU slave (units answering function codes 3 and 4) on
    /// a PTY; prints the PTY path first, `done valid=V garbage=G` once
    /// `--count` requests are handled (then unplugs the port), and exits on
    /// SIGTERM or SIGINT. Register layout: firmware-sim/src/modbus.rs.
    Modbus(ModbusArgs),
    /// Play many devices at once, each on its own thread: a PTY per
    /// `--serial` framing (linked at DIR/<name>, ledger DIR/<name>.jsonl,
    /// names `kv`, `json`, ... and `kv-2` for a repeat), a Modbus slave
    /// (DIR/modbus) and MQTT publishers (ledger DIR/mqtt.jsonl). Prints
    /// `<name> <pty path>` for each PTY, `<name> done valid=V garbage=G` for
    /// each device that reaches `--count`, then `done valid=V garbage=G`
    /// (totals) once all have; runs until SIGTERM or SIGINT.
    Fleet(FleetArgs),
}

/// Faults of a serial device besides garbage (none by default).
#[derive(clap::Args, Clone)]
struct FaultArgs {
    /// Probability (0..1) that the previous reading is sent again.
    #[arg(long, default_value_t = 0.0)]
    duplicate_rate: f64,
    /// Probability (0..1) that a reading is held back until after its
    /// sensor's next one (out of order).
    #[arg(long, default_value_t = 0.0)]
    reorder_rate: f64,
    /// Probability (0..1) that a reading is stamped an hour ahead (the
    /// device's clock jumped; the agent refuses it, the ledger says garbage).
    #[arg(long, default_value_t = 0.0)]
    clock_jump_rate: f64,
    /// Probability (0..1) that a line arrives as at a wrong baud rate.
    #[arg(long, default_value_t = 0.0)]
    baud_mismatch_rate: f64,
    /// Lines of a burst, sent at once on top of the rate...
    #[arg(long, default_value_t = 0)]
    burst_lines: u64,
    /// ...every this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    burst_every: Option<Duration>,
}

impl FaultArgs {
    fn faults(&self) -> anyhow::Result<firmware_sim::Faults> {
        for (name, p) in [
            ("--duplicate-rate", self.duplicate_rate),
            ("--reorder-rate", self.reorder_rate),
            ("--clock-jump-rate", self.clock_jump_rate),
            ("--baud-mismatch-rate", self.baud_mismatch_rate),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&p), "{name} must be within 0..1");
        }
        Ok(firmware_sim::Faults {
            duplicate: self.duplicate_rate,
            reorder: self.reorder_rate,
            clock_jump: self.clock_jump_rate,
            baud_mismatch: self.baud_mismatch_rate,
            burst_lines: self.burst_lines,
            burst_every: self.burst_every,
        })
    }
}

#[derive(clap::Args)]
struct FleetArgs {
    /// Directory for the PTY links and the ledgers.
    #[arg(long)]
    dir: PathBuf,
    /// One serial device per framing listed (comma-separated; may repeat).
    #[arg(long, value_enum, value_delimiter = ',')]
    serial: Vec<Framing>,
    /// Sensors per serial device.
    #[arg(long, default_value_t = 3)]
    sensors: usize,
    /// Unit ids of a Modbus slave (comma-separated; none: no slave).
    #[arg(long, value_delimiter = ',')]
    modbus: Vec<u8>,
    /// Broker for the MQTT devices (mqtt://host:port; none: no MQTT).
    #[arg(long)]
    mqtt: Option<String>,
    /// MQTT devices.
    #[arg(long, default_value_t = 20)]
    mqtt_devices: usize,
    /// MQTT payload format.
    #[arg(long, value_enum, default_value = "number")]
    mqtt_format: firmware_sim::mqtt::MqttFormat,
    /// Readings per second over all serial and MQTT devices, shared evenly
    /// between the serial devices and the MQTT publisher.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Lines (serial), readings (MQTT) or requests answered (Modbus) per
    /// device, valid and garbage.
    #[arg(long)]
    count: Option<u64>,
    /// Probability (0..1) that a line or reading is garbage (Modbus: an
    /// answer with a wrong CRC).
    #[arg(long, default_value_t = 0.02)]
    garbage_rate: f64,
    /// Random seed (each device derives its own).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Faults of the serial devices.
    #[command(flatten)]
    faults: FaultArgs,
}

#[derive(clap::Args)]
struct ModbusArgs {
    /// Unit ids that answer, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    units: Vec<u8>,
    /// Handle this many requests (any fate), print `done ...`, unplug.
    #[arg(long)]
    count: Option<u64>,
    /// Probability (0..1) that an answer has a wrong CRC.
    #[arg(long, default_value_t = 0.0)]
    crc_error_rate: f64,
    /// Probability (0..1) that a request gets no answer.
    #[arg(long, default_value_t = 0.0)]
    silence_rate: f64,
    /// Random seed of the faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the ledger (JSON lines, one per request) here.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Keep a symlink here pointing at the PTY (like /dev/serial/by-id).
    #[arg(long)]
    link: Option<PathBuf>,
    /// Unplug (close the PTY) once this many requests are handled...
    #[arg(long)]
    unplug_after: Option<u64>,
    /// ...and plug a new one in after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    replug_after: Duration,
}

#[derive(clap::Args)]
struct MqttArgs {
    /// Broker: mqtt://host:port or mqtts://host:port.
    #[arg(long)]
    url: String,
    /// CA certificate (PEM) of the broker, for mqtts://.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Simulated devices (s01, s02, ...).
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// Sites the devices are spread over (site1, site2, ...).
    #[arg(long, default_value_t = 2)]
    sites: usize,
    /// Readings per second over all devices.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Stop after this many readings (valid and garbage), print `done ...`.
    #[arg(long)]
    count: Option<u64>,
    /// Payload format: number (one message a field, topic .../<field>), json
    /// or lp (one message a reading), lp-field (one message a field), collectd
    /// (PUTVAL `epoch:value` on <prefix>/<site>/sensor-<device>/gauge-<field>).
    #[arg(long, value_enum, default_value = "number")]
    format: firmware_sim::mqtt::MqttFormat,
    /// Probability (0..1) that a reading is replaced by a garbage message.
    #[arg(long, default_value_t = 0.02)]
    garbage_rate: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// First topic level.
    #[arg(long, default_value = "sensors")]
    prefix: String,
    /// MQTT client id.
    #[arg(long, default_value = "firmware-sim")]
    client_id: String,
    /// Write the ledger (JSON lines, one per reading) here.
    #[arg(long)]
    ledger: Option<PathBuf>,
}

#[derive(clap::Args)]
struct Args {
    /// Simulated sensors (ids s01, s02, ...).
    #[arg(long, default_value_t = 3)]
    sensors: usize,
    /// Readings per second, over all sensors.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Stop after this many lines (valid and garbage), print `done ...`.
    #[arg(long)]
    count: Option<u64>,
    /// Line format.
    #[arg(long, value_enum, default_value = "kv")]
    framing: Framing,
    /// Probability (0..1) that a line is garbage.
    #[arg(long, default_value_t = 0.02)]
    garbage_rate: f64,
    /// Random seed: the same seed sends the same values and garbage.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Replay a `timestamp,value` CSV as sensor s01 instead of synthetic sensors.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Replay speed-up factor (3600: an hour of the file per second).
    #[arg(long, default_value_t = 3600.0)]
    speedup: f64,
    /// Write the ledger (JSON lines, one per line sent) here.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Write the PTY path to this file (rewritten on replug).
    #[arg(long)]
    path_file: Option<PathBuf>,
    /// Keep a symlink here pointing at the PTY (like /dev/serial/by-id).
    #[arg(long)]
    link: Option<PathBuf>,
    /// Send without waiting for the port to be opened (lines go into the
    /// kernel's buffer for the first reader).
    #[arg(long)]
    no_wait: bool,
    /// Unplug (close the PTY) once this many lines are sent...
    #[arg(long)]
    unplug_after: Option<u64>,
    /// ...and plug a new one in after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    replug_after: Duration,
    #[command(flatten)]
    faults: FaultArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    on_signals_set(&stop)?;
    let alone = Announce::default();
    match cli.command {
        Some(Command::Mqtt(m)) => mqtt_main(m, stop, alone),
        Some(Command::Modbus(m)) => modbus_main(m, stop, alone),
        Some(Command::Fleet(f)) => fleet_main(f, stop),
        None => pty_main(cli.pty, stop, alone),
    }
}

/// How a device tells what it does on stdout: alone, or as one of a fleet
/// (its lines prefixed by its name, its `done` also sent to the fleet).
#[derive(Clone, Default)]
struct Announce {
    name: Option<String>,
    done: Option<std::sync::mpsc::Sender<(u64, u64)>>,
}

impl Announce {
    fn line(&self, text: std::fmt::Arguments) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        match &self.name {
            Some(n) => writeln!(out, "{n} {text}")?,
            None => writeln!(out, "{text}")?,
        }
        out.flush()
    }

    /// `done valid=V garbage=G`: every line is sent and in the ledger.
    fn done(&self, stats: &SimStats) -> std::io::Result<()> {
        let (v, g) = (
            stats.valid.load(Ordering::Relaxed),
            stats.garbage.load(Ordering::Relaxed),
        );
        if let Some(tx) = &self.done {
            let _ = tx.send((v, g));
        }
        self.line(format_args!("done valid={v} garbage={g}"))
    }
}

fn fleet_main(args: FleetArgs, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let publishers = args.serial.len() + usize::from(args.mqtt.is_some());
    let devices = publishers + usize::from(!args.modbus.is_empty());
    anyhow::ensure!(
        devices > 0,
        "give --serial, --modbus or --mqtt: a fleet of nothing"
    );
    let rate = args.rate / publishers.max(1) as f64;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    let mut spawn = |name: String, run: Box<dyn FnOnce(Announce) -> anyhow::Result<()> + Send>| {
        let announce = Announce {
            name: Some(name.clone()),
            done: Some(tx.clone()),
        };
        threads.push((
            name.clone(),
            std::thread::Builder::new()
                .name(name)
                .spawn(move || run(announce)),
        ));
    };
    let mut seen: std::collections::HashMap<Framing, usize> = Default::default();
    for (i, &framing) in args.serial.iter().enumerate() {
        let n = seen.entry(framing).or_default();
        *n += 1;
        let base = format!("{framing:?}").to_lowercase();
        let name = if *n == 1 { base } else { format!("{base}-{n}") };
        let pty = Args {
            sensors: args.sensors,
            rate,
            count: args.count,
            framing,
            garbage_rate: args.garbage_rate,
            seed: args.seed.wrapping_add(i as u64 * 7919),
            replay: None,
            speedup: 1.0,
            ledger: Some(args.dir.join(format!("{name}.jsonl"))),
            path_file: None,
            link: Some(args.dir.join(&name)),
            no_wait: false,
            unplug_after: None,
            replug_after: Duration::from_secs(2),
            faults: args.faults.clone(),
        };
        let stop = stop.clone();
        spawn(name, Box::new(move |a| pty_main(pty, stop, a)));
    }
    if !args.modbus.is_empty() {
        let slave = ModbusArgs {
            units: args.modbus.clone(),
            count: args.count,
            crc_error_rate: args.garbage_rate,
            silence_rate: 0.0,
            seed: args.seed,
            ledger: Some(args.dir.join("modbus.jsonl")),
            link: Some(args.dir.join("modbus")),
            unplug_after: None,
            replug_after: Duration::from_secs(1),
        };
        let stop = stop.clone();
        spawn(
            "modbus".into(),
            Box::new(move |a| modbus_main(slave, stop, a)),
        );
    }
    if let Some(url) = &args.mqtt {
        let publisher = MqttArgs {
            url: url.clone(),
            ca_file: None,
            devices: args.mqtt_devices,
            sites: 2,
            rate,
            count: args.count,
            format: args.mqtt_format,
            garbage_rate: args.garbage_rate,
            seed: args.seed,
            prefix: "sensors".into(),
            client_id: format!("firmware-sim-fleet-{}", std::process::id()),
            ledger: Some(args.dir.join("mqtt.jsonl")),
        };
        let stop = stop.clone();
        spawn(
            "mqtt".into(),
            Box::new(move |a| mqtt_main(publisher, stop, a)),
        );
    }
    drop(tx);
    // Totals once every device is done (the Modbus slave counts requests
    // answered, at whatever pace the agent polls).
    if args.count.is_some() {
        let (mut valid, mut garbage) = (0, 0);
        for _ in 0..devices {
            let Ok((v, g)) = rx.recv() else { break };
            valid += v;
            garbage += g;
        }
        if !stop.load(Ordering::Relaxed) {
            Announce::default().line(format_args!("done valid={valid} garbage={garbage}"))?;
        }
    }
    let mut failed = None;
    for (name, t) in threads {
        match t.map_err(anyhow::Error::from).and_then(|t| {
            t.join()
                .map_err(|_| anyhow::anyhow!("the thread panicked"))?
        }) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("firmware-sim: {name}: {e:#}");
                failed = Some(name);
            }
        }
    }
    match failed {
        Some(name) => anyhow::bail!("device {name} failed"),
        None => Ok(()),
    }
}

fn mqtt_main(args: MqttArgs, stop: Arc<AtomicBool>, announce: Announce) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.garbage_rate),
        "--garbage-rate must be within 0..1"
    );
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let ledger = match &args.ledger {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let cfg = firmware_sim::mqtt::MqttSimConfig {
        url: args.url,
        ca_file: args.ca_file,
        devices: args.devices,
        sites: args.sites,
        rate: args.rate,
        count: args.count,
        format: args.format,
        garbage_rate: args.garbage_rate,
        seed: args.seed,
        prefix: args.prefix,
        client_id: args.client_id,
    };
    let stats = Arc::new(SimStats::default());
    let done = stats.clone();
    let reporter = std::thread::spawn(move || {
        while !done.done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = announce.done(&done);
    });
    firmware_sim::mqtt::run(&cfg, ledger, stats.clone(), stop).context("MQTT publisher")?;
    if stats.done.load(Ordering::SeqCst) {
        let _ = reporter.join();
    }
    Ok(())
}

fn pty_main(args: Args, stop: Arc<AtomicBool>, announce: Announce) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.garbage_rate),
        "--garbage-rate must be within 0..1"
    );
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(args.speedup > 0.0, "--speedup must be positive");
    let cfg = SimConfig {
        sensors: args.sensors,
        rate: args.rate,
        count: args.count,
        framing: args.framing,
        garbage_rate: args.garbage_rate,
        seed: args.seed,
        replay: args.replay.clone(),
        speedup: args.speedup,
        faults: args.faults.faults()?,
    };
    let ledger = match &args.ledger {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let stats = Arc::new(SimStats::default());
    let mut writer = Writer::new(&cfg, ledger, stats.clone(), stop.clone())
        .context("cannot prepare the readings")?;
    writer.follow_reader(!args.no_wait);
    let mut pty = plug(args.path_file.as_deref(), args.link.as_deref(), &announce)?;
    let mut unplugged = false;
    loop {
        if !args.no_wait && !writer.wait_reader(&pty)? {
            break;
        }
        let until = args.unplug_after.filter(|_| !unplugged);
        match writer.run_until(&pty, until)? {
            Stopped::Until => {
                // Unplug: the reader sees a hang-up, the by-id link goes
                // away as udev would remove it, then a new port appears.
                unplugged = true;
                // Let the reader take what was sent first: closing drops
                // unread bytes, and the ledger says they were sent.
                pty.wait_drained(Duration::from_secs(2), &stop)?;
                drop(pty);
                if let Some(link) = &args.link {
                    let _ = std::fs::remove_file(link);
                }
                sleep_unless(&stop, args.replug_after);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                pty = plug(args.path_file.as_deref(), args.link.as_deref(), &announce)?;
            }
            Stopped::Done => {
                announce.done(&stats)?;
                // Closing the master would drop what the reader has not read
                // yet: keep the port open until told to stop.
                writer.idle(&pty);
                break;
            }
            Stopped::Asked => break,
            // Back to waiting for a reader at the top of the loop.
            Stopped::ReaderGone => {}
            Stopped::WriteFailed(e) => {
                eprintln!("firmware-sim: write failed: {e}");
                sleep_unless(&stop, Duration::from_millis(100));
            }
        }
    }
    // The port goes, and its by-id link with it, as udev would remove it: a
    // link left behind names a /dev/pts number the kernel gives the next
    // PTY, and a reader reopening it would read someone else's lines.
    if let Some(link) = &args.link {
        let _ = std::fs::remove_file(link);
    }
    writer.flush().context("cannot write the ledger")?;
    Ok(())
}

fn modbus_main(args: ModbusArgs, stop: Arc<AtomicBool>, announce: Announce) -> anyhow::Result<()> {
    use firmware_sim::modbus::{ModbusSimConfig, Served, Slave};
    for (name, p) in [
        ("--crc-error-rate", args.crc_error_rate),
        ("--silence-rate", args.silence_rate),
    ] {
        anyhow::ensure!((0.0..=1.0).contains(&p), "{name} must be within 0..1");
    }
    anyhow::ensure!(
        args.units.iter().all(|u| (1..=247).contains(u)),
        "--units must be unit ids within 1..=247"
    );
    let ledger = match &args.ledger {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let stats = Arc::new(SimStats::default());
    let cfg = ModbusSimConfig {
        units: args.units.clone(),
        count: args.count,
        crc_error_rate: args.crc_error_rate,
        silence_rate: args.silence_rate,
        seed: args.seed,
    };
    let mut slave = Slave::new(cfg, ledger, stats.clone());
    let link = args.link.as_deref();
    let mut pty = Some(plug(None, link, &announce)?);
    let mut unplugged = false;
    while let Some(p) = &pty {
        let until = match args.unplug_after.filter(|_| !unplugged) {
            Some(u) => Some(args.count.map_or(u, |c| c.min(u))),
            None => args.count,
        };
        if slave.serve(p, until, &stop)? == Served::Asked {
            break;
        }
        // Unplug (or finish): let the reader take the last answer first
        // (closing drops unread bytes, and the ledger says it was sent).
        p.wait_drained(Duration::from_secs(2), &stop)?;
        slave.flush().context("cannot write the ledger")?;
        pty = None;
        slave.forget_input();
        if let Some(link) = link {
            let _ = std::fs::remove_file(link);
        }
        if slave.finished() {
            announce.done(&stats)?;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            break;
        }
        unplugged = true;
        sleep_unless(&stop, args.replug_after);
        if !stop.load(Ordering::Relaxed) {
            pty = Some(plug(None, link, &announce)?);
        }
    }
    slave.flush().context("cannot write the ledger")?;
    Ok(())
}

/// Opens a PTY and announces it: stdout, path file, symlink.
fn plug(path_file: Option<&Path>, link: Option<&Path>, announce: &Announce) -> anyhow::Result<Pty> {
    let pty = Pty::open().context("cannot open a pseudo-terminal")?;
    let path = pty.slave_path();
    if let Some(f) = path_file {
        // Via a rename, so a reader never sees a half-written file.
        let tmp = sibling(f, ".tmp");
        std::fs::write(&tmp, format!("{}\n", path.display()))
            .and_then(|()| std::fs::rename(&tmp, f))
            .with_context(|| format!("cannot write {}", f.display()))?;
    }
    if let Some(link) = link {
        relink(path, link).with_context(|| format!("cannot link {}", link.display()))?;
    }
    announce.line(format_args!("{}", path.display()))?;
    Ok(pty)
}

/// Points `link` at `target` atomically: a new symlink renamed over the old.
fn relink(target: &Path, link: &Path) -> std::io::Result<()> {
    let tmp = sibling(link, ".tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

/// `path` with `suffix` appended to its file name, in the same directory (so
/// a rename onto `path` is atomic).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = std::time::Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM and SIGINT set `stop`; the writer notices within ~100 ms and the
/// process exits 0 after flushing the ledger.
fn on_signals_set(stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let _ = STOP.set(stop.clone());
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(s) = STOP.get() {
            s.store(true, Ordering::Relaxed);
        }
    }
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only reads an initialised OnceLock and does an
    // atomic store, both async-signal-safe.
    unsafe {
        sigaction(Signal::SIGTERM, &action)?;
        sigaction(Signal::SIGINT, &action)?;
    }
    Ok(())
}
