-- Distinct active users per bucket and over the whole range.
--
-- $1 range start, $2 range end, $3 unit, $4 zone (PostgreSQL spelling),
-- $5 most buckets, $6 countries, $7 excluded countries.
-- Returns one row per bucket. More than $5 rows means the request is too large;
-- then no activity is read.
WITH buckets AS (
    SELECT *, greatest(bucket_start, $1) AS lo, least(bucket_end, $2) AS hi
    FROM calendar_buckets($1, $2, $3, $4, $5)
),
allowed AS (
    SELECT count(*) <= $5 AS ok FROM buckets
),
active AS (
    SELECT b.bucket, a.user_id
    FROM buckets AS b
    CROSS JOIN LATERAL activity(b.lo, b.hi, NULL, $6, $7) AS a
    WHERE (SELECT ok FROM allowed)
    GROUP BY b.bucket, a.user_id
),
counts AS (
    SELECT bucket, count(*) AS unique_users FROM active GROUP BY bucket
)
SELECT b.bucket_start,
       b.local_start,
       b.utc_offset,
       coalesce(c.unique_users, 0) AS unique_users,
       (SELECT count(*) FROM (SELECT DISTINCT user_id FROM active) AS users) AS range_unique_users
FROM buckets AS b
LEFT JOIN counts AS c USING (bucket)
ORDER BY b.bucket;
