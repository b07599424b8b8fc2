//! The harness itself: real servers start, answer, keep data across a
//! restart, and never share ports.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidegate_e2e::{wait_until, ChildGuard, Influxd, Mosquitto, Row, Signal};

const T1: i64 = 1_700_000_000_123_456_789;
const T2: i64 = 1_700_000_001_000_000_001;

fn row(series: &str, ts_ns: i64, value: f64) -> Row {
    Row {
        series: series.to_string(),
        ts_ns,
        value,
    }
}

#[test]
fn influxd_returns_exact_points_and_keeps_them_across_a_restart() {
    let t = Instant::now();
    let mut influx = Influxd::start();
    eprintln!("influxd start: {:?}", t.elapsed());

    assert!(influx.points("x", "m").is_empty(), "no database yet");
    assert_eq!(influx.count("x", "m"), 0);
    influx.create_db("x");
    assert!(influx.points("x", "m").is_empty(), "no measurement yet");
    // Tags unsorted on the wire; an integer field; values that need all 17 digits.
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/write?db=x&precision=ns", influx.url()))
        .body(format!(
            "m,zone=b,host=a temp=21.5,hum=40i {T1}\nm,host=c x=0.30000000000000004 {T2}\n"
        ))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().unwrap_or_default());

    let expected = vec![
        row("m,host=a,zone=b hum", T1, 40.0),
        row("m,host=a,zone=b temp", T1, 21.5),
        row("m,host=c x", T2, 0.1 + 0.2),
    ];
    let got = influx.points("x", "m");
    assert_eq!(got, expected);
    assert_eq!(got[2].value.to_bits(), (0.1f64 + 0.2).to_bits());
    assert_eq!(influx.count("x", "m"), 3);

    // SIGKILL: the points are only in the WAL, which the restart replays.
    influx.stop();
    assert!(
        reqwest::blocking::get(format!("{}/ping", influx.url())).is_err(),
        "stopped influxd still answers"
    );
    let t = Instant::now();
    influx.start_again();
    eprintln!("influxd start_again (WAL replay): {:?}", t.elapsed());
    assert_eq!(influx.points("x", "m"), expected);
    assert_eq!(influx.count("x", "m"), 3);
}

#[test]
fn two_influxd_instances_get_their_own_ports_and_data() {
    let a = Influxd::start();
    let b = Influxd::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    a.create_db("x");
    b.create_db("x");
    a.write("x", "m v=1 1\n");
    assert_eq!(a.points("x", "m"), vec![row("m v", 1, 1.0)]);
    assert!(b.points("x", "m").is_empty());
}

/// An MQTT 3.1.1 CONNECT (clean session, empty client id) and its CONNACK.
fn mqtt_connect(port: u16) -> std::io::Result<[u8; 4]> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0])?;
    let mut ack = [0; 4];
    s.read_exact(&mut ack)?;
    Ok(ack)
}

#[test]
fn mosquitto_accepts_mqtt_and_restarts_on_the_same_port() {
    let t = Instant::now();
    let mut broker = Mosquitto::start();
    eprintln!("mosquitto start: {:?}", t.elapsed());
    assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{}", broker.port()));
    assert_eq!(mqtt_connect(broker.port()).unwrap(), [0x20, 2, 0, 0]);

    broker.stop();
    assert!(TcpStream::connect(("127.0.0.1", broker.port())).is_err());
    broker.start_again();
    assert_eq!(mqtt_connect(broker.port()).unwrap(), [0x20, 2, 0, 0]);
}

/// A TLS handshake with rustls (as the agent does), trusting only `ca`.
fn tls_handshake(port: u16, ca: &std::path::Path, name: &str) -> Result<(), rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| {
            e.into_inner()
                .and_then(|e| e.downcast::<rustls::Error>().ok())
                .map(|e| *e)
                .unwrap_or(rustls::Error::General("I/O".into()))
        })?;
    }
    Ok(())
}

#[test]
fn mosquitto_tls_listener_is_trusted_through_the_generated_ca() {
    let t = Instant::now();
    let broker = Mosquitto::start_tls();
    eprintln!("mosquitto start_tls (with openssl): {:?}", t.elapsed());
    assert!(broker.ca_file().is_file());
    assert_eq!(
        broker.tls_url(),
        format!("mqtts://127.0.0.1:{}", broker.tls_port())
    );
    tls_handshake(broker.tls_port(), &broker.ca_file(), "127.0.0.1").unwrap();
    tls_handshake(broker.tls_port(), &broker.ca_file(), "localhost").unwrap();
    let wrong = tls_handshake(broker.tls_port(), &broker.ca_file(), "example.com");
    assert!(
        matches!(wrong, Err(rustls::Error::InvalidCertificate(_))),
        "{wrong:?}"
    );
    // The plain listener still speaks MQTT.
    assert_eq!(mqtt_connect(broker.port()).unwrap(), [0x20, 2, 0, 0]);
}

#[test]
fn child_guard_signals_waits_and_kills_on_drop() {
    let mut c = ChildGuard::spawn("sleep", Command::new("sleep").arg("60"));
    assert!(c.wait_timeout(Duration::from_millis(50)).is_none());
    c.signal(Signal::SIGTERM);
    let status = c
        .wait_timeout(Duration::from_secs(10))
        .expect("sleep exits");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));

    let c = ChildGuard::spawn("sleep", Command::new("sleep").arg("60"));
    let proc = format!("/proc/{}", c.pid());
    assert!(std::path::Path::new(&proc).exists());
    drop(c);
    assert!(
        !std::path::Path::new(&proc).exists(),
        "dropped child lives on"
    );
}

#[test]
#[should_panic(expected = "waiting for the impossible")]
fn wait_until_names_what_it_awaited() {
    wait_until("the impossible", Duration::from_millis(100), || None::<()>);
}
