//! Reading a JWT's `exp` claim, without verifying the token: the expiry only
//! decides when to refresh, and a wrong guess is caught by the 401 retry.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;

#[derive(Deserialize)]
struct Claims {
    exp: Option<serde_json::Number>,
}

/// The `exp` claim (seconds since the Unix epoch), if `token` is a JWT with one.
pub(crate) fn expiry_unix_secs(token: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 16 * 1024 {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<Claims>(&json).ok()?.exp?;
    exp.as_i64()
        .or_else(|| exp.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.sig",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_exp_and_tolerates_garbage() {
        assert_eq!(
            expiry_unix_secs(&jwt(r#"{"exp":1700000000}"#)),
            Some(1_700_000_000)
        );
        assert_eq!(
            expiry_unix_secs(&jwt(r#"{"exp":1700000000.5}"#)),
            Some(1_700_000_000)
        );
        assert_eq!(expiry_unix_secs(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(expiry_unix_secs(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(expiry_unix_secs("not-a-jwt"), None);
        assert_eq!(expiry_unix_secs("a.!!!.c"), None);
        assert_eq!(expiry_unix_secs(""), None);
    }
}
