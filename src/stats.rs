//! Counters a layer keeps, for printing or exporting.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Declares [`Stats`] and `Counters`, its atomic twin, from one list.
macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
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
            $($(#[doc = $doc])+ pub $name: u64,)+
            /// Parameter sets (tenants) with a token cache of their own now: a gauge,
            /// without the default set.
            pub token_sets: u64,
        }

        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)+
        }

        impl Counters {
            pub(crate) fn bump(counter: &AtomicU64) {
                counter.fetch_add(1, Relaxed);
            }

            pub(crate) fn snapshot(&self) -> Stats {
                Stats {
                    $($name: self.$name.load(Relaxed),)+
                    token_sets: 0,
                }
            }
        }
    };
}

counters! {
    /// Token requests made, each attempt and background ones included (not
    /// tokens read from the shared cache).
    token_requests,
    /// Token requests that failed.
    token_failures,
    /// Requests that waited for a token, none being cached and valid: a retry's
    /// wait after a 401 counts, a request failing fast in a cool-down does not.
    waited_for_token,
    /// Tokens dropped because Propel answered 401 to a request carrying them,
    /// once per token. A retry layer outside cures these 401s with a fresh token.
    tokens_rejected,
    /// Requests that ended in [`Error::Unauthorized`](crate::Error::Unauthorized),
    /// transient ones (which a retry cures) included.
    unauthorized,
    /// Requests that ended in [`Error::Forbidden`](crate::Error::Forbidden).
    forbidden,
    /// Token fetches served by the shared cache (feature `shared-cache`) with
    /// another process's token, at once or after waiting for it: no token request.
    store_hits,
    /// Token fetches that found no usable token in the shared cache at first
    /// (none, the one being replaced, one past its refresh point, or unopenable).
    store_misses,
    /// Token fetches that waited for another process holding the store's lock.
    store_lock_waits,
    /// Token fetches that made an unshared token request of their own: the
    /// store failed, timed out or answered garbage, or no token came in the wait.
    store_fallbacks,
    /// Token fetches that found a shared-cache value that did not open
    /// (tampered with, moved from another key, another secret or version): a
    /// miss, overwritten by the next token fetched; its content is never logged.
    store_rejected_values,
}
