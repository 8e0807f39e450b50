-- The learners with pending events in [$1, $2) that pass the filters ($3
-- countries, $4 excluded countries).
SELECT DISTINCT user_id
FROM pending_events
WHERE occurred_at >= $1 AND occurred_at < $2 AND country_matches(country, $3, $4);
