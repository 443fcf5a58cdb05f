//! Token API answers, typed, from FakePropel through the layer.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::StatusCode;
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_propel_auth::testing::TokenFault;
use tower_propel_auth::{
    ClientAuth, Credentials, Error, FakePropel, Scope, TokenErrorKind, TokenHttpClient,
    TokenLayerBuilder, TokenParams, TokenRequestField,
};

use support::{
    counting_bodies, credentials, expect_err, graphql, hyper_client, json, recording, start,
    token_error, token_layer, token_layer_with, BodyBytes, Query, Recorded, DATA_POOL_QUERY,
};

/// Sends one query through a layer built from `builder`; it must fail for
/// want of a token. Returns the error, after checking that exactly one token
/// request was made and nothing reached the API.
async fn token_failure(fake: &FakePropel, builder: TokenLayerBuilder) -> Error {
    let before = fake.stats();
    let layer = builder.build().expect("a valid layer");
    let err = expect_err(layer.query(fake).await);
    let after = fake.stats();
    assert_eq!(
        after.token_requests - before.token_requests,
        1,
        "one token request, not retried while a request waits: {err}"
    );
    assert_eq!(after.api_requests, before.api_requests, "nothing was sent");
    assert_eq!(layer.stats().token_failures, 1);
    err
}

/// A 400 with this RFC 6749 body for the next token request.
fn fail_next_with_400(fake: &FakePropel, body: &str) {
    fake.fail_next_token_requests(
        1,
        TokenFault::Status {
            status: 400,
            retry_after: None,
            body: Some(body.to_owned()),
        },
    );
}

#[tokio::test]
async fn a_wrong_secret_is_invalid_client_pointing_at_the_secret() {
    let fake = start().await;
    let wrong = Credentials::new(fake.application_id(), "not-the-secret").unwrap();
    let err = token_failure(&fake, token_layer_with(&fake, wrong)).await;
    let token = token_error(&err);
    assert_eq!(token.kind(), TokenErrorKind::InvalidClient);
    assert_eq!(token.field(), Some(TokenRequestField::ClientSecret));
    assert_eq!(token.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(token.oauth_error(), Some("invalid_client"));
    assert!(token.hint().contains("secret"), "{}", token.hint());
    assert!(!err.is_transient());
    assert!(err.to_string().contains("check client_secret"), "{err}");
}

#[tokio::test]
async fn an_unknown_client_id_is_invalid_client_pointing_at_the_id() {
    let fake = start().await;
    let unknown = Credentials::new("APP01NOSUCHAPP", fake.application_secret()).unwrap();
    let err = token_failure(&fake, token_layer_with(&fake, unknown)).await;
    let token = token_error(&err);
    assert_eq!(token.kind(), TokenErrorKind::InvalidClient);
    assert_eq!(token.field(), Some(TokenRequestField::ClientId));
    assert!(token.hint().contains("must exist"), "{}", token.hint());
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_missing_or_unsupported_grant_type_points_at_the_grant_type() {
    let fake = start().await;

    fail_next_with_400(
        &fake,
        r#"{"error":"invalid_request","error_description":"grant_type is required"}"#,
    );
    let err = token_failure(&fake, token_layer(&fake)).await;
    let token = token_error(&err);
    assert_eq!(token.kind(), TokenErrorKind::InvalidRequest);
    assert_eq!(token.field(), Some(TokenRequestField::GrantType));
    assert!(token.hint().contains("grant_type=client_credentials"));

    fail_next_with_400(
        &fake,
        r#"{"error":"unsupported_grant_type","error_description":"grant_type must be client_credentials"}"#,
    );
    let err = token_failure(&fake, token_layer(&fake)).await;
    let token = token_error(&err);
    assert_eq!(token.kind(), TokenErrorKind::UnsupportedGrantType);
    assert_eq!(token.field(), Some(TokenRequestField::GrantType));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_scope_beyond_the_applications_is_invalid_scope() {
    let fake = start().await;
    fake.add_application(
        "APP01NOADMIN",
        "no-admin-secret",
        &["data_pool:query", "metric:query"],
    );
    let builder = token_layer_with(
        &fake,
        Credentials::new("APP01NOADMIN", "no-admin-secret").unwrap(),
    )
    .params(TokenParams::new().with_scopes([Scope::Admin]));
    let err = token_failure(&fake, builder).await;
    let token = token_error(&err);
    assert_eq!(token.kind(), TokenErrorKind::InvalidScope);
    assert_eq!(token.field(), Some(TokenRequestField::Scope));
    assert!(token.hint().contains("scopes the Application has"));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn token_api_failures_are_transient_server_errors() {
    let fake = start().await;
    for status in [500, 502] {
        fake.fail_next_token_requests(
            1,
            TokenFault::Status {
                status,
                retry_after: None,
                body: None,
            },
        );
        let err = token_failure(&fake, token_layer(&fake)).await;
        let token = token_error(&err);
        assert_eq!(token.kind(), TokenErrorKind::Server, "{status}");
        assert_eq!(token.status().map(|s| s.as_u16()), Some(status));
        assert!(token.is_transient() && err.is_transient(), "{status}");
        assert_eq!(err.retry_after(), None);
    }
}

#[tokio::test]
async fn a_retry_after_on_503_and_429_is_kept() {
    let fake = start().await;
    for (status, kind) in [
        (503, TokenErrorKind::Server),
        (429, TokenErrorKind::RateLimited),
    ] {
        fake.fail_next_token_requests(
            1,
            TokenFault::Status {
                status,
                retry_after: Some(7),
                body: None,
            },
        );
        let err = token_failure(&fake, token_layer(&fake)).await;
        assert_eq!(token_error(&err).kind(), kind, "{status}");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)), "{status}");
        assert!(err.is_transient(), "{status}");
    }
}

#[tokio::test]
async fn unusable_2xx_answers_are_invalid_responses() {
    let fake = start().await;
    let faults = [
        TokenFault::MalformedJson,
        TokenFault::MissingAccessToken,
        TokenFault::TokenType("mac".to_owned()),
    ];
    for fault in faults {
        fake.fail_next_token_requests(1, fault.clone());
        let err = token_failure(&fake, token_layer(&fake)).await;
        assert_eq!(
            token_error(&err).kind(),
            TokenErrorKind::InvalidResponse,
            "{fault:?}: {err}"
        );
        assert!(!err.is_transient(), "{fault:?}");
    }
}

#[tokio::test]
async fn an_oversized_token_answer_is_an_invalid_response() {
    let fake = start().await;
    fake.fail_next_token_requests(1, TokenFault::Oversized(10 * 1024 * 1024));
    let err = token_failure(&fake, token_layer(&fake)).await;
    assert_eq!(token_error(&err).kind(), TokenErrorKind::InvalidResponse);

    // The same through a hyper-util token client, which shows that the
    // answer was read only up to the cap (64 KiB, plus at most one frame).
    fake.fail_next_token_requests(1, TokenFault::Oversized(10 * 1024 * 1024));
    let counter = BodyBytes::default();
    let err = token_failure(
        &fake,
        token_layer(&fake).http_client(TokenHttpClient::new(counting_bodies(&counter))),
    )
    .await;
    assert_eq!(token_error(&err).kind(), TokenErrorKind::InvalidResponse);
    let (read, largest_frame) = (counter.read(), counter.largest_frame());
    assert!(
        read <= 64 * 1024 + largest_frame,
        "read {read} bytes; the cap is 64 KiB plus one frame of {largest_frame}"
    );
    assert!(read < 1024 * 1024, "read {read} of 10 MiB");
}

#[tokio::test]
async fn odd_expires_in_values_are_clamped_and_the_token_still_works() {
    let fake = start().await;
    for expires_in in [0, -5, 1_000_000_000_000] {
        fake.reset_stats();
        fake.fail_next_token_requests(1, TokenFault::ExpiresIn(expires_in));
        let layer = token_layer(&fake).build().unwrap();
        let service = layer.layer(hyper_client());
        for _ in 0..3 {
            let response = service
                .clone()
                .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
                .await
                .unwrap_or_else(|err| panic!("expires_in {expires_in}: {err}"));
            assert_eq!(response.status(), StatusCode::OK, "expires_in {expires_in}");
            tokio::task::yield_now().await;
        }
        let stats = fake.stats();
        assert_eq!(stats.api_ok, 3, "expires_in {expires_in}");
        assert_eq!(
            stats.token_requests, 1,
            "expires_in {expires_in}: the token is reused, not refreshed at once"
        );
        assert_eq!(layer.stats().token_requests, 1);
    }
}

#[tokio::test]
async fn form_body_and_basic_header_client_auth_are_both_accepted() {
    let fake = start().await;
    let secret = fake.application_secret().to_owned();

    for client_auth in [ClientAuth::FormBody, ClientAuth::BasicHeader] {
        let recorded = Recorded::default();
        let layer = token_layer(&fake)
            .client_auth(client_auth)
            .http_client(TokenHttpClient::new(recording(hyper_client(), &recorded)))
            .build()
            .unwrap();
        let response = layer
            .query(&fake)
            .await
            .unwrap_or_else(|err| panic!("{client_auth:?}: {err}"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(json(response).await["extensions"]["auth"], "bearer");

        assert_eq!(recorded.len(), 1, "{client_auth:?}: one token request");
        let (headers, body) = recorded.all().remove(0);
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap();
        let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        assert_eq!(field("grant_type").as_deref(), Some("client_credentials"));
        match client_auth {
            ClientAuth::FormBody => {
                assert!(headers.get(AUTHORIZATION).is_none());
                assert_eq!(field("client_id").as_deref(), Some(fake.application_id()));
                assert_eq!(field("client_secret").as_deref(), Some(secret.as_str()));
            }
            ClientAuth::BasicHeader => {
                let header = headers[AUTHORIZATION].to_str().unwrap();
                assert!(header.starts_with("Basic "), "{header}");
                assert!(headers[AUTHORIZATION].is_sensitive());
                assert_eq!(field("client_id"), None);
                assert_eq!(field("client_secret"), None);
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(fake.stats().tokens_issued, 2);
    assert_eq!(fake.stats().token_errors, 0);
}

#[tokio::test]
async fn scopes_and_policy_values_arrive_as_sent() {
    let fake = start().await;
    let recorded = Recorded::default();
    let layer = token_layer(&fake)
        .params(
            TokenParams::new()
                .with_scopes([Scope::MetricQuery, Scope::DataPoolQuery])
                .with_policy_values_json(r#"{"tenant_id":"123","region":"eu"}"#)
                .unwrap(),
        )
        .http_client(TokenHttpClient::new(recording(hyper_client(), &recorded)))
        .build()
        .unwrap();
    let response = layer.query(&fake).await.expect("succeeds");
    let body = json(response).await;

    let scopes: BTreeSet<&str> = body["extensions"]["scopes"]
        .as_array()
        .expect("scopes")
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(scopes, BTreeSet::from(["data_pool:query", "metric:query"]));
    assert_eq!(
        body["extensions"]["policyValues"],
        json!({"tenant_id": "123", "region": "eu"})
    );
    assert_eq!(body["data"]["sqlV1"]["rows"][0][0], "123");

    // On the wire: space-separated scope strings, policy values as JSON text.
    let (_, form) = recorded.all().remove(0);
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&form).unwrap();
    let scope = &form.iter().find(|(n, _)| n == "scope").expect("scope").1;
    let sent: BTreeSet<&str> = scope.split(' ').collect();
    assert_eq!(sent, BTreeSet::from(["data_pool:query", "metric:query"]));
    let policy_values = &form
        .iter()
        .find(|(n, _)| n == "policy_values")
        .expect("policy_values")
        .1;
    let policy_values: serde_json::Value = serde_json::from_str(policy_values).unwrap();
    assert_eq!(policy_values, json!({"tenant_id": "123", "region": "eu"}));

    // Without any, the token carries the Application's own scopes.
    let plain = token_layer_with(&fake, credentials(&fake)).build().unwrap();
    let response = plain.query(&fake).await.expect("succeeds");
    let body = json(response).await;
    assert_eq!(body["extensions"]["policyValues"], serde_json::Value::Null);
    assert_eq!(
        body["extensions"]["scopes"].as_array().unwrap().len(),
        3,
        "{body}"
    );
}
