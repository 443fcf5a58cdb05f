//! [`Credentials`]: a Propel Application's ID and secret.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::error::ConfigError;

/// A Propel Application's ID and secret.
///
/// The secret is a [`SecretString`]: zeroed on drop, never shown by `Debug`.
///
/// ```
/// use tower_propel_auth::Credentials;
///
/// let credentials = Credentials::new("APP01EXAMPLE", "s3cr3t").unwrap();
/// assert_eq!(credentials.application_id(), "APP01EXAMPLE");
/// assert!(!format!("{credentials:?}").contains("s3cr3t"));
/// assert!(Credentials::new("APP01EXAMPLE", "").is_err());
/// ```
#[derive(Clone)]
pub struct Credentials {
    application_id: String,
    secret: SecretString,
}

impl Credentials {
    /// Credentials from an Application ID and secret. Fails when either is
    /// blank, or holds what HTTP Basic cannot carry (a control character, a `:` in the ID).
    pub fn new(
        application_id: impl Into<String>,
        secret: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        let application_id = application_id.into();
        let secret = SecretString::from(secret.into());
        if application_id.trim().is_empty() {
            return Err(ConfigError::empty("the Application ID"));
        }
        if application_id.contains(':') || application_id.chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                "the Application ID",
                "it must not contain ':' or control characters",
            ));
        }
        if secret.expose_secret().trim().is_empty() {
            return Err(ConfigError::empty("the Application secret"));
        }
        if secret.expose_secret().chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                "the Application secret",
                "it must not contain control characters",
            ));
        }
        Ok(Self {
            application_id,
            secret,
        })
    }

    /// The Application ID (not a secret).
    pub fn application_id(&self) -> &str {
        &self.application_id
    }

    /// The Application secret.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// `Basic base64(id:secret)`, marked sensitive so that HTTP/2 HPACK never
    /// indexes it and tower-http's tracing never prints it.
    pub(crate) fn basic_header(&self) -> HeaderValue {
        let pair = format!("{}:{}", self.application_id, self.secret.expose_secret());
        let mut value = HeaderValue::try_from(format!("Basic {}", STANDARD.encode(pair)))
            .expect("base64 output is a valid header value");
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("application_id", &self.application_id)
            .field("secret", &format_args!("[redacted]"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_is_exact_and_sensitive() {
        let credentials = Credentials::new("APP01ID", "se:cret").unwrap();
        let header = credentials.basic_header();
        // base64("APP01ID:se:cret")
        assert_eq!(header, "Basic QVBQMDFJRDpzZTpjcmV0");
        assert!(header.is_sensitive());
    }

    #[test]
    fn debug_redacts_the_secret() {
        let credentials = Credentials::new("APP01ID", "SENTINEL-SECRET").unwrap();
        let debug = format!("{credentials:?}");
        assert_eq!(
            debug,
            r#"Credentials { application_id: "APP01ID", secret: [redacted] }"#
        );
    }

    #[test]
    fn empty_or_malformed_parts_are_rejected() {
        let empty_id = Credentials::new(" ", "secret").unwrap_err();
        assert!(
            empty_id.to_string().contains("Application ID"),
            "{empty_id}"
        );
        let empty_secret = Credentials::new("APP", "").unwrap_err();
        assert!(
            empty_secret.to_string().contains("secret"),
            "{empty_secret}"
        );
        assert!(Credentials::new("APP:1", "secret").is_err());
        assert!(Credentials::new("APP", "line\nbreak").is_err());
    }
}
