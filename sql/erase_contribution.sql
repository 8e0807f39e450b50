-- What learner $1's folded events add to everyone's rollups: their stored
-- events less their pending ones (which the folder has not added), per
-- 15-minute slot for every country together and per UTC hour, day and month
-- for their country and for every country together, as the folder adds them
-- (fold_rollup_deltas.sql and server/folding.py). Only units with folded events of
-- theirs, in key order. Run while holding the fold lock, so that nothing is
-- folded meanwhile.
WITH slots AS (
    SELECT date_bin('15 minutes', occurred_at, timestamptz 'epoch') AS slot, country,
           count(*) AS events, sum(word_count) AS word_count, sum(study_seconds) AS study_seconds
    FROM events
    WHERE user_id = $1
    GROUP BY 1, 2
    UNION ALL
    SELECT date_bin('15 minutes', occurred_at, timestamptz 'epoch'), country, -count(*),
           -sum(word_count), -sum(study_seconds)
    FROM pending_events
    WHERE user_id = $1
    GROUP BY 1, 2
)
SELECT u.unit, u.start, u.country,
       sum(s.events)::bigint AS events,
       sum(s.word_count)::bigint AS word_count,
       sum(s.study_seconds)::bigint AS study_seconds
FROM slots AS s
CROSS JOIN LATERAL (
    VALUES ('slot', s.slot, '*'),
           ('hour', date_bin('1 hour', s.slot, timestamptz 'epoch'), s.country),
           ('hour', date_bin('1 hour', s.slot, timestamptz 'epoch'), '*'),
           ('day', date_bin('1 day', s.slot, timestamptz 'epoch'), s.country),
           ('day', date_bin('1 day', s.slot, timestamptz 'epoch'), '*'),
           ('month', date_trunc('month', s.slot, 'UTC'), s.country),
           ('month', date_trunc('month', s.slot, 'UTC'), '*')
) AS u (unit, start, country)
GROUP BY 1, 2, 3
HAVING sum(s.events) > 0
ORDER BY 1, 2, 3;
