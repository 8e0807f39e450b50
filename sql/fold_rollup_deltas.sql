-- What the batch adds to every rollup unit it touches: its slots (every country
-- together), and its hours, days and months per country and for every country
-- together. Each unit comes with the batch's sums, the numbers of the learners
-- the batch has there (a learner may be listed more than once), and the set
-- stored for the unit (NULL for a unit the batch starts), so that the folder
-- merges sets without asking again. In key order, the order the folder writes
-- the units back in.
--
-- A month's list would be as long as the batch; months come without one, after
-- all their days ('day' < 'month'), and the folder unites the days' sets.
WITH numbered AS (
    SELECT b.slot,
           date_bin('1 hour', b.slot, timestamptz 'epoch') AS hour,
           date_bin('1 day', b.slot, timestamptz 'epoch') AS day,
           date_trunc('month', b.slot, 'UTC') AS month,
           b.country, b.events, b.word_count, b.study_seconds, l.learner
    FROM fold_batch AS b
    JOIN learners AS l USING (user_id)
),
deltas AS (
    SELECT CASE
               WHEN grouping(slot) = 0 THEN 'slot'
               WHEN grouping(hour) = 0 THEN 'hour'
               WHEN grouping(day) = 0 THEN 'day'
               ELSE 'month'
           END AS unit,
           coalesce(slot, hour, day, month) AS start,
           CASE WHEN grouping(country) = 0 THEN country ELSE '*' END AS country,
           sum(events) AS events, sum(word_count) AS word_count,
           sum(study_seconds) AS study_seconds,
           CASE WHEN grouping(slot, hour, day) <> 7 THEN array_agg(learner) END AS learners
    FROM numbered
    GROUP BY GROUPING SETS ((slot), (hour, country), (hour), (day, country), (day),
                            (month, country), (month))
)
SELECT d.*, s.learners AS stored
FROM deltas AS d
LEFT JOIN LATERAL (
    SELECT r.learners
    FROM rollups AS r
    WHERE r.unit = d.unit AND r.start = d.start AND r.country = d.country
    OFFSET 0
) AS s ON true
ORDER BY d.unit, d.start, d.country;
