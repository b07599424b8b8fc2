//! `tansu` (crates.io, an Apache Kafka-compatible broker in Rust), one
//! broker per test, its storage in memory; topics created and read back with
//! `rskafka`.
//!
//! Quirks this works around: topics are not auto-created; the latest offset
//! it reports on the memory engine is wrong (so a read goes on until a fetch
//! comes back empty, and callers count what they consumed); a fetch waits
//! its full max wait time (so it is short).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;
use tempfile::TempDir;

use crate::poll_until;
use crate::process::{append_log, fail, port_taken, tail, ChildGuard, START_TIMEOUT};

/// How long a fetch waits for records it does not have.
const FETCH_WAIT_MS: i32 = 50;

/// A `tansu broker` on a free loopback port, in an empty temporary
/// directory (it reads `.env` from its working directory), in-memory
/// storage; killed when dropped.
pub struct Tansu {
    child: Option<ChildGuard>,
    dir: TempDir,
    port: u16,
    rt: tokio::runtime::Runtime,
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key.
    pub key: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
    /// Its timestamp, ms.
    pub ts_ms: i64,
}

/// The `tansu` program: on `PATH`, else where `cargo install` puts it.
fn tansu_program() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`tansu` not found: cargo install tansu --version 0.6.0 --locked \
                 --no-default-features --features dynostore (scripts/test does)"
            )
        })
}

impl Tansu {
    /// Starts a broker; returns once its port accepts connections.
    pub fn start() -> Tansu {
        let dir = tempfile::Builder::new()
            .prefix("tansu-")
            .tempdir()
            .expect("create a temporary directory");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let mut broker = Tansu {
            child: None,
            dir,
            port: 0,
            rt,
        };
        for attempt in 1.. {
            broker.port = crate::free_port();
            match broker.launch() {
                Ok(()) => break,
                Err(e) if attempt < 3 && port_taken(&broker.log_file()) => {
                    eprintln!("tansu: {e}; retrying with another port");
                }
                Err(e) => fail(&e, &broker.log_file()),
            }
        }
        broker
    }

    /// `127.0.0.1:PORT`, for a sink's `brokers`.
    pub fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's process, while it runs (e.g. to SIGSTOP it).
    pub fn process(&mut self) -> Option<&mut ChildGuard> {
        self.child.as_mut()
    }

    /// Kills the broker (SIGKILL); everything it held is gone with it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Starts an empty broker again on the same port after [`Tansu::stop`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "tansu is already running");
        if let Err(e) = self.launch() {
            fail(&e, &self.log_file());
        }
    }

    /// Its stdout and stderr.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    fn launch(&mut self) -> Result<(), String> {
        // Its working directory must stay empty: it reads `.env` from there.
        let cwd = self.dir.path().join("cwd");
        std::fs::create_dir_all(&cwd).expect("create tansu's working directory");
        let log = append_log(&self.log_file());
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut child = ChildGuard::spawn(
            "tansu",
            Command::new(tansu_program())
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/", "--silent"])
                .current_dir(&cwd)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup the log file"))
                .stderr(log),
        );
        let port = self.port;
        let ready = poll_until(START_TIMEOUT, Duration::from_millis(20), || {
            if let Some(status) = child.try_wait() {
                return Some(Err(format!(
                    "tansu exited ({status}) before accepting connections"
                )));
            }
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
                .is_ok()
                .then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => {
                self.child = Some(child);
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => Err(format!(
                "timed out after {START_TIMEOUT:?} waiting for tansu on 127.0.0.1:{port}"
            )),
        }
    }

    async fn client(&self) -> Client {
        ClientBuilder::new(vec![self.broker()])
            .backoff_config(BackoffConfig {
                deadline: Some(Duration::from_secs(20)),
                ..Default::default()
            })
            .build()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connect to tansu at {}: {e}\n--- tail of its log ---\n{}",
                    self.broker(),
                    tail(&self.log_file(), 40)
                )
            })
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.rt.block_on(async {
            let client = self.client().await;
            client
                .controller_client()
                .expect("a controller client")
                .create_topic(topic, partitions, 1, 5_000)
                .await
                .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
        })
    }

    /// A reader of every partition of `topic`, from the start.
    pub fn consumer(&self, topic: &str) -> Consumer<'_> {
        let partitions = self.rt.block_on(async {
            let client = self.client().await;
            let topics = client.list_topics().await.expect("list topics");
            let t = topics
                .into_iter()
                .find(|t| t.name == topic)
                .unwrap_or_else(|| panic!("no topic {topic} on tansu"));
            let mut out = Vec::new();
            for p in t.partitions {
                let pc = client
                    .partition_client(topic.to_string(), p, UnknownTopicHandling::Retry)
                    .await
                    .expect("a partition client");
                out.push(Arc::new(pc));
            }
            out
        });
        let offsets = vec![0; partitions.len()];
        Consumer {
            broker: self,
            partitions,
            offsets,
            messages: Vec::new(),
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads a topic's partitions from offset 0 on, keeping what it read.
pub struct Consumer<'a> {
    broker: &'a Tansu,
    partitions: Vec<Arc<PartitionClient>>,
    offsets: Vec<i64>,
    /// Every record read so far, per partition in offset order.
    pub messages: Vec<Message>,
}

impl Consumer<'_> {
    /// Reads what is new in every partition (until a fetch comes back
    /// empty); returns how many records that was.
    pub fn poll(&mut self) -> usize {
        let before = self.messages.len();
        let Consumer {
            broker,
            partitions,
            offsets,
            messages,
        } = self;
        broker.rt.block_on(async {
            for (pc, offset) in partitions.iter().zip(offsets.iter_mut()) {
                loop {
                    let (records, _high_watermark) = match pc
                        .fetch_records(*offset, 1..16 << 20, FETCH_WAIT_MS)
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("fetch {}/{} at {offset}: {e}", pc.topic(), pc.partition());
                            break;
                        }
                    };
                    // A fetch may start at a batch before the offset asked for.
                    let fresh: Vec<_> = records
                        .into_iter()
                        .filter(|r| r.offset >= *offset)
                        .collect();
                    let Some(last) = fresh.last() else { break };
                    *offset = last.offset + 1;
                    messages.extend(fresh.into_iter().map(|r| Message {
                        partition: pc.partition(),
                        offset: r.offset,
                        key: r.record.key.unwrap_or_default(),
                        value: r.record.value.unwrap_or_default(),
                        ts_ms: r.record.timestamp.timestamp_millis(),
                    }));
                }
            }
        });
        self.messages.len() - before
    }

    /// Messages per partition, in offset order.
    pub fn by_partition(&self) -> BTreeMap<i32, Vec<&Message>> {
        let mut m: BTreeMap<i32, Vec<&Message>> = BTreeMap::new();
        for msg in &self.messages {
            m.entry(msg.partition).or_default().push(msg);
        }
        m
    }
}
