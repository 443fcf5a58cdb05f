//! hyper-util's legacy client under `PropelAuthLayer`, and the same client
//! (one connection pool) for the token requests: `cargo run --example hyper_client`.
//!
//! With no `PROPEL_CLIENT_ID` / `PROPEL_CLIENT_SECRET` in the environment it
//! runs against `FakePropel` on loopback over plain HTTP. With both set it
//! queries real Propel over HTTPS (hyper-rustls) with `SELECT 1`;
//! `PROPEL_API_URL` and `PROPEL_OAUTH_URL` are honoured.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_propel_auth::{
    config, Credentials, FakePropel, PropelAuthLayer, TokenLayerBuilder, CLIENT_ID_VAR,
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
    api_url: String,
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
                api_url: config.api_url().to_owned(),
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
            api_url: fake.api_url(),
            sql: "SELECT tenant, count() AS n FROM events GROUP BY tenant",
            fake: Some(fake),
        })
    }
}

async fn run() -> Result<(), BoxError> {
    let target = Target::new().await?;
    if target.fake.is_some() {
        // FakePropel serves plain HTTP on loopback.
        let client = Client::builder(TokioExecutor::new()).build_http();
        query(client, target).await
    } else {
        // HTTPS with the system's root certificates. `https_or_http` keeps a
        // loopback PROPEL_API_URL working; the layer itself refuses to send
        // credentials over plain HTTP anywhere else.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        query(client, target).await
    }
}

/// The same code for either connector.
async fn query<C>(client: Client<C, Full<Bytes>>, target: Target) -> Result<(), BoxError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    // Token requests go through the same client, and so the same connection
    // pool. hyper-util's client never follows redirects, as a request that
    // carries the secret must not.
    let layer = target.builder.http_client(client.clone()).build()?;
    let service = ServiceBuilder::new()
        // Outside the auth layer, so it bounds the wait for a token too.
        .timeout(Duration::from_secs(10))
        .layer(layer.clone())
        .service(client);

    let graphql = format!(
        "query {{ sqlV1(input: {{ query: {} }}) {{ columns {{ columnName }} rows }} }}",
        // A JSON string literal is also a valid GraphQL one.
        serde_json::Value::from(target.sql)
    );
    let body = Bytes::from(serde_json::json!({ "query": graphql }).to_string());
    println!("{QUERIES} concurrent queries: {}", target.sql);

    let started = Instant::now();
    let responses = futures_util::future::join_all((0..QUERIES).map(|_| {
        let request = Request::builder()
            .method(Method::POST)
            .uri(&target.api_url)
            .header(CONTENT_TYPE, "application/json")
            // An in-memory body: after a 401 the layer can send it again.
            .body(Full::new(body.clone()))
            .expect("a valid request");
        service.clone().oneshot(request)
    }))
    .await;

    let mut ok = 0;
    for (n, response) in responses.into_iter().enumerate() {
        let response = response?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
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
