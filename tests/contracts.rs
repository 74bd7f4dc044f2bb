//! The contract files in `topics/` are exactly what the message types generate.

use std::path::Path;

#[test]
fn topic_schemas_and_asyncapi_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
    let drift = stampede::contracts::drift(&dir);
    assert!(
        drift.is_empty(),
        "out of date: {drift:?}; run `cargo run -- topics schemas --dir topics`"
    );
}

#[test]
fn asyncapi_names_every_contract_topic_with_its_key_and_reply() {
    let doc = stampede::contracts::asyncapi();
    for topic in [
        "charge.requests.v1",
        "coupon.requests.v1",
        "order.requests.v1",
        "charge.results.v1",
        "coupon.results.v1",
        "order.results.v1",
        "order.stats.v1",
        "charge.requests.v1.dlq",
        "coupon.requests.v1.dlq",
        "order.requests.v1.dlq",
    ] {
        assert!(
            doc.contains(&format!("address: {topic}\n")),
            "{topic} missing"
        );
    }
    assert!(doc.contains("reply:\n      channel:\n        $ref: '#/channels/couponResultsV1'"));
}

#[test]
fn request_schemas_carry_the_contract_bounds() {
    let order: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("topics/OrderRequest.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let text = order.to_string();
    assert!(text.contains("\"maxItems\":50"), "{text}");
    assert!(text.contains("[A-Za-z0-9._:-]{1,64}"), "{text}");
}
