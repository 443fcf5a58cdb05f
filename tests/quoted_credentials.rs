//! Behaviour 9 on every path: an API that quotes what it received in a 401
//! or 403 body never gets a secret or a token into the error, whatever the
//! credential and whatever became of the layer. (A file of its own: the
//! logs test in `secrets.rs` needs to be the only test in its binary.)

mod support;

use tower::{Layer, ServiceExt};
use tower_propel_auth::testing::ApiFault;
use tower_propel_auth::{Credentials, Error, PropelAuthLayer};

use support::{graphql, hyper_client, recording, token_layer_with, Recorded, DATA_POOL_QUERY};

/// A secret a person chose: not token-shaped, so only removal by value
/// keeps it out of an error.
const HUMAN_SECRET: &str = "letmein-summer-2026";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Basic,
    Bearer,
    ClientCredentials,
}

/// `Display` and `Debug` of `err` and of every error in its source chain.
fn shown(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut texts = Vec::new();
    let mut next = Some(err);
    while let Some(err) = next {
        texts.extend([err.to_string(), format!("{err:?}"), format!("{err:#?}")]);
        next = err.source();
    }
    texts
}

/// An API that quotes the `Authorization` value, the token or Basic
/// credentials in it and the decoded Basic password in its 401 or 403 body
/// shows none of them in the error's `Display`, `Debug` or source chain:
/// for Basic, bearer and client-credentials layers, with the layer alive
/// and with its last handle dropped before the response arrived (tower's
/// `Oneshot` drops the service right after `call`).
#[tokio::test]
async fn quoted_credentials_never_reach_an_error_on_any_path_even_with_the_layer_dropped() {
    let fake = support::start().await;
    fake.add_application("APP01HUMAN", HUMAN_SECRET, &["data_pool:query"]);
    let credentials = Credentials::new("APP01HUMAN", HUMAN_SECRET).unwrap();
    let minted = token_layer_with(&fake, credentials.clone())
        .build()
        .unwrap()
        .access_token(None)
        .await
        .unwrap();

    for status in [401, 403] {
        for kind in [Kind::Basic, Kind::Bearer, Kind::ClientCredentials] {
            for layer_dropped in [false, true] {
                let case = format!("{status}, {kind:?}, layer dropped: {layer_dropped}");
                fake.set_api_fault(Some(ApiFault::EchoCredentials { status }));
                let layer = match kind {
                    Kind::Basic => PropelAuthLayer::basic(credentials.clone())
                        .with_allowed_origins([fake.api_url()])
                        .unwrap(),
                    Kind::Bearer => PropelAuthLayer::bearer(minted.clone())
                        .with_allowed_origins([fake.api_url()])
                        .unwrap(),
                    Kind::ClientCredentials => token_layer_with(&fake, credentials.clone())
                        .build()
                        .unwrap(),
                };
                let recorded = Recorded::default();
                let response = layer
                    .layer(recording(hyper_client(), &recorded))
                    .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY));
                let kept = (!layer_dropped).then_some(layer);
                let err = match response.await {
                    Ok(response) => panic!("{case}: expected an error, got {}", response.status()),
                    Err(err) => err,
                };
                drop(kept);
                let message = match &err {
                    Error::Unauthorized(err) if status == 401 => err.message().to_owned(),
                    Error::Forbidden(err) if status == 403 => err.message().to_owned(),
                    other => panic!("{case}: unexpected {other:?}"),
                };
                // The body was read: the server's quote is there, redacted.
                assert!(message.contains("[redacted]"), "{case}: {message}");
                let sent = recorded
                    .last_authorization()
                    .expect("a credential was sent");
                let (_scheme, credential) = sent.split_once(' ').unwrap();
                for text in shown(&err) {
                    for secret in [HUMAN_SECRET, sent.as_str(), credential] {
                        assert!(!text.contains(secret), "{case}: {secret:?} in {text}");
                    }
                }
            }
        }
    }
}
