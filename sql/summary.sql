-- Per-bucket activity with moving averages, and totals over the range.
--
-- $1 range start, $2 range end, $3 unit, $4 zone (PostgreSQL spelling),
-- $5 most buckets, $6 user_id or NULL for everyone, $7 countries, $8 excluded
-- countries, $9 moving-average window minus one.
-- Returns one row per bucket; more than $5 rows means the request is too
-- large, and then no activity is read.
WITH buckets AS (
    SELECT * FROM calendar_buckets($1, $2, $3, $4, $5)
),
facts AS (
    SELECT b.bucket, a.user_id, a.events, a.word_count, a.study_seconds
    FROM buckets AS b
    CROSS JOIN LATERAL activity(greatest(b.bucket_start, $1), least(b.bucket_end, $2),
                                $6, $7, $8) AS a
    WHERE (SELECT count(*) FROM buckets) <= $5
),
sums AS (
    SELECT b.bucket, b.bucket_start, b.local_start, b.utc_offset,
           coalesce(sum(f.events), 0)::bigint AS events,
           coalesce(sum(f.word_count), 0)::bigint AS word_count,
           coalesce(sum(f.study_seconds), 0)::bigint AS study_seconds
    FROM buckets AS b
    LEFT JOIN facts AS f USING (bucket)
    GROUP BY b.bucket, b.bucket_start, b.local_start, b.utc_offset
)
SELECT bucket_start,
       local_start,
       utc_offset,
       events,
       word_count,
       study_seconds,
       avg(word_count) OVER moving AS word_count_sma,
       avg(study_seconds) OVER moving AS study_seconds_sma,
       (SELECT count(DISTINCT user_id) FROM facts) AS active_users
FROM sums
WINDOW moving AS (ORDER BY bucket ROWS BETWEEN $9 PRECEDING AND CURRENT ROW)
ORDER BY bucket;
