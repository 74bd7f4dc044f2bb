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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_published_events_past_retention_are_swept_and_the_rest_kept() {
    let env = common::TestEnv::with(|s| {
        s.worker.retention_hours = 24;
        s.worker.retention_sweep_secs = 1;
    })
    .await;
    for (id, age_hours) in [("old-1", 30), ("old-2", 25), ("new-1", 1)] {
        sqlx::query(
            "INSERT INTO processed_requests (request_id, kind, user_id, status, result, processed_at)
             VALUES ($1, 'charge', 1, 'succeeded', '{}', now() - make_interval(hours => $2))",
        )
        .bind(id)
        .bind(age_hours)
        .execute(&env.db)
        .await
        .unwrap();
    }
    // Published long ago, published lately, and never published.
    for (order_id, published) in [(1_i64, Some(30)), (2, Some(1)), (3, None::<i32>)] {
        sqlx::query(
            "INSERT INTO outbox (topic, key, payload, order_id, created_at, published_at)
             VALUES ('t', $1::text, '{}', $1, now() - interval '40 hours',
                     now() - make_interval(hours => $2))",
        )
        .bind(order_id)
        .bind(published)
        .execute(&env.db)
        .await
        .unwrap();
    }
    let app = env
        .start(stampede::app::Roles::workers(vec![
            stampede::workers::WorkerKind::Charge,
        ]))
        .await;
    let (results, outbox) =
        common::eventually("the sweep deletes old results and outbox rows", || async {
            let results: Vec<String> =
                sqlx::query_scalar("SELECT request_id FROM processed_requests ORDER BY request_id")
                    .fetch_all(&env.db)
                    .await
                    .unwrap();
            let outbox: Vec<i64> =
                sqlx::query_scalar("SELECT order_id FROM outbox ORDER BY order_id")
                    .fetch_all(&env.db)
                    .await
                    .unwrap();
            // One sweep deletes results, then outbox rows: wait for both.
            (results.len() == 1 && outbox.len() == 2).then_some((results, outbox))
        })
        .await;
    app.stop().await;
    assert_eq!(results, ["new-1"]);
    assert_eq!(outbox, [2, 3], "only the event published long ago goes");
    env.cleanup().await;
}

/// A drop's batch lookups (stored results, known users) probe the primary
/// key for each of its 2,000 ids, also while the tables hold a few hundred
/// thousand rows: written as `= ANY($1)` and priced with the default
/// random-read cost, PostgreSQL scanned the whole table for every batch
/// instead (tens of ms a batch, most of its CPU in a drop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_lookups_probe_the_index_of_a_table_of_hundreds_of_thousands() {
    let env = TestEnv::new().await;
    for statement in [
        "INSERT INTO processed_requests (request_id, kind, user_id, status, result)
         SELECT 'lg' || md5(g::text) || '-' || g, 'coupon', g, 'succeeded', repeat('x', 150)
         FROM generate_series(1, 250000) g",
        "INSERT INTO users (id, balance) SELECT g, 0 FROM generate_series(1, 250000) g",
        "ANALYZE processed_requests",
        "ANALYZE users",
    ] {
        sqlx::query(statement).execute(&env.db).await.unwrap();
    }
    let results = plan(
        &env,
        stampede::store::processed::LOOKUP,
        (1..=2_000).map(|i| format!("new-{i}")).collect::<Vec<_>>(),
    )
    .await;
    assert!(
        results.contains("processed_requests_pkey")
            && !results.contains("Seq Scan on processed_requests"),
        "{results}"
    );
    let users = plan(
        &env,
        stampede::store::users::MISSING,
        (1..=2_000i64).map(|i| i * 97).collect::<Vec<_>>(),
    )
    .await;
    assert!(
        users.contains("users_pkey") && !users.contains("Seq Scan on users"),
        "{users}"
    );
    env.cleanup().await;
}

/// PostgreSQL's plan for `sql` with its one parameter bound to `keys`.
async fn plan<T>(env: &TestEnv, sql: &str, keys: Vec<T>) -> String
where
    Vec<T>: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    sqlx::query(&format!("EXPLAIN {sql}"))
        .bind(keys)
        .fetch_all(&env.db)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `stampede audit` names the promise a tampered ledger breaks, and only it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_names_each_broken_promise() {
    let failed = |report: &stampede::audit::AuditReport| -> Vec<&'static str> {
        report.violations().iter().map(|c| c.name).collect()
    };
    let env = TestEnv::new().await;
    stampede::store::users::seed(&env.db, 1, 3, 5_000)
        .await
        .unwrap();
    env.create_coupon(7, 10).await;
    let clean = env.audit().await;
    assert!(clean.passed(), "{}", clean.render());
    for tamper in [
        // A balance changed without its history.
        "UPDATE users SET balance = balance + 1 WHERE id = 2",
        // A coupon counted as issued with nobody holding it.
        "UPDATE coupons SET issued = 1 WHERE id = 7",
        // An order item for an order and a product that do not exist.
        "INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES (424242, 4242, 1, 0)",
    ] {
        sqlx::query(tamper).execute(&env.db).await.unwrap();
    }
    let report = env.audit().await;
    assert_eq!(
        failed(&report),
        [
            "coupon issued = rows",
            "balance = sum(history)",
            "references exist",
            "redis coupon stock"
        ],
        "{}",
        report.render()
    );
    // Counters Redis holds that are not numbers, a string and a hash: each is
    // a broken promise the audit names, not a reason it cannot run.
    env.create_coupon(8, 10).await;
    env.create_product(3, 100, 5).await;
    let mut redis = env.counters.connection();
    let _: () = redis::cmd("SET")
        .arg(env.counters.key("{coupon:8}:stock"))
        .arg("not-a-number")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(env.counters.key("{coupon:7}:stock"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(env.counters.key("{coupon:7}:stock"))
        .arg("a")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(env.counters.key("{inventory}:stock"))
        .arg(3)
        .arg("five")
        .query_async(&mut redis)
        .await
        .unwrap();
    let report = env.audit().await;
    let named = |name: &str| {
        report
            .violations()
            .into_iter()
            .find(|c| c.name == name)
            .map(|c| c.detail.clone())
            .unwrap_or_default()
    };
    let coupons = named("redis coupon stock");
    assert!(
        coupons.starts_with("2 violation(s)")
            && coupons.contains("not a number in Redis: coupon 7, coupon 8"),
        "{}",
        report.render()
    );
    let products = named("redis product stock");
    assert!(
        products.contains("not a number in Redis: product 3"),
        "{}",
        report.render()
    );
    // `stampede reconcile` rewrites them from PostgreSQL, the hash included.
    stampede::reconcile::reconcile_all(&env.db, &env.counters, true)
        .await
        .unwrap();
    let report = env.audit().await;

    assert_eq!(
        failed(&report),
        [
            "coupon issued = rows",
            "balance = sum(history)",
            "references exist"
        ],
        "{}",
        report.render()
    );
    env.cleanup().await;
}

/// Runs `stampede seed <args>` with the test's settings: (success, stdout, stderr).
fn seed(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    seed_logging(env, args, "warn")
}

/// `stampede seed`, its log at `level` in JSON lines on standard error.
fn seed_logging(env: &TestEnv, args: &[&str], level: &str) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stampede"))
        .arg("--config")
        .arg(env.config_path())
        .arg("seed")
        .args(args)
        .env("RUST_LOG", level)
        .env("STAMPEDE_LOG__FORMAT", "json")
        .output()
        .expect("run stampede seed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_creates_what_it_reports_up_to_the_largest_id_and_refuses_past_it() {
    use stampede::store::{coupons, products};
    let env = TestEnv::new().await;
    let (ok, out, err) = seed(
        &env,
        &[
            "--users",
            "3",
            "--balance",
            "7000",
            "--products",
            "2",
            "--price",
            "500",
            "--stock",
            "9",
            "--coupons",
            "1",
            "--first-coupon-id",
            "4",
            "--coupon-stock",
            "6",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.starts_with("created 3 users, 2 products, coupons [4]"),
        "{out}"
    );
    for user in 1..=3 {
        assert_eq!(env.balance(user).await, Some(7_000));
    }
    assert_eq!(env.balance(4).await, None);
    for product in 1..=2 {
        let row = products::get(&env.db, product).await.unwrap().unwrap();
        assert_eq!((row.price, row.stock), (500, 9));
        assert_eq!(env.counters.product_stock(product).await.unwrap(), Some(9));
    }
    let coupon = coupons::get(&env.db, 4).await.unwrap().unwrap();
    assert_eq!(coupon.total_quantity, 6);
    assert_eq!(env.counters.coupon_stock(4).await.unwrap(), Some(6));
    // Again: nothing new, and it says so.
    let (ok, out, _) = seed(
        &env,
        &["--users", "3", "--coupons", "1", "--first-coupon-id", "4"],
    );
    assert!(ok);
    assert!(
        out.starts_with("created 0 users, 0 products, coupons [] (already existed: [4])"),
        "{out}"
    );

    // Many: written a chunk at a time, each chunk's progress told (the
    // standard error here is no terminal for a bar), every row there once.
    let many = 2 * stampede::seed::CHUNK + 3;
    let (ok, out, err) = seed_logging(
        &env,
        &["--users", &many.to_string(), "--first-user-id", "1000"],
        "info",
    );
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("created {many} users")), "{out}");
    let told: Vec<(i64, i64)> = err
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "seeding users")
        .map(|line| {
            let fields = &line["fields"];
            (
                fields["done"].as_i64().unwrap(),
                fields["of"].as_i64().unwrap(),
            )
        })
        .collect();
    let chunk = stampede::seed::CHUNK;
    assert_eq!(
        told,
        vec![(chunk, many), (2 * chunk, many), (many, many)],
        "{err}"
    );
    let (rows, lowest, highest): (i64, i64, i64) =
        sqlx::query_as("SELECT count(*), min(id), max(id) FROM users WHERE id >= 1000")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!((rows, lowest, highest), (many, 1000, 1000 + many - 1));
    let opened: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM balance_history WHERE user_id >= 1000 AND kind = 'initial'",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(opened, many, "each user's opening balance in its history");

    // The largest id is an id.
    let max = i64::MAX.to_string();
    let (ok, out, err) = seed(&env, &["--users", "1", "--first-user-id", &max]);
    assert!(ok, "{err}");
    assert!(out.starts_with("created 1 users"), "{out}");
    assert_eq!(env.balance(i64::MAX).await, Some(50_000));
    // Past it: a clear refusal, and nothing created.
    let near = (i64::MAX - 1).to_string();
    let (ok, _, err) = seed(&env, &["--products", "3", "--first-product-id", &near]);
    assert!(!ok);
    assert!(err.contains("would pass the largest id"), "{err}");
    assert!(products::get(&env.db, i64::MAX - 1)
        .await
        .unwrap()
        .is_none());
    let (ok, _, err) = seed(
        &env,
        &["--coupons", "1", "--coupon-valid-days", "99999999999999"],
    );
    assert!(!ok);
    assert!(err.contains("expire within"), "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_data_finds_room_below_the_largest_id() {
    use stampede::store::ids::{free_block, IdTable};
    let env = TestEnv::new().await;
    assert_eq!(free_block(&env.db, IdTable::Users, 10).await.unwrap(), 1);
    for sql in ["INSERT INTO users (id, balance) VALUES (1, 0), (2, 0), (5, 0), (9, 0)"] {
        sqlx::query(sql).execute(&env.db).await.unwrap();
    }
    // Room above the highest id: after it.
    assert_eq!(
        free_block(&env.db, IdTable::Users, 1_000).await.unwrap(),
        10
    );
    sqlx::query("INSERT INTO users (id, balance) VALUES (9223372036854775807, 0)")
        .execute(&env.db)
        .await
        .unwrap();
    // None above the largest id: the lowest gap wide enough.
    assert_eq!(free_block(&env.db, IdTable::Users, 2).await.unwrap(), 3);
    assert_eq!(free_block(&env.db, IdTable::Users, 3).await.unwrap(), 6);
    assert_eq!(free_block(&env.db, IdTable::Users, 4).await.unwrap(), 10);
    env.cleanup().await;
}

/// A command that cannot reach PostgreSQL, Redis or the Kafka brokers
/// says where it tried (the password hidden) and why, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_service_is_named_with_the_reason() {
    let env = TestEnv::new().await;
    let run = |command: &str, variable: &str, url: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stampede"))
            .arg("--config")
            .arg(env.config_path())
            .args(command.split(' '))
            .env(variable, url)
            .env("RUST_LOG", "error")
            .output()
            .expect("run stampede");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let port = common::free_port();
    let said = run(
        "audit",
        "STAMPEDE_DATABASE__URL",
        &format!("postgres://postgres:secret-word@127.0.0.1:{port}/stampede"),
    );
    assert!(
        said.contains(&format!(
            "cannot connect to postgres://postgres:***@127.0.0.1:{port}/stampede"
        )),
        "{said}"
    );
    assert_eq!(said.matches("Connection refused").count(), 1, "{said}");
    assert!(!said.contains("secret-word"), "{said}");
    assert!(
        !said.contains("timed out"),
        "the cause, not the pool's timeout: {said}"
    );

    let said = run(
        "reconcile",
        "STAMPEDE_REDIS__URL",
        &format!("redis://:secret-word@127.0.0.1:{port}"),
    );
    assert!(
        said.contains(&format!("cannot connect to redis://:***@127.0.0.1:{port}")),
        "{said}"
    );
    assert!(
        said.contains("Connection refused") && !said.contains("secret-word"),
        "{said}"
    );

    let said = run(
        "topics create",
        "STAMPEDE_KAFKA__BROKERS",
        &format!("127.0.0.1:{port}"),
    );
    assert!(
        said.contains(&format!(
            "cannot reach the Kafka brokers at 127.0.0.1:{port} (kafka.brokers)"
        )),
        "{said}"
    );
    for command in ["dlq list --flow coupon", "audit"] {
        let said = run(
            command,
            "STAMPEDE_KAFKA__BROKERS",
            &format!("127.0.0.1:{port}"),
        );
        assert!(
            said.contains(&format!(
                "error: no Kafka broker answered at 127.0.0.1:{port} (kafka.brokers)"
            )),
            "{command}: {said}"
        );
    }
    env.cleanup().await;
}
