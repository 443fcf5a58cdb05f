//! [`ResponseFuture`]: the state machine behind one request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::AUTHORIZATION;
use http::{HeaderValue, StatusCode};
use pin_project_lite::pin_project;
use secrecy::{ExposeSecret, SecretString};
use tower::{BoxError, Service};

use crate::body::{forbidden_from_body, parse_error_body};
use crate::error::{Error, Unauthorized};
use crate::layer::{Auth, Shared};
use crate::request::{AuthRequest, AuthResponse};
use crate::stats::Counters;
use crate::token::cache::{CachedToken, Invalidated, TokenCache, TokenWait};

pin_project! {
    /// The response future of [`PropelAuth`](crate::PropelAuth).
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        shared: Arc<Shared>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        // The request is out; on a 401 `replay` (if any) goes out again.
        // Parked requests are boxed to keep this future small: it is moved
        // on every request, and most requests never need them.
        Calling {
            #[pin]
            future: S::Future,
            replay: Option<Box<Parked<S, Req>>>,
            attempt: Attempt,
            keyed: Option<TokenCache>,
        },
        // No valid token: waiting on the cache's single flight. For a first
        // attempt the parked service is ready; for a 401 retry it is not.
        AwaitingToken {
            wait: TokenWait,
            parked: Option<Box<Parked<S, Req>>>,
            retry: bool,
            keyed: Option<TokenCache>,
        },
        // A 401 retry: making the inner service ready before sending again.
        ReadyingRetry {
            parked: Option<Box<Parked<S, Req>>>,
            header: HeaderValue,
            generation: u64,
            keyed: Option<TokenCache>,
        },
        // A 401 or 403: reading (a capped part of) the body for the message.
        ReadingBody {
            future: BoxFuture<'static, Bytes>,
            status: StatusCode,
            retried: bool,
            basic: bool,
            // Secrets to remove from the server's message by value.
            known: Vec<SecretString>,
        },
        Failed {
            error: Option<Error>,
        },
    }
}

/// A request and the service to send it on, set aside: a copy to send again
/// after a 401, or a request waiting for its token.
pub(crate) struct Parked<S, Req> {
    request: Req,
    service: S,
}

/// How the request in flight is authenticated.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Attempt {
    /// Not ours to handle: the caller's own header, or another origin.
    PassThrough,
    Basic,
    /// With the token of this generation; `retried` after a 401.
    Token {
        generation: u64,
        retried: bool,
    },
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    /// A request sent without a token: Basic credentials, or passed through.
    #[inline]
    pub(crate) fn calling(shared: Arc<Shared>, future: S::Future, attempt: Attempt) -> Self {
        let state = State::Calling {
            future,
            replay: None,
            attempt,
            keyed: None,
        };
        Self { state, shared }
    }

    /// Sends `request` with a cached token; `service` must be ready.
    /// `keyed` is the cache of the request's own token parameters, if any.
    #[inline]
    pub(crate) fn with_token(
        shared: Arc<Shared>,
        service: &mut S,
        request: Req,
        header: HeaderValue,
        generation: u64,
        keyed: Option<TokenCache>,
    ) -> Self
    where
        S: Clone,
        Req: AuthRequest,
    {
        let state = send(&shared, service, request, header, generation, false, keyed);
        Self { state, shared }
    }

    /// Waits for a token, then sends `request` on `service`, which is ready.
    pub(crate) fn awaiting_token(
        shared: Arc<Shared>,
        wait: TokenWait,
        request: Req,
        service: S,
        keyed: Option<TokenCache>,
    ) -> Self {
        let state = State::AwaitingToken {
            wait,
            parked: Some(Box::new(Parked { request, service })),
            retry: false,
            keyed,
        };
        Self { state, shared }
    }

    pub(crate) fn failed(shared: Arc<Shared>, error: Error) -> Self {
        let state = State::Failed { error: Some(error) };
        Self { state, shared }
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
            match this.state.as_mut().project() {
                StateProj::Calling {
                    future,
                    replay,
                    attempt,
                    keyed,
                } => {
                    let response =
                        ready!(future.poll(cx)).map_err(|err| Error::Service(err.into()))?;
                    let next = match (response.status(), *attempt) {
                        (_, Attempt::PassThrough) => return Poll::Ready(Ok(response)),
                        (
                            StatusCode::UNAUTHORIZED,
                            Attempt::Token {
                                generation,
                                retried: false,
                            },
                        ) => {
                            let cache = token_cache(this.shared, keyed.as_ref())
                                .expect("token attempts have a cache");
                            // The token sent, to keep it out of the error
                            // message, before it is dropped.
                            let sent = cache.current_of(generation);
                            // Drop the rejected token whether or not this
                            // request can go again: the next one needs a new token.
                            let invalidated = cache.invalidate(generation);
                            match replay.take() {
                                Some(parked) if invalidated != Invalidated::Throttled => {
                                    State::AwaitingToken {
                                        // The next token: there already if a concurrent
                                        // 401 refreshed it, else the one single flight.
                                        wait: cache.wait(),
                                        parked: Some(parked),
                                        retry: true,
                                        keyed: keyed.take(),
                                    }
                                }
                                _ => read_body(this.shared, sent, response, false),
                            }
                        }
                        (
                            StatusCode::UNAUTHORIZED,
                            Attempt::Token {
                                retried: true,
                                generation,
                            },
                        )
                        | (StatusCode::FORBIDDEN, Attempt::Token { generation, .. }) => {
                            let retried = response.status() == StatusCode::UNAUTHORIZED;
                            let sent = token_cache(this.shared, keyed.as_ref())
                                .and_then(|cache| cache.current_of(generation));
                            read_body(this.shared, sent, response, retried)
                        }
                        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Attempt::Basic) => {
                            read_body(this.shared, None, response, false)
                        }
                        _ => return Poll::Ready(Ok(response)),
                    };
                    this.state.set(next);
                }
                StateProj::AwaitingToken {
                    wait,
                    parked,
                    retry,
                    keyed,
                } => {
                    let cached = match ready!(Pin::new(wait).poll(cx)) {
                        Ok(cached) => cached,
                        Err(err) => return Poll::Ready(Err(Error::Token(err))),
                    };
                    let (header, generation) = (cached.header.clone(), cached.generation);
                    let next = if !*retry {
                        let Parked {
                            request,
                            mut service,
                        } = *parked.take().expect("polled after completion");
                        send(
                            this.shared,
                            &mut service,
                            request,
                            header,
                            generation,
                            *retry,
                            keyed.take(),
                        )
                    } else {
                        State::ReadyingRetry {
                            parked: parked.take(),
                            header,
                            generation,
                            keyed: keyed.take(),
                        }
                    };
                    this.state.set(next);
                }
                StateProj::ReadyingRetry {
                    parked,
                    header,
                    generation,
                    keyed,
                } => {
                    let waiting = parked.as_mut().expect("polled after completion");
                    ready!(waiting.service.poll_ready(cx))
                        .map_err(|err| Error::Service(err.into()))?;
                    let Parked {
                        request,
                        mut service,
                    } = *parked.take().expect("polled after completion");
                    let next = send(
                        this.shared,
                        &mut service,
                        request,
                        header.clone(),
                        *generation,
                        true,
                        keyed.take(),
                    );
                    this.state.set(next);
                }
                StateProj::ReadingBody {
                    future,
                    status,
                    retried,
                    basic,
                    known,
                } => {
                    let body = ready!(future.as_mut().poll(cx));
                    let known: Vec<&str> = known.iter().map(|s| s.expose_secret()).collect();
                    let counters = &this.shared.counters;
                    let error = if *status == StatusCode::FORBIDDEN {
                        Counters::bump(&counters.forbidden);
                        let forbidden = forbidden_from_body(&body, &known);
                        tracing::warn!(scope = ?forbidden.missing_scope(), policy = forbidden.is_policy(), "Propel answered 403");
                        Error::Forbidden(forbidden)
                    } else {
                        Counters::bump(&counters.unauthorized);
                        let message = parse_error_body(&body, &known).message.unwrap_or_default();
                        tracing::warn!(retried = *retried, "Propel answered 401");
                        Error::Unauthorized(Unauthorized::new(message, *retried, *basic))
                    };
                    return Poll::Ready(Err(error));
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
            }
        }
    }
}

/// Attaches the token's header and sends; `service` must be ready. Keeps a
/// copy of the request to send again after a 401, unless this already is
/// the retry.
#[inline]
fn send<S, Req>(
    shared: &Shared,
    service: &mut S,
    mut request: Req,
    header: HeaderValue,
    generation: u64,
    retried: bool,
    keyed: Option<TokenCache>,
) -> State<S, Req>
where
    S: Service<Req> + Clone,
    Req: AuthRequest,
{
    let replay = if retried || !shared.replay_unauthorized {
        None
    } else {
        request.try_clone().map(|copy| {
            Box::new(Parked {
                request: copy,
                service: service.clone(),
            })
        })
    };
    request.headers_mut().insert(AUTHORIZATION, header);
    if retried {
        Counters::bump(&shared.counters.unauthorized_retries);
    }
    State::Calling {
        future: service.call(request),
        replay,
        attempt: Attempt::Token {
            generation,
            retried,
        },
        keyed,
    }
}

/// The cache a token attempt's token came from.
fn token_cache<'a>(shared: &'a Shared, keyed: Option<&'a TokenCache>) -> Option<&'a TokenCache> {
    match (&shared.auth, keyed) {
        (_, Some(keyed)) => Some(keyed),
        (Auth::Token(store), None) => Some(store.default_cache()),
        (Auth::Basic(_), None) => None,
    }
}

/// Reads the body of a 401 or 403. The Application secret and the token
/// that was sent (when it is still cached to tell) are removed from what the
/// server says, whatever it echoes; token-shaped text is removed anyway.
fn read_body<S, Req>(
    shared: &Shared,
    sent: Option<Arc<CachedToken>>,
    response: S::Response,
    retried: bool,
) -> State<S, Req>
where
    S: Service<Req>,
    S::Response: AuthResponse,
{
    let mut known: Vec<SecretString> = shared.secret.iter().cloned().collect();
    known.extend(sent.map(|sent| sent.token().secret().clone()));
    State::ReadingBody {
        status: response.status(),
        future: response.read_body(),
        retried,
        basic: matches!(shared.auth, Auth::Basic(_)),
        known,
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
