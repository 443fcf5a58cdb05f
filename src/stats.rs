//! Counters a layer keeps, for printing or exporting.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a layer's counters (see [`PropelAuthLayer::stats`](crate::PropelAuthLayer::stats)).
///
/// A layer's clones and services share its counters, which only go up.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_propel_auth::{Credentials, PropelAuthLayer};
///
/// let layer = PropelAuthLayer::client_credentials(Credentials::new("APP01…", "secret")?).build()?;
/// let stats = layer.stats();
/// println!(
///     "token requests {} ({} failed), requests that waited {}, tokens rejected {}, 403s {}",
///     stats.token_requests, stats.token_failures, stats.waited_for_token,
///     stats.tokens_rejected, stats.forbidden,
/// );
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Token requests made, each attempt and background ones included (not
    /// tokens read from the shared cache).
    pub token_requests: u64,
    /// Token requests that failed.
    pub token_failures: u64,
    /// Requests that waited for a token, none being cached and valid: a retry's
    /// wait after a 401 counts, a request failing fast in a cool-down does not.
    pub waited_for_token: u64,
    /// Tokens dropped because Propel answered 401 to a request carrying them,
    /// once per token. A retry layer outside cures these 401s with a fresh token.
    pub tokens_rejected: u64,
    /// Requests that ended in [`Error::Unauthorized`](crate::Error::Unauthorized),
    /// transient ones (which a retry cures) included.
    pub unauthorized: u64,
    /// Requests that ended in [`Error::Forbidden`](crate::Error::Forbidden).
    pub forbidden: u64,
    /// Parameter sets (tenants) with a token cache of their own now: a gauge,
    /// without the default set.
    pub token_sets: u64,
    /// Token fetches served by the shared cache (feature `shared-cache`) with
    /// another process's token, at once or after waiting for it: no token request.
    pub store_hits: u64,
    /// Token fetches that found no usable token in the shared cache at first
    /// (none, the one being replaced, one past its refresh point, or unopenable).
    pub store_misses: u64,
    /// Token fetches that waited for another process holding the store's lock.
    pub store_lock_waits: u64,
    /// Token fetches that made an unshared token request of their own: the
    /// store failed, timed out or answered garbage, or no token came in the wait.
    pub store_fallbacks: u64,
    /// Token fetches that found a shared-cache value that did not open
    /// (tampered with, moved from another key, another secret or version): a
    /// miss, overwritten by the next token fetched; its content is never logged.
    pub store_rejected_values: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) token_requests: AtomicU64,
    pub(crate) token_failures: AtomicU64,
    pub(crate) waited_for_token: AtomicU64,
    pub(crate) tokens_rejected: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) forbidden: AtomicU64,
    pub(crate) store_hits: AtomicU64,
    pub(crate) store_misses: AtomicU64,
    pub(crate) store_lock_waits: AtomicU64,
    pub(crate) store_fallbacks: AtomicU64,
    pub(crate) store_rejected_values: AtomicU64,
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
            tokens_rejected: self.tokens_rejected.load(Relaxed),
            unauthorized: self.unauthorized.load(Relaxed),
            forbidden: self.forbidden.load(Relaxed),
            token_sets: 0,
            store_hits: self.store_hits.load(Relaxed),
            store_misses: self.store_misses.load(Relaxed),
            store_lock_waits: self.store_lock_waits.load(Relaxed),
            store_fallbacks: self.store_fallbacks.load(Relaxed),
            store_rejected_values: self.store_rejected_values.load(Relaxed),
        }
    }
}
