//! The HTTP client token requests go through: any tower HTTP service the user
//! picks (hyper-util's client, a tower-http stack), or `reqwest::Client`.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::body::{read_capped, Capped};

/// A Token API answer with its body read up to the cap.
#[derive(Debug)]
pub(crate) struct TokenHttpResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Capped,
}

/// A type-erased, cloneable HTTP client for token requests.
#[derive(Clone)]
pub(crate) struct TokenHttpClient {
    service: BoxCloneSyncService<http::Request<Bytes>, TokenHttpResponse, BoxError>,
}

impl TokenHttpClient {
    /// Any tower service over `http::Request<Full<Bytes>>`.
    pub(crate) fn from_service<S, RB>(service: S) -> Self
    where
        S: Service<http::Request<Full<Bytes>>, Response = http::Response<RB>>
            + Clone
            + Send
            + Sync
            + 'static,
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
                Ok(TokenHttpResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body: read_capped(body).await?,
                })
            }
        });
        Self {
            service: BoxCloneSyncService::new(service),
        }
    }

    /// `reqwest::Client`, the default with the `reqwest` feature.
    #[cfg(feature = "reqwest")]
    pub(crate) fn from_reqwest(client: reqwest::Client) -> Self {
        let service = tower::service_fn(move |request: http::Request<Bytes>| {
            let client = client.clone();
            async move {
                let request = reqwest::Request::try_from(request)?;
                let response =
                    http::Response::<reqwest::Body>::from(client.execute(request).await?);
                let (parts, body) = response.into_parts();
                Ok::<_, BoxError>(TokenHttpResponse {
                    status: parts.status,
                    headers: parts.headers,
                    body: read_capped(body).await?,
                })
            }
        });
        Self {
            service: BoxCloneSyncService::new(service),
        }
    }

    /// A `reqwest::Client` that never follows redirects: a token request
    /// carries the secret and must not be re-sent elsewhere.
    #[cfg(feature = "reqwest")]
    pub(crate) fn default_reqwest() -> Result<Self, crate::error::ConfigError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| {
                crate::error::ConfigError::invalid("the default reqwest client", err.to_string())
            })?;
        Ok(Self::from_reqwest(client))
    }

    pub(crate) async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<TokenHttpResponse, BoxError> {
        self.service.clone().oneshot(request).await
    }
}

impl fmt::Debug for TokenHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenHttpClient").finish_non_exhaustive()
    }
}
