-- Each learner's first event per country, for retention cohorts, and the
-- learners erased on request.

-- The first instant each learner was active from each country ('' for no
-- country). A learner's first event that passes a country filter is the
-- earliest of the rows of the passing countries. The folder keeps it up to
-- date; pending events are read beside it, as for every other rollup. Taking
-- the earliest is idempotent, so it is filled from every stored event here,
-- folded or not.
CREATE TABLE learner_firsts (
    user_id  uuid        NOT NULL,
    country  text        NOT NULL,
    first_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, country)
);
CREATE INDEX learner_firsts_first_at_idx ON learner_firsts (first_at, country) INCLUDE (user_id);

INSERT INTO learner_firsts (user_id, country, first_at)
SELECT user_id, country, min(occurred_at)
FROM events
GROUP BY 1, 2;

-- Learners erased on request, and when. An event of an erased learner that
-- occurred before erased_at is refused by ingest, so a replayed stream cannot
-- bring the learner's data back; later events are a learner who came back.
CREATE TABLE erasures (
    user_id   uuid        PRIMARY KEY,
    erased_at timestamptz NOT NULL
);
