//! Where credentials may travel (DESIGN section 4, behaviour 8), over real
//! TCP on loopback: only to the allowed origins, never over plain HTTP to a
//! host that is not loopback, never re-sent elsewhere by the layer's own 401
//! retry, and never carried to another origin by a redirect when the layer is
//! stacked with tower-http's `FollowRedirect` the recommended way.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{AUTHORIZATION, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::policy::Limited;
use tower_http::follow_redirect::FollowRedirectLayer;
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::testing::ApiFault;
use tower_propel_auth::{Error, FakePropel, PropelAuthLayer};

use support::{
    expect_err, graphql, hyper_client, start, token_layer, Calls, Query, DATA_POOL_QUERY,
};

/// One request a tiny server saw: its path and its `Authorization` header.
type Seen = (String, Option<String>);

/// What one tiny server saw.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    fn with_credentials(&self) -> usize {
        self.all().iter().filter(|(_, auth)| auth.is_some()).count()
    }
}

/// A tiny HTTP/1 server on loopback that logs every request and answers it
/// with `answer`. Returns its origin, `http://127.0.0.1:PORT`.
async fn serve(
    log: &Log,
    answer: impl Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let log = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (log, answer) = (log.clone(), answer.clone());
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let auth = request
                    .headers()
                    .get(AUTHORIZATION)
                    .map(|v| v.to_str().unwrap_or("<not ASCII>").to_owned());
                log.0
                    .lock()
                    .unwrap()
                    .push((request.uri().path().to_owned(), auth));
                let response = answer(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    origin
}

/// A server that answers 200 to everything.
async fn ok_server(log: &Log) -> String {
    serve(log, |_| Response::new(Full::new(Bytes::from_static(b"{}")))).await
}

/// A server that answers every request with a 307 to `location`.
async fn redirecting_server(log: &Log, location: String) -> String {
    serve(log, move |_| {
        Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(LOCATION, location.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await
}

/// `GET url` with an empty body (which `FollowRedirect` can always re-send).
fn get(url: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::GET)
        .uri(url)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A token layer that fetches from `fake` and sends tokens to `origin` only.
fn layer_for(fake: &FakePropel, origin: &str) -> PropelAuthLayer {
    token_layer(fake)
        .allowed_origins([format!("{origin}/graphql")])
        .build()
        .unwrap()
}

#[tokio::test]
async fn credentials_go_to_the_allowed_origin_and_to_no_other_scheme_host_or_port() {
    let fake = start().await;
    let (allowed_log, other_log) = (Log::default(), Log::default());
    let allowed = ok_server(&allowed_log).await;
    let other = ok_server(&other_log).await;
    let port = allowed.rsplit(':').next().unwrap();
    let layer = layer_for(&fake, &allowed);
    let service = layer.layer(hyper_client());

    let response = service
        .clone()
        .oneshot(get(&format!("{allowed}/graphql")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        allowed_log.with_credentials(),
        1,
        "the allowed origin got them"
    );

    // Another port on the same host, and the same port under another host
    // name, are other origins.
    for url in [
        format!("{other}/graphql"),
        format!("http://localhost:{port}/graphql"),
    ] {
        let response = service.clone().oneshot(get(&url)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url} passes through");
    }
    assert_eq!(other_log.all().len(), 1);
    assert_eq!(other_log.with_credentials(), 0, "{:?}", other_log.all());
    assert_eq!(allowed_log.all().len(), 2);
    assert_eq!(
        allowed_log.with_credentials(),
        1,
        "via localhost: {:?}",
        allowed_log.all()
    );
    assert_eq!(layer.stats().token_requests, 1);
}

#[tokio::test]
async fn plain_http_to_a_host_that_is_not_loopback_is_refused_before_anything_is_sent() {
    let fake = start().await;
    let calls = Calls::default();
    let inner = {
        let calls = calls.clone();
        tower::service_fn(move |_: Request<Full<Bytes>>| {
            calls.bump();
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
        })
    };
    // (allowed origin, request URL): plain http allowed by mistake, and an
    // https origin downgraded by the request; an IP, a name and IPv6.
    let cases = [
        ("http://10.0.0.1:8080", "http://10.0.0.1:8080/graphql"),
        ("http://api.example.com", "http://api.example.com/graphql"),
        ("https://api.example.com", "http://api.example.com/graphql"),
        ("https://[2001:db8::1]", "http://[2001:db8::1]/graphql"),
    ];
    for (origin, url) in cases {
        let layer = token_layer(&fake)
            .allowed_origins([origin])
            .build()
            .unwrap();
        let err = expect_err(layer.layer(inner.clone()).oneshot(get(url)).await);
        let Error::InsecureTransport(insecure) = &err else {
            panic!("{url}: expected InsecureTransport, got {err:?}");
        };
        assert!(insecure.origin().starts_with("http://"), "{insecure}");
        assert!(!err.is_transient());
        assert_eq!(layer.stats().token_requests, 0, "{url}: no token fetched");
    }
    assert_eq!(calls.get(), 0, "the inner service was never called");
    assert_eq!(fake.stats().token_requests, 0);
}

#[tokio::test]
async fn the_401_retry_goes_to_the_same_uri_and_a_401_from_elsewhere_is_not_retried() {
    let fake = start().await;
    // Behind the retry layer the crate recommends.
    let layer = token_layer(&fake).build().unwrap();
    let uris = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let (uris, client) = (Arc::clone(&uris), hyper_client());
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let has_auth = request.headers().contains_key(AUTHORIZATION);
            uris.lock()
                .unwrap()
                .push((request.uri().to_string(), has_auth));
            client.clone().oneshot(request)
        })
    };
    let service = ServiceBuilder::new()
        .retry(TransientErrors::new(1))
        .layer(layer.clone())
        .service(inner);
    let response = service
        .clone()
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // The token is revoked: a 401, a fresh token, the same request again.
    fake.revoke_all_tokens();
    let response = service
        .clone()
        .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = uris.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (uri, has_auth) in &seen {
        assert_eq!(uri, &fake.api_url());
        assert!(has_auth);
    }
    assert_eq!(layer.stats().tokens_rejected, 1);

    // Another origin answering 401 is not the layer's business: passed
    // through as is, not retried, and the cached token is kept.
    let elsewhere = start().await;
    let response = service
        .clone()
        .oneshot(graphql(&elsewhere.api_url(), DATA_POOL_QUERY))
        .await
        .expect("a 401 from another origin is a plain response");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(elsewhere.stats().api_requests, 1, "not retried");
    assert_eq!(elsewhere.stats().api_unauthenticated, 1);
    assert_eq!(layer.stats().unauthorized, 1);
    assert_eq!(fake.stats().token_requests, 2);

    // And a 401 from the allowed origin with a request that went out
    // without our header (the caller's own) is left to the caller too.
    fake.set_api_fault(Some(ApiFault::Unauthorized));
    let mut own = graphql(&fake.api_url(), DATA_POOL_QUERY);
    own.headers_mut()
        .insert(AUTHORIZATION, "Bearer callers-own".parse().unwrap());
    let response = service.clone().oneshot(own).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(layer.stats().unauthorized, 1);
    assert_eq!(fake.stats().token_requests, 2);
}

/// Stack tower-http's `FollowRedirect` **outside** the layer:
///
/// ```text
/// ServiceBuilder::new()
///     .layer(FollowRedirectLayer::new())   // outer: follows redirects
///     .layer(PropelAuthLayer::…)           // inner: checks every hop
///     .service(client)
/// ```
///
/// Each hop then goes through the layer, which attaches credentials only when
/// that hop is for an allowed origin: a redirect to another origin goes out
/// without them whatever the redirect policy (here tower-http's `Limited`,
/// which filters no header at all). The first hop carries the credentials
/// (it is for the allowed origin) and `FollowRedirect` never saw them, so it
/// cannot copy them either.
#[tokio::test]
async fn follow_redirect_outside_the_layer_keeps_credentials_off_another_origin_whatever_its_policy(
) {
    let fake = start().await;
    let (first_log, second_log) = (Log::default(), Log::default());
    let second = ok_server(&second_log).await;
    let first = redirecting_server(&first_log, format!("{second}/graphql")).await;
    let layer = layer_for(&fake, &first);

    let default_policy = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(layer.clone())
        .service(hyper_client());
    let no_filter = ServiceBuilder::new()
        .layer(FollowRedirectLayer::with_policy(Limited::default()))
        .layer(layer.clone())
        .service(hyper_client());

    let response = default_policy
        .oneshot(get(&format!("{first}/graphql")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "followed");
    let response = no_filter
        .oneshot(get(&format!("{first}/graphql")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "followed");

    assert_eq!(first_log.with_credentials(), 2, "{:?}", first_log.all());
    assert_eq!(second_log.all().len(), 2);
    assert_eq!(second_log.with_credentials(), 0, "{:?}", second_log.all());
}

/// The other order, the layer **outside** `FollowRedirect`, hands the request
/// with its `Authorization` header to `FollowRedirect`, which copies the
/// header to every hop. Only its policy stands between the header and another
/// origin: the default (`Standard`, which includes `FilterCredentials`)
/// removes it across origins, but a policy without `FilterCredentials` (here
/// `Limited`) sends it on. Prefer `FollowRedirect` outside the layer.
#[tokio::test]
async fn follow_redirect_inside_the_layer_leaks_credentials_unless_its_policy_filters_them() {
    let fake = start().await;
    let (first_log, second_log) = (Log::default(), Log::default());
    let second = ok_server(&second_log).await;
    let first = redirecting_server(&first_log, format!("{second}/graphql")).await;
    let layer = layer_for(&fake, &first);

    let default_policy = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(FollowRedirectLayer::new())
        .service(hyper_client());
    let response = default_policy
        .oneshot(get(&format!("{first}/graphql")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        second_log.with_credentials(),
        0,
        "the default policy filters credentials across origins"
    );

    let no_filter = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(FollowRedirectLayer::with_policy(Limited::default()))
        .service(hyper_client());
    let response = no_filter
        .oneshot(get(&format!("{first}/graphql")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        second_log.with_credentials(),
        1,
        "without FilterCredentials the token reaches the other origin"
    );
    assert_eq!(first_log.with_credentials(), 2);
}

/// `reqwest::Client` follows redirects by itself (up to 10, by default) and
/// removes `Authorization` when the scheme, host or port changes, so a layer
/// over reqwest keeps the token off another origin too.
#[tokio::test]
async fn reqwest_following_a_redirect_by_itself_drops_the_credentials_across_origins() {
    let fake = start().await;
    let (first_log, second_log) = (Log::default(), Log::default());
    let second = ok_server(&second_log).await;
    let first = redirecting_server(&first_log, format!("{second}/graphql")).await;
    let layer = layer_for(&fake, &first);

    let request = reqwest::Request::new(
        reqwest::Method::GET,
        format!("{first}/graphql").parse().unwrap(),
    );
    let response = layer
        .layer(reqwest::Client::new())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.url().as_str(), format!("{second}/graphql"));
    let _ = response.bytes().await;
    assert_eq!(first_log.with_credentials(), 1);
    assert_eq!(second_log.all().len(), 1);
    assert_eq!(second_log.with_credentials(), 0, "{:?}", second_log.all());
}

/// The token requests themselves never follow a redirect: the default
/// reqwest client for token requests is built without redirects, so a Token
/// API answering 307 elsewhere never sends the secret there.
#[tokio::test]
async fn a_token_api_redirect_is_not_followed_with_the_secret() {
    let fake = start().await;
    let (first_log, second_log) = (Log::default(), Log::default());
    let second = ok_server(&second_log).await;
    let first = redirecting_server(&first_log, format!("{second}/oauth2/token")).await;
    let layer = token_layer(&fake)
        .token_url(format!("{first}/oauth2/token"))
        .build()
        .unwrap();

    let err = expect_err(layer.query(&fake).await);
    let Error::Token(token_error) = &err else {
        panic!("expected a token error, got {err:?}");
    };
    assert_eq!(
        token_error.status(),
        Some(StatusCode::TEMPORARY_REDIRECT),
        "{err}"
    );
    assert_eq!(first_log.all().len(), 1);
    assert!(second_log.all().is_empty(), "{:?}", second_log.all());
}
