//! A fleet of real OS processes sharing one Redis and one FakePropel: each
//! process is this test binary run again in a child mode (`FLEET_CHILD`),
//! with a layer of its own, driven by the parent over stdin and answering on
//! stdout.
//!
//! - Eight processes, many concurrent requests per process and tenant: one
//!   token request per parameter set for the whole fleet, and one more per
//!   set across a rotation (real tokens of a few seconds).
//! - Redis stopped mid-run, then hung: every request succeeds, each process
//!   falls back to its own token within the bound, and sharing resumes when
//!   Redis returns.
//! - Ignored, for BENCHMARKS.md: token requests per token lifetime for 1, 8
//!   and 32 processes, with and without the store.

#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_server;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tower::{Layer, ServiceExt};
use tower_propel_auth::shared_cache::{SharedCache, SharedCacheSettings};
use tower_propel_auth::{Credentials, PropelAuthLayer, Stats, TokenParams};

use redis_server::RedisServer;
use support::{graphql, hyper_client, FakeOnItsOwnRuntime, HyperClient, DATA_POOL_QUERY};

/// The child mode's entry point: a no-op unless `FLEET_CHILD` is set.
#[test]
fn fleet_child() {
    if std::env::var_os("FLEET_CHILD").is_some() {
        child::run();
    }
}

#[test]
fn eight_processes_share_one_token_per_tenant_across_a_rotation() {
    let redis = RedisServer::start();
    let fake = FakeOnItsOwnRuntime::start();
    fake.set_token_lifetime(ROTATION_LIFETIME);
    let mut fleet = Fleet::spawn(8, &fake, Some(&redis));
    let tenants = "default,acme,globex,initech";

    let started = SystemTime::now();
    let replies = fleet.all(&format!("burst {tenants} 25"));
    assert_all_succeeded(&replies, 8 * 4 * 25);
    assert_eq!(
        fake.stats().token_requests,
        4,
        "one per parameter set for the fleet"
    );
    let sum = |replies: &[Value], field: &str| -> u64 {
        replies
            .iter()
            .map(|r| r["stats"][field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum(&replies, "token_requests"), 4);
    assert_eq!(sum(&replies, "store_hits"), 8 * 4 - 4);
    assert_eq!(sum(&replies, "store_fallbacks"), 0);

    let replies = fleet.all(&format!("traffic {tenants} {} 50", rotation_end(started)));
    assert_all_succeeded(&replies, 0);
    assert_eq!(
        fake.stats().token_requests,
        8,
        "one more per set for the rotation: {replies:?}"
    );
    assert_eq!(sum(&replies, "token_requests"), 8);
    assert_eq!(sum(&replies, "store_fallbacks"), 0);
    assert_eq!(fake.stats().api_expired_token, 0);
}

#[test]
fn with_redis_stopped_mid_run_every_request_succeeds_and_sharing_resumes() {
    let mut redis = RedisServer::start();
    let fake = FakeOnItsOwnRuntime::start();
    let mut fleet = Fleet::spawn(8, &fake, Some(&redis));
    let bound = SharedCacheSettings::default().store_timeout;

    let replies = fleet.all("burst acme,globex 25");
    assert_all_succeeded(&replies, 8 * 2 * 25);
    assert_eq!(fake.stats().token_requests, 2);

    // Traffic goes on with the cached tokens while Redis goes away, and
    // new tenants come in while it is gone: each process falls back to a
    // token of its own, within the bound.
    fleet.all("traffic_start acme,globex 20");
    redis.stop();
    let replies = fleet.all("burst initech,umbrella 25");
    assert_all_succeeded(&replies, 8 * 2 * 25);
    for reply in &replies {
        assert_eq!(reply["stats"]["store_fallbacks"], 2, "{reply}");
        let slowest = Duration::from_millis(reply["max_ms"].as_u64().unwrap());
        assert!(slowest < bound + Duration::from_millis(900), "{reply}");
    }
    assert_eq!(fake.stats().token_requests, 2 + 8 * 2);

    // Redis comes back (empty): once each process's connection has
    // reconnected, the fleet shares again.
    redis.restart();
    fleet.all("reconnect");
    let before = fake.stats().token_requests;
    let replies = fleet.all("burst hooli,wonka 25");
    assert_all_succeeded(&replies, 8 * 2 * 25);
    assert_eq!(fake.stats().token_requests, before + 2, "shared again");

    // A Redis that hangs (SIGSTOP) costs each process one store timeout.
    redis.freeze();
    let replies = fleet.all("burst stark 10");
    redis.thaw();
    assert_all_succeeded(&replies, 8 * 10);
    for reply in &replies {
        let slowest = Duration::from_millis(reply["max_ms"].as_u64().unwrap());
        assert!(
            slowest >= bound && slowest < bound + Duration::from_millis(900),
            "{reply}"
        );
    }

    let replies = fleet.all("traffic_stop");
    assert_all_succeeded(&replies, 0);
    assert_eq!(
        fake.stats().api_unauthenticated + fake.stats().api_expired_token,
        0
    );
}

/// Token requests per parameter set and token lifetime, for BENCHMARKS.md:
/// `cargo test --all-features --test shared_cache_fleet -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement (about 40 s), not a check"]
fn token_requests_per_lifetime_for_1_8_and_32_processes() {
    let redis = RedisServer::start();
    let sets = 4;
    println!("| processes | store | token requests, first tokens | per rotation | per set and lifetime |");
    println!("|---:|---|---:|---:|---:|");
    for processes in [1, 8, 32] {
        for store in [false, true] {
            let fake = FakeOnItsOwnRuntime::start();
            fake.set_token_lifetime(ROTATION_LIFETIME);
            let mut fleet = Fleet::spawn(processes, &fake, store.then_some(&redis));
            let started = SystemTime::now();
            let replies = fleet.all("burst default,acme,globex,initech 10");
            assert_all_succeeded(&replies, processes * sets * 10);
            let first = fake.stats().token_requests;
            let until = rotation_end(started);
            let replies = fleet.all(&format!("traffic default,acme,globex,initech {until} 100"));
            assert_all_succeeded(&replies, 0);
            let rotation = fake.stats().token_requests - first;
            println!(
                "| {processes} | {} | {first} | {rotation} | {:.1} |",
                if store { "Redis" } else { "none" },
                rotation as f64 / sets as f64
            );
            drop(fleet);
            redis_flush(&redis);
        }
    }
}

/// Tokens of 6 s: a safety margin of 1.5 s (a quarter), each process
/// refreshing ahead between 3.15 and 3.6 s after its first token (a little
/// later for one read from the store), stale at 4.5 s; the next rotation
/// comes 3.15 s after this one at the earliest, so past 6.3 s.
const ROTATION_LIFETIME: Duration = Duration::from_secs(6);

/// When traffic that spans exactly one rotation ends, as Unix milliseconds:
/// 5 s after the first tokens were asked for, past every process's refresh
/// point and the first tokens' stale point, before the next refresh point.
fn rotation_end(first_tokens: SystemTime) -> u64 {
    unix_millis(first_tokens + Duration::from_secs(5))
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn redis_flush(redis: &RedisServer) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(redis.flush());
}

#[track_caller]
fn assert_all_succeeded(replies: &[Value], at_least: usize) {
    let ok: u64 = replies.iter().map(|r| r["ok"].as_u64().unwrap()).sum();
    let failed: u64 = replies.iter().map(|r| r["failed"].as_u64().unwrap()).sum();
    assert_eq!(failed, 0, "failed requests: {replies:?}");
    assert!(
        ok >= at_least as u64,
        "{ok} requests succeeded, expected {at_least}"
    );
}

/// The child processes, killed when dropped.
struct Fleet {
    children: Vec<ChildProcess>,
}

struct ChildProcess {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<Value>,
}

impl Fleet {
    /// Starts `n` children and waits until each has its layer and connection.
    fn spawn(n: usize, fake: &FakeOnItsOwnRuntime, redis: Option<&RedisServer>) -> Fleet {
        let exe = std::env::current_exe().expect("the test binary");
        let children = (0..n)
            .map(|_| {
                let mut child = Command::new(&exe)
                    .args(["fleet_child", "--exact", "--nocapture", "--test-threads=1"])
                    .env("FLEET_CHILD", "1")
                    .env("FLEET_TOKEN_URL", fake.token_url())
                    .env("FLEET_API_URL", fake.api_url())
                    .env("FLEET_APPLICATION_ID", fake.application_id())
                    .env("FLEET_SECRET", fake.application_secret())
                    .env(
                        "FLEET_REDIS",
                        redis.map(RedisServer::url).unwrap_or_default(),
                    )
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("a child process");
                let stdin = child.stdin.take().expect("piped stdin");
                let stdout = child.stdout.take().expect("piped stdout");
                let (tx, replies) = mpsc::channel();
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        // libtest's "test fleet_child ... " may come first.
                        if let Some(at) = line.find("FLEET {") {
                            let reply =
                                serde_json::from_str(&line[at + 6..]).expect("a JSON reply");
                            if tx.send(reply).is_err() {
                                break;
                            }
                        }
                    }
                });
                ChildProcess {
                    child,
                    stdin,
                    replies,
                }
            })
            .collect();
        let mut fleet = Fleet { children };
        fleet.collect("start");
        fleet
    }

    /// Sends `command` to every child at once, then collects their replies.
    fn all(&mut self, command: &str) -> Vec<Value> {
        for child in &mut self.children {
            writeln!(child.stdin, "{command}").expect("a child that listens");
            child.stdin.flush().expect("a child that listens");
        }
        self.collect(command)
    }

    fn collect(&mut self, command: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        self.children
            .iter()
            .map(|child| {
                let left = deadline.saturating_duration_since(Instant::now());
                child
                    .replies
                    .recv_timeout(left)
                    .unwrap_or_else(|err| panic!("no reply to {command:?} from a child: {err}"))
            })
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = writeln!(child.stdin, "exit");
            let _ = child.stdin.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.child.kill();
            let _ = child.child.wait();
        }
    }
}

/// What a child process does: one layer, commands from stdin, one JSON
/// reply per command on stdout.
mod child {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use futures_util::future::join_all;
    use tokio::task::JoinHandle;

    use super::*;

    /// Requests that failed or succeeded in the background traffic.
    #[derive(Default)]
    struct Counts {
        ok: AtomicU64,
        failed: AtomicU64,
    }

    struct Process {
        layer: PropelAuthLayer,
        client: HyperClient,
        api_url: String,
        redis: Option<redis::aio::ConnectionManager>,
        background: Option<(
            JoinHandle<()>,
            Arc<Counts>,
            Arc<std::sync::atomic::AtomicBool>,
        )>,
    }

    pub(super) fn run() {
        // One worker: background traffic runs while the main thread waits
        // on stdin.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let mut process = runtime.block_on(Process::new());
        reply(json!({ "ready": true }));
        for line in std::io::stdin().lines() {
            let line = line.expect("a command");
            let words: Vec<&str> = line.split_whitespace().collect();
            let answer = match words.as_slice() {
                ["burst", tenants, n] => {
                    runtime.block_on(process.burst(tenants, n.parse().unwrap()))
                }
                ["traffic", tenants, until, every] => runtime.block_on(process.traffic(
                    tenants,
                    UNIX_EPOCH + Duration::from_millis(until.parse().unwrap()),
                    Duration::from_millis(every.parse().unwrap()),
                )),
                ["traffic_start", tenants, every] => {
                    let _guard = runtime.enter();
                    process.traffic_start(tenants, Duration::from_millis(every.parse().unwrap()))
                }
                ["traffic_stop"] => runtime.block_on(process.traffic_stop()),
                ["reconnect"] => runtime.block_on(process.reconnect()),
                ["exit"] => break,
                _ => panic!("unknown command {line:?}"),
            };
            reply(answer);
        }
    }

    fn reply(value: Value) {
        println!("FLEET {value}");
    }

    fn var(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
    }

    impl Process {
        async fn new() -> Self {
            let credentials =
                Credentials::new(var("FLEET_APPLICATION_ID"), var("FLEET_SECRET")).unwrap();
            let api_url = var("FLEET_API_URL");
            let mut builder = PropelAuthLayer::client_credentials(credentials)
                .token_url(var("FLEET_TOKEN_URL"))
                .allowed_origins([api_url.clone()]);
            let redis_url = var("FLEET_REDIS");
            let mut redis = None;
            if !redis_url.is_empty() {
                let connection = redis_server::connect(&redis_url).await;
                builder = builder.shared_cache(SharedCache::redis(connection.clone()));
                redis = Some(connection);
            }
            Self {
                layer: builder.build().expect("a layer"),
                client: hyper_client(),
                api_url,
                redis,
                background: None,
            }
        }

        /// `n` concurrent requests per tenant, all at once.
        async fn burst(&self, tenants: &str, n: usize) -> Value {
            let requests = tenants
                .split(',')
                .flat_map(|tenant| std::iter::repeat_n(tenant, n))
                .map(|tenant| timed(&self.layer, &self.client, &self.api_url, tenant));
            let results = join_all(requests).await;
            let ok = results.iter().filter(|r| r.is_some()).count();
            let max_ms = results.iter().flatten().max().copied().unwrap_or_default();
            self.answer(ok as u64, (results.len() - ok) as u64, max_ms)
        }

        /// A request per tenant every `every`, until the wall-clock time
        /// `until` (the parent's clock: both are this machine's).
        async fn traffic(&self, tenants: &str, until: SystemTime, every: Duration) -> Value {
            let (mut ok, mut failed, mut max_ms) = (0, 0, 0);
            while SystemTime::now() < until {
                let round = tenants
                    .split(',')
                    .map(|tenant| timed(&self.layer, &self.client, &self.api_url, tenant));
                for result in join_all(round).await {
                    match result {
                        Some(ms) => {
                            ok += 1;
                            max_ms = max_ms.max(ms);
                        }
                        None => failed += 1,
                    }
                }
                tokio::time::sleep(every).await;
            }
            self.answer(ok, failed, max_ms)
        }

        fn traffic_start(&mut self, tenants: &str, every: Duration) -> Value {
            let counts = Arc::new(Counts::default());
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (layer, client, api_url) = (
                self.layer.clone(),
                self.client.clone(),
                self.api_url.clone(),
            );
            let tenants: Vec<String> = tenants.split(',').map(str::to_owned).collect();
            let task = tokio::spawn({
                let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
                async move {
                    while !stop.load(Ordering::SeqCst) {
                        let round = tenants.iter().map(|t| timed(&layer, &client, &api_url, t));
                        for result in join_all(round).await {
                            let counter = if result.is_some() {
                                &counts.ok
                            } else {
                                &counts.failed
                            };
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::time::sleep(every).await;
                    }
                }
            });
            self.background = Some((task, counts, stop));
            json!({ "started": true })
        }

        async fn traffic_stop(&mut self) -> Value {
            let (task, counts, stop) = self.background.take().expect("traffic running");
            stop.store(true, Ordering::SeqCst);
            task.await.expect("the traffic task");
            self.answer(
                counts.ok.load(Ordering::SeqCst),
                counts.failed.load(Ordering::SeqCst),
                0,
            )
        }

        /// Waits until the connection manager answers again after Redis
        /// came back.
        async fn reconnect(&mut self) -> Value {
            let connection = self.redis.as_mut().expect("a Redis connection");
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let pong: Result<String, _> = redis::cmd("PING").query_async(connection).await;
                if pong.is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Redis did not come back: {pong:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            json!({ "reconnected": true })
        }

        fn answer(&self, ok: u64, failed: u64, max_ms: u64) -> Value {
            json!({ "ok": ok, "failed": failed, "max_ms": max_ms, "stats": stats(&self.layer.stats()) })
        }
    }

    /// One query as `tenant` ("default": the layer's own parameters); its
    /// latency in ms, or `None` when it failed.
    async fn timed(
        layer: &PropelAuthLayer,
        client: &HyperClient,
        api_url: &str,
        tenant: &str,
    ) -> Option<u64> {
        let mut request = graphql(api_url, DATA_POOL_QUERY);
        if tenant != "default" {
            request.extensions_mut().insert(TokenParams::tenant(tenant));
        }
        let started = Instant::now();
        match layer.layer(client.clone()).oneshot(request).await {
            Ok(response) if response.status().is_success() => {
                Some(started.elapsed().as_millis() as u64)
            }
            Ok(response) => {
                eprintln!("fleet child: {tenant}: {}", response.status());
                None
            }
            Err(err) => {
                eprintln!("fleet child: {tenant}: {err}");
                None
            }
        }
    }

    fn stats(stats: &Stats) -> Value {
        json!({
            "token_requests": stats.token_requests,
            "waited_for_token": stats.waited_for_token,
            "store_hits": stats.store_hits,
            "store_misses": stats.store_misses,
            "store_lock_waits": stats.store_lock_waits,
            "store_fallbacks": stats.store_fallbacks,
            "store_rejected_values": stats.store_rejected_values,
        })
    }
}
