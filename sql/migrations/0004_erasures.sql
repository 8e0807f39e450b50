-- Learners erased on request, and when. An event of an erased learner that
-- occurred before erased_at is refused by ingest, so a replayed stream cannot
-- bring the learner's data back; later events are a learner who came back.
CREATE TABLE erasures (
    user_id   uuid        PRIMARY KEY,
    erased_at timestamptz NOT NULL
);
