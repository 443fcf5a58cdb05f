//! Set-up shared by the examples (each says `mod support;`): FakePropel or
//! your account, the `sqlV1` request, and how an error is printed. Cargo
//! builds no example from this folder: it has no `main.rs`.

// Each example uses only part of this module.
#![allow(dead_code)]

use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use tower::BoxError;
use tower_propel_auth::config::{self, CLIENT_ID_VAR, CLIENT_SECRET_VAR};
use tower_propel_auth::TokenLayerBuilder;
use tower_propel_auth::{ConfigError, Credentials, Error, FakePropel, PropelAuthLayer};

/// Where the queries go and with which Application.
#[derive(Clone)]
pub struct Target {
    /// `Some` when running against FakePropel (no account needed).
    pub fake: Option<Arc<FakePropel>>,
    /// Propel's GraphQL endpoint.
    pub api_url: String,
    /// A query that suits the target.
    pub sql: &'static str,
    credentials: Credentials,
    token_url: String,
}

impl Target {
    /// Your account when `PROPEL_CLIENT_ID` or `PROPEL_CLIENT_SECRET` is set
    /// (`PROPEL_OAUTH_URL` and `PROPEL_API_URL` are honoured), else a
    /// FakePropel on loopback with its default Application.
    pub async fn new() -> Result<Self, BoxError> {
        let set = |var| std::env::var_os(var).is_some_and(|value| !value.is_empty());
        if set(CLIENT_ID_VAR) || set(CLIENT_SECRET_VAR) {
            // Names the variable that is missing, if one is.
            let config = config::from_env()?;
            println!("Your account, at {}", config.api_url());
            return Ok(Self {
                fake: None,
                api_url: config.api_url().to_owned(),
                sql: "SELECT 1",
                credentials: config.credentials().clone(),
                token_url: config.token_url().to_owned(),
            });
        }
        let target = Self::fake().await?;
        println!("(set {CLIENT_ID_VAR} and {CLIENT_SECRET_VAR} to query your account instead)");
        Ok(target)
    }

    /// A FakePropel on loopback with its default Application, whatever the
    /// environment says.
    pub async fn fake() -> Result<Self, ConfigError> {
        let fake = FakePropel::start().await;
        println!("FakePropel at {}", fake.origin());
        Ok(Self {
            credentials: Credentials::new(fake.application_id(), fake.application_secret())?,
            api_url: fake.api_url(),
            token_url: fake.token_url(),
            // FakePropel runs no SQL, but answers `SELECT <literal>` with
            // that value as Propel would (and any other query with a canned
            // row: the caller's tenant and a fixed count).
            sql: "SELECT 1",
            fake: Some(Arc::new(fake)),
        })
    }

    /// On FakePropel, the same server with a new Application that has only
    /// these scopes; `None` against real Propel.
    pub fn fake_application(&self, id: &str, scopes: &[&str]) -> Option<Target> {
        let fake = self.fake.as_ref()?;
        let secret = format!("secret-of-{id}");
        fake.add_application(id, &secret, scopes);
        Some(Target {
            credentials: Credentials::new(id, secret).expect("valid credentials"),
            ..self.clone()
        })
    }

    /// Basic credentials, sent to the API's origin only (what
    /// `config::from_env()?.basic()` gives).
    pub fn basic(&self) -> Result<PropelAuthLayer, ConfigError> {
        PropelAuthLayer::basic(self.credentials.clone()).with_allowed_origins([&self.api_url])
    }

    /// Tokens from the Token API, sent to the API's origin only (what
    /// `config::from_env()?.client_credentials()` gives).
    pub fn client_credentials(&self) -> TokenLayerBuilder {
        PropelAuthLayer::client_credentials(self.credentials.clone())
            .token_url(self.token_url.clone())
            .allowed_origins([self.api_url.clone()])
    }

    /// `POST` a `sqlV1` query, as a reqwest request. The body is in memory,
    /// so a retry can send it again.
    pub fn reqwest_request(&self, sql: &str) -> reqwest::Request {
        let url = self.api_url.parse().expect("the API URL was checked");
        let mut request = reqwest::Request::new(reqwest::Method::POST, url);
        let json = reqwest::header::HeaderValue::from_static("application/json");
        request
            .headers_mut()
            .insert(reqwest::header::CONTENT_TYPE, json);
        *request.body_mut() = Some(sql_body(sql).into());
        request
    }

    /// The same, as an `http::Request` (hyper-util's client, tower-http).
    pub fn http_request(&self, sql: &str) -> http::Request<Full<Bytes>> {
        http::Request::post(&self.api_url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(sql_body(sql))))
            .expect("the API URL was checked")
    }
}

/// `{"query": "query { sqlV1(input: { query: \"…\" }) { columns { columnName } rows } }"}`.
/// A JSON string literal is also a GraphQL one, so serde_json quotes the SQL.
pub fn sql_body(sql: &str) -> String {
    let graphql = format!(
        "query {{ sqlV1(input: {{ query: {} }}) {{ columns {{ columnName }} rows }} }}",
        serde_json::Value::from(sql)
    );
    serde_json::json!({ "query": graphql }).to_string()
}

/// The `rows` of a `sqlV1` answer, `null` if there are none.
pub fn rows(body: &[u8]) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    json.pointer("/data/sqlV1/rows")
        .cloned()
        .unwrap_or_default()
}

/// An example's exit code: success, or the error, its causes and, for this
/// crate's errors, what to do about it.
pub fn exit_code(result: Result<(), BoxError>) -> ExitCode {
    let Err(err) = result else {
        return ExitCode::SUCCESS;
    };
    eprintln!("error: {}", chain(err.as_ref()));
    if let Some(hint) = err.downcast_ref::<Error>().and_then(Error::hint) {
        eprintln!("hint: {hint}");
    }
    ExitCode::FAILURE
}

/// An error and its causes on one line, each said once.
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

/// Milliseconds, for printing.
pub fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
