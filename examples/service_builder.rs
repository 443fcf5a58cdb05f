//! A production client stack, layer by layer: `cargo run --example service_builder`.
//!
//! ```text
//! TraceLayer → retry(TransientErrors) → timeout → PropelAuthLayer
//!            → concurrency limit → hyper-util client
//! ```
//!
//! Against FakePropel, the Token API fails the first two token requests with
//! a 503 and the retry layer gets the query through. Against your account
//! (`PROPEL_CLIENT_ID` and `PROPEL_CLIENT_SECRET` set) nothing is injected.
//! `RUST_LOG` picks the logs (default `tower_http=info,tower_propel_auth=info`).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{ms, Target};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::testing::TokenFault;
use tower_propel_auth::Settings;
use tracing::Level;

#[tokio::main]
async fn main() -> std::process::ExitCode {
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
    let https = HttpsConnectorBuilder::new()
        .with_native_roots()?
        .https_or_http() // plain HTTP gets credentials only on loopback (FakePropel)
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(https);

    // After a token request failed with no token to fall back on, requests
    // fail at once with its error for `cooldown` (default 1 s) instead of
    // asking again. Kept below the retry's first backoff, so that each
    // retry asks once more.
    let mut settings = Settings::default();
    settings.cooldown = Duration::from_millis(200);
    let auth = target.client_credentials().settings(settings).build()?;

    // Outermost first: each layer wraps everything below it.
    let stack = ServiceBuilder::new()
        // One span per call as the caller made it, retries inside it. It sees
        // the request before any credentials are added.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        // Retries what may pass: a Token API outage or rate limit, a failed
        // connection, an attempt that timed out, and (at once) a 401 whose
        // token the auth layer dropped. Never a 403 or a wrong secret. It
        // holds the copy of each request it may send again; the auth layer
        // makes none.
        .retry(TransientErrors::with_backoff(
            4,
            Duration::from_millis(250),
            Duration::from_secs(5),
        )?)
        // A deadline per attempt, outside the auth layer so that it bounds
        // the wait for a token too; inside the retry, so a timed-out attempt
        // is retried.
        .timeout(Duration::from_secs(10))
        // Inside the retry: every attempt carries the token current when it
        // is sent.
        .layer(auth.clone())
        // At most 32 requests in flight to Propel. Below the auth layer, a
        // request waiting for a token holds no slot.
        .concurrency_limit(32)
        .service(client);

    if let Some(fake) = &target.fake {
        let fault = TokenFault::Status {
            status: 503,
            retry_after: None,
            body: None,
        };
        fake.fail_next_token_requests(2, fault);
        println!("FakePropel will answer the next 2 token requests with 503");
    }

    let started = Instant::now();
    let response = stack.oneshot(target.http_request(target.sql)).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let stats = auth.stats();
    println!(
        "query: {status}, rows {} in {}; token requests {} ({} failed, retried by the retry layer)",
        support::rows(&body),
        ms(started.elapsed()),
        stats.token_requests,
        stats.token_failures,
    );
    if target.fake.is_some() && (!status.is_success() || stats.token_requests != 3) {
        return Err("expected two failed token requests, then a token and a 200".into());
    }
    Ok(())
}
