//! Reading response bodies that come from outside: capped in size, parsed
//! leniently, and redacted before any of their text reaches an error.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::BoxError;

use crate::error::{Forbidden, ForbiddenReason};
use crate::Scope;

/// The most of a Token API answer or an error body this crate reads.
pub(crate) const BODY_LIMIT: usize = 64 * 1024;

/// The longest the layer reads a 401 or 403 body for its message: a stalled
/// body must not hang the request (an outer `tower::timeout` bounds only the head).
pub(crate) const ERROR_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The most of a server's message an error keeps.
const EXCERPT_CHARS: usize = 300;

/// A body read up to [`BODY_LIMIT`].
#[derive(Debug)]
pub(crate) struct Capped {
    pub(crate) bytes: Bytes,
    /// The body went on past the limit; the rest was not read.
    pub(crate) truncated: bool,
}

/// Reads at most [`BODY_LIMIT`] bytes of `body`, frame by frame, then stops.
pub(crate) async fn read_capped<B>(body: B) -> Result<Capped, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        if let Ok(mut data) = frame.map_err(Into::into)?.into_data() {
            let room = BODY_LIMIT - buf.len();
            truncated = data.remaining() > room;
            buf.put((&mut data).take(room));
            if truncated {
                break;
            }
        }
    }
    Ok(Capped {
        bytes: buf.freeze(),
        truncated,
    })
}

/// The parts of an error body this crate understands, whatever its shape.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    /// RFC 6749 `error`.
    pub(crate) code: Option<String>,
    /// GraphQL `errors[].message` joined, RFC 6749 `error_description`, a
    /// `message` field, or the plain text; redacted and short.
    pub(crate) message: Option<String>,
}

#[derive(Deserialize)]
struct JsonError {
    error: Option<serde_json::Value>,
    error_description: Option<String>,
    message: Option<String>,
    errors: Option<Vec<GraphQlError>>,
}

#[derive(Deserialize)]
struct GraphQlError {
    message: Option<String>,
}

/// Parses GraphQL-style `{"errors":[{"message":…}]}`, RFC 6749
/// `{"error":…,"error_description":…}`, `{"message":…}`, or plain text. Never
/// fails: anything else becomes an excerpt, `known` secrets removed ([`excerpt`]).
pub(crate) fn parse_error_body(bytes: &[u8], known: &[&str]) -> ErrorBody {
    let excerpt = |text: &str| Some(excerpt(text, known)).filter(|text| !text.is_empty());
    let Ok(json) = serde_json::from_slice::<JsonError>(bytes) else {
        let text = String::from_utf8_lossy(bytes);
        // JSON cut short by the size cap no longer parses: read it as text, but
        // without its escapes, so `\"admin\"` still reads as a quoted word.
        let text = match text.trim_start().starts_with(['{', '[']) {
            true => text.replace("\\\"", "\"").replace("\\\\", "\\"),
            false => text.into_owned(),
        };
        return ErrorBody {
            code: None,
            message: excerpt(&text),
        };
    };
    let field = |value: Option<&serde_json::Value>| value?.as_str().and_then(excerpt);
    if let Some(serde_json::Value::Object(nested)) = &json.error {
        // Some servers nest: {"error":{"code":…,"message":…}}
        return ErrorBody {
            code: field(nested.get("code")),
            message: field(nested.get("message")),
        };
    }
    let graphql = json.errors.unwrap_or_default().into_iter();
    let graphql: Vec<_> = graphql.filter_map(|error| error.message).collect();
    let message = Some(graphql.join("; "))
        .filter(|message| !message.is_empty())
        .or(json.error_description)
        .or(json.message);
    ErrorBody {
        code: field(json.error.as_ref()),
        message: message.as_deref().and_then(excerpt),
    }
}

/// Classifies a 403 body: the scope it names, a policy problem, or neither.
pub(crate) fn forbidden_from_body(bytes: &[u8], known: &[&str]) -> Forbidden {
    let message = parse_error_body(bytes, known).message.unwrap_or_default();
    // Propel: `… is not allowed to query Data Pool DPO…, because it lacks the
    // "data-pool:query" scope; you must add this scope …`. IDs and names come
    // first and may hold "scope" (`APP01NOSCOPE`, a Data Pool `scope admin`), so
    // try every word starting with "scope", the last first: the phrase follows.
    let lower = message.to_ascii_lowercase();
    let named = lower
        .rmatch_indices("scope")
        .filter(|&(at, _)| !is_word_char(at.checked_sub(1).map(|before| lower.as_bytes()[before])))
        .find_map(|(at, _)| scope_named_at(&message, at));
    let reason = match named {
        Some(scope) => ForbiddenReason::MissingScope(scope),
        None if lower.contains("policy") || lower.contains("policies") => ForbiddenReason::Policy,
        None => ForbiddenReason::Other,
    };
    Forbidden::new(reason, message)
}

/// Whether `byte` continues a word: a letter, a digit or `_`.
fn is_word_char(byte: Option<u8>) -> bool {
    byte.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The scope named by the phrase around the word at `at`: the quoted word just
/// before (`lacks the "data-pool:query" scope`), or a known scope just after
/// the word "scope" itself (`lacks scope data_pool:query`, `missing scope: METRIC_QUERY`).
fn scope_named_at(message: &str, at: usize) -> Option<Scope> {
    if let Some(scope) = quoted_before(&message[..at]) {
        return Some(Scope::from(scope));
    }
    let after = &message[at + "scope".len()..];
    if is_word_char(after.bytes().next()) {
        return None; // `SCOPEADMIN`: not the word "scope"
    }
    let after = after.trim_start_matches([' ', ':', '"', '\'', '`']);
    let mut words = after.split(|c: char| !c.is_ascii_alphanumeric() && !"_-:".contains(c));
    let scope = Scope::from(words.next()?.trim_end_matches(':'));
    (!matches!(scope, Scope::Other(_))).then_some(scope)
}

/// The `"…"` (or `'…'`, `` `…` ``) quoted word `text` ends with, give or take
/// white space.
fn quoted_before(text: &str) -> Option<&str> {
    let inner = text.trim_end().strip_suffix(['"', '\'', '`'])?;
    let quote = text.trim_end().chars().last()?;
    let word = &inner[inner.rfind(quote)? + 1..];
    (!word.is_empty() && word.len() < 64).then_some(word)
}

/// A short, single-line excerpt of outside text, with the `known` secrets (the
/// Application secret, the current token) and anything token-like `[redacted]`.
pub(crate) fn excerpt(text: &str, known: &[&str]) -> String {
    let mut scrubbed = text.to_owned();
    for secret in known.iter().filter(|secret| !secret.is_empty()) {
        scrubbed = scrubbed.replace(secret, "[redacted]");
    }
    // Words are redacted before the cut, and only as many as the cut keeps:
    // past 4 bytes per character, the line holds more than it needs.
    let mut line = String::new();
    for word in scrubbed.split_whitespace() {
        if line.len() > 4 * EXCERPT_CHARS {
            break;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.extend(redact_word(word).chars().filter(|c| !c.is_control()));
    }
    match line.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", line[..cut].trim_end()),
        None => line,
    }
}

/// Replaces runs of token-like characters that look like a JWT, a bearer
/// token or a secret: 32 or more of `[A-Za-z0-9._~+/=-]` mixing letters and
/// digits. Application and Data Pool IDs (`APP01…`, 29 characters) survive.
fn redact_word(word: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "._~+/=-".contains(c);
    // Each piece is a run of token characters and the one character ending it.
    let pieces = word.split_inclusive(|c: char| !is_token_char(c));
    pieces
        .map(|piece| {
            let run = piece.trim_end_matches(|c: char| !is_token_char(c));
            let mixed = run.contains(|c: char| c.is_ascii_digit())
                && run.contains(|c: char| c.is_ascii_alphabetic());
            if run.len() >= 32 && mixed || run.starts_with("eyJ") && run.len() >= 16 {
                format!("[redacted]{}", &piece[run.len()..])
            } else {
                piece.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    /// Propel's 403 for a missing scope, around the IDs and names it quotes.
    fn propel_403(application: &str, data_pool: &str, scope: &str) -> String {
        format!("Application {application} is not allowed to query Data Pool {data_pool}, because it lacks the \"{scope}\" scope; you must add this scope to your Application and request a new access token to query the Data Pool")
    }

    #[test]
    fn propel_scope_message_names_the_scope() {
        let message = propel_403(
            "APP01ABCDEFGHJKMNPQRSTVWXYZ01",
            "DPO01ABCDEFGHJKMNPQRSTVWXYZ01",
            "data-pool:query",
        );
        let body = serde_json::json!({"errors": [{"message": message}]}).to_string();
        let forbidden = forbidden_from_body(body.as_bytes(), &[]);
        assert_eq!(forbidden.missing_scope(), Some(&Scope::DataPoolQuery));
        assert!(forbidden
            .message()
            .contains("APP01ABCDEFGHJKMNPQRSTVWXYZ01"));
        assert!(forbidden.hint().contains("data_pool:query"));
    }

    #[test]
    fn an_application_id_holding_scope_does_not_hide_the_missing_scope() {
        for (application, data_pool) in [
            ("APP01NOSCOPE", "DPO01ABCDEFGHJKMNPQRSTVWXYZ01"),
            ("APP01SCOPEADMIN", "DPO01ABCDEFGHJKMNPQRSTVWXYZ01"),
            (
                "APP01ABCDEFGHJKMNPQRSTVWXYZ01",
                "events scope \"admin\" scope",
            ),
        ] {
            let message = propel_403(application, data_pool, "data-pool:query");
            let body = serde_json::json!({"errors": [{"message": message}]}).to_string();
            let forbidden = forbidden_from_body(body.as_bytes(), &[]);
            assert_eq!(
                forbidden.missing_scope(),
                Some(&Scope::DataPoolQuery),
                "{message}"
            );
            assert!(forbidden.hint().contains("data_pool:query"), "{message}");
        }
    }

    /// An ID or a name: any text, with the words that could pass for a scope
    /// phrase (`SCOPE`, quotes, scope names) far more often than chance.
    fn any_name() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let words = vec![
            "scope",
            "SCOPE",
            "Scope: ",
            " ",
            "\"",
            "'",
            "admin",
            "metric:query",
            "DATA_POOL_QUERY",
        ];
        let piece = prop_oneof![
            "(?s).{0,6}",
            proptest::sample::select(words).prop_map(String::from),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
    }

    proptest::proptest! {
        #[test]
        fn a_propel_403_names_its_scope_whatever_the_ids_and_names_hold(
            application in any_name(),
            data_pool in any_name(),
            scope in proptest::sample::select(Scope::known().collect::<Vec<_>>()),
            graphql in proptest::bool::ANY,
        ) {
            // Propel spells scopes with a hyphen: `data-pool:query`.
            let message = propel_403(&application, &data_pool, &scope.as_str().replace('_', "-"));
            let body = if graphql {
                serde_json::json!({"errors": [{"message": message}]}).to_string()
            } else {
                message.clone()
            };
            let forbidden = forbidden_from_body(body.as_bytes(), &[]);
            proptest::prop_assert_eq!(forbidden.missing_scope(), Some(&scope), "{:?}", message);
        }
    }

    #[test]
    fn every_body_shape_is_understood() {
        let rfc =
            br#"{"error":"insufficient_scope","error_description":"missing scope METRIC_QUERY"}"#;
        assert_eq!(
            forbidden_from_body(rfc, &[]).missing_scope(),
            Some(&Scope::MetricQuery)
        );
        let plain = b"lacks the 'admin' scope";
        assert_eq!(
            forbidden_from_body(plain, &[]).missing_scope(),
            Some(&Scope::Admin)
        );
        let policy = br#"{"errors":[{"message":"no Data Pool Access Policy applies"}]}"#;
        assert!(forbidden_from_body(policy, &[]).is_policy());
        let empty = forbidden_from_body(b"", &[]);
        assert_eq!(empty.reason(), &ForbiddenReason::Other);
        assert_eq!(empty.message(), "");
        let binary = forbidden_from_body(&[0xff, 0xfe, 0x00, 0x80], &[]);
        assert_eq!(binary.reason(), &ForbiddenReason::Other);
    }

    #[test]
    fn excerpts_are_short_and_have_tokens_removed() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJlc2lnbmF0dXJl";
        let secret = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8";
        let text = format!(
            "bad token {jwt} and secret={secret} for APP01ABCDEFGHJKMNPQRSTVWXYZ01 {}",
            "x ".repeat(500)
        );
        let out = excerpt(&text, &[]);
        assert!(!out.contains(jwt) && !out.contains(secret), "{out}");
        assert!(out.contains("APP01ABCDEFGHJKMNPQRSTVWXYZ01"));
        assert!(out.chars().count() <= EXCERPT_CHARS + 1, "{}", out.len());
    }

    #[test]
    fn known_secrets_are_removed_whatever_their_shape() {
        let out = excerpt(
            "wrong secret hunter2-password for APP01",
            &["hunter2-password"],
        );
        assert_eq!(out, "wrong secret [redacted] for APP01");
        let body = br#"{"errors":[{"message":"token opaque-tok is revoked"}]}"#;
        let parsed = parse_error_body(body, &["opaque-tok"]);
        assert_eq!(
            parsed.message.as_deref(),
            Some("token [redacted] is revoked")
        );
    }

    #[tokio::test]
    async fn reading_stops_at_the_cap() {
        // 10 MiB in 1 MiB frames: only the first frame is ever polled.
        let polled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = polled.clone();
        let frames = futures_util::stream::iter((0..10).map(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![
                b'x';
                1 << 20
            ])))
        }));
        let capped = read_capped(StreamBody::new(frames)).await.unwrap();
        assert!(capped.truncated);
        assert_eq!(capped.bytes.len(), BODY_LIMIT);
        assert_eq!(polled.load(std::sync::atomic::Ordering::SeqCst), 1);

        let small = read_capped(Full::new(Bytes::from_static(b"ok")))
            .await
            .unwrap();
        assert!(!small.truncated);
        assert_eq!(&small.bytes[..], b"ok");
    }
}
