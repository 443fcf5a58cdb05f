//! The HTTP/1 server: the accept loop, routing, and response helpers.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::{graphql, token_api, Shared};

/// The error type of response bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type: full bodies and streamed ones.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Returned by a handler to close the connection without answering.
#[derive(Debug)]
pub(crate) struct CloseConnection;

impl fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FakePropel closes the connection on purpose")
    }
}

impl std::error::Error for CloseConnection {}

/// Spawns the accept loop. It owns the listener and every connection task,
/// so aborting it shuts the whole server down.
pub(crate) fn spawn(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                    }
                    Err(error) => {
                        // For instance EMFILE: back off instead of spinning.
                        tracing::debug!(%error, "FakePropel: accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                // Reap finished connections so the set does not grow forever.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Small JSON answers: do not let Nagle's algorithm delay them.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| route(req, Arc::clone(&shared)));
    if let Err(error) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::trace!(%error, "FakePropel: connection ended with an error");
    }
}

async fn route(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, CloseConnection> {
    match req.uri().path() {
        "/oauth2/token" => token_api::handle(req, &shared).await,
        "/graphql" => Ok(graphql::handle(req, &shared).await),
        _ => Ok(json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "errors": [{ "message": "not found" }] }),
        )),
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum ReadBodyError {
    /// Larger than the cap.
    TooLarge,
    /// The connection failed while reading it.
    Io,
}

/// Reads a request body of at most `cap` bytes.
pub(crate) async fn read_body(body: Incoming, cap: usize) -> Result<Bytes, ReadBodyError> {
    match Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ReadBodyError::TooLarge)
        }
        Err(_) => Err(ReadBodyError::Io),
    }
}

/// Sleeps for `d`, unless it is zero.
pub(crate) async fn delay(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// A body holding exactly `bytes`.
pub(crate) fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A response with this status, body and optional `Content-Type`.
pub(crate) fn response(
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response.headers_mut().insert(CONTENT_TYPE, content_type);
    }
    response
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("a JSON value serializes");
    response(status, Some(application_json()), body)
}

/// `application/json`.
pub(crate) fn application_json() -> HeaderValue {
    HeaderValue::from_static("application/json")
}

/// `status` as a status code, 500 when it is not a valid one.
pub(crate) fn status_or_500(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The Application id and secret of a `Basic` credential (the part after
/// `Basic `), or `None` when it is malformed.
pub(crate) fn decode_basic(credential: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credential.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// Splits an `Authorization` header into its scheme and credential.
pub(crate) fn split_authorization(value: &HeaderValue) -> Option<(&str, &str)> {
    let value = value.to_str().ok()?.trim();
    let (scheme, credential) = value.split_once(' ')?;
    Some((scheme, credential.trim_start()))
}
