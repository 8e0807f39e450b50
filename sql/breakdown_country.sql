-- The top countries over [$1, $2) by one metric; '' is events with no country.
--
-- $3 metric ('events', 'word_count', 'study_seconds' or 'unique_users'),
-- $4 row limit, $5 countries, $6 excluded countries.
SELECT country AS key,
       sum(events)::bigint AS events,
       sum(word_count)::bigint AS word_count,
       sum(study_seconds)::bigint AS study_seconds,
       count(DISTINCT user_id) AS unique_users
FROM activity($1, $2, NULL, $5, $6)
GROUP BY country
ORDER BY CASE $3
             WHEN 'events' THEN sum(events)
             WHEN 'word_count' THEN sum(word_count)
             WHEN 'study_seconds' THEN sum(study_seconds)
             ELSE count(DISTINCT user_id)
         END DESC,
         country
LIMIT $4;
