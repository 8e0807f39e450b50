-- Moves each learner's first instant per country earlier where the batch holds
-- an earlier event, in key order. Most of a live batch's learners were seen
-- before, so they are filtered out before the upsert.
INSERT INTO learner_firsts AS f (user_id, country, first_at)
SELECT b.user_id, b.country, b.first_at
FROM (SELECT user_id, country, min(first_at) AS first_at FROM fold_batch GROUP BY 1, 2) AS b
LEFT JOIN learner_firsts AS s USING (user_id, country)
WHERE s.first_at IS NULL OR b.first_at < s.first_at
ORDER BY 1, 2
ON CONFLICT (user_id, country) DO UPDATE
SET first_at = least(f.first_at, excluded.first_at);
