//! What a 401 does: `cargo run --example revoked_token`.
//!
//! FakePropel revokes every token it has issued, so the next query carries
//! a dead one and gets a 401. The auth layer drops the rejected token (one
//! refresh however many requests saw the 401) and fails the request with
//! `Error::Unauthorized`, which `is_transient()`: a fresh token may cure it.
//! Who sends the request again?
//!
//! 1. The recommended stack: `retry(TransientErrors)` outside the auth layer
//!    sends the copy it already holds, at once. The auth layer copies nothing
//!    and has no retry of its own.
//! 2. No retry layer: the caller gets the error, and may send it again.
//!
//! FakePropel only (revoking tokens is one of its knobs), whatever the
//! environment says.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use support::Target;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::{Error, PropelAuthLayer};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    support::exit_code(run().await)
}

async fn run() -> Result<(), BoxError> {
    let target = Target::fake().await?;

    println!("\n1. retry(TransientErrors) → timeout → PropelAuthLayer → reqwest");
    let auth = target.client_credentials().build()?;
    let client = ServiceBuilder::new()
        .retry(TransientErrors::new(3))
        .timeout(Duration::from_secs(10))
        .layer(auth.clone())
        .service(reqwest::Client::new());
    let status = revoke_then_query(&target, client, &auth).await?;
    println!("   → {status}: the retry layer sent its copy with the fresh token");

    println!("\n2. PropelAuthLayer → reqwest, no retry layer");
    let auth = target.client_credentials().build()?;
    let client = auth.layer(reqwest::Client::new());
    let err = revoke_then_query(&target, client.clone(), &auth)
        .await
        .err()
        .ok_or("expected a 401")?;
    let Some(Error::Unauthorized(unauthorized)) = err.downcast_ref::<Error>() else {
        return Err(err);
    };
    println!(
        "   → Error::Unauthorized, is_transient() = {}",
        unauthorized.is_transient()
    );
    println!("     hint(): {}", unauthorized.hint());
    let again = client.oneshot(target.reqwest_request(target.sql)).await?;
    println!("   sent again by the caller → {}", again.status());
    Ok(())
}

/// Caches a token with one query, has FakePropel revoke it, queries again
/// and says what it took.
async fn revoke_then_query<S>(
    target: &Target,
    client: S,
    auth: &PropelAuthLayer,
) -> Result<StatusCode, BoxError>
where
    S: Service<reqwest::Request, Response = reqwest::Response> + Clone,
    S::Error: Into<BoxError>,
{
    let fake = target.fake.as_ref().expect("FakePropel");
    let query = || client.clone().oneshot(target.reqwest_request(target.sql));
    query().await.map_err(Into::into)?;
    fake.revoke_all_tokens();
    let (before, fake_before) = (auth.stats(), fake.stats());
    let result = query().await.map_err(Into::into);
    let (after, fake_after) = (auth.stats(), fake.stats());
    println!(
        "   401s from Propel: {}; tokens dropped: {}; token requests: {} → {}",
        fake_after.api_invalid_credentials - fake_before.api_invalid_credentials,
        after.tokens_rejected - before.tokens_rejected,
        before.token_requests,
        after.token_requests,
    );
    Ok(result?.status())
}
