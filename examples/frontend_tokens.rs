//! A back end that hands each front end a token for its own tenant:
//! `cargo run --example frontend_tokens`.
//!
//! - The back end holds the Application's credentials. Its token endpoint
//!   answers with a token minted with the policy values
//!   `{"tenant_id": …}` of the caller's tenant, from the same cache its own
//!   requests use (`PropelAuthLayer::access_token`): a thousand front ends of
//!   one tenant cost one token request.
//! - A front end turns the answer into `PropelAuthLayer::bearer` and queries
//!   Propel directly. It never sees the Application's secret.
//!
//! Against FakePropel the Application's queries need a `tenant_id` (as a Data
//! Pool Access Policy with `${{ tenant_id }}` would), and FakePropel says
//! which tenant it saw. With `PROPEL_CLIENT_ID` and `PROPEL_CLIENT_SECRET`
//! set, the tokens come from your account.

mod support;

use http::{header, Request, Response, StatusCode};
use serde_json::{json, Value};
use support::Target;
use tower::{BoxError, Layer, ServiceExt};
use tower_propel_auth::secrecy::ExposeSecret;
use tower_propel_auth::{AccessToken, PropelAuthLayer, TokenParams};

/// What the back end's authentication put on the request: the caller's
/// tenant. Never take it from a parameter the caller chooses: the token's
/// policy values decide which rows the front end can read.
#[derive(Clone)]
struct Session {
    tenant: String,
}

/// The back end's token endpoint (`GET /token` behind your session
/// authentication, in axum, hyper …):
/// `{"access_token": "eyJ…", "expires_in": 3599, "token_type": "Bearer"}`.
async fn token_endpoint(layer: &PropelAuthLayer, request: Request<()>) -> Response<String> {
    let Some(Session { tenant }) = request.extensions().get::<Session>().cloned() else {
        return reply(StatusCode::UNAUTHORIZED, json!({ "error": "no session" }));
    };
    match layer.access_token(Some(&TokenParams::tenant(tenant))).await {
        Ok(token) => reply(
            StatusCode::OK,
            json!({
                "access_token": token.secret().expose_secret(),
                "expires_in": token.expires_in().as_secs(),
                "token_type": "Bearer",
            }),
        ),
        // One line, with no secret in it.
        Err(err) => reply(StatusCode::BAD_GATEWAY, json!({ "error": err.to_string() })),
    }
}

fn reply(status: StatusCode, body: Value) -> Response<String> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        // Nothing between here and the front end may keep a token.
        .header(header::CACHE_CONTROL, "no-store")
        .body(body.to_string())
        .expect("a valid response")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    support::exit_code(run().await)
}

async fn run() -> Result<(), BoxError> {
    let target = Target::new().await?;
    // On FakePropel: an Application without `admin`, whose queries need a tenant.
    let limited = target.fake_application("APP01FRONTEND", &["data_pool:query", "metric:query"]);
    let target = limited.unwrap_or(target);
    if let Some(fake) = &target.fake {
        fake.require_tenant_policy(true);
    }

    let back_end = target.client_credentials().build()?;

    for tenant in ["acme", "globex", "acme"] {
        // The front end asks its back end for a token…
        let mut request = Request::new(());
        request.extensions_mut().insert(Session {
            tenant: tenant.into(),
        });
        let answer = token_endpoint(&back_end, request).await;
        let json: Value = serde_json::from_str(answer.body())?;
        let token = json["access_token"].as_str().ok_or(answer.body().clone())?;

        // …and queries Propel with it. Its expiry comes from the JWT's `exp`.
        let bearer = PropelAuthLayer::bearer(AccessToken::from_jwt(token)?)
            .with_allowed_origins([&target.api_url])?;
        let client = bearer.layer(reqwest::Client::new());
        let response = client.oneshot(target.reqwest_request(target.sql)).await?;
        let status = response.status();
        let json: Value = serde_json::from_slice(&response.bytes().await?)?;
        // FakePropel reports the policy values it saw; real Propel does not.
        let seen = &json["extensions"]["policyValues"]["tenant_id"];
        println!("front end of {tenant}: {status}, Propel saw tenant_id {seen}");
        if target.fake.is_some() && seen != tenant {
            return Err(format!("expected tenant {tenant}").into());
        }
    }

    let stats = back_end.stats();
    println!(
        "back end: {} token requests for 3 front ends ({} tenants cached)",
        stats.token_requests, stats.token_sets
    );
    Ok(())
}
