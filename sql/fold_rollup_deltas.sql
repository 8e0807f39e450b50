-- What the sealed half $1 of the log adds to the finest rollup units it
-- touches: its slots (every country together) and its hours per country. Each
-- unit comes with the half's sums, the numbers of the learners it has there (a
-- learner may be listed more than once), and the set stored for the unit (NULL
-- for a unit the half starts). The folder derives every coarser unit (hours of
-- every country together, days and months) from the hours per country, and
-- looks up their stored sets with stored_learner_sets.sql: sorting the half
-- once per level and listing its learners at every level costs PostgreSQL
-- about three times as much.
--
-- Read in a snapshot of its own, beside the fold's transaction: the half does
-- not change once sealed, its learners are numbered before (see
-- fold_number_learners.sql) and only the folder writes the rollups.
WITH numbered AS (
    SELECT date_bin('15 minutes', p.occurred_at, timestamptz 'epoch') AS slot,
           date_bin('1 hour', p.occurred_at, timestamptz 'epoch') AS hour,
           p.country, p.word_count, p.study_seconds, l.learner
    FROM pending_events AS p
    JOIN learners AS l USING (user_id)
    WHERE p.half = $1
),
deltas AS (
    SELECT CASE WHEN grouping(slot) = 0 THEN 'slot' ELSE 'hour' END AS unit,
           coalesce(slot, hour) AS start,
           CASE WHEN grouping(slot) = 0 THEN '*' ELSE country END AS country,
           count(*) AS events, sum(word_count) AS word_count,
           sum(study_seconds) AS study_seconds, array_agg(learner) AS learners
    FROM numbered
    GROUP BY GROUPING SETS ((slot), (hour, country))
)
SELECT d.*, s.learners AS stored
FROM deltas AS d
LEFT JOIN LATERAL (
    SELECT r.learners
    FROM rollups AS r
    WHERE r.unit = d.unit AND r.start = d.start AND r.country = d.country
    OFFSET 0
) AS s ON true;
