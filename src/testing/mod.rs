//! `FakePropel`: a Propel-compatible server on loopback, for tests, examples
//! and benchmarks (feature `test-util`).
//!
//! It serves the two endpoints the crate talks to, over real TCP on
//! `127.0.0.1`:
//!
//! - the Token API, `POST /oauth2/token`: the OAuth2 client-credentials grant
//!   with the credentials in the form body or in a Basic header, `scope` and
//!   `policy_values`, HS256 JWTs with an `exp` claim, and RFC 6749 JSON errors;
//! - the GraphQL API, `POST /graphql`: Basic or Bearer credentials, JWT
//!   signature and expiry checks (401), scopes enforced per operation and
//!   Data Pool Access Policies (403, in Propel's words). It runs no SQL: a
//!   `sqlV1` query `SELECT <literal>` (a number or a quoted string) gets
//!   that value, and any other one row, in columns `tenant` and `n`: the
//!   `tenant_id` of the token's policy values (`null` without one) and a
//!   fixed `"42"`.
//!
//! Knobs change its behaviour at run time (token lifetime, latency, injected
//! faults, revocation) and [`FakePropel::stats`] counts what it saw.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower_propel_auth::testing::{FakePropel, TokenFault};
//!
//! let fake = FakePropel::start().await;
//! println!("token URL {}, API URL {}", fake.token_url(), fake.api_url());
//!
//! // The next two token requests fail with a 503 and `Retry-After: 1`.
//! fake.fail_next_token_requests(
//!     2,
//!     TokenFault::Status { status: 503, retry_after: Some(1), body: None },
//! );
//! assert_eq!(fake.stats().token_requests, 0);
//! # }
//! ```
//!
//! Dropping the [`FakePropel`] shuts the server down: the listener closes and
//! every open connection is dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;

mod graphql;
mod jwt;
mod server;
mod token_api;

#[cfg(test)]
mod tests;

/// The id of the Application every [`FakePropel`] knows from the start.
const DEFAULT_APPLICATION_ID: &str = "APP01FAKEDEFAULT";

/// The scopes of the default Application.
const DEFAULT_SCOPES: &[&str] = &["admin", "data_pool:query", "metric:query"];

/// The default token lifetime, as in Propel's docs.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A fake of the Propel Data API, served over real TCP on loopback.
///
/// Start one with [`FakePropel::start`], point the client at
/// [`token_url`](FakePropel::token_url) and [`api_url`](FakePropel::api_url),
/// and authenticate with [`application_id`](FakePropel::application_id) and
/// [`application_secret`](FakePropel::application_secret) (an Application with
/// the scopes `admin`, `data_pool:query` and `metric:query`).
///
/// Every knob takes `&self`, so a test can share the handle (for instance in
/// an `Arc`) and change the server's behaviour while requests are in flight.
///
/// Dropping it shuts the server down: new connections are refused and open
/// ones are closed.
pub struct FakePropel {
    shared: Arc<Shared>,
    addr: SocketAddr,
    application_id: String,
    application_secret: String,
    accept_task: JoinHandle<()>,
}

impl FakePropel {
    /// Binds `127.0.0.1:0` and serves the fake on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// If binding a loopback port fails, or when called outside a tokio
    /// runtime.
    pub async fn start() -> FakePropel {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("FakePropel: cannot bind a port on 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("FakePropel: the bound listener has no local address");

        let application_secret = format!("fakesecret{}", jwt::random_hex(16));
        let mut applications = HashMap::new();
        applications.insert(
            DEFAULT_APPLICATION_ID.to_owned(),
            Application {
                secret: application_secret.clone(),
                scopes: DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            },
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                applications,
                token_lifetime: DEFAULT_TOKEN_LIFETIME,
                token_latency: Duration::ZERO,
                api_latency: Duration::ZERO,
                token_fault_queue: VecDeque::new(),
                token_fault: None,
                api_fault: None,
                revoked_tokens: HashSet::new(),
                revoked_before_jti: 0,
                require_tenant_policy: false,
            }),
            counters: Counters::default(),
            signing_key: jwt::random_key(),
            next_jti: AtomicU64::new(1),
        });
        let accept_task = server::spawn(listener, Arc::clone(&shared));
        tracing::debug!(%addr, "FakePropel listening");

        FakePropel {
            shared,
            addr,
            application_id: DEFAULT_APPLICATION_ID.to_owned(),
            application_secret,
            accept_task,
        }
    }

    /// The server's origin, `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The GraphQL API's URL: the origin followed by `/graphql`.
    pub fn api_url(&self) -> String {
        format!("{}/graphql", self.origin())
    }

    /// The Token API's URL: the origin followed by `/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.origin())
    }

    /// The id of the default Application (`APP01FAKEDEFAULT`), which holds the
    /// scopes `admin`, `data_pool:query` and `metric:query`.
    pub fn application_id(&self) -> &str {
        &self.application_id
    }

    /// The secret of the default Application, random for each instance.
    pub fn application_secret(&self) -> &str {
        &self.application_secret
    }

    /// Adds an Application (or replaces the one with the same id) with these
    /// scopes, written as in token requests, e.g. `"data_pool:query"`.
    pub fn add_application(&self, id: &str, secret: &str, scopes: &[&str]) {
        self.shared.state().applications.insert(
            id.to_owned(),
            Application {
                secret: secret.to_owned(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            },
        );
    }

    /// Sets the lifetime of the tokens issued from now on: their `expires_in`
    /// and the distance between their `iat` and `exp` claims, in whole
    /// seconds. The default is 3600 s.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.state().token_lifetime = lifetime;
    }

    /// Delays every Token API answer (faults included) by `d`.
    pub fn set_token_latency(&self, d: Duration) {
        self.shared.state().token_latency = d;
    }

    /// Delays every GraphQL API answer (faults included) by `d`.
    pub fn set_api_latency(&self, d: Duration) {
        self.shared.state().api_latency = d;
    }

    /// The next `n` token requests get `fault` (they are counted first).
    ///
    /// Calls add up: the faults queue in the order they were asked for, and
    /// the fault set with [`set_token_fault`](Self::set_token_fault) applies
    /// only once the queue is empty.
    pub fn fail_next_token_requests(&self, n: usize, fault: TokenFault) {
        let mut state = self.shared.state();
        state
            .token_fault_queue
            .extend(std::iter::repeat_n(fault, n));
    }

    /// Every token request gets `fault` until this is called with `None`
    /// (after the faults queued by
    /// [`fail_next_token_requests`](Self::fail_next_token_requests)).
    pub fn set_token_fault(&self, fault: Option<TokenFault>) {
        self.shared.state().token_fault = fault;
    }

    /// Every GraphQL request gets `fault`, whatever its credentials, until
    /// this is called with `None`.
    pub fn set_api_fault(&self, fault: Option<ApiFault>) {
        self.shared.state().api_fault = fault;
    }

    /// This exact token is rejected with a 401 from now on.
    pub fn revoke_token(&self, token: &str) {
        self.shared.state().revoked_tokens.insert(token.to_owned());
    }

    /// Every token issued so far is rejected with a 401 from now on; tokens
    /// issued later work.
    pub fn revoke_all_tokens(&self) {
        let next = self.shared.next_jti.load(Ordering::SeqCst);
        self.shared.state().revoked_before_jti = next;
    }

    /// When on, GraphQL queries made with a Bearer token that lacks the
    /// `admin` scope need a token minted with `policy_values` holding a
    /// `tenant_id`; without one they get a 403 about the missing Data Pool
    /// Access Policy. Off by default.
    pub fn require_tenant_policy(&self, on: bool) {
        self.shared.state().require_tenant_policy = on;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FakeStats {
        self.shared.counters.snapshot()
    }

    /// Sets every counter back to zero.
    pub fn reset_stats(&self) {
        self.shared.counters.reset();
    }
}

impl fmt::Debug for FakePropel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakePropel")
            .field("origin", &self.origin())
            .field("application_id", &self.application_id)
            .finish_non_exhaustive()
    }
}

impl Drop for FakePropel {
    fn drop(&mut self) {
        // The accept task owns the listener and the `JoinSet` of connection
        // tasks: aborting it closes the port and drops every connection.
        self.accept_task.abort();
    }
}

/// A fault the fake Token API answers with instead of its normal answer.
///
/// Give it to [`FakePropel::fail_next_token_requests`] or
/// [`FakePropel::set_token_fault`].
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum TokenFault {
    /// Answer with this status (500, 502, 503, 429, 400 …), an optional
    /// `Retry-After` header in seconds, and this body; without a body, an
    /// RFC 6749 JSON error that fits the status.
    Status {
        /// The HTTP status code; an invalid one becomes 500.
        status: u16,
        /// The value of the `Retry-After` header, in seconds.
        retry_after: Option<u64>,
        /// The body, sent as-is (`application/json` when it parses as JSON,
        /// `text/plain` otherwise).
        body: Option<String>,
    },
    /// A 200 whose body is truncated JSON: `{"access_token": "eyJ`.
    MalformedJson,
    /// A 200 `{"expires_in":…,"token_type":"Bearer"}` without `access_token`.
    MissingAccessToken,
    /// A 200 with a valid token but this `token_type`.
    TokenType(String),
    /// A 200 with a valid token but this `expires_in`; the JWT's `exp` keeps
    /// the real lifetime.
    ExpiresIn(i64),
    /// A 200 with a valid token (whose JWT has an `exp`) and no `expires_in`.
    NoExpiresIn,
    /// A 200 whose body is this many bytes, streamed without a
    /// `Content-Length`: the start of a JSON object, then padding.
    Oversized(usize),
    /// Accept the request and never answer, until the server is dropped.
    Hang,
    /// Send a 200 and its headers with a `Content-Length` larger than the body
    /// that follows, then close the connection.
    ResetMidBody,
    /// Close the connection without any response.
    ConnectionClose,
}

/// A fault the fake GraphQL API answers every request with, whatever its
/// credentials. Give it to [`FakePropel::set_api_fault`].
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum ApiFault {
    /// A 401, with the usual body and `WWW-Authenticate: Bearer`.
    Unauthorized,
    /// A 403 with exactly this body, and this `Content-Type` if any.
    Forbidden {
        /// The `Content-Type` header; none when `None`.
        content_type: Option<String>,
        /// The body, sent as-is.
        body: Bytes,
    },
    /// This status with exactly this body (no `Content-Type`); an invalid
    /// status becomes 500.
    Status {
        /// The HTTP status code.
        status: u16,
        /// The body, sent as-is.
        body: Bytes,
    },
    /// This status (401 or 403, say) with a GraphQL error whose message
    /// quotes the credentials the request carried: the `Authorization`
    /// value, the token or the Basic credentials in it, and the decoded
    /// Basic password. A careless server; for tests that secrets are removed
    /// from errors by value.
    EchoCredentials {
        /// The HTTP status code.
        status: u16,
    },
}

/// A snapshot of what a [`FakePropel`] saw, from [`FakePropel::stats`].
///
/// Every counter is updated before the response it counts is sent.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// Requests that reached `/oauth2/token`, whatever their method or fate.
    pub token_requests: u64,
    /// Token API answers that were a 200 carrying a valid token, including
    /// those altered by [`TokenFault::TokenType`], [`TokenFault::ExpiresIn`]
    /// and [`TokenFault::NoExpiresIn`].
    pub tokens_issued: u64,
    /// Token API answers that were not a 2xx, and every other fault
    /// (counted when the request arrives for [`TokenFault::Hang`]).
    pub token_errors: u64,
    /// Requests that reached `/graphql`, whatever their method or fate.
    pub api_requests: u64,
    /// GraphQL requests answered with a 200.
    pub api_ok: u64,
    /// GraphQL requests without an `Authorization` header (401).
    pub api_unauthenticated: u64,
    /// GraphQL requests with a valid Bearer token past its `exp` (401).
    pub api_expired_token: u64,
    /// GraphQL requests with invalid credentials: bad signature, unknown
    /// Application, wrong secret, revoked token, malformed header (401), and
    /// those answered by [`ApiFault::Unauthorized`].
    pub api_invalid_credentials: u64,
    /// GraphQL requests answered with a 403 (missing scope or policy, or
    /// [`ApiFault::Forbidden`]).
    pub api_forbidden: u64,
    /// GraphQL requests whose Bearer token was accepted (then answered with a
    /// 200, a 400 or a 403).
    pub api_bearer: u64,
    /// GraphQL requests whose Basic credentials were accepted (then answered
    /// with a 200, a 400 or a 403).
    pub api_basic: u64,
}

/// An Application the fake knows.
pub(crate) struct Application {
    pub(crate) secret: String,
    pub(crate) scopes: Vec<String>,
}

/// The knobs and the rest of the mutable state.
pub(crate) struct State {
    pub(crate) applications: HashMap<String, Application>,
    pub(crate) token_lifetime: Duration,
    pub(crate) token_latency: Duration,
    pub(crate) api_latency: Duration,
    pub(crate) token_fault_queue: VecDeque<TokenFault>,
    pub(crate) token_fault: Option<TokenFault>,
    pub(crate) api_fault: Option<ApiFault>,
    pub(crate) revoked_tokens: HashSet<String>,
    /// Tokens whose `jti` is below this are revoked.
    pub(crate) revoked_before_jti: u64,
    pub(crate) require_tenant_policy: bool,
}

impl State {
    /// The Application with this id when `secret` is its secret.
    pub(crate) fn authenticate(&self, id: &str, secret: &str) -> Option<&Application> {
        self.applications.get(id).filter(|app| app.secret == secret)
    }
}

/// What the handle and the server tasks share.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) counters: Counters,
    pub(crate) signing_key: [u8; 32],
    pub(crate) next_jti: AtomicU64,
}

impl Shared {
    /// Locks the state; a panic elsewhere while it was held does not matter.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The live counters behind [`FakeStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) token_requests: AtomicU64,
    pub(crate) tokens_issued: AtomicU64,
    pub(crate) token_errors: AtomicU64,
    pub(crate) api_requests: AtomicU64,
    pub(crate) api_ok: AtomicU64,
    pub(crate) api_unauthenticated: AtomicU64,
    pub(crate) api_expired_token: AtomicU64,
    pub(crate) api_invalid_credentials: AtomicU64,
    pub(crate) api_forbidden: AtomicU64,
    pub(crate) api_bearer: AtomicU64,
    pub(crate) api_basic: AtomicU64,
}

impl Counters {
    fn all(&self) -> [&AtomicU64; 11] {
        [
            &self.token_requests,
            &self.tokens_issued,
            &self.token_errors,
            &self.api_requests,
            &self.api_ok,
            &self.api_unauthenticated,
            &self.api_expired_token,
            &self.api_invalid_credentials,
            &self.api_forbidden,
            &self.api_bearer,
            &self.api_basic,
        ]
    }

    fn snapshot(&self) -> FakeStats {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        FakeStats {
            token_requests: get(&self.token_requests),
            tokens_issued: get(&self.tokens_issued),
            token_errors: get(&self.token_errors),
            api_requests: get(&self.api_requests),
            api_ok: get(&self.api_ok),
            api_unauthenticated: get(&self.api_unauthenticated),
            api_expired_token: get(&self.api_expired_token),
            api_invalid_credentials: get(&self.api_invalid_credentials),
            api_forbidden: get(&self.api_forbidden),
            api_bearer: get(&self.api_bearer),
            api_basic: get(&self.api_basic),
        }
    }

    fn reset(&self) {
        for counter in self.all() {
            counter.store(0, Ordering::SeqCst);
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}
