//! [`PropelAuth`]: the service. `poll_ready` passes through; `call` makes one
//! lookup, attaches what it found and starts the response future.

use std::fmt;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::HeaderValue;
use tower::{BoxError, Service};

use crate::error::{Error, InsecureTransport};
use crate::future::{ResponseFuture, Sent};
use crate::layer::{Auth, Shared};
use crate::message::{AuthRequest, AuthResponse};
use crate::origin::Decision;
use crate::token::cache::{CachedToken, TokenCache};
use crate::token::store::TokenStore;

/// Adds Propel credentials to the requests of an inner HTTP service.
///
/// Made by [`PropelAuthLayer`](crate::PropelAuthLayer). Works over services of
/// `http::Request<B>` → `http::Response<RB>` (hyper-util's client, tower-http
/// stacks) and, with the `reqwest` feature, over `reqwest::Client`. Its
/// errors are [`Error`]s.
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
    shared: Arc<Shared>,
    attach: Attach,
}

/// This service's side of the layer's credentials.
#[derive(Clone)]
enum Attach {
    Basic(HeaderValue),
    Token {
        store: Arc<TokenStore>,
        default: DefaultToken,
    },
}

/// The default cache's current token, revalidated with one relaxed atomic
/// load of the shared pointer (arc-swap's `Cache`): no reference counting
/// while the token is unchanged.
#[derive(Clone)]
struct DefaultToken {
    cache: TokenCache,
    current: arc_swap::Cache<Current, Option<Arc<CachedToken>>>,
}

/// Lets arc-swap's `Cache` reach the default cache's token.
#[derive(Clone)]
struct Current(TokenCache);

impl std::ops::Deref for Current {
    type Target = arc_swap::ArcSwapOption<CachedToken>;

    fn deref(&self) -> &Self::Target {
        self.0.current_slot()
    }
}

/// What a request gets, decided once.
enum Lookup {
    /// Not ours to touch: another origin, or the caller's own `Authorization`.
    PassThrough,
    /// An allowed host over plain HTTP: nothing is sent.
    Insecure(String),
    /// Attach this header, unless the caller set its own; what a 401 or 403
    /// will need.
    Attach(HeaderValue, Sent),
    /// No usable token yet: wait for this cache's.
    Wait(TokenCache),
}

impl<S> PropelAuth<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        let attach = match &shared.auth {
            Auth::Basic { header, .. } => Attach::Basic(header.clone()),
            Auth::Token(store) => {
                let cache = store.default_cache().clone();
                let current = arc_swap::Cache::new(Current(cache.clone()));
                Attach::Token {
                    store: Arc::clone(store),
                    default: DefaultToken { cache, current },
                }
            }
        };
        Self {
            inner,
            shared,
            attach,
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

    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    #[inline]
    fn start<Req>(&mut self, mut request: Req) -> ResponseFuture<S, Req>
    where
        S: Service<Req> + Clone,
        Req: AuthRequest,
    {
        match self.lookup(&mut request) {
            Lookup::Attach(header, sent) => {
                ResponseFuture::send(&mut self.inner, request, header, sent)
            }
            Lookup::PassThrough => ResponseFuture::passed_through(self.inner.call(request)),
            Lookup::Insecure(origin) => {
                ResponseFuture::failed(Error::InsecureTransport(InsecureTransport::new(origin)))
            }
            Lookup::Wait(cache) => {
                // Give back what `poll_ready` reserved (a concurrency permit,
                // a buffer slot) while the request waits: the future readies
                // a clone once the token is here.
                let unready = self.inner.clone();
                self.inner = unready.clone();
                ResponseFuture::awaiting_token(cache, request, unready)
            }
        }
    }

    /// Where the request goes, which cache serves it and whether that
    /// cache's token is usable: one pass. Whether the caller set its own
    /// header is known when the header goes in (`ResponseFuture::send`).
    #[inline]
    fn lookup<Req: AuthRequest>(&mut self, request: &mut Req) -> Lookup {
        match request.decide(&self.shared.origins) {
            Decision::Attach => {}
            Decision::PassThrough => return Lookup::PassThrough,
            Decision::Insecure(origin) => return Lookup::Insecure(origin),
        }
        let layer = self.shared.id;
        let (header, sent) = match &mut self.attach {
            Attach::Basic(header) => (header.clone(), Sent::Basic { layer }),
            Attach::Token { store, default } => {
                let keyed = keyed_cache(store, request);
                let cached = match &keyed {
                    Some(cache) => cache.cached(),
                    None => default.cached(),
                };
                match cached {
                    Some((header, generation)) => {
                        // A replaying layer keeps a copy, which needs the cache at hand.
                        let keyed = keyed.or_else(|| {
                            default.cache.config().replay.then(|| default.cache.clone())
                        });
                        (header, Sent::token(layer, keyed, generation))
                    }
                    None if request.headers_mut().contains_key(AUTHORIZATION) => {
                        return Lookup::PassThrough
                    }
                    None => return Lookup::Wait(keyed.unwrap_or_else(|| default.cache.clone())),
                }
            }
        };
        Lookup::Attach(header, sent)
    }
}

impl DefaultToken {
    #[inline]
    fn cached(&mut self) -> Option<(HeaderValue, u64)> {
        let token = self.current.load().as_deref()?;
        self.cache.check(token)
    }
}

/// The cache of the token parameters a request carries, if they are not the
/// layer's defaults.
#[inline]
fn keyed_cache<Req: AuthRequest>(store: &TokenStore, request: &Req) -> Option<TokenCache> {
    store.keyed(request.token_params()?)
}

impl<S, B, RB> Service<http::Request<B>> for PropelAuth<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    http::Response<RB>: AuthResponse,
    B: 'static,
{
    type Response = http::Response<RB>;
    type Error = Error;
    type Future = ResponseFuture<S, http::Request<B>>;

    #[inline]
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|err| Error::Service(err.into()))
    }

    #[inline]
    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.start(request)
    }
}

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
impl<S> Service<reqwest::Request> for PropelAuth<S>
where
    S: Service<reqwest::Request, Response = reqwest::Response> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = reqwest::Response;
    type Error = Error;
    type Future = ResponseFuture<S, reqwest::Request>;

    #[inline]
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|err| Error::Service(err.into()))
    }

    #[inline]
    fn call(&mut self, request: reqwest::Request) -> Self::Future {
        self.start(request)
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
