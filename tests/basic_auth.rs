//! Basic credentials (server-side auth) over real loopback TCP, and where
//! credentials may and may not go.

mod support;

use std::convert::Infallible;

use base64::Engine as _;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt};
use tower_propel_auth::{Credentials, Error, PropelAuthLayer};

use support::{
    basic_layer, basic_layer_with, expect_err, graphql, hyper_client, json, reqwest_graphql, start,
    token_layer, Calls, Query, DATA_POOL_QUERY,
};

#[tokio::test]
async fn basic_credentials_authenticate_through_hyper_util_and_reqwest() {
    let fake = start().await;
    let layer = basic_layer(&fake);

    let hyper = layer.layer(hyper_client());
    let response = hyper
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .expect("hyper request succeeds");
    assert_eq!(response.status(), StatusCode::OK);
    let body = json(response).await;
    assert_eq!(body["extensions"]["auth"], "basic");
    assert_eq!(body["extensions"]["applicationId"], fake.application_id());
    assert_eq!(fake.stats().api_basic, 1);

    let reqwest = layer.layer(reqwest::Client::new());
    let response = reqwest
        .oneshot(reqwest_graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .expect("reqwest request succeeds");
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("a body")).expect("JSON");
    assert_eq!(body["extensions"]["auth"], "basic");

    let stats = fake.stats();
    assert_eq!(stats.api_basic, 2);
    assert_eq!(stats.api_ok, 2);
    assert_eq!(stats.api_unauthenticated, 0);
    assert_eq!(stats.token_requests, 0, "Basic auth never asks for a token");
}

#[tokio::test]
async fn a_callers_own_authorization_header_is_left_alone() {
    let fake = start().await;
    fake.add_application(
        "APP01CALLERSOWN",
        "callers-own-secret",
        &["data_pool:query"],
    );
    let service = basic_layer(&fake).layer(hyper_client());

    let own =
        base64::engine::general_purpose::STANDARD.encode("APP01CALLERSOWN:callers-own-secret");
    let mut request = graphql(&fake.api_url(), DATA_POOL_QUERY);
    request
        .headers_mut()
        .insert(AUTHORIZATION, format!("Basic {own}").parse().unwrap());
    let response = service.clone().oneshot(request).await.expect("succeeds");
    assert_eq!(response.status(), StatusCode::OK);
    let body = json(response).await;
    assert_eq!(
        body["extensions"]["applicationId"], "APP01CALLERSOWN",
        "the caller's credentials reached Propel, not the layer's"
    );

    // A caller's header that Propel rejects is still the caller's business:
    // the 401 comes back as a response, and nothing is retried with ours.
    let mut request = graphql(&fake.api_url(), DATA_POOL_QUERY);
    request
        .headers_mut()
        .insert(AUTHORIZATION, "Bearer not-a-jwt".parse().unwrap());
    let response = service.oneshot(request).await.expect("passes through");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let stats = fake.stats();
    assert_eq!(stats.api_requests, 2);
    assert_eq!(stats.api_basic, 1, "only the caller's own Basic request");
    assert_eq!(stats.api_invalid_credentials, 1);
}

#[tokio::test]
async fn a_request_to_another_origin_arrives_without_credentials() {
    let fake = start().await;
    let other = start().await;
    assert_ne!(fake.origin(), other.origin());

    let layer = basic_layer(&fake);
    let response = layer
        .layer(hyper_client())
        .oneshot(graphql(&other.api_url(), DATA_POOL_QUERY))
        .await
        .expect("passes through");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = layer
        .layer(reqwest::Client::new())
        .oneshot(reqwest_graphql(&other.api_url(), DATA_POOL_QUERY))
        .await
        .expect("passes through");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // The same with tokens: no token is even fetched for another origin.
    let tokens = token_layer(&fake).build().unwrap();
    let response = tokens
        .layer(hyper_client())
        .oneshot(graphql(&other.api_url(), DATA_POOL_QUERY))
        .await
        .expect("passes through");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let seen = other.stats();
    assert_eq!(seen.api_requests, 3);
    assert_eq!(seen.api_unauthenticated, 3, "no credentials arrived");
    assert_eq!(seen.api_basic + seen.api_bearer, 0);
    assert_eq!(fake.stats().api_requests, 0);
    assert_eq!(fake.stats().token_requests, 0);
    assert_eq!(tokens.stats().token_requests, 0);
}

/// An inner service that counts its calls and answers 200.
fn counting_inner(
    calls: &Calls,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    let calls = calls.clone();
    tower::service_fn(move |_request: Request<Full<Bytes>>| {
        let calls = calls.clone();
        async move {
            calls.bump();
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    })
}

#[tokio::test]
async fn an_allowed_origin_over_plain_http_is_insecure_transport_and_nothing_is_sent() {
    let fake = start().await;
    let calls = Calls::default();

    // An allowed origin that is plain http and not loopback.
    let layer = PropelAuthLayer::basic(support::credentials(&fake))
        .with_allowed_origins(["http://example.invalid"])
        .unwrap();
    let err = expect_err(
        layer
            .layer(counting_inner(&calls))
            .oneshot(graphql("http://example.invalid/graphql", DATA_POOL_QUERY))
            .await,
    );
    let Error::InsecureTransport(insecure) = &err else {
        panic!("expected InsecureTransport, got {err:?}");
    };
    assert!(insecure.origin().contains("example.invalid"), "{insecure}");
    assert!(!err.is_transient());

    // An https origin downgraded to plain http by the request.
    let layer = PropelAuthLayer::basic(support::credentials(&fake))
        .with_allowed_origins(["https://example.invalid"])
        .unwrap();
    let err = expect_err(
        layer
            .layer(counting_inner(&calls))
            .oneshot(graphql("http://example.invalid/graphql", DATA_POOL_QUERY))
            .await,
    );
    assert!(matches!(err, Error::InsecureTransport(_)), "{err:?}");

    // With tokens: refused before any token is fetched.
    let tokens = token_layer(&fake)
        .allowed_origins(["http://example.invalid"])
        .build()
        .unwrap();
    let err = expect_err(
        tokens
            .layer(counting_inner(&calls))
            .oneshot(graphql("http://example.invalid/graphql", DATA_POOL_QUERY))
            .await,
    );
    assert!(matches!(err, Error::InsecureTransport(_)), "{err:?}");

    assert_eq!(calls.get(), 0, "nothing reached the inner service");
    assert_eq!(fake.stats().token_requests, 0);
    assert_eq!(tokens.stats().token_requests, 0);
}

#[tokio::test]
async fn bad_basic_credentials_are_unauthorized_at_once() {
    let fake = start().await;
    let secret = "wrong-secret-0123456789abcdef";
    let layer = basic_layer_with(
        &fake,
        Credentials::new(fake.application_id(), secret).unwrap(),
    );

    let err = expect_err(layer.query(&fake).await);
    let Error::Unauthorized(unauthorized) = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert!(!unauthorized.is_transient(), "there is nothing to refresh");
    assert!(!err.is_transient());
    assert!(
        err.to_string().contains("Application ID and secret"),
        "{err}"
    );
    let hint = err.hint().expect("a hint");
    assert!(hint.contains("secret is current"), "{hint}");
    assert!(!err.to_string().contains(secret) && !format!("{err:?}").contains(secret));

    let stats = fake.stats();
    assert_eq!(stats.api_requests, 1, "no retry");
    assert_eq!(stats.api_invalid_credentials, 1);
    assert_eq!(layer.stats().unauthorized, 1);
    assert_eq!(layer.stats().tokens_rejected, 0, "the credentials stay");
}
