//! Per-tenant caches: isolation, single flight per set, the bound.

use std::time::Duration;

use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::token::test_source::{
    layer, layer_with, request, retrying, send, Api, ScriptedSource, HOUR,
};
use crate::{Error, Settings, TokenParams};

type Req = http::Request<http_body_util::Full<bytes::Bytes>>;
type Resp = http::Response<http_body_util::Full<bytes::Bytes>>;

/// Sends one request for `tenant`, in its extensions; returns the
/// `Authorization` header the API saw.
async fn send_as<S>(service: &S, tenant: &str) -> Result<String, Error>
where
    S: tower::Service<Req, Response = Resp, Error = Error> + Clone,
{
    let mut request = request();
    request.extensions_mut().insert(TokenParams::tenant(tenant));
    let response = service.clone().oneshot(request).await?;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

/// Whether a header carries a token minted for `tenant`.
fn minted_for(header: &str, tenant: &str) -> bool {
    header.ends_with(&format!(r#"|{{"tenant_id":"{tenant}"}}"#))
}

#[tokio::test(start_paused = true)]
async fn a_hundred_tenants_times_a_hundred_requests_make_a_hundred_token_requests() {
    let source = ScriptedSource::tokens(Duration::from_millis(50), HOUR);
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    let tasks: Vec<_> = (0..100)
        .flat_map(|tenant| (0..100).map(move |_| tenant))
        .map(|tenant| {
            let service = service.clone();
            tokio::spawn(async move {
                let tenant = format!("t{tenant}");
                (send_as(&service, &tenant).await.unwrap(), tenant)
            })
        })
        .collect();
    for task in tasks {
        let (header, tenant) = task.await.unwrap();
        assert!(minted_for(&header, &tenant), "{tenant} got {header}");
    }
    assert_eq!(source.calls(), 100);
    assert_eq!(layer.stats().token_sets, 100);
}

#[tokio::test(start_paused = true)]
async fn the_bound_holds_and_no_tenant_gets_another_tenants_token() {
    let source = ScriptedSource::tokens(Duration::from_millis(1), HOUR);
    let settings = Settings {
        max_token_sets: 10,
        ..Settings::default()
    };
    let (layer, _) = layer_with(&source, settings);
    let service = layer.layer_over(Api::default());
    let mut max_seen = 0;
    // Three rounds through 50 tenants, 5 at a time.
    for round in 0..3 {
        for batch in 0..10 {
            let tasks: Vec<_> = (0..5)
                .map(|i| {
                    let service = service.clone();
                    let tenant = format!("t{}", batch * 5 + i);
                    tokio::spawn(async move { (send_as(&service, &tenant).await.unwrap(), tenant) })
                })
                .collect();
            for task in tasks {
                let (header, tenant) = task.await.unwrap();
                assert!(
                    minted_for(&header, &tenant),
                    "round {round}: {tenant} got {header}"
                );
            }
            max_seen = max_seen.max(layer.stats().token_sets);
        }
    }
    assert!(max_seen <= 10, "{max_seen} token sets cached");
    assert_eq!(layer.stats().token_sets, 10);
    // Cycling through 50 tenants with room for 10 evicts most sets before
    // their next use, so most come back for a new token; a few the map keeps
    // (its eviction favours sets seen again).
    assert!(
        (100..=150).contains(&source.calls()),
        "{} token requests for 3 rounds of 50 tenants",
        source.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_401s_for_one_tenant_refresh_only_that_tenants_token() {
    let source = ScriptedSource::tokens(Duration::from_millis(10), HOUR);
    let layer = layer(&source);
    let api = Api::with_latency(Duration::from_millis(5));
    let service = retrying(layer.layer_over(api.clone()));
    let a = send_as(&service, "a").await.unwrap();
    let b = send_as(&service, "b").await.unwrap();
    assert_eq!(source.calls(), 2);
    api.reject(&a);

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { send_as(&service, "a").await.unwrap() })
        })
        .collect();
    for task in tasks {
        let header = task.await.unwrap();
        assert!(minted_for(&header, "a") && header != a, "{header}");
    }
    assert_eq!(source.calls(), 3, "one refresh, for tenant a only");
    assert_eq!(
        send_as(&service, "b").await.unwrap(),
        b,
        "tenant b keeps its token"
    );
    assert_eq!(layer.stats().unauthorized, 20);
}

#[tokio::test(start_paused = true)]
async fn a_view_sends_its_tenants_token_from_the_set_extensions_use() {
    let source = ScriptedSource::tokens(Duration::from_millis(5), HOUR);
    let layer = layer(&source);
    let acme = layer
        .with_params(TokenParams::tenant("acme"))
        .layer_over(Api::default());
    let header = send(&acme).await.unwrap();
    assert!(minted_for(&header, "acme"), "{header}");
    // The same set, reached through the layer itself and a request's extensions.
    let plain = layer.layer_over(Api::default());
    assert_eq!(send_as(&plain, "acme").await.unwrap(), header);
    // A request's own parameters come before the view's.
    assert!(minted_for(
        &send_as(&acme, "globex").await.unwrap(),
        "globex"
    ));
    assert_eq!(source.calls(), 2);
    assert_eq!(layer.stats().token_sets, 2, "views share the layer's sets");
}

#[tokio::test(start_paused = true)]
async fn views_hold_parameters_not_caches_so_the_bound_holds_however_many_there_are() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let settings = Settings {
        max_token_sets: 2,
        ..Settings::default()
    };
    let (layer, _) = layer_with(&source, settings);
    let views: Vec<_> = (0..6)
        .map(|n| {
            let view = layer.with_params(TokenParams::tenant(format!("t{n}")));
            (n, view.layer_over(Api::default()))
        })
        .collect();
    for _round in 0..3 {
        for (n, view) in &views {
            let header = send(view).await.unwrap();
            assert!(minted_for(&header, &format!("t{n}")), "{header}");
            assert!(layer.stats().token_sets <= 2);
        }
    }
    // Every view's set was evicted by the others and made again.
    assert!(source.calls() > 6, "{} token requests", source.calls());
}

#[tokio::test(start_paused = true)]
async fn requests_with_the_default_parameters_share_the_default_cache() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    crate::token::test_source::send(&service).await.unwrap();
    let mut request = request();
    request.extensions_mut().insert(TokenParams::new());
    service.clone().oneshot(request).await.unwrap();
    assert_eq!(source.calls(), 1);
    assert_eq!(layer.stats().token_sets, 0);
}

#[tokio::test(start_paused = true)]
async fn a_back_end_gets_the_same_cached_token_requests_use() {
    let source = ScriptedSource::tokens(Duration::from_millis(5), HOUR);
    let layer = layer(&source);
    let service = layer.layer_over(Api::default());
    let header = send_as(&service, "acme").await.unwrap();
    let token = layer
        .access_token(Some(&TokenParams::tenant("acme")))
        .await
        .unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(format!("Bearer {}", token.secret().expose_secret()), header);
    assert!(token.expires_in() > Duration::from_secs(3500));
    assert_eq!(source.calls(), 1, "served from the cache");
    let other = layer
        .access_token(Some(&TokenParams::tenant("globex")))
        .await
        .unwrap();
    assert!(other.secret().expose_secret().ends_with(r#""globex"}"#));
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn with_room_for_one_set_a_new_tenant_replaces_the_old_one_and_stays() {
    let source = ScriptedSource::tokens(Duration::ZERO, HOUR);
    let settings = Settings {
        max_token_sets: 1,
        ..Settings::default()
    };
    let (layer, _) = layer_with(&source, settings);
    let service = layer.layer_over(Api::default());
    assert!(minted_for(&send_as(&service, "a").await.unwrap(), "a"));
    for _ in 0..3 {
        assert!(minted_for(&send_as(&service, "b").await.unwrap(), "b"));
    }
    assert_eq!(source.calls(), 2, "one token for a, one for b");
    assert_eq!(layer.stats().token_sets, 1);
}
