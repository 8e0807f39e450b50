-- Everyone's events, words and study time per bucket (and per country when $11):
-- whole units from the rollups, edges shorter than a slot from the events, and
-- the pending events that no edge covers.
--
-- $1 units, $2 run starts, $3 run ends: runs of whole units, each inside a bucket;
-- $4 edge starts, $5 edge ends: edges, each inside a bucket; $6, $7 the range;
-- $8 the buckets' starts, ascending (bucket i is [$8[i], $8[i + 1]));
-- $9 countries, $10 excluded countries, $11 per country.
--
-- Each run and edge is its own index range scan (LATERAL, kept apart by OFFSET 0),
-- never a join over a whole table.
WITH pieces AS (
    SELECT r.*
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS run (unit, lo, hi)
    CROSS JOIN LATERAL (
        SELECT r.start AS at, r.country, r.events, r.word_count, r.study_seconds
        FROM rollups AS r
        WHERE r.unit = run.unit AND r.start >= run.lo AND r.start < run.hi
          AND rollup_matches(r.country, $9, $10, $11)
        OFFSET 0
    ) AS r
    UNION ALL
    SELECT e.*
    FROM unnest($4::timestamptz[], $5::timestamptz[]) AS edge (lo, hi)
    CROSS JOIN LATERAL (
        SELECT e.occurred_at, e.country, 1, e.word_count, e.study_seconds
        FROM events AS e
        WHERE e.occurred_at >= edge.lo AND e.occurred_at < edge.hi
          AND country_matches(e.country, $9, $10)
        OFFSET 0
    ) AS e
    UNION ALL
    SELECT p.occurred_at, p.country, 1, p.word_count, p.study_seconds
    FROM pending_events AS p
    WHERE p.occurred_at >= $6 AND p.occurred_at < $7
      AND country_matches(p.country, $9, $10)
      AND NOT EXISTS (
          SELECT FROM unnest($4::timestamptz[], $5::timestamptz[]) AS edge (lo, hi)
          WHERE p.occurred_at >= edge.lo AND p.occurred_at < edge.hi
      )
)
SELECT width_bucket(at, $8::timestamptz[]) AS bucket,
       CASE WHEN $11 THEN country END AS country,
       sum(events)::bigint AS events,
       sum(word_count)::bigint AS word_count,
       sum(study_seconds)::bigint AS study_seconds
FROM pieces
GROUP BY 1, 2;
