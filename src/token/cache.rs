//! The shared token cache: one per layer (and one per [`TokenParams`] set),
//! shared by every clone and every service.
//!
//! - **Hot path**: each service's [`CacheHandle`] holds the current token and
//!   revalidates it with one relaxed atomic load of the shared `ArcSwapOption`,
//!   then clones its pre-built header. No lock, no clock read, no await.
//!   Deadlines are acted on by a timer instead: the task that fetched a token
//!   sleeps until the token is due for refresh, then raises a flag, then
//!   sleeps until it goes stale and removes it (or removes it at once should
//!   the task be dropped with its runtime).
//! - **Single flight**: at most one fetch is in flight per cache. It runs in a
//!   task of its own, under the fetch timeout, so dropping any waiter (the one
//!   that started it included) cancels nothing; waiters share its result.
//! - **Refresh ahead**: the first request to see the refresh flag starts a
//!   background fetch; every request keeps using the current token meanwhile.
//! - **Failures**: a failed background fetch keeps the valid token and retries
//!   with exponential backoff and jitter (only while the token stays valid
//!   longer than the wait). A failure with no valid token goes to every waiter
//!   of that fetch, and new requests get it at once for a cool-down; so does a
//!   fetch task that ends without an answer.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::HeaderValue;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{AccessToken, TokenParams, TokenSource};
use crate::error::{TokenError, TokenErrorKind};
use crate::stats::Counters;

/// When tokens are refreshed and how failures are handled. Set through the
/// layer's builder.
#[derive(Debug, Clone)]
pub(crate) struct RefreshPolicy {
    /// Refresh once this fraction of the usable lifetime has passed.
    pub(crate) refresh_fraction: f64,
    /// Up to this fraction of the lifetime earlier, at random.
    pub(crate) jitter: f64,
    /// A token is stale this long before it expires (at most a quarter of its lifetime).
    pub(crate) safety_margin: Duration,
    pub(crate) fetch_timeout: Duration,
    /// After a failure with no valid token, new requests fail fast this long.
    pub(crate) cooldown: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    /// Whether to refresh ahead at all (a fixed bearer token cannot be).
    pub(crate) refresh_ahead: bool,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            refresh_fraction: 0.8,
            jitter: 0.1,
            safety_margin: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(10),
            cooldown: Duration::from_secs(1),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            refresh_ahead: true,
        }
    }
}

/// The most a `Retry-After` stretches a cool-down or a backoff.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A token in the cache, with its pre-built header.
#[derive(Debug)]
pub(crate) struct CachedToken {
    pub(crate) header: HeaderValue,
    /// Identifies this token for [`TokenCache::invalidate`].
    pub(crate) generation: u64,
    token: AccessToken,
    refresh_due: AtomicBool,
    refresh_at: Instant,
    stale_at: Instant,
}

impl CachedToken {
    pub(crate) fn token(&self) -> &AccessToken {
        &self.token
    }
}

/// One token cache. Cheap to clone; clones share everything.
#[derive(Clone, Debug)]
pub(crate) struct TokenCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    current: ArcSwapOption<CachedToken>,
    slow: Mutex<Slow>,
    /// Wakes a fetch sleeping in background backoff when a request starts
    /// waiting for it (the token it was protecting is gone).
    waiter_arrived: Notify,
    source: Arc<dyn TokenSource>,
    params: TokenParams,
    policy: Arc<RefreshPolicy>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for CacheInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("params", &self.params)
            .field("has_token", &self.current.load().is_some())
            .finish_non_exhaustive()
    }
}

/// State only the slow path touches, behind a plain mutex.
#[derive(Default)]
struct Slow {
    flight: Option<Flight>,
    failure: Option<Failure>,
    last_invalidation: Option<Instant>,
    generation: u64,
}

struct Failure {
    error: TokenError,
    until: Instant,
}

type Flight = Shared<BoxFuture<'static, Outcome>>;

/// A fetch's result, shared by all its waiters.
pub(crate) struct Outcome(pub(crate) Result<Arc<CachedToken>, TokenError>);

impl Clone for Outcome {
    fn clone(&self) -> Self {
        Outcome(match &self.0 {
            Ok(token) => Ok(Arc::clone(token)),
            Err(err) => Err(err.share()),
        })
    }
}

/// The hot path of one service: the cached token is held here and
/// revalidated with one relaxed atomic load of the shared pointer (arc-swap's
/// `Cache`), with no reference counting while the token is unchanged.
#[derive(Clone, Debug)]
pub(crate) struct CacheHandle {
    cache: TokenCache,
    current: arc_swap::Cache<Current, Option<Arc<CachedToken>>>,
}

impl CacheHandle {
    /// Like [`TokenCache::cached`], without touching the shared count.
    #[inline]
    pub(crate) fn cached(&mut self) -> Option<(HeaderValue, u64)> {
        let cached = Option::as_ref(self.current.load())?;
        self.cache.use_token(cached)
    }
}

/// Lets arc-swap's `Cache` reach the cache's current token.
#[derive(Clone, Debug)]
struct Current(TokenCache);

impl std::ops::Deref for Current {
    type Target = ArcSwapOption<CachedToken>;

    fn deref(&self) -> &Self::Target {
        &self.0.inner.current
    }
}

/// What [`TokenCache::invalidate`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Invalidated {
    /// The token was dropped; the next one will be fetched.
    Dropped,
    /// It had already been replaced.
    AlreadyReplaced,
    /// A 401 dropped a token less than a cool-down ago: this one is kept, so
    /// that a server rejecting every token cannot cause a refresh storm.
    Throttled,
}

impl TokenCache {
    pub(crate) fn new(
        source: Arc<dyn TokenSource>,
        params: TokenParams,
        policy: Arc<RefreshPolicy>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                current: ArcSwapOption::empty(),
                slow: Mutex::new(Slow::default()),
                waiter_arrived: Notify::new(),
                source,
                params,
                policy,
                counters,
            }),
        }
    }

    /// The current token's header and generation, if there is a token that
    /// is not stale. Starts a background refresh when one is due.
    #[inline]
    pub(crate) fn cached(&self) -> Option<(HeaderValue, u64)> {
        self.use_token(self.inner.current.load().as_ref()?)
    }

    #[inline]
    fn use_token(&self, cached: &CachedToken) -> Option<(HeaderValue, u64)> {
        if cached.refresh_due.load(Ordering::Relaxed) {
            self.refresh_ahead(cached);
        }
        Some((cached.header.clone(), cached.generation))
    }

    /// A handle for one service's hot path (see [`CacheHandle`]).
    pub(crate) fn handle(&self) -> CacheHandle {
        CacheHandle {
            cache: self.clone(),
            current: arc_swap::Cache::new(Current(self.clone())),
        }
    }

    /// The current token, if any (for handing tokens out).
    pub(crate) fn current(&self) -> Option<Arc<CachedToken>> {
        self.inner.current.load_full()
    }

    /// The slow path: waits for the in-flight fetch, starts one, or fails
    /// fast during a cool-down.
    pub(crate) fn wait(&self) -> TokenWait {
        let mut slow = self.inner.lock_slow();
        if let Some(cached) = self.inner.current.load_full() {
            return TokenWait::ready(Ok(cached));
        }
        if let Some(flight) = slow.flight.as_ref().filter(|f| f.peek().is_none()) {
            Counters::bump(&self.inner.counters.waited_for_token);
            self.inner.waiter_arrived.notify_waiters();
            return TokenWait::Flight(flight.clone());
        }
        if let Some(failure) = &slow.failure {
            if Instant::now() < failure.until {
                return TokenWait::ready(Err(failure.error.share()));
            }
        }
        match self.inner.start_flight(&mut slow) {
            Ok(flight) => {
                Counters::bump(&self.inner.counters.waited_for_token);
                TokenWait::Flight(flight)
            }
            Err(err) => TokenWait::ready(Err(err)),
        }
    }

    /// Drops the token of `generation` after a 401, if it is still current.
    pub(crate) fn invalidate(&self, generation: u64) -> Invalidated {
        let Some(cached) = self.current_of(generation) else {
            return Invalidated::AlreadyReplaced;
        };
        let mut slow = self.inner.lock_slow();
        let now = Instant::now();
        if slow
            .last_invalidation
            .is_some_and(|last| now < last + self.inner.policy.cooldown)
        {
            tracing::debug!("a second 401 within the cool-down; keeping the token");
            return Invalidated::Throttled;
        }
        let previous = self.inner.current.compare_and_swap(&cached, None);
        if !previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, &cached)) {
            return Invalidated::AlreadyReplaced;
        }
        slow.last_invalidation = Some(now);
        tracing::info!("Propel rejected the cached access token with 401; fetching a new one");
        Invalidated::Dropped
    }

    /// Whether the cache holds nothing worth keeping: no token, no fetch in
    /// flight, no failure cooling down. Evicting a busy cache would start a
    /// second flight for the same parameters, or forget a cool-down.
    pub(crate) fn is_idle(&self) -> bool {
        if self.inner.current.load().is_some() {
            return false;
        }
        let slow = self.inner.lock_slow();
        let in_flight = slow.flight.as_ref().is_some_and(|f| f.peek().is_none());
        let cooling_down = slow
            .failure
            .as_ref()
            .is_some_and(|failure| Instant::now() < failure.until);
        !in_flight && !cooling_down
    }

    /// The current token, if it is the one of `generation`.
    pub(crate) fn current_of(&self, generation: u64) -> Option<Arc<CachedToken>> {
        self.current()
            .filter(|cached| cached.generation == generation)
    }

    fn refresh_ahead(&self, cached: &CachedToken) {
        if !cached.refresh_due.swap(false, Ordering::AcqRel) {
            return; // another request got here first
        }
        let mut slow = self.inner.lock_slow();
        if slow.flight.as_ref().is_some_and(|f| f.peek().is_none()) {
            return;
        }
        tracing::debug!("access token due for refresh; fetching the next one in the background");
        if let Err(err) = self.inner.start_flight(&mut slow) {
            // Let the next request try again.
            cached.refresh_due.store(true, Ordering::Release);
            tracing::warn!(error = %err, "could not start a background token refresh");
        }
    }
}

impl CacheInner {
    fn is_current(&self, cached: &Arc<CachedToken>) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, cached))
    }

    fn lock_slow(&self) -> MutexGuard<'_, Slow> {
        // The slow state stays consistent even if a holder panicked.
        self.slow
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns the one fetch task and records it as in flight.
    fn start_flight(self: &Arc<Self>, slow: &mut Slow) -> Result<Flight, TokenError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            TokenError::from_source(
                "a token fetch needs a tokio runtime (with its timer enabled), and none is running on this thread",
                false,
            )
        })?;
        let (tx, rx) = oneshot::channel();
        runtime.spawn(Arc::clone(self).run_flight(tx));
        let flight = async move {
            // The task ended without an answer: do not leave anyone waiting.
            rx.await.unwrap_or_else(|_| Outcome(Err(abandoned())))
        }
        .boxed()
        .shared();
        slow.flight = Some(flight.clone());
        Ok(flight)
    }

    /// The fetch task: attempts (and background retries), then publishing,
    /// then acting on the new token's deadlines.
    async fn run_flight(self: Arc<Self>, tx: oneshot::Sender<Outcome>) {
        // Should this task end early (a token source that panics, a runtime
        // shutting down), the guard still ends the flight, with an error
        // and a cool-down: nobody waits for it, and the next requests do not
        // spawn fetch after fetch.
        let guard = EndsFlight(Some(Arc::clone(&self)));
        let result = self.fetch().await;
        guard.disarm();
        self.end_flight(&result);
        let published = result.as_ref().ok().cloned();
        let _ = tx.send(Outcome(result));
        if let Some(cached) = published {
            let weak = Arc::downgrade(&self);
            drop(self);
            watch_deadlines(weak, cached).await;
        }
    }

    /// Token requests until one succeeds, or fails in a way (or at a time)
    /// that background retries cannot help.
    async fn fetch(&self) -> Result<Arc<CachedToken>, TokenError> {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let background = self.current.load().is_some();
            Counters::bump(&self.counters.token_requests);
            let span = tracing::info_span!(
                "propel.token_request",
                attempt,
                background,
                outcome = tracing::field::Empty,
            );
            let started = Instant::now();
            let fetched = tokio::time::timeout(
                self.policy.fetch_timeout,
                self.source.fetch_token(&self.params),
            )
            .instrument(span.clone())
            .await
            .unwrap_or_else(|_| Err(TokenError::new(TokenErrorKind::Timeout)))
            .and_then(|token| self.deadlines(token));
            match fetched {
                Ok((token, deadlines)) => {
                    span.record("outcome", "ok");
                    tracing::info!(parent: &span, elapsed_ms = started.elapsed().as_millis() as u64, lifetime_s = token.lifetime().as_secs(), "fetched a Propel access token");
                    return Ok(self.publish(token, deadlines));
                }
                Err(err) => {
                    span.record("outcome", "error");
                    Counters::bump(&self.counters.token_failures);
                    let mut waiter_arrived = std::pin::pin!(self.waiter_arrived.notified());
                    waiter_arrived.as_mut().enable();
                    let Some(delay) = self.background_retry_delay(attempt, &err) else {
                        tracing::warn!(parent: &span, error = %err, "token request failed");
                        return Err(err);
                    };
                    tracing::warn!(parent: &span, error = %err, retry_in_ms = delay.as_millis() as u64, "background token refresh failed; the current token stays in use");
                    // Sleep, unless the token is dropped (a 401) and
                    // requests start waiting: then retry at once.
                    let sleep = std::pin::pin!(tokio::time::sleep(delay));
                    futures_util::future::select(sleep, waiter_arrived).await;
                }
            }
        }
    }

    /// Clears the flight; after a failure with no valid token, starts the
    /// cool-down during which requests get this error at once.
    fn end_flight(&self, result: &Result<Arc<CachedToken>, TokenError>) {
        let mut slow = self.lock_slow();
        slow.flight = None;
        match result {
            Ok(_) => slow.failure = None,
            Err(err) if self.current.load().is_none() => {
                let wait = err
                    .retry_after()
                    .map_or(Duration::ZERO, |after| after.min(MAX_RETRY_AFTER));
                let cooldown = self.policy.cooldown.max(wait);
                tracing::warn!(cooldown_ms = cooldown.as_millis() as u64, "no valid access token; requests fail fast with this error during the cool-down");
                slow.failure = Some(Failure {
                    error: err.share(),
                    until: Instant::now() + cooldown,
                });
            }
            Err(_) => {}
        }
    }

    /// When a fresh token is due for refresh and when it goes stale: a
    /// safety margin (at most a quarter of its lifetime) before it expires.
    /// A token already inside that margin is refused: publishing it would
    /// only send the next request to fetch again.
    fn deadlines(&self, token: AccessToken) -> Result<(AccessToken, Deadlines), TokenError> {
        let now = Instant::now();
        let margin = self.policy.safety_margin.min(token.lifetime() / 4);
        let stale_at = token
            .expires_at()
            .checked_sub(margin)
            .filter(|at| *at > now);
        let Some(stale_at) = stale_at else {
            return Err(TokenError::build(
                TokenErrorKind::Expired,
                None,
                None,
                Some("the token expires within the safety margin".into()),
                None,
                None,
            ));
        };
        let fraction = self.policy.refresh_fraction - self.policy.jitter * random_unit();
        let refresh_at = now + (stale_at - now).mul_f64(fraction.clamp(0.05, 1.0));
        Ok((
            token,
            Deadlines {
                refresh_at,
                stale_at,
            },
        ))
    }

    /// Puts a fresh token in place.
    fn publish(&self, token: AccessToken, deadlines: Deadlines) -> Arc<CachedToken> {
        // Under the slow lock, so that the token and the end of the flight
        // show together: a request that rejects this token at once (a 401)
        // must start a new flight, not join this one and get it back.
        let mut slow = self.lock_slow();
        slow.generation += 1;
        let cached = Arc::new(CachedToken {
            header: token.header().clone(),
            generation: slow.generation,
            token,
            refresh_due: AtomicBool::new(false),
            refresh_at: deadlines.refresh_at,
            stale_at: deadlines.stale_at,
        });
        self.current.store(Some(Arc::clone(&cached)));
        slow.flight = None;
        slow.failure = None;
        cached
    }

    /// How long to wait before retrying a failed fetch in the background, or
    /// `None` to give up: the error is not transient, there is no valid token
    /// to keep serving (waiters get the error now), or it would go stale first.
    fn background_retry_delay(&self, attempt: u32, err: &TokenError) -> Option<Duration> {
        if !err.is_transient() {
            return None;
        }
        let current = self.current.load();
        let stale_at = current.as_ref()?.stale_at;
        let exp = self
            .policy
            .backoff_base
            .saturating_mul(1 << attempt.min(16).saturating_sub(1))
            .min(self.policy.backoff_max);
        // "Equal jitter": half fixed, half random, so retries never bunch up.
        let delay = exp / 2 + exp.mul_f64(0.5 * random_unit());
        let delay = delay.max(err.retry_after().unwrap_or_default().min(MAX_RETRY_AFTER));
        (Instant::now() + delay < stale_at).then_some(delay)
    }
}

/// Raises the token's refresh flag when it is due, and removes it when it goes
/// stale, unless it has been replaced meanwhile. Holds the cache weakly: a
/// dropped layer ends this task at its next wake-up. Should the task be
/// dropped first (its runtime shut down), the token goes with it: without
/// this timer nothing would ever mark it stale.
async fn watch_deadlines(cache: Weak<CacheInner>, cached: Arc<CachedToken>) {
    let _stale_on_drop = StaleOnDrop {
        cache: cache.clone(),
        cached: Arc::clone(&cached),
    };
    if cache
        .upgrade()
        .is_some_and(|inner| inner.policy.refresh_ahead)
    {
        tokio::time::sleep_until(cached.refresh_at).await;
        match cache.upgrade() {
            Some(inner) if inner.is_current(&cached) => {
                cached.refresh_due.store(true, Ordering::Release)
            }
            _ => return,
        }
    }
    tokio::time::sleep_until(cached.stale_at).await;
    // `_stale_on_drop` removes the token now.
}

/// Removes a token from its cache, if it is still the current one, when
/// dropped: at its stale time, or when its timer dies.
struct StaleOnDrop {
    cache: Weak<CacheInner>,
    cached: Arc<CachedToken>,
}

impl Drop for StaleOnDrop {
    fn drop(&mut self) {
        if let Some(inner) = self.cache.upgrade() {
            let previous = inner.current.compare_and_swap(&self.cached, None);
            if previous
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, &self.cached))
            {
                tracing::debug!("access token went stale before a refresh landed");
            }
        }
    }
}

/// Ends a flight whose task stopped before it could (see `run_flight`).
struct EndsFlight(Option<Arc<CacheInner>>);

impl EndsFlight {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for EndsFlight {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            tracing::error!("a token fetch ended without an answer");
            inner.end_flight(&Err(abandoned()));
        }
    }
}

/// The error of a fetch whose task ended without an answer.
fn abandoned() -> TokenError {
    TokenError::from_source(
        "the token fetch ended without an answer: the token source panicked, or the runtime shut down",
        false,
    )
}

/// When a token is due for refresh, and when it goes stale.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    refresh_at: Instant,
    stale_at: Instant,
}

/// A number in `[0, 1)`, different on every call; enough for jitter.
fn random_unit() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Waiting for a token: either already decided, or a share of the in-flight fetch.
pub(crate) enum TokenWait {
    Ready(Option<Outcome>),
    Flight(Flight),
}

impl TokenWait {
    fn ready(result: Result<Arc<CachedToken>, TokenError>) -> Self {
        TokenWait::Ready(Some(Outcome(result)))
    }
}

impl Future for TokenWait {
    type Output = Result<Arc<CachedToken>, TokenError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            TokenWait::Ready(outcome) => {
                Poll::Ready(outcome.take().expect("polled after completion").0)
            }
            TokenWait::Flight(flight) => flight.poll_unpin(cx).map(|outcome| outcome.0),
        }
    }
}

impl std::fmt::Debug for TokenWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenWait::Ready(_) => "TokenWait::Ready",
            TokenWait::Flight(_) => "TokenWait::Flight",
        })
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
