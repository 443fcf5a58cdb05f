//! A [`tower::retry::Policy`] that retries what is worth retrying.
//!
//! [`TransientErrors`] retries a request whose error [`Error::is_transient`]
//! says may pass (a Token API outage, rate limit or timeout, a failed
//! connection, a `tower::timeout` that elapsed), with tower's jittered
//! exponential backoff and a bounded number of attempts. It never retries a
//! 403, a 401 that a fresh token did not cure, a Token API 4xx or insecure
//! transport: those need a change of configuration. Responses (whatever their
//! status) are never retried.
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
//! A retried POST is sent again. Propel's queries are reads, but a mutation
//! whose connection failed mid-way may have been applied: retry mutations
//! only if they are idempotent.

use std::pin::Pin;
use std::time::Duration;

use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::retry::Policy;
use tower::util::rng::HasherRng;
use tower::BoxError;

use crate::request::AuthRequest;
use crate::Error;

/// Retries transient errors with jittered exponential backoff, at most
/// `max_retries` times per request.
#[derive(Debug, Clone)]
pub struct TransientErrors {
    retries_left: usize,
    backoff: ExponentialBackoff,
}

impl TransientErrors {
    /// At most `max_retries` retries, waiting 100 ms, 200 ms, 400 ms … (at
    /// most 10 s) plus up to 100% jitter.
    pub fn new(max_retries: usize) -> Self {
        Self::with_backoff(
            max_retries,
            Duration::from_millis(100),
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
        let mut maker = ExponentialBackoffMaker::new(min, max, 1.0, HasherRng::default())
            .map_err(|err| crate::ConfigError::invalid("the retry backoff", format!("{err:?}")))?;
        Ok(Self {
            retries_left: max_retries,
            backoff: maker.make_backoff(),
        })
    }

    fn next(&mut self, transient: bool) -> Option<Pin<Box<tokio::time::Sleep>>> {
        if !transient || self.retries_left == 0 {
            return None;
        }
        self.retries_left -= 1;
        Some(Box::pin(self.backoff.next_backoff()))
    }
}

/// Whether a boxed error (from a stack of tower layers) is worth retrying:
/// this crate's transient errors and elapsed `tower::timeout`s.
pub fn is_transient(err: &BoxError) -> bool {
    if let Some(err) = err.downcast_ref::<Error>() {
        return err.is_transient();
    }
    err.is::<tower::timeout::error::Elapsed>()
}

/// A request the policy can copy for another attempt.
pub trait RetryRequest: Sized {
    /// A copy, when the body can be replayed.
    fn try_clone_request(&self) -> Option<Self>;
}

impl<B: 'static> RetryRequest for http::Request<B> {
    fn try_clone_request(&self) -> Option<Self> {
        AuthRequest::try_clone(self)
    }
}

#[cfg(feature = "reqwest")]
impl RetryRequest for reqwest::Request {
    fn try_clone_request(&self) -> Option<Self> {
        self.try_clone()
    }
}

impl<Req: RetryRequest, Res> Policy<Req, Res, Error> for TransientErrors {
    type Future = Pin<Box<tokio::time::Sleep>>;

    fn retry(
        &mut self,
        _request: &mut Req,
        result: &mut Result<Res, Error>,
    ) -> Option<Self::Future> {
        let transient = matches!(result, Err(err) if err.is_transient());
        self.next(transient)
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        request.try_clone_request()
    }
}

impl<Req: RetryRequest, Res> Policy<Req, Res, BoxError> for TransientErrors {
    type Future = Pin<Box<tokio::time::Sleep>>;

    fn retry(
        &mut self,
        _request: &mut Req,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        let transient = matches!(result, Err(err) if is_transient(err));
        self.next(transient)
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        request.try_clone_request()
    }
}
