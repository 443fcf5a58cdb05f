//! Access tokens: where they come from ([`TokenSource`]), what they are
//! ([`AccessToken`]), what they are minted for ([`TokenParams`]), and the
//! shared cache that hands them to requests.

pub(crate) mod access_token;
pub(crate) mod cache;
pub(crate) mod client_credentials;
pub(crate) mod clock;
pub(crate) mod http_client;
mod jwt;
mod params;
mod settings;
pub(crate) mod store;
#[cfg(test)]
pub(crate) mod test_source;

use futures_util::future::BoxFuture;

pub use access_token::AccessToken;
pub use http_client::TokenHttpClient;
pub use params::TokenParams;
pub use settings::Settings;

use crate::error::TokenError;

/// Anything that can mint a fresh access token: the object-safe trait behind
/// the token flow.
///
/// The layer's cache calls it from a task of its own, once at a time per set
/// of [`TokenParams`] (a call left running past the fetch timeout on a
/// runtime nobody drives is given up, and may overlap the next), under the
/// fetch timeout, only when it has no usable token or the current one is due
/// for refresh; it never needs to cache or deduplicate by itself.
///
/// ```
/// use futures_util::future::BoxFuture;
/// use std::time::Duration;
/// use tower_propel_auth::{AccessToken, PropelAuthLayer, TokenError, TokenParams, TokenSource};
///
/// /// Tokens from our own back end's token service.
/// struct FromBackEnd;
///
/// impl TokenSource for FromBackEnd {
///     fn fetch_token(&self, _params: &TokenParams) -> BoxFuture<'static, Result<AccessToken, TokenError>> {
///         Box::pin(async {
///             AccessToken::new("eyJ…from-our-back-end", Duration::from_secs(3600))
///         })
///     }
/// }
///
/// let layer = PropelAuthLayer::token_source(FromBackEnd);
/// # let _ = layer;
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// Mints a fresh token for `params` (the layer's defaults, or the
    /// parameters a request carries). Return a [`TokenError`] built with
    /// [`TokenError::transient`] or [`TokenError::permanent`] when it cannot.
    fn fetch_token(
        &self,
        params: &TokenParams,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>>;
}
