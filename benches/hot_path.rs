//! The hot path: one request through an inner service that answers at once,
//! bare and under each way of adding credentials, on a current-thread runtime.
//!
//! Every variant sends the same request ([`request`]), built outside the timed
//! part in batches of 128 ([`send_prebuilt`]); the `request_only` line is the
//! construction cost left out. Timed: `poll_ready`, `call`, the response
//! future, and dropping the request and the response. What matters is each
//! variant's overhead over `bare`, and that overhead as a multiple of
//! `equal_work`'s: the least code that does the same job by hand (a
//! pre-built header unless the caller set one, for one allowed https origin,
//! a handle per request for the 401/403 path, 401/403 turned into errors).
//! tower-http's `AddAuthorization`, which does less, is printed beside it.
//!
//! `benches/contention.rs`, `benches/single_flight.rs` and
//! `benches/rotation.rs` reuse the request, the variants and the reporting
//! helpers of this file through `#[path = "hot_path.rs"] mod hot_path;`.
//!
//! Run: `cargo bench --bench hot_path` (add `-- --quick` for a fast check).

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Future, Ready};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use futures_util::future::BoxFuture;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use tokio::runtime::Runtime;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;
use tower_propel_auth::{
    AccessToken, Credentials, PropelAuthLayer, TokenError, TokenParams, TokenSource,
};

/// The request every variant sends.
pub type Req = Request<Full<Bytes>>;
/// The response the inner service answers with.
pub type Resp = Response<Full<Bytes>>;

/// Propel's GraphQL API: the default allowed origin, set explicitly anyway.
pub const API_URL: &str = "https://api.us-east-2.propeldata.com/graphql";

/// A small GraphQL body.
pub const QUERY: &[u8] = br#"{"query":"{ sqlV1(input: {query: \"SELECT 1\"}) { rows } }"}"#;

/// A JWT of a realistic length (324 bytes); nobody verifies it here.
pub const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJodHRwczovL2F1dGgudXMtZWFzdC0yLnByb3BlbGRhdGEuY29tIiwic3ViIjoiQVBQMDFCRU5DSE1BUktBUFBMSUNBVElPTklEMDAwMCIsInNjb3BlIjoiZGF0YV9wb29sOnF1ZXJ5IG1ldHJpYzpxdWVyeSIsImlhdCI6MTc2NzIyNTYwMCwiZXhwIjoxNzY3MjI5MjAwLCJqdGkiOiJiZW5jaC0wMDAxIn0.c2lnbmF0dXJlLW5vdC12ZXJpZmllZC1ieS10aGUtYmVuY2g";

/// How long the tokens of the hot-path sources live: far longer than any run.
const LIFETIME: Duration = Duration::from_secs(3600);

/// The request of every variant: `POST` to Propel's API with
/// `content-type: application/json` and a small `Full<Bytes>` body, as a
/// GraphQL client sends it. No allocation of its own beyond the header map.
pub fn request() -> Req {
    Request::builder()
        .method(Method::POST)
        .uri(Uri::from_static(API_URL))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(Full::new(Bytes::from_static(QUERY)))
        .expect("a valid request")
}

/// The inner service: answers every request at once with an empty 200.
pub fn inner(
) -> impl Service<Req, Response = Resp, Error = Infallible, Future = Ready<Result<Resp, Infallible>>>
       + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(|_request: Req| {
        std::future::ready(Ok(Response::new(Full::new(Bytes::new()))))
    })
}

/// A [`TokenSource`] that answers at once with [`TOKEN`].
#[derive(Debug, Clone, Copy)]
pub struct InstantSource;

impl TokenSource for InstantSource {
    fn fetch_token(
        &self,
        _params: &TokenParams,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>> {
        Box::pin(std::future::ready(AccessToken::new(TOKEN, LIFETIME)))
    }
}

/// `PropelAuthLayer` over [`InstantSource`], allowed to send to [`API_URL`].
pub fn cached_layer() -> PropelAuthLayer {
    PropelAuthLayer::token_source(InstantSource)
        .allowed_origins([API_URL])
        .build()
        .expect("a valid layer")
}

// ---------------------------------------------------------------------------
// The same job written by hand, with nothing to spare.

/// What [`EqualWork`] shares between its clones and hands to each request.
#[derive(Debug)]
pub struct EqualShared {
    header: HeaderValue,
    /// The one allowed origin's authority, for https.
    authority: String,
}

/// The least code that does what the layer does on its hot path: attach a
/// pre-built header (from a `String` known at run time, as a token is)
/// unless the caller set one, only for one allowed https origin; hold a
/// handle (an `Arc`) per request for the 401/403 path; turn 401 and 403
/// into errors.
#[derive(Debug, Clone)]
pub struct EqualWork<S> {
    inner: S,
    shared: Arc<EqualShared>,
}

impl<S> EqualWork<S> {
    /// Wraps `inner`, sending [`TOKEN`] to [`API_URL`]'s origin.
    pub fn new(inner: S) -> Self {
        let token = std::hint::black_box(TOKEN.to_owned());
        let mut header = HeaderValue::try_from(format!("Bearer {token}")).expect("a header");
        header.set_sensitive(true);
        let authority = Uri::from_static(API_URL)
            .authority()
            .expect("a host")
            .to_string();
        Self {
            inner,
            shared: Arc::new(EqualShared { header, authority }),
        }
    }
}

impl<S> Service<Req> for EqualWork<S>
where
    S: Service<Req, Response = Resp>,
    S::Error: Into<BoxError>,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = EqualWorkFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        let uri = request.uri();
        let allowed = uri.scheme_str() == Some("https")
            && uri.authority().map(|a| a.as_str()) == Some(self.shared.authority.as_str());
        let held = if allowed && !request.headers().contains_key(AUTHORIZATION) {
            request
                .headers_mut()
                .insert(AUTHORIZATION, self.shared.header.clone());
            Some(Arc::clone(&self.shared))
        } else {
            None
        };
        EqualWorkFuture {
            inner: self.inner.call(request),
            held,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`EqualWork`]'s response future.
    pub struct EqualWorkFuture<F> {
        #[pin]
        inner: F,
        held: Option<Arc<EqualShared>>,
    }
}

impl<F, E> Future for EqualWorkFuture<F>
where
    F: Future<Output = Result<Resp, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Resp, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx)).map_err(Into::into)?;
        let status = response.status();
        if this.held.is_some() && (status == 401 || status == 403) {
            return Poll::Ready(Err(format!("Propel answered {status}").into()));
        }
        Poll::Ready(Ok(response))
    }
}

/// `PropelAuthLayer::basic`, allowed to send to [`API_URL`].
pub fn basic_layer() -> PropelAuthLayer {
    let credentials = Credentials::new("APP01BENCHMARKAPPLICATIONID0000", "bench-secret")
        .expect("valid credentials");
    PropelAuthLayer::basic(credentials)
        .with_allowed_origins([API_URL])
        .expect("a valid API URL")
}

// ---------------------------------------------------------------------------
// What users write by hand: a token behind a lock, the header built per request.

/// A token as user code keeps it.
#[derive(Debug, Clone)]
pub struct UserToken {
    access_token: String,
    expires_at: Instant,
}

/// The margin user code typically keeps before expiry.
const USER_MARGIN: Duration = Duration::from_secs(30);

impl UserToken {
    /// What a hand-written cache calls when its token is missing or old: here
    /// it answers at once, like [`InstantSource`].
    async fn fetch() -> Result<Self, BoxError> {
        Ok(Self {
            access_token: TOKEN.to_owned(),
            expires_at: Instant::now() + LIFETIME,
        })
    }

    fn is_fresh(&self) -> bool {
        self.expires_at > Instant::now() + USER_MARGIN
    }
}

/// A hand-written token cache: `get_token()` hands back the token string.
pub trait UserCache: Clone + Send + Sync + 'static {
    /// The current token, fetching one when there is none or it is old.
    fn token(&self) -> impl Future<Output = Result<String, BoxError>> + Send;
}

/// `Arc<tokio::sync::Mutex<Option<Token>>>`: the pattern most examples show.
#[derive(Debug, Clone, Default)]
pub struct TokioMutexCache(Arc<tokio::sync::Mutex<Option<UserToken>>>);

impl UserCache for TokioMutexCache {
    async fn token(&self) -> Result<String, BoxError> {
        let mut slot = self.0.lock().await;
        match slot.as_ref() {
            Some(token) if token.is_fresh() => Ok(token.access_token.clone()),
            _ => {
                let token = UserToken::fetch().await?;
                let access_token = token.access_token.clone();
                *slot = Some(token);
                Ok(access_token)
            }
        }
    }
}

/// `Arc<std::sync::RwLock<Option<Token>>>`: read lock on the fast path.
#[derive(Debug, Clone, Default)]
pub struct RwLockCache(Arc<std::sync::RwLock<Option<UserToken>>>);

impl UserCache for RwLockCache {
    async fn token(&self) -> Result<String, BoxError> {
        {
            let slot = self.0.read().expect("not poisoned");
            if let Some(token) = slot.as_ref().filter(|token| token.is_fresh()) {
                return Ok(token.access_token.clone());
            }
        }
        let token = UserToken::fetch().await?;
        let access_token = token.access_token.clone();
        *self.0.write().expect("not poisoned") = Some(token);
        Ok(access_token)
    }
}

/// The service users write around such a cache: a boxed future that gets the
/// token, formats `Bearer {token}` and calls the inner service.
#[derive(Debug, Clone)]
pub struct UserAuth<S, C> {
    inner: S,
    cache: C,
}

impl<S, C> UserAuth<S, C> {
    /// Wraps `inner`.
    pub fn new(inner: S, cache: C) -> Self {
        Self { inner, cache }
    }
}

impl<S, C> Service<Req> for UserAuth<S, C>
where
    S: Service<Req, Response = Resp> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    C: UserCache,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Resp, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        let cache = self.cache.clone();
        // The future owns the readied service; leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let token = cache.token().await?;
            let mut header: HeaderValue = format!("Bearer {token}").parse()?;
            header.set_sensitive(true);
            request.headers_mut().insert(AUTHORIZATION, header);
            inner.call(request).await.map_err(Into::into)
        })
    }
}

// ---------------------------------------------------------------------------
// The variants, shared with the contention bench.

/// The variants of every table, in order; `bare` first.
pub const VARIANTS: [&str; 10] = [
    "bare",
    "add_authorization",
    "equal_work",
    "propel_basic",
    "propel_cached",
    "tenant_tag_only",
    "propel_keyed",
    "propel_view",
    "hand_tokio_mutex",
    "hand_std_rwlock",
];

/// What a multi-tenant caller of an `http::Request` client does to every
/// request: tag it with its tenant's token parameters (a reference count and
/// the request's extensions, which allocate). `tenant_tag_only` is this over
/// the bare service, so `propel_keyed` minus it is the keyed lookup.
/// `propel_view` needs no tag: a tenant view carries the parameters.
fn tag_tenant<S>(service: S) -> tower::util::MapRequest<S, impl FnMut(Req) -> Req + Clone>
where
    S: Service<Req>,
{
    let params = TokenParams::tenant("acme");
    tower::util::MapRequest::new(service, move |mut request: Req| {
        request.extensions_mut().insert(params.clone());
        request
    })
}

/// Receives each variant's service, built and warmed up.
pub trait Variants {
    /// One variant.
    fn variant<S>(&mut self, name: &'static str, service: S)
    where
        S: Service<Req, Response = Resp> + Clone + Send + 'static,
        S::Error: Debug,
        S::Future: Send + 'static;
}

/// Builds every variant of [`VARIANTS`], sends one request through each on
/// `rt` (this fills the caches and promotes the shared header bytes), and
/// hands it to `visit`.
pub fn for_each_variant(rt: &Runtime, visit: &mut impl Variants) {
    fn warmed<S>(rt: &Runtime, service: S) -> S
    where
        S: Service<Req, Response = Resp> + Clone,
        S::Error: Debug,
    {
        let mut warm = service.clone();
        rt.block_on(async {
            warm.ready()
                .await
                .expect("ready")
                .call(request())
                .await
                .expect("the warm-up request succeeds");
        });
        service
    }

    visit.variant("bare", warmed(rt, inner()));
    let floor = AddAuthorizationLayer::bearer(TOKEN).as_sensitive(true);
    visit.variant("add_authorization", warmed(rt, floor.layer(inner())));
    visit.variant("equal_work", warmed(rt, EqualWork::new(inner())));
    visit.variant("propel_basic", warmed(rt, basic_layer().layer(inner())));
    let cached = cached_layer();
    visit.variant("propel_cached", warmed(rt, cached.layer(inner())));
    assert_eq!(cached.stats().token_requests, 1, "the cache is warm");
    visit.variant("tenant_tag_only", warmed(rt, tag_tenant(inner())));
    let keyed = cached_layer();
    visit.variant("propel_keyed", warmed(rt, tag_tenant(keyed.layer(inner()))));
    assert_eq!(keyed.stats().token_sets, 1, "the tenant's cache is warm");
    let view = cached_layer().with_params(TokenParams::tenant("acme"));
    visit.variant("propel_view", warmed(rt, view.layer(inner())));
    assert_eq!(view.stats().token_sets, 1, "the view's cache is warm");
    visit.variant(
        "hand_tokio_mutex",
        warmed(rt, UserAuth::new(inner(), TokioMutexCache::default())),
    );
    visit.variant(
        "hand_std_rwlock",
        warmed(rt, UserAuth::new(inner(), RwLockCache::default())),
    );
}

/// Sends `iters` requests one after the other through `service`, building
/// each right before it is sent; the time it all took (construction included).
pub async fn send_sequentially<S>(service: &mut S, iters: u64) -> Duration
where
    S: Service<Req, Response = Resp>,
    S::Error: Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        send(service, request()).await;
    }
    start.elapsed()
}

/// Sends `iters` requests one after the other through `service`, built
/// beforehand in batches of [`BATCH`]; the time the sending took (request
/// construction excluded, dropping the request and the response included).
pub async fn send_prebuilt<S>(service: &mut S, iters: u64) -> Duration
where
    S: Service<Req, Response = Resp>,
    S::Error: Debug,
{
    let mut batch = Vec::with_capacity(BATCH);
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH as u64);
        left -= n;
        batch.extend((0..n).map(|_| request()));
        let start = Instant::now();
        for request in batch.drain(..) {
            send(service, request).await;
        }
        elapsed += start.elapsed();
    }
    elapsed
}

/// How many requests [`send_prebuilt`] builds ahead.
const BATCH: usize = 128;

/// One request: `poll_ready`, `call`, the response awaited and dropped.
#[inline]
async fn send<S>(service: &mut S, request: Req)
where
    S: Service<Req, Response = Resp>,
    S::Error: Debug,
{
    let response = service
        .ready()
        .await
        .expect("ready")
        .call(request)
        .await
        .expect("a response");
    black_box(response);
}

// ---------------------------------------------------------------------------
// Configuration and reporting, shared by every bench.

/// Short warm-up and measurement, fewer bootstrap resamples and no HTML
/// plots, so that a full `cargo bench` stays under five minutes on two cores;
/// command-line flags override these.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(20)
        .nresamples(10_000)
        .without_plots()
        .configure_from_args()
}

/// Whether this run measures (`cargo bench`), rather than checking that the
/// benches work (`cargo test --benches`, `-- --test`, `-- --list`).
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|arg| arg == "--bench")
        && !args
            .iter()
            .any(|arg| arg == "--test" || arg == "--list" || arg.starts_with("--profile-time"))
}

/// Where criterion writes its estimates (as criterion itself finds it).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    target.join("criterion")
}

/// The median (ns per iteration) of the last run of `group/id`, if there was one.
pub fn median_ns(group: &str, id: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// Something to time, type-erased: runs a fixed amount of work, returns the
/// time per request in nanoseconds.
pub type Runner<'a> = Box<dyn FnMut() -> f64 + 'a>;

/// Runs every runner once per round for `rounds` rounds, in an order that
/// rotates each round, so that load from elsewhere on the machine falls on
/// every variant alike. Per runner: the median and the minimum over the rounds.
pub fn interleave(runners: &mut [(String, Runner<'_>)], rounds: usize) -> Vec<(f64, f64)> {
    let mut samples = vec![Vec::with_capacity(rounds); runners.len()];
    for round in 0..rounds {
        for k in 0..runners.len() {
            let i = (k + round) % runners.len();
            samples[i].push((runners[i].1)());
        }
    }
    samples
        .into_iter()
        .map(|mut ns| {
            ns.sort_by(f64::total_cmp);
            (ns[ns.len() / 2], ns[0])
        })
        .collect()
}

/// Formats an overhead and its ratio to the floor's.
pub fn overhead_cell(ns: f64, bare: f64, floor: f64) -> String {
    let overhead = ns - bare;
    format!("{overhead:+.1} ns ({:.2}×)", overhead / (floor - bare))
}

/// Collects a [`Runner`] per hot-path variant.
struct CollectRunners<'r> {
    rt: &'r Runtime,
    runners: Vec<(String, Runner<'r>)>,
}

/// Requests per round of the interleaved hot-path measurement.
const INTERLEAVED_REQUESTS: u64 = 4096;

impl<'r> Variants for CollectRunners<'r> {
    fn variant<S>(&mut self, name: &'static str, mut service: S)
    where
        S: Service<Req, Response = Resp> + Clone + Send + 'static,
        S::Error: Debug,
        S::Future: Send + 'static,
    {
        let rt = self.rt;
        let runner: Runner<'r> = Box::new(move || {
            let elapsed = rt.block_on(send_prebuilt(&mut service, INTERLEAVED_REQUESTS));
            elapsed.as_nanos() as f64 / INTERLEAVED_REQUESTS as f64
        });
        self.runners.push((name.to_owned(), runner));
    }
}

/// The hot-path variants again, outside criterion: interleaved rounds of
/// 4096 requests each, robust to load that comes and goes during a run.
fn print_interleaved_hot_path(rt: &Runtime, rounds: usize) {
    let mut collect = CollectRunners {
        rt,
        runners: Vec::new(),
    };
    collect.runners.push((
        "request_only".to_owned(),
        Box::new(|| {
            let start = Instant::now();
            for _ in 0..INTERLEAVED_REQUESTS {
                black_box(request());
            }
            start.elapsed().as_nanos() as f64 / INTERLEAVED_REQUESTS as f64
        }),
    ));
    for_each_variant(rt, &mut collect);
    let results = interleave(&mut collect.runners, rounds);
    let names: Vec<&str> = collect
        .runners
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    let find = |id: &str| results[names.iter().position(|n| *n == id).expect("a variant")];
    let (bare, equal, floor) = (
        find("bare").0,
        find("equal_work").0,
        find("add_authorization").0,
    );
    println!("hot_path, interleaved ({rounds} rounds of {INTERLEAVED_REQUESTS} requests per variant; per request; medians, and the minimum beside):\n");
    println!("| variant | median | min | overhead | × equal_work's | × AddAuthorization's |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, (median, min)) in names.iter().zip(&results) {
        // The keyed variant is measured over the same request, tagged.
        let (label, base) = match *name {
            "propel_keyed" => (
                "propel_keyed (over tenant_tag_only)",
                find("tenant_tag_only").0,
            ),
            other => (other, bare),
        };
        let cells = if matches!(*name, "bare" | "request_only") {
            String::from(" | |")
        } else {
            let over = median - base;
            format!(
                "{over:+.1} ns | {:.2}× | {:.2}×",
                over / (equal - bare),
                over / (floor - bare)
            )
        };
        println!("| {label} | {median:.1} ns | {min:.1} ns | {cells} |");
    }
    println!();
}

/// Prints a Markdown table of the hot-path medians, each variant's overhead
/// over `bare` and that overhead as a multiple of `add_authorization`'s.
fn print_hot_path_table() {
    let median = |id: &str| median_ns("hot_path", id);
    let (Some(bare), Some(floor)) = (median("bare"), median("add_authorization")) else {
        println!(
            "(no estimates for hot_path/bare and hot_path/add_authorization: nothing to compare)"
        );
        return;
    };
    let floor_overhead = floor - bare;
    println!("\nhot_path medians (request construction excluded; request_only is its cost):\n");
    println!("| variant | median | overhead over bare | × AddAuthorization's overhead |");
    println!("|---|---:|---:|---:|");
    if let Some(request_only) = median("request_only") {
        println!("| request_only | {request_only:.1} ns | | |");
    }
    for id in VARIANTS {
        let Some(ns) = median(id) else { continue };
        let overhead = ns - bare;
        let ratio = if id == "bare" {
            String::new()
        } else {
            format!("{:.2}×", overhead / floor_overhead)
        };
        println!("| {id} | {ns:.1} ns | {overhead:+.1} ns | {ratio} |");
    }
    println!();
}

struct HotPath<'g, 'c, 'r> {
    group: &'g mut BenchmarkGroup<'c, WallTime>,
    rt: &'r Runtime,
}

impl Variants for HotPath<'_, '_, '_> {
    fn variant<S>(&mut self, name: &'static str, service: S)
    where
        S: Service<Req, Response = Resp> + Clone + Send + 'static,
        S::Error: Debug,
        S::Future: Send + 'static,
    {
        self.group.bench_function(name, |b| {
            b.to_async(self.rt).iter_custom(|iters| {
                let mut service = service.clone();
                async move { send_prebuilt(&mut service, iters).await }
            })
        });
    }
}

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("hot_path");
    group.bench_function("request_only", |b| b.iter(|| black_box(request())));
    for_each_variant(
        &rt,
        &mut HotPath {
            group: &mut group,
            rt: &rt,
        },
    );
    group.finish();
}

fn main() {
    let mut c = criterion();
    hot_path(&mut c);
    c.final_summary();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if measuring() {
        print_hot_path_table();
        print_interleaved_hot_path(&rt, 41);
    } else {
        print_interleaved_hot_path(&rt, 1);
    }
}
