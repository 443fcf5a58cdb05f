//! The caches of one layer: the default one, and (later) one per parameter set.

use std::borrow::Cow;

use super::cache::TokenCache;
use super::TokenParams;

/// Every token cache of one layer.
#[derive(Debug)]
pub(crate) struct TokenStore {
    default: TokenCache,
}

impl TokenStore {
    pub(crate) fn new(default: TokenCache) -> Self {
        Self { default }
    }

    /// The cache for a request's parameters (the default one when it has none).
    #[inline]
    pub(crate) fn cache_for(&self, _params: Option<&TokenParams>) -> Cow<'_, TokenCache> {
        Cow::Borrowed(&self.default)
    }
}
