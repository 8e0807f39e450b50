-- The leading learners by metric $1 of each UTC month in $2, to depth $3: user
-- ids and month totals best first, how many the list holds, and the bound no
-- learner beyond the list exceeds (see month_leaders in migration 0003).
SELECT month, user_ids[1:$3] AS user_ids, totals[1:$3] AS totals,
       cardinality(user_ids) AS listed, bound
FROM month_leaders
WHERE metric = $1 AND month = ANY ($2::timestamptz[]);
