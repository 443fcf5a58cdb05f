//! Helpers of the shared-cache tests over FakePropel: a query as a tenant,
//! the token a layer holds. Test files use it with
//! `#[path = "support/shared_cache.rs"] mod shared;` beside `mod support;`.

#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt};
use tower_propel_auth::retry::TransientErrors;
use tower_propel_auth::secrecy::ExposeSecret;
use tower_propel_auth::{FakePropel, PropelAuthLayer, TokenParams};

use crate::support::{graphql, hyper_client, json, DATA_POOL_QUERY};

/// A Data Pool query for `tenant`'s data.
pub fn query_for(fake: &FakePropel, tenant: &str) -> Request<Full<Bytes>> {
    let mut request = graphql(&fake.api_url(), DATA_POOL_QUERY);
    request.extensions_mut().insert(TokenParams::tenant(tenant));
    request
}

/// Sends a query for `tenant` through `layer`, behind the retry layer the
/// crate recommends; checks it succeeded with a token naming that tenant.
pub async fn query(fake: &FakePropel, layer: &PropelAuthLayer, tenant: &str) {
    let response = ServiceBuilder::new()
        .retry(TransientErrors::new(1))
        .layer(layer.clone())
        .service(hyper_client())
        .oneshot(query_for(fake, tenant))
        .await
        .unwrap_or_else(|err| panic!("the query for {tenant} failed: {err}"));
    assert_eq!(response.status(), StatusCode::OK, "for {tenant}");
    let body: Value = json(response).await;
    assert_eq!(
        body["extensions"]["policyValues"]["tenant_id"], tenant,
        "{body}"
    );
}

/// The token the layer holds for `tenant`.
pub async fn token_of(layer: &PropelAuthLayer, tenant: &str) -> String {
    let token = layer
        .access_token(Some(&TokenParams::tenant(tenant)))
        .await
        .expect("a token");
    token.secret().expose_secret().to_owned()
}
