//! One token for a fleet: a second-level token cache that the processes of a
//! fleet share, in Redis or Valkey (feature `redis`) or any store behind
//! [`SharedStore`] (feature `shared-cache`): one process fetches each token,
//! where N processes would each make their own token request, and the others
//! read it from the store.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_propel_auth::shared_cache::SharedCache;
//! use tower_propel_auth::{Credentials, PropelAuthLayer};
//!
//! // The connection the service already has: TLS, ACLs, Sentinel or
//! // Cluster are configured there.
//! let redis = redis::Client::open("redis://127.0.0.1:6379/")?;
//! let connection = redis::aio::ConnectionManager::new(redis).await?;
//!
//! let layer = PropelAuthLayer::client_credentials(Credentials::from_env()?)
//!     .shared_cache(SharedCache::redis(connection))
//!     .build()?;
//! # let _ = layer; Ok(()) }
//! ```
//!
//! # How it works
//!
//! - **Second level only.** A request with a valid token in the in-process
//!   cache never touches the store: it is asked only where that cache would
//!   fetch (its first token, a refresh ahead, a stale token, a token a 401
//!   rejected), in its one fetch task, under its fetch timeout.
//! - **A fetch through the store.** (1) Read the entry: a token other than the
//!   one being replaced, not yet at its writer's refresh point, is a hit.
//!   (2) Otherwise take the entry's lock (`SET NX PX`, a random value, a lease
//!   of the fetch timeout): the holder reads once more, asks the Token API,
//!   stores the sealed token to live its remaining life less the safety
//!   margin, and unlocks by compare and delete (a dead holder's lock expires).
//!   (3) A process that finds the lock held polls for the holder's token every
//!   [`poll_interval`](SharedCacheSettings::poll_interval) for at most
//!   [`peer_wait`](SharedCacheSettings::peer_wait), taking the lock if it comes
//!   free without a token; then it makes a token request of its own.
//! - **Rotation.** As the token being replaced is no hit, the first process
//!   whose refresh (or 401) comes due stores the next token and the others
//!   find it: the fleet rotates to one new token per parameter set, not N.
//! - **Never a dependency.** Each round trip is bounded by
//!   [`store_timeout`](SharedCacheSettings::store_timeout) (default 100 ms); a
//!   store that fails, times out or answers garbage only makes the fetch fall
//!   back at once to a token request of its own. [`Stats`](crate::Stats) counts
//!   what the store did; each round trip has a `tracing` span, `propel.shared_cache`.
//!
//! # What the store sees
//!
//! Keys are `propel:{APPLICATION_ID:HASH}:token` and `…:lock`, the hash tag
//! keeping an entry in one Redis Cluster slot. `HASH` is an HMAC of the token
//! parameters and URL under a key derived from the secret: it shows no secret,
//! scope or policy value, and a guessed tenant ID cannot be checked against it.
//!
//! Values are sealed with XChaCha20-Poly1305 under another key derived
//! (HKDF-SHA256) from the secret, with the Application ID and a version as
//! context, a random nonce, and the key name as associated data: a reader
//! without the secret learns nothing usable, and a value altered or copied to
//! another key does not open (a miss, counted in
//! [`Stats::store_rejected_values`](crate::Stats::store_rejected_values) and
//! logged without its content). Processes sharing an entry must share the
//! Application ID and secret, which also makes their tokens interchangeable.
//!
//! Polling rather than pub/sub: a waiter loses at most one poll interval, needs
//! no dedicated connection, works with any [`SharedStore`], and takes over a
//! dead holder's lock the moment it expires.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tower::BoxError;

use crate::error::ConfigError;
use crate::token::cache::SecondLevel;
use crate::{Credentials, Settings};

mod fetch;
#[cfg(feature = "redis")]
mod redis;
mod seal;
#[cfg(test)]
mod tests;
// The token cache's model test keeps its store on the manual clock.
#[cfg(test)]
pub(crate) use seal::Keys;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;

/// A store the processes of a fleet share: the object-safe trait behind
/// [`SharedCache`], so that memcached, a database or anything else with
/// expiring keys and an atomic "set if absent" can hold the tokens.
///
/// Values arrive sealed and keys already namespaced; a store only keeps
/// bytes. Every call is bounded by
/// [`SharedCacheSettings::store_timeout`] and any error (a [`BoxError`])
/// only makes the process fetch its own token, so an implementation needs no
/// retries or timeouts of its own.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::{Duration, Instant};
///
/// use futures_util::future::BoxFuture;
/// use tower::BoxError;
/// use tower_propel_auth::shared_cache::{SharedCache, SharedStore};
///
/// /// One process's memory: shows the contract, shares nothing.
/// #[derive(Debug, Default)]
/// struct InMemory(Mutex<HashMap<String, (Vec<u8>, Instant)>>);
///
/// impl InMemory {
///     fn live(&self, key: &str) -> Option<Vec<u8>> {
///         let map = self.0.lock().unwrap();
///         map.get(key).filter(|(_, until)| Instant::now() < *until).map(|(v, _)| v.clone())
///     }
///     fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) {
///         self.0.lock().unwrap().insert(key.to_owned(), (value, Instant::now() + ttl));
///     }
/// }
///
/// impl SharedStore for InMemory {
///     fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
///         Box::pin(async move { Ok(self.live(key)) })
///     }
///     fn put<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Duration) -> BoxFuture<'a, Result<(), BoxError>> {
///         Box::pin(async move { Ok(self.set(key, value, ttl)) })
///     }
///     fn try_lock<'a>(&'a self, key: &'a str, owner: &'a str, lease: Duration) -> BoxFuture<'a, Result<bool, BoxError>> {
///         Box::pin(async move {
///             let free = self.live(key).is_none();
///             if free {
///                 self.set(key, owner.as_bytes().to_vec(), lease);
///             }
///             Ok(free)
///         })
///     }
///     fn unlock<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), BoxError>> {
///         Box::pin(async move {
///             if self.live(key).as_deref() == Some(owner.as_bytes()) {
///                 self.0.lock().unwrap().remove(key);
///             }
///             Ok(())
///         })
///     }
/// }
///
/// let shared = SharedCache::new(InMemory::default());
/// # let _ = shared;
/// ```
pub trait SharedStore: Send + Sync + 'static {
    /// The value under `key`, `None` when there is none (or it expired).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>>;

    /// Sets `key` to `value`, replacing any value, to expire after `ttl`
    /// (at least a millisecond).
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Atomically sets `key` to `owner`, to expire after `lease`, if `key`
    /// has no value; `true` when it did (the caller holds the lock).
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>>;

    /// Atomically removes `key` if its value is still `owner`: a lock whose
    /// lease ran out and that another process took since stays its.
    fn unlock<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// A token cache shared by the processes of a fleet: hand it to
/// [`TokenLayerBuilder::shared_cache`](crate::TokenLayerBuilder::shared_cache)
/// and the layer's in-process cache asks it before each token request (see
/// the [module docs](self) for how it works and what the store sees).
///
/// Cheap to clone: clones share the store.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// use tower_propel_auth::shared_cache::{SharedCache, SharedCacheSettings};
/// use tower_propel_auth::{Credentials, PropelAuthLayer};
///
/// let redis = redis::Client::open("redis://127.0.0.1:6379/")?;
/// let connection = redis::aio::ConnectionManager::new(redis).await?;
///
/// let mut settings = SharedCacheSettings::default();
/// settings.store_timeout = Duration::from_millis(50);
/// let shared = SharedCache::redis(connection).with_settings(settings);
///
/// let layer = PropelAuthLayer::client_credentials(Credentials::from_env()?)
///     .shared_cache(shared)
///     .build()?;
/// println!("{} tokens from the store", layer.stats().store_hits);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SharedCache {
    store: Arc<dyn SharedStore>,
    settings: SharedCacheSettings,
}

impl SharedCache {
    /// A shared cache in `store`, with the default settings.
    pub fn new(store: impl SharedStore) -> Self {
        Self {
            store: Arc::new(store),
            settings: SharedCacheSettings::default(),
        }
    }

    /// A shared cache in Redis or Valkey, over a connection the service
    /// already has: a `redis::aio::ConnectionManager` (which reconnects by
    /// itself: the one to use), a `MultiplexedConnection` or a cluster
    /// connection. See [`RedisStore`].
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis<C>(connection: C) -> Self
    where
        C: ::redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
    {
        Self::new(RedisStore::new(connection))
    }

    /// Replaces the settings; they are checked when the layer is built.
    pub fn with_settings(mut self, settings: SharedCacheSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &SharedCacheSettings {
        &self.settings
    }

    /// The second level of a client-credentials layer: its keys derive from
    /// the Application's secret, its timing from the layer's settings.
    pub(crate) fn second_level(
        &self,
        credentials: &Credentials,
        token_url: &str,
        settings: &Settings,
    ) -> Result<Box<dyn SecondLevel>, ConfigError> {
        self.settings.validate()?;
        Ok(Box::new(fetch::StoreLevel::new(
            Arc::clone(&self.store),
            seal::Keys::derive(credentials.application_id(), credentials.secret()),
            token_url.to_owned(),
            self.settings.clone(),
            settings,
        )))
    }
}

impl fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// How long a [`SharedCache`] waits for its store and for other processes.
///
/// ```
/// use std::time::Duration;
/// use tower_propel_auth::shared_cache::SharedCacheSettings;
///
/// let mut settings = SharedCacheSettings::default();
/// settings.peer_wait = Duration::from_secs(1);
/// assert_eq!(settings.store_timeout, Duration::from_millis(100));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedCacheSettings {
    /// The longest one round trip to the store may take; past it the fetch
    /// gives up on the store and makes its own token request. Default
    /// 100 ms; more than zero. Cut to a quarter of the layer's
    /// [`fetch_timeout`](crate::Settings::fetch_timeout) if longer.
    pub store_timeout: Duration,
    /// The longest a process waits for another that holds the lock to store
    /// its token, before it makes its own token request. Default 2 s; zero
    /// never waits. Cut to half the layer's
    /// [`fetch_timeout`](crate::Settings::fetch_timeout) if longer, which
    /// leaves the other half for that request.
    pub peer_wait: Duration,
    /// How often a waiting process looks for that token. Default 20 ms; more
    /// than zero.
    pub poll_interval: Duration,
}

impl Default for SharedCacheSettings {
    fn default() -> Self {
        Self {
            store_timeout: Duration::from_millis(100),
            peer_wait: Duration::from_secs(2),
            poll_interval: Duration::from_millis(20),
        }
    }
}

impl SharedCacheSettings {
    /// Refuses zero and overlong durations.
    fn validate(&self) -> Result<(), ConfigError> {
        const DAY: Duration = crate::token::access_token::MAX_LIFETIME;
        if self.store_timeout.is_zero() || self.store_timeout > DAY {
            return Err(ConfigError::invalid(
                "SharedCacheSettings::store_timeout",
                "it must be more than zero and at most a day",
            ));
        }
        if self.poll_interval.is_zero() || self.poll_interval > DAY {
            return Err(ConfigError::invalid(
                "SharedCacheSettings::poll_interval",
                "it must be more than zero and at most a day",
            ));
        }
        if self.peer_wait > DAY {
            return Err(ConfigError::invalid(
                "SharedCacheSettings::peer_wait",
                "it must be at most a day",
            ));
        }
        Ok(())
    }
}
