//! PostgreSQL, the ledger and source of truth (sqlx). Statements here are
//! multi-row (`UNNEST`) so a micro-batch costs a fixed number of round trips.
//!
//! Batch lookups by key join the table to `unnest($1)` rather than filter
//! with `= ANY($1)`: for a thousand keys the planner prices `ANY` as a
//! thousand random reads and picks a sequential scan of any table under
//! about a million rows (tens of ms per batch, most of PostgreSQL's time in
//! a drop), while the join is an index probe per key at every size. Keys are
//! deduplicated first ([`distinct`]), so the join returns each row once.
//!
//! Locks: a batch locks the rows whose figures it changes (users' balances,
//! products' stock, coupons' issued count), each kind by ascending id, with
//! `FOR NO KEY UPDATE`. Rows a batch inserts that refer to others (an
//! issued coupon to its user, an order to its coupon) take no lock on them:
//! the ledger's hot tables have no foreign-key triggers (the writing
//! transaction keeps the reference, `stampede audit` checks it; migrations
//! `hot_path_references` and `issue_references`). So a charge batch holding
//! users does not stall a coupon drop for them, and an order batch (users,
//! then products, then the coupon holdings it uses) and a drop (the coupon,
//! then its new rows) wait on no common lock in opposite orders. Counter
//! reloads take the same row locks as the batches that commit those figures
//! (see the reconcile module).

pub mod counter_source;
pub mod coupons;
pub mod ids;
pub mod ledger;
pub mod orders;
pub mod processed;
pub mod products;
pub mod replays;
pub mod retention;
pub mod stats;
pub mod users;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::DatabaseSettings;

/// `keys` sorted and without repeats, for a batch lookup joined to `unnest`.
pub fn distinct<T: Ord + Clone>(keys: &[T]) -> Vec<T> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    keys
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database")]
    Sqlx(#[from] sqlx::Error),
    /// The database could not be reached at all (the URL with its password
    /// hidden).
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// A hiccup worth retrying (connection lost, deadlock, serialization
    /// failure, a concurrent duplicate that a retry answers as a replay).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Sqlx(e) | StoreError::Connect { source: e, .. } => is_retryable_sqlx(e),
            StoreError::Migrate(_) | StoreError::Conflict(_) => false,
        }
    }

    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Sqlx(sqlx::Error::Database(d)) if d.code().as_deref() == Some("23505"))
    }
}

fn is_retryable_sqlx(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            // 08: connection, 40: rollback (serialization, deadlock), 53: resources,
            // 57: operator intervention (shutdown), 23505: concurrent duplicate.
            code.starts_with("08")
                || code.starts_with("40")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "23505"
        }
        _ => false,
    }
}

fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(settings.url.as_str())?
        .log_statements(tracing::log::LevelFilter::Trace)
        .application_name("stampede")
        // Statements are prepared once per connection. A generic plan chosen
        // while a table was nearly empty (a sequential scan) would otherwise
        // stay cached as the table grows, turning a 2 ms batch lookup into a
        // seconds-long scan mid-drop; our statements run once per batch, so
        // planning each for its own parameters costs nothing that shows.
        .options([
            ("plan_cache_mode", "force_custom_plan"),
            // Our tables' hot pages live in memory: a random read costs
            // about what a sequential one does. With the default (4.0), a
            // batch's thousand index probes are priced above a sequential
            // scan of a table of a few hundred thousand rows, which is ten
            // times slower in fact.
            ("random_page_cost", "1.1"),
        ]))
}

/// A pool for the configured database.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool> {
    let options = connect_options(settings)?;
    let cannot = |source| StoreError::Connect {
        url: crate::config::redact_url(settings.url.as_str()),
        source,
    };
    // One connection on its own first: a pool that cannot connect says only
    // that it timed out; this says why (refused, no such database, a
    // password refused).
    sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(cannot)?
        .close()
        .await
        .map_err(cannot)?;
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(cannot)
}

/// Whether PostgreSQL answers (for `/readyz`).
pub async fn ping(db: &PgPool) -> Result<()> {
    sqlx::query("SELECT 1").execute(db).await?;
    Ok(())
}

/// Creates the database if asked to and missing, then applies every migration.
pub async fn migrate(settings: &DatabaseSettings) -> Result<Vec<i64>> {
    let options = connect_options(settings)?;
    if settings.create_if_missing {
        create_database_if_missing(&options).await?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let before: std::collections::HashSet<i64> = applied(&pool).await.unwrap_or_default();
    MIGRATOR.run(&pool).await?;
    let after = applied(&pool).await?;
    pool.close().await;
    let mut new: Vec<i64> = after.difference(&before).copied().collect();
    new.sort_unstable();
    Ok(new)
}

async fn applied(pool: &PgPool) -> Result<std::collections::HashSet<i64>> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect(),
    )
}

async fn create_database_if_missing(options: &PgConnectOptions) -> Result<()> {
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "database created"),
            // Created concurrently by another process.
            Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}
