//! hyper-util's client under `PropelAuthLayer`, and the same client (one
//! connection pool) for the token requests: `cargo run --example hyper_client`.
//!
//! Requests are `http::Request`s, so each can carry its own `TokenParams` in
//! its extensions (a token per tenant: see the README). Runs against
//! FakePropel, or your account when `PROPEL_CLIENT_ID` and
//! `PROPEL_CLIENT_SECRET` are set.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{ms, Target};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::TokenHttpClient;

/// Concurrent queries: they share one token request.
const QUERIES: usize = 5;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    support::exit_code(run().await)
}

async fn run() -> Result<(), BoxError> {
    let target = Target::new().await?;

    // HTTPS with the system's root certificates. Plain HTTP is allowed too,
    // for FakePropel on loopback: the layer never sends credentials over
    // plain HTTP to any other host.
    let https = HttpsConnectorBuilder::new()
        .with_native_roots()?
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(https);

    // Token requests go through the same client, so the same connection
    // pool. hyper-util's client never follows redirects, as a request that
    // carries the Application secret must not.
    let auth = target
        .client_credentials()
        .http_client(TokenHttpClient::new(client.clone()))
        .build()?;
    let service = ServiceBuilder::new()
        .retry(TransientErrors::new(3))
        .timeout(Duration::from_secs(10))
        .layer(auth.clone())
        .service(client);

    println!("{QUERIES} concurrent queries: {}", target.sql);
    let started = Instant::now();
    let responses = futures_util::future::join_all(
        (0..QUERIES).map(|_| service.clone().oneshot(target.http_request(target.sql))),
    )
    .await;
    for (n, response) in responses.into_iter().enumerate() {
        let response = response?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!("  query {}: {status}, rows {}", n + 1, support::rows(&body));
        if !status.is_success() {
            return Err(format!("query {} failed with {status}", n + 1).into());
        }
    }

    let stats = auth.stats();
    println!(
        "{QUERIES} OK in {}; token requests: {} (through the same hyper client)",
        ms(started.elapsed()),
        stats.token_requests
    );
    if let Some(fake) = &target.fake {
        println!(
            "FakePropel counted {} token request(s)",
            fake.stats().token_requests
        );
    }
    if stats.token_requests != 1 {
        return Err("expected one token request for all the queries".into());
    }
    Ok(())
}
