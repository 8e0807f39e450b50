-- Erases learner $1 from everything but everyone's rollups (erase_rollups.sql):
-- their events, stored and pending, their rows of the per-learner rollups,
-- their learner number and their entries in the month leaders lists; returns
-- how many stored events were deleted.
--
-- A leaders list that loses an entry keeps its bound, which stays an upper
-- bound of every learner outside the list; the folder refills it with learners
-- that reach the bound (fold_learner_months.sql).
WITH gone AS (
    DELETE FROM events WHERE user_id = $1 RETURNING 1
),
unpending AS (
    DELETE FROM pending_events WHERE user_id = $1
),
hours AS (
    DELETE FROM learner_hours WHERE user_id = $1
),
months AS (
    DELETE FROM learner_months WHERE user_id = $1 RETURNING month
),
numbered AS (
    DELETE FROM learners WHERE user_id = $1
),
unlisted AS (
    UPDATE month_leaders AS l
    SET (user_ids, totals) = (
        SELECT coalesce(array_agg(e.user_id ORDER BY e.rank), '{}'),
               coalesce(array_agg(e.total ORDER BY e.rank), '{}')
        FROM unnest(l.user_ids, l.totals) WITH ORDINALITY AS e (user_id, total, rank)
        WHERE e.user_id <> $1
    )
    WHERE l.month IN (SELECT month FROM months) AND $1 = ANY (l.user_ids)
)
SELECT count(*) FROM gone;
