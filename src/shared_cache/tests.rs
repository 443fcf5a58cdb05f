//! The fetch through the store, against an in-memory store that tests can
//! make fail or hang, on paused time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tower::BoxError;

use super::fetch::StoreLevel;
use super::seal::{Entry, Keys};
use super::{SharedCacheSettings, SharedStore};
use crate::error::{TokenError, TokenErrorKind};
use crate::stats::{Counters, Stats};
use crate::token::cache::SecondLevel;
use crate::{AccessToken, Settings, TokenParams, TokenSource};

const HOUR: Duration = Duration::from_secs(3600);
const TOKEN_URL: &str = "https://auth.example/oauth2/token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Works,
    Fails,
    Hangs,
}

/// One store, as a fleet's Redis.
#[derive(Debug)]
struct MemoryStore {
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
    mode: Mutex<Mode>,
    ttls: Mutex<Vec<Duration>>,
    round_trips: AtomicUsize,
}

impl MemoryStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::default(),
            mode: Mutex::new(Mode::Works),
            ttls: Mutex::default(),
            round_trips: AtomicUsize::new(0),
        })
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn live(&self, key: &str) -> Option<Vec<u8>> {
        let entries = self.entries.lock().unwrap();
        entries
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(value, _)| value.clone())
    }

    fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        let until = Instant::now() + ttl;
        self.entries
            .lock()
            .unwrap()
            .insert(key.to_owned(), (value, until));
    }

    fn keys(&self) -> Vec<String> {
        self.entries.lock().unwrap().keys().cloned().collect()
    }

    fn call<'a, T: Send + 'a>(
        &'a self,
        op: impl FnOnce() -> T + Send + 'a,
    ) -> BoxFuture<'a, Result<T, BoxError>> {
        self.round_trips.fetch_add(1, Ordering::SeqCst);
        let mode = *self.mode.lock().unwrap();
        Box::pin(async move {
            match mode {
                Mode::Works => Ok(op()),
                Mode::Fails => Err("connection refused".into()),
                Mode::Hangs => std::future::pending().await,
            }
        })
    }
}

/// `Arc<MemoryStore>` as the store, so that tests keep a handle.
#[derive(Debug, Clone)]
struct Shared(Arc<MemoryStore>);

impl SharedStore for Shared {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        self.0.call(move || self.0.live(key))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.0.call(move || {
            self.0.ttls.lock().unwrap().push(ttl);
            self.0.set(key, value, ttl)
        })
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        self.0.call(move || {
            let free = self.0.live(key).is_none();
            if free {
                self.0.set(key, owner.as_bytes().to_vec(), lease);
            }
            free
        })
    }

    fn unlock<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), BoxError>> {
        self.0.call(move || {
            if self.0.live(key).as_deref() == Some(owner.as_bytes()) {
                self.0.entries.lock().unwrap().remove(key);
            }
        })
    }
}

/// Unique tokens (across all sources of a test), after a delay, counted.
#[derive(Debug)]
struct Source {
    delay: Duration,
    lifetime: Duration,
    fail: bool,
    calls: AtomicUsize,
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

impl Source {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            delay,
            lifetime: HOUR,
            fail: false,
            calls: AtomicUsize::new(0),
        })
    }

    fn failing() -> Arc<Self> {
        Arc::new(Self {
            fail: true,
            ..Arc::into_inner(Self::new(Duration::ZERO)).unwrap()
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenSource for Source {
    fn fetch_token(
        &self,
        _params: &TokenParams,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (delay, lifetime, fail) = (self.delay, self.lifetime, self.fail);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if fail {
                return Err(TokenError::new(TokenErrorKind::InvalidClient));
            }
            let n = NEXT_TOKEN.fetch_add(1, Ordering::SeqCst);
            AccessToken::new(format!("token-{n}"), lifetime)
        })
    }
}

/// One process of the fleet: its own second level and counters.
struct Process {
    level: StoreLevel,
    source: Arc<Source>,
    counters: Counters,
}

impl Process {
    fn new(store: &Arc<MemoryStore>, source: Arc<Source>) -> Self {
        let level = StoreLevel::new(
            Arc::new(Shared(Arc::clone(store))),
            keys(),
            TOKEN_URL.to_owned(),
            SharedCacheSettings::default(),
            &Settings::default(),
        );
        Self {
            level,
            source,
            counters: Counters::default(),
        }
    }

    async fn fetch(&self, previous: Option<&AccessToken>) -> Result<AccessToken, TokenError> {
        let params = TokenParams::tenant("acme");
        self.level
            .fetch(&*self.source, &params, previous, &self.counters)
            .await
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

fn keys() -> Keys {
    Keys::derive("APP01TEST", &SecretString::from("test-secret".to_owned()))
}

fn token_key() -> String {
    keys().names(TOKEN_URL, &TokenParams::tenant("acme")).token
}

fn text(token: &AccessToken) -> &str {
    token.secret().expose_secret()
}

#[tokio::test(start_paused = true)]
async fn a_second_process_reads_the_first_ones_token() {
    let store = MemoryStore::new();
    let (a, b) = (
        Process::new(&store, Source::new(Duration::ZERO)),
        Process::new(&store, Source::new(Duration::ZERO)),
    );
    let first = a.fetch(None).await.unwrap();
    let second = b.fetch(None).await.unwrap();
    assert_eq!(text(&first), text(&second));
    assert_eq!((a.source.calls(), b.source.calls()), (1, 0));
    assert_eq!((a.stats().store_misses, a.stats().token_requests), (1, 1));
    assert_eq!((b.stats().store_hits, b.stats().token_requests), (1, 0));
    // The restored token keeps its real expiry and lifetime.
    assert_eq!(second.lifetime(), HOUR);
    let skew = second
        .expires_at()
        .duration_since(first.expires_at())
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_millis(2), "{skew:?}");
    // The lock is gone, the token stays.
    assert_eq!(store.keys(), vec![token_key()]);
}

#[tokio::test(start_paused = true)]
async fn the_token_being_replaced_is_no_hit_and_a_fleet_rotates_once() {
    let store = MemoryStore::new();
    let fleet: Vec<_> = (0..4)
        .map(|_| Process::new(&store, Source::new(Duration::ZERO)))
        .collect();
    let first = fleet[0].fetch(None).await.unwrap();
    // Each process refreshes ahead in turn, replacing the first token.
    let mut next = Vec::new();
    for process in &fleet {
        next.push(process.fetch(Some(&first)).await.unwrap());
    }
    assert_ne!(text(&next[0]), text(&first));
    assert!(next.iter().all(|token| text(token) == text(&next[0])));
    let requests: usize = fleet.iter().map(|p| p.source.calls()).sum();
    assert_eq!(requests, 2, "one token, then one more for the rotation");
}

#[tokio::test(start_paused = true)]
async fn concurrent_fetches_of_a_fleet_make_one_token_request() {
    let store = MemoryStore::new();
    let fleet: Vec<_> = (0..16)
        .map(|_| Process::new(&store, Source::new(Duration::from_millis(150))))
        .collect();
    let tokens = futures_util::future::join_all(fleet.iter().map(|p| p.fetch(None))).await;
    let tokens: Vec<_> = tokens.into_iter().map(Result::unwrap).collect();
    assert!(tokens.iter().all(|t| text(t) == text(&tokens[0])));
    let requests: usize = fleet.iter().map(|p| p.source.calls()).sum();
    assert_eq!(requests, 1);
    let waits: u64 = fleet.iter().map(|p| p.stats().store_lock_waits).sum();
    let hits: u64 = fleet.iter().map(|p| p.stats().store_hits).sum();
    assert_eq!((waits, hits), (15, 15));
}

#[tokio::test(start_paused = true)]
async fn a_token_past_its_writers_refresh_point_is_no_hit() {
    let store = MemoryStore::new();
    let now = SystemTime::now();
    let entry = Entry {
        token: SecretString::from("old-token".to_owned()),
        expires_at: now + Duration::from_secs(600),
        lifetime: HOUR,
        refresh_at: now - Duration::from_secs(1),
    };
    let value = keys().seal(&token_key(), &entry).unwrap();
    store.set(&token_key(), value, Duration::from_secs(600));
    let process = Process::new(&store, Source::new(Duration::ZERO));
    let token = process.fetch(None).await.unwrap();
    assert_ne!(text(&token), "old-token");
    assert_eq!(
        (process.stats().store_misses, process.source.calls()),
        (1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_value_that_does_not_open_is_a_counted_miss_and_is_replaced() {
    let store = MemoryStore::new();
    store.set(&token_key(), b"\x01garbage".repeat(10), HOUR);
    let a = Process::new(&store, Source::new(Duration::ZERO));
    let token = a.fetch(None).await.unwrap();
    let stats = a.stats();
    assert_eq!(
        (
            stats.store_rejected_values,
            stats.store_misses,
            stats.token_requests
        ),
        (1, 1, 1)
    );
    let b = Process::new(&store, Source::new(Duration::ZERO));
    assert_eq!(text(&b.fetch(None).await.unwrap()), text(&token));
    assert_eq!(b.stats().store_rejected_values, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_falls_back_at_once() {
    let store = MemoryStore::new();
    store.set_mode(Mode::Fails);
    let process = Process::new(&store, Source::new(Duration::ZERO));
    let started = Instant::now();
    process.fetch(None).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    let stats = process.stats();
    assert_eq!((stats.store_fallbacks, stats.token_requests), (1, 1));
    assert_eq!(store.round_trips.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_costs_one_store_timeout() {
    let store = MemoryStore::new();
    store.set_mode(Mode::Hangs);
    let process = Process::new(&store, Source::new(Duration::ZERO));
    let started = Instant::now();
    process.fetch(None).await.unwrap();
    assert_eq!(
        started.elapsed(),
        SharedCacheSettings::default().store_timeout
    );
    assert_eq!(process.stats().store_fallbacks, 1);
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_never_stores_costs_at_most_the_peer_wait() {
    let store = MemoryStore::new();
    let names = keys().names(TOKEN_URL, &TokenParams::tenant("acme"));
    store.set(&names.lock, b"a-process-that-hangs".to_vec(), HOUR);
    let process = Process::new(&store, Source::new(Duration::ZERO));
    let started = Instant::now();
    process.fetch(None).await.unwrap();
    assert_eq!(started.elapsed(), SharedCacheSettings::default().peer_wait);
    let stats = process.stats();
    assert_eq!((stats.store_lock_waits, stats.store_fallbacks), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_lock_whose_holder_died_is_taken_over_when_it_expires() {
    let store = MemoryStore::new();
    let names = keys().names(TOKEN_URL, &TokenParams::tenant("acme"));
    store.set(
        &names.lock,
        b"a-process-that-died".to_vec(),
        Duration::from_millis(300),
    );
    let a = Process::new(&store, Source::new(Duration::ZERO));
    let started = Instant::now();
    let token = a.fetch(None).await.unwrap();
    let waited = started.elapsed();
    let poll = SharedCacheSettings::default().poll_interval;
    assert!(waited >= Duration::from_millis(300) && waited <= Duration::from_millis(300) + poll);
    assert_eq!(a.stats().store_fallbacks, 0);
    // It stored the token for the others.
    let b = Process::new(&store, Source::new(Duration::ZERO));
    assert_eq!(text(&b.fetch(None).await.unwrap()), text(&token));
}

#[tokio::test(start_paused = true)]
async fn token_api_errors_surface_and_release_the_lock() {
    let store = MemoryStore::new();
    let process = Process::new(&store, Source::failing());
    let err = process.fetch(None).await.unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::InvalidClient);
    assert!(store.keys().is_empty(), "{:?}", store.keys());
    assert_eq!(process.stats().store_fallbacks, 0);
}

#[tokio::test(start_paused = true)]
async fn the_ttl_is_the_remaining_life_less_the_safety_margin() {
    let store = MemoryStore::new();
    let process = Process::new(&store, Source::new(Duration::ZERO));
    process.fetch(None).await.unwrap();
    let ttls = store.ttls.lock().unwrap().clone();
    assert_eq!(ttls.len(), 1);
    let expected = HOUR - Settings::default().safety_margin;
    assert!(
        ttls[0] <= expected && ttls[0] > expected - Duration::from_secs(1),
        "{ttls:?}"
    );
}

#[test]
fn settings_refuse_zero_durations() {
    assert!(SharedCacheSettings::default().validate().is_ok());
    let no_poll = SharedCacheSettings {
        poll_interval: Duration::ZERO,
        ..SharedCacheSettings::default()
    };
    assert!(no_poll
        .validate()
        .unwrap_err()
        .to_string()
        .contains("poll_interval"));
    let no_timeout = SharedCacheSettings {
        store_timeout: Duration::ZERO,
        ..SharedCacheSettings::default()
    };
    assert!(no_timeout
        .validate()
        .unwrap_err()
        .to_string()
        .contains("store_timeout"));
}
