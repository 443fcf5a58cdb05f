//! Counters a layer keeps, for printing or exporting.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a layer's counters (see [`PropelAuthLayer::stats`](crate::PropelAuthLayer::stats)).
///
/// Every clone of a layer and every service made from it count into the same
/// counters. Counts only go up.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_propel_auth::{Credentials, PropelAuthLayer};
///
/// let layer = PropelAuthLayer::client_credentials(Credentials::new("APP01…", "secret")?).build()?;
/// let stats = layer.stats();
/// println!(
///     "token requests {} ({} failed), requests that waited {}, 401 retries {}, 403s {}",
///     stats.token_requests, stats.token_failures, stats.waited_for_token,
///     stats.unauthorized_retries, stats.forbidden,
/// );
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Token requests made (each attempt counts, background ones included).
    pub token_requests: u64,
    /// Token requests that failed.
    pub token_failures: u64,
    /// Requests that had to wait for a token: none was cached and valid, so
    /// they joined (or started) a token request. A request failing fast
    /// during a cool-down does not count; a 401 retry's wait does.
    pub waited_for_token: u64,
    /// Requests sent a second time with a fresh token after a 401.
    pub unauthorized_retries: u64,
    /// Requests that ended in [`Error::Unauthorized`](crate::Error::Unauthorized).
    pub unauthorized: u64,
    /// Requests that ended in [`Error::Forbidden`](crate::Error::Forbidden).
    pub forbidden: u64,
    /// Parameter sets (tenants) with a token cache of their own right now
    /// (a gauge, not a count; the default set is not included).
    pub token_sets: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) token_requests: AtomicU64,
    pub(crate) token_failures: AtomicU64,
    pub(crate) waited_for_token: AtomicU64,
    pub(crate) unauthorized_retries: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) forbidden: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            token_requests: self.token_requests.load(Relaxed),
            token_failures: self.token_failures.load(Relaxed),
            waited_for_token: self.waited_for_token.load(Relaxed),
            unauthorized_retries: self.unauthorized_retries.load(Relaxed),
            unauthorized: self.unauthorized.load(Relaxed),
            forbidden: self.forbidden.load(Relaxed),
            token_sets: 0,
        }
    }
}
