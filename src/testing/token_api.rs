//! The fake Token API: `POST /oauth2/token`, the client-credentials grant.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{
    HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Map, Value};

use super::jwt::{self, Claims};
use super::server::{self, Body, BoxError, CloseConnection, ReadBodyError};
use super::{bump, Shared, TokenFault};

/// The largest token request body the fake reads.
const MAX_BODY: usize = 64 * 1024;

/// How many bytes of padding [`TokenFault::Oversized`] sends per chunk.
const CHUNK: usize = 16 * 1024;

static PADDING: [u8; CHUNK] = [b'A'; CHUNK];

/// What a valid token request asks for.
struct Grant {
    application_id: String,
    scopes: Vec<String>,
    policy_values: Option<Map<String, Value>>,
}

/// A 400 in RFC 6749 form.
struct OAuthError {
    code: &'static str,
    description: String,
}

impl OAuthError {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            code,
            description: description.into(),
        }
    }
}

pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
) -> Result<Response<Body>, CloseConnection> {
    let counters = &shared.counters;
    bump(&counters.token_requests);
    let (fault, latency, lifetime) = {
        let mut state = shared.state();
        let fault = state
            .token_fault_queue
            .pop_front()
            .or_else(|| state.token_fault.clone());
        (fault, state.token_latency, state.token_lifetime)
    };
    if let Some(fault) = &fault {
        tracing::debug!(?fault, "FakePropel: token request gets a fault");
    }

    // Faults that do not answer at all.
    match fault {
        Some(TokenFault::Hang) => {
            bump(&counters.token_errors);
            std::future::pending::<()>().await;
        }
        Some(TokenFault::ConnectionClose) => {
            bump(&counters.token_errors);
            server::delay(latency).await;
            return Err(CloseConnection);
        }
        _ => {}
    }

    let (parts, body) = req.into_parts();
    let body = server::read_body(body, MAX_BODY).await;
    server::delay(latency).await;

    // Faults that ignore the request.
    let fault = match fault {
        Some(TokenFault::Status {
            status,
            retry_after,
            body,
        }) => {
            bump(&counters.token_errors);
            return Ok(status_fault(status, retry_after, body));
        }
        Some(TokenFault::MalformedJson) => {
            bump(&counters.token_errors);
            return Ok(server::response(
                StatusCode::OK,
                Some(server::application_json()),
                Bytes::from_static(br#"{"access_token": "eyJ"#),
            ));
        }
        Some(TokenFault::MissingAccessToken) => {
            bump(&counters.token_errors);
            return Ok(server::json(
                StatusCode::OK,
                &json!({ "expires_in": lifetime.as_secs(), "token_type": "Bearer" }),
            ));
        }
        Some(TokenFault::Oversized(len)) => {
            bump(&counters.token_errors);
            return Ok(oversized(len));
        }
        Some(TokenFault::ResetMidBody) => {
            bump(&counters.token_errors);
            return Ok(reset_mid_body());
        }
        other => other,
    };

    let outcome = match body {
        Err(ReadBodyError::TooLarge) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            OAuthError::new("invalid_request", "the request body is too large"),
        )),
        Err(ReadBodyError::Io) => {
            bump(&counters.token_errors);
            return Err(CloseConnection);
        }
        Ok(body) => {
            if parts.method != Method::POST {
                Err((
                    StatusCode::METHOD_NOT_ALLOWED,
                    OAuthError::new("invalid_request", "the Token API only accepts POST"),
                ))
            } else {
                validate(shared, &parts.headers, &body).map_err(|e| (StatusCode::BAD_REQUEST, e))
            }
        }
    };
    let grant = match outcome {
        Ok(grant) => grant,
        Err((status, error)) => {
            bump(&counters.token_errors);
            let mut response = server::json(
                status,
                &json!({ "error": error.code, "error_description": error.description }),
            );
            no_store(&mut response);
            return Ok(response);
        }
    };

    let token = issue(shared, grant, lifetime);
    let mut answer = Map::new();
    answer.insert("access_token".into(), Value::String(token));
    match fault {
        Some(TokenFault::ExpiresIn(expires_in)) => {
            answer.insert("expires_in".into(), expires_in.into());
        }
        Some(TokenFault::NoExpiresIn) => {}
        _ => {
            answer.insert("expires_in".into(), lifetime.as_secs().into());
        }
    }
    let token_type = match fault {
        Some(TokenFault::TokenType(token_type)) => token_type,
        _ => "Bearer".to_owned(),
    };
    answer.insert("token_type".into(), Value::String(token_type));
    bump(&counters.tokens_issued);
    let mut response = server::json(StatusCode::OK, &Value::Object(answer));
    no_store(&mut response);
    Ok(response)
}

/// Checks a token request: Content-Type, grant_type, client_id, secret,
/// scope, then policy_values.
fn validate(shared: &Shared, headers: &http::HeaderMap, body: &[u8]) -> Result<Grant, OAuthError> {
    let form_content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_content_type {
        return Err(OAuthError::new(
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|_| OAuthError::new("invalid_request", "the form body is malformed"))?;
    let mut form = Form::default();
    for (name, value) in fields {
        let slot = match name.as_str() {
            "grant_type" => &mut form.grant_type,
            "client_id" => &mut form.client_id,
            "client_secret" => &mut form.client_secret,
            "scope" => &mut form.scope,
            "policy_values" => &mut form.policy_values,
            _ => continue,
        };
        if slot.is_some() {
            return Err(OAuthError::new(
                "invalid_request",
                format!("{name} must not be repeated"),
            ));
        }
        *slot = Some(value);
    }

    match form.grant_type.as_deref() {
        None | Some("") => {
            return Err(OAuthError::new(
                "invalid_request",
                "grant_type is required; send grant_type=client_credentials",
            ))
        }
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                "grant_type must be client_credentials",
            ))
        }
    }

    let basic = match headers.get(AUTHORIZATION).map(server::split_authorization) {
        None => None,
        Some(Some((scheme, credential))) if scheme.eq_ignore_ascii_case("basic") => {
            Some(server::decode_basic(credential).ok_or_else(|| {
                OAuthError::new(
                    "invalid_client",
                    "the Basic Authorization header is malformed",
                )
            })?)
        }
        Some(_) => {
            return Err(OAuthError::new(
                "invalid_client",
                "the Authorization header must use the Basic scheme",
            ))
        }
    };
    let (client_id, client_secret) = match basic {
        Some(_) if form.client_id.is_some() || form.client_secret.is_some() => {
            return Err(OAuthError::new(
                "invalid_request",
                "send the client credentials either in a Basic header or in the body, not both",
            ))
        }
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (form.client_id, form.client_secret),
    };
    let client_id = match client_id {
        Some(id) if !id.is_empty() => id,
        _ => return Err(OAuthError::new("invalid_request", "client_id is required")),
    };
    let client_secret = client_secret.unwrap_or_default();

    let state = shared.state();
    let found = state
        .applications
        .get_key_value(&client_id)
        .or_else(|| form_decode(&client_id).and_then(|id| state.applications.get_key_value(&id)));
    let Some((application_id, application)) = found else {
        return Err(OAuthError::new(
            "invalid_client",
            "unknown client_id: the Application does not exist in this account",
        ));
    };
    let secret_ok = !client_secret.is_empty()
        && (application.secret == client_secret
            || form_decode(&client_secret).is_some_and(|s| s == application.secret));
    if !secret_ok {
        return Err(OAuthError::new(
            "invalid_client",
            "client_secret is invalid for this Application",
        ));
    }

    let scopes: Vec<String> = match form.scope.as_deref().map(str::split_ascii_whitespace) {
        Some(requested) => {
            let mut scopes: Vec<String> = Vec::new();
            for scope in requested {
                if !application.scopes.iter().any(|held| held == scope) {
                    return Err(OAuthError::new(
                        "invalid_scope",
                        format!("scope {scope} exceeds the Application's scopes"),
                    ));
                }
                if !scopes.iter().any(|s| s == scope) {
                    scopes.push(scope.to_owned());
                }
            }
            if scopes.is_empty() {
                application.scopes.clone()
            } else {
                scopes
            }
        }
        None => application.scopes.clone(),
    };
    let application_id = application_id.clone();
    drop(state);

    let policy_values = match form.policy_values {
        None => None,
        Some(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => Some(map),
            _ => {
                return Err(OAuthError::new(
                    "invalid_request",
                    "policy_values must be a JSON object",
                ))
            }
        },
    };

    Ok(Grant {
        application_id,
        scopes,
        policy_values,
    })
}

/// The fields of a token request's form body.
#[derive(Default)]
struct Form {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
    policy_values: Option<String>,
}

/// Form-decodes a Basic credential part, as RFC 6749 §2.3.1 asks clients to
/// encode it; `None` when that changes nothing or is not valid.
fn form_decode(raw: &str) -> Option<String> {
    if !raw.contains(['%', '+']) {
        return None;
    }
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={raw}")).ok()?;
    pairs.pop().map(|(_, value)| value)
}

/// Mints a JWT for `grant`.
fn issue(shared: &Shared, grant: Grant, lifetime: Duration) -> String {
    // Claims are in whole seconds: round `iat` up so the token lives at least
    // `lifetime` (the `expires_in` it is sent with), as a client assumes. A
    // zero lifetime stays zero: the token is expired from the start.
    let iat = jwt::unix_now() + u64::from(!lifetime.is_zero());
    let claims = Claims {
        sub: grant.application_id,
        iat,
        exp: iat.saturating_add(lifetime.as_secs()),
        scope: grant.scopes.join(" "),
        policy_values: grant.policy_values,
        jti: shared.next_jti.fetch_add(1, Ordering::SeqCst).to_string(),
    };
    jwt::sign(&shared.signing_key, &claims)
}

fn no_store(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The answer of [`TokenFault::Status`].
fn status_fault(status: u16, retry_after: Option<u64>, body: Option<String>) -> Response<Body> {
    let status = server::status_or_500(status);
    let mut response = match body {
        Some(body) => {
            let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
                server::application_json()
            } else {
                HeaderValue::from_static("text/plain; charset=utf-8")
            };
            server::response(status, Some(content_type), body)
        }
        None => {
            let code = match status.as_u16() {
                429 | 503 => "temporarily_unavailable",
                400..=499 => "invalid_request",
                _ => "server_error",
            };
            server::json(
                status,
                &json!({
                    "error": code,
                    "error_description": format!("FakePropel was told to answer {status}"),
                }),
            )
        }
    };
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The answer of [`TokenFault::Oversized`]: `len` bytes, streamed in chunks
/// with no `Content-Length`, starting like a token response.
fn oversized(len: usize) -> Response<Body> {
    const PREFIX: &[u8] = br#"{"access_token":""#;
    let prefix_len = PREFIX.len().min(len);
    let first = Bytes::from_static(&PREFIX[..prefix_len]);
    let padding = len - prefix_len;
    let chunks = stream::iter(std::iter::once(first).filter(|b| !b.is_empty()).chain(
        (0..padding.div_ceil(CHUNK)).map(move |i| {
            let n = (padding - i * CHUNK).min(CHUNK);
            Bytes::from_static(&PADDING[..n])
        }),
    ));
    let body = StreamBody::new(futures_util::StreamExt::map(chunks, |chunk| {
        Ok::<_, BoxError>(Frame::data(chunk))
    }));
    let mut response = Response::new(body.boxed_unsync());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, server::application_json());
    response
}

/// The answer of [`TokenFault::ResetMidBody`]: a `Content-Length` of 4096,
/// the first bytes of a token response, then the connection closes.
fn reset_mid_body() -> Response<Body> {
    let start = stream::once(async {
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(
            br#"{"access_token":"eyJhbGciOiJIUzI1NiIs"#,
        )))
    });
    // Give hyper time to flush the head and the first bytes, then fail the
    // body: hyper then closes the connection short of the promised length.
    let reset = stream::once(async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err::<Frame<Bytes>, BoxError>(Box::new(CloseConnection))
    });
    let body = StreamBody::new(futures_util::StreamExt::chain(start, reset));
    let mut response = Response::new(body.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, server::application_json());
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("4096"));
    response
}
