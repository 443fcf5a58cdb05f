//! Test support: a [`TokenSource`] that tests script (counted calls, a
//! delay, a queue of results) and an in-memory API behind the layer.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::clock::TestClock;
use super::{AccessToken, Settings, TokenParams, TokenSource};
use crate::error::{TokenError, TokenErrorKind};
use crate::{Error, PropelAuth, PropelAuthLayer};

pub(crate) const API: &str = crate::DEFAULT_API_URL;
pub(crate) const HOUR: Duration = Duration::from_secs(3600);

/// What the next fetch does.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// A token `tokenN` (N = call number) living this long.
    Token(Duration),
    Fail(TokenErrorKind),
    Hang,
    Panic,
}

#[derive(Clone, Debug)]
pub(crate) struct ScriptedSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    calls: AtomicUsize,
    delay: Duration,
    script: Mutex<VecDeque<Step>>,
    /// What to do once the script runs out.
    otherwise: Mutex<Step>,
    call_times: Mutex<Vec<Instant>>,
}

impl ScriptedSource {
    pub(crate) fn new(delay: Duration, otherwise: Step) -> Self {
        Self {
            inner: Arc::new(Inner {
                calls: AtomicUsize::new(0),
                delay,
                script: Mutex::default(),
                otherwise: Mutex::new(otherwise),
                call_times: Mutex::default(),
            }),
        }
    }

    /// Tokens of `lifetime`, after `delay`.
    pub(crate) fn tokens(delay: Duration, lifetime: Duration) -> Self {
        Self::new(delay, Step::Token(lifetime))
    }

    pub(crate) fn then(self, step: Step) -> Self {
        self.inner.script.lock().unwrap().push_back(step);
        self
    }

    pub(crate) fn set_otherwise(&self, step: Step) {
        *self.inner.otherwise.lock().unwrap() = step;
    }

    pub(crate) fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn call_times(&self) -> Vec<Instant> {
        self.inner.call_times.lock().unwrap().clone()
    }
}

impl TokenSource for ScriptedSource {
    fn fetch_token(
        &self,
        params: &TokenParams,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>> {
        let inner = Arc::clone(&self.inner);
        let n = inner.calls.fetch_add(1, Ordering::SeqCst) + 1;
        inner.call_times.lock().unwrap().push(Instant::now());
        let step = inner
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| inner.otherwise.lock().unwrap().clone());
        let tenant = params.policy_values().map(str::to_owned);
        Box::pin(async move {
            tokio::time::sleep(inner.delay).await;
            match step {
                // The token names the parameters it was minted for, so tests
                // can check that no request carries another set's token.
                Step::Token(lifetime) => match &tenant {
                    None => AccessToken::new(format!("token{n}"), lifetime),
                    Some(values) => AccessToken::new(format!("token{n}|{values}"), lifetime),
                },
                Step::Fail(kind) => Err(TokenError::new(kind)),
                Step::Hang => std::future::pending().await,
                Step::Panic => panic!("a token source bug"),
            }
        })
    }
}

/// An inner service that answers 200 with the `Authorization` header it saw
/// as the body, or 401 when that header is in `rejected`.
#[derive(Clone, Default)]
pub(crate) struct Api {
    pub(crate) rejected: Arc<Mutex<HashSet<String>>>,
    pub(crate) calls: Arc<Mutex<usize>>,
    /// How long the API takes to answer (paused time).
    pub(crate) latency: Duration,
}

impl Api {
    /// An API that takes `latency` to answer (paused time).
    pub(crate) fn with_latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }

    pub(crate) fn reject(&self, header: &str) {
        self.rejected.lock().unwrap().insert(header.to_owned());
    }

    pub(crate) fn calls(&self) -> usize {
        *self.calls.lock().unwrap()
    }
}

impl<B: Send + 'static> Service<Request<B>> for Api {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        *self.calls.lock().unwrap() += 1;
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let status = if self.rejected.lock().unwrap().contains(&header) {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        let mut response = Response::new(Full::new(Bytes::from(header)));
        *response.status_mut() = status;
        let latency = self.latency;
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            Ok(response)
        })
    }
}

/// A layer over `source` with the default settings, on a [`TestClock`]
/// that follows tokio's paused time.
pub(crate) fn layer(source: &ScriptedSource) -> PropelAuthLayer {
    layer_with(source, Settings::default()).0
}

/// A layer over `source` with these settings, and its clock.
pub(crate) fn layer_with(
    source: &ScriptedSource,
    settings: Settings,
) -> (PropelAuthLayer, Arc<TestClock>) {
    let clock = TestClock::new();
    let layer = PropelAuthLayer::token_source(source.clone())
        .settings(settings)
        .build_with_clock(clock.clock())
        .unwrap();
    (layer, clock)
}

pub(crate) fn request() -> Request<Full<Bytes>> {
    Request::post(API)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

/// Sends one request and returns the `Authorization` header the API saw.
pub(crate) async fn send<S>(service: &S) -> Result<String, Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Error> + Clone,
{
    let response = service.clone().oneshot(request()).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

/// `service` behind the retry layer the crate recommends: a 401 whose token
/// was dropped is sent once more.
pub(crate) fn retrying<S>(service: S) -> tower::retry::Retry<crate::retry::TransientErrors, S> {
    tower::retry::Retry::new(crate::retry::TransientErrors::new(1), service)
}

/// Sends `n` requests at once, each from a task of its own (all spawned
/// before any is awaited); their results in order.
pub(crate) async fn send_concurrently<S>(service: &S, n: usize) -> Vec<Result<String, Error>>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Error>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { send(&service).await })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// Polls `future` once and says whether it is still pending.
pub(crate) async fn polls_pending<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
    let mut future = Some(future);
    std::future::poll_fn(|cx| std::task::Poll::Ready(future.take().unwrap().poll(cx).is_pending()))
        .await
}

impl PropelAuthLayer {
    /// The layer's default token cache.
    pub(crate) fn default_cache(&self) -> crate::token::cache::TokenCache {
        self.shared.store.default_cache().clone()
    }

    pub(crate) fn layer_over<S>(&self, inner: S) -> PropelAuth<S> {
        tower::Layer::layer(self, inner)
    }
}
