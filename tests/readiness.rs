//! Readiness (DESIGN section 4, behaviour 12): a request that waits for a
//! token does not hold a readied inner service meanwhile, so a stack whose
//! token requests go through the same limited client cannot starve itself.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use http::StatusCode;
use tower::limit::ConcurrencyLimitLayer;
use tower::{Layer, Service, ServiceExt};
use tower_propel_auth::TokenHttpClient;

use support::{graphql, hyper_client, start, token_layer, DATA_POOL_QUERY};

/// One concurrency limit of 1 in front of hyper-util's client, shared by the
/// API requests (the layer's inner service) and the token requests (clones
/// of a `ConcurrencyLimit` share its semaphore). Ten cold requests each
/// ready their own clone, which takes the one permit, then find no token.
///
/// Fails on the previous core (0809309): the first request kept its readied
/// service, and so the permit, while it waited for the token, and the token
/// request waited for that permit: the timeout below fired.
#[tokio::test]
async fn cold_requests_through_a_limit_of_one_shared_with_token_requests_all_succeed() {
    let fake = start().await;
    let limited = ConcurrencyLimitLayer::new(1).layer(hyper_client());
    let layer = token_layer(&fake)
        .http_client(TokenHttpClient::new(limited.clone()))
        .build()
        .unwrap();
    let service = layer.layer(limited);

    let requests = (0..10).map(|_| {
        let mut service = service.clone();
        let request = graphql(&fake.api_url(), DATA_POOL_QUERY);
        tokio::spawn(async move { service.ready().await?.call(request).await })
    });
    let responses = tokio::time::timeout(Duration::from_secs(5), join_all(requests))
        .await
        .expect("the requests starved: a waiting request held the only permit");

    for response in responses {
        let response = response.expect("the task ran").expect("a response");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(fake.stats().token_requests, 1);
    assert_eq!(fake.stats().api_ok, 10);
    assert_eq!(layer.stats().waited_for_token, 10, "all ten were cold");
}
