-- Gives every learner of the sealed half $1 that has none a learner number.
-- Commits on its own, before the fold, so that the rollups' reading of the half
-- (fold_rollup_deltas.sql, in a snapshot of its own) finds every number. A
-- number given to a learner whose fold then rolls back stays: numbers are only
-- names, and answers give pending learners theirs.
INSERT INTO learners (user_id)
SELECT u.user_id
FROM (SELECT DISTINCT user_id FROM pending_events WHERE half = $1) AS u
WHERE NOT EXISTS (SELECT FROM learners AS l WHERE l.user_id = u.user_id)
ORDER BY 1;
