//! A fleet: one token per tenant through Redis.
//!
//! Eight "processes" (each a layer of its own, as eight pods would have)
//! serve three tenants, against an embedded FakePropel: first on their own,
//! then sharing tokens through Redis. Alone, each makes its own token
//! request per tenant; with the shared cache, the fleet makes one.
//!
//! Run: `cargo run --example fleet --features redis`. It uses `REDIS_URL`
//! when set, else starts `valkey-server` or `redis-server` on a free port.

use std::process::{Child, Command, ExitCode, Stdio};

use futures_util::future::join_all;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, Layer, ServiceExt};
use tower_propel_auth::shared_cache::SharedCache;
use tower_propel_auth::{Credentials, FakePropel, PropelAuthLayer, TokenParams};

const PROCESSES: usize = 8;
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const QUERY: &[u8] = br#"{"query":"{ sqlV1(input: {query: \"SELECT 1\"}) { rows } }"}"#;

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    let (redis_url, _server) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => match LocalRedis::start() {
            Some(server) => (server.url.clone(), Some(server)),
            None => {
                eprintln!(
                    "This example needs Redis: set REDIS_URL, or install redis-server (Debian,"
                );
                eprintln!("Ubuntu: sudo apt-get install redis-server; macOS: brew install redis).");
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    let propel = FakePropel::start().await;
    let redis =
        redis::aio::ConnectionManager::new(redis::Client::open(redis_url.as_str())?).await?;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<&'static [u8]>>();
    for (how, shared) in [
        ("alone", None),
        ("through Redis", Some(SharedCache::redis(redis))),
    ] {
        propel.reset_stats();
        let mut fleet = Vec::new();
        for _ in 0..PROCESSES {
            let credentials =
                Credentials::new(propel.application_id(), propel.application_secret())?;
            let mut builder = PropelAuthLayer::client_credentials(credentials)
                .token_url(propel.token_url())
                .allowed_origins([propel.api_url()]);
            if let Some(shared) = &shared {
                builder = builder.shared_cache(shared.clone()); // the one new line
            }
            fleet.push(builder.build()?);
        }
        // Ten concurrent queries per process and tenant, all at once.
        let queries = fleet
            .iter()
            .flat_map(|layer| TENANTS.map(|tenant| [(layer, tenant); 10]));
        let answers = join_all(queries.flatten().map(|(layer, tenant)| {
            let mut request = Request::post(propel.api_url())
                .body(Full::new(QUERY))
                .unwrap();
            request.extensions_mut().insert(TokenParams::tenant(tenant));
            layer.layer(client.clone()).oneshot(request)
        }))
        .await;
        let ok = answers
            .iter()
            .filter(|a| matches!(a, Ok(r) if r.status() == StatusCode::OK));
        let hits: u64 = fleet.iter().map(|layer| layer.stats().store_hits).sum();
        println!(
            "{PROCESSES} processes {how}: {} of {} queries OK, {} token requests, {hits} tokens from Redis",
            ok.count(),
            answers.len(),
            propel.stats().token_requests,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A redis-server (or valkey-server) for this run, on a free port, saving
/// nothing; stopped on drop. `None` when neither is installed.
struct LocalRedis {
    child: Child,
    url: String,
}

impl LocalRedis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?;
        let port = port.port().to_string();
        let child = ["valkey-server", "redis-server"]
            .into_iter()
            .find_map(|server| {
                let args = ["--port", &port, "--bind", "127.0.0.1", "--save", ""];
                Command::new(server)
                    .args(args)
                    .stdout(Stdio::null())
                    .spawn()
                    .ok()
            })?;
        // ConnectionManager::new retries until the server listens.
        let url = format!("redis://127.0.0.1:{port}/");
        Some(Self { child, url })
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
