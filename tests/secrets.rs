//! Secrets stay secret (DESIGN section 4, behaviour 9): across a full flow
//! over real TCP (success, Token API 400 for a wrong secret, API 401, API
//! 403, Token API 500, a Token API timeout, a refused connection, Basic
//! credentials), neither the Application secret nor any token appears in the
//! `tracing` output at TRACE level, nor in the `Debug` or `Display` of any
//! public type or error involved, even when the servers echo them back; and
//! the `Authorization` header is marked sensitive on every request the inner
//! service receives.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use secrecy::ExposeSecret;
use tower::{Layer, Service, ServiceExt};
use tower_propel_auth::testing::{ApiFault, TokenFault};
use tower_propel_auth::{
    AccessToken, Credentials, Error, FakePropel, PropelAuthLayer, Scope, TokenParams,
};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

use support::{
    closed_port, graphql, hyper_client, settings, token_layer_with, HyperClient, Logs,
    DATA_POOL_QUERY,
};

const APPLICATION: &str = "APP01SENTINELAPPLICATION";
const SECRET: &str = "SENTINEL-SECRET-8c1f4e2a9b7d6c5e3f1a0b9c8d7e6f5a";
const WRONG_SECRET: &str = "SENTINEL-WRONG-SECRET-5d2e7f1c9a3b8e4d6f0a";

/// The `Authorization` header of every request the inner service received.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<HeaderValue>>>);

impl Seen {
    fn headers(&self) -> Vec<HeaderValue> {
        self.0.lock().unwrap().clone()
    }
}

/// The hyper client, recording each request's `Authorization` header (the
/// value itself, with its sensitive flag) before sending it on.
fn recording(
    inner: HyperClient,
    seen: &Seen,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = http::Response<hyper::body::Incoming>,
    Error = hyper_util::client::legacy::Error,
    Future = impl std::future::Future + Send,
> + Clone
       + std::fmt::Debug {
    let seen = seen.clone();
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        if let Some(value) = request.headers().get(AUTHORIZATION) {
            seen.0.lock().unwrap().push(value.clone());
        }
        inner.clone().oneshot(request)
    })
}

/// What was shown: `Debug`, `Display` and the source chain of errors.
#[derive(Default)]
struct Shown(Vec<(String, String)>);

impl Shown {
    fn debug(&mut self, what: &str, value: &dyn std::fmt::Debug) {
        self.0.push((what.to_owned(), format!("{value:?}")));
        self.0.push((what.to_owned(), format!("{value:#?}")));
    }

    fn display(&mut self, what: &str, value: &dyn std::fmt::Display) {
        self.0.push((what.to_owned(), value.to_string()));
    }

    fn error(&mut self, what: &str, err: &(dyn std::error::Error + 'static)) {
        self.display(what, err);
        self.debug(what, err);
        let mut source = err.source();
        while let Some(cause) = source {
            self.display(what, cause);
            self.debug(what, cause);
            source = cause.source();
        }
    }
}

/// Sends one query through `service` and returns the error it must end in.
async fn failing<S>(service: &S, fake: &FakePropel) -> Error
where
    S: Service<Request<Full<Bytes>>, Error = Error> + Clone,
{
    match service
        .clone()
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
    {
        Ok(_) => panic!("expected an error"),
        Err(err) => err,
    }
}

fn expose(token: &AccessToken) -> String {
    token.secret().expose_secret().to_owned()
}

/// A body that echoes `token` and the secret back, as a careless server might.
fn echo(token: &str) -> String {
    format!(
        "token {token} (Authorization: Bearer {token}) and client_secret={SECRET} were rejected"
    )
}

#[tokio::test]
async fn no_secret_or_token_shows_in_logs_debug_display_or_errors_and_headers_are_sensitive() {
    let logs = Logs::default();
    // The fake is the test's own tooling and logs the faults it is told to
    // inject (which echo the secret on purpose): leave its own logs out.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("trace,tower_propel_auth::testing=off"))
        .with_span_events(FmtSpan::FULL)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = support::start().await;
    fake.add_application(
        APPLICATION,
        SECRET,
        &["admin", "data_pool:query", "metric:query"],
    );
    let credentials = Credentials::new(APPLICATION, SECRET).unwrap();
    let builder = || {
        token_layer_with(&fake, credentials.clone()).settings(settings(|s| {
            s.fetch_timeout = Duration::from_millis(300);
            s.cooldown = Duration::from_millis(20);
        }))
    };
    let seen = Seen::default();
    let mut shown = Shown::default();
    let mut tokens: Vec<String> = Vec::new();

    shown.debug("Credentials", &credentials);
    shown.debug("TokenLayerBuilder", &builder());
    let params = TokenParams::tenant("acme").with_scopes([Scope::DataPoolQuery]);
    shown.debug("TokenParams", &params);

    // 1. Success.
    let layer = builder().build().unwrap();
    let service = layer.layer(recording(hyper_client(), &seen));
    let mut ready = service.clone();
    let future = ready
        .ready()
        .await
        .unwrap()
        .call(graphql(&fake.api_url(), DATA_POOL_QUERY));
    shown.debug("ResponseFuture", &future);
    assert_eq!(future.await.unwrap().status(), StatusCode::OK);
    let first = layer.access_token(None).await.unwrap();
    tokens.push(expose(&first));
    shown.debug("AccessToken", &first);
    shown.debug("PropelAuthLayer", &layer);
    shown.debug("PropelAuth", &service);
    shown.debug("Stats", &layer.stats());

    // 2. API 401 that echoes the token and the secret: Unauthorized, and the
    //    token is dropped and its successor fetched.
    fake.set_api_fault(Some(ApiFault::Status {
        status: 401,
        body: Bytes::from(echo(first.secret().expose_secret())),
    }));
    let err = failing(&service, &fake).await;
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    shown.error("API 401", &err);
    let second = layer.access_token(None).await.unwrap();
    tokens.push(expose(&second));

    // 3. API 403 that echoes the current token and the secret.
    fake.set_api_fault(Some(ApiFault::Forbidden {
        content_type: Some("application/json".to_owned()),
        body: Bytes::from(
            serde_json::json!({"errors": [{"message": format!(
                "{} lacks the \"admin\" scope",
                echo(second.secret().expose_secret())
            )}]})
            .to_string(),
        ),
    }));
    let err = failing(&service, &fake).await;
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");
    shown.error("API 403", &err);
    fake.set_api_fault(None);
    shown.debug("PropelAuthLayer after errors", &layer);
    shown.debug("Stats after errors", &layer.stats());

    // 4. Token API 400 for a wrong secret.
    let wrong = Credentials::new(APPLICATION, WRONG_SECRET).unwrap();
    shown.debug("wrong Credentials", &wrong);
    let wrong_layer = token_layer_with(&fake, wrong).build().unwrap();
    let err = failing(&wrong_layer.layer(recording(hyper_client(), &seen)), &fake).await;
    assert!(matches!(err, Error::Token(_)), "{err:?}");
    shown.error("Token API 400", &err);
    shown.debug("PropelAuthLayer with a wrong secret", &wrong_layer);

    // 5. Token API 400 and 500 that echo the secret back.
    for status in [400, 500] {
        fake.fail_next_token_requests(
            1,
            TokenFault::Status {
                status,
                retry_after: None,
                body: Some(
                    serde_json::json!({
                        "error": "invalid_client",
                        "error_description": echo("none"),
                    })
                    .to_string(),
                ),
            },
        );
        let layer = builder().build().unwrap();
        let err = failing(&layer.layer(recording(hyper_client(), &seen)), &fake).await;
        let Error::Token(token_error) = &err else {
            panic!("expected a token error, got {err:?}");
        };
        assert_eq!(token_error.status().map(|s| s.as_u16()), Some(status));
        shown.error(&format!("Token API {status}"), &err);
        shown.error(&format!("TokenError {status}"), token_error);
    }

    // 6. Token API timeout.
    fake.set_token_fault(Some(TokenFault::Hang));
    let layer = builder().build().unwrap();
    let err = failing(&layer.layer(recording(hyper_client(), &seen)), &fake).await;
    assert!(err.is_transient(), "{err:?}");
    shown.error("Token API timeout", &err);
    fake.set_token_fault(None);

    // 7. A refused connection to the Token API (reqwest's error as the source).
    let addr = closed_port();
    let layer = builder()
        .token_url(format!("http://{addr}/oauth2/token"))
        .build()
        .unwrap();
    let err = failing(&layer.layer(recording(hyper_client(), &seen)), &fake).await;
    shown.error("Token API refused", &err);

    // 8. Basic credentials: a success, then a 401 that echoes the header.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{APPLICATION}:{SECRET}"));
    let basic_layer = PropelAuthLayer::basic(credentials.clone())
        .with_allowed_origins([fake.api_url()])
        .unwrap();
    let basic_service = basic_layer.layer(recording(hyper_client(), &seen));
    let response = basic_service
        .clone()
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    fake.set_api_fault(Some(ApiFault::Status {
        status: 401,
        body: Bytes::from(format!(
            "Authorization: Basic {basic} is wrong; {}",
            echo("none")
        )),
    }));
    let err = failing(&basic_service, &fake).await;
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    shown.error("Basic 401", &err);
    shown.debug("Basic PropelAuthLayer", &basic_layer);
    shown.debug("Basic PropelAuth", &basic_service);
    fake.set_api_fault(None);

    // 9. Configuration errors about a secret never show it.
    let bad = Credentials::new(APPLICATION, format!("{SECRET}\n")).unwrap_err();
    shown.error("ConfigError", &bad);

    // 10. Insecure transport.
    let insecure = PropelAuthLayer::basic(credentials.clone())
        .with_allowed_origins(["http://10.0.0.1:8080/graphql"])
        .unwrap();
    let err = insecure
        .layer(recording(hyper_client(), &seen))
        .oneshot(graphql("http://10.0.0.1:8080/graphql", DATA_POOL_QUERY))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InsecureTransport(_)), "{err:?}");
    shown.error("InsecureTransport", &err);

    // Every token that went out, as the inner service saw it, and the flag.
    let headers = seen.headers();
    assert!(
        headers.len() >= 5,
        "{} requests with credentials",
        headers.len()
    );
    for header in &headers {
        assert!(
            header.is_sensitive(),
            "an Authorization header is not sensitive"
        );
        let text = header.to_str().unwrap();
        if let Some(token) = text.strip_prefix("Bearer ") {
            tokens.push(token.to_owned());
        }
    }
    tokens.sort();
    tokens.dedup();
    assert!(
        tokens.len() >= 2,
        "the 401 refreshed the token: {}",
        tokens.len()
    );

    let logs = logs.text();
    assert!(
        logs.contains("fetched a Propel access token"),
        "the logs were captured"
    );
    assert!(
        logs.contains("token request failed"),
        "the logs were captured"
    );
    assert!(
        logs.contains("Propel answered 401"),
        "the logs were captured"
    );

    // What must never show, whole or as its random part.
    let mut hidden: Vec<(String, String)> = vec![
        ("the secret".into(), SECRET.into()),
        (
            "the secret's random part".into(),
            SECRET["SENTINEL-SECRET-".len()..].into(),
        ),
        ("the wrong secret".into(), WRONG_SECRET.into()),
        ("the Basic credentials".into(), basic.clone()),
    ];
    for token in &tokens {
        hidden.push(("a token".into(), token.clone()));
        let signature = token.rsplit('.').next().unwrap().to_owned();
        hidden.push(("a token's signature".into(), signature));
    }
    let mut everything = shown.0;
    everything.push(("the logs".into(), logs));
    for (what, text) in &everything {
        for (name, value) in &hidden {
            assert!(
                !text.contains(value.as_str()),
                "{what} shows {name}: {text}"
            );
        }
    }
}
