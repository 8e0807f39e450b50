-- Adds the batch's sums to these rollups and replaces their learner sets with
-- the merged ones, in key order. $1 units, $2 starts, $3 countries, $4 events,
-- $5 word counts, $6 study seconds (the batch's), $7 learner counts, $8 sets.
INSERT INTO rollups AS r
    (unit, start, country, events, word_count, study_seconds, learner_count, learners)
SELECT *
FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::bigint[], $5::bigint[],
            $6::bigint[], $7::integer[], $8::bytea[])
ORDER BY 1, 2, 3
ON CONFLICT (unit, start, country) DO UPDATE
SET events = r.events + excluded.events,
    word_count = r.word_count + excluded.word_count,
    study_seconds = r.study_seconds + excluded.study_seconds,
    learner_count = excluded.learner_count,
    learners = excluded.learners;
