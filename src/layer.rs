//! [`PropelAuthLayer`] and its builder: configuration only; no I/O happens
//! here. The first request through a service fetches the first token.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Uri};
use http_body::Body;
use http_body_util::Full;
use secrecy::SecretString;
use tower::{BoxError, Layer, Service};

use crate::error::{ConfigError, TokenError};
use crate::origin::{AllowedOrigins, Origin, DEFAULT_API_URL};
use crate::stats::{Counters, Stats};
use crate::token::cache::RefreshPolicy;
use crate::token::client_credentials::{ClientAuth, ClientCredentials, DEFAULT_TOKEN_URL};
use crate::token::http_client::TokenHttpClient;
use crate::token::store::{TokenStore, DEFAULT_MAX_TOKEN_SETS};
use crate::token::FixedToken;
use crate::{AccessToken, Credentials, PropelAuth, Scope, TokenParams, TokenSource};

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
/// | [`token_source`](Self::token_source) | tokens from anywhere else |
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
/// let layer = tower_propel_auth::config::from_env()?.client_credentials().build()?;
/// let client = ServiceBuilder::new().layer(layer.clone()).service(reqwest::Client::new());
/// let request = reqwest::Request::new(
///     reqwest::Method::POST,
///     "https://api.us-east-2.propeldata.com/graphql".parse()?,
/// );
/// let response = client.oneshot(request).await?;
/// println!("{} ({} token requests)", response.status(), layer.stats().token_requests);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PropelAuthLayer {
    shared: Arc<Shared>,
}

/// What every service of one layer shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) auth: Auth,
    pub(crate) origins: AllowedOrigins,
    pub(crate) counters: Arc<Counters>,
    /// Keep a copy of replayable requests to send again after a 401.
    pub(crate) replay_unauthorized: bool,
    /// The Application secret, to remove by value from error messages.
    pub(crate) secret: Option<SecretString>,
}

#[derive(Clone)]
pub(crate) enum Auth {
    /// The pre-built, sensitive `Basic …` header.
    Basic(HeaderValue),
    Token(Arc<TokenStore>),
}

impl Shared {
    /// Default origins (Propel's API), 401 replay on, no secret to redact.
    fn new(auth: Auth, counters: Arc<Counters>) -> Self {
        Self {
            auth,
            origins: AllowedOrigins::default_api(),
            counters,
            replay_unauthorized: true,
            secret: None,
        }
    }

    /// Token authentication: one store of caches fed by `source`.
    fn tokens(
        source: Arc<dyn TokenSource>,
        params: TokenParams,
        policy: RefreshPolicy,
        max_token_sets: usize,
    ) -> Self {
        let counters = Arc::<Counters>::default();
        let store = TokenStore::new(
            source,
            params,
            Arc::new(policy),
            Arc::clone(&counters),
            max_token_sets,
        );
        Self::new(Auth::Token(Arc::new(store)), counters)
    }
}

impl PropelAuthLayer {
    /// Server-side authentication: the Application ID and secret as HTTP Basic
    /// credentials on every request. The header is built once, here.
    pub fn basic(credentials: Credentials) -> Self {
        Self::from_shared(Shared {
            secret: Some(credentials.secret().clone()),
            ..Shared::new(Auth::Basic(credentials.basic_header()), Arc::default())
        })
    }

    /// Client-side authentication with tokens from Propel's Token API (the
    /// OAuth2 client-credentials grant); see [`TokenLayerBuilder`].
    pub fn client_credentials(credentials: Credentials) -> TokenLayerBuilder {
        TokenLayerBuilder::new(TokenOrigin::ClientCredentials(credentials))
    }

    /// A token minted elsewhere, used until it expires; after that requests
    /// fail with [`TokenErrorKind::Expired`](crate::TokenErrorKind::Expired).
    pub fn bearer(token: AccessToken) -> Self {
        let policy = RefreshPolicy {
            refresh_ahead: false,
            ..RefreshPolicy::default()
        };
        let source = Arc::new(FixedToken(token));
        Self::from_shared(Shared {
            // There is no fresh token to retry a 401 with: it is final at once.
            replay_unauthorized: false,
            ..Shared::tokens(source, TokenParams::default(), policy, 1)
        })
    }

    /// Tokens from any [`TokenSource`], cached and refreshed exactly as
    /// Token API tokens are; see [`TokenLayerBuilder`] (the Token API options
    /// do not apply).
    pub fn token_source(source: impl TokenSource) -> TokenLayerBuilder {
        TokenLayerBuilder::new(TokenOrigin::Source(Arc::new(source)))
    }

    fn from_shared(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Sends credentials to the origin of this API URL (instead of Propel's
    /// `https://api.us-east-2.propeldata.com`).
    pub fn with_api_url(self, api_url: &str) -> Result<Self, ConfigError> {
        self.with_allowed_origins([api_url])
    }

    /// Sends credentials to exactly these origins (URLs; only their scheme,
    /// host and port count).
    pub fn with_allowed_origins<'a>(
        self,
        origins: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ConfigError> {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        shared.origins = parse_origins(origins)?;
        Ok(Self::from_shared(shared))
    }

    /// The counters of this layer, its clones and their services.
    pub fn stats(&self) -> Stats {
        let mut stats = self.shared.counters.snapshot();
        if let Auth::Token(store) = &self.shared.auth {
            stats.token_sets = store.keyed_len() as u64;
        }
        stats
    }

    /// A valid access token for `params` (the layer's defaults when `None`),
    /// from the same cache requests use: the cached one, or one fetched
    /// through the single flight. For a back end that hands tokens to front
    /// ends, which then use [`PropelAuthLayer::bearer`] or call Propel directly;
    /// [`AccessToken::expires_in`] says how long it has left.
    ///
    /// Fails for a [`basic`](Self::basic) layer, which has no tokens.
    pub async fn access_token(
        &self,
        params: Option<&TokenParams>,
    ) -> Result<AccessToken, TokenError> {
        let Auth::Token(store) = &self.shared.auth else {
            return Err(TokenError::from_source(
                "this layer sends Basic credentials; build it with client_credentials to get tokens",
                false,
            ));
        };
        let cache = store.cache_for(params);
        // Like a request: a token due for refresh starts one in the background.
        match cache
            .cached()
            .and_then(|(_, generation)| cache.current_of(generation))
        {
            Some(cached) => Ok(cached.token().clone()),
            None => Ok(cache.wait().await?.token().clone()),
        }
    }
}

fn parse_origins<'a>(
    origins: impl IntoIterator<Item = &'a str>,
) -> Result<AllowedOrigins, ConfigError> {
    let origins = origins
        .into_iter()
        .map(|url| Origin::parse(url, "an allowed API origin"))
        .collect::<Result<Vec<_>, _>>()?;
    if origins.is_empty() {
        return Err(ConfigError::empty("the list of allowed API origins"));
    }
    Ok(AllowedOrigins::new(origins))
}

impl<S> Layer<S> for PropelAuthLayer {
    type Service = PropelAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropelAuth::new(inner, Arc::clone(&self.shared))
    }
}

impl fmt::Debug for PropelAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.shared.auth {
            Auth::Basic(_) => "basic",
            Auth::Token(_) => "token",
        };
        f.debug_struct("PropelAuthLayer")
            .field("mode", &mode)
            .field("origins", &self.shared.origins)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Where a token layer's tokens come from.
#[derive(Clone)]
enum TokenOrigin {
    ClientCredentials(Credentials),
    Source(Arc<dyn TokenSource>),
}

/// Configures [`PropelAuthLayer::client_credentials`] and
/// [`PropelAuthLayer::token_source`]; ends in [`build`](Self::build).
///
/// ```
/// use std::time::Duration;
/// use tower_propel_auth::{Credentials, PropelAuthLayer, Scope};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = PropelAuthLayer::client_credentials(Credentials::new("APP01…", "secret")?)
///     .scopes([Scope::DataPoolQuery, Scope::MetricQuery])
///     .refresh_at(0.75)
///     .fetch_timeout(Duration::from_secs(5))
///     .build()?;
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenLayerBuilder {
    origin: TokenOrigin,
    /// A Token API option was set on a custom source, where it cannot apply.
    token_api_option_set: bool,
    token_url: String,
    api_origins: Vec<String>,
    client_auth: ClientAuth,
    params: TokenParams,
    /// `policy_values_json` was given something other than a JSON object.
    policy_values_invalid: bool,
    http: Option<TokenHttpClient>,
    policy: RefreshPolicy,
    replay_unauthorized: bool,
    max_token_sets: usize,
}

impl TokenLayerBuilder {
    fn new(origin: TokenOrigin) -> Self {
        Self {
            origin,
            token_api_option_set: false,
            token_url: DEFAULT_TOKEN_URL.to_owned(),
            api_origins: vec![DEFAULT_API_URL.to_owned()],
            client_auth: ClientAuth::default(),
            params: TokenParams::default(),
            policy_values_invalid: false,
            http: None,
            policy: RefreshPolicy::default(),
            replay_unauthorized: true,
            max_token_sets: DEFAULT_MAX_TOKEN_SETS,
        }
    }

    /// The Token API URL (default Propel's, `PROPEL_OAUTH_URL` in
    /// [`from_env`](crate::config::from_env)). Plain `http://` is accepted only to loopback.
    pub fn token_url(mut self, url: impl Into<String>) -> Self {
        self.token_api_option_set = true;
        self.token_url = url.into();
        self
    }

    /// The API URL whose origin gets the tokens (default Propel's).
    pub fn api_url(mut self, url: impl Into<String>) -> Self {
        self.api_origins = vec![url.into()];
        self
    }

    /// Exactly the origins that get the tokens.
    pub fn allowed_origins(mut self, origins: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.api_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// How the Application authenticates to the Token API (default: in the form body).
    pub fn client_auth(mut self, client_auth: ClientAuth) -> Self {
        self.token_api_option_set = true;
        self.client_auth = client_auth;
        self
    }

    /// Narrows the tokens to these scopes (default: the Application's own).
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = Scope>) -> Self {
        self.params = self.params.with_scopes(scopes);
        self
    }

    /// Policy values for Data Pool Access Policies, as a JSON object.
    pub fn policy_values(mut self, values: serde_json::Map<String, serde_json::Value>) -> Self {
        self.params = self.params.with_policy_values(values);
        self
    }

    /// Policy values as JSON text; [`build`](Self::build) fails unless it is an object.
    pub fn policy_values_json(mut self, json: &str) -> Self {
        match self.params.clone().with_policy_values_json(json) {
            Ok(params) => self.params = params,
            Err(_) => self.policy_values_invalid = true,
        }
        self
    }

    /// The HTTP client for token requests: any tower service over
    /// `http::Request<Full<Bytes>>`, such as hyper-util's legacy client.
    /// Default (feature `reqwest`): a `reqwest::Client` that does not follow redirects.
    pub fn http_client<S, RB>(mut self, client: S) -> Self
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
        self.token_api_option_set = true;
        self.http = Some(TokenHttpClient::from_service(client));
        self
    }

    /// A `reqwest::Client` for token requests. Configure it not to follow
    /// redirects: a token request carries the secret.
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn reqwest_client(mut self, client: reqwest::Client) -> Self {
        self.token_api_option_set = true;
        self.http = Some(TokenHttpClient::from_reqwest(client));
        self
    }

    /// Refresh once this fraction of a token's usable lifetime has passed
    /// (default 0.8; a random up to 0.1 earlier so a fleet does not refresh in step).
    pub fn refresh_at(mut self, fraction: f64) -> Self {
        self.policy.refresh_fraction = fraction;
        self
    }

    /// The random spread of the refresh point, as a fraction of the lifetime (default 0.1).
    pub fn refresh_jitter(mut self, fraction: f64) -> Self {
        self.policy.jitter = fraction;
        self
    }

    /// Treat a token as expired this long before its real expiry (default
    /// 30 s, at most a quarter of its lifetime), for clock skew and latency.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.policy.safety_margin = margin;
        self
    }

    /// The longest a token request may take (default 10 s).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.policy.fetch_timeout = timeout;
        self
    }

    /// After a failed token request with no valid token, requests fail fast
    /// with its error for this long instead of asking again (default 1 s;
    /// stretched by a `Retry-After`, up to 60 s). Also the least time between
    /// two 401-triggered refreshes: zero turns both protections off.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.policy.cooldown = cooldown;
        self
    }

    /// Backoff of background refresh retries: `base`, doubling, at most `max`
    /// (default 500 ms to 30 s), with jitter.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.policy.backoff_base = base;
        self.policy.backoff_max = max;
        self
    }

    /// Whether to keep a copy of replayable requests (in-memory bodies) to
    /// send once more with a fresh token after a 401 (default true). Without
    /// it a 401 is [`Error::Unauthorized`](crate::Error::Unauthorized) at once.
    pub fn retry_unauthorized(mut self, retry: bool) -> Self {
        self.replay_unauthorized = retry;
        self
    }

    /// The most parameter sets (tenants) with a token cache of their own at
    /// once (default 4096). Past it, a set without a valid token is dropped
    /// first, else the least recently used one.
    pub fn max_token_sets(mut self, max: usize) -> Self {
        self.max_token_sets = max;
        self
    }

    /// Checks the configuration and builds the layer. No request is made.
    pub fn build(self) -> Result<PropelAuthLayer, ConfigError> {
        if self.policy_values_invalid {
            return Err(TokenParams::not_an_object());
        }
        let p = &self.policy;
        if !(p.refresh_fraction > 0.0 && p.refresh_fraction <= 1.0) {
            return Err(ConfigError::invalid(
                "the refresh fraction",
                "it must be in (0, 1]",
            ));
        }
        if !(0.0..=p.refresh_fraction).contains(&p.jitter) {
            return Err(ConfigError::invalid(
                "the refresh jitter",
                "it must be in [0, refresh fraction]",
            ));
        }
        if p.fetch_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "the fetch timeout",
                "it must be more than zero",
            ));
        }
        // Far-off values would overflow the clock; none of them is useful.
        const HOUR: Duration = Duration::from_secs(3600);
        if [p.fetch_timeout, p.cooldown, p.backoff_max, p.safety_margin]
            .iter()
            .any(|d| *d > HOUR)
        {
            return Err(ConfigError::invalid(
                "the fetch timeout, cool-down, backoff or safety margin",
                "none may exceed an hour",
            ));
        }
        if p.backoff_base.is_zero() || p.backoff_base > p.backoff_max {
            return Err(ConfigError::invalid(
                "the backoff",
                "its base must be more than zero and at most its maximum",
            ));
        }
        if self.max_token_sets == 0 {
            return Err(ConfigError::invalid(
                "the number of token sets",
                "it must be at least 1",
            ));
        }
        let origins = parse_origins(self.api_origins.iter().map(String::as_str))?;
        if self.token_api_option_set && matches!(self.origin, TokenOrigin::Source(_)) {
            return Err(ConfigError::invalid(
                "the token URL, client auth or token HTTP client",
                "they apply only to client_credentials, not to a custom token source",
            ));
        }
        let (source, secret): (Arc<dyn TokenSource>, _) = match self.origin {
            TokenOrigin::Source(source) => (source, None),
            TokenOrigin::ClientCredentials(credentials) => {
                let secret = credentials.secret().clone();
                let source = client_credentials_source(
                    credentials,
                    &self.token_url,
                    self.client_auth,
                    self.http,
                )?;
                (Arc::new(source), Some(secret))
            }
        };
        Ok(PropelAuthLayer::from_shared(Shared {
            origins,
            replay_unauthorized: self.replay_unauthorized,
            secret,
            ..Shared::tokens(source, self.params, self.policy, self.max_token_sets)
        }))
    }
}

fn client_credentials_source(
    credentials: Credentials,
    token_url: &str,
    client_auth: ClientAuth,
    http: Option<TokenHttpClient>,
) -> Result<ClientCredentials, ConfigError> {
    let token_origin = Origin::parse(token_url, "the token URL")?;
    if token_origin.is_insecure() {
        return Err(ConfigError::invalid(
                "the token URL",
                "it is plain http to a host that is not loopback; the secret would travel in clear text",
            ));
    }
    let token_url: Uri = token_url
        .parse()
        .map_err(|_| ConfigError::invalid("the token URL", "it is not a URL"))?;
    let http = match http {
        Some(http) => http,
        #[cfg(feature = "reqwest")]
        None => TokenHttpClient::default_reqwest()?,
        #[cfg(not(feature = "reqwest"))]
        None => {
            return Err(ConfigError::invalid(
                "the token HTTP client",
                "none was given; set one with .http_client(…) or enable the reqwest feature",
            ))
        }
    };
    Ok(ClientCredentials {
        credentials,
        token_url,
        client_auth,
        http,
    })
}

impl fmt::Debug for TokenLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLayerBuilder")
            .field("token_url", &self.token_url)
            .field("api_origins", &self.api_origins)
            .field("client_auth", &self.client_auth)
            .field("params", &self.params)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
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
                    BoxError,
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
        assert!(Arc::ptr_eq(&layer.shared, &service.shared()));
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
    fn settings_that_would_spin_or_hold_nothing_are_refused() {
        let credentials = Credentials::new("APP", "secret").unwrap();
        let builder = || PropelAuthLayer::client_credentials(credentials.clone());
        let zero_backoff = builder()
            .backoff(Duration::ZERO, Duration::from_secs(1))
            .build();
        assert!(zero_backoff.unwrap_err().to_string().contains("backoff"));
        let inverted = builder()
            .backoff(Duration::from_secs(2), Duration::from_secs(1))
            .build();
        assert!(inverted.is_err());
        let no_room = builder().max_token_sets(0).build();
        assert!(no_room.unwrap_err().to_string().contains("token sets"));
        assert!(builder().refresh_at(1.5).build().is_err());
        assert!(builder().cooldown(Duration::MAX).build().is_err());
        assert!(builder()
            .backoff(Duration::MAX, Duration::MAX)
            .build()
            .is_err());
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
}
