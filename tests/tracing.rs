//! What the crate logs: one token-request span per token request (not per
//! waiter), the missing scope on a 403, one event per 401 refresh, and never
//! a secret or a token.
//!
//! Each test captures every span and event on its own thread with
//! `set_default`, so the runtime is tokio's current-thread one (the default
//! of `#[tokio::test]`): the token fetch task, the fake's server tasks and
//! the clients' connection tasks all run, and log, on the test's thread.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::future::join_all;
use http::StatusCode;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::{Credentials, Error};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

use support::{
    basic_layer, basic_layer_with, expect_err, graphql, hyper_client, metric_only_application,
    prime, recording, start, token_layer, token_layer_with, Recorded, DATA_POOL_QUERY,
};

/// The name of the span around each token request (see `src/token/cache.rs`).
const TOKEN_REQUEST_SPAN: &str = "propel.token_request";

/// A span as it was opened.
#[derive(Debug, Clone)]
struct SpanSeen {
    name: &'static str,
    target: String,
    fields: String,
}

/// An event, with the name of the span it happened in.
#[derive(Debug, Clone)]
struct EventSeen {
    target: String,
    level: tracing::Level,
    span: Option<&'static str>,
    message: String,
    fields: String,
}

#[derive(Debug, Default)]
struct Seen {
    spans: Vec<SpanSeen>,
    events: Vec<EventSeen>,
    /// Values recorded into spans after they opened.
    recorded: Vec<String>,
}

/// A `tracing_subscriber` layer that keeps everything, at every level.
#[derive(Debug, Clone, Default)]
struct Capture(Arc<Mutex<Seen>>);

impl Capture {
    /// Captures on this thread until the guard is dropped.
    fn start() -> (Capture, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    fn token_request_spans(&self) -> usize {
        let seen = self.0.lock().unwrap();
        seen.spans
            .iter()
            .filter(|span| span.name == TOKEN_REQUEST_SPAN)
            .count()
    }

    /// The crate's own events (the fake's, under `testing`, left out).
    fn crate_events(&self) -> Vec<EventSeen> {
        let seen = self.0.lock().unwrap();
        seen.events
            .iter()
            .filter(|event| {
                event.target.starts_with("tower_propel_auth")
                    && !event.target.starts_with("tower_propel_auth::testing")
            })
            .cloned()
            .collect()
    }

    /// Everything captured, as one text: span names and fields, recorded
    /// values, event messages and fields.
    fn all_text(&self) -> String {
        let seen = self.0.lock().unwrap();
        let mut text = String::new();
        for span in &seen.spans {
            text.push_str(&format!("{} {} {}\n", span.target, span.name, span.fields));
        }
        for value in &seen.recorded {
            text.push_str(value);
            text.push('\n');
        }
        for event in &seen.events {
            text.push_str(&format!(
                "{} {:?} {} {}\n",
                event.target, event.span, event.message, event.fields
            ));
        }
        text
    }
}

/// Fields as `name=value`, the message apart.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.others.push(format!("{}={value}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.others.push(format!("{}={value:?}", field.name()));
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        self.0.lock().unwrap().spans.push(SpanSeen {
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            fields: fields.others.join(" "),
        });
    }

    fn on_record(&self, _id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .recorded
            .push(fields.others.join(" "));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let span = ctx.event_span(event).map(|span| span.name());
        self.0.lock().unwrap().events.push(EventSeen {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            span,
            message: fields.message,
            fields: fields.others.join(" "),
        });
    }
}

#[tokio::test]
async fn a_thousand_concurrent_requests_on_an_empty_cache_open_one_token_request_span() {
    let (capture, _guard) = Capture::start();
    let fake = start().await;
    // The token takes a while, so that every request arrives before it does.
    fake.set_token_latency(Duration::from_millis(500));
    let layer = token_layer(&fake).build().unwrap();
    // The buffer lets all 1,000 through the auth layer at once (they all meet
    // the empty cache); the limit keeps the sockets below the open-file limit.
    let client = ServiceBuilder::new()
        .layer(layer.clone())
        .buffer(1_000)
        .concurrency_limit(50)
        .service(hyper_client());

    let responses = join_all((0..1_000).map(|_| {
        client
            .clone()
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
    }))
    .await;
    for response in responses {
        assert_eq!(response.expect("a response").status(), StatusCode::OK);
    }

    assert_eq!(
        layer.stats().waited_for_token,
        1_000,
        "all met the empty cache"
    );
    assert_eq!(capture.token_request_spans(), 1);
    let fetched: Vec<_> = capture
        .crate_events()
        .into_iter()
        .filter(|event| event.message.contains("fetched a Propel access token"))
        .collect();
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert_eq!(fetched[0].span, Some(TOKEN_REQUEST_SPAN));
    assert_eq!(fake.stats().token_requests, 1);
}

#[tokio::test]
async fn the_403_event_names_the_missing_scope() {
    let (capture, _guard) = Capture::start();
    let fake = start().await;
    let credentials = metric_only_application(&fake);
    let service = token_layer_with(&fake, credentials)
        .build()
        .unwrap()
        .layer(hyper_client());

    let err = expect_err(
        service
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await,
    );
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");

    let forbidden: Vec<_> = capture
        .crate_events()
        .into_iter()
        .filter(|event| event.message.contains("403"))
        .collect();
    assert_eq!(forbidden.len(), 1, "{forbidden:?}");
    assert!(
        forbidden[0].fields.contains("scope=Some(DataPoolQuery)"),
        "{forbidden:?}"
    );
}

/// Events about 401s at `info` or above (a 401 that a retry cures is
/// logged per request at `debug` only).
fn logged_401s(events: &[EventSeen]) -> Vec<EventSeen> {
    events
        .iter()
        .filter(|event| event.message.contains("401") && event.level <= tracing::Level::INFO)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_401_cured_by_the_retry_layer_emits_one_event() {
    let (capture, _guard) = Capture::start();
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    prime(&fake, &layer).await;
    fake.revoke_all_tokens();
    let before = capture.crate_events().len();

    let response = ServiceBuilder::new()
        .retry(TransientErrors::new(1))
        .layer(layer.clone())
        .service(hyper_client())
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .expect("retried with a fresh token");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(layer.stats().tokens_rejected, 1);

    let about_401 = logged_401s(&capture.crate_events()[before..]);
    assert_eq!(about_401.len(), 1, "{about_401:?}");
    assert_eq!(
        capture.token_request_spans(),
        2,
        "the first token and its replacement"
    );
}

#[tokio::test]
async fn twenty_concurrent_401s_emit_one_event() {
    let (capture, _guard) = Capture::start();
    let fake = start().await;
    let layer = token_layer(&fake).build().unwrap();
    prime(&fake, &layer).await;
    fake.revoke_all_tokens();
    let before = capture.crate_events().len();

    let service = ServiceBuilder::new()
        .retry(TransientErrors::new(1))
        .layer(layer.clone())
        .service(hyper_client());
    let responses = join_all((0..20).map(|_| {
        service
            .clone()
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
    }))
    .await;
    for response in responses {
        assert_eq!(response.expect("retried").status(), StatusCode::OK);
    }
    assert_eq!(layer.stats().unauthorized, 20);

    let about_401 = logged_401s(&capture.crate_events()[before..]);
    assert_eq!(
        about_401.len(),
        1,
        "logged once, not per request: {about_401:?}"
    );
    assert_eq!(capture.token_request_spans(), 2);
}

#[tokio::test]
async fn no_span_or_event_shows_the_secret_or_a_token() {
    let (capture, _guard) = Capture::start();
    let fake = start().await;
    let sent = Recorded::default();
    let client = || recording(hyper_client(), &sent);

    // Tokens: fetched, used, rejected (401, a transient `Unauthorized` the
    // retry layer sends again) and replaced.
    let layer = token_layer(&fake).build().unwrap();
    let service = ServiceBuilder::new()
        .retry(TransientErrors::new(1))
        .layer(layer)
        .service(client());
    let ok = service
        .clone()
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .expect("a 200");
    assert_eq!(ok.status(), StatusCode::OK);
    fake.revoke_all_tokens();
    let ok = service
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .expect("a 200 after the 401 retry");
    assert_eq!(ok.status(), StatusCode::OK);

    // A 403 with a token, and one with Basic credentials.
    let metric_only = metric_only_application(&fake);
    let err = expect_err(
        token_layer_with(&fake, metric_only.clone())
            .build()
            .unwrap()
            .layer(client())
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await,
    );
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");
    let err = expect_err(
        basic_layer_with(&fake, metric_only)
            .layer(client())
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await,
    );
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");
    let ok = basic_layer(&fake)
        .layer(client())
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .expect("a 200 with Basic credentials");
    assert_eq!(ok.status(), StatusCode::OK);

    // A wrong secret: a Token API 400, and a 401 with Basic credentials.
    let wrong = Credentials::new(fake.application_id(), "wrong-secret-SENTINEL").unwrap();
    let err = expect_err(
        token_layer_with(&fake, wrong.clone())
            .build()
            .unwrap()
            .layer(client())
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await,
    );
    assert!(matches!(err, Error::Token(_)), "{err:?}");
    let err = expect_err(
        basic_layer_with(&fake, wrong)
            .layer(client())
            .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
            .await,
    );
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");

    // What must not show: the secrets, the Basic credentials, every token sent.
    let basic = |id: &str, secret: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    };
    let mut secrets = vec![
        fake.application_secret().to_owned(),
        "metric-only-secret".to_owned(),
        "wrong-secret-SENTINEL".to_owned(),
        basic(fake.application_id(), fake.application_secret()),
        basic("APP01METRICONLY", "metric-only-secret"),
    ];
    let tokens: Vec<String> = sent
        .all()
        .iter()
        .filter_map(|(headers, _)| headers.get(http::header::AUTHORIZATION))
        .filter_map(|value| {
            value
                .to_str()
                .ok()?
                .strip_prefix("Bearer ")
                .map(str::to_owned)
        })
        .collect();
    assert!(tokens.len() >= 4, "tokens were sent: {}", tokens.len());
    secrets.extend(tokens);

    let text = capture.all_text();
    assert!(
        text.contains(TOKEN_REQUEST_SPAN) && text.contains("403") && text.contains("401"),
        "the capture saw the flows above:\n{text}"
    );
    for secret in &secrets {
        // A JWT's header is the same for every token; look for the whole thing.
        assert!(
            !text.contains(secret.as_str()),
            "a secret or token was logged:\n{text}"
        );
    }
}
