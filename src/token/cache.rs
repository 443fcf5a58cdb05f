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
use std::time::Duration;
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

/// A 401 on a token fetched to replace one a 401 rejected, this soon after
/// it arrived, is the second 401 of one request (its retry's): final. Later,
/// it is a new rejection like any other.
const SECOND_401_WINDOW: Duration = Duration::from_secs(60);

/// The least usable life a token must arrive with: less would send nearly
/// every request to fetch again.
const MIN_USABLE: Duration = Duration::from_millis(50);

/// A token in the cache, with its deadlines.
pub(crate) struct CachedToken {
    /// Tells this token from its successors, for [`TokenCache::invalidate`].
    pub(crate) generation: u64,
    pub(crate) token: AccessToken,
    arrived_at: Time,
    /// It was fetched because a 401 rejected the one before.
    replaces_rejected: bool,
    /// From here on the token is not sent: it is too close to its expiry.
    stale_at: Time,
    /// From here on a reader starts a background refresh: the refresh point,
    /// after a failed refresh the end of its backoff, [`Time::NEVER`] while a
    /// refresh is in flight or when none would help.
    refresh_from: AtomicU64,
}

impl CachedToken {
    /// `Authorization: Bearer …`, marked sensitive.
    #[inline]
    pub(crate) fn header(&self) -> &HeaderValue {
        self.token.header()
    }

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
    started: Time,
    outcome: Flight,
    /// Told when a newer flight replaces this one (see `live_flight`), so
    /// that its waiters join that one.
    superseded: oneshot::Sender<()>,
    superseded_rx: Shared<oneshot::Receiver<()>>,
}

pub(crate) type Flight = Shared<oneshot::Receiver<Outcome>>;

/// A flight decided under the lock, spawned after it is released: a runtime
/// that is shutting down drops the task at once, and the guard's `Drop`
/// takes the lock.
struct Spawn {
    runtime: tokio::runtime::Handle,
    guard: FlightGuard,
    previous: Option<AccessToken>,
}

impl Spawn {
    fn spawn(self) {
        self.runtime.spawn(self.guard.run(self.previous));
    }
}

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
    /// It was dropped, but it had itself replaced a token a 401 rejected
    /// moments before: the request's second 401, final.
    DroppedAgain,
    /// Another 401 dropped a token less than a cool-down ago: this one is
    /// kept, so that a server rejecting every token cannot cause a refresh
    /// storm.
    Throttled,
}

impl Invalidated {
    /// Whether sending the request again may succeed: it will carry another token.
    pub(crate) fn may_cure(self) -> bool {
        matches!(self, Invalidated::Dropped | Invalidated::AlreadyReplaced)
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
        Some((token.header().clone(), token.generation))
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
        self.join(true)
    }

    /// [`wait`](Self::wait), counting the request as one that waited or not.
    fn join(&self, count: bool) -> TokenWait {
        let inner = &self.inner;
        let now = inner.config.clock.now();
        let mut slow = inner.lock_slow();
        if let Some(token) = inner.usable(now) {
            return TokenWait::ready(Ok(token));
        }
        let (flight, superseded) = match inner.live_flight(&slow, now) {
            Some(flight) => (flight.outcome.clone(), flight.superseded_rx.clone()),
            None => {
                if let (Some(until), Some(failure)) = (slow.cooldown_until, &slow.failure) {
                    if now < until {
                        return TokenWait::ready(Err(failure.share()));
                    }
                }
                match inner.start_flight(&mut slow, now) {
                    Ok(spawn) => {
                        let flight = slow.flight.as_ref().expect("just recorded");
                        let joined = (flight.outcome.clone(), flight.superseded_rx.clone());
                        drop(slow);
                        spawn.spawn();
                        joined
                    }
                    Err(err) => return TokenWait::ready(Err(err)),
                }
            }
        };
        if count {
            Counters::bump(&inner.config.counters.waited_for_token);
        }
        TokenWait::Flight {
            flight,
            superseded: Some(superseded),
            cache: self.clone(),
        }
    }

    /// A token that may be sent now: for handing tokens out.
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

    /// The token of `generation`, current or the one a 401 dropped last:
    /// what a 401 or 403's message must not show.
    pub(crate) fn token_of(&self, generation: u64) -> Option<Arc<CachedToken>> {
        self.current_of(generation).or_else(|| {
            self.inner
                .lock_slow()
                .dropped
                .clone()
                .filter(|token| token.generation == generation)
        })
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
        let again = rejected.replaces_rejected && now < rejected.arrived_at + SECOND_401_WINDOW;
        slow.dropped = Some(rejected);
        Counters::bump(&inner.config.counters.tokens_rejected);
        slow.cooldown_until = Some(now + inner.config.settings.cooldown);
        slow.failure = None;
        tracing::info!("Propel rejected the cached access token with 401; fetching a new one");
        // Fetch the next token now, so the retry finds it on its way.
        if inner.live_flight(&slow, now).is_none() {
            match inner.start_flight(&mut slow, now) {
                Ok(spawn) => {
                    drop(slow);
                    spawn.spawn();
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not start a token fetch after a 401")
                }
            }
        }
        if again {
            Invalidated::DroppedAgain
        } else {
            Invalidated::Dropped
        }
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
        if !still_current || self.live_flight(&slow, now).is_some() || !token.refresh_is_due(now) {
            return;
        }
        tracing::debug!("access token due for refresh; fetching the next one in the background");
        match self.start_flight(&mut slow, now) {
            Ok(spawn) => {
                token.refresh_from(Time::NEVER);
                drop(slow);
                spawn.spawn();
            }
            Err(err) => {
                // Not on a runtime: a reader that is tries after a while.
                token.refresh_from(now + self.config.settings.backoff_base);
                tracing::warn!(error = %err, "could not start a background token refresh");
            }
        }
    }

    /// The flight in progress, unless it started longer than the fetch
    /// timeout ago: a flight that old is lost (its runtime is not being
    /// driven, or the host slept), and waiting on it would only end in its
    /// timeout. The next reader's flight replaces it and its waiters move to
    /// that one; the one case where two token requests of one cache may
    /// overlap, briefly. Like every deadline here, the age is checked on
    /// read: nothing sleeps until it.
    fn live_flight<'s>(&self, slow: &'s Slow, now: Time) -> Option<&'s InFlight> {
        let timeout = self.config.settings.fetch_timeout;
        slow.flight
            .as_ref()
            .filter(|flight| now < flight.started + timeout)
    }

    /// Records a new flight; the caller spawns its task once the lock is
    /// released.
    fn start_flight(self: &Arc<Self>, slow: &mut Slow, now: Time) -> Result<Spawn, TokenError> {
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
        let (superseded, superseded_rx) = oneshot::channel();
        let lost = slow.flight.replace(InFlight {
            id,
            started: now,
            outcome: rx.shared(),
            superseded,
            superseded_rx: superseded_rx.shared(),
        });
        if let Some(lost) = lost {
            // Its waiters move on to this one.
            let _ = lost.superseded.send(());
        }
        let guard = FlightGuard {
            cache: Arc::clone(self),
            id,
            tx: Some(tx),
        };
        Ok(Spawn {
            runtime,
            guard,
            previous,
        })
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
    /// (a 401) starts a new flight instead of joining this one. A flight
    /// that a newer one replaced (see `live_flight`) only answers its own
    /// waiters, and publishes its token only if the cache has none usable.
    fn finish(&self, id: u64, result: Result<AccessToken, TokenError>) -> Outcome {
        let now = self.config.clock.now();
        let mut slow = self.lock_slow();
        let current_flight = slow.flight.as_ref().is_some_and(|flight| flight.id == id);
        if current_flight {
            slow.flight = None;
        }
        let result = result.and_then(|token| self.deadlines(token, now));
        match result {
            Ok((token, deadlines)) => {
                slow.counter += 1;
                let cached = Arc::new(CachedToken {
                    generation: slow.counter,
                    token,
                    arrived_at: now,
                    replaces_rejected: slow.dropped.is_some(),
                    stale_at: deadlines.stale_at,
                    refresh_from: AtomicU64::new(deadlines.refresh_at.0),
                });
                if current_flight || self.usable(now).is_none() {
                    self.current.store(Some(Arc::clone(&cached)));
                    slow.dropped = None;
                    slow.failure = None;
                    slow.failed_refreshes = 0;
                }
                Outcome(Ok(cached))
            }
            Err(err) => {
                if current_flight {
                    self.record_failure(&mut slow, &err, now);
                }
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
        Outcome(Err(abandoned()))
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
        if usable < MIN_USABLE {
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

/// Owns a flight's task: ends the flight with the fetch's result (a token
/// source that panics is a failure like any other, cool-down included), or,
/// should the task be dropped first with its runtime, with a transient
/// error, so that nobody waits for it and the cache can fetch again.
struct FlightGuard {
    cache: Arc<CacheInner>,
    id: u64,
    tx: Option<oneshot::Sender<Outcome>>,
}

impl FlightGuard {
    async fn run(mut self, previous: Option<AccessToken>) {
        let fetch = std::panic::AssertUnwindSafe(self.cache.fetch(previous));
        let result = fetch.catch_unwind().await.unwrap_or_else(|_| {
            tracing::error!("the token source panicked");
            Err(TokenError::from_source("the token source panicked", false))
        });
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
        if let Some(tx) = self.tx.take() {
            tracing::warn!("a token fetch was dropped with its runtime");
            let _ = tx.send(self.cache.abandon(self.id));
        }
    }
}

/// The error of a fetch dropped with its runtime before it answered: worth
/// another try at once (a request on another runtime starts a new fetch).
fn abandoned() -> TokenError {
    TokenError::from_source(
        "the token fetch was dropped before it answered: the runtime it ran on shut down",
        true,
    )
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
    Flight {
        flight: Flight,
        /// Resolves when a newer flight replaced this one (it was lost: its
        /// task is on a runtime nobody drives): ask the cache again.
        /// `None` once the flight ended without being replaced.
        superseded: Option<Shared<oneshot::Receiver<()>>>,
        cache: TokenCache,
    },
}

impl TokenWait {
    fn ready(result: Result<Arc<CachedToken>, TokenError>) -> Self {
        TokenWait::Ready(Some(result))
    }
}

impl Future for TokenWait {
    type Output = Result<Arc<CachedToken>, TokenError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this {
                TokenWait::Ready(result) => {
                    return Poll::Ready(result.take().expect("polled after completion"))
                }
                TokenWait::Flight {
                    flight,
                    superseded,
                    cache,
                } => {
                    if let Poll::Ready(outcome) = flight.poll_unpin(cx) {
                        // The guard always answers, but a task its runtime
                        // could not even drop would not.
                        return Poll::Ready(outcome.map_or_else(|_| Err(abandoned()), |o| o.0));
                    }
                    // A flight that ended drops its sender: only a send
                    // means another flight took over.
                    match superseded.as_mut().map(|s| s.poll_unpin(cx)) {
                        Some(Poll::Ready(Ok(()))) => *this = cache.join(false),
                        Some(Poll::Ready(Err(_))) => {
                            *superseded = None;
                            return Poll::Pending;
                        }
                        _ => return Poll::Pending,
                    }
                }
            }
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
