//! HS256 JWTs as the fake Token API issues them, and their verification.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// `{"alg":"HS256","typ":"JWT"}`.
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// The claims of a token the fake issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The Application id.
    pub(crate) sub: String,
    /// Issued at, unix seconds.
    pub(crate) iat: u64,
    /// Expiry, unix seconds.
    pub(crate) exp: u64,
    /// The granted scopes, space separated.
    pub(crate) scope: String,
    /// The `policy_values` of the token request, when there were some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) policy_values: Option<serde_json::Map<String, serde_json::Value>>,
    /// A unique counter, as a string.
    pub(crate) jti: String,
}

impl Claims {
    /// The granted scopes.
    pub(crate) fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }

    /// Whether the token is expired at `now` (unix seconds): RFC 7519 says it
    /// must not be accepted on or after `exp`.
    pub(crate) fn is_expired(&self, now: u64) -> bool {
        now >= self.exp
    }

    /// The `jti` as the number it was made from (0 when it is not one).
    pub(crate) fn jti_number(&self) -> u64 {
        self.jti.parse().unwrap_or(0)
    }
}

/// Why a token was refused: not a JWT, not HS256, a bad signature or
/// unreadable claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidToken;

/// Signs `claims` with `key`.
pub(crate) fn sign(key: &[u8], claims: &Claims) -> String {
    let claims_json = serde_json::to_vec(claims).expect("claims serialize to JSON");
    let mut token = String::with_capacity(64 + claims_json.len() * 4 / 3 + 43);
    URL_SAFE_NO_PAD.encode_string(HEADER_JSON, &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&claims_json, &mut token);
    let signature = mac(key, token.as_bytes()).finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    token
}

/// Checks the signature of `token` and returns its claims (whose expiry is
/// the caller's to check).
pub(crate) fn verify(key: &[u8], token: &str) -> Result<Claims, InvalidToken> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(InvalidToken);
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| InvalidToken)?;
    let signed_len = header.len() + 1 + payload.len();
    mac(key, &token.as_bytes()[..signed_len])
        .verify_slice(&signature)
        .map_err(|_| InvalidToken)?;

    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(InvalidToken)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(InvalidToken);
    }
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(InvalidToken)?;
    Ok(claims)
}

/// The current unix time in whole seconds.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mac(key: &[u8], data: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac
}

/// A random 64-bit number, from std's randomly keyed hasher, the clock and a
/// counter (good enough for a test server's keys; not for real secrets).
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.finish()
}

/// A random 256-bit HMAC key.
pub(crate) fn random_key() -> [u8; 32] {
    let mut key = [0; 32];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&random_u64().to_le_bytes());
    }
    key
}

/// `bytes` random bytes, as lowercase hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        out.push_str(&format!("{:016x}", random_u64()));
    }
    out.truncate(bytes * 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "APP01".into(),
            iat: 100,
            exp,
            scope: "data_pool:query metric:query".into(),
            policy_values: None,
            jti: "7".into(),
        }
    }

    #[test]
    fn a_signed_token_verifies_with_its_key_only() {
        let key = random_key();
        let token = sign(&key, &claims(200));
        assert!(token.starts_with("eyJ"));
        let back = verify(&key, &token).expect("valid");
        assert_eq!(back.sub, "APP01");
        assert_eq!(back.jti_number(), 7);
        assert_eq!(
            back.scopes().collect::<Vec<_>>(),
            ["data_pool:query", "metric:query"]
        );
        assert_eq!(verify(&random_key(), &token).unwrap_err(), InvalidToken);
    }

    #[test]
    fn a_token_is_expired_from_its_exp_on() {
        let key = random_key();
        let back = verify(&key, &sign(&key, &claims(200))).expect("valid");
        assert!(back.is_expired(200));
        assert!(back.is_expired(201));
        assert!(!back.is_expired(199));
    }

    #[test]
    fn a_tampered_token_is_invalid() {
        let key = random_key();
        let token = sign(&key, &claims(200));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD
            .encode(br#"{"sub":"APP01","iat":1,"exp":99999999999,"scope":"admin","jti":"1"}"#);
        parts[1] = &forged;
        assert_eq!(verify(&key, &parts.join(".")).unwrap_err(), InvalidToken);
        assert_eq!(verify(&key, "not-a-jwt").unwrap_err(), InvalidToken);
        assert_eq!(verify(&key, "a.b.c.d").unwrap_err(), InvalidToken);
    }
}
