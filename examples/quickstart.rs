//! The first thing to run: `cargo run --example quickstart`.
//!
//! Without `PROPEL_CLIENT_ID` / `PROPEL_CLIENT_SECRET` it starts FakePropel, a
//! Propel-compatible server on loopback, so no account is needed. With both
//! set it queries your account (honouring `PROPEL_OAUTH_URL` and
//! `PROPEL_API_URL`). Either way it sends `SELECT 1`, which FakePropel
//! answers as Propel would. Through the recommended stack,
//! `retry(TransientErrors) → timeout → PropelAuthLayer → reqwest::Client`:
//!
//! 1. Basic credentials: the Application ID and secret on every request;
//! 2. client credentials: many concurrent queries share one token request;
//! 3. a 403 as a typed error naming the scope to add (FakePropel only: it
//!    needs an Application that lacks a scope);
//! 4. a summary.
//!
//! More: `revoked_token` (what a 401 does), `service_builder` (a production
//! stack), and the other examples in this folder.

mod support;

use std::time::{Duration, Instant};

use support::{ms, Target};
use tower::retry::Retry;
use tower::timeout::Timeout;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::{Error, PropelAuth, PropelAuthLayer};

/// The recommended stack over reqwest. Its errors are boxed: downcast them
/// to [`tower_propel_auth::Error`].
type Client = Retry<TransientErrors, Timeout<PropelAuth<reqwest::Client>>>;

fn client(auth: &PropelAuthLayer) -> Client {
    ServiceBuilder::new()
        .retry(TransientErrors::new(3))
        // Outside the auth layer, so it also bounds the wait for a token.
        .timeout(Duration::from_secs(10))
        .layer(auth.clone())
        .service(reqwest::Client::new())
}

/// Sends one `sqlV1` query; its latency and the rows, or why it failed.
async fn query(client: Client, target: &Target) -> (Duration, Result<String, BoxError>) {
    let started = Instant::now();
    let result = async {
        let response = client.oneshot(target.reqwest_request(target.sql)).await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)).into());
        }
        Ok(support::rows(&body).to_string())
    }
    .await;
    (started.elapsed(), result)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    support::exit_code(run().await)
}

async fn run() -> Result<(), BoxError> {
    let target = Target::new().await?;
    let (mut layers, mut latencies) = (Vec::new(), Vec::new());

    println!("\n1. Basic credentials: the Application ID and secret on every request");
    let basic = target.basic()?;
    let (took, rows) = query(client(&basic), &target).await;
    println!("   {} → rows {} in {}", target.sql, rows?, ms(took));
    layers.push(basic);
    latencies.push(took);

    // A few against your account: enough to show one token request.
    let n = if target.fake.is_some() { 100 } else { 10 };
    println!("\n2. Client credentials: {n} concurrent queries on an empty token cache");
    if let Some(fake) = &target.fake {
        // Propel's Token API is a network round trip away; so is the fake's
        // now, and the queries really overlap the token request.
        fake.set_token_latency(Duration::from_millis(100));
    }
    let auth = target.client_credentials().build()?; // no I/O yet
    let stack = client(&auth);
    let started = Instant::now();
    let results =
        futures_util::future::join_all((0..n).map(|_| query(stack.clone(), &target))).await;
    let elapsed = started.elapsed();
    for (took, result) in results {
        result?;
        latencies.push(took);
    }
    let stats = auth.stats();
    println!("   {n} OK in {}", ms(elapsed));
    println!(
        "   token requests:   {} (one, shared by all)",
        stats.token_requests
    );
    println!("   waited for it:    {} queries", stats.waited_for_token);
    if stats.token_requests != 1 {
        return Err("expected one token request for all the queries".into());
    }
    layers.push(auth);

    println!("\n3. A 403: an Application without the data_pool:query scope");
    match target.fake_application("APP01NOQUERY", &["metric:query"]) {
        None => {
            println!("   skipped: against your account it needs an Application that lacks a scope")
        }
        Some(limited) => {
            let layer = limited.basic()?;
            let (took, result) = query(client(&layer), &limited).await;
            latencies.push(took);
            layers.push(layer);
            let err = result.err().ok_or("expected a 403")?;
            // The stack boxes errors; the crate's own is one downcast away.
            let Some(Error::Forbidden(forbidden)) = err.downcast_ref::<Error>() else {
                return Err(err);
            };
            let scope = forbidden
                .missing_scope()
                .ok_or("expected a missing scope")?;
            println!(
                "   error:         Error::Forbidden, not retried ({})",
                ms(took)
            );
            println!("   scope to add:  {scope} (missing_scope(): type it this way in the Propel");
            println!("                  Console and in token requests; Propel's message spells it data-pool:query)");
            println!("   Propel said:   {}", forbidden.message());
            println!("   hint():        {}", forbidden.hint());
        }
    }

    println!("\n4. Summary");
    let stats = layers.iter().map(PropelAuthLayer::stats);
    let (token_requests, waited) = stats.fold((0, 0), |(t, w), s| {
        (t + s.token_requests, w + s.waited_for_token)
    });
    latencies.sort();
    println!("   requests:            {}", latencies.len());
    print!("   token requests:      {token_requests}");
    match &target.fake {
        Some(fake) => println!(" (FakePropel counted {})", fake.stats().token_requests),
        None => println!(),
    }
    println!("   waited for a token:  {waited} (no valid token was cached yet)");
    println!(
        "   latency:             p50 {}, p99 {}, max {}",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() * 99 / 100]),
        ms(latencies[latencies.len() - 1])
    );
    Ok(())
}
