//! Boilerplate shared by the examples (each says `mod support;`): the choice
//! between FakePropel and real Propel, the `sqlV1` request body, and how an
//! error is printed. Cargo builds no example from this folder: it has no
//! `main.rs`.

// Each example uses only part of this module.
#![allow(dead_code)]

use std::process::ExitCode;
use std::time::Instant;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Method, Url};
use tower::BoxError;
use tower_propel_auth::{
    config, Credentials, FakePropel, PropelAuthLayer, TokenLayerBuilder, CLIENT_ID_VAR,
    CLIENT_SECRET_VAR,
};

/// An example's exit code: success, or the error and its causes on stderr.
pub fn exit_code(result: Result<(), BoxError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once (a cause's text may
/// already be part of its parent's).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Whether to use a real Propel account: either variable means "use my
/// account"; `config::from_env` then names the one missing.
pub fn real_propel_requested() -> bool {
    let set = |var| std::env::var_os(var).is_some_and(|value| !value.is_empty());
    set(CLIENT_ID_VAR) || set(CLIENT_SECRET_VAR)
}

/// Where the queries go, and the builder of a client-credentials layer for it.
pub struct Target {
    pub builder: TokenLayerBuilder,
    /// Propel's GraphQL endpoint.
    pub api_url: String,
    /// A query that suits the target.
    pub sql: &'static str,
    /// `Some` when running against the fake (kept alive while it is used).
    pub fake: Option<FakePropel>,
}

impl Target {
    /// Real Propel when [`real_propel_requested`], else FakePropel with its
    /// default Application.
    pub async fn new() -> Result<Self, BoxError> {
        Self::with_fake_app(|fake| {
            Credentials::new(fake.application_id(), fake.application_secret())
        })
        .await
    }

    /// Like [`Target::new`], with `app` setting up the fake (when there is
    /// one) and naming the Application whose credentials the layer uses.
    pub async fn with_fake_app<E: Into<BoxError>>(
        app: impl FnOnce(&FakePropel) -> Result<Credentials, E>,
    ) -> Result<Self, BoxError> {
        if real_propel_requested() {
            // Reads PROPEL_CLIENT_ID, PROPEL_CLIENT_SECRET, PROPEL_OAUTH_URL, PROPEL_API_URL.
            let config = config::from_env()?;
            println!("Real Propel at {}", config.api_url());
            return Ok(Self {
                builder: config.client_credentials(),
                api_url: config.api_url().to_owned(),
                sql: "SELECT 1",
                fake: None,
            });
        }
        let fake = FakePropel::start().await;
        println!(
            "FakePropel at {} (set {CLIENT_ID_VAR} and {CLIENT_SECRET_VAR} for real Propel)",
            fake.origin()
        );
        let credentials = app(&fake).map_err(Into::into)?;
        Ok(Self {
            builder: PropelAuthLayer::client_credentials(credentials)
                .token_url(fake.token_url())
                .api_url(fake.api_url()),
            api_url: fake.api_url(),
            sql: "SELECT tenant, count() AS n FROM events GROUP BY tenant",
            fake: Some(fake),
        })
    }

    /// [`Target::api_url`] for reqwest.
    pub fn url(&self) -> Result<Url, BoxError> {
        Ok(self.api_url.parse()?)
    }
}

/// The JSON body `{"query": "query { sqlV1(input: {query: …}) { columns {
/// columnName } rows } }"}`. A JSON string literal is also a valid GraphQL
/// one, so serde_json quotes and escapes the SQL.
pub fn sql_body(sql: &str) -> String {
    let graphql = format!(
        "query {{ sqlV1(input: {{ query: {} }}) {{ columns {{ columnName }} rows }} }}",
        serde_json::Value::from(sql)
    );
    serde_json::json!({ "query": graphql }).to_string()
}

/// `POST` [`sql_body`] as a reqwest request. The body is in memory, so after
/// a 401 the layer can send it again (`reqwest::Request::try_clone`).
pub fn sql_request(api_url: &Url, sql: &str) -> reqwest::Request {
    let mut request = reqwest::Request::new(Method::POST, api_url.clone());
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    *request.body_mut() = Some(sql_body(sql).into());
    request
}

/// The `rows` of a `sqlV1` answer, `null` if there are none.
pub fn rows(json: &serde_json::Value) -> serde_json::Value {
    json.pointer("/data/sqlV1/rows")
        .cloned()
        .unwrap_or_default()
}

/// After `queries` concurrent queries, begun at `started`, of which `ok`
/// were answered 200: prints what `layer` (and the fake) counted, and fails
/// unless every query succeeded and all of them shared one token request.
pub fn check_shared_token(
    ok: usize,
    queries: usize,
    started: Instant,
    layer: &PropelAuthLayer,
    fake: Option<&FakePropel>,
) -> Result<(), BoxError> {
    let stats = layer.stats();
    println!(
        "{ok} of {queries} OK in {:.1} ms; token requests: {} (waited for it: {})",
        started.elapsed().as_secs_f64() * 1e3,
        stats.token_requests,
        stats.waited_for_token
    );
    if let Some(fake) = fake {
        println!(
            "FakePropel saw {} token request(s) and {} Bearer-authenticated queries",
            fake.stats().token_requests,
            fake.stats().api_bearer
        );
    }
    if ok != queries || stats.token_requests != 1 {
        return Err("expected every query to succeed with one shared token request".into());
    }
    Ok(())
}
