//! The layer's credentials as a reqwest-middleware `Middleware`, over a real
//! `ClientWithMiddleware` and FakePropel: the default token, tenants from
//! the middleware `Extensions` and from views, a typed 403, a revoked token
//! cured inside the middleware, other origins left alone, and no secret or
//! token in any error or log line.

#![cfg(feature = "reqwest-middleware")]

mod support;

use std::sync::OnceLock;

use futures_util::future::join_all;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, RequestBuilder};
use serde_json::Value;
use tower_propel_auth::middleware::propel_error;
use tower_propel_auth::{Error, PropelAuthLayer, Scope, TokenParams};

use support::{
    graphql_body, metric_only_application, start, tenanted_application, token_layer,
    token_layer_with, Logs, DATA_POOL_QUERY,
};

/// The binary's one global subscriber, installed by the first test to ask.
fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        logs
    })
}

fn client(layer: &PropelAuthLayer) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(layer.middleware())
        .build()
}

/// A Data Pool query to `url`.
fn query(client: &ClientWithMiddleware, url: &str) -> RequestBuilder {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(graphql_body(DATA_POOL_QUERY))
}

/// The JSON body of a response that must be a 200.
async fn ok_json(response: Result<reqwest::Response, reqwest_middleware::Error>) -> Value {
    let response = response.expect("a response");
    assert_eq!(response.status(), 200);
    serde_json::from_slice(&response.bytes().await.expect("a body")).expect("JSON")
}

/// The tenant FakePropel saw in the token.
fn tenant_of(body: &Value) -> &Value {
    &body["extensions"]["policyValues"]["tenant_id"]
}

#[tokio::test]
async fn a_hundred_concurrent_requests_make_one_token_request() {
    logs();
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    let client = client(&layer);
    let responses = join_all((0..100).map(|_| query(&client, &fake.api_url()).send())).await;
    for response in responses {
        ok_json(Ok(response.expect("a response"))).await;
    }
    assert_eq!(fake.stats().token_requests, 1);
    assert_eq!(fake.stats().api_ok, 100);
    assert_eq!(
        layer.stats().token_requests,
        1,
        "the layer counts the middleware's"
    );
}

#[tokio::test]
async fn three_tenants_from_the_extensions_get_one_token_request_each_and_their_rows() {
    logs();
    let fake = start().await;
    fake.require_tenant_policy(true);
    let layer = token_layer_with(&fake, tenanted_application(&fake))
        .build()
        .unwrap();
    let client = client(&layer);
    let tenants = ["acme", "globex", "initech"];
    let requests = tenants
        .iter()
        .flat_map(|tenant| std::iter::repeat_n(*tenant, 10));
    let answers = join_all(requests.map(|tenant| {
        let request = query(&client, &fake.api_url()).with_extension(TokenParams::tenant(tenant));
        async move { (tenant, ok_json(request.send().await).await) }
    }))
    .await;
    for (tenant, body) in &answers {
        assert_eq!(tenant_of(body), *tenant, "{body}");
        assert_eq!(&body["data"]["sqlV1"]["rows"][0][0], *tenant, "{body}");
    }
    assert_eq!(fake.stats().token_requests, 3, "one per tenant");
    assert_eq!(layer.stats().token_sets, 3);

    // A tenant view works here too, and shares the sets.
    let acme = ClientBuilder::new(reqwest::Client::new())
        .with(layer.with_params(TokenParams::tenant("acme")).middleware())
        .build();
    let body = ok_json(query(&acme, &fake.api_url()).send().await).await;
    assert_eq!(tenant_of(&body), "acme");
    assert_eq!(
        fake.stats().token_requests,
        3,
        "the view found acme's token"
    );
}

#[tokio::test]
async fn a_403_stays_typed_and_names_the_missing_scope() {
    logs();
    let fake = start().await;
    let layer = token_layer_with(&fake, metric_only_application(&fake))
        .build()
        .unwrap();
    let err = query(&client(&layer), &fake.api_url())
        .send()
        .await
        .expect_err("a 403");
    let Some(Error::Forbidden(forbidden)) = propel_error(&err) else {
        panic!("expected Forbidden, got {err:?}");
    };
    assert_eq!(forbidden.missing_scope(), Some(&Scope::DataPoolQuery));
    assert!(err.to_string().contains("data_pool:query"), "{err}");
    assert_eq!(layer.stats().forbidden, 1);
}

#[tokio::test]
async fn a_revoked_token_is_cured_with_one_more_token_request_and_no_error() {
    logs();
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    let client = client(&layer);
    ok_json(query(&client, &fake.api_url()).send().await).await;
    fake.revoke_all_tokens();

    let responses = join_all((0..20).map(|_| query(&client, &fake.api_url()).send())).await;
    for response in responses {
        ok_json(response).await;
    }
    let stats = fake.stats();
    assert_eq!(stats.token_requests, 2, "one more token for every 401");
    assert_eq!(stats.api_invalid_credentials, 20);
    assert_eq!(stats.api_ok, 21, "each rejected request sent once more");
    assert_eq!(layer.stats().tokens_rejected, 1);
}

#[tokio::test]
async fn a_request_to_another_origin_goes_without_credentials() {
    logs();
    let fake = start().await;
    let elsewhere = start().await;
    let layer = token_layer(&fake).build().unwrap();
    let response = query(&client(&layer), &elsewhere.api_url())
        .send()
        .await
        .expect("a plain response, not an error");
    assert_eq!(response.status(), 401);
    assert_eq!(elsewhere.stats().api_unauthenticated, 1, "no credentials");
    assert_eq!(fake.stats().token_requests, 0);
}

#[tokio::test]
async fn no_secret_or_token_shows_in_an_error_or_a_log_line() {
    let logs = logs();
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    let client = client(&layer);
    ok_json(query(&client, &fake.api_url()).send().await).await;
    let token = layer.access_token(None).await.unwrap();
    let token = tower_propel_auth::secrecy::ExposeSecret::expose_secret(token.secret()).to_owned();

    // A server that quotes the credentials it got, in a 401 (the retry gets
    // the same) and a 403.
    let mut errors = Vec::new();
    for status in [401, 403] {
        fake.set_api_fault(Some(
            tower_propel_auth::testing::ApiFault::EchoCredentials { status },
        ));
        let err = query(&client, &fake.api_url())
            .send()
            .await
            .expect_err("rejected");
        assert!(propel_error(&err).is_some(), "{err:?}");
        errors.push(format!("{err} {err:?} {:?}", propel_error(&err)));
    }
    let secret = fake.application_secret();
    let logs = logs.text();
    assert!(
        logs.contains("fetched a Propel access token"),
        "logs were captured"
    );
    for text in errors.iter().chain([&logs]) {
        assert!(!text.contains(&token), "the token in {text}");
        // Nor the tokens minted after it: every token is a JWT.
        assert!(!text.contains("eyJ"), "a JWT in {text}");
        assert!(!text.contains(secret), "the secret in {text}");
    }
}

#[tokio::test]
async fn the_callers_own_header_is_kept_and_plain_http_to_another_host_is_refused() {
    logs();
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    let own = query(&client(&layer), &fake.api_url())
        .header("authorization", "Bearer callers-own")
        .send()
        .await
        .expect("a plain response");
    assert_eq!(own.status(), 401, "FakePropel saw the caller's header");
    assert_eq!(
        fake.stats().token_requests,
        0,
        "no token for a request with its own"
    );

    let insecure = token_layer(&fake)
        .allowed_origins(["http://propel.example"])
        .build()
        .unwrap();
    let err = query(&client(&insecure), "http://propel.example/graphql")
        .send()
        .await
        .expect_err("refused");
    assert!(
        matches!(propel_error(&err), Some(Error::InsecureTransport(_))),
        "{err:?}"
    );
}
