//! The cache's promises, driven through the layer over an in-memory inner
//! service, on paused tokio time and a test clock that follows it (or is
//! moved by hand, with no task running).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use tower::{Service, ServiceExt};

use secrecy::ExposeSecret as _;

use crate::token::clock::TestClock;
use crate::token::test_source::{
    layer, layer_with, polls_pending, request, retrying, send, send_concurrently, Api,
    ScriptedSource, Step, HOUR,
};
use crate::{
    AccessToken, Error, PropelAuthLayer, Settings, TokenError, TokenErrorKind, TokenParams,
};

#[tokio::test(start_paused = true)]
async fn ten_thousand_concurrent_requests_on_an_empty_cache_make_one_token_request() {
    let source = ScriptedSource::tokens(Duration::from_millis(100), HOUR);
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    for result in send_concurrently(&service, 10_000).await {
        assert_eq!(result.unwrap(), "Bearer token1");
    }
    assert_eq!(source.calls(), 1);
    assert_eq!(layer.stats().token_requests, 1);
    assert_eq!(layer.stats().waited_for_token, 10_000);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_request_that_started_a_fetch_cancels_nothing() {
    let source = ScriptedSource::tokens(Duration::from_secs(1), HOUR);
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());

    // The first request starts the fetch, then is dropped mid-fetch.
    let mut first = Box::pin(send(&service));
    assert!(polls_pending(first.as_mut()).await);
    let second = tokio::spawn({
        let service = service.clone();
        async move { send(&service).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(first);

    assert_eq!(second.await.unwrap().unwrap(), "Bearer token1");
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_whose_waiters_all_left_still_fills_the_cache() {
    let source = ScriptedSource::tokens(Duration::from_secs(1), HOUR);
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    let mut only = Box::pin(send(&service));
    assert!(polls_pending(only.as_mut()).await);
    drop(only);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let waited = layer.stats().waited_for_token;
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    assert_eq!(
        layer.stats().waited_for_token,
        waited,
        "the token was already cached"
    );
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_is_refreshed_ahead_and_nobody_waits_while_it_is_valid() {
    // 100 s tokens: safety margin min(30 s, 25 s) = 25 s, so usable for 75 s;
    // refresh at 70–80% of that: between 52.5 s and 60 s.
    let source = ScriptedSource::tokens(Duration::from_secs(2), Duration::from_secs(100));
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    let fetched_at = tokio::time::Instant::now();
    assert_eq!(layer.stats().waited_for_token, 1);

    tokio::time::sleep(Duration::from_secs(52)).await;
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    assert_eq!(source.calls(), 1, "not yet due");

    tokio::time::sleep(Duration::from_secs(9)).await;
    // Due now: this request starts the refresh and goes out with token1 at once.
    let before = tokio::time::Instant::now();
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    assert_eq!(
        tokio::time::Instant::now(),
        before,
        "the request did not wait"
    );
    tokio::task::yield_now().await; // let the refresh task make its request
    assert_eq!(source.calls(), 2);
    // Requests during the 2 s refresh keep using token1 without waiting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    assert_eq!(
        source.calls(),
        2,
        "one refresh, however many readers are past the point"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(send(&service).await.unwrap(), "Bearer token2");

    assert_eq!(
        layer.stats().waited_for_token,
        1,
        "only the very first request waited"
    );
    assert!(
        fetched_at.elapsed() < Duration::from_secs(75),
        "all within token1's usable life"
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_past_its_stale_point_is_never_attached_though_no_task_ran() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let (layer, clock) = layer_with(&source, Settings::default());
    let mut service = layer.layer_over(Api::default());
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");

    // An hour passes on the wall clock while nothing runs: no task, no
    // timer, no await (a suspended host, a runtime nobody drove).
    clock.advance(HOUR);
    let mut response = Box::pin(
        ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
            .now_or_never()
            .expect("the inner service is always ready")
            .unwrap()
            .call(request()),
    );
    // The request does not go out with token1: it waits for a fresh token.
    assert!(polls_pending(response.as_mut()).await);
    assert_eq!(layer.stats().waited_for_token, 2);
    let body = response.await.unwrap().into_body().collect().await.unwrap();
    assert_eq!(&body.to_bytes()[..], b"Bearer token2");
}

#[tokio::test(start_paused = true)]
async fn a_token_outlives_the_runtime_that_fetched_it() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    let second_runtime = std::thread::spawn({
        let service = service.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(send(&service)).unwrap()
        }
    });
    // Its deadlines are data, not a timer on a runtime: nothing is lost
    // when that runtime goes.
    assert_eq!(second_runtime.join().unwrap(), "Bearer token1");
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_background_refresh_keeps_the_old_token_and_backs_off() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR)
        .then(Step::Token(HOUR))
        .then(Step::Fail(TokenErrorKind::Server))
        .then(Step::Fail(TokenErrorKind::Server))
        .then(Step::Fail(TokenErrorKind::Server))
        .then(Step::Fail(TokenErrorKind::Server));
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");

    // An hour-long token: usable 3570 s, due by 80% of that.
    tokio::time::sleep(Duration::from_secs(2857)).await;
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    // A request every 10 ms: each retry starts with the first reader after
    // its backoff (500 ms base, doubling), and no task sleeps through it.
    for _ in 0..1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let header = send(&service).await.unwrap();
        if source.calls() < 6 {
            assert_eq!(header, "Bearer token1", "the old token keeps serving");
        }
    }
    assert_eq!(send(&service).await.unwrap(), "Bearer token6");
    let times = source.call_times();
    assert_eq!(times.len(), 6);
    let gaps: Vec<Duration> = times[1..].windows(2).map(|w| w[1] - w[0]).collect();
    // Equal jitter: try n waits between half and all of 500 ms × 2^(n-1),
    // plus up to one 10 ms request interval for a reader to come.
    for (n, gap) in gaps.iter().enumerate() {
        let full = Duration::from_millis(500) * (1 << n);
        assert!(
            *gap >= full / 2 && *gap <= full + Duration::from_millis(20),
            "gap {n}: {gap:?} not in [{:?}, {full:?}]",
            full / 2
        );
    }
    assert_eq!(layer.stats().waited_for_token, 1);
    assert_eq!(layer.stats().token_failures, 4);
}

#[tokio::test(start_paused = true)]
async fn no_task_lives_between_token_requests() {
    let source = ScriptedSource::tokens(Duration::from_millis(10), HOUR);
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    send(&service).await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(
        metrics.num_alive_tasks(),
        before,
        "the fetch task ended with its request; no timer waits for the deadlines"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_error_in_the_background_is_not_retried() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR)
        .then(Step::Token(HOUR))
        .then(Step::Fail(TokenErrorKind::InvalidClient));
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    send(&service).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2857)).await;
    send(&service).await.unwrap();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    }
    assert_eq!(
        source.calls(),
        2,
        "a 4xx is a configuration problem, not retried"
    );
}

#[tokio::test(start_paused = true)]
async fn waiters_of_a_failed_fetch_share_one_error_then_fail_fast_during_the_cooldown() {
    let source = ScriptedSource::new(
        Duration::from_millis(50),
        Step::Fail(TokenErrorKind::Server),
    );
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());

    let mut errors = Vec::new();
    for result in send_concurrently(&service, 100).await {
        match result {
            Err(Error::Token(err)) => errors.push(err),
            other => panic!("expected a token error, got {other:?}"),
        }
    }
    assert_eq!(source.calls(), 1);
    assert_eq!(errors[0].kind(), TokenErrorKind::Server);
    assert!(
        errors.iter().all(|err| err.same_as(&errors[0])),
        "one error, shared"
    );

    // Within the 1 s cool-down: the same error at once, no new fetch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = tokio::time::Instant::now();
    match send(&service).await {
        Err(Error::Token(err)) => assert!(err.same_as(&errors[0])),
        other => panic!("expected the cached error, got {other:?}"),
    }
    assert_eq!(tokio::time::Instant::now(), before);
    assert_eq!(source.calls(), 1);

    // The Token API recovers; after the cool-down the next request succeeds.
    source.set_otherwise(Step::Token(HOUR));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(send(&service).await.unwrap(), "Bearer token2");
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_request_that_never_answers_times_out() {
    let source = ScriptedSource::new(Duration::ZERO, Step::Hang);
    let settings = Settings {
        fetch_timeout: Duration::from_secs(3),
        ..Settings::default()
    };
    let (layer, _) = layer_with(&source, settings);
    let service = layer.layer_over(Api::default());
    let started = tokio::time::Instant::now();
    match send(&service).await {
        Err(Error::Token(err)) => {
            assert_eq!(err.kind(), TokenErrorKind::Timeout);
            assert!(err.is_transient());
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_stale_token_is_not_used_and_the_next_request_waits_for_a_new_one() {
    // A 40 s token is stale at 30 s (margin: a quarter of the lifetime).
    let source = ScriptedSource::tokens(Duration::from_secs(1), Duration::from_secs(40));
    let settings = Settings {
        refresh_at: 1.0,
        refresh_jitter: 0.0,
        ..Settings::default()
    };
    let (layer, _) = layer_with(&source, settings);
    let service = layer.layer_over(Api::default());
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(send(&service).await.unwrap(), "Bearer token2");
    assert_eq!(layer.stats().waited_for_token, 2);
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_401s_on_one_token_cause_one_refresh_and_their_retries_succeed() {
    let source = ScriptedSource::tokens(Duration::from_millis(10), HOUR);
    let layer = layer(&source);
    // The API answers after 5 ms, so all fifty are out with token1 before
    // the first 401 comes back.
    let api = Api::with_latency(Duration::from_millis(5));
    let service = retrying(layer.layer_over(api.clone()));
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    api.reject("Bearer token1");

    for result in send_concurrently(&service, 50).await {
        assert_eq!(result.unwrap(), "Bearer token2");
    }
    assert_eq!(source.calls(), 2, "one refresh for all fifty 401s");
    assert_eq!(layer.stats().unauthorized, 50);
    assert_eq!(layer.stats().tokens_rejected, 1);
    assert_eq!(api.calls(), 1 + 50 + 50);
}

#[tokio::test(start_paused = true)]
async fn a_401_is_a_transient_unauthorized_and_the_next_attempt_gets_a_fresh_token() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let api = Api::default();
    let service = layer.layer_over(api.clone());
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    api.reject("Bearer token1");
    match send(&service).await {
        Err(Error::Unauthorized(err)) => assert!(err.is_transient(), "a fresh token may cure it"),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(api.calls(), 2, "the layer sent no copy of its own");
    assert_eq!(send(&service).await.unwrap(), "Bearer token2");
}

#[tokio::test(start_paused = true)]
async fn a_second_401_within_the_cooldown_is_final() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let api = Api::default();
    let service = layer.layer_over(api.clone());
    api.reject("Bearer token1");
    api.reject("Bearer token2");
    let first = send(&service).await.unwrap_err();
    assert!(first.is_transient());
    // The retry a retry layer would send: a fresh token, rejected too.
    let second = send(&service).await.unwrap_err();
    assert!(
        matches!(&second, Error::Unauthorized(err) if !err.is_transient()),
        "{second:?}"
    );
    assert_eq!(source.calls(), 2);
    assert_eq!(layer.stats().unauthorized, 2);
}

#[tokio::test(start_paused = true)]
async fn behind_a_retry_layer_a_second_401_is_final() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let api = Api::default();
    let service = retrying(layer.layer_over(api.clone()));
    api.reject("Bearer token1");
    api.reject("Bearer token2");
    match send(&service).await {
        Err(Error::Unauthorized(err)) => assert!(!err.is_transient()),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(api.calls(), 2, "sent once, retried once");
    assert_eq!(source.calls(), 2);
    assert_eq!(layer.stats().unauthorized, 2);
}

#[tokio::test(start_paused = true)]
async fn a_server_rejecting_every_token_cannot_cause_a_refresh_storm() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let api = Api::default();
    let service = retrying(layer.layer_over(api.clone()));
    for n in 1..=100 {
        api.reject(&format!("Bearer token{n}"));
    }
    // 200 requests, one after the other, 10 ms apart: 2 s of rejections.
    for _ in 0..200 {
        assert!(matches!(send(&service).await, Err(Error::Unauthorized(_))));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first fetch, then at most one 401-triggered refresh per 1 s cool-down.
    assert!(source.calls() <= 4, "{} token requests", source.calls());
}

#[tokio::test(start_paused = true)]
async fn an_expired_bearer_token_fails_with_a_typed_error() {
    let token = AccessToken::new("minted-elsewhere", Duration::from_secs(60)).unwrap();
    let clock = TestClock::new();
    let layer = PropelAuthLayer::bearer_with_clock(token, clock.clock());
    let service = layer.layer_over(Api::default());
    assert_eq!(send(&service).await.unwrap(), "Bearer minted-elsewhere");
    // Stale 15 s before it expires (a quarter of its lifetime).
    tokio::time::sleep(Duration::from_secs(46)).await;
    match send(&service).await {
        Err(Error::Token(err)) => assert_eq!(err.kind(), TokenErrorKind::Expired),
        other => panic!("expected Expired, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_bearer_tokens_401_is_final_and_keeps_the_token() {
    let token = AccessToken::new("minted-elsewhere", HOUR).unwrap();
    let layer = PropelAuthLayer::bearer(token);
    let api = Api::default();
    let service = layer.layer_over(api.clone());
    api.reject("Bearer minted-elsewhere");
    let err = send(&service).await.unwrap_err();
    assert!(
        matches!(&err, Error::Unauthorized(e) if !e.is_transient()),
        "{err:?}"
    );
    api.rejected.lock().unwrap().clear();
    assert_eq!(send(&service).await.unwrap(), "Bearer minted-elsewhere");
}

#[tokio::test(start_paused = true)]
async fn a_401_during_background_backoff_fetches_at_once_instead_of_waiting_it_out() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR)
        .then(Step::Token(HOUR))
        .then(Step::Fail(TokenErrorKind::Server));
    let settings = Settings {
        backoff_base: Duration::from_secs(20),
        backoff_max: Duration::from_secs(60),
        ..Settings::default()
    };
    let (layer, _) = layer_with(&source, settings);
    let api = Api::default();
    let service = retrying(layer.layer_over(api.clone()));
    send(&service).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2857)).await;
    send(&service).await.unwrap(); // starts the refresh, which fails and backs off 10–20 s
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(source.calls(), 2);

    api.reject("Bearer token1");
    let started = tokio::time::Instant::now();
    assert_eq!(send(&service).await.unwrap(), "Bearer token3");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn short_lived_tokens_are_never_used_past_their_expiry() {
    let source = ScriptedSource::tokens(Duration::from_millis(1), Duration::from_millis(200));
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    // 2 s of requests every 10 ms: each token serves at most its 200 ms.
    let mut last = String::new();
    let mut since = tokio::time::Instant::now();
    for _ in 0..200 {
        let header = send(&service).await.unwrap();
        if header != last {
            last = header;
            since = tokio::time::Instant::now();
        }
        assert!(
            since.elapsed() < Duration::from_millis(200),
            "{last} used for {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(source.calls() >= 10, "{} tokens in 2 s", source.calls());
}

#[tokio::test(start_paused = true)]
async fn a_source_handing_out_expired_tokens_cannot_cause_a_refresh_storm() {
    let source = ScriptedSource::tokens(Duration::ZERO, Duration::ZERO);
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    for _ in 0..100 {
        match send(&service).await {
            Err(Error::Token(err)) => assert_eq!(err.kind(), TokenErrorKind::Expired),
            other => panic!("expected a token error, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 1 s of requests, a 1 s cool-down after each failure.
    assert!(source.calls() <= 2, "{} token requests", source.calls());
}

#[tokio::test(start_paused = true)]
async fn a_token_source_that_panics_fails_its_waiters_and_cools_down() {
    let source =
        ScriptedSource::new(Duration::from_millis(10), Step::Token(HOUR)).then(Step::Panic);
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    for result in send_concurrently(&service, 10).await {
        match result {
            Err(Error::Token(err)) => {
                assert_eq!(err.kind(), TokenErrorKind::Source);
                assert!(!err.is_transient(), "a bug, not bad luck");
            }
            other => panic!("expected a token error, got {other:?}"),
        }
    }
    // The cool-down holds: no fetch after fetch.
    assert!(matches!(send(&service).await, Err(Error::Token(_))));
    assert_eq!(source.calls(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(send(&service).await.unwrap(), "Bearer token2");
}

#[test]
fn a_flight_abandoned_by_its_runtime_is_a_transient_error_and_the_next_request_fetches_again() {
    let source = ScriptedSource::new(Duration::ZERO, Step::Hang);
    let layer = PropelAuthLayer::token_source(source.clone())
        .build()
        .unwrap();
    let service = layer.layer_over(Api::default());
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };

    // The fetch runs on runtime A; a request on runtime B (another thread) joins it.
    let a = runtime();
    let mut first = Box::pin(send(&service));
    a.block_on(async {
        assert!(polls_pending(first.as_mut()).await);
        while source.calls() == 0 {
            tokio::task::yield_now().await; // the fetch task is in its token request
        }
    });
    let waiter = std::thread::spawn({
        let service = service.clone();
        move || runtime().block_on(send(&service))
    });
    while layer.stats().waited_for_token < 2 {
        std::thread::yield_now();
    }
    drop(a); // shuts runtime A down: its fetch task is dropped mid-request

    match waiter.join().unwrap() {
        Err(Error::Token(err)) => assert!(err.is_transient(), "{err}"),
        other => panic!("expected a transient token error, got {other:?}"),
    }
    assert!(
        first.as_mut().now_or_never().is_some(),
        "nobody is left waiting"
    );
    // A request on a live runtime starts a new fetch at once: a runtime
    // shutting down is no reason for a cool-down.
    source.set_otherwise(Step::Token(HOUR));
    assert_eq!(runtime().block_on(send(&service)).unwrap(), "Bearer token2");
}

#[tokio::test(start_paused = true)]
async fn a_401_that_echoes_the_token_sent_never_shows_it() {
    // The API echoes the Authorization header it saw as its body.
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let api = Api::default();
    let service = layer.layer_over(api.clone());
    api.reject("Bearer token1");
    let err = send(&service).await.unwrap_err();
    let Error::Unauthorized(unauthorized) = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert_eq!(unauthorized.message(), "Bearer [redacted]");
    assert!(!format!("{err} {err:?}").contains("token1"));
}

#[tokio::test(start_paused = true)]
async fn a_403_body_that_stalls_cannot_hang_the_request() {
    type Stalled = http_body_util::StreamBody<
        futures_util::stream::Pending<Result<http_body::Frame<Bytes>, Infallible>>,
    >;
    let api = tower::service_fn(|_request: Request<Full<Bytes>>| async {
        let mut response = http::Response::new(Stalled::new(futures_util::stream::pending()));
        *response.status_mut() = http::StatusCode::FORBIDDEN;
        Ok::<_, Infallible>(response)
    });
    let credentials = crate::Credentials::new("APP", "secret").unwrap();
    let service = PropelAuthLayer::basic(credentials).layer_over(api);
    let started = tokio::time::Instant::now();
    match service.oneshot(request()).await {
        Err(Error::Forbidden(forbidden)) => assert_eq!(forbidden.message(), ""),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert_eq!(started.elapsed(), crate::error_body::ERROR_BODY_TIMEOUT);
}

#[test]
fn a_refresh_dropped_with_its_runtime_is_tried_again_by_the_next_reader() {
    let source = ScriptedSource::new(Duration::ZERO, Step::Token(HOUR))
        .then(Step::Token(HOUR))
        .then(Step::Hang);
    let (layer, clock) = layer_with(&source, Settings::default());
    let service = layer.layer_over(Api::default());
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let main = runtime();
    assert_eq!(main.block_on(send(&service)).unwrap(), "Bearer token1");
    clock.advance(Duration::from_secs(3000)); // past the refresh point, not stale

    // A request on another runtime starts the refresh, and that runtime goes.
    let other = runtime();
    other.block_on(async {
        assert_eq!(send(&service).await.unwrap(), "Bearer token1");
        while source.calls() < 2 {
            tokio::task::yield_now().await;
        }
    });
    drop(other);

    // The next reader starts it again, and goes on with token1 meanwhile.
    main.block_on(async {
        assert_eq!(send(&service).await.unwrap(), "Bearer token1");
        for _ in 0..1000 {
            if send(&service).await.unwrap() == "Bearer token3" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the refresh was not tried again");
    });
    assert_eq!(source.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_reader_still_holding_a_replaced_token_starts_no_refresh() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let (layer, clock) = layer_with(&source, Settings::default());
    let service = layer.layer_over(Api::default());
    send(&service).await.unwrap();
    let cache = layer.default_cache();
    let first = cache.current().expect("token1 is current");
    // A 401 replaces token1 with token2 (the invalidation fetches at once).
    cache.invalidate(first.generation);
    assert_eq!(send(&service).await.unwrap(), "Bearer token2");
    assert_eq!(source.calls(), 2);

    // A reader that loaded token1 before it was replaced gets to its
    // refresh point only now: token2 is fresh, nothing is due.
    clock.advance(Duration::from_secs(3000));
    assert!(
        cache.check(&first).is_some(),
        "token1 itself is not stale yet"
    );
    tokio::task::yield_now().await;
    assert_eq!(source.calls(), 2, "no refresh for a token already replaced");
}

#[tokio::test(start_paused = true)]
async fn the_end_of_an_older_flight_never_erases_a_newer_one() {
    let source = ScriptedSource::tokens(Duration::from_secs(1), HOUR);
    let layer = layer(&source);
    let cache = layer.default_cache();
    // Starts a flight.
    let mut first = Box::pin(cache.wait());
    assert!(polls_pending(first.as_mut()).await);
    // An earlier flight, given up as lost (see `live_flight`), ends late
    // with a failure: it answers its own waiters and changes nothing here.
    let earlier = cache.inner.lock_slow().counter - 1;
    cache
        .inner
        .finish(earlier, Err(TokenError::new(TokenErrorKind::Server)), None);
    {
        let slow = cache.inner.lock_slow();
        assert!(
            matches!(slow.phase, super::Phase::Fetching { .. }),
            "the newer flight is still recorded, and no cool-down started"
        );
    }
    // So the next waiter joins it instead of starting a second token request.
    let second = cache.wait();
    tokio::task::yield_now().await;
    assert_eq!(source.calls(), 1);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.token.secret().expose_secret(), "token1");
    assert!(Arc::ptr_eq(&first, &second));
}

#[test]
fn a_fetch_started_on_a_runtime_that_is_shutting_down_fails_at_once_instead_of_hanging() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = PropelAuthLayer::token_source(source.clone())
        .build()
        .unwrap();
    let cache = layer.default_cache();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    drop(runtime);
    // A thread still in the dead runtime's context: its spawn drops the
    // fetch task at once, on this thread.
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _in_context = handle.enter();
        let outcome = cache.wait().now_or_never();
        let _ = done.send(outcome);
    });
    let outcome = result
        .recv_timeout(Duration::from_secs(10))
        .expect("the fetch answered instead of deadlocking");
    match outcome {
        Some(Err(err)) => assert!(err.is_transient(), "{err}"),
        other => panic!(
            "expected a transient error at once, got {other:?}",
            other = other.map(|r| r.map(|_| "a token"))
        ),
    }
    assert_eq!(source.calls(), 0);
}

#[test]
fn a_flight_nobody_drives_is_replaced_once_it_is_older_than_the_fetch_timeout() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let (layer, clock) = layer_with(&source, Settings::default());
    let service = layer.layer_over(Api::default());
    // A runtime that starts the fetch and is then never driven again (a
    // sync facade between two `block_on`s).
    let parked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = layer.default_cache();
    let mut stranded = Box::pin(cache.wait());
    {
        let _in_context = parked.enter();
        assert!(stranded.as_mut().now_or_never().is_none());
    }
    // Within the fetch timeout, other requests join it and wait.
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    main.block_on(async {
        let mut waiting = Box::pin(send(&service));
        assert!(polls_pending(waiting.as_mut()).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(polls_pending(waiting.as_mut()).await, "joined the flight");
        // Past it, the next request starts a flight of its own.
        clock.advance(Duration::from_secs(11));
        assert_eq!(send(&service).await.unwrap(), "Bearer token1");
        // The waiter that joined the stranded flight reads the outcome of
        // the flight that replaced it: token1.
        assert_eq!(waiting.await.unwrap(), "Bearer token1");
        assert_eq!(source.calls(), 1, "the stranded flight never ran");
    });
    drop(stranded);
}

#[tokio::test(start_paused = true)]
async fn a_token_that_went_stale_while_the_inner_service_got_ready_is_not_sent() {
    let source = ScriptedSource::tokens(Duration::from_secs(1), HOUR);
    let (layer, clock) = layer_with(&source, Settings::default());
    let limited = tower::limit::ConcurrencyLimit::new(Api::default(), 1);
    let service = layer.layer_over(limited.clone());
    // The request takes the one permit, finds no token and gives it back.
    let request = tokio::spawn({
        let service = service.clone();
        async move {
            let response = service.oneshot(request()).await?;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, Error>(String::from_utf8(body.to_vec()).unwrap())
        }
    });
    tokio::task::yield_now().await;
    // Someone else holds the permit while token1 arrives and grows stale.
    let mut holder = limited.clone();
    ServiceExt::<Request<Full<Bytes>>>::ready(&mut holder)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(source.calls(), 1);
    clock.advance(HOUR);
    drop(holder);
    assert_eq!(request.await.unwrap().unwrap(), "Bearer token2");
}

#[tokio::test(start_paused = true)]
async fn a_401_on_the_token_that_replaced_a_rejected_one_is_final_even_after_the_cooldown() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let api = Api::with_latency(Duration::from_secs(2)); // a slow query
    let service = layer.layer_over(api.clone());
    api.reject("Bearer token1");
    api.reject("Bearer token2");
    assert!(send(&service).await.unwrap_err().is_transient());
    // The retry, carrying token2, is answered after the 1 s cool-down.
    let second = send(&service).await.unwrap_err();
    assert!(
        matches!(&second, Error::Unauthorized(err) if !err.is_transient()),
        "{second:?}"
    );
    assert_eq!(layer.stats().tokens_rejected, 2);
}

#[tokio::test(start_paused = true)]
async fn a_bearer_layer_sends_its_token_whatever_parameters_a_request_carries() {
    let token = AccessToken::new("minted-elsewhere", HOUR).unwrap();
    let service = PropelAuthLayer::bearer(token).layer_over(Api::default());
    assert_eq!(send(&service).await.unwrap(), "Bearer minted-elsewhere");
    let mut tagged = request();
    tagged.extensions_mut().insert(TokenParams::tenant("acme"));
    let response = service.clone().oneshot(tagged).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"Bearer minted-elsewhere");
}

#[tokio::test(start_paused = true)]
async fn concurrent_401s_never_show_the_token_they_carried() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    // The API echoes the header it saw, after 5 ms: both requests are out
    // with token1 before the first 401 drops it.
    let api = Api::with_latency(Duration::from_millis(5));
    let service = layer.layer_over(api.clone());
    send(&service).await.unwrap();
    api.reject("Bearer token1");
    let (a, b) = tokio::join!(send(&service), send(&service));
    for err in [a.unwrap_err(), b.unwrap_err()] {
        let Error::Unauthorized(unauthorized) = &err else {
            panic!("expected Unauthorized, got {err:?}");
        };
        assert_eq!(unauthorized.message(), "Bearer [redacted]");
    }
}
