-- The top learners over [$1, $2) by one metric.
--
-- $3 metric ('events', 'word_count', 'study_seconds' or 'unique_users'),
-- $4 row limit, $5 countries, $6 excluded countries.
SELECT user_id::text AS key,
       sum(events)::bigint AS events,
       sum(word_count)::bigint AS word_count,
       sum(study_seconds)::bigint AS study_seconds,
       1::bigint AS unique_users
FROM activity($1, $2, NULL, $5, $6)
GROUP BY user_id
ORDER BY CASE $3
             WHEN 'events' THEN sum(events)
             WHEN 'word_count' THEN sum(word_count)
             WHEN 'study_seconds' THEN sum(study_seconds)
             ELSE 1
         END DESC,
         user_id
LIMIT $4;
