//! Single flight: N = 1, 100 and 10,000 requests arrive on an empty cache
//! whose token source answers after a fixed 5 ms (real time). Measured
//! (`single_flight/propel/N`): from the moment the source answers until the
//! last of the N requests is through. Checked in every fan-out, outside the
//! measured part: the source was asked exactly once.
//!
//! `single_flight/watch_floor/N` is the floor: N tasks woken by a
//! `tokio::sync::watch` flag raised after the same 5 ms, each then sending its
//! request to the bare inner service.
//!
//! The N requests are N tasks spawned on a current-thread runtime before any
//! of them runs, so all N are on the cache's slow path (waiting on the one
//! fetch) by the time the token arrives.
//!
//! Run: `cargo bench --bench single_flight` (add `-- --quick` for a fast check).

#[path = "hot_path.rs"]
#[allow(dead_code)]
mod hot_path;

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use futures_util::future::BoxFuture;
use tower::{Layer, ServiceExt};
use tower_propel_auth::{AccessToken, PropelAuthLayer, TokenError, TokenParams, TokenSource};

use hot_path::{inner, request, API_URL, TOKEN};

/// How long the token source takes to answer.
const FETCH_DELAY: Duration = Duration::from_millis(5);

/// How many requests arrive at once.
const FAN_OUT: [usize; 3] = [1, 100, 10_000];

/// What the source saw: how often it was asked, and when it answered.
#[derive(Debug, Default)]
struct Probe {
    calls: AtomicUsize,
    answered_at: Mutex<Option<Instant>>,
}

/// Answers after [`FETCH_DELAY`], counting its calls.
#[derive(Debug)]
struct DelayedSource(Arc<Probe>);

impl TokenSource for DelayedSource {
    fn fetch_token(
        &self,
        _params: &TokenParams,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>> {
        let probe = Arc::clone(&self.0);
        probe.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(FETCH_DELAY).await;
            let token = AccessToken::new(TOKEN, Duration::from_secs(3600));
            *probe.answered_at.lock().expect("not poisoned") = Some(Instant::now());
            token
        })
    }
}

/// One fan-out's result.
struct FanOut {
    /// From the token's arrival until the last request was through.
    elapsed: Duration,
    token_requests: usize,
    waited_for_token: u64,
}

/// The last of a fan-out's requests records when it was through.
#[derive(Debug)]
struct Finish {
    remaining: AtomicUsize,
    last: Mutex<Option<Instant>>,
}

/// `n` requests on a fresh layer with an empty cache.
async fn fan_out(n: usize) -> FanOut {
    let probe = Arc::new(Probe::default());
    let layer = PropelAuthLayer::token_source(DelayedSource(Arc::clone(&probe)))
        .allowed_origins([API_URL])
        .build()
        .expect("a valid layer");
    let finish = Arc::new(Finish {
        remaining: AtomicUsize::new(n),
        last: Mutex::new(None),
    });
    // Spawned without yielding: none of them runs before all are spawned.
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let service = layer.layer(inner());
            let finish = Arc::clone(&finish);
            tokio::spawn(async move {
                service.oneshot(request()).await.expect("a response");
                if finish.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    *finish.last.lock().expect("not poisoned") = Some(Instant::now());
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("the request task does not panic");
    }
    let arrived = probe
        .answered_at
        .lock()
        .expect("not poisoned")
        .expect("the source answered");
    let last = finish
        .last
        .lock()
        .expect("not poisoned")
        .expect("the last request finished");
    FanOut {
        elapsed: last.saturating_duration_since(arrived),
        token_requests: probe.calls.load(Ordering::SeqCst),
        waited_for_token: layer.stats().waited_for_token,
    }
}

/// The floor for comparison: `n` tasks that wait on a `tokio::sync::watch`
/// flag, raised by a task of its own after [`FETCH_DELAY`], and then send
/// their request straight to the inner service (no layer). The same interval
/// is measured: from the signal until the last request is through.
async fn fan_out_floor(n: usize) -> Duration {
    let (signal, ready) = tokio::sync::watch::channel(false);
    let finish = Arc::new(Finish {
        remaining: AtomicUsize::new(n),
        last: Mutex::new(None),
    });
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let mut ready = ready.clone();
            let finish = Arc::clone(&finish);
            tokio::spawn(async move {
                ready
                    .wait_for(|ready| *ready)
                    .await
                    .expect("the signal comes");
                inner().oneshot(request()).await.expect("a response");
                if finish.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    *finish.last.lock().expect("not poisoned") = Some(Instant::now());
                }
            })
        })
        .collect();
    let signaller = tokio::spawn(async move {
        tokio::time::sleep(FETCH_DELAY).await;
        let at = Instant::now();
        signal.send_replace(true);
        at
    });
    for handle in handles {
        handle.await.expect("the request task does not panic");
    }
    let arrived = signaller.await.expect("the signaller does not panic");
    let last = finish
        .last
        .lock()
        .expect("not poisoned")
        .expect("the last request finished");
    last.saturating_duration_since(arrived)
}

/// What every fan-out of one N showed, printed after its bench.
#[derive(Debug, Default)]
struct Tally {
    fan_outs: u64,
    max_token_requests: usize,
    min_waited: Option<u64>,
}

fn single_flight(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("single_flight");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    for n in FAN_OUT {
        let tally = RefCell::new(Tally::default());
        group.bench_with_input(BenchmarkId::new("watch_floor", n), &n, |b, &n| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += fan_out_floor(n).await;
                }
                total
            })
        });
        group.bench_with_input(BenchmarkId::new("propel", n), &n, |b, &n| {
            b.to_async(&rt).iter_custom(|iters| {
                let tally = &tally;
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let fan = fan_out(n).await;
                        total += fan.elapsed;
                        // Checked after the measured interval.
                        assert_eq!(fan.token_requests, 1, "one token request for {n} requests");
                        let mut tally = tally.borrow_mut();
                        tally.fan_outs += 1;
                        tally.max_token_requests = tally.max_token_requests.max(fan.token_requests);
                        tally.min_waited = Some(
                            tally
                                .min_waited
                                .map_or(fan.waited_for_token, |m| m.min(fan.waited_for_token)),
                        );
                    }
                    total
                }
            })
        });
        let tally = tally.into_inner();
        println!(
            "single_flight/propel/{n}: {} fan-outs, token requests per fan-out: {} (max seen), requests that waited for the token: at least {} of {n}",
            tally.fan_outs,
            tally.max_token_requests,
            tally.min_waited.unwrap_or_default(),
        );
    }
    group.finish();
}

fn main() {
    let mut c = hot_path::criterion();
    single_flight(&mut c);
    c.final_summary();
}
