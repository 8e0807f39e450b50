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
    SELECT user_id, date_trunc('month', slot, 'UTC'), sum(events), sum(word_count), sum(study_seconds)
    FROM fold_batch
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (user_id, month) DO UPDATE
    SET events = m.events + excluded.events,
        word_count = m.word_count + excluded.word_count,
        study_seconds = m.study_seconds + excluded.study_seconds
    RETURNING month, user_id, events, word_count, study_seconds
),
fresh AS (
    SELECT c.month, t.metric, c.user_id, t.total
    FROM changed AS c
    CROSS JOIN LATERAL (
        VALUES ('events', c.events), ('word_count', c.word_count),
               ('study_seconds', c.study_seconds)
    ) AS t (metric, total)
),
lists AS (
    SELECT l.month, l.metric, l.user_ids, l.totals,
           CASE WHEN cardinality(l.totals) >= $1 THEN l.totals[$1] ELSE l.bound - 1 END
               AS last
    FROM month_leaders AS l
    WHERE l.month IN (SELECT month FROM changed)
),
judged AS (
    SELECT f.*, f.total > coalesce(l.last, -1) AS contends
    FROM fresh AS f
    LEFT JOIN lists AS l USING (month, metric)
),
listed AS (
    SELECT l.month, l.metric, e.user_id, e.total
    FROM lists AS l
    CROSS JOIN LATERAL unnest(l.user_ids, l.totals) AS e (user_id, total)
),
merged AS (
    SELECT month, metric, user_id, coalesce(j.total, l.total) AS total
    FROM (SELECT * FROM judged WHERE contends) AS j
    FULL JOIN listed AS l USING (month, metric, user_id)
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY month, metric ORDER BY total DESC, user_id) AS rank
    FROM merged
),
outside AS (
    SELECT month, metric, max(total) AS total FROM judged WHERE NOT contends GROUP BY 1, 2
    UNION ALL
    SELECT month, metric, max(total) FROM ranked WHERE rank > $1 GROUP BY 1, 2
)
INSERT INTO month_leaders AS l (month, metric, user_ids, totals, bound)
SELECT r.month,
       r.metric,
       array_agg(r.user_id ORDER BY r.rank),
       array_agg(r.total ORDER BY r.rank),
       coalesce((SELECT max(o.total) FROM outside AS o
                 WHERE o.month = r.month AND o.metric = r.metric), 0)
FROM ranked AS r
WHERE r.rank <= $1
GROUP BY r.month, r.metric
ON CONFLICT (month, metric) DO UPDATE
SET user_ids = excluded.user_ids,
    totals = excluded.totals,
    bound = greatest(l.bound, excluded.bound);
