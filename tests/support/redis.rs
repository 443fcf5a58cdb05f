//! A real Redis for the shared-cache tests: `valkey-server` where installed,
//! else `redis-server`, on a free loopback port, in a temporary directory,
//! without persistence; stopped when dropped.
//!
//! Test files use it with `#[path = "support/redis.rs"] mod redis_server;`.
//! When neither binary is installed the tests fail, saying how to get one
//! (`scripts/test` installs it): they never pass without Redis.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The binaries tried, in order.
const BINARIES: [&str; 2] = ["valkey-server", "redis-server"];

/// A redis-server (or valkey-server) child process.
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port.
    ///
    /// # Panics
    ///
    /// When no server binary is installed, or it does not start.
    pub fn start() -> Self {
        let binary = find_binary().unwrap_or_else(|| {
            panic!(
                "the shared-cache tests need a Redis server, and neither valkey-server nor \
                 redis-server is on PATH. Run scripts/test (it installs one), or: \
                 sudo apt-get install redis-server (Debian/Ubuntu), brew install redis (macOS)"
            )
        });
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-propel-auth-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory for redis-server");
        // A port that was free a moment ago may be taken by the time the
        // server binds it: try a few.
        for _ in 0..5 {
            let mut server = Self {
                binary: binary.clone(),
                port: free_port(),
                dir: dir.clone(),
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("{} did not start on a loopback port", binary.display());
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The binary in use (valkey-server or redis-server).
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Kills the server (its data goes with it: nothing is saved).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "redis-server did not start again on its port");
    }

    /// Stops the process (SIGSTOP): connections stay open and nothing
    /// answers, like a server that hangs.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// A client for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid Redis URL")
    }

    /// A connection manager with short timeouts, as a service would keep one:
    /// it reconnects by itself after the server restarts.
    pub async fn connection(&self) -> ConnectionManager {
        connect(&self.url()).await
    }

    /// Every key, by `SCAN` (test data sets are small).
    pub async fn keys(&self) -> Vec<String> {
        let mut connection = self.connection().await;
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys
    }

    /// The raw value of `key`.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut connection = self.connection().await;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .expect("GET")
    }

    /// Sets `key` to `value` for an hour.
    pub async fn set(&self, key: &str, value: &[u8]) {
        let mut connection = self.connection().await;
        let () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(3600)
            .query_async(&mut connection)
            .await
            .expect("SET");
    }

    /// Removes every key.
    pub async fn flush(&self) {
        let mut connection = self.connection().await;
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut connection)
            .await
            .expect("FLUSHALL");
    }

    /// Starts the process and waits until it answers `PING`; `false` when it
    /// exits first (its port was taken).
    fn spawn(&mut self) -> bool {
        let mut child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", self.binary.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if ping(self.port) {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running server");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A frozen server would not die of SIGTERM; SIGKILL works anyway.
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection manager to `url` with short timeouts.
pub async fn connect(url: &str) -> ConnectionManager {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(200));
    let client = redis::Client::open(url).expect("a valid Redis URL");
    ConnectionManager::new_with_config(client, config)
        .await
        .expect("a connection to the test Redis")
}

/// Whether a Redis server binary is installed.
pub fn installed() -> bool {
    find_binary().is_some()
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    BINARIES.iter().find_map(|name| {
        dirs.iter()
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
