//! Allocations on the hot path, counted by a global allocator that counts
//! only on the thread that asked it to, so other tests' threads add no noise.
//!
//! Each request is polled by hand with a no-op waker (the inner service
//! answers at once), outside any runtime: no task, no timer, nothing but the
//! service itself allocates while counting. Every service is warmed up first:
//! the first request fills the token cache and registers this thread with
//! `arc-swap`, and the first clone of a header promotes its bytes to shared.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;
use tower_propel_auth::{AccessToken, PropelAuthLayer, TokenError, TokenParams, TokenSource};

/// Counts allocations (and reallocations) made by the thread that turned
/// counting on.
struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator runs while thread locals are torn down too.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counting touches only `const`-initialised thread locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// How many allocations this thread makes while running `f`.
fn allocations_in(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|count| count.set(0));
    COUNTING.with(|counting| counting.set(true));
    f();
    COUNTING.with(|counting| counting.set(false));
    ALLOCATIONS.with(Cell::get)
}

type Req = Request<Full<Bytes>>;
type Resp = Response<Full<Bytes>>;

const API_URL: &str = "https://api.us-east-2.propeldata.com/graphql";
const QUERY: &[u8] = br#"{"query":"{ sqlV1 { rows } }"}"#;

/// The request of `benches/hot_path.rs`: POST, a JSON content type, a small body.
fn request() -> Req {
    Request::builder()
        .method(Method::POST)
        .uri(Uri::from_static(API_URL))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(Full::new(Bytes::from_static(QUERY)))
        .expect("a valid request")
}

/// Answers every request at once.
fn inner() -> impl Service<
    Req,
    Response = Resp,
    Error = Infallible,
    Future = std::future::Ready<Result<Resp, Infallible>>,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|_request: Req| {
        std::future::ready(Ok(Response::new(Full::new(Bytes::new()))))
    })
}

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjQxMDI0NDQ4MDB9.allocation-test-signature";

/// Answers at once with a token good for an hour.
struct InstantSource;

impl TokenSource for InstantSource {
    fn fetch_token(
        &self,
        _params: &TokenParams,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>> {
        Box::pin(std::future::ready(AccessToken::new(
            TOKEN,
            Duration::from_secs(3600),
        )))
    }
}

fn cached_layer() -> PropelAuthLayer {
    PropelAuthLayer::token_source(InstantSource)
        .allowed_origins([API_URL])
        .build()
        .expect("a valid layer")
}

/// Drives `service` through one request by hand; the response is dropped.
fn send_by_hand<S>(service: &mut S, request: Req)
where
    S: Service<Req, Response = Resp>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(ready) => ready.expect("the service is ready"),
        Poll::Pending => panic!("the service is not ready at once"),
    }
    let mut future = pin!(service.call(request));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(response) => drop(response.expect("a response")),
        Poll::Pending => panic!("the request does not complete at once"),
    }
}

/// Allocations of one request through `service` (request construction not
/// counted), after warming it up on a runtime; the same on every repeat.
fn allocations_per_request<S>(mut service: S) -> u64
where
    S: Service<Req, Response = Resp>,
    S::Error: std::fmt::Debug,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // The first request may fetch a token, which spawns the fetch task.
    runtime
        .block_on(async { service.ready().await?.call(request()).await })
        .expect("the warm-up request succeeds");
    send_by_hand(&mut service, request());

    let counts: Vec<u64> = (0..5)
        .map(|_| {
            let request = request();
            allocations_in(|| send_by_hand(&mut service, request))
        })
        .collect();
    assert!(
        counts.windows(2).all(|pair| pair[0] == pair[1]),
        "allocations differ between identical requests: {counts:?}"
    );
    counts[0]
}

fn floor() -> u64 {
    allocations_per_request(
        AddAuthorizationLayer::bearer(TOKEN)
            .as_sensitive(true)
            .layer(inner()),
    )
}

#[test]
fn the_counter_sees_allocations_on_this_thread_only() {
    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(Box::new(1u64)))),
        1
    );
    let other_thread = allocations_in(|| {
        std::thread::scope(|scope| {
            scope.spawn(|| drop(std::hint::black_box(vec![0u8; 64])));
        })
    });
    // Spawning a thread allocates on this thread; the vector on the other
    // thread must not be counted on top of that.
    let spawn_only = allocations_in(|| {
        std::thread::scope(|scope| {
            scope.spawn(|| {});
        })
    });
    assert_eq!(other_thread, spawn_only);
}

#[test]
fn a_cached_token_request_allocates_no_more_than_add_authorization() {
    let floor = floor();
    let cached = allocations_per_request(cached_layer().layer(inner()));
    assert_eq!(
        cached, floor,
        "cached-token path: {cached} allocations, AddAuthorization: {floor}"
    );
}

/// A tenant view finds its set's cache in the layer's bounded map: a
/// lookup and a reference count, no allocation (once the set exists).
#[test]
fn a_tenant_views_cached_token_request_allocates_no_more_than_add_authorization() {
    let floor = floor();
    let view = cached_layer().with_params(TokenParams::tenant("acme"));
    let tenant = allocations_per_request(view.layer(inner()));
    assert_eq!(
        tenant, floor,
        "a tenant's cached token: {tenant} allocations, AddAuthorization: {floor}"
    );
}

#[test]
fn basic_credentials_allocate_no_more_than_add_authorization() {
    let floor = floor();
    let credentials = tower_propel_auth::Credentials::new("APP01ALLOCATIONTEST", "secret")
        .expect("valid credentials");
    let basic = allocations_per_request(
        PropelAuthLayer::basic(credentials)
            .with_allowed_origins([API_URL])
            .expect("a valid API URL")
            .layer(inner()),
    );
    assert_eq!(
        basic, floor,
        "Basic: {basic} allocations, AddAuthorization: {floor}"
    );
}
