-- Takes one learner's folded events out of these rollups: subtracts their sums,
-- puts the learner sets without them in place, and deletes the rollups they
-- leave without any event, as if those had never been folded. $1 units, $2
-- starts, $3 countries, $4 events, $5 word counts, $6 study seconds (the
-- learner's), $7 learner counts, $8 sets (the learners that stay).
WITH erased AS (
    SELECT *
    FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::bigint[], $5::bigint[],
                $6::bigint[], $7::integer[], $8::bytea[])
        AS e (unit, start, country, events, word_count, study_seconds, learner_count, learners)
),
emptied AS (
    DELETE FROM rollups AS r
    USING erased AS e
    WHERE r.unit = e.unit AND r.start = e.start AND r.country = e.country
      AND r.events <= e.events
)
UPDATE rollups AS r
SET events = r.events - e.events,
    word_count = r.word_count - e.word_count,
    study_seconds = r.study_seconds - e.study_seconds,
    learner_count = e.learner_count,
    learners = e.learners
FROM erased AS e
WHERE r.unit = e.unit AND r.start = e.start AND r.country = e.country
  AND r.events > e.events;
