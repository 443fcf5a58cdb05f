use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use secrecy::SecretString;

use super::jwt;
use crate::error::{TokenError, TokenErrorKind};
use crate::Credentials;

/// The shortest lifetime a token gets, so that `expires_in: 0` cannot cause a refresh storm.
pub(crate) const MIN_LIFETIME: Duration = Duration::from_secs(1);
/// The longest lifetime believed; absurd values are clamped to it.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The lifetime assumed when neither `expires_in` nor a JWT `exp` says.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// An access token and its pre-built `Authorization: Bearer …` header.
///
/// The token is kept in a [`SecretString`] and never shown by `Debug`; the
/// header is marked sensitive.
///
/// ```
/// use std::time::Duration;
/// use tower_propel_auth::secrecy::ExposeSecret;
/// use tower_propel_auth::AccessToken;
///
/// let token = AccessToken::new("eyJ…", Duration::from_secs(3600)).unwrap();
/// assert!(token.expires_in() <= Duration::from_secs(3600));
/// assert_eq!(token.secret().expose_secret(), "eyJ…");
/// assert!(!format!("{token:?}").contains("eyJ"));
/// ```
#[derive(Clone)]
pub struct AccessToken {
    token: SecretString,
    header: HeaderValue,
    /// Wall-clock, like the server's `exp`: it counts while the host is suspended.
    expires_at: SystemTime,
    lifetime: Duration,
}

impl AccessToken {
    /// A token that expires `expires_in` from now (clamped to at most 24 h).
    /// Fails when the token is empty or holds characters a header cannot carry.
    pub fn new(token: impl Into<String>, expires_in: Duration) -> Result<Self, TokenError> {
        Self::build(token.into(), expires_in.min(MAX_LIFETIME))
    }

    /// A JWT whose expiry is read from its `exp` claim (without verifying it).
    /// Fails when the token has no `exp`, or is already expired.
    pub fn from_jwt(token: impl Into<String>) -> Result<Self, TokenError> {
        let token = token.into();
        let Some(exp) = jwt::expiry_unix_secs(&token) else {
            return Err(TokenError::invalid_response(
                "the token is not a JWT with an exp claim; use AccessToken::new with its lifetime",
            ));
        };
        let remaining = secs_until(exp).ok_or_else(|| TokenError::new(TokenErrorKind::Expired))?;
        Self::build(token, remaining)
    }

    /// A token from a Token API answer: trusts `expires_in`, then the JWT's
    /// `exp`, then [`DEFAULT_LIFETIME`]; clamps to [`MIN_LIFETIME`]..=[`MAX_LIFETIME`].
    pub(crate) fn from_response(
        token: String,
        expires_in: Option<f64>,
    ) -> Result<Self, TokenError> {
        let lifetime = match expires_in.filter(|secs| secs.is_finite() && *secs > 0.0) {
            Some(secs) => Duration::from_secs_f64(secs.min(MAX_LIFETIME.as_secs_f64())),
            None => match jwt::expiry_unix_secs(&token) {
                Some(exp) => secs_until(exp).ok_or_else(|| {
                    TokenError::invalid_response(
                        "the Token API issued a token that has already expired",
                    )
                })?,
                None => DEFAULT_LIFETIME,
            },
        };
        Self::build(token, lifetime.clamp(MIN_LIFETIME, MAX_LIFETIME))
    }

    /// A token read back from a shared store, with its writer's expiry and lifetime.
    #[cfg(feature = "shared-cache")]
    pub(crate) fn restored(
        token: String,
        expires_at: SystemTime,
        lifetime: Duration,
    ) -> Result<Self, TokenError> {
        let mut restored = Self::build(token, lifetime.clamp(MIN_LIFETIME, MAX_LIFETIME))?;
        restored.expires_at = expires_at.min(SystemTime::now() + MAX_LIFETIME);
        Ok(restored)
    }

    /// A Basic layer's one cache entry: the header `Basic …`, with what it
    /// carries as the secret to redact by value; never expires or goes out as a token.
    pub(crate) fn application(credentials: &Credentials) -> Self {
        let header = credentials.basic_header();
        let carried = header.as_bytes()["Basic ".len()..].to_vec();
        Self {
            token: SecretString::from(String::from_utf8(carried).expect("base64 is ASCII")),
            header,
            expires_at: SystemTime::now() + MAX_LIFETIME,
            lifetime: MAX_LIFETIME,
        }
    }

    fn build(token: String, lifetime: Duration) -> Result<Self, TokenError> {
        if token.trim().is_empty() {
            return Err(TokenError::invalid_response("the access token is empty"));
        }
        let mut header = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
            TokenError::invalid_response(
                "the access token holds characters an HTTP header cannot carry",
            )
        })?;
        header.set_sensitive(true);
        Ok(Self {
            token: SecretString::from(token),
            header,
            expires_at: SystemTime::now() + lifetime,
            lifetime,
        })
    }

    /// The token itself, e.g. to hand to a front end.
    pub fn secret(&self) -> &SecretString {
        &self.token
    }

    /// When the token expires, by the wall clock.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// How long the token has left.
    pub fn expires_in(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    /// The lifetime it was issued with (after clamping).
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Whether it has expired.
    pub fn is_expired(&self) -> bool {
        SystemTime::now() >= self.expires_at
    }

    /// `Authorization: Bearer <token>`, marked sensitive.
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }
}

/// Seconds from now until the Unix time `exp`; `None` when it has passed.
fn secs_until(exp: i64) -> Option<Duration> {
    let exp = UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(exp).ok()?))?;
    let left = exp.duration_since(SystemTime::now()).ok()?;
    (!left.is_zero()).then(|| left.min(MAX_LIFETIME))
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &format_args!("[redacted]"))
            .field("expires_in", &self.expires_in())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn jwt_expiring_in(secs: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{}}}"#, now + secs));
        format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig")
    }

    #[test]
    fn lifetime_trusts_expires_in_then_exp_then_the_default() {
        let token = jwt_expiring_in(600);
        let from_expires_in = AccessToken::from_response(token.clone(), Some(3600.0)).unwrap();
        assert_eq!(from_expires_in.lifetime(), Duration::from_secs(3600));
        let from_exp = AccessToken::from_response(token, None).unwrap();
        assert!(
            (595..=600).contains(&from_exp.lifetime().as_secs()),
            "{:?}",
            from_exp.lifetime()
        );
        let opaque = AccessToken::from_response("opaque".into(), None).unwrap();
        assert_eq!(opaque.lifetime(), DEFAULT_LIFETIME);
    }

    #[test]
    fn absurd_expires_in_values_are_clamped_or_ignored() {
        let huge = AccessToken::from_response("t".into(), Some(1e12)).unwrap();
        assert_eq!(huge.lifetime(), MAX_LIFETIME);
        for bad in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            let token = AccessToken::from_response("t".into(), Some(bad)).unwrap();
            assert_eq!(token.lifetime(), DEFAULT_LIFETIME, "{bad}");
        }
        let tiny = AccessToken::from_response("t".into(), Some(0.001)).unwrap();
        assert_eq!(tiny.lifetime(), MIN_LIFETIME);
        assert!(AccessToken::from_response(jwt_expiring_in(-10), None).is_err());
    }

    #[test]
    fn header_is_sensitive_and_debug_is_redacted() {
        let token = AccessToken::new("SENTINEL-TOKEN", Duration::from_secs(60)).unwrap();
        assert_eq!(token.header(), "Bearer SENTINEL-TOKEN");
        assert!(token.header().is_sensitive());
        assert!(!format!("{token:?}").contains("SENTINEL"));
        assert!(AccessToken::new("bad\ntoken", Duration::from_secs(60)).is_err());
        assert!(AccessToken::new("", Duration::from_secs(60)).is_err());
    }

    #[test]
    fn from_jwt_reads_exp_and_refuses_expired_tokens() {
        let token = AccessToken::from_jwt(jwt_expiring_in(120)).unwrap();
        assert!(token.lifetime() > Duration::from_secs(100));
        let expired = AccessToken::from_jwt(jwt_expiring_in(-1)).unwrap_err();
        assert_eq!(expired.kind(), TokenErrorKind::Expired);
        assert!(AccessToken::from_jwt("opaque").is_err());
    }
}
