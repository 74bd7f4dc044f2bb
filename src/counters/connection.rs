//! One Redis connection type for a single server or a Redis Cluster, chosen by
//! `redis.cluster`. Both reconnect on their own after Redis restarts.
//!
//! Every command is answered, or fails, within `redis.response_timeout_ms`,
//! waiting for a lost connection to be made again included: while Redis is
//! away the connection retries with growing pauses (seconds in all), and a
//! command must not wait them out (a worker retries it with its own backoff,
//! the gateway answers 503).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisSettings;

#[derive(Clone)]
pub struct RedisConn {
    link: Link,
    /// How long a command waits for its answer, in all.
    answer_within: Duration,
}

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    pub async fn connect(settings: &RedisSettings) -> redis::RedisResult<Self> {
        let answer_within = Duration::from_millis(settings.response_timeout_ms);
        let link = if settings.cluster {
            let nodes: Vec<&str> = settings.url.as_str().split(',').map(str::trim).collect();
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .response_timeout(answer_within)
                .build()?;
            Link::Cluster(client.get_async_connection().await?)
        } else {
            let client = redis::Client::open(settings.url.as_str())?;
            let config = ConnectionManagerConfig::new().set_response_timeout(Some(answer_within));
            Link::Single(ConnectionManager::new_with_config(client, config).await?)
        };
        Ok(Self {
            link,
            answer_within,
        })
    }

    /// Whether this is a Redis Cluster, whose keys live on several nodes.
    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }
}

/// `answer`, failed as timed out once `within` has passed.
fn bounded<'a, T: Send + 'a>(within: Duration, answer: RedisFuture<'a, T>) -> RedisFuture<'a, T> {
    Box::pin(async move {
        match tokio::time::timeout(within, answer).await {
            Ok(answered) => answered,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("Redis did not answer within {} ms", within.as_millis()),
            )
            .into()),
        }
    })
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let within = self.answer_within;
        let answer = match &mut self.link {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        };
        bounded(within, answer)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let within = self.answer_within;
        let answer = match &mut self.link {
            Link::Single(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        };
        bounded(within, answer)
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}
