-- One learner's events, words and study time per bucket: whole UTC hours from
-- learner_hours, edges shorter than an hour from the learner's events, and the
-- learner's pending events that no edge covers.
--
-- $1 user_id; $2 hour-run starts, $3 run ends, each run inside a bucket;
-- $4 edge starts, $5 edge ends, each inside a bucket; $6, $7 the range;
-- $8 the buckets' starts, ascending; $9 countries, $10 excluded countries.
--
-- Each run is its own index range scan of learner_hours (LATERAL, kept apart by
-- OFFSET 0), never a join over a whole table. The edges are read in one pass over
-- the learner's events: the events table's key leads with user_id but not with
-- time, so a scan per edge would read every event of the learner once per edge
-- (730 edges for a year of days in Asia/Kolkata, where each local midnight falls
-- at half past a UTC hour). The edges are ascending and apart, so width_bucket
-- finds by bisection the one edge that can hold an event: the last one starting
-- at or before it (0, so no edge, before the first). The event is in that edge
-- when it is before the edge's end.
WITH pieces AS (
    SELECT h.*
    FROM unnest($2::timestamptz[], $3::timestamptz[]) AS run (lo, hi)
    CROSS JOIN LATERAL (
        SELECT h.hour AS at, h.events, h.word_count, h.study_seconds
        FROM learner_hours AS h
        WHERE h.user_id = $1 AND h.hour >= run.lo AND h.hour < run.hi
          AND country_matches(h.country, $9, $10)
        OFFSET 0
    ) AS h
    UNION ALL
    SELECT e.occurred_at, 1, e.word_count, e.study_seconds
    FROM events AS e
    WHERE cardinality($4::timestamptz[]) > 0
      AND e.user_id = $1 AND e.occurred_at >= $6 AND e.occurred_at < $7
      AND e.occurred_at < ($5::timestamptz[])[width_bucket(e.occurred_at, $4::timestamptz[])]
      AND country_matches(e.country, $9, $10)
    UNION ALL
    SELECT p.occurred_at, 1, p.word_count, p.study_seconds
    FROM pending_events AS p
    WHERE p.user_id = $1 AND p.occurred_at >= $6 AND p.occurred_at < $7
      AND country_matches(p.country, $9, $10)
      AND p.occurred_at >= coalesce(
          ($5::timestamptz[])[width_bucket(p.occurred_at, $4::timestamptz[])], '-infinity'
      )
)
SELECT width_bucket(at, $8::timestamptz[]) AS bucket,
       sum(events)::bigint AS events,
       sum(word_count)::bigint AS word_count,
       sum(study_seconds)::bigint AS study_seconds
FROM pieces
GROUP BY 1;
