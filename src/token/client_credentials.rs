//! The OAuth2 client-credentials exchange with Propel's Token API.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, StatusCode, Uri};
use secrecy::ExposeSecret;
use serde::Deserialize;
use tracing::Instrument as _;

use super::http_client::TokenHttpResponse;
use super::{AccessToken, TokenHttpClient, TokenParams, TokenSource};
use crate::error::{ConfigError, TokenError, TokenErrorDetails, TokenErrorKind};
use crate::error_body::{excerpt, parse_error_body};
use crate::origin::Origin;
use crate::{Credentials, Scope};

/// Propel's Token API.
pub const DEFAULT_TOKEN_URL: &str = "https://auth.us-east-2.propeldata.com/oauth2/token";

/// How the Application authenticates to the Token API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body, as Propel's docs and
    /// Terraform provider send them.
    #[default]
    FormBody,
    /// HTTP Basic with only `grant_type` (and `scope`, `policy_values`) in the
    /// body, as Propel's Go client sends them.
    BasicHeader,
}

/// The client-credentials flow
/// [`PropelAuthLayer::client_credentials`](crate::PropelAuthLayer::client_credentials)
/// configures: credentials, token URL, client authentication and HTTP client.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    pub(crate) credentials: Credentials,
    pub(crate) token_url: String,
    pub(crate) client_auth: ClientAuth,
    pub(crate) http: Option<TokenHttpClient>,
    /// A token cache the processes of a fleet share.
    #[cfg(feature = "shared-cache")]
    pub(crate) shared_cache: Option<crate::shared_cache::SharedCache>,
}

impl ClientCredentials {
    /// Checks the configuration and makes the exchange.
    pub(crate) fn exchange(self) -> Result<Exchange, ConfigError> {
        if Origin::parse(&self.token_url, "the token URL")?.is_insecure() {
            return Err(ConfigError::invalid(
                "the token URL",
                "it is plain http to a host that is not loopback; the secret would travel in clear text",
            ));
        }
        let token_url: Uri = self.token_url.parse().expect("Origin::parse parsed it");
        let http =
            match self.http {
                Some(http) => http,
                #[cfg(feature = "reqwest")]
                None => TokenHttpClient::default_reqwest()?,
                #[cfg(not(feature = "reqwest"))]
                None => return Err(ConfigError::invalid(
                    "the token HTTP client",
                    "none was given; set one with .http_client(…) or enable the reqwest feature",
                )),
            };
        Ok(Exchange {
            credentials: self.credentials,
            token_url,
            client_auth: self.client_auth,
            http,
        })
    }
}

/// Mints tokens with the client-credentials grant.
#[derive(Debug)]
pub(crate) struct Exchange {
    credentials: Credentials,
    token_url: Uri,
    client_auth: ClientAuth,
    http: TokenHttpClient,
}

impl TokenSource for Exchange {
    fn fetch_token(
        &self,
        params: &TokenParams,
    ) -> BoxFuture<'static, Result<AccessToken, TokenError>> {
        let request = self.request(params);
        let http = self.http.clone();
        let secret = self.credentials.secret().clone();
        let span = tracing::debug_span!(
            "propel.token_exchange",
            url = %self.token_url,
            scopes = %Scope::join(params.scopes()),
            status = tracing::field::Empty,
        );
        Box::pin(
            async move {
                let response = http.send(request).await?;
                tracing::Span::current().record("status", response.status().as_u16());
                token_from_response(response, &[secret.expose_secret()])
            }
            .instrument(span),
        )
    }
}

impl Exchange {
    fn request(&self, params: &TokenParams) -> http::Request<Bytes> {
        let scope = Scope::join(params.scopes());
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if self.client_auth == ClientAuth::FormBody {
            form.push(("client_id", self.credentials.application_id()));
            form.push(("client_secret", self.credentials.secret().expose_secret()));
        }
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        if let Some(values) = params.policy_values() {
            form.push(("policy_values", values));
        }
        let body = serde_urlencoded::to_string(&form).expect("string pairs always encode");
        let mut request = http::Request::post(self.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(Bytes::from(body))
            .expect("a parsed URI and valid headers");
        if self.client_auth == ClientAuth::BasicHeader {
            let basic = self.credentials.basic_header();
            request.headers_mut().insert(AUTHORIZATION, basic);
        }
        request
    }
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

/// Turns a Token API answer into a token or a typed error, with the `known`
/// secrets removed from any text an error keeps.
pub(crate) fn token_from_response(
    response: TokenHttpResponse,
    known: &[&str],
) -> Result<AccessToken, TokenError> {
    let excerpt = |text: &str| excerpt(text, known);
    let (status, body) = (response.status(), response.body());
    let details = |kind| TokenErrorDetails {
        status: Some(status),
        ..TokenErrorDetails::new(kind)
    };
    if status.is_success() {
        if body.truncated {
            return Err(TokenError::invalid_response(
                "the answer is larger than 64 KiB",
            ));
        }
        let parsed: TokenBody = serde_json::from_slice(&body.bytes).map_err(|err| {
            TokenError::invalid_response(format!(
                "the answer is not the expected JSON ({})",
                excerpt(&err.to_string())
            ))
        })?;
        let token = parsed
            .access_token
            .filter(|token| !token.is_empty())
            .ok_or_else(|| TokenError::invalid_response("the answer has no access_token"))?;
        if let Some(kind) = parsed
            .token_type
            .filter(|kind| !kind.eq_ignore_ascii_case("bearer"))
        {
            let kind = excerpt(&kind);
            return Err(TokenError::invalid_response(format!(
                "the token_type is {kind:?}, not Bearer"
            )));
        }
        // A number, or a number in a string.
        let expires_in = parsed
            .expires_in
            .and_then(|v| v.as_f64().or_else(|| v.as_str()?.trim().parse().ok()));
        return AccessToken::from_response(token, expires_in);
    }
    let parsed = parse_error_body(&body.bytes, known);
    let kind = match status {
        StatusCode::TOO_MANY_REQUESTS => TokenErrorKind::RateLimited,
        s if s.is_client_error() => match parsed.code.as_deref() {
            Some("invalid_client") => TokenErrorKind::InvalidClient,
            Some("invalid_request") => TokenErrorKind::InvalidRequest,
            Some("unsupported_grant_type") => TokenErrorKind::UnsupportedGrantType,
            Some("invalid_scope") => TokenErrorKind::InvalidScope,
            Some("unauthorized_client") => TokenErrorKind::UnauthorizedClient,
            _ => TokenErrorKind::Rejected,
        },
        // A redirect is not followed (it would carry the secret elsewhere):
        // most likely a wrong token URL, which waiting will not fix.
        s if s.is_redirection() => TokenErrorKind::Rejected,
        _ => TokenErrorKind::Server,
    };
    Err(TokenErrorDetails {
        oauth_error: parsed.code,
        description: parsed.message,
        retry_after: retry_after(response.headers()),
        ..details(kind)
    }
    .into())
}

/// `Retry-After` in seconds, at most a minute (the HTTP-date form is not
/// honoured: it needs a clock the server shares, and the backoff covers it).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

/// A Token API error from an answer, for other modules' tests.
#[cfg(test)]
pub(crate) fn token_error_for_test(answer: http::Response<Bytes>) -> TokenError {
    let response = answer.map(|bytes| crate::error_body::Capped {
        bytes,
        truncated: false,
    });
    token_from_response(response, &[]).expect_err("not a success")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_body::Capped;
    use http::HeaderValue;

    fn token_from_response_(response: TokenHttpResponse) -> Result<AccessToken, TokenError> {
        token_from_response(response, &[])
    }

    fn answer(status: u16, body: &str) -> TokenHttpResponse {
        let mut answer = http::Response::new(Capped {
            bytes: Bytes::copy_from_slice(body.as_bytes()),
            truncated: false,
        });
        *answer.status_mut() = StatusCode::from_u16(status).unwrap();
        answer
    }

    #[test]
    fn a_good_answer_is_a_token() {
        let token = token_from_response_(answer(
            200,
            r#"{"access_token":"abc","expires_in":3600,"token_type":"bearer"}"#,
        ))
        .unwrap();
        assert_eq!(token.lifetime(), Duration::from_secs(3600));
    }

    #[test]
    fn bad_answers_are_typed() {
        let cases = [
            (
                200,
                r#"{"access_token":"abc","token_type":"mac"}"#,
                TokenErrorKind::InvalidResponse,
            ),
            (
                200,
                r#"{"expires_in":3600}"#,
                TokenErrorKind::InvalidResponse,
            ),
            (200, r#"{"access_token":"#, TokenErrorKind::InvalidResponse),
            (
                400,
                r#"{"error":"invalid_client","error_description":"client_secret is invalid"}"#,
                TokenErrorKind::InvalidClient,
            ),
            (
                401,
                r#"{"error":"invalid_client"}"#,
                TokenErrorKind::InvalidClient,
            ),
            (
                400,
                r#"{"error":"unsupported_grant_type"}"#,
                TokenErrorKind::UnsupportedGrantType,
            ),
            (
                400,
                r#"{"error":"invalid_scope"}"#,
                TokenErrorKind::InvalidScope,
            ),
            (400, "<html>bad</html>", TokenErrorKind::Rejected),
            (429, "", TokenErrorKind::RateLimited),
            (307, "", TokenErrorKind::Rejected),
            (503, "", TokenErrorKind::Server),
        ];
        for (status, body, kind) in cases {
            let err = token_from_response_(answer(status, body)).unwrap_err();
            assert_eq!(err.kind(), kind, "{status} {body}");
        }
    }

    #[test]
    fn the_secret_never_reaches_an_error_even_when_echoed() {
        let echoed = answer(
            400,
            r#"{"error":"invalid_client","error_description":"bad secret s3cr3t!"}"#,
        );
        let err = token_from_response(echoed, &["s3cr3t!"]).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("s3cr3t!"), "{err}");
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut response = answer(503, "");
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let err = token_from_response(response, &[]).unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert!(err.is_transient());
    }
}
