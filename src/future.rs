//! [`ResponseFuture`]: the state machine behind one request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{Entry, AUTHORIZATION};
use http::{HeaderMap, HeaderValue, StatusCode};
use pin_project_lite::pin_project;
use secrecy::{ExposeSecret, SecretString};
use tower::{BoxError, Service};

use crate::error::{Error, Unauthorized};
use crate::error_body::{forbidden_from_body, parse_error_body};
use crate::layer::Auth;
use crate::message::{AuthRequest, AuthResponse};
use crate::registry::{self, LayerId};
use crate::stats::Counters;
use crate::token::cache::{CachedToken, TokenCache, TokenWait};

pin_project! {
    /// The response future of [`PropelAuth`](crate::PropelAuth).
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        // The request is out. `sent` says what a 401 or 403 needs (nothing
        // when the request was passed through); `replay` is a copy to send
        // again after a 401, when the layer replays.
        Calling {
            #[pin]
            future: S::Future,
            sent: Option<Sent>,
            replay: Option<Box<Parked<S, Req>>>,
        },
        // No usable token: waiting on the cache's single flight (joined at
        // the first poll, on the runtime that drives this future), holding
        // the request and an inner service that is not ready (so no permit).
        AwaitingToken {
            wait: Option<TokenWait>,
            parked: Option<Box<Parked<S, Req>>>,
            retry: bool,
        },
        // A token is here: making the inner service ready to send.
        Readying {
            parked: Option<Box<Parked<S, Req>>>,
            retry: bool,
        },
        // A 401 or 403: reading (a capped part of) the body for the message.
        ReadingBody {
            body: BoxFuture<'static, Bytes>,
            rejected: Option<Rejected>,
        },
        Failed {
            error: Option<Error>,
        },
    }
}

/// How a request was authenticated: what a 401 or 403 on it needs. No
/// reference is held on the common path: the layer is found by its id (see
/// `registry`) when a 401 or 403 comes.
pub(crate) enum Sent {
    Basic {
        layer: LayerId,
    },
    Token {
        cache: CacheRef,
        generation: u64,
        /// This is the layer's own second attempt, after a 401.
        retried: bool,
    },
}

/// The cache a token came from.
pub(crate) enum CacheRef {
    /// The default cache of this layer.
    Default(LayerId),
    /// A cache at hand: a request's own parameters', or one a slow path holds.
    Held(TokenCache),
}

impl CacheRef {
    /// The cache, unless its layer was dropped.
    fn resolve(&self) -> Option<TokenCache> {
        match self {
            CacheRef::Held(cache) => Some(cache.clone()),
            CacheRef::Default(layer) => match &registry::find(*layer)?.auth {
                Auth::Token(store) => Some(store.default_cache().clone()),
                Auth::Basic { .. } => None,
            },
        }
    }
}

impl Sent {
    /// A token from `keyed`, or else from the layer's default cache.
    #[inline]
    pub(crate) fn token(layer: LayerId, keyed: Option<TokenCache>, generation: u64) -> Self {
        let cache = match keyed {
            Some(cache) => CacheRef::Held(cache),
            None => CacheRef::Default(layer),
        };
        Sent::Token {
            cache,
            generation,
            retried: false,
        }
    }
}

/// A request set aside with the service to send it on and the cache its
/// token comes from: a request waiting for its token, or a copy to send
/// again after a 401. Boxed, to keep the common future small.
pub(crate) struct Parked<S, Req> {
    request: Req,
    service: S,
    cache: TokenCache,
}

/// A 401 or 403, waiting for its body to become an error.
pub(crate) struct Rejected {
    status: StatusCode,
    /// The layer's counters, unless it was dropped.
    counters: Option<Arc<Counters>>,
    /// Secrets to remove from the server's message by value: the
    /// Application secret, the token sent.
    known: Vec<SecretString>,
    basic: bool,
    retried: bool,
    transient: bool,
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    /// Attaches `header` and sends `request`; `service` must be ready.
    #[inline]
    pub(crate) fn send(service: &mut S, request: Req, header: HeaderValue, sent: Sent) -> Self
    where
        S: Clone,
        Req: AuthRequest,
    {
        Self {
            state: State::send(service, request, header, sent),
        }
    }

    /// A request sent without credentials.
    #[inline]
    pub(crate) fn passed_through(future: S::Future) -> Self {
        Self {
            state: State::Calling {
                future,
                sent: None,
                replay: None,
            },
        }
    }

    /// Waits for `cache`'s token, then readies `service` and sends.
    pub(crate) fn awaiting_token(cache: TokenCache, request: Req, service: S) -> Self {
        Self {
            state: State::AwaitingToken {
                wait: None,
                parked: Some(Box::new(Parked {
                    request,
                    service,
                    cache,
                })),
                retry: false,
            },
        }
    }

    pub(crate) fn failed(error: Error) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    S::Response: AuthResponse,
    Req: AuthRequest,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Calling {
                    future,
                    sent,
                    replay,
                } => {
                    let response =
                        ready!(future.poll(cx)).map_err(|err| Error::Service(err.into()))?;
                    let status = response.status();
                    if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
                        return Poll::Ready(Ok(response));
                    }
                    let Some(sent) = sent.take() else {
                        return Poll::Ready(Ok(response)); // passed through: not ours
                    };
                    if status == StatusCode::UNAUTHORIZED {
                        State::on_unauthorized(sent, replay.take(), response)
                    } else {
                        State::on_forbidden(sent, response)
                    }
                }
                StateProj::AwaitingToken {
                    wait,
                    parked,
                    retry,
                } => {
                    let waiting = parked.as_ref().expect("polled after completion");
                    let wait = wait.get_or_insert_with(|| waiting.cache.wait());
                    ready!(Pin::new(wait).poll(cx)).map_err(Error::Token)?;
                    State::Readying {
                        parked: parked.take(),
                        retry: *retry,
                    }
                }
                StateProj::Readying { parked, retry } => {
                    let waiting = parked.as_mut().expect("polled after completion");
                    ready!(waiting.service.poll_ready(cx))
                        .map_err(|err| Error::Service(err.into()))?;
                    let parked = parked.take().expect("polled after completion");
                    State::send_parked(*parked, *retry)
                }
                StateProj::ReadingBody { body, rejected } => {
                    let body = ready!(body.as_mut().poll(cx));
                    let rejected = rejected.take().expect("polled after completion");
                    return Poll::Ready(Err(rejected.into_error(&body)));
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
            };
            this.state.set(next);
        }
    }
}

impl<S, Req> State<S, Req>
where
    S: Service<Req>,
{
    /// Attaches `header` and sends; `service` must be ready. When the layer
    /// replays after a 401, keeps a copy first, without the header (unless
    /// this already is the replay).
    #[inline]
    fn send(service: &mut S, mut request: Req, header: HeaderValue, sent: Sent) -> Self
    where
        S: Clone,
        Req: AuthRequest,
    {
        let replay = match &sent {
            Sent::Token {
                cache,
                retried: false,
                ..
            } => replay_copy(service, &request, cache),
            _ => None,
        };
        // One hash for the insert and the check for the caller's own header:
        // `append` says whether there was one (rarely), and then ours goes.
        if request.headers_mut().append(AUTHORIZATION, header) {
            take_back_last(request.headers_mut());
            return State::Calling {
                future: service.call(request),
                sent: None,
                replay: None,
            };
        }
        State::Calling {
            future: service.call(request),
            sent: Some(sent),
            replay,
        }
    }

    /// Sends a request that waited, on its readied service, with the token
    /// cached now: one that went stale or that a 401 dropped while the
    /// service got ready is never sent. Without one, it gives the readied
    /// service back and waits again.
    fn send_parked(parked: Parked<S, Req>, retry: bool) -> Self
    where
        S: Clone,
        Req: AuthRequest,
    {
        let Parked {
            request,
            mut service,
            cache,
        } = parked;
        let Some((header, generation)) = cache.cached() else {
            let unready = service.clone();
            drop(service);
            return State::AwaitingToken {
                wait: None,
                parked: Some(Box::new(Parked {
                    request,
                    service: unready,
                    cache,
                })),
                retry,
            };
        };
        if retry {
            Counters::bump(&cache.config().counters.unauthorized_retries);
        }
        let sent = Sent::Token {
            cache: CacheRef::Held(cache),
            generation,
            retried: retry,
        };
        State::send(&mut service, request, header, sent)
    }

    /// A 401: drops the rejected token if it is still the cached one, then
    /// sends the replay copy with a fresh token, or fails with
    /// [`Error::Unauthorized`], transient when a fresh token may cure it.
    fn on_unauthorized(
        sent: Sent,
        replay: Option<Box<Parked<S, Req>>>,
        response: S::Response,
    ) -> Self
    where
        S::Response: AuthResponse,
    {
        let status = StatusCode::UNAUTHORIZED;
        let (cache, generation, retried) = match sent {
            Sent::Basic { layer } => {
                return State::read_body(response, Rejected::basic(layer, status))
            }
            Sent::Token {
                cache,
                generation,
                retried,
            } => (cache, generation, retried),
        };
        let Some(cache) = cache.resolve() else {
            return State::read_body(response, Rejected::orphan(status));
        };
        // The token sent, to keep it out of the message, before it is dropped.
        let sent_token = cache.token_of(generation);
        let may_cure =
            !retried && cache.config().renewable && cache.invalidate(generation).may_cure();
        match replay {
            Some(parked) if may_cure => State::AwaitingToken {
                wait: None,
                parked: Some(parked),
                retry: true,
            },
            _ => {
                let rejected = Rejected {
                    retried,
                    transient: may_cure,
                    ..Rejected::token(&cache, sent_token, status)
                };
                State::read_body(response, rejected)
            }
        }
    }

    /// A 403: read the body for the missing scope or the policy problem.
    fn on_forbidden(sent: Sent, response: S::Response) -> Self
    where
        S::Response: AuthResponse,
    {
        let status = StatusCode::FORBIDDEN;
        let rejected = match sent {
            Sent::Basic { layer } => Rejected::basic(layer, status),
            Sent::Token {
                cache, generation, ..
            } => match cache.resolve() {
                Some(cache) => Rejected::token(&cache, cache.token_of(generation), status),
                None => Rejected::orphan(status),
            },
        };
        State::read_body(response, rejected)
    }

    fn read_body(response: S::Response, rejected: Rejected) -> Self
    where
        S::Response: AuthResponse,
    {
        State::ReadingBody {
            body: response.read_body(),
            rejected: Some(rejected),
        }
    }
}

/// Removes the `Authorization` value appended last, keeping the caller's.
#[cold]
fn take_back_last(headers: &mut HeaderMap) {
    if let Entry::Occupied(entry) = headers.entry(AUTHORIZATION) {
        let mut values: Vec<HeaderValue> = entry.remove_entry_mult().1.collect();
        values.pop();
        for value in values {
            headers.append(AUTHORIZATION, value);
        }
    }
}

/// A copy of `request` to send again after a 401, when the layer replays and
/// the body can be copied. A replaying layer holds the cache of every token
/// it sends (`CacheRef::Held`); a reference by layer id means no replay.
fn replay_copy<S: Clone, Req: AuthRequest>(
    service: &S,
    request: &Req,
    cache: &CacheRef,
) -> Option<Box<Parked<S, Req>>> {
    let CacheRef::Held(cache) = cache else {
        return None;
    };
    if !cache.config().replay {
        return None;
    }
    let copy = request.try_clone()?;
    Some(Box::new(Parked {
        request: copy,
        service: service.clone(),
        cache: cache.clone(),
    }))
}

impl Rejected {
    fn basic(layer: LayerId, status: StatusCode) -> Self {
        let Some(shared) = registry::find(layer) else {
            return Self::orphan(status);
        };
        let known = match &shared.auth {
            Auth::Basic { secret, .. } => vec![secret.clone()],
            Auth::Token(_) => Vec::new(),
        };
        Self {
            counters: Some(Arc::clone(&shared.counters)),
            known,
            basic: true,
            ..Self::orphan(status)
        }
    }

    fn token(cache: &TokenCache, sent: Option<Arc<CachedToken>>, status: StatusCode) -> Self {
        let config = cache.config();
        let mut known: Vec<SecretString> = config.secret.iter().cloned().collect();
        known.extend(sent.map(|sent| sent.token.secret().clone()));
        Self {
            counters: Some(Arc::clone(&config.counters)),
            known,
            ..Self::orphan(status)
        }
    }

    /// A request whose layer was dropped before its answer came: nothing to
    /// count or drop, only the message to read.
    fn orphan(status: StatusCode) -> Self {
        Self {
            status,
            counters: None,
            known: Vec::new(),
            basic: false,
            retried: false,
            transient: false,
        }
    }

    fn into_error(self, body: &[u8]) -> Error {
        let known: Vec<&str> = self.known.iter().map(|s| s.expose_secret()).collect();
        let count = |counter: fn(&Counters) -> &AtomicU64| {
            if let Some(counters) = &self.counters {
                Counters::bump(counter(counters));
            }
        };
        if self.status == StatusCode::FORBIDDEN {
            count(|c| &c.forbidden);
            let forbidden = forbidden_from_body(body, &known);
            tracing::warn!(scope = ?forbidden.missing_scope(), policy = forbidden.is_policy(), "Propel answered 403");
            Error::Forbidden(forbidden)
        } else {
            count(|c| &c.unauthorized);
            let message = parse_error_body(body, &known).message.unwrap_or_default();
            tracing::warn!(
                retried = self.retried,
                transient = self.transient,
                "Propel answered 401"
            );
            Error::Unauthorized(Unauthorized::new(
                message,
                self.retried,
                self.basic,
                self.transient,
            ))
        }
    }
}

impl<S, Req> fmt::Debug for ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
