//! [`PropelAuthMiddleware`]: a layer's credentials for reqwest-middleware's
//! `ClientWithMiddleware` (feature `reqwest-middleware`).
//!
//! ```
//! use reqwest_middleware::ClientBuilder;
//! use tower_propel_auth::{Credentials, FakePropel, PropelAuthLayer, TokenParams};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let propel = FakePropel::start().await;
//! let credentials = Credentials::new(propel.application_id(), propel.application_secret())?;
//! let auth = PropelAuthLayer::client_credentials(credentials)
//!     .token_url(propel.token_url())
//!     .allowed_origins([propel.api_url()])
//!     .build()?;
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(auth.middleware())
//!     .build();
//! let response = client
//!     .post(propel.api_url())
//!     .body(r#"{"query":"{ sqlV1(input: {query: \"SELECT 1\"}) { rows } }"}"#)
//!     .with_extension(TokenParams::tenant("acme")) // acme's token
//!     .send()
//!     .await?;
//! assert!(response.status().is_success());
//! # Ok(()) }
//! ```

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::error::{Error, InsecureTransport};
use crate::future::{attach, rejection};
use crate::service::Route;
use crate::token::cache::Supply;
use crate::{PropelAuthLayer, TokenParams};

/// A [`reqwest_middleware::Middleware`] with the credentials of the
/// [`PropelAuthLayer`] it was made from ([`PropelAuthLayer::middleware`]):
/// the same token caches, bound, single flights and [`Stats`](crate::Stats),
/// and the same rules as the layer. Credentials go only to the allowed
/// origins, never over plain HTTP except to loopback, never over an
/// `Authorization` header the caller set; secrets are removed from errors.
///
/// A request's [`TokenParams`] come from the middleware `Extensions`
/// (`RequestBuilder::with_extension(TokenParams::tenant("acme"))`), else
/// from the tenant view the middleware was made from
/// ([`PropelAuthLayer::with_params`]), else the layer's defaults.
///
/// **A 401** whose token was dropped is cured here: the request is sent once
/// more, at once, with the fresh token (`Next` is `Clone`; the request is
/// copied with `Request::try_clone` before it goes out, which only a token
/// layer's requests pay for). A body that cannot be copied (a stream) is not
/// sent again: the caller gets the transient [`Error::Unauthorized`]. A
/// second 401 is final. No retry middleware is needed for this; one for
/// outages can sit before this one.
///
/// **Errors** of this crate come as `reqwest_middleware::Error::Middleware`;
/// [`propel_error`] finds them.
#[derive(Clone, Debug)]
pub struct PropelAuthMiddleware {
    layer: PropelAuthLayer,
}

impl PropelAuthLayer {
    /// This layer's credentials as a [`PropelAuthMiddleware`] for
    /// reqwest-middleware's `ClientWithMiddleware` (feature
    /// `reqwest-middleware`): same caches, same stats.
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
    pub fn middleware(&self) -> PropelAuthMiddleware {
        PropelAuthMiddleware {
            layer: self.clone(),
        }
    }
}

/// This crate's [`Error`] inside a `reqwest_middleware::Error`, if it is one:
/// a 403 stays a typed [`Error::Forbidden`].
///
/// ```no_run
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) {
/// use tower_propel_auth::{middleware::propel_error, Error};
///
/// if let Err(err) = client.post("https://api.us-east-2.propeldata.com/graphql").send().await {
///     match propel_error(&err) {
///         Some(Error::Forbidden(forbidden)) => eprintln!("{}", forbidden.hint()),
///         _ => eprintln!("{err}"),
///     }
/// }
/// # }
/// ```
pub fn propel_error(err: &reqwest_middleware::Error) -> Option<&Error> {
    match err {
        reqwest_middleware::Error::Middleware(err) => err.downcast_ref(),
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}

#[async_trait::async_trait]
impl Middleware for PropelAuthMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let params = extensions.get::<TokenParams>().cloned();
        let params = params.as_ref().or(self.layer.params.as_ref());
        let shared = &self.layer.shared;
        let default = || {
            let cache = shared.store.default_cache();
            (cache.clone(), cache.cached())
        };
        let (mut first, mut copy) = (true, None);
        loop {
            let (header, sent) = match shared.route(&mut request, params, default) {
                Route::Attach(header, sent) => (header, sent),
                Route::PassThrough => return next.run(request, extensions).await,
                Route::Insecure(origin) => {
                    let err = Error::InsecureTransport(InsecureTransport::new(origin));
                    return Err(reqwest_middleware::Error::middleware(err));
                }
                // Waits, then looks again: the token may have gone stale or
                // been dropped by a 401 in between.
                Route::Wait(cache) => {
                    let waited = cache.wait().await;
                    waited
                        .map_err(|err| reqwest_middleware::Error::middleware(Error::Token(err)))?;
                    continue;
                }
            };
            // A 401 on a renewable token may be cured by the next attempt:
            // keep a copy to send it with, the first time only.
            if std::mem::take(&mut first) && matches!(sent.cache.config().supply, Supply::Minted(_))
            {
                copy = request.try_clone();
            }
            if !attach(request.headers_mut(), header) {
                return next.run(request, extensions).await; // the caller's own
            }
            let response = next.clone().run(request, extensions).await?;
            if !matches!(response.status().as_u16(), 401 | 403) {
                return Ok(response);
            }
            match (rejection(response, sent).await, copy.take()) {
                (Error::Unauthorized(err), Some(again)) if err.is_transient() => {
                    tracing::debug!("Propel answered 401; sending the request once more");
                    request = again;
                }
                (err, _) => return Err(reqwest_middleware::Error::middleware(err)),
            }
        }
    }
}
