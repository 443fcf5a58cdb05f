//! A [`tower::retry::Policy`] that retries what is worth retrying.
//!
//! [`TransientErrors`] retries an error that [`Error::is_transient`] says may
//! pass (a Token API outage, rate limit or timeout, a failed connection, an
//! elapsed `tower::timeout`) with jittered exponential backoff and bounded
//! attempts; a 401 whose token the layer dropped, at once with a fresh token.
//! Never a 403, a 401 a fresh token did not cure, a Token API 4xx, insecure
//! transport, or a response (whatever its status).
//!
//! Put it outside [`PropelAuthLayer`](crate::PropelAuthLayer), so that each
//! attempt gets the current token:
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_propel_auth::retry::TransientErrors;
//! use tower_propel_auth::{Credentials, PropelAuthLayer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = PropelAuthLayer::client_credentials(Credentials::new("APP01…", "secret")?).build()?;
//! let client = ServiceBuilder::new()
//!     .retry(TransientErrors::new(3))
//!     .timeout(Duration::from_secs(30))
//!     .layer(auth)
//!     .service(reqwest::Client::new());
//! # let _ = client; Ok(()) }
//! ```
//!
//! A retried POST is sent again: retry mutations (which a failed connection may
//! have left applied) only if they are idempotent.

use std::any::Any;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, Full};

use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::retry::Policy;
use tower::util::rng::HasherRng;
use tower::BoxError;

use crate::Error;

/// Retries transient errors with jittered exponential backoff, at most
/// `max_retries` times per request, and never sooner than a `Retry-After`
/// the Token API sent (up to a minute). Each request's clone of the policy has
/// its own random seed, so requests that failed together do not retry in step.
#[derive(Debug)]
pub struct TransientErrors {
    retries_left: usize,
    min: Duration,
    max: Duration,
    /// Made at the first retry of a request.
    backoff: Option<ExponentialBackoff>,
}

impl TransientErrors {
    /// At most `max_retries` retries, waiting 500 ms, 1 s, 2 s … (at most
    /// 10 s) plus up to 100% jitter: the second comes after the layer's
    /// default 1 s cool-down of a failed token request.
    pub fn new(max_retries: usize) -> Self {
        Self::with_backoff(
            max_retries,
            Duration::from_millis(500),
            Duration::from_secs(10),
        )
        .expect("the default backoff is valid")
    }

    /// At most `max_retries` retries, waiting from `min` doubling up to `max`,
    /// plus jitter. Fails when `min > max` or `max` is zero.
    pub fn with_backoff(
        max_retries: usize,
        min: Duration,
        max: Duration,
    ) -> Result<Self, crate::ConfigError> {
        make_backoff(min, max)?;
        Ok(Self {
            retries_left: max_retries,
            min,
            max,
            backoff: None,
        })
    }

    fn next(&mut self, err: &impl RetryError) -> Option<Pin<Box<tokio::time::Sleep>>> {
        let error = err.as_crate_error();
        let transient = error.map_or_else(|| err.timed_out(), Error::is_transient);
        if !transient || self.retries_left == 0 {
            return None;
        }
        self.retries_left -= 1;
        // A 401 whose token was dropped: the fresh token cures it, no wait helps.
        if let Some(Error::Unauthorized(_)) = error {
            return Some(Box::pin(tokio::time::sleep(Duration::ZERO)));
        }
        let backoff = self.backoff.get_or_insert_with(|| {
            make_backoff(self.min, self.max).expect("checked when the policy was made")
        });
        let mut sleep = Box::pin(backoff.next_backoff());
        if let Some(after) = error.and_then(Error::retry_after) {
            let not_before = tokio::time::Instant::now() + after;
            if sleep.deadline() < not_before {
                sleep.as_mut().reset(not_before);
            }
        }
        Some(sleep)
    }
}

impl Clone for TransientErrors {
    /// A fresh policy for another request: the same limits, a new backoff.
    fn clone(&self) -> Self {
        Self {
            backoff: None,
            ..*self
        }
    }
}

/// A backoff with up to 100% jitter and a fresh random seed.
fn make_backoff(min: Duration, max: Duration) -> Result<ExponentialBackoff, crate::ConfigError> {
    let mut maker = ExponentialBackoffMaker::new(min, max, 1.0, HasherRng::default())
        .map_err(|err| crate::ConfigError::invalid("the retry backoff", format!("{err:?}")))?;
    Ok(maker.make_backoff())
}

/// Whether a boxed error is worth retrying: a transient [`Error`] or an elapsed `tower::timeout`.
pub fn is_transient(err: &BoxError) -> bool {
    err.as_crate_error()
        .map_or_else(|| err.timed_out(), Error::is_transient)
}

/// What the policy needs of the requests and errors it serves. Sealed.
#[allow(unreachable_pub)]
mod sealed {
    pub trait RetryRequest: Sized {
        /// A copy, when the body can be sent again.
        fn try_clone_request(&self) -> Option<Self>;
    }

    pub trait RetryError {
        fn as_crate_error(&self) -> Option<&crate::Error>;
        /// A `tower::timeout` that elapsed.
        fn timed_out(&self) -> bool {
            false
        }
    }
}

use sealed::{RetryError, RetryRequest};

impl<B: 'static> RetryRequest for http::Request<B> {
    fn try_clone_request(&self) -> Option<Self> {
        let body = clone_body(self.body())?;
        let mut copy = http::Request::new(body);
        *copy.method_mut() = self.method().clone();
        *copy.uri_mut() = self.uri().clone();
        *copy.version_mut() = self.version();
        *copy.headers_mut() = self.headers().clone();
        *copy.extensions_mut() = self.extensions().clone();
        Some(copy)
    }
}

/// Clones a body of one of the common in-memory types, sparing users a
/// `B: Clone` bound; `None` for streaming bodies, which cannot be sent twice.
fn clone_body<B: 'static>(body: &B) -> Option<B> {
    fn try_as<T: Clone + 'static, B: 'static>(body: &B) -> Option<B> {
        let typed = (body as &dyn Any).downcast_ref::<T>()?;
        let mut slot = Some(typed.clone());
        (&mut slot as &mut dyn Any)
            .downcast_mut::<Option<B>>()?
            .take()
    }
    try_as::<Full<Bytes>, B>(body)
        .or_else(|| try_as::<Empty<Bytes>, B>(body))
        .or_else(|| try_as::<String, B>(body))
        .or_else(|| try_as::<Bytes, B>(body))
        .or_else(|| try_as::<Vec<u8>, B>(body))
        .or_else(|| try_as::<&'static str, B>(body))
        .or_else(|| try_as::<&'static [u8], B>(body))
        .or_else(|| try_as::<(), B>(body))
}

#[cfg(feature = "reqwest")]
impl RetryRequest for reqwest::Request {
    fn try_clone_request(&self) -> Option<Self> {
        self.try_clone()
    }
}

impl RetryError for Error {
    fn as_crate_error(&self) -> Option<&Error> {
        Some(self)
    }
}

impl RetryError for BoxError {
    fn as_crate_error(&self) -> Option<&Error> {
        self.downcast_ref()
    }

    fn timed_out(&self) -> bool {
        self.is::<tower::timeout::error::Elapsed>()
    }
}

impl<Req: RetryRequest, Res, E: RetryError> Policy<Req, Res, E> for TransientErrors {
    type Future = Pin<Box<tokio::time::Sleep>>;

    fn retry(&mut self, _request: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Err(err) => self.next(err),
            Ok(_) => None,
        }
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        request.try_clone_request()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_delay(policy: &TransientErrors, err: Error) -> Duration {
        let mut policy = policy.clone();
        let mut request = http::Request::new(String::new());
        let mut result: Result<(), Error> = Err(err);
        let sleep =
            Policy::<_, (), Error>::retry(&mut policy, &mut request, &mut result).expect("retried");
        sleep.deadline() - tokio::time::Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_backs_off_with_its_own_jitter() {
        let policy = TransientErrors::new(3);
        let delays: std::collections::HashSet<Duration> = (0..8)
            .map(|_| first_delay(&policy, Error::Service("reset".into())))
            .collect();
        assert!(delays.len() > 1, "every clone waited the same: {delays:?}");
        for delay in delays {
            assert!(
                delay >= Duration::from_millis(500) && delay <= Duration::from_secs(1),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn in_memory_bodies_are_copied_and_streams_are_not() {
        let request = http::Request::post("https://x/graphql")
            .header("x-trace", "1")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let copy = request.try_clone_request().expect("Full is copied");
        assert_eq!(copy.uri(), request.uri());
        assert_eq!(copy.headers()["x-trace"], "1");
        assert!(http::Request::new(String::from("q"))
            .try_clone_request()
            .is_some());
        use http_body_util::BodyExt as _;
        let stream = http_body_util::combinators::UnsyncBoxBody::new(
            Empty::<Bytes>::new().map_err(|never| match never {}),
        );
        assert!(http::Request::new(stream).try_clone_request().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_is_honoured() {
        let mut response = http::Response::new(bytes::Bytes::new());
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("7"),
        );
        let err = crate::token::client_credentials::token_error_for_test(response);
        let delay = first_delay(&TransientErrors::new(3), Error::Token(err));
        assert_eq!(delay, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn what_needs_a_change_of_configuration_is_never_retried() {
        let mut policy = TransientErrors::new(3);
        let mut request = http::Request::new(String::new());
        let forbidden = crate::error_body::forbidden_from_body(b"lacks the admin scope", &[]);
        let mut result: Result<(), Error> = Err(Error::Forbidden(forbidden));
        assert!(Policy::<_, (), Error>::retry(&mut policy, &mut request, &mut result).is_none());
        let mut result: Result<(), Error> = Err(Error::Token(crate::TokenError::new(
            crate::TokenErrorKind::InvalidClient,
        )));
        assert!(Policy::<_, (), Error>::retry(&mut policy, &mut request, &mut result).is_none());
    }
}
