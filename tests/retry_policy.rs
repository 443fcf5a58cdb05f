//! `retry::TransientErrors` in a `ServiceBuilder` over FakePropel: it retries
//! what may pass (a Token API outage) and nothing that needs a change of
//! configuration (a 403, a wrong secret), and it gives up.

mod support;

use std::time::Duration;

use http::StatusCode;
use tower::{ServiceBuilder, ServiceExt};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::testing::TokenFault;
use tower_propel_auth::{Credentials, Error, Scope, Settings, TokenErrorKind};

use support::{
    expect_err, graphql, hyper_client, metric_only_application, settings, start, token_layer,
    token_layer_with, within_10s, DATA_POOL_QUERY, METRIC_QUERY,
};

/// At most this many retries, so at most `MAX_RETRIES + 1` attempts.
const MAX_RETRIES: usize = 3;

/// Short backoffs, so the tests take milliseconds.
fn policy() -> TransientErrors {
    TransientErrors::with_backoff(
        MAX_RETRIES,
        Duration::from_millis(10),
        Duration::from_millis(50),
    )
    .expect("a valid backoff")
}

fn token_503() -> TokenFault {
    TokenFault::Status {
        status: 503,
        retry_after: None,
        body: None,
    }
}

/// No cool-down: each attempt asks the Token API again, so the fake's count
/// of token requests is the number of attempts.
fn no_cooldown() -> Settings {
    settings(|s| s.cooldown = Duration::ZERO)
}

#[tokio::test]
async fn two_token_api_503s_are_retried_and_the_request_then_succeeds() {
    let fake = start().await;
    fake.fail_next_token_requests(2, token_503());
    let layer = token_layer(&fake).settings(no_cooldown()).build().unwrap();
    let client = ServiceBuilder::new()
        .retry(policy())
        .layer(layer.clone())
        .service(hyper_client());

    let response = within_10s(client.oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY)))
        .await
        .expect("the third attempt succeeds");
    assert_eq!(response.status(), StatusCode::OK);

    let stats = fake.stats();
    assert_eq!(stats.token_requests, 3, "two 503s, then a token");
    assert_eq!(stats.token_errors, 2);
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(
        stats.api_requests, 1,
        "the query went out once, with the token"
    );
    assert_eq!(layer.stats().token_failures, 2);
}

#[tokio::test]
async fn a_403_is_never_retried() {
    let fake = start().await;
    let credentials = metric_only_application(&fake);
    let layer = token_layer_with(&fake, credentials).build().unwrap();
    let client = ServiceBuilder::new()
        .retry(policy())
        .layer(layer)
        .service(hyper_client());

    // A Metric query is allowed (and caches the token) …
    let ok = client
        .clone()
        .oneshot(graphql(&fake.api_url(), METRIC_QUERY))
        .await
        .expect("a Metric query is allowed");
    assert_eq!(ok.status(), StatusCode::OK);
    fake.reset_stats();

    // … but a Data Pool query without data_pool:query is a 403, sent once.
    let err =
        expect_err(within_10s(client.oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))).await);
    let Error::Forbidden(forbidden) = &err else {
        panic!("expected Forbidden, got {err:?}");
    };
    assert_eq!(forbidden.missing_scope(), Some(&Scope::DataPoolQuery));
    let stats = fake.stats();
    assert_eq!(stats.api_requests, 1, "a 403 is not retried");
    assert_eq!(stats.api_forbidden, 1);
    assert_eq!(stats.token_requests, 0, "the cached token was used");
}

#[tokio::test]
async fn a_token_api_400_for_a_wrong_secret_is_never_retried() {
    let fake = start().await;
    let wrong = Credentials::new(fake.application_id(), "not-the-secret").unwrap();
    // No cool-down: a retry would reach the Token API again, so the fake's
    // count shows the policy's choice, not the cache's fail-fast.
    let layer = token_layer_with(&fake, wrong)
        .settings(no_cooldown())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .retry(policy())
        .layer(layer.clone())
        .service(hyper_client());

    let err =
        expect_err(within_10s(client.oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))).await);
    let Error::Token(token) = &err else {
        panic!("expected a token error, got {err:?}");
    };
    assert_eq!(token.kind(), TokenErrorKind::InvalidClient);
    assert_eq!(token.status(), Some(StatusCode::BAD_REQUEST));
    assert!(!err.is_transient());
    assert_eq!(fake.stats().token_requests, 1, "a 400 is not retried");
    assert_eq!(fake.stats().api_requests, 0);
    assert_eq!(layer.stats().token_requests, 1);
}

#[tokio::test]
async fn a_persistent_token_api_503_gives_up_after_the_last_retry() {
    let fake = start().await;
    fake.set_token_fault(Some(token_503()));
    let layer = token_layer(&fake).settings(no_cooldown()).build().unwrap();
    let client = ServiceBuilder::new()
        .retry(policy())
        .layer(layer)
        .service(hyper_client());

    let err =
        expect_err(within_10s(client.oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))).await);
    let Error::Token(token) = &err else {
        panic!("expected a token error, got {err:?}");
    };
    assert_eq!(token.kind(), TokenErrorKind::Server);
    assert_eq!(token.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(err.is_transient(), "transient, and still given up on");
    assert_eq!(
        fake.stats().token_requests,
        MAX_RETRIES as u64 + 1,
        "one attempt and {MAX_RETRIES} retries"
    );
    assert_eq!(fake.stats().api_requests, 0);
}

#[tokio::test]
async fn each_request_gets_its_own_retry_budget() {
    let fake = start().await;
    fake.set_token_fault(Some(token_503()));
    let layer = token_layer(&fake).settings(no_cooldown()).build().unwrap();
    let client = ServiceBuilder::new()
        .retry(policy())
        .layer(layer)
        .service(hyper_client());

    // Two requests one after the other through clones of one stack: the
    // second is not left with the first one's spent budget.
    for round in 1..=2u64 {
        let result = within_10s(
            client
                .clone()
                .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY)),
        )
        .await;
        expect_err(result);
        assert_eq!(
            fake.stats().token_requests,
            round * (MAX_RETRIES as u64 + 1)
        );
    }

    // Once the Token API is back, the same stack succeeds.
    fake.set_token_fault(None);
    let response = within_10s(client.oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY)))
        .await
        .expect("the Token API is back");
    assert_eq!(response.status(), StatusCode::OK);
}
