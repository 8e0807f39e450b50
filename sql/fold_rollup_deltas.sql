-- What the sealed half $1 of the log adds to every rollup unit it touches: its
-- slots (every country together), and its hours, days and months per country
-- and for every country together. Each unit comes with the half's sums, the
-- numbers of the learners it has there (a learner may be listed more than
-- once), and the set stored for the unit (NULL for a unit the half starts), so
-- that the folder merges sets without asking again. In key order, the order the
-- folder writes the units back in.
--
-- A month's list would be as long as the batch; months come without one, after
-- all their days ('day' < 'month'), and the folder unites the days' sets.
--
-- Read in a snapshot of its own, beside the fold's transaction: the half does
-- not change once sealed, its learners are numbered before (see
-- fold_number_learners.sql) and only the folder writes the rollups.
WITH slotted AS (
    SELECT date_bin('15 minutes', p.occurred_at, timestamptz 'epoch') AS slot, p.country,
           p.word_count, p.study_seconds, l.learner
    FROM pending_events AS p
    JOIN learners AS l USING (user_id)
    WHERE p.half = $1
),
numbered AS (
    SELECT slot,
           date_bin('1 hour', slot, timestamptz 'epoch') AS hour,
           date_bin('1 day', slot, timestamptz 'epoch') AS day,
           date_trunc('month', slot, 'UTC') AS month,
           country, word_count, study_seconds, learner
    FROM slotted
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
           count(*) AS events, sum(word_count) AS word_count,
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
