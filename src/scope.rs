//! [`Scope`]: the permissions a Propel Application and its access tokens hold.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

/// A Propel scope.
///
/// Parsed from any spelling Propel uses, in any case: the GraphQL enum name
/// (`DATA_POOL_QUERY`), the token-request string (`data_pool:query`), or the
/// form in error messages (`data-pool:query`). Displayed as the token-request
/// string. Unknown scopes are kept as [`Scope::Other`], so they round-trip.
///
/// ```
/// use tower_propel_auth::Scope;
///
/// let scope: Scope = "data-pool:query".parse().unwrap();
/// assert_eq!(scope, Scope::DataPoolQuery);
/// assert_eq!(scope.to_string(), "data_pool:query");
/// assert_eq!(Scope::from("METRIC_QUERY"), Scope::MetricQuery);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Scope {
    /// `ADMIN` (`admin`): the Management API.
    Admin,
    /// `APPLICATION_ADMIN` (`application:admin`): creating Applications.
    ApplicationAdmin,
    /// `DATA_POOL_QUERY` (`data_pool:query`): querying Data Pools.
    DataPoolQuery,
    /// `METRIC_QUERY` (`metric:query`): querying Metrics.
    MetricQuery,
    /// `ENVIRONMENT_ADMIN` (`environment:admin`); not confirmed by Propel's docs.
    EnvironmentAdmin,
    /// `DATA_POOL_READ` (`data_pool:read`), deprecated.
    DataPoolRead,
    /// `DATA_POOL_STATS` (`data_pool:stats`), deprecated.
    DataPoolStats,
    /// `METRIC_READ` (`metric:read`), deprecated.
    MetricRead,
    /// `METRIC_STATS` (`metric:stats`), deprecated.
    MetricStats,
    /// A scope this crate does not know, kept as it was written (trimmed).
    Other(String),
}

/// (variant, token-request string, GraphQL enum name)
const KNOWN: [(Scope, &str, &str); 9] = [
    (Scope::Admin, "admin", "ADMIN"),
    (
        Scope::ApplicationAdmin,
        "application:admin",
        "APPLICATION_ADMIN",
    ),
    (Scope::DataPoolQuery, "data_pool:query", "DATA_POOL_QUERY"),
    (Scope::MetricQuery, "metric:query", "METRIC_QUERY"),
    (
        Scope::EnvironmentAdmin,
        "environment:admin",
        "ENVIRONMENT_ADMIN",
    ),
    (Scope::DataPoolRead, "data_pool:read", "DATA_POOL_READ"),
    (Scope::DataPoolStats, "data_pool:stats", "DATA_POOL_STATS"),
    (Scope::MetricRead, "metric:read", "METRIC_READ"),
    (Scope::MetricStats, "metric:stats", "METRIC_STATS"),
];

impl Scope {
    /// Every scope this crate knows by name.
    pub fn known() -> impl Iterator<Item = Scope> {
        KNOWN.into_iter().map(|(scope, _, _)| scope)
    }

    /// The token-request string, e.g. `data_pool:query`.
    pub fn as_str(&self) -> &str {
        match self {
            Scope::Other(other) => other,
            known => KNOWN
                .iter()
                .find(|(scope, _, _)| scope == known)
                .map(|(_, token, _)| *token)
                .unwrap_or_default(),
        }
    }

    /// The GraphQL enum name, e.g. `DATA_POOL_QUERY`; `None` for [`Scope::Other`].
    pub fn graphql_name(&self) -> Option<&'static str> {
        KNOWN
            .iter()
            .find(|(scope, _, _)| scope == self)
            .map(|(_, _, name)| *name)
    }

    /// Whether Propel has deprecated this scope.
    pub fn is_deprecated(&self) -> bool {
        matches!(
            self,
            Scope::DataPoolRead | Scope::DataPoolStats | Scope::MetricRead | Scope::MetricStats
        )
    }

    /// Joins scopes into the Token API's space-separated `scope` parameter.
    pub(crate) fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Folds every spelling to one key: `DATA_POOL_QUERY`, `data-pool:query` → `datapoolquery`.
fn fold(spelling: &str) -> String {
    spelling
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | ':' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

impl From<&str> for Scope {
    fn from(spelling: &str) -> Self {
        let trimmed = spelling.trim();
        let key = fold(trimmed);
        KNOWN
            .iter()
            .find(|(_, token, _)| fold(token) == key)
            .map(|(scope, _, _)| scope.clone())
            .unwrap_or_else(|| Scope::Other(trimmed.to_owned()))
    }
}

impl FromStr for Scope {
    type Err = Infallible;

    fn from_str(spelling: &str) -> Result<Self, Self::Err> {
        Ok(Scope::from(spelling))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_every_known_scope_parses_to_it() {
        for (scope, token, graphql) in KNOWN {
            let hyphenated = token.replace('_', "-");
            for spelling in [
                token,
                graphql,
                &hyphenated,
                &token.to_uppercase(),
                &graphql.to_lowercase(),
            ] {
                assert_eq!(Scope::from(spelling), scope, "{spelling}");
            }
            assert_eq!(scope.to_string(), token);
            assert_eq!(scope.graphql_name(), Some(graphql));
        }
    }

    #[test]
    fn unknown_scopes_are_kept_as_written() {
        let scope = Scope::from(" dashboard:view ");
        assert_eq!(scope, Scope::Other("dashboard:view".into()));
        assert_eq!(scope.to_string(), "dashboard:view");
        assert_eq!(scope.graphql_name(), None);
    }

    #[test]
    fn scopes_join_into_the_token_request_parameter() {
        let joined = Scope::join(&[Scope::MetricQuery, Scope::DataPoolQuery]);
        assert_eq!(joined, "metric:query data_pool:query");
    }
}
