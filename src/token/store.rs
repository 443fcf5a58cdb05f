//! The token caches of one layer: the default one, and one per distinct
//! [`TokenParams`] that requests carry (multi-tenant tokens), bounded.
//!
//! Lookups take a read lock on one of [`SHARDS`] shards (no global lock on the
//! hot path). Inserting a new parameter set is serialized by one mutex so the
//! bound holds exactly; when full, an idle entry goes first (no token, no
//! fetch in flight, no failure cooling down), then the least recently used.
//! Finding it scans every entry: this happens only when a new parameter set
//! arrives at a full store, which costs a token request anyway.
//!
//! Recency is approximate: an entry records the number of inserts so far
//! when it is used, so using an entry is a read of a shared counter and at
//! most one store, never a contended write.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::cache::{RefreshPolicy, TokenCache};
use super::{TokenParams, TokenSource};
use crate::stats::Counters;

/// Shards of the keyed map; a power of two.
const SHARDS: usize = 16;

/// The default bound on the number of parameter sets cached at once.
pub(crate) const DEFAULT_MAX_TOKEN_SETS: usize = 4096;

/// Every token cache of one layer.
pub(crate) struct TokenStore {
    default: TokenCache,
    default_params: TokenParams,
    keyed: Keyed,
    source: Arc<dyn TokenSource>,
    policy: Arc<RefreshPolicy>,
    counters: Arc<Counters>,
}

/// A shard: entries by the hash of their parameters (hashed once per
/// request, with a random key), each bucket almost always of one entry.
type Shard = HashMap<u64, Vec<Entry>, BuildHasherDefault<Prehashed>>;

struct Keyed {
    shards: Box<[RwLock<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Serializes inserts and evictions, so the bound is never exceeded.
    insert: Mutex<()>,
    len: AtomicUsize,
    max: usize,
    /// Inserts so far: the clock of the approximate LRU.
    epoch: AtomicU64,
}

struct Entry {
    params: TokenParams,
    cache: TokenCache,
    last_used: AtomicU64,
}

/// Hashes the `u64` keys of a [`Shard`] to themselves: they already are
/// hashes of the parameters, made with a random key.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; fold anything else all the same.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl TokenStore {
    pub(crate) fn new(
        source: Arc<dyn TokenSource>,
        default_params: TokenParams,
        policy: Arc<RefreshPolicy>,
        counters: Arc<Counters>,
        max_token_sets: usize,
    ) -> Self {
        let default = TokenCache::new(
            Arc::clone(&source),
            default_params.clone(),
            Arc::clone(&policy),
            Arc::clone(&counters),
        );
        Self {
            default,
            default_params,
            keyed: Keyed {
                shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
                hasher: Default::default(),
                insert: Mutex::new(()),
                len: AtomicUsize::new(0),
                max: max_token_sets.max(1),
                epoch: AtomicU64::new(0),
            },
            source,
            policy,
            counters,
        }
    }

    /// The cache for a request's parameters (the default one when it has
    /// none, or the defaults).
    #[inline]
    pub(crate) fn cache_for(&self, params: Option<&TokenParams>) -> Cow<'_, TokenCache> {
        match params {
            None => Cow::Borrowed(&self.default),
            Some(params) if *params == self.default_params => Cow::Borrowed(&self.default),
            Some(params) => Cow::Owned(self.keyed_cache(params)),
        }
    }

    /// The cache of requests without parameters of their own.
    pub(crate) fn default_cache(&self) -> &TokenCache {
        &self.default
    }

    /// How many parameter sets have a cache of their own now.
    pub(crate) fn keyed_len(&self) -> usize {
        self.keyed.len.load(Ordering::Relaxed)
    }

    fn keyed_cache(&self, params: &TokenParams) -> TokenCache {
        let hash = self.keyed.hasher.hash_one(params);
        if let Some(cache) = self.keyed.get(hash, params) {
            return cache;
        }
        let _insert = lock(&self.keyed.insert);
        if let Some(cache) = self.keyed.get(hash, params) {
            return cache; // another request inserted it meanwhile
        }
        if self.keyed.len.load(Ordering::Relaxed) >= self.keyed.max {
            self.keyed.evict_one();
        }
        let cache = TokenCache::new(
            Arc::clone(&self.source),
            params.clone(),
            Arc::clone(&self.policy),
            Arc::clone(&self.counters),
        );
        let epoch = self.keyed.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        write(self.keyed.shard(hash))
            .entry(hash)
            .or_default()
            .push(Entry {
                params: params.clone(),
                cache: cache.clone(),
                last_used: AtomicU64::new(epoch),
            });
        self.keyed.len.fetch_add(1, Ordering::Relaxed);
        cache
    }
}

impl Keyed {
    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        // Bits the shard's own table does not use: its low bits pick buckets
        // and its top seven tag them.
        &self.shards[(hash >> 32) as usize & (SHARDS - 1)]
    }

    fn get(&self, hash: u64, params: &TokenParams) -> Option<TokenCache> {
        let shard = read(self.shard(hash));
        let entry = shard
            .get(&hash)?
            .iter()
            .find(|entry| entry.params == *params)?;
        let epoch = self.epoch.load(Ordering::Relaxed);
        if entry.last_used.load(Ordering::Relaxed) != epoch {
            entry.last_used.store(epoch, Ordering::Relaxed);
        }
        Some(entry.cache.clone())
    }

    /// Removes one entry: an idle one if there is one, else the least
    /// recently used. Called with the insert lock held.
    fn evict_one(&self) {
        let mut victim: Option<(u64, TokenParams, (bool, u64))> = None;
        for shard in self.shards.iter() {
            for (hash, entry) in read(shard)
                .iter()
                .flat_map(|(hash, bucket)| bucket.iter().map(move |entry| (*hash, entry)))
            {
                // Idle entries first (no token, nothing in flight or
                // cooling down), then the least recently used.
                let key = (
                    !entry.cache.is_idle(),
                    entry.last_used.load(Ordering::Relaxed),
                );
                if victim.as_ref().is_none_or(|(_, _, best)| key < *best) {
                    victim = Some((hash, entry.params.clone(), key));
                }
            }
        }
        let Some((hash, params, _)) = victim else {
            return;
        };
        let mut shard = write(self.shard(hash));
        if let Some(bucket) = shard.get_mut(&hash) {
            bucket.retain(|entry| entry.params != params);
            if bucket.is_empty() {
                shard.remove(&hash);
            }
            self.len.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(?params, "evicted a token cache to stay within the bound");
        }
    }
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("default", &self.default)
            .field("keyed", &self.keyed)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Keyed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyed")
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

// The maps stay consistent even if a holder panicked: take them back.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
