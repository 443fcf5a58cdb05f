//! What the service needs from a request and a response, for `http` types and
//! (with the `reqwest` feature) for reqwest's, so one state machine serves both.

use std::any::Any;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use http_body::Body;
use http_body_util::{Empty, Full};
use tower::BoxError;

use crate::error_body::{read_capped, ERROR_BODY_TIMEOUT};
use crate::origin::{AllowedOrigins, Decision};
use crate::TokenParams;

pub(crate) trait AuthRequest: Sized {
    fn decide(&self, origins: &AllowedOrigins) -> Decision;
    fn headers_mut(&mut self) -> &mut HeaderMap;
    /// A copy to send again after a 401, when the body can be replayed.
    fn try_clone(&self) -> Option<Self>;
    /// Token parameters the request carries, if any.
    fn token_params(&self) -> Option<&TokenParams>;
}

pub(crate) trait AuthResponse: Sized {
    fn status(&self) -> StatusCode;
    /// The body, read up to the cap and for at most [`ERROR_BODY_TIMEOUT`];
    /// a body that fails or stalls counts as empty.
    fn read_body(self) -> BoxFuture<'static, Bytes>;
}

impl<B: 'static> AuthRequest for http::Request<B> {
    #[inline]
    fn decide(&self, origins: &AllowedOrigins) -> Decision {
        origins.decide_uri(self.uri())
    }

    #[inline]
    fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers_mut()
    }

    fn try_clone(&self) -> Option<Self> {
        let body = clone_body(self.body())?;
        let mut copy = http::Request::new(body);
        *copy.method_mut() = self.method().clone();
        *copy.uri_mut() = self.uri().clone();
        *copy.version_mut() = self.version();
        *copy.headers_mut() = self.headers().clone();
        *copy.extensions_mut() = self.extensions().clone();
        Some(copy)
    }

    #[inline]
    fn token_params(&self) -> Option<&TokenParams> {
        self.extensions().get::<TokenParams>()
    }
}

/// Clones a body whose type is one of the common in-memory bodies; `None`
/// for streaming bodies, which cannot be replayed. The same approach as
/// tower-http's redirect and retry helpers, without requiring `B: Clone` of
/// every user.
fn clone_body<B: 'static>(body: &B) -> Option<B> {
    fn try_as<T: Clone + 'static, B: 'static>(body: &B) -> Option<B> {
        let typed = (body as &dyn Any).downcast_ref::<T>()?;
        let mut slot = Some(typed.clone());
        (&mut slot as &mut dyn Any)
            .downcast_mut::<Option<B>>()?
            .take()
    }
    try_as::<Full<Bytes>, B>(body)
        .or_else(|| try_as::<Empty<Bytes>, B>(body))
        .or_else(|| try_as::<String, B>(body))
        .or_else(|| try_as::<Bytes, B>(body))
        .or_else(|| try_as::<Vec<u8>, B>(body))
        .or_else(|| try_as::<&'static str, B>(body))
        .or_else(|| try_as::<&'static [u8], B>(body))
        .or_else(|| try_as::<(), B>(body))
}

impl<RB> AuthResponse for http::Response<RB>
where
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    #[inline]
    fn status(&self) -> StatusCode {
        self.status()
    }

    fn read_body(self) -> BoxFuture<'static, Bytes> {
        Box::pin(async move {
            let read = tokio::time::timeout(ERROR_BODY_TIMEOUT, read_capped(self.into_body()));
            match read.await {
                Ok(Ok(capped)) => capped.bytes,
                // The status says what happened; the message is a bonus.
                Ok(Err(_)) | Err(_) => Bytes::new(),
            }
        })
    }
}

#[cfg(feature = "reqwest")]
impl AuthRequest for reqwest::Request {
    #[inline]
    fn decide(&self, origins: &AllowedOrigins) -> Decision {
        let url = self.url();
        if origins.is_allowed_authority(url.scheme() == "https", url.authority()) {
            return Decision::Attach;
        }
        origins.decide(Some(url.scheme()), url.host_str(), url.port())
    }

    #[inline]
    fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers_mut()
    }

    fn try_clone(&self) -> Option<Self> {
        self.try_clone()
    }

    /// reqwest keeps its request extensions private, so reqwest requests use
    /// the layer's default token parameters.
    fn token_params(&self) -> Option<&TokenParams> {
        None
    }
}

#[cfg(feature = "reqwest")]
impl AuthResponse for reqwest::Response {
    #[inline]
    fn status(&self) -> StatusCode {
        self.status()
    }

    fn read_body(self) -> BoxFuture<'static, Bytes> {
        http::Response::<reqwest::Body>::from(self).read_body()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "reqwest")]
    #[test]
    fn reqwest_requests_are_placed_like_http_ones() {
        let allowed = AllowedOrigins::default_api();
        let decide = |url: &str| {
            let request = reqwest::Request::new(reqwest::Method::POST, url.parse().unwrap());
            AuthRequest::decide(&request, &allowed)
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

    #[test]
    fn in_memory_bodies_replay_and_streams_do_not() {
        let request = http::Request::post("https://x/graphql")
            .header("x-trace", "1")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let copy = AuthRequest::try_clone(&request).expect("Full replays");
        assert_eq!(copy.uri(), request.uri());
        assert_eq!(copy.headers()["x-trace"], "1");
        assert!(AuthRequest::try_clone(&http::Request::new(String::from("q"))).is_some());
        let boxed = http_body_util::combinators::UnsyncBoxBody::new(
            Empty::<Bytes>::new().map_err(|never| match never {}),
        );
        use http_body_util::BodyExt as _;
        assert!(AuthRequest::try_clone(&http::Request::new(boxed)).is_none());
    }
}
