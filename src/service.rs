//! [`PropelAuth`]: the service. `poll_ready` passes through; `call` makes one
//! lookup, attaches what it found and starts the response future.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::HeaderValue;
use tower::{BoxError, Service};

use crate::error::{Error, InsecureTransport};
use crate::future::{ResponseFuture, Sent};
use crate::layer::Shared;
use crate::message::{AuthRequest, AuthResponse};
use crate::origin::Decision;
use crate::token::cache::{Entry, TokenCache};
use crate::TokenParams;

/// Adds Propel credentials to the requests of an inner HTTP service.
///
/// Made by [`PropelAuthLayer`](crate::PropelAuthLayer). Works over services of
/// `http::Request<B>` → `http::Response<RB>` (hyper-util's client, tower-http
/// stacks) and, with the `reqwest` feature, over `reqwest::Client`: exactly
/// the implementors of [`AuthRequest`] and [`AuthResponse`]. Its errors are
/// [`Error`]s.
///
/// ```
/// use std::convert::Infallible;
/// use tower::{Layer, ServiceExt};
/// use tower_propel_auth::{Credentials, PropelAuthLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = PropelAuthLayer::basic(Credentials::new("APP01ID", "secret")?);
/// // Any tower HTTP service; this one answers with the header it was sent.
/// let echo = tower::service_fn(|request: http::Request<String>| async move {
///     let authorization = request.headers()["authorization"].to_str().unwrap().to_owned();
///     Ok::<_, Infallible>(http::Response::new(authorization))
/// });
/// let request = http::Request::post("https://api.us-east-2.propeldata.com/graphql")
///     .body(String::new())?;
/// let response = layer.layer(echo).oneshot(request).await?;
/// assert_eq!(response.body(), "Basic QVBQMDFJRDpzZWNyZXQ=");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PropelAuth<S> {
    inner: S,
    pub(crate) shared: Arc<Shared>,
    /// A tenant view's parameters.
    params: Option<TokenParams>,
    /// The layer's default cache, and its current entry revalidated with one
    /// relaxed atomic load of the shared pointer (arc-swap's `Cache`): no
    /// reference counting while the entry is unchanged.
    default: TokenCache,
    current: arc_swap::Cache<DefaultSlot, Option<Arc<Entry>>>,
}

/// Lets arc-swap's `Cache` reach the default cache's entry.
#[derive(Clone)]
struct DefaultSlot(TokenCache);

impl std::ops::Deref for DefaultSlot {
    type Target = arc_swap::ArcSwapOption<Entry>;

    fn deref(&self) -> &Self::Target {
        self.0.current_slot()
    }
}

/// What a request gets, decided once.
pub(crate) enum Route {
    /// Not ours to touch: another origin, or the caller's own `Authorization`.
    PassThrough,
    /// An allowed host over plain HTTP: nothing is sent.
    Insecure(String),
    /// Attach this header (unless the caller set its own) and keep what a
    /// 401 or 403 will need.
    Attach(HeaderValue, Sent),
    /// No usable credential yet: wait for this cache's.
    Wait(TokenCache),
}

impl Shared {
    /// Where `request` goes, which cache serves it and whether that cache's
    /// credential is usable: one pass, for services and the middleware alike.
    /// Its parameters are its own, else `params`; `default` reads the layer's
    /// default cache (a service reads it faster). Whether the caller set its
    /// own header is known when the header goes in (`future::attach`).
    #[inline]
    pub(crate) fn route<Req: AuthRequest>(
        &self,
        request: &mut Req,
        params: Option<&TokenParams>,
        default: impl FnOnce() -> (TokenCache, Option<(HeaderValue, u64)>),
    ) -> Route {
        let (cache, cached) = match request.decide(&self.origins) {
            Decision::PassThrough => return Route::PassThrough,
            Decision::Insecure(origin) => return Route::Insecure(origin),
            Decision::Attach => {
                let params = request.token_params().or(params);
                match params.and_then(|params| self.store.keyed(params)) {
                    Some(keyed) => {
                        let cached = keyed.cached();
                        (keyed, cached)
                    }
                    None => default(),
                }
            }
        };
        match cached {
            Some((header, generation)) => Route::Attach(header, Sent { cache, generation }),
            // A request with its own credentials never waits for ours.
            None if request.headers_mut().contains_key(AUTHORIZATION) => Route::PassThrough,
            None => Route::Wait(cache),
        }
    }
}

impl<S> PropelAuth<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, params: Option<TokenParams>) -> Self {
        let default = shared.store.default_cache().clone();
        let current = arc_swap::Cache::new(DefaultSlot(default.clone()));
        Self {
            inner,
            shared,
            params,
            default,
            current,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// For `http::Request` and (feature `reqwest`) `reqwest::Request`: the
/// implementors of [`AuthRequest`].
impl<S, Req> Service<Req> for PropelAuth<S>
where
    Req: AuthRequest,
    S: Service<Req> + Clone,
    S::Response: AuthResponse,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|err| Error::Service(err.into()))
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        let route = self.shared.route(&mut request, self.params.as_ref(), || {
            let entry = self.current.load().as_deref();
            let cached = entry.and_then(|entry| self.default.check(entry));
            (self.default.clone(), cached)
        });
        match route {
            Route::Attach(header, sent) => {
                ResponseFuture::send(&mut self.inner, request, header, sent)
            }
            Route::PassThrough => ResponseFuture::passed_through(self.inner.call(request)),
            Route::Insecure(origin) => {
                ResponseFuture::failed(Error::InsecureTransport(InsecureTransport::new(origin)))
            }
            Route::Wait(cache) => {
                // Give back what `poll_ready` reserved (a concurrency permit,
                // a buffer slot) while the request waits: the future readies
                // a clone once the credential is here.
                let unready = self.inner.clone();
                self.inner = unready.clone();
                ResponseFuture::awaiting_token(cache, request, unready)
            }
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for PropelAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PropelAuth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::header::AUTHORIZATION;
    use http_body_util::Full;
    use tower::{Layer, ServiceExt};

    use crate::token::test_source::{layer, request, ScriptedSource, HOUR};
    use crate::{Credentials, PropelAuthLayer};

    /// An inner service answering with every `Authorization` value it got.
    fn echo_authorizations() -> impl tower::Service<
        http::Request<Full<Bytes>>,
        Response = http::Response<String>,
        Error = Infallible,
    > + Clone {
        tower::service_fn(|request: http::Request<Full<Bytes>>| async move {
            let values: Vec<&str> = request
                .headers()
                .get_all(AUTHORIZATION)
                .iter()
                .map(|value| value.to_str().unwrap())
                .collect();
            Ok(http::Response::new(values.join(" | ")))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_own_authorization_values_are_kept_as_they_were() {
        let source = ScriptedSource::tokens(std::time::Duration::ZERO, HOUR);
        let token_layer = layer(&source);
        // Warm the cache, so the caller's request meets a usable token.
        let warm = token_layer
            .layer(echo_authorizations())
            .oneshot(request())
            .await;
        assert_eq!(warm.unwrap().into_body(), "Bearer token1");
        let basic = PropelAuthLayer::basic(Credentials::new("APP", "secret").unwrap());
        for layer in [token_layer, basic] {
            let mut own = request();
            own.headers_mut()
                .append(AUTHORIZATION, "Bearer mine".parse().unwrap());
            own.headers_mut()
                .append(AUTHORIZATION, "Basic also-mine".parse().unwrap());
            let response = layer
                .layer(echo_authorizations())
                .oneshot(own)
                .await
                .unwrap();
            assert_eq!(response.into_body(), "Bearer mine | Basic also-mine");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_with_its_own_header_never_waits_for_a_token() {
        let source = ScriptedSource::tokens(std::time::Duration::from_secs(5), HOUR);
        let layer = layer(&source);
        let mut own = request();
        own.headers_mut()
            .insert(AUTHORIZATION, "Bearer mine".parse().unwrap());
        let response = layer
            .layer(echo_authorizations())
            .oneshot(own)
            .await
            .unwrap();
        assert_eq!(response.into_body(), "Bearer mine");
        assert_eq!(source.calls(), 0);
    }
}
