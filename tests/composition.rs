//! The layer inside a `ServiceBuilder` next to tower's timeout, retry, buffer
//! and concurrency limit and tower-http's trace and redirect middleware: the
//! stack keeps the auto traits, errors downcast through every layer, and each
//! layer does its job around the token flow.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::header::LOCATION;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::policy::{clone_body_fn, PolicyExt, Standard};
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_http::trace::TraceLayer;
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::testing::TokenFault;
use tower_propel_auth::{Credentials, Error, PropelAuth, PropelAuthLayer, Scope, TokenErrorKind};

use support::{
    graphql, hyper_client, json, metric_only_application, settings, start, token_layer,
    token_layer_with, within_10s, HyperClient, DATA_POOL_QUERY,
};

fn assert_clone_send_sync_static<T: Clone + Send + Sync + 'static>(_: &T) {}

fn assert_clone_send_static<T: Clone + Send + 'static>(_: &T) {}

fn assert_send_static<T: Send + 'static>(value: T) -> T {
    value
}

/// Every layer this file is about, outermost first. The auth layer sits
/// inside the retry (each attempt gets the current token) and inside the
/// timeout (which then bounds the wait for a token too); redirects are
/// followed outside it, so each hop is checked against the allowed origins.
fn full_stack(
    layer: PropelAuthLayer,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error = hyper::Error> + Send + 'static>,
    Error = BoxError,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .retry(
            TransientErrors::with_backoff(3, Duration::from_millis(10), Duration::from_millis(50))
                .expect("a valid backoff"),
        )
        .buffer(64)
        .timeout(Duration::from_secs(5))
        .concurrency_limit(16)
        .layer(FollowRedirectLayer::new())
        .layer(layer)
        .service(hyper_client())
}

#[tokio::test]
async fn the_layer_its_service_and_the_full_stack_are_clone_send_and_static() {
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    assert_clone_send_sync_static(&layer);

    let service: PropelAuth<HyperClient> = layer.layer(hyper_client());
    assert_clone_send_sync_static(&service);
    // The response future can be spawned.
    let future = assert_send_static(service.oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY)));
    let response = tokio::spawn(future).await.unwrap().expect("a 200");
    assert_eq!(response.status(), StatusCode::OK);

    let stack = full_stack(layer.clone());
    assert_clone_send_static(&stack);
    let future = assert_send_static(stack.oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY)));
    let response = tokio::spawn(future).await.unwrap().expect("a 200");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json(response).await["extensions"]["auth"], "bearer");

    assert_eq!(fake.stats().token_requests, 1, "one cache for both");
    assert_eq!(layer.stats().token_requests, 1);
}

#[tokio::test]
async fn a_403_downcasts_to_forbidden_through_trace_retry_buffer_timeout_and_limit() {
    let fake = start().await;
    let credentials = metric_only_application(&fake);
    let layer = token_layer_with(&fake, credentials).build().unwrap();

    let err =
        within_10s(full_stack(layer.clone()).oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY)))
            .await
            .map(drop)
            .expect_err("a 403");
    match err.downcast_ref::<Error>() {
        Some(Error::Forbidden(forbidden)) => {
            assert_eq!(forbidden.missing_scope(), Some(&Scope::DataPoolQuery));
        }
        other => panic!("expected Forbidden through the stack, got {other:?} ({err})"),
    }
    assert_eq!(fake.stats().api_requests, 1, "the retry layer let it be");
    assert_eq!(layer.stats().forbidden, 1);
}

#[tokio::test]
async fn a_token_api_400_downcasts_to_a_token_error_through_the_stack() {
    let fake = start().await;
    let wrong = Credentials::new(fake.application_id(), "not-the-secret").unwrap();
    let layer = token_layer_with(&fake, wrong)
        .settings(settings(|s| s.cooldown = Duration::ZERO))
        .build()
        .unwrap();

    let err = within_10s(full_stack(layer).oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY)))
        .await
        .map(drop)
        .expect_err("a wrong secret");
    match err.downcast_ref::<Error>() {
        Some(Error::Token(token)) => assert_eq!(token.kind(), TokenErrorKind::InvalidClient),
        other => panic!("expected a token error through the stack, got {other:?} ({err})"),
    }
    assert_eq!(fake.stats().token_requests, 1, "a 400 is not retried");
}

#[tokio::test]
async fn a_token_api_503_is_retried_through_the_buffer_and_the_timeout() {
    let fake = start().await;
    fake.fail_next_token_requests(
        1,
        TokenFault::Status {
            status: 503,
            retry_after: None,
            body: None,
        },
    );
    // The retry policy sees the error boxed by the buffer and the timeout; it
    // retries only because the error still downcasts to a transient `Error`.
    let layer = token_layer(&fake)
        .settings(settings(|s| s.cooldown = Duration::ZERO))
        .build()
        .unwrap();

    let response = within_10s(full_stack(layer).oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY)))
        .await
        .expect("the retry succeeds");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.stats().token_requests, 2);
    assert_eq!(fake.stats().api_ok, 1);
}

#[tokio::test]
async fn a_timeout_outside_the_layer_bounds_the_wait_for_a_token() {
    let fake = start().await;
    fake.set_token_fault(Some(TokenFault::Hang));
    // The layer would wait a minute for the Token API …
    let layer = token_layer(&fake)
        .settings(settings(|s| s.fetch_timeout = Duration::from_secs(60)))
        .build()
        .unwrap();
    // … but the request is bounded by the timeout around it.
    let client = ServiceBuilder::new()
        .timeout(Duration::from_millis(200))
        .layer(layer)
        .service(hyper_client());

    let err = within_10s(client.oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY)))
        .await
        .expect_err("the timeout fires");
    assert!(
        err.is::<tower::timeout::error::Elapsed>(),
        "expected the outer timeout, got {err}"
    );
    assert_eq!(fake.stats().token_requests, 1, "the token request hangs");
    assert_eq!(fake.stats().api_requests, 0);
}

/// Stands in front of an HTTP client like a server that moved: answers
/// `/moved` with a 307 to `location` and sends every other request on.
fn moved_to(
    location: String,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<BoxBody<Bytes, BoxError>>,
    Error = BoxError,
    Future = impl Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    let client = hyper_client();
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let client = client.clone();
        let location = location.clone();
        async move {
            if request.uri().path() == "/moved" {
                let empty = Full::new(Bytes::new()).map_err(|never| match never {});
                return Ok::<_, BoxError>(
                    Response::builder()
                        .status(StatusCode::TEMPORARY_REDIRECT)
                        .header(LOCATION, location)
                        .body(empty.boxed())?,
                );
            }
            let response = client.oneshot(request).await?;
            Ok(response.map(|body| body.map_err(BoxError::from).boxed()))
        }
    })
}

#[tokio::test]
async fn redirects_followed_outside_the_layer_carry_credentials_only_to_allowed_origins() {
    let fake = start().await;
    let elsewhere = start().await;
    let layer = token_layer(&fake).build().unwrap();
    // Keep the POST body across a 307.
    let policy =
        Standard::default().and::<_, _, ()>(clone_body_fn(|body: &Full<Bytes>| Some(body.clone())));
    let client = |location: String| {
        ServiceBuilder::new()
            .layer(FollowRedirectLayer::with_policy(policy.clone()))
            .layer(layer.clone())
            .service(moved_to(location))
    };
    let moved = format!("{}/moved", fake.origin());

    // Moved within the allowed origin: the second hop is authenticated too.
    let response = within_10s(client(fake.api_url()).oneshot(graphql(&moved, DATA_POOL_QUERY)))
        .await
        .expect("followed");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json(response).await["extensions"]["auth"], "bearer");

    // Moved to another origin: the hop there goes out without credentials,
    // and its 401 comes back as a plain response.
    let response =
        within_10s(client(elsewhere.api_url()).oneshot(graphql(&moved, DATA_POOL_QUERY)))
            .await
            .expect("followed");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let stats = elsewhere.stats();
    assert_eq!(stats.api_requests, 1);
    assert_eq!(
        stats.api_unauthenticated, 1,
        "no Authorization header arrived"
    );
    assert_eq!(fake.stats().api_ok, 1);
    assert_eq!(fake.stats().token_requests, 1);
}
