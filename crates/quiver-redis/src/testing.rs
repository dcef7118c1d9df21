//! Real Redis servers for tests and benchmarks (of this crate and of the crates that
//! serve through it): `redis-server` processes on free loopback ports,
//! each in its own temporary directory, killed when dropped; and a 3-primary Redis
//! Cluster made of three of them with `redis-cli --cluster create`.
//!
//! `QUIVER_REDIS_URL` (a server URL) and `QUIVER_REDIS_CLUSTER` (comma-separated node
//! URLs) make the tests use existing servers instead. Every test writes under keys of
//! its own, so a shared server is fine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "the Redis tests run real servers: install them with \
     `apt-get install redis-server` (Debian; it brings redis-cli too), or point \
     QUIVER_REDIS_URL / QUIVER_REDIS_CLUSTER at running ones";

/// Panics (the test fails, it is not skipped) unless `tool` runs.
fn require(tool: &str) {
    match Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{tool} --version` failed ({}): {INSTALL_HINT}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run {tool} ({e}): {INSTALL_HINT}"),
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}

/// Sends one inline command and returns the first reply line, if the server answers.
fn inline_command(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Some(text.lines().next().unwrap_or_default().to_string())
}

/// Starts `redis-server` on `port` with its files (and log, appended) in `dir`.
fn spawn(port: u16, dir: &Path, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("redis.log"))
        .expect("log file");
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no"]);
    let dir_str = dir.to_str().expect("UTF-8 temp path");
    for a in extra {
        cmd.arg(a.replace("{dir}", dir_str));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("log handle")))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server ({e}): {INSTALL_HINT}"))
}

/// A `redis-server` process, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Server {
    /// Starts a server with `extra` arguments (`{dir}` in them is replaced by the
    /// server's directory) on a free port, and waits until it answers PING.
    pub fn start(extra: &[String]) -> Server {
        require("redis-server");
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("temporary directory");
            let port = free_port();
            let child = spawn(port, dir.path(), extra);
            let log_path = dir.path().join("redis.log");
            let mut server = Server {
                child,
                port,
                dir,
                extra: extra.to_vec(),
            };
            match server.wait_ready(&log_path) {
                Ok(()) => return server,
                Err(log) => {
                    // Most likely the port was taken in between: try another one.
                    last_log = log;
                    drop(server);
                }
            }
        }
        panic!("redis-server did not start; its last log:\n{last_log}");
    }

    /// Kills the server (SIGKILL): connections drop, unsaved data is lost.
    pub fn kill(&mut self) {
        self.thaw_quietly();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a killed server again on the same port and directory (with
    /// `--appendonly yes` among its arguments, it reloads what it had written).
    pub fn restart(&mut self) {
        self.child = spawn(self.port, self.dir.path(), &self.extra);
        let log_path = self.dir.path().join("redis.log");
        if let Err(log) = self.wait_ready(&log_path) {
            panic!("redis-server did not restart; its log:\n{log}");
        }
    }

    fn wait_ready(&mut self, log_path: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if inline_command(self.port, "PING").as_deref() == Some("+PONG") {
                return Ok(());
            }
            let exited = self.child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() > deadline {
                return Err(std::fs::read_to_string(log_path).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing is answered,
    /// as with a server stuck in a long command or a paused VM.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {}", self.child.id());
    }
}

impl Server {
    fn thaw_quietly(&self) {
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.thaw_quietly();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server for a test: started here, or the one of `QUIVER_REDIS_URL`.
pub enum Standalone {
    Owned(Server),
    External(String),
}

impl Standalone {
    pub fn url(&self) -> String {
        match self {
            Standalone::Owned(s) => s.url(),
            Standalone::External(u) => u.clone(),
        }
    }
}

pub fn standalone() -> Standalone {
    match std::env::var("QUIVER_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => Standalone::External(url),
        _ => Standalone::Owned(Server::start(&[])),
    }
}

/// A Redis Cluster for a test: three primaries started here, or the nodes of
/// `QUIVER_REDIS_CLUSTER`.
pub struct Cluster {
    _servers: Vec<Server>,
    nodes: Vec<String>,
}

impl Cluster {
    /// Seed node URLs.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.clone()
    }
}

pub fn cluster() -> Cluster {
    if let Ok(list) = std::env::var("QUIVER_REDIS_CLUSTER") {
        let nodes: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if !nodes.is_empty() {
            return Cluster {
                _servers: Vec::new(),
                nodes,
            };
        }
    }
    require("redis-cli");
    let servers: Vec<Server> = (0..3)
        .map(|_| {
            Server::start(&[
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                "{dir}/nodes.conf".into(),
                // The bus port on a free port of its own, not port + 10000.
                "--cluster-port".into(),
                free_port().to_string(),
                "--cluster-node-timeout".into(),
                "5000".into(),
            ])
        })
        .collect();
    let mut create = Command::new("redis-cli");
    create.args(["--cluster", "create"]);
    for s in &servers {
        create.arg(format!("127.0.0.1:{}", s.port));
    }
    create.args(["--cluster-replicas", "0", "--cluster-yes"]);
    let out = create.output().expect("run redis-cli --cluster create");
    assert!(
        out.status.success(),
        "redis-cli --cluster create failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Wait until every node sees the whole cluster, all slots served.
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &servers {
        loop {
            let info = cluster_info(&s.url());
            if info.contains("cluster_state:ok")
                && info.contains("cluster_slots_ok:16384")
                && info.contains("cluster_known_nodes:3")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ready; node {} says:\n{info}\nlog:\n{}",
                s.port,
                std::fs::read_to_string(s.dir().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let nodes = servers.iter().map(Server::url).collect();
    Cluster {
        _servers: servers,
        nodes,
    }
}

/// A synchronous connection to one server, for inspecting it.
pub fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

fn cluster_info(url: &str) -> String {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
        .unwrap_or_default()
}

/// The URLs of the cluster's primaries, from `CLUSTER SLOTS` of node `seed`, with the
/// slot ranges each serves.
pub fn primaries(seed: &str) -> Vec<(String, Vec<(u16, u16)>)> {
    let mut c = connect(seed);
    let slots: Vec<(u16, u16, (String, u16))> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query::<Vec<redis::Value>>(&mut c)
        .expect("CLUSTER SLOTS")
        .into_iter()
        .map(|range| {
            let redis::Value::Array(parts) = range else {
                panic!("CLUSTER SLOTS: {range:?}")
            };
            let start: u16 = redis::from_redis_value_ref(&parts[0]).expect("start slot");
            let end: u16 = redis::from_redis_value_ref(&parts[1]).expect("end slot");
            let redis::Value::Array(node) = &parts[2] else {
                panic!("CLUSTER SLOTS node: {:?}", parts[2])
            };
            let host: String = redis::from_redis_value_ref(&node[0]).expect("host");
            let port: u16 = redis::from_redis_value_ref(&node[1]).expect("port");
            (start, end, (host, port))
        })
        .collect();
    let mut out: Vec<(String, Vec<(u16, u16)>)> = Vec::new();
    for (start, end, (host, port)) in slots {
        let url = format!("redis://{host}:{port}");
        match out.iter_mut().find(|(u, _)| *u == url) {
            Some((_, ranges)) => ranges.push((start, end)),
            None => out.push((url, vec![(start, end)])),
        }
    }
    out
}

/// The slot of `key`, as the server computes it.
pub fn keyslot(conn: &mut redis::Connection, key: &[u8]) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(conn)
        .expect("CLUSTER KEYSLOT")
}
