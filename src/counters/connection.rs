//! One Redis connection type for a single server or a Redis Cluster, chosen by
//! `redis.cluster`. Both reconnect on their own after Redis restarts.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisSettings;

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    pub async fn connect(settings: &RedisSettings) -> redis::RedisResult<Self> {
        let response_timeout = Duration::from_millis(settings.response_timeout_ms);
        if settings.cluster {
            let nodes: Vec<&str> = settings.url.as_str().split(',').map(str::trim).collect();
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .response_timeout(response_timeout)
                .build()?;
            Ok(Self::Cluster(client.get_async_connection().await?))
        } else {
            let client = redis::Client::open(settings.url.as_str())?;
            let config =
                ConnectionManagerConfig::new().set_response_timeout(Some(response_timeout));
            Ok(Self::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
