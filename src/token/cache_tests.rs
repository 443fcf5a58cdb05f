//! The cache's promises, driven through the layer over an in-memory inner
//! service, on paused tokio time.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::ServiceExt;

use crate::token::test_source::{
    layer, polls_pending, send, send_concurrently, send_unreplayable, Api, ScriptedSource, Step,
    HOUR,
};
use crate::{Error, PropelAuthLayer, TokenErrorKind};

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
    // Let the failed attempts and their backoff play out: 500 ms base, doubling.
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let header = send(&service).await.unwrap();
        if source.calls() < 6 {
            assert_eq!(header, "Bearer token1", "the old token keeps serving");
        }
    }
    assert_eq!(send(&service).await.unwrap(), "Bearer token6");
    let times = source.call_times();
    assert_eq!(times.len(), 6);
    let gaps: Vec<Duration> = times[1..].windows(2).map(|w| w[1] - w[0]).collect();
    // Equal jitter: attempt n waits between half and all of 500 ms × 2^(n-1).
    for (n, gap) in gaps.iter().enumerate() {
        let full = Duration::from_millis(500) * (1 << n);
        assert!(
            *gap >= full / 2 && *gap <= full,
            "gap {n}: {gap:?} not in [{:?}, {full:?}]",
            full / 2
        );
    }
    assert_eq!(layer.stats().waited_for_token, 1);
    assert_eq!(layer.stats().token_failures, 4);
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
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
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
    let layer = PropelAuthLayer::token_source(source.clone())
        .fetch_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
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
    let layer = PropelAuthLayer::token_source(source.clone())
        .refresh_at(1.0)
        .refresh_jitter(0.0)
        .build()
        .unwrap();
    let service = layer.layer_over(Api::default());
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(send(&service).await.unwrap(), "Bearer token2");
    assert_eq!(layer.stats().waited_for_token, 2);
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_401s_on_one_token_cause_one_refresh_and_fifty_retries() {
    let source = ScriptedSource::tokens(Duration::from_millis(10), HOUR);
    let layer = layer(&source);
    // The API answers after 5 ms, so all fifty are out with token1 before
    // the first 401 comes back.
    let api = Api::with_latency(Duration::from_millis(5));
    let service = layer.layer_over(api.clone());
    assert_eq!(send(&service).await.unwrap(), "Bearer token1");
    api.reject("Bearer token1");

    for result in send_concurrently(&service, 50).await {
        assert_eq!(result.unwrap(), "Bearer token2");
    }
    assert_eq!(source.calls(), 2, "one refresh for all fifty 401s");
    assert_eq!(layer.stats().unauthorized_retries, 50);
    assert_eq!(api.calls(), 1 + 50 + 50);
}

#[tokio::test(start_paused = true)]
async fn a_second_401_is_unauthorized() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let api = Api::default();
    let service = layer.layer_over(api.clone());
    api.reject("Bearer token1");
    api.reject("Bearer token2");
    match send(&service).await {
        Err(Error::Unauthorized(err)) => assert!(err.retried()),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(api.calls(), 2);
    assert_eq!(source.calls(), 2);
    assert_eq!(layer.stats().unauthorized, 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_replayed_is_unauthorized_without_a_retry() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let api = Api::default();
    let mut service = layer.layer_over(api.clone());
    api.reject("Bearer token1");
    let response = send_unreplayable(&mut service).await;
    match response {
        Err(Error::Unauthorized(err)) => assert!(!err.retried()),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(api.calls(), 1);
    assert_eq!(layer.stats().unauthorized_retries, 0);
}

#[tokio::test(start_paused = true)]
async fn a_server_rejecting_every_token_cannot_cause_a_refresh_storm() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let api = Api::default();
    let service = layer.layer_over(api.clone());
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
    let token = crate::AccessToken::new("minted-elsewhere", Duration::from_secs(60)).unwrap();
    let layer = PropelAuthLayer::bearer(token);
    let service = layer.layer_over(Api::default());
    assert_eq!(send(&service).await.unwrap(), "Bearer minted-elsewhere");
    tokio::time::sleep(Duration::from_secs(61)).await;
    match send(&service).await {
        Err(Error::Token(err)) => assert_eq!(err.kind(), TokenErrorKind::Expired),
        other => panic!("expected Expired, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_401_during_background_backoff_retries_at_once_instead_of_waiting_it_out() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR)
        .then(Step::Token(HOUR))
        .then(Step::Fail(TokenErrorKind::Server));
    let layer = PropelAuthLayer::token_source(source.clone())
        .backoff(Duration::from_secs(20), Duration::from_secs(60))
        .build()
        .unwrap();
    let api = Api::default();
    let service = layer.layer_over(api.clone());
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
                assert!(!err.is_transient());
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
fn a_token_whose_runtime_is_gone_is_not_used_again() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };

    let first = runtime();
    assert_eq!(first.block_on(send(&service)).unwrap(), "Bearer token1");
    // Its timer lived on that runtime: with it gone, nothing would mark the
    // token stale, so it must not stay in use.
    drop(first);

    let second = runtime();
    assert_eq!(second.block_on(send(&service)).unwrap(), "Bearer token2");
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_401_that_echoes_the_token_sent_never_shows_it() {
    // The API echoes the Authorization header it saw as its body.
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let api = Api::default();
    let mut service = layer.layer_over(api.clone());
    api.reject("Bearer token1");
    let response = send_unreplayable(&mut service).await;
    let err = response.unwrap_err();
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
    match service.oneshot(crate::token::test_source::request()).await {
        Err(Error::Forbidden(forbidden)) => assert_eq!(forbidden.message(), ""),
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert_eq!(started.elapsed(), crate::body::ERROR_BODY_TIMEOUT);
}
