-- Distinct active users per bucket and over the whole range.
--
-- $1 range start, $2 range end, $3 unit, $4 zone (PostgreSQL spelling),
-- $5 most buckets, $6 countries, $7 excluded countries.
-- Returns one row per bucket; more than $5 rows means the request is too
-- large, and then no activity is read.
WITH buckets AS (
    SELECT * FROM calendar_buckets($1, $2, $3, $4, $5)
),
active AS (
    SELECT DISTINCT b.bucket, a.user_id
    FROM buckets AS b
    CROSS JOIN LATERAL activity(greatest(b.bucket_start, $1), least(b.bucket_end, $2),
                                NULL, $6, $7) AS a
    WHERE (SELECT count(*) FROM buckets) <= $5
),
counts AS (
    SELECT bucket, count(*) AS unique_users FROM active GROUP BY bucket
)
SELECT b.bucket_start,
       b.local_start,
       b.utc_offset,
       coalesce(c.unique_users, 0) AS unique_users,
       (SELECT count(DISTINCT user_id) FROM active) AS range_unique_users
FROM buckets AS b
LEFT JOIN counts AS c USING (bucket)
ORDER BY b.bucket;
