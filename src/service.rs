//! [`PropelAuth`]: the service. `poll_ready` passes through; `call` attaches
//! credentials.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use tower::{BoxError, Service};

use crate::error::{Error, InsecureTransport};
use crate::future::{Attempt, ResponseFuture};
use crate::layer::{Auth, Shared};
use crate::origin::Decision;
use crate::request::{AuthRequest, AuthResponse};
use crate::token::cache::CacheHandle;

/// Adds Propel credentials to the requests of an inner HTTP service.
///
/// Made by [`PropelAuthLayer`](crate::PropelAuthLayer). Works over services of
/// `http::Request<B>` → `http::Response<RB>` (hyper-util's client, tower-http
/// stacks) and, with the `reqwest` feature, over `reqwest::Client`.
///
/// A 401 on a request that carried a token drops that token (if it is still
/// the cached one), and the request goes out once more with a fresh token when
/// its body can be replayed (`Full<Bytes>`, `Bytes`, `String`, `Vec<u8>`,
/// `Empty`, `&'static str`, or a reqwest body that `try_clone` can copy).
#[derive(Clone)]
pub struct PropelAuth<S> {
    inner: S,
    shared: Arc<Shared>,
    /// This service's view of the default token cache, made at its first
    /// token request.
    token: Option<CacheHandle>,
}

impl<S> PropelAuth<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            shared,
            token: None,
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
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    fn start<Req>(&mut self, mut request: Req) -> ResponseFuture<S, Req>
    where
        S: Service<Req> + Clone,
        Req: AuthRequest,
    {
        let shared = Arc::clone(&self.shared);
        let decision = if request.headers().contains_key(AUTHORIZATION) {
            // The caller chose its own credentials: not ours to touch.
            Decision::PassThrough
        } else {
            request.decide(&shared.origins)
        };
        match decision {
            Decision::Attach => {}
            Decision::PassThrough => {
                let future = self.inner.call(request);
                return ResponseFuture::calling(shared, future, Attempt::PassThrough);
            }
            Decision::Insecure(origin) => {
                return ResponseFuture::failed(
                    shared,
                    Error::InsecureTransport(InsecureTransport::new(origin)),
                );
            }
        }
        match &shared.auth {
            Auth::Basic(header) => {
                request.headers_mut().insert(AUTHORIZATION, header.clone());
                let future = self.inner.call(request);
                ResponseFuture::calling(shared, future, Attempt::Basic)
            }
            Auth::Token(store) => {
                // Requests with token parameters of their own use the cache
                // for those; the rest use this service's handle on the default.
                let keyed = match request.token_params() {
                    None => None,
                    Some(params) => match store.cache_for(Some(params)) {
                        Cow::Owned(keyed) => Some(keyed),
                        Cow::Borrowed(_) => None,
                    },
                };
                let cached = match &keyed {
                    Some(keyed) => keyed.cached(),
                    None => self
                        .token
                        .get_or_insert_with(|| store.default_cache().handle())
                        .cached(),
                };
                match cached {
                    Some((header, generation)) => ResponseFuture::with_token(
                        shared,
                        &mut self.inner,
                        request,
                        header,
                        generation,
                        keyed,
                    ),
                    None => {
                        let wait = keyed.as_ref().unwrap_or(store.default_cache()).wait();
                        // The future waits for the token and then calls the
                        // service that was made ready; leave a clone behind.
                        let clone = self.inner.clone();
                        let service = std::mem::replace(&mut self.inner, clone);
                        ResponseFuture::awaiting_token(shared, wait, request, service, keyed)
                    }
                }
            }
        }
    }
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
