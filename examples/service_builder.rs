//! A production client stack: `cargo run --example service_builder`.
//!
//! ```text
//! TraceLayer → retry(TransientErrors) → concurrency limit → timeout
//!            → PropelAuthLayer → hyper-util client
//! ```
//!
//! With no `PROPEL_CLIENT_ID` / `PROPEL_CLIENT_SECRET` in the environment it
//! runs against `FakePropel`, whose Token API is told to fail the first two
//! token requests with a 503: the first query succeeds on the third attempt.
//! With both set it queries real Propel (over HTTPS) with `SELECT 1`;
//! `PROPEL_API_URL` and `PROPEL_OAUTH_URL` are honoured.
//!
//! `RUST_LOG` picks the logs (default: `tower_http=info,tower_propel_auth=info`).

mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::Target;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::testing::TokenFault;
use tower_propel_auth::Error;
use tracing::Level;

/// Concurrent queries once the first one got through.
const QUERIES: usize = 5;
/// Token API failures injected into FakePropel.
const INJECTED_503S: usize = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| "tower_http=info,tower_propel_auth=info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    support::exit_code(run().await)
}

async fn run() -> Result<(), BoxError> {
    let target = Target::new().await?;
    if target.fake.is_some() {
        // FakePropel serves plain HTTP on loopback.
        let client = Client::builder(TokioExecutor::new()).build_http();
        queries(client, target).await
    } else {
        // The layer refuses to send credentials over plain HTTP except to
        // loopback, so `https_or_http` is safe here.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        queries(Client::builder(TokioExecutor::new()).build(https), target).await
    }
}

async fn queries<C>(client: Client<C, Full<Bytes>>, target: Target) -> Result<(), BoxError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let layer = target
        .builder
        .http_client(client.clone())
        // After a failed token request with no token to fall back on, requests
        // fail fast with its error for this long instead of asking again.
        // Kept below the retry's first backoff, so each retry asks once more.
        .cooldown(Duration::from_millis(200))
        .build()?;

    // Outermost first. Each layer wraps everything below it.
    let stack = ServiceBuilder::new()
        // 1. Tracing, outermost: one span per call as the caller made it
        //    (retries happen inside it), with the final status and latency.
        //    It sees the request before the auth layer adds credentials.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        // 2. Retry transient failures only: a Token API outage or rate limit,
        //    a failed connection, an attempt that timed out. Never a 403, a
        //    401 (the auth layer below already tried a fresh token), or a
        //    Token API 400 (a wrong secret needs a fix, not patience). Jittered
        //    exponential backoff: 250 ms, 500 ms, 1 s … at most 4 retries.
        .retry(TransientErrors::with_backoff(
            4,
            Duration::from_millis(250),
            Duration::from_secs(5),
        )?)
        // 3. At most 32 queries in flight to Propel. Inside the retry, so a
        //    request sleeping through its backoff holds no slot; a request
        //    holds its slot from the moment it is made ready, through any wait
        //    for a token, until its response arrives.
        .concurrency_limit(32)
        // 4. A deadline per attempt. Outside the auth layer, so it bounds the
        //    wait for a token too (a hung Token API cannot hang a query);
        //    inside the retry, so each attempt gets the whole budget and an
        //    attempt that timed out is retried.
        .timeout(Duration::from_secs(10))
        // 5. Credentials, inside the retry, so every attempt carries the token
        //    that is current when it is sent (one refreshed meanwhile, not the
        //    one the first attempt had).
        .layer(layer.clone())
        .service(client);

    if let Some(fake) = &target.fake {
        fake.fail_next_token_requests(
            INJECTED_503S,
            TokenFault::Status {
                status: 503,
                retry_after: None,
                body: None,
            },
        );
        println!("FakePropel will answer the next {INJECTED_503S} token requests with 503");
    }

    let request = || {
        Request::builder()
            .method(Method::POST)
            .uri(&target.api_url)
            .header(CONTENT_TYPE, "application/json")
            // In memory, so both the retry layer and a 401 replay can resend it.
            .body(Full::new(Bytes::from(support::sql_body(target.sql))))
            .expect("a valid request")
    };

    // The first query meets the Token API outage.
    let started = Instant::now();
    let first = stack.clone().oneshot(request()).await;
    let elapsed = started.elapsed();
    let stats = layer.stats();
    match &first {
        Ok(response) => println!(
            "first query: {} after {} token request(s), {} failed, in {:.0} ms",
            response.status(),
            stats.token_requests,
            stats.token_failures,
            elapsed.as_secs_f64() * 1e3
        ),
        Err(err) => println!("first query failed: {}", describe(err)),
    }
    let first = first?;
    if let Some(fake) = &target.fake {
        let seen = fake.stats();
        println!(
            "  FakePropel: {} token requests ({} × 503, {} token issued), {} query",
            seen.token_requests, seen.token_errors, seen.tokens_issued, seen.api_requests
        );
    }

    // Then a few at once, on the cached token.
    let responses =
        futures_util::future::join_all((0..QUERIES).map(|_| stack.clone().oneshot(request())))
            .await;
    let mut ok = usize::from(first.status() == StatusCode::OK);
    for response in responses {
        let response = response.map_err(|err| describe(&err))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let rows = support::rows(&json);
        println!("query: {status}, rows {rows}");
        ok += usize::from(status == StatusCode::OK);
    }

    let stats = layer.stats();
    println!(
        "{ok} of {} queries OK; token requests {} ({} failed, retried by the retry layer)",
        QUERIES + 1,
        stats.token_requests,
        stats.token_failures
    );
    if ok != QUERIES + 1 {
        return Err("expected every query to succeed".into());
    }
    if target.fake.is_some() && stats.token_requests != INJECTED_503S as u64 + 1 {
        return Err("expected the injected 503s to be retried, then one token".into());
    }
    Ok(())
}

/// The stack boxes errors; the crate's are one downcast away.
fn describe(err: &BoxError) -> String {
    match err.downcast_ref::<Error>() {
        Some(Error::Forbidden(forbidden)) => format!("403: {forbidden}"),
        Some(err) if err.is_transient() => format!("transient, retries exhausted: {err}"),
        Some(err) => err.to_string(),
        None if err.is::<tower::timeout::error::Elapsed>() => "timed out".to_owned(),
        None => support::chain(err.as_ref()),
    }
}
