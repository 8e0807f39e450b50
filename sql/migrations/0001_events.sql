-- Learning-activity events, one row per (user_id, idempotency_key).
-- user_id leads every unique key so the table can be distributed by user_id (Citus).
CREATE TABLE events (
    user_id         uuid        NOT NULL,
    idempotency_key uuid        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    word_count      integer     NOT NULL CHECK (word_count BETWEEN 0 AND 1000000),
    study_seconds   integer     NOT NULL CHECK (study_seconds BETWEEN 0 AND 86400),
    -- ISO 3166-1 alpha-2, or '' when unknown: '' rather than NULL keeps filters two-valued.
    country         text        NOT NULL DEFAULT '' CHECK (country ~ '^([A-Z]{2})?$'),
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, idempotency_key)
);

-- One learner over a time range.
CREATE INDEX events_user_id_occurred_at_idx ON events (user_id, occurred_at);
-- Everyone over a time range.
CREATE INDEX events_occurred_at_idx ON events (occurred_at);
