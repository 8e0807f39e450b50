-- The learners of events outside whole rollup units: pending events in
-- [$1, $2), and the events of the edges ($3 starts, $4 ends). Each with its time,
-- country, learner number (NULL when the folder has not numbered it yet) and
-- user_id. $5 countries, $6 excluded countries.
SELECT p.occurred_at, p.country, l.learner, p.user_id::text AS user_id
FROM pending_events AS p
LEFT JOIN learners AS l USING (user_id)
WHERE p.occurred_at >= $1 AND p.occurred_at < $2 AND country_matches(p.country, $5, $6)
UNION ALL
SELECT e.occurred_at, e.country, l.learner, e.user_id::text
FROM unnest($3::timestamptz[], $4::timestamptz[]) AS edge (lo, hi)
CROSS JOIN LATERAL (
    SELECT e.occurred_at, e.country, e.user_id
    FROM events AS e
    WHERE e.occurred_at >= edge.lo AND e.occurred_at < edge.hi
      AND country_matches(e.country, $5, $6)
    OFFSET 0
) AS e
LEFT JOIN learners AS l USING (user_id);
