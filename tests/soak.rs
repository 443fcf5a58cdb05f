//! Soak: many concurrent requests through one layer (behind
//! `retry::TransientErrors`, the recommended stack), over real TCP against
//! `FakePropel`, while tokens rotate, one token request in ten fails and
//! tokens are revoked. Nothing may arrive at the API with an expired token or
//! without credentials, every request must end (a response or a typed
//! error), and token requests must stay within the bound derived below.
//!
//! The default run takes about 7 s. A 3-minute run is `#[ignore]`d:
//!
//! ```text
//! cargo test --all-features --test soak -- --ignored --nocapture
//! ```

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::testing::TokenFault;
use tower_propel_auth::Error;

use support::{graphql, hyper_client, settings, start, token_layer, DATA_POOL_QUERY};

const WORKERS: usize = 32;
/// The tokens' lifetime: short, so that tokens rotate every second or so.
/// The layer's safety margin is a quarter of it here (0.5 s).
const LIFETIME: Duration = Duration::from_secs(2);
/// The earliest a token is refreshed: refresh at 80% minus up to 10% jitter
/// of the usable lifetime (lifetime minus the 0.5 s margin), `0.7 * 1.5 s`.
const EARLIEST_REFRESH: Duration = Duration::from_millis(1050);
/// One revocation every this long, alternating one token and all tokens.
const REVOKE_EVERY: Duration = Duration::from_millis(2500);
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
const COOLDOWN: Duration = Duration::from_millis(100);
/// No request may take longer than this: the fetch timeout plus a margin.
const REQUEST_CAP: Duration = Duration::from_secs(3);
/// A worker's pause after an error, as a well-behaved caller would.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(5);

/// How the requests ended.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// A response other than a 200: a 401 or 403 should have become an error.
    other_status: AtomicU64,
    token_errors: AtomicU64,
    /// Token errors that are not transient: none of the injected faults is.
    permanent_token_errors: AtomicU64,
    unauthorized: AtomicU64,
    /// Forbidden, insecure transport, inner service errors.
    unexpected: AtomicU64,
    /// Requests still running after `REQUEST_CAP`.
    hung: AtomicU64,
}

impl Tally {
    fn requests(&self) -> u64 {
        [
            &self.ok,
            &self.other_status,
            &self.token_errors,
            &self.unauthorized,
            &self.unexpected,
            &self.hung,
        ]
        .iter()
        .map(|c| c.load(Relaxed))
        .sum()
    }
}

/// The faults injected into one token request in ten, in turn.
fn fault(n: u64) -> TokenFault {
    match n % 5 {
        0 => TokenFault::Status {
            status: 500,
            retry_after: None,
            body: None,
        },
        1 => TokenFault::Status {
            status: 503,
            retry_after: Some(1),
            body: None,
        },
        2 => TokenFault::Status {
            status: 429,
            retry_after: None,
            body: None,
        },
        3 => TokenFault::ConnectionClose,
        _ => TokenFault::ResetMidBody,
    }
}

async fn soak(run_for: Duration) {
    let fake = Arc::new(start().await);
    fake.set_token_lifetime(LIFETIME);
    let layer = token_layer(&fake)
        .settings(settings(|s| {
            s.fetch_timeout = FETCH_TIMEOUT;
            s.cooldown = COOLDOWN;
        }))
        .build()
        .unwrap();
    // The recommended stack: a 401 whose token the layer dropped is sent
    // once more by the retry layer, with the next token. One retry, at once
    // or nearly: a token error retried within the cool-down gets the same
    // error, so the tally of token errors means what it did before.
    let retry =
        TransientErrors::with_backoff(1, Duration::from_millis(1), Duration::from_millis(1))
            .expect("a valid backoff");
    let service = ServiceBuilder::new()
        .retry(retry)
        .layer(layer.clone())
        .service(hyper_client());
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + run_for;

    // One token request in ten fails: numbers 2, 12, 22 … (the first
    // background refresh included). The fault is queued once the request
    // before it has arrived.
    let injector = {
        let (fake, stop) = (Arc::clone(&fake), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut injected = 0;
            let mut next = 2;
            while !stop.load(Relaxed) {
                if fake.stats().token_requests + 1 >= next {
                    fake.fail_next_token_requests(1, fault(injected));
                    injected += 1;
                    next += 10;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            injected
        })
    };

    // A revocation every 2.5 s: the current token, then every token so far.
    let revoker = {
        let (fake, stop, layer) = (Arc::clone(&fake), Arc::clone(&stop), layer.clone());
        tokio::spawn(async move {
            let mut revocations = 0u64;
            let mut at = started + REVOKE_EVERY;
            while at < deadline && !stop.load(Relaxed) {
                tokio::time::sleep_until(at).await;
                if revocations.is_multiple_of(2) {
                    match layer.access_token(None).await {
                        Ok(token) => fake.revoke_token(token.secret().expose_secret()),
                        Err(_) => fake.revoke_all_tokens(),
                    }
                } else {
                    fake.revoke_all_tokens();
                }
                revocations += 1;
                at += REVOKE_EVERY;
            }
            revocations
        })
    };

    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (service, tally, url) = (service.clone(), Arc::clone(&tally), fake.api_url());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let request = service.clone().oneshot(graphql(&url, DATA_POOL_QUERY));
                    let counter = match tokio::time::timeout(REQUEST_CAP, request).await {
                        Err(_) => &tally.hung,
                        Ok(Ok(response)) => {
                            let ok = response.status() == http::StatusCode::OK;
                            let _ = response.into_body().collect().await;
                            if ok {
                                &tally.ok
                            } else {
                                &tally.other_status
                            }
                        }
                        Ok(Err(Error::Token(err))) => {
                            if !err.is_transient() {
                                eprintln!("permanent token error: {err}");
                                tally.permanent_token_errors.fetch_add(1, Relaxed);
                            }
                            &tally.token_errors
                        }
                        Ok(Err(Error::Unauthorized(_))) => &tally.unauthorized,
                        Ok(Err(err)) => {
                            eprintln!("unexpected error: {err:?}");
                            &tally.unexpected
                        }
                    };
                    counter.fetch_add(1, Relaxed);
                    if !std::ptr::eq(counter, &tally.ok) {
                        tokio::time::sleep(PAUSE_AFTER_ERROR).await;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
    stop.store(true, Relaxed);
    let elapsed = started.elapsed();
    let failures_injected = injector.await.unwrap();
    let revocations = revoker.await.unwrap();

    let fake_stats = fake.stats();
    let stats = layer.stats();
    let requests = tally.requests();
    let get = |c: &AtomicU64| c.load(Relaxed);
    println!("soak of {elapsed:?} with {WORKERS} workers:");
    println!(
        "  requests {requests}: {} ok, {} token errors ({} permanent), {} unauthorized, \
         {} other statuses, {} unexpected errors, {} hung",
        get(&tally.ok),
        get(&tally.token_errors),
        get(&tally.permanent_token_errors),
        get(&tally.unauthorized),
        get(&tally.other_status),
        get(&tally.unexpected),
        get(&tally.hung),
    );
    println!(
        "  rotations (tokens issued) {}, token requests {} (fake {}), failed token requests {} \
         ({failures_injected} injected), revocations {revocations}",
        fake_stats.tokens_issued,
        stats.token_requests,
        fake_stats.token_requests,
        fake_stats.token_errors,
    );
    println!(
        "  API requests {}: expired-token arrivals {}, unauthenticated arrivals {}, \
         revoked-token arrivals {}; Unauthorized errors in the layer {}, waited for a token {}",
        fake_stats.api_requests,
        fake_stats.api_expired_token,
        fake_stats.api_unauthenticated,
        fake_stats.api_invalid_credentials,
        stats.unauthorized,
        stats.waited_for_token,
    );

    // Every request ended, each with a response or a typed error.
    assert_eq!(get(&tally.hung), 0, "requests hung");
    assert_eq!(get(&tally.unexpected), 0, "untyped or unexpected errors");
    assert_eq!(get(&tally.other_status), 0, "a 401/403 passed through");
    assert_eq!(get(&tally.permanent_token_errors), 0);
    assert!(get(&tally.ok) > 0);
    // What the API saw.
    assert_eq!(
        fake_stats.api_expired_token, 0,
        "a request used an expired token"
    );
    assert_eq!(
        fake_stats.api_unauthenticated, 0,
        "a request went without credentials"
    );
    // Token requests. A token is replaced by a refresh ahead (at least
    // EARLIEST_REFRESH after it was fetched), by going stale (later still),
    // or by a 401 after a revocation. Refreshes ahead: at most
    // elapsed / EARLIEST_REFRESH over the whole run. 401 refreshes: at most
    // two per revocation (the revoked token, and one being fetched while
    // `revoke_all_tokens` ran). So tokens issued <= 1 + elapsed /
    // EARLIEST_REFRESH + 2 * revocations, and each failed token request adds
    // one more attempt.
    let rotations = (elapsed.as_millis() / EARLIEST_REFRESH.as_millis()) as u64;
    let tokens_bound = 1 + rotations + 2 * revocations;
    let requests_bound = tokens_bound + fake_stats.token_errors;
    println!("  bounds: tokens issued <= {tokens_bound}, token requests <= {requests_bound}");
    assert!(
        fake_stats.tokens_issued <= tokens_bound,
        "{} tokens issued; bound {tokens_bound}",
        fake_stats.tokens_issued
    );
    assert!(
        stats.token_requests <= requests_bound,
        "{} token requests; bound {requests_bound}",
        stats.token_requests
    );
    assert!(fake_stats.token_requests <= requests_bound);
    assert!(fake_stats.token_errors <= failures_injected);
    assert!(
        fake_stats.tokens_issued >= 2,
        "tokens rotated at least once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_rotation_failures_and_revocation_nothing_arrives_expired_or_hangs() {
    soak(Duration::from_secs(7)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 3 minutes; run with --ignored --nocapture"]
async fn a_three_minute_soak_keeps_every_promise() {
    soak(Duration::from_secs(180)).await;
}
