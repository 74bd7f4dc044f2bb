//! A Redis server of one test's own, on a free port: it can be saved,
//! stopped and started again from its snapshot without touching the Redis
//! every other test shares.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    server: Option<Child>,
}

impl PrivateRedis {
    /// Starts an empty server and waits until it answers.
    pub async fn start() -> Self {
        let mut redis = Self {
            port: super::free_port(),
            dir: tempfile::tempdir().expect("a directory for the Redis snapshot"),
            server: None,
        };
        redis.launch().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn snapshot(&self) -> PathBuf {
        self.dir.path().join("dump.rdb")
    }

    async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/services.sh installs it)");
        self.server = Some(child);
        super::eventually("the private Redis answers PING", || async {
            let client = redis::Client::open(self.url()).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
            (pong == "PONG").then_some(())
        })
        .await;
    }

    async fn command(&self, name: &str, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd(name).arg(args).query_async(&mut conn).await
    }

    /// Writes the snapshot the next [`Self::restart_from_snapshot`] comes back with.
    pub async fn save(&self) {
        self.command("SAVE", &[]).await.expect("SAVE");
        assert!(self.snapshot().exists(), "SAVE wrote {:?}", self.snapshot());
    }

    /// Stops the server without saving and starts it again: it loads the
    /// last [`Self::save`], as a Redis restored from a backup does.
    pub async fn restart_from_snapshot(&mut self) {
        // The connection drops as the server exits: no answer to wait for.
        let _ = self.command("SHUTDOWN", &["NOSAVE"]).await;
        if let Some(mut child) = self.server.take() {
            child.wait().expect("redis-server exits");
        }
        self.launch().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
