-- The learner sets stored for these rollup keys ($1 units, $2 starts, $3
-- countries), each looked up by its key (LATERAL, kept apart by OFFSET 0).
SELECT k.unit, k.start, k.country, r.learners
FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS k (unit, start, country)
CROSS JOIN LATERAL (
    SELECT r.learners
    FROM rollups AS r
    WHERE r.unit = k.unit AND r.start = k.start AND r.country = k.country
    OFFSET 0
) AS r;
