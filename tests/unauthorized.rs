//! 401s: one refresh for many; the request fails with a transient
//! `Unauthorized` that `retry::TransientErrors` retries with the fresh
//! token, once and no more, and never a request it cannot copy.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::StatusCode;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::testing::ApiFault;
use tower_propel_auth::Error;

use support::{
    expect_err, graphql, graphql_body, graphql_with, hyper_client, hyper_client_for, prime,
    reqwest_graphql, settings, start, token_layer, within_10s, Query, DATA_POOL_QUERY,
};

/// The recommended stack: `retry(TransientErrors) → timeout → PropelAuthLayer
/// → client`. The layer makes no copy of the request; a 401 whose token it
/// dropped is a transient `Unauthorized`, which the retry sends once more.
#[tokio::test]
async fn fifty_concurrent_401s_cause_one_token_request_and_the_retry_layer_resends_each_once() {
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    prime(&fake, &layer).await;
    fake.revoke_all_tokens();

    let client = ServiceBuilder::new()
        .retry(TransientErrors::new(3))
        .timeout(Duration::from_secs(5))
        .layer(layer.clone())
        .service(hyper_client());
    let responses = within_10s(join_all((0..50).map(|_| {
        client
            .clone()
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
    })))
    .await;
    for response in responses {
        let response = response.expect("retried with a fresh token");
        assert_eq!(response.status(), StatusCode::OK);
    }

    let stats = fake.stats();
    assert_eq!(stats.token_requests, 2, "exactly one new token for 50 401s");
    assert_eq!(stats.api_invalid_credentials, 50);
    assert_eq!(stats.api_ok, 51, "each rejected request was sent once more");
    // Each first attempt ended in a transient `Unauthorized` (the retry layer,
    // not the auth layer, sent it again).
    assert_eq!(layer.stats().unauthorized, 50);
    assert_eq!(layer.stats().tokens_rejected, 1);
    assert_eq!(layer.stats().token_requests, 2);
}

#[tokio::test]
async fn a_401_fails_at_once_as_a_transient_unauthorized_and_drops_the_token() {
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    prime(&fake, &layer).await;
    fake.revoke_all_tokens();

    let err = expect_err(layer.query(&fake).await);
    let Error::Unauthorized(unauthorized) = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert!(err.is_transient(), "a fresh token may cure it: {err}");
    assert!(
        unauthorized.hint().contains("send the request again"),
        "{}",
        unauthorized.hint()
    );
    assert_eq!(
        fake.stats().api_requests,
        2,
        "sent once: the layer keeps no copy"
    );

    // The rejected token was dropped and its successor fetched: sending the
    // request again is what a retry layer does.
    let response = layer.query(&fake).await.expect("a fresh token");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.stats().token_requests, 2);
}

#[tokio::test]
async fn behind_the_retry_layer_a_server_rejecting_every_token_gets_one_retry_per_request_and_no_refresh_storm(
) {
    let fake = start().await;
    fake.set_api_fault(Some(ApiFault::Unauthorized));
    // A cool-down long enough that every retry, and the second burst below,
    // surely fall in it.
    let layer = token_layer(&fake)
        .settings(settings(|s| s.cooldown = Duration::from_secs(60)))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .retry(TransientErrors::new(3))
        .layer(layer.clone())
        .service(hyper_client());
    let burst = || {
        within_10s(join_all((0..20).map(|_| {
            client
                .clone()
                .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        })))
    };

    for result in burst().await {
        let err = expect_err(result);
        let Error::Unauthorized(unauthorized) = &err else {
            panic!("expected Unauthorized, got {err:?}");
        };
        // The retry's 401 came within the cool-down of the first drop: the
        // token is kept and the error is final, whatever the retry budget.
        assert!(!unauthorized.is_transient(), "{err}");
    }
    let stats = fake.stats();
    assert_eq!(stats.token_requests, 2, "the first token and one more");
    assert_eq!(stats.api_requests, 40, "each request sent twice, no more");
    assert_eq!(layer.stats().unauthorized, 40);

    // A second burst within the cool-down: final at once, and no new token
    // is asked for (no refresh storm against a server that rejects all).
    for result in burst().await {
        let err = expect_err(result);
        assert!(
            matches!(&err, Error::Unauthorized(u) if !u.is_transient()),
            "{err:?}"
        );
    }
    assert_eq!(fake.stats().token_requests, 2);
    assert_eq!(fake.stats().api_requests, 60, "sent once each");
}

#[tokio::test]
async fn behind_the_retry_layer_a_reqwest_request_is_sent_again_after_a_401() {
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    prime(&fake, &layer).await;
    fake.revoke_all_tokens();

    let client = ServiceBuilder::new()
        .retry(TransientErrors::new(1))
        .layer(layer.clone())
        .service(reqwest::Client::new());
    let response = client
        .oneshot(reqwest_graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .expect("retried with a fresh token");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.stats().token_requests, 2);
    assert_eq!(fake.stats().api_invalid_credentials, 1);
    assert_eq!(layer.stats().tokens_rejected, 1);
}

/// A streamed request body: it cannot be copied, so it cannot be sent again.
type Streamed =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn streamed(query: &str) -> Streamed {
    StreamBody::new(futures_util::stream::iter(vec![Ok(Frame::data(
        graphql_body(query),
    ))]))
}

#[tokio::test]
async fn behind_the_retry_layer_a_request_whose_body_cannot_be_copied_is_not_sent_again() {
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    prime(&fake, &layer).await;
    fake.revoke_all_tokens();

    let err = expect_err(
        ServiceBuilder::new()
            .retry(TransientErrors::new(3))
            .layer(layer.clone())
            .service(hyper_client_for::<Streamed>())
            .oneshot(graphql_with(&fake.api_url(), streamed(DATA_POOL_QUERY)))
            .await,
    );
    let Error::Unauthorized(unauthorized) = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    // Not sent again, but the token was dropped: the caller may.
    assert!(unauthorized.is_transient(), "{err}");
    assert_eq!(
        fake.stats().api_requests,
        2,
        "the priming request and this one"
    );

    // The same with a boxed body, with the fault on every request so that
    // the outcome does not depend on the cached token.
    fake.set_api_fault(Some(ApiFault::Unauthorized));
    let boxed: BoxBody<Bytes, BoxError> = Full::new(graphql_body(DATA_POOL_QUERY))
        .map_err(|never| match never {})
        .boxed();
    let err = ServiceBuilder::new()
        .retry(TransientErrors::new(3))
        .layer(layer.clone())
        .service(hyper_client_for::<BoxBody<Bytes, BoxError>>())
        .oneshot(graphql_with(&fake.api_url(), boxed))
        .await
        .expect_err("rejected");
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert_eq!(fake.stats().api_requests, 3, "sent once");
}

#[tokio::test]
async fn a_401_on_a_streamed_request_still_drops_the_rejected_token() {
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    prime(&fake, &layer).await;
    fake.revoke_all_tokens();
    let service = layer.layer(hyper_client_for::<Streamed>());

    let err = expect_err(
        service
            .clone()
            .oneshot(graphql_with(&fake.api_url(), streamed(DATA_POOL_QUERY)))
            .await,
    );
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");

    // The revoked token must not stay cached: the next streamed request
    // goes out with a fresh one.
    let response = service
        .oneshot(graphql_with(&fake.api_url(), streamed(DATA_POOL_QUERY)))
        .await
        .expect("the next request gets a fresh token");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.stats().token_requests, 2);
}
