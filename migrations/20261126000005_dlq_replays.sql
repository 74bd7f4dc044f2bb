-- Every `stampede dlq replay` (dry runs too): who ran it, when, what it
-- selected, and where each record went. Kept for audit; never swept.
CREATE TABLE dlq_replays (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operator     TEXT        NOT NULL,
    host         TEXT        NOT NULL,
    dlq_topic    TEXT        NOT NULL,
    target_topic TEXT        NOT NULL,
    filter       JSONB       NOT NULL,
    dry_run      BOOLEAN     NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ,
    replayed     INT         NOT NULL DEFAULT 0,
    skipped      INT         NOT NULL DEFAULT 0
);

-- One row per dead letter a replay looked at. `outcome`: replayed (published
-- to target_partition/target_offset), would_replay (dry run), or why it was
-- left alone: truncated (a cut copy is not the original message),
-- already_replayed (an earlier replay sent it; `--again` overrides).
CREATE TABLE dlq_replayed (
    replay_id        BIGINT NOT NULL REFERENCES dlq_replays (id),
    dlq_partition    INT    NOT NULL,
    dlq_offset       BIGINT NOT NULL,
    request_id       TEXT,
    outcome          TEXT   NOT NULL CHECK (outcome IN ('replayed', 'would_replay', 'truncated', 'already_replayed')),
    target_partition INT,
    target_offset    BIGINT,
    at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (replay_id, dlq_partition, dlq_offset)
);
CREATE INDEX dlq_replayed_source ON dlq_replayed (dlq_partition, dlq_offset) WHERE outcome = 'replayed';
