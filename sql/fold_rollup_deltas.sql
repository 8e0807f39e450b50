-- What the batch adds to everyone's slots (every country together) and hours
-- (per country): sums, and the numbers of the learners active there (a learner
-- may be listed more than once). The folder derives days, months and the hours
-- of every country together from the hours.
--
-- In time order of the UTC day holding each unit, so that the folder can write
-- a day back as soon as it has passed.
WITH numbered AS (
    SELECT b.slot, b.country, b.events, b.word_count, b.study_seconds, l.learner
    FROM fold_batch AS b
    JOIN learners AS l USING (user_id)
),
deltas AS (
    SELECT 'slot' AS unit, slot AS start, '*' AS country, sum(events) AS events,
           sum(word_count) AS word_count, sum(study_seconds) AS study_seconds,
           array_agg(learner) AS learners
    FROM numbered
    GROUP BY slot
    UNION ALL
    SELECT 'hour', date_bin('1 hour', slot, timestamptz 'epoch'), country, sum(events),
           sum(word_count), sum(study_seconds), array_agg(learner)
    FROM numbered
    GROUP BY 2, 3
)
SELECT *
FROM deltas
ORDER BY date_bin('1 day', start, timestamptz 'epoch'), unit, start, country;
