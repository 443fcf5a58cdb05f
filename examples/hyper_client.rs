//! hyper-util's legacy client under `PropelAuthLayer`, and the same client
//! (one connection pool) for the token requests: `cargo run --example hyper_client`.
//!
//! With no `PROPEL_CLIENT_ID` / `PROPEL_CLIENT_SECRET` in the environment it
//! runs against `FakePropel` on loopback over plain HTTP. With both set it
//! queries real Propel over HTTPS (hyper-rustls) with `SELECT 1`;
//! `PROPEL_API_URL` and `PROPEL_OAUTH_URL` are honoured.

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

/// Concurrent queries: they share one token request.
const QUERIES: usize = 5;

#[tokio::main]
async fn main() -> ExitCode {
    support::exit_code(run().await)
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

    let body = Bytes::from(support::sql_body(target.sql));
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
        let rows = support::rows(&json);
        println!("  query {}: {status}, rows {rows}", n + 1);
        ok += usize::from(status == StatusCode::OK);
    }

    // Every query OK, and all of them on one token request.
    support::check_shared_token(ok, QUERIES, started, &layer, target.fake.as_ref())
}
