//! [`TokenHttpClient`]: the HTTP client token requests go through.

use bytes::Bytes;
use http_body::Body;
use http_body_util::Full;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::error::{TokenError, TokenErrorDetails, TokenErrorKind};
use crate::error_body::{read_capped, Capped};

/// A Token API answer with its body read up to the cap.
pub(crate) type TokenHttpResponse = http::Response<Capped>;

/// The HTTP client for token requests
/// ([`TokenLayerBuilder::http_client`](crate::TokenLayerBuilder::http_client)):
/// any tower service over `http::Request<Full<Bytes>>` (hyper-util's legacy
/// client, a tower-http stack) or (feature `reqwest`) a `reqwest::Client`.
/// Token requests carry the secret: configure the client not to follow redirects.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower_propel_auth::TokenHttpClient;
///
/// let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
/// let for_tokens = TokenHttpClient::new(hyper);
/// # let _ = for_tokens;
/// ```
#[derive(Clone, Debug)]
pub struct TokenHttpClient {
    service: BoxCloneSyncService<http::Request<Bytes>, TokenHttpResponse, BoxError>,
}

impl TokenHttpClient {
    /// Any tower service over `http::Request<Full<Bytes>>`.
    pub fn new<S, RB>(service: S) -> Self
    where
        S: Service<http::Request<Full<Bytes>>, Response = http::Response<RB>>,
        S: Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        RB: Body + Send + 'static,
        RB::Data: Send,
        RB::Error: Into<BoxError>,
    {
        let service = tower::service_fn(move |request: http::Request<Bytes>| {
            let service = service.clone();
            async move {
                let response = service
                    .oneshot(request.map(Full::new))
                    .await
                    .map_err(Into::into)?;
                let (parts, body) = response.into_parts();
                Ok(http::Response::from_parts(parts, read_capped(body).await?))
            }
        });
        Self {
            service: BoxCloneSyncService::new(service),
        }
    }

    /// A `reqwest::Client` that never follows redirects, which would carry the secret.
    #[cfg(feature = "reqwest")]
    pub(crate) fn default_reqwest() -> Result<Self, crate::error::ConfigError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| {
                crate::error::ConfigError::invalid("the default reqwest client", err.to_string())
            })?;
        Ok(Self::from(client))
    }

    /// Sends a token request. A failure is a `Transport` error, or
    /// `TlsUnavailable` when reqwest has no TLS backend for an https URL.
    pub(crate) async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<TokenHttpResponse, TokenError> {
        let https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        self.service.clone().oneshot(request).await.map_err(|err| {
            let kind = match https && lacks_tls(&err) {
                true => TokenErrorKind::TlsUnavailable,
                false => TokenErrorKind::Transport,
            };
            TokenErrorDetails::new(kind).with_cause(err).into()
        })
    }
}

/// A `reqwest::Client` for token requests (proxies, TLS roots …); build it
/// with `redirect(reqwest::redirect::Policy::none())`.
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
impl From<reqwest::Client> for TokenHttpClient {
    fn from(client: reqwest::Client) -> Self {
        let service = tower::service_fn(move |request: http::Request<Bytes>| {
            let client = client.clone();
            async move {
                let response = client.execute(reqwest::Request::try_from(request)?).await?;
                let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
                Ok::<_, BoxError>(http::Response::from_parts(parts, read_capped(body).await?))
            }
        });
        Self {
            service: BoxCloneSyncService::new(service),
        }
    }
}

/// Whether reqwest, built without a TLS backend, refused an https URL: its plain
/// `HttpConnector` fails with this message before connecting, and as hyper-util
/// does not export the error's type, the text is the only sign (tests/tls.rs).
#[cfg(feature = "reqwest")]
fn lacks_tls(err: &BoxError) -> bool {
    let first: &(dyn std::error::Error + 'static) = &**err;
    err.downcast_ref().is_some_and(reqwest::Error::is_connect)
        && std::iter::successors(Some(first), |cause| cause.source())
            .any(|cause| cause.to_string() == "invalid URL, scheme is not http")
}

/// Without reqwest, only a [`TokenHttpClient::new`] service sends: its errors are its own.
#[cfg(not(feature = "reqwest"))]
fn lacks_tls(_: &BoxError) -> bool {
    false
}
