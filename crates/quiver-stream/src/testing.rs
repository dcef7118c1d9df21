//! A real Kafka-compatible broker for tests and benchmarks: `tansu` (a Kafka broker
//! written in Rust, from crates.io) on a free loopback port with in-memory storage,
//! killed when dropped. `scripts/test.sh` installs it when missing
//! (`cargo install tansu`, into `~/.cache/quiver/tools`); `QUIVER_TANSU` names another
//! binary, `QUIVER_KAFKA_BROKERS` an existing broker to use instead.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "the Kafka tests run a real broker: install it with \
     `cargo install tansu --version 0.6.0 --locked --features dynostore --root ~/.cache/quiver/tools` \
     (scripts/test.sh does), or point QUIVER_KAFKA_BROKERS at a running one";

/// The broker binary: `$QUIVER_TANSU`, else `~/.cache/quiver/tools/bin/tansu`, else
/// `tansu` on the PATH.
fn tansu() -> PathBuf {
    if let Some(p) = std::env::var_os("QUIVER_TANSU") {
        return p.into();
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cache/quiver/tools/bin/tansu");
        if p.exists() {
            return p;
        }
    }
    "tansu".into()
}

/// A broker for a test: started here (killed on drop), or the one of
/// `QUIVER_KAFKA_BROKERS`.
pub struct Broker {
    child: Option<Child>,
    brokers: String,
    _dir: Option<tempfile::TempDir>,
}

impl Broker {
    /// The bootstrap address, `host:port`.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a broker on a free loopback port and waits until it accepts connections.
pub fn broker() -> Broker {
    if let Ok(b) = std::env::var("QUIVER_KAFKA_BROKERS") {
        if !b.trim().is_empty() {
            return Broker {
                child: None,
                brokers: b,
                _dir: None,
            };
        }
    }
    let bin = tansu();
    let dir = tempfile::tempdir().expect("temporary directory");
    for _attempt in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("tansu.log")).expect("log file");
        let child = Command::new(&bin)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}): {INSTALL_HINT}", bin.display()));
        let mut broker = Broker {
            child: Some(child),
            brokers: format!("127.0.0.1:{port}"),
            _dir: None,
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                broker._dir = Some(dir);
                return broker;
            }
            if let Some(Ok(Some(_))) = broker.child.as_mut().map(|c| c.try_wait()) {
                break; // exited: most likely the port was taken in between
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(broker);
    }
    let log = std::fs::read_to_string(dir.path().join("tansu.log")).unwrap_or_default();
    panic!("the broker did not start ({INSTALL_HINT}); its last log:\n{log}");
}
