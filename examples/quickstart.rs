//! The first thing to run: `cargo run --example quickstart`.
//!
//! With no `PROPEL_CLIENT_ID` / `PROPEL_CLIENT_SECRET` in the environment it
//! starts `FakePropel`, a Propel-compatible server on loopback (no account
//! needed), and shows, with `reqwest::Client` as the HTTP client:
//!
//! 1. Basic credentials on a few `sqlV1` queries;
//! 2. the typed 403 an Application without the `data_pool:query` scope gets;
//! 3. client-credentials tokens: 1,000 concurrent queries share one token
//!    request, a revoked token costs one 401 and one retry, and a short-lived
//!    token is replaced in the background while queries keep flowing;
//! 4. a summary: requests, outcomes, token requests, waits, latency.
//!
//! With both variables set it runs steps 1 and 3 (without the fake's knobs)
//! against real Propel with `SELECT 1`; `PROPEL_API_URL` and
//! `PROPEL_OAUTH_URL` are honoured. `RUST_LOG=tower_propel_auth=debug` shows
//! the crate's logs.

mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};
use tokio::task::JoinSet;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_propel_auth::{
    config, Credentials, Error, FakePropel, PropelAuthLayer, CLIENT_ID_VAR, CLIENT_SECRET_VAR,
};

/// Bounds every query. The timeout layer sits outside the auth layer, so this
/// includes any wait for a token.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent queries in step 3 against the fake.
const FAKE_BURST: usize = 1_000;
/// Against a real account: enough to show one token request, not a load test.
const REAL_BURST: usize = 20;
/// Open sockets during a burst. 1,000 HTTP/1 connections, client and server in
/// one process, would pass the default open-file limit (256 on macOS, 1,024 on
/// most Linux systems).
const MAX_CONNECTIONS: usize = 50;

/// The fake answers every query with the same canned row; these match it.
const FAKE_QUERIES: &[&str] = &[
    "SELECT tenant, count() AS n FROM events GROUP BY tenant",
    "SELECT tenant, count() AS n FROM events WHERE kind = 'click' GROUP BY tenant",
    "SELECT tenant, count() AS n FROM events WHERE day = today() GROUP BY tenant",
];
/// Harmless on any account.
const REAL_QUERIES: &[&str] = &["SELECT 1", "SELECT 1", "SELECT 1"];

/// Every client stack here: reqwest requests in, reqwest responses out, errors
/// boxed by the timeout layer (downcast them to [`tower_propel_auth::Error`]).
trait Client:
    Service<reqwest::Request, Response = reqwest::Response, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> Client for S where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = BoxError, Future: Send>
        + Clone
        + Send
        + 'static
{
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    support::exit_code(quickstart().await)
}

async fn quickstart() -> Result<(), BoxError> {
    let target = Target::new().await?;
    let mut run = Run::default();

    basic_flow(&target, &mut run).await;
    match &target.fake {
        Some(fake) => missing_scope(&target, fake, &mut run).await?,
        None => println!("\n2. Missing scope: skipped (it needs FakePropel's second Application)"),
    }
    client_credentials_flow(&target, &mut run).await;
    run.print_summary(target.fake.as_ref());

    if run.surprises.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} unexpected outcome(s); see UNEXPECTED above",
            run.surprises.len()
        )
        .into())
    }
}

/// Quiet unless asked: `RUST_LOG=tower_propel_auth=debug` shows every token
/// request and refresh.
fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
}

/// Where the queries go, and a layer of each kind for it.
struct Target {
    api_url: Url,
    queries: &'static [&'static str],
    burst: usize,
    basic: PropelAuthLayer,
    client_credentials: PropelAuthLayer,
    /// `Some` when running against the fake: its knobs and counters.
    fake: Option<FakePropel>,
}

impl Target {
    async fn new() -> Result<Self, BoxError> {
        if support::real_propel_requested() {
            Self::propel()
        } else {
            Self::fake().await
        }
    }

    fn propel() -> Result<Self, BoxError> {
        let config = config::from_env()?;
        println!(
            "Mode: REAL PROPEL at {} as {} ({CLIENT_ID_VAR} is set)",
            config.api_url(),
            config.credentials().application_id()
        );
        Ok(Self {
            api_url: config.api_url().parse()?,
            queries: REAL_QUERIES,
            burst: REAL_BURST,
            basic: config.basic()?,
            client_credentials: config.client_credentials().build()?,
            fake: None,
        })
    }

    async fn fake() -> Result<Self, BoxError> {
        let fake = FakePropel::start().await;
        println!(
            "Mode: FAKE PROPEL on {} ({CLIENT_ID_VAR} / {CLIENT_SECRET_VAR} not set; set both to use your account)",
            fake.origin()
        );
        // A real Token API is a network round trip away and the fake answers at
        // once: slow it down so the burst in step 3 really overlaps a token request.
        fake.set_token_latency(Duration::from_millis(100));
        let credentials = Credentials::new(fake.application_id(), fake.application_secret())?;
        // The fake speaks plain http on 127.0.0.1: point the layers at it
        // (credentials go over plain http to loopback only).
        let basic = PropelAuthLayer::basic(credentials.clone()).with_api_url(&fake.api_url())?;
        let client_credentials = PropelAuthLayer::client_credentials(credentials)
            .token_url(fake.token_url())
            .api_url(fake.api_url())
            .build()?;
        Ok(Self {
            api_url: fake.api_url().parse()?,
            queries: FAKE_QUERIES,
            burst: FAKE_BURST,
            basic,
            client_credentials,
            fake: Some(fake),
        })
    }

    fn request(&self, sql: &str) -> reqwest::Request {
        support::sql_request(&self.api_url, sql)
    }
}

/// Step 1: the server-side flow, the Application ID and secret on every request.
async fn basic_flow(target: &Target, run: &mut Run) {
    println!("\n1. Basic credentials: the Application ID and secret on every request");
    if target.fake.is_some() {
        println!("   (FakePropel answers every query with the same canned row)");
    }
    let client = ServiceBuilder::new()
        .timeout(QUERY_TIMEOUT)
        .layer(target.basic.clone())
        .service(reqwest::Client::new());
    for sql in target.queries {
        let sent = send(client.clone(), target.request(sql)).await;
        println!("   {sql}");
        println!(
            "     → {}, {}: {}",
            sent.kind(),
            ms(sent.latency),
            sent.describe()
        );
        run.expect(
            sent.status() == Some(StatusCode::OK),
            "a 200 with Basic credentials",
        );
        run.record(&sent);
    }
    run.layers.push(target.basic.clone());
}

/// Step 2: a 403 comes back as a typed error naming the scope to add.
async fn missing_scope(target: &Target, fake: &FakePropel, run: &mut Run) -> Result<(), BoxError> {
    println!("\n2. An Application without the data_pool:query scope queries a Data Pool");
    fake.add_application("APP01NOQUERY", "secret-of-app01noquery", &["metric:query"]);
    let layer = PropelAuthLayer::basic(Credentials::new("APP01NOQUERY", "secret-of-app01noquery")?)
        .with_api_url(&fake.api_url())?;
    let client = ServiceBuilder::new()
        .timeout(QUERY_TIMEOUT)
        .layer(layer.clone())
        .service(reqwest::Client::new());
    let sent = send(client, target.request(target.queries[0])).await;
    run.record(&sent);
    run.layers.push(layer);

    // The timeout layer boxes errors; the crate's error is one downcast away.
    let error = sent
        .result
        .as_ref()
        .err()
        .and_then(|err| err.downcast_ref::<Error>());
    let Some(Error::Forbidden(forbidden)) = error else {
        println!("   → {}: {}", sent.kind(), sent.describe());
        run.expect(
            false,
            "Error::Forbidden for a query without the data_pool:query scope",
        );
        return Ok(());
    };
    let scope = forbidden.missing_scope().map(ToString::to_string);
    println!("   → Error::Forbidden, {}", ms(sent.latency));
    println!(
        "     missing_scope(): {}",
        scope.as_deref().unwrap_or("(none named)")
    );
    println!("     message():       {}", forbidden.message());
    println!("     hint():          {}", forbidden.hint());
    println!(
        "     is_transient():  {} (retrying will not help)",
        error.is_some_and(Error::is_transient)
    );
    run.expect(
        scope.as_deref() == Some("data_pool:query"),
        "missing_scope() = data_pool:query",
    );
    Ok(())
}

/// Step 3: the client-side flow, one cached token shared by every request.
async fn client_credentials_flow(target: &Target, run: &mut Run) {
    println!("\n3. Client credentials: short-lived tokens, cached and shared");
    let layer = target.client_credentials.clone();
    let client = ServiceBuilder::new()
        .timeout(QUERY_TIMEOUT)
        .layer(layer.clone())
        // Bound the sockets (see MAX_CONNECTIONS). The buffer lets every request
        // through the auth layer at once and queues it below, so the whole burst
        // meets the empty token cache; a bare concurrency limit would hold most
        // requests back in `poll_ready`, before the auth layer sees them.
        .buffer(target.burst)
        .concurrency_limit(MAX_CONNECTIONS)
        .service(reqwest::Client::new());
    run.layers.push(layer.clone());

    burst(target, &client, &layer, run).await;
    match &target.fake {
        Some(fake) => {
            revoked_token(target, &client, &layer, fake, run).await;
            rotation(target, &client, &layer, run).await;
        }
        None => println!("   401 retry and token rotation: skipped (they need FakePropel's knobs)"),
    }
}

/// Many concurrent queries on an empty cache make one token request.
async fn burst(target: &Target, client: &impl Client, layer: &PropelAuthLayer, run: &mut Run) {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..target.burst {
        tasks.spawn(send(client.clone(), target.request(target.queries[0])));
    }
    let sent = tasks.join_all().await;
    let elapsed = started.elapsed();

    let mut outcomes = Outcomes::new();
    for one in &sent {
        *outcomes.entry(one.kind()).or_default() += 1;
        run.record(one);
    }
    let stats = layer.stats();
    println!(
        "   {} concurrent queries: {} in {} (over at most {MAX_CONNECTIONS} connections)",
        target.burst,
        outcomes_line(&outcomes),
        ms(elapsed)
    );
    let fake_count = match &target.fake {
        Some(fake) => format!(", FakePropel counted {}", fake.stats().token_requests),
        None => String::new(),
    };
    println!(
        "     token requests:  {} (stats().token_requests){fake_count}",
        stats.token_requests
    );
    println!(
        "     waited for it:   {} of {} (stats().waited_for_token)",
        stats.waited_for_token, target.burst
    );
    let all_ok = outcomes.get("200 OK") == Some(&(target.burst as u64));
    if let Some(failed) = sent.iter().find(|one| one.status() != Some(StatusCode::OK)) {
        println!("     first failure:   {}", failed.describe());
    }
    run.expect(all_ok, format!("{} × 200 OK in the burst", target.burst));
    run.expect(
        stats.token_requests == 1,
        "exactly 1 token request for the burst (single flight)",
    );
    if let Some(fake) = &target.fake {
        run.expect(
            fake.stats().token_requests == 1,
            "FakePropel saw exactly 1 token request",
        );
    }
}

/// A 401 drops the cached token; the request goes out once more with a fresh one.
async fn revoked_token(
    target: &Target,
    client: &impl Client,
    layer: &PropelAuthLayer,
    fake: &FakePropel,
    run: &mut Run,
) {
    println!("   FakePropel revokes every token it has issued; the next query carries a dead one:");
    // Tokens issued from now on live 4 s, so the one fetched here is due for a
    // refresh within seconds (the rotation below). Not 2 s: the fake's `exp` is
    // in whole seconds, so a "2 s" token may die after 1 s, before the layer
    // (which trusts `expires_in`) refreshes it.
    fake.set_token_lifetime(Duration::from_secs(4));
    fake.revoke_all_tokens();
    let (before, fake_401s_before) = (layer.stats(), fake.stats().api_invalid_credentials);
    let sent = send(client.clone(), target.request(target.queries[0])).await;
    let after = layer.stats();
    let fake_401s = fake.stats().api_invalid_credentials - fake_401s_before;
    run.record(&sent);
    println!(
        "     → {}, {}: FakePropel answered 401 × {fake_401s}; unauthorized_retries {} → {}; token requests {} → {}",
        sent.kind(),
        ms(sent.latency),
        before.unauthorized_retries,
        after.unauthorized_retries,
        before.token_requests,
        after.token_requests
    );
    run.expect(fake_401s == 1, "exactly one 401 from FakePropel");
    run.expect(
        sent.status() == Some(StatusCode::OK),
        "a 200 after the 401 retry",
    );
    run.expect(
        after.unauthorized_retries == before.unauthorized_retries + 1,
        "exactly one 401 retry",
    );
    run.expect(
        after.token_requests == before.token_requests + 1,
        "one new token request after the 401",
    );
}

/// Near the end of a token's life the layer fetches the next one in the
/// background; queries keep using the current token and never wait.
async fn rotation(target: &Target, client: &impl Client, layer: &PropelAuthLayer, run: &mut Run) {
    println!("   Token rotation: the current token lives 4 s; one query every 200 ms:");
    let first = layer.stats();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let mut token_requests = first.token_requests;
    let (mut queries, mut ok, mut ticks_after_rotation) = (0, 0, None);
    // At most 4 s; stop three queries after the rotation, to show the new token in use.
    while ticks_after_rotation.is_none_or(|ticks| ticks < 3)
        && started.elapsed() < Duration::from_secs(4)
    {
        ticker.tick().await;
        let sent = send(client.clone(), target.request(target.queries[0])).await;
        queries += 1;
        ok += u64::from(sent.status() == Some(StatusCode::OK));
        run.record(&sent);
        ticks_after_rotation = ticks_after_rotation.map(|ticks| ticks + 1);
        let now = layer.stats().token_requests;
        if now != token_requests {
            println!(
                "     t = {:.1} s: token requests {token_requests} → {now}, fetched in the background; this query used the current token ({}, {})",
                started.elapsed().as_secs_f64(),
                sent.kind(),
                ms(sent.latency)
            );
            token_requests = now;
            ticks_after_rotation.get_or_insert(0);
        }
    }
    let waited = layer.stats().waited_for_token - first.waited_for_token;
    println!("     {queries} queries, {ok} × 200 OK; requests that waited for a token meanwhile: {waited}");
    run.expect(
        token_requests == first.token_requests + 1,
        "one background refresh within 4 s",
    );
    run.expect(ok == queries, "every query during the rotation succeeds");
    run.expect(
        waited == 0,
        "no request waits while the current token is valid",
    );
}

/// One query's fate.
struct Sent {
    latency: Duration,
    result: Result<Answer, BoxError>,
}

struct Answer {
    status: StatusCode,
    body: String,
}

impl Sent {
    fn status(&self) -> Option<StatusCode> {
        self.result.as_ref().ok().map(|answer| answer.status)
    }

    /// The outcome's kind, for counting: an HTTP status or a typed error.
    fn kind(&self) -> String {
        let err = match &self.result {
            Ok(answer) => return answer.status.to_string(),
            Err(err) => err,
        };
        match err.downcast_ref::<Error>() {
            Some(Error::Forbidden(_)) => "Error::Forbidden".into(),
            Some(Error::Unauthorized(_)) => "Error::Unauthorized".into(),
            Some(Error::Token(_)) => "Error::Token".into(),
            Some(Error::InsecureTransport(_)) => "Error::InsecureTransport".into(),
            Some(Error::Service(_)) => "Error::Service".into(),
            Some(_) => "another crate error".into(),
            None if err.is::<tower::timeout::error::Elapsed>() => "timed out".into(),
            None => "another error".into(),
        }
    }

    /// A short line about the answer or the error.
    fn describe(&self) -> String {
        match &self.result {
            Ok(answer) => digest(&answer.body),
            Err(err) => support::chain(err.as_ref()),
        }
    }
}

/// Sends one request through `client` and reads the whole answer.
async fn send(client: impl Client, request: reqwest::Request) -> Sent {
    let started = Instant::now();
    let result = match client.oneshot(request).await {
        Ok(response) => {
            let status = response.status();
            match response.text().await {
                Ok(body) => Ok(Answer { status, body }),
                Err(err) => Err(err.into()),
            }
        }
        Err(err) => Err(err),
    };
    Sent {
        latency: started.elapsed(),
        result,
    }
}

/// The rows of a `sqlV1` answer, its first GraphQL error, or the body's start.
fn digest(body: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if let Some(rows) = json.pointer("/data/sqlV1/rows") {
        return shorten(&format!("rows {rows}"));
    }
    if let Some(message) = json.pointer("/errors/0/message").and_then(|m| m.as_str()) {
        return shorten(&format!("GraphQL error: {message}"));
    }
    shorten(body)
}

fn shorten(text: &str) -> String {
    const MAX: usize = 100;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Outcome kind → count, in a stable order.
type Outcomes = BTreeMap<String, u64>;

fn outcomes_line(outcomes: &Outcomes) -> String {
    let parts: Vec<String> = outcomes
        .iter()
        .map(|(kind, n)| format!("{n} × {kind}"))
        .collect();
    parts.join(", ")
}

/// What the whole run did, for the summary.
#[derive(Default)]
struct Run {
    outcomes: Outcomes,
    latencies: Vec<Duration>,
    layers: Vec<PropelAuthLayer>,
    /// Anything the crate did that it should not have.
    surprises: Vec<String>,
}

impl Run {
    fn record(&mut self, sent: &Sent) {
        *self.outcomes.entry(sent.kind()).or_default() += 1;
        self.latencies.push(sent.latency);
    }

    /// Says so, loudly, when the crate did not do what it promises.
    fn expect(&mut self, held: bool, promise: impl Into<String>) {
        if !held {
            let promise = promise.into();
            println!("   UNEXPECTED: expected {promise}");
            self.surprises.push(promise);
        }
    }

    /// Step 4.
    fn print_summary(&mut self, fake: Option<&FakePropel>) {
        let stats: Vec<_> = self.layers.iter().map(PropelAuthLayer::stats).collect();
        let token_requests: u64 = stats.iter().map(|s| s.token_requests).sum();
        let waited: u64 = stats.iter().map(|s| s.waited_for_token).sum();
        self.latencies.sort();
        let p50 = self
            .latencies
            .get(self.latencies.len().saturating_sub(1) / 2);
        let max = self.latencies.last();

        println!("\n4. Summary");
        println!("   requests sent:        {}", self.latencies.len());
        println!("   outcomes:             {}", outcomes_line(&self.outcomes));
        match fake {
            Some(fake) => println!(
                "   token requests:       {token_requests} by the layers (FakePropel counted {})",
                fake.stats().token_requests
            ),
            None => println!("   token requests:       {token_requests} by the layers"),
        }
        println!("   waited for a token:   {waited} requests (no valid token was cached when they arrived)");
        println!(
            "   latency:              p50 {}, max {}",
            p50.copied().map_or("-".into(), ms),
            max.copied().map_or("-".into(), ms)
        );
        if self.surprises.is_empty() {
            println!("   everything behaved as promised");
        }
    }
}
