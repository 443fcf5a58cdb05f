//! FakePropel over real loopback TCP.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ApiFault, FakePropel, TokenFault};

const QUERY: &str =
    r#"{"query":"query { sqlV1(input: {query: \"SELECT tenant, count() FROM t\"}) { rows } }"}"#;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn message(&self) -> String {
        self.json()["errors"][0]["message"]
            .as_str()
            .expect("a GraphQL error message")
            .to_owned()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn post(url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
    let mut req = Request::builder().method(Method::POST).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(body.into())).expect("a valid request");
    let response = client().request(req).await.expect("the fake answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn form(fields: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(fields).expect("a form")
}

fn basic(id: &str, secret: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!("Basic {encoded}")
}

async fn token_request(fake: &FakePropel, fields: &[(&str, &str)]) -> Answer {
    post(&fake.token_url(), &[FORM], form(fields)).await
}

/// A token for the default Application, with these extra form fields.
async fn token_with(fake: &FakePropel, extra: &[(&str, &str)]) -> String {
    let mut fields = vec![
        ("grant_type", "client_credentials"),
        ("client_id", fake.application_id()),
        ("client_secret", fake.application_secret()),
    ];
    fields.extend_from_slice(extra);
    let answer = token_request(fake, &fields).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

async fn query_with(fake: &FakePropel, authorization: Option<&str>, body: &str) -> Answer {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(authorization) = authorization {
        headers.push(("authorization", authorization));
    }
    post(&fake.api_url(), &headers, body.to_owned()).await
}

async fn query_bearer(fake: &FakePropel, token: &str) -> Answer {
    query_with(fake, Some(&format!("Bearer {token}")), QUERY).await
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT payload");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&payload).expect("JSON claims")
}

#[tokio::test]
async fn urls_point_at_the_loopback_server() {
    let fake = FakePropel::start().await;
    assert!(fake.origin().starts_with("http://127.0.0.1:"));
    assert_eq!(fake.api_url(), format!("{}/graphql", fake.origin()));
    assert_eq!(fake.token_url(), format!("{}/oauth2/token", fake.origin()));
    assert_eq!(fake.application_id(), "APP01FAKEDEFAULT");
    let debug = format!("{fake:?}");
    assert!(debug.contains("APP01FAKEDEFAULT"));
    assert!(!debug.contains(fake.application_secret()));

    let answer = post(&format!("{}/nope", fake.origin()), &[], "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_token_from_the_form_body_works_on_graphql() {
    let fake = FakePropel::start().await;
    let answer = token_request(
        &fake,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", fake.application_id()),
            ("client_secret", fake.application_secret()),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers[CONTENT_TYPE], "application/json");
    let json = answer.json();
    assert_eq!(json["expires_in"], 3600);
    assert_eq!(json["token_type"], "Bearer");
    let token = json["access_token"].as_str().unwrap();
    let claims = jwt_claims(token);
    assert_eq!(claims["sub"], "APP01FAKEDEFAULT");
    assert_eq!(claims["scope"], "admin data_pool:query metric:query");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );

    let answer = query_bearer(&fake, token).await;
    assert_eq!(answer.status, StatusCode::OK);
    let json = answer.json();
    assert_eq!(json["extensions"]["auth"], "bearer");
    assert_eq!(json["extensions"]["applicationId"], "APP01FAKEDEFAULT");
    assert_eq!(json["data"]["sqlV1"]["rows"][0][0], Value::Null);
    assert_eq!(json["data"]["sqlV1"]["rows"][0][1], "42");

    let stats = fake.stats();
    assert_eq!(stats.token_requests, 1);
    assert_eq!(stats.tokens_issued, 1);
    assert_eq!(stats.api_requests, 1);
    assert_eq!(stats.api_ok, 1);
    assert_eq!(stats.api_bearer, 1);
    assert_eq!(stats.api_basic, 0);
}

#[tokio::test]
async fn a_token_from_a_basic_header_works_on_graphql() {
    let fake = FakePropel::start().await;
    let authorization = basic(fake.application_id(), fake.application_secret());
    let answer = post(
        &fake.token_url(),
        &[FORM, ("authorization", &authorization)],
        "grant_type=client_credentials&scope=data_pool%3Aquery",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let token = answer.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jwt_claims(&token)["scope"], "data_pool:query");

    let answer = query_bearer(&fake, &token).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["extensions"]["scopes"][0], "data_pool:query");
}

#[tokio::test]
async fn basic_credentials_work_on_graphql() {
    let fake = FakePropel::start().await;
    let authorization = basic(fake.application_id(), fake.application_secret());
    let answer = query_with(&fake, Some(&authorization), QUERY).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["extensions"]["auth"], "basic");
    assert_eq!(fake.stats().api_basic, 1);

    let wrong = basic(fake.application_id(), "wrong");
    let answer = query_with(&fake, Some(&wrong), QUERY).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.stats().api_invalid_credentials, 1);
}

#[tokio::test]
async fn a_select_of_a_literal_gets_that_literal_and_other_sql_the_tenant_row() {
    let fake = FakePropel::start().await;
    let authorization = basic(fake.application_id(), fake.application_secret());
    let sql_v1 = |sql: &str| {
        let graphql = format!(
            "{{ sqlV1(input: {{query: {}}}) {{ columns {{ columnName }} rows }} }}",
            Value::from(sql)
        );
        serde_json::json!({ "query": graphql }).to_string()
    };
    for (sql, column, value) in [
        ("SELECT 1", "1", "1"),
        ("select -2.5;", "-2.5", "-2.5"),
        ("SELECT 'it works'", "'it works'", "it works"),
    ] {
        let answer = query_with(&fake, Some(&authorization), &sql_v1(sql)).await;
        let table = &answer.json()["data"]["sqlV1"];
        assert_eq!(
            table["columns"],
            serde_json::json!([{ "columnName": column }]),
            "{sql}"
        );
        assert_eq!(table["rows"], serde_json::json!([[value]]), "{sql}");
    }
    // Anything else: one row, the caller's tenant (none with Basic) and a count.
    for sql in ["SELECT tenant, count() FROM t", "SELECT 1, 2", "SELECT x"] {
        let answer = query_with(&fake, Some(&authorization), &sql_v1(sql)).await;
        let table = &answer.json()["data"]["sqlV1"];
        let columns = serde_json::json!([{ "columnName": "tenant" }, { "columnName": "n" }]);
        assert_eq!(table["columns"], columns, "{sql}");
        assert_eq!(table["rows"], serde_json::json!([[null, "42"]]), "{sql}");
    }
}

/// Form fields, the expected `error` and part of the `error_description`.
type BadRequestCase<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);

#[tokio::test]
async fn bad_token_requests_get_rfc_6749_errors() {
    let fake = FakePropel::start().await;
    let id = fake.application_id().to_owned();
    let secret = fake.application_secret().to_owned();
    let cases: &[BadRequestCase<'_>] = &[
        (
            &[("client_id", &id), ("client_secret", &secret)],
            "invalid_request",
            "grant_type is required",
        ),
        (
            &[
                ("grant_type", "password"),
                ("client_id", &id),
                ("client_secret", &secret),
            ],
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        ),
        (
            &[
                ("grant_type", "client_credentials"),
                ("client_secret", &secret),
            ],
            "invalid_request",
            "client_id is required",
        ),
        (
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "APP01NOPE"),
                ("client_secret", "s3cr3t-n0t-echoed"),
            ],
            "invalid_client",
            "unknown client_id",
        ),
        (
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", "s3cr3t-n0t-echoed"),
            ],
            "invalid_client",
            "client_secret is invalid",
        ),
        (
            &[("grant_type", "client_credentials"), ("client_id", &id)],
            "invalid_client",
            "client_secret is invalid",
        ),
        (
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &secret),
                ("scope", "data_pool:query environment:admin"),
            ],
            "invalid_scope",
            "scope environment:admin exceeds the Application's scopes",
        ),
        (
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &secret),
                ("policy_values", "[1]"),
            ],
            "invalid_request",
            "policy_values must be a JSON object",
        ),
    ];
    for (fields, code, description) in cases {
        let answer = token_request(&fake, fields).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{fields:?}");
        let json = answer.json();
        assert_eq!(json["error"], *code, "{fields:?}");
        let text = json["error_description"].as_str().unwrap();
        assert!(text.contains(description), "{fields:?}: {text}");
        assert!(!text.contains("APP01NOPE") && !text.contains("n0t-echoed"));
    }
    let stats = fake.stats();
    assert_eq!(stats.token_requests, cases.len() as u64);
    assert_eq!(stats.token_errors, cases.len() as u64);
    assert_eq!(stats.tokens_issued, 0);
}

#[tokio::test]
async fn an_expired_token_gets_401_and_is_counted() {
    let fake = FakePropel::start().await;
    fake.set_token_lifetime(Duration::ZERO);
    let token = token_with(&fake, &[]).await;
    let answer = query_bearer(&fake, &token).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.headers[WWW_AUTHENTICATE], "Bearer");
    assert!(answer.message().starts_with("Unauthorized"));
    let stats = fake.stats();
    assert_eq!(stats.api_expired_token, 1);
    assert_eq!(stats.api_invalid_credentials, 0);
    assert_eq!(stats.api_ok, 0);
}

#[tokio::test]
async fn a_request_without_credentials_gets_401_and_is_counted() {
    let fake = FakePropel::start().await;
    let answer = query_with(&fake, None, QUERY).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.headers[WWW_AUTHENTICATE], "Bearer");
    assert_eq!(fake.stats().api_unauthenticated, 1);
    assert_eq!(fake.stats().api_requests, 1);
}

#[tokio::test]
async fn revoked_and_forged_tokens_get_401() {
    let fake = FakePropel::start().await;
    let first = token_with(&fake, &[]).await;
    let second = token_with(&fake, &[]).await;
    fake.revoke_token(&first);
    assert_eq!(
        query_bearer(&fake, &first).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(query_bearer(&fake, &second).await.status, StatusCode::OK);

    fake.revoke_all_tokens();
    assert_eq!(
        query_bearer(&fake, &second).await.status,
        StatusCode::UNAUTHORIZED
    );
    let third = token_with(&fake, &[]).await;
    assert_eq!(query_bearer(&fake, &third).await.status, StatusCode::OK);

    let other = FakePropel::start().await;
    let foreign = token_with(&other, &[]).await;
    assert_eq!(
        query_bearer(&fake, &foreign).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        query_with(&fake, Some("Token abc"), QUERY).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(fake.stats().api_invalid_credentials, 4);
}

#[tokio::test]
async fn a_token_without_data_pool_query_gets_propels_403() {
    let fake = FakePropel::start().await;
    let token = token_with(&fake, &[("scope", "metric:query")]).await;
    let answer = query_bearer(&fake, &token).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.message(),
        "Application APP01FAKEDEFAULT is not allowed to query Data Pool DPO01FAKE, because it \
         lacks the \"data-pool:query\" scope; you must add this scope to your Application and \
         request a new access token to query the Data Pool"
    );
    assert_eq!(fake.stats().api_forbidden, 1);

    // The same token may query a Metric, but not mutate.
    let metric = r#"{"query":"query { metric(uniqueName: \"m\") { counter { value } } }"}"#;
    let answer = query_with(&fake, Some(&format!("Bearer {token}")), metric).await;
    assert_eq!(answer.status, StatusCode::OK);
    let mutation = r#"{"query":"  mutation { createDataPool { id } }"}"#;
    let answer = query_with(&fake, Some(&format!("Bearer {token}")), mutation).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.message().contains("lacks the \"admin\" scope"));
}

#[tokio::test]
async fn an_application_without_metric_query_cannot_query_metrics() {
    let fake = FakePropel::start().await;
    fake.add_application("APP01READER", "reader-secret", &["data_pool:query"]);
    let authorization = basic("APP01READER", "reader-secret");
    let metric = r#"{"query":"query { Metric { id } }"}"#;
    let answer = query_with(&fake, Some(&authorization), metric).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.message().contains(
        "is not allowed to query Metric MET01FAKE, because it lacks the \"metric:query\" scope"
    ));
    let answer = query_with(&fake, Some(&authorization), QUERY).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn policy_values_reach_the_tenant_column() {
    let fake = FakePropel::start().await;
    fake.add_application("APP01TENANT", "tenant-secret", &["data_pool:query"]);
    fake.require_tenant_policy(true);

    let answer = token_request(
        &fake,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "APP01TENANT"),
            ("client_secret", "tenant-secret"),
            ("policy_values", r#"{"tenant_id":"acme"}"#),
        ],
    )
    .await;
    let token = answer.json()["access_token"].as_str().unwrap().to_owned();
    let answer = query_bearer(&fake, &token).await;
    assert_eq!(answer.status, StatusCode::OK);
    let json = answer.json();
    assert_eq!(json["data"]["sqlV1"]["rows"][0][0], "acme");
    assert_eq!(json["extensions"]["policyValues"]["tenant_id"], "acme");

    // Without policy_values, the policy requirement bites.
    let answer = token_request(
        &fake,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "APP01TENANT"),
            ("client_secret", "tenant-secret"),
        ],
    )
    .await;
    let token = answer.json()["access_token"].as_str().unwrap().to_owned();
    let answer = query_bearer(&fake, &token).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer
        .message()
        .contains("because no Data Pool Access Policy applies to it"));

    // Admin tokens are exempt.
    let admin = token_with(&fake, &[]).await;
    assert_eq!(query_bearer(&fake, &admin).await.status, StatusCode::OK);
}

#[tokio::test]
async fn queued_503s_come_first_then_a_token() {
    let fake = FakePropel::start().await;
    fake.fail_next_token_requests(
        2,
        TokenFault::Status {
            status: 503,
            retry_after: Some(7),
            body: None,
        },
    );
    let fields = [
        ("grant_type", "client_credentials"),
        ("client_id", fake.application_id()),
        ("client_secret", fake.application_secret()),
    ];
    for _ in 0..2 {
        let answer = token_request(&fake, &fields).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers[RETRY_AFTER], "7");
        assert_eq!(answer.json()["error"], "temporarily_unavailable");
    }
    let answer = token_request(&fake, &fields).await;
    assert_eq!(answer.status, StatusCode::OK);
    let stats = fake.stats();
    assert_eq!(stats.token_requests, 3);
    assert_eq!(stats.token_errors, 2);
    assert_eq!(stats.tokens_issued, 1);

    fake.reset_stats();
    assert_eq!(fake.stats(), super::FakeStats::default());
}

#[tokio::test]
async fn token_faults_shape_the_answer() {
    let fake = FakePropel::start().await;
    let fields = [
        ("grant_type", "client_credentials"),
        ("client_id", fake.application_id()),
        ("client_secret", fake.application_secret()),
    ];

    fake.set_token_fault(Some(TokenFault::MalformedJson));
    let answer = token_request(&fake, &fields).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], br#"{"access_token": "eyJ"#);

    fake.set_token_fault(Some(TokenFault::MissingAccessToken));
    let json = token_request(&fake, &fields).await.json();
    assert!(json.get("access_token").is_none());

    fake.set_token_fault(Some(TokenFault::TokenType("mac".into())));
    let json = token_request(&fake, &fields).await.json();
    assert_eq!(json["token_type"], "mac");
    assert!(json["access_token"].is_string());

    fake.set_token_fault(Some(TokenFault::ExpiresIn(-5)));
    let json = token_request(&fake, &fields).await.json();
    assert_eq!(json["expires_in"], -5);
    let claims = jwt_claims(json["access_token"].as_str().unwrap());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );

    fake.set_token_fault(Some(TokenFault::NoExpiresIn));
    let json = token_request(&fake, &fields).await.json();
    assert!(json.get("expires_in").is_none());
    assert!(jwt_claims(json["access_token"].as_str().unwrap())["exp"].is_u64());

    fake.set_token_fault(Some(TokenFault::Oversized(100_000)));
    let answer = token_request(&fake, &fields).await;
    assert_eq!(answer.body.len(), 100_000);
    assert!(answer.body.starts_with(br#"{"access_token":""#));
    assert!(answer.headers.get(http::header::CONTENT_LENGTH).is_none());

    fake.set_token_fault(Some(TokenFault::Status {
        status: 400,
        retry_after: None,
        body: Some("<html>nope</html>".into()),
    }));
    let answer = token_request(&fake, &fields).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(&answer.body[..], b"<html>nope</html>");

    fake.set_token_fault(None);
    assert_eq!(token_request(&fake, &fields).await.status, StatusCode::OK);
    let stats = fake.stats();
    assert_eq!(stats.token_requests, 8);
    assert_eq!(stats.tokens_issued, 4);
    assert_eq!(stats.token_errors, 4);
}

/// Sends a raw token request and reads until the server closes.
async fn raw_token_request(fake: &FakePropel) -> Vec<u8> {
    let addr = fake.origin().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", fake.application_id()),
        ("client_secret", fake.application_secret()),
    ]);
    let request = format!(
        "POST /oauth2/token HTTP/1.1\r\nhost: fake\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = [0; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server did not close the connection");
    received
}

#[tokio::test]
async fn connection_faults_break_the_connection() {
    let fake = FakePropel::start().await;

    fake.fail_next_token_requests(1, TokenFault::ConnectionClose);
    assert!(raw_token_request(&fake).await.is_empty());

    fake.fail_next_token_requests(1, TokenFault::ResetMidBody);
    let received = String::from_utf8(raw_token_request(&fake).await).unwrap();
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
    assert!(received.contains("content-length: 4096\r\n"), "{received}");
    let (_, body) = received.split_once("\r\n\r\n").unwrap();
    assert!(body.starts_with(r#"{"access_token":"eyJ"#));
    assert!(body.len() < 4096);

    fake.fail_next_token_requests(1, TokenFault::Hang);
    let hung = tokio::time::timeout(
        Duration::from_millis(200),
        token_request(&fake, &[("grant_type", "client_credentials")]),
    )
    .await;
    assert!(hung.is_err(), "a hung request got an answer");

    let stats = fake.stats();
    assert_eq!(stats.token_requests, 3);
    assert_eq!(stats.token_errors, 3);
}

// Paused time: the latencies are tokio sleeps, so the clock jumps over them
// while the client waits on the socket; nothing sleeps for real.
#[tokio::test(start_paused = true)]
async fn latency_delays_the_answers() {
    let fake = FakePropel::start().await;
    fake.set_token_latency(Duration::from_secs(30));
    fake.set_api_latency(Duration::from_secs(20));
    let start = tokio::time::Instant::now();
    let token = token_with(&fake, &[]).await;
    assert!(start.elapsed() >= Duration::from_secs(30));
    let start = tokio::time::Instant::now();
    assert_eq!(query_bearer(&fake, &token).await.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_secs(20));
}

#[tokio::test]
async fn api_faults_override_the_credentials() {
    let fake = FakePropel::start().await;
    let authorization = basic(fake.application_id(), fake.application_secret());

    fake.set_api_fault(Some(ApiFault::Unauthorized));
    let answer = query_with(&fake, Some(&authorization), QUERY).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    fake.set_api_fault(Some(ApiFault::Forbidden {
        content_type: Some("text/plain".into()),
        body: Bytes::from_static(b"no"),
    }));
    let answer = query_with(&fake, Some(&authorization), QUERY).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.headers[CONTENT_TYPE], "text/plain");
    assert_eq!(&answer.body[..], b"no");

    fake.set_api_fault(Some(ApiFault::Status {
        status: 502,
        body: Bytes::from_static(b"bad gateway"),
    }));
    let answer = query_with(&fake, Some(&authorization), QUERY).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);

    fake.set_api_fault(None);
    let answer = query_with(&fake, Some(&authorization), QUERY).await;
    assert_eq!(answer.status, StatusCode::OK);

    let stats = fake.stats();
    assert_eq!(stats.api_requests, 4);
    assert_eq!(stats.api_invalid_credentials, 1);
    assert_eq!(stats.api_forbidden, 1);
    assert_eq!(stats.api_ok, 1);
}

#[tokio::test]
async fn dropping_the_fake_refuses_new_connections() {
    let fake = FakePropel::start().await;
    let addr = fake.origin().trim_start_matches("http://").to_owned();
    // An open connection that is hung in a handler dies with the server too.
    fake.fail_next_token_requests(1, TokenFault::Hang);
    let hung = tokio::spawn({
        let req = Request::post(fake.token_url())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(
                b"grant_type=client_credentials",
            )))
            .unwrap();
        async move { client().request(req).await.map(|r| r.status()) }
    });
    while fake.stats().token_requests == 0 {
        tokio::task::yield_now().await;
    }
    drop(fake);

    // Aborting the accept task takes effect once the runtime polls it.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(&addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "the port still accepts connections");
    let hung = tokio::time::timeout(Duration::from_secs(2), hung).await;
    let result = hung.expect("the hung request ends").expect("no panic");
    assert!(result.is_err(), "the hung request got {result:?}");
}
