//! 401s: one refresh for many, one retry each, and no retry of what cannot
//! be replayed.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::StatusCode;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tower::{BoxError, Layer, ServiceExt};
use tower_propel_auth::testing::ApiFault;
use tower_propel_auth::{Error, FakePropel, PropelAuthLayer};

use support::{
    expect_err, graphql, graphql_body, graphql_with, hyper_client, hyper_client_for,
    reqwest_graphql, start, token_layer, Query, DATA_POOL_QUERY,
};

/// Sends one query and checks it succeeds: the cache then holds a token.
async fn prime(fake: &FakePropel, layer: &PropelAuthLayer) {
    let response = layer.query(fake).await.expect("the first request succeeds");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.stats().token_requests, 1);
}

#[tokio::test]
async fn fifty_concurrent_401s_cause_one_token_request_and_fifty_retries() {
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    prime(&fake, &layer).await;
    fake.revoke_all_tokens();

    let service = layer.layer(hyper_client());
    let responses = join_all((0..50).map(|_| {
        service
            .clone()
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
    }))
    .await;
    for response in responses {
        let response = response.expect("retried with a fresh token");
        assert_eq!(response.status(), StatusCode::OK);
    }

    let stats = fake.stats();
    assert_eq!(stats.token_requests, 2, "exactly one new token for 50 401s");
    assert_eq!(stats.api_invalid_credentials, 50);
    assert_eq!(stats.api_ok, 51);
    assert_eq!(layer.stats().unauthorized_retries, 50);
    assert_eq!(layer.stats().unauthorized, 0);
    assert_eq!(layer.stats().token_requests, 2);
}

#[tokio::test]
async fn a_reqwest_request_is_replayed_after_a_401() {
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    prime(&fake, &layer).await;
    fake.revoke_all_tokens();

    let response = layer
        .layer(reqwest::Client::new())
        .oneshot(reqwest_graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .expect("retried with a fresh token");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.stats().token_requests, 2);
    assert_eq!(fake.stats().api_invalid_credentials, 1);
    assert_eq!(layer.stats().unauthorized_retries, 1);
}

#[tokio::test]
async fn when_every_request_is_rejected_the_result_is_unauthorized_and_token_requests_stay_bounded()
{
    let fake = start().await;
    fake.set_api_fault(Some(ApiFault::Unauthorized));
    // A cool-down long enough that the second burst below surely falls in it.
    let layer = token_layer(&fake)
        .cooldown(Duration::from_secs(60))
        .build()
        .unwrap();
    let service = layer.layer(hyper_client());
    let burst = || {
        join_all((0..20).map(|_| {
            service
                .clone()
                .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        }))
    };

    for result in burst().await {
        let err = expect_err(result);
        let Error::Unauthorized(unauthorized) = &err else {
            panic!("expected Unauthorized, got {err:?}");
        };
        assert!(unauthorized.retried(), "{err}");
        assert!(!err.is_transient());
        assert!(err.to_string().contains("freshly minted"), "{err}");
    }
    let stats = fake.stats();
    assert!(
        stats.token_requests <= 2,
        "{} token requests for a burst of 20 rejected requests",
        stats.token_requests
    );
    assert_eq!(stats.api_requests, 40, "each request sent twice, no more");
    assert_eq!(layer.stats().unauthorized_retries, 20);
    assert_eq!(layer.stats().unauthorized, 20);

    // A second burst within the cool-down: still Unauthorized, and no new
    // token is asked for (no refresh storm against a server that rejects all).
    let token_requests = stats.token_requests;
    for result in burst().await {
        let err = expect_err(result);
        assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    }
    assert_eq!(fake.stats().token_requests, token_requests);
    assert_eq!(layer.stats().unauthorized, 40);
}

/// A streamed request body: it cannot be copied, so it cannot be replayed.
type Streamed =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn streamed(query: &str) -> Streamed {
    StreamBody::new(futures_util::stream::iter(vec![Ok(Frame::data(
        graphql_body(query),
    ))]))
}

#[tokio::test]
async fn a_request_whose_body_cannot_be_replayed_is_unauthorized_without_a_retry() {
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    prime(&fake, &layer).await;
    fake.revoke_all_tokens();

    let err = expect_err(
        layer
            .layer(hyper_client_for::<Streamed>())
            .oneshot(graphql_with(&fake.api_url(), streamed(DATA_POOL_QUERY)))
            .await,
    );
    let Error::Unauthorized(unauthorized) = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert!(!unauthorized.retried());
    assert!(err.to_string().contains("was not sent again"), "{err}");
    assert_eq!(
        fake.stats().api_requests,
        2,
        "the priming request and this one"
    );
    assert_eq!(layer.stats().unauthorized_retries, 0);

    // The same with a boxed body, with the fault on every request so that
    // the outcome does not depend on the cached token.
    fake.set_api_fault(Some(ApiFault::Unauthorized));
    let boxed: BoxBody<Bytes, BoxError> = Full::new(graphql_body(DATA_POOL_QUERY))
        .map_err(|never| match never {})
        .boxed();
    let err = expect_err(
        layer
            .layer(hyper_client_for::<BoxBody<Bytes, BoxError>>())
            .oneshot(graphql_with(&fake.api_url(), boxed))
            .await,
    );
    let Error::Unauthorized(unauthorized) = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert!(!unauthorized.retried());
    assert_eq!(fake.stats().api_requests, 3, "sent once");
    assert_eq!(layer.stats().unauthorized_retries, 0);
}

#[tokio::test]

async fn a_401_on_a_request_that_cannot_be_replayed_still_drops_the_rejected_token() {
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

#[tokio::test]
async fn with_retries_turned_off_a_401_is_unauthorized_at_once() {
    let fake = start().await;
    let layer = token_layer(&fake)
        .retry_unauthorized(false)
        .build()
        .unwrap();
    prime(&fake, &layer).await;
    fake.set_api_fault(Some(ApiFault::Unauthorized));

    let err = expect_err(layer.query(&fake).await);
    let Error::Unauthorized(unauthorized) = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert!(!unauthorized.retried());
    assert_eq!(fake.stats().api_requests, 2, "sent once");
    assert_eq!(layer.stats().unauthorized_retries, 0);
}
