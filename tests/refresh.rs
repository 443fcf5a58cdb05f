//! Refresh over real TCP and the real wall clock (DESIGN section 4,
//! behaviour 3): a token's deadlines are data checked on every read, so a
//! token that went stale while nothing drove the runtime is never sent.

mod support;

use std::time::Duration;

use http::StatusCode;
use tower::{Layer, ServiceExt};
use tower_propel_auth::Error;

use support::{
    graphql, hyper_client, json, recording, token_layer, FakeOnItsOwnRuntime, Recorded,
    DATA_POOL_QUERY,
};

/// FakePropel's token lifetime here. The layer's safety margin is a quarter
/// of it (0.5 s), so a token goes stale 1.5 s after it is fetched.
const LIFETIME: Duration = Duration::from_secs(2);
/// How long the runtime is left alone: well past the stale point.
const IDLE: Duration = Duration::from_millis(2500);

/// A current-thread runtime driven only by `block_on`, as a synchronous
/// program that calls into async code now and then drives it: between two
/// calls no task runs, no timer fires. The fake runs on a runtime of its
/// own, so it keeps answering meanwhile.
///
/// This is the one test that sleeps for real: what it checks is what a real
/// pause of the runtime does to a token (paused tokio time no longer moves
/// the clock that token deadlines are checked against).
///
/// Fails on the previous core (0809309), whose hot path read no clock and
/// relied on a timer task to drop a stale token: the second request went out
/// with the stale token before that task could run (a 200 on the old token,
/// or, past its `exp`, a 401 and a retry).
#[test]
fn a_token_that_went_stale_while_the_runtime_was_not_driven_is_never_sent() {
    let fake = FakeOnItsOwnRuntime::start();
    fake.set_token_lifetime(LIFETIME);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let layer = token_layer(&fake).build().unwrap();
    let sent = Recorded::default();
    let service = layer.layer(recording(hyper_client(), &sent));
    let query = || {
        runtime.block_on(async {
            let response = service
                .clone()
                .oneshot(graphql(&fake.api_url(), DATA_POOL_QUERY))
                .await?;
            let status = response.status();
            json(response).await;
            Ok::<_, Error>(status)
        })
    };

    assert_eq!(query().expect("the first request"), StatusCode::OK);
    let first = sent.last_authorization().expect("a Bearer header");

    std::thread::sleep(IDLE);

    assert_eq!(query().expect("the second request"), StatusCode::OK);
    let second = sent.last_authorization().expect("a Bearer header");
    assert_ne!(second, first, "the second request carried a fresh token");
    assert_eq!(sent.len(), 2, "each request went out once");
    let stats = fake.stats();
    assert_eq!(stats.api_expired_token, 0, "an expired token arrived");
    assert_eq!(stats.api_invalid_credentials, 0);
    assert_eq!(stats.token_requests, 2);
    assert_eq!(layer.stats().token_requests, 2);
}
