-- The top rows of one dimension ranked by one metric over [$1, $2).
--
-- $3 dimension ('user' or 'country'), $4 metric ('events', 'word_count',
-- 'study_seconds' or 'unique_users'), $5 row limit, $6 countries, $7 excluded
-- countries.
WITH rows AS (
    SELECT CASE $3 WHEN 'user' THEN a.user_id::text ELSE a.country END AS key,
           sum(a.events)::bigint AS events,
           sum(a.word_count)::bigint AS word_count,
           sum(a.study_seconds)::bigint AS study_seconds,
           count(DISTINCT a.user_id) AS unique_users
    FROM activity($1, $2, NULL, $6, $7) AS a
    GROUP BY 1
)
SELECT key, events, word_count, study_seconds, unique_users
FROM rows
ORDER BY CASE $4
             WHEN 'events' THEN events
             WHEN 'word_count' THEN word_count
             WHEN 'study_seconds' THEN study_seconds
             ELSE unique_users
         END DESC,
         key
LIMIT $5;
