//! What the shared cache logs (DESIGN section 4, behaviour 9, for the store):
//! one `propel.shared_cache` span per round trip to Redis, and no log line
//! shows a token, the Application secret or a stored value, through a miss,
//! a hit, a tampered value and a Redis that went away.
//!
//! One test in a binary of its own, with a global subscriber: a thread-local
//! one misses spans whose callsites other tests' threads registered first.

#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_server;
#[path = "support/shared_cache.rs"]
mod shared;
mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tower_propel_auth::secrecy::ExposeSecret;
use tower_propel_auth::shared_cache::SharedCache;
use tower_propel_auth::{Credentials, FakePropel, TokenParams};

use redis_server::RedisServer;
use shared::query;
use support::{token_layer_with, Logs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_round_trip_has_a_span_and_no_log_shows_a_token_the_secret_or_a_value() {
    const SECRET: &str = "SENTINEL-SECRET-0f4c2a7e9b1d";
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let mut redis = RedisServer::start();
    let fake = FakePropel::start().await;
    fake.add_application("APP01SENTINEL", SECRET, &["data_pool:query"]);
    let credentials = Credentials::new("APP01SENTINEL", SECRET).unwrap();
    let process = || async {
        token_layer_with(&fake, credentials.clone())
            .shared_cache(SharedCache::redis(redis.connection().await))
            .build()
            .unwrap()
    };
    // A miss, then a hit, then a tampered value, then Redis gone.
    let (a, b) = (process().await, process().await);
    query(&fake, &a, "acme").await;
    query(&fake, &b, "acme").await;
    let key = redis.keys().await.remove(0);
    let mut value = redis.get(&key).await.unwrap();
    let stored = value.clone();
    value[40] ^= 1;
    redis.set(&key, &value).await;
    let c = process().await;
    query(&fake, &c, "acme").await;
    redis.stop();
    query(&fake, &c, "globex").await;
    assert_eq!(c.stats().store_rejected_values, 1);
    assert_eq!(c.stats().store_fallbacks, 1);

    let text = logs.text();
    for op in ["get", "lock", "put", "unlock"] {
        assert!(
            text.contains(&format!("propel.shared_cache{{op=\"{op}\"")),
            "no span for {op}:\n{text}"
        );
    }
    assert!(text.contains("did not open"), "{text}");
    let mut tokens = Vec::new();
    for layer in [&a, &c] {
        for tenant in ["acme", "globex"] {
            if let Ok(token) = layer.access_token(Some(&TokenParams::tenant(tenant))).await {
                tokens.push(token.secret().expose_secret().to_owned());
            }
        }
    }
    assert!(tokens.len() >= 2);
    for token in &tokens {
        assert!(!text.contains(token.as_str()), "a token in the logs");
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "a token's signature in the logs");
    }
    assert!(!text.contains(SECRET), "the secret in the logs");
    for bytes in [&stored, &value] {
        let debug = format!("{:?}", &bytes[1..17]);
        let hex: String = bytes[1..17].iter().map(|b| format!("{b:02x}")).collect();
        let base64 = URL_SAFE_NO_PAD.encode(&bytes[..24]);
        for shown in [&debug[1..debug.len() - 1], &hex, &base64[..20]] {
            assert!(!text.contains(shown), "a stored value in the logs");
        }
    }
}
