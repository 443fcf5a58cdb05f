//! The token caches of one layer: the default one, and one per distinct
//! [`TokenParams`] that requests carry (multi-tenant tokens), at most
//! `max_token_sets` of them.
//!
//! The keyed caches live in one LRU map behind one lock (the `lru` crate):
//! a lookup is one hash and one probe under an uncontended mutex, which
//! measured faster than a sharded map at 1 to 64 tasks (BENCHMARKS.md). Past
//! the bound the least recently used set is dropped, and with it everything
//! it held: its token and its deadlines. A fetch of its own still in flight
//! finishes for its waiters, within the fetch timeout, then goes too.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::cache::{CacheConfig, TokenCache};
use super::TokenParams;

/// Every token cache of one layer.
pub(crate) struct TokenStore {
    default: TokenCache,
    default_params: TokenParams,
    keyed: Mutex<LruCache<TokenParams, TokenCache>>,
    config: Arc<CacheConfig>,
}

impl TokenStore {
    pub(crate) fn new(default_params: TokenParams, config: Arc<CacheConfig>) -> Self {
        let bound = NonZeroUsize::new(config.settings.max_token_sets).unwrap_or(NonZeroUsize::MIN);
        Self {
            default: TokenCache::new(default_params.clone(), Arc::clone(&config)),
            default_params,
            keyed: Mutex::new(LruCache::new(bound)),
            config,
        }
    }

    /// The cache of requests without parameters of their own.
    pub(crate) fn default_cache(&self) -> &TokenCache {
        &self.default
    }

    /// The cache of a request's own parameters, made on first use; `None`
    /// when they are the layer's defaults.
    pub(crate) fn keyed(&self, params: &TokenParams) -> Option<TokenCache> {
        if *params == self.default_params {
            return None;
        }
        let mut keyed = self.lock();
        if let Some(cache) = keyed.get(params) {
            return Some(cache.clone());
        }
        let cache = TokenCache::new(params.clone(), Arc::clone(&self.config));
        let evicted = keyed.push(params.clone(), cache.clone());
        drop(keyed);
        if let Some((params, _)) = evicted {
            tracing::debug!(
                ?params,
                "dropped the least recently used token set to stay within the bound"
            );
        }
        Some(cache)
    }

    /// The cache for `params`, the default one when `None`.
    pub(crate) fn cache_for(&self, params: Option<&TokenParams>) -> TokenCache {
        params
            .and_then(|params| self.keyed(params))
            .unwrap_or_else(|| self.default.clone())
    }

    /// How many parameter sets have a cache of their own now.
    pub(crate) fn keyed_len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<TokenParams, TokenCache>> {
        // The map stays consistent even if a holder panicked: take it back.
        self.keyed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("default", &self.default)
            .field("token_sets", &self.keyed_len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
