//! Sealing of stored tokens and naming of their keys, under two keys from
//! HKDF-SHA256 over the Application secret (`info`: a label with the format
//! version, and the Application ID).
//!
//! - A key name is the Application ID and an HMAC-SHA256 of the canonical
//!   token parameters and token URL, cut to 128 bits: unlike a plain hash of
//!   `{"tenant_id":"123"}`, a guessed tenant ID cannot be checked against it.
//! - A value is `version || nonce || XChaCha20-Poly1305(entry)`, with
//!   `version || key name` as associated data, so a value moved or changed
//!   does not open. The 192-bit nonce is random: no process needs to count.
//! - The entry is expiry, lifetime and writer's refresh point as big-endian
//!   milliseconds (times since the Unix epoch), then the token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::TokenParams;

/// The format of keys and values; a value of another version does not open.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Expiry, lifetime and refresh point, 8 bytes each, before the token.
const HEADER_LEN: usize = 24;
/// HKDF salt: fixed, public, names the scheme.
const SALT: &[u8] = b"tower-propel-auth/shared-cache";
/// The key names' prefix, before the hash tag.
const PREFIX: &str = "propel:";

/// The keys of one Application: they seal its tokens and name its entries.
pub(crate) struct Keys {
    cipher: XChaCha20Poly1305,
    names: Hmac<Sha256>,
    application_id: String,
}

impl Keys {
    pub(crate) fn derive(application_id: &str, secret: &SecretString) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(SALT), secret.expose_secret().as_bytes());
        let expand = |label: &str| {
            let mut key = [0u8; 32];
            let info = [label.as_bytes(), b"\0", application_id.as_bytes()].concat();
            hkdf.expand(&info, &mut key)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            key
        };
        let mut seal_key = expand("v1 seal");
        let mut name_key = expand("v1 key name");
        let keys = Self {
            cipher: XChaCha20Poly1305::new_from_slice(&seal_key).expect("a 32-byte key"),
            names: <Hmac<Sha256> as KeyInit>::new_from_slice(&name_key)
                .expect("HMAC takes keys of any length"),
            application_id: application_id.to_owned(),
        };
        seal_key.fill(0);
        name_key.fill(0);
        keys
    }

    /// The key names of the entry for tokens minted at `token_url` for
    /// `params`: `propel:{APPID:HASH}:token` and `…:lock`, in one hash slot.
    pub(crate) fn names(&self, token_url: &str, params: &TokenParams) -> EntryNames {
        // JSON of strings: unambiguous, whatever the strings hold.
        let canonical = serde_json::json!([
            "v1",
            token_url,
            crate::Scope::join(params.scopes()),
            params.policy_values(),
        ])
        .to_string();
        let mut mac = self.names.clone();
        mac.update(canonical.as_bytes());
        let digest = mac.finalize().into_bytes();
        let tag: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let base = format!("{PREFIX}{{{}:{tag}}}", self.application_id);
        EntryNames {
            token: format!("{base}:token"),
            lock: format!("{base}:lock"),
        }
    }

    /// Seals `entry` for the key `name`.
    pub(crate) fn seal(&self, name: &str, entry: &Entry) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError)?;
        let token = entry.token.expose_secret().as_bytes();
        let mut plain = Vec::with_capacity(HEADER_LEN + token.len());
        plain.extend_from_slice(&unix_millis(entry.expires_at).to_be_bytes());
        plain.extend_from_slice(&(entry.lifetime.as_millis() as u64).to_be_bytes());
        plain.extend_from_slice(&unix_millis(entry.refresh_at).to_be_bytes());
        plain.extend_from_slice(token);
        let aad = &associated_data(name);
        let sealed = self
            .cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: &plain, aad });
        plain.fill(0);
        let sealed = sealed.map_err(|_| SealError)?;
        Ok([&[VERSION][..], &nonce, &sealed].concat())
    }

    /// Opens a value read from the key `name`; fails unless these keys sealed it for `name`.
    pub(crate) fn open(&self, name: &str, value: &[u8]) -> Result<Entry, SealError> {
        if value.len() < 1 + NONCE_LEN + TAG_LEN + HEADER_LEN || value[0] != VERSION {
            return Err(SealError);
        }
        let (nonce, sealed) = value[1..].split_first_chunk().ok_or(SealError)?;
        let aad = &associated_data(name);
        let mut plain = self
            .cipher
            .decrypt(&XNonce::from(*nonce), Payload { msg: sealed, aad })
            .map_err(|_| SealError)?;
        let entry = Entry::decode(&plain);
        plain.fill(0);
        entry
    }
}

fn associated_data(name: &str) -> Vec<u8> {
    [&[VERSION][..], name.as_bytes()].concat()
}

/// The two keys of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryNames {
    pub(crate) token: String,
    pub(crate) lock: String,
}

/// What a sealed value holds; `Debug` shows no token (a [`SecretString`]).
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) token: SecretString,
    pub(crate) expires_at: SystemTime,
    pub(crate) lifetime: Duration,
    /// The writer's refresh point: past it, no hit; the first to look fetches the next.
    pub(crate) refresh_at: SystemTime,
}

impl Entry {
    fn decode(plain: &[u8]) -> Result<Entry, SealError> {
        if plain.len() <= HEADER_LEN {
            return Err(SealError);
        }
        let number = |at: usize| u64::from_be_bytes(plain[at..at + 8].try_into().expect("8 bytes"));
        let token = std::str::from_utf8(&plain[HEADER_LEN..]).map_err(|_| SealError)?;
        Ok(Entry {
            token: SecretString::from(token.to_owned()),
            expires_at: from_unix_millis(number(0)),
            lifetime: Duration::from_millis(number(8)),
            refresh_at: from_unix_millis(number(16)),
        })
    }
}

/// A value that did not open, or could not be sealed; says nothing more, on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealError;

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}

fn from_unix_millis(millis: u64) -> SystemTime {
    // At most a day ahead of any real expiry: no overflow on any platform.
    UNIX_EPOCH + Duration::from_millis(millis.min(u64::from(u32::MAX) * 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> Keys {
        Keys::derive("APP01SEAL", &SecretString::from(secret.to_owned()))
    }

    fn entry(token: &str) -> Entry {
        let now = SystemTime::now();
        Entry {
            token: SecretString::from(token.to_owned()),
            expires_at: now + Duration::from_secs(3600),
            lifetime: Duration::from_secs(3600),
            refresh_at: now + Duration::from_secs(2856),
        }
    }

    #[test]
    fn a_sealed_entry_opens_under_its_own_key_name_only() {
        let keys = keys("s3cret");
        let names = keys.names("https://auth/oauth2/token", &TokenParams::tenant("acme"));
        let value = keys.seal(&names.token, &entry("eyJ.token.sig")).unwrap();
        let opened = keys.open(&names.token, &value).unwrap();
        assert_eq!(opened.token.expose_secret(), "eyJ.token.sig");
        assert_eq!(opened.lifetime, Duration::from_secs(3600));
        let other = keys.names("https://auth/oauth2/token", &TokenParams::tenant("other"));
        assert_eq!(keys.open(&other.token, &value).unwrap_err(), SealError);
        assert!(keys.open(&names.lock, &value).is_err());
    }

    #[test]
    fn another_secret_tampering_and_garbage_do_not_open() {
        let keys_a = keys("secret-a");
        let names = keys_a.names("u", &TokenParams::new());
        let value = keys_a.seal(&names.token, &entry("tok")).unwrap();
        let keys_b = keys("secret-b");
        assert!(keys_b.open(&names.token, &value).is_err());
        for at in [0, 1, 30, value.len() - 1] {
            let mut tampered = value.clone();
            tampered[at] ^= 1;
            assert!(keys_a.open(&names.token, &tampered).is_err(), "byte {at}");
        }
        for garbage in [&b""[..], b"\x01", &value[..value.len() - 1], b"hello world"] {
            assert!(keys_a.open(&names.token, garbage).is_err());
        }
    }

    #[test]
    fn two_seals_of_one_entry_differ() {
        let keys = keys("s");
        let value_a = keys.seal("k", &entry("tok")).unwrap();
        let value_b = keys.seal("k", &entry("tok")).unwrap();
        assert_ne!(value_a, value_b);
    }

    #[test]
    fn key_names_share_a_hash_tag_and_hide_the_parameters() {
        let keys = keys("the-secret");
        let params = TokenParams::tenant("tenant-42").with_scopes([crate::Scope::DataPoolQuery]);
        let names = keys.names("https://auth/oauth2/token", &params);
        let tag = |name: &str| name[name.find('{').unwrap()..=name.find('}').unwrap()].to_owned();
        assert_eq!(tag(&names.token), tag(&names.lock));
        assert!(
            names.token.starts_with("propel:{APP01SEAL:"),
            "{}",
            names.token
        );
        for name in [&names.token, &names.lock] {
            assert!(!name.contains("tenant"), "{name}");
            assert!(!name.contains("the-secret"), "{name}");
            assert!(!name.contains("data_pool"), "{name}");
        }
        // Same parameters, same names; others (or another URL), others.
        assert_eq!(names, keys.names("https://auth/oauth2/token", &params));
        assert_ne!(names, keys.names("https://other/oauth2/token", &params));
        assert_ne!(
            names,
            keys.names(
                "https://auth/oauth2/token",
                &TokenParams::tenant("tenant-43")
            )
        );
        // Another secret names the same parameters differently.
        let other = Keys::derive("APP01SEAL", &SecretString::from("x".to_owned()));
        assert_ne!(names, other.names("https://auth/oauth2/token", &params));
    }
}
