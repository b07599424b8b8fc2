//! `mosquitto` from Debian's package (2.0.11), one broker per test.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{append_log, program, tail, ChildGuard};
use crate::{free_port, poll_until};

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A `mosquitto` broker on free loopback ports with its own temporary
/// directory (config, log, certificates). Anonymous clients, no persistence
/// (unless [`Mosquitto::start_persistent`]), unlimited queues, 1000
/// unacknowledged QoS 1 messages in flight per client (the default 20
/// throttles an agent that acks after its group commit), and subscriptions
/// logged (tests wait for them). Killed when dropped.
pub struct Mosquitto {
    child: Option<ChildGuard>,
    dir: TempDir,
    port: u16,
    tls_port: Option<u16>,
    persistent: bool,
}

impl Mosquitto {
    /// Starts a broker with one plain MQTT listener; returns once it accepts
    /// TCP connections.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(false, false)
    }

    /// Like [`Mosquitto::start`], with persistence on (`mosquitto.db` in its
    /// directory): sessions and their queued QoS 1 messages survive a
    /// [`Mosquitto::restart`], as on a production broker.
    pub fn start_persistent() -> Mosquitto {
        Mosquitto::start_with(false, true)
    }

    /// Starts a broker with a plain listener ([`Mosquitto::port`]) and a TLS
    /// listener ([`Mosquitto::tls_port`]) whose certificate, for `127.0.0.1`
    /// and `localhost`, is signed by a fresh CA ([`Mosquitto::ca_file`]),
    /// generated with the `openssl` command.
    pub fn start_tls() -> Mosquitto {
        Mosquitto::start_with(true, false)
    }

    fn start_with(tls: bool, persistent: bool) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("mosquitto-")
            .tempdir()
            .expect("create a temporary directory");
        if tls {
            make_certs(dir.path());
        }
        let mut broker = Mosquitto {
            child: None,
            dir,
            port: 0,
            tls_port: None,
            persistent,
        };
        for attempt in 1.. {
            broker.port = free_port();
            broker.tls_port = tls.then(free_port);
            broker.write_config();
            match broker.launch() {
                Ok(()) => break,
                Err(e) if attempt < 3 && broker.port_taken() => {
                    eprintln!("mosquitto: {e}; retrying with other ports");
                }
                Err(e) => broker.fail(&e),
            }
        }
        broker
    }

    /// Starts the broker again after [`Mosquitto::stop`], on the same ports.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "mosquitto is already running");
        if let Err(e) = self.launch() {
            self.fail(&e);
        }
    }

    /// Stops the broker as an operator would (SIGTERM: a persistent broker
    /// saves its sessions and queues), waits for it to exit, and starts it
    /// again on the same ports; returns once it accepts connections.
    pub fn restart(&mut self) {
        let mut c = self.child.take().expect("mosquitto is running");
        crate::process::shut_down(&mut c, &self.log_file());
        self.start_again();
    }

    /// Kills the broker (SIGKILL) and reaps it. Does nothing if it is not running.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Waits until the broker's log shows a subscription of a client whose id
    /// contains `client` to `filter`: from then on its session gets (or, if
    /// persistent, queues) everything published there.
    pub fn wait_subscribed(&self, client: &str, filter: &str) {
        crate::wait_until(
            &format!("{client}'s subscription to {filter} in mosquitto's log"),
            START_TIMEOUT,
            || {
                let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
                log.lines()
                    .any(|l| l.contains(client) && l.contains(filter))
                    .then_some(())
            },
        );
    }

    /// The broker process, while it runs (e.g. to send it a signal).
    pub fn process(&mut self) -> Option<&mut ChildGuard> {
        self.child.as_mut()
    }

    /// The plain MQTT port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`, the plain listener.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The TLS port on 127.0.0.1; panics unless started with [`Mosquitto::start_tls`].
    pub fn tls_port(&self) -> u16 {
        self.tls_port
            .expect("no TLS listener: start with Mosquitto::start_tls")
    }

    /// `mqtts://127.0.0.1:PORT`, the TLS listener; panics unless started with
    /// [`Mosquitto::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.tls_port())
    }

    /// The PEM file of the CA that signed the TLS listener's certificate;
    /// panics unless started with [`Mosquitto::start_tls`].
    pub fn ca_file(&self) -> PathBuf {
        self.tls_port();
        self.dir.path().join("ca.crt")
    }

    /// The temporary directory (config, log, certificates and keys).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The broker's log (its own log file plus stdout and stderr).
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn config_file(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let mut conf = String::new();
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            // As root, mosquitto switches to the `mosquitto` user after
            // reading its config, and then cannot open the log file nor the
            // certificates in a root-owned temporary directory.
            conf.push_str("user root\n");
        }
        let persistence = if self.persistent {
            format!("persistence true\npersistence_location {d}/\n")
        } else {
            "persistence false\n".to_string()
        };
        conf.push_str(&persistence);
        conf.push_str(&format!(
            "per_listener_settings false
allow_anonymous true
max_queued_messages 0
max_inflight_messages 1000
log_dest file {d}/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
log_type subscribe
listener {} 127.0.0.1
",
            self.port
        ));
        if let Some(tls_port) = self.tls_port {
            conf.push_str(&format!(
                "listener {tls_port} 127.0.0.1
cafile {d}/ca.crt
certfile {d}/server.crt
keyfile {d}/server.key
"
            ));
        }
        std::fs::write(self.config_file(), conf).expect("write mosquitto.conf");
    }

    /// Spawns `mosquitto` and waits until its listeners accept connections;
    /// on failure the child is killed.
    fn launch(&mut self) -> Result<(), String> {
        let log = append_log(&self.log_file());
        let mut child = ChildGuard::spawn(
            "mosquitto",
            Command::new(program("mosquitto", "mosquitto"))
                .arg("-c")
                .arg(self.config_file())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup the log file"))
                .stderr(log),
        );
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.tls_port).collect();
        let what = format!("mosquitto to accept TCP connections on 127.0.0.1 ports {ports:?}");
        let ready = poll_until(START_TIMEOUT, Duration::from_millis(20), || {
            if let Some(status) = child.try_wait() {
                return Some(Err(format!(
                    "mosquitto exited ({status}) while waiting for {what}"
                )));
            }
            ports
                .iter()
                .all(|p| {
                    TcpStream::connect_timeout(&([127, 0, 0, 1], *p).into(), Duration::from_secs(1))
                        .is_ok()
                })
                .then_some(Ok(()))
        });
        match ready {
            Some(Ok(())) => {
                self.child = Some(child);
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => Err(format!(
                "timed out after {START_TIMEOUT:?} waiting for {what}"
            )),
        }
    }

    /// Whether the last start failed because a port was taken meanwhile.
    fn port_taken(&self) -> bool {
        self.log_tail()
            .to_lowercase()
            .contains("address already in use")
    }

    fn log_tail(&self) -> String {
        tail(&self.log_file(), 40)
    }

    fn fail(&self, e: &str) -> ! {
        panic!(
            "{e}\n--- tail of {} ---\n{}",
            self.log_file().display(),
            self.log_tail()
        )
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `ca.crt`/`ca.key` (a CA) and `server.crt`/`server.key` (signed by
/// it, for IP 127.0.0.1 and DNS localhost) into `dir`: P-256 keys, v3
/// extensions that webpki (rustls) accepts.
pub(crate) fn make_certs(dir: &Path) {
    std::fs::write(
        dir.join("ca.cnf"),
        "[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = tidegate test CA
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
",
    )
    .expect("write ca.cnf");
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
",
    )
    .expect("write server.ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = ["-keyout", "ca.key", "-out", "ca.crt", "-days", "7"];
    openssl(
        dir,
        &[&["req", "-x509", "-config", "ca.cnf"][..], &ec, &ca].concat(),
    );
    let csr = ["-keyout", "server.key", "-out", "server.csr"];
    openssl(
        dir,
        &[&["req", "-new", "-subj", "/CN=localhost"][..], &ec, &csr].concat(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "7",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ],
    );
}

/// Runs `openssl ARGS` in `dir`; panics with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(program("openssl", "openssl"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
