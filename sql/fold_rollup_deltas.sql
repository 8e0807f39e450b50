-- What the batch adds to everyone's rollups, per unit and country: its sums and
-- the numbers of the learners active there. Slots are kept for every country
-- together only ('*'); hours, days and months per country too.
--
-- In time order of the UTC day holding each unit, months last, so that the
-- folder can write a day back as soon as it has passed.
WITH numbered AS (
    SELECT b.slot, b.country, b.events, b.word_count, b.study_seconds, l.learner
    FROM fold_batch AS b
    JOIN learners AS l USING (user_id)
),
keyed AS (
    SELECT u.unit, u.start, n.*
    FROM numbered AS n
    CROSS JOIN LATERAL (
        VALUES ('hour', date_bin('1 hour', n.slot, timestamptz 'epoch')),
               ('day', date_bin('1 day', n.slot, timestamptz 'epoch')),
               ('month', date_trunc('month', n.slot, 'UTC'))
    ) AS u (unit, start)
),
deltas AS (
    SELECT 'slot' AS unit, slot AS start, '*' AS country, sum(events) AS events,
           sum(word_count) AS word_count, sum(study_seconds) AS study_seconds,
           array_agg(DISTINCT learner) AS learners
    FROM numbered
    GROUP BY slot
    UNION ALL
    SELECT unit, start, CASE WHEN GROUPING(country) = 1 THEN '*' ELSE country END,
           sum(events), sum(word_count), sum(study_seconds), array_agg(DISTINCT learner)
    FROM keyed
    GROUP BY GROUPING SETS ((unit, start, country), (unit, start))
)
SELECT *
FROM deltas
ORDER BY unit = 'month', date_bin('1 day', start, timestamptz 'epoch'), unit, start, country;
