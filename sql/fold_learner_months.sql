-- Adds the batch to learner_months and brings month_leaders up to date for the
-- months it touches. $1 is the length of a leaders list.
--
-- Totals only grow, so the new list of a month is the best $1 of its old list
-- and of the learners the batch raised above the list's last entry; every other
-- learner has at most the old bound or the total the batch gave it, and the
-- bound rises to the largest of those.
--
-- A list shorter than $1 names every learner of its month, unless an erasure
-- took entries out of it (erase_learner.sql): then learners outside it may have
-- up to its bound. So a learner enters a short list only when reaching the
-- bound, and every listed total stays at least every unlisted one, which the
-- rankings rely on (server/answers/top_learners.py). A list that was never cut
-- has bound 0, so every learner of the batch enters it.
WITH changed AS (
    INSERT INTO learner_months AS m (user_id, month, events, word_count, study_seconds)
    SELECT user_id, date_trunc('month', hour, 'UTC'), sum(events), sum(word_count), sum(study_seconds)
    FROM fold_batch
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (user_id, month) DO UPDATE
    SET events = m.events + excluded.events,
        word_count = m.word_count + excluded.word_count,
        study_seconds = m.study_seconds + excluded.study_seconds
    RETURNING month, user_id, events, word_count, study_seconds
),
months AS (
    SELECT DISTINCT month FROM changed
),
lists AS (
    SELECT l.month, l.metric, l.user_ids, l.totals,
           CASE WHEN cardinality(l.totals) >= $1 THEN l.totals[$1] ELSE l.bound - 1 END
               AS last
    FROM month_leaders AS l
    JOIN months USING (month)
),
-- The three totals a learner must exceed to enter each list of a month, in one
-- row (-1 where the month has no list yet), so each changed row is judged once.
bars AS (
    SELECT m.month,
           coalesce(max(l.last) FILTER (WHERE l.metric = 'events'), -1) AS events,
           coalesce(max(l.last) FILTER (WHERE l.metric = 'word_count'), -1) AS word_count,
           coalesce(max(l.last) FILTER (WHERE l.metric = 'study_seconds'), -1) AS study_seconds
    FROM months AS m
    LEFT JOIN lists AS l USING (month)
    GROUP BY m.month
),
judged AS (
    SELECT c.month, c.user_id, c.events, c.word_count, c.study_seconds,
           b.events AS events_bar, b.word_count AS word_count_bar,
           b.study_seconds AS study_seconds_bar
    FROM changed AS c
    JOIN bars AS b USING (month)
),
-- Of the learners the batch raised above a bar, the $1-th largest total: none
-- below it can enter the list, since $1 others stay ahead of it. So the lowest
-- total that may enter is one above the bar or that total, whichever is more,
-- and the ranking below sorts at most $1 new learners per list (plus ties),
-- however many a batch raises: one that fills an empty year raises most of them.
floors AS (
    SELECT month,
           greatest(max(events_bar) + 1,
                    (array_agg(events ORDER BY events DESC)
                         FILTER (WHERE events > events_bar))[$1]) AS events,
           greatest(max(word_count_bar) + 1,
                    (array_agg(word_count ORDER BY word_count DESC)
                         FILTER (WHERE word_count > word_count_bar))[$1]) AS word_count,
           greatest(max(study_seconds_bar) + 1,
                    (array_agg(study_seconds ORDER BY study_seconds DESC)
                         FILTER (WHERE study_seconds > study_seconds_bar))[$1]) AS study_seconds
    FROM judged
    GROUP BY month
),
placed AS (
    SELECT j.month, j.user_id, j.events, j.word_count, j.study_seconds,
           f.events AS events_floor, f.word_count AS word_count_floor,
           f.study_seconds AS study_seconds_floor
    FROM judged AS j
    JOIN floors AS f USING (month)
),
contenders AS (
    SELECT month, 'events' AS metric, user_id, events AS total
    FROM placed WHERE events >= events_floor
    UNION ALL
    SELECT month, 'word_count', user_id, word_count
    FROM placed WHERE word_count >= word_count_floor
    UNION ALL
    SELECT month, 'study_seconds', user_id, study_seconds
    FROM placed WHERE study_seconds >= study_seconds_floor
),
-- The largest total of each month and metric that stays below its floor.
beneath AS (
    SELECT p.month, t.metric, t.total
    FROM (
        SELECT month,
               max(events) FILTER (WHERE events < events_floor) AS events,
               max(word_count) FILTER (WHERE word_count < word_count_floor) AS word_count,
               max(study_seconds) FILTER (WHERE study_seconds < study_seconds_floor)
                   AS study_seconds
        FROM placed
        GROUP BY month
    ) AS p
    CROSS JOIN LATERAL (
        VALUES ('events', p.events), ('word_count', p.word_count),
               ('study_seconds', p.study_seconds)
    ) AS t (metric, total)
),
listed AS (
    SELECT l.month, l.metric, e.user_id, e.total
    FROM lists AS l
    CROSS JOIN LATERAL unnest(l.user_ids, l.totals) AS e (user_id, total)
),
merged AS (
    SELECT month, metric, user_id, coalesce(c.total, l.total) AS total
    FROM contenders AS c
    FULL JOIN listed AS l USING (month, metric, user_id)
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY month, metric ORDER BY total DESC, user_id) AS rank
    FROM merged
),
outside AS (
    SELECT month, metric, max(total) AS total
    FROM (
        SELECT month, metric, total FROM beneath
        UNION ALL
        SELECT month, metric, total FROM ranked WHERE rank > $1
    ) AS o
    GROUP BY month, metric
)
INSERT INTO month_leaders AS l (month, metric, user_ids, totals, bound)
SELECT r.month,
       r.metric,
       array_agg(r.user_id ORDER BY r.rank),
       array_agg(r.total ORDER BY r.rank),
       coalesce(o.total, 0)
FROM ranked AS r
LEFT JOIN outside AS o USING (month, metric)
WHERE r.rank <= $1
GROUP BY r.month, r.metric, o.total
ON CONFLICT (month, metric) DO UPDATE
SET user_ids = excluded.user_ids,
    totals = excluded.totals,
    bound = greatest(l.bound, excluded.bound);
