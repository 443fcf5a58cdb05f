//! One token cache: the token of one parameter set, the deadlines it carries,
//! and the single flight that renews it.
//!
//! - **Deadlines are data.** A cached token carries its stale point and the
//!   time its next background refresh may start, as wall-clock times; every
//!   read compares them with the [`Clock`]. The first reader past the refresh
//!   point starts the one fetch and goes on with the current token; a reader
//!   past the stale point waits for a new one. No task sleeps until a
//!   deadline, so a runtime that was not driven for a while, or a host that
//!   was suspended, never sends an expired token.
//! - **Single flight.** At most one token request is in flight per cache. It
//!   runs in a task of its own, under the fetch timeout, which exists only
//!   while the request is in flight: dropping any waiter (the one that
//!   started it included) cancels nothing, and the waiters share its result.
//! - **Failures are data too.** A failed background refresh keeps the current
//!   token and moves the refresh point to the end of a backoff; the first
//!   reader after it tries again. A failure with no usable token goes to
//!   every waiter of that fetch and starts a cool-down, during which new
//!   requests get the same error at once. The cool-down also paces the token
//!   drops that 401s cause: one per cool-down.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::HeaderValue;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::clock::{Clock, Time};
use super::{AccessToken, Settings, TokenParams, TokenSource};
use crate::error::{TokenError, TokenErrorKind};
use crate::stats::Counters;

/// What every cache of one layer shares.
pub(crate) struct CacheConfig {
    pub(crate) source: Arc<dyn TokenSource>,
    pub(crate) settings: Settings,
    pub(crate) clock: Clock,
    pub(crate) counters: Arc<Counters>,
    /// The Application secret, to remove by value from what servers say.
    pub(crate) secret: Option<secrecy::SecretString>,
    /// Keep a copy of each request to send again after a 401.
    pub(crate) replay: bool,
    /// Whether a rejected token can be replaced by another (not a bearer token's).
    pub(crate) renewable: bool,
    /// Where a fetch looks first: a store the processes of a fleet share.
    pub(crate) second_level: Option<Arc<dyn SecondLevel>>,
}

/// A second-level cache (feature `redis`): consulted only where this cache
/// would fetch, so the hot path never sees it.
pub(crate) trait SecondLevel: Send + Sync {
    /// A token for `params`: from the shared store, or from `source` (and
    /// then shared). `previous` is the token this cache had last: the fetch
    /// wants another one, so the store's copy of it is no hit. It bumps
    /// `token_requests` for each call of `source` it makes.
    fn fetch(
        &self,
        source: Arc<dyn TokenSource>,
        params: TokenParams,
        previous: Option<AccessToken>,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>>;
}

/// A token in the cache, with its pre-built header and its deadlines.
pub(crate) struct CachedToken {
    pub(crate) header: HeaderValue,
    /// Tells this token from its successors, for [`TokenCache::invalidate`].
    pub(crate) generation: u64,
    pub(crate) token: AccessToken,
    /// From here on the token is not sent: it is too close to its expiry.
    stale_at: Time,
    /// From here on a reader starts a background refresh: the refresh point,
    /// after a failed refresh the end of its backoff, [`Time::NEVER`] while a
    /// refresh is in flight or when none would help.
    refresh_from: AtomicU64,
}

impl CachedToken {
    /// Whether the token may be sent at `now`.
    #[inline]
    pub(crate) fn is_usable(&self, now: Time) -> bool {
        now < self.stale_at
    }

    #[inline]
    fn refresh_is_due(&self, now: Time) -> bool {
        now.0 >= self.refresh_from.load(Ordering::Relaxed)
    }

    fn refresh_from(&self, at: Time) {
        self.refresh_from.store(at.0, Ordering::Relaxed);
    }
}

/// One token cache. Cheap to clone; clones share everything.
#[derive(Clone)]
pub(crate) struct TokenCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    current: ArcSwapOption<CachedToken>,
    slow: Mutex<Slow>,
    params: TokenParams,
    config: Arc<CacheConfig>,
}

/// What only the slow path touches, behind a plain mutex.
#[derive(Default)]
struct Slow {
    flight: Option<InFlight>,
    /// Numbers flights and tokens.
    counter: u64,
    /// Until then a failure's waiters' error is handed to new requests, and
    /// a 401 does not drop another token.
    cooldown_until: Option<Time>,
    failure: Option<TokenError>,
    /// Background refreshes that failed in a row, for the backoff.
    failed_refreshes: u32,
    /// The token a 401 dropped, until the next one is published: what the
    /// next fetch replaces.
    dropped: Option<Arc<CachedToken>>,
}

struct InFlight {
    id: u64,
    outcome: Flight,
}

pub(crate) type Flight = Shared<BoxFuture<'static, Outcome>>;

/// A fetch's result, shared by all its waiters.
pub(crate) struct Outcome(Result<Arc<CachedToken>, TokenError>);

impl Clone for Outcome {
    fn clone(&self) -> Self {
        Outcome(match &self.0 {
            Ok(token) => Ok(Arc::clone(token)),
            Err(err) => Err(err.share()),
        })
    }
}

/// What [`TokenCache::invalidate`] did with a token a 401 rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalidated {
    /// It was dropped; the next request fetches a new one.
    Dropped,
    /// It had already been replaced: the next request uses another token.
    AlreadyReplaced,
    /// Another 401 dropped a token less than a cool-down ago: this one is
    /// kept, so that a server rejecting every token cannot cause a refresh
    /// storm.
    Throttled,
}

impl Invalidated {
    /// Whether sending the request again may succeed: it will carry another token.
    pub(crate) fn may_cure(self) -> bool {
        self != Invalidated::Throttled
    }
}

impl TokenCache {
    pub(crate) fn new(params: TokenParams, config: Arc<CacheConfig>) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                current: ArcSwapOption::empty(),
                slow: Mutex::default(),
                params,
                config,
            }),
        }
    }

    /// The current token's header and generation if it may be sent now;
    /// starts the background refresh when one is due. The hot path.
    #[inline]
    pub(crate) fn check(&self, token: &CachedToken) -> Option<(HeaderValue, u64)> {
        let now = self.inner.config.clock.now();
        if !token.is_usable(now) {
            return None;
        }
        if token.refresh_is_due(now) {
            self.inner.refresh_ahead(token, now);
        }
        Some((token.header.clone(), token.generation))
    }

    /// [`check`](Self::check) on the current token, if any.
    #[inline]
    pub(crate) fn cached(&self) -> Option<(HeaderValue, u64)> {
        self.check(self.inner.current.load().as_deref()?)
    }

    pub(crate) fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The current token as stored, for [`arc_swap::Cache`].
    pub(crate) fn current_slot(&self) -> &ArcSwapOption<CachedToken> {
        &self.inner.current
    }

    /// A token that may be sent now: the cached one, the one in flight, or
    /// one fetched now; during a cool-down, the error that started it.
    pub(crate) fn wait(&self) -> TokenWait {
        let inner = &self.inner;
        let now = inner.config.clock.now();
        let mut slow = inner.lock_slow();
        if let Some(token) = inner.usable(now) {
            return TokenWait::ready(Ok(token));
        }
        let flight = match &slow.flight {
            Some(flight) => flight.outcome.clone(),
            None => {
                if let (Some(until), Some(failure)) = (slow.cooldown_until, &slow.failure) {
                    if now < until {
                        return TokenWait::ready(Err(failure.share()));
                    }
                }
                match inner.start_flight(&mut slow) {
                    Ok(flight) => flight,
                    Err(err) => return TokenWait::ready(Err(err)),
                }
            }
        };
        Counters::bump(&inner.config.counters.waited_for_token);
        TokenWait::Flight(flight)
    }

    /// A token that may be sent now, without counting as a request: for
    /// handing tokens out.
    pub(crate) async fn token(&self) -> Result<AccessToken, TokenError> {
        if let Some(current) = self.inner.current.load_full() {
            if self.check(&current).is_some() {
                return Ok(current.token.clone());
            }
        }
        Ok(self.wait().await?.token.clone())
    }

    #[cfg(test)]
    pub(crate) fn current(&self) -> Option<Arc<CachedToken>> {
        self.inner.current.load_full()
    }

    /// The current token, if it is the one of `generation`.
    pub(crate) fn current_of(&self, generation: u64) -> Option<Arc<CachedToken>> {
        self.inner
            .current
            .load_full()
            .filter(|token| token.generation == generation)
    }

    /// Drops the token of `generation` after a 401, if it is still current
    /// and no other 401 dropped one less than a cool-down ago.
    pub(crate) fn invalidate(&self, generation: u64) -> Invalidated {
        let inner = &self.inner;
        let Some(rejected) = self.current_of(generation) else {
            return Invalidated::AlreadyReplaced;
        };
        let now = inner.config.clock.now();
        let mut slow = inner.lock_slow();
        if slow.cooldown_until.is_some_and(|until| now < until) {
            tracing::debug!("a 401 within the cool-down of the last one; keeping the token");
            return Invalidated::Throttled;
        }
        let previous = inner.current.compare_and_swap(&rejected, None);
        if !previous
            .as_ref()
            .is_some_and(|previous| Arc::ptr_eq(previous, &rejected))
        {
            return Invalidated::AlreadyReplaced;
        }
        slow.dropped = Some(rejected);
        Counters::bump(&inner.config.counters.tokens_rejected);
        slow.cooldown_until = Some(now + inner.config.settings.cooldown);
        slow.failure = None;
        tracing::info!("Propel rejected the cached access token with 401; fetching a new one");
        // Fetch the next token now, so the retry finds it on its way.
        if slow.flight.is_none() {
            if let Err(err) = inner.start_flight(&mut slow) {
                tracing::warn!(error = %err, "could not start a token fetch after a 401");
            }
        }
        Invalidated::Dropped
    }
}

impl CacheInner {
    fn lock_slow(&self) -> MutexGuard<'_, Slow> {
        // Every write leaves the slow state consistent, even one cut short by
        // a panic: take it back.
        self.slow
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn usable(&self, now: Time) -> Option<Arc<CachedToken>> {
        self.current
            .load_full()
            .filter(|token| token.is_usable(now))
    }

    /// Starts the background refresh of `token`, unless it was replaced, a
    /// fetch is in flight, or another reader started it first.
    #[cold]
    fn refresh_ahead(self: &Arc<Self>, token: &CachedToken, now: Time) {
        let mut slow = self.lock_slow();
        let still_current = self
            .current
            .load()
            .as_deref()
            .is_some_and(|current| std::ptr::eq(current, token));
        if !still_current || slow.flight.is_some() || !token.refresh_is_due(now) {
            return;
        }
        tracing::debug!("access token due for refresh; fetching the next one in the background");
        match self.start_flight(&mut slow) {
            Ok(_) => token.refresh_from(Time::NEVER),
            Err(err) => {
                // Not on a runtime: let a reader that is try.
                tracing::warn!(error = %err, "could not start a background token refresh");
            }
        }
    }

    /// Spawns the one fetch task and records it as in flight.
    fn start_flight(self: &Arc<Self>, slow: &mut Slow) -> Result<Flight, TokenError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            TokenError::from_source(
                "a token fetch needs a tokio runtime (with its timer enabled), and none is running on this thread",
                false,
            )
        })?;
        slow.counter += 1;
        let id = slow.counter;
        let (tx, rx) = oneshot::channel();
        let previous = self
            .current
            .load_full()
            .or_else(|| slow.dropped.clone())
            .map(|token| token.token.clone());
        let guard = FlightGuard {
            cache: Arc::clone(self),
            id,
            tx: Some(tx),
        };
        runtime.spawn(guard.run(previous));
        let outcome = async move {
            // The guard always answers; this is only for a task that was
            // never polled and whose runtime could not even drop it.
            rx.await.unwrap_or_else(|_| Outcome(Err(abandoned(false))))
        }
        .boxed()
        .shared();
        slow.flight = Some(InFlight {
            id,
            outcome: outcome.clone(),
        });
        Ok(outcome)
    }

    /// One token request (through the second level, if any), under the
    /// fetch timeout, in its tracing span.
    async fn fetch(&self, previous: Option<AccessToken>) -> Result<AccessToken, TokenError> {
        let config = &self.config;
        let span = tracing::info_span!(
            "propel.token_request",
            background = self.current.load().is_some(),
            outcome = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let fetch = match &config.second_level {
            // It counts the token requests it makes: a token from the store is none.
            Some(second_level) => {
                second_level.fetch(Arc::clone(&config.source), self.params.clone(), previous)
            }
            None => {
                Counters::bump(&config.counters.token_requests);
                config.source.fetch_token(&self.params)
            }
        };
        let result = tokio::time::timeout(config.settings.fetch_timeout, fetch)
            .instrument(span.clone())
            .await
            .unwrap_or_else(|_| Err(TokenError::new(TokenErrorKind::Timeout)));
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(token) => {
                span.record("outcome", "ok");
                tracing::info!(parent: &span, elapsed_ms, lifetime_s = token.lifetime().as_secs(), "fetched a Propel access token");
            }
            Err(err) => {
                span.record("outcome", "error");
                Counters::bump(&config.counters.token_failures);
                tracing::warn!(parent: &span, elapsed_ms, error = %err, "token request failed");
            }
        }
        result
    }

    /// Ends flight `id` with its result: publishes the token, or records
    /// the failure as a backoff on the current token or as a cool-down. In
    /// one critical section, so a request that rejects the new token at once
    /// (a 401) starts a new flight instead of joining this one.
    fn finish(&self, id: u64, result: Result<AccessToken, TokenError>) -> Outcome {
        let now = self.config.clock.now();
        let mut slow = self.lock_slow();
        if slow.flight.as_ref().is_some_and(|flight| flight.id == id) {
            slow.flight = None;
        }
        let result = result.and_then(|token| self.deadlines(token, now));
        match result {
            Ok((token, deadlines)) => {
                slow.counter += 1;
                let cached = Arc::new(CachedToken {
                    header: token.header().clone(),
                    generation: slow.counter,
                    token,
                    stale_at: deadlines.stale_at,
                    refresh_from: AtomicU64::new(deadlines.refresh_at.0),
                });
                self.current.store(Some(Arc::clone(&cached)));
                slow.dropped = None;
                slow.failure = None;
                slow.failed_refreshes = 0;
                Outcome(Ok(cached))
            }
            Err(err) => {
                self.record_failure(&mut slow, &err, now);
                Outcome(Err(err))
            }
        }
    }

    /// Ends flight `id`, whose task was dropped with its runtime, leaving
    /// everything else as it was.
    fn abandon(&self, id: u64) -> Outcome {
        let mut slow = self.lock_slow();
        if slow.flight.as_ref().is_some_and(|flight| flight.id == id) {
            slow.flight = None;
            // A refresh ahead that never ran: the next reader tries again.
            if let Some(current) = self.current.load_full() {
                current.refresh_from(self.config.clock.now());
            }
        }
        Outcome(Err(abandoned(false)))
    }

    fn record_failure(&self, slow: &mut Slow, err: &TokenError, now: Time) {
        let settings = &self.config.settings;
        let retry_after = err.retry_after().unwrap_or_default();
        match self.usable(now) {
            // A background refresh failed: the current token stays in use.
            Some(current) if err.is_transient() => {
                slow.failed_refreshes = slow.failed_refreshes.saturating_add(1);
                let backoff = settings
                    .backoff(slow.failed_refreshes, random_unit())
                    .max(retry_after);
                current.refresh_from(now + backoff);
                tracing::warn!(
                    retry_in_ms = backoff.as_millis() as u64,
                    "background token refresh failed; the current token stays in use"
                );
            }
            Some(current) => {
                // A 4xx will not pass by itself: no retries in the
                // background; once the token goes stale, requests ask again.
                current.refresh_from(Time::NEVER);
            }
            None => {
                let cooldown = settings.cooldown.max(retry_after);
                tracing::warn!(
                    cooldown_ms = cooldown.as_millis() as u64,
                    "no usable access token; requests fail fast with this error during the cool-down"
                );
                slow.cooldown_until = Some(now + cooldown);
                slow.failure = Some(err.share());
            }
        }
    }

    /// When a fresh token goes stale, a safety margin (at most a quarter of
    /// its lifetime) before it expires, and when it is due for refresh. A
    /// token already inside that margin is refused: publishing it would only
    /// send the next request to fetch again.
    fn deadlines(
        &self,
        token: AccessToken,
        now: Time,
    ) -> Result<(AccessToken, Deadlines), TokenError> {
        let settings = &self.config.settings;
        let margin = settings.safety_margin.min(token.lifetime() / 4);
        let usable = token.expires_in().saturating_sub(margin);
        if usable.is_zero() {
            return Err(TokenError::new(TokenErrorKind::Expired)
                .with_description("the token expires within the safety margin"));
        }
        let fraction = settings.refresh_at - settings.refresh_jitter * random_unit();
        let deadlines = Deadlines {
            refresh_at: now + usable.mul_f64(fraction.clamp(0.05, 1.0)),
            stale_at: now + usable,
        };
        Ok((token, deadlines))
    }
}

/// When a token is due for refresh, and when it goes stale.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    refresh_at: Time,
    stale_at: Time,
}

/// Owns a flight's task: ends the flight with the fetch's result, or, should
/// the task die first (a token source that panics, a runtime shutting down),
/// with an error, so that nobody waits for it and the cache can fetch again.
struct FlightGuard {
    cache: Arc<CacheInner>,
    id: u64,
    tx: Option<oneshot::Sender<Outcome>>,
}

impl FlightGuard {
    async fn run(mut self, previous: Option<AccessToken>) {
        let result = self.cache.fetch(previous).await;
        self.end(result);
    }

    fn end(&mut self, result: Result<AccessToken, TokenError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(self.cache.finish(self.id, result));
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let outcome = if std::thread::panicking() {
            // A bug in the token source: a failure like any other, cool-down
            // included, so that the next requests do not panic it again at once.
            tracing::error!("the token source panicked");
            self.cache.finish(self.id, Err(abandoned(true)))
        } else {
            // Its runtime shut down: worth another try at once, on another.
            tracing::warn!("a token fetch was dropped with its runtime");
            self.cache.abandon(self.id)
        };
        let _ = tx.send(outcome);
    }
}

/// The error of a fetch whose task ended without an answer: a bug when the
/// token source panicked; worth another try when its runtime shut down (a
/// request on another runtime starts a new fetch there).
fn abandoned(panicked: bool) -> TokenError {
    if panicked {
        TokenError::from_source("the token source panicked", false)
    } else {
        TokenError::from_source(
            "the token fetch was dropped before it answered: the runtime it ran on shut down",
            true,
        )
    }
}

/// A number in `[0, 1)`, different on every call; enough for jitter.
pub(crate) fn random_unit() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Waiting for a token: already decided, or a share of the flight.
pub(crate) enum TokenWait {
    Ready(Option<Result<Arc<CachedToken>, TokenError>>),
    Flight(Flight),
}

impl TokenWait {
    fn ready(result: Result<Arc<CachedToken>, TokenError>) -> Self {
        TokenWait::Ready(Some(result))
    }
}

impl Future for TokenWait {
    type Output = Result<Arc<CachedToken>, TokenError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            TokenWait::Ready(result) => {
                Poll::Ready(result.take().expect("polled after completion"))
            }
            TokenWait::Flight(flight) => flight.poll_unpin(cx).map(|outcome| outcome.0),
        }
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("params", &self.inner.params)
            .field("has_token", &self.inner.current.load().is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
