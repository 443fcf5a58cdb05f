//! The request and response types [`PropelAuth`](crate::PropelAuth) works
//! over: `http`'s and (feature `reqwest`) reqwest's, served by one state machine.

// The sealed traits' methods take private types; nobody outside can name them.
#![allow(private_interfaces)]

use std::future::Future;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::Body;
use tower::BoxError;

use crate::error_body::{read_capped, ERROR_BODY_TIMEOUT};
use crate::origin::{AllowedOrigins, Decision};
use crate::TokenParams;

/// A request [`PropelAuth`](crate::PropelAuth) can add credentials to. Sealed:
///
/// - `http::Request<B>`, for any body `B` (hyper-util's client, tower-http
///   stacks), which may carry [`TokenParams`] in its extensions.
/// - `reqwest::Request` (feature `reqwest`), whose extensions are private: use
///   a tenant view ([`PropelAuthLayer::with_params`](crate::PropelAuthLayer::with_params)).
pub trait AuthRequest: sealed::Request {}

/// A response [`PropelAuth`](crate::PropelAuth) can read a 401 or 403 from. Sealed:
///
/// - `http::Response<B>` for a body `B: http_body::Body + Send + 'static`
///   whose `Data` is `Send` and whose `Error` converts into a
///   [`BoxError`] (hyper's `Incoming`, `http_body_util` bodies, tower-http's);
/// - `reqwest::Response` (feature `reqwest`).
pub trait AuthResponse: sealed::Response {}

/// The methods behind the two traits, public only to be their supertraits.
pub(crate) mod sealed {
    use super::*;

    pub trait Request: Sized {
        fn decide(&self, origins: &AllowedOrigins) -> Decision;
        fn headers_mut(&mut self) -> &mut HeaderMap;
        /// Token parameters the request carries, if any.
        fn token_params(&self) -> Option<&TokenParams>;
    }

    pub trait Response: Sized + Send + 'static {
        fn status(&self) -> StatusCode;
        /// The body, read up to the cap and for at most
        /// [`ERROR_BODY_TIMEOUT`]; a body that fails or stalls counts as empty.
        fn read_body(self) -> impl Future<Output = Bytes> + Send + 'static;
    }
}

impl<B> AuthRequest for http::Request<B> {}

impl<B> sealed::Request for http::Request<B> {
    #[inline]
    fn decide(&self, origins: &AllowedOrigins) -> Decision {
        let uri = self.uri();
        let authority = uri.authority().map(|authority| authority.as_str());
        origins.decide(uri.scheme_str(), authority, || (uri.host(), uri.port_u16()))
    }

    #[inline]
    fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers_mut()
    }

    #[inline]
    fn token_params(&self) -> Option<&TokenParams> {
        self.extensions().get::<TokenParams>()
    }
}

impl<RB> AuthResponse for http::Response<RB>
where
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
}

impl<RB> sealed::Response for http::Response<RB>
where
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    #[inline]
    fn status(&self) -> StatusCode {
        self.status()
    }

    async fn read_body(self) -> Bytes {
        let read = tokio::time::timeout(ERROR_BODY_TIMEOUT, read_capped(self.into_body()));
        match read.await {
            Ok(Ok(capped)) => capped.bytes,
            // The status says what happened; the message is a bonus.
            Ok(Err(_)) | Err(_) => Bytes::new(),
        }
    }
}

#[cfg(feature = "reqwest")]
impl AuthRequest for reqwest::Request {}

#[cfg(feature = "reqwest")]
impl sealed::Request for reqwest::Request {
    #[inline]
    fn decide(&self, origins: &AllowedOrigins) -> Decision {
        let url = self.url();
        origins.decide(Some(url.scheme()), Some(url.authority()), || {
            (url.host_str(), url.port())
        })
    }

    #[inline]
    fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers_mut()
    }

    /// Private in reqwest: parameters come from the layer or a tenant view.
    #[inline]
    fn token_params(&self) -> Option<&TokenParams> {
        None
    }
}

#[cfg(feature = "reqwest")]
impl AuthResponse for reqwest::Response {}

#[cfg(feature = "reqwest")]
impl sealed::Response for reqwest::Response {
    #[inline]
    fn status(&self) -> StatusCode {
        self.status()
    }

    fn read_body(self) -> impl Future<Output = Bytes> + Send + 'static {
        http::Response::<reqwest::Body>::from(self).read_body()
    }
}

#[cfg(test)]
mod tests {
    use super::sealed::Request as _;
    use super::*;

    #[cfg(feature = "reqwest")]
    #[test]
    fn reqwest_requests_are_placed_like_http_ones() {
        let allowed = AllowedOrigins::default_api();
        let decide = |url: &str| {
            let request = reqwest::Request::new(reqwest::Method::POST, url.parse().unwrap());
            request.decide(&allowed)
        };
        for url in [
            "https://api.us-east-2.propeldata.com/graphql",
            "https://API.us-east-2.propeldata.com:443/graphql",
        ] {
            assert_eq!(decide(url), Decision::Attach, "{url}");
        }
        assert_eq!(
            decide("https://api.us-east-2.propeldata.com:8443/"),
            Decision::PassThrough
        );
        assert_eq!(decide("https://example.com/graphql"), Decision::PassThrough);
        assert!(matches!(
            decide("http://api.us-east-2.propeldata.com/"),
            Decision::Insecure(_)
        ));
    }
}
