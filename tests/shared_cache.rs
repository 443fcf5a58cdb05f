//! The shared cache over a real Redis (or Valkey) and FakePropel, with the
//! processes of a fleet played by layers of their own in one process (the
//! multi-process fleet is in `shared_cache_fleet.rs`): one token per tenant
//! for all of them, a 401 rotates them once, what Redis holds is sealed and
//! namespaced, and a Redis that is down or hangs costs a bounded wait and no
//! failed request.

#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_server;
#[path = "support/shared_cache.rs"]
mod shared;
mod support;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::future::join_all;
use serde_json::Value;
use tower_propel_auth::shared_cache::{SharedCache, SharedCacheSettings};
use tower_propel_auth::{FakePropel, PropelAuthLayer};

use redis_server::RedisServer;
use shared::{query, token_of};
use support::{tenanted_application, token_layer_with};

/// One process of the fleet: a layer of its own, sharing `redis`.
async fn process(fake: &FakePropel, redis: &RedisServer) -> PropelAuthLayer {
    process_with(fake, redis, SharedCacheSettings::default()).await
}

async fn process_with(
    fake: &FakePropel,
    redis: &RedisServer,
    settings: SharedCacheSettings,
) -> PropelAuthLayer {
    token_layer_with(fake, tenanted_application(fake))
        .shared_cache(SharedCache::redis(redis.connection().await).with_settings(settings))
        .build()
        .expect("a layer")
}

async fn start() -> (FakePropel, RedisServer) {
    let redis = RedisServer::start();
    let fake = FakePropel::start().await;
    fake.require_tenant_policy(true);
    (fake, redis)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_processes_times_three_tenants_make_three_token_requests() {
    let (fake, redis) = start().await;
    let fleet = join_all((0..6).map(|_| process(&fake, &redis))).await;
    let tenants = ["acme", "globex", "initech"];
    // 20 concurrent requests per process and tenant, all at once.
    join_all(
        fleet
            .iter()
            .flat_map(|layer| {
                tenants
                    .iter()
                    .flat_map(move |tenant| (0..20).map(move |_| (layer, *tenant)))
            })
            .map(|(layer, tenant)| query(&fake, layer, tenant)),
    )
    .await;

    assert_eq!(
        fake.stats().token_requests,
        3,
        "one token per tenant for the fleet"
    );
    assert_eq!(fake.stats().api_ok, 6 * 3 * 20);
    let stats: Vec<_> = fleet.iter().map(PropelAuthLayer::stats).collect();
    let sum = |f: fn(&tower_propel_auth::Stats) -> u64| stats.iter().map(f).sum::<u64>();
    assert_eq!(sum(|s| s.token_requests), 3);
    assert_eq!(sum(|s| s.store_hits), 6 * 3 - 3);
    assert_eq!(sum(|s| s.store_fallbacks), 0);
    assert_eq!(sum(|s| s.store_rejected_values), 0);
    // Every process holds the same token per tenant.
    for tenant in tenants {
        let first = token_of(&fleet[0], tenant).await;
        for layer in &fleet[1..] {
            assert_eq!(token_of(layer, tenant).await, first);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_rotates_the_fleet_to_one_new_token() {
    let (fake, redis) = start().await;
    let (a, b) = (process(&fake, &redis).await, process(&fake, &redis).await);
    query(&fake, &a, "acme").await;
    query(&fake, &b, "acme").await;
    let first = token_of(&a, "acme").await;
    assert_eq!(token_of(&b, "acme").await, first);
    assert_eq!(fake.stats().token_requests, 1);

    fake.revoke_token(&first);
    // Each process meets the 401, drops the token and its retry layer sends
    // again: the first fetches the next token for both; the second finds it
    // in Redis.
    query(&fake, &a, "acme").await;
    query(&fake, &b, "acme").await;
    let second = token_of(&a, "acme").await;
    assert_ne!(second, first);
    assert_eq!(token_of(&b, "acme").await, second);
    assert_eq!(fake.stats().token_requests, 2);
    assert_eq!(
        (a.stats().tokens_rejected, b.stats().tokens_rejected),
        (1, 1)
    );
    assert_eq!(b.stats().store_hits, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_value_holds_neither_the_token_nor_its_claims() {
    let (fake, redis) = start().await;
    let tenant = "tenant-d41d8cd98f00";
    let layer = process(&fake, &redis).await;
    query(&fake, &layer, tenant).await;
    let token = token_of(&layer, tenant).await;

    let keys = redis.keys().await;
    assert_eq!(keys.len(), 1, "one entry, no lock left: {keys:?}");
    let value = redis.get(&keys[0]).await.expect("the entry");
    let contains = |needle: &[u8]| value.windows(needle.len()).any(|window| window == needle);

    let mut secrets: Vec<Vec<u8>> = vec![token.clone().into_bytes()];
    secrets.extend(token.split('.').map(|part| part.as_bytes().to_vec()));
    // Every claim value, as the JWT carries it.
    let payload = URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1).expect("a JWT"))
        .expect("base64url");
    secrets.push(payload.clone());
    let claims: Value = serde_json::from_slice(&payload).expect("JSON claims");
    let mut strings = Vec::new();
    collect_strings(&claims, &mut strings);
    assert!(strings.iter().any(|s| s == tenant), "{claims}");
    // Short ones (a `jti` of "1") turn up in any random bytes.
    secrets.extend(
        strings
            .into_iter()
            .filter(|s| s.len() >= 6)
            .map(String::into_bytes),
    );
    secrets.push(b"tenanted-secret".to_vec());
    for secret in &secrets {
        assert!(
            !contains(secret),
            "the stored value contains {:?}",
            String::from_utf8_lossy(secret)
        );
    }
}

/// Every string and number in a JSON value, as text.
fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_names_the_secret_or_a_policy_value() {
    let (fake, redis) = start().await;
    let layer = process(&fake, &redis).await;
    let tenants = ["acme-corp", "globex-7"];
    for tenant in tenants {
        query(&fake, &layer, tenant).await;
    }
    let keys = redis.keys().await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        assert!(key.starts_with("propel:{APP01TENANTED:"), "{key}");
        assert!(key.ends_with("}:token"), "{key}");
        for raw in [
            "tenanted-secret",
            "acme",
            "globex",
            "tenant_id",
            "data_pool",
            "query",
        ] {
            assert!(!key.contains(raw), "{key} contains {raw}");
        }
    }
    assert_ne!(keys[0], keys[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_copied_to_another_key_is_rejected_as_a_miss() {
    let (fake, redis) = start().await;
    let writer = process(&fake, &redis).await;
    query(&fake, &writer, "acme").await;
    let acme_key = redis.keys().await.remove(0);
    query(&fake, &writer, "globex").await;
    let globex_key = redis
        .keys()
        .await
        .into_iter()
        .find(|key| *key != acme_key)
        .expect("globex's key");
    // Someone with write access to Redis hands acme's token to globex.
    let acme_value = redis.get(&acme_key).await.expect("acme's value");
    redis.set(&globex_key, &acme_value).await;

    let reader = process(&fake, &redis).await;
    query(&fake, &reader, "globex").await; // checks the token names globex
    let stats = reader.stats();
    assert_eq!(
        (
            stats.store_rejected_values,
            stats.store_misses,
            stats.token_requests
        ),
        (1, 1, 1)
    );
    assert_ne!(
        token_of(&reader, "globex").await,
        token_of(&writer, "acme").await
    );
    // The fetched token replaced the moved value.
    let next = process(&fake, &redis).await;
    query(&fake, &next, "globex").await;
    assert_eq!(next.stats().store_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_value_is_rejected_as_a_miss() {
    let (fake, redis) = start().await;
    let writer = process(&fake, &redis).await;
    query(&fake, &writer, "acme").await;
    let key = redis.keys().await.remove(0);
    let mut value = redis.get(&key).await.expect("the value");
    let middle = value.len() / 2;
    value[middle] ^= 0x20;
    redis.set(&key, &value).await;

    let reader = process(&fake, &redis).await;
    query(&fake, &reader, "acme").await;
    let stats = reader.stats();
    assert_eq!((stats.store_rejected_values, stats.token_requests), (1, 1));
    assert_eq!(fake.stats().token_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_requests_succeed_and_sharing_resumes_when_it_returns() {
    let (fake, mut redis) = start().await;
    let (a, b) = (process(&fake, &redis).await, process(&fake, &redis).await);
    query(&fake, &a, "acme").await;
    query(&fake, &b, "acme").await;
    assert_eq!(fake.stats().token_requests, 1);

    redis.stop();
    // Cached tokens go on as before; a new tenant costs each process at most
    // one store timeout and a token request of its own.
    let bound = SharedCacheSettings::default().store_timeout + Duration::from_millis(400);
    for layer in [&a, &b] {
        query(&fake, layer, "acme").await;
        let started = Instant::now();
        query(&fake, layer, "globex").await;
        assert!(started.elapsed() < bound, "{:?}", started.elapsed());
        assert_eq!(layer.stats().store_fallbacks, 1);
    }
    assert_eq!(fake.stats().token_requests, 3);

    redis.restart();
    wait_for_reconnect(&[&a, &b], &fake).await;
    let before = fake.stats().token_requests;
    query(&fake, &a, "initech").await;
    query(&fake, &b, "initech").await;
    assert_eq!(fake.stats().token_requests, before + 1, "shared again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_hangs_costs_one_store_timeout_per_fetch() {
    let (fake, redis) = start().await;
    let mut settings = SharedCacheSettings::default();
    settings.store_timeout = Duration::from_millis(150);
    let layer = process_with(&fake, &redis, settings).await;
    query(&fake, &layer, "acme").await;

    redis.freeze();
    let started = Instant::now();
    query(&fake, &layer, "globex").await;
    let took = started.elapsed();
    redis.thaw();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_millis(650),
        "{took:?}"
    );
    assert_eq!(layer.stats().store_fallbacks, 1);
    assert_eq!(fake.stats().token_requests, 2);
}

/// Waits until each layer's connection works again (a ConnectionManager
/// reconnects on the first command after a failure), using a throwaway
/// tenant per try so that nothing is cached; those token requests are
/// the caller's to discount.
async fn wait_for_reconnect(layers: &[&PropelAuthLayer], fake: &FakePropel) {
    for (n, layer) in layers.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut attempt = 0;
        loop {
            let fallbacks = layer.stats().store_fallbacks;
            query(fake, layer, &format!("probe-{n}-{attempt}")).await;
            if layer.stats().store_fallbacks == fallbacks {
                break;
            }
            assert!(Instant::now() < deadline, "no reconnection within 10 s");
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
