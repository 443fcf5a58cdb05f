//! Tower middleware that gives any HTTP client the credentials the
//! [Propel Data API](https://www.propeldata.com/docs) asks for.
//!
//! [`PropelAuthLayer`] wraps a tower HTTP client (hyper-util's, `reqwest::Client`,
//! a tower-http stack) and adds to every Propel API request the Application's
//! ID and secret as HTTP Basic credentials, or a short-lived access token from
//! Propel's Token API, cached and refreshed ahead: concurrent requests wait on
//! one token request, and none waits while the cached token is good.
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_propel_auth::retry::TransientErrors;
//! use tower_propel_auth::{Credentials, FakePropel, PropelAuthLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! // A Propel-compatible server on loopback (feature `test-util`); with a real
//! // account, use `Credentials::from_env()?` and leave out the two URLs.
//! let propel = FakePropel::start().await;
//! let credentials = Credentials::new(propel.application_id(), propel.application_secret())?;
//!
//! let auth = PropelAuthLayer::client_credentials(credentials)
//!     .token_url(propel.token_url())
//!     .allowed_origins([propel.api_url()])
//!     .build()?;
//! // retry → timeout → auth → client: the retry resends what a fresh token
//! // or a second try may cure, the timeout bounds the wait for a token too.
//! let client = ServiceBuilder::new()
//!     .retry(TransientErrors::new(3))
//!     .timeout(std::time::Duration::from_secs(30))
//!     .layer(auth.clone())
//!     .service(reqwest::Client::new());
//!
//! let mut request = reqwest::Request::new(reqwest::Method::POST, propel.api_url().parse()?);
//! *request.body_mut() = Some(r#"{"query":"{ sqlV1(input: {query: \"SELECT 1\"}) { rows } }"}"#.into());
//! let response = client.oneshot(request).await?;
//! assert!(response.status().is_success());
//! assert_eq!(auth.stats().token_requests, 1);
//! # Ok(()) }
//! ```
//!
//! [`PropelAuthLayer`] says which constructor fits whom; a tenant view,
//! [`PropelAuthLayer::with_params`], gives any client a token per tenant.
//!
//! # Errors
//!
//! | Propel answers | you get |
//! |---|---|
//! | 401 | the rejected token is dropped and [`Error::Unauthorized`] returned, [`Error::is_transient`] when a fresh token may cure it: [`retry::TransientErrors`] resends it at once; a second 401 is final |
//! | 403 | [`Error::Forbidden`] naming the missing [`Scope`] or the policy problem |
//! | Token API 400 | [`Error::Token`] saying whether grant type, client id or secret is wrong |
//! | Token API 429 / 5xx / timeout | [`Error::Token`], [`Error::is_transient`] |
//!
//! # Features
//!
//! - `reqwest` (default): wrap `reqwest::Client` and use it for token requests.
//! - `rustls` (default) or `native-tls`: that reqwest's TLS backend (it comes
//!   without its default features: pick one, here or in your own `reqwest`).
//! - `test-util`: [`FakePropel`], a Propel-compatible server on loopback.
//! - `redis`: one token per parameter set for a fleet, in Redis or Valkey (`shared_cache`).
//! - `shared-cache`: the same over any store behind `shared_cache::SharedStore`.
//! - `reqwest-middleware`: the same credentials for reqwest-middleware's
//!   `ClientWithMiddleware` (`PropelAuthLayer::middleware`).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod config;
mod credentials;
pub mod error;
mod error_body;
mod future;
mod layer;
mod message;
#[cfg(feature = "reqwest-middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
pub mod middleware;
mod origin;
pub mod retry;
mod scope;
mod service;
#[cfg(feature = "shared-cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "shared-cache")))]
pub mod shared_cache;
mod stats;
mod token;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

#[cfg(test)]
mod proptests;

// The README's snippets as doc tests, so they cannot drift from the code; the
// fleet's needs feature `redis`.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../README.md")]
mod readme_doctests {}

pub use credentials::Credentials;
pub use error::{
    ConfigError, Error, Forbidden, ForbiddenReason, InsecureTransport, TokenError, TokenErrorKind,
    TokenRequestField, Unauthorized,
};
pub use future::ResponseFuture;
pub use layer::{CustomSource, PropelAuthLayer, TokenLayerBuilder};
pub use message::{AuthRequest, AuthResponse};
#[cfg(feature = "reqwest-middleware")]
pub use middleware::PropelAuthMiddleware;
pub use origin::DEFAULT_API_URL;
pub use scope::Scope;
pub use service::PropelAuth;
pub use stats::Stats;
pub use token::client_credentials::{ClientAuth, ClientCredentials, DEFAULT_TOKEN_URL};
pub use token::{AccessToken, Settings, TokenHttpClient, TokenParams, TokenSource};

#[cfg(feature = "test-util")]
pub use testing::FakePropel;

#[cfg(feature = "shared-cache")]
pub use shared_cache::SharedCache;

/// The `secrecy` crate this one keeps secrets in: `ExposeSecret` reads an
/// [`AccessToken::secret`] or a [`Credentials::secret`].
pub use secrecy;
