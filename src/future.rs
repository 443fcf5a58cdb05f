//! [`ResponseFuture`]: the state machine behind one request, and the one
//! slow path it can take after the response, [`rejection`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::future::BoxFuture;
use http::header::{Entry as HeaderEntry, AUTHORIZATION};
use http::{HeaderMap, HeaderValue, StatusCode};
use pin_project_lite::pin_project;
use secrecy::ExposeSecret as _;
use tower::{BoxError, Service};

use crate::error::{Error, TokenError, Unauthorized};
use crate::error_body::{forbidden_from_body, parse_error_body};
use crate::message::sealed::Response as _;
use crate::message::{AuthRequest, AuthResponse};
use crate::stats::Counters;
use crate::token::cache::{Entry, TokenCache};

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
        // The request is out; `sent` is what a 401 or 403 on it needs
        // (`None`: passed through, not ours).
        Calling {
            #[pin]
            future: S::Future,
            sent: Option<Sent>,
        },
        // No usable credential: waiting on the cache's single flight, holding
        // the request and an inner service that is not ready (so no permit).
        AwaitingToken {
            wait: BoxFuture<'static, Result<Arc<Entry>, TokenError>>,
            parked: Option<Box<Parked<S, Req>>>,
        },
        // A credential is here: making the inner service ready to send.
        Readying {
            parked: Option<Box<Parked<S, Req>>>,
        },
        // A 401 or 403 becoming an error, or an error decided before sending.
        Failing {
            error: BoxFuture<'static, Error>,
        },
    }
}

/// What a request carried: the cache that served it and which of its
/// entries. The future owns this handle, so a 401 or 403 reaches the cache
/// (and the secrets to keep out of the message) whatever became of the layer.
pub(crate) struct Sent {
    pub(crate) cache: TokenCache,
    pub(crate) generation: u64,
}

/// A request set aside, with the service to send it on and the cache its
/// credential comes from. Boxed, to keep the common future small.
pub(crate) struct Parked<S, Req> {
    request: Req,
    service: S,
    cache: TokenCache,
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req>,
{
    /// Attaches `header` and sends `request`; `service` must be ready.
    pub(crate) fn send(service: &mut S, request: Req, header: HeaderValue, sent: Sent) -> Self
    where
        Req: AuthRequest,
    {
        Self {
            state: State::send(service, request, header, sent),
        }
    }

    /// A request sent without credentials.
    pub(crate) fn passed_through(future: S::Future) -> Self {
        Self {
            state: State::Calling { future, sent: None },
        }
    }

    /// Waits for `cache`'s credential, then readies `service` and sends.
    pub(crate) fn awaiting_token(cache: TokenCache, request: Req, service: S) -> Self {
        Self {
            state: State::await_token(Parked {
                request,
                service,
                cache,
            }),
        }
    }

    pub(crate) fn failed(error: Error) -> Self {
        Self {
            state: State::Failing {
                error: Box::pin(std::future::ready(error)),
            },
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
                StateProj::Calling { future, sent } => {
                    let response =
                        ready!(future.poll(cx)).map_err(|err| Error::Service(err.into()))?;
                    if !matches!(response.status().as_u16(), 401 | 403) {
                        return Poll::Ready(Ok(response));
                    }
                    match sent.take() {
                        Some(sent) => State::Failing {
                            error: Box::pin(rejection(response, sent)),
                        },
                        None => return Poll::Ready(Ok(response)),
                    }
                }
                StateProj::AwaitingToken { wait, parked } => {
                    ready!(wait.as_mut().poll(cx)).map_err(Error::Token)?;
                    State::Readying {
                        parked: parked.take(),
                    }
                }
                StateProj::Readying { parked } => {
                    let service = &mut parked.as_mut().expect("polled after completion").service;
                    ready!(service.poll_ready(cx)).map_err(|err| Error::Service(err.into()))?;
                    State::send_parked(*parked.take().expect("polled after completion"))
                }
                StateProj::Failing { error } => {
                    return Poll::Ready(Err(ready!(error.as_mut().poll(cx))))
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
    /// Attaches `header` and sends; `service` must be ready.
    fn send(service: &mut S, mut request: Req, header: HeaderValue, sent: Sent) -> Self
    where
        Req: AuthRequest,
    {
        let sent = attach(request.headers_mut(), header).then_some(sent);
        State::Calling {
            future: service.call(request),
            sent,
        }
    }

    fn await_token(parked: Parked<S, Req>) -> Self {
        State::AwaitingToken {
            wait: Box::pin(parked.cache.wait()),
            parked: Some(Box::new(parked)),
        }
    }

    /// Sends a request that waited, on its readied service, with the
    /// credential cached now: one that went stale, or that a 401 dropped,
    /// while the service got ready is never sent. Without one, it gives the
    /// readied service back and waits again.
    fn send_parked(parked: Parked<S, Req>) -> Self
    where
        S: Clone,
        Req: AuthRequest,
    {
        let Parked {
            request,
            mut service,
            cache,
        } = parked;
        match cache.cached() {
            Some((header, generation)) => {
                State::send(&mut service, request, header, Sent { cache, generation })
            }
            None => State::await_token(Parked {
                request,
                service: service.clone(),
                cache,
            }),
        }
    }
}

/// Puts `header` in as the `Authorization` header, unless the caller set
/// one; whether it went in. One hash for the insert and the check: `append`
/// says whether there was one (rarely), and then ours goes.
#[inline]
pub(crate) fn attach(headers: &mut HeaderMap, header: HeaderValue) -> bool {
    if headers.append(AUTHORIZATION, header) {
        take_back_last(headers);
        return false;
    }
    true
}

/// Removes the `Authorization` value appended last, keeping the caller's.
#[cold]
fn take_back_last(headers: &mut HeaderMap) {
    if let HeaderEntry::Occupied(entry) = headers.entry(AUTHORIZATION) {
        let mut values: Vec<HeaderValue> = entry.remove_entry_mult().1.collect();
        values.pop();
        for value in values {
            headers.append(AUTHORIZATION, value);
        }
    }
}

/// A 401 or 403 on a request that carried `sent`, as an [`Error`]: a 401
/// drops the rejected token (see [`TokenCache::invalidate`]); the body is
/// read, capped, for the server's message, with the Application secret and
/// the credential sent (and the one before it) removed from it by value.
pub(crate) async fn rejection<R: AuthResponse>(response: R, sent: Sent) -> Error {
    let Sent { cache, generation } = sent;
    let recent = cache.recent();
    let unauthorized = response.status() == StatusCode::UNAUTHORIZED;
    let reason = unauthorized.then(|| cache.invalidate(generation));
    let body = response.read_body().await;
    let config = cache.config();
    let tokens = recent.iter().flatten().map(|entry| entry.token.secret());
    let secrets = config.secret.iter().chain(tokens);
    let known: Vec<&str> = secrets.map(|secret| secret.expose_secret()).collect();
    match reason {
        Some(reason) => {
            Counters::bump(&config.counters.unauthorized);
            let message = parse_error_body(&body, &known).message;
            let unauthorized = Unauthorized::new(reason, message.unwrap_or_default());
            // One that the next attempt may cure is logged once, where its
            // token is dropped; per request only at debug.
            if unauthorized.is_transient() {
                tracing::debug!("Propel answered 401");
            } else {
                tracing::warn!("Propel answered 401; final");
            }
            Error::Unauthorized(unauthorized)
        }
        None => {
            Counters::bump(&config.counters.forbidden);
            let forbidden = forbidden_from_body(&body, &known);
            tracing::warn!(scope = ?forbidden.missing_scope(), policy = forbidden.is_policy(), "Propel answered 403");
            Error::Forbidden(forbidden)
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
