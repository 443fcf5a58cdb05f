use std::collections::BTreeMap;
use std::fmt;

use crate::error::ConfigError;
use crate::Scope;

/// What a token is minted for: the scopes to narrow it to and the policy
/// values that fill the `${{ … }}` placeholders of Data Pool Access Policies.
///
/// The layer's defaults come from its builder. A request can carry its own in
/// its extensions (`http::Request` only), and gets a token cached for exactly
/// that parameter set.
///
/// ```
/// use tower_propel_auth::{Scope, TokenParams};
///
/// let params = TokenParams::tenant("acme").with_scopes([Scope::DataPoolQuery]);
/// assert_eq!(params.policy_values(), Some(r#"{"tenant_id":"acme"}"#));
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TokenParams {
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
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = Scope>) -> Self {
        self.scopes = scopes.into_iter().collect();
        self.scopes.sort();
        self.scopes.dedup();
        self
    }

    /// Sets the policy values, a JSON object.
    pub fn with_policy_values(
        mut self,
        values: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        // Keys sorted here, whatever order the map keeps (serde_json's
        // `preserve_order` feature), so that equal values make equal keys.
        let sorted: BTreeMap<String, serde_json::Value> = values.into_iter().collect();
        self.policy_values = Some(serde_json::to_string(&sorted).expect("JSON values serialize"));
        self
    }

    /// Sets the policy values from JSON text, which must be an object.
    pub fn with_policy_values_json(self, json: &str) -> Result<Self, ConfigError> {
        match serde_json::from_str(json) {
            Ok(serde_json::Value::Object(values)) => Ok(self.with_policy_values(values)),
            _ => Err(Self::not_an_object()),
        }
    }

    pub(crate) fn not_an_object() -> ConfigError {
        ConfigError::invalid(
            "policy_values",
            "it must be a JSON object, e.g. {\"tenant_id\":\"123\"}",
        )
    }

    /// The scopes requested; empty means the Application's own.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// The policy values as the JSON text sent to the Token API.
    pub fn policy_values(&self) -> Option<&str> {
        self.policy_values.as_deref()
    }
}

impl fmt::Debug for TokenParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenParams")
            .field("scopes", &Scope::join(&self.scopes))
            .field("policy_values", &self.policy_values)
            .finish()
    }
}
