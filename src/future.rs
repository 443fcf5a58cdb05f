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
use tower::{BoxError, Service};

use crate::body::{excerpt, forbidden_from_body, parse_error_body};
use crate::error::{Error, Unauthorized};
use crate::layer::{Auth, Shared};
use crate::request::{AuthRequest, AuthResponse};
use crate::stats::Counters;
use crate::token::cache::{Invalidated, TokenWait};

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
        Calling {
            #[pin]
            future: S::Future,
            replay: Option<Replay<S, Req>>,
            attempt: Attempt,
        },
        // No valid token: waiting on the cache's single flight. `ready` says
        // whether `service` has been made ready (it has for a first attempt).
        AwaitingToken {
            wait: TokenWait,
            request: Option<Req>,
            service: Option<S>,
            ready: bool,
            retry: bool,
        },
        // A 401 retry: making the inner service ready before sending again.
        ReadyingRetry {
            service: Option<S>,
            request: Option<Req>,
            header: HeaderValue,
            generation: u64,
        },
        // A 401 or 403: reading (a capped part of) the body for the message.
        ReadingBody {
            future: BoxFuture<'static, Bytes>,
            status: StatusCode,
            retried: bool,
            basic: bool,
        },
        Failed {
            error: Option<Error>,
        },
    }
}

/// A copy of the request and a clone of the service, to send again after a 401.
pub(crate) struct Replay<S, Req> {
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
    pub(crate) fn calling(
        shared: Arc<Shared>,
        future: S::Future,
        replay: Option<(Req, S)>,
        attempt: Attempt,
    ) -> Self {
        let replay = replay.map(|(request, service)| Replay { request, service });
        Self {
            state: State::Calling {
                future,
                replay,
                attempt,
            },
            shared,
        }
    }

    pub(crate) fn awaiting_token(
        shared: Arc<Shared>,
        wait: TokenWait,
        request: Req,
        service: S,
    ) -> Self {
        Self {
            state: State::AwaitingToken {
                wait,
                request: Some(request),
                service: Some(service),
                ready: true,
                retry: false,
            },
            shared,
        }
    }

    pub(crate) fn failed(shared: Arc<Shared>, error: Error) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            shared,
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
            match this.state.as_mut().project() {
                StateProj::Calling {
                    future,
                    replay,
                    attempt,
                } => {
                    let response =
                        ready!(future.poll(cx)).map_err(|err| Error::Service(err.into()))?;
                    let attempt = *attempt;
                    let status = response.status();
                    match (status, attempt) {
                        (_, Attempt::PassThrough) => return Poll::Ready(Ok(response)),
                        (
                            StatusCode::UNAUTHORIZED,
                            Attempt::Token {
                                generation,
                                retried: false,
                            },
                        ) => {
                            if let Some(Replay { request, service }) = replay.take() {
                                if let Some(next) =
                                    retry_after_401(this.shared, generation, request, service)
                                {
                                    this.state.set(next);
                                    continue;
                                }
                            }
                            this.state.set(read_body(response, false, false));
                        }
                        (StatusCode::UNAUTHORIZED, Attempt::Token { retried: true, .. }) => {
                            this.state.set(read_body(response, true, false));
                        }
                        (StatusCode::UNAUTHORIZED, Attempt::Basic) => {
                            this.state.set(read_body(response, false, true));
                        }
                        (StatusCode::FORBIDDEN, _) => {
                            this.state.set(read_body(response, false, false))
                        }
                        _ => return Poll::Ready(Ok(response)),
                    }
                }
                StateProj::AwaitingToken {
                    wait,
                    request,
                    service,
                    ready,
                    retry,
                } => {
                    let cached = match ready!(Pin::new(wait).poll(cx)) {
                        Ok(cached) => cached,
                        Err(err) => return Poll::Ready(Err(Error::Token(err))),
                    };
                    let request = request.take().expect("polled after completion");
                    let service = service.take().expect("polled after completion");
                    let generation = cached.generation;
                    let header = cached.header.clone();
                    if *retry {
                        Counters::bump(&this.shared.counters.unauthorized_retries);
                    }
                    if *ready {
                        let next = send(this.shared, service, request, header, generation, *retry);
                        this.state.set(next);
                    } else {
                        this.state.set(State::ReadyingRetry {
                            service: Some(service),
                            request: Some(request),
                            header,
                            generation,
                        });
                    }
                }
                StateProj::ReadyingRetry {
                    service,
                    request,
                    header,
                    generation,
                } => {
                    let svc = service.as_mut().expect("polled after completion");
                    ready!(svc.poll_ready(cx)).map_err(|err| Error::Service(err.into()))?;
                    let service = service.take().expect("polled after completion");
                    let request = request.take().expect("polled after completion");
                    let next = send(
                        this.shared,
                        service,
                        request,
                        header.clone(),
                        *generation,
                        true,
                    );
                    this.state.set(next);
                }
                StateProj::ReadingBody {
                    future,
                    status,
                    retried,
                    basic,
                } => {
                    let body = ready!(future.as_mut().poll(cx));
                    let counters = &this.shared.counters;
                    let error = if *status == StatusCode::FORBIDDEN {
                        Counters::bump(&counters.forbidden);
                        let forbidden = forbidden_from_body(&body);
                        tracing::warn!(scope = ?forbidden.missing_scope(), policy = forbidden.is_policy(), "Propel answered 403");
                        Error::Forbidden(forbidden)
                    } else {
                        Counters::bump(&counters.unauthorized);
                        let message = parse_error_body(&body)
                            .message
                            .map(|m| excerpt(&m))
                            .unwrap_or_default();
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

/// Attaches the token's header and sends; `service` must be ready.
fn send<S, Req>(
    shared: &Arc<Shared>,
    mut service: S,
    mut request: Req,
    header: HeaderValue,
    generation: u64,
    retried: bool,
) -> State<S, Req>
where
    S: Service<Req> + Clone,
    Req: AuthRequest,
{
    let replay = if retried || !shared.replay_unauthorized {
        None
    } else {
        request.try_clone().map(|copy| Replay {
            request: copy,
            service: service.clone(),
        })
    };
    request.headers_mut().insert(AUTHORIZATION, header);
    State::Calling {
        future: service.call(request),
        replay,
        attempt: Attempt::Token {
            generation,
            retried,
        },
    }
}

/// After a 401 with the token of `generation`: drop it (if still current) and
/// go on with the next token, or `None` when there will be no new token.
fn retry_after_401<S, Req>(
    shared: &Arc<Shared>,
    generation: u64,
    request: Req,
    service: S,
) -> Option<State<S, Req>>
where
    S: Service<Req>,
    Req: AuthRequest,
{
    let cache = match &shared.auth {
        Auth::Token(store) => store.cache_for(request.token_params()),
        Auth::Basic(_) => return None,
    };
    if cache.invalidate(generation) == Invalidated::Throttled {
        return None;
    }
    // The next token: already there if a concurrent 401 refreshed it, else
    // the single flight this invalidation (or another) started.
    let wait = cache.wait();
    Some(State::AwaitingToken {
        wait,
        request: Some(request),
        service: Some(service),
        ready: false,
        retry: true,
    })
}

fn read_body<S, Req>(response: S::Response, retried: bool, basic: bool) -> State<S, Req>
where
    S: Service<Req>,
    S::Response: AuthResponse,
{
    State::ReadingBody {
        status: response.status(),
        future: response.read_body(),
        retried,
        basic,
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
