-- Which Redis server (its run_id) the counters were last loaded into from
-- PostgreSQL. A worker that meets another server — Redis restarted, restored
-- from an older snapshot, failed over — reloads every counter first.
CREATE TABLE counter_source (
    id            INT         PRIMARY KEY CHECK (id = 1),
    redis_run_id  TEXT        NOT NULL,
    loaded_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
