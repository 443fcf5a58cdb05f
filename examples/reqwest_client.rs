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

mod support;

use std::process::ExitCode;
use std::time::Instant;

use reqwest::StatusCode;
use support::Target;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_propel_auth::Error;

/// Concurrent queries: they share one token request.
const QUERIES: usize = 5;

#[tokio::main]
async fn main() -> ExitCode {
    support::exit_code(run().await)
}

async fn run() -> Result<(), BoxError> {
    let target = Target::new().await?;
    let api_url = target.url()?;

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
            .oneshot(support::sql_request(&api_url, target.sql))
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
        let rows = support::rows(&json);
        println!("  query {}: {status}, rows {rows}", n + 1);
        ok += usize::from(status == StatusCode::OK);
    }

    // Every query OK, and all of them on one token request.
    support::check_shared_token(ok, QUERIES, started, &layer, target.fake.as_ref())
}
