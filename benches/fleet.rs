//! The shared cache (feature `redis`), against a real redis-server on
//! loopback and FakePropel:
//!
//! - criterion's `fleet_first_token/*`: what a request that must wait for a
//!   token pays, through a fresh layer (its in-process cache empty):
//!   `no_store` (a token request to FakePropel), `store_hit` (the token read
//!   from Redis and opened), `store_miss` (read, lock, read again, token
//!   request, store, unlock), `store_down` (Redis stopped: the connection's
//!   error, then the token request);
//! - a table of the wait of a process that finds the lock held (another
//!   process is fetching, the Token API taking 50 ms), for three poll
//!   intervals: the price of polling over pub/sub;
//! - an interleaved table of the hot path (a cached token) with and without
//!   a shared cache configured: the store is never on it.
//!
//! Token requests per lifetime for 1, 8 and 32 processes is a measurement
//! over real processes, in `tests/shared_cache_fleet.rs` (ignored test
//! `token_requests_per_lifetime_for_1_8_and_32_processes`).
//!
//! Run: `cargo bench --features redis --bench fleet` (needs redis-server or
//! valkey-server on PATH; `scripts/test` installs one).

#[path = "hot_path.rs"]
#[allow(dead_code)]
mod hot_path;
#[path = "../tests/support/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;
use tower::Layer;
use tower_propel_auth::shared_cache::{SharedCache, SharedCacheSettings};
use tower_propel_auth::{Credentials, FakePropel, PropelAuthLayer, TokenHttpClient};

use hot_path::{criterion, inner, interleave, measuring, send_prebuilt, Runner};
use redis_server::RedisServer;

/// What every layer of the bench shares: FakePropel on a runtime of its
/// own, the bench's runtime, Redis, and one pooled HTTP client for tokens.
struct Bench {
    fake: FakePropel,
    _fake_runtime: Runtime,
    rt: Runtime,
    redis: RedisServer,
    http: TokenHttpClient,
}

impl Bench {
    fn new() -> Self {
        let fake_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let fake = fake_runtime.block_on(FakePropel::start());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let http = {
            let _guard = rt.enter();
            TokenHttpClient::new(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())
        };
        Self {
            fake,
            _fake_runtime: fake_runtime,
            rt,
            redis: RedisServer::start(),
            http,
        }
    }

    fn shared(&self, settings: SharedCacheSettings) -> SharedCache {
        let connection = self.rt.block_on(self.redis.connection());
        SharedCache::redis(connection).with_settings(settings)
    }

    /// A fresh layer (empty in-process cache), with `shared` if any.
    fn layer(&self, shared: Option<&SharedCache>) -> PropelAuthLayer {
        let credentials =
            Credentials::new(self.fake.application_id(), self.fake.application_secret())
                .expect("credentials");
        let mut builder = PropelAuthLayer::client_credentials(credentials)
            .token_url(self.fake.token_url())
            .http_client(self.http.clone());
        if let Some(shared) = shared {
            builder = builder.shared_cache(shared.clone());
        }
        builder.build().expect("a layer")
    }

    /// The time `layer.access_token(None)` takes on a fresh layer, `iters`
    /// times; `before` runs untimed before each.
    fn first_tokens(
        &self,
        iters: u64,
        shared: Option<&SharedCache>,
        mut before: impl FnMut(),
    ) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            before();
            let layer = self.layer(shared);
            let started = Instant::now();
            self.rt.block_on(layer.access_token(None)).expect("a token");
            total += started.elapsed();
        }
        total
    }
}

fn first_token(c: &mut Criterion, bench: &mut Bench) {
    let shared = bench.shared(SharedCacheSettings::default());
    let mut group = c.benchmark_group("fleet_first_token");
    group.bench_function("no_store", |b| {
        b.iter_custom(|iters| bench.first_tokens(iters, None, || {}))
    });
    // The entry stays in Redis from the first iteration on.
    group.bench_function("store_hit", |b| {
        b.iter_custom(|iters| bench.first_tokens(iters, Some(&shared), || {}))
    });
    group.bench_function("store_miss", |b| {
        b.iter_custom(|iters| {
            bench.first_tokens(iters, Some(&shared), || {
                bench.rt.block_on(bench.redis.flush())
            })
        })
    });
    let down = bench.shared(SharedCacheSettings::default());
    bench.redis.stop();
    group.bench_function("store_down", |b| {
        b.iter_custom(|iters| bench.first_tokens(iters, Some(&down), || {}))
    });
    group.finish();
    bench.redis.restart();
}

/// Two fresh layers ask at once with the Token API taking 50 ms: one takes
/// the lock and fetches, the other waits. The waiter's extra time over the
/// fetcher's is what polling costs.
fn print_peer_wait(bench: &Bench, samples: usize) {
    bench.fake.set_token_latency(Duration::from_millis(50));
    println!("fleet: a waiter's extra latency over the process fetching the token (Token API 50 ms; {samples} samples; median, max):\n");
    println!("| poll_interval | fetcher | waiter | waiter's extra |");
    println!("|---:|---:|---:|---:|");
    for poll in [5, 20, 50] {
        let mut settings = SharedCacheSettings::default();
        settings.poll_interval = Duration::from_millis(poll);
        let shared = bench.shared(settings);
        let mut fetcher = Vec::new();
        let mut waiter = Vec::new();
        for _ in 0..samples {
            bench.rt.block_on(bench.redis.flush());
            let (a, b) = (bench.layer(Some(&shared)), bench.layer(Some(&shared)));
            let started = Instant::now();
            let (ta, tb) = bench.rt.block_on(async {
                let timed = |layer: PropelAuthLayer| async move {
                    layer.access_token(None).await.expect("a token");
                    started.elapsed()
                };
                tokio::join!(timed(a), timed(b))
            });
            let (first, second) = if ta <= tb { (ta, tb) } else { (tb, ta) };
            fetcher.push(first);
            waiter.push(second);
        }
        let extra: Vec<Duration> = fetcher
            .iter()
            .zip(&waiter)
            .map(|(f, w)| w.saturating_sub(*f))
            .collect();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let median = |mut v: Vec<Duration>| {
            v.sort();
            (ms(v[v.len() / 2]), ms(v[v.len() - 1]))
        };
        let (f, _) = median(fetcher);
        let (w, _) = median(waiter);
        let (e, emax) = median(extra);
        println!("| {poll} ms | {f:.1} ms | {w:.1} ms | {e:.1} ms (max {emax:.1} ms) |");
    }
    println!();
    bench.fake.set_token_latency(Duration::ZERO);
}

/// Requests per round of the interleaved hot path.
const REQUESTS: u64 = 4096;

/// The hot path with a cached token, with and without a shared cache
/// configured, interleaved.
fn print_hot_path(bench: &Bench, rounds: usize) {
    let shared = bench.shared(SharedCacheSettings::default());
    let mut runners: Vec<(String, Runner<'_>)> = Vec::new();
    for (name, shared) in [
        ("client_credentials", None),
        ("client_credentials_shared_cache", Some(&shared)),
    ] {
        let layer = bench.layer(shared);
        bench
            .rt
            .block_on(layer.access_token(None))
            .expect("a token");
        let mut service = layer.layer(inner());
        let rt = &bench.rt;
        runners.push((
            name.to_owned(),
            Box::new(move || {
                let elapsed = rt.block_on(send_prebuilt(&mut service, REQUESTS));
                elapsed.as_nanos() as f64 / REQUESTS as f64
            }),
        ));
    }
    let results = interleave(&mut runners, rounds);
    println!(
        "fleet: the hot path, interleaved ({rounds} rounds of {REQUESTS} requests; per request):\n"
    );
    println!("| variant | median | min |");
    println!("|---|---:|---:|");
    for ((name, _), (median, min)) in runners.iter().zip(&results) {
        println!("| {name} | {median:.1} ns | {min:.1} ns |");
    }
    println!();
}

fn main() {
    let mut bench = Bench::new();
    let mut c = criterion();
    first_token(&mut c, &mut bench);
    c.final_summary();
    let (samples, rounds) = if measuring() { (41, 41) } else { (1, 1) };
    print_peer_wait(&bench, samples);
    print_hot_path(&bench, rounds);
}
