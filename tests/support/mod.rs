//! Helpers shared by the integration tests: a FakePropel, real HTTP clients
//! over loopback, GraphQL requests, layers pointed at the fake, and the
//! Applications and settings several files use.
//!
//! Every test file does `mod support;` and uses only some of these, hence the
//! `#[allow(dead_code)]` on each.

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower::util::Oneshot;
use tower::{Service, ServiceExt};
use tower_propel_auth::{
    Credentials, Error, FakePropel, PropelAuth, PropelAuthLayer, Settings, TokenError,
    TokenLayerBuilder,
};

/// A query that needs `data_pool:query`.
#[allow(dead_code)]
pub const DATA_POOL_QUERY: &str =
    r#"query { sqlV1(input: {query: "SELECT tenant, count() FROM t"}) { rows } }"#;

/// A query that needs `metric:query`.
#[allow(dead_code)]
pub const METRIC_QUERY: &str = r#"query { metricReport(input: {metricName: "revenue"}) { rows } }"#;

/// hyper-util's legacy client over plain HTTP, sending `Full<Bytes>` bodies.
#[allow(dead_code)]
pub type HyperClient = Client<HttpConnector, Full<Bytes>>;

/// Starts a FakePropel on loopback.
#[allow(dead_code)]
pub async fn start() -> FakePropel {
    FakePropel::start().await
}

/// A FakePropel served by a runtime of its own, on a thread of its own: it
/// keeps answering while the test's runtime is not driven at all.
#[allow(dead_code)]
pub struct FakeOnItsOwnRuntime {
    // Dropped first: the server shuts down, then its runtime.
    fake: FakePropel,
    _runtime: tokio::runtime::Runtime,
}

#[allow(dead_code)]
impl FakeOnItsOwnRuntime {
    /// Starts the fake on a new one-worker runtime. Call it outside any runtime.
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-propel")
            .enable_all()
            .build()
            .expect("a runtime for the fake");
        let fake = runtime.block_on(FakePropel::start());
        Self {
            fake,
            _runtime: runtime,
        }
    }
}

impl std::ops::Deref for FakeOnItsOwnRuntime {
    type Target = FakePropel;

    fn deref(&self) -> &FakePropel {
        &self.fake
    }
}

/// A loopback address with nothing listening on it.
#[allow(dead_code)]
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    drop(listener);
    addr
}

/// A fresh hyper-util legacy client.
#[allow(dead_code)]
pub fn hyper_client() -> HyperClient {
    Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>()
}

/// A fresh hyper-util legacy client for any request body type.
#[allow(dead_code)]
pub fn hyper_client_for<B>() -> Client<HttpConnector, B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build_http::<B>()
}

/// The JSON body of a GraphQL request for `query`.
#[allow(dead_code)]
pub fn graphql_body(query: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "query": query }).to_string())
}

/// `POST url` with the JSON body `{"query": query}`.
#[allow(dead_code)]
pub fn graphql(url: &str, query: &str) -> Request<Full<Bytes>> {
    graphql_with(url, Full::new(graphql_body(query)))
}

/// `POST url` with the given body (already holding a GraphQL JSON document).
#[allow(dead_code)]
pub fn graphql_with<B>(url: &str, body: B) -> Request<B> {
    Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("a valid request")
}

/// The same request as [`graphql`], for `reqwest::Client`.
#[allow(dead_code)]
pub fn reqwest_graphql(url: &str, query: &str) -> reqwest::Request {
    let mut request = reqwest::Request::new(reqwest::Method::POST, url.parse().expect("a URL"));
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    *request.body_mut() = Some(graphql_body(query).into());
    request
}

/// The whole body of a response, as JSON.
#[allow(dead_code)]
pub async fn json<B>(response: Response<B>) -> Value
where
    B: Body,
    B::Error: Debug,
{
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a whole body")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("a JSON body")
}

/// The default Application's credentials.
#[allow(dead_code)]
pub fn credentials(fake: &FakePropel) -> Credentials {
    Credentials::new(fake.application_id(), fake.application_secret()).expect("valid credentials")
}

/// A Basic layer for the fake's API.
#[allow(dead_code)]
pub fn basic_layer(fake: &FakePropel) -> PropelAuthLayer {
    basic_layer_with(fake, credentials(fake))
}

/// A Basic layer for the fake's API, with these credentials.
#[allow(dead_code)]
pub fn basic_layer_with(fake: &FakePropel, credentials: Credentials) -> PropelAuthLayer {
    PropelAuthLayer::basic(credentials)
        .with_allowed_origins([fake.api_url()])
        .expect("the fake's API URL is allowed")
}

/// Adds an Application with only `metric:query` to the fake: its tokens may
/// query Metrics but not Data Pools.
#[allow(dead_code)]
pub fn metric_only_application(fake: &FakePropel) -> Credentials {
    fake.add_application("APP01METRICONLY", "metric-only-secret", &["metric:query"]);
    Credentials::new("APP01METRICONLY", "metric-only-secret").expect("valid credentials")
}

/// Adds an Application without `admin` to the fake: with
/// `require_tenant_policy` on, its queries need a token minted with a
/// `tenant_id`.
#[allow(dead_code)]
pub fn tenanted_application(fake: &FakePropel) -> Credentials {
    fake.add_application(
        "APP01TENANTED",
        "tenanted-secret",
        &["data_pool:query", "metric:query"],
    );
    Credentials::new("APP01TENANTED", "tenanted-secret").expect("valid credentials")
}

/// Sends one Data Pool query through a layer over a fresh hyper client:
/// `layer.query(&fake).await`.
#[allow(dead_code)]
pub trait Query {
    /// The query's response (future).
    fn query(&self, fake: &FakePropel) -> Oneshot<PropelAuth<HyperClient>, Request<Full<Bytes>>>;
}

impl Query for PropelAuthLayer {
    fn query(&self, fake: &FakePropel) -> Oneshot<PropelAuth<HyperClient>, Request<Full<Bytes>>> {
        tower::Layer::layer(self, hyper_client()).oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
    }
}

/// A client-credentials builder pointed at the fake (token URL and API URL),
/// with the default Application's credentials.
#[allow(dead_code)]
pub fn token_layer(fake: &FakePropel) -> TokenLayerBuilder {
    token_layer_with(fake, credentials(fake))
}

/// A client-credentials builder pointed at the fake, with these credentials.
#[allow(dead_code)]
pub fn token_layer_with(fake: &FakePropel, credentials: Credentials) -> TokenLayerBuilder {
    PropelAuthLayer::client_credentials(credentials)
        .token_url(fake.token_url())
        .allowed_origins([fake.api_url()])
}

/// The default settings with `edit` applied:
/// `settings(|s| s.cooldown = Duration::ZERO)`.
#[allow(dead_code)]
pub fn settings(edit: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = Settings::default();
    edit(&mut settings);
    settings
}

/// Sends one query through `layer` and checks it succeeds with the first
/// token request: the cache then holds a token.
#[allow(dead_code)]
pub async fn prime(fake: &FakePropel, layer: &PropelAuthLayer) {
    let response = layer.query(fake).await.expect("the first request succeeds");
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(fake.stats().token_requests, 1);
}

/// A safety net: a test of a bound fails instead of hanging when the bound is gone.
#[allow(dead_code)]
pub async fn within_10s<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("the request ended within 10 s")
}

/// The error of a result that must have failed.
#[allow(dead_code)]
#[track_caller]
pub fn expect_err<T>(result: Result<T, Error>) -> Error {
    match result {
        Ok(_) => panic!("expected an error, got a response"),
        Err(err) => err,
    }
}

/// The token error inside `err`.
#[allow(dead_code)]
#[track_caller]
pub fn token_error(err: &Error) -> &TokenError {
    match err {
        Error::Token(token) => token,
        other => panic!("expected Error::Token, got {other:?}"),
    }
}

/// A shared call counter, for `service_fn` wrappers.
#[allow(dead_code)]
#[derive(Debug, Clone, Default)]
pub struct Calls(Arc<AtomicUsize>);

#[allow(dead_code)]
impl Calls {
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a [`recording`] service saw: the headers and body of each request.
#[allow(dead_code)]
#[derive(Debug, Clone, Default)]
pub struct Recorded(Arc<Mutex<Vec<(HeaderMap, Bytes)>>>);

#[allow(dead_code)]
impl Recorded {
    /// Every request seen so far, oldest first.
    pub fn all(&self) -> Vec<(HeaderMap, Bytes)> {
        self.0.lock().unwrap().clone()
    }

    /// How many requests were seen.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The `Authorization` header of the last request, if it had one.
    pub fn last_authorization(&self) -> Option<String> {
        let seen = self.0.lock().unwrap();
        let (headers, _) = seen.last()?;
        let value = headers.get(http::header::AUTHORIZATION)?;
        Some(value.to_str().expect("an ASCII header").to_owned())
    }
}

/// Wraps an HTTP client: records each request's headers and body into
/// `recorded`, then sends it on unchanged.
#[allow(dead_code)]
pub fn recording<S>(
    inner: S,
    recorded: &Recorded,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = S::Response,
    Error = S::Error,
    Future = impl Future<Output = Result<S::Response, S::Error>> + Send,
> + Clone
       + Send
       + Sync
       + 'static
where
    S: Service<Request<Full<Bytes>>> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    let recorded = recorded.clone();
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let recorded = recorded.clone();
        let inner = inner.clone();
        async move {
            let (parts, body) = request.into_parts();
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            recorded
                .0
                .lock()
                .unwrap()
                .push((parts.headers.clone(), bytes.clone()));
            inner
                .oneshot(Request::from_parts(parts, Full::new(bytes)))
                .await
        }
    })
}

/// How many response body bytes a [`counting_bodies`] client handed out, and
/// its largest single frame.
#[allow(dead_code)]
#[derive(Debug, Clone, Default)]
pub struct BodyBytes {
    read: Arc<AtomicUsize>,
    largest_frame: Arc<AtomicUsize>,
}

#[allow(dead_code)]
impl BodyBytes {
    /// Body bytes polled out of the responses so far.
    pub fn read(&self) -> usize {
        self.read.load(Ordering::SeqCst)
    }

    /// The largest data frame polled so far.
    pub fn largest_frame(&self) -> usize {
        self.largest_frame.load(Ordering::SeqCst)
    }
}

/// A hyper-util client whose response bodies count, into `counter`, the
/// bytes of every data frame polled out of them: what whoever reads the
/// body actually read.
#[allow(dead_code)]
pub fn counting_bodies(
    counter: &BodyBytes,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error = hyper::Error> + Send + 'static>,
    Error = hyper_util::client::legacy::Error,
    Future = impl Future + Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    let counter = counter.clone();
    hyper_client().map_response(move |response: Response<hyper::body::Incoming>| {
        let counter = counter.clone();
        response.map(move |body| {
            body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    counter.read.fetch_add(data.len(), Ordering::SeqCst);
                    counter
                        .largest_frame
                        .fetch_max(data.len(), Ordering::SeqCst);
                }
                frame
            })
        })
    })
}

/// Everything `tracing` writes through a subscriber given
/// `move || logs.clone()` as its writer.
#[allow(dead_code)]
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[allow(dead_code)]
impl Logs {
    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
