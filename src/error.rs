//! The errors a request through [`PropelAuth`](crate::PropelAuth) can end in.
//!
//! Each variant of [`Error`] wraps a type with accessors for the details. All
//! downcast from [`tower::BoxError`], so they survive stacks that box errors:
//!
//! ```
//! use tower::BoxError;
//! use tower_propel_auth::Error;
//!
//! fn describe(err: &BoxError) -> String {
//!     match err.downcast_ref::<Error>() {
//!         Some(Error::Forbidden(forbidden)) => format!(
//!             "add {:?} to the Application",
//!             forbidden.missing_scope()
//!         ),
//!         Some(other) if other.is_transient() => "try again".to_owned(),
//!         _ => err.to_string(),
//!     }
//! }
//! # let _ = describe;
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tower::BoxError;

use crate::Scope;

/// An error from a request through [`PropelAuth`](crate::PropelAuth).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Propel answered 403: the token lacks a scope or a Data Pool Access Policy.
    Forbidden(Forbidden),
    /// Propel answered 401 and a fresh token (if there is one to get) did not cure it.
    Unauthorized(Unauthorized),
    /// No access token could be had from the Token API or the [`TokenSource`](crate::TokenSource).
    Token(TokenError),
    /// Credentials would have gone over plain HTTP to a host that is not loopback.
    InsecureTransport(InsecureTransport),
    /// The inner service failed; its error is passed through unchanged.
    Service(BoxError),
}

impl Error {
    /// Whether the same request may succeed later: a Token API outage, rate limit
    /// or timeout, an inner-service error, or a curable 401 ([`Unauthorized::is_transient`]).
    /// Never for a 403, a Token API 4xx other than 429, or insecure transport.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Token(err) => err.is_transient(),
            Error::Service(_) => true,
            Error::Unauthorized(err) => err.is_transient(),
            Error::Forbidden(_) | Error::InsecureTransport(_) => false,
        }
    }

    /// How long the server asked us to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Token(err) => err.retry_after(),
            _ => None,
        }
    }

    /// What to do about it, in the words of Propel's docs; `None` for an inner-service error.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Forbidden(err) => Some(err.hint()),
            Error::Unauthorized(err) => Some(err.hint().to_owned()),
            Error::Token(err) => Some(err.hint().to_owned()),
            Error::InsecureTransport(err) => Some(err.hint().to_owned()),
            Error::Service(_) => None,
        }
    }

    fn wrapped(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            Error::Forbidden(err) => err,
            Error::Unauthorized(err) => err,
            Error::Token(err) => err,
            Error::InsecureTransport(err) => err,
            Error::Service(err) => &**err,
        }
    }
}

/// Transparent: shows what it wraps and hands on that error's own cause, so an
/// error chain (anyhow's `{:#}`, eyre) never repeats a line.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.wrapped(), f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.wrapped().source()
    }
}

impl From<TokenError> for Error {
    fn from(err: TokenError) -> Self {
        Error::Token(err)
    }
}

/// What a 403 was about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForbiddenReason {
    /// The token lacks this scope.
    MissingScope(Scope),
    /// No Data Pool Access Policy lets the Application (or the token's policy values) read it.
    Policy,
    /// The message named neither a scope nor a policy.
    Other,
}

/// Propel answered 403: "the access token lacks the required permissions".
#[derive(Debug)]
pub struct Forbidden {
    reason: ForbiddenReason,
    message: String,
}

impl Forbidden {
    pub(crate) fn new(reason: ForbiddenReason, message: String) -> Self {
        Self { reason, message }
    }

    /// Whether the token lacks a scope or a policy, as far as the message says.
    pub fn reason(&self) -> &ForbiddenReason {
        &self.reason
    }

    /// The scope the message says is missing.
    pub fn missing_scope(&self) -> Option<&Scope> {
        match &self.reason {
            ForbiddenReason::MissingScope(scope) => Some(scope),
            _ => None,
        }
    }

    /// Whether the message is about a Data Pool Access Policy.
    pub fn is_policy(&self) -> bool {
        self.reason == ForbiddenReason::Policy
    }

    /// The server's message, redacted and short; empty when the body had no text.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The fix Propel's docs give for this kind of 403.
    pub fn hint(&self) -> String {
        match &self.reason {
            ForbiddenReason::MissingScope(scope) => format!(
                "add the \"{scope}\" scope to the Application (and to the scopes requested, if any), then request a new access token"
            ),
            ForbiddenReason::Policy => "assign a Data Pool Access Policy to the Application (and send the policy_values it expects, e.g. a tenant_id), then request a new access token".to_owned(),
            ForbiddenReason::Other => "check the Application's scopes (querying needs data_pool:query and metric:query, the Management API needs admin) and its Data Pool Access Policies, then request a new access token".to_owned(),
        }
    }
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = match &self.reason {
            ForbiddenReason::MissingScope(scope) => {
                format!("forbidden: the access token lacks the \"{scope}\" scope")
            }
            ForbiddenReason::Policy => {
                "forbidden: no Data Pool Access Policy lets the access token read this data".into()
            }
            ForbiddenReason::Other => {
                "forbidden: the access token lacks the required permissions".into()
            }
        };
        with_message(f, &head, &self.message)
    }
}

/// Writes `head`, then the server's message in parentheses when there is one.
fn with_message(f: &mut fmt::Formatter<'_>, head: &str, message: &str) -> fmt::Result {
    f.write_str(head)?;
    if !message.is_empty() {
        write!(f, " (Propel: {message})")?;
    }
    Ok(())
}

impl std::error::Error for Forbidden {}

/// Propel answered 401.
///
/// The layer dropped the rejected token (if still cached), so the next attempt
/// carries a fresh one: [`is_transient`](Self::is_transient) says whether that
/// may cure it, and [`retry::TransientErrors`](crate::retry::TransientErrors)
/// resends. With Basic credentials or a bearer token it is final at once.
#[derive(Debug)]
pub struct Unauthorized {
    reason: UnauthorizedReason,
    message: String,
}

/// What Propel rejected, and what that means for the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnauthorizedReason {
    /// The Application ID and secret (Basic): final.
    ApplicationCredentials,
    /// A token minted elsewhere, which cannot be renewed: final.
    GivenToken,
    /// A token dropped (or already replaced): the next attempt carries another.
    Curable,
    /// A token fetched to replace one a 401 rejected moments before: final.
    FreshTokenRejected,
    /// A token kept as another 401 dropped one within a cool-down (no refresh storm): final.
    Throttled,
}

impl UnauthorizedReason {
    /// (`Display`, hint)
    fn text(self) -> (&'static str, &'static str) {
        match self {
            Self::ApplicationCredentials => (
                "unauthorized: Propel rejected the Application ID and secret",
                "check that the Application exists in this account and that its secret is current",
            ),
            Self::GivenToken => (
                "unauthorized: Propel rejected the access token",
                "the token may have been revoked or its Application deleted; get a new one where this one came from",
            ),
            Self::Curable => (
                "unauthorized: Propel rejected the access token",
                "send the request again: the next attempt carries a fresh token (retry::TransientErrors does)",
            ),
            Self::FreshTokenRejected => (
                "unauthorized: Propel rejected a freshly minted access token too",
                "the token may have been revoked or its Application deleted; check the Application in the Propel Console",
            ),
            Self::Throttled => (
                "unauthorized: Propel rejected another access token within the cool-down",
                "Propel is rejecting every token; check the Application in the Propel Console",
            ),
        }
    }
}

impl Unauthorized {
    pub(crate) fn new(reason: UnauthorizedReason, message: String) -> Self {
        Self { reason, message }
    }

    /// Whether sending again may succeed: the rejected token was dropped (or
    /// replaced) and the next attempt carries another.
    pub fn is_transient(&self) -> bool {
        self.reason == UnauthorizedReason::Curable
    }

    /// The server's message, redacted and short; empty when there was none.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What to check.
    pub fn hint(&self) -> &'static str {
        self.reason.text().1
    }
}

impl fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        with_message(f, self.reason.text().0, &self.message)
    }
}

impl std::error::Error for Unauthorized {}

/// Credentials would have gone over plain HTTP to a host that is not loopback;
/// nothing was sent.
#[derive(Debug)]
pub struct InsecureTransport {
    origin: String,
}

impl InsecureTransport {
    pub(crate) fn new(origin: String) -> Self {
        Self { origin }
    }

    /// The origin (`http://host:port`) the request was for.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// What to change.
    pub fn hint(&self) -> &'static str {
        "use https: plain http is allowed only to loopback"
    }
}

impl fmt::Display for InsecureTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing to send Propel credentials over plain HTTP to {}",
            self.origin
        )
    }
}

impl std::error::Error for InsecureTransport {}

/// Why no access token could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenErrorKind {
    /// `invalid_client`: the Application ID is unknown or the secret is wrong.
    InvalidClient,
    /// `invalid_request`: a parameter is missing or malformed.
    InvalidRequest,
    /// `unsupported_grant_type`: `grant_type` is not `client_credentials`.
    UnsupportedGrantType,
    /// `invalid_scope`: a requested scope exceeds the Application's scopes.
    InvalidScope,
    /// `unauthorized_client`: the Application may not use this grant.
    UnauthorizedClient,
    /// Another 4xx answer from the Token API.
    Rejected,
    /// 429 Too Many Requests.
    RateLimited,
    /// A 5xx answer (or another status that is not a success).
    Server,
    /// No answer within the fetch timeout.
    Timeout,
    /// The connection failed (refused, reset, DNS …).
    Transport,
    /// The token URL is https and reqwest has no TLS backend (turn on `rustls` or `native-tls`).
    TlsUnavailable,
    /// A 2xx answer that is no usable token (bad JSON, no `access_token`, not Bearer, too big).
    InvalidResponse,
    /// The token is past its expiry and cannot be renewed (a token passed to
    /// [`PropelAuthLayer::bearer`](crate::PropelAuthLayer::bearer)).
    Expired,
    /// A custom [`TokenSource`](crate::TokenSource) failed.
    Source,
}

/// Which part of the token request the Token API's answer points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenRequestField {
    /// `grant_type`: send `grant_type=client_credentials`.
    GrantType,
    /// `client_id`: the Application ID must exist in this account.
    ClientId,
    /// `client_secret`: the Application secret.
    ClientSecret,
    /// `scope`: may not exceed the Application's scopes.
    Scope,
    /// `policy_values`: must be a JSON object.
    PolicyValues,
}

impl fmt::Display for TokenRequestField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenRequestField::GrantType => "grant_type",
            TokenRequestField::ClientId => "client_id",
            TokenRequestField::ClientSecret => "client_secret",
            TokenRequestField::Scope => "scope",
            TokenRequestField::PolicyValues => "policy_values",
        })
    }
}

/// No access token could be had.
///
/// Every request that waited on one failed token request gets this same error.
#[derive(Debug)] // everything in it is already redacted
pub struct TokenError {
    inner: Arc<TokenErrorDetails>,
}

/// A [`TokenError`] being built, by value; shared once complete.
#[derive(Debug)]
pub(crate) struct TokenErrorDetails {
    pub(crate) kind: TokenErrorKind,
    pub(crate) status: Option<StatusCode>,
    pub(crate) oauth_error: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) source: Option<BoxError>,
    /// For [`TokenErrorKind::Source`]: whether the source said trying again may help.
    pub(crate) transient_source: bool,
}

impl TokenErrorDetails {
    pub(crate) fn new(kind: TokenErrorKind) -> Self {
        Self {
            kind,
            status: None,
            oauth_error: None,
            description: None,
            retry_after: None,
            source: None,
            transient_source: false,
        }
    }

    /// An `error_description`, a redacted excerpt of the body, or ours.
    pub(crate) fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    pub(crate) fn with_cause(mut self, cause: impl Into<BoxError>) -> Self {
        self.source = Some(cause.into());
        self
    }
}

impl From<TokenErrorDetails> for TokenError {
    fn from(details: TokenErrorDetails) -> Self {
        Self {
            inner: Arc::new(details),
        }
    }
}

impl TokenErrorKind {
    /// (`Display`, hint)
    fn text(self) -> (&'static str, &'static str) {
        const UNAVAILABLE: &str = "the Token API is unavailable; try again after the cool-down (retry::TransientErrors does)";
        const UNREACHABLE: &str = "check the network path to the Token API; try again after the cool-down (retry::TransientErrors does)";
        match self {
            Self::InvalidClient => (
                "the Token API rejected the client credentials",
                "check the Application ID (the Application must exist in this account) and confirm its secret",
            ),
            Self::InvalidRequest => (
                "the Token API rejected the request",
                "check grant_type=client_credentials, the Application ID and its secret",
            ),
            Self::UnsupportedGrantType => (
                "the Token API does not support the grant type",
                "send grant_type=client_credentials",
            ),
            Self::InvalidScope => (
                "the Token API rejected the requested scopes",
                "request only scopes the Application has",
            ),
            Self::UnauthorizedClient => (
                "the Application may not use this grant",
                "check that the Application may use the client-credentials grant",
            ),
            Self::Rejected => (
                "the Token API rejected the request",
                "check the token URL, the Application ID and its secret",
            ),
            Self::RateLimited => ("the Token API is rate limiting", UNAVAILABLE),
            Self::Server => ("the Token API failed", UNAVAILABLE),
            Self::Timeout => ("the Token API did not answer in time", UNREACHABLE),
            Self::Transport => ("the Token API could not be reached", UNREACHABLE),
            Self::TlsUnavailable => (
                "reqwest has no TLS backend for the https token URL",
                "turn on a TLS backend: the rustls (default) or native-tls feature of tower-propel-auth, or a TLS feature of your own reqwest dependency",
            ),
            Self::InvalidResponse => (
                "the Token API's answer is not a usable token",
                "check that the token URL points at Propel's Token API",
            ),
            Self::Expired => (
                "the access token has expired and cannot be renewed",
                "mint a new token and build a new layer with it",
            ),
            Self::Source => ("the token source failed", "see the token source's error"),
        }
    }
}

impl TokenError {
    pub(crate) fn new(kind: TokenErrorKind) -> Self {
        TokenErrorDetails::new(kind).into()
    }

    /// An error from a custom [`TokenSource`](crate::TokenSource) that trying
    /// again will not cure. Keep secrets out of `source`: `Display` chains show it.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        TokenErrorDetails::new(TokenErrorKind::Source)
            .with_cause(source)
            .into()
    }

    /// An error from a custom [`TokenSource`](crate::TokenSource) that may pass
    /// (an outage, a timeout); [`is_transient`](Self::is_transient), so background
    /// refreshes retry it. Keep secrets out of `source`: `Display` chains show it.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        TokenErrorDetails {
            transient_source: true,
            ..TokenErrorDetails::new(TokenErrorKind::Source).with_cause(source)
        }
        .into()
    }

    pub(crate) fn invalid_response(what: impl Into<String>) -> Self {
        TokenErrorDetails::new(TokenErrorKind::InvalidResponse)
            .with_description(what)
            .into()
    }

    /// A second handle on the same error, for another waiter.
    pub(crate) fn share(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> TokenErrorKind {
        self.inner.kind
    }

    /// The Token API's HTTP status, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// The RFC 6749 `error` code, when the body had one (e.g. `invalid_client`).
    pub fn oauth_error(&self) -> Option<&str> {
        self.inner.oauth_error.as_deref()
    }

    /// The `error_description`, or a short excerpt of the body, redacted.
    pub fn description(&self) -> Option<&str> {
        self.inner.description.as_deref()
    }

    /// Which request field to check, when the answer points at one: by the
    /// RFC 6749 error and what its description mentions.
    pub fn field(&self) -> Option<TokenRequestField> {
        let text = self.description().unwrap_or_default().to_ascii_lowercase();
        let mentions = |words: &[&str]| words.iter().any(|word| text.contains(word));
        match self.kind() {
            TokenErrorKind::UnsupportedGrantType => Some(TokenRequestField::GrantType),
            TokenErrorKind::InvalidScope => Some(TokenRequestField::Scope),
            TokenErrorKind::InvalidClient
            | TokenErrorKind::InvalidRequest
            | TokenErrorKind::Rejected => {
                if mentions(&["grant_type", "grant type"]) {
                    Some(TokenRequestField::GrantType)
                } else if mentions(&["secret"]) {
                    Some(TokenRequestField::ClientSecret)
                } else if mentions(&[
                    "client_id",
                    "client id",
                    "application id",
                    "unknown client",
                    "does not exist",
                ]) {
                    Some(TokenRequestField::ClientId)
                } else if mentions(&["policy_values", "policy values"]) {
                    Some(TokenRequestField::PolicyValues)
                } else if mentions(&["scope"]) {
                    Some(TokenRequestField::Scope)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The `Retry-After` the Token API sent with a 429 or 503.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Whether a later attempt may succeed: 429, 5xx, timeouts, transport
    /// errors, and [`TokenError::transient`] source errors; never another 4xx.
    pub fn is_transient(&self) -> bool {
        use TokenErrorKind::*;
        // Exhaustive: a new kind must say whether it passes by itself.
        match self.kind() {
            RateLimited | Server | Timeout | Transport => true,
            Source => self.inner.transient_source,
            InvalidClient | InvalidRequest | UnsupportedGrantType | InvalidScope
            | UnauthorizedClient | Rejected | TlsUnavailable | InvalidResponse | Expired => false,
        }
    }

    /// The fix Propel's docs suggest, for the field at fault or else the kind.
    pub fn hint(&self) -> &'static str {
        match self.field() {
            Some(TokenRequestField::GrantType) => "send grant_type=client_credentials",
            Some(TokenRequestField::ClientId) => {
                "check the Application ID: the Application must exist in this account"
            }
            Some(TokenRequestField::ClientSecret) => {
                "check the Application secret: confirm it is current in the Propel Console"
            }
            Some(TokenRequestField::Scope) => "request only scopes the Application has",
            Some(TokenRequestField::PolicyValues) => {
                "send policy_values as a JSON object, e.g. {\"tenant_id\":\"123\"}"
            }
            None => self.inner.kind.text().1,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.write_str("could not get a Propel access token: ")?;
        f.write_str(inner.kind.text().0)?;
        match (inner.status, &inner.oauth_error) {
            (Some(status), Some(code)) => write!(f, " (HTTP {}, {code})", status.as_u16())?,
            (Some(status), None) => write!(f, " (HTTP {})", status.as_u16())?,
            (None, _) => {}
        }
        if let Some(description) = &inner.description {
            write!(f, ": {description}")?;
        }
        if let Some(field) = self.field() {
            write!(f, "; check {field}")?;
        }
        if let Some(retry_after) = inner.retry_after {
            write!(f, "; retry after {}s", retry_after.as_secs())?;
        }
        Ok(())
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.inner.source.as_deref()?)
    }
}

/// The configuration is not usable (a missing environment variable, an empty
/// secret, a malformed URL …); returned before anything is sent.
#[derive(Debug)]
pub struct ConfigError {
    what: String,
    problem: String,
}

impl ConfigError {
    pub(crate) fn empty(what: &str) -> Self {
        Self::invalid(what, "it is empty")
    }

    pub(crate) fn missing_env(var: &str) -> Self {
        Self::invalid(&format!("the environment variable {var}"), "it is not set")
    }

    pub(crate) fn invalid(what: &str, problem: impl Into<String>) -> Self {
        Self {
            what: what.to_owned(),
            problem: problem.into(),
        }
    }

    /// Names the environment variables a value came from.
    pub(crate) fn in_env_var(mut self, vars: &[&str]) -> Self {
        self.what = format!("{} (from {})", self.what, vars.join(" / "));
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { what, problem } = self;
        write!(f, "invalid configuration: {what} is not usable: {problem}")
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    impl TokenError {
        /// Whether two handles are the same error (waiters of one fetch share it).
        pub(crate) fn same_as(&self, other: &TokenError) -> bool {
            Arc::ptr_eq(&self.inner, &other.inner)
        }
    }

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn error_chains_never_repeat_a_line() {
        use std::error::Error as _;
        let err = Error::Forbidden(Forbidden::new(ForbiddenReason::Policy, "no policy".into()));
        assert!(err.source().is_none(), "Display already says it all");
        let inner: BoxError = "connection refused".into();
        let err = Error::Service(inner);
        assert_eq!(err.to_string(), "connection refused");
        assert!(err.source().is_none());
    }

    #[test]
    fn errors_are_send_sync_and_downcast_from_box_error() {
        assert_send_sync_static::<Error>();
        let boxed: BoxError = Box::new(Error::Token(TokenError::new(TokenErrorKind::Timeout)));
        let err = boxed.downcast_ref::<Error>().expect("downcasts");
        assert!(err.is_transient());
    }

    fn invalid_client(description: &str) -> TokenError {
        TokenErrorDetails {
            status: Some(StatusCode::BAD_REQUEST),
            oauth_error: Some("invalid_client".into()),
            ..TokenErrorDetails::new(TokenErrorKind::InvalidClient)
        }
        .with_description(description)
        .into()
    }

    #[test]
    fn invalid_client_description_points_at_the_secret_or_the_id() {
        let secret = invalid_client("client_secret is invalid for this Application");
        assert_eq!(secret.field(), Some(TokenRequestField::ClientSecret));
        assert!(
            secret.to_string().contains("check client_secret"),
            "{secret}"
        );
        let id = invalid_client("unknown client_id");
        assert_eq!(id.field(), Some(TokenRequestField::ClientId));
        assert!(id.hint().contains("must exist"));
    }

    #[test]
    fn display_is_lowercase_without_a_final_period() {
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(Forbidden::new(
                ForbiddenReason::MissingScope(Scope::DataPoolQuery),
                "x".into(),
            )),
            Box::new(Unauthorized::new(
                UnauthorizedReason::FreshTokenRejected,
                String::new(),
            )),
            Box::new(TokenError::new(TokenErrorKind::Server)),
            Box::new(InsecureTransport::new("http://example.com".into())),
            Box::new(ConfigError::empty("the Application ID")),
        ];
        for err in errors {
            let text = err.to_string();
            assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }
}
