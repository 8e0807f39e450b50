-- Records that learner $1 is erased as of now (moving an earlier erasure
-- forward) and returns the erasure's instant. Commits on its own, before
-- anything is deleted: every ingest statement that starts later refuses the
-- learner's events that occurred before it (insert_events.sql).
INSERT INTO erasures AS x (user_id, erased_at)
VALUES ($1, now())
ON CONFLICT (user_id) DO UPDATE
SET erased_at = greatest(x.erased_at, excluded.erased_at)
RETURNING erased_at;
