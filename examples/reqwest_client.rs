//! `reqwest::Client` as the tower service under `PropelAuthLayer`, with no
//! other layer, and the same client for token requests:
//! `cargo run --example reqwest_client`.
//!
//! `reqwest::Client` is a `tower::Service<reqwest::Request>`; wrapped, its
//! errors are `tower_propel_auth::Error`, with no boxing to undo. With no
//! retry layer outside, `.retry_unauthorized(true)` lets the layer itself
//! send a request once more after a 401 (see `revoked_token`).
//!
//! reqwest keeps a request's extensions private, so every request through
//! one layer gets the layer's token parameters; for a token per tenant, build
//! a layer per tenant (`.params(TokenParams::tenant(…))`) or send
//! `http::Request`s (`hyper_client`). Runs against FakePropel, or your account
//! when `PROPEL_CLIENT_ID` and `PROPEL_CLIENT_SECRET` are set.

mod support;

use std::time::Duration;

use support::Target;
use tower::{BoxError, Layer, ServiceExt};
use tower_propel_auth::Error;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    support::exit_code(run().await)
}

async fn run() -> Result<(), BoxError> {
    let target = Target::new().await?;

    // One client, one connection pool, for queries and token requests. It
    // must not follow redirects: a token request carries the secret.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    let auth = target
        .client_credentials()
        .http_client(http.clone().into())
        .retry_unauthorized(true)
        .build()?;
    let client = auth.layer(http);

    for n in 1..=3 {
        let request = target.reqwest_request(target.sql);
        let response = match client.clone().oneshot(request).await {
            Ok(response) => response,
            // The crate's errors say what happened and, behind hint(), what
            // to do about it.
            Err(Error::Forbidden(forbidden)) => {
                let scope = forbidden.missing_scope();
                println!(
                    "query {n}: 403, missing scope {scope:?}: {}",
                    forbidden.hint()
                );
                return Err(forbidden.into());
            }
            Err(Error::Token(err)) if !err.is_transient() => {
                println!("query {n}: no token ({:?}): {}", err.kind(), err.hint());
                return Err(err.into());
            }
            // Transport errors of reqwest come through as `Error::Service`.
            Err(err) => return Err(err.into()),
        };
        let status = response.status();
        let rows = support::rows(&response.bytes().await?);
        println!("query {n}: {status}, rows {rows}");
    }

    let stats = auth.stats();
    println!(
        "token requests: {} (through the same reqwest client)",
        stats.token_requests
    );
    if stats.token_requests != 1 {
        return Err("expected one token request for all the queries".into());
    }
    Ok(())
}
