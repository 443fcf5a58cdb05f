//! The token caches of one layer: the default one, and one per distinct
//! [`TokenParams`] that requests carry (multi-tenant tokens), at most
//! `max_token_sets` of them, in `quick_cache`'s bounded concurrent map
//! (sharded read locks: tasks looking up different tenants do not contend).
//! Past the bound a set is dropped (CLOCK-Pro: one-off tenants go before busy
//! ones), and with it its token and deadlines. A fetch of its own still in
//! flight finishes for its waiters, within the fetch timeout, then goes too.

use std::convert::Infallible;
use std::sync::Arc;

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, UnitWeighter};

use super::cache::{CacheConfig, TokenCache};
use super::TokenParams;

/// Every token cache of one layer.
pub(crate) struct TokenStore {
    default: TokenCache,
    default_params: TokenParams,
    /// `None` for seeded credentials, which parameters cannot change.
    keyed: Option<Cache<TokenParams, TokenCache>>,
}

impl TokenStore {
    /// The caches of tokens from `config`'s source: the default one, and a
    /// bounded map of the others, filled on first use.
    pub(crate) fn renewable(default_params: TokenParams, config: Arc<CacheConfig>) -> Self {
        Self {
            keyed: Some(bounded(config.settings.max_token_sets)),
            default: TokenCache::new(default_params.clone(), config, None),
            default_params,
        }
    }

    /// One cache, seeded with `token`: every request gets it.
    pub(crate) fn seeded(
        config: Arc<CacheConfig>,
        token: crate::AccessToken,
        expires: bool,
    ) -> Self {
        Self {
            default: TokenCache::seeded(config, token, expires),
            default_params: TokenParams::default(),
            keyed: None,
        }
    }

    /// The cache of requests without parameters of their own.
    pub(crate) fn default_cache(&self) -> &TokenCache {
        &self.default
    }

    /// The cache of `params`, made on first use; `None` when they are the
    /// layer's defaults, or when the layer's credential cannot change.
    #[inline]
    pub(crate) fn keyed(&self, params: &TokenParams) -> Option<TokenCache> {
        let keyed = self.keyed.as_ref()?;
        if *params == self.default_params {
            return None;
        }
        if let Some(cache) = keyed.get(params) {
            return Some(cache);
        }
        let Ok(cache) = keyed.get_or_insert_with(params, || {
            let config = Arc::clone(self.default.config());
            Ok::<_, Infallible>(TokenCache::new(params.clone(), config, None))
        });
        // quick_cache admits a new set as cold and then evicts the coldest;
        // with room for one set, that slot is hot, so the newcomer itself
        // went and each request of it would fetch a token. Inserted outright,
        // it replaces the set there.
        if keyed.peek(params).is_none() {
            keyed.insert(params.clone(), cache.clone());
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
        self.keyed.as_ref().map_or(0, Cache::len)
    }

    /// What every cache of the layer shares.
    pub(crate) fn config(&self) -> &CacheConfig {
        self.default.config()
    }
}

/// A map that never holds more than `max` entries. quick_cache splits its
/// capacity among its shards, rounding each share up; a capacity that is a
/// multiple of the shard count keeps the sum at `max` or just under it.
fn bounded(max: usize) -> Cache<TokenParams, TokenCache> {
    // Shards of at least 32 entries (as quick_cache prefers), at most 16.
    let wanted = (max / 32).clamp(1, 16);
    let shards = 1 << (usize::BITS - 1 - wanted.leading_zeros());
    let capacity = (max - max % shards).max(1);
    let options = OptionsBuilder::new()
        .shards(shards)
        .estimated_items_capacity(capacity)
        .weight_capacity(capacity as u64)
        .build()
        .expect("a capacity and a power-of-two shard count are valid options");
    Cache::with_options(
        options,
        UnitWeighter,
        DefaultHashBuilder::default(),
        DefaultLifecycle::default(),
    )
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
