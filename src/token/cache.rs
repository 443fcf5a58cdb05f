//! One token cache: the credential of one parameter set, the deadlines it
//! carries, and the single flight that renews it.
//!
//! - **One model for every credential.** Basic and bearer caches are seeded
//!   and never renewed; a token layer's caches are renewed by a
//!   [`TokenSource`]. Requests read them all the same way; [`Supply`] says
//!   where the credential comes from.
//! - **Deadlines are data.** An entry carries its stale point and refresh
//!   point as wall-clock times, compared with the [`Clock`] on every read:
//!   the first reader past the refresh point starts the one fetch and goes on
//!   with the current token; a reader past the stale point waits for a new
//!   one. No task sleeps until a deadline, so an undriven runtime or a
//!   suspended host never sends an expired token.
//! - **Single flight.** At most one token request per cache, in a task of its
//!   own under the fetch timeout: dropping any waiter (the one that started
//!   it included) cancels nothing. Its outcome lands on the cache's one
//!   channel, where every waiter of that flight (or of a later one) reads it.
//! - **Failures are data too.** A failed background refresh keeps the current
//!   token and moves its refresh point to the end of a backoff. A failure with
//!   no usable token goes to every waiter of that fetch and starts a
//!   cool-down ([`Phase::Failed`]), during which requests get it at once.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use http::HeaderValue;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::watch;
use tracing::Instrument as _;

use super::clock::{Clock, Time};
use super::{AccessToken, Settings, TokenParams, TokenSource};
use crate::error::{TokenError, TokenErrorDetails, TokenErrorKind, UnauthorizedReason};
use crate::stats::Counters;

/// Where a cache's credential comes from.
pub(crate) enum Supply {
    /// The Application's ID and secret, as Basic credentials: seeded, never
    /// stale, never renewed.
    Application,
    /// A token minted elsewhere: seeded, stale at its expiry, never renewed.
    Given,
    /// Tokens from a source, renewed ahead of their expiry.
    Minted(Arc<dyn TokenSource>),
}

/// What every cache of one layer shares.
pub(crate) struct CacheConfig {
    pub(crate) supply: Supply,
    pub(crate) settings: Settings,
    pub(crate) clock: Clock,
    /// The layer's counters: this is their one owner.
    pub(crate) counters: Counters,
    /// The Application secret, to remove by value from what servers say.
    pub(crate) secret: Option<SecretString>,
    /// Where a fetch looks first: a store the processes of a fleet share.
    pub(crate) second_level: Option<Box<dyn SecondLevel>>,
}

impl CacheConfig {
    /// `supply` with the default settings and clock, no secret, no second level.
    pub(crate) fn new(supply: Supply) -> Self {
        Self {
            supply,
            settings: Settings::default(),
            clock: Clock::default(),
            counters: Counters::default(),
            secret: None,
            second_level: None,
        }
    }
}

/// A second-level cache (feature `shared-cache`): consulted only where this
/// cache would fetch, so the hot path never sees it.
pub(crate) trait SecondLevel: Send + Sync {
    /// A token for `params`: from the shared store, or from `source` (and
    /// then shared). `previous` is the token this cache had last: the fetch
    /// wants another one, so the store's copy of it is no hit. It bumps
    /// `token_requests` for each call of `source` it makes.
    fn fetch<'a>(
        &'a self,
        source: &'a dyn TokenSource,
        params: &'a TokenParams,
        previous: Option<&'a AccessToken>,
        counters: &'a Counters,
    ) -> BoxFuture<'a, Result<AccessToken, TokenError>>;
}

/// A 401 on a token fetched to replace one a 401 rejected, this soon after
/// it arrived, is the second 401 of one request (its retry's): final. Later,
/// it is a new rejection like any other.
const SECOND_401_WINDOW: Duration = Duration::from_secs(60);

/// The least usable life a token must arrive with: less would send nearly
/// every request to fetch again.
const MIN_USABLE: Duration = Duration::from_millis(50);

/// How much longer than the fetch timeout a waiter waits for a flight: the
/// flight's own timeout, on the runtime that runs it, answers first.
const WAITER_GRACE: Duration = Duration::from_millis(250);

/// A credential in the cache, with its deadlines.
pub(crate) struct Entry {
    /// Tells this entry from its successors, for [`TokenCache::invalidate`].
    pub(crate) generation: u64,
    /// The header and, as its secret, what the header carries.
    pub(crate) token: AccessToken,
    arrived_at: Time,
    /// It was fetched because a 401 rejected the one before.
    replaces_rejected: bool,
    /// From here on it is not sent: it is too close to its expiry.
    stale_at: Time,
    /// From here on a reader starts a background refresh: the refresh point,
    /// after a failed refresh the end of its backoff, [`Time::NEVER`] while a
    /// refresh is in flight or when none would help. Written under the lock.
    refresh_from: AtomicU64,
    /// Background refreshes of this entry that failed in a row, for the backoff.
    failed_refreshes: AtomicU32,
}

impl Entry {
    fn new(generation: u64, token: AccessToken, now: Time, deadlines: Deadlines) -> Self {
        Self {
            generation,
            token,
            arrived_at: now,
            replaces_rejected: false,
            stale_at: deadlines.stale_at,
            refresh_from: AtomicU64::new(deadlines.refresh_at.0),
            failed_refreshes: AtomicU32::new(0),
        }
    }

    /// Whether it may be sent at `now`.
    #[inline]
    fn is_usable(&self, now: Time) -> bool {
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
    current: ArcSwapOption<Entry>,
    slow: Mutex<Slow>,
    /// The outcome of the latest flight that ended; waiters of a flight read
    /// the first outcome of that flight or a later one.
    landed: watch::Sender<Option<Landed>>,
    params: TokenParams,
    config: Arc<CacheConfig>,
}

/// What only the slow path touches, behind a plain mutex.
struct Slow {
    phase: Phase,
    /// Numbers flights and entries.
    counter: u64,
    /// The entry the current one replaced, or the one a 401 dropped while
    /// none is current: what a late answer on it must not quote, and what
    /// the next fetch replaces.
    previous: Option<Arc<Entry>>,
    /// When a 401 last dropped a token: the next drop waits a cool-down.
    last_drop: Option<Time>,
}

/// What the cache is doing about its next token.
enum Phase {
    Idle,
    Fetching {
        flight: u64,
        lost_at: Time,
    },
    /// The last fetch failed and no token is usable: until `until`, requests
    /// get `error` at once instead of asking again.
    Failed {
        until: Time,
        error: TokenError,
    },
}

/// A flight's outcome.
struct Landed {
    flight: u64,
    outcome: Result<Arc<Entry>, TokenError>,
}

/// What a request needs to wait for, decided under the lock.
enum Join {
    Ready(Result<Arc<Entry>, TokenError>),
    Flight { flight: u64, lost_at: Time },
}

impl TokenCache {
    /// A cache seeded with `token`, never renewed: it goes stale a safety
    /// margin before `token` expires (at once if it already is inside it,
    /// so requests get `Expired`), or never when `expires` is false.
    pub(crate) fn seeded(config: Arc<CacheConfig>, token: AccessToken, expires: bool) -> Self {
        let now = config.clock.now();
        let stale_at = match expires {
            true => deadlines(&config.settings, &token, now).map_or(now, |d| d.stale_at),
            false => Time::NEVER,
        };
        let deadlines = Deadlines {
            refresh_at: Time::NEVER,
            stale_at,
        };
        let entry = Arc::new(Entry::new(1, token, now, deadlines));
        Self::new(TokenParams::default(), config, Some(entry))
    }

    /// A cache holding `current`; an empty one fetches its first token when asked.
    pub(crate) fn new(
        params: TokenParams,
        config: Arc<CacheConfig>,
        current: Option<Arc<Entry>>,
    ) -> Self {
        let slow = Slow {
            phase: Phase::Idle,
            counter: current.as_ref().map_or(0, |entry| entry.generation),
            previous: None,
            last_drop: None,
        };
        Self {
            inner: Arc::new(CacheInner {
                current: ArcSwapOption::new(current),
                slow: Mutex::new(slow),
                landed: watch::Sender::new(None),
                params,
                config,
            }),
        }
    }

    /// `entry`'s header and generation if it may be sent now; starts the
    /// background refresh when one is due. The hot path.
    #[inline]
    pub(crate) fn check(&self, entry: &Entry) -> Option<(HeaderValue, u64)> {
        let now = self.inner.config.clock.now();
        if !entry.is_usable(now) {
            return None;
        }
        if entry.refresh_is_due(now) {
            self.inner.refresh_ahead(entry, now);
        }
        Some((entry.token.header().clone(), entry.generation))
    }

    /// [`check`](Self::check) on the current entry, if any.
    #[inline]
    pub(crate) fn cached(&self) -> Option<(HeaderValue, u64)> {
        self.check(self.inner.current.load().as_deref()?)
    }

    pub(crate) fn config(&self) -> &Arc<CacheConfig> {
        &self.inner.config
    }

    /// The current entry as stored, for [`arc_swap::Cache`].
    pub(crate) fn current_slot(&self) -> &ArcSwapOption<Entry> {
        &self.inner.current
    }

    #[cfg(test)]
    pub(crate) fn current(&self) -> Option<Arc<Entry>> {
        self.inner.current.load_full()
    }

    /// An entry that may be sent now: the cached one, the one in flight, or
    /// one fetched now; during a cool-down, the error that started it. A
    /// flight that has not answered by the fetch timeout (its runtime is not
    /// being driven) is given up with a `Timeout`.
    pub(crate) fn wait(&self) -> impl Future<Output = Result<Arc<Entry>, TokenError>> + 'static {
        let cache = self.clone();
        async move {
            let now = cache.inner.config.clock.now();
            let (flight, lost_at) = match cache.inner.join(now) {
                Join::Ready(result) => return result,
                Join::Flight { flight, lost_at } => (flight, lost_at),
            };
            Counters::bump(&cache.inner.config.counters.waited_for_token);
            let mut landed = cache.inner.landed.subscribe();
            let landing =
                landed.wait_for(|landed| landed.as_ref().is_some_and(|l| l.flight >= flight));
            // A timer needs a runtime; a waiter polled elsewhere waits for
            // the flight, or a later one, to land.
            let bound = lost_at.since(now) + WAITER_GRACE;
            let landed = match tokio::runtime::Handle::try_current() {
                Ok(_) => tokio::time::timeout(bound, landing).await.ok(),
                Err(_) => Some(landing.await),
            };
            match landed {
                Some(Ok(landed)) => match &landed.as_ref().expect("waited for Some").outcome {
                    Ok(entry) => Ok(Arc::clone(entry)),
                    Err(err) => Err(err.share()),
                },
                // The cache, which this future holds, holds the sender.
                Some(Err(_closed)) => Err(abandoned()),
                None => Err(TokenErrorDetails::new(TokenErrorKind::Timeout)
                    .with_description(
                        "the token request in flight did not answer within the fetch timeout",
                    )
                    .into()),
            }
        }
    }

    /// A token that may be sent now: for handing tokens out. Like a request,
    /// it looks again after a wait (a flight's token is not always published).
    pub(crate) async fn token(&self) -> Result<AccessToken, TokenError> {
        loop {
            if let Some(current) = self.inner.current.load_full() {
                if self.check(&current).is_some() {
                    return Ok(current.token.clone());
                }
            }
            self.wait().await?;
        }
    }

    /// The current entry and the one before it: what a 401 or 403's message
    /// must not show, whichever of them the request carried (the server may
    /// quote one it was sent earlier). Taken before a 401 drops one.
    pub(crate) fn recent(&self) -> [Option<Arc<Entry>>; 2] {
        let current = self.inner.current.load_full();
        [current, self.inner.lock_slow().previous.clone()]
    }

    /// After a 401: drops the entry of `generation` if it is still current,
    /// it can be renewed, and no other 401 dropped one less than a cool-down
    /// ago (so that a server rejecting every token cannot cause a refresh
    /// storm); then starts fetching the next token, so the retry finds it on
    /// its way. Says what the 401 means for the next attempt.
    pub(crate) fn invalidate(&self, generation: u64) -> UnauthorizedReason {
        let inner = &self.inner;
        match inner.config.supply {
            Supply::Application => return UnauthorizedReason::ApplicationCredentials,
            Supply::Given => return UnauthorizedReason::GivenToken,
            Supply::Minted(_) => {}
        }
        let now = inner.config.clock.now();
        let mut slow = inner.lock_slow();
        let current = inner.current.load_full();
        let Some(rejected) = current.filter(|entry| entry.generation == generation) else {
            // Already replaced: the next attempt carries another token.
            return UnauthorizedReason::Curable;
        };
        let cooldown = inner.config.settings.cooldown;
        if slow.last_drop.is_some_and(|at| now < at + cooldown) {
            tracing::debug!("a 401 within the cool-down of the last one; keeping the token");
            return UnauthorizedReason::Throttled;
        }
        // Publishing happens under this lock too: the entry is still current.
        inner.current.store(None);
        let again = rejected.replaces_rejected && now < rejected.arrived_at + SECOND_401_WINDOW;
        slow.previous = Some(rejected);
        slow.last_drop = Some(now);
        Counters::bump(&inner.config.counters.tokens_rejected);
        tracing::info!("Propel rejected the cached access token with 401; fetching a new one");
        if !inner.is_fetching(&slow, now) {
            if let Err(err) = inner.start_flight(slow, now) {
                tracing::warn!(error = %err, "could not start a token fetch after a 401");
            }
        }
        // A token that itself replaced a rejected one, moments ago: the
        // request's second 401.
        match again {
            true => UnauthorizedReason::FreshTokenRejected,
            false => UnauthorizedReason::Curable,
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

    fn usable(&self, now: Time) -> Option<Arc<Entry>> {
        self.current
            .load_full()
            .filter(|entry| entry.is_usable(now))
    }

    /// What a request without a usable entry does: take one that became
    /// usable, join the flight in progress, fail fast during a cool-down,
    /// or start a flight.
    fn join(self: &Arc<Self>, now: Time) -> Join {
        let slow = self.lock_slow();
        if let Some(entry) = self.usable(now) {
            return Join::Ready(Ok(entry));
        }
        match &slow.phase {
            &Phase::Fetching { flight, lost_at } if now < lost_at => {
                return Join::Flight { flight, lost_at }
            }
            Phase::Failed { until, error } if now < *until => {
                return Join::Ready(Err(error.share()))
            }
            _ => {}
        }
        if !matches!(self.config.supply, Supply::Minted(_)) {
            return Join::Ready(Err(TokenError::new(TokenErrorKind::Expired)));
        }
        match self.start_flight(slow, now) {
            Ok(flight) => Join::Flight {
                flight,
                lost_at: now + self.config.settings.fetch_timeout,
            },
            Err(err) => Join::Ready(Err(err)),
        }
    }

    /// Whether a flight is in progress and younger than the fetch timeout: a
    /// flight that old is lost (its runtime is not being driven, or the host
    /// slept). The next reader's flight replaces it; its waiters read that
    /// flight's outcome, or give up at their own bound. Like every deadline
    /// here, the age is checked on read: nothing sleeps until it.
    fn is_fetching(&self, slow: &Slow, now: Time) -> bool {
        matches!(slow.phase, Phase::Fetching { lost_at, .. } if now < lost_at)
    }

    /// Starts the background refresh of `entry`, unless it was replaced, a
    /// fetch is in flight, or another reader started it first.
    #[cold]
    fn refresh_ahead(self: &Arc<Self>, entry: &Entry, now: Time) {
        let slow = self.lock_slow();
        let still_current = self
            .current
            .load()
            .as_deref()
            .is_some_and(|current| std::ptr::eq(current, entry));
        if !still_current || self.is_fetching(&slow, now) || !entry.refresh_is_due(now) {
            return;
        }
        tracing::debug!("access token due for refresh; fetching the next one in the background");
        entry.refresh_from(Time::NEVER);
        if let Err(err) = self.start_flight(slow, now) {
            // Not on a runtime: a reader that is tries after a while.
            entry.refresh_from(now + self.config.settings.backoff_base);
            tracing::warn!(error = %err, "could not start a background token refresh");
        }
    }

    /// Records a new flight and spawns its task once the lock is released:
    /// a runtime that is shutting down drops the task at once, and the
    /// guard's `Drop` takes the lock.
    fn start_flight(
        self: &Arc<Self>,
        mut slow: MutexGuard<'_, Slow>,
        now: Time,
    ) -> Result<u64, TokenError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            TokenError::permanent(
                "a token fetch needs a tokio runtime (with its timer enabled), and none is running on this thread",
            )
        })?;
        slow.counter += 1;
        let flight = slow.counter;
        slow.phase = Phase::Fetching {
            flight,
            lost_at: now + self.config.settings.fetch_timeout,
        };
        let previous = self.current.load_full().or_else(|| slow.previous.clone());
        drop(slow);
        let guard = FlightGuard {
            cache: Arc::clone(self),
            flight,
            ended: false,
        };
        runtime.spawn(guard.run(previous.map(|entry| entry.token.clone())));
        Ok(flight)
    }

    /// One token request (through the second level, if any), under the
    /// fetch timeout, in its tracing span.
    async fn fetch(&self, previous: Option<&AccessToken>) -> Result<AccessToken, TokenError> {
        let config = &self.config;
        let Supply::Minted(source) = &config.supply else {
            unreachable!("only renewable caches start flights")
        };
        let span = tracing::info_span!(
            "propel.token_request",
            background = self.current.load().is_some(),
            outcome = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let fetch = match &config.second_level {
            // It counts the token requests it makes: a token from the store is none.
            Some(second) => second.fetch(&**source, &self.params, previous, &config.counters),
            None => {
                Counters::bump(&config.counters.token_requests);
                source.fetch_token(&self.params)
            }
        };
        let result = tokio::time::timeout(config.settings.fetch_timeout, fetch)
            .instrument(span.clone())
            .await
            .unwrap_or_else(|_| Err(TokenError::new(TokenErrorKind::Timeout)));
        let elapsed_ms = started.elapsed().as_millis() as u64;
        span.record("outcome", if result.is_ok() { "ok" } else { "error" });
        match &result {
            Ok(token) => {
                tracing::info!(parent: &span, elapsed_ms, lifetime_s = token.lifetime().as_secs(), "fetched a Propel access token");
            }
            Err(err) => {
                Counters::bump(&config.counters.token_failures);
                tracing::warn!(parent: &span, elapsed_ms, error = %err, "token request failed");
            }
        }
        result
    }

    /// Ends `flight` with its result: publishes the token, or records the
    /// failure as a backoff on the current token or as a cool-down; then
    /// lands the outcome for its waiters. In one critical section, so a
    /// request that rejects the new token at once (a 401) starts a new flight
    /// instead of joining this one. A flight that a newer one replaced
    /// answers its own waiters, and publishes its token only if the cache has
    /// none usable.
    fn finish(
        &self,
        flight: u64,
        result: Result<AccessToken, TokenError>,
        asked_with: Option<&AccessToken>,
    ) {
        let now = self.config.clock.now();
        let mut slow = self.lock_slow();
        let current_flight = matches!(slow.phase, Phase::Fetching { flight: f, .. } if f == flight);
        if current_flight {
            slow.phase = Phase::Idle;
        }
        let outcome = match result.and_then(|token| {
            let deadlines = deadlines(&self.config.settings, &token, now)?;
            Ok((token, deadlines))
        }) {
            Ok((token, deadlines)) => {
                slow.counter += 1;
                let current = self.current.load_full();
                // Nothing current after an entry was there: a 401 dropped it.
                let rejected = slow.previous.as_ref().filter(|_| current.is_none());
                let entry = Arc::new(Entry {
                    replaces_rejected: rejected.is_some(),
                    ..Entry::new(slow.counter, token, now, deadlines)
                });
                // A flight that read the shared store before the 401 may
                // bring the rejected token back: publishing it would drop it
                // again. The next flight asks with it, so the store refuses
                // it. (A source that answers the token it was told is
                // rejected gets its answer published, paced by the cool-down.)
                let rejected_again = rejected
                    .is_some_and(|rejected| same(&rejected.token, &entry.token))
                    && !asked_with.is_some_and(|asked_with| same(asked_with, &entry.token));
                if !rejected_again && (current_flight || self.usable(now).is_none()) {
                    if let Some(replaced) = current {
                        slow.previous = Some(replaced);
                    }
                    self.current.store(Some(Arc::clone(&entry)));
                }
                Ok(entry)
            }
            Err(err) => {
                if current_flight {
                    self.record_failure(&mut slow, &err, now);
                }
                Err(err)
            }
        };
        self.land(flight, outcome);
    }

    /// Ends `flight`, whose task was dropped with its runtime, leaving
    /// everything else as it was.
    fn abandon(&self, flight: u64) {
        let mut slow = self.lock_slow();
        if matches!(slow.phase, Phase::Fetching { flight: f, .. } if f == flight) {
            slow.phase = Phase::Idle;
            // A refresh ahead that never ran: the next reader tries again.
            if let Some(current) = self.current.load_full() {
                current.refresh_from(self.config.clock.now());
            }
        }
        self.land(flight, Err(abandoned()));
    }

    /// Hands `flight`'s outcome to its waiters; never over a later flight's.
    /// Called under the lock.
    fn land(&self, flight: u64, outcome: Result<Arc<Entry>, TokenError>) {
        self.landed.send_if_modified(|landed| {
            if landed.as_ref().is_some_and(|landed| landed.flight > flight) {
                return false;
            }
            *landed = Some(Landed { flight, outcome });
            true
        });
    }

    fn record_failure(&self, slow: &mut Slow, err: &TokenError, now: Time) {
        let settings = &self.config.settings;
        let retry_after = err.retry_after().unwrap_or_default();
        match self.usable(now) {
            // A background refresh failed: the current token stays in use.
            Some(current) if err.is_transient() => {
                let failures = current.failed_refreshes.fetch_add(1, Ordering::Relaxed) + 1;
                let backoff = settings.backoff(failures, random_unit()).max(retry_after);
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
                slow.phase = Phase::Failed {
                    until: now + cooldown,
                    error: err.share(),
                };
            }
        }
    }
}

/// When a token is due for refresh, and when it goes stale.
struct Deadlines {
    refresh_at: Time,
    stale_at: Time,
}

/// A fresh token's deadlines: stale a safety margin (at most a quarter of
/// its lifetime) before it expires, due for refresh at the configured
/// fraction of what is left, less jitter. A token already inside that
/// margin is refused: publishing it would only send the next request to
/// fetch again.
fn deadlines(settings: &Settings, token: &AccessToken, now: Time) -> Result<Deadlines, TokenError> {
    let margin = settings.safety_margin.min(token.lifetime() / 4);
    let usable = token.expires_in().saturating_sub(margin);
    if usable < MIN_USABLE {
        return Err(TokenErrorDetails::new(TokenErrorKind::Expired)
            .with_description("the token expires within the safety margin")
            .into());
    }
    let fraction = settings.refresh_at - settings.refresh_jitter * random_unit();
    Ok(Deadlines {
        refresh_at: now + usable.mul_f64(fraction.clamp(0.05, 1.0)),
        stale_at: now + usable,
    })
}

/// A number in `[0, 1)` from tower's `HasherRng`: enough for jitter.
fn random_unit() -> f64 {
    use tower::util::rng::Rng as _;
    tower::util::rng::HasherRng::default().next_f64()
}

/// Owns a flight's task: ends the flight with the fetch's result (a token
/// source that panics is a failure like any other, cool-down included), or,
/// should the task be dropped first with its runtime, with a transient
/// error, so that nobody waits for it and the cache can fetch again.
struct FlightGuard {
    cache: Arc<CacheInner>,
    flight: u64,
    ended: bool,
}

impl FlightGuard {
    async fn run(mut self, previous: Option<AccessToken>) {
        let fetch = std::panic::AssertUnwindSafe(self.cache.fetch(previous.as_ref()));
        let result = fetch.catch_unwind().await.unwrap_or_else(|_| {
            tracing::error!("the token source panicked");
            Err(TokenError::permanent("the token source panicked"))
        });
        self.ended = true;
        self.cache.finish(self.flight, result, previous.as_ref());
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.ended {
            tracing::warn!("a token fetch was dropped with its runtime");
            self.cache.abandon(self.flight);
        }
    }
}

fn same(a: &AccessToken, b: &AccessToken) -> bool {
    a.secret().expose_secret() == b.secret().expose_secret()
}

/// The error of a fetch dropped with its runtime before it answered: worth
/// another try at once (a request on another runtime starts a new fetch).
fn abandoned() -> TokenError {
    TokenError::transient(
        "the token fetch was dropped before it answered: the runtime it ran on shut down",
    )
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "model_tests.rs"]
mod model_tests;
