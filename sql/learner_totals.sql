-- Learners' events, words and study time over a range, best first by metric
-- $12 (ties to the smaller user_id), at most $13 of them (all when NULL): whole
-- UTC months from learner_months (every country together, so only unfiltered
-- questions have month runs), whole hours from learner_hours, edges shorter than
-- an hour from the events, and the pending events no edge covers. $1 names the
-- learners to score; NULL scores every learner of the range.
--
-- $2 month-run starts, $3 ends; $4 hour-run starts, $5 ends; $6 edge starts,
-- $7 ends; $8, $9 the range; $10 countries, $11 excluded countries.
WITH pieces AS (
    SELECT m.user_id, m.events, m.word_count, m.study_seconds
    FROM unnest($2::timestamptz[], $3::timestamptz[]) AS run (lo, hi)
    JOIN learner_months AS m ON m.month >= run.lo AND m.month < run.hi
    WHERE $1::uuid[] IS NULL OR m.user_id = ANY ($1::uuid[])
    UNION ALL
    SELECT h.user_id, h.events, h.word_count, h.study_seconds
    FROM unnest($4::timestamptz[], $5::timestamptz[]) AS run (lo, hi)
    JOIN learner_hours AS h ON h.hour >= run.lo AND h.hour < run.hi
    WHERE ($1::uuid[] IS NULL OR h.user_id = ANY ($1::uuid[]))
      AND country_matches(h.country, $10, $11)
    UNION ALL
    SELECT e.user_id, 1, e.word_count, e.study_seconds
    FROM unnest($6::timestamptz[], $7::timestamptz[]) AS edge (lo, hi)
    JOIN events AS e ON e.occurred_at >= edge.lo AND e.occurred_at < edge.hi
    WHERE ($1::uuid[] IS NULL OR e.user_id = ANY ($1::uuid[]))
      AND country_matches(e.country, $10, $11)
    UNION ALL
    SELECT p.user_id, 1, p.word_count, p.study_seconds
    FROM pending_events AS p
    WHERE ($1::uuid[] IS NULL OR p.user_id = ANY ($1::uuid[]))
      AND p.occurred_at >= $8 AND p.occurred_at < $9
      AND country_matches(p.country, $10, $11)
      AND NOT EXISTS (
          SELECT FROM unnest($6::timestamptz[], $7::timestamptz[]) AS edge (lo, hi)
          WHERE p.occurred_at >= edge.lo AND p.occurred_at < edge.hi
      )
)
SELECT user_id::text AS key,
       sum(events)::bigint AS events,
       sum(word_count)::bigint AS word_count,
       sum(study_seconds)::bigint AS study_seconds
FROM pieces
GROUP BY user_id
ORDER BY CASE $12
             WHEN 'events' THEN sum(events)
             WHEN 'word_count' THEN sum(word_count)
             ELSE sum(study_seconds)
         END DESC,
         user_id
LIMIT $13;
