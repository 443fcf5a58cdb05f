//! [`RedisStore`]: the shared store in Redis or Valkey.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue};
use tower::BoxError;

use super::SharedStore;

/// Deletes the lock only if it still holds our value.
const UNLOCK: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

/// A [`SharedStore`] in Redis or Valkey (feature `redis`) over the service's
/// own connection (where TLS, ACLs, Sentinel and Cluster are configured):
/// `GET` and `SET … PX` for tokens, `SET … NX PX` for locks, a compare-and-delete to unlock.
///
/// Give it a `redis::aio::ConnectionManager`, which reconnects after Redis
/// restarts; a plain `MultiplexedConnection` stays broken (every fetch then
/// falls back to its own token request).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_propel_auth::shared_cache::{RedisStore, SharedCache};
///
/// let client = redis::Client::open("rediss://user:password@redis.internal:6380/")?;
/// let connection = redis::aio::ConnectionManager::new(client).await?;
/// let shared = SharedCache::new(RedisStore::new(connection)); // = SharedCache::redis(connection)
/// # let _ = shared; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore<C> {
    connection: C,
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store over `connection`, cloned for each round trip.
    pub fn new(connection: C) -> Self {
        Self { connection }
    }

    /// Sends `cmd` over a clone of the connection.
    fn query<T: FromRedisValue + Send>(
        &self,
        cmd: &Cmd,
    ) -> BoxFuture<'static, Result<T, BoxError>> {
        let (cmd, mut connection) = (cmd.clone(), self.connection.clone());
        Box::pin(async move { Ok(cmd.query_async(&mut connection).await?) })
    }
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl<C> SharedStore for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        self.query(redis::cmd("GET").arg(key))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.query(redis::cmd("SET").arg((key, value, "PX", millis(ttl))))
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        let set = redis::cmd("SET")
            .arg((key, owner, "NX", "PX", millis(lease)))
            .to_owned();
        let set = self.query::<Option<String>>(&set);
        Box::pin(async move { Ok(set.await?.is_some()) })
    }

    fn unlock<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), BoxError>> {
        let deleted = self.query::<i64>(redis::cmd("EVAL").arg((UNLOCK, 1, key, owner)));
        Box::pin(async move { deleted.await.map(drop) })
    }
}

/// Whole milliseconds, at least one (Redis refuses `PX 0`).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
