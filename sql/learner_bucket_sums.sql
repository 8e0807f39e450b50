-- One learner's events, words and study time per bucket: whole UTC hours from
-- learner_hours, edges shorter than an hour from the learner's events, and the
-- learner's pending events that no edge covers.
--
-- $1 user_id; $2 hour-run starts, $3 run ends, each run inside a bucket;
-- $4 edge starts, $5 edge ends, each inside a bucket; $6, $7 the range;
-- $8 the buckets' starts, ascending; $9 countries, $10 excluded countries.
WITH pieces AS (
    SELECT h.hour AS at, h.events, h.word_count, h.study_seconds
    FROM unnest($2::timestamptz[], $3::timestamptz[]) AS run (lo, hi)
    JOIN learner_hours AS h ON h.user_id = $1 AND h.hour >= run.lo AND h.hour < run.hi
    WHERE country_matches(h.country, $9, $10)
    UNION ALL
    SELECT e.occurred_at, 1, e.word_count, e.study_seconds
    FROM unnest($4::timestamptz[], $5::timestamptz[]) AS edge (lo, hi)
    JOIN events AS e ON e.user_id = $1 AND e.occurred_at >= edge.lo AND e.occurred_at < edge.hi
    WHERE cardinality($4::timestamptz[]) > 0 AND country_matches(e.country, $9, $10)
    UNION ALL
    SELECT p.occurred_at, 1, p.word_count, p.study_seconds
    FROM pending_events AS p
    WHERE p.user_id = $1 AND p.occurred_at >= $6 AND p.occurred_at < $7
      AND country_matches(p.country, $9, $10)
      AND NOT EXISTS (
          SELECT FROM unnest($4::timestamptz[], $5::timestamptz[]) AS edge (lo, hi)
          WHERE p.occurred_at >= edge.lo AND p.occurred_at < edge.hi
      )
)
SELECT width_bucket(at, $8::timestamptz[]) AS bucket,
       sum(events)::bigint AS events,
       sum(word_count)::bigint AS word_count,
       sum(study_seconds)::bigint AS study_seconds
FROM pieces
GROUP BY 1;
