use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::error::ConfigError;
use crate::Scope;

/// What a token is minted for: the scopes to narrow it to and the policy
/// values that fill the `${{ … }}` placeholders of Data Pool Access Policies.
///
/// The layer's defaults come from its builder; a tenant view
/// ([`PropelAuthLayer::with_params`](crate::PropelAuthLayer::with_params))
/// or an `http::Request`'s extensions can give others. Each distinct set gets
/// a token cached for exactly that set. Cheap to clone, and hashed once.
///
/// ```
/// use tower_propel_auth::{Scope, TokenParams};
///
/// let params = TokenParams::tenant("acme").with_scopes([Scope::DataPoolQuery]);
/// assert_eq!(params.policy_values(), Some(r#"{"tenant_id":"acme"}"#));
/// ```
#[derive(Clone)]
pub struct TokenParams {
    inner: Arc<Content>,
}

#[derive(Clone, Default, PartialEq, Eq)]
struct Content {
    /// A hash of the rest, the same in every process and every layer (std's
    /// SipHash with fixed keys): compared first, so unequal sets rarely
    /// compare their text.
    fingerprint: u64,
    scopes: Vec<Scope>,
    /// A JSON object, serialized once with its keys sorted.
    policy_values: Option<String>,
}

impl TokenParams {
    /// No scopes (the Application's own) and no policy values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Policy values `{"tenant_id": tenant_id}`: the usual multi-tenant token.
    pub fn tenant(tenant_id: impl Into<String>) -> Self {
        let mut values = serde_json::Map::new();
        values.insert("tenant_id".to_owned(), tenant_id.into().into());
        Self::new().with_policy_values(values)
    }

    /// Narrows the token to these scopes (they cannot exceed the Application's).
    pub fn with_scopes(self, scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut scopes: Vec<Scope> = scopes.into_iter().collect();
        scopes.sort();
        scopes.dedup();
        self.edit(|content| content.scopes = scopes)
    }

    /// Sets the policy values, a JSON object.
    pub fn with_policy_values(self, values: serde_json::Map<String, serde_json::Value>) -> Self {
        // Sorted whatever order the map keeps (`preserve_order`): equal values, equal keys.
        let sorted: BTreeMap<String, serde_json::Value> = values.into_iter().collect();
        let json = serde_json::to_string(&sorted).expect("JSON values serialize");
        self.edit(|content| content.policy_values = Some(json))
    }

    /// Sets the policy values from JSON text, which must be an object.
    pub fn with_policy_values_json(self, json: &str) -> Result<Self, ConfigError> {
        match serde_json::from_str(json) {
            Ok(serde_json::Value::Object(values)) => Ok(self.with_policy_values(values)),
            _ => Err(ConfigError::invalid(
                "policy_values",
                "it must be a JSON object, e.g. {\"tenant_id\":\"123\"}",
            )),
        }
    }

    /// The scopes requested; empty means the Application's own.
    pub fn scopes(&self) -> &[Scope] {
        &self.inner.scopes
    }

    /// The policy values as the JSON text sent to the Token API.
    pub fn policy_values(&self) -> Option<&str> {
        self.inner.policy_values.as_deref()
    }

    fn edit(self, change: impl FnOnce(&mut Content)) -> Self {
        let mut content = Arc::unwrap_or_clone(self.inner);
        change(&mut content);
        let mut hasher = std::hash::DefaultHasher::new();
        (&content.scopes, &content.policy_values).hash(&mut hasher);
        content.fingerprint = hasher.finish();
        Self {
            inner: Arc::new(content),
        }
    }
}

impl Default for TokenParams {
    fn default() -> Self {
        let empty = Self {
            inner: Arc::default(),
        };
        empty.edit(|_| {})
    }
}

/// Inlined, as is `hash`: a tenant's request compares parameters twice (with
/// the layer's defaults and with the key in the map of sets).
impl PartialEq for TokenParams {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.inner == other.inner
    }
}

impl Eq for TokenParams {}

/// Writes the fingerprint only; the map of token sets hashes it with its own keys.
impl Hash for TokenParams {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.inner.fingerprint);
    }
}

impl fmt::Debug for TokenParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenParams")
            .field("scopes", &Scope::join(self.scopes()))
            .field("policy_values", &self.policy_values())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_content_is_equal_and_hashes_alike_however_it_was_built() {
        use std::hash::BuildHasher as _;
        let hasher = std::hash::RandomState::new();
        let a = TokenParams::tenant("acme").with_scopes([Scope::MetricQuery, Scope::Admin]);
        let b = TokenParams::new()
            .with_scopes([Scope::Admin, Scope::MetricQuery, Scope::Admin])
            .with_policy_values_json(r#"{"tenant_id":"acme"}"#)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&b));
        assert_ne!(a, TokenParams::tenant("acme"));
        assert_ne!(TokenParams::tenant("acme"), TokenParams::tenant("globex"));
        assert_eq!(TokenParams::new(), TokenParams::default().with_scopes([]));
    }
}
