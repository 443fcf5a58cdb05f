//! Which origins credentials may be sent to.

use std::net::IpAddr;

use http::Uri;

use crate::error::ConfigError;

/// Propel's GraphQL API.
pub const DEFAULT_API_URL: &str = "https://api.us-east-2.propeldata.com/graphql";

/// An origin: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of a URL: `https://host[:port]` or `http://host[:port]`.
    pub(crate) fn parse(url: &str, what: &str) -> Result<Self, ConfigError> {
        let uri: Uri = url
            .parse()
            .map_err(|err| ConfigError::invalid(what, format!("{url:?} is not a URL ({err})")))?;
        let unusable = || {
            ConfigError::invalid(
                what,
                format!("{url:?} needs an http or https scheme and a host"),
            )
        };
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return Err(unusable()),
        };
        let host = uri.host().ok_or_else(unusable)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(unusable());
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = host.to_ascii_lowercase();
        Ok(Self { https, host, port })
    }

    /// Plain HTTP to something other than loopback.
    pub(crate) fn is_insecure(&self) -> bool {
        !self.https && !is_loopback(&self.host)
    }

    fn matches(&self, https: bool, host: &str, port: u16) -> bool {
        self.https == https && self.port == port && self.host.eq_ignore_ascii_case(host)
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What to do with a request, by its target.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// An allowed origin: attach credentials.
    Attach,
    /// Another origin: pass the request through untouched.
    PassThrough,
    /// An allowed host over plain HTTP (not loopback): refuse, send nothing.
    Insecure(String),
}

/// The origins credentials may go to, parsed once at build time.
#[derive(Debug, Clone)]
pub(crate) struct AllowedOrigins {
    origins: Vec<Origin>,
    /// `(https, host[:port])` of the origins that get credentials, as URLs spell them.
    authorities: Vec<(bool, String)>,
}

impl AllowedOrigins {
    pub(crate) fn new(origins: Vec<Origin>) -> Self {
        let mut authorities = Vec::new();
        for origin in origins.iter().filter(|origin| !origin.is_insecure()) {
            let host = if origin.host.contains(':') {
                format!("[{}]", origin.host) // IPv6
            } else {
                origin.host.clone()
            };
            if origin.port == if origin.https { 443 } else { 80 } {
                authorities.push((origin.https, host.clone()));
            }
            authorities.push((origin.https, format!("{host}:{}", origin.port)));
        }
        Self {
            origins,
            authorities,
        }
    }

    /// The origins of these URLs; fails on an empty list or a URL that is not one.
    pub(crate) fn parse<I>(urls: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let origins = urls
            .into_iter()
            .map(|url| Origin::parse(url.as_ref(), "an allowed origin"))
            .collect::<Result<Vec<_>, _>>()?;
        if origins.is_empty() {
            return Err(ConfigError::empty("the list of allowed origins"));
        }
        Ok(Self::new(origins))
    }

    pub(crate) fn default_api() -> Self {
        Self::new(vec![
            Origin::parse(DEFAULT_API_URL, "the API URL").expect("the default API URL parses")
        ])
    }

    /// Decides for a request to `scheme://authority`: string comparisons
    /// first, else the full check on its `parts` (host and port). An
    /// origin-form URI (no scheme or authority) passes through.
    #[inline]
    pub(crate) fn decide<'a>(
        &self,
        scheme: Option<&str>,
        authority: Option<&str>,
        parts: impl FnOnce() -> (Option<&'a str>, Option<u16>),
    ) -> Decision {
        let (Some(scheme), Some(authority)) = (scheme, authority) else {
            return Decision::PassThrough;
        };
        let https = scheme == "https";
        if self.authorities.iter().any(|(allowed_https, allowed)| {
            *allowed_https == https
                && (allowed == authority || allowed.eq_ignore_ascii_case(authority))
        }) {
            return Decision::Attach;
        }
        match parts() {
            (Some(host), port) => self.check(scheme, host, port),
            (None, _) => Decision::PassThrough,
        }
    }

    /// The full check, for a target the string comparisons did not match.
    fn check(&self, scheme: &str, host: &str, port: Option<u16>) -> Decision {
        let https = scheme.eq_ignore_ascii_case("https");
        let port = port.unwrap_or(if https { 443 } else { 80 });
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Some(origin) = self.origins.iter().find(|o| o.matches(https, host, port)) {
            if origin.is_insecure() {
                return Decision::Insecure(origin.to_string());
            }
            return Decision::Attach;
        }
        // The same host over plain HTTP is a downgrade, not another origin.
        let same_host = |o: &Origin| o.host.eq_ignore_ascii_case(host);
        if !https && !is_loopback(host) && self.origins.iter().any(same_host) {
            return Decision::Insecure(format!("http://{host}:{port}"));
        }
        Decision::PassThrough
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the layer decides for an `http::Request` to `url`.
    fn decide(allowed: &[&str], url: &str) -> Decision {
        use crate::message::sealed::Request as _;
        let origins = allowed
            .iter()
            .map(|a| Origin::parse(a, "test").unwrap())
            .collect();
        let request = http::Request::get(url).body(()).unwrap();
        request.decide(&AllowedOrigins::new(origins))
    }

    #[test]
    fn only_allowed_origins_get_credentials() {
        let api = ["https://api.us-east-2.propeldata.com/graphql"];
        assert_eq!(
            decide(&api, "https://api.us-east-2.propeldata.com/graphql"),
            Decision::Attach
        );
        assert_eq!(
            decide(&api, "https://API.us-east-2.propeldata.com:443/other"),
            Decision::Attach
        );
        assert_eq!(
            decide(&api, "https://evil.example.com/graphql"),
            Decision::PassThrough
        );
        assert_eq!(
            decide(&api, "https://api.us-east-2.propeldata.com:8443/"),
            Decision::PassThrough
        );
        assert!(matches!(
            decide(&api, "http://api.us-east-2.propeldata.com/graphql"),
            Decision::Insecure(_)
        ));
    }

    #[test]
    fn plain_http_is_allowed_only_to_loopback() {
        assert_eq!(
            decide(&["http://127.0.0.1:8080"], "http://127.0.0.1:8080/graphql"),
            Decision::Attach
        );
        assert_eq!(
            decide(&["http://[::1]:8080"], "http://[::1]:8080/graphql"),
            Decision::Attach
        );
        assert_eq!(
            decide(&["http://localhost:8080"], "http://localhost:8080/graphql"),
            Decision::Attach
        );
        assert!(matches!(
            decide(&["http://10.0.0.1:8080"], "http://10.0.0.1:8080/"),
            Decision::Insecure(_)
        ));
    }
}
