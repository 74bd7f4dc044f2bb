//! The ledger's connections: what they promise whatever the tables' history.

mod common;

use common::TestEnv;
use sqlx::Row;

/// A batch lookup prepared while its table was nearly empty must be planned
/// anew for the table it meets later. A cached generic plan keeps the
/// sequential scan chosen for a tiny table, comparing every row with each of
/// 2,000 request ids (seconds per batch once the table holds 300,000 rows:
/// seen mid-drop); a plan made for the actual ids uses the index or a hashed
/// scan. A generic plan shows its parameter (`$1`); a custom one, the ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_lookups_are_planned_for_their_ids_not_for_the_table_they_first_met() {
    let env = TestEnv::new().await;
    let mut conn = env.db.acquire().await.unwrap();
    for statement in [
        "CREATE TEMP TABLE seen (request_id TEXT PRIMARY KEY, result TEXT NOT NULL)",
        "INSERT INTO seen SELECT 'a-' || g, 'x' FROM generate_series(1, 50) g",
        "PREPARE lookup(text[]) AS SELECT request_id, result FROM seen WHERE request_id = ANY($1)",
    ] {
        sqlx::query(statement).execute(&mut *conn).await.unwrap();
    }
    let ids = "(SELECT array_agg('b-' || g) FROM generate_series(1, 2000) g)";
    let ids: Vec<String> = sqlx::query_scalar(&format!("SELECT {ids}"))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let literal = format!(
        "ARRAY[{}]::text[]",
        ids.iter()
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(",")
    );
    // Enough executions for PostgreSQL to consider a generic plan.
    for _ in 0..8 {
        sqlx::query(&format!("EXECUTE lookup({literal})"))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO seen SELECT 'c-' || g, 'x' FROM generate_series(1, 100000) g")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query(&format!("EXPLAIN EXECUTE lookup({literal})"))
        .fetch_all(&mut *conn)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        !plan.contains("$1"),
        "planned once for any ids, not for these: {}",
        &plan[..plan.len().min(400)]
    );
    assert!(plan.contains("b-2000"), "planned for these ids");
    drop(conn);
    env.cleanup().await;
}
