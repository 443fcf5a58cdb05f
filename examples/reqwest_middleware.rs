//! The same credentials for reqwest-middleware's `ClientWithMiddleware`:
//! `cargo run --example reqwest_middleware --features reqwest-middleware`.
//!
//! Many reqwest users build their client with reqwest-middleware rather than
//! tower. `auth.middleware()` gives them the layer's credentials: the same
//! token caches, single flights and stats, the same origin and HTTPS rules.
//! A request picks its tenant with `.with_extension(TokenParams::tenant(…))`;
//! a 401 whose token was dropped is sent once more inside the middleware;
//! the crate's errors are one call away with `middleware::propel_error`.
//! Runs against FakePropel, or your account when `PROPEL_CLIENT_ID` and
//! `PROPEL_CLIENT_SECRET` are set.

mod support;

use reqwest_middleware::ClientBuilder;
use support::Target;
use tower::BoxError;
use tower_propel_auth::middleware::propel_error;
use tower_propel_auth::{Error, TokenParams};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    support::exit_code(run().await)
}

async fn run() -> Result<(), BoxError> {
    let target = Target::new().await?;
    let auth = target.client_credentials().build()?;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(auth.middleware())
        .build();
    let query = || {
        client
            .post(&target.api_url)
            .header("content-type", "application/json")
            .body(support::sql_body(target.sql))
    };

    // The layer's own token, then one per tenant, from the extensions.
    let response = query().send().await?;
    println!("default token: {}", response.status());
    for tenant in ["acme", "globex", "acme"] {
        let response = query()
            .with_extension(TokenParams::tenant(tenant))
            .send()
            .await?;
        let status = response.status();
        let rows = support::rows(&response.bytes().await?);
        println!("{tenant}: {status}, rows {rows}");
    }
    println!(
        "token requests: {} (the default and one per tenant)",
        auth.stats().token_requests
    );

    // FakePropel only: it revokes every token; the middleware drops the
    // rejected one, fetches the next and sends the request once more.
    if let Some(fake) = &target.fake {
        fake.revoke_all_tokens();
        let response = query().send().await?;
        println!(
            "after revoking every token: {} ({} token dropped, no error seen)",
            response.status(),
            auth.stats().tokens_rejected
        );
    }

    // A typed 403: an Application that may query Metrics but not Data Pools.
    if let Some(metrics_only) = target.fake_application("APP01METRICSONLY", &["metric:query"]) {
        let auth = metrics_only.client_credentials().build()?;
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(auth.middleware())
            .build();
        let err = client
            .post(&metrics_only.api_url)
            .header("content-type", "application/json")
            .body(support::sql_body(metrics_only.sql))
            .send()
            .await
            .err()
            .ok_or("expected a 403")?;
        match propel_error(&err) {
            Some(Error::Forbidden(forbidden)) => {
                println!("403: {forbidden}");
                println!("  missing scope: {:?}", forbidden.missing_scope());
                println!("  hint: {}", forbidden.hint());
            }
            _ => return Err(err.into()),
        }
    }
    Ok(())
}
