//! [`PropelAuthLayer`] and the builder of its token flows: configuration
//! only; no I/O happens here. The first request through a service fetches
//! the first token.

use std::fmt;
use std::sync::Arc;

use tower::Layer;

use crate::error::{ConfigError, TokenError};
use crate::origin::AllowedOrigins;
use crate::stats::Stats;
use crate::token::cache::{CacheConfig, Supply};
use crate::token::client_credentials::{ClientAuth, ClientCredentials, DEFAULT_TOKEN_URL};
use crate::token::clock::Clock;
use crate::token::store::TokenStore;
use crate::token::TokenHttpClient;
use crate::{AccessToken, Credentials, PropelAuth, Settings, TokenParams, TokenSource};

/// A [`tower::Layer`] that adds Propel credentials to every request for the
/// Propel API.
///
/// Cheap to clone: every clone and every [`PropelAuth`] service made from it
/// share one token cache and one set of [`Stats`].
///
/// | constructor | when |
/// |---|---|
/// | [`basic`](Self::basic) | a trusted back end: the Application ID and secret on every request |
/// | [`client_credentials`](Self::client_credentials) | short-lived tokens from Propel's Token API, cached and refreshed |
/// | [`bearer`](Self::bearer) | a token minted elsewhere (a front end given one by its back end) |
/// | [`token_source`](Self::token_source) | tokens from anywhere else, cached and refreshed the same way |
///
/// Credentials are attached only to requests for the allowed origins (by
/// default the origin of Propel's API URL), never over plain HTTP except to
/// loopback, and never over an `Authorization` header the caller set.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower::{ServiceBuilder, ServiceExt};
///
/// // PROPEL_CLIENT_ID / PROPEL_CLIENT_SECRET, and PROPEL_OAUTH_URL / PROPEL_API_URL if set.
/// let config = tower_propel_auth::config::from_env()?;
/// let layer = config.client_credentials().build()?;
/// let client = ServiceBuilder::new().layer(layer.clone()).service(reqwest::Client::new());
/// let request = reqwest::Request::new(reqwest::Method::POST, config.api_url().parse()?);
/// let response = client.oneshot(request).await?;
/// println!("{} ({} token requests)", response.status(), layer.stats().token_requests);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PropelAuthLayer {
    pub(crate) shared: Arc<Shared>,
    /// A tenant view's parameters ([`with_params`](Self::with_params)).
    pub(crate) params: Option<TokenParams>,
}

/// What every service of one layer, and every view of it, shares.
pub(crate) struct Shared {
    pub(crate) store: Arc<TokenStore>,
    pub(crate) origins: AllowedOrigins,
}

impl PropelAuthLayer {
    /// Server-side authentication: the Application ID and secret as HTTP Basic
    /// credentials on every request. The header is built once, here.
    pub fn basic(credentials: Credentials) -> Self {
        let config = CacheConfig {
            secret: Some(credentials.secret().clone()),
            ..CacheConfig::new(Supply::Application)
        };
        Self::seeded(config, AccessToken::application(&credentials), false)
    }

    /// Client-side authentication with tokens from Propel's Token API (the
    /// OAuth2 client-credentials grant); see [`TokenLayerBuilder`].
    pub fn client_credentials(credentials: Credentials) -> TokenLayerBuilder<ClientCredentials> {
        TokenLayerBuilder::new(ClientCredentials {
            credentials,
            token_url: DEFAULT_TOKEN_URL.to_owned(),
            client_auth: ClientAuth::default(),
            http: None,
            #[cfg(feature = "shared-cache")]
            shared_cache: None,
        })
    }

    /// A token minted elsewhere, used until it goes stale (the safety margin
    /// before it expires); after that requests fail with
    /// [`TokenErrorKind::Expired`](crate::TokenErrorKind::Expired). A 401 is
    /// final at once: there is no fresh token to try.
    pub fn bearer(token: AccessToken) -> Self {
        Self::bearer_with_clock(token, Clock::default())
    }

    pub(crate) fn bearer_with_clock(token: AccessToken, clock: Clock) -> Self {
        let config = CacheConfig {
            clock,
            ..CacheConfig::new(Supply::Given)
        };
        Self::seeded(config, token, true)
    }

    fn seeded(config: CacheConfig, token: AccessToken, expires: bool) -> Self {
        let store = TokenStore::seeded(Arc::new(config), token, expires);
        Self::new(store, AllowedOrigins::default_api())
    }

    /// Tokens from any [`TokenSource`], cached and refreshed exactly as
    /// Token API tokens are; see [`TokenLayerBuilder`].
    pub fn token_source(source: impl TokenSource) -> TokenLayerBuilder<CustomSource> {
        TokenLayerBuilder::new(CustomSource(Arc::new(source)))
    }

    pub(crate) fn new(store: TokenStore, origins: AllowedOrigins) -> Self {
        let store = Arc::new(store);
        Self {
            shared: Arc::new(Shared { store, origins }),
            params: None,
        }
    }

    /// Sends credentials to exactly these origins (URLs; only their scheme,
    /// host and port count) instead of Propel's API,
    /// `https://api.us-east-2.propeldata.com`. For [`basic`](Self::basic)
    /// and [`bearer`](Self::bearer) layers; a token layer's builder has
    /// [`allowed_origins`](TokenLayerBuilder::allowed_origins). The result
    /// shares this layer's credentials and counters.
    pub fn with_allowed_origins<I>(self, urls: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let store = Arc::clone(&self.shared.store);
        let origins = AllowedOrigins::parse(urls)?;
        Ok(Self {
            shared: Arc::new(Shared { store, origins }),
            params: self.params,
        })
    }

    /// A tenant view: a layer whose requests carry a token minted for
    /// `params` (e.g. [`TokenParams::tenant`]), from any client, a
    /// `reqwest::Client` included. Cheap: it shares this layer's token sets,
    /// their bound ([`Settings::max_token_sets`]), single flights, settings
    /// and [`Stats`]. A view holds parameters, not a cache: however many views
    /// there are, the bound holds, and a set it evicted is made again on its
    /// next request.
    ///
    /// An `http::Request` that carries [`TokenParams`] in its extensions gets
    /// those instead. For a [`basic`](Self::basic) or [`bearer`](Self::bearer)
    /// layer a view changes nothing: parameters cannot change its credential.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower::BoxError> {
    /// use tower::{Layer, ServiceExt};
    /// use tower_propel_auth::{config, TokenParams};
    ///
    /// let config = config::from_env()?;
    /// let auth = config.client_credentials().build()?;
    /// let client = reqwest::Client::new();
    /// let acme = auth.with_params(TokenParams::tenant("acme")).layer(client);
    /// let request = reqwest::Request::new(reqwest::Method::POST, config.api_url().parse()?);
    /// let response = acme.oneshot(request).await?; // with acme's token
    /// # let _ = response; Ok(()) }
    /// ```
    pub fn with_params(&self, params: TokenParams) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            params: Some(params),
        }
    }

    /// The counters of this layer, its clones, its views and their services.
    pub fn stats(&self) -> Stats {
        let store = &self.shared.store;
        Stats {
            token_sets: store.keyed_len() as u64,
            ..store.config().counters.snapshot()
        }
    }

    /// A valid access token for `params` (by default this view's, or the
    /// layer's), from the same cache requests use: the cached one, or one
    /// fetched through the single flight. For a back end that hands tokens
    /// to front ends, which then use [`PropelAuthLayer::bearer`] or call
    /// Propel directly; [`AccessToken::expires_in`] says how long it has left.
    ///
    /// Fails for a [`basic`](Self::basic) layer, which has no tokens.
    pub async fn access_token(
        &self,
        params: Option<&TokenParams>,
    ) -> Result<AccessToken, TokenError> {
        let store = &self.shared.store;
        if let Supply::Application = store.config().supply {
            return Err(TokenError::permanent(
                "this layer sends Basic credentials; build it with client_credentials to get tokens",
            ));
        }
        let params = params.or(self.params.as_ref());
        store.cache_for(params).token().await
    }
}

impl<S> Layer<S> for PropelAuthLayer {
    type Service = PropelAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropelAuth::new(inner, Arc::clone(&self.shared), self.params.clone())
    }
}

impl fmt::Debug for PropelAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credential = match self.shared.store.config().supply {
            Supply::Application => "basic",
            Supply::Given => "bearer",
            Supply::Minted(_) => "token",
        };
        f.debug_struct("PropelAuthLayer")
            .field("credential", &credential)
            .field("params", &self.params)
            .field("origins", &self.shared.origins)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Builds a token layer: [`PropelAuthLayer::client_credentials`] (whose
/// builder also sets the Token API's URL, client authentication and HTTP
/// client) or [`PropelAuthLayer::token_source`]. Ends in
/// [`build`](Self::build), which checks everything and makes no request.
///
/// ```
/// use tower_propel_auth::{Credentials, PropelAuthLayer, Scope, TokenParams};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = PropelAuthLayer::client_credentials(Credentials::new("APP01…", "secret")?)
///     .params(TokenParams::new().with_scopes([Scope::DataPoolQuery, Scope::MetricQuery]))
///     .build()?;
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TokenLayerBuilder<Source = ClientCredentials> {
    source: Source,
    params: TokenParams,
    origins: Option<Vec<String>>,
    settings: Settings,
}

/// The token source a [`TokenLayerBuilder`] from
/// [`PropelAuthLayer::token_source`] builds with.
#[derive(Clone)]
pub struct CustomSource(Arc<dyn TokenSource>);

impl fmt::Debug for CustomSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CustomSource")
    }
}

// Sealed: nobody outside can name the trait or its crate-private types.
#[allow(private_interfaces)]
mod sealed {
    use crate::token::cache::{CacheConfig, Supply};
    use crate::{ConfigError, Settings};

    /// What a builder turns into the layer's cache configuration: its token
    /// source, the secret to keep out of error messages, a shared cache.
    pub trait IntoSource {
        fn into_config(self, settings: &Settings) -> Result<CacheConfig, ConfigError>;
    }

    impl IntoSource for super::CustomSource {
        fn into_config(self, _: &Settings) -> Result<CacheConfig, ConfigError> {
            Ok(CacheConfig::new(Supply::Minted(self.0)))
        }
    }

    impl IntoSource for super::ClientCredentials {
        fn into_config(self, settings: &Settings) -> Result<CacheConfig, ConfigError> {
            #[cfg(feature = "shared-cache")]
            let second_level = (self.shared_cache.as_ref())
                .map(|shared| shared.second_level(&self.credentials, &self.token_url, settings))
                .transpose()?;
            #[cfg(not(feature = "shared-cache"))]
            let _ = settings;
            Ok(CacheConfig {
                secret: Some(self.credentials.secret().clone()),
                #[cfg(feature = "shared-cache")]
                second_level,
                ..CacheConfig::new(Supply::Minted(std::sync::Arc::new(self.exchange()?)))
            })
        }
    }
}

impl<Source> TokenLayerBuilder<Source> {
    fn new(source: Source) -> Self {
        Self {
            source,
            params: TokenParams::default(),
            origins: None,
            settings: Settings::default(),
        }
    }

    /// The parameters of the tokens requests get by default (scopes, policy
    /// values); a tenant view ([`PropelAuthLayer::with_params`]) or an
    /// `http::Request`'s extensions can give others. Default: none, so the
    /// Application's own scopes.
    pub fn params(mut self, params: TokenParams) -> Self {
        self.params = params;
        self
    }

    /// The origins that get the tokens (URLs; only their scheme, host and
    /// port count). Default: Propel's API, `https://api.us-east-2.propeldata.com`.
    pub fn allowed_origins<I>(mut self, urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.origins = Some(
            urls.into_iter()
                .map(|url| url.as_ref().to_owned())
                .collect(),
        );
        self
    }

    /// Refresh timing, timeouts, failure pacing and the bound on token sets.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Checks the configuration and builds the layer. No request is made.
    pub fn build(self) -> Result<PropelAuthLayer, ConfigError>
    where
        Source: sealed::IntoSource,
    {
        self.build_with_clock(Clock::default())
    }

    /// [`build`](Self::build) with the clock deadlines are checked against
    /// (tests hand in one they move by hand).
    pub(crate) fn build_with_clock(self, clock: Clock) -> Result<PropelAuthLayer, ConfigError>
    where
        Source: sealed::IntoSource,
    {
        self.settings.validate()?;
        let origins = match &self.origins {
            None => AllowedOrigins::default_api(),
            Some(urls) => AllowedOrigins::parse(urls)?,
        };
        let mut config = self.source.into_config(&self.settings)?;
        config.clock = clock;
        config.settings = self.settings;
        let store = TokenStore::renewable(self.params, Arc::new(config));
        Ok(PropelAuthLayer::new(store, origins))
    }
}

/// The client-credentials options.
impl TokenLayerBuilder<ClientCredentials> {
    /// The Token API URL (default Propel's,
    /// `https://auth.us-east-2.propeldata.com/oauth2/token`). Plain `http://`
    /// is accepted only to loopback.
    pub fn token_url(mut self, url: impl Into<String>) -> Self {
        self.source.token_url = url.into();
        self
    }

    /// How the Application authenticates to the Token API (default: in the
    /// form body, as Propel's docs do).
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.source.client_auth = client_auth;
        self
    }

    /// The HTTP client for token requests. Default (feature `reqwest`): a
    /// `reqwest::Client` that never follows redirects.
    pub fn http_client(mut self, client: TokenHttpClient) -> Self {
        self.source.http = Some(client);
        self
    }

    /// Shares tokens with the other processes of a fleet through a store
    /// ([`SharedCache`](crate::shared_cache::SharedCache); in Redis with
    /// `SharedCache::redis`, feature `redis`):
    /// before each token request, the layer's cache looks there for a token
    /// another process fetched, so the fleet makes one token request per
    /// parameter set and token lifetime instead of one per process. See
    /// [`shared_cache`](crate::shared_cache). Feature `shared-cache` (or `redis`).
    #[cfg(feature = "shared-cache")]
    #[cfg_attr(docsrs, doc(cfg(feature = "shared-cache")))]
    pub fn shared_cache(mut self, shared: crate::shared_cache::SharedCache) -> Self {
        self.source.shared_cache = Some(shared);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_clone_send_sync<T: Clone + Send + Sync + 'static>() {}

    #[test]
    fn layer_and_service_are_clone_send_and_sync() {
        assert_clone_send_sync::<PropelAuthLayer>();
        assert_clone_send_sync::<
            PropelAuth<
                tower::util::BoxCloneSyncService<
                    http::Request<String>,
                    http::Response<String>,
                    tower::BoxError,
                >,
            >,
        >();
    }

    #[test]
    fn clones_share_one_cache_and_one_set_of_stats() {
        let layer = PropelAuthLayer::basic(Credentials::new("APP", "secret").unwrap());
        let clone = layer.clone();
        assert!(Arc::ptr_eq(&layer.shared, &clone.shared));
        let service: PropelAuth<()> = clone.layer(());
        assert!(Arc::ptr_eq(&layer.shared, &service.shared));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let layer = PropelAuthLayer::basic(Credentials::new("APP", "SENTINEL-SECRET").unwrap());
        let builder = PropelAuthLayer::client_credentials(
            Credentials::new("APP", "SENTINEL-SECRET").unwrap(),
        );
        let text = format!("{layer:?} {builder:?} {:?}", layer.layer(()));
        assert!(!text.contains("SENTINEL"), "{text}");
    }

    #[test]
    fn invalid_settings_fail_the_build() {
        let credentials = Credentials::new("APP", "secret").unwrap();
        let settings = Settings {
            max_token_sets: 0,
            ..Settings::default()
        };
        let err = PropelAuthLayer::client_credentials(credentials)
            .settings(settings)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("max_token_sets"), "{err}");
    }

    #[test]
    fn a_token_url_over_plain_http_to_another_host_is_refused() {
        let credentials = Credentials::new("APP", "secret").unwrap();
        let err = PropelAuthLayer::client_credentials(credentials.clone())
            .token_url("http://auth.example.com/oauth2/token")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("plain http"), "{err}");
        assert!(PropelAuthLayer::client_credentials(credentials)
            .token_url("http://127.0.0.1:9/oauth2/token")
            .build()
            .is_ok());
    }

    #[test]
    fn origins_are_checked_when_set() {
        let credentials = Credentials::new("APP", "secret").unwrap();
        assert!(PropelAuthLayer::basic(credentials.clone())
            .with_allowed_origins(["not a url"])
            .is_err());
        let none = PropelAuthLayer::client_credentials(credentials)
            .allowed_origins(Vec::<String>::new())
            .build()
            .unwrap_err();
        assert!(none.to_string().contains("empty"), "{none}");
    }
}
