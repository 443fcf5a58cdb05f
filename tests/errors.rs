//! 403s and the errors a user sees, over real loopback TCP.

mod support;

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::testing::{ApiFault, TokenFault};
use tower_propel_auth::{Error, ForbiddenReason, Scope, TokenParams};

use support::{
    basic_layer, counting_bodies, expect_err, graphql, hyper_client, json, metric_only_application,
    recording, start, tenanted_application, token_layer, token_layer_with, BodyBytes, Query,
    Recorded, DATA_POOL_QUERY, METRIC_QUERY,
};

#[tokio::test]
async fn a_token_without_data_pool_query_is_forbidden_naming_that_scope() {
    let fake = start().await;
    let layer = token_layer_with(&fake, metric_only_application(&fake))
        .build()
        .unwrap();
    let service = layer.layer(hyper_client());

    // The token is good for what the Application may do …
    let response = service
        .clone()
        .oneshot(graphql(&fake.api_url(), METRIC_QUERY))
        .await
        .expect("a Metric query is allowed");
    assert_eq!(response.status(), StatusCode::OK);

    // … and a Data Pool query is a typed 403.
    let err = expect_err(
        service
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await,
    );
    let Error::Forbidden(forbidden) = &err else {
        panic!("expected Forbidden, got {err:?}");
    };
    assert_eq!(forbidden.missing_scope(), Some(&Scope::DataPoolQuery));
    assert!(
        forbidden.message().contains("data-pool:query"),
        "{}",
        forbidden.message()
    );
    assert!(forbidden.message().contains("APP01METRICONLY"));
    assert!(
        forbidden.hint().contains("data_pool:query"),
        "{}",
        forbidden.hint()
    );
    assert!(forbidden.hint().contains("new access token"));
    assert!(err.to_string().contains("data_pool:query"), "{err}");
    assert!(!err.is_transient());

    let stats = fake.stats();
    assert_eq!(stats.api_forbidden, 1);
    assert_eq!(stats.api_requests, 2, "a 403 is never retried");
    assert_eq!(stats.token_requests, 1, "a 403 does not drop the token");
    assert_eq!(layer.stats().forbidden, 1);
}

#[tokio::test]
async fn a_token_without_the_policy_values_a_policy_needs_is_forbidden_as_a_policy_problem() {
    let fake = start().await;
    fake.require_tenant_policy(true);
    let credentials = tenanted_application(&fake);

    let layer = token_layer_with(&fake, credentials.clone())
        .build()
        .unwrap();
    let err = expect_err(layer.query(&fake).await);
    let Error::Forbidden(forbidden) = &err else {
        panic!("expected Forbidden, got {err:?}");
    };
    assert!(forbidden.is_policy(), "{forbidden:?}");
    assert_eq!(forbidden.missing_scope(), None);
    assert!(forbidden.hint().contains("Data Pool Access Policy"));
    assert!(forbidden.hint().contains("policy_values"));

    // With the tenant in the token the same query is allowed.
    let tenanted = token_layer_with(&fake, credentials)
        .params(
            TokenParams::new()
                .with_policy_values_json(r#"{"tenant_id":"acme"}"#)
                .unwrap(),
        )
        .build()
        .unwrap();
    let response = tenanted.query(&fake).await.expect("allowed with a tenant");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.stats().api_forbidden, 1);
}

#[tokio::test]
async fn forbidden_bodies_of_every_shape_are_forbidden() {
    let fake = start().await;
    let layer = basic_layer(&fake);
    let service = layer.layer(hyper_client());

    let graphql_json = serde_json::json!({"errors": [{"message":
        "Application APP01FAKEDEFAULT is not allowed to query Metric MET01FAKE, because it lacks \
         the \"metric:query\" scope; you must add this scope to your Application and request a \
         new access token to query the Metric"}]})
    .to_string();
    let cases: Vec<(&str, Option<&str>, Bytes, ForbiddenReason)> = vec![
        (
            "GraphQL JSON",
            Some("application/json"),
            Bytes::from(graphql_json),
            ForbiddenReason::MissingScope(Scope::MetricQuery),
        ),
        (
            "RFC 6749 JSON",
            Some("application/json"),
            Bytes::from_static(
                br#"{"error":"insufficient_scope","error_description":"the token lacks scope admin"}"#,
            ),
            ForbiddenReason::MissingScope(Scope::Admin),
        ),
        (
            "RFC 6749 JSON about a policy",
            Some("application/json"),
            Bytes::from_static(
                br#"{"error":"access_denied","error_description":"no Data Pool Access Policy applies"}"#,
            ),
            ForbiddenReason::Policy,
        ),
        (
            "plain text",
            Some("text/plain"),
            Bytes::from_static(b"Forbidden: the token lacks the 'data_pool:query' scope"),
            ForbiddenReason::MissingScope(Scope::DataPoolQuery),
        ),
        ("empty", None, Bytes::new(), ForbiddenReason::Other),
        (
            "not UTF-8",
            Some("application/octet-stream"),
            Bytes::from_static(&[0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28]),
            ForbiddenReason::Other,
        ),
        (
            "HTML",
            Some("text/html"),
            Bytes::from_static(b"<html><body><h1>403 Forbidden</h1></body></html>"),
            ForbiddenReason::Other,
        ),
    ];

    let count = cases.len() as u64;
    for (shape, content_type, body, reason) in cases {
        fake.set_api_fault(Some(ApiFault::Forbidden {
            content_type: content_type.map(str::to_owned),
            body: body.clone(),
        }));
        let err = expect_err(
            service
                .clone()
                .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
                .await,
        );
        let Error::Forbidden(forbidden) = &err else {
            panic!("{shape}: expected Forbidden, got {err:?}");
        };
        assert_eq!(forbidden.reason(), &reason, "{shape}: {forbidden:?}");
        if body.is_empty() {
            assert_eq!(forbidden.message(), "", "{shape}");
        }
        assert!(!forbidden.hint().is_empty(), "{shape}");
        let text = err.to_string();
        assert!(text.starts_with("forbidden"), "{shape}: {text}");
    }
    assert_eq!(fake.stats().api_forbidden, count);
    assert_eq!(fake.stats().api_requests, count, "no 403 is retried");
    assert_eq!(layer.stats().forbidden, count);
}

#[tokio::test]
async fn a_10_mib_forbidden_body_is_read_only_up_to_the_cap() {
    const TEN_MIB: usize = 10 * 1024 * 1024;
    const CAP: usize = 64 * 1024;

    let fake = start().await;
    let mut body = br#"{"errors":[{"message":"lacks the \"admin\" scope "#.to_vec();
    body.resize(TEN_MIB, b'x');
    fake.set_api_fault(Some(ApiFault::Forbidden {
        content_type: Some("application/json".to_owned()),
        body: Bytes::from(body),
    }));

    // Count the body bytes the layer actually polls out of hyper.
    let counter = BodyBytes::default();
    let counting = counting_bodies(&counter);

    let err = expect_err(
        basic_layer(&fake)
            .layer(counting)
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await,
    );
    let Error::Forbidden(forbidden) = &err else {
        panic!("expected Forbidden, got {err:?}");
    };
    assert!(
        forbidden.message().chars().count() <= 512,
        "the excerpt is short"
    );

    let (read, largest_frame) = (counter.read(), counter.largest_frame());
    assert!(
        read <= CAP + largest_frame,
        "read {read} bytes; the cap is {CAP} plus one frame of {largest_frame}"
    );
    assert!(read < TEN_MIB / 10, "read {read} of {TEN_MIB} bytes");
}

#[tokio::test]
async fn errors_never_show_the_application_secret_or_the_token() {
    let fake = start().await;
    let secret = fake.application_secret().to_owned();
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{secret}", fake.application_id()));
    let assert_clean = |what: &str, err: &Error, also: &[&str]| {
        let mut shown = vec![err.to_string(), format!("{err:?}"), format!("{err:#?}")];
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            shown.push(cause.to_string());
            shown.push(format!("{cause:?}"));
            source = cause.source();
        }
        for text in shown {
            assert!(!text.contains(&secret), "{what} shows the secret: {text}");
            assert!(
                !text.contains(&basic),
                "{what} shows the Basic header: {text}"
            );
            for hidden in also {
                assert!(!text.contains(hidden), "{what} shows {hidden}: {text}");
            }
        }
    };

    // Basic: Propel echoes the credentials back in a 401 and in a 403.
    let service = basic_layer(&fake).layer(hyper_client());
    fake.set_api_fault(Some(ApiFault::Status {
        status: 401,
        body: Bytes::from(format!(
            r#"{{"errors":[{{"message":"bad Authorization: Basic {basic} (secret {secret})"}}]}}"#
        )),
    }));
    let err = expect_err(
        service
            .clone()
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await,
    );
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    assert_clean("a Basic 401", &err, &[]);

    fake.set_api_fault(Some(ApiFault::Forbidden {
        content_type: Some("text/plain".to_owned()),
        body: Bytes::from(format!("secret {secret} lacks the \"admin\" scope")),
    }));
    let err = expect_err(
        service
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await,
    );
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");
    assert_clean("a Basic 403", &err, &[]);

    // Tokens: Propel echoes the token back in a 401 (twice: the retry
    // carries a fresh token and gets the same answer, so the error must hide
    // a token this attempt did not send too) and in a 403.
    fake.set_api_fault(None);
    let recorded = Recorded::default();
    let layer = token_layer(&fake).build().unwrap();
    let service = ServiceBuilder::new()
        .retry(TransientErrors::new(1))
        .layer(layer.clone())
        .service(recording(hyper_client(), &recorded));
    let response = service
        .clone()
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .expect("the first request succeeds");
    let _ = json(response).await;
    let header = recorded.last_authorization().expect("a Bearer header");
    let token = header.strip_prefix("Bearer ").expect("Bearer").to_owned();
    assert!(!format!("{layer:?}").contains(&token));

    fake.set_api_fault(Some(ApiFault::Status {
        status: 401,
        body: Bytes::from(format!("token {token} is not valid; {header}")),
    }));
    let err = expect_err(
        service
            .clone()
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await,
    );
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    let fresh = recorded.last_authorization().expect("a Bearer header");
    let fresh = fresh.strip_prefix("Bearer ").unwrap().to_owned();
    assert_ne!(fresh, token, "the retry carried a fresh token");
    assert_clean("a token 401", &err, &[&token, &fresh]);

    fake.set_api_fault(Some(ApiFault::Forbidden {
        content_type: Some("application/json".to_owned()),
        body: Bytes::from(format!(
            r#"{{"errors":[{{"message":"token {fresh} lacks the \"admin\" scope"}}]}}"#
        )),
    }));
    let err = expect_err(
        service
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await,
    );
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");
    assert_clean("a token 403", &err, &[&token, &fresh]);

    // The Token API echoes the secret in its 400.
    fake.fail_next_token_requests(
        1,
        TokenFault::Status {
            status: 400,
            retry_after: None,
            body: Some(format!(
                r#"{{"error":"invalid_client","error_description":"client_secret {secret} is invalid"}}"#
            )),
        },
    );
    let err = expect_err(token_layer(&fake).build().unwrap().query(&fake).await);
    assert!(matches!(err, Error::Token(_)), "{err:?}");
    assert_clean("a Token API 400", &err, &[]);
}
