//! `stampede dlq list|show|replay|history` against the real services, as an
//! operator runs it: poison, a request fixed then replayed, and one already
//! decided.

mod common;

use std::process::Command;

use common::TestEnv;
use serde_json::{json, Value};
use stampede::app::Roles;
use stampede::kafka::Flow;
use stampede::reconcile;
use stampede::store::users;
use stampede::workers::WorkerKind;

/// Runs `stampede <args>` with the test's settings; returns (success, stdout).
fn stampede(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stampede"))
        .arg("--config")
        .arg(env.config_path())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run stampede");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() || !out.stderr.is_empty(),
        "a failing command says why"
    );
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), stdout)
}

fn listed(env: &TestEnv, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["dlq", "list", "--flow", "coupon", "--json"];
    args.extend_from_slice(extra);
    let (ok, out) = stampede(env, &args);
    assert!(ok);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_fixed_and_decided_dead_letters_are_listed_shown_and_replayed_once() {
    let env = TestEnv::new().await;
    users::seed(&env.db, 1, 3, 0).await.unwrap();
    env.create_coupon(7, 10).await;
    env.create_coupon(8, 10).await;
    let app = env.start(Roles::workers(vec![WorkerKind::Coupon])).await;
    // One request first: the worker has loaded its counters from PostgreSQL
    // once, so it does not reload them (and heal the corruption below).
    env.publish(
        Flow::Coupon,
        2,
        &json!({"request_id": "k-warm-up", "user_id": 2, "coupon_id": 8}),
    )
    .await;
    assert_eq!(
        env.result_of(Flow::Coupon, "k-warm-up").await["status"],
        "succeeded"
    );

    // A request that meets a bug (coupon 7's counter is corrupt): isolated,
    // dead-lettered, no result. Then poison, and a request answered
    // `invalid_request` (decided) that is dead-lettered too.
    let mut redis = env.counters.connection();
    let _: () = redis::cmd("SET")
        .arg(env.counters.key("{coupon:7}:stock"))
        .arg("not-a-number")
        .query_async(&mut redis)
        .await
        .unwrap();
    env.publish(
        Flow::Coupon,
        1,
        &json!({"request_id": "k-bug", "user_id": 1, "coupon_id": 7}),
    )
    .await;
    env.publish_raw(Flow::Coupon, "2", "this is not JSON").await;
    env.publish(
        Flow::Coupon,
        3,
        &json!({"request_id": "k-bad", "user_id": 3, "coupon_id": "seven"}),
    )
    .await;
    let first_bad = env.result_of(Flow::Coupon, "k-bad").await;
    assert_eq!(first_bad["error"]["code"], "invalid_request");
    env.dlq(Flow::Coupon)
        .wait_for(3, "three dead letters")
        .await;

    let all = listed(&env, &[]);
    assert_eq!(all.len(), 3, "{all:?}");
    let bug = listed(&env, &["--error", "SCRIPT"]);
    assert_eq!(bug.len(), 1);
    assert_eq!(bug[0]["request_id"], "k-bug");
    assert_eq!(
        listed(&env, &["--request-id", "k-bad"]).len(),
        1,
        "selected by request id"
    );
    assert_eq!(listed(&env, &["--limit", "2"]).len(), 2);
    let in_future = listed(&env, &["--since", "2999-01-01T00:00:00Z"]);
    assert!(in_future.is_empty());
    let (ok, table) = stampede(&env, &["dlq", "list", "--flow", "coupon"]);
    assert!(ok && table.contains("3 dead letter(s)") && table.contains("k-bug"));

    let (p, o) = (
        bug[0]["partition"].as_i64().unwrap().to_string(),
        bug[0]["offset"].as_i64().unwrap().to_string(),
    );
    let (ok, shown) = stampede(
        &env,
        &[
            "dlq",
            "show",
            "--flow",
            "coupon",
            "--partition",
            &p,
            "--offset",
            &o,
        ],
    );
    assert!(ok);
    assert!(shown.contains("request_id: k-bug") && shown.contains("source.topic"));
    let (ok, _) = stampede(
        &env,
        &[
            "dlq",
            "show",
            "--flow",
            "coupon",
            "--partition",
            &p,
            "--offset",
            "999",
        ],
    );
    assert!(!ok, "a missing record is an error");
    let (ok, _) = stampede(
        &env,
        &[
            "dlq",
            "replay",
            "--flow",
            "coupon",
            "--from-offset",
            "5",
            "--to-offset",
            "1",
        ],
    );
    assert!(!ok, "an empty offset range is refused");

    // A dry run publishes nothing but is recorded.
    let (ok, dry) = stampede(&env, &["dlq", "replay", "--flow", "coupon", "--dry-run"]);
    assert!(ok && dry.contains("would replay 3"), "{dry}");

    // Fix the bug's cause, then replay everything.
    reconcile::load_coupon(&env.db, &env.counters, 7, true)
        .await
        .unwrap();
    let (ok, out) = stampede(
        &env,
        &[
            "dlq",
            "replay",
            "--flow",
            "coupon",
            "--rate",
            "50",
            "--operator",
            "ops-test",
        ],
    );
    assert!(ok && out.contains("replayed 3"), "{out}");

    // The fixed request is decided now; the decided one is answered again
    // from its stored result, identically; poison gets no result (the
    // fourth is the warm-up's).
    let answers: Vec<Value> = env
        .results(Flow::Coupon)
        .take(4)
        .await
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    let of =
        |id: &str| -> Vec<&Value> { answers.iter().filter(|a| a["request_id"] == id).collect() };
    assert_eq!(of("k-bad"), vec![&first_bad, &first_bad]);
    let fixed = of("k-bug");
    assert_eq!(fixed.len(), 1);
    assert_eq!(fixed[0]["status"], "succeeded", "{}", fixed[0]);
    let issued: i64 = sqlx::query_scalar("SELECT issued FROM coupons WHERE id = 7")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(issued, 1);
    // What no worker can read goes back to the DLQ, naming the replay: the
    // poison, and the invalid request (answered again, and copied again).
    let copies = env.dlq(Flow::Coupon).take(5).await;
    let mut again: Vec<&[u8]> = copies
        .iter()
        .filter(|c| {
            c.headers
                .get("replay.of")
                .is_some_and(|r| r.contains(".dlq:"))
        })
        .map(|c| c.payload.as_slice())
        .collect();
    again.sort();
    assert_eq!(again.len(), 2, "only the unreadable came back");
    assert_eq!(again[0], b"this is not JSON");
    assert!(String::from_utf8_lossy(again[1]).contains("k-bad"));

    // Running it again skips what was sent (only the two new copies go).
    let (ok, out) = stampede(&env, &["dlq", "replay", "--flow", "coupon"]);
    assert!(
        ok && out.contains("replayed 2") && out.contains("3 already replayed"),
        "{out}"
    );

    let (ok, history) = stampede(&env, &["dlq", "history", "--flow", "coupon", "--records"]);
    assert!(ok);
    assert!(
        history.contains("by ops-test@") && history.contains("(dry run)"),
        "{history}"
    );
    let rows: Vec<(String, bool, i32)> =
        sqlx::query_as("SELECT operator, dry_run, replayed FROM dlq_replays ORDER BY id")
            .fetch_all(&env.db)
            .await
            .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1, rows[1].2),
        ("ops-test", false, 3)
    );
    let targets: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dlq_replayed WHERE outcome = 'replayed' AND target_offset IS NOT NULL",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(targets, 5, "where every replayed record went is recorded");

    app.stop().await;
    let report = env.audit().await;
    assert!(report.passed(), "{}", report.render());
    env.cleanup().await;
}
