//! Rotation: a steady, paced stream of requests (one every 20 µs) through one
//! layer across many token expiries, with refresh ahead on. The source's
//! tokens live 200 ms and take 5 ms to arrive; the layer keeps a 20 ms safety
//! margin.
//!
//! Two parts:
//! - a recorded stream (4 s) that prints p50 / p99 / max latency of the
//!   requests near a rotation (from 1 ms before a token request starts to
//!   1 ms after its token arrives) against all the others, how many requests
//!   waited for a token, and how many carried a token past its real expiry;
//! - criterion's `rotation/paced_stream`: the mean latency of a request in the
//!   same stream (pacing excluded), rotations included.
//!
//! Run: `cargo bench --bench rotation` (add `-- --quick` for a fast check).

#[path = "hot_path.rs"]
#[allow(dead_code)]
mod hot_path;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, SamplingMode};
use futures_util::future::BoxFuture;
use http::header::AUTHORIZATION;
use http::Response;
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_propel_auth::{
    AccessToken, PropelAuthLayer, Settings, TokenError, TokenParams, TokenSource,
};

use hot_path::{request, Req, Resp, API_URL};

/// How long the source's tokens live.
const LIFETIME: Duration = Duration::from_millis(200);
/// The layer's safety margin.
const SAFETY_MARGIN: Duration = Duration::from_millis(20);
/// How long the source takes to answer.
const FETCH_DELAY: Duration = Duration::from_millis(5);
/// One request every this long.
const PACE: Duration = Duration::from_micros(20);
/// A request this close to a token request (before it starts or after its
/// token arrives) counts as near a rotation.
const NEAR: Duration = Duration::from_millis(1);

/// One token request as the source saw it.
#[derive(Debug, Clone, Copy)]
struct Fetch {
    started: Instant,
    answered: Option<Instant>,
    /// When the token really expires (`answered + LIFETIME`).
    expires: Option<Instant>,
}

/// Issues `rot-<n>` tokens after [`FETCH_DELAY`], recording each fetch.
#[derive(Debug, Clone, Default)]
struct RotatingSource(Arc<Mutex<Vec<Fetch>>>);

impl TokenSource for RotatingSource {
    fn fetch_token(
        &self,
        _params: &TokenParams,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>> {
        let fetches = Arc::clone(&self.0);
        let number = {
            let mut fetches = fetches.lock().expect("not poisoned");
            fetches.push(Fetch {
                started: Instant::now(),
                answered: None,
                expires: None,
            });
            fetches.len() - 1
        };
        Box::pin(async move {
            tokio::time::sleep(FETCH_DELAY).await;
            let token = AccessToken::new(format!("rot-{number}"), LIFETIME);
            let now = Instant::now();
            let mut fetches = fetches.lock().expect("not poisoned");
            fetches[number].answered = Some(now);
            fetches[number].expires = Some(now + LIFETIME);
            token
        })
    }
}

/// The inner service: notes which token each request carried, answers at once.
fn inner(
    seen: Arc<AtomicU32>,
) -> impl Service<
    Req,
    Response = Resp,
    Error = Infallible,
    Future = std::future::Ready<Result<Resp, Infallible>>,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |request: Req| {
        let number = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer rot-"))
            .and_then(|digits| std::str::from_utf8(digits).ok()?.parse().ok())
            .unwrap_or(u32::MAX);
        seen.store(number, Ordering::Relaxed);
        std::future::ready(Ok(Response::new(Full::new(Bytes::new()))))
    })
}

/// One request of the recorded stream.
#[derive(Debug, Clone, Copy)]
struct Record {
    at: Instant,
    latency: Duration,
    token: u32,
}

/// Sends a request every [`PACE`] (spinning in between) until `until` or
/// `count` requests; the latency of each.
async fn paced_stream<S>(
    service: &mut S,
    seen: &AtomicU32,
    count: u64,
    until: Option<Instant>,
    mut record: impl FnMut(Record),
) where
    S: Service<Req, Response = Resp>,
    S::Error: std::fmt::Debug,
{
    let mut next = Instant::now();
    for _ in 0..count {
        while Instant::now() < next {
            std::hint::spin_loop();
        }
        let at = Instant::now();
        if until.is_some_and(|until| at >= until) {
            break;
        }
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request())
            .await
            .expect("a response");
        let latency = at.elapsed();
        std::hint::black_box(response);
        record(Record {
            at,
            latency,
            token: seen.load(Ordering::Relaxed),
        });
        // Keep the cadence; after a stall, go on from now rather than burst.
        next = (next + PACE).max(Instant::now());
    }
}

/// A layer on a fresh [`RotatingSource`], warmed up with one request.
fn warmed_layer(rt: &tokio::runtime::Runtime) -> (PropelAuthLayer, RotatingSource) {
    let source = RotatingSource::default();
    let mut settings = Settings::default();
    settings.safety_margin = SAFETY_MARGIN;
    let layer = PropelAuthLayer::token_source(source.clone())
        .allowed_origins([API_URL])
        .settings(settings)
        .build()
        .expect("a valid layer");
    rt.block_on(layer.layer(inner(Arc::default())).oneshot(request()))
        .expect("the warm-up request succeeds");
    (layer, source)
}

/// Latency percentiles of a set of requests: p50, p99, p99.9, max.
#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    count: usize,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
}

impl Percentiles {
    fn of(latencies: &mut [Duration]) -> Self {
        if latencies.is_empty() {
            return Self::default();
        }
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        Self {
            count: latencies.len(),
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            max: latencies[latencies.len() - 1],
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
            self.count, self.p50, self.p99, self.p999, self.max
        )
    }
}

/// `a - b` in nanoseconds, signed.
fn minus(a: Duration, b: Duration) -> i128 {
    a.as_nanos() as i128 - b.as_nanos() as i128
}

/// The recorded stream and its report.
fn recorded_stream(rt: &tokio::runtime::Runtime, duration: Duration) {
    let (layer, source) = warmed_layer(rt);
    let before = layer.stats();
    let seen = Arc::new(AtomicU32::new(u32::MAX));
    let mut service = layer.layer(inner(Arc::clone(&seen)));
    let mut records = Vec::with_capacity((duration.as_micros() / PACE.as_micros()) as usize + 1);
    let started = Instant::now();
    rt.block_on(paced_stream(
        &mut service,
        &seen,
        u64::MAX,
        Some(started + duration),
        |record| records.push(record),
    ));
    let after = layer.stats();
    let fetches = source.0.lock().expect("not poisoned").clone();

    // The warm-up's fetch is not a rotation.
    let rotations: Vec<&Fetch> = fetches.iter().skip(1).collect();
    let is_near = |at: Instant| {
        rotations.iter().any(|fetch| {
            let from = fetch.started.checked_sub(NEAR).unwrap_or(fetch.started);
            let to = fetch.answered.unwrap_or(fetch.started) + NEAR;
            (from..=to).contains(&at)
        })
    };
    let (mut near_latencies, mut steady_latencies) = (Vec::new(), Vec::new());
    let mut expired = 0u64;
    for record in &records {
        if is_near(record.at) {
            near_latencies.push(record.latency);
        } else {
            steady_latencies.push(record.latency);
        }
        let expires = fetches
            .get(record.token as usize)
            .and_then(|fetch| fetch.expires);
        if expires.is_some_and(|expires| record.at >= expires) {
            expired += 1;
        }
    }
    // The request that started each refresh: the last one to start before
    // the source was asked (the fetch runs in a task of its own).
    let triggers: Vec<Duration> = rotations
        .iter()
        .filter_map(|fetch| {
            let at = records.partition_point(|record| record.at <= fetch.started);
            at.checked_sub(1).map(|i| records[i].latency)
        })
        .collect();
    let periods: Vec<Duration> = fetches
        .windows(2)
        .map(|pair| pair[1].started - pair[0].started)
        .collect();
    let near = Percentiles::of(&mut near_latencies);
    let steady = Percentiles::of(&mut steady_latencies);

    println!("\nrotation: {duration:?} paced stream (one request every {PACE:?}), tokens living {LIFETIME:?}, safety margin {SAFETY_MARGIN:?}, token source answering after {FETCH_DELAY:?}");
    println!(
        "  rotations: {} (token requests {} → {}), time between token requests: {periods:?}",
        rotations.len(),
        before.token_requests,
        after.token_requests
    );
    println!("  near a rotation: {near}");
    println!("  steady:          {steady}");
    println!(
        "  near minus steady: p50 {:+} ns, p99 {:+} ns, p99.9 {:+} ns, max {:+} ns",
        minus(near.p50, steady.p50),
        minus(near.p99, steady.p99),
        minus(near.p999, steady.p999),
        minus(near.max, steady.max)
    );
    println!("  the request that started each refresh: {triggers:?}");
    println!(
        "  requests that waited for a token: {}",
        after.waited_for_token - before.waited_for_token
    );
    println!(
        "  requests sent with a token past its real expiry: {expired} of {} ({:.0}%)\n",
        records.len(),
        expired as f64 * 100.0 / records.len().max(1) as f64
    );
}

fn rotation(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let stream_for = if hot_path::measuring() {
        Duration::from_secs(4)
    } else {
        Duration::from_millis(300)
    };
    recorded_stream(&rt, stream_for);

    let (layer, _source) = warmed_layer(&rt);
    let before = layer.stats();
    let mut group = c.benchmark_group("rotation");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("paced_stream", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let seen = Arc::new(AtomicU32::new(u32::MAX));
            let mut service = layer.layer(inner(Arc::clone(&seen)));
            async move {
                let mut total = Duration::ZERO;
                paced_stream(&mut service, &seen, iters, None, |record| {
                    total += record.latency
                })
                .await;
                total
            }
        })
    });
    group.finish();
    let after = layer.stats();
    println!(
        "rotation/paced_stream: {} token requests after the warm-up, {} requests waited for a token",
        after.token_requests - before.token_requests,
        after.waited_for_token - before.waited_for_token
    );
}

fn main() {
    let mut c = hot_path::criterion();
    rotation(&mut c);
    c.final_summary();
}
