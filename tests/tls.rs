//! The TLS backend of the default token client is the user's choice (the
//! `rustls` and `native-tls` features). Which test runs depends on the
//! features: with a backend, an https token URL gets a TLS handshake; without
//! one, a typed error that names the features to turn on. `.ci/run` runs this
//! file both ways, the second with
//! `cargo test --no-default-features --features reqwest --test tls`.

#![cfg(feature = "reqwest")]

use tower_propel_auth::{Credentials, PropelAuthLayer, TokenError};

const SECRET: &str = "tls-test-secret-do-not-show";

/// What a token request to `https://{addr}/oauth2/token` through the default
/// reqwest client ends in.
async fn token_request_over_https(addr: std::net::SocketAddr) -> TokenError {
    let credentials = Credentials::new("APP01TLSTEST", SECRET).expect("credentials");
    let layer = PropelAuthLayer::client_credentials(credentials)
        .token_url(format!("https://{addr}/oauth2/token"))
        .build()
        .expect("an https token URL is valid");
    match layer.access_token(None).await {
        Ok(_) => panic!("nothing on {addr} can mint a token"),
        Err(err) => err,
    }
}

#[cfg(not(any(feature = "rustls", feature = "native-tls")))]
#[tokio::test]
async fn without_a_tls_backend_an_https_token_url_is_a_typed_error_naming_the_features() {
    use tower_propel_auth::TokenErrorKind;

    // Something listens, so a plain connect error would be no excuse.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = token_request_over_https(listener.local_addr().unwrap()).await;

    assert_eq!(err.kind(), TokenErrorKind::TlsUnavailable, "{err:?}");
    assert!(!err.is_transient(), "a rebuild, not patience, cures it");
    let hint = err.hint();
    assert!(
        hint.contains("rustls") && hint.contains("native-tls"),
        "{hint}"
    );
    assert!(err.to_string().contains("TLS"), "{err}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(SECRET), "{shown}");
}

#[cfg(any(feature = "rustls", feature = "native-tls"))]
#[tokio::test]
async fn with_a_tls_backend_an_https_token_url_starts_a_tls_handshake() {
    use tokio::io::AsyncReadExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 3];
        socket.read_exact(&mut head).await.unwrap();
        head
        // Dropping the socket ends the handshake: no token, a transport error.
    });
    let err = token_request_over_https(addr).await;
    let head = server.await.unwrap();
    // A TLS record: handshake (22), protocol version 3.x.
    assert_eq!(head[..2], [22, 3], "not a TLS ClientHello: {head:?}");
    assert!(err.is_transient(), "{err:?}");
}
