//! Configuration from the environment variables Propel's own tools read; the
//! one place this crate reads the environment.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `PROPEL_CLIENT_ID` | the Application ID | required |
//! | `PROPEL_CLIENT_SECRET` | the Application secret | required |
//! | `PROPEL_OAUTH_URL` | the Token API URL | `https://auth.us-east-2.propeldata.com/oauth2/token` |
//! | `PROPEL_API_URL` | the GraphQL API URL | `https://api.us-east-2.propeldata.com/graphql` |
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = tower_propel_auth::config::from_env()?;
//! // Tokens from PROPEL_OAUTH_URL, sent to the origin of PROPEL_API_URL.
//! let layer = config.client_credentials().build()?;
//! println!("querying {}", config.api_url());
//! # let _ = layer; Ok(()) }
//! ```

use crate::error::ConfigError;
use crate::origin::{Origin, DEFAULT_API_URL};
use crate::token::client_credentials::{ClientCredentials, DEFAULT_TOKEN_URL};
use crate::{Credentials, PropelAuthLayer, TokenLayerBuilder};

/// The environment variable of the Application ID.
pub const CLIENT_ID_VAR: &str = "PROPEL_CLIENT_ID";
/// The environment variable of the Application secret.
pub const CLIENT_SECRET_VAR: &str = "PROPEL_CLIENT_SECRET";
/// The environment variable of the Token API URL.
pub const OAUTH_URL_VAR: &str = "PROPEL_OAUTH_URL";
/// The environment variable of the GraphQL API URL.
pub const API_URL_VAR: &str = "PROPEL_API_URL";

/// What [`from_env`] read.
#[derive(Debug, Clone)]
pub struct EnvConfig {
    credentials: Credentials,
    token_url: String,
    api_url: String,
}

/// Reads `PROPEL_CLIENT_ID`, `PROPEL_CLIENT_SECRET`, `PROPEL_OAUTH_URL` and
/// `PROPEL_API_URL`. Errors name the variable at fault.
pub fn from_env() -> Result<EnvConfig, ConfigError> {
    let credentials = Credentials::from_env()?;
    let token_url = env_var(OAUTH_URL_VAR)?.unwrap_or_else(|| DEFAULT_TOKEN_URL.to_owned());
    let api_url = env_var(API_URL_VAR)?.unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    Origin::parse(&token_url, OAUTH_URL_VAR)?;
    Origin::parse(&api_url, API_URL_VAR)?;
    Ok(EnvConfig {
        credentials,
        token_url,
        api_url,
    })
}

impl Credentials {
    /// Credentials from `PROPEL_CLIENT_ID` and `PROPEL_CLIENT_SECRET`; the
    /// error names the variable that is missing, empty or not Unicode.
    pub fn from_env() -> Result<Self, ConfigError> {
        let id = env_var(CLIENT_ID_VAR)?.ok_or_else(|| ConfigError::missing_env(CLIENT_ID_VAR))?;
        let secret = env_var(CLIENT_SECRET_VAR)?
            .ok_or_else(|| ConfigError::missing_env(CLIENT_SECRET_VAR))?;
        Self::new(id, secret).map_err(|err| err.in_env_var(&[CLIENT_ID_VAR, CLIENT_SECRET_VAR]))
    }
}

impl EnvConfig {
    /// The Application's credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The GraphQL API URL to send queries to.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The Token API URL.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// A Basic-credentials layer for the API URL's origin.
    pub fn basic(&self) -> Result<PropelAuthLayer, ConfigError> {
        PropelAuthLayer::basic(self.credentials.clone()).with_allowed_origins([&self.api_url])
    }

    /// A client-credentials builder with the token URL set and the API URL's origin allowed.
    pub fn client_credentials(&self) -> TokenLayerBuilder<ClientCredentials> {
        PropelAuthLayer::client_credentials(self.credentials.clone())
            .token_url(self.token_url.clone())
            .allowed_origins([self.api_url.clone()])
    }
}

/// A variable's value; `None` when unset or blank, an error naming it when not Unicode.
fn env_var(name: &str) -> Result<Option<String>, ConfigError> {
    match std::env::var(name) {
        Ok(value) => Ok((!value.trim().is_empty()).then_some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::invalid(
            &format!("the environment variable {name}"),
            "it is not valid Unicode",
        )),
    }
}
