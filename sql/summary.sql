-- Per-bucket activity with moving averages, and distinct users over the range.
--
-- $1 range start, $2 range end, $3 unit, $4 zone (PostgreSQL spelling),
-- $5 most buckets, $6 user_id or NULL for everyone, $7 countries, $8 excluded
-- countries, $9 moving-average window minus one.
-- Returns one row per bucket. More than $5 rows means the request is too large;
-- then no activity is read.
WITH buckets AS (
    SELECT *, greatest(bucket_start, $1) AS lo, least(bucket_end, $2) AS hi
    FROM calendar_buckets($1, $2, $3, $4, $5)
),
allowed AS (
    SELECT count(*) <= $5 AS ok FROM buckets
),
sums AS (
    SELECT b.bucket, b.bucket_start, b.local_start, b.utc_offset,
           coalesce(a.events, 0) AS events,
           coalesce(a.word_count, 0) AS word_count,
           coalesce(a.study_seconds, 0) AS study_seconds
    FROM buckets AS b
    LEFT JOIN LATERAL (
        SELECT sum(events)::bigint AS events,
               sum(word_count)::bigint AS word_count,
               sum(study_seconds)::bigint AS study_seconds
        FROM activity(b.lo, b.hi, $6, $7, $8)
        WHERE (SELECT ok FROM allowed)
    ) AS a ON true
)
SELECT bucket_start,
       local_start,
       utc_offset,
       events,
       word_count,
       study_seconds,
       avg(word_count) OVER moving AS word_count_sma,
       avg(study_seconds) OVER moving AS study_seconds_sma,
       (SELECT count(*)
        FROM (SELECT DISTINCT user_id
              FROM activity($1, $2, $6, $7, $8)
              WHERE (SELECT ok FROM allowed)) AS users) AS active_users
FROM sums
WINDOW moving AS (ORDER BY bucket ROWS BETWEEN $9 PRECEDING AND CURRENT ROW)
ORDER BY bucket;
