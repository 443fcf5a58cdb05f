//! One layer over several HTTP clients, and the HTTP client for token requests.

mod support;

use std::time::Duration;

use http::StatusCode;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt};
use tower_propel_auth::testing::ApiFault;
use tower_propel_auth::{Error, Scope, TokenHttpClient, TokenParams};

use support::{
    graphql, hyper_client, json, recording, reqwest_graphql, start, token_layer, Recorded,
    DATA_POOL_QUERY,
};

#[tokio::test]
async fn one_layer_wraps_hyper_and_reqwest_and_they_share_one_token() {
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    let hyper = layer.layer(hyper_client());
    // A clone of the layer shares the same cache.
    let reqwest = layer.clone().layer(reqwest::Client::new());

    // Both at once on an empty cache …
    let (from_hyper, from_reqwest) = tokio::join!(
        hyper
            .clone()
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY)),
        reqwest
            .clone()
            .oneshot(reqwest_graphql(&fake.api_url(), DATA_POOL_QUERY)),
    );
    let from_hyper = from_hyper.expect("hyper succeeds");
    let from_reqwest = from_reqwest.expect("reqwest succeeds");
    assert_eq!(from_hyper.status(), StatusCode::OK);
    assert_eq!(from_reqwest.status(), StatusCode::OK);
    assert_eq!(json(from_hyper).await["extensions"]["auth"], "bearer");

    // … and again, one after the other.
    for _ in 0..2 {
        let response = hyper
            .clone()
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = reqwest
            .clone()
            .oneshot(reqwest_graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let stats = fake.stats();
    assert_eq!(stats.token_requests, 1, "one token for both clients");
    assert_eq!(stats.api_bearer, 6);
    assert_eq!(stats.api_ok, 6);
    assert_eq!(layer.stats().token_requests, 1);
}

#[tokio::test]
async fn a_hyper_client_given_for_token_requests_fetches_the_tokens() {
    let fake = start().await;
    let recorded = Recorded::default();
    let layer = token_layer(&fake)
        .http_client(TokenHttpClient::new(recording(hyper_client(), &recorded)))
        .build()
        .unwrap();

    for _ in 0..2 {
        let response = layer
            .layer(reqwest::Client::new())
            .oneshot(reqwest_graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await
            .expect("succeeds");
        assert_eq!(response.status(), StatusCode::OK);
    }

    assert_eq!(recorded.len(), 1, "the token request went through it");
    let (headers, body) = recorded.all().remove(0);
    assert_eq!(
        headers[http::header::CONTENT_TYPE],
        "application/x-www-form-urlencoded"
    );
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("grant_type=client_credentials"));
    assert_eq!(fake.stats().token_requests, 1);
    assert_eq!(fake.stats().api_bearer, 2);
}

#[tokio::test]
async fn the_layer_sits_in_a_service_builder_stack_and_its_errors_downcast() {
    let fake = start().await;
    let layer = token_layer(&fake)
        .params(TokenParams::new().with_scopes([Scope::MetricQuery]))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .layer(layer.clone())
        .service(hyper_client());

    // A Data Pool query with a token that has only metric:query: 403.
    let err: BoxError = client
        .clone()
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .expect_err("a 403");
    match err.downcast_ref::<Error>() {
        Some(Error::Forbidden(forbidden)) => {
            assert_eq!(forbidden.missing_scope(), Some(&Scope::DataPoolQuery));
        }
        other => panic!("expected Forbidden through the stack, got {other:?} ({err})"),
    }

    fake.set_api_fault(Some(ApiFault::Unauthorized));
    let err = client
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .expect_err("a 401");
    assert!(
        matches!(err.downcast_ref::<Error>(), Some(Error::Unauthorized(_))),
        "{err}"
    );
    assert_eq!(layer.stats().forbidden, 1);
    assert_eq!(layer.stats().unauthorized, 1);
}
