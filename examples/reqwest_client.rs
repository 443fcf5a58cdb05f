//! `reqwest::Client` under `PropelAuthLayer`, a token per tenant through
//! tenant views, and the same client for token requests:
//! `cargo run --example reqwest_client`.
//!
//! `reqwest::Client` is a `tower::Service<reqwest::Request>`; wrapped, its
//! errors are `tower_propel_auth::Error`, and tower's `Retry` keeps them so:
//! no boxing to undo.
//!
//! reqwest keeps a request's extensions private, so a request cannot say
//! which tenant it is for. A tenant view can: `auth.with_params(…)` is a
//! layer that shares `auth`'s token sets, bound, single flights and stats,
//! and gives its requests that tenant's token. Runs against FakePropel, or
//! your account when `PROPEL_CLIENT_ID` and `PROPEL_CLIENT_SECRET` are set.

mod support;

use std::time::Duration;

use support::Target;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::{Error, TokenParams};

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
        .build()?;

    // The layer's own token, then one per tenant through a view of it. The
    // retry resends a request whose token a 401 dropped, with the fresh one.
    let views = [
        ("the layer's own", auth.clone()),
        ("acme", auth.with_params(TokenParams::tenant("acme"))),
        ("globex", auth.with_params(TokenParams::tenant("globex"))),
    ];
    for (tenant, layer) in views {
        let client = ServiceBuilder::new()
            .retry(TransientErrors::new(1))
            .layer(layer)
            .service(http.clone());
        for n in 1..=2 {
            let request = target.reqwest_request(target.sql);
            let response = match client.clone().oneshot(request).await {
                Ok(response) => response,
                // The crate's errors say what happened and, behind hint(),
                // what to do about it.
                Err(Error::Forbidden(forbidden)) => {
                    let scope = forbidden.missing_scope();
                    println!(
                        "{tenant}: 403, missing scope {scope:?}: {}",
                        forbidden.hint()
                    );
                    return Err(forbidden.into());
                }
                Err(Error::Token(err)) if !err.is_transient() => {
                    println!("{tenant}: no token ({:?}): {}", err.kind(), err.hint());
                    return Err(err.into());
                }
                // Transport errors of reqwest come through as `Error::Service`.
                Err(err) => return Err(err.into()),
            };
            let status = response.status();
            let rows = support::rows(&response.bytes().await?);
            println!("{tenant}, query {n}: {status}, rows {rows}");
        }
    }

    let stats = auth.stats();
    println!(
        "token requests: {} for 6 queries, one per token set (through the same reqwest client); \
         tenant token sets held: {}",
        stats.token_requests, stats.token_sets
    );
    if stats.token_requests != 3 {
        return Err("expected one token request per token set".into());
    }
    Ok(())
}
