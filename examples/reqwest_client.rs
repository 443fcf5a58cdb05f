//! `reqwest::Client` as the inner tower service (`tower::Service<reqwest::Request>`),
//! and the same client for token requests: `cargo run --example reqwest_client`.
//!
//! With no `PROPEL_CLIENT_ID` / `PROPEL_CLIENT_SECRET` in the environment it
//! runs against `FakePropel` on loopback. With both set it queries real
//! Propel with `SELECT 1`; `PROPEL_API_URL` and `PROPEL_OAUTH_URL` are
//! honoured.
//!
//! reqwest keeps a request's extensions private, so every request through
//! one layer uses the layer's token parameters. For a token per tenant with
//! reqwest, build one layer per tenant (`.policy_values_json(…)`), or use
//! `http::Request`s (see the `hyper_client` example and `TokenParams`).

use std::process::ExitCode;
use std::time::Instant;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_propel_auth::{
    config, Credentials, Error, FakePropel, PropelAuthLayer, TokenLayerBuilder, CLIENT_ID_VAR,
    CLIENT_SECRET_VAR,
};

/// Concurrent queries: they share one token request.
const QUERIES: usize = 5;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Where the queries go, and the builder of a client-credentials layer for it.
struct Target {
    builder: TokenLayerBuilder,
    api_url: Url,
    sql: &'static str,
    /// `Some` when running against the fake (kept alive while it is used).
    fake: Option<FakePropel>,
}

impl Target {
    async fn new() -> Result<Self, BoxError> {
        let set = |var| std::env::var_os(var).is_some_and(|value| !value.is_empty());
        if set(CLIENT_ID_VAR) || set(CLIENT_SECRET_VAR) {
            // Reads PROPEL_CLIENT_ID, PROPEL_CLIENT_SECRET, PROPEL_OAUTH_URL, PROPEL_API_URL.
            let config = config::from_env()?;
            println!("Real Propel at {}", config.api_url());
            return Ok(Self {
                builder: config.client_credentials(),
                api_url: config.api_url().parse()?,
                sql: "SELECT 1",
                fake: None,
            });
        }
        let fake = FakePropel::start().await;
        println!(
            "FakePropel at {} (set {CLIENT_ID_VAR} and {CLIENT_SECRET_VAR} for real Propel)",
            fake.origin()
        );
        let credentials = Credentials::new(fake.application_id(), fake.application_secret())?;
        Ok(Self {
            builder: PropelAuthLayer::client_credentials(credentials)
                .token_url(fake.token_url())
                .api_url(fake.api_url()),
            api_url: fake.api_url().parse()?,
            sql: "SELECT tenant, count() AS n FROM events GROUP BY tenant",
            fake: Some(fake),
        })
    }
}

async fn run() -> Result<(), BoxError> {
    let target = Target::new().await?;

    // One client, one connection pool, for queries and token requests. It
    // must not follow redirects: a token request carries the secret.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let layer = target.builder.reqwest_client(http.clone()).build()?;
    // `reqwest::Client` is a `tower::Service<reqwest::Request>`; the layer
    // wraps it like any other. Its errors are `tower_propel_auth::Error`.
    let client = ServiceBuilder::new().layer(layer.clone()).service(http);

    println!("{QUERIES} concurrent queries: {}", target.sql);
    let started = Instant::now();
    let responses = futures_util::future::join_all((0..QUERIES).map(|_| {
        client
            .clone()
            .oneshot(sql_request(&target.api_url, target.sql))
    }))
    .await;

    let mut ok = 0;
    for (n, response) in responses.into_iter().enumerate() {
        let response = match response {
            Ok(response) => response,
            // The crate's errors say what to fix.
            Err(Error::Forbidden(forbidden)) => {
                return Err(format!("query {}: {forbidden}", n + 1).into())
            }
            Err(err) => return Err(err.into()),
        };
        let status = response.status();
        let body = response.bytes().await?;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let rows = json
            .pointer("/data/sqlV1/rows")
            .cloned()
            .unwrap_or_default();
        println!("  query {}: {status}, rows {rows}", n + 1);
        ok += usize::from(status == StatusCode::OK);
    }

    let stats = layer.stats();
    println!(
        "{ok} of {QUERIES} OK in {:.1} ms; token requests: {} (waited for it: {})",
        started.elapsed().as_secs_f64() * 1e3,
        stats.token_requests,
        stats.waited_for_token
    );
    if let Some(fake) = &target.fake {
        println!(
            "FakePropel saw {} token request(s) and {} Bearer-authenticated queries",
            fake.stats().token_requests,
            fake.stats().api_bearer
        );
    }
    if ok != QUERIES || stats.token_requests != 1 {
        return Err("expected every query to succeed with one shared token request".into());
    }
    Ok(())
}

/// `POST {"query": "query { sqlV1(…) { … } }"}`, with the body in memory so
/// that after a 401 the layer can send it again (`reqwest::Request::try_clone`).
fn sql_request(api_url: &Url, sql: &str) -> reqwest::Request {
    // A JSON string literal is also a valid GraphQL one.
    let graphql = format!(
        "query {{ sqlV1(input: {{ query: {} }}) {{ columns {{ columnName }} rows }} }}",
        serde_json::Value::from(sql)
    );
    let mut request = reqwest::Request::new(Method::POST, api_url.clone());
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    *request.body_mut() = Some(serde_json::json!({ "query": graphql }).to_string().into());
    request
}

/// An error and its causes on one line, each said once.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}
