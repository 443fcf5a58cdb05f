//! The fault matrix: for each fault of the Token API or the API, what the
//! caller gets, that no request waits past the fetch timeout (plus a margin),
//! that token requests stay within their bound, and that the layer recovers
//! once the fault ends.
//!
//! Real TCP on loopback against `FakePropel`, and real time: the fetch timeout
//! is 300 ms and the cool-down 50 ms, so each case takes well under a second
//! (the `Retry-After: 1` case about one second, which is the point of it).
//! The time bounds asserted here are hang detectors with a generous margin,
//! not speed measurements.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::testing::{ApiFault, TokenFault};
use tower_propel_auth::{
    Error, FakePropel, ForbiddenReason, PropelAuthLayer, Scope, TokenError, TokenErrorKind,
    TokenLayerBuilder,
};

use support::{
    closed_port, counting_bodies, expect_err, graphql, hyper_client, settings, start, token_error,
    token_layer, BodyBytes, DATA_POOL_QUERY,
};

/// The layer's token request timeout in every case.
const FETCH_TIMEOUT: Duration = Duration::from_millis(300);
/// The cool-down after a failed token request (and between 401 refreshes).
const COOLDOWN: Duration = Duration::from_millis(50);
/// No request may take longer than the fetch timeout plus this margin.
const MARGIN: Duration = Duration::from_secs(1);
/// A little more than the cool-down: long enough for it to surely be over.
const PAST_COOLDOWN: Duration = Duration::from_millis(80);
/// The most of a server's message an error keeps (300 characters and `…`).
const EXCERPT_CAP: usize = 301;

/// A client-credentials builder pointed at `fake`, with the short fetch
/// timeout and cool-down of this file.
fn builder(fake: &FakePropel) -> TokenLayerBuilder {
    token_layer(fake).settings(settings(|s| {
        s.fetch_timeout = FETCH_TIMEOUT;
        s.cooldown = COOLDOWN;
    }))
}

/// Sends one Data Pool query through `service`, failing the test if it takes
/// longer than the fetch timeout plus the margin.
async fn send<S, RB>(service: &S, url: &str) -> Result<Response<RB>, Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>, Error = Error> + Clone,
{
    let longest = FETCH_TIMEOUT + MARGIN;
    let started = Instant::now();
    match tokio::time::timeout(
        longest,
        service.clone().oneshot(graphql(url, DATA_POOL_QUERY)),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => panic!(
            "a request hung: still waiting after {:?} (the fetch timeout is {FETCH_TIMEOUT:?})",
            started.elapsed()
        ),
    }
}

/// Sends one query and expects a 200.
async fn expect_ok<S, RB>(service: &S, url: &str)
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>, Error = Error> + Clone,
{
    match send(service, url).await {
        Ok(response) => assert_eq!(response.status(), StatusCode::OK),
        Err(err) => panic!("expected a 200, got {err:?}"),
    }
}

/// The token request counts as the fake and the layer see them.
fn token_requests(fake: &FakePropel, layer: &PropelAuthLayer) -> (u64, u64) {
    (fake.stats().token_requests, layer.stats().token_requests)
}

/// Runs one Token API fault: with `fault` on every token request, a request
/// fails with a token error that `check` accepts, after exactly one token
/// request; once the fault is cleared and the cool-down is over, the next
/// request succeeds with one more token request.
async fn token_fault_then_recovery(fault: TokenFault, check: impl FnOnce(&TokenError)) {
    let fake = start().await;
    let layer = builder(&fake).build().unwrap();
    let service = layer.layer(hyper_client());

    fake.set_token_fault(Some(fault));
    let err = expect_err(send(&service, &fake.api_url()).await);
    check(token_error(&err));
    assert_eq!(token_requests(&fake, &layer), (1, 1), "one token request");
    assert_eq!(layer.stats().token_failures, 1);
    assert_eq!(fake.stats().api_requests, 0, "nothing was sent to the API");

    fake.set_token_fault(None);
    tokio::time::sleep(PAST_COOLDOWN).await;
    expect_ok(&service, &fake.api_url()).await;
    assert_eq!(token_requests(&fake, &layer), (2, 2), "recovered");
    assert_eq!(fake.stats().api_ok, 1);
}

#[track_caller]
fn assert_transient(err: &TokenError, kind: TokenErrorKind) {
    assert_eq!(err.kind(), kind, "{err}");
    assert!(err.is_transient(), "{err}");
}

#[track_caller]
fn assert_invalid_response(err: &TokenError) {
    assert_eq!(err.kind(), TokenErrorKind::InvalidResponse, "{err}");
    assert!(!err.is_transient(), "{err}");
}

/// Accepts connections on `listener` and relays each one to `upstream`.
async fn relay(listener: TcpListener, upstream: SocketAddr) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

fn fake_addr(fake: &FakePropel) -> SocketAddr {
    fake.origin()
        .strip_prefix("http://")
        .and_then(|addr| addr.parse().ok())
        .expect("the fake's origin is http://IP:PORT")
}

#[tokio::test]
async fn a_refused_token_api_connection_is_a_transient_transport_error_until_it_comes_up() {
    let fake = start().await;
    let addr = closed_port();
    let layer = builder(&fake)
        .token_url(format!("http://{addr}/oauth2/token"))
        .build()
        .unwrap();
    let service = layer.layer(hyper_client());

    let err = expect_err(send(&service, &fake.api_url()).await);
    assert_transient(token_error(&err), TokenErrorKind::Transport);
    assert_eq!(token_requests(&fake, &layer), (0, 1));
    assert_eq!(fake.stats().api_requests, 0);

    // The Token API comes up on that very port (a TCP relay to the fake).
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(relay(listener, fake_addr(&fake)));
    tokio::time::sleep(PAST_COOLDOWN).await;
    expect_ok(&service, &fake.api_url()).await;
    assert_eq!(token_requests(&fake, &layer), (1, 2), "recovered");
}

#[tokio::test]
async fn a_token_api_that_never_answers_times_out_within_the_fetch_timeout() {
    let fake = start().await;
    let layer = builder(&fake).build().unwrap();
    let service = layer.layer(hyper_client());

    fake.set_token_fault(Some(TokenFault::Hang));
    let started = Instant::now();
    let err = expect_err(send(&service, &fake.api_url()).await);
    let waited = started.elapsed();
    assert_transient(token_error(&err), TokenErrorKind::Timeout);
    assert!(
        waited >= FETCH_TIMEOUT,
        "the fetch timeout ended it: {waited:?}"
    );
    assert!(waited < FETCH_TIMEOUT + MARGIN, "{waited:?}");
    assert_eq!(token_requests(&fake, &layer), (1, 1));

    fake.set_token_fault(None);
    tokio::time::sleep(PAST_COOLDOWN).await;
    expect_ok(&service, &fake.api_url()).await;
    assert_eq!(token_requests(&fake, &layer), (2, 2), "recovered");
}

#[tokio::test]
async fn a_slow_token_api_that_answers_within_the_timeout_is_a_success() {
    let fake = start().await;
    let layer = builder(&fake).build().unwrap();
    let service = layer.layer(hyper_client());

    fake.set_token_latency(Duration::from_millis(100));
    let started = Instant::now();
    expect_ok(&service, &fake.api_url()).await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    for _ in 0..5 {
        expect_ok(&service, &fake.api_url()).await;
    }
    assert_eq!(token_requests(&fake, &layer), (1, 1));
    assert_eq!(layer.stats().token_failures, 0);
}

#[tokio::test]
async fn a_token_api_500_is_a_transient_server_error_and_the_layer_recovers() {
    let fault = TokenFault::Status {
        status: 500,
        retry_after: None,
        body: None,
    };
    token_fault_then_recovery(fault, |err| {
        assert_transient(err, TokenErrorKind::Server);
        assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    })
    .await;
}

#[tokio::test]
async fn a_token_api_502_is_a_transient_server_error_and_the_layer_recovers() {
    let fault = TokenFault::Status {
        status: 502,
        retry_after: None,
        body: Some("<html><body>Bad Gateway</body></html>".to_owned()),
    };
    token_fault_then_recovery(fault, |err| {
        assert_transient(err, TokenErrorKind::Server);
        assert_eq!(err.status(), Some(StatusCode::BAD_GATEWAY));
    })
    .await;
}

#[tokio::test]
async fn a_token_api_503_with_retry_after_fails_fast_until_retry_after_has_passed() {
    let fake = start().await;
    let layer = builder(&fake).build().unwrap();
    let service = layer.layer(hyper_client());

    fake.set_token_fault(Some(TokenFault::Status {
        status: 503,
        retry_after: Some(1),
        body: None,
    }));
    let err = expect_err(send(&service, &fake.api_url()).await);
    let failed_at = Instant::now();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    let err = token_error(&err);
    assert_transient(err, TokenErrorKind::Server);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));

    // Past the 50 ms cool-down but within Retry-After: the same error at once,
    // and the Token API is left alone.
    fake.set_token_fault(None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = expect_err(send(&service, &fake.api_url()).await);
    assert_eq!(
        format!("{:?}", token_error(&again)),
        format!("{err:?}"),
        "the error of the cool-down"
    );
    assert_eq!(token_requests(&fake, &layer), (1, 1));

    tokio::time::sleep_until(failed_at + Duration::from_millis(1100)).await;
    expect_ok(&service, &fake.api_url()).await;
    assert_eq!(token_requests(&fake, &layer), (2, 2), "recovered");
}

#[tokio::test]
async fn a_token_api_429_is_rate_limited_and_the_layer_recovers() {
    let fault = TokenFault::Status {
        status: 429,
        retry_after: None,
        body: None,
    };
    token_fault_then_recovery(fault, |err| {
        assert_transient(err, TokenErrorKind::RateLimited);
        assert_eq!(err.retry_after(), None);
    })
    .await;
}

#[tokio::test]
async fn a_token_api_400_is_not_transient_and_the_layer_recovers_once_it_is_fixed() {
    let fault = TokenFault::Status {
        status: 400,
        retry_after: None,
        body: Some(
            r#"{"error":"invalid_client","error_description":"client_secret is invalid"}"#
                .to_owned(),
        ),
    };
    token_fault_then_recovery(fault, |err| {
        assert_eq!(err.kind(), TokenErrorKind::InvalidClient, "{err}");
        assert!(!err.is_transient());
    })
    .await;
}

#[tokio::test]
async fn a_connection_reset_in_the_middle_of_the_token_answer_is_a_transient_error() {
    token_fault_then_recovery(TokenFault::ResetMidBody, |err| {
        assert_transient(err, TokenErrorKind::Transport);
    })
    .await;
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_a_transient_transport_error() {
    token_fault_then_recovery(TokenFault::ConnectionClose, |err| {
        assert_transient(err, TokenErrorKind::Transport);
    })
    .await;
}

#[tokio::test]
async fn malformed_token_json_is_an_invalid_response() {
    token_fault_then_recovery(TokenFault::MalformedJson, assert_invalid_response).await;
}

#[tokio::test]
async fn token_json_without_an_access_token_is_an_invalid_response() {
    token_fault_then_recovery(TokenFault::MissingAccessToken, |err| {
        assert_invalid_response(err);
        assert!(
            err.to_string().contains("access_token"),
            "names the field: {err}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_token_type_other_than_bearer_is_an_invalid_response() {
    token_fault_then_recovery(TokenFault::TokenType("mac".to_owned()), |err| {
        assert_invalid_response(err);
        assert!(err.to_string().contains("mac"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn a_10_mib_token_answer_is_an_invalid_response() {
    token_fault_then_recovery(TokenFault::Oversized(10 << 20), |err| {
        assert_invalid_response(err);
        assert!(err.to_string().contains("64 KiB"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn expires_in_of_zero_negative_or_huge_gives_a_working_token_and_no_refresh_storm() {
    // (expires_in, the lifetime the token should get): 0 and negative are
    // ignored in favour of the JWT's `exp` (the fake's 3600 s); huge is
    // clamped to 24 h.
    let cases: [(i64, std::ops::RangeInclusive<u64>); 4] = [
        (0, 3590..=3600),
        (-3600, 3590..=3600),
        (1_000_000_000_000, 86_400..=86_400),
        (i64::MAX, 86_400..=86_400),
    ];
    for (expires_in, lifetime) in cases {
        let fake = start().await;
        let layer = builder(&fake).build().unwrap();
        let service = layer.layer(hyper_client());
        fake.fail_next_token_requests(1, TokenFault::ExpiresIn(expires_in));

        for _ in 0..10 {
            expect_ok(&service, &fake.api_url()).await;
        }
        tokio::time::sleep(PAST_COOLDOWN).await;
        for _ in 0..10 {
            expect_ok(&service, &fake.api_url()).await;
        }
        assert_eq!(
            token_requests(&fake, &layer),
            (1, 1),
            "expires_in {expires_in}: one token for 20 requests"
        );
        let token = layer.access_token(None).await.unwrap();
        assert!(
            lifetime.contains(&token.lifetime().as_secs()),
            "expires_in {expires_in}: lifetime {:?}",
            token.lifetime()
        );
        assert_eq!(fake.stats().api_ok, 20);
    }
}

#[tokio::test]
async fn an_api_that_rejects_every_token_gets_bounded_retries_and_no_refresh_storm() {
    // The cache refreshes on a 401 at most once per cool-down.
    const STORM_COOLDOWN: Duration = Duration::from_millis(300);
    let fake = start().await;
    let layer = token_layer(&fake)
        .settings(settings(|s| {
            s.fetch_timeout = FETCH_TIMEOUT;
            s.cooldown = STORM_COOLDOWN;
        }))
        .build()
        .unwrap();
    // Behind a retry layer with a budget of three: what stops the retries
    // is the layer saying a 401 is final, not the budget.
    let service = ServiceBuilder::new()
        .retry(TransientErrors::new(3))
        .layer(layer.clone())
        .service(hyper_client());
    fake.set_api_fault(Some(ApiFault::Unauthorized));

    let started = Instant::now();
    for _ in 0..30 {
        let err = expect_err(send(&service, &fake.api_url()).await);
        assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
        assert!(!err.is_transient());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();

    // One token to start with, then one per 401-triggered refresh; those are
    // at least a cool-down apart, so at most 1 + elapsed / cool-down of them.
    let refreshes = 1 + (elapsed.as_millis() / STORM_COOLDOWN.as_millis()) as u64;
    let bound = 1 + refreshes;
    let (fake_count, layer_count) = token_requests(&fake, &layer);
    let retries = fake.stats().api_requests - 30;
    println!(
        "30 rejected requests in {elapsed:?}: {layer_count} token requests (bound {bound}), \
         {retries} retries"
    );
    assert_eq!(fake_count, layer_count);
    assert!(
        (2..=bound).contains(&layer_count),
        "{layer_count} token requests in {elapsed:?}; bound {bound}"
    );
    // Each request went out at most twice: once, and once more after a refresh.
    assert!(retries >= 1);
    assert!(retries <= refreshes);
    assert_eq!(layer.stats().unauthorized, 30 + retries);

    // The fault ends: the cached token works again, no new token needed.
    fake.set_api_fault(None);
    expect_ok(&service, &fake.api_url()).await;
    assert_eq!(layer.stats().token_requests, layer_count);
}

#[tokio::test]
async fn an_api_403_of_any_body_shape_is_forbidden_and_never_retried() {
    const TEN_MIB: usize = 10 << 20;
    let propel = r#"Application APP01ABCDEFGHJKMNPQRSTVWXYZ01 is not allowed to query Data Pool DPO01ABCDEFGHJKMNPQRSTVWXYZ01, because it lacks the \"data-pool:query\" scope; you must add this scope to your Application and request a new access token to query the Data Pool"#;
    let mut huge = br#"{"errors":[{"message":"no Data Pool Access Policy applies "#.to_vec();
    huge.resize(TEN_MIB, b'x');
    let cases: Vec<(&str, Option<&str>, Bytes, ForbiddenReason)> = vec![
        (
            "GraphQL",
            Some("application/json"),
            Bytes::from(format!(r#"{{"errors":[{{"message":"{propel}"}}]}}"#)),
            ForbiddenReason::MissingScope(Scope::DataPoolQuery),
        ),
        (
            "RFC 6749",
            Some("application/json"),
            Bytes::from_static(
                br#"{"error":"insufficient_scope","error_description":"missing scope METRIC_QUERY"}"#,
            ),
            ForbiddenReason::MissingScope(Scope::MetricQuery),
        ),
        (
            "plain text",
            Some("text/plain"),
            Bytes::from_static(b"the token lacks the 'admin' scope"),
            ForbiddenReason::MissingScope(Scope::Admin),
        ),
        ("empty", None, Bytes::new(), ForbiddenReason::Other),
        (
            "non-UTF-8",
            Some("text/plain"),
            Bytes::from_static(b"\xff\xfe\x00 no Data Pool Access Policy \xc3\x28 applies \x80"),
            ForbiddenReason::Policy,
        ),
        (
            "10 MiB",
            Some("application/json"),
            Bytes::from(huge),
            ForbiddenReason::Policy,
        ),
    ];

    let fake = start().await;
    let layer = builder(&fake).build().unwrap();
    let counter = BodyBytes::default();
    let service = layer.layer(counting_bodies(&counter));
    expect_ok(&service, &fake.api_url()).await;

    for (i, (shape, content_type, body, reason)) in cases.into_iter().enumerate() {
        let before = (fake.stats().api_requests, counter.read());
        fake.set_api_fault(Some(ApiFault::Forbidden {
            content_type: content_type.map(str::to_owned),
            body,
        }));
        let err = expect_err(send(&service, &fake.api_url()).await);
        let Error::Forbidden(forbidden) = &err else {
            panic!("{shape}: expected Forbidden, got {err:?}");
        };
        assert_eq!(forbidden.reason(), &reason, "{shape}: {err}");
        assert!(!err.is_transient(), "{shape}");
        let message = forbidden.message();
        assert!(
            message.chars().count() <= EXCERPT_CAP,
            "{shape}: {} characters",
            message.chars().count()
        );
        assert!(
            !message.chars().any(char::is_control),
            "{shape}: {message:?}"
        );
        assert_eq!(
            fake.stats().api_requests,
            before.0 + 1,
            "{shape}: a 403 is never retried"
        );
        let read = counter.read() - before.1;
        assert!(
            read <= 64 * 1024 + counter.largest_frame(),
            "{shape}: read {read} body bytes"
        );
        assert_eq!(layer.stats().forbidden, i as u64 + 1);
    }
    assert_eq!(
        token_requests(&fake, &layer),
        (1, 1),
        "a 403 keeps the token"
    );

    fake.set_api_fault(None);
    expect_ok(&service, &fake.api_url()).await;
    assert_eq!(token_requests(&fake, &layer), (1, 1));
}

/// A JSON 403 body larger than the cap is cut at 64 KiB, so it no longer
/// parses as JSON and is read as plain text, JSON escapes included.
#[tokio::test]
async fn a_json_403_cut_by_the_cap_still_names_the_right_scope_or_none() {
    let fake = start().await;
    let layer = builder(&fake).build().unwrap();
    let service = layer.layer(hyper_client());
    let mut body = br#"{"errors":[{"message":"lacks the \"admin\" scope "#.to_vec();
    body.resize(10 << 20, b'x');
    fake.set_api_fault(Some(ApiFault::Forbidden {
        content_type: Some("application/json".to_owned()),
        body: Bytes::from(body),
    }));

    let err = expect_err(send(&service, &fake.api_url()).await);
    let Error::Forbidden(forbidden) = &err else {
        panic!("expected Forbidden, got {err:?}");
    };
    assert!(
        matches!(
            forbidden.reason(),
            ForbiddenReason::MissingScope(Scope::Admin) | ForbiddenReason::Other
        ),
        "{:?}: {err}",
        forbidden.reason()
    );
}

#[tokio::test]
async fn an_api_500_is_passed_through_as_a_response_and_not_retried() {
    let fake = start().await;
    let layer = builder(&fake).build().unwrap();
    let service = layer.layer(hyper_client());
    fake.set_api_fault(Some(ApiFault::Status {
        status: 500,
        body: Bytes::from_static(b"internal error"),
    }));

    let response = send(&service, &fake.api_url())
        .await
        .expect("a 500 is a response, not an error of this layer");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(fake.stats().api_requests, 1);
    assert_eq!(token_requests(&fake, &layer), (1, 1));

    fake.set_api_fault(None);
    expect_ok(&service, &fake.api_url()).await;
    assert_eq!(token_requests(&fake, &layer), (1, 1));
}
