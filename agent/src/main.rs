//! The `tidegate` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tidegate::config::Config;
use tidegate::ops::metrics::ConfigInfo;
use tidegate::ops::{control, Metrics};
use tidegate::store::bench;
use tidegate::store::query::{self, Format, Tier};
use tidegate::store::Store;
use tidegate::sync::bench as sync_bench;

/// Tidegate: serial and MQTT sensors into a compressed local store, synced upstream when the link allows.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent with a configuration file.
    Run {
        /// The TOML configuration.
        #[arg(long, short, default_value = "/etc/tidegate/tidegate.toml")]
        config: PathBuf,
    },
    /// Run the whole pipeline against a simulated sensor board, no servers needed.
    Demo {
        /// Stop after this long (e.g. 10s); default: until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Also sync to this InfluxDB 1.x URL (database `tidegate`).
        #[arg(long)]
        influx: Option<String>,
        /// Simulated sensors.
        #[arg(long, default_value_t = 8)]
        sensors: usize,
        /// Readings per second over all sensors.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Share of garbage lines from the simulated firmware.
        #[arg(long, default_value_t = 0.01)]
        garbage_rate: f64,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// The TOML configuration.
        file: PathBuf,
    },
    /// Read points from the store (works while the agent runs, and offline).
    Query {
        /// The agent's configuration (to find its store).
        #[arg(long, short, default_value = "/etc/tidegate/tidegate.toml")]
        config: PathBuf,
        /// The store file, instead of reading it from the configuration.
        #[arg(long)]
        store: Option<PathBuf>,
        /// Series keys to show; `*` matches anything (e.g. 'sensor,*temp').
        #[arg(long, default_value = "*")]
        series: String,
        /// Start: now, -1h, or an RFC 3339 time.
        #[arg(long, default_value = "-1h")]
        from: String,
        /// End: now, -1h, or an RFC 3339 time.
        #[arg(long, default_value = "now")]
        to: String,
        /// auto (the finest that covers the range), raw, or a rollup tier (1m, 1h).
        #[arg(long, default_value = "auto", value_parser = Tier::parse)]
        tier: Tier,
        /// table, csv, lp, json, or spark (one line per series: min, max, last, a sparkline).
        #[arg(long, default_value = "table", value_parser = parse_format)]
        format: Format,
        /// Show the dead-letter table (input the sources rejected), newest
        /// first, instead of points.
        #[arg(long)]
        dead_letters: bool,
        /// With --dead-letters: only this source's.
        #[arg(long, requires = "dead_letters")]
        source: Option<String>,
        /// With --dead-letters: at most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Measure the agent's parts on this machine.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Fleet configuration over MQTT: keys, signing, publishing, status.
    Fleet {
        #[command(subcommand)]
        what: FleetCommand,
    },
    /// Show a running agent's status.
    Status {
        /// The agent's configuration (to find its control socket).
        #[arg(long, short, default_value = "/etc/tidegate/tidegate.toml")]
        config: PathBuf,
        /// The control socket, instead of reading it from the configuration.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Refresh until interrupted: in place on a terminal, else one block per interval.
        #[arg(long)]
        watch: bool,
        /// Time between refreshes with --watch.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Print the points entering a running agent's store, as line protocol, until interrupted.
    Tap {
        /// The agent's configuration (to find its control socket).
        #[arg(long, short, default_value = "/etc/tidegate/tidegate.toml")]
        config: PathBuf,
        /// The control socket, instead of reading it from the configuration.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Series keys to show; `*` matches anything (e.g. 'sensor,*temp').
        #[arg(long, default_value = "*")]
        series: String,
    },
}

/// Which configuration topic: one device's or the whole fleet's.
#[derive(clap::Args)]
struct Addressee {
    /// The fleet.
    #[arg(long)]
    fleet: String,
    /// One device.
    #[arg(long, conflicts_with = "all", required_unless_present = "all")]
    device: Option<String>,
    /// Every device of the fleet.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Make a signing key: the private key goes to --out (0600), the public key is printed.
    Keygen {
        /// The private key file to create (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a configuration (TOML) into an envelope, printed as JSON.
    Sign {
        /// The private key file (from `fleet keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Higher than every version issued before (devices refuse older ones).
        #[arg(long)]
        version: u64,
        /// The fleet.
        #[arg(long)]
        fleet: String,
        /// A device name, or `all`.
        #[arg(long, default_value = "all")]
        target: String,
        /// Allow the configuration to change or remove the `[fleet]` connection.
        #[arg(long)]
        allow_fleet_change: bool,
        /// The configuration overlay (TOML, the schema of the configuration file).
        config: PathBuf,
    },
    /// Publish a signed envelope (retained, QoS 1) to one device or the whole fleet.
    Publish {
        #[command(flatten)]
        broker: tidegate::fleet::cli::Broker,
        #[command(flatten)]
        to: Addressee,
        /// The envelope from `fleet sign`.
        signed: PathBuf,
    },
    /// Delete the broker's retained configuration of one device or of the
    /// whole fleet, so devices that connect later no longer receive it
    /// (devices running it keep it until a newer version arrives).
    Clear {
        #[command(flatten)]
        broker: tidegate::fleet::cli::Broker,
        #[command(flatten)]
        to: Addressee,
    },
    /// Listen to the fleet's status topics for a few seconds and print a table.
    Status {
        #[command(flatten)]
        broker: tidegate::fleet::cli::Broker,
        /// The fleet.
        #[arg(long)]
        fleet: String,
        /// How long to listen.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Replay recordings (or a synthetic fleet) into a fresh store, as live.
    Store {
        /// `timestamp,value` CSV files, e.g. ../shared/data/nab/*.csv.
        #[arg(long, num_args = 1..)]
        data: Vec<PathBuf>,
        /// Synthetic mode: this many series (instead of --data).
        #[arg(long)]
        series: Option<usize>,
        /// Synthetic mode: points per second over all series.
        #[arg(long, default_value_t = 10_000)]
        rate: usize,
        /// Synthetic mode: simulated seconds.
        #[arg(long, default_value_t = 300)]
        seconds: usize,
        /// Synthetic mode: how far the series' rates spread around the mean
        /// (1: all alike; 16: log-uniform from a quarter to four times).
        #[arg(long, default_value_t = 1.0)]
        spread: f64,
        /// Where the bench store goes (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// SQLite journal, as `store.journal` (`auto` judges the rate on the
        /// wall clock, so a replay shorter than a minute stays in WAL).
        #[arg(long, value_enum, default_value = "wal")]
        journal: tidegate::store::JournalMode,
        /// Commits per simulated second: 1 is the flush interval alone; an
        /// MQTT source acknowledging QoS 1 commits whenever three quarters
        /// of `broker_inflight` wait (~13 a second at 10k messages/s and
        /// mosquitto's window at 1000).
        #[arg(long, default_value_t = 1)]
        commits: u32,
        /// Simulated time between seals (default: `store.seal_interval`'s).
        #[arg(long, value_parser = humantime::parse_duration)]
        seal_interval: Option<Duration>,
        /// Seals between rounds of compaction (default: `store.compact_every`'s).
        #[arg(long)]
        compact_every: Option<u32>,
    },
    /// Drain a QoS 1 backlog from a real local mosquitto through the MQTT
    /// source into a fresh store: points/s and the agent's CPU per million points.
    Ingest {
        /// Measure the MQTT source (the only ingest bench so far).
        #[arg(long)]
        mqtt: bool,
        /// An existing broker (mqtt://host:port); default: start `mosquitto`.
        #[arg(long)]
        broker: Option<String>,
        /// Messages of one point each (0 skips the round).
        #[arg(long, default_value_t = 200_000)]
        messages: usize,
        /// Line protocol messages (0 skips the round).
        #[arg(long, default_value_t = 20_000)]
        lp_messages: usize,
        /// Points (lines) per line protocol message.
        #[arg(long, default_value_t = 100)]
        points_per_message: usize,
        /// max_inflight_messages of the mosquitto started here.
        #[arg(long, default_value_t = 1000)]
        inflight: usize,
        /// Where the bench files go (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Drain a backlog from a fresh store into a local database with the real
    /// sync engine: points/s, bytes on the wire per point, CPU, RSS.
    Sync {
        /// The database, started here on a free loopback port; or `kafka`:
        /// the running broker given by --kafka.
        #[arg(long, default_value = "victoria-metrics", value_parser = ["victoria-metrics", "kafka"])]
        to: String,
        /// Points in the backlog.
        #[arg(long, default_value_t = 10_000_000)]
        points: u64,
        /// Series they are spread over, one point a second each.
        #[arg(long, default_value_t = 1000)]
        series: usize,
        /// lp (InfluxDB line protocol, gzip), remote-write, or both; with
        /// --to kafka: kafka (every compression) or kafka-none, kafka-gzip,
        /// kafka-lz4, kafka-snappy, kafka-zstd.
        #[arg(long, default_value = "both")]
        protocol: String,
        /// Points per request (the sinks' batch_max_points).
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Most requests in flight (the sinks' max_in_flight).
        #[arg(long, default_value_t = 8)]
        max_in_flight: usize,
        /// The victoria-metrics program.
        #[arg(long, default_value = "victoria-metrics")]
        victoria: PathBuf,
        /// The Kafka broker (`host:port`) of --to kafka; a topic is created per drain.
        #[arg(long)]
        kafka: Option<String>,
        /// Partitions of each Kafka topic the bench creates.
        #[arg(long, default_value_t = 4)]
        kafka_partitions: i32,
        /// Leave Nagle's algorithm on for the Kafka connections (the sink's nodelay = false).
        #[arg(long)]
        kafka_nagle: bool,
        /// Where the store and the database's data go (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Tidegate against collectd on the same MQTT feed (firmware-sim → a
    /// local mosquitto), each checked against the feed's ledger: points
    /// stored, lost, reordered; CPU, peak RSS, bytes on disk and written per
    /// point; the highest rate each keeps up with. Run a release build.
    Compare {
        /// Series (devices × 2 fields).
        #[arg(long, default_value_t = 500)]
        series: usize,
        /// Points per second of the main runs.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        /// Points of each main run (60 s at 10k points/s: long enough for
        /// the page cache's writeback to show in the written bytes).
        #[arg(long, default_value_t = 600_000)]
        points: u64,
        /// Rates of the sweep, points/s, comma-separated; `none`: no sweep.
        #[arg(
            long,
            default_value = "10000,20000,30000,40000,60000,80000,120000,160000"
        )]
        sweep: String,
        /// Seconds of feed at each rate of the sweep.
        #[arg(long, default_value_t = 10.0)]
        sweep_seconds: f64,
        #[command(flatten)]
        programs: Programs,
        /// collectd (5.12, with its mqtt, csv and rrdtool plugins).
        #[arg(long)]
        collectd: Option<PathBuf>,
        /// mosquitto's max_inflight_messages.
        #[arg(long, default_value_t = 1000)]
        inflight: usize,
        /// Where everything goes (default: a temporary directory; give one on
        /// a real disk, not tmpfs, for the written bytes).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The agent's peak RSS and CPU at 1k, 10k and 100k points/s over 10k
    /// series with its store and one sink (a local VictoriaMetrics), and the
    /// gateway binary's size per target. Run a release build.
    Footprint {
        /// Points per second, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        rates: Vec<f64>,
        /// Series (devices × 2 fields).
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// Seconds of feed per rate.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Seconds of each feed left out of the CPU figure.
        #[arg(long, default_value_t = 5.0)]
        warmup: f64,
        /// mosquitto's max_inflight_messages (the agent's broker_inflight).
        #[arg(long, default_value_t = 1000)]
        inflight: usize,
        #[command(flatten)]
        programs: Programs,
        /// The cargo target directory (default: the one this binary is in).
        #[arg(long)]
        target_dir: Option<PathBuf>,
        /// Where everything goes (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The programs a whole-process bench starts.
#[derive(clap::Args)]
struct Programs {
    /// The tidegate binary to measure (default: this one).
    #[arg(long)]
    tidegate: Option<PathBuf>,
    /// firmware-sim (default: next to this binary).
    #[arg(long)]
    firmware_sim: Option<PathBuf>,
    /// victoria-metrics.
    #[arg(long, default_value = "victoria-metrics")]
    victoria: PathBuf,
}

impl Programs {
    /// (tidegate, firmware-sim, victoria-metrics).
    fn resolve(self) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
        let me = std::env::current_exe().context("cannot find this program's path")?;
        let sim = match self.firmware_sim {
            Some(p) => p,
            None => me.with_file_name("firmware-sim"),
        };
        anyhow::ensure!(
            sim.exists(),
            "{} is missing: cargo build --release --bins, or pass --firmware-sim PATH",
            sim.display()
        );
        Ok((self.tidegate.unwrap_or(me), sim, self.victoria))
    }
}

/// A directory for a bench: `dir`, or a fresh temporary one under /var/tmp
/// (a real disk, so written bytes count; /tmp may be tmpfs).
fn bench_dir(dir: Option<PathBuf>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    Ok(match dir {
        Some(d) => (d, None),
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("tidegate-bench-")
                .tempdir_in("/var/tmp")
                .or_else(|_| tempfile::tempdir())?;
            (tmp.path().to_path_buf(), Some(tmp))
        }
    })
}

fn init_logging(filter: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    // `target=level,...` directives as RUST_LOG takes them. Not EnvFilter:
    // its span and field matching brings a regex engine, a large share of
    // a gateway binary that must stay small.
    let targets: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        // tokio-modbus logs every bad frame it skips, unthrottled; the
        // Modbus source counts and logs them itself, rate-limited.
        .or_else(|| format!("{filter},tokio_modbus=off").parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // journald stamps every line itself.
    let fmt = if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().boxed()
    } else {
        fmt.boxed()
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(targets)
        .init();
}

fn main() -> std::process::ExitCode {
    tidegate::install_crypto_provider();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Demo { .. }) {
        // A printing command piped into `head` should end quietly when the
        // pipe closes, as other CLI tools do, not panic on EPIPE. (The agent
        // itself keeps SIGPIPE ignored: a control-socket client hanging up
        // must not kill it.)
        // SAFETY: restoring a signal's default disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable paragraph for the operator, causes included.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Fleet { what } => fleet(what),
        Command::CheckConfig { file } => {
            let cfg = Config::load(&file)?;
            // Checked, not printed: the secrets stay out of the output.
            cfg.clone().resolve_credentials()?;
            println!("# {}: OK. Effective configuration:", file.display());
            print!("{}", cfg.to_toml());
            Ok(())
        }
        Command::Run { config } => {
            // The local file, under the fleet overlay persisted last time.
            let boot = tidegate::fleet::agent::Boot::load(&config)?;
            let mut cfg = boot.config.clone();
            cfg.resolve_credentials()?;
            let boot = boot.enabled().then_some(boot);
            init_logging(&cfg.agent.log);
            tidegate::ops::memory::share_arenas();
            let rt = runtime()?;
            rt.block_on(async {
                let metrics = Metrics::new(&cfg.agent.device);
                let text = std::fs::read(&config).unwrap_or_default();
                let path = std::fs::canonicalize(&config).unwrap_or(config);
                metrics.set_config(ConfigInfo::of(&path, &text));
                let shutdown = tidegate::run::shutdown_on_signals()?;
                let status = tidegate::run::run_with(cfg, metrics, shutdown, boot).await?;
                // The final counters on stdout, one JSON line, for scripts and tests.
                println!("{}", serde_json::to_string(&status)?);
                Ok(())
            })
        }
        Command::Demo {
            duration,
            influx,
            sensors,
            rate,
            garbage_rate,
        } => {
            // The live line shows rejects; their log lines would only interleave.
            init_logging("error");
            let rt = runtime()?;
            rt.block_on(async {
                let shutdown = tidegate::run::shutdown_on_signals()?;
                let opts = tidegate::demo::DemoOptions {
                    duration,
                    influx,
                    sensors,
                    rate,
                    garbage_rate,
                };
                let status = tidegate::demo::demo(opts, shutdown).await?;
                if status.store.points_flushed == 0 {
                    anyhow::bail!("the demo stored no point; run with RUST_LOG=debug to see why");
                }
                Ok(())
            })
        }
        Command::Bench {
            what:
                BenchCommand::Store {
                    data,
                    series,
                    rate,
                    seconds,
                    spread,
                    dir,
                    journal,
                    commits,
                    seal_interval,
                    compact_every,
                },
        } => {
            let feed = match series {
                Some(series) => bench::Feed::Synthetic {
                    series,
                    rate,
                    seconds,
                    spread,
                },
                None if !data.is_empty() => bench::Feed::Files(data),
                None => anyhow::bail!("give --data FILE... or --series N"),
            };
            let tmp = tempfile::tempdir()?;
            let dir = dir.unwrap_or_else(|| tmp.path().to_path_buf());
            std::fs::create_dir_all(&dir)?;
            let defaults = tidegate::config::StoreConfig::default();
            let opts = bench::Options {
                journal,
                commits,
                seal_interval: seal_interval.unwrap_or(defaults.seal_interval),
                compact_every: compact_every.unwrap_or(defaults.compact_every),
            };
            print!("{}", bench::run(&feed, &dir, opts)?);
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Ingest {
                    mqtt,
                    broker,
                    messages,
                    lp_messages,
                    points_per_message,
                    inflight,
                    dir,
                },
        } => {
            anyhow::ensure!(mqtt, "give --mqtt (the only ingest bench so far)");
            let tmp = tempfile::tempdir()?;
            let dir = dir.unwrap_or_else(|| tmp.path().to_path_buf());
            std::fs::create_dir_all(&dir)?;
            let bench = tidegate::source::bench::IngestBench {
                broker,
                single_messages: messages,
                lp_messages,
                points_per_message,
                inflight,
            };
            print!("{}", tidegate::source::bench::run(&bench, &dir)?);
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Sync {
                    to,
                    points,
                    series,
                    protocol,
                    batch,
                    max_in_flight,
                    victoria,
                    kafka,
                    kafka_partitions,
                    kafka_nagle,
                    dir,
                },
        } => {
            init_logging("warn");
            let tmp = tempfile::tempdir()?;
            let to_kafka = to == "kafka";
            anyhow::ensure!(
                !to_kafka || kafka.is_some(),
                "--to kafka needs the broker: --kafka HOST:PORT (e.g. a local tansu)"
            );
            let protocol = if to_kafka && protocol == "both" {
                "kafka".to_string()
            } else {
                protocol
            };
            let protocols =
                sync_bench::Protocol::parse_list(&protocol).map_err(anyhow::Error::msg)?;
            let opts = sync_bench::Options {
                points,
                series,
                protocols,
                dir: dir.unwrap_or_else(|| tmp.path().to_path_buf()),
                batch,
                max_in_flight,
                victoria,
                kafka,
                kafka_partitions,
                kafka_nagle,
            };
            let report = runtime()?.block_on(sync_bench::run(&opts))?;
            print!("{report}");
            report.check()
        }
        Command::Bench {
            what:
                BenchCommand::Compare {
                    series,
                    rate,
                    points,
                    sweep,
                    sweep_seconds,
                    programs,
                    collectd,
                    inflight,
                    dir,
                },
        } => {
            let (tidegate, firmware_sim, victoria) = programs.resolve()?;
            let (dir, _tmp) = bench_dir(dir)?;
            let sweep = match sweep.as_str() {
                "" | "none" => Vec::new(),
                list => list
                    .split(',')
                    .map(|r| r.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .with_context(|| {
                        format!("--sweep {list:?}: expected rates like 10000,20000, or none")
                    })?,
            };
            let opts = tidegate::measure::compare::Options {
                series,
                rate,
                points,
                sweep,
                sweep_seconds,
                dir,
                tidegate,
                firmware_sim,
                collectd: collectd.unwrap_or_else(|| tidegate::measure::program("collectd")),
                victoria,
                inflight,
            };
            let report = tidegate::measure::compare::run(&opts)?;
            print!("{report}");
            anyhow::ensure!(
                report.tidegate_exact(),
                "Tidegate lost, duplicated, reordered or altered points, or the sink holds fewer: see the table"
            );
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Footprint {
                    rates,
                    series,
                    seconds,
                    warmup,
                    inflight,
                    programs,
                    target_dir,
                    dir,
                },
        } => {
            let (tidegate, firmware_sim, victoria) = programs.resolve()?;
            let (dir, _tmp) = bench_dir(dir)?;
            let target_dir = match target_dir {
                Some(d) => d,
                // target/<profile>/tidegate → target
                None => std::env::current_exe()?
                    .parent()
                    .and_then(|p| p.parent())
                    .map(PathBuf::from)
                    .context("cannot find the target directory; pass --target-dir")?,
            };
            let opts = tidegate::measure::footprint::Options {
                rates,
                series,
                seconds,
                warmup,
                inflight,
                dir,
                tidegate,
                firmware_sim,
                victoria,
                target_dir,
            };
            let report = tidegate::measure::footprint::run(&opts)?;
            print!("{report}");
            report.check()
        }
        Command::Query {
            config,
            store,
            series,
            from,
            to,
            tier,
            format,
            dead_letters,
            source,
            limit,
        } => {
            let path = match store {
                Some(p) => p,
                None => Config::load(&config)?.store_path(),
            };
            let store = Store::open_read_only(&path)
                .with_context(|| format!("cannot open the store {}", path.display()))?;
            if dead_letters {
                let (rows, total) = store.dead_letters(source.as_deref(), limit)?;
                let text =
                    query::render_dead_letters(&rows, total, format).map_err(anyhow::Error::msg)?;
                print!("{text}");
                return Ok(());
            }
            let now = query::now_ns();
            let from = query::parse_time(&from, now).map_err(anyhow::Error::msg)?;
            let to = query::parse_time(&to, now).map_err(anyhow::Error::msg)?;
            print!("{}", query::run(&store, &series, from, to, tier, format)?);
            eprint!(
                "{}",
                query::render_corrections(&store.clock_corrections()?, from, to)
            );
            Ok(())
        }
        Command::Status {
            config,
            socket,
            json,
            watch,
            interval,
        } => {
            let socket = control_socket(&config, socket)?;
            let rt = runtime()?;
            let render = |status: &tidegate::ops::Status| -> anyhow::Result<String> {
                Ok(if json {
                    // One line per snapshot when watching, so scripts can read a stream.
                    if watch {
                        serde_json::to_string(status)? + "\n"
                    } else {
                        serde_json::to_string_pretty(status)? + "\n"
                    }
                } else {
                    tidegate::ops::render_status(status)
                })
            };
            if !watch {
                let status = rt.block_on(control::fetch_status(&socket))?;
                print!("{}", render(&status)?);
                return Ok(());
            }
            use std::io::Write;
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !json;
            let mut out = std::io::stdout();
            if tty {
                // The alternate screen, cursor hidden; restored on Ctrl-C below.
                write!(out, "\x1b[?1049h\x1b[?25l")?;
            }
            let result = rt.block_on(async {
                let stop = tidegate::run::shutdown_on_signals()?;
                loop {
                    let text = match control::fetch_status(&socket).await {
                        Ok(status) => render(&status)?,
                        Err(e) => format!("error: {e:#}\n"),
                    };
                    if tty {
                        // Home, then each line followed by clear-to-end-of-line,
                        // then clear the rest: no flicker, no scrolling.
                        let mut screen = String::from("\x1b[H");
                        for line in text.lines() {
                            screen.push_str(line);
                            screen.push_str("\x1b[K\n");
                        }
                        screen.push_str("\x1b[J");
                        out.write_all(screen.as_bytes())?;
                    } else {
                        if !json {
                            writeln!(
                                out,
                                "--- {}",
                                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                            )?;
                        }
                        out.write_all(text.as_bytes())?;
                    }
                    out.flush()?;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
                anyhow::Ok(())
            });
            if tty {
                write!(out, "\x1b[?25h\x1b[?1049l")?;
                out.flush()?;
            }
            result
        }
        Command::Tap {
            config,
            socket,
            series,
        } => {
            let socket = control_socket(&config, socket)?;
            let rt = runtime()?;
            rt.block_on(control::tap(
                &socket,
                &series,
                &mut std::io::stdout().lock(),
            ))
        }
    }
}

/// `--socket`, else the control socket the configuration names.
fn control_socket(config: &std::path::Path, socket: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match socket {
        Some(s) => s,
        None => Config::load(config)?.control_socket(),
    })
}

fn fleet(what: FleetCommand) -> anyhow::Result<()> {
    use tidegate::fleet::cli;
    match what {
        FleetCommand::Keygen { out } => {
            let public = cli::keygen(&out)?;
            eprintln!(
                "private key written to {} (mode 0600); public key for fleet.trusted_keys:",
                out.display()
            );
            println!("{public}");
            Ok(())
        }
        FleetCommand::Sign {
            key,
            version,
            fleet,
            target,
            allow_fleet_change,
            config,
        } => {
            let env = cli::sign(&key, version, &fleet, &target, allow_fleet_change, &config)?;
            println!("{}", serde_json::to_string_pretty(&env)?);
            Ok(())
        }
        FleetCommand::Publish { broker, to, signed } => {
            tidegate::install_crypto_provider();
            let text = std::fs::read(&signed)
                .with_context(|| format!("cannot read {}", signed.display()))?;
            let env: tidegate::fleet::envelope::Envelope = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a signed envelope", signed.display()))?;
            let topic = cli::topic_for(&env, &to.fleet, to.device.as_deref())?;
            runtime()?.block_on(cli::publish(&broker, &topic, text))?;
            eprintln!("published version {} on {topic} (retained)", env.version);
            Ok(())
        }
        FleetCommand::Clear { broker, to } => {
            tidegate::install_crypto_provider();
            let target = to.device.as_deref().unwrap_or("all");
            let topic = tidegate::fleet::topics::config(&to.fleet, target);
            runtime()?.block_on(cli::publish(&broker, &topic, Vec::new()))?;
            eprintln!("cleared the retained configuration on {topic}");
            Ok(())
        }
        FleetCommand::Status {
            broker,
            fleet,
            wait,
            json,
        } => {
            tidegate::install_crypto_provider();
            let rows = runtime()?.block_on(cli::collect(&broker, &fleet, wait))?;
            if json {
                let v: serde_json::Map<String, serde_json::Value> = rows
                    .into_iter()
                    .map(|(d, r)| {
                        (
                            d,
                            serde_json::json!({"online": r.online, "status": r.status, "report": r.report}),
                        )
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", cli::table(&rows));
            }
            Ok(())
        }
    }
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s {
        "table" => Ok(Format::Table),
        "csv" => Ok(Format::Csv),
        "lp" => Ok(Format::Lp),
        "json" => Ok(Format::Json),
        "spark" => Ok(Format::Spark),
        other => Err(format!("`{other}`: expected table, csv, lp, json or spark")),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two by default; TOKIO_WORKER_THREADS (the variable tokio's own default
    // reads) overrides it, e.g. 1 on a single-core board.
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
