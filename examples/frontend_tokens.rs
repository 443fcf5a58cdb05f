//! Multi-tenant tokens for front ends: `cargo run --example frontend_tokens`.
//!
//! - The back end holds the Application's credentials and serves
//!   `GET /token?tenant=acme` (a small hyper server on loopback): a token
//!   minted with the policy values `{"tenant_id":"acme"}`, from the same
//!   cache its own requests use (`PropelAuthLayer::access_token`).
//! - A front end (here, a reqwest client in the same process) fetches a
//!   token for its tenant, wraps it in `PropelAuthLayer::bearer`, and queries
//!   Propel with it directly. It never sees the Application's secret.
//!
//! With no `PROPEL_CLIENT_ID` / `PROPEL_CLIENT_SECRET` in the environment it
//! runs against `FakePropel` with an Application whose queries need a
//! `tenant_id` (a Data Pool Access Policy), and prints the tenant FakePropel
//! saw in each token. With both set the back end mints tokens from real
//! Propel and the front ends query it with `SELECT 1`; `PROPEL_API_URL` and
//! `PROPEL_OAUTH_URL` are honoured.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use reqwest::Url;
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use serde_json::{json, Value};
use support::Target;
use tower::{BoxError, Layer, ServiceExt};
use tower_propel_auth::{AccessToken, Credentials, PropelAuthLayer, TokenParams};

/// The front ends, one per tenant; acme twice, to show the back end's cache.
const TENANTS: &[&str] = &["acme", "globex", "acme"];

#[tokio::main]
async fn main() -> ExitCode {
    support::exit_code(run().await)
}

async fn run() -> Result<(), BoxError> {
    // The back end's Application, when FakePropel stands in for Propel: one
    // without `admin`, whose queries need a tenant_id in the token, as a Data
    // Pool Access Policy with `${{ tenant_id }}` would.
    let target = Target::with_fake_app(|fake| {
        fake.add_application(
            "APP01FRONTEND",
            "frontend-app-secret",
            &["data_pool:query", "metric:query"],
        );
        fake.require_tenant_policy(true);
        Credentials::new("APP01FRONTEND", "frontend-app-secret")
    })
    .await?;
    let api_url = target.url()?;

    // The back end: one layer, one token cache, one entry per tenant.
    let back_end = target.builder.build()?;
    let addr = serve_tokens(back_end.clone()).await?;
    println!("Back end serving GET http://{addr}/token?tenant=…\n");

    let mut mismatches = 0;
    for tenant in TENANTS {
        let seen = front_end(addr, tenant, &api_url, target.sql).await?;
        if target.fake.is_some() && seen != *tenant {
            mismatches += 1;
        }
    }

    let stats = back_end.stats();
    println!(
        "\nBack end: {} token request(s) for {} front ends ({} tenants cached)",
        stats.token_requests,
        TENANTS.len(),
        stats.token_sets
    );
    if target.fake.is_some() && (mismatches > 0 || stats.token_requests != 2) {
        return Err(
            "expected each front end to see its own tenant, with one token per tenant".into(),
        );
    }
    Ok(())
}

/// Starts the back end's token endpoint on a loopback port.
async fn serve_tokens(layer: PropelAuthLayer) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let layer = layer.clone();
            let service =
                hyper::service::service_fn(move |request| token_endpoint(layer.clone(), request));
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(err) = connection.await {
                    eprintln!("back end: connection error: {err}");
                }
            });
        }
    });
    Ok(addr)
}

/// `GET /token?tenant=acme` →
/// `{"access_token": "eyJ…", "expires_in": 3599, "token_type": "Bearer"}`.
async fn token_endpoint(
    layer: PropelAuthLayer,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET || request.uri().path() != "/token" {
        return Ok(answer(
            StatusCode::NOT_FOUND,
            json!({ "error": "not_found" }),
        ));
    }
    // A real back end takes the tenant from the caller's authenticated
    // session, never from a parameter the caller chooses: the token's policy
    // values decide which rows the front end can read.
    let query: HashMap<String, String> =
        serde_urlencoded::from_str(request.uri().query().unwrap_or_default()).unwrap_or_default();
    let Some(tenant) = query.get("tenant").filter(|tenant| is_tenant_id(tenant)) else {
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            json!({ "error": "invalid_request", "error_description": "a tenant is required" }),
        ));
    };
    // The cached token for this tenant, or one fetched through the single
    // flight: a thousand front ends of one tenant cost one token request.
    match layer.access_token(Some(&TokenParams::tenant(tenant))).await {
        Ok(token) => Ok(answer(
            StatusCode::OK,
            json!({
                "access_token": token.secret().expose_secret(),
                "expires_in": token.expires_in().as_secs(),
                "token_type": "Bearer",
            }),
        )),
        // The error says what went wrong and holds no secret.
        Err(err) => Ok(answer(
            StatusCode::BAD_GATEWAY,
            json!({ "error": "token_unavailable", "error_description": err.to_string() }),
        )),
    }
}

fn is_tenant_id(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, "application/json".parse().expect("a header"));
    // A token must not be cached by anything between here and the front end.
    headers.insert(CACHE_CONTROL, "no-store".parse().expect("a header"));
    response
}

/// What the back end answers.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

/// A front end of `tenant`: gets a token from the back end, then queries
/// Propel with it. Returns the tenant Propel saw (FakePropel says; real
/// Propel does not, and gives `null`).
async fn front_end(
    back_end: SocketAddr,
    tenant: &str,
    api_url: &Url,
    sql: &str,
) -> Result<Value, BoxError> {
    let http = reqwest::Client::new();
    let token_url = format!("http://{back_end}/token?tenant={tenant}");
    let response = http.get(&token_url).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if status != StatusCode::OK {
        return Err(format!(
            "the back end answered {status}: {}",
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    let TokenAnswer {
        access_token,
        expires_in,
    } = serde_json::from_slice(&body)?;
    // Never print a token; its length says enough.
    let length = access_token.len();
    // The expiry comes from the JWT's own `exp` claim.
    let token = AccessToken::from_jwt(access_token)?;
    let propel = PropelAuthLayer::bearer(token)
        .with_api_url(api_url.as_str())?
        .layer(http);

    let response = propel.oneshot(support::sql_request(api_url, sql)).await?;
    let status = response.status();
    let json: Value = serde_json::from_slice(&response.bytes().await?).unwrap_or_default();
    let rows = support::rows(&json);
    let seen = json
        .pointer("/extensions/policyValues/tenant_id")
        .cloned()
        .unwrap_or_default();
    println!("front end of {tenant}: a token of {length} chars, expiring in {expires_in} s");
    println!("  query → {status}, rows {rows}; Propel saw tenant_id {seen}");
    Ok(seen)
}
