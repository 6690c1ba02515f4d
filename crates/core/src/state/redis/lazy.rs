//! A Redis connection made when first needed and made again after a
//! failure, for the stores that call Redis now and then (keys, spend)
//! rather than on every attempt like the quota books' link.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One shared connection to a Redis server.
pub struct LazyConnection {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
}

impl LazyConnection {
    /// A connection to `url` (not made yet) whose calls time out after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: tokio::sync::Mutex::new(None),
            timeout,
        })
    }

    /// Runs `f` on the connection, made first when there is none; a call
    /// that fails drops it, so the next makes a new one.
    pub async fn run<R>(
        &self,
        f: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<R>,
    ) -> redis::RedisResult<R> {
        let mut conn = {
            let mut held = self.conn.lock().await;
            match held.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(CONNECT_TIMEOUT)
                        .set_response_timeout(self.timeout);
                    let made = self
                        .client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    *held = Some(made.clone());
                    made
                }
            }
        };
        let result = f(&mut conn).await;
        if result.is_err() {
            *self.conn.lock().await = None;
        }
        result
    }
}
