//! The fake GraphQL API: `POST /graphql`, with Basic or Bearer credentials,
//! scopes enforced per operation and Data Pool Access Policies.

use http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::jwt;
use super::server::{self, Body, ReadBodyError};
use super::{bump, ApiFault, Shared};

/// The largest GraphQL request body the fake reads.
const MAX_BODY: usize = 1024 * 1024;

/// The Data Pool every query is about.
const DATA_POOL: &str = "DPO01FAKE";

/// The Metric every Metric query is about.
const METRIC: &str = "MET01FAKE";

const UNAUTHORIZED_MESSAGE: &str = "Unauthorized: the access token is missing, invalid or expired";

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Basic,
    Bearer,
}

/// An authenticated caller.
struct Caller {
    application_id: String,
    auth: Auth,
    scopes: Vec<String>,
    policy_values: Option<Map<String, Value>>,
}

impl Caller {
    fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == "admin" || s == scope)
    }

    fn is_admin(&self) -> bool {
        self.scopes.iter().any(|s| s == "admin")
    }

    fn tenant(&self) -> Option<&Value> {
        self.policy_values
            .as_ref()
            .and_then(|values| values.get("tenant_id"))
            .filter(|tenant| !tenant.is_null())
    }
}

/// Why the credentials were refused (all 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejected {
    Missing,
    Expired,
    Invalid,
}

/// What a query does, and so which scope it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Mutation,
    MetricQuery,
    DataPoolQuery,
}

impl Operation {
    fn of(query: &str) -> Self {
        if query.trim_start().starts_with("mutation") {
            Operation::Mutation
        } else if query.to_ascii_lowercase().contains("metric") {
            Operation::MetricQuery
        } else {
            Operation::DataPoolQuery
        }
    }

    /// The scope it needs, as in token requests.
    fn scope(self) -> &'static str {
        match self {
            Operation::Mutation => "admin",
            Operation::MetricQuery => "metric:query",
            Operation::DataPoolQuery => "data_pool:query",
        }
    }

    /// Propel's 403 for a caller lacking [`Operation::scope`].
    fn missing_scope_message(self, application_id: &str) -> String {
        match self {
            Operation::DataPoolQuery => format!(
                "Application {application_id} is not allowed to query Data Pool {DATA_POOL}, \
                 because it lacks the \"data-pool:query\" scope; you must add this scope to your \
                 Application and request a new access token to query the Data Pool"
            ),
            Operation::MetricQuery => format!(
                "Application {application_id} is not allowed to query Metric {METRIC}, \
                 because it lacks the \"metric:query\" scope; you must add this scope to your \
                 Application and request a new access token to query the Metric"
            ),
            Operation::Mutation => format!(
                "Application {application_id} is not allowed to perform this mutation, \
                 because it lacks the \"admin\" scope; you must add this scope to your \
                 Application and request a new access token to perform this mutation"
            ),
        }
    }
}

/// Propel's 403 for a caller no Data Pool Access Policy applies to.
fn missing_policy_message(application_id: &str) -> String {
    format!(
        "Application {application_id} is not allowed to query Data Pool {DATA_POOL}, because no \
         Data Pool Access Policy applies to it; assign a Data Pool Access Policy to the \
         Application and pass policy_values when requesting the access token"
    )
}

#[derive(Deserialize)]
struct GraphqlRequest {
    query: String,
}

/// The SQL of a `sqlV1(input: {query: "…"})` field, unescaped.
fn sql_of(graphql: &str) -> Option<String> {
    let field = &graphql[graphql.find("sqlV1")?..];
    let argument = &field[field.find("query")? + "query".len()..];
    let string = argument
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    let mut sql = String::new();
    let mut chars = string.chars();
    loop {
        match chars.next()? {
            '"' => return Some(sql),
            '\\' => sql.push(match chars.next()? {
                'n' => '\n',
                't' => '\t',
                other => other,
            }),
            other => sql.push(other),
        }
    }
}

/// `SELECT <literal>`, a number or a single-quoted string: the column name
/// and the value it answers with, as Propel would (values as strings).
fn select_literal(sql: &str) -> Option<(String, String)> {
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let (keyword, literal) = sql.split_once(char::is_whitespace)?;
    if !keyword.eq_ignore_ascii_case("select") {
        return None;
    }
    let literal = literal.trim();
    if let Some(text) = literal
        .strip_prefix('\'')
        .and_then(|rest| rest.strip_suffix('\''))
    {
        return (!text.contains('\'')).then(|| (literal.to_owned(), text.to_owned()));
    }
    let digits = literal.strip_prefix('-').unwrap_or(literal);
    let is_number = digits.bytes().any(|b| b.is_ascii_digit())
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.matches('.').count() <= 1;
    is_number.then(|| (literal.to_owned(), literal.to_owned()))
}

pub(crate) async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let counters = &shared.counters;
    bump(&counters.api_requests);
    let (fault, latency, require_tenant_policy) = {
        let state = shared.state();
        (
            state.api_fault.clone(),
            state.api_latency,
            state.require_tenant_policy,
        )
    };
    let (parts, body) = req.into_parts();
    let body = server::read_body(body, MAX_BODY).await;
    server::delay(latency).await;

    match fault {
        None => {}
        Some(ApiFault::Unauthorized) => {
            bump(&counters.api_invalid_credentials);
            return unauthorized();
        }
        Some(ApiFault::Forbidden { content_type, body }) => {
            bump(&counters.api_forbidden);
            let content_type = content_type.and_then(|ct| HeaderValue::try_from(ct).ok());
            return server::response(StatusCode::FORBIDDEN, content_type, body);
        }
        Some(ApiFault::Status { status, body }) => {
            return server::response(server::status_or_500(status), None, body);
        }
        Some(ApiFault::EchoCredentials { status }) => {
            return errors(server::status_or_500(status), &echo(&parts.headers));
        }
    }

    if parts.method != Method::POST {
        return errors(
            StatusCode::METHOD_NOT_ALLOWED,
            "the GraphQL API only accepts POST",
        );
    }
    let body = match body {
        Ok(body) => body,
        Err(ReadBodyError::TooLarge) => {
            return errors(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large",
            )
        }
        Err(ReadBodyError::Io) => {
            return errors(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        }
    };

    let caller = match authenticate(shared, &parts.headers) {
        Ok(caller) => caller,
        Err(rejected) => {
            bump(match rejected {
                Rejected::Missing => &counters.api_unauthenticated,
                Rejected::Expired => &counters.api_expired_token,
                Rejected::Invalid => &counters.api_invalid_credentials,
            });
            return unauthorized();
        }
    };
    bump(match caller.auth {
        Auth::Basic => &counters.api_basic,
        Auth::Bearer => &counters.api_bearer,
    });

    let Ok(request) = serde_json::from_slice::<GraphqlRequest>(&body) else {
        return errors(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object with a \"query\" string",
        );
    };
    let operation = Operation::of(&request.query);
    if !caller.has_scope(operation.scope()) {
        bump(&counters.api_forbidden);
        return errors(
            StatusCode::FORBIDDEN,
            &operation.missing_scope_message(&caller.application_id),
        );
    }
    if require_tenant_policy
        && caller.auth == Auth::Bearer
        && !caller.is_admin()
        && caller.tenant().is_none()
    {
        bump(&counters.api_forbidden);
        return errors(
            StatusCode::FORBIDDEN,
            &missing_policy_message(&caller.application_id),
        );
    }

    bump(&counters.api_ok);
    // `SELECT 1` gets its `1`; any other query the caller's tenant (from the
    // token's policy values) and a fixed count.
    let (columns, rows) = match sql_of(&request.query).as_deref().and_then(select_literal) {
        Some((column, value)) => (json!([{ "columnName": column }]), json!([[value]])),
        None => {
            let tenant = caller.tenant().cloned().unwrap_or(Value::Null);
            (
                json!([{ "columnName": "tenant" }, { "columnName": "n" }]),
                json!([[tenant, "42"]]),
            )
        }
    };
    server::json(
        StatusCode::OK,
        &json!({
            "data": {
                "sqlV1": { "columns": columns, "rows": rows }
            },
            "extensions": {
                "applicationId": caller.application_id,
                "auth": match caller.auth { Auth::Basic => "basic", Auth::Bearer => "bearer" },
                "policyValues": caller.policy_values,
                "scopes": caller.scopes,
            }
        }),
    )
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Caller, Rejected> {
    let value = headers.get(AUTHORIZATION).ok_or(Rejected::Missing)?;
    let (scheme, credential) = server::split_authorization(value).ok_or(Rejected::Invalid)?;
    if scheme.eq_ignore_ascii_case("basic") {
        let (id, secret) = server::decode_basic(credential).ok_or(Rejected::Invalid)?;
        let state = shared.state();
        let application = state.authenticate(&id, &secret).ok_or(Rejected::Invalid)?;
        Ok(Caller {
            scopes: application.scopes.clone(),
            application_id: id,
            auth: Auth::Basic,
            policy_values: None,
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        let claims = jwt::verify(&shared.signing_key, credential).map_err(|_| Rejected::Invalid)?;
        {
            let state = shared.state();
            let revoked = state.revoked_tokens.contains(credential)
                || claims.jti_number() < state.revoked_before_jti;
            if revoked || !state.applications.contains_key(&claims.sub) {
                return Err(Rejected::Invalid);
            }
        }
        if claims.is_expired(jwt::unix_now()) {
            return Err(Rejected::Expired);
        }
        Ok(Caller {
            scopes: claims.scopes().map(str::to_owned).collect(),
            application_id: claims.sub,
            auth: Auth::Bearer,
            policy_values: claims.policy_values,
        })
    } else {
        Err(Rejected::Invalid)
    }
}

/// A message quoting every credential in `headers`.
fn echo(headers: &HeaderMap) -> String {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return "no credentials".to_owned();
    };
    let mut message = format!(
        "rejected Authorization: {}",
        String::from_utf8_lossy(value.as_bytes())
    );
    if let Some((scheme, credential)) = server::split_authorization(value) {
        message += &format!("; {scheme} credential {credential}");
        if let Some((id, secret)) = server::decode_basic(credential) {
            message += &format!("; Application {id} with secret {secret}");
        }
    }
    message
}

/// A GraphQL-style error body, `{"errors":[{"message":…}]}`.
fn errors(status: StatusCode, message: &str) -> Response<Body> {
    server::json(status, &json!({ "errors": [{ "message": message }] }))
}

/// The 401, with `WWW-Authenticate: Bearer`.
fn unauthorized() -> Response<Body> {
    let mut response = errors(StatusCode::UNAUTHORIZED, UNAUTHORIZED_MESSAGE);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
