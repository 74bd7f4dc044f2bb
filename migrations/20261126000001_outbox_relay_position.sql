-- Where the outbox relay's last marked batch ended, per partition of the stats
-- topic. A new relay leader reads the topic from here to its end: whatever it
-- finds there was published by a predecessor that did not live to mark it.
-- Rows are never inferred "published" from id order: transactions commit out
-- of id order when several order processes run.
CREATE TABLE outbox_relay_position (
    topic        TEXT   NOT NULL,
    partition    INT    NOT NULL,
    next_offset  BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);
