//! `firmware-sim`: simulated sensor firmware on a pseudo-terminal.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use firmware_sim::{Framing, Generator, Pty, SimConfig, SimStats, Stopped, Writer};

/// Plays a board of sensors on a serial line (a PTY it opens itself) and keeps
/// a ledger of every line it sent.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Simulated sensors.
    #[arg(long, default_value_t = 3)]
    sensors: usize,
    /// Readings per second, over all sensors.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Stop after this many lines (valid and garbage).
    #[arg(long)]
    count: Option<u64>,
    /// Line format.
    #[arg(long, value_enum, default_value = "kv")]
    framing: Framing,
    /// Share of lines that are garbage (0..1).
    #[arg(long, default_value_t = 0.0)]
    garbage_rate: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Replay a `timestamp,value` CSV instead of synthetic sensors.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Replay speed-up factor.
    #[arg(long, default_value_t = 3600.0)]
    speedup: f64,
    /// Write the ledger (JSON lines) here.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Write the PTY path to this file.
    #[arg(long)]
    path_file: Option<PathBuf>,
    /// Keep a symlink here pointing at the PTY (like /dev/serial/by-id).
    #[arg(long)]
    link: Option<PathBuf>,
    /// Send without waiting for the port to be opened.
    #[arg(long)]
    no_wait: bool,
    /// Unplug (close the PTY) after this many lines...
    #[arg(long)]
    unplug_after: Option<u64>,
    /// ...and plug a new one in after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    replug_after: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook_flag(&stop)?;
    let cfg = SimConfig {
        sensors: args.sensors,
        rate: args.rate,
        count: args.count,
        framing: args.framing,
        garbage_rate: args.garbage_rate,
        seed: args.seed,
        replay: args.replay.clone(),
        speedup: args.speedup,
    };
    let mut generator = Generator::new(&cfg).context("cannot prepare the readings")?;
    let ledger = match &args.ledger {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let stats = Arc::new(SimStats::default());
    let mut writer = Writer::new(plug(&args)?, ledger, stats.clone(), stop.clone());
    loop {
        if !args.no_wait && !writer.wait_reader()? {
            break;
        }
        let until = args.unplug_after.filter(|&n| writer.sent() < n);
        match writer.run_until(&mut generator, &cfg, until)? {
            Stopped::Until => {
                // Unplug: close the master, wait, plug a new PTY in.
                let old = std::mem::replace(&mut writer.pty, Pty::open()?);
                drop(old);
                sleep_unless(&stop, args.replug_after);
                writer.pty = plug_existing(&args, Pty::open()?)?;
            }
            Stopped::Count => {
                println!(
                    "done valid={} garbage={}",
                    stats.valid.load(Ordering::Relaxed),
                    stats.garbage.load(Ordering::Relaxed)
                );
                std::io::stdout().flush()?;
                // Keep the port open so the reader drains it, until told to stop.
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                break;
            }
            Stopped::Asked => break,
            Stopped::ReaderGone => {
                // The reader closed the port; wait for it to come back.
                if args.no_wait {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    writer.flush()?;
    Ok(())
}

fn plug(args: &Args) -> anyhow::Result<Pty> {
    plug_existing(args, Pty::open().context("cannot open a pseudo-terminal")?)
}

/// Announces a PTY: stdout, path file, symlink.
fn plug_existing(args: &Args, pty: Pty) -> anyhow::Result<Pty> {
    let path = pty.slave_path().to_path_buf();
    if let Some(link) = &args.link {
        relink(&path, link)?;
    }
    if let Some(f) = &args.path_file {
        std::fs::write(f, format!("{}\n", path.display()))?;
    }
    println!("{}", path.display());
    std::io::stdout().flush()?;
    Ok(pty)
}

/// Points `link` at `target` atomically (a new symlink renamed over the old).
fn relink(target: &Path, link: &Path) -> anyhow::Result<()> {
    let tmp = link.with_extension("tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link).with_context(|| format!("cannot create {}", link.display()))?;
    Ok(())
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = std::time::Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM and SIGINT set `stop`; the writer notices between writes.
fn signal_hook_flag(stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let _ = STOP.set(stop.clone());
    extern "C" fn on_signal(_: i32) {
        if let Some(s) = STOP.get() {
            s.store(true, Ordering::Relaxed);
        }
    }
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only does an atomic store, which is async-signal-safe.
    unsafe {
        sigaction(Signal::SIGTERM, &action)?;
        sigaction(Signal::SIGINT, &action)?;
    }
    Ok(())
}
