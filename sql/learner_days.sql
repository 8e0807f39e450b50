-- One learner's events before $2, per local date in the zone $3 (as PostgreSQL
-- reads zone names): how many, their sums, and the first and last instants.
-- The events table holds every acknowledged event, folded or not, and its key
-- starts with user_id.
SELECT (occurred_at AT TIME ZONE $3)::date AS day,
       count(*) AS events,
       sum(word_count) AS word_count,
       sum(study_seconds) AS study_seconds,
       min(occurred_at) AS first_at,
       max(occurred_at) AS last_at
FROM events
WHERE user_id = $1 AND occurred_at < $2
GROUP BY 1
ORDER BY 1;
