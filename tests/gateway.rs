//! The HTTP gateway: shape checks, idempotency keys, credentials, results.

mod common;

use common::link::Link;
use common::{eventually, get_json as get, post_json as post, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use stampede::app::Roles;
use stampede::config::{Secret, Url};
use stampede::kafka::Flow;
use stampede::workers::WorkerKind;

/// Posts a charge of `user` as a marker and reads the charge topic up to
/// it: the `before` requests the gateway published ahead of it, all of
/// `user`'s (a user's requests share a partition, so they come in the order
/// accepted).
async fn published_before_a_marker(
    env: &TestEnv,
    c: &reqwest::Client,
    http: &str,
    user: i64,
    before: usize,
) -> Vec<Value> {
    let (status, marker) = post(
        c,
        format!("{http}/v1/charges"),
        json!({"user_id": user, "amount": 5000}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut published: Vec<Value> = env
        .reader(&env.topics.requests(Flow::Charge))
        .take(before + 1)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let last = published.pop().unwrap();
    assert_eq!(last["request_id"], marker["request_id"], "{published:?}");
    published
}

/// A charge of `user` padded past a 4,096-byte body limit: 413
/// `payload_too_large`.
async fn refuses_a_body_over_4096_bytes(c: &reqwest::Client, http: &str, user: i64) {
    let (status, big) = post(
        c,
        format!("{http}/v1/charges"),
        json!({"user_id": user, "amount": 5000, "pad": "x".repeat(5000)}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big["error"]["code"], "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_over_http_follow_every_rule() {
    let env = TestEnv::new().await;
    let app = env
        .start(Roles {
            gateway: true,
            workers: vec![WorkerKind::Charge],
        })
        .await;
    let http = app.http();
    let c = reqwest::Client::new();

    let (status, created) = post(
        &c,
        format!("{http}/v1/admin/users"),
        json!({"user_id": 10, "balance": 9_000_000}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created, json!({"user_id": 10, "balance": 9_000_000}));
    let (status, conflict) = post(
        &c,
        format!("{http}/v1/admin/users"),
        json!({"user_id": 10}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(conflict["error"]["code"], "conflict");
    assert_eq!(
        conflict["error"]["message"], "user 10 already exists",
        "the refusal names the id asked for"
    );
    let (status, generated) = post(&c, format!("{http}/v1/admin/users"), json!({}), None).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        generated["user_id"].as_i64().unwrap() > 10,
        "generated ids skip explicit ones"
    );

    let mut outcomes = Vec::new();
    for (user, amount) in [(10, 5_000), (10, 500), (10, 2_000_000), (404, 5_000)] {
        let (status, accepted) = post(
            &c,
            format!("{http}/v1/charges"),
            json!({"user_id": user, "amount": amount}),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let id = accepted["request_id"].as_str().unwrap().to_owned();
        let (status, result) = get(&c, format!("{http}/v1/requests/{id}?wait_ms=20000")).await;
        assert_eq!(status, StatusCode::OK, "{result}");
        assert_eq!(result["request_id"], id);
        outcomes.push(
            result["error"]["code"]
                .as_str()
                .unwrap_or("succeeded")
                .to_owned(),
        );
    }
    assert_eq!(
        outcomes,
        [
            "succeeded",
            "charge_below_minimum",
            "balance_limit_exceeded",
            "user_not_found"
        ]
    );
    let (status, balance) = get(&c, format!("{http}/v1/users/10/balance")).await;
    assert_eq!(
        (status, balance),
        (StatusCode::OK, json!({"user_id": 10, "balance": 9_005_000}))
    );
    let (status, missing) = get(&c, format!("{http}/v1/users/404/balance")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["error"]["code"], "not_found");

    let (status, pending) = get(&c, format!("{http}/v1/requests/never-sent?wait_ms=50")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(pending["status"], "pending");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_id_skips_rows_written_with_their_own_ids() {
    // Rows written with explicit ids by something else than the gateway (a
    // restore, a migration, another tool), so the id sequences never moved
    // past them.
    let env = TestEnv::new().await;
    for sql in [
        "INSERT INTO users (id, balance) SELECT g, 0 FROM generate_series(1, 5) g",
        "INSERT INTO products (id, name, price, stock) SELECT g, 'restored', 100, 1 FROM generate_series(1, 5) g",
        "INSERT INTO coupons (id, name, discount_kind, discount_value, total_quantity, expires_at)
         SELECT g, 'restored', 'fixed', 100, 1, now() + interval '1 day' FROM generate_series(1, 5) g",
    ] {
        sqlx::query(sql).execute(&env.db).await.unwrap();
    }
    let app = env.start(Roles::gateway_only()).await;
    let http = app.http();
    let c = reqwest::Client::new();
    for (path, body, id) in [
        ("users", json!({"balance": 1000}), "user_id"),
        (
            "products",
            json!({"name": "new", "price": 100, "stock": 1}),
            "product_id",
        ),
        (
            "coupons",
            json!({"name": "new", "discount": {"type": "fixed", "amount": 100},
                   "total_quantity": 1, "expires_at": "2099-01-01T00:00:00Z"}),
            "coupon_id",
        ),
    ] {
        let (status, created) =
            post(&c, format!("{http}/v1/admin/{path}"), body.clone(), None).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {created}");
        assert_eq!(created[id], 6, "{path}: the next id past the taken ones");
        let mut taken = body.clone();
        taken[id] = json!(3);
        let (status, conflict) = post(&c, format!("{http}/v1/admin/{path}"), taken, None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {conflict}");
        assert_eq!(conflict["error"]["code"], "conflict");
        assert!(
            conflict["error"]["message"]
                .as_str()
                .unwrap()
                .ends_with(" 3 already exists"),
            "{path}: the refusal names the id asked for: {conflict}"
        );
        // The largest id is an id, and taking it spends nothing: the next
        // drawn id is still the next one.
        let mut largest = body.clone();
        largest[id] = json!(i64::MAX);
        let (status, created) = post(&c, format!("{http}/v1/admin/{path}"), largest, None).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {created}");
        assert_eq!(created[id], i64::MAX);
        let (status, created) =
            post(&c, format!("{http}/v1/admin/{path}"), body.clone(), None).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {created}");
        assert_eq!(
            created[id], 7,
            "{path}: drawn after the largest id was taken"
        );
        // A sequence already at the largest id (moved there by an older
        // gateway after such a row) goes on from the lowest free id.
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{path}', 'id'), 9223372036854775807)"
        ))
        .execute(&env.db)
        .await
        .unwrap();
        let (status, created) =
            post(&c, format!("{http}/v1/admin/{path}"), body.clone(), None).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {created}");
        assert_eq!(created[id], 8, "{path}: the lowest free id");
    }
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_is_published() {
    let env = TestEnv::with(|s| s.gateway.body_limit_bytes = 4096).await;
    let app = env.start(Roles::gateway_only()).await;
    let http = app.http();
    let c = reqwest::Client::new();

    let raw = c
        .post(format!("{http}/v1/charges"))
        .body("{nope")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    // Whether a body is JSON decides 400 or 422, not where decoding stopped.
    for (text, expected) in [
        (r#"{"user_id": 1, "amount": [5000"#, StatusCode::BAD_REQUEST),
        (
            r#"{"user_id": 1, "amount": 1e400}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let answer = c
            .post(format!("{http}/v1/charges"))
            .body(text)
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), expected, "{text}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{text}");
    }
    for body in [
        json!({"user_id": 1, "amount": "5000"}),
        json!({"user_id": 1, "amount": 0}),
        json!({"user_id": -1, "amount": 5000}),
        json!({"user_id": 1}),
        // The fields in an array: serde's derive would read it; not the API's shape.
        json!([1, 5000]),
    ] {
        let (status, answer) = post(&c, format!("{http}/v1/charges"), body.clone(), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(answer["error"]["code"], "invalid_request");
    }
    let items: Vec<Value> = (1..=51)
        .map(|p| json!({"product_id": p, "quantity": 1}))
        .collect();
    let (status, _) = post(
        &c,
        format!("{http}/v1/orders"),
        json!({"user_id": 1, "items": items}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = post(&c, format!("{http}/v1/orders"), json!({"user_id": 1, "items": [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 2}]}), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = post(
        &c,
        format!("{http}/v1/orders"),
        json!({"user_id": 1, "items": [[1, 1]]}),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an item as an array"
    );
    let (status, _) = post(
        &c,
        format!("{http}/v1/charges"),
        json!({"user_id": 1, "amount": 5000}),
        Some(&"x".repeat(65)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(
        &c,
        format!("{http}/v1/charges"),
        json!({"user_id": 1, "amount": 5000}),
        Some("bad key!"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    refuses_a_body_over_4096_bytes(&c, &http, 1).await;

    // Query strings that do not parse, and a method a path does not
    // answer: the same error shape as every other refusal.
    for path in [
        "/v1/products/popular?days=abc",
        "/v1/products/popular?limit=-",
        "/v1/requests/c-1?wait_ms=-1",
        "/v1/requests/c-1?wait_ms=soon",
    ] {
        let (status, answer) = get(&c, format!("{http}{path}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert_eq!(
            answer["error"]["code"], "invalid_request",
            "{path}: {answer}"
        );
    }
    let wrong = c.delete(format!("{http}/v1/charges")).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("POST".to_owned())
    );
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");

    // Nothing reached the request topic: a marker sent afterwards is the first message.
    published_before_a_marker(&env, &c, &http, 1, 0).await;
    app.stop().await;
    env.cleanup().await;
}

/// A client (or a proxy in front of the gateway) speaking HTTP/2 without
/// TLS, many requests at once on one connection, gets the answers an
/// HTTP/1.1 client gets: 202 for each request, each published once, its
/// result readable, and the same refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_the_same_answers_on_one_connection() {
    let env = TestEnv::with(|s| s.gateway.body_limit_bytes = 4096).await;
    let app = env
        .start(Roles {
            gateway: true,
            workers: vec![WorkerKind::Charge],
        })
        .await;
    let http = app.http();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let (status, _) = post(
        &h2,
        format!("{http}/v1/admin/users"),
        json!({"user_id": 20, "balance": 0}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let sent = futures::future::join_all((0..50).map(|_| {
        h2.post(format!("{http}/v1/charges"))
            .json(&json!({"user_id": 20, "amount": 5000}))
            .send()
    }))
    .await;
    let mut ids = std::collections::BTreeSet::new();
    for response in sent {
        let response = response.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        ids.insert(body["request_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 50, "each request its own id");
    let last = ids.iter().next_back().unwrap();
    let (status, result) = get(&h2, format!("{http}/v1/requests/{last}?wait_ms=20000")).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["status"], "succeeded", "{result}");
    eventually("all 50 charges applied", || {
        let (h2, url) = (h2.clone(), format!("{http}/v1/users/20/balance"));
        async move { (get(&h2, url).await.1["balance"] == 250_000).then_some(()) }
    })
    .await;

    let (status, answer) = post(
        &h2,
        format!("{http}/v1/charges"),
        json!({"user_id": 20, "amount": "5000"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["error"]["code"], "invalid_request");
    refuses_a_body_over_4096_bytes(&h2, &http, 20).await;

    // What the gateway published is the 50 accepted, once each, and no
    // refusal.
    let published: std::collections::BTreeSet<String> =
        published_before_a_marker(&env, &h2, &http, 20, 50)
            .await
            .iter()
            .map(|m| m["request_id"].as_str().unwrap().to_owned())
            .collect();
    assert_eq!(published, ids);
    app.stop().await;
    env.cleanup().await;
}

/// Keys claimed at once, as a drop's buyers send them: every new key is
/// accepted, and of the requests racing on one key with two bodies only
/// one body is ever accepted, the other refused and never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_claimed_at_once_each_bind_one_body() {
    let env = TestEnv::new().await;
    let app = env.start(Roles::gateway_only()).await;
    let http = app.http();
    let c = reqwest::Client::new();
    // One user: every request lands on one partition, in the order accepted.
    let charge = |key: String, amount: i64| {
        let (c, url) = (c.clone(), format!("{http}/v1/charges"));
        tokio::spawn(async move {
            let body = json!({"user_id": 1, "amount": amount});
            (key.clone(), amount, post(&c, url, body, Some(&key)).await)
        })
    };
    let mut posts: Vec<_> = (0..200)
        .map(|i| charge(format!("buyer-{i}"), 1_000))
        .collect();
    posts.extend((0..40).map(|i| charge("one-key".into(), 1_000 + (i % 2) * 1_000)));
    let mut race = Vec::new();
    for post in posts {
        let (key, amount, (status, answer)) = post.await.unwrap();
        if key == "one-key" {
            race.push((amount, status, answer));
        } else {
            assert_eq!(
                (status, answer["request_id"].as_str()),
                (StatusCode::ACCEPTED, Some(key.as_str()))
            );
        }
    }
    let accepted: Vec<i64> = race
        .iter()
        .filter(|(_, status, _)| *status == StatusCode::ACCEPTED)
        .map(|(amount, _, _)| *amount)
        .collect();
    let bound = accepted[0];
    assert!(
        accepted.iter().all(|a| *a == bound),
        "one body per key: {accepted:?}"
    );
    for (amount, status, answer) in &race {
        if *amount != bound {
            assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
            assert_eq!(
                answer["error"]["code"], "idempotency_key_reused",
                "{answer}"
            );
        }
    }
    assert_eq!(
        accepted.len(),
        20,
        "every request with the bound body is accepted"
    );

    // What was published before a marker sent last: the accepted ones only.
    let published = published_before_a_marker(&env, &c, &http, 1, 220).await;
    let raced: Vec<&Value> = published
        .iter()
        .filter(|p| p["request_id"] == "one-key")
        .collect();
    assert_eq!(raced.len(), 20);
    assert!(raced.iter().all(|p| p["amount"] == bound), "{raced:?}");
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_becomes_the_request_id_and_guards_its_body() {
    let env = TestEnv::new().await;
    stampede::store::users::create(&env.db, Some(1), 0)
        .await
        .unwrap();
    let app = env
        .start(Roles {
            gateway: true,
            workers: vec![WorkerKind::Charge],
        })
        .await;
    let http = app.http();
    let c = reqwest::Client::new();

    let (status, first) = post(
        &c,
        format!("{http}/v1/charges"),
        json!({"user_id": 1, "amount": 5000}),
        Some("order-77:pay"),
    )
    .await;
    assert_eq!(
        (status, first["request_id"].clone()),
        (StatusCode::ACCEPTED, json!("order-77:pay"))
    );
    let (status, again) = post(
        &c,
        format!("{http}/v1/charges"),
        json!({"user_id": 1, "amount": 5000}),
        Some("order-77:pay"),
    )
    .await;
    assert_eq!(
        (status, again["request_id"].clone()),
        (StatusCode::ACCEPTED, json!("order-77:pay"))
    );
    // The same body spelled otherwise by a retrying client: the same request.
    let respelled = c
        .post(format!("{http}/v1/charges"))
        .header("idempotency-key", "order-77:pay")
        .body("{ \"amount\": 5000,\n  \"user_id\": 1 }")
        .send()
        .await
        .unwrap();
    assert_eq!(respelled.status(), StatusCode::ACCEPTED);
    let (status, conflict) = post(
        &c,
        format!("{http}/v1/charges"),
        json!({"user_id": 1, "amount": 6000}),
        Some("order-77:pay"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(conflict["error"]["code"], "idempotency_key_reused");

    let (status, result) = get(&c, format!("{http}/v1/requests/order-77:pay?wait_ms=20000")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["balance"], 5000);
    // Both accepted posts were published; the charge happened once.
    let results = env.results(Flow::Charge).take(2).await;
    assert_eq!(results[0].payload, results[1].payload);
    assert_eq!(env.balance(1).await, Some(5000));
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_separate_clients_from_admins() {
    let env = TestEnv::with(|s| {
        s.gateway.client_keys = vec![Secret("client-key-aaaaaaaaaaaa".into())];
        s.gateway.admin_keys = vec![Secret("admin-key-bbbbbbbbbbbbbb".into())];
    })
    .await;
    let app = env.start(Roles::gateway_only()).await;
    let http = app.http();
    let c = reqwest::Client::new();
    let call = |path: &str, key: Option<&str>, body: Value| {
        let mut r = c.post(format!("{http}{path}")).json(&body);
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        r.send()
    };
    let charge = json!({"user_id": 1, "amount": 5000});
    let missing = call("/v1/charges", None, charge.clone()).await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.headers().get("www-authenticate").unwrap(),
        "Bearer",
        "a 401 names the scheme it takes"
    );
    // The scheme's name is case-insensitive.
    let lower = c
        .get(format!("{http}/v1/users/1/balance"))
        .header("authorization", "bearer client-key-aaaaaaaaaaaa")
        .send()
        .await
        .unwrap();
    assert_ne!(lower.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(
            "/v1/charges",
            Some("client-key-aaaaaaaaaaaX"),
            charge.clone()
        )
        .await
        .unwrap()
        .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            "/v1/admin/users",
            Some("client-key-aaaaaaaaaaaa"),
            json!({"user_id": 1})
        )
        .await
        .unwrap()
        .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            "/v1/admin/users",
            Some("admin-key-bbbbbbbbbbbbbb"),
            json!({"user_id": 1})
        )
        .await
        .unwrap()
        .status(),
        StatusCode::CREATED
    );
    let accepted = call(
        "/v1/charges",
        Some("client-key-aaaaaaaaaaaa"),
        charge.clone(),
    )
    .await
    .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let accepted: Value = accepted.json().await.unwrap();
    // The live dashboard takes an admin key: a header, or ?key= for a browser.
    let dashboard = |query: &str, key: Option<&str>| {
        let mut r = c.get(format!("{http}/dashboard{query}"));
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        r.send()
    };
    assert_eq!(
        dashboard("", None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        dashboard("?key=client-key-aaaaaaaaaaaa", None)
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        dashboard("", Some("client-key-aaaaaaaaaaaa"))
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    let page = dashboard("?key=admin-key-bbbbbbbbbbbbbb", None)
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("stampede live"));
    assert_eq!(
        dashboard("", Some("admin-key-bbbbbbbbbbbbbb"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get(format!("{http}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // The refused calls published nothing: the accepted one is the first message.
    let first = env.reader(&env.topics.requests(Flow::Charge)).take(1).await;
    let first: Value = serde_json::from_slice(&first[0].payload).unwrap();
    assert_eq!(first["request_id"], accepted["request_id"]);
    app.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_means_503_never_202() {
    let env = TestEnv::new().await;
    let mut settings = env.settings.clone();
    // Nothing listens there.
    settings.kafka.brokers = "127.0.0.1:9".into();
    settings.kafka.delivery_timeout_ms = 1_500;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = stampede::run(settings, Roles::gateway_only(), shutdown.clone())
        .await
        .unwrap();
    let http = format!("http://{}", running.http_addr.unwrap());
    let c = reqwest::Client::new();
    let (status, body) = post(
        &c,
        format!("{http}/v1/charges"),
        json!({"user_id": 1, "amount": 5000}),
        Some("will-fail-1"),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "unavailable");
    let ready = c.get(format!("{http}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    shutdown.cancel();
    running.wait().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_flows_from_http_through_kafka_to_the_result() {
    let env = TestEnv::new().await;
    stampede::store::users::create(&env.db, Some(1), 0)
        .await
        .unwrap();
    let app = env
        .start(Roles {
            gateway: true,
            workers: vec![WorkerKind::Charge],
        })
        .await;
    let c = reqwest::Client::new();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let accepted: Value = c
        .post(format!("{}/v1/charges", app.http()))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"user_id": 1, "amount": 5000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let request = env
        .reader(&env.topics.requests(Flow::Charge))
        .take(1)
        .await
        .remove(0);
    assert!(
        request.headers["traceparent"].contains(trace),
        "{:?}",
        request.headers
    );
    let result = env.results(Flow::Charge).take(1).await.remove(0);
    assert!(
        result.headers["traceparent"].contains(trace),
        "{:?}",
        result.headers
    );
    let body: Value = serde_json::from_slice(&result.payload).unwrap();
    assert_eq!(body["request_id"], accepted["request_id"]);
    app.stop().await;
    env.cleanup().await;
}

/// Token buckets per user and per client address, per flow: 429 with
/// `Retry-After` beyond them, counted in `/metrics`, and nothing over a limit
/// reaches Kafka. One token per 100 s: no refill within the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_and_publish_nothing_over_them() {
    let env = TestEnv::with(|s| {
        s.gateway.limits.charge.user_per_sec = 0.01;
        s.gateway.limits.charge.user_burst = 2;
        s.gateway.limits.coupon.client_per_sec = 0.01;
        s.gateway.limits.coupon.client_burst = 3;
    })
    .await;
    let app = env.start(Roles::gateway_only()).await;
    let http = app.http();
    let c = reqwest::Client::new();
    let mut accepted = std::collections::HashSet::new();

    // Per user: the third charge of user 1 is over; user 2 has a bucket of its own.
    for (user, expected) in [
        (1, StatusCode::ACCEPTED),
        (1, StatusCode::ACCEPTED),
        (1, StatusCode::TOO_MANY_REQUESTS),
        (2, StatusCode::ACCEPTED),
    ] {
        let response = c
            .post(format!("{http}/v1/charges"))
            .json(&json!({"user_id": user, "amount": 5_000}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "charge for user {user}");
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.unwrap();
        if expected == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"]["code"], "rate_limited");
            let secs: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
            assert!((1..=100).contains(&secs), "Retry-After {secs}");
        } else {
            accepted.insert(body["request_id"].as_str().unwrap().to_owned());
        }
    }
    // Per client address: the fourth coupon request from this address is
    // over, whoever the user; charges from it are not limited by that bucket.
    for (user, expected) in [
        (1, StatusCode::ACCEPTED),
        (2, StatusCode::ACCEPTED),
        (3, StatusCode::ACCEPTED),
        (4, StatusCode::TOO_MANY_REQUESTS),
    ] {
        let (status, _) = post(
            &c,
            format!("{http}/v1/coupons/9/issue"),
            json!({"user_id": user}),
            None,
        )
        .await;
        assert_eq!(status, expected, "coupon request of user {user}");
    }
    let (status, marker) = post(
        &c,
        format!("{http}/v1/charges"),
        json!({"user_id": 3, "amount": 5_000}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    accepted.insert(marker["request_id"].as_str().unwrap().to_owned());

    // The charge topic holds exactly the accepted charges.
    let published: std::collections::HashSet<String> = env
        .reader(&env.topics.requests(Flow::Charge))
        .take(accepted.len())
        .await
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.payload).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(published, accepted);
    // ... and nothing else: the partitions' ends add up to that many.
    let consumer: rdkafka::consumer::BaseConsumer =
        stampede::kafka::client_config(&env.settings.kafka)
            .create()
            .unwrap();
    let topic = env.topics.requests(Flow::Charge);
    let total: i64 = (0..env.settings.kafka.partitions)
        .map(|p| {
            use rdkafka::consumer::Consumer;
            consumer
                .fetch_watermarks(&topic, p, std::time::Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum();
    assert_eq!(total, accepted.len() as i64);
    let metrics = common::scrape(&format!("{http}/metrics")).await;
    assert_eq!(
        common::metric_sum(
            &metrics,
            "stampede_gateway_requests_total",
            &["status=\"429\""]
        ),
        2.0
    );
    app.stop().await;
    env.cleanup().await;
}

/// While Redis is away a keyed POST cannot claim its key: it is refused
/// with 503 at once (not after the Redis connection's reconnecting, seconds
/// later), nothing is published, and `/readyz` says so as quickly. (Here,
/// not with the other outages: those read the in-flight gauge of this
/// process's metrics.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_request_while_redis_is_away_is_refused_at_once_and_publishes_nothing() {
    let redis = Link::to("127.0.0.1:6379").await;
    let env = TestEnv::new().await;
    let app = env
        .start_with(Roles::gateway_only(), |s| {
            s.redis.url = Url(redis.route(s.redis.url.as_str()));
        })
        .await;
    let http = app.http();
    // A buyer waits seconds, not the connection's whole reconnecting: the
    // claim is refused within Redis's response timeout (500 ms).
    let c = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let charge = |key: &'static str| {
        let request = c
            .post(format!("{http}/v1/charges"))
            .header("Idempotency-Key", key)
            .json(&json!({"user_id": 1, "amount": 5_000}));
        async move { request.send().await.unwrap() }
    };
    assert_eq!(charge("before").await.status(), StatusCode::ACCEPTED);
    redis.cut();
    // The key cannot be claimed: 503, and nothing is published.
    let refused: Vec<_> =
        futures::future::join_all(["away-1", "away-2", "away-3"].map(charge)).await;
    for response in refused {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
    }
    // Readiness says Redis is away, in as little time.
    let ready = c.get(format!("{http}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: Value = ready.json().await.unwrap();
    assert_ne!(ready["redis"], "ok", "{ready}");
    assert_eq!(ready["postgres"], "ok", "{ready}");
    redis.restore();
    // Once Redis is back, the same keys are taken.
    for key in ["away-1", "away-2", "away-3"] {
        eventually(&format!("{key} accepted"), || async {
            (charge(key).await.status() == StatusCode::ACCEPTED).then_some(())
        })
        .await;
    }
    let published = env.reader(&env.topics.requests(Flow::Charge)).take(4).await;
    let ids: Vec<String> = published
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.payload).unwrap()["request_id"].to_string())
        .collect();
    assert_eq!(
        ids,
        ["\"before\"", "\"away-1\"", "\"away-2\"", "\"away-3\""],
        "only accepted requests were published"
    );
    app.stop().await;
    env.cleanup().await;
}

/// Reads from `stream` until the gateway answers or closes it; what it sent.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> String {
    String::from_utf8_lossy(&until_closed_bytes(stream).await).into_owned()
}

const GOAWAY: u8 = 0x7;

/// The type of each HTTP/2 frame in `bytes` (9-byte headers: length,
/// type, flags, stream).
fn http2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

async fn until_closed_bytes(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    // Far beyond the deadlines under test: a gateway that never closes
    // fails here instead of hanging.
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut got),
    )
    .await
    .expect("the gateway closes the connection at its deadline")
    .unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_off_at_their_deadlines() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let env = TestEnv::with(|s| {
        s.gateway.header_timeout_ms = 500;
        s.gateway.body_timeout_ms = 800;
    })
    .await;
    let app = env.start(Roles::gateway_only()).await;
    let addr = app.http().trim_start_matches("http://").to_owned();

    // Connected, and never a byte.
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(until_closed(&mut silent).await, "");
    // Headers begun and never finished.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/charges HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_eq!(until_closed(&mut slow).await, "");
    // A body announced as 100 bytes, of which 10 come.
    let mut stalled = TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(
            b"POST /v1/charges HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"user_id\"",
        )
        .await
        .unwrap();
    let answer = until_closed(&mut stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    // An HTTP/2 connection that said hello and nothing more: told to go
    // away (GOAWAY) and closed, as an idle HTTP/1.1 keep-alive is.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let frames = until_closed_bytes(&mut idle).await;
    assert!(
        http2_frame_types(&frames).contains(&GOAWAY),
        "{:?}",
        http2_frame_types(&frames)
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "each was given its deadline"
    );
    // A request that waits longer than that deadline is not idle: its
    // answer comes on its HTTP/2 connection.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let waited = std::time::Instant::now();
    let (status, pending) = get(
        &h2,
        format!("{}/v1/requests/never-sent?wait_ms=1500", app.http()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pending}");
    assert_eq!(pending["status"], "pending");
    assert!(waited.elapsed() >= std::time::Duration::from_millis(1500));
    // Meanwhile and after, the gateway answers as ever, and published nothing.
    let c = reqwest::Client::new();
    let (status, _) = post(
        &c,
        format!("{}/v1/charges", app.http()),
        json!({"user_id": 1, "amount": 5000}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let first = env.reader(&env.topics.requests(Flow::Charge)).take(1).await;
    let first: Value = serde_json::from_slice(&first[0].payload).unwrap();
    assert_eq!(first["amount"], 5000);
    app.stop().await;
    env.cleanup().await;
}

/// A gateway whose address is taken says which address and which setting,
/// and starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_address_is_named_with_its_setting() {
    let env = TestEnv::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut settings = env.settings.clone();
    settings.gateway.listen = taken.local_addr().unwrap();
    let refused = stampede::run(
        settings,
        Roles::gateway_only(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .err()
    .expect("the address is taken");
    let said = refused.to_string();
    assert!(
        said.contains(&taken.local_addr().unwrap().to_string()) && said.contains("gateway.listen"),
        "{said}"
    );
    env.cleanup().await;
}
