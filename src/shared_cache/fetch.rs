//! A token fetch through the shared store (see the parent module's docs).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tower::BoxError;
use tracing::Instrument as _;

use super::seal::{Entry, EntryNames, Keys};
use super::{SharedCacheSettings, SharedStore};
use crate::error::TokenError;
use crate::stats::Counters;
use crate::token::cache::SecondLevel;
use crate::{AccessToken, Settings, TokenParams, TokenSource};

/// The [`SecondLevel`] of a layer with a shared cache.
pub(crate) struct StoreLevel {
    store: Arc<dyn SharedStore>,
    keys: Keys,
    /// Part of every key name: tokens of another issuer are other tokens.
    token_url: String,
    store_timeout: Duration,
    peer_wait: Duration,
    poll_interval: Duration,
    /// How long a lock lives: the longest a fetch may take.
    lease: Duration,
    safety_margin: Duration,
    refresh_at: f64,
}

/// Which look at the entry in one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    First,
    Again,
}

/// The store failed, timed out, or could not be used; already logged.
#[derive(Debug)]
struct StoreFailed;

impl StoreLevel {
    pub(crate) fn new(
        store: Arc<dyn SharedStore>,
        keys: Keys,
        token_url: String,
        shared: SharedCacheSettings,
        settings: &Settings,
    ) -> Self {
        Self {
            store,
            keys,
            token_url,
            store_timeout: shared.store_timeout.min(settings.fetch_timeout / 4),
            peer_wait: shared.peer_wait.min(settings.fetch_timeout / 2),
            poll_interval: shared.poll_interval,
            lease: settings.fetch_timeout,
            safety_margin: settings.safety_margin,
            refresh_at: settings.refresh_at,
        }
    }
}

impl SecondLevel for StoreLevel {
    fn fetch<'a>(
        &'a self,
        source: &'a dyn TokenSource,
        params: &'a TokenParams,
        previous: Option<&'a AccessToken>,
        counters: &'a Counters,
    ) -> BoxFuture<'a, Result<AccessToken, TokenError>> {
        let fetch = Fetch {
            level: self,
            counters,
            source,
            params,
            names: self.keys.names(&self.token_url, params),
            previous: previous.map(|token| token.secret().expose_secret()),
        };
        Box::pin(async move { fetch.fetch().await })
    }
}

/// One fetch: the store and its settings, the layer's counters, what to
/// fetch, and the token being replaced (no hit).
struct Fetch<'a> {
    level: &'a StoreLevel,
    counters: &'a Counters,
    source: &'a dyn TokenSource,
    params: &'a TokenParams,
    names: EntryNames,
    previous: Option<&'a str>,
}

impl Fetch<'_> {
    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        // (1) Someone else's token?
        match self.look(Look::First).await {
            Ok(Some(token)) => return Ok(self.hit(token)),
            Ok(None) => Counters::bump(&self.counters.store_misses),
            Err(StoreFailed) => return self.fall_back().await,
        }
        // (2) Ours to fetch? (3) If another process is fetching, wait for its
        // token, or for the lock to come free without one (that process
        // failed or died).
        let Some(owner) = lock_owner() else {
            return self.fall_back().await;
        };
        let deadline = Instant::now() + self.level.peer_wait;
        for attempt in 0.. {
            if let Some(answer) = self.fetch_if_free(&owner).await {
                return answer;
            }
            if attempt == 0 {
                Counters::bump(&self.counters.store_lock_waits);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(self.level.poll_interval.min(left)).await;
            match self.look(Look::Again).await {
                Ok(Some(token)) => return Ok(self.hit(token)),
                Ok(None) => {}
                Err(StoreFailed) => return self.fall_back().await,
            }
        }
        tracing::warn!(
            waited_ms = self.level.peer_wait.as_millis() as u64,
            "no token from the process holding the shared cache's lock; fetching our own"
        );
        self.fall_back().await
    }

    /// Takes the lock if it is free and, holding it, reads once more (the
    /// previous holder may have just stored a token), else fetches and
    /// stores; then unlocks. `None` if another process holds the lock.
    async fn fetch_if_free(&self, owner: &str) -> Option<Result<AccessToken, TokenError>> {
        let (store, lock) = (&self.level.store, &self.names.lock);
        match self
            .round_trip("lock", store.try_lock(lock, owner, self.level.lease))
            .await
        {
            Ok(true) => {}
            Ok(false) => return None,
            Err(StoreFailed) => return Some(self.fall_back().await),
        }
        let result = match self.look(Look::Again).await {
            Ok(Some(token)) => Ok(self.hit(token)),
            // The lock expires by itself.
            Err(StoreFailed) => return Some(self.fall_back().await),
            Ok(None) => {
                Counters::bump(&self.counters.token_requests);
                let result = self.source.fetch_token(self.params).await;
                if let Ok(token) = &result {
                    self.put(token).await;
                }
                result
            }
        };
        // Best effort: a lock left behind expires with its lease.
        let _ = self.round_trip("unlock", store.unlock(lock, owner)).await;
        Some(result)
    }

    /// The entry's token if it is a hit: not `previous`, not past its writer's
    /// refresh point, usable a while yet. A value that does not open is
    /// counted and logged on the first look only.
    async fn look(&self, look: Look) -> Result<Option<AccessToken>, StoreFailed> {
        let name = &self.names.token;
        let Some(value) = self.round_trip("get", self.level.store.get(name)).await? else {
            return Ok(None);
        };
        let entry = match self.level.keys.open(name, &value) {
            Ok(entry) => entry,
            Err(_) if look == Look::Again => return Ok(None),
            Err(_) => {
                Counters::bump(&self.counters.store_rejected_values);
                tracing::warn!(
                    len = value.len(),
                    "a value in the shared cache did not open (altered, moved from another key, or sealed with another secret); treating it as a miss"
                );
                return Ok(None);
            }
        };
        let now = SystemTime::now();
        let token = entry.token.expose_secret();
        let usable_until = entry
            .expires_at
            .checked_sub(self.margin(entry.lifetime))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if self.previous == Some(token) || now >= entry.refresh_at || now >= usable_until {
            return Ok(None);
        }
        match AccessToken::restored(token.to_owned(), entry.expires_at, entry.lifetime) {
            Ok(token) => Ok(Some(token)),
            Err(_) => {
                Counters::bump(&self.counters.store_rejected_values);
                tracing::warn!(
                    "a token in the shared cache cannot be sent in a header; treating it as a miss"
                );
                Ok(None)
            }
        }
    }

    fn hit(&self, token: AccessToken) -> AccessToken {
        Counters::bump(&self.counters.store_hits);
        tracing::debug!("access token from the shared cache");
        token
    }

    /// A token request of our own, shared with nobody.
    async fn fall_back(&self) -> Result<AccessToken, TokenError> {
        Counters::bump(&self.counters.store_fallbacks);
        Counters::bump(&self.counters.token_requests);
        self.source.fetch_token(self.params).await
    }

    /// Stores a fresh token for as long as it is usable; best effort.
    async fn put(&self, token: &AccessToken) {
        let margin = self.margin(token.lifetime());
        let ttl = token.expires_in().saturating_sub(margin);
        if ttl < Duration::from_millis(1) {
            return;
        }
        let entry = Entry {
            token: token.secret().clone(),
            expires_at: token.expires_at(),
            lifetime: token.lifetime(),
            refresh_at: SystemTime::now() + ttl.mul_f64(self.level.refresh_at),
        };
        let Ok(value) = self.level.keys.seal(&self.names.token, &entry) else {
            tracing::warn!("could not seal a token for the shared cache (no randomness?)");
            return;
        };
        let _ = self
            .round_trip("put", self.level.store.put(&self.names.token, value, ttl))
            .await;
    }

    /// A token's safety margin, as the in-process cache computes it.
    fn margin(&self, lifetime: Duration) -> Duration {
        self.level.safety_margin.min(lifetime / 4)
    }

    /// One bounded round trip in its own span; failures logged (never a value).
    async fn round_trip<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, BoxError>>,
    ) -> Result<T, StoreFailed> {
        let span = tracing::debug_span!("propel.shared_cache", op, outcome = tracing::field::Empty);
        let result = tokio::time::timeout(self.level.store_timeout, call)
            .instrument(span.clone())
            .await;
        let Ok(result) = result else {
            span.record("outcome", "timeout");
            let timeout_ms = self.level.store_timeout.as_millis() as u64;
            tracing::warn!(parent: &span, timeout_ms, "the shared cache did not answer in time");
            return Err(StoreFailed);
        };
        span.record("outcome", if result.is_ok() { "ok" } else { "error" });
        result.map_err(|err| {
            tracing::warn!(parent: &span, error = %err, "a round trip to the shared cache failed");
            StoreFailed
        })
    }
}

/// A random lock value, so that only its holder unlocks; `None` without randomness.
fn lock_owner() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}
